//! The servers: HTTP JSON-RPC (POST) that also upgrades to WebSocket (GET),
//! a WebSocket-only port, and `/metrics` + `/health` on their own address.
//! Built on axum (hyper + tokio-tungstenite).
//!
//! Limits: request bodies over `max_body_bytes` get HTTP 413; a connection
//! beyond `max_connections` gets HTTP 503 and is closed; WebSocket messages
//! over `max_ws_message_bytes` close the connection; each WebSocket client
//! has a send queue of `ws_send_queue` messages and is disconnected when it
//! is full (a client that does not read never slows the others).

use super::jsonrpc::{self, Transport};
use super::metrics::{self, Metrics};
use super::subscriptions::{ConnectionSubscriptions, Lagged, Prepared, RingReceiver};
use super::{Broadcaster, RpcError, RpcState};
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::task::AtomicWaker;
use futures::{Sink, Stream};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
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
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
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
        let _ = axum::serve(limited, rpc_router(self.state.clone())).await;
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, RpcError> {
    listen(addr).map_err(|source| RpcError::Bind { addr, source })
}

/// Connections the kernel queues for `accept` (clamped to `somaxconn`).
/// tokio's `TcpListener::bind` asks for 128, the standard library's value:
/// a burst of new connections beyond that (thousands of WebSocket clients
/// reconnecting at once) has its SYNs dropped and retried a second later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with a [`LISTEN_BACKLOG`]-deep accept queue
/// (the proxy, which does not depend on this crate, listens the same way).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
    tokio::spawn(async move {
        let _ = axum::serve(limited, router).await;
    })
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
async fn http_get(
    State(state): State<RpcState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(ws, state),
        Err(_) => StatusCode::OK.into_response(),
    }
}

async fn ws_only(
    State(state): State<RpcState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(ws, state),
        Err(rejection) => rejection.into_response(),
    }
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

fn upgrade(ws: WebSocketUpgrade, state: RpcState) -> Response {
    let max = state.limits.max_ws_message_bytes;
    // tungstenite reserves a 128 KiB read buffer per connection by default:
    // 1.3 GB for 10,000 subscribers. Requests are small; the buffer grows
    // for a large one.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4 * 1024)
        .on_upgrade(move |socket| websocket(socket, state))
}

