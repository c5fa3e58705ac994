//! A deterministic network simulator: N validators run the real consensus
//! engine (and through it the real block tree, execution and rotation) over
//! a simulated network and clock, with seeded message delays and loss,
//! partitions that heal, crashes with restarts from what a node persisted,
//! byzantine validators, and staking transactions that change the set.
//!
//! Everything random comes from one seed, so a failing run replays exactly
//! with `LUXTENSOR_SIM_SEED=<seed> cargo test -p luxtensor-tests simulation`.

use crate::wallet::{dev_signer, staking_call, transfer};
use alloy_primitives::{B256, U256};
use luxtensor_full::consensus::{Action, ConsensusConfig, Engine, Message, Root};
use luxtensor_full::execution::EvidenceRejection;
use luxtensor_full::rotation::EVIDENCE_EPOCHS;
use luxtensor_full::slashing_protection::{
    MemorySlashingProtection, SigningRequest, SlashingError, SlashingProtection,
};
use luxtensor_full::staking::{STAKING_ADDRESS, request_exit_calldata, stake_calldata};
use luxtensor_light::chain_spec::{DEV_ACCOUNTS, TOKEN, devnet_validator_key};
use luxtensor_light::qc::{SharedVerifiedCache, VerifiedCache};
use luxtensor_light::{Block, ChainSpec, Vote};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// A small, fast, seeded generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `range` (`start..end`, end exclusive, non-empty).
    pub fn range(&mut self, start: u64, end: u64) -> u64 {
        start + self.next_u64() % (end - start).max(1)
    }

    /// True with probability `percent / 100`.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// How a byzantine validator misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Byzantine {
    /// Proposes two different blocks in its slots (both reach everyone, in
    /// random orders, so the network splits on which came first).
    Equivocate,
    /// Votes for the block and also for a made-up one.
    DoubleVote,
    /// Never sends its votes.
    WithholdVotes,
    /// Votes for every valid block it sees, ignoring the lock and its own
    /// earlier votes: the byzantine votes a safety attack needs.
    Reckless,
}

/// One simulated run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Everything random derives from it.
    pub seed: u64,
    /// Genesis validators (4 to 10).
    pub validators: usize,
    /// Slots of faults, then as many quiet slots to settle.
    pub fault_slots: u64,
    /// Quiet slots at the end (no partitions, crashes or loss).
    pub settle_slots: u64,
    /// Slot length.
    pub slot_ms: u64,
    /// Epoch length in slots.
    pub epoch_length: u64,
    /// Message delay bounds.
    pub delay_ms: (u64, u64),
    /// Percent of messages lost during the fault phase.
    pub loss_percent: u64,
    /// A partition in two groups for a stretch of the fault phase.
    pub partition: bool,
    /// Crash-and-restart events during the fault phase.
    pub crashes: usize,
    /// Byzantine validators (fewer than a third of the stake).
    pub byzantine: Vec<(usize, Byzantine)>,
    /// A newcomer stakes and a genesis validator exits during the run.
    pub staking: bool,
}

impl SimConfig {
    /// A quiet network of `validators`: short delays, no loss, partition,
    /// crash, byzantine validator or staking (tests switch faults on one by one).
    pub fn quiet(seed: u64, validators: usize) -> Self {
        Self {
            seed,
            validators,
            fault_slots: 16,
            settle_slots: 24,
            slot_ms: 1000,
            epoch_length: 8,
            delay_ms: (5, 100),
            loss_percent: 0,
            partition: false,
            crashes: 0,
            byzantine: vec![],
            staking: false,
        }
    }

    /// A random scenario for `seed`: 4 to 10 validators, delays, loss, maybe
    /// a partition, crashes, byzantine validators and staking.
    pub fn random(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let validators = rng.range(4, 11) as usize;
        let max_byzantine = (validators - 1) / 3;
        let byzantine_count = rng.range(0, max_byzantine as u64 + 1) as usize;
        let kinds = [
            Byzantine::Equivocate,
            Byzantine::DoubleVote,
            Byzantine::WithholdVotes,
            Byzantine::Reckless,
        ];
        let byzantine = (0..byzantine_count)
            .map(|i| (validators - 1 - i, kinds[rng.range(0, 4) as usize]))
            .collect();
        Self {
            seed,
            validators,
            fault_slots: 32,
            settle_slots: 32,
            slot_ms: 1000,
            epoch_length: 8,
            delay_ms: (5, rng.range(50, 400)),
            loss_percent: rng.range(0, 8),
            partition: rng.chance(50),
            crashes: rng.range(0, 3) as usize,
            byzantine,
            staking: rng.chance(50),
        }
    }
}

