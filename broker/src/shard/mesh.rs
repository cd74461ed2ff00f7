//! Request/reply over glommio's full mesh of bounded channels.
//!
//! A full channel is counted and then waited on (back-pressure), never dropped. Each shard has
//! one receiver task per peer; requests are executed in their own task so a slow request
//! (a long-polling fetch) never blocks the channel behind it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

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

pub struct Mesh {
    senders: Senders<ShardMsg>,
    pending: RefCell<HashMap<u64, oneshot::Sender<ShardReply>>>,
    next_id: Cell<u64>,
}

impl Mesh {
    pub fn new(senders: Senders<ShardMsg>) -> Mesh {
        Mesh { senders, pending: RefCell::new(HashMap::new()), next_id: Cell::new(0) }
    }

    async fn send(&self, shard: &Shard, to: usize, msg: ShardMsg) -> Result<(), ()> {
        shard.stats.cross_shard_sent.set(shard.stats.cross_shard_sent.get() + 1);
        match self.senders.try_send_to(to, msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                shard.stats.cross_shard_channel_full.set(shard.stats.cross_shard_channel_full.get() + 1);
                self.senders.send_to(to, msg).await.map_err(|_| ())
            }
            Err(_) => Err(()),
        }
    }

    pub async fn call(&self, shard: &Rc<Shard>, to: usize, op: ShardOp) -> ShardReply {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        if self.send(shard, to, ShardMsg::Request { id, op }).await.is_err() {
            self.pending.borrow_mut().remove(&id);
            return ShardReply::Unavailable;
        }
        rx.await.unwrap_or(ShardReply::Unavailable)
    }
}

pub fn spawn_receivers(shard: &Rc<Shard>, mut receivers: Receivers<ShardMsg>) {
    for (peer, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    ShardMsg::Request { id, op } => {
                        let shard = shard.clone();
                        glommio::spawn_local(async move {
                            let reply = ops::execute(&shard, op).await;
                            let _ = shard.mesh.send(&shard, peer, ShardMsg::Reply { id, reply }).await;
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
