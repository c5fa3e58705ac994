//! Test helpers: development-account signers and transactions they sign.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope, TxLegacy};
use alloy_primitives::{Address, Bytes, TxKind, U256};
use alloy_signer::SignerSync;
use alloy_signer_local::{MnemonicBuilder, PrivateKeySigner, coins_bip39::English};
use luxtensor_light::SignedTransaction;
use luxtensor_light::chain_spec::DEV_MNEMONIC;

/// Development account `index` of the standard mnemonic (funded on the devnet).
pub fn dev_signer(index: u32) -> PrivateKeySigner {
    MnemonicBuilder::<English>::default()
        .phrase(DEV_MNEMONIC)
        .index(index)
        .unwrap()
        .build()
        .unwrap()
}

/// An EIP-1559 call (max fee 10 gwei, tip 1 gwei, gas limit 200,000 with data, 21,000 without).
pub fn call(
    signer: &PrivateKeySigner,
    chain_id: u64,
    nonce: u64,
    to: TxKind,
    value: U256,
    input: Bytes,
) -> SignedTransaction {
    let tx = TxEip1559 {
        chain_id,
        nonce,
        gas_limit: if input.is_empty() { 21_000 } else { 200_000 },
        max_fee_per_gas: 10_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to,
        value,
        input,
        ..Default::default()
    };
    let signature = signer.sign_hash_sync(&tx.signature_hash()).unwrap();
    SignedTransaction::new(TxEnvelope::Eip1559(tx.into_signed(signature))).unwrap()
}

/// A plain EIP-1559 transfer.
pub fn transfer(
    signer: &PrivateKeySigner,
    chain_id: u64,
    nonce: u64,
    to: Address,
    value: U256,
) -> SignedTransaction {
    call(
        signer,
        chain_id,
        nonce,
        TxKind::Call(to),
        value,
        Bytes::new(),
    )
}

/// A legacy EIP-155 transfer at `gas_price`.
pub fn legacy_transfer(
    signer: &PrivateKeySigner,
    chain_id: u64,
    nonce: u64,
    to: Address,
    value: U256,
    gas_price: u128,
) -> SignedTransaction {
    let tx = TxLegacy {
        chain_id: Some(chain_id),
        nonce,
        gas_price,
        gas_limit: 21_000,
        to: TxKind::Call(to),
        value,
        input: Bytes::new(),
    };
    let signature = signer.sign_hash_sync(&tx.signature_hash()).unwrap();
    SignedTransaction::new(TxEnvelope::Legacy(tx.into_signed(signature))).unwrap()
}
