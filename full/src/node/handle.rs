//! What the RPC server may ask of the running node: submit transactions and
//! evidence, read peers and sync progress. The node loop owns the engine; the
//! handle talks to it through bounded channels and shared counters.

use crate::Importer;
use crate::execution::next_base_fee;
use crate::rpc::{NodeHandle, SyncProgress};
use alloy_consensus::Transaction as _;
use alloy_primitives::{B256, U256};
use luxtensor_light::{Evidence, SignedTransaction};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::mpsc;

/// Most pending transactions the handle remembers for `eth_subscribe` and
/// `txpool`-style reads.
const RECENT_PENDING: usize = 4096;

/// Inputs the RPC sends into the node loop.
#[derive(Debug)]
pub enum NodeCommand {
    /// A transaction to add to the mempool and gossip.
    Transaction(Box<SignedTransaction>),
    /// Evidence to include in a block.
    Evidence(Evidence),
}

/// The node side of the RPC's [`NodeHandle`].
#[derive(Debug)]
pub struct LiveNode {
    commands: mpsc::Sender<NodeCommand>,
    chain: Arc<RwLock<Importer>>,
    chain_id: u64,
    /// Connected peers, kept current by the node loop.
    pub peers: AtomicUsize,
    /// Sync progress while catching up.
    pub sync: Mutex<Option<SyncProgress>>,
    pending: Mutex<VecDeque<SignedTransaction>>,
}

impl LiveNode {
    /// A handle sending into `commands`, checking transactions against `chain`.
    pub fn new(commands: mpsc::Sender<NodeCommand>, chain: Arc<RwLock<Importer>>) -> Self {
        let chain_id = chain.read().expect("lock").spec().chain_id;
        Self {
            commands,
            chain,
            chain_id,
            peers: AtomicUsize::new(0),
            sync: Mutex::new(None),
            pending: Mutex::new(VecDeque::new()),
        }
    }

    /// Forgets pending transactions that a block included.
    pub fn mined(&self, hashes: &[B256]) {
        let mut pending = self.pending.lock().expect("lock");
        pending.retain(|tx| !hashes.contains(&tx.hash()));
    }

    /// Remembers a transaction that reached the mempool by gossip.
    pub fn remember_pending(&self, tx: SignedTransaction) {
        let mut pending = self.pending.lock().expect("lock");
        if pending.len() >= RECENT_PENDING {
            pending.pop_front();
        }
        pending.push_back(tx);
    }

    /// Stateless and state checks that geth also does before accepting.
    fn precheck(&self, tx: &SignedTransaction) -> Result<(), String> {
        let envelope = tx.envelope();
        if envelope.chain_id() != Some(self.chain_id) {
            return Err(format!(
                "invalid chain id: have {:?}, want {}",
                envelope.chain_id(),
                self.chain_id
            ));
        }
        let sender = tx
            .recover_sender()
            .map_err(|e| format!("invalid sender: {e}"))?;
        let chain = self.chain.read().expect("lock");
        let account = chain.state().account(&sender);
        if tx.nonce() < account.nonce {
            return Err(format!(
                "nonce too low: next nonce {}, tx nonce {}",
                account.nonce,
                tx.nonce()
            ));
        }
        let base_fee = next_base_fee(chain.head());
        if u128::from(base_fee) > envelope.max_fee_per_gas() {
            return Err(format!(
                "max fee per gas less than block base fee: maxFeePerGas: {}, baseFee: {base_fee}",
                envelope.max_fee_per_gas()
            ));
        }
        let cost = U256::from(tx.gas_limit()) * U256::from(envelope.max_fee_per_gas()) + tx.value();
        if account.balance < cost {
            return Err(format!(
                "insufficient funds for gas * price + value: address {sender} have {} want {cost}",
                account.balance
            ));
        }
        Ok(())
    }
}

impl NodeHandle for LiveNode {
    fn submit_transaction(&self, tx: SignedTransaction) -> Result<B256, String> {
        self.precheck(&tx)?;
        let hash = tx.hash();
        self.commands
            .try_send(NodeCommand::Transaction(Box::new(tx.clone())))
            .map_err(|_| "txpool is full or the node is shutting down".to_string())?;
        self.remember_pending(tx);
        Ok(hash)
    }

    fn peer_count(&self) -> usize {
        self.peers.load(Ordering::Relaxed)
    }

    fn sync_status(&self) -> Option<SyncProgress> {
        *self.sync.lock().expect("lock")
    }

    fn pending_transactions(&self) -> Vec<SignedTransaction> {
        self.pending.lock().expect("lock").iter().cloned().collect()
    }

    fn submit_evidence(&self, evidence: Evidence) -> Result<(), String> {
        self.commands
            .try_send(NodeCommand::Evidence(evidence))
            .map_err(|_| "the node is busy or shutting down".to_string())
    }
}
