//! The controller quorum of a multi-node cluster: the Raft node on shard 0 (`service`), the
//! connections between controller nodes (`transport`), and this broker's registration and
//! heartbeats (`agent`). Only in cluster mode (`controller.quorum.voters` set); a single node
//! has none of it.
//!
//! The committed metadata is published as a [`QuorumView`] that every shard reads without a
//! lock.

mod agent;
pub mod service;
pub mod transport;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use strom_cluster::controller::{BrokerRecord, Hello, MetadataImage, PeerMessage};
use strom_cluster::NodeId;

pub use service::{Event, QuorumHandle};

/// Milliseconds per Raft tick: the leader heartbeats every 2 ticks (100 ms) and a follower
/// campaigns after 10 to 20 ticks without one (0.5 to 1 s), so a lost controller is replaced in
/// about a second.
pub const QUORUM_TICK_MS: u64 = 50;

/// What the controller node needs to start.
#[derive(Clone, Debug)]
pub struct QuorumSetup {
    /// This node.
    pub node_id: NodeId,
    /// Every voter and its controller address (`controller.quorum.voters`).
    pub voters: Vec<(NodeId, SocketAddr)>,
    /// Where this node's controller listener binds.
    pub listen: SocketAddr,
    /// Directory of the controller log.
    pub log_dir: PathBuf,
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// Ticks before a follower campaigns (randomised up to twice this).
    pub election_ticks: usize,
    /// Ticks between the leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`.
    pub session_timeout_ms: u64,
    /// This broker's registration (its incarnation is chosen at start).
    pub registration: BrokerRecord,
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    /// The controller log could not be read or written.
    #[error("controller log: {0}")]
    Storage(strom_storage::StorageError),
    /// The controller log holds something this version cannot use.
    #[error("controller log: {0}")]
    Log(String),
    /// The controller listener could not bind.
    #[error("controller listener {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The committed metadata as of the last applied command.
#[derive(Debug, Default)]
pub struct QuorumState {
    /// Brokers, topics, assignments.
    pub image: Arc<MetadataImage>,
    /// The active controller, if known.
    pub leader: Option<NodeId>,
    /// The Raft term.
    pub term: u64,
    /// Index of the last applied command.
    pub applied: u64,
    /// This node.
    pub node_id: NodeId,
}

/// The published [`QuorumState`], shared by all shards.
#[derive(Debug, Default)]
pub struct QuorumView {
    /// The latest state.
    pub state: ArcSwap<QuorumState>,
}

impl QuorumView {
    /// The latest state.
    pub fn load(&self) -> Arc<QuorumState> {
        self.state.load_full()
    }
}

/// The running quorum of this node: its handle and its tasks.
pub struct Quorum {
    /// Proposals and events go here.
    pub handle: QuorumHandle,
    tasks: Vec<glommio::Task<()>>,
}

impl Quorum {
    /// Stops every task of the quorum (listener, peer writers, ticker, loop, agent); the
    /// listener's socket is closed. Connections peers opened to this node end when they close
    /// them.
    pub async fn stop(self) {
        for task in self.tasks {
            task.cancel().await;
        }
    }
}

/// Starts the controller quorum on this executor (shard 0): the listener, the peer links, the
/// ticker, the Raft loop and this broker's registration and heartbeats. Returns once the
/// listener is bound.
pub fn spawn(setup: QuorumSetup, view: Arc<QuorumView>) -> Result<Quorum, QuorumError> {
    // Not glommio's bind: it sets SO_REUSEPORT, which would let a second node bind the same
    // controller port silently and take half of the connections meant for this one.
    let std_listener =
        std::net::TcpListener::bind(setup.listen).map_err(|source| QuorumError::Listen {
            addr: setup.listen,
            source,
        })?;
    // SAFETY: the fd is a listening TCP socket we own; the listener takes it over.
    let listener = unsafe {
        <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(
            std::os::fd::IntoRawFd::into_raw_fd(std_listener),
        )
    };
    let (handle, events) = service::channel();
    let mut tasks = Vec::new();
    let me = Hello {
        node_id: setup.node_id.0,
        session: rand::random(),
    };
    let mut links = HashMap::new();
    for &(id, addr) in setup.voters.iter().filter(|(id, _)| *id != setup.node_id) {
        let (link, writer) = transport::PeerLink::spawn(me, id, addr);
        links.insert(id, link);
        tasks.push(writer);
    }
    let voters: Vec<NodeId> = setup.voters.iter().map(|v| v.0).collect();
    let deliver_to = handle.clone();
    let deliver: Rc<dyn Fn(NodeId, PeerMessage)> =
        Rc::new(move |from, message| deliver_to.send(Event::Peer(from, message)));
    tasks.push(glommio::spawn_local(transport::accept_loop(
        listener, voters, deliver,
    )));
    let (tick_ms, ticker) = (setup.tick_ms, handle.clone());
    tasks.push(glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(Duration::from_millis(tick_ms)).await;
            ticker.send(Event::Tick);
        }
    }));
    tasks.push(glommio::spawn_local(agent::run(
        handle.clone(),
        setup.clone(),
        view.clone(),
    )));
    tasks.push(glommio::spawn_local(async move {
        if let Err(e) = service::run(setup, view, links, events).await {
            // The metadata can no longer be kept safely on this node: stop it, like a failed
            // shard, rather than serve stale metadata.
            panic!("controller stopped: {e}");
        }
    }));
    Ok(Quorum { handle, tasks })
}
