//! What goes over the wire: gossip payloads per topic and the sync protocol's
//! requests and responses, all RLP compressed with snappy (as Ethereum's
//! devp2p and consensus-layer networking do).
//!
//! Every decoder is total: the decompressed length is read from the snappy
//! preamble and checked against a cap *before* any memory is allocated, and
//! the RLP goes through [`luxtensor_light::codec::decode_exact`].

use alloy_primitives::B256;
use alloy_rlp::{RlpDecodable, RlpEncodable};
use luxtensor_light::codec::{self, DecodeError};
use luxtensor_light::{Block, Evidence, QuorumCert, SignedHeader, SignedTransaction, Vote};

/// Most blocks or headers one sync request may ask for.
pub const MAX_BLOCKS_PER_REQUEST: u64 = 128;
/// Most hashes in one by-hash request.
pub const MAX_HASHES_PER_REQUEST: usize = 128;
/// Largest sync response, decompressed (128 full blocks would be far more:
/// a server stops adding blocks before this and the client asks for the rest).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Largest sync request, decompressed.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Largest gossip payload, decompressed: one full block.
pub const MAX_GOSSIP_BYTES: usize = codec::MAX_BLOCK_BYTES;
/// Largest piece of slashing evidence, decompressed: two headers at their
/// cap, with room for the framing.
pub const MAX_EVIDENCE_BYTES: usize = 2 * codec::MAX_HEADER_BYTES + 1024;
/// Largest accepted [`CertificateMessage`] encoding: a QC, a slot and a list header.
pub const MAX_CERTIFICATE_MESSAGE_BYTES: usize = codec::MAX_QC_BYTES + 16;

/// Why bytes from a peer were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Snappy framing is broken.
    #[error("{what}: invalid snappy data: {reason}")]
    Snappy {
        /// What was being decoded.
        what: &'static str,
        /// The decompressor's complaint.
        reason: String,
    },
    /// The payload would decompress past its cap.
    #[error("{what}: decompresses to {len} bytes, over the limit of {max}")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// The announced decompressed length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The payload is not a valid value.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A request breaks a protocol bound.
    #[error("request out of bounds: {0}")]
    Bounds(&'static str),
    /// An unknown message kind.
    #[error("{what}: unknown kind {kind}")]
    UnknownKind {
        /// What was being decoded.
        what: &'static str,
        /// The kind byte.
        kind: u8,
    },
}

/// Compresses `bytes` with raw snappy.
pub fn compress(bytes: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(bytes)
        .expect("snappy compresses any input below 4 GiB")
}

/// Decompresses raw snappy, refusing before allocating if the announced
/// length is over `max`.
pub fn decompress(what: &'static str, bytes: &[u8], max: usize) -> Result<Vec<u8>, WireError> {
    let snappy = |e: snap::Error| WireError::Snappy {
        what,
        reason: e.to_string(),
    };
    let len = snap::raw::decompress_len(bytes).map_err(snappy)?;
    if len > max {
        return Err(WireError::TooLarge { what, len, max });
    }
    snap::raw::Decoder::new()
        .decompress_vec(bytes)
        .map_err(snappy)
}

/// The gossip topics, one per kind of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Proposed blocks.
    Blocks,
    /// Votes.
    Votes,
    /// Quorum certificates gossiped on their own.
    Certificates,
    /// Pending transactions.
    Transactions,
    /// Slashing evidence (double votes and double proposals).
    Evidence,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 5] = [
        Topic::Blocks,
        Topic::Votes,
        Topic::Certificates,
        Topic::Transactions,
        Topic::Evidence,
    ];

    /// The topic name on the network of `chain_id` (nodes of other chains
    /// never mesh with us).
    pub fn name(self, chain_id: u64) -> String {
        let kind = match self {
            Topic::Blocks => "blocks",
            Topic::Votes => "votes",
            Topic::Certificates => "qcs",
            Topic::Transactions => "txs",
            Topic::Evidence => "evidence",
        };
        format!("/luxtensor/{chain_id}/{kind}/rlp_snappy")
    }
}

/// A vote with the epoch of the block it is for (the set that checks it).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct VoteMessage {
    /// Epoch of the voted block.
    pub epoch: u64,
    /// The vote.
    pub vote: Vote,
}

