//! Range sync over real libp2p between separate `luxtensor-node` processes on
//! loopback: a late node catches up on a pre-built chain of 2,000 blocks from
//! several peers while a peer is killed, while byzantine peers serve bad data
//! or nothing, and across its own SIGKILL and restart.
//!
//! The node binary must be built first (`cargo test --workspace` builds it;
//! alone: `cargo build -p luxtensor-full --bin luxtensor-node`).

use luxtensor_tests::chain_fixture::ChainFixture;
use luxtensor_tests::sync_nodes::{NodeOptions, SyncNode, node_binary};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Blocks in the served chain (the floor for the first test).
const BLOCKS: u64 = 2_000;
/// Transfers in each block.
const TRANSFERS: usize = 4;
/// Longest wait for a whole sync (debug build, several tests at once on 2 cores).
const SYNC_TIMEOUT: Duration = Duration::from_secs(100);
/// Serving link of the peers in the tests that must catch the sync midway:
/// 5 ms latency, 400 kB/s each (a 2,000-block sync from 3 peers then takes
/// several seconds instead of about one).
const THROTTLE: &str = "5,400000";

/// The chain every test serves, built once per run (and reused across runs
/// from the target directory).
fn fixture() -> &'static ChainFixture {
    static FIXTURE: OnceLock<ChainFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sync-chain-{BLOCKS}x{TRANSFERS}"));
        ChainFixture::cached(&dir, BLOCKS, TRANSFERS)
    })
}

fn binary() -> PathBuf {
    node_binary().unwrap_or_else(|message| panic!("{message}"))
}

/// A node in `dir/name` serving the whole fixture chain, without RPC.
fn serving_peer(dir: &Path, name: &str, extra: &[&str]) -> SyncNode {
    let chain = fixture();
    let data_dir = dir.join(name);
    chain.install(&data_dir).expect("copy the chain");
    SyncNode::start(
        &binary(),
        &NodeOptions {
            data_dir,
            chain: chain.spec_file(),
            bootnodes: vec![],
            rpc: false,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        },
    )
    .unwrap_or_else(|e| panic!("peer {name}: {e}"))
}

/// An empty, non-validating node in `data_dir` with RPC, dialing `peers`.
fn syncing_node(data_dir: &Path, peers: &[&SyncNode], extra: &[&str]) -> SyncNode {
    SyncNode::start(
        &binary(),
        &NodeOptions {
            data_dir: data_dir.to_path_buf(),
            chain: fixture().spec_file(),
            bootnodes: peers.iter().map(|p| p.p2p.clone()).collect(),
            rpc: true,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        },
    )
    .unwrap_or_else(|e| panic!("syncing node: {e}"))
}

/// The synced node holds exactly the fixture chain: head, and the hashes at
/// a few heights; `eth_syncing` is `false` once it has caught up.
fn assert_same_chain(node: &SyncNode) {
    let chain = fixture();
    assert_eq!(node.block_number().unwrap(), chain.blocks());
    for number in [
        1,
        2,
        127,
        128,
        129,
        chain.blocks() / 2,
        chain.blocks() - 1,
        chain.blocks(),
    ] {
        assert_eq!(
            node.block_hash(number).unwrap(),
            chain.hashes[number as usize].to_string(),
            "block {number}"
        );
    }
    let syncing = wait_until(Duration::from_secs(10), || {
        node.rpc("eth_syncing", serde_json::json!([]))
            .ok()
            .filter(|v| *v == serde_json::json!(false))
    });
    assert!(
        syncing.is_some(),
        "eth_syncing still reports a sync: {:?}",
        node.rpc("eth_syncing", serde_json::json!([]))
    );
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sync_from_three_peers_completes_when_one_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let chain = fixture();
    let mut peers: Vec<SyncNode> = ["a", "b", "c"]
        .iter()
        .map(|name| serving_peer(dir.path(), name, &["--test-throttle", THROTTLE]))
        .collect();
    let mut node = syncing_node(
        &dir.path().join("late"),
        &peers.iter().collect::<Vec<_>>(),
        &[],
    );

    // Kill one serving peer once the sync is well under way.
    let at_kill = node
        .wait_for_block(SYNC_TIMEOUT, |n| n >= 300)
        .unwrap_or_else(|e| panic!("sync did not start: {e}"));
    peers[0].kill();
    assert!(
        at_kill < chain.blocks() - 300,
        "the sync finished too fast to kill a peer midway (at {at_kill}); slow the peers down"
    );

    node.wait_for_block(SYNC_TIMEOUT, |n| n >= chain.blocks())
        .unwrap_or_else(|e| panic!("sync did not complete after the kill: {e}"));
    assert_same_chain(&node);
    let log = node.log_text();
    assert!(log.contains("starting range sync"), "{log}");
    assert!(log.contains("sync complete"), "{log}");
    assert!(
        log.contains(&format!("peer disconnected peer={}", peers[0].peer_id)),
        "{log}"
    );
}

