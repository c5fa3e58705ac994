//! `luxtensor-bench sync`: range sync over real libp2p on loopback, every
//! node its own `luxtensor-node` process (the syncing node too, so that its
//! peak memory is its own `VmHWM`).
//!
//! A pre-built chain ([`ChainFixture`], 10,000 blocks × 100 transfers by
//! default, cached under `target/bench-data/`) is served by peers whose
//! answers go through a simulated link (`--test-throttle`), so that the
//! peers, not the syncing node, bound the sync; then by unthrottled peers.
//!
//! Environment: `LUXTENSOR_BENCH_SYNC_BLOCKS` (default 10,000; `--quick`:
//! 1,000), `LUXTENSOR_BENCH_SYNC_TRANSFERS` (default 100),
//! `LUXTENSOR_BENCH_SYNC_THROTTLE` (`LATENCY_MS,BYTES_PER_S` of each peer,
//! default [`DEFAULT_THROTTLE`]), `LUXTENSOR_BENCH_SYNC_LOG` (a `--log`
//! filter for the syncing nodes, e.g. `luxtensor_full=debug`; their logs are
//! then kept as `target/bench-data/sync-*.log`), `LUXTENSOR_BENCH_SYNC_PART`
//! (`throttled` or `unthrottled` to run only that part).

use crate::bench::report;
use crate::chain_fixture::ChainFixture;
use crate::sync_nodes::{NodeOptions, SyncNode, node_binary};
use luxtensor_full::network::SyncResponse;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BENCH: &str = "sync";
/// Each peer's simulated link: 5 ms latency, 500 kB/s. With ~11 kB per
/// served block (100 transfers, snappy-compressed) that is ~45 blocks/s per
/// peer: 4 peers (~180 blocks/s) stay below what the syncing node imports.
pub const DEFAULT_THROTTLE: &str = "5,500000";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs the scenario and prints its figures.
pub fn run(quick: bool) {
    let blocks: u64 = env_or(
        "LUXTENSOR_BENCH_SYNC_BLOCKS",
        if quick { 1_000 } else { 10_000 },
    );
    let transfers: usize = env_or("LUXTENSOR_BENCH_SYNC_TRANSFERS", 100);
    let throttle: String = env_or(
        "LUXTENSOR_BENCH_SYNC_THROTTLE",
        DEFAULT_THROTTLE.to_string(),
    );
    let binary = node_binary().unwrap_or_else(|message| panic!("{message}"));
    // target/<profile>/luxtensor-node → target/bench-data/…
    let cache = binary
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join("bench-data")
        .join(format!("sync-chain-{blocks}x{transfers}"));
    eprintln!(
        "chain: {blocks} blocks × {transfers} transfers in {}",
        cache.display()
    );
    let build_start = Instant::now();
    let chain = ChainFixture::cached(&cache, blocks, transfers);
    eprintln!(
        "chain ready in {:.1} s",
        build_start.elapsed().as_secs_f64()
    );
    let bytes_per_block = served_bytes_per_block(&chain);
    report(BENCH, "served_bytes_per_block", bytes_per_block, "bytes");

    let part = std::env::var("LUXTENSOR_BENCH_SYNC_PART").unwrap_or_default();
    let (throttled_part, unthrottled_part) = match part.as_str() {
        "throttled" => (true, false),
        "unthrottled" => (false, true),
        _ => (true, true),
    };
    let work = tempfile::tempdir().expect("temporary directory");
    let n = blocks as f64;
    let mut peaks = Vec::new();
    if throttled_part {
        let throttled: Vec<SyncNode> = (0..4)
            .map(|i| {
                peer(
                    &binary,
                    &chain,
                    &work.path().join(format!("slow-{i}")),
                    Some(&throttle),
                )
            })
            .collect();
        let one = sync_once(
            &binary,
            &chain,
            &throttled[..1],
            &work.path().join("from-1"),
        );
        eprintln!("1 throttled peer: {:.1} s", one.seconds);
        let four = sync_once(&binary, &chain, &throttled, &work.path().join("from-4"));
        eprintln!("4 throttled peers: {:.1} s", four.seconds);
        drop(throttled);
        report(BENCH, "seconds_1_peer_throttled", one.seconds, "s");
        report(BENCH, "seconds_4_peers_throttled", four.seconds, "s");
        report(BENCH, "speedup_4_vs_1", one.seconds / four.seconds, "ratio");
        report(
            BENCH,
            "blocks_per_s_1_peer_throttled",
            n / one.seconds,
            "blocks/s",
        );
        report(
            BENCH,
            "blocks_per_s_4_peers_throttled",
            n / four.seconds,
            "blocks/s",
        );
        peaks.extend([one.peak_rss_kib, four.peak_rss_kib]);
    }
    if unthrottled_part {
        let fast: Vec<SyncNode> = (0..4)
            .map(|i| {
                peer(
                    &binary,
                    &chain,
                    &work.path().join(format!("fast-{i}")),
                    None,
                )
            })
            .collect();
        let unthrottled = sync_once(&binary, &chain, &fast, &work.path().join("fast"));
        eprintln!("4 unthrottled peers: {:.1} s", unthrottled.seconds);
        drop(fast);
        report(
            BENCH,
            "blocks_per_s_unthrottled",
            n / unthrottled.seconds,
            "blocks/s",
        );
        report(
            BENCH,
            "transfers_per_s_unthrottled",
            n * transfers as f64 / unthrottled.seconds,
            "tx/s",
        );
        report(
            BENCH,
            "peak_rss_mb_unthrottled",
            unthrottled.peak_rss_kib as f64 / 1024.0,
            "MiB",
        );
        peaks.push(unthrottled.peak_rss_kib);
    }
    let peak = peaks.into_iter().max().unwrap_or(0);
    report(BENCH, "peak_rss_mb", peak as f64 / 1024.0, "MiB");
}

