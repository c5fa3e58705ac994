//! The consensus engine: proposes, votes, aggregates and finalizes, as one
//! sans-IO state machine per validator (the shape of quinn-proto's
//! `Connection`: `handle_*` for inputs, [`Engine::poll_action`] for outputs).
//! The node and the simulator drive the same object.
//!
//! Rules (two-chain HotStuff / Jolteon, see `docs/consensus.md`):
//! - slot `s` starts at `genesis + s · slot_duration`; its proposer (drawn by
//!   stake from the epoch's set) waits `proposal_delay_ms` to collect QCs,
//!   then proposes on the block that its highest QC certifies (fork choice:
//!   the highest certified block), carrying that QC;
//! - a validator votes for block `B` of slot `s` only if `s` is the current
//!   slot, `s` is above every slot it voted in, `B` is valid, and `B`'s parent
//!   QC is at least as high as its own highest QC; the slashing-protection
//!   record is written before the vote leaves;
//! - votes are gossiped; whoever gathers more than 2/3 of the stake has a QC
//!   and gossips it on its own, so the highest QC advances even when the next
//!   proposer is absent;
//! - a certified block whose certified child sits in the very next slot is
//!   final, with its ancestors;
//! - two votes or two proposals by one validator in one slot become evidence,
//!   which the next proposals include. Evidence is gossiped: whoever detects
//!   an offence first broadcasts its proof, and every node that receives a
//!   proof it did not hold checks it (the rules a block's evidence obeys,
//!   [`execution::check_evidence`]), keeps it for its own proposals and
//!   passes it on once. So an equivocator is slashed even when the only
//!   honest witness never proposes while the proof is admissible.

use crate::block_tree::{BlockTree, TreeError, TreeNode};
use crate::execution::{self, Candidates, EpochPosition, EvidenceRejection};
use crate::mempool::{Mempool, MempoolConfig};
use crate::slashing_protection::{SigningRequest, SlashingProtection};
use crate::state::ChainState;
use alloy_primitives::B256;
use luxtensor_light::evidence::{DoubleProposal, DoubleVote};
use luxtensor_light::qc::{SharedVerifiedCache, VerifiedCache, verify_votes_cached};
use luxtensor_light::{
    Block, BlsPublicKey, BlsSecretKey, ChainSpec, Evidence, Header, QcBuilder, QuorumCert,
    SignedHeader, SignedTransaction, ValidatorSet, Vote, bls,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// What one piece of evidence punishes: (epoch, offender's index in that
/// epoch's set, slot). Two proofs of one offence slash once.
type Offence = (u64, u32, u64);

fn offence_of(evidence: &Evidence) -> Offence {
    match evidence {
        Evidence::DoubleVote(e) => (e.epoch, e.first.validator_index, e.first.slot),
        Evidence::DoubleProposal(e) => (e.first.epoch, e.first.proposer_index, e.first.slot),
    }
}

/// Slots between two broadcasts of one pending proof that blocks keep
/// leaving out (see `Engine::resend_missing_evidence`).
pub const EVIDENCE_RESEND_SLOTS: u64 = 2;

/// Slots without a newer QC after which an engine sends its highest QC
/// again, and then every as many slots while no newer one comes (see
/// `Engine::resend_high_qc`).
pub const QC_RESEND_SLOTS: u64 = 2;

/// Most (slot, voter) pairs remembered for double-vote detection while
/// finality stalls (pruned at every finalization).
pub const MAX_VOTES_SEEN: usize = 65_536;

/// Votes waiting for their check, each with the epoch its sender named.
type Waiting = Vec<(u64, Vote)>;

/// Most votes kept unverified at once (waiting to be checked together);
/// past it, each new vote is checked on arrival.
pub const MAX_UNVERIFIED_VOTES: usize = 4096;

/// Timing and bounds of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusConfig {
    /// How long into its slot a proposer waits for QCs before proposing.
    pub proposal_delay_ms: u64,
    /// Out-of-order messages kept while their block is fetched.
    pub max_pending: usize,
    /// Finalized blocks kept to answer peers' requests.
    pub recent_finalized: usize,
}

impl ConsensusConfig {
    /// Defaults for a slot length: propose a quarter into the slot.
    pub fn for_slot(slot_duration_ms: u64) -> Self {
        Self {
            proposal_delay_ms: slot_duration_ms / 4,
            max_pending: 256,
            recent_finalized: 256,
        }
    }
}

/// What validators send each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A proposed block (also the answer to a request).
    Proposal(Box<Block>),
    /// A vote, with the epoch of the block voted for.
    Vote {
        /// Epoch of the block.
        epoch: u64,
        /// The vote.
        vote: Vote,
    },
    /// A QC, gossiped on its own.
    Certificate(QuorumCert),
    /// A request for a block the sender is missing.
    BlockRequest(B256),
    /// Proof of a slashable offence, gossiped so that any proposer can
    /// include it (see [`Engine::handle_evidence`]).
    Evidence(Evidence),
}

/// What became of a proof of an offence given to [`Engine::handle_evidence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceVerdict {
    /// Checked, new here: kept for the next proposals and broadcast.
    New,
    /// The very proof already held (checked when it came): it may be passed on.
    Held,
    /// Not checked, and not to be passed on: another proof of an offence
    /// already held or punished, or the pool of pending proofs is full.
    Unchecked,
}

/// What the engine asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send to every peer.
    Broadcast(Message),
    /// These blocks are final, oldest first: persist them.
    Finalized(Vec<Block>),
    /// Slashable misbehaviour was seen or received, and its proof checked
    /// (it will be included in a block; it is also broadcast as
    /// [`Message::Evidence`]).
    Misbehaviour {
        /// The proof.
        evidence: Evidence,
        /// The key of the validator it accuses.
        offender: BlsPublicKey,
    },
}

/// The finalized block an engine starts from, with what the store keeps of it.
#[derive(Debug, Clone)]
pub struct Root {
    /// The block.
    pub block: Block,
    /// The state after it.
    pub state: ChainState,
    /// The set of its epoch.
    pub epoch_set: ValidatorSet,
    /// Its certificate (`None` only for genesis).
    pub qc: Option<QuorumCert>,
    /// Where it sits in its epoch.
    pub position: EpochPosition,
}

impl Root {
    /// Genesis of `spec`.
    pub fn genesis(spec: &ChainSpec) -> Self {
        let header = spec.genesis_header();
        Self {
            block: Block {
                header: SignedHeader {
                    header,
                    proposer_signature: Default::default(),
                },
                transactions: vec![],
                evidence: vec![],
            },
            state: ChainState::genesis(spec),
            epoch_set: spec.genesis_set().expect("a valid spec has a valid set"),
            qc: None,
            position: EpochPosition::Inside,
        }
    }
}

/// Counters for tests, benchmarks and operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Blocks this engine proposed.
    pub proposed: u64,
    /// Votes this engine signed.
    pub votes: u64,
    /// Blocks refused as invalid.
    pub invalid_blocks: u64,
    /// Signatures the slashing protection refused.
    pub refused_by_protection: u64,
    /// Gossiped proofs of offences this engine did not hold, checked and kept.
    pub evidence_received: u64,
    /// Gossiped proofs refused as faulty (forged or inconsistent).
    pub invalid_evidence: u64,
}

