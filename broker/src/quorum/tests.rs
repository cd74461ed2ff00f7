//! Three controller nodes in one process, each on its own executor thread with real sockets on
//! loopback and real log files: they elect a leader, every broker registers, proposals from any
//! node commit everywhere, and a node that stops and starts again replays its log and catches
//! up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strom_cluster::controller::{
    Applied, BrokerRecord, Command, CreateTopic, PartitionRecord, ProposalOutcome, TopicRecord,
};
use strom_cluster::NodeId;

use super::{QuorumSetup, QuorumView};

type Proposals = Arc<std::sync::Mutex<Vec<(Command, std::sync::mpsc::Sender<ProposalOutcome>)>>>;

struct Node {
    view: Arc<QuorumView>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Proposals this node should make, with where to put the outcome.
    proposals: Proposals,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn setup(id: i32, voters: &[(NodeId, SocketAddr)], dir: &std::path::Path) -> QuorumSetup {
    let listen = voters[usize::try_from(id).unwrap()].1;
    QuorumSetup {
        node_id: NodeId(id),
        voters: voters.to_vec(),
        listen,
        log_dir: dir.join(format!("node-{id}")),
        tick_ms: 20,
        election_ticks: 10,
        heartbeat_ticks: 2,
        heartbeat_interval_ms: 50,
        session_timeout_ms: 600,
        preferred_leader_check_ms: Some(1000),
        registration: BrokerRecord {
            node_id: id,
            incarnation: 0,
            endpoints: Vec::new(),
            rack: None,
            fenced: false,
        },
    }
}

fn start(setup: QuorumSetup) -> Node {
    let view = Arc::new(QuorumView::default());
    let stop = Arc::new(AtomicBool::new(false));
    let proposals: Proposals = Arc::default();
    let (v, s, p) = (view.clone(), stop.clone(), proposals.clone());
    let thread = std::thread::spawn(move || {
        strom_storage::testing::run_local(move || async move {
            let listener = super::bind(setup.listen).unwrap();
            let quorum = super::spawn(setup, v, &listener).unwrap();
            let handle = quorum.handle.clone();
            while !s.load(Ordering::Relaxed) {
                let work: Vec<_> = std::mem::take(&mut *p.lock().unwrap());
                for (command, tx) in work {
                    let handle = handle.clone();
                    glommio::spawn_local(async move {
                        let _ = tx.send(handle.propose(command).await);
                    })
                    .detach();
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            quorum.stop().await;
        });
    });
    Node {
        view,
        stop,
        thread: Some(thread),
        proposals,
    }
}

impl Node {
    fn propose(&self, command: Command) -> ProposalOutcome {
        let (tx, rx) = std::sync::mpsc::channel();
        self.proposals.lock().unwrap().push((command, tx));
        rx.recv_timeout(Duration::from_secs(20)).unwrap()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Waits (bounded) until `check` holds for the nodes' views.
fn wait_for(nodes: &[&Node], what: &str, check: impl Fn(&[Arc<super::QuorumState>]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states: Vec<_> = nodes.iter().map(|n| n.view.load()).collect();
        if check(&states) {
            return;
        }
        if Instant::now() > deadline {
            let brief: Vec<String> = states
                .iter()
                .map(|s| {
                    let fenced: Vec<i32> = s
                        .image
                        .brokers
                        .values()
                        .filter(|b| b.fenced)
                        .map(|b| b.node_id)
                        .collect();
                    format!(
                        "node {}: leader {:?} term {} applied {} topics {:?} fenced {fenced:?}",
                        s.node_id,
                        s.leader,
                        s.term,
                        s.applied,
                        s.image.topics.keys().collect::<Vec<_>>()
                    )
                })
                .collect();
            panic!("timed out waiting for {what}: {brief:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn agreed(states: &[Arc<super::QuorumState>]) -> bool {
    let first = &states[0];
    first.leader.is_some()
        && states.iter().all(|s| {
            s.leader == first.leader && s.applied == first.applied && s.image == first.image
        })
}

fn topic(name: &str) -> Command {
    Command::CreateTopic(CreateTopic {
        name: name.into(),
        topic: TopicRecord {
            topic_id: [7; 16],
            partitions: vec![PartitionRecord::new(&[NodeId(0), NodeId(1), NodeId(2)])],
            configs: BTreeMap::new(),
        },
    })
}

#[test]
fn three_nodes_elect_register_commit_and_a_restarted_node_catches_up() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let voters: Vec<(NodeId, SocketAddr)> = (0..3)
        .map(|i| (NodeId(i), SocketAddr::from(([127, 0, 0, 1], free_port()))))
        .collect();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| start(setup(i, &voters, dir.path())))
        .collect();
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_for(&refs, "a leader and three registered brokers", |s| {
            agreed(s)
                && s[0].image.brokers.len() == 3
                && s[0].image.brokers.values().all(|b| !b.fenced)
        });
    }
    // A proposal made on a follower is forwarded to the leader and commits everywhere.
    let leader = nodes[0].view.load().leader.unwrap();
    let follower = (0..3).find(|&i| NodeId(i) != leader).unwrap();
    assert_eq!(
        nodes[usize::try_from(follower).unwrap()].propose(topic("t1")),
        ProposalOutcome::Applied(Applied::Ok)
    );
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_for(&refs, "t1 everywhere", |s| {
            agreed(s) && s[0].image.topics.contains_key("t1")
        });
    }

    // Stop a follower: the other two still commit, and after its session timeout it is fenced.
    let stopped = usize::try_from(follower).unwrap();
    nodes[stopped].halt();
    let live: Vec<usize> = (0..3).filter(|&i| i != stopped).collect();
    assert_eq!(
        nodes[live[0]].propose(topic("t2")),
        ProposalOutcome::Applied(Applied::Ok)
    );
    {
        let refs: Vec<&Node> = live.iter().map(|&i| &nodes[i]).collect();
        wait_for(&refs, "the stopped broker fenced", |s| {
            agreed(s)
                && s[0].image.topics.contains_key("t2")
                && s[0].image.brokers[&i32::try_from(stopped).unwrap()].fenced
        });
    }

    // It starts again from its log: catches up, registers a new incarnation, is unfenced.
    nodes[stopped] = start(setup(i32::try_from(stopped).unwrap(), &voters, dir.path()));
    {
        let refs: Vec<&Node> = nodes.iter().collect();
        wait_for(&refs, "the restarted node caught up and unfenced", |s| {
            agreed(s)
                && s[0].image.topics.contains_key("t2")
                && s[0].image.brokers.values().all(|b| !b.fenced)
        });
    }
    // Creating t1 again is refused by the committed state, wherever it is asked.
    assert_eq!(
        nodes[stopped].propose(topic("t1")),
        ProposalOutcome::Applied(Applied::Refused(
            strom_cluster::controller::image::errors::TOPIC_ALREADY_EXISTS
        ))
    );
}
