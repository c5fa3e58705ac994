//! Per-peer bookkeeping: how far a peer's chain reaches, which blocks it must
//! not be asked for, and how fast it answers.

use std::ops::Range;

/// Most excluded ranges remembered per peer (adjacent ranges merge; beyond
/// this the oldest is forgotten, so the peer may be asked again).
pub(crate) const MAX_EXCLUDED_RANGES: usize = 32;

/// What the scheduler knows about one peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerState {
    /// The highest block number the peer says it has.
    pub best: u64,
    /// Requests assigned to the peer and not yet resolved.
    pub in_flight: usize,
    /// Block numbers the peer failed to serve (short answer or bad data).
    excluded: Vec<Range<u64>>,
    /// Measured latency and throughput.
    pub speed: Speed,
}

impl PeerState {
    /// A peer whose chain reaches `best`, with no measurements yet.
    pub fn new(best: u64) -> Self {
        Self {
            best,
            in_flight: 0,
            excluded: Vec::new(),
            speed: Speed::default(),
        }
    }

    /// Whether the peer may be asked for block `number`.
    pub fn has(&self, number: u64) -> bool {
        number <= self.best && !self.excluded.iter().any(|r| r.contains(&number))
    }

    /// Never ask this peer for `range` again (bounded; see [`MAX_EXCLUDED_RANGES`]).
    pub fn exclude(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        let mut merged = range;
        self.excluded.retain(|r| {
            if r.start <= merged.end && merged.start <= r.end {
                merged = merged.start.min(r.start)..merged.end.max(r.end);
                false
            } else {
                true
            }
        });
        self.excluded.push(merged);
        if self.excluded.len() > MAX_EXCLUDED_RANGES {
            self.excluded.remove(0);
        }
    }
}

/// A peer's answer time as `rtt + blocks × per_block`, both tracked as
/// exponentially weighted moving averages (weight 1/4 for a new sample).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Speed {
    /// Fixed cost of a request, in milliseconds.
    rtt_ms: u64,
    /// Cost of each block, in microseconds.
    us_per_block: u64,
    /// Samples recorded so far (saturating).
    samples: u32,
}

impl Speed {
    /// Expected answer time for `blocks` blocks, or `None` before the first sample.
    pub fn expected_ms(&self, blocks: u32) -> Option<u64> {
        (self.samples > 0).then(|| {
            self.rtt_ms
                .saturating_add((u64::from(blocks).saturating_mul(self.us_per_block)).div_ceil(1000))
        })
    }

    /// The most blocks the peer is expected to deliver within `budget_ms`
    /// (at least 1, at most `max`).
    pub fn blocks_within(&self, budget_ms: u64, max: u32) -> u32 {
        if self.samples == 0 || self.us_per_block == 0 {
            return max;
        }
        let room_us = budget_ms.saturating_sub(self.rtt_ms).saturating_mul(1000);
        u32::try_from(room_us / self.us_per_block)
            .unwrap_or(u32::MAX)
            .clamp(1, max)
    }

    /// Records that `blocks` blocks took `elapsed_ms` to arrive.
    pub fn record(&mut self, elapsed_ms: u64, blocks: u32) {
        let blocks = u64::from(blocks);
        if self.samples == 0 {
            // The first sample cannot split latency from throughput; charging it
            // all to the blocks over-estimates small batches, the safe side.
            match blocks {
                0 => self.rtt_ms = elapsed_ms,
                _ => self.us_per_block = elapsed_ms.saturating_mul(1000) / blocks,
            }
        } else {
            if blocks > 0 {
                let sample = elapsed_ms.saturating_sub(self.rtt_ms).saturating_mul(1000) / blocks;
                self.us_per_block = ewma(self.us_per_block, sample);
            }
            let sample =
                elapsed_ms.saturating_sub(blocks.saturating_mul(self.us_per_block) / 1000);
            self.rtt_ms = ewma(self.rtt_ms, sample);
        }
        self.samples = self.samples.saturating_add(1);
    }
}

/// `old + (new - old) / 4`, without overflow.
fn ewma(old: u64, new: u64) -> u64 {
    old - old / 4 + new / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_merge_and_stay_bounded() {
        let mut peer = PeerState::new(1_000);
        peer.exclude(10..20);
        peer.exclude(20..30);
        peer.exclude(5..12);
        assert_eq!(peer.excluded, vec![5..30]);
        assert!(peer.has(4) && !peer.has(5) && !peer.has(29) && peer.has(30));
        assert!(!peer.has(1_001));
        for i in 0..100 {
            peer.exclude(100 + 10 * i..105 + 10 * i);
        }
        assert_eq!(peer.excluded.len(), MAX_EXCLUDED_RANGES);
    }

    #[test]
    fn speed_learns_latency_and_throughput() {
        let mut speed = Speed::default();
        assert_eq!(speed.expected_ms(128), None);
        // 100 ms latency + 1 ms per block, with varied batch sizes.
        for round in 0..200 {
            let blocks = [128u32, 16, 64, 1][round % 4];
            speed.record(100 + u64::from(blocks), blocks);
        }
        let e128 = speed.expected_ms(128).unwrap();
        let e1 = speed.expected_ms(1).unwrap();
        assert!((200..=260).contains(&e128), "{e128}");
        assert!((60..=140).contains(&e1), "{e1}");
        assert_eq!(speed.blocks_within(10_000, 128), 128);
        assert!(speed.blocks_within(150, 128) < 128);
    }
}