#[test]
fn sync_completes_among_byzantine_peers_and_penalises_them() {
    let dir = tempfile::tempdir().unwrap();
    let chain = fixture();
    // The header peer is the best peer with the lowest id: make a byzantine
    // peer that, so that headers are asked of it first.
    let mut keys: Vec<(String, PathBuf)> = (0..5)
        .map(|i| {
            let path = dir.path().join(format!("key-{i}"));
            let key = luxtensor_full::network::service::load_or_create_node_key(&path).unwrap();
            (key.public().to_peer_id().to_string(), path)
        })
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    let names = ["silent", "corrupt", "empty", "honest-1", "honest-2"];
    let modes: [&[&str]; 5] = [
        &["--test-byzantine", "silent"],
        &["--test-byzantine", "corrupt-bodies"],
        &["--test-byzantine", "empty"],
        &[],
        &[],
    ];
    let peers: Vec<SyncNode> = names
        .iter()
        .zip(modes)
        .zip(&keys)
        .map(|((name, mode), (_, key))| {
            let data_dir = dir.path().join(name);
            std::fs::create_dir_all(&data_dir).unwrap();
            std::fs::copy(key, data_dir.join("node.key")).unwrap();
            serving_peer(dir.path(), name, mode)
        })
        .collect();
    let mut node = syncing_node(
        &dir.path().join("late"),
        &peers.iter().collect::<Vec<_>>(),
        &["--log", "info,luxtensor_full=debug"],
    );
    node.wait_for_block(SYNC_TIMEOUT, |n| n >= chain.blocks())
        .unwrap_or_else(|e| panic!("sync did not complete among byzantine peers: {e}"));
    assert_same_chain(&node);

    // A silent peer is only found out when its requests run out of time
    // (5 s for headers, up to 30 s for a batch), which may be after the sync
    // completed elsewhere: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline
        && !peers.iter().zip(names).all(|(peer, name)| {
            name.starts_with("honest")
                || node
                    .log_text()
                    .lines()
                    .any(|l| l.contains("peer penalised") && l.contains(&peer.peer_id))
        })
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = node.log_text();
    let penalties: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("peer penalised") || l.contains("peer banned"))
        .collect();
    let who: Vec<String> = peers
        .iter()
        .zip(names)
        .map(|(p, name)| format!("{name} = {}", p.peer_id))
        .collect();
    for (peer, name) in peers.iter().zip(names) {
        let mine: Vec<&&str> = penalties
            .iter()
            .filter(|l| l.contains(&peer.peer_id))
            .collect();
        let context = format!("peers: {who:#?}\npenalties:\n{}", penalties.join("\n"));
        if name.starts_with("honest") {
            // A loaded machine may make an honest peer miss a deadline, but
            // it never serves bad data and is never banned.
            assert!(
                mine.iter()
                    .all(|l| l.contains("why=Timeout") || l.contains("timed out")),
                "honest peer {name} penalised for more than a timeout; {context}"
            );
        } else {
            let about: Vec<&str> = log.lines().filter(|l| l.contains(&peer.peer_id)).collect();
            assert!(
                !mine.is_empty(),
                "byzantine peer {name} not penalised; {context}\nlog about it:\n{}",
                about.join("\n")
            );
        }
    }
}

