//! Tests of the scheduler: one behaviour per test, then a seeded simulation
//! of many peers (honest, slow, lying, short, dropping) under proptest.

use super::*;
use crate::test_support::{dev_signer, transfer};
use alloy_primitives::{Address, B256, Bloom, U256};
use luxtensor_light::block::{evidence_hash, transactions_root};
use luxtensor_light::{Block, BlsSignature, Header, QuorumCert, SignedHeader};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// A chain of `len` blocks from `start` with empty, valid bodies. The
/// scheduler checks hashes and bodies, not seals, so the seals are zero.
pub(super) fn chain(start: u64, len: usize) -> Vec<Block> {
    let mut parent = B256::repeat_byte(0xaa);
    (start..start + len as u64)
        .map(|number| {
            let header = Header {
                parent_hash: parent,
                number,
                slot: number,
                epoch: 0,
                timestamp: 1_700_000_000 + number,
                proposer_index: 0,
                state_root: B256::ZERO,
                transactions_root: transactions_root(&[]),
                receipts_root: B256::ZERO,
                evidence_hash: evidence_hash(&[]),
                logs_bloom: Bloom::ZERO,
                gas_limit: 30_000_000,
                gas_used: 0,
                base_fee_per_gas: 1_000_000_000,
                validator_set_hash: B256::ZERO,
                next_validator_set_hash: B256::ZERO,
                parent_qc: QuorumCert::genesis(),
            };
            parent = header.hash();
            Block {
                header: SignedHeader {
                    header,
                    proposer_signature: BlsSignature::ZERO,
                },
                transactions: Vec::new(),
                evidence: Vec::new(),
            }
        })
        .collect()
}

pub(super) fn headers(blocks: &[Block]) -> Vec<SignedHeader> {
    blocks.iter().map(|b| b.header.clone()).collect()
}

/// A scheduler over `blocks` with peers `(id, best)`.
fn scheduler(config: SyncConfig, blocks: &[Block], peers: &[(u32, u64)]) -> SyncProtocol<u32> {
    let mut sync = SyncProtocol::new(config).unwrap();
    sync.queue_headers(&headers(blocks)).unwrap();
    for &(peer, best) in peers {
        sync.add_peer(peer, best).unwrap();
    }
    sync
}

/// Gives `peers` a measured speed (128 blocks in 100 ms): only a measured
/// peer gets a second batch before its first is answered.
fn measured(sync: &mut SyncProtocol<u32>, peers: &[u32]) {
    for peer in peers {
        sync.measure_peer(peer, 100, MAX_BLOCKS_PER_REQUEST);
    }
}

/// The blocks a request asks for (the chain starts at `blocks[0]`'s number).
fn answer(blocks: &[Block], request: &BatchRequest) -> Vec<Block> {
    let first = blocks[0].header.number;
    let from = (request.start - first) as usize;
    blocks[from..from + request.count() as usize].to_vec()
}

fn events(sync: &mut SyncProtocol<u32>) -> Vec<SyncEvent<u32>> {
    std::iter::from_fn(|| sync.poll_event()).collect()
}

fn numbers(blocks: &[Block]) -> Vec<u64> {
    blocks.iter().map(|b| b.header.number).collect()
}

/// The same block with a transaction its header does not commit to.
fn with_bad_body(block: &Block) -> Block {
    let mut bad = block.clone();
    bad.transactions
        .push(transfer(&dev_signer(0), 1, 0, Address::ZERO, U256::from(1)));
    bad
}

