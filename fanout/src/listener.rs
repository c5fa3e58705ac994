//! The TCP listener both servers accept WebSocket (and HTTP) clients on:
//! a deep accept queue, so that thousands of subscribers connecting at
//! once are not dropped.

use std::io;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Connections the kernel queues for `accept` (clamped to `somaxconn`).
/// tokio's `TcpListener::bind` asks for 128, the standard library's value:
/// a burst of new connections beyond that (thousands of WebSocket clients
/// reconnecting at once) has its SYNs dropped and retried a second later.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with a [`LISTEN_BACKLOG`]-deep accept queue.
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
