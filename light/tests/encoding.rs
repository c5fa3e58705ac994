//! Canonical encoding: every type round-trips, hashes are stable, and no
//! input, however broken, makes a decoder panic.

use alloy_consensus::{Signed, TxEip1559, TxEnvelope, TxLegacy};
use alloy_primitives::{Address, B256, Bloom, Bytes, FixedBytes, Signature, TxKind, U256};
use alloy_rlp::{Decodable, Encodable};
use luxtensor_light::chain_spec::devnet_validator_key;
use luxtensor_light::evidence::{DoubleProposal, DoubleVote};
use luxtensor_light::{
    Block, CertifiedHeader, ChainSpec, Evidence, Header, QuorumCert, SignedHeader,
    SignedTransaction, SignerBitfield, Validator, ValidatorSet, Vote, bls,
};
use proptest::prelude::*;

fn b256() -> impl Strategy<Value = B256> {
    any::<[u8; 32]>().prop_map(B256::from)
}
fn bytes_n<const N: usize>() -> impl Strategy<Value = FixedBytes<N>> {
    proptest::collection::vec(any::<u8>(), N).prop_map(|v| FixedBytes::from_slice(&v))
}
fn u256() -> impl Strategy<Value = U256> {
    any::<[u8; 32]>().prop_map(U256::from_be_bytes)
}

fn qc() -> impl Strategy<Value = QuorumCert> {
    (
        any::<u64>(),
        b256(),
        proptest::collection::vec(any::<u8>(), 0..20),
        bytes_n::<96>(),
    )
        .prop_map(|(slot, block_hash, bits, signature)| QuorumCert {
            slot,
            block_hash,
            signers: SignerBitfield::from_bytes(bits),
            signature,
        })
}

fn vote() -> impl Strategy<Value = Vote> {
    (any::<u64>(), b256(), any::<u32>(), bytes_n::<96>()).prop_map(
        |(slot, block_hash, validator_index, signature)| Vote {
            slot,
            block_hash,
            validator_index,
            signature,
        },
    )
}

fn header() -> impl Strategy<Value = Header> {
    (
        (
            b256(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
        ),
        (b256(), b256(), b256(), b256(), bytes_n::<256>()),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            b256(),
            b256(),
            qc(),
        ),
    )
        .prop_map(|(a, b, c)| Header {
            parent_hash: a.0,
            number: a.1,
            slot: a.2,
            epoch: a.3,
            timestamp: a.4,
            proposer_index: a.5,
            state_root: b.0,
            transactions_root: b.1,
            receipts_root: b.2,
            evidence_hash: b.3,
            logs_bloom: Bloom::from(b.4.0),
            gas_limit: c.0,
            gas_used: c.1,
            base_fee_per_gas: c.2,
            validator_set_hash: c.3,
            next_validator_set_hash: c.4,
            parent_qc: c.5,
        })
}

fn signed_header() -> impl Strategy<Value = SignedHeader> {
    (header(), bytes_n::<96>()).prop_map(|(header, proposer_signature)| SignedHeader {
        header,
        proposer_signature,
    })
}

fn signature() -> impl Strategy<Value = Signature> {
    // Any scalar values decode; only recovery would notice they are not a real signature.
    (1u64.., 1u64.., any::<bool>())
        .prop_map(|(r, s, y)| Signature::new(U256::from(r), U256::from(s), y))
}

