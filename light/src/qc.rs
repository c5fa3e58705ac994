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
use blst::{
    BLST_ERROR, MultiPoint, Pairing, blst_fp12, blst_p1_affine, blst_p2, blst_p2_affine,
    blst_scalar,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

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
        let signed = self.check_signers(set)?;
        let mut signers = self.signers.signers();
        let first = signers.next().ok_or(QcError::EmptyBitfield)?;
        let mut aggregate = AggregatePublicKey::from_public_key(&set.decoded_keys()[first]);
        for index in signers {
            aggregate
                .add_public_key(&set.decoded_keys()[index], false)
                .expect("set keys were validated when the set was built");
        }
        let signature = bls::decode_signature(&self.signature).map_err(QcError::from_bls)?;
        let prepared = PreparedQc {
            root: self.signing_root(chain_id),
            aggregate_key: aggregate.to_public_key(),
            signature,
        };
        Ok((prepared, signed))
    }

    /// The bitfield's shape and the signers' stake (rules 1 and 2).
    fn check_signers(&self, set: &ValidatorSet) -> Result<U256, QcError> {
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
        for index in signers {
            signed += set.validators()[index].stake;
        }
        if !set.is_quorum(signed) {
            return Err(QcError::InsufficientStake {
                signed,
                total: set.total_stake(),
            });
        }
        Ok(signed)
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
    /// The set the votes were verified against.
    set_hash: B256,
    signers: SignerBitfield,
    /// Each signer's decoded signature, in the order added.
    signatures: Vec<(usize, Signature)>,
    signed_stake: U256,
}

impl QcBuilder {
    /// Starts an aggregation for `block_hash` at `slot` over `set`.
    pub fn new(slot: u64, block_hash: B256, set: &ValidatorSet) -> Self {
        Self {
            slot,
            block_hash,
            set_hash: set.hash(),
            signers: SignerBitfield::with_set_len(set.len()),
            signatures: Vec::new(),
            signed_stake: U256::ZERO,
        }
    }

    /// Adds a vote that the caller has already checked with [`Vote::verify`]
    /// against the same `set`.
    pub fn add_verified_vote(&mut self, vote: &Vote, set: &ValidatorSet) -> Result<(), QcError> {
        self.add_vote_with(vote, set, None)
    }

    /// [`Self::add_verified_vote`] for a vote verified through `cache`: the
    /// signature decoded by that check is taken from the cache rather than
    /// decompressed again.
    pub fn add_verified_vote_cached(
        &mut self,
        vote: &Vote,
        set: &ValidatorSet,
        chain_id: u64,
        cache: &Mutex<VerifiedCache>,
    ) -> Result<(), QcError> {
        let decoded = lock(cache).decoded(&VerifiedCache::vote_key(vote, set, chain_id));
        self.add_vote_with(vote, set, decoded)
    }

    fn add_vote_with(
        &mut self,
        vote: &Vote,
        set: &ValidatorSet,
        decoded: Option<Signature>,
    ) -> Result<(), QcError> {
        if set.hash() != self.set_hash {
            return Err(QcError::VoteMismatch);
        }
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
        let signature = match decoded {
            Some(signature) => signature,
            None => bls::decode_signature(&vote.signature).map_err(QcError::from_bls)?,
        };
        self.signatures.push((index, signature));
        self.signers.set(index);
        self.signed_stake += validator.stake;
        Ok(())
    }

    /// Whether validator `index`'s vote is in.
    pub fn has_vote_of(&self, index: usize) -> bool {
        self.signers.get(index)
    }

    /// Stake of the votes collected so far.
    pub fn signed_stake(&self) -> U256 {
        self.signed_stake
    }

    /// The certificate, once the votes hold a quorum of `set`'s stake.
    pub fn certificate(&self, set: &ValidatorSet) -> Option<QuorumCert> {
        if !set.is_quorum(self.signed_stake) || set.hash() != self.set_hash {
            return None;
        }
        let signature = self.aggregate(|_| true)?;
        Some(QuorumCert {
            slot: self.slot,
            block_hash: self.block_hash,
            signers: self.signers.clone(),
            signature: BlsSignature::from(signature),
        })
    }

    /// The compressed aggregate of the collected signatures of the signers
    /// `include` selects (`None` if it selects none).
    fn aggregate(&self, include: impl Fn(usize) -> bool) -> Option<[u8; 96]> {
        let mut selected = self
            .signatures
            .iter()
            .filter(|(index, _)| include(*index))
            .map(|(_, signature)| signature);
        let mut aggregate = AggregateSignature::from_signature(selected.next()?);
        for signature in selected {
            aggregate
                .add_signature(signature, false)
                .expect("collected signatures decoded, so they are on the curve");
        }
        Some(aggregate.to_signature().compress())
    }

