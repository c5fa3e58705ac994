//! The node's live status page on the metrics address: `GET /` serves the
//! page shared with the proxy (`status/index.html` at the repository root,
//! compiled in), `GET /status.json` a [`Snapshot`] with the last five
//! minutes of [`Sample`]s, and `GET /status/events` the same snapshot once a
//! second as server-sent events (`event: status`), without the history.
//!
//! One sampler task builds the snapshot once a second, whoever watches, and
//! keeps [`HISTORY`] samples; every viewer reads the same rendered JSON from
//! a bounded broadcast ring ([`EVENT_RING`] snapshots). A viewer that falls
//! a whole ring behind is dropped (its browser reconnects), and at most
//! [`MAX_VIEWERS`] event streams are open at once (more get HTTP 503). The
//! sampler ends when the router is dropped.
//!
//! The JSON contract (field names, alarm codes) is the page's, documented in
//! `docs/operations.md`; the proxy serves the same page with its own
//! snapshot. The pure parts ([`validator_rows`], [`alarms`],
//! [`Sample::next`]) take every input, the clock included, as arguments.

use super::RpcState;
use crate::ValidatorRotation;
use alloy_primitives::{Address, B256, U256};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use luxtensor_light::chain_spec::TOKEN;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

/// The page, shared with the proxy: plain HTML, CSS and script, no build step.
pub const STATUS_PAGE: &str = include_str!("../../../status/index.html");

/// Samples kept for the charts: five minutes at one a second.
pub const HISTORY: usize = 300;

/// Snapshots a viewer may fall behind before it is dropped.
pub const EVENT_RING: usize = 8;

/// Event streams open at once; more viewers get HTTP 503.
pub const MAX_VIEWERS: usize = 64;

/// Validator rows in one snapshot; beyond it `validatorsTotal` says how many there are.
pub const MAX_ROWS: usize = 512;

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

/// Where the chain is in its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochInfo {
    /// The epoch being executed.
    pub current: u64,
    /// Nominal slots per epoch.
    pub length: u64,
    /// Slots from the head's slot to the epoch's last nominal slot (0 when
    /// the epoch has run past it, waiting for its ending block to finalize).
    pub slots_left: u64,
    /// Slot length in milliseconds.
    pub slot_ms: u64,
}

/// One row of the validator table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidatorRow {
    /// The staking account.
    pub owner: Address,
    /// Stake in wei (decimal string: it does not fit a JavaScript number).
    pub stake: String,
    /// Stake in whole tokens with up to four decimals, for display.
    pub stake_tokens: String,
    /// `active`, `pending`, `exiting` or `slashed`.
    pub status: &'static str,
    /// Activation epoch (`pending`) or the first epoch without it (`exiting`).
    pub epoch: Option<u64>,
}

/// Sync progress as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncInfo {
    /// True while range sync runs.
    pub syncing: bool,
    /// Head when this sync started.
    pub starting: u64,
    /// Head now.
    pub current: u64,
    /// Highest block a peer announced.
    pub highest: u64,
    /// Fraction done, 0 to 1 (1 when caught up).
    pub progress: f64,
}

/// Something the operator should look at. Codes are stable (documented in
/// `docs/operations.md`); the message is for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alarm {
    /// `info`, `warn` or `critical`.
    pub level: &'static str,
    /// Stable identifier, e.g. `head-stalled`.
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
    /// Head number.
    pub head: u64,
    /// Head slot (to compute block intervals).
    #[serde(skip)]
    pub slot: u64,
    /// Cumulative JSON-RPC calls (to compute the rate).
    #[serde(skip)]
    pub requests: u64,
    /// Mean slot time per block since the previous sample that saw a new
    /// block (`slots × slot length / blocks`); `None` when no block came.
    pub block_interval_ms: Option<f64>,
    /// Head minus finalized head.
    pub finality_lag: u64,
    /// JSON-RPC calls per second since the previous sample.
    pub rps: Option<f64>,
}

impl Sample {
    /// The sample after `prev` (pure: every input is an argument).
    pub fn next(
        prev: Option<&Sample>,
        t: u64,
        head: BlockRef,
        finality_lag: u64,
        requests: u64,
        slot_ms: u64,
    ) -> Sample {
        let (block_interval_ms, rps) = match prev {
            Some(p) => {
                let blocks = head.number.saturating_sub(p.head);
                let interval = (blocks > 0).then(|| {
                    head.slot.saturating_sub(p.slot) as f64 * slot_ms as f64 / blocks as f64
                });
                let dt = t.saturating_sub(p.t);
                let rps = (dt > 0)
                    .then(|| requests.saturating_sub(p.requests) as f64 * 1000.0 / dt as f64);
                (interval, rps)
            }
            None => (None, None),
        };
        Sample {
            t,
            head: head.number,
            slot: head.slot,
            requests,
            block_interval_ms,
            finality_lag,
            rps,
        }
    }
}

