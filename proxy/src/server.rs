//! HTTP and WebSocket JSON-RPC on one address (axum), subscriptions with
//! bounded per-connection send queues, and `/metrics` + `/health` on their
//! own address.
//!
//! ## Subscriptions
//!
//! | params | what the client gets |
//! |---|---|
//! | `["newHeads"]` | every verified head once, in order (gaps after an upstream failure are filled) |
//! | `["newHeads", {"gapless": true}]` | the same, and on a reorg first the dropped heads with `"removed": true` (newest first), then every head of the new branch |
//! | `["newHeads", {"finalized": true}]` | only final heads, each once, in order |
//! | `["logs", filter]` | logs of verified receipts, matched locally; on a reorg the removed ones with `"removed": true` |
//! | `["newPendingTransactions"]`, `[.., true]` | hashes (recomputed from the transaction) or full transactions |
//! | `["syncing"]` | `false` once the light client has a verified head |
//!
//! A client whose queue is full (it does not read) is disconnected with
//! close code 1008 and the reason `send queue full: the client does not
//! read fast enough`; the others never wait for it.

use crate::methods;
use crate::proxy::{ChainEvent, Proxy};
use crate::rpc::{self, Parsed, RpcFailure};
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (is another proxy or node running there? pass --listen ADDR)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reason.
        source: std::io::Error,
    },
}

/// The bound addresses.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// JSON-RPC (HTTP + WebSocket).
    pub rpc: SocketAddr,
    /// WebSocket-only JSON-RPC, if configured.
    pub ws: Option<SocketAddr>,
    /// `/metrics` and `/health`.
    pub metrics: Option<SocketAddr>,
}

/// Binds and serves in background tasks.
pub async fn serve(proxy: Arc<Proxy>) -> Result<Bound, ServeError> {
    let addr = proxy.config.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let rpc = listener.local_addr().unwrap_or(addr);
    let router = Router::new()
        .route("/", get(http_get).post(http_post))
        .layer(DefaultBodyLimit::max(proxy.config.max_body_bytes))
        .with_state(proxy.clone());
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, service).await;
    });
    let ws = match proxy.config.ws_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            let bound = listener.local_addr().unwrap_or(addr);
            let router = Router::new()
                .route("/", get(http_get))
                .with_state(proxy.clone());
            tokio::spawn(async move {
                let service = router.into_make_service_with_connect_info::<SocketAddr>();
                let _ = axum::serve(listener, service).await;
            });
            Some(bound)
        }
        None => None,
    };
    let metrics = match proxy.config.metrics {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            let bound = listener.local_addr().unwrap_or(addr);
            let router = Router::new()
                .route("/metrics", get(metrics_text))
                .route("/health", get(health))
                .with_state(proxy.clone())
                .merge(crate::status::router(proxy.clone()));
            tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            Some(bound)
        }
        None => None,
    };
    Ok(Bound { rpc, ws, metrics })
}

fn authorized(proxy: &Proxy, headers: &HeaderMap, query: &Option<String>) -> bool {
    let Some(keys) = &proxy.config.api_keys else {
        return true;
    };
    let header_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let query_key = query
        .as_deref()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("key=")));
    [header_key, query_key]
        .into_iter()
        .flatten()
        .any(|k| keys.iter().any(|allowed| allowed == k))
}

async fn http_get(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !authorized(&proxy, &headers, &query) {
        return (StatusCode::UNAUTHORIZED, "missing or unknown API key\n").into_response();
    }
    match ws {
        Ok(ws) => {
            if proxy.counters.ws_connections.load(Ordering::Relaxed) >= proxy.config.max_connections
            {
                return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
            }
            let max = proxy.config.max_body_bytes;
            ws.max_message_size(max)
                .max_frame_size(max)
                .read_buffer_size(4 * 1024)
                .on_upgrade(move |socket| websocket(socket, proxy, peer.ip()))
        }
        Err(_) => StatusCode::OK.into_response(),
    }
}

