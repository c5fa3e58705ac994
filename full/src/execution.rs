//! What a block does to the state: value transfers, staking calls, fees,
//! slashing evidence and epoch transitions. Pure and deterministic: every
//! node computes the same receipts and the same state root.
//!
//! Rules for a transaction (each rejection names the rule, with geth's wording
//! where geth has one):
//! - signed for this chain, nonce equal to the sender's, gas limit at least the
//!   intrinsic gas (21,000 plus 16 per non-zero and 4 per zero calldata byte,
//!   plus [`STAKING_CALL_GAS`] for staking calls) and within the block's;
//! - fee cap at least the block's base fee, tip at most the fee cap;
//! - balance at least `gas_limit × fee cap + value`;
//! - a plain transfer (no calldata) to any address, or a call to the staking
//!   contract; contract creation and calls with data elsewhere are refused
//!   until an EVM exists.
//!
//! The sender pays `gas_used × (base fee + tip)`; the base fee is burned and
//! the tip goes to the proposer's owner. A staking call that fails reverts:
//! gas is paid, nothing else changes, the receipt has status 0.

use crate::rotation::{EpochTransitionResult, RotationError};
use crate::staking::{IStaking, STAKING_ADDRESS, STAKING_CALL_GAS};
use crate::state::ChainState;
use alloy_consensus::{Eip658Value, Receipt as PlainReceipt, ReceiptEnvelope, Transaction, TxType};
use alloy_eips::eip1559::{BaseFeeParams, calc_next_block_base_fee};
use alloy_primitives::{Address, B256, Bloom, Log, U256};
use alloy_sol_types::{SolEvent, SolInterface};
use luxtensor_light::qc::VerifiedCache;
use luxtensor_light::receipt::{logs_bloom, receipts_root};
use luxtensor_light::{
    Block, ChainSpec, Evidence, Header, Receipt, SignedTransaction, Validator, ValidatorSet, bls,
};
use std::sync::Mutex;

/// Gas of a plain transfer.
pub const TRANSFER_GAS: u64 = 21_000;
/// A slashed validator loses its stake divided by this.
pub const SLASH_DIVISOR: u64 = 2;
/// Most pieces of evidence one block may carry (each costs two pairings).
pub const MAX_EVIDENCE_PER_BLOCK: usize = 16;

/// The block-level facts a transaction executes against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEnv {
    /// Chain id transactions must be signed for.
    pub chain_id: u64,
    /// The block's epoch.
    pub epoch: u64,
    /// Receives the tips: the proposer's owner.
    pub coinbase: Address,
    /// The block's base fee per gas.
    pub base_fee: u64,
    /// The block's gas limit.
    pub gas_limit: u64,
}

/// Why a transaction cannot be included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxRejection {
    /// Signed for another chain (or without a chain id).
    #[error("invalid chain id: {0}")]
    ChainId(luxtensor_light::TxError),
    /// The nonce was already used.
    #[error("nonce too low: next nonce {expected}, tx nonce {got}")]
    NonceTooLow {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's nonce.
        got: u64,
    },
    /// The nonce leaves a gap.
    #[error("nonce too high: next nonce {expected}, tx nonce {got}")]
    NonceTooHigh {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's nonce.
        got: u64,
    },
    /// The fee cap is below the block's base fee.
    #[error(
        "max fee per gas less than block base fee: maxFeePerGas: {fee_cap}, baseFee: {base_fee}"
    )]
    FeeCapTooLow {
        /// The transaction's fee cap.
        fee_cap: u128,
        /// The block's base fee.
        base_fee: u64,
    },
    /// The tip is above the fee cap.
    #[error("max priority fee per gas higher than max fee per gas")]
    TipAboveFeeCap,
    /// The gas limit does not cover the intrinsic gas.
    #[error("intrinsic gas too low: gas {limit}, minimum needed {needed}")]
    IntrinsicGasTooLow {
        /// The transaction's gas limit.
        limit: u64,
        /// Gas the transaction needs.
        needed: u64,
    },
    /// The transaction does not fit in what is left of the block.
    #[error("gas limit reached: {needed} gas needed, {left} left in the block")]
    BlockGasExceeded {
        /// Gas the transaction's limit claims.
        needed: u64,
        /// Gas left in the block.
        left: u64,
    },
    /// The sender cannot pay the worst case.
    #[error("insufficient funds for gas * price + value: have {have} want {want}")]
    InsufficientFunds {
        /// Balance.
        have: U256,
        /// Gas limit × fee cap + value.
        want: U256,
    },
    /// No EVM: contracts cannot be created.
    #[error("contract creation is not supported: this chain has no EVM yet")]
    ContractCreation,
    /// No EVM: calldata only means something to the staking contract.
    #[error(
        "calls with data to {to} are not supported: only plain transfers and the staking contract at {STAKING_ADDRESS}"
    )]
    UnsupportedCall {
        /// The called address.
        to: Address,
    },
}

/// Why a block is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// One transaction breaks a rule.
    #[error("transaction {index} ({hash}): {reason}")]
    Transaction {
        /// Position in the block.
        index: usize,
        /// Its hash.
        hash: B256,
        /// The broken rule.
        reason: TxRejection,
    },
    /// The base fee does not follow from the parent.
    #[error("base fee {got} should be {expected}")]
    BaseFee {
        /// Base fee derived from the parent.
        expected: u64,
        /// Base fee in the header.
        got: u64,
    },
    /// The gas limit is not the chain's.
    #[error("gas limit {got} should be {expected}")]
    GasLimit {
        /// The chain's gas limit.
        expected: u64,
        /// The header's.
        got: u64,
    },
    /// Blocks after an epoch's ending block only finalize it.
    #[error("block after the ending block of epoch {epoch} carries transactions or evidence")]
    BusyAfterEpochEnd {
        /// The epoch.
        epoch: u64,
    },
    /// More evidence than a block may carry.
    #[error("{count} pieces of evidence, at most {MAX_EVIDENCE_PER_BLOCK} per block")]
    TooMuchEvidence {
        /// Evidence in the block.
        count: usize,
    },
    /// Evidence does not prove an offence, or is stale.
    #[error("evidence {index}: {reason}")]
    Evidence {
        /// Position in the block.
        index: usize,
        /// What is wrong.
        reason: EvidenceRejection,
    },
    /// The caller gave a sender list of the wrong length.
    #[error("{senders} senders for {transactions} transactions")]
    SenderCount {
        /// Senders given.
        senders: usize,
        /// Transactions in the block.
        transactions: usize,
    },
    /// The proposer index is not in the set.
    #[error("proposer index {0} is outside the validator set")]
    UnknownProposer(u32),
    /// The header's epoch is not the one the rotation is in (or just left,
    /// for the empty blocks that finalize an epoch's ending block).
    #[error("header epoch {header} does not match the rotation's epoch {rotation}")]
    WrongEpoch {
        /// Epoch in the header.
        header: u64,
        /// The rotation's current epoch.
        rotation: u64,
    },
    /// A new epoch may start only once the previous epoch's ending block is
    /// final: its parent must be a certified block after the ending block,
    /// in the slot right after the block it certifies.
    #[error("epoch {epoch} starts before the ending block of epoch {previous} is final", previous = epoch - 1)]
    EpochStartsEarly {
        /// The epoch the header starts.
        epoch: u64,
    },
    /// A header commitment does not match the execution result.
    #[error("{field} mismatch: header has {header}, execution gives {computed}")]
    Commitment {
        /// Which header field.
        field: &'static str,
        /// What the header says.
        header: String,
        /// What execution computed.
        computed: String,
    },
}

