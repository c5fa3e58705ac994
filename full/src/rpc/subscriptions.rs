//! Events from the node to its RPC clients: the [`Broadcaster`] the node
//! feeds, `eth_subscribe` / `eth_unsubscribe` on WebSocket connections, and
//! polling filters (`eth_newFilter` and friends) for HTTP-only clients.
//!
//! The node calls [`Broadcaster::send`], which never blocks: the event goes
//! into a bounded queue to one dispatcher thread that renders it to JSON
//! once (header, logs, transaction), updates the polling filters, and
//! publishes it on a bounded [`Ring`]. Every WebSocket connection reads the
//! ring at its own pace into its own bounded send queue; a connection that
//! falls a whole ring behind, or whose send queue is full, is disconnected.
//! A slow reader therefore costs nobody else anything, and memory stays
//! bounded by the ring and the queues.
//!
//! The ring wakes each waiting connection once per published batch (a
//! block's header and logs are one batch), and a connection turns each
//! event into its frames by splicing its subscription id into the JSON
//! rendered once for everybody ([`notification`]).

use super::eth::{self, Caches};
use super::metrics::Metrics;
use super::{RpcError, RpcLimits};
use crate::Importer;
use crate::rpc::backend::NodeHandle;
use alloy_primitives::B256;
use alloy_rpc_types_eth::{Filter, Log as RpcLog};
use bytes::Bytes;
use luxtensor_fanout::{Full, Outbox, Ring, notification};
use luxtensor_light::{Block, Receipt, SignedTransaction};
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A block with its receipts, as the node imported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEvent {
    /// The block.
    pub block: Block,
    /// Its receipts, one per transaction, in order.
    pub receipts: Vec<Receipt>,
}

/// What the node tells its RPC clients (the seed's `BroadcastEvent`).
// A transaction inline keeps the seed's `NewTransaction(tx)`; events are
// transient and the queue that holds them is bounded.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum BroadcastEvent {
    /// A block became the head: one `newHeads` notification, and its logs on
    /// `logs` subscriptions. Send blocks in chain order.
    NewBlock(Arc<BlockEvent>),
    /// Blocks left the canonical chain (a reorg), oldest first: their logs
    /// are sent again with `"removed": true`, as geth does. Send this before
    /// the new branch's `NewBlock` events.
    RemovedBlocks(Vec<Arc<BlockEvent>>),
    /// A transaction entered the mempool.
    NewTransaction(SignedTransaction),
    /// Sync started (`true`) or caught up (`false`); progress is read from
    /// [`NodeHandle::sync_status`].
    SyncStatus {
        /// Whether the node is syncing.
        syncing: bool,
    },
}

impl BroadcastEvent {
    /// A `NewBlock` event.
    pub fn new_block(block: Block, receipts: Vec<Receipt>) -> Self {
        Self::NewBlock(Arc::new(BlockEvent { block, receipts }))
    }
}

/// The kinds `eth_subscribe` accepts (the seed's `SubscriptionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionType {
    /// `newHeads`: one header per new head.
    NewHeads,
    /// `newPendingTransactions`: hashes, or full transactions with `true`.
    NewPendingTransactions,
    /// `logs`: logs matching an address/topics filter.
    Logs,
    /// `syncing`: sync status changes.
    Syncing,
}

impl SubscriptionType {
    /// Parses the name a client sends.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "newHeads" => Self::NewHeads,
            "newPendingTransactions" => Self::NewPendingTransactions,
            "logs" => Self::Logs,
            "syncing" => Self::Syncing,
            _ => return None,
        })
    }

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::NewHeads => "newHeads",
            Self::NewPendingTransactions => "newPendingTransactions",
            Self::Logs => "logs",
            Self::Syncing => "syncing",
        }
    }
}

/// An event rendered once for every subscriber: each result's JSON as the
/// tail of its notification (`<result>}}`), which every connection writes
/// after its subscription's prefix without copying ([`tail`]).
#[derive(Debug)]
pub(crate) enum Prepared {
    /// A new head: its `newHeads` tail.
    Head { tail: Bytes },
    /// Logs of a block (new or removed), each with its tail.
    Logs(Vec<(RpcLog, Bytes)>),
    /// A pending transaction: the tails of its hash and of its full JSON.
    Pending { hash: Bytes, full: Bytes },
    /// A sync status notification's tail.
    Syncing { tail: Bytes },
}

