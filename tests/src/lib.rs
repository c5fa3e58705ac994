//! Shared fixtures for LuxTensor's cross-crate tests, simulations and
//! benchmarks: validator sets with known keys, signed QCs and chains of
//! certified headers built with the real signing code.

pub mod bench;
pub mod chain_fixture;
pub mod light_bench;
pub mod light_chain;
pub mod light_server;
pub mod node_process;
pub mod producer;
pub mod proxy_bench;
pub mod rpc_bench;
pub mod rpc_support;
pub mod sim;
pub mod sync_bench;
pub mod sync_nodes;
pub mod wallet;
pub mod ws_subscribers;

use luxtensor_light::chain_spec::{self, GenesisValidator, TOKEN};
use luxtensor_light::{
    B256, BlsSecretKey, BlsSignature, CertifiedHeader, ChainSpec, Header, QuorumCert, SignedHeader,
    SignerBitfield, U256, ValidatorSet, Vote,
};

/// A chain spec together with the secret keys of its genesis validators.
pub struct Validators {
    /// The spec (devnet timing, chosen validators).
    pub spec: ChainSpec,
    /// Secret keys, in set order.
    pub keys: Vec<BlsSecretKey>,
    /// The genesis set.
    pub set: ValidatorSet,
}

impl Validators {
    /// `n` devnet validators with equal stake (32 tokens each).
    pub fn devnet(n: u32) -> Self {
        Self::with_stakes(&vec![32; n as usize])
    }

    /// Devnet validators with the given stakes, in tokens.
    pub fn with_stakes(stakes_in_tokens: &[u64]) -> Self {
        let mut spec = ChainSpec::devnet(stakes_in_tokens.len() as u32);
        spec.rotation.max_validators = spec
            .rotation
            .max_validators
            .max(stakes_in_tokens.len() as u32);
        let keys: Vec<_> = (0..stakes_in_tokens.len() as u32)
            .map(chain_spec::devnet_validator_key)
            .collect();
        spec.validators = keys
            .iter()
            .zip(stakes_in_tokens)
            .enumerate()
            .map(|(i, (key, tokens))| GenesisValidator {
                owner: chain_spec::devnet_validator_owner(i as u32),
                public_key: key.public_key(),
                proof_of_possession: key.proof_of_possession(spec.chain_id),
                stake: TOKEN * U256::from(*tokens),
            })
            .collect();
        let set = spec.genesis_set().expect("fixture set is valid");
        Self { spec, keys, set }
    }

    /// A vote by validator `index`.
    pub fn vote(&self, index: usize, slot: u64, block_hash: B256) -> Vote {
        Vote::sign(
            &self.keys[index],
            self.spec.chain_id,
            slot,
            block_hash,
            index as u32,
        )
    }

    /// A QC over (`slot`, `block_hash`) signed by `signers`, with no quorum
    /// check (so that tests can present invalid QCs).
    pub fn qc(&self, slot: u64, block_hash: B256, signers: &[usize]) -> QuorumCert {
        let mut bits = SignerBitfield::with_set_len(self.set.len());
        for &i in signers {
            bits.set(i);
        }
        QuorumCert {
            slot,
            block_hash,
            signers: bits,
            signature: aggregate(&self.keys, signers, self.spec.chain_id, slot, block_hash),
        }
    }

    /// The child of `parent` at `slot`, proposed by the scheduled proposer
    /// and carrying `parent_qc`.
    pub fn child(&self, parent: &Header, parent_qc: QuorumCert, slot: u64) -> SignedHeader {
        let proposer = self.set.proposer_index(slot);
        let header = Header {
            parent_hash: parent.hash(),
            number: parent.number + 1,
            slot,
            epoch: parent.epoch,
            timestamp: self.spec.slot_timestamp(slot),
            proposer_index: proposer as u32,
            parent_qc,
            ..parent.clone()
        };
        header.sign(&self.keys[proposer], self.spec.chain_id)
    }

    /// A chain of `len` certified headers after genesis, one per slot, each
    /// certified by the first `signers` validators.
    pub fn certified_chain(&self, len: usize, signers: usize) -> Vec<CertifiedHeader> {
        let signer_list: Vec<usize> = (0..signers).collect();
        let mut parent = self.spec.genesis_header();
        let mut parent_qc = QuorumCert::genesis();
        let mut chain = Vec::with_capacity(len);
        for slot in 1..=len as u64 {
            let header = self.child(&parent, parent_qc.clone(), slot);
            let qc = self.qc(slot, header.hash(), &signer_list);
            parent = header.header.clone();
            parent_qc = qc.clone();
            chain.push(CertifiedHeader { header, qc });
        }
        chain
    }
}

/// The aggregate of the signers' vote signatures, with no quorum check.
pub fn aggregate(
    keys: &[BlsSecretKey],
    signers: &[usize],
    chain_id: u64,
    slot: u64,
    block_hash: B256,
) -> BlsSignature {
    let sigs: Vec<blst::min_pk::Signature> = signers
        .iter()
        .map(|&i| {
            let vote = Vote::sign(&keys[i], chain_id, slot, block_hash, i as u32);
            blst::min_pk::Signature::from_bytes(vote.signature.as_slice()).unwrap()
        })
        .collect();
    let refs: Vec<_> = sigs.iter().collect();
    let agg = blst::min_pk::AggregateSignature::aggregate(&refs, false).unwrap();
    BlsSignature::from(agg.to_signature().compress())
}
