//! `luxtensor-bench proxy`: the verified proxy in front of an in-process
//! 4-validator devnet (on threads of its own), over loopback.
//!
//! - `cached_rps`: a finalized `eth_getBlockByNumber` (full transactions)
//!   answered from the proxy's cache, 32 keep-alive connections of a lean,
//!   `wrk`-like client ([`lean_rps`]);
//! - `nginx_cached_rps`: the same request through nginx `proxy_cache` (POST
//!   bodies in the cache key) in front of the same node, in the same run,
//!   in rounds alternating with the proxy's; `skipped` when `nginx` is not
//!   on the `PATH` (this bench installs nothing); `cached_vs_nginx`: their ratio;
//! - `cached_rps_rpc_client`, `nginx_cached_rps_rpc_client`: the same with
//!   the general-purpose test client (`rpc_bench::http_rps`, which the first
//!   measurements used; it costs more than either server per request);
//! - `miss_overhead_us_p50`/`_p99`: a verified block fetch through the proxy
//!   (cache miss: fetched, checked against the verified header) minus the
//!   same request sent straight to the node, at the same percentile;
//! - `fanout_p50_ms_10000`/`fanout_p99_ms_10000`: from the proxy's emission
//!   of a new verified head to the moment each of 10,000 WebSocket clients
//!   (a child process, `luxtensor-bench rpc-clients`) holds its frame, for
//!   the 8 heads emitted after every client has subscribed;
//! - `upstream_subscriptions_new_heads`/`_pending`: the proxy's upstream
//!   subscriptions while serving them (1 per kind);
//! - `peak_rss_mb`: this process's peak RSS (the proxy *and* the devnet).

use crate::bench::{now_ns, report};
use crate::rpc_bench::http_rps;
use crate::rpc_support::HttpClient;
use luxtensor_proxy::ProxyConfig;
use luxtensor_proxy::proxy::ChainEvent;
use serde_json::json;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const BENCH: &str = "proxy";

