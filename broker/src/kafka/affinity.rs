//! Which shard a connection should live on.
//!
//! SO_REUSEPORT hands each new connection to a shard by a hash of its addresses, not by the
//! partitions it will use. A producer whose partitions another shard owns then pays two
//! cross-core wakeups per request (request over, answer back), and on a virtual machine a
//! wakeup of an idle core costs tens of microseconds at the median and milliseconds at the tail.
//! So the connection moves: when `CONNECTION_MIGRATE_STREAK` requests in a row touched only
//! partitions of one other shard, the reader hands the socket (and the bytes it has read ahead)
//! to that shard at the next point where no request of the connection is in flight, so
//! responses stay in request order. A connection moves at most once per
//! `CONNECTION_MIGRATE_INTERVAL_MS`, so a client that alternates between shards cannot make its
//! connection bounce. Requests without partitions (metadata, groups) do not count either way.

use std::cell::Cell;

use crate::ids::ShardId;
use crate::limits::{CONNECTION_MIGRATE_INTERVAL_MS, CONNECTION_MIGRATE_STREAK};

/// What one request says about where its connection belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Hint {
    /// No partitions (or the request failed before routing): no opinion.
    #[default]
    None,
    /// Every partition of the request is owned by this shard.
    Shard(ShardId),
    /// Partitions on several shards.
    Mixed,
}

impl Hint {
    /// Adds the owner of one more partition of the request.
    pub fn with(self, owner: ShardId) -> Hint {
        match self {
            Hint::None => Hint::Shard(owner),
            Hint::Shard(s) if s == owner => self,
            _ => Hint::Mixed,
        }
    }
}

/// The running tally of one connection.
#[derive(Debug)]
pub struct Affinity {
    /// The shard serving the connection now.
    home: ShardId,
    /// The other shard the last requests all went to, and how many in a row.
    candidate: Cell<Option<(ShardId, u32)>>,
    /// When the connection last moved (ms), if it did.
    last_move_ms: Option<i64>,
}

impl Affinity {
    pub fn new(home: ShardId, last_move_ms: Option<i64>) -> Affinity {
        Affinity {
            home,
            candidate: Cell::new(None),
            last_move_ms,
        }
    }

    /// Counts one finished request.
    pub fn observe(&self, hint: Hint) {
        let next = match hint {
            Hint::None => return,
            Hint::Shard(s) if s == self.home => None,
            Hint::Shard(s) => match self.candidate.get() {
                Some((c, n)) if c == s => Some((s, n.saturating_add(1))),
                _ => Some((s, 1)),
            },
            Hint::Mixed => None,
        };
        self.candidate.set(next);
    }

    /// The shard to move to now, if the streak is long enough and the last move is old enough.
    pub fn target(&self, now_ms: i64) -> Option<ShardId> {
        let (shard, streak) = self.candidate.get()?;
        if streak < CONNECTION_MIGRATE_STREAK {
            return None;
        }
        if let Some(last) = self.last_move_ms {
            if now_ms - last < CONNECTION_MIGRATE_INTERVAL_MS as i64 {
                return None;
            }
        }
        Some(shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_combines_owners() {
        assert_eq!(Hint::None.with(ShardId(1)), Hint::Shard(ShardId(1)));
        assert_eq!(
            Hint::Shard(ShardId(1)).with(ShardId(1)),
            Hint::Shard(ShardId(1))
        );
        assert_eq!(Hint::Shard(ShardId(1)).with(ShardId(0)), Hint::Mixed);
        assert_eq!(Hint::Mixed.with(ShardId(1)), Hint::Mixed);
    }

    #[test]
    fn a_streak_to_one_other_shard_moves_the_connection() {
        let a = Affinity::new(ShardId(0), None);
        for _ in 0..CONNECTION_MIGRATE_STREAK - 1 {
            a.observe(Hint::Shard(ShardId(1)));
            a.observe(Hint::None); // metadata, heartbeats: neutral
        }
        assert_eq!(a.target(0), None, "one request short");
        a.observe(Hint::Shard(ShardId(1)));
        assert_eq!(a.target(0), Some(ShardId(1)));
    }

    #[test]
    fn local_or_mixed_requests_reset_the_streak() {
        for reset in [
            Hint::Shard(ShardId(0)),
            Hint::Mixed,
            Hint::Shard(ShardId(2)),
        ] {
            let a = Affinity::new(ShardId(0), None);
            for _ in 0..CONNECTION_MIGRATE_STREAK - 1 {
                a.observe(Hint::Shard(ShardId(1)));
            }
            a.observe(reset);
            a.observe(Hint::Shard(ShardId(1)));
            assert_eq!(a.target(0), None, "after {reset:?}");
        }
    }

    #[test]
    fn a_connection_that_just_moved_waits_before_moving_again() {
        let a = Affinity::new(ShardId(1), Some(10_000));
        for _ in 0..CONNECTION_MIGRATE_STREAK {
            a.observe(Hint::Shard(ShardId(0)));
        }
        let interval = CONNECTION_MIGRATE_INTERVAL_MS as i64;
        assert_eq!(a.target(10_000 + interval - 1), None);
        assert_eq!(a.target(10_000 + interval), Some(ShardId(0)));
    }
}
