//! The tree of blocks above the finalized block: every valid block a node
//! has seen, executed on its parent's state, with its certificate once one
//! is known. Fork choice and the two-chain finality rule live here. Pure: no
//! I/O; the consensus engine drives it and hands finalized blocks to the
//! store.

use crate::execution::{self, EpochPosition};
use crate::import::recover_senders;
use crate::state::ChainState;
use alloy_primitives::B256;
use luxtensor_light::qc::{SharedVerifiedCache, VerifiedCache};
use luxtensor_light::verify::HeaderError;
use luxtensor_light::{
    Block, ChainSpec, QcError, QuorumCert, SignedHeader, ValidatorSet, bls, check_header,
    check_link,
};
use std::collections::HashMap;

/// Most blocks the tree holds above the finalized block; past it, new blocks
/// are refused until finality prunes (a finality stall must not grow memory).
pub const MAX_TREE_BLOCKS: usize = 1024;

/// Why a block was not added.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Its parent is not in the tree (ask peers for it).
    #[error("unknown parent {0}")]
    UnknownParent(B256),
    /// It does not descend from the finalized block (or is the finalized block).
    #[error("block {0} does not extend the finalized chain")]
    Stale(B256),
    /// The tree is full.
    #[error("the block tree holds {MAX_TREE_BLOCKS} blocks; finality has stalled")]
    Full,
    /// Header, body or execution broke a rule.
    #[error("invalid block: {0}")]
    Invalid(String),
}

/// One block of the tree.
#[derive(Debug, Clone)]
pub struct TreeNode {
    /// The block's hash, computed once when it entered the tree.
    hash: B256,
    /// The block.
    pub block: Block,
    /// The state after it.
    pub state: ChainState,
    /// The validator set of its epoch (the set that signs it and certifies it).
    pub epoch_set: ValidatorSet,
    /// Its certificate, once known.
    pub qc: Option<QuorumCert>,
    /// Where it sits in its epoch.
    pub position: EpochPosition,
}

impl TreeNode {
    /// The block hash.
    pub fn hash(&self) -> B256 {
        self.hash
    }

    /// The validator set of a child's epoch, and that epoch: a child of a
    /// block after its epoch's ending block whose own parent QC proves the
    /// ending block final starts the next epoch.
    pub fn child_epoch(&self) -> (u64, ValidatorSet) {
        let header = &self.block.header;
        let rotation = self.state.rotation();
        let ending_final = self.position == EpochPosition::AfterEnd
            && header.slot == header.parent_qc.slot + 1
            && header.parent_qc.slot >= rotation.ending_block_slot();
        if ending_final {
            // Keys carried over from this epoch are not decoded again.
            let set = ValidatorSet::new_reusing_keys(
                rotation.current_validators().to_vec(),
                &self.epoch_set,
            )
            .expect("the rotation never produces an invalid set");
            (header.epoch + 1, set)
        } else {
            (header.epoch, self.epoch_set.clone())
        }
    }
}

/// Blocks that became final, oldest first.
pub type Finalized = Vec<Block>;

/// The non-finalized blocks a node knows, rooted at the finalized block.
#[derive(Debug)]
pub struct BlockTree {
    spec: ChainSpec,
    root: B256,
    nodes: HashMap<B256, TreeNode>,
    /// The certified block with the highest slot: fork choice builds on it.
    highest_certified: B256,
    /// Seals and parent QCs already verified (shared with the engine).
    verified: SharedVerifiedCache,
}

impl BlockTree {
    /// A tree whose root is the finalized `block`, with the state after it,
    /// its epoch's set, and its certificate if known (`None` for genesis,
    /// whose children carry the placeholder QC).
    pub fn new(
        spec: ChainSpec,
        block: Block,
        state: ChainState,
        epoch_set: ValidatorSet,
        qc: Option<QuorumCert>,
        position: EpochPosition,
    ) -> Self {
        let root = block.hash();
        let node = TreeNode {
            hash: root,
            block,
            state,
            epoch_set,
            qc,
            position,
        };
        Self {
            spec,
            root,
            nodes: HashMap::from([(root, node)]),
            highest_certified: root,
            verified: VerifiedCache::shared(VerifiedCache::DEFAULT_CAPACITY),
        }
    }

    /// Checks seals and parent QCs through `cache` from now on (see
    /// [`VerifiedCache`]): a seal or QC verified before is not paired again.
    pub fn set_verified_cache(&mut self, cache: SharedVerifiedCache) {
        self.verified = cache;
    }

