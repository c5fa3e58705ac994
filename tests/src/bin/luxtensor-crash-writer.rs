//! `luxtensor-crash-writer DB_DIR`: imports devnet blocks of 50 transfers
//! into the store at DB_DIR forever, printing `committed NUMBER HASH` after
//! each commit. The crash test kills it with SIGKILL at arbitrary points and
//! checks what survives; each run resumes from the stored head.

use alloy_primitives::{Address, U256};
use luxtensor_full::Importer;
use luxtensor_light::chain_spec::DEV_ACCOUNTS;
use luxtensor_tests::Validators;
use luxtensor_tests::producer::Producer;
use luxtensor_tests::wallet::{dev_signer, transfer};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: luxtensor-crash-writer DB_DIR");
        return ExitCode::from(2);
    };
    let validators = Validators::devnet(4);
    let spec = validators.spec.clone();
    let mut importer = match Importer::open(spec.clone(), std::path::Path::new(&dir).join("db")) {
        Ok(importer) => importer,
        Err(e) => {
            eprintln!("cannot open the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut producer = Producer::resume(validators, &mut importer);
    let senders: Vec<_> = (0..5).map(dev_signer).collect();
    let mut stdout = std::io::stdout();
    loop {
        let txs = (0..50)
            .map(|i| {
                let from = DEV_ACCOUNTS[i % 5];
                let nonce = producer.state().account(&from).nonce + (i / 5) as u64;
                let to = Address::with_last_byte(i as u8);
                (
                    transfer(&senders[i % 5], spec.chain_id, nonce, to, U256::from(1)),
                    from,
                )
            })
            .collect();
        let block = producer.next_block(txs);
        if let Err(e) = importer.import(&block) {
            eprintln!("import failed: {e}");
            return ExitCode::FAILURE;
        }
        if writeln!(stdout, "committed {} {}", block.header.number, block.hash()).is_err() {
            return ExitCode::SUCCESS; // the reader went away
        }
        let _ = stdout.flush();
    }
}
