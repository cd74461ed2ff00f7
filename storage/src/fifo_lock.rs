//! A first-come, first-served async lock for one executor thread.
//!
//! Appends must reach the log in the order they were issued: pipelined Produce requests of one
//! connection are one producer's batches in order. glommio's `Semaphore` is not FIFO (a new
//! waiter's first poll takes a permit that was just released to an older, woken waiter), so it
//! reordered concurrent appends. Here every caller draws a ticket when it first asks and is
//! served strictly in ticket order; a caller that gives up while waiting has its ticket skipped.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use event_listener::Event;

#[derive(Default)]
pub(crate) struct FifoLock {
    next_ticket: Cell<u64>,
    serving: Cell<u64>,
    /// Tickets whose holders stopped waiting before their turn.
    abandoned: RefCell<BTreeSet<u64>>,
    turn: Event,
}

/// Held while a caller has its turn; the next ticket is served when it drops.
pub(crate) struct FifoGuard<'a> {
    lock: &'a FifoLock,
}

/// A drawn ticket; skipped if dropped before its turn.
struct Ticket<'a> {
    lock: &'a FifoLock,
    number: u64,
    served: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.served {
            self.lock.abandoned.borrow_mut().insert(self.number);
            self.lock.skip_abandoned();
        }
    }
}

impl Drop for FifoGuard<'_> {
    fn drop(&mut self) {
        self.lock.serving.set(self.lock.serving.get() + 1);
        self.lock.skip_abandoned();
        self.lock.turn.notify(usize::MAX);
    }
}

impl FifoLock {
    fn skip_abandoned(&self) {
        let mut abandoned = self.abandoned.borrow_mut();
        let mut moved = false;
        while abandoned.remove(&self.serving.get()) {
            self.serving.set(self.serving.get() + 1);
            moved = true;
        }
        if moved {
            self.turn.notify(usize::MAX);
        }
    }

    /// Waits for the caller's turn. The ticket is drawn when this future is first polled.
    pub(crate) async fn lock(&self) -> FifoGuard<'_> {
        let number = self.next_ticket.get();
        self.next_ticket.set(number + 1);
        let mut ticket = Ticket {
            lock: self,
            number,
            served: false,
        };
        while self.serving.get() != number {
            let listener = self.turn.listen();
            if self.serving.get() == number {
                break;
            }
            listener.await;
        }
        ticket.served = true;
        FifoGuard { lock: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn callers_are_served_in_arrival_order_even_when_some_give_up() {
        crate::testing::run_local(|| async {
            let lock = Rc::new(FifoLock::default());
            let order = Rc::new(RefCell::new(Vec::new()));
            let first = lock.lock().await;
            let mut tasks = Vec::new();
            for i in 0..20u32 {
                let (lock, order) = (lock.clone(), order.clone());
                let t = glommio::spawn_local(async move {
                    let _g = lock.lock().await;
                    order.borrow_mut().push(i);
                    // Yield while holding the lock, so later arrivals queue up behind.
                    glommio::yield_if_needed().await;
                    futures_lite::future::yield_now().await;
                });
                tasks.push(t);
            }
            // Let every task draw its ticket, then cancel two of them.
            futures_lite::future::yield_now().await;
            let cancelled_5 = tasks.remove(5);
            let cancelled_11 = tasks.remove(10);
            drop(cancelled_5);
            drop(cancelled_11);
            drop(first);
            for t in tasks {
                t.await;
            }
            let got = order.borrow().clone();
            let want: Vec<u32> = (0..20).filter(|i| *i != 5 && *i != 11).collect();
            assert_eq!(got, want);
        });
    }
}
