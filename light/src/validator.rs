//! Validators and the ordered, stake-weighted set that signs an epoch.

use crate::bls::{self, BlsError, BlsPublicKey};
use crate::codec::{self, DecodeError};
use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_rlp::{Decodable, Encodable, RlpDecodable, RlpEncodable};
use blst::min_pk::PublicKey;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Largest validator set the wire format carries (signer bitfields stay under 8 KiB).
pub const MAX_SET_SIZE: usize = 65_536;

/// One validator: who owns the stake, the BLS key it signs with, and its stake in wei.
#[derive(Debug, Clone, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Validator {
    /// The account that staked and receives the stake back on exit.
    pub owner: Address,
    /// The compressed BLS public key the validator signs votes and proposals with.
    pub public_key: BlsPublicKey,
    /// Active stake in wei; the validator's voting weight.
    pub stake: U256,
}

/// Why a list of validators is not a valid set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// A set must have at least one validator.
    #[error("validator set is empty")]
    Empty,
    /// More validators than the wire format allows.
    #[error("validator set has {len} members, over the limit of {max}")]
    TooLarge {
        /// Number of validators given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Every member needs a positive stake.
    #[error("validator {index} has zero stake")]
    ZeroStake {
        /// Position in the set.
        index: usize,
    },
    /// A public key appears twice.
    #[error("validator {index} repeats the public key of an earlier member")]
    DuplicateKey {
        /// Position of the second occurrence.
        index: usize,
    },
    /// An owner address appears twice.
    #[error("validator {index} repeats the owner {owner} of an earlier member")]
    DuplicateOwner {
        /// Position of the second occurrence.
        index: usize,
        /// The repeated owner.
        owner: Address,
    },
    /// A public key does not decode to a valid subgroup point.
    #[error("validator {index}: {source}")]
    InvalidKey {
        /// Position in the set.
        index: usize,
        /// What is wrong with the key.
        source: BlsError,
    },
    /// The total stake does not fit in 256 bits.
    #[error("total stake overflows 256 bits")]
    StakeOverflow,
}

/// The ordered validators of one epoch, with their total stake, canonical hash
/// and decoded public keys.
///
/// The order is the one the rotation produced; a validator's position is its
/// index in signer bitfields and in `proposer_index`. The canonical hash is
/// `keccak256(rlp([validator, ...]))` with each validator encoded as
/// `[owner, public_key, stake]`.
///
/// Members and keys sit behind `Arc`s: a set is cloned into every block of
/// its epoch and every vote check, and a clone costs two reference counts.
#[derive(Debug, Clone)]
pub struct ValidatorSet {
    validators: Arc<[Validator]>,
    keys: Arc<[PublicKey]>,
    total_stake: U256,
    hash: B256,
}

impl PartialEq for ValidatorSet {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.validators == other.validators
    }
}
impl Eq for ValidatorSet {}

impl ValidatorSet {
    /// Checks the members (non-empty, positive stakes, unique keys and owners,
    /// valid keys) and decodes their public keys once.
    pub fn new(validators: Vec<Validator>) -> Result<Self, SetError> {
        Self::build(validators, |_| None)
    }

    /// [`Self::new`], taking the decoded key of every member whose key is
    /// also in `known` from there instead of decoding and subgroup-checking
    /// it again (the same compressed bytes decode to the same valid point).
    /// Every other rule is checked as in [`Self::new`]. For the next epoch's
    /// set, which mostly repeats the current one.
    pub fn new_reusing_keys(
        validators: Vec<Validator>,
        known: &ValidatorSet,
    ) -> Result<Self, SetError> {
        let decoded: HashMap<&BlsPublicKey, &PublicKey> = known
            .validators
            .iter()
            .map(|v| &v.public_key)
            .zip(known.keys.iter())
            .collect();
        Self::build(validators, |key| decoded.get(key).map(|k| **k))
    }

