//! A generator of chains for the light client: one certified header per
//! slot, epochs whose validator sets change as the test asks (full
//! replacement, doubling, halving), headers that commit to set(e) and
//! set(e+1), QCs and seals signed with the real BLS keys of the devnet
//! (`devnet_validator_key(i)`), and the hand-over updates a full node would
//! serve. Tests mutate what it produces to break one rule at a time.

use luxtensor_light::chain_spec::{self, GenesisValidator, TOKEN};
use luxtensor_light::client::EpochUpdate;
use luxtensor_light::{
    B256, BlsSecretKey, CertifiedHeader, ChainSpec, Header, QcBuilder, QuorumCert, SignedHeader,
    SignerBitfield, U256, Validator, ValidatorSet, Vote,
};

/// One member of an epoch's set: a devnet key index and a stake in tokens.
pub type Member = (u32, u64);

/// `n` members with keys `first..first + n` and 32 tokens each.
pub fn members(first: u32, n: u32) -> Vec<Member> {
    (first..first + n).map(|i| (i, 32)).collect()
}

/// A generated chain.
pub struct LightChain {
    /// The spec (devnet timing: 8-slot epochs; genesis set = `sets[0]`).
    pub spec: ChainSpec,
    /// Key indices of each epoch's members, in set order.
    pub members: Vec<Vec<Member>>,
    /// Set(e) for every epoch e of the chain and the one after.
    pub sets: Vec<ValidatorSet>,
    /// Every block after genesis, one per slot, certified by a minimal quorum.
    pub headers: Vec<CertifiedHeader>,
    /// `updates[e]`: the hand-over of epoch e (built from its first block).
    pub updates: Vec<EpochUpdate>,
}

fn validator(member: Member) -> Validator {
    Validator {
        owner: chain_spec::devnet_validator_owner(member.0),
        public_key: chain_spec::devnet_validator_key(member.0).public_key(),
        stake: TOKEN * U256::from(member.1),
    }
}

/// The set of these members.
pub fn set_of(members: &[Member]) -> ValidatorSet {
    ValidatorSet::new(members.iter().copied().map(validator).collect()).expect("valid members")
}

impl LightChain {
    /// A chain of `epochs` epochs. `schedule[e]` is the set of epoch e; epoch
    /// 1 must equal epoch 0 (the genesis header commits to both) and epochs
    /// past the schedule repeat its last entry.
    pub fn build(schedule: &[Vec<Member>], epochs: u64) -> Self {
        let genesis = &schedule[0];
        let mut spec = ChainSpec::devnet(0);
        spec.rotation.max_validators = 1_000;
        spec.validators = genesis
            .iter()
            .map(|&(i, tokens)| {
                let key = chain_spec::devnet_validator_key(i);
                GenesisValidator {
                    owner: chain_spec::devnet_validator_owner(i),
                    public_key: key.public_key(),
                    proof_of_possession: key.proof_of_possession(spec.chain_id),
                    stake: TOKEN * U256::from(tokens),
                }
            })
            .collect();
        let member_list: Vec<Vec<Member>> = (0..=epochs + 1)
            .map(|e| match e {
                0 | 1 => genesis.clone(),
                e => schedule
                    .get(e as usize)
                    .unwrap_or_else(|| schedule.last().expect("non-empty schedule"))
                    .clone(),
            })
            .collect();
        let sets: Vec<ValidatorSet> = member_list.iter().map(|m| set_of(m)).collect();
        let mut chain = Self {
            spec,
            members: member_list,
            sets,
            headers: Vec::new(),
            updates: Vec::new(),
        };
        let length = chain.spec.rotation.epoch_length;
        let mut parent = chain.spec.genesis_header();
        let mut parent_qc = QuorumCert::genesis();
        for slot in 1..epochs * length {
            let epoch = slot / length;
            let header = chain.header_at(&parent, parent_qc.clone(), slot, epoch);
            let sealed = chain.seal(header);
            let qc = chain.certify(&sealed.header, None);
            parent = sealed.header.clone();
            parent_qc = qc.clone();
            chain.headers.push(CertifiedHeader { header: sealed, qc });
        }
        for e in 0..epochs {
            let first = chain
                .headers
                .iter()
                .find(|h| h.header.epoch == e)
                .expect("every epoch has blocks")
                .clone();
            let update =
                EpochUpdate::new(first, &chain.sets[e as usize], &chain.sets[e as usize + 1]);
            chain.updates.push(update);
        }
        chain
    }

