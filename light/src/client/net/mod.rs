//! # The networking shell (feature `client`)
//!
//! Drives the sans-IO [`LightClient`] from full nodes' JSON-RPC over
//! WebSocket: one connection per upstream carries the `newHeads`
//! subscription and the client's requests (`lux_getEpochUpdates`,
//! `lux_getCertifiedHeader`, `lux_getValidatorSet`). Every upstream's heads
//! go to the core, which cross-checks them (equivocation), scores the
//! upstreams, and asks for updates when heads of an unknown epoch arrive.
//! Catch-up is paginated from [`LightClient::next_update_epoch`] until a
//! page comes back short (the upstream's head). The trusted state is written
//! atomically after every page or head that moved the epoch.
//!
//! Bounded everywhere: WebSocket messages and frames are capped
//! ([`FollowConfig::max_message_bytes`]), the channels between connections
//! and the loop are bounded, every request, connect and send has a timeout,
//! and a silent connection is dropped and reconnected with exponential
//! backoff.
//!
//! Runs on any tokio runtime; the `luxtensor-light` binary uses a
//! current-thread runtime.

mod connection;
pub mod wire;

use crate::client::checkpoint::{Anchor, Checkpoint, CheckpointError, CheckpointMaterial};
use crate::client::tracker::{Config, EquivocationEvidence, Event, LightClient};
use crate::client::upstream::{Problem, UpstreamId};
use crate::client::{AgePolicy, TrustedState};
use crate::header::CertifiedHeader;
use crate::validator::ValidatorSet;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The name of the trusted-state file in the data directory.
pub const STATE_FILE: &str = "trusted-state.bin";

/// Limits, timeouts and where to persist, with their defaults.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// WebSocket URLs of the upstream full nodes (`ws://host:port`).
    pub upstreams: Vec<String>,
    /// Where [`STATE_FILE`] (and equivocation evidence) is written; `None`: nowhere.
    pub data_dir: Option<PathBuf>,
    /// Updates asked per `lux_getEpochUpdates` call (default 32; the node allows 64).
    pub page_size: u64,
    /// Largest WebSocket message or frame accepted (default 16 MiB).
    pub max_message_bytes: usize,
    /// Longest wait for a connection (default 5 s).
    pub connect_timeout: Duration,
    /// Longest wait for an answer to a request (default 10 s).
    pub request_timeout: Duration,
    /// A connection that received nothing for this long is dropped (default 20 s).
    pub silence_timeout: Duration,
    /// First reconnection delay, doubled up to `backoff_max` (default 250 ms).
    pub backoff_initial: Duration,
    /// Longest reconnection delay (default 8 s).
    pub backoff_max: Duration,
    /// How often the core's clock ticks (silence and lag checks; default 1 s).
    pub tick: Duration,
    /// The core's limits.
    pub client: Config,
}

impl Default for FollowConfig {
    fn default() -> Self {
        Self {
            upstreams: Vec::new(),
            data_dir: None,
            page_size: 32,
            max_message_bytes: 16 << 20,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(20),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            tick: Duration::from_secs(1),
            client: Config::default(),
        }
    }
}

/// Why following could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// No upstream was given.
    #[error("no upstream: pass at least one --upstream ws://HOST:PORT")]
    NoUpstream,
    /// The checkpoint was refused.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// No upstream supplied the material a checkpoint needs in time.
    #[error("no upstream supplied {what} within {waited:?}: check the upstream URLs")]
    NoMaterial {
        /// What was missing.
        what: String,
        /// How long the client waited.
        waited: Duration,
    },
    /// The data directory could not be written.
    #[error("cannot write {path}: {source}")]
    Persist {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The core refused a command (a bug or an inconsistent state).
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
}

