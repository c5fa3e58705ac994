//! Crash safety with real process kills: a writer process imports blocks,
//! is killed with SIGKILL at arbitrary points, and after every kill the
//! store reopens consistent, with every block it reported committed.

use luxtensor_full::Importer;
use luxtensor_tests::Validators;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const KILLS: u64 = 8;

#[test]
fn store_survives_repeated_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Validators::devnet(4).spec;
    let mut last_reported = 0u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..KILLS {
        // A fresh number of commits to wait for before the kill (1..=4).
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let commits_before_kill = 1 + (seed >> 33) % 4;

        let mut child = Command::new(env!("CARGO_BIN_EXE_luxtensor-crash-writer"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer");
        let (lines_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        for _ in 0..commits_before_kill {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("round {round}: the writer reported nothing for 60 s"))
                .unwrap();
            let number: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
            assert_eq!(
                number,
                last_reported + 1,
                "round {round}: resumed where it stopped"
            );
            last_reported = number;
        }
        child.kill().expect("SIGKILL the writer"); // kills mid-way through the next block
        child.wait().unwrap();

        let mut importer = Importer::open(spec.clone(), dir.path().join("db")).unwrap();
        let head = importer.head().clone();
        assert!(
            head.number == last_reported || head.number == last_reported + 1,
            "round {round}: head {} after reporting {last_reported}",
            head.number
        );
        last_reported = head.number;
        let store = importer.store();
        let mut child_hash = head.hash();
        for number in (0..=head.number).rev() {
            let block = store
                .block_by_number(number)
                .unwrap()
                .expect("every canonical block");
            assert_eq!(
                block.hash(),
                child_hash,
                "round {round}: chain links at {number}"
            );
            assert!(
                store.receipts(&block.hash()).unwrap().is_some(),
                "receipts of {number}"
            );
            child_hash = block.header.parent_hash;
        }
        let finalized = store.finalized_hash().unwrap().expect("a finalized marker");
        assert!(store.block(&finalized).unwrap().is_some());
        let mut state = store.load_state(&spec).unwrap();
        assert_eq!(
            state.state_root(),
            head.state_root,
            "round {round}: state matches the head"
        );
        let _ = importer.validator_set(head.epoch).unwrap();
    }
    assert!(last_reported >= KILLS, "at least one block per round");
}
