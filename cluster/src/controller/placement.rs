//! Where a new partition's replicas go: Kafka's replica assignment.
//!
//! Brokers are put in rack-alternating order (a broker of each rack in turn, Kafka's
//! `getRackAlternatedBrokerList`), then partition `p`'s first replica (its preferred leader) is
//! broker `(start + p) % n` of that list, and the other replicas follow at a shift that grows
//! every `n` partitions, so leaders and followers both spread evenly. With as many racks as
//! replicas, every partition has one replica per rack.

use crate::types::NodeId;

/// Why no assignment is possible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// More replicas asked for than there are unfenced brokers (INVALID_REPLICATION_FACTOR).
    #[error("replication factor {asked} is larger than the {brokers} available brokers")]
    NotEnoughBrokers {
        /// Replicas asked for.
        asked: usize,
        /// Brokers available.
        brokers: usize,
    },
    /// A replication factor of zero.
    #[error("replication factor must be at least 1")]
    ZeroReplicas,
}

/// A broker that can hold replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The broker.
    pub node: NodeId,
    /// Its `broker.rack`.
    pub rack: Option<String>,
}

/// Replica lists for partitions `first_partition .. first_partition + count`, preferred leader
/// first. `start` rotates the whole layout (Kafka picks it at random per topic; the proposer
/// passes its choice so every node computes the same).
pub fn assign_replicas(
    brokers: &[Candidate],
    first_partition: usize,
    count: usize,
    replication_factor: usize,
    start: usize,
) -> Result<Vec<Vec<NodeId>>, PlacementError> {
    if replication_factor == 0 {
        return Err(PlacementError::ZeroReplicas);
    }
    if replication_factor > brokers.len() {
        return Err(PlacementError::NotEnoughBrokers {
            asked: replication_factor,
            brokers: brokers.len(),
        });
    }
    let ordered = rack_alternated(brokers);
    let n = ordered.len();
    let mut racks: Vec<Option<&str>> = ordered.iter().map(|(_, r)| *r).collect();
    racks.sort_unstable();
    racks.dedup();
    let mut out = Vec::with_capacity(count);
    for p in first_partition..first_partition + count {
        let first = (start + p) % n;
        // Kafka's replicaIndex: followers at first + 1 + (shift + j) % (n - 1), where the shift
        // moves on every n partitions so two partitions with the same leader differ in followers.
        let shift = (start + p / n) % (n - 1).max(1);
        let mut replicas = vec![ordered[first].0];
        let mut used_racks = vec![ordered[first].1];
        // Followers in the shifted order; while some rack holds no replica yet, skip brokers
        // of racks that do (Kafka's rack-aware rule).
        let order: Vec<usize> = (0..n.saturating_sub(1))
            .map(|j| (first + 1 + (shift + j) % (n - 1)) % n)
            .collect();
        while replicas.len() < replication_factor {
            let all_racks_used = racks.iter().all(|r| used_racks.contains(r));
            let next = order.iter().map(|&i| ordered[i]).find(|(node, rack)| {
                !replicas.contains(node) && (all_racks_used || !used_racks.contains(rack))
            });
            let Some((node, rack)) = next else {
                break;
            };
            replicas.push(node);
            used_racks.push(rack);
        }
        out.push(replicas);
    }
    Ok(out)
}

/// Brokers sorted by id, interleaved by rack: first broker of each rack, then the second, ...
fn rack_alternated(brokers: &[Candidate]) -> Vec<(NodeId, Option<&str>)> {
    let mut sorted: Vec<&Candidate> = brokers.iter().collect();
    sorted.sort_by_key(|c| c.node);
    let mut racks: Vec<(Option<&str>, Vec<NodeId>)> = Vec::new();
    for c in sorted {
        let rack = c.rack.as_deref();
        match racks.iter_mut().find(|(r, _)| *r == rack) {
            Some((_, nodes)) => nodes.push(c.node),
            None => racks.push((rack, vec![c.node])),
        }
    }
    racks.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(brokers.len());
    let deepest = racks.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
    for i in 0..deepest {
        for (rack, nodes) in &racks {
            if let Some(&n) = nodes.get(i) {
                out.push((n, *rack));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn brokers(racks: &[Option<&str>]) -> Vec<Candidate> {
        racks
            .iter()
            .enumerate()
            .map(|(i, r)| Candidate {
                node: NodeId(i32::try_from(i).unwrap()),
                rack: r.map(str::to_string),
            })
            .collect()
    }

    #[test]
    fn replicas_are_distinct_and_leaders_spread_evenly() {
        for n in 1..=6 {
            for rf in 1..=n {
                for start in 0..n {
                    let b = brokers(&vec![None; n]);
                    let a = assign_replicas(&b, 0, 6 * n, rf, start).unwrap();
                    let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
                    let mut holders: BTreeMap<NodeId, usize> = BTreeMap::new();
                    for replicas in &a {
                        let set: BTreeSet<_> = replicas.iter().collect();
                        assert_eq!(set.len(), rf, "n={n} rf={rf}: {replicas:?}");
                        *leaders.entry(replicas[0]).or_default() += 1;
                        for r in replicas {
                            *holders.entry(*r).or_default() += 1;
                        }
                    }
                    assert!(leaders.values().all(|&c| c == 6), "n={n}: {leaders:?}");
                    assert!(holders.values().all(|&c| c == 6 * rf), "n={n}: {holders:?}");
                }
            }
        }
    }

    #[test]
    fn every_partition_spans_all_racks_when_there_are_enough() {
        let b = brokers(&[
            Some("a"),
            Some("a"),
            Some("b"),
            Some("b"),
            Some("c"),
            Some("c"),
        ]);
        let rack_of = |n: NodeId| b[usize::try_from(n.0).unwrap()].rack.clone();
        for start in 0..6 {
            for replicas in assign_replicas(&b, 0, 24, 3, start).unwrap() {
                let racks: BTreeSet<_> = replicas.iter().map(|&n| rack_of(n)).collect();
                assert_eq!(racks.len(), 3, "{replicas:?}");
            }
        }
    }

    #[test]
    fn too_few_brokers_is_an_error() {
        let b = brokers(&[None, None]);
        assert_eq!(
            assign_replicas(&b, 0, 1, 3, 0),
            Err(PlacementError::NotEnoughBrokers {
                asked: 3,
                brokers: 2
            })
        );
        assert_eq!(
            assign_replicas(&b, 0, 1, 0, 0),
            Err(PlacementError::ZeroReplicas)
        );
    }

    #[test]
    fn added_partitions_continue_the_layout() {
        let b = brokers(&[None, None, None]);
        let all = assign_replicas(&b, 0, 9, 3, 1).unwrap();
        let tail = assign_replicas(&b, 4, 5, 3, 1).unwrap();
        assert_eq!(all[4..], tail[..]);
    }
}