/// What executing a block's body produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockOutput {
    /// One receipt per transaction.
    pub receipts: Vec<Receipt>,
    /// Gas used by all transactions.
    pub gas_used: u64,
    /// Union of the receipts' blooms.
    pub logs_bloom: Bloom,
    /// Root of the receipts.
    pub receipts_root: B256,
    /// The state root after the block.
    pub state_root: B256,
    /// Logs of the staking contract not caused by a transaction (activations,
    /// exits, withdrawals, slashing), in order.
    pub system_logs: Vec<Log>,
    /// The epoch transition this block performed, if it ended its epoch.
    pub epoch_transition: Option<EpochTransitionResult>,
}

/// The base fee of a child of `parent` (EIP-1559 with Ethereum's parameters).
pub fn next_base_fee(parent: &Header) -> u64 {
    calc_next_block_base_fee(
        parent.gas_used,
        parent.gas_limit,
        parent.base_fee_per_gas,
        BaseFeeParams::ethereum(),
    )
}

/// The last nominal slot of `epoch`.
pub fn last_slot_of_epoch(spec: &ChainSpec, epoch: u64) -> u64 {
    epoch
        .saturating_add(1)
        .saturating_mul(spec.rotation.epoch_length)
        .saturating_sub(1)
}

/// Where a block sits in its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochPosition {
    /// A normal block.
    Inside,
    /// The first block at or past the epoch's last nominal slot: it runs the transition.
    Ending,
    /// After the ending block, in the same epoch: empty, only there to finalize it.
    AfterEnd,
}

/// Classifies `header` (a child of `parent`) within its epoch.
pub fn epoch_position(spec: &ChainSpec, parent: &Header, header: &Header) -> EpochPosition {
    let last = last_slot_of_epoch(spec, header.epoch);
    let parent_in_epoch = parent.epoch == header.epoch && !parent.is_genesis();
    if parent_in_epoch && parent.slot >= last {
        EpochPosition::AfterEnd
    } else if header.slot >= last {
        EpochPosition::Ending
    } else {
        EpochPosition::Inside
    }
}

fn intrinsic_gas(input: &[u8]) -> u64 {
    let nonzero = input.iter().filter(|b| **b != 0).count() as u64;
    TRANSFER_GAS + nonzero * 16 + (input.len() as u64 - nonzero) * 4
}

/// Checks a transaction against the state without changing anything.
/// Returns the gas it will use.
pub fn validate_transaction(
    state: &ChainState,
    tx: &SignedTransaction,
    sender: &Address,
    env: &BlockEnv,
    gas_left: u64,
) -> Result<u64, TxRejection> {
    tx.check_chain_id(env.chain_id)
        .map_err(TxRejection::ChainId)?;
    let account = state.account(sender);
    match tx.nonce().cmp(&account.nonce) {
        std::cmp::Ordering::Less => {
            return Err(TxRejection::NonceTooLow {
                expected: account.nonce,
                got: tx.nonce(),
            });
        }
        std::cmp::Ordering::Greater => {
            return Err(TxRejection::NonceTooHigh {
                expected: account.nonce,
                got: tx.nonce(),
            });
        }
        std::cmp::Ordering::Equal => {}
    }
    let to = tx.to().ok_or(TxRejection::ContractCreation)?;
    let mut gas = intrinsic_gas(tx.input());
    if to == STAKING_ADDRESS {
        gas += STAKING_CALL_GAS;
    } else if !tx.input().is_empty() {
        return Err(TxRejection::UnsupportedCall { to });
    }
    if tx.gas_limit() < gas {
        return Err(TxRejection::IntrinsicGasTooLow {
            limit: tx.gas_limit(),
            needed: gas,
        });
    }
    if tx.gas_limit() > gas_left {
        return Err(TxRejection::BlockGasExceeded {
            needed: tx.gas_limit(),
            left: gas_left,
        });
    }
    let envelope = tx.envelope();
    let fee_cap = envelope.max_fee_per_gas();
    if fee_cap < u128::from(env.base_fee) {
        return Err(TxRejection::FeeCapTooLow {
            fee_cap,
            base_fee: env.base_fee,
        });
    }
    if envelope
        .max_priority_fee_per_gas()
        .is_some_and(|tip| tip > fee_cap)
    {
        return Err(TxRejection::TipAboveFeeCap);
    }
    let want = U256::from(tx.gas_limit())
        .saturating_mul(U256::from(fee_cap))
        .saturating_add(tx.value());
    if account.balance < want {
        return Err(TxRejection::InsufficientFunds {
            have: account.balance,
            want,
        });
    }
    Ok(gas)
}

/// Executes one valid transaction; `cumulative_gas` is the gas used before it in the block.
pub fn execute_transaction(
    state: &mut ChainState,
    tx: &SignedTransaction,
    sender: Address,
    env: &BlockEnv,
    cumulative_gas: u64,
) -> Result<Receipt, TxRejection> {
    let gas = validate_transaction(state, tx, &sender, env, env.gas_limit - cumulative_gas)?;
    let envelope = tx.envelope();
    let price = envelope.effective_gas_price(Some(env.base_fee));
    let tip = price - u128::from(env.base_fee);

    let mut account = state.account(&sender);
    account.nonce += 1;
    account.balance -= U256::from(gas) * U256::from(price);
    state.set_account(sender, account);
    state.credit(env.coinbase, U256::from(gas) * U256::from(tip));

    let to = tx.to().expect("validated: not a creation");
    let (success, logs) = if to == STAKING_ADDRESS {
        match staking_call(state, sender, tx, env) {
            Ok(logs) => (true, logs),
            Err(_revert_reason) => (false, Vec::new()),
        }
    } else {
        assert!(
            state.debit(sender, tx.value()),
            "validated: balance covers the value"
        );
        state.credit(to, tx.value());
        (true, Vec::new())
    };
    let receipt = PlainReceipt {
        status: Eip658Value::Eip658(success),
        cumulative_gas_used: cumulative_gas + gas,
        logs,
    }
    .with_bloom();
    Ok(match tx.envelope().tx_type() {
        TxType::Eip1559 => ReceiptEnvelope::Eip1559(receipt),
        _ => ReceiptEnvelope::Legacy(receipt),
    })
}

