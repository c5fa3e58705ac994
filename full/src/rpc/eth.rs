//! `eth_`, `net_` and `web3_` methods, and the conversions from our blocks,
//! transactions and receipts to alloy's RPC shapes (what Ethereum clients
//! parse). Headers carry our extra fields (slot, epoch, set hashes, parent
//! QC) beside the standard ones.

use super::jsonrpc::{Params, json};
use super::subscriptions::{FilterChanges, FilterKind, parse_filter};
use super::{RpcError, RpcLimits, RpcState};
use crate::Importer;
use crate::execution::{TRANSFER_GAS, next_base_fee};
use crate::staking::{IStaking, STAKING_ADDRESS, STAKING_CALL_GAS, STAKING_CODE};
use alloy_consensus::{EMPTY_OMMER_ROOT_HASH, Transaction as _};
use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{Address, B64, B256, Bytes, TxKind, U64, U256};
use alloy_rpc_types_eth::{
    BlockTransactions, EIP1186AccountProofResponse, EIP1186StorageProof, FeeHistory, Filter,
    Log as RpcLog, SyncInfo, SyncStatus, Transaction as RpcTransaction, TransactionReceipt,
    TransactionRequest,
};
use alloy_sol_types::SolInterface;
use lru::LruCache;
use luxtensor_light::{Block, Header, Receipt, SignedTransaction, TxError};
use serde::Serialize;
use serde_json::Value;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Bounded caches for what is costly to recompute per request: validator
/// owners per epoch (for `miner`) and transaction senders.
pub(crate) struct Caches {
    owners: Mutex<LruCache<u64, Arc<[Address]>>>,
    senders: Mutex<LruCache<B256, Address>>,
}

impl Caches {
    pub(crate) fn new(_limits: &RpcLimits) -> Self {
        Self {
            owners: Mutex::new(LruCache::new(NonZeroUsize::new(64).expect("non-zero"))),
            senders: Mutex::new(LruCache::new(NonZeroUsize::new(65_536).expect("non-zero"))),
        }
    }

    /// The owner of the block's proposer (the `miner` field; zero if the set is unknown).
    pub(crate) fn miner(&self, chain: &Importer, header: &Header) -> Address {
        let cached = self
            .owners
            .lock()
            .expect("not poisoned")
            .get(&header.epoch)
            .cloned();
        let owners = match cached {
            Some(owners) => owners,
            None => match chain.store().validator_set(header.epoch) {
                Ok(Some(set)) => {
                    let owners: Arc<[Address]> = set.validators().iter().map(|v| v.owner).collect();
                    self.owners
                        .lock()
                        .expect("not poisoned")
                        .put(header.epoch, owners.clone());
                    owners
                }
                _ => return Address::ZERO,
            },
        };
        owners
            .get(header.proposer_index as usize)
            .copied()
            .unwrap_or_default()
    }

    /// The transaction's sender, recovered once.
    pub(crate) fn sender(&self, tx: &SignedTransaction) -> Result<Address, TxError> {
        let hash = tx.hash();
        if let Some(sender) = self.senders.lock().expect("not poisoned").get(&hash) {
            return Ok(*sender);
        }
        let sender = tx.recover_sender()?;
        self.senders.lock().expect("not poisoned").put(hash, sender);
        Ok(sender)
    }
}

/// A quorum certificate as JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QcJson {
    slot: U64,
    block_hash: B256,
    signers: Bytes,
    signature: Bytes,
}

impl From<&luxtensor_light::QuorumCert> for QcJson {
    fn from(qc: &luxtensor_light::QuorumCert) -> Self {
        Self {
            slot: U64::from(qc.slot),
            block_hash: qc.block_hash,
            signers: Bytes::copy_from_slice(qc.signers.as_bytes()),
            signature: Bytes::copy_from_slice(qc.signature.as_slice()),
        }
    }
}

