//! Slashable evidence: proof that a validator signed two conflicting things.
//! Any proposer may include evidence in a block; executing it slashes.

use crate::bls;
use crate::header::SignedHeader;
use crate::qc::{QcError, VerifiedCache, Vote};
use crate::validator::ValidatorSet;
use alloy_primitives::Address;
use alloy_rlp::{Decodable, Encodable, RlpDecodable, RlpEncodable};
use std::sync::Mutex;

/// Two votes by one validator in one slot for different blocks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable)]
pub struct DoubleVote {
    /// The epoch whose set the voter belonged to.
    pub epoch: u64,
    /// One vote.
    pub first: Vote,
    /// The conflicting vote.
    pub second: Vote,
}

impl DoubleVote {
    /// The evidence that `first` (by member `first.validator_index` of
    /// `epoch`'s set) and `second`, signed by the same key for the same slot,
    /// conflict. `second` may come from another epoch's set, where the same
    /// validator sits at another index (at an epoch boundary, the blocks of
    /// one slot can belong to two epochs): a vote's signature covers the
    /// slot and block but not the index, so `second` is restated at the
    /// index `first` has, and both then check against one set.
    pub fn new(epoch: u64, first: Vote, second: Vote) -> Self {
        let second = Vote {
            validator_index: first.validator_index,
            ..second
        };
        Self {
            epoch,
            first,
            second,
        }
    }
}

/// Two headers sealed by one proposer for the same slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable)]
pub struct DoubleProposal {
    /// One header.
    pub first: SignedHeader,
    /// The conflicting header.
    pub second: SignedHeader,
}

/// Slashable evidence. Encoded as `[kind, evidence]` with kind 1 for a double
/// vote and 2 for a double proposal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Evidence {
    /// See [`DoubleVote`] (boxed, like the other variant: evidence is rare and large).
    DoubleVote(Box<DoubleVote>),
    /// See [`DoubleProposal`] (boxed: two full headers).
    DoubleProposal(Box<DoubleProposal>),
}

/// Why evidence does not prove misbehaviour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// The two messages are not by the same validator.
    #[error("the two messages are by different validators")]
    DifferentSigners,
    /// The two messages are for different slots.
    #[error("the two messages are for different slots")]
    DifferentSlots,
    /// The two messages are for the same block: no conflict.
    #[error("the two messages sign the same block")]
    NoConflict,
    /// The set given is not the one of the evidence's epoch.
    #[error("evidence names epoch {evidence}, the set given is for another epoch")]
    WrongSet {
        /// The epoch the evidence names.
        evidence: u64,
    },
    /// A signature does not verify.
    #[error("evidence signature: {0}")]
    Signature(QcError),
}

impl Evidence {
    /// The epoch whose set must be used to check this evidence.
    pub fn epoch(&self) -> u64 {
        match self {
            Self::DoubleVote(e) => e.epoch,
            Self::DoubleProposal(e) => e.first.epoch,
        }
    }

    /// Checks the evidence against the set of its epoch and returns the
    /// offender's owner address.
    pub fn verify(&self, set: &ValidatorSet, chain_id: u64) -> Result<Address, EvidenceError> {
        self.verify_with(
            set,
            |vote| vote.verify(set, chain_id),
            |header| verify_seal(header, set, chain_id),
        )
    }

    /// [`Evidence::verify`] through `cache`: signatures that passed a check
    /// before (the votes and seals the detecting engine accepted, shared in
    /// the simulator) are not paired again, and those that pass now are
    /// remembered. The rules are the same; only the pairings are saved.
    pub fn verify_cached(
        &self,
        set: &ValidatorSet,
        chain_id: u64,
        cache: &Mutex<VerifiedCache>,
    ) -> Result<Address, EvidenceError> {
        self.verify_with(
            set,
            |vote| vote.verify_cached(set, chain_id, cache),
            |header| {
                let root = bls::proposal_signing_root(chain_id, &header.hash());
                let key = VerifiedCache::signature_key(
                    &root,
                    set,
                    header.proposer_index,
                    &header.proposer_signature,
                );
                VerifiedCache::check(cache, key, || (), || verify_seal(header, set, chain_id))
            },
        )
    }