/// The chain spec and genesis root of `config`'s network. Built once per
/// shape of network and shared by the runs of that shape: building them
/// signs and checks every genesis validator's proof of possession, which
/// cost as much as a few slots of a run.
fn genesis_of(config: &SimConfig) -> (ChainSpec, Root) {
    type Shape = (usize, u64, u64);
    static BUILT: OnceLock<Mutex<HashMap<Shape, (ChainSpec, Root)>>> = OnceLock::new();
    let shape = (config.validators, config.slot_ms, config.epoch_length);
    let built = BUILT.get_or_init(Default::default);
    if let Some(found) = built.lock().expect("not poisoned").get(&shape) {
        return found.clone();
    }
    let mut spec = ChainSpec::devnet(config.validators as u32);
    spec.slot_duration_ms = config.slot_ms;
    spec.rotation.epoch_length = config.epoch_length;
    spec.genesis_timestamp = 0;
    let genesis = Root::genesis(&spec);
    built
        .lock()
        .expect("not poisoned")
        .insert(shape, (spec.clone(), genesis.clone()));
    (spec, genesis)
}

/// Slashing protection that outlives the engine using it (the "disk").
#[derive(Debug, Clone, Default)]
struct SharedProtection(Arc<Mutex<MemorySlashingProtection>>);

impl SlashingProtection for SharedProtection {
    fn check_and_record(&mut self, request: SigningRequest) -> Result<(), SlashingError> {
        self.0
            .lock()
            .expect("not poisoned")
            .check_and_record(request)
    }
    fn last_voted_slot(&self) -> u64 {
        self.0.lock().expect("not poisoned").last_voted_slot()
    }
    fn prune_below(&mut self, slot: u64) -> Result<(), SlashingError> {
        self.0.lock().expect("not poisoned").prune_below(slot)
    }
    fn record_lock(&mut self, qc_slot: u64) -> Result<(), SlashingError> {
        self.0.lock().expect("not poisoned").record_lock(qc_slot)
    }
    fn locked_qc_slot(&self) -> u64 {
        self.0.lock().expect("not poisoned").locked_qc_slot()
    }
}

/// What a node keeps across a crash: its finalized chain, the root to
/// restart from, and its slashing-protection records.
struct Persisted {
    finalized: Vec<Block>,
    root: Root,
    protection: SharedProtection,
}

struct SimNode {
    key_index: u32,
    /// Its validator key and public key (derived once: accusations are
    /// matched against the public key, byzantine behaviours sign with it).
    key: luxtensor_light::BlsSecretKey,
    public_key: luxtensor_light::BlsPublicKey,
    engine: Option<Engine>,
    persisted: Persisted,
    byzantine: Option<Byzantine>,
    /// Each time an honest node caught this one equivocating.
    catches: Vec<Catch>,
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        message: Message,
    },
    Tick,
    Crash(usize),
    Restart(usize),
}

/// An honest node's proof that a byzantine one equivocated.
#[derive(Debug, Clone, Copy)]
struct Catch {
    /// The epoch the evidence is about.
    epoch: u64,
    /// When the catcher could first send it to the rest of the network:
    /// when it caught it, or when the partition it was behind healed
    /// (`None`: never, its own head already refused it as too old).
    reach_ms: Option<u64>,
}

/// What a run produced, for the invariants and for benchmarks.
#[derive(Debug)]
pub struct SimOutcome {
    /// The configuration that ran.
    pub config: SimConfig,
    /// Each honest node's finalized chain (block hashes by height, genesis first).
    pub finalized: Vec<Vec<B256>>,
    /// Finalized height of the best honest node when the faults ended.
    pub height_at_heal: u64,
    /// Slots simulated.
    pub slots: u64,
    /// Mean slots from a block's proposal to its finality (honest node 0's view).
    pub finality_lag_slots: f64,
    /// Owners of the validator set after the last finalized block.
    pub final_set: Vec<alloy_primitives::Address>,
    /// Validators an honest node caught equivocating (and so must have been ejected).
    pub equivocators: Vec<usize>,
}

