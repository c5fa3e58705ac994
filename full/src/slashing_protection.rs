//! Slashing protection: a validator records what it signs before it releases
//! the signature, and refuses to sign anything that conflicts with a record,
//! also after a restart (as Lighthouse's slashing-protection database does).
//!
//! The consensus engine calls [`SlashingProtection::check_and_record`] before
//! any vote or proposal leaves the node. The rules (see `DESIGN.md`,
//! "Finality"):
//!
//! - **Votes:** one block hash per slot, and votes move forward: a vote for
//!   slot `s` is allowed iff the vote recorded at `s` is for the same hash
//!   (an idempotent re-sign), or there is none and `s` is above every slot
//!   voted so far ([`SlashingProtection::last_voted_slot`]).
//! - **Proposals:** one block hash per slot; re-signing the same hash is
//!   allowed.
//! - **Re-signing** exactly the same (kind, slot, hash) is always allowed
//!   while its record is kept: a validator that crashed between recording and
//!   sending must be able to send again.
//! - **Pruning:** [`SlashingProtection::prune_below`] drops the records of
//!   older slots to bound memory and disk. `last_voted_slot` is kept apart
//!   from the records, so lower votes stay refused; proposals at pruned slots
//!   are refused ([`SlashingError::SlotPruned`]), since a record that was
//!   dropped cannot be checked.
//!
//! [`MemorySlashingProtection`] is pure and serves the simulator and tests;
//! [`DiskSlashingProtection`] keeps the records in redb and commits with
//! fsync before it answers `Ok`, and its exclusive file lock refuses a second
//! instance of the same validator.
//!
//! | table | key | value |
//! |---|---|---|
//! | `votes` | slot | block hash voted for |
//! | `proposals` | slot | block hash proposed |
//! | `meta` | `last_voted_slot`, `pruned_below` | slot |

use alloy_primitives::B256;
use redb::{Database, DatabaseError, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

const VOTES: TableDefinition<u64, [u8; 32]> = TableDefinition::new("votes");
const PROPOSALS: TableDefinition<u64, [u8; 32]> = TableDefinition::new("proposals");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LAST_VOTED_SLOT: &str = "last_voted_slot";
const LOCKED_QC_SLOT: &str = "locked_qc_slot";
const PRUNED_BELOW: &str = "pruned_below";

/// What a validator is about to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningRequest {
    /// A vote for block `block_hash` of slot `slot`.
    Vote {
        /// Slot of the block voted for.
        slot: u64,
        /// Hash of the block voted for.
        block_hash: B256,
    },
    /// A proposal of block `block_hash` for slot `slot`.
    Proposal {
        /// Slot of the proposed block.
        slot: u64,
        /// Hash of the proposed block.
        block_hash: B256,
    },
}

impl SigningRequest {
    /// Slot of the message to sign.
    pub fn slot(&self) -> u64 {
        match *self {
            Self::Vote { slot, .. } | Self::Proposal { slot, .. } => slot,
        }
    }

    /// Hash of the block the message signs.
    pub fn block_hash(&self) -> B256 {
        match *self {
            Self::Vote { block_hash, .. } | Self::Proposal { block_hash, .. } => block_hash,
        }
    }
}

/// Why signing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlashingError {
    /// Signing would make a double vote: already voted for another block in this slot.
    #[error(
        "double vote refused: already voted for {signed} in slot {slot}, asked to vote for {requested}"
    )]
    DoubleVote {
        /// The slot.
        slot: u64,
        /// The block already voted for.
        signed: B256,
        /// The block the refused vote was for.
        requested: B256,
    },
    /// Already proposed another block in this slot.
    #[error(
        "double proposal refused: already proposed {signed} in slot {slot}, asked to propose {requested}"
    )]
    DoubleProposal {
        /// The slot.
        slot: u64,
        /// The block already proposed.
        signed: B256,
        /// The block the refused proposal was for.
        requested: B256,
    },
    /// Votes must move forward: a vote for a slot at or below the highest
    /// voted slot (unless it repeats an identical recorded vote) is refused.
    #[error(
        "vote for slot {slot} refused: already voted in slot {last}, and votes must move forward"
    )]
    SlotNotAfterLastVote {
        /// Slot of the refused vote.
        slot: u64,
        /// Highest slot voted so far.
        last: u64,
    },
    /// A proposal for a slot whose records were pruned: it cannot be checked
    /// against what was signed there, so it is refused.
    #[error("proposal for slot {slot} refused: records below slot {pruned_below} were pruned")]
    SlotPruned {
        /// Slot of the refused proposal.
        slot: u64,
        /// Records of slots below this one were dropped.
        pruned_below: u64,
    },
    /// The database failed or is locked by another instance (the message says
    /// which path and what to do).
    #[error("{0}")]
    Storage(String),
}

