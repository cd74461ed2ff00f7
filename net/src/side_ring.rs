//! A small io_uring per shard thread, used only to wait until a socket is writable again.
//!
//! glommio 0.9 has no public readiness API and no sendfile. The zero-copy path sets
//! `O_NONBLOCK` on the socket and calls `sendfile(2)` directly; on `EAGAIN` it submits
//! `IORING_OP_POLL_ADD(POLLOUT)` here. The ring signals completions on an eventfd, which one
//! reaper task per thread reads through glommio (so the executor parks instead of spinning),
//! then wakes the waiters whose polls completed. A waiter dropped before its completion (timeout,
//! closed connection) cancels its poll, because a pending poll holds a reference to the socket.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};

use glommio::io::BufferedFile;
use io_uring::{opcode, types, IoUring};

use crate::limits::SIDE_RING_ENTRIES;

/// user_data of cancellation entries; their completions are ignored.
const CANCEL_USER_DATA: u64 = u64::MAX;

#[derive(Default)]
struct WaitState {
    result: Option<i32>,
    waker: Option<Waker>,
}

pub(crate) struct SideRing {
    ring: RefCell<IoUring>,
    waiters: RefCell<HashMap<u64, WaitState>>,
    next_id: Cell<u64>,
    _eventfd: OwnedFd,
}

thread_local! {
    static RING: RefCell<Option<Rc<SideRing>>> = const { RefCell::new(None) };
}

/// The calling thread's side ring, created (with its reaper task) on first use.
/// Must be called from inside a glommio executor.
fn side_ring() -> io::Result<Rc<SideRing>> {
    if let Some(r) = RING.with(|r| r.borrow().clone()) {
        return Ok(r);
    }
    let ring = IoUring::new(SIDE_RING_ENTRIES)?;
    // SAFETY: eventfd has no memory effects; a negative result is checked below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `efd` is a fresh descriptor owned by nobody else.
    let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
    ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
    let reader_fd = crate::sys::dup(eventfd.as_raw_fd())?;
    let side = Rc::new(SideRing {
        ring: RefCell::new(ring),
        waiters: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
        _eventfd: eventfd,
    });
    RING.with(|r| *r.borrow_mut() = Some(side.clone()));
    // SAFETY: the BufferedFile takes ownership of the dup'ed descriptor and closes it on drop.
    let file = unsafe { BufferedFile::from_raw_fd(reader_fd.into_raw_fd()) };
    glommio::spawn_local(reaper(Rc::downgrade(&side), file)).detach();
    Ok(side)
}

async fn reaper(ring: Weak<SideRing>, eventfd: BufferedFile) {
    loop {
        // Blocks (asynchronously, through glommio's ring) until a completion is signalled.
        if let Err(e) = eventfd.read_at(0, 8).await {
            tracing::error!("side ring eventfd read failed, writability waits may stall: {e}");
            return;
        }
        match ring.upgrade() {
            Some(r) => r.reap(),
            None => return,
        }
    }
}

impl SideRing {
    fn push(&self, entry: io_uring::squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: POLL_ADD and POLL_REMOVE entries reference no user memory.
        if unsafe { ring.submission().push(&entry) }.is_err() {
            ring.submit()?;
            // SAFETY: as above.
            unsafe { ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("side ring submission queue full"))?;
        }
        ring.submit()?;
        Ok(())
    }

    fn reap(&self) {
        let mut done = Vec::new();
        {
            let mut ring = self.ring.borrow_mut();
            for cqe in ring.completion() {
                if cqe.user_data() != CANCEL_USER_DATA {
                    done.push((cqe.user_data(), cqe.result()));
                }
            }
        }
        let mut waiters = self.waiters.borrow_mut();
        for (id, res) in done {
            if let Some(w) = waiters.get_mut(&id) {
                w.result = Some(res);
                if let Some(waker) = w.waker.take() {
                    waker.wake();
                }
            }
        }
    }
}

/// Cancels a poll whose waiter went away before it completed.
struct Registration {
    ring: Rc<SideRing>,
    id: u64,
    completed: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.ring.waiters.borrow_mut().remove(&self.id);
        if !self.completed {
            let e = opcode::PollRemove::new(self.id)
                .build()
                .user_data(CANCEL_USER_DATA);
            if let Err(err) = self.ring.push(e) {
                tracing::warn!("could not cancel a socket poll: {err}");
            }
        }
    }
}

/// Waits until `fd` is writable (or has an error or hang-up pending, which the next send reports).
pub(crate) async fn writable(fd: RawFd) -> io::Result<()> {
    let ring = side_ring()?;
    let id = ring.next_id.get();
    ring.next_id.set(id.wrapping_add(1) % CANCEL_USER_DATA);
    ring.waiters.borrow_mut().insert(id, WaitState::default());
    let mut reg = Registration {
        ring: ring.clone(),
        id,
        completed: false,
    };
    let poll = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
        .build()
        .user_data(id);
    ring.push(poll)?;
    let res = poll_fn(|cx| {
        reg.ring.reap();
        let mut waiters = reg.ring.waiters.borrow_mut();
        let Some(w) = waiters.get_mut(&reg.id) else {
            return Poll::Ready(Err(io::Error::other("side ring waiter lost")));
        };
        match w.result {
            Some(r) => Poll::Ready(Ok(r)),
            None => {
                w.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await;
    reg.completed = true;
    drop(reg);
    match res? {
        r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
        _ => Ok(()),
    }
}
