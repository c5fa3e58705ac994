//! Where trust starts: the genesis spec, an (epoch, validator-set hash) pair
//! or a block hash, and the age bound that makes a checkpoint safe.
//!
//! # The safe bound
//!
//! A member of set(`c`) can leave the set at the earliest in epoch `c + 1`
//! (set(`c + 1`) is fixed during epoch `c − 1`); its stake is then paid out
//! at epoch `c + 1 + W`, where `W = withdrawal_delay_epochs`, and the full
//! node accepts evidence about epoch `c` while its current epoch is at most
//! `c + W`. Past that, set(`c`) can sign a fake history at no cost. So a
//! checkpoint of epoch `c` is accepted while
//!
//! ```text
//! age = current_epoch − c  ≤  max_checkpoint_age_epochs = W − 1
//! ```
//!
//! which leaves at least one epoch to get evidence of a fork included. The
//! current epoch comes from the wall clock through [`current_epoch_at`]: the
//! nominal epoch of the current slot, never smaller than the real one (a
//! finality stall lengthens epochs), so the estimate errs on the safe side.
//! The same bound applies when resuming from a persisted [`TrustedState`].

use super::persist::TrustedState;
use crate::chain_spec::ChainSpec;
use crate::header::Header;
use crate::validator::ValidatorSet;
use alloy_primitives::B256;

/// The oldest a checkpoint may be, in epochs (see the module docs).
pub fn max_checkpoint_age_epochs(spec: &ChainSpec) -> u64 {
    spec.withdrawal_delay_epochs.saturating_sub(1)
}

/// The nominal epoch at Unix time `unix_ms` (an upper bound of the real one).
pub fn current_epoch_at(spec: &ChainSpec, unix_ms: u64) -> u64 {
    let since_genesis = unix_ms.saturating_sub(spec.genesis_timestamp.saturating_mul(1000));
    spec.nominal_epoch(since_genesis / spec.slot_duration_ms.max(1))
}

/// What a checkpoint names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// The genesis of the spec: set(0) and the genesis header.
    Genesis,
    /// The validator set of an epoch, by hash (the set itself comes from an upstream).
    Epoch {
        /// The epoch.
        epoch: u64,
        /// Hash of its validator set.
        set_hash: B256,
    },
    /// A block, by hash (its header and its epoch's set come from an upstream).
    Block(B256),
}

/// A trusted starting point given by the user, for one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The chain the checkpoint belongs to.
    pub chain_id: u64,
    /// What it names.
    pub anchor: Anchor,
}

/// The data an upstream supplies to turn a checkpoint into a trusted state;
/// it is checked against the checkpoint's hashes, so it need not be trusted.
#[derive(Debug, Clone)]
pub enum CheckpointMaterial {
    /// Nothing (enough for [`Anchor::Genesis`]).
    None,
    /// The epoch's set (for [`Anchor::Epoch`]).
    Set(ValidatorSet),
    /// The block's header and its epoch's set (for [`Anchor::Block`]).
    Block {
        /// The header whose hash is the checkpoint.
        header: Box<Header>,
        /// The set of the header's epoch.
        set: ValidatorSet,
    },
}

/// How old a checkpoint may be: the current epoch and the user's override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgePolicy {
    /// The current epoch (from [`current_epoch_at`]).
    pub current_epoch: u64,
    /// Accept checkpoints past the safe bound (`--allow-old-checkpoint`).
    pub allow_old: bool,
}

