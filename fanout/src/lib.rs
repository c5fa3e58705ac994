//! WebSocket subscription fan-out, shared by the node's RPC and the proxy:
//! one new event to ten thousand subscribers without a per-subscriber copy.
//!
//! The shape, from the event to the socket:
//!
//! - [`Ring`]: the publisher appends each event (rendered once, for
//!   everybody) and wakes every waiting connection once;
//! - [`Handler`]: what the node or the proxy does per connection: answer
//!   requests, and turn an event into this connection's notifications;
//! - [`Outbox`]: a bounded queue of frames, each a header plus shared
//!   [`bytes::Bytes`] (the subscription's prefix, the event's tail),
//!   written with vectored writes; a client that does not read fills it
//!   and is disconnected, and never slows the others;
//! - [`notification`]: an `eth_subscription` notification's two pieces;
//! - [`frame`]: RFC 6455 frames (what the server writes, a [`frame::Reader`]
//!   for what clients send) and [`handshake`]: the HTTP upgrade;
//! - [`serve`]: the task that drives one connection;
//! - [`listener`]: the TCP listener, with a deep accept queue.
//!
//! ```no_run
//! use luxtensor_fanout::{Full, Handler, Limits, Outbox, Ring, End};
//! use bytes::Bytes;
//! use std::task::{Context, Poll};
//!
//! /// Every connection gets every event, as is.
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Event = Bytes;
//!     fn message(&mut self, message: Bytes, out: &mut Outbox) -> Result<(), End> {
//!         Ok(out.text(message)?)
//!     }
//!     fn poll_answers(&mut self, _: &mut Context<'_>, _: &mut Outbox) -> Poll<Result<(), End>> {
//!         Poll::Pending
//!     }
//!     fn subscribed(&self) -> bool {
//!         true
//!     }
//!     fn render(&mut self, event: &Bytes, out: &mut Outbox) -> Result<(), Full> {
//!         out.text_parts(Bytes::from_static(b"event: "), event.clone())
//!     }
//! }
//!
//! # async fn run(stream: tokio::net::TcpStream) {
//! let ring = Ring::new(64);
//! let limits = Limits { max_message: 1 << 20, send_queue: 256 };
//! let end = luxtensor_fanout::serve(stream, ring.clone(), &mut Echo, limits).await;
//! # }
//! ```

pub mod connection;
pub mod frame;
pub mod handshake;
pub mod listener;
pub mod notification;
pub mod outbox;
pub mod ring;

pub use connection::{End, Handler, Limits, SLOW, serve};
pub use listener::listen;
pub use outbox::{Full, Outbox};
pub use ring::{Lagged, Ring, RingReceiver};
