//! A full disk: appends fail with an error that says so, leave the log exactly as acknowledged,
//! and work again once space frees up. Runs on a 1 MiB tmpfs, which needs root (CI runs as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use strom_storage::testing::build_batch;
use strom_storage::{LeaderEpoch, LogConfig, Offset, PartitionLog};

/// Size of the tmpfs the log runs on.
const TMPFS_SIZE: &str = "size=1m";
/// Bytes of a file that is deleted later to free space.
const FILLER_BYTES: usize = 192 << 10;
/// Upper bound of appends before the disk must be full (1 MiB / smallest batch).
const APPENDS_MAX: usize = 10_000;

/// Unmounts the tmpfs when the test ends, whatever happens.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path) -> Mount {
    std::fs::create_dir_all(at).expect("create mount point");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
        .arg(at)
        .status();
    match status {
        Ok(status) if status.success() => Mount(at.to_path_buf()),
        other => panic!(
            "the disk-full test needs `mount -t tmpfs` (run the tests as root, as CI does); \
             mount at {} gave {other:?}",
            at.display()
        ),
    }
}

fn log_bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .sum()
}

async fn check_log(log: &PartitionLog, acknowledged: &[(i64, Vec<u8>)]) {
    let end = acknowledged.last().map_or(0, |(base, _)| base + 2);
    assert_eq!(log.log_end_offset(), Offset(end));
    for (base, bytes) in acknowledged {
        let slice = log
            .read(Offset(*base), 1, true)
            .await
            .expect("read")
            .expect("data");
        assert_eq!(slice.first_offset, Offset(*base));
        assert!(
            slice.read_blocking().expect("pread") == *bytes,
            "batch {base} differs"
        );
    }
}

#[test]
fn disk_full_is_reported_and_the_log_stays_intact() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mount_point = tmp.path().join("mnt");
    let mount = mount_tmpfs(&mount_point);
    let root = mount.0.clone();
    strom_storage::testing::run_local(move || async move {
        let dir = root.join("full-0");
        let filler = root.join("filler");
        std::fs::write(&filler, vec![0u8; FILLER_BYTES]).expect("filler");
        let config = LogConfig {
            segment_bytes: 300 << 10,
            index_interval_bytes: 1024,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir.clone(), config.clone(), 0)
            .await
            .expect("open");

        let mut acknowledged: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut error = None;
        for i in 0..APPENDS_MAX {
            let value = vec![(i % 251) as u8; 1000 + (i * 7919) % 9000];
            let batch = build_batch(i as i64, &[(None, Some(&value[..])), (Some(b"k"), None)]);
            match log.append(&batch, LeaderEpoch(1), 0).await {
                Ok(info) => {
                    let mut stamped = batch.clone();
                    stamped[0..8].copy_from_slice(&info.base_offset.0.to_be_bytes());
                    stamped[12..16].copy_from_slice(&1i32.to_be_bytes());
                    acknowledged.push((info.base_offset.0, stamped));
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let error = error.expect("the 1 MiB tmpfs fills up");
        assert!(error.is_disk_full(), "expected ENOSPC, got {error}");
        assert!(
            log.segment_count() >= 2,
            "the log rolled before filling the disk"
        );

        // Exactly the acknowledged batches are in the files and readable.
        let acknowledged_bytes: u64 = acknowledged.iter().map(|(_, b)| b.len() as u64).sum();
        assert_eq!(log_bytes_on_disk(&dir), acknowledged_bytes);
        assert_eq!(log.size_bytes(), acknowledged_bytes);
        check_log(&log, &acknowledged).await;

        // Still full: the same error, nothing consumed.
        let big = build_batch(0, &[(None, Some(&vec![1u8; 60_000][..])), (None, None)]);
        let again = log
            .append(&big, LeaderEpoch(1), 0)
            .await
            .expect_err("still full");
        assert!(again.is_disk_full(), "{again}");
        assert_eq!(log_bytes_on_disk(&dir), acknowledged_bytes);

        // Space frees up: appends work again with the next offset.
        std::fs::remove_file(&filler).expect("remove filler");
        let small = build_batch(5, &[(None, Some(b"after")), (None, Some(b"space"))]);
        let info = log
            .append(&small, LeaderEpoch(1), 0)
            .await
            .expect("append after freeing space");
        let end = acknowledged.last().map_or(0, |(base, _)| base + 2);
        assert_eq!(info.base_offset, Offset(end));
        let mut stamped = small.clone();
        stamped[0..8].copy_from_slice(&end.to_be_bytes());
        stamped[12..16].copy_from_slice(&1i32.to_be_bytes());
        acknowledged.push((end, stamped));
        log.flush().await.expect("flush");

        // An unclean reopen recovers the same state.
        drop(log);
        let log = PartitionLog::open(dir.clone(), config, 0)
            .await
            .expect("reopen");
        check_log(&log, &acknowledged).await;
        log.close().await.expect("close");
    });
    drop(mount);
}
