//! The chain's constants: id, timing, rotation rules, genesis validators and
//! balances. Loadable from TOML or JSON; a built-in devnet spec needs no file.

use crate::bls::{self, BlsPublicKey, BlsSecretKey, BlsSignature};
use crate::header::Header;
use crate::qc::QuorumCert;
use crate::receipt::Account;
use crate::validator::{Validator, ValidatorSet};
use alloy_primitives::{Address, B256, Bloom, U256, address, keccak256};
use alloy_trie::EMPTY_ROOT_HASH;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Where the staking system contract lives (its rules are the full node's;
/// the address and its genesis state are part of the chain's definition).
pub const STAKING_ADDRESS: Address = address!("0x0000000000000000000000000000000000001000");

/// The staking contract's "code" as `eth_getCode` reports it: the single
/// byte `0xfe` (INVALID): the contract is native, not EVM bytecode.
pub const STAKING_CODE: [u8; 1] = [0xfe];

/// One token: 10^18 wei.
pub const TOKEN: U256 = U256::from_limbs([1_000_000_000_000_000_000, 0, 0, 0]);

/// Rules of validator rotation (the seed's `RotationConfig`), with its defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RotationConfig {
    /// Slots per epoch (default 32).
    pub epoch_length: u64,
    /// Epochs between a stake request and activation (default 2, at least 1).
    pub activation_delay_epochs: u64,
    /// Epochs between an exit request and the exit (default 2, at least 1).
    pub exit_delay_epochs: u64,
    /// Most validators active at once (default 100).
    pub max_validators: u32,
    /// Least stake a validator may hold, in wei (default 32 tokens).
    pub min_stake: U256,
    /// Most activations, and separately most exits, per epoch transition;
    /// the rest wait in their queues (as Ethereum's churn limit does).
    /// 0 disables the limit (default).
    pub churn_limit: u32,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            epoch_length: 32,
            activation_delay_epochs: 2,
            exit_delay_epochs: 2,
            max_validators: 100,
            min_stake: TOKEN * U256::from(32),
            churn_limit: 0,
        }
    }
}

/// A validator present at genesis, with the proof of possession that any
/// registration needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct GenesisValidator {
    /// Owner account.
    pub owner: Address,
    /// Compressed BLS public key.
    pub public_key: BlsPublicKey,
    /// Proof of possession of the key on this chain.
    pub proof_of_possession: BlsSignature,
    /// Stake in wei.
    pub stake: U256,
}

/// An account funded at genesis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisAccount {
    /// The account.
    pub address: Address,
    /// Its balance in wei.
    pub balance: U256,
}

/// Everything every node of one chain must agree on before the first block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    /// EIP-155 chain id; also part of every BLS signing root.
    pub chain_id: u64,
    /// Slot length in milliseconds.
    pub slot_duration_ms: u64,
    /// Unix time in seconds of slot 0.
    #[serde(default)]
    pub genesis_timestamp: u64,
    /// Validator rotation rules.
    #[serde(default)]
    pub rotation: RotationConfig,
    /// Epochs an exited validator's stake stays slashable before it is paid
    /// out (default 256). It bounds how old a light-client checkpoint may be.
    #[serde(default = "default_withdrawal_delay")]
    pub withdrawal_delay_epochs: u64,
    /// Block gas limit (default 30,000,000).
    #[serde(default = "default_gas_limit")]
    pub gas_limit: u64,
    /// Base fee of the first block, in wei (default 1 gwei).
    #[serde(default = "default_base_fee")]
    pub initial_base_fee: u64,
    /// The genesis validator set, in set order.
    pub validators: Vec<GenesisValidator>,
    /// Funded accounts.
    #[serde(default)]
    pub balances: Vec<GenesisAccount>,
}

fn default_withdrawal_delay() -> u64 {
    256
}
fn default_gas_limit() -> u64 {
    30_000_000
}
fn default_base_fee() -> u64 {
    1_000_000_000
}

