//! Crash-safe storage on redb: blocks, receipts, indexes, validator sets,
//! certificates, the account state and the finalized marker.
//!
//! Every imported block is one write transaction ([`Store::commit_block`]):
//! after a crash at any point (kill -9 included) the database holds every
//! block that was committed, with exactly the state after it, and nothing of
//! a block that was not. redb commits with fsync (`Durability::Immediate`).
//!
//! | table | key | value |
//! |---|---|---|
//! | `blocks` | block hash | RLP block |
//! | `canonical` | number | block hash |
//! | `receipts` | block hash | RLP list of receipts (EIP-2718 each) |
//! | `system_logs` | block hash | RLP list of the staking contract's system logs |
//! | `tx_index` | tx hash | block hash ‖ index (u32 big-endian) |
//! | `qcs` | block hash | RLP quorum certificate of the block |
//! | `validator_sets` | epoch | RLP validator set |
//! | `accounts` | address | RLP account (nonce, balance, storage root, code hash) |
//! | `meta` | `head`, `finalized`, `rotation` | hash, hash, rotation state |

use crate::rotation::ValidatorRotation;
use crate::state::ChainState;
use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{Address, B256, Log};
use luxtensor_light::{Account, Block, ChainSpec, QuorumCert, Receipt, ValidatorSet};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks");
const CANONICAL: TableDefinition<u64, &[u8]> = TableDefinition::new("canonical");
const RECEIPTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("receipts");
const SYSTEM_LOGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("system_logs");
const TX_INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tx_index");
const QCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("qcs");
const SETS: TableDefinition<u64, &[u8]> = TableDefinition::new("validator_sets");
const ACCOUNTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("accounts");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database itself (I/O, corruption, lock held by another process).
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    /// A stored value does not decode: the database is corrupt or from another version.
    #[error("corrupt {what} in the database: {reason}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// The decoding error.
        reason: String,
    },
    /// The database holds another chain.
    #[error("the database holds chain with genesis {stored}, not {expected}")]
    WrongChain {
        /// Genesis hash in the database.
        stored: B256,
        /// Genesis hash of the spec.
        expected: B256,
    },
}

fn encode_list<T: alloy_rlp::Encodable>(items: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    alloy_rlp::encode_list(items, &mut out);
    out
}

/// Opens a table for reading; `None` if nothing was ever written to it.
fn open_if_exists<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match tx.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(e)),
    }
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database(e.into())
}

fn corrupt(what: &'static str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: reason.to_string(),
    }
}

/// Everything one imported block writes, committed atomically.
#[derive(Debug)]
pub struct BlockCommit<'a> {
    /// The block.
    pub block: &'a Block,
    /// Its receipts.
    pub receipts: &'a [Receipt],
    /// Its system logs.
    pub system_logs: &'a [Log],
    /// Accounts it changed, with their new values.
    pub accounts: Vec<(Address, Account)>,
    /// The rotation state after it.
    pub rotation: Vec<u8>,
    /// A validator set it fixed (at an epoch transition).
    pub new_set: Option<(u64, &'a ValidatorSet)>,
    /// The QC of its parent (carried in its header), stored under the parent.
    pub parent_qc: Option<&'a QuorumCert>,
    /// A new finalized block, if it finalized one.
    pub finalized: Option<B256>,
}

