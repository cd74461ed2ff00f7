//! Broker liveness as the active controller sees it: heartbeats in, fence and unfence commands
//! out (Kafka's `BrokerHeartbeatManager`).
//!
//! A registered, unfenced broker whose last heartbeat is older than `broker.session.timeout.ms`
//! is fenced; a fenced broker that heartbeats again (same incarnation) is unfenced. A controller
//! that just took over has seen no heartbeats yet, so every broker gets one full session
//! timeout from that moment before it can be fenced. A command already proposed for a broker is
//! not proposed again for one session timeout (it may be committing).
//!
//! A broker whose process is known to be gone (the controller's connection to it was refused:
//! nothing listens on its port any more) is fenced at once too: waiting out the session would
//! only delay its partitions' new leaders. A network partition never looks like this (packets
//! are lost, not refused), so it still takes the session timeout.
//!
//! A broker whose heartbeats say it is shutting down is fenced at once and never unfenced
//! while it says so: fencing moves its leaderships to other ISR members (controlled shutdown).
//! Its next start registers a new incarnation, which is unfenced.

use std::collections::BTreeMap;

use super::image::{BrokerFence, Command, MetadataImage};

/// Heartbeat bookkeeping of the active controller.
#[derive(Debug, Clone)]
pub struct Liveness {
    session_timeout_ms: i64,
    /// node -> (incarnation, time of its last heartbeat, whether it is shutting down).
    last_seen: BTreeMap<i32, (u64, i64, bool)>,
    /// When this node became the active controller; `None` while it is not.
    leader_since_ms: Option<i64>,
    /// node -> time before which no new command is proposed for it.
    quiet_until: BTreeMap<i32, i64>,
    /// Nodes whose controller port refuses connections now.
    refused: BTreeMap<i32, bool>,
}

impl Liveness {
    /// Bookkeeping for `broker.session.timeout.ms` = `session_timeout_ms`.
    pub fn new(session_timeout_ms: i64) -> Liveness {
        Liveness {
            session_timeout_ms: session_timeout_ms.max(1),
            last_seen: BTreeMap::new(),
            leader_since_ms: None,
            quiet_until: BTreeMap::new(),
            refused: BTreeMap::new(),
        }
    }

    /// Whether connecting to `node`'s controller port is refused now (its process is gone).
    pub fn on_connect_refused(&mut self, node_id: i32, refused: bool) {
        let was = self.refused.insert(node_id, refused).unwrap_or(false);
        if refused && !was {
            // Known now: not held back by an earlier proposal's quiet time.
            self.quiet_until.remove(&node_id);
        }
    }

    /// Records a heartbeat.
    pub fn on_heartbeat(&mut self, node_id: i32, incarnation: u64, now_ms: i64, stopping: bool) {
        let was_stopping = self
            .last_seen
            .get(&node_id)
            .is_some_and(|&(i, _, s)| i == incarnation && s);
        if stopping && !was_stopping {
            // Asked now: not held back by an earlier proposal's quiet time.
            self.quiet_until.remove(&node_id);
        }
        self.last_seen
            .insert(node_id, (incarnation, now_ms, stopping));
    }

