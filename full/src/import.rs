//! Block import: the one path by which a block enters the node. It checks
//! the header with the light client's rulebook, the body against the header,
//! recovers senders on all cores, executes, and commits the block with
//! everything it changed in one atomic write.

use crate::execution::{self, BlockError};
use crate::state::ChainState;
use crate::store::{BlockCommit, Store, StoreError};
use alloy_primitives::{Address, B256};
use luxtensor_light::block::BodyError;
use luxtensor_light::validator::SetError;
use luxtensor_light::{
    Block, ChainSpec, Header, HeaderError, QcError, QuorumCert, SignatureBatch, SignedTransaction,
    TxError, ValidatorSet, check_header, check_link, push_seal, verify_header, verify_link,
};
use std::collections::BTreeMap;
use std::path::Path;

/// Why a block was not imported. The node's state is unchanged in every case.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The block does not extend the current head.
    #[error("block {number} has parent {parent}, the head is {head}")]
    NotOnHead {
        /// The block's number.
        number: u64,
        /// Its parent hash.
        parent: B256,
        /// The current head.
        head: B256,
    },
    /// No validator set is known for the block's epoch.
    #[error("no validator set known for epoch {0}")]
    UnknownEpoch(u64),
    /// The header breaks a rule.
    #[error("header: {0}")]
    Header(#[from] HeaderError),
    /// The body does not match the header.
    #[error("body: {0}")]
    Body(#[from] BodyError),
    /// A transaction's signature does not yield a sender.
    #[error("transaction {index}: {error}")]
    Sender {
        /// Position in the block.
        index: usize,
        /// The recovery error.
        error: TxError,
    },
    /// Execution refused the block.
    #[error("execution: {0}")]
    Execution(Box<BlockError>),
    /// The rotation produced a set that is not valid (a bug or corrupt state).
    #[error("next validator set: {0}")]
    Set(#[from] SetError),
    /// Storage failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<BlockError> for ImportError {
    fn from(error: BlockError) -> Self {
        Self::Execution(Box::new(error))
    }
}

/// A run of blocks stopped at an invalid one.
#[derive(Debug, thiserror::Error)]
#[error("block {index} of the run: {error} ({imported} imported before it)")]
pub struct ChainImportError {
    /// Position of the invalid block in the run.
    pub index: usize,
    /// Blocks of the run imported before it.
    pub imported: usize,
    /// Why it was refused.
    pub error: ImportError,
}

/// What verifying a run of blocks produced.
struct VerifiedRun {
    /// Senders of each verified block, in order: the blocks to import.
    senders: Vec<Vec<Address>>,
    /// The invalid block (position in the run) that ended it early.
    stop: Option<(usize, ImportError)>,
}

/// What an import changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The new head.
    pub hash: B256,
    /// Its number.
    pub number: u64,
    /// A block that became final through this one (two-chain rule), if any.
    pub finalized: Option<B256>,
    /// The epoch that started, if this block ended one.
    pub new_epoch: Option<u64>,
    /// Where the time went.
    pub timings: ImportTimings,
}

/// Time spent in each stage of one import, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportTimings {
    /// Header rules: proposer seal and parent QC (for a run: its share of the batch).
    pub verify_us: u64,
    /// Transactions root and sender recovery (on all cores).
    pub recover_us: u64,
    /// Execution and the new state root.
    pub execute_us: u64,
    /// The atomic, fsynced database commit.
    pub commit_us: u64,
}

/// Recovers the senders of `transactions`, spread over the machine's cores.
pub fn recover_senders(transactions: &[SignedTransaction]) -> Result<Vec<Address>, ImportError> {
    let recover =
        |offset: usize, chunk: &[SignedTransaction]| -> Result<Vec<Address>, ImportError> {
            chunk
                .iter()
                .enumerate()
                .map(|(i, tx)| {
                    tx.recover_sender().map_err(|error| ImportError::Sender {
                        index: offset + i,
                        error,
                    })
                })
                .collect()
        };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || transactions.len() < 32 {
        return recover(0, transactions);
    }
    let chunk = transactions.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = transactions
            .chunks(chunk)
            .enumerate()
            .map(|(i, part)| scope.spawn(move || recover(i * chunk, part)))
            .collect();
        let mut senders = Vec::with_capacity(transactions.len());
        for handle in handles {
            senders.extend(handle.join().expect("sender recovery does not panic")?);
        }
        Ok(senders)
    })
}