    fn build(
        validators: Vec<Validator>,
        known_key: impl Fn(&BlsPublicKey) -> Option<PublicKey>,
    ) -> Result<Self, SetError> {
        if validators.is_empty() {
            return Err(SetError::Empty);
        }
        if validators.len() > MAX_SET_SIZE {
            return Err(SetError::TooLarge {
                len: validators.len(),
                max: MAX_SET_SIZE,
            });
        }
        let mut seen_keys = HashSet::with_capacity(validators.len());
        let mut seen_owners = HashSet::with_capacity(validators.len());
        let mut total_stake = U256::ZERO;
        let mut keys = Vec::with_capacity(validators.len());
        for (index, v) in validators.iter().enumerate() {
            if v.stake.is_zero() {
                return Err(SetError::ZeroStake { index });
            }
            if !seen_keys.insert(v.public_key) {
                return Err(SetError::DuplicateKey { index });
            }
            if !seen_owners.insert(v.owner) {
                return Err(SetError::DuplicateOwner {
                    index,
                    owner: v.owner,
                });
            }
            total_stake = total_stake
                .checked_add(v.stake)
                .ok_or(SetError::StakeOverflow)?;
            let key = match known_key(&v.public_key) {
                Some(key) => key,
                None => bls::decode_public_key(&v.public_key)
                    .map_err(|source| SetError::InvalidKey { index, source })?,
            };
            keys.push(key);
        }
        let hash = Self::hash_of(&validators);
        Ok(Self {
            validators: validators.into(),
            keys: keys.into(),
            total_stake,
            hash,
        })
    }

    /// The canonical hash of a list of validators, without validating it.
    pub fn hash_of(validators: &[Validator]) -> B256 {
        let mut buf = Vec::with_capacity(validators.len() * 110 + 8);
        alloy_rlp::encode_list(validators, &mut buf);
        keccak256(buf)
    }

    /// Decodes and validates a set from its canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let validators: Vec<Validator> =
            codec::decode_exact("validator set", bytes, codec::MAX_VALIDATOR_SET_BYTES)?;
        Self::new(validators).map_err(|e| DecodeError::Invalid {
            what: "validator set",
            reason: e.to_string(),
        })
    }

    /// The canonical encoding (an RLP list of validators).
    pub fn encode_to_vec(&self) -> Vec<u8> {
        alloy_rlp::encode(self)
    }

    /// The members, in set order.
    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.validators.len()
    }

    /// Always false: a set is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The member at `index`.
    pub fn get(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }

    /// The members' decoded public keys, in set order (decoded once, when the set was built).
    pub fn decoded_keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// Position of the member with this public key.
    pub fn index_of_key(&self, key: &BlsPublicKey) -> Option<usize> {
        self.validators.iter().position(|v| &v.public_key == key)
    }

    /// Sum of all members' stake.
    pub fn total_stake(&self) -> U256 {
        self.total_stake
    }

    /// The canonical hash that headers commit to.
    pub fn hash(&self) -> B256 {
        self.hash
    }

    /// Whether `signed` stake is a quorum: strictly more than two thirds of the total.
    pub fn is_quorum(&self, signed: U256) -> bool {
        // U256 has headroom: stakes come from balances far below 2^254.
        signed.saturating_mul(U256::from(3)) > self.total_stake.saturating_mul(U256::from(2))
    }

    /// The proposer of `slot`: a member drawn in proportion to stake by
    /// `keccak256(set hash ‖ slot)` reduced modulo the total stake.
    pub fn proposer_index(&self, slot: u64) -> usize {
        let mut seed = [0u8; 40];
        seed[..32].copy_from_slice(self.hash.as_slice());
        seed[32..].copy_from_slice(&slot.to_be_bytes());
        let mut point = U256::from_be_bytes(keccak256(seed).0) % self.total_stake;
        for (index, v) in self.validators.iter().enumerate() {
            if point < v.stake {
                return index;
            }
            point -= v.stake;
        }
        unreachable!("point is below the total stake, so some member holds it")
    }
}

impl Encodable for ValidatorSet {
    fn encode(&self, out: &mut dyn alloy_rlp::BufMut) {
        alloy_rlp::encode_list(&self.validators, out);
    }
    fn length(&self) -> usize {
        alloy_rlp::list_length(&self.validators)
    }
}