/// Why a checkpoint (or a persisted state) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint belongs to another chain.
    #[error(
        "checkpoint is for chain id {checkpoint}, but the chain spec is for chain id {spec}: use a checkpoint of this chain"
    )]
    WrongChain {
        /// The checkpoint's chain id.
        checkpoint: u64,
        /// The spec's chain id.
        spec: u64,
    },
    /// The checkpoint is older than the safe bound.
    #[error(
        "checkpoint is from epoch {checkpoint_epoch}, {age} epochs behind the current epoch {current_epoch}; \
         the safe bound is {max_age} epochs (the withdrawal delay): a validator set that old may have \
         withdrawn its stake and could sign a fake history for free. Get a recent checkpoint (an epoch \
         and set hash, or a block hash) from a source you trust, or pass --allow-old-checkpoint to accept the risk"
    )]
    TooOld {
        /// The checkpoint's epoch.
        checkpoint_epoch: u64,
        /// The current epoch.
        current_epoch: u64,
        /// `current_epoch − checkpoint_epoch`.
        age: u64,
        /// [`max_checkpoint_age_epochs`].
        max_age: u64,
    },
    /// The material an upstream supplied does not hash to the checkpoint.
    #[error(
        "the {what} supplied for the checkpoint hashes to {got}, the checkpoint names {expected}"
    )]
    MaterialMismatch {
        /// What was supplied.
        what: &'static str,
        /// The checkpoint's hash.
        expected: B256,
        /// The supplied data's hash.
        got: B256,
    },
    /// The material does not fit the anchor (for example a set for a block checkpoint).
    #[error("a {anchor} checkpoint needs {needs}")]
    MissingMaterial {
        /// The anchor kind.
        anchor: &'static str,
        /// What it needs.
        needs: &'static str,
    },
    /// The genesis set in the spec is invalid.
    #[error("the chain spec's genesis set is invalid: {0}")]
    InvalidGenesis(String),
    /// The text form does not parse.
    #[error(
        "cannot parse checkpoint {text:?}: expected CHAIN_ID:genesis, CHAIN_ID:epoch:N:SET_HASH or CHAIN_ID:block:HASH"
    )]
    Parse {
        /// The input.
        text: String,
    },
}

/// Refuses `checkpoint_epoch` when it is past the safe bound and the policy does not override.
pub fn check_age(
    spec: &ChainSpec,
    checkpoint_epoch: u64,
    policy: AgePolicy,
) -> Result<(), CheckpointError> {
    let age = policy.current_epoch.saturating_sub(checkpoint_epoch);
    let max_age = max_checkpoint_age_epochs(spec);
    if age > max_age && !policy.allow_old {
        return Err(CheckpointError::TooOld {
            checkpoint_epoch,
            current_epoch: policy.current_epoch,
            age,
            max_age,
        });
    }
    Ok(())
}

impl Checkpoint {
    /// The genesis checkpoint of `spec`.
    pub fn genesis(spec: &ChainSpec) -> Self {
        Self {
            chain_id: spec.chain_id,
            anchor: Anchor::Genesis,
        }
    }

    /// Parses `CHAIN_ID:genesis`, `CHAIN_ID:epoch:N:0xSETHASH` or `CHAIN_ID:block:0xHASH`.
    pub fn parse(text: &str) -> Result<Self, CheckpointError> {
        let fail = || CheckpointError::Parse {
            text: text.chars().take(200).collect(),
        };
        let parts: Vec<&str> = text.trim().split(':').collect();
        let chain_id: u64 = parts
            .first()
            .and_then(|s| s.parse().ok())
            .ok_or_else(fail)?;
        let anchor = match parts.as_slice() {
            [_, "genesis"] => Anchor::Genesis,
            [_, "epoch", epoch, hash] => Anchor::Epoch {
                epoch: epoch.parse().map_err(|_| fail())?,
                set_hash: hash.parse().map_err(|_| fail())?,
            },
            [_, "block", hash] => Anchor::Block(hash.parse().map_err(|_| fail())?),
            _ => return Err(fail()),
        };
        Ok(Self { chain_id, anchor })
    }

    /// Checks the chain id, the material against the checkpoint's hashes and
    /// the age bound, and returns the state to start from.
    pub fn trust(
        &self,
        spec: &ChainSpec,
        material: CheckpointMaterial,
        policy: AgePolicy,
    ) -> Result<TrustedState, CheckpointError> {
        if self.chain_id != spec.chain_id {
            return Err(CheckpointError::WrongChain {
                checkpoint: self.chain_id,
                spec: spec.chain_id,
            });
        }
        let state = match (&self.anchor, material) {
            (Anchor::Genesis, _) => {
                let set = spec
                    .genesis_set()
                    .map_err(|e| CheckpointError::InvalidGenesis(e.to_string()))?;
                TrustedState::from_header(spec.chain_id, spec.genesis_header(), set)
            }
            (Anchor::Epoch { epoch, set_hash }, CheckpointMaterial::Set(set)) => {
                matches("validator set", *set_hash, set.hash())?;
                TrustedState {
                    chain_id: spec.chain_id,
                    epoch: *epoch,
                    set,
                    next_set_hash: None,
                    next_set: None,
                    anchor_slot: 0,
                    finalized: None,
                }
            }
            (Anchor::Block(hash), CheckpointMaterial::Block { header, set }) => {
                matches("header", *hash, header.hash())?;
                matches("validator set", header.validator_set_hash, set.hash())?;
                TrustedState::from_header(spec.chain_id, *header, set)
            }
            (Anchor::Epoch { .. }, _) => {
                return Err(CheckpointError::MissingMaterial {
                    anchor: "epoch",
                    needs: "the epoch's validator set",
                });
            }
            (Anchor::Block(_), _) => {
                return Err(CheckpointError::MissingMaterial {
                    anchor: "block",
                    needs: "the block's header and its epoch's validator set",
                });
            }
        };
        check_age(spec, state.epoch, policy)?;
        Ok(state)
    }
}

