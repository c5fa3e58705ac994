//! Per-client request rate limit (sans-IO): a token bucket per client IP
//! address, `per_second` tokens a second up to `burst`, one token per call
//! (each call of a batch counts). The table of clients is bounded (least
//! recently seen forgotten first, which only ever forgives a client).
//!
//! Time comes in as milliseconds from the caller; nothing here reads a clock.

use lru::LruCache;
use std::net::IpAddr;
use std::num::NonZeroUsize;

/// Clients remembered at once.
pub const MAX_CLIENTS: usize = 65_536;

/// The limit's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Calls per second per client, sustained.
    pub per_second: u32,
    /// Calls a client may make at once after being idle.
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens, in thousandths (so that refills of a few ms are not lost).
    milli_tokens: u64,
    at_ms: u64,
}

/// The buckets of every client seen recently.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: LruCache<IpAddr, Bucket>,
}

impl RateLimiter {
    /// A limiter for `limit` (`per_second` and `burst` at least 1).
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit: RateLimit {
                per_second: limit.per_second.max(1),
                burst: limit.burst.max(1),
            },
            buckets: LruCache::new(NonZeroUsize::new(MAX_CLIENTS).expect("non-zero")),
        }
    }

    /// The settings.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one token of `client` at `now_ms`; when none is left, the
    /// milliseconds until the next one.
    pub fn check(&mut self, client: IpAddr, now_ms: u64) -> Result<(), u64> {
        let full = u64::from(self.limit.burst) * 1000;
        let rate = u64::from(self.limit.per_second);
        let bucket = self.buckets.get_or_insert_mut(client, || Bucket {
            milli_tokens: full,
            at_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(bucket.at_ms);
        bucket.milli_tokens = bucket
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(rate))
            .min(full);
        bucket.at_ms = now_ms.max(bucket.at_ms);
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            Ok(())
        } else {
            Err((1000 - bucket.milli_tokens).div_ceil(rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate_per_client() {
        let mut limiter = RateLimiter::new(RateLimit {
            per_second: 10,
            burst: 3,
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check(a, 1_000), Ok(()));
        }
        assert_eq!(limiter.check(a, 1_000), Err(100), "one token per 100 ms");
        assert_eq!(
            limiter.check(b, 1_000),
            Ok(()),
            "another client has its own"
        );
        assert_eq!(limiter.check(a, 1_050), Err(50));
        assert_eq!(limiter.check(a, 1_100), Ok(()));
        assert_eq!(limiter.check(a, 1_100), Err(100));
        // Idle for a long time: the burst again, no more.
        for _ in 0..3 {
            assert_eq!(limiter.check(a, 60_000), Ok(()));
        }
        assert!(limiter.check(a, 60_000).is_err());
    }
}
