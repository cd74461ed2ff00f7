//! This broker's side of the cluster: it registers (a new incarnation at every start) until the
//! registration commits, then heartbeats to the active controller every
//! `broker.heartbeat.interval.ms`.

use std::sync::Arc;
use std::time::Duration;

use strom_cluster::controller::{Applied, Command, Heartbeat, ProposalOutcome};

use super::{Event, QuorumHandle, QuorumSetup, QuorumView};

/// Pause between registration attempts (no leader yet, or a proposal lost to an election).
const REGISTER_RETRY_MS: u64 = 200;

pub(super) async fn run(handle: QuorumHandle, setup: QuorumSetup, view: Arc<QuorumView>) {
    let mut record = setup.registration.clone();
    record.incarnation = rand::random::<u64>() | 1;
    let node_id = record.node_id;
    let incarnation = record.incarnation;
    loop {
        match handle
            .propose(Command::RegisterBroker(record.clone()))
            .await
        {
            ProposalOutcome::Applied(Applied::Ok) => break,
            outcome => {
                tracing::debug!("broker {node_id}: registration: {outcome:?}; retrying");
                glommio::timer::sleep(Duration::from_millis(REGISTER_RETRY_MS)).await;
            }
        }
    }
    view.set_registered();
    let leader = view.load().leader.map_or(-1, |l| l.0);
    tracing::info!(
        "broker {node_id} registered (incarnation {incarnation:x}); active controller: {leader}"
    );
    loop {
        handle.send(Event::Heartbeat(Heartbeat {
            node_id,
            incarnation,
            shutting_down: view.shutting_down(),
        }));
        glommio::timer::sleep(Duration::from_millis(setup.heartbeat_interval_ms)).await;
    }
}