/// What `/status.json` and each event carry (`history` only in the former).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// `node` (the proxy says `proxy`).
    pub kind: &'static str,
    /// Program and version, e.g. `luxtensor-node 0.1.0`.
    pub version: String,
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// Unix time in milliseconds when the snapshot was taken.
    pub time: u64,
    /// The verified head (today the newest finalized block: the node imports only finalized blocks).
    pub head: BlockRef,
    /// The finalized head.
    pub finalized: BlockRef,
    /// `head.number − finalized.number`.
    pub finality_lag: u64,
    /// Milliseconds since the head's slot started (how stale the head is).
    pub head_age_ms: u64,
    /// Epoch and slots left in it.
    pub epoch: EpochInfo,
    /// Current set, next set's newcomers, the activation queue (at most [`MAX_ROWS`]).
    pub validators: Vec<ValidatorRow>,
    /// Rows before truncation.
    pub validators_total: usize,
    /// Connected peers.
    pub peers: usize,
    /// Sync progress.
    pub sync: SyncInfo,
    /// Open RPC connections.
    pub connections: i64,
    /// Live `eth_subscribe` subscriptions.
    pub subscriptions: i64,
    /// What needs the operator's attention, worst first.
    pub alarms: Vec<Alarm>,
    /// The newest chart point.
    pub sample: Sample,
    /// The last [`HISTORY`] points, oldest first (`/status.json` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Sample>>,
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

fn row(owner: Address, stake: U256, status: &'static str, epoch: Option<u64>) -> ValidatorRow {
    ValidatorRow {
        owner,
        stake: stake.to_string(),
        stake_tokens: format_tokens(stake),
        status,
        epoch,
    }
}

/// The validator table from the rotation state: the current set (`active`,
/// `exiting` with the first epoch without it, `slashed`), members of the
/// fixed next set not yet active (`pending` at the next epoch), then the
/// activation queue (`pending` at its earliest activation epoch).
pub fn validator_rows(rotation: &ValidatorRotation) -> Vec<ValidatorRow> {
    let epoch = rotation.current_epoch();
    let exits: HashMap<Address, u64> = rotation.pending_exits().collect();
    let slashed: HashMap<Address, U256> = rotation.slashed().collect();
    let next = rotation.next_validators();
    let mut rows = Vec::new();
    for v in rotation.current_validators() {
        let leaves_next = !next.iter().any(|n| n.owner == v.owner);
        rows.push(if slashed.contains_key(&v.owner) {
            row(v.owner, v.stake, "slashed", None)
        } else if let Some(exit) = exits.get(&v.owner) {
            row(v.owner, v.stake, "exiting", Some(*exit))
        } else if leaves_next {
            row(v.owner, v.stake, "exiting", Some(epoch.saturating_add(1)))
        } else {
            row(v.owner, v.stake, "active", None)
        });
    }
    for v in next {
        if !rotation
            .current_validators()
            .iter()
            .any(|c| c.owner == v.owner)
        {
            rows.push(row(
                v.owner,
                v.stake,
                "pending",
                Some(epoch.saturating_add(1)),
            ));
        }
    }
    for (v, at) in rotation.pending_activations() {
        rows.push(row(v.owner, v.stake, "pending", Some(at)));
    }
    rows
}

/// What [`alarms`] looks at.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmInputs {
    /// Milliseconds since the head's slot started.
    pub head_age_ms: u64,
    /// Slot length in milliseconds.
    pub slot_ms: u64,
    /// Head minus finalized.
    pub finality_lag: u64,
    /// Nominal slots per epoch.
    pub epoch_length: u64,
    /// Connected peers.
    pub peers: usize,
    /// Validators in the current set (a one-validator chain needs no peers).
    pub validators: usize,
    /// Sync progress, if syncing.
    pub sync: Option<super::SyncProgress>,
    /// Slashed validators in the current or next set.
    pub slashed: usize,
}

/// Slots without a new head before `head-stalled` warns.
pub const STALL_WARN_SLOTS: u64 = 8;
/// Slots without a new head before `head-stalled` is critical.
pub const STALL_CRITICAL_SLOTS: u64 = 64;