fn matches(what: &'static str, expected: B256, got: B256) -> Result<(), CheckpointError> {
    if expected != got {
        return Err(CheckpointError::MaterialMismatch {
            what,
            expected,
            got,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: AgePolicy = AgePolicy {
        current_epoch: 0,
        allow_old: false,
    };

    #[test]
    fn parses_the_three_forms() {
        let hash = B256::repeat_byte(7);
        assert_eq!(
            Checkpoint::parse("31337:genesis").unwrap().anchor,
            Anchor::Genesis
        );
        assert_eq!(
            Checkpoint::parse(&format!("5:epoch:12:{hash}")).unwrap(),
            Checkpoint {
                chain_id: 5,
                anchor: Anchor::Epoch {
                    epoch: 12,
                    set_hash: hash
                }
            }
        );
        assert_eq!(
            Checkpoint::parse(&format!("5:block:{hash}"))
                .unwrap()
                .anchor,
            Anchor::Block(hash)
        );
        for bad in [
            "",
            "genesis",
            "x:genesis",
            "1:epoch:1",
            "1:block:0x12",
            "1:other",
        ] {
            assert!(matches!(
                Checkpoint::parse(bad),
                Err(CheckpointError::Parse { .. })
            ));
        }
    }

    #[test]
    fn age_bound_follows_the_withdrawal_delay() {
        let spec = ChainSpec::devnet(4);
        let max = max_checkpoint_age_epochs(&spec);
        assert_eq!(max, spec.withdrawal_delay_epochs - 1);
        let at = |current_epoch, allow_old| AgePolicy {
            current_epoch,
            allow_old,
        };
        assert!(check_age(&spec, 10, at(10 + max, false)).is_ok());
        let err = check_age(&spec, 10, at(11 + max, false)).unwrap_err();
        assert_eq!(
            err,
            CheckpointError::TooOld {
                checkpoint_epoch: 10,
                current_epoch: 11 + max,
                age: max + 1,
                max_age: max
            }
        );
        let text = err.to_string();
        assert!(text.contains("--allow-old-checkpoint") && text.contains("epochs behind"));
        assert!(check_age(&spec, 10, at(11 + max, true)).is_ok());
    }

    #[test]
    fn current_epoch_comes_from_the_clock() {
        let spec = ChainSpec::devnet(1); // 500 ms slots, 8 slots per epoch
        assert_eq!(current_epoch_at(&spec, 0), 0);
        assert_eq!(current_epoch_at(&spec, 3_999), 0);
        assert_eq!(current_epoch_at(&spec, 4_000), 1);
    }

    #[test]
    fn material_must_hash_to_the_checkpoint() {
        let spec = ChainSpec::devnet(4);
        let set = spec.genesis_set().unwrap();
        let good = Checkpoint {
            chain_id: spec.chain_id,
            anchor: Anchor::Epoch {
                epoch: 0,
                set_hash: set.hash(),
            },
        };
        let state = good
            .trust(&spec, CheckpointMaterial::Set(set.clone()), NOW)
            .unwrap();
        assert_eq!(state.set, set);
        let other = ChainSpec::devnet(3).genesis_set().unwrap();
        assert!(matches!(
            good.trust(&spec, CheckpointMaterial::Set(other), NOW),
            Err(CheckpointError::MaterialMismatch { .. })
        ));
        assert!(matches!(
            good.trust(&spec, CheckpointMaterial::None, NOW),
            Err(CheckpointError::MissingMaterial { .. })
        ));
        let header = spec.genesis_header();
        let block = Checkpoint {
            chain_id: spec.chain_id,
            anchor: Anchor::Block(header.hash()),
        };
        let state = block
            .trust(
                &spec,
                CheckpointMaterial::Block {
                    header: Box::new(header.clone()),
                    set,
                },
                NOW,
            )
            .unwrap();
        assert_eq!(state.finalized, Some(header));
    }
}
