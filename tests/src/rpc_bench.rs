//! `luxtensor-bench rpc`: HTTP request rates and `newHeads` fan-out to many
//! WebSocket subscribers, against the real server over loopback.
//!
//! The subscribers run in a child process (`luxtensor-bench rpc-clients`),
//! so that 10,000 connections fit the file-descriptor limit of each process
//! and the server's memory is measured alone. Latency is from
//! `Broadcaster::send` (right after the block's import) to the moment a
//! subscriber holds its notification's WebSocket frame, on the same wall
//! clock. Client and server share the machine's two cores, so the clients
//! do the least they can: one thread reads every socket from one `epoll`
//! and finds the block number by a byte search (see
//! [`crate::ws_subscribers`]). The child prints each head's p50/p99/max to
//! stderr.

use crate::bench::{now_ns, report};
use crate::rpc_support::{HttpClient, RpcChain};
use crate::ws_subscribers::Subscribers;
use luxtensor_full::rpc::RpcLimits;
use serde_json::json;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const BENCH: &str = "rpc";

/// Resident memory of this process, in MiB.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time this process has used (user + system), in microseconds, from
/// `/proc/self/stat` (clock ticks of 10 ms: read it over many deliveries).
fn process_cpu_us() -> f64 {
    let (user, system) = process_cpu_split_us();
    user + system
}

/// CPU time this process has used in user space and in the kernel, in
/// microseconds (see [`process_cpu_us`]).
fn process_cpu_split_us() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    (ticks(11) * 10_000.0, ticks(12) * 10_000.0)
}

/// Runs the scenario and prints its figures.
pub fn run(quick: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let limits = RpcLimits {
            max_connections: 20_000,
            ..Default::default()
        };
        let mut chain = RpcChain::start(3, limits).await;
        // A block of 100 transfers for eth_getBlockByNumber with full transactions.
        let first = chain.transfer_transaction();
        let txs: Vec<_> = (0..100)
            .map(|i| {
                crate::wallet::transfer(
                    &crate::wallet::dev_signer(0),
                    chain.spec.chain_id,
                    first.nonce() + i,
                    alloy_primitives::Address::repeat_byte(7),
                    alloy_primitives::U256::from(1),
                )
            })
            .collect();
        let big = chain.import(txs);
        assert_eq!(big.transactions.len(), 100, "the block holds all transfers");
        let seconds = if quick { 1.0 } else { 4.0 };
        let addr = chain.handle.http_addr;
        let rps = http_rps(
            addr,
            json!({"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}),
            seconds,
        )
        .await;
        report(BENCH, "block_number_rps", rps, "req/s");
        let number = format!("{:#x}", big.header.number);
        let rps = http_rps(
            addr,
            json!({"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":[number, true]}),
            seconds,
        )
        .await;
        report(BENCH, "get_block_rps", rps, "req/s");

        let sizes: &[usize] = if quick { &[1_000] } else { &[1_000, 10_000] };
        for &n in sizes {
            fanout(&mut chain, n, if quick { 3 } else { 8 }).await;
        }
    });
}