/// A QC as gossiped: the certificate and the slot its sender sent this
/// copy in. An engine sends its highest QC again while finality stalls
/// (`consensus::QC_RESEND_SLOTS`); gossipsub drops a message whose bytes it
/// saw within its duplicate window (about a minute), so without the slot
/// the resend would never leave the node (see [`EvidenceMessage`], stamped
/// for the same reason).
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct CertificateMessage {
    /// The slot the sender sent this copy in; receivers forward only
    /// recently stamped copies ([`stamp_is_recent`]).
    pub slot: u64,
    /// The certificate.
    pub qc: QuorumCert,
}

/// Slots a gossip stamp may lag behind the receiver's clock and still be
/// forwarded (delivery across a slot boundary, clock skew).
pub const RECENT_STAMP_SLOTS: u64 = 2;

/// Whether a copy stamped with `stamp` is recent at `current_slot`: at most
/// [`RECENT_STAMP_SLOTS`] behind and at most one ahead. Receivers forward
/// only recent copies, so an old message cannot be replayed under ever new
/// stamps.
pub fn stamp_is_recent(stamp: u64, current_slot: u64) -> bool {
    stamp.saturating_add(RECENT_STAMP_SLOTS) >= current_slot
        && stamp <= current_slot.saturating_add(1)
}

/// Slashing evidence as gossiped: the proof and the slot its sender sent
/// this copy in. Gossipsub names a message by the hash of its bytes
/// ([`super::behaviour::message_id`]) and drops one it has seen within its
/// duplicate window (about a minute), so without the slot a proof sent again
/// a few slots later (`consensus::EVIDENCE_RESEND_SLOTS`, after a partition
/// heals) would never leave the node. Copies sent in one slot (the original
/// and every node passing it on, or two holders sending it again) still have
/// the same bytes and travel once.
#[derive(Debug, Clone, PartialEq, Eq, RlpEncodable, RlpDecodable)]
pub struct EvidenceMessage {
    /// The slot the sender sent this copy in; receivers forward only copies
    /// stamped with a recent slot ([`EvidenceMessage::is_recent`]), so old
    /// proofs cannot be replayed under ever new stamps.
    pub slot: u64,
    /// The proof.
    pub evidence: Evidence,
}

impl EvidenceMessage {
    /// Slots a stamp may lag behind the receiver's clock and still be
    /// forwarded ([`RECENT_STAMP_SLOTS`]).
    pub const RECENT_SLOTS: u64 = RECENT_STAMP_SLOTS;

    /// Whether the stamp is recent at `current_slot` ([`stamp_is_recent`]).
    pub fn is_recent(&self, current_slot: u64) -> bool {
        stamp_is_recent(self.slot, current_slot)
    }
}

/// One gossip message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipMessage {
    /// A proposed block.
    Block(Box<Block>),
    /// A vote.
    Vote(VoteMessage),
    /// A QC, stamped with the slot it was sent in.
    Certificate(CertificateMessage),
    /// A pending transaction.
    Transaction(Box<SignedTransaction>),
    /// Proof of a slashable offence, stamped with the slot it was sent in.
    Evidence(EvidenceMessage),
}

impl GossipMessage {
    /// The topic this message travels on.
    pub fn topic(&self) -> Topic {
        match self {
            GossipMessage::Block(_) => Topic::Blocks,
            GossipMessage::Vote(_) => Topic::Votes,
            GossipMessage::Certificate(_) => Topic::Certificates,
            GossipMessage::Transaction(_) => Topic::Transactions,
            GossipMessage::Evidence(_) => Topic::Evidence,
        }
    }

    /// The compressed payload.
    pub fn encode(&self) -> Vec<u8> {
        let rlp = match self {
            GossipMessage::Block(block) => alloy_rlp::encode(block.as_ref()),
            GossipMessage::Vote(vote) => alloy_rlp::encode(vote),
            GossipMessage::Certificate(message) => alloy_rlp::encode(message),
            GossipMessage::Transaction(tx) => alloy_rlp::encode(tx),
            GossipMessage::Evidence(evidence) => alloy_rlp::encode(evidence),
        };
        compress(&rlp)
    }

