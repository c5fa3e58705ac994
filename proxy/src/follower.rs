//! The shell that drives the embedded light client and the canonical
//! window: epoch-update catch-up, certified heads from every upstream
//! (polled), one `newHeads` + `newPendingTransactions` subscription on the
//! best WebSocket upstream (moved to another upstream when it fails or
//! falls silent), gap filling, and the event stream.
//!
//! One task (the driver) owns every change of the verified state, so heads
//! are placed one at a time and in order; the feeders (pollers, the
//! subscription) only send it messages over a bounded channel.

use crate::canon::Plan;
use crate::proxy::{ChainEvent, Proxy};
use crate::transport::{WS_DEAD_AFTER, WS_PING_INTERVAL};
use crate::verify;
use alloy_primitives::Bytes;
use futures::{SinkExt, StreamExt};
use luxtensor_light::client::{Event, UpstreamId};
use luxtensor_light::{CertifiedHeader, SignedHeader};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Messages to the driver.
#[derive(Debug)]
pub enum DriverMsg {
    /// A certified head from an upstream.
    Certified(usize, Box<CertifiedHeader>),
    /// Poll every upstream now and answer when done.
    Refresh(oneshot::Sender<()>),
}

/// Bound of the driver's channel.
const DRIVER_CAPACITY: usize = 256;
/// Updates asked per `lux_getEpochUpdates` call.
const PAGE: u64 = 32;

/// Starts the driver, the pollers and the subscription. Returns when the
/// first verified head is placed (or after `wait` if it is not).
pub async fn start(proxy: Arc<Proxy>, wait: Duration) {
    let (tx, rx) = mpsc::channel(DRIVER_CAPACITY);
    let _ = proxy.driver.set(tx.clone());
    let mut events = proxy.events.subscribe();
    tokio::spawn(driver(proxy.clone(), rx));
    tokio::spawn(poller(proxy.clone(), tx.clone()));
    tokio::spawn(subscription(proxy.clone(), tx));
    let _ = tokio::time::timeout(wait, async {
        while proxy.head().is_none() {
            if events.recv().await.is_err() {
                break;
            }
        }
    })
    .await;
}

/// Polls every upstream's certified head now and waits until the driver
/// placed them (bounded by the upstream timeout).
pub async fn refresh(proxy: &Proxy) {
    let Some(driver) = proxy.driver.get() else {
        return;
    };
    let (tx, rx) = oneshot::channel();
    if driver.try_send(DriverMsg::Refresh(tx)).is_ok() {
        let _ = tokio::time::timeout(proxy.pool.timeout() * 2, rx).await;
    }
}

fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    let _ = getrandom::fill(&mut s);
    s
}

#[derive(Deserialize)]
struct RlpOnly {
    rlp: Bytes,
}

/// One upstream's certified head (`lux_getCertifiedHeader("latest")`).
async fn certified_latest(proxy: &Proxy, id: usize) -> Option<CertifiedHeader> {
    let value = proxy
        .pool
        .call_on(id, "lux_getCertifiedHeader", &json!(["latest"]))
        .await
        .ok()?;
    let parsed: Option<RlpOnly> = serde_json::from_value(value).ok()?;
    let head = match CertifiedHeader::decode(&parsed?.rlp) {
        Ok(h) => h,
        Err(e) => {
            proxy.pool.lie(id, &format!("lux_getCertifiedHeader: {e}"));
            return None;
        }
    };
    proxy
        .pool
        .with_board(|b| b.best_block(id, head.header.number));
    Some(head)
}

/// One poller per upstream, so that a stalled upstream (each of its polls
/// waits the whole timeout) never delays the others' heads.
async fn poller(proxy: Arc<Proxy>, tx: mpsc::Sender<DriverMsg>) {
    for id in 0..proxy.pool.upstreams().len() {
        tokio::spawn(poll_one(proxy.clone(), id, tx.clone()));
    }
}

async fn poll_one(proxy: Arc<Proxy>, id: usize, tx: mpsc::Sender<DriverMsg>) {
    let mut tick = tokio::time::interval(proxy.config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Some(head) = certified_latest(&proxy, id).await
            && tx
                .try_send(DriverMsg::Certified(id, Box::new(head)))
                .is_err()
            && tx.is_closed()
        {
            return;
        }
    }
}

