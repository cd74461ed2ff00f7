//! Small helpers over glommio's buffered files: error mapping, whole writes, directory sync,
//! and atomic replacement of small files.

use std::os::fd::AsRawFd;
use std::path::Path;

use glommio::io::{BufferedFile, Directory, OpenOptions};
use glommio::GlommioError;

use crate::error::StorageError;
use crate::limits::INLINE_WRITE_BYTES_MAX;

/// Converts a glommio error into `StorageError::Io`, keeping the errno of the inner io::Error
/// (glommio's own conversion rewraps it and loses `raw_os_error`, which `is_disk_full` needs).
pub(crate) fn io_err(op: &'static str, path: &Path, err: GlommioError<()>) -> StorageError {
    let source = match err {
        GlommioError::IoError(source) => source,
        GlommioError::EnhancedIoError { source, .. } => source,
        other => std::io::Error::from(other),
    };
    StorageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Wraps a std io::Error with context.
pub(crate) fn std_io_err(op: &'static str, path: &Path, source: std::io::Error) -> StorageError {
    StorageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Opens (creating if missing) a file for reading and writing, without truncating it.
pub(crate) async fn open_rw(path: &Path) -> Result<BufferedFile, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .buffered_open(path)
        .await
        .map_err(|e| io_err("open", path, e))
}

/// Creates (or truncates) a file for reading and writing.
pub(crate) async fn create_rw(path: &Path) -> Result<BufferedFile, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .buffered_open(path)
        .await
        .map_err(|e| io_err("create", path, e))
}

/// Writes `first` at `pos` and, if the kernel wrote only part of it, keeps writing what
/// `rest(already_written)` returns until everything is written or an error occurs.
/// `write_at` takes its buffer by value (io_uring owns it while in flight), so the tail of a
/// short write is rebuilt by `rest` instead of being kept in a second copy up front.
pub(crate) async fn write_all_at(
    file: &BufferedFile,
    path: &Path,
    pos: u64,
    first: Vec<u8>,
    rest: &dyn Fn(usize) -> Vec<u8>,
) -> Result<(), StorageError> {
    let total = first.len();
    if total <= INLINE_WRITE_BYTES_MAX {
        return pwrite_all(file, path, pos, &first);
    }
    let mut written = file
        .write_at(first, pos)
        .await
        .map_err(|e| io_err("write", path, e))?;
    // Each round writes at least one byte or fails, so this loop runs at most `total` times.
    while written < total {
        let tail = rest(written);
        debug_assert_eq!(tail.len(), total - written);
        let n = file
            .write_at(tail, pos + written as u64)
            .await
            .map_err(|e| io_err("write", path, e))?;
        if n == 0 {
            return Err(std_io_err(
                "write",
                path,
                std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0 bytes"),
            ));
        }
        written += n;
    }
    Ok(())
}

