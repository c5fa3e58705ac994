//! The header rulebook: a generated chain passes, and each mutation breaks
//! exactly the rule it targets.

use luxtensor_light::{
    B256, CertifiedHeader, Header, HeaderError, QcError, QuorumCert, verify_header, verify_link,
};
use luxtensor_tests::Validators;

fn setup() -> (Validators, Vec<CertifiedHeader>) {
    let v = Validators::devnet(4);
    let chain = v.certified_chain(6, 3);
    (v, chain)
}

/// Re-seals a modified header with the key of the proposer it names.
fn reseal(v: &Validators, header: Header) -> luxtensor_light::SignedHeader {
    let key = &v.keys[header.proposer_index as usize];
    header.sign(key, v.spec.chain_id)
}

#[test]
fn generated_chain_verifies_end_to_end() {
    let (v, chain) = setup();
    let genesis = v.spec.genesis_header();
    let mut parent = &genesis;
    for certified in &chain {
        verify_header(&certified.header, &v.set, &v.spec).unwrap();
        verify_link(&certified.header, parent, &v.set, v.spec.chain_id).unwrap();
        certified.verify(&v.set, &v.spec).unwrap();
        parent = &certified.header.header;
    }
}

#[test]
fn wrong_proposer_is_refused() {
    let (v, chain) = setup();
    let mut h = chain[2].header.header.clone();
    h.proposer_index = (h.proposer_index + 1) % 4;
    let sealed = reseal(&v, h);
    assert!(matches!(
        verify_header(&sealed, &v.set, &v.spec),
        Err(HeaderError::WrongProposer { .. })
    ));
}

#[test]
fn seal_by_another_key_is_refused() {
    let (v, chain) = setup();
    let h = chain[2].header.header.clone();
    let other = (h.proposer_index as usize + 1) % 4;
    let forged = h.sign(&v.keys[other], v.spec.chain_id);
    assert_eq!(
        verify_header(&forged, &v.set, &v.spec),
        Err(HeaderError::BadSeal(QcError::BadSignature))
    );
    // A seal made for another chain id is refused too.
    let h = chain[2].header.header.clone();
    let foreign = h.sign(
        &v.keys[chain[2].header.proposer_index as usize],
        v.spec.chain_id + 1,
    );
    assert_eq!(
        verify_header(&foreign, &v.set, &v.spec),
        Err(HeaderError::BadSeal(QcError::BadSignature))
    );
}

#[test]
fn wrong_timestamp_and_early_epoch_are_refused() {
    let (v, chain) = setup();
    let mut h = chain[1].header.header.clone();
    h.timestamp += 1;
    assert!(matches!(
        verify_header(&reseal(&v, h), &v.set, &v.spec),
        Err(HeaderError::WrongTimestamp { .. })
    ));
    let mut h = chain[1].header.header.clone();
    h.epoch = 1; // slot 2 is in epoch 0 with 8-slot epochs
    assert!(matches!(
        verify_header(&reseal(&v, h), &v.set, &v.spec),
        Err(HeaderError::EpochAhead { epoch: 1, slot: 2 })
    ));
    let mut h = chain[1].header.header.clone();
    h.gas_used = h.gas_limit + 1;
    assert!(matches!(
        verify_header(&reseal(&v, h), &v.set, &v.spec),
        Err(HeaderError::GasOverLimit { .. })
    ));
}

#[test]
fn broken_links_are_refused() {
    let (v, chain) = setup();
    let parent = &chain[2].header.header;
    let child = &chain[3].header.header;
    let id = v.spec.chain_id;

    let mut h = child.clone();
    h.number += 1;
    assert!(matches!(
        verify_link(&h, parent, &v.set, id),
        Err(HeaderError::NotNextNumber { .. })
    ));

    let mut h = child.clone();
    h.parent_hash = B256::repeat_byte(1);
    assert!(matches!(
        verify_link(&h, parent, &v.set, id),
        Err(HeaderError::ParentHashMismatch { .. })
    ));

    let mut h = child.clone();
    h.slot = parent.slot;
    assert!(matches!(
        verify_link(&h, parent, &v.set, id),
        Err(HeaderError::SlotNotIncreasing { .. })
    ));

    let mut h = child.clone();
    h.epoch = parent.epoch + 2;
    assert!(matches!(
        verify_link(&h, parent, &v.set, id),
        Err(HeaderError::EpochJump { .. })
    ));

    let mut h = child.clone();
    h.next_validator_set_hash = B256::repeat_byte(2);
    assert_eq!(
        verify_link(&h, parent, &v.set, id),
        Err(HeaderError::SetCommitmentBroken)
    );

    // At an epoch boundary the new set must be the one the parent announced.
    let mut h = child.clone();
    h.epoch = parent.epoch + 1;
    h.validator_set_hash = B256::repeat_byte(3);
    assert_eq!(
        verify_link(&h, parent, &v.set, id),
        Err(HeaderError::SetCommitmentBroken)
    );
    let mut h = child.clone();
    h.epoch = parent.epoch + 1;
    h.validator_set_hash = parent.next_validator_set_hash;
    assert!(verify_link(&h, parent, &v.set, id).is_ok());
}

#[test]
fn parent_qc_must_certify_the_parent_with_a_quorum() {
    let (v, chain) = setup();
    let parent = &chain[2].header.header;
    let id = v.spec.chain_id;

    let mut h = chain[3].header.header.clone();
    h.parent_qc = chain[1].qc.clone(); // certifies the grandparent
    assert!(matches!(
        verify_link(&h, parent, &v.set, id),
        Err(HeaderError::ParentQcMismatch { .. })
    ));

    let mut h = chain[3].header.header.clone();
    h.parent_qc = v.qc(parent.slot, parent.hash(), &[0, 1]);
    assert!(matches!(
        verify_link(&h, parent, &v.set, id),
        Err(HeaderError::BadParentQc(QcError::InsufficientStake { .. }))
    ));

    // The child of genesis carries the empty placeholder, nothing else.
    let genesis = v.spec.genesis_header();
    let mut h = chain[0].header.header.clone();
    assert!(verify_link(&h, &genesis, &v.set, id).is_ok());
    h.parent_qc = v.qc(0, genesis.hash(), &[0, 1, 2]);
    assert!(matches!(
        verify_link(&h, &genesis, &v.set, id),
        Err(HeaderError::ParentQcMismatch { .. })
    ));
    assert_eq!(chain[0].header.parent_qc, QuorumCert::genesis());
}

#[test]
fn certified_header_qc_must_match_the_header() {
    let (v, chain) = setup();
    let mut c = chain[2].clone();
    c.qc = chain[3].qc.clone();
    assert!(matches!(
        c.verify(&v.set, &v.spec),
        Err(HeaderError::QcMismatch { .. })
    ));
    let mut c = chain[2].clone();
    c.qc = v.qc(c.header.slot, c.header.hash(), &[3]);
    assert!(matches!(
        c.verify(&v.set, &v.spec),
        Err(HeaderError::BadQc(QcError::InsufficientStake { .. }))
    ));
}
