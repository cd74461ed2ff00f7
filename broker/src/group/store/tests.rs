//! Unit tests of the consumer-group store.

use super::*;
use crate::limits::GROUP_ID_BYTES_MAX;

fn encode(r: &LogRecord) -> (Vec<u8>, Option<Vec<u8>>) {
    (r.encode_key().unwrap(), r.encode_value().unwrap())
}

fn commit(group: String, offset: i64) -> LogRecord {
    let value = Some(Committed {
        offset,
        leader_epoch: -1,
        metadata: String::new(),
        commit_ms: 1,
    });
    LogRecord::Offset {
        group,
        topic: "t".into(),
        partition: 0,
        value,
    }
}

#[test]
fn records_round_trip() {
    let offset = LogRecord::Offset {
        group: "g".into(),
        topic: "t".into(),
        partition: 3,
        value: Some(Committed {
            offset: 42,
            leader_epoch: 7,
            metadata: "héllo".into(),
            commit_ms: 1,
        }),
    };
    let (key, value) = encode(&offset);
    let back = LogRecord::decode(&key, value.as_deref()).unwrap();
    assert!(
        matches!(back, LogRecord::Offset { ref group, partition: 3, value: Some(ref c), .. } if group == "g" && c.offset == 42 && c.metadata == "héllo" && c.leader_epoch == 7)
    );
    let tomb = LogRecord::Offset {
        group: "g".into(),
        topic: "t".into(),
        partition: 3,
        value: None,
    };
    assert!(matches!(
        LogRecord::decode(&encode(&tomb).0, None),
        Some(LogRecord::Offset { value: None, .. })
    ));

    let record = GroupRecord {
        protocol_type: Some("consumer".into()),
        protocol: Some("range".into()),
        generation: 5,
        leader: Some("m1".into()),
        members: vec![MemberRecord {
            member_id: "m1".into(),
            assignment: vec![1, 2, 3],
            ..Default::default()
        }],
    };
    let group = LogRecord::Group {
        group: "g".into(),
        value: Some(record.clone()),
    };
    let (key, value) = encode(&group);
    match LogRecord::decode(&key, value.as_deref()) {
        Some(LogRecord::Group { value: Some(v), .. }) => assert_eq!(v, record),
        other => panic!("{other:?}"),
    }
    assert!(LogRecord::decode(&[9, 9], None).is_none());
    assert!(LogRecord::decode(&key, Some(&[0, 1, 2])).is_none());
}

#[test]
fn strings_longer_than_their_length_field_are_refused_not_cut() {
    let too_long = "g".repeat(u16::MAX as usize + 1);
    for r in [
        commit(too_long.clone(), 1),
        LogRecord::Group {
            group: too_long.clone(),
            value: None,
        },
    ] {
        assert!(
            matches!(r.encode_key(), Err(StoreError::Encode(_))),
            "{:?}",
            r.encode_key().map(|k| k.len())
        );
    }
    let long_topic = LogRecord::Offset {
        group: "g".into(),
        topic: too_long.as_str().into(),
        partition: 0,
        value: None,
    };
    assert!(matches!(
        long_topic.encode_key(),
        Err(StoreError::Encode(_))
    ));
    assert!(matches!(
        encode_write(&[commit("g".into(), 1), commit(too_long, 2)]),
        Err(StoreError::Encode(_))
    ));
    assert_eq!(
        StoreError::Encode(String::new()).code(),
        E::UnknownServerError.code()
    );
}

#[test]
fn strings_at_the_limits_round_trip() {
    for len in [GROUP_ID_BYTES_MAX, u16::MAX as usize] {
        let group = "é".repeat(len / 2) + &"g".repeat(len % 2);
        assert_eq!(group.len(), len);
        let (key, value) = encode(&commit(group.clone(), 7));
        match LogRecord::decode(&key, value.as_deref()) {
            Some(LogRecord::Offset {
                group: g,
                value: Some(c),
                ..
            }) => assert!(g == group && c.offset == 7),
            other => panic!("{other:?}"),
        }
        let (key, _) = encode(&LogRecord::Group {
            group: group.clone(),
            value: None,
        });
        assert!(
            matches!(LogRecord::decode(&key, None), Some(LogRecord::Group { group: g, value: None }) if g == group)
        );
    }
}

#[test]
fn a_write_that_cannot_be_encoded_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let path = data.join(GROUPS_DIR).join("offsets-0");
    let (outcomes, stored) = strom_storage::testing::run_local(move || async move {
        let writer = PartitionWriter::new(path.clone(), 0, None, None);
        let config = LogConfig {
            cleanup: CleanupPolicy {
                delete: false,
                compact: true,
            },
            ..LogConfig::default()
        };
        let pending = |records| Pending {
            records,
            done: oneshot::channel().0,
        };
        let batch = [
            pending(vec![commit("a".into(), 1)]),
            pending(vec![
                commit("b".into(), 2),
                commit("b".repeat(u16::MAX as usize + 1), 3),
            ]),
            pending(vec![commit("c".into(), 4)]),
        ];
        let outcomes = store(&writer, &config, true, &batch).await;
        writer.close().await;
        let store = OffsetsStore::new(&data, 1, 1 << 20, 0, false);
        let mut stored = Vec::new();
        store.replay(&[0], |r| stored.push(r)).await.unwrap();
        store.close().await;
        (outcomes, stored)
    });
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Err(StoreError::Encode(_))),
        "{outcomes:?}"
    );
    let groups: Vec<&str> = stored.iter().map(|r| r.group()).collect();
    assert_eq!(groups, ["a", "c"]);
}

#[test]
fn partition_count_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(load_partition_count(dir.path(), 7).unwrap(), 7);
    assert_eq!(load_partition_count(dir.path(), 50).unwrap(), 7);
}