/// One validator's (or observer's) consensus state machine.
pub struct Engine {
    spec: ChainSpec,
    config: ConsensusConfig,
    key: Option<BlsSecretKey>,
    public_key: Option<BlsPublicKey>,
    protection: Box<dyn SlashingProtection>,
    tree: BlockTree,
    /// The highest QC seen (verified); its slot is the locking bound for votes.
    high_qc: QuorumCert,
    pools: BTreeMap<(u64, B256), QcBuilder>,
    /// Votes for blocks of the tree not verified yet, by (slot, block):
    /// checked together (one pairing per block) once they could complete a
    /// QC, when their slot is over, or when too many pile up.
    unverified: BTreeMap<(u64, B256), Waiting>,
    /// Votes in `unverified`.
    unverified_len: usize,
    /// Signatures already verified (this engine's own, or shared).
    verified: SharedVerifiedCache,
    /// First vote seen per (slot, voter key), with the voted block's epoch.
    votes_seen: HashMap<(u64, BlsPublicKey), (u64, Vote)>,
    /// First proposal seen per (slot, proposer key).
    proposals_seen: HashMap<(u64, BlsPublicKey), SignedHeader>,
    /// Valid blocks accepted per (slot, proposer index): at most two (enough
    /// to follow either side of an equivocation and to prove it), plus any
    /// block a valid QC names (see `Engine::named_by_valid_qc`).
    blocks_per_proposer: HashMap<(u64, u32), u8>,
    /// Pending evidence (detected here or received and checked), with the
    /// slot it was last broadcast in: at most one proof per offence and at
    /// most `config.max_pending` in all; it leaves when a finalized block
    /// punishes its offence or it gets too old.
    evidence: Vec<(Evidence, u64)>,
    /// Offences (epoch, offender index, slot) punished by finalized blocks:
    /// evidence of them is not proposed again.
    punished: HashSet<Offence>,
    /// Blocks waiting for their parent, by (number, hash).
    orphans: BTreeMap<(u64, B256), Block>,
    /// Votes and QCs for blocks not seen yet.
    early_votes: VecDeque<(u64, Vote)>,
    early_qcs: VecDeque<QuorumCert>,
    mempool: Mempool,
    /// Recently finalized blocks with their hashes (requests name a hash).
    recent_finalized: VecDeque<(B256, Block)>,
    actions: VecDeque<Action>,
    now_ms: u64,
    last_proposed_slot: u64,
    /// The slot in which the highest QC was last sent again.
    high_qc_resent_at: u64,
    stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("public_key", &self.public_key)
            .field("root", &self.tree.root().block.header.number)
            .field("high_qc", &self.high_qc.slot)
            .field(
                "head_slot",
                &self.tree.highest_certified().block.header.slot,
            )
            .field("tree", &self.tree.len())
            .field("orphans", &self.orphans.len())
            .field("last_voted", &self.protection.last_voted_slot())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine starting from `root`. With `key` it validates; without, it
    /// only follows. `protection` must hold every signature this key made
    /// before (it survives restarts).
    pub fn new(
        spec: ChainSpec,
        config: ConsensusConfig,
        key: Option<BlsSecretKey>,
        protection: Box<dyn SlashingProtection>,
        root: Root,
    ) -> Self {
        let high_qc = root.qc.clone().unwrap_or_else(QuorumCert::genesis);
        let last_proposed_slot = root.block.header.slot;
        let tree = BlockTree::new(
            spec.clone(),
            root.block,
            root.state,
            root.epoch_set,
            root.qc,
            root.position,
        );
        Self {
            public_key: key.as_ref().map(|k| k.public_key()),
            key,
            protection,
            tree,
            high_qc,
            pools: BTreeMap::new(),
            unverified: BTreeMap::new(),
            unverified_len: 0,
            verified: VerifiedCache::shared(VerifiedCache::DEFAULT_CAPACITY),
            votes_seen: HashMap::new(),
            proposals_seen: HashMap::new(),
            blocks_per_proposer: HashMap::new(),
            evidence: Vec::new(),
            punished: HashSet::new(),
            orphans: BTreeMap::new(),
            early_votes: VecDeque::new(),
            early_qcs: VecDeque::new(),
            mempool: Mempool::new(MempoolConfig::default()),
            recent_finalized: VecDeque::new(),
            actions: VecDeque::new(),
            now_ms: 0,
            last_proposed_slot,
            high_qc_resent_at: 0,
            stats: EngineStats::default(),
            spec,
            config,
        }
    }

    /// Starts over from `root` (after range sync moved the store past the
    /// engine), keeping the key and its slashing-protection record.
    pub fn restart_from(&mut self, root: Root) {
        let verified = self.verified.clone();
        let protection = std::mem::replace(
            &mut self.protection,
            Box::new(crate::slashing_protection::MemorySlashingProtection::default()),
        );
        *self = Engine::new(
            self.spec.clone(),
            self.config.clone(),
            self.key.clone(),
            protection,
            root,
        );
        // Checks that passed stay valid whatever the root.
        self.set_verified_cache(verified);
    }

    /// Evidence reported from outside (a light client that caught an
    /// equivocation, through the RPC). It is checked like gossiped evidence
    /// ([`Self::handle_evidence`]) before the next proposal may include it,
    /// and gossiped if it is new.
    pub fn submit_evidence(&mut self, evidence: Evidence) -> Result<(), EvidenceRejection> {
        self.handle_evidence(evidence).map(|_| ())
    }

    /// Evidence from a peer (or submitted). Unless this engine already holds
    /// a proof of the same offence (offender and slot), it is checked with
    /// the rules evidence in a block obeys, on the state of the block the
    /// next proposal builds on ([`execution::check_evidence`]: signatures
    /// under the set of its epoch, one slot, two different messages, an
    /// admissible epoch, an offence not punished yet). A valid new proof is
    /// kept for the next proposals and broadcast once more. The verdict
    /// says whether the proof may be passed on (see [`EvidenceVerdict`]). An
    /// error that [`EvidenceRejection::is_fault`] means the sender sent a
    /// forged or inconsistent proof; other errors mean it is merely untimely
    /// here (stale, punished already, of an epoch this engine does not know).
    pub fn handle_evidence(
        &mut self,
        evidence: Evidence,
    ) -> Result<EvidenceVerdict, EvidenceRejection> {
        if self.evidence.iter().any(|(held, _)| *held == evidence) {
            return Ok(EvidenceVerdict::Held);
        }
        if self.holds_offence(&offence_of(&evidence))
            || self.evidence.len() >= self.config.max_pending
        {
            return Ok(EvidenceVerdict::Unchecked);
        }
        let head = self.tree.highest_certified();
        let offender = execution::check_evidence(
            &head.state,
            &evidence,
            self.spec.chain_id,
            Some(&self.verified),
        )
        .inspect_err(|e| {
            if e.is_fault() {
                self.stats.invalid_evidence += 1;
            }
        })?;
        if !self.record_evidence(evidence, offender.public_key) {
            return Ok(EvidenceVerdict::Unchecked);
        }
        self.stats.evidence_received += 1;
        Ok(EvidenceVerdict::New)
    }

    /// Whether a proof of `offence` is pending here or was finalized.
    fn holds_offence(&self, offence: &Offence) -> bool {
        self.punished.contains(offence)
            || self.evidence.iter().any(|(e, _)| offence_of(e) == *offence)
    }

    /// Checks signatures through `cache` from now on: votes, QCs and seals
    /// it holds are not paired again. A node keeps its own (the default); the
    /// simulator gives all its nodes one, so each signature is checked once
    /// per run. Only signatures that passed a check are ever added.
    pub fn set_verified_cache(&mut self, cache: SharedVerifiedCache) {
        self.tree.set_verified_cache(cache.clone());
        self.verified = cache;
    }

    /// The finalized block and what a store keeps of it, to restart from.
    pub fn root(&self) -> Root {
        let node = self.tree.root();
        Root {
            block: node.block.clone(),
            state: node.state.clone(),
            epoch_set: node.epoch_set.clone(),
            qc: node.qc.clone(),
            position: node.position,
        }
    }

    /// The latest finalized header.
    pub fn finalized(&self) -> &Header {
        &self.tree.root().block.header
    }

    /// The block fork choice builds on (the highest certified block).
    pub fn head(&self) -> &TreeNode {
        self.tree.highest_certified()
    }

    /// A block of the tree (the finalized root or above it).
    pub fn block(&self, hash: &B256) -> Option<&TreeNode> {
        self.tree.get(hash)
    }

    /// This engine's validator key, if it has one.
    pub fn public_key(&self) -> Option<BlsPublicKey> {
        self.public_key
    }

    /// The highest QC seen.
    pub fn high_qc(&self) -> &QuorumCert {
        &self.high_qc
    }

    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The next action for the driver, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Start of `slot`, in milliseconds since the Unix epoch.
    pub fn slot_start_ms(&self, slot: u64) -> u64 {
        self.spec
            .genesis_timestamp
            .saturating_mul(1000)
            .saturating_add(slot.saturating_mul(self.spec.slot_duration_ms))
    }