/// Writes all of `data` at `pos` with pwrite(2) on this thread (see `INLINE_WRITE_BYTES_MAX`).
fn pwrite_all(file: &BufferedFile, path: &Path, pos: u64, data: &[u8]) -> Result<(), StorageError> {
    let fd = file.as_raw_fd();
    let mut written = 0usize;
    while written < data.len() {
        let left = &data[written..];
        // SAFETY: `left` is a live slice of `left.len()` bytes; `fd` stays open while `file` is
        // borrowed.
        let n = unsafe {
            libc::pwrite(
                fd,
                left.as_ptr().cast(),
                left.len(),
                (pos + written as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(std_io_err("write", path, e));
        }
        if n == 0 {
            return Err(std_io_err(
                "write",
                path,
                std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0 bytes"),
            ));
        }
        written += n as usize;
    }
    Ok(())
}

/// `write_all_at` for small buffers that can simply be re-sliced on a short write.
pub(crate) async fn write_small_at(
    file: &BufferedFile,
    path: &Path,
    pos: u64,
    data: &[u8],
) -> Result<(), StorageError> {
    if data.len() <= INLINE_WRITE_BYTES_MAX {
        return pwrite_all(file, path, pos, data);
    }
    write_all_at(file, path, pos, data.to_vec(), &|from| {
        data[from..].to_vec()
    })
    .await
}

/// Reads up to `len` bytes at `pos` (fewer only at end of file).
pub(crate) async fn read_at(
    file: &BufferedFile,
    path: &Path,
    pos: u64,
    len: usize,
) -> Result<glommio::io::ReadResult, StorageError> {
    file.read_at(pos, len)
        .await
        .map_err(|e| io_err("read", path, e))
}

/// Size of an open file.
pub(crate) async fn file_size(file: &BufferedFile, path: &Path) -> Result<u64, StorageError> {
    file.file_size().await.map_err(|e| io_err("stat", path, e))
}

/// Truncates (or extends) an open file.
pub(crate) async fn truncate(
    file: &BufferedFile,
    path: &Path,
    size: u64,
) -> Result<(), StorageError> {
    file.truncate(size)
        .await
        .map_err(|e| io_err("truncate", path, e))
}

/// fdatasyncs an open file.
pub(crate) async fn fdatasync(file: &BufferedFile, path: &Path) -> Result<(), StorageError> {
    let started = std::time::Instant::now();
    let res = file.fdatasync().await;
    crate::metrics::record_fsync(started.elapsed());
    res.map_err(|e| io_err("fdatasync", path, e))
}

/// fsyncs a directory so that creations, renames and removals in it are durable.
pub async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    // glommio 0.9 opens directories with `openat(-1, ..)`, which fails with EBADF for a relative
    // path; a relative path is resolved against the working directory first.
    let absolute;
    let dir = if dir.is_relative() {
        absolute = std::path::absolute(dir).map_err(|e| std_io_err("open dir", dir, e))?;
        absolute.as_path()
    } else {
        dir
    };
    let handle = Directory::open(dir)
        .await
        .map_err(|e| io_err("open dir", dir, e))?;
    let started = std::time::Instant::now();
    let synced = handle.sync().await;
    crate::metrics::record_fsync(started.elapsed());
    synced.map_err(|e| io_err("fsync dir", dir, e))?;
    handle
        .close()
        .await
        .map_err(|e| io_err("close dir", dir, e))
}

/// Removes a file by name.
pub(crate) async fn remove_file(path: &Path) -> Result<(), StorageError> {
    glommio::io::remove(path)
        .await
        .map_err(|e| io_err("remove", path, e))
}

/// Removes a file; a file that is already gone is fine.
pub(crate) async fn remove_file_if_exists(path: &Path) -> Result<(), StorageError> {
    match remove_file(path).await {
        Err(StorageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        other => other,
    }
}

/// Renames a file (within one directory: atomic).
pub(crate) async fn rename(from: &Path, to: &Path) -> Result<(), StorageError> {
    glommio::io::rename(from, to)
        .await
        .map_err(|e| io_err("rename", from, e))
}

/// Replaces `dir/name` with `data` atomically: write `name.tmp`, fdatasync it, rename it over
/// `name`, fsync the directory.
pub(crate) async fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let target = dir.join(name);
    let file = create_rw(&tmp).await?;
    let written = async {
        write_small_at(&file, &tmp, 0, data).await?;
        fdatasync(&file, &tmp).await
    }
    .await;
    let closed = file.close().await.map_err(|e| io_err("close", &tmp, e));
    written?;
    closed?;
    glommio::io::rename(&tmp, &target)
        .await
        .map_err(|e| io_err("rename", &tmp, e))?;
    sync_dir(dir).await
}

/// Suffix of files being replaced by `write_atomic`; leftovers are deleted on open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_dir_accepts_a_relative_path() {
        // A directory under the working directory, named relative to it: what a default
        // `log.dirs = ./strom-data` gives.
        let cwd = std::env::current_dir().unwrap();
        let dir = tempfile::tempdir_in(&cwd).unwrap();
        let relative = Path::new(".").join(dir.path().strip_prefix(&cwd).unwrap());
        assert!(relative.is_relative());
        crate::testing::run_local(move || async move { sync_dir(&relative).await }).unwrap();
    }
}
