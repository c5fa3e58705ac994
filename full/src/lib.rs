//! # LuxTensor full node
//!
//! Storage, execution, validator rotation, consensus, libp2p networking,
//! parallel block sync and JSON-RPC for infrastructure providers. It verifies
//! with the rulebook in `luxtensor-light` and nothing else.
//!
//! Nothing lives here yet: the full-node issues (core I: execution, state,
//! rotation, storage; core II: consensus and simulation; networking; RPC)
//! fill it in. This crate exists now so that the workspace has its final shape.
