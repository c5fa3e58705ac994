//! [`SyncProtocol`]: the block-download scheduler (see the module docs of
//! [`crate::sync`] for the rules).

use super::peers::PeerState;
use alloy_primitives::B256;
use luxtensor_light::block::BodyError;
use luxtensor_light::{Block, SignedHeader};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;

/// Default for [`SyncConfig::max_blocks_per_request`]: the most blocks one batch asks for.
pub const MAX_BLOCKS_PER_REQUEST: u32 = 128;
/// Default for [`SyncConfig::max_parallel_downloads`]: batches in flight **per
/// peer**, so the total in flight grows with the number of peers.
pub const MAX_PARALLEL_DOWNLOADS: usize = 4;
/// Default for [`SyncConfig::request_timeout_ms`]: the longest a batch may take (30 s).
pub const BLOCK_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default for [`SyncConfig::max_retries`]: timeouts of one block on one peer
/// before it is asked of another peer.
pub const MAX_RETRIES: u32 = 3;

/// Highest block number the scheduler accepts (2^62, out of reach of any real
/// chain), so that no range arithmetic can overflow.
pub const MAX_BLOCK_NUMBER: u64 = 1 << 62;

/// Limits and timing of the scheduler. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// Most blocks in one batch (default [`MAX_BLOCKS_PER_REQUEST`]).
    pub max_blocks_per_request: u32,
    /// Most batches in flight to one peer at a time (default [`MAX_PARALLEL_DOWNLOADS`]).
    pub max_parallel_downloads: usize,
    /// Longest timeout of a batch, and the timeout of a peer not yet measured
    /// (default [`BLOCK_REQUEST_TIMEOUT_MS`]).
    pub request_timeout_ms: u64,
    /// Shortest timeout of a batch, however fast the peer (default 2 s).
    pub min_request_timeout_ms: u64,
    /// Timeout = this × the peer's expected time for the batch, clamped to
    /// `[min_request_timeout_ms, request_timeout_ms]` (default 3).
    pub timeout_factor: u64,
    /// Timeouts of one block on one peer before that peer is no longer asked
    /// for it, as long as another peer has it (default [`MAX_RETRIES`]).
    pub max_retries: u32,
    /// The oldest batch is never hedged before it has been in flight this long (default 1 s).
    pub hedge_delay_ms: u64,
    /// The oldest batch is late, and hedged, once in flight this many times
    /// its peer's expected time (default 2).
    pub hedge_factor: u64,
    /// Most headers held: queued, in flight or downloaded (default 65,536).
    pub max_queued_headers: usize,
    /// Most blocks downloaded but not yet taken; only blocks within this
    /// distance of the next block to release are requested (default 4,096).
    pub max_buffered_blocks: usize,
    /// Most peers tracked (default 128).
    pub max_peers: usize,
    /// Most undelivered events; beyond it the oldest is dropped (default 1,024).
    pub max_events: usize,
    /// Spread the last blocks over the peers: a batch is at most the
    /// waiting blocks divided by the batches all peers may hold at once
    /// (`peers × max_parallel_downloads`), so the peers finish together and
    /// the last answers, which nothing overlaps with, are small (default
    /// off: batches are `max_blocks_per_request` long to the end).
    pub spread_tail: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            max_blocks_per_request: MAX_BLOCKS_PER_REQUEST,
            max_parallel_downloads: MAX_PARALLEL_DOWNLOADS,
            request_timeout_ms: BLOCK_REQUEST_TIMEOUT_MS,
            min_request_timeout_ms: 2_000,
            timeout_factor: 3,
            max_retries: MAX_RETRIES,
            hedge_delay_ms: 1_000,
            hedge_factor: 2,
            max_queued_headers: 65_536,
            max_buffered_blocks: 4_096,
            max_peers: 128,
            max_events: 1_024,
            spread_tail: false,
        }
    }
}

impl SyncConfig {
    /// Checks that every limit allows progress.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            (
                "max_blocks_per_request",
                u64::from(self.max_blocks_per_request),
            ),
            ("max_parallel_downloads", self.max_parallel_downloads as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("timeout_factor", self.timeout_factor),
            ("max_retries", u64::from(self.max_retries)),
            ("hedge_factor", self.hedge_factor),
            ("max_queued_headers", self.max_queued_headers as u64),
            ("max_buffered_blocks", self.max_buffered_blocks as u64),
            ("max_peers", self.max_peers as u64),
            ("max_events", self.max_events as u64),
        ];
        if let Some((field, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Zero { field });
        }
        if self.min_request_timeout_ms > self.request_timeout_ms {
            return Err(ConfigError::TimeoutOrder {
                min: self.min_request_timeout_ms,
                max: self.request_timeout_ms,
            });
        }
        Ok(())
    }
}

/// Why a [`SyncConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A limit that must be positive is zero.
    #[error("sync config: {field} must be at least 1")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// The shortest timeout exceeds the longest.
    #[error("sync config: min_request_timeout_ms {min} exceeds request_timeout_ms {max}")]
    TimeoutOrder {
        /// `min_request_timeout_ms`.
        min: u64,
        /// `request_timeout_ms`.
        max: u64,
    },
}

