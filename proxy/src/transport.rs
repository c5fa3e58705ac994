//! JSON-RPC clients for one upstream: HTTP/1.1 with keep-alive (a small
//! pool of hyper connections) or one multiplexed WebSocket connection,
//! reconnected on the next call after a failure. Every call has a timeout
//! and a cap on the answer's size.

use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest answer accepted from an upstream (32 MiB).
pub const MAX_ANSWER_BYTES: usize = 32 << 20;
/// Idle HTTP connections kept per upstream.
const MAX_IDLE_HTTP: usize = 16;
/// Calls waiting on one WebSocket connection.
const MAX_WS_INFLIGHT: usize = 4096;
/// A WebSocket upstream is pinged this often.
pub const WS_PING_INTERVAL: Duration = Duration::from_secs(1);
/// A WebSocket upstream that sent nothing (not even a pong) for this long is
/// dead: its connection is dropped and its waiting calls fail at once.
pub const WS_DEAD_AFTER: Duration = Duration::from_secs(3);

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// The upstream could not be reached or broke the connection.
    #[error("transport: {0}")]
    Transport(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The upstream answered with a JSON-RPC error.
    #[error("upstream error {code}: {message}")]
    Rpc {
        /// The error code.
        code: i64,
        /// The message.
        message: String,
        /// Optional data.
        data: Option<Value>,
    },
    /// The answer is not JSON-RPC.
    #[error("malformed answer: {0}")]
    Malformed(String),
}

impl CallError {
    /// Whether the upstream is to blame as unavailable (not an answer).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Transport(_) | Self::Timeout(_))
    }
}

/// One upstream's client.
#[derive(Debug)]
pub enum Transport {
    /// `http://host:port`.
    Http(HttpTransport),
    /// `ws://host:port`.
    Ws(WsTransport),
}

impl Transport {
    /// A client for `url` (`http://` or `ws://`).
    pub fn new(url: &str) -> Result<Self, String> {
        if url.starts_with("ws://") {
            Ok(Self::Ws(WsTransport::new(url)))
        } else if let Some(rest) = url.strip_prefix("http://") {
            Ok(Self::Http(HttpTransport::new(rest.trim_end_matches('/'))))
        } else {
            Err(format!(
                "{url}: an upstream URL starts with http:// or ws:// (TLS is not supported; put a TLS terminator in front)"
            ))
        }
    }

    /// Calls `method` with `params`, within `timeout`.
    pub async fn call(
        &self,
        method: &str,
        params: &Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        match tokio::time::timeout(timeout, self.call_inner(method, params)).await {
            Ok(result) => result,
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }

    async fn call_inner(&self, method: &str, params: &Value) -> Result<Value, CallError> {
        match self {
            Self::Http(h) => h.call(method, params).await,
            Self::Ws(w) => w.call(method, params).await,
        }
    }
}

/// Reads a JSON-RPC response object: its result or its error.
pub fn answer_of(response: Value) -> Result<Value, CallError> {
    let Value::Object(mut obj) = response else {
        return Err(CallError::Malformed("not an object".into()));
    };
    if let Some(error) = obj.remove("error")
        && !error.is_null()
    {
        return Err(CallError::Rpc {
            code: error.get("code").and_then(Value::as_i64).unwrap_or(-32603),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .chars()
                .take(1000)
                .collect(),
            data: error.get("data").cloned(),
        });
    }
    match obj.remove("result") {
        Some(result) => Ok(result),
        None => Err(CallError::Malformed("neither result nor error".into())),
    }
}

/// HTTP/1.1 JSON-RPC with keep-alive.
#[derive(Debug)]
pub struct HttpTransport {
    authority: String,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
}

impl HttpTransport {
    fn new(authority: &str) -> Self {
        Self {
            authority: authority.to_string(),
            idle: Mutex::new(Vec::new()),
        }
    }

