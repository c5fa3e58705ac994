//! The upstream pool: the configured upstreams, their [`Scoreboard`], and
//! calls that try the best upstream first and the next ones on failure.
//!
//! Every call has a timeout. A transport failure or timeout marks the
//! upstream unavailable (short backoff) and the read is retried on the next
//! upstream; a JSON-RPC error is an answer and is returned as is. Callers
//! that verify an answer report a failed check with [`Pool::lie`] and ask
//! again excluding the liar.

use crate::score::{Health, ScoreConfig, Scoreboard};
use crate::transport::{CallError, Transport};
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

    /// Calls the best upstream not in `exclude`, then the next ones while
    /// they fail in transport. Returns who answered and the answer (a
    /// JSON-RPC error is an answer).
    pub async fn call(
        &self,
        method: &str,
        params: &Value,
        exclude: &[usize],
    ) -> Result<(usize, Result<Value, CallError>), PoolError> {
        let mut tried = 0;
        let mut last = String::from("every upstream is excluded");
        for id in self.order() {
            if exclude.contains(&id) {
                continue;
            }
            tried += 1;
            match self.call_on(id, method, params).await {
                Err(e) if e.is_unavailable() || matches!(e, CallError::Malformed(_)) => {
                    last = format!("{}: {e}", self.upstreams[id].url);
                }
                answer => return Ok((id, answer)),
            }
        }
        Err(PoolError::Exhausted { tried, last })
    }
}