/// Why the scheduler refused a call of its driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// A queued header does not carry the next number.
    #[error("header number {got} does not follow: expected {expected}")]
    NotContiguous {
        /// The number that would follow.
        expected: u64,
        /// The header's number.
        got: u64,
    },
    /// A queued header's parent hash is not the hash of the header before it.
    #[error("header {number} has parent hash {got}, but block {} is {expected}", number.saturating_sub(1))]
    ParentMismatch {
        /// The header's number.
        number: u64,
        /// Hash of the previous header.
        expected: B256,
        /// The header's parent hash.
        got: B256,
    },
    /// A header number so high that ranges after it would overflow.
    #[error("header number {number} is above the supported maximum {MAX_BLOCK_NUMBER}")]
    NumberTooHigh {
        /// The header's number.
        number: u64,
    },
    /// Queuing the headers would exceed `max_queued_headers`.
    #[error("header queue full: {held} held + {adding} new > {capacity}")]
    QueueFull {
        /// Headers held now.
        held: usize,
        /// Headers offered.
        adding: usize,
        /// `max_queued_headers`.
        capacity: usize,
    },
    /// Adding the peer would exceed `max_peers`.
    #[error("too many sync peers (at most {max})")]
    TooManyPeers {
        /// `max_peers`.
        max: usize,
    },
    /// The peer was never added, or was removed.
    #[error("unknown sync peer")]
    UnknownPeer,
    /// The peer already has `max_parallel_downloads` batches in flight.
    #[error("peer already has {in_flight} batches in flight")]
    PeerBusy {
        /// Its batches in flight.
        in_flight: usize,
    },
    /// The peer does not have (or failed to serve) a block of the range.
    #[error("peer cannot serve block {number} (its best block is {best})")]
    PeerLacksRange {
        /// The first block it cannot serve.
        number: u64,
        /// Its best block.
        best: u64,
    },
    /// The range is empty or longer than `max_blocks_per_request`.
    #[error("batch of {len} blocks: must be 1 to {max}")]
    BadRange {
        /// Its length.
        len: usize,
        /// `max_blocks_per_request`.
        max: u32,
    },
    /// A block of the range is not waiting for download (already in flight,
    /// downloaded, released, never queued, or queued with another hash).
    #[error("block {number} is not queued for download with that hash")]
    NotQueued {
        /// The block.
        number: u64,
    },
    /// A block of the range lies beyond the buffer window.
    #[error("block {number} is beyond the buffer window (ends before {window_end})")]
    BufferFull {
        /// The block.
        number: u64,
        /// First block number outside the window.
        window_end: u64,
    },
    /// No such request is in flight from that peer: answered already, timed
    /// out, cancelled, or its peer removed. A late answer is simply ignored.
    #[error("no request {0:?} in flight from that peer")]
    UnknownRequest(RequestId),
}

/// Identifies one batch request for its whole life (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A contiguous run of blocks waiting for download (see [`SyncProtocol::get_next_batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRange {
    /// Number of the first block.
    pub start: u64,
    /// Expected hashes of blocks `start, start + 1, …`.
    pub hashes: Vec<B256>,
}

impl BlockRange {
    /// How many blocks.
    pub fn count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// One past the last block number.
    pub fn end(&self) -> u64 {
        self.start + self.hashes.len() as u64
    }
}

/// A batch assigned to one peer: send it, and hand the answer to
/// [`SyncProtocol::handle_response`] with its `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequest {
    /// The request's identity.
    pub id: RequestId,
    /// Number of the first block asked for.
    pub start: u64,
    /// Expected hashes of blocks `start, start + 1, …` (at most
    /// `max_blocks_per_request`); the answer must be these blocks, in order.
    pub hashes: Vec<B256>,
    /// When the request times out (same clock as `now_ms`), from the peer's
    /// measured speed: the driver may give its transport the same limit.
    pub deadline_ms: u64,
}

impl BatchRequest {
    /// How many blocks are asked for.
    pub fn count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// One past the last block number asked for.
    pub fn end(&self) -> u64 {
        self.start + self.hashes.len() as u64
    }
}

/// What the scheduler tells its driver, polled with [`SyncProtocol::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent<P> {
    /// The peer misbehaved or failed; lower its reputation (the weight per
    /// reason is the driver's choice). Its range has already been re-queued.
    Penalize {
        /// The peer.
        peer: P,
        /// What it did.
        reason: PenaltyReason,
    },
    /// The request is no longer needed (its hedge twin answered first); the
    /// driver may abort it. An answer that still arrives is ignored.
    Cancel {
        /// The peer it was sent to.
        peer: P,
        /// The request.
        id: RequestId,
    },
}

/// Why a peer is penalised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PenaltyReason {
    /// A block's hash is not the queued header's (wrong block, wrong order or forged header).
    #[error("block {number} has hash {got}, expected {expected}")]
    WrongBlock {
        /// Position in the answer.
        number: u64,
        /// The queued header's hash.
        expected: B256,
        /// The served block's hash.
        got: B256,
    },
    /// A block's body does not match its header.
    #[error("block {number}: {error}")]
    BadBody {
        /// The block.
        number: u64,
        /// The mismatch.
        error: BodyError,
    },
    /// No blocks, though the peer's best block covers the range.
    #[error("empty answer to a request for {requested} blocks")]
    Empty {
        /// Blocks asked for.
        requested: u32,
    },
    /// Fewer blocks than asked, though the peer's best block covers the range.
    #[error("{got} blocks in answer to a request for {requested}")]
    Short {
        /// Blocks asked for.
        requested: u32,
        /// Blocks served (all verified and kept).
        got: u32,
    },
    /// More blocks than asked (the extra ones are dropped).
    #[error("{got} blocks in answer to a request for {requested}")]
    TooMany {
        /// Blocks asked for.
        requested: u32,
        /// Blocks served.
        got: usize,
    },
    /// No answer within the peer's timeout.
    #[error("request {id:?} for {blocks} blocks timed out")]
    Timeout {
        /// The request.
        id: RequestId,
        /// Blocks asked for.
        blocks: u32,
    },
}