/// The standard header fields plus ours.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LuxHeader {
    #[serde(flatten)]
    inner: alloy_consensus::Header,
    slot: U64,
    epoch: U64,
    proposer_index: U64,
    evidence_hash: B256,
    validator_set_hash: B256,
    next_validator_set_hash: B256,
    parent_qc: QcJson,
    proposer_signature: Bytes,
}

/// A header in RPC shape (`hash` beside the fields).
pub(crate) type RpcHeader = alloy_rpc_types_eth::Header<LuxHeader>;
/// A block in RPC shape.
pub(crate) type RpcBlock = alloy_rpc_types_eth::Block<RpcTransaction, RpcHeader>;

/// The header as `newHeads` and block results show it. `miner` is the
/// proposer's owner (who receives the tips).
pub(crate) fn rpc_header(block: &Block, miner: Address) -> RpcHeader {
    let h = &block.header.header;
    let inner = alloy_consensus::Header {
        parent_hash: h.parent_hash,
        ommers_hash: EMPTY_OMMER_ROOT_HASH,
        beneficiary: miner,
        state_root: h.state_root,
        transactions_root: h.transactions_root,
        receipts_root: h.receipts_root,
        logs_bloom: h.logs_bloom,
        difficulty: U256::ZERO,
        number: h.number,
        gas_limit: h.gas_limit,
        gas_used: h.gas_used,
        timestamp: h.timestamp,
        extra_data: Bytes::new(),
        mix_hash: B256::ZERO,
        nonce: B64::ZERO,
        base_fee_per_gas: Some(h.base_fee_per_gas),
        ..Default::default()
    };
    alloy_rpc_types_eth::Header {
        hash: h.hash(),
        inner: LuxHeader {
            inner,
            slot: U64::from(h.slot),
            epoch: U64::from(h.epoch),
            proposer_index: U64::from(h.proposer_index),
            evidence_hash: h.evidence_hash,
            validator_set_hash: h.validator_set_hash,
            next_validator_set_hash: h.next_validator_set_hash,
            parent_qc: QcJson::from(&h.parent_qc),
            proposer_signature: Bytes::copy_from_slice(block.header.proposer_signature.as_slice()),
        },
        total_difficulty: None,
        size: None,
    }
}

/// Where a mined transaction sits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxLocation {
    pub block_hash: B256,
    pub number: u64,
    pub index: u64,
    pub base_fee: u64,
    pub timestamp: u64,
}

impl TxLocation {
    fn new(block: &Block, index: usize) -> Self {
        Self {
            block_hash: block.hash(),
            number: block.header.number,
            index: index as u64,
            base_fee: block.header.base_fee_per_gas,
            timestamp: block.header.timestamp,
        }
    }
}

/// A transaction in RPC shape; pending if `location` is `None`.
pub(crate) fn rpc_transaction(
    tx: &SignedTransaction,
    sender: Address,
    location: Option<TxLocation>,
) -> RpcTransaction {
    let envelope = tx.envelope().clone();
    let effective_gas_price = location.map(|l| envelope.effective_gas_price(Some(l.base_fee)));
    RpcTransaction {
        inner: alloy_consensus::transaction::Recovered::new_unchecked(envelope, sender),
        block_hash: location.map(|l| l.block_hash),
        block_number: location.map(|l| l.number),
        transaction_index: location.map(|l| l.index),
        effective_gas_price,
        block_timestamp: location.map(|l| l.timestamp),
    }
}

/// The logs of a block in RPC shape, with block-wide log indexes.
pub(crate) fn block_logs(block: &Block, receipts: &[Receipt], removed: bool) -> Vec<RpcLog> {
    let hash = block.hash();
    let mut out = Vec::new();
    for (i, (receipt, tx)) in receipts.iter().zip(&block.transactions).enumerate() {
        for log in receipt.logs() {
            out.push(RpcLog {
                inner: log.clone(),
                block_hash: Some(hash),
                block_number: Some(block.header.number),
                block_timestamp: Some(block.header.timestamp),
                transaction_hash: Some(tx.hash()),
                transaction_index: Some(i as u64),
                log_index: Some(out.len() as u64),
                removed,
            });
        }
    }
    out
}

