//! Many WebSocket `newHeads` subscribers on one thread: the load generator
//! of the fan-out benchmarks (`luxtensor-bench rpc-clients`), written for
//! the least CPU per delivery, since it shares the machine's cores with the
//! server it measures (as `wrk` does for HTTP).
//!
//! Each subscriber is a plain TCP socket that speaks just enough of RFC 6455:
//! the upgrade request, one masked text frame (`eth_subscribe`), and then
//! unmasked server frames parsed in place. One `epoll` (mio) loop reads
//! every socket; a delivery costs one `read` and a byte search for the
//! block number. Pings are answered, so a server that pings keeps them.

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How many sockets are set up at once (their handshakes are pipelined).
const SETUP_BATCH: usize = 256;
/// How long one setup step may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// One received notification: the block number it carries (if found) and
/// when its frame was read, in nanoseconds on [`crate::bench::now_ns`]'s clock.
pub type Delivery = (Option<u64>, u128);

/// `n` subscribed sockets, ready to receive.
pub struct Subscribers {
    sockets: Vec<Subscriber>,
    poll: Poll,
}

struct Subscriber {
    stream: TcpStream,
    /// Bytes of a frame not yet complete.
    pending: Vec<u8>,
    received: usize,
}

impl Subscribers {
    /// Opens `n` connections to `ws` and subscribes each to `subscription`
    /// (`"newHeads"`, `"newPendingTransactions"`, ...); returns once every
    /// one has its subscription id.
    pub fn subscribe(ws: SocketAddr, n: usize, subscription: &str) -> io::Result<Self> {
        let poll = Poll::new()?;
        let request = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["{subscription}"]}}"#
        );
        let frame = masked_text_frame(request.as_bytes());
        let upgrade = format!(
            "GET / HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut sockets = Vec::with_capacity(n);
        let mut done = 0;
        while done < n {
            let batch = (n - done).min(SETUP_BATCH);
            let mut streams = Vec::with_capacity(batch);
            for _ in 0..batch {
                let stream = std::net::TcpStream::connect(ws)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(SETUP_TIMEOUT))?;
                streams.push(stream);
            }
            for stream in &mut streams {
                stream.write_all(upgrade.as_bytes())?;
            }
            for stream in &mut streams {
                let head = read_until(stream, |b| find(b, b"\r\n\r\n").map(|i| i + 4))?;
                if !head.starts_with(b"HTTP/1.1 101") {
                    return Err(io::Error::other(format!(
                        "upgrade refused: {}",
                        String::from_utf8_lossy(&head)
                    )));
                }
            }
            for stream in &mut streams {
                stream.write_all(&frame)?;
            }
            for stream in streams {
                let mut stream = stream;
                let reply = read_until(&mut stream, |b| frame_len(b).map(|(h, l)| h + l))?;
                if find(&reply, b"\"result\"").is_none() {
                    return Err(io::Error::other(format!(
                        "subscription refused: {}",
                        String::from_utf8_lossy(&reply)
                    )));
                }
                stream.set_nonblocking(true)?;
                let mut stream = TcpStream::from_std(stream);
                poll.registry()
                    .register(&mut stream, Token(sockets.len()), Interest::READABLE)?;
                sockets.push(Subscriber {
                    stream,
                    pending: Vec::new(),
                    received: 0,
                });
            }
            done += batch;
        }
        Ok(Self { sockets, poll })
    }

    /// Reads until every subscriber holds `events` notifications or
    /// `deadline` passes; every notification read, in order of arrival.
    pub fn receive(mut self, events: usize, deadline: Duration) -> io::Result<Vec<Delivery>> {
        let until = Instant::now() + deadline;
        let mut deliveries = Vec::with_capacity(self.sockets.len() * events);
        let mut complete = 0;
        let mut poll_events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; 64 * 1024];
        while complete < self.sockets.len() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.poll.poll(&mut poll_events, Some(left))?;
            for event in &poll_events {
                let subscriber = &mut self.sockets[event.token().0];
                let before = subscriber.received;
                subscriber.read_frames(&mut scratch, &mut deliveries)?;
                if before < events && subscriber.received >= events {
                    complete += 1;
                }
            }
        }
        // The sockets close here, after every subscriber has its heads.
        Ok(deliveries)
    }
}

