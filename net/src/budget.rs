//! A shard's budget of request bytes in flight (Kafka's `queued.max.request.bytes`, Redpanda's
//! per-shard memory semaphore). A frame is charged its full length from the prefix, before its
//! body is read; a connection whose charge does not fit stops reading until enough is released,
//! so the client feels back-pressure (TCP flow control), never an error.
//!
//! Large frames may together take at most three quarters of the budget: the last quarter stays
//! free for small requests (`small_bytes_max` or less), so a few clients that announce huge
//! frames and then send nothing cannot stall every other client on the shard. Waiters are
//! served first-fit: whoever fits when bytes are released goes first.

use std::cell::Cell;
use std::rc::Rc;

use event_listener::Event;

/// The byte budget of one shard.
pub struct ByteBudget {
    capacity: usize,
    reserve: usize,
    small_bytes_max: usize,
    available: Cell<usize>,
    waiting: Cell<usize>,
    waits_total: Cell<u64>,
    released: Event,
}

/// Bytes taken from a [`ByteBudget`]; given back when dropped.
pub struct BudgetPermit {
    budget: Rc<ByteBudget>,
    bytes: usize,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        let b = &self.budget;
        b.available.set(b.available.get() + self.bytes);
        b.released.notify(usize::MAX);
    }
}

impl BudgetPermit {
    /// Bytes this permit holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl ByteBudget {
    /// `capacity` bytes in all; frames over `small_bytes_max` leave a quarter of it free.
    pub fn new(capacity: usize, small_bytes_max: usize) -> Rc<ByteBudget> {
        let capacity = capacity.max(1);
        Rc::new(ByteBudget {
            capacity,
            reserve: capacity / 4,
            small_bytes_max,
            available: Cell::new(capacity),
            waiting: Cell::new(0),
            waits_total: Cell::new(0),
            released: Event::new(),
        })
    }

    /// What a frame of `bytes` is charged, and how much must stay free after it is charged. A
    /// frame larger than its share is charged the whole share (it waits until that is free).
    fn charge(&self, bytes: usize) -> (usize, usize) {
        if bytes <= self.small_bytes_max {
            (bytes.min(self.capacity), 0)
        } else {
            (bytes.min(self.capacity - self.reserve), self.reserve)
        }
    }

    fn try_take(self: &Rc<Self>, charge: usize, keep_free: usize) -> Option<BudgetPermit> {
        let available = self.available.get();
        (available >= charge + keep_free).then(|| {
            self.available.set(available - charge);
            BudgetPermit {
                budget: self.clone(),
                bytes: charge,
            }
        })
    }

    /// Takes the bytes of a frame of `bytes`, waiting until they fit.
    pub async fn acquire(self: &Rc<Self>, bytes: usize) -> BudgetPermit {
        let (charge, keep_free) = self.charge(bytes);
        if let Some(p) = self.try_take(charge, keep_free) {
            return p;
        }
        self.waits_total.set(self.waits_total.get() + 1);
        self.waiting.set(self.waiting.get() + 1);
        let _waiting = Waiting(self);
        loop {
            let listener = self.released.listen();
            if let Some(p) = self.try_take(charge, keep_free) {
                return p;
            }
            listener.await;
        }
    }

    /// Bytes charged now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.available.get()
    }

    /// The whole budget.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Readers waiting for bytes now.
    pub fn waiting(&self) -> usize {
        self.waiting.get()
    }

    /// Times a reader had to wait, since start.
    pub fn waits_total(&self) -> u64 {
        self.waits_total.get()
    }
}

/// Counts a waiter for as long as it waits (also if its future is dropped).
struct Waiting<'a>(&'a ByteBudget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.set(self.0.waiting.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn charges_and_releases() {
        let b = ByteBudget::new(1000, 10);
        block_on(async {
            let p = b.acquire(300).await;
            assert_eq!((p.bytes(), b.in_use()), (300, 300));
            drop(p);
            assert_eq!(b.in_use(), 0);
        });
    }

    #[test]
    fn a_large_frame_waits_until_bytes_are_released() {
        let b = ByteBudget::new(1000, 10);
        block_on(async {
            let first = b.acquire(700).await;
            let mut second = Box::pin(b.acquire(500));
            assert!(
                poll_once(&mut second).await.is_none(),
                "over the budget: must wait"
            );
            assert_eq!((b.waiting(), b.waits_total()), (1, 1));
            drop(first);
            let second = second.await;
            assert_eq!((second.bytes(), b.waiting()), (500, 0));
        });
    }

    #[test]
    fn large_frames_leave_a_quarter_for_small_requests() {
        let b = ByteBudget::new(1000, 10);
        block_on(async {
            // Large frames stop at 750 in all...
            let a = b.acquire(400).await;
            let c = b.acquire(350).await;
            let mut d = Box::pin(b.acquire(11));
            assert!(
                poll_once(&mut d).await.is_none(),
                "a large frame may not take the reserve"
            );
            // ...while small requests still get the rest.
            let mut small = Vec::new();
            for _ in 0..25 {
                small.push(b.acquire(10).await);
            }
            assert_eq!(b.in_use(), 1000);
            drop((a, c, small));
            assert_eq!(d.await.bytes(), 11);
        });
    }

    #[test]
    fn a_frame_larger_than_its_share_is_charged_the_share() {
        let b = ByteBudget::new(1000, 10);
        block_on(async {
            let p = b.acquire(1 << 30).await;
            assert_eq!(p.bytes(), 750);
            let mut q = Box::pin(b.acquire(1 << 30));
            assert!(poll_once(&mut q).await.is_none());
            drop(p);
            assert_eq!(q.await.bytes(), 750);
        });
    }

    #[test]
    fn a_dropped_waiter_is_not_counted() {
        let b = ByteBudget::new(100, 10);
        block_on(async {
            let p = b.acquire(75).await;
            let mut w = Box::pin(b.acquire(50));
            assert!(poll_once(&mut w).await.is_none());
            assert_eq!(b.waiting(), 1);
            drop(w);
            assert_eq!(b.waiting(), 0);
            drop(p);
            assert_eq!(b.in_use(), 0);
        });
    }
}
