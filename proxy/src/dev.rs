//! `luxtensor-proxy --dev`: a local devnet of validators running in this
//! process (each a full [`Node`] with its own libp2p swarm, store and RPC on
//! free loopback ports), for the proxy to front.

use luxtensor_full::node::devnet::{DevnetOptions, devnet_spec, free_port};
use luxtensor_full::node::{Node, NodeConfig};
use luxtensor_full::rpc::{RpcConfig, RpcLimits};
use luxtensor_light::ChainSpec;
use luxtensor_light::chain_spec::devnet_validator_key;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A started devnet.
#[derive(Debug)]
pub struct Devnet {
    /// Its chain spec (genesis a moment after the start).
    pub spec: ChainSpec,
    /// Each node's HTTP RPC address (also accepts WebSocket upgrades).
    pub rpc: Vec<SocketAddr>,
    /// Stops every node when dropped.
    pub stop: tokio::sync::watch::Sender<bool>,
}

/// Starts `validators` nodes in this process under `dir` (wiped first),
/// with `slot_ms` slots and `epoch_length`-slot epochs.
pub async fn start(
    validators: u32,
    dir: &Path,
    slot_ms: u64,
    epoch_length: u64,
) -> Result<Devnet, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let free = || -> Result<SocketAddr, String> {
        Ok(SocketAddr::from((
            [127, 0, 0, 1],
            free_port().map_err(|e| format!("finding a free port: {e}"))?,
        )))
    };
    let options = DevnetOptions {
        validators,
        data_dir: dir.to_path_buf(),
        slot_ms,
        epoch_length,
        http_addr: free()?,
        ws_addr: free()?,
        metrics_addr: free()?,
    };
    let spec = devnet_spec(&options, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut bootnodes = Vec::new();
    let mut rpc = Vec::new();
    for i in 0..validators {
        let http = free()?;
        let port = free_port().map_err(|e| format!("finding a free port: {e}"))?;
        let config = NodeConfig {
            data_dir: dir.join(format!("node-{i}")),
            spec: spec.clone(),
            validator_key: Some(devnet_validator_key(i)),
            p2p_addr: format!("/ip4/127.0.0.1/tcp/{port}")
                .parse()
                .map_err(|e| format!("p2p address: {e}"))?,
            bootnodes: bootnodes.clone(),
            max_peers: 50,
            rpc: Some(RpcConfig {
                http_addr: http,
                ws_addr: None,
                metrics_addr: None,
                metrics_next_free: false,
            }),
            rpc_limits: RpcLimits::default(),
            byzantine: None,
            serve_throttle: None,
        };
        let node = Node::start(config)
            .await
            .map_err(|e| format!("starting node {i}: {e}"))?;
        let peer = node.info().peer_id;
        bootnodes.push(
            format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
                .parse()
                .map_err(|e| format!("bootnode address: {e}"))?,
        );
        rpc.push(http);
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = node.run(shutdown).await {
                tracing::error!(node = i, error = %e, "devnet node stopped");
            }
        });
    }
    Ok(Devnet { spec, rpc, stop })
}
