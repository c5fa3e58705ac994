//! The proxy's live status page on its metrics address: `GET /` serves the
//! page shared with the node (`status/index.html` at the repository root,
//! compiled in), `GET /status.json` a snapshot with the last five minutes
//! of samples, and `GET /status/events` the same snapshot once a second as
//! server-sent events (`event: status`), without the history.
//!
//! The shape is the page's contract, documented in `docs/operations.md`
//! ("The snapshot"): the node's fields that make sense here (verified and
//! finalized heads, epoch, the light client's trusted validator set,
//! connections, subscriptions, alarms) plus `upstreams` and `cache`.
//!
//! Like the node's page (`full/src/rpc/status.rs`, the model, copied rather
//! than called: the proxy depends on `luxtensor-full` only in its `dev`
//! feature), one sampler task builds the snapshot once a second however many
//! people watch; viewers read it from a bounded broadcast ring ([`EVENT_RING`])
//! and are dropped when they fall a whole ring behind; at most
//! [`MAX_VIEWERS`] streams are open at once (more get HTTP 503). The pure
//! part, [`build`], takes every input, the clock included, as arguments.

use crate::proxy::Proxy;
use crate::score::{Health, UpstreamScore};
use alloy_primitives::{Address, B256, U256};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use luxtensor_light::SignedHeader;
use luxtensor_light::chain_spec::TOKEN;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

/// The page, shared with the node: plain HTML, CSS and script, no build step.
pub const STATUS_PAGE: &str = include_str!("../../status/index.html");

/// Samples kept for the charts: five minutes at one a second.
pub const HISTORY: usize = 300;

/// Snapshots a viewer may fall behind before it is dropped.
pub const EVENT_RING: usize = 8;

/// Event streams open at once; more viewers get HTTP 503.
pub const MAX_VIEWERS: usize = 64;

/// Validator rows in one snapshot; beyond it `validatorsTotal` says how many there are.
pub const MAX_ROWS: usize = 512;

/// Slots without a new verified head before `head-stalled` warns.
pub const STALL_WARN_SLOTS: u64 = 8;
/// Slots without a new verified head before `head-stalled` is critical.
pub const STALL_CRITICAL_SLOTS: u64 = 64;

/// How far back `verification-failed` looks.
pub const FAILURE_WINDOW_MS: u64 = 60_000;

/// How often the sampler builds a snapshot.
const PERIOD: Duration = Duration::from_secs(1);

/// A block as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockRef {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Slot the block was proposed in.
    pub slot: u64,
}

impl From<&SignedHeader> for BlockRef {
    fn from(h: &SignedHeader) -> Self {
        Self {
            number: h.header.number,
            hash: h.hash(),
            slot: h.header.slot,
        }
    }
}

/// Where the verified head is in its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochInfo {
    /// The verified head's epoch (the light client's trusted epoch before any head).
    pub current: u64,
    /// Nominal slots per epoch.
    pub length: u64,
    /// Slots from the head's slot to the epoch's last nominal slot.
    pub slots_left: u64,
    /// Slot length in milliseconds.
    pub slot_ms: u64,
}

/// One row of the validator table (the proxy knows the trusted set only:
/// every row is `active`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidatorRow {
    /// The staking account.
    pub owner: Address,
    /// Stake in wei (decimal string: it does not fit a JavaScript number).
    pub stake: String,
    /// Stake in whole tokens with up to four decimals, for display.
    pub stake_tokens: String,
    /// Always `active`.
    pub status: &'static str,
    /// Always `None` (the node's page uses it for pending and exiting rows).
    pub epoch: Option<u64>,
}

/// One row of the upstream table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamRow {
    /// The upstream's URL.
    pub name: String,
    /// `healthy`, `lagging`, `unavailable` or `demoted` ([`Health::name`]).
    pub state: &'static str,
    /// Blocks behind the verified head; `None` before it reported a head.
    pub lag: Option<u64>,
    /// Mean latency in milliseconds; `None` before its first answer.
    pub latency_ms: Option<f64>,
    /// Its trust score (starts at 100, lies cost most).
    pub score: i32,
}