/// The node's event ring (see [`luxtensor_fanout::Ring`]).
pub(crate) type EventRing = Ring<Arc<Prepared>>;

struct Shared {
    ring: Arc<EventRing>,
    filters: Mutex<Filters>,
    syncing: Mutex<bool>,
}

/// The sender side of the fan-out (the seed's broadcast sender). Cheap to
/// clone; `send` never blocks.
#[derive(Clone)]
pub struct Broadcaster {
    queue: std::sync::mpsc::SyncSender<BroadcastEvent>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcaster")
            .field("subscribers", &self.shared.ring.receiver_count())
            .finish_non_exhaustive()
    }
}

/// What the dispatcher thread needs to render events.
pub(crate) struct Renderer {
    pub chain: Arc<RwLock<Importer>>,
    pub node: Arc<dyn NodeHandle>,
    pub caches: Arc<Caches>,
    pub metrics: Arc<Metrics>,
}

impl Broadcaster {
    /// Creates the fan-out and its dispatcher thread (which ends when the
    /// last clone of the broadcaster is dropped).
    pub(crate) fn new(limits: &RpcLimits, renderer: Renderer) -> Self {
        let shared = Arc::new(Shared {
            ring: Ring::new(limits.broadcast_capacity),
            filters: Mutex::new(Filters::new(limits)),
            syncing: Mutex::new(false),
        });
        let (queue, events) = std::sync::mpsc::sync_channel(limits.broadcast_capacity.max(1));
        let dispatcher = shared.clone();
        std::thread::Builder::new()
            .name("rpc-broadcast".into())
            .spawn(move || {
                while let Ok(event) = events.recv() {
                    dispatch(&dispatcher, &renderer, event);
                }
            })
            .expect("the operating system can start a thread");
        Self { queue, shared }
    }

    /// Hands an event to the subscribers. Never blocks. Fails if the event
    /// is inconsistent (receipts do not match transactions) or if the
    /// dispatcher is a whole queue behind (the event is dropped).
    pub fn send(&self, event: BroadcastEvent) -> Result<(), RpcError> {
        let check = |e: &BlockEvent| {
            if e.receipts.len() != e.block.transactions.len() {
                return Err(RpcError::InvalidEvent(format!(
                    "block {} has {} transactions and {} receipts",
                    e.block.header.number,
                    e.block.transactions.len(),
                    e.receipts.len()
                )));
            }
            Ok(())
        };
        match &event {
            BroadcastEvent::NewBlock(e) => check(e)?,
            BroadcastEvent::RemovedBlocks(blocks) => blocks.iter().try_for_each(|b| check(b))?,
            _ => {}
        }
        self.queue.try_send(event).map_err(|e| match e {
            std::sync::mpsc::TrySendError::Full(_) => {
                RpcError::InvalidEvent("the broadcast queue is full; event dropped".into())
            }
            std::sync::mpsc::TrySendError::Disconnected(_) => {
                RpcError::Internal("the broadcast dispatcher has stopped".into())
            }
        })
    }

    /// Number of connections currently listening for events.
    pub fn receiver_count(&self) -> usize {
        self.shared.ring.receiver_count()
    }

    /// The ring WebSocket connections read their events from.
    pub(crate) fn ring(&self) -> &Arc<EventRing> {
        &self.shared.ring
    }

    pub(crate) fn is_syncing(&self) -> bool {
        *self.shared.syncing.lock().expect("not poisoned")
    }

    pub(crate) fn filters(&self) -> std::sync::MutexGuard<'_, Filters> {
        self.shared.filters.lock().expect("not poisoned")
    }
}