/// The chain as this node has imported it: store, state, head, and the
/// validator sets of recent epochs.
#[derive(Debug)]
pub struct Importer {
    spec: ChainSpec,
    store: Store,
    state: ChainState,
    head: Header,
    /// Epoch of the head's parent (finality needs parent and child in one epoch).
    head_parent_epoch: u64,
    /// Decoded sets by epoch (decoding a set costs ~70 µs per key, so they are kept).
    sets: BTreeMap<u64, ValidatorSet>,
}

/// How many epochs of decoded validator sets stay in memory.
const CACHED_EPOCHS: usize = 8;

impl Importer {
    /// Opens the database at `path` for `spec`: writes genesis into an empty
    /// one, or resumes from the stored head.
    pub fn open(spec: ChainSpec, path: impl AsRef<Path>) -> Result<Self, ImportError> {
        let store = Store::open(path)?;
        store.init_genesis(&spec)?;
        let state = store.load_state(&spec)?;
        let head = store
            .head()?
            .ok_or_else(|| StoreError::Corrupt {
                what: "head",
                reason: "missing".into(),
            })?
            .header
            .header;
        let head_parent_epoch = match head.is_genesis() {
            true => 0,
            false => store
                .block(&head.parent_hash)?
                .map_or(head.epoch, |b| b.header.epoch),
        };
        Ok(Self {
            spec,
            store,
            state,
            head,
            head_parent_epoch,
            sets: BTreeMap::new(),
        })
    }

    /// The chain spec.
    pub fn spec(&self) -> &ChainSpec {
        &self.spec
    }

    /// The head header.
    pub fn head(&self) -> &Header {
        &self.head
    }

    /// The state after the head.
    pub fn state(&self) -> &ChainState {
        &self.state
    }

    /// An account of the head state with its EIP-1186 proof (`eth_getProof`).
    pub fn account_proof(&mut self, address: Address) -> crate::state::AccountProof {
        self.state.proof(address)
    }

    /// The store, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The validator set of `epoch`, from memory or the store.
    pub fn validator_set(&mut self, epoch: u64) -> Result<ValidatorSet, ImportError> {
        if let Some(set) = self.sets.get(&epoch) {
            return Ok(set.clone());
        }
        let set = self
            .store
            .validator_set(epoch)?
            .ok_or(ImportError::UnknownEpoch(epoch))?;
        self.sets.insert(epoch, set.clone());
        while self.sets.len() > CACHED_EPOCHS {
            self.sets.pop_first();
        }
        Ok(set)
    }

    /// Imports a block that extends the head. On error nothing changes.
    pub fn import(&mut self, block: &Block) -> Result<Imported, ImportError> {
        let header = &block.header;
        if header.parent_hash != self.head.hash() {
            return Err(ImportError::NotOnHead {
                number: header.number,
                parent: header.parent_hash,
                head: self.head.hash(),
            });
        }
        let mut clock = Stopwatch::start();
        let parent_set = self.validator_set(self.head.epoch)?;
        let set = self.validator_set(header.epoch)?;
        verify_header(header, &set, &self.spec)?;
        verify_link(header, &self.head, &parent_set, self.spec.chain_id)?;
        let verify_us = clock.lap();
        block.verify_body()?;
        let senders = recover_senders(&block.transactions)?;
        let recover_us = clock.lap();
        let mut imported = self.execute_and_commit(block, &senders)?;
        imported.timings.verify_us = verify_us;
        imported.timings.recover_us = recover_us;
        Ok(imported)
    }