/// What the follow loop reports besides the core's events.
#[derive(Debug)]
pub enum Output<'a> {
    /// An event of the core.
    Event(&'a Event),
    /// A connection to an upstream is up.
    Connected(UpstreamId),
    /// A connection to an upstream went down (it is retried with backoff).
    Disconnected(UpstreamId, &'a str),
    /// An upstream sent a message that is not in the node's JSON shape (the
    /// core then reports it as a `malformed` rejection).
    Malformed(UpstreamId, &'a str),
    /// The trusted state of this epoch was written to the data directory.
    Persisted(u64),
    /// Catch-up reached the upstream's head at this trusted epoch, after
    /// this many updates and bytes on the wire (JSON) and in RLP.
    CaughtUp {
        /// The trusted epoch.
        epoch: u64,
        /// Updates applied since the start.
        updates: u64,
        /// Bytes of WebSocket text received since the start.
        wire_bytes: u64,
        /// RLP bytes of the updates applied.
        rlp_bytes: u64,
    },
}

/// How following ended.
#[derive(Debug)]
pub enum Stopped {
    /// Two certified headers of one slot: the evidence (written to the data
    /// directory as `equivocation-SLOT.rlp` when there is one).
    Equivocation(Box<EquivocationEvidence>),
}

/// Messages from connections to the loop.
#[derive(Debug)]
enum ToMain {
    Up {
        id: UpstreamId,
    },
    Down {
        id: UpstreamId,
        reason: String,
    },
    Head {
        id: UpstreamId,
        head: Box<CertifiedHeader>,
    },
    HeadBytes {
        id: UpstreamId,
        rlp: alloy_primitives::Bytes,
    },
    Updates {
        id: UpstreamId,
        from: u64,
        page: Result<Vec<alloy_primitives::Bytes>, String>,
    },
    Set {
        epoch: u64,
        set: Result<Option<ValidatorSet>, String>,
    },
    RequestFailed {
        id: UpstreamId,
        from: u64,
    },
    Bad {
        id: UpstreamId,
        detail: String,
    },
    WireBytes {
        bytes: usize,
    },
}

/// Commands from the loop to a connection.
#[derive(Debug)]
enum ToConn {
    FetchUpdates { from: u64, count: u64 },
    FetchCertified(String),
    FetchSet(u64),
    Reconnect(String),
}

/// Bound of the channel from the connections to the loop.
const TO_MAIN_CAPACITY: usize = 64;
/// Bound of each connection's command channel.
const TO_CONN_CAPACITY: usize = 8;

struct Links {
    to_main: mpsc::Receiver<ToMain>,
    conns: Vec<mpsc::Sender<ToConn>>,
    up: Vec<bool>,
}

fn connect_all(config: &FollowConfig) -> Links {
    let (main_tx, to_main) = mpsc::channel(TO_MAIN_CAPACITY);
    let conns = config
        .upstreams
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let (tx, rx) = mpsc::channel(TO_CONN_CAPACITY);
            tokio::spawn(connection::run(
                UpstreamId(i as u32),
                url.clone(),
                config.clone(),
                main_tx.clone(),
                rx,
            ));
            tx
        })
        .collect();
    Links {
        to_main,
        conns,
        up: vec![false; config.upstreams.len()],
    }
}

/// Fetches what a non-genesis checkpoint needs (the set of its epoch, or
/// the block's header and set) from the upstreams and checks it against
/// the checkpoint. Whichever upstream answers first is used; the answer is
/// verified by hash, so it need not be trusted.
pub async fn resolve_checkpoint(
    checkpoint: &Checkpoint,
    spec: &crate::ChainSpec,
    policy: AgePolicy,
    config: &FollowConfig,
) -> Result<TrustedState, FollowError> {
    if config.upstreams.is_empty() {
        return Err(FollowError::NoUpstream);
    }
    if checkpoint.anchor == Anchor::Genesis {
        return Ok(checkpoint.trust(spec, CheckpointMaterial::None, policy)?);
    }
    if checkpoint.chain_id != spec.chain_id {
        // Refuse before any network traffic.
        return Err(checkpoint
            .trust(spec, CheckpointMaterial::None, policy)
            .expect_err("another chain is refused")
            .into());
    }
    let waited = config.request_timeout * 3;
    let deadline = Instant::now() + waited;
    let mut links = connect_all(config);
    let mut header: Option<CertifiedHeader> = None;
    let mut last_error = None;
    loop {
        let message = match tokio::time::timeout_at(deadline, links.to_main.recv()).await {
            Ok(Some(m)) => m,
            _ => break,
        };
        match (&checkpoint.anchor, message) {
            (Anchor::Epoch { epoch, .. }, ToMain::Up { id }) => {
                let _ = links.conns[id.0 as usize].try_send(ToConn::FetchSet(*epoch));
            }
            (Anchor::Block(hash), ToMain::Up { id }) => {
                let _ =
                    links.conns[id.0 as usize].try_send(ToConn::FetchCertified(hash.to_string()));
            }
            (Anchor::Block(hash), ToMain::HeadBytes { id, rlp }) => {
                if let Ok(head) = CertifiedHeader::decode(&rlp)
                    && head.header.hash() == *hash
                {
                    let _ =
                        links.conns[id.0 as usize].try_send(ToConn::FetchSet(head.header.epoch));
                    header = Some(head);
                }
            }
            (
                _,
                ToMain::Set {
                    set: Ok(Some(set)),
                    epoch,
                    ..
                },
            ) => {
                let material = match (&checkpoint.anchor, &header) {
                    (Anchor::Epoch { .. }, _) => CheckpointMaterial::Set(set),
                    (Anchor::Block(_), Some(h)) if h.header.epoch == epoch => {
                        CheckpointMaterial::Block {
                            header: Box::new(h.header.header.clone()),
                            set,
                        }
                    }
                    _ => continue,
                };
                match checkpoint.trust(spec, material, policy) {
                    Ok(state) => return Ok(state),
                    Err(e @ CheckpointError::TooOld { .. }) => return Err(e.into()),
                    Err(e) => last_error = Some(e),
                }
            }
            _ => {}
        }
    }
    Err(match last_error {
        Some(e) => e.into(),
        None => FollowError::NoMaterial {
            what: match checkpoint.anchor {
                Anchor::Block(_) => "the checkpoint block's header and validator set".into(),
                _ => "the checkpoint epoch's validator set".into(),
            },
            waited,
        },
    })
}

