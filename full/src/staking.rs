//! The staking system contract: a native contract at [`STAKING_ADDRESS`]
//! with a Solidity ABI, so that any Ethereum wallet or library can stake and
//! exit by sending an ordinary transaction.
//!
//! | call | effect |
//! |---|---|
//! | `stake(bytes blsPubkey, bytes proofOfPossession)` payable | queues a validator owned by the sender with `msg.value` as stake; emits `StakeRequested` |
//! | `requestExit()` | queues the sender's validator for exit (or cancels a pending activation); emits `ExitRequested` |
//!
//! Epoch transitions and slashing emit `ValidatorActivated`, `ValidatorExited`,
//! `ValidatorSlashed` and `StakeWithdrawn` as system logs of the block that
//! caused them. A call that fails reverts: the sender pays the gas, nothing
//! else changes, and the receipt has status 0.

use alloy_primitives::{Bytes, keccak256};
use alloy_sol_types::sol;

pub use luxtensor_light::chain_spec::{STAKING_ADDRESS, STAKING_CODE};

/// Gas a staking call costs on top of the intrinsic gas.
pub const STAKING_CALL_GAS: u64 = 50_000;

/// `keccak256` of [`STAKING_CODE`]: the staking account's code hash.
pub fn staking_code_hash() -> alloy_primitives::B256 {
    keccak256(STAKING_CODE)
}

sol! {
    /// The staking contract's ABI.
    #[derive(Debug, PartialEq, Eq)]
    interface IStaking {
        /// Stake `msg.value` for a validator signing with `blsPubkey` (48 bytes,
        /// compressed BLS12-381 G1), proven by `proofOfPossession` (96 bytes).
        function stake(bytes blsPubkey, bytes proofOfPossession) external payable;
        /// Leave the validator set (or cancel a pending activation).
        function requestExit() external;

        /// A stake request was queued; the validator activates at `activationEpoch` if a seat is free.
        event StakeRequested(address indexed owner, bytes blsPubkey, uint256 amount, uint64 activationEpoch);
        /// An exit was queued; the validator leaves the set at `exitEpoch`.
        event ExitRequested(address indexed owner, uint64 exitEpoch);
        /// The validator is in the set from `epoch` on.
        event ValidatorActivated(address indexed owner, uint64 epoch);
        /// The validator is no longer in the set from `epoch` on.
        event ValidatorExited(address indexed owner, uint64 epoch);
        /// The validator lost `amount` for slashable misbehaviour.
        event ValidatorSlashed(address indexed owner, uint256 amount, uint64 epoch);
        /// Exited stake was paid back to the owner.
        event StakeWithdrawn(address indexed owner, uint256 amount, uint64 epoch);
    }
}

/// Calldata for `stake(blsPubkey, proofOfPossession)`.
pub fn stake_calldata(public_key: &[u8], proof_of_possession: &[u8]) -> Bytes {
    use alloy_sol_types::SolCall;
    IStaking::stakeCall {
        blsPubkey: Bytes::copy_from_slice(public_key),
        proofOfPossession: Bytes::copy_from_slice(proof_of_possession),
    }
    .abi_encode()
    .into()
}

/// Calldata for `requestExit()`.
pub fn request_exit_calldata() -> Bytes {
    use alloy_sol_types::SolCall;
    IStaking::requestExitCall {}.abi_encode().into()
}
