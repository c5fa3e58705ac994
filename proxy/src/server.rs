//! HTTP and WebSocket JSON-RPC on one address, subscriptions with bounded
//! per-connection send queues, and `/metrics` + `/health` on their own
//! address.
//!
//! ## HTTP
//!
//! Connections are served by hyper directly: a `POST /` is answered here
//! (API key, body limit, then the call), everything else (WebSocket
//! upgrades, `GET`, other paths and methods) goes to an axum router.
//!
//! A repeated request for final data is answered from its exact bytes:
//! when a single call's answer is [`Scope::Immutable`] (a block, a
//! transaction or a receipt at or below the verified final head), the whole
//! response is kept under the request body without its id
//! ([`Cache::put_exact`](crate::cache::Cache::put_exact)), and
//! the same body again, with any plain id, is answered with those bytes
//! (that id spliced in) before any JSON is parsed, after the API key and
//! the client's rate limit, counted as a call
//! and as a cache hit of its method like any other. Nothing that can change
//! (`latest`, pending, a block above the final head, filters,
//! subscriptions) is ever kept there, nor a batch, an error or a forwarded
//! (unverified) answer.
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

use crate::cache::{Exact, MAX_EXACT_BODY, Scope};
use crate::fanout::Rendered;
use crate::methods;
use crate::proxy::{ChainEvent, Proxy};
use crate::rpc::{self, Parsed, RpcFailure};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use luxtensor_fanout::handshake::{self, Upgraded};
use luxtensor_fanout::{End, Full, Handler, Limits, Outbox};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

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
    let listener =
        luxtensor_fanout::listen(addr).map_err(|source| ServeError::Bind { addr, source })?;
    let rpc = listener.local_addr().unwrap_or(addr);
    // `POST /` is answered before this router (see `route`).
    let router = Router::new()
        .route("/", get(http_get))
        .layer(DefaultBodyLimit::max(proxy.config.max_body_bytes))
        .with_state(proxy.clone());
    tokio::spawn(serve_rpc(listener, proxy.clone(), router));
    let ws = match proxy.config.ws_listen {
        Some(addr) => {
            let listener = luxtensor_fanout::listen(addr)
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

/// GET: a WebSocket upgrade (served by [`websocket`]), or an empty 200.
async fn http_get(
    State(proxy): State<Arc<Proxy>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    mut request: axum::extract::Request,
) -> Response {
    if !authorized(&proxy, &headers, &query) {
        return (StatusCode::UNAUTHORIZED, "missing or unknown API key\n").into_response();
    }
    if handshake::accept(request.method(), request.headers()).is_err() {
        return StatusCode::OK.into_response();
    }
    if proxy.counters.ws_connections.load(Ordering::Relaxed) >= proxy.config.max_connections {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    }
    let Ok((response, upgrading)) = handshake::upgrade(&mut request) else {
        return StatusCode::OK.into_response();
    };
    tokio::spawn(async move {
        if let Some(stream) = upgrading.stream().await {
            websocket(stream, proxy, peer.ip()).await;
        }
    });
    let (parts, ()) = response.into_parts();
    Response::from_parts(parts, Body::empty())
}

/// Accepts connections and serves each with hyper (HTTP/1.1, keep-alive,
/// upgrades for WebSocket).
async fn serve_rpc(listener: TcpListener, proxy: Arc<Proxy>, router: Router) {
    let router = TowerToHyperService::new(router);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to close.
                tracing::debug!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let router = router.clone();
        let header_read_timeout = proxy.config.header_read_timeout;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                route(proxy.clone(), router.clone(), peer, request)
            });
            // A client that does not finish its request headers within the
            // timeout is disconnected (slow-loris).
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

/// One HTTP request: `POST /` here, the rest through the router.
async fn route(
    proxy: Arc<Proxy>,
    router: TowerToHyperService<Router>,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Result<Response, Infallible> {
    if request.method() == Method::POST && request.uri().path() == "/" {
        return Ok(http_post(&proxy, peer, request).await);
    }
    request.extensions_mut().insert(ConnectInfo(peer));
    hyper::service::Service::call(&router, request).await
}

fn json_response(body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn http_post(proxy: &Arc<Proxy>, peer: SocketAddr, request: Request<Incoming>) -> Response {
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().map(str::to_string);
    if !authorized(proxy, &parts.headers, &query) {
        return (StatusCode::UNAUTHORIZED, "missing or unknown API key\n").into_response();
    }
    let max = proxy.config.max_body_bytes;
    let body = match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let message = format!("the request body is larger than {max} bytes\n");
            return (StatusCode::PAYLOAD_TOO_LARGE, message).into_response();
        }
        Err(_) => {
            return (StatusCode::BAD_REQUEST, "cannot read the request body\n").into_response();
        }
    };
    let client = peer.ip();
    if let Some(response) = exact_answer(proxy, client, &body) {
        return json_response(response);
    }
    let (text, keep) = answer_body(proxy, &body, Some(client)).await;
    let Some(text) = text else {
        return StatusCode::OK.into_response();
    };
    let response = Bytes::from(text);
    if let Some((method, id)) = keep
        && body.len() <= MAX_EXACT_BODY
    {
        let exact = Exact {
            method,
            id,
            response: response.clone(),
        };
        proxy
            .cache
            .lock()
            .expect("not poisoned")
            .put_exact(&body, exact);
    }
    json_response(response)
}

/// The response kept for exactly this body, if any, as the slow path would
/// give it: served (a call and a hit of its method), or refused by the
/// client's rate limit.
fn exact_answer(proxy: &Proxy, client: IpAddr, body: &[u8]) -> Option<Bytes> {
    if body.len() > MAX_EXACT_BODY {
        return None;
    }
    let mut cache = proxy.cache.lock().expect("not poisoned");
    let exact = cache.get_exact(body)?;
    match allow_one(proxy, client) {
        Ok(()) => {
            cache.hit(exact.method);
            drop(cache);
            proxy.counters.requests.fetch_add(1, Ordering::Relaxed);
            Some(exact.response)
        }
        Err(error) => Some(Bytes::from(rpc::error_response(&exact.id, &error))),
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
    answer_body(proxy, body, client).await.0
}

/// The answer to a body, and, when it is a single call whose answer may be
/// kept whole under the exact body (see the module's docs), its method's
/// cache name and the id as JSON text.
async fn answer_body(
    proxy: &Arc<Proxy>,
    body: &[u8],
    client: Option<IpAddr>,
) -> (Option<String>, Option<(&'static str, Arc<str>)>) {
    let (batch, mut calls) = match rpc::parse_body(body, proxy.config.max_batch_len) {
        Ok(parsed) => parsed,
        Err(error) => return (Some(error), None),
    };
    rate_limit(proxy, client, &mut calls);
    let mut answers = futures::future::join_all(calls.into_iter().map(|call| async move {
        match call {
            Parsed::Invalid { id, error } => (Some(rpc::error_response(&id, &error)), None),
            Parsed::Call { id, method, params } => {
                let outcome = methods::call_cached(proxy, &method, params).await;
                let Some(id) = id else {
                    return (None, None);
                };
                let text = rpc::response(&id, &outcome.answer);
                let keep = match (&outcome.answer, outcome.cached) {
                    (Ok((_, rpc::Trust::Verified)), Some((name, Scope::Immutable))) => {
                        Some((name, id.into()))
                    }
                    _ => None,
                };
                (Some(text), keep)
            }
        }
    }))
    .await;
    let keep = match (batch, answers.as_mut_slice()) {
        (false, [(_, keep)]) => keep.take(),
        _ => None,
    };
    let texts = answers.into_iter().filter_map(|(text, _)| text).collect();
    (rpc::join(batch, texts), keep)
}

/// The error for a call over the client's rate limit, `wait_ms` before the next is allowed.
fn over_limit(limit: crate::ratelimit::RateLimit, wait_ms: u64) -> RpcFailure {
    let mut error = RpcFailure::new(
        -32005,
        format!(
            "rate limit exceeded: at most {} calls per second per client (bursts of {}); retry in {wait_ms} ms",
            limit.per_second, limit.burst
        ),
    );
    error.data = Some(serde_json::json!({ "retryAfterMs": wait_ms }));
    error
}

/// Takes one call from `client`'s allowance (counting a refusal).
fn allow_one(proxy: &Proxy, client: IpAddr) -> Result<(), RpcFailure> {
    let Some(limiter) = &proxy.limiter else {
        return Ok(());
    };
    let now = proxy.pool.now_ms();
    let mut limiter = limiter.lock().expect("not poisoned");
    limiter.check(client, now).map_err(|wait_ms| {
        proxy.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        over_limit(limiter.limit(), wait_ms)
    })
}

/// Applies the per-client rate limit: each call over it is answered with
/// error -32005 (`data.retryAfterMs`: when the next call is allowed); a
/// notification over it is dropped.
fn rate_limit(proxy: &Proxy, client: Option<IpAddr>, calls: &mut Vec<Parsed>) {
    let Some(client) = client else {
        return;
    };
    calls.retain_mut(|call| {
        let Parsed::Call { id, .. } = call else {
            return true;
        };
        let Err(error) = allow_one(proxy, client) else {
            return true;
        };
        let Some(id) = id.take() else {
            return false;
        };
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

/// Queues the notifications an event produces for one subscription: its
/// `prefix`, then each matching tail rendered once for every connection.
fn notify(prefix: &Bytes, sub: &Sub, rendered: &Rendered, out: &mut Outbox) -> Result<(), Full> {
    let mut send = |tail: &Bytes| out.text_parts(prefix.clone(), tail.clone());
    match (sub, &*rendered.event) {
        (Sub::Heads { gapless }, ChainEvent::Heads { .. }) => {
            if *gapless {
                rendered.removed.iter().try_for_each(&mut send)?;
            }
            rendered.heads.iter().try_for_each(send)
        }
        (Sub::Finalized, ChainEvent::Finalized(_)) => rendered.heads.iter().try_for_each(send),
        (
            Sub::Logs(filter),
            ChainEvent::Heads {
                removed_logs,
                added_logs,
                ..
            },
        ) => removed_logs
            .iter()
            .chain(added_logs)
            .zip(&rendered.logs)
            .filter(|(log, _)| filter.matches(&log.inner))
            .try_for_each(|(_, tail)| send(tail)),
        (Sub::Pending { full }, ChainEvent::Pending { .. }) => match &rendered.pending {
            Some((hash, tx)) => send(if *full { tx } else { hash }),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// One WebSocket connection, driven by [`luxtensor_fanout::serve`] (as the
/// node's RPC does it): requests read in order, subscriptions answered at
/// once and other calls on tasks of their own, notifications from the
/// fan-out ring, and every outgoing frame through one bounded queue
/// written with vectored writes. A client whose queue is full is closed
/// with 1008 and [`luxtensor_fanout::SLOW`].
async fn websocket(stream: Upgraded, proxy: Arc<Proxy>, client: IpAddr) {
    proxy
        .counters
        .ws_connections
        .fetch_add(1, Ordering::Relaxed);
    let limits = Limits {
        max_message: proxy.config.max_body_bytes,
        send_queue: proxy.config.ws_send_queue.max(1),
    };
    let (answers_tx, answers) = mpsc::channel(limits.send_queue);
    let ring = proxy.fanout.ring().clone();
    let mut session = Session {
        proxy,
        client,
        subs: HashMap::new(),
        pending_subs: HashMap::new(),
        answers,
        answers_tx,
    };
    luxtensor_fanout::serve(stream, ring, &mut session, limits).await;
}

/// What the proxy does with one WebSocket connection.
struct Session {
    proxy: Arc<Proxy>,
    client: IpAddr,
    /// The subscriptions, each with the prefix of its notifications.
    subs: HashMap<String, (Sub, Bytes)>,
    /// Subscriptions made in a batch whose answer (which gives the client
    /// their ids) is still being computed: they join `subs`, and get
    /// notifications, only once that answer is queued.
    pending_subs: HashMap<String, (Sub, Bytes)>,
    /// Answers of calls that run on tasks of their own.
    answers: mpsc::Receiver<Answer>,
    answers_tx: mpsc::Sender<Answer>,
}

/// An answer computed on a task of its own.
struct Answer {
    /// The text to send, if any (a batch of notifications has none).
    text: Option<String>,
    /// Pending subscriptions that this answer names: live once it is queued.
    activates: Vec<String>,
}

impl Handler for Session {
    type Event = Arc<Rendered>;

    /// Subscriptions at once, in order, before any notification; other
    /// calls on a task that sends back their answer.
    fn message(&mut self, body: Bytes, out: &mut Outbox) -> Result<(), End> {
        let proxy = self.proxy.clone();
        let (batch, mut calls) = match rpc::parse_body(&body, proxy.config.max_batch_len) {
            Ok(parsed) => parsed,
            Err(error) => return Ok(out.text(error)?),
        };
        rate_limit(&proxy, Some(self.client), &mut calls);
        let mut immediate = Vec::new();
        let mut rest = Vec::new();
        let mut follow_ups = Vec::new();
        let mut new_subs = Vec::new();
        for call in calls {
            match call {
                Parsed::Call { id, method, params } if method == "eth_subscribe" => {
                    let answer = match parse_sub(&params) {
                        Ok(_)
                            if self.subs.len() + self.pending_subs.len() + new_subs.len()
                                >= proxy.config.max_subscriptions_per_connection =>
                        {
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
                            let prefix = luxtensor_fanout::notification::prefix(&sid);
                            new_subs.push((sid.clone(), (sub, prefix)));
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
                    let answer = match self.subs.remove(&sid) {
                        Some((sub, _)) => {
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
            self.subs.extend(new_subs);
            if let Some(text) = rpc::join(batch, immediate) {
                out.text(text)?;
            }
            for text in follow_ups {
                out.text(text)?;
            }
            return Ok(());
        }
        // The new subscriptions' ids go out with the rest of the batch:
        // no notification may come before them.
        let activates = new_subs.iter().map(|(sid, _)| sid.clone()).collect();
        self.pending_subs.extend(new_subs);
        let answers = self.answers_tx.clone();
        tokio::spawn(async move {
            let computed = futures::future::join_all(rest.into_iter().map(|call| {
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
            immediate.extend(computed.into_iter().flatten());
            let answer = Answer {
                text: rpc::join(batch, immediate),
                activates,
            };
            let follow_ups = follow_ups.into_iter().map(|text| Answer {
                text: Some(text),
                activates: Vec::new(),
            });
            for answer in std::iter::once(answer).chain(follow_ups) {
                if answers.send(answer).await.is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    fn poll_answers(&mut self, cx: &mut Context<'_>, out: &mut Outbox) -> Poll<Result<(), End>> {
        let mut any = false;
        while let Poll::Ready(Some(answer)) = self.answers.poll_recv(cx) {
            if let Some(text) = answer.text {
                out.text(text)?;
            }
            for sid in answer.activates {
                if let Some(sub) = self.pending_subs.remove(&sid) {
                    self.subs.insert(sid, sub);
                }
            }
            any = true;
        }
        if any {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn subscribed(&self) -> bool {
        !self.subs.is_empty()
    }

    fn render(&mut self, event: &Arc<Rendered>, out: &mut Outbox) -> Result<(), Full> {
        self.subs
            .values()
            .try_for_each(|(sub, prefix)| notify(prefix, sub, event, out))
    }

    fn ended(&mut self, end: End) {
        let counters = &self.proxy.counters;
        if end == End::Slow {
            counters.slow_disconnects.fetch_add(1, Ordering::Relaxed);
        }
        let all = || self.subs.values().chain(self.pending_subs.values());
        let logs = all().filter(|(s, _)| matches!(s, Sub::Logs(_))).count();
        counters.log_watchers.fetch_sub(logs, Ordering::Relaxed);
        counters
            .subscriptions
            .fetch_sub(all().count(), Ordering::Relaxed);
        counters.ws_connections.fetch_sub(1, Ordering::Relaxed);
    }
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
