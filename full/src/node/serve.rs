//! Answers to peers' sync requests, from the store (finalized blocks) and
//! the engine (blocks above them), within the response size cap.

use crate::Importer;
use crate::consensus::Engine;
use crate::network::wire::{MAX_RESPONSE_BYTES, PeerStatus, SyncRequest, SyncResponse};
use super::ByzantineServing;
use alloy_primitives::B256;
use alloy_rlp::Encodable;
use luxtensor_light::Block;

/// Stop adding blocks past half the cap (the rest is headroom for the
/// encoding); the client asks again for what is missing.
const RESPONSE_BUDGET: usize = MAX_RESPONSE_BYTES / 2;

/// The answer to `request`.
pub fn answer(chain: &Importer, engine: &Engine, request: &SyncRequest, genesis: B256) -> SyncResponse {
    let store = chain.store();
    match request {
        SyncRequest::Status => {
            let head = chain.head();
            SyncResponse::Status(PeerStatus {
                chain_id: chain.spec().chain_id,
                genesis_hash: genesis,
                finalized_number: head.number,
                finalized_hash: head.hash(),
            })
        }
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
        ByzantineServing::Silent => {}
    }
}
