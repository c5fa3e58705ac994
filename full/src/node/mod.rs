//! The node: the thin async shell that drives the sans-IO parts (consensus
//! engine, sync scheduler) with the network, the clock, the store and the
//! RPC server.
//!
//! One task owns the engine and the swarm and reacts to whichever comes
//! first: a network event, the engine's next wake-up, a command from the
//! RPC, a housekeeping tick, or shutdown. Finalized blocks go through the
//! [`Importer`] into the store and out to RPC subscribers. Range-synced
//! blocks are imported on a thread of their own ([`sync_import`]), which
//! reports back to the loop.

pub mod devnet;
mod handle;
mod serve;
pub mod sync_import;

pub use handle::{LiveNode, NodeCommand};
pub use serve::Throttle;

use crate::consensus::{Action, ConsensusConfig, Engine, EvidenceVerdict, Message, Root};
use crate::execution::epoch_position;
use crate::network::{
    BehaviourConfig, GossipMessage, Network, NetworkConfig, NetworkEvent, PeerStatus, ScoreConfig,
    SyncRequest, SyncResponse, service::now_ms, wire::CertificateMessage, wire::EvidenceMessage,
    wire::VoteMessage, wire::stamp_is_recent,
};
use crate::rpc::{BroadcastEvent, Broadcaster, RpcConfig, RpcLimits, RpcState};
use crate::slashing_protection::{
    DiskSlashingProtection, MemorySlashingProtection, SlashingProtection,
};
use crate::sync::manager::{SyncManager, SyncOutcome};
use crate::{ImportError, Importer, StoreError};
use alloy_primitives::B256;
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use luxtensor_light::Header;
use luxtensor_light::{Block, BlsSecretKey, ChainSpec, Vote};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use sync_import::{IMPORT_RUN, ImportReport, RunOutcome, SyncImporter};
use tokio::sync::mpsc;

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the store, the node key and the slashing-protection record live.
    pub data_dir: PathBuf,
    /// The chain.
    pub spec: ChainSpec,
    /// The validator key, if this node validates.
    pub validator_key: Option<BlsSecretKey>,
    /// p2p listen address.
    pub p2p_addr: Multiaddr,
    /// Peers to dial at start.
    pub bootnodes: Vec<Multiaddr>,
    /// Most connected peers.
    pub max_peers: u32,
    /// RPC servers, if any.
    pub rpc: Option<RpcConfig>,
    /// RPC limits.
    pub rpc_limits: RpcLimits,
    /// Test-only misbehaviour (serving sync requests, or voting).
    pub byzantine: Option<ByzantineServing>,
    /// Test-only slow link for the answers this node serves (benchmarks).
    pub serve_throttle: Option<Throttle>,
}

/// How a deliberately broken node answers sync requests or votes (for
/// tests of peer scoring and of slashing; never set in production).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByzantineServing {
    /// Blocks whose transactions do not match their headers.
    CorruptBodies,
    /// Announces its chain but never answers a range request.
    Silent,
    /// Answers with empty ranges.
    Empty,
    /// A validator that, with every vote, also signs and sends a vote for
    /// another block in the same slot: a slashable double vote, past its
    /// own slashing protection.
    DoubleVote,
}

