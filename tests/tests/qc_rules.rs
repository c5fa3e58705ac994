//! The QC rule, one broken clause at a time; each case asserts the specific error.

use luxtensor_light::qc::{BatchError, verify_batch};
use luxtensor_light::{
    B256, BlsSignature, CertifiedHeader, QcBuilder, QcError, SignerBitfield, U256,
};
use luxtensor_tests::{Validators, aggregate};

const SLOT: u64 = 7;

fn block() -> B256 {
    B256::repeat_byte(0xab)
}

#[test]
fn valid_qc_returns_signed_stake() {
    let v = Validators::devnet(4);
    let qc = v.qc(SLOT, block(), &[0, 1, 2]);
    assert_eq!(
        qc.verify(&v.set, v.spec.chain_id),
        Ok(v.set.validators()[0].stake * U256::from(3))
    );
}

#[test]
fn stake_of_exactly_two_thirds_is_not_a_quorum() {
    let v = Validators::devnet(6);
    let qc = v.qc(SLOT, block(), &[0, 1, 2, 3]);
    assert!(matches!(
        qc.verify(&v.set, v.spec.chain_id),
        Err(QcError::InsufficientStake { signed, total }) if signed * U256::from(3) == total * U256::from(2)
    ));
}

#[test]
fn sixty_seven_of_a_hundred_pass_and_one_signer_short_fails() {
    let v = Validators::devnet(100);
    let signers: Vec<usize> = (0..67).collect();
    assert!(
        v.qc(SLOT, block(), &signers)
            .verify(&v.set, v.spec.chain_id)
            .is_ok()
    );
    let short = v.qc(SLOT, block(), &signers[..66]);
    assert!(matches!(
        short.verify(&v.set, v.spec.chain_id),
        Err(QcError::InsufficientStake { .. })
    ));
}

#[test]
fn stake_weights_count_not_heads() {
    // One validator with 70% of the stake is a quorum alone; the other three are not.
    let v = Validators::with_stakes(&[70, 10, 10, 10]);
    assert!(
        v.qc(SLOT, block(), &[0])
            .verify(&v.set, v.spec.chain_id)
            .is_ok()
    );
    assert!(matches!(
        v.qc(SLOT, block(), &[1, 2, 3])
            .verify(&v.set, v.spec.chain_id),
        Err(QcError::InsufficientStake { .. })
    ));
}

#[test]
fn signer_bit_outside_the_set_is_refused() {
    let v = Validators::devnet(4);
    let mut qc = v.qc(SLOT, block(), &[0, 1, 2]);
    qc.signers.set(5); // byte 0 has room for bits 4..8, past the set of 4
    assert_eq!(
        qc.verify(&v.set, v.spec.chain_id),
        Err(QcError::SignerOutsideSet {
            index: 5,
            set_len: 4
        })
    );
    // A bit in an extra trailing byte is also outside.
    let mut bytes = qc.signers.as_bytes().to_vec();
    bytes[0] &= 0x0f;
    bytes.push(0x01);
    qc.signers = SignerBitfield::from_bytes(bytes);
    assert_eq!(
        qc.verify(&v.set, v.spec.chain_id),
        Err(QcError::SignerOutsideSet {
            index: 8,
            set_len: 4
        })
    );
}

#[test]
fn bitfield_of_the_wrong_length_is_refused() {
    let v = Validators::devnet(4);
    let mut qc = v.qc(SLOT, block(), &[0, 1, 2]);
    let mut bytes = qc.signers.as_bytes().to_vec();
    bytes.push(0);
    qc.signers = SignerBitfield::from_bytes(bytes);
    assert_eq!(
        qc.verify(&v.set, v.spec.chain_id),
        Err(QcError::BitfieldLength {
            expected: 1,
            got: 2,
            set_len: 4
        })
    );
    qc.signers = SignerBitfield::from_bytes(Vec::new());
    assert_eq!(
        qc.verify(&v.set, v.spec.chain_id),
        Err(QcError::BitfieldLength {
            expected: 1,
            got: 0,
            set_len: 4
        })
    );
}

#[test]
fn empty_bitfield_is_refused() {
    let v = Validators::devnet(4);
    let mut qc = v.qc(SLOT, block(), &[0, 1, 2]);
    qc.signers = SignerBitfield::with_set_len(4);
    assert_eq!(
        qc.verify(&v.set, v.spec.chain_id),
        Err(QcError::EmptyBitfield)
    );
}

#[test]
fn duplicate_signer_is_refused() {
    let v = Validators::devnet(4);
    // The aggregate holds validator 0's vote twice but the bitfield can name it
    // only once: the signature no longer matches the signers.
    let mut qc = v.qc(SLOT, block(), &[0, 1, 2]);
    qc.signature = aggregate(&v.keys, &[0, 0, 1, 2], v.spec.chain_id, SLOT, block());
    assert_eq!(
        qc.verify(&v.set, v.spec.chain_id),
        Err(QcError::BadSignature)
    );
    // And an aggregator refuses the second vote outright.
    let mut builder = QcBuilder::new(SLOT, block(), &v.set);
    builder
        .add_verified_vote(&v.vote(0, SLOT, block()), &v.set)
        .unwrap();
    assert_eq!(
        builder.add_verified_vote(&v.vote(0, SLOT, block()), &v.set),
        Err(QcError::DuplicateVote { index: 0 })
    );
}

