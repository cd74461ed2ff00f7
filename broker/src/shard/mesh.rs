//! Request/reply over glommio's full mesh of bounded channels.
//!
//! Messages to a peer leave in the order they were issued: `call` appends to a per-peer local
//! queue (synchronously, so issue order is kept) and one pump task per peer moves the queue
//! into the bounded channel. Pipelined Produce requests of one connection thus reach the owning
//! shard in order. A full channel is counted and then waited on (back-pressure), never dropped;
//! the local queue is bounded by the requests in flight (`queued.max.requests` per connection).
//! Each shard has one receiver task per peer; requests are executed in their own task so a slow
//! request (a long-polling fetch) never blocks the channel behind it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use event_listener::Event;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::{GlommioError, ResourceType};

use super::ops::{self, ShardOp, ShardReply};
use super::Shard;

/// Messages per direction between two shards before senders wait.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

pub enum ShardMsg {
    Request { id: u64, op: ShardOp },
    Reply { id: u64, reply: ShardReply },
}

struct Outbox {
    queue: RefCell<VecDeque<ShardMsg>>,
    ready: Event,
}

pub struct Mesh {
    senders: Rc<Senders<ShardMsg>>,
    outboxes: Vec<Rc<Outbox>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<ShardReply>>>,
    next_id: Cell<u64>,
}

impl Mesh {
    pub fn new(senders: Senders<ShardMsg>) -> Mesh {
        let peers = senders.nr_consumers();
        Mesh {
            senders: Rc::new(senders),
            outboxes: (0..peers).map(|_| Rc::new(Outbox { queue: RefCell::new(VecDeque::new()), ready: Event::new() })).collect(),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
        }
    }

    fn enqueue(&self, shard: &Shard, to: usize, msg: ShardMsg) {
        shard.stats.cross_shard_sent.set(shard.stats.cross_shard_sent.get() + 1);
        let outbox = &self.outboxes[to];
        outbox.queue.borrow_mut().push_back(msg);
        outbox.ready.notify(1);
    }

    /// Messages waiting in the outboxes.
    pub fn queued(&self) -> usize {
        self.outboxes.iter().map(|o| o.queue.borrow().len()).sum()
    }

    pub async fn call(&self, shard: &Rc<Shard>, to: usize, op: ShardOp) -> ShardReply {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.enqueue(shard, to, ShardMsg::Request { id, op });
        rx.await.unwrap_or(ShardReply::Unavailable)
    }
}

/// Moves one peer's outbox into its channel, in order.
async fn pump(shard: Rc<Shard>, to: usize) {
    let outbox = shard.mesh.outboxes[to].clone();
    let senders = shard.mesh.senders.clone();
    loop {
        let next = outbox.queue.borrow_mut().pop_front();
        let Some(msg) = next else {
            let listener = outbox.ready.listen();
            if outbox.queue.borrow().is_empty() {
                listener.await;
            }
            continue;
        };
        let sent = match senders.try_send_to(to, msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                shard.stats.cross_shard_channel_full.set(shard.stats.cross_shard_channel_full.get() + 1);
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
                        let shard = shard.clone();
                        glommio::spawn_local(async move {
                            let inflight = &shard.metrics.mesh_ops_inflight;
                            inflight.set(inflight.get() + 1);
                            let reply = ops::execute(&shard, op).await;
                            let inflight = &shard.metrics.mesh_ops_inflight;
                            inflight.set(inflight.get() - 1);
                            shard.mesh.enqueue(&shard, peer, ShardMsg::Reply { id, reply });
                        })
                        .detach();
                    }
                    ShardMsg::Reply { id, reply } => {
                        if let Some(tx) = shard.mesh.pending.borrow_mut().remove(&id) {
                            let _ = tx.send(reply);
                        }
                    }
                }
            }
        })
        .detach();
    }
}