    /// Decodes a payload received on `topic`.
    pub fn decode(topic: Topic, bytes: &[u8]) -> Result<Self, WireError> {
        let raw = decompress("gossip message", bytes, MAX_GOSSIP_BYTES)?;
        Ok(match topic {
            Topic::Blocks => GossipMessage::Block(Box::new(Block::decode(&raw)?)),
            Topic::Votes => GossipMessage::Vote(codec::decode_exact(
                "vote message",
                &raw,
                codec::MAX_QC_BYTES,
            )?),
            Topic::Certificates => GossipMessage::Certificate(codec::decode_exact(
                "certificate message",
                &raw,
                MAX_CERTIFICATE_MESSAGE_BYTES,
            )?),
            Topic::Transactions => GossipMessage::Transaction(Box::new(codec::decode_exact(
                "transaction",
                &raw,
                codec::MAX_TRANSACTION_BYTES,
            )?)),
            Topic::Evidence => {
                GossipMessage::Evidence(codec::decode_exact("evidence", &raw, MAX_EVIDENCE_BYTES)?)
            }
        })
    }
}

/// What a peer tells about its chain when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, RlpEncodable, RlpDecodable)]
pub struct PeerStatus {
    /// Its chain id.
    pub chain_id: u64,
    /// Its genesis hash.
    pub genesis_hash: B256,
    /// Its latest finalized block number.
    pub finalized_number: u64,
    /// Its latest finalized block hash.
    pub finalized_hash: B256,
}

/// A request of the sync protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    /// The peer's [`PeerStatus`].
    Status,
    /// Finalized headers `start..start + count`.
    HeadersByRange {
        /// First block number.
        start: u64,
        /// How many (at most [`MAX_BLOCKS_PER_REQUEST`]).
        count: u64,
    },
    /// Finalized blocks `start..start + count`.
    BlocksByRange {
        /// First block number.
        start: u64,
        /// How many (at most [`MAX_BLOCKS_PER_REQUEST`]).
        count: u64,
    },
    /// Blocks by hash (finalized or not), as many as the peer has.
    BlocksByHash(Vec<B256>),
}

/// A response of the sync protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResponse {
    /// Answer to [`SyncRequest::Status`].
    Status(PeerStatus),
    /// Answer to [`SyncRequest::HeadersByRange`]: consecutive headers from `start`.
    Headers(Vec<SignedHeader>),
    /// Answer to the block requests.
    Blocks(Vec<Block>),
}

/// The flat RLP shape of a request: `[kind, start, count, hashes]`.
#[derive(RlpEncodable, RlpDecodable)]
struct RequestFrame {
    kind: u8,
    start: u64,
    count: u64,
    hashes: Vec<B256>,
}

impl SyncRequest {
    /// The compressed encoding.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, start, count, hashes) = match self {
            SyncRequest::Status => (0, 0, 0, vec![]),
            SyncRequest::HeadersByRange { start, count } => (1, *start, *count, vec![]),
            SyncRequest::BlocksByRange { start, count } => (2, *start, *count, vec![]),
            SyncRequest::BlocksByHash(hashes) => (3, 0, 0, hashes.clone()),
        };
        compress(&alloy_rlp::encode(RequestFrame {
            kind,
            start,
            count,
            hashes,
        }))
    }

    /// Decodes and checks the bounds of a request.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let raw = decompress("sync request", bytes, MAX_REQUEST_BYTES)?;
        let frame: RequestFrame = codec::decode_exact("sync request", &raw, MAX_REQUEST_BYTES)?;
        let range_ok = frame.count >= 1 && frame.count <= MAX_BLOCKS_PER_REQUEST;
        let request = match frame.kind {
            0 => SyncRequest::Status,
            1 | 2 if !range_ok => return Err(WireError::Bounds("count must be 1..=128")),
            1 => SyncRequest::HeadersByRange {
                start: frame.start,
                count: frame.count,
            },
            2 => SyncRequest::BlocksByRange {
                start: frame.start,
                count: frame.count,
            },
            3 if frame.hashes.is_empty() || frame.hashes.len() > MAX_HASHES_PER_REQUEST => {
                return Err(WireError::Bounds("1..=128 hashes"));
            }
            3 => SyncRequest::BlocksByHash(frame.hashes),
            kind => {
                return Err(WireError::UnknownKind {
                    what: "sync request",
                    kind,
                });
            }
        };
        Ok(request)
    }
}