/// All receipts of a block in RPC shape.
fn rpc_receipts(
    state: &RpcState,
    block: &Block,
    receipts: &[Receipt],
) -> Result<Vec<TransactionReceipt>, RpcError> {
    let mut logs = block_logs(block, receipts, false).into_iter();
    let mut previous_gas = 0;
    let mut out = Vec::with_capacity(receipts.len());
    for (i, (receipt, tx)) in receipts.iter().zip(&block.transactions).enumerate() {
        let location = TxLocation::new(block, i);
        let sender = state
            .caches
            .sender(tx)
            .map_err(|e| RpcError::Internal(format!("stored transaction: {e}")))?;
        let cumulative = receipt.cumulative_gas_used();
        let gas_used = cumulative.saturating_sub(previous_gas);
        previous_gas = cumulative;
        let inner = receipt
            .clone()
            .map_logs(|_| logs.next().expect("one RPC log per log"));
        out.push(TransactionReceipt {
            inner,
            transaction_hash: tx.hash(),
            transaction_index: Some(i as u64),
            block_hash: Some(location.block_hash),
            block_number: Some(location.number),
            gas_used,
            effective_gas_price: tx.envelope().effective_gas_price(Some(location.base_fee)),
            blob_gas_used: None,
            blob_gas_price: None,
            from: sender,
            to: tx.to(),
            contract_address: None,
        });
    }
    Ok(out)
}

/// A block in RPC shape, with full transactions or hashes.
pub(crate) fn rpc_block(
    state: &RpcState,
    chain: &Importer,
    block: &Block,
    full: bool,
) -> Result<RpcBlock, RpcError> {
    let mut header = rpc_header(block, state.caches.miner(chain, &block.header));
    header.size = Some(U256::from(alloy_rlp::Encodable::length(block)));
    let transactions = if full {
        let txs = block
            .transactions
            .iter()
            .enumerate()
            .map(|(i, tx)| {
                let sender = state
                    .caches
                    .sender(tx)
                    .map_err(|e| RpcError::Internal(format!("stored transaction: {e}")))?;
                Ok(rpc_transaction(tx, sender, Some(TxLocation::new(block, i))))
            })
            .collect::<Result<Vec<_>, RpcError>>()?;
        BlockTransactions::Full(txs)
    } else {
        BlockTransactions::Hashes(block.transactions.iter().map(|t| t.hash()).collect())
    };
    Ok(alloy_rpc_types_eth::Block {
        header,
        uncles: vec![],
        transactions,
        withdrawals: None,
    })
}

/// Resolves a tag or number to a block number of the canonical chain
/// (`None`: beyond the head). `pending` is the head: this node builds no
/// pending block.
pub(crate) fn resolve_number(state: &RpcState, tag: BlockNumberOrTag) -> Option<u64> {
    let (head, _) = state.latest();
    match tag {
        BlockNumberOrTag::Latest | BlockNumberOrTag::Pending => Some(head),
        BlockNumberOrTag::Safe | BlockNumberOrTag::Finalized => Some(state.finalized().0),
        BlockNumberOrTag::Earliest => Some(0),
        BlockNumberOrTag::Number(n) => (n <= head).then_some(n),
    }
}

/// Loads the block a tag, number or hash names.
pub(crate) fn load_block(
    state: &RpcState,
    chain: &Importer,
    id: BlockId,
) -> Result<Option<Block>, RpcError> {
    Ok(match id {
        BlockId::Hash(hash) => chain.store().block(&hash.block_hash)?,
        BlockId::Number(tag) => match resolve_number(state, tag) {
            Some(n) => chain.store().block_by_number(n)?,
            None => None,
        },
    })
}

