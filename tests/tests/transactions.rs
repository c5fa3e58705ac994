//! Transactions: standard Ethereum envelopes signed by an ordinary wallet key
//! are accepted (legacy with EIP-155, EIP-1559); every other kind is refused by name.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEip2930, TxEip7702, TxEnvelope, TxLegacy};
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, Bytes, TxKind, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::PrivateKeySigner;
use luxtensor_light::chain_spec::{DEV_ACCOUNTS, DEVNET_CHAIN_ID};
use luxtensor_light::{SignedTransaction, TxError};

/// Hardhat/Anvil dev account 0's well-known private key.
fn dev_signer() -> PrivateKeySigner {
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
        .parse()
        .unwrap()
}

fn sign<T: SignableTransaction<alloy_primitives::Signature>>(tx: T) -> alloy_consensus::Signed<T> {
    let sig = dev_signer().sign_hash_sync(&tx.signature_hash()).unwrap();
    tx.into_signed(sig)
}

fn legacy(chain_id: Option<u64>) -> TxEnvelope {
    TxEnvelope::Legacy(sign(TxLegacy {
        chain_id,
        nonce: 3,
        gas_price: 1_000_000_000,
        gas_limit: 21_000,
        to: TxKind::Call(Address::repeat_byte(7)),
        value: U256::from(12345),
        input: Bytes::new(),
    }))
}

fn eip1559() -> TxEnvelope {
    TxEnvelope::Eip1559(sign(TxEip1559 {
        chain_id: DEVNET_CHAIN_ID,
        nonce: 4,
        gas_limit: 21_000,
        max_fee_per_gas: 2_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(Address::repeat_byte(8)),
        value: U256::from(1),
        ..Default::default()
    }))
}

#[test]
fn legacy_eip155_and_eip1559_round_trip_and_recover_the_sender() {
    for envelope in [legacy(Some(DEVNET_CHAIN_ID)), eip1559()] {
        let raw = envelope.encoded_2718();
        let tx = SignedTransaction::decode_2718(&raw).unwrap();
        assert_eq!(tx.encoded_2718(), raw);
        assert_eq!(tx.hash(), *envelope.tx_hash());
        assert_eq!(tx.recover_sender().unwrap(), DEV_ACCOUNTS[0]);
        assert_eq!(tx.check_chain_id(DEVNET_CHAIN_ID), Ok(()));
        assert_eq!(
            tx.check_chain_id(1),
            Err(TxError::WrongChainId {
                expected: 1,
                got: DEVNET_CHAIN_ID
            })
        );
        // Inside a block, the same transaction is an RLP string of its 2718 bytes.
        let in_block = alloy_rlp::encode(&tx);
        assert_eq!(
            alloy_rlp::decode_exact::<SignedTransaction>(&in_block).unwrap(),
            tx
        );
    }
}

#[test]
fn legacy_without_chain_id_is_refused() {
    let raw = legacy(None).encoded_2718();
    assert_eq!(
        SignedTransaction::decode_2718(&raw),
        Err(TxError::MissingChainId)
    );
}

#[test]
fn other_transaction_types_are_refused_by_name() {
    let eip2930 = TxEnvelope::Eip2930(sign(TxEip2930 {
        chain_id: DEVNET_CHAIN_ID,
        gas_limit: 21_000,
        to: TxKind::Call(Address::ZERO),
        ..Default::default()
    }));
    let eip7702 = TxEnvelope::Eip7702(sign(TxEip7702 {
        chain_id: DEVNET_CHAIN_ID,
        gas_limit: 50_000,
        ..Default::default()
    }));
    for (envelope, name, ty) in [(eip2930, "EIP-2930", 1u8), (eip7702, "EIP-7702", 4u8)] {
        let err = SignedTransaction::decode_2718(&envelope.encoded_2718()).unwrap_err();
        assert_eq!(err, TxError::UnsupportedType { ty, name });
        assert!(err.to_string().contains(name));
    }
    // A blob transaction is named from its type byte alone.
    let err = SignedTransaction::decode_2718(&[0x03, 0xc0]).unwrap_err();
    assert_eq!(
        err,
        TxError::UnsupportedType {
            ty: 3,
            name: "EIP-4844"
        }
    );
}

#[test]
fn malformed_and_oversized_input_is_refused() {
    let raw = eip1559().encoded_2718();
    assert!(matches!(
        SignedTransaction::decode_2718(&raw[..raw.len() - 1]),
        Err(TxError::Malformed(_))
    ));
    let mut trailing = raw.clone();
    trailing.push(0);
    assert!(matches!(
        SignedTransaction::decode_2718(&trailing),
        Err(TxError::Malformed(_))
    ));
    assert!(matches!(
        SignedTransaction::decode_2718(&[]),
        Err(TxError::Malformed(_))
    ));
    let huge = vec![0xc0; 200 * 1024];
    assert!(matches!(
        SignedTransaction::decode_2718(&huge),
        Err(TxError::Oversized { .. })
    ));
}
