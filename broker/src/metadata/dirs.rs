//! The partition directories of the data directory checked against the metadata at startup,
//! so that no partition directory is ever deleted because metadata is missing.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use super::{store, ClusterMeta};
use crate::ids::PartitionId;

/// Partition directories named in the refusal message at most; the rest are counted.
const ORPHANS_LISTED_MAX: usize = 10;

/// Partition directories (`<topic>-<partition>`) directly under the data directory.
fn partition_dirs(data_dir: &Path) -> io::Result<Vec<(PathBuf, String, i32)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !entry.file_type()?.is_dir() || name == store::META_DIR {
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
) -> Result<(), DataDirError> {
    let dirs = partition_dirs(data_dir).map_err(|source| DataDirError::Io {
        action: "listing",
        path: data_dir.to_path_buf(),
        source,
    })?;
    let deleting: BTreeSet<&str> = deleting.iter().map(String::as_str).collect();
    let mut orphans = Vec::new();
    for (path, topic, p) in dirs {
        if meta.owner(&topic, PartitionId(p)).is_some() {
            continue;
        }
        if meta.topic(&topic).is_none() && deleting.contains(topic.as_str()) {
            tracing::warn!("removing {}: its topic was deleted", path.display());
            std::fs::remove_dir_all(&path).map_err(|source| DataDirError::Io {
                action: "removing (its topic was deleted)",
                path: path.clone(),
                source,
            })?;
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
        let message = format!(
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
            store::META_DIR,
        );
        return Err(DataDirError::Unaccounted {
            count: orphans.len(),
            message,
        });
    }
    if !deleting.is_empty() {
        store::save_deleting_blocking(data_dir, &[])?;
    }
    Ok(())
}

/// The data directory's partition directories do not match the metadata.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataDirError {
    /// Listing or removing directories failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Partition directories the metadata does not list (the message names them and says
    /// what to do).
    #[error("{message}")]
    Unaccounted {
        /// How many directories.
        count: usize,
        /// What the operator reads.
        message: String,
    },
    /// Emptying the list of topics being deleted failed.
    #[error(transparent)]
    Metadata(#[from] store::MetaStoreError),
}