/// Checks that a state query names the head (the only state this node keeps).
fn require_head_state(state: &RpcState, id: Option<BlockId>) -> Result<(), RpcError> {
    let (number, hash) = state.latest();
    let ok = match id.unwrap_or(BlockId::Number(BlockNumberOrTag::Latest)) {
        BlockId::Hash(h) => h.block_hash == hash,
        BlockId::Number(tag) => resolve_number(state, tag) == Some(number),
    };
    match ok {
        true => Ok(()),
        false => Err(RpcError::Server(format!(
            "historical state is not available: this node keeps the state at its head (block {number}) only"
        ))),
    }
}

fn block_or_null(state: &RpcState, id: BlockId, full: bool) -> Result<String, RpcError> {
    let chain = state.read();
    match load_block(state, &chain, id)? {
        Some(block) => json(&rpc_block(state, &chain, &block, full)?),
        None => Ok("null".into()),
    }
}

/// The intrinsic gas of call data (Ethereum's: 4 per zero byte, 16 per other byte).
fn intrinsic_gas(input: &[u8]) -> u64 {
    let nonzero = input.iter().filter(|b| **b != 0).count() as u64;
    TRANSFER_GAS + nonzero * 16 + (input.len() as u64 - nonzero) * 4
}

/// Gas a call would use, or why it cannot run without an EVM.
fn estimate(request: &TransactionRequest) -> Result<u64, RpcError> {
    let to = match request.to {
        Some(TxKind::Call(to)) => to,
        _ => {
            return Err(RpcError::Server(
                "contract creation is not supported: this chain has no EVM".into(),
            ));
        }
    };
    let empty = Bytes::new();
    let input = request.input.input().unwrap_or(&empty);
    if to == STAKING_ADDRESS {
        IStaking::IStakingCalls::abi_decode(input).map_err(|e| {
            RpcError::Server(format!(
                "execution reverted: unknown or malformed staking call: {e}"
            ))
        })?;
        return Ok(intrinsic_gas(input) + STAKING_CALL_GAS);
    }
    if !input.is_empty() {
        return Err(RpcError::Server(format!(
            "calls with data are supported only to the staking contract {STAKING_ADDRESS}: this chain has no EVM"
        )));
    }
    Ok(TRANSFER_GAS)
}

