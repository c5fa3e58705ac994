//! Checks of what an upstream serves against light-client-verified headers
//! (sans-IO): the node's JSON shapes parsed back into the committed data,
//! hashed and compared with the header's roots. Every function returns a
//! [`VerifyError`] that names what did not match; the caller never serves
//! an answer that failed, demotes the upstream and asks another.
//!
//! Also builds the node's header JSON (`newHeads`, block headers) from a
//! verified header, so that the proxy's own notifications have exactly the
//! node's shape.

use alloy_consensus::EMPTY_OMMER_ROOT_HASH;
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, B64, B256, Bloom, Bytes, U64, U256, keccak256};
use alloy_rpc_types_eth::{EIP1186AccountProofResponse, Transaction as RpcTransaction};
use alloy_trie::{EMPTY_ROOT_HASH, KECCAK_EMPTY, Nibbles};
use luxtensor_light::client::proofs::{
    AccountProof, ProofError, verify_account_proof, verify_raw_transactions, verify_receipts,
};
use luxtensor_light::{
    BlsSignature, Header, QuorumCert, Receipt, SignedHeader, SignedTransaction, SignerBitfield,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why an upstream's answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not in the node's JSON shape.
    #[error("not in the node's shape ({what}): {reason}")]
    Shape {
        /// What was being read.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// A field disagrees with the verified data.
    #[error("{what}: verified {expected}, served {got}")]
    Mismatch {
        /// Which field.
        what: &'static str,
        /// What the verified data says.
        expected: String,
        /// What the upstream said.
        got: String,
    },
    /// A root or proof check failed.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// The upstream said a block the verified chain has does not exist.
    #[error("the upstream has no block {0}, which the verified chain has")]
    MissingBlock(String),
}

fn shape(what: &'static str) -> impl Fn(serde_json::Error) -> VerifyError {
    move |e| VerifyError::Shape {
        what,
        reason: e.to_string(),
    }
}

fn mismatch(what: &'static str, expected: impl ToString, got: impl ToString) -> VerifyError {
    VerifyError::Mismatch {
        what,
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

/// A quorum certificate as the node writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QcJson {
    slot: U64,
    block_hash: B256,
    signers: Bytes,
    signature: Bytes,
}

impl From<&QuorumCert> for QcJson {
    fn from(qc: &QuorumCert) -> Self {
        Self {
            slot: U64::from(qc.slot),
            block_hash: qc.block_hash,
            signers: Bytes::copy_from_slice(qc.signers.as_bytes()),
            signature: Bytes::copy_from_slice(qc.signature.as_slice()),
        }
    }
}

impl QcJson {
    fn to_qc(&self) -> Result<QuorumCert, VerifyError> {
        let signature =
            BlsSignature::try_from(self.signature.as_ref()).map_err(|e| VerifyError::Shape {
                what: "parentQc.signature",
                reason: format!("{e:?}"),
            })?;
        Ok(QuorumCert {
            slot: self.slot.to(),
            block_hash: self.block_hash,
            signers: SignerBitfield::from_bytes(self.signers.clone()),
            signature,
        })
    }
}

/// LuxTensor's header fields beside the standard ones (the node's shape).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct LuxHeader {
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

/// The node's header JSON (as `newHeads` sends it) for a verified header;
/// `miner` is the owner of the proposer (zero when the set is unknown).
pub fn header_json(header: &SignedHeader, miner: Address) -> Value {
    let h = &header.header;
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
    let rpc = alloy_rpc_types_eth::Header {
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
            proposer_signature: Bytes::copy_from_slice(header.proposer_signature.as_slice()),
        },
        total_difficulty: None,
        size: None,
    };
    serde_json::to_value(rpc).expect("a header serializes")
}

/// The fields of a header JSON that the block hash commits to.
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
    proposer_signature: Bytes,
}

