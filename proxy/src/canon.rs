//! The verified canonical chain the proxy serves from (sans-IO).
//!
//! The light client verifies *certified* heads (a QC each). Between two
//! certified heads the proxy may have missed blocks (an upstream died, a
//! head was skipped); [`Canon`] says which headers are missing, checks the
//! fetched ones by their parent-hash chain up to the certified head
//! ([`verify_ancestry`]), and reports what changed: headers added (oldest
//! first) and, on a reorg, headers removed. Subscribers therefore see every
//! head exactly once and in order, whatever happened upstream.
//!
//! The window is bounded ([`Canon::new`]'s `max_headers`); older headers
//! can be verified on demand against the lowest one ([`Canon::extend_down`]).

use alloy_primitives::B256;
use luxtensor_light::client::proofs::{ProofError, verify_ancestry};
use luxtensor_light::{Header, SignedHeader};
use std::collections::{BTreeMap, HashMap};

/// Deepest reorg the proxy follows (deeper: the stream restarts at the new head).
pub const MAX_REORG_DEPTH: u64 = 64;
/// Most headers fetched to fill one gap (more: the stream restarts at the new head).
pub const MAX_GAP: u64 = 1024;

/// Why a chain of headers was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    /// The fetched headers do not lead to the certified head.
    #[error("fetched headers do not link to the certified head: {0}")]
    Ancestry(#[from] ProofError),
    /// The chain would replace a finalized block.
    #[error("the chain replaces block {number}, which is final")]
    RevertsFinalized {
        /// The final block's number.
        number: u64,
    },
    /// Nothing to link to (an empty list).
    #[error("an empty chain of headers")]
    Empty,
}

/// What to fetch before [`Canon::connect`] can place a certified head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Already the canonical block at its height: nothing to do.
    Known,
    /// Connect it directly (`connect(vec![head])`).
    Direct,
    /// Fetch the canonical headers `from..head.number` first (oldest first).
    Fetch {
        /// First number to fetch.
        from: u64,
    },
}

/// What [`Canon::connect`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Headers that left the canonical chain, oldest first.
    pub removed: Vec<SignedHeader>,
    /// Headers that joined it, oldest first (the new head last).
    pub added: Vec<SignedHeader>,
    /// The stream restarted: the gap or reorg was too deep to fill.
    pub restarted: bool,
}

/// The verified canonical window.
#[derive(Debug, Clone)]
pub struct Canon {
    by_number: BTreeMap<u64, B256>,
    headers: HashMap<B256, SignedHeader>,
    finalized: Option<u64>,
    max_headers: usize,
}

impl Canon {
    /// An empty window of at most `max_headers` headers.
    pub fn new(max_headers: usize) -> Self {
        Self {
            by_number: BTreeMap::new(),
            headers: HashMap::new(),
            finalized: None,
            max_headers: max_headers.max(2),
        }
    }

    /// The newest canonical header.
    pub fn head(&self) -> Option<&SignedHeader> {
        self.by_number
            .last_key_value()
            .and_then(|(_, h)| self.headers.get(h))
    }

    /// The oldest header held.
    pub fn lowest(&self) -> Option<&SignedHeader> {
        self.by_number
            .first_key_value()
            .and_then(|(_, h)| self.headers.get(h))
    }

    /// The canonical header at `number`, if in the window.
    pub fn by_number(&self, number: u64) -> Option<&SignedHeader> {
        self.by_number
            .get(&number)
            .and_then(|h| self.headers.get(h))
    }

    /// A canonical header by hash, if in the window.
    pub fn by_hash(&self, hash: &B256) -> Option<&SignedHeader> {
        self.headers.get(hash)
    }

    /// The highest final block number (as the light client says).
    pub fn finalized(&self) -> Option<u64> {
        self.finalized
    }

    /// The newest final canonical header.
    pub fn finalized_header(&self) -> Option<&SignedHeader> {
        self.finalized.and_then(|n| {
            self.by_number
                .range(..=n)
                .next_back()
                .and_then(|(_, h)| self.headers.get(h))
        })
    }

    /// Headers held.
    pub fn len(&self) -> usize {
        self.by_number.len()
    }

    /// Whether nothing is held yet.
    pub fn is_empty(&self) -> bool {
        self.by_number.is_empty()
    }

    /// Marks `number` (and everything below) final.
    pub fn finalize(&mut self, number: u64) {
        self.finalized = Some(self.finalized.map_or(number, |f| f.max(number)));
    }