async fn driver(proxy: Arc<Proxy>, mut rx: mpsc::Receiver<DriverMsg>) {
    for id in 0..proxy.pool.upstreams().len() {
        let _ = proxy
            .verified
            .lock()
            .expect("not poisoned")
            .light
            .add_upstream(UpstreamId(id as u32));
    }
    catch_up(&proxy).await;
    proxy.save_state();
    while let Some(msg) = rx.recv().await {
        match msg {
            DriverMsg::Certified(id, head) => {
                handle_head(&proxy, id, *head);
            }
            DriverMsg::Refresh(done) => {
                // Each upstream gets its hedge delay: a stalled one is not waited for.
                let polls = (0..proxy.pool.upstreams().len()).map(|id| {
                    let proxy = proxy.clone();
                    async move {
                        let within = proxy.pool.hedge_delay(id);
                        let head = tokio::time::timeout(within, certified_latest(&proxy, id)).await;
                        (id, head.ok().flatten())
                    }
                });
                for (id, head) in futures::future::join_all(polls).await {
                    if let Some(head) = head {
                        handle_head(&proxy, id, head);
                    }
                }
                process(&proxy).await;
                let _ = done.send(());
                continue;
            }
        }
        process(&proxy).await;
    }
}

fn handle_head(proxy: &Proxy, id: usize, head: CertifiedHeader) {
    let mut v = proxy.verified.lock().expect("not poisoned");
    v.light.handle_tick(proxy.pool.now_ms());
    let _ = v.light.handle_head(UpstreamId(id as u32), head);
}

/// Fetches and applies epoch updates until an upstream's page comes back short.
async fn catch_up(proxy: &Proxy) {
    for _ in 0..10_000 {
        let from = proxy
            .verified
            .lock()
            .expect("not poisoned")
            .light
            .next_update_epoch();
        let Ok((id, answer)) = proxy
            .pool
            .call("lux_getEpochUpdates", &json!([from, PAGE]), &[])
            .await
        else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let Ok(value) = answer else {
            return;
        };
        let Ok(list) = serde_json::from_value::<Vec<RlpOnly>>(value) else {
            proxy
                .pool
                .lie(id, "lux_getEpochUpdates: not in the node's shape");
            continue;
        };
        let count = list.len() as u64;
        let payload: usize = list.iter().map(|u| u.rlp.len()).sum();
        let mut page = Vec::with_capacity(payload + 9);
        alloy_rlp::Header {
            list: true,
            payload_length: payload,
        }
        .encode(&mut page);
        for u in &list {
            page.extend_from_slice(&u.rlp);
        }
        let outcome = proxy
            .verified
            .lock()
            .expect("not poisoned")
            .light
            .handle_update_bytes(UpstreamId(id as u32), &page, seed());
        match outcome {
            Ok(o) if o.rejected.is_none() && count < PAGE => return,
            Ok(o) if o.rejected.is_none() => {}
            _ => {
                proxy
                    .pool
                    .lie(id, "lux_getEpochUpdates: an update failed verification");
            }
        }
    }
}