/// Rebuilds the signed header of a header or block JSON; its fields must
/// hash to its `hash`.
pub fn header_from_json(json: &Value) -> Result<SignedHeader, VerifyError> {
    let h = HeadJson::deserialize(json).map_err(shape("header"))?;
    let proposer_index = u32::try_from(h.proposer_index.to::<u64>())
        .map_err(|_| mismatch("proposerIndex", "at most u32", h.proposer_index))?;
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
        parent_qc: h.parent_qc.to_qc()?,
    };
    if header.hash() != h.hash {
        return Err(mismatch("header hash of its fields", header.hash(), h.hash));
    }
    let proposer_signature =
        BlsSignature::try_from(h.proposer_signature.as_ref()).map_err(|e| VerifyError::Shape {
            what: "proposerSignature",
            reason: format!("{e:?}"),
        })?;
    Ok(SignedHeader {
        header,
        proposer_signature,
    })
}

/// A verified transaction of a block: its JSON and what it was checked to be.
#[derive(Debug, Clone)]
pub struct VerifiedTx {
    /// The node's JSON of the transaction (checked field by field).
    pub json: Value,
    /// Its hash.
    pub hash: B256,
    /// Its recovered sender.
    pub from: Address,
    /// Its recipient.
    pub to: Option<Address>,
    /// Effective gas price in the block.
    pub effective_gas_price: u128,
}

/// Checks a block JSON with full transactions against the verified
/// `header`: header fields, every transaction (hash, sender, position) and
/// the transactions root. Returns the checked transactions.
pub fn verify_block(json: &Value, header: &Header) -> Result<Vec<VerifiedTx>, VerifyError> {
    if json.is_null() {
        return Err(VerifyError::MissingBlock(header.hash().to_string()));
    }
    let served = header_from_json(json)?;
    if served.header != *header {
        return Err(mismatch("block hash", header.hash(), served.hash()));
    }
    let txs = json
        .get("transactions")
        .and_then(Value::as_array)
        .ok_or_else(|| mismatch("transactions", "a list of transactions", "none"))?;
    let hash = header.hash();
    let mut encodings = Vec::with_capacity(txs.len());
    let mut out = Vec::with_capacity(txs.len());
    for (index, tx_json) in txs.iter().enumerate() {
        let tx = verify_tx_json(tx_json)?;
        let rpc: RpcTransaction =
            RpcTransaction::deserialize(tx_json).map_err(shape("transaction"))?;
        if rpc.block_hash != Some(hash) {
            return Err(mismatch(
                "transaction blockHash",
                hash,
                format!("{:?}", rpc.block_hash),
            ));
        }
        if rpc.block_number != Some(header.number) {
            return Err(mismatch(
                "transaction blockNumber",
                header.number,
                format!("{:?}", rpc.block_number),
            ));
        }
        if rpc.transaction_index != Some(index as u64) {
            return Err(mismatch(
                "transactionIndex",
                index,
                format!("{:?}", rpc.transaction_index),
            ));
        }
        let effective = alloy_consensus::Transaction::effective_gas_price(
            tx.1.envelope(),
            Some(header.base_fee_per_gas),
        );
        encodings.push(tx.1.encoded_2718());
        out.push(VerifiedTx {
            json: tx_json.clone(),
            hash: tx.0,
            from: tx.2,
            to: tx.1.to(),
            effective_gas_price: effective,
        });
    }
    verify_raw_transactions(header, &encodings)?;
    Ok(out)
}

/// Checks one transaction JSON by itself: its `hash` is the hash of its
/// encoding and its `from` is the signer. Returns (hash, tx, sender).
pub fn verify_tx_json(json: &Value) -> Result<(B256, SignedTransaction, Address), VerifyError> {
    let rpc: RpcTransaction = RpcTransaction::deserialize(json).map_err(shape("transaction"))?;
    let claimed_hash: B256 = json
        .get("hash")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(shape("transaction hash"))?
        .ok_or_else(|| mismatch("transaction hash", "a hash", "none"))?;
    let encoded = rpc.inner.inner().encoded_2718();
    let tx = SignedTransaction::decode_2718(&encoded).map_err(|e| VerifyError::Shape {
        what: "transaction",
        reason: e.to_string(),
    })?;
    let hash = keccak256(&encoded);
    if hash != claimed_hash {
        return Err(mismatch("transaction hash", hash, claimed_hash));
    }
    let sender = tx.recover_sender().map_err(|e| VerifyError::Shape {
        what: "transaction signature",
        reason: e.to_string(),
    })?;
    if sender != rpc.inner.signer() {
        return Err(mismatch("transaction from", sender, rpc.inner.signer()));
    }
    Ok((hash, tx, sender))
}

