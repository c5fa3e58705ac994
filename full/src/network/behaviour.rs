//! The libp2p behaviour of a node: gossipsub for blocks, votes, QCs and
//! transactions; a request-response protocol for sync; identify; ping;
//! connection limits; and a block list for banned peers.

use super::wire::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    StreamProtocol, allow_block_list, connection_limits, gossipsub, identify, ping,
    request_response,
};
use std::io;
use std::time::Duration;

/// The sync protocol's name.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/luxtensor/sync/1");

/// The gossipsub id of a message with payload `data`: the first 20 bytes
/// of its keccak256, so the same payload from any peer (or published twice
/// within the duplicate window) is one message. A payload that must go out
/// again has to differ (see [`super::wire::EvidenceMessage`]).
pub fn message_id(data: &[u8]) -> gossipsub::MessageId {
    gossipsub::MessageId::from(alloy_primitives::keccak256(data)[..20].to_vec())
}

/// Every sub-behaviour of a node, driven by one swarm.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Gossip of blocks, votes, QCs and transactions.
    pub gossipsub: gossipsub::Behaviour,
    /// Sync requests and responses (compressed bytes; decoded by the node so
    /// that it can penalise the sender of bad data).
    pub sync: request_response::Behaviour<SyncCodec>,
    /// Exchange of listen addresses and versions.
    pub identify: identify::Behaviour,
    /// Liveness and round-trip time.
    pub ping: ping::Behaviour,
    /// Caps on connections.
    pub limits: connection_limits::Behaviour,
    /// Banned peers.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
}

/// Length-prefixed frames (4-byte big-endian length) of compressed bytes,
/// with the length checked before the buffer is allocated.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncCodec;

/// Largest compressed frame: snappy's worst case for the largest payload.
fn max_frame(max_payload: usize) -> usize {
    snap::raw::max_compress_len(max_payload)
}

async fn read_frame<T>(io: &mut T, max: usize) -> io::Result<Vec<u8>>
where
    T: futures::AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {max}"),
        ));
    }
    // Grow with the bytes that actually arrive rather than trusting the
    // announced length with an allocation up front.
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame ended after {} of {len} bytes", buf.len()),
        ));
    }
    Ok(buf)
}

async fn write_frame<T>(io: &mut T, bytes: &[u8]) -> io::Result<()>
where
    T: futures::AsyncWrite + Unpin + Send,
{
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

impl request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, max_frame(MAX_REQUEST_BYTES)).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, max_frame(MAX_RESPONSE_BYTES)).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

/// An error from building a behaviour, as the swarm builder wants it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Knobs of the behaviour.
#[derive(Debug, Clone)]
pub struct BehaviourConfig {
    /// Most established connections.
    pub max_peers: u32,
    /// Timeout of one sync request, both ways. Longer than every deadline
    /// of the sync scheduler, so that the scheduler always judges its
    /// requests first (a peer's own inbound timeout ends a request with an
    /// end of file, which proves nothing).
    pub request_timeout: Duration,
    /// Gossipsub heartbeat.
    pub heartbeat: Duration,
}

impl Default for BehaviourConfig {
    fn default() -> Self {
        Self {
            max_peers: 50,
            request_timeout: Duration::from_millis(crate::sync::BLOCK_REQUEST_TIMEOUT_MS + 10_000),
            heartbeat: Duration::from_millis(700),
        }
    }
}

impl Behaviour {
    /// Builds the behaviour for the node with `key`.
    pub fn new(
        key: &libp2p::identity::Keypair,
        config: &BehaviourConfig,
    ) -> Result<Self, BoxError> {
        let gossip_config = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(config.heartbeat)
            // Messages are validated by the node before they are forwarded.
            .validate_messages()
            .validation_mode(gossipsub::ValidationMode::Strict)
            // A full block, compressed (the default is 64 KiB).
            .max_transmit_size(max_frame(super::wire::MAX_GOSSIP_BYTES) + 1024)
            // Content-addressed: the same payload from two peers is one message.
            .message_id_fn(|message: &gossipsub::Message| message_id(&message.data))
            // Small devnets: mesh with everyone we know.
            .mesh_n_low(2)
            .mesh_outbound_min(1)
            .build()
            .map_err(|e| format!("gossipsub config: {e}"))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| format!("gossipsub: {e}"))?;
        let sync = request_response::Behaviour::with_codec(
            SyncCodec,
            [(SYNC_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(256),
        );
        let identify =
            identify::Behaviour::new(identify::Config::new("/luxtensor/1".into(), key.public()));
        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_peers))
                .with_max_established_per_peer(Some(2))
                .with_max_pending_incoming(Some(config.max_peers)),
        );
        Ok(Self {
            gossipsub,
            sync,
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            limits,
            blocked: allow_block_list::Behaviour::default(),
        })
    }
}