impl SyncResponse {
    /// The compressed encoding: a kind byte, then the RLP of the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut raw = Vec::new();
        match self {
            SyncResponse::Status(status) => {
                raw.push(0);
                alloy_rlp::Encodable::encode(status, &mut raw);
            }
            SyncResponse::Headers(headers) => {
                raw.push(1);
                alloy_rlp::encode_list(headers, &mut raw);
            }
            SyncResponse::Blocks(blocks) => {
                raw.push(2);
                alloy_rlp::encode_list(blocks, &mut raw);
            }
        }
        compress(&raw)
    }

    /// Decodes a response.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let raw = decompress("sync response", bytes, MAX_RESPONSE_BYTES)?;
        let (&kind, body) = raw
            .split_first()
            .ok_or(WireError::Bounds("empty response"))?;
        let what = "sync response";
        Ok(match kind {
            0 => SyncResponse::Status(codec::decode_exact(what, body, MAX_RESPONSE_BYTES)?),
            1 => {
                let headers: Vec<SignedHeader> =
                    codec::decode_exact(what, body, MAX_RESPONSE_BYTES)?;
                if headers.len() as u64 > MAX_BLOCKS_PER_REQUEST {
                    return Err(WireError::Bounds("more than 128 headers"));
                }
                SyncResponse::Headers(headers)
            }
            2 => {
                let blocks: Vec<Block> = codec::decode_exact(what, body, MAX_RESPONSE_BYTES)?;
                if blocks.len() as u64 > MAX_BLOCKS_PER_REQUEST {
                    return Err(WireError::Bounds("more than 128 blocks"));
                }
                SyncResponse::Blocks(blocks)
            }
            kind => return Err(WireError::UnknownKind { what, kind }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip() {
        for request in [
            SyncRequest::Status,
            SyncRequest::HeadersByRange {
                start: 5,
                count: 128,
            },
            SyncRequest::BlocksByRange { start: 0, count: 1 },
            SyncRequest::BlocksByHash(vec![B256::repeat_byte(7); 3]),
        ] {
            assert_eq!(SyncRequest::decode(&request.encode()).unwrap(), request);
        }
    }

    #[test]
    fn request_bounds_are_enforced() {
        let too_many = SyncRequest::BlocksByRange {
            start: 0,
            count: 129,
        };
        assert!(matches!(
            SyncRequest::decode(&too_many.encode()),
            Err(WireError::Bounds(_))
        ));
        let none = SyncRequest::HeadersByRange { start: 0, count: 0 };
        assert!(SyncRequest::decode(&none.encode()).is_err());
    }

    #[test]
    fn responses_round_trip() {
        let status = SyncResponse::Status(PeerStatus {
            chain_id: 31337,
            genesis_hash: B256::repeat_byte(1),
            finalized_number: 9,
            finalized_hash: B256::repeat_byte(2),
        });
        assert_eq!(SyncResponse::decode(&status.encode()).unwrap(), status);
        let empty = SyncResponse::Blocks(vec![]);
        assert_eq!(SyncResponse::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn evidence_round_trips_and_oversized_evidence_is_refused() {
        use luxtensor_light::evidence::DoubleVote;
        let key = luxtensor_light::chain_spec::devnet_validator_key(1);
        let vote = |byte| Vote::sign(&key, 31337, 4, B256::repeat_byte(byte), 1);
        let evidence = GossipMessage::Evidence(EvidenceMessage {
            slot: 5,
            evidence: Evidence::DoubleVote(Box::new(DoubleVote {
                epoch: 0,
                first: vote(1),
                second: vote(2),
            })),
        });
        assert_eq!(evidence.topic(), Topic::Evidence);
        let decoded = GossipMessage::decode(Topic::Evidence, &evidence.encode()).unwrap();
        assert_eq!(decoded, evidence);
        // A payload past the evidence cap is refused before RLP decoding.
        let padded = compress(&vec![0xc0; MAX_EVIDENCE_BYTES + 1]);
        assert!(matches!(
            GossipMessage::decode(Topic::Evidence, &padded),
            Err(WireError::Decode(DecodeError::Oversized { .. }))
        ));
        // Truncated evidence is an error, not a panic.
        let rlp = alloy_rlp::encode(match &evidence {
            GossipMessage::Evidence(e) => e,
            _ => unreachable!(),
        });
        for len in 0..rlp.len() {
            assert!(GossipMessage::decode(Topic::Evidence, &compress(&rlp[..len])).is_err());
        }
    }

    #[test]
    fn a_qc_sent_again_in_a_later_slot_is_a_new_gossip_message() {
        use super::super::behaviour::message_id;
        let qc = QuorumCert {
            slot: 7,
            block_hash: B256::repeat_byte(7),
            ..QuorumCert::genesis()
        };
        let sent_at = |slot| {
            GossipMessage::Certificate(CertificateMessage {
                slot,
                qc: qc.clone(),
            })
            .encode()
        };
        let first = sent_at(9);
        let resent = sent_at(9 + crate::consensus::QC_RESEND_SLOTS);
        assert_ne!(message_id(&first), message_id(&resent));
        assert_eq!(message_id(&first), message_id(&sent_at(9)));
        for bytes in [&first, &resent] {
            match GossipMessage::decode(Topic::Certificates, bytes).unwrap() {
                GossipMessage::Certificate(message) => assert_eq!(message.qc, qc),
                other => panic!("decoded {other:?}"),
            }
        }
        // Truncated, it is an error, not a panic.
        let rlp = alloy_rlp::encode(CertificateMessage { slot: 9, qc });
        for len in 0..rlp.len() {
            assert!(GossipMessage::decode(Topic::Certificates, &compress(&rlp[..len])).is_err());
        }
    }

    #[test]
    fn evidence_sent_again_in_a_later_slot_is_a_new_gossip_message() {
        use super::super::behaviour::message_id;
        use luxtensor_light::evidence::DoubleVote;
        let key = luxtensor_light::chain_spec::devnet_validator_key(1);
        let vote = |byte| Vote::sign(&key, 31337, 4, B256::repeat_byte(byte), 1);
        let evidence = Evidence::DoubleVote(Box::new(DoubleVote {
            epoch: 0,
            first: vote(1),
            second: vote(2),
        }));
        let sent_at = |slot| {
            GossipMessage::Evidence(EvidenceMessage {
                slot,
                evidence: evidence.clone(),
            })
            .encode()
        };
        // Gossipsub drops a payload whose id it saw within its duplicate
        // window: a resend two slots later must have another id...
        let (first, resent) = (
            sent_at(5),
            sent_at(5 + crate::consensus::EVIDENCE_RESEND_SLOTS),
        );
        assert_ne!(message_id(&first), message_id(&resent));
        // ...while copies sent in the same slot (passed on, or by two
        // holders) stay one message.
        assert_eq!(message_id(&first), message_id(&sent_at(5)));
        for bytes in [&first, &resent] {
            match GossipMessage::decode(Topic::Evidence, bytes).unwrap() {
                GossipMessage::Evidence(message) => assert_eq!(message.evidence, evidence),
                other => panic!("decoded {other:?}"),
            }
        }
        // Receivers forward only recently stamped copies (no replays).
        let stamped = |slot| EvidenceMessage {
            slot,
            evidence: evidence.clone(),
        };
        assert!(stamped(5).is_recent(5));
        assert!(stamped(5).is_recent(5 + EvidenceMessage::RECENT_SLOTS));
        assert!(!stamped(5).is_recent(6 + EvidenceMessage::RECENT_SLOTS));
        assert!(stamped(6).is_recent(5));
        assert!(!stamped(7).is_recent(5));
        assert!(stamped(0).is_recent(0) && !stamped(u64::MAX).is_recent(0));
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_allocation() {
        // 64 MiB of zeros compresses to a few KiB; its preamble announces the size.
        let bomb = compress(&vec![0u8; 64 * 1024 * 1024]);
        assert!(bomb.len() < 4 * 1024 * 1024);
        assert!(matches!(
            SyncResponse::decode(&bomb),
            Err(WireError::TooLarge { .. })
        ));
        assert!(matches!(
            GossipMessage::decode(Topic::Blocks, &bomb),
            Err(WireError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SyncRequest::decode(&bytes);
            let _ = SyncResponse::decode(&bytes);
            for topic in Topic::ALL {
                let _ = GossipMessage::decode(topic, &bytes);
                let _ = GossipMessage::decode(topic, &compress(&bytes));
            }
            let _ = SyncResponse::decode(&compress(&bytes));
            let _ = SyncRequest::decode(&compress(&bytes));
        }
    }
}
