//! The bounded ring every connection reads the event stream from (sans-IO
//! apart from wakers: no tasks, no clock).
//!
//! [`Ring::publish`] appends a batch of events and wakes every receiver
//! waiting for one, once; each connection reads the ring at its own pace
//! from its own task ([`RingReceiver::poll_recv`]). A receiver that falls a
//! whole ring behind gets [`Lagged`] and its connection is closed as slow.
//! So a new head costs every subscribed connection one wake-up, and memory
//! stays bounded by the ring. (tokio's broadcast channel has no
//! `poll_recv`, which a connection driven by one `poll` function needs.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A bounded ring of events, read by many receivers.
#[derive(Debug)]
pub struct Ring<T> {
    state: Mutex<RingState<T>>,
    /// The publisher's spare waiter list (swapped with the ring's, so that
    /// neither is reallocated as connections come and go).
    spare: Mutex<Vec<Waker>>,
    receivers: AtomicUsize,
}

#[derive(Debug)]
struct RingState<T> {
    events: VecDeque<T>,
    /// Sequence number of `events[0]`.
    first: u64,
    capacity: usize,
    /// Receivers waiting for the next event: at most one entry per receiver
    /// (see [`RingReceiver::waiting_at`]), plus stale ones of receivers
    /// dropped since the last publish.
    waiters: Vec<Waker>,
}

impl<T> RingState<T> {
    /// Sequence number of the next event to be published.
    fn end(&self) -> u64 {
        self.first + self.events.len() as u64
    }
}

/// A receiver fell a whole ring behind: the events it missed are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged;

impl<T: Clone> Ring<T> {
    /// An empty ring holding at most `capacity` (at least 1) events.
    pub fn new(capacity: usize) -> Arc<Self> {
        let capacity = capacity.max(1);
        Arc::new(Self {
            state: Mutex::new(RingState {
                events: VecDeque::with_capacity(capacity),
                first: 0,
                capacity,
                waiters: Vec::new(),
            }),
            spare: Mutex::new(Vec::new()),
            receivers: AtomicUsize::new(0),
        })
    }

    /// A receiver that starts with the next event published.
    pub fn subscribe(ring: &Arc<Self>) -> RingReceiver<T> {
        let next = ring.lock().end();
        ring.receivers.fetch_add(1, Ordering::Relaxed);
        RingReceiver {
            ring: ring.clone(),
            next,
            waiting_at: None,
            paused: false,
        }
    }

    /// Live receivers (not paused).
    pub fn receiver_count(&self) -> usize {
        self.receivers.load(Ordering::Relaxed)
    }

