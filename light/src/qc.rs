//! Votes and quorum certificates: the rule that says a block is certified.
//!
//! A [`QuorumCert`] names a slot and a block hash, a bitfield of the epoch's
//! validators who signed, and one aggregate BLS signature. It is valid for a
//! [`ValidatorSet`] when
//! 1. the bitfield is exactly `ceil(n / 8)` bytes, has no bit at or past `n`,
//!    and has at least one bit set;
//! 2. the signers hold strictly more than 2/3 of the set's stake;
//! 3. the aggregate signature verifies, under the signers' aggregate key, for
//!    the vote signing root of (chain id, slot, block hash).

use crate::bls::{self, BlsError, BlsSecretKey, BlsSignature, SIGNATURE_DST};
use crate::codec::{self, DecodeError};
use crate::validator::ValidatorSet;
use alloy_primitives::{B256, Bytes, U256, keccak256};
use alloy_rlp::{RlpDecodable, RlpDecodableWrapper, RlpEncodable, RlpEncodableWrapper};
use blst::min_pk::{AggregatePublicKey, AggregateSignature, PublicKey, Signature};
use blst::{BLST_ERROR, MultiPoint, Pairing, blst_fp12, blst_p1_affine, blst_p2_affine};

/// Which members of a set signed: bit `i` (byte `i / 8`, bit `i % 8`, least
/// significant first) stands for validator `i`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, RlpEncodableWrapper, RlpDecodableWrapper)]
pub struct SignerBitfield(Bytes);

impl SignerBitfield {
    /// An all-zero bitfield sized for a set of `set_len` validators.
    pub fn with_set_len(set_len: usize) -> Self {
        Self(Bytes::from(vec![0u8; set_len.div_ceil(8)]))
    }

    /// Wraps raw bytes (as received); validity is checked by [`QuorumCert::verify`].
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Marks validator `index` as a signer. Panics if `index` is outside the bitfield.
    pub fn set(&mut self, index: usize) {
        let mut bytes = self.0.to_vec();
        bytes[index / 8] |= 1 << (index % 8);
        self.0 = bytes.into();
    }

    /// Whether validator `index` signed.
    pub fn get(&self, index: usize) -> bool {
        self.0
            .get(index / 8)
            .is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    /// The indices of all signers, in increasing order.
    pub fn signers(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(byte_index, byte)| {
            (0..8)
                .filter(move |bit| byte & (1 << bit) != 0)
                .map(move |bit| byte_index * 8 + bit)
        })
    }

    /// Number of signers.
    pub fn count(&self) -> usize {
        self.0.iter().map(|b| b.count_ones() as usize).sum()
    }
}

/// One validator's signed vote for a block at a slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable)]
pub struct Vote {
    /// The slot voted in.
    pub slot: u64,
    /// The block voted for.
    pub block_hash: B256,
    /// The voter's position in the epoch's validator set.
    pub validator_index: u32,
    /// Signature over [`bls::vote_signing_root`].
    pub signature: BlsSignature,
}

impl Vote {
    /// Signs a vote with `key`, which must be the key of member `validator_index`.
    pub fn sign(
        key: &BlsSecretKey,
        chain_id: u64,
        slot: u64,
        block_hash: B256,
        validator_index: u32,
    ) -> Self {
        let signature = key.sign(&bls::vote_signing_root(chain_id, slot, &block_hash));
        Self {
            slot,
            block_hash,
            validator_index,
            signature,
        }
    }

    /// Checks that the voter is in `set` and the signature is theirs.
    pub fn verify(&self, set: &ValidatorSet, chain_id: u64) -> Result<(), QcError> {
        let index = self.validator_index as usize;
        let key = set
            .decoded_keys()
            .get(index)
            .ok_or(QcError::SignerOutsideSet {
                index,
                set_len: set.len(),
            })?;
        let root = bls::vote_signing_root(chain_id, self.slot, &self.block_hash);
        bls::verify(key, &root, &self.signature).map_err(QcError::from_bls)
    }
}

