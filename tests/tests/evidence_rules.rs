//! Slashable evidence proves misbehaviour only when both messages are real,
//! by one validator, in one slot, and conflict.

use luxtensor_light::evidence::{DoubleProposal, DoubleVote, EvidenceError};
use luxtensor_light::{B256, Evidence, QcError};
use luxtensor_tests::Validators;

fn double_vote(v: &Validators, a: (usize, u64, B256), b: (usize, u64, B256)) -> Evidence {
    Evidence::DoubleVote(Box::new(DoubleVote {
        epoch: 0,
        first: v.vote(a.0, a.1, a.2),
        second: v.vote(b.0, b.1, b.2),
    }))
}

#[test]
fn double_vote_names_the_offender() {
    let v = Validators::devnet(4);
    let (x, y) = (B256::repeat_byte(1), B256::repeat_byte(2));
    let id = v.spec.chain_id;
    let e = double_vote(&v, (2, 9, x), (2, 9, y));
    assert_eq!(e.verify(&v.set, id), Ok(v.set.validators()[2].owner));
    assert_eq!(
        double_vote(&v, (2, 9, x), (2, 9, x)).verify(&v.set, id),
        Err(EvidenceError::NoConflict)
    );
    assert_eq!(
        double_vote(&v, (2, 9, x), (2, 10, y)).verify(&v.set, id),
        Err(EvidenceError::DifferentSlots)
    );
    assert_eq!(
        double_vote(&v, (1, 9, x), (2, 9, y)).verify(&v.set, id),
        Err(EvidenceError::DifferentSigners)
    );
    // A forged second vote (signed by someone else, claiming validator 2).
    let mut forged = DoubleVote {
        epoch: 0,
        first: v.vote(2, 9, x),
        second: v.vote(3, 9, y),
    };
    forged.second.validator_index = 2;
    assert_eq!(
        Evidence::DoubleVote(Box::new(forged)).verify(&v.set, id),
        Err(EvidenceError::Signature(QcError::BadSignature))
    );
}

#[test]
fn a_double_vote_across_two_sets_is_stated_against_the_first() {
    // Validator 2 of a set of 4 is validator 1 of the next set, once
    // validator 0 has left: at an epoch boundary it can vote in one slot
    // for a block of each epoch, each vote naming its own set's index.
    let v = Validators::devnet(4);
    let next = luxtensor_light::ValidatorSet::new(v.set.validators()[1..].to_vec()).unwrap();
    let (x, y) = (B256::repeat_byte(1), B256::repeat_byte(2));
    let id = v.spec.chain_id;
    let first = v.vote(2, 9, x);
    let mut second = v.vote(2, 9, y);
    second.validator_index = 1;
    let owner = v.set.validators()[2].owner;
    assert_eq!(next.validators()[1].owner, owner);
    let naive = DoubleVote {
        epoch: 0,
        first: first.clone(),
        second: second.clone(),
    };
    assert_eq!(
        Evidence::DoubleVote(Box::new(naive)).verify(&v.set, id),
        Err(EvidenceError::DifferentSigners)
    );
    let restated = DoubleVote::new(0, first, second);
    assert_eq!(restated.second.validator_index, 2);
    assert_eq!(
        Evidence::DoubleVote(Box::new(restated)).verify(&v.set, id),
        Ok(owner)
    );
}

#[test]
fn double_proposal_names_the_proposer() {
    let v = Validators::devnet(4);
    let chain = v.certified_chain(1, 3);
    let first = chain[0].header.clone();
    let mut other = first.header.clone();
    other.state_root = B256::repeat_byte(9);
    let proposer = other.proposer_index as usize;
    let second = other.sign(&v.keys[proposer], v.spec.chain_id);
    let e = Evidence::DoubleProposal(Box::new(DoubleProposal {
        first: first.clone(),
        second,
    }));
    assert_eq!(
        e.verify(&v.set, v.spec.chain_id),
        Ok(v.set.validators()[proposer].owner)
    );
    let same = Evidence::DoubleProposal(Box::new(DoubleProposal {
        first: first.clone(),
        second: first,
    }));
    assert_eq!(
        same.verify(&v.set, v.spec.chain_id),
        Err(EvidenceError::NoConflict)
    );
    let other_set = Validators::devnet(5);
    assert!(matches!(
        e.verify(&other_set.set, v.spec.chain_id),
        Err(EvidenceError::WrongSet { evidence: 0 })
    ));
}