/// Where signed messages are recorded. The consensus engine calls
/// [`check_and_record`](Self::check_and_record) before it releases any
/// signature.
pub trait SlashingProtection: Send {
    /// `Ok(())` if signing is safe; records the request durably before
    /// returning `Ok`. Re-signing exactly the same (kind, slot, hash) is
    /// allowed (idempotent: needed after a crash between recording and
    /// sending).
    fn check_and_record(&mut self, request: SigningRequest) -> Result<(), SlashingError>;

    /// Highest slot voted so far (0 if none).
    fn last_voted_slot(&self) -> u64;

    /// Drops the records of slots below `slot`, keeping `last_voted_slot`.
    /// Afterwards votes at or below `last_voted_slot` stay refused, and so
    /// do proposals below `slot` (even identical re-signs, whose records are
    /// gone). A lower `slot` than an earlier call's changes nothing.
    fn prune_below(&mut self, slot: u64) -> Result<(), SlashingError>;

    /// Raises the persisted lock to `qc_slot` (the parent-QC slot of a block
    /// about to be voted for) before the vote leaves: after a restart the
    /// validator must not vote for a block extending an older QC.
    fn record_lock(&mut self, qc_slot: u64) -> Result<(), SlashingError>;

    /// The persisted lock (0 if none).
    fn locked_qc_slot(&self) -> u64;
}

/// What [`decide`] found: the request repeats a record, or is new and safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    AlreadySigned,
    Record,
}

/// The rules, shared by both implementations. `signed` is what is recorded
/// for the request's kind at its slot.
fn decide(
    request: SigningRequest,
    signed: Option<B256>,
    last_voted: Option<u64>,
    pruned_below: u64,
) -> Result<Decision, SlashingError> {
    let requested = request.block_hash();
    match (request, signed) {
        (_, Some(signed)) if signed == requested => Ok(Decision::AlreadySigned),
        (SigningRequest::Vote { slot, .. }, Some(signed)) => Err(SlashingError::DoubleVote {
            slot,
            signed,
            requested,
        }),
        (SigningRequest::Proposal { slot, .. }, Some(signed)) => {
            Err(SlashingError::DoubleProposal {
                slot,
                signed,
                requested,
            })
        }
        (SigningRequest::Vote { slot, .. }, None) => match last_voted {
            Some(last) if slot <= last => Err(SlashingError::SlotNotAfterLastVote { slot, last }),
            _ => Ok(Decision::Record),
        },
        (SigningRequest::Proposal { slot, .. }, None) if slot < pruned_below => {
            Err(SlashingError::SlotPruned { slot, pruned_below })
        }
        (SigningRequest::Proposal { .. }, None) => Ok(Decision::Record),
    }
}

/// In-memory implementation (for the simulator and tests); `Clone` so a
/// "restarted" validator can get the same records back.
#[derive(Debug, Clone, Default)]
pub struct MemorySlashingProtection {
    votes: BTreeMap<u64, B256>,
    proposals: BTreeMap<u64, B256>,
    /// `None` until the first vote, so that a vote at slot 0 is possible.
    last_voted: Option<u64>,
    pruned_below: u64,
    locked_qc_slot: u64,
}

impl SlashingProtection for MemorySlashingProtection {
    fn record_lock(&mut self, qc_slot: u64) -> Result<(), SlashingError> {
        self.locked_qc_slot = self.locked_qc_slot.max(qc_slot);
        Ok(())
    }