/// A quorum certificate: proof that more than 2/3 of an epoch's stake voted
/// for `block_hash` at `slot`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable)]
pub struct QuorumCert {
    /// The slot of the certified block.
    pub slot: u64,
    /// The certified block.
    pub block_hash: B256,
    /// Which members of the epoch's set signed.
    pub signers: SignerBitfield,
    /// The aggregate of the signers' vote signatures.
    pub signature: BlsSignature,
}

/// Which QC rule was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QcError {
    /// No signer bit is set.
    #[error("signer bitfield is empty")]
    EmptyBitfield,
    /// A bit is set for a position past the end of the set.
    #[error("signer bit {index} is outside the set of {set_len} validators")]
    SignerOutsideSet {
        /// The offending position.
        index: usize,
        /// Size of the set.
        set_len: usize,
    },
    /// The bitfield has the wrong number of bytes for the set (non-canonical).
    #[error("signer bitfield is {got} bytes, a set of {set_len} needs {expected}")]
    BitfieldLength {
        /// Expected byte length, `ceil(set_len / 8)`.
        expected: usize,
        /// Actual byte length.
        got: usize,
        /// Size of the set.
        set_len: usize,
    },
    /// The signers hold two thirds of the stake or less.
    #[error("signers hold {signed} of {total} stake, not more than two thirds")]
    InsufficientStake {
        /// Stake of the signers.
        signed: U256,
        /// Total stake of the set.
        total: U256,
    },
    /// The signature bytes do not decode.
    #[error("aggregate signature: {0}")]
    MalformedSignature(BlsError),
    /// The signature does not verify for these signers and this (chain, slot, block).
    #[error("aggregate signature does not verify for the signers and message")]
    BadSignature,
    /// A vote was added twice to an aggregation.
    #[error("validator {index} already voted in this aggregation")]
    DuplicateVote {
        /// The voter.
        index: usize,
    },
    /// A vote for another slot or block was added to an aggregation.
    #[error("vote is for another slot or block than this aggregation")]
    VoteMismatch,
}

impl QcError {
    fn from_bls(err: BlsError) -> Self {
        match err {
            BlsError::VerificationFailed => Self::BadSignature,
            other => Self::MalformedSignature(other),
        }
    }
}

/// A QC whose structure and stake have been checked (or a single
/// signature), ready for the pairing check.
#[derive(Debug)]
struct PreparedQc {
    root: B256,
    aggregate_key: PublicKey,
    signature: Signature,
}

impl PreparedQc {
    fn verify(&self) -> bool {
        let result = self.signature.verify(
            true,
            self.root.as_slice(),
            SIGNATURE_DST,
            &[],
            &self.aggregate_key,
            false,
        );
        result == BLST_ERROR::BLST_SUCCESS
    }
}

impl QuorumCert {
    /// Decodes a QC from its canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_exact("quorum certificate", bytes, codec::MAX_QC_BYTES)
    }

    /// The vote signing root this QC's signature covers.
    pub fn signing_root(&self, chain_id: u64) -> B256 {
        bls::vote_signing_root(chain_id, self.slot, &self.block_hash)
    }

    /// A stable identifier of the certificate (keccak256 of its encoding).
    pub fn hash(&self) -> B256 {
        keccak256(alloy_rlp::encode(self))
    }

    /// Verifies this QC against the epoch's set. Returns the signers' stake.
    pub fn verify(&self, set: &ValidatorSet, chain_id: u64) -> Result<U256, QcError> {
        let (prepared, signed) = self.prepare(set, chain_id)?;
        match prepared.verify() {
            true => Ok(signed),
            false => Err(QcError::BadSignature),
        }
    }

    /// Every check but the pairing: bitfield shape, stake, key aggregation, signature decoding.
    fn prepare(&self, set: &ValidatorSet, chain_id: u64) -> Result<(PreparedQc, U256), QcError> {
        let set_len = set.len();
        if let Some(index) = self.signers.signers().find(|i| *i >= set_len) {
            return Err(QcError::SignerOutsideSet { index, set_len });
        }
        let expected = set_len.div_ceil(8);
        let got = self.signers.as_bytes().len();
        if got != expected {
            return Err(QcError::BitfieldLength {
                expected,
                got,
                set_len,
            });
        }
        let mut signers = self.signers.signers();
        let first = signers.next().ok_or(QcError::EmptyBitfield)?;
        let mut signed = set.validators()[first].stake;
        let mut aggregate = AggregatePublicKey::from_public_key(&set.decoded_keys()[first]);
        for index in signers {
            signed += set.validators()[index].stake;
            aggregate
                .add_public_key(&set.decoded_keys()[index], false)
                .expect("set keys were validated when the set was built");
        }
        if !set.is_quorum(signed) {
            return Err(QcError::InsufficientStake {
                signed,
                total: set.total_stake(),
            });
        }
        let signature = bls::decode_signature(&self.signature).map_err(QcError::from_bls)?;
        let prepared = PreparedQc {
            root: self.signing_root(chain_id),
            aggregate_key: aggregate.to_public_key(),
            signature,
        };
        Ok((prepared, signed))
    }
}

