//! RFC 6455 framing, server side: the headers of the unmasked frames the
//! server writes ([`Header`]), and a [`Reader`] that turns the masked
//! frames a client sends into whole messages.
//!
//! The reader is total: any byte sequence gives messages, "need more
//! bytes", or a [`ProtocolError`] that names the rule broken (and the
//! close code to answer with). It never buffers more than one frame header
//! plus `max_message` bytes beyond what the caller handed it.

use bytes::Bytes;

/// Continuation frame.
pub const CONTINUATION: u8 = 0x0;
/// Text frame (UTF-8).
pub const TEXT: u8 = 0x1;
/// Binary frame.
pub const BINARY: u8 = 0x2;
/// Close frame.
pub const CLOSE: u8 = 0x8;
/// Ping frame.
pub const PING: u8 = 0x9;
/// Pong frame.
pub const PONG: u8 = 0xA;

/// The header of one unmasked frame with FIN set, as the server sends it:
/// 2, 4 or 10 bytes, kept inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// The header of a final frame of `opcode` carrying `payload_len` bytes.
    pub fn new(opcode: u8, payload_len: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | (opcode & 0x0f);
        let len = match payload_len {
            0..=125 => {
                bytes[1] = payload_len as u8;
                2
            }
            126..=0xffff => {
                bytes[1] = 126;
                bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
                4
            }
            _ => {
                bytes[1] = 127;
                bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
                10
            }
        };
        Self { bytes, len }
    }

    /// The header's bytes on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// A whole message (or control frame) from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message (checked to be UTF-8), its fragments joined.
    Text(Bytes),
    /// A binary message, its fragments joined.
    Binary(Bytes),
    /// A ping: answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong (nothing to do).
    Pong,
    /// The client is closing, with its status code if it gave one.
    Close(Option<u16>),
}

/// Client input that breaks RFC 6455 or the server's size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A client frame must be masked (section 5.1).
    #[error("a client frame was not masked")]
    Unmasked,
    /// Reserved bits set without a negotiated extension (5.2).
    #[error("reserved bits set without an extension")]
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u8),
    /// A control frame fragmented or longer than 125 bytes, or a close
    /// frame with a 1-byte payload or a code that may not be sent (5.5, 7.4).
    #[error("malformed control frame")]
    BadControlFrame,
    /// A continuation frame with no message to continue (5.4).
    #[error("a continuation frame with no message to continue")]
    UnexpectedContinuation,
    /// A new message started before the fragmented one ended (5.4).
    #[error("a new message before the fragmented one ended")]
    ExpectedContinuation,
    /// The message is longer than the server accepts.
    #[error("message too big")]
    TooBig,
    /// A text message (or a close reason) that is not UTF-8 (8.1).
    #[error("text that is not UTF-8")]
    InvalidUtf8,
}

/// Whether a client may send `code` in a close frame (RFC 6455 section
/// 7.4: the defined codes that may go on the wire, and 3000–4999).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl ProtocolError {
    /// The close code to answer with (section 7.4.1): 1009 for a message
    /// too big, 1007 for bad UTF-8, 1002 for the rest.
    pub fn close_code(self) -> u16 {
        match self {
            Self::TooBig => 1009,
            Self::InvalidUtf8 => 1007,
            _ => 1002,
        }
    }
}

/// Reassembles client messages from the bytes read off the socket.
#[derive(Debug)]
pub struct Reader {
    /// Bytes read and not yet parsed (at most one incomplete frame).
    buf: Vec<u8>,
    /// A fragmented message so far: its opcode and payload.
    partial: Option<(u8, Vec<u8>)>,
    max_message: usize,
}