/// Counters of [`SyncProtocol::get_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Batch requests in flight (hedges included).
    pub pending_requests: usize,
    /// Blocks waiting to be requested.
    pub queued_blocks: usize,
    /// Blocks in at least one request in flight.
    pub in_flight_blocks: usize,
    /// Blocks downloaded and verified, waiting for [`SyncProtocol::take_ready`].
    pub downloaded_blocks: usize,
    /// Blocks handed out by [`SyncProtocol::take_ready`] so far.
    pub released_blocks: u64,
    /// The number of the next block to be released.
    pub next_block: u64,
    /// Peers tracked.
    pub peers: usize,
    /// Requests that timed out or failed so far.
    pub timeouts: u64,
    /// Penalties issued so far.
    pub penalties: u64,
    /// Hedge requests sent so far.
    pub hedges: u64,
}

/// Where one queued block stands.
#[derive(Debug)]
enum Slot {
    /// Waiting to be requested.
    Queued,
    /// In this many requests (1, or 2 when hedged).
    InFlight(u8),
    /// Downloaded and verified.
    Downloaded(Box<Block>),
}

/// One queued block.
#[derive(Debug)]
struct Entry<P> {
    /// The queued header's hash.
    hash: B256,
    slot: Slot,
    /// The last peer whose request for this block timed out, and how many
    /// times in a row it did.
    timeouts: Option<(P, u32)>,
}

/// One request in flight.
#[derive(Debug, Clone)]
struct Request<P> {
    peer: P,
    start: u64,
    count: u32,
    sent_ms: u64,
    /// The peer's expected answer time at dispatch (queue position included).
    expected_ms: Option<u64>,
    deadline_ms: u64,
    /// The other request for the same blocks, when hedged.
    twin: Option<RequestId>,
}

impl<P> Request<P> {
    fn range(&self) -> std::ops::Range<u64> {
        self.start..self.start + u64::from(self.count)
    }
}

/// The parallel block-download scheduler: a pure state machine over peer id `P`.
///
/// ```
/// use luxtensor_full::sync::{SyncConfig, SyncProtocol};
/// let mut sync = SyncProtocol::<u32>::new(SyncConfig::default()).unwrap();
/// sync.add_peer(7, 1_000).unwrap();
/// // sync.queue_headers(&verified_headers)?;
/// while let Some((_peer, _request)) = sync.next_request(0) {
///     // send the request; feed the answer to `handle_response`
/// }
/// for _block in sync.take_ready() { /* import, in order */ }
/// ```
#[derive(Debug)]
pub struct SyncProtocol<P> {
    config: SyncConfig,
    /// Number of `entries[0]`: the next block to release.
    base: u64,
    /// Blocks from `base` to the last queued header.
    entries: VecDeque<Entry<P>>,
    /// Number and hash of the last header queued, to check the next link.
    tip: Option<(u64, B256)>,
    /// Numbers of the entries in [`Slot::Queued`].
    queued: BTreeSet<u64>,
    /// Entries in [`Slot::Downloaded`].
    downloaded: usize,
    peers: BTreeMap<P, PeerState>,
    requests: BTreeMap<RequestId, Request<P>>,
    next_id: u64,
    events: VecDeque<SyncEvent<P>>,
    released: u64,
    timeouts: u64,
    penalties: u64,
    hedges: u64,
}

impl<P: Clone + Eq + Hash + Ord + Debug> Default for SyncProtocol<P> {
    fn default() -> Self {
        Self::new(SyncConfig::default()).expect("the default config is valid")
    }
}

