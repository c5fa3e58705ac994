//! Epoch hand-over updates: a certified header of epoch `e` and the set of
//! epoch `e + 1` that its `next_validator_set_hash` commits to, sent in full
//! or as a [`SetDiff`] from set(`e`) so that the bytes follow what changed.

use crate::codec::{self, DecodeError};
use crate::header::CertifiedHeader;
use crate::validator::{SetError, Validator, ValidatorSet};
use alloy_primitives::U256;
use alloy_rlp::{Decodable, Encodable, RlpDecodable, RlpEncodable};
use std::collections::HashMap;

/// Largest encoded [`EpochUpdate`] accepted: a header, its QC and a full set.
pub const MAX_UPDATE_BYTES: usize =
    codec::MAX_HEADER_BYTES + codec::MAX_QC_BYTES + codec::MAX_VALIDATOR_SET_BYTES + 1024;

/// A member whose stake changed between two sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable)]
pub struct StakeChange {
    /// Position in the old set.
    pub index: u32,
    /// The member's stake in the new set, in wei.
    pub stake: U256,
}

/// A member that joins: where it sits in the new set and who it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable)]
pub struct Addition {
    /// Position in the new set.
    pub position: u32,
    /// The new member.
    pub validator: Validator,
}

/// The difference between two validator sets, in the order-preserving form
/// the set hash needs: drop `removed` (old positions), change the stakes of
/// `restaked` members (old positions), then insert `added` at their new
/// positions in increasing order. Every list is strictly increasing.
///
/// Encoded as `[[removed...], [[index, stake]...], [[position, validator]...]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, RlpEncodable, RlpDecodable)]
pub struct SetDiff {
    /// Positions in the old set of the members that leave.
    pub removed: Vec<u32>,
    /// Members that stay with another stake.
    pub restaked: Vec<StakeChange>,
    /// Members that join, by position in the new set.
    pub added: Vec<Addition>,
}

/// Why a [`SetDiff`] cannot be applied to a set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetDiffError {
    /// A list is not strictly increasing (each position may appear once).
    #[error("{list} positions must be strictly increasing (at entry {entry})")]
    NotIncreasing {
        /// Which list.
        list: &'static str,
        /// The offending entry.
        entry: usize,
    },
    /// A position is outside the set it refers to.
    #[error("{list} position {position} is outside a set of {len}")]
    OutOfRange {
        /// Which list.
        list: &'static str,
        /// The position.
        position: u32,
        /// Size of the set the position refers to.
        len: usize,
    },
    /// A member is both removed and restaked.
    #[error("member {index} is both removed and restaked")]
    RemovedAndRestaked {
        /// Old position.
        index: u32,
    },
    /// The result is not a valid set.
    #[error("the resulting set is invalid: {0}")]
    InvalidSet(SetError),
}

impl SetDiff {
    /// The difference that turns `old` into `new`. Members present in both
    /// (same owner and key) in the same relative order are kept; anything
    /// else is removed and added, so `between(old, new).apply(old) == new`
    /// for every pair of sets.
    pub fn between(old: &ValidatorSet, new: &ValidatorSet) -> Self {
        let old_positions: HashMap<_, usize> = old
            .validators()
            .iter()
            .enumerate()
            .map(|(i, v)| ((v.owner, v.public_key), i))
            .collect();
        let mut kept = vec![false; old.len()];
        let mut restaked = Vec::new();
        let mut added = Vec::new();
        let mut last_kept: Option<usize> = None;
        for (position, v) in new.validators().iter().enumerate() {
            match old_positions.get(&(v.owner, v.public_key)) {
                Some(&i) if last_kept.is_none_or(|last| i > last) => {
                    kept[i] = true;
                    last_kept = Some(i);
                    if old.validators()[i].stake != v.stake {
                        restaked.push(StakeChange {
                            index: i as u32,
                            stake: v.stake,
                        });
                    }
                }
                _ => added.push(Addition {
                    position: position as u32,
                    validator: v.clone(),
                }),
            }
        }
        restaked.sort_by_key(|c| c.index);
        let removed = (0..old.len())
            .filter(|i| !kept[*i])
            .map(|i| i as u32)
            .collect();
        Self {
            removed,
            restaked,
            added,
        }
    }