#[test]
fn four_peers_get_disjoint_batches_in_parallel() {
    let blocks = chain(1, 1_000);
    let mut sync = scheduler(
        SyncConfig::default(),
        &blocks,
        &[(1, 1_000), (2, 1_000), (3, 1_000), (4, 1_000)],
    );
    measured(&mut sync, &[1, 2, 3, 4]);
    let requests: Vec<_> = std::iter::from_fn(|| sync.next_request(0)).collect();
    // 1,000 blocks in batches of 128: 8 batches, two per peer.
    assert_eq!(requests.len(), 8);
    let first_four: BTreeSet<u32> = requests[..4].iter().map(|(p, _)| *p).collect();
    assert_eq!(first_four, BTreeSet::from([1, 2, 3, 4]));
    let mut covered = Vec::new();
    for (_, request) in &requests {
        assert!(request.count() <= MAX_BLOCKS_PER_REQUEST);
        covered.extend(request.start..request.end());
        assert_eq!(
            request.hashes,
            answer(&blocks, request)
                .iter()
                .map(|b| b.hash())
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(
        covered,
        (1..=1_000).collect::<Vec<_>>(),
        "disjoint and complete"
    );
    for peer in 1..=4 {
        assert_eq!(sync.peer_in_flight(&peer), 2);
    }
    let stats = sync.get_stats();
    assert_eq!(
        (
            stats.pending_requests,
            stats.in_flight_blocks,
            stats.queued_blocks
        ),
        (8, 1_000, 0)
    );
}

#[test]
fn max_parallel_downloads_is_per_peer() {
    let blocks = chain(0, 128 * 20);
    let mut one = scheduler(SyncConfig::default(), &blocks, &[(1, 10_000)]);
    measured(&mut one, &[1]);
    assert_eq!(
        std::iter::from_fn(|| one.next_request(0)).count(),
        MAX_PARALLEL_DOWNLOADS
    );
    let mut four = scheduler(
        SyncConfig::default(),
        &blocks,
        &[(1, 10_000), (2, 10_000), (3, 10_000), (4, 10_000)],
    );
    measured(&mut four, &[1, 2, 3, 4]);
    assert_eq!(
        std::iter::from_fn(|| four.next_request(0)).count(),
        4 * MAX_PARALLEL_DOWNLOADS
    );
}

#[test]
fn a_peer_not_yet_measured_gets_one_batch_until_it_answers() {
    let blocks = chain(1, 128 * 4);
    let mut sync = scheduler(SyncConfig::default(), &blocks, &[(1, 10_000)]);
    let (_, first) = sync.next_request(0).unwrap();
    assert_eq!(sync.next_request(0), None, "unmeasured: one batch");
    sync.handle_response(&1, first.id, answer(&blocks, &first), 200)
        .unwrap();
    // 128 blocks in 200 ms: three batches fit in the timeout bound at once.
    assert_eq!(std::iter::from_fn(|| sync.next_request(200)).count(), 3);
}

#[test]
fn the_last_blocks_are_spread_over_the_peers() {
    let blocks = chain(1, 200);
    let config = SyncConfig {
        spread_tail: true,
        ..SyncConfig::default()
    };
    let mut sync = scheduler(config, &blocks, &[(1, 1_000), (2, 1_000)]);
    measured(&mut sync, &[1, 2]);
    let sizes: Vec<u32> = std::iter::from_fn(|| sync.next_request(0))
        .map(|(_, request)| request.count())
        .collect();
    // 200 waiting blocks over 2 peers × 4 batches: 25, then shrinking with
    // what is left, never more than the waiting blocks allow.
    assert_eq!(sizes[0], 25);
    assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
    assert_eq!(sizes.len(), 8, "every pipeline slot used: {sizes:?}");
    assert!(*sizes.last().unwrap() < 25);
    // Without the option, the first batch takes all it can (128).
    let mut plain = scheduler(SyncConfig::default(), &blocks, &[(1, 1_000), (2, 1_000)]);
    measured(&mut plain, &[1, 2]);
    assert_eq!(plain.next_request(0).unwrap().1.count(), 128);
}

#[test]
fn blocks_come_out_in_order_when_batches_complete_out_of_order() {
    let blocks = chain(10, 500);
    let mut sync = scheduler(SyncConfig::default(), &blocks, &[(1, 600), (2, 600)]);
    measured(&mut sync, &[1, 2]);
    let requests: Vec<_> = std::iter::from_fn(|| sync.next_request(0)).collect();
    assert_eq!(requests.len(), 4);
    let mut out = Vec::new();
    for (i, (peer, request)) in requests.iter().enumerate().rev() {
        let accepted = sync
            .handle_response(peer, request.id, answer(&blocks, request), 100)
            .unwrap();
        assert_eq!(accepted, request.count() as usize);
        let ready = sync.take_ready();
        if i > 0 {
            assert!(ready.is_empty(), "block 10 is still missing");
        }
        out.extend(ready);
    }
    assert_eq!(out, blocks);
    assert!(sync.is_idle());
    assert_eq!(sync.next_block(), 510);
    assert!(events(&mut sync).is_empty());
}

#[test]
fn timeout_retries_three_times_then_moves_to_another_peer() {
    let blocks = chain(1, 384);
    let config = SyncConfig {
        max_parallel_downloads: 1,
        hedge_delay_ms: 1_000_000, // no hedging in this test
        ..SyncConfig::default()
    };
    let mut sync = scheduler(config, &blocks, &[(1, 1_000), (2, 1_000)]);
    let (p, first) = sync.next_request(0).unwrap();
    assert_eq!((p, first.start), (1, 1));
    let (p, busy) = sync.next_request(0).unwrap();
    assert_eq!((p, busy.start), (2, 129));
    // Peer 1 answers fast; its timeout becomes short.
    sync.handle_response(&1, first.id, answer(&blocks, &first), 100)
        .unwrap();
    let mut now = 100;
    let (p, mut request) = sync.next_request(now).unwrap();
    assert_eq!((p, request.start), (1, 257));
    for attempt in 1..=MAX_RETRIES {
        let deadline = sync.next_wakeup_ms(now).unwrap();
        assert!(deadline < 30_000, "peer 1's adaptive timeout is short");
        assert!(sync.check_timeouts(deadline - 1).is_empty());
        assert_eq!(sync.check_timeouts(deadline), vec![(1, request.id)]);
        now = deadline;
        assert_eq!(
            events(&mut sync),
            vec![SyncEvent::Penalize {
                peer: 1,
                reason: PenaltyReason::Timeout {
                    id: request.id,
                    blocks: 128
                },
            }]
        );
        if attempt < MAX_RETRIES {
            let (p, retry) = sync.next_request(now).unwrap();
            assert_eq!(
                (p, retry.start),
                (1, 257),
                "retry {attempt} on the same peer"
            );
            request = retry;
        }
    }
    // Three timeouts: peer 1 is idle but no longer asked; peer 2 has the blocks.
    assert_eq!(sync.next_request(now), None);
    assert_eq!(sync.get_stats().queued_blocks, 128);
    sync.handle_response(&2, busy.id, answer(&blocks, &busy), now + 1)
        .unwrap();
    let mut out = sync.take_ready();
    while let Some((p, moved)) = sync.next_request(now + 1) {
        assert_eq!(p, 2, "only peer 2 is asked for blocks 257..");
        assert_eq!(moved.start, out.len() as u64 + 1);
        sync.handle_response(&2, moved.id, answer(&blocks, &moved), now + 2)
            .unwrap();
        out.extend(sync.take_ready());
    }
    assert_eq!(out, blocks);
    assert_eq!(sync.get_stats().timeouts, 3);
}

#[test]
fn the_only_peer_is_retried_past_the_limit() {
    let blocks = chain(1, 10);
    let mut sync = scheduler(SyncConfig::default(), &blocks, &[(1, 10)]);
    let mut now = 0;
    for _ in 0..MAX_RETRIES + 2 {
        let (peer, request) = sync.next_request(now).unwrap();
        assert_eq!((peer, request.start), (1, 1));
        assert_eq!(
            sync.next_wakeup_ms(now),
            Some(request.deadline_ms),
            "no hedge without a second peer"
        );
        now = request.deadline_ms;
        assert_eq!(sync.check_timeouts(now), vec![(1, request.id)]);
    }
}

#[test]
fn bad_body_penalises_the_peer_and_the_rest_is_fetched_elsewhere() {
    let blocks = chain(0, 128);
    let config = SyncConfig {
        max_parallel_downloads: 1,
        ..SyncConfig::default()
    };
    let mut sync = scheduler(config, &blocks, &[(1, 200), (2, 200)]);
    let (p, request) = sync.next_request(0).unwrap();
    assert_eq!(p, 1);
    assert_eq!(sync.next_request(0), None, "one batch only");
    let mut served = answer(&blocks, &request);
    served[5] = with_bad_body(&served[5]);
    assert_eq!(sync.handle_response(&1, request.id, served, 50), Ok(5));
    match events(&mut sync).as_slice() {
        [
            SyncEvent::Penalize {
                peer: 1,
                reason: PenaltyReason::BadBody { number: 5, .. },
            },
        ] => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        numbers(&sync.take_ready()),
        (0..5).collect::<Vec<_>>(),
        "verified prefix kept"
    );
    let (p, refetch) = sync.next_request(60).unwrap();
    assert_eq!((p, refetch.start, refetch.count()), (2, 5, 123));
    sync.handle_response(&2, refetch.id, answer(&blocks, &refetch), 70)
        .unwrap();
    assert_eq!(sync.take_ready(), blocks[5..]);
    assert!(sync.is_idle());
}

#[test]
fn a_wrong_block_penalises_and_the_peer_is_not_asked_again() {
    let blocks = chain(0, 64);
    let other = chain(1_000, 64);
    let mut sync = scheduler(SyncConfig::default(), &blocks, &[(1, 100)]);
    let (_, request) = sync.next_request(0).unwrap();
    let mut served = answer(&blocks, &request);
    served[0] = other[0].clone();
    assert_eq!(sync.handle_response(&1, request.id, served, 10), Ok(0));
    match events(&mut sync).as_slice() {
        [
            SyncEvent::Penalize {
                peer: 1,
                reason:
                    PenaltyReason::WrongBlock {
                        number: 0,
                        expected,
                        got,
                    },
            },
        ] => {
            assert_eq!((*expected, *got), (blocks[0].hash(), other[0].hash()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sync.next_request(20),
        None,
        "peer 1 lied about these blocks"
    );
    sync.add_peer(2, 100).unwrap();
    let (p, refetch) = sync.next_request(20).unwrap();
    assert_eq!((p, refetch.start, refetch.count()), (2, 0, 64));
}

#[test]
fn a_short_answer_keeps_the_good_prefix_and_requeues_the_rest() {
    let blocks = chain(0, 128);
    let mut sync = scheduler(SyncConfig::default(), &blocks, &[(1, 127), (2, 127)]);
    let (p, request) = sync.next_request(0).unwrap();
    assert_eq!(p, 1);
    let served = answer(&blocks, &request)[..50].to_vec();
    assert_eq!(sync.handle_response(&1, request.id, served, 10), Ok(50));
    assert_eq!(
        events(&mut sync),
        vec![SyncEvent::Penalize {
            peer: 1,
            reason: PenaltyReason::Short {
                requested: 128,
                got: 50
            }
        }]
    );
    assert_eq!(sync.take_ready().len(), 50);
    let stats = sync.get_stats();
    assert_eq!((stats.queued_blocks, stats.released_blocks), (78, 50));
    let (p, rest) = sync.next_request(10).unwrap();
    assert_eq!((p, rest.start, rest.count()), (2, 50, 78));
    assert_eq!(sync.next_request(10), None, "peer 1 is not asked again");
    // A peer that announced a lower best block meanwhile is not blamed.
    assert!(sync.update_peer(&2, 60));
    let served = answer(&blocks, &rest)[..11].to_vec();
    assert_eq!(sync.handle_response(&2, rest.id, served, 15), Ok(11));
    assert!(events(&mut sync).is_empty());
    assert_eq!(sync.take_ready().len(), 11);
    sync.add_peer(3, 127).unwrap();
    let (p, rest) = sync.next_request(16).unwrap();
    assert_eq!((p, rest.start, rest.count()), (3, 61, 67));
    // An empty answer is penalised too.
    assert_eq!(sync.handle_response(&3, rest.id, Vec::new(), 20), Ok(0));
    assert_eq!(
        events(&mut sync),
        vec![SyncEvent::Penalize {
            peer: 3,
            reason: PenaltyReason::Empty { requested: 67 }
        }]
    );
}

#[test]
fn too_many_blocks_are_dropped_and_penalised() {
    let blocks = chain(0, 20);
    let mut sync = scheduler(SyncConfig::default(), &blocks, &[(1, 9)]);
    let (_, request) = sync.next_request(0).unwrap();
    assert_eq!(request.count(), 10, "only up to the peer's best block");
    assert_eq!(
        sync.handle_response(&1, request.id, blocks.clone(), 10),
        Ok(10)
    );
    assert_eq!(
        events(&mut sync),
        vec![SyncEvent::Penalize {
            peer: 1,
            reason: PenaltyReason::TooMany {
                requested: 10,
                got: 20
            }
        }]
    );
    assert_eq!(sync.take_ready(), blocks[..10]);
}

#[test]
fn a_removed_peers_ranges_are_requeued_at_once() {
    let blocks = chain(0, 300);
    let mut sync = scheduler(SyncConfig::default(), &blocks, &[(1, 300)]);
    measured(&mut sync, &[1]);
    let requests: Vec<_> = std::iter::from_fn(|| sync.next_request(0)).collect();
    assert_eq!(requests.len(), 3);
    assert_eq!(sync.get_stats().queued_blocks, 0);
    assert!(sync.remove_peer(&1));
    assert!(!sync.remove_peer(&1));
    let stats = sync.get_stats();
    assert_eq!(
        (stats.queued_blocks, stats.pending_requests, stats.peers),
        (300, 0, 0)
    );
    assert_eq!(
        sync.handle_response(&1, requests[0].1.id, answer(&blocks, &requests[0].1), 5),
        Err(SyncError::UnknownRequest(requests[0].1.id))
    );
    sync.add_peer(2, 300).unwrap();
    let (p, request) = sync.next_request(10).unwrap();
    assert_eq!((p, request.start), (2, 0));
}

#[test]
fn a_full_buffer_stops_new_batches() {
    let blocks = chain(0, 1_000);
    let config = SyncConfig {
        max_buffered_blocks: 256,
        ..SyncConfig::default()
    };
    let mut sync = scheduler(config, &blocks, &[(1, 1_000), (2, 1_000)]);
    let requests: Vec<_> = std::iter::from_fn(|| sync.next_request(0)).collect();
    assert_eq!(
        numbers_of(&requests),
        vec![0, 128],
        "only the window of 256 blocks"
    );
    // The second batch lands first: buffered, nothing released, still no new batch.
    let (p, second) = &requests[1];
    sync.handle_response(p, second.id, answer(&blocks, second), 10)
        .unwrap();
    assert!(sync.take_ready().is_empty());
    assert_eq!(sync.next_request(10), None);
    let (p, first) = &requests[0];
    sync.handle_response(p, first.id, answer(&blocks, first), 20)
        .unwrap();
    assert_eq!(sync.get_stats().downloaded_blocks, 256);
    assert_eq!(sync.next_request(20), None, "the buffer is full");
    assert!(sync.get_next_batch(4).is_empty());
    assert_eq!(sync.take_ready().len(), 256);
    let more: Vec<_> = std::iter::from_fn(|| sync.next_request(30)).collect();
    assert_eq!(numbers_of(&more), vec![256, 384]);
}

fn numbers_of(requests: &[(u32, BatchRequest)]) -> Vec<u64> {
    requests.iter().map(|(_, r)| r.start).collect()
}

#[test]
fn a_late_oldest_range_is_hedged_and_the_first_answer_wins() {
    let blocks = chain(0, 256);
    let config = SyncConfig {
        max_parallel_downloads: 1,
        ..SyncConfig::default()
    };
    let mut sync = scheduler(config, &blocks, &[(1, 256), (2, 256)]);
    let (_, slow) = sync.next_request(0).unwrap();
    let (p, fast) = sync.next_request(0).unwrap();
    assert_eq!((p, fast.start), (2, 128));
    sync.handle_response(&2, fast.id, answer(&blocks, &fast), 100)
        .unwrap();
    // Peer 1 is unmeasured and peer 2 delivered 128 blocks in 100 ms: the
    // batch is late once peer 2 could have delivered it twice over, and not
    // before the hedge delay (1 s).
    assert_eq!(sync.next_wakeup_ms(100), Some(1_000));
    assert_eq!(sync.next_request(999), None);
    let (p, hedge) = sync.next_request(1_000).unwrap();
    assert_eq!((p, hedge.start, hedge.count()), (2, 0, 128));
    assert_eq!(sync.get_stats().hedges, 1);
    assert_eq!(sync.next_request(1_000), None, "hedged once only");
    sync.handle_response(&2, hedge.id, answer(&blocks, &hedge), 15_100)
        .unwrap();
    assert_eq!(
        events(&mut sync),
        vec![SyncEvent::Cancel {
            peer: 1,
            id: slow.id
        }]
    );
    assert_eq!(sync.peer_in_flight(&1), 0);
    assert_eq!(
        sync.handle_response(&1, slow.id, answer(&blocks, &slow), 15_200),
        Err(SyncError::UnknownRequest(slow.id)),
        "the slower answer is ignored"
    );
    assert_eq!(sync.take_ready(), blocks);
    assert!(sync.check_timeouts(100_000).is_empty());
}

#[test]
fn the_wakeup_is_when_a_measured_peer_could_have_served_an_unmeasured_holders_batch_twice() {
    let blocks = chain(0, 256);
    let config = SyncConfig {
        max_parallel_downloads: 1,
        ..SyncConfig::default()
    };
    let mut sync = scheduler(config, &blocks, &[(1, 256), (2, 256)]);
    let (p1, held) = sync.next_request(0).unwrap();
    let (p2, fast) = sync.next_request(0).unwrap();
    assert_eq!((p1, p2), (1, 2));
    // Peer 2 serves 128 blocks in 1 s: peer 1's batch is late at about 2 s,
    // long after the hedge delay (1 s) and long before half its timeout.
    sync.handle_response(&2, fast.id, answer(&blocks, &fast), 1_000)
        .unwrap();
    let wakeup = sync.next_wakeup_ms(1_500).unwrap();
    assert!((1_900..=2_100).contains(&wakeup), "{wakeup}");
    assert_eq!(sync.next_request(wakeup - 1), None);
    let (p, hedge) = sync.next_request(wakeup).unwrap();
    assert_eq!((p, hedge.start), (2, held.start));
}

#[test]
fn with_no_measured_peer_to_compare_an_unmeasured_batch_is_late_at_half_its_timeout() {
    let blocks = chain(0, 256);
    let config = SyncConfig {
        max_parallel_downloads: 1,
        ..SyncConfig::default()
    };
    let mut sync = scheduler(config, &blocks, &[(1, 256), (2, 256)]);
    let (p1, oldest) = sync.next_request(0).unwrap();
    let (p2, _) = sync.next_request(0).unwrap();
    assert_eq!((p1, p2), (1, 2));
    // Peer 3 is idle but as unmeasured as the holder.
    sync.add_peer(3, 256).unwrap();
    assert_eq!(sync.next_request(1_000), None);
    assert_eq!(sync.next_wakeup_ms(1_000), Some(15_000));
    assert_eq!(sync.next_request(14_999), None);
    let (p, hedge) = sync.next_request(15_000).unwrap();
    assert_eq!((p, hedge.start), (3, oldest.start));
}

#[test]
fn a_slow_peers_oldest_range_moves_to_a_faster_peer_early() {
    let blocks = chain(0, 128 * 3);
    let config = SyncConfig {
        max_parallel_downloads: 1,
        ..SyncConfig::default()
    };
    let mut sync = scheduler(config, &blocks, &[(1, 1_000), (2, 1_000)]);
    // Measure: peer 1 takes 8 s per batch, peer 2 takes 200 ms.
    let (_, a) = sync.next_request(0).unwrap();
    let (_, b) = sync.next_request(0).unwrap();
    sync.handle_response(&2, b.id, answer(&blocks, &b), 200)
        .unwrap();
    let (p, c) = sync.next_request(200).unwrap();
    assert_eq!((p, c.start), (2, 256));
    sync.handle_response(&2, c.id, answer(&blocks, &c), 400)
        .unwrap();
    sync.handle_response(&1, a.id, answer(&blocks, &a), 8_000)
        .unwrap();
    assert_eq!(sync.take_ready().len(), 384);
    // A new chain segment: peer 1 gets the oldest batch, peer 2 the next.
    let next = chain(0, 128 * 5);
    sync.queue_headers(&headers(&next[384..])).unwrap();
    let (p, slow) = sync.next_request(10_000).unwrap();
    assert_eq!((p, slow.start), (2, 384), "the faster peer goes first");
    let (p, other) = sync.next_request(10_000).unwrap();
    assert_eq!((p, other.start), (1, 512));
    sync.handle_response(&2, slow.id, answer(&next, &slow), 10_200)
        .unwrap();
    // Peer 1 holds the oldest missing block; peer 2 is idle and expected to be
    // much faster, so after the hedge delay the range is hedged.
    assert_eq!(sync.next_request(10_500), None, "not before hedge_delay_ms");
    let (p, hedge) = sync.next_request(11_000).unwrap();
    assert_eq!((p, hedge.start), (2, 512));
}

#[test]
fn fast_peers_get_shorter_timeouts_than_slow_ones() {
    let blocks = chain(0, 256);
    let mut sync = scheduler(
        SyncConfig::default(),
        &blocks,
        &[(1, 256), (2, 256), (3, 256)],
    );
    let (p1, a) = sync.next_request(0).unwrap();
    let (p2, b) = sync.next_request(0).unwrap();
    assert_eq!((p1, p2), (1, 2));
    sync.handle_response(&1, a.id, answer(&blocks, &a), 300)
        .unwrap();
    sync.handle_response(&2, b.id, answer(&blocks, &b), 6_000)
        .unwrap();
    let fast = sync.peer_timeout_ms(&1, 128).unwrap();
    let slow = sync.peer_timeout_ms(&2, 128).unwrap();
    let unknown = sync.peer_timeout_ms(&3, 128).unwrap();
    assert_eq!(fast, 2_000, "3 × 300 ms, raised to the 2 s floor");
    assert_eq!(slow, 18_000, "3 × 6 s");
    assert_eq!(unknown, BLOCK_REQUEST_TIMEOUT_MS);
    assert_eq!(sync.peer_timeout_ms(&9, 128), None);
}

#[test]
fn the_low_level_api_marks_ranges_pending() {
    let blocks = chain(0, 600);
    let mut sync = scheduler(
        SyncConfig::default(),
        &blocks,
        &[(1, 600), (2, 600), (3, 100)],
    );
    let batches = sync.get_next_batch(4);
    assert_eq!(
        batches
            .iter()
            .map(|r| (r.start, r.count()))
            .collect::<Vec<_>>(),
        vec![(0, 128), (128, 128), (256, 128), (384, 128)]
    );
    assert_eq!(sync.get_next_batch(4), batches, "a peek changes nothing");
    let request = sync.mark_pending(&batches[0], 1, 0).unwrap();
    assert_eq!((request.start, &request.hashes), (0, &batches[0].hashes));
    assert_eq!(
        sync.mark_pending(&batches[0], 2, 0),
        Err(SyncError::NotQueued { number: 0 })
    );
    assert_eq!(
        sync.mark_pending(&batches[1], 3, 0),
        Err(SyncError::PeerLacksRange {
            number: 128,
            best: 100
        })
    );
    assert_eq!(
        sync.mark_pending(&batches[1], 9, 0),
        Err(SyncError::UnknownPeer)
    );
    let mut forged = batches[1].clone();
    forged.hashes[3] = B256::ZERO;
    assert_eq!(
        sync.mark_pending(&forged, 2, 0),
        Err(SyncError::NotQueued { number: 131 })
    );
    let empty = BlockRange {
        start: 0,
        hashes: vec![],
    };
    assert!(matches!(
        sync.mark_pending(&empty, 2, 0),
        Err(SyncError::BadRange { len: 0, .. })
    ));
    for range in &batches[1..] {
        sync.mark_pending(range, 1, 0).unwrap();
    }
    let fifth = &sync.get_next_batch(1)[0];
    assert_eq!(
        sync.mark_pending(fifth, 1, 0),
        Err(SyncError::PeerBusy { in_flight: 4 })
    );
    assert_eq!(sync.get_next_batch(10).len(), 1, "88 blocks left");
}

#[test]
fn headers_must_link_and_fit() {
    let blocks = chain(5, 10);
    let config = SyncConfig {
        max_queued_headers: 8,
        ..SyncConfig::default()
    };
    let mut sync = SyncProtocol::<u32>::new(config).unwrap();
    let all = headers(&blocks);
    assert_eq!(
        sync.queue_headers(&all),
        Err(SyncError::QueueFull {
            held: 0,
            adding: 10,
            capacity: 8
        })
    );
    assert_eq!(sync.queue_headers(&all[..4]), Ok(4));
    assert_eq!(sync.last_queued(), Some((8, blocks[3].hash())));
    assert_eq!(
        sync.queue_headers(&all[5..6]),
        Err(SyncError::NotContiguous {
            expected: 9,
            got: 10
        })
    );
    let mut wrong_parent = all[4].clone();
    wrong_parent.header.parent_hash = B256::ZERO;
    assert!(matches!(
        sync.queue_headers(&[wrong_parent]),
        Err(SyncError::ParentMismatch { number: 9, .. })
    ));
    // A bad header in the middle: nothing of the call is queued.
    let mut gap = all[4..7].to_vec();
    gap.remove(1);
    assert!(sync.queue_headers(&gap).is_err());
    assert_eq!(sync.queue_capacity(), 4);
    assert_eq!(sync.queue_headers(&all[4..8]), Ok(4));
    assert_eq!(sync.next_block(), 5);
    let mut fresh = SyncProtocol::<u32>::default();
    let mut huge = all[0].clone();
    huge.header.number = u64::MAX;
    assert_eq!(
        fresh.queue_headers(&[huge]),
        Err(SyncError::NumberTooHigh { number: u64::MAX })
    );
}

#[test]
fn bounds_are_enforced() {
    let config = SyncConfig {
        max_peers: 2,
        max_events: 3,
        ..SyncConfig::default()
    };
    assert_eq!(
        SyncProtocol::<u32>::new(SyncConfig {
            max_buffered_blocks: 0,
            ..config.clone()
        })
        .err(),
        Some(ConfigError::Zero {
            field: "max_buffered_blocks"
        })
    );
    let blocks = chain(0, 10);
    let mut sync = scheduler(config, &blocks, &[(1, 9), (2, 9)]);
    assert_eq!(sync.add_peer(3, 9), Err(SyncError::TooManyPeers { max: 2 }));
    assert_eq!(sync.add_peer(2, 5), Ok(()), "a known peer is updated");
    let mut now = 0;
    while sync.get_stats().penalties < 5 {
        while sync.next_request(now).is_some() {}
        now = sync.next_wakeup_ms(now).unwrap();
        sync.check_timeouts(now);
    }
    assert_eq!(events(&mut sync).len(), 3, "the oldest events were dropped");
}

// ---- simulation ------------------------------------------------------------

/// How a simulated peer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Serves its requests one after another: `latency + count × per_block` ms each.
    Honest { latency: u64, per_block: u64 },
    /// Like honest, then corrupts one block (bad body or a foreign block).
    Liar,
    /// Serves a random prefix (possibly empty).
    Short,
    /// Never answers, or answers after its timeout, or fails at once.
    Dropper,
}

/// Tiny deterministic generator for the simulation's choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the simulated network will hand the scheduler at a time.
enum Arrival {
    Response(u32, RequestId, Vec<Block>),
    Failure(u32, RequestId),
}

struct Outcome {
    released: Vec<Block>,
    stats: SyncStats,
    end_ms: u64,
    honest_penalised: bool,
}

/// Drives `sync` like the node's driver would, against simulated peers,
/// until every block is released or nothing can happen any more.
fn simulate(
    config: SyncConfig,
    blocks: &[Block],
    peers: &[Behaviour],
    removals: &[(u64, u32)],
    seed: u64,
) -> Outcome {
    let mut rng = Rng(seed | 1);
    let foreign = chain(blocks[0].header.number, blocks.len().min(4));
    let bad_tx = transfer(&dev_signer(0), 1, 0, Address::ZERO, U256::from(1));
    let mut sync = SyncProtocol::<u32>::new(config).unwrap();
    let last = blocks.last().unwrap().header.number;
    for (id, _) in peers.iter().enumerate() {
        sync.add_peer(id as u32, last).unwrap();
    }
    let all_headers = headers(blocks);
    let mut queued = 0;
    let mut busy_until = vec![0u64; peers.len()];
    let mut arrivals: BTreeMap<(u64, u64), Arrival> = BTreeMap::new();
    let mut removals: Vec<(u64, u32)> = removals.to_vec();
    removals.sort();
    let mut released = Vec::new();
    let mut honest_penalised = false;
    let mut now = 0u64;
    let mut seq = 0u64;
    for _step in 0..100_000 {
        let room = sync.queue_capacity().min(all_headers.len() - queued);
        sync.queue_headers(&all_headers[queued..queued + room])
            .unwrap();
        queued += room;
        while let Some((peer, request)) = sync.next_request(now) {
            let served = answer(blocks, &request);
            let behaviour = peers[peer as usize];
            let slot = &mut busy_until[peer as usize];
            let (at, arrival) = match behaviour {
                Behaviour::Honest { latency, per_block } => {
                    *slot = now.max(*slot) + latency + per_block * u64::from(request.count());
                    (*slot, Arrival::Response(peer, request.id, served))
                }
                Behaviour::Liar => {
                    let mut served = served;
                    let i = rng.below(served.len() as u64) as usize;
                    if rng.below(2) == 0 {
                        served[i].transactions.push(bad_tx.clone());
                    } else {
                        served[i] = foreign[i % foreign.len()].clone();
                    }
                    (
                        now + 1 + rng.below(500),
                        Arrival::Response(peer, request.id, served),
                    )
                }
                Behaviour::Short => {
                    let keep = rng.below(served.len() as u64) as usize;
                    let served = served[..keep].to_vec();
                    (
                        now + 1 + rng.below(500),
                        Arrival::Response(peer, request.id, served),
                    )
                }
                Behaviour::Dropper => match rng.below(3) {
                    0 => continue,
                    1 => (now + 40_000, Arrival::Response(peer, request.id, served)),
                    _ => (now + 1, Arrival::Failure(peer, request.id)),
                },
            };
            seq += 1;
            arrivals.insert((at, seq), arrival);
        }
        for event in std::iter::from_fn(|| sync.poll_event()) {
            if let SyncEvent::Penalize { peer, reason } = event
                && matches!(peers[peer as usize], Behaviour::Honest { .. })
                && !matches!(reason, PenaltyReason::Timeout { .. })
            {
                honest_penalised = true;
            }
        }
        if sync.is_idle() && queued == all_headers.len() {
            break;
        }
        // Advance to the next thing that happens.
        let next = [
            arrivals.keys().next().map(|(at, _)| *at),
            sync.next_wakeup_ms(now),
            removals.first().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { break };
        now = now.max(next);
        while let Some(entry) = arrivals.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Arrival::Response(peer, id, served) => {
                    let _ = sync.handle_response(&peer, id, served, now);
                }
                Arrival::Failure(peer, id) => {
                    let _ = sync.handle_failure(&peer, id);
                }
            }
        }
        while removals.first().is_some_and(|(at, _)| *at <= now) {
            let (_, peer) = removals.remove(0);
            sync.remove_peer(&peer);
        }
        sync.check_timeouts(now);
        let ready = sync.take_ready();
        if let (Some(first), Some(prev)) = (ready.first(), released.last()) {
            let prev: &Block = prev;
            assert_eq!(
                first.header.number,
                prev.header.number + 1,
                "released in order"
            );
        }
        released.extend(ready);
        let stats = sync.get_stats();
        assert!(stats.downloaded_blocks <= sync.config().max_buffered_blocks);
        assert!(stats.pending_requests <= stats.peers * sync.config().max_parallel_downloads);
    }
    Outcome {
        released,
        stats: sync.get_stats(),
        end_ms: now,
        honest_penalised,
    }
}

#[test]
fn four_peers_download_about_four_times_as_fast_as_one() {
    let blocks = chain(1, 4_096);
    let honest = Behaviour::Honest {
        latency: 50,
        per_block: 5,
    };
    let one = simulate(SyncConfig::default(), &blocks, &[honest], &[], 1);
    let four = simulate(SyncConfig::default(), &blocks, &[honest; 4], &[], 1);
    assert_eq!(one.released, blocks);
    assert_eq!(four.released, blocks);
    let speedup = one.end_ms as f64 / four.end_ms as f64;
    assert!(
        speedup > 3.5,
        "4 peers: {speedup:.2}× ({} ms vs {} ms)",
        four.end_ms,
        one.end_ms
    );
    for outcome in [one, four] {
        assert_eq!(
            (
                outcome.stats.timeouts,
                outcome.stats.hedges,
                outcome.stats.penalties
            ),
            (0, 0, 0)
        );
    }
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        (1u64..300, 0u64..40)
            .prop_map(|(latency, per_block)| Behaviour::Honest { latency, per_block }),
        Just(Behaviour::Liar),
        Just(Behaviour::Short),
        Just(Behaviour::Dropper),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random peers, some lying, short or dropping, some removed midway:
    /// every block comes out exactly once and in order, the buffer stays
    /// bounded, honest peers are never blamed for bad data, and sync
    /// completes whenever one honest peer remains.
    #[test]
    fn every_block_comes_out_once_in_order(
        len in 1usize..700,
        honest in (1u64..300, 0u64..40),
        others in proptest::collection::vec(behaviour(), 0..5),
        removals in proptest::collection::vec((0u64..60_000, 0usize..8), 0..4),
        max_buffered in 64usize..1_000,
        max_queued in 1usize..800,
        max_blocks in 1u32..200,
        seed in any::<u64>(),
    ) {
        let blocks = chain(3, len);
        let mut peers = vec![Behaviour::Honest { latency: honest.0, per_block: honest.1 }];
        peers.extend(others);
        // Peer 0 is honest and stays; any other peer may be removed.
        let removals: Vec<(u64, u32)> = removals
            .into_iter()
            .filter(|(_, p)| *p != 0 && *p < peers.len())
            .map(|(t, p)| (t, p as u32))
            .collect();
        let config = SyncConfig {
            max_buffered_blocks: max_buffered,
            max_queued_headers: max_queued,
            max_blocks_per_request: max_blocks,
            ..SyncConfig::default()
        };
        let outcome = simulate(config, &blocks, &peers, &removals, seed);
        prop_assert!(!outcome.honest_penalised);
        prop_assert_eq!(numbers(&outcome.released), numbers(&blocks));
        prop_assert_eq!(outcome.released, blocks);
    }
}
