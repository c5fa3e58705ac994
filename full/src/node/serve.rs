//! Answers to peers' sync requests, from the store (finalized blocks) and
//! the engine (blocks above them), within the response size cap.

use super::ByzantineServing;
use crate::Importer;
use crate::consensus::Engine;
use crate::network::wire::{MAX_RESPONSE_BYTES, PeerStatus, SyncRequest, SyncResponse};
use alloy_primitives::B256;
use alloy_rlp::Encodable;
use luxtensor_light::{Block, ChainSpec, Header};

/// Stop adding blocks past half the cap (the rest is headroom for the
/// encoding); the client asks again for what is missing.
const RESPONSE_BUDGET: usize = MAX_RESPONSE_BYTES / 2;

/// The answer to `request`.
pub fn answer(
    chain: &Importer,
    engine: &Engine,
    request: &SyncRequest,
    genesis: B256,
) -> SyncResponse {
    let store = chain.store();
    match request {
        SyncRequest::Status => SyncResponse::Status(status(chain.spec(), chain.head(), genesis)),
        SyncRequest::HeadersByRange { start, count } => {
            let mut headers = Vec::new();
            for number in *start..start.saturating_add(*count) {
                match store.block_by_number(number) {
                    Ok(Some(block)) => headers.push(block.header),
                    _ => break,
                }
            }
            SyncResponse::Headers(headers)
        }
        SyncRequest::BlocksByRange { start, count } => {
            let mut blocks = Vec::new();
            let mut size = 0;
            for number in *start..start.saturating_add(*count) {
                match store.block_by_number(number) {
                    Ok(Some(block)) if within_budget(&mut size, &block) => blocks.push(block),
                    _ => break,
                }
            }
            SyncResponse::Blocks(blocks)
        }
        SyncRequest::BlocksByHash(hashes) => {
            let mut blocks = Vec::new();
            let mut size = 0;
            for hash in hashes {
                let block = engine
                    .block(hash)
                    .map(|node| node.block.clone())
                    .or_else(|| store.block(hash).ok().flatten());
                match block {
                    Some(block) if within_budget(&mut size, &block) => blocks.push(block),
                    Some(_) => break,
                    None => {}
                }
            }
            SyncResponse::Blocks(blocks)
        }
    }
}

/// Our answer to `Status`, with `head` our finalized head.
pub fn status(spec: &ChainSpec, head: &Header, genesis: B256) -> PeerStatus {
    PeerStatus {
        chain_id: spec.chain_id,
        genesis_hash: genesis,
        finalized_number: head.number,
        finalized_hash: head.hash(),
    }
}

fn within_budget(size: &mut usize, block: &Block) -> bool {
    *size += block.length();
    *size <= RESPONSE_BUDGET
}

/// Breaks served blocks the way a byzantine test node is told to.
pub fn corrupt(mode: ByzantineServing, blocks: &mut Vec<Block>) {
    match mode {
        ByzantineServing::CorruptBodies => {
            for block in blocks.iter_mut() {
                if block.transactions.pop().is_none() {
                    // Nothing to drop from the body: forge the seal instead
                    // (not part of the hash; caught when the block is imported).
                    block.header.proposer_signature = Default::default();
                }
            }
        }
        ByzantineServing::Empty => blocks.clear(),
        ByzantineServing::Silent | ByzantineServing::DoubleVote => {}
    }
}

/// A test-only model of a slow link for the answers a node serves: each
/// answer waits for the link to carry the previous ones (`bytes_per_s`), then
/// `latency_ms` more. Used by the sync benchmark so that peers, not the
/// syncing node, are the bottleneck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// One-way latency added to every answer.
    pub latency_ms: u64,
    /// Link bandwidth shared by all answers of this node.
    pub bytes_per_s: u64,
}

impl std::str::FromStr for Throttle {
    type Err = String;

    /// `LATENCY_MS,BYTES_PER_S`, e.g. `20,4000000`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (latency, bandwidth) = text
            .split_once(',')
            .ok_or("expected LATENCY_MS,BYTES_PER_S")?;
        let parse = |v: &str| v.trim().parse::<u64>().map_err(|e| e.to_string());
        let throttle = Throttle {
            latency_ms: parse(latency)?,
            bytes_per_s: parse(bandwidth)?.max(1),
        };
        Ok(throttle)
    }
}

/// Most answers waiting for the simulated link.
pub const MAX_DELAYED: usize = 1024;

/// Answers waiting for their simulated link.
#[derive(Debug)]
pub struct DelayedReplies<T> {
    link_free_at_ms: u64,
    queue: std::collections::VecDeque<(u64, T)>,
}

impl<T> Default for DelayedReplies<T> {
    fn default() -> Self {
        Self {
            link_free_at_ms: 0,
            queue: Default::default(),
        }
    }
}

impl<T> DelayedReplies<T> {
    /// Queues `reply` of `bytes` bytes at `now_ms`; returns when it is due.
    /// Beyond [`MAX_DELAYED`] queued answers the new one is dropped (the
    /// peer sees a failed request).
    pub fn push(&mut self, throttle: Throttle, now_ms: u64, bytes: usize, reply: T) -> u64 {
        if self.queue.len() >= MAX_DELAYED {
            return now_ms;
        }
        let transfer_ms = (bytes as u64).saturating_mul(1000) / throttle.bytes_per_s;
        self.link_free_at_ms = self.link_free_at_ms.max(now_ms) + transfer_ms;
        let due = self.link_free_at_ms + throttle.latency_ms;
        self.queue.push_back((due, reply));
        due
    }

    /// When the oldest answer is due.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.queue.front().map(|(due, _)| *due)
    }

    /// Takes the answers due by `now_ms` (they leave in order).
    pub fn pop_due(&mut self, now_ms: u64) -> Vec<T> {
        let mut due = Vec::new();
        while self.queue.front().is_some_and(|(at, _)| *at <= now_ms) {
            due.push(self.queue.pop_front().expect("checked").1);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_carries_one_answer_after_another() {
        let throttle: Throttle = "10,1000".parse().unwrap();
        let mut replies = DelayedReplies::default();
        assert_eq!(replies.push(throttle, 0, 500, 'a'), 510);
        assert_eq!(replies.push(throttle, 0, 500, 'b'), 1010);
        assert_eq!(replies.pop_due(509), Vec::<char>::new());
        assert_eq!(replies.pop_due(1010), vec!['a', 'b']);
        assert!("5".parse::<Throttle>().is_err());
    }
}