    /// The finalized block the tree grows from.
    pub fn root(&self) -> &TreeNode {
        &self.nodes[&self.root]
    }

    /// A block of the tree.
    pub fn get(&self, hash: &B256) -> Option<&TreeNode> {
        self.nodes.get(hash)
    }

    /// The validator set of `epoch`, if a block of the tree belongs to it
    /// (all blocks of one epoch share its set: it was fixed before the epoch began).
    pub fn set_of_epoch(&self, epoch: u64) -> Option<ValidatorSet> {
        self.nodes
            .values()
            .find(|n| n.block.header.epoch == epoch)
            .map(|n| n.epoch_set.clone())
    }

    /// Whether the tree holds `hash`.
    pub fn contains(&self, hash: &B256) -> bool {
        self.nodes.contains_key(hash)
    }

    /// Number of blocks held, root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: the root is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The certified block with the highest slot (the root if none is higher):
    /// a proposer extends it.
    pub fn highest_certified(&self) -> &TreeNode {
        &self.nodes[&self.highest_certified]
    }

    /// Verifies `block` against its parent (header rules, seal, parent QC,
    /// body, execution) and adds it. Adding a block also certifies its
    /// parent with the QC it carries, which may finalize blocks.
    pub fn insert(&mut self, block: Block) -> Result<Finalized, TreeError> {
        self.insert_hashed(block.hash(), block)
    }

    /// [`Self::insert`] for a block whose hash the caller already computed
    /// (`hash` must be `block.hash()`).
    pub(crate) fn insert_hashed(
        &mut self,
        hash: B256,
        block: Block,
    ) -> Result<Finalized, TreeError> {
        debug_assert_eq!(hash, block.hash());
        if self.nodes.contains_key(&hash) {
            return Ok(Vec::new());
        }
        let parent_hash = block.header.parent_hash;
        if self.nodes.contains_key(&parent_hash)
            && self.nodes.len() >= MAX_TREE_BLOCKS
            && !self.evict_one(parent_hash)
        {
            return Err(TreeError::Full);
        }
        let parent = self
            .nodes
            .get(&parent_hash)
            .ok_or(TreeError::UnknownParent(parent_hash))?;
        if block.header.number <= self.root().block.header.number {
            return Err(TreeError::Stale(hash));
        }

        let (epoch, set) = parent.child_epoch();
        let header = &block.header;
        let invalid = |e: &dyn std::fmt::Display| TreeError::Invalid(e.to_string());
        if header.epoch != epoch {
            return Err(TreeError::Invalid(format!(
                "epoch {} where the parent leads to epoch {epoch}",
                header.epoch
            )));
        }
        check_header(header, &set, &self.spec).map_err(|e| invalid(&e))?;
        self.verify_seal(hash, header, &set)
            .map_err(|e| invalid(&e))?;
        if let Some(qc) =
            check_link(header, &parent.block.header, &parent.epoch_set).map_err(|e| invalid(&e))?
        {
            qc.verify_cached(&parent.epoch_set, self.spec.chain_id, &self.verified)
                .map_err(|e| invalid(&HeaderError::BadParentQc(e)))?;
        }
        block.verify_body().map_err(|e| invalid(&e))?;
        let senders = recover_senders(&block.transactions).map_err(|e| invalid(&e))?;
        let mut state = parent.state.clone();
        let parent_header = parent.block.header.header.clone();
        execution::execute_block_cached(
            &mut state,
            &self.spec,
            &parent_header,
            &block,
            &senders,
            Some(&self.verified),
        )
        .map_err(|e| invalid(&e))?;
        let position = execution::epoch_position(&self.spec, &parent_header, header);
        let parent_qc = header.parent_qc.clone();
        self.nodes.insert(
            hash,
            TreeNode {
                hash,
                block,
                state,
                epoch_set: set,
                qc: None,
                position,
            },
        );
        if parent_qc == QuorumCert::genesis() {
            return Ok(Vec::new());
        }
        Ok(self.certify(parent_qc))
    }

