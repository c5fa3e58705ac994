//! The network service: owns the libp2p swarm, decodes what peers send,
//! keeps their scores, and hands the node plain events.

use super::behaviour::{Behaviour, BehaviourConfig, BehaviourEvent};
use super::peer_score::{Misbehaviour, PeerScores, ScoreConfig, Verdict};
use super::wire::{GossipMessage, SyncRequest, SyncResponse, Topic, WireError};
use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identity::Keypair, noise, tcp, yamux};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The node key file could not be read or written.
    #[error("node key {path}: {reason}")]
    NodeKey {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The swarm could not be built or could not listen.
    #[error("libp2p: {0}")]
    Transport(String),
}

/// How the node joins the network.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Chain id (names the gossip topics).
    pub chain_id: u64,
    /// Address to listen on (port 0 picks a free one).
    pub listen: Multiaddr,
    /// Peers to dial at start.
    pub bootnodes: Vec<Multiaddr>,
    /// Behaviour knobs (peer cap, request timeout).
    pub behaviour: BehaviourConfig,
    /// Peer scoring thresholds.
    pub scores: ScoreConfig,
}

/// What happened on the network that the node must handle.
#[derive(Debug)]
pub enum NetworkEvent {
    /// A decoded gossip message; report its validity with [`Network::report`].
    Gossip {
        /// The peer that forwarded it.
        from: PeerId,
        /// Its id, for [`Network::report`].
        id: MessageId,
        /// The message.
        message: GossipMessage,
    },
    /// A peer asks something; answer with [`Network::respond`].
    Request {
        /// Who asks.
        peer: PeerId,
        /// What.
        request: SyncRequest,
        /// Where the answer goes.
        channel: ResponseChannel<Vec<u8>>,
    },
    /// The answer to one of our requests.
    Response {
        /// Who answered.
        peer: PeerId,
        /// Our request.
        id: OutboundRequestId,
        /// The answer.
        response: SyncResponse,
    },
    /// One of our requests failed (timeout, refused, bad answer).
    RequestFailed {
        /// The peer asked.
        peer: PeerId,
        /// Our request.
        id: OutboundRequestId,
        /// Whether it failed by running out of time (the asker decides
        /// whether that is the peer's fault).
        timed_out: bool,
    },
    /// A peer connected.
    PeerConnected(PeerId),
    /// A peer's last connection closed.
    PeerDisconnected(PeerId),
}

