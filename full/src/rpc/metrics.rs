//! `/metrics` in the Prometheus text format and `/health`, on their own
//! address. A tiny hand-written counter and histogram set: requests by
//! method and outcome, latency histograms by method, connections,
//! subscriptions, event dispatch time; head, finalized head, peers and sync
//! status are read at scrape time.
//!
//! Method labels come from a fixed list (unknown names count as `other`), so
//! a client cannot grow the label set.

use super::RpcState;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Every method name that gets its own label.
pub(crate) const METHODS: &[&str] = &[
    "web3_clientVersion",
    "web3_sha3",
    "net_version",
    "net_listening",
    "net_peerCount",
    "eth_chainId",
    "eth_blockNumber",
    "eth_accounts",
    "eth_syncing",
    "eth_gasPrice",
    "eth_maxPriorityFeePerGas",
    "eth_feeHistory",
    "eth_getBlockByNumber",
    "eth_getBlockByHash",
    "eth_getBlockTransactionCountByNumber",
    "eth_getBlockTransactionCountByHash",
    "eth_getUncleCountByBlockNumber",
    "eth_getUncleCountByBlockHash",
    "eth_getBlockReceipts",
    "eth_getTransactionByHash",
    "eth_getTransactionByBlockNumberAndIndex",
    "eth_getTransactionByBlockHashAndIndex",
    "eth_getTransactionReceipt",
    "eth_getBalance",
    "eth_getTransactionCount",
    "eth_getCode",
    "eth_getStorageAt",
    "eth_getProof",
    "eth_estimateGas",
    "eth_call",
    "eth_sendRawTransaction",
    "eth_getLogs",
    "eth_newFilter",
    "eth_newBlockFilter",
    "eth_newPendingTransactionFilter",
    "eth_getFilterChanges",
    "eth_getFilterLogs",
    "eth_uninstallFilter",
    "eth_subscribe",
    "eth_unsubscribe",
    "lux_getValidatorSet",
    "lux_getCertifiedHeader",
    "lux_getEpochUpdates",
    "lux_getRawBlock",
    "lux_getRawHeader",
    "lux_stakingContract",
    "lux_rotationStats",
    "lux_submitEvidence",
    "invalid",
];

/// Latency bucket upper bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

/// A cumulative histogram.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct PerMethod {
    ok: u64,
    error: u64,
    latency: Histogram,
}

/// The RPC server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    methods: Mutex<BTreeMap<&'static str, PerMethod>>,
    connections: AtomicI64,
    ws_connections: AtomicI64,
    subscriptions: AtomicI64,
    disconnected_slow: AtomicU64,
    head: AtomicU64,
    syncing: AtomicU64,
    dispatch: Mutex<Histogram>,
}

impl Metrics {
    /// Counts one call of `method` with its outcome and latency.
    pub(crate) fn record_call(&self, method: &str, ok: bool, latency: Duration) {
        let label = METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("other");
        let mut methods = self.methods.lock().expect("not poisoned");
        let entry = methods.entry(label).or_default();
        match ok {
            true => entry.ok += 1,
            false => entry.error += 1,
        }
        entry.latency.observe(latency.as_secs_f64());
    }