/// A line of `/proc/self/status` in MiB (`VmRSS`, `VmHWM`).
fn status_mb(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the scenario and prints its figures.
pub fn run(quick: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The validators run on threads of their own, as if in another process
    // (they are the upstream, not what is measured): on the proxy's two
    // workers, their signature checks at every new block would queue ahead
    // of the proxy's tasks exactly when it fans that block's head out.
    let validators = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("devnet")
        .enable_all()
        .build()
        .expect("devnet runtime");
    let validator_threads = validators.handle().clone();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let devnet_dir = dir.path().join("devnet");
        let devnet = validator_threads
            .spawn(async move { luxtensor_proxy::dev::start(4, &devnet_dir, 500, 32).await })
            .await
            .expect("devnet task")
            .expect("devnet");
        let node = devnet.rpc[1];
        let config = ProxyConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            metrics: None,
            upstream_timeout: Duration::from_secs(5),
            ..ProxyConfig::default()
        };
        let running = luxtensor_proxy::start(
            config,
            devnet.spec.clone(),
            None,
            vec![format!("ws://{}", devnet.rpc[0]), format!("http://{node}")],
        )
        .await
        .expect("proxy");
        let proxy_addr = running.bound.rpc;
        let mut client = HttpClient::connect(proxy_addr).await;
        let mut direct = HttpClient::connect(node).await;
        let blocks = if quick { 60 } else { 230 };
        let mut said = Instant::now();
        wait_until("finalized blocks", Duration::from_secs(300), async || {
            if said.elapsed() > Duration::from_secs(10) {
                said = Instant::now();
                eprintln!(
                    "proxy bench: verified head {:?}, finalized {:?} (waiting for {blocks})",
                    running.proxy.head().map(|h| h.number),
                    running.proxy.finalized().map(|h| h.number)
                );
            }
            running.proxy.finalized().is_some_and(|f| f.number > blocks)
        })
        .await;
        // `LUXTENSOR_BENCH_PROXY_RPS_SECONDS`: longer rate runs (for a profiler).
        let seconds = std::env::var("LUXTENSOR_BENCH_PROXY_RPS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if quick { 1.0 } else { 4.0 });

        // --- cached finalized block: the proxy, then nginx in front of the node ---
        let finalized = format!("{:#x}", running.proxy.finalized().expect("finalized").number);
        let request = json!({"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":[finalized, true]});
        let first = client.post_json(&request).await;
        assert_eq!(first["result"], direct.post_json(&request).await["result"]);
        let body = request.to_string();
        let nginx = Nginx::start(dir.path(), node);
        if let Some(nginx) = &nginx {
            let mut via = HttpClient::connect(nginx.addr).await;
            via.post(body.as_bytes()).await;
            let second = via.post(body.as_bytes()).await;
            assert_eq!(second.header("x-cache"), Some("HIT"), "nginx caches the POST");
            assert_eq!(second.json()["result"], first["result"]);
        }
        // Rounds alternate between the servers, so that a change in the
        // machine's load (it is shared) does not fall on one side only.
        let rounds = 4;
        let slice = seconds / rounds as f64;
        let (mut ours, mut theirs, mut ours_rpc, mut theirs_rpc) =
            (Rate::default(), Rate::default(), Rate::default(), Rate::default());
        for round in 0..rounds {
            eprintln!("proxy bench: cached_rps for {slice} s (round {round})");
            ours.add(lean_rps(proxy_addr, body.as_bytes(), slice).await);
            if let Some(nginx) = &nginx {
                eprintln!("proxy bench: nginx_cached_rps for {slice} s (round {round})");
                theirs.add(lean_rps(nginx.addr, body.as_bytes(), slice).await);
            }
            let t = Instant::now();
            let rps = http_rps(proxy_addr, request.clone(), slice).await;
            ours_rpc.add((rps * t.elapsed().as_secs_f64(), t.elapsed().as_secs_f64()));
            if let Some(nginx) = &nginx {
                let t = Instant::now();
                let rps = http_rps(nginx.addr, request.clone(), slice).await;
                theirs_rpc.add((rps * t.elapsed().as_secs_f64(), t.elapsed().as_secs_f64()));
            }
        }
        report(BENCH, "cached_rps", ours.per_second(), "req/s");
        report(BENCH, "cached_rps_rpc_client", ours_rpc.per_second(), "req/s");
        match nginx {
            Some(nginx) => {
                report(BENCH, "nginx_cached_rps", theirs.per_second(), "req/s");
                report(
                    BENCH,
                    "nginx_cached_rps_rpc_client",
                    theirs_rpc.per_second(),
                    "req/s",
                );
                report(
                    BENCH,
                    "cached_vs_nginx",
                    ours.per_second() / theirs.per_second(),
                    "ratio",
                );
                drop(nginx);
            }
            None => println!(
                "{}",
                json!({"bench": BENCH, "metric": "nginx_cached_rps", "skipped": "nginx is not installed (apt-get install -y nginx-light)"})
            ),
        }

        // --- cache misses: a verified block fetch vs the same request to the node ---
        // The first fetch walks the verified headers back; the others are misses on blocks.
        client
            .result("eth_getBlockByNumber", json!(["0x1", true]))
            .await;
        let mut through = Vec::new();
        let mut straight = Vec::new();
        for n in 2..blocks {
            let params = json!([format!("{n:#x}"), true]);
            let t = Instant::now();
            let theirs = direct.result("eth_getBlockByNumber", params.clone()).await;
            straight.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            let ours = client.result("eth_getBlockByNumber", params).await;
            through.push(t.elapsed().as_secs_f64() * 1e6);
            assert_eq!(ours, theirs, "block {n}");
        }
        through.sort_by(f64::total_cmp);
        straight.sort_by(f64::total_cmp);
        for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
            report(
                BENCH,
                &format!("miss_overhead_us_{name}"),
                percentile(&through, p) - percentile(&straight, p),
                "us",
            );
        }
        report(BENCH, "miss_direct_us_p50", percentile(&straight, 0.5), "us");

        // --- fan-out of verified heads to many WebSocket clients ---
        // `LUXTENSOR_BENCH_PROXY_CLIENTS`: another number of clients.
        let n = std::env::var("LUXTENSOR_BENCH_PROXY_CLIENTS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(if quick { 1_000 } else { 10_000 });
        fanout(&running, n, if quick { 4 } else { 8 }).await;
        report(BENCH, "peak_rss_mb", status_mb("VmHWM:"), "MiB");
        drop(running);
        drop(devnet);
    });
    validators.shutdown_timeout(Duration::from_secs(5));
}

/// Requests and seconds, summed over rounds.
#[derive(Debug, Default)]
struct Rate {
    requests: f64,
    seconds: f64,
}

impl Rate {
    fn add(&mut self, (requests, seconds): (f64, f64)) {
        self.requests += requests;
        self.seconds += seconds;
    }

