//! One WebSocket connection, driven by one task: requests read in order,
//! events from the [`Ring`] rendered by the [`Handler`] between them, and
//! every outgoing frame through one bounded [`Outbox`] written with
//! vectored writes. A new head costs a subscribed connection one wake-up,
//! two reference-count increments per frame and one `writev`.

use crate::frame::{Incoming, Reader};
use crate::outbox::{Full, Outbox};
use crate::ring::{Lagged, Ring, RingReceiver};
use bytes::Bytes;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Events taken from the ring per round (their frames go out in one write).
const EVENTS_PER_POLL: usize = 64;
/// Rounds of work per poll before the task yields to other connections.
const ROUNDS_PER_POLL: usize = 32;
/// Bytes read from the socket at a time (on the stack: an idle connection
/// holds no read buffer).
const READ_CHUNK: usize = 4096;
/// How long the last frames (and the close frame) may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The reason given to a client disconnected for not reading.
pub const SLOW: &str = "send queue full: the client does not read fast enough";

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed it, or the socket failed.
    Closed,
    /// The client fell a whole ring behind, or its send queue is full
    /// (closed with code 1008 and [`SLOW`]).
    Slow,
    /// The client broke the protocol or the size limit (closed with this code).
    Protocol(u16),
}

impl From<Full> for End {
    fn from(_: Full) -> Self {
        Self::Slow
    }
}

/// What the node or the proxy does with a connection: answer its
/// requests and turn events into its notifications.
pub trait Handler {
    /// What the [`Ring`] carries (usually an `Arc` of a rendered event).
    type Event: Clone;

    /// A text or binary message from the client: answer it into `out`, or
    /// start work that [`Handler::poll_answers`] finishes.
    fn message(&mut self, message: Bytes, out: &mut Outbox) -> Result<(), End>;

    /// Queues answers of work started earlier. `Ready(Ok)`: something was
    /// done; `Pending`: nothing yet (the waker is kept).
    fn poll_answers(&mut self, cx: &mut Context<'_>, out: &mut Outbox) -> Poll<Result<(), End>>;

    /// While `true`, neither the next message nor events are taken (a call
    /// that may change the subscriptions is running elsewhere).
    fn busy(&self) -> bool {
        false
    }

    /// Whether the connection has subscriptions (reads the ring).
    fn subscribed(&self) -> bool;

    /// Queues this connection's notifications of `event`.
    fn render(&mut self, event: &Self::Event, out: &mut Outbox) -> Result<(), Full>;

    /// The connection has ended (called at once, before the last frames
    /// and the close frame are given up to two seconds to go out): the
    /// place to count it.
    fn ended(&mut self, end: End) {
        let _ = end;
    }
}

/// The limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message accepted from the client, in bytes.
    pub max_message: usize,
    /// Frames queued for the client before it counts as slow.
    pub send_queue: usize,
}

/// Serves one upgraded connection until it ends, then closes it (with
/// [`Handler::ended`] called first).
pub async fn serve<S, H>(
    stream: S,
    ring: Arc<Ring<H::Event>>,
    handler: &mut H,
    limits: Limits,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut connection = Connection {
        stream,
        handler,
        ring,
        events: None,
        batch: Vec::new(),
        out: Outbox::new(limits.send_queue),
        reader: Reader::new(limits.max_message),
    };
    let end = poll_fn(|cx| connection.poll(cx)).await;
    connection.events = None;
    connection.handler.ended(end);
    match end {
        End::Slow => connection.out.close(1008, SLOW),
        End::Protocol(code) => connection.out.close(code, ""),
        End::Closed => {}
    }
    let Connection {
        mut stream,
        mut out,
        ..
    } = connection;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if poll_fn(|cx| out.poll_write(Pin::new(&mut stream), cx))
            .await
            .is_ok()
        {
            let _ = stream.shutdown().await;
        }
    })
    .await;
    end
}