    /// Checks `qc` against the votes collected here, without a pairing:
    /// when the QC's bitfield and stake are valid for `set` (the set these
    /// votes were verified against) and every signer's verified vote is
    /// here, the QC is valid exactly if its signature is the aggregate of
    /// those votes (a BLS signature is unique per key and message, so the
    /// valid aggregate is unique too). Returns the signers' stake when it
    /// is; `None` when this cannot tell (a signer missing, a different
    /// aggregate, a broken rule): the caller then runs the full check,
    /// which names the rule.
    pub fn confirms(&self, qc: &QuorumCert, set: &ValidatorSet) -> Option<U256> {
        if qc.slot != self.slot || qc.block_hash != self.block_hash || set.hash() != self.set_hash {
            return None;
        }
        let signed = qc.check_signers(set).ok()?;
        if qc.signers.signers().any(|index| !self.signers.get(index)) {
            return None;
        }
        let aggregate = self.aggregate(|index| qc.signers.get(index))?;
        (aggregate.as_slice() == qc.signature.as_slice()).then_some(signed)
    }
}

/// A bounded memory of signatures that already passed verification, so that
/// one seen again is not paired again: a node receives the same vote by
/// gossip and inside a QC, the same QC on its own and in the next header;
/// the simulator shares one cache between all its nodes.
///
/// An entry is the keccak256 of everything the verdict depends on: the kind
/// of check, the signing root (chain, domain, slot, block), the validator
/// set's hash (which commits to every key and stake), the signers (an index
/// or a bitfield) and the signature bytes. Entries are added only after a
/// check passed, so a forged signature never hits; the oldest entry makes
/// room for a new one past `capacity`.
#[derive(Debug)]
pub struct VerifiedCache {
    capacity: usize,
    /// Passed checks; a vote's entry keeps the signature it decoded, so
    /// that aggregating the vote later does not decompress it again.
    keys: HashMap<B256, Option<Signature>>,
    order: VecDeque<B256>,
    hits: u64,
    /// The last few vote signing roots hashed to the curve (a pure function
    /// of the root), for [`Vote::sign_cached`] and [`verify_votes_cached`].
    hashed_roots: VecDeque<(B256, blst_p2, blst_p2_affine)>,
    /// Votes that verifiers sharing this cache hold unchecked, by (slot,
    /// signing root, set hash); `None` unless pooling is on
    /// ([`Self::shared_pooling`]).
    waiting: Option<BTreeMap<(u64, B256, B256), Vec<Vote>>>,
    /// Votes in `waiting`.
    waiting_len: usize,
}

/// A [`VerifiedCache`] that several verifiers (engines, threads) share.
pub type SharedVerifiedCache = Arc<Mutex<VerifiedCache>>;

impl VerifiedCache {
    /// Entries a node keeps by default: several thousand slots of votes,
    /// QCs and seals for a set of 100, in about 4 MiB (a vote's entry
    /// holds its decoded signature).
    pub const DEFAULT_CAPACITY: usize = 16_384;

