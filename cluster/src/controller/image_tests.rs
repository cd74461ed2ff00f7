//! The rules of `MetadataImage::apply`, one test each.

use std::collections::BTreeMap;

use super::image::errors::*;
use super::image::*;
use crate::types::NodeId;

fn broker(node_id: i32, incarnation: u64) -> Command {
    Command::RegisterBroker(BrokerRecord {
        node_id,
        incarnation,
        endpoints: vec![EndpointRecord {
            listener: "PLAINTEXT".into(),
            host: "127.0.1.1".into(),
            port: 9092,
        }],
        rack: None,
        fenced: false,
    })
}

fn cluster() -> MetadataImage {
    let mut image = MetadataImage::default();
    for n in 0..3 {
        assert_eq!(image.apply(&broker(n, 7)), Applied::Ok);
    }
    let topic = TopicRecord {
        topic_id: [1; 16],
        partitions: vec![PartitionRecord::new(&[NodeId(0), NodeId(1), NodeId(2)])],
        configs: BTreeMap::new(),
    };
    let create = Command::CreateTopic(CreateTopic {
        name: "t".into(),
        topic,
    });
    assert_eq!(image.apply(&create), Applied::Ok);
    image
}

fn alter(leader: i32, leader_epoch: i32, partition_epoch: i32, new_isr: &[i32]) -> Command {
    Command::AlterIsr(AlterIsr {
        topic: "t".into(),
        partition: 0,
        leader,
        leader_epoch,
        partition_epoch,
        new_isr: new_isr.to_vec(),
    })
}

#[test]
fn a_new_partition_is_led_by_its_first_replica_with_every_replica_in_sync() {
    let image = cluster();
    let p = image.partition("t", 0).unwrap().assignment();
    assert_eq!(p.leader, Some(NodeId(0)));
    assert_eq!(p.isr, p.replicas);
    assert_eq!((p.leader_epoch.0, p.partition_epoch), (0, 0));
}

#[test]
fn an_isr_change_applies_once_and_bumps_the_partition_epoch() {
    let mut image = cluster();
    let shrink = alter(0, 0, 0, &[0, 2]);
    let Applied::Partition(p) = image.apply(&shrink) else {
        panic!("refused");
    };
    assert_eq!(
        (p.isr.clone(), p.partition_epoch, p.leader_epoch),
        (vec![0, 2], 1, 0)
    );
    // The same request again is based on a stale partition epoch.
    assert_eq!(
        image.apply(&shrink),
        Applied::Refused(INVALID_UPDATE_VERSION)
    );
    assert_eq!(image.partition("t", 0).unwrap().isr, vec![0, 2]);
}

#[test]
fn an_isr_change_from_anyone_but_the_current_leader_is_refused() {
    let mut image = cluster();
    assert_eq!(
        image.apply(&alter(1, 0, 0, &[0, 1])),
        Applied::Refused(NOT_LEADER_OR_FOLLOWER)
    );
    assert_eq!(
        image.apply(&alter(0, 3, 0, &[0, 1])),
        Applied::Refused(FENCED_LEADER_EPOCH)
    );
    assert_eq!(
        image.apply(&alter(0, 0, 0, &[1, 2])),
        Applied::Refused(INELIGIBLE_REPLICA)
    );
    assert_eq!(
        image.apply(&alter(0, 0, 0, &[0, 5])),
        Applied::Refused(INELIGIBLE_REPLICA)
    );
    let unknown = Command::AlterIsr(AlterIsr {
        topic: "nope".into(),
        partition: 0,
        leader: 0,
        leader_epoch: 0,
        partition_epoch: 0,
        new_isr: vec![0],
    });
    assert_eq!(
        image.apply(&unknown),
        Applied::Refused(UNKNOWN_TOPIC_OR_PARTITION)
    );
    assert_eq!(image, cluster(), "refused commands change nothing");
}

#[test]
fn topics_are_created_once_and_only_on_registered_brokers() {
    let mut image = cluster();
    let again = Command::CreateTopic(CreateTopic {
        name: "t".into(),
        topic: TopicRecord {
            topic_id: [2; 16],
            partitions: vec![PartitionRecord::new(&[NodeId(0)])],
            configs: BTreeMap::new(),
        },
    });
    assert_eq!(image.apply(&again), Applied::Refused(TOPIC_ALREADY_EXISTS));
    let on_unknown = Command::CreateTopic(CreateTopic {
        name: "u".into(),
        topic: TopicRecord {
            topic_id: [3; 16],
            partitions: vec![PartitionRecord::new(&[NodeId(0), NodeId(9)])],
            configs: BTreeMap::new(),
        },
    });
    assert_eq!(
        image.apply(&on_unknown),
        Applied::Refused(INVALID_REPLICA_ASSIGNMENT)
    );
    let twice = Command::CreatePartitions(CreatePartitions {
        name: "t".into(),
        partitions: vec![PartitionRecord::new(&[NodeId(1), NodeId(1)])],
    });
    assert_eq!(
        image.apply(&twice),
        Applied::Refused(INVALID_REPLICA_ASSIGNMENT)
    );
    let more = Command::CreatePartitions(CreatePartitions {
        name: "t".into(),
        partitions: vec![PartitionRecord::new(&[NodeId(1), NodeId(2)])],
    });
    assert_eq!(image.apply(&more), Applied::Ok);
    assert_eq!(image.partition("t", 1).unwrap().leader, 1);
    assert_eq!(image.apply(&Command::DeleteTopic("t".into())), Applied::Ok);
    assert_eq!(
        image.apply(&Command::DeleteTopic("t".into())),
        Applied::Refused(UNKNOWN_TOPIC_OR_PARTITION)
    );
}

