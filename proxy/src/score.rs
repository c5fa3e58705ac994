//! The upstream scoreboard (sans-IO): who is up, how fast it answers, how
//! far behind the verified head it is, and whether it lied.
//!
//! Unavailability and lies are scored differently. A timeout or a refused
//! connection is a *failure*: the upstream is skipped for a short backoff
//! (doubling with consecutive failures, capped) and comes back by itself.
//! An answer that fails verification is a *lie*: the upstream loses a large
//! part of its trust score and is benched for a long cooldown (doubling with
//! every lie); a liar is only used when nobody else is left. Lagging
//! upstreams (best block more than [`ScoreConfig::max_lag_blocks`] below the
//! verified head) are ordered after the others. Among the rest, the lowest
//! latency (an exponential moving average) wins.
//!
//! Time comes in as milliseconds from the caller; nothing here reads a clock.

/// Tunables with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoreConfig {
    /// First backoff after a failure (default 250 ms), doubled per consecutive failure.
    pub failure_backoff_ms: u64,
    /// Longest failure backoff (default 10 s).
    pub max_failure_backoff_ms: u64,
    /// First bench after a lie (default 60 s), doubled per lie.
    pub lie_cooldown_ms: u64,
    /// Longest bench after lies (default 1 h).
    pub max_lie_cooldown_ms: u64,
    /// Blocks behind the verified head before an upstream counts as lagging (default 4).
    pub max_lag_blocks: u64,
    /// The hedge delay is this many times an upstream's p95 latency (default 4).
    pub hedge_factor: u64,
    /// Shortest hedge delay (default 100 ms).
    pub min_hedge_ms: u64,
    /// Longest hedge delay, and the delay of an upstream not yet measured (default 500 ms).
    pub max_hedge_ms: u64,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            failure_backoff_ms: 250,
            max_failure_backoff_ms: 10_000,
            lie_cooldown_ms: 60_000,
            max_lie_cooldown_ms: 3_600_000,
            max_lag_blocks: 4,
            hedge_factor: 4,
            min_hedge_ms: 100,
            max_hedge_ms: 500,
        }
    }
}

/// Trust score: starts at 100, a lie costs [`LIE_PENALTY`], a verified answer earns 1.
pub const START_TRUST: i32 = 100;
/// Trust lost per answer that failed verification.
pub const LIE_PENALTY: i32 = 60;
/// Latency samples kept per upstream (for its p95).
pub const LATENCY_SAMPLES: usize = 64;

/// One upstream's row.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamScore {
    /// Trust in `[-1000, 100]`.
    pub trust: i32,
    /// Answers that failed verification.
    pub lies: u64,
    /// Requests that timed out or failed in transport.
    pub failures: u64,
    /// Consecutive failures (reset by a success).
    pub consecutive_failures: u32,
    /// Successful requests.
    pub successes: u64,
    /// Moving average of the answer latency, microseconds.
    pub latency_us: f64,
    /// The last [`LATENCY_SAMPLES`] answer latencies, microseconds (a ring).
    pub recent_us: Vec<u64>,
    /// Best block number it reported.
    pub best_block: u64,
    /// Not used before this time (failure backoff).
    pub down_until_ms: u64,
    /// Not used before this time unless nobody else is left (lie cooldown).
    pub benched_until_ms: u64,
}

impl Default for UpstreamScore {
    fn default() -> Self {
        Self {
            trust: START_TRUST,
            lies: 0,
            failures: 0,
            consecutive_failures: 0,
            successes: 0,
            latency_us: 0.0,
            recent_us: Vec::new(),
            best_block: 0,
            down_until_ms: 0,
            benched_until_ms: 0,
        }
    }
}

/// What an upstream's row says about it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Answers and keeps up.
    Healthy,
    /// Answers, but more than `max_lag_blocks` behind the verified head.
    Lagging,
    /// Failed recently; retried after its backoff.
    Unavailable,
    /// Lied recently; used only as a last resort.
    Demoted,
}

impl Health {
    /// The name used in `/metrics` and `/health`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Lagging => "lagging",
            Self::Unavailable => "unavailable",
            Self::Demoted => "demoted",
        }
    }
}

/// The bounded table of upstream scores (one row per configured upstream).
#[derive(Debug, Clone)]
pub struct Scoreboard {
    config: ScoreConfig,
    rows: Vec<UpstreamScore>,
    verified_head: u64,
}

impl Scoreboard {
    /// A table of `n` fresh upstreams.
    pub fn new(n: usize, config: ScoreConfig) -> Self {
        Self {
            config,
            rows: vec![UpstreamScore::default(); n],
            verified_head: 0,
        }
    }

