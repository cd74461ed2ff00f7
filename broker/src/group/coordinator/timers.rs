//! The coordinator's timers (`tick`): session expiry, pending members that never came back,
//! join phases whose rebalance timeout is up, and retention of offsets of empty groups.

use std::rc::Rc;

use super::GroupCoordinator;
use crate::clock::{mono_ms, now_ms};
use crate::group::state::GroupState;
use crate::group::store::LogRecord;

/// How often expired offsets of empty groups are looked for.
const RETENTION_CHECK_MS: i64 = 60_000;

/// Longest a tick waits before scanning every group again when no deadline it knows of is due
/// sooner: a deadline that appears between ticks without lowering `next_due_ms` is seen at most
/// this late.
pub(super) const SCAN_INTERVAL_MS_MAX: i64 = 1_000;

impl GroupCoordinator {
    /// Expires sessions and pending members, ends join phases whose time is up, and (rarely)
    /// removes expired offsets of empty groups. Called from the shard's tick.
    pub fn tick(self: &Rc<Self>) {
        let now = mono_ms();
        let wall = now_ms();
        if now >= self.next_retention_check_ms.get() {
            self.next_retention_check_ms.set(now + RETENTION_CHECK_MS);
            self.expire_offsets(wall);
        }
        if now < self.next_due_ms.get() {
            return;
        }
        let delay = self.settings.initial_rebalance_delay_ms;
        let mut next = i64::MAX;
        let mut groups = self.groups.borrow_mut();
        for group in groups.values_mut() {
            group.pending.retain(|id, expiry| {
                let keep = *expiry > now;
                if !keep {
                    tracing::info!(group = %group.id, member = %id, "pending member did not join in time");
                }
                keep
            });
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| {
                    m.join_waiter.is_none()
                        && m.sync_waiter.is_none()
                        && now - m.last_seen_ms > i64::from(m.session_timeout_ms)
                })
                .map(|m| m.id.clone())
                .collect();
            for id in expired {
                tracing::info!(group = %group.id, member = %id, "session timed out; removing member");
                group.remove_member_and_update(&id, now, delay, wall);
            }
            group.poll_rebalance(now, wall);
            for m in group.members.values() {
                if m.join_waiter.is_none() && m.sync_waiter.is_none() {
                    next = next.min(m.last_seen_ms + i64::from(m.session_timeout_ms) + 1);
                }
            }
            for expiry in group.pending.values() {
                next = next.min(*expiry);
            }
            if let Some(rb) = group.rebalance {
                next = next.min(rb.deadline_ms);
            }
            self.persist_dirty(group);
        }
        // Heartbeats only push deadlines later, so `next` stays a safe lower bound until a new
        // deadline is set (which lowers it again).
        self.next_due_ms.set(next.min(now + SCAN_INTERVAL_MS_MAX));
    }

    fn expire_offsets(self: &Rc<Self>, wall: i64) {
        let retention = self.settings.offsets_retention_ms;
        let mut records = Vec::new();
        let mut groups = self.groups.borrow_mut();
        let mut drop_groups = Vec::new();
        for g in groups.values() {
            if !g.is(GroupState::Empty) {
                continue;
            }
            let mut left = 0;
            for ((topic, p), c) in &g.offsets {
                if c.commit_ms.max(g.empty_since_ms).saturating_add(retention) <= wall {
                    records.push(LogRecord::Offset {
                        group: g.id.clone(),
                        topic: topic.clone(),
                        partition: *p,
                        value: None,
                    });
                } else {
                    left += 1;
                }
            }
            if left == 0 && g.empty_since_ms.saturating_add(retention) <= wall {
                drop_groups.push(g.id.clone());
            }
        }
        for id in &drop_groups {
            groups.remove(id);
            records.push(LogRecord::Group {
                group: id.clone(),
                value: None,
            });
        }
        drop(groups);
        if !records.is_empty() {
            tracing::info!(
                groups = drop_groups.len(),
                records = records.len(),
                "expiring offsets of empty groups"
            );
            let me = self.clone();
            glommio::spawn_local(async move { me.write_each_group(records).await }).detach();
        }
    }
}