fn dispatch(shared: &Shared, renderer: &Renderer, event: BroadcastEvent) {
    let started = Instant::now();
    let prepared: Vec<Prepared> = match event {
        BroadcastEvent::NewBlock(e) => {
            let chain = renderer.chain.read().unwrap_or_else(|p| p.into_inner());
            let miner = renderer.caches.miner(&chain, &e.block.header);
            drop(chain);
            let header = eth::rpc_header(&e.block, miner);
            let head =
                notification::tail(serde_json::to_string(&header).expect("headers serialize"));
            let logs = render_logs(eth::block_logs(&e.block, &e.receipts, false));
            let mut filters = shared.filters.lock().expect("not poisoned");
            filters.on_block(e.block.hash(), &logs);
            drop(filters);
            renderer.metrics.set_head(e.block.header.number);
            let mut prepared = vec![Prepared::Head { tail: head }];
            if !logs.is_empty() {
                prepared.push(Prepared::Logs(logs));
            }
            prepared
        }
        BroadcastEvent::RemovedBlocks(blocks) => blocks
            .iter()
            .map(|e| {
                let logs = render_logs(eth::block_logs(&e.block, &e.receipts, true));
                shared
                    .filters
                    .lock()
                    .expect("not poisoned")
                    .on_block_logs(&logs);
                Prepared::Logs(logs)
            })
            .collect(),
        BroadcastEvent::NewTransaction(tx) => {
            let Ok(sender) = renderer.caches.sender(&tx) else {
                return; // the node sends only recovered transactions; nothing to show otherwise
            };
            let hash = tx.hash();
            let full = eth::rpc_transaction(&tx, sender, None);
            shared
                .filters
                .lock()
                .expect("not poisoned")
                .on_pending(hash);
            vec![Prepared::Pending {
                hash: notification::tail(serde_json::to_string(&hash).expect("hash")),
                full: notification::tail(serde_json::to_string(&full).expect("tx")),
            }]
        }
        BroadcastEvent::SyncStatus { syncing } => {
            *shared.syncing.lock().expect("not poisoned") = syncing;
            renderer.metrics.set_syncing(syncing);
            let status = syncing
                .then(|| renderer.node.sync_status())
                .flatten()
                .unwrap_or(super::SyncProgress {
                    starting: 0,
                    current: 0,
                    highest: 0,
                });
            vec![Prepared::Syncing {
                tail: notification::tail(sync_notification(syncing.then_some(status))),
            }]
        }
    };
    // One batch, one wake-up per waiting connection.
    shared.ring.publish(prepared.into_iter().map(Arc::new));
    renderer.metrics.observe_dispatch(started.elapsed());
}

fn render_logs(logs: Vec<RpcLog>) -> Vec<(RpcLog, Bytes)> {
    logs.into_iter()
        .map(|log| {
            let json = notification::tail(serde_json::to_string(&log).expect("logs serialize"));
            (log, json)
        })
        .collect()
}

/// The `syncing` notification: `{"syncing":true,"status":{..}}` while
/// syncing (geth's `SyncProgress`, whose keys are Go field names with
/// decimal numbers), `{"syncing":false}` once caught up.
pub(crate) fn sync_notification(status: Option<super::SyncProgress>) -> String {
    match status {
        None => r#"{"syncing":false}"#.into(),
        Some(s) => serde_json::json!({
            "syncing": true,
            "status": {
                "StartingBlock": s.starting,
                "CurrentBlock": s.current,
                "HighestBlock": s.highest,
            }
        })
        .to_string(),
    }
}

/// A new subscription or filter id: 16 random bytes as a quantity (leading
/// zeros trimmed, as geth does).
pub(crate) fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system provides randomness");
    format!("0x{:x}", u128::from_be_bytes(bytes))
}

/// One live `eth_subscribe` subscription.
#[derive(Debug)]
enum Subscription {
    NewHeads,
    Logs(Box<Filter>),
    Pending { full: bool },
    Syncing,
}

/// The subscriptions of one WebSocket connection, each with the prefix of
/// its notifications ([`notification::prefix`]).
#[derive(Debug, Default)]
pub(crate) struct ConnectionSubscriptions {
    subs: HashMap<String, (Subscription, Bytes)>,
}

/// What an `eth_subscribe` call produced.
pub(crate) struct Subscribed {
    /// The subscription id (the call's result).
    pub id: String,
    /// A notification to send right after the response, if any.
    pub initial: Option<String>,
}

