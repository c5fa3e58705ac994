//! A malicious JSON-RPC upstream for the proxy's tests: it forwards every
//! HTTP call to a real node and tampers with the answers the way its
//! current [`Tamper`] mode says. Also a stalled WebSocket upstream (accepts,
//! never answers) and a TCP relay that can be cut (an upstream that dies).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// How the upstream lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tamper {
    /// Honest forwarding.
    None = 0,
    /// Blocks (`eth_getBlockByHash`) with a forged state root.
    ForgeBlock,
    /// Receipts with a wrong cumulative gas.
    WrongReceipts,
    /// `eth_getProof` with a forged balance.
    ForgeBalance,
    /// Receipts with their logs left out.
    OmitLogs,
    /// `eth_sendRawTransaction` answered with another hash.
    WrongTxHash,
    /// Its certified head stays at the first one it saw.
    StaleHead,
}

/// The running malicious upstream.
pub struct Malicious {
    /// Its HTTP address.
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
}

impl Malicious {
    /// Switches the tampering mode.
    pub fn set(&self, mode: Tamper) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

struct Shared {
    node: SocketAddr,
    mode: Arc<AtomicU8>,
    stale: Mutex<Option<Value>>,
}

/// Starts a malicious upstream in front of the node's HTTP RPC at `node`.
pub async fn start(node: SocketAddr) -> Malicious {
    let mode = Arc::new(AtomicU8::new(0));
    let shared = Arc::new(Shared {
        node,
        mode: mode.clone(),
        stale: Mutex::new(None),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("/", post(handle)).with_state(shared);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Malicious { addr, mode }
}

async fn forward(node: SocketAddr, body: &[u8]) -> Value {
    let mut client = luxtensor_tests::rpc_support::HttpClient::connect(node).await;
    client
        .post_json(&serde_json::from_slice(body).unwrap())
        .await
}

async fn handle(State(s): State<Arc<Shared>>, body: Bytes) -> String {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = request["method"].as_str().unwrap_or_default().to_string();
    let mut response = forward(s.node, &body).await;
    let mode = s.mode.load(Ordering::SeqCst);
    let result = &mut response["result"];
    match (mode, method.as_str()) {
        (1, "eth_getBlockByHash") if result.is_object() => {
            result["stateRoot"] = Value::String(format!("0x{}", "ab".repeat(32)));
        }
        (2, "eth_getBlockReceipts") => {
            if let Some(first) = result.as_array_mut().and_then(|l| l.first_mut()) {
                first["cumulativeGasUsed"] = Value::String("0x5209".into());
            }
        }
        (3, "eth_getProof") if result.is_object() => {
            result["balance"] = Value::String("0xde0b6b3a7640000000".into());
        }
        (4, "eth_getBlockReceipts") => {
            if let Some(list) = result.as_array_mut() {
                for r in list {
                    r["logs"] = Value::Array(vec![]);
                }
            }
        }
        (5, "eth_sendRawTransaction") if result.is_string() => {
            *result = Value::String(format!("0x{}", "11".repeat(32)));
        }
        (6, "lux_getCertifiedHeader") => {
            let mut stale = s.stale.lock().unwrap();
            match &*stale {
                Some(old) => *result = old.clone(),
                None => *stale = Some(result.clone()),
            }
        }
        _ => {}
    }
    response.to_string()
}

/// A WebSocket upstream that accepts connections and never answers.
pub async fn stalled() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            if let Ok(ws) = tokio_tungstenite::accept_async(socket).await {
                held.push(ws); // never read, never written
            }
        }
    });
    addr
}

/// A TCP relay to `target` that can be cut: every connection through it
/// closes and new ones are refused.
pub struct Relay {
    /// Its address.
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    /// Starts a relay.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let mut stop_accept = stopped.clone();
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop_accept.wait_for(|s| *s) => return,
                };
                let Ok((mut inbound, _)) = accepted else {
                    return;
                };
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        Self { addr, stop }
    }

    /// Cuts every connection and stops accepting.
    pub fn cut(&self) {
        let _ = self.stop.send(true);
    }
}