    /// An empty cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            keys: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
            hashed_roots: VecDeque::new(),
            waiting: None,
            waiting_len: 0,
        }
    }

    /// An empty cache ready to share.
    pub fn shared(capacity: usize) -> SharedVerifiedCache {
        Arc::new(Mutex::new(Self::new(capacity)))
    }

    /// An empty cache for several verifiers that each receive the same
    /// votes (the simulator's nodes): besides the checks that passed, it
    /// pools the votes each verifier holds unchecked
    /// ([`Self::note_waiting`]), and [`verify_votes_cached`] adds the pooled
    /// votes for the signing roots it checks to its batch. So a block's
    /// votes are paired together once, by whichever verifier checks them
    /// first, instead of in small groups by each verifier that happens to
    /// hold votes the others did not check yet. Each verifier still accepts
    /// only votes it received, and only after they passed a check. A node
    /// keeps a plain cache: its engine batches its own waiting votes.
    pub fn shared_pooling(capacity: usize) -> SharedVerifiedCache {
        let mut cache = Self::new(capacity);
        cache.waiting = Some(BTreeMap::new());
        Arc::new(Mutex::new(cache))
    }

    /// Most votes pooled at once; past it, those of the oldest slot go.
    const MAX_WAITING: usize = 4096;

    /// Notes that a verifier holds `vote` unchecked, to be checked against
    /// `set`: when anyone checks a vote for the same signing root and set,
    /// this one joins the batch. Does nothing unless the cache pools
    /// ([`Self::shared_pooling`]).
    pub fn note_waiting(&mut self, vote: &Vote, set: &ValidatorSet, chain_id: u64) {
        let Some(waiting) = self.waiting.as_mut() else {
            return;
        };
        let root = bls::vote_signing_root(chain_id, vote.slot, &vote.block_hash);
        let pooled = waiting.entry((vote.slot, root, set.hash())).or_default();
        if pooled.contains(vote) {
            return;
        }
        pooled.push(vote.clone());
        self.waiting_len += 1;
        while self.waiting_len > Self::MAX_WAITING {
            match waiting.pop_first() {
                Some((_, dropped)) => self.waiting_len -= dropped.len(),
                None => break,
            }
        }
    }

    /// Takes the pooled votes for `root` (of `slot`) and `set`.
    fn take_waiting(&mut self, slot: u64, root: B256, set: &ValidatorSet) -> Vec<Vote> {
        let Some(waiting) = self.waiting.as_mut() else {
            return Vec::new();
        };
        let taken = waiting
            .remove(&(slot, root, set.hash()))
            .unwrap_or_default();
        self.waiting_len -= taken.len();
        taken
    }

    /// `root` hashed to G2 (projective and affine), computed once while it
    /// is among the last [`Self::HASHED_ROOTS`] used.
    fn hashed_root(&mut self, root: &B256) -> (blst_p2, blst_p2_affine) {
        if let Some((_, point, affine)) = self.hashed_roots.iter().find(|(r, _, _)| r == root) {
            return (*point, *affine);
        }
        let point = hash_to_curve(root);
        let mut affine = blst_p2_affine::default();
        // SAFETY: live values of this frame.
        unsafe { blst::blst_p2_to_affine(&mut affine, &point) };
        self.hashed_roots.push_back((*root, point, affine));
        if self.hashed_roots.len() > Self::HASHED_ROOTS {
            self.hashed_roots.pop_front();
        }
        (point, affine)
    }

    /// Signing roots whose hash to the curve is kept: the votes of one
    /// slot, and a few slots of late ones.
    const HASHED_ROOTS: usize = 64;

    /// Whether `key` passed before (counts a hit).
    pub fn contains(&mut self, key: &B256) -> bool {
        let hit = self.keys.contains_key(key);
        self.hits += u64::from(hit);
        hit
    }

    /// Records that the check named by `key` passed.
    pub fn insert(&mut self, key: B256) {
        self.insert_decoded(key, None);
    }

    /// The signature decoded when the check named by `key` passed, if kept.
    pub fn decoded(&self, key: &B256) -> Option<Signature> {
        self.keys.get(key).copied().flatten()
    }

    /// Records that the check named by `key` passed, with the signature it decoded.
    fn insert_decoded(&mut self, key: B256, signature: Option<Signature>) {
        match self.keys.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                if signature.is_some() {
                    entry.insert(signature);
                }
                return;
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(signature);
            }
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Checks answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// The entry for `vote` checked against `set`.
    pub fn vote_key(vote: &Vote, set: &ValidatorSet, chain_id: u64) -> B256 {
        let root = bls::vote_signing_root(chain_id, vote.slot, &vote.block_hash);
        Self::signature_key(&root, set, vote.validator_index, &vote.signature)
    }

    /// The entry for one signature by member `index` of `set` over `root`
    /// (a vote, a proposer's seal).
    pub fn signature_key(
        root: &B256,
        set: &ValidatorSet,
        index: u32,
        signature: &BlsSignature,
    ) -> B256 {
        let mut buf = Vec::with_capacity(1 + 32 + 32 + 96 + 4);
        buf.push(b'S');
        buf.extend_from_slice(root.as_slice());
        buf.extend_from_slice(set.hash().as_slice());
        buf.extend_from_slice(signature.as_slice());
        buf.extend_from_slice(&index.to_be_bytes());
        keccak256(buf)
    }

    /// The entry for `qc` checked against `set` (structure, stake and signature).
    pub fn qc_key(qc: &QuorumCert, set: &ValidatorSet, chain_id: u64) -> B256 {
        let bits = qc.signers.as_bytes();
        let mut buf = Vec::with_capacity(1 + 32 + 32 + 96 + bits.len());
        buf.push(b'Q');
        buf.extend_from_slice(qc.signing_root(chain_id).as_slice());
        buf.extend_from_slice(set.hash().as_slice());
        buf.extend_from_slice(qc.signature.as_slice());
        buf.extend_from_slice(bits);
        keccak256(buf)
    }

    /// Runs `check` unless `key` passed before; remembers `key` if it passes now.
    pub fn check<T, E>(
        cache: &Mutex<Self>,
        key: B256,
        on_hit: impl FnOnce() -> T,
        check: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        if lock(cache).contains(&key) {
            return Ok(on_hit());
        }
        let verdict = check()?;
        lock(cache).insert(key);
        Ok(verdict)
    }
}