fn transaction() -> impl Strategy<Value = SignedTransaction> {
    let legacy = (
        1u64..u64::MAX / 4,
        any::<u64>(),
        any::<u64>(),
        bytes_n::<20>(),
        u256(),
        signature(),
    )
        .prop_map(|(chain_id, nonce, gas_limit, to, value, sig)| {
            let tx = TxLegacy {
                chain_id: Some(chain_id),
                nonce,
                gas_price: 7,
                gas_limit,
                to: TxKind::Call(Address::from(to)),
                value,
                input: Bytes::new(),
            };
            TxEnvelope::Legacy(Signed::new_unhashed(tx, sig))
        });
    let eip1559 = (
        any::<u64>(),
        any::<u64>(),
        any::<u128>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        signature(),
    )
        .prop_map(|(chain_id, nonce, fee, input, sig)| {
            let tx = TxEip1559 {
                chain_id,
                nonce,
                gas_limit: 21_000,
                max_fee_per_gas: fee,
                max_priority_fee_per_gas: fee / 2,
                to: TxKind::Create,
                input: input.into(),
                ..Default::default()
            };
            TxEnvelope::Eip1559(Signed::new_unhashed(tx, sig))
        });
    prop_oneof![legacy, eip1559].prop_map(|env| SignedTransaction::new(env).unwrap())
}

fn evidence() -> impl Strategy<Value = Evidence> {
    prop_oneof![
        (any::<u64>(), vote(), vote()).prop_map(|(epoch, first, second)| {
            Evidence::DoubleVote(Box::new(DoubleVote {
                epoch,
                first,
                second,
            }))
        }),
        (signed_header(), signed_header()).prop_map(|(first, second)| {
            Evidence::DoubleProposal(Box::new(DoubleProposal { first, second }))
        }),
    ]
}

fn block() -> impl Strategy<Value = Block> {
    (
        signed_header(),
        proptest::collection::vec(transaction(), 0..4),
        proptest::collection::vec(evidence(), 0..2),
    )
        .prop_map(|(header, transactions, evidence)| Block {
            header,
            transactions,
            evidence,
        })
}

fn round_trip<T: Encodable + Decodable + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = alloy_rlp::encode(value);
    assert_eq!(bytes.len(), value.length(), "length() agrees with encode()");
    let decoded = alloy_rlp::decode_exact::<T>(&bytes).expect("decodes");
    assert_eq!(&decoded, value);
    assert_eq!(
        alloy_rlp::encode(&decoded),
        bytes,
        "re-encoding is identical"
    );
}