#[test]
fn sync_resumes_after_the_syncing_node_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let chain = fixture();
    let peers: Vec<SyncNode> = ["a", "b"]
        .iter()
        .map(|name| serving_peer(dir.path(), name, &["--test-throttle", THROTTLE]))
        .collect();
    let peer_refs: Vec<&SyncNode> = peers.iter().collect();
    let data_dir = dir.path().join("late");
    let mut node = syncing_node(&data_dir, &peer_refs, &[]);
    let before = node
        .wait_for_block(SYNC_TIMEOUT, |n| n >= 500)
        .unwrap_or_else(|e| panic!("sync did not start: {e}"));
    node.kill();
    assert!(before < chain.blocks(), "the sync finished before the kill");

    // Same data directory: the store reopens at what was committed (at
    // least what RPC reported before the kill) and the sync goes on.
    let mut node = syncing_node(&data_dir, &peer_refs, &[]);
    let after_restart = node.block_number().unwrap();
    assert!(
        after_restart >= before,
        "head went back from {before} to {after_restart} after the restart"
    );
    assert_eq!(
        node.block_hash(after_restart).unwrap(),
        chain.hashes[after_restart as usize].to_string()
    );
    node.wait_for_block(SYNC_TIMEOUT, |n| n >= chain.blocks())
        .unwrap_or_else(|e| panic!("sync did not resume: {e}"));
    assert_same_chain(&node);
    assert!(
        node.log_text().matches("starting range sync").count() >= 2,
        "the restarted node did not sync again"
    );
}

/// The import thread of a syncing node, in process: runs come back in order;
/// after a refused block the rest of that sync's runs are skipped (they
/// cannot extend the chain), and the next sync's runs import from the last
/// good block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_thread_reports_in_order_and_skips_a_failed_syncs_runs() {
    use luxtensor_full::Importer;
    use luxtensor_full::node::sync_import::{RunOutcome, SyncImporter};
    use std::sync::{Arc, RwLock};

    let chain = fixture();
    let source = Importer::open(
        chain.spec.clone(),
        chain.dir.join(luxtensor_tests::chain_fixture::STORE_FILE),
    )
    .unwrap();
    let blocks: Vec<_> = (1..=96)
        .map(|n| source.store().block_by_number(n).unwrap().unwrap())
        .collect();
    drop(source);
    let dir = tempfile::tempdir().unwrap();
    let store = Importer::open(chain.spec.clone(), dir.path().join("chain.redb")).unwrap();
    let shared = Arc::new(RwLock::new(store));
    let mut import = SyncImporter::start(shared.clone()).unwrap();
    assert!(import.is_idle());

    // Block 40 with a forged seal (the seal is not part of the hash).
    let mut forged = blocks[32..64].to_vec();
    forged[7].header.proposer_signature = Default::default();
    import.submit(1, blocks[..32].to_vec());
    import.submit(1, forged);
    import.submit(1, blocks[64..].to_vec());
    assert_eq!(import.queued_blocks(), 96);

    let first = import.next_report().await.unwrap();
    assert!(matches!(first.outcome, RunOutcome::Imported), "{first:?}");
    assert_eq!(
        (first.generation, first.blocks, first.head.number),
        (1, 32, 32)
    );
    let second = import.next_report().await.unwrap();
    assert!(
        matches!(second.outcome, RunOutcome::Failed { number: 40, .. }),
        "{second:?}"
    );
    assert_eq!(second.head.number, 39, "the blocks before it are imported");
    let third = import.next_report().await.unwrap();
    assert!(matches!(third.outcome, RunOutcome::Skipped), "{third:?}");
    assert_eq!(third.head.number, 39);
    assert!(import.is_idle());

    // The next sync goes on from block 39 (block 39 again is not new).
    import.submit(2, blocks[38..].to_vec());
    let fourth = import.next_report().await.unwrap();
    assert!(matches!(fourth.outcome, RunOutcome::Imported), "{fourth:?}");
    assert_eq!(fourth.head.number, 96);
    assert_eq!(fourth.head.hash(), blocks[95].header.header.hash());
    drop(import);
    assert_eq!(shared.read().unwrap().head().number, 96);
}
