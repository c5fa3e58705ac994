//! A connection's bounded queue of outgoing frames, written to the socket
//! with vectored writes and no copy of the payloads.
//!
//! A frame is its header plus up to two shared [`Bytes`]: a notification
//! is the subscription's own prefix (`{"jsonrpc":"2.0",...,"subscription":
//! "0x..","result":`, built once when it subscribed) and the event's tail
//! (`<result JSON>}}`, rendered once for every subscriber). Queueing one
//! costs two reference-count increments; writing a batch of them is one
//! `writev`.

use crate::frame::{CLOSE, Header, PONG, TEXT};
use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;

/// Most slices handed to one `writev` (well under `IOV_MAX`, 1024).
const MAX_SLICES: usize = 64;

/// The client's send queue is full: it does not read fast enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// One outgoing frame.
#[derive(Debug)]
struct Frame {
    header: Header,
    parts: [Bytes; 2],
}

impl Frame {
    fn new(opcode: u8, head: Bytes, tail: Bytes) -> Self {
        Self {
            header: Header::new(opcode, head.len() + tail.len()),
            parts: [head, tail],
        }
    }

    fn len(&self) -> usize {
        self.header.as_bytes().len() + self.parts[0].len() + self.parts[1].len()
    }
}

/// Frames waiting for the socket: at most `limit` messages, then [`Full`].
#[derive(Debug)]
pub struct Outbox {
    frames: VecDeque<Frame>,
    limit: usize,
    /// Bytes of the first frame already written.
    sent: usize,
}

impl Outbox {
    /// An empty queue that holds at most `limit` (at least 1) frames.
    pub fn new(limit: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            limit: limit.max(1),
            sent: 0,
        }
    }

    /// Frames not yet completely written.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether everything has been written.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queues a text message (a JSON-RPC response).
    pub fn text(&mut self, text: impl Into<Bytes>) -> Result<(), Full> {
        self.push(Frame::new(TEXT, text.into(), Bytes::new()))
    }

    /// Queues a text message made of `head` then `tail`, neither copied
    /// (a notification: the subscription's prefix, the event's tail).
    pub fn text_parts(&mut self, head: Bytes, tail: Bytes) -> Result<(), Full> {
        self.push(Frame::new(TEXT, head, tail))
    }

    /// Queues the answer to a ping (counted like a message: a client that
    /// pings without reading is as slow as one that does not read).
    pub fn pong(&mut self, payload: Bytes) -> Result<(), Full> {
        self.push(Frame::new(PONG, payload, Bytes::new()))
    }

    /// Queues a close frame with `code` and `reason` (at most 123 bytes
    /// are kept), after everything already queued, whatever the limit.
    pub fn close(&mut self, code: u16, reason: &str) {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.frames
            .push_back(Frame::new(CLOSE, payload.into(), Bytes::new()));
    }

    fn push(&mut self, frame: Frame) -> Result<(), Full> {
        if self.frames.len() >= self.limit {
            return Err(Full);
        }
        self.frames.push_back(frame);
        Ok(())
    }

    /// Writes queued frames while the socket takes them (one vectored
    /// write per up to 64 slices), then flushes. `Pending`: the socket is
    /// full and has the waker; `Ready(Ok)`: everything is written.
    pub fn poll_write<W: AsyncWrite + ?Sized>(
        &mut self,
        mut io: Pin<&mut W>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.frames.is_empty() {
            return Poll::Ready(Ok(()));
        }
        while !self.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            let mut skip = self.sent;
            'frames: for frame in &self.frames {
                let pieces = [
                    frame.header.as_bytes(),
                    &frame.parts[0][..],
                    &frame.parts[1][..],
                ];
                for piece in pieces {
                    if piece.len() <= skip {
                        skip -= piece.len();
                        continue;
                    }
                    if count == MAX_SLICES {
                        break 'frames;
                    }
                    slices[count] = IoSlice::new(&piece[skip..]);
                    skip = 0;
                    count += 1;
                }
            }
            let written = ready!(io.as_mut().poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        io.poll_flush(cx)
    }

    /// Drops the frames `written` more bytes have completed.
    fn advance(&mut self, written: usize) {
        let mut left = self.sent + written;
        while let Some(front) = self.frames.front() {
            let len = front.len();
            if left < len {
                break;
            }
            left -= len;
            self.frames.pop_front();
        }
        self.sent = left;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// A socket that takes at most `chunk` bytes per write.
    struct Trickle {
        written: Vec<u8>,
        chunk: usize,
        writes: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.chunk);
            this.written.extend_from_slice(&buf[..n]);
            this.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.writes += 1;
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(this.chunk - n);
                this.written.extend_from_slice(&buf[..take]);
                n += take;
                if n == this.chunk {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn expected(frames: &[(u8, &[u8])]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (opcode, payload) in frames {
            bytes.extend_from_slice(Header::new(*opcode, payload.len()).as_bytes());
            bytes.extend_from_slice(payload);
        }
        bytes
    }

    #[test]
    fn frames_are_written_whole_in_order_through_partial_writes() {
        let tail = Bytes::from_static(br#"{"number":"0x1"}}}"#);
        let big = vec![b'x'; 70_000];
        for chunk in [1, 7, 1 << 20] {
            let mut out = Outbox::new(8);
            out.text_parts(Bytes::from_static(b"{\"a\":"), tail.clone())
                .unwrap();
            out.text(big.clone()).unwrap();
            out.pong(Bytes::from_static(b"p")).unwrap();
            out.close(1008, "slow");
            let mut socket = Trickle {
                written: Vec::new(),
                chunk,
                writes: 0,
            };
            let mut cx = Context::from_waker(Waker::noop());
            assert!(matches!(
                out.poll_write(Pin::new(&mut socket), &mut cx),
                Poll::Ready(Ok(()))
            ));
            assert!(out.is_empty());
            let notification = [&b"{\"a\":"[..], &tail[..]].concat();
            let want = expected(&[
                (TEXT, &notification),
                (TEXT, &big),
                (PONG, b"p"),
                (CLOSE, &[&1008u16.to_be_bytes()[..], b"slow"].concat()),
            ]);
            assert_eq!(socket.written, want, "chunk {chunk}");
            if chunk == 1 << 20 {
                assert_eq!(socket.writes, 1, "one vectored write");
            }
        }
    }

    #[test]
    fn the_queue_is_bounded_but_a_close_always_fits() {
        let mut out = Outbox::new(2);
        out.text("a").unwrap();
        out.text("b").unwrap();
        assert_eq!(out.text("c"), Err(Full));
        assert_eq!(out.pong(Bytes::new()), Err(Full));
        out.close(1000, &"é".repeat(100));
        assert_eq!(out.len(), 3);
    }
}
