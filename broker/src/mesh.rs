//! Request/reply between shards over glommio's full mesh of bounded channels.
//!
//! The mesh is generic over what it carries: a [`Handler`] names the operation and reply types
//! and executes operations that peers send. The broker's shards use it with `ShardOp` and
//! `ShardReply`; the microbenchmark in `perf/benches/cross_shard.rs` and the tests below use it
//! with plain numbers. It knows nothing else about the broker.
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
use std::future::Future;
use std::rc::Rc;

use event_listener::Event;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::task::JoinHandle;
use glommio::{GlommioError, ResourceType};

use crate::limits::MESH_OUTBOX_REQUESTS_MAX;
use crate::metrics::stages::OwnerTimes;

/// Messages per direction between two shards before senders wait.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// What a mesh carries, and how a shard executes what its peers send it.
pub trait Handler: 'static {
    /// An operation sent to a peer.
    type Op: Send + 'static;
    /// The answer to an operation.
    type Reply: Send + 'static;
    /// Whether the caller may stop waiting and have the peer drop `op` midway. Only operations
    /// that change nothing (waits) qualify: dropping any other could leave its work half done.
    fn cancellable(op: &Self::Op) -> bool;
    /// The reply of a call that never reached its peer (outbox full, peer gone).
    fn unavailable() -> Self::Reply;
    /// Runs an operation a peer sent.
    fn execute(self: &Rc<Self>, op: Self::Op) -> impl Future<Output = Self::Reply>;
}

/// One message between two shards.
pub enum Msg<H: Handler> {
    /// Run `op` and answer with `id`.
    Request {
        /// Matches the reply to the call.
        id: u64,
        /// What to run.
        op: H::Op,
    },
    /// `ran`: when the peer started and finished the request (for the request stages).
    Reply {
        /// The request's id.
        id: u64,
        /// Its answer.
        reply: H::Reply,
        /// When the peer ran it.
        ran: OwnerTimes,
    },
    /// The caller of request `id` no longer waits for it.
    Cancel {
        /// The request's id.
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

/// Counters of one shard's end of the mesh (exported by the metrics endpoint).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MeshCounts {
    /// Messages queued to peers (requests, replies and cancels).
    pub sent: u64,
    /// Times a message found a peer's channel full and waited.
    pub channel_full: u64,
    /// Requests refused because the outbox to their peer was full.
    pub outbox_full: u64,
    /// Requests from peers cancelled while they ran.
    pub cancelled: u64,
    /// Requests from peers being executed here now.
    pub running: u64,
    /// Messages waiting in the outboxes, not yet in a channel.
    pub queued: u64,
}

/// Where the reply to a call goes, with when the peer ran it.
type ReplySender<H> = oneshot::Sender<(<H as Handler>::Reply, OwnerTimes)>;

/// One shard's end of the mesh.
pub struct Mesh<H: Handler> {
    id: usize,
    senders: Rc<Senders<Msg<H>>>,
    outboxes: Vec<Rc<Outbox<Msg<H>>>>,
    pending: RefCell<HashMap<u64, ReplySender<H>>>,
    next_id: Cell<u64>,
    /// Cancellable requests from peers being executed here, by (peer, id).
    running: RefCell<HashMap<(usize, u64), JoinHandle<()>>>,
    sent: Cell<u64>,
    channel_full: Cell<u64>,
    outbox_full: Cell<u64>,
    cancelled: Cell<u64>,
    executing: Cell<u64>,
}

/// Removes a call's pending entry if its future is dropped before the reply, and tells the peer
/// to drop a cancellable request.
struct PendingCall<'a, H: Handler> {
    mesh: &'a Mesh<H>,
    to: usize,
    id: u64,
    cancellable: bool,
    answered: bool,
}

impl<H: Handler> Drop for PendingCall<'_, H> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let waiting = self.mesh.pending.borrow_mut().remove(&self.id).is_some();
        if waiting && self.cancellable {
            self.mesh
                .enqueue_control(self.to, Msg::Cancel { id: self.id });
        }
    }
}

impl<H: Handler> Mesh<H> {
    /// This shard's end, from the senders its `MeshBuilder::join` gave it; the outbox to each
    /// peer holds at most `MESH_OUTBOX_REQUESTS_MAX` requests.
    pub fn new(senders: Senders<Msg<H>>) -> Mesh<H> {
        Self::with_outbox_limit(senders, MESH_OUTBOX_REQUESTS_MAX)
    }

