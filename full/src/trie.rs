//! The account state as an in-memory Ethereum Merkle-Patricia trie.
//!
//! [`StateTrie`] keeps every node in memory together with its cached reference
//! (the [`RlpNode`]: the node's RLP when shorter than 32 bytes, else the RLP of
//! its keccak hash). Inserting or removing a key drops the cached references
//! of the nodes on that key's path only, so [`StateTrie::root`] re-encodes and
//! re-hashes just the paths changed since the previous call: its cost follows
//! the number of changed keys, not the size of the state. The node encodings
//! come from `alloy-trie`, so roots and [`StateTrie::proof`]s (EIP-1186
//! `accountProof`s) are byte-for-byte Ethereum's.
//!
//! ```
//! use alloy_primitives::{Address, Bytes};
//! use alloy_trie::{proof::verify_proof, Nibbles, TrieAccount};
//! use luxtensor_full::trie::{account_key, StateTrie};
//!
//! let mut trie = StateTrie::new();
//! let key = account_key(&Address::repeat_byte(1));
//! let value = alloy_rlp::encode(TrieAccount::default());
//! trie.insert(key, value.clone());
//! let root = trie.root();
//! let proof: Vec<Bytes> = trie.proof(&key);
//! assert!(verify_proof(root, Nibbles::unpack(key), Some(value), &proof).is_ok());
//! ```

use alloy_primitives::{Address, B256, Bytes, keccak256};
use alloy_rlp::Encodable;
use alloy_trie::nodes::{BranchNodeRef, ExtensionNodeRef, LeafNodeRef, RlpNode};
use alloy_trie::{EMPTY_ROOT_HASH, Nibbles, TrieMask};
use std::fmt;

/// The trie key of an account: `keccak256(address)`. Its value in the trie is
/// `alloy_rlp::encode(TrieAccount)`.
pub fn account_key(address: &Address) -> B256 {
    keccak256(address)
}

/// An in-memory Merkle-Patricia trie over 32-byte hashed keys whose root
/// costs time in proportion to the keys changed since it was last computed.
///
/// Because every key has 64 nibbles, no key is a prefix of another, so branch
/// nodes never hold values and every leaf sits at full depth.
#[derive(Clone, Default)]
pub struct StateTrie {
    root: Option<Node>,
    len: usize,
    /// Node encodings performed by [`StateTrie::root`] over the trie's life.
    hashes_computed: u64,
}

/// A trie node and its cached reference, `None` while the node is dirty.
#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    cache: Option<RlpNode>,
}

#[derive(Clone, Debug)]
enum Kind {
    /// The rest of a key's path and its value.
    Leaf { key: Nibbles, value: Vec<u8> },
    /// A shared path segment leading to a branch.
    Extension { key: Nibbles, child: Box<Node> },
    /// At least two children, indexed by the next nibble.
    Branch { children: Box<[Option<Node>; 16]> },
}

impl StateTrie {
    /// Creates an empty trie, whose root is [`EMPTY_ROOT_HASH`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces the value at `key` (a 32-byte hashed key: keccak256
    /// of the address). An empty `value` cannot be stored in a trie; as in
    /// geth it removes the key, but prefer calling [`StateTrie::remove`].
    pub fn insert(&mut self, key: B256, value: Vec<u8>) {
        if value.is_empty() {
            self.remove(&key);
            return;
        }
        let (root, old) = insert(self.root.take(), Nibbles::unpack(key), value);
        self.root = Some(root);
        if old.is_none() {
            self.len += 1;
        }
    }

    /// Removes `key` and returns its value, leaving the trie in the same
    /// canonical shape as if the key had never been inserted. Removing an
    /// absent key changes nothing and keeps every cached hash.
    pub fn remove(&mut self, key: &B256) -> Option<Vec<u8>> {
        self.get(key)?;
        let root = self
            .root
            .take()
            .expect("get found the key, so the trie is not empty");
        let (root, value) = remove(root, Nibbles::unpack(key));
        self.root = root;
        self.len -= 1;
        Some(value)
    }

    /// Returns the value stored at `key`, if any.
    pub fn get(&self, key: &B256) -> Option<&[u8]> {
        self.walk(&Nibbles::unpack(key), |_| {})
    }

    /// Returns the number of keys in the trie.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Returns true when the trie holds no key.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns the root hash, re-encoding only the nodes on paths changed
    /// since the last call; every other node's cached reference is reused.
    pub fn root(&mut self) -> B256 {
        let Some(root) = &mut self.root else {
            return EMPTY_ROOT_HASH;
        };
        let reference = root.commit(&mut Vec::new(), &mut self.hashes_computed);
        // The root is hashed even when its RLP is short enough to be inlined.
        reference.as_hash().unwrap_or_else(|| keccak256(&reference))
    }