    fn per_second(&self) -> f64 {
        self.requests / self.seconds
    }
}

/// POSTs `body` over 32 keep-alive connections for `seconds`, as `wrk`
/// does: each connection writes one prebuilt request and reads its answer
/// by its `content-length`, no more (the servers, not the client, are
/// measured; the clients share the machine's two cores with them, and the
/// general-purpose test client costs several times what nginx spends on a
/// request). Returns (answers, seconds).
async fn lean_rps(addr: SocketAddr, body: &[u8], seconds: f64) -> (f64, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = format!(
        "POST / HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let request: Arc<[u8]> = request.into();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let connect = async || {
                    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    stream.set_nodelay(true).expect("nodelay");
                    stream
                };
                let mut stream = connect().await;
                let mut buffer = Vec::with_capacity(64 * 1024);
                let mut done = 0u64;
                while Instant::now() < deadline {
                    stream.write_all(&request).await.expect("write");
                    buffer.clear();
                    let close = loop {
                        let read = stream.read_buf(&mut buffer).await.unwrap_or(0);
                        if read == 0 {
                            // Closed between two requests (nginx does after
                            // `keepalive_requests`): not answered, asked again.
                            assert!(buffer.is_empty(), "the server closed mid-answer");
                            break true;
                        }
                        if let Some((end, close)) = response_end(&buffer) {
                            assert_eq!(end, buffer.len(), "one answer per request");
                            done += 1;
                            break close;
                        }
                    };
                    if close {
                        stream = connect().await;
                    }
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("client task");
    }
    (total as f64, started.elapsed().as_secs_f64())
}

/// Where the HTTP response `bytes` starts with ends (a `200` with a
/// `content-length`), once all of it is there, and whether the server
/// closes the connection after it.
fn response_end(bytes: &[u8]) -> Option<(usize, bool)> {
    let head = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&bytes[..head]).expect("an ASCII head");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let header = |wanted: &str| {
        text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(wanted).then(|| value.trim())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("a content-length");
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let end = head + length;
    (bytes.len() >= end).then_some((end, close))
}

/// Heads a client may see while the others are still subscribing: each
/// client waits for this many more than are measured (see [`fanout`]).
const SLACK: usize = 16;

