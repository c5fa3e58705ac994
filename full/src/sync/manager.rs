//! `SyncManager`: drives the [`SyncProtocol`] scheduler over the network.
//!
//! It decides when the node is far enough behind its peers to leave gossip
//! for range sync, fetches headers (128 per request, several ranges at once,
//! each from the least loaded peer, linked by hash to what is already queued), hands bodies to the scheduler,
//! maps network requests to scheduler batches, and turns the scheduler's
//! penalties into peer-score penalties. Seals and parent QCs are verified
//! when the blocks are imported, as one randomized batch per run
//! ([`crate::Importer::import_chain`]); a block that fails there restarts
//! the sync and the peer that served its header is penalised.
//!
//! Import may lag behind: the node imports the runs [`SyncManager::take_ready`]
//! hands out on a thread of its own and reports back with
//! [`SyncManager::on_imported`] or [`SyncManager::on_import_error`]. Every
//! restart of the sync starts a new [`SyncManager::generation`], so reports
//! about runs of an earlier one are told apart.
//!
//! Pure bookkeeping: the node sends the requests it returns and feeds back
//! the answers, so the manager needs neither a clock nor sockets.

use super::protocol::{PenaltyReason, RequestId, SyncConfig, SyncEvent, SyncProtocol};
use crate::network::{Misbehaviour, SyncRequest, SyncResponse};
use crate::rpc::SyncProgress;
use alloy_primitives::B256;
use libp2p::PeerId;
use libp2p::request_response::OutboundRequestId;
use luxtensor_light::{Block, Header, SignedHeader};
use std::collections::{BTreeMap, HashMap};

/// How far behind the best peer (in finalized blocks) a node must be to
/// start range sync.
pub const SYNC_DISTANCE: u64 = 32;
/// Header ranges in flight or received ahead of the queue at once. A header
/// request waits behind the body batches its peer is serving, so several
/// must be out for headers to stay ahead of the bodies of every peer.
pub const MAX_HEADER_REQUESTS: usize = 8;
/// Blocks per body batch. Small batches, pipelined up to
/// [`super::MAX_PARALLEL_DOWNLOADS`] per peer, keep the answers flowing
/// into import: the peers' answers do not arrive together in large rounds
/// that then wait for import, and the last round, which nothing overlaps,
/// is short.
pub const BLOCKS_PER_BATCH: u32 = 32;
/// Downloaded blocks held ahead of import (the scheduler's buffer window):
/// enough to keep every peer's pipeline full while the oldest batch is
/// late, without holding thousands of blocks while import catches up.
pub const BUFFERED_BLOCKS: usize = 1_024;
/// How long a peer with nothing else to serve for us may take to answer a
/// request for headers (at most 128, some 40–80 kB) before the range is
/// asked of another peer and this one is penalised; a peer serving body
/// batches or other header pages first gets the scheduler's timeout for
/// what it serves ahead, if that is longer (see
/// [`SyncManager::header_timeout_ms`]). The queue waits for the oldest header
/// page, so a peer that never answers must not hold it for the network's
/// own, much longer, request timeout.
pub const HEADER_REQUEST_TIMEOUT_MS: u64 = 5_000;

/// What a request the manager asked for is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// Headers from this number on.
    Headers(u64),
    /// A batch of bodies of the scheduler.
    Batch(RequestId),
}

/// A request to send, and what it is for.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// To whom.
    pub peer: PeerId,
    /// What.
    pub request: SyncRequest,
    /// Hand back to [`SyncManager::sent`] with the network's request id.
    pub tag: Tag,
    /// When the request times out: the scheduler's adaptive deadline for a
    /// batch, [`SyncManager::header_timeout_ms`] from now for headers.
    pub deadline_ms: u64,
}

/// One of our requests in flight on the network.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    peer: PeerId,
    tag: Tag,
    sent_ms: u64,
    deadline_ms: u64,
    /// Sent before the last reset: its answer is no longer wanted, but a
    /// missed deadline still counts against the peer.
    stale: bool,
    /// Its deadline passed and it was judged: how the network ends it
    /// (answer, failure) changes nothing more.
    expired: bool,
}

/// What changed in the sync's life after an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Not syncing, nothing changed.
    Idle,
    /// Range sync just began.
    Started,
    /// Still syncing.
    Syncing,
    /// Range sync just finished: follow the head by gossip from here.
    CaughtUp,
}