/// Routes a call to its handler. Returns the result as JSON text.
pub(crate) fn call(state: &RpcState, method: &str, params: &Value) -> Result<String, RpcError> {
    let p = Params::new(params)?;
    match method {
        "web3_clientVersion" => {
            p.at_most(0)?;
            json(&format!(
                "luxtensor/v{}/{}-{}/rust",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH
            ))
        }
        "web3_sha3" => {
            p.at_most(1)?;
            let data: Bytes = p.required(0)?;
            json(&alloy_primitives::keccak256(&data))
        }
        "net_version" => {
            p.at_most(0)?;
            json(&state.spec.chain_id.to_string())
        }
        "net_listening" => {
            p.at_most(0)?;
            json(&true)
        }
        "net_peerCount" => {
            p.at_most(0)?;
            json(&U64::from(state.node.peer_count()))
        }
        "eth_chainId" => {
            p.at_most(0)?;
            json(&U64::from(state.spec.chain_id))
        }
        "eth_blockNumber" => {
            p.at_most(0)?;
            json(&U64::from(state.latest().0))
        }
        "eth_accounts" => {
            p.at_most(0)?;
            json(&Vec::<Address>::new())
        }
        "eth_syncing" => {
            p.at_most(0)?;
            let status = match state.node.sync_status() {
                None => SyncStatus::None,
                Some(s) => SyncStatus::Info(Box::new(SyncInfo {
                    starting_block: U256::from(s.starting),
                    current_block: U256::from(s.current),
                    highest_block: U256::from(s.highest),
                    warp_chunks_amount: None,
                    warp_chunks_processed: None,
                    stages: None,
                })),
            };
            json(&status)
        }
        "eth_gasPrice" => {
            p.at_most(0)?;
            let base = next_base_fee(state.read().head());
            json(&U256::from(
                u128::from(base) + state.limits.default_priority_fee,
            ))
        }
        "eth_maxPriorityFeePerGas" => {
            p.at_most(0)?;
            json(&U256::from(state.limits.default_priority_fee))
        }
        "eth_feeHistory" => fee_history(state, &p),
        "eth_getBlockByNumber" => {
            p.at_most(2)?;
            let tag: BlockNumberOrTag = p.required(0)?;
            let full: bool = p.required(1)?;
            block_or_null(state, BlockId::Number(tag), full)
        }
        "eth_getBlockByHash" => {
            p.at_most(2)?;
            let hash: B256 = p.required(0)?;
            let full: bool = p.required(1)?;
            block_or_null(state, BlockId::from(hash), full)
        }
        "eth_getBlockTransactionCountByNumber" | "eth_getBlockTransactionCountByHash" => {
            p.at_most(1)?;
            let id = match method.ends_with("ByHash") {
                true => BlockId::from(p.required::<B256>(0)?),
                false => BlockId::Number(p.required(0)?),
            };
            let chain = state.read();
            match load_block(state, &chain, id)? {
                Some(block) => json(&U64::from(block.transactions.len())),
                None => Ok("null".into()),
            }
        }
        "eth_getUncleCountByBlockNumber" | "eth_getUncleCountByBlockHash" => {
            p.at_most(1)?;
            json(&U64::ZERO)
        }
        "eth_getBlockReceipts" => {
            p.at_most(1)?;
            let id: BlockId = p.required(0)?;
            let chain = state.read();
            let Some(block) = load_block(state, &chain, id)? else {
                return Ok("null".into());
            };
            let receipts = chain.store().receipts(&block.hash())?.unwrap_or_default();
            json(&rpc_receipts(state, &block, &receipts)?)
        }
        "eth_getTransactionByHash" => {
            p.at_most(1)?;
            let hash: B256 = p.required(0)?;
            let chain = state.read();
            if let Some((block_hash, index)) = chain.store().transaction_location(&hash)? {
                let block = chain.store().block(&block_hash)?.ok_or_else(|| {
                    RpcError::Internal(format!("indexed block {block_hash} is missing"))
                })?;
                return transaction_at(state, &block, index as usize);
            }
            drop(chain);
            match state
                .node
                .pending_transactions()
                .into_iter()
                .find(|t| t.hash() == hash)
            {
                Some(tx) => {
                    let sender = state
                        .caches
                        .sender(&tx)
                        .map_err(|e| RpcError::Internal(e.to_string()))?;
                    json(&rpc_transaction(&tx, sender, None))
                }
                None => Ok("null".into()),
            }
        }
        "eth_getTransactionByBlockNumberAndIndex" | "eth_getTransactionByBlockHashAndIndex" => {
            p.at_most(2)?;
            let id = match method.contains("ByBlockHash") {
                true => BlockId::from(p.required::<B256>(0)?),
                false => BlockId::Number(p.required(0)?),
            };
            let index: U64 = p.required(1)?;
            let chain = state.read();
            match load_block(state, &chain, id)? {
                Some(block) => transaction_at(state, &block, index.saturating_to()),
                None => Ok("null".into()),
            }
        }
        "eth_getTransactionReceipt" => {
            p.at_most(1)?;
            let hash: B256 = p.required(0)?;
            let chain = state.read();
            let Some((block_hash, index)) = chain.store().transaction_location(&hash)? else {
                return Ok("null".into());
            };
            let block = chain.store().block(&block_hash)?.ok_or_else(|| {
                RpcError::Internal(format!("indexed block {block_hash} is missing"))
            })?;
            let receipts = chain.store().receipts(&block_hash)?.unwrap_or_default();
            drop(chain);
            let all = rpc_receipts(state, &block, &receipts)?;
            match all.into_iter().nth(index as usize) {
                Some(r) => json(&r),
                None => Err(RpcError::Internal(format!(
                    "receipt {index} of {block_hash} is missing"
                ))),
            }
        }
        "eth_getBalance" | "eth_getTransactionCount" | "eth_getCode" => {
            p.at_most(2)?;
            let address: Address = p.required(0)?;
            let id: Option<BlockId> = p.optional(1)?;
            let pending = matches!(id, Some(BlockId::Number(BlockNumberOrTag::Pending)));
            require_head_state(state, id)?;
            let account = state.read().state().account(&address);
            match method {
                "eth_getBalance" => json(&account.balance),
                "eth_getCode" => json(&match address {
                    STAKING_ADDRESS => Bytes::copy_from_slice(&STAKING_CODE),
                    _ => Bytes::new(),
                }),
                _ => {
                    let mut nonce = account.nonce;
                    if pending {
                        let mut nonces: Vec<u64> = state
                            .node
                            .pending_transactions()
                            .iter()
                            .filter(|t| state.caches.sender(t).is_ok_and(|s| s == address))
                            .map(|t| t.nonce())
                            .collect();
                        nonces.sort_unstable();
                        for n in nonces {
                            if n == nonce {
                                nonce += 1;
                            }
                        }
                    }
                    json(&U64::from(nonce))
                }
            }
        }
        "eth_getStorageAt" => {
            p.at_most(3)?;
            let _address: Address = p.required(0)?;
            let _slot: U256 = p.required(1)?;
            let id: Option<BlockId> = p.optional(2)?;
            require_head_state(state, id)?;
            json(&B256::ZERO)
        }
        "eth_getProof" => {
            p.at_most(3)?;
            let address: Address = p.required(0)?;
            let keys: Vec<B256> = p.required(1)?;
            let id: Option<BlockId> = p.optional(2)?;
            require_head_state(state, id)?;
            if address == STAKING_ADDRESS && !keys.is_empty() {
                return Err(RpcError::Server(
                    "the staking contract's storage is not a trie: read it with lux_getValidatorSet".into(),
                ));
            }
            // The trie brings itself up to date on a proof, so this needs the write lock.
            let proof = state
                .chain
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .account_proof(address);
            json(&EIP1186AccountProofResponse {
                address,
                balance: proof.account.balance,
                code_hash: proof.account.code_hash,
                nonce: proof.account.nonce,
                storage_hash: proof.account.storage_root,
                account_proof: proof.proof,
                // Accounts other than the staking contract have empty storage:
                // every slot is zero, proven by the empty storage root itself.
                storage_proof: keys
                    .into_iter()
                    .map(|key| EIP1186StorageProof {
                        key: key.into(),
                        value: U256::ZERO,
                        proof: vec![],
                    })
                    .collect(),
            })
        }
        "eth_estimateGas" => {
            p.at_most(3)?;
            let request: TransactionRequest = p.required(0)?;
            json(&U64::from(estimate(&request)?))
        }
        "eth_call" => {
            p.at_most(4)?;
            let request: TransactionRequest = p.required(0)?;
            let id: Option<BlockId> = p.optional(1)?;
            require_head_state(state, id)?;
            estimate(&request)?;
            if request.to == Some(TxKind::Call(STAKING_ADDRESS)) {
                return Err(RpcError::Server(
                    "eth_call to the staking contract is not supported: it has no view functions (read the set with lux_getValidatorSet); send a transaction instead".into(),
                ));
            }
            json(&Bytes::new()) // a call to an account without code returns nothing, as in geth
        }
        "eth_sendRawTransaction" => {
            p.at_most(1)?;
            let raw: Bytes = p.required(0)?;
            let tx = SignedTransaction::decode_2718(&raw)
                .map_err(|e| RpcError::Server(e.to_string()))?;
            tx.check_chain_id(state.spec.chain_id)
                .map_err(|e| RpcError::Server(e.to_string()))?;
            state
                .caches
                .sender(&tx)
                .map_err(|e| RpcError::Server(e.to_string()))?;
            let hash = state
                .node
                .submit_transaction(tx)
                .map_err(RpcError::Server)?;
            json(&hash)
        }
        "eth_getLogs" => {
            p.at_most(1)?;
            let filter = parse_filter(p.get(0).ok_or_else(|| {
                RpcError::InvalidParams("missing value for required argument 0".into())
            })?)?;
            json(&get_logs(state, &filter)?)
        }
        "eth_newFilter" => {
            p.at_most(1)?;
            let filter = parse_filter(p.get(0).ok_or_else(|| {
                RpcError::InvalidParams("missing value for required argument 0".into())
            })?)?;
            let id = state.broadcaster.filters().install(
                FilterKind::Logs(Box::new(filter), Default::default()),
                Instant::now(),
            )?;
            json(&id)
        }
        "eth_newBlockFilter" | "eth_newPendingTransactionFilter" => {
            p.at_most(0)?;
            let kind = match method {
                "eth_newBlockFilter" => FilterKind::Blocks(Default::default()),
                _ => FilterKind::Pending(Default::default()),
            };
            json(&state.broadcaster.filters().install(kind, Instant::now())?)
        }
        "eth_getFilterChanges" => {
            p.at_most(1)?;
            let id: String = p.required(0)?;
            let changes = state.broadcaster.filters().changes(&id, Instant::now())?;
            match changes {
                FilterChanges::Hashes(h) => json(&h),
                FilterChanges::Logs(l) => json(&l),
            }
        }
        "eth_getFilterLogs" => {
            p.at_most(1)?;
            let id: String = p.required(0)?;
            let filter = state
                .broadcaster
                .filters()
                .log_filter(&id, Instant::now())?;
            json(&get_logs(state, &filter)?)
        }
        "eth_uninstallFilter" => {
            p.at_most(1)?;
            let id: String = p.required(0)?;
            json(&state.broadcaster.filters().uninstall(&id))
        }
        "eth_subscribe" | "eth_unsubscribe" => Err(RpcError::MethodNotFound(
            "notifications not supported".into(),
        )),
        m if m.starts_with("lux_") => super::lux::call(state, m, &p),
        other => Err(RpcError::MethodNotFound(format!(
            "the method {other} does not exist/is not available"
        ))),
    }
}