/// Fan-out of the first `events` verified heads emitted after `n`
/// subscribers in a child process have all subscribed.
///
/// The devnet keeps producing heads while the child opens its connections,
/// and each child client records the first heads it gets after subscribing:
/// so every client waits for `events + SLACK` heads, and only the first
/// `events` heads emitted after the child said "ready" are measured. Every
/// client is reading while those are delivered: one that subscribed early
/// has seen at most the heads emitted during the subscribing (checked to be
/// at most `SLACK`) before them.
async fn fanout(running: &luxtensor_proxy::Running, n: usize, events: usize) {
    let proxy = running.proxy.clone();
    let exe = std::env::current_exe().expect("own path");
    let wanted = events + SLACK;
    let mut child = std::process::Command::new(exe)
        .args([
            "rpc-clients",
            &running.bound.rpc.to_string(),
            &n.to_string(),
            &wanted.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the client process");
    // Every emission from now on, with its time, on a thread of its own:
    // woken by the send itself, not queued behind the connections' tasks
    // (the connections read the same event from the proxy's fan-out ring,
    // published after this send).
    let mut heads = proxy.events.subscribe();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let recorder = std::thread::spawn(move || {
        let mut sent = Vec::new();
        while !stopped.load(Ordering::Relaxed) {
            match heads.blocking_recv() {
                Ok(event) => {
                    let t = now_ns();
                    if let ChainEvent::Heads { added, .. } = &*event {
                        sent.extend(added.iter().map(|(h, _)| (h.number, t)));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        sent
    });
    let stdout = child.stdout.take().expect("piped");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = std::io::BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).expect("child output");
        let _ = ready_tx.send((line.trim() == "ready", now_ns()));
        line.clear();
        stdout.read_line(&mut line).expect("child result");
        line
    });
    let spawned = now_ns();
    let (ready, ready_at) = tokio::time::timeout(Duration::from_secs(300), ready_rx)
        .await
        .expect("the clients subscribed in time")
        .unwrap_or((false, 0));
    assert!(ready, "the clients subscribed");
    eprintln!("proxy bench: {n} clients ready");
    let subscriptions = &proxy.counters.upstream_subscriptions;
    report(
        BENCH,
        &format!("rss_mb_{n}_clients"),
        status_mb("VmRSS:"),
        "MiB",
    );
    report(
        BENCH,
        "upstream_subscriptions_new_heads",
        subscriptions[0].load(Ordering::Relaxed) as f64,
        "subscriptions",
    );
    report(
        BENCH,
        "upstream_subscriptions_pending",
        subscriptions[1].load(Ordering::Relaxed) as f64,
        "subscriptions",
    );
    // Every client waits for `wanted` heads after its subscription.
    let head_now = proxy.head().map_or(0, |h| h.number);
    let deadline = Instant::now() + Duration::from_secs(60 + 2 * wanted as u64);
    while proxy.head().map_or(0, |h| h.number) < head_now + wanted as u64 + 1 {
        assert!(
            Instant::now() < deadline,
            "the devnet stopped producing heads"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Stop after the next head (the recorder wakes on it).
    stop.store(true, Ordering::Relaxed);
    let sent = tokio::task::spawn_blocking(move || recorder.join().expect("recorder"))
        .await
        .expect("recorder");
    let early = sent
        .iter()
        .filter(|(_, t)| (spawned..ready_at).contains(t))
        .count();
    eprintln!(
        "proxy bench: {early} heads emitted while {n} clients subscribed ({:.1} s)",
        (ready_at - spawned) as f64 / 1e9
    );
    assert!(
        early <= SLACK,
        "{early} heads were emitted while the clients subscribed: more than the {SLACK} they wait for beyond the measured ones"
    );
    let measured: Vec<_> = sent
        .iter()
        .filter(|(_, t)| *t >= ready_at)
        .take(events)
        .collect();
    assert_eq!(measured.len(), events, "heads after the clients were ready");
    let mut stdin = child.stdin.take().expect("piped");
    for (number, t) in measured {
        writeln!(stdin, "{number} {t}").expect("child input");
    }
    drop(stdin);
    let line = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
        .await
        .expect("reader");
    let _ = child.wait();
    let (p50, p99, got) = crate::rpc_bench::clients_result(&line);
    assert_eq!(
        got,
        (n * events) as f64,
        "every client received every measured head"
    );
    report(BENCH, &format!("fanout_p50_ms_{n}"), p50, "ms");
    report(BENCH, &format!("fanout_p99_ms_{n}"), p99, "ms");
}

/// nginx with `proxy_cache` in front of one node, in `dir`, if installed.
struct Nginx {
    addr: SocketAddr,
    child: std::process::Child,
}

impl Nginx {
    fn start(dir: &std::path::Path, upstream: SocketAddr) -> Option<Self> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let root = dir.join("nginx");
        std::fs::create_dir_all(root.join("cache")).ok()?;
        let addr = SocketAddr::from((
            [127, 0, 0, 1],
            luxtensor_full::node::devnet::free_port().ok()?,
        ));
        let r = root.display();
        let conf = format!(
            r#"worker_processes 2;
daemon off;
pid {r}/nginx.pid;
error_log {r}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {r}/body;
    proxy_temp_path {r}/proxy;
    fastcgi_temp_path {r}/fastcgi;
    uwsgi_temp_path {r}/uwsgi;
    scgi_temp_path {r}/scgi;
    proxy_cache_path {r}/cache levels=1:2 keys_zone=rpc:16m max_size=256m inactive=10m;
    upstream node {{ server {upstream}; keepalive 32; }}
    server {{
        listen {addr};
        keepalive_requests 1000000;
        client_body_buffer_size 64k;
        location / {{
            proxy_pass http://node;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache rpc;
            proxy_cache_methods POST;
            proxy_cache_key "$request_uri|$request_body";
            proxy_cache_valid 200 10m;
            proxy_ignore_headers Cache-Control Expires Set-Cookie;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"#
        );
        let path = root.join("nginx.conf");
        std::fs::write(&path, conf).ok()?;
        // Workers run as `nobody` when started by root: they write the cache.
        let _ = std::process::Command::new("chmod")
            .args(["-R", "a+rwx"])
            .arg(dir)
            .status();
        let child = std::process::Command::new(binary)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(&root)
            .arg("-e")
            .arg(root.join("error.log"))
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                eprintln!(
                    "nginx did not start: {}",
                    std::fs::read_to_string(root.join("error.log")).unwrap_or_default()
                );
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self { addr, child })
    }
}

impl Drop for Nginx {
    /// SIGTERM, so that the master stops its workers (SIGKILL would leave
    /// them serving, orphaned); SIGKILL after 5 s.
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
