//! `/metrics` (Prometheus text) and `/health` (JSON): verified and final
//! heads, epoch, upstream states and scores, cache hits and misses by
//! method, subscriptions, slow clients disconnected.

use crate::proxy::Proxy;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// The Prometheus text.
pub fn render(proxy: &Proxy) -> String {
    let mut out = String::new();
    let head = proxy.head().map_or(0, |h| h.number);
    let finalized = proxy.finalized().map_or(0, |h| h.number);
    let epoch = proxy
        .verified
        .lock()
        .expect("not poisoned")
        .light
        .trusted_state()
        .epoch;
    let c = &proxy.counters;
    let gauges: [(&str, &str, u64); 15] = [
        (
            "lux_proxy_verified_head",
            "Number of the verified head",
            head,
        ),
        (
            "lux_proxy_finalized_head",
            "Number of the verified final head",
            finalized,
        ),
        ("lux_proxy_epoch", "The light client's trusted epoch", epoch),
        (
            "lux_proxy_requests_total",
            "Calls answered",
            c.requests.load(Ordering::Relaxed),
        ),
        (
            "lux_proxy_coalesced_total",
            "Calls joined to an identical one in flight",
            c.coalesced.load(Ordering::Relaxed),
        ),
        (
            "lux_proxy_rate_limited_total",
            "Calls refused by the per-client rate limit",
            c.rate_limited.load(Ordering::Relaxed),
        ),
        (
            "lux_proxy_verification_failures_total",
            "Upstream answers refused because they failed verification",
            c.verification_failures.load(Ordering::Relaxed),
        ),
        (
            "lux_proxy_refused_unverifiable_total",
            "Calls refused as unverifiable (strict mode)",
            c.refused_unverifiable.load(Ordering::Relaxed),
        ),
        (
            "lux_proxy_forwarded_unverified_total",
            "Calls forwarded unverified (relaxed mode)",
            c.forwarded_unverified.load(Ordering::Relaxed),
        ),
        (
            "lux_proxy_slow_disconnects_total",
            "WebSocket clients disconnected for not reading",
            c.slow_disconnects.load(Ordering::Relaxed),
        ),
        (
            "lux_proxy_ws_connections",
            "Open WebSocket connections",
            c.ws_connections.load(Ordering::Relaxed) as u64,
        ),
        (
            "lux_proxy_subscriptions",
            "Live client subscriptions",
            c.subscriptions.load(Ordering::Relaxed) as u64,
        ),
        (
            "lux_proxy_upstream_subscriptions_new_heads",
            "Upstream newHeads subscriptions",
            c.upstream_subscriptions[0].load(Ordering::Relaxed) as u64,
        ),
        (
            "lux_proxy_upstream_subscriptions_pending",
            "Upstream newPendingTransactions subscriptions",
            c.upstream_subscriptions[1].load(Ordering::Relaxed) as u64,
        ),
        (
            "lux_proxy_log_watchers",
            "logs subscriptions and log filters",
            c.log_watchers.load(Ordering::Relaxed) as u64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    {
        let cache = proxy.cache.lock().expect("not poisoned");
        let _ = writeln!(
            out,
            "# HELP lux_proxy_cache_entries Cached answers\n# TYPE lux_proxy_cache_entries gauge\nlux_proxy_cache_entries {}",
            cache.len()
        );
        let _ = writeln!(
            out,
            "# HELP lux_proxy_cache_bytes Bytes of cached answers\n# TYPE lux_proxy_cache_bytes gauge\nlux_proxy_cache_bytes {}",
            cache.bytes()
        );
        let _ = writeln!(
            out,
            "# HELP lux_proxy_cache_hits_total Cache hits by method\n# TYPE lux_proxy_cache_hits_total counter"
        );
        let (mut hits, mut misses) = (0u64, 0u64);
        for (method, counts) in cache.counts() {
            let _ = writeln!(
                out,
                "lux_proxy_cache_hits_total{{method=\"{method}\"}} {}",
                counts.hits
            );
            hits += counts.hits;
            misses += counts.misses;
        }
        let _ = writeln!(
            out,
            "# HELP lux_proxy_cache_misses_total Cache misses by method\n# TYPE lux_proxy_cache_misses_total counter"
        );
        for (method, counts) in cache.counts() {
            let _ = writeln!(
                out,
                "lux_proxy_cache_misses_total{{method=\"{method}\"}} {}",
                counts.misses
            );
        }
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let _ = writeln!(
            out,
            "# HELP lux_proxy_cache_hit_ratio Hits over lookups\n# TYPE lux_proxy_cache_hit_ratio gauge\nlux_proxy_cache_hit_ratio {ratio}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP lux_proxy_upstream_up 1 if the upstream is healthy\n# TYPE lux_proxy_upstream_up gauge"
    );
    let now = proxy.pool.now_ms();
    for (id, u) in proxy.pool.upstreams().iter().enumerate() {
        let (health, row) = proxy
            .pool
            .with_board(|b| (b.health(id, now), b.row(id).clone()));
        let _ = writeln!(
            out,
            "lux_proxy_upstream_up{{upstream=\"{}\",state=\"{}\"}} {}\nlux_proxy_upstream_trust{{upstream=\"{}\"}} {}\nlux_proxy_upstream_lies_total{{upstream=\"{}\"}} {}\nlux_proxy_upstream_failures_total{{upstream=\"{}\"}} {}\nlux_proxy_upstream_latency_us{{upstream=\"{}\"}} {:.0}\nlux_proxy_upstream_best_block{{upstream=\"{}\"}} {}",
            u.url,
            health.name(),
            u8::from(health == crate::score::Health::Healthy),
            u.url,
            row.trust,
            u.url,
            row.lies,
            u.url,
            row.failures,
            u.url,
            row.latency_us,
            u.url,
            row.best_block
        );
    }
    out
}

/// The `/health` JSON: `"status":"ok"` with a verified head and a usable upstream.
pub fn health(proxy: &Proxy) -> Value {
    let head = proxy.head();
    let now = proxy.pool.now_ms();
    let upstreams: Vec<Value> = proxy
        .pool
        .upstreams()
        .iter()
        .enumerate()
        .map(|(id, u)| {
            let (health, row) = proxy.pool.with_board(|b| (b.health(id, now), b.row(id).clone()));
            json!({"url": u.url, "state": health.name(), "trust": row.trust, "lies": row.lies,
                   "failures": row.failures, "latencyUs": row.latency_us as u64, "bestBlock": row.best_block})
        })
        .collect();
    let usable = !proxy.pool.usable().is_empty();
    json!({
        "status": if head.is_some() && usable { "ok" } else { "degraded" },
        "verifiedHead": head.as_ref().map(|h| h.number),
        "verifiedHeadHash": head.as_ref().map(|h| h.hash()),
        "finalizedHead": proxy.finalized().map(|h| h.number),
        "epoch": proxy.verified.lock().expect("not poisoned").light.trusted_state().epoch,
        "upstreams": upstreams,
        "subscriptions": proxy.counters.subscriptions.load(Ordering::Relaxed),
        "slowDisconnects": proxy.counters.slow_disconnects.load(Ordering::Relaxed),
        "relaxed": proxy.config.relaxed,
    })
}