    /// Imports consecutive blocks that extend the head, as sync delivers
    /// them: the seals and parent QCs of a run are verified as one randomized
    /// batch on two threads and all senders are recovered on all cores; then
    /// each block is executed and committed on its own (one atomic commit per
    /// block). Stops at the first invalid block; the blocks before it stay
    /// imported.
    pub fn import_chain(&mut self, blocks: &[Block]) -> Result<Vec<Imported>, ChainImportError> {
        let mut imported = Vec::with_capacity(blocks.len());
        let mut start = 0;
        while start < blocks.len() {
            let mut clock = Stopwatch::start();
            let run = self.verify_run(&blocks[start..]);
            let verify_us = clock.lap() / run.senders.len().max(1) as u64;
            let verified = run.senders.len();
            for (offset, senders) in run.senders.iter().enumerate() {
                match self.execute_and_commit(&blocks[start + offset], senders) {
                    Ok(mut done) => {
                        done.timings.verify_us = verify_us;
                        imported.push(done);
                    }
                    Err(error) => {
                        let index = start + offset;
                        return Err(ChainImportError {
                            index,
                            imported: imported.len(),
                            error,
                        });
                    }
                }
            }
            if let Some((offset, error)) = run.stop {
                let index = start + offset;
                return Err(ChainImportError {
                    index,
                    imported: imported.len(),
                    error,
                });
            }
            start += verified;
        }
        Ok(imported)
    }

    /// Verifies the longest valid prefix of `blocks` whose validator sets
    /// are known. Returns each verified block's senders, and the error that
    /// ended the prefix early, if any.
    fn verify_run(&mut self, blocks: &[Block]) -> VerifiedRun {
        let mut batch = SignatureBatch::default();
        let mut owner_of_check = Vec::new(); // batch item -> block index
        let mut parent = self.head.clone();
        let mut stop = None;
        let mut len = 0;
        for (i, block) in blocks.iter().enumerate() {
            let header = &block.header;
            if header.parent_hash != parent.hash() {
                let error = ImportError::NotOnHead {
                    number: header.number,
                    parent: header.parent_hash,
                    head: parent.hash(),
                };
                stop = Some((i, error));
                break;
            }
            let sets = self
                .validator_set(parent.epoch)
                .and_then(|p| Ok((p, self.validator_set(header.epoch)?)));
            let (parent_set, set) = match sets {
                Ok(sets) => sets,
                Err(ImportError::UnknownEpoch(_)) if i > 0 => break, // known after this run
                Err(e) => {
                    stop = Some((i, e));
                    break;
                }
            };
            let checks = (|| {
                check_header(header, &set, &self.spec)?;
                push_seal(&mut batch, header, &set, self.spec.chain_id)?;
                if let Some(qc) = check_link(header, &parent, &parent_set)? {
                    batch
                        .push_qc(qc, &parent_set, self.spec.chain_id)
                        .map_err(HeaderError::BadParentQc)?;
                }
                Ok::<_, HeaderError>(())
            })();
            if let Err(e) = checks {
                batch.truncate(owner_of_check.len());
                stop = Some((i, e.into()));
                break;
            }
            owner_of_check.resize(batch.len(), i);
            parent = header.header.clone();
            len = i + 1;
        }

        // Signatures: one randomized batch, half on each thread.
        let mut randomness = [[0u8; 32]; 2];
        for r in &mut randomness {
            getrandom::fill(r).expect("the operating system provides randomness");
        }
        let half = batch.len() / 2;
        let signatures_ok = std::thread::scope(|scope| {
            let second = scope.spawn(|| batch.verify_range(half..batch.len(), randomness[1]));
            let first = batch.verify_range(0..half, randomness[0]);
            first & second.join().expect("verification does not panic")
        });
        if !signatures_ok {
            let bad = batch
                .first_invalid()
                .expect("a failing batch has a failing member");
            let index = owner_of_check[bad];
            stop = Some((index, self.explain_bad_signature(blocks, index)));
            len = index;
        }

        // Bodies and senders, spread over the cores.
        if let Some(i) = blocks[..len].iter().position(|b| b.verify_body().is_err()) {
            let error = blocks[i].verify_body().expect_err("just failed");
            stop = Some((i, error.into()));
            len = i;
        }
        let run = &blocks[..len];
        let all: Vec<SignedTransaction> = run
            .iter()
            .flat_map(|b| b.transactions.iter().cloned())
            .collect();
        let recovered = match recover_senders(&all) {
            Ok(recovered) => recovered,
            Err(ImportError::Sender { index, error }) => {
                // Keep the blocks before the one with the bad signature.
                let (mut block, mut offset) = (0, index);
                while offset >= run[block].transactions.len() {
                    offset -= run[block].transactions.len();
                    block += 1;
                }
                let before: usize = run[..block].iter().map(|b| b.transactions.len()).sum();
                stop = Some((
                    block,
                    ImportError::Sender {
                        index: offset,
                        error,
                    },
                ));
                len = block;
                all[..before]
                    .iter()
                    .map(|tx| tx.recover_sender().unwrap_or_default())
                    .collect()
            }
            Err(other) => unreachable!("recover_senders only fails with Sender: {other}"),
        };
        let mut recovered = recovered.into_iter();
        let senders = blocks[..len]
            .iter()
            .map(|b| recovered.by_ref().take(b.transactions.len()).collect())
            .collect();
        VerifiedRun { senders, stop }
    }

