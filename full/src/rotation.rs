//! Validator rotation (the seed's `ValidatorRotation`): who validates in
//! which epoch, driven only by on-chain staking requests and slashing.
//!
//! During epoch `e` two sets are fixed: `set(e)`, which signs now, and
//! `set(e+1)`, which headers of `e` announce as `next_validator_set_hash`.
//! [`ValidatorRotation::process_epoch_transition`] (run at the ending block of
//! an epoch) makes `set(e+1)` current and computes `set(e+2)` from the queues:
//!
//! - a stake request made in epoch `e` activates at `e + max(activation_delay, 2)`,
//!   an exit at `e + max(exit_delay, 2)`: 2 is the earliest epoch whose set
//!   is not fixed yet;
//! - at most `max_validators` are active; when more are eligible than there
//!   are free seats, the higher stake wins, then the earlier request, then the
//!   lower address, and the rest keep waiting in queue order;
//! - at most `churn_limit` activations and `churn_limit` exits happen per
//!   transition (0 disables the limit); the rest wait in their queues;
//! - a slashed validator is ejected from the next set not yet fixed;
//! - the set never becomes empty: the last validator cannot exit, and an
//!   ejection that would empty the set is postponed;
//! - stake that leaves the set stays slashable for `withdrawal_delay_epochs`
//!   and is then paid out (less any slashing) in a transition's `withdrawals`;
//! - the sets of the last [`EVIDENCE_EPOCHS`] epochs stay in the state, so
//!   that evidence about them can be judged from the state alone.

use alloy_primitives::{Address, B256, U256, keccak256};
use alloy_rlp::{RlpDecodable, RlpEncodable};
use luxtensor_light::{BlsPublicKey, RotationConfig, Validator, ValidatorSet};

/// Epochs before the current one whose sets the state keeps: evidence about
/// an offence can be proven for this long after the offence's epoch (and
/// no longer than the withdrawal delay, after which the stake may be gone).
/// Long enough for a proof caught behind a partition to reach the chain
/// after the heal, when the chain may run through several epochs at once.
pub const EVIDENCE_EPOCHS: u64 = 8;

/// Why a rotation request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// The owner already has an active or pending validator.
    #[error("validator {0} already exists (active, pending or exiting)")]
    ValidatorAlreadyExists(Address),
    /// The BLS key is already used by another active or pending validator.
    #[error("public key {0} is already in use by another validator")]
    KeyInUse(BlsPublicKey),
    /// The request does not apply in the validator's current state.
    #[error("invalid operation: {0}")]
    InvalidOperation(String),
    /// The request would leave the active set empty.
    #[error("no validators would remain: the last active validator cannot exit")]
    NoValidatorsAvailable,
    /// A transition out of order.
    #[error("epoch transition: {0}")]
    EpochTransition(String),
    /// The stake is below `min_stake`.
    #[error("stake {stake} is below the minimum {min}")]
    BelowMinimumStake {
        /// Offered stake.
        stake: U256,
        /// Required minimum.
        min: U256,
    },
    /// No validator (active, pending, exiting or awaiting withdrawal) has this owner.
    #[error("unknown validator {0}")]
    UnknownValidator(Address),
    /// Evidence from before the withdrawal window: that stake may already be gone.
    #[error(
        "evidence of epoch {evidence_epoch} is older than the withdrawal delay allows (oldest: {oldest})"
    )]
    EvidenceTooOld {
        /// Epoch of the evidence.
        evidence_epoch: u64,
        /// Oldest epoch still slashable.
        oldest: u64,
    },
}

/// A stake request waiting for activation.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
struct PendingActivation {
    validator: Validator,
    activation_epoch: u64,
    queue_position: u64,
}

/// An active validator waiting to leave.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
struct PendingExit {
    owner: Address,
    exit_epoch: u64,
}

/// Stake that left the set, slashable until `withdrawable_epoch`.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
struct PendingWithdrawal {
    owner: Address,
    amount: U256,
    withdrawable_epoch: u64,
}

/// Slashing recorded against a validator that is still in a set.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
struct Slash {
    owner: Address,
    amount: U256,
}

/// Everything that changes; its RLP encoding is what the store persists and
/// what the staking contract's state commitment hashes.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
struct RotationState {
    current_epoch: u64,
    current: Vec<Validator>,
    next: Vec<Validator>,
    pending: Vec<PendingActivation>,
    exiting: Vec<PendingExit>,
    slashed: Vec<Slash>,
    withdrawals: Vec<PendingWithdrawal>,
    /// Offences already punished (owner, slot), kept while still slashable.
    offences: Vec<Offence>,
    next_queue_position: u64,
    /// Slot of the block that ended the previous epoch (0 before the first).
    ending_block_slot: u64,
    /// The sets of the last [`EVIDENCE_EPOCHS`] epochs before the current
    /// one, oldest first (none during epoch 0): evidence about them can
    /// still be checked from the state alone.
    past: Vec<PastSet>,
}

