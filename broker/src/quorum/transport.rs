//! Connections between controller nodes: one outgoing connection per peer, on which this node
//! only sends, and the peers' connections to this node, on which it only receives.
//!
//! Sending never waits: a frame goes into the peer's queue, which holds at most
//! `PEER_QUEUE_FRAMES_MAX` frames and `PEER_QUEUE_BYTES_MAX` bytes and drops the oldest beyond
//! that (Raft resends what matters),
//! and a writer task per peer connects, says `Hello`, and writes the queue out, reconnecting
//! after a failure. Receiving accepts at most `PEER_CONNECTIONS_MAX` connections at a time, each
//! of which must start with a `Hello` naming a voter.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use strom_cluster::controller::{Hello, PeerMessage, PEER_FRAME_BYTES_MAX};
use strom_cluster::NodeId;

/// Frames queued for one peer; older ones are dropped beyond it.
pub const PEER_QUEUE_FRAMES_MAX: usize = 4096;
/// Bytes queued for one peer; older frames are dropped beyond it (the newest is always kept,
/// so a snapshot larger than this still goes out).
pub const PEER_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Incoming peer connections open at once.
pub const PEER_CONNECTIONS_MAX: usize = 32;
/// How long a connection attempt to a peer may take.
const PEER_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How long one write to a peer may block before the connection is given up.
const PEER_WRITE_TIMEOUT_MS: u64 = 2_000;
/// Data a peer has not acknowledged for this long ends the connection (`TCP_USER_TIMEOUT`):
/// across a network partition the writer then reconnects, and is connected again soon after
/// the partition heals, instead of waiting out TCP's retransmission backoff.
const PEER_UNACKED_TIMEOUT_MS: u32 = 1_500;
/// Pause before connecting again after a failure.
const PEER_RECONNECT_MS: u64 = 100;

/// The sending side of one peer.
pub struct PeerLink {
    peer: NodeId,
    queue: RefCell<VecDeque<Vec<u8>>>,
    /// Bytes of the frames in `queue`.
    queued_bytes: Cell<usize>,
    wake: event_listener::Event,
    /// Frames dropped because the queue was full.
    pub dropped: Cell<u64>,
    /// Whether the writer is connected now.
    pub connected: Cell<bool>,
    /// Whether the last connection attempt was refused: nothing listens on the peer's
    /// controller port, so its process is gone (a partition times out instead). The active
    /// controller fences such a broker without waiting out its session.
    pub refused: Cell<bool>,
    /// Set when the peer opened a new connection to us: it restarted (or a partition healed),
    /// so our connection to it is probably stale and is replaced before the next write.
    reconnect: Cell<bool>,
    /// The session of the peer's last hello.
    peer_session: Cell<Option<u64>>,
}

impl PeerLink {
    /// A link to `peer` at `addr`, and its writer task (runs until cancelled).
    pub fn spawn(me: Hello, peer: NodeId, addr: SocketAddr) -> (Rc<PeerLink>, glommio::Task<()>) {
        let link = Rc::new(PeerLink::new(peer));
        let task = glommio::spawn_local(writer(link.clone(), me, addr));
        (link, task)
    }

    fn new(peer: NodeId) -> PeerLink {
        PeerLink {
            peer,
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            wake: event_listener::Event::new(),
            dropped: Cell::new(0),
            connected: Cell::new(false),
            refused: Cell::new(false),
            reconnect: Cell::new(false),
            peer_session: Cell::new(None),
        }
    }

    /// Queues a message for the peer.
    pub fn send(&self, message: &PeerMessage) {
        let frame = message.to_frame();
        let mut queue = self.queue.borrow_mut();
        let mut bytes = self.queued_bytes.get() + frame.len();
        while !queue.is_empty()
            && (queue.len() >= PEER_QUEUE_FRAMES_MAX || bytes > PEER_QUEUE_BYTES_MAX)
        {
            if let Some(old) = queue.pop_front() {
                bytes -= old.len();
            }
            self.dropped.set(self.dropped.get() + 1);
        }
        queue.push_back(frame);
        self.queued_bytes.set(bytes);
        drop(queue);
        self.wake.notify(1);
    }

    /// The peer said hello with `session`: if that is a new start of the peer, replace our
    /// connection to it before the next write (it may be a leftover of the old process).
    pub fn peer_hello(&self, session: u64) {
        let known = self.peer_session.replace(Some(session));
        if known.is_some_and(|k| k != session) && self.connected.get() {
            self.reconnect.set(true);
        }
    }

    async fn next_frame(&self) -> Vec<u8> {
        loop {
            if let Some(frame) = self.queue.borrow_mut().pop_front() {
                self.queued_bytes.set(self.queued_bytes.get() - frame.len());
                return frame;
            }
            let listener = self.wake.listen();
            if !self.queue.borrow().is_empty() {
                continue;
            }
            listener.await;
        }
    }
}

