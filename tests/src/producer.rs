//! A block producer for tests and benchmarks: builds valid, sealed blocks
//! with real QCs on top of a chain, the way proposers will once consensus
//! exists, including the epoch-boundary sequence (ending block, one empty
//! block that finalizes it, then the next epoch).

use crate::Validators;
use alloy_primitives::Address;
use luxtensor_full::ChainState;
use luxtensor_full::execution::{Candidates, EpochPosition, build_block, epoch_position};
use luxtensor_light::{
    Block, BlsSecretKey, Header, QcBuilder, QuorumCert, SignedTransaction, ValidatorSet, Vote,
};

/// Produces a chain of blocks one slot apart, each certifying its parent.
pub struct Producer {
    validators: Validators,
    state: ChainState,
    head: Header,
    /// The validator set of the head's epoch.
    head_epoch_set: ValidatorSet,
    /// The QC certifying the head (the next block carries it).
    head_qc: QuorumCert,
    /// Where the head sits in its epoch.
    head_position: EpochPosition,
}

impl Producer {
    /// Starts at genesis of `validators.spec`.
    pub fn new(validators: Validators) -> Self {
        let state = ChainState::genesis(&validators.spec);
        let head = validators.spec.genesis_header();
        let head_epoch_set = validators.set.clone();
        Self {
            validators,
            state,
            head,
            head_epoch_set,
            head_qc: QuorumCert::genesis(),
            head_position: EpochPosition::Inside,
        }
    }

    /// Continues the chain an importer holds (after a restart): the same
    /// state, head and epoch position, and a fresh QC for the head.
    pub fn resume(validators: Validators, importer: &mut luxtensor_full::Importer) -> Self {
        let head = importer.head().clone();
        let head_epoch_set = importer
            .validator_set(head.epoch)
            .expect("head epoch set is stored");
        let head_position = match importer
            .store()
            .block(&head.parent_hash)
            .expect("store readable")
        {
            Some(parent) => epoch_position(&validators.spec, &parent.header.header, &head),
            None => EpochPosition::Inside,
        };
        let mut producer = Self {
            validators,
            state: importer.state().clone(),
            head: head.clone(),
            head_epoch_set,
            head_qc: QuorumCert::genesis(),
            head_position,
        };
        if !head.is_genesis() {
            producer.head_qc = producer.certify(&head, &producer.head_epoch_set.clone());
        }
        producer
    }

    /// The last produced header.
    pub fn head(&self) -> &Header {
        &self.head
    }

    /// The producer's view of the state after the head.
    pub fn state(&self) -> &ChainState {
        &self.state
    }

    fn key_of(&self, set: &ValidatorSet, index: usize) -> &BlsSecretKey {
        let public = set.validators()[index].public_key;
        self.validators
            .keys
            .iter()
            .find(|k| k.public_key() == public)
            .expect("the producer holds every validator key")
    }

    /// A QC for `header` by the first two thirds plus one of `set`.
    fn certify(&self, header: &Header, set: &ValidatorSet) -> QuorumCert {
        let hash = header.hash();
        let mut builder = QcBuilder::new(header.slot, hash, set);
        for i in 0..set.len() {
            if let Some(qc) = builder.certificate(set) {
                return qc;
            }
            let vote = Vote::sign(
                self.key_of(set, i),
                self.validators.spec.chain_id,
                header.slot,
                hash,
                i as u32,
            );
            builder.add_verified_vote(&vote, set).expect("fresh vote");
        }
        builder
            .certificate(set)
            .expect("all validators are a quorum")
    }

    /// Builds, seals and returns the next block, with as many of `txs` as
    /// are valid (in order). The producer's state moves to after it.
    pub fn next_block(&mut self, txs: Vec<(SignedTransaction, Address)>) -> Block {
        let spec = &self.validators.spec;
        let slot = self.head.slot + 1;
        // After an ending block comes one empty block of the same epoch that
        // certifies it; the block after that starts the next epoch.
        let (epoch, set, set_hash, next_hash) = if self.head_position == EpochPosition::AfterEnd {
            let rotation = self.state.rotation();
            let set = ValidatorSet::new(rotation.current_validators().to_vec()).expect("valid set");
            (
                self.head.epoch + 1,
                set,
                rotation.current_set_hash(),
                rotation.next_set_hash(),
            )
        } else {
            (
                self.head.epoch,
                self.head_epoch_set.clone(),
                self.head.validator_set_hash,
                self.head.next_validator_set_hash,
            )
        };
        let parent_qc = self.head_qc.clone();
        let template = Header {
            parent_hash: self.head.hash(),
            number: self.head.number + 1,
            slot,
            epoch,
            timestamp: spec.slot_timestamp(slot),
            proposer_index: set.proposer_index(slot) as u32,
            validator_set_hash: set_hash,
            next_validator_set_hash: next_hash,
            parent_qc,
            ..self.head.clone()
        };
        let candidates = Candidates {
            transactions: txs,
            ..Default::default()
        };
        let built = build_block(
            &mut self.state,
            spec,
            &self.head,
            template,
            &set,
            candidates,
        );
        let header = built.header.clone();
        let transactions = built.transactions;
        let key = self.key_of(&set, header.proposer_index as usize);
        let sealed = header.clone().sign(key, spec.chain_id);
        self.head_qc = self.certify(&header, &set);
        self.head_position = epoch_position(spec, &self.head, &header);
        self.head = header;
        self.head_epoch_set = set;
        Block {
            header: sealed,
            transactions,
            evidence: vec![],
        }
    }
}