    fn locked_qc_slot(&self) -> u64 {
        self.locked_qc_slot
    }

    fn check_and_record(&mut self, request: SigningRequest) -> Result<(), SlashingError> {
        let slot = request.slot();
        let records = match request {
            SigningRequest::Vote { .. } => &mut self.votes,
            SigningRequest::Proposal { .. } => &mut self.proposals,
        };
        let signed = records.get(&slot).copied();
        if decide(request, signed, self.last_voted, self.pruned_below)? == Decision::Record {
            records.insert(slot, request.block_hash());
            if let SigningRequest::Vote { .. } = request {
                self.last_voted = Some(slot);
            }
        }
        Ok(())
    }

    fn last_voted_slot(&self) -> u64 {
        self.last_voted.unwrap_or(0)
    }

    fn prune_below(&mut self, slot: u64) -> Result<(), SlashingError> {
        self.votes = self.votes.split_off(&slot);
        self.proposals = self.proposals.split_off(&slot);
        self.pruned_below = self.pruned_below.max(slot);
        Ok(())
    }
}

/// redb-backed implementation: one table for votes (slot → hash), one for
/// proposals (slot → hash) and a `meta` table for `last_voted_slot` and the
/// prune point, each change committed with fsync before returning `Ok`.
///
/// redb locks the file exclusively, so while one instance has the database
/// open, [`open`](Self::open) fails for any other (another process, or the
/// same one) with [`SlashingError::Storage`].
#[derive(Debug)]
pub struct DiskSlashingProtection {
    db: Database,
    path: PathBuf,
    /// Copies of the `meta` table, exact because no one else can write the
    /// file while we hold it; updated only after a commit succeeds.
    last_voted: Option<u64>,
    pruned_below: u64,
    locked_qc_slot: u64,
}

impl DiskSlashingProtection {
    /// Opens (or creates) the database at `path`. Fails with
    /// [`SlashingError::Storage`] if another instance has it open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SlashingError> {
        let path = path.as_ref().to_path_buf();
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(SlashingError::Storage(format!(
                    "slashing protection database {} is in use by another process: is another \
                     instance of this validator running? Stop it first; two instances signing \
                     with the same key get it slashed",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(SlashingError::Storage(format!(
                    "cannot open slashing protection database {}: {e}",
                    path.display()
                )));
            }
        };
        let mut this = Self {
            db,
            path,
            last_voted: None,
            pruned_below: 0,
            locked_qc_slot: 0,
        };
        // Creates the tables on first use, so that later reads find them.
        let tx = this.db.begin_write().map_err(|e| this.storage(e))?;
        {
            tx.open_table(VOTES).map_err(|e| this.storage(e))?;
            tx.open_table(PROPOSALS).map_err(|e| this.storage(e))?;
            let meta = tx.open_table(META).map_err(|e| this.storage(e))?;
            this.last_voted = meta
                .get(LAST_VOTED_SLOT)
                .map_err(|e| this.storage(e))?
                .map(|v| v.value());
            this.pruned_below = meta
                .get(PRUNED_BELOW)
                .map_err(|e| this.storage(e))?
                .map_or(0, |v| v.value());
            this.locked_qc_slot = meta
                .get(LOCKED_QC_SLOT)
                .map_err(|e| this.storage(e))?
                .map_or(0, |v| v.value());
        }
        tx.commit().map_err(|e| this.storage(e))?;
        Ok(this)
    }

    fn storage(&self, e: impl Display) -> SlashingError {
        SlashingError::Storage(format!(
            "slashing protection database {}: {e}",
            self.path.display()
        ))
    }
}

