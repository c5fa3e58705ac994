//! The rulebook: how a header is checked against its parent and its epoch's
//! validator set. The full node and the light client both verify with these
//! functions and nothing else.

use crate::bls;
use crate::chain_spec::ChainSpec;
use crate::evidence::verify_seal;
use crate::header::{CertifiedHeader, Header, SignedHeader};
use crate::qc::{QcError, QuorumCert, SignatureBatch};
use crate::validator::ValidatorSet;
use alloy_primitives::{B256, U256};

/// Which header rule was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The header commits to another validator set than the one given.
    #[error("header commits to validator set {header}, the set given hashes to {given}")]
    SetHashMismatch {
        /// `validator_set_hash` in the header.
        header: B256,
        /// Hash of the set used for verification.
        given: B256,
    },
    /// The proposer index is not the one scheduled for the slot.
    #[error("proposer index {got} is not the scheduled proposer {expected} of slot {slot}")]
    WrongProposer {
        /// The slot.
        slot: u64,
        /// Scheduled proposer.
        expected: usize,
        /// Proposer named in the header.
        got: usize,
    },
    /// The proposer's seal does not verify.
    #[error("proposer seal: {0}")]
    BadSeal(QcError),
    /// The timestamp is not the start of the header's slot.
    #[error("timestamp {got} is not the start of slot {slot} ({expected})")]
    WrongTimestamp {
        /// The slot.
        slot: u64,
        /// Timestamp the spec gives for the slot.
        expected: u64,
        /// Timestamp in the header.
        got: u64,
    },
    /// The header claims an epoch its slot has not reached.
    #[error("epoch {epoch} starts after slot {slot}")]
    EpochAhead {
        /// Epoch in the header.
        epoch: u64,
        /// Slot in the header.
        slot: u64,
    },
    /// Gas used exceeds the limit.
    #[error("gas used {used} exceeds gas limit {limit}")]
    GasOverLimit {
        /// Gas used.
        used: u64,
        /// Gas limit.
        limit: u64,
    },
    /// The number is not the parent's plus one.
    #[error("number {got} does not follow parent number {parent}")]
    NotNextNumber {
        /// Parent's number.
        parent: u64,
        /// Header's number.
        got: u64,
    },
    /// The parent hash does not link to the given parent.
    #[error("parent hash {got} does not link to the parent {parent}")]
    ParentHashMismatch {
        /// Hash of the given parent.
        parent: B256,
        /// `parent_hash` in the header.
        got: B256,
    },
    /// The slot does not increase.
    #[error("slot {got} is not after the parent's slot {parent}")]
    SlotNotIncreasing {
        /// Parent's slot.
        parent: u64,
        /// Header's slot.
        got: u64,
    },
    /// The epoch moved backwards or skipped one.
    #[error("epoch {got} cannot follow the parent's epoch {parent}")]
    EpochJump {
        /// Parent's epoch.
        parent: u64,
        /// Header's epoch.
        got: u64,
    },
    /// Within an epoch the set commitments must not change; at a boundary the
    /// new set must be the one the parent announced.
    #[error("validator set commitments do not follow the parent's")]
    SetCommitmentBroken,
    /// The parent QC certifies another block or slot than the parent.
    #[error("parent QC certifies block {qc_hash} at slot {qc_slot}, not the parent")]
    ParentQcMismatch {
        /// Block the QC certifies.
        qc_hash: B256,
        /// Slot the QC certifies.
        qc_slot: u64,
    },
    /// The parent QC is invalid.
    #[error("parent QC: {0}")]
    BadParentQc(QcError),
    /// The header's own QC certifies another block or slot.
    #[error("QC certifies block {qc_hash} at slot {qc_slot}, not this header")]
    QcMismatch {
        /// Block the QC certifies.
        qc_hash: B256,
        /// Slot the QC certifies.
        qc_slot: u64,
    },
    /// The header's own QC is invalid.
    #[error("QC: {0}")]
    BadQc(QcError),
}

/// Checks what a header says about itself against its epoch's `set`: the set
/// commitment, timing, gas, the scheduled proposer and its seal.
pub fn verify_header(
    header: &SignedHeader,
    set: &ValidatorSet,
    spec: &ChainSpec,
) -> Result<(), HeaderError> {
    check_header(header, set, spec)?;
    verify_seal(header, set, spec.chain_id).map_err(HeaderError::BadSeal)
}