#[test]
fn a_fence_for_an_older_incarnation_is_stale() {
    let mut image = cluster();
    let fence = |incarnation| {
        Command::FenceBroker(BrokerFence {
            node_id: 1,
            incarnation,
        })
    };
    assert_eq!(image.apply(&fence(6)), Applied::Refused(STALE_BROKER_EPOCH));
    assert!(!image.brokers[&1].fenced);
    assert_eq!(image.apply(&fence(7)), Applied::Ok);
    assert!(image.brokers[&1].fenced);
    // A restart registers a new incarnation, unfenced.
    assert_eq!(image.apply(&broker(1, 8)), Applied::Ok);
    assert!(!image.brokers[&1].fenced);
    let unknown = Command::UnfenceBroker(BrokerFence {
        node_id: 9,
        incarnation: 1,
    });
    assert_eq!(
        image.apply(&unknown),
        Applied::Refused(BROKER_ID_NOT_REGISTERED)
    );
}

#[test]
fn producer_id_blocks_are_consecutive_and_never_reused() {
    let mut image = cluster();
    let ask = |node_id, count| Command::AllocateProducerIds(AllocateProducerIds { node_id, count });
    assert_eq!(
        image.apply(&ask(0, 1000)),
        Applied::ProducerIds(IdBlock {
            start: 0,
            count: 1000
        })
    );
    assert_eq!(
        image.apply(&ask(1, 10)),
        Applied::ProducerIds(IdBlock {
            start: 1000,
            count: 10
        })
    );
    assert_eq!(
        image.apply(&ask(2, 0)),
        Applied::ProducerIds(IdBlock {
            start: 1010,
            count: 1
        })
    );
    assert_eq!(
        image.apply(&ask(5, 10)),
        Applied::Refused(BROKER_ID_NOT_REGISTERED)
    );
    // The image (and so a snapshot) carries where the next block starts.
    let restored = MetadataImage::decode(&image.encode()).unwrap();
    assert_eq!(restored.next_producer_id, 1011);
}

#[test]
fn commands_and_images_round_trip_and_garbage_is_an_error() {
    let image = cluster();
    assert_eq!(MetadataImage::decode(&image.encode()).unwrap(), image);
    let command = alter(0, 0, 0, &[0, 1]);
    assert_eq!(Command::decode(&command.encode()).unwrap(), command);
    assert!(Command::decode(b"not an archive").is_err());
    assert!(MetadataImage::decode(&[0xff; 64]).is_err());
}

#[test]
fn a_restarted_leader_leads_again_in_a_new_epoch() {
    let mut image = cluster();
    let epochs = |image: &MetadataImage| {
        let p = image.partition("t", 0).unwrap();
        (p.leader, p.leader_epoch, p.partition_epoch)
    };
    // The same incarnation registering again (a retried proposal) changes nothing.
    assert_eq!(image.apply(&broker(0, 7)), Applied::Ok);
    assert_eq!(epochs(&image), (0, 0, 0));
    // A follower restarts: the leader's epoch stays.
    assert_eq!(image.apply(&broker(1, 8)), Applied::Ok);
    assert_eq!(epochs(&image), (0, 0, 0));
    // The leader restarts: same leader, next epoch, so that followers ahead of what it kept
    // find their divergence.
    assert_eq!(image.apply(&broker(0, 9)), Applied::Ok);
    assert_eq!(epochs(&image), (0, 1, 1));
    assert_eq!(
        image.apply(&alter(0, 0, 1, &[0, 1])),
        Applied::Refused(FENCED_LEADER_EPOCH),
        "the old epoch is fenced"
    );
}

fn fence(node_id: i32, incarnation: u64) -> Command {
    Command::FenceBroker(BrokerFence {
        node_id,
        incarnation,
    })
}

fn unfence(node_id: i32, incarnation: u64) -> Command {
    Command::UnfenceBroker(BrokerFence {
        node_id,
        incarnation,
    })
}

/// (leader, ISR, leader epoch, partition epoch) of t-0.
fn state(image: &MetadataImage) -> (i32, Vec<i32>, i32, i32) {
    let p = image.partition("t", 0).unwrap();
    (p.leader, p.isr.clone(), p.leader_epoch, p.partition_epoch)
}

