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
    /// When the peer last answered: a pipelined request starts being served
    /// only once the previous answer is out, so its service time counts
    /// from here.
    pub last_answer_ms: u64,
}

impl PeerState {
    /// A peer whose chain reaches `best`, with no measurements yet.
    pub fn new(best: u64) -> Self {
        Self {
            best,
            in_flight: 0,
            excluded: Vec::new(),
            speed: Speed::default(),
            last_answer_ms: 0,
        }
    }

    /// Whether the peer may be asked for block `number`.
    pub fn has(&self, number: u64) -> bool {
        number <= self.best && !self.excluded.iter().any(|r| r.contains(&number))
    }

    /// Expected time until a new batch of `blocks` is answered, behind the
    /// batches already in flight (a peer's bandwidth serves them one after
    /// another); `None` before the first measurement.
    pub fn expected_ms(&self, blocks: u32) -> Option<u64> {
        let position = self.in_flight as u64 + 1;
        self.speed
            .expected_ms(blocks)
            .map(|e| e.saturating_mul(position))
    }

    /// Records an answer of `blocks` blocks to a request sent at `sent_ms`.
    pub fn record_answer(&mut self, sent_ms: u64, now_ms: u64, blocks: u32) {
        let service = now_ms.saturating_sub(sent_ms.max(self.last_answer_ms));
        self.speed.record(service, blocks);
        self.last_answer_ms = self.last_answer_ms.max(now_ms);
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

/// A peer's answer time as `rtt + blocks × per_block`: a least-squares line
/// through exponentially weighted moving averages (weight 1/4 for a new
/// sample) of the batch size and the answer time. While all batches have
/// about the same size, the whole time is charged to the blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Speed {
    /// Mean batch size.
    n: f64,
    /// Mean answer time, in milliseconds.
    t: f64,
    /// Mean of the squared batch size.
    nn: f64,
    /// Mean of batch size × answer time.
    nt: f64,
    /// Samples recorded so far (saturating).
    samples: u32,
}

/// Weight of a new sample.
const ALPHA: f64 = 0.25;

impl Speed {
    /// `(rtt_ms, ms_per_block)`, or `None` before the first sample.
    fn line(&self) -> Option<(f64, f64)> {
        if self.samples == 0 {
            return None;
        }
        let variance = self.nn - self.n * self.n;
        let line = if variance > 1.0 {
            let slope = (self.nt - self.n * self.t) / variance;
            (self.t - slope * self.n, slope)
        } else if self.n >= 1.0 {
            (0.0, self.t / self.n)
        } else {
            (self.t, 0.0)
        };
        Some(match line {
            (_, slope) if slope < 0.0 => (self.t, 0.0),
            (rtt, _) if rtt < 0.0 => (0.0, self.t / self.n.max(1.0)),
            line => line,
        })
    }

    /// Expected answer time for `blocks` blocks, or `None` before the first sample.
    pub fn expected_ms(&self, blocks: u32) -> Option<u64> {
        let (rtt, per_block) = self.line()?;
        // `as` saturates; the estimate is finite and non-negative.
        Some((rtt + per_block * f64::from(blocks)).ceil() as u64)
    }

    /// The most blocks the peer is expected to deliver within `budget_ms`
    /// (at least 1, at most `max`).
    pub fn blocks_within(&self, budget_ms: u64, max: u32) -> u32 {
        match self.line() {
            Some((rtt, per_block)) if per_block > 0.0 => {
                let blocks = ((budget_ms as f64 - rtt) / per_block).floor();
                (blocks.max(1.0) as u32).min(max)
            }
            _ => max,
        }
    }

    /// Records that `blocks` blocks took `elapsed_ms` to arrive.
    pub fn record(&mut self, elapsed_ms: u64, blocks: u32) {
        let (n, t) = (f64::from(blocks), elapsed_ms as f64);
        let alpha = if self.samples == 0 { 1.0 } else { ALPHA };
        let mix = |old: f64, new: f64| old + alpha * (new - old);
        self.n = mix(self.n, n);
        self.t = mix(self.t, t);
        self.nn = mix(self.nn, n * n);
        self.nt = mix(self.nt, n * t);
        self.samples = self.samples.saturating_add(1);
    }
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
        assert!((220..=236).contains(&e128), "{e128}");
        assert!((95..=110).contains(&e1), "{e1}");
        // Same-size batches: all the time is charged to the blocks.
        let mut same = Speed::default();
        same.record(1_000, 100);
        same.record(1_000, 100);
        assert_eq!(same.expected_ms(100), Some(1_000));
        assert_eq!(same.expected_ms(50), Some(500));
        // Empty answers measure the round trip only.
        let mut empty = Speed::default();
        empty.record(80, 0);
        assert_eq!(empty.expected_ms(128), Some(80));
        assert_eq!(speed.blocks_within(10_000, 128), 128);
        assert!(speed.blocks_within(150, 128) < 128);
    }
}