    /// The proposer's seal of `header`, whose hash is `hash` (already
    /// checked by [`check_header`], so the proposer index is in `set`),
    /// through the cache.
    fn verify_seal(
        &self,
        hash: B256,
        header: &SignedHeader,
        set: &ValidatorSet,
    ) -> Result<(), HeaderError> {
        let index = header.proposer_index;
        let key = set
            .decoded_keys()
            .get(index as usize)
            .ok_or(HeaderError::BadSeal(QcError::SignerOutsideSet {
                index: index as usize,
                set_len: set.len(),
            }))?;
        let root = bls::proposal_signing_root(self.spec.chain_id, &hash);
        let signature = &header.proposer_signature;
        let entry = VerifiedCache::signature_key(&root, set, index, signature);
        VerifiedCache::check(
            &self.verified,
            entry,
            || (),
            || {
                bls::verify(key, &root, signature).map_err(|e| {
                    HeaderError::BadSeal(match e {
                        bls::BlsError::VerificationFailed => QcError::BadSignature,
                        other => QcError::MalformedSignature(other),
                    })
                })
            },
        )
    }

    /// Records a certificate (already verified against the set of the
    /// block's epoch) for a block of the tree. Returns the blocks it
    /// finalizes by the two-chain rule: a certified block whose certified
    /// child sits in the very next slot is final, with its ancestors.
    pub fn certify(&mut self, qc: QuorumCert) -> Finalized {
        let Some(node) = self.nodes.get_mut(&qc.block_hash) else {
            return Vec::new();
        };
        if node.qc.is_some() {
            return Vec::new();
        }
        let slot = qc.slot;
        node.qc = Some(qc);
        let (hash, header) = (node.hash(), node.block.header.header.clone());
        if slot > self.highest_certified().block.header.slot {
            self.highest_certified = hash;
        }
        // This block certified: its parent is final if it sits in the slot
        // right before, in the same epoch (a QC of the next epoch's set says
        // nothing about what the previous set is locked on).
        let parent_final = self
            .nodes
            .get(&header.parent_hash)
            .is_some_and(|p| p.qc.is_some() && p.block.header.epoch == header.epoch);
        if header.parent_qc != QuorumCert::genesis()
            && header.slot == header.parent_qc.slot + 1
            && parent_final
        {
            return self.finalize(header.parent_hash);
        }
        Vec::new()
    }

    /// Makes room when the tree is full: drops the oldest uncertified block
    /// without children that fork choice does not build on. False if none.
    fn evict_one(&mut self, keep: B256) -> bool {
        let parents: std::collections::HashSet<B256> = self
            .nodes
            .values()
            .map(|n| n.block.header.parent_hash)
            .collect();
        let victim = self
            .nodes
            .iter()
            .filter(|(h, n)| {
                **h != self.root
                    && **h != self.highest_certified
                    && **h != keep
                    && n.qc.is_none()
                    && !parents.contains(*h)
            })
            .min_by_key(|(h, n)| (n.block.header.slot, **h))
            .map(|(h, _)| *h);
        match victim {
            Some(hash) => self.nodes.remove(&hash).is_some(),
            None => false,
        }
    }

    /// Moves the root up to `hash`, returning the newly final blocks in
    /// order, and drops every block that does not descend from it.
    fn finalize(&mut self, hash: B256) -> Finalized {
        let Some(new_root) = self.nodes.get(&hash) else {
            return Vec::new();
        };
        if new_root.block.header.number <= self.root().block.header.number {
            return Vec::new();
        }
        let mut chain = Vec::new();
        let mut cursor = hash;
        while cursor != self.root {
            let Some(node) = self.nodes.get(&cursor) else {
                return Vec::new(); // not a descendant of the root: a bug elsewhere, keep the tree as is
            };
            chain.push(node.block.clone());
            cursor = node.block.header.parent_hash;
        }
        chain.reverse();
        self.root = hash;
        let root_number = self.root().block.header.number;
        // Keep only descendants of the new root.
        let mut keep: HashMap<B256, TreeNode> = HashMap::new();
        let mut nodes = std::mem::take(&mut self.nodes);
        let root_node = nodes.remove(&hash).expect("checked above");
        keep.insert(hash, root_node);
        let mut remaining: Vec<(B256, TreeNode)> = nodes
            .into_iter()
            .filter(|(_, n)| n.block.header.number > root_number)
            .collect();
        remaining.sort_by_key(|(_, n)| n.block.header.number);
        for (h, node) in remaining {
            if keep.contains_key(&node.block.header.parent_hash) {
                keep.insert(h, node);
            }
        }
        self.nodes = keep;
        if !self.nodes.contains_key(&self.highest_certified) {
            self.highest_certified = hash;
        }
        chain
    }
}
