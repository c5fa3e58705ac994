//! The proxy's shared state and its verified fetches: headers (from the
//! light client and by parent-hash chain), blocks, receipts and state
//! proofs, each retried on another upstream when an answer fails its check.

use crate::cache::Cache;
use crate::canon::{Applied, Canon};
use crate::pool::Pool;
use crate::rpc::RpcFailure;
use crate::verify::{self, VerifiedTx, VerifyError};
use alloy_primitives::{Address, B256, Bytes};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lru::LruCache;
use luxtensor_light::client::LightClient;
use luxtensor_light::{ChainSpec, SignedHeader};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// Settings of a proxy, with their defaults.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// HTTP + WebSocket JSON-RPC (default 127.0.0.1:8545).
    pub listen: SocketAddr,
    /// A second address for WebSocket JSON-RPC only (HTTP POST there is
    /// refused with 405), if set.
    pub ws_listen: Option<SocketAddr>,
    /// `/metrics` and `/health` (default 127.0.0.1:9002); `None`: not served.
    pub metrics: Option<SocketAddr>,
    /// Forward what cannot be verified, marked `"trust":"unverified"` (default: refuse).
    pub relaxed: bool,
    /// Cache budget in bytes (default 256 MiB).
    pub cache_bytes: usize,
    /// Most cache entries (default 100,000).
    pub cache_entries: usize,
    /// Longest wait for one upstream answer (default 5 s).
    pub upstream_timeout: Duration,
    /// How often every upstream's certified head is polled (default 500 ms).
    pub poll_interval: Duration,
    /// A head subscription silent this long is moved to another upstream (default 10 s).
    pub subscription_silence: Duration,
    /// Verified headers kept (default 16,384).
    pub max_headers: usize,
    /// Most WebSocket and HTTP connections (default 20,000).
    pub max_connections: usize,
    /// Most subscriptions per WebSocket connection (default 1,000).
    pub max_subscriptions_per_connection: usize,
    /// Messages queued for one WebSocket client before it is disconnected (default 1,024).
    pub ws_send_queue: usize,
    /// Largest request body or WebSocket message (default 5 MiB).
    pub max_body_bytes: usize,
    /// An HTTP client that has not sent its whole request head this long
    /// is disconnected (default 30 s, as hyper's; slow-loris). The clock
    /// runs from the end of the previous request, so it also closes idle
    /// keep-alive connections.
    pub header_read_timeout: Duration,
    /// Most calls in one batch (default 1,000).
    pub max_batch_len: usize,
    /// Most blocks one `eth_getLogs` covers (default 10,000).
    pub max_logs_range: u64,
    /// Most logs one `eth_getLogs` returns (default 10,000).
    pub max_logs: usize,
    /// Only these methods are served, if set.
    pub allow_methods: Option<Vec<String>>,
    /// Requests must carry one of these keys (`?key=` or `x-api-key`), if set.
    pub api_keys: Option<Vec<String>>,
    /// Calls per second per client IP address, if set (default: no limit;
    /// the default address is loopback). Over it, a call is answered with
    /// error -32005 and the milliseconds to wait.
    pub rate_limit: Option<crate::ratelimit::RateLimit>,
    /// Where the light client's trusted state is kept across restarts
    /// ([`STATE_FILE`], rewritten after each catch-up and epoch change); `None`: nowhere.
    pub data_dir: Option<std::path::PathBuf>,
}

/// The trusted state's file in [`ProxyConfig::data_dir`] (the light client's format).
pub const STATE_FILE: &str = "trusted-state.bin";

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8545)),
            ws_listen: None,
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9002))),
            relaxed: false,
            cache_bytes: 256 << 20,
            cache_entries: 100_000,
            upstream_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_millis(500),
            subscription_silence: Duration::from_secs(10),
            max_headers: 16_384,
            max_connections: 20_000,
            max_subscriptions_per_connection: 1_000,
            ws_send_queue: 1_024,
            max_body_bytes: 5 << 20,
            header_read_timeout: Duration::from_secs(30),
            max_batch_len: 1_000,
            max_logs_range: 10_000,
            max_logs: 10_000,
            allow_methods: None,
            api_keys: None,
            rate_limit: None,
            data_dir: None,
        }
    }
}