/// Drains the light client's events: places new heads (filling gaps),
/// marks finality, demotes liars, fetches updates when asked.
async fn process(proxy: &Proxy) {
    let mut heads = Vec::new();
    let mut finalized = None;
    let mut need_updates = false;
    let mut save = false;
    {
        let mut v = proxy.verified.lock().expect("not poisoned");
        while let Some(event) = v.light.poll_event() {
            match event {
                Event::Head { block, .. } => {
                    if let Some(c) = v.light.verified_header(&block.hash) {
                        heads.push(c.header.clone());
                    }
                }
                Event::Finalized { block } => finalized = Some(block.number),
                Event::NeedUpdates { .. } => need_updates = true,
                Event::UpstreamProblem { upstream, problem } => {
                    if matches!(problem, luxtensor_light::client::Problem::Lying { .. }) {
                        drop(v);
                        proxy
                            .counters
                            .verification_failures
                            .fetch_add(1, Ordering::Relaxed);
                        proxy
                            .pool
                            .lie(upstream.0 as usize, &format!("light client: {problem:?}"));
                        v = proxy.verified.lock().expect("not poisoned");
                    }
                }
                Event::Equivocation { evidence } => {
                    tracing::error!(
                        slot = evidence.first.header.slot,
                        "two certified headers of one slot: the light client halted; new heads are not served until it is restarted from a checkpoint"
                    );
                }
                Event::EpochChanged { epoch, .. } => {
                    tracing::info!(epoch, "epoch changed");
                    save = true;
                }
                Event::Reorg { .. } | Event::Rejected { .. } => {}
            }
        }
    }
    if need_updates {
        catch_up(proxy).await;
        save = true;
    }
    if save {
        proxy.save_state();
    }
    for head in heads {
        place(proxy, head).await;
    }
    if let Some(number) = finalized {
        let (old, headers) = {
            let mut v = proxy.verified.lock().expect("not poisoned");
            let old = v.canon.finalized();
            v.canon.finalize(number);
            let from = old.map_or(number, |o| o + 1);
            let headers: Vec<SignedHeader> = (from..=number)
                .filter_map(|n| v.canon.by_number(n).cloned())
                .collect();
            (old, headers)
        };
        if old != Some(number) && !headers.is_empty() {
            let list = headers
                .into_iter()
                .map(|h| {
                    let t = proxy.header_text(&h);
                    (h, t)
                })
                .collect();
            proxy.emit(ChainEvent::Finalized(list));
        }
    }
}

/// Places a certified head in the canonical window, fetching and checking
/// the headers between the last one and it.
async fn place(proxy: &Proxy, head: SignedHeader) {
    let plan = proxy
        .verified
        .lock()
        .expect("not poisoned")
        .canon
        .plan(&head);
    let chain = match plan {
        Plan::Known => return,
        Plan::Direct => vec![head],
        Plan::Fetch { from } => {
            let mut chain = None;
            for _ in 0..3 {
                match proxy.raw_headers(from, head.number - 1).await {
                    Ok(mut list) => {
                        list.push(head.clone());
                        chain = Some(list);
                        break;
                    }
                    Err(e) => tracing::warn!(error = %e.message, "filling a gap of heads"),
                }
            }
            match chain {
                Some(c) => c,
                None => vec![head],
            }
        }
    };
    let result = proxy
        .verified
        .lock()
        .expect("not poisoned")
        .canon
        .connect(chain);
    match result {
        Ok(applied) => {
            if applied.restarted {
                tracing::warn!("the head stream restarted (a gap or reorg too deep to fill)");
            }
            proxy.publish(applied).await;
        }
        Err(e) => {
            proxy
                .counters
                .verification_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "headers between two verified heads did not link");
            if let Some(best) = proxy.pool.order().first() {
                proxy.pool.lie(*best, &e.to_string());
            }
        }
    }
}

