//! # LuxTensor proxy
//!
//! A JSON-RPC and WebSocket proxy for wallet backends in front of untrusted
//! full nodes: verifies what they serve with the embedded light client,
//! caches, fans subscriptions out and fails over.
//!
//! Nothing lives here yet: the proxy issue fills it in. This crate exists now
//! so that the workspace has its final shape.
