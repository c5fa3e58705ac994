//! The connection driver over an in-memory socket: requests, events,
//! pings, close, a client that does not read, and an oversized message.

use bytes::Bytes;
use luxtensor_fanout::frame::{Header, PONG, TEXT};
use luxtensor_fanout::{End, Full, Handler, Limits, Outbox, Ring, serve};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Answers `sub` by subscribing, anything else by echoing it; every event
/// becomes `prefix + event`.
#[derive(Default)]
struct Echo {
    subscribed: bool,
}

impl Handler for Echo {
    type Event = Bytes;

    fn message(&mut self, message: Bytes, out: &mut Outbox) -> Result<(), End> {
        if &message[..] == b"sub" {
            self.subscribed = true;
        }
        Ok(out.text(message)?)
    }

    fn poll_answers(&mut self, _: &mut Context<'_>, _: &mut Outbox) -> Poll<Result<(), End>> {
        Poll::Pending
    }

    fn subscribed(&self) -> bool {
        self.subscribed
    }

    fn render(&mut self, event: &Bytes, out: &mut Outbox) -> Result<(), Full> {
        out.text_parts(Bytes::from_static(b"event "), event.clone())
    }
}

fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1, 2, 3, 4];
    let mut frame = vec![first, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    [Header::new(opcode, payload.len()).as_bytes(), payload].concat()
}

/// Lets the connection's task run until it waits again (the test runtime
/// is single-threaded: a yield runs every task that is ready first).
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

async fn expect(client: &mut DuplexStream, want: &[u8]) {
    let mut got = vec![0; want.len()];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

fn limits(send_queue: usize) -> Limits {
    Limits {
        max_message: 64,
        send_queue,
    }
}

#[tokio::test]
async fn requests_events_pings_and_close() {
    let (mut client, server) = tokio::io::duplex(4096);
    let ring: Arc<Ring<Bytes>> = Ring::new(8);
    let task = tokio::spawn({
        let ring = ring.clone();
        async move { serve(server, ring, &mut Echo::default(), limits(8)).await }
    });
    client
        .write_all(&client_frame(0x81, b"hello"))
        .await
        .unwrap();
    expect(&mut client, &server_frame(TEXT, b"hello")).await;
    assert_eq!(ring.receiver_count(), 0, "not subscribed yet");
    client.write_all(&client_frame(0x81, b"sub")).await.unwrap();
    expect(&mut client, &server_frame(TEXT, b"sub")).await;
    assert_eq!(ring.receiver_count(), 1);
    // Each message that finds the connection idle wakes it again.
    for text in [&b"again"[..], b"and again"] {
        settle().await;
        client.write_all(&client_frame(0x81, text)).await.unwrap();
        expect(&mut client, &server_frame(TEXT, text)).await;
    }
    ring.publish([Bytes::from_static(b"1"), Bytes::from_static(b"2")]);
    expect(&mut client, &server_frame(TEXT, b"event 1")).await;
    expect(&mut client, &server_frame(TEXT, b"event 2")).await;
    // A ping split across two writes.
    let ping = client_frame(0x89, b"p");
    client.write_all(&ping[..3]).await.unwrap();
    client.flush().await.unwrap();
    settle().await;
    client.write_all(&ping[3..]).await.unwrap();
    expect(&mut client, &server_frame(PONG, b"p")).await;
    client
        .write_all(&client_frame(0x88, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    expect(&mut client, &server_frame(0x8, &1000u16.to_be_bytes())).await;
    assert_eq!(task.await.unwrap(), End::Closed);
    assert_eq!(ring.receiver_count(), 0);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_as_slow() {
    // The socket holds 64 bytes; the queue 4 frames.
    let (mut client, server) = tokio::io::duplex(64);
    let ring: Arc<Ring<Bytes>> = Ring::new(1024);
    let task = tokio::spawn({
        let ring = ring.clone();
        async move { serve(server, ring, &mut Echo::default(), limits(4)).await }
    });
    client.write_all(&client_frame(0x81, b"sub")).await.unwrap();
    expect(&mut client, &server_frame(TEXT, b"sub")).await;
    for n in 0..100 {
        ring.publish([Bytes::from(format!("{n:040}"))]);
        tokio::task::yield_now().await;
    }
    let end = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the slow client is dropped without waiting for it")
        .unwrap();
    assert_eq!(end, End::Slow);
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let (mut client, server) = tokio::io::duplex(4096);
    let ring: Arc<Ring<Bytes>> = Ring::new(8);
    let task =
        tokio::spawn(async move { serve(server, ring, &mut Echo::default(), limits(8)).await });
    client
        .write_all(&client_frame(0x81, &[b'x'; 65]))
        .await
        .unwrap();
    expect(&mut client, &server_frame(0x8, &1009u16.to_be_bytes())).await;
    assert_eq!(task.await.unwrap(), End::Protocol(1009));
}
