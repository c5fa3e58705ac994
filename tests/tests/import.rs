//! Block import end to end: produced blocks import across epoch boundaries,
//! survive a restart, bad blocks change nothing, and staking through a
//! wallet transaction brings a new validator into the set.

use alloy_primitives::{Address, U256};
use luxtensor_full::staking::{STAKING_ADDRESS, stake_calldata};
use luxtensor_full::{ImportError, Importer};
use luxtensor_light::chain_spec::{DEV_ACCOUNTS, TOKEN, devnet_validator_key};
use luxtensor_light::{HeaderError, SignedHeader};
use luxtensor_tests::Validators;
use luxtensor_tests::producer::Producer;
use luxtensor_tests::wallet::{dev_signer, staking_call, transfer};

#[test]
fn chain_imports_across_epochs_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let v = Validators::devnet(4);
    let spec = v.spec.clone();
    let mut producer = Producer::new(v);
    let mut importer = Importer::open(spec.clone(), dir.path().join("db")).unwrap();
    let alice = dev_signer(0);
    let mut finalized = Vec::new();
    let mut epochs = Vec::new();
    for _ in 0..30 {
        let nonce = importer.state().account(&DEV_ACCOUNTS[0]).nonce;
        let tx = transfer(
            &alice,
            spec.chain_id,
            nonce,
            Address::repeat_byte(7),
            U256::from(1),
        );
        let block = producer.next_block(vec![(tx, DEV_ACCOUNTS[0])]);
        let imported = importer.import(&block).unwrap();
        finalized.extend(imported.finalized);
        epochs.extend(imported.new_epoch);
    }
    assert_eq!(importer.head().number, 30);
    assert_eq!(
        epochs,
        vec![1, 2, 3],
        "8-slot epochs: three transitions in 30 slots"
    );
    assert!(
        finalized.len() >= 25,
        "two-chain finality follows the head: {}",
        finalized.len()
    );
    let head = importer.head().clone();
    assert_eq!(
        importer.store().finalized_hash().unwrap(),
        finalized.last().copied()
    );
    // The blocks right after each ending block (slots 8, 16, 24) carry no transactions.
    assert_eq!(
        importer.state().account(&Address::repeat_byte(7)).balance,
        U256::from(27)
    );
    for empty in [8, 16, 24] {
        assert!(
            importer
                .store()
                .block_by_number(empty)
                .unwrap()
                .unwrap()
                .transactions
                .is_empty()
        );
    }

    drop(importer);
    let mut reopened = Importer::open(spec.clone(), dir.path().join("db")).unwrap();
    assert_eq!(reopened.head(), &head);
    let block = producer.next_block(vec![]);
    reopened.import(&block).unwrap();
    let stored = reopened.store().block_by_number(31).unwrap().unwrap();
    assert_eq!(stored, block);
    let receipts = reopened.store().receipts(&block.hash()).unwrap().unwrap();
    assert!(receipts.is_empty());
    let first_tx = producer_tx_hash(&reopened, 1);
    assert_eq!(
        reopened
            .store()
            .transaction_location(&first_tx)
            .unwrap()
            .map(|l| l.1),
        Some(0)
    );
}

fn producer_tx_hash(importer: &Importer, number: u64) -> alloy_primitives::B256 {
    importer
        .store()
        .block_by_number(number)
        .unwrap()
        .unwrap()
        .transactions[0]
        .hash()
}

#[test]
fn bad_blocks_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let v = Validators::devnet(4);
    let spec = v.spec.clone();
    let mut producer = Producer::new(v);
    let mut importer = Importer::open(spec.clone(), dir.path().join("db")).unwrap();
    importer.import(&producer.next_block(vec![])).unwrap();
    let good = producer.next_block(vec![]);

    // A forged seal.
    let mut forged = good.clone();
    forged.header = SignedHeader {
        proposer_signature: Default::default(),
        ..forged.header
    };
    assert!(matches!(
        importer.import(&forged),
        Err(ImportError::Header(HeaderError::BadSeal(_)))
    ));
    // A block that does not extend the head.
    let mut orphan = good.clone();
    orphan.header.header.parent_hash = Default::default();
    assert!(matches!(
        importer.import(&orphan),
        Err(ImportError::NotOnHead { .. })
    ));
    assert_eq!(importer.head().number, 1);
    assert_eq!(importer.store().head().unwrap().unwrap().header.number, 1);
    importer.import(&good).unwrap();
    assert_eq!(importer.head().number, 2);
}

