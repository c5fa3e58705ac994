//! The `lux_` namespace: what light clients and operators need beyond
//! Ethereum's methods. Binary objects are returned as `0x` hex of their
//! canonical RLP (the same bytes the light client decodes and verifies),
//! with a JSON view beside them where that helps a human.

use super::eth::{self, QcJson, load_block, rpc_header};
use super::jsonrpc::{Params, json};
use super::{RpcError, RpcState};
use crate::Importer;
use crate::staking::STAKING_ADDRESS;
use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{Address, B256, Bytes, U64, U256};
use luxtensor_light::client::EpochUpdate;
use luxtensor_light::{Block, CertifiedHeader, Evidence, ValidatorSet, codec};
use serde::Serialize;
use serde_json::Value;

/// The staking contract's ABI (see `crate::staking::IStaking`), as JSON.
pub(crate) const STAKING_ABI: &str = r#"[
{"type":"function","name":"stake","stateMutability":"payable","inputs":[{"name":"blsPubkey","type":"bytes"},{"name":"proofOfPossession","type":"bytes"}],"outputs":[]},
{"type":"function","name":"requestExit","stateMutability":"nonpayable","inputs":[],"outputs":[]},
{"type":"event","name":"StakeRequested","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"blsPubkey","type":"bytes","indexed":false},{"name":"amount","type":"uint256","indexed":false},{"name":"activationEpoch","type":"uint64","indexed":false}]},
{"type":"event","name":"ExitRequested","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"exitEpoch","type":"uint64","indexed":false}]},
{"type":"event","name":"ValidatorActivated","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"epoch","type":"uint64","indexed":false}]},
{"type":"event","name":"ValidatorExited","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"epoch","type":"uint64","indexed":false}]},
{"type":"event","name":"ValidatorSlashed","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"amount","type":"uint256","indexed":false},{"name":"epoch","type":"uint64","indexed":false}]},
{"type":"event","name":"StakeWithdrawn","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"amount","type":"uint256","indexed":false},{"name":"epoch","type":"uint64","indexed":false}]}
]"#;

/// Most bytes of a submitted piece of evidence (two headers or two votes).
const MAX_EVIDENCE_BYTES: usize = 2 * codec::MAX_HEADER_BYTES + 1024;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidatorJson {
    owner: Address,
    public_key: Bytes,
    stake: U256,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SetJson {
    epoch: U64,
    hash: B256,
    total_stake: U256,
    validators: Vec<ValidatorJson>,
    /// RLP of the set.
    rlp: Bytes,
}

fn set_json(epoch: u64, set: &ValidatorSet) -> SetJson {
    SetJson {
        epoch: U64::from(epoch),
        hash: set.hash(),
        total_stake: set.total_stake(),
        validators: set
            .validators()
            .iter()
            .map(|v| ValidatorJson {
                owner: v.owner,
                public_key: Bytes::copy_from_slice(v.public_key.as_slice()),
                stake: v.stake,
            })
            .collect(),
        rlp: set.encode_to_vec().into(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CertifiedJson {
    header: eth::RpcHeader,
    qc: QcJson,
    /// RLP of the certified header (signed header + QC).
    rlp: Bytes,
}

fn certified_json(
    state: &RpcState,
    chain: &Importer,
    certified: &CertifiedHeader,
) -> CertifiedJson {
    let block = Block {
        header: certified.header.clone(),
        transactions: vec![],
        evidence: vec![],
    };
    let miner = state.caches.miner(chain, &certified.header.header);
    CertifiedJson {
        header: rpc_header(&block, miner),
        qc: QcJson::from(&certified.qc),
        rlp: alloy_rlp::encode(certified).into(),
    }
}

/// Parses an epoch given as quantity or JSON number.
fn epoch_param(p: &Params<'_>, index: usize) -> Result<u64, RpcError> {
    let bad = || {
        RpcError::InvalidParams(format!(
            "invalid argument {index}: expected an epoch number"
        ))
    };
    match p.get(index) {
        None => Err(RpcError::InvalidParams(format!(
            "missing value for required argument {index}"
        ))),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(bad),
        Some(v @ Value::String(_)) => serde_json::from_value::<U64>(v.clone())
            .map(|n| n.to::<u64>())
            .map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// The block certified by a QC the store holds, at or below `block`: the
/// head itself has no QC until its child is imported.
fn certified_at_or_below(
    chain: &Importer,
    mut block: Block,
    walk_back: bool,
) -> Result<Option<CertifiedHeader>, RpcError> {
    for _ in 0..4 {
        if let Some(qc) = chain.store().qc(&block.hash())? {
            return Ok(Some(CertifiedHeader {
                header: block.header,
                qc,
            }));
        }
        if !walk_back || block.header.is_genesis() {
            return Ok(None);
        }
        match chain.store().block(&block.header.parent_hash)? {
            Some(parent) => block = parent,
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// The number of the first canonical block whose epoch is at least `epoch`.
fn first_block_of_epoch(chain: &Importer, epoch: u64) -> Result<Option<u64>, RpcError> {
    let head = chain.head();
    if head.epoch < epoch {
        return Ok(None);
    }
    let (mut lo, mut hi) = (0, head.number);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let block = chain
            .store()
            .block_by_number(mid)?
            .ok_or_else(|| RpcError::Internal(format!("canonical block {mid} is missing")))?;
        if block.header.epoch >= epoch {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(Some(lo))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateJson {
    epoch: U64,
    /// Readable views, only when asked for (`verbose`): the RLP alone keeps
    /// the bytes per epoch in proportion to what changed in the set.
    #[serde(skip_serializing_if = "Option::is_none")]
    certified_header: Option<CertifiedJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_validator_set: Option<SetJson>,
    /// RLP of the light client's `EpochUpdate` (`[certified_header, next_set]`).
    rlp: Bytes,
}

/// The hand-over of epoch `e`: the last block of `e` (certified by set(e)
/// in the first block of `e + 1`) and set(e + 1).
fn epoch_update(
    state: &RpcState,
    chain: &Importer,
    epoch: u64,
    verbose: bool,
) -> Result<Option<UpdateJson>, RpcError> {
    let Some(first_next) = first_block_of_epoch(chain, epoch + 1)? else {
        return Ok(None);
    };
    let Some(last) = first_next.checked_sub(1) else {
        return Ok(None);
    };
    let block = chain
        .store()
        .block_by_number(last)?
        .ok_or_else(|| RpcError::Internal(format!("canonical block {last} is missing")))?;
    if block.header.epoch != epoch {
        return Ok(None); // no block of that epoch (cannot happen on a valid chain)
    }
    let Some(certified) = certified_at_or_below(chain, block, false)? else {
        return Ok(None);
    };
    let (Some(set_e), Some(set_next)) = (
        chain.store().validator_set(epoch)?,
        chain.store().validator_set(epoch + 1)?,
    ) else {
        return Ok(None);
    };
    let update = EpochUpdate::new(certified.clone(), &set_e, &set_next);
    Ok(Some(UpdateJson {
        epoch: U64::from(epoch),
        certified_header: verbose.then(|| certified_json(state, chain, &certified)),
        next_validator_set: verbose.then(|| set_json(epoch + 1, &set_next)),
        rlp: update.encode_to_vec().into(),
    }))
}

/// Routes a `lux_` call.
pub(crate) fn call(state: &RpcState, method: &str, p: &Params<'_>) -> Result<String, RpcError> {
    match method {
        "lux_getValidatorSet" => {
            p.at_most(1)?;
            let epoch = epoch_param(p, 0)?;
            let chain = state.read();
            match chain.store().validator_set(epoch)? {
                Some(set) => json(&set_json(epoch, &set)),
                None => Ok("null".into()),
            }
        }
        "lux_getCertifiedHeader" => {
            p.at_most(1)?;
            let id: BlockId = p.required(0)?;
            let walk_back = matches!(
                id,
                BlockId::Number(
                    BlockNumberOrTag::Latest
                        | BlockNumberOrTag::Safe
                        | BlockNumberOrTag::Finalized
                        | BlockNumberOrTag::Pending
                )
            );
            let chain = state.read();
            let Some(block) = load_block(state, &chain, id)? else {
                return Ok("null".into());
            };
            match certified_at_or_below(&chain, block, walk_back)? {
                Some(certified) => json(&certified_json(state, &chain, &certified)),
                None => Ok("null".into()),
            }
        }
        "lux_getEpochUpdates" => {
            p.at_most(3)?;
            let from = epoch_param(p, 0)?;
            let count = epoch_param(p, 1)?;
            let verbose = match p.get(2) {
                None | Some(Value::Null) => false,
                Some(Value::Bool(verbose)) => *verbose,
                Some(_) => {
                    return Err(RpcError::InvalidParams(
                        "invalid argument 2: expected a boolean (verbose)".into(),
                    ));
                }
            };
            if count > state.limits.max_epoch_updates {
                return Err(RpcError::LimitExceeded(format!(
                    "at most {} epoch updates per call, {count} asked",
                    state.limits.max_epoch_updates
                )));
            }
            let chain = state.read();
            let mut updates = Vec::new();
            for epoch in from..from.saturating_add(count) {
                match epoch_update(state, &chain, epoch, verbose)? {
                    Some(update) => updates.push(update),
                    None => break,
                }
            }
            json(&updates)
        }
        "lux_getRawBlock" | "lux_getRawHeader" => {
            p.at_most(1)?;
            let id: BlockId = p.required(0)?;
            let chain = state.read();
            match load_block(state, &chain, id)? {
                Some(block) if method == "lux_getRawBlock" => {
                    json(&Bytes::from(alloy_rlp::encode(&block)))
                }
                Some(block) => json(&Bytes::from(alloy_rlp::encode(&block.header))),
                None => Ok("null".into()),
            }
        }
        "lux_stakingContract" => {
            p.at_most(0)?;
            let abi: Value = serde_json::from_str(STAKING_ABI).expect("the ABI constant is JSON");
            json(&serde_json::json!({ "address": STAKING_ADDRESS, "abi": abi }))
        }
        "lux_rotationStats" => {
            p.at_most(0)?;
            let chain = state.read();
            let rotation = chain.state().rotation();
            let stats = rotation.get_stats();
            let config = rotation.config();
            json(&serde_json::json!({
                "currentEpoch": U64::from(stats.current_epoch),
                "activeValidators": U64::from(stats.active_validators),
                "totalActiveStake": stats.total_active_stake,
                "pendingActivations": U64::from(stats.pending_activations),
                "pendingExits": U64::from(stats.pending_exits),
                "pendingWithdrawals": U64::from(stats.pending_withdrawals),
                "currentSetHash": rotation.current_set_hash(),
                "nextSetHash": rotation.next_set_hash(),
                "epochLength": U64::from(config.epoch_length),
                "maxValidators": U64::from(config.max_validators),
                "minStake": config.min_stake,
            }))
        }
        "lux_submitEvidence" => {
            p.at_most(1)?;
            let raw: Bytes = p.required(0)?;
            let evidence: Evidence = codec::decode_exact("evidence", &raw, MAX_EVIDENCE_BYTES)
                .map_err(|e| RpcError::InvalidParams(format!("invalid argument 0: {e}")))?;
            let epoch = evidence.epoch();
            let set = state.read().store().validator_set(epoch)?.ok_or_else(|| {
                RpcError::Server(format!(
                    "evidence names epoch {epoch}, for which this node knows no validator set"
                ))
            })?;
            let offender = evidence
                .verify(&set, state.spec.chain_id)
                .map_err(|e| RpcError::Server(format!("invalid evidence: {e}")))?;
            state
                .node
                .submit_evidence(evidence)
                .map_err(RpcError::Server)?;
            json(&serde_json::json!({ "offender": offender, "epoch": U64::from(epoch) }))
        }
        other => Err(RpcError::MethodNotFound(format!(
            "the method {other} does not exist/is not available"
        ))),
    }
}