    /// What is needed to place a certified `head`.
    pub fn plan(&self, head: &Header) -> Plan {
        let hash = head.hash();
        if self.by_number.get(&head.number) == Some(&hash) {
            return Plan::Known;
        }
        let Some((&tip, _)) = self.by_number.last_key_value() else {
            return Plan::Direct;
        };
        let parent_known =
            head.number > 0 && self.by_number.get(&(head.number - 1)) == Some(&head.parent_hash);
        if parent_known {
            return Plan::Direct;
        }
        if head.number > tip.saturating_add(MAX_GAP) {
            return Plan::Direct; // too far: restart at the head
        }
        // Missing blocks (head above the tip) or a reorg (parent differs):
        // fetch from the tip (or a little below the head for a reorg).
        let from = if head.number > tip + 1 {
            tip + 1
        } else {
            head.number.saturating_sub(MAX_REORG_DEPTH.min(8)).max(1)
        };
        Plan::Fetch {
            from: from.min(head.number),
        }
    }

    /// Places `chain` (oldest first, the certified head last; every
    /// header but the last is checked by its hash chain up to the last).
    pub fn connect(&mut self, chain: Vec<SignedHeader>) -> Result<Applied, CanonError> {
        let Some(head) = chain.last() else {
            return Err(CanonError::Empty);
        };
        let plain: Vec<Header> = chain[..chain.len() - 1]
            .iter()
            .map(|h| h.header.clone())
            .collect();
        verify_ancestry(&plain, &head.header)?;
        // The first header whose parent is canonical here.
        let link = chain.iter().position(|h| {
            h.number > 0 && self.by_number.get(&(h.number - 1)) == Some(&h.parent_hash)
        });
        let (start, restarted) = match link {
            Some(i) => (i, false),
            None if self.by_number.is_empty() => (chain.len() - 1, false),
            None => (chain.len() - 1, true),
        };
        // Skip the prefix that is already canonical.
        let mut first_new = start;
        while first_new < chain.len()
            && self.by_number.get(&chain[first_new].number) == Some(&chain[first_new].hash())
        {
            first_new += 1;
        }
        if first_new == chain.len() {
            return Ok(Applied::default());
        }
        let from = chain[first_new].number;
        let replaced_to = if restarted {
            u64::MAX
        } else {
            self.by_number.last_key_value().map_or(0, |(n, _)| *n)
        };
        let replaced_from = if restarted { 0 } else { from };
        if let Some(f) = self.finalized
            && !restarted
            && from <= f
            && self.by_number.range(from..=f).next().is_some()
        {
            return Err(CanonError::RevertsFinalized { number: f });
        }
        let mut removed = Vec::new();
        if replaced_to >= replaced_from {
            let numbers: Vec<u64> = self
                .by_number
                .range(replaced_from..)
                .map(|(n, _)| *n)
                .collect();
            for n in numbers {
                if let Some(hash) = self.by_number.remove(&n)
                    && let Some(h) = self.headers.remove(&hash)
                {
                    removed.push(h);
                }
            }
        }
        if restarted {
            // Keep nothing of the old window: the new head starts a new one.
            removed.clear();
            self.by_number.clear();
            self.headers.clear();
        }
        let added: Vec<SignedHeader> = chain[first_new..].to_vec();
        for h in &added {
            self.by_number.insert(h.number, h.hash());
            self.headers.insert(h.hash(), h.clone());
        }
        self.evict();
        Ok(Applied {
            removed,
            added,
            restarted,
        })
    }

    /// Adds older headers (oldest first) that lead by parent hashes to the
    /// lowest header held; returns how many were added.
    pub fn extend_down(&mut self, older: Vec<SignedHeader>) -> Result<usize, CanonError> {
        let Some(lowest) = self.lowest().cloned() else {
            return Err(CanonError::Empty);
        };
        let plain: Vec<Header> = older.iter().map(|h| h.header.clone()).collect();
        verify_ancestry(&plain, &lowest.header)?;
        let room = self.max_headers.saturating_sub(self.by_number.len());
        let n = older.len().min(room);
        for h in older.into_iter().rev().take(n) {
            self.by_number.insert(h.number, h.hash());
            self.headers.insert(h.hash(), h);
        }
        Ok(n)
    }

