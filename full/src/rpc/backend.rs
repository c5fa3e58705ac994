//! What the RPC layer reads and asks of the node: the chain behind
//! `Arc<RwLock<Importer>>` (store and head state) and a [`NodeHandle`] for
//! everything the node's loop owns (mempool, peers, sync, evidence).
//!
//! The node imports only finalized blocks into the [`Importer`], so today
//! `latest` = `safe` = `finalized` = the store's head. [`RpcState::latest`]
//! is the single place that decides what `latest` means, so that it can later
//! become the highest certified block without touching the handlers.

use crate::Importer;
use crate::rpc::RpcLimits;
use crate::rpc::subscriptions::Broadcaster;
use alloy_primitives::B256;
use luxtensor_light::{ChainSpec, Evidence, SignedTransaction};
use std::sync::{Arc, Mutex, RwLock};

/// Progress of a sync, as `eth_syncing` and the `syncing` subscription report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncProgress {
    /// Head number when this sync started.
    pub starting: u64,
    /// Head number now.
    pub current: u64,
    /// Highest block number a peer has announced.
    pub highest: u64,
}

/// What the node's loop provides beyond the store. Object-safe; the node
/// implements it over its mempool, swarm and sync state.
pub trait NodeHandle: Send + Sync + 'static {
    /// Checks a transaction against state and mempool, adds it, gossips it.
    /// `Err` carries the reason for the user (e.g. "nonce too low: ...").
    fn submit_transaction(&self, tx: SignedTransaction) -> Result<B256, String>;
    /// Number of connected peers.
    fn peer_count(&self) -> usize;
    /// `Some` while syncing, `None` when caught up.
    fn sync_status(&self) -> Option<SyncProgress>;
    /// The mempool's transactions (for `pending` queries and filters).
    fn pending_transactions(&self) -> Vec<SignedTransaction>;
    /// Hands verified slashing evidence to the node (to include or gossip).
    fn submit_evidence(&self, evidence: Evidence) -> Result<(), String>;
}

/// A [`NodeHandle`] with fixed answers, for tests and tools: it accepts
/// every transaction and evidence and remembers them.
#[derive(Debug, Default)]
pub struct StaticNode {
    /// What `peer_count` answers.
    pub peers: usize,
    /// What `sync_status` answers.
    pub sync: Mutex<Option<SyncProgress>>,
    /// Transactions submitted so far (also what `pending_transactions` answers).
    pub submitted: Mutex<Vec<SignedTransaction>>,
    /// Evidence submitted so far.
    pub evidence: Mutex<Vec<Evidence>>,
    /// If set, `submit_transaction` refuses with this reason.
    pub reject_with: Mutex<Option<String>>,
}

impl NodeHandle for StaticNode {
    fn submit_transaction(&self, tx: SignedTransaction) -> Result<B256, String> {
        if let Some(reason) = self.reject_with.lock().expect("not poisoned").clone() {
            return Err(reason);
        }
        let hash = tx.hash();
        self.submitted.lock().expect("not poisoned").push(tx);
        Ok(hash)
    }
    fn peer_count(&self) -> usize {
        self.peers
    }
    fn sync_status(&self) -> Option<SyncProgress> {
        *self.sync.lock().expect("not poisoned")
    }
    fn pending_transactions(&self) -> Vec<SignedTransaction> {
        self.submitted.lock().expect("not poisoned").clone()
    }
    fn submit_evidence(&self, evidence: Evidence) -> Result<(), String> {
        self.evidence.lock().expect("not poisoned").push(evidence);
        Ok(())
    }
}

/// Everything a request handler needs; cheap to clone (all shared).
#[derive(Clone)]
pub struct RpcState {
    /// The chain: store of finalized blocks and the state after the head.
    pub chain: Arc<RwLock<Importer>>,
    /// The node's loop.
    pub node: Arc<dyn NodeHandle>,
    /// The chain spec (chain id, epochs, fees).
    pub spec: ChainSpec,
    /// Limits applied to requests and connections.
    pub limits: RpcLimits,
    /// The event fan-out (subscriptions and polling filters).
    pub broadcaster: Broadcaster,
    pub(crate) caches: Arc<super::eth::Caches>,
    pub(crate) metrics: Arc<super::metrics::Metrics>,
}

impl std::fmt::Debug for RpcState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcState")
            .field("chain_id", &self.spec.chain_id)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RpcState {
    /// Builds the state from the node's chain and handle; the spec is the
    /// importer's. Creates the broadcaster (see [`RpcState::broadcaster`]).
    pub fn new(chain: Arc<RwLock<Importer>>, node: Arc<dyn NodeHandle>, limits: RpcLimits) -> Self {
        let spec = chain
            .read()
            .expect("chain lock not poisoned")
            .spec()
            .clone();
        let metrics = Arc::new(super::metrics::Metrics::default());
        let caches = Arc::new(super::eth::Caches::new(&limits));
        let renderer = super::subscriptions::Renderer {
            chain: chain.clone(),
            node: node.clone(),
            caches: caches.clone(),
            metrics: metrics.clone(),
        };
        let broadcaster = Broadcaster::new(&limits, renderer);
        Self {
            chain,
            node,
            spec,
            broadcaster,
            caches,
            metrics,
            limits,
        }
    }

    /// Reads the chain. A poisoned lock means the node panicked mid-import:
    /// the data is still the last committed block, so reads go on.
    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, Importer> {
        self.chain.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The block `latest` names: today the head of the store (the node
    /// imports finalized blocks only). Returns (number, hash).
    pub fn latest(&self) -> (u64, B256) {
        let chain = self.read();
        let head = chain.head();
        (head.number, head.hash())
    }

    /// The block `finalized` (and `safe`) names: today the same as [`Self::latest`].
    pub fn finalized(&self) -> (u64, B256) {
        self.latest()
    }
}
