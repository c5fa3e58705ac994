//! Imports range-synced blocks on a thread of their own.
//!
//! Importing a run (seals and QCs, sender recovery, execution, one fsynced
//! commit per block) takes about 5 ms a block. Done in the node loop, it
//! kept the loop from reading answers and sending requests, so the peers'
//! links went idle while the node imported. Here the loop hands runs to a
//! dedicated thread through a bounded queue and goes on; each run comes back
//! as one [`ImportReport`], in order.
//!
//! The store stays single-writer: the thread writes only while it holds the
//! chain's write lock, for one run of at most [`IMPORT_RUN`] blocks at a
//! time, so readers (RPC, serving peers) wait at most one run.

use crate::{ImportError, Importer};
use luxtensor_light::{Block, Header};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;

/// Most blocks imported under one hold of the chain lock (the import
/// benchmark's run length is 16; longer runs batch more signatures).
pub const IMPORT_RUN: usize = 32;
/// Most blocks handed to the import thread and not yet reported: the
/// downloaded blocks the scheduler no longer counts in its buffer.
pub const MAX_QUEUED_BLOCKS: usize = 512;
/// Most runs handed to the import thread and not yet reported.
pub const MAX_QUEUED_RUNS: usize = 64;

/// One run for the import thread.
struct Job {
    generation: u64,
    blocks: Vec<Block>,
}

/// How one run went.
#[derive(Debug)]
pub enum RunOutcome {
    /// Every block is in the store (some may have been there already).
    Imported,
    /// Block `number` was refused; the blocks before it are imported.
    Failed {
        /// The refused block.
        number: u64,
        /// Why.
        error: ImportError,
    },
    /// Not tried: an earlier run of the same generation failed, so this one
    /// cannot extend the chain.
    Skipped,
}

/// The import thread's answer to one run, in the order the runs were handed over.
#[derive(Debug)]
pub struct ImportReport {
    /// The generation the run was handed over with.
    pub generation: u64,
    /// Blocks in the run.
    pub blocks: usize,
    /// The chain's head after the run.
    pub head: Header,
    /// What happened.
    pub outcome: RunOutcome,
}

/// The node loop's handle on the import thread.
#[derive(Debug)]
pub struct SyncImporter {
    jobs: Option<SyncSender<Job>>,
    reports: mpsc::Receiver<ImportReport>,
    queued_blocks: usize,
    queued_runs: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SyncImporter {
    /// Starts the import thread on `chain`.
    pub fn start(chain: Arc<RwLock<Importer>>) -> std::io::Result<Self> {
        let (jobs, job_rx) = std::sync::mpsc::sync_channel(MAX_QUEUED_RUNS);
        let (report_tx, reports) = mpsc::channel(MAX_QUEUED_RUNS);
        let thread = std::thread::Builder::new()
            .name("sync-import".into())
            .spawn(move || import_loop(&chain, &job_rx, &report_tx))?;
        Ok(Self {
            jobs: Some(jobs),
            reports,
            queued_blocks: 0,
            queued_runs: 0,
            thread: Some(thread),
        })
    }

    /// How many more blocks may be handed over now.
    pub fn room(&self) -> usize {
        if self.queued_runs >= MAX_QUEUED_RUNS {
            return 0;
        }
        MAX_QUEUED_BLOCKS.saturating_sub(self.queued_blocks)
    }

    /// Blocks handed over and not yet reported.
    pub fn queued_blocks(&self) -> usize {
        self.queued_blocks
    }

    /// Whether every run handed over has been reported.
    pub fn is_idle(&self) -> bool {
        self.queued_runs == 0
    }

    /// Hands a run over (at most [`Self::room`] blocks, consecutive, each
    /// extending the one before).
    pub fn submit(&mut self, generation: u64, blocks: Vec<Block>) {
        assert!(
            !blocks.is_empty() && blocks.len() <= self.room(),
            "run within the room"
        );
        self.queued_blocks += blocks.len();
        self.queued_runs += 1;
        let jobs = self.jobs.as_ref().expect("open until dropped");
        match jobs.try_send(Job { generation, blocks }) {
            Ok(()) => {}
            // The thread ended (a panic); `next_report` says so.
            Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => unreachable!("at most MAX_QUEUED_RUNS runs queued"),
        }
    }

    /// The next report; `None` if the import thread is gone (it panicked).
    pub async fn next_report(&mut self) -> Option<ImportReport> {
        let report = self.reports.recv().await?;
        self.queued_blocks -= report.blocks;
        self.queued_runs -= 1;
        Some(report)
    }
}

impl Drop for SyncImporter {
    /// Lets the thread finish its run (so nothing writes to the store once
    /// the node is gone) and waits for it.
    fn drop(&mut self) {
        self.jobs.take();
        self.reports.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn import_loop(
    chain: &RwLock<Importer>,
    jobs: &Receiver<Job>,
    reports: &mpsc::Sender<ImportReport>,
) {
    let mut failed_generation = None;
    while let Ok(Job { generation, blocks }) = jobs.recv() {
        let count = blocks.len();
        let mut chain = chain.write().expect("lock");
        let outcome = if failed_generation == Some(generation) {
            RunOutcome::Skipped
        } else {
            // Blocks the engine finalized and stored meanwhile are not new.
            let known = chain.head().number;
            let fresh = blocks
                .iter()
                .position(|b| b.header.number > known)
                .unwrap_or(blocks.len());
            match chain.import_chain(&blocks[fresh..]) {
                Ok(_) => RunOutcome::Imported,
                Err(e) => {
                    failed_generation = Some(generation);
                    RunOutcome::Failed {
                        number: blocks[fresh + e.index].header.number,
                        error: e.error,
                    }
                }
            }
        };
        let head = chain.head().clone();
        drop(chain);
        let report = ImportReport {
            generation,
            blocks: count,
            head,
            outcome,
        };
        if reports.blocking_send(report).is_err() {
            return;
        }
    }
}