/// Why a run broke an invariant.
#[derive(Debug, thiserror::Error)]
#[error(
    "seed {seed}: {problem} (replay: LUXTENSOR_SIM_SEED={seed} cargo test -p luxtensor-tests simulation)"
)]
pub struct SimFailure {
    /// The seed that reproduces it.
    pub seed: u64,
    /// What went wrong.
    pub problem: String,
}

/// The simulated network.
pub struct Simulation {
    config: SimConfig,
    spec: ChainSpec,
    consensus: ConsensusConfig,
    /// One cache of verified signatures for all nodes: each vote, QC and
    /// seal is paired once per run instead of once per node.
    verified: SharedVerifiedCache,
    rng: Rng,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    now_ms: u64,
    /// The two sides of the partition (node index → group), and when it holds.
    partition: Option<(Vec<bool>, u64, u64)>,
    /// When each block was first proposed (slot), to measure finality lag.
    proposed_at: HashMap<B256, u64>,
    lags: Vec<u64>,
    /// An honest validator that some node accused of misbehaviour (must stay `None`).
    honest_accused: Option<luxtensor_light::BlsPublicKey>,
    /// (time, epoch) each time the highest epoch an honest node finalized
    /// a block of rose.
    finalized_epochs: Vec<(u64, u64)>,
}

impl Simulation {
    /// Sets up the network for `config`.
    pub fn new(config: SimConfig) -> Self {
        let mut rng = Rng::new(config.seed.wrapping_mul(31).wrapping_add(7));
        let (spec, genesis) = genesis_of(&config);
        let consensus = ConsensusConfig::for_slot(config.slot_ms);
        // One extra node: the newcomer that stakes during the run (an observer until then).
        let total = config.validators + usize::from(config.staking);
        let verified = VerifiedCache::shared_pooling(VerifiedCache::DEFAULT_CAPACITY);
        let nodes = (0..total)
            .map(|i| {
                let protection = SharedProtection::default();
                let root = genesis.clone();
                let key = devnet_validator_key(i as u32);
                let mut engine = Engine::new(
                    spec.clone(),
                    consensus.clone(),
                    Some(key.clone()),
                    Box::new(protection.clone()),
                    root.clone(),
                );
                engine.set_verified_cache(verified.clone());
                SimNode {
                    key_index: i as u32,
                    public_key: key.public_key(),
                    key,
                    engine: Some(engine),
                    persisted: Persisted {
                        finalized: vec![root.block.clone()],
                        root,
                        protection,
                    },
                    byzantine: config
                        .byzantine
                        .iter()
                        .find(|(n, _)| *n == i)
                        .map(|(_, b)| *b),
                    catches: Vec::new(),
                }
            })
            .collect();
        let partition = config.partition.then(|| {
            let groups = (0..total).map(|_| rng.chance(50)).collect();
            let start = rng.range(2, config.fault_slots / 2) * config.slot_ms;
            let end = start + rng.range(4, config.fault_slots / 2) * config.slot_ms;
            (groups, start, end)
        });
        let mut sim = Self {
            config,
            spec,
            consensus,
            verified,
            rng,
            nodes,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            now_ms: 0,
            partition,
            proposed_at: Default::default(),
            lags: Vec::new(),
            honest_accused: None,
            finalized_epochs: vec![(0, 0)],
        };
        let total_slots = sim.config.fault_slots + sim.config.settle_slots;
        for slot in 1..=total_slots {
            let at = slot * sim.config.slot_ms + sim.consensus.proposal_delay_ms;
            sim.schedule(at, Event::Tick);
        }
        for _ in 0..sim.config.crashes {
            let node = sim.rng.range(0, sim.config.validators as u64) as usize;
            let at = sim.rng.range(2, sim.config.fault_slots) * sim.config.slot_ms
                + sim.rng.range(0, sim.config.slot_ms);
            let down = sim.rng.range(1, 6) * sim.config.slot_ms;
            sim.schedule(at, Event::Crash(node));
            sim.schedule(at + down, Event::Restart(node));
        }
        sim
    }

    fn schedule(&mut self, at: u64, event: Event) {
        let id = self.events.len();
        self.events.push(Some(event));
        self.queue.push(Reverse((at, id as u64, id)));
    }

    fn in_fault_phase(&self, at: u64) -> bool {
        at < self.config.fault_slots * self.config.slot_ms
    }

    fn partitioned(&self, a: usize, b: usize, at: u64) -> bool {
        match &self.partition {
            Some((groups, start, end)) => at >= *start && at < *end && groups[a] != groups[b],
            None => false,
        }
    }