    /// Whether the two sets are equal (nothing to apply).
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.restaked.is_empty() && self.added.is_empty()
    }

    /// Applies the difference to `old` and validates the result as a set.
    pub fn apply(&self, old: &ValidatorSet) -> Result<ValidatorSet, SetDiffError> {
        let len = old.len();
        increasing("removed", self.removed.iter().copied())?;
        increasing("restaked", self.restaked.iter().map(|c| c.index))?;
        increasing("added", self.added.iter().map(|a| a.position))?;
        let mut members: Vec<Option<Validator>> =
            old.validators().iter().cloned().map(Some).collect();
        for &index in &self.removed {
            let slot = members
                .get_mut(index as usize)
                .ok_or(SetDiffError::OutOfRange {
                    list: "removed",
                    position: index,
                    len,
                })?;
            *slot = None;
        }
        for change in &self.restaked {
            let slot = members
                .get_mut(change.index as usize)
                .ok_or(SetDiffError::OutOfRange {
                    list: "restaked",
                    position: change.index,
                    len,
                })?;
            let member = slot.as_mut().ok_or(SetDiffError::RemovedAndRestaked {
                index: change.index,
            })?;
            member.stake = change.stake;
        }
        let mut result: Vec<Validator> = members.into_iter().flatten().collect();
        let final_len = result.len() + self.added.len();
        if final_len > crate::validator::MAX_SET_SIZE {
            return Err(SetDiffError::InvalidSet(SetError::TooLarge {
                len: final_len,
                max: crate::validator::MAX_SET_SIZE,
            }));
        }
        for addition in &self.added {
            let position = addition.position as usize;
            if position > result.len() {
                return Err(SetDiffError::OutOfRange {
                    list: "added",
                    position: addition.position,
                    len: final_len,
                });
            }
            result.insert(position, addition.validator.clone());
        }
        ValidatorSet::new(result).map_err(SetDiffError::InvalidSet)
    }
}

fn increasing(
    list: &'static str,
    mut items: impl Iterator<Item = u32>,
) -> Result<(), SetDiffError> {
    let Some(mut previous) = items.next() else {
        return Ok(());
    };
    for (entry, item) in items.enumerate() {
        if item <= previous {
            return Err(SetDiffError::NotIncreasing {
                list,
                entry: entry + 1,
            });
        }
        previous = item;
    }
    Ok(())
}

/// The next epoch's set as an update carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextSet {
    /// The whole set, in set order. Encoded as `[0, [validator...]]`.
    Full(Vec<Validator>),
    /// The difference from the current epoch's set. Encoded as `[1, diff]`.
    Diff(SetDiff),
}

impl NextSet {
    /// The set this describes, given the current epoch's set.
    pub fn resolve(&self, current: &ValidatorSet) -> Result<ValidatorSet, SetDiffError> {
        match self {
            Self::Full(validators) => {
                ValidatorSet::new(validators.clone()).map_err(SetDiffError::InvalidSet)
            }
            Self::Diff(diff) => diff.apply(current),
        }
    }

    fn payload_length(&self) -> usize {
        1 + match self {
            Self::Full(validators) => alloy_rlp::list_length(validators),
            Self::Diff(diff) => diff.length(),
        }
    }
}

impl Encodable for NextSet {
    fn encode(&self, out: &mut dyn alloy_rlp::BufMut) {
        alloy_rlp::Header {
            list: true,
            payload_length: self.payload_length(),
        }
        .encode(out);
        match self {
            Self::Full(validators) => {
                0u8.encode(out);
                alloy_rlp::encode_list(validators, out);
            }
            Self::Diff(diff) => {
                1u8.encode(out);
                diff.encode(out);
            }
        }
    }
    fn length(&self) -> usize {
        let payload = self.payload_length();
        alloy_rlp::length_of_length(payload) + payload
    }
}

impl Decodable for NextSet {
    fn decode(buf: &mut &[u8]) -> alloy_rlp::Result<Self> {
        let header = alloy_rlp::Header::decode(buf)?;
        if !header.list {
            return Err(alloy_rlp::Error::UnexpectedString);
        }
        if buf.len() < header.payload_length {
            return Err(alloy_rlp::Error::InputTooShort);
        }
        let (mut payload, rest) = buf.split_at(header.payload_length);
        let next = match u8::decode(&mut payload)? {
            0 => Self::Full(Vec::<Validator>::decode(&mut payload)?),
            1 => Self::Diff(SetDiff::decode(&mut payload)?),
            _ => return Err(alloy_rlp::Error::Custom("unknown next-set kind")),
        };
        if !payload.is_empty() {
            return Err(alloy_rlp::Error::UnexpectedLength);
        }
        *buf = rest;
        Ok(next)
    }
}

/// One epoch's hand-over: a header of epoch `e` certified by set(`e`), whose
/// `next_validator_set_hash` commits to set(`e + 1`), and that set.
///
/// Encoded as `[certified_header, next_set]`. The epoch is the header's.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct EpochUpdate {
    /// A header of the epoch with its QC (the header's own certificate).
    pub header: CertifiedHeader,
    /// Set(`e + 1`), in full or as a difference from set(`e`).
    pub next_set: NextSet,
}

impl EpochUpdate {
    /// Builds the update a full node serves, choosing whichever of the full
    /// set and the difference from `set_e` encodes smaller.
    pub fn new(header: CertifiedHeader, set_e: &ValidatorSet, set_e1: &ValidatorSet) -> Self {
        let diff = NextSet::Diff(SetDiff::between(set_e, set_e1));
        let full = NextSet::Full(set_e1.validators().to_vec());
        let next_set = if diff.length() <= full.length() {
            diff
        } else {
            full
        };
        Self { header, next_set }
    }