    /// The slot at time `now_ms`.
    pub fn slot_at(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.spec.genesis_timestamp.saturating_mul(1000))
            / self.spec.slot_duration_ms
    }

    /// When the driver should next call [`Self::handle_tick`].
    pub fn next_wakeup_ms(&self) -> u64 {
        let slot = self.slot_at(self.now_ms);
        let this_slot = self.slot_start_ms(slot) + self.config.proposal_delay_ms;
        if this_slot > self.now_ms {
            this_slot
        } else {
            self.slot_start_ms(slot + 1) + self.config.proposal_delay_ms
        }
    }

    /// The clock moved to `now_ms`: propose if this validator's slot has
    /// come, and once per slot ask again for blocks still missing.
    pub fn handle_tick(&mut self, now_ms: u64) {
        let previous_slot = self.slot_at(self.now_ms);
        self.now_ms = self.now_ms.max(now_ms);
        let slot = self.slot_at(self.now_ms);
        if slot > previous_slot {
            self.check_all_deferred();
            self.request_missing();
            self.resend_high_qc(slot);
        }
        if slot > self.last_proposed_slot
            && self.now_ms >= self.slot_start_ms(slot) + self.config.proposal_delay_ms
        {
            self.last_proposed_slot = slot;
            if let Some(block) = self.build_proposal(slot, Vec::new()) {
                let request = SigningRequest::Proposal {
                    slot,
                    block_hash: block.hash(),
                };
                if self.protection.check_and_record(request).is_err() {
                    self.stats.refused_by_protection += 1;
                    return;
                }
                self.stats.proposed += 1;
                self.actions
                    .push_back(Action::Broadcast(Message::Proposal(Box::new(
                        block.clone(),
                    ))));
                self.handle_proposal(block);
            }
        }
    }

    /// Sends the highest QC again when no newer one has come for
    /// [`QC_RESEND_SLOTS`] slots (and then every as many slots). A QC that
    /// some nodes missed (lost, or formed behind a partition) otherwise
    /// reaches them only inside a child block, and if its holders are
    /// locked on it while the next proposers build on an older QC, none
    /// comes: the locked nodes refuse every vote and finality stalls for
    /// good (simulator seed 7630).
    fn resend_high_qc(&mut self, slot: u64) {
        let qc_slot = self.high_qc.slot;
        if qc_slot == 0
            || slot < qc_slot + QC_RESEND_SLOTS
            || slot < self.high_qc_resent_at + QC_RESEND_SLOTS
        {
            return;
        }
        self.high_qc_resent_at = slot;
        self.actions
            .push_back(Action::Broadcast(Message::Certificate(
                self.high_qc.clone(),
            )));
    }

    /// Adds a transaction to the pool the proposer draws from.
    pub fn submit_transaction(&mut self, tx: SignedTransaction) -> Result<(), String> {
        let sender = tx.recover_sender().map_err(|e| e.to_string())?;
        let head = &self.tree.highest_certified().state;
        let nonce = head.account(&sender).nonce;
        let base_fee = self.tree.highest_certified().block.header.base_fee_per_gas;
        self.mempool
            .insert(tx, sender, nonce, base_fee)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Builds (but does not sign-protect or send) the block this validator
    /// would propose at `slot` on the highest certified block, with
    /// `extra` transactions first. `None` if it is not this validator's slot
    /// or there is nothing to build on. (The simulator's byzantine
    /// proposers use it to make conflicting blocks.)
    pub fn build_proposal(&self, slot: u64, extra: Vec<SignedTransaction>) -> Option<Block> {
        let key = self.key.as_ref()?;
        let parent = self.tree.highest_certified();
        let parent_header = &parent.block.header;
        if parent_header.slot >= slot {
            return None;
        }
        let parent_qc = match (&parent.qc, parent_header.is_genesis()) {
            (Some(qc), _) => qc.clone(),
            (None, true) => QuorumCert::genesis(),
            (None, false) => return None, // restarted without the root's QC
        };
        let (epoch, set) = parent.child_epoch();
        let proposer = set.proposer_index(slot);
        if Some(set.validators()[proposer].public_key) != self.public_key {
            return None;
        }
        let rotation = parent.state.rotation();
        let (set_hash, next_hash) = if epoch == parent_header.epoch {
            (
                parent_header.validator_set_hash,
                parent_header.next_validator_set_hash,
            )
        } else {
            (rotation.current_set_hash(), rotation.next_set_hash())
        };
        let template = Header {
            parent_hash: parent.hash(),
            number: parent_header.number + 1,
            slot,
            epoch,
            timestamp: self.spec.slot_timestamp(slot),
            proposer_index: proposer as u32,
            validator_set_hash: set_hash,
            next_validator_set_hash: next_hash,
            parent_qc,
            ..parent_header.header.clone()
        };
        let base_fee = execution::next_base_fee(parent_header);
        let mut transactions: Vec<_> = extra
            .into_iter()
            .filter_map(|tx| tx.recover_sender().ok().map(|sender| (tx, sender)))
            .collect();
        for tx in self
            .mempool
            .best_transactions(base_fee, 500, |a| parent.state.account(a).nonce)
        {
            if let Ok(sender) = tx.recover_sender() {
                transactions.push((tx, sender));
            }
        }
        // Offences already punished on this branch would be refused after
        // two pairings each: leave them out.
        let punished = self.offences_on_branch(parent);
        let candidates = Candidates {
            transactions,
            evidence: self
                .evidence
                .iter()
                .map(|(e, _)| e)
                .filter(|e| !punished.contains(&offence_of(e)))
                .cloned()
                .collect(),
        };
        let mut state = parent.state.clone();
        let built = execution::build_block(
            &mut state,
            &self.spec,
            parent_header,
            template,
            &set,
            candidates,
        );
        let block = built.seal(key, self.spec.chain_id);
        // This key is member `proposer` of `set` (checked above), so its
        // seal is valid by construction: importing the block need not pair it.
        let root = bls::proposal_signing_root(self.spec.chain_id, &block.header.hash());
        let entry = VerifiedCache::signature_key(
            &root,
            &set,
            proposer as u32,
            &block.header.proposer_signature,
        );
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(entry);
        Some(block)
    }

    /// A message from a peer.
    pub fn handle_message(&mut self, message: Message) {
        match message {
            Message::Proposal(block) => self.handle_proposal(*block),
            Message::Vote { epoch, vote } => self.handle_vote(epoch, vote),
            Message::Certificate(qc) => self.handle_certificate(qc, false),
            Message::BlockRequest(hash) => self.handle_request(hash),
            Message::Evidence(evidence) => {
                // Refused evidence is dropped; the node's driver calls
                // `handle_evidence` itself to penalise the sender.
                let _ = self.handle_evidence(evidence);
            }
        }
    }

    fn handle_request(&mut self, hash: B256) {
        let block = self.tree.get(&hash).map(|n| n.block.clone()).or_else(|| {
            self.recent_finalized
                .iter()
                .find(|(h, _)| *h == hash)
                .map(|(_, b)| b.clone())
        });
        if let Some(block) = block {
            self.actions
                .push_back(Action::Broadcast(Message::Proposal(Box::new(block))));
        }
    }

    /// A proposed block (from a peer, a request, or this validator).
    pub fn handle_proposal(&mut self, block: Block) {
        let hash = block.hash();
        if self.tree.contains(&hash) {
            return;
        }
        // A block for a future slot cannot be honest yet.
        let slot = block.header.slot;
        if slot > self.slot_at(self.now_ms) + 1 {
            return;
        }
        // A proposer gets two blocks per slot at most (anti-spam), except a
        // block that a valid QC names: the certified chain is never refused,
        // whatever an equivocator sent first.
        let proposer_key = (slot, block.header.proposer_index);
        let capped = self
            .blocks_per_proposer
            .get(&proposer_key)
            .is_some_and(|n| *n >= 2);
        if capped && !self.named_by_valid_qc(hash, &block) {
            return;
        }
        let parent_qc = block.header.parent_qc.clone();
        match self.tree.insert_hashed(hash, block.clone()) {
            Ok(finalized) => {
                let count = self.blocks_per_proposer.entry(proposer_key).or_default();
                *count = count.saturating_add(1);
                self.note_certificate(&parent_qc);
                self.on_finalized(finalized);
                self.detect_double_proposal(hash, &block);
                self.resend_missing_evidence(hash);
                self.maybe_vote(hash, &block);
                self.replay_waiting(hash);
            }
            Err(TreeError::UnknownParent(parent)) => {
                let key = (block.header.number, hash);
                if !self.orphans.contains_key(&key) {
                    if self.orphans.len() >= self.config.max_pending {
                        // Keep the blocks closest to the tree: the newest come again.
                        self.orphans.pop_last();
                    }
                    self.orphans.insert(key, block);
                    self.actions
                        .push_back(Action::Broadcast(Message::BlockRequest(parent)));
                }
            }
            Err(TreeError::Stale(_)) => {}
            Err(TreeError::Full) | Err(TreeError::Invalid(_)) => self.stats.invalid_blocks += 1,
        }
    }

    /// Whether a valid QC names `block` (whose hash is `hash`) though the
    /// block is not in the tree yet: a QC received on its own (waiting in
    /// `early_qcs`) or the parent QC of a buffered child that asked for it.
    /// Asked only for a block the per-proposer cap would refuse, so the
    /// pairing it may cost is spent only then; a QC that fails its check is
    /// dropped with the children carrying it, so a forgery costs one pairing,
    /// once. Honest validators vote once per slot, so at most one block per
    /// slot and set is certified: the cap still bounds what a byzantine
    /// proposer puts in the tree. If the block's parent is missing too, there
    /// is no set to check the QC against yet: a named block then waits among
    /// the (bounded) orphans and is judged again when its parent arrives.
    fn named_by_valid_qc(&mut self, hash: B256, block: &Block) -> bool {
        let slot = block.header.slot;
        let mut candidates: Vec<QuorumCert> = Vec::new();
        let waiting = self.early_qcs.iter();
        let carried = self
            .orphans
            .values()
            .filter(|child| child.header.parent_hash == hash)
            .map(|child| &child.header.parent_qc);
        for qc in waiting.chain(carried) {
            if qc.block_hash == hash && qc.slot == slot && !candidates.contains(qc) {
                candidates.push(qc.clone());
            }
        }
        if candidates.is_empty() {
            return false;
        }
        let Some(parent) = self.tree.get(&block.header.parent_hash) else {
            return true; // it joins the orphans; judged once its parent is in
        };
        let (epoch, set) = parent.child_epoch();
        if epoch != block.header.epoch {
            return false; // the tree would refuse it as invalid anyway
        }
        for qc in candidates {
            if qc
                .verify_cached(&set, self.spec.chain_id, &self.verified)
                .is_ok()
            {
                return true;
            }
            self.early_qcs.retain(|q| *q != qc);
            self.orphans.retain(|_, child| child.header.parent_qc != qc);
        }
        false
    }

    /// Requests the missing parents of buffered blocks (lowest first, a few
    /// per slot): a lost request or answer is retried on the next slot.
    fn request_missing(&mut self) {
        let missing: Vec<B256> = self
            .orphans
            .values()
            .map(|b| b.header.parent_hash)
            .filter(|p| !self.tree.contains(p) && !self.orphans.keys().any(|(_, h)| h == p))
            .take(4)
            .collect();
        for parent in missing {
            self.actions
                .push_back(Action::Broadcast(Message::BlockRequest(parent)));
        }
    }

    /// Processes what waited for `hash`: child blocks, votes, QCs.
    fn replay_waiting(&mut self, hash: B256) {
        let children: Vec<(u64, B256)> = self
            .orphans
            .iter()
            .filter(|(_, b)| b.header.parent_hash == hash)
            .map(|(key, _)| *key)
            .collect();
        for key in children {
            if let Some(child) = self.orphans.remove(&key) {
                self.handle_proposal(child);
            }
        }
        let votes: Vec<_> = self
            .early_votes
            .iter()
            .filter(|(_, v)| v.block_hash == hash)
            .cloned()
            .collect();
        self.early_votes.retain(|(_, v)| v.block_hash != hash);
        for (epoch, vote) in votes {
            self.handle_vote(epoch, vote);
        }
        // Votes that waited unverified for this block may now complete its QC.
        let waiting: Vec<_> = self
            .unverified
            .keys()
            .filter(|(_, h)| *h == hash)
            .copied()
            .collect();
        for key in waiting {
            let set = self.tree.get(&hash).map(|n| n.epoch_set.clone());
            if let Some(set) = set
                && self.could_certify(key, &set)
            {
                self.certify_from_waiting(key, &set);
            }
        }
        let qcs: Vec<_> = self
            .early_qcs
            .iter()
            .filter(|q| q.block_hash == hash)
            .cloned()
            .collect();
        self.early_qcs.retain(|q| q.block_hash != hash);
        for qc in qcs {
            self.handle_certificate(qc, false);
        }
    }

    fn detect_double_proposal(&mut self, hash: B256, block: &Block) {
        let Some(node) = self.tree.get(&hash) else {
            return;
        };
        let proposer = node.epoch_set.validators()[block.header.proposer_index as usize].public_key;
        let key = (block.header.slot, proposer);
        match self.proposals_seen.get(&key) {
            Some(first) if first.hash() != hash => {
                let evidence = Evidence::DoubleProposal(Box::new(DoubleProposal {
                    first: first.clone(),
                    second: block.header.clone(),
                }));
                self.record_evidence(evidence, proposer);
            }
            Some(_) => {}
            None => {
                self.proposals_seen.insert(key, block.header.clone());
            }
        }
    }

    /// Keeps a proof (detected here, or received and checked) unless one of
    /// the same offence is held or the pool is full; a kept proof is
    /// reported and broadcast, once. Returns whether it was kept.
    fn record_evidence(&mut self, evidence: Evidence, offender: BlsPublicKey) -> bool {
        if self.holds_offence(&offence_of(&evidence))
            || self.evidence.len() >= self.config.max_pending
        {
            return false;
        }
        self.actions
            .push_back(Action::Broadcast(Message::Evidence(evidence.clone())));
        self.actions.push_back(Action::Misbehaviour {
            evidence: evidence.clone(),
            offender,
        });
        let slot = self.slot_at(self.now_ms);
        self.evidence.push((evidence, slot));
        true
    }

    /// Offences punished on the branch ending at `tip` (its blocks above the
    /// root) or by finalized blocks.
    fn offences_on_branch(&self, tip: &TreeNode) -> HashSet<Offence> {
        let mut punished = self.punished.clone();
        let root = self.tree.root().hash();
        let mut cursor = Some(tip);
        while let Some(node) = cursor.filter(|n| n.hash() != root) {
            punished.extend(node.block.evidence.iter().map(offence_of));
            cursor = self.tree.get(&node.block.header.parent_hash);
        }
        punished
    }

    /// A fresh block by another proposer arrived without pending evidence
    /// that its branch does not punish yet: its proposer likely never got
    /// the proof (it was sent while a partition or loss cut them off, and
    /// gossip does not resend), so broadcast it again, at most once every
    /// [`EVIDENCE_RESEND_SLOTS`] slots per proof. In a healthy network the
    /// next block includes the proof and this never fires.
    fn resend_missing_evidence(&mut self, hash: B256) {
        if self.evidence.is_empty() {
            return;
        }
        let Some(node) = self.tree.get(&hash) else {
            return;
        };
        let current = self.slot_at(self.now_ms);
        if node.block.header.slot != current || node.block.header.is_genesis() {
            return;
        }
        let proposer = node
            .epoch_set
            .get(node.block.header.proposer_index as usize)
            .map(|v| v.public_key);
        if proposer.is_none() || proposer == self.public_key {
            return;
        }
        let punished = self.offences_on_branch(node);
        let mut resend = Vec::new();
        for (evidence, sent) in &mut self.evidence {
            if !punished.contains(&offence_of(evidence)) && current >= *sent + EVIDENCE_RESEND_SLOTS
            {
                *sent = current;
                resend.push(evidence.clone());
            }
        }
        for evidence in resend {
            self.actions
                .push_back(Action::Broadcast(Message::Evidence(evidence)));
        }
    }

    fn maybe_vote(&mut self, hash: B256, block: &Block) {
        let Some(key) = self.key.clone() else { return };
        let header = &block.header;
        let slot = header.slot;
        let current = self.slot_at(self.now_ms);
        if slot != current || slot <= self.protection.last_voted_slot() {
            return;
        }
        // Locking: only extend a QC at least as high as the highest one seen
        // (or persisted before a restart).
        let lock = self.high_qc.slot.max(self.protection.locked_qc_slot());
        if header.parent_qc.slot < lock {
            return;
        }
        let Some(node) = self.tree.get(&hash) else {
            return;
        };
        let set = node.epoch_set.clone();
        let Some(index) = set
            .validators()
            .iter()
            .position(|v| Some(v.public_key) == self.public_key)
        else {
            return;
        };
        let request = SigningRequest::Vote {
            slot,
            block_hash: hash,
        };
        if self.protection.record_lock(header.parent_qc.slot).is_err()
            || self.protection.check_and_record(request).is_err()
        {
            self.stats.refused_by_protection += 1;
            return;
        }
        let vote = Vote::sign_cached(
            &key,
            &set,
            self.spec.chain_id,
            slot,
            hash,
            index as u32,
            &self.verified,
        );
        self.stats.votes += 1;
        let epoch = header.epoch;
        self.actions.push_back(Action::Broadcast(Message::Vote {
            epoch,
            vote: vote.clone(),
        }));
        self.handle_vote(epoch, vote);
    }

    /// A vote from a peer (or this validator). It is verified against the
    /// set of the epoch it names as soon as that set is known, so a double
    /// vote is caught even when one of the two blocks never arrives.
    pub fn handle_vote(&mut self, epoch: u64, vote: Vote) {
        // Votes for finalized slots are moot; votes for future slots cannot be honest yet.
        let current = self.slot_at(self.now_ms);
        if vote.slot <= self.tree.root().block.header.slot || vote.slot > current + 1 {
            return;
        }
        let node = self.tree.get(&vote.block_hash);
        let (set, block_epoch) = match node {
            Some(node) if node.block.header.slot != vote.slot => return,
            Some(node) => (node.epoch_set.clone(), node.block.header.epoch),
            None => match self.tree.set_of_epoch(epoch) {
                Some(set) => (set, epoch),
                None => {
                    if self.early_votes.len() < self.config.max_pending {
                        self.early_votes.push_back((epoch, vote));
                    }
                    return;
                }
            },
        };
        self.defer_vote(epoch, block_epoch, &set, vote);
    }

    /// Keeps a vote to verify later with others for the same block (one
    /// pairing for all), unless it was verified before. A forged vote waits
    /// beside the real one rather than in its place: nothing enters the pool
    /// or the double-vote record before its check passes.
    fn defer_vote(&mut self, epoch: u64, block_epoch: u64, set: &ValidatorSet, vote: Vote) {
        let key = (vote.slot, vote.block_hash);
        let known = {
            let entry = VerifiedCache::vote_key(&vote, set, self.spec.chain_id);
            self.verified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .contains(&entry)
        };
        if known {
            self.accept_vote(epoch, block_epoch, set, vote);
            // Its stake may complete a quorum with votes still waiting.
            if self.unverified.contains_key(&key) && self.could_certify(key, set) {
                self.certify_from_waiting(key, set);
            }
            return;
        }
        let waiting = self.unverified.entry(key).or_default();
        if waiting.iter().any(|(_, v)| *v == vote) {
            return;
        }
        // Shared caches pool waiting votes (see `VerifiedCache::shared_pooling`).
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .note_waiting(&vote, set, self.spec.chain_id);
        waiting.push((epoch, vote));
        self.unverified_len += 1;
        if waiting.len() >= 2 * set.len() || self.unverified_len > MAX_UNVERIFIED_VOTES {
            self.check_deferred(key);
        } else if self.could_certify(key, set) {
            self.certify_from_waiting(key, set);
        }
    }

    /// Completes the QC of (slot, block) from its waiting votes: those
    /// whose check already passed (in the cache) go in first; the others
    /// are verified now only if the QC still needs them, else they wait
    /// for the slot's end like any late vote.
    fn certify_from_waiting(&mut self, key: (u64, B256), set: &ValidatorSet) {
        let Some(block_epoch) = self.tree.get(&key.1).map(|n| n.block.header.epoch) else {
            return;
        };
        let Some(waiting) = self.unverified.remove(&key) else {
            return;
        };
        self.unverified_len -= waiting.len();
        let (known, unknown): (Waiting, Waiting) = {
            let mut cache = self
                .verified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            waiting.into_iter().partition(|(_, vote)| {
                cache.contains(&VerifiedCache::vote_key(vote, set, self.spec.chain_id))
            })
        };
        for (epoch, vote) in known {
            self.accept_vote(epoch, block_epoch, set, vote);
        }
        if unknown.is_empty() || key.0 <= self.tree.root().block.header.slot {
            return;
        }
        self.unverified_len += unknown.len();
        self.unverified.insert(key, unknown);
        if self.could_certify(key, set) {
            self.check_deferred(key);
        }
    }

    /// Whether the waiting votes for an uncertified block, if valid, would
    /// bring its pool to a quorum.
    fn could_certify(&self, key: (u64, B256), set: &ValidatorSet) -> bool {
        if self.tree.get(&key.1).is_none_or(|n| n.qc.is_some()) {
            return false;
        }
        let pool = self.pools.get(&key);
        let mut stake = pool.map(|p| p.signed_stake()).unwrap_or_default();
        let mut counted = std::collections::BTreeSet::new();
        for (_, vote) in self.unverified.get(&key).into_iter().flatten() {
            let index = vote.validator_index as usize;
            if pool.is_some_and(|p| p.has_vote_of(index)) || !counted.insert(index) {
                continue;
            }
            if let Some(validator) = set.get(index) {
                stake += validator.stake;
            }
        }
        set.is_quorum(stake)
    }

    /// Verifies the waiting votes for (slot, block) together and takes the
    /// valid ones in.
    fn check_deferred(&mut self, key: (u64, B256)) {
        let Some(waiting) = self.unverified.remove(&key) else {
            return;
        };
        self.unverified_len -= waiting.len();
        let groups = self.sets_for(key.1, waiting);
        self.check_groups(groups);
    }

    /// Verifies every waiting vote (at each new slot: evidence must not wait
    /// for a quorum that may never come), in one batch per set.
    fn check_all_deferred(&mut self) {
        let unverified = std::mem::take(&mut self.unverified);
        self.unverified_len = 0;
        let mut groups = Vec::new();
        for ((_, hash), waiting) in unverified {
            groups.extend(self.sets_for(hash, waiting));
        }
        self.check_groups(groups);
    }

    /// The sets to check waiting votes for `hash` against: the block's set
    /// if it is known, else the set of the epoch each vote names (so a
    /// double vote is caught even when one of the two blocks never
    /// arrives). Votes of an epoch with no known set are dropped.
    fn sets_for(&self, hash: B256, waiting: Waiting) -> Vec<(ValidatorSet, u64, Waiting)> {
        match self.tree.get(&hash) {
            Some(node) => vec![(node.epoch_set.clone(), node.block.header.epoch, waiting)],
            None => {
                let mut by_epoch: BTreeMap<u64, Waiting> = BTreeMap::new();
                for (epoch, vote) in waiting {
                    by_epoch.entry(epoch).or_default().push((epoch, vote));
                }
                by_epoch
                    .into_iter()
                    .filter_map(|(epoch, votes)| {
                        Some((self.tree.set_of_epoch(epoch)?, epoch, votes))
                    })
                    .collect()
            }
        }
    }

    /// Verifies groups of waiting votes, all votes of one set in one batch
    /// (one final exponentiation), and takes the valid ones in, in order.
    fn check_groups(&mut self, groups: Vec<(ValidatorSet, u64, Waiting)>) {
        let mut verdicts: Vec<Vec<bool>> = vec![Vec::new(); groups.len()];
        let mut done = vec![false; groups.len()];
        for i in 0..groups.len() {
            if done[i] {
                continue;
            }
            let set = &groups[i].0;
            let same: Vec<usize> = (i..groups.len())
                .filter(|j| groups[*j].0.hash() == set.hash())
                .collect();
            let votes: Vec<Vote> = same
                .iter()
                .flat_map(|j| groups[*j].2.iter().map(|(_, v)| v.clone()))
                .collect();
            let mut all =
                verify_votes_cached(&votes, set, self.spec.chain_id, &self.verified).into_iter();
            for j in same {
                done[j] = true;
                verdicts[j] = all.by_ref().take(groups[j].2.len()).collect();
            }
        }
        for ((set, block_epoch, waiting), verdicts) in groups.into_iter().zip(verdicts) {
            for ((epoch, vote), valid) in waiting.into_iter().zip(verdicts) {
                if valid {
                    self.accept_vote(epoch, block_epoch, &set, vote);
                }
            }
        }
    }

    /// A verified vote: double-vote detection, then aggregation.
    fn accept_vote(&mut self, epoch: u64, block_epoch: u64, set: &ValidatorSet, vote: Vote) {
        if vote.slot <= self.tree.root().block.header.slot {
            return; // finalized while it waited
        }
        let voter = set.validators()[vote.validator_index as usize].public_key;
        match self.votes_seen.get(&(vote.slot, voter)) {
            Some((first_epoch, first)) if first.block_hash != vote.block_hash => {
                let evidence = Evidence::DoubleVote(Box::new(DoubleVote::new(
                    *first_epoch,
                    first.clone(),
                    vote.clone(),
                )));
                self.record_evidence(evidence, voter);
                return;
            }
            Some(_) => {}
            None if self.votes_seen.len() < MAX_VOTES_SEEN => {
                self.votes_seen
                    .insert((vote.slot, voter), (block_epoch, vote.clone()));
            }
            None => {}
        }
        if !self.tree.contains(&vote.block_hash) {
            if self.early_votes.len() < self.config.max_pending {
                self.early_votes.push_back((epoch, vote));
            }
            return;
        }
        // A pool only serves to certify its block (and to check gossiped
        // QCs for it): once the block is certified, votes for it are moot.
        let certified = self
            .tree
            .get(&vote.block_hash)
            .is_some_and(|n| n.qc.is_some());
        if certified {
            return;
        }
        let chain_id = self.spec.chain_id;
        let pool = self
            .pools
            .entry((vote.slot, vote.block_hash))
            .or_insert_with(|| QcBuilder::new(vote.slot, vote.block_hash, set));
        if pool
            .add_verified_vote_cached(&vote, set, chain_id, &self.verified)
            .is_err()
        {
            return;
        }
        if let Some(qc) = pool.certificate(set) {
            // Aggregated from verified votes: valid, so the next block
            // carrying it as its parent QC is not paired again.
            self.remember_verified(&qc, set);
            self.actions
                .push_back(Action::Broadcast(Message::Certificate(qc.clone())));
            self.handle_certificate(qc, true);
        }
    }

    /// Records in the cache that `qc` is valid for `set`.
    fn remember_verified(&self, qc: &QuorumCert, set: &ValidatorSet) {
        let key = VerifiedCache::qc_key(qc, set, self.spec.chain_id);
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key);
    }

    /// A QC from a peer; `verified` when this engine aggregated it.
    pub fn handle_certificate(&mut self, qc: QuorumCert, verified: bool) {
        if qc.slot > self.slot_at(self.now_ms) + 1 {
            return; // cannot be honest yet
        }
        let Some(node) = self.tree.get(&qc.block_hash) else {
            if qc.slot > self.tree.root().block.header.slot
                && self.early_qcs.len() < self.config.max_pending
            {
                self.early_qcs.push_back(qc.clone());
                self.actions
                    .push_back(Action::Broadcast(Message::BlockRequest(qc.block_hash)));
            }
            return;
        };
        if node.qc.is_some() {
            return;
        }
        if !verified {
            if qc.slot != node.block.header.slot {
                return;
            }
            // The votes this engine verified for the block may already
            // cover every signer: then comparing the QC's signature with
            // their aggregate replaces the pairing.
            let confirmed = self
                .pools
                .get(&(qc.slot, qc.block_hash))
                .and_then(|pool| pool.confirms(&qc, &node.epoch_set))
                .is_some();
            if confirmed {
                self.remember_verified(&qc, &node.epoch_set);
            } else if qc
                .verify_cached(&node.epoch_set, self.spec.chain_id, &self.verified)
                .is_err()
            {
                return;
            }
        }
        self.note_certificate(&qc);
        let finalized = self.tree.certify(qc);
        self.on_finalized(finalized);
    }

    /// Raises the highest QC (the QC is already verified).
    fn note_certificate(&mut self, qc: &QuorumCert) {
        if qc.slot > self.high_qc.slot {
            self.high_qc = qc.clone();
        }
    }

    fn on_finalized(&mut self, finalized: Vec<Block>) {
        if finalized.is_empty() {
            return;
        }
        let root_slot = self.tree.root().block.header.slot;
        let root_number = self.tree.root().block.header.number;
        self.orphans.retain(|(number, _), _| *number > root_number);
        self.pools.retain(|(slot, _), _| *slot > root_slot);
        self.unverified.retain(|(slot, _), _| *slot > root_slot);
        self.unverified_len = self.unverified.values().map(Vec::len).sum();
        self.votes_seen.retain(|(slot, _), _| *slot > root_slot);
        self.proposals_seen.retain(|(slot, _), _| *slot > root_slot);
        self.blocks_per_proposer
            .retain(|(slot, _), _| *slot > root_slot);
        self.early_votes.retain(|(_, v)| v.slot > root_slot);
        self.early_qcs.retain(|q| q.slot > root_slot);
        // Evidence can be proven only about the current epoch and the last
        // EVIDENCE_EPOCHS before it.
        let oldest = self
            .tree
            .root()
            .state
            .rotation()
            .current_epoch()
            .saturating_sub(crate::rotation::EVIDENCE_EPOCHS);
        for block in &finalized {
            self.punished.extend(block.evidence.iter().map(offence_of));
        }
        self.punished.retain(|(epoch, _, _)| *epoch >= oldest);
        let punished = &self.punished;
        self.evidence
            .retain(|(e, _)| e.epoch() >= oldest && !punished.contains(&offence_of(e)));
        let root_state = &self.tree.root().state;
        for block in &finalized {
            for tx in &block.transactions {
                if let Ok(sender) = tx.recover_sender() {
                    self.mempool
                        .remove_mined(&sender, root_state.account(&sender).nonce);
                }
            }
            self.recent_finalized
                .push_back((block.hash(), block.clone()));
        }
        while self.recent_finalized.len() > self.config.recent_finalized {
            self.recent_finalized.pop_front();
        }
        // Pruning failures only keep more records than needed; signing stays safe.
        let _ = self.protection.prune_below(root_slot);
        self.actions.push_back(Action::Finalized(finalized));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slashing_protection::{DiskSlashingProtection, MemorySlashingProtection};
    use crate::test_support::{dev_signer, transfer};
    use alloy_primitives::U256;
    use luxtensor_light::chain_spec::devnet_validator_key;

    fn engine(spec: &ChainSpec, index: u32, protection: Box<dyn SlashingProtection>) -> Engine {
        let config = ConsensusConfig::for_slot(spec.slot_duration_ms);
        Engine::new(
            spec.clone(),
            config,
            Some(devnet_validator_key(index)),
            protection,
            Root::genesis(spec),
        )
    }

    fn drain(engine: &mut Engine) -> Vec<Action> {
        std::iter::from_fn(|| engine.poll_action()).collect()
    }

    fn votes(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Broadcast(Message::Vote { .. })))
            .count()
    }

    #[test]
    fn a_restarted_validator_never_votes_twice_in_a_slot() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let slot = 1;
        let proposer = set.proposer_index(slot) as u32;
        let voter = (proposer + 1) % 4;
        let now = 1000 * spec.genesis_timestamp + slot * spec.slot_duration_ms + 200;

        let mut proposing = engine(
            &spec,
            proposer,
            Box::new(MemorySlashingProtection::default()),
        );
        proposing.handle_tick(now);
        let block = drain(&mut proposing)
            .into_iter()
            .find_map(|a| match a {
                Action::Broadcast(Message::Proposal(b)) => Some(*b),
                _ => None,
            })
            .expect("the proposer of slot 1 proposes");
        let owner = set.validators()[proposer as usize].owner;
        let tx = transfer(&dev_signer(proposer), spec.chain_id, 0, owner, U256::ZERO);
        let twin = proposing.build_proposal(slot, vec![tx]).unwrap();
        assert_ne!(twin.hash(), block.hash());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("protection");
        let mut first = engine(
            &spec,
            voter,
            Box::new(DiskSlashingProtection::open(&path).unwrap()),
        );
        first.handle_tick(now);
        first.handle_message(Message::Proposal(Box::new(block)));
        assert_eq!(votes(&drain(&mut first)), 1, "votes for the first block");
        drop(first); // crash mid-slot

        let mut restarted = engine(
            &spec,
            voter,
            Box::new(DiskSlashingProtection::open(&path).unwrap()),
        );
        restarted.handle_tick(now);
        restarted.handle_message(Message::Proposal(Box::new(twin)));
        assert_eq!(
            votes(&drain(&mut restarted)),
            0,
            "no second vote in the same slot"
        );
        assert_eq!(restarted.stats().votes, 0);
    }

    #[test]
    fn a_forged_vote_never_shadows_the_real_one() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let slot = 1;
        let proposer = set.proposer_index(slot) as u32;
        let [o, x, y] = [1, 2, 3].map(|k| (proposer + k) % 4);
        let now = 1000 * spec.genesis_timestamp + slot * spec.slot_duration_ms + 200;
        let mut proposing = engine(
            &spec,
            proposer,
            Box::new(MemorySlashingProtection::default()),
        );
        proposing.handle_tick(now);
        let block = drain(&mut proposing)
            .into_iter()
            .find_map(|a| match a {
                Action::Broadcast(Message::Proposal(b)) => Some(*b),
                _ => None,
            })
            .unwrap();
        let hash = block.hash();
        let cache = VerifiedCache::shared(64);
        let mut observer = engine(&spec, o, Box::new(MemorySlashingProtection::default()));
        observer.set_verified_cache(cache.clone());
        observer.handle_tick(now);
        observer.handle_message(Message::Proposal(Box::new(block)));
        let vote = |i: u32| Vote::sign(&devnet_validator_key(i), spec.chain_id, slot, hash, i);
        let mut forged = vote(x);
        forged.signature = vote(y).signature; // y's signature, claimed for x
        let certificates = |actions: Vec<Action>| -> Vec<QuorumCert> {
            actions
                .into_iter()
                .filter_map(|a| match a {
                    Action::Broadcast(Message::Certificate(qc)) => Some(qc),
                    _ => None,
                })
                .collect()
        };
        for v in [forged.clone(), vote(y)] {
            observer.handle_message(Message::Vote { epoch: 0, vote: v });
        }
        assert!(
            certificates(drain(&mut observer)).is_empty(),
            "own vote, y and a forgery for x are not a quorum"
        );
        assert!(forged.verify_cached(&set, spec.chain_id, &cache).is_err());
        observer.handle_message(Message::Vote {
            epoch: 0,
            vote: vote(x),
        });
        let qcs = certificates(drain(&mut observer));
        assert_eq!(qcs.len(), 1, "x's real vote completes the QC");
        let signers: Vec<usize> = qcs[0].signers.signers().collect();
        assert_eq!(signers.len(), 3);
        qcs[0].verify(&set, spec.chain_id).unwrap();
        assert_eq!(observer.block(&hash).unwrap().qc.as_ref(), Some(&qcs[0]));
    }

    #[test]
    fn a_second_instance_with_the_same_protection_database_cannot_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("protection");
        let _running = DiskSlashingProtection::open(&path).unwrap();
        assert!(DiskSlashingProtection::open(&path).is_err());
    }

    #[test]
    fn gossiped_evidence_is_checked_kept_once_passed_on_once_and_proposed() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let slot = 1;
        let proposer = set.proposer_index(slot) as u32;
        let offender = (proposer + 1) % 4;
        let forger = (proposer + 2) % 4;
        let id = spec.chain_id;
        let vote = |signer: u32, byte: u8| {
            let mut vote = Vote::sign(
                &devnet_validator_key(signer),
                id,
                slot,
                B256::repeat_byte(byte),
                signer,
            );
            vote.validator_index = offender; // a forgery when signer differs
            vote
        };
        let double_vote = |first: Vote, second: Vote| {
            Evidence::DoubleVote(Box::new(DoubleVote {
                epoch: 0,
                first,
                second,
            }))
        };
        let evidence = double_vote(vote(offender, 1), vote(offender, 2));
        let mut node = engine(
            &spec,
            proposer,
            Box::new(MemorySlashingProtection::default()),
        );
        let now = 1000 * spec.genesis_timestamp + slot * spec.slot_duration_ms;
        node.handle_tick(now);
        drain(&mut node);

        // Invalid proofs are refused as faults: a forged signature, and two
        // messages that do not conflict. Nothing is kept or sent.
        for forged in [
            double_vote(vote(offender, 1), vote(forger, 2)),
            double_vote(vote(offender, 1), vote(offender, 1)),
        ] {
            let rejection = node.handle_evidence(forged).unwrap_err();
            assert!(rejection.is_fault(), "{rejection}");
        }
        assert_eq!(node.stats().invalid_evidence, 2);
        // Evidence about an epoch this chain has not reached is untimely, not faulty.
        let future = Evidence::DoubleVote(Box::new(DoubleVote {
            epoch: 9,
            first: vote(offender, 1),
            second: vote(offender, 2),
        }));
        assert!(!node.handle_evidence(future).unwrap_err().is_fault());
        assert!(drain(&mut node).is_empty());

        // A valid new proof is kept, reported and passed on once.
        assert_eq!(
            node.handle_evidence(evidence.clone()),
            Ok(EvidenceVerdict::New)
        );
        let actions = drain(&mut node);
        let sent: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Broadcast(Message::Evidence(e)) => Some(e.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(sent, vec![evidence.clone()]);
        let accused: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Misbehaviour { offender, .. } => Some(*offender),
                _ => None,
            })
            .collect();
        assert_eq!(accused, vec![devnet_validator_key(offender).public_key()]);
        assert_eq!(node.stats().evidence_received, 1);

        // The same proof again, or another proof of the same offence
        // (offender and slot), is not kept or sent again: no gossip storm.
        // The same proof may be passed on; another one is not even checked,
        // so it must not be (a forged twin of a held offence is not relayed).
        assert_eq!(
            node.handle_evidence(evidence.clone()),
            Ok(EvidenceVerdict::Held)
        );
        let other = double_vote(vote(offender, 2), vote(offender, 3));
        assert_eq!(
            node.handle_evidence(other.clone()),
            Ok(EvidenceVerdict::Unchecked)
        );
        node.handle_message(Message::Evidence(other));
        assert!(drain(&mut node).is_empty());

        // The proposer's next block carries it.
        node.handle_tick(now + spec.slot_duration_ms / 2);
        let block = drain(&mut node)
            .into_iter()
            .find_map(|a| match a {
                Action::Broadcast(Message::Proposal(b)) => Some(*b),
                _ => None,
            })
            .expect("the proposer of slot 1 proposes");
        assert_eq!(block.evidence, vec![evidence]);
    }

    #[test]
    fn pending_evidence_left_out_of_a_fresh_block_is_sent_again_at_most_every_few_slots() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let slot = 1 + EVIDENCE_RESEND_SLOTS;
        let proposer = set.proposer_index(slot) as u32;
        let [holder, offender] = [1, 2].map(|k| (proposer + k) % 4);
        let vote = |byte: u8| {
            Vote::sign(
                &devnet_validator_key(offender),
                spec.chain_id,
                1,
                B256::repeat_byte(byte),
                offender,
            )
        };
        let evidence = Evidence::DoubleVote(Box::new(DoubleVote {
            epoch: 0,
            first: vote(1),
            second: vote(2),
        }));
        let at = |slot: u64| {
            1000 * spec.genesis_timestamp + slot * spec.slot_duration_ms + spec.slot_duration_ms / 2
        };
        // Broadcasts of the double vote (the twin below adds a double proposal).
        let sent = |actions: Vec<Action>| {
            actions
                .into_iter()
                .filter(|a| {
                    matches!(
                        a,
                        Action::Broadcast(Message::Evidence(Evidence::DoubleVote(_)))
                    )
                })
                .count()
        };
        let mut node = engine(&spec, holder, Box::new(MemorySlashingProtection::default()));
        node.handle_tick(at(1));
        drain(&mut node);
        assert_eq!(node.handle_evidence(evidence), Ok(EvidenceVerdict::New));
        assert_eq!(sent(drain(&mut node)), 1, "sent when first received");

        // The proposer of a later slot never got it (a partition, say).
        let mut proposing = engine(
            &spec,
            proposer,
            Box::new(MemorySlashingProtection::default()),
        );
        proposing.handle_tick(at(slot));
        let block = drain(&mut proposing)
            .into_iter()
            .find_map(|a| match a {
                Action::Broadcast(Message::Proposal(b)) => Some(*b),
                _ => None,
            })
            .expect("the proposer proposes");
        assert!(block.evidence.is_empty());
        let owner = set.validators()[proposer as usize].owner;
        let tx = transfer(&dev_signer(proposer), spec.chain_id, 0, owner, U256::ZERO);
        let twin = proposing.build_proposal(slot, vec![tx]).unwrap();

        node.handle_tick(at(slot));
        drain(&mut node);
        node.handle_message(Message::Proposal(Box::new(block)));
        assert_eq!(sent(drain(&mut node)), 1, "a block left it out: sent again");
        node.handle_message(Message::Proposal(Box::new(twin)));
        assert_eq!(sent(drain(&mut node)), 0, "not again within the same slots");
    }

    #[test]
    fn the_highest_qc_is_sent_again_while_no_newer_one_comes() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let at = |slot: u64| {
            1000 * spec.genesis_timestamp + slot * spec.slot_duration_ms + spec.slot_duration_ms / 2
        };
        let proposer = set.proposer_index(1) as u32;
        let mut proposing = engine(
            &spec,
            proposer,
            Box::new(MemorySlashingProtection::default()),
        );
        proposing.handle_tick(at(1));
        let block = proposal(drain(&mut proposing)).expect("the proposer proposes");
        let qc = certificate(&spec, 1, block.hash(), &[0, 1, 2]);
        let observer = (proposer + 1) % 4;
        let mut node = engine(
            &spec,
            observer,
            Box::new(MemorySlashingProtection::default()),
        );
        node.handle_tick(at(1));
        node.handle_message(Message::Proposal(Box::new(block)));
        node.handle_message(Message::Certificate(qc.clone()));
        drain(&mut node);
        let resent = |node: &mut Engine, slot: u64| {
            node.handle_tick(at(slot));
            drain(node)
                .into_iter()
                .filter(|a| matches!(a, Action::Broadcast(Message::Certificate(q)) if *q == qc))
                .count()
        };
        assert_eq!(node.high_qc(), &qc);
        let sent: Vec<usize> = (2..=7).map(|slot| resent(&mut node, slot)).collect();
        assert_eq!(
            sent,
            [0, 1, 0, 1, 0, 1],
            "after 2 quiet slots, then every 2"
        );
    }

    /// The first block among `actions`.
    fn proposal(actions: Vec<Action>) -> Option<Block> {
        actions.into_iter().find_map(|a| match a {
            Action::Broadcast(Message::Proposal(b)) => Some(*b),
            _ => None,
        })
    }

    /// A QC of genesis validators `signers` for `hash` at `slot`.
    fn certificate(spec: &ChainSpec, slot: u64, hash: B256, signers: &[u32]) -> QuorumCert {
        let set = spec.genesis_set().unwrap();
        let mut builder = QcBuilder::new(slot, hash, &set);
        for &i in signers {
            let vote = Vote::sign(&devnet_validator_key(i), spec.chain_id, slot, hash, i);
            builder.add_verified_vote(&vote, &set).unwrap();
        }
        builder
            .certificate(&set)
            .expect("three of four are a quorum")
    }

    #[test]
    fn a_certified_block_is_accepted_though_its_equivocating_proposer_filled_the_cap() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let at = |slot: u64| {
            1000 * spec.genesis_timestamp + slot * spec.slot_duration_ms + spec.slot_duration_ms / 2
        };
        let memory = || Box::new(MemorySlashingProtection::default());
        let proposer = set.proposer_index(1) as u32;
        let mut proposing = engine(&spec, proposer, memory());
        proposing.handle_tick(at(1));
        let canonical = proposal(drain(&mut proposing)).expect("the proposer of slot 1 proposes");
        // The equivocator sends three other blocks for slot 1.
        let owner = set.validators()[proposer as usize].owner;
        let twins: Vec<Block> = (1..=3u64)
            .map(|value| {
                let tx = transfer(
                    &dev_signer(proposer),
                    spec.chain_id,
                    0,
                    owner,
                    U256::from(value),
                );
                proposing.build_proposal(1, vec![tx]).unwrap()
            })
            .collect();
        // The others certified the canonical block and built on it in slot 2.
        let qc = certificate(
            &spec,
            1,
            canonical.hash(),
            &[0, 1, 2, 3].map(|k| (proposer + k) % 4)[..3],
        );
        let mut next = engine(&spec, set.proposer_index(2) as u32, memory());
        next.handle_tick(at(1));
        next.handle_message(Message::Proposal(Box::new(canonical.clone())));
        next.handle_message(Message::Certificate(qc.clone()));
        next.handle_tick(at(2));
        let child = proposal(drain(&mut next)).expect("the proposer of slot 2 proposes");
        assert_eq!(child.header.parent_qc, qc);

        let [by_child, by_qc] = [1, 2].map(|k| (proposer + k) % 4);
        for (observer, named_by_child) in [(by_child, true), (by_qc, false)] {
            let mut node = engine(&spec, observer, memory());
            node.handle_tick(at(1));
            for twin in &twins[..2] {
                node.handle_message(Message::Proposal(Box::new(twin.clone())));
            }
            node.handle_message(Message::Proposal(Box::new(canonical.clone())));
            assert!(
                node.block(&canonical.hash()).is_none(),
                "two blocks of the proposer fill its slot; nothing names a third yet"
            );
            node.handle_tick(at(2));
            drain(&mut node);
            // What names the canonical block: a verified child's parent QC,
            // or the QC received on its own. Either way the node asks for it.
            let named = if named_by_child {
                Message::Proposal(Box::new(child.clone()))
            } else {
                Message::Certificate(qc.clone())
            };
            node.handle_message(named);
            assert!(
                drain(&mut node)
                    .contains(&Action::Broadcast(Message::BlockRequest(canonical.hash()))),
                "asks for the block it misses"
            );
            // The answer to the request is taken in, and certified.
            node.handle_message(Message::Proposal(Box::new(canonical.clone())));
            let taken = node
                .block(&canonical.hash())
                .expect("a certified block is never capped");
            assert_eq!(taken.qc.as_ref(), Some(&qc));
            assert_eq!(node.head().hash(), canonical.hash());
            if named_by_child {
                assert!(
                    node.block(&child.hash()).is_some(),
                    "the waiting child follows"
                );
            }
            assert_eq!(node.stats().invalid_blocks, 0);

            // The cap still holds for what no valid QC names, even under a
            // forged QC (which is dropped after its one failed check).
            let forged = QuorumCert {
                block_hash: twins[2].hash(),
                ..qc.clone()
            };
            node.handle_message(Message::Certificate(forged.clone()));
            node.handle_message(Message::Proposal(Box::new(twins[2].clone())));
            assert!(
                node.block(&twins[2].hash()).is_none(),
                "a fourth block stays out"
            );
            assert!(!node.early_qcs.contains(&forged));
        }
    }

    #[test]
    fn votes_for_an_unseen_block_still_reveal_a_double_vote() {
        let spec = ChainSpec::devnet(4);
        let mut observer = engine(&spec, 0, Box::new(MemorySlashingProtection::default()));
        let key = devnet_validator_key(2);
        let a = Vote::sign(&key, spec.chain_id, 3, B256::repeat_byte(1), 2);
        let b = Vote::sign(&key, spec.chain_id, 3, B256::repeat_byte(2), 2);
        observer.handle_tick(3 * spec.slot_duration_ms);
        // A vote for a slot far ahead of the clock is ignored (it cannot be honest yet).
        let early = Vote::sign(&key, spec.chain_id, 9, B256::repeat_byte(3), 2);
        observer.handle_message(Message::Vote {
            epoch: 0,
            vote: early.clone(),
        });
        observer.handle_message(Message::Vote {
            epoch: 0,
            vote: Vote::sign(&key, spec.chain_id, 9, B256::repeat_byte(4), 2),
        });
        observer.handle_message(Message::Vote { epoch: 0, vote: a });
        observer.handle_message(Message::Vote { epoch: 0, vote: b });
        // Votes wait to be verified together; the slot's end checks them all.
        observer.handle_tick(4 * spec.slot_duration_ms);
        let accused: Vec<_> = drain(&mut observer)
            .into_iter()
            .filter_map(|a| match a {
                Action::Misbehaviour { offender, .. } => Some(offender),
                _ => None,
            })
            .collect();
        assert_eq!(accused, vec![key.public_key()]);
    }
}
