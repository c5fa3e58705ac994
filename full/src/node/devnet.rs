//! `luxtensor-node devnet`: a local network of validators on loopback, one
//! OS process each, with the deterministic devnet keys and funded accounts.
//!
//! It writes a chain spec whose genesis is a moment from now, a data
//! directory per node (its store, node key and validator key), starts each
//! node with the others as bootnodes, prints their addresses, and stops them
//! all on Ctrl-C (or when one of them dies).

use crate::network::service::{load_or_create_node_key, write_private};
use luxtensor_light::ChainSpec;
use luxtensor_light::chain_spec::devnet_validator_key;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Options of `luxtensor-node devnet`.
#[derive(Debug, Clone)]
pub struct DevnetOptions {
    /// Number of validators.
    pub validators: u32,
    /// Parent directory of the nodes' data directories (wiped at start).
    pub data_dir: PathBuf,
    /// Slot length.
    pub slot_ms: u64,
    /// Slots per epoch.
    pub epoch_length: u64,
    /// HTTP RPC of the first node.
    pub http_addr: SocketAddr,
    /// WebSocket RPC of the first node.
    pub ws_addr: SocketAddr,
    /// Metrics of the first node.
    pub metrics_addr: SocketAddr,
}

/// Why the devnet could not run.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    /// A file could not be written or a process started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The options or the spec are invalid.
    #[error("{0}")]
    Invalid(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevnetError {
    let what = what.into();
    move |source| DevnetError::Io { what, source }
}

/// A free loopback port, bound then released.
///
/// It is taken from below the kernel's ephemeral range, so the outgoing
/// connections of nodes already running cannot take it between this call
/// and the node's bind (a port from `bind(0)` could be, which made devnet
/// starts fail with "address in use"). Each process starts at its own offset
/// and never hands out the same port twice.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (low, high) = (10_000u32, ephemeral_range_start().max(10_001));
    let span = high - low;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span.min(1_000) {
        let port = low + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return Ok(listener.local_addr()?.port());
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range (Linux's default when it
/// cannot be read).
fn ephemeral_range_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
        .min(u16::MAX as u32)
}

/// The devnet chain spec with genesis `delay` from now.
pub fn devnet_spec(options: &DevnetOptions, delay: Duration) -> Result<ChainSpec, DevnetError> {
    let mut spec = ChainSpec::devnet(options.validators);
    spec.slot_duration_ms = options.slot_ms;
    spec.rotation.epoch_length = options.epoch_length;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    spec.genesis_timestamp = (now + delay).as_secs() + 1;
    spec.validate()
        .map_err(|e| DevnetError::Invalid(e.to_string()))?;
    Ok(spec)
}

/// One node of the devnet, as started.
#[derive(Debug, Clone)]
pub struct DevnetNode {
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its p2p address with peer id.
    pub p2p: String,
    /// Its HTTP RPC address.
    pub http: SocketAddr,
    /// Its WebSocket RPC address.
    pub ws: SocketAddr,
    /// Its metrics address.
    pub metrics: SocketAddr,
}

/// What varies between the nodes of a local network.
#[derive(Debug, Clone, Copy)]
pub struct NodeArgs<'a> {
    /// The chain spec file.
    pub chain_file: &'a std::path::Path,
    /// The node's data directory.
    pub data_dir: &'a std::path::Path,
    /// Its validator key file, if it validates.
    pub validator_key: Option<&'a std::path::Path>,
    /// Its p2p listen multiaddr.
    pub listen: &'a str,
    /// Its HTTP, WebSocket and metrics addresses; `None`: no RPC.
    pub http: Option<(SocketAddr, SocketAddr, SocketAddr)>,
    /// Peers to dial (multiaddrs with peer ids).
    pub bootnodes: &'a [String],
}

/// The `luxtensor-node run …` arguments of one node.
pub fn run_args(node: &NodeArgs<'_>) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--data-dir".into(),
        node.data_dir.display().to_string(),
        "--chain".into(),
        node.chain_file.display().to_string(),
        "--p2p-addr".into(),
        node.listen.to_string(),
    ];
    if let Some(key) = node.validator_key {
        args.extend(["--validator-key".into(), key.display().to_string()]);
    }
    match node.http {
        Some((http, ws, metrics)) => args.extend([
            "--http-addr".into(),
            http.to_string(),
            "--ws-addr".into(),
            ws.to_string(),
            "--metrics-addr".into(),
            metrics.to_string(),
        ]),
        None => args.push("--no-rpc".into()),
    }
    for bootnode in node.bootnodes {
        args.extend(["--bootnode".into(), bootnode.clone()]);
    }
    args
}

