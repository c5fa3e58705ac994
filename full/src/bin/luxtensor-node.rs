//! `luxtensor-node`: run a full node, a local devnet, or make a validator key.
//!
//! ```text
//! luxtensor-node devnet                      # 4 validators on loopback, RPC on :8545/:8546
//! luxtensor-node run --data-dir DIR --chain chain.json --validator-key key.hex --bootnode /ip4/...
//! luxtensor-node keygen --out validator.key  # prints the key, proof of possession, stake calldata
//! ```

use clap::{Args, Parser, Subcommand};
use luxtensor_full::node::{ByzantineServing, Node, NodeConfig, devnet};
use luxtensor_full::rpc::{RpcConfig, RpcLimits};
use luxtensor_light::{BlsSecretKey, ChainSpec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "luxtensor-node", version, about = "LuxTensor full node")]
struct Cli {
    /// Log filter (tracing-subscriber syntax), e.g. `info` or `luxtensor_full=debug`.
    #[arg(long, env = "LUXTENSOR_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node.
    Run(RunArgs),
    /// Run a local network of validators on loopback (one process each).
    Devnet(DevnetArgs),
    /// Write a new validator key and print what registering it needs.
    Keygen(KeygenArgs),
}

#[derive(Args, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RunArgs {
    /// Optional TOML file with any of these options (flags and environment win).
    #[arg(long, env = "LUXTENSOR_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Where the node keeps its database, node key and signing record.
    #[arg(long, env = "LUXTENSOR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// `devnet` or a chain-spec file (TOML or JSON).
    #[arg(long, env = "LUXTENSOR_CHAIN")]
    chain: Option<String>,
    /// File holding the validator's BLS secret key (hex); without it the node only follows.
    #[arg(long, env = "LUXTENSOR_VALIDATOR_KEY")]
    validator_key: Option<PathBuf>,
    /// p2p listen multiaddr.
    #[arg(long, env = "LUXTENSOR_P2P_ADDR")]
    p2p_addr: Option<String>,
    /// Peers to dial at start (multiaddrs with /p2p/ peer ids); repeat the flag.
    #[arg(long = "bootnode", env = "LUXTENSOR_BOOTNODES", value_delimiter = ',')]
    #[serde(default)]
    bootnodes: Vec<String>,
    /// HTTP JSON-RPC address (also accepts WebSocket upgrades).
    #[arg(long, env = "LUXTENSOR_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// WebSocket JSON-RPC address.
    #[arg(long, env = "LUXTENSOR_WS_ADDR")]
    ws_addr: Option<SocketAddr>,
    /// `/metrics` and `/health` address.
    #[arg(long, env = "LUXTENSOR_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Serve no RPC at all.
    #[arg(long)]
    #[serde(default)]
    no_rpc: bool,
    /// Most connected peers.
    #[arg(long, env = "LUXTENSOR_MAX_PEERS")]
    max_peers: Option<u32>,
    /// Test only: misbehave when serving sync (corrupt-bodies, silent, empty)
    /// or when voting (double-vote).
    #[arg(long, hide = true)]
    #[serde(skip)]
    test_byzantine: Option<String>,
    /// Test only: serve sync answers over a simulated link `LATENCY_MS,BYTES_PER_S`.
    #[arg(long, hide = true)]
    #[serde(skip)]
    test_throttle: Option<String>,
}