impl<P: Clone + Eq + Hash + Ord + Debug> SyncProtocol<P> {
    /// An empty scheduler: no headers, no peers.
    pub fn new(config: SyncConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            base: 0,
            entries: VecDeque::new(),
            tip: None,
            queued: BTreeSet::new(),
            downloaded: 0,
            peers: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_id: 0,
            events: VecDeque::new(),
            released: 0,
            timeouts: 0,
            penalties: 0,
            hedges: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    // ---- headers -------------------------------------------------------

    /// Queues verified headers for body download; returns how many.
    ///
    /// The first call fixes where sync starts; every later header must carry
    /// the next number and link to the previous header by hash. All or
    /// nothing: on an error no header is queued.
    pub fn queue_headers(&mut self, headers: &[SignedHeader]) -> Result<usize, SyncError> {
        if headers.is_empty() {
            return Ok(0);
        }
        let held = self.entries.len();
        if held + headers.len() > self.config.max_queued_headers {
            return Err(SyncError::QueueFull {
                held,
                adding: headers.len(),
                capacity: self.config.max_queued_headers,
            });
        }
        let mut hashes = Vec::with_capacity(headers.len());
        let mut prev = self.tip;
        for header in headers {
            if header.number > MAX_BLOCK_NUMBER {
                return Err(SyncError::NumberTooHigh {
                    number: header.number,
                });
            }
            if let Some((number, hash)) = prev {
                let expected = number.checked_add(1);
                if expected != Some(header.number) {
                    let expected = expected.unwrap_or(u64::MAX);
                    return Err(SyncError::NotContiguous {
                        expected,
                        got: header.number,
                    });
                }
                if header.parent_hash != hash {
                    return Err(SyncError::ParentMismatch {
                        number: header.number,
                        expected: hash,
                        got: header.parent_hash,
                    });
                }
            }
            let hash = header.hash();
            hashes.push(hash);
            prev = Some((header.number, hash));
        }
        if self.tip.is_none() {
            self.base = headers[0].number;
        }
        for (i, hash) in hashes.into_iter().enumerate() {
            self.queued.insert(headers[0].number + i as u64);
            self.entries.push_back(Entry {
                hash,
                slot: Slot::Queued,
                timeouts: None,
            });
        }
        self.tip = prev;
        Ok(headers.len())
    }

    /// How many more headers [`Self::queue_headers`] accepts now.
    pub fn queue_capacity(&self) -> usize {
        self.config.max_queued_headers - self.entries.len()
    }

    /// Number and hash of the last header queued (where the next headers must link).
    pub fn last_queued(&self) -> Option<(u64, B256)> {
        self.tip
    }

    /// Number of the next block [`Self::take_ready`] will release.
    pub fn next_block(&self) -> u64 {
        self.base
    }

    /// Whether every queued block has been released (nothing queued, in flight or buffered).
    pub fn is_idle(&self) -> bool {
        self.entries.is_empty()
    }

    // ---- peers ---------------------------------------------------------

    /// Starts tracking a peer whose chain reaches `best_number` (for a known
    /// peer, the same as [`Self::update_peer`]).
    pub fn add_peer(&mut self, peer: P, best_number: u64) -> Result<(), SyncError> {
        if let Some(state) = self.peers.get_mut(&peer) {
            state.best = best_number;
            return Ok(());
        }
        if self.peers.len() >= self.config.max_peers {
            return Err(SyncError::TooManyPeers {
                max: self.config.max_peers,
            });
        }
        self.peers.insert(peer, PeerState::new(best_number));
        Ok(())
    }

    /// Records a peer's new best block; `false` if the peer is unknown.
    pub fn update_peer(&mut self, peer: &P, best_number: u64) -> bool {
        match self.peers.get_mut(peer) {
            Some(state) => {
                state.best = best_number;
                true
            }
            None => false,
        }
    }

    /// Stops tracking a peer; its requests are dropped and their blocks
    /// queued again at once. `false` if the peer is unknown.
    pub fn remove_peer(&mut self, peer: &P) -> bool {
        if self.peers.remove(peer).is_none() {
            return false;
        }
        let ids: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| &r.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let request = self.requests.remove(&id).expect("listed above");
            self.unlink_twin(&request);
            self.release_range(&request, None);
        }
        true
    }

    /// Peers tracked.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The timeout a batch of `blocks` blocks would get on `peer` now (from
    /// its measured speed), or `None` for an unknown peer.
    pub fn peer_timeout_ms(&self, peer: &P, blocks: u32) -> Option<u64> {
        self.peers
            .get(peer)
            .map(|state| self.timeout_for(state, blocks))
    }