async fn http_post(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    if !authorized(&proxy, &headers, &query) {
        return (StatusCode::UNAUTHORIZED, "missing or unknown API key\n").into_response();
    }
    match handle_body_from(&proxy, &body, Some(peer.ip())).await {
        Some(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        None => StatusCode::OK.into_response(),
    }
}

/// Answers a body (one call or a batch) that has no subscriptions in it.
pub async fn handle_body(proxy: &Arc<Proxy>, body: &[u8]) -> Option<String> {
    handle_body_from(proxy, body, None).await
}

/// [`handle_body`] for a `client` (subject to the per-client rate limit).
pub async fn handle_body_from(
    proxy: &Arc<Proxy>,
    body: &[u8],
    client: Option<IpAddr>,
) -> Option<String> {
    let (batch, mut calls) = match rpc::parse_body(body, proxy.config.max_batch_len) {
        Ok(parsed) => parsed,
        Err(error) => return Some(error),
    };
    rate_limit(proxy, client, &mut calls);
    let answers = futures::future::join_all(calls.into_iter().map(|call| async move {
        match call {
            Parsed::Invalid { id, error } => Some(rpc::error_response(&id, &error)),
            Parsed::Call { id, method, params } => {
                let answer = methods::call(proxy, &method, params).await;
                id.map(|id| rpc::response(&id, &answer))
            }
        }
    }))
    .await;
    rpc::join(batch, answers.into_iter().flatten().collect())
}

/// Applies the per-client rate limit: each call over it is answered with
/// error -32005 (`data.retryAfterMs`: when the next call is allowed); a
/// notification over it is dropped.
fn rate_limit(proxy: &Proxy, client: Option<IpAddr>, calls: &mut Vec<Parsed>) {
    let (Some(limiter), Some(client)) = (&proxy.limiter, client) else {
        return;
    };
    let now = proxy.pool.now_ms();
    let mut limiter = limiter.lock().expect("not poisoned");
    let limit = limiter.limit();
    calls.retain_mut(|call| {
        let Parsed::Call { id, .. } = call else {
            return true;
        };
        let Err(wait_ms) = limiter.check(client, now) else {
            return true;
        };
        proxy.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        let Some(id) = id.take() else {
            return false;
        };
        let mut error = RpcFailure::new(
            -32005,
            format!(
                "rate limit exceeded: at most {} calls per second per client (bursts of {}); retry in {wait_ms} ms",
                limit.per_second, limit.burst
            ),
        );
        error.data = Some(serde_json::json!({ "retryAfterMs": wait_ms }));
        *call = Parsed::Invalid { id, error };
        true
    });
}

/// What one subscription wants.
#[derive(Debug, Clone)]
enum Sub {
    Heads { gapless: bool },
    Finalized,
    Logs(Box<alloy_rpc_types_eth::Filter>),
    Pending { full: bool },
    Syncing,
}

fn new_sub_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    format!("0x{:x}", u128::from_be_bytes(bytes))
}

fn notification(id: &str, result: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"eth_subscription","params":{{"subscription":"{id}","result":{result}}}}}"#
    )
}

fn parse_sub(params: &serde_json::Value) -> Result<Sub, RpcFailure> {
    let list = params.as_array().cloned().unwrap_or_default();
    let Some(kind) = list.first().and_then(|v| v.as_str()) else {
        return Err(RpcFailure::invalid_params("expected a subscription name"));
    };
    let option = list.get(1);
    match kind {
        "newHeads" => {
            let flag = |name: &str| {
                option
                    .and_then(|o| o.get(name))
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false)
            };
            if flag("finalized") {
                Ok(Sub::Finalized)
            } else {
                Ok(Sub::Heads {
                    gapless: flag("gapless"),
                })
            }
        }
        "logs" => {
            let filter: alloy_rpc_types_eth::Filter = match option {
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|e| RpcFailure::invalid_params(e.to_string()))?,
                None => Default::default(),
            };
            if filter
                .block_option
                .get_from_block()
                .is_some_and(|b| b.is_pending())
                || filter
                    .block_option
                    .get_to_block()
                    .is_some_and(|b| b.is_pending())
            {
                return Err(RpcFailure::invalid_params("pending logs are not supported"));
            }
            Ok(Sub::Logs(Box::new(filter)))
        }
        "newPendingTransactions" => Ok(Sub::Pending {
            full: option.and_then(|v| v.as_bool()).unwrap_or(false),
        }),
        "syncing" => Ok(Sub::Syncing),
        other => Err(RpcFailure::new(
            -32601,
            format!("no \"{other}\" subscription in eth namespace"),
        )),
    }
}