/// Cache hits and misses since the proxy started.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheInfo {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went upstream.
    pub misses: u64,
    /// `hits / (hits + misses)`; `None` before any lookup.
    pub hit_ratio: Option<f64>,
}

/// Something the operator should look at. Codes are stable (documented in
/// `docs/operations.md`); the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alarm {
    /// `info`, `warn` or `critical`.
    pub level: &'static str,
    /// Stable identifier, e.g. `upstream-down`.
    pub code: &'static str,
    /// What happened, in a sentence.
    pub message: String,
}

/// One point of the charts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Unix time in milliseconds.
    pub t: u64,
    /// Verified head number (0 before the first).
    pub head: u64,
    /// Head slot (to compute block intervals).
    #[serde(skip)]
    pub slot: u64,
    /// Cumulative calls answered (to compute the rate).
    #[serde(skip)]
    pub requests: u64,
    /// Cumulative cache hits.
    #[serde(skip)]
    pub hits: u64,
    /// Cumulative cache misses.
    #[serde(skip)]
    pub misses: u64,
    /// Cumulative answers refused for failing verification.
    #[serde(skip)]
    pub verification_failures: u64,
    /// Mean slot time per block since the previous sample; `None` when no block came.
    pub block_interval_ms: Option<f64>,
    /// Verified head minus finalized head.
    pub finality_lag: u64,
    /// Calls per second since the previous sample.
    pub rps: Option<f64>,
    /// Hits over lookups since the previous sample; `None` without lookups.
    pub cache_hit_ratio: Option<f64>,
}

/// What `/status.json` and each event carry (`history` only in the former).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Always `proxy` (the node says `node`).
    pub kind: &'static str,
    /// Program and version.
    pub version: String,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Unix time in milliseconds when the snapshot was taken.
    pub time: u64,
    /// The verified head (`None` before the first).
    pub head: Option<BlockRef>,
    /// The verified finalized head.
    pub finalized: Option<BlockRef>,
    /// `head.number − finalized.number`.
    pub finality_lag: u64,
    /// Milliseconds since the head's slot started.
    pub head_age_ms: Option<u64>,
    /// Epoch and slots left in it.
    pub epoch: EpochInfo,
    /// The light client's trusted set for the head's epoch (at most [`MAX_ROWS`]).
    pub validators: Vec<ValidatorRow>,
    /// Rows before truncation.
    pub validators_total: usize,
    /// One row per configured upstream.
    pub upstreams: Vec<UpstreamRow>,
    /// Cache hits and misses.
    pub cache: CacheInfo,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Live client subscriptions.
    pub subscriptions: u64,
    /// What needs the operator's attention, worst first.
    pub alarms: Vec<Alarm>,
    /// The newest chart point.
    pub sample: Sample,
    /// The last [`HISTORY`] points, oldest first (`/status.json` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Sample>>,
}

/// Everything [`build`] needs, read from the proxy in one go ([`gather`]).
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The chain.
    pub chain_id: u64,
    /// Slot length in milliseconds.
    pub slot_ms: u64,
    /// Genesis time in seconds.
    pub genesis_timestamp: u64,
    /// Nominal slots per epoch.
    pub epoch_length: u64,
    /// Verified head.
    pub head: Option<BlockRef>,
    /// Its epoch.
    pub head_epoch: Option<u64>,
    /// Verified finalized head.
    pub finalized: Option<BlockRef>,
    /// The light client's trusted epoch.
    pub trusted_epoch: u64,
    /// The trusted set for the head's epoch: (owner, stake).
    pub validators: Vec<(Address, U256)>,
    /// Per upstream: URL, health, score row.
    pub upstreams: Vec<(String, Health, UpstreamScore)>,
    /// Cumulative cache hits and misses.
    pub hits: u64,
    /// See `hits`.
    pub misses: u64,
    /// Cumulative calls answered.
    pub requests: u64,
    /// Cumulative verification failures.
    pub verification_failures: u64,
    /// Open WebSocket connections.
    pub connections: u64,
    /// Live subscriptions.
    pub subscriptions: u64,
}