#[test]
fn a_fenced_leader_is_replaced_by_the_next_live_isr_member_in_a_new_epoch() {
    let mut image = cluster();
    assert_eq!(image.apply(&fence(0, 7)), Applied::Ok);
    assert_eq!(state(&image), (1, vec![1, 2], 1, 1));
    // The old leader's ISR change in its epoch is fenced.
    assert_eq!(
        image.apply(&alter(0, 0, 1, &[0, 1])),
        Applied::Refused(NOT_LEADER_OR_FOLLOWER)
    );
    // A fenced follower leaves the ISR; the leader and its epoch stay.
    assert_eq!(image.apply(&fence(2, 7)), Applied::Ok);
    assert_eq!(state(&image), (1, vec![1], 1, 2));
    // The last ISR member stays in it when fenced: the partition is offline, not given to a
    // replica that may lack acknowledged records.
    assert_eq!(image.apply(&fence(1, 7)), Applied::Ok);
    assert_eq!(state(&image), (-1, vec![1], 2, 3));
    assert_eq!(image.partition("t", 0).unwrap().assignment().leader, None);
    // Brokers outside the ISR coming back do not lead it.
    assert_eq!(image.apply(&unfence(0, 7)), Applied::Ok);
    assert_eq!(image.apply(&broker(2, 8)), Applied::Ok);
    assert_eq!(state(&image).0, -1, "never elected outside the ISR");
    // The last ISR member coming back leads, in a new epoch (as an unfenced or a restarted
    // broker alike).
    let mut restarted = image.clone();
    assert_eq!(image.apply(&unfence(1, 7)), Applied::Ok);
    assert_eq!(state(&image), (1, vec![1], 3, 4));
    assert_eq!(restarted.apply(&broker(1, 9)), Applied::Ok);
    assert_eq!(state(&restarted), (1, vec![1], 3, 4));
}

#[test]
fn a_stale_fence_moves_nothing() {
    let mut image = cluster();
    assert_eq!(
        image.apply(&fence(0, 6)),
        Applied::Refused(STALE_BROKER_EPOCH)
    );
    assert_eq!(state(&image), (0, vec![0, 1, 2], 0, 0));
}

#[test]
fn the_preferred_leader_gets_its_partitions_back_once_live_and_in_sync() {
    let mut image = cluster();
    let elect = |image: &MetadataImage| Command::ElectPreferred(image.preferred_elections());
    assert!(image.preferred_elections().is_empty());
    assert_eq!(image.apply(&fence(0, 7)), Applied::Ok);
    assert!(
        image.preferred_elections().is_empty(),
        "a fenced preferred leader waits"
    );
    assert_eq!(image.apply(&unfence(0, 7)), Applied::Ok);
    assert_eq!(state(&image), (1, vec![1, 2], 1, 1));
    assert!(
        image.preferred_elections().is_empty(),
        "out of the ISR: it may lack records"
    );
    assert!(matches!(
        image.apply(&alter(1, 1, 1, &[0, 1, 2])),
        Applied::Partition(_)
    ));
    let moves = image.preferred_elections();
    assert_eq!(
        moves,
        vec![PartitionRef {
            topic: "t".into(),
            partition: 0
        }]
    );
    // Applied after the preferred leader was fenced again: nothing moves.
    let mut later = image.clone();
    assert_eq!(later.apply(&fence(0, 7)), Applied::Ok);
    let before = state(&later);
    assert_eq!(
        later.apply(&Command::ElectPreferred(moves.clone())),
        Applied::Ok
    );
    assert_eq!(state(&later), before);
    // Applied as proposed: the preferred leader leads in a new epoch.
    assert_eq!(image.apply(&elect(&image)), Applied::Ok);
    assert_eq!(state(&image), (0, vec![0, 1, 2], 2, 3));
    assert!(image.preferred_elections().is_empty());
    // Unknown partitions in the command are skipped.
    let unknown = Command::ElectPreferred(vec![PartitionRef {
        topic: "nope".into(),
        partition: 3,
    }]);
    assert_eq!(image.apply(&unknown), Applied::Ok);
}

#[test]
fn a_fenced_broker_may_not_join_an_isr() {
    let mut image = cluster();
    assert_eq!(image.apply(&fence(2, 7)), Applied::Ok);
    assert_eq!(state(&image), (0, vec![0, 1], 0, 1));
    assert_eq!(
        image.apply(&alter(0, 0, 1, &[0, 1, 2])),
        Applied::Refused(INELIGIBLE_REPLICA)
    );
    assert_eq!(image.apply(&unfence(2, 7)), Applied::Ok);
    assert!(matches!(
        image.apply(&alter(0, 0, 1, &[0, 1, 2])),
        Applied::Partition(_)
    ));
}
