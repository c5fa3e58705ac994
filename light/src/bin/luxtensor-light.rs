//! `luxtensor-light follow`: a light client that follows LuxTensor full
//! nodes over WebSocket, verifies every head against its epoch's validator
//! set, and prints heads, finality, reorgs, epoch changes and every rejected
//! message with the rule it broke (`--json`: one JSON object per line).
//!
//! ```text
//! luxtensor-light follow --chain devnet/chain.json --upstream ws://127.0.0.1:8546 --data-dir light-data
//! ```
//!
//! Exit status: 0 on Ctrl-C, 1 on a usage or startup error, 3 when two
//! upstreams served conflicting certified headers (equivocation: the
//! evidence is printed and written to the data directory).

use clap::{Parser, Subcommand};
use luxtensor_light::ChainSpec;
use luxtensor_light::client::net::{self, FollowConfig, Output, Stopped};
use luxtensor_light::client::{
    AgePolicy, Checkpoint, Event, LightClient, Problem, UpstreamId, current_epoch_at,
};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(name = "luxtensor-light", version, about = "LuxTensor light client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Follow the chain's head through one or more full nodes.
    Follow(FollowArgs),
}

#[derive(clap::Args)]
struct FollowArgs {
    /// WebSocket RPC URL of a full node (repeat for several; all are cross-checked).
    #[arg(long = "upstream", required = true, value_name = "URL")]
    upstreams: Vec<String>,
    /// Chain spec file (JSON or TOML, as `luxtensor-node --chain`; the devnet writes
    /// DIR/chain.json). Default: the built-in 4-validator devnet spec.
    #[arg(long, value_name = "FILE")]
    chain: Option<PathBuf>,
    /// Where trust starts: CHAIN_ID:genesis, CHAIN_ID:epoch:N:SET_HASH or
    /// CHAIN_ID:block:HASH. Default: the spec's genesis. Ignored when the data
    /// directory holds a saved state.
    #[arg(long, value_name = "CHECKPOINT")]
    checkpoint: Option<String>,
    /// Directory of the saved trusted state (written after each epoch; a restart resumes from it).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Accept a checkpoint (or saved state) older than the safe bound.
    #[arg(long)]
    allow_old_checkpoint: bool,
    /// Updates asked per request while catching up.
    #[arg(long, default_value_t = 32, value_name = "N")]
    page_size: u64,
    /// Drop and reconnect an upstream that sent nothing for this many seconds.
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    silence_timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Follow(args) => follow(args),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("luxtensor-light: {message}");
    ExitCode::from(1)
}

