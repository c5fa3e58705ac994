//! # The light client's sans-IO core
//!
//! Everything a light client decides, with no I/O: where trust starts
//! ([`checkpoint`]), the hand-over updates that carry it from epoch to epoch
//! ([`update`]), the state machine that verifies updates and heads
//! ([`tracker`]), the rules it names when it refuses something ([`rules`]),
//! the upstream score table ([`upstream`]), the persisted trusted state
//! ([`persist`]) and the checks the proxy runs on served data ([`proofs`]).
//! The networking shell ([`net`], behind the `client` feature) fetches bytes,
//! feeds them in and acts on the events.
//!
//! | module | what it holds |
//! |---|---|
//! | [`checkpoint`] | [`Checkpoint`], the safe age bound ([`max_checkpoint_age_epochs`]) |
//! | [`update`] | [`EpochUpdate`], [`SetDiff`], [`NextSet`] |
//! | [`tracker`] | [`LightClient`], [`Event`], [`Config`], [`Resolution`] |
//! | [`rules`] | [`Violation`]: which rule an update or head broke |
//! | [`upstream`] | [`Upstreams`]: scores of silent, lagging and lying upstreams |
//! | [`persist`] | [`TrustedState`] and its versioned file format, `write_atomic` |
//! | [`proofs`] | transactions, receipts, `eth_getProof` and ancestry checks |
//! | `net` (feature `client`) | the WebSocket shell: `follow`, `FollowConfig`, the node's JSON shapes |
//!
//! ## How the shell drives it
//!
//! ```text
//! state  = TrustedState::decode(file)            // resume, then state.check_resume(spec, policy)
//!       or checkpoint.trust(spec, material, policy)
//! client = LightClient::new(spec, state, Config::default())
//! client.add_upstream(id) for each upstream
//! loop {
//!     // catch up: pages of updates from client.next_update_epoch() on
//!     client.handle_update_bytes(id, page_bytes, fresh_random_seed)
//!     // follow: every certified head from every upstream
//!     client.handle_head_bytes(id, head_bytes)
//!     client.handle_tick(now_ms)                  // silence and lag
//!     while let Some(event) = client.poll_event() {
//!         // EpochChanged → write_atomic(path, client.trusted_state().encode())
//!         // NeedUpdates  → fetch updates from `from_epoch`
//!         // UpstreamProblem → replace demoted upstreams (client.upstreams().preferred())
//!         // Equivocation → alarm; keep the evidence; client.resolve_equivocation(..)
//!     }
//! }
//! ```
//!
//! ## Trust, step by step
//!
//! The trusted state holds epoch `e`, set(`e`), the hash of set(`e+1`) once a
//! header of `e` committed to it, and set(`e+1`) once a hand-over delivered
//! it. An update for epoch `e` is verified with set(`e`) and gives set(`e+1`);
//! the next update (epoch `e+1`) is verified with that set and moves the
//! trusted epoch forward. Heads of `e` and `e+1` are verified as they come;
//! heads of later epochs wait (bounded) and ask for updates. See
//! `docs/protocol.md` §15 for the full rules.
//!
//! ```
//! use luxtensor_light::ChainSpec;
//! use luxtensor_light::client::{AgePolicy, Checkpoint, CheckpointMaterial, Config, LightClient};
//!
//! let spec = ChainSpec::devnet(4);
//! let policy = AgePolicy { current_epoch: 0, allow_old: false };
//! let state = Checkpoint::genesis(&spec)
//!     .trust(&spec, CheckpointMaterial::None, policy)
//!     .unwrap();
//! let client = LightClient::new(spec, state, Config::default()).unwrap();
//! assert_eq!(client.next_update_epoch(), 0);
//! ```

pub mod checkpoint;
#[cfg(feature = "client")]
pub mod net;
pub mod persist;
pub mod proofs;
pub mod rules;
pub mod tracker;
pub mod update;
pub mod upstream;

pub use checkpoint::{
    AgePolicy, Anchor, Checkpoint, CheckpointError, CheckpointMaterial, current_epoch_at,
    max_checkpoint_age_epochs,
};
pub use persist::TrustedState;
#[cfg(feature = "client")]
pub use persist::write_atomic;
pub use proofs::{AccountProof, ProofError};
pub use rules::Violation;
pub use tracker::{
    BlockRef, ClientError, Config, EquivocationEvidence, Event, HeadVerdict, LightClient,
    Resolution, UpdatesOutcome,
};
pub use update::{EpochUpdate, NextSet, SetDiff, SetDiffError};
pub use upstream::{Problem, UpstreamId, UpstreamStatus, Upstreams};