    /// A TCP connection (`websocket: false`) or a WebSocket session on one (`true`).
    pub(crate) fn connection_opened(&self, websocket: bool) {
        match websocket {
            true => self.ws_connections.fetch_add(1, Ordering::Relaxed),
            false => self.connections.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub(crate) fn connection_closed(&self, websocket: bool) {
        match websocket {
            true => self.ws_connections.fetch_sub(1, Ordering::Relaxed),
            false => self.connections.fetch_sub(1, Ordering::Relaxed),
        };
    }

    pub(crate) fn subscriptions_changed(&self, delta: i64) {
        self.subscriptions.fetch_add(delta, Ordering::Relaxed);
    }

    pub(crate) fn slow_client_disconnected(&self) {
        self.disconnected_slow.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_head(&self, number: u64) {
        self.head.fetch_max(number, Ordering::Relaxed);
    }

    pub(crate) fn set_syncing(&self, syncing: bool) {
        self.syncing.store(syncing as u64, Ordering::Relaxed);
    }

    pub(crate) fn observe_dispatch(&self, elapsed: Duration) {
        self.dispatch
            .lock()
            .expect("not poisoned")
            .observe(elapsed.as_secs_f64());
    }

    /// Number of open connections (HTTP and WebSocket).
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Number of live subscriptions.
    pub fn subscriptions(&self) -> i64 {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// JSON-RPC calls answered so far, every method and outcome (the status
    /// page's requests-per-second chart).
    pub fn requests_total(&self) -> u64 {
        let methods = self.methods.lock().expect("not poisoned");
        methods.values().map(|m| m.ok + m.error).sum()
    }
}

/// The Prometheus text for `/metrics`.
pub(crate) fn render(state: &RpcState) -> String {
    let m = &state.metrics;
    let mut out = String::with_capacity(16 * 1024);
    out.push_str("# HELP luxtensor_rpc_requests_total JSON-RPC calls by method and outcome.\n");
    out.push_str("# TYPE luxtensor_rpc_requests_total counter\n");
    let methods = m.methods.lock().expect("not poisoned");
    for (method, entry) in methods.iter() {
        let _ = writeln!(
            out,
            "luxtensor_rpc_requests_total{{method=\"{method}\",outcome=\"ok\"}} {}",
            entry.ok
        );
        let _ = writeln!(
            out,
            "luxtensor_rpc_requests_total{{method=\"{method}\",outcome=\"error\"}} {}",
            entry.error
        );
    }
    out.push_str(
        "# HELP luxtensor_rpc_request_duration_seconds JSON-RPC call latency by method.\n",
    );
    out.push_str("# TYPE luxtensor_rpc_request_duration_seconds histogram\n");
    for (method, entry) in methods.iter() {
        entry.latency.render(
            &mut out,
            "luxtensor_rpc_request_duration_seconds",
            &format!("method=\"{method}\""),
        );
    }
    drop(methods);
    out.push_str("# HELP luxtensor_rpc_event_dispatch_seconds Time to render and publish one broadcast event.\n");
    out.push_str("# TYPE luxtensor_rpc_event_dispatch_seconds histogram\n");
    m.dispatch.lock().expect("not poisoned").render(
        &mut out,
        "luxtensor_rpc_event_dispatch_seconds",
        "",
    );
    let (head, head_hash) = state.latest();
    let _ = head_hash;
    let finalized = state.finalized().0;
    let gauges: [(&str, &str, i64); 8] = [
        (
            "luxtensor_rpc_connections",
            "Open RPC connections (HTTP and WebSocket).",
            m.connections(),
        ),
        (
            "luxtensor_rpc_websocket_connections",
            "Open WebSocket connections.",
            m.ws_connections.load(Ordering::Relaxed),
        ),
        (
            "luxtensor_rpc_subscriptions",
            "Live eth_subscribe subscriptions.",
            m.subscriptions(),
        ),
        (
            "luxtensor_rpc_filters",
            "Installed polling filters.",
            state.broadcaster.filters().len() as i64,
        ),
        (
            "luxtensor_head_block",
            "Number of the head block.",
            head as i64,
        ),
        (
            "luxtensor_finalized_block",
            "Number of the latest finalized block.",
            finalized as i64,
        ),
        (
            "luxtensor_peers",
            "Connected peers.",
            state.node.peer_count() as i64,
        ),
        (
            "luxtensor_syncing",
            "1 while syncing, 0 when caught up.",
            state.node.sync_status().is_some() as i64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP luxtensor_rpc_slow_clients_disconnected_total WebSocket clients disconnected for not reading.\n# TYPE luxtensor_rpc_slow_clients_disconnected_total counter\nluxtensor_rpc_slow_clients_disconnected_total {}",
        m.disconnected_slow.load(Ordering::Relaxed)
    );
    out
}
