//! One upstream: a WebSocket connection carrying the `newHeads`
//! subscription and the client's requests, reconnected with backoff. It
//! pairs each `newHeads` header with the next one's `parent_qc` to make
//! certified headers, asks for a certified header when the pairing has a
//! gap, and hands everything to the follow loop over a bounded channel.

use super::wire::{self, Envelope};
use super::{FollowConfig, ToConn, ToMain};
use crate::client::upstream::UpstreamId;
use crate::header::{CertifiedHeader, SignedHeader};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// What a request in flight was for.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Subscribe,
    Updates { from: u64 },
    Certified,
    Set { epoch: u64 },
}

/// Why a connection ended.
#[derive(Debug)]
struct Down(String);

impl<E: std::fmt::Display> From<E> for Down {
    fn from(e: E) -> Self {
        Down(e.to_string())
    }
}

/// Runs one upstream until the follow loop drops its command channel.
pub(super) async fn run(
    id: UpstreamId,
    url: String,
    config: FollowConfig,
    to_main: mpsc::Sender<ToMain>,
    mut commands: mpsc::Receiver<ToConn>,
) {
    let mut backoff = config.backoff_initial;
    loop {
        let started = Instant::now();
        let reason = match session(id, &url, &config, &to_main, &mut commands).await {
            Ok(()) => return, // the follow loop is gone
            Err(Down(reason)) => reason,
        };
        if to_main.send(ToMain::Down { id, reason }).await.is_err() {
            return;
        }
        if started.elapsed() > config.backoff_max * 2 {
            backoff = config.backoff_initial;
        }
        // Wait out the backoff, still answering commands (requests fail fast).
        let deadline = Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                command = commands.recv() => match command {
                    None => return,
                    Some(ToConn::FetchUpdates { from, .. }) => {
                        let _ = to_main.send(ToMain::RequestFailed { id, from }).await;
                    }
                    Some(_) => {}
                },
            }
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

async fn session(
    id: UpstreamId,
    url: &str,
    config: &FollowConfig,
    to_main: &mpsc::Sender<ToMain>,
    commands: &mut mpsc::Receiver<ToConn>,
) -> Result<(), Down> {
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.max_message_bytes))
        .max_frame_size(Some(config.max_message_bytes))
        .read_buffer_size(16 << 10)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20);
    let (mut ws, _) = timeout(
        config.connect_timeout,
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config), true),
    )
    .await
    .map_err(|_| Down(format!("no connection within {:?}", config.connect_timeout)))??;

    let mut next_id: u64 = 1;
    let mut pending: Vec<(u64, Pending, Instant)> = Vec::new();
    let mut last: Option<SignedHeader> = None;
    let mut last_message = Instant::now();
    let request = |next_id: &mut u64,
                   pending: &mut Vec<(u64, Pending, Instant)>,
                   kind: Pending,
                   method: &str,
                   params: serde_json::Value| {
        let rid = *next_id;
        *next_id += 1;
        pending.push((rid, kind, Instant::now() + config.request_timeout));
        serde_json::json!({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            .to_string()
    };
    let text = request(
        &mut next_id,
        &mut pending,
        Pending::Subscribe,
        "eth_subscribe",
        serde_json::json!(["newHeads"]),
    );
    send(&mut ws, text).await?;
    if to_main.send(ToMain::Up { id }).await.is_err() {
        return Ok(());
    }
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            message = ws.next() => {
                let message = match message {
                    None => return Err(Down("the upstream closed the connection".into())),
                    Some(Err(e)) => return Err(Down(format!("WebSocket error: {e}"))),
                    Some(Ok(m)) => m,
                };
                last_message = Instant::now();
                let text = match message {
                    Message::Text(t) => t,
                    Message::Binary(_) => {
                        report_bad(to_main, id, "binary message").await;
                        continue;
                    }
                    Message::Close(_) => return Err(Down("the upstream closed the connection".into())),
                    _ => continue,
                };
                let _ = to_main.send(ToMain::WireBytes { bytes: text.len() }).await;
                let envelope: Envelope<'_> = match serde_json::from_str(text.as_str()) {
                    Ok(e) => e,
                    Err(e) => {
                        report_bad(to_main, id, &format!("not JSON-RPC: {e}")).await;
                        continue;
                    }
                };
                if let Some(params) = envelope.params.filter(|_| envelope.method.as_deref() == Some("eth_subscription")) {
                    match wire::parse_new_head(params.result) {
                        Ok(header) => {
                            // The header certifies its parent with `parent_qc`.
                            let mut certified = None;
                            match last.take() {
                                Some(parent) if parent.hash() == header.parent_hash
                                    && header.parent_qc.block_hash == header.parent_hash => {
                                    certified = Some(CertifiedHeader { header: parent, qc: header.parent_qc.clone() });
                                }
                                _ if header.number > 1 => {
                                    let hash = header.parent_hash;
                                    let text = request(&mut next_id, &mut pending, Pending::Certified,
                                        "lux_getCertifiedHeader", serde_json::json!([hash]));
                                    send(&mut ws, text).await?;
                                }
                                _ => {}
                            }
                            last = Some(header);
                            if let Some(c) = certified
                                && to_main.send(ToMain::Head { id, head: Box::new(c) }).await.is_err() {
                                return Ok(());
                            }
                        }
                        Err(rule) => {
                            if to_main.send(ToMain::Bad { id, detail: rule.to_string() }).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                    continue;
                }
                let Some(rid) = envelope.id else { continue };
                let Some(position) = pending.iter().position(|p| p.0 == rid) else { continue };
                let (_, kind, _) = pending.swap_remove(position);
                if let Some(error) = envelope.error {
                    let reason = format!("error from the upstream: {}", error.get());
                    match kind {
                        Pending::Subscribe => return Err(Down(format!("newHeads subscription refused: {}", error.get()))),
                        Pending::Updates { from } => {
                            let _ = to_main.send(ToMain::RequestFailed { id, from }).await;
                        }
                        Pending::Set { epoch } => {
                            let _ = to_main.send(ToMain::Set { epoch, set: Err(reason) }).await;
                        }
                        Pending::Certified => {}
                    }
                    continue;
                }
                let Some(result) = envelope.result else { continue };
                let message = match kind {
                    Pending::Subscribe => continue,
                    Pending::Updates { from } => ToMain::Updates {
                        id,
                        from,
                        page: wire::parse_updates(result),
                    },
                    Pending::Certified => match wire::parse_certified(result) {
                        Ok(Some(rlp)) => ToMain::HeadBytes { id, rlp },
                        Ok(None) => continue,
                        Err(detail) => ToMain::Bad { id, detail },
                    },
                    Pending::Set { epoch } => ToMain::Set {
                        epoch,
                        set: wire::parse_set(result),
                    },
                };
                if to_main.send(message).await.is_err() {
                    return Ok(());
                }
            }
            command = commands.recv() => {
                let text = match command {
                    None => return Ok(()),
                    Some(ToConn::Reconnect(reason)) => return Err(Down(reason)),
                    Some(ToConn::FetchUpdates { from, count }) => request(&mut next_id, &mut pending,
                        Pending::Updates { from }, "lux_getEpochUpdates", serde_json::json!([from, count])),
                    Some(ToConn::FetchCertified(tag)) => request(&mut next_id, &mut pending,
                        Pending::Certified, "lux_getCertifiedHeader", serde_json::json!([tag])),
                    Some(ToConn::FetchSet(epoch)) => request(&mut next_id, &mut pending,
                        Pending::Set { epoch }, "lux_getValidatorSet", serde_json::json!([epoch])),
                };
                send(&mut ws, text).await?;
            }
            _ = check.tick() => {
                let now = Instant::now();
                if let Some((_, kind, _)) = pending.iter().find(|p| p.2 <= now) {
                    let reason = format!("no answer within {:?} to {kind:?}", config.request_timeout);
                    for (_, kind, _) in &pending {
                        if let Pending::Updates { from } = kind {
                            let _ = to_main.send(ToMain::RequestFailed { id, from: *from }).await;
                        }
                    }
                    return Err(Down(reason));
                }
                if now.duration_since(last_message) > config.silence_timeout {
                    return Err(Down(format!("silent for {:?}", config.silence_timeout)));
                }
            }
        }
    }
}

async fn report_bad(to_main: &mpsc::Sender<ToMain>, id: UpstreamId, reason: &str) {
    let detail = reason.chars().take(200).collect();
    let _ = to_main.send(ToMain::Bad { id, detail }).await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one text message, within a timeout (a peer that stops reading
/// must not block the connection forever).
async fn send(ws: &mut Ws, text: String) -> Result<(), Down> {
    match timeout(SEND_TIMEOUT, ws.send(Message::text(text))).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Down(format!("could not send within {SEND_TIMEOUT:?}"))),
    }
}

/// Longest wait to hand a message to the socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