    fn evict(&mut self) {
        while self.by_number.len() > self.max_headers {
            if let Some((_, hash)) = self.by_number.pop_first() {
                self.headers.remove(&hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use luxtensor_light::ChainSpec;

    fn child(parent: &SignedHeader, salt: u64) -> SignedHeader {
        SignedHeader {
            header: Header {
                parent_hash: parent.hash(),
                number: parent.number + 1,
                slot: parent.slot + 1,
                gas_used: salt,
                ..parent.header.clone()
            },
            proposer_signature: Default::default(),
        }
    }

    fn chain(len: usize, salt: u64, from: &SignedHeader) -> Vec<SignedHeader> {
        let mut out = vec![child(from, salt)];
        while out.len() < len {
            let next = child(out.last().unwrap(), salt);
            out.push(next);
        }
        out
    }

    fn genesis() -> SignedHeader {
        SignedHeader {
            header: ChainSpec::devnet(1).genesis_header(),
            proposer_signature: Default::default(),
        }
    }

    #[test]
    fn heads_in_order_extend_directly() {
        let mut canon = Canon::new(100);
        let blocks = chain(3, 0, &genesis());
        for b in &blocks {
            assert_eq!(canon.plan(b), Plan::Direct);
            let applied = canon.connect(vec![b.clone()]).unwrap();
            assert_eq!(applied.added, vec![b.clone()]);
        }
        assert_eq!(canon.plan(&blocks[2]), Plan::Known);
        assert_eq!(canon.head().unwrap().number, 3);
    }

    #[test]
    fn a_gap_is_filled_in_order_and_checked() {
        let mut canon = Canon::new(100);
        let blocks = chain(6, 0, &genesis());
        canon.connect(vec![blocks[0].clone()]).unwrap();
        assert_eq!(canon.plan(&blocks[5]), Plan::Fetch { from: 2 });
        // A forged middle header is refused.
        let mut forged = blocks[1..].to_vec();
        forged[1].header.gas_used = 99;
        assert!(matches!(
            canon.connect(forged),
            Err(CanonError::Ancestry(_))
        ));
        let applied = canon.connect(blocks[1..].to_vec()).unwrap();
        let numbers: Vec<u64> = applied.added.iter().map(|h| h.number).collect();
        assert_eq!(numbers, vec![2, 3, 4, 5, 6]);
        assert!(applied.removed.is_empty());
    }

    #[test]
    fn a_reorg_reports_removed_then_added() {
        let mut canon = Canon::new(100);
        let base = chain(2, 0, &genesis());
        for b in &base {
            canon.connect(vec![b.clone()]).unwrap();
        }
        let old = chain(2, 1, &base[1]);
        for b in &old {
            canon.connect(vec![b.clone()]).unwrap();
        }
        let new = chain(3, 2, &base[1]);
        assert!(matches!(canon.plan(&new[2]), Plan::Fetch { .. }));
        let mut fetched = base.clone();
        fetched.extend(new.clone());
        let applied = canon.connect(fetched).unwrap();
        assert_eq!(applied.removed, old);
        assert_eq!(applied.added, new);
        assert_eq!(canon.head().unwrap().hash(), new[2].hash());
        assert!(canon.by_hash(&old[0].hash()).is_none());
    }

    #[test]
    fn finalized_blocks_are_never_replaced() {
        let mut canon = Canon::new(100);
        let base = chain(3, 0, &genesis());
        for b in &base {
            canon.connect(vec![b.clone()]).unwrap();
        }
        canon.finalize(2);
        let fork = chain(2, 5, &base[0]);
        let mut fetched = vec![base[0].clone()];
        fetched.extend(fork);
        assert_eq!(
            canon.connect(fetched),
            Err(CanonError::RevertsFinalized { number: 2 })
        );
    }

    #[test]
    fn window_is_bounded_and_extends_down() {
        let mut canon = Canon::new(4);
        let blocks = chain(10, 0, &genesis());
        for b in &blocks[4..] {
            canon.connect(vec![b.clone()]).unwrap();
        }
        assert_eq!(canon.len(), 4);
        assert_eq!(canon.lowest().unwrap().number, 7);
        let mut canon = Canon::new(10);
        for b in &blocks[6..] {
            canon.connect(vec![b.clone()]).unwrap();
        }
        assert_eq!(canon.extend_down(blocks[3..6].to_vec()), Ok(3));
        assert_eq!(canon.by_number(4).unwrap().hash(), blocks[3].hash());
        assert!(canon.extend_down(blocks[0..2].to_vec()).is_err());
    }
}