    /// [`Mesh::new`] with another bound on each outbox (tests).
    pub fn with_outbox_limit(senders: Senders<Msg<H>>, outbox_requests_max: usize) -> Mesh<H> {
        let peers = senders.nr_consumers();
        Mesh {
            id: senders.peer_id(),
            senders: Rc::new(senders),
            outboxes: (0..peers)
                .map(|_| Rc::new(Outbox::new(outbox_requests_max)))
                .collect(),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            running: RefCell::new(HashMap::new()),
            sent: Cell::new(0),
            channel_full: Cell::new(0),
            outbox_full: Cell::new(0),
            cancelled: Cell::new(0),
            executing: Cell::new(0),
        }
    }

    /// This shard's index in the mesh.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Shards in the mesh, this one included.
    pub fn peers(&self) -> usize {
        self.outboxes.len()
    }

    fn enqueue_control(&self, to: usize, msg: Msg<H>) {
        bump(&self.sent);
        self.outboxes[to].push_control(msg);
    }

    /// The counters of this end.
    pub fn counts(&self) -> MeshCounts {
        MeshCounts {
            sent: self.sent.get(),
            channel_full: self.channel_full.get(),
            outbox_full: self.outbox_full.get(),
            cancelled: self.cancelled.get(),
            running: self.executing.get(),
            queued: self.outboxes.iter().map(|o| o.len() as u64).sum(),
        }
    }

    /// Runs `op` on peer `to` (not this shard); the reply, and when `to` ran it (None if it
    /// never did: the reply is then [`Handler::unavailable`]).
    pub async fn call(&self, to: usize, op: H::Op) -> (H::Reply, Option<OwnerTimes>) {
        debug_assert_ne!(
            to, self.id,
            "a shard calls itself directly, not over the mesh"
        );
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let cancellable = H::cancellable(&op);
        if self.outboxes[to]
            .push_request(Msg::Request { id, op })
            .is_err()
        {
            bump(&self.outbox_full);
            tracing::debug!(
                shard = self.id,
                peer = to,
                "outbox to shard {to} is full: request refused"
            );
            return (H::unavailable(), None);
        }
        bump(&self.sent);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let mut call = PendingCall {
            mesh: self,
            to,
            id,
            cancellable,
            answered: false,
        };
        let reply = match rx.await {
            Ok((reply, ran)) => (reply, Some(ran)),
            Err(_) => (H::unavailable(), None),
        };
        call.answered = true;
        reply
    }
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// Moves one peer's outbox into its channel, in order.
async fn pump<H: Handler>(mesh: Rc<Mesh<H>>, to: usize) {
    let outbox = mesh.outboxes[to].clone();
    let senders = mesh.senders.clone();
    loop {
        let Some(msg) = outbox.pop() else {
            outbox.wait().await;
            continue;
        };
        let sent = match senders.try_send_to(to, msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                bump(&mesh.channel_full);
                senders.send_to(to, msg).await.map_err(|_| ())
            }
            Err(_) => Err(()),
        };
        if sent.is_err() {
            // The peer is gone (shutting down): fail every waiting call to it.
            tracing::debug!(shard = mesh.id, peer = to, "shard channel closed");
            mesh.pending.borrow_mut().clear();
            return;
        }
    }
}

/// Starts this shard's mesh tasks: one pump per peer and one receiver per peer, which runs each
/// request from that peer in its own task with `handler`.
pub fn spawn_tasks<H: Handler>(
    mesh: &Rc<Mesh<H>>,
    handler: Rc<H>,
    mut receivers: Receivers<Msg<H>>,
) {
    for to in 0..mesh.outboxes.len() {
        if to != mesh.id {
            glommio::spawn_local(pump(mesh.clone(), to)).detach();
        }
    }
    for (peer, rx) in receivers.streams() {
        let mesh = mesh.clone();
        let handler = handler.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    Msg::Request { id, op } => {
                        let cancellable = H::cancellable(&op);
                        let task = glommio::spawn_local(run_request(
                            mesh.clone(),
                            handler.clone(),
                            peer,
                            id,
                            op,
                            cancellable,
                        ))
                        .detach();
                        if cancellable {
                            mesh.running.borrow_mut().insert((peer, id), task);
                        }
                    }
                    Msg::Reply { id, reply, ran } => {
                        if let Some(tx) = mesh.pending.borrow_mut().remove(&id) {
                            let _ = tx.send((reply, ran));
                        }
                    }
                    Msg::Cancel { id } => {
                        // Absent if the request finished first; its reply is then ignored.
                        let task = mesh.running.borrow_mut().remove(&(peer, id));
                        if let Some(task) = task {
                            task.cancel();
                            bump(&mesh.cancelled);
                        }
                    }
                }
            }
        })
        .detach();
    }
}