/// Reads the proxy's state (each lock briefly, one at a time).
pub fn gather(proxy: &Proxy) -> Inputs {
    let head = proxy.head();
    let finalized = proxy.finalized();
    let (trusted_epoch, validators) = {
        let v = proxy.verified.lock().expect("not poisoned");
        let state = v.light.trusted_state();
        let epoch = head.as_ref().map_or(state.epoch, |h| h.header.epoch);
        let set = state.set_for(epoch).unwrap_or(&state.set);
        let rows = set
            .validators()
            .iter()
            .map(|v| (v.owner, v.stake))
            .collect();
        (state.epoch, rows)
    };
    let now = proxy.pool.now_ms();
    let upstreams = proxy
        .pool
        .upstreams()
        .iter()
        .enumerate()
        .map(|(id, u)| {
            let (health, row) = proxy
                .pool
                .with_board(|b| (b.health(id, now), b.row(id).clone()));
            (u.url.clone(), health, row)
        })
        .collect();
    let (hits, misses) = proxy
        .cache
        .lock()
        .expect("not poisoned")
        .counts()
        .values()
        .fold((0, 0), |(h, m), c| (h + c.hits, m + c.misses));
    let c = &proxy.counters;
    Inputs {
        chain_id: proxy.spec.chain_id,
        slot_ms: proxy.spec.slot_duration_ms,
        genesis_timestamp: proxy.spec.genesis_timestamp,
        epoch_length: proxy.spec.rotation.epoch_length,
        head_epoch: head.as_ref().map(|h| h.header.epoch),
        head: head.as_ref().map(BlockRef::from),
        finalized: finalized.as_ref().map(BlockRef::from),
        trusted_epoch,
        validators,
        upstreams,
        hits,
        misses,
        requests: c.requests.load(Ordering::Relaxed),
        verification_failures: c.verification_failures.load(Ordering::Relaxed),
        connections: c.ws_connections.load(Ordering::Relaxed) as u64,
        subscriptions: c.subscriptions.load(Ordering::Relaxed) as u64,
    }
}