impl ConnectionSubscriptions {
    /// Number of live subscriptions.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Handles `eth_subscribe` params: `[kind, options?]`.
    pub fn subscribe(
        &mut self,
        params: &Value,
        limits: &RpcLimits,
        syncing: Option<super::SyncProgress>,
    ) -> Result<Subscribed, RpcError> {
        let list = params.as_array().map(Vec::as_slice).unwrap_or_default();
        let name = match list.first() {
            Some(Value::String(name)) => name.as_str(),
            Some(_) => {
                return Err(RpcError::InvalidParams(
                    "invalid subscription name: expected a string".into(),
                ));
            }
            None => {
                return Err(RpcError::InvalidParams(
                    "missing value for required argument 0".into(),
                ));
            }
        };
        let kind = SubscriptionType::parse(name).ok_or_else(|| {
            RpcError::MethodNotFound(format!("no \"{name}\" subscription in eth namespace"))
        })?;
        if list.len() > 2 {
            return Err(RpcError::InvalidParams(
                "too many arguments, want at most 2".into(),
            ));
        }
        let option = list.get(1).filter(|v| !v.is_null());
        let sub = match kind {
            SubscriptionType::NewHeads | SubscriptionType::Syncing if option.is_some() => {
                return Err(RpcError::InvalidParams(
                    "too many arguments, want at most 1".into(),
                ));
            }
            SubscriptionType::NewHeads => Subscription::NewHeads,
            SubscriptionType::Syncing => Subscription::Syncing,
            SubscriptionType::NewPendingTransactions => match option {
                None => Subscription::Pending { full: false },
                Some(Value::Bool(full)) => Subscription::Pending { full: *full },
                Some(_) => {
                    return Err(RpcError::InvalidParams(
                        "invalid argument 1: expected a boolean".into(),
                    ));
                }
            },
            SubscriptionType::Logs => {
                let filter = match option {
                    None => Filter::default(),
                    Some(v) => parse_filter(v)?,
                };
                if filter
                    .block_option
                    .get_from_block()
                    .is_some_and(|b| b.is_pending())
                    || filter
                        .block_option
                        .get_to_block()
                        .is_some_and(|b| b.is_pending())
                {
                    return Err(RpcError::InvalidParams(
                        "pending logs are not supported".into(),
                    ));
                }
                Subscription::Logs(Box::new(filter))
            }
        };
        if self.subs.len() >= limits.max_subscriptions_per_connection {
            return Err(RpcError::LimitExceeded(format!(
                "too many subscriptions on this connection (limit {})",
                limits.max_subscriptions_per_connection
            )));
        }
        let id = new_id();
        let initial = match sub {
            Subscription::Syncing => Some(notification(&id, &sync_notification(syncing))),
            _ => None,
        };
        self.subs
            .insert(id.clone(), (sub, notification::prefix(&id)));
        Ok(Subscribed { id, initial })
    }

    /// Handles `eth_unsubscribe` params: `[id]`. `true` once; geth's error after.
    pub fn unsubscribe(&mut self, params: &Value) -> Result<bool, RpcError> {
        let id = match params.as_array().and_then(|l| l.first()) {
            Some(Value::String(id)) => id,
            Some(_) => {
                return Err(RpcError::InvalidParams(
                    "invalid subscription id: expected a string".into(),
                ));
            }
            None => {
                return Err(RpcError::InvalidParams(
                    "missing value for required argument 0".into(),
                ));
            }
        };
        match self.subs.remove(id) {
            Some(_) => Ok(true),
            None => Err(RpcError::Server("subscription not found".into())),
        }
    }

