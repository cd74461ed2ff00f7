//! Which shard owns a partition.
//!
//! A new partition is assigned to `(crc32c(topic) + partition) % shards` and that number is
//! recorded in the topic's metadata, so ownership never moves while the shard count stays the
//! same. If the broker restarts with fewer cores, the recorded shard is folded onto the ones
//! that exist (`recorded % shards`): still deterministic, and every partition keeps one owner.

use crate::ids::ShardId;

#[derive(Clone, Copy, Debug)]
pub struct ShardTable {
    shards: usize,
}

impl ShardTable {
    pub fn new(shards: usize) -> ShardTable {
        assert!(shards >= 1, "at least one shard");
        ShardTable { shards }
    }

    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard to record for a new partition.
    pub fn assign(&self, topic: &str, partition: i32) -> u32 {
        ((u64::from(crc32c::crc32c(topic.as_bytes())) + partition as u64) % self.shards as u64)
            as u32
    }

    /// The shard that owns a partition whose recorded shard is `recorded`.
    pub fn effective(&self, recorded: u32) -> ShardId {
        ShardId(recorded as usize % self.shards)
    }

    /// Every shard.
    pub fn all(&self) -> impl Iterator<Item = ShardId> {
        (0..self.shards).map(ShardId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_is_deterministic_and_spreads() {
        let t = ShardTable::new(4);
        let a: Vec<u32> = (0..8).map(|p| t.assign("orders", p)).collect();
        let b: Vec<u32> = (0..8).map(|p| t.assign("orders", p)).collect();
        assert_eq!(a, b);
        for s in 0..4 {
            assert_eq!(a.iter().filter(|&&x| x == s).count(), 2);
        }
        assert_eq!(ShardTable::new(2).effective(3), ShardId(1));
    }
}