fn load_spec(path: &Option<PathBuf>) -> Result<ChainSpec, String> {
    let Some(path) = path else {
        return Ok(ChainSpec::devnet(4));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the chain spec {}: {e}", path.display()))?;
    let parsed = if path.extension().is_some_and(|e| e == "toml") {
        ChainSpec::from_toml_str(&text)
    } else {
        ChainSpec::from_json_str(&text)
    };
    parsed.map_err(|e| format!("invalid chain spec {}: {e}", path.display()))
}

fn follow(args: FollowArgs) -> ExitCode {
    let spec = match load_spec(&args.chain) {
        Ok(spec) => spec,
        Err(e) => return fail(e),
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let policy = AgePolicy {
        current_epoch: current_epoch_at(&spec, now_ms),
        allow_old: args.allow_old_checkpoint,
    };
    let config = FollowConfig {
        upstreams: args.upstreams.clone(),
        data_dir: args.data_dir.clone(),
        page_size: args.page_size.clamp(1, 64),
        silence_timeout: Duration::from_secs(args.silence_timeout.max(1)),
        ..FollowConfig::default()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let printer = Printer {
        json: args.json,
        urls: args.upstreams.clone(),
    };
    runtime.block_on(async move {
        // Where trust starts: the saved state, else the checkpoint.
        let saved = match &args.data_dir {
            Some(dir) => match net::load_state(dir) {
                Ok(state) => state,
                Err(e) => return fail(e),
            },
            None => None,
        };
        let state = match saved {
            Some(state) => {
                if let Err(e) = state.check_resume(&spec, policy) {
                    return fail(e);
                }
                printer.note(&format!(
                    "resuming from the saved state at epoch {}",
                    state.epoch
                ));
                state
            }
            None => {
                let checkpoint = match &args.checkpoint {
                    Some(text) => match Checkpoint::parse(text) {
                        Ok(c) => c,
                        Err(e) => return fail(e),
                    },
                    None => Checkpoint::genesis(&spec),
                };
                match net::resolve_checkpoint(&checkpoint, &spec, policy, &config).await {
                    Ok(state) => state,
                    Err(e) => return fail(e),
                }
            }
        };
        let client = match LightClient::new(spec, state, config.client.clone()) {
            Ok(c) => c,
            Err(e) => return fail(e),
        };
        let run = net::follow(client, config, |client, output| printer.print(client, output));
        tokio::select! {
            result = run => match result {
                Ok(Stopped::Equivocation(_)) => {
                    printer.note("stopped following: equivocation evidence (see above); resolve it and restart");
                    ExitCode::from(3)
                }
                Err(e) => fail(e),
            },
            _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        }
    })
}

/// Prints outputs as text lines or JSON lines.
struct Printer {
    json: bool,
    urls: Vec<String>,
}

impl Printer {
    fn url(&self, id: UpstreamId) -> &str {
        self.urls.get(id.0 as usize).map_or("?", String::as_str)
    }

    fn note(&self, text: &str) {
        if self.json {
            println!("{}", json!({"event": "note", "message": text}));
        } else {
            println!("note      {text}");
        }
    }

    fn upstream(&self, id: UpstreamId, problem: &str, detail: String) {
        if self.json {
            println!(
                "{}",
                json!({"event": "upstream", "upstream": id.0, "url": self.url(id), "problem": problem, "detail": detail})
            );
        } else {
            println!("upstream  {} {}: {problem} {detail}", id.0, self.url(id));
        }
    }

    fn print(&self, client: &LightClient, output: Output<'_>) {
        match output {
            Output::Event(event) => self.event(client, event),
            Output::Connected(id) => self.upstream(id, "connected", String::new()),
            Output::Disconnected(id, reason) => {
                self.upstream(id, "disconnected", format!("({reason}); reconnecting"))
            }
            Output::Malformed(id, detail) => self.upstream(id, "malformed", detail.to_string()),
            Output::Persisted(epoch) => {
                if self.json {
                    println!("{}", json!({"event": "persisted", "epoch": epoch}));
                }
            }
            Output::CaughtUp {
                epoch,
                updates,
                wire_bytes,
                rlp_bytes,
            } => {
                if self.json {
                    println!(
                        "{}",
                        json!({"event": "caught_up", "epoch": epoch, "updates": updates,
                               "wireBytes": wire_bytes, "rlpBytes": rlp_bytes})
                    );
                } else {
                    println!(
                        "caught up at epoch {epoch}: {updates} updates, {wire_bytes} bytes received"
                    );
                }
            }
        }
    }

    fn event(&self, client: &LightClient, event: &Event) {
        let j = self.json;
        match event {
            Event::Head { block, upstream } => {
                if j {
                    println!(
                        "{}",
                        json!({"event": "head", "number": block.number, "hash": block.hash,
                               "slot": block.slot, "epoch": block.epoch, "upstream": upstream.0})
                    );
                } else {
                    println!(
                        "head      #{} {} slot {} epoch {}",
                        block.number, block.hash, block.slot, block.epoch
                    );
                }
            }
            Event::Finalized { block } => {
                if j {
                    println!(
                        "{}",
                        json!({"event": "finalized", "number": block.number, "hash": block.hash,
                               "slot": block.slot, "epoch": block.epoch})
                    );
                } else {
                    println!(
                        "finalized #{} {} slot {} epoch {}",
                        block.number, block.hash, block.slot, block.epoch
                    );
                }
            }
            Event::Reorg { dropped, new_head } => {
                if j {
                    println!(
                        "{}",
                        json!({"event": "reorg", "hash": new_head, "dropped": dropped})
                    );
                } else {
                    println!(
                        "reorg     new head {new_head}, {} blocks dropped: {dropped:?}",
                        dropped.len()
                    );
                }
            }
            Event::EpochChanged {
                epoch,
                set_hash,
                diff,
            } => {
                let size = client.trusted_state().set.len();
                if j {
                    println!(
                        "{}",
                        json!({"event": "epoch", "epoch": epoch, "setHash": set_hash, "validators": size,
                               "added": diff.added.len(), "removed": diff.removed.len(),
                               "restaked": diff.restaked.len()})
                    );
                } else {
                    println!(
                        "epoch     {epoch}: set {set_hash} of {size} validators (+{} -{} ~{})",
                        diff.added.len(),
                        diff.removed.len(),
                        diff.restaked.len()
                    );
                }
            }
            Event::Rejected { upstream, rule } => {
                if j {
                    println!(
                        "{}",
                        json!({"event": "rejected", "upstream": upstream.0, "url": self.url(*upstream),
                               "rule": rule.name(), "message": rule.to_string()})
                    );
                } else {
                    println!(
                        "REJECTED  from upstream {} {}: broke rule `{}`: {rule}",
                        upstream.0,
                        self.url(*upstream),
                        rule.name()
                    );
                }
            }
            Event::UpstreamProblem { upstream, problem } => {
                let (name, detail) = match problem {
                    Problem::Silent { for_ms } => ("silent", format!("nothing for {for_ms} ms")),
                    Problem::Lagging { behind_slots } => {
                        ("lagging", format!("{behind_slots} slots behind"))
                    }
                    Problem::Lying { rule } => ("lying", format!("broke rule `{rule}`")),
                    Problem::Conflicting => ("conflicting", "served a conflicting header".into()),
                };
                self.upstream(*upstream, name, format!("{detail}; demoted"));
            }
            Event::Equivocation { evidence } => {
                let (a, b) = (&evidence.first.header, &evidence.second.header);
                if j {
                    println!(
                        "{}",
                        json!({"event": "equivocation", "slot": a.slot, "epoch": a.epoch,
                               "number": a.number, "hashes": [a.hash(), b.hash()],
                               "upstreams": [evidence.first_upstream.0, evidence.second_upstream.0]})
                    );
                } else {
                    println!(
                        "ALARM     equivocation at slot {} epoch {}: {} from upstream {} and {} from upstream {}, both certified; following stopped",
                        a.slot,
                        a.epoch,
                        a.hash(),
                        evidence.first_upstream.0,
                        b.hash(),
                        evidence.second_upstream.0
                    );
                }
            }
            Event::NeedUpdates { .. } => {}
        }
    }
}
