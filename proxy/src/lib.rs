//! # LuxTensor proxy: verified, cached JSON-RPC in front of untrusted nodes
//!
//! A JSON-RPC server that looks like a LuxTensor node (the same methods,
//! JSON shapes and error codes) but serves only what its embedded light
//! client verified: blocks, transactions and receipts against verified
//! headers (roots and parent-hash chain), balances, nonces, code and storage
//! through `eth_getProof` against the verified state root, `eth_getLogs`
//! provably complete. It caches what it verified, shares one upstream
//! subscription among all its WebSocket clients, and fails over between
//! upstreams, demoting any that lies. `docs/proxy.md` is the user's guide.
//!
//! | module | what it holds |
//! |---|---|
//! | [`score`] | sans-IO upstream scoreboard: failures vs lies, lag, latency |
//! | [`cache`] | sans-IO response cache bounded by entries and bytes, with scopes |
//! | [`canon`] | sans-IO verified canonical window: gap filling, reorgs |
//! | [`verify`] | sans-IO checks of the node's JSON against verified headers |
//! | [`rpc`] | JSON-RPC framing and the proxy's error codes |
//! | [`transport`], [`pool`] | upstream clients (HTTP, WebSocket) and the pool |
//! | [`proxy`] | shared state and verified fetches |
//! | [`follower`] | the shell driving the light client and the canonical window |
//! | [`methods`], [`logs`], [`filters`] | the methods |
//! | [`server`], [`fanout`], [`metrics`] | HTTP (hyper, axum) + WebSocket, subscriptions and their fan-out, `/metrics`, `/health` |
//! | [`status`] | the live status page (`/`, `/status.json`, `/status/events`) on the metrics address |
//! | `dev` (feature `dev`) | the in-process devnet of `--dev` |
//!
//! ```no_run
//! # async fn run() -> Result<(), luxtensor_proxy::StartError> {
//! use luxtensor_proxy::{ProxyConfig, start};
//! let spec = luxtensor_light::ChainSpec::devnet(4);
//! let running = start(ProxyConfig::default(), spec, None, vec!["ws://127.0.0.1:8546".into()]).await?;
//! println!("serving verified JSON-RPC on {}", running.bound.rpc);
//! # Ok(()) }
//! ```

pub mod cache;
pub mod canon;
#[cfg(feature = "dev")]
pub mod dev;
pub mod fanout;
pub mod filters;
pub mod follower;
pub mod logs;
pub mod methods;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod rpc;
pub mod score;
pub mod server;
pub mod status;
pub mod transport;
pub mod verify;

pub use proxy::{ChainEvent, Proxy, ProxyConfig};
pub use server::Bound;

