//! The rules a light client enforces on what upstreams send, as one enum
//! whose variants name the broken rule ([`Violation::name`] gives a stable
//! identifier for logs, JSON output and the conformance catalogue).

use super::update::SetDiffError;
use crate::codec::DecodeError;
use crate::qc::QcError;
use crate::verify::HeaderError;
use alloy_primitives::B256;

/// Why an update or head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The bytes are over the size cap for their kind.
    #[error("oversized message: {0}")]
    Oversized(DecodeError),
    /// The bytes do not decode.
    #[error("malformed message: {0}")]
    Malformed(DecodeError),
    /// A page of updates is longer than the client accepts at once.
    #[error("page of {len} updates is over the limit of {max}")]
    PageTooLarge {
        /// Updates in the page.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A header or QC rule of the protocol core.
    #[error("{0}")]
    Header(HeaderError),
    /// The update is for an epoch the client already handed over from (a replay).
    #[error(
        "update of epoch {update} is stale: the client already holds the set of epoch {trusted}"
    )]
    StaleUpdate {
        /// The update's epoch.
        update: u64,
        /// The newest epoch whose set the client holds.
        trusted: u64,
    },
    /// The update is for a later epoch than the next one the client needs.
    #[error("update of epoch {update} skips ahead: the next update must be for epoch {expected}")]
    SkippedEpoch {
        /// The update's epoch.
        update: u64,
        /// The epoch the client needs next.
        expected: u64,
    },
    /// The update's slot is not after the last applied one.
    #[error("update slot {slot} is not after the last trusted slot {anchor}")]
    SlotNotIncreasing {
        /// The update's slot.
        slot: u64,
        /// The last trusted slot.
        anchor: u64,
    },
    /// A header of the trusted epoch commits to another next set than the one already trusted.
    #[error("header commits to next set {header}, but the epoch's headers committed to {trusted}")]
    NextCommitmentConflict {
        /// The trusted commitment.
        trusted: B256,
        /// The header's.
        header: B256,
    },
    /// The set the update carries does not hash to the header's `next_validator_set_hash`.
    #[error("the next set in the update hashes to {got}, the header commits to {committed}")]
    NextSetMismatch {
        /// The header's commitment.
        committed: B256,
        /// The carried set's hash.
        got: B256,
    },
    /// The set difference does not apply.
    #[error("set difference: {0}")]
    BadSetDiff(SetDiffError),
    /// A certified header that provably does not descend from the finalized header.
    #[error("header {hash} does not descend from the finalized header {finalized}")]
    ConflictsWithFinalized {
        /// The header.
        hash: B256,
        /// The finalized header.
        finalized: B256,
    },
    /// The client is halted on equivocation evidence until it is resolved.
    #[error("halted on equivocation evidence: resolve the conflict first")]
    Halted,
}

impl Violation {
    /// A stable `snake_case` name of the rule.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Oversized(_) => "oversized",
            Self::Malformed(_) => "malformed",
            Self::PageTooLarge { .. } => "page_too_large",
            Self::Header(e) => header_rule(e),
            Self::StaleUpdate { .. } => "stale_update",
            Self::SkippedEpoch { .. } => "skipped_epoch",
            Self::SlotNotIncreasing { .. } => "slot_not_increasing",
            Self::NextCommitmentConflict { .. } => "next_commitment_conflict",
            Self::NextSetMismatch { .. } => "next_set_mismatch",
            Self::BadSetDiff(_) => "bad_set_diff",
            Self::ConflictsWithFinalized { .. } => "conflicts_with_finalized",
            Self::Halted => "halted",
        }
    }

    /// Whether the violation proves the sender served something false (as
    /// opposed to the client refusing input while halted).
    pub fn blames_sender(&self) -> bool {
        !matches!(self, Self::Halted)
    }

    /// Sorts a decoding error into [`Violation::Oversized`] or [`Violation::Malformed`].
    pub fn from_decode(error: DecodeError) -> Self {
        match error {
            DecodeError::Oversized { .. } => Self::Oversized(error),
            other => Self::Malformed(other),
        }
    }
}

fn header_rule(e: &HeaderError) -> &'static str {
    match e {
        HeaderError::SetHashMismatch { .. } => "set_hash_mismatch",
        HeaderError::WrongProposer { .. } => "wrong_proposer",
        HeaderError::BadSeal(_) => "bad_seal",
        HeaderError::WrongTimestamp { .. } => "wrong_timestamp",
        HeaderError::EpochAhead { .. } => "epoch_ahead",
        HeaderError::GasOverLimit { .. } => "gas_over_limit",
        HeaderError::NotNextNumber { .. } => "not_next_number",
        HeaderError::ParentHashMismatch { .. } => "parent_hash_mismatch",
        HeaderError::SlotNotIncreasing { .. } => "slot_not_increasing",
        HeaderError::EpochJump { .. } => "epoch_jump",
        HeaderError::SetCommitmentBroken => "set_commitment_broken",
        HeaderError::ParentQcMismatch { .. } => "parent_qc_mismatch",
        HeaderError::BadParentQc(q) => match q {
            QcError::BadSignature => "parent_qc_bad_signature",
            _ => "parent_qc_invalid",
        },
        HeaderError::QcMismatch { .. } => "qc_mismatch",
        HeaderError::BadQc(q) => qc_rule(q),
    }
}

fn qc_rule(e: &QcError) -> &'static str {
    match e {
        QcError::EmptyBitfield => "qc_empty_bitfield",
        QcError::SignerOutsideSet { .. } => "qc_signer_outside_set",
        QcError::BitfieldLength { .. } => "qc_bitfield_length",
        QcError::InsufficientStake { .. } => "qc_insufficient_stake",
        QcError::MalformedSignature(_) => "qc_malformed_signature",
        QcError::BadSignature => "qc_bad_signature",
        QcError::DuplicateVote { .. } => "qc_duplicate_vote",
        QcError::VoteMismatch => "qc_vote_mismatch",
    }
}
