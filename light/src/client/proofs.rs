//! Verification helpers for data an untrusted node serves about a header the
//! client already verified: a block's transactions, its receipts, an
//! `eth_getProof` account proof, and older headers by their parent-hash
//! chain. Each returns a [`ProofError`] that names what did not match.

use crate::block::transactions_root;
use crate::header::Header;
use crate::receipt::{Account, Receipt, receipts_root};
use crate::transaction::SignedTransaction;
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_trie::root::ordered_trie_root_with_encoder;
use alloy_trie::{EMPTY_ROOT_HASH, KECCAK_EMPTY, Nibbles};

/// Most headers [`verify_ancestry`] walks in one call.
pub const MAX_ANCESTRY_HEADERS: usize = 65_536;

/// Why served data does not match a verified header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The transactions do not hash to the header's transactions root.
    #[error(
        "transactions root mismatch: header {header} has {expected}, the transactions give {got}"
    )]
    TransactionsRoot {
        /// The block.
        header: B256,
        /// Root in the header.
        expected: B256,
        /// Root of the served list.
        got: B256,
    },
    /// The receipts do not hash to the header's receipts root.
    #[error("receipts root mismatch: header {header} has {expected}, the receipts give {got}")]
    ReceiptsRoot {
        /// The block.
        header: B256,
        /// Root in the header.
        expected: B256,
        /// Root of the served list.
        got: B256,
    },
    /// The account proof does not prove the claimed account under the state root.
    #[error(
        "account proof for {address} does not verify against state root {state_root}: {reason}"
    )]
    AccountProof {
        /// The account.
        address: Address,
        /// The verified state root.
        state_root: B256,
        /// What the trie check said.
        reason: String,
    },
    /// A header in the chain does not link to the next one.
    #[error(
        "header {index} of the chain (number {number}) is not the parent of the next: {reason}"
    )]
    BrokenLink {
        /// Position in the chain given (oldest first; the trusted header is last).
        index: usize,
        /// Its number.
        number: u64,
        /// Which link rule failed.
        reason: &'static str,
    },
    /// More headers than [`MAX_ANCESTRY_HEADERS`].
    #[error("{len} headers is over the limit of {max} per call")]
    TooManyHeaders {
        /// Headers given.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Checks a block's transactions against its verified header.
pub fn verify_transactions(
    header: &Header,
    transactions: &[SignedTransaction],
) -> Result<(), ProofError> {
    check_transactions_root(header, transactions_root(transactions))
}

/// [`verify_transactions`] for raw EIP-2718 encodings (as `eth_getRawTransaction*` serve them).
pub fn verify_raw_transactions<T: AsRef<[u8]>>(
    header: &Header,
    encoded: &[T],
) -> Result<(), ProofError> {
    let root =
        ordered_trie_root_with_encoder(encoded, |tx, buf| buf.extend_from_slice(tx.as_ref()));
    check_transactions_root(header, root)
}

fn check_transactions_root(header: &Header, got: B256) -> Result<(), ProofError> {
    if got != header.transactions_root {
        return Err(ProofError::TransactionsRoot {
            header: header.hash(),
            expected: header.transactions_root,
            got,
        });
    }
    Ok(())
}

/// Checks a block's full receipt list against its verified header.
pub fn verify_receipts(header: &Header, receipts: &[Receipt]) -> Result<(), ProofError> {
    let got = receipts_root(receipts);
    if got != header.receipts_root {
        return Err(ProofError::ReceiptsRoot {
            header: header.hash(),
            expected: header.receipts_root,
            got,
        });
    }
    Ok(())
}

/// The account part of an EIP-1186 `eth_getProof` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountProof {
    /// The account.
    pub address: Address,
    /// Claimed nonce.
    pub nonce: u64,
    /// Claimed balance.
    pub balance: U256,
    /// Claimed storage root (`storageHash`).
    pub storage_root: B256,
    /// Claimed code hash.
    pub code_hash: B256,
    /// The trie nodes from the root to the account (`accountProof`).
    pub proof: Vec<Bytes>,
}

impl AccountProof {
    /// The claimed account as the state trie stores it.
    pub fn account(&self) -> Account {
        Account {
            nonce: self.nonce,
            balance: self.balance,
            storage_root: self.storage_root,
            code_hash: self.code_hash,
        }
    }

    /// Whether the claim is the empty account (what nodes report for an
    /// address that is not in the trie).
    pub fn is_empty_account(&self) -> bool {
        self.nonce == 0
            && self.balance.is_zero()
            && self.storage_root == EMPTY_ROOT_HASH
            && self.code_hash == KECCAK_EMPTY
    }
}

/// Checks an `eth_getProof` account proof against a verified state root: the
/// account is in the trie with exactly the claimed fields, or the claim is the
/// empty account and the proof shows the address is absent.
pub fn verify_account_proof(state_root: B256, proof: &AccountProof) -> Result<(), ProofError> {
    let key = Nibbles::unpack(keccak256(proof.address));
    let included = alloy_rlp::encode(proof.account());
    let result = alloy_trie::proof::verify_proof(state_root, key, Some(included), &proof.proof);
    let result = match result {
        Err(_) if proof.is_empty_account() => {
            alloy_trie::proof::verify_proof(state_root, key, None, &proof.proof)
        }
        other => other,
    };
    result.map_err(|e| ProofError::AccountProof {
        address: proof.address,
        state_root,
        reason: e.to_string(),
    })
}