    /// Number of upstreams.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no upstreams.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// One row.
    pub fn row(&self, id: usize) -> &UpstreamScore {
        &self.rows[id]
    }

    /// Records a successful answer and its latency.
    pub fn success(&mut self, id: usize, latency_us: u64) {
        let row = &mut self.rows[id];
        row.successes += 1;
        row.consecutive_failures = 0;
        row.down_until_ms = 0;
        row.latency_us = if row.successes == 1 {
            latency_us as f64
        } else {
            row.latency_us * 0.8 + latency_us as f64 * 0.2
        };
        if row.recent_us.len() < LATENCY_SAMPLES {
            row.recent_us.push(latency_us);
        } else {
            let slot = (row.successes as usize - 1) % LATENCY_SAMPLES;
            row.recent_us[slot] = latency_us;
        }
    }

    /// How long to wait for `id` before also asking the next upstream (a
    /// hedged read): its p95 latency times [`ScoreConfig::hedge_factor`],
    /// within `[min_hedge_ms, max_hedge_ms]`; the maximum while fewer than
    /// 8 answers were measured. A stalled upstream therefore delays an
    /// answer by at most `max_hedge_ms`, not by the whole timeout.
    pub fn hedge_delay_ms(&self, id: usize) -> u64 {
        let config = &self.config;
        let row = &self.rows[id];
        if row.recent_us.len() < 8 {
            return config.max_hedge_ms;
        }
        let mut sorted = row.recent_us.clone();
        sorted.sort_unstable();
        let p95 = sorted[(sorted.len() * 95 / 100).min(sorted.len() - 1)];
        (p95.saturating_mul(config.hedge_factor) / 1000)
            .clamp(config.min_hedge_ms, config.max_hedge_ms)
    }

    /// Records an answer that verified (raises trust by one).
    pub fn verified(&mut self, id: usize) {
        let row = &mut self.rows[id];
        row.trust = (row.trust + 1).min(START_TRUST);
    }

    /// Records a timeout or transport failure at `now_ms`.
    pub fn failure(&mut self, id: usize, now_ms: u64) {
        let config = &self.config;
        let row = &mut self.rows[id];
        row.failures += 1;
        row.consecutive_failures = row.consecutive_failures.saturating_add(1);
        let shift = (row.consecutive_failures - 1).min(20);
        let backoff = config
            .failure_backoff_ms
            .saturating_mul(1 << shift)
            .min(config.max_failure_backoff_ms);
        row.down_until_ms = now_ms.saturating_add(backoff);
    }

    /// Records an answer that failed verification at `now_ms`.
    pub fn lie(&mut self, id: usize, now_ms: u64) {
        let config = &self.config;
        let row = &mut self.rows[id];
        row.lies += 1;
        row.trust = (row.trust - LIE_PENALTY).max(-1000);
        let shift = (row.lies - 1).min(20) as u32;
        let cooldown = config
            .lie_cooldown_ms
            .saturating_mul(1 << shift)
            .min(config.max_lie_cooldown_ms);
        row.benched_until_ms = now_ms.saturating_add(cooldown);
    }

    /// Forgets an upstream's history (an operator re-admits it).
    pub fn reset(&mut self, id: usize) {
        self.rows[id] = UpstreamScore::default();
    }

    /// Records the best block an upstream reported.
    pub fn best_block(&mut self, id: usize, number: u64) {
        self.rows[id].best_block = number;
    }

    /// Sets the verified head (for lag detection).
    pub fn set_verified_head(&mut self, number: u64) {
        self.verified_head = self.verified_head.max(number);
    }

    /// The verified head number the table compares with.
    pub fn verified_head(&self) -> u64 {
        self.verified_head
    }

    /// One upstream's health at `now_ms`.
    pub fn health(&self, id: usize, now_ms: u64) -> Health {
        let row = &self.rows[id];
        if row.benched_until_ms > now_ms || row.trust <= 0 {
            Health::Demoted
        } else if row.down_until_ms > now_ms {
            Health::Unavailable
        } else if self.verified_head > row.best_block.saturating_add(self.config.max_lag_blocks) {
            Health::Lagging
        } else {
            Health::Healthy
        }
    }