    fn send(&mut self, from: usize, to: usize, message: Message) {
        let now = self.now_ms;
        if self.partitioned(from, to, now) {
            return;
        }
        if self.in_fault_phase(now) && self.rng.chance(self.config.loss_percent) {
            return;
        }
        let delay = self
            .rng
            .range(self.config.delay_ms.0, self.config.delay_ms.1 + 1);
        self.schedule(now + delay, Event::Deliver { from, to, message });
    }

    fn broadcast(&mut self, from: usize, message: Message) {
        for to in 0..self.nodes.len() {
            if to != from {
                self.send(from, to, message.clone());
            }
        }
    }

    /// Sends two conflicting messages to every peer, each with its own
    /// random delay, so that peers see them in different orders (gossip
    /// brings both to everyone eventually).
    fn send_both(&mut self, from: usize, a: Message, b: Message) {
        for to in 0..self.nodes.len() {
            if to != from {
                self.send(from, to, a.clone());
                self.send(from, to, b.clone());
            }
        }
    }

    /// Drains node `i`'s actions onto the network, applying its byzantine behaviour.
    fn flush(&mut self, i: usize) {
        self.flush_replying(i, None);
    }

    /// [`Self::flush`]; with `requester`, node `i` has just handled that
    /// node's block request, and the blocks it sends are the answer: they
    /// go back to the requester alone, as a request-response protocol
    /// answers (the node's sync does), not to everyone.
    fn flush_replying(&mut self, i: usize, requester: Option<usize>) {
        loop {
            let Some(engine) = self.nodes[i].engine.as_mut() else {
                return;
            };
            let Some(action) = engine.poll_action() else {
                return;
            };
            match action {
                Action::Broadcast(Message::Proposal(block)) if requester.is_some() => {
                    self.send(i, requester.expect("matched"), Message::Proposal(block));
                }
                Action::Broadcast(Message::Proposal(block)) => {
                    let slot = block.header.slot;
                    self.proposed_at.entry(block.hash()).or_insert(slot);
                    let faulty = self.in_fault_phase(self.now_ms)
                        && self.nodes[i].byzantine == Some(Byzantine::Equivocate)
                        && self.is_own_fresh_proposal(i, &block);
                    match faulty.then(|| self.conflicting_block(i, slot)).flatten() {
                        Some(twin) if twin.hash() != block.hash() => {
                            self.send_both(
                                i,
                                Message::Proposal(block),
                                Message::Proposal(Box::new(twin)),
                            );
                        }
                        _ => self.broadcast(i, Message::Proposal(block)),
                    }
                }
                Action::Broadcast(Message::Vote { epoch, vote }) => {
                    let faulty = self.in_fault_phase(self.now_ms);
                    match self.nodes[i].byzantine {
                        Some(Byzantine::WithholdVotes) if faulty => {}
                        Some(Byzantine::DoubleVote) if faulty => {
                            let fake =
                                B256::from(U256::from(self.rng.next_u64()).to_be_bytes::<32>());
                            let Some(set) = self.nodes[i]
                                .engine
                                .as_ref()
                                .and_then(|e| e.block(&vote.block_hash))
                                .map(|n| n.epoch_set.clone())
                            else {
                                // (It voted for a block it holds: never taken.)
                                self.broadcast(i, Message::Vote { epoch, vote });
                                continue;
                            };
                            let other = Vote::sign_cached(
                                &self.nodes[i].key,
                                &set,
                                self.spec.chain_id,
                                vote.slot,
                                fake,
                                vote.validator_index,
                                &self.verified,
                            );
                            self.send_both(
                                i,
                                Message::Vote { epoch, vote },
                                Message::Vote { epoch, vote: other },
                            );
                        }
                        _ => self.broadcast(i, Message::Vote { epoch, vote }),
                    }
                }
                Action::Broadcast(message) => self.broadcast(i, message),
                Action::Finalized(blocks) => {
                    let now_slot = self.now_ms / self.config.slot_ms;
                    for block in &blocks {
                        if i == 0
                            && let Some(proposed) = self.proposed_at.get(&block.hash())
                        {
                            self.lags.push(now_slot.saturating_sub(*proposed));
                        }
                    }
                    let epoch = blocks.last().map_or(0, |b| b.header.epoch);
                    let highest = self.finalized_epochs.last().map_or(0, |(_, e)| *e);
                    if self.nodes[i].byzantine.is_none() && epoch > highest {
                        self.finalized_epochs.push((self.now_ms, epoch));
                    }
                    // (The root to restart from is taken at the crash.)
                    self.nodes[i].persisted.finalized.extend(blocks);
                }
                Action::Misbehaviour { offender, evidence } => {
                    if self.nodes[i].byzantine.is_some() {
                        continue; // only honest observers count
                    }
                    let accused = self.nodes.iter().position(|n| n.public_key == offender);
                    match accused {
                        Some(a) if self.nodes[a].byzantine.is_some() => {
                            let catch = self.catch(i, &evidence);
                            self.nodes[a].catches.push(catch);
                        }
                        Some(_) => self.honest_accused = self.honest_accused.or(Some(offender)),
                        None => {}
                    }
                }
            }
        }
    }