/// A QC that failed inside a batch, by its position in the batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quorum certificate {index} of the batch: {error}")]
pub struct BatchError {
    /// Position of the first invalid QC.
    pub index: usize,
    /// Why it is invalid.
    pub error: QcError,
}

/// Verifies many QCs with one final exponentiation (random linear combination).
///
/// Each QC is weighted by a 64-bit scalar derived from `randomness`, which the
/// caller must draw freshly and keep secret from whoever supplied the QCs
/// (this crate does no I/O, so it cannot draw it itself). On failure the
/// batch is re-checked one by one to name the first bad QC. Runs on one core;
/// to use more, split the items and verify each part on its own thread.
pub fn verify_batch(
    items: &[(&QuorumCert, &ValidatorSet)],
    chain_id: u64,
    randomness: [u8; 32],
) -> Result<(), BatchError> {
    let mut batch = SignatureBatch::default();
    for (index, (qc, set)) in items.iter().enumerate() {
        batch
            .push_qc(qc, set, chain_id)
            .map_err(|error| BatchError { index, error })?;
    }
    match batch.verify(randomness) {
        true => Ok(()),
        false => Err(BatchError {
            index: batch
                .first_invalid()
                .expect("a failing batch has a failing member"),
            error: QcError::BadSignature,
        }),
    }
}

/// BLS checks collected to be verified together: QCs (after their bitfield
/// and stake checks) and single signatures such as proposer seals.
#[derive(Debug, Default)]
pub struct SignatureBatch {
    items: Vec<PreparedQc>,
}

impl SignatureBatch {
    /// Adds a QC; its structure and stake are checked now, its signature later.
    pub fn push_qc(
        &mut self,
        qc: &QuorumCert,
        set: &ValidatorSet,
        chain_id: u64,
    ) -> Result<(), QcError> {
        let (prepared, _) = qc.prepare(set, chain_id)?;
        self.items.push(prepared);
        Ok(())
    }

    /// Adds one signature by one (already validated) key over `signing_root`.
    pub fn push_signature(
        &mut self,
        key: &PublicKey,
        signing_root: B256,
        signature: &BlsSignature,
    ) -> Result<(), QcError> {
        let signature = bls::decode_signature(signature).map_err(QcError::from_bls)?;
        self.items.push(PreparedQc {
            root: signing_root,
            aggregate_key: *key,
            signature,
        });
        Ok(())
    }

    /// Drops the checks from position `len` on (those of a block that
    /// failed half-way through being added).
    pub fn truncate(&mut self, len: usize) {
        self.items.truncate(len);
    }

    /// Number of checks collected.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing was collected.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether every signature verifies (randomized, see [`verify_batch`]).
    pub fn verify(&self, randomness: [u8; 32]) -> bool {
        self.verify_range(0..self.items.len(), randomness)
    }

    /// Whether the signatures in `range` verify: lets a caller spread one
    /// batch over several threads.
    pub fn verify_range(&self, range: std::ops::Range<usize>, randomness: [u8; 32]) -> bool {
        match self.items.get(range) {
            Some([]) => true,
            Some(items) => batch_equation_holds(items, &randomness),
            None => false,
        }
    }

    /// The position of the first check that fails on its own, if any.
    pub fn first_invalid(&self) -> Option<usize> {
        self.items.iter().position(|p| !p.verify())
    }
}