/// The set of an epoch before the current one.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
struct PastSet {
    epoch: u64,
    validators: Vec<Validator>,
}

/// One punished offence, so that the same evidence never slashes twice.
/// Kept until the slot's nominal epoch leaves the withdrawal window (the
/// slot is signed; the epoch a piece of evidence claims is not).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
struct Offence {
    owner: Address,
    slot: u64,
}

/// What one epoch transition changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochTransitionResult {
    /// The epoch that starts.
    pub epoch: u64,
    /// Owners in the set of `epoch` who were not in the set before.
    pub activated_validators: Vec<Address>,
    /// Owners of the previous set who are not in the set of `epoch`.
    pub exited_validators: Vec<Address>,
    /// Stake paid out now that its withdrawal delay is over (owner, amount).
    pub withdrawals: Vec<(Address, U256)>,
}

/// Counters for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationStats {
    /// The epoch being executed.
    pub current_epoch: u64,
    /// Members of the current set.
    pub active_validators: usize,
    /// Total stake of the current set.
    pub total_active_stake: U256,
    /// Stake requests waiting for activation.
    pub pending_activations: usize,
    /// Active validators waiting to exit.
    pub pending_exits: usize,
    /// Exited stakes still inside their withdrawal delay.
    pub pending_withdrawals: usize,
}

/// The validator rotation state machine. Pure: no I/O, no clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorRotation {
    config: RotationConfig,
    withdrawal_delay_epochs: u64,
    state: RotationState,
}

impl ValidatorRotation {
    /// Starts at epoch 0 with `genesis` as the set of epochs 0 and 1.
    pub fn new(
        config: RotationConfig,
        withdrawal_delay_epochs: u64,
        genesis: Vec<Validator>,
    ) -> Self {
        Self {
            config,
            withdrawal_delay_epochs,
            state: RotationState {
                current_epoch: 0,
                current: genesis.clone(),
                next: genesis,
                pending: Vec::new(),
                exiting: Vec::new(),
                slashed: Vec::new(),
                withdrawals: Vec::new(),
                offences: Vec::new(),
                next_queue_position: 0,
                ending_block_slot: 0,
                past: Vec::new(),
            },
        }
    }

    /// Restores a rotation persisted with [`Self::encode_state`].
    pub fn decode_state(
        config: RotationConfig,
        withdrawal_delay_epochs: u64,
        bytes: &[u8],
    ) -> Result<Self, alloy_rlp::Error> {
        let state = alloy_rlp::decode_exact(bytes)?;
        Ok(Self {
            config,
            withdrawal_delay_epochs,
            state,
        })
    }

    /// The canonical encoding of the mutable state.
    pub fn encode_state(&self) -> Vec<u8> {
        alloy_rlp::encode(&self.state)
    }

    /// `keccak256` of [`Self::encode_state`]: the staking contract's state commitment.
    pub fn state_hash(&self) -> B256 {
        keccak256(self.encode_state())
    }

    /// The rules in force.
    pub fn config(&self) -> &RotationConfig {
        &self.config
    }

    /// The epoch being executed.
    pub fn current_epoch(&self) -> u64 {
        self.state.current_epoch
    }

    /// The set of the current epoch, in set order.
    pub fn current_validators(&self) -> &[Validator] {
        &self.state.current
    }

    /// The set of the next epoch (already fixed), in set order.
    pub fn next_validators(&self) -> &[Validator] {
        &self.state.next
    }

    /// The set of `epoch`: the current or the next one, or one of the last
    /// [`EVIDENCE_EPOCHS`] before the current one; `None` for any other.
    pub fn validators_of_epoch(&self, epoch: u64) -> Option<&[Validator]> {
        let current = self.state.current_epoch;
        if epoch == current {
            return Some(&self.state.current);
        }
        if epoch == current + 1 {
            return Some(&self.state.next);
        }
        self.state
            .past
            .iter()
            .find(|p| p.epoch == epoch)
            .map(|p| p.validators.as_slice())
    }

    /// Canonical hash of the current set.
    pub fn current_set_hash(&self) -> B256 {
        ValidatorSet::hash_of(&self.state.current)
    }

    /// Canonical hash of the next set.
    pub fn next_set_hash(&self) -> B256 {
        ValidatorSet::hash_of(&self.state.next)
    }

    /// The earliest epoch a request made now can change.
    fn first_open_epoch(&self, delay: u64) -> u64 {
        self.state.current_epoch.saturating_add(delay.max(2))
    }

    fn is_member(&self, owner: &Address) -> bool {
        self.state
            .current
            .iter()
            .chain(&self.state.next)
            .any(|v| &v.owner == owner)
    }

