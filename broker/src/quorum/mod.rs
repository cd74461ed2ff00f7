//! The controller quorum of a multi-node cluster: the Raft node on shard 0 (`service`), the
//! connections between controller nodes (`transport`), and this broker's registration and
//! heartbeats (`agent`). Only in cluster mode (`controller.quorum.voters` set); a single node
//! has none of it.
//!
//! The committed metadata is published as a [`QuorumView`] that every shard reads without a
//! lock.

mod agent;
pub mod service;
mod stop;
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
pub use stop::ControlledShutdown;

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
    /// How often the active controller gives partitions back to their preferred leaders
    /// (`leader.imbalance.check.interval.seconds`); `None` when `auto.leader.rebalance.enable`
    /// is false.
    pub preferred_leader_check_ms: Option<u64>,
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
    /// Notified after every new state.
    pub changed: event_listener::Event,
    /// Set once this process's registration is applied: from then on the image's leader epochs
    /// are the ones this incarnation leads in (a restarted leader's registration bumps them).
    registered: std::sync::atomic::AtomicBool,
    /// Set when this node is stopping: its heartbeats ask the controller to fence it now
    /// (controlled shutdown).
    shutting_down: std::sync::atomic::AtomicBool,
    /// Partitions of the offsets topic whose groups a shard of this node has loaded (it leads
    /// them): group requests for the others are refused here.
    offsets_loaded: std::sync::Mutex<std::collections::BTreeSet<u32>>,
}

impl QuorumView {
    /// Whether this process's broker registration is applied.
    pub fn registered(&self) -> bool {
        self.registered.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether this node is stopping (controlled shutdown).
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks this node as stopping: its next heartbeat asks to be fenced.
    pub fn set_shutting_down(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether this node coordinates the groups of offsets partition `partition` (it leads the
    /// partition and has loaded its groups).
    pub fn offsets_loaded(&self, partition: u32) -> bool {
        self.offsets_loaded
            .lock()
            .is_ok_and(|set| set.contains(&partition))
    }

    /// Records that this node took over (or gave up) offsets partition `partition`.
    pub fn set_offsets_loaded(&self, partition: u32, loaded: bool) {
        if let Ok(mut set) = self.offsets_loaded.lock() {
            if loaded {
                set.insert(partition);
            } else {
                set.remove(&partition);
            }
        }
    }

    /// Records that this process's registration is applied, and wakes the waiters.
    pub fn set_registered(&self) {
        self.registered
            .store(true, std::sync::atomic::Ordering::Release);
        self.changed.notify(usize::MAX);
    }

    /// The latest state.
    pub fn load(&self) -> Arc<QuorumState> {
        self.state.load_full()
    }

    /// Replaces the state and wakes whoever waits for a change.
    pub fn publish(&self, state: QuorumState) {
        self.state.store(Arc::new(state));
        self.changed.notify(usize::MAX);
    }
}

/// The controller log's path in a data directory; its presence marks a directory used by a
/// cluster node.
pub fn log_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir
        .join("__strom_meta")
        .join("controller")
        .join(service::LOG_FILE_NAME)
}

/// A broker as clients see it: where its client listener is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerEndpoint {
    /// `node.id`.
    pub node_id: i32,
    /// Advertised host of the client listener.
    pub host: String,
    /// Advertised port of the client listener.
    pub port: u16,
    /// `broker.rack`.
    pub rack: Option<String>,
}

impl QuorumState {
    /// The unfenced registered brokers with an endpoint on `listener`, by node id.
    pub fn live_brokers(&self, listener: &str) -> Vec<BrokerEndpoint> {
        self.image
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter_map(|b| {
                let e = b.endpoints.iter().find(|e| e.listener == listener)?;
                Some(BrokerEndpoint {
                    node_id: b.node_id,
                    host: e.host.clone(),
                    port: e.port,
                    rack: b.rack.clone(),
                })
            })
            .collect()
    }

    /// The active controller's node id, or -1 while none is known (Kafka's value).
    pub fn controller_id(&self) -> i32 {
        self.leader.map_or(-1, |l| l.0)
    }
}

impl QuorumSetup {
    /// The setup of this node from its cluster settings. Looks voter host names up with the
    /// blocking resolver: call it at startup, before the shards run.
    pub fn from_settings(
        settings: &crate::config::ClusterSettings,
        data_dir: &std::path::Path,
    ) -> std::io::Result<QuorumSetup> {
        let voters = settings
            .voters
            .iter()
            .map(|v| Ok((NodeId(v.id), v.socket_addr()?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let endpoints = settings
            .advertised
            .iter()
            .map(|a| strom_cluster::controller::EndpointRecord {
                listener: a.name.clone(),
                host: a.host.clone(),
                port: a.port,
            })
            .collect();
        Ok(QuorumSetup {
            node_id: NodeId(settings.node_id),
            voters,
            listen: settings.controller_listen,
            log_dir: data_dir.join("__strom_meta").join("controller"),
            tick_ms: QUORUM_TICK_MS,
            election_ticks: 10,
            heartbeat_ticks: 2,
            heartbeat_interval_ms: settings.heartbeat_interval_ms,
            session_timeout_ms: settings.session_timeout_ms,
            preferred_leader_check_ms: settings
                .auto_leader_rebalance
                .then_some(settings.leader_imbalance_check_interval_ms),
            registration: BrokerRecord {
                node_id: settings.node_id,
                incarnation: 0,
                endpoints,
                rack: settings.rack.clone(),
                fenced: false,
            },
        })
    }
}

/// How long a controller port in use is retried at startup (see
/// `strom_net::listener::bind_exclusive`).
pub const PORT_BUSY_WAIT_MS: u64 = 5_000;

/// Binds the controller listener: without `SO_REUSEPORT`, which would let a second node bind
/// the same port silently and take half of the connections meant for this one.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    strom_net::listener::bind_exclusive(addr, PORT_BUSY_WAIT_MS)
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

/// Starts the controller quorum on this executor (shard 0): serving `listener` (bound at
/// startup with [`bind`], so that "in use" is a startup error), the peer links, the ticker, the
/// Raft loop and this broker's registration and heartbeats.
pub fn spawn(
    setup: QuorumSetup,
    view: Arc<QuorumView>,
    listener: &std::net::TcpListener,
) -> Result<Quorum, QuorumError> {
    let listen_error = |source| QuorumError::Listen {
        addr: setup.listen,
        source,
    };
    let fd = listener.try_clone().map_err(listen_error)?;
    // SAFETY: the fd is a duplicate of a listening TCP socket that nothing else uses.
    let listener = unsafe {
        <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(
            std::os::fd::IntoRawFd::into_raw_fd(fd),
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
