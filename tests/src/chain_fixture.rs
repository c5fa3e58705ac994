//! Pre-built chains for sync tests and benchmarks: `N` blocks of `K`
//! transfers each, made by the [`Producer`] and imported with
//! [`Importer::import_chain`] into a node data directory.
//!
//! Build once into a template directory ([`ChainFixture::build`], or
//! [`ChainFixture::cached`] to reuse a template across runs), then give
//! each node its own copy with [`ChainFixture::install`]. The template holds
//! `chain.json` (the spec, for `luxtensor-node run --chain`) and
//! `chain.redb` (the store `Node::start` opens in its data directory).
//!
//! Timing: the producer puts block `n` in slot `n`, with the timestamp
//! `genesis_timestamp + n × slot` ([`luxtensor_light::ChainSpec::slot_timestamp`]).
//! The spec's genesis is set so that the last block's slot is about now:
//! nothing in the chain lies in the future for a node that checks it, and a
//! node started on it without a validator key only follows and serves.

use crate::Validators;
use crate::producer::Producer;
use crate::wallet::{dev_signer, transfer};
use alloy_primitives::{Address, B256, U256};
use luxtensor_full::Importer;
use luxtensor_light::chain_spec::DEV_ACCOUNTS;
use luxtensor_light::{ChainSpec, SignedTransaction};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// File name of the store in a node's data directory.
pub const STORE_FILE: &str = "chain.redb";
/// File name of the chain spec in the template directory.
pub const SPEC_FILE: &str = "chain.json";
/// Records what a template holds, so that [`ChainFixture::cached`] can reuse it.
const META_FILE: &str = "fixture.json";
/// Bumped whenever the chain's encoding or rules change, so that a template
/// built by older code is built again (its state roots would not match).
const FIXTURE_VERSION: u64 = 2;

/// Blocks produced and imported in one [`Importer::import_chain`] call.
const RUN: usize = 64;

/// A chain built into a template directory.
#[derive(Debug, Clone)]
pub struct ChainFixture {
    /// The template directory (`chain.json`, `chain.redb`).
    pub dir: PathBuf,
    /// The chain spec.
    pub spec: ChainSpec,
    /// Block hashes by number (`hashes[0]` is genesis).
    pub hashes: Vec<B256>,
    /// Transfers in each block.
    pub transfers_per_block: usize,
}

impl ChainFixture {
    /// Builds `blocks` blocks of `transfers_per_block` transfers (from the
    /// 20 funded development accounts) on a 4-validator devnet into `dir`.
    pub fn build(dir: &Path, blocks: u64, transfers_per_block: usize) -> Self {
        std::fs::create_dir_all(dir).expect("create the template directory");
        let _ = std::fs::remove_file(dir.join(STORE_FILE));
        let _ = std::fs::remove_file(dir.join(META_FILE));
        let mut validators = Validators::devnet(4);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let span = blocks * validators.spec.slot_duration_ms / 1000;
        validators.spec.genesis_timestamp = now.saturating_sub(span + 1);
        let spec = validators.spec.clone();
        spec.validate().expect("a valid fixture spec");
        let mut importer = Importer::open(spec.clone(), dir.join(STORE_FILE)).expect("open store");
        let mut producer = Producer::new(validators);
        let mut hashes = vec![spec.genesis_header().hash()];
        let signers: Vec<_> = (0..DEV_ACCOUNTS.len() as u32).map(dev_signer).collect();
        let mut nonces: Vec<u64> = DEV_ACCOUNTS
            .iter()
            .map(|a| producer.state().account(a).nonce)
            .collect();
        let mut pending = std::collections::VecDeque::new();
        let mut next = 1u64;
        while next <= blocks {
            let count = (blocks + 1 - next).min(RUN as u64) as usize;
            // Sign the run's transfers on all cores (nonces tracked here:
            // every transfer is included, in order).
            let plans: Vec<Vec<(usize, u64)>> = (0..count)
                .map(|_| {
                    (0..transfers_per_block)
                        .map(|i| {
                            let sender = i % DEV_ACCOUNTS.len();
                            let nonce = nonces[sender];
                            nonces[sender] += 1;
                            (sender, nonce)
                        })
                        .collect()
                })
                .collect();
            pending.extend(
                sign_all(&signers, spec.chain_id, &plans)
                    .into_iter()
                    .flatten(),
            );
            let mut run = Vec::with_capacity(count);
            for _ in 0..count {
                let offered: Vec<_> = pending.iter().take(transfers_per_block).cloned().collect();
                let block = producer.next_block(offered);
                // The block after an epoch's ending block is empty: its
                // transfers (nonces in order) go into the next block.
                let included = block.transactions.len();
                assert!(
                    included == 0 || included == transfers_per_block.min(pending.len()),
                    "block {}: {included} of {transfers_per_block} transfers included",
                    block.header.number
                );
                pending.drain(..included);
                hashes.push(block.hash());
                run.push(block);
            }
            importer
                .import_chain(&run)
                .expect("the producer's blocks import");
            next += count as u64;
        }
        assert_eq!(importer.head().number, blocks);
        drop(importer);
        let json = serde_json::to_string_pretty(&spec).expect("spec serializes");
        std::fs::write(dir.join(SPEC_FILE), json).expect("write chain.json");
        let meta = serde_json::json!({
            "version": FIXTURE_VERSION,
            "blocks": blocks,
            "transfers_per_block": transfers_per_block,
            "hashes": hashes,
        });
        std::fs::write(dir.join(META_FILE), meta.to_string()).expect("write fixture.json");
        Self {
            dir: dir.to_path_buf(),
            spec,
            hashes,
            transfers_per_block,
        }
    }

