//! # JSON-RPC over HTTP and WebSocket, geth-compatible
//!
//! Wallets, indexers and light clients reach the node with the Ethereum
//! libraries they already use (viem, ethers, web3.py, wscat). Method names,
//! JSON shapes (alloy's RPC types), error codes and `eth_subscribe`
//! semantics follow geth; the `lux_` namespace serves what light clients
//! and operators need. `docs/rpc.md` is the user's reference.
//!
//! | module | what it holds |
//! |---|---|
//! | [`backend`] | [`RpcState`]: the chain (`Arc<RwLock<Importer>>`), the node's [`NodeHandle`], limits; [`StaticNode`] for tests |
//! | [`jsonrpc`] | framing: requests, batches, ids, geth's error codes and messages |
//! | [`server`] | axum HTTP + WebSocket on one port and on a WebSocket-only port; [`WebSocketServer`] (the seed's API) and [`serve`] |
//! | [`subscriptions`] | [`BroadcastEvent`] fan-out, `eth_subscribe`/`eth_unsubscribe`, polling filters with expiry |
//! | `eth`, `lux` | the method handlers |
//! | [`metrics`] | `/metrics` (Prometheus text) and `/health` |
//! | [`status`] | the live status page on the metrics address: `/`, `/status.json`, `/status/events` |
//!
//! The node calls [`serve`] once and feeds [`RpcHandle::broadcaster`] from
//! its loop:
//!
//! ```no_run
//! # async fn run(state: luxtensor_full::rpc::RpcState, block: luxtensor_light::Block,
//! #              receipts: Vec<luxtensor_light::Receipt>) {
//! use luxtensor_full::rpc::{self, BroadcastEvent, RpcConfig};
//! let handle = rpc::serve(RpcConfig::default(), state).await.unwrap();
//! println!("HTTP on {}", handle.http_addr);
//! handle.broadcaster.send(BroadcastEvent::new_block(block, receipts)).unwrap();
//! # }
//! ```
//!
//! Every queue is bounded: a WebSocket client that does not read is
//! disconnected when its send queue is full, and never slows the others.

pub mod backend;
pub(crate) mod eth;
pub mod jsonrpc;
pub(crate) mod lux;
pub mod metrics;
pub mod server;
pub mod status;
pub mod subscriptions;

pub use backend::{NodeHandle, RpcState, StaticNode, SyncProgress};
pub use server::{RpcConfig, RpcHandle, WebSocketServer, serve};
pub use subscriptions::{BlockEvent, BroadcastEvent, Broadcaster, SubscriptionType};

use std::net::SocketAddr;
use std::time::Duration;

/// Limits on requests, connections and server-side state. Defaults are
/// geth's where geth has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcLimits {
    /// Largest HTTP request body (geth: 5 MiB). Larger: HTTP 413.
    pub max_body_bytes: usize,
    /// Largest WebSocket message (geth: 32 MiB). Larger: the connection is closed.
    pub max_ws_message_bytes: usize,
    /// Most calls in one batch (geth: 1,000). More: -32600 "batch too large".
    pub max_batch_len: usize,
    /// Most open connections (HTTP and WebSocket together, per listening port).
    pub max_connections: usize,
    /// Most live subscriptions on one WebSocket connection.
    pub max_subscriptions_per_connection: usize,
    /// Messages queued for one WebSocket client before it is disconnected.
    pub ws_send_queue: usize,
    /// Events the broadcaster holds for subscribers that fall behind.
    pub broadcast_capacity: usize,
    /// Most blocks one `eth_getLogs` (or `eth_getFilterLogs`) may scan.
    pub max_logs_block_range: u64,
    /// Most logs one `eth_getLogs` may return.
    pub max_logs: usize,
    /// Most installed polling filters (node-wide).
    pub max_filters: usize,
    /// Items a polling filter keeps between two polls (oldest dropped first).
    pub max_filter_items: usize,
    /// An unpolled filter is removed after this long (geth: 5 minutes).
    pub filter_timeout: Duration,
    /// Most epochs one `lux_getEpochUpdates` returns.
    pub max_epoch_updates: u64,
    /// Most blocks one `eth_feeHistory` covers (geth: 1,024).
    pub max_fee_history: u64,
    /// Priority fee suggested by `eth_maxPriorityFeePerGas` when recent blocks have no tips.
    pub default_priority_fee: u128,
    /// A client that has not sent a whole request head this long after
    /// connecting (or after its last answer, on a kept-alive connection)
    /// is disconnected (slow-loris; hyper's default with a timer: 30 s).
    pub header_read_timeout: Duration,
}

impl Default for RpcLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 5 * 1024 * 1024,
            max_ws_message_bytes: 32 * 1024 * 1024,
            max_batch_len: 1_000,
            max_connections: 10_240,
            max_subscriptions_per_connection: 1_000,
            ws_send_queue: 1_024,
            broadcast_capacity: 1_024,
            max_logs_block_range: 10_000,
            max_logs: 10_000,
            max_filters: 10_000,
            max_filter_items: 10_000,
            filter_timeout: Duration::from_secs(300),
            max_epoch_updates: 64,
            max_fee_history: 1_024,
            default_priority_fee: 1_000_000_000,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a call or the server failed. The JSON-RPC variants map to geth's
/// codes ([`RpcError::code`]); the message is what the client sees.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The body is not JSON (-32700, "parse error").
    #[error("parse error: {0}")]
    SerializationError(String),
    /// Valid JSON but not a JSON-RPC request, an empty or too large batch (-32600).
    #[error("{0}")]
    InvalidRequest(String),
    /// No such method (-32601), or notifications over HTTP, or an unknown subscription kind.
    #[error("{0}")]
    MethodNotFound(String),
    /// Arguments of the wrong number, type or value (-32602).
    #[error("{0}")]
    InvalidParams(String),
    /// A bug or a storage failure (-32603).
    #[error("internal error: {0}")]
    Internal(String),
    /// A plain failure that geth reports with -32000 ("subscription not
    /// found", "nonce too low: ...", "historical state is not available").
    #[error("{0}")]
    Server(String),
    /// A configured limit was hit (-32005), e.g. a log range too wide.
    #[error("{0}")]
    LimitExceeded(String),
    /// A listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The node fed an inconsistent event to the broadcaster.
    #[error("invalid broadcast event: {0}")]
    InvalidEvent(String),
}

impl RpcError {
    /// The JSON-RPC error code geth uses for this failure.
    pub fn code(&self) -> i64 {
        match self {
            Self::SerializationError(_) => -32700,
            Self::InvalidRequest(_) => -32600,
            Self::MethodNotFound(_) => -32601,
            Self::InvalidParams(_) => -32602,
            Self::Internal(_) | Self::Bind { .. } | Self::InvalidEvent(_) => -32603,
            Self::Server(_) => -32000,
            Self::LimitExceeded(_) => -32005,
        }
    }
}

impl From<crate::StoreError> for RpcError {
    fn from(e: crate::StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}
