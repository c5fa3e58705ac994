//! `luxtensor-proxy`: verified, cached JSON-RPC in front of untrusted
//! LuxTensor nodes; `--dev` also starts a local devnet in this process.

use clap::Parser;
use luxtensor_light::ChainSpec;
use luxtensor_light::client::Checkpoint;
use luxtensor_proxy::{ChainEvent, ProxyConfig, start};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Verified caching JSON-RPC proxy for LuxTensor.
#[derive(Debug, Parser)]
#[command(name = "luxtensor-proxy", version)]
struct Cli {
    /// An upstream node (`http://HOST:PORT` or `ws://HOST:PORT`); repeat for several.
    #[arg(long = "upstream", value_name = "URL")]
    upstreams: Vec<String>,
    /// The chain spec file (the `chain.json` of the network); required with --upstream.
    #[arg(long, value_name = "FILE")]
    chain: Option<PathBuf>,
    /// Where trust starts: `CHAIN_ID:genesis`, `CHAIN_ID:epoch:N:0xSETHASH` or `CHAIN_ID:block:0xHASH` (default: genesis).
    #[arg(long)]
    checkpoint: Option<String>,
    /// JSON-RPC address (HTTP and WebSocket).
    #[arg(long, default_value = "127.0.0.1:8545")]
    listen: SocketAddr,
    /// `/metrics` and `/health` address.
    #[arg(long, default_value = "127.0.0.1:9002")]
    metrics: SocketAddr,
    /// Cache budget in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mb: usize,
    /// Forward what cannot be verified, marked `"trust":"unverified"`, instead of refusing it.
    #[arg(long)]
    relaxed: bool,
    /// Serve only these methods (comma-separated).
    #[arg(long, value_delimiter = ',')]
    allow_methods: Option<Vec<String>>,
    /// Require one of these API keys (`x-api-key` header or `?key=`), comma-separated.
    #[arg(long, value_delimiter = ',', env = "LUXTENSOR_PROXY_API_KEYS")]
    api_keys: Option<Vec<String>>,
    /// Limit each client IP address to this many calls per second (every
    /// call of a batch counts); over it, calls get error -32005. Default: no limit.
    #[arg(long, value_name = "CALLS")]
    rate_limit: Option<u32>,
    /// Calls a client may make at once under --rate-limit (default: one second's worth).
    #[arg(long, value_name = "CALLS", requires = "rate_limit")]
    rate_burst: Option<u32>,
    /// Keep the light client's trusted state here, and resume from it after a restart.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Also serve WebSocket JSON-RPC (only) on this address.
    #[arg(long, value_name = "ADDR")]
    ws_listen: Option<std::net::SocketAddr>,
    /// Start a local devnet in this process and front it.
    #[arg(long)]
    dev: bool,
    /// Validators of the --dev devnet.
    #[arg(long, default_value_t = 4)]
    dev_validators: u32,
    /// Slot length of the --dev devnet, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    dev_slot_ms: u64,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,luxtensor_proxy=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("luxtensor-proxy: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let config = ProxyConfig {
        listen: cli.listen,
        metrics: Some(cli.metrics),
        relaxed: cli.relaxed,
        cache_bytes: cli.cache_mb.max(1) << 20,
        allow_methods: cli.allow_methods,
        api_keys: cli.api_keys,
        data_dir: cli.data_dir,
        ws_listen: cli.ws_listen,
        rate_limit: cli
            .rate_limit
            .map(|per_second| luxtensor_proxy::ratelimit::RateLimit {
                per_second,
                burst: cli.rate_burst.unwrap_or(per_second),
            }),
        ..ProxyConfig::default()
    };
    let checkpoint = cli
        .checkpoint
        .as_deref()
        .map(Checkpoint::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut _devnet = None;
    let (spec, upstreams) = if cli.dev {
        let (devnet, spec, upstreams) =
            start_dev(&cli.upstreams, cli.dev_validators, cli.dev_slot_ms).await?;
        _devnet = Some(devnet);
        (spec, upstreams)
    } else {
        if cli.upstreams.is_empty() {
            return Err("no upstream: pass --upstream URL (one or more) with --chain chain.json, or run with --dev for a local devnet".into());
        }
        let path = cli.chain.ok_or("--chain FILE is required with --upstream (the network's chain.json; a devnet writes it in its data directory)")?;
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec =
            ChainSpec::from_json_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        (spec, cli.upstreams)
    };
    let running = start(config, spec, checkpoint, upstreams.clone())
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "luxtensor-proxy: verified JSON-RPC on http://{0} and ws://{0}",
        running.bound.rpc
    );
    if let Some(ws) = running.bound.ws {
        println!("luxtensor-proxy: WebSocket-only JSON-RPC on ws://{ws}");
    }
    if let Some(m) = running.bound.metrics {
        println!("luxtensor-proxy: metrics on http://{m}/metrics, health on http://{m}/health");
    }
    println!("luxtensor-proxy: upstreams {}", upstreams.join(", "));
    println!(
        "luxtensor-proxy: mode {}",
        if cli.relaxed {
            "relaxed (unverifiable calls forwarded, marked)"
        } else {
            "strict (unverifiable calls refused)"
        }
    );
    let proxy = running.proxy.clone();
    let mut events = proxy.events.subscribe();
    let printer = async move {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let ChainEvent::Heads { added, removed, .. } = &*event {
                        for h in removed {
                            println!("reorg: dropped {} {}", h.number, h.hash());
                        }
                        if let Some((h, _)) = added.last() {
                            let finalized = proxy.finalized().map_or(0, |f| f.number);
                            println!(
                                "verified head {} {} (epoch {}, final {finalized})",
                                h.number,
                                h.hash(),
                                h.epoch
                            );
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    };
    let _keep: Arc<_> = running.proxy.clone();
    tokio::select! {
        _ = printer => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

#[cfg(feature = "dev")]
async fn start_dev(
    extra: &[String],
    validators: u32,
    slot_ms: u64,
) -> Result<(luxtensor_proxy::dev::Devnet, ChainSpec, Vec<String>), String> {
    let dir = std::env::temp_dir().join(format!("luxtensor-proxy-dev-{}", std::process::id()));
    let devnet = luxtensor_proxy::dev::start(validators.max(1), &dir, slot_ms, 16).await?;
    let mut upstreams: Vec<String> = devnet.rpc.iter().map(|a| format!("ws://{a}")).collect();
    upstreams.extend(extra.iter().cloned());
    println!(
        "luxtensor-proxy --dev: {} validators in this process (chain id {}, {} ms slots), data in {}",
        validators,
        devnet.spec.chain_id,
        slot_ms,
        dir.display()
    );
    for (i, a) in devnet.rpc.iter().enumerate() {
        println!("  node {i}: http://{a} (untrusted upstream)");
    }
    let spec = devnet.spec.clone();
    Ok((devnet, spec, upstreams))
}

#[cfg(not(feature = "dev"))]
async fn start_dev(_: &[String], _: u32, _: u64) -> Result<((), ChainSpec, Vec<String>), String> {
    Err("this build has no --dev (built without the `dev` feature)".into())
}