/// The cache holds only keys of passed checks, so a panic elsewhere while
/// it was locked leaves nothing wrong in it.
fn lock(cache: &Mutex<VerifiedCache>) -> std::sync::MutexGuard<'_, VerifiedCache> {
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Vote {
    /// [`Vote::sign`] by member `validator_index` of `set`, through `cache`.
    ///
    /// The signing root is hashed to the curve once per cache: every
    /// validator of a slot signs the same root, and the simulator's
    /// validators share one cache. The signature is the same bytes
    /// [`Vote::sign`] makes (the hash is a pure function of the root; the
    /// key's own multiplication is done every time).
    ///
    /// When that member's public key is `key`'s, the vote is also recorded
    /// as verified, with its decoded signature: a deterministic BLS
    /// signature just made by the right key over the right root is valid,
    /// so neither this signer nor anyone sharing the cache pairs it again.
    pub fn sign_cached(
        key: &BlsSecretKey,
        set: &ValidatorSet,
        chain_id: u64,
        slot: u64,
        block_hash: B256,
        validator_index: u32,
        cache: &Mutex<VerifiedCache>,
    ) -> Self {
        let root = bls::vote_signing_root(chain_id, slot, &block_hash);
        let (hashed, _) = lock(cache).hashed_root(&root);
        let bytes = key.to_bytes();
        let mut scalar = blst_scalar::default();
        let mut point = blst_p2::default();
        let mut affine = blst_p2_affine::default();
        let mut signature = [0u8; 96];
        // SAFETY: every pointer is to a live, properly sized blst value or
        // byte array of this frame; blst reads 32 bytes from `bytes` and
        // writes 96 to `signature`.
        unsafe {
            blst::blst_scalar_from_bendian(&mut scalar, bytes.as_ptr());
            blst::blst_sign_pk_in_g1(&mut point, &hashed, &scalar);
            blst::blst_p2_compress(signature.as_mut_ptr(), &point);
            blst::blst_p2_to_affine(&mut affine, &point);
        }
        let vote = Self {
            slot,
            block_hash,
            validator_index,
            signature: BlsSignature::from(signature),
        };
        let member = set.validators().get(validator_index as usize);
        if member.is_some_and(|m| m.public_key == key.public_key()) {
            let entry = VerifiedCache::signature_key(&root, set, validator_index, &vote.signature);
            lock(cache).insert_decoded(entry, Some(Signature::from(affine)));
        }
        vote
    }

    /// [`Vote::verify`] through `cache`.
    pub fn verify_cached(
        &self,
        set: &ValidatorSet,
        chain_id: u64,
        cache: &Mutex<VerifiedCache>,
    ) -> Result<(), QcError> {
        let key = VerifiedCache::vote_key(self, set, chain_id);
        VerifiedCache::check(cache, key, || (), || self.verify(set, chain_id))
    }
}

impl QuorumCert {
    /// [`QuorumCert::verify`] through `cache`.
    pub fn verify_cached(
        &self,
        set: &ValidatorSet,
        chain_id: u64,
        cache: &Mutex<VerifiedCache>,
    ) -> Result<U256, QcError> {
        let key = VerifiedCache::qc_key(self, set, chain_id);
        let stake = || {
            self.signers
                .signers()
                .filter_map(|i| set.get(i))
                .map(|v| v.stake)
                .sum()
        };
        VerifiedCache::check(cache, key, stake, || self.verify(set, chain_id))
    }
}