/// Runs a staking call; on `Err` the call reverts (the caller has charged gas only).
fn staking_call(
    state: &mut ChainState,
    sender: Address,
    tx: &SignedTransaction,
    env: &BlockEnv,
) -> Result<Vec<Log>, String> {
    let call = IStaking::IStakingCalls::abi_decode(tx.input())
        .map_err(|e| format!("unknown or malformed staking call: {e}"))?;
    match call {
        IStaking::IStakingCalls::stake(call) => {
            let public_key = luxtensor_light::BlsPublicKey::try_from(call.blsPubkey.as_ref())
                .map_err(|_| "blsPubkey must be 48 bytes".to_string())?;
            let proof = luxtensor_light::BlsSignature::try_from(call.proofOfPossession.as_ref())
                .map_err(|_| "proofOfPossession must be 96 bytes".to_string())?;
            bls::verify_proof_of_possession(env.chain_id, &public_key, &proof)
                .map_err(|e| format!("proof of possession: {e}"))?;
            let validator = Validator {
                owner: sender,
                public_key,
                stake: tx.value(),
            };
            let activation_epoch = state
                .rotation_mut()
                .request_validator_addition(validator)
                .map_err(|e| e.to_string())?;
            assert!(
                state.debit(sender, tx.value()),
                "validated: balance covers the value"
            );
            state.credit(STAKING_ADDRESS, tx.value());
            Ok(vec![staking_log(IStaking::StakeRequested {
                owner: sender,
                blsPubkey: call.blsPubkey,
                amount: tx.value(),
                activationEpoch: activation_epoch,
            })])
        }
        IStaking::IStakingCalls::requestExit(_) => {
            if !tx.value().is_zero() {
                return Err("requestExit is not payable".into());
            }
            let exit_epoch = state
                .rotation_mut()
                .request_validator_exit(sender)
                .map_err(|e: RotationError| e.to_string())?;
            Ok(vec![staking_log(IStaking::ExitRequested {
                owner: sender,
                exitEpoch: exit_epoch,
            })])
        }
    }
}

fn staking_log(event: impl SolEvent) -> Log {
    Log {
        address: STAKING_ADDRESS,
        data: event.encode_log_data(),
    }
}

/// The members of `epoch`'s set as the state knows them: the current
/// epoch's or one of the last [`crate::rotation::EVIDENCE_EPOCHS`] before it.
/// Evidence validity and the proposer's owner depend on the
/// state alone, so every node (proposer or importer, restarted or not)
/// judges them alike.
fn members_of_epoch(state: &ChainState, epoch: u64) -> Option<&[Validator]> {
    let rotation = state.rotation();
    // The next epoch's set is fixed, but no evidence about it can be signed yet.
    if epoch > rotation.current_epoch() {
        return None;
    }
    rotation.validators_of_epoch(epoch)
}

/// The owner of member `index` of `epoch`'s set, from the state.
fn member_owner(state: &ChainState, epoch: u64, index: u32) -> Option<Address> {
    members_of_epoch(state, epoch)?
        .get(index as usize)
        .map(|v| v.owner)
}

/// The nominal epoch of `slot` under the rotation's epoch length.
fn spec_epoch_of(state: &ChainState, slot: u64) -> u64 {
    slot / state.rotation().config().epoch_length.max(1)
}

/// Why evidence cannot slash on a given state: the evidence is bad (see
/// [`EvidenceRejection::is_fault`]), or merely untimely on this state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceRejection {
    /// The state's rotation refuses evidence this old.
    #[error("evidence about epoch {epoch}: {source}")]
    TooOld {
        /// The epoch the evidence names.
        epoch: u64,
        /// The rotation's rule.
        source: RotationError,
    },
    /// The state keeps the sets of its current epoch and of the last
    /// [`crate::rotation::EVIDENCE_EPOCHS`] before it only.
    #[error(
        "evidence about epoch {epoch}: only the current epoch and the {} before it can be proven",
        crate::rotation::EVIDENCE_EPOCHS
    )]
    UnknownEpoch {
        /// The epoch the evidence names.
        epoch: u64,
    },
    /// The evidence names a member its epoch's set does not have.
    #[error("evidence names member {index}, outside the set of epoch {epoch}")]
    OutsideSet {
        /// The member index named.
        index: u32,
        /// The epoch the evidence names.
        epoch: u64,
    },
    /// The epoch is not signed: it may not be after its slot's nominal epoch.
    #[error("evidence claims epoch {epoch}, after its slot's epoch {nominal}")]
    EpochAfterSlot {
        /// The epoch the evidence names.
        epoch: u64,
        /// The nominal epoch of its slot.
        nominal: u64,
    },
    /// This offence was punished on this chain already.
    #[error("offence of {offender} at slot {slot} was already punished")]
    AlreadyPunished {
        /// The offender's owner address.
        offender: Address,
        /// The slot of the offence.
        slot: u64,
    },
    /// The offender has no stake left.
    #[error("{offender} has no stake left to slash")]
    NothingToSlash {
        /// The offender's owner address.
        offender: Address,
    },
    /// The state's members of the epoch do not form a valid set.
    #[error("the members of epoch {epoch} are not a valid set: {source}")]
    NoSet {
        /// The epoch the evidence names.
        epoch: u64,
        /// Why.
        source: luxtensor_light::validator::SetError,
    },
    /// The signed messages do not prove an offence.
    #[error("evidence does not prove an offence: {0}")]
    Invalid(#[from] luxtensor_light::evidence::EvidenceError),
}

impl EvidenceRejection {
    /// Whether the evidence itself is bad, on any honest node's state (a
    /// forged or inconsistent proof), as opposed to merely stale, already
    /// punished or about an epoch this state does not know: a peer that
    /// gossips faulty evidence misbehaves; an honest peer may gossip
    /// untimely evidence.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            Self::OutsideSet { .. } | Self::EpochAfterSlot { .. } | Self::Invalid(_)
        )
    }
}

