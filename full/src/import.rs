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
    Block, ChainSpec, Header, HeaderError, QuorumCert, SignedTransaction, TxError, ValidatorSet,
    verify_header, verify_link,
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
        Ok(Self {
            spec,
            store,
            state,
            head,
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
        let parent_set = self.validator_set(self.head.epoch)?;
        let set = self.validator_set(header.epoch)?;
        verify_header(header, &set, &self.spec)?;
        verify_link(header, &self.head, &parent_set, self.spec.chain_id)?;
        block.verify_body()?;
        let senders = recover_senders(&block.transactions)?;

        let sets = [(self.head.epoch, parent_set), (header.epoch, set)];
        let older = |epoch: u64| self.store.validator_set(epoch).ok().flatten();
        let set_of_epoch = |epoch: u64| {
            sets.iter()
                .find(|(e, _)| *e == epoch)
                .map(|(_, s)| s.clone())
                .or_else(|| older(epoch))
        };
        let output = execution::execute_block(
            &mut self.state,
            &self.spec,
            &self.head,
            block,
            &senders,
            &set_of_epoch,
        )?;

        let new_set = match &output.epoch_transition {
            Some(t) => {
                let next = ValidatorSet::new(self.state.rotation().next_validators().to_vec());
                match next {
                    Ok(next) => Some((t.epoch + 1, next)),
                    Err(e) => {
                        self.reload_state()?;
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        // Two-chain rule: this block certifies its parent; if the parent sits
        // in the slot right after the block it certifies, that block is final.
        let parent = &self.head;
        let finalized = (parent.parent_qc != QuorumCert::genesis()
            && parent.slot == parent.parent_qc.slot + 1)
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
        if let Some((epoch, set)) = new_set {
            self.sets.insert(epoch, set);
        }
        self.head = header.header.clone();
        Ok(Imported {
            hash: block.hash(),
            number: header.number,
            finalized,
            new_epoch: output.epoch_transition.map(|t| t.epoch),
        })
    }

    fn reload_state(&mut self) -> Result<(), ImportError> {
        self.state = self.store.load_state(&self.spec)?;
        Ok(())
    }
}