/// The light client and the canonical window, behind one lock.
#[derive(Debug)]
pub struct Verified {
    /// The embedded light client (verifies QCs, epochs, finality).
    pub light: LightClient,
    /// The verified canonical chain the proxy serves from.
    pub canon: Canon,
}

/// A change of the verified chain, as subscribers see it.
#[derive(Debug)]
pub enum ChainEvent {
    /// Heads joined (and maybe left) the canonical chain.
    Heads {
        /// Headers that left, oldest first.
        removed: Vec<SignedHeader>,
        /// Headers that joined, oldest first.
        added: Vec<(SignedHeader, Arc<str>)>,
        /// Logs of the removed blocks (when logs are watched).
        removed_logs: Vec<alloy_rpc_types_eth::Log>,
        /// Logs of the added blocks (when logs are watched).
        added_logs: Vec<alloy_rpc_types_eth::Log>,
    },
    /// Blocks became final: their header JSON, oldest first.
    Finalized(Vec<(SignedHeader, Arc<str>)>),
    /// A pending transaction: its recomputed hash and its JSON.
    Pending {
        /// The hash, as a JSON string.
        hash: Arc<str>,
        /// The transaction JSON.
        full: Arc<str>,
    },
}

/// A block checked against its verified header.
#[derive(Debug)]
pub struct VerifiedBlock {
    /// Its header.
    pub header: SignedHeader,
    /// The node's JSON with full transactions.
    pub json: Value,
    /// Its transactions.
    pub txs: Vec<VerifiedTx>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Answers refused because they failed verification.
    pub verification_failures: AtomicU64,
    /// Calls refused as unverifiable (strict mode).
    pub refused_unverifiable: AtomicU64,
    /// Calls forwarded unverified (relaxed mode).
    pub forwarded_unverified: AtomicU64,
    /// WebSocket clients disconnected for not reading.
    pub slow_disconnects: AtomicU64,
    /// Open WebSocket connections.
    pub ws_connections: AtomicUsize,
    /// Live subscriptions.
    pub subscriptions: AtomicUsize,
    /// Live `logs` subscriptions and log filters (receipts are fetched only when > 0).
    pub log_watchers: AtomicUsize,
    /// Upstream subscriptions open now, by kind (`newHeads`, `newPendingTransactions`).
    pub upstream_subscriptions: [AtomicUsize; 2],
    /// Requests served.
    pub requests: AtomicU64,
    /// Upstream requests coalesced into one already in flight.
    pub coalesced: AtomicU64,
    /// Calls refused by the per-client rate limit.
    pub rate_limited: AtomicU64,
}

/// A computed answer and its cache scope (`None`: not cached).
pub type Scoped = Result<(Arc<str>, Option<crate::cache::Scope>), RpcFailure>;

type InFlight = Shared<BoxFuture<'static, Scoped>>;

/// Everything the server, the follower and the metrics share.
#[derive(Debug)]
pub struct Proxy {
    /// Settings.
    pub config: ProxyConfig,
    /// The chain.
    pub spec: ChainSpec,
    /// Upstreams and scores.
    pub pool: Pool,
    /// Light client and canonical window.
    pub verified: Mutex<Verified>,
    /// Response cache.
    pub cache: Mutex<Cache>,
    /// Blocks checked recently (by hash).
    pub blocks: Mutex<LruCache<B256, Arc<VerifiedBlock>>>,
    /// Receipts checked recently (by block hash).
    pub receipts: Mutex<LruCache<B256, Arc<Vec<Value>>>>,
    /// Identical requests in flight.
    pub inflight: Mutex<HashMap<String, InFlight>>,
    /// Polling filters.
    pub filters: Mutex<crate::filters::Filters>,
    /// The verified event stream.
    pub events: broadcast::Sender<Arc<ChainEvent>>,
    /// The same events for WebSocket connections (see [`crate::fanout`]).
    pub fanout: Arc<crate::fanout::Fanout>,
    /// Counters.
    pub counters: Counters,
    /// Per-client rate limit, if configured.
    pub limiter: Option<Mutex<crate::ratelimit::RateLimiter>>,
    /// The follower's driver (set when it starts).
    pub driver: std::sync::OnceLock<tokio::sync::mpsc::Sender<crate::follower::DriverMsg>>,
}