/// Decoding must return, never panic; for truncations it must fail.
fn mangle_all(bytes: &[u8], flip_at: usize, flip: u8) {
    let mut flipped = bytes.to_vec();
    if !flipped.is_empty() {
        let i = flip_at % flipped.len();
        flipped[i] ^= flip;
    }
    for input in [&flipped[..], &bytes[..bytes.len() / 2]] {
        let _ = SignedHeader::decode(input);
        let _ = CertifiedHeader::decode(input);
        let _ = QuorumCert::decode(input);
        let _ = Block::decode(input);
        let _ = ValidatorSet::decode(input);
        let _ = SignedTransaction::decode_2718(input);
        let _ = alloy_rlp::decode_exact::<Evidence>(input);
        let _ = alloy_rlp::decode_exact::<Vote>(input);
    }
    if !bytes.is_empty() {
        assert!(Block::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn quorum_cert_round_trips(v in qc()) { round_trip(&v) }

    #[test]
    fn vote_round_trips(v in vote()) { round_trip(&v) }

    #[test]
    fn header_round_trips_and_hash_ignores_the_seal(h in signed_header(), other_seal in bytes_n::<96>()) {
        round_trip(&h);
        let resealed = SignedHeader { proposer_signature: other_seal, ..h.clone() };
        prop_assert_eq!(resealed.hash(), h.hash());
    }

    #[test]
    fn certified_header_round_trips(header in signed_header(), qc in qc()) {
        round_trip(&CertifiedHeader { header, qc })
    }

    #[test]
    fn transaction_round_trips(tx in transaction()) {
        round_trip(&tx);
        prop_assert_eq!(SignedTransaction::decode_2718(&tx.encoded_2718()).unwrap(), tx);
    }

    #[test]
    fn evidence_round_trips(e in evidence()) { round_trip(&e) }

    #[test]
    fn block_round_trips(b in block()) {
        round_trip(&b);
        prop_assert_eq!(Block::decode(&alloy_rlp::encode(&b)).unwrap(), b);
    }

    #[test]
    fn validator_round_trips(owner in bytes_n::<20>(), stake in u256(), key in 0u32..8) {
        round_trip(&Validator {
            owner: Address::from(owner),
            public_key: devnet_validator_key(key).public_key(),
            stake,
        })
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        mangle_all(&bytes, 0, 0);
    }

    #[test]
    fn mangled_valid_encodings_never_panic(b in block(), at in any::<usize>(), flip in 1u8..) {
        mangle_all(&alloy_rlp::encode(&b), at, flip);
    }
}

#[test]
fn validator_set_round_trips() {
    let set = ChainSpec::devnet(7).genesis_set().unwrap();
    let decoded = ValidatorSet::decode(&set.encode_to_vec()).unwrap();
    assert_eq!(decoded, set);
    // A list of validators that is not a valid set is refused at decode time.
    let mut members = set.validators().to_vec();
    members.push(members[0].clone());
    let bytes = alloy_rlp::encode(&members);
    let err = ValidatorSet::decode(&bytes).unwrap_err().to_string();
    assert!(err.contains("repeats the public key"), "{err}");
}

/// Known answers: if one of these changes, the wire format or a hash changed.
/// Update them only together with `docs/protocol.md` and a note in the change.
#[test]
fn known_answers() {
    let spec = ChainSpec::devnet(4);
    let set = spec.genesis_set().unwrap();
    let genesis = spec.genesis_header();
    let key = devnet_validator_key(0);
    let vote = Vote::sign(&key, spec.chain_id, 1, genesis.hash(), 0);
    let encoded_vote = alloy_rlp::encode(&vote);
    let pins = [
        (
            "devnet validator 0 public key",
            key.public_key().to_string(),
        ),
        ("devnet(4) validator set hash", set.hash().to_string()),
        (
            "devnet(4) genesis state root",
            genesis.state_root.to_string(),
        ),
        ("devnet(4) genesis hash", genesis.hash().to_string()),
        (
            "vote signing root",
            bls::vote_signing_root(31337, 1, &B256::repeat_byte(0xab)).to_string(),
        ),
        (
            "vote encoding hash",
            alloy_primitives::keccak256(&encoded_vote).to_string(),
        ),
        (
            "empty evidence hash",
            luxtensor_light::block::evidence_hash(&[]).to_string(),
        ),
    ];
    for ((name, got), (want_name, want)) in pins.iter().zip(EXPECTED_PINS) {
        assert_eq!(*name, want_name);
        assert_eq!(got, want, "{name} changed");
    }
    // [slot 1, hash, index 0, signature]: list header 2 + 1 + 33 + 1 + (2 + 96).
    assert_eq!(encoded_vote.len(), 2 + 1 + 33 + 1 + 98);
}

const EXPECTED_PINS: [(&str, &str); 7] = [
    (
        "devnet validator 0 public key",
        "0xaec6213e5155fc71bbdf86ea5f07c0abcf74bad291b72d2433f7df4c42ef8bfbcb1b93d5a398709a14fb5dd13d3c2251",
    ),
    (
        "devnet(4) validator set hash",
        "0xacd2f45c8f3d5481945af241097151151022b792c42b357dda57091c741e82d0",
    ),
    (
        "devnet(4) genesis state root",
        "0x101196a85dd45ba91873b481c17d6e7066c31719f77073e2cb1a3dd4e0e87fe4",
    ),
    (
        "devnet(4) genesis hash",
        "0x21e00bc793dcd79b9c8c604ad5ac7057ad03914bd0457746319dd033ac2d74e5",
    ),
    (
        "vote signing root",
        "0xde36d82df53eaed19c779f4daf910bfcb5a89ca00fff8b76253bb15fd7ceb3a3",
    ),
    (
        "vote encoding hash",
        "0x464634e13182276582e044e94ec718871d2eb342fd6674e1f02da26ffe393dab",
    ),
    // keccak256(rlp([])): the same constant as Ethereum's empty ommers hash.
    (
        "empty evidence hash",
        "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",
    ),
];
