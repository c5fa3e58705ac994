//! `luxtensor-bench <scenario> [--quick]`: runs a named benchmark scenario and
//! prints one JSON line per figure. Build it in release mode:
//! `cargo run --release -p luxtensor-tests --bin luxtensor-bench -- qc-verify`.

use luxtensor_tests::bench::{interleaved_median_us, median_us, report};
use std::hint::black_box;
use std::process::ExitCode;

const SCENARIOS: &[(&str, &str)] = &[
    (
        "light",
        "light client: catch-up, bytes per epoch, head verification, follow RSS, binary size",
    ),
    (
        "proxy",
        "verified proxy: cached rps vs nginx proxy_cache, miss overhead, 10,000-client fan-out",
    ),
    (
        "qc-verify",
        "QC verification: single, batched, and its parts",
    ),
    (
        "rpc",
        "JSON-RPC: HTTP request rates, newHeads fan-out, memory",
    ),
    (
        "sync",
        "range sync from 1 and 4 throttled peers, and unthrottled (processes)",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let scenario = args.iter().find(|a| !a.starts_with("--"));
    match scenario.map(String::as_str) {
        Some("qc-verify") => qc_verify(quick),
        Some("import") => import(quick),
        Some("consensus") => consensus(quick),
        Some("light") => luxtensor_tests::light_bench::run(quick),
        Some("sync") => luxtensor_tests::sync_bench::run(quick),
        Some("proxy") => luxtensor_tests::proxy_bench::run(quick),
        Some("rpc") => luxtensor_tests::rpc_bench::run(quick),
        Some("rpc-clients") => luxtensor_tests::rpc_bench::clients(&args[1..]),
        other => {
            if let Some(name) = other {
                eprintln!("unknown scenario `{name}`");
            }
            eprintln!("usage: luxtensor-bench <scenario> [--quick]\n\nscenarios:");
            for (name, what) in SCENARIOS {
                eprintln!("  {name:<12} {what}");
            }
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

/// 100 validators, QCs of 67 signers, keys decoded once in the set.
fn qc_verify(quick: bool) {
    use blst::min_pk::{AggregatePublicKey, Signature};
    use luxtensor_light::{B256, bls, qc::verify_batch};

    const BENCH: &str = "qc-verify";
    let (rounds, iters) = if quick { (3, 5) } else { (7, 40) };
    let batch_len = if quick { 16 } else { 128 };
    let v = luxtensor_tests::Validators::devnet(100);
    let chain_id = v.spec.chain_id;
    let signers: Vec<usize> = (0..67).collect();

    // The physical floor: one signature, one key, one message, all decoded.
    let root = bls::vote_signing_root(chain_id, 1, &B256::repeat_byte(1));
    let sig = Signature::from_bytes(v.keys[0].sign(&root).as_slice()).unwrap();
    let pk = &v.set.decoded_keys()[0];
    let qc = v.qc(1, B256::repeat_byte(1), &signers);
    let qcs: Vec<_> = (0..batch_len as u64)
        .map(|s| v.qc(s, B256::repeat_byte(s as u8), &signers))
        .collect();
    let items: Vec<_> = qcs.iter().map(|q| (q, &v.set)).collect();
    let seed = std::cell::Cell::new(0u8);
    let next_seed = || {
        seed.set(seed.get().wrapping_add(1));
        [seed.get(); 32]
    };

    // Bare verify and the QC check alternate, so their ratio is measured
    // under the same machine load.
    let [bare, single] = interleaved_median_us(
        rounds,
        iters,
        &mut [
            &mut || {
                let r = sig.verify(true, root.as_slice(), bls::SIGNATURE_DST, &[], pk, false);
                assert_eq!(black_box(r), blst::BLST_ERROR::BLST_SUCCESS);
            },
            &mut || {
                black_box(qc.verify(&v.set, chain_id)).unwrap();
            },
        ],
    )[..] else {
        unreachable!()
    };
    report(BENCH, "blst_verify_us", bare, "us");
    report(BENCH, "single_us", single, "us");
    report(BENCH, "single_over_blst_verify", single / bare, "ratio");

    // The batch against the same QCs checked one by one, interleaved; then
    // the same batch split over two threads (each half is an independent
    // batch; the core crate spawns no threads of its own).
    let [one_by_one, batch, batch_2cores] = interleaved_median_us(
        rounds,
        1,
        &mut [
            &mut || {
                for (qc, set) in &items {
                    black_box(qc.verify(set, chain_id)).unwrap();
                }
            },
            &mut || {
                black_box(verify_batch(&items, chain_id, next_seed())).unwrap();
            },
            &mut || {
                let (a, b) = items.split_at(items.len() / 2);
                let (seed_a, seed_b) = (next_seed(), next_seed());
                std::thread::scope(|scope| {
                    let other = scope.spawn(|| verify_batch(b, chain_id, seed_b));
                    verify_batch(a, chain_id, seed_a).unwrap();
                    other.join().unwrap().unwrap();
                });
            },
        ],
    )[..] else {
        unreachable!()
    };
    let n = batch_len as f64;
    report(
        BENCH,
        &format!("batch{batch_len}_us_per_qc"),
        batch / n,
        "us",
    );
    report(BENCH, "batch_over_single", batch / one_by_one, "ratio");
    report(
        BENCH,
        &format!("batch{batch_len}_2cores_us_per_qc"),
        batch_2cores / n,
        "us",
    );

    // What a batch cannot avoid per QC: hashing the message to G2, one
    // Miller loop, the signature's subgroup check (plus decoding and key
    // aggregation, reported below). Their sum is the batch's floor.
    let [hash_to_g2, miller_loop, subgroup_check] =
        batch_floor_parts(&sig, pk, &root, rounds, iters);
    report(BENCH, "hash_to_g2_us", hash_to_g2, "us");
    report(BENCH, "miller_loop_us", miller_loop, "us");
    report(BENCH, "sig_subgroup_check_us", subgroup_check, "us");

    let keys: Vec<_> = signers.iter().map(|&i| &v.set.decoded_keys()[i]).collect();
    let aggregate = median_us(rounds, iters * 10, || {
        black_box(AggregatePublicKey::aggregate(&keys, false).unwrap());
    });
    report(BENCH, "aggregate_pubkeys_us", aggregate, "us");

    let compressed = v.set.validators()[1].public_key;
    let decode = median_us(rounds, iters * 10, || {
        black_box(bls::decode_public_key(&compressed).unwrap());
    });
    report(BENCH, "decode_pubkey_us", decode, "us");

    let sig_bytes = qc.signature;
    let decode_sig = median_us(rounds, iters * 10, || {
        black_box(bls::decode_signature(&sig_bytes).unwrap());
    });
    report(BENCH, "decode_signature_us", decode_sig, "us");
}

/// Times the parts of a pairing check that every QC in a batch still pays.
/// Uses blst's raw bindings, which the safe API does not expose one by one.
fn batch_floor_parts(
    sig: &blst::min_pk::Signature,
    pk: &blst::min_pk::PublicKey,
    root: &luxtensor_light::B256,
    rounds: usize,
    iters: usize,
) -> [f64; 3] {
    use blst::{blst_fp12, blst_p1_affine, blst_p2, blst_p2_affine, blst_p2_to_affine};
    let dst = luxtensor_light::bls::SIGNATURE_DST;
    let mut hashed = blst_p2::default();
    let mut hashed_affine = blst_p2_affine::default();
    // SAFETY: all pointers are to live, initialised values of the right types.
    unsafe {
        blst::blst_hash_to_g2(
            &mut hashed,
            root.as_ptr(),
            32,
            dst.as_ptr(),
            dst.len(),
            std::ptr::null(),
            0,
        );
        blst_p2_to_affine(&mut hashed_affine, &hashed);
    }
    let pk_affine: &blst_p1_affine = pk.into();
    let v = interleaved_median_us(
        rounds,
        iters,
        &mut [
            &mut || unsafe {
                let mut out = blst_p2::default();
                blst::blst_hash_to_g2(
                    &mut out,
                    root.as_ptr(),
                    32,
                    dst.as_ptr(),
                    dst.len(),
                    std::ptr::null(),
                    0,
                );
                black_box(out);
            },
            &mut || unsafe {
                let mut out = blst_fp12::default();
                blst::blst_miller_loop(&mut out, &hashed_affine, pk_affine);
                black_box(out);
            },
            &mut || {
                assert!(black_box(sig.subgroup_check()));
            },
        ],
    );
    [v[0], v[1], v[2]]
}

/// Imports pre-built blocks of 100 transfers each (20 senders) into a fresh
/// on-disk store: parent QC and proposer seal verified, senders recovered on
/// both cores, executed, state root updated, committed with fsync.
fn import(quick: bool) {
    use alloy_primitives::{Address, U256};
    use luxtensor_full::{ChainState, ImportTimings, Importer};
    use luxtensor_light::chain_spec::DEV_ACCOUNTS;
    use luxtensor_tests::producer::Producer;
    use luxtensor_tests::wallet::{dev_signer, transfer};
    use std::time::Instant;

    const BENCH: &str = "import";
    const TXS_PER_BLOCK: usize = 100;
    let blocks = if quick { 8 } else { 60 };
    let validators = luxtensor_tests::Validators::devnet(4);
    let spec = validators.spec.clone();
    let signers: Vec<_> = (0..20).map(dev_signer).collect();
    let mut producer = Producer::new(validators);
    let chain: Vec<_> = (0..blocks)
        .map(|_| {
            let txs = (0..TXS_PER_BLOCK)
                .map(|i| {
                    let from = DEV_ACCOUNTS[i % 20];
                    let nonce = producer.state().account(&from).nonce + (i / 20) as u64;
                    let to = Address::with_last_byte((i % 251) as u8);
                    (
                        transfer(&signers[i % 20], spec.chain_id, nonce, to, U256::from(1)),
                        from,
                    )
                })
                .collect();
            producer.next_block(txs)
        })
        .collect();
    let transfers: usize = chain.iter().map(|b| b.transactions.len()).sum();

    // Sync path: runs of 16 blocks (one signature batch per run); then the
    // gossip path: one block at a time. Same blocks, fresh stores.
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut importer = Importer::open(spec.clone(), dir.path().join("run")).expect("open store");
    let mut total = ImportTimings::default();
    let start = Instant::now();
    for run in chain.chunks(16) {
        for t in importer
            .import_chain(run)
            .expect("valid blocks")
            .iter()
            .map(|i| i.timings)
        {
            total.verify_us += t.verify_us;
            total.execute_us += t.execute_us;
            total.commit_us += t.commit_us;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut single = Importer::open(spec, dir.path().join("single")).expect("open store");
    let single_start = Instant::now();
    for block in &chain {
        single.import(block).expect("valid block");
    }
    let single_seconds = single_start.elapsed().as_secs_f64();

    report(
        BENCH,
        "blocks_per_s",
        chain.len() as f64 / seconds,
        "blocks/s",
    );
    report(BENCH, "transfers_per_s", transfers as f64 / seconds, "tx/s");
    report(
        BENCH,
        "transfers_per_s_one_by_one",
        transfers as f64 / single_seconds,
        "tx/s",
    );
    let n = chain.len() as f64;
    report(
        BENCH,
        "verify_and_recover_us_per_block",
        total.verify_us as f64 / n,
        "us",
    );
    report(
        BENCH,
        "execute_us_per_block",
        total.execute_us as f64 / n,
        "us",
    );
    report(
        BENCH,
        "commit_us_per_block",
        total.commit_us as f64 / n,
        "us",
    );

    let sample: Vec<_> = chain
        .iter()
        .flat_map(|b| b.transactions.iter())
        .take(200)
        .collect();
    let ecrecover = median_us(5, 1, || {
        for tx in &sample {
            black_box(tx.recover_sender().unwrap());
        }
    }) / sample.len() as f64;
    report(BENCH, "ecrecover_us", ecrecover, "us");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    report(
        BENCH,
        "ecrecover_limit_tx_per_s",
        cores * 1e6 / ecrecover,
        "tx/s",
    );

    // State root of a block touching 100 accounts in a state of 100,000.
    let accounts = if quick { 20_000u64 } else { 100_000 };
    let mut state = ChainState::from_parts(
        (0..accounts).map(|i| {
            let mut bytes = [0u8; 20];
            bytes[..8].copy_from_slice(&i.to_be_bytes());
            let account = luxtensor_light::Account {
                balance: U256::from(i + 1),
                ..Default::default()
            };
            (Address::from(bytes), account)
        }),
        producer.state().rotation().clone(),
    );
    let full_start = Instant::now();
    state.state_root();
    let full_ms = full_start.elapsed().as_secs_f64() * 1e3;
    let mut round = 0u64;
    let incremental_ms = median_us(5, 1, || {
        round += 1;
        for i in 0..100u64 {
            let mut bytes = [0u8; 20];
            bytes[..8].copy_from_slice(&(i * 997 % accounts).to_be_bytes());
            state.credit(Address::from(bytes), U256::from(round));
        }
        black_box(state.state_root());
    }) / 1e3;
    let label = if quick {
        "state_root_ms_20k"
    } else {
        "state_root_ms_100k"
    };
    report(BENCH, label, incremental_ms, "ms");
    report(BENCH, &format!("{}_full_rebuild", label), full_ms, "ms");
}

/// The simulator on a healthy 4-validator network (finality lag), then on
/// 10 validators with delays, loss, a partition, a crash and byzantine
/// validators (simulated slots per second of wall time).
fn consensus(quick: bool) {
    use luxtensor_tests::sim::{Byzantine, SimConfig, Simulation};
    use std::time::Instant;

    const BENCH: &str = "consensus";
    let healthy = SimConfig {
        fault_slots: 8,
        settle_slots: if quick { 24 } else { 64 },
        ..SimConfig::quiet(1, 4)
    };
    let outcome = Simulation::new(healthy)
        .run()
        .expect("a healthy network keeps every invariant");
    report(
        BENCH,
        "finality_lag_slots",
        outcome.finality_lag_slots,
        "slots",
    );

    let faulty = SimConfig {
        seed: 2,
        validators: 10,
        fault_slots: if quick { 16 } else { 40 },
        settle_slots: if quick { 16 } else { 40 },
        delay_ms: (5, 300),
        loss_percent: 3,
        partition: true,
        crashes: 1,
        byzantine: vec![
            (9, Byzantine::Equivocate),
            (8, Byzantine::DoubleVote),
            (7, Byzantine::WithholdVotes),
        ],
        staking: true,
        ..SimConfig::random(2)
    };
    let start = Instant::now();
    let outcome = Simulation::new(faulty)
        .run()
        .expect("the faulty network keeps every invariant");
    let seconds = start.elapsed().as_secs_f64();
    report(
        BENCH,
        "sim_slots_per_s",
        outcome.slots as f64 / seconds,
        "slots/s",
    );
    report(
        BENCH,
        "sim_seconds_per_10k_seeds_of_64_slots",
        10_000.0 * 64.0 / (outcome.slots as f64 / seconds) / 2.0,
        "s",
    );
}
