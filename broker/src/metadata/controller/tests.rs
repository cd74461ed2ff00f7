//! Unit tests of the controller, against a fake `LogOwners`.

use std::cell::RefCell;
use std::path::Path;

use super::*;

#[test]
fn topic_names_follow_kafka_rules() {
    assert!(validate_topic_name("orders.v1_x-2").is_ok());
    assert!(validate_topic_name("").is_err());
    assert!(validate_topic_name("..").is_err());
    assert!(validate_topic_name("bad/name").is_err());
    assert!(validate_topic_name("spaces are bad").is_err());
    assert!(validate_topic_name(&"a".repeat(249)).is_ok());
    assert!(validate_topic_name(&"a".repeat(250)).is_err());
}

/// Partition owners that keep their logs as directories under the data directory, and fail
/// every open on the shards listed in `failing`.
struct FakeOwners {
    data_dir: PathBuf,
    failing: RefCell<Vec<ShardId>>,
    calls: RefCell<Vec<String>>,
}

impl FakeOwners {
    fn dirs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.data_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n != store::META_DIR)
            .collect();
        names.sort();
        names
    }
}

impl LogOwners for FakeOwners {
    async fn open_logs(
        &self,
        owner: ShardId,
        topic: Arc<str>,
        partitions: Vec<PartitionId>,
        _config: LogConfig,
        _fresh: bool,
    ) -> Result<(), OwnerError> {
        self.calls
            .borrow_mut()
            .push(format!("open {topic} {partitions:?} on {owner}"));
        for p in partitions {
            let dir = self.data_dir.join(format!("{topic}-{p}"));
            // A failing open may leave a directory behind, as a real one can.
            std::fs::create_dir_all(&dir).unwrap();
            if self.failing.borrow().contains(&owner) {
                return Err(OwnerError::Storage(StorageError::Io {
                    op: "create",
                    path: dir,
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                }));
            }
        }
        Ok(())
    }

    async fn remove_logs(
        &self,
        owner: ShardId,
        topic: Arc<str>,
        partitions: Vec<PartitionId>,
    ) -> Result<(), OwnerError> {
        self.calls
            .borrow_mut()
            .push(format!("remove {topic} {partitions:?} on {owner}"));
        for p in partitions {
            let _ = std::fs::remove_dir_all(self.data_dir.join(format!("{topic}-{p}")));
        }
        Ok(())
    }

    async fn update_log_config(&self, owner: ShardId, topic: Arc<str>, _config: LogConfig) {
        self.calls
            .borrow_mut()
            .push(format!("config {topic} on {owner}"));
    }

    async fn topics_deleted(&self, topics: Vec<Arc<str>>) {
        self.calls.borrow_mut().push(format!("deleted {topics:?}"));
    }
}

/// Runs `test` with a controller over two shards in a fresh data directory.
fn with_controller(test: impl AsyncFnOnce(&Controller, &FakeOwners) + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let dir = tempfile::tempdir().unwrap();
            let data_dir = dir.path().to_path_buf();
            // As at startup: reading the (empty) snapshot creates the metadata directory.
            assert_eq!(store::load(&data_dir).unwrap(), MetadataSnapshot::default());
            let ctx = ControllerContext {
                data_dir: data_dir.clone(),
                topic_defaults: TopicDefaults::default(),
                abort_at: None,
                table: ShardTable::new(2),
                meta: Arc::new(ArcSwap::from_pointee(ClusterMeta::default())),
                quorum: None,
            };
            let controller = Controller::new(ctx, ProducerIds::new(data_dir.clone(), 0, 60_000));
            let owners = FakeOwners {
                data_dir,
                failing: RefCell::new(Vec::new()),
                calls: RefCell::new(Vec::new()),
            };
            test(&controller, &owners).await;
        })
        .unwrap()
        .join()
        .unwrap();
}

fn create(name: &str, partitions: i32) -> ControllerOp {
    ControllerOp::CreateTopic {
        name: name.into(),
        partitions,
        replication_factor: -1,
        overrides: BTreeMap::new(),
        validate_only: false,
    }
}