/// A block JSON with full transactions turned into the hashes-only shape.
pub fn with_tx_hashes(mut block: Value, txs: &[VerifiedTx]) -> Value {
    if let Some(obj) = block.as_object_mut() {
        obj.insert(
            "transactions".into(),
            Value::Array(
                txs.iter()
                    .map(|t| Value::String(t.hash.to_string()))
                    .collect(),
            ),
        );
    }
    block
}

/// Checks a block's receipts JSON (`eth_getBlockReceipts`) against the
/// verified header (receipts root) and its verified transactions (hashes,
/// senders, positions, gas), and the logs' positions. Returns the receipts.
pub fn verify_block_receipts(
    json: &Value,
    header: &Header,
    txs: &[VerifiedTx],
) -> Result<Vec<Value>, VerifyError> {
    if json.is_null() {
        return Err(VerifyError::MissingBlock(header.hash().to_string()));
    }
    let list = json
        .as_array()
        .ok_or_else(|| mismatch("block receipts", "a list", "something else"))?;
    if list.len() != txs.len() {
        return Err(mismatch("number of receipts", txs.len(), list.len()));
    }
    let hash = header.hash();
    let mut consensus: Vec<Receipt> = Vec::with_capacity(list.len());
    let mut previous_gas = 0u64;
    let mut log_index = 0u64;
    for (i, (r_json, tx)) in list.iter().zip(txs).enumerate() {
        let r: alloy_rpc_types_eth::TransactionReceipt =
            alloy_rpc_types_eth::TransactionReceipt::deserialize(r_json)
                .map_err(shape("receipt"))?;
        let checks: [(&'static str, String, String); 7] = [
            (
                "receipt transactionHash",
                tx.hash.to_string(),
                r.transaction_hash.to_string(),
            ),
            (
                "receipt blockHash",
                format!("{hash:?}"),
                format!("{:?}", r.block_hash.unwrap_or_default()),
            ),
            (
                "receipt blockNumber",
                header.number.to_string(),
                r.block_number.unwrap_or(u64::MAX).to_string(),
            ),
            (
                "receipt transactionIndex",
                i.to_string(),
                r.transaction_index.unwrap_or(u64::MAX).to_string(),
            ),
            ("receipt from", tx.from.to_string(), r.from.to_string()),
            ("receipt to", format!("{:?}", tx.to), format!("{:?}", r.to)),
            (
                "receipt effectiveGasPrice",
                tx.effective_gas_price.to_string(),
                r.effective_gas_price.to_string(),
            ),
        ];
        for (what, expected, got) in checks {
            if expected != got {
                return Err(mismatch(what, expected, got));
            }
        }
        let cumulative = r.inner.cumulative_gas_used();
        if r.gas_used != cumulative.saturating_sub(previous_gas) {
            return Err(mismatch(
                "receipt gasUsed",
                cumulative.saturating_sub(previous_gas),
                r.gas_used,
            ));
        }
        previous_gas = cumulative;
        for log in r.inner.logs() {
            let ok = log.block_hash == Some(hash)
                && log.block_number == Some(header.number)
                && log.transaction_hash == Some(tx.hash)
                && log.transaction_index == Some(i as u64)
                && log.log_index == Some(log_index)
                && !log.removed;
            if !ok {
                return Err(mismatch(
                    "log position",
                    format!("block {hash}, tx {}, log index {log_index}", tx.hash),
                    format!("{:?}", log),
                ));
            }
            log_index += 1;
        }
        consensus.push(r.inner.map_logs(|l| l.inner));
    }
    verify_receipts(header, &consensus)?;
    Ok(list.clone())
}

/// The logs of verified receipts (in block order).
pub fn logs_of(receipts: &[Value]) -> Vec<alloy_rpc_types_eth::Log> {
    receipts
        .iter()
        .filter_map(|r| r.get("logs"))
        .filter_map(|l| Vec::<alloy_rpc_types_eth::Log>::deserialize(l).ok())
        .flatten()
        .collect()
}

/// An `eth_getProof` answer checked against a verified state root: the
/// account proof, and every storage proof against the proven storage root.
pub fn verify_proof(
    json: &Value,
    state_root: B256,
    address: Address,
    keys: &[B256],
) -> Result<EIP1186AccountProofResponse, VerifyError> {
    let proof = EIP1186AccountProofResponse::deserialize(json).map_err(shape("eth_getProof"))?;
    if proof.address != address {
        return Err(mismatch("proof address", address, proof.address));
    }
    let account = AccountProof {
        address,
        nonce: proof.nonce,
        balance: proof.balance,
        storage_root: proof.storage_hash,
        code_hash: proof.code_hash,
        proof: proof.account_proof.clone(),
    };
    verify_account_proof(state_root, &account)?;
    if proof.storage_proof.len() != keys.len() {
        return Err(mismatch(
            "number of storage proofs",
            keys.len(),
            proof.storage_proof.len(),
        ));
    }
    for (sp, key) in proof.storage_proof.iter().zip(keys) {
        if sp.key.as_b256() != *key {
            return Err(mismatch("storage key", key, sp.key.as_b256()));
        }
        let storage_error = |reason: String| {
            VerifyError::Proof(ProofError::AccountProof {
                address,
                state_root: proof.storage_hash,
                reason: format!("storage slot {key}: {reason}"),
            })
        };
        if proof.storage_hash == EMPTY_ROOT_HASH {
            if !sp.value.is_zero() {
                return Err(storage_error(
                    "non-zero value under the empty storage root".into(),
                ));
            }
            continue;
        }
        let expected = (!sp.value.is_zero()).then(|| alloy_rlp::encode(sp.value));
        alloy_trie::proof::verify_proof(
            proof.storage_hash,
            Nibbles::unpack(keccak256(key)),
            expected,
            &sp.proof,
        )
        .map_err(|e| storage_error(e.to_string()))?;
    }
    Ok(proof)
}

/// Checks code served by `eth_getCode` against a proven code hash.
pub fn verify_code(code: &Bytes, code_hash: B256) -> Result<(), VerifyError> {
    let got = if code.is_empty() {
        KECCAK_EMPTY
    } else {
        keccak256(code)
    };
    if got != code_hash {
        return Err(mismatch("code hash", code_hash, got));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use luxtensor_light::ChainSpec;

    #[test]
    fn header_json_round_trips_and_tampering_is_caught() {
        let spec = ChainSpec::devnet(1);
        let signed = SignedHeader {
            header: spec.genesis_header(),
            proposer_signature: Default::default(),
        };
        let json = header_json(&signed, Address::ZERO);
        assert_eq!(json["hash"], Value::String(signed.hash().to_string()));
        assert!(json.get("stateRoot").is_some() && json.get("parentQc").is_some());
        let back = header_from_json(&json).unwrap();
        assert_eq!(back, signed);
        let mut forged = json.clone();
        forged["gasUsed"] = Value::String("0x1".into());
        assert!(matches!(
            header_from_json(&forged),
            Err(VerifyError::Mismatch { .. })
        ));
    }

    #[test]
    fn an_empty_block_verifies_and_a_smuggled_transaction_does_not() {
        let spec = ChainSpec::devnet(1);
        let signed = SignedHeader {
            header: spec.genesis_header(),
            proposer_signature: Default::default(),
        };
        let mut block = header_json(&signed, Address::ZERO);
        block["transactions"] = Value::Array(vec![]);
        assert!(verify_block(&block, &signed.header).unwrap().is_empty());
        assert!(matches!(
            verify_block(&Value::Null, &signed.header),
            Err(VerifyError::MissingBlock(_))
        ));
        assert!(verify_block_receipts(&serde_json::json!([]), &signed.header, &[]).is_ok());
    }

    #[test]
    fn code_must_match_its_hash() {
        verify_code(&Bytes::new(), KECCAK_EMPTY).unwrap();
        assert!(verify_code(&Bytes::from_static(b"\x60"), KECCAK_EMPTY).is_err());
    }
}