struct Connection<'h, S, H: Handler> {
    stream: S,
    handler: &'h mut H,
    ring: Arc<Ring<H::Event>>,
    /// The ring, read while the handler has subscriptions.
    events: Option<RingReceiver<H::Event>>,
    /// Scratch: events read from the ring.
    batch: Vec<H::Event>,
    out: Outbox,
    reader: Reader,
}

impl<S: AsyncRead + AsyncWrite + Unpin, H: Handler> Connection<'_, S, H> {
    /// Does all the work that is ready; `Pending` once every source
    /// (answers, ring, socket) has the task's waker.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        for _ in 0..ROUNDS_PER_POLL {
            let mut again = false;
            match self.handler.poll_answers(cx, &mut self.out) {
                Poll::Ready(Ok(())) => {
                    again = true;
                    self.follow_subscriptions();
                }
                Poll::Ready(Err(end)) => return Poll::Ready(end),
                Poll::Pending => {}
            }
            if !self.handler.busy()
                && let Some(events) = self.events.as_mut().filter(|e| !e.is_paused())
            {
                match events.poll_recv(cx, &mut self.batch, EVENTS_PER_POLL) {
                    Poll::Ready(Err(Lagged)) => return Poll::Ready(End::Slow),
                    Poll::Ready(Ok(caught_up)) => {
                        again |= !caught_up;
                        let mut full = false;
                        for event in self.batch.drain(..) {
                            full = full || self.handler.render(&event, &mut self.out).is_err();
                        }
                        if full {
                            return Poll::Ready(End::Slow);
                        }
                    }
                    Poll::Pending => {}
                }
            }
            // A message (tokio answers `Pending` without a system call
            // while the socket has not been readable since the last read).
            if !self.handler.busy() {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(incoming)) => {
                        // More may be buffered: read again next round.
                        again = true;
                        let handled = match incoming {
                            Incoming::Text(body) | Incoming::Binary(body) => {
                                let handled = self.handler.message(body, &mut self.out);
                                self.follow_subscriptions();
                                handled
                            }
                            Incoming::Ping(payload) => self.out.pong(payload).map_err(End::from),
                            Incoming::Pong => Ok(()),
                            Incoming::Close(code) => {
                                // Echo the client's code (the reader refuses
                                // codes that may not be sent, 7.4).
                                self.out.close(code.unwrap_or(1000), "");
                                Err(End::Closed)
                            }
                        };
                        if let Err(end) = handled {
                            return Poll::Ready(end);
                        }
                    }
                    Poll::Ready(Err(end)) => return Poll::Ready(end),
                    Poll::Pending => {}
                }
            }
            if let Poll::Ready(Err(_)) = self.out.poll_write(Pin::new(&mut self.stream), cx) {
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

    /// The next message: from what was read already, else from the socket.
    /// `Err`: the socket ended, failed, or broke the protocol.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, End>> {
        // Not zeroed: tokio's `ReadBuf` tracks what the read filled.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            match self.reader.next_message() {
                Ok(Some(incoming)) => return Poll::Ready(Ok(incoming)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(End::Protocol(e.close_code()))),
            }
            let mut buf = ReadBuf::uninit(&mut chunk);
            match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Poll::Ready(Err(End::Closed));
                }
                Poll::Ready(Ok(())) => self.reader.extend(buf.filled()),
                Poll::Ready(Err(_)) => return Poll::Ready(Err(End::Closed)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Reads the ring exactly while the handler has subscriptions. The
    /// receiver is paused, not dropped, when the last one goes, so that
    /// subscribing and unsubscribing in a loop leaves no wakers behind.
    fn follow_subscriptions(&mut self) {
        match (self.handler.subscribed(), &mut self.events) {
            (true, None) => self.events = Some(Ring::subscribe(&self.ring)),
            (true, Some(events)) => events.resume(),
            (false, Some(events)) => events.pause(),
            (false, None) => {}
        }
    }
}