#[derive(Debug, Clone, Copy)]
struct Active {
    starting: u64,
    started_ms: u64,
    imported_at_start: u64,
}

/// The range-sync driver of a node. `Id` names a network request (the
/// tests use their own).
#[derive(Debug)]
pub struct SyncManager<Id = OutboundRequestId> {
    config: SyncConfig,
    protocol: SyncProtocol<PeerId>,
    peers: HashMap<PeerId, u64>,
    /// Our requests in flight, until the network ends them (an answer or
    /// a failure), including those of before a reset: each is judged once
    /// against its deadline.
    requests: HashMap<Id, InFlight>,
    /// Penalties for missed deadlines, until [`Self::penalties`] takes them.
    due_penalties: Vec<(PeerId, Misbehaviour)>,
    /// Header ranges asked for, by first number: (peer, count). Several are
    /// in flight at once, each to the least loaded peer, so that headers keep
    /// ahead of the bodies however busy any one peer is.
    header_requests: BTreeMap<u64, (PeerId, u64)>,
    /// Header pages received ahead of the queue, by first number (bounded
    /// by [`MAX_HEADER_REQUESTS`] pages).
    header_pages: BTreeMap<u64, (PeerId, Vec<SignedHeader>)>,
    /// Header requests that failed (no answer, empty, wrong or refused
    /// headers) per peer since its last good answer: headers go to the peer
    /// with the fewest, so a best peer that does not serve headers is not
    /// asked forever.
    header_failures: HashMap<PeerId, u32>,
    /// Who served the headers starting at each number (to blame on import failure).
    header_sources: BTreeMap<u64, PeerId>,
    /// The queued headers, as their header peer served them: a body peer
    /// cannot swap a seal (the seal is not part of the block hash).
    headers: BTreeMap<u64, SignedHeader>,
    /// The block the first queued header must extend: our head when the sync (re)started.
    anchor: (u64, B256),
    active: Option<Active>,
    just_started: bool,
    imported: u64,
    latest_ms: u64,
    /// Bumped at every reset (see [`Self::generation`]).
    generation: u64,
}

impl<Id: Copy + Eq + std::hash::Hash + std::fmt::Debug> SyncManager<Id> {
    /// A manager with the node's scheduler configuration: the defaults,
    /// with [`BLOCKS_PER_BATCH`], [`BUFFERED_BLOCKS`] and the last blocks
    /// spread over the peers ([`SyncConfig::spread_tail`]).
    pub fn new() -> Self {
        Self::with_config(SyncConfig {
            max_blocks_per_request: BLOCKS_PER_BATCH,
            max_buffered_blocks: BUFFERED_BLOCKS,
            spread_tail: true,
            ..SyncConfig::default()
        })
    }

    /// A manager with `config`.
    pub fn with_config(config: SyncConfig) -> Self {
        Self {
            protocol: SyncProtocol::new(config.clone()).expect("a validated sync config"),
            config,
            peers: HashMap::new(),
            requests: HashMap::new(),
            due_penalties: Vec::new(),
            header_requests: BTreeMap::new(),
            header_pages: BTreeMap::new(),
            header_failures: HashMap::new(),
            header_sources: BTreeMap::new(),
            headers: BTreeMap::new(),
            anchor: (0, B256::ZERO),
            active: None,
            just_started: false,
            imported: 0,
            latest_ms: 0,
            generation: 0,
        }
    }

    /// Whether range sync is running.
    pub fn is_syncing(&self) -> bool {
        self.active.is_some()
    }

    /// Whether a network request is one of ours.
    pub fn owns(&self, id: Id) -> bool {
        self.requests.contains_key(&id)
    }

    /// A peer's latest finalized number.
    pub fn update_peer(&mut self, peer: PeerId, finalized: u64) {
        self.peers.insert(peer, finalized);
        if !self.protocol.update_peer(&peer, finalized) {
            let _ = self.protocol.add_peer(peer, finalized);
        }
    }