/// Reads the persisted trusted state from `data_dir`, if there is one.
pub fn load_state(data_dir: &std::path::Path) -> Result<Option<TrustedState>, String> {
    let path = data_dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => TrustedState::decode(&bytes).map(Some).map_err(|e| {
            format!(
                "{} is damaged ({e}); move it away to start from a checkpoint",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Follows the upstreams with `client` until an equivocation stops it,
/// reporting every event and connection change to `report`.
pub async fn follow(
    mut client: LightClient,
    config: FollowConfig,
    mut report: impl FnMut(&LightClient, Output<'_>),
) -> Result<Stopped, FollowError> {
    if config.upstreams.is_empty() {
        return Err(FollowError::NoUpstream);
    }
    if let Some(dir) = &config.data_dir {
        std::fs::create_dir_all(dir).map_err(|source| FollowError::Persist {
            path: dir.clone(),
            source,
        })?;
    }
    for i in 0..config.upstreams.len() {
        client.add_upstream(UpstreamId(i as u32))?;
    }
    let start = Instant::now();
    let mut links = connect_all(&config);
    let mut ticker = tokio::time::interval(config.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One page request in flight at a time: (upstream, from epoch).
    let mut inflight: Option<(UpstreamId, u64)> = None;
    let mut want_updates = true;
    let mut caught_up_reported = false;
    let (mut updates_applied, mut wire_bytes, mut rlp_bytes) = (0u64, 0u64, 0u64);
    let mut persisted_epoch = None;
    loop {
        let message = tokio::select! {
            m = links.to_main.recv() => m,
            _ = ticker.tick() => {
                client.handle_tick(start.elapsed().as_millis() as u64);
                None
            }
        };
        let mut avoid = None;
        match message {
            None => {}
            Some(ToMain::Up { id }) => {
                links.up[id.0 as usize] = true;
                report(&client, Output::Connected(id));
            }
            Some(ToMain::Down { id, reason }) => {
                links.up[id.0 as usize] = false;
                if inflight.is_some_and(|(who, _)| who == id) {
                    inflight = None;
                    want_updates = true;
                }
                report(&client, Output::Disconnected(id, &reason));
            }
            Some(ToMain::WireBytes { bytes, .. }) => wire_bytes += bytes as u64,
            Some(ToMain::Head { id, head }) => {
                let _verdict = client.handle_head(id, *head)?; // reported as events
            }
            Some(ToMain::HeadBytes { id, rlp }) => {
                let _verdict = client.handle_head_bytes(id, &rlp)?;
            }
            Some(ToMain::Bad { id, detail }) => {
                // Not even in the node's shape: said in full, then scored by
                // the core as a malformed message.
                report(&client, Output::Malformed(id, &detail));
                let _verdict = client.handle_head_bytes(id, &[])?;
            }
            Some(ToMain::Set { .. }) => {}
            Some(ToMain::RequestFailed { id, from }) if inflight == Some((id, from)) => {
                inflight = None;
                want_updates = true;
                avoid = Some(id);
            }
            Some(ToMain::RequestFailed { .. }) => {}
            Some(ToMain::Updates { id, from, page }) => {
                if inflight == Some((id, from)) {
                    inflight = None;
                }
                match page {
                    Ok(updates) => {
                        let asked = updates.len() as u64;
                        let page = wire::page_bytes(&updates);
                        let outcome = client.handle_update_bytes(id, &page, fresh_seed())?;
                        updates_applied += outcome.applied as u64;
                        rlp_bytes += updates
                            .iter()
                            .take(outcome.applied)
                            .map(|u| u.len() as u64)
                            .sum::<u64>();
                        if outcome.rejected.is_some() {
                            want_updates = true;
                            avoid = Some(id);
                        } else if asked >= config.page_size {
                            want_updates = true; // more pages behind this one
                        } else if !caught_up_reported {
                            caught_up_reported = true;
                            report(
                                &client,
                                Output::CaughtUp {
                                    epoch: client.trusted_state().epoch,
                                    updates: updates_applied,
                                    wire_bytes,
                                    rlp_bytes,
                                },
                            );
                        }
                    }
                    Err(detail) => {
                        report(&client, Output::Malformed(id, &detail));
                        client.handle_update_bytes(id, &[], fresh_seed())?;
                        want_updates = true;
                        avoid = Some(id);
                    }
                }
            }
        }
        // Events.
        let mut stop = None;
        let mut epoch_moved = false;
        while let Some(event) = client.poll_event() {
            report(&client, Output::Event(&event));
            match &event {
                Event::EpochChanged { .. } => epoch_moved = true,
                Event::NeedUpdates { .. } => want_updates = true,
                Event::UpstreamProblem { upstream, problem } => {
                    if matches!(problem, Problem::Silent { .. })
                        && let Some(conn) = links.conns.get(upstream.0 as usize)
                    {
                        let _ = conn.try_send(ToConn::Reconnect("silent".into()));
                    }
                }
                Event::Equivocation { evidence } => stop = Some(evidence.clone()),
                _ => {}
            }
        }
        if epoch_moved || persisted_epoch.is_none() {
            let epoch = client.trusted_state().epoch;
            if let Some(dir) = &config.data_dir
                && persisted_epoch != Some(client.trusted_state().clone())
            {
                let path = dir.join(STATE_FILE);
                crate::client::write_atomic(&path, &client.trusted_state().encode())
                    .map_err(|source| FollowError::Persist { path, source })?;
                persisted_epoch = Some(client.trusted_state().clone());
                report(&client, Output::Persisted(epoch));
            } else if config.data_dir.is_none() {
                persisted_epoch = Some(client.trusted_state().clone());
            }
        }
        if let Some(evidence) = stop {
            if let Some(dir) = &config.data_dir
                && let Some(e) = evidence.to_evidence()
            {
                let path = dir.join(format!("equivocation-{}.rlp", evidence.first.header.slot));
                crate::client::write_atomic(&path, &alloy_rlp::encode(&e))
                    .map_err(|source| FollowError::Persist { path, source })?;
            }
            return Ok(Stopped::Equivocation(evidence));
        }
        // Ask for the next page from the best connected upstream.
        if want_updates && inflight.is_none() {
            let connected = |id: &UpstreamId| links.up[id.0 as usize];
            let mut candidates: Vec<UpstreamId> = client
                .upstreams()
                .preferred()
                .into_iter()
                .filter(connected)
                .collect();
            if candidates.is_empty() {
                // Every connected upstream is demoted: ask one anyway (round robin).
                candidates = (0..links.up.len() as u32)
                    .map(UpstreamId)
                    .filter(connected)
                    .collect();
            }
            // The upstream that just failed is asked again only on a later
            // tick, and only if nobody else can answer.
            candidates.retain(|c| Some(*c) != avoid);
            if let Some(&id) = candidates.first() {
                let from = client.next_update_epoch();
                let command = ToConn::FetchUpdates {
                    from,
                    count: config.page_size,
                };
                if links.conns[id.0 as usize].try_send(command).is_ok() {
                    inflight = Some((id, from));
                    want_updates = false;
                }
            }
        }
    }
}

/// A fresh secret seed for batch verification.
fn fresh_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        // No OS randomness: fall back to the clock and the address of a
        // stack value (batch verification needs unpredictability to the
        // upstream, not cryptographic quality here).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        seed[..16].copy_from_slice(&t.to_le_bytes());
        let here = &t as *const u128 as usize as u64;
        seed[16..24].copy_from_slice(&here.to_le_bytes());
    }
    seed
}
