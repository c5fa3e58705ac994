//! The light client's state machine: [`LightClient`].
//!
//! Inputs are `handle_*` calls (a page of updates, a certified head, raw
//! bytes, a clock tick), outputs are [`Event`]s from [`LightClient::poll_event`].
//! No I/O, no clock, no randomness of its own.

use super::persist::TrustedState;
use super::rules::Violation;
use super::update::{EpochUpdate, SetDiff};
use super::upstream::{self, Problem, UpstreamError, UpstreamId, UpstreamStatus, Upstreams};
use crate::chain_spec::ChainSpec;
use crate::evidence::{DoubleProposal, Evidence};
use crate::header::{CertifiedHeader, Header};
use crate::qc::{QuorumCert, SignatureBatch};
use crate::validator::ValidatorSet;
use crate::verify::{HeaderError, check_header, check_link};
use alloy_primitives::B256;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// Limits and timeouts, with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Most upstreams in the score table (default 8).
    pub max_upstreams: usize,
    /// Most updates accepted in one page (default 256).
    pub max_updates_per_page: usize,
    /// Largest encoded page of updates accepted (default 16 MiB).
    pub max_page_bytes: usize,
    /// Most heads kept while waiting for the set of their epoch (default 32).
    pub max_pending_heads: usize,
    /// Most verified recent headers kept for fork choice, finality and
    /// equivocation checks (default 256).
    pub max_recent_heads: usize,
    /// Most events queued before the oldest are dropped (default 4096).
    pub max_events: usize,
    /// An upstream that sent nothing for this long is silent (default 30 s).
    pub silence_timeout_ms: u64,
    /// An upstream whose best head is more slots behind than this is lagging (default 8).
    pub lag_slots: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_upstreams: 8,
            max_updates_per_page: 256,
            max_page_bytes: 16 << 20,
            max_pending_heads: 32,
            max_recent_heads: 256,
            max_events: 4096,
            silence_timeout_ms: 30_000,
            lag_slots: 8,
        }
    }
}

/// Number, hash, slot and epoch of a header, as events report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
    /// Slot.
    pub slot: u64,
    /// Epoch.
    pub epoch: u64,
}

impl BlockRef {
    fn of(header: &Header) -> Self {
        Self {
            number: header.number,
            hash: header.hash(),
            slot: header.slot,
            epoch: header.epoch,
        }
    }
}

/// Two certified headers at the same slot with different hashes: more than a
/// third of the stake voted twice. Kept until [`LightClient::resolve_equivocation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EquivocationEvidence {
    /// The header the client had.
    pub first: CertifiedHeader,
    /// Who served it.
    pub first_upstream: UpstreamId,
    /// The conflicting header.
    pub second: CertifiedHeader,
    /// Who served it.
    pub second_upstream: UpstreamId,
}

impl EquivocationEvidence {
    /// The slashable evidence a full node accepts: a double proposal, when
    /// both headers name the same proposer in the same epoch (as two headers
    /// of one slot and epoch always do).
    pub fn to_evidence(&self) -> Option<Evidence> {
        let (a, b) = (&self.first.header, &self.second.header);
        (a.proposer_index == b.proposer_index && a.epoch == b.epoch && a.slot == b.slot).then(
            || {
                Evidence::DoubleProposal(Box::new(DoubleProposal {
                    first: a.clone(),
                    second: b.clone(),
                }))
            },
        )
    }
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new highest certified head.
    Head {
        /// The head.
        block: BlockRef,
        /// Who served it first.
        upstream: UpstreamId,
    },
    /// A block became final (two-chain rule), with its ancestors.
    Finalized {
        /// The block.
        block: BlockRef,
    },
    /// The new head does not extend the old one: these blocks left the head chain.
    Reorg {
        /// Hashes dropped, newest first.
        dropped: Vec<B256>,
        /// The new head.
        new_head: B256,
    },
    /// The trusted epoch advanced (persist the trusted state now).
    EpochChanged {
        /// The new epoch.
        epoch: u64,
        /// Hash of its set.
        set_hash: B256,
        /// The difference from the previous epoch's set.
        diff: SetDiff,
    },
    /// An upstream sent something that breaks a rule.
    Rejected {
        /// The sender.
        upstream: UpstreamId,
        /// The rule.
        rule: Violation,
    },
    /// Conflicting certified headers: the client stopped following.
    Equivocation {
        /// Both signed headers with their QCs.
        evidence: Box<EquivocationEvidence>,
    },
    /// An upstream is silent, lagging or lying and was demoted.
    UpstreamProblem {
        /// The upstream.
        upstream: UpstreamId,
        /// What is wrong.
        problem: Problem,
    },
    /// Heads of epochs the client has no set for arrived: fetch updates
    /// starting at this epoch. Asked once per answer: after a page of
    /// updates is handled (even an empty one, as when the upstream has not
    /// finalized the hand-over yet), the next such head asks again.
    NeedUpdates {
        /// The epoch of the first update needed.
        from_epoch: u64,
    },
}