/// The swarm and its bookkeeping.
pub struct Network {
    swarm: Swarm<Behaviour>,
    chain_id: u64,
    /// The bootnodes, dialled again while not connected (see
    /// [`Network::redial_bootnodes`]).
    bootnodes: Vec<Multiaddr>,
    /// When the bootnodes were last dialled (ms since the epoch).
    last_dial_ms: u64,
    topics: HashMap<gossipsub::TopicHash, Topic>,
    scores: PeerScores<PeerId>,
    connected: HashSet<PeerId>,
    /// Invalid messages and bad answers seen (for metrics and tests).
    pub penalties: u64,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("peer_id", self.swarm.local_peer_id())
            .field("peers", &self.connected.len())
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Loads the node key from `path`, or creates one there (ed25519, protobuf
/// encoding as libp2p writes it; the file is readable by its owner only).
pub fn load_or_create_node_key(path: &Path) -> Result<Keypair, NetworkError> {
    let err = |reason: String| NetworkError::NodeKey {
        path: path.display().to_string(),
        reason,
    };
    if path.exists() {
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        return Keypair::from_protobuf_encoding(&bytes).map_err(|e| err(e.to_string()));
    }
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| err(e.to_string()))?;
    write_private(path, &bytes).map_err(|e| err(e.to_string()))?;
    Ok(key)
}

/// Writes a secret file atomically, readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl Network {
    /// Builds the swarm, listens, subscribes to the topics and dials the bootnodes.
    pub fn start(key: Keypair, config: NetworkConfig) -> Result<Self, NetworkError> {
        let transport = |e: &dyn std::fmt::Display| NetworkError::Transport(e.to_string());
        let behaviour_config = config.behaviour.clone();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| transport(&e))?
            .with_behaviour(|key| Behaviour::new(key, &behaviour_config))
            .map_err(|e| transport(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let mut topics = HashMap::new();
        for topic in Topic::ALL {
            let ident = IdentTopic::new(topic.name(config.chain_id));
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&ident)
                .map_err(|e| transport(&e))?;
            topics.insert(ident.hash(), topic);
        }
        swarm
            .listen_on(config.listen.clone())
            .map_err(|e| transport(&e))?;
        for addr in &config.bootnodes {
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootnode");
            }
        }
        Ok(Self {
            swarm,
            chain_id: config.chain_id,
            bootnodes: config.bootnodes,
            last_dial_ms: now_ms(),
            topics,
            scores: PeerScores::new(config.scores),
            connected: HashSet::new(),
            penalties: 0,
        })
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// The addresses the swarm listens on (known once the listener is up).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.swarm.listeners().cloned().collect()
    }

    /// Connected peers.
    pub fn peers(&self) -> impl Iterator<Item = &PeerId> {
        self.connected.iter()
    }

    /// The swarm itself, for tests that play a misbehaving peer (sending
    /// bytes no honest node would).
    #[doc(hidden)]
    pub fn swarm_mut(&mut self) -> &mut Swarm<Behaviour> {
        &mut self.swarm
    }

    /// Number of connected peers.
    pub fn peer_count(&self) -> usize {
        self.connected.len()
    }

    /// Gossips `message` (an error only means no peer is subscribed yet).
    pub fn publish(&mut self, message: &GossipMessage) {
        let topic = IdentTopic::new(message.topic().name(self.chain_id));
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, message.encode())
        {
            tracing::debug!(error = %e, topic = ?message.topic(), "gossip not sent");
        }
    }

    /// Tells gossipsub whether to forward a received message, and penalises
    /// the sender of an invalid one.
    pub fn report(&mut self, from: PeerId, id: &MessageId, valid: bool) {
        let acceptance = if valid {
            MessageAcceptance::Accept
        } else {
            MessageAcceptance::Reject
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, &from, acceptance);
        if !valid {
            self.penalise(from, Misbehaviour::InvalidData);
        }
    }

    /// Tells gossipsub not to forward a received message that is well-formed
    /// but out of date (a stale evidence stamp), without penalising the
    /// sender.
    pub fn ignore(&mut self, from: PeerId, id: &MessageId) {
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, &from, MessageAcceptance::Ignore);
    }

    /// Sends a sync request.
    pub fn request(&mut self, peer: PeerId, request: &SyncRequest) -> OutboundRequestId {
        self.swarm
            .behaviour_mut()
            .sync
            .send_request(&peer, request.encode())
    }

    /// Answers a request (ignored if the peer is gone).
    pub fn respond(&mut self, channel: ResponseChannel<Vec<u8>>, response: &SyncResponse) {
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, response.encode());
    }

    /// Lowers a peer's score; bans and disconnects it at the threshold.
    pub fn penalise(&mut self, peer: PeerId, why: Misbehaviour) {
        self.penalties += 1;
        let verdict = self.scores.penalise(&peer, why, now_ms());
        tracing::debug!(%peer, ?why, ?verdict, "peer penalised");
        if let Verdict::Ban { until_ms } = verdict {
            tracing::warn!(%peer, ?why, until_ms, "peer banned");
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.scores.is_banned(peer, now_ms())
    }

    /// Lifts bans that have run out.
    pub fn expire_bans(&mut self) {
        for peer in self.scores.expired_bans(now_ms()) {
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
    }

    /// Dials again, at most every [`REDIAL_INTERVAL_MS`], each bootnode this
    /// node is not connected to: one that was down or not yet listening
    /// when the node started (or that went away) is reached once it is up.
    /// A bootnode address without a `/p2p/` peer id is dialled again only
    /// while the node has no peers at all.
    pub fn redial_bootnodes(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.last_dial_ms) < REDIAL_INTERVAL_MS {
            return;
        }
        self.last_dial_ms = now_ms;
        let missing: Vec<Multiaddr> = self
            .bootnodes
            .iter()
            .filter(|addr| match peer_of(addr) {
                Some(peer) => !self.connected.contains(&peer),
                None => self.connected.is_empty(),
            })
            .cloned()
            .collect();
        for addr in missing {
            self.dial(addr);
        }
    }

    /// Dials an address (to reconnect to a bootnode).
    pub fn dial(&mut self, addr: Multiaddr) {
        if let Err(e) = self.swarm.dial(addr.clone()) {
            tracing::debug!(%addr, error = %e, "dial failed");
        }
    }

    /// The next event the node must handle. Cancel-safe (use in `select!`).
    pub async fn next_event(&mut self) -> NetworkEvent {
        loop {
            let event = self.swarm.select_next_some().await;
            if let Some(event) = self.on_swarm_event(event) {
                return event;
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) -> Option<NetworkEvent> {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, peer_id = %self.local_peer_id(), "p2p listening");
                None
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => self
                .connected
                .insert(peer_id)
                .then_some(NetworkEvent::PeerConnected(peer_id)),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => self
                .connected
                .remove(&peer_id)
                .then_some(NetworkEvent::PeerDisconnected(peer_id)),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_gossip(propagation_source, message_id, message),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.on_sync(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.add_peer_address(peer_id, addr);
                }
                None
            }
            _ => None,
        }
    }

    fn on_gossip(
        &mut self,
        from: PeerId,
        id: MessageId,
        message: gossipsub::Message,
    ) -> Option<NetworkEvent> {
        let Some(&topic) = self.topics.get(&message.topic) else {
            self.report(from, &id, false);
            return None;
        };
        match GossipMessage::decode(topic, &message.data) {
            Ok(message) => Some(NetworkEvent::Gossip { from, id, message }),
            Err(error) => {
                tracing::debug!(%from, %error, "malformed gossip");
                self.report(from, &id, false);
                None
            }
        }
    }

    fn on_sync(
        &mut self,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
    ) -> Option<NetworkEvent> {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => match SyncRequest::decode(&request) {
                Ok(request) => Some(NetworkEvent::Request {
                    peer,
                    request,
                    channel,
                }),
                Err(error) => {
                    self.on_bad_bytes(peer, &error);
                    None
                }
            },
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => match SyncResponse::decode(&response) {
                Ok(response) => Some(NetworkEvent::Response {
                    peer,
                    id: request_id,
                    response,
                }),
                Err(error) => {
                    self.on_bad_bytes(peer, &error);
                    Some(NetworkEvent::RequestFailed {
                        peer,
                        id: request_id,
                        timed_out: false,
                    })
                }
            },
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "sync request failed");
                // A timeout is judged by whoever asked (the sync scheduler's
                // adaptive deadlines are the ones that count); a closed
                // connection is no fault. Broken streams are.
                // (An end of file is no proof: the peer may simply have
                // given up on a request it could not answer in time.)
                let malformed = match &error {
                    request_response::OutboundFailure::Io(e) => {
                        e.kind() == std::io::ErrorKind::InvalidData
                    }
                    request_response::OutboundFailure::UnsupportedProtocols => true,
                    _ => false,
                };
                if malformed {
                    self.penalise(peer, Misbehaviour::Malformed);
                }
                let timed_out = matches!(error, request_response::OutboundFailure::Timeout);
                Some(NetworkEvent::RequestFailed {
                    peer,
                    id: request_id,
                    timed_out,
                })
            }
            Event::InboundFailure { peer, error, .. } => {
                if let request_response::InboundFailure::Io(e) = &error {
                    tracing::debug!(%peer, error = %e, "bad inbound request");
                    self.penalise(peer, Misbehaviour::Malformed);
                }
                None
            }
            Event::ResponseSent { .. } => None,
        }
    }

    fn on_bad_bytes(&mut self, peer: PeerId, error: &WireError) {
        tracing::debug!(%peer, %error, "malformed sync message");
        let why = match error {
            WireError::Bounds(_) => Misbehaviour::ProtocolViolation,
            _ => Misbehaviour::Malformed,
        };
        self.penalise(peer, why);
    }
}