fn transaction_at(state: &RpcState, block: &Block, index: usize) -> Result<String, RpcError> {
    let Some(tx) = block.transactions.get(index) else {
        return Ok("null".into());
    };
    let sender = state
        .caches
        .sender(tx)
        .map_err(|e| RpcError::Internal(format!("stored transaction: {e}")))?;
    json(&rpc_transaction(
        tx,
        sender,
        Some(TxLocation::new(block, index)),
    ))
}

/// `eth_getLogs` over a bounded range of the canonical chain.
pub(crate) fn get_logs(state: &RpcState, filter: &Filter) -> Result<Vec<RpcLog>, RpcError> {
    let chain = state.read();
    let blocks: Vec<Block> = match filter.get_block_hash() {
        Some(hash) => match chain.store().block(&hash)? {
            Some(block) => vec![block],
            None => return Err(RpcError::Server("unknown block".into())),
        },
        None => {
            let resolve = |tag: Option<&BlockNumberOrTag>| -> Result<u64, RpcError> {
                let tag = tag.copied().unwrap_or(BlockNumberOrTag::Latest);
                if tag.is_pending() {
                    return Err(RpcError::InvalidParams(
                        "pending logs are not supported".into(),
                    ));
                }
                Ok(match tag {
                    BlockNumberOrTag::Number(n) => n.min(state.latest().0),
                    other => resolve_number(state, other).unwrap_or_default(),
                })
            };
            let from = resolve(filter.block_option.get_from_block())?;
            let to = resolve(filter.block_option.get_to_block())?;
            if from > to {
                return Err(RpcError::InvalidParams("invalid block range params".into()));
            }
            let span = to - from + 1;
            if span > state.limits.max_logs_block_range {
                return Err(RpcError::LimitExceeded(format!(
                    "block range too large: {span} blocks, the limit is {}; query a smaller range",
                    state.limits.max_logs_block_range
                )));
            }
            let mut blocks = Vec::new();
            for n in from..=to {
                if let Some(block) = chain.store().block_by_number(n)?
                    && filter.matches_bloom(block.header.logs_bloom)
                {
                    blocks.push(block);
                }
            }
            blocks
        }
    };
    let mut out = Vec::new();
    for block in &blocks {
        let receipts = chain.store().receipts(&block.hash())?.unwrap_or_default();
        for log in block_logs(block, &receipts, false) {
            if filter.matches(&log.inner) {
                if out.len() >= state.limits.max_logs {
                    return Err(RpcError::LimitExceeded(format!(
                        "query returned more than {} results; query a smaller range",
                        state.limits.max_logs
                    )));
                }
                out.push(log);
            }
        }
    }
    Ok(out)
}

