//! Parallel block sync: which blocks to fetch, from which peer, and when to
//! give up on a peer — as a pure state machine.
//!
//! [`SyncProtocol`] is sans-IO (the shape of quinn-proto's `Connection`):
//! no sockets, no tokio, no clock. Time comes in as `now_ms` arguments; the
//! driver (the node's `SyncManager`) sends the [`BatchRequest`]s it hands out,
//! feeds the answers back with [`SyncProtocol::handle_response`], calls
//! [`SyncProtocol::check_timeouts`] when [`SyncProtocol::next_wakeup_ms`]
//! passes, imports what [`SyncProtocol::take_ready`] returns, and polls
//! [`SyncProtocol::poll_event`] for penalties and cancellations.
//!
//! Rules (the defaults are in [`SyncConfig`]):
//! - headers first: the caller verifies headers and their QCs, then queues
//!   them with [`SyncProtocol::queue_headers`]; the scheduler downloads the
//!   bodies and checks each block against its queued header (same hash, and
//!   [`luxtensor_light::Block::verify_body`]);
//! - a batch is a contiguous range of at most
//!   [`MAX_BLOCKS_PER_REQUEST`] blocks assigned to one peer; each peer has at
//!   most [`MAX_PARALLEL_DOWNLOADS`] batches in flight, so `k` peers keep
//!   `4k` batches in flight and download about `k` times as fast as one;
//! - downloaded blocks wait in a bounded buffer and leave it strictly in
//!   order; only blocks within `max_buffered_blocks` of the next block to
//!   release are ever requested, so a full buffer stops new batches;
//! - each peer's timeout follows its measured latency and throughput:
//!   `clamp(timeout_factor × expected time, min, max)`, where the expected
//!   time of a batch is `rtt + blocks × per_block` times its place in the
//!   peer's queue (a peer's bandwidth serves its batches one after another,
//!   so service times are measured between consecutive answers); a timed-out
//!   range is retried, and after `max_retries` timeouts on one peer it goes
//!   to another;
//! - the oldest range (the one holding back import) is hedged to a second
//!   peer when it is late; the first answer wins, the other is cancelled;
//! - a peer that serves a block that does not match its header, or fewer
//!   blocks than it should have, is penalised ([`SyncEvent::Penalize`]), is
//!   not asked for that range again, and the range is fetched elsewhere; the
//!   verified prefix of its answer is kept.
//!
//! The peer id is a type parameter: tests use `u32`, the node libp2p's `PeerId`.

pub mod manager;
mod peers;
mod protocol;
#[cfg(test)]
mod tests;

pub use manager::SyncManager;
pub use protocol::{
    BLOCK_REQUEST_TIMEOUT_MS, BatchRequest, BlockRange, ConfigError, MAX_BLOCK_NUMBER,
    MAX_BLOCKS_PER_REQUEST, MAX_PARALLEL_DOWNLOADS, MAX_RETRIES, PenaltyReason, RequestId,
    SyncConfig, SyncError, SyncEvent, SyncProtocol, SyncStats,
};
