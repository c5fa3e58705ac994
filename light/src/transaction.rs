//! Signed transactions: standard Ethereum envelopes, restricted to the two
//! kinds the chain executes (legacy with EIP-155 replay protection, and
//! EIP-1559). Wallets sign them with the tools they already have.

use crate::codec::MAX_TRANSACTION_BYTES;
use alloy_consensus::transaction::SignerRecoverable;
use alloy_consensus::{Transaction, TxEnvelope, TxType};
use alloy_eips::eip2718::{Decodable2718, Encodable2718};
use alloy_primitives::{Address, B256, Bytes, TxKind, U256};
use alloy_rlp::{Decodable, Encodable};

/// Why a transaction was refused before execution.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// Larger than [`MAX_TRANSACTION_BYTES`].
    #[error("transaction is {len} bytes, over the limit of {max}")]
    Oversized {
        /// Encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid EIP-2718 / RLP.
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// A well-formed envelope of a type this chain does not execute.
    #[error(
        "unsupported transaction type {name} (0x{ty:02x}): only legacy (EIP-155) and EIP-1559 are accepted"
    )]
    UnsupportedType {
        /// The EIP-2718 type byte.
        ty: u8,
        /// Its common name.
        name: &'static str,
    },
    /// A legacy transaction signed without a chain id (pre-EIP-155), replayable across chains.
    #[error("legacy transaction has no EIP-155 chain id")]
    MissingChainId,
    /// Signed for another chain.
    #[error("transaction is for chain id {got}, this chain is {expected}")]
    WrongChainId {
        /// This chain's id.
        expected: u64,
        /// The transaction's chain id.
        got: u64,
    },
    /// The signature does not yield a sender.
    #[error("invalid transaction signature: {0}")]
    InvalidSignature(String),
}

/// A signed, standard Ethereum transaction of a supported type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignedTransaction(TxEnvelope);

impl SignedTransaction {
    /// Accepts an envelope if its type is supported (legacy needs a chain id).
    pub fn new(envelope: TxEnvelope) -> Result<Self, TxError> {
        let ty = envelope.tx_type();
        match ty {
            TxType::Legacy if envelope.chain_id().is_none() => Err(TxError::MissingChainId),
            TxType::Legacy | TxType::Eip1559 => Ok(Self(envelope)),
            other => Err(TxError::UnsupportedType {
                ty: other as u8,
                name: type_name(other),
            }),
        }
    }

    /// Decodes the EIP-2718 encoding (what `eth_sendRawTransaction` carries).
    pub fn decode_2718(bytes: &[u8]) -> Result<Self, TxError> {
        if bytes.len() > MAX_TRANSACTION_BYTES {
            return Err(TxError::Oversized {
                len: bytes.len(),
                max: MAX_TRANSACTION_BYTES,
            });
        }
        if let Some(&ty) = bytes.first()
            && (0x01..0x7f).contains(&ty)
            && !matches!(ty, 0x02)
        {
            // Name the type even when alloy could not decode its body.
            let name = TxType::try_from(ty).map(type_name).unwrap_or("unknown");
            return Err(TxError::UnsupportedType { ty, name });
        }
        let envelope =
            TxEnvelope::decode_2718_exact(bytes).map_err(|e| TxError::Malformed(e.to_string()))?;
        Self::new(envelope)
    }

    /// The EIP-2718 encoding.
    pub fn encoded_2718(&self) -> Vec<u8> {
        self.0.encoded_2718()
    }

    /// Refuses transactions signed for another chain.
    pub fn check_chain_id(&self, expected: u64) -> Result<(), TxError> {
        match self.0.chain_id() {
            Some(got) if got == expected => Ok(()),
            Some(got) => Err(TxError::WrongChainId { expected, got }),
            None => Err(TxError::MissingChainId),
        }
    }

    /// Recovers the sender from the signature (secp256k1 public-key recovery).
    pub fn recover_sender(&self) -> Result<Address, TxError> {
        self.0
            .recover_signer()
            .map_err(|e| TxError::InvalidSignature(e.to_string()))
    }

    /// The transaction hash (keccak256 of the EIP-2718 encoding).
    pub fn hash(&self) -> B256 {
        *self.0.tx_hash()
    }

    /// The underlying alloy envelope, for the fields (`nonce()`, `value()`, ...).
    pub fn envelope(&self) -> &TxEnvelope {
        &self.0
    }

    /// The sender's nonce.
    pub fn nonce(&self) -> u64 {
        self.0.nonce()
    }

    /// The recipient, or `None` for contract creation.
    pub fn to(&self) -> Option<Address> {
        match self.0.kind() {
            TxKind::Call(to) => Some(to),
            TxKind::Create => None,
        }
    }

    /// Value transferred, in wei.
    pub fn value(&self) -> U256 {
        self.0.value()
    }

    /// Call data.
    pub fn input(&self) -> &Bytes {
        self.0.input()
    }

    /// Gas limit.
    pub fn gas_limit(&self) -> u64 {
        self.0.gas_limit()
    }
}

fn type_name(ty: TxType) -> &'static str {
    match ty {
        TxType::Legacy => "legacy",
        TxType::Eip2930 => "EIP-2930",
        TxType::Eip1559 => "EIP-1559",
        TxType::Eip4844 => "EIP-4844",
        TxType::Eip7702 => "EIP-7702",
    }
}

/// In blocks, each transaction is an RLP byte string holding its EIP-2718 encoding.
impl Encodable for SignedTransaction {
    fn encode(&self, out: &mut dyn alloy_rlp::BufMut) {
        let len = self.0.encode_2718_len();
        alloy_rlp::Header {
            list: false,
            payload_length: len,
        }
        .encode(out);
        self.0.encode_2718(out);
    }
    fn length(&self) -> usize {
        let len = self.0.encode_2718_len();
        alloy_rlp::length_of_length(len) + len
    }
}

impl Decodable for SignedTransaction {
    fn decode(buf: &mut &[u8]) -> alloy_rlp::Result<Self> {
        let bytes = alloy_rlp::Header::decode_bytes(buf, false)?;
        Self::decode_2718(bytes).map_err(|e| match e {
            TxError::UnsupportedType { .. } => {
                alloy_rlp::Error::Custom("unsupported transaction type")
            }
            TxError::MissingChainId => {
                alloy_rlp::Error::Custom("legacy transaction without EIP-155 chain id")
            }
            TxError::Oversized { .. } => alloy_rlp::Error::Custom("transaction too large"),
            _ => alloy_rlp::Error::Custom("malformed transaction"),
        })
    }
}
