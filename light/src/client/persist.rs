//! The trusted state and its file format.
//!
//! The client's whole trust fits in a [`TrustedState`]: the epoch, its set,
//! the next set (or its hash) and the latest finalized header. The I/O shell
//! writes [`TrustedState::encode`] with [`write_atomic`] after each epoch and
//! resumes from [`TrustedState::decode`] after a restart.
//!
//! File format: one version byte (`1`) followed by the RLP list
//! `[chain_id, epoch, set, [next_set_hash?], [next_set?], anchor_slot, [finalized?]]`,
//! where `[x?]` is a list of zero or one element.

use super::checkpoint::{AgePolicy, CheckpointError, check_age};
use crate::chain_spec::ChainSpec;
use crate::codec::{self, DecodeError};
use crate::header::Header;
use crate::validator::{Validator, ValidatorSet};
use alloy_primitives::B256;
use alloy_rlp::{RlpDecodable, RlpEncodable};

/// Version byte of the persisted format.
pub const STATE_VERSION: u8 = 1;

/// Largest persisted state accepted: two full sets and a header.
pub const MAX_STATE_BYTES: usize =
    2 * codec::MAX_VALIDATOR_SET_BYTES + codec::MAX_HEADER_BYTES + 256;

/// What the client trusts: everything needed to verify the next update and heads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedState {
    /// The chain.
    pub chain_id: u64,
    /// The epoch whose set the client holds.
    pub epoch: u64,
    /// Set(`epoch`).
    pub set: ValidatorSet,
    /// Hash of set(`epoch + 1`), once a verified header of `epoch` committed to it.
    pub next_set_hash: Option<B256>,
    /// Set(`epoch + 1`), once a hand-over delivered it (it hashes to `next_set_hash`).
    pub next_set: Option<ValidatorSet>,
    /// Slot of the newest header whose commitments are in this state; later
    /// updates must be above it.
    pub anchor_slot: u64,
    /// The latest finalized header the client verified (or was given).
    pub finalized: Option<Header>,
}

/// The on-disk shape (options as lists of zero or one element).
#[derive(RlpEncodable, RlpDecodable)]
struct Wire {
    chain_id: u64,
    epoch: u64,
    set: Vec<Validator>,
    next_set_hash: Vec<B256>,
    next_set: Vec<Vec<Validator>>,
    anchor_slot: u64,
    finalized: Vec<Header>,
}

impl TrustedState {
    /// The state of a trusted header and its epoch's set (genesis or a block checkpoint).
    pub fn from_header(chain_id: u64, header: Header, set: ValidatorSet) -> Self {
        Self {
            chain_id,
            epoch: header.epoch,
            set,
            next_set_hash: Some(header.next_validator_set_hash),
            next_set: None,
            anchor_slot: header.slot,
            finalized: Some(header),
        }
    }

    /// The set that verifies headers of `epoch`, if the state holds it.
    pub fn set_for(&self, epoch: u64) -> Option<&ValidatorSet> {
        if epoch == self.epoch {
            Some(&self.set)
        } else if Some(epoch) == self.epoch.checked_add(1) {
            self.next_set.as_ref()
        } else {
            None
        }
    }

    /// The epoch of the next hand-over update the client needs.
    pub fn next_update_epoch(&self) -> u64 {
        match self.next_set {
            None => self.epoch,
            Some(_) => self.epoch.saturating_add(1),
        }
    }