    /// Queues a stake request; returns the epoch it activates in (if a seat
    /// is free then, and the churn limit allows). The caller has checked the
    /// proof of possession.
    pub fn request_validator_addition(
        &mut self,
        validator: Validator,
    ) -> Result<u64, RotationError> {
        if validator.stake < self.config.min_stake {
            return Err(RotationError::BelowMinimumStake {
                stake: validator.stake,
                min: self.config.min_stake,
            });
        }
        let owner = validator.owner;
        if self.is_member(&owner)
            || self
                .state
                .pending
                .iter()
                .any(|p| p.validator.owner == owner)
        {
            return Err(RotationError::ValidatorAlreadyExists(owner));
        }
        let key = validator.public_key;
        let in_use = self
            .state
            .current
            .iter()
            .chain(&self.state.next)
            .any(|v| v.public_key == key)
            || self
                .state
                .pending
                .iter()
                .any(|p| p.validator.public_key == key);
        if in_use {
            return Err(RotationError::KeyInUse(key));
        }
        let activation_epoch = self.first_open_epoch(self.config.activation_delay_epochs);
        let queue_position = self.state.next_queue_position;
        self.state.next_queue_position += 1;
        self.state.pending.push(PendingActivation {
            validator,
            activation_epoch,
            queue_position,
        });
        Ok(activation_epoch)
    }

    /// Requests an exit; returns the first epoch without the validator. A
    /// pending activation is cancelled instead, and its stake is refunded at
    /// the next transition.
    pub fn request_validator_exit(&mut self, owner: Address) -> Result<u64, RotationError> {
        if let Some(i) = self
            .state
            .pending
            .iter()
            .position(|p| p.validator.owner == owner)
        {
            let cancelled = self.state.pending.remove(i);
            self.state.withdrawals.push(PendingWithdrawal {
                owner,
                amount: cancelled.validator.stake,
                withdrawable_epoch: self.state.current_epoch,
            });
            return Ok(self.state.current_epoch);
        }
        if !self.is_member(&owner) {
            return Err(RotationError::UnknownValidator(owner));
        }
        if !self.state.next.iter().any(|v| v.owner == owner) {
            return Err(RotationError::InvalidOperation(format!(
                "{owner} already leaves the set at the next epoch"
            )));
        }
        if self.state.exiting.iter().any(|e| e.owner == owner) {
            return Err(RotationError::InvalidOperation(format!(
                "{owner} already requested its exit"
            )));
        }
        let staying = self
            .state
            .next
            .iter()
            .filter(|v| !self.state.exiting.iter().any(|e| e.owner == v.owner))
            .count();
        if staying <= 1 {
            return Err(RotationError::NoValidatorsAvailable);
        }
        let exit_epoch = self.first_open_epoch(self.config.exit_delay_epochs);
        self.state.exiting.push(PendingExit { owner, exit_epoch });
        Ok(exit_epoch)
    }

    /// Refuses evidence whose stake may already have been withdrawn.
    pub fn check_evidence_age(&self, evidence_epoch: u64) -> Result<(), RotationError> {
        let oldest = self
            .state
            .current_epoch
            .saturating_sub(self.withdrawal_delay_epochs);
        if evidence_epoch < oldest {
            return Err(RotationError::EvidenceTooOld {
                evidence_epoch,
                oldest,
            });
        }
        Ok(())
    }

    /// Records that `owner` was punished for its message(s) at `slot`;
    /// false if that offence was already punished.
    pub fn record_offence(&mut self, owner: Address, slot: u64) -> bool {
        if self
            .state
            .offences
            .iter()
            .any(|o| o.owner == owner && o.slot == slot)
        {
            return false;
        }
        self.state.offences.push(Offence { owner, slot });
        true
    }

    /// Records the slot of the block that ends the current epoch (the
    /// executor calls it with the transition), so that the next epoch can
    /// check that this block is final before it starts.
    pub fn record_ending_block_slot(&mut self, slot: u64) {
        self.state.ending_block_slot = slot;
    }

    /// Slot of the block that ended the previous epoch.
    pub fn ending_block_slot(&self) -> u64 {
        self.state.ending_block_slot
    }

    /// Slashes `amount` (capped at what is left) from the validator owned by
    /// `owner`: from its pending withdrawal if it already left, otherwise it
    /// is ejected from the next set not yet fixed and loses the amount then.
    /// Returns the amount actually slashed.
    pub fn slash_validator(
        &mut self,
        owner: &Address,
        amount: U256,
    ) -> Result<U256, RotationError> {
        if let Some(member) = self.state.next.iter().find(|v| &v.owner == owner) {
            let stake = member.stake;
            let slash = match self
                .state
                .slashed
                .iter_mut()
                .position(|s| &s.owner == owner)
            {
                Some(i) => &mut self.state.slashed[i],
                None => {
                    self.state.slashed.push(Slash {
                        owner: *owner,
                        amount: U256::ZERO,
                    });
                    self.state.slashed.last_mut().expect("just pushed")
                }
            };
            let taken = amount.min(stake - slash.amount);
            slash.amount += taken;
            return Ok(taken);
        }
        // Already out of the next set: its stake waits in the withdrawal queue.
        if let Some(w) = self
            .state
            .withdrawals
            .iter_mut()
            .find(|w| &w.owner == owner)
        {
            let taken = amount.min(w.amount);
            w.amount -= taken;
            return Ok(taken);
        }
        Err(RotationError::UnknownValidator(*owner))
    }