    async fn connection(&self) -> Result<SendRequest<Full<Bytes>>, CallError> {
        while let Some(mut sender) = self.idle.lock().await.pop() {
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| CallError::Transport(format!("connect {}: {e}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn call(&self, method: &str, params: &Value) -> Result<Value, CallError> {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
                .to_string();
        let mut sender = self.connection().await?;
        let request = hyper::Request::post("/")
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?
            .to_bytes();
        {
            let mut idle = self.idle.lock().await;
            if idle.len() < MAX_IDLE_HTTP {
                idle.push(sender);
            }
        }
        if !status.is_success() {
            return Err(CallError::Transport(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )));
        }
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| CallError::Malformed(e.to_string()))?;
        answer_of(value)
    }
}

type Waiters = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One multiplexed WebSocket connection, opened on first use and again
/// after it broke.
#[derive(Debug)]
pub struct WsTransport {
    url: String,
    next_id: AtomicU64,
    conn: Mutex<Option<WsConn>>,
}

#[derive(Debug)]
struct WsConn {
    outgoing: mpsc::Sender<String>,
    waiters: Waiters,
}

impl WsConn {
    fn is_closed(&self) -> bool {
        self.outgoing.is_closed()
    }
}

/// WebSocket limits for upstream connections.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_ANSWER_BYTES))
        .max_frame_size(Some(MAX_ANSWER_BYTES))
}

impl WsTransport {
    fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            next_id: AtomicU64::new(1),
            conn: Mutex::new(None),
        }
    }

    async fn open(&self) -> Result<WsConn, CallError> {
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(&self.url, Some(ws_config()), true)
                .await
                .map_err(|e| CallError::Transport(format!("connect {}: {e}", self.url)))?;
        let (mut sink, mut stream) = ws.split();
        let (outgoing, mut rx) = mpsc::channel::<String>(256);
        let waiters: Waiters = Default::default();
        let reader_waiters = waiters.clone();
        tokio::spawn(async move {
            let mut ping = tokio::time::interval(WS_PING_INTERVAL);
            ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut heard = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    out = rx.recv() => match out {
                        Some(text) => if sink.send(Message::text(text)).await.is_err() { break },
                        None => break,
                    },
                    _ = ping.tick() => {
                        if heard.elapsed() > WS_DEAD_AFTER {
                            break;
                        }
                        if sink.send(Message::Ping(Bytes::new())).await.is_err() { break }
                    }
                    message = stream.next() => match message {
                        Some(Ok(Message::Text(text))) => {
                            heard = tokio::time::Instant::now();
                            let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                            let Some(id) = value.get("id").and_then(Value::as_u64) else { continue };
                            let waiter = reader_waiters.lock().expect("not poisoned").remove(&id);
                            if let Some(w) = waiter { let _ = w.send(value); }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => heard = tokio::time::Instant::now(),
                    },
                }
            }
            // Fail every waiter by dropping its sender.
            reader_waiters.lock().expect("not poisoned").clear();
            rx.close();
        });
        Ok(WsConn { outgoing, waiters })
    }

    async fn call(&self, method: &str, params: &Value) -> Result<Value, CallError> {
        let (outgoing, waiters) = {
            let mut conn = self.conn.lock().await;
            if conn.as_ref().is_none_or(WsConn::is_closed) {
                *conn = Some(self.open().await?);
            }
            let c = conn.as_ref().expect("just opened");
            (c.outgoing.clone(), c.waiters.clone())
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut w = waiters.lock().expect("not poisoned");
            if w.len() >= MAX_WS_INFLIGHT {
                return Err(CallError::Transport("too many calls in flight".into()));
            }
            w.insert(id, tx);
        }
        let text =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
                .to_string();
        if outgoing.send(text).await.is_err() {
            waiters.lock().expect("not poisoned").remove(&id);
            return Err(CallError::Transport("connection closed".into()));
        }
        let guard = WaiterGuard { waiters, id };
        let result = rx.await;
        drop(guard);
        match result {
            Ok(value) => answer_of(value),
            Err(_) => Err(CallError::Transport("connection closed".into())),
        }
    }
}

/// Removes a waiter when its call is abandoned (timeout).
struct WaiterGuard {
    waiters: Waiters,
    id: u64,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.waiters.lock().expect("not poisoned").remove(&self.id);
    }
}