/// Mean size of a block as a peer serves it (compressed sync frame).
fn served_bytes_per_block(chain: &ChainFixture) -> f64 {
    let importer = luxtensor_full::Importer::open(
        chain.spec.clone(),
        chain.dir.join(crate::chain_fixture::STORE_FILE),
    )
    .expect("open the template");
    let sample: Vec<_> = (1..=chain.blocks().min(128))
        .map(|n| {
            importer
                .store()
                .block_by_number(n)
                .unwrap()
                .expect("stored block")
        })
        .collect();
    let bytes = SyncResponse::Blocks(sample.clone()).encode().len();
    bytes as f64 / sample.len() as f64
}

fn peer(binary: &Path, chain: &ChainFixture, dir: &Path, throttle: Option<&str>) -> SyncNode {
    chain.install(dir).expect("copy the chain");
    let extra = throttle
        .map(|t| vec!["--test-throttle".to_string(), t.to_string()])
        .unwrap_or_default();
    SyncNode::start(
        binary,
        &NodeOptions {
            data_dir: dir.to_path_buf(),
            chain: chain.spec_file(),
            rpc: false,
            extra,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("serving peer: {e}"))
}

struct Run {
    seconds: f64,
    peak_rss_kib: u64,
}

/// Starts an empty node dialing `peers`; the time from its start line until
/// its RPC reports the chain's last block, and its `VmHWM` just before it is
/// killed.
fn sync_once(binary: &Path, chain: &ChainFixture, peers: &[SyncNode], dir: &Path) -> Run {
    let log_filter = std::env::var("LUXTENSOR_BENCH_SYNC_LOG").ok();
    let extra = log_filter
        .iter()
        .flat_map(|filter| ["--log".to_string(), filter.clone()])
        .collect();
    let start = Instant::now();
    let mut node = SyncNode::start(
        binary,
        &NodeOptions {
            data_dir: PathBuf::from(dir),
            chain: chain.spec_file(),
            bootnodes: peers.iter().map(|p| p.p2p.clone()).collect(),
            rpc: true,
            extra,
        },
    )
    .unwrap_or_else(|e| panic!("syncing node: {e}"));
    let timeout = Duration::from_secs(120 + chain.blocks() / 5);
    let last = chain.blocks();
    node.wait_for_block(timeout, |n| n >= last)
        .unwrap_or_else(|e| panic!("sync from {} peers: {e}", peers.len()));
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(
        node.block_hash(last).unwrap(),
        chain.head_hash().to_string(),
        "synced head"
    );
    let peak_rss_kib = node.peak_rss_kib().unwrap_or(0);
    node.kill();
    if log_filter.is_some()
        && let (Some(name), Some(data)) = (dir.file_name(), chain.dir.parent())
    {
        let kept = data.join(format!("sync-{}.log", name.to_string_lossy()));
        let _ = std::fs::copy(&node.log, &kept);
        eprintln!("log kept in {}", kept.display());
    }
    let _ = std::fs::remove_dir_all(dir);
    Run {
        seconds,
        peak_rss_kib,
    }
}
