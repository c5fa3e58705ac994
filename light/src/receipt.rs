//! Receipts, logs and accounts: alloy's Ethereum types, so that proofs and
//! roots are exactly Ethereum's and RPC clients parse them unchanged.

use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{B256, Bloom};
use alloy_trie::root::ordered_trie_root_with_encoder;

/// A transaction receipt (status, cumulative gas, logs, bloom), typed per EIP-2718.
pub type Receipt = alloy_consensus::ReceiptEnvelope<Log>;
/// An event log.
pub type Log = alloy_primitives::Log;
/// An account as stored in the state trie: nonce, balance, storage root, code hash
/// (the leaf format of EIP-1186 `eth_getProof` account proofs).
pub type Account = alloy_trie::TrieAccount;

/// Root of the ordered trie of the receipts' EIP-2718 encodings.
pub fn receipts_root(receipts: &[Receipt]) -> B256 {
    ordered_trie_root_with_encoder(receipts, |r, buf| r.encode_2718(buf))
}

/// The union of the receipts' blooms: the header's `logs_bloom`.
pub fn logs_bloom(receipts: &[Receipt]) -> Bloom {
    let mut bloom = Bloom::ZERO;
    for r in receipts {
        bloom.accrue_bloom(r.logs_bloom());
    }
    bloom
}
