//! # LuxTensor light: the protocol core and the light client
//!
//! Everything that defines the chain lives here, once, so that the full node,
//! the proxy and the light client verify with the same code:
//!
//! | module | what it holds |
//! |---|---|
//! | [`bls`] | validator keys and signatures (BLS12-381, min-pk), signing roots and domains |
//! | [`validator`] | [`Validator`], [`ValidatorSet`] (ordered, hashed, keys decoded once), proposer schedule |
//! | [`qc`] | [`Vote`], [`QuorumCert`] and its rule, batch verification, [`QcBuilder`] |
//! | [`header`] | [`Header`], [`SignedHeader`], [`CertifiedHeader`] |
//! | [`transaction`] | [`SignedTransaction`]: legacy (EIP-155) and EIP-1559 Ethereum envelopes |
//! | [`receipt`] | [`Receipt`], [`Log`], [`Account`] (alloy's Ethereum types) and their roots |
//! | [`evidence`] | slashable [`Evidence`]: double votes and double proposals |
//! | [`block`] | [`Block`] and its body commitments |
//! | [`fee`] | EIP-1559 fee-history arithmetic: reward percentiles |
//! | [`chain_spec`] | [`ChainSpec`], [`RotationConfig`], the built-in devnet |
//! | [`verify`] | the header rulebook: [`verify_header`], [`verify_link`] |
//! | [`codec`] | total decoding: size caps, no trailing bytes, canonical RLP |
//! | [`client`] | the light client's sans-IO core: checkpoints, epoch updates, the [`client::LightClient`] state machine, proof checks |
//!
//! With `default-features = false` this crate does no I/O: no sockets, no
//! files, no clock, no threads of its own. Randomness (for batch
//! verification) comes in as an argument.
//!
//! ```
//! use luxtensor_light::{ChainSpec, QcBuilder, Vote, chain_spec::devnet_validator_key};
//!
//! let spec = ChainSpec::devnet(4);
//! let set = spec.genesis_set().unwrap();
//! let block = spec.genesis_header().hash();
//! let mut builder = QcBuilder::new(1, block, &set);
//! for i in 0..3 {
//!     let vote = Vote::sign(&devnet_validator_key(i), spec.chain_id, 1, block, i);
//!     vote.verify(&set, spec.chain_id).unwrap();
//!     builder.add_verified_vote(&vote, &set).unwrap();
//! }
//! let qc = builder.certificate(&set).expect("3 of 4 equal stakes is a quorum");
//! qc.verify(&set, spec.chain_id).unwrap();
//! ```

pub mod block;
pub mod bls;
pub mod chain_spec;
pub mod client;
pub mod codec;
pub mod evidence;
pub mod fee;
pub mod header;
pub mod qc;
pub mod receipt;
pub mod transaction;
pub mod validator;
pub mod verify;

pub use alloy_primitives::{Address, B256, Bloom, Bytes, U256};
pub use block::Block;
pub use bls::{BlsPublicKey, BlsSecretKey, BlsSignature};
pub use chain_spec::{ChainSpec, RotationConfig};
pub use codec::DecodeError;
pub use evidence::Evidence;
pub use header::{CertifiedHeader, Header, SignedHeader};
pub use qc::{QcBuilder, QcError, QuorumCert, SignatureBatch, SignerBitfield, Vote};
pub use receipt::{Account, Log, Receipt};
pub use transaction::{SignedTransaction, TxError};
pub use validator::{Validator, ValidatorSet};
pub use verify::{HeaderError, check_header, check_link, push_seal, verify_header, verify_link};