    /// Ends the current epoch: the fixed next set becomes current, the set
    /// after it is computed from the queues, and due withdrawals are paid.
    pub fn process_epoch_transition(
        &mut self,
        new_epoch: u64,
    ) -> Result<EpochTransitionResult, RotationError> {
        let expected = self.state.current_epoch + 1;
        if new_epoch != expected {
            return Err(RotationError::EpochTransition(format!(
                "expected epoch {expected}, got {new_epoch}"
            )));
        }
        let previous = std::mem::replace(&mut self.state.current, self.state.next.clone());
        self.state.past.push(PastSet {
            epoch: new_epoch - 1,
            validators: previous.clone(),
        });
        let kept_from = new_epoch.saturating_sub(EVIDENCE_EPOCHS);
        self.state.past.retain(|p| p.epoch >= kept_from);
        self.state.current_epoch = new_epoch;
        self.state.next = self.compute_set(new_epoch + 1);

        let was_in = |set: &[Validator], owner: &Address| set.iter().any(|v| &v.owner == owner);
        let result = EpochTransitionResult {
            epoch: new_epoch,
            activated_validators: self
                .state
                .current
                .iter()
                .filter(|v| !was_in(&previous, &v.owner))
                .map(|v| v.owner)
                .collect(),
            exited_validators: previous
                .iter()
                .filter(|v| !was_in(&self.state.current, &v.owner))
                .map(|v| v.owner)
                .collect(),
            withdrawals: self.pay_withdrawals(new_epoch),
        };
        let oldest = new_epoch.saturating_sub(self.withdrawal_delay_epochs);
        let epoch_length = self.config.epoch_length.max(1);
        self.state
            .offences
            .retain(|o| o.slot / epoch_length >= oldest);
        Ok(result)
    }

    /// Derives the set of `epoch` from the fixed set before it and the queues.
    fn compute_set(&mut self, epoch: u64) -> Vec<Validator> {
        let churn = match self.config.churn_limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let base = self.state.next.clone();

        // Decide first, change the queues only once the result is known to be
        // non-empty. Ejections of slashed members do not count against churn.
        let slashed: Vec<Address> = self.state.slashed.iter().map(|s| s.owner).collect();
        let mut set: Vec<Validator> = base
            .iter()
            .filter(|v| !slashed.contains(&v.owner))
            .cloned()
            .collect();
        let leaving: Vec<Address> = self
            .state
            .exiting
            .iter()
            .filter(|e| e.exit_epoch <= epoch && set.iter().any(|v| v.owner == e.owner))
            .take(churn)
            .map(|e| e.owner)
            .collect();
        set.retain(|v| !leaving.contains(&v.owner));

        // Activations: eligible requests by stake, then queue order, then
        // address, into the free seats and within churn.
        let seats = (self.config.max_validators as usize)
            .saturating_sub(set.len())
            .min(churn);
        let mut eligible: Vec<&PendingActivation> = self
            .state
            .pending
            .iter()
            .filter(|p| p.activation_epoch <= epoch)
            .collect();
        eligible.sort_by(|a, b| {
            b.validator
                .stake
                .cmp(&a.validator.stake)
                .then(a.queue_position.cmp(&b.queue_position))
                .then(a.validator.owner.cmp(&b.validator.owner))
        });
        let chosen: Vec<u64> = eligible
            .iter()
            .take(seats)
            .map(|p| p.queue_position)
            .collect();
        set.extend(chosen.iter().map(|q| {
            let p = self.state.pending.iter().find(|p| p.queue_position == *q);
            p.expect("chosen from the queue").validator.clone()
        }));

        if set.is_empty() {
            // Never empty: nobody leaves this time; ejections and exits stay queued.
            return base;
        }
        self.state
            .pending
            .retain(|p| !chosen.contains(&p.queue_position));
        self.state
            .exiting
            .retain(|e| !leaving.contains(&e.owner) && set.iter().any(|v| v.owner == e.owner));

        // Everyone who left starts the withdrawal delay with what slashing left them.
        for v in base
            .iter()
            .filter(|v| !set.iter().any(|s| s.owner == v.owner))
        {
            let slashed = match self.state.slashed.iter().position(|s| s.owner == v.owner) {
                Some(i) => self.state.slashed.remove(i).amount,
                None => U256::ZERO,
            };
            self.state.withdrawals.push(PendingWithdrawal {
                owner: v.owner,
                amount: v.stake - slashed,
                withdrawable_epoch: epoch.saturating_add(self.withdrawal_delay_epochs),
            });
        }
        set
    }

    fn pay_withdrawals(&mut self, epoch: u64) -> Vec<(Address, U256)> {
        let mut paid = Vec::new();
        self.state.withdrawals.retain(|w| {
            let due = w.withdrawable_epoch <= epoch;
            if due && !w.amount.is_zero() {
                paid.push((w.owner, w.amount));
            }
            !due
        });
        paid
    }