/// What evidence would do to a state once checked: the rotation after the
/// offence is recorded and the offender slashed, and how much was taken.
#[derive(Debug)]
struct Punishment {
    offender: Validator,
    rotation: crate::rotation::ValidatorRotation,
    taken: U256,
}

/// Checks that `evidence` would slash on `state` (valid, fresh, about a
/// member of the set of the current epoch or one of the last
/// [`crate::rotation::EVIDENCE_EPOCHS`], not yet punished, with
/// stake left), without changing the state, and returns the offender as a
/// member of its epoch's set. The same rules [`execute_block`] applies to evidence in a block:
/// the consensus engine checks gossiped evidence with it before keeping it.
/// With `cache`, signatures that passed a check before are not paired again.
pub fn check_evidence(
    state: &ChainState,
    evidence: &Evidence,
    chain_id: u64,
    cache: Option<&Mutex<VerifiedCache>>,
) -> Result<Validator, EvidenceRejection> {
    judge_evidence(state, evidence, chain_id, cache).map(|p| p.offender)
}

fn judge_evidence(
    state: &ChainState,
    evidence: &Evidence,
    chain_id: u64,
    cache: Option<&Mutex<VerifiedCache>>,
) -> Result<Punishment, EvidenceRejection> {
    let epoch = evidence.epoch();
    state
        .rotation()
        .check_evidence_age(epoch)
        .map_err(|source| EvidenceRejection::TooOld { epoch, source })?;
    let members =
        members_of_epoch(state, epoch).ok_or(EvidenceRejection::UnknownEpoch { epoch })?;
    // The cheap rules first: refusing evidence of an offence already
    // punished, or of a validator with nothing left, costs no pairing.
    let (index, slot) = match evidence {
        Evidence::DoubleVote(e) => (e.first.validator_index, e.first.slot),
        Evidence::DoubleProposal(e) => (e.first.proposer_index, e.first.slot),
    };
    let member = members
        .get(index as usize)
        .cloned()
        .ok_or(EvidenceRejection::OutsideSet { index, epoch })?;
    let (offender, stake) = (member.owner, member.stake);
    let nominal = spec_epoch_of(state, slot);
    if epoch > nominal {
        return Err(EvidenceRejection::EpochAfterSlot { epoch, nominal });
    }
    // Work on a copy so that refused evidence changes nothing.
    let mut rotation = state.rotation().clone();
    if !rotation.record_offence(offender, slot) {
        return Err(EvidenceRejection::AlreadyPunished { offender, slot });
    }
    let penalty = stake / U256::from(SLASH_DIVISOR);
    let taken = rotation
        .slash_validator(&offender, penalty)
        .unwrap_or_default();
    if taken.is_zero() {
        return Err(EvidenceRejection::NothingToSlash { offender });
    }
    // Then the signatures (two pairings), which name the same member.
    let set = ValidatorSet::new(members.to_vec())
        .map_err(|source| EvidenceRejection::NoSet { epoch, source })?;
    let signer = match cache {
        Some(cache) => evidence.verify_cached(&set, chain_id, cache)?,
        None => evidence.verify(&set, chain_id)?,
    };
    debug_assert_eq!(
        signer, offender,
        "verify checks the member the evidence names"
    );
    Ok(Punishment {
        offender: member,
        rotation,
        taken,
    })
}

/// Slashes the offender named by valid, fresh, not yet punished evidence
/// (its signatures checked through `cache` when given).
fn apply_evidence(
    state: &mut ChainState,
    evidence: &Evidence,
    chain_id: u64,
    cache: Option<&Mutex<VerifiedCache>>,
) -> Result<Log, EvidenceRejection> {
    let Punishment {
        offender,
        rotation,
        taken,
    } = judge_evidence(state, evidence, chain_id, cache)?;
    *state.rotation_mut() = rotation;
    assert!(
        state.debit(STAKING_ADDRESS, taken),
        "the staking contract holds every stake"
    );
    let current = state.rotation().current_epoch();
    Ok(staking_log(IStaking::ValidatorSlashed {
        owner: offender.owner,
        amount: taken,
        epoch: current,
    }))
}

/// Runs the epoch transition of an ending block: pays withdrawals, logs changes.
fn end_epoch(state: &mut ChainState, ending: &Header) -> (EpochTransitionResult, Vec<Log>) {
    let rotation = state.rotation_mut();
    let transition = rotation
        .process_epoch_transition(ending.epoch + 1)
        .expect("the ending block of the rotation's current epoch moves it by one");
    rotation.record_ending_block_slot(ending.slot);
    let new_epoch = transition.epoch;
    let mut logs = Vec::new();
    for &owner in &transition.activated_validators {
        logs.push(staking_log(IStaking::ValidatorActivated {
            owner,
            epoch: new_epoch,
        }));
    }
    for &owner in &transition.exited_validators {
        logs.push(staking_log(IStaking::ValidatorExited {
            owner,
            epoch: new_epoch,
        }));
    }
    for &(owner, amount) in &transition.withdrawals {
        assert!(
            state.debit(STAKING_ADDRESS, amount),
            "the staking contract holds every stake"
        );
        state.credit(owner, amount);
        logs.push(staking_log(IStaking::StakeWithdrawn {
            owner,
            amount,
            epoch: new_epoch,
        }));
    }
    (transition, logs)
}

/// Executes `block` (a child of `parent`) on `state` and checks every header
/// commitment against the result. On success the state holds the block's
/// effects; on failure it is unchanged. `senders` are the recovered senders
/// of the transactions, in order. The validator sets it needs (the
/// proposer's, evidence's) come from the state's rotation.
pub fn execute_block(
    state: &mut ChainState,
    spec: &ChainSpec,
    parent: &Header,
    block: &Block,
    senders: &[Address],
) -> Result<BlockOutput, BlockError> {
    execute_block_cached(state, spec, parent, block, senders, None)
}

/// [`execute_block`], checking evidence signatures through `cache` (see
/// [`VerifiedCache`]): evidence whose votes or seals passed a check before
/// is not paired again. The rules are the same.
pub fn execute_block_cached(
    state: &mut ChainState,
    spec: &ChainSpec,
    parent: &Header,
    block: &Block,
    senders: &[Address],
    cache: Option<&Mutex<VerifiedCache>>,
) -> Result<BlockOutput, BlockError> {
    state.begin_block();
    let result = execute_block_inner(state, spec, parent, block, senders, cache);
    match result {
        Ok(output) => {
            state.commit_block();
            Ok(output)
        }
        Err(e) => {
            state.revert_block();
            Err(e)
        }
    }
}

