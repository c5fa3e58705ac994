//! The account state: balances and nonces, the staking contract, and the
//! validator rotation, under one Merkle root.
//!
//! Accounts live in a map for reads and in a [`StateTrie`] for the root; the
//! trie is brought up to date lazily, for the accounts written since the
//! last root, so a block costs time in proportion to what it touched. Writes
//! made while a block executes are journaled, so a block that turns out to
//! be invalid leaves no trace ([`ChainState::revert_block`]).

use crate::rotation::ValidatorRotation;
use crate::staking::{STAKING_ADDRESS, staking_code_hash};
use crate::trie::{StateTrie, account_key};
use alloy_primitives::{Address, B256, Bytes, U256};
use luxtensor_light::{Account, ChainSpec};
use std::collections::{BTreeSet, HashMap};

/// An account with the proof that it is (or is not) in the state trie, as
/// `eth_getProof` returns it (EIP-1186, without storage proofs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountProof {
    /// The account proven.
    pub address: Address,
    /// Its state (all defaults if absent).
    pub account: Account,
    /// RLP-encoded trie nodes from the root towards `keccak256(address)`.
    pub proof: Vec<Bytes>,
}

/// What a block changed, captured for rollback.
#[derive(Debug, Clone)]
struct Journal {
    accounts: HashMap<Address, Option<Account>>,
    rotation: ValidatorRotation,
    /// `changed` before the block: a reverted write must not reach the store.
    changed: BTreeSet<Address>,
}

/// Balances, nonces and the rotation, with an incrementally updated root.
#[derive(Debug, Clone)]
pub struct ChainState {
    accounts: HashMap<Address, Account>,
    trie: StateTrie,
    rotation: ValidatorRotation,
    /// Written since the trie was last brought up to date.
    dirty: BTreeSet<Address>,
    /// Written since the last [`Self::take_changes`] (what the store must persist).
    changed: BTreeSet<Address>,
    journal: Option<Journal>,
}

impl ChainState {
    /// The state at genesis: funded accounts, the genesis validators' stake
    /// held by the staking contract.
    pub fn genesis(spec: &ChainSpec) -> Self {
        let validators = spec.genesis_validators();
        let staked = validators
            .iter()
            .fold(U256::ZERO, |sum, v| sum.saturating_add(v.stake));
        let rotation = ValidatorRotation::new(
            spec.rotation.clone(),
            spec.withdrawal_delay_epochs,
            validators,
        );
        let mut accounts: Vec<(Address, Account)> = spec.funded_accounts().collect();
        accounts.push((
            STAKING_ADDRESS,
            Account {
                balance: staked,
                ..Default::default()
            },
        ));
        Self::from_parts(accounts, rotation)
    }

    /// Rebuilds the state from persisted accounts and rotation (at start-up).
    pub fn from_parts(
        accounts: impl IntoIterator<Item = (Address, Account)>,
        rotation: ValidatorRotation,
    ) -> Self {
        let mut state = Self {
            accounts: HashMap::new(),
            trie: StateTrie::new(),
            rotation,
            dirty: BTreeSet::new(),
            changed: BTreeSet::new(),
            journal: None,
        };
        for (address, account) in accounts {
            state.accounts.insert(address, account);
            state.dirty.insert(address);
            state.changed.insert(address);
        }
        state.dirty.insert(STAKING_ADDRESS);
        state
    }

    /// The account at `address` (all defaults if it was never touched).
    pub fn account(&self, address: &Address) -> Account {
        self.accounts.get(address).copied().unwrap_or_default()
    }

    /// Number of accounts.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// Writes an account, journaling its previous value if a block is open.
    pub fn set_account(&mut self, address: Address, account: Account) {
        let previous = self.accounts.insert(address, account);
        if let Some(journal) = &mut self.journal {
            journal.accounts.entry(address).or_insert(previous);
        }
        self.dirty.insert(address);
        self.changed.insert(address);
    }

    /// Adds `amount` to a balance (saturating: total supply is far below 2^256).
    pub fn credit(&mut self, address: Address, amount: U256) {
        if amount.is_zero() {
            return;
        }
        let mut account = self.account(&address);
        account.balance = account.balance.saturating_add(amount);
        self.set_account(address, account);
    }

    /// Subtracts `amount` from a balance; false (and no change) if it is short.
    pub fn debit(&mut self, address: Address, amount: U256) -> bool {
        let mut account = self.account(&address);
        match account.balance.checked_sub(amount) {
            Some(rest) => {
                account.balance = rest;
                self.set_account(address, account);
                true
            }
            None => false,
        }
    }

    /// The validator rotation.
    pub fn rotation(&self) -> &ValidatorRotation {
        &self.rotation
    }

    /// The validator rotation, for changes (journaled like accounts).
    pub fn rotation_mut(&mut self) -> &mut ValidatorRotation {
        self.dirty.insert(STAKING_ADDRESS);
        self.changed.insert(STAKING_ADDRESS);
        &mut self.rotation
    }

