//! # LuxTensor full node
//!
//! Storage, execution, validator rotation, consensus, libp2p networking,
//! parallel block sync and JSON-RPC for infrastructure providers. It verifies
//! with the rulebook in `luxtensor-light` and nothing else.
//!
//! | module | what it holds |
//! |---|---|
//! | [`rotation`] | [`ValidatorRotation`]: activation and exit queues, cap, churn, slashing, withdrawals |
//! | [`slashing_protection`] | [`slashing_protection::SlashingProtection`]: a validator records what it signs before the signature leaves and refuses to double-vote or double-propose, across restarts (in memory, or in redb: the one module besides `store` that does I/O) |
//! | [`trie`] | [`StateTrie`]: an in-memory Merkle-Patricia trie whose root costs time in proportion to what changed, with EIP-1186 proofs |
//! | [`mempool`] | [`Mempool`]: bounded, per-sender nonce-ordered pending transactions |
//! | [`network`] | libp2p: gossip, the sync request protocol, peer scoring ([`network::Network`]) |
//! | [`rpc`] | geth-compatible JSON-RPC over HTTP and WebSocket, subscriptions, polling filters, the `lux_` namespace, `/metrics` ([`rpc::serve`]) |
//! | [`node`] | [`node::Node`]: the async shell driving engine, network, sync, store and RPC |
//! | [`staking`] | the staking system contract's address and ABI |
//! | [`state`] | [`ChainState`]: accounts, staking contract and rotation under one root, journaled per block |
//! | [`store`] | [`Store`]: crash-safe redb storage, one atomic commit per block |
//! | [`sync`] | [`sync::SyncProtocol`]: the sans-IO parallel block-download scheduler (which blocks from which peer, timeouts, hedging, penalties, in-order release) |
//! | [`import`] | [`Importer`]: the one path by which a block enters the node (verify, recover senders in parallel, execute, commit) |
//! | [`execution`] | transfers, staking calls, fees, evidence, epoch transitions: [`execute_block`], [`build_block`] |
//!
//! The pure modules (everything but `store` and `import`) do no I/O, so the
//! consensus engine and the simulator can drive them deterministically.

pub mod block_tree;
pub mod consensus;
pub mod execution;
pub mod import;
pub mod mempool;
pub mod network;
pub mod node;
pub mod rotation;
pub mod rpc;
pub mod slashing_protection;
pub mod staking;
pub mod state;
pub mod store;
pub mod sync;
pub mod trie;

#[cfg(test)]
mod test_support;

pub use execution::{BlockError, BlockOutput, TxRejection, build_block, execute_block};
pub use import::{ChainImportError, ImportError, ImportTimings, Imported, Importer};
pub use mempool::Mempool;
pub use rotation::{EpochTransitionResult, RotationStats, ValidatorRotation};
pub use state::ChainState;
pub use store::{Store, StoreError};
pub use trie::StateTrie;