    /// Returns the RLP-encoded nodes from the root to the key's leaf, or to
    /// the node that proves the key absent, as `eth_getProof`'s
    /// `accountProof` lists them. Nodes short enough to be inlined in their
    /// parent are not listed separately. The proof is against [`StateTrie::root`],
    /// which this computes first; an empty trie gives an empty proof.
    pub fn proof(&mut self, key: &B256) -> Vec<Bytes> {
        self.root();
        let (mut proof, mut buf, mut is_root) = (Vec::new(), Vec::new(), true);
        self.walk(&Nibbles::unpack(key), |node| {
            if is_root || node.reference().is_hash() {
                buf.clear();
                node.encode(&mut buf);
                proof.push(Bytes::copy_from_slice(&buf));
            }
            is_root = false;
        });
        proof
    }

    /// Returns how many nodes [`StateTrie::root`] has encoded (and hashed,
    /// when 32 bytes or longer) since the trie was created: a measure of the
    /// work that caching saved.
    pub fn hashes_computed(&self) -> u64 {
        self.hashes_computed
    }

    /// Follows `path` from the root, calling `visit` on each node passed, and
    /// returns the value if the path ends at a leaf.
    fn walk<'a>(&'a self, path: &Nibbles, mut visit: impl FnMut(&'a Node)) -> Option<&'a [u8]> {
        let (mut node, mut depth) = (self.root.as_ref()?, 0);
        loop {
            visit(node);
            let rest = path.slice(depth..);
            match &node.kind {
                Kind::Leaf { key, value } => return (*key == rest).then_some(value.as_slice()),
                Kind::Extension { key, child } if rest.starts_with(key) => {
                    depth += key.len();
                    node = child;
                }
                Kind::Extension { .. } => return None,
                Kind::Branch { children } => {
                    node = children[nibble(&rest, 0)].as_ref()?;
                    depth += 1;
                }
            }
        }
    }
}

impl fmt::Debug for StateTrie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateTrie")
            .field("len", &self.len)
            .field(
                "root_cached",
                &self.root.as_ref().is_none_or(|root| root.cache.is_some()),
            )
            .field("hashes_computed", &self.hashes_computed)
            .finish()
    }
}

/// Returns the nibble of `path` at `index` as an array index.
fn nibble(path: &Nibbles, index: usize) -> usize {
    usize::from(path.get_unchecked(index))
}

impl Node {
    fn new(kind: Kind) -> Self {
        Self { kind, cache: None }
    }

    fn leaf(key: Nibbles, value: Vec<u8>) -> Self {
        Self::new(Kind::Leaf { key, value })
    }

    /// Returns this node placed below the path segment `prefix`: merged into
    /// a leaf's or extension's key, or under a new extension for a branch.
    fn with_prefix(self, prefix: Nibbles) -> Self {
        if prefix.is_empty() {
            return self;
        }
        match self.kind {
            Kind::Leaf { key, value } => Self::leaf(prefix.join(&key), value),
            Kind::Extension { key, child } => Self::new(Kind::Extension {
                key: prefix.join(&key),
                child,
            }),
            Kind::Branch { .. } => Self::new(Kind::Extension {
                key: prefix,
                child: Box::new(self),
            }),
        }
    }

    /// The cached reference of a node that [`Node::commit`] has visited.
    fn reference(&self) -> &RlpNode {
        self.cache
            .as_ref()
            .expect("children are committed before their parent is encoded")
    }

    /// Returns the node's reference, encoding it and its dirty descendants.
    fn commit(&mut self, buf: &mut Vec<u8>, counter: &mut u64) -> RlpNode {
        if let Some(cached) = &self.cache {
            return cached.clone();
        }
        match &mut self.kind {
            Kind::Leaf { .. } => {}
            Kind::Extension { child, .. } => {
                child.commit(buf, counter);
            }
            Kind::Branch { children } => {
                for child in children.iter_mut().flatten() {
                    child.commit(buf, counter);
                }
            }
        }
        buf.clear();
        self.encode(buf);
        *counter += 1;
        let reference = RlpNode::from_rlp(buf);
        self.cache = Some(reference.clone());
        reference
    }

    /// Appends the node's full RLP encoding; its children must be committed.
    fn encode(&self, out: &mut Vec<u8>) {
        match &self.kind {
            Kind::Leaf { key, value } => LeafNodeRef::new(key, value).encode(out),
            Kind::Extension { key, child } => {
                ExtensionNodeRef::new(key, child.reference()).encode(out)
            }
            Kind::Branch { children } => {
                let (mut stack, mut mask) = (Vec::with_capacity(16), TrieMask::default());
                for (index, child) in (0u8..).zip(children.iter()) {
                    if let Some(child) = child {
                        mask.set_bit(index);
                        stack.push(child.reference().clone());
                    }
                }
                BranchNodeRef::new(&stack, mask).encode(out);
            }
        }
    }
}