/// What became of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadVerdict {
    /// Verified and the new highest head.
    NewHead,
    /// Verified and kept (a fork or an older block).
    Stored,
    /// Already known.
    Known,
    /// At or below the finalized slot, or of an epoch already left: ignored.
    Stale,
    /// Of an epoch whose set is not known yet: kept (bounded) until updates arrive.
    Buffered,
    /// Verified, and conflicts with a certified header of the same slot.
    Equivocation,
}

/// The result of a page of updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatesOutcome {
    /// How many updates of the page were applied (a prefix).
    pub applied: usize,
    /// The first refused update (by position in the page) and why.
    pub rejected: Option<(usize, Violation)>,
}

/// How to leave the halted state after an equivocation.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// Keep following the branch of this header (one of the two), forget
    /// the other and demote whoever served it.
    Keep(B256),
    /// Start again from a new trusted state (a fresh checkpoint).
    Restart(Box<TrustedState>),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The trusted state is for another chain.
    #[error("trusted state is for chain id {state}, the spec for {spec}")]
    WrongChain {
        /// State's chain id.
        state: u64,
        /// Spec's chain id.
        spec: u64,
    },
    /// The trusted state is inconsistent.
    #[error("trusted state is inconsistent: {0}")]
    InvalidState(String),
    /// Upstream table.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// `resolve_equivocation` without an equivocation.
    #[error("there is no equivocation to resolve")]
    NotHalted,
    /// `Resolution::Keep` named neither conflicting header.
    #[error("{0} is not one of the two conflicting headers")]
    NotInConflict(B256),
}

#[derive(Debug, Clone)]
struct Tracked {
    certified: CertifiedHeader,
    upstream: UpstreamId,
}

impl Tracked {
    fn header(&self) -> &Header {
        &self.certified.header.header
    }
}

/// Most recently rejected hashes remembered (after an equivocation is resolved).
const MAX_BANNED: usize = 64;

/// The sans-IO light client. See the [module docs](super) for the protocol.
#[derive(Debug)]
pub struct LightClient {
    spec: ChainSpec,
    config: Config,
    state: TrustedState,
    head: Option<B256>,
    recent: HashMap<B256, Tracked>,
    by_slot: BTreeMap<u64, B256>,
    pending: VecDeque<(UpstreamId, CertifiedHeader)>,
    banned: VecDeque<B256>,
    upstreams: Upstreams,
    halted: Option<Box<EquivocationEvidence>>,
    events: VecDeque<Event>,
    dropped_events: u64,
    requested_updates: Option<u64>,
    now_ms: u64,
}

impl LightClient {
    /// A client that trusts `state` (from a checkpoint or a persisted file).
    pub fn new(spec: ChainSpec, state: TrustedState, config: Config) -> Result<Self, ClientError> {
        if state.chain_id != spec.chain_id {
            return Err(ClientError::WrongChain {
                state: state.chain_id,
                spec: spec.chain_id,
            });
        }
        state.validate().map_err(ClientError::InvalidState)?;
        let upstreams = Upstreams::new(config.max_upstreams);
        Ok(Self {
            spec,
            config,
            state,
            head: None,
            recent: HashMap::new(),
            by_slot: BTreeMap::new(),
            pending: VecDeque::new(),
            banned: VecDeque::new(),
            upstreams,
            halted: None,
            events: VecDeque::new(),
            dropped_events: 0,
            requested_updates: None,
            now_ms: 0,
        })
    }

    // ---- getters ----

    /// What the client trusts now (persist [`TrustedState::encode`] on `EpochChanged`).
    pub fn trusted_state(&self) -> &TrustedState {
        &self.state
    }

    /// The chain spec.
    pub fn spec(&self) -> &ChainSpec {
        &self.spec
    }

    /// The highest verified certified head.
    pub fn head(&self) -> Option<&CertifiedHeader> {
        self.head
            .and_then(|h| self.recent.get(&h))
            .map(|t| &t.certified)
    }

    /// The latest finalized header.
    pub fn finalized(&self) -> Option<&Header> {
        self.state.finalized.as_ref()
    }

