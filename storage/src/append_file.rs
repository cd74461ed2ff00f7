//! A small append-only file with explicit durability: the controller's Raft log.
//!
//! `open` reads the whole file (it is kept small: its owner rewrites it after compaction),
//! `append` writes at the end, `sync` fdatasyncs, `truncate` cuts a torn tail found on replay,
//! and `rewrite` replaces the contents atomically (temporary file, fdatasync, rename, directory
//! fsync). Every operation goes through the same disk hooks as the partition logs, so
//! power-loss emulation covers it.

use std::path::{Path, PathBuf};

use glommio::io::BufferedFile;

use crate::error::StorageError;
use crate::file_io;

/// An append-only file.
pub struct AppendFile {
    dir: PathBuf,
    name: String,
    path: PathBuf,
    file: BufferedFile,
    len: u64,
}

impl AppendFile {
    /// Opens (creating if missing, with its directory) `dir/name`; returns the file and its
    /// contents.
    pub async fn open(dir: &Path, name: &str) -> Result<(AppendFile, Vec<u8>), StorageError> {
        file_io::create_dir_all(dir)?;
        let path = dir.join(name);
        let file = file_io::open_rw(&path).await?;
        let len = file_io::file_size(&file, &path).await?;
        let mut contents = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        while (contents.len() as u64) < len {
            let want = usize::try_from(len - contents.len() as u64)
                .unwrap_or(usize::MAX)
                .min(1 << 20);
            let chunk = file_io::read_at(&file, &path, contents.len() as u64, want).await?;
            if chunk.is_empty() {
                break;
            }
            contents.extend_from_slice(&chunk);
        }
        file_io::sync_dir(dir).await?;
        Ok((
            AppendFile {
                dir: dir.to_path_buf(),
                name: name.to_string(),
                path,
                file,
                len,
            },
            contents,
        ))
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data` (not durable until [`AppendFile::sync`]).
    pub async fn append(&mut self, data: &[u8]) -> Result<(), StorageError> {
        file_io::write_small_at(&self.file, &self.path, self.len, data).await?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub async fn sync(&self) -> Result<(), StorageError> {
        file_io::fdatasync(&self.file, &self.path).await
    }

    /// Cuts the file to `len` bytes and makes that durable.
    pub async fn truncate(&mut self, len: u64) -> Result<(), StorageError> {
        file_io::truncate(&self.file, &self.path, len).await?;
        self.len = len;
        self.sync().await
    }

    /// Replaces the whole contents with `data`, atomically and durably.
    pub async fn rewrite(&mut self, data: &[u8]) -> Result<(), StorageError> {
        file_io::write_atomic(&self.dir, &self.name, data).await?;
        let old = std::mem::replace(&mut self.file, file_io::open_rw(&self.path).await?);
        // The old handle points at the replaced inode; closing it loses nothing.
        let _ = old.close().await;
        self.len = data.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_survive_reopen_and_truncate_and_rewrite_replace_them() {
        crate::test_support::run(|dir| async move {
            let (mut f, contents) = AppendFile::open(&dir, "raft.log").await.unwrap();
            assert!(contents.is_empty() && f.is_empty());
            f.append(b"one").await.unwrap();
            f.append(&vec![b'x'; 100_000]).await.unwrap();
            f.sync().await.unwrap();
            drop(f);
            let (mut f, contents) = AppendFile::open(&dir, "raft.log").await.unwrap();
            assert_eq!(contents.len(), 100_003);
            assert_eq!(&contents[..3], b"one");
            f.truncate(3).await.unwrap();
            f.append(b"two").await.unwrap();
            f.sync().await.unwrap();
            drop(f);
            let (mut f, contents) = AppendFile::open(&dir, "raft.log").await.unwrap();
            assert_eq!(contents, b"onetwo");
            f.rewrite(b"fresh").await.unwrap();
            f.append(b"+tail").await.unwrap();
            f.sync().await.unwrap();
            drop(f);
            let (_, contents) = AppendFile::open(&dir, "raft.log").await.unwrap();
            assert_eq!(contents, b"fresh+tail");
        });
    }
}