    /// Opens a block: every write until [`Self::commit_block`] or
    /// [`Self::revert_block`] can be undone.
    pub fn begin_block(&mut self) {
        self.journal = Some(Journal {
            accounts: HashMap::new(),
            rotation: self.rotation.clone(),
            changed: self.changed.clone(),
        });
    }

    /// Keeps the open block's writes.
    pub fn commit_block(&mut self) {
        self.journal = None;
    }

    /// Undoes the open block's writes.
    pub fn revert_block(&mut self) {
        if let Some(journal) = self.journal.take() {
            for (address, previous) in journal.accounts {
                match previous {
                    Some(account) => self.accounts.insert(address, account),
                    None => self.accounts.remove(&address),
                };
                self.dirty.insert(address);
            }
            self.rotation = journal.rotation;
            self.changed = journal.changed;
            self.dirty.insert(STAKING_ADDRESS);
        }
    }

    /// The staking contract's account: its balance, the rotation's state
    /// hash as storage root, and its marker code.
    fn staking_account(&self) -> Account {
        Account {
            storage_root: self.rotation.state_hash(),
            code_hash: staking_code_hash(),
            ..self.account(&STAKING_ADDRESS)
        }
    }

    fn sync_trie(&mut self) {
        for address in std::mem::take(&mut self.dirty) {
            let account = match address {
                STAKING_ADDRESS => self.staking_account(),
                _ => match self.accounts.get(&address) {
                    Some(account) => *account,
                    None => {
                        self.trie.remove(&account_key(&address));
                        continue;
                    }
                },
            };
            self.trie
                .insert(account_key(&address), alloy_rlp::encode(account));
        }
    }

    /// The state root, updating only what changed since the last call.
    pub fn state_root(&mut self) -> B256 {
        self.sync_trie();
        self.trie.root()
    }

    /// The account and its Merkle proof against [`Self::state_root`].
    pub fn proof(&mut self, address: Address) -> AccountProof {
        self.sync_trie();
        let account = match address {
            STAKING_ADDRESS => self.staking_account(),
            _ => self.account(&address),
        };
        AccountProof {
            address,
            account,
            proof: self.trie.proof(&account_key(&address)),
        }
    }

    /// The accounts written since the last call, with their current values,
    /// for the store to persist.
    pub fn take_changes(&mut self) -> Vec<(Address, Account)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|address| (address, self.account(&address)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use luxtensor_light::chain_spec::DEV_ACCOUNTS;

    /// A state rebuilt from scratch with the same contents.
    fn rebuilt(state: &ChainState, extra: &[Address]) -> ChainState {
        let addresses = DEV_ACCOUNTS.iter().chain([&STAKING_ADDRESS]).chain(extra);
        ChainState::from_parts(
            addresses
                .map(|a| (*a, state.account(a)))
                .filter(|(_, acc)| acc != &Account::default()),
            state.rotation().clone(),
        )
    }

    #[test]
    fn incremental_root_equals_a_rebuilt_root() {
        let spec = ChainSpec::devnet(4);
        let mut state = ChainState::genesis(&spec);
        let genesis_root = state.state_root();
        state.credit(Address::repeat_byte(9), U256::from(5));
        let after_credit = state.state_root();
        assert_ne!(after_credit, genesis_root);
        assert_eq!(
            after_credit,
            rebuilt(&state, &[Address::repeat_byte(9)]).state_root()
        );

        state.rotation_mut().process_epoch_transition(1).unwrap();
        let after_transition = state.state_root();
        assert_ne!(
            after_transition, after_credit,
            "the rotation is committed to by the root"
        );
        assert_eq!(
            after_transition,
            rebuilt(&state, &[Address::repeat_byte(9)]).state_root()
        );
    }

    #[test]
    fn genesis_state_matches_the_spec_genesis_root() {
        for n in [1, 4, 7] {
            let spec = ChainSpec::devnet(n);
            let mut state = ChainState::genesis(&spec);
            assert_eq!(
                state.rotation().state_hash(),
                spec.genesis_rotation_state_hash()
            );
            assert_eq!(state.state_root(), spec.genesis_header().state_root);
        }
    }

    #[test]
    fn reverted_block_restores_accounts_rotation_and_root() {
        let spec = ChainSpec::devnet(4);
        let mut state = ChainState::genesis(&spec);
        let root = state.state_root();
        state.begin_block();
        state.credit(Address::repeat_byte(9), U256::from(5));
        assert!(state.debit(DEV_ACCOUNTS[0], U256::from(1)));
        state.rotation_mut().process_epoch_transition(1).unwrap();
        state.revert_block();
        assert_eq!(state.state_root(), root);
        let changes = state.take_changes();
        assert!(
            !changes.iter().any(|(a, _)| *a == Address::repeat_byte(9)),
            "a reverted write never reaches the store: {changes:?}"
        );
        assert_eq!(state.account(&Address::repeat_byte(9)), Account::default());
        assert_eq!(state.rotation().current_epoch(), 0);
        assert!(
            !state.debit(Address::repeat_byte(8), U256::from(1)),
            "cannot overdraw"
        );
    }
}