/// Why the node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store could not be opened or read.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A block could not be imported.
    #[error("import: {0}")]
    Import(#[from] ImportError),
    /// The network could not start.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// The slashing-protection record could not be opened.
    #[error("slashing protection: {0}")]
    Protection(String),
    /// The RPC server could not start.
    #[error("rpc: {0}")]
    Rpc(String),
    /// The sync import thread could not start, or stopped (it panicked).
    #[error("sync import thread: {0}")]
    ImportThread(String),
    /// A file in the data directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// What a started node exposes to whoever runs it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The libp2p peer id.
    pub peer_id: PeerId,
    /// HTTP JSON-RPC address, if served.
    pub http: Option<std::net::SocketAddr>,
    /// WebSocket JSON-RPC address, if served.
    pub ws: Option<std::net::SocketAddr>,
    /// `/metrics` and `/health` address, if served.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Housekeeping ticks (seconds) between status questions to each peer.
const STATUS_EVERY_TICKS: u64 = 4;

/// The finalized block an importer holds, as an engine root.
pub fn root_from_importer(importer: &mut Importer) -> Result<Root, NodeError> {
    let spec = importer.spec().clone();
    let head = importer.head().clone();
    if head.is_genesis() {
        return Ok(Root::genesis(&spec));
    }
    let store = importer.store();
    let hash = head.hash();
    let block = store.block(&hash)?.ok_or_else(|| corrupt("head block"))?;
    let parent = store
        .block(&head.parent_hash)?
        .ok_or_else(|| corrupt("head's parent"))?;
    let qc = store.qc(&hash)?;
    let position = epoch_position(&spec, &parent.header.header, &head);
    let epoch_set = importer.validator_set(head.epoch)?;
    Ok(Root {
        block,
        state: importer.state().clone(),
        epoch_set,
        qc,
        position,
    })
}

fn corrupt(what: &'static str) -> NodeError {
    NodeError::Store(StoreError::Corrupt {
        what,
        reason: "missing".into(),
    })
}

/// The running node: engine, network, store, RPC.
pub struct Node {
    config: NodeConfig,
    chain: Arc<RwLock<Importer>>,
    engine: Engine,
    network: Network,
    live: Arc<LiveNode>,
    commands: mpsc::Receiver<NodeCommand>,
    broadcaster: Option<Broadcaster>,
    rpc: Option<crate::rpc::RpcHandle>,
    sync: SyncManager,
    /// Imports range-synced runs off the loop.
    sync_import: SyncImporter,
    /// The chain's head as last imported (kept here so that the loop does
    /// not wait for the chain lock while the import thread holds it).
    head: Header,
    genesis_hash: B256,
    last_progress_log_ms: u64,
    delayed: serve::DelayedReplies<(ResponseChannel<Vec<u8>>, SyncResponse)>,
    /// Status questions in flight, by request.
    status_requests: std::collections::HashMap<libp2p::request_response::OutboundRequestId, PeerId>,
    /// Housekeeping ticks so far.
    ticks: u64,
    /// Requests a silent test node never answers (see [`ByzantineServing::Silent`]).
    unanswered: std::collections::VecDeque<ResponseChannel<Vec<u8>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("engine", &self.engine)
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the store, starts the network and the RPC servers.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let io = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| NodeError::Io { path, source }
        };
        std::fs::create_dir_all(&config.data_dir).map_err(io(&config.data_dir))?;
        let mut importer = Importer::open(config.spec.clone(), config.data_dir.join("chain.redb"))?;
        let root = root_from_importer(&mut importer)?;
        let genesis_hash = config.spec.genesis_header().hash();
        let head = importer.head().clone();
        let chain = Arc::new(RwLock::new(importer));
        let sync_import = SyncImporter::start(chain.clone())
            .map_err(|e| NodeError::ImportThread(e.to_string()))?;
        let engine = Self::new_engine(&config, root)?;
        let key =
            crate::network::service::load_or_create_node_key(&config.data_dir.join("node.key"))?;
        let network = Network::start(
            key,
            NetworkConfig {
                chain_id: config.spec.chain_id,
                listen: config.p2p_addr.clone(),
                bootnodes: config.bootnodes.clone(),
                behaviour: BehaviourConfig {
                    max_peers: config.max_peers,
                    ..BehaviourConfig::default()
                },
                scores: ScoreConfig::default(),
            },
        )?;
        let (command_tx, commands) = mpsc::channel(4096);
        let live = Arc::new(LiveNode::new(command_tx, chain.clone()));
        let (rpc, broadcaster) = match &config.rpc {
            Some(rpc_config) => {
                let state = RpcState::new(chain.clone(), live.clone(), config.rpc_limits.clone());
                let handle = crate::rpc::serve(rpc_config.clone(), state)
                    .await
                    .map_err(|e| NodeError::Rpc(e.to_string()))?;
                let broadcaster = handle.broadcaster.clone();
                (Some(handle), Some(broadcaster))
            }
            None => (None, None),
        };
        Ok(Self {
            sync: SyncManager::new(),
            sync_import,
            head,
            config,
            chain,
            engine,
            network,
            live,
            commands,
            broadcaster,
            rpc,
            genesis_hash,
            last_progress_log_ms: 0,
            delayed: Default::default(),
            unanswered: Default::default(),
            status_requests: Default::default(),
            ticks: 0,
        })
    }

    fn new_engine(config: &NodeConfig, root: Root) -> Result<Engine, NodeError> {
        let protection: Box<dyn SlashingProtection> = match &config.validator_key {
            Some(_) => Box::new(
                DiskSlashingProtection::open(config.data_dir.join("slashing_protection.redb"))
                    .map_err(|e| NodeError::Protection(e.to_string()))?,
            ),
            None => Box::new(MemorySlashingProtection::default()),
        };
        Ok(Engine::new(
            config.spec.clone(),
            ConsensusConfig::for_slot(config.spec.slot_duration_ms),
            config.validator_key.clone(),
            protection,
            root,
        ))
    }

    /// What the node exposes (peer id, RPC addresses).
    pub fn info(&self) -> NodeInfo {
        let rpc = self.rpc.as_ref();
        NodeInfo {
            peer_id: self.network.local_peer_id(),
            http: rpc.map(|h| h.http_addr),
            ws: rpc.and_then(|h| h.ws_addr),
            metrics: rpc.and_then(|h| h.metrics_addr),
        }
    }

    /// The p2p addresses the node listens on.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.network.listen_addrs()
    }

    /// The shared chain (store and latest state).
    pub fn chain(&self) -> Arc<RwLock<Importer>> {
        self.chain.clone()
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NodeError> {
        tokio::pin!(shutdown);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let wakeup = self.engine.next_wakeup_ms().saturating_sub(now_ms());
            let sleep = tokio::time::sleep(Duration::from_millis(wakeup.min(60_000)));
            let reply_due = self
                .delayed
                .next_due_ms()
                .map(|due| due.saturating_sub(now_ms()));
            let replies = async {
                match reply_due {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = replies => {
                    for (channel, response) in self.delayed.pop_due(now_ms()) {
                        self.network.respond(channel, &response);
                    }
                }
                _ = &mut shutdown => break,
                event = self.network.next_event() => self.on_network_event(event)?,
                _ = sleep => self.engine.handle_tick(now_ms()),
                Some(command) = self.commands.recv() => self.on_command(command),
                _ = housekeeping.tick() => self.housekeeping(),
                report = self.sync_import.next_report() => {
                    let report = report
                        .ok_or_else(|| NodeError::ImportThread("stopped".into()))?;
                    self.on_import_report(report);
                }
            }
            self.drain_engine()?;
            self.drive_sync()?;
        }
        tracing::info!("node stopped");
        Ok(())
    }

    fn housekeeping(&mut self) {
        self.network.expire_bans();
        self.network.redial_bootnodes(now_ms());
        self.live.peers.store(
            self.network.peer_count(),
            std::sync::atomic::Ordering::Relaxed,
        );
        // Ask each peer where its chain is, every few seconds and never with
        // a question still open (a busy peer answers in turn, after the
        // ranges it is serving).
        self.ticks += 1;
        if self.ticks.is_multiple_of(STATUS_EVERY_TICKS) {
            let peers: Vec<PeerId> = self.network.peers().copied().collect();
            for peer in peers {
                self.ask_status(peer);
            }
        }
    }

    fn ask_status(&mut self, peer: PeerId) {
        if self.status_requests.values().any(|p| *p == peer) {
            return;
        }
        let id = self.network.request(peer, &SyncRequest::Status);
        self.status_requests.insert(id, peer);
    }

    fn on_command(&mut self, command: NodeCommand) {
        match command {
            NodeCommand::Transaction(tx) => match self.engine.submit_transaction((*tx).clone()) {
                Ok(()) => {
                    self.network
                        .publish(&GossipMessage::Transaction(tx.clone()));
                    self.notify(BroadcastEvent::NewTransaction(*tx));
                }
                Err(reason) => tracing::debug!(%reason, "transaction refused by the mempool"),
            },
            NodeCommand::Evidence(evidence) => {
                if let Err(reason) = self.engine.submit_evidence(evidence) {
                    tracing::warn!(%reason, "submitted evidence refused");
                }
            }
        }
    }

    fn notify(&self, event: BroadcastEvent) {
        if let Some(broadcaster) = &self.broadcaster {
            let _ = broadcaster.send(event);
        }
    }

    fn on_network_event(&mut self, event: NetworkEvent) -> Result<(), NodeError> {
        match event {
            NetworkEvent::Gossip { from, id, message } => self.on_gossip(from, id, message),
            NetworkEvent::Request {
                request, channel, ..
            } => {
                let Some(response) = self.answer(&request) else {
                    // A silent test node holds the request open (bounded)
                    // until the asker gives up on it.
                    if self.unanswered.len() >= serve::MAX_DELAYED {
                        self.unanswered.pop_front();
                    }
                    self.unanswered.push_back(channel);
                    return Ok(());
                };
                match self.config.serve_throttle {
                    Some(throttle) => {
                        let bytes = response.encode().len();
                        self.delayed
                            .push(throttle, now_ms(), bytes, (channel, response));
                    }
                    None => self.network.respond(channel, &response),
                }
            }
            NetworkEvent::Response { peer, id, response } => {
                if self.status_requests.remove(&id).is_some() {
                    match response {
                        SyncResponse::Status(status) => self.on_status(peer, status),
                        _ => self
                            .network
                            .penalise(peer, crate::network::Misbehaviour::ProtocolViolation),
                    }
                } else if let SyncResponse::Status(status) = &response {
                    self.on_status(peer, *status);
                } else if let SyncResponse::Blocks(blocks) = &response
                    && !self.sync.owns(id)
                {
                    // Answers to the engine's by-hash requests.
                    for block in blocks {
                        self.engine
                            .handle_message(Message::Proposal(Box::new(block.clone())));
                    }
                } else {
                    let penalties = self.sync.on_response(peer, id, response, now_ms());
                    for (peer, why) in penalties {
                        self.network.penalise(peer, why);
                    }
                }
            }
            NetworkEvent::RequestFailed {
                peer,
                id,
                timed_out,
            } => {
                let why = if self.status_requests.remove(&id).is_some() {
                    timed_out.then_some(crate::network::Misbehaviour::Timeout)
                } else {
                    self.sync.on_failure(peer, id, timed_out)
                };
                if let Some(why) = why {
                    self.network.penalise(peer, why);
                }
            }
            NetworkEvent::PeerConnected(peer) => {
                tracing::info!(%peer, peers = self.network.peer_count(), "peer connected");
                self.ask_status(peer);
            }
            NetworkEvent::PeerDisconnected(peer) => {
                tracing::info!(%peer, peers = self.network.peer_count(), "peer disconnected");
                self.sync.remove_peer(&peer);
            }
        }
        Ok(())
    }

    fn on_status(&mut self, peer: PeerId, status: PeerStatus) {
        if status.chain_id != self.config.spec.chain_id || status.genesis_hash != self.genesis_hash
        {
            tracing::warn!(%peer, "peer is on another chain");
            self.network
                .penalise(peer, crate::network::Misbehaviour::ProtocolViolation);
            return;
        }
        self.sync.update_peer(peer, status.finalized_number);
    }

    fn on_gossip(
        &mut self,
        from: PeerId,
        id: libp2p::gossipsub::MessageId,
        message: GossipMessage,
    ) {
        let valid = match message {
            GossipMessage::Block(block) => {
                let before = self.engine.stats().invalid_blocks;
                self.engine.handle_message(Message::Proposal(block));
                self.engine.stats().invalid_blocks == before
            }
            GossipMessage::Vote(VoteMessage { epoch, vote }) => {
                self.engine.handle_message(Message::Vote { epoch, vote });
                true
            }
            // A QC under an old stamp is still used, but not forwarded.
            GossipMessage::Certificate(message) => {
                let recent = stamp_is_recent(message.slot, self.engine.slot_at(now_ms()));
                self.engine.handle_message(Message::Certificate(message.qc));
                if !recent {
                    self.network.ignore(from, &id);
                    return;
                }
                true
            }
            // A forged or inconsistent proof counts against the sender;
            // one that is merely stale or known here does not. Only a proof
            // checked here (now, or the very one held) is forwarded, and a
            // valid proof under an old stamp is kept but not forwarded:
            // stamps only make a fresh resend a new gossip message, never a
            // replay.
            GossipMessage::Evidence(message) => {
                let recent = message.is_recent(self.engine.slot_at(now_ms()));
                match self.engine.handle_evidence(message.evidence) {
                    Ok(EvidenceVerdict::Unchecked) => {
                        self.network.ignore(from, &id);
                        return;
                    }
                    Ok(_) if !recent => {
                        self.network.ignore(from, &id);
                        return;
                    }
                    Ok(_) => true,
                    Err(rejection) => {
                        tracing::debug!(%from, %rejection, "gossiped evidence refused");
                        !rejection.is_fault()
                    }
                }
            }
            GossipMessage::Transaction(tx) => {
                if self.engine.submit_transaction((*tx).clone()).is_ok() {
                    self.live.remember_pending((*tx).clone());
                    self.notify(BroadcastEvent::NewTransaction(*tx));
                }
                true
            }
        };
        self.network.report(from, &id, valid);
    }

    /// Carries out what the engine asked for.
    fn drain_engine(&mut self) -> Result<(), NodeError> {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Broadcast(Message::Proposal(block)) => {
                    self.network.publish(&GossipMessage::Block(block));
                }
                Action::Broadcast(Message::Vote { epoch, vote }) => {
                    if let (Some(ByzantineServing::DoubleVote), Some(key)) =
                        (self.config.byzantine, &self.config.validator_key)
                    {
                        let other = alloy_primitives::keccak256(vote.block_hash);
                        let chain_id = self.config.spec.chain_id;
                        let second =
                            Vote::sign(key, chain_id, vote.slot, other, vote.validator_index);
                        self.network.publish(&GossipMessage::Vote(VoteMessage {
                            epoch,
                            vote: second,
                        }));
                    }
                    self.network
                        .publish(&GossipMessage::Vote(VoteMessage { epoch, vote }));
                }
                // Stamped with the current slot, so that the engine's
                // resend of its highest QC is a new gossip message.
                Action::Broadcast(Message::Certificate(qc)) => {
                    let slot = self.engine.slot_at(now_ms());
                    self.network
                        .publish(&GossipMessage::Certificate(CertificateMessage { slot, qc }));
                }
                Action::Broadcast(Message::BlockRequest(hash)) => self.request_block(hash),
                // This node's own proofs and resends go out here, stamped
                // with the current slot so that a resend is a new gossip
                // message (ids are content hashes). A received proof that
                // the engine passes on in the slot it was stamped in has the
                // same bytes, so gossipsub drops the duplicate and forwards
                // the original itself once it is reported valid; passed on
                // in a later slot, it goes out once more (once per node).
                Action::Broadcast(Message::Evidence(evidence)) => {
                    let slot = self.engine.slot_at(now_ms());
                    self.network
                        .publish(&GossipMessage::Evidence(EvidenceMessage { slot, evidence }));
                }
                Action::Finalized(blocks) => self.persist_finalized(&blocks)?,
                Action::Misbehaviour { evidence, offender } => {
                    tracing::warn!(%offender, ?evidence, "slashable misbehaviour seen");
                }
            }
        }
        Ok(())
    }

    /// Asks up to two peers for a block the engine misses (by hash, not by
    /// broadcast: no amplification).
    fn request_block(&mut self, hash: B256) {
        let peers: Vec<PeerId> = self.network.peers().copied().take(2).collect();
        for peer in peers {
            self.network
                .request(peer, &SyncRequest::BlocksByHash(vec![hash]));
        }
    }

    /// Imports blocks the engine finalized and tells RPC subscribers.
    fn persist_finalized(&mut self, blocks: &[Block]) -> Result<(), NodeError> {
        let mut chain = self.chain.write().expect("lock");
        let fresh: Vec<Block> = blocks
            .iter()
            .filter(|b| b.header.number > chain.head().number)
            .cloned()
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        match chain.import_chain(&fresh) {
            Ok(_) => {}
            // A gap: range sync moved the store while the engine finalized
            // from an older root; sync fills it.
            Err(e) if matches!(e.error, ImportError::NotOnHead { .. }) => {
                tracing::debug!(error = %e.error, "finalized blocks do not extend the store yet");
                return Ok(());
            }
            // The engine executed these blocks already; any other failure is
            // a disagreement between the two paths and must stop the node.
            Err(e) => return Err(NodeError::Import(e.error)),
        }
        let root = self.engine.root();
        if let Some(qc) = &root.qc {
            chain.store().put_qc(&root.block.hash(), qc)?;
        }
        let mut events = Vec::with_capacity(fresh.len());
        for block in fresh {
            let receipts = chain.store().receipts(&block.hash())?.unwrap_or_default();
            let hashes: Vec<B256> = block.transactions.iter().map(|t| t.hash()).collect();
            self.live.mined(&hashes);
            events.push(BroadcastEvent::new_block(block, receipts));
        }
        let head = chain.head().clone();
        drop(chain);
        self.head = head.clone();
        tracing::info!(
            number = head.number,
            slot = head.slot,
            epoch = head.epoch,
            hash = %head.hash(),
            "finalized"
        );
        for event in events {
            self.notify(event);
        }
        Ok(())
    }

    fn answer(&self, request: &SyncRequest) -> Option<SyncResponse> {
        // A silent node still announces its chain (so that it is asked for
        // ranges), then never serves them.
        if self.config.byzantine == Some(ByzantineServing::Silent)
            && !matches!(request, SyncRequest::Status)
        {
            return None;
        }
        if let SyncRequest::Status = request {
            // From the cached head: no wait for an import holding the lock.
            return Some(SyncResponse::Status(serve::status(
                &self.config.spec,
                &self.head,
                self.genesis_hash,
            )));
        }
        let chain = self.chain.read().expect("lock");
        let mut response = serve::answer(&chain, &self.engine, request, self.genesis_hash);
        drop(chain);
        if let (Some(mode), SyncResponse::Blocks(blocks)) = (self.config.byzantine, &mut response) {
            serve::corrupt(mode, blocks);
        }
        Some(response)
    }

    /// Leaves gossip for range sync when far behind, and back when caught
    /// up; hands downloaded runs to the import thread.
    fn drive_sync(&mut self) -> Result<(), NodeError> {
        let head = self.head.clone();
        for outgoing in self.sync.poll_requests(&head, now_ms()) {
            let id = self.network.request(outgoing.peer, &outgoing.request);
            self.sync.sent(id, &outgoing);
        }
        for (peer, why) in self.sync.penalties() {
            self.network.penalise(peer, why);
        }
        loop {
            let room = self.sync_import.room().min(IMPORT_RUN);
            if room == 0 {
                break;
            }
            let ready = self.sync.take_ready(room);
            if ready.is_empty() {
                break;
            }
            self.sync_import.submit(self.sync.generation(), ready);
        }
        match self.sync.outcome(&head, !self.sync_import.is_idle()) {
            SyncOutcome::Idle | SyncOutcome::Syncing => {}
            SyncOutcome::Started => {
                self.notify(BroadcastEvent::SyncStatus { syncing: true });
            }
            SyncOutcome::CaughtUp => {
                // Restart the engine from the synced head; gossip takes over.
                let root = root_from_importer(&mut self.chain.write().expect("lock"))?;
                self.engine.restart_from(root);
                self.engine.handle_tick(now_ms());
                self.notify(BroadcastEvent::SyncStatus { syncing: false });
                tracing::info!(
                    finalized = head.number,
                    "sync complete; following the head by gossip"
                );
            }
        }
        *self.live.sync.lock().expect("lock") = self
            .sync
            .is_syncing()
            .then(|| self.sync.progress(head.number));
        Ok(())
    }

    /// A run came back from the import thread.
    fn on_import_report(&mut self, report: ImportReport) {
        tracing::debug!(
            blocks = report.blocks,
            head = report.head.number,
            queued = self.sync_import.queued_blocks(),
            "sync run imported"
        );
        self.head = report.head;
        match report.outcome {
            RunOutcome::Imported => {
                self.sync
                    .on_imported(report.generation, report.blocks, &self.head);
            }
            RunOutcome::Failed { number, error } => {
                tracing::warn!(%error, number, "synced block refused");
                if let Some(peer) = self
                    .sync
                    .on_import_error(report.generation, number, &self.head)
                {
                    self.network
                        .penalise(peer, crate::network::Misbehaviour::InvalidData);
                }
            }
            RunOutcome::Skipped => {}
        }
        self.log_progress(self.head.number);
    }

    fn log_progress(&mut self, head: u64) {
        let now = now_ms();
        if now.saturating_sub(self.last_progress_log_ms) < 3000 {
            return;
        }
        self.last_progress_log_ms = now;
        let progress = self.sync.progress(head);
        let rate = self.sync.blocks_per_second(now);
        let remaining = progress.highest.saturating_sub(head);
        let eta_s = if rate > 0.0 {
            remaining as f64 / rate
        } else {
            f64::INFINITY
        };
        tracing::info!(
            height = head,
            target = progress.highest,
            blocks_per_s = format!("{rate:.0}"),
            peers = self.network.peer_count(),
            eta_s = format!("{eta_s:.0}"),
            "syncing"
        );
    }
}
