//! The upstream pool: the configured upstreams, their [`Scoreboard`], and
//! calls that try the best upstream first and the next ones on failure.
//!
//! Every call has a timeout. A transport failure or timeout marks the
//! upstream unavailable (short backoff) and the read is retried on the next
//! upstream; a JSON-RPC error is an answer and is returned as is. Callers
//! that verify an answer report a failed check with [`Pool::lie`] and ask
//! again excluding the liar.
//!
//! Idempotent reads are *hedged*: when the best upstream has not answered
//! within its hedge delay (its p95 latency times a factor, bounded; see
//! [`Scoreboard::hedge_delay_ms`]) the next upstream is asked as well, and
//! the first answer wins. A stalled upstream thus costs a read at most the
//! largest hedge delay, never the whole timeout; the pollers (which wait the
//! full timeout) are what score it unavailable.

use crate::score::{Health, ScoreConfig, Scoreboard};
use crate::transport::{CallError, Transport};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::Value;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One configured upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Its URL as given.
    pub url: String,
    /// Its client.
    pub transport: Transport,
}

/// Why no upstream could answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PoolError {
    /// Every upstream failed or was excluded.
    #[error("no upstream could answer ({tried} tried): {last}")]
    Exhausted {
        /// How many were asked.
        tried: usize,
        /// The last failure.
        last: String,
    },
}

/// The upstreams and their scores.
#[derive(Debug)]
pub struct Pool {
    upstreams: Vec<Upstream>,
    board: Mutex<Scoreboard>,
    started: Instant,
    timeout: Duration,
}

impl Pool {
    /// A pool of `urls` (each `http://` or `ws://`); every call waits at most `timeout`.
    pub fn new(urls: &[String], timeout: Duration, scores: ScoreConfig) -> Result<Self, String> {
        let upstreams = urls
            .iter()
            .map(|u| {
                Ok(Upstream {
                    url: u.clone(),
                    transport: Transport::new(u)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if upstreams.is_empty() {
            return Err("no upstream: pass --upstream URL (or --dev)".into());
        }
        Ok(Self {
            board: Mutex::new(Scoreboard::new(upstreams.len(), scores)),
            upstreams,
            started: Instant::now(),
            timeout,
        })
    }

    /// Milliseconds since the pool started (the scoreboard's clock).
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The upstreams.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `f` on the scoreboard.
    pub fn with_board<T>(&self, f: impl FnOnce(&mut Scoreboard) -> T) -> T {
        f(&mut self.board.lock().expect("not poisoned"))
    }

    /// One upstream's health now.
    pub fn health(&self, id: usize) -> Health {
        let now = self.now_ms();
        self.with_board(|b| b.health(id, now))
    }

    /// Upstreams in the order to try them.
    pub fn order(&self) -> Vec<usize> {
        let now = self.now_ms();
        self.with_board(|b| b.order(now))
    }

    /// Healthy or lagging upstreams (where a transaction is sent).
    pub fn usable(&self) -> Vec<usize> {
        let now = self.now_ms();
        self.with_board(|b| b.usable(now))
    }

    /// Reports an answer of `id` that failed verification.
    pub fn lie(&self, id: usize, what: &str) {
        tracing::warn!(upstream = %self.upstreams[id].url, %what, "answer failed verification; upstream demoted");
        let now = self.now_ms();
        self.with_board(|b| b.lie(id, now));
    }

    /// Reports an answer of `id` that verified.
    pub fn verified(&self, id: usize) {
        self.with_board(|b| b.verified(id));
    }

    /// Calls one upstream, scoring the outcome.
    pub async fn call_on(
        &self,
        id: usize,
        method: &str,
        params: &Value,
    ) -> Result<Value, CallError> {
        let started = Instant::now();
        let result = self.upstreams[id]
            .transport
            .call(method, params, self.timeout)
            .await;
        let now = self.now_ms();
        match &result {
            Err(e) if e.is_unavailable() => self.with_board(|b| b.failure(id, now)),
            Err(CallError::Malformed(_)) => self.with_board(|b| b.lie(id, now)),
            _ => {
                let us = started.elapsed().as_micros() as u64;
                self.with_board(|b| b.success(id, us));
            }
        }
        result
    }

    /// How long to wait for `id` before asking the next upstream as well.
    pub fn hedge_delay(&self, id: usize) -> Duration {
        Duration::from_millis(self.with_board(|b| b.hedge_delay_ms(id))).min(self.timeout)
    }

    /// Calls the best upstream not in `exclude`, then the next ones while
    /// they fail in transport; an idempotent read is also sent to the next
    /// upstream when the current one is slower than its hedge delay, and
    /// the first answer wins. Returns who answered and the answer (a
    /// JSON-RPC error is an answer).
    pub async fn call(
        &self,
        method: &str,
        params: &Value,
        exclude: &[usize],
    ) -> Result<(usize, Result<Value, CallError>), PoolError> {
        let hedge = idempotent(method);
        let mut candidates = self.order().into_iter().filter(|id| !exclude.contains(id));
        let mut tried = 0;
        let mut last = String::from("every upstream is excluded");
        let mut running = FuturesUnordered::new();
        let mut hedge_at: Option<tokio::time::Instant> = None;
        loop {
            let launch =
                running.is_empty() || hedge_at.is_some_and(|at| tokio::time::Instant::now() >= at);
            if launch {
                match candidates.next() {
                    Some(id) => {
                        tried += 1;
                        hedge_at =
                            hedge.then(|| tokio::time::Instant::now() + self.hedge_delay(id));
                        running.push(async move { (id, self.call_on(id, method, params).await) });
                    }
                    None if running.is_empty() => {
                        return Err(PoolError::Exhausted { tried, last });
                    }
                    None => hedge_at = None,
                }
            }
            let sleep = async {
                match hedge_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((id, answer)) = running.next() => match answer {
                    Err(e) if e.is_unavailable() || matches!(e, CallError::Malformed(_)) => {
                        last = format!("{}: {e}", self.upstreams[id].url);
                        // The next one now, without waiting for the hedge.
                        hedge_at = Some(tokio::time::Instant::now());
                    }
                    answer => return Ok((id, answer)),
                },
                () = sleep => {}
            }
        }
    }
}

/// Whether a method may be sent to a second upstream while the first one
/// is still working on it (everything but sending transactions).
pub fn idempotent(method: &str) -> bool {
    !matches!(method, "eth_sendRawTransaction" | "eth_sendTransaction")
}