/// One WebSocket connection, driven by one task: requests in order (each
/// on the blocking pool), notifications between them, and every outgoing
/// message through one bounded queue that is written in a batch and
/// flushed once. A new head costs the connection one wake-up and one write.
async fn websocket(socket: WebSocket, state: RpcState) {
    state.metrics.connection_opened(true);
    let read_wake = Arc::new(ReadWake {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let mut connection = Connection {
        queue_limit: state.limits.ws_send_queue.max(1),
        state,
        socket,
        subs: Some(ConnectionSubscriptions::default()),
        live: 0,
        call: None,
        events: None,
        batch: Vec::new(),
        texts: Vec::new(),
        out: VecDeque::new(),
        unflushed: false,
        read_wake: read_wake.clone(),
        read_waker: Waker::from(read_wake),
    };
    let end = std::future::poll_fn(|cx| connection.poll(cx)).await;
    let state = &connection.state;
    if end == End::Slow {
        state.metrics.slow_client_disconnected();
    }
    state
        .metrics
        .subscriptions_changed(-(connection.live as i64));
    state.metrics.connection_closed(true);
    // Dropping the connection closes the socket.
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed it, or the socket failed.
    Closed,
    /// The client fell a whole ring behind, or its send queue is full.
    Slow,
}

/// Events taken from the ring per poll (they go out in one write).
const EVENTS_PER_POLL: usize = 64;
/// Rounds of work per poll before the task yields to others.
const ROUNDS_PER_POLL: usize = 32;

type Call = JoinHandle<(jsonrpc::Reply, ConnectionSubscriptions)>;

/// The state of one WebSocket connection (see [`websocket`]).
struct Connection {
    state: RpcState,
    socket: WebSocket,
    /// The subscriptions; `None` while a call (which may change them) runs.
    subs: Option<ConnectionSubscriptions>,
    /// Subscriptions counted in the metrics.
    live: usize,
    /// The call being executed on the blocking pool.
    call: Option<Call>,
    /// The ring, read while the connection has subscriptions.
    events: Option<RingReceiver>,
    /// Scratch: events read from the ring, and their notifications.
    batch: Vec<Arc<Prepared>>,
    texts: Vec<String>,
    /// Messages not yet handed to the socket (at most `queue_limit`).
    out: VecDeque<Message>,
    queue_limit: usize,
    /// Messages handed to the socket but not yet flushed.
    unflushed: bool,
    /// The socket is read with its own waker, so that a wake-up from the
    /// ring does not cost a read of a socket that has nothing.
    read_wake: Arc<ReadWake>,
    read_waker: Waker,
}

/// The waker a connection reads its socket with: notes that the socket may
/// have something, then wakes the connection's task.
struct ReadWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Connection {
    /// Does all the work that is ready; `Pending` once every source (call,
    /// ring, socket) has left the task's waker.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        self.read_wake.task.register(cx.waker());
        for _ in 0..ROUNDS_PER_POLL {
            let mut again = false;
            // A finished call: its reply goes out before any later notification.
            if let Some(call) = &mut self.call {
                match Pin::new(call).poll(cx) {
                    Poll::Ready(Ok((reply, subs))) => {
                        self.call = None;
                        if let Err(end) = self.finish_call(reply, subs) {
                            return Poll::Ready(end);
                        }
                        again = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(End::Closed),
                    Poll::Pending => {}
                }
            }
            // Notifications (not while a call holds the subscriptions).
            if self.call.is_none()
                && let Some(events) = &mut self.events
            {
                match events.poll_recv(cx, &mut self.batch, EVENTS_PER_POLL) {
                    Poll::Ready(Err(Lagged)) => return Poll::Ready(End::Slow),
                    Poll::Ready(Ok(caught_up)) => {
                        again |= !caught_up;
                        if let Err(end) = self.render() {
                            return Poll::Ready(end);
                        }
                    }
                    Poll::Pending => {}
                }
            }
            // The next request, once the previous one is answered, if the
            // socket may have one (it has not said "nothing" since).
            if self.call.is_none() && self.read_wake.woken.swap(false, Ordering::Acquire) {
                let mut read_cx = Context::from_waker(&self.read_waker);
                match Pin::new(&mut self.socket).poll_next(&mut read_cx) {
                    Poll::Ready(Some(Ok(message))) => {
                        // More may be buffered: read again next round.
                        self.read_wake.woken.store(true, Ordering::Relaxed);
                        let body: Bytes = match message {
                            Message::Text(text) => Bytes::from(text),
                            Message::Binary(bytes) => bytes,
                            // tungstenite queued the pong; the flush below sends it.
                            Message::Ping(_) | Message::Pong(_) => {
                                self.unflushed = true;
                                again = true;
                                Bytes::new()
                            }
                            Message::Close(_) => return Poll::Ready(End::Closed),
                        };
                        if !body.is_empty() {
                            self.start_call(body);
                            again = true;
                        }
                    }
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(End::Closed),
                    Poll::Pending => {}
                }
            }
            if let Poll::Ready(Err(())) = self.poll_write(cx) {
                return Poll::Ready(End::Closed);
            }
            if !again {
                return Poll::Pending;
            }
        }
        // Plenty done: let other connections run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn start_call(&mut self, body: Bytes) {
        let mut subs = self
            .subs
            .take()
            .expect("subscriptions are back after each call");
        let state = self.state.clone();
        self.call = Some(tokio::task::spawn_blocking(move || {
            let reply = jsonrpc::handle(&state, &body, Transport::WebSocket(&mut subs));
            (reply, subs)
        }));
    }

    fn finish_call(
        &mut self,
        reply: jsonrpc::Reply,
        subs: ConnectionSubscriptions,
    ) -> Result<(), End> {
        let after = subs.len();
        self.state
            .metrics
            .subscriptions_changed(after as i64 - self.live as i64);
        self.live = after;
        self.subs = Some(subs);
        match (after, &self.events) {
            (0, Some(_)) => self.events = None,
            (1.., None) => self.events = Some(self.state.broadcaster.subscribe()),
            _ => {}
        }
        let messages = reply.response.into_iter().chain(reply.after);
        self.enqueue(messages)
    }

    /// Turns the events read from the ring into this connection's notifications.
    fn render(&mut self) -> Result<(), End> {
        let subs = self.subs.as_ref().expect("present between calls");
        for event in self.batch.drain(..) {
            subs.notifications(&event, &mut self.texts);
            if self.out.len() + self.texts.len() > self.queue_limit {
                return Err(End::Slow);
            }
        }
        let mut texts = std::mem::take(&mut self.texts);
        let result = self.enqueue(texts.drain(..));
        self.texts = texts;
        result
    }

    /// Queues messages; `Slow` if that overflows the client's queue (it does not read).
    fn enqueue(&mut self, messages: impl Iterator<Item = String>) -> Result<(), End> {
        for text in messages {
            if self.out.len() >= self.queue_limit {
                return Err(End::Slow);
            }
            self.out.push_back(Message::Text(text.into()));
        }
        Ok(())
    }

    /// Hands queued messages to the socket while it accepts them, then
    /// flushes them with one write. `Pending`: the socket is full and the
    /// waker is left with it.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let mut socket = Pin::new(&mut self.socket);
        while !self.out.is_empty() {
            match socket.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Pending => return Poll::Pending,
            }
            let message = self.out.pop_front().expect("not empty");
            if socket.as_mut().start_send(message).is_err() {
                return Poll::Ready(Err(()));
            }
            self.unflushed = true;
        }
        if self.unflushed {
            match socket.poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
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