    /// Node `i`'s catch now of the offence `evidence` proves. A proof its
    /// own head already refuses as too old (the head can be epochs ahead of
    /// the offence when the offending votes arrive late, at a heal) can
    /// never be included: it counts as caught only after the run, as not
    /// provable (seed 4175).
    fn catch(&self, i: usize, evidence: &luxtensor_light::Evidence) -> Catch {
        let epoch = evidence.epoch();
        let too_old = self.nodes[i].engine.as_ref().is_some_and(|engine| {
            matches!(
                luxtensor_full::execution::check_evidence(
                    &engine.head().state,
                    evidence,
                    self.spec.chain_id,
                    None,
                ),
                Err(EvidenceRejection::TooOld { .. } | EvidenceRejection::UnknownEpoch { .. })
            )
        });
        if too_old {
            return Catch {
                epoch,
                reach_ms: None,
            };
        }
        let reach_ms = match &self.partition {
            Some((groups, start, end)) if (*start..*end).contains(&self.now_ms) => {
                let cut_off = (0..self.nodes.len())
                    .filter(|j| self.nodes[*j].byzantine.is_none())
                    .any(|j| groups[j] != groups[i]);
                if cut_off { *end } else { self.now_ms }
            }
            _ => self.now_ms,
        };
        Catch {
            epoch,
            reach_ms: Some(reach_ms),
        }
    }

    /// Whether the chain could still admit the catch's evidence once the
    /// catcher could send it. Evidence is admissible about the current epoch
    /// and the last [`EVIDENCE_EPOCHS`] before it (`docs/protocol.md`), so an
    /// equivocation seen only behind a partition that outlasted them cannot
    /// be punished: the honest majority had moved on by the time the proof
    /// could reach it. The epoch taken is the highest an honest node had
    /// finalized a block of, which is at most the chain's: the check errs
    /// towards demanding the slash.
    fn provable(&self, catch: &Catch) -> bool {
        let Some(reach_ms) = catch.reach_ms else {
            return false;
        };
        let epoch_then = self
            .finalized_epochs
            .iter()
            .take_while(|(at, _)| *at <= reach_ms)
            .last()
            .map_or(0, |(_, epoch)| *epoch);
        catch.epoch + EVIDENCE_EPOCHS >= epoch_then
    }

    /// A vote by node `i` for `hash`, whatever its lock and earlier votes say.
    fn reckless_vote(&mut self, i: usize, hash: B256) {
        let Some(engine) = self.nodes[i].engine.as_ref() else {
            return;
        };
        let Some(node) = engine.block(&hash) else {
            return;
        };
        let public = self.nodes[i].public_key;
        let Some(index) = node
            .epoch_set
            .validators()
            .iter()
            .position(|v| v.public_key == public)
        else {
            return;
        };
        let header = &node.block.header;
        let vote = Vote::sign_cached(
            &self.nodes[i].key,
            &node.epoch_set,
            self.spec.chain_id,
            header.slot,
            hash,
            index as u32,
            &self.verified,
        );
        let epoch = header.epoch;
        self.broadcast(i, Message::Vote { epoch, vote });
    }

    /// Whether `block` is node `i`'s own proposal for the current slot (not
    /// someone else's block it is relaying on request).
    fn is_own_fresh_proposal(&self, i: usize, block: &Block) -> bool {
        let Some(engine) = self.nodes[i].engine.as_ref() else {
            return false;
        };
        let current = self.now_ms / self.config.slot_ms;
        let proposer = engine
            .block(&block.hash())
            .and_then(|n| n.epoch_set.get(block.header.proposer_index as usize))
            .map(|v| v.public_key);
        block.header.slot == current && proposer.is_some() && proposer == engine.public_key()
    }

