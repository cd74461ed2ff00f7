//! The data directory at startup, before any shard runs (plain blocking I/O): created durably,
//! locked against a second broker, and checked against the metadata so that no partition
//! directory is ever deleted because metadata is missing.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::metadata::{self, ClusterMeta};

/// Partition directories named in the refusal message at most; the rest are counted.
const ORPHANS_LISTED_MAX: usize = 10;

/// Creates `dir` and any missing parents, and fsyncs the parent of each directory it created, so
/// that the new directory entries survive a power loss (a data directory that vanishes after a
/// crash takes every acknowledged record with it).
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.is_dir() {
            break;
        }
        missing.push(p);
        cur = p.parent();
    }
    for p in missing.into_iter().rev() {
        match std::fs::create_dir(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => continue,
            Err(e) => return Err(e),
        }
        let parent = match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Durably replaces `dir/name` with `bytes` at startup, before any shard runs: written to
/// `name.tmp`, fdatasync'ed, renamed over `name`, and the directory fsync'ed (which is created
/// durably first if missing). A crash leaves the old or the new content, never a mix.
pub fn replace_file_durable(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    create_dir_durable(dir)?;
    // Through the storage layer's disk seam, so that test hooks see it (sync journal).
    strom_storage::write_atomic_blocking(dir, name, bytes)
}

/// One broker per data directory: an exclusive `flock` held for the process's life.
pub fn lock(dir: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    // SAFETY: flock on an fd we own, no memory effects.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "{} is in use by another strom process",
            dir.display()
        ));
    }
    Ok(f)
}

/// Partition directories (`<topic>-<partition>`) directly under the data directory.
fn partition_dirs(data_dir: &Path) -> io::Result<Vec<(PathBuf, String, i32)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !entry.file_type()?.is_dir() || name == metadata::store::META_DIR {
            continue;
        }
        let Some((topic, p)) = name.rsplit_once('-') else {
            continue;
        };
        let Ok(p) = p.parse::<i32>() else { continue };
        out.push((entry.path(), topic.to_string(), p));
    }
    out.sort();
    Ok(out)
}

/// Compares the partition directories with the metadata. Directories of topics whose deletion
/// was decided (listed in `deleting`, absent from the metadata) are removed: a crash between
/// persisting the deletion and removing the logs leaves them. Any other directory the metadata
/// does not list means the metadata is missing or older than the data, and the broker refuses
/// to start, naming them: deleting them would lose every record they hold.
///
/// Afterwards the list of topics being deleted is durably emptied.
pub fn check_partition_dirs(
    data_dir: &Path,
    meta: &ClusterMeta,
    deleting: &[String],
) -> Result<(), String> {
    let dirs =
        partition_dirs(data_dir).map_err(|e| format!("listing {}: {e}", data_dir.display()))?;
    let deleting: BTreeSet<&str> = deleting.iter().map(String::as_str).collect();
    let mut orphans = Vec::new();
    for (path, topic, p) in dirs {
        if meta.owner(&topic, p).is_some() {
            continue;
        }
        if meta.topic(&topic).is_none() && deleting.contains(topic.as_str()) {
            tracing::warn!("removing {}: its topic was deleted", path.display());
            std::fs::remove_dir_all(&path)
                .map_err(|e| format!("removing {} of a deleted topic: {e}", path.display()))?;
        } else {
            orphans.push(path);
        }
    }
    if !orphans.is_empty() {
        let mut names: Vec<String> = orphans
            .iter()
            .take(ORPHANS_LISTED_MAX)
            .map(|p| p.display().to_string())
            .collect();
        if orphans.len() > ORPHANS_LISTED_MAX {
            names.push(format!("and {} more", orphans.len() - ORPHANS_LISTED_MAX));
        }
        return Err(format!(
            "{} partition director{} in {} {} not in the topic metadata ({}): {}. Strom does not delete data \
             it cannot account for. If the metadata was lost, restore {}/{}/topics.snapshot from a backup; \
             if these directories are really unwanted, move them out of the data directory. \
             See docs/operations.md, \"Missing metadata\".",
            orphans.len(),
            if orphans.len() == 1 { "y" } else { "ies" },
            data_dir.display(),
            if orphans.len() == 1 { "is" } else { "are" },
            if meta.topics.is_empty() { "which lists no topics" } else { "which does not list them" },
            names.join(", "),
            data_dir.display(),
            metadata::store::META_DIR,
        ));
    }
    if !deleting.is_empty() {
        metadata::store::save_deleting_blocking(data_dir, &[]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        create_dir_durable(&nested).unwrap();
        assert!(nested.is_dir());
        // Existing directories are fine.
        create_dir_durable(&nested).unwrap();
        create_dir_durable(dir.path()).unwrap();
        // A file in the way is an error, not a silent success.
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(create_dir_durable(&file.join("sub")).is_err());
    }
}