#[derive(Args, Debug)]
struct DevnetArgs {
    /// Number of validators.
    #[arg(long, default_value_t = 4)]
    validators: u32,
    /// Where the nodes keep their data (wiped at start).
    #[arg(long, default_value = "devnet-data")]
    data_dir: PathBuf,
    /// Slot length in milliseconds.
    #[arg(long, default_value_t = 500)]
    slot_ms: u64,
    /// Slots per epoch.
    #[arg(long, default_value_t = 8)]
    epoch_length: u64,
    /// HTTP RPC of the first node (the others take the next free ports).
    #[arg(long, default_value = "127.0.0.1:8545")]
    http_addr: SocketAddr,
    /// WebSocket RPC of the first node.
    #[arg(long, default_value = "127.0.0.1:8546")]
    ws_addr: SocketAddr,
    /// Metrics of the first node.
    #[arg(long, default_value = "127.0.0.1:9001")]
    metrics_addr: SocketAddr,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Where to write the key (refuses to overwrite).
    #[arg(long, default_value = "validator.key")]
    out: PathBuf,
    /// Chain the proof of possession is for: `devnet` or a chain-spec file.
    #[arg(long, default_value = "devnet")]
    chain: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Devnet(args) => devnet::run(devnet::DevnetOptions {
            validators: args.validators,
            data_dir: args.data_dir,
            slot_ms: args.slot_ms,
            epoch_length: args.epoch_length,
            http_addr: args.http_addr,
            ws_addr: args.ws_addr,
            metrics_addr: args.metrics_addr,
        })
        .map_err(|e| e.to_string()),
        Command::Keygen(args) => keygen(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load_chain(chain: &str) -> Result<ChainSpec, String> {
    if chain == "devnet" {
        return Ok(ChainSpec::devnet(4));
    }
    let text = std::fs::read_to_string(chain).map_err(|e| format!("--chain {chain}: {e}"))?;
    let spec = if chain.ends_with(".json") {
        ChainSpec::from_json_str(&text)
    } else {
        ChainSpec::from_toml_str(&text)
    };
    spec.map_err(|e| format!("--chain {chain}: {e}"))
}

fn read_validator_key(path: &Path) -> Result<BlsSecretKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--validator-key {}: {e}", path.display()))?;
    let bytes = alloy_primitives::hex::decode(text.trim())
        .map_err(|e| format!("--validator-key {}: not hex: {e}", path.display()))?;
    BlsSecretKey::from_bytes(&bytes).map_err(|e| format!("--validator-key {}: {e}", path.display()))
}

/// Flags and environment over the TOML file.
fn merge(cli: RunArgs) -> Result<RunArgs, String> {
    let Some(path) = &cli.config else {
        return Ok(cli);
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let file: RunArgs =
        toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?;
    Ok(RunArgs {
        config: cli.config,
        data_dir: cli.data_dir.or(file.data_dir),
        chain: cli.chain.or(file.chain),
        validator_key: cli.validator_key.or(file.validator_key),
        p2p_addr: cli.p2p_addr.or(file.p2p_addr),
        bootnodes: if cli.bootnodes.is_empty() {
            file.bootnodes
        } else {
            cli.bootnodes
        },
        http_addr: cli.http_addr.or(file.http_addr),
        ws_addr: cli.ws_addr.or(file.ws_addr),
        metrics_addr: cli.metrics_addr.or(file.metrics_addr),
        no_rpc: cli.no_rpc || file.no_rpc,
        max_peers: cli.max_peers.or(file.max_peers),
        test_byzantine: cli.test_byzantine,
        test_throttle: cli.test_throttle,
    })
}

fn run(args: RunArgs) -> Result<(), String> {
    let args = merge(args)?;
    let data_dir = args.data_dir.ok_or("--data-dir is required")?;
    let spec = load_chain(args.chain.as_deref().unwrap_or("devnet"))?;
    let validator_key = args
        .validator_key
        .as_deref()
        .map(read_validator_key)
        .transpose()?;
    let p2p_addr = args
        .p2p_addr
        .as_deref()
        .unwrap_or("/ip4/127.0.0.1/tcp/30333")
        .parse()
        .map_err(|e| format!("--p2p-addr: {e}"))?;
    let bootnodes = args
        .bootnodes
        .iter()
        .map(|b| b.parse().map_err(|e| format!("--bootnode {b}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let defaults = RpcConfig::default();
    let rpc = (!args.no_rpc).then(|| RpcConfig {
        http_addr: args.http_addr.unwrap_or(defaults.http_addr),
        ws_addr: args.ws_addr.or(defaults.ws_addr),
        metrics_addr: args.metrics_addr.or(defaults.metrics_addr),
        metrics_next_free: args.metrics_addr.is_none(),
    });
    let byzantine = match args.test_byzantine.as_deref() {
        None => None,
        Some("corrupt-bodies") => Some(ByzantineServing::CorruptBodies),
        Some("silent") => Some(ByzantineServing::Silent),
        Some("empty") => Some(ByzantineServing::Empty),
        Some("double-vote") => Some(ByzantineServing::DoubleVote),
        Some(other) => return Err(format!("--test-byzantine {other}: unknown mode")),
    };
    let serve_throttle = args
        .test_throttle
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| format!("--test-throttle: {e}"))?;
    let config = NodeConfig {
        data_dir,
        spec,
        validator_key,
        p2p_addr,
        bootnodes,
        max_peers: args.max_peers.unwrap_or(50),
        rpc,
        rpc_limits: RpcLimits::default(),
        byzantine,
        serve_throttle,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let node = Node::start(config).await.map_err(|e| e.to_string())?;
        let info = node.info();
        // One machine-readable line for scripts and tests.
        println!(
            "{}",
            serde_json::json!({
                "event": "started",
                "peer_id": info.peer_id.to_string(),
                "http": info.http.map(|a| a.to_string()),
                "ws": info.ws.map(|a| a.to_string()),
                "metrics": info.metrics.map(|a| a.to_string()),
            })
        );
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        node.run(shutdown).await.map_err(|e| e.to_string())
    })
}

fn keygen(args: KeygenArgs) -> Result<(), String> {
    if args.out.exists() {
        return Err(format!(
            "{} exists; refusing to overwrite a key",
            args.out.display()
        ));
    }
    let spec = load_chain(&args.chain)?;
    let mut material = [0u8; 32];
    getrandom::fill(&mut material).map_err(|e| format!("randomness: {e}"))?;
    let key = BlsSecretKey::from_key_material(&material).map_err(|e| e.to_string())?;
    luxtensor_full::network::service::write_private(
        &args.out,
        alloy_primitives::hex::encode(key.to_bytes()).as_bytes(),
    )
    .map_err(|e| format!("{}: {e}", args.out.display()))?;
    let public_key = key.public_key();
    let pop = key.proof_of_possession(spec.chain_id);
    let calldata = luxtensor_full::staking::stake_calldata(public_key.as_slice(), pop.as_slice());
    println!("key file:            {}", args.out.display());
    println!("bls public key:      {public_key}");
    println!("proof of possession: {pop}");
    println!(
        "staking contract:    {}",
        luxtensor_full::staking::STAKING_ADDRESS
    );
    println!("stake calldata:      {calldata}");
    println!(
        "send it with at least {} wei as value, e.g. `cast send {} {calldata} --value <stake>`",
        spec.rotation.min_stake,
        luxtensor_full::staking::STAKING_ADDRESS
    );
    Ok(())
}
