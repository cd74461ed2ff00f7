//! The disk seam: every file operation of the storage layer that changes what is on disk (create,
//! write, truncate, fdatasync, rename, remove, directory sync) goes through this module, over
//! glommio's buffered files (io_uring) and, for small writes, `pwrite(2)`.
//!
//! Tests reach the disk through [`DiskHooks`] installed on the executor thread: the real
//! operation still runs (so zero-copy sends from a segment's descriptor work in tests too), and
//! the hooks see it first (to fail it with EIO or ENOSPC) and after (to model what a power loss
//! would keep: [`crate::testing::SimDisk`], or to journal synced lengths for black-box power-loss
//! tests: [`crate::testing::SyncJournal`]). Without hooks the cost is one thread-local read per
//! operation.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::rc::Rc;

use glommio::io::{BufferedFile, Directory, OpenOptions};
use glommio::GlommioError;

use crate::error::StorageError;
use crate::limits::INLINE_WRITE_BYTES_MAX;

/// A file as the hooks see it: its path and an open descriptor.
#[derive(Clone, Copy, Debug)]
pub struct FileRef<'a> {
    /// The path the file was opened by.
    pub path: &'a Path,
    /// An open descriptor of the file (valid for the duration of the call).
    pub fd: RawFd,
}

/// Observers and fault injectors of the disk seam. Every method has a no-op default; `before_*`
/// methods may fail the operation (nothing is done then), `after_*` methods see operations that
/// succeeded.
pub trait DiskHooks {
    /// Before `len` bytes are written at `pos`.
    fn before_write(&self, _file: FileRef<'_>, _pos: u64, _len: usize) -> std::io::Result<()> {
        Ok(())
    }
    /// After `data` was written at `pos` (all of it).
    fn after_write(&self, _file: FileRef<'_>, _pos: u64, _data: &[u8]) {}
    /// Before an fdatasync; the returned token is handed to `after_sync`.
    fn before_sync(&self, _file: FileRef<'_>) -> std::io::Result<u64> {
        Ok(0)
    }
    /// After an fdatasync that succeeded (`ok`) or failed.
    fn after_sync(&self, _file: FileRef<'_>, _token: u64, _ok: bool) {}
    /// After a truncate (or extension) to `size`.
    fn after_truncate(&self, _file: FileRef<'_>, _size: u64) {}
    /// After a file was opened for writing: `created` if it did not exist, `truncated` if it was
    /// opened with O_TRUNC.
    fn after_open(&self, _file: FileRef<'_>, _created: bool, _truncated: bool) {}
    /// After `from` was renamed to `to`.
    fn after_rename(&self, _from: &Path, _to: &Path) {}
    /// After `path` was removed.
    fn after_remove(&self, _path: &Path) {}
    /// Before a directory fsync.
    fn before_dir_sync(&self, _dir: &Path) -> std::io::Result<()> {
        Ok(())
    }
    /// After a directory fsync succeeded.
    fn after_dir_sync(&self, _dir: &Path) {}
}

thread_local! {
    static HOOKS: RefCell<Option<Rc<dyn DiskHooks>>> = const { RefCell::new(None) };
}

/// Installs `hooks` for the storage operations of the current thread (one executor), returning
/// the previous ones. `None` removes them.
pub fn install_disk_hooks(hooks: Option<Rc<dyn DiskHooks>>) -> Option<Rc<dyn DiskHooks>> {
    HOOKS.with(|h| std::mem::replace(&mut *h.borrow_mut(), hooks))
}

fn hooks() -> Option<Rc<dyn DiskHooks>> {
    HOOKS.with(|h| h.borrow().clone())
}

fn file_ref<'a>(file: &BufferedFile, path: &'a Path) -> FileRef<'a> {
    FileRef {
        path,
        fd: file.as_raw_fd(),
    }
}

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
    open_file(path, false).await
}

/// Creates (or truncates) a file for reading and writing.
pub(crate) async fn create_rw(path: &Path) -> Result<BufferedFile, StorageError> {
    open_file(path, true).await
}

async fn open_file(path: &Path, truncate: bool) -> Result<BufferedFile, StorageError> {
    let hooks = hooks();
    // A stat on this thread, with hooks only (tests): they need to know whether open created it.
    let existed = hooks.is_some() && path.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .buffered_open(path)
        .await
        .map_err(|e| io_err(if truncate { "create" } else { "open" }, path, e))?;
    if let Some(h) = hooks {
        h.after_open(file_ref(&file, path), !existed, truncate);
    }
    Ok(file)
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
    let hooks = hooks();
    if let Some(h) = &hooks {
        h.before_write(file_ref(file, path), pos, total)
            .map_err(|e| std_io_err("write", path, e))?;
    }
    // The hooks see the bytes after the write, which takes the buffer: keep a copy (tests only).
    let copy = hooks.as_ref().map(|_| first.clone());
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
    if let (Some(h), Some(copy)) = (&hooks, copy) {
        h.after_write(file_ref(file, path), pos, &copy);
    }
    Ok(())
}

/// Writes all of `data` at `pos` with pwrite(2) on this thread (see `INLINE_WRITE_BYTES_MAX`),
/// between the hooks' `before_write` and `after_write`.
fn pwrite_all(file: &BufferedFile, path: &Path, pos: u64, data: &[u8]) -> Result<(), StorageError> {
    let hooks = hooks();
    if let Some(h) = &hooks {
        h.before_write(file_ref(file, path), pos, data.len())
            .map_err(|e| std_io_err("write", path, e))?;
    }
    pwrite_raw(file, path, pos, data)?;
    if let Some(h) = &hooks {
        h.after_write(file_ref(file, path), pos, data);
    }
    Ok(())
}

fn pwrite_raw(file: &BufferedFile, path: &Path, pos: u64, data: &[u8]) -> Result<(), StorageError> {
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
        .map_err(|e| io_err("truncate", path, e))?;
    if let Some(h) = hooks() {
        h.after_truncate(file_ref(file, path), size);
    }
    Ok(())
}

/// fdatasyncs an open file.
pub(crate) async fn fdatasync(file: &BufferedFile, path: &Path) -> Result<(), StorageError> {
    let hooks = hooks();
    let token = match &hooks {
        Some(h) => match h.before_sync(file_ref(file, path)) {
            Ok(token) => token,
            Err(e) => {
                crate::metrics::record_sync_failure();
                return Err(std_io_err("fdatasync", path, e));
            }
        },
        None => 0,
    };
    let started = std::time::Instant::now();
    let res = file.fdatasync().await;
    crate::metrics::record_fsync(started.elapsed());
    if let Some(h) = &hooks {
        h.after_sync(file_ref(file, path), token, res.is_ok());
    }
    if res.is_err() {
        crate::metrics::record_sync_failure();
    }
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
    let hooks = hooks();
    if let Some(h) = &hooks {
        if let Err(e) = h.before_dir_sync(dir) {
            crate::metrics::record_sync_failure();
            return Err(std_io_err("fsync dir", dir, e));
        }
    }
    let handle = Directory::open(dir)
        .await
        .map_err(|e| io_err("open dir", dir, e))?;
    let started = std::time::Instant::now();
    let synced = handle.sync().await;
    crate::metrics::record_fsync(started.elapsed());
    if synced.is_err() {
        crate::metrics::record_sync_failure();
    }
    synced.map_err(|e| io_err("fsync dir", dir, e))?;
    if let Some(h) = &hooks {
        h.after_dir_sync(dir);
    }
    handle
        .close()
        .await
        .map_err(|e| io_err("close dir", dir, e))
}

/// Removes a file by name.
pub(crate) async fn remove_file(path: &Path) -> Result<(), StorageError> {
    glommio::io::remove(path)
        .await
        .map_err(|e| io_err("remove", path, e))?;
    if let Some(h) = hooks() {
        h.after_remove(path);
    }
    Ok(())
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
        .map_err(|e| io_err("rename", from, e))?;
    if let Some(h) = hooks() {
        h.after_rename(from, to);
    }
    Ok(())
}

/// Creates a directory and its missing parents (no io_uring operation exists for this; it runs
/// when a partition is created or opened, not per request).
pub(crate) fn create_dir_all(dir: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(|e| std_io_err("create dir", dir, e))
}

/// Replaces `dir/name` with `data` atomically: write `name.tmp`, fdatasync it, rename it over
/// `name`, fsync the directory.
pub async fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), StorageError> {
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
    rename(&tmp, &target).await?;
    sync_dir(dir).await
}