/// Whole tokens with up to four decimals (trailing zeros trimmed).
pub fn format_tokens(wei: U256) -> String {
    let whole = wei / TOKEN;
    let frac = (wei % TOKEN) / (TOKEN / U256::from(10_000u64));
    if frac.is_zero() {
        return whole.to_string();
    }
    let digits = format!("{:04}", frac.to::<u64>());
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// The last nominal slot of `epoch` (as `luxtensor_full::execution` computes it).
fn last_slot_of_epoch(epoch_length: u64, epoch: u64) -> u64 {
    epoch
        .saturating_add(1)
        .saturating_mul(epoch_length)
        .saturating_sub(1)
}

/// The snapshot for `i` at Unix time `t` (ms). `prev` is the previous
/// sample (for rates), `failures_before` the cumulative verification
/// failures [`FAILURE_WINDOW_MS`] ago (or the oldest known). Pure.
pub fn build(i: &Inputs, t: u64, prev: Option<&Sample>, failures_before: u64) -> Snapshot {
    let head_number = i.head.map_or(0, |h| h.number);
    let finality_lag = match (i.head, i.finalized) {
        (Some(h), Some(f)) => h.number.saturating_sub(f.number),
        _ => 0,
    };
    let head_age_ms = i.head.map(|h| {
        let start = i
            .genesis_timestamp
            .saturating_mul(1000)
            .saturating_add(h.slot.saturating_mul(i.slot_ms));
        t.saturating_sub(start)
    });
    let current = i.head_epoch.unwrap_or(i.trusted_epoch);
    let slots_left = i.head.map_or(0, |h| {
        last_slot_of_epoch(i.epoch_length, current).saturating_sub(h.slot)
    });
    let upstreams: Vec<UpstreamRow> = i
        .upstreams
        .iter()
        .map(|(url, health, row)| UpstreamRow {
            name: url.clone(),
            state: health.name(),
            lag: (row.best_block > 0).then(|| head_number.saturating_sub(row.best_block)),
            latency_ms: (row.successes > 0).then_some(row.latency_us / 1000.0),
            score: row.trust,
        })
        .collect();
    let lookups = i.hits + i.misses;
    let cache = CacheInfo {
        hits: i.hits,
        misses: i.misses,
        hit_ratio: (lookups > 0).then(|| i.hits as f64 / lookups as f64),
    };
    let total = i.validators.len();
    let validators = i
        .validators
        .iter()
        .take(MAX_ROWS)
        .map(|&(owner, stake)| ValidatorRow {
            owner,
            stake: stake.to_string(),
            stake_tokens: format_tokens(stake),
            status: "active",
            epoch: None,
        })
        .collect();
    let sample = next_sample(prev, t, i, finality_lag);
    Snapshot {
        kind: "proxy",
        version: format!("luxtensor-proxy {}", env!("CARGO_PKG_VERSION")),
        chain_id: i.chain_id,
        time: t,
        head: i.head,
        finalized: i.finalized,
        finality_lag,
        head_age_ms,
        epoch: EpochInfo {
            current,
            length: i.epoch_length,
            slots_left,
            slot_ms: i.slot_ms,
        },
        validators,
        validators_total: total,
        alarms: alarms(
            i,
            head_age_ms,
            i.verification_failures.saturating_sub(failures_before),
        ),
        upstreams,
        cache,
        connections: i.connections,
        subscriptions: i.subscriptions,
        sample,
        history: None,
    }
}

/// The chart point after `prev`.
fn next_sample(prev: Option<&Sample>, t: u64, i: &Inputs, finality_lag: u64) -> Sample {
    let head = i.head.map_or(0, |h| h.number);
    let slot = i.head.map_or(0, |h| h.slot);
    let (block_interval_ms, rps, cache_hit_ratio) = match prev {
        Some(p) => {
            let blocks = head.saturating_sub(p.head);
            let interval = (blocks > 0 && p.head > 0)
                .then(|| slot.saturating_sub(p.slot) as f64 * i.slot_ms as f64 / blocks as f64);
            let dt = t.saturating_sub(p.t);
            let rps =
                (dt > 0).then(|| i.requests.saturating_sub(p.requests) as f64 * 1000.0 / dt as f64);
            let hits = i.hits.saturating_sub(p.hits);
            let lookups = hits + i.misses.saturating_sub(p.misses);
            let ratio = (lookups > 0).then(|| hits as f64 / lookups as f64);
            (interval, rps, ratio)
        }
        None => (None, None, None),
    };
    Sample {
        t,
        head,
        slot,
        requests: i.requests,
        hits: i.hits,
        misses: i.misses,
        verification_failures: i.verification_failures,
        block_interval_ms,
        finality_lag,
        rps,
        cache_hit_ratio,
    }
}

/// The alarms, worst first: `no-upstream`, `head-stalled`, `upstream-down`,
/// `verification-failed` (`recent_failures` in the last minute).
fn alarms(i: &Inputs, head_age_ms: Option<u64>, recent_failures: u64) -> Vec<Alarm> {
    let mut out = Vec::new();
    let down: Vec<&str> = i
        .upstreams
        .iter()
        .filter(|(_, h, _)| matches!(h, Health::Unavailable | Health::Demoted))
        .map(|(url, _, _)| url.as_str())
        .collect();
    let usable = i.upstreams.len() - down.len();
    if usable == 0 {
        out.push(Alarm {
            level: "critical",
            code: "no-upstream",
            message:
                "no usable upstream: nothing new can be verified or served (/health says degraded)"
                    .into(),
        });
    }
    let slot_ms = i.slot_ms.max(1);
    match head_age_ms {
        None => out.push(Alarm {
            level: "warn",
            code: "head-stalled",
            message: "no verified head yet: the light client has not verified a block".into(),
        }),
        Some(age) if age / slot_ms >= STALL_WARN_SLOTS => {
            let slots = age / slot_ms;
            out.push(Alarm {
                level: if slots >= STALL_CRITICAL_SLOTS {
                    "critical"
                } else {
                    "warn"
                },
                code: "head-stalled",
                message: format!(
                    "no new verified head for {:.1} s ({slots} slots): the chain is not finalizing or the upstreams are behind",
                    age as f64 / 1000.0
                ),
            });
        }
        Some(_) => {}
    }
    if !down.is_empty() && usable > 0 {
        out.push(Alarm {
            level: "warn",
            code: "upstream-down",
            message: format!(
                "{} of {} upstreams down: {}",
                down.len(),
                i.upstreams.len(),
                down.join(", ")
            ),
        });
    }
    if recent_failures > 0 {
        out.push(Alarm {
            level: "warn",
            code: "verification-failed",
            message: format!(
                "{recent_failures} upstream answer(s) failed verification in the last minute (never served; the upstream was demoted)"
            ),
        });
    }
    let rank = |a: &Alarm| match a.level {
        "critical" => 0,
        "warn" => 1,
        _ => 2,
    };
    out.sort_by_key(rank);
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The sampler's shared state: history and the event ring.
struct Hub {
    proxy: Arc<Proxy>,
    history: Mutex<VecDeque<Sample>>,
    /// The latest snapshot as JSON, what a new viewer gets first.
    latest: Mutex<Option<Arc<str>>>,
    events: broadcast::Sender<Arc<str>>,
    viewers: Arc<Semaphore>,
}

impl Hub {
    /// The snapshot now, against the stored history (not recorded).
    fn snapshot(&self, t: u64) -> Snapshot {
        let inputs = gather(&self.proxy);
        let history = self.history.lock().expect("not poisoned");
        let prev = history.back();
        let before = history
            .iter()
            .find(|s| s.t.saturating_add(FAILURE_WINDOW_MS) >= t)
            .or(prev)
            .map_or(0, |s| s.verification_failures);
        build(&inputs, t, prev, before)
    }

    /// Takes one sample, records and publishes it.
    fn tick(&self) {
        let snapshot = self.snapshot(now_ms());
        {
            let mut history = self.history.lock().expect("not poisoned");
            if history.len() >= HISTORY {
                history.pop_front();
            }
            history.push_back(snapshot.sample);
        }
        let json: Arc<str> = serde_json::to_string(&snapshot)
            .expect("snapshot serializes")
            .into();
        *self.latest.lock().expect("not poisoned") = Some(json.clone());
        // No viewers is not an error.
        let _ = self.events.send(json);
    }
}

/// The routes `/`, `/status.json` and `/status/events`, and the sampler task
/// (it ends when the returned router is dropped). Call inside a tokio runtime.
pub fn router(proxy: Arc<Proxy>) -> Router {
    let (events, _) = broadcast::channel(EVENT_RING);
    let hub = Arc::new(Hub {
        proxy,
        history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        latest: Mutex::new(None),
        events,
        viewers: Arc::new(Semaphore::new(MAX_VIEWERS)),
    });
    spawn_sampler(Arc::downgrade(&hub));
    Router::new()
        .route("/", get(page))
        .route("/status.json", get(snapshot_json))
        .route("/status/events", get(events_stream))
        .with_state(hub)
}

fn spawn_sampler(hub: Weak<Hub>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(hub) = hub.upgrade() else { return };
            // Short std locks only: no need to leave the async thread.
            hub.tick();
        }
    });
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

