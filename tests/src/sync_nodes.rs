//! `luxtensor-node` as a child process for the sync tests and the sync
//! benchmark: start it on loopback with free ports and a chain file, read
//! its `started` line, ask its JSON-RPC (a blocking HTTP/1.1 client), read
//! its log and peak memory, and kill it (SIGKILL) when the guard drops — on
//! every path, panics included.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/luxtensor-node` next to the running executable
/// (`target/<profile>/deps/<test>` or `target/<profile>/<bench>`).
pub fn node_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe.parent().ok_or("no executable directory")?;
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let binary = profile_dir.join("luxtensor-node");
    if binary.is_file() {
        return Ok(binary);
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => String::new(),
        Some(other) => format!(" --profile {other}"),
    };
    Err(format!(
        "{} is missing: run `cargo build{profile} -p luxtensor-full --bin luxtensor-node` first",
        binary.display()
    ))
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    luxtensor_full::node::devnet::free_port().expect("a free loopback port")
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// How to start one node.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The chain-spec file.
    pub chain: PathBuf,
    /// Multiaddrs (with `/p2p/`) to dial at start.
    pub bootnodes: Vec<String>,
    /// Serve JSON-RPC (HTTP, WebSocket and metrics on free ports); otherwise `--no-rpc`.
    pub rpc: bool,
    /// More arguments (`--log …`, `--test-byzantine …`, `--test-throttle …`).
    pub extra: Vec<String>,
}

/// A running `luxtensor-node run`; killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct SyncNode {
    child: Child,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its stderr (the `tracing` log).
    pub log: PathBuf,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its p2p address with `/p2p/` peer id, for `--bootnode`.
    pub p2p: String,
    /// Its HTTP JSON-RPC address, if served.
    pub http: Option<SocketAddr>,
}

impl SyncNode {
    /// Starts `binary run` with `options` and waits (up to 30 s) for its
    /// `started` line. Its log goes to `<data_dir>/node.log` (appended, so a
    /// restart keeps the earlier log).
    pub fn start(binary: &Path, options: &NodeOptions) -> Result<Self, String> {
        std::fs::create_dir_all(&options.data_dir).map_err(|e| e.to_string())?;
        let log = options.data_dir.join("node.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let listen = format!("/ip4/127.0.0.1/tcp/{}", free_port());
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg("--data-dir")
            .arg(&options.data_dir)
            .arg("--chain")
            .arg(&options.chain)
            .args(["--p2p-addr", &listen]);
        for bootnode in &options.bootnodes {
            command.args(["--bootnode", bootnode]);
        }
        let http = options.rpc.then(free_addr);
        match http {
            Some(http) => {
                command
                    .args(["--http-addr", &http.to_string()])
                    .args(["--ws-addr", &free_addr().to_string()])
                    .args(["--metrics-addr", &free_addr().to_string()]);
            }
            None => {
                command.arg("--no-rpc");
            }
        }
        command
            .args(&options.extra)
            .env_remove("LUXTENSOR_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so that the node never blocks on stdout.
            for _ in lines {}
        });
        // From here the guard kills the child on every path.
        let mut node = Self {
            child,
            data_dir: options.data_dir.clone(),
            log,
            peer_id: String::new(),
            p2p: String::new(),
            http,
        };
        let line = rx.recv_timeout(Duration::from_secs(30)).map_err(|_| {
            format!(
                "no `started` line within 30 s; log tail:\n{}",
                node.log_tail(20)
            )
        })?;
        let started: Value =
            serde_json::from_str(&line).map_err(|e| format!("started line {line:?}: {e}"))?;
        node.peer_id = started["peer_id"]
            .as_str()
            .ok_or_else(|| format!("no peer id in {line}"))?
            .to_string();
        node.p2p = format!("{listen}/p2p/{}", node.peer_id);
        Ok(node)
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the node with SIGKILL (no shutdown path runs) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Peak resident memory so far (`VmHWM` of `/proc/PID/status`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// A JSON-RPC call: the `result`, or the error as text.
    pub fn rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        let addr = self.http.ok_or("this node serves no RPC")?;
        rpc_call(addr, method, params)
    }

    /// `eth_blockNumber`.
    pub fn block_number(&self) -> Result<u64, String> {
        let value = self.rpc("eth_blockNumber", Value::Array(vec![]))?;
        parse_quantity(&value)
    }

    /// The hash of block `number` (`eth_getBlockByNumber`), as `0x…` text.
    pub fn block_hash(&self, number: u64) -> Result<String, String> {
        let block = self.rpc(
            "eth_getBlockByNumber",
            serde_json::json!([format!("{number:#x}"), false]),
        )?;
        block["hash"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("no block {number}: {block}"))
    }

    /// Polls `eth_blockNumber` every 50 ms until `done(number)` holds and
    /// returns that number; an error (with the last number seen and the
    /// log's tail) if the node exits or `timeout` passes.
    pub fn wait_for_block(
        &mut self,
        timeout: Duration,
        done: impl Fn(u64) -> bool,
    ) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Ok(number) = self.block_number() {
                if done(number) {
                    return Ok(number);
                }
                last = Some(number);
            }
            if !self.is_running() {
                return Err(format!("node exited; log tail:\n{}", self.log_tail(30)));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out after {timeout:?} at block {last:?}; log tail:\n{}",
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SyncNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `0x…` quantity as `u64`.
pub fn parse_quantity(value: &Value) -> Result<u64, String> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("not a quantity: {value}"))?;
    u64::from_str_radix(text.trim_start_matches("0x"), 16).map_err(|e| format!("{text}: {e}"))
}

/// One JSON-RPC call over a fresh HTTP/1.1 connection (`Connection: close`),
/// with 5 s timeouts.
pub fn rpc_call(addr: SocketAddr, method: &str, params: Value) -> Result<Value, String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        .to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{method}: {head}"));
    }
    let response: Value =
        serde_json::from_str(body).map_err(|e| format!("{method}: {e}: {body}"))?;
    match response.get("result") {
        Some(result) => Ok(result.clone()),
        None => Err(format!("{method}: {}", response["error"])),
    }
}
