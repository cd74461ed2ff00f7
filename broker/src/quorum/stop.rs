//! Controlled shutdown: a cluster node asked to stop (SIGTERM, SIGINT) first has the
//! controller fence it, which moves every partition it leads to another in-sync replica in a
//! new leader epoch, and stops once the committed metadata shows it leads nothing (Kafka's
//! controlled shutdown). Clients see NOT_LEADER_OR_FOLLOWER with the new leader and move on,
//! instead of timing out against a dead node and waiting for the session timeout.
//!
//! It runs on a thread of its own, so that a stuck shard cannot keep the process from
//! stopping: after `controlled.shutdown.timeout.ms` the shards stop regardless.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::QuorumView;

/// How often the stop thread looks at the flags and the published metadata.
const POLL: Duration = Duration::from_millis(10);

/// After its leaderships moved, the node keeps serving this long: clients with requests in
/// flight get NOT_LEADER_OR_FOLLOWER with the new leader (KIP-951) and move there, instead of
/// losing their connection with the requests on it and waiting for a metadata refresh.
const LINGER: Duration = Duration::from_millis(300);

/// Without an active controller for this long nothing can move: the node stops (the other
/// nodes of the quorum are gone, as when a whole cluster is stopped at once).
const NO_CONTROLLER_GIVE_UP: Duration = Duration::from_millis(1_500);

/// The stop sequence of one node.
pub struct ControlledShutdown {
    /// The committed metadata.
    pub view: Arc<QuorumView>,
    /// This node.
    pub node_id: i32,
    /// `controlled.shutdown.timeout.ms`.
    pub timeout: Duration,
}

/// Where a controlled shutdown stands.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    /// Fenced, leading nothing, and not the active controller.
    Done,
    /// Still leading this many partitions (not fenced yet: -1; 0: the controller still).
    Waiting(i64),
}

impl ControlledShutdown {
    /// Waits for `signalled`, runs the controlled shutdown, then sets `shutdown`.
    pub fn run(self, signalled: &AtomicBool, shutdown: &AtomicBool) {
        while !signalled.load(Ordering::Relaxed) && !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
        }
        if !shutdown.load(Ordering::Relaxed) {
            self.move_leadership_away();
        }
        shutdown.store(true, Ordering::Relaxed);
    }

    fn move_leadership_away(&self) {
        if !self.view.registered() {
            tracing::info!("stopping: not registered with the controller, nothing to hand over");
            return;
        }
        let started = Instant::now();
        let mut leaderless_since: Option<Instant> = None;
        self.view.set_shutting_down();
        tracing::info!(
            "controlled shutdown: asking the controller to move this node's leaderships"
        );
        loop {
            let state = self.view.load();
            match self.progress(&state.image, state.leader) {
                Progress::Done => {
                    tracing::info!(
                        "controlled shutdown: leadership moved in {} ms",
                        started.elapsed().as_millis()
                    );
                    std::thread::sleep(LINGER);
                    return;
                }
                Progress::Waiting(led) => {
                    let now = Instant::now();
                    let no_controller = match state.leader {
                        Some(_) => {
                            leaderless_since = None;
                            false
                        }
                        None => now - *leaderless_since.get_or_insert(now) >= NO_CONTROLLER_GIVE_UP,
                    };
                    if no_controller || started.elapsed() >= self.timeout {
                        tracing::warn!(
                            "controlled shutdown: giving up after {} ms ({}; {} partition(s) still led here)",
                            started.elapsed().as_millis(),
                            if no_controller { "no active controller" } else { "controlled.shutdown.timeout.ms" },
                            led.max(0),
                        );
                        return;
                    }
                }
            }
            std::thread::sleep(POLL);
        }
    }

    fn progress(
        &self,
        image: &strom_cluster::controller::MetadataImage,
        controller: Option<strom_cluster::NodeId>,
    ) -> Progress {
        let fenced = image.brokers.get(&self.node_id).is_none_or(|b| b.fenced);
        let led = image
            .topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter(|p| p.leader == self.node_id)
            .count() as i64;
        // The active controller hands the quorum over first (when another broker is live to
        // take it), so that the others learn the fence is committed without an election.
        let others_live = image
            .brokers
            .values()
            .any(|b| b.node_id != self.node_id && !b.fenced);
        let controls = controller.is_some_and(|c| c.0 == self.node_id) && others_live;
        match (fenced, led) {
            (true, 0) if !controls => Progress::Done,
            (true, 0) => Progress::Waiting(0),
            (true, n) => Progress::Waiting(n),
            (false, _) => Progress::Waiting(-1),
        }
    }
}