async fn snapshot_json(State(hub): State<Arc<Hub>>) -> Response {
    let mut snapshot = hub.snapshot(now_ms());
    let history: Vec<Sample> = hub
        .history
        .lock()
        .expect("not poisoned")
        .iter()
        .copied()
        .collect();
    if let Some(last) = history.last() {
        snapshot.sample = *last;
    }
    snapshot.history = Some(history);
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        serde_json::to_string(&snapshot).expect("snapshot serializes"),
    )
        .into_response()
}

/// One viewer's stream: the latest snapshot at once, then each new one.
/// Ends when the viewer falls [`EVENT_RING`] snapshots behind.
async fn events_stream(State(hub): State<Arc<Hub>>) -> Response {
    let Ok(permit) = hub.viewers.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many status viewers\n").into_response();
    };
    struct Viewer {
        rx: broadcast::Receiver<Arc<str>>,
        first: Option<Arc<str>>,
        _permit: OwnedSemaphorePermit,
    }
    let viewer = Viewer {
        rx: hub.events.subscribe(),
        first: hub.latest.lock().expect("not poisoned").clone(),
        _permit: permit,
    };
    let stream = futures::stream::unfold(viewer, |mut v| async move {
        let json = match v.first.take() {
            Some(json) => json,
            None => match v.rx.recv().await {
                Ok(json) => json,
                // Lagged: a slow viewer is dropped (its browser reconnects);
                // Closed: the proxy stops.
                Err(_) => return None,
            },
        };
        let event = Event::default().event("status").data(&*json);
        Some((Ok::<_, std::convert::Infallible>(event), v))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use luxtensor_light::ChainSpec;

    /// Inputs for a fresh proxy of `spec`: genesis set, no head, no upstreams.
    fn inputs_for(spec: &ChainSpec) -> Inputs {
        Inputs {
            chain_id: spec.chain_id,
            slot_ms: spec.slot_duration_ms,
            genesis_timestamp: spec.genesis_timestamp,
            epoch_length: spec.rotation.epoch_length,
            head: None,
            head_epoch: None,
            finalized: None,
            trusted_epoch: 0,
            validators: spec.validators.iter().map(|v| (v.owner, v.stake)).collect(),
            upstreams: Vec::new(),
            hits: 0,
            misses: 0,
            requests: 0,
            verification_failures: 0,
            connections: 0,
            subscriptions: 0,
        }
    }

    fn at(number: u64, slot: u64) -> BlockRef {
        BlockRef {
            number,
            hash: B256::repeat_byte(number as u8),
            slot,
        }
    }

    fn row(best_block: u64, successes: u64, latency_us: f64, trust: i32) -> UpstreamScore {
        UpstreamScore {
            best_block,
            successes,
            latency_us,
            trust,
            ..UpstreamScore::default()
        }
    }

    /// A devnet proxy whose head is block 20 at slot 22, taken 100 ms into slot 22.
    fn healthy() -> (Inputs, u64) {
        let spec = ChainSpec::devnet(4);
        let mut i = inputs_for(&spec);
        i.head = Some(at(20, 22));
        i.head_epoch = Some(22 / spec.rotation.epoch_length);
        i.finalized = Some(at(18, 20));
        i.upstreams = vec![
            ("ws://a".into(), Health::Healthy, row(20, 5, 2_500.0, 100)),
            ("ws://b".into(), Health::Healthy, row(19, 5, 4_000.0, 100)),
        ];
        let t = spec.genesis_timestamp * 1000 + 22 * spec.slot_duration_ms + 100;
        (i, t)
    }

    fn codes(s: &Snapshot) -> Vec<(&'static str, &'static str)> {
        s.alarms.iter().map(|a| (a.level, a.code)).collect()
    }

    #[test]
    fn snapshot_has_the_documented_proxy_shape() {
        let (i, t) = healthy();
        let s = build(&i, t, None, 0);
        let json = serde_json::to_value(&s).unwrap();
        for field in [
            "kind",
            "version",
            "chainId",
            "time",
            "head",
            "finalized",
            "finalityLag",
            "headAgeMs",
            "epoch",
            "validators",
            "validatorsTotal",
            "upstreams",
            "cache",
            "connections",
            "subscriptions",
            "alarms",
            "sample",
        ] {
            assert!(json.get(field).is_some(), "missing {field}: {json}");
        }
        assert_eq!(json["kind"], "proxy");
        assert!(json.get("history").is_none());
        assert!(json.get("peers").is_none(), "node-only field");
        assert_eq!(json["head"]["number"], 20);
        assert_eq!(json["finalityLag"], 2);
        assert_eq!(json["headAgeMs"], 100);
        assert_eq!(json["validators"].as_array().unwrap().len(), 4);
        assert_eq!(json["validators"][0]["status"], "active");
        assert_eq!(json["validators"][0]["stakeTokens"], "32");
        assert_eq!(
            json["upstreams"][1],
            serde_json::json!({"name": "ws://b", "state": "healthy", "lag": 1, "latencyMs": 4.0, "score": 100})
        );
        assert_eq!(
            json["sample"]["cacheHitRatio"],
            serde_json::Value::Null,
            "no lookups yet: a gap, not zero"
        );
        assert_eq!(codes(&s), []);
    }

    #[test]
    fn epoch_and_slots_left_follow_the_head() {
        let (i, t) = healthy();
        let len = i.epoch_length;
        let s = build(&i, t, None, 0);
        assert_eq!(s.epoch.current, 22 / len);
        assert_eq!(s.epoch.slots_left, (22 / len + 1) * len - 1 - 22);
        assert!(s.epoch.slots_left < len);
    }

    #[test]
    fn upstream_rows_say_unknown_before_any_answer() {
        let (mut i, t) = healthy();
        i.upstreams[1].2 = row(0, 0, 0.0, 100);
        let s = build(&i, t, None, 0);
        assert_eq!(s.upstreams[1].lag, None);
        assert_eq!(s.upstreams[1].latency_ms, None);
        assert_eq!(s.upstreams[0].latency_ms, Some(2.5));
    }

    #[test]
    fn a_down_upstream_warns_and_none_left_is_critical() {
        let (mut i, t) = healthy();
        i.upstreams[1].1 = Health::Unavailable;
        let s = build(&i, t, None, 0);
        assert_eq!(codes(&s), [("warn", "upstream-down")]);
        assert!(s.alarms[0].message.contains("ws://b"));
        assert_eq!(s.upstreams[1].state, "unavailable");
        i.upstreams[0].1 = Health::Demoted;
        let s = build(&i, t, None, 0);
        assert_eq!(codes(&s), [("critical", "no-upstream")]);
        // Lagging is usable, not down.
        i.upstreams[0].1 = Health::Lagging;
        assert_eq!(codes(&build(&i, t, None, 0)), [("warn", "upstream-down")]);
    }

    #[test]
    fn stalls_warn_then_turn_critical_and_no_head_is_reported() {
        let (mut i, t) = healthy();
        let slot = i.slot_ms;
        let warn = build(&i, t + STALL_WARN_SLOTS * slot, None, 0);
        assert_eq!(codes(&warn), [("warn", "head-stalled")]);
        let critical = build(&i, t + STALL_CRITICAL_SLOTS * slot, None, 0);
        assert_eq!(codes(&critical), [("critical", "head-stalled")]);
        i.head = None;
        i.head_epoch = None;
        let none = build(&i, t, None, 0);
        assert_eq!(codes(&none), [("warn", "head-stalled")]);
        assert_eq!((none.head_age_ms, none.epoch.slots_left), (None, 0));
    }

    #[test]
    fn verification_failures_alarm_only_within_the_window() {
        let (mut i, t) = healthy();
        i.verification_failures = 3;
        let s = build(&i, t, None, 1);
        assert_eq!(codes(&s), [("warn", "verification-failed")]);
        assert!(s.alarms[0].message.starts_with("2 "));
        assert_eq!(codes(&build(&i, t, None, 3)), []);
    }

    #[test]
    fn samples_give_interval_rate_and_cache_ratio_since_the_previous() {
        let (mut i, t) = healthy();
        i.requests = 100;
        i.hits = 10;
        i.misses = 10;
        let first = build(&i, t, None, 0).sample;
        assert_eq!((first.block_interval_ms, first.rps), (None, None));
        // Two blocks over three slots in 1.5 s, 30 calls, 9 hits of 10 lookups.
        i.head = Some(at(22, 25));
        i.requests = 130;
        i.hits = 19;
        i.misses = 11;
        let second = build(&i, t + 1_500, Some(&first), 0);
        let s = second.sample;
        assert_eq!(s.block_interval_ms, Some(3.0 * i.slot_ms as f64 / 2.0));
        assert_eq!(s.rps, Some(20.0));
        assert_eq!(s.cache_hit_ratio, Some(0.9));
        assert_eq!(second.cache.hit_ratio, Some(19.0 / 30.0));
        let json = serde_json::to_value(s).unwrap();
        assert!(json.get("requests").is_none() && json.get("hits").is_none());
    }

    #[test]
    fn tokens_are_formatted_with_at_most_four_decimals() {
        assert_eq!(format_tokens(U256::ZERO), "0");
        assert_eq!(format_tokens(TOKEN + TOKEN / U256::from(2)), "1.5");
        assert_eq!(format_tokens(TOKEN / U256::from(3)), "0.3333");
    }

    /// A proxy over an unreachable upstream, trusting genesis (no head).
    fn fresh_proxy() -> Arc<Proxy> {
        use luxtensor_light::client::{
            AgePolicy, Checkpoint, CheckpointMaterial, Config, LightClient,
        };
        let spec = ChainSpec::devnet(4);
        let policy = AgePolicy {
            current_epoch: 0,
            allow_old: false,
        };
        let state = Checkpoint::genesis(&spec)
            .trust(&spec, CheckpointMaterial::None, policy)
            .unwrap();
        let light = LightClient::new(spec.clone(), state, Config::default()).unwrap();
        let pool = crate::pool::Pool::new(
            &["http://127.0.0.1:9".to_string()],
            Duration::from_millis(200),
            Default::default(),
        )
        .unwrap();
        Proxy::new(crate::ProxyConfig::default(), spec, pool, light)
    }

    /// Sends `GET path` and returns the status line and what arrived within `wait`.
    async fn get(addr: std::net::SocketAddr, path: &str, wait: Duration) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.lines().next().unwrap_or_default().to_string();
        (status, text)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn served_page_json_and_bounded_event_streams() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(fresh_proxy());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let wait = Duration::from_secs(3);

        let (status, page) = get(addr, "/", wait).await;
        assert!(status.contains("200"), "{status}");
        assert!(page.contains("id=\"upstreams\""));

        let (status, body) = get(addr, "/status.json", wait).await;
        assert!(status.contains("200"), "{status}");
        let json: serde_json::Value =
            serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(json["kind"], "proxy");
        assert_eq!(json["head"], serde_json::Value::Null);
        assert_eq!(json["validators"].as_array().unwrap().len(), 4);
        assert_eq!(json["upstreams"][0]["name"], "http://127.0.0.1:9");
        assert!(json["history"].is_array());
        assert!(
            json["alarms"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["code"] == "head-stalled"),
            "{json}"
        );

        // The first event comes within the sampler's period.
        let (status, events) = get(addr, "/status/events", wait).await;
        assert!(status.contains("200"), "{status}");
        assert!(events.contains("event: status"), "{events}");
        assert!(events.contains("\"kind\":\"proxy\""));

        // MAX_VIEWERS streams held open (each has its answer's head); one more is refused.
        let mut held = Vec::new();
        for _ in 0..MAX_VIEWERS {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET /status/events HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut head = [0u8; 12];
            tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head))
                .await
                .expect("the stream answers in time")
                .unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
            held.push(tcp);
        }
        let (status, _) = get(addr, "/status/events", Duration::from_secs(1)).await;
        assert!(status.contains("503"), "{status}");
        drop(held);
        let mut freed = false;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (status, _) = get(addr, "/status/events", Duration::from_millis(1500)).await;
            if status.contains("200") {
                freed = true;
                break;
            }
        }
        assert!(freed, "closed viewers give their slots back");
    }

    #[test]
    fn the_page_is_the_shared_one_with_the_proxy_sections() {
        assert!(STATUS_PAGE.contains("id=\"upstreams\""));
        assert!(STATUS_PAGE.contains("data-field=\"cache\""));
        assert!(STATUS_PAGE.contains("status/events"));
    }
}