    /// Checks the state's own consistency (what [`decode`](Self::decode) enforces).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(next) = &self.next_set
            && self.next_set_hash != Some(next.hash())
        {
            return Err("the next set does not hash to the committed next-set hash".into());
        }
        if let Some(f) = &self.finalized {
            if f.epoch > self.epoch.saturating_add(1) {
                return Err(format!(
                    "finalized header of epoch {} is past epoch {} + 1",
                    f.epoch, self.epoch
                ));
            }
            if f.epoch == self.epoch && f.validator_set_hash != self.set.hash() {
                return Err("finalized header commits to another set than the state's".into());
            }
        }
        Ok(())
    }

    /// Refuses a state of another chain or older than the safe bound
    /// (see [`checkpoint`](super::checkpoint)), before resuming from it.
    pub fn check_resume(&self, spec: &ChainSpec, policy: AgePolicy) -> Result<(), CheckpointError> {
        if self.chain_id != spec.chain_id {
            return Err(CheckpointError::WrongChain {
                checkpoint: self.chain_id,
                spec: spec.chain_id,
            });
        }
        check_age(spec, self.epoch, policy)
    }

    /// The versioned file contents.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            chain_id: self.chain_id,
            epoch: self.epoch,
            set: self.set.validators().to_vec(),
            next_set_hash: self.next_set_hash.into_iter().collect(),
            next_set: self
                .next_set
                .iter()
                .map(|s| s.validators().to_vec())
                .collect(),
            anchor_slot: self.anchor_slot,
            finalized: self.finalized.iter().cloned().collect(),
        };
        let mut out = vec![STATE_VERSION];
        alloy_rlp::Encodable::encode(&wire, &mut out);
        out
    }

    /// Decodes a persisted state: size cap, known version, canonical RLP,
    /// valid sets and a consistent state. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "trusted state";
        let invalid = |reason: String| DecodeError::Invalid { what: WHAT, reason };
        if bytes.len() > MAX_STATE_BYTES {
            return Err(DecodeError::Oversized {
                what: WHAT,
                len: bytes.len(),
                max: MAX_STATE_BYTES,
            });
        }
        let (&version, rest) = bytes
            .split_first()
            .ok_or_else(|| invalid("empty file".into()))?;
        if version != STATE_VERSION {
            return Err(invalid(format!(
                "version {version} is not the supported version {STATE_VERSION}"
            )));
        }
        let wire: Wire = codec::decode_exact(WHAT, rest, MAX_STATE_BYTES)?;
        let one = |len: usize, field: &str| {
            (len <= 1)
                .then_some(())
                .ok_or_else(|| invalid(format!("{field} has {len} entries, at most 1")))
        };
        one(wire.next_set_hash.len(), "next_set_hash")?;
        one(wire.next_set.len(), "next_set")?;
        one(wire.finalized.len(), "finalized")?;
        let set = ValidatorSet::new(wire.set).map_err(|e| invalid(format!("set: {e}")))?;
        let next_set = match wire.next_set.into_iter().next() {
            Some(v) => Some(ValidatorSet::new(v).map_err(|e| invalid(format!("next set: {e}")))?),
            None => None,
        };
        let state = Self {
            chain_id: wire.chain_id,
            epoch: wire.epoch,
            set,
            next_set_hash: wire.next_set_hash.into_iter().next(),
            next_set,
            anchor_slot: wire.anchor_slot,
            finalized: wire.finalized.into_iter().next(),
        };
        state.validate().map_err(invalid)?;
        Ok(state)
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new
/// contents: a temporary file in the same directory, fsync, rename, and an
/// fsync of the directory (on Unix).
#[cfg(feature = "client")]
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
    })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn genesis_state() -> TrustedState {
        let spec = ChainSpec::devnet(4);
        TrustedState::from_header(
            spec.chain_id,
            spec.genesis_header(),
            spec.genesis_set().unwrap(),
        )
    }

    #[test]
    fn round_trips() {
        let mut state = genesis_state();
        assert_eq!(TrustedState::decode(&state.encode()), Ok(state.clone()));
        state.next_set = Some(state.set.clone());
        state.next_set_hash = Some(state.set.hash());
        state.finalized = None;
        assert_eq!(TrustedState::decode(&state.encode()), Ok(state));
    }

    #[test]
    fn refuses_damaged_files() {
        let state = genesis_state();
        let bytes = state.encode();
        assert!(TrustedState::decode(&[]).is_err());
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert!(
            TrustedState::decode(&wrong_version)
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(TrustedState::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            TrustedState::decode(&trailing),
            Err(DecodeError::TrailingBytes { .. })
        ));
        let mut inconsistent = state.clone();
        inconsistent.next_set = Some(ChainSpec::devnet(2).genesis_set().unwrap());
        assert!(TrustedState::decode(&inconsistent.encode()).is_err());
        let huge = vec![1u8; MAX_STATE_BYTES + 1];
        assert!(matches!(
            TrustedState::decode(&huge),
            Err(DecodeError::Oversized { .. })
        ));
    }

    #[cfg(feature = "client")]
    #[test]
    fn write_atomic_replaces_the_file() {
        let dir =
            std::env::temp_dir().join(format!("luxtensor-light-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.bin");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!dir.join("state.bin.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