/// Checks `e(g1, Σ rᵢ·σᵢ) = Π e(rᵢ·pkᵢ, H(mᵢ))` for random 64-bit `rᵢ`.
///
/// The signatures are subgroup-checked one by one and combined with one
/// multi-scalar multiplication (Pippenger), which is cheaper than scaling
/// each 96-byte G2 point on its own; the Miller loops share one final
/// exponentiation.
fn batch_equation_holds(prepared: &[PreparedQc], randomness: &[u8; 32]) -> bool {
    let mut scalars = Vec::with_capacity(prepared.len() * 8);
    for i in 0..prepared.len() {
        let mut seed = [0u8; 40];
        seed[..32].copy_from_slice(randomness);
        seed[32..].copy_from_slice(&(i as u64).to_le_bytes());
        let mut r: [u8; 8] = keccak256(seed)[..8].try_into().expect("8 bytes");
        if r == [0; 8] {
            r[0] = 1;
        }
        scalars.extend_from_slice(&r);
    }
    let signatures: Vec<Signature> = prepared.iter().map(|p| p.signature).collect();
    if signatures.validate().is_err() {
        return false;
    }
    let combined = signatures.mult(&scalars, 64).to_signature();
    let mut pairing = Pairing::new(true, SIGNATURE_DST);
    for (p, r) in prepared.iter().zip(scalars.chunks_exact(8)) {
        let key: &blst_p1_affine = (&p.aggregate_key).into();
        // No signature here (`&()` is passed as null): it is already in `combined`.
        let err = pairing.mul_n_aggregate(key, false, &(), false, r, 64, p.root.as_slice(), &[]);
        if err != BLST_ERROR::BLST_SUCCESS {
            return false;
        }
    }
    pairing.commit();
    let mut gt_signature = blst_fp12::default();
    Pairing::aggregated(&mut gt_signature, <&blst_p2_affine>::from(&combined));
    pairing.finalverify(Some(&gt_signature))
}

/// Collects verified votes for one (slot, block) into a [`QuorumCert`].
#[derive(Debug)]
pub struct QcBuilder {
    slot: u64,
    block_hash: B256,
    signers: SignerBitfield,
    signature: Option<AggregateSignature>,
    signed_stake: U256,
}

impl QcBuilder {
    /// Starts an aggregation for `block_hash` at `slot` over `set`.
    pub fn new(slot: u64, block_hash: B256, set: &ValidatorSet) -> Self {
        Self {
            slot,
            block_hash,
            signers: SignerBitfield::with_set_len(set.len()),
            signature: None,
            signed_stake: U256::ZERO,
        }
    }

    /// Adds a vote that the caller has already checked with [`Vote::verify`]
    /// against the same `set`.
    pub fn add_verified_vote(&mut self, vote: &Vote, set: &ValidatorSet) -> Result<(), QcError> {
        if vote.slot != self.slot || vote.block_hash != self.block_hash {
            return Err(QcError::VoteMismatch);
        }
        let index = vote.validator_index as usize;
        let validator = set.get(index).ok_or(QcError::SignerOutsideSet {
            index,
            set_len: set.len(),
        })?;
        if self.signers.get(index) {
            return Err(QcError::DuplicateVote { index });
        }
        let signature = bls::decode_signature(&vote.signature).map_err(QcError::from_bls)?;
        match &mut self.signature {
            Some(aggregate) => {
                aggregate
                    .add_signature(&signature, false)
                    .map_err(|e| QcError::MalformedSignature(BlsError::InvalidSignature(e)))?;
            }
            None => self.signature = Some(AggregateSignature::from_signature(&signature)),
        }
        self.signers.set(index);
        self.signed_stake += validator.stake;
        Ok(())
    }

    /// Stake of the votes collected so far.
    pub fn signed_stake(&self) -> U256 {
        self.signed_stake
    }

    /// The certificate, once the votes hold a quorum of `set`'s stake.
    pub fn certificate(&self, set: &ValidatorSet) -> Option<QuorumCert> {
        if !set.is_quorum(self.signed_stake) {
            return None;
        }
        let signature = self.signature.as_ref()?.to_signature().compress();
        Some(QuorumCert {
            slot: self.slot,
            block_hash: self.block_hash,
            signers: self.signers.clone(),
            signature: BlsSignature::from(signature),
        })
    }
}