    /// A peer left: its batches go back to the queue.
    pub fn remove_peer(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
        self.header_failures.remove(peer);
        self.protocol.remove_peer(peer);
        let lost: Vec<Id> = self
            .requests
            .iter()
            .filter(|(_, request)| request.peer == *peer)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some(request) = self.requests.remove(&id)
                && let Tag::Headers(start) = request.tag
                && !request.stale
                && !request.expired
            {
                self.header_requests.remove(&start);
            }
        }
    }

    /// Who to ask for headers from `next` on: among the peers whose chain
    /// reaches it, the one that failed to serve headers least often, then the
    /// least loaded (header and body requests in flight, including those
    /// from before a reset: a peer serves its requests one after another),
    /// then the one with the longest chain.
    fn header_peer(&self, next: u64) -> Option<(PeerId, u64)> {
        self.peers
            .iter()
            .filter(|(_, best)| **best >= next)
            .min_by_key(|(peer, best)| {
                let failures = self.header_failures.get(*peer).copied().unwrap_or(0);
                let headers = self
                    .header_requests
                    .values()
                    .filter(|(p, _)| p == *peer)
                    .count();
                let load = headers + self.protocol.peer_in_flight(peer) + self.stale_ahead(peer);
                (failures, load, std::cmp::Reverse(**best), **peer)
            })
            .map(|(p, b)| (*p, *b))
    }

    fn header_failed(&mut self, peer: PeerId) {
        if self.peers.contains_key(&peer) {
            *self.header_failures.entry(peer).or_default() += 1;
        }
    }

    fn best_peer(&self) -> Option<(PeerId, u64)> {
        self.peers
            .iter()
            .max_by_key(|(peer, best)| (**best, std::cmp::Reverse(**peer)))
            .map(|(p, b)| (*p, *b))
    }

    /// The requests to send now, given our head.
    pub fn poll_requests(&mut self, head: &Header, now_ms: u64) -> Vec<Outgoing> {
        self.latest_ms = now_ms;
        for (peer, id) in self.protocol.check_timeouts(now_ms) {
            tracing::debug!(%peer, ?id, "sync batch timed out");
        }
        self.expire_requests(now_ms);
        let best = self.best_peer();
        if self.active.is_none() {
            match best {
                Some((_, target)) if target > head.number + SYNC_DISTANCE => {
                    tracing::info!(from = head.number, target, "starting range sync");
                    self.active = Some(Active {
                        starting: head.number,
                        started_ms: now_ms,
                        imported_at_start: self.imported,
                    });
                    self.just_started = true;
                    self.reset(head);
                }
                _ => return vec![],
            }
        }
        let mut out = Vec::new();
        self.request_headers(head, now_ms, &mut out);
        while let Some((peer, batch)) = self.protocol.next_request(now_ms) {
            out.push(Outgoing {
                peer,
                request: SyncRequest::BlocksByRange {
                    start: batch.start,
                    count: u64::from(batch.count()),
                },
                tag: Tag::Batch(batch.id),
                deadline_ms: batch.deadline_ms,
            });
        }
        out
    }

    /// Asks for the next header ranges not yet asked for or received, up to
    /// [`MAX_HEADER_REQUESTS`] at once and within the queue's room.
    fn request_headers(&mut self, head: &Header, now_ms: u64, out: &mut Vec<Outgoing>) {
        let mut next = self
            .protocol
            .last_queued()
            .map_or(head.number + 1, |(number, _)| number + 1);
        let held: u64 = self
            .header_requests
            .values()
            .map(|(_, count)| *count)
            .chain(
                self.header_pages
                    .values()
                    .map(|(_, page)| page.len() as u64),
            )
            .sum();
        let mut room = (self.protocol.queue_capacity() as u64).saturating_sub(held);
        while self.header_requests.len() + self.header_pages.len() < MAX_HEADER_REQUESTS {
            if let Some((_, page)) = self.header_pages.get(&next) {
                next += page.len() as u64;
                continue;
            }
            if let Some((_, count)) = self.header_requests.get(&next) {
                next += count;
                continue;
            }
            let Some((peer, target)) = self.header_peer(next) else {
                return;
            };
            if room == 0 || next > target {
                return;
            }
            let count = (target - next + 1)
                .min(crate::network::wire::MAX_BLOCKS_PER_REQUEST)
                .min(room);
            out.push(Outgoing {
                peer,
                request: SyncRequest::HeadersByRange { start: next, count },
                tag: Tag::Headers(next),
                deadline_ms: now_ms.saturating_add(self.header_timeout_ms(&peer)),
            });
            self.header_requests.insert(next, (peer, count));
            room -= count;
            next += count;
        }
    }

    /// The timeout of a new header request to `peer`: a peer serves our
    /// requests one after another, so behind body batches or other header
    /// pages it gets the scheduler's timeout for a batch behind those (a
    /// page counted as [`BLOCKS_PER_BATCH`] blocks), and never less than
    /// [`HEADER_REQUEST_TIMEOUT_MS`].
    fn header_timeout_ms(&self, peer: &PeerId) -> u64 {
        let pages_ahead = self
            .header_requests
            .values()
            .filter(|(p, _)| p == peer)
            .count();
        let ahead = (pages_ahead + self.stale_ahead(peer)) as u32;
        if ahead == 0 && self.protocol.peer_in_flight(peer) == 0 {
            return HEADER_REQUEST_TIMEOUT_MS;
        }
        self.protocol
            .peer_timeout_ms(peer, BLOCKS_PER_BATCH.saturating_mul(ahead + 1))
            .unwrap_or(self.config.request_timeout_ms)
            .max(HEADER_REQUEST_TIMEOUT_MS)
    }

    /// Requests from before the last reset that `peer` may still be
    /// serving (not answered, failed or expired yet): work it does before
    /// any new one.
    fn stale_ahead(&self, peer: &PeerId) -> usize {
        self.requests
            .values()
            .filter(|r| r.peer == *peer && r.stale && !r.expired)
            .count()
    }

    /// Judges the requests whose deadline has passed. A header range goes
    /// back to be asked of another peer, and its peer is penalised; a request
    /// from before a reset costs its peer the same penalty. (The scheduler
    /// judges its own batches, with the same deadlines.)
    fn expire_requests(&mut self, now_ms: u64) {
        let due: Vec<Id> = self
            .requests
            .iter()
            .filter(|(_, request)| !request.expired && request.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let request = self.requests.get_mut(&id).expect("listed above");
            request.expired = true;
            let InFlight {
                peer, tag, stale, ..
            } = *request;
            match (stale, tag) {
                (false, Tag::Batch(_)) => continue,
                (false, Tag::Headers(start)) => {
                    self.header_requests.remove(&start);
                    self.header_failed(peer);
                }
                (true, _) => {}
            }
            tracing::debug!(%peer, ?tag, stale, "sync request timed out");
            self.due_penalties.push((peer, Misbehaviour::Timeout));
        }
    }

    /// Queues the received header pages that continue the queue, in order.
    fn drain_header_pages(&mut self, penalties: &mut Vec<(PeerId, Misbehaviour)>) {
        loop {
            let next = self
                .protocol
                .last_queued()
                .map_or(self.anchor.0 + 1, |(number, _)| number + 1);
            let Some((peer, headers)) = self.header_pages.remove(&next) else {
                return;
            };
            if self.protocol.last_queued().is_none()
                && headers[0].header.parent_hash != self.anchor.1
            {
                // Not our chain (or our head moved on): ask again later.
                tracing::debug!(%peer, start = next, "headers do not extend our head");
                self.header_failed(peer);
                return;
            }
            match self.protocol.queue_headers(&headers) {
                Ok(_) => {
                    self.header_failures.remove(&peer);
                    self.header_sources.insert(next, peer);
                    for header in headers {
                        self.headers.insert(header.header.number, header);
                    }
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "headers refused");
                    self.header_failed(peer);
                    penalties.push((peer, Misbehaviour::InvalidData));
                }
            }
        }
    }

    /// Records the network id of a request returned by [`Self::poll_requests`].
    pub fn sent(&mut self, id: Id, outgoing: &Outgoing) {
        self.requests.insert(
            id,
            InFlight {
                peer: outgoing.peer,
                tag: outgoing.tag,
                sent_ms: self.latest_ms,
                deadline_ms: outgoing.deadline_ms,
                stale: false,
                expired: false,
            },
        );
    }

    /// An answer to one of our requests; returns the penalties to apply.
    pub fn on_response(
        &mut self,
        peer: PeerId,
        id: Id,
        response: SyncResponse,
        now_ms: u64,
    ) -> Vec<(PeerId, Misbehaviour)> {
        let Some(InFlight {
            tag,
            sent_ms,
            stale,
            expired,
            ..
        }) = self.requests.remove(&id)
        else {
            return vec![];
        };
        if stale || expired {
            tracing::debug!(%peer, ?tag, stale, expired, "late sync answer ignored");
            return vec![];
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let (kind, len) = match &response {
                SyncResponse::Headers(h) => ("headers", h.len()),
                SyncResponse::Blocks(b) => ("blocks", b.len()),
                SyncResponse::Status(_) => ("status", 0),
            };
            tracing::debug!(%peer, ?tag, kind, len, ms = now_ms.saturating_sub(sent_ms), "sync answer");
        }
        let mut penalties = Vec::new();
        match (tag, response) {
            (Tag::Headers(start), SyncResponse::Headers(headers)) => {
                self.header_requests.remove(&start);
                self.protocol.note_other_answer(&peer, now_ms);
                if self.active.is_none() {
                    return vec![];
                }
                let linked = headers.windows(2).all(|w| {
                    w[1].header.number == w[0].header.number + 1
                        && w[1].header.parent_hash == w[0].header.hash()
                });
                if headers.is_empty() {
                    self.header_failed(peer);
                    penalties.push((peer, Misbehaviour::ShortResponse));
                } else if headers[0].header.number != start || !linked {
                    self.header_failed(peer);
                    penalties.push((peer, Misbehaviour::ProtocolViolation));
                } else {
                    self.header_pages.insert(start, (peer, headers));
                    self.drain_header_pages(&mut penalties);
                }
            }
            (Tag::Batch(batch), SyncResponse::Blocks(blocks)) => {
                if let Err(error) = self.protocol.handle_response(&peer, batch, blocks, now_ms) {
                    tracing::debug!(%peer, %error, "late or unknown batch answer");
                }
            }
            (Tag::Headers(start), _) => {
                self.header_requests.remove(&start);
                self.header_failed(peer);
                penalties.push((peer, Misbehaviour::ProtocolViolation));
            }
            (Tag::Batch(batch), _) => {
                let _ = self.protocol.handle_failure(&peer, batch);
                penalties.push((peer, Misbehaviour::ProtocolViolation));
            }
        }
        penalties.extend(self.penalties());
        penalties
    }

    /// One of our requests failed on the network (closed stream, the
    /// network's own timeout, …). Our requests are judged against their
    /// own, shorter, deadlines (see [`Self::penalties`]), so only a request
    /// that is not ours (the engine's by-hash requests) gets a penalty here,
    /// for a timeout.
    pub fn on_failure(&mut self, peer: PeerId, id: Id, timed_out: bool) -> Option<Misbehaviour> {
        let Some(request) = self.requests.remove(&id) else {
            return timed_out.then_some(Misbehaviour::Timeout);
        };
        if request.stale || request.expired {
            return None;
        }
        match request.tag {
            Tag::Headers(start) => {
                self.header_requests.remove(&start);
                self.header_failed(peer);
            }
            Tag::Batch(batch) => {
                let _ = self.protocol.handle_failure(&peer, batch);
            }
        }
        None
    }

    /// The penalties due: missed deadlines, and the scheduler's penalties
    /// as peer-score penalties. The driver takes them after every
    /// [`Self::poll_requests`] (answers return theirs at once).
    pub fn penalties(&mut self) -> Vec<(PeerId, Misbehaviour)> {
        let mut out = std::mem::take(&mut self.due_penalties);
        while let Some(event) = self.protocol.poll_event() {
            // A hedge's twin answered first: the scheduler wrote this one
            // off, so its deadline no longer counts (nor its answer).
            if let SyncEvent::Cancel { id, .. } = event {
                if let Some(request) = self.requests.values_mut().find(|r| r.tag == Tag::Batch(id))
                {
                    request.expired = true;
                }
                continue;
            }
            if let SyncEvent::Penalize { peer, reason } = event {
                tracing::debug!(%peer, %reason, "sync peer penalised");
                let why = match reason {
                    PenaltyReason::Timeout { .. } => Misbehaviour::Timeout,
                    PenaltyReason::Empty { .. } | PenaltyReason::Short { .. } => {
                        Misbehaviour::ShortResponse
                    }
                    PenaltyReason::TooMany { .. } => Misbehaviour::ProtocolViolation,
                    PenaltyReason::WrongBlock { .. } | PenaltyReason::BadBody { .. } => {
                        Misbehaviour::InvalidData
                    }
                };
                out.push((peer, why));
            }
        }
        out
    }

    /// Downloaded blocks that continue our chain, in order, at most `max`:
    /// import them, then report with [`Self::on_imported`] or
    /// [`Self::on_import_error`].
    pub fn take_ready(&mut self, max: usize) -> Vec<Block> {
        let mut ready = self.protocol.take_ready_up_to(max);
        for block in &mut ready {
            if let Some(header) = self.headers.remove(&block.header.number) {
                block.header = header;
            }
        }
        ready
    }

    /// Which sync the runs [`Self::take_ready`] hands out now belong to:
    /// a new one begins at every (re)start of the sync, and reports about
    /// runs of an earlier one change nothing here.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// `blocks` blocks taken in `generation` were imported; the chain's
    /// head is now `head`. The header sources of imported blocks are
    /// forgotten (no import failure can blame them any more).
    pub fn on_imported(&mut self, generation: u64, blocks: usize, head: &Header) {
        if generation != self.generation {
            return;
        }
        self.imported += blocks as u64;
        let next = head.number + 1;
        if let Some(&from) = self
            .header_sources
            .range(..=next)
            .next_back()
            .map(|(k, _)| k)
        {
            self.header_sources = self.header_sources.split_off(&from);
        }
    }

    /// Block `number`, taken in `generation`, failed import (bad seal or
    /// QC, or bad execution): blame whoever served its header and start over
    /// from our head. `None` (and nothing changes) for a report about an
    /// earlier generation.
    pub fn on_import_error(
        &mut self,
        generation: u64,
        number: u64,
        head: &Header,
    ) -> Option<PeerId> {
        if generation != self.generation {
            return None;
        }
        let culprit = self
            .header_sources
            .range(..=number)
            .next_back()
            .map(|(_, peer)| *peer);
        if let Some(peer) = culprit {
            self.peers.remove(&peer);
            self.protocol.remove_peer(&peer);
        }
        self.reset(head);
        culprit
    }

    fn reset(&mut self, head: &Header) {
        self.generation += 1;
        self.anchor = (head.number, head.hash());
        self.protocol = SyncProtocol::new(self.config.clone()).expect("a validated sync config");
        for (peer, best) in &self.peers {
            let _ = self.protocol.add_peer(*peer, *best);
        }
        // Requests in flight stay until the network ends them: a peer that
        // never answers is still found out at the deadline.
        for request in self.requests.values_mut() {
            request.stale = true;
        }
        self.header_requests.clear();
        self.header_pages.clear();
        self.header_sources.clear();
        self.headers.clear();
    }

    /// Where the sync stands after the last update, with `head` the
    /// imported head and `importing` whether runs taken are still being
    /// imported (the sync is not over before they are).
    pub fn outcome(&mut self, head: &Header, importing: bool) -> SyncOutcome {
        if std::mem::take(&mut self.just_started) {
            return SyncOutcome::Started;
        }
        let Some(_) = self.active else {
            return SyncOutcome::Idle;
        };
        // Losing every peer is not catching up: wait for one.
        let Some((_, target)) = self.best_peer() else {
            return SyncOutcome::Syncing;
        };
        // Caught up with the best finalized head we were told of (it may have
        // moved on by a few blocks since: gossip and the engine's requests
        // by hash fetch those).
        if head.number >= target && !importing {
            self.active = None;
            self.reset(head);
            return SyncOutcome::CaughtUp;
        }
        SyncOutcome::Syncing
    }

    /// Progress as `eth_syncing` reports it.
    pub fn progress(&self, current: u64) -> SyncProgress {
        SyncProgress {
            starting: self.active.map_or(current, |a| a.starting),
            current,
            highest: self
                .best_peer()
                .map_or(current, |(_, best)| best.max(current)),
        }
    }

    /// Blocks imported per second since the sync began.
    pub fn blocks_per_second(&self, now_ms: u64) -> f64 {
        let Some(active) = self.active else {
            return 0.0;
        };
        let secs = now_ms.saturating_sub(active.started_ms) as f64 / 1000.0;
        let blocks = self.imported - active.imported_at_start;
        if secs > 0.0 {
            blocks as f64 / secs
        } else {
            0.0
        }
    }

    /// Scheduler counters.
    pub fn stats(&self) -> super::protocol::SyncStats {
        self.protocol.get_stats()
    }

    /// The hash our sync continues from (for tests).
    pub fn last_queued(&self) -> Option<(u64, B256)> {
        self.protocol.last_queued()
    }
}