    /// Queues the notifications `event` produces for this connection, in
    /// order: each its subscription's prefix and the event's shared tail.
    pub fn notifications(&self, event: &Prepared, out: &mut Outbox) -> Result<(), Full> {
        for (sub, prefix) in self.subs.values() {
            match (sub, event) {
                (Subscription::NewHeads, Prepared::Head { tail })
                | (Subscription::Syncing, Prepared::Syncing { tail }) => {
                    out.text_parts(prefix.clone(), tail.clone())?
                }
                (Subscription::Logs(filter), Prepared::Logs(logs)) => {
                    for (log, tail) in logs {
                        if log_matches(filter, log) {
                            out.text_parts(prefix.clone(), tail.clone())?;
                        }
                    }
                }
                (Subscription::Pending { full }, Prepared::Pending { hash, full: tx }) => {
                    out.text_parts(prefix.clone(), if *full { tx } else { hash }.clone())?
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Whether a live log passes a filter: address, topics, and the numeric
/// `fromBlock`/`toBlock` bounds (geth filters live logs by number; no replay).
fn log_matches(filter: &Filter, log: &RpcLog) -> bool {
    if !filter.matches(&log.inner) {
        return false;
    }
    match filter.get_block_hash() {
        Some(hash) => log.block_hash == Some(hash),
        None => log
            .block_number
            .is_none_or(|n| filter.matches_block_range(n)),
    }
}

/// `{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":id,"result":..}}`,
/// spliced from the result's JSON (rendered once for every subscriber) and
/// the subscription id: one allocation of exactly the frame's length, which
/// the WebSocket layer then owns without copying or reallocating.
pub(crate) fn notification(id: &str, result_json: &str) -> String {
    const HEAD: &str = r#"{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":""#;
    const MIDDLE: &str = r#"","result":"#;
    const TAIL: &str = "}}";
    let len = HEAD.len() + id.len() + MIDDLE.len() + result_json.len() + TAIL.len();
    let mut s = String::with_capacity(len);
    s.push_str(HEAD);
    s.push_str(id);
    s.push_str(MIDDLE);
    s.push_str(result_json);
    s.push_str(TAIL);
    debug_assert_eq!(s.capacity(), len);
    s
}

/// Most topic positions and OR-values per position (geth's limits).
const MAX_TOPICS: usize = 4;
const MAX_TOPIC_VALUES: usize = 1_000;

/// Parses a filter object the way geth does, with its errors.
pub(crate) fn parse_filter(value: &Value) -> Result<Filter, RpcError> {
    if let Some(topics) = value.get("topics").and_then(Value::as_array) {
        if topics.len() > MAX_TOPICS {
            return Err(RpcError::InvalidParams("exceed max topics".into()));
        }
        for t in topics {
            if t.as_array().is_some_and(|v| v.len() > MAX_TOPIC_VALUES) {
                return Err(RpcError::InvalidParams("exceed max topics".into()));
            }
        }
    }
    if value.get("blockHash").is_some_and(|h| !h.is_null())
        && (value.get("fromBlock").is_some_and(|v| !v.is_null())
            || value.get("toBlock").is_some_and(|v| !v.is_null()))
    {
        return Err(RpcError::InvalidParams(
            "cannot specify both BlockHash and FromBlock/ToBlock, choose one or the other".into(),
        ));
    }
    serde_json::from_value::<Filter>(value.clone())
        .map_err(|e| RpcError::InvalidParams(format!("invalid filter: {e}")))
}

/// What a polling filter collects between polls.
#[derive(Debug)]
pub(crate) enum FilterKind {
    /// `eth_newBlockFilter`: block hashes.
    Blocks(VecDeque<B256>),
    /// `eth_newPendingTransactionFilter`: transaction hashes.
    Pending(VecDeque<B256>),
    /// `eth_newFilter`: matching logs.
    Logs(Box<Filter>, VecDeque<RpcLog>),
}

#[derive(Debug)]
struct PollFilter {
    kind: FilterKind,
    last_poll: Instant,
}

/// The node's polling filters: bounded in number and in what each holds;
/// removed after [`RpcLimits::filter_timeout`] without a poll.
#[derive(Debug)]
pub(crate) struct Filters {
    filters: HashMap<String, PollFilter>,
    max_filters: usize,
    max_items: usize,
    timeout: Duration,
}

/// What `eth_getFilterChanges` returns.
pub(crate) enum FilterChanges {
    Hashes(Vec<B256>),
    Logs(Vec<RpcLog>),
}

impl Filters {
    fn new(limits: &RpcLimits) -> Self {
        Self {
            filters: HashMap::new(),
            max_filters: limits.max_filters,
            max_items: limits.max_filter_items.max(1),
            timeout: limits.filter_timeout,
        }
    }

    /// Drops filters not polled within the timeout.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        self.filters
            .retain(|_, f| now.saturating_duration_since(f.last_poll) < timeout);
    }

    /// Number of installed filters.
    pub fn len(&self) -> usize {
        self.filters.len()
    }

    /// Installs a filter; returns its id.
    pub fn install(&mut self, kind: FilterKind, now: Instant) -> Result<String, RpcError> {
        self.expire(now);
        if self.filters.len() >= self.max_filters {
            return Err(RpcError::LimitExceeded(format!(
                "too many filters installed (limit {}); uninstall some or let them expire",
                self.max_filters
            )));
        }
        let id = new_id();
        self.filters.insert(
            id.clone(),
            PollFilter {
                kind,
                last_poll: now,
            },
        );
        Ok(id)
    }

    /// Removes a filter; whether it existed.
    pub fn uninstall(&mut self, id: &str) -> bool {
        self.filters.remove(id).is_some()
    }

    /// The filter's criteria (for `eth_getFilterLogs`), if it is a log filter.
    pub fn log_filter(&mut self, id: &str, now: Instant) -> Result<Filter, RpcError> {
        self.expire(now);
        match self.filters.get_mut(id) {
            Some(PollFilter {
                kind: FilterKind::Logs(filter, _),
                last_poll,
            }) => {
                *last_poll = now;
                Ok((**filter).clone())
            }
            _ => Err(RpcError::Server("filter not found".into())),
        }
    }

    /// What arrived since the last poll.
    pub fn changes(&mut self, id: &str, now: Instant) -> Result<FilterChanges, RpcError> {
        self.expire(now);
        let filter = self
            .filters
            .get_mut(id)
            .ok_or_else(|| RpcError::Server("filter not found".into()))?;
        filter.last_poll = now;
        Ok(match &mut filter.kind {
            FilterKind::Blocks(items) | FilterKind::Pending(items) => {
                FilterChanges::Hashes(items.drain(..).collect())
            }
            FilterKind::Logs(_, logs) => FilterChanges::Logs(logs.drain(..).collect()),
        })
    }

    fn on_block(&mut self, hash: B256, logs: &[(RpcLog, Bytes)]) {
        let max = self.max_items;
        for f in self.filters.values_mut() {
            if let FilterKind::Blocks(items) = &mut f.kind {
                push_bounded(items, hash, max);
            }
        }
        self.on_block_logs(logs);
    }

    fn on_block_logs(&mut self, logs: &[(RpcLog, Bytes)]) {
        let max = self.max_items;
        for f in self.filters.values_mut() {
            if let FilterKind::Logs(filter, items) = &mut f.kind {
                for (log, _) in logs {
                    if log_matches(filter, log) {
                        push_bounded(items, log.clone(), max);
                    }
                }
            }
        }
    }

    fn on_pending(&mut self, hash: B256) {
        let max = self.max_items;
        for f in self.filters.values_mut() {
            if let FilterKind::Pending(items) = &mut f.kind {
                push_bounded(items, hash, max);
            }
        }
    }
}

fn push_bounded<T>(items: &mut VecDeque<T>, item: T, max: usize) {
    if items.len() >= max {
        items.pop_front();
    }
    items.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_frame_is_the_prefix_then_the_shared_tail() {
        let json = r#"{"number":"0x1"}"#;
        let mut subs = ConnectionSubscriptions::default();
        let limits = RpcLimits::default();
        let id = subs
            .subscribe(&serde_json::json!(["newHeads"]), &limits, None)
            .unwrap()
            .id;
        let event = Prepared::Head {
            tail: notification::tail(json.into()),
        };
        let mut out = Outbox::new(4);
        subs.notifications(&event, &mut out).unwrap();
        subs.notifications(
            &Prepared::Syncing {
                tail: notification::tail("false".into()),
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 1, "only the newHeads subscription matches");
        let mut written: Vec<u8> = Vec::new();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            out.poll_write(std::pin::Pin::new(&mut written), &mut cx)
                .is_ready()
        );
        let text = notification(&id, json);
        let header = luxtensor_fanout::frame::Header::new(1, text.len());
        assert_eq!(written, [header.as_bytes(), text.as_bytes()].concat());
    }

    #[test]
    fn notifications_splice_the_id_into_the_shared_json() {
        let frame = notification("0xab", r#"{"number":"0x1"}"#);
        assert_eq!(
            frame,
            r#"{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0xab","result":{"number":"0x1"}}}"#
        );
        assert_eq!(frame.len(), frame.capacity(), "no reallocation downstream");
        let value: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["params"]["result"]["number"], "0x1");
    }

    #[test]
    fn syncing_notifications_are_objects_both_ways() {
        let caught_up: Value = serde_json::from_str(&sync_notification(None)).unwrap();
        assert_eq!(caught_up, serde_json::json!({"syncing": false}));
        let syncing: Value =
            serde_json::from_str(&sync_notification(Some(super::super::SyncProgress {
                starting: 1,
                current: 2,
                highest: 3,
            })))
            .unwrap();
        assert_eq!(
            syncing,
            serde_json::json!({"syncing": true, "status": {"StartingBlock": 1, "CurrentBlock": 2, "HighestBlock": 3}})
        );
    }
}
