//! Blocks: a signed header, its transactions and any slashing evidence.

use crate::codec::{self, DecodeError};
use crate::evidence::Evidence;
use crate::header::SignedHeader;
use crate::transaction::SignedTransaction;
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{B256, keccak256};
use alloy_rlp::{RlpDecodable, RlpEncodable};
use alloy_trie::root::ordered_trie_root_with_encoder;

/// A full block as it is stored and served.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct Block {
    /// The sealed header.
    pub header: SignedHeader,
    /// Transactions, in execution order.
    pub transactions: Vec<SignedTransaction>,
    /// Slashing evidence the proposer included.
    pub evidence: Vec<Evidence>,
}

/// Why a block's body does not match its header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The transactions do not hash to the header's transactions root.
    #[error("transactions root mismatch: header has {header}, body gives {body}")]
    TransactionsRoot {
        /// Root in the header.
        header: B256,
        /// Root computed from the body.
        body: B256,
    },
    /// The evidence list does not hash to the header's evidence hash.
    #[error("evidence hash mismatch: header has {header}, body gives {body}")]
    EvidenceHash {
        /// Hash in the header.
        header: B256,
        /// Hash computed from the body.
        body: B256,
    },
}

impl Block {
    /// Decodes a block from its canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_exact("block", bytes, codec::MAX_BLOCK_BYTES)
    }

    /// The block hash.
    pub fn hash(&self) -> B256 {
        self.header.hash()
    }

    /// Checks that the body is the one the header commits to.
    pub fn verify_body(&self) -> Result<(), BodyError> {
        let body = transactions_root(&self.transactions);
        if body != self.header.transactions_root {
            return Err(BodyError::TransactionsRoot {
                header: self.header.transactions_root,
                body,
            });
        }
        let body = evidence_hash(&self.evidence);
        if body != self.header.evidence_hash {
            return Err(BodyError::EvidenceHash {
                header: self.header.evidence_hash,
                body,
            });
        }
        Ok(())
    }
}

/// Root of the ordered Merkle-Patricia trie of EIP-2718 encodings, as Ethereum computes it.
pub fn transactions_root(transactions: &[SignedTransaction]) -> B256 {
    ordered_trie_root_with_encoder(transactions, |tx, buf| tx.envelope().encode_2718(buf))
}

/// `keccak256(rlp(evidence list))`.
pub fn evidence_hash(evidence: &[Evidence]) -> B256 {
    let mut buf = Vec::new();
    alloy_rlp::encode_list(evidence, &mut buf);
    keccak256(buf)
}