    /// A recent verified header by hash (for the proxy's checks).
    pub fn verified_header(&self, hash: &B256) -> Option<&CertifiedHeader> {
        self.recent.get(hash).map(|t| &t.certified)
    }

    /// The epoch of the next hand-over update to fetch.
    pub fn next_update_epoch(&self) -> u64 {
        self.state.next_update_epoch()
    }

    /// The pending equivocation, if the client is halted.
    pub fn equivocation(&self) -> Option<&EquivocationEvidence> {
        self.halted.as_deref()
    }

    /// The upstream score table.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// One upstream's row.
    pub fn upstream(&self, id: UpstreamId) -> Option<&UpstreamStatus> {
        self.upstreams.get(id)
    }

    /// Heads waiting for the set of their epoch.
    pub fn pending_heads(&self) -> usize {
        self.pending.len()
    }

    /// Verified headers kept in memory.
    pub fn recent_heads(&self) -> usize {
        self.recent.len()
    }

    /// Events dropped because the queue was full (poll more often).
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    // ---- commands ----

    /// Registers an upstream.
    pub fn add_upstream(&mut self, id: UpstreamId) -> Result<(), ClientError> {
        Ok(self.upstreams.add(id, self.now_ms)?)
    }

    /// Forgets an upstream.
    pub fn remove_upstream(&mut self, id: UpstreamId) {
        self.upstreams.remove(id);
    }

    /// Leaves the halted state (see [`Resolution`]).
    pub fn resolve_equivocation(&mut self, resolution: Resolution) -> Result<(), ClientError> {
        let evidence = self.halted.as_ref().ok_or(ClientError::NotHalted)?;
        match resolution {
            Resolution::Keep(keep) => {
                let (first, second) = (evidence.first.header.hash(), evidence.second.header.hash());
                let (drop, liar) = if keep == first {
                    (second, evidence.second_upstream)
                } else if keep == second {
                    (first, evidence.first_upstream)
                } else {
                    return Err(ClientError::NotInConflict(keep));
                };
                let kept = if keep == first {
                    (evidence.first.clone(), evidence.first_upstream)
                } else {
                    (evidence.second.clone(), evidence.second_upstream)
                };
                self.upstreams.adjust(liar, upstream::LIE);
                self.push(Event::UpstreamProblem {
                    upstream: liar,
                    problem: Problem::Conflicting,
                });
                self.forget(&drop);
                if self.banned.len() >= MAX_BANNED {
                    self.banned.pop_front();
                }
                self.banned.push_back(drop);
                self.halted = None;
                if !self.recent.contains_key(&keep) {
                    self.by_slot.remove(&kept.0.header.slot);
                    let _ = self.process_head(kept.1, kept.0);
                }
            }
            Resolution::Restart(state) => {
                if state.chain_id != self.spec.chain_id {
                    return Err(ClientError::WrongChain {
                        state: state.chain_id,
                        spec: self.spec.chain_id,
                    });
                }
                state.validate().map_err(ClientError::InvalidState)?;
                self.state = *state;
                self.head = None;
                self.recent.clear();
                self.by_slot.clear();
                self.pending.clear();
                self.requested_updates = None;
                self.halted = None;
            }
        }
        Ok(())
    }

    // ---- inputs ----

