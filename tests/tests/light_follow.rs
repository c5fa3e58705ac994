//! The real `luxtensor-light follow` binary against in-test servers that
//! serve generated chains over WebSocket JSON-RPC at slot pace: it follows
//! from genesis across epochs with churn, raises the equivocation alarm on
//! conflicting upstreams, rejects a lying upstream while an honest one keeps
//! it going, resumes from its data directory, and refuses an old checkpoint.

use luxtensor_tests::light_server::{Behaviour, LightServer, ServedChain, churn};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `target/<profile>/luxtensor-light`, next to this test's `deps` directory.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join("luxtensor-light");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build -p luxtensor-light` (same profile as the tests)",
        path.display()
    );
    path
}

/// A running `luxtensor-light follow --json`, its stdout lines as JSON.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Follower {
    fn start(chain_file: &Path, upstreams: &[&str], data_dir: &Path, extra: &[&str]) -> Self {
        let mut command = Command::new(binary());
        command
            .arg("follow")
            .arg("--json")
            .arg("--chain")
            .arg(chain_file)
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra);
        for u in upstreams {
            command.arg("--upstream").arg(u);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start luxtensor-light");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::sync_channel(10_000);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one matches, within `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {what} within {timeout:?}; lines so far:\n{}",
                    self.seen
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    fn events(&self, name: &str) -> Vec<&Value> {
        self.seen.iter().filter(|v| v["event"] == name).collect()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is(event: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == event
}

fn epoch_at_least(n: u64) -> impl Fn(&Value) -> bool {
    move |v| v["event"] == "epoch" && v["epoch"].as_u64().unwrap_or(0) >= n
}

fn write_spec(dir: &Path, chain: &ServedChain) -> PathBuf {
    let path = dir.join("chain.json");
    std::fs::write(&path, chain.spec_json()).expect("write the spec");
    path
}

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn follows_from_genesis_across_epochs_with_churn() {
    let dir = tempfile::tempdir().unwrap();
    let chain = ServedChain::build(&churn(10, 2, 7), 7, 150, 12);
    let spec = write_spec(dir.path(), &chain);
    let expected_sets: Vec<_> = chain.sets.iter().map(|s| s.hash()).collect();
    let hashes: Vec<_> = chain.headers.iter().map(|h| h.header.hash()).collect();
    let server = LightServer::start(chain, 12, Behaviour::Honest);
    let mut f = Follower::start(&spec, &[&server.url], &dir.path().join("data"), &[]);

    f.wait_for("epoch 6", WAIT, epoch_at_least(6));
    let epochs = f.events("epoch");
    let numbers: Vec<u64> = epochs
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (1..=6).collect::<Vec<_>>(),
        "one event per epoch, in order"
    );
    for e in &epochs {
        let n = e["epoch"].as_u64().unwrap() as usize;
        assert_eq!(e["setHash"], serde_json::json!(expected_sets[n]), "{e}");
        let churned = if n >= 2 { 2 } else { 0 };
        assert_eq!(
            (e["added"].as_u64(), e["removed"].as_u64()),
            (Some(churned), Some(churned)),
            "{e}"
        );
    }
    let heads = f.events("head");
    assert!(heads.len() >= 16, "{} heads", heads.len());
    let mut last = 0;
    for h in &heads {
        let slot = h["slot"].as_u64().unwrap();
        assert!(slot > last, "heads move forward: {h}");
        last = slot;
        assert_eq!(
            h["hash"],
            serde_json::json!(hashes[slot as usize - 1]),
            "{h}"
        );
        assert_eq!(h["number"].as_u64(), Some(slot), "{h}");
        assert_eq!(h["epoch"].as_u64(), Some(slot / 8), "{h}");
    }
    let finalized = f.events("finalized");
    assert!(finalized.len() >= 8, "{} finalized", finalized.len());
    assert!(
        f.events("rejected").is_empty(),
        "an honest upstream is never rejected"
    );
}

#[test]
fn conflicting_upstreams_raise_the_equivocation_alarm_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let chain = ServedChain::build(&churn(10, 2, 5), 5, 150, 12);
    let fork = chain.fork(20);
    let (a, b) = (
        chain.at_slot(20).header.hash(),
        fork.at_slot(20).header.hash(),
    );
    let spec = write_spec(dir.path(), &chain);
    let honest = LightServer::start(chain, 12, Behaviour::Honest);
    let forked = LightServer::start(fork, 12, Behaviour::Honest);
    let data = dir.path().join("data");
    let mut f = Follower::start(&spec, &[&honest.url, &forked.url], &data, &[]);

    let alarm = f.wait_for("the equivocation alarm", WAIT, is("equivocation"));
    assert_eq!(alarm["slot"].as_u64(), Some(20), "{alarm}");
    let mut hashes: Vec<String> = alarm["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    hashes.sort();
    let mut expected = vec![a.to_string(), b.to_string()];
    expected.sort();
    assert_eq!(hashes, expected);
    // It stops following: the process exits with status 3 and keeps the evidence.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = f.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running after the alarm");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3));
    assert!(
        data.join("equivocation-20.rlp").exists(),
        "evidence written"
    );
    while let Ok(line) = f.lines.recv_timeout(Duration::from_millis(200)) {
        f.seen.push(line);
    }
    let after: Vec<_> = f
        .seen
        .iter()
        .skip_while(|v| v["event"] != "equivocation")
        .filter(|v| v["event"] == "head" || v["event"] == "finalized")
        .collect();
    assert!(after.is_empty(), "no head after the alarm: {after:?}");
}

#[test]
fn a_lying_upstream_is_rejected_and_an_honest_one_keeps_it_going() {
    let dir = tempfile::tempdir().unwrap();
    let chain = ServedChain::build(&churn(10, 2, 6), 6, 150, 12);
    let spec = write_spec(dir.path(), &chain);
    let liar = LightServer::start(chain.clone(), 12, Behaviour::BadQc);
    // The honest node comes up after the client asked the liar for updates.
    let port = luxtensor_full::node::devnet::free_port().unwrap();
    let honest_url = format!("ws://127.0.0.1:{port}");
    let mut f = Follower::start(
        &spec,
        &[&liar.url, &honest_url],
        &dir.path().join("data"),
        &[],
    );

    let rejected = f.wait_for("a rejection", WAIT, is("rejected"));
    let _honest = LightServer::start_on(port, chain, 12, Behaviour::Honest);
    assert_eq!(rejected["upstream"].as_u64(), Some(0), "{rejected}");
    assert_eq!(rejected["rule"], "qc_insufficient_stake", "{rejected}");
    assert!(
        rejected["message"].as_str().unwrap().contains("stake"),
        "{rejected}"
    );
    f.wait_for(
        "epoch 5 through the honest upstream",
        WAIT,
        epoch_at_least(5),
    );
    assert!(
        f.events("upstream")
            .iter()
            .any(|u| u["upstream"] == 0 && u["problem"] == "lying"),
        "the liar is demoted"
    );
    assert!(
        f.events("rejected").iter().all(|r| r["upstream"] == 0),
        "only the liar is rejected"
    );
}

#[test]
fn a_restart_resumes_from_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let chain = ServedChain::build(&churn(10, 2, 8), 8, 150, 12);
    let spec = write_spec(dir.path(), &chain);
    let server = LightServer::start(chain, 12, Behaviour::Honest);
    let data = dir.path().join("data");
    let saved = {
        let mut f = Follower::start(&spec, &[&server.url], &data, &[]);
        f.wait_for("epoch 3", WAIT, epoch_at_least(3));
        let persisted = f.wait_for("a persisted state", WAIT, |v| {
            v["event"] == "persisted" && v["epoch"].as_u64().unwrap_or(0) >= 3
        });
        persisted["epoch"].as_u64().unwrap()
    }; // killed here
    assert!(data.join("trusted-state.bin").exists());

    let mut f = Follower::start(&spec, &[&server.url], &data, &[]);
    let note = f.wait_for("the resume note", WAIT, is("note"));
    let text = note["message"].as_str().unwrap();
    assert!(text.contains("resuming"), "{text}");
    let resumed_at: u64 = text.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        resumed_at >= saved,
        "resumed at {resumed_at}, saved {saved}"
    );
    let next = f.wait_for("the next epoch", WAIT, is("epoch"));
    assert_eq!(next["epoch"].as_u64(), Some(resumed_at + 1), "{next}");
    assert!(
        f.events("caught_up")
            .iter()
            .all(|c| c["updates"].as_u64().unwrap() <= 8 - resumed_at),
        "no replay from genesis"
    );
}

#[test]
fn an_old_checkpoint_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    // A chain whose genesis is 1,000 epochs ago (never served: the check comes first).
    let mut spec = luxtensor_light::ChainSpec::devnet(4);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    spec.genesis_timestamp = now - 1_000 * 8 * spec.slot_duration_ms / 1000;
    let path = dir.path().join("chain.json");
    std::fs::write(&path, serde_json::to_string(&spec).unwrap()).unwrap();
    let out = Command::new(binary())
        .args(["follow", "--upstream", "ws://127.0.0.1:9", "--chain"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("epochs behind") && err.contains("--allow-old-checkpoint"),
        "{err}"
    );
}