/// Keeps one `newHeads` and one `newPendingTransactions` subscription on
/// the best WebSocket upstream; moves them when it fails or falls silent.
async fn subscription(proxy: Arc<Proxy>, tx: mpsc::Sender<DriverMsg>) {
    loop {
        let candidate = proxy
            .pool
            .order()
            .into_iter()
            .find(|&id| proxy.pool.upstreams()[id].url.starts_with("ws://"));
        let Some(id) = candidate else {
            // HTTP upstreams only: the pollers carry the heads.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if proxy
                .pool
                .upstreams()
                .iter()
                .all(|u| !u.url.starts_with("ws://"))
            {
                return;
            }
            continue;
        };
        let reason = session(&proxy, id, &tx).await;
        proxy.counters.upstream_subscriptions[0].store(0, Ordering::Relaxed);
        proxy.counters.upstream_subscriptions[1].store(0, Ordering::Relaxed);
        tracing::warn!(upstream = %proxy.pool.upstreams()[id].url, %reason, "upstream subscription ended; resubscribing");
        let now = proxy.pool.now_ms();
        proxy.pool.with_board(|b| b.failure(id, now));
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn session(proxy: &Proxy, id: usize, tx: &mpsc::Sender<DriverMsg>) -> String {
    let url = &proxy.pool.upstreams()[id].url;
    let connect = tokio_tungstenite::connect_async_with_config(
        url.as_str(),
        Some(crate::transport::ws_config()),
        true,
    );
    let mut ws = match tokio::time::timeout(proxy.pool.timeout(), connect).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return format!("connect: {e}"),
        Err(_) => return "connect timed out".into(),
    };
    for (rid, params) in [
        (1, json!(["newHeads"])),
        (2, json!(["newPendingTransactions", true])),
    ] {
        let text =
            json!({"jsonrpc":"2.0","id":rid,"method":"eth_subscribe","params":params}).to_string();
        if ws.send(Message::text(text)).await.is_err() {
            return "send failed".into();
        }
    }
    let mut subs: [Option<Value>; 2] = [None, None];
    let mut last: Option<SignedHeader> = None;
    // Liveness: the upstream is pinged; one that sends nothing (not even a
    // pong, nor its subscription's id) for `WS_DEAD_AFTER` is stalled, and
    // one whose heads stop for `subscription_silence` is silent.
    let mut ping = tokio::time::interval(WS_PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    let mut last_head = tokio::time::Instant::now();
    loop {
        let message = tokio::select! {
            m = ws.next() => m,
            _ = ping.tick() => {
                if heard.elapsed() > WS_DEAD_AFTER {
                    return format!("stalled: nothing for {WS_DEAD_AFTER:?}, not even a pong");
                }
                if subs[0].is_none() && last_head.elapsed() > proxy.pool.hedge_delay(id) * 4 {
                    return "the newHeads subscription was not confirmed".into();
                }
                if last_head.elapsed() > proxy.config.subscription_silence {
                    return format!("silent for {:?}", proxy.config.subscription_silence);
                }
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    return "ping failed".into();
                }
                continue;
            }
        };
        let message = match message {
            None => return "closed".into(),
            Some(Err(e)) => return format!("WebSocket error: {e}"),
            Some(Ok(m)) => m,
        };
        heard = tokio::time::Instant::now();
        let Message::Text(text) = message else {
            if let Message::Close(_) = message {
                return "closed".into();
            }
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
            proxy.pool.lie(id, "subscription: not JSON");
            return "malformed".into();
        };
        if let Some(rid) = value.get("id").and_then(Value::as_u64) {
            let index = (rid as usize).wrapping_sub(1);
            if index < 2 {
                match value.get("result") {
                    Some(r) if !r.is_null() => {
                        subs[index] = Some(r.clone());
                        proxy.counters.upstream_subscriptions[index].store(1, Ordering::Relaxed);
                    }
                    _ if index == 0 => return "newHeads subscription refused".into(),
                    _ => {}
                }
            }
            continue;
        }
        let Some(params) = value.get("params") else {
            continue;
        };
        let sub = params.get("subscription");
        let result = params.get("result").cloned().unwrap_or(Value::Null);
        if sub.is_some() && sub == subs[0].as_ref() {
            let header = match verify::header_from_json(&result) {
                Ok(h) => h,
                Err(e) => {
                    proxy.pool.lie(id, &format!("newHeads: {e}"));
                    return format!("newHeads: {e}");
                }
            };
            last_head = tokio::time::Instant::now();
            proxy.pool.with_board(|b| b.best_block(id, header.number));
            // The header certifies its parent with its parent QC.
            if let Some(parent) = last.take()
                && parent.hash() == header.parent_hash
                && header.parent_qc.block_hash == header.parent_hash
            {
                let certified = CertifiedHeader {
                    header: parent,
                    qc: header.parent_qc.clone(),
                };
                let _ = tx.try_send(DriverMsg::Certified(id, Box::new(certified)));
            }
            last = Some(header);
            // And the node's latest has its QC: ask for it now (not waiting
            // past the hedge delay: the pollers cover a slow upstream).
            let within = proxy.pool.hedge_delay(id);
            if let Ok(Some(head)) = tokio::time::timeout(within, certified_latest(proxy, id)).await
            {
                let _ = tx.try_send(DriverMsg::Certified(id, Box::new(head)));
            }
        } else if sub.is_some() && sub == subs[1].as_ref() {
            match verify::verify_tx_json(&result) {
                Ok((hash, _, _)) => proxy.emit(ChainEvent::Pending {
                    hash: format!("\"{hash}\"").into(),
                    full: result.to_string().into(),
                }),
                Err(e) => proxy.pool.lie(id, &format!("newPendingTransactions: {e}")),
            }
        }
    }
}