async fn writer(link: Rc<PeerLink>, me: Hello, addr: SocketAddr) {
    let hello = PeerMessage::Hello(me).to_frame();
    loop {
        let connected =
            TcpStream::connect_timeout(addr, Duration::from_millis(PEER_CONNECT_TIMEOUT_MS)).await;
        let mut stream = match connected {
            Ok(stream) => stream,
            Err(e) => {
                let refused = matches!(&e, glommio::GlommioError::IoError(io)
                    if io.kind() == std::io::ErrorKind::ConnectionRefused);
                if refused && !link.refused.get() {
                    tracing::info!(
                        "controller peer {} at {addr}: connection refused",
                        link.peer
                    );
                }
                link.refused.set(refused);
                tracing::debug!("controller peer {} at {addr}: connect: {e}", link.peer);
                glommio::timer::sleep(Duration::from_millis(PEER_RECONNECT_MS)).await;
                continue;
            }
        };
        link.refused.set(false);
        let _ = stream.set_nodelay(true);
        let _ = strom_net::set_user_timeout(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            PEER_UNACKED_TIMEOUT_MS,
        );
        // A peer that stopped reading (paused, or gone without a reset) must not hold the
        // writer forever: the write fails, the connection is replaced, the queue drops the
        // oldest frames meanwhile.
        let _ = stream.set_write_timeout(Some(Duration::from_millis(PEER_WRITE_TIMEOUT_MS)));
        if stream.write_all(&hello).await.is_err() {
            continue;
        }
        link.connected.set(true);
        tracing::info!("controller peer {} connected at {addr}", link.peer);
        link.reconnect.set(false);
        loop {
            let frame = link.next_frame().await;
            if link.reconnect.replace(false) {
                tracing::info!(
                    "controller peer {} restarted; replacing our connection to it",
                    link.peer
                );
                link.queued_bytes.set(link.queued_bytes.get() + frame.len());
                link.queue.borrow_mut().push_front(frame);
                break;
            }
            if let Err(e) = stream.write_all(&frame).await {
                tracing::info!("controller peer {} at {addr}: {e}; reconnecting", link.peer);
                break;
            }
        }
        link.connected.set(false);
        glommio::timer::sleep(Duration::from_millis(PEER_RECONNECT_MS)).await;
    }
}

/// Accepts peer connections on `listener` and hands every message, with its sender, to
/// `deliver`. Connections from nodes that are not `voters` are closed.
pub async fn accept_loop(
    listener: TcpListener,
    voters: Vec<NodeId>,
    deliver: Rc<dyn Fn(NodeId, PeerMessage)>,
) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("controller listener: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.get() >= PEER_CONNECTIONS_MAX {
            tracing::warn!(
                "controller listener: {PEER_CONNECTIONS_MAX} peer connections open; closing a new one"
            );
            continue;
        }
        open.set(open.get() + 1);
        let (open, voters, deliver) = (open.clone(), voters.clone(), deliver.clone());
        glommio::spawn_local(async move {
            if let Err(e) = read_peer(stream, &voters, &*deliver).await {
                tracing::info!("controller peer connection closed: {e}");
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

async fn read_peer(
    stream: TcpStream,
    voters: &[NodeId],
    deliver: &dyn Fn(NodeId, PeerMessage),
) -> Result<(), String> {
    let mut frames = strom_net::frame::FrameReader::new(stream, PEER_FRAME_BYTES_MAX);
    let first = frames.next_frame().await.map_err(|e| e.to_string())?;
    let from = match first.as_deref().map(PeerMessage::from_body) {
        Some(Ok(PeerMessage::Hello(hello))) if voters.contains(&NodeId(hello.node_id)) => {
            deliver(NodeId(hello.node_id), PeerMessage::Hello(hello));
            NodeId(hello.node_id)
        }
        Some(Ok(PeerMessage::Hello(hello))) => {
            return Err(format!("node {} is not a voter", hello.node_id))
        }
        Some(_) => return Err("the first message is not a hello".into()),
        None => return Ok(()),
    };
    while let Some(frame) = frames.next_frame().await.map_err(|e| e.to_string())? {
        let message =
            PeerMessage::from_body(&frame).map_err(|e| format!("from node {from}: {e}"))?;
        deliver(from, message);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_queue_keeps_the_newest_frames_within_its_limits() {
        let l = PeerLink::new(NodeId(1));
        for i in 0..PEER_QUEUE_FRAMES_MAX + 10 {
            l.send(&PeerMessage::Raft(vec![u8::try_from(i % 256).unwrap()]));
        }
        assert_eq!(l.queue.borrow().len(), PEER_QUEUE_FRAMES_MAX);
        assert_eq!(l.dropped.get(), 10);
        let big = vec![7u8; 1 << 20];
        for _ in 0..100 {
            l.send(&PeerMessage::Raft(big.clone()));
        }
        let queued: usize = l.queue.borrow().iter().map(Vec::len).sum();
        assert_eq!(queued, l.queued_bytes.get());
        assert!(queued <= PEER_QUEUE_BYTES_MAX, "{queued}");
        assert!(queued > PEER_QUEUE_BYTES_MAX - (2 << 20), "{queued}");
        // A frame larger than the byte limit still goes out, alone.
        l.send(&PeerMessage::Raft(vec![1u8; PEER_QUEUE_BYTES_MAX + 1]));
        assert_eq!(l.queue.borrow().len(), 1);
    }
}