fn persisted_topics(data_dir: &Path) -> Vec<(String, usize)> {
    store::load(data_dir)
        .unwrap()
        .topics
        .iter()
        .map(|t| (t.name.clone(), t.partition_shards.len()))
        .collect()
}

fn published_partitions(c: &Controller, topic: &str) -> Option<usize> {
    c.ctx.meta.load().topic(topic).map(|t| t.partitions.len())
}

#[test]
fn create_topic_opens_every_partition_on_its_owner_then_publishes() {
    with_controller(async |c, owners| {
        assert_eq!(
            c.apply(owners, create("orders", 4)).await.unwrap(),
            ControllerOutput::Done
        );
        assert_eq!(published_partitions(c, "orders"), Some(4));
        assert_eq!(
            persisted_topics(&owners.data_dir),
            vec![("orders".into(), 4)]
        );
        assert_eq!(
            owners.dirs(),
            ["orders-0", "orders-1", "orders-2", "orders-3"]
        );
        let opens = owners
            .calls
            .borrow()
            .iter()
            .filter(|c| c.starts_with("open"))
            .count();
        assert_eq!(
            opens,
            2,
            "one open per owning shard: {:?}",
            owners.calls.borrow()
        );
        let again = c.apply(owners, create("orders", 1)).await.unwrap_err();
        assert_eq!(again.code, E::TopicAlreadyExists.code());
    });
}

#[test]
fn a_create_topic_whose_log_open_fails_on_one_shard_leaves_no_trace() {
    with_controller(async |c, owners| {
        owners.failing.borrow_mut().push(ShardId(1));
        let e = c.apply(owners, create("orders", 4)).await.unwrap_err();
        assert_eq!(e.code, E::KafkaStorageError.code(), "{e:?}");
        assert!(e.message.contains("opening"), "{e:?}");
        assert_eq!(
            published_partitions(c, "orders"),
            None,
            "the topic was published"
        );
        assert!(
            persisted_topics(&owners.data_dir).is_empty(),
            "the topic is persisted"
        );
        assert!(
            owners.dirs().is_empty(),
            "partition directories left: {:?}",
            owners.dirs()
        );
        // Once the shard works again the same topic can be created.
        owners.failing.borrow_mut().clear();
        c.apply(owners, create("orders", 4)).await.unwrap();
        assert_eq!(published_partitions(c, "orders"), Some(4));
        assert_eq!(
            persisted_topics(&owners.data_dir),
            vec![("orders".into(), 4)]
        );
    });
}

#[test]
fn a_create_partitions_whose_log_open_fails_keeps_the_old_partition_count() {
    with_controller(async |c, owners| {
        c.apply(owners, create("orders", 2)).await.unwrap();
        owners.failing.borrow_mut().extend([ShardId(0), ShardId(1)]);
        let grow = ControllerOp::CreatePartitions {
            name: "orders".into(),
            count: 5,
            validate_only: false,
        };
        let e = c.apply(owners, grow).await.unwrap_err();
        assert_eq!(e.code, E::KafkaStorageError.code());
        assert_eq!(published_partitions(c, "orders"), Some(2));
        assert_eq!(
            persisted_topics(&owners.data_dir),
            vec![("orders".into(), 2)]
        );
        assert_eq!(owners.dirs(), ["orders-0", "orders-1"]);
    });
}

