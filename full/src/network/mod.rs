//! libp2p networking: TCP with noise and yamux, gossipsub topics for blocks,
//! votes, QCs, transactions and slashing evidence, a request-response
//! protocol for sync, identify, ping, connection limits and peer scoring with
//! bans.
//!
//! | module | what it holds |
//! |---|---|
//! | [`wire`] | message encodings (RLP + snappy) with bounded decoders |
//! | [`peer_score`] | [`PeerScores`]: penalties, thresholds, bans (pure) |
//! | [`behaviour`] | the combined libp2p [`Behaviour`] and the sync codec |
//! | [`service`] | [`Network`]: the swarm, decoding, scoring, [`NetworkEvent`]s |

pub mod behaviour;
pub mod peer_score;
pub mod service;
pub mod wire;

pub use behaviour::{Behaviour, BehaviourConfig};
pub use peer_score::{Misbehaviour, PeerScores, ScoreConfig};
pub use service::{Network, NetworkConfig, NetworkError, NetworkEvent};
pub use wire::{EvidenceMessage, GossipMessage, PeerStatus, SyncRequest, SyncResponse, Topic};