    /// The template in `dir` if it holds the same chain size, else a fresh
    /// [`Self::build`] (benchmarks reuse a chain that takes minutes to make).
    pub fn cached(dir: &Path, blocks: u64, transfers_per_block: usize) -> Self {
        match Self::load(dir) {
            Some(f) if f.blocks() == blocks && f.transfers_per_block == transfers_per_block => f,
            _ => Self::build(dir, blocks, transfers_per_block),
        }
    }

    fn load(dir: &Path) -> Option<Self> {
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(META_FILE)).ok()?).ok()?;
        let spec =
            ChainSpec::from_json_str(&std::fs::read_to_string(dir.join(SPEC_FILE)).ok()?).ok()?;
        let hashes: Vec<B256> = serde_json::from_value(meta.get("hashes")?.clone()).ok()?;
        if meta.get("version")?.as_u64()? != FIXTURE_VERSION {
            return None;
        }
        let transfers_per_block = meta.get("transfers_per_block")?.as_u64()? as usize;
        dir.join(STORE_FILE).is_file().then(|| Self {
            dir: dir.to_path_buf(),
            spec,
            hashes,
            transfers_per_block,
        })
    }

    /// Number of the last block.
    pub fn blocks(&self) -> u64 {
        self.hashes.len() as u64 - 1
    }

    /// Hash of the last block.
    pub fn head_hash(&self) -> B256 {
        *self.hashes.last().expect("genesis at least")
    }

    /// The chain-spec file, for `--chain`.
    pub fn spec_file(&self) -> PathBuf {
        self.dir.join(SPEC_FILE)
    }

    /// Copies the store into `data_dir` (created if needed), so that a node
    /// started there holds the whole chain.
    pub fn install(&self, data_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(data_dir)?;
        std::fs::copy(self.dir.join(STORE_FILE), data_dir.join(STORE_FILE))?;
        Ok(())
    }
}

/// Signs each block's planned `(sender, nonce)` transfers, on all cores.
fn sign_all(
    signers: &[alloy_signer_local::PrivateKeySigner],
    chain_id: u64,
    plans: &[Vec<(usize, u64)>],
) -> Vec<Vec<(SignedTransaction, Address)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = plans.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|plan| {
                            plan.iter()
                                .enumerate()
                                .map(|(i, &(sender, nonce))| {
                                    let to = Address::with_last_byte((i % 251) as u8);
                                    let tx = transfer(
                                        &signers[sender],
                                        chain_id,
                                        nonce,
                                        to,
                                        U256::from(1),
                                    );
                                    (tx, DEV_ACCOUNTS[sender])
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signing thread"))
            .collect()
    })
}
