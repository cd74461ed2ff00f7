//! The invariants, checked after every step of the simulation and at its end.
//!
//! The committed prefix is the list of batches below the highest high watermark any leader
//! (a deposed one included) ever exposed; it only grows. After every step:
//! - every acting leader's high watermark is at most its own durable end and the real durable
//!   end of every member of the controller's committed ISR, never goes back within its epoch,
//!   and sits on a batch boundary of a log that agrees with the committed prefix;
//! - a batch entering the committed prefix is durable, with the same payload at the same
//!   offset, on at least min.insync.replicas nodes;
//! - every committed ISR member and the controller's leader hold the whole committed prefix in
//!   their durable logs (so a leader elected from the ISR holds it too; the controller also
//!   checks that when it elects);
//! - every acknowledged batch is in the committed prefix at its offset (so, by the above, on
//!   every ISR member, now and later);
//! - leader epochs only grow: on every node, at the controller, and along every log, whose
//!   epoch cache must name exactly where each of its epochs starts (checked on every append).
//!
//! At the end, after healing: a leader with the full ISR, all logs durable and identical, the
//! high watermark at the log end, the committed prefix on every node.

use crate::replication::sim::{Role, Sim, MIN_INSYNC, NODES};
use crate::replication::AckStatus;
use crate::types::{NodeId, Offset};

impl Sim {
    /// Extends the verified prefix of a node's log against the committed prefix, up to `len`
    /// batches; returns whether the log holds those `len` committed batches.
    pub(super) fn verify(&mut self, id: NodeId, len: usize) -> bool {
        let node = &mut self.nodes[id.0 as usize];
        while node.verified < len {
            let i = node.verified;
            if i >= node.log.batches.len()
                || i >= self.committed.len()
                || node.log.batches[i] != self.committed[i]
            {
                return false;
            }
            node.verified += 1;
        }
        true
    }

    /// Whether the node's durable log holds the whole committed prefix.
    pub(super) fn committed_prefix_in(&mut self, id: NodeId) -> bool {
        let len = self.committed.len();
        self.node(id).log.durable_len >= len && self.verify(id, len)
    }

    /// After every step: leaders' high watermarks, the committed prefix, acknowledgements.
    pub(super) fn observe(&mut self) {
        for i in 0..NODES {
            let id = NodeId(i as i32);
            let node = self.node(id);
            if !node.up {
                continue;
            }
            let epoch = node.role.assignment().leader_epoch;
            if epoch < node.epoch_seen {
                self.fail(&format!("node {id} went back to leader epoch {epoch}"));
            }
            let Role::Leader(leader) = &node.role else {
                let node = self.node_mut(id);
                node.epoch_seen = epoch;
                continue;
            };
            let hw = leader.high_watermark();
            if epoch == node.epoch_seen && hw < node.tenure_hw {
                self.fail(&format!(
                    "leader {id} moved its high watermark back to {hw}"
                ));
            }
            if hw > node.log.durable_end() {
                self.fail(&format!(
                    "leader {id} high watermark {hw} past its durable end"
                ));
            }
            for &m in &self.controller.isr {
                let durable = self.node(m).log.durable_end();
                if hw > durable {
                    self.fail(&format!(
                        "leader {id} high watermark {hw} past the durable end {durable} of ISR \
                         member {m}"
                    ));
                }
            }
            let node = self.node_mut(id);
            node.epoch_seen = epoch;
            node.tenure_hw = hw;
            self.extend_committed(id, hw);
        }
        let isr = self.controller.isr.clone();
        for m in isr {
            if !self.committed_prefix_in(m) {
                self.fail(&format!(
                    "ISR member {m} lacks the committed prefix of {} batches",
                    self.committed.len()
                ));
            }
        }
        if let Some(l) = self.controller.leader {
            if !self.committed_prefix_in(l) {
                self.fail(&format!("leader {l} lacks the committed prefix"));
            }
        }
        self.answer_produces();
    }

    /// A leader exposes `hw`: its log below it must agree with the committed prefix, and what
    /// it adds must be durable on at least min.insync.replicas nodes.
    pub(super) fn extend_committed(&mut self, id: NodeId, hw: Offset) {
        let log_batches = self.node(id).log.batches.len();
        let below = self
            .node(id)
            .log
            .batches
            .partition_point(|b| b.end() <= hw.0);
        if below < log_batches && self.node(id).log.batches[below].base < hw.0 {
            self.fail(&format!("leader {id} high watermark {hw} inside a batch"));
        }
        let known = self.committed.len().min(below);
        if !self.verify(id, known) {
            self.fail(&format!(
                "leader {id} exposes a high watermark {hw} over a log that differs from the \
                 committed prefix"
            ));
        }
        for i in self.committed.len()..below {
            let batch = self.node(id).log.batches[i];
            let holders = self
                .nodes
                .iter()
                .filter(|n| i < n.log.durable_len && n.log.batches[i] == batch)
                .count();
            if holders < MIN_INSYNC {
                self.fail(&format!(
                    "leader {id} commits {batch:?} durable on {holders} node(s) only"
                ));
            }
            self.committed.push(batch);
        }
    }

    /// Answers the waiting acks=all produces of every acting leader.
    pub(super) fn answer_produces(&mut self) {
        for i in 0..NODES {
            let node = &mut self.nodes[i];
            if !node.up {
                continue;
            }
            let Role::Leader(leader) = &node.role else {
                continue;
            };
            let zombie = self.controller.leader != Some(node.id);
            let mut acked = Vec::new();
            let mut after_append = 0;
            node.waiting_produces
                .retain(|b| match leader.ack_status(Offset(b.end())) {
                    AckStatus::Done => {
                        acked.push(*b);
                        false
                    }
                    AckStatus::NotEnoughReplicasAfterAppend => {
                        after_append += 1;
                        false
                    }
                    AckStatus::Wait => true,
                });
            self.stats.after_append_errors += after_append;
            for b in acked {
                self.stats.acked += 1;
                if zombie {
                    self.stats.zombie_acks += 1;
                }
                let at = self.committed.partition_point(|c| c.base < b.base);
                if self.committed.get(at) != Some(&b) {
                    self.fail(&format!(
                        "acknowledged {b:?} is not in the committed prefix"
                    ));
                }
            }
        }
    }

    pub(super) fn converged(&self) -> bool {
        let Some(l) = self.controller.leader else {
            return false;
        };
        let leader = self.node(l);
        let Role::Leader(lp) = &leader.role else {
            return false;
        };
        lp.leader_epoch() == self.controller.leader_epoch
            && self.controller.isr.len() == NODES
            && lp.high_watermark() == leader.log.end()
            && self.nodes.iter().all(|n| {
                n.up && n.log.batches == leader.log.batches
                    && n.log.durable_len == n.log.batches.len()
            })
    }

    pub(super) fn check_final(&mut self) {
        let l = self.controller.leader.expect("converged with a leader");
        let reference = self.node(l).log.batches.clone();
        for i in 0..NODES {
            if !self.committed_prefix_in(NodeId(i as i32)) {
                self.fail(&format!("node {i} lacks the committed prefix at the end"));
            }
            if self.nodes[i].log.batches != reference {
                self.fail(&format!("node {i} differs from the leader at the end"));
            }
        }
    }
}