#[test]
fn a_wallet_stake_activates_a_new_validator_who_then_proposes() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = Validators::devnet(4);
    let newcomer = devnet_validator_key(4);
    v.keys.push(newcomer.clone());
    let spec = v.spec.clone();
    let mut producer = Producer::new(v);
    let mut importer = Importer::open(spec.clone(), dir.path().join("db")).unwrap();

    let bob = dev_signer(10);
    let calldata = stake_calldata(
        newcomer.public_key().as_slice(),
        newcomer.proof_of_possession(spec.chain_id).as_slice(),
    );
    let stake = staking_call(
        &bob,
        spec.chain_id,
        0,
        STAKING_ADDRESS,
        TOKEN * U256::from(40),
        calldata,
    );
    let block = producer.next_block(vec![(stake, DEV_ACCOUNTS[10])]);
    assert_eq!(block.transactions.len(), 1);
    importer.import(&block).unwrap();
    let receipts = importer.store().receipts(&block.hash()).unwrap().unwrap();
    assert!(receipts[0].status(), "the stake call succeeded");

    let mut proposers = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let block = producer.next_block(vec![]);
        importer.import(&block).unwrap();
        if block.header.epoch >= 2 {
            let set = importer.validator_set(block.header.epoch).unwrap();
            proposers.insert(set.validators()[block.header.proposer_index as usize].owner);
        }
    }
    let set = importer.validator_set(importer.head().epoch).unwrap();
    assert_eq!(set.len(), 5);
    assert!(set.validators().iter().any(|v| v.owner == DEV_ACCOUNTS[10]));
    assert!(
        proposers.contains(&DEV_ACCOUNTS[10]),
        "the newcomer proposes blocks"
    );
}

#[test]
fn runs_import_like_single_blocks_and_stop_at_the_first_bad_block() {
    let v = Validators::devnet(4);
    let spec = v.spec.clone();
    let mut producer = Producer::new(v);
    let alice = dev_signer(0);
    let mut blocks = Vec::new();
    for _ in 0..20 {
        let nonce = producer.state().account(&DEV_ACCOUNTS[0]).nonce;
        let tx = transfer(
            &alice,
            spec.chain_id,
            nonce,
            Address::repeat_byte(3),
            U256::from(2),
        );
        blocks.push(producer.next_block(vec![(tx, DEV_ACCOUNTS[0])]));
    }
    let one_by_one_dir = tempfile::tempdir().unwrap();
    let mut one_by_one = Importer::open(spec.clone(), one_by_one_dir.path().join("db")).unwrap();
    for block in &blocks {
        one_by_one.import(block).unwrap();
    }
    let run_dir = tempfile::tempdir().unwrap();
    let mut run = Importer::open(spec.clone(), run_dir.path().join("db")).unwrap();
    let imported = run.import_chain(&blocks).unwrap();
    assert_eq!(
        imported.len(),
        20,
        "the run crosses epoch boundaries and still imports whole"
    );
    assert_eq!(run.head(), one_by_one.head());
    assert_eq!(
        run.store().finalized_hash().unwrap(),
        one_by_one.store().finalized_hash().unwrap()
    );

    // A forged seal in the middle of a run: the blocks before it are imported.
    let bad_dir = tempfile::tempdir().unwrap();
    let mut bad = Importer::open(spec.clone(), bad_dir.path().join("db")).unwrap();
    let mut forged = blocks.clone();
    forged[12].header.proposer_signature = blocks[11].header.proposer_signature;
    let err = bad.import_chain(&forged).unwrap_err();
    assert_eq!((err.index, err.imported), (12, 12), "{err}");
    assert!(
        matches!(err.error, ImportError::Header(HeaderError::BadSeal(_))),
        "{err}"
    );
    assert_eq!(bad.head().number, 12);
    // The rest imports once the good block arrives.
    bad.import_chain(&blocks[12..]).unwrap();
    assert_eq!(bad.head(), one_by_one.head());
}

/// Re-seals a modified header with the devnet key of the proposer it names.
fn reseal(block: &mut luxtensor_light::Block, edit: impl FnOnce(&mut luxtensor_light::Header)) {
    let mut header = block.header.header.clone();
    edit(&mut header);
    let key = devnet_validator_key(header.proposer_index);
    block.header = header.sign(&key, luxtensor_light::chain_spec::DEVNET_CHAIN_ID);
}

#[test]
fn set_commitments_and_epoch_starts_follow_the_rotation() {
    use luxtensor_full::execution::BlockError;
    let dir = tempfile::tempdir().unwrap();
    let v = Validators::devnet(4);
    let spec = v.spec.clone();
    let mut producer = Producer::new(v);
    let mut importer = Importer::open(spec.clone(), dir.path().join("db")).unwrap();
    // Up to the ending block of epoch 0 (slot 7).
    for _ in 0..7 {
        importer.import(&producer.next_block(vec![])).unwrap();
    }
    assert_eq!(importer.head().slot, 7);

    // Skipping the block that finalizes the ending block: too early for epoch 1.
    let mut early = producer.next_block(vec![]);
    let next_set = producer.state().rotation().next_set_hash();
    reseal(&mut early, |h| {
        h.epoch = 1;
        h.next_validator_set_hash = next_set;
    });
    let err = importer.import(&early).unwrap_err();
    assert!(
        matches!(&err, ImportError::Execution(e) if matches!(**e, BlockError::EpochStartsEarly { epoch: 1 })),
        "{err}"
    );

    // The finalizing block, then epoch 1 with a next set the rotation never chose.
    let mut producer = Producer::resume(Validators::devnet(4), &mut importer);
    importer.import(&producer.next_block(vec![])).unwrap();
    let mut forged = producer.next_block(vec![]);
    assert_eq!(forged.header.epoch, 1);
    reseal(&mut forged, |h| {
        h.next_validator_set_hash = Default::default()
    });
    let err = importer.import(&forged).unwrap_err();
    assert!(
        matches!(&err, ImportError::Execution(e) if matches!(&**e, BlockError::Commitment { field: "next validator set hash", .. })),
        "{err}"
    );
}