/// [`verify_header`] without the seal's pairing check, for callers that
/// verify seals in a [`SignatureBatch`] (see [`push_seal`]).
pub fn check_header(
    header: &SignedHeader,
    set: &ValidatorSet,
    spec: &ChainSpec,
) -> Result<(), HeaderError> {
    if header.validator_set_hash != set.hash() {
        return Err(HeaderError::SetHashMismatch {
            header: header.validator_set_hash,
            given: set.hash(),
        });
    }
    let expected = spec.slot_timestamp(header.slot);
    if header.timestamp != expected {
        return Err(HeaderError::WrongTimestamp {
            slot: header.slot,
            expected,
            got: header.timestamp,
        });
    }
    if header.epoch > spec.nominal_epoch(header.slot) {
        return Err(HeaderError::EpochAhead {
            epoch: header.epoch,
            slot: header.slot,
        });
    }
    if header.gas_used > header.gas_limit {
        return Err(HeaderError::GasOverLimit {
            used: header.gas_used,
            limit: header.gas_limit,
        });
    }
    let expected = set.proposer_index(header.slot);
    let got = header.proposer_index as usize;
    if got != expected {
        return Err(HeaderError::WrongProposer {
            slot: header.slot,
            expected,
            got,
        });
    }
    Ok(())
}

/// Adds a header's seal to `batch` (after [`check_header`] has passed).
pub fn push_seal(
    batch: &mut SignatureBatch,
    header: &SignedHeader,
    set: &ValidatorSet,
    chain_id: u64,
) -> Result<(), HeaderError> {
    let index = header.proposer_index as usize;
    let key =
        set.decoded_keys()
            .get(index)
            .ok_or(HeaderError::BadSeal(QcError::SignerOutsideSet {
                index,
                set_len: set.len(),
            }))?;
    let root = bls::proposal_signing_root(chain_id, &header.hash());
    batch
        .push_signature(key, root, &header.proposer_signature)
        .map_err(HeaderError::BadSeal)
}

/// Checks that `child` extends `parent`: number, hash link, slot order, epoch
/// and set-commitment continuity, and that its `parent_qc` certifies `parent`
/// under `parent_set` (the set of the parent's epoch). Returns the stake that
/// signed the parent QC (zero for a child of genesis, which needs no QC).
pub fn verify_link(
    child: &Header,
    parent: &Header,
    parent_set: &ValidatorSet,
    chain_id: u64,
) -> Result<U256, HeaderError> {
    match check_link(child, parent, parent_set)? {
        Some(qc) => qc
            .verify(parent_set, chain_id)
            .map_err(HeaderError::BadParentQc),
        None => Ok(U256::ZERO),
    }
}

/// [`verify_link`] without the parent QC's signature check: returns the QC
/// still to verify against `parent_set` (none for a child of genesis).
pub fn check_link<'a>(
    child: &'a Header,
    parent: &Header,
    parent_set: &ValidatorSet,
) -> Result<Option<&'a QuorumCert>, HeaderError> {
    let parent_hash = parent.hash();
    if child.number != parent.number.saturating_add(1) || parent.number == u64::MAX {
        return Err(HeaderError::NotNextNumber {
            parent: parent.number,
            got: child.number,
        });
    }
    if child.parent_hash != parent_hash {
        return Err(HeaderError::ParentHashMismatch {
            parent: parent_hash,
            got: child.parent_hash,
        });
    }
    if child.slot <= parent.slot {
        return Err(HeaderError::SlotNotIncreasing {
            parent: parent.slot,
            got: child.slot,
        });
    }
    if child.epoch == parent.epoch {
        if child.validator_set_hash != parent.validator_set_hash
            || child.next_validator_set_hash != parent.next_validator_set_hash
        {
            return Err(HeaderError::SetCommitmentBroken);
        }
    } else if child.epoch == parent.epoch.saturating_add(1) {
        if child.validator_set_hash != parent.next_validator_set_hash {
            return Err(HeaderError::SetCommitmentBroken);
        }
    } else {
        return Err(HeaderError::EpochJump {
            parent: parent.epoch,
            got: child.epoch,
        });
    }
    if parent.is_genesis() {
        return if child.parent_qc == QuorumCert::genesis() {
            Ok(None)
        } else {
            Err(HeaderError::ParentQcMismatch {
                qc_hash: child.parent_qc.block_hash,
                qc_slot: child.parent_qc.slot,
            })
        };
    }
    if child.parent_qc.block_hash != parent_hash || child.parent_qc.slot != parent.slot {
        return Err(HeaderError::ParentQcMismatch {
            qc_hash: child.parent_qc.block_hash,
            qc_slot: child.parent_qc.slot,
        });
    }
    if parent.validator_set_hash != parent_set.hash() {
        return Err(HeaderError::SetHashMismatch {
            header: parent.validator_set_hash,
            given: parent_set.hash(),
        });
    }
    Ok(Some(&child.parent_qc))
}

impl CertifiedHeader {
    /// Verifies the header (see [`verify_header`]) and that its QC certifies
    /// it under `set`. Returns the stake that signed.
    pub fn verify(&self, set: &ValidatorSet, spec: &ChainSpec) -> Result<U256, HeaderError> {
        verify_header(&self.header, set, spec)?;
        if self.qc.block_hash != self.header.hash() || self.qc.slot != self.header.slot {
            return Err(HeaderError::QcMismatch {
                qc_hash: self.qc.block_hash,
                qc_slot: self.qc.slot,
            });
        }
        self.qc
            .verify(set, spec.chain_id)
            .map_err(HeaderError::BadQc)
    }
}