use luxtensor_light::client::{
    AgePolicy, Anchor, Checkpoint, CheckpointMaterial, Config, LightClient, current_epoch_at,
};
use luxtensor_light::{ChainSpec, SignedHeader, ValidatorSet};
use std::sync::Arc;
use std::time::Duration;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad upstream URLs or none.
    #[error("{0}")]
    Upstreams(String),
    /// The checkpoint was refused or its material could not be fetched.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The light client refused its state.
    #[error("light client: {0}")]
    Light(#[from] luxtensor_light::client::ClientError),
    /// The server could not bind.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    /// Shared state (for tests and the binary).
    pub proxy: Arc<Proxy>,
    /// Bound addresses.
    pub bound: Bound,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The trusted state saved in `config.data_dir` by an earlier run, checked
/// (same chain, not older than the safe bound), if there is one.
pub fn load_state(
    config: &ProxyConfig,
    spec: &ChainSpec,
) -> Result<Option<luxtensor_light::client::TrustedState>, StartError> {
    let Some(dir) = &config.data_dir else {
        return Ok(None);
    };
    let path = dir.join(proxy::STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StartError::Checkpoint(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let moved = |e: String| {
        StartError::Checkpoint(format!(
            "the saved state {} {e}; move it away to start from a checkpoint",
            path.display()
        ))
    };
    let state = luxtensor_light::client::TrustedState::decode(&bytes)
        .map_err(|e| moved(format!("is damaged ({e})")))?;
    let policy = AgePolicy {
        current_epoch: current_epoch_at(spec, now_ms()),
        allow_old: false,
    };
    state
        .check_resume(spec, policy)
        .map_err(|e| moved(format!("cannot be resumed ({e})")))?;
    tracing::info!(epoch = state.epoch, path = %path.display(), "resuming from the saved trusted state");
    Ok(Some(state))
}

/// Fetches what a non-genesis checkpoint needs and checks it.
async fn trusted_state(
    spec: &ChainSpec,
    checkpoint: &Checkpoint,
    pool: &pool::Pool,
) -> Result<luxtensor_light::client::TrustedState, StartError> {
    let policy = AgePolicy {
        current_epoch: current_epoch_at(spec, now_ms()),
        allow_old: false,
    };
    let fail = |e: String| StartError::Checkpoint(e);
    let set_of = |value: serde_json::Value| -> Result<ValidatorSet, String> {
        let rlp: alloy_primitives::Bytes = serde_json::from_value(value["rlp"].clone())
            .map_err(|e| format!("lux_getValidatorSet: {e}"))?;
        ValidatorSet::decode(&rlp).map_err(|e| e.to_string())
    };
    let material = match checkpoint.anchor {
        Anchor::Genesis => CheckpointMaterial::None,
        Anchor::Epoch { epoch, .. } => {
            let (_, answer) = pool
                .call("lux_getValidatorSet", &serde_json::json!([epoch]), &[])
                .await
                .map_err(|e| fail(e.to_string()))?;
            CheckpointMaterial::Set(set_of(answer.map_err(|e| fail(e.to_string()))?).map_err(fail)?)
        }
        Anchor::Block(hash) => {
            let (_, answer) = pool
                .call("lux_getRawHeader", &serde_json::json!([hash]), &[])
                .await
                .map_err(|e| fail(e.to_string()))?;
            let raw: alloy_primitives::Bytes =
                serde_json::from_value(answer.map_err(|e| fail(e.to_string()))?)
                    .map_err(|e| fail(e.to_string()))?;
            let header = SignedHeader::decode(&raw).map_err(|e| fail(e.to_string()))?;
            let (_, answer) = pool
                .call(
                    "lux_getValidatorSet",
                    &serde_json::json!([header.epoch]),
                    &[],
                )
                .await
                .map_err(|e| fail(e.to_string()))?;
            let set = set_of(answer.map_err(|e| fail(e.to_string()))?).map_err(fail)?;
            CheckpointMaterial::Block {
                header: Box::new(header.header),
                set,
            }
        }
    };
    checkpoint
        .trust(spec, material, policy)
        .map_err(|e| fail(e.to_string()))
}

/// Starts a proxy for `spec` over `upstreams` (`http://` or `ws://` URLs),
/// trusting `checkpoint` (genesis if `None`). Returns once it serves, after
/// waiting up to a few seconds for the first verified head.
pub async fn start(
    config: ProxyConfig,
    spec: ChainSpec,
    checkpoint: Option<Checkpoint>,
    upstreams: Vec<String>,
) -> Result<Running, StartError> {
    let pool = pool::Pool::new(&upstreams, config.upstream_timeout, Default::default())
        .map_err(StartError::Upstreams)?;
    let state = match load_state(&config, &spec)? {
        Some(state) => state,
        None => {
            let checkpoint = checkpoint.unwrap_or_else(|| Checkpoint::genesis(&spec));
            trusted_state(&spec, &checkpoint, &pool).await?
        }
    };
    let light = LightClient::new(spec.clone(), state, Config::default())?;
    let proxy = Proxy::new(config, spec, pool, light);
    let bound = server::serve(proxy.clone()).await?;
    follower::start(proxy.clone(), Duration::from_secs(5)).await;
    Ok(Running { proxy, bound })
}
