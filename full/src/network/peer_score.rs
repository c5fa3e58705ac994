//! Peer reputation: misbehaviour lowers a peer's score; below a threshold
//! the peer is disconnected and banned for a while. Pure bookkeeping (time
//! comes in as milliseconds); the network service acts on the verdicts.

use std::collections::HashMap;
use std::hash::Hash;

/// Why a peer is penalised, with how much it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Misbehaviour {
    /// A request to it timed out.
    Timeout,
    /// It sent bytes that do not decode, or that break a size bound.
    Malformed,
    /// It sent a well-formed but invalid block, vote, certificate or body.
    InvalidData,
    /// It answered a range it announced with too few or no blocks.
    ShortResponse,
    /// It broke the protocol (wrong chain, unsolicited or oversized answer).
    ProtocolViolation,
}

impl Misbehaviour {
    /// The score this costs.
    pub fn penalty(self) -> i32 {
        match self {
            Misbehaviour::Timeout => 10,
            Misbehaviour::ShortResponse => 20,
            Misbehaviour::Malformed => 50,
            Misbehaviour::InvalidData => 50,
            Misbehaviour::ProtocolViolation => 100,
        }
    }
}

/// Thresholds and timings of the score table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreConfig {
    /// Score at which a peer is banned (scores start at 0 and go down).
    pub ban_threshold: i32,
    /// How long a ban lasts.
    pub ban_ms: u64,
    /// Points recovered per minute of good behaviour (scores decay back to 0).
    pub recovery_per_minute: i32,
    /// Most peers tracked (the least recently seen are forgotten first).
    pub max_tracked: usize,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            ban_threshold: -100,
            ban_ms: 10 * 60 * 1000,
            recovery_per_minute: 10,
            max_tracked: 1024,
        }
    }
}

/// What the table decided about a peer after a penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the peer.
    Keep,
    /// Disconnect and refuse it until `until_ms`.
    Ban {
        /// End of the ban.
        until_ms: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    score: i32,
    updated_ms: u64,
    banned_until_ms: Option<u64>,
}

/// Scores and bans of peers.
#[derive(Debug)]
pub struct PeerScores<P> {
    config: ScoreConfig,
    peers: HashMap<P, Entry>,
}

impl<P: Clone + Eq + Hash> PeerScores<P> {
    /// An empty table.
    pub fn new(config: ScoreConfig) -> Self {
        Self {
            config,
            peers: HashMap::new(),
        }
    }

    /// The peer's current score (0 for an unknown peer).
    pub fn score(&self, peer: &P, now_ms: u64) -> i32 {
        self.peers
            .get(peer)
            .map_or(0, |e| self.recovered(e, now_ms))
    }

    /// Whether `peer` is banned at `now_ms`.
    pub fn is_banned(&self, peer: &P, now_ms: u64) -> bool {
        self.peers
            .get(peer)
            .and_then(|e| e.banned_until_ms)
            .is_some_and(|until| until > now_ms)
    }

    /// Penalises `peer`; bans it when its score falls to the threshold.
    pub fn penalise(&mut self, peer: &P, why: Misbehaviour, now_ms: u64) -> Verdict {
        self.make_room(peer);
        let config = self.config;
        let entry = self.peers.entry(peer.clone()).or_insert(Entry {
            score: 0,
            updated_ms: now_ms,
            banned_until_ms: None,
        });
        let recovered = recover(config, entry, now_ms);
        entry.score = recovered.saturating_sub(why.penalty());
        entry.updated_ms = now_ms;
        if entry.score <= config.ban_threshold {
            let until_ms = now_ms.saturating_add(config.ban_ms);
            entry.banned_until_ms = Some(until_ms);
            entry.score = 0;
            return Verdict::Ban { until_ms };
        }
        Verdict::Keep
    }

    /// Peers whose ban ended by `now_ms`; they are forgotten (a clean slate).
    pub fn expired_bans(&mut self, now_ms: u64) -> Vec<P> {
        let expired: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, e)| e.banned_until_ms.is_some_and(|until| until <= now_ms))
            .map(|(p, _)| p.clone())
            .collect();
        for peer in &expired {
            self.peers.remove(peer);
        }
        expired
    }

    /// Number of peers tracked.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    fn recovered(&self, entry: &Entry, now_ms: u64) -> i32 {
        recover(self.config, entry, now_ms)
    }

    /// Keeps the table bounded: forgets the oldest unbanned entry.
    fn make_room(&mut self, incoming: &P) {
        if self.peers.len() < self.config.max_tracked || self.peers.contains_key(incoming) {
            return;
        }
        let oldest = self
            .peers
            .iter()
            .filter(|(_, e)| e.banned_until_ms.is_none())
            .min_by_key(|(_, e)| e.updated_ms)
            .or_else(|| self.peers.iter().min_by_key(|(_, e)| e.updated_ms))
            .map(|(p, _)| p.clone());
        if let Some(peer) = oldest {
            self.peers.remove(&peer);
        }
    }
}

fn recover(config: ScoreConfig, entry: &Entry, now_ms: u64) -> i32 {
    let minutes = now_ms.saturating_sub(entry.updated_ms) / 60_000;
    let gain = i32::try_from(minutes)
        .unwrap_or(i32::MAX)
        .saturating_mul(config.recovery_per_minute);
    entry.score.saturating_add(gain).min(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_invalid_data_bans_and_the_ban_expires() {
        let mut scores = PeerScores::new(ScoreConfig::default());
        assert_eq!(
            scores.penalise(&1u32, Misbehaviour::InvalidData, 0),
            Verdict::Keep
        );
        assert_eq!(scores.score(&1, 0), -50);
        let verdict = scores.penalise(&1, Misbehaviour::InvalidData, 1);
        assert_eq!(verdict, Verdict::Ban { until_ms: 600_001 });
        assert!(scores.is_banned(&1, 600_000));
        assert!(!scores.is_banned(&2, 0));
        assert!(scores.expired_bans(600_000).is_empty());
        assert_eq!(scores.expired_bans(600_001), vec![1]);
        assert!(!scores.is_banned(&1, 600_001));
    }

    #[test]
    fn scores_recover_with_time() {
        let mut scores = PeerScores::new(ScoreConfig::default());
        scores.penalise(&7u32, Misbehaviour::Malformed, 0);
        assert_eq!(scores.score(&7, 3 * 60_000), -20);
        assert_eq!(scores.score(&7, 60 * 60_000), 0);
        // Slow drips of timeouts never ban a peer that otherwise behaves.
        for minute in 0..100 {
            let verdict = scores.penalise(&8u32, Misbehaviour::Timeout, minute * 60_000);
            assert_eq!(verdict, Verdict::Keep);
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let config = ScoreConfig {
            max_tracked: 4,
            ..ScoreConfig::default()
        };
        let mut scores = PeerScores::new(config);
        for peer in 0..100u32 {
            scores.penalise(&peer, Misbehaviour::Timeout, u64::from(peer));
        }
        assert_eq!(scores.len(), 4);
    }
}
