//! Transactions as an Ethereum wallet signs them, from the development accounts.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope};
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
        .expect("valid derivation index")
        .build()
        .expect("valid mnemonic")
}

/// An EIP-1559 transaction with a 10 gwei fee cap and a 1 gwei tip.
pub fn staking_call(
    signer: &PrivateKeySigner,
    chain_id: u64,
    nonce: u64,
    to: Address,
    value: U256,
    input: Bytes,
) -> SignedTransaction {
    let tx = TxEip1559 {
        chain_id,
        nonce,
        gas_limit: if input.is_empty() { 21_000 } else { 200_000 },
        max_fee_per_gas: 10_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(to),
        value,
        input,
        ..Default::default()
    };
    let signature = signer
        .sign_hash_sync(&tx.signature_hash())
        .expect("signing cannot fail");
    SignedTransaction::new(TxEnvelope::Eip1559(tx.into_signed(signature))).expect("EIP-1559")
}

/// A plain EIP-1559 transfer.
pub fn transfer(
    signer: &PrivateKeySigner,
    chain_id: u64,
    nonce: u64,
    to: Address,
    value: U256,
) -> SignedTransaction {
    staking_call(signer, chain_id, nonce, to, value, Bytes::new())
}