/// Checks that `chain` (oldest first) leads by parent hashes up to `trusted`,
/// a header verified by its QC: each header's hash is the next one's
/// `parent_hash` and numbers go up by one. History is then verified without a
/// QC per block.
pub fn verify_ancestry(chain: &[Header], trusted: &Header) -> Result<(), ProofError> {
    if chain.len() > MAX_ANCESTRY_HEADERS {
        return Err(ProofError::TooManyHeaders {
            len: chain.len(),
            max: MAX_ANCESTRY_HEADERS,
        });
    }
    let mut child = trusted;
    for (index, header) in chain.iter().enumerate().rev() {
        let fail = |reason| ProofError::BrokenLink {
            index,
            number: header.number,
            reason,
        };
        if header.number.checked_add(1) != Some(child.number) {
            return Err(fail("its number is not one below the next header's"));
        }
        if header.hash() != child.parent_hash {
            return Err(fail("its hash is not the next header's parent hash"));
        }
        child = header;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain_spec::ChainSpec;
    use alloy_trie::HashBuilder;
    use alloy_trie::proof::ProofRetainer;

    #[test]
    fn empty_lists_match_the_genesis_roots() {
        let genesis = ChainSpec::devnet(1).genesis_header();
        verify_transactions(&genesis, &[]).unwrap();
        verify_raw_transactions::<Vec<u8>>(&genesis, &[]).unwrap();
        verify_receipts(&genesis, &[]).unwrap();
        assert!(matches!(
            verify_raw_transactions(&genesis, &[vec![1u8, 2, 3]]),
            Err(ProofError::TransactionsRoot { .. })
        ));
    }

    #[test]
    fn ancestry_follows_parent_hashes() {
        let genesis = ChainSpec::devnet(1).genesis_header();
        let mut chain = vec![genesis];
        for _ in 0..4 {
            let parent = chain.last().unwrap();
            chain.push(Header {
                parent_hash: parent.hash(),
                number: parent.number + 1,
                slot: parent.slot + 1,
                ..parent.clone()
            });
        }
        let trusted = chain.pop().unwrap();
        verify_ancestry(&chain, &trusted).unwrap();
        verify_ancestry(&[], &trusted).unwrap();
        let mut broken = chain.clone();
        broken[1].gas_used += 1;
        assert!(matches!(
            verify_ancestry(&broken, &trusted),
            Err(ProofError::BrokenLink { index: 1, .. })
        ));
        assert!(matches!(
            verify_ancestry(&chain[..2], &trusted),
            Err(ProofError::BrokenLink { index: 1, .. })
        ));
    }

    #[test]
    fn account_proofs_include_and_exclude() {
        let accounts: Vec<(Address, Account)> = (1u8..=20)
            .map(|i| {
                (
                    Address::repeat_byte(i),
                    Account {
                        nonce: i as u64,
                        balance: U256::from(i) * U256::from(1000),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let target = Address::repeat_byte(7);
        let absent = Address::repeat_byte(0xee);
        let targets = vec![
            Nibbles::unpack(keccak256(target)),
            Nibbles::unpack(keccak256(absent)),
        ];
        let mut leaves: Vec<(B256, Vec<u8>)> = accounts
            .iter()
            .map(|(a, acc)| (keccak256(a), alloy_rlp::encode(acc)))
            .collect();
        leaves.sort();
        let mut builder = HashBuilder::default().with_proof_retainer(ProofRetainer::new(targets));
        for (key, value) in &leaves {
            builder.add_leaf(Nibbles::unpack(key), value);
        }
        let root = builder.root();
        let nodes = builder.take_proof_nodes();
        let proof_for = |address: Address| -> Vec<Bytes> {
            nodes
                .matching_nodes_sorted(&Nibbles::unpack(keccak256(address)))
                .into_iter()
                .map(|(_, node)| node)
                .collect()
        };
        let account = accounts[6].1;
        let mut claim = AccountProof {
            address: target,
            nonce: account.nonce,
            balance: account.balance,
            storage_root: account.storage_root,
            code_hash: account.code_hash,
            proof: proof_for(target),
        };
        verify_account_proof(root, &claim).unwrap();
        claim.balance += U256::from(1);
        assert!(matches!(
            verify_account_proof(root, &claim),
            Err(ProofError::AccountProof { .. })
        ));
        let empty = AccountProof {
            address: absent,
            nonce: 0,
            balance: U256::ZERO,
            storage_root: EMPTY_ROOT_HASH,
            code_hash: KECCAK_EMPTY,
            proof: proof_for(absent),
        };
        verify_account_proof(root, &empty).unwrap();
        let rich = AccountProof {
            balance: U256::from(1),
            ..empty
        };
        assert!(verify_account_proof(root, &rich).is_err());
    }
}