/// Verifies many votes of one set at once, with one final exponentiation
/// for all of them: with weights `rᵢ`, the batch holds when
/// `e(g₁, Σ rᵢ·σᵢ) = Π_m e(Σ_{i signs m} rᵢ·pkᵢ, H(m))` (one Miller loop per
/// signing root, and one for the signatures). Returns each vote's verdict,
/// in order.
///
/// The 128-bit weights `rᵢ` are derived from the whole batch (signing
/// roots, set, voters and signatures), so whoever chose the votes cannot
/// make invalid signatures cancel out (a plain sum would accept `σ₁ + δ`
/// and `σ₂ − δ`): a batch passes only if every member is valid, up to a
/// 2⁻¹²⁸ chance per attempt. Every signature is subgroup-checked first.
/// When a batch fails, each signing root's votes are checked as a batch of
/// their own, and the votes of a failing root one by one, so a forged vote
/// costs its sender nothing and never hides a valid one.
///
/// Votes found in `cache` are not checked again; those that pass are added.
/// Each signing root is hashed to the curve once per cache (signing shares
/// the point). When `cache` pools waiting votes
/// ([`VerifiedCache::shared_pooling`]), the votes other verifiers noted
/// for the same signing roots and set join the batch, so a block's votes
/// are paired together once, whoever checks them first.
pub fn verify_votes_cached(
    votes: &[Vote],
    set: &ValidatorSet,
    chain_id: u64,
    cache: &Mutex<VerifiedCache>,
) -> Vec<bool> {
    let roots: Vec<B256> = votes
        .iter()
        .map(|v| bls::vote_signing_root(chain_id, v.slot, &v.block_hash))
        .collect();
    let keys: Vec<B256> = votes
        .iter()
        .zip(&roots)
        .map(|(v, root)| VerifiedCache::signature_key(root, set, v.validator_index, &v.signature))
        .collect();
    let mut verdicts: Vec<Option<bool>> = {
        let mut cache = lock(cache);
        keys.iter()
            .map(|k| cache.contains(k).then_some(true))
            .collect()
    };
    // Group the rest by signing root, in first-seen order; each candidate
    // is a caller's vote (`Some(position)`) or a pooled one (`None`).
    let mut groups: Vec<(B256, u64, Vec<Candidate>)> = Vec::new();
    for (i, vote) in votes.iter().enumerate() {
        if verdicts[i].is_some() {
            continue;
        }
        let candidate = (Some(i), vote.clone(), keys[i]);
        match groups.iter_mut().find(|(root, _, _)| *root == roots[i]) {
            Some((_, _, members)) => members.push(candidate),
            None => groups.push((roots[i], vote.slot, vec![candidate])),
        }
    }
    if groups.is_empty() {
        return verdicts.into_iter().map(|v| v == Some(true)).collect();
    }
    // Votes that other verifiers sharing the cache hold for these roots.
    {
        let mut cache = lock(cache);
        for (root, slot, members) in &mut groups {
            for vote in cache.take_waiting(*slot, *root, set) {
                let key =
                    VerifiedCache::signature_key(root, set, vote.validator_index, &vote.signature);
                if !cache.keys.contains_key(&key) && !members.iter().any(|(_, v, _)| *v == vote) {
                    members.push((None, vote, key));
                }
            }
        }
    }
    // Decode (decompress, subgroup-check) once: every batch below, and the
    // cache entry kept for aggregation, share the points.
    let mut batch: Vec<RootBatch> = Vec::with_capacity(groups.len());
    {
        let mut cache = lock(cache);
        for (root, _, members) in &groups {
            batch.push(RootBatch {
                root: *root,
                hashed: cache.hashed_root(root).1,
                members: Vec::with_capacity(members.len()),
            });
        }
    }
    for ((_, _, members), root_batch) in groups.into_iter().zip(&mut batch) {
        for (position, vote, key) in members {
            let public = set.decoded_keys().get(vote.validator_index as usize);
            let signature = bls::decode_signature(&vote.signature)
                .ok()
                .filter(|s| s.validate(true).is_ok());
            match (public, signature) {
                (Some(public), Some(signature)) => root_batch.members.push(BatchMember {
                    position,
                    key,
                    index: vote.validator_index,
                    public: *public,
                    signature,
                    bytes: vote.signature,
                }),
                _ => {
                    if let Some(i) = position {
                        verdicts[i] = Some(false);
                    }
                }
            }
        }
    }
    batch.retain(|b| !b.members.is_empty());
    let mut passed: Vec<&BatchMember> = Vec::new();
    let all: Vec<(&RootBatch, &[BatchMember])> =
        batch.iter().map(|b| (b, b.members.as_slice())).collect();
    if !all.is_empty() && batch_holds(&all, set) {
        passed.extend(batch.iter().flat_map(|b| &b.members));
    } else {
        for root_batch in &batch {
            let whole = [(root_batch, root_batch.members.as_slice())];
            if all.len() > 1 && root_batch.members.len() > 1 && batch_holds(&whole, set) {
                passed.extend(&root_batch.members);
                continue;
            }
            if all.len() == 1 && root_batch.members.len() == 1 {
                continue; // that was the whole batch: it failed
            }
            for member in &root_batch.members {
                if batch_holds(&[(root_batch, std::slice::from_ref(member))], set) {
                    passed.push(member);
                }
            }
        }
    }
    let mut cache = lock(cache);
    for member in passed {
        cache.insert_decoded(member.key, Some(member.signature));
        if let Some(i) = member.position {
            verdicts[i] = Some(true);
        }
    }
    verdicts.into_iter().map(|v| v == Some(true)).collect()
}

/// A vote to check: the caller's (at `Some(position)`) or a pooled one
/// (`None`), with its cache entry.
type Candidate = (Option<usize>, Vote, B256);

/// Decoded signatures over one signing root, for [`batch_holds`].
struct RootBatch {
    root: B256,
    /// `root` hashed to G2.
    hashed: blst_p2_affine,
    members: Vec<BatchMember>,
}

/// One signature of a batch, decompressed and subgroup-checked.
struct BatchMember {
    /// Where the caller's vote sits (`None` for a pooled vote).
    position: Option<usize>,
    /// Its cache entry.
    key: B256,
    index: u32,
    public: PublicKey,
    signature: Signature,
    bytes: BlsSignature,
}