/// The node's database.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(db_err)?;
        Ok(Self { db })
    }

    /// Writes genesis if the database is empty; checks it is the same chain otherwise.
    pub fn init_genesis(&self, spec: &ChainSpec) -> Result<(), StoreError> {
        let genesis = spec.genesis_header();
        if let Some(stored) = self.canonical_hash(0)? {
            if stored != genesis.hash() {
                return Err(StoreError::WrongChain {
                    stored,
                    expected: genesis.hash(),
                });
            }
            return Ok(());
        }
        let mut state = ChainState::genesis(spec);
        let set = spec.genesis_set().map_err(|e| corrupt("genesis set", e))?;
        let block = Block {
            header: luxtensor_light::SignedHeader {
                header: genesis,
                proposer_signature: Default::default(),
            },
            transactions: vec![],
            evidence: vec![],
        };
        let rotation = state.rotation().encode_state();
        let accounts = state.take_changes();
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut sets = tx.open_table(SETS).map_err(db_err)?;
            let encoded = set.encode_to_vec();
            sets.insert(0, encoded.as_slice()).map_err(db_err)?;
            sets.insert(1, encoded.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        self.commit_block(BlockCommit {
            block: &block,
            receipts: &[],
            system_logs: &[],
            accounts,
            rotation,
            new_set: None,
            parent_qc: None,
            finalized: Some(block.hash()),
        })
    }

    /// Writes one block and everything it changed in a single transaction,
    /// and makes it the head.
    pub fn commit_block(&self, commit: BlockCommit<'_>) -> Result<(), StoreError> {
        let hash = commit.block.hash();
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            tx.open_table(BLOCKS)
                .map_err(db_err)?
                .insert(hash.as_slice(), alloy_rlp::encode(commit.block).as_slice())
                .map_err(db_err)?;
            tx.open_table(CANONICAL)
                .map_err(db_err)?
                .insert(commit.block.header.number, hash.as_slice())
                .map_err(db_err)?;
            let receipts: Vec<alloy_primitives::Bytes> = commit
                .receipts
                .iter()
                .map(|r| r.encoded_2718().into())
                .collect();
            tx.open_table(RECEIPTS)
                .map_err(db_err)?
                .insert(hash.as_slice(), alloy_rlp::encode(&receipts).as_slice())
                .map_err(db_err)?;
            if !commit.system_logs.is_empty() {
                tx.open_table(SYSTEM_LOGS)
                    .map_err(db_err)?
                    .insert(hash.as_slice(), encode_list(commit.system_logs).as_slice())
                    .map_err(db_err)?;
            }
            let mut index = tx.open_table(TX_INDEX).map_err(db_err)?;
            for (i, transaction) in commit.block.transactions.iter().enumerate() {
                let mut location = [0u8; 36];
                location[..32].copy_from_slice(hash.as_slice());
                location[32..].copy_from_slice(&(i as u32).to_be_bytes());
                index
                    .insert(transaction.hash().as_slice(), location.as_slice())
                    .map_err(db_err)?;
            }
            if let Some(qc) = commit.parent_qc {
                tx.open_table(QCS)
                    .map_err(db_err)?
                    .insert(qc.block_hash.as_slice(), alloy_rlp::encode(qc).as_slice())
                    .map_err(db_err)?;
            }
            if let Some((epoch, set)) = commit.new_set {
                tx.open_table(SETS)
                    .map_err(db_err)?
                    .insert(epoch, set.encode_to_vec().as_slice())
                    .map_err(db_err)?;
            }
            let mut accounts = tx.open_table(ACCOUNTS).map_err(db_err)?;
            for (address, account) in &commit.accounts {
                accounts
                    .insert(address.as_slice(), alloy_rlp::encode(account).as_slice())
                    .map_err(db_err)?;
            }
            let mut meta = tx.open_table(META).map_err(db_err)?;
            meta.insert("rotation", commit.rotation.as_slice())
                .map_err(db_err)?;
            meta.insert("head", hash.as_slice()).map_err(db_err)?;
            if let Some(finalized) = commit.finalized {
                meta.insert("finalized", finalized.as_slice())
                    .map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    fn read<T>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<Option<T>, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        read(&tx)
    }

    fn get_bytes(
        &self,
        table: TableDefinition<&[u8], &[u8]>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|tx| {
            let Some(table) = open_if_exists(tx, table)? else {
                return Ok(None);
            };
            Ok(table.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
        })
    }

    fn meta_hash(&self, key: &str) -> Result<Option<B256>, StoreError> {
        self.read(|tx| {
            let Some(table) = open_if_exists(tx, META)? else {
                return Ok(None);
            };
            let value = table.get(key).map_err(db_err)?;
            value
                .map(|v| B256::try_from(v.value()).map_err(|e| corrupt("meta hash", e)))
                .transpose()
        })
    }

    /// Hash of the head block.
    pub fn head_hash(&self) -> Result<Option<B256>, StoreError> {
        self.meta_hash("head")
    }

    /// Hash of the latest finalized block.
    pub fn finalized_hash(&self) -> Result<Option<B256>, StoreError> {
        self.meta_hash("finalized")
    }

    /// The head block.
    pub fn head(&self) -> Result<Option<Block>, StoreError> {
        match self.head_hash()? {
            Some(hash) => self.block(&hash),
            None => Ok(None),
        }
    }

    /// The canonical block hash at `number`.
    pub fn canonical_hash(&self, number: u64) -> Result<Option<B256>, StoreError> {
        self.read(|tx| {
            let Some(table) = open_if_exists(tx, CANONICAL)? else {
                return Ok(None);
            };
            let value = table.get(number).map_err(db_err)?;
            value
                .map(|v| B256::try_from(v.value()).map_err(|e| corrupt("canonical hash", e)))
                .transpose()
        })
    }

    /// A block by hash.
    pub fn block(&self, hash: &B256) -> Result<Option<Block>, StoreError> {
        self.get_bytes(BLOCKS, hash.as_slice())?
            .map(|bytes| Block::decode(&bytes).map_err(|e| corrupt("block", e)))
            .transpose()
    }

    /// The canonical block at `number`.
    pub fn block_by_number(&self, number: u64) -> Result<Option<Block>, StoreError> {
        match self.canonical_hash(number)? {
            Some(hash) => self.block(&hash),
            None => Ok(None),
        }
    }

    /// A block's receipts.
    pub fn receipts(&self, block_hash: &B256) -> Result<Option<Vec<Receipt>>, StoreError> {
        let Some(bytes) = self.get_bytes(RECEIPTS, block_hash.as_slice())? else {
            return Ok(None);
        };
        let encoded: Vec<alloy_primitives::Bytes> =
            alloy_rlp::decode_exact(&bytes).map_err(|e| corrupt("receipts", e))?;
        encoded
            .iter()
            .map(|r| Receipt::decode_2718_exact(r).map_err(|e| corrupt("receipt", e)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Where a transaction is: (block hash, index in the block).
    pub fn transaction_location(&self, tx_hash: &B256) -> Result<Option<(B256, u32)>, StoreError> {
        let Some(bytes) = self.get_bytes(TX_INDEX, tx_hash.as_slice())? else {
            return Ok(None);
        };
        if bytes.len() != 36 {
            return Err(corrupt(
                "transaction index",
                format!("{} bytes", bytes.len()),
            ));
        }
        let index = u32::from_be_bytes(bytes[32..].try_into().expect("4 bytes"));
        Ok(Some((B256::from_slice(&bytes[..32]), index)))
    }

    /// The QC that certifies `block_hash`, once its child is stored.
    pub fn qc(&self, block_hash: &B256) -> Result<Option<QuorumCert>, StoreError> {
        self.get_bytes(QCS, block_hash.as_slice())?
            .map(|bytes| QuorumCert::decode(&bytes).map_err(|e| corrupt("qc", e)))
            .transpose()
    }

    /// Stores the QC of `block_hash` before its child is stored (the node
    /// keeps its finalized head's certificate, to restart from it).
    pub fn put_qc(&self, block_hash: &B256, qc: &QuorumCert) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        tx.open_table(QCS)
            .map_err(db_err)?
            .insert(block_hash.as_slice(), alloy_rlp::encode(qc).as_slice())
            .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// The validator set of `epoch`.
    pub fn validator_set(&self, epoch: u64) -> Result<Option<ValidatorSet>, StoreError> {
        self.read(|tx| {
            let Some(table) = open_if_exists(tx, SETS)? else {
                return Ok(None);
            };
            let value = table.get(epoch).map_err(db_err)?;
            value
                .map(|v| ValidatorSet::decode(v.value()).map_err(|e| corrupt("validator set", e)))
                .transpose()
        })
    }

    /// Rebuilds the state after the head block from the stored accounts and rotation.
    pub fn load_state(&self, spec: &ChainSpec) -> Result<ChainState, StoreError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let rotation_bytes = tx
            .open_table(META)
            .map_err(db_err)?
            .get("rotation")
            .map_err(db_err)?
            .ok_or_else(|| corrupt("rotation", "missing"))?
            .value()
            .to_vec();
        let rotation = ValidatorRotation::decode_state(
            spec.rotation.clone(),
            spec.withdrawal_delay_epochs,
            &rotation_bytes,
        )
        .map_err(|e| corrupt("rotation", e))?;
        let table = tx.open_table(ACCOUNTS).map_err(db_err)?;
        let mut accounts = Vec::new();
        for entry in table.iter().map_err(db_err)? {
            let (key, value) = entry.map_err(db_err)?;
            let address = Address::try_from(key.value()).map_err(|e| corrupt("account key", e))?;
            let account: Account =
                alloy_rlp::decode_exact(value.value()).map_err(|e| corrupt("account", e))?;
            accounts.push((address, account));
        }
        let mut state = ChainState::from_parts(accounts, rotation);
        state.take_changes(); // loaded, not changed
        Ok(state)
    }
}
