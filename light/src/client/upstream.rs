//! The score table of upstream nodes: who is silent, lagging or lying.
//!
//! Each upstream the shell connects to gets a row. Useful heads and updates
//! raise its score; a message that breaks a rule lowers it a lot, a
//! malformed one less, silence and lag a little (once per episode). An
//! upstream is *demoted* while it is silent or lagging, or once its score
//! falls to [`DEMOTE_AT`]; the shell replaces demoted upstreams and prefers
//! the best scored ([`Upstreams::preferred`]).

use std::collections::BTreeMap;

/// Identifies an upstream (the shell's choice of number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpstreamId(pub u32);

impl std::fmt::Display for UpstreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream {}", self.0)
    }
}

/// Highest score an upstream can reach.
pub const MAX_SCORE: i32 = 100;
/// Score at or below which an upstream is demoted.
pub const DEMOTE_AT: i32 = -40;
/// Gained per useful head or applied update.
pub const USEFUL: i32 = 1;
/// Lost per message that breaks a rule (one lie demotes a fresh upstream).
pub const LIE: i32 = -50;
/// Lost per malformed or oversized message.
pub const MALFORMED: i32 = -25;
/// Lost when an upstream falls silent.
pub const SILENT: i32 = -10;
/// Lost when an upstream starts lagging.
pub const LAGGING: i32 = -5;

/// What is wrong with an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Nothing received for this long.
    Silent {
        /// Milliseconds since its last message.
        for_ms: u64,
    },
    /// Its best head is this many slots behind the client's head.
    Lagging {
        /// Slots behind.
        behind_slots: u64,
    },
    /// It sent something that breaks a rule (see the `Rejected` event).
    Lying {
        /// The rule's name.
        rule: &'static str,
    },
    /// It served one of two conflicting certified headers.
    Conflicting,
}

/// One upstream's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// Current score in `[.., MAX_SCORE]`.
    pub score: i32,
    /// Highest slot of a valid head it sent.
    pub best_slot: u64,
    /// When it last sent anything (client clock, ms).
    pub last_seen_ms: u64,
    /// Flagged silent (until it sends again).
    pub silent: bool,
    /// Flagged lagging (until it catches up).
    pub lagging: bool,
}

impl UpstreamStatus {
    /// Whether the shell should replace it.
    pub fn is_demoted(&self) -> bool {
        self.silent || self.lagging || self.score <= DEMOTE_AT
    }
}

/// Why an upstream could not be added or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The table is full.
    #[error("already following {max} upstreams, the most allowed; remove one first")]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The id is not in the table.
    #[error("{0} is not registered")]
    Unknown(UpstreamId),
}

/// The bounded score table.
#[derive(Debug, Clone)]
pub struct Upstreams {
    rows: BTreeMap<UpstreamId, UpstreamStatus>,
    max: usize,
}

impl Upstreams {
    /// An empty table of at most `max` upstreams.
    pub fn new(max: usize) -> Self {
        Self {
            rows: BTreeMap::new(),
            max,
        }
    }

    /// Adds an upstream (idempotent), seen now.
    pub fn add(&mut self, id: UpstreamId, now_ms: u64) -> Result<(), UpstreamError> {
        if !self.rows.contains_key(&id) && self.rows.len() >= self.max {
            return Err(UpstreamError::TooMany { max: self.max });
        }
        self.rows.entry(id).or_insert(UpstreamStatus {
            score: 0,
            best_slot: 0,
            last_seen_ms: now_ms,
            silent: false,
            lagging: false,
        });
        Ok(())
    }

    /// Removes an upstream.
    pub fn remove(&mut self, id: UpstreamId) -> Option<UpstreamStatus> {
        self.rows.remove(&id)
    }

    /// One row.
    pub fn get(&self, id: UpstreamId) -> Option<&UpstreamStatus> {
        self.rows.get(&id)
    }

    /// All rows.
    pub fn iter(&self) -> impl Iterator<Item = (UpstreamId, &UpstreamStatus)> {
        self.rows.iter().map(|(id, s)| (*id, s))
    }

