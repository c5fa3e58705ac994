//! `luxtensor-bench light`: the light client's figures, measured on the
//! real release binary `luxtensor-light` (next to `luxtensor-bench` in the
//! target directory) against the in-test server on loopback.
//!
//! - `catchup_1000_epochs_ms`: from a checkpoint 1,000 epochs behind
//!   (genesis of a chain 1,000 epochs old, 100 validators, 3 joining and 3
//!   leaving per epoch) to the head: process start to the `caught_up` line.
//! - `bytes_per_epoch` (JSON on the wire) and `rlp_bytes_per_epoch` (the
//!   updates' own bytes) during that catch-up.
//! - `head_verify_us`: the core's verification of one new head (QC of 67 of
//!   100 validators, seal, link, finality), in process.
//! - `follow_peak_rss_mb`: VmHWM of the binary following that chain at slot
//!   pace (500 ms) for `LUXTENSOR_BENCH_FOLLOW_SECS` seconds (default 120).
//! - `binary_size_mb`: size of the release binary (with the profile's line
//!   tables), and `binary_size_stripped_mb` once stripped.

use crate::bench::{median_us, report};
use crate::light_server::{Behaviour, LightServer, ServedChain, churn};
use luxtensor_light::client::{Config, LightClient, TrustedState, UpstreamId};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = "light";

fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's path");
    let path = exe.parent().expect("target dir").join("luxtensor-light");
    assert!(
        path.exists(),
        "{} is missing: `cargo build --release -p luxtensor-light` first",
        path.display()
    );
    path
}

/// Runs every light-client figure.
pub fn run(quick: bool) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let epochs: u64 = if quick { 100 } else { 1_000 };
    let started = Instant::now();
    let chain = ServedChain::build(
        &churn(100, 3, epochs + 1),
        epochs + 1,
        500,
        (epochs * 8) + 4,
    );
    eprintln!(
        "light: generated {} headers of 100 validators in {:.1} s",
        chain.headers.len(),
        started.elapsed().as_secs_f64()
    );
    let spec = dir.path().join("chain.json");
    std::fs::write(&spec, chain.spec_json()).expect("write the spec");

    head_verify(&chain, quick);

    // Catch-up: the head is at the chain's last epoch.
    let head_slot = chain.last_slot();
    let server = LightServer::start(chain, head_slot, Behaviour::Honest);
    let start = Instant::now();
    let mut child = Command::new(binary())
        .args([
            "follow",
            "--json",
            "--allow-old-checkpoint",
            "--page-size",
            "64",
        ])
        .arg("--chain")
        .arg(&spec)
        .arg("--data-dir")
        .arg(dir.path().join("catchup"))
        .arg("--upstream")
        .arg(&server.url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start luxtensor-light");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut caught = None;
    for line in stdout.lines() {
        let Ok(line) = line else { break };
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v["event"] == "caught_up" {
            caught = Some((start.elapsed(), v));
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(server);
    let (elapsed, line) = caught.expect("the client caught up");
    let updates = line["updates"].as_u64().unwrap_or(0).max(1);
    assert!(updates >= epochs, "caught up over {updates} updates");
    report(
        BENCH,
        &format!("catchup_{epochs}_epochs_ms"),
        elapsed.as_secs_f64() * 1e3,
        "ms",
    );
    report(
        BENCH,
        "bytes_per_epoch",
        line["wireBytes"].as_f64().unwrap_or(0.0) / updates as f64,
        "bytes",
    );
    report(
        BENCH,
        "rlp_bytes_per_epoch",
        line["rlpBytes"].as_f64().unwrap_or(0.0) / updates as f64,
        "bytes",
    );

    follow_rss(dir.path(), quick);

    let size = std::fs::metadata(binary()).map_or(0, |m| m.len());
    report(BENCH, "binary_size_mb", size as f64 / 1e6, "MB");
    // The release profile keeps line tables; what ships is stripped.
    let stripped = dir.path().join("luxtensor-light.stripped");
    if std::fs::copy(binary(), &stripped).is_ok()
        && Command::new("strip")
            .arg(&stripped)
            .status()
            .is_ok_and(|s| s.success())
    {
        let size = std::fs::metadata(&stripped).map_or(0, |m| m.len());
        report(BENCH, "binary_size_stripped_mb", size as f64 / 1e6, "MB");
    }
}

/// The core's time per new head: 7 heads of epoch 0, fresh client per round.
fn head_verify(chain: &ServedChain, quick: bool) {
    let heads: Vec<_> = chain.headers[..7].to_vec();
    let state = TrustedState::from_header(
        chain.spec.chain_id,
        chain.spec.genesis_header(),
        chain.sets[0].clone(),
    );
    let up = UpstreamId(0);
    let mut clients: Vec<LightClient> = Vec::new();
    let rounds = if quick { 5 } else { 15 };
    for _ in 0..=rounds * 2 {
        let mut c = LightClient::new(chain.spec.clone(), state.clone(), Config::default())
            .expect("a client");
        c.add_upstream(up).expect("an upstream");
        clients.push(c);
    }
    let us = median_us(rounds, 1, || {
        let mut c = clients.pop().expect("enough clients");
        for h in &heads {
            let verdict = c.handle_head(up, h.clone()).expect("registered upstream");
            assert!(verdict.is_ok(), "{verdict:?}");
        }
    }) / heads.len() as f64;
    report(BENCH, "head_verify_us", us, "us");
}

/// Peak RSS of the binary following a 100-validator chain at slot pace.
fn follow_rss(dir: &std::path::Path, quick: bool) {
    let seconds: u64 = std::env::var("LUXTENSOR_BENCH_FOLLOW_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 20 } else { 120 });
    let slot_ms = 500;
    let start_slot = 8 * 8 + 4; // 8 epochs to catch up first
    let epochs = 8 + seconds * 1000 / slot_ms / 8 + 4;
    let chain = ServedChain::build(&churn(100, 3, epochs), epochs, slot_ms, start_slot);
    let spec = dir.join("follow-chain.json");
    std::fs::write(&spec, chain.spec_json()).expect("write the spec");
    let server = LightServer::start(chain, start_slot, Behaviour::Honest);
    let mut child = Command::new(binary())
        .args(["follow", "--json"])
        .arg("--chain")
        .arg(&spec)
        .arg("--data-dir")
        .arg(dir.join("follow"))
        .arg("--upstream")
        .arg(&server.url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start luxtensor-light");
    let pid = child.id();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let reader = std::thread::spawn(move || {
        let (mut heads, mut epochs_seen, mut last_epoch) = (0u64, 0u64, 0u64);
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            match v["event"].as_str() {
                Some("head") => heads += 1,
                Some("epoch") => {
                    epochs_seen += 1;
                    last_epoch = v["epoch"].as_u64().unwrap_or(0);
                }
                _ => {}
            }
        }
        (heads, epochs_seen, last_epoch)
    });
    std::thread::sleep(Duration::from_secs(seconds));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    drop(server);
    let (heads, epochs_seen, last_epoch) = reader.join().expect("the reader");
    let kb = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eprintln!(
        "light: followed {seconds} s: {heads} heads, {epochs_seen} epoch changes, trusted epoch {last_epoch}"
    );
    assert!(heads > seconds, "it followed the head ({heads} heads)");
    report(BENCH, "follow_seconds", seconds as f64, "s");
    report(BENCH, "follow_epochs_crossed", epochs_seen as f64, "epochs");
    report(BENCH, "follow_peak_rss_mb", kb("VmHWM:") / 1024.0, "MB");
    report(BENCH, "follow_final_rss_mb", kb("VmRSS:") / 1024.0, "MB");
}