/// Inserts `value` at `path` below `node`, returning the new node and the
/// value it replaced. The returned node and all its new ancestors are dirty.
fn insert(node: Option<Node>, path: Nibbles, value: Vec<u8>) -> (Node, Option<Vec<u8>>) {
    let Some(node) = node else {
        return (Node::leaf(path, value), None);
    };
    match node.kind {
        Kind::Leaf { key, value: old } if key == path => (Node::leaf(key, value), Some(old)),
        Kind::Leaf { key, value: old } => {
            let at = key.common_prefix_length(&path);
            let existing = Node::leaf(key.slice(at + 1..), old);
            (fork(&key, at, existing, &path, value), None)
        }
        Kind::Extension { key, child } if path.starts_with(&key) => {
            let (child, old) = insert(Some(*child), path.slice(key.len()..), value);
            (
                Node::new(Kind::Extension {
                    key,
                    child: Box::new(child),
                }),
                old,
            )
        }
        Kind::Extension { key, child } => {
            let at = key.common_prefix_length(&path);
            let existing = child.with_prefix(key.slice(at + 1..));
            (fork(&key, at, existing, &path, value), None)
        }
        Kind::Branch { mut children } => {
            let index = nibble(&path, 0);
            let (child, old) = insert(children[index].take(), path.slice(1..), value);
            children[index] = Some(child);
            (Node::new(Kind::Branch { children }), old)
        }
    }
}

/// Builds the node where `key` (holding `existing` after nibble `at`) and the
/// new `path` first differ: a branch at nibble `at`, under their common prefix.
fn fork(key: &Nibbles, at: usize, existing: Node, path: &Nibbles, value: Vec<u8>) -> Node {
    let mut children: [Option<Node>; 16] = Default::default();
    children[nibble(key, at)] = Some(existing);
    children[nibble(path, at)] = Some(Node::leaf(path.slice(at + 1..), value));
    Node::new(Kind::Branch {
        children: Box::new(children),
    })
    .with_prefix(key.slice(..at))
}

