//! Polling filters (`eth_newFilter`, `eth_newBlockFilter`,
//! `eth_newPendingTransactionFilter`, `eth_getFilterChanges`,
//! `eth_getFilterLogs`, `eth_uninstallFilter`), served locally from the
//! verified event stream and never forwarded. Bounded: at most
//! [`MAX_FILTERS`] filters of at most [`MAX_ITEMS`] items each, and a
//! filter not polled for [`FILTER_TIMEOUT`] is removed.

use crate::proxy::{ChainEvent, Proxy};
use crate::rpc::RpcFailure;
use alloy_rpc_types_eth::{Filter, Log};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Most installed filters.
pub const MAX_FILTERS: usize = 10_000;
/// Most items a filter keeps between polls (oldest dropped first).
pub const MAX_ITEMS: usize = 10_000;
/// An unpolled filter is removed after this long (geth's 5 minutes).
pub const FILTER_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
enum Kind {
    Blocks(Vec<String>),
    Pending(Vec<String>),
    Logs(Box<Filter>, Vec<Log>),
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    polled: Instant,
}

/// The filter table.
#[derive(Debug, Default)]
pub struct Filters {
    entries: HashMap<String, Entry>,
}

fn push<T>(list: &mut Vec<T>, item: T) {
    if list.len() >= MAX_ITEMS {
        list.remove(0);
    }
    list.push(item);
}

impl Filters {
    /// Feeds a verified event to every filter.
    pub fn on_event(&mut self, event: &ChainEvent) {
        for entry in self.entries.values_mut() {
            match (&mut entry.kind, event) {
                (Kind::Blocks(list), ChainEvent::Heads { added, .. }) => {
                    for (h, _) in added {
                        push(list, h.hash().to_string());
                    }
                }
                (Kind::Pending(list), ChainEvent::Pending { hash, .. }) => {
                    push(list, hash.trim_matches('"').to_string());
                }
                (
                    Kind::Logs(filter, list),
                    ChainEvent::Heads {
                        removed_logs,
                        added_logs,
                        ..
                    },
                ) => {
                    for log in removed_logs.iter().chain(added_logs) {
                        if filter.matches(&log.inner) {
                            push(list, log.clone());
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| now.duration_since(e.polled) < FILTER_TIMEOUT);
        self.entries
            .values()
            .filter(|e| matches!(e.kind, Kind::Logs(..)))
            .count()
            .min(before)
    }
}

/// Whether `method` is one of the polling filter methods.
pub fn is_filter_method(method: &str) -> bool {
    matches!(
        method,
        "eth_newFilter"
            | "eth_newBlockFilter"
            | "eth_newPendingTransactionFilter"
            | "eth_getFilterChanges"
            | "eth_uninstallFilter"
    )
}

fn new_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    format!("0x{:x}", u128::from_be_bytes(bytes))
}

fn param<T: serde::de::DeserializeOwned>(params: &Value, i: usize) -> Result<T, RpcFailure> {
    let v = params.get(i).ok_or_else(|| {
        RpcFailure::invalid_params(format!("missing value for required argument {i}"))
    })?;
    T::deserialize(v).map_err(|e| RpcFailure::invalid_params(format!("invalid argument {i}: {e}")))
}

/// Answers a filter method.
pub fn call(proxy: &Proxy, method: &str, params: &Value) -> Result<Arc<str>, RpcFailure> {
    let now = Instant::now();
    let mut filters = proxy.filters.lock().expect("not poisoned");
    let log_filters_before = filters
        .entries
        .values()
        .filter(|e| matches!(e.kind, Kind::Logs(..)))
        .count();
    let log_filters_after_expiry = filters.expire(now);
    let expired_logs = log_filters_before - log_filters_after_expiry;
    if expired_logs > 0 {
        proxy
            .counters
            .log_watchers
            .fetch_sub(expired_logs, Ordering::Relaxed);
    }
    let text = |v: &dyn erased::Ser| -> Arc<str> { v.to_text().into() };
    match method {
        "eth_newFilter" | "eth_newBlockFilter" | "eth_newPendingTransactionFilter" => {
            if filters.entries.len() >= MAX_FILTERS {
                return Err(RpcFailure::new(
                    -32005,
                    format!("at most {MAX_FILTERS} filters"),
                ));
            }
            let kind = match method {
                "eth_newFilter" => {
                    let filter: Filter = param(params, 0)?;
                    proxy.counters.log_watchers.fetch_add(1, Ordering::Relaxed);
                    Kind::Logs(Box::new(filter), Vec::new())
                }
                "eth_newBlockFilter" => Kind::Blocks(Vec::new()),
                _ => Kind::Pending(Vec::new()),
            };
            let id = new_id();
            filters
                .entries
                .insert(id.clone(), Entry { kind, polled: now });
            Ok(text(&id))
        }
        "eth_getFilterChanges" => {
            let id: String = param(params, 0)?;
            let entry = filters
                .entries
                .get_mut(&id)
                .ok_or_else(|| RpcFailure::new(-32000, "filter not found"))?;
            entry.polled = now;
            Ok(match &mut entry.kind {
                Kind::Blocks(list) | Kind::Pending(list) => text(&std::mem::take(list)),
                Kind::Logs(_, list) => text(&std::mem::take(list)),
            })
        }
        "eth_uninstallFilter" => {
            let id: String = param(params, 0)?;
            let removed = filters.entries.remove(&id);
            if let Some(Entry {
                kind: Kind::Logs(..),
                ..
            }) = &removed
            {
                proxy.counters.log_watchers.fetch_sub(1, Ordering::Relaxed);
            }
            Ok(text(&removed.is_some()))
        }
        other => Err(RpcFailure::method_not_found(other)),
    }
}

mod erased {
    /// Object-safe serialization to JSON text.
    pub trait Ser {
        fn to_text(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_text(&self) -> String {
            serde_json::to_string(self).expect("serializes")
        }
    }
}

/// The log filter of an installed filter (for `eth_getFilterLogs`).
pub fn log_filter(proxy: &Proxy, id: &str) -> Result<Filter, RpcFailure> {
    let mut filters = proxy.filters.lock().expect("not poisoned");
    match filters.entries.get_mut(id) {
        Some(Entry {
            kind: Kind::Logs(f, _),
            polled,
        }) => {
            *polled = Instant::now();
            Ok((**f).clone())
        }
        _ => Err(RpcFailure::new(-32000, "filter not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_bounded() {
        let mut list = Vec::new();
        for i in 0..MAX_ITEMS + 5 {
            push(&mut list, i);
        }
        assert_eq!(list.len(), MAX_ITEMS);
        assert_eq!(list[0], 5);
    }
}
