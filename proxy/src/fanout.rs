//! What the proxy's WebSocket connections read: every verified chain event
//! with its notifications' tails rendered once, on a
//! [`luxtensor_fanout::Ring`] (the node's RPC fans out the same way).
//!
//! [`Fanout::publish`] renders each result JSON of an event as the tail of
//! a notification (`<result>}}`) and appends the event to the ring, which
//! wakes every waiting connection once; each connection then writes its
//! subscription's prefix and the shared tail, without copying either (see
//! `luxtensor_fanout::Outbox`). A connection that falls a whole ring
//! behind is disconnected as slow, so memory stays bounded by the ring.

use crate::proxy::ChainEvent;
use bytes::Bytes;
use luxtensor_fanout::{Ring, notification};
use std::sync::Arc;

/// A chain event and the tails of its notifications, rendered once.
#[derive(Debug)]
pub struct Rendered {
    /// The event.
    pub event: Arc<ChainEvent>,
    /// `Heads`: the removed headers with `"removed": true`, newest first
    /// (for `gapless` subscriptions).
    pub removed: Vec<Bytes>,
    /// `Heads`: the added headers; `Finalized`: the final ones; in order.
    pub heads: Vec<Bytes>,
    /// `Heads`: the removed logs, then the added ones.
    pub logs: Vec<Bytes>,
    /// `Pending`: the transaction's hash and its full JSON.
    pub pending: Option<(Bytes, Bytes)>,
}

impl Rendered {
    /// Renders `event`'s notification tails.
    pub fn new(event: Arc<ChainEvent>) -> Self {
        let mut rendered = Self {
            event: event.clone(),
            removed: Vec::new(),
            heads: Vec::new(),
            logs: Vec::new(),
            pending: None,
        };
        match &*event {
            ChainEvent::Heads {
                removed,
                added,
                removed_logs,
                added_logs,
            } => {
                rendered.removed = removed
                    .iter()
                    .rev()
                    .map(|h| {
                        let mut json =
                            crate::verify::header_json(h, alloy_primitives::Address::ZERO);
                        json["removed"] = serde_json::Value::Bool(true);
                        notification::tail(json.to_string())
                    })
                    .collect();
                rendered.heads = added
                    .iter()
                    .map(|(_, json)| notification::tail(json.to_string()))
                    .collect();
                rendered.logs = removed_logs
                    .iter()
                    .chain(added_logs)
                    .map(|log| {
                        notification::tail(serde_json::to_string(log).expect("a log serializes"))
                    })
                    .collect();
            }
            ChainEvent::Finalized(list) => {
                rendered.heads = list
                    .iter()
                    .map(|(_, json)| notification::tail(json.to_string()))
                    .collect();
            }
            ChainEvent::Pending { hash, full } => {
                rendered.pending = Some((
                    notification::tail(hash.to_string()),
                    notification::tail(full.to_string()),
                ));
            }
        }
        rendered
    }
}

/// The ring of rendered events the WebSocket connections read.
#[derive(Debug)]
pub struct Fanout {
    ring: Arc<Ring<Arc<Rendered>>>,
}

impl Fanout {
    /// A fan-out that keeps the last `capacity` events.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            ring: Ring::new(capacity),
        })
    }

    /// Renders `event` once and wakes every waiting connection.
    pub fn publish(&self, event: Arc<ChainEvent>) {
        self.ring.publish([Arc::new(Rendered::new(event))]);
    }

    /// The ring the connections read.
    pub fn ring(&self) -> &Arc<Ring<Arc<Rendered>>> {
        &self.ring
    }

    /// Connections reading the ring (those with subscriptions).
    pub fn receiver_count(&self) -> usize {
        self.ring.receiver_count()
    }
}