    /// A second, different block for node `i`'s slot (a self-transfer makes it differ).
    fn conflicting_block(&mut self, i: usize, slot: u64) -> Option<Block> {
        let engine = self.nodes[i].engine.as_ref()?;
        let owner_index = self.nodes[i].key_index;
        let owner = DEV_ACCOUNTS[owner_index as usize];
        let nonce = engine.head().state.account(&owner).nonce;
        let tx = transfer(
            &dev_signer(owner_index),
            self.spec.chain_id,
            nonce,
            owner,
            U256::ZERO,
        );
        engine.build_proposal(slot, vec![tx])
    }

    fn submit_to_all(&mut self, tx: &luxtensor_light::SignedTransaction) {
        for node in &mut self.nodes {
            if let Some(engine) = node.engine.as_mut() {
                let _ = engine.submit_transaction(tx.clone());
            }
        }
    }

    /// Runs to the end and checks the invariants.
    pub fn run(mut self) -> Result<SimOutcome, SimFailure> {
        let total_slots = self.config.fault_slots + self.config.settle_slots;
        let stake_slot = 3;
        let exit_slot = 5;
        let mut height_at_heal = 0;
        let heal_ms = self.config.fault_slots * self.config.slot_ms;
        while let Some(Reverse((at, _, id))) = self.queue.pop() {
            if at >= heal_ms && height_at_heal == 0 {
                height_at_heal = self.best_honest_height().max(1);
            }
            self.now_ms = at;
            let Some(event) = self.events[id].take() else {
                continue;
            };
            match event {
                Event::Tick => {
                    let slot = at / self.config.slot_ms;
                    if self.config.staking && slot == stake_slot {
                        self.stake_newcomer();
                    }
                    if self.config.staking && slot == exit_slot {
                        self.exit_one();
                    }
                    for i in 0..self.nodes.len() {
                        if let Some(engine) = self.nodes[i].engine.as_mut() {
                            engine.handle_tick(at);
                        }
                        self.flush(i);
                    }
                }
                Event::Deliver { from, to, message } => {
                    let reckless = self.nodes[to].byzantine == Some(Byzantine::Reckless)
                        && self.in_fault_phase(at);
                    let proposal = match (&message, reckless) {
                        (Message::Proposal(block), true) => Some(block.hash()),
                        _ => None,
                    };
                    let requester = matches!(message, Message::BlockRequest(_)).then_some(from);
                    if let Some(engine) = self.nodes[to].engine.as_mut() {
                        engine.handle_tick(at);
                    }
                    self.flush(to);
                    if let Some(engine) = self.nodes[to].engine.as_mut() {
                        engine.handle_message(message);
                    }
                    if let Some(hash) = proposal {
                        self.reckless_vote(to, hash);
                    }
                    self.flush_replying(to, requester);
                }
                Event::Crash(i) => {
                    if let Some(engine) = self.nodes[i].engine.take() {
                        self.nodes[i].persisted.root = engine.root();
                    }
                }
                Event::Restart(i) => {
                    let node = &mut self.nodes[i];
                    if node.engine.is_none() {
                        let mut engine = Engine::new(
                            self.spec.clone(),
                            self.consensus.clone(),
                            Some(node.key.clone()),
                            Box::new(node.persisted.protection.clone()),
                            node.persisted.root.clone(),
                        );
                        engine.set_verified_cache(self.verified.clone());
                        node.engine = Some(engine);
                    }
                }
            }
        }
        // What each running node would restart from now (the invariants read it).
        for node in &mut self.nodes {
            if let Some(engine) = node.engine.as_ref() {
                node.persisted.root = engine.root();
            }
        }
        if std::env::var_os("LUXTENSOR_SIM_DEBUG").is_some() {
            eprintln!("{:?}", self.config);
            for (i, n) in self.nodes.iter().enumerate() {
                eprintln!(
                    "node {i}: finalized {} engine {:?} stats {:?}",
                    n.persisted.finalized.len() - 1,
                    n.engine,
                    n.engine.as_ref().map(|e| e.stats().clone())
                );
            }
        }
        let outcome = SimOutcome {
            finalized: self
                .honest()
                .map(|n| n.persisted.finalized.iter().map(|b| b.hash()).collect())
                .collect(),
            height_at_heal,
            slots: total_slots,
            finality_lag_slots: if self.lags.is_empty() {
                0.0
            } else {
                self.lags.iter().sum::<u64>() as f64 / self.lags.len() as f64
            },
            final_set: self
                .leader()
                .persisted
                .root
                .state
                .rotation()
                .current_validators()
                .iter()
                .map(|v| v.owner)
                .collect(),
            equivocators: self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| !n.catches.is_empty())
                .map(|(i, _)| i)
                .collect(),
            config: self.config.clone(),
        };
        self.check(&outcome)?;
        Ok(outcome)
    }

    fn honest(&self) -> impl Iterator<Item = &SimNode> {
        self.nodes.iter().filter(|n| n.byzantine.is_none())
    }

    /// The honest node that finalized the most.
    fn leader(&self) -> &SimNode {
        self.honest()
            .max_by_key(|n| n.persisted.finalized.len())
            .expect("an honest node")
    }

    fn best_honest_height(&self) -> u64 {
        self.honest()
            .map(|n| n.persisted.finalized.len() as u64 - 1)
            .max()
            .unwrap_or(0)
    }

    fn stake_newcomer(&mut self) {
        let newcomer = self.config.validators as u32;
        let key = devnet_validator_key(newcomer);
        let owner = newcomer; // dev account index = validator index
        let calldata = stake_calldata(
            key.public_key().as_slice(),
            key.proof_of_possession(self.spec.chain_id).as_slice(),
        );
        let tx = staking_call(
            &dev_signer(owner),
            self.spec.chain_id,
            0,
            STAKING_ADDRESS,
            TOKEN * U256::from(32),
            calldata,
        );
        self.submit_to_all(&tx);
    }

    fn exit_one(&mut self) {
        // Validator 0 is always honest and genesis: it leaves.
        let tx = staking_call(
            &dev_signer(0),
            self.spec.chain_id,
            0,
            STAKING_ADDRESS,
            U256::ZERO,
            request_exit_calldata(),
        );
        self.submit_to_all(&tx);
    }

    fn fail(&self, problem: impl Into<String>) -> SimFailure {
        SimFailure {
            seed: self.config.seed,
            problem: problem.into(),
        }
    }

    /// The invariants every run must keep.
    fn check(&self, outcome: &SimOutcome) -> Result<(), SimFailure> {
        // Safety: honest finalized chains never conflict (one is a prefix of the other).
        for (a, chain_a) in outcome.finalized.iter().enumerate() {
            for chain_b in &outcome.finalized[a + 1..] {
                let common = chain_a.len().min(chain_b.len());
                if let Some(height) = (0..common).find(|h| chain_a[*h] != chain_b[*h]) {
                    return Err(
                        self.fail(format!("conflicting finalized blocks at height {height}"))
                    );
                }
            }
        }
        // Liveness: finality advanced after the network healed.
        let best = self.best_honest_height();
        if best < outcome.height_at_heal + 5 {
            return Err(self.fail(format!(
                "finality did not resume: height {} at heal, {best} at the end",
                outcome.height_at_heal
            )));
        }
        // Every honest node that is up caught up to near the best finalized height.
        for node in self.honest() {
            let height = node.persisted.finalized.len() as u64 - 1;
            if node.engine.is_some() && height + 8 < best {
                return Err(self.fail(format!(
                    "node {} stuck at finalized height {height}, best {best}",
                    node.key_index
                )));
            }
        }
        // The chain's view, from the honest node that finalized the most.
        let leader = self.leader();
        let rotation = leader.persisted.root.state.rotation();
        if rotation.current_validators().is_empty() || rotation.next_validators().is_empty() {
            return Err(self.fail("a validator set became empty"));
        }
        // No honest validator was ever accused (slashing protection held across restarts).
        if let Some(key) = self.honest_accused {
            return Err(self.fail(format!(
                "an honest validator was accused of misbehaviour: {key}"
            )));
        }
        // Every equivocator is slashed and ejected, if its evidence could
        // reach the chain while the chain still admitted it.
        for node in self
            .nodes
            .iter()
            .filter(|n| n.catches.iter().any(|c| self.provable(c)))
        {
            let owner = DEV_ACCOUNTS[node.key_index as usize];
            if rotation.next_validators().iter().any(|v| v.owner == owner) {
                return Err(self.fail(format!(
                    "equivocator {} is still in the next set",
                    node.key_index
                )));
            }
        }
        Ok(())
    }
}