#[test]
fn valid_signature_over_another_message_is_refused() {
    let v = Validators::devnet(4);
    let chain = v.spec.chain_id;
    let mut other_slot = v.qc(SLOT + 1, block(), &[0, 1, 2]);
    other_slot.slot = SLOT;
    assert_eq!(other_slot.verify(&v.set, chain), Err(QcError::BadSignature));
    let mut other_block = v.qc(SLOT, B256::repeat_byte(1), &[0, 1, 2]);
    other_block.block_hash = block();
    assert_eq!(
        other_block.verify(&v.set, chain),
        Err(QcError::BadSignature)
    );
    let qc = v.qc(SLOT, block(), &[0, 1, 2]);
    assert_eq!(qc.verify(&v.set, chain + 1), Err(QcError::BadSignature));
}

#[test]
fn signature_by_a_key_outside_the_set_is_refused() {
    let four = Validators::devnet(4);
    let five = Validators::devnet(5);
    // Bits name 0, 1, 2; the aggregate is by 0, 1 and validator 4, who is not in the set of four.
    let mut qc = four.qc(SLOT, block(), &[0, 1, 2]);
    qc.signature = aggregate(&five.keys, &[0, 1, 4], four.spec.chain_id, SLOT, block());
    assert_eq!(
        qc.verify(&four.set, four.spec.chain_id),
        Err(QcError::BadSignature)
    );
}

#[test]
fn malformed_signature_bytes_are_refused() {
    let v = Validators::devnet(4);
    let mut qc = v.qc(SLOT, block(), &[0, 1, 2]);
    qc.signature = BlsSignature::repeat_byte(0xff);
    assert!(matches!(
        qc.verify(&v.set, v.spec.chain_id),
        Err(QcError::MalformedSignature(_))
    ));
}

#[test]
fn certified_header_with_a_set_it_does_not_commit_to_is_refused() {
    let v = Validators::devnet(4);
    let other = Validators::devnet(5);
    let chain = v.certified_chain(1, 3);
    let header: &CertifiedHeader = &chain[0];
    assert!(header.verify(&v.set, &v.spec).is_ok());
    assert!(matches!(
        header.verify(&other.set, &v.spec),
        Err(luxtensor_light::HeaderError::SetHashMismatch { .. })
    ));
}

#[test]
fn builder_certifies_only_at_quorum_and_only_its_own_block() {
    let v = Validators::devnet(4);
    let mut builder = QcBuilder::new(SLOT, block(), &v.set);
    for i in 0..2 {
        builder
            .add_verified_vote(&v.vote(i, SLOT, block()), &v.set)
            .unwrap();
        assert!(
            builder.certificate(&v.set).is_none(),
            "{} of 4 is no quorum",
            i + 1
        );
    }
    assert_eq!(
        builder.add_verified_vote(&v.vote(2, SLOT, B256::ZERO), &v.set),
        Err(QcError::VoteMismatch)
    );
    builder
        .add_verified_vote(&v.vote(2, SLOT, block()), &v.set)
        .unwrap();
    let qc = builder.certificate(&v.set).expect("3 of 4");
    assert_eq!(qc, v.qc(SLOT, block(), &[0, 1, 2]));
    assert!(qc.verify(&v.set, v.spec.chain_id).is_ok());
}

#[test]
fn batch_accepts_valid_qcs_and_names_the_first_bad_one() {
    let v = Validators::devnet(10);
    let signers: Vec<usize> = (0..7).collect();
    let mut qcs: Vec<_> = (0..8u64)
        .map(|s| v.qc(s, B256::repeat_byte(s as u8), &signers))
        .collect();
    assert_eq!(
        verify_batch(&with_set(&qcs, &v.set), v.spec.chain_id, [7; 32]),
        Ok(())
    );
    assert_eq!(verify_batch(&[], v.spec.chain_id, [7; 32]), Ok(()));

    // A QC with a valid-looking signature over another slot.
    qcs[5].slot += 100;
    assert_eq!(
        verify_batch(&with_set(&qcs, &v.set), v.spec.chain_id, [7; 32]),
        Err(BatchError {
            index: 5,
            error: QcError::BadSignature
        })
    );
    // Structural failures are named before any pairing.
    qcs[5].slot -= 100;
    qcs[2].signers = SignerBitfield::with_set_len(10);
    assert_eq!(
        verify_batch(&with_set(&qcs, &v.set), v.spec.chain_id, [7; 32]),
        Err(BatchError {
            index: 2,
            error: QcError::EmptyBitfield
        })
    );
}

#[test]
fn batch_cannot_be_fooled_by_signatures_that_cancel_out() {
    // Two QCs whose signatures are swapped each fail alone; without random
    // weights their sum would still verify. The batch must refuse it.
    let v = Validators::devnet(4);
    let mut a = v.qc(1, B256::repeat_byte(1), &[0, 1, 2]);
    let mut b = v.qc(2, B256::repeat_byte(2), &[0, 1, 2]);
    std::mem::swap(&mut a.signature, &mut b.signature);
    let result = verify_batch(&[(&a, &v.set), (&b, &v.set)], v.spec.chain_id, [9; 32]);
    assert_eq!(
        result,
        Err(BatchError {
            index: 0,
            error: QcError::BadSignature
        })
    );
}

fn with_set<'a>(
    qcs: &'a [luxtensor_light::QuorumCert],
    set: &'a luxtensor_light::ValidatorSet,
) -> Vec<(
    &'a luxtensor_light::QuorumCert,
    &'a luxtensor_light::ValidatorSet,
)> {
    qcs.iter().map(|q| (q, set)).collect()
}