    /// The rules of both checks, with the signature checks given.
    fn verify_with(
        &self,
        set: &ValidatorSet,
        check_vote: impl Fn(&Vote) -> Result<(), QcError>,
        check_seal: impl Fn(&SignedHeader) -> Result<(), QcError>,
    ) -> Result<Address, EvidenceError> {
        let index = match self {
            Self::DoubleVote(double_vote) => {
                let DoubleVote { first, second, .. } = double_vote.as_ref();
                if first.validator_index != second.validator_index {
                    return Err(EvidenceError::DifferentSigners);
                }
                if first.slot != second.slot {
                    return Err(EvidenceError::DifferentSlots);
                }
                if first.block_hash == second.block_hash {
                    return Err(EvidenceError::NoConflict);
                }
                check_vote(first).map_err(EvidenceError::Signature)?;
                check_vote(second).map_err(EvidenceError::Signature)?;
                first.validator_index as usize
            }
            Self::DoubleProposal(proposal) => {
                let DoubleProposal { first, second } = proposal.as_ref();
                if first.proposer_index != second.proposer_index || first.epoch != second.epoch {
                    return Err(EvidenceError::DifferentSigners);
                }
                if first.slot != second.slot {
                    return Err(EvidenceError::DifferentSlots);
                }
                if first.hash() == second.hash() {
                    return Err(EvidenceError::NoConflict);
                }
                if first.validator_set_hash != set.hash() {
                    return Err(EvidenceError::WrongSet {
                        evidence: first.epoch,
                    });
                }
                for header in [first, second] {
                    check_seal(header).map_err(EvidenceError::Signature)?;
                }
                first.proposer_index as usize
            }
        };
        // A signature checked against member `index` proves it exists.
        Ok(set.validators()[index].owner)
    }
}

/// Checks a header's proposer seal against the member it names.
pub(crate) fn verify_seal(
    header: &SignedHeader,
    set: &ValidatorSet,
    chain_id: u64,
) -> Result<(), QcError> {
    let index = header.proposer_index as usize;
    let key = set
        .decoded_keys()
        .get(index)
        .ok_or(QcError::SignerOutsideSet {
            index,
            set_len: set.len(),
        })?;
    let root = bls::proposal_signing_root(chain_id, &header.hash());
    bls::verify(key, &root, &header.proposer_signature).map_err(|e| match e {
        bls::BlsError::VerificationFailed => QcError::BadSignature,
        other => QcError::MalformedSignature(other),
    })
}

impl Encodable for Evidence {
    fn encode(&self, out: &mut dyn alloy_rlp::BufMut) {
        alloy_rlp::Header {
            list: true,
            payload_length: self.payload_length(),
        }
        .encode(out);
        match self {
            Self::DoubleVote(e) => {
                1u8.encode(out);
                e.encode(out);
            }
            Self::DoubleProposal(e) => {
                2u8.encode(out);
                e.encode(out);
            }
        }
    }
    fn length(&self) -> usize {
        let payload = self.payload_length();
        alloy_rlp::length_of_length(payload) + payload
    }
}

impl Evidence {
    fn payload_length(&self) -> usize {
        1 + match self {
            Self::DoubleVote(e) => e.length(),
            Self::DoubleProposal(e) => e.length(),
        }
    }
}

impl Decodable for Evidence {
    fn decode(buf: &mut &[u8]) -> alloy_rlp::Result<Self> {
        let header = alloy_rlp::Header::decode(buf)?;
        if !header.list {
            return Err(alloy_rlp::Error::UnexpectedString);
        }
        if buf.len() < header.payload_length {
            return Err(alloy_rlp::Error::InputTooShort);
        }
        let (mut payload, rest) = buf.split_at(header.payload_length);
        let evidence = match u8::decode(&mut payload)? {
            1 => Self::DoubleVote(Box::new(DoubleVote::decode(&mut payload)?)),
            2 => Self::DoubleProposal(Box::new(DoubleProposal::decode(&mut payload)?)),
            _ => return Err(alloy_rlp::Error::Custom("unknown evidence kind")),
        };
        if !payload.is_empty() {
            return Err(alloy_rlp::Error::UnexpectedLength);
        }
        *buf = rest;
        Ok(evidence)
    }
}