impl Subscriber {
    /// Reads what the socket has and records the text frames it completes.
    fn read_frames(&mut self, scratch: &mut [u8], out: &mut Vec<Delivery>) -> io::Result<()> {
        loop {
            let read = match self.stream.read(scratch) {
                Ok(0) => return Ok(()),
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let at = crate::bench::now_ns();
            let (mut pongs, before) = (Vec::new(), out.len());
            if self.pending.is_empty() {
                // The usual case: whole frames, parsed where they were read.
                let used = parse_frames(&scratch[..read], at, out, &mut pongs);
                self.pending.extend_from_slice(&scratch[used..read]);
            } else {
                self.pending.extend_from_slice(&scratch[..read]);
                let used = parse_frames(&self.pending, at, out, &mut pongs);
                self.pending.drain(..used);
            }
            self.received += out.len() - before;
            for pong in pongs {
                self.stream.write_all(&pong)?;
            }
            // A short read emptied the socket: the next segment raises a new
            // edge, so asking again would only cost an `EAGAIN` syscall.
            if read < scratch.len() {
                return Ok(());
            }
        }
    }
}

/// Records the text frames at the start of `data` as delivered `at`, and
/// queues a pong for each ping; returns how many bytes whole frames took.
fn parse_frames(data: &[u8], at: u128, out: &mut Vec<Delivery>, pongs: &mut Vec<Vec<u8>>) -> usize {
    let mut offset = 0;
    while let Some((header, len)) = frame_len(&data[offset..]) {
        let payload = &data[offset + header..offset + header + len];
        match data[offset] & 0x0f {
            0x1 => out.push((block_number(payload), at)),
            0x9 => pongs.push(masked_frame(0xA, payload)),
            _ => {}
        }
        offset += header + len;
    }
    offset
}

/// The header length and payload length of the frame `bytes` starts with,
/// if all of it is there.
fn frame_len(bytes: &[u8]) -> Option<(usize, usize)> {
    let short = (*bytes.get(1)? & 0x7f) as usize;
    let (header, len) = match short {
        126 => (
            4,
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
        ),
        len => (2, len),
    };
    (bytes.len() >= header + len).then_some((header, len))
}

/// A client text frame (clients must mask; the zero mask leaves the bytes as they are).
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    masked_frame(0x1, payload)
}

fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// Reads from a blocking stream until `complete` says how long the message is.
fn read_until(
    stream: &mut std::net::TcpStream,
    complete: impl Fn(&[u8]) -> Option<usize>,
) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(len) = complete(&bytes) {
            if len != bytes.len() {
                return Err(io::Error::other("the server sent more than one message"));
            }
            return Ok(bytes);
        }
        // One byte at a time would be slow; the server sends nothing unasked,
        // so a read never takes bytes of the next message.
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&chunk[..read]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The block number of a `newHeads` notification, found by a byte search
/// for the header's `"number":"0x..."` (no JSON parsing).
pub fn block_number(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = br#""number":"0x"#;
    let digits = &frame[find(frame, KEY)? + KEY.len()..];
    let end = digits.iter().position(|&b| b == b'"')?;
    u64::from_str_radix(std::str::from_utf8(&digits[..end]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_lengths_of_each_size_class() {
        assert_eq!(frame_len(&[0x81, 3, b'a', b'b', b'c']), Some((2, 3)));
        assert_eq!(frame_len(&[0x81, 3, b'a']), None);
        let mut medium = vec![0x81, 126, 1, 0];
        medium.resize(4 + 256, b'x');
        assert_eq!(frame_len(&medium), Some((4, 256)));
        assert_eq!(frame_len(&medium[..100]), None);
        assert_eq!(frame_len(&[0x81]), None);
    }

    #[test]
    fn masked_frames_round_trip_through_the_length_parser() {
        for len in [0, 125, 126, 70_000] {
            let frame = masked_text_frame(&vec![b'a'; len]);
            // The client's frames carry a 4-byte mask after the length.
            let (header, parsed) = frame_len(&frame).map(|(h, l)| (h + 4, l)).unwrap();
            assert_eq!(parsed, len);
            assert_eq!(frame.len(), header + len);
        }
    }

    #[test]
    fn whole_frames_are_parsed_and_a_partial_one_is_left() {
        let head = |n: u8| {
            let text = format!(r#"{{"number":"0x{n:x}"}}"#);
            let mut frame = vec![0x81, text.len() as u8];
            frame.extend_from_slice(text.as_bytes());
            frame
        };
        let mut data = [head(1), vec![0x89, 1, b'p'], head(2)].concat();
        let whole = data.len();
        data.extend_from_slice(&head(3)[..5]);
        let (mut out, mut pongs) = (Vec::new(), Vec::new());
        assert_eq!(parse_frames(&data, 7, &mut out, &mut pongs), whole);
        assert_eq!(out, vec![(Some(1), 7), (Some(2), 7)]);
        assert_eq!(pongs, vec![masked_frame(0xA, b"p")]);
    }

    #[test]
    fn block_numbers_are_found_by_byte_search() {
        let frame = br#"{"params":{"result":{"hash":"0x1","number":"0x1f"}}}"#;
        assert_eq!(block_number(frame), Some(31));
        assert_eq!(block_number(b"{}"), None);
    }
}