    /// Re-checks block `index` of a run alone to name the signature rule it broke.
    fn explain_bad_signature(&mut self, blocks: &[Block], index: usize) -> ImportError {
        let parent = match index {
            0 => self.head.clone(),
            _ => blocks[index - 1].header.header.clone(),
        };
        let header = &blocks[index].header;
        let mut check = || -> Result<(), ImportError> {
            let set = self.validator_set(header.epoch)?;
            verify_header(header, &set, &self.spec)?;
            let parent_set = self.validator_set(parent.epoch)?;
            verify_link(header, &parent, &parent_set, self.spec.chain_id)?;
            Ok(())
        };
        check()
            .err()
            .unwrap_or(ImportError::Header(HeaderError::BadSeal(
                QcError::BadSignature,
            )))
    }

    /// Executes a verified block and commits it with everything it changed.
    fn execute_and_commit(
        &mut self,
        block: &Block,
        senders: &[Address],
    ) -> Result<Imported, ImportError> {
        let mut clock = Stopwatch::start();
        let header = &block.header;
        let output =
            execution::execute_block(&mut self.state, &self.spec, &self.head, block, senders)?;
        let execute_us = clock.lap();

        let new_set = match &output.epoch_transition {
            Some(t) => match ValidatorSet::new(self.state.rotation().next_validators().to_vec()) {
                Ok(next) => Some((t.epoch + 1, next)),
                Err(e) => {
                    self.reload_state()?;
                    return Err(e.into());
                }
            },
            None => None,
        };
        // Two-chain rule: this block certifies its parent; if the parent sits
        // in the slot right after the block it certifies, in the same epoch,
        // that block is final.
        let parent = &self.head;
        let finalized = (parent.parent_qc != QuorumCert::genesis()
            && parent.slot == parent.parent_qc.slot + 1
            && parent.epoch == self.head_parent_epoch)
            .then_some(parent.parent_hash);
        let parent_qc = (header.parent_qc != QuorumCert::genesis()).then_some(&header.parent_qc);
        let commit = BlockCommit {
            block,
            receipts: &output.receipts,
            system_logs: &output.system_logs,
            accounts: self.state.take_changes(),
            rotation: self.state.rotation().encode_state(),
            new_set: new_set.as_ref().map(|(epoch, set)| (*epoch, set)),
            parent_qc,
            finalized,
        };
        if let Err(e) = self.store.commit_block(commit) {
            // Memory ran ahead of disk: take the state back from the store.
            self.reload_state()?;
            return Err(e.into());
        }
        let commit_us = clock.lap();
        if let Some((epoch, set)) = new_set {
            self.sets.insert(epoch, set);
        }
        self.head_parent_epoch = self.head.epoch;
        self.head = header.header.clone();
        Ok(Imported {
            hash: block.hash(),
            number: header.number,
            finalized,
            new_epoch: output.epoch_transition.map(|t| t.epoch),
            timings: ImportTimings {
                execute_us,
                commit_us,
                ..Default::default()
            },
        })
    }

    fn reload_state(&mut self) -> Result<(), ImportError> {
        self.state = self.store.load_state(&self.spec)?;
        Ok(())
    }
}

/// Measures consecutive stages.
struct Stopwatch(std::time::Instant);

impl Stopwatch {
    fn start() -> Self {
        Self(std::time::Instant::now())
    }

    /// Microseconds since the last lap.
    fn lap(&mut self) -> u64 {
        let now = std::time::Instant::now();
        let us = now.duration_since(self.0).as_micros() as u64;
        self.0 = now;
        us
    }
}
