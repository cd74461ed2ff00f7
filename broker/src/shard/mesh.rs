//! Request/reply over glommio's full mesh of bounded channels.
//!
//! Messages to a peer leave in the order they were issued: `call` appends to a per-peer local
//! queue (synchronously, so issue order is kept) and one pump task per peer moves the queue
//! into the bounded channel. Pipelined Produce requests of one connection thus reach the owning
//! shard in order. A full channel is counted and then waited on (back-pressure). The local queue
//! is bounded too (`MESH_OUTBOX_REQUESTS_MAX`): a request that finds it full is answered
//! `Unavailable` at once and counted, never queued without bound.
//!
//! Each shard has one receiver task per peer; requests are executed in their own task so a slow
//! request (a long-polling fetch) never blocks the channel behind it. A caller that stops
//! waiting for a cancellable request (a long-poll wait whose fetch already has its answer from
//! another shard) sends `Cancel`, and the peer drops the waiting task at once instead of keeping
//! it until its timeout.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use event_listener::Event;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::task::JoinHandle;
use glommio::{GlommioError, ResourceType};

use super::ops::{self, ShardOp, ShardReply};
use super::Shard;
use crate::limits::MESH_OUTBOX_REQUESTS_MAX;
use crate::metrics::stages::OwnerTimes;

/// Messages per direction between two shards before senders wait.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

pub enum ShardMsg {
    Request {
        id: u64,
        op: ShardOp,
    },
    /// `ran`: when this shard started and finished the request (for the request stages).
    Reply {
        id: u64,
        reply: ShardReply,
        ran: OwnerTimes,
    },
    /// The caller of request `id` no longer waits for it.
    Cancel {
        id: u64,
    },
}

/// Messages waiting for one peer's channel, in issue order.
pub(crate) struct Outbox<M> {
    /// Each message with whether it is a request.
    queue: RefCell<VecDeque<(M, bool)>>,
    /// Requests in `queue`; replies and cancels are not bounded here, since each answers a
    /// request that was itself admitted.
    requests: Cell<usize>,
    requests_max: usize,
    ready: Event,
}

impl<M> Outbox<M> {
    pub(crate) fn new(requests_max: usize) -> Outbox<M> {
        Outbox {
            queue: RefCell::new(VecDeque::new()),
            requests: Cell::new(0),
            requests_max,
            ready: Event::new(),
        }
    }

    /// Queues a request unless `requests_max` requests are queued already (then hands it back).
    pub(crate) fn push_request(&self, msg: M) -> Result<(), M> {
        if self.requests.get() >= self.requests_max {
            return Err(msg);
        }
        self.requests.set(self.requests.get() + 1);
        self.push(msg, true);
        Ok(())
    }

    /// Queues a reply or a cancel.
    pub(crate) fn push_control(&self, msg: M) {
        self.push(msg, false);
    }

    fn push(&self, msg: M, request: bool) {
        self.queue.borrow_mut().push_back((msg, request));
        self.ready.notify(1);
    }

    /// The oldest queued message.
    pub(crate) fn pop(&self) -> Option<M> {
        let (msg, request) = self.queue.borrow_mut().pop_front()?;
        if request {
            self.requests.set(self.requests.get() - 1);
        }
        Some(msg)
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Waits until something is queued.
    async fn wait(&self) {
        let listener = self.ready.listen();
        if self.queue.borrow().is_empty() {
            listener.await;
        }
    }
}
pub struct Mesh {
    senders: Rc<Senders<ShardMsg>>,
    outboxes: Vec<Rc<Outbox<ShardMsg>>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<(ShardReply, OwnerTimes)>>>,
    next_id: Cell<u64>,
    /// Cancellable requests from peers being executed here, by (peer, id).
    running: RefCell<HashMap<(usize, u64), JoinHandle<()>>>,
    /// Requests refused because the outbox to their peer was full.
    outbox_full: Cell<u64>,
    /// Requests from peers cancelled while they ran.
    cancelled: Cell<u64>,
}

/// Removes a call's pending entry if its future is dropped before the reply, and tells the peer
/// to drop a cancellable request.
struct PendingCall<'a> {
    mesh: &'a Mesh,
    shard: &'a Shard,
    to: usize,
    id: u64,
    cancellable: bool,
    answered: bool,
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let waiting = self.mesh.pending.borrow_mut().remove(&self.id).is_some();
        if waiting && self.cancellable {
            self.mesh
                .enqueue_control(self.shard, self.to, ShardMsg::Cancel { id: self.id });
        }
    }
}

impl Mesh {
    pub fn new(senders: Senders<ShardMsg>) -> Mesh {
        let peers = senders.nr_consumers();
        Mesh {
            senders: Rc::new(senders),
            outboxes: (0..peers)
                .map(|_| Rc::new(Outbox::new(MESH_OUTBOX_REQUESTS_MAX)))
                .collect(),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            running: RefCell::new(HashMap::new()),
            outbox_full: Cell::new(0),
            cancelled: Cell::new(0),
        }
    }

    fn enqueue_control(&self, shard: &Shard, to: usize, msg: ShardMsg) {
        shard
            .stats
            .cross_shard_sent
            .set(shard.stats.cross_shard_sent.get() + 1);
        self.outboxes[to].push_control(msg);
    }