/// The notifications an event produces for one subscription.
fn notify(id: &str, sub: &Sub, event: &ChainEvent, out: &mut Vec<String>) {
    match (sub, event) {
        (Sub::Heads { gapless }, ChainEvent::Heads { removed, added, .. }) => {
            if *gapless {
                for h in removed.iter().rev() {
                    let mut text = crate::verify::header_json(h, alloy_primitives::Address::ZERO);
                    text["removed"] = serde_json::Value::Bool(true);
                    out.push(notification(id, &text.to_string()));
                }
            }
            for (_, text) in added {
                out.push(notification(id, text));
            }
        }
        (Sub::Finalized, ChainEvent::Finalized(list)) => {
            for (_, text) in list {
                out.push(notification(id, text));
            }
        }
        (
            Sub::Logs(filter),
            ChainEvent::Heads {
                removed_logs,
                added_logs,
                ..
            },
        ) => {
            for log in removed_logs.iter().chain(added_logs) {
                if filter.matches(&log.inner) {
                    let text = serde_json::to_string(log).expect("a log serializes");
                    out.push(notification(id, &text));
                }
            }
        }
        (Sub::Pending { full }, ChainEvent::Pending { hash, full: tx }) => {
            out.push(notification(id, if *full { tx } else { hash }));
        }
        _ => {}
    }
}

const SLOW: &str = "send queue full: the client does not read fast enough";

