//! Block headers: what validators vote on, how a proposer seals it, and the
//! certified header that proves a block was accepted.

use crate::bls::{self, BlsSecretKey, BlsSignature};
use crate::codec::{self, DecodeError};
use crate::qc::{QuorumCert, SignerBitfield};
use alloy_primitives::{B256, Bloom, keccak256};
use alloy_rlp::{RlpDecodable, RlpEncodable};

/// A block header: the fields the block hash commits to.
///
/// The block hash is `keccak256(rlp(header))` over the fields in this order.
/// The proposer's seal is not part of it (it signs the hash); see [`SignedHeader`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable)]
pub struct Header {
    /// Hash of the parent block.
    pub parent_hash: B256,
    /// Height: the parent's number plus one; genesis is 0.
    pub number: u64,
    /// The slot this block was proposed in; strictly increasing along a chain.
    pub slot: u64,
    /// The epoch whose validator set signs this block.
    pub epoch: u64,
    /// Unix time in seconds of the start of `slot` (see `ChainSpec::slot_timestamp`).
    pub timestamp: u64,
    /// Position of the proposer in the epoch's validator set.
    pub proposer_index: u32,
    /// Root of the account state trie after this block.
    pub state_root: B256,
    /// Root of the ordered trie of the block's transactions (EIP-2718 encodings).
    pub transactions_root: B256,
    /// Root of the ordered trie of the block's receipts (EIP-2718 encodings).
    pub receipts_root: B256,
    /// `keccak256` of the block's slashing-evidence list.
    pub evidence_hash: B256,
    /// Bloom filter over the logs of all receipts.
    pub logs_bloom: Bloom,
    /// Most gas the block's transactions may use.
    pub gas_limit: u64,
    /// Gas used by the block's transactions.
    pub gas_used: u64,
    /// EIP-1559 base fee per gas, in wei.
    pub base_fee_per_gas: u64,
    /// Hash of this epoch's validator set (the one that signs this block).
    pub validator_set_hash: B256,
    /// Hash of the next epoch's validator set.
    pub next_validator_set_hash: B256,
    /// The certificate of the parent block (empty for genesis and its child).
    pub parent_qc: QuorumCert,
}

impl Header {
    /// The block hash.
    pub fn hash(&self) -> B256 {
        keccak256(alloy_rlp::encode(self))
    }

    /// Whether this is a genesis header (number 0).
    pub fn is_genesis(&self) -> bool {
        self.number == 0
    }

    /// Seals the header with the proposer's key.
    pub fn sign(self, key: &BlsSecretKey, chain_id: u64) -> SignedHeader {
        let proposer_signature = key.sign(&bls::proposal_signing_root(chain_id, &self.hash()));
        SignedHeader {
            header: self,
            proposer_signature,
        }
    }
}

impl QuorumCert {
    /// The placeholder `parent_qc` of the genesis header, and of its child,
    /// since genesis is trusted by definition and needs no votes.
    pub fn genesis() -> Self {
        Self {
            slot: 0,
            block_hash: B256::ZERO,
            signers: SignerBitfield::default(),
            signature: BlsSignature::ZERO,
        }
    }
}

/// A header with its proposer's seal: the form headers travel in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable)]
pub struct SignedHeader {
    /// The header.
    pub header: Header,
    /// The proposer's signature over the proposal signing root of the block hash.
    pub proposer_signature: BlsSignature,
}

impl SignedHeader {
    /// Decodes a signed header from its canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_exact("header", bytes, codec::MAX_HEADER_BYTES)
    }

    /// The block hash (of the header; the seal is not part of it).
    pub fn hash(&self) -> B256 {
        self.header.hash()
    }
}

impl std::ops::Deref for SignedHeader {
    type Target = Header;
    fn deref(&self) -> &Header {
        &self.header
    }
}

/// A signed header together with the QC that certifies it (supplied by its
/// child's `parent_qc` or by the vote pool): the unit a light client trusts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable)]
pub struct CertifiedHeader {
    /// The header.
    pub header: SignedHeader,
    /// Its certificate.
    pub qc: QuorumCert,
}

impl CertifiedHeader {
    /// Decodes a certified header from its canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_exact(
            "certified header",
            bytes,
            codec::MAX_HEADER_BYTES + codec::MAX_QC_BYTES,
        )
    }
}
