//! `LogManager`: all partition logs of one shard, by (topic, partition).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use event_listener::Event;

use crate::config::LogConfig;
use crate::error::StorageError;
use crate::file_io::std_io_err;
use crate::limits::{PRODUCER_IDS_MAX_DEFAULT, TOPIC_NAME_BYTES_MAX};
use crate::partition_log::PartitionLog;

type Key = (String, i32);

/// All logs of one shard. Logs live in `data_dir/{topic}-{partition}/`.
pub struct LogManager {
    data_dir: PathBuf,
    logs: RefCell<HashMap<Key, Rc<PartitionLog>>>,
    /// Opens in progress; a second caller for the same partition waits instead of opening the
    /// directory twice.
    opening: RefCell<HashMap<Key, Rc<Event>>>,
    /// Idempotent producers each log keeps state for (`producer.id.max.per.partition`).
    producer_ids_max: usize,
}

/// Whether `topic` is a legal Kafka topic name (which also makes it a safe directory name).
fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= TOPIC_NAME_BYTES_MAX
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl LogManager {
    /// A manager for logs under `data_dir` (created on first open).
    pub fn new(data_dir: PathBuf) -> Self {
        LogManager {
            data_dir,
            logs: RefCell::new(HashMap::new()),
            opening: RefCell::new(HashMap::new()),
            producer_ids_max: PRODUCER_IDS_MAX_DEFAULT,
        }
    }

    /// The logs this manager opens keep the state of at most `max` idempotent producers each
    /// (at least 1); beyond it the one with the oldest last append is evicted.
    pub fn with_producer_ids_max(mut self, max: usize) -> Self {
        self.producer_ids_max = max.max(1);
        self
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn partition_dir(&self, topic: &str, partition: i32) -> Result<PathBuf, StorageError> {
        if !valid_topic(topic) || partition < 0 {
            return Err(StorageError::InvalidName {
                topic: topic.to_string(),
                partition,
            });
        }
        Ok(self.data_dir.join(format!("{topic}-{partition}")))
    }

    /// Returns the open log of a partition, opening (and recovering) or creating it if needed.
    /// An already open log keeps its configuration; use `PartitionLog::update_config` to change it.
    pub async fn open_or_create(
        &self,
        topic: &str,
        partition: i32,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<Rc<PartitionLog>, StorageError> {
        let dir = self.partition_dir(topic, partition)?;
        let key = (topic.to_string(), partition);
        // Each round either returns or waits for another caller's open of the same partition.
        loop {
            if let Some(log) = self.logs.borrow().get(&key) {
                return Ok(Rc::clone(log));
            }
            let pending = self.opening.borrow().get(&key).cloned();
            match pending {
                Some(event) => {
                    let listener = event.listen();
                    if self.opening.borrow().contains_key(&key) {
                        listener.await;
                    }
                }
                None => break,
            }
        }
        let event = Rc::new(Event::new());
        self.opening
            .borrow_mut()
            .insert(key.clone(), Rc::clone(&event));
        let opened =
            PartitionLog::open_with_producer_ids_max(dir, config, self.producer_ids_max, now_ms)
                .await;
        self.opening.borrow_mut().remove(&key);
        event.notify(usize::MAX);
        let log = opened?;
        self.logs.borrow_mut().insert(key, Rc::clone(&log));
        Ok(log)
    }

    /// The open log of a partition, if any.
    pub fn get(&self, topic: &str, partition: i32) -> Option<Rc<PartitionLog>> {
        self.logs
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// Closes a partition's log and deletes its directory (also when it is not open).
    pub async fn remove(&self, topic: &str, partition: i32) -> Result<(), StorageError> {
        let dir = self.partition_dir(topic, partition)?;
        let log = self
            .logs
            .borrow_mut()
            .remove(&(topic.to_string(), partition));
        match log {
            Some(log) => log.delete().await,
            None => match std::fs::remove_dir_all(&dir) {
                // Deleting a partition that was never opened on this shard is rare and cold.
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(std_io_err("remove dir", &dir, e)),
            },
        }
    }

    /// Every open log.
    pub fn all(&self) -> Vec<((String, i32), Rc<PartitionLog>)> {
        self.logs
            .borrow()
            .iter()
            .map(|(key, log)| (key.clone(), Rc::clone(log)))
            .collect()
    }

    /// Closes every log cleanly; returns the first error after trying them all.
    pub async fn close_all(&self) -> Result<(), StorageError> {
        let logs: Vec<_> = self.logs.borrow_mut().drain().collect();
        // Concurrently: each close waits for a few fdatasyncs, which overlap on the device.
        let results = futures::future::join_all(logs.iter().map(|(_, log)| log.close())).await;
        let mut result = Ok(());
        for (((topic, partition), _), r) in logs.iter().zip(results) {
            if let Err(e) = r {
                tracing::warn!(topic, partition, error = %e, "error closing log");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::build_batch;
    use crate::types::{LeaderEpoch, Offset};

    #[test]
    fn topic_names_are_checked() {
        assert!(valid_topic("orders.v1_x-2"));
        assert!(!valid_topic(""));
        assert!(!valid_topic(".."));
        assert!(!valid_topic("a/b"));
        assert!(!valid_topic(&"x".repeat(250)));
    }

    #[test]
    fn open_get_remove_close_all() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        crate::testing::run_local(move || async move {
            let manager = LogManager::new(data_dir.clone());
            let config = LogConfig::default();
            let (a, b) = futures_lite::future::zip(
                manager.open_or_create("t", 0, config.clone(), 0),
                manager.open_or_create("t", 0, config.clone(), 0),
            )
            .await;
            let (a, b) = (a.expect("open"), b.expect("open"));
            assert!(Rc::ptr_eq(&a, &b), "concurrent opens share one log");
            let batch = build_batch(1, &[(None, Some(b"v"))]);
            a.append(&batch, LeaderEpoch(0), 1).await.expect("append");
            manager
                .open_or_create("t", 1, config.clone(), 0)
                .await
                .expect("open");
            assert_eq!(manager.all().len(), 2);
            assert!(manager.get("t", 1).is_some());
            assert!(manager
                .open_or_create("../x", 0, config.clone(), 0)
                .await
                .is_err());

            manager.remove("t", 1).await.expect("remove");
            assert!(manager.get("t", 1).is_none());
            assert!(!data_dir.join("t-1").exists());

            manager.close_all().await.expect("close all");
            assert!(manager.all().is_empty());
            let reopened = manager
                .open_or_create("t", 0, config, 0)
                .await
                .expect("reopen");
            assert_eq!(reopened.log_end_offset(), Offset(1));
            manager.close_all().await.expect("close all");
        });
    }
}
