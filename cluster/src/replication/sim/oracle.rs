//! The oracle controller (ISR changes, fencing, elections, assignment broadcasts) and the
//! fault injector.

use rand::Rng;

use crate::replication::sim::{Event, Msg, Sim, NODES};
use crate::replication::IsrChangeRequest;
use crate::types::{LeaderEpoch, NodeId, PartitionAssignment};

impl Sim {
    pub(super) fn commit(&mut self, mut next: PartitionAssignment) {
        assert!(next.leader_epoch >= self.controller.leader_epoch);
        next.partition_epoch = self.controller.partition_epoch + 1;
        if let Some(l) = next.leader {
            if !self.committed_prefix_in(l) {
                self.fail(&format!("new leader {l} lacks the committed prefix"));
            }
        }
        self.controller = next;
        self.broadcast();
    }

    pub(super) fn broadcast(&mut self) {
        for i in 0..NODES {
            self.send(Msg::Assignment {
                to: NodeId(i as i32),
                assignment: self.controller.clone(),
            });
        }
    }

    pub(super) fn on_isr_change(&mut self, request: IsrChangeRequest) {
        let current = &self.controller;
        if current.leader != Some(request.leader)
            || current.leader_epoch != request.leader_epoch
            || current.partition_epoch != request.partition_epoch
        {
            // Kafka answers INVALID_UPDATE_VERSION / FENCED_LEADER_EPOCH; the leader learns the
            // current assignment.
            let answer = Msg::Assignment {
                to: request.leader,
                assignment: current.clone(),
            };
            self.send(answer);
            return;
        }
        assert!(request.new_isr.contains(&request.leader));
        if request.new_isr.len() < current.isr.len() {
            self.stats.isr_shrinks += 1;
        } else {
            self.stats.isr_expands += 1;
        }
        let mut next = current.clone();
        next.isr = request.new_isr;
        self.commit(next);
    }

    /// The controller notices a crashed node (Kafka fences it): out of the ISR unless it is the
    /// last member, and a new leader from the live ISR if it led.
    pub(super) fn fence(&mut self, id: NodeId) {
        let mut next = self.controller.clone();
        if next.isr.len() > 1 {
            next.isr.retain(|&n| n != id);
        }
        if next.leader == Some(id) {
            next.leader = self.pick_leader(&next.isr, Some(id));
            next.leader_epoch = LeaderEpoch(next.leader_epoch.0 + 1);
        }
        if next != self.controller {
            self.commit(next);
        }
    }

    /// A live ISR member other than `except`, chosen at random.
    pub(super) fn pick_leader(&mut self, isr: &[NodeId], except: Option<NodeId>) -> Option<NodeId> {
        let candidates: Vec<NodeId> = isr
            .iter()
            .copied()
            .filter(|&n| Some(n) != except && self.node(n).up)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.rng.gen_range(0..candidates.len())])
    }

    pub(super) fn controller_timer(&mut self) {
        if self.controller.leader.is_none() {
            let isr = self.controller.isr.clone();
            if let Some(l) = self.pick_leader(&isr, None) {
                self.stats.elections += 1;
                let mut next = self.controller.clone();
                next.leader = Some(l);
                next.leader_epoch = LeaderEpoch(next.leader_epoch.0 + 1);
                self.commit(next);
                return;
            }
        }
        self.broadcast();
    }

    pub(super) fn nemesis(&mut self) {
        let roll = self.rng.gen_range(0..1000);
        let id = NodeId(self.rng.gen_range(0..NODES as i32));
        match roll {
            0..=14 if self.node(id).up => self.crash(id),
            15..=29 => {
                let isr = self.controller.isr.clone();
                let current = self.controller.leader;
                if let Some(l) = self.pick_leader(&isr, current) {
                    self.move_leader(l);
                }
            }
            30..=44 => {
                let until = self.now_ms + self.rng.gen_range(20..300);
                self.node_mut(id).isolated_until_ms = until;
            }
            45..=49 => {
                // Leadership away and back soon, before every node has heard of the first
                // move: stale epochs meet the same node in a newer one.
                let isr = self.controller.isr.clone();
                if let (Some(current), Some(l)) = (
                    self.controller.leader,
                    self.pick_leader(&isr, self.controller.leader),
                ) {
                    self.move_leader(l);
                    let back = self.rng.gen_range(2..30);
                    self.schedule(back, Event::MoveLeader(current));
                }
            }
            _ => {}
        }
    }

    /// Moves leadership to `to` if it is a live ISR member that does not lead already (a
    /// clean, preferred-leader style election).
    pub(super) fn move_leader(&mut self, to: NodeId) {
        let c = &self.controller;
        if c.leader == Some(to) || !c.isr.contains(&to) || !self.node(to).up {
            return;
        }
        self.stats.leader_moves += 1;
        let mut next = self.controller.clone();
        next.leader = Some(to);
        next.leader_epoch = LeaderEpoch(next.leader_epoch.0 + 1);
        self.commit(next);
    }
}