/// Requests per second over 32 keep-alive connections.
pub async fn http_rps(addr: SocketAddr, request: serde_json::Value, seconds: f64) -> f64 {
    let body = request.to_string().into_bytes();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = HttpClient::connect(addr).await;
            let mut done = 0u64;
            while Instant::now() < deadline {
                let response = client.post(&body).await;
                assert_eq!(response.status, 200);
                done += 1;
            }
            done
        }));
    }
    let started = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("client task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Fan-out of `events` new heads to `n` subscribers in a child process.
///
/// One more head goes first, as warm-up, and is not counted: the first
/// frame a connection sends grows buffers on both sides that every later
/// frame reuses (it is what a long-lived subscriber never pays again).
async fn fanout(chain: &mut RpcChain, n: usize, events: usize) {
    let blocks: Vec<_> = (0..=events).map(|_| chain.import(vec![])).collect();
    let ws = chain.handle.ws_addr.expect("ws port");
    let exe = std::env::current_exe().expect("own path");
    let mut child = std::process::Command::new(exe)
        .args([
            "rpc-clients",
            &ws.to_string(),
            &n.to_string(),
            &(events + 1).to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the client process");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("child output");
    assert_eq!(line.trim(), "ready", "the clients subscribed");
    if n == 10_000 {
        report(BENCH, "rss_mb_10000_subscribers", rss_mb(), "MiB");
    }
    let gap = Duration::from_millis(if n >= 10_000 { 1_000 } else { 300 });
    let (warm_up, measured) = blocks.split_first().expect("blocks");
    chain
        .handle
        .broadcaster
        .send(chain.event(warm_up))
        .expect("broadcast");
    tokio::time::sleep(gap).await;
    let mut sent = Vec::new();
    let cpu_before = process_cpu_split_us();
    for block in measured {
        let event = chain.event(block);
        sent.push((block.header.number, now_ns()));
        chain.handle.broadcaster.send(event).expect("broadcast");
        tokio::time::sleep(gap).await;
    }
    let cpu_after = process_cpu_split_us();
    let (user_us, system_us) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    let cpu_us = user_us + system_us;
    let mut stdin = child.stdin.take().expect("piped");
    for (number, t) in &sent {
        writeln!(stdin, "{number} {t}").expect("child input");
    }
    drop(stdin);
    line.clear();
    stdout.read_line(&mut line).expect("child result");
    let _ = child.wait();
    let (p50, p99, got) = clients_result(&line);
    let expected = (n * events) as f64;
    assert_eq!(got, expected, "every subscriber received every head");
    report(BENCH, &format!("newheads_fanout_p50_ms_{n}"), p50, "ms");
    report(BENCH, &format!("newheads_fanout_p99_ms_{n}"), p99, "ms");
    // The server's whole CPU cost of a delivery (its share of the kernel's
    // TCP work included): the figure the machine's noise does not move.
    report(
        BENCH,
        &format!("newheads_server_cpu_us_per_delivery_{n}"),
        cpu_us / expected,
        "us",
    );
    // Its user-space part (the server's own work: wake-ups, rendering,
    // framing) and its kernel part (TCP over loopback, which includes the
    // receiving side's processing of each segment).
    report(
        BENCH,
        &format!("newheads_server_user_us_per_delivery_{n}"),
        user_us / expected,
        "us",
    );
    report(
        BENCH,
        &format!("newheads_server_system_us_per_delivery_{n}"),
        system_us / expected,
        "us",
    );
}

/// The last line of [`clients`]: `(p50_ms, p99_ms, deliveries)` (NaN and 0
/// for what is missing).
pub fn clients_result(line: &str) -> (f64, f64, f64) {
    let mut parts = line
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    (
        parts.next().unwrap_or(f64::NAN),
        parts.next().unwrap_or(f64::NAN),
        parts.next().unwrap_or(0.0),
    )
}

/// The child process: `n` subscribers that each wait for `events` heads,
/// then read the send times from stdin and print `p50_ms p99_ms deliveries`.
pub fn clients(args: &[String]) {
    let ws: SocketAddr = args[0].parse().expect("address");
    let n: usize = args[1].parse().expect("count");
    let events: usize = args[2].parse().expect("events");
    let subscribers = Subscribers::subscribe(ws, n, "newHeads").expect("subscribe");
    println!("ready");
    let deadline = Duration::from_secs(60 + 2 * events as u64);
    let cpu_before = process_cpu_us();
    let received = subscribers.receive(events, deadline).expect("receive");
    let cpu_us = process_cpu_us() - cpu_before;
    eprintln!(
        "rpc-clients n={n}: {:.1} us of client CPU per delivery",
        cpu_us / received.len().max(1) as f64
    );
    let sent: std::collections::HashMap<u64, u128> = std::io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| {
            let (number, t) = l.split_once(' ')?;
            Some((number.parse().ok()?, t.parse().ok()?))
        })
        .collect();
    let mut by_head: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for (number, t) in &received {
        if let Some(s) = number.and_then(|n| sent.get(&n)) {
            let ms = t.saturating_sub(*s) as f64 / 1e6;
            by_head
                .entry(number.unwrap_or_default())
                .or_default()
                .push(ms);
        }
    }
    let pct = |latencies: &[f64], p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    for (number, latencies) in &mut by_head {
        latencies.sort_by(f64::total_cmp);
        eprintln!(
            "rpc-clients n={n} head {number}: {} deliveries, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            pct(latencies, 0.5),
            pct(latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN),
        );
    }
    let mut latencies: Vec<f64> = by_head.into_values().flatten().collect();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| pct(&latencies, p);
    println!("{} {} {}", pct(0.5), pct(0.99), latencies.len());
}