    /// `peer` answered some other request (headers, status) at `now_ms`: it
    /// serves its requests one after another, so the service time of its
    /// next batch answer counts from here, not from before that answer.
    pub fn note_other_answer(&mut self, peer: &P, now_ms: u64) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.last_answer_ms = state.last_answer_ms.max(now_ms);
        }
    }

    /// Records that `peer` answered `blocks` blocks in `ms` (tests start
    /// from measured peers this way).
    #[cfg(test)]
    pub(crate) fn measure_peer(&mut self, peer: &P, ms: u64, blocks: u32) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.speed.record(ms, blocks);
        }
    }

    /// Batches in flight to `peer` (0 for an unknown peer).
    pub fn peer_in_flight(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |state| state.in_flight)
    }

    // ---- requests ------------------------------------------------------

    /// The next batch to send and the peer to send it to, already marked in
    /// flight; `None` when no idle peer can serve any waiting block (or the
    /// buffer window is used up). The driver calls it in a loop after every
    /// input.
    ///
    /// A late oldest batch is hedged first (sent a second time to another
    /// peer); otherwise the lowest waiting block goes to the eligible peer
    /// with the fewest batches in flight (ties: the fastest, then the lowest
    /// id), with as many following blocks as that peer can serve, up to
    /// `max_blocks_per_request` (fewer for a peer too slow to deliver that
    /// many within `request_timeout_ms / timeout_factor`).
    pub fn next_request(&mut self, now_ms: u64) -> Option<(P, BatchRequest)> {
        if let Some(hedge) = self.try_hedge(now_ms) {
            return Some(hedge);
        }
        let window_end = self.window_end();
        let mut choice = None;
        for &number in self.queued.range(..window_end) {
            let entry = self.entry(number);
            let best = self
                .peers
                .iter()
                .filter(|(peer, state)| {
                    self.has_room(peer, state) && self.eligible(peer, state, number, entry)
                })
                .min_by(|(a, sa), (b, sb)| {
                    let key = |s: &PeerState| {
                        let speed = s.speed.expected_ms(self.config.max_blocks_per_request);
                        (s.in_flight, speed.unwrap_or(0))
                    };
                    key(sa).cmp(&key(sb)).then_with(|| a.cmp(b))
                });
            if let Some((peer, _)) = best {
                choice = Some((peer.clone(), number));
                break;
            }
        }
        let (peer, start) = choice?;
        let limit = self.batch_limit(&peer).min(self.tail_limit());
        let count = self.extend_run(&peer, start, limit, window_end, |slot| {
            matches!(slot, Slot::Queued)
        });
        Some(self.dispatch(peer, start, count, now_ms, None))
    }

    /// Up to `n` disjoint runs of waiting blocks, lowest first, each at most
    /// `max_blocks_per_request` long, without regard to peers. Nothing is
    /// marked: assign a run with [`Self::mark_pending`]. (Lower level than
    /// [`Self::next_request`], which also picks the peer.)
    pub fn get_next_batch(&self, n: usize) -> Vec<BlockRange> {
        let mut ranges: Vec<BlockRange> = Vec::new();
        for &number in self.queued.range(..self.window_end()) {
            match ranges.last_mut() {
                Some(last)
                    if last.end() == number
                        && last.count() < self.config.max_blocks_per_request =>
                {
                    last.hashes.push(self.entry(number).hash);
                }
                _ => {
                    if ranges.len() == n {
                        break;
                    }
                    ranges.push(BlockRange {
                        start: number,
                        hashes: vec![self.entry(number).hash],
                    });
                }
            }
        }
        ranges
    }

    /// Assigns a waiting run (from [`Self::get_next_batch`]) to `peer`,
    /// sent at `now_ms`; returns the request to send.
    pub fn mark_pending(
        &mut self,
        range: &BlockRange,
        peer: P,
        now_ms: u64,
    ) -> Result<BatchRequest, SyncError> {
        let len = range.hashes.len();
        if len == 0 || len > self.config.max_blocks_per_request as usize {
            return Err(SyncError::BadRange {
                len,
                max: self.config.max_blocks_per_request,
            });
        }
        let state = self.peers.get(&peer).ok_or(SyncError::UnknownPeer)?;
        if state.in_flight >= self.config.max_parallel_downloads {
            return Err(SyncError::PeerBusy {
                in_flight: state.in_flight,
            });
        }
        let window_end = self.window_end();
        for (number, hash) in (range.start..).zip(&range.hashes) {
            if !state.has(number) {
                return Err(SyncError::PeerLacksRange {
                    number,
                    best: state.best,
                });
            }
            if number >= window_end {
                return Err(SyncError::BufferFull { number, window_end });
            }
            let queued = number >= self.base
                && self.queued.contains(&number)
                && self.entry(number).hash == *hash;
            if !queued {
                return Err(SyncError::NotQueued { number });
            }
        }
        let (_, request) = self.dispatch(peer, range.start, range.count(), now_ms, None);
        Ok(request)
    }

    /// Feeds the answer to request `id` from `peer`, received at `now_ms`;
    /// returns how many new blocks it delivered.
    ///
    /// Blocks are checked in order against the queued hashes and their
    /// bodies against their headers; the checked prefix is kept. A wrong
    /// block, a bad body, a short or empty answer penalises the peer, which
    /// is then never asked for the missing blocks again; they are queued for
    /// other peers. If the request was hedged and this answer completes it,
    /// the twin is cancelled ([`SyncEvent::Cancel`]).
    pub fn handle_response(
        &mut self,
        peer: &P,
        id: RequestId,
        blocks: Vec<Block>,
        now_ms: u64,
    ) -> Result<usize, SyncError> {
        match self.requests.get(&id) {
            Some(request) if &request.peer == peer => {}
            _ => return Err(SyncError::UnknownRequest(id)),
        }
        let request = self.requests.remove(&id).expect("checked above");
        let served = blocks.len();
        let mut verified = 0u32;
        let mut accepted = 0usize;
        let mut fault = None;
        for (number, block) in request.range().zip(blocks) {
            if number < self.base {
                verified += 1; // released already, thanks to the twin
                continue;
            }
            let index = (number - self.base) as usize;
            let expected = self.entries[index].hash;
            let got = block.hash();
            if got != expected {
                fault = Some(PenaltyReason::WrongBlock {
                    number,
                    expected,
                    got,
                });
                break;
            }
            let entry = &mut self.entries[index];
            if matches!(entry.slot, Slot::InFlight(_)) {
                if let Err(error) = block.verify_body() {
                    fault = Some(PenaltyReason::BadBody { number, error });
                    break;
                }
                entry.slot = Slot::Downloaded(Box::new(block));
                self.downloaded += 1;
                accepted += 1;
            }
            verified += 1;
        }
        let requested = request.count;
        // A peer that has since announced a lower best block is not blamed
        // for missing blocks above it.
        let first_missing = request.start + u64::from(verified);
        let should_have = self
            .peers
            .get(peer)
            .is_some_and(|state| state.best >= first_missing);
        if fault.is_none() && verified < requested && !should_have {
            // Nothing to blame: the rest is simply queued again.
        } else if fault.is_none() {
            fault = if served == 0 {
                Some(PenaltyReason::Empty { requested })
            } else if verified < requested {
                Some(PenaltyReason::Short {
                    requested,
                    got: verified,
                })
            } else if served > requested as usize {
                Some(PenaltyReason::TooMany {
                    requested,
                    got: served,
                })
            } else {
                None
            };
        }
        if let Some(state) = self.peers.get_mut(peer) {
            state.in_flight -= 1;
            state.record_answer(request.sent_ms, now_ms, verified);
            if verified < requested && should_have {
                state.exclude(first_missing..request.range().end);
            }
        }
        self.release_range(&request, None);
        if let Some(twin) = self.unlink_twin(&request) {
            let twin_done = self.requests.get(&twin).is_some_and(|t| {
                t.range()
                    .all(|n| n < self.base || matches!(self.entry(n).slot, Slot::Downloaded(_)))
            });
            if twin_done {
                let twin_request = self.requests.remove(&twin).expect("checked above");
                if let Some(state) = self.peers.get_mut(&twin_request.peer) {
                    state.in_flight -= 1;
                }
                self.push_event(SyncEvent::Cancel {
                    peer: twin_request.peer,
                    id: twin,
                });
            }
        }
        if let Some(reason) = fault {
            self.penalize(peer.clone(), reason);
        }
        Ok(accepted)
    }

    /// Request `id` to `peer` failed at the network level (stream closed,
    /// dial failed, …): its blocks are queued again at once, counted as a
    /// timeout of that peer for the retry rule, without a penalty.
    pub fn handle_failure(&mut self, peer: &P, id: RequestId) -> Result<(), SyncError> {
        match self.requests.get(&id) {
            Some(request) if &request.peer == peer => {}
            _ => return Err(SyncError::UnknownRequest(id)),
        }
        let request = self.requests.remove(&id).expect("checked above");
        if let Some(state) = self.peers.get_mut(peer) {
            state.in_flight -= 1;
        }
        self.unlink_twin(&request);
        self.release_range(&request, Some(peer));
        self.timeouts += 1;
        Ok(())
    }

    /// Expires every request whose deadline is at or before `now_ms` and
    /// returns them (the driver may abort them; their answers are ignored).
    ///
    /// Their blocks are queued again; the same peer may be asked again up to
    /// `max_retries` times in a row, then only other peers (unless none has
    /// the block). The peer is penalised ([`PenaltyReason::Timeout`]) and its
    /// speed estimate charged with the whole timeout, so its next timeout is
    /// longer (up to `request_timeout_ms`).
    pub fn check_timeouts(&mut self, now_ms: u64) -> Vec<(P, RequestId)> {
        let expired: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::with_capacity(expired.len());
        for id in expired {
            let request = self.requests.remove(&id).expect("listed above");
            if let Some(state) = self.peers.get_mut(&request.peer) {
                state.in_flight -= 1;
                // Pessimistic: as if the answer came at the deadline.
                let service = request.deadline_ms - request.sent_ms.max(state.last_answer_ms);
                state.speed.record(service, request.count);
            }
            self.unlink_twin(&request);
            self.release_range(&request, Some(&request.peer));
            self.timeouts += 1;
            self.penalize(
                request.peer.clone(),
                PenaltyReason::Timeout {
                    id,
                    blocks: request.count,
                },
            );
            out.push((request.peer, id));
        }
        out
    }

    /// When the driver should next call [`Self::check_timeouts`] and
    /// [`Self::next_request`] if nothing else happens: the earliest request
    /// deadline or the next moment the oldest batch may be hedged (only
    /// moments after `now_ms`, and only with a second peer, count for
    /// hedging). `None` with nothing in flight.
    pub fn next_wakeup_ms(&self, now_ms: u64) -> Option<u64> {
        let deadline = self.requests.values().map(|r| r.deadline_ms).min();
        // Hedging needs a second peer.
        let hedge = (self.peers.len() > 1)
            .then(|| self.oldest_request())
            .flatten();
        let hedge = hedge.and_then(|(_, request)| {
            let (early, late) = self.hedge_times(request);
            // An unmeasured holder is late as soon as a measured peer could
            // have served its batch `hedge_factor` times over.
            let sooner = match request.expected_ms {
                None => self
                    .hedge_candidate(request)
                    .and_then(|(_, expected)| expected)
                    .map(|cand| {
                        let due = cand.saturating_mul(self.config.hedge_factor);
                        early.max(request.sent_ms.saturating_add(due))
                    }),
                Some(_) => None,
            };
            [Some(early), Some(late), sooner]
                .into_iter()
                .flatten()
                .filter(|t| *t > now_ms)
                .min()
        });
        deadline.into_iter().chain(hedge).min()
    }

    // ---- outputs -------------------------------------------------------

    /// Takes the downloaded blocks that continue the chain, oldest first:
    /// the contiguous run from [`Self::next_block`]. Import them in this order.
    pub fn take_ready(&mut self) -> Vec<Block> {
        self.take_ready_up_to(usize::MAX)
    }

    /// [`Self::take_ready`], at most `max` blocks (the rest stay buffered,
    /// for a driver whose import queue has room for only so many).
    pub fn take_ready_up_to(&mut self, max: usize) -> Vec<Block> {
        let mut ready = Vec::new();
        while let Some(entry) = self.entries.front() {
            if ready.len() >= max {
                break;
            }
            if !matches!(entry.slot, Slot::Downloaded(_)) {
                break;
            }
            let Some(Entry {
                slot: Slot::Downloaded(block),
                ..
            }) = self.entries.pop_front()
            else {
                unreachable!("checked above")
            };
            ready.push(*block);
            self.base += 1;
            self.downloaded -= 1;
            self.released += 1;
        }
        ready
    }

    /// The next event for the driver, oldest first.
    pub fn poll_event(&mut self) -> Option<SyncEvent<P>> {
        self.events.pop_front()
    }

    /// Counters for metrics and tests.
    pub fn get_stats(&self) -> SyncStats {
        let in_flight_blocks = self
            .entries
            .iter()
            .filter(|e| matches!(e.slot, Slot::InFlight(_)))
            .count();
        SyncStats {
            pending_requests: self.requests.len(),
            queued_blocks: self.queued.len(),
            in_flight_blocks,
            downloaded_blocks: self.downloaded,
            released_blocks: self.released,
            next_block: self.base,
            peers: self.peers.len(),
            timeouts: self.timeouts,
            penalties: self.penalties,
            hedges: self.hedges,
        }
    }

    // ---- internals -----------------------------------------------------

    /// The entry of block `number` (which must be held).
    fn entry(&self, number: u64) -> &Entry<P> {
        &self.entries[(number - self.base) as usize]
    }

    /// One past the last block number that may be requested.
    fn window_end(&self) -> u64 {
        self.base
            .saturating_add(self.config.max_buffered_blocks as u64)
    }

    /// Whether `peer` may be asked for block `number`: it has it, has not
    /// failed to serve it, and has not timed out on it `max_retries` times in
    /// a row while another peer has it.
    fn eligible(&self, peer: &P, state: &PeerState, number: u64, entry: &Entry<P>) -> bool {
        if !state.has(number) {
            return false;
        }
        match &entry.timeouts {
            Some((slow, count)) if slow == peer && *count >= self.config.max_retries => !self
                .peers
                .iter()
                .any(|(other, s)| other != peer && s.has(number)),
            _ => true,
        }
    }

    /// Whether `peer` may take one more batch: under the parallel limit, and
    /// (once it has one in flight) measured and expected to deliver another
    /// behind those it holds within the timeout bound. A slow peer's queue
    /// stays short, so its batches do not expire while they wait behind each
    /// other (a peer serves its batches one after another); a peer not yet
    /// measured gets one batch, which measures it.
    fn has_room(&self, peer: &P, state: &PeerState) -> bool {
        if state.in_flight >= self.config.max_parallel_downloads {
            return false;
        }
        state.in_flight == 0
            || state.expected_ms(self.batch_limit(peer)).is_some_and(|e| {
                e.saturating_mul(self.config.timeout_factor) <= self.config.request_timeout_ms
            })
    }

    /// The timeout of a new batch of `blocks` on a peer in `state`.
    fn timeout_for(&self, state: &PeerState, blocks: u32) -> u64 {
        match state.expected_ms(blocks) {
            None => self.config.request_timeout_ms,
            Some(expected) => expected.saturating_mul(self.config.timeout_factor).clamp(
                self.config.min_request_timeout_ms,
                self.config.request_timeout_ms,
            ),
        }
    }

    /// Most blocks to ask of `peer` in one batch.
    fn batch_limit(&self, peer: &P) -> u32 {
        let budget = self.config.request_timeout_ms / self.config.timeout_factor;
        self.peers.get(peer).map_or(1, |state| {
            state
                .speed
                .blocks_within(budget, self.config.max_blocks_per_request)
        })
    }

    /// Most blocks in a new batch under [`SyncConfig::spread_tail`]: the
    /// waiting blocks over the batches all peers may hold, at least one.
    fn tail_limit(&self) -> u32 {
        if !self.config.spread_tail {
            return u32::MAX;
        }
        let slots = (self.peers.len() * self.config.max_parallel_downloads).max(1);
        u32::try_from(self.queued.len().div_ceil(slots)).unwrap_or(u32::MAX)
    }

    /// Length of the run from `start` (which qualifies) of blocks whose slot
    /// passes `slot_ok` and which `peer` may serve, at most `limit`, below `end`.
    fn extend_run(
        &self,
        peer: &P,
        start: u64,
        limit: u32,
        end: u64,
        slot_ok: impl Fn(&Slot) -> bool,
    ) -> u32 {
        let state = &self.peers[peer];
        let mut count = 1;
        while count < limit {
            let number = start + u64::from(count);
            if number >= end || number >= self.base + self.entries.len() as u64 {
                break;
            }
            let entry = self.entry(number);
            if !slot_ok(&entry.slot) || !self.eligible(peer, state, number, entry) {
                break;
            }
            count += 1;
        }
        count
    }

    /// Marks `count` blocks from `start` in flight to `peer` and records the request.
    fn dispatch(
        &mut self,
        peer: P,
        start: u64,
        count: u32,
        now_ms: u64,
        twin: Option<RequestId>,
    ) -> (P, BatchRequest) {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let state = &self.peers[&peer];
        let expected_ms = state.expected_ms(count);
        let timeout = self.timeout_for(state, count);
        self.peers.get_mut(&peer).expect("known peer").in_flight += 1;
        let mut hashes = Vec::with_capacity(count as usize);
        for number in start..start + u64::from(count) {
            let entry = &mut self.entries[(number - self.base) as usize];
            entry.slot = match entry.slot {
                Slot::Queued => {
                    self.queued.remove(&number);
                    Slot::InFlight(1)
                }
                Slot::InFlight(k) => Slot::InFlight(k + 1),
                Slot::Downloaded(_) => unreachable!("dispatch of a downloaded block"),
            };
            hashes.push(entry.hash);
        }
        let deadline_ms = now_ms.saturating_add(timeout);
        self.requests.insert(
            id,
            Request {
                peer: peer.clone(),
                start,
                count,
                sent_ms: now_ms,
                expected_ms,
                deadline_ms,
                twin,
            },
        );
        let request = BatchRequest {
            id,
            start,
            hashes,
            deadline_ms,
        };
        (peer, request)
    }

    /// A resolved request no longer covers its blocks: those not downloaded
    /// go back to the queue when no other request covers them. With
    /// `timed_out_on`, each counts one more timeout on that peer.
    fn release_range(&mut self, request: &Request<P>, timed_out_on: Option<&P>) {
        for number in request.range() {
            if number < self.base {
                continue;
            }
            let entry = &mut self.entries[(number - self.base) as usize];
            match entry.slot {
                Slot::InFlight(1) => {
                    entry.slot = Slot::Queued;
                    self.queued.insert(number);
                }
                Slot::InFlight(k) => entry.slot = Slot::InFlight(k - 1),
                Slot::Downloaded(_) => continue,
                Slot::Queued => unreachable!("a block in a request is not queued"),
            }
            if let Some(peer) = timed_out_on {
                entry.timeouts = match entry.timeouts.take() {
                    Some((last, n)) if &last == peer => Some((last, n + 1)),
                    _ => Some((peer.clone(), 1)),
                };
            }
        }
    }

    /// Clears the twin link of a resolved request; returns the twin.
    fn unlink_twin(&mut self, request: &Request<P>) -> Option<RequestId> {
        let twin = request.twin?;
        let other = self.requests.get_mut(&twin)?;
        other.twin = None;
        Some(twin)
    }

    /// The request holding the oldest block not yet downloaded, if that
    /// block is in exactly one request.
    fn oldest_request(&self) -> Option<(RequestId, &Request<P>)> {
        let first = self
            .entries
            .iter()
            .position(|e| !matches!(e.slot, Slot::Downloaded(_)))?;
        if !matches!(self.entries[first].slot, Slot::InFlight(1)) {
            return None;
        }
        let number = self.base + first as u64;
        self.requests
            .iter()
            .find(|(_, r)| r.range().contains(&number) && r.twin.is_none())
            .map(|(id, r)| (*id, r))
    }

    /// When a request may first be hedged to a faster peer (`early`), and
    /// when it is late and hedged to any peer (`late`).
    fn hedge_times(&self, request: &Request<P>) -> (u64, u64) {
        let early = request.sent_ms.saturating_add(self.config.hedge_delay_ms);
        let patience = match request.expected_ms {
            Some(expected) => expected.saturating_mul(self.config.hedge_factor),
            None => (request.deadline_ms - request.sent_ms) / 2,
        };
        (early, early.max(request.sent_ms.saturating_add(patience)))
    }

    /// The peer a hedge of `request` would go to, with its expected time
    /// for the batch: an eligible peer other than the holder with room, the
    /// fastest first (unmeasured ones last), then the lowest id.
    fn hedge_candidate(&self, request: &Request<P>) -> Option<(P, Option<u64>)> {
        let start = request.start.max(self.base);
        let entry = self.entry(start);
        self.peers
            .iter()
            .filter(|(peer, state)| {
                **peer != request.peer
                    && state.in_flight < self.config.max_parallel_downloads
                    && self.eligible(peer, state, start, entry)
            })
            .map(|(peer, state)| (peer, state.expected_ms(request.count)))
            .min_by(|(a, ea), (b, eb)| {
                let key = |e: &Option<u64>| e.unwrap_or(u64::MAX);
                key(ea).cmp(&key(eb)).then_with(|| a.cmp(b))
            })
            .map(|(peer, expected)| (peer.clone(), expected))
    }

    /// Hedges the oldest batch to a second peer if it is late: in flight
    /// `hedge_factor` times its expected time (half its timeout for an
    /// unmeasured peer), or at least `hedge_delay_ms` while an idle peer is
    /// expected to deliver it sooner than its holder (for an unmeasured
    /// holder: while `hedge_factor` times the idle peer's expected time has
    /// passed).
    fn try_hedge(&mut self, now_ms: u64) -> Option<(P, BatchRequest)> {
        let (id, request) = self.oldest_request()?;
        let (early, late) = self.hedge_times(request);
        if now_ms < early {
            return None;
        }
        let start = request.start.max(self.base);
        let (peer, cand_expected) = self.hedge_candidate(request)?;
        let sooner = match (cand_expected, request.expected_ms) {
            (Some(cand), Some(holder)) => {
                now_ms.saturating_add(cand) < request.sent_ms.saturating_add(holder)
            }
            // An unmeasured holder (a new peer, or one that never answers)
            // is late once a measured peer could have delivered the batch
            // `hedge_factor` times over.
            (Some(cand), None) => {
                now_ms
                    >= request
                        .sent_ms
                        .saturating_add(cand.saturating_mul(self.config.hedge_factor))
            }
            (None, _) => false,
        };
        if now_ms < late && !sooner {
            return None;
        }
        let end = request.range().end;
        let limit = self.batch_limit(&peer);
        let count = self.extend_run(&peer, start, limit, end, |slot| {
            matches!(slot, Slot::InFlight(1))
        });
        let hedge = self.dispatch(peer, start, count, now_ms, Some(id));
        self.requests.get_mut(&id).expect("still in flight").twin = Some(hedge.1.id);
        self.hedges += 1;
        Some(hedge)
    }

    /// Queues a penalty event.
    fn penalize(&mut self, peer: P, reason: PenaltyReason) {
        self.penalties += 1;
        self.push_event(SyncEvent::Penalize { peer, reason });
    }

    /// Queues an event, dropping the oldest beyond `max_events`.
    fn push_event(&mut self, event: SyncEvent<P>) {
        if self.events.len() >= self.config.max_events {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}