    /// Advances the client's clock; flags silent and lagging upstreams.
    pub fn handle_tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let head_slot = self.head().map_or(0, |h| h.header.slot);
        let problems = self.upstreams.check(
            self.now_ms,
            self.config.silence_timeout_ms,
            head_slot,
            self.config.lag_slots,
        );
        for (upstream, problem) in problems {
            self.push(Event::UpstreamProblem { upstream, problem });
        }
    }

    /// Decodes a page of updates (an RLP list of at most `max_page_bytes`)
    /// and handles it.
    pub fn handle_update_bytes(
        &mut self,
        upstream: UpstreamId,
        bytes: &[u8],
        rng_seed: [u8; 32],
    ) -> Result<UpdatesOutcome, ClientError> {
        let max = self.config.max_page_bytes;
        match crate::codec::decode_exact::<Vec<EpochUpdate>>("update page", bytes, max) {
            Ok(updates) => self.handle_updates(upstream, updates, rng_seed),
            Err(e) => {
                self.upstreams.seen(upstream, self.now_ms)?;
                self.requested_updates = None;
                let rule = Violation::from_decode(e);
                self.reject(upstream, rule.clone());
                Ok(UpdatesOutcome {
                    applied: 0,
                    rejected: Some((0, rule)),
                })
            }
        }
    }

    /// Verifies a page of hand-over updates (all QCs in one signature batch,
    /// one per epoch) and applies them in order. On a bad update the good
    /// prefix stays applied, the rule is reported, and the trusted state is
    /// the prefix's. `rng_seed` must be fresh and secret from the upstream.
    pub fn handle_updates(
        &mut self,
        upstream: UpstreamId,
        updates: Vec<EpochUpdate>,
        rng_seed: [u8; 32],
    ) -> Result<UpdatesOutcome, ClientError> {
        self.upstreams.seen(upstream, self.now_ms)?;
        // The request is answered: a head still waiting asks again.
        self.requested_updates = None;
        let fail = |this: &mut Self, index, rule: Violation| {
            this.reject(upstream, rule.clone());
            Ok(UpdatesOutcome {
                applied: 0,
                rejected: Some((index, rule)),
            })
        };
        if self.halted.is_some() {
            return fail(self, 0, Violation::Halted);
        }
        if updates.len() > self.config.max_updates_per_page {
            let rule = Violation::PageTooLarge {
                len: updates.len(),
                max: self.config.max_updates_per_page,
            };
            return fail(self, 0, rule);
        }
        // 1. Every check but the pairings, on a simulated state.
        let mut simulated = self.state.clone();
        let mut batch = SignatureBatch::default();
        let mut steps = Vec::with_capacity(updates.len());
        let mut rejected = None;
        for (index, update) in updates.iter().enumerate() {
            match self.check_update(&simulated, update, &mut batch) {
                Ok(step) => {
                    apply_step(&mut simulated, &step);
                    steps.push(step);
                }
                Err(rule) => {
                    rejected = Some((index, rule));
                    break;
                }
            }
        }
        // 2. One batch for the QCs of the prefix that passed.
        if !batch.verify(rng_seed) {
            let index = batch
                .first_invalid()
                .expect("a failing batch has a failing member");
            steps.truncate(index);
            rejected = Some((
                index,
                Violation::Header(HeaderError::BadQc(crate::qc::QcError::BadSignature)),
            ));
        }
        // 3. Apply the verified prefix.
        let applied = steps.len();
        for step in steps {
            let before = self.state.epoch;
            let old_set = self.state.set.clone();
            apply_step(&mut self.state, &step);
            self.upstreams.adjust(upstream, upstream::USEFUL);
            if self.state.epoch != before {
                self.epoch_changed(&old_set);
            }
        }
        if let Some((_, rule)) = &rejected {
            self.reject(upstream, rule.clone());
        }
        self.retry_pending();
        Ok(UpdatesOutcome { applied, rejected })
    }

    /// Decodes a certified header (size-capped) and handles it.
    pub fn handle_head_bytes(
        &mut self,
        upstream: UpstreamId,
        bytes: &[u8],
    ) -> Result<Result<HeadVerdict, Violation>, ClientError> {
        match CertifiedHeader::decode(bytes) {
            Ok(head) => self.handle_head(upstream, head),
            Err(e) => {
                self.upstreams.seen(upstream, self.now_ms)?;
                self.requested_updates = None;
                let rule = Violation::from_decode(e);
                self.reject(upstream, rule.clone());
                Ok(Err(rule))
            }
        }
    }

    /// Verifies a certified head against its epoch's set and updates the
    /// head, finality and equivocation tracking. The inner result is the
    /// verdict, or the rule the head broke (also reported as `Rejected`).
    pub fn handle_head(
        &mut self,
        upstream: UpstreamId,
        head: CertifiedHeader,
    ) -> Result<Result<HeadVerdict, Violation>, ClientError> {
        self.upstreams.seen(upstream, self.now_ms)?;
        if self.halted.is_some() {
            self.reject(upstream, Violation::Halted);
            return Ok(Err(Violation::Halted));
        }
        let result = self.process_head(upstream, head);
        if let Err(rule) = &result {
            self.reject(upstream, rule.clone());
        }
        self.retry_pending();
        Ok(result)
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn push(&mut self, event: Event) {
        if self.events.len() >= self.config.max_events {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(event);
    }

    fn reject(&mut self, upstream: UpstreamId, rule: Violation) {
        if rule.blames_sender() {
            let penalty = match rule {
                Violation::Oversized(_) | Violation::Malformed(_) => upstream::MALFORMED,
                _ => upstream::LIE,
            };
            self.upstreams.adjust(upstream, penalty);
            self.push(Event::UpstreamProblem {
                upstream,
                problem: Problem::Lying { rule: rule.name() },
            });
        }
        self.push(Event::Rejected { upstream, rule });
    }

    fn epoch_changed(&mut self, old_set: &ValidatorSet) {
        let diff = SetDiff::between(old_set, &self.state.set);
        self.push(Event::EpochChanged {
            epoch: self.state.epoch,
            set_hash: self.state.set.hash(),
            diff,
        });
    }

    fn check_update(
        &self,
        state: &TrustedState,
        update: &EpochUpdate,
        batch: &mut SignatureBatch,
    ) -> Result<Step, Violation> {
        let header = &update.header.header;
        let epoch = header.epoch;
        let expected = state.next_update_epoch();
        if epoch < expected {
            return Err(Violation::StaleUpdate {
                update: epoch,
                trusted: expected.saturating_sub(1),
            });
        }
        if epoch > expected {
            return Err(Violation::SkippedEpoch {
                update: epoch,
                expected,
            });
        }
        if header.slot <= state.anchor_slot && !(state.anchor_slot == 0 && header.slot == 0) {
            return Err(Violation::SlotNotIncreasing {
                slot: header.slot,
                anchor: state.anchor_slot,
            });
        }
        let rolls = state.next_set.is_some();
        let set = state
            .set_for(epoch)
            .expect("the expected epoch's set is held");
        check_header(&update.header.header, set, &self.spec).map_err(Violation::Header)?;
        let qc = &update.header.qc;
        if qc.block_hash != header.hash() || qc.slot != header.slot {
            return Err(Violation::Header(HeaderError::QcMismatch {
                qc_hash: qc.block_hash,
                qc_slot: qc.slot,
            }));
        }
        if !rolls
            && let Some(trusted) = state.next_set_hash
            && trusted != header.next_validator_set_hash
        {
            return Err(Violation::NextCommitmentConflict {
                trusted,
                header: header.next_validator_set_hash,
            });
        }
        let next = update
            .next_set
            .resolve(set)
            .map_err(Violation::BadSetDiff)?;
        if next.hash() != header.next_validator_set_hash {
            return Err(Violation::NextSetMismatch {
                committed: header.next_validator_set_hash,
                got: next.hash(),
            });
        }
        batch
            .push_qc(qc, set, self.spec.chain_id)
            .map_err(|e| Violation::Header(HeaderError::BadQc(e)))?;
        Ok(Step {
            epoch,
            slot: header.slot,
            next_hash: header.next_validator_set_hash,
            next_set: next,
        })
    }

    /// Re-handles buffered heads after the trusted state moved.
    fn retry_pending(&mut self) {
        let mut rounds = self.pending.len();
        while rounds > 0 {
            rounds -= 1;
            let Some((upstream, head)) = self.pending.pop_front() else {
                break;
            };
            if self.state.set_for(head.header.epoch).is_none()
                && head.header.epoch > self.state.epoch
            {
                self.pending.push_back((upstream, head));
                continue;
            }
            if self.halted.is_some() {
                break;
            }
            if let Err(rule) = self.process_head(upstream, head) {
                self.reject(upstream, rule);
            }
        }
    }

    fn process_head(
        &mut self,
        upstream: UpstreamId,
        certified: CertifiedHeader,
    ) -> Result<HeadVerdict, Violation> {
        let header = certified.header.header.clone();
        let hash = header.hash();
        if self.banned.contains(&hash) {
            return Ok(HeadVerdict::Stale);
        }
        if self.recent.contains_key(&hash) {
            self.upstreams.head_at(upstream, header.slot);
            return Ok(HeadVerdict::Known);
        }
        let Some(set) = self.state.set_for(header.epoch) else {
            if header.epoch < self.state.epoch {
                return Ok(HeadVerdict::Stale);
            }
            if self.pending.len() >= self.config.max_pending_heads {
                self.pending.pop_front();
            }
            self.pending.push_back((upstream, certified));
            let from_epoch = self.state.next_update_epoch();
            if self.requested_updates != Some(from_epoch) {
                self.requested_updates = Some(from_epoch);
                self.push(Event::NeedUpdates { from_epoch });
            }
            return Ok(HeadVerdict::Buffered);
        };
        certified
            .verify(set, &self.spec)
            .map_err(Violation::Header)?;
        // The header's own link: with its parent when known, else its parent QC.
        match self.recent.get(&header.parent_hash) {
            Some(parent) => {
                if let Some(parent_set) = self.state.set_for(parent.header().epoch) {
                    check_link(&header, parent.header(), parent_set).map_err(Violation::Header)?;
                }
            }
            None => {
                let genesis_child = header.number == 1 && header.parent_qc == QuorumCert::genesis();
                if !genesis_child
                    && (header.parent_qc.block_hash != header.parent_hash
                        || header.parent_qc.slot >= header.slot)
                {
                    return Err(Violation::Header(HeaderError::ParentQcMismatch {
                        qc_hash: header.parent_qc.block_hash,
                        qc_slot: header.parent_qc.slot,
                    }));
                }
            }
        }
        if header.epoch == self.state.epoch
            && let Some(trusted) = self.state.next_set_hash
            && trusted != header.next_validator_set_hash
        {
            return Err(Violation::NextCommitmentConflict {
                trusted,
                header: header.next_validator_set_hash,
            });
        }
        // Equivocation: another certified header at this slot.
        if let Some(other) = self.by_slot.get(&header.slot).copied()
            && other != hash
        {
            let first = self
                .recent
                .get(&other)
                .expect("by_slot entries are in recent");
            let evidence = Box::new(EquivocationEvidence {
                first: first.certified.clone(),
                first_upstream: first.upstream,
                second: certified,
                second_upstream: upstream,
            });
            self.halted = Some(evidence.clone());
            self.push(Event::Equivocation { evidence });
            return Ok(HeadVerdict::Equivocation);
        }
        if let Some(finalized) = &self.state.finalized {
            if header.slot <= finalized.slot {
                return Ok(HeadVerdict::Stale);
            }
            let finalized_hash = finalized.hash();
            if self.descends_from(&header, finalized_hash, finalized.slot) == Some(false) {
                return Err(Violation::ConflictsWithFinalized {
                    hash,
                    finalized: finalized_hash,
                });
            }
        }
        // Accepted.
        if header.epoch == self.state.epoch && self.state.next_set_hash.is_none() {
            self.state.next_set_hash = Some(header.next_validator_set_hash);
        }
        self.upstreams.head_at(upstream, header.slot);
        self.upstreams.adjust(upstream, upstream::USEFUL);
        self.recent.insert(
            hash,
            Tracked {
                certified,
                upstream,
            },
        );
        self.by_slot.insert(header.slot, hash);
        let old_head = self
            .head
            .and_then(|h| self.recent.get(&h))
            .map(|t| t.header().clone());
        let verdict = match old_head {
            Some(old) if old.slot >= header.slot => HeadVerdict::Stored,
            old => {
                if let Some(old) = old {
                    let dropped = self.dropped_by(&old, &header);
                    if !dropped.is_empty() {
                        self.push(Event::Reorg {
                            dropped,
                            new_head: hash,
                        });
                    }
                }
                self.head = Some(hash);
                self.push(Event::Head {
                    block: BlockRef::of(&header),
                    upstream,
                });
                HeadVerdict::NewHead
            }
        };
        // Two-chain finality: this block's parent, or this block itself if its child is known.
        if let Some(parent) = self
            .recent
            .get(&header.parent_hash)
            .map(|t| t.header().clone())
            && is_two_chain(&parent, &header)
        {
            self.finalize(parent);
        }
        if let Some(child) = self
            .by_slot
            .get(&(header.slot + 1))
            .and_then(|h| self.recent.get(h))
            .map(|t| t.header().clone())
            && is_two_chain(&header, &child)
        {
            self.finalize(header);
        }
        self.evict();
        Ok(verdict)
    }

    /// Whether `header` descends from the finalized block, as far as the
    /// recent headers tell (None: a gap).
    fn descends_from(&self, header: &Header, finalized: B256, finalized_slot: u64) -> Option<bool> {
        let mut current = header;
        for _ in 0..=self.recent.len() {
            if current.parent_hash == finalized {
                return Some(true);
            }
            let parent = self.recent.get(&current.parent_hash)?.header();
            if parent.slot <= finalized_slot {
                return Some(false);
            }
            current = parent;
        }
        None
    }

    /// The blocks of the old head's chain that the new head does not contain, newest first.
    fn dropped_by(&self, old: &Header, new: &Header) -> Vec<B256> {
        let mut ancestors = HashSet::new();
        let mut gap_slot = None;
        let mut current = new.clone();
        for _ in 0..=self.recent.len() {
            match self.recent.get(&current.parent_hash) {
                Some(parent) => {
                    ancestors.insert(current.parent_hash);
                    current = parent.header().clone();
                }
                None => {
                    gap_slot = Some(current.parent_qc.slot);
                    break;
                }
            }
        }
        let mut dropped = Vec::new();
        let mut current = Some(old.clone());
        while let Some(block) = current {
            let hash = block.hash();
            if ancestors.contains(&hash) || gap_slot.is_some_and(|gap| block.slot <= gap) {
                break;
            }
            dropped.push(hash);
            current = self
                .recent
                .get(&block.parent_hash)
                .map(|t| t.header().clone());
            if dropped.len() > self.recent.len() {
                break;
            }
        }
        dropped
    }

    fn finalize(&mut self, block: Header) {
        if self
            .state
            .finalized
            .as_ref()
            .is_some_and(|f| f.slot >= block.slot)
        {
            return;
        }
        let rolls = Some(block.epoch) == self.state.epoch.checked_add(1);
        self.push(Event::Finalized {
            block: BlockRef::of(&block),
        });
        if rolls && let Some(next) = self.state.next_set.take() {
            let old_set = std::mem::replace(&mut self.state.set, next);
            self.state.epoch = block.epoch;
            self.state.next_set_hash = Some(block.next_validator_set_hash);
            self.state.anchor_slot = self.state.anchor_slot.max(block.slot);
            self.state.finalized = Some(block);
            self.epoch_changed(&old_set);
        } else {
            self.state.finalized = Some(block);
        }
    }

    fn forget(&mut self, hash: &B256) {
        if let Some(t) = self.recent.remove(hash) {
            if self.by_slot.get(&t.header().slot) == Some(hash) {
                self.by_slot.remove(&t.header().slot);
            }
            if self.head == Some(*hash) {
                self.head = None;
            }
        }
    }

    /// Keeps at most `max_recent_heads` headers, dropping the lowest slots
    /// (never the head).
    fn evict(&mut self) {
        while self.recent.len() > self.config.max_recent_heads {
            let lowest = self
                .by_slot
                .values()
                .copied()
                .find(|h| Some(*h) != self.head);
            match lowest {
                Some(hash) => self.forget(&hash),
                None => break,
            }
        }
    }
}

/// A verified update, ready to apply.
#[derive(Debug, Clone)]
struct Step {
    epoch: u64,
    slot: u64,
    next_hash: B256,
    next_set: ValidatorSet,
}

fn apply_step(state: &mut TrustedState, step: &Step) {
    if step.epoch != state.epoch {
        let next = state
            .next_set
            .take()
            .expect("a rolling update was checked against the held next set");
        state.set = next;
        state.epoch = step.epoch;
    }
    state.next_set_hash = Some(step.next_hash);
    state.next_set = Some(step.next_set.clone());
    state.anchor_slot = step.slot;
}

/// `parent` is final when `child` (certified) extends it in the very next
/// slot of the same epoch.
fn is_two_chain(parent: &Header, child: &Header) -> bool {
    child.parent_hash == parent.hash()
        && child.slot == parent.slot.saturating_add(1)
        && child.epoch == parent.epoch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain_spec::devnet_validator_key;
    use crate::qc::{QcBuilder, Vote};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    const UP: UpstreamId = UpstreamId(1);

    /// 4 equal devnet validators, one certified header per slot 1..=23 (3 epochs, same set).
    fn chain() -> &'static (ChainSpec, Vec<CertifiedHeader>) {
        static CHAIN: OnceLock<(ChainSpec, Vec<CertifiedHeader>)> = OnceLock::new();
        CHAIN.get_or_init(|| {
            let spec = ChainSpec::devnet(4);
            let set = spec.genesis_set().unwrap();
            let mut parent = spec.genesis_header();
            let mut parent_qc = QuorumCert::genesis();
            let mut headers = Vec::new();
            for slot in 1..24 {
                let header = Header {
                    parent_hash: parent.hash(),
                    number: parent.number + 1,
                    slot,
                    epoch: spec.nominal_epoch(slot),
                    timestamp: spec.slot_timestamp(slot),
                    proposer_index: set.proposer_index(slot) as u32,
                    parent_qc,
                    ..parent.clone()
                };
                let sealed = header.sign(
                    &devnet_validator_key(set.proposer_index(slot) as u32),
                    spec.chain_id,
                );
                let hash = sealed.hash();
                let mut builder = QcBuilder::new(slot, hash, &set);
                for i in 0..3 {
                    let vote = Vote::sign(&devnet_validator_key(i), spec.chain_id, slot, hash, i);
                    builder.add_verified_vote(&vote, &set).unwrap();
                }
                let qc = builder.certificate(&set).unwrap();
                parent = sealed.header.clone();
                parent_qc = qc.clone();
                headers.push(CertifiedHeader { header: sealed, qc });
            }
            (spec, headers)
        })
    }

    fn client(config: Config) -> LightClient {
        let (spec, _) = chain();
        let state = TrustedState::from_header(
            spec.chain_id,
            spec.genesis_header(),
            spec.genesis_set().unwrap(),
        );
        let mut client = LightClient::new(spec.clone(), state, config).unwrap();
        client.add_upstream(UP).unwrap();
        client
    }

    #[test]
    fn heads_in_order_finalize_and_memory_stays_bounded() {
        let (_, headers) = chain();
        let mut c = client(Config {
            max_recent_heads: 4,
            max_pending_heads: 2,
            ..Config::default()
        });
        for h in &headers[..7] {
            assert_eq!(
                c.handle_head(UP, h.clone()).unwrap(),
                Ok(HeadVerdict::NewHead)
            );
            assert!(c.recent_heads() <= 4);
        }
        assert_eq!(c.finalized().unwrap().slot, 6);
        // Epoch 1 and 2 heads wait for updates, at most two of them.
        for h in &headers[7..] {
            let verdict = c.handle_head(UP, h.clone()).unwrap();
            assert_eq!(verdict, Ok(HeadVerdict::Buffered), "slot {}", h.header.slot);
        }
        assert_eq!(c.pending_heads(), 2);
        let needs: Vec<_> = std::iter::from_fn(|| c.poll_event())
            .filter(|e| matches!(e, Event::NeedUpdates { .. }))
            .collect();
        assert_eq!(
            needs,
            vec![Event::NeedUpdates { from_epoch: 0 }],
            "asked once"
        );
        // An empty answer (the upstream has no update yet): the next head
        // that needs one asks again, so the client cannot stall.
        let outcome = c.handle_updates(UP, Vec::new(), [7; 32]).unwrap();
        assert_eq!((outcome.applied, outcome.rejected), (0, None));
        assert_eq!(
            c.poll_event(),
            None,
            "an empty answer asks nothing by itself"
        );
        let last = headers.last().unwrap().clone();
        assert_eq!(c.handle_head(UP, last).unwrap(), Ok(HeadVerdict::Buffered));
        assert_eq!(
            std::iter::from_fn(|| c.poll_event()).collect::<Vec<_>>(),
            vec![Event::NeedUpdates { from_epoch: 0 }],
            "asked again after the empty answer"
        );
    }

    #[test]
    fn unknown_upstreams_and_a_wrong_chain_are_refused() {
        let (spec, headers) = chain();
        let mut c = client(Config::default());
        assert!(matches!(
            c.handle_head(UpstreamId(9), headers[0].clone()),
            Err(ClientError::Upstream(UpstreamError::Unknown(_)))
        ));
        let mut state = c.trusted_state().clone();
        state.chain_id += 1;
        assert!(matches!(
            LightClient::new(spec.clone(), state, Config::default()),
            Err(ClientError::WrongChain { .. })
        ));
        assert_eq!(
            c.resolve_equivocation(Resolution::Keep(B256::ZERO)),
            Err(ClientError::NotHalted)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Heads of one honest chain in any order, with repeats: never a
        /// rejection or alarm, the head and finality only move forward,
        /// memory stays bounded, and the state stays consistent.
        #[test]
        fn any_order_of_honest_heads_is_safe(order in proptest::collection::vec(0usize..7, 1..40)) {
            let (_, headers) = chain();
            let mut c = client(Config { max_recent_heads: 5, ..Config::default() });
            let (mut head_slot, mut final_slot) = (0, 0);
            for i in order {
                let verdict = c.handle_head(UP, headers[i].clone()).unwrap();
                prop_assert!(verdict.is_ok(), "{verdict:?}");
                prop_assert_ne!(verdict, Ok(HeadVerdict::Equivocation));
                let h = c.head().map_or(0, |h| h.header.slot);
                let f = c.finalized().map_or(0, |f| f.slot);
                prop_assert!(h >= head_slot && f >= final_slot);
                prop_assert!(f <= h.max(f));
                (head_slot, final_slot) = (h, f);
                prop_assert!(c.recent_heads() <= 5);
                prop_assert!(c.trusted_state().validate().is_ok());
            }
            while let Some(event) = c.poll_event() {
                let rejected = matches!(event, Event::Rejected { .. });
                prop_assert!(!rejected, "{event:?}");
            }
        }
    }
}