impl<Id: Copy + Eq + std::hash::Hash + std::fmt::Debug> Default for SyncManager<Id> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::tests::chain;

    /// A manager (request ids are plain numbers) that has just started a
    /// sync of `blocks` from `blocks[0]` with two peers at its end, and the
    /// header requests it sent, with their ids.
    fn started(blocks: &[Block]) -> (SyncManager<u32>, [PeerId; 2], Vec<(u32, Outgoing)>) {
        let mut sync = SyncManager::<u32>::new();
        let best = blocks.last().unwrap().header.header.number;
        let peers = [PeerId::random(), PeerId::random()];
        for peer in peers {
            sync.update_peer(peer, best);
        }
        let head = &blocks[0].header.header;
        let sent = send(&mut sync, head, 0, 1);
        assert_eq!(sync.outcome(head, false), SyncOutcome::Started);
        (sync, peers, sent)
    }

    /// Polls at `now_ms` and records the requests as sent with ids from `first_id` on.
    fn send(
        sync: &mut SyncManager<u32>,
        head: &Header,
        now_ms: u64,
        first_id: u32,
    ) -> Vec<(u32, Outgoing)> {
        let out = sync.poll_requests(head, now_ms);
        out.into_iter()
            .zip(first_id..)
            .map(|(outgoing, id)| {
                sync.sent(id, &outgoing);
                (id, outgoing)
            })
            .collect()
    }

    fn header_request(sent: &[(u32, Outgoing)], start: u64) -> Option<(u32, PeerId)> {
        sent.iter()
            .find(|(_, o)| o.tag == Tag::Headers(start))
            .map(|(id, o)| (*id, o.peer))
    }

    #[test]
    fn headers_not_served_in_time_are_asked_of_another_peer_and_the_peer_penalised() {
        let blocks = chain(0, 201);
        let head = &blocks[0].header.header;
        let (mut sync, _, sent) = started(&blocks);
        let (id, silent) = header_request(&sent, 1).expect("headers from block 1 asked for");
        assert_eq!(sent[0].1.deadline_ms, HEADER_REQUEST_TIMEOUT_MS);
        // The other peer serves the next page at once.
        let (next_id, next_peer) = header_request(&sent, 129).unwrap();
        assert_ne!(next_peer, silent, "the least loaded peer");
        let page = SyncResponse::Headers(blocks[129..].iter().map(|b| b.header.clone()).collect());
        assert!(sync.on_response(next_peer, next_id, page, 50).is_empty());

        let before = send(&mut sync, head, HEADER_REQUEST_TIMEOUT_MS - 1, 10);
        assert!(header_request(&before, 1).is_none());
        assert!(sync.penalties().is_empty());

        let after = send(&mut sync, head, HEADER_REQUEST_TIMEOUT_MS, 20);
        assert_eq!(sync.penalties(), vec![(silent, Misbehaviour::Timeout)]);
        let (_, other) = header_request(&after, 1).expect("asked again");
        assert_eq!(other, next_peer);

        // A late answer is ignored, and costs nothing more.
        let late = SyncResponse::Headers(blocks[1..129].iter().map(|b| b.header.clone()).collect());
        assert!(sync.on_response(silent, id, late, 6_000).is_empty());
        let again = send(&mut sync, head, 6_000, 30);
        assert!(
            header_request(&again, 1).is_none(),
            "still asked of the other peer"
        );
        assert!(sync.penalties().is_empty());
    }

    #[test]
    fn a_header_page_behind_others_on_the_same_peer_gets_the_longer_batch_timeout() {
        let blocks = chain(0, 301);
        let head = &blocks[0].header.header;
        let mut sync = SyncManager::<u32>::new();
        let peer = PeerId::random();
        sync.update_peer(peer, 300);
        let sent = send(&mut sync, head, 1_000, 1);
        let deadlines: Vec<(Tag, u64)> = sent.iter().map(|(_, o)| (o.tag, o.deadline_ms)).collect();
        let unmeasured = 1_000 + SyncConfig::default().request_timeout_ms;
        assert_eq!(
            deadlines,
            vec![
                (Tag::Headers(1), 1_000 + HEADER_REQUEST_TIMEOUT_MS),
                (Tag::Headers(129), unmeasured),
                (Tag::Headers(257), unmeasured),
            ],
            "one peer serves them in turn"
        );
    }

    #[test]
    fn a_peer_still_serving_requests_from_before_a_reset_gets_the_longer_header_timeout() {
        let blocks = chain(0, 201);
        let mut sync = SyncManager::<u32>::new();
        let peer = PeerId::random();
        sync.update_peer(peer, 200);
        let head = &blocks[0].header.header;
        send(&mut sync, head, 0, 1);
        assert_eq!(sync.outcome(head, false), SyncOutcome::Started);
        let end = &blocks[200].header.header;
        assert_eq!(sync.outcome(end, false), SyncOutcome::CaughtUp);
        // The peer moves on; a new sync starts while its two old pages are out.
        sync.update_peer(peer, 400);
        let again = send(&mut sync, end, 1_000, 10);
        let (_, next) = again
            .iter()
            .find(|(_, o)| o.tag == Tag::Headers(201))
            .expect("headers from 201 asked for");
        let unmeasured = SyncConfig::default().request_timeout_ms;
        assert_eq!(next.deadline_ms, 1_000 + unmeasured);
    }

    #[test]
    fn a_request_in_flight_when_the_sync_ends_is_still_judged_at_its_deadline() {
        let blocks = chain(0, 201);
        let (mut sync, _, sent) = started(&blocks);
        let (id, silent) = header_request(&sent, 1).unwrap();
        let (answered_id, answered_by) = header_request(&sent, 129).unwrap();

        // The sync ends (our head reached the peers' by other means).
        let end = &blocks[200].header.header;
        assert_eq!(sync.outcome(end, false), SyncOutcome::CaughtUp);
        assert!(sync.owns(id), "still tracked after the reset");

        // An answer after the reset is no longer wanted, and no fault.
        let page = SyncResponse::Headers(blocks[129..].iter().map(|b| b.header.clone()).collect());
        assert!(
            sync.on_response(answered_by, answered_id, page, 100)
                .is_empty()
        );

        assert!(send(&mut sync, end, HEADER_REQUEST_TIMEOUT_MS - 1, 10).is_empty());
        assert!(sync.penalties().is_empty());
        assert!(send(&mut sync, end, HEADER_REQUEST_TIMEOUT_MS, 20).is_empty());
        assert_eq!(sync.penalties(), vec![(silent, Misbehaviour::Timeout)]);
        assert_eq!(sync.on_failure(silent, id, true), None, "judged already");
        assert!(!sync.owns(id));
        // Judged once only.
        assert!(send(&mut sync, end, 60_000, 30).is_empty());
        assert!(sync.penalties().is_empty());
    }

    #[test]
    fn a_hedged_batch_whose_twin_answered_first_costs_its_peer_nothing_later() {
        let blocks = chain(0, 65);
        let head = &blocks[0].header.header;
        let (mut sync, _, sent) = started(&blocks);
        let (id, by) = header_request(&sent, 1).unwrap();
        let page = SyncResponse::Headers(blocks[1..].iter().map(|b| b.header.clone()).collect());
        assert!(sync.on_response(by, id, page, 10).is_empty());
        // Two unmeasured peers, a batch each; the second answers at once.
        let batches = send(&mut sync, head, 10, 10);
        assert_eq!(batches.len(), 2);
        let answer = |o: &Outgoing| {
            let SyncRequest::BlocksByRange { start, count } = o.request else {
                panic!("{:?}", o.request)
            };
            SyncResponse::Blocks(blocks[start as usize..(start + count) as usize].to_vec())
        };
        let (slow_id, slow) = &batches[0];
        let (fast_id, fast) = &batches[1];
        assert!(
            sync.on_response(fast.peer, *fast_id, answer(fast), 60)
                .is_empty()
        );
        // The slow one is hedged to the fast peer, which answers it (and
        // the batches that follow) first.
        let later = send(&mut sync, head, 1_010, 20);
        assert!(
            later.iter().any(|(_, o)| o.request == slow.request),
            "a hedge of the slow batch: {later:?}"
        );
        for (id, o) in &later {
            assert_eq!(o.peer, fast.peer);
            assert!(sync.on_response(o.peer, *id, answer(o), 1_050).is_empty());
        }
        // The sync ends; the written-off original never answers.
        let end = &blocks[64].header.header;
        assert_eq!(sync.outcome(end, false), SyncOutcome::CaughtUp);
        send(&mut sync, end, slow.deadline_ms + 1, 30);
        let due = sync.penalties();
        assert!(due.is_empty(), "the slow peer is not penalised: {due:?}");
        assert_eq!(sync.on_failure(slow.peer, *slow_id, true), None);
    }

    #[test]
    fn a_request_that_is_not_ours_is_penalised_for_a_network_timeout_only() {
        let mut sync = SyncManager::<u32>::new();
        let peer = PeerId::random();
        assert_eq!(sync.on_failure(peer, 7, false), None);
        assert_eq!(sync.on_failure(peer, 7, true), Some(Misbehaviour::Timeout));
    }
}
