//! The servers: HTTP JSON-RPC (POST) that also upgrades to WebSocket (GET),
//! a WebSocket-only port, and `/metrics` + `/health` on their own address.
//! Built on axum (hyper); WebSocket connections are served by
//! `luxtensor-fanout` (frames written straight to the socket).
//!
//! Limits: request bodies over `max_body_bytes` get HTTP 413; a connection
//! beyond `max_connections` gets HTTP 503 and is closed; WebSocket messages
//! over `max_ws_message_bytes` close the connection; each WebSocket client
//! has a send queue of `ws_send_queue` messages and is disconnected when it
//! is full (a client that does not read never slows the others); a client
//! that does not finish a request head within `header_read_timeout` is
//! disconnected (slow-loris).

use super::jsonrpc::{self, Transport};
use super::metrics::{self, Metrics};
use super::subscriptions::{ConnectionSubscriptions, Prepared};
use super::{Broadcaster, RpcError, RpcState};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use luxtensor_fanout::handshake::{self, Refused, Upgraded};
use luxtensor_fanout::{End, Full, Handler, Limits, Outbox};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Where the servers listen. Port 0 picks a free port (see [`RpcHandle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcConfig {
    /// HTTP JSON-RPC; also accepts WebSocket upgrades (default 127.0.0.1:8545).
    pub http_addr: SocketAddr,
    /// WebSocket-only JSON-RPC (default 127.0.0.1:8546); `None`: no separate port.
    pub ws_addr: Option<SocketAddr>,
    /// `/metrics` and `/health` (default 127.0.0.1:9001); `None`: not served.
    pub metrics_addr: Option<SocketAddr>,
    /// If the metrics port is taken, try the next ones (up to 64): in a
    /// devnet the first node takes 9001 and the others the next free ports.
    pub metrics_next_free: bool,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8545)),
            ws_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8546))),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9001))),
            metrics_next_free: true,
        }
    }
}

/// The running servers: their bound addresses and the event sender.
#[derive(Debug)]
pub struct RpcHandle {
    /// Bound HTTP (+ WebSocket upgrade) address.
    pub http_addr: SocketAddr,
    /// Bound WebSocket-only address.
    pub ws_addr: Option<SocketAddr>,
    /// Bound metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// Feed this from the node's loop.
    pub broadcaster: Broadcaster,
    tasks: Vec<JoinHandle<()>>,
}

impl RpcHandle {
    /// Stops accepting connections and ends the servers' tasks.
    pub fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Binds every configured address and spawns the servers on the current
/// tokio runtime. Returns once all are listening.
pub async fn serve(config: RpcConfig, state: RpcState) -> Result<RpcHandle, RpcError> {
    let http = bind(config.http_addr).await?;
    let http_addr = local(&http, config.http_addr)?;
    let ws = match config.ws_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let ws_addr = ws
        .as_ref()
        .map(|l| local(l, config.ws_addr.expect("set")))
        .transpose()?;
    let metrics = match config.metrics_addr {
        Some(addr) => Some(bind_metrics(addr, config.metrics_next_free).await?),
        None => None,
    };
    let metrics_addr = metrics
        .as_ref()
        .map(|l| local(l, config.metrics_addr.expect("set")))
        .transpose()?;

    let mut tasks = vec![spawn_server(http, rpc_router(state.clone()), &state)];
    if let Some(ws) = ws {
        tasks.push(spawn_server(ws, ws_router(state.clone()), &state));
    }
    if let Some(listener) = metrics {
        let router = metrics_router(state.clone());
        let timeout = state.limits.header_read_timeout;
        tasks.push(tokio::spawn(serve_http(listener, router, timeout)));
    }
    tasks.push(spawn_filter_sweeper(&state));
    Ok(RpcHandle {
        http_addr,
        ws_addr,
        metrics_addr,
        broadcaster: state.broadcaster.clone(),
        tasks,
    })
}

/// The seed's server object: JSON-RPC over WebSocket (and HTTP) on one
/// address, with the broadcaster that feeds its subscriptions. The node
/// uses [`serve`], which also starts the metrics server.
#[derive(Debug, Clone)]
pub struct WebSocketServer {
    state: RpcState,
}

impl WebSocketServer {
    /// A server over the node's state. (The seed's `new()` took no
    /// arguments; this one serves reads too, so it needs the chain.)
    pub fn new(state: RpcState) -> Self {
        Self { state }
    }

    /// The sender the node feeds with [`super::BroadcastEvent`]s.
    pub fn get_broadcast_sender(&self) -> Broadcaster {
        self.state.broadcaster.clone()
    }

    /// Listens on `addr` (e.g. `"127.0.0.1:8546"`) and serves until the runtime ends.
    pub async fn start(self, addr: &str) -> Result<(), RpcError> {
        let parsed: SocketAddr = addr
            .parse()
            .map_err(|e| RpcError::InvalidRequest(format!("listening address {addr:?}: {e}")))?;
        let listener = bind(parsed).await?;
        let limited = LimitedListener::new(listener, &self.state);
        let timeout = self.state.limits.header_read_timeout;
        serve_http(limited, rpc_router(self.state.clone()), timeout).await;
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RpcError> {
    luxtensor_fanout::listen(addr).map_err(|source| RpcError::Bind { addr, source })
}

async fn bind_metrics(addr: SocketAddr, next_free: bool) -> Result<TcpListener, RpcError> {
    let tries = if next_free && addr.port() != 0 { 64 } else { 1 };
    let mut last = None;
    for offset in 0..tries {
        let Some(port) = addr.port().checked_add(offset) else {
            break;
        };
        match bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one try"))
}

fn local(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, RpcError> {
    listener
        .local_addr()
        .map_err(|source| RpcError::Bind { addr, source })
}

fn spawn_server(listener: TcpListener, router: Router, state: &RpcState) -> JoinHandle<()> {
    let limited = LimitedListener::new(listener, state);
    tokio::spawn(serve_http(
        limited,
        router,
        state.limits.header_read_timeout,
    ))
}

/// Accepts connections and serves each with hyper (HTTP/1.1, keep-alive,
/// upgrades for WebSocket). Unlike `axum::serve`, it gives hyper a timer,
/// so that a client that does not finish its request head within
/// `header_read_timeout` is disconnected instead of holding its
/// connection (and one of `max_connections`) for ever.
async fn serve_http<L>(mut listener: L, router: Router, header_read_timeout: std::time::Duration)
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    loop {
        let (io, _) = listener.accept().await;
        let service = service.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Removes expired polling filters every few seconds (they also expire on access).
fn spawn_filter_sweeper(state: &RpcState) -> JoinHandle<()> {
    let broadcaster = state.broadcaster.clone();
    let period = (state.limits.filter_timeout / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(30),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            broadcaster.filters().expire(std::time::Instant::now());
        }
    })
}

fn rpc_router(state: RpcState) -> Router {
    let limit = state.limits.max_body_bytes;
    Router::new()
        .route("/", get(http_get).post(http_post))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn ws_router(state: RpcState) -> Router {
    Router::new().route("/", get(ws_only)).with_state(state)
}

fn metrics_router(state: RpcState) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .with_state(state.clone())
        .merge(super::status::router(state))
}

async fn metrics_text(State(state): State<RpcState>) -> Response {
    let text = tokio::task::spawn_blocking(move || metrics::render(&state))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// 200 with the head when serving; 503 while syncing (load balancers skip the node).
async fn health(State(state): State<RpcState>) -> Response {
    let (head, hash) = tokio::task::spawn_blocking({
        let state = state.clone();
        move || state.latest()
    })
    .await
    .unwrap_or_default();
    let syncing = state.node.sync_status().is_some();
    let body = serde_json::json!({
        "status": if syncing { "syncing" } else { "ok" },
        "head": head,
        "headHash": hash,
        "peers": state.node.peer_count(),
    });
    let code = if syncing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// GET on the HTTP port: a WebSocket upgrade, or an empty 200 (geth's health check).
async fn http_get(State(state): State<RpcState>, request: Request) -> Response {
    upgrade(request, state).unwrap_or_else(|_| StatusCode::OK.into_response())
}

async fn ws_only(State(state): State<RpcState>, request: Request) -> Response {
    upgrade(request, state).unwrap_or_else(|refused| {
        let status = match refused {
            Refused::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            Refused::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut response =
            (status, format!("expected a WebSocket upgrade: {refused}\n")).into_response();
        if status == StatusCode::UPGRADE_REQUIRED {
            // RFC 6455 section 4.4: say which version is spoken.
            response.headers_mut().insert(
                "sec-websocket-version",
                axum::http::HeaderValue::from_static("13"),
            );
        }
        response
    })
}

async fn http_post(State(state): State<RpcState>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid content type, only application/json is supported\n",
        )
            .into_response();
    }
    let reply =
        tokio::task::spawn_blocking(move || jsonrpc::handle(&state, &body, Transport::Http)).await;
    match reply {
        Ok(jsonrpc::Reply {
            response: Some(text),
            ..
        }) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Ok(_) => StatusCode::OK.into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response(),
    }
}

/// Answers a WebSocket upgrade with `101` and serves the connection on a
/// task of its own; `Err`: the request is not an upgrade.
fn upgrade(mut request: Request, state: RpcState) -> Result<Response, Refused> {
    let (response, upgrading) = handshake::upgrade(&mut request)?;
    tokio::spawn(async move {
        if let Some(stream) = upgrading.stream().await {
            websocket(stream, state).await;
        }
    });
    let (parts, ()) = response.into_parts();
    Ok(Response::from_parts(parts, Body::empty()))
}

/// One WebSocket connection, driven by [`luxtensor_fanout::serve`]:
/// requests in order (each on the blocking pool), notifications between
/// them, and every outgoing frame through one bounded queue written with
/// vectored writes. A new head costs the connection one wake-up and one
/// `writev` of its subscription's prefix and the head's shared JSON.
async fn websocket(stream: Upgraded, state: RpcState) {
    state.metrics.connection_opened(true);
    let limits = Limits {
        max_message: state.limits.max_ws_message_bytes,
        send_queue: state.limits.ws_send_queue.max(1),
    };
    let ring = state.broadcaster.ring().clone();
    let mut session = Session {
        state,
        subs: Some(ConnectionSubscriptions::default()),
        live: 0,
        call: None,
    };
    luxtensor_fanout::serve(stream, ring, &mut session, limits).await;
}

type Call = JoinHandle<(jsonrpc::Reply, ConnectionSubscriptions)>;

/// What the node does with one WebSocket connection: one call at a time
/// on the blocking pool (it may change the subscriptions, which it holds
/// meanwhile), and the notifications of its subscriptions.
struct Session {
    state: RpcState,
    /// The subscriptions; `None` while a call (which may change them) runs.
    subs: Option<ConnectionSubscriptions>,
    /// Subscriptions counted in the metrics (as of the last call).
    live: usize,
    /// The call being executed on the blocking pool.
    call: Option<Call>,
}

impl Handler for Session {
    type Event = Arc<Prepared>;

    fn message(&mut self, body: Bytes, _: &mut Outbox) -> Result<(), End> {
        let mut subs = self
            .subs
            .take()
            .expect("subscriptions are back after each call");
        let state = self.state.clone();
        self.call = Some(tokio::task::spawn_blocking(move || {
            let reply = jsonrpc::handle(&state, &body, Transport::WebSocket(&mut subs));
            (reply, subs)
        }));
        Ok(())
    }

    fn poll_answers(&mut self, cx: &mut Context<'_>, out: &mut Outbox) -> Poll<Result<(), End>> {
        let Some(call) = &mut self.call else {
            return Poll::Pending;
        };
        let Ok((reply, subs)) = ready!(Pin::new(call).poll(cx)) else {
            return Poll::Ready(Err(End::Closed));
        };
        self.call = None;
        let after = subs.len();
        self.state
            .metrics
            .subscriptions_changed(after as i64 - self.live as i64);
        self.live = after;
        self.subs = Some(subs);
        for text in reply.response.into_iter().chain(reply.after) {
            out.text(text)?;
        }
        Poll::Ready(Ok(()))
    }

    fn busy(&self) -> bool {
        self.call.is_some()
    }

    fn subscribed(&self) -> bool {
        self.live > 0
    }

    fn render(&mut self, event: &Arc<Prepared>, out: &mut Outbox) -> Result<(), Full> {
        let subs = self.subs.as_ref().expect("present between calls");
        subs.notifications(event, out)
    }

    fn ended(&mut self, end: End) {
        let metrics = &self.state.metrics;
        if end == End::Slow {
            metrics.slow_client_disconnected();
        }
        metrics.subscriptions_changed(-(self.live as i64));
        metrics.connection_closed(true);
    }
}

/// A TCP listener that admits at most `max_connections` at once; the rest
/// get a 503 and are closed.
struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl LimitedListener {
    fn new(inner: TcpListener, state: &RpcState) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(state.limits.max_connections.max(1))),
            metrics: state.metrics.clone(),
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Counted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of file descriptors or a reset before accept: back off a little.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    self.metrics.connection_opened(false);
                    let metrics = self.metrics.clone();
                    return (
                        Counted {
                            stream,
                            _permit: permit,
                            metrics,
                        },
                        addr,
                    );
                }
                Err(_) => {
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let body = "too many connections\n";
                        let reply = format!(
                            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            stream.write_all(reply.as_bytes()),
                        )
                        .await;
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An admitted connection; releases its slot when dropped.
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.connection_closed(false);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