/// One WebSocket connection.
async fn websocket(socket: WebSocket, proxy: Arc<Proxy>, client: IpAddr) {
    proxy
        .counters
        .ws_connections
        .fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut stream) = socket.split();
    let (queue, mut outgoing) = mpsc::channel::<Message>(proxy.config.ws_send_queue.max(1));
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            let closing = matches!(message, Message::Close(_));
            match tokio::time::timeout(Duration::from_secs(10), sink.send(message)).await {
                Ok(Ok(())) if !closing => {}
                _ => break,
            }
        }
        let _ = sink.close().await;
    });
    let mut subs: HashMap<String, Sub> = HashMap::new();
    let mut events: Option<broadcast::Receiver<Arc<ChainEvent>>> = None;
    let mut slow = false;
    loop {
        let next_event = async {
            match &mut events {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = stream.next() => {
                let text = match message {
                    Some(Ok(Message::Text(t))) => t.to_string(),
                    Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                if !handle_ws_text(&proxy, client, &text, &queue, &mut subs, &mut events) {
                    slow = true;
                    break;
                }
            }
            event = next_event => {
                let event = match event {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(_)) => { slow = true; break; }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let mut out = Vec::new();
                for (id, sub) in &subs {
                    notify(id, sub, &event, &mut out);
                }
                if out.into_iter().any(|text| queue.try_send(Message::Text(text.into())).is_err()) {
                    slow = true;
                    break;
                }
            }
        }
    }
    if slow {
        proxy
            .counters
            .slow_disconnects
            .fetch_add(1, Ordering::Relaxed);
        // Make room for the close frame: the writer drains, then closes.
        let close = Message::Close(Some(CloseFrame {
            code: 1008,
            reason: SLOW.into(),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), queue.send(close)).await;
    }
    drop(queue);
    let logs = subs.values().filter(|s| matches!(s, Sub::Logs(_))).count();
    proxy
        .counters
        .log_watchers
        .fetch_sub(logs, Ordering::Relaxed);
    proxy
        .counters
        .subscriptions
        .fetch_sub(subs.len(), Ordering::Relaxed);
    proxy
        .counters
        .ws_connections
        .fetch_sub(1, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// Handles one WebSocket message; `false` if the client's queue is full.
fn handle_ws_text(
    proxy: &Arc<Proxy>,
    client: IpAddr,
    text: &str,
    queue: &mpsc::Sender<Message>,
    subs: &mut HashMap<String, Sub>,
    events: &mut Option<broadcast::Receiver<Arc<ChainEvent>>>,
) -> bool {
    let (batch, mut calls) = match rpc::parse_body(text.as_bytes(), proxy.config.max_batch_len) {
        Ok(parsed) => parsed,
        Err(error) => return queue.try_send(Message::Text(error.into())).is_ok(),
    };
    rate_limit(proxy, Some(client), &mut calls);
    // Subscriptions are answered here, in order, before any notification;
    // other calls run in a task that queues its answer.
    let mut immediate = Vec::new();
    let mut rest = Vec::new();
    let mut follow_ups = Vec::new();
    for call in calls {
        match call {
            Parsed::Call { id, method, params } if method == "eth_subscribe" => {
                let answer = match parse_sub(&params) {
                    Ok(_) if subs.len() >= proxy.config.max_subscriptions_per_connection => {
                        Err(RpcFailure::new(
                            -32005,
                            format!(
                                "at most {} subscriptions per connection",
                                proxy.config.max_subscriptions_per_connection
                            ),
                        ))
                    }
                    Ok(sub) => {
                        let sid = new_sub_id();
                        if matches!(sub, Sub::Logs(_)) {
                            proxy.counters.log_watchers.fetch_add(1, Ordering::Relaxed);
                        }
                        if matches!(sub, Sub::Syncing) && proxy.head().is_some() {
                            follow_ups.push(notification(&sid, "false"));
                        }
                        proxy.counters.subscriptions.fetch_add(1, Ordering::Relaxed);
                        subs.insert(sid.clone(), sub);
                        if events.is_none() {
                            *events = Some(proxy.events.subscribe());
                        }
                        Ok((format!("\"{sid}\"").into(), rpc::Trust::Verified))
                    }
                    Err(e) => Err(e),
                };
                if let Some(id) = id {
                    immediate.push(rpc::response(&id, &answer));
                }
            }
            Parsed::Call { id, method, params } if method == "eth_unsubscribe" => {
                let sid = params
                    .as_array()
                    .and_then(|l| l.first())
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                let answer = match subs.remove(&sid) {
                    Some(sub) => {
                        if matches!(sub, Sub::Logs(_)) {
                            proxy.counters.log_watchers.fetch_sub(1, Ordering::Relaxed);
                        }
                        proxy.counters.subscriptions.fetch_sub(1, Ordering::Relaxed);
                        Ok(("true".into(), rpc::Trust::Verified))
                    }
                    None => Err(RpcFailure::new(-32000, "subscription not found")),
                };
                if let Some(id) = id {
                    immediate.push(rpc::response(&id, &answer));
                }
            }
            other => rest.push(other),
        }
    }
    if rest.is_empty() {
        if let Some(text) = rpc::join(batch, immediate)
            && queue.try_send(Message::Text(text.into())).is_err()
        {
            return false;
        }
        return follow_ups
            .into_iter()
            .all(|t| queue.try_send(Message::Text(t.into())).is_ok());
    }
    let proxy = proxy.clone();
    let queue = queue.clone();
    tokio::spawn(async move {
        let answers = futures::future::join_all(rest.into_iter().map(|call| {
            let proxy = proxy.clone();
            async move {
                match call {
                    Parsed::Invalid { id, error } => Some(rpc::error_response(&id, &error)),
                    Parsed::Call { id, method, params } => {
                        let answer = methods::call(&proxy, &method, params).await;
                        id.map(|id| rpc::response(&id, &answer))
                    }
                }
            }
        }))
        .await;
        immediate.extend(answers.into_iter().flatten());
        if let Some(text) = rpc::join(batch, immediate) {
            let _ = queue.try_send(Message::Text(text.into()));
        }
        for t in follow_ups {
            let _ = queue.try_send(Message::Text(t.into()));
        }
    });
    true
}

async fn metrics_text(State(proxy): State<Arc<Proxy>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&proxy),
    )
        .into_response()
}

async fn health(State(proxy): State<Arc<Proxy>>) -> Response {
    let body = crate::metrics::health(&proxy);
    let status = if body["status"] == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}