    /// The epoch this update hands over from.
    pub fn epoch(&self) -> u64 {
        self.header.header.epoch
    }

    /// The slot of the certified header.
    pub fn slot(&self) -> u64 {
        self.header.header.slot
    }

    /// The canonical encoding.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        alloy_rlp::encode(self)
    }

    /// Decodes one update, refusing more than [`MAX_UPDATE_BYTES`] and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode_exact("epoch update", bytes, MAX_UPDATE_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bls::BlsSecretKey;
    use alloy_primitives::Address;
    use proptest::prelude::*;

    fn validator(i: u8, stake: u64) -> Validator {
        let key = BlsSecretKey::from_key_material(&[i; 32]).unwrap();
        Validator {
            owner: Address::repeat_byte(i),
            public_key: key.public_key(),
            stake: U256::from(stake),
        }
    }

    fn set(members: &[(u8, u64)]) -> ValidatorSet {
        ValidatorSet::new(members.iter().map(|&(i, s)| validator(i, s)).collect()).unwrap()
    }

    #[test]
    fn diff_is_small_when_little_changes() {
        let old = set(&[(1, 10), (2, 10), (3, 10), (4, 10)]);
        let new = set(&[(1, 10), (2, 15), (4, 10), (5, 10)]);
        let diff = SetDiff::between(&old, &new);
        assert_eq!(diff.removed, vec![2]);
        assert_eq!(diff.restaked.len(), 1);
        assert_eq!(diff.added.len(), 1);
        assert_eq!(diff.apply(&old).unwrap(), new);
        let unchanged = SetDiff::between(&old, &old);
        assert!(unchanged.is_empty());
        assert!(alloy_rlp::encode(&unchanged).len() < 8);
    }

    #[test]
    fn bad_diffs_name_the_problem() {
        let old = set(&[(1, 10), (2, 10)]);
        let diff = SetDiff {
            removed: vec![1, 1],
            ..Default::default()
        };
        assert!(matches!(
            diff.apply(&old),
            Err(SetDiffError::NotIncreasing {
                list: "removed",
                ..
            })
        ));
        let diff = SetDiff {
            removed: vec![5],
            ..Default::default()
        };
        assert!(matches!(
            diff.apply(&old),
            Err(SetDiffError::OutOfRange { .. })
        ));
        let diff = SetDiff {
            removed: vec![0, 1],
            ..Default::default()
        };
        assert_eq!(
            diff.apply(&old),
            Err(SetDiffError::InvalidSet(SetError::Empty))
        );
        let diff = SetDiff {
            removed: vec![0],
            restaked: vec![StakeChange {
                index: 0,
                stake: U256::from(1),
            }],
            ..Default::default()
        };
        assert_eq!(
            diff.apply(&old),
            Err(SetDiffError::RemovedAndRestaked { index: 0 })
        );
        let diff = SetDiff {
            added: vec![Addition {
                position: 9,
                validator: validator(3, 1),
            }],
            ..Default::default()
        };
        assert!(matches!(
            diff.apply(&old),
            Err(SetDiffError::OutOfRange { .. })
        ));
    }

    #[test]
    fn next_set_decoding_is_total() {
        for bytes in [
            &[][..],
            &[0xc0],
            &[0xc1, 0x05],
            &[0xc2, 0x02, 0xc0],
            &[0x80],
        ] {
            let _ = codec::decode_exact::<NextSet>("next set", bytes, 1024);
        }
        let next = NextSet::Full(vec![validator(1, 3)]);
        let bytes = alloy_rlp::encode(&next);
        assert_eq!(codec::decode_exact::<NextSet>("n", &bytes, 1024), Ok(next));
        let next = NextSet::Diff(SetDiff::default());
        let bytes = alloy_rlp::encode(&next);
        assert_eq!(codec::decode_exact::<NextSet>("n", &bytes, 1024), Ok(next));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any two sets over a small pool of members: the diff turns one into the other.
        #[test]
        fn diff_round_trips(
            old in proptest::collection::vec((0u8..12, 1u64..5), 1..8),
            new in proptest::collection::vec((0u8..12, 1u64..5), 1..8),
        ) {
            let dedup = |m: Vec<(u8, u64)>| {
                let mut seen = std::collections::HashSet::new();
                m.into_iter().filter(|(i, _)| seen.insert(*i)).collect::<Vec<_>>()
            };
            let (old, new) = (set(&dedup(old)), set(&dedup(new)));
            let diff = SetDiff::between(&old, &new);
            prop_assert_eq!(diff.apply(&old).unwrap(), new.clone());
            let bytes = alloy_rlp::encode(&diff);
            prop_assert_eq!(codec::decode_exact::<SetDiff>("d", &bytes, 1 << 20).unwrap(), diff);
        }
    }
}