impl SlashingProtection for DiskSlashingProtection {
    fn record_lock(&mut self, qc_slot: u64) -> Result<(), SlashingError> {
        if qc_slot <= self.locked_qc_slot {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.storage(e))?;
            meta.insert(LOCKED_QC_SLOT, qc_slot)
                .map_err(|e| self.storage(e))?;
        }
        tx.commit().map_err(|e| self.storage(e))?;
        self.locked_qc_slot = qc_slot;
        Ok(())
    }

    fn locked_qc_slot(&self) -> u64 {
        self.locked_qc_slot
    }

    fn check_and_record(&mut self, request: SigningRequest) -> Result<(), SlashingError> {
        let slot = request.slot();
        let table = match request {
            SigningRequest::Vote { .. } => VOTES,
            SigningRequest::Proposal { .. } => PROPOSALS,
        };
        // Check and record in one write transaction; an early return drops
        // (aborts) it. The default durability is `Immediate`: commit fsyncs.
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        let decision = {
            let mut records = tx.open_table(table).map_err(|e| self.storage(e))?;
            let signed = records
                .get(slot)
                .map_err(|e| self.storage(e))?
                .map(|v| B256::from(v.value()));
            let decision = decide(request, signed, self.last_voted, self.pruned_below)?;
            if decision == Decision::Record {
                records
                    .insert(slot, request.block_hash().0)
                    .map_err(|e| self.storage(e))?;
                if let SigningRequest::Vote { .. } = request {
                    let mut meta = tx.open_table(META).map_err(|e| self.storage(e))?;
                    meta.insert(LAST_VOTED_SLOT, slot)
                        .map_err(|e| self.storage(e))?;
                }
            }
            decision
        };
        match decision {
            Decision::AlreadySigned => tx.abort().map_err(|e| self.storage(e))?,
            Decision::Record => {
                tx.commit().map_err(|e| self.storage(e))?;
                if let SigningRequest::Vote { .. } = request {
                    self.last_voted = Some(slot);
                }
            }
        }
        Ok(())
    }

    fn last_voted_slot(&self) -> u64 {
        self.last_voted.unwrap_or(0)
    }

    fn prune_below(&mut self, slot: u64) -> Result<(), SlashingError> {
        let pruned_below = self.pruned_below.max(slot);
        let tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        {
            for table in [VOTES, PROPOSALS] {
                let mut records = tx.open_table(table).map_err(|e| self.storage(e))?;
                records
                    .retain_in(..slot, |_, _| false)
                    .map_err(|e| self.storage(e))?;
            }
            let mut meta = tx.open_table(META).map_err(|e| self.storage(e))?;
            meta.insert(PRUNED_BELOW, pruned_below)
                .map_err(|e| self.storage(e))?;
        }
        tx.commit().map_err(|e| self.storage(e))?;
        self.pruned_below = pruned_below;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use redb::ReadableTableMetadata;
    use std::collections::HashMap;

    const A: B256 = B256::repeat_byte(0xaa);
    const B: B256 = B256::repeat_byte(0xbb);

    fn vote(slot: u64, block_hash: B256) -> SigningRequest {
        SigningRequest::Vote { slot, block_hash }
    }

    fn proposal(slot: u64, block_hash: B256) -> SigningRequest {
        SigningRequest::Proposal { slot, block_hash }
    }

    /// Runs `check` against a fresh memory and a fresh disk implementation.
    fn for_both(check: impl Fn(&mut dyn SlashingProtection)) {
        check(&mut MemorySlashingProtection::default());
        let dir = tempfile::tempdir().unwrap();
        check(&mut DiskSlashingProtection::open(dir.path().join("slashing.redb")).unwrap());
    }

    #[test]
    fn double_vote_is_refused() {
        for_both(|p| {
            p.check_and_record(vote(5, A)).unwrap();
            assert_eq!(
                p.check_and_record(vote(5, B)),
                Err(SlashingError::DoubleVote {
                    slot: 5,
                    signed: A,
                    requested: B
                })
            );
            assert_eq!(p.last_voted_slot(), 5);
        });
    }

    #[test]
    fn identical_re_sign_is_allowed() {
        for_both(|p| {
            p.check_and_record(vote(5, A)).unwrap();
            p.check_and_record(vote(5, A)).unwrap();
            p.check_and_record(proposal(6, B)).unwrap();
            p.check_and_record(proposal(6, B)).unwrap();
            // Also an older vote, once a later one was made.
            p.check_and_record(vote(8, B)).unwrap();
            p.check_and_record(vote(5, A)).unwrap();
            assert_eq!(p.last_voted_slot(), 8);
        });
    }

    #[test]
    fn vote_for_a_lower_slot_is_refused() {
        for_both(|p| {
            p.check_and_record(vote(9, A)).unwrap();
            assert_eq!(
                p.check_and_record(vote(4, B)),
                Err(SlashingError::SlotNotAfterLastVote { slot: 4, last: 9 })
            );
            assert_eq!(p.last_voted_slot(), 9);
            p.check_and_record(vote(10, B)).unwrap();
        });
    }

    #[test]
    fn first_vote_may_be_at_slot_zero_but_only_once() {
        for_both(|p| {
            assert_eq!(p.last_voted_slot(), 0);
            p.check_and_record(vote(0, A)).unwrap();
            assert_eq!(
                p.check_and_record(vote(0, B)),
                Err(SlashingError::DoubleVote {
                    slot: 0,
                    signed: A,
                    requested: B
                })
            );
        });
    }

    #[test]
    fn double_proposal_is_refused() {
        for_both(|p| {
            p.check_and_record(proposal(3, A)).unwrap();
            assert_eq!(
                p.check_and_record(proposal(3, B)),
                Err(SlashingError::DoubleProposal {
                    slot: 3,
                    signed: A,
                    requested: B
                })
            );
            // Votes and proposals are separate records.
            p.check_and_record(vote(3, B)).unwrap();
            // Proposals need not move forward, only stay one per slot.
            p.check_and_record(proposal(2, B)).unwrap();
        });
    }

    #[test]
    fn restart_mid_slot_keeps_the_vote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slashing.redb");
        let mut p = DiskSlashingProtection::open(&path).unwrap();
        p.check_and_record(vote(7, A)).unwrap();
        drop(p);

        let mut p = DiskSlashingProtection::open(&path).unwrap();
        assert_eq!(p.last_voted_slot(), 7);
        assert_eq!(
            p.check_and_record(vote(7, B)),
            Err(SlashingError::DoubleVote {
                slot: 7,
                signed: A,
                requested: B
            })
        );
        p.check_and_record(vote(7, A)).unwrap();
        assert_eq!(p.last_voted_slot(), 7);
    }

    #[test]
    fn second_instance_is_refused_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slashing.redb");
        let first = DiskSlashingProtection::open(&path).unwrap();
        match DiskSlashingProtection::open(&path) {
            Err(SlashingError::Storage(message)) => {
                assert!(message.contains("in use by another process"), "{message}");
                assert!(message.contains(&path.display().to_string()), "{message}");
            }
            other => panic!("second instance opened: {other:?}"),
        }
        drop(first);
        DiskSlashingProtection::open(&path).unwrap();
    }

    #[test]
    fn pruning_keeps_last_voted_slot_and_refuses_lower_slots() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slashing.redb");
        let mut memory = MemorySlashingProtection::default();
        let mut disk = DiskSlashingProtection::open(&path).unwrap();
        for p in [&mut memory as &mut dyn SlashingProtection, &mut disk] {
            p.check_and_record(vote(3, A)).unwrap();
            p.check_and_record(proposal(3, A)).unwrap();
            p.check_and_record(vote(6, A)).unwrap();
            p.prune_below(10).unwrap();
            assert_eq!(p.last_voted_slot(), 6);
            assert_eq!(
                p.check_and_record(vote(3, B)),
                Err(SlashingError::SlotNotAfterLastVote { slot: 3, last: 6 })
            );
            // The record of slot 6 is gone, so not even the same vote again.
            assert_eq!(
                p.check_and_record(vote(6, A)),
                Err(SlashingError::SlotNotAfterLastVote { slot: 6, last: 6 })
            );
            assert_eq!(
                p.check_and_record(proposal(3, B)),
                Err(SlashingError::SlotPruned {
                    slot: 3,
                    pruned_below: 10
                })
            );
            // A lower prune point does not lower the watermark.
            p.prune_below(2).unwrap();
            assert_eq!(
                p.check_and_record(proposal(5, B)),
                Err(SlashingError::SlotPruned {
                    slot: 5,
                    pruned_below: 10
                })
            );
            p.check_and_record(vote(7, B)).unwrap();
            p.check_and_record(proposal(10, B)).unwrap();
        }
        assert!(memory.votes.keys().eq([7].iter()), "{:?}", memory.votes);
        assert!(memory.proposals.keys().eq([10].iter()));

        drop(disk);
        let mut disk = DiskSlashingProtection::open(&path).unwrap();
        assert_eq!(disk.last_voted_slot(), 7);
        assert_eq!(
            disk.check_and_record(proposal(4, A)),
            Err(SlashingError::SlotPruned {
                slot: 4,
                pruned_below: 10
            })
        );
        let tx = disk.db.begin_write().unwrap();
        assert_eq!(tx.open_table(VOTES).unwrap().len().unwrap(), 1);
        assert_eq!(tx.open_table(PROPOSALS).unwrap().len().unwrap(), 1);
    }

    #[test]
    fn memory_restart_by_clone_keeps_records() {
        let mut p = MemorySlashingProtection::default();
        p.check_and_record(vote(7, A)).unwrap();
        let mut restarted = p.clone();
        assert_eq!(restarted.last_voted_slot(), 7);
        assert!(matches!(
            restarted.check_and_record(vote(7, B)),
            Err(SlashingError::DoubleVote { .. })
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Sign(SigningRequest),
        Prune(u64),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        let request = (any::<bool>(), 0u64..16, 1u8..4).prop_map(|(is_vote, slot, h)| {
            let block_hash = B256::with_last_byte(h);
            if is_vote {
                vote(slot, block_hash)
            } else {
                proposal(slot, block_hash)
            }
        });
        prop_oneof![
            12 => request.prop_map(Op::Sign),
            1 => (0u64..16).prop_map(Op::Prune),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// For any requests, prunes and restarts: memory and disk give the
        /// same answers, never accept two hashes for one (kind, slot), and
        /// every newly accepted vote is above all earlier votes.
        #[test]
        fn memory_and_disk_agree_and_never_sign_conflicts(ops in proptest::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("slashing.redb");
            let mut memory = MemorySlashingProtection::default();
            let mut disk = DiskSlashingProtection::open(&path).unwrap();
            // Everything ever accepted, never pruned.
            let mut accepted: HashMap<(bool, u64), B256> = HashMap::new();
            let mut highest_vote: Option<u64> = None;
            for op in ops {
                match op {
                    Op::Sign(request) => {
                        let answer = memory.check_and_record(request);
                        prop_assert_eq!(&answer, &disk.check_and_record(request));
                        prop_assert!(!matches!(answer, Err(SlashingError::Storage(_))));
                        if answer.is_ok() {
                            let is_vote = matches!(request, SigningRequest::Vote { .. });
                            let key = (is_vote, request.slot());
                            match accepted.get(&key) {
                                Some(&signed) => prop_assert_eq!(signed, request.block_hash()),
                                None => {
                                    if is_vote {
                                        prop_assert!(highest_vote.is_none_or(|h| request.slot() > h));
                                        highest_vote = Some(request.slot());
                                    }
                                    accepted.insert(key, request.block_hash());
                                }
                            }
                        }
                    }
                    Op::Prune(slot) => {
                        memory.prune_below(slot).unwrap();
                        disk.prune_below(slot).unwrap();
                    }
                    Op::Restart => {
                        memory = memory.clone();
                        drop(disk);
                        disk = DiskSlashingProtection::open(&path).unwrap();
                    }
                }
                prop_assert_eq!(memory.last_voted_slot(), disk.last_voted_slot());
                prop_assert_eq!(memory.last_voted_slot(), highest_vote.unwrap_or(0));
            }
        }
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn the_lock_only_rises_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("protection");
        {
            let mut disk = DiskSlashingProtection::open(&path).unwrap();
            disk.record_lock(7).unwrap();
            disk.record_lock(3).unwrap();
            assert_eq!(disk.locked_qc_slot(), 7);
        }
        let disk = DiskSlashingProtection::open(&path).unwrap();
        assert_eq!(disk.locked_qc_slot(), 7);
        let mut memory = MemorySlashingProtection::default();
        memory.record_lock(5).unwrap();
        memory.record_lock(2).unwrap();
        assert_eq!(memory.locked_qc_slot(), 5);
    }
}