/// Why a chain spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The TOML text does not parse into a spec.
    #[error("chain spec is not valid TOML for a spec: {0}")]
    Toml(String),
    /// The JSON text does not parse into a spec.
    #[error("chain spec is not valid JSON for a spec: {0}")]
    Json(String),
    /// A value breaks a rule.
    #[error("chain spec field `{field}`: {reason}")]
    Invalid {
        /// The field, as written in the file.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl ChainSpec {
    /// Parses and validates a TOML spec.
    pub fn from_toml_str(text: &str) -> Result<Self, SpecError> {
        let spec: Self = toml::from_str(text).map_err(|e| SpecError::Toml(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses and validates a JSON spec.
    pub fn from_json_str(text: &str) -> Result<Self, SpecError> {
        let spec: Self = serde_json::from_str(text).map_err(|e| SpecError::Json(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every rule a spec must satisfy, naming the first field that breaks one.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.chain_id == 0 {
            return Err(invalid("chain_id", "must not be 0"));
        }
        if self.slot_duration_ms == 0 {
            return Err(invalid("slot_duration_ms", "must be at least 1"));
        }
        let r = &self.rotation;
        if r.epoch_length == 0 {
            return Err(invalid("rotation.epoch_length", "must be at least 1 slot"));
        }
        if r.activation_delay_epochs == 0 {
            return Err(invalid(
                "rotation.activation_delay_epochs",
                "must be at least 1: the next epoch's set is fixed one epoch ahead",
            ));
        }
        if r.exit_delay_epochs == 0 {
            return Err(invalid(
                "rotation.exit_delay_epochs",
                "must be at least 1: the next epoch's set is fixed one epoch ahead",
            ));
        }
        if r.max_validators == 0 {
            return Err(invalid("rotation.max_validators", "must be at least 1"));
        }
        if r.min_stake.is_zero() {
            return Err(invalid("rotation.min_stake", "must be positive"));
        }
        if self.withdrawal_delay_epochs < r.exit_delay_epochs {
            return Err(invalid(
                "withdrawal_delay_epochs",
                format!(
                    "must be at least exit_delay_epochs ({})",
                    r.exit_delay_epochs
                ),
            ));
        }
        if self.gas_limit < 21_000 {
            return Err(invalid(
                "gas_limit",
                "must fit at least one transfer (21000)",
            ));
        }
        if self.validators.is_empty() {
            return Err(invalid(
                "validators",
                "the genesis validator set must not be empty",
            ));
        }
        if r.max_validators as usize > crate::validator::MAX_SET_SIZE {
            return Err(invalid(
                "rotation.max_validators",
                format!("must be at most {}", crate::validator::MAX_SET_SIZE),
            ));
        }
        if self.validators.len() > r.max_validators as usize {
            return Err(invalid(
                "validators",
                format!(
                    "{} validators, over max_validators = {}",
                    self.validators.len(),
                    r.max_validators
                ),
            ));
        }
        for (i, v) in self.validators.iter().enumerate() {
            if v.stake < r.min_stake {
                return Err(invalid(
                    "validators",
                    format!(
                        "validator {i} stakes {} wei, below min_stake {}",
                        v.stake, r.min_stake
                    ),
                ));
            }
            bls::verify_proof_of_possession(self.chain_id, &v.public_key, &v.proof_of_possession)
                .map_err(|e| {
                invalid(
                    "validators",
                    format!("validator {i}: proof of possession: {e}"),
                )
            })?;
        }
        self.genesis_set()
            .map_err(|e| invalid("validators", e.to_string()))?;
        let mut seen = HashSet::new();
        for a in &self.balances {
            if a.address == STAKING_ADDRESS {
                return Err(invalid("balances", "the staking contract holds only stake"));
            }
            if !seen.insert(a.address) {
                return Err(invalid(
                    "balances",
                    format!("{} is funded twice", a.address),
                ));
            }
        }
        Ok(())
    }

    /// The validator set of epochs 0 and 1.
    pub fn genesis_set(&self) -> Result<ValidatorSet, crate::validator::SetError> {
        ValidatorSet::new(self.genesis_validators())
    }

    /// The genesis validators as set members (without their proofs of possession).
    pub fn genesis_validators(&self) -> Vec<Validator> {
        self.validators
            .iter()
            .map(|v| Validator {
                owner: v.owner,
                public_key: v.public_key,
                stake: v.stake,
            })
            .collect()
    }

    /// Unix time in seconds at the start of `slot`.
    pub fn slot_timestamp(&self, slot: u64) -> u64 {
        let ms = u128::from(slot) * u128::from(self.slot_duration_ms);
        self.genesis_timestamp
            .saturating_add(u64::try_from(ms / 1000).unwrap_or(u64::MAX))
    }

    /// The epoch a slot belongs to when no finality stall has lengthened an epoch.
    pub fn nominal_epoch(&self, slot: u64) -> u64 {
        slot / self.rotation.epoch_length
    }

    /// Hash of the validator rotation's state at genesis: the canonical RLP
    /// `[0, set, set, [], [], [], [], [], 0, 0, []]` (epoch, current set, next
    /// set, pending activations, pending exits, slashes, withdrawals,
    /// offences, next queue position, ending block slot, past sets). The full node's
    /// rotation produces the same bytes (a test there checks it).
    pub fn genesis_rotation_state_hash(&self) -> B256 {
        let validators = self.genesis_validators();
        let empty: [u8; 0] = [];
        let mut payload = Vec::new();
        alloy_rlp::Encodable::encode(&0u64, &mut payload);
        alloy_rlp::encode_list(&validators, &mut payload);
        alloy_rlp::encode_list(&validators, &mut payload);
        for _ in 0..5 {
            alloy_rlp::encode_list::<u8, u8>(&empty, &mut payload);
        }
        alloy_rlp::Encodable::encode(&0u64, &mut payload);
        alloy_rlp::Encodable::encode(&0u64, &mut payload);
        alloy_rlp::encode_list::<u8, u8>(&empty, &mut payload);
        let mut out = Vec::with_capacity(payload.len() + 4);
        alloy_rlp::Header {
            list: true,
            payload_length: payload.len(),
        }
        .encode(&mut out);
        out.extend_from_slice(&payload);
        keccak256(out)
    }

    /// Root of the genesis account state: the funded accounts and the
    /// staking contract (holding the genesis stake; storage root = the
    /// rotation's state hash; code hash = `keccak256(STAKING_CODE)`).
    pub fn genesis_state_root(&self) -> B256 {
        let staked = self
            .validators
            .iter()
            .fold(U256::ZERO, |sum, v| sum.saturating_add(v.stake));
        let staking = Account {
            nonce: 0,
            balance: staked,
            storage_root: self.genesis_rotation_state_hash(),
            code_hash: keccak256(STAKING_CODE),
        };
        alloy_trie::root::state_root_unhashed(
            self.funded_accounts().chain([(STAKING_ADDRESS, staking)]),
        )
    }

    /// The accounts `balances` funds at genesis, as state-trie accounts.
    pub fn funded_accounts(&self) -> impl Iterator<Item = (Address, Account)> + '_ {
        self.balances.iter().map(|a| {
            (
                a.address,
                Account {
                    balance: a.balance,
                    ..Default::default()
                },
            )
        })
    }

    /// The genesis header. Its hash is the root of trust of a light client
    /// that starts from this spec.
    pub fn genesis_header(&self) -> Header {
        let set_hash = ValidatorSet::hash_of(&self.genesis_validators());
        Header {
            parent_hash: B256::ZERO,
            number: 0,
            slot: 0,
            epoch: 0,
            timestamp: self.genesis_timestamp,
            proposer_index: 0,
            state_root: self.genesis_state_root(),
            transactions_root: EMPTY_ROOT_HASH,
            receipts_root: EMPTY_ROOT_HASH,
            evidence_hash: crate::block::evidence_hash(&[]),
            logs_bloom: Bloom::ZERO,
            gas_limit: self.gas_limit,
            gas_used: 0,
            base_fee_per_gas: self.initial_base_fee,
            validator_set_hash: set_hash,
            next_validator_set_hash: set_hash,
            parent_qc: QuorumCert::genesis(),
        }
    }
}

/// Chain id of the built-in devnet (the one Hardhat and Anvil use).
pub const DEVNET_CHAIN_ID: u64 = 31337;

/// The well-known development mnemonic of Hardhat and Anvil.
pub const DEV_MNEMONIC: &str = "test test test test test test test test test test test junk";

/// The first 20 accounts of [`DEV_MNEMONIC`] (path `m/44'/60'/0'/0/i`), funded
/// on the devnet. A test derives them from the mnemonic.
pub const DEV_ACCOUNTS: [Address; 20] = [
    address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
    address!("70997970C51812dc3A010C7d01b50e0d17dc79C8"),
    address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
    address!("90F79bf6EB2c4f870365E785982E1f101E93b906"),
    address!("15d34AAf54267DB7D7c367839AAf71A00a2C6A65"),
    address!("9965507D1a55bcC2695C58ba16FB37d819B0A4dc"),
    address!("976EA74026E726554dB657fA54763abd0C3a0aa9"),
    address!("14dC79964da2C08b23698B3D3cc7Ca32193d9955"),
    address!("23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f"),
    address!("a0Ee7A142d267C1f36714E4a8F75612F20a79720"),
    address!("Bcd4042DE499D14e55001CcbB24a551F3b954096"),
    address!("71bE63f3384f5fb98995898A86B02Fb2426c5788"),
    address!("FABB0ac9d68B0B445fB7357272Ff202C5651694a"),
    address!("1CBd3b2770909D4e10f157cABC84C7264073C9Ec"),
    address!("dF3e18d64BC6A983f673Ab319CCaE4f1a57C7097"),
    address!("cd3B766CCDd6AE721141F452C550Ca635964ce71"),
    address!("2546BcD3c84621e976D8185a91A922aE77ECEc30"),
    address!("bDA5747bFD65F08deb54cb465eB87D40e51B197E"),
    address!("dD2FD4581271e230360230F9337D5c0430Bf44C0"),
    address!("8626f6940E2eb28930eFb4CeF49B2d1F2C9C1199"),
];

/// The deterministic BLS key of devnet validator `index`:
/// IETF `KeyGen` of `keccak256("luxtensor devnet validator" ‖ index as 4 big-endian bytes)`.
/// Public knowledge: never use these keys on a real network.
pub fn devnet_validator_key(index: u32) -> BlsSecretKey {
    let mut material = b"luxtensor devnet validator".to_vec();
    material.extend_from_slice(&index.to_be_bytes());
    BlsSecretKey::from_key_material(keccak256(material).as_slice())
        .expect("32 bytes of key material")
}

/// Owner of devnet validator `index`: dev account `index`, or past the 20th a
/// deterministic address.
pub fn devnet_validator_owner(index: u32) -> Address {
    DEV_ACCOUNTS
        .get(index as usize)
        .copied()
        .unwrap_or_else(|| {
            let mut seed = b"luxtensor devnet owner".to_vec();
            seed.extend_from_slice(&index.to_be_bytes());
            Address::from_slice(&keccak256(seed)[12..])
        })
}

impl ChainSpec {
    /// The built-in devnet: `validators` validators with deterministic keys,
    /// 32 tokens each, short slots (500 ms) and short epochs (8 slots), and
    /// the 20 development accounts funded with 10,000 tokens each.
    pub fn devnet(validators: u32) -> Self {
        let rotation = RotationConfig {
            epoch_length: 8,
            ..RotationConfig::default()
        };
        let validators = (0..validators)
            .map(|i| {
                let key = devnet_validator_key(i);
                GenesisValidator {
                    owner: devnet_validator_owner(i),
                    public_key: key.public_key(),
                    proof_of_possession: key.proof_of_possession(DEVNET_CHAIN_ID),
                    stake: rotation.min_stake,
                }
            })
            .collect();
        Self {
            chain_id: DEVNET_CHAIN_ID,
            slot_duration_ms: 500,
            genesis_timestamp: 0,
            rotation,
            withdrawal_delay_epochs: default_withdrawal_delay(),
            gas_limit: default_gas_limit(),
            initial_base_fee: default_base_fee(),
            validators,
            balances: DEV_ACCOUNTS
                .iter()
                .map(|&address| GenesisAccount {
                    address,
                    balance: TOKEN * U256::from(10_000),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devnet_spec_is_valid_and_deterministic() {
        let spec = ChainSpec::devnet(4);
        spec.validate().unwrap();
        assert_eq!(
            spec.genesis_header().hash(),
            ChainSpec::devnet(4).genesis_header().hash()
        );
        assert_ne!(
            spec.genesis_header().hash(),
            ChainSpec::devnet(5).genesis_header().hash()
        );
        assert_eq!(spec.genesis_set().unwrap().len(), 4);
    }

    #[test]
    fn json_round_trip() {
        let spec = ChainSpec::devnet(2);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(ChainSpec::from_json_str(&json).unwrap(), spec);
    }

    #[test]
    fn toml_file_loads_with_defaults() {
        let v = &ChainSpec::devnet(1).validators[0];
        let text = format!(
            r#"
chain_id = 7
slot_duration_ms = 2000

[rotation]
epoch_length = 16

[[validators]]
owner = "{}"
public_key = "{}"
proof_of_possession = "{}"
stake = "32000000000000000000"

[[balances]]
address = "0x0000000000000000000000000000000000000001"
balance = "1000"
"#,
            v.owner,
            v.public_key,
            devnet_validator_key(0).proof_of_possession(7)
        );
        let spec = ChainSpec::from_toml_str(&text).unwrap();
        assert_eq!(spec.rotation.epoch_length, 16);
        assert_eq!(spec.rotation.activation_delay_epochs, 2);
        assert_eq!(spec.rotation.max_validators, 100);
        assert_eq!(spec.withdrawal_delay_epochs, 256);
        assert_eq!(spec.balances[0].balance, U256::from(1000));
    }

    #[test]
    fn bad_values_are_named() {
        let mut spec = ChainSpec::devnet(1);
        spec.rotation.activation_delay_epochs = 0;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::Invalid {
                field: "rotation.activation_delay_epochs",
                ..
            })
        ));
        let mut spec = ChainSpec::devnet(1);
        spec.validators.clear();
        assert!(matches!(
            spec.validate(),
            Err(SpecError::Invalid {
                field: "validators",
                ..
            })
        ));
        let mut spec = ChainSpec::devnet(1);
        spec.validators[0].stake = U256::from(1);
        assert!(matches!(
            spec.validate(),
            Err(SpecError::Invalid {
                field: "validators",
                ..
            })
        ));
        // A proof of possession made for another chain id is refused.
        let mut spec = ChainSpec::devnet(1);
        spec.chain_id = 1;
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("proof of possession"), "{err}");
        assert!(matches!(
            ChainSpec::from_toml_str("chain_id = \"x\""),
            Err(SpecError::Toml(_))
        ));
        assert!(matches!(
            ChainSpec::from_json_str("{}"),
            Err(SpecError::Json(_))
        ));
    }

    #[test]
    fn slot_timestamps_advance_with_slot_length() {
        let mut spec = ChainSpec::devnet(1);
        spec.genesis_timestamp = 1000;
        assert_eq!(spec.slot_timestamp(0), 1000);
        assert_eq!(spec.slot_timestamp(3), 1001);
        assert_eq!(spec.slot_timestamp(u64::MAX), 1000 + u64::MAX / 2);
        spec.genesis_timestamp = u64::MAX;
        assert_eq!(
            spec.slot_timestamp(10),
            u64::MAX,
            "saturates instead of overflowing"
        );
    }
}