    /// Upstreams in the order to try them: healthy by latency, then lagging,
    /// then unavailable (their backoff may be over by the time we get
    /// there), then demoted ones (a liar is asked only when nobody else is left).
    pub fn order(&self, now_ms: u64) -> Vec<usize> {
        let mut ids: Vec<usize> = (0..self.rows.len()).collect();
        ids.sort_by(|&a, &b| {
            let (ha, hb) = (self.health(a, now_ms), self.health(b, now_ms));
            let (ra, rb) = (&self.rows[a], &self.rows[b]);
            // On probation after failures, or never measured: after the proven ones.
            let latency = |r: &UpstreamScore| match r.successes {
                0 => f64::MAX,
                _ => r.latency_us,
            };
            ha.cmp(&hb)
                .then((ra.consecutive_failures > 0).cmp(&(rb.consecutive_failures > 0)))
                .then(rb.trust.cmp(&ra.trust))
                .then(latency(ra).total_cmp(&latency(rb)))
                .then(a.cmp(&b))
        });
        ids
    }

    /// Upstreams that are healthy or lagging (for `eth_sendRawTransaction`'s fan-out).
    pub fn usable(&self, now_ms: u64) -> Vec<usize> {
        self.order(now_ms)
            .into_iter()
            .filter(|&id| matches!(self.health(id, now_ms), Health::Healthy | Health::Lagging))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastest_healthy_upstream_comes_first() {
        let mut board = Scoreboard::new(3, ScoreConfig::default());
        board.success(0, 900);
        board.success(1, 100);
        board.success(2, 500);
        assert_eq!(board.order(0), vec![1, 2, 0]);
    }

    #[test]
    fn a_failure_is_a_short_backoff_a_lie_a_long_bench() {
        let mut board = Scoreboard::new(2, ScoreConfig::default());
        board.success(0, 1);
        board.success(1, 1);
        board.failure(0, 1_000);
        assert_eq!(board.health(0, 1_000), Health::Unavailable);
        assert_eq!(board.health(0, 1_250), Health::Healthy, "back after 250 ms");
        assert_eq!(
            board.order(1_250),
            vec![1, 0],
            "on probation until it answers"
        );
        board.failure(0, 2_000);
        board.failure(0, 2_000);
        assert_eq!(
            board.health(0, 2_900),
            Health::Unavailable,
            "1 s after the third"
        );
        assert_eq!(board.row(0).trust, START_TRUST, "failures cost no trust");
        board.lie(1, 1_000);
        assert_eq!(board.health(1, 30_000), Health::Demoted);
        assert_eq!(board.health(1, 61_001), Health::Healthy);
        assert_eq!(board.row(1).trust, START_TRUST - LIE_PENALTY);
        board.lie(1, 100_000);
        assert_eq!(
            board.health(1, 1_000_000),
            Health::Demoted,
            "two lies: no trust left"
        );
        assert_eq!(board.order(1_000_000), vec![0, 1], "the liar is last");
        assert_eq!(board.usable(1_000_000), vec![0]);
    }

    #[test]
    fn lagging_upstreams_go_after_healthy_ones() {
        let mut board = Scoreboard::new(2, ScoreConfig::default());
        board.success(0, 10);
        board.success(1, 1_000);
        board.best_block(0, 10);
        board.best_block(1, 20);
        board.set_verified_head(20);
        assert_eq!(board.health(0, 0), Health::Lagging);
        assert_eq!(board.order(0), vec![1, 0]);
        board.best_block(0, 19);
        assert_eq!(board.order(0), vec![0, 1]);
    }

    #[test]
    fn hedge_delay_follows_the_p95_within_bounds() {
        let mut board = Scoreboard::new(3, ScoreConfig::default());
        assert_eq!(board.hedge_delay_ms(0), 500, "not measured: the maximum");
        for i in 0..100 {
            board.success(0, 1_000);
            // One answer in ten takes 80 ms: the p95 is 80 ms.
            board.success(1, if i % 10 == 0 { 80_000 } else { 1_000 });
            board.success(2, 400_000);
        }
        assert_eq!(board.hedge_delay_ms(0), 100, "4 ms is below the floor");
        assert_eq!(board.hedge_delay_ms(1), 320, "4 x the 80 ms p95");
        assert_eq!(board.hedge_delay_ms(2), 500, "capped");
        assert_eq!(board.row(1).recent_us.len(), LATENCY_SAMPLES, "bounded");
    }

    #[test]
    fn backoff_is_capped() {
        let mut board = Scoreboard::new(1, ScoreConfig::default());
        for _ in 0..40 {
            board.failure(0, 0);
        }
        assert_eq!(board.row(0).down_until_ms, 10_000);
        board.success(0, 5);
        assert_eq!(board.health(0, 0), Health::Healthy);
    }
}