    /// Upstreams that are not demoted, best score first.
    pub fn preferred(&self) -> Vec<UpstreamId> {
        let mut ids: Vec<_> = self
            .rows
            .iter()
            .filter(|(_, s)| !s.is_demoted())
            .map(|(id, s)| (s.score, *id))
            .collect();
        ids.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Records that `id` sent something at `now_ms` (clears silence).
    pub(crate) fn seen(&mut self, id: UpstreamId, now_ms: u64) -> Result<(), UpstreamError> {
        let row = self.rows.get_mut(&id).ok_or(UpstreamError::Unknown(id))?;
        row.last_seen_ms = now_ms;
        row.silent = false;
        Ok(())
    }

    /// Adjusts a score (bounded above by [`MAX_SCORE`]).
    pub(crate) fn adjust(&mut self, id: UpstreamId, delta: i32) {
        if let Some(row) = self.rows.get_mut(&id) {
            row.score = row.score.saturating_add(delta).min(MAX_SCORE);
        }
    }

    /// Records a valid head at `slot` from `id`.
    pub(crate) fn head_at(&mut self, id: UpstreamId, slot: u64) {
        if let Some(row) = self.rows.get_mut(&id) {
            row.best_slot = row.best_slot.max(slot);
        }
    }

    /// Flags upstreams silent for longer than `timeout_ms` or more than
    /// `lag_slots` behind `head_slot`; returns the new problems (once per episode).
    pub(crate) fn check(
        &mut self,
        now_ms: u64,
        timeout_ms: u64,
        head_slot: u64,
        lag_slots: u64,
    ) -> Vec<(UpstreamId, Problem)> {
        let mut problems = Vec::new();
        for (id, row) in &mut self.rows {
            let quiet = now_ms.saturating_sub(row.last_seen_ms);
            if quiet > timeout_ms && !row.silent {
                row.silent = true;
                row.score = row.score.saturating_add(SILENT);
                problems.push((*id, Problem::Silent { for_ms: quiet }));
            }
            let behind = head_slot.saturating_sub(row.best_slot);
            if behind > lag_slots {
                if !row.lagging {
                    row.lagging = true;
                    row.score = row.score.saturating_add(LAGGING);
                    problems.push((
                        *id,
                        Problem::Lagging {
                            behind_slots: behind,
                        },
                    ));
                }
            } else {
                row.lagging = false;
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_bounded_and_scores_demote() {
        let mut t = Upstreams::new(2);
        t.add(UpstreamId(1), 0).unwrap();
        t.add(UpstreamId(2), 0).unwrap();
        t.add(UpstreamId(2), 0).unwrap();
        assert_eq!(
            t.add(UpstreamId(3), 0),
            Err(UpstreamError::TooMany { max: 2 })
        );
        t.adjust(UpstreamId(1), LIE);
        assert!(t.get(UpstreamId(1)).unwrap().is_demoted());
        assert_eq!(t.preferred(), vec![UpstreamId(2)]);
        for _ in 0..500 {
            t.adjust(UpstreamId(2), USEFUL);
        }
        assert_eq!(t.get(UpstreamId(2)).unwrap().score, MAX_SCORE);
    }

    #[test]
    fn silence_and_lag_are_flagged_once_per_episode() {
        let mut t = Upstreams::new(4);
        t.add(UpstreamId(1), 0).unwrap();
        t.head_at(UpstreamId(1), 10);
        assert!(t.check(1_000, 5_000, 12, 4).is_empty());
        let problems = t.check(6_000, 5_000, 20, 4);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(t.check(7_000, 5_000, 20, 4).is_empty(), "reported once");
        t.seen(UpstreamId(1), 8_000).unwrap();
        t.head_at(UpstreamId(1), 20);
        assert!(t.check(8_000, 5_000, 20, 4).is_empty());
        assert!(!t.get(UpstreamId(1)).unwrap().is_demoted());
    }
}