/// Parses a quantity given as hex string or JSON number (geth accepts both for block counts).
fn hex_or_decimal(value: Option<&Value>, index: usize) -> Result<u64, RpcError> {
    let bad = || RpcError::InvalidParams(format!("invalid argument {index}: expected a quantity"));
    match value {
        None => Err(RpcError::InvalidParams(format!(
            "missing value for required argument {index}"
        ))),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(bad),
        Some(Value::String(s)) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| bad()),
            None => s.parse().map_err(|_| bad()),
        },
        Some(_) => Err(bad()),
    }
}

fn fee_history(state: &RpcState, p: &Params<'_>) -> Result<String, RpcError> {
    p.at_most(3)?;
    let count = hex_or_decimal(p.get(0), 0)?;
    let newest: BlockNumberOrTag = p.required(1)?;
    let percentiles: Option<Vec<f64>> = p.optional(2)?;
    if let Some(ps) = &percentiles {
        luxtensor_light::fee::check_reward_percentiles(ps)
            .map_err(|e| RpcError::InvalidParams(e.to_string()))?;
    }
    let Some(newest) = resolve_number(state, newest) else {
        return Err(RpcError::InvalidParams(
            "requested block is beyond the head".into(),
        ));
    };
    let count = count.min(state.limits.max_fee_history).min(newest + 1);
    if count == 0 {
        return json(&FeeHistory::default());
    }
    let oldest = newest + 1 - count;
    let chain = state.read();
    let mut history = FeeHistory {
        oldest_block: oldest,
        reward: percentiles.as_ref().map(|_| Vec::new()),
        ..Default::default()
    };
    let mut last = None;
    for n in oldest..=newest {
        let block = chain
            .store()
            .block_by_number(n)?
            .ok_or_else(|| RpcError::Internal(format!("canonical block {n} is missing")))?;
        let h = &block.header;
        history
            .base_fee_per_gas
            .push(u128::from(h.base_fee_per_gas));
        history
            .gas_used_ratio
            .push(h.gas_used as f64 / h.gas_limit.max(1) as f64);
        if let (Some(ps), Some(rewards)) = (&percentiles, &mut history.reward) {
            let receipts = chain.store().receipts(&block.hash())?.unwrap_or_default();
            rewards.push(block_rewards(&block, &receipts, ps));
        }
        last = Some(block.header.header.clone());
    }
    let last = last.expect("count > 0");
    history
        .base_fee_per_gas
        .push(u128::from(next_base_fee(&last)));
    json(&history)
}

/// The tips at the given gas-weighted percentiles of one block (as geth computes them).
fn block_rewards(block: &Block, receipts: &[Receipt], percentiles: &[f64]) -> Vec<u128> {
    let base = block.header.base_fee_per_gas;
    let mut previous = 0;
    let tips = block
        .transactions
        .iter()
        .zip(receipts)
        .map(|(tx, r)| {
            let gas = r.cumulative_gas_used().saturating_sub(previous);
            previous = r.cumulative_gas_used();
            let tip = tx
                .envelope()
                .effective_tip_per_gas(base)
                .unwrap_or_default();
            (tip, gas)
        })
        .collect();
    luxtensor_light::fee::reward_percentiles(tips, percentiles)
}