/// Counts a request in `executing` for as long as it runs, however it ends (a cancelled task
/// is dropped without finishing).
struct Executing<'a>(&'a Cell<u64>);

impl Drop for Executing<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Executes a request from `peer` and queues the reply.
async fn run_request<H: Handler>(
    mesh: Rc<Mesh<H>>,
    handler: Rc<H>,
    peer: usize,
    id: u64,
    op: H::Op,
    cancellable: bool,
) {
    let start = std::time::Instant::now();
    let reply = {
        bump(&mesh.executing);
        let _running = Executing(&mesh.executing);
        handler.execute(op).await
    };
    let ran = OwnerTimes {
        start,
        end: std::time::Instant::now(),
    };
    if cancellable {
        mesh.running.borrow_mut().remove(&(peer, id));
    }
    mesh.enqueue_control(peer, Msg::Reply { id, reply, ran });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use glommio::channels::channel_mesh::MeshBuilder;
    use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

    use super::*;

    /// Operations of the test handler.
    enum Op {
        /// Appends the number to the peer's log.
        Record(u64),
        /// The peer's log so far.
        Log,
        /// Waits for ever (cancellable, like a long-poll wait).
        WaitForever,
        /// Sleeps, then counts itself done (not cancellable).
        Work(u64),
        /// The peer's mesh counters.
        Counts,
    }

    #[derive(Debug)]
    enum Reply {
        Done,
        Log(Vec<u64>),
        Counts(MeshCounts),
        Unavailable,
    }

    /// Counters the test reads from every thread.
    #[derive(Default)]
    struct Shared {
        waits_dropped: AtomicU64,
        work_done: AtomicU64,
        finished: AtomicBool,
    }

    struct Peer {
        log: RefCell<Vec<u64>>,
        mesh: RefCell<Option<Rc<Mesh<Peer>>>>,
        shared: Arc<Shared>,
    }

    /// Counts a wait that ended without finishing.
    struct DropCount(Arc<Shared>);

    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.waits_dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Handler for Peer {
        type Op = Op;
        type Reply = Reply;

        fn cancellable(op: &Op) -> bool {
            matches!(op, Op::WaitForever)
        }

        fn unavailable() -> Reply {
            Reply::Unavailable
        }

        async fn execute(self: &Rc<Self>, op: Op) -> Reply {
            match op {
                Op::Record(n) => {
                    self.log.borrow_mut().push(n);
                    Reply::Done
                }
                Op::Log => Reply::Log(self.log.borrow().clone()),
                Op::WaitForever => {
                    let _guard = DropCount(self.shared.clone());
                    futures::future::pending::<()>().await;
                    Reply::Done
                }
                Op::Work(ms) => {
                    glommio::timer::sleep(Duration::from_millis(ms)).await;
                    self.shared.work_done.fetch_add(1, Ordering::SeqCst);
                    Reply::Done
                }
                Op::Counts => {
                    let mesh = self.mesh.borrow().clone().unwrap();
                    Reply::Counts(mesh.counts())
                }
            }
        }
    }

    /// Tells shard 1 to stop serving when dropped.
    struct Finished(Arc<Shared>);

    impl Drop for Finished {
        fn drop(&mut self) {
            self.0.finished.store(true, Ordering::SeqCst);
        }
    }

    /// Waits (bounded) until `cond` holds.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..2_000 {
            if cond() {
                return;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting until {what}");
    }

    /// Runs `test` on shard 0 of a two-shard mesh whose outboxes hold `outbox_max` requests;
    /// shard 1 serves until the test ends.
    fn two_shards<F>(outbox_max: usize, test: F)
    where
        F: AsyncFn(Rc<Mesh<Peer>>, Arc<Shared>) + Clone + Send + 'static,
    {
        let builder = MeshBuilder::full(2, 16);
        let shared = Arc::new(Shared::default());
        let handles = LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(2))
            .on_all_shards(move || {
                let (builder, shared, test) = (builder.clone(), shared.clone(), test.clone());
                async move {
                    let (senders, receivers) = builder.join().await.unwrap();
                    let mesh = Rc::new(Mesh::with_outbox_limit(senders, outbox_max));
                    let peer = Rc::new(Peer {
                        log: RefCell::new(Vec::new()),
                        mesh: RefCell::new(Some(mesh.clone())),
                        shared: shared.clone(),
                    });
                    spawn_tasks(&mesh, peer, receivers);
                    if mesh.id() == 0 {
                        // Set however the test ends, so that a failing test fails, not hangs.
                        let _finished = Finished(shared.clone());
                        test(mesh, shared.clone()).await;
                    } else {
                        while !shared.finished.load(Ordering::SeqCst) {
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            })
            .unwrap();
        for r in handles.join_all() {
            r.unwrap();
        }
    }

    #[test]
    fn requests_reach_the_peer_in_issue_order() {
        two_shards(MESH_OUTBOX_REQUESTS_MAX, async |mesh, _| {
            assert_eq!(mesh.peers(), 2);
            // Issued all at once, more than the channel holds (16): the pump must keep order
            // across the waits on a full channel.
            let calls = (0..500).map(|n| mesh.call(1, Op::Record(n)));
            let replies = futures::future::join_all(calls).await;
            assert!(replies
                .iter()
                .all(|(r, ran)| matches!(r, Reply::Done) && ran.is_some()));
            let (Reply::Log(log), _) = mesh.call(1, Op::Log).await else {
                panic!("no log")
            };
            assert_eq!(log, (0..500).collect::<Vec<_>>());
            let counts = mesh.counts();
            assert_eq!(counts.sent, 501);
            assert!(
                counts.channel_full > 0,
                "the channel never filled: {counts:?}"
            );
            assert_eq!(counts.queued, 0);
        });
    }

    #[test]
    fn a_dropped_wait_is_cancelled_on_the_peer_and_other_work_is_not() {
        two_shards(MESH_OUTBOX_REQUESTS_MAX, async |mesh, shared| {
            // A long-poll wait whose caller gives up: the peer drops it at once.
            let wait = Box::pin(mesh.call(1, Op::WaitForever));
            let timer = Box::pin(glommio::timer::sleep(Duration::from_millis(20)));
            match futures::future::select(wait, timer).await {
                futures::future::Either::Right((_, wait)) => drop(wait),
                futures::future::Either::Left(_) => panic!("a wait for ever ended"),
            }
            eventually("the wait is dropped on the peer", || {
                shared.waits_dropped.load(Ordering::SeqCst) == 1
            })
            .await;
            let (Reply::Counts(peer), _) = mesh.call(1, Op::Counts).await else {
                panic!("no counts")
            };
            assert_eq!((peer.cancelled, peer.running), (1, 1), "{peer:?}");
            // Work whose caller gives up still completes: dropping it could leave it half done.
            let work = Box::pin(mesh.call(1, Op::Work(30)));
            let timer = Box::pin(glommio::timer::sleep(Duration::from_millis(5)));
            drop(futures::future::select(work, timer).await);
            eventually("the abandoned work completes", || {
                shared.work_done.load(Ordering::SeqCst) == 1
            })
            .await;
            let (Reply::Counts(peer), _) = mesh.call(1, Op::Counts).await else {
                panic!("no counts")
            };
            assert_eq!(peer.cancelled, 1, "{peer:?}");
        });
    }

    #[test]
    fn a_full_outbox_refuses_requests_instead_of_queueing_them() {
        two_shards(4, async |mesh, _| {
            // Issued in one poll, before the pump runs: four fit, six are refused at once.
            let calls = (0..10).map(|n| mesh.call(1, Op::Record(n)));
            let replies = futures::future::join_all(calls).await;
            let refused = replies
                .iter()
                .filter(|(r, ran)| matches!(r, Reply::Unavailable) && ran.is_none())
                .count();
            assert_eq!(refused, 6);
            assert_eq!(mesh.counts().outbox_full, 6);
            let (Reply::Log(log), _) = mesh.call(1, Op::Log).await else {
                panic!("no log")
            };
            assert_eq!(log, vec![0, 1, 2, 3]);
        });
    }

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