    /// Messages waiting in the outboxes.
    pub fn queued(&self) -> usize {
        self.outboxes.iter().map(|o| o.len()).sum()
    }

    /// Requests refused because an outbox was full, since start.
    pub fn outbox_full(&self) -> u64 {
        self.outbox_full.get()
    }

    /// Requests from other shards that were cancelled while they ran, since start.
    pub fn cancelled(&self) -> u64 {
        self.cancelled.get()
    }

    /// Runs `op` on shard `to`; the reply, and when `to` ran it (None if it never did).
    pub async fn call(
        &self,
        shard: &Shard,
        to: usize,
        op: ShardOp,
    ) -> (ShardReply, Option<OwnerTimes>) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let cancellable = op.cancellable();
        if self.outboxes[to]
            .push_request(ShardMsg::Request { id, op })
            .is_err()
        {
            self.outbox_full.set(self.outbox_full.get() + 1);
            tracing::debug!(
                shard = shard.id,
                peer = to,
                "outbox to shard {to} is full: request refused"
            );
            return (ShardReply::Unavailable, None);
        }
        shard
            .stats
            .cross_shard_sent
            .set(shard.stats.cross_shard_sent.get() + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let mut call = PendingCall {
            mesh: self,
            shard,
            to,
            id,
            cancellable,
            answered: false,
        };
        let reply = match rx.await {
            Ok((reply, ran)) => (reply, Some(ran)),
            Err(_) => (ShardReply::Unavailable, None),
        };
        call.answered = true;
        reply
    }
}

/// Moves one peer's outbox into its channel, in order.
async fn pump(shard: Rc<Shard>, to: usize) {
    let outbox = shard.mesh.outboxes[to].clone();
    let senders = shard.mesh.senders.clone();
    loop {
        let Some(msg) = outbox.pop() else {
            outbox.wait().await;
            continue;
        };
        let sent = match senders.try_send_to(to, msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                shard
                    .stats
                    .cross_shard_channel_full
                    .set(shard.stats.cross_shard_channel_full.get() + 1);
                senders.send_to(to, msg).await.map_err(|_| ())
            }
            Err(_) => Err(()),
        };
        if sent.is_err() {
            // The peer is gone (shutting down): fail every waiting call to it.
            tracing::debug!(shard = shard.id, peer = to, "shard channel closed");
            shard.mesh.pending.borrow_mut().clear();
            return;
        }
    }
}

pub fn spawn_tasks(shard: &Rc<Shard>, mut receivers: Receivers<ShardMsg>) {
    for to in 0..shard.mesh.outboxes.len() {
        if to != shard.id {
            glommio::spawn_local(pump(shard.clone(), to)).detach();
        }
    }
    for (peer, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    ShardMsg::Request { id, op } => {
                        let cancellable = op.cancellable();
                        let task = glommio::spawn_local(run_request(
                            shard.clone(),
                            peer,
                            id,
                            op,
                            cancellable,
                        ))
                        .detach();
                        if cancellable {
                            shard.mesh.running.borrow_mut().insert((peer, id), task);
                        }
                    }
                    ShardMsg::Reply { id, reply, ran } => {
                        if let Some(tx) = shard.mesh.pending.borrow_mut().remove(&id) {
                            let _ = tx.send((reply, ran));
                        }
                    }
                    ShardMsg::Cancel { id } => {
                        // Absent if the request finished first; its reply is then ignored.
                        let task = shard.mesh.running.borrow_mut().remove(&(peer, id));
                        if let Some(task) = task {
                            task.cancel();
                            shard.mesh.cancelled.set(shard.mesh.cancelled.get() + 1);
                        }
                    }
                }
            }
        })
        .detach();
    }
}

/// Executes a request from `peer` and queues the reply.
async fn run_request(shard: Rc<Shard>, peer: usize, id: u64, op: ShardOp, cancellable: bool) {
    let start = std::time::Instant::now();
    let reply = {
        let _running = crate::metrics::Tracked::start(&shard.metrics.mesh_ops_inflight);
        ops::execute(&shard, op).await
    };
    let ran = OwnerTimes {
        start,
        end: std::time::Instant::now(),
    };
    if cancellable {
        shard.mesh.running.borrow_mut().remove(&(peer, id));
    }
    shard
        .mesh
        .enqueue_control(&shard, peer, ShardMsg::Reply { id, reply, ran });
}

#[cfg(test)]
mod tests {
    use super::Outbox;

    #[test]
    fn outbox_bounds_requests_not_replies() {
        let o: Outbox<u32> = Outbox::new(2);
        assert!(o.push_request(1).is_ok());
        assert!(o.push_request(2).is_ok());
        assert_eq!(o.push_request(3), Err(3), "a third request is handed back");
        // Replies and cancels answer admitted requests: never refused.
        o.push_control(10);
        o.push_control(11);
        assert_eq!(o.len(), 4);
        // Order is issue order, whatever the kind.
        assert_eq!(o.pop(), Some(1));
        assert!(o.push_request(4).is_ok(), "room for one request again");
        assert_eq!(o.push_request(5), Err(5));
        let rest: Vec<u32> = std::iter::from_fn(|| o.pop()).collect();
        assert_eq!(rest, vec![2, 10, 11, 4]);
        assert!(o.push_request(6).is_ok() && o.push_request(7).is_ok());
    }
}