    /// Called on every tick with whether this node is the active controller; returns the fence
    /// and unfence commands to propose now.
    pub fn due(&mut self, is_leader: bool, image: &MetadataImage, now_ms: i64) -> Vec<Command> {
        if !is_leader {
            self.leader_since_ms = None;
            return Vec::new();
        }
        let since = *self.leader_since_ms.get_or_insert(now_ms);
        let mut out = Vec::new();
        for (&node_id, broker) in &image.brokers {
            if self.quiet_until.get(&node_id).is_some_and(|&t| now_ms < t) {
                continue;
            }
            let seen = self
                .last_seen
                .get(&node_id)
                .filter(|(incarnation, _, _)| *incarnation == broker.incarnation);
            let heard = seen.map(|&(_, at, _)| at);
            let stopping = seen.is_some_and(|&(_, _, stopping)| stopping);
            let last = heard.unwrap_or(since).max(since);
            let gone = self.refused.get(&node_id).copied().unwrap_or(false);
            let expired = stopping || gone || now_ms - last > self.session_timeout_ms;
            let fence = BrokerFence {
                node_id,
                incarnation: broker.incarnation,
            };
            let command = match (broker.fenced, expired) {
                (false, true) => Command::FenceBroker(fence),
                (true, false) if heard.is_some() => Command::UnfenceBroker(fence),
                _ => continue,
            };
            self.quiet_until
                .insert(node_id, now_ms + self.session_timeout_ms);
            out.push(command);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::image::{Applied, BrokerRecord};

    fn image_with(nodes: &[i32]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for &node_id in nodes {
            let register = Command::RegisterBroker(BrokerRecord {
                node_id,
                incarnation: 5,
                endpoints: Vec::new(),
                rack: None,
                fenced: false,
            });
            assert_eq!(image.apply(&register), Applied::Ok);
        }
        image
    }

    #[test]
    fn a_silent_broker_is_fenced_after_the_session_timeout_and_unfenced_when_it_returns() {
        let mut image = image_with(&[0, 1]);
        let mut l = Liveness::new(1000);
        assert!(
            l.due(true, &image, 0).is_empty(),
            "a new controller gives everyone a session"
        );
        for t in (0..=1000).step_by(100) {
            l.on_heartbeat(0, 5, t, false);
            assert!(l.due(true, &image, t).is_empty(), "t={t}");
        }
        l.on_heartbeat(0, 5, 1100, false);
        let fence = Command::FenceBroker(BrokerFence {
            node_id: 1,
            incarnation: 5,
        });
        assert_eq!(l.due(true, &image, 1001), vec![fence.clone()]);
        assert!(
            l.due(true, &image, 1500).is_empty(),
            "not proposed twice while it commits"
        );
        assert_eq!(image.apply(&fence), Applied::Ok);
        // Node 1 comes back.
        l.on_heartbeat(0, 5, 2050, false);
        l.on_heartbeat(1, 5, 2050, false);
        assert_eq!(
            l.due(true, &image, 2100),
            vec![Command::UnfenceBroker(BrokerFence {
                node_id: 1,
                incarnation: 5
            })]
        );
    }

    #[test]
    fn heartbeats_of_an_old_incarnation_do_not_keep_a_broker_alive() {
        let image = image_with(&[0]);
        let mut l = Liveness::new(1000);
        l.due(true, &image, 0);
        l.on_heartbeat(0, 4, 900, false);
        assert_eq!(l.due(true, &image, 1001).len(), 1);
    }

    #[test]
    fn only_the_active_controller_fences_and_a_new_one_waits_a_session() {
        let image = image_with(&[0]);
        let mut l = Liveness::new(1000);
        assert!(l.due(false, &image, 5000).is_empty());
        assert!(l.due(true, &image, 6000).is_empty());
        assert!(l.due(true, &image, 7000).is_empty());
        assert_eq!(l.due(true, &image, 7001).len(), 1);
    }

    #[test]
    fn a_broker_shutting_down_is_fenced_at_once_and_stays_fenced() {
        let mut image = image_with(&[0, 1]);
        let mut l = Liveness::new(1000);
        l.due(true, &image, 0);
        l.on_heartbeat(1, 5, 100, false);
        assert!(l.due(true, &image, 100).is_empty());
        l.on_heartbeat(1, 5, 200, true);
        let fence = Command::FenceBroker(BrokerFence {
            node_id: 1,
            incarnation: 5,
        });
        assert_eq!(l.due(true, &image, 200), vec![fence.clone()]);
        assert_eq!(image.apply(&fence), Applied::Ok);
        for t in (300..5000).step_by(100) {
            l.on_heartbeat(0, 5, t, false);
            l.on_heartbeat(1, 5, t, true);
            assert!(l.due(true, &image, t).is_empty(), "t={t}: no unfence");
        }
        // A proposal lost to a controller change is made again after the quiet time.
        let mut l = Liveness::new(1000);
        let image = image_with(&[0, 1]);
        l.due(true, &image, 0);
        l.on_heartbeat(1, 5, 100, true);
        assert_eq!(l.due(true, &image, 100).len(), 1);
        l.on_heartbeat(1, 5, 600, true);
        assert!(l.due(true, &image, 600).is_empty());
        l.on_heartbeat(0, 5, 1200, false);
        l.on_heartbeat(1, 5, 1200, true);
        assert_eq!(l.due(true, &image, 1200).len(), 1);
    }

    #[test]
    fn a_broker_whose_port_refuses_connections_is_fenced_without_waiting_its_session() {
        let mut image = image_with(&[0, 1]);
        let mut l = Liveness::new(1000);
        // Even a controller that just took over (which gives everyone a session) fences it.
        l.on_heartbeat(1, 5, 0, false);
        l.on_connect_refused(1, true);
        let fence = Command::FenceBroker(BrokerFence {
            node_id: 1,
            incarnation: 5,
        });
        assert_eq!(l.due(true, &image, 10), vec![fence.clone()]);
        assert_eq!(image.apply(&fence), Applied::Ok);
        // The node starts again: its port accepts, it registers and heartbeats, and is
        // unfenced.
        l.on_connect_refused(1, false);
        l.on_heartbeat(0, 5, 1500, false);
        l.on_heartbeat(1, 5, 1500, false);
        assert_eq!(l.due(true, &image, 1500).len(), 1, "unfenced");
    }
}