/// `write_atomic` for a thread without an executor (a process's startup), with std I/O and the
/// same hooks: write `name.tmp`, fdatasync it, rename it over `name`, fsync the directory.
pub fn write_atomic_blocking(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let hooks = hooks();
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let existed = hooks.is_some() && tmp.exists();
    let mut file = std::fs::File::create(&tmp)?;
    let at = FileRef {
        path: &tmp,
        fd: file.as_raw_fd(),
    };
    if let Some(h) = &hooks {
        h.after_open(at, !existed, true);
        h.before_write(at, 0, data.len())?;
    }
    file.write_all(data)?;
    let token = match &hooks {
        Some(h) => {
            h.after_write(at, 0, data);
            h.before_sync(at)?
        }
        None => 0,
    };
    let synced = file.sync_data();
    if let Some(h) = &hooks {
        h.after_sync(at, token, synced.is_ok());
    }
    synced?;
    drop(file);
    let target = dir.join(name);
    std::fs::rename(&tmp, &target)?;
    if let Some(h) = &hooks {
        h.after_rename(&tmp, &target);
        h.before_dir_sync(dir)?;
    }
    std::fs::File::open(dir)?.sync_all()?;
    if let Some(h) = &hooks {
        h.after_dir_sync(dir);
    }
    Ok(())
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