impl Decodable for ValidatorSet {
    fn decode(buf: &mut &[u8]) -> alloy_rlp::Result<Self> {
        let validators = Vec::<Validator>::decode(buf)?;
        Self::new(validators).map_err(|_| alloy_rlp::Error::Custom("invalid validator set"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bls::BlsSecretKey;

    fn validator(i: u8, stake: u64) -> Validator {
        let key = BlsSecretKey::from_key_material(&[i; 32]).unwrap();
        Validator {
            owner: Address::repeat_byte(i),
            public_key: key.public_key(),
            stake: U256::from(stake),
        }
    }

    #[test]
    fn rejects_invalid_member_lists() {
        assert_eq!(ValidatorSet::new(vec![]).unwrap_err(), SetError::Empty);
        assert_eq!(
            ValidatorSet::new(vec![validator(1, 0)]).unwrap_err(),
            SetError::ZeroStake { index: 0 }
        );
        let mut dup_key = validator(2, 5);
        dup_key.owner = Address::repeat_byte(9);
        assert_eq!(
            ValidatorSet::new(vec![validator(2, 5), dup_key]).unwrap_err(),
            SetError::DuplicateKey { index: 1 }
        );
        let mut dup_owner = validator(3, 5);
        dup_owner.owner = Address::repeat_byte(2);
        assert!(matches!(
            ValidatorSet::new(vec![validator(2, 5), dup_owner]).unwrap_err(),
            SetError::DuplicateOwner { index: 1, .. }
        ));
        let mut bad_key = validator(4, 5);
        bad_key.public_key = BlsPublicKey::repeat_byte(0xaa);
        assert!(matches!(
            ValidatorSet::new(vec![bad_key]).unwrap_err(),
            SetError::InvalidKey { index: 0, .. }
        ));
        let mut huge = validator(5, 1);
        huge.stake = U256::MAX;
        assert_eq!(
            ValidatorSet::new(vec![validator(6, 1), huge]).unwrap_err(),
            SetError::StakeOverflow
        );
    }

    #[test]
    fn reusing_keys_builds_the_same_set_and_still_checks_new_keys() {
        let current = ValidatorSet::new(vec![validator(1, 10), validator(2, 20)]).unwrap();
        let members = vec![validator(2, 25), validator(3, 5)];
        let reused = ValidatorSet::new_reusing_keys(members.clone(), &current).unwrap();
        let fresh = ValidatorSet::new(members).unwrap();
        assert_eq!(reused, fresh);
        assert_eq!(reused.decoded_keys(), fresh.decoded_keys());
        let mut bad_key = validator(4, 5);
        bad_key.public_key = BlsPublicKey::repeat_byte(0xaa);
        assert!(matches!(
            ValidatorSet::new_reusing_keys(vec![validator(1, 1), bad_key], &current),
            Err(SetError::InvalidKey { index: 1, .. })
        ));
    }

    #[test]
    fn quorum_is_strictly_more_than_two_thirds() {
        let set = ValidatorSet::new((1..=3).map(|i| validator(i, 10)).collect()).unwrap();
        assert!(!set.is_quorum(U256::from(20)));
        assert!(set.is_quorum(U256::from(21)));
    }

    #[test]
    fn proposer_selection_follows_stake() {
        let set = ValidatorSet::new(vec![validator(1, 1), validator(2, 99)]).unwrap();
        let heavy = (0..1000).filter(|s| set.proposer_index(*s) == 1).count();
        assert!(
            heavy > 950,
            "heavy validator proposed {heavy} of 1000 slots"
        );
        assert_eq!(set.proposer_index(42), set.proposer_index(42));
    }

    #[test]
    fn encoding_round_trips_and_hash_commits_to_order() {
        let set = ValidatorSet::new(vec![validator(1, 10), validator(2, 20)]).unwrap();
        let decoded = ValidatorSet::decode(&set.encode_to_vec()).unwrap();
        assert_eq!(decoded, set);
        assert_eq!(decoded.hash(), set.hash());
        let swapped = ValidatorSet::new(vec![validator(2, 20), validator(1, 10)]).unwrap();
        assert_ne!(swapped.hash(), set.hash());
    }
}