/// Least time between two rounds of [`Network::redial_bootnodes`].
pub const REDIAL_INTERVAL_MS: u64 = 3_000;

/// The peer id an address names (its `/p2p/` part), if any.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

use libp2p::identify;

#[cfg(test)]
mod tests {
    use super::*;

    /// A bootnode that starts listening after the node tried it once is
    /// reached by a later redial.
    #[tokio::test]
    async fn a_bootnode_that_comes_up_late_is_dialled_again() {
        let config = |listen: Multiaddr, bootnodes| NetworkConfig {
            chain_id: 31337,
            listen,
            bootnodes,
            behaviour: BehaviourConfig::default(),
            scores: ScoreConfig::default(),
        };
        let late_key = Keypair::generate_ed25519();
        let late_peer = late_key.public().to_peer_id();
        let port = crate::node::devnet::free_port().unwrap();
        let late_addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let boot = late_addr
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(late_peer));
        let any: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let mut node =
            Network::start(Keypair::generate_ed25519(), config(any, vec![boot])).unwrap();
        // The first dial fails: nothing listens there yet.
        let refused = tokio::time::timeout(Duration::from_millis(500), node.next_event()).await;
        assert!(!matches!(refused, Ok(NetworkEvent::PeerConnected(_))));
        let mut late = Network::start(late_key, config(late_addr, vec![])).unwrap();
        let connected = tokio::time::timeout(Duration::from_secs(20), async {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    event = node.next_event() => {
                        if let NetworkEvent::PeerConnected(peer) = event {
                            return peer;
                        }
                    }
                    _ = late.next_event() => {}
                    _ = tick.tick() => node.redial_bootnodes(now_ms()),
                }
            }
        })
        .await
        .expect("the late bootnode is reached");
        assert_eq!(connected, late_peer);
        assert_eq!(node.peer_count(), 1);
    }
}
