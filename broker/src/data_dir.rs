//! The data directory at startup, before any shard runs (plain blocking I/O): created durably
//! and locked against a second broker. (`metadata::dirs` checks its partition directories
//! against the metadata.)

use std::io;
use std::path::{Path, PathBuf};

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

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock file could not be opened.
    #[error("opening {}: {source}", path.display())]
    Open {
        /// The lock file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another broker holds the lock.
    #[error("{} is in use by another strom process", .0.display())]
    InUse(PathBuf),
}

/// One broker per data directory: an exclusive `flock` held for the process's life.
pub fn lock(dir: &Path) -> Result<std::fs::File, LockError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LockError::Open {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on an fd we own, no memory effects.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(LockError::InUse(dir.to_path_buf()));
    }
    Ok(f)
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