impl Reader {
    /// A reader that refuses messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            buf: Vec::new(),
            partial: None,
            max_message,
        }
    }

    /// Hands the reader bytes read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, ProtocolError> {
        loop {
            let Some((fin, opcode, payload)) = self.frame()? else {
                return Ok(None);
            };
            let (opcode, payload) = match opcode {
                CLOSE => {
                    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
                        return match payload.len() {
                            0 => Ok(Some(Incoming::Close(None))),
                            _ => Err(ProtocolError::BadControlFrame),
                        };
                    };
                    let code = u16::from_be_bytes(*code);
                    if !sendable_close_code(code) {
                        return Err(ProtocolError::BadControlFrame);
                    }
                    if std::str::from_utf8(reason).is_err() {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                    return Ok(Some(Incoming::Close(Some(code))));
                }
                PING => return Ok(Some(Incoming::Ping(payload.into()))),
                PONG => return Ok(Some(Incoming::Pong)),
                CONTINUATION => {
                    let Some((first, mut so_far)) = self.partial.take() else {
                        return Err(ProtocolError::UnexpectedContinuation);
                    };
                    so_far.extend_from_slice(&payload);
                    if !fin {
                        self.partial = Some((first, so_far));
                        continue;
                    }
                    (first, so_far)
                }
                TEXT | BINARY => {
                    if self.partial.is_some() {
                        return Err(ProtocolError::ExpectedContinuation);
                    }
                    if !fin {
                        self.partial = Some((opcode, payload));
                        continue;
                    }
                    (opcode, payload)
                }
                other => return Err(ProtocolError::UnknownOpcode(other)),
            };
            if opcode == TEXT {
                if std::str::from_utf8(&payload).is_err() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                return Ok(Some(Incoming::Text(payload.into())));
            }
            return Ok(Some(Incoming::Binary(payload.into())));
        }
    }

    /// The next whole frame, unmasked: `(fin, opcode, payload)`.
    fn frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, ProtocolError> {
        let buf = &self.buf;
        let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let opcode = b0 & 0x0f;
        // Refused from the header, before any payload is buffered.
        if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
            return Err(ProtocolError::UnknownOpcode(opcode));
        }
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::Unmasked);
        }
        let (extra, len) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(b) => (2, u64::from(u16::from_be_bytes([b[0], b[1]]))),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => (8, u64::from_be_bytes(b.try_into().expect("8 bytes"))),
                None => return Ok(None),
            },
            short => (0, u64::from(short)),
        };
        if opcode >= CLOSE && (!fin || len > 125) {
            return Err(ProtocolError::BadControlFrame);
        }
        // Refused before its payload is buffered. A control frame between
        // fragments does not add to the message.
        let so_far = match opcode {
            CLOSE.. => 0,
            _ => self.partial.as_ref().map_or(0, |(_, p)| p.len()),
        };
        if len > (self.max_message.saturating_sub(so_far)) as u64 {
            return Err(ProtocolError::TooBig);
        }
        let len = len as usize;
        let start = 2 + extra + 4;
        let Some(masked) = buf.get(start..start + len) else {
            return Ok(None);
        };
        let mask = [
            buf[start - 4],
            buf[start - 3],
            buf[start - 2],
            buf[start - 1],
        ];
        let payload = masked
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        self.buf.drain(..start + len);
        Ok(Some((fin, opcode, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame with a non-trivial mask.
    fn client(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![first];
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
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        frame
    }

    fn read_all(max: usize, bytes: &[u8]) -> Result<Vec<Incoming>, ProtocolError> {
        let mut reader = Reader::new(max);
        reader.extend(bytes);
        let mut out = Vec::new();
        while let Some(m) = reader.next_message()? {
            out.push(m);
        }
        Ok(out)
    }

    #[test]
    fn server_headers_use_the_shortest_length_encoding() {
        assert_eq!(Header::new(TEXT, 0).as_bytes(), [0x81, 0]);
        assert_eq!(Header::new(TEXT, 125).as_bytes(), [0x81, 125]);
        assert_eq!(Header::new(TEXT, 126).as_bytes(), [0x81, 126, 0, 126]);
        assert_eq!(
            Header::new(TEXT, 65_535).as_bytes(),
            [0x81, 126, 0xff, 0xff]
        );
        assert_eq!(
            Header::new(TEXT, 65_536).as_bytes(),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        assert_eq!(Header::new(PONG, 3).as_bytes(), [0x8a, 3]);
    }

    #[test]
    fn masked_frames_of_every_length_class_are_unmasked() {
        for len in [0, 1, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let got = read_all(1 << 20, &client(0x81, &payload)).unwrap();
            assert_eq!(got, [Incoming::Text(payload.into())], "length {len}");
        }
    }

    #[test]
    fn a_frame_split_across_reads_is_returned_once_whole() {
        let frame = client(0x81, br#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#);
        let mut reader = Reader::new(1024);
        for byte in &frame[..frame.len() - 1] {
            reader.extend(&[*byte]);
            assert_eq!(reader.next_message(), Ok(None));
        }
        reader.extend(&frame[frame.len() - 1..]);
        assert!(matches!(reader.next_message(), Ok(Some(Incoming::Text(_)))));
        assert_eq!(reader.next_message(), Ok(None));
    }

    #[test]
    fn fragments_are_joined_and_control_frames_may_come_between() {
        let mut bytes = client(0x01, b"hel");
        bytes.extend(client(0x89, b"p"));
        bytes.extend(client(0x00, b"lo "));
        bytes.extend(client(0x80, b"world"));
        bytes.extend(client(0x8a, b""));
        bytes.extend(client(0x88, &1000u16.to_be_bytes()));
        assert_eq!(
            read_all(64, &bytes).unwrap(),
            [
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text(Bytes::from_static(b"hello world")),
                Incoming::Pong,
                Incoming::Close(Some(1000)),
            ]
        );
        assert_eq!(
            read_all(64, &client(0x82, &[0xff])).unwrap(),
            [Incoming::Binary(Bytes::from_static(&[0xff]))]
        );
        assert_eq!(
            read_all(64, &client(0x88, b"")).unwrap(),
            [Incoming::Close(None)]
        );
    }

    #[test]
    fn oversized_messages_are_refused_before_they_are_buffered() {
        assert_eq!(read_all(10, &client(0x81, &[b'x'; 10])).unwrap().len(), 1);
        // Only the header has arrived: refused already.
        let frame = client(0x81, &[b'x'; 11]);
        assert_eq!(read_all(10, &frame[..6]), Err(ProtocolError::TooBig));
        // Fragments that add up to too much.
        let mut bytes = client(0x01, &[b'x'; 6]);
        bytes.extend(client(0x80, &[b'x'; 6]));
        assert_eq!(read_all(10, &bytes), Err(ProtocolError::TooBig));
        // A 64-bit length that does not fit anything.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(read_all(10, &huge), Err(ProtocolError::TooBig));
        assert_eq!(ProtocolError::TooBig.close_code(), 1009);
    }

    #[test]
    fn protocol_violations_are_errors_not_panics() {
        let unmasked = [0x81, 1, b'x'];
        assert_eq!(read_all(64, &unmasked), Err(ProtocolError::Unmasked));
        assert_eq!(
            read_all(64, &client(0xc1, b"x")),
            Err(ProtocolError::ReservedBits)
        );
        assert_eq!(
            read_all(64, &client(0x83, b"x")),
            Err(ProtocolError::UnknownOpcode(3))
        );
        assert_eq!(
            read_all(64, &client(0x09, b"x")),
            Err(ProtocolError::BadControlFrame),
            "a fragmented ping"
        );
        assert_eq!(
            read_all(200, &client(0x89, &[0; 126])),
            Err(ProtocolError::BadControlFrame)
        );
        assert_eq!(
            read_all(64, &client(0x88, &[3])),
            Err(ProtocolError::BadControlFrame)
        );
        assert_eq!(
            read_all(64, &client(0x80, b"x")),
            Err(ProtocolError::UnexpectedContinuation)
        );
        let mut interleaved = client(0x01, b"a");
        interleaved.extend(client(0x81, b"b"));
        assert_eq!(
            read_all(64, &interleaved),
            Err(ProtocolError::ExpectedContinuation)
        );
        assert_eq!(
            read_all(64, &client(0x81, &[0xc3, 0x28])),
            Err(ProtocolError::InvalidUtf8)
        );
        // Refused from the header alone: an unknown opcode with a huge length.
        let mut unknown = vec![0x83, 0x80 | 127];
        unknown.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(read_all(64, &unknown), Err(ProtocolError::UnknownOpcode(3)));
        // Close codes that may not be sent, and a reason that is not UTF-8.
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert_eq!(
                read_all(64, &client(0x88, &code.to_be_bytes())),
                Err(ProtocolError::BadControlFrame),
                "close code {code}"
            );
        }
        assert_eq!(
            read_all(64, &client(0x88, &[0x03, 0xe8, 0xff])),
            Err(ProtocolError::InvalidUtf8)
        );
        assert_eq!(
            read_all(64, &client(0x88, &[0x0b, 0xb8, b'o', b'k'])).unwrap(),
            [Incoming::Close(Some(3000))]
        );
        // A full-size ping inside a message that is near the limit.
        let mut near = client(0x01, &[b'x'; 120]);
        near.extend(client(0x89, &[1; 125]));
        near.extend(client(0x80, &[b'x'; 4]));
        assert_eq!(read_all(130, &near).unwrap().len(), 2);
        // Every prefix of every byte: never a panic.
        for first in 0..=255u8 {
            for second in [0u8, 1, 125, 126, 127, 0x80, 0xfe, 0xff] {
                let _ = read_all(64, &[first, second, 0xff, 0xff, 1, 2, 3, 4, 5]);
            }
        }
    }
}