/// Prepares the directories, keys and spec of a devnet and returns the
/// command line of each node (without starting them).
pub fn prepare(options: &DevnetOptions) -> Result<Vec<(DevnetNode, Vec<String>)>, DevnetError> {
    if options.validators == 0 {
        return Err(DevnetError::Invalid(
            "--validators must be at least 1".into(),
        ));
    }
    let _ = std::fs::remove_dir_all(&options.data_dir);
    std::fs::create_dir_all(&options.data_dir).map_err(io("creating the devnet directory"))?;
    let spec = devnet_spec(options, Duration::from_secs(2))?;
    let chain_file = options.data_dir.join("chain.json");
    let json =
        serde_json::to_string_pretty(&spec).map_err(|e| DevnetError::Invalid(e.to_string()))?;
    std::fs::write(&chain_file, json).map_err(io("writing chain.json"))?;
    let mut nodes: Vec<(DevnetNode, Vec<String>)> = Vec::new();
    for i in 0..options.validators {
        let dir = options.data_dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir).map_err(io("creating a node directory"))?;
        let key_file = dir.join("validator.key");
        let secret = alloy_primitives::hex::encode(devnet_validator_key(i).to_bytes());
        write_private(&key_file, secret.as_bytes()).map_err(io("writing a validator key"))?;
        let node_key = load_or_create_node_key(&dir.join("node.key"))
            .map_err(|e| DevnetError::Invalid(e.to_string()))?;
        let peer_id = node_key.public().to_peer_id();
        let port = free_port().map_err(io("finding a free port"))?;
        let listen = format!("/ip4/127.0.0.1/tcp/{port}");
        let (http, ws, metrics) = if i == 0 {
            (options.http_addr, options.ws_addr, options.metrics_addr)
        } else {
            let free = || -> Result<SocketAddr, DevnetError> {
                Ok(SocketAddr::from((
                    [127, 0, 0, 1],
                    free_port().map_err(io("finding a free port"))?,
                )))
            };
            (free()?, free()?, free()?)
        };
        let bootnodes: Vec<String> = nodes.iter().map(|(n, _)| n.p2p.clone()).collect();
        let args = run_args(&NodeArgs {
            chain_file: &chain_file,
            data_dir: &dir,
            validator_key: Some(&key_file),
            listen: &listen,
            http: Some((http, ws, metrics)),
            bootnodes: &bootnodes,
        });
        nodes.push((
            DevnetNode {
                data_dir: dir,
                p2p: format!("{listen}/p2p/{peer_id}"),
                http,
                ws,
                metrics,
            },
            args,
        ));
    }
    Ok(nodes)
}

/// Runs the devnet until Ctrl-C or until a node exits.
///
/// Each node's stdout is a pipe read to its end by a watcher thread: the
/// end of the pipe is the node's exit, so the devnet learns of it at once,
/// without polling.
pub fn run(options: DevnetOptions) -> Result<(), DevnetError> {
    let nodes = prepare(&options)?;
    let exe = std::env::current_exe().map_err(io("finding luxtensor-node"))?;
    let (events, stopped) = std::sync::mpsc::channel::<Option<usize>>();
    let mut children: Vec<Child> = Vec::new();
    for (i, (node, args)) in nodes.iter().enumerate() {
        let log = std::fs::File::create(node.data_dir.join("node.log"))
            .map_err(io("creating a node log"))?;
        let mut child = Command::new(&exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(io(format!("starting node {i}")))?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let events = events.clone();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
            let _ = events.send(Some(i));
        });
        children.push(child);
        println!(
            "node {i}: http://{}  ws://{}  metrics http://{}/metrics  p2p {}  log {}",
            node.http,
            node.ws,
            node.metrics,
            node.p2p,
            node.data_dir.join("node.log").display()
        );
    }
    println!(
        "devnet of {} validators: chain id {}, slots of {} ms, epochs of {} slots; Ctrl-C stops it",
        options.validators, 31337, options.slot_ms, options.epoch_length
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting the signal handler"))?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let _ = events.send(None);
    });
    let exited = stopped.recv().ok().flatten();
    let failed = exited.map(|i| {
        let status = children[i].wait();
        (i, status)
    });
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    match failed {
        Some((i, status)) => Err(DevnetError::Invalid(format!(
            "node {i} exited ({}); see {}",
            status.map_or_else(|e| e.to_string(), |s| s.to_string()),
            nodes[i].0.data_dir.join("node.log").display()
        ))),
        None => Ok(()),
    }
}