/// Removes `path`, which must be present below `node`, returning what replaces
/// `node` (nothing once empty) and the removed value. A branch left with one
/// child collapses into it, and extensions merge, so the shape stays canonical.
fn remove(node: Node, path: Nibbles) -> (Option<Node>, Vec<u8>) {
    match node.kind {
        Kind::Leaf { value, .. } => (None, value),
        Kind::Extension { key, child } => {
            let (child, value) = remove(*child, path.slice(key.len()..));
            (child.map(|child| child.with_prefix(key)), value)
        }
        Kind::Branch { mut children } => {
            let index = nibble(&path, 0);
            let child = children[index].take().expect("the removed key is present");
            let (child, value) = remove(child, path.slice(1..));
            children[index] = child;
            let node = if children.iter().flatten().count() == 1 {
                let only = children
                    .iter()
                    .position(Option::is_some)
                    .expect("one child is left");
                let prefix = Nibbles::from_nibbles_unchecked([only as u8]);
                children[only].take().map(|child| child.with_prefix(prefix))
            } else {
                Some(Node::new(Kind::Branch { children }))
            };
            (node, value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::U256;
    use alloy_trie::proof::verify_proof;
    use alloy_trie::root::state_root_unhashed;
    use alloy_trie::{HashBuilder, TrieAccount};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn address(i: u64) -> Address {
        Address::from_slice(&keccak256(i.to_be_bytes())[..20])
    }

    fn account(i: u64, version: u64) -> TrieAccount {
        TrieAccount {
            nonce: version,
            balance: U256::from(i * 1_000 + version),
            ..Default::default()
        }
    }

    /// From-scratch root of `model` by alloy-trie's `HashBuilder`.
    fn reference_root(model: &BTreeMap<B256, Vec<u8>>) -> B256 {
        let mut builder = HashBuilder::default();
        for (key, value) in model {
            builder.add_leaf(Nibbles::unpack(key), value);
        }
        builder.root()
    }

    #[test]
    fn accounts_root_matches_alloy_through_inserts_updates_and_removals() {
        let mut trie = StateTrie::new();
        let mut model: BTreeMap<Address, TrieAccount> = BTreeMap::new();
        let check = |trie: &mut StateTrie, model: &BTreeMap<Address, TrieAccount>| {
            assert_eq!(trie.len(), model.len());
            assert_eq!(
                trie.root(),
                state_root_unhashed(model.iter().map(|(a, acc)| (*a, *acc)))
            );
        };
        for i in 0..300 {
            trie.insert(account_key(&address(i)), alloy_rlp::encode(account(i, 0)));
            model.insert(address(i), account(i, 0));
            if i % 37 == 0 {
                check(&mut trie, &model);
            }
        }
        check(&mut trie, &model);
        for i in (0..300).step_by(3) {
            trie.insert(account_key(&address(i)), alloy_rlp::encode(account(i, 1)));
            model.insert(address(i), account(i, 1));
        }
        check(&mut trie, &model);
        for i in (0..300)
            .filter(|i| i % 4 != 0)
            .chain((0..300).filter(|i| i % 4 == 0))
        {
            let removed = trie.remove(&account_key(&address(i)));
            assert_eq!(removed, model.remove(&address(i)).map(alloy_rlp::encode));
            assert_eq!(trie.remove(&account_key(&address(i))), None);
            if i % 23 == 0 {
                check(&mut trie, &model);
            }
        }
        assert!(trie.is_empty());
        assert_eq!(trie.root(), EMPTY_ROOT_HASH);
    }

    /// Keys sharing their first 62 nibbles and one-byte values make short,
    /// inlined nodes and long extensions, the shapes random keys rarely reach.
    fn close_key(low: u16) -> B256 {
        let mut key = B256::ZERO;
        key[30..].copy_from_slice(&low.to_be_bytes());
        key
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn close_keys_match_hash_builder_after_every_operation(
            ops in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..3)), 1..60)
        ) {
            let (mut trie, mut model) = (StateTrie::new(), BTreeMap::new());
            for (low, value) in ops {
                let key = close_key(u16::from(low) * 3);
                trie.insert(key, value.clone());
                if value.is_empty() { model.remove(&key); } else { model.insert(key, value); }
                prop_assert_eq!(trie.root(), reference_root(&model));
                prop_assert_eq!(trie.len(), model.len());
            }
            let root = trie.root();
            for low in 0..=255u16 {
                let key = close_key(low * 3);
                let expected = model.get(&key).cloned();
                prop_assert_eq!(trie.get(&key), expected.as_deref());
                let proof = trie.proof(&key);
                prop_assert!(verify_proof(root, Nibbles::unpack(key), expected, &proof).is_ok());
            }
        }
    }

    #[test]
    fn proofs_verify_for_present_and_absent_keys_and_reject_wrong_values() {
        let mut trie = StateTrie::new();
        let absent = account_key(&address(0));
        assert!(trie.proof(&absent).is_empty());
        assert!(
            verify_proof(
                trie.root(),
                Nibbles::unpack(absent),
                None,
                &trie.proof(&absent)
            )
            .is_ok()
        );
        for i in 1..=300 {
            trie.insert(account_key(&address(i)), alloy_rlp::encode(account(i, 0)));
        }
        let root = trie.root();
        for i in 1..=300 {
            let key = account_key(&address(i));
            let proof = trie.proof(&key);
            let value = alloy_rlp::encode(account(i, 0));
            assert!(verify_proof(root, Nibbles::unpack(key), Some(value), &proof).is_ok());
            let wrong = alloy_rlp::encode(account(i, 1));
            assert!(verify_proof(root, Nibbles::unpack(key), Some(wrong), &proof).is_err());
            assert!(verify_proof(root, Nibbles::unpack(key), None, &proof).is_err());
        }
        for i in 301..400 {
            let key = account_key(&address(i));
            let proof = trie.proof(&key);
            assert!(verify_proof(root, Nibbles::unpack(key), None, &proof).is_ok());
            let claimed = alloy_rlp::encode(account(i, 0));
            assert!(verify_proof(root, Nibbles::unpack(key), Some(claimed), &proof).is_err());
        }
    }

    #[test]
    fn root_after_few_changes_recomputes_only_their_paths() {
        let keys: Vec<B256> = (0..100_100u64)
            .map(|i| keccak256(i.to_be_bytes()))
            .collect();
        let mut model: BTreeMap<B256, Vec<u8>> = keys[..100_000]
            .iter()
            .map(|key| (*key, key[..8].to_vec()))
            .collect();
        let mut trie = StateTrie::new();
        for (key, value) in &model {
            trie.insert(*key, value.clone());
        }
        trie.root();
        let first = trie.hashes_computed();
        assert!(first >= 100_000, "first root encoded {first} nodes");

        // 100 changes: a third removed, a third updated, a third new keys.
        for i in 0..100 {
            let (key, value) = match i % 3 {
                0 => (keys[i], vec![]),
                1 => (keys[i], vec![0xaa; 40]),
                _ => (keys[100_000 + i], vec![0xbb; 40]),
            };
            trie.insert(key, value.clone());
            if value.is_empty() {
                model.remove(&key)
            } else {
                model.insert(key, value)
            };
        }
        let root = trie.root();
        let second = trie.hashes_computed() - first;
        assert!(second < 100 * 70, "second root encoded {second} nodes");
        assert_eq!(root, reference_root(&model));
        trie.root();
        assert_eq!(
            trie.hashes_computed() - first,
            second,
            "an unchanged trie re-encodes nothing"
        );
    }
}