/// The alarms for one snapshot, worst first. Pure.
pub fn alarms(i: &AlarmInputs) -> Vec<Alarm> {
    let mut out = Vec::new();
    let slot_ms = i.slot_ms.max(1);
    let stalled_slots = i.head_age_ms / slot_ms;
    if let Some(sync) = i.sync {
        out.push(Alarm {
            level: "info",
            code: "syncing",
            message: format!(
                "catching up: block {} of {} ({} to go); RPC answers from the synced part only",
                sync.current,
                sync.highest,
                sync.highest.saturating_sub(sync.current)
            ),
        });
    } else if stalled_slots >= STALL_WARN_SLOTS {
        let critical = stalled_slots >= STALL_CRITICAL_SLOTS;
        out.push(Alarm {
            level: if critical { "critical" } else { "warn" },
            code: "head-stalled",
            message: format!(
                "no new block for {:.1} s ({stalled_slots} slots): the chain or this node is not finalizing",
                i.head_age_ms as f64 / 1000.0
            ),
        });
    }
    if i.peers == 0 && i.validators > 1 {
        out.push(Alarm {
            level: "critical",
            code: "no-peers",
            message: "no peers connected: this node cannot receive blocks (check --bootnode and the p2p port)".into(),
        });
    }
    if i.finality_lag > i.epoch_length.max(1) {
        out.push(Alarm {
            level: "warn",
            code: "finality-lag",
            message: format!(
                "the head is {} blocks ahead of the finalized head (more than an epoch)",
                i.finality_lag
            ),
        });
    }
    if i.slashed > 0 {
        out.push(Alarm {
            level: "warn",
            code: "validator-slashed",
            message: format!(
                "{} validator(s) slashed for equivocation; they leave at the next open epoch",
                i.slashed
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

/// Builds a snapshot from the node's state (reads the chain under its lock).
fn build(state: &RpcState, t: u64, prev: Option<&Sample>) -> Snapshot {
    // `finalized()` is the one place that decides which block is final (today
    // the head: the node imports finalized blocks only). It takes the chain
    // lock itself, so it is read before, not under, the lock below.
    let (fin_number, fin_hash) = state.finalized();
    let (head, finalized, mut rows, epoch_now, current_len, slashed) = {
        let chain = state.read();
        let h = chain.head();
        let head = BlockRef {
            number: h.number,
            hash: h.hash(),
            slot: h.slot,
        };
        let finalized = match fin_hash == head.hash {
            true => head,
            false => BlockRef {
                number: fin_number,
                hash: fin_hash,
                slot: chain
                    .store()
                    .block(&fin_hash)
                    .ok()
                    .flatten()
                    .map_or(0, |b| b.header.header.slot),
            },
        };
        let rotation = chain.state().rotation();
        (
            head,
            finalized,
            validator_rows(rotation),
            rotation.current_epoch(),
            rotation.current_validators().len(),
            rotation.slashed().count(),
        )
    };
    let spec = &state.spec;
    let slot_ms = spec.slot_duration_ms;
    let slot_start = spec
        .genesis_timestamp
        .saturating_mul(1000)
        .saturating_add(head.slot.saturating_mul(slot_ms));
    let head_age_ms = t.saturating_sub(slot_start);
    let length = spec.rotation.epoch_length;
    let last_slot = crate::execution::last_slot_of_epoch(spec, epoch_now);
    let lag = head.number.saturating_sub(finalized.number);
    let sync = state.node.sync_status();
    let peers = state.node.peer_count();
    let requests = state.metrics.requests_total();
    let total = rows.len();
    rows.truncate(MAX_ROWS);
    Snapshot {
        kind: "node",
        version: format!("luxtensor-node {}", env!("CARGO_PKG_VERSION")),
        chain_id: spec.chain_id,
        time: t,
        head,
        finalized,
        finality_lag: lag,
        head_age_ms,
        epoch: EpochInfo {
            current: epoch_now,
            length,
            slots_left: last_slot.saturating_sub(head.slot),
            slot_ms,
        },
        validators: rows,
        validators_total: total,
        peers,
        sync: match sync {
            Some(s) => SyncInfo {
                syncing: true,
                starting: s.starting,
                current: s.current,
                highest: s.highest,
                progress: if s.highest > s.starting {
                    (s.current.saturating_sub(s.starting) as f64 / (s.highest - s.starting) as f64)
                        .min(1.0)
                } else {
                    1.0
                },
            },
            None => SyncInfo {
                syncing: false,
                starting: head.number,
                current: head.number,
                highest: head.number,
                progress: 1.0,
            },
        },
        connections: state.metrics.connections(),
        subscriptions: state.metrics.subscriptions(),
        alarms: alarms(&AlarmInputs {
            head_age_ms,
            slot_ms,
            finality_lag: lag,
            epoch_length: length,
            peers,
            validators: current_len,
            sync,
            slashed,
        }),
        sample: Sample::next(prev, t, head, lag, requests, slot_ms),
        history: None,
    }
}

/// The sampler's shared state: history and the event ring.
struct Hub {
    state: RpcState,
    history: Mutex<VecDeque<Sample>>,
    /// The latest snapshot as JSON, what a new viewer gets first.
    latest: Mutex<Option<Arc<str>>>,
    events: broadcast::Sender<Arc<str>>,
    viewers: Arc<Semaphore>,
}

impl Hub {
    /// Takes one sample, publishes it, returns the snapshot.
    fn tick(&self) -> Snapshot {
        let prev = self.history.lock().expect("not poisoned").back().copied();
        let snapshot = build(&self.state, now_ms(), prev.as_ref());
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
        snapshot
    }
}

/// The routes `/`, `/status.json` and `/status/events`, and the sampler task
/// (it ends when the returned router is dropped). Call inside a tokio runtime.
pub fn router(state: RpcState) -> Router {
    let (events, _) = broadcast::channel(EVENT_RING);
    let hub = Arc::new(Hub {
        state,
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
            // Reading the chain takes its lock: off the async threads.
            if tokio::task::spawn_blocking(move || {
                hub.tick();
            })
            .await
            .is_err()
            {
                return;
            }
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
    let done = tokio::task::spawn_blocking(move || {
        let mut snapshot = match hub.history.lock().expect("not poisoned").is_empty() {
            true => hub.tick(),
            false => build(&hub.state, now_ms(), None),
        };
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
        serde_json::to_string(&snapshot).expect("snapshot serializes")
    })
    .await;
    match done {
        Ok(json) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            json,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
    }
}

/// One viewer's stream: the latest snapshot at once, then each new one.
/// Ends when the viewer falls [`EVENT_RING`] snapshots behind.
async fn events_stream(State(hub): State<Arc<Hub>>) -> Response {
    let Ok(permit) = hub.viewers.clone().try_acquire_owned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many status viewers\n").into_response();
    };
    let rx = hub.events.subscribe();
    let first = hub.latest.lock().expect("not poisoned").clone();
    struct Viewer {
        rx: broadcast::Receiver<Arc<str>>,
        first: Option<Arc<str>>,
        _permit: OwnedSemaphorePermit,
    }
    let viewer = Viewer {
        rx,
        first,
        _permit: permit,
    };
    let stream = futures::stream::unfold(viewer, |mut v| async move {
        let json = match v.first.take() {
            Some(json) => json,
            None => match v.rx.recv().await {
                Ok(json) => json,
                // Lagged: a slow viewer is dropped; Closed: the node stops.
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
    use luxtensor_light::chain_spec::devnet_validator_key;
    use luxtensor_light::{RotationConfig, Validator};

    fn validator(i: u8, tokens: u64) -> Validator {
        Validator {
            owner: Address::repeat_byte(i),
            public_key: devnet_validator_key(u32::from(i)).public_key(),
            stake: TOKEN * U256::from(tokens),
        }
    }

    fn rotation() -> ValidatorRotation {
        let config = RotationConfig {
            epoch_length: 4,
            ..RotationConfig::default()
        };
        ValidatorRotation::new(config, 4, (1..=3).map(|i| validator(i, 32)).collect())
    }

    fn status_of(rows: &[ValidatorRow], i: u8) -> (&'static str, Option<u64>) {
        let r = rows
            .iter()
            .find(|r| r.owner == Address::repeat_byte(i))
            .expect("row present");
        (r.status, r.epoch)
    }

    #[test]
    fn table_shows_active_pending_exiting_and_slashed_with_their_epochs() {
        let mut r = rotation();
        assert_eq!(r.request_validator_addition(validator(4, 40)), Ok(2));
        assert_eq!(r.request_validator_exit(Address::repeat_byte(2)), Ok(2));
        r.slash_validator(&Address::repeat_byte(3), TOKEN).unwrap();
        let rows = validator_rows(&r);
        assert_eq!(rows.len(), 4);
        assert_eq!(status_of(&rows, 1), ("active", None));
        assert_eq!(status_of(&rows, 2), ("exiting", Some(2)));
        assert_eq!(status_of(&rows, 3), ("slashed", None));
        assert_eq!(status_of(&rows, 4), ("pending", Some(2)));
        assert_eq!(rows[0].stake, (TOKEN * U256::from(32)).to_string());
        assert_eq!(rows[0].stake_tokens, "32");

        // Epoch 1: set(2) is fixed, so the newcomer is pending for epoch 2
        // and the leaver is exiting at 2, each listed once.
        r.process_epoch_transition(1).unwrap();
        let rows = validator_rows(&r);
        assert_eq!(status_of(&rows, 4), ("pending", Some(2)));
        assert_eq!(status_of(&rows, 2), ("exiting", Some(2)));
        assert_eq!(
            rows.iter()
                .filter(|r| r.owner == Address::repeat_byte(4))
                .count(),
            1
        );
        r.process_epoch_transition(2).unwrap();
        let rows = validator_rows(&r);
        assert_eq!(status_of(&rows, 4), ("active", None));
        assert!(!rows.iter().any(|r| r.owner == Address::repeat_byte(2)));
    }

    #[test]
    fn tokens_are_formatted_with_at_most_four_decimals() {
        assert_eq!(format_tokens(U256::ZERO), "0");
        assert_eq!(format_tokens(TOKEN * U256::from(32)), "32");
        assert_eq!(format_tokens(TOKEN + TOKEN / U256::from(2)), "1.5");
        assert_eq!(format_tokens(TOKEN / U256::from(3)), "0.3333");
    }

    fn quiet() -> AlarmInputs {
        AlarmInputs {
            head_age_ms: 600,
            slot_ms: 500,
            finality_lag: 0,
            epoch_length: 8,
            peers: 3,
            validators: 4,
            sync: None,
            slashed: 0,
        }
    }

    #[test]
    fn a_healthy_node_has_no_alarms() {
        assert_eq!(alarms(&quiet()), vec![]);
    }

    #[test]
    fn stalls_warn_then_turn_critical_but_not_while_syncing() {
        let codes = |i: AlarmInputs| {
            alarms(&i)
                .into_iter()
                .map(|a| (a.level, a.code))
                .collect::<Vec<_>>()
        };
        let warn = AlarmInputs {
            head_age_ms: 500 * STALL_WARN_SLOTS,
            ..quiet()
        };
        assert_eq!(codes(warn), [("warn", "head-stalled")]);
        let critical = AlarmInputs {
            head_age_ms: 500 * STALL_CRITICAL_SLOTS,
            peers: 0,
            ..quiet()
        };
        assert_eq!(
            codes(critical),
            [("critical", "head-stalled"), ("critical", "no-peers")]
        );
        let syncing = AlarmInputs {
            sync: Some(super::super::SyncProgress {
                starting: 0,
                current: 10,
                highest: 100,
            }),
            ..critical
        };
        assert_eq!(
            codes(syncing),
            [("critical", "no-peers"), ("info", "syncing")]
        );
        let alone = AlarmInputs {
            peers: 0,
            validators: 1,
            ..quiet()
        };
        assert_eq!(codes(alone), []);
        let lagging = AlarmInputs {
            finality_lag: 9,
            slashed: 1,
            ..quiet()
        };
        assert_eq!(
            codes(lagging),
            [("warn", "finality-lag"), ("warn", "validator-slashed")]
        );
    }

    /// `luxtensor_…` names in `text`, histogram suffixes removed.
    fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("luxtensor_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(name.to_string());
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn dashboard_and_operations_doc_name_the_metrics_the_node_exports() {
        let exported = metric_names(include_str!("metrics.rs"));
        assert!(exported.len() >= 12, "{exported:?}");
        let dashboard = metric_names(include_str!("../../../docs/grafana/luxtensor.json"));
        assert!(dashboard.len() >= 10, "{dashboard:?}");
        for name in &dashboard {
            assert!(
                exported.contains(name),
                "the dashboard uses {name}, which /metrics does not export"
            );
        }
        let docs = include_str!("../../../docs/operations.md");
        for name in &exported {
            assert!(
                docs.contains(name.as_str()),
                "docs/operations.md does not document {name}"
            );
        }
    }

    #[test]
    fn samples_give_block_interval_from_slots_and_request_rate() {
        let at = |number, slot| BlockRef {
            number,
            hash: B256::ZERO,
            slot,
        };
        let first = Sample::next(None, 1_000, at(10, 12), 0, 100, 500);
        assert_eq!((first.block_interval_ms, first.rps), (None, None));
        // Two blocks over three slots (one missed) in 1.5 s, 30 calls.
        let second = Sample::next(Some(&first), 2_500, at(12, 15), 0, 130, 500);
        assert_eq!(second.block_interval_ms, Some(750.0));
        assert_eq!(second.rps, Some(20.0));
        // No new block: no interval point, rate still measured.
        let third = Sample::next(Some(&second), 3_500, at(12, 15), 0, 130, 500);
        assert_eq!((third.block_interval_ms, third.rps), (None, Some(0.0)));
    }
}
