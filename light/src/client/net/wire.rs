//! The JSON shapes the client reads from a full node's RPC (see
//! `docs/rpc.md`): `newHeads` notifications, `lux_getCertifiedHeader`,
//! `lux_getEpochUpdates` and `lux_getValidatorSet`. Binary objects are read
//! from their `rlp` field and decoded with the core's size-capped decoders;
//! a `newHeads` header is rebuilt from its fields and must hash to its `hash`.

use crate::bls::BlsSignature;
use crate::client::rules::Violation;
use crate::codec::DecodeError;
use crate::header::{Header, SignedHeader};
use crate::qc::{QuorumCert, SignerBitfield};
use crate::validator::ValidatorSet;
use alloy_primitives::{B256, Bloom, Bytes, U64};
use serde::Deserialize;
use serde_json::value::RawValue;

/// One JSON-RPC message from an upstream: a response (`id`) or a
/// subscription notification (`method` = `eth_subscription`).
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// The request id of a response.
    #[serde(default)]
    pub id: Option<u64>,
    /// The method of a notification.
    #[serde(default)]
    pub method: Option<String>,
    /// A notification's parameters.
    #[serde(default, borrow)]
    pub params: Option<Notification<'a>>,
    /// A response's result.
    #[serde(default, borrow)]
    pub result: Option<&'a RawValue>,
    /// A response's error.
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
}

/// `params` of an `eth_subscription` notification.
#[derive(Debug, Deserialize)]
pub struct Notification<'a> {
    /// The subscription id.
    #[serde(default, borrow)]
    pub subscription: Option<&'a RawValue>,
    /// The payload.
    #[serde(borrow)]
    pub result: &'a RawValue,
}

/// A quorum certificate as JSON.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QcJson {
    slot: U64,
    block_hash: B256,
    signers: Bytes,
    signature: BlsSignature,
}

impl From<QcJson> for QuorumCert {
    fn from(q: QcJson) -> Self {
        Self {
            slot: q.slot.to(),
            block_hash: q.block_hash,
            signers: SignerBitfield::from_bytes(q.signers),
            signature: q.signature,
        }
    }
}

/// The fields of a `newHeads` header that the block hash commits to.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadJson {
    hash: B256,
    parent_hash: B256,
    number: U64,
    slot: U64,
    epoch: U64,
    timestamp: U64,
    proposer_index: U64,
    state_root: B256,
    transactions_root: B256,
    receipts_root: B256,
    evidence_hash: B256,
    logs_bloom: Bloom,
    gas_limit: U64,
    gas_used: U64,
    base_fee_per_gas: U64,
    validator_set_hash: B256,
    next_validator_set_hash: B256,
    parent_qc: QcJson,
    proposer_signature: BlsSignature,
}

fn malformed(what: &'static str, reason: impl ToString) -> Violation {
    Violation::Malformed(DecodeError::Invalid {
        what,
        reason: reason.to_string(),
    })
}

/// Rebuilds the signed header of a `newHeads` notification. Refuses a
/// header whose fields do not hash to its `hash` field.
pub fn parse_new_head(json: &RawValue) -> Result<SignedHeader, Violation> {
    let h: HeadJson =
        serde_json::from_str(json.get()).map_err(|e| malformed("newHeads header", e))?;
    let proposer_index = u32::try_from(h.proposer_index.to::<u64>())
        .map_err(|_| malformed("newHeads header", "proposerIndex is over u32"))?;
    let header = Header {
        parent_hash: h.parent_hash,
        number: h.number.to(),
        slot: h.slot.to(),
        epoch: h.epoch.to(),
        timestamp: h.timestamp.to(),
        proposer_index,
        state_root: h.state_root,
        transactions_root: h.transactions_root,
        receipts_root: h.receipts_root,
        evidence_hash: h.evidence_hash,
        logs_bloom: h.logs_bloom,
        gas_limit: h.gas_limit.to(),
        gas_used: h.gas_used.to(),
        base_fee_per_gas: h.base_fee_per_gas.to(),
        validator_set_hash: h.validator_set_hash,
        next_validator_set_hash: h.next_validator_set_hash,
        parent_qc: h.parent_qc.into(),
    };
    if header.hash() != h.hash {
        return Err(malformed(
            "newHeads header",
            format!(
                "its fields hash to {}, the notification says {}",
                header.hash(),
                h.hash
            ),
        ));
    }
    Ok(SignedHeader {
        header,
        proposer_signature: h.proposer_signature,
    })
}

#[derive(Deserialize)]
struct RlpOnly {
    rlp: Bytes,
}

/// A `lux_getCertifiedHeader` result: the RLP of the certified header
/// (`None` for `null`), for the core's size-capped decoder.
pub fn parse_certified(json: &RawValue) -> Result<Option<Bytes>, String> {
    let parsed: Option<RlpOnly> = serde_json::from_str(json.get())
        .map_err(|e| format!("certified header is not in the node's shape: {e}"))?;
    Ok(parsed.map(|p| p.rlp))
}