/// Capacity of the event stream; a connection that falls this far behind is slow.
pub const EVENT_CAPACITY: usize = 4096;
/// Most headers walked back to verify one old block.
pub const MAX_WALK: u64 = 4096;

impl Proxy {
    /// A proxy over `pool` trusting `light`'s state.
    pub fn new(config: ProxyConfig, spec: ChainSpec, pool: Pool, light: LightClient) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Arc::new(Self {
            cache: Mutex::new(Cache::new(config.cache_entries, config.cache_bytes)),
            verified: Mutex::new(Verified {
                light,
                canon: Canon::new(config.max_headers),
            }),
            blocks: Mutex::new(LruCache::new(NonZeroUsize::new(512).expect("non-zero"))),
            receipts: Mutex::new(LruCache::new(NonZeroUsize::new(512).expect("non-zero"))),
            inflight: Mutex::new(HashMap::new()),
            filters: Mutex::new(Default::default()),
            events,
            fanout: crate::fanout::Fanout::new(EVENT_CAPACITY),
            counters: Counters::default(),
            driver: std::sync::OnceLock::new(),
            limiter: config
                .rate_limit
                .map(|l| Mutex::new(crate::ratelimit::RateLimiter::new(l))),
            config,
            spec,
            pool,
        })
    }

    /// Writes the light client's trusted state to [`ProxyConfig::data_dir`]
    /// (a temporary file renamed over the old one, so a crash leaves either).
    pub fn save_state(&self) {
        let Some(dir) = &self.config.data_dir else {
            return;
        };
        let bytes = self
            .verified
            .lock()
            .expect("not poisoned")
            .light
            .trusted_state()
            .encode();
        let path = dir.join(STATE_FILE);
        let temporary = dir.join(format!("{STATE_FILE}.tmp"));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&temporary, &bytes))
            .and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the trusted state");
        }
    }

    /// The verified head (number, header).
    pub fn head(&self) -> Option<SignedHeader> {
        self.verified
            .lock()
            .expect("not poisoned")
            .canon
            .head()
            .cloned()
    }

    /// The newest verified final header.
    pub fn finalized(&self) -> Option<SignedHeader> {
        self.verified
            .lock()
            .expect("not poisoned")
            .canon
            .finalized_header()
            .cloned()
    }

    /// The owner of a header's proposer, if the light client knows the set.
    pub fn miner(&self, header: &SignedHeader) -> Address {
        let v = self.verified.lock().expect("not poisoned");
        v.light
            .trusted_state()
            .set_for(header.epoch)
            .and_then(|set| set.validators().get(header.proposer_index as usize))
            .map(|val| val.owner)
            .unwrap_or_default()
    }

    /// The node's header JSON of a verified header, as text.
    pub fn header_text(&self, header: &SignedHeader) -> Arc<str> {
        verify::header_json(header, self.miner(header))
            .to_string()
            .into()
    }

    /// Calls the upstreams until one answer passes `check`; liars are
    /// demoted and excluded. A JSON-RPC error answer is returned as such.
    pub async fn fetch_checked<T>(
        &self,
        method: &str,
        params: Value,
        mut check: impl FnMut(&Value) -> Result<T, VerifyError>,
    ) -> Result<T, RpcFailure> {
        let mut exclude = Vec::new();
        loop {
            let (id, answer) = self
                .pool
                .call(method, &params, &exclude)
                .await
                .map_err(|e| RpcFailure::unavailable(e.to_string()))?;
            let value = answer.map_err(RpcFailure::from_upstream)?;
            match check(&value) {
                Ok(t) => {
                    self.pool.verified(id);
                    return Ok(t);
                }
                Err(e) => {
                    self.counters
                        .verification_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.pool.lie(id, &format!("{method}: {e}"));
                    exclude.push(id);
                }
            }
        }
    }

    /// A signed header from `lux_getRawHeader` (not yet verified).
    async fn raw_header(
        &self,
        number: u64,
        exclude: &[usize],
    ) -> Result<(usize, SignedHeader), RpcFailure> {
        let (id, answer) = self
            .pool
            .call(
                "lux_getRawHeader",
                &json!([format!("{number:#x}")]),
                exclude,
            )
            .await
            .map_err(|e| RpcFailure::unavailable(e.to_string()))?;
        let value = answer.map_err(RpcFailure::from_upstream)?;
        let bytes: Bytes = serde_json::from_value(value)
            .map_err(|e| RpcFailure::unavailable(format!("lux_getRawHeader: {e}")))?;
        let header = SignedHeader::decode(&bytes)
            .map_err(|e| RpcFailure::unavailable(format!("lux_getRawHeader: {e}")))?;
        if header.number != number {
            self.pool.lie(id, "lux_getRawHeader: wrong number");
            return Err(RpcFailure::unavailable(
                "an upstream served the wrong header".into(),
            ));
        }
        Ok((id, header))
    }

    /// The canonical headers `from..=to` from one upstream (checked later by ancestry).
    pub async fn raw_headers(&self, from: u64, to: u64) -> Result<Vec<SignedHeader>, RpcFailure> {
        let mut out = Vec::new();
        for n in from..=to {
            out.push(self.raw_header(n, &[]).await?.1);
        }
        Ok(out)
    }

    /// The verified canonical header at `number` (walking back from the
    /// lowest one held when needed, at most [`MAX_WALK`] headers).
    pub async fn header_by_number(&self, number: u64) -> Result<Option<SignedHeader>, RpcFailure> {
        let lowest = {
            let v = self.verified.lock().expect("not poisoned");
            if let Some(h) = v.canon.by_number(number) {
                return Ok(Some(h.clone()));
            }
            match (v.canon.lowest(), v.canon.head()) {
                (Some(l), Some(_)) if number < l.number => l.number,
                (_, Some(h)) if number > h.number => return Ok(None),
                _ => {
                    return Err(RpcFailure::unavailable(
                        "no verified head yet: the light client is still catching up".into(),
                    ));
                }
            }
        };
        if lowest - number > MAX_WALK {
            return Err(RpcFailure::unverifiable(format!(
                "block {number} is more than {MAX_WALK} blocks below the oldest verified header ({lowest}); start the proxy from an older checkpoint"
            )));
        }
        // Up to three attempts with different upstreams' headers.
        for _ in 0..3 {
            let older = self.raw_headers(number, lowest - 1).await?;
            let result = self
                .verified
                .lock()
                .expect("not poisoned")
                .canon
                .extend_down(older);
            match result {
                Ok(_) => {
                    let v = self.verified.lock().expect("not poisoned");
                    return Ok(v.canon.by_number(number).cloned());
                }
                Err(e) => {
                    self.counters
                        .verification_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(best) = self.pool.order().first() {
                        self.pool.lie(*best, &format!("old headers: {e}"));
                    }
                }
            }
        }
        Err(RpcFailure::unavailable(
            "no upstream served headers that link to the verified chain".into(),
        ))
    }

    /// The verified canonical header with this hash, or `None` if the hash
    /// is not a canonical block (unknown, or reorged out).
    pub async fn header_by_hash(&self, hash: B256) -> Result<Option<SignedHeader>, RpcFailure> {
        if let Some(h) = self
            .verified
            .lock()
            .expect("not poisoned")
            .canon
            .by_hash(&hash)
        {
            return Ok(Some(h.clone()));
        }
        // Ask where it is, then verify the canonical header at that number.
        let claimed = self
            .fetch_checked("eth_getBlockByHash", json!([hash, false]), |v| {
                if v.is_null() {
                    return Ok(None);
                }
                let h = verify::header_from_json(v)?;
                Ok(Some(h.number))
            })
            .await?;
        let Some(number) = claimed else {
            return Ok(None);
        };
        Ok(self
            .header_by_number(number)
            .await?
            .filter(|h| h.hash() == hash))
    }

    /// The block of a verified header, with every transaction checked.
    pub async fn block(&self, header: &SignedHeader) -> Result<Arc<VerifiedBlock>, RpcFailure> {
        let hash = header.hash();
        if let Some(b) = self.blocks.lock().expect("not poisoned").get(&hash) {
            return Ok(b.clone());
        }
        let (json, txs) = self
            .fetch_checked("eth_getBlockByHash", json!([hash, true]), |v| {
                verify::verify_block(v, &header.header).map(|txs| (v.clone(), txs))
            })
            .await?;
        let block = Arc::new(VerifiedBlock {
            header: header.clone(),
            json,
            txs,
        });
        self.blocks
            .lock()
            .expect("not poisoned")
            .put(hash, block.clone());
        Ok(block)
    }

    /// The receipts of a verified block, checked against its receipts root.
    pub async fn receipts(&self, header: &SignedHeader) -> Result<Arc<Vec<Value>>, RpcFailure> {
        let hash = header.hash();
        if let Some(r) = self.receipts.lock().expect("not poisoned").get(&hash) {
            return Ok(r.clone());
        }
        let block = self.block(header).await?;
        let list = self
            .fetch_checked("eth_getBlockReceipts", json!([hash]), |v| {
                verify::verify_block_receipts(v, &header.header, &block.txs)
            })
            .await?;
        let list = Arc::new(list);
        self.receipts
            .lock()
            .expect("not poisoned")
            .put(hash, list.clone());
        Ok(list)
    }

    /// Applies a change of the canonical chain: cache invalidation and the
    /// event for subscribers (with the logs, if anybody watches logs).
    pub async fn publish(&self, applied: Applied) {
        if applied.added.is_empty() && applied.removed.is_empty() {
            return;
        }
        {
            let mut cache = self.cache.lock().expect("not poisoned");
            cache.new_head();
            let removed: Vec<B256> = applied.removed.iter().map(|h| h.hash()).collect();
            cache.reorg(&removed);
        }
        if let Some(head) = applied.added.last() {
            self.pool.with_board(|b| b.set_verified_head(head.number));
        }
        let watch_logs = self.counters.log_watchers.load(Ordering::Relaxed) > 0;
        let mut removed_logs = Vec::new();
        let mut added_logs = Vec::new();
        if watch_logs {
            for h in &applied.removed {
                if let Some(r) = self.receipts.lock().expect("not poisoned").get(&h.hash()) {
                    for mut log in verify::logs_of(r) {
                        log.removed = true;
                        removed_logs.push(log);
                    }
                }
            }
            for h in &applied.added {
                if h.logs_bloom.is_zero() {
                    continue;
                }
                match self.receipts(h).await {
                    Ok(r) => added_logs.extend(verify::logs_of(&r)),
                    Err(e) => {
                        tracing::warn!(number = h.number, error = %e.message, "no verified receipts for logs")
                    }
                }
            }
        }
        let added = applied
            .added
            .iter()
            .map(|h| (h.clone(), self.header_text(h)))
            .collect();
        self.emit(ChainEvent::Heads {
            removed: applied.removed,
            added,
            removed_logs,
            added_logs,
        });
    }

    /// Sends an event to subscribers and polling filters.
    pub fn emit(&self, event: ChainEvent) {
        self.filters.lock().expect("not poisoned").on_event(&event);
        let event = Arc::new(event);
        let _ = self.events.send(event.clone());
        self.fanout.publish(event);
    }

    /// Runs `compute` once for concurrent identical `key`s.
    pub async fn coalesce(&self, key: String, compute: BoxFuture<'static, Scoped>) -> Scoped {
        let shared = {
            let mut inflight = self.inflight.lock().expect("not poisoned");
            match inflight.get(&key) {
                Some(s) => {
                    self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                    s.clone()
                }
                None => {
                    let s = compute.shared();
                    inflight.insert(key.clone(), s.clone());
                    s
                }
            }
        };
        let result = shared.clone().await;
        // Whoever finishes first clears the entry (the leader may have gone).
        let mut inflight = self.inflight.lock().expect("not poisoned");
        if inflight.get(&key).is_some_and(|s| s.ptr_eq(&shared)) {
            inflight.remove(&key);
        }
        result
    }
}