fn execute_block_inner(
    state: &mut ChainState,
    spec: &ChainSpec,
    parent: &Header,
    block: &Block,
    senders: &[Address],
    cache: Option<&Mutex<VerifiedCache>>,
) -> Result<BlockOutput, BlockError> {
    let header = &block.header.header;
    if senders.len() != block.transactions.len() {
        return Err(BlockError::SenderCount {
            senders: senders.len(),
            transactions: block.transactions.len(),
        });
    }
    let expected = next_base_fee(parent);
    if header.base_fee_per_gas != expected {
        return Err(BlockError::BaseFee {
            expected,
            got: header.base_fee_per_gas,
        });
    }
    if header.gas_limit != spec.gas_limit {
        return Err(BlockError::GasLimit {
            expected: spec.gas_limit,
            got: header.gas_limit,
        });
    }
    let position = epoch_position(spec, parent, header);
    if position == EpochPosition::AfterEnd
        && (!block.transactions.is_empty() || !block.evidence.is_empty())
    {
        return Err(BlockError::BusyAfterEpochEnd {
            epoch: header.epoch,
        });
    }
    check_epoch_and_sets(state, spec, parent, header)?;
    let coinbase = member_owner(state, header.epoch, header.proposer_index)
        .ok_or(BlockError::UnknownProposer(header.proposer_index))?;
    let env = BlockEnv {
        chain_id: spec.chain_id,
        epoch: header.epoch,
        coinbase,
        base_fee: header.base_fee_per_gas,
        gas_limit: header.gas_limit,
    };

    let mut output = BlockOutput::default();
    for (index, (tx, sender)) in block.transactions.iter().zip(senders).enumerate() {
        let receipt =
            execute_transaction(state, tx, *sender, &env, output.gas_used).map_err(|reason| {
                BlockError::Transaction {
                    index,
                    hash: tx.hash(),
                    reason,
                }
            })?;
        output.gas_used = receipt.cumulative_gas_used();
        output.receipts.push(receipt);
    }
    if block.evidence.len() > MAX_EVIDENCE_PER_BLOCK {
        return Err(BlockError::TooMuchEvidence {
            count: block.evidence.len(),
        });
    }
    for (index, evidence) in block.evidence.iter().enumerate() {
        let log = apply_evidence(state, evidence, spec.chain_id, cache)
            .map_err(|reason| BlockError::Evidence { index, reason })?;
        output.system_logs.push(log);
    }
    if position == EpochPosition::Ending {
        let (transition, logs) = end_epoch(state, header);
        output.system_logs.extend(logs);
        output.epoch_transition = Some(transition);
    }
    output.logs_bloom = logs_bloom(&output.receipts);
    output.receipts_root = receipts_root(&output.receipts);
    output.state_root = state.state_root();

    let checks: [(&'static str, String, String); 4] = [
        (
            "gas used",
            header.gas_used.to_string(),
            output.gas_used.to_string(),
        ),
        (
            "state root",
            header.state_root.to_string(),
            output.state_root.to_string(),
        ),
        (
            "receipts root",
            header.receipts_root.to_string(),
            output.receipts_root.to_string(),
        ),
        (
            "logs bloom",
            header.logs_bloom.to_string(),
            output.logs_bloom.to_string(),
        ),
    ];
    for (field, header, computed) in checks {
        if header != computed {
            return Err(BlockError::Commitment {
                field,
                header,
                computed,
            });
        }
    }
    Ok(output)
}

/// Checks the header's epoch and set commitments against the rotation: every
/// node derives the sets from the same staking transactions, so a proposer
/// cannot announce a next set of its own making.
fn check_epoch_and_sets(
    state: &ChainState,
    spec: &ChainSpec,
    parent: &Header,
    header: &Header,
) -> Result<(), BlockError> {
    let rotation = state.rotation();
    let current = rotation.current_epoch();
    let (set_hash, next_hash) = if header.epoch == current {
        (rotation.current_set_hash(), rotation.next_set_hash())
    } else if header.epoch + 1 == current
        && epoch_position(spec, parent, header) == EpochPosition::AfterEnd
    {
        // The empty blocks after an ending block still belong to the old epoch.
        (parent.validator_set_hash, rotation.current_set_hash())
    } else {
        return Err(BlockError::WrongEpoch {
            header: header.epoch,
            rotation: current,
        });
    };
    for (field, header_hash, expected) in [
        ("validator set hash", header.validator_set_hash, set_hash),
        (
            "next validator set hash",
            header.next_validator_set_hash,
            next_hash,
        ),
    ] {
        if header_hash != expected {
            return Err(BlockError::Commitment {
                field,
                header: header_hash.to_string(),
                computed: expected.to_string(),
            });
        }
    }
    if header.epoch == parent.epoch + 1 && !parent.is_genesis() {
        // The QC in the parent certifies the grandparent: it must be the
        // ending block of the parent's epoch or a block after it, and final.
        let certified = &parent.parent_qc;
        let after_ending = certified.slot >= rotation.ending_block_slot();
        let grandparent_final = parent.slot == certified.slot + 1;
        if !(after_ending && grandparent_final) {
            return Err(BlockError::EpochStartsEarly {
                epoch: header.epoch,
            });
        }
    }
    Ok(())
}

/// What a proposer offers for a new block.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    /// Transactions with their recovered senders, in the order to try them.
    pub transactions: Vec<(SignedTransaction, Address)>,
    /// Slashing evidence to include if it is still valid and unpunished.
    pub evidence: Vec<Evidence>,
}

/// A block built by [`build_block`], before its seal.
#[derive(Debug, Clone)]
pub struct BuiltBlock {
    /// The header with every execution field filled in.
    pub header: Header,
    /// The transactions that were valid, in order.
    pub transactions: Vec<SignedTransaction>,
    /// The evidence that was valid, in order.
    pub evidence: Vec<Evidence>,
    /// What executing it produced.
    pub output: BlockOutput,
}

impl BuiltBlock {
    /// Seals the header with the proposer's key into a full block.
    pub fn seal(self, key: &luxtensor_light::BlsSecretKey, chain_id: u64) -> Block {
        Block {
            header: self.header.sign(key, chain_id),
            transactions: self.transactions,
            evidence: self.evidence,
        }
    }
}