/// `root` hashed to G2 under the signature domain tag, as signing and
/// verifying do.
fn hash_to_curve(root: &B256) -> blst_p2 {
    let mut point = blst_p2::default();
    // SAFETY: `point` is a live output value; the message and tag are live
    // slices passed with their lengths; no augmentation.
    unsafe {
        blst::blst_hash_to_g2(
            &mut point,
            root.as_ptr(),
            root.len(),
            SIGNATURE_DST.as_ptr(),
            SIGNATURE_DST.len(),
            std::ptr::null(),
            0,
        );
    }
    point
}

/// The randomized multi-root check behind [`verify_votes_cached`]: whether
/// `e(g₁, Σ rᵢ·σᵢ) = Π_m e(Σ_{i signs m} rᵢ·pkᵢ, H(m))` for the members
/// given (all subgroup-checked), with 128-bit weights derived from all of
/// them; a lone signature needs no weight. One final exponentiation.
fn batch_holds(parts: &[(&RootBatch, &[BatchMember])], set: &ValidatorSet) -> bool {
    let count: usize = parts.iter().map(|(_, members)| members.len()).sum();
    let scalars: Vec<u8> = if count == 1 {
        Vec::new()
    } else {
        let mut transcript = Vec::with_capacity(32 + parts.len() * 32 + count * 100);
        transcript.extend_from_slice(set.hash().as_slice());
        for (root_batch, members) in parts {
            transcript.extend_from_slice(root_batch.root.as_slice());
            for member in *members {
                transcript.extend_from_slice(&member.index.to_be_bytes());
                transcript.extend_from_slice(member.bytes.as_slice());
            }
        }
        let seed = keccak256(&transcript);
        let mut scalars = Vec::with_capacity(count * 16);
        for i in 0..count {
            let mut input = [0u8; 40];
            input[..32].copy_from_slice(seed.as_slice());
            input[32..].copy_from_slice(&(i as u64).to_le_bytes());
            let mut r: [u8; 16] = keccak256(input)[..16].try_into().expect("16 bytes");
            if r == [0; 16] {
                r[0] = 1;
            }
            scalars.extend_from_slice(&r);
        }
        scalars
    };
    // Σ rᵢ·pkᵢ per root (affine), then the pairs for the Miller loop.
    let mut keys: Vec<blst_p1_affine> = Vec::with_capacity(parts.len());
    let mut offset = 0;
    for (_, members) in parts {
        let mut point = blst::blst_p1::default();
        if scalars.is_empty() {
            let public: &blst_p1_affine = (&members[0].public).into();
            // SAFETY: live values of this frame.
            unsafe { blst::blst_p1_from_affine(&mut point, public) };
        } else {
            let publics: Vec<PublicKey> = members.iter().map(|m| m.public).collect();
            let end = offset + members.len() * 16;
            point = publics.mult(&scalars[offset..end], 128).into();
            offset = end;
        }
        let mut affine = blst_p1_affine::default();
        // SAFETY: live values of this frame.
        unsafe {
            if blst::blst_p1_is_inf(&point) {
                return false; // a weighted sum hit the identity: judge one by one
            }
            blst::blst_p1_to_affine(&mut affine, &point);
        }
        keys.push(affine);
    }
    let signature = if scalars.is_empty() {
        let mut point = blst_p2::default();
        let affine: &blst_p2_affine = (&parts[0].1[0].signature).into();
        // SAFETY: live values of this frame.
        unsafe { blst::blst_p2_from_affine(&mut point, affine) };
        point
    } else {
        let signatures: Vec<Signature> = parts
            .iter()
            .flat_map(|(_, members)| members.iter().map(|m| m.signature))
            .collect();
        signatures.mult(&scalars, 128).into()
    };
    let mut signature_affine = blst_p2_affine::default();
    // SAFETY: live values of this frame.
    unsafe {
        if blst::blst_p2_is_inf(&signature) {
            return false;
        }
        blst::blst_p2_to_affine(&mut signature_affine, &signature);
    }
    let hashed: Vec<*const blst_p2_affine> =
        parts.iter().map(|(b, _)| &b.hashed as *const _).collect();
    let publics: Vec<*const blst_p1_affine> = keys.iter().map(|k| k as *const _).collect();
    let mut messages = blst_fp12::default();
    let mut signatures = blst_fp12::default();
    // SAFETY: `hashed` and `publics` hold `parts.len()` pointers to live
    // affine points (in `parts` and `keys`, both outliving the call); the
    // generator is blst's static; outputs are live values of this frame.
    unsafe {
        blst::blst_miller_loop_n(
            &mut messages,
            hashed.as_ptr(),
            publics.as_ptr(),
            parts.len(),
        );
        blst::blst_miller_loop(
            &mut signatures,
            &signature_affine,
            blst::blst_p1_affine_generator(),
        );
        blst::blst_fp12_finalverify(&signatures, &messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChainSpec;
    use crate::chain_spec::devnet_validator_key;

    fn votes(spec: &ChainSpec, block: B256, voters: std::ops::Range<u32>) -> Vec<Vote> {
        voters
            .map(|i| Vote::sign(&devnet_validator_key(i), spec.chain_id, 1, block, i))
            .collect()
    }

    #[test]
    fn a_batch_of_valid_votes_passes_and_is_remembered() {
        let spec = ChainSpec::devnet(7);
        let set = spec.genesis_set().unwrap();
        let mut all = votes(&spec, B256::repeat_byte(1), 0..5);
        all.extend(votes(&spec, B256::repeat_byte(2), 5..7));
        let cache = Mutex::new(VerifiedCache::new(64));
        assert_eq!(
            verify_votes_cached(&all, &set, spec.chain_id, &cache),
            vec![true; 7]
        );
        assert_eq!(cache.lock().unwrap().len(), 7);
        verify_votes_cached(&all, &set, spec.chain_id, &cache);
        assert_eq!(
            cache.lock().unwrap().hits(),
            7,
            "the second pass pairs nothing"
        );
    }

    #[test]
    fn canceling_forgeries_do_not_pass_a_batch() {
        // σ₁ + δ and σ₂ − δ keep the plain sum valid; the weighted check must not.
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let block = B256::repeat_byte(3);
        let mut batch = votes(&spec, block, 0..3);
        let delta = devnet_validator_key(3).sign(&B256::repeat_byte(9));
        let delta = bls::decode_signature(&delta).unwrap();
        let shift = |vote: &mut Vote, negate: bool| {
            let sig = bls::decode_signature(&vote.signature).unwrap();
            let mut point = blst::blst_p2::default();
            let mut d = blst::blst_p2::default();
            let (sig_affine, delta_affine): (&blst_p2_affine, &blst_p2_affine) =
                ((&sig).into(), (&delta).into());
            unsafe {
                blst::blst_p2_from_affine(&mut point, sig_affine);
                blst::blst_p2_from_affine(&mut d, delta_affine);
                if negate {
                    blst::blst_p2_cneg(&mut d, true);
                }
                let sum = point;
                blst::blst_p2_add_or_double(&mut point, &sum, &d);
            }
            let shifted = AggregateSignature::from(point).to_signature();
            vote.signature = BlsSignature::from(shifted.compress());
        };
        shift(&mut batch[0], false);
        shift(&mut batch[1], true);
        // The plain aggregate still verifies: the attack is real.
        let mut plain = QcBuilder::new(1, block, &set);
        for vote in &batch {
            plain.add_verified_vote(vote, &set).unwrap();
        }
        let qc = plain.certificate(&set).unwrap();
        assert!(qc.verify(&set, spec.chain_id).is_ok());

        let cache = Mutex::new(VerifiedCache::new(64));
        let verdicts = verify_votes_cached(&batch, &set, spec.chain_id, &cache);
        assert_eq!(verdicts, vec![false, false, true]);
        assert_eq!(
            cache.lock().unwrap().len(),
            1,
            "only the valid vote is remembered"
        );
    }

    #[test]
    fn a_forgery_in_a_batch_over_several_roots_fails_alone() {
        let spec = ChainSpec::devnet(7);
        let set = spec.genesis_set().unwrap();
        let mut all = votes(&spec, B256::repeat_byte(1), 0..4);
        all.extend(votes(&spec, B256::repeat_byte(2), 4..7));
        all[5].signature = all[4].signature; // voter 4's signature, claimed by 5
        let cache = Mutex::new(VerifiedCache::new(64));
        let verdicts = verify_votes_cached(&all, &set, spec.chain_id, &cache);
        assert_eq!(verdicts, vec![true, true, true, true, true, false, true]);
        assert_eq!(
            cache.lock().unwrap().len(),
            6,
            "only valid votes are remembered"
        );
    }

    #[test]
    fn pooled_votes_join_the_batch_that_checks_their_root() {
        let spec = ChainSpec::devnet(7);
        let set = spec.genesis_set().unwrap();
        let block = B256::repeat_byte(6);
        let mine = votes(&spec, block, 0..2);
        let theirs = votes(&spec, block, 2..5);
        let mut forged = votes(&spec, block, 5..6).remove(0);
        forged.signature = theirs[0].signature;
        let other_block = votes(&spec, B256::repeat_byte(7), 6..7).remove(0);
        let cache = VerifiedCache::shared_pooling(64);
        for vote in theirs.iter().chain([&forged, &other_block]) {
            // Noted by other verifiers, which hold them unchecked.
            cache
                .lock()
                .unwrap()
                .note_waiting(vote, &set, spec.chain_id);
        }
        let verdicts = verify_votes_cached(&mine, &set, spec.chain_id, &cache);
        assert_eq!(
            verdicts,
            vec![true, true],
            "a forged pooled vote hides nothing"
        );
        let mut cache = cache.lock().unwrap();
        for vote in &theirs {
            assert!(cache.contains(&VerifiedCache::vote_key(vote, &set, spec.chain_id)));
        }
        assert!(!cache.contains(&VerifiedCache::vote_key(&forged, &set, spec.chain_id)));
        assert!(
            !cache.contains(&VerifiedCache::vote_key(&other_block, &set, spec.chain_id)),
            "votes for other roots wait for their own check"
        );
        assert_eq!(cache.waiting_len, 1);
    }

    #[test]
    fn a_forged_signature_never_enters_the_cache() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let cache = Mutex::new(VerifiedCache::new(64));
        let block = B256::repeat_byte(4);
        let mut forged = votes(&spec, block, 1..2).remove(0);
        forged.signature = votes(&spec, block, 2..3).remove(0).signature; // voter 2's signature, claimed by 1
        for _ in 0..2 {
            assert!(forged.verify_cached(&set, spec.chain_id, &cache).is_err());
        }
        assert!(cache.lock().unwrap().is_empty());
        let real = votes(&spec, block, 1..2).remove(0);
        real.verify_cached(&set, spec.chain_id, &cache).unwrap();
        assert!(forged.verify_cached(&set, spec.chain_id, &cache).is_err());
        assert_eq!(cache.lock().unwrap().hits(), 0);
    }

    #[test]
    fn cached_signing_makes_the_same_signature() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let cache = Mutex::new(VerifiedCache::new(8));
        for (i, block) in [(0, 1), (1, 1), (2, 2), (3, 1)] {
            let key = devnet_validator_key(i);
            let hash = B256::repeat_byte(block);
            let cached = Vote::sign_cached(&key, &set, spec.chain_id, 5, hash, i, &cache);
            assert_eq!(cached, Vote::sign(&key, spec.chain_id, 5, hash, i));
        }
        assert_eq!(cache.lock().unwrap().hashed_roots.len(), 2);
    }

    #[test]
    fn a_vote_signed_through_the_cache_is_known_valid_only_for_its_own_member() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let cache = Mutex::new(VerifiedCache::new(8));
        let hash = B256::repeat_byte(7);
        let own = Vote::sign_cached(
            &devnet_validator_key(1),
            &set,
            spec.chain_id,
            5,
            hash,
            1,
            &cache,
        );
        // Key 2 signing as member 3: a vote that must fail its check.
        let misattributed = Vote::sign_cached(
            &devnet_validator_key(2),
            &set,
            spec.chain_id,
            5,
            hash,
            3,
            &cache,
        );
        assert_eq!(cache.lock().unwrap().len(), 1, "only the member's own vote");
        let verdicts =
            verify_votes_cached(&[own.clone(), misattributed], &set, spec.chain_id, &cache);
        assert_eq!(verdicts, [true, false]);
        assert_eq!(
            cache.lock().unwrap().hits(),
            1,
            "the own vote was not paired again"
        );
        let entry = VerifiedCache::vote_key(&own, &set, spec.chain_id);
        let decoded = cache.lock().unwrap().decoded(&entry).unwrap();
        assert_eq!(decoded, bls::decode_signature(&own.signature).unwrap());
    }

    #[test]
    fn a_pool_confirms_only_the_aggregate_of_its_votes() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let block = B256::repeat_byte(5);
        let all = votes(&spec, block, 0..4);
        let mut pool = QcBuilder::new(1, block, &set);
        for vote in &all {
            pool.add_verified_vote(vote, &set).unwrap();
        }
        let mut other = QcBuilder::new(1, block, &set);
        for vote in &all[1..] {
            other.add_verified_vote(vote, &set).unwrap();
        }
        let subset = other.certificate(&set).unwrap();
        assert!(
            pool.confirms(&subset, &set).is_some(),
            "signers are a subset"
        );
        let mut forged = subset.clone();
        forged.signature = pool.certificate(&set).unwrap().signature;
        assert!(pool.confirms(&forged, &set).is_none(), "another aggregate");
        assert!(forged.verify(&set, spec.chain_id).is_err());
        let mut short = QcBuilder::new(1, block, &set);
        short.add_verified_vote(&all[0], &set).unwrap();
        assert!(short.confirms(&subset, &set).is_none(), "signers missing");
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = VerifiedCache::new(3);
        for i in 0..10u8 {
            cache.insert(B256::repeat_byte(i));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.contains(&B256::repeat_byte(9)));
        assert!(!cache.contains(&B256::repeat_byte(0)));
    }
}
