//! `luxtensor-node` processes for tests: start one, learn its addresses,
//! kill it for real (SIGKILL) on demand and always on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a node may take to print its start line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `luxtensor-node` binary built next to this test (`cargo test
/// --workspace` builds it; `luxtensor-full`'s own integration test makes sure).
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/luxtensor-node
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let binary = profile_dir.join("luxtensor-node");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p luxtensor-full --bin luxtensor-node` \
         (or `cargo test --workspace`, which builds it)",
        binary.display()
    );
    binary
}

/// A running node; killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    /// Its libp2p peer id.
    pub peer_id: String,
    /// Its HTTP RPC address, if it serves RPC.
    pub http: Option<SocketAddr>,
    /// Its WebSocket RPC address, if any.
    pub ws: Option<SocketAddr>,
    /// Where its log (stderr) goes.
    pub log: PathBuf,
}

impl NodeProcess {
    /// Starts `luxtensor-node ARGS`, logging to `log`, and waits for its start line.
    pub fn spawn(args: &[String], log: &Path) -> Self {
        let stderr = std::fs::File::create(log).expect("log file");
        let mut child = Command::new(node_binary())
            .args(args)
            .env("LUXTENSOR_LOG", "info,luxtensor_full=debug")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start luxtensor-node");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) if !line.is_empty() => line,
            _ => {
                let _ = child.kill();
                panic!(
                    "luxtensor-node did not start; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        };
        let started: serde_json::Value = serde_json::from_str(&line).expect("start line is JSON");
        let addr = |key: &str| started[key].as_str().and_then(|a| a.parse().ok());
        Self {
            peer_id: started["peer_id"].as_str().expect("peer_id").to_string(),
            http: addr("http"),
            ws: addr("ws"),
            log: log.to_path_buf(),
            child,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
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
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback socket address.
pub fn free_addr() -> SocketAddr {
    let port = luxtensor_full::node::devnet::free_port().expect("a free port");
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Options for a devnet of `validators` in `dir` on free loopback ports,
/// with the devnet's short slots (500 ms) and epochs (8 slots).
pub fn devnet_options(dir: &Path, validators: u32) -> luxtensor_full::node::devnet::DevnetOptions {
    luxtensor_full::node::devnet::DevnetOptions {
        validators,
        data_dir: dir.join("devnet"),
        slot_ms: 500,
        epoch_length: 8,
        http_addr: free_addr(),
        ws_addr: free_addr(),
        metrics_addr: free_addr(),
    }
}
