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

/// The range-sync driver of a node.
#[derive(Debug)]
pub struct SyncManager {
    config: SyncConfig,
    protocol: SyncProtocol<PeerId>,
    peers: HashMap<PeerId, u64>,
    /// Our requests in flight: to whom, what for, when sent.
    requests: HashMap<OutboundRequestId, (PeerId, Tag, u64)>,
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

impl SyncManager {
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
    pub fn owns(&self, id: OutboundRequestId) -> bool {
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
        let lost: Vec<OutboundRequestId> = self
            .requests
            .iter()
            .filter(|(_, (p, _, _))| p == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some((_, Tag::Headers(start), _)) = self.requests.remove(&id) {
                self.header_requests.remove(&start);
            }
        }
    }

    /// Who to ask for headers from `next` on: among the peers whose chain
    /// reaches it, the one that failed to serve headers least often, then the
    /// least loaded (header and body requests in flight: a peer serves its
    /// requests one after another), then the one with the longest chain.
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
                let load = headers + self.protocol.peer_in_flight(peer);
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
        for (peer, id) in self.protocol.check_timeouts(now_ms) {
            tracing::debug!(%peer, ?id, "sync batch timed out");
        }
        self.request_headers(head, &mut out);
        while let Some((peer, batch)) = self.protocol.next_request(now_ms) {
            out.push(Outgoing {
                peer,
                request: SyncRequest::BlocksByRange {
                    start: batch.start,
                    count: u64::from(batch.count()),
                },
                tag: Tag::Batch(batch.id),
            });
        }
        out
    }

    /// Asks for the next header ranges not yet asked for or received, up to
    /// [`MAX_HEADER_REQUESTS`] at once and within the queue's room.
    fn request_headers(&mut self, head: &Header, out: &mut Vec<Outgoing>) {
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
            });
            self.header_requests.insert(next, (peer, count));
            room -= count;
            next += count;
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
    pub fn sent(&mut self, id: OutboundRequestId, outgoing: &Outgoing) {
        self.requests
            .insert(id, (outgoing.peer, outgoing.tag, self.latest_ms));
    }

    /// An answer to one of our requests; returns the penalties to apply.
    pub fn on_response(
        &mut self,
        peer: PeerId,
        id: OutboundRequestId,
        response: SyncResponse,
        now_ms: u64,
    ) -> Vec<(PeerId, Misbehaviour)> {
        let Some((_, tag, sent_ms)) = self.requests.remove(&id) else {
            return vec![];
        };
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

    /// One of our requests failed on the network; returns a penalty for a
    /// header request that ran out of time (body batches have the
    /// scheduler's own, adaptive deadlines, penalised through [`Self::penalties`]).
    pub fn on_failure(
        &mut self,
        peer: PeerId,
        id: OutboundRequestId,
        timed_out: bool,
    ) -> Option<Misbehaviour> {
        match self.requests.remove(&id) {
            Some((_, Tag::Headers(start), _)) => {
                self.header_requests.remove(&start);
                self.header_failed(peer);
                timed_out.then_some(Misbehaviour::Timeout)
            }
            Some((_, Tag::Batch(batch), _)) => {
                let _ = self.protocol.handle_failure(&peer, batch);
                None
            }
            // A request from before a reset (or the engine's by-hash
            // request): nobody else judges it, so a timeout counts here.
            None => timed_out.then_some(Misbehaviour::Timeout),
        }
    }

    /// Scheduler penalties as peer-score penalties.
    pub fn penalties(&mut self) -> Vec<(PeerId, Misbehaviour)> {
        let mut out = Vec::new();
        while let Some(event) = self.protocol.poll_event() {
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
        self.requests.clear();
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

impl Default for SyncManager {
    fn default() -> Self {
        Self::new()
    }
}