/// A `lux_getEpochUpdates` result: the RLP of each update, for the core's decoder.
pub fn parse_updates(json: &RawValue) -> Result<Vec<Bytes>, String> {
    let parsed: Vec<RlpOnly> = serde_json::from_str(json.get())
        .map_err(|e| format!("epoch updates are not in the node's shape: {e}"))?;
    Ok(parsed.into_iter().map(|p| p.rlp).collect())
}

/// The RLP page (a list) of updates given one by one, as
/// [`LightClient::handle_update_bytes`](crate::client::LightClient::handle_update_bytes) reads it.
pub fn page_bytes(updates: &[Bytes]) -> Vec<u8> {
    let payload_length = updates.iter().map(|u| u.len()).sum();
    let mut out = Vec::with_capacity(payload_length + 9);
    alloy_rlp::Header {
        list: true,
        payload_length,
    }
    .encode(&mut out);
    for u in updates {
        out.extend_from_slice(u);
    }
    out
}

/// A `lux_getValidatorSet` result (`None` for `null`).
pub fn parse_set(json: &RawValue) -> Result<Option<ValidatorSet>, String> {
    let parsed: Option<RlpOnly> = serde_json::from_str(json.get())
        .map_err(|e| format!("validator set is not in the node's shape: {e}"))?;
    parsed
        .map(|p| ValidatorSet::decode(&p.rlp).map_err(|e| e.to_string()))
        .transpose()
}

/// The `newHeads` JSON of a signed header, in the node's shape (the
/// standard Ethereum header fields plus LuxTensor's); `miner` is the
/// proposer's owner. Used by test servers that stand in for a node.
pub fn new_head_json(header: &SignedHeader, miner: alloy_primitives::Address) -> serde_json::Value {
    let h = &header.header;
    let q = |v: u64| format!("{v:#x}");
    serde_json::json!({
        "hash": h.hash(),
        "parentHash": h.parent_hash,
        "sha3Uncles": "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",
        "miner": miner,
        "stateRoot": h.state_root,
        "transactionsRoot": h.transactions_root,
        "receiptsRoot": h.receipts_root,
        "logsBloom": h.logs_bloom,
        "difficulty": "0x0",
        "number": q(h.number),
        "gasLimit": q(h.gas_limit),
        "gasUsed": q(h.gas_used),
        "timestamp": q(h.timestamp),
        "extraData": "0x",
        "mixHash": B256::ZERO,
        "nonce": "0x0000000000000000",
        "baseFeePerGas": q(h.base_fee_per_gas),
        "slot": q(h.slot),
        "epoch": q(h.epoch),
        "proposerIndex": q(u64::from(h.proposer_index)),
        "evidenceHash": h.evidence_hash,
        "validatorSetHash": h.validator_set_hash,
        "nextValidatorSetHash": h.next_validator_set_hash,
        "parentQc": qc_json(&h.parent_qc),
        "proposerSignature": header.proposer_signature,
    })
}

/// A QC in the node's JSON shape.
pub fn qc_json(qc: &QuorumCert) -> serde_json::Value {
    serde_json::json!({
        "slot": format!("{:#x}", qc.slot),
        "blockHash": qc.block_hash,
        "signers": Bytes::copy_from_slice(qc.signers.as_bytes()),
        "signature": qc.signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain_spec::ChainSpec;

    #[test]
    fn a_new_head_round_trips_and_a_wrong_hash_is_refused() {
        let spec = ChainSpec::devnet(4);
        let genesis = spec.genesis_header();
        let header = Header {
            parent_hash: genesis.hash(),
            number: 1,
            slot: 1,
            gas_used: 7,
            ..genesis
        }
        .sign(&crate::chain_spec::devnet_validator_key(1), spec.chain_id);
        let json = new_head_json(&header, Default::default()).to_string();
        let raw: Box<RawValue> = serde_json::from_str(&json).unwrap();
        assert_eq!(parse_new_head(&raw).unwrap(), header);
        let tampered = json.replace("\"gasUsed\":\"0x7\"", "\"gasUsed\":\"0x8\"");
        let raw: Box<RawValue> = serde_json::from_str(&tampered).unwrap();
        let err = parse_new_head(&raw).unwrap_err();
        assert_eq!(err.name(), "malformed");
        assert!(err.to_string().contains("hash to"), "{err}");
    }

    #[test]
    fn rlp_fields_are_decoded_with_the_caps() {
        let raw: Box<RawValue> = serde_json::from_str("null").unwrap();
        assert_eq!(parse_certified(&raw), Ok(None));
        let raw: Box<RawValue> =
            serde_json::from_str(r#"[{"rlp":"0xc0"},{"rlp":"0x01"}]"#).unwrap();
        let updates = parse_updates(&raw).unwrap();
        assert_eq!(page_bytes(&updates), vec![0xc2, 0xc0, 0x01]);
        let raw: Box<RawValue> = serde_json::from_str(r#"[{"epoch":"0x1"}]"#).unwrap();
        assert!(parse_updates(&raw).is_err());
        let raw: Box<RawValue> = serde_json::from_str(r#"{"epoch":1}"#).unwrap();
        assert!(parse_set(&raw).is_err());
    }
}