    /// `epochs` epochs of `n` equal validators that never change.
    pub fn steady(n: u32, epochs: u64) -> Self {
        Self::build(&[members(0, n)], epochs)
    }

    /// An unsigned header of `epoch` at `slot` on top of `parent`, committing
    /// to the chain's sets for `epoch`.
    pub fn header_at(
        &self,
        parent: &Header,
        parent_qc: QuorumCert,
        slot: u64,
        epoch: u64,
    ) -> Header {
        let set = &self.sets[epoch as usize];
        Header {
            parent_hash: parent.hash(),
            number: parent.number + 1,
            slot,
            epoch,
            timestamp: self.spec.slot_timestamp(slot),
            proposer_index: set.proposer_index(slot) as u32,
            validator_set_hash: set.hash(),
            next_validator_set_hash: self.sets[epoch as usize + 1].hash(),
            parent_qc,
            ..parent.clone()
        }
    }

    /// The key of member `position` of `epoch`'s set.
    pub fn key(&self, epoch: u64, position: usize) -> BlsSecretKey {
        chain_spec::devnet_validator_key(self.members[epoch as usize][position].0)
    }

    /// Seals a header with its named proposer's key (of the header's epoch).
    pub fn seal(&self, header: Header) -> SignedHeader {
        let key = self.key(header.epoch, header.proposer_index as usize);
        header.sign(&key, self.spec.chain_id)
    }

    /// A QC for `header` by its epoch's set: by `signers` (positions) if
    /// given, else by the smallest quorum prefix of the set.
    pub fn certify(&self, header: &Header, signers: Option<&[usize]>) -> QuorumCert {
        let set = &self.sets[header.epoch as usize];
        let hash = header.hash();
        match signers {
            Some(signers) => {
                self.qc_over(header.epoch, header.slot, hash, signers, self.spec.chain_id)
            }
            None => {
                let mut builder = QcBuilder::new(header.slot, hash, set);
                for i in 0..set.len() {
                    if let Some(qc) = builder.certificate(set) {
                        return qc;
                    }
                    let vote = Vote::sign(
                        &self.key(header.epoch, i),
                        self.spec.chain_id,
                        header.slot,
                        hash,
                        i as u32,
                    );
                    builder.add_verified_vote(&vote, set).expect("fresh vote");
                }
                builder.certificate(set).expect("the whole set is a quorum")
            }
        }
    }

    /// A QC claiming (`slot`, `block_hash`) with these signers of `epoch`'s
    /// set, whose signature is each signer's vote over (`chain_id`, `slot`,
    /// `block_hash`), with no quorum check.
    pub fn qc_over(
        &self,
        epoch: u64,
        slot: u64,
        block_hash: B256,
        signers: &[usize],
        chain_id: u64,
    ) -> QuorumCert {
        let set = &self.sets[epoch as usize];
        let mut bits = SignerBitfield::with_set_len(set.len());
        let keys: Vec<BlsSecretKey> = (0..set.len()).map(|i| self.key(epoch, i)).collect();
        for &i in signers {
            bits.set(i);
        }
        QuorumCert {
            slot,
            block_hash,
            signers: bits,
            signature: crate::aggregate(&keys, signers, chain_id, slot, block_hash),
        }
    }

    /// The smallest quorum prefix of `epoch`'s set, as positions.
    pub fn quorum(&self, epoch: u64) -> Vec<usize> {
        let set = &self.sets[epoch as usize];
        let mut stake = U256::ZERO;
        let mut signers = Vec::new();
        for (i, v) in set.validators().iter().enumerate() {
            if set.is_quorum(stake) {
                break;
            }
            stake += v.stake;
            signers.push(i);
        }
        signers
    }

    /// The certified header at `slot`.
    pub fn at_slot(&self, slot: u64) -> &CertifiedHeader {
        &self.headers[slot as usize - 1]
    }

    /// A certified header of `epoch` built from `header` after `edit`,
    /// re-sealed and re-certified by a quorum of `epoch`'s set.
    pub fn reforge(&self, header: &Header, edit: impl FnOnce(&mut Header)) -> CertifiedHeader {
        let mut header = header.clone();
        edit(&mut header);
        let sealed = self.seal(header);
        let qc = self.certify(&sealed.header, None);
        CertifiedHeader { header: sealed, qc }
    }
}
