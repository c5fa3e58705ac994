//! The fuzzers start from real encodings kept in `fuzz/seeds/<target>/`.
//! This test checks that every seed still decodes (so a format change that
//! would silently make the seeds useless fails here), and regenerates them
//! when run with `LUXTENSOR_WRITE_FUZZ_SEEDS=1`.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope, TxLegacy};
use alloy_primitives::{Address, TxKind, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use luxtensor_light::evidence::DoubleVote;
use luxtensor_light::{
    Block, CertifiedHeader, Evidence, QuorumCert, SignedHeader, SignedTransaction,
};
use luxtensor_tests::Validators;
use std::path::PathBuf;

fn seeds_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

fn transactions(chain_id: u64) -> Vec<SignedTransaction> {
    let signer: PrivateKeySigner =
        "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
            .parse()
            .unwrap();
    let legacy = TxLegacy {
        chain_id: Some(chain_id),
        nonce: 0,
        gas_price: 1_000_000_000,
        gas_limit: 21_000,
        to: TxKind::Call(Address::repeat_byte(1)),
        value: U256::from(1),
        ..Default::default()
    };
    let sig = signer.sign_hash_sync(&legacy.signature_hash()).unwrap();
    let dynamic = TxEip1559 {
        chain_id,
        nonce: 1,
        gas_limit: 21_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1,
        to: TxKind::Call(Address::repeat_byte(2)),
        value: U256::from(2),
        ..Default::default()
    };
    let sig2 = signer.sign_hash_sync(&dynamic.signature_hash()).unwrap();
    [
        TxEnvelope::Legacy(legacy.into_signed(sig)),
        TxEnvelope::Eip1559(dynamic.into_signed(sig2)),
    ]
    .into_iter()
    .map(|e| SignedTransaction::new(e).unwrap())
    .collect()
}

/// Every seed, by target: (file name, bytes).
fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let v = Validators::devnet(4);
    let chain = v.certified_chain(2, 3);
    let txs = transactions(v.spec.chain_id);
    let evidence = Evidence::DoubleVote(Box::new(DoubleVote {
        epoch: 0,
        first: v.vote(1, 5, chain[0].header.hash()),
        second: v.vote(1, 5, chain[1].header.hash()),
    }));
    let mut header = chain[1].header.header.clone();
    header.transactions_root = luxtensor_light::block::transactions_root(&txs);
    header.evidence_hash = luxtensor_light::block::evidence_hash(std::slice::from_ref(&evidence));
    let proposer = header.proposer_index as usize;
    let block = Block {
        header: header.sign(&v.keys[proposer], v.spec.chain_id),
        transactions: txs.clone(),
        evidence: vec![evidence],
    };
    block.verify_body().unwrap();
    vec![
        (
            "decode_header",
            "signed-header",
            alloy_rlp::encode(&chain[1].header),
        ),
        (
            "decode_header",
            "certified-header",
            alloy_rlp::encode(&chain[1]),
        ),
        (
            "decode_block",
            "block-with-txs-and-evidence",
            alloy_rlp::encode(&block),
        ),
        ("decode_transaction", "legacy-eip155", txs[0].encoded_2718()),
        ("decode_transaction", "eip1559", txs[1].encoded_2718()),
        ("decode_qc", "qc-3-of-4", alloy_rlp::encode(&chain[0].qc)),
        ("decode_qc", "validator-set-4", v.set.encode_to_vec()),
    ]
}

#[test]
fn fuzz_seeds_are_valid_encodings() {
    let write = std::env::var_os("LUXTENSOR_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in seeds() {
        let path = seeds_dir(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate with LUXTENSOR_WRITE_FUZZ_SEEDS=1",
                path.display()
            )
        });
        let decodes = match target {
            "decode_header" => {
                SignedHeader::decode(&stored).is_ok() || CertifiedHeader::decode(&stored).is_ok()
            }
            "decode_block" => Block::decode(&stored).is_ok(),
            "decode_transaction" => SignedTransaction::decode_2718(&stored).is_ok(),
            "decode_qc" => {
                QuorumCert::decode(&stored).is_ok()
                    || luxtensor_light::ValidatorSet::decode(&stored).is_ok()
            }
            other => panic!("unknown fuzz target {other}"),
        };
        assert!(
            decodes,
            "{} no longer decodes; regenerate the seeds",
            path.display()
        );
    }
}