    /// Stake requests waiting for activation, in queue order, with the
    /// earliest epoch each can activate (the cap and churn limit may make it
    /// wait longer).
    pub fn pending_activations(&self) -> impl Iterator<Item = (&Validator, u64)> {
        self.state
            .pending
            .iter()
            .map(|p| (&p.validator, p.activation_epoch))
    }

    /// Active validators that asked to leave, with the epoch whose set no
    /// longer includes them.
    pub fn pending_exits(&self) -> impl Iterator<Item = (Address, u64)> + '_ {
        self.state.exiting.iter().map(|e| (e.owner, e.exit_epoch))
    }

    /// Slashing recorded against validators still in a set (owner, amount);
    /// they are ejected from the next set not yet fixed.
    pub fn slashed(&self) -> impl Iterator<Item = (Address, U256)> + '_ {
        self.state.slashed.iter().map(|s| (s.owner, s.amount))
    }

    /// Counters for operators.
    pub fn get_stats(&self) -> RotationStats {
        RotationStats {
            current_epoch: self.state.current_epoch,
            active_validators: self.state.current.len(),
            total_active_stake: self
                .state
                .current
                .iter()
                .fold(U256::ZERO, |total, v| total.saturating_add(v.stake)),
            pending_activations: self.state.pending.len(),
            pending_exits: self.state.exiting.len(),
            pending_withdrawals: self.state.withdrawals.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use luxtensor_light::chain_spec::{TOKEN, devnet_validator_key};
    use proptest::prelude::*;

    fn tokens(n: u64) -> U256 {
        TOKEN * U256::from(n)
    }

    fn validator(i: u8, stake_tokens: u64) -> Validator {
        Validator {
            owner: Address::repeat_byte(i),
            public_key: devnet_validator_key(u32::from(i)).public_key(),
            stake: tokens(stake_tokens),
        }
    }

    fn config() -> RotationConfig {
        RotationConfig {
            epoch_length: 4,
            ..RotationConfig::default()
        }
    }

    fn rotation(genesis: &[u8]) -> ValidatorRotation {
        ValidatorRotation::new(
            config(),
            4,
            genesis.iter().map(|&i| validator(i, 32)).collect(),
        )
    }

    fn owners(set: &[Validator]) -> Vec<u8> {
        set.iter().map(|v| v.owner.0[0]).collect()
    }

    fn advance(r: &mut ValidatorRotation) -> EpochTransitionResult {
        let next = r.current_epoch() + 1;
        r.process_epoch_transition(next).unwrap()
    }

    #[test]
    fn next_set_is_fixed_during_the_epoch_and_activation_follows_the_delay() {
        let mut r = rotation(&[1, 2]);
        assert_eq!(r.request_validator_addition(validator(3, 32)), Ok(2));
        assert_eq!(
            owners(r.next_validators()),
            [1, 2],
            "set(1) was fixed at genesis"
        );
        let t = advance(&mut r); // epoch 1; set(2) computed now
        assert!(t.activated_validators.is_empty());
        assert_eq!(owners(r.current_validators()), [1, 2]);
        assert_eq!(owners(r.next_validators()), [1, 2, 3]);
        let t = advance(&mut r); // epoch 2
        assert_eq!(t.activated_validators, vec![Address::repeat_byte(3)]);
        assert_eq!(owners(r.current_validators()), [1, 2, 3]);
    }

    #[test]
    fn a_delay_of_one_still_respects_the_fixed_next_set() {
        let mut r = rotation(&[1]);
        r.config.activation_delay_epochs = 1;
        assert_eq!(r.request_validator_addition(validator(2, 32)), Ok(2));
    }

    #[test]
    fn transitions_must_be_consecutive() {
        let mut r = rotation(&[1]);
        assert!(matches!(
            r.process_epoch_transition(2),
            Err(RotationError::EpochTransition(_))
        ));
        assert!(matches!(
            r.process_epoch_transition(0),
            Err(RotationError::EpochTransition(_))
        ));
    }

    #[test]
    fn last_validator_cannot_exit() {
        let mut r = rotation(&[1, 2]);
        assert_eq!(r.request_validator_exit(Address::repeat_byte(1)), Ok(2));
        assert_eq!(
            r.request_validator_exit(Address::repeat_byte(2)),
            Err(RotationError::NoValidatorsAvailable)
        );
        for _ in 0..3 {
            advance(&mut r);
        }
        assert_eq!(owners(r.current_validators()), [2]);
        assert_eq!(
            r.request_validator_exit(Address::repeat_byte(2)),
            Err(RotationError::NoValidatorsAvailable)
        );
    }

    #[test]
    fn cap_picks_by_stake_then_queue_order_and_the_rest_wait() {
        let mut r = rotation(&[1, 2]);
        r.config.max_validators = 3;
        r.request_validator_addition(validator(3, 40)).unwrap();
        r.request_validator_addition(validator(4, 50)).unwrap();
        r.request_validator_addition(validator(5, 50)).unwrap();
        advance(&mut r);
        // One seat: 4 and 5 stake the most; 4 asked first.
        assert_eq!(owners(r.next_validators()), [1, 2, 4]);
        assert_eq!(r.get_stats().pending_activations, 2);
        r.request_validator_exit(Address::repeat_byte(1)).unwrap();
        advance(&mut r);
        advance(&mut r);
        assert_eq!(
            owners(r.next_validators()),
            [2, 4, 5],
            "5 outranks 3 by stake"
        );
    }

    #[test]
    fn ties_at_the_cap_fall_back_to_the_address() {
        let mut r = rotation(&[1]);
        r.config.max_validators = 2;
        // Same stake; queue order decides; the address decides only an exact tie,
        // which queue positions never produce, so check the queue decides.
        r.request_validator_addition(validator(9, 32)).unwrap();
        r.request_validator_addition(validator(8, 32)).unwrap();
        advance(&mut r);
        assert_eq!(owners(r.next_validators()), [1, 9]);
    }

    #[test]
    fn exit_while_pending_cancels_activation_and_refunds() {
        let mut r = rotation(&[1]);
        r.request_validator_addition(validator(2, 33)).unwrap();
        assert_eq!(r.request_validator_exit(Address::repeat_byte(2)), Ok(0));
        let t = advance(&mut r);
        assert_eq!(t.withdrawals, vec![(Address::repeat_byte(2), tokens(33))]);
        advance(&mut r);
        assert_eq!(owners(r.current_validators()), [1]);
    }

    #[test]
    fn slashed_validator_loses_the_amount_and_is_ejected_at_the_next_open_epoch() {
        let mut r = rotation(&[1, 2, 3]);
        advance(&mut r); // epoch 1
        assert_eq!(
            r.slash_validator(&Address::repeat_byte(2), tokens(5)),
            Ok(tokens(5))
        );
        assert_eq!(
            owners(r.next_validators()),
            [1, 2, 3],
            "set(2) is already fixed"
        );
        let t = advance(&mut r); // epoch 2: set(3) computed without 2
        assert!(t.exited_validators.is_empty());
        assert_eq!(owners(r.next_validators()), [1, 3]);
        let t = advance(&mut r); // epoch 3
        assert_eq!(t.exited_validators, vec![Address::repeat_byte(2)]);
        // Withdrawal delay 4 from epoch 3: paid at epoch 7, less the slash.
        let mut paid = Vec::new();
        for _ in 0..4 {
            paid.extend(advance(&mut r).withdrawals);
        }
        assert_eq!(paid, vec![(Address::repeat_byte(2), tokens(27))]);
    }

    #[test]
    fn a_fully_slashed_set_is_replaced_by_the_waiting_validators() {
        let mut r = rotation(&[1, 2]);
        r.request_validator_addition(validator(3, 32)).unwrap();
        r.request_validator_addition(validator(4, 32)).unwrap();
        advance(&mut r);
        // set(2) is fixed with 1, 2, 3, 4? No: 3 and 4 activate at 2, so set(2) = [1, 2, 3, 4].
        assert_eq!(owners(r.next_validators()), [1, 2, 3, 4]);
        for i in 1..=4 {
            r.slash_validator(&Address::repeat_byte(i), tokens(1))
                .unwrap();
        }
        r.request_validator_addition(validator(5, 32)).unwrap();
        advance(&mut r); // set(3): everyone slashed, but 5 arrives: the set is [5]
        assert_eq!(owners(r.next_validators()), [5]);
    }

    #[test]
    fn an_ejection_that_would_empty_the_set_waits_for_a_replacement() {
        let mut r = rotation(&[1]);
        r.slash_validator(&Address::repeat_byte(1), tokens(1))
            .unwrap();
        advance(&mut r);
        assert_eq!(owners(r.next_validators()), [1], "the only validator stays");
        r.request_validator_addition(validator(2, 32)).unwrap();
        advance(&mut r);
        advance(&mut r);
        assert_eq!(
            owners(r.next_validators()),
            [2],
            "ejected once a replacement exists"
        );
        let paid: Vec<_> = (0..8).flat_map(|_| advance(&mut r).withdrawals).collect();
        assert_eq!(paid, vec![(Address::repeat_byte(1), tokens(31))]);
    }

    #[test]
    fn slashing_an_exiting_validator_and_double_slashing() {
        let mut r = rotation(&[1, 2, 3]);
        r.request_validator_exit(Address::repeat_byte(3)).unwrap();
        assert_eq!(
            r.slash_validator(&Address::repeat_byte(3), tokens(10)),
            Ok(tokens(10))
        );
        // Slashing again takes at most what is left, and never underflows.
        assert_eq!(
            r.slash_validator(&Address::repeat_byte(3), U256::MAX),
            Ok(tokens(22))
        );
        assert_eq!(
            r.slash_validator(&Address::repeat_byte(3), tokens(1)),
            Ok(U256::ZERO)
        );
        for _ in 0..8 {
            assert!(
                advance(&mut r).withdrawals.is_empty(),
                "nothing left to pay"
            );
        }
        assert_eq!(owners(r.current_validators()), [1, 2]);
        assert_eq!(r.get_stats().pending_exits, 0);
    }

    #[test]
    fn slashing_after_exit_reduces_the_withdrawal() {
        let mut r = rotation(&[1, 2]);
        r.request_validator_exit(Address::repeat_byte(2)).unwrap();
        advance(&mut r);
        advance(&mut r);
        assert_eq!(owners(r.current_validators()), [1]);
        assert_eq!(
            r.slash_validator(&Address::repeat_byte(2), tokens(2)),
            Ok(tokens(2))
        );
        let paid: Vec<_> = (0..6).flat_map(|_| advance(&mut r).withdrawals).collect();
        assert_eq!(paid, vec![(Address::repeat_byte(2), tokens(30))]);
        assert_eq!(
            r.slash_validator(&Address::repeat_byte(2), tokens(1)),
            Err(RotationError::UnknownValidator(Address::repeat_byte(2)))
        );
    }

    #[test]
    fn an_offence_is_punished_once_and_forgotten_after_the_delay() {
        let mut r = rotation(&[1, 2]);
        assert!(r.record_offence(Address::repeat_byte(1), 3));
        assert!(!r.record_offence(Address::repeat_byte(1), 3));
        assert!(r.record_offence(Address::repeat_byte(1), 4));
        // Slot 4 is in nominal epoch 1 (4-slot epochs); the window is 4 epochs.
        for _ in 0..5 {
            advance(&mut r);
        }
        assert!(
            !r.record_offence(Address::repeat_byte(1), 4),
            "still inside the window"
        );
        advance(&mut r);
        assert!(
            r.state.offences.is_empty(),
            "pruned once older than the withdrawal delay"
        );
    }

    #[test]
    fn the_sets_of_the_last_evidence_epochs_are_kept() {
        let mut r = rotation(&[1, 2]);
        assert_eq!(r.validators_of_epoch(0).map(owners), Some(vec![1, 2]));
        assert_eq!(r.request_validator_addition(validator(3, 32)), Ok(2));
        for _ in 0..EVIDENCE_EPOCHS + 3 {
            advance(&mut r);
        }
        let current = r.current_epoch();
        assert_eq!(current, EVIDENCE_EPOCHS + 3);
        assert_eq!(r.validators_of_epoch(current + 2), None);
        assert_eq!(
            r.validators_of_epoch(current + 1),
            Some(r.next_validators())
        );
        assert_eq!(r.validators_of_epoch(current), Some(r.current_validators()));
        for epoch in current - EVIDENCE_EPOCHS..current {
            let expected = if epoch < 2 { vec![1, 2] } else { vec![1, 2, 3] };
            assert_eq!(
                r.validators_of_epoch(epoch).map(owners),
                Some(expected),
                "epoch {epoch}"
            );
        }
        assert_eq!(r.validators_of_epoch(current - EVIDENCE_EPOCHS - 1), None);
        assert_eq!(r.state.past.len() as u64, EVIDENCE_EPOCHS, "bounded");
    }

    #[test]
    fn evidence_older_than_the_withdrawal_delay_is_refused() {
        let mut r = rotation(&[1]);
        for _ in 0..10 {
            advance(&mut r);
        }
        assert_eq!(r.check_evidence_age(6), Ok(()));
        assert_eq!(
            r.check_evidence_age(5),
            Err(RotationError::EvidenceTooOld {
                evidence_epoch: 5,
                oldest: 6
            })
        );
    }

    #[test]
    fn exited_validator_can_stake_again() {
        let mut r = rotation(&[1, 2]);
        r.request_validator_exit(Address::repeat_byte(2)).unwrap();
        assert_eq!(
            r.request_validator_addition(validator(2, 32)),
            Err(RotationError::ValidatorAlreadyExists(Address::repeat_byte(
                2
            )))
        );
        advance(&mut r);
        advance(&mut r);
        assert_eq!(r.request_validator_addition(validator(2, 32)), Ok(4));
    }

    #[test]
    fn stake_below_minimum_and_reused_keys_are_refused() {
        let mut r = rotation(&[1]);
        assert!(matches!(
            r.request_validator_addition(validator(2, 31)),
            Err(RotationError::BelowMinimumStake { .. })
        ));
        let mut copycat = validator(3, 32);
        copycat.public_key = validator(1, 32).public_key;
        assert!(matches!(
            r.request_validator_addition(copycat),
            Err(RotationError::KeyInUse(_))
        ));
        assert_eq!(
            r.request_validator_exit(Address::repeat_byte(7)),
            Err(RotationError::UnknownValidator(Address::repeat_byte(7)))
        );
    }

    #[test]
    fn churn_limit_spreads_activations_and_exits() {
        let mut r = rotation(&[1, 2, 3, 4]);
        r.config.churn_limit = 1;
        r.request_validator_addition(validator(5, 32)).unwrap();
        r.request_validator_addition(validator(6, 32)).unwrap();
        r.request_validator_exit(Address::repeat_byte(1)).unwrap();
        r.request_validator_exit(Address::repeat_byte(2)).unwrap();
        advance(&mut r);
        assert_eq!(owners(r.next_validators()), [2, 3, 4, 5]);
        advance(&mut r);
        assert_eq!(owners(r.next_validators()), [3, 4, 5, 6]);
    }

    #[test]
    fn activation_and_exit_in_the_same_epoch() {
        let mut r = rotation(&[1, 2]);
        r.request_validator_addition(validator(3, 32)).unwrap();
        r.request_validator_exit(Address::repeat_byte(1)).unwrap();
        advance(&mut r);
        let t = advance(&mut r);
        assert_eq!(t.activated_validators, vec![Address::repeat_byte(3)]);
        assert_eq!(t.exited_validators, vec![Address::repeat_byte(1)]);
        assert_eq!(owners(r.current_validators()), [2, 3]);
    }

    #[test]
    fn the_whole_set_can_be_replaced() {
        let mut r = rotation(&[1, 2, 3]);
        for i in 4..=6 {
            r.request_validator_addition(validator(i, 32)).unwrap();
        }
        // Exits that would empty the set are refused until the newcomers are
        // certain, i.e. in the fixed next set.
        r.request_validator_exit(Address::repeat_byte(1)).unwrap();
        r.request_validator_exit(Address::repeat_byte(2)).unwrap();
        assert_eq!(
            r.request_validator_exit(Address::repeat_byte(3)),
            Err(RotationError::NoValidatorsAvailable)
        );
        advance(&mut r);
        r.request_validator_exit(Address::repeat_byte(3)).unwrap();
        advance(&mut r);
        assert_eq!(owners(r.current_validators()), [3, 4, 5, 6]);
        advance(&mut r);
        advance(&mut r);
        assert_eq!(
            owners(r.current_validators()),
            [4, 5, 6],
            "no genesis member is left"
        );
    }

    #[test]
    fn state_round_trips_through_its_encoding() {
        let mut r = rotation(&[1, 2]);
        r.request_validator_addition(validator(3, 40)).unwrap();
        r.request_validator_exit(Address::repeat_byte(1)).unwrap();
        r.slash_validator(&Address::repeat_byte(2), tokens(1))
            .unwrap();
        let restored = ValidatorRotation::decode_state(config(), 4, &r.encode_state()).unwrap();
        assert_eq!(restored, r);
        assert_eq!(restored.state_hash(), r.state_hash());
        assert!(ValidatorRotation::decode_state(config(), 4, &[0xc0]).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Stake(u8, u64),
        Exit(u8),
        Slash(u8, u64),
        Advance,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..12, 30u64..60).prop_map(|(i, s)| Op::Stake(i, s)),
            (1u8..12).prop_map(Op::Exit),
            (1u8..12, 0u64..40).prop_map(|(i, s)| Op::Slash(i, s)),
            Just(Op::Advance),
            Just(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever the requests: the set is never empty, never over the cap,
        /// has no duplicate owner, and no stake is created or lost
        /// (deposits = stake in sets and queues + paid out + slashed).
        #[test]
        fn invariants_hold_under_random_requests(ops in proptest::collection::vec(op(), 1..80), cap in 1u32..6, churn in 0u32..3) {
            let mut r = rotation(&[1, 2]);
            r.config.max_validators = cap.max(2);
            r.config.churn_limit = churn;
            let mut deposited = tokens(64);
            let mut paid = U256::ZERO;
            let mut slashed = U256::ZERO;
            for op in ops {
                match op {
                    Op::Stake(i, s) => {
                        if r.request_validator_addition(validator(i, s)).is_ok() {
                            deposited += tokens(s);
                        }
                    }
                    Op::Exit(i) => { let _ = r.request_validator_exit(Address::repeat_byte(i)); }
                    Op::Slash(i, s) => {
                        if let Ok(taken) = r.slash_validator(&Address::repeat_byte(i), tokens(s)) {
                            slashed += taken;
                        }
                    }
                    Op::Advance => {
                        for (_, amount) in advance(&mut r).withdrawals {
                            paid += amount;
                        }
                    }
                }
                for set in [r.current_validators(), r.next_validators()] {
                    prop_assert!(!set.is_empty());
                    prop_assert!(set.len() <= r.config.max_validators as usize);
                    let mut seen: Vec<_> = set.iter().map(|v| v.owner).collect();
                    seen.sort();
                    seen.dedup();
                    prop_assert_eq!(seen.len(), set.len());
                }
                let s = &r.state;
                let in_next: U256 = s.next.iter().map(|v| v.stake).sum();
                let pending: U256 = s.pending.iter().map(|p| p.validator.stake).sum();
                let withdrawing: U256 = s.withdrawals.iter().map(|w| w.amount).sum();
                let slashed_in_set: U256 = s.slashed.iter().map(|x| x.amount).sum();
                prop_assert_eq!(in_next + pending + withdrawing + paid + slashed - slashed_in_set, deposited);
            }
        }
    }
}