/// Builds the body and commitments of a new block on `parent` for the
/// proposer at `proposer_index` of `set`: includes candidate transactions in
/// order while they are valid and fit, then candidate evidence that is still
/// valid (in the same order [`execute_block`] applies them), skipping the
/// rest, and fills in the header's execution fields. The state is left with
/// the block applied.
pub fn build_block(
    state: &mut ChainState,
    spec: &ChainSpec,
    parent: &Header,
    mut header: Header,
    set: &ValidatorSet,
    candidates: Candidates,
) -> BuiltBlock {
    header.base_fee_per_gas = next_base_fee(parent);
    header.gas_limit = spec.gas_limit;
    let position = epoch_position(spec, parent, &header);
    let env = BlockEnv {
        chain_id: spec.chain_id,
        epoch: header.epoch,
        coinbase: set
            .get(header.proposer_index as usize)
            .map(|v| v.owner)
            .unwrap_or_default(),
        base_fee: header.base_fee_per_gas,
        gas_limit: header.gas_limit,
    };
    let mut output = BlockOutput::default();
    let mut transactions = Vec::new();
    let mut evidence = Vec::new();
    if position != EpochPosition::AfterEnd {
        for (tx, sender) in candidates.transactions {
            if let Ok(receipt) = execute_transaction(state, &tx, sender, &env, output.gas_used) {
                output.gas_used = receipt.cumulative_gas_used();
                output.receipts.push(receipt);
                transactions.push(tx);
            }
        }
        for item in candidates.evidence.into_iter().take(MAX_EVIDENCE_PER_BLOCK) {
            // Applying mutates only on success; a refused item leaves no trace.
            if let Ok(log) = apply_evidence(state, &item, spec.chain_id, None) {
                output.system_logs.push(log);
                evidence.push(item);
            }
        }
    }
    if position == EpochPosition::Ending {
        let (transition, logs) = end_epoch(state, &header);
        output.system_logs.extend(logs);
        output.epoch_transition = Some(transition);
    }
    output.logs_bloom = logs_bloom(&output.receipts);
    output.receipts_root = receipts_root(&output.receipts);
    output.state_root = state.state_root();
    header.gas_used = output.gas_used;
    header.logs_bloom = output.logs_bloom;
    header.receipts_root = output.receipts_root;
    header.state_root = output.state_root;
    header.transactions_root = luxtensor_light::block::transactions_root(&transactions);
    header.evidence_hash = luxtensor_light::block::evidence_hash(&evidence);
    BuiltBlock {
        header,
        transactions,
        evidence,
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::staking::{request_exit_calldata, stake_calldata};
    use crate::test_support::{call, dev_signer, legacy_transfer, transfer};
    use alloy_primitives::TxKind;
    use luxtensor_light::chain_spec::{DEV_ACCOUNTS, TOKEN, devnet_validator_key};
    use luxtensor_light::{QuorumCert, SignedHeader};

    struct Chain {
        spec: ChainSpec,
        state: ChainState,
        set: ValidatorSet,
        head: Header,
    }

    fn chain() -> Chain {
        let spec = ChainSpec::devnet(4);
        Chain {
            state: ChainState::genesis(&spec),
            set: spec.genesis_set().unwrap(),
            head: spec.genesis_header(),
            spec,
        }
    }

    impl Chain {
        fn env(&self) -> BlockEnv {
            BlockEnv {
                chain_id: self.spec.chain_id,
                epoch: 0,
                coinbase: DEV_ACCOUNTS[19],
                base_fee: 1_000_000_000,
                gas_limit: 30_000_000,
            }
        }

        fn template(&self, slot: u64) -> Header {
            Header {
                parent_hash: self.head.hash(),
                number: self.head.number + 1,
                slot,
                epoch: self
                    .spec
                    .nominal_epoch(slot)
                    .min(self.state.rotation().current_epoch()),
                timestamp: self.spec.slot_timestamp(slot),
                proposer_index: self.set.proposer_index(slot) as u32,
                base_fee_per_gas: next_base_fee(&self.head),
                validator_set_hash: self.state.rotation().current_set_hash(),
                next_validator_set_hash: self.state.rotation().next_set_hash(),
                parent_qc: QuorumCert::genesis(),
                ..self.head.clone()
            }
        }

        /// Builds the next block at `slot` on a copy of the state, then imports it for real.
        fn produce(&mut self, slot: u64, txs: Vec<SignedTransaction>) -> (Block, BlockOutput) {
            let mut scratch = self.state.clone();
            let transactions = txs
                .into_iter()
                .map(|tx| {
                    let sender = tx.recover_sender().unwrap();
                    (tx, sender)
                })
                .collect();
            let candidates = Candidates {
                transactions,
                ..Default::default()
            };
            let built = build_block(
                &mut scratch,
                &self.spec,
                &self.head,
                self.template(slot),
                &self.set,
                candidates,
            );
            let key = devnet_validator_key(built.header.proposer_index);
            let block = built.seal(&key, self.spec.chain_id);
            let output = self.import(&block).unwrap();
            (block, output)
        }

        fn import(&mut self, block: &Block) -> Result<BlockOutput, BlockError> {
            let senders: Vec<_> = block
                .transactions
                .iter()
                .map(|tx| tx.recover_sender().unwrap())
                .collect();
            let output = execute_block(&mut self.state, &self.spec, &self.head, block, &senders)?;
            self.head = block.header.header.clone();
            Ok(output)
        }
    }

    fn gwei(n: u64) -> U256 {
        U256::from(n) * U256::from(1_000_000_000u64)
    }

    #[test]
    fn transfer_moves_value_charges_gas_and_tips_the_coinbase() {
        let mut c = chain();
        let env = c.env();
        let alice = dev_signer(0);
        let before = c.state.account(&DEV_ACCOUNTS[0]).balance;
        let tx = transfer(
            &alice,
            c.spec.chain_id,
            0,
            Address::repeat_byte(7),
            U256::from(1000),
        );
        let receipt = execute_transaction(&mut c.state, &tx, DEV_ACCOUNTS[0], &env, 0).unwrap();
        assert!(receipt.status());
        assert_eq!(receipt.cumulative_gas_used(), 21_000);
        // Price = base fee 1 gwei + tip 1 gwei.
        let cost = U256::from(21_000) * gwei(2) + U256::from(1000);
        assert_eq!(c.state.account(&DEV_ACCOUNTS[0]).balance, before - cost);
        assert_eq!(c.state.account(&DEV_ACCOUNTS[0]).nonce, 1);
        assert_eq!(
            c.state.account(&Address::repeat_byte(7)).balance,
            U256::from(1000)
        );
        let coinbase_before = ChainState::genesis(&c.spec)
            .account(&DEV_ACCOUNTS[19])
            .balance;
        assert_eq!(
            c.state.account(&DEV_ACCOUNTS[19]).balance - coinbase_before,
            U256::from(21_000) * gwei(1),
            "the tip goes to the proposer, the base fee is burned"
        );
        // Legacy: tip = gas price - base fee.
        let legacy = legacy_transfer(
            &alice,
            c.spec.chain_id,
            1,
            Address::repeat_byte(7),
            U256::ZERO,
            3_000_000_000,
        );
        execute_transaction(&mut c.state, &legacy, DEV_ACCOUNTS[0], &env, 21_000).unwrap();
        assert_eq!(
            c.state.account(&DEV_ACCOUNTS[19]).balance - coinbase_before,
            U256::from(21_000) * gwei(3)
        );
    }

    #[test]
    fn invalid_transactions_are_rejected_with_the_rule() {
        let c = chain();
        let env = c.env();
        let alice = dev_signer(0);
        let id = c.spec.chain_id;
        let to = Address::repeat_byte(7);
        let check = |tx: SignedTransaction, sender: Address| {
            let result = validate_transaction(&c.state, &tx, &sender, &env, env.gas_limit);
            match result {
                Ok(gas) => panic!("accepted (gas {gas}): {tx:?}"),
                Err(rejection) => rejection,
            }
        };
        assert!(matches!(
            check(transfer(&alice, id + 1, 0, to, U256::ZERO), DEV_ACCOUNTS[0]),
            TxRejection::ChainId(_)
        ));
        assert_eq!(
            check(transfer(&alice, id, 3, to, U256::ZERO), DEV_ACCOUNTS[0]),
            TxRejection::NonceTooHigh {
                expected: 0,
                got: 3
            }
        );
        assert!(matches!(
            check(
                transfer(&alice, id, 0, to, TOKEN * U256::from(20_000)),
                DEV_ACCOUNTS[0]
            ),
            TxRejection::InsufficientFunds { .. }
        ));
        let poor = dev_signer(0);
        assert!(matches!(
            check(
                transfer(&poor, id, 0, to, U256::ZERO),
                Address::repeat_byte(1)
            ),
            TxRejection::InsufficientFunds { .. }
        ));
        assert_eq!(
            check(
                call(&alice, id, 0, TxKind::Create, U256::ZERO, vec![1].into()),
                DEV_ACCOUNTS[0]
            ),
            TxRejection::ContractCreation
        );
        assert_eq!(
            check(
                call(&alice, id, 0, TxKind::Call(to), U256::ZERO, vec![1].into()),
                DEV_ACCOUNTS[0]
            ),
            TxRejection::UnsupportedCall { to }
        );
        let cheap = legacy_transfer(&alice, id, 0, to, U256::ZERO, 100);
        assert!(matches!(
            check(cheap, DEV_ACCOUNTS[0]),
            TxRejection::FeeCapTooLow { .. }
        ));
        let mut tight = c.env();
        tight.gas_limit = 20_000;
        assert!(matches!(
            validate_transaction(
                &c.state,
                &transfer(&alice, id, 0, to, U256::ZERO),
                &DEV_ACCOUNTS[0],
                &tight,
                20_000
            ),
            Err(TxRejection::BlockGasExceeded { .. })
        ));
    }

    #[test]
    fn staking_calls_queue_validators_and_failed_calls_revert() {
        let mut c = chain();
        let env = c.env();
        let bob = dev_signer(5);
        let key = devnet_validator_key(50);
        let stake = TOKEN * U256::from(32);
        let good = stake_calldata(
            key.public_key().as_slice(),
            key.proof_of_possession(c.spec.chain_id).as_slice(),
        );
        let bad_pop = stake_calldata(
            key.public_key().as_slice(),
            key.proof_of_possession(1).as_slice(),
        );
        let id = c.spec.chain_id;

        let before = c.state.account(&DEV_ACCOUNTS[5]).balance;
        let tx = call(&bob, id, 0, TxKind::Call(STAKING_ADDRESS), stake, bad_pop);
        let receipt = execute_transaction(&mut c.state, &tx, DEV_ACCOUNTS[5], &env, 0).unwrap();
        assert!(
            !receipt.status(),
            "a proof of possession for another chain reverts"
        );
        let gas = receipt.cumulative_gas_used();
        assert_eq!(
            c.state.account(&DEV_ACCOUNTS[5]).balance,
            before - U256::from(gas) * gwei(2)
        );
        assert_eq!(c.state.rotation().get_stats().pending_activations, 0);

        let staking_before = c.state.account(&STAKING_ADDRESS).balance;
        let tx = call(&bob, id, 1, TxKind::Call(STAKING_ADDRESS), stake, good);
        let receipt = execute_transaction(&mut c.state, &tx, DEV_ACCOUNTS[5], &env, 0).unwrap();
        assert!(receipt.status());
        let log = IStaking::StakeRequested::decode_log_data(&receipt.logs()[0].data).unwrap();
        assert_eq!(
            (log.owner, log.amount, log.activationEpoch),
            (DEV_ACCOUNTS[5], stake, 2)
        );
        assert_eq!(
            c.state.account(&STAKING_ADDRESS).balance,
            staking_before + stake
        );
        assert_eq!(c.state.rotation().get_stats().pending_activations, 1);

        let tx = call(
            &bob,
            id,
            2,
            TxKind::Call(STAKING_ADDRESS),
            U256::ZERO,
            request_exit_calldata(),
        );
        let receipt = execute_transaction(&mut c.state, &tx, DEV_ACCOUNTS[5], &env, 0).unwrap();
        assert!(receipt.status());
        assert!(IStaking::ExitRequested::decode_log_data(&receipt.logs()[0].data).is_ok());
        assert_eq!(
            c.state.rotation().get_stats().pending_activations,
            0,
            "exit cancels the activation"
        );

        let junk = call(
            &bob,
            id,
            3,
            TxKind::Call(STAKING_ADDRESS),
            U256::ZERO,
            vec![1, 2, 3, 4].into(),
        );
        assert!(
            !execute_transaction(&mut c.state, &junk, DEV_ACCOUNTS[5], &env, 0)
                .unwrap()
                .status()
        );
    }

    #[test]
    fn built_blocks_import_and_tampered_blocks_leave_the_state_unchanged() {
        let mut c = chain();
        let alice = dev_signer(0);
        let id = c.spec.chain_id;
        let txs: Vec<_> = (0..5)
            .map(|n| transfer(&alice, id, n, Address::repeat_byte(9), U256::from(n)))
            .collect();
        let (block, output) = c.produce(1, txs);
        assert_eq!(block.transactions.len(), 5);
        assert_eq!(output.gas_used, 5 * 21_000);
        block.verify_body().unwrap();

        let (mut next, _) = {
            let mut copy = Chain {
                spec: c.spec.clone(),
                state: c.state.clone(),
                set: c.set.clone(),
                head: c.head.clone(),
            };
            copy.produce(
                2,
                vec![transfer(
                    &alice,
                    id,
                    5,
                    Address::repeat_byte(9),
                    U256::from(1),
                )],
            )
        };
        let root_before = c.state.state_root();
        let mut tampered = next.header.header.clone();
        tampered.state_root = B256::repeat_byte(1);
        next.header = SignedHeader {
            header: tampered,
            ..next.header
        };
        let err = c.import(&next).unwrap_err();
        assert!(
            matches!(
                err,
                BlockError::Commitment {
                    field: "state root",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            c.state.state_root(),
            root_before,
            "a rejected block leaves no trace"
        );
        assert_eq!(c.state.account(&DEV_ACCOUNTS[0]).nonce, 5);
    }

    #[test]
    fn base_fee_follows_block_fullness() {
        let mut parent = ChainSpec::devnet(1).genesis_header();
        parent.gas_used = parent.gas_limit / 2;
        assert_eq!(
            next_base_fee(&parent),
            parent.base_fee_per_gas,
            "at target it stays"
        );
        parent.gas_used = parent.gas_limit;
        assert_eq!(
            next_base_fee(&parent),
            parent.base_fee_per_gas * 9 / 8,
            "full: +12.5%"
        );
        parent.gas_used = 0;
        assert_eq!(
            next_base_fee(&parent),
            parent.base_fee_per_gas * 7 / 8,
            "empty: -12.5%"
        );
    }

    #[test]
    fn ending_block_runs_the_transition_and_later_blocks_stay_empty() {
        let mut c = chain();
        let last = last_slot_of_epoch(&c.spec, 0);
        let (_, output) = c.produce(last - 1, vec![]);
        assert!(output.epoch_transition.is_none());
        let (_, output) = c.produce(last, vec![]);
        assert_eq!(output.epoch_transition.as_ref().map(|t| t.epoch), Some(1));
        assert_eq!(c.state.rotation().current_epoch(), 1);
        // A block after the ending block in the same epoch may not carry transactions.
        let alice = dev_signer(0);
        let mut header = c.template(last + 1);
        header.epoch = 0;
        let tx = transfer(
            &alice,
            c.spec.chain_id,
            0,
            Address::repeat_byte(1),
            U256::ZERO,
        );
        header.transactions_root =
            luxtensor_light::block::transactions_root(std::slice::from_ref(&tx));
        let block = Block {
            header: header.sign(&devnet_validator_key(0), c.spec.chain_id),
            transactions: vec![tx],
            evidence: vec![],
        };
        assert_eq!(
            c.import(&block).unwrap_err(),
            BlockError::BusyAfterEpochEnd { epoch: 0 }
        );
    }

    /// Validator 2's two votes in slot 3 of epoch 0, for blocks 0x01… and 0x02….
    fn double_vote_of_validator_2(chain_id: u64) -> Evidence {
        let vote = |hash: B256| {
            luxtensor_light::Vote::sign(&devnet_validator_key(2), chain_id, 3, hash, 2)
        };
        Evidence::DoubleVote(Box::new(luxtensor_light::evidence::DoubleVote {
            epoch: 0,
            first: vote(B256::repeat_byte(1)),
            second: vote(B256::repeat_byte(2)),
        }))
    }

    #[test]
    fn evidence_is_admissible_for_evidence_epochs_after_its_epoch() {
        let id = chain().spec.chain_id;
        let evidence = double_vote_of_validator_2(id);
        let at_epoch = |epoch: u64| {
            let mut c = chain();
            for e in 1..=epoch {
                c.state.rotation_mut().process_epoch_transition(e).unwrap();
            }
            c.state.begin_block();
            apply_evidence(&mut c.state, &evidence, id, None)
        };
        let last = crate::rotation::EVIDENCE_EPOCHS;
        assert!(at_epoch(1).is_ok(), "the previous epoch");
        assert!(at_epoch(last).is_ok(), "the oldest epoch kept");
        let err = at_epoch(last + 1).unwrap_err();
        assert_eq!(err, EvidenceRejection::UnknownEpoch { epoch: 0 });
        assert!(!err.is_fault(), "an honest peer may gossip it late");
    }

    #[test]
    fn evidence_slashes_once() {
        let mut c = chain();
        let id = c.spec.chain_id;
        let set = c.set.clone();
        let evidence = double_vote_of_validator_2(id);
        c.state.begin_block();
        let log = apply_evidence(&mut c.state, &evidence, id, None).unwrap();
        let slashed = IStaking::ValidatorSlashed::decode_log_data(&log.data).unwrap();
        assert_eq!(slashed.owner, set.validators()[2].owner);
        assert_eq!(slashed.amount, set.validators()[2].stake / U256::from(2));
        let err = apply_evidence(&mut c.state, &evidence, id, None).unwrap_err();
        assert!(
            matches!(err, EvidenceRejection::AlreadyPunished { .. }),
            "{err}"
        );
        assert!(!err.is_fault(), "an honest peer may gossip it late");
        // The epoch is not signed: evidence may not claim one after its slot's.
        let vote =
            |hash: B256| luxtensor_light::Vote::sign(&devnet_validator_key(2), id, 3, hash, 2);
        let relabelled = Evidence::DoubleVote(Box::new(luxtensor_light::evidence::DoubleVote {
            epoch: 1,
            first: vote(B256::repeat_byte(3)),
            second: vote(B256::repeat_byte(4)),
        }));
        let err = apply_evidence(&mut c.state, &relabelled, id, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("epoch 1"),
            "a future epoch is none the state can prove: {err}"
        );
    }

    #[test]
    fn account_proofs_verify_against_the_state_root() {
        let mut c = chain();
        let root = c.state.state_root();
        for address in [DEV_ACCOUNTS[0], STAKING_ADDRESS, Address::repeat_byte(0x42)] {
            let proof = c.state.proof(address);
            let key = alloy_trie::Nibbles::unpack(crate::trie::account_key(&address));
            let expected =
                (address != Address::repeat_byte(0x42)).then(|| alloy_rlp::encode(proof.account));
            alloy_trie::proof::verify_proof(root, key, expected, &proof.proof).unwrap();
        }
    }
}
