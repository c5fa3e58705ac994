//! Benchmark plumbing: timing loops and the JSON-lines output every
//! `luxtensor-bench` scenario prints.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock nanoseconds: the clock two processes of a benchmark (a server
/// and its clients) both read, to time a message from one to the other.
pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// Prints one figure as a JSON line: `{"bench":..,"metric":..,"value":..,"unit":..}`.
pub fn report(bench: &str, metric: &str, value: f64, unit: &str) {
    let line = serde_json::json!({ "bench": bench, "metric": metric, "value": round3(value), "unit": unit });
    println!("{line}");
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Runs `f` `iterations` times per round for `rounds` rounds (after one
/// warm-up round) and returns the median time of one call, in microseconds.
/// The median of rounds resists the noise of a shared 2-core machine.
pub fn median_us(rounds: usize, iterations: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations {
        f();
    }
    let mut per_call: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed().as_secs_f64() * 1e6 / iterations as f64
        })
        .collect();
    per_call.sort_by(|a, b| a.total_cmp(b));
    per_call[per_call.len() / 2]
}

/// Like [`median_us`] for several functions at once, interleaved round by
/// round, so that a ratio between them is not skewed by the machine getting
/// busier or quieter between two measurements.
pub fn interleaved_median_us(
    rounds: usize,
    iterations: usize,
    functions: &mut [&mut dyn FnMut()],
) -> Vec<f64> {
    let mut samples = vec![Vec::with_capacity(rounds); functions.len()];
    for round in 0..=rounds.max(1) {
        for (f, samples) in functions.iter_mut().zip(&mut samples) {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            if round > 0 {
                // Round 0 warms caches and is not counted.
                samples.push(start.elapsed().as_secs_f64() * 1e6 / iterations as f64);
            }
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(|a, b| a.total_cmp(b));
            s[s.len() / 2]
        })
        .collect()
}