#[test]
fn delete_topic_unpublishes_removes_logs_and_drops_its_offsets() {
    with_controller(async |c, owners| {
        c.apply(owners, create("orders", 3)).await.unwrap();
        let delete = ControllerOp::DeleteTopic {
            name: "orders".into(),
        };
        c.apply(owners, delete).await.unwrap();
        assert_eq!(published_partitions(c, "orders"), None);
        assert!(persisted_topics(&owners.data_dir).is_empty());
        assert!(owners.dirs().is_empty());
        assert!(store::load_deleting(&owners.data_dir).unwrap().is_empty());
        let calls = owners.calls.borrow();
        assert_eq!(calls.last().unwrap(), r#"deleted ["orders"]"#);
    });
}

#[test]
fn alter_configs_validates_then_reaches_every_owner() {
    with_controller(async |c, owners| {
        c.apply(owners, create("orders", 4)).await.unwrap();
        let alter = |key: &str, value: &str| ControllerOp::AlterConfigs {
            name: "orders".into(),
            ops: vec![(key.into(), ConfigOpKind::Set, Some(value.into()))],
            replace: false,
            validate_only: false,
        };
        let e = c
            .apply(owners, alter("retention.ms", "soon"))
            .await
            .unwrap_err();
        assert_eq!(e.code, E::InvalidConfig.code());
        c.apply(owners, alter("retention.ms", "1000"))
            .await
            .unwrap();
        let t = c.ctx.meta.load().topic("orders").unwrap().clone();
        assert_eq!(
            t.overrides.get("retention.ms").map(String::as_str),
            Some("1000")
        );
        let configs = owners
            .calls
            .borrow()
            .iter()
            .filter(|c| c.starts_with("config"))
            .count();
        assert_eq!(configs, 2, "{:?}", owners.calls.borrow());
    });
}

/// A cluster image with topic `name`: partition p led by `leaders[p]` (one replica each).
fn image_with(topics: &[(&str, u8, &[i32])]) -> strom_cluster::controller::MetadataImage {
    use strom_cluster::controller::{MetadataImage, PartitionRecord, TopicRecord as Cluster};
    let mut image = MetadataImage::default();
    for &(name, id, leaders) in topics {
        image.topics.insert(
            name.to_string(),
            Cluster {
                topic_id: [id; 16],
                partitions: leaders
                    .iter()
                    .map(|&l| PartitionRecord::new(&[strom_cluster::NodeId(l)]))
                    .collect(),
                configs: BTreeMap::new(),
            },
        );
    }
    image
}

#[test]
fn adopting_an_image_opens_only_this_nodes_replicas_and_follows_deletion_and_recreation() {
    with_controller(async |c: &Controller, owners: &FakeOwners| {
        let me = strom_cluster::NodeId(1);
        // Partitions 1 and 3 of four are this node's.
        let image = image_with(&[("t", 1, &[0, 1, 2, 1])]);
        assert!(!c.adopt(owners, me, &image).await.unwrap());
        assert_eq!(owners.dirs(), vec!["t-1", "t-3"]);
        assert_eq!(
            published_partitions(c, "t"),
            Some(4),
            "every partition is in the metadata"
        );
        assert_eq!(persisted_topics(&owners.data_dir), vec![("t".into(), 4)]);
        // The same image again changes nothing.
        let calls = owners.calls.borrow().len();
        assert!(!c.adopt(owners, me, &image).await.unwrap());
        assert_eq!(owners.calls.borrow().len(), calls);
        // Two partitions more, one of them here.
        let grown = image_with(&[("t", 1, &[0, 1, 2, 1, 1, 0])]);
        assert!(!c.adopt(owners, me, &grown).await.unwrap());
        assert_eq!(owners.dirs(), vec!["t-1", "t-3", "t-4"]);
        // Deleted and created again under the same name (another id), with partition 0 here
        // now: the old logs go first, the new topic comes with the next call.
        let recreated = image_with(&[("t", 2, &[1, 0])]);
        assert!(
            c.adopt(owners, me, &recreated).await.unwrap(),
            "a second call is needed"
        );
        assert!(owners.dirs().is_empty(), "{:?}", owners.dirs());
        assert_eq!(published_partitions(c, "t"), None);
        assert!(!c.adopt(owners, me, &recreated).await.unwrap());
        assert_eq!(owners.dirs(), vec!["t-0"]);
        assert_eq!(c.ctx.meta.load().topic("t").map(|t| t.id), Some([2; 16]));
        // Gone from the image: gone here.
        assert!(!c.adopt(owners, me, &image_with(&[])).await.unwrap());
        assert!(owners.dirs().is_empty());
        assert_eq!(persisted_topics(&owners.data_dir), vec![]);
    });
}