    /// Appends `events` (dropping the oldest beyond capacity) and wakes
    /// every waiting receiver once; nothing if `events` is empty.
    pub fn publish(&self, events: impl IntoIterator<Item = T>) {
        let mut wake = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut state = self.lock();
            let mut any = false;
            for event in events {
                if state.events.len() == state.capacity {
                    state.events.pop_front();
                    state.first += 1;
                }
                state.events.push_back(event);
                any = true;
            }
            if !any {
                return;
            }
            std::mem::swap(&mut state.waiters, &mut *wake);
        }
        // Outside the ring's lock: receivers woken on other threads read at once.
        for waker in wake.drain(..) {
            waker.wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, RingState<T>> {
        // A panic while holding the lock cannot leave the ring inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connection's position in a [`Ring`]. Polled by one task (its waker
/// is left in the ring at most once per published batch).
#[derive(Debug)]
pub struct RingReceiver<T: Clone> {
    ring: Arc<Ring<T>>,
    /// Sequence number of the next event to read.
    next: u64,
    /// The ring's `end` when this receiver last left its waker: while the
    /// ring has not moved past it, the waker is still there.
    waiting_at: Option<u64>,
    /// Not reading for now (see [`RingReceiver::pause`]).
    paused: bool,
}

impl<T: Clone> RingReceiver<T> {
    /// Moves up to `max` unread events into `out`, in order.
    ///
    /// `Ready(Ok(true))`: caught up, and the waker is left for the next
    /// batch. `Ready(Ok(false))`: more events are waiting. `Pending`:
    /// nothing new; the waker is left.
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<T>,
        max: usize,
    ) -> Poll<Result<bool, Lagged>> {
        let mut state = self.ring.lock();
        if self.next < state.first {
            return Poll::Ready(Err(Lagged));
        }
        let end = state.end();
        let start = (self.next - state.first) as usize;
        let take = ((end - self.next) as usize).min(max);
        out.extend(state.events.range(start..start + take).cloned());
        self.next += take as u64;
        let caught_up = self.next == end;
        if caught_up && self.waiting_at != Some(end) {
            state.waiters.push(cx.waker().clone());
            self.waiting_at = Some(end);
        }
        if take == 0 {
            Poll::Pending
        } else {
            Poll::Ready(Ok(caught_up))
        }
    }
}

impl<T: Clone> RingReceiver<T> {
    /// Stops counting as a receiver until [`RingReceiver::resume`] (the
    /// owner stops polling it meanwhile). A connection that unsubscribes
    /// and subscribes again keeps its receiver this way, so it never
    /// leaves more than one waker in the ring, however often it does so.
    pub fn pause(&mut self) {
        if !self.paused {
            self.paused = true;
            self.ring.receivers.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Counts as a receiver again, from the next event published.
    pub fn resume(&mut self) {
        if self.paused {
            self.paused = false;
            self.next = self.ring.lock().end();
            self.ring.receivers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the receiver is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

impl<T: Clone> Drop for RingReceiver<T> {
    fn drop(&mut self) {
        self.pause();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn every_receiver_reads_every_event_in_order_and_is_woken_once_per_batch() {
        let ring = Ring::new(4);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut a = Ring::subscribe(&ring);
        let mut out = Vec::new();
        assert!(a.poll_recv(&mut cx, &mut out, 8).is_pending());
        // Polled again before anything is published: the waker is not left twice.
        assert!(a.poll_recv(&mut cx, &mut out, 8).is_pending());
        ring.publish([1, 2]);
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "one wake-up per batch");
        ring.publish([]);
        ring.publish([3]);
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "not waiting any more");
        assert_eq!(a.poll_recv(&mut cx, &mut out, 1), Poll::Ready(Ok(false)));
        assert_eq!(a.poll_recv(&mut cx, &mut out, 8), Poll::Ready(Ok(true)));
        assert_eq!(out, [1, 2, 3]);
        let mut late = Ring::subscribe(&ring);
        assert_eq!(ring.receiver_count(), 2);
        ring.publish([4]);
        out.clear();
        assert_eq!(late.poll_recv(&mut cx, &mut out, 8), Poll::Ready(Ok(true)));
        assert_eq!(out, [4], "a new receiver starts with the next event");
        drop(late);
        assert_eq!(ring.receiver_count(), 1);
    }

    #[test]
    fn pausing_and_resuming_leaves_one_waker_and_skips_what_was_missed() {
        let ring = Ring::new(8);
        let mut cx = Context::from_waker(Waker::noop());
        let mut r = Ring::subscribe(&ring);
        let mut out = Vec::new();
        for _ in 0..1_000 {
            assert!(r.poll_recv(&mut cx, &mut out, 8).is_pending());
            r.pause();
            assert_eq!(ring.receiver_count(), 0);
            r.resume();
        }
        assert_eq!(
            ring.lock().waiters.len(),
            1,
            "one waker, not one per resume"
        );
        r.pause();
        ring.publish([1]);
        r.resume();
        ring.publish([2]);
        assert_eq!(r.poll_recv(&mut cx, &mut out, 8), Poll::Ready(Ok(true)));
        assert_eq!(out, [2], "events published while paused are skipped");
        drop(r);
        assert_eq!(ring.receiver_count(), 0);
    }

    #[test]
    fn a_receiver_a_whole_ring_behind_has_lagged() {
        let ring = Ring::new(2);
        let mut cx = Context::from_waker(Waker::noop());
        let mut slow = Ring::subscribe(&ring);
        for i in 0..3 {
            ring.publish([i]);
        }
        let mut out = Vec::new();
        assert_eq!(
            slow.poll_recv(&mut cx, &mut out, 8),
            Poll::Ready(Err(Lagged))
        );
    }
}
