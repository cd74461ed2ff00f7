//! `SimDisk`: the test implementation of the disk seam. It keeps what was *written* (the real
//! files, as the page cache holds them) apart from what is *durable* (an image per file, moved
//! forward only by a successful fdatasync, and a namespace moved forward only by a directory
//! fsync), and can then emulate a power loss: every file is rewritten to its durable image plus
//! whatever part of the unsynced operations the chosen [`PowerLoss`] keeps, torn or zero-filled.
//! It can also fail the next fdatasync or write of a file with an errno.
//!
//! In the spirit of redb's crash-consistency test backend, but over the real files: reads and
//! zero-copy sends keep working unchanged. Tests only: it holds every durable image in memory.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::file_io::{install_disk_hooks, DiskHooks, FileRef};

/// What a power loss keeps of the operations that were not yet synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerLoss {
    /// Nothing: every file is its last synced image, every directory its last synced listing.
    DropUnsynced,
    /// A random prefix of each file's unsynced writes and truncations (the last one kept may be
    /// torn) and a random prefix of each directory's unsynced entries.
    KeepPrefix,
    /// Each unsynced operation independently, in order: kept whole, torn (a prefix of its bytes),
    /// zero-filled (allocated, never written), or dropped. Later writes can survive an earlier
    /// one that did not: a hole in the middle of a file, as out-of-order writeback leaves.
    Scramble,
}

/// What a power loss did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PowerLossReport {
    /// Files rewritten to a state other than what was written.
    pub files_changed: usize,
    /// Unsynced operations dropped.
    pub ops_dropped: usize,
    /// Unsynced writes kept only in part (torn) or as zeros.
    pub writes_damaged: usize,
    /// Files that vanished (their creation was not yet durable) or came back (their removal
    /// was not).
    pub entries_reverted: usize,
}

/// SplitMix64: a small seeded generator, so this module needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// Uniform in `0..=n`.
    fn up_to(&mut self, n: usize) -> usize {
        self.below(n + 1)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write { pos: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Clone, Debug)]
enum NsOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
}

#[derive(Debug, Default)]
struct SimFile {
    durable: Vec<u8>,
    /// Unsynced operations with their sequence numbers, oldest first.
    pending: Vec<(u64, Op)>,
    next_seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FaultOp {
    Sync,
    Write,
}

#[derive(Debug)]
struct Fault {
    op: FaultOp,
    path_contains: String,
    errno: i32,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<u64, SimFile>,
    next_id: u64,
    current: BTreeMap<PathBuf, u64>,
    durable_ns: BTreeMap<PathBuf, u64>,
    /// Unsynced namespace operations per directory, oldest first.
    ns_pending: BTreeMap<PathBuf, Vec<NsOp>>,
    faults: Vec<Fault>,
    syncs_ok: u64,
}

/// The simulated disk; see the module comment. Install it on the executor thread with
/// [`SimDisk::install`] before opening logs under `root`.
#[derive(Debug)]
pub struct SimDisk {
    root: PathBuf,
    state: RefCell<State>,
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Writes `data` at `pos` into `buf`, growing it with zeros if needed.
fn write_into(buf: &mut Vec<u8>, pos: u64, data: &[u8]) {
    let (pos, end) = (pos as usize, pos as usize + data.len());
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[pos..end].copy_from_slice(data);
}

fn apply(buf: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write { pos, data } => write_into(buf, *pos, data),
        Op::Truncate(size) => buf.resize(*size as usize, 0),
    }
}

fn apply_ns(ns: &mut BTreeMap<PathBuf, u64>, op: &NsOp) {
    match op {
        NsOp::Link(path, id) => {
            ns.insert(path.clone(), *id);
        }
        NsOp::Unlink(path) => {
            ns.remove(path);
        }
        NsOp::Rename(from, to) => {
            if let Some(id) = ns.remove(from) {
                ns.insert(to.clone(), id);
            }
        }
    }
}

impl SimDisk {
    /// A simulated disk over the files under `root`, which count as durable as they are now,
    /// installed as the disk hooks of the current thread.
    pub fn install(root: &Path) -> Rc<SimDisk> {
        let disk = Rc::new(SimDisk {
            root: root.to_path_buf(),
            state: RefCell::new(State::default()),
        });
        disk.adopt_existing();
        install_disk_hooks(Some(disk.clone() as Rc<dyn DiskHooks>));
        disk
    }

    /// Removes the hooks of the current thread.
    pub fn uninstall() {
        install_disk_hooks(None);
    }

    /// Takes every file under the root as durable with its current content.
    fn adopt_existing(&self) {
        let mut state = self.state.borrow_mut();
        *state = State {
            faults: std::mem::take(&mut state.faults),
            syncs_ok: state.syncs_ok,
            ..State::default()
        };
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    dirs.push(path);
                } else if kind.is_file() {
                    let durable = std::fs::read(&path).unwrap_or_default();
                    let id = state.next_id;
                    state.next_id += 1;
                    state.files.insert(
                        id,
                        SimFile {
                            durable,
                            ..SimFile::default()
                        },
                    );
                    state.current.insert(path.clone(), id);
                    state.durable_ns.insert(path, id);
                }
            }
        }
    }

    /// Fails the next fdatasync of a file whose path contains `path_contains` with `errno`; the
    /// writes that sync would have covered are lost for a later power loss, as Linux marks
    /// their pages clean after a failed writeback.
    pub fn fail_next_sync(&self, path_contains: &str, errno: i32) {
        self.add_fault(FaultOp::Sync, path_contains, errno);
    }

    /// Fails the next write to a file whose path contains `path_contains` with `errno`; nothing
    /// is written.
    pub fn fail_next_write(&self, path_contains: &str, errno: i32) {
        self.add_fault(FaultOp::Write, path_contains, errno);
    }

    fn add_fault(&self, op: FaultOp, path_contains: &str, errno: i32) {
        self.state.borrow_mut().faults.push(Fault {
            op,
            path_contains: path_contains.to_string(),
            errno,
        });
    }

    fn take_fault(&self, op: FaultOp, path: &Path) -> Option<std::io::Error> {
        let mut state = self.state.borrow_mut();
        let text = path.to_string_lossy();
        let i = state
            .faults
            .iter()
            .position(|f| f.op == op && text.contains(&f.path_contains))?;
        let fault = state.faults.remove(i);
        Some(std::io::Error::from_raw_os_error(fault.errno))
    }

    /// Successful fdatasyncs seen so far.
    pub fn syncs(&self) -> u64 {
        self.state.borrow().syncs_ok
    }

    /// The durable image of the file now at `path` (what a power loss that keeps nothing
    /// unsynced would leave there), if the file is known.
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.state.borrow();
        let id = state.current.get(path)?;
        state.files.get(id).map(|f| f.durable.clone())
    }

    /// Unsynced writes and truncations of the file now at `path`.
    pub fn unsynced_ops(&self, path: &Path) -> usize {
        let state = self.state.borrow();
        state
            .current
            .get(path)
            .and_then(|id| state.files.get(id))
            .map_or(0, |f| f.pending.len())
    }

    fn id_of(&self, path: &Path) -> Option<u64> {
        self.state.borrow().current.get(path).copied()
    }

    fn push_op(&self, path: &Path, op: Op) {
        let Some(id) = self.id_of(path) else { return };
        let mut state = self.state.borrow_mut();
        if let Some(file) = state.files.get_mut(&id) {
            let seq = file.next_seq;
            file.next_seq += 1;
            file.pending.push((seq, op));
        }
    }

    fn push_ns(&self, dir: PathBuf, op: NsOp) {
        self.state
            .borrow_mut()
            .ns_pending
            .entry(dir)
            .or_default()
            .push(op);
    }

    /// Emulates a power loss: rewrites every file under the root to what `mode` keeps (see
    /// [`PowerLoss`]), chosen by `seed`. Call it with every log of the root dropped (as after a
    /// crash), then reopen. Afterwards everything on disk counts as durable.
    pub fn power_loss(&self, mode: PowerLoss, seed: u64) -> PowerLossReport {
        let mut rng = Rng(seed);
        let mut report = PowerLossReport::default();
        let (current, mut ns) = {
            let state = self.state.borrow();
            (state.current.clone(), state.durable_ns.clone())
        };
        // The namespace: a prefix of each directory's unsynced operations.
        let ns_pending = std::mem::take(&mut self.state.borrow_mut().ns_pending);
        for ops in ns_pending.values() {
            let keep = match mode {
                PowerLoss::DropUnsynced => 0,
                PowerLoss::KeepPrefix | PowerLoss::Scramble => rng.up_to(ops.len()),
            };
            for op in &ops[..keep] {
                apply_ns(&mut ns, op);
            }
        }
        // The content of every file the namespace ends up naming.
        let mut contents: HashMap<u64, Vec<u8>> = HashMap::new();
        {
            let state = self.state.borrow();
            for id in ns.values() {
                if contents.contains_key(id) {
                    continue;
                }
                let Some(file) = state.files.get(id) else {
                    continue;
                };
                let mut buf = file.durable.clone();
                let keep = match mode {
                    PowerLoss::DropUnsynced => 0,
                    PowerLoss::KeepPrefix => rng.up_to(file.pending.len()),
                    PowerLoss::Scramble => file.pending.len(),
                };
                for (i, (_, op)) in file.pending.iter().enumerate() {
                    if i >= keep {
                        report.ops_dropped += 1;
                        // With a kept prefix, the first dropped write may have partly landed.
                        if mode == PowerLoss::KeepPrefix && i == keep && rng.below(2) == 0 {
                            if let Op::Write { pos, data } = op {
                                write_into(&mut buf, *pos, &data[..rng.below(data.len())]);
                                report.writes_damaged += 1;
                            }
                        }
                        continue;
                    }
                    if mode != PowerLoss::Scramble {
                        apply(&mut buf, op);
                        continue;
                    }
                    match (op, rng.below(8)) {
                        (_, 0..=2) => report.ops_dropped += 1,
                        (Op::Write { pos, data }, 3) => {
                            write_into(&mut buf, *pos, &data[..rng.below(data.len())]);
                            report.writes_damaged += 1;
                        }
                        (Op::Write { pos, data }, 4) => {
                            write_into(&mut buf, *pos, &vec![0u8; data.len()]);
                            report.writes_damaged += 1;
                        }
                        _ => apply(&mut buf, op),
                    }
                }
                contents.insert(*id, buf);
            }
        }
        // Rewrite the real files.
        for path in current.keys() {
            if !ns.contains_key(path) {
                report.entries_reverted += 1;
                let _ = std::fs::remove_file(path);
            }
        }
        for (path, id) in &ns {
            let Some(content) = contents.get(id) else {
                continue;
            };
            let same = current.get(path) == Some(id)
                && std::fs::read(path).is_ok_and(|now| &now == content);
            if same {
                continue;
            }
            if current.get(path) != Some(id) {
                report.entries_reverted += 1;
            }
            report.files_changed += 1;
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(path, content).expect("rewrite a file after the power loss");
        }
        self.adopt_existing();
        report
    }
}

impl DiskHooks for SimDisk {
    fn before_write(&self, file: FileRef<'_>, _pos: u64, _len: usize) -> std::io::Result<()> {
        match self.take_fault(FaultOp::Write, file.path) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn after_write(&self, file: FileRef<'_>, pos: u64, data: &[u8]) {
        self.push_op(
            file.path,
            Op::Write {
                pos,
                data: data.to_vec(),
            },
        );
    }

    fn before_sync(&self, file: FileRef<'_>) -> std::io::Result<u64> {
        let Some(id) = self.id_of(file.path) else {
            return Ok(u64::MAX);
        };
        if let Some(e) = self.take_fault(FaultOp::Sync, file.path) {
            // The writeback failed: those pages are clean now and never reach the disk.
            if let Some(f) = self.state.borrow_mut().files.get_mut(&id) {
                f.pending.clear();
            }
            return Err(e);
        }
        let state = self.state.borrow();
        Ok(state.files.get(&id).map_or(0, |f| f.next_seq))
    }

    fn after_sync(&self, file: FileRef<'_>, token: u64, ok: bool) {
        if !ok || token == u64::MAX {
            return;
        }
        let Some(id) = self.id_of(file.path) else {
            return;
        };
        let mut state = self.state.borrow_mut();
        state.syncs_ok += 1;
        if let Some(f) = state.files.get_mut(&id) {
            let covered = f.pending.iter().take_while(|(seq, _)| *seq < token).count();
            let ops: Vec<(u64, Op)> = f.pending.drain(..covered).collect();
            for (_, op) in &ops {
                apply(&mut f.durable, op);
            }
        }
    }

    fn after_truncate(&self, file: FileRef<'_>, size: u64) {
        self.push_op(file.path, Op::Truncate(size));
    }

    fn after_open(&self, file: FileRef<'_>, created: bool, truncated: bool) {
        if !file.path.starts_with(&self.root) {
            return;
        }
        let known = self.id_of(file.path).is_some();
        if known && !created {
            if truncated {
                self.push_op(file.path, Op::Truncate(0));
            }
            return;
        }
        let id = {
            let mut state = self.state.borrow_mut();
            let id = state.next_id;
            state.next_id += 1;
            state.files.insert(id, SimFile::default());
            state.current.insert(file.path.to_path_buf(), id);
            id
        };
        self.push_ns(parent(file.path), NsOp::Link(file.path.to_path_buf(), id));
    }

    fn after_rename(&self, from: &Path, to: &Path) {
        let moved = {
            let mut state = self.state.borrow_mut();
            match state.current.remove(from) {
                Some(id) => {
                    state.current.insert(to.to_path_buf(), id);
                    true
                }
                None => false,
            }
        };
        if moved {
            self.push_ns(
                parent(to),
                NsOp::Rename(from.to_path_buf(), to.to_path_buf()),
            );
        }
    }

    fn after_remove(&self, path: &Path) {
        let removed = self.state.borrow_mut().current.remove(path).is_some();
        if removed {
            self.push_ns(parent(path), NsOp::Unlink(path.to_path_buf()));
        }
    }

    fn after_dir_sync(&self, dir: &Path) {
        let mut state = self.state.borrow_mut();
        if let Some(ops) = state.ns_pending.remove(dir) {
            for op in &ops {
                apply_ns(&mut state.durable_ns, op);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file_io::{create_rw, fdatasync, remove_file, rename, sync_dir, write_small_at};

    #[test]
    fn a_power_loss_keeps_synced_bytes_and_synced_names_only() {
        crate::testing::run_local(|| async {
            let tmp = tempfile::tempdir().expect("tempdir");
            let root = tmp.path().to_path_buf();
            let (a, b, c, old) = (
                root.join("a"),
                root.join("b"),
                root.join("c"),
                root.join("old"),
            );
            std::fs::write(&old, b"before").expect("write");
            let sim = SimDisk::install(&root);

            // a: name and first bytes synced, later bytes not.
            let fa = create_rw(&a).await.expect("create");
            sync_dir(&root).await.expect("sync dir");
            write_small_at(&fa, &a, 0, b"hello").await.expect("write");
            fdatasync(&fa, &a).await.expect("sync");
            write_small_at(&fa, &a, 5, b" world").await.expect("write");
            assert_eq!(sim.durable_bytes(&a).as_deref(), Some(&b"hello"[..]));
            // b: bytes synced, but its name never was; then renamed to c (not synced either).
            let fb = create_rw(&b).await.expect("create");
            write_small_at(&fb, &b, 0, b"x").await.expect("write");
            fdatasync(&fb, &b).await.expect("sync");
            rename(&b, &c).await.expect("rename");
            // old: removed, the removal never synced.
            remove_file(&old).await.expect("remove");
            let _ = fa.close().await;
            let _ = fb.close().await;

            let report = sim.power_loss(PowerLoss::DropUnsynced, 1);
            assert_eq!(std::fs::read(&a).expect("a"), b"hello");
            assert!(!b.exists() && !c.exists(), "an unsynced name survived");
            assert_eq!(std::fs::read(&old).expect("old"), b"before");
            assert!(
                report.ops_dropped >= 1 && report.entries_reverted >= 2,
                "{report:?}"
            );
            SimDisk::uninstall();
        });
    }

    #[test]
    fn a_failed_sync_loses_the_writes_it_covered() {
        crate::testing::run_local(|| async {
            let tmp = tempfile::tempdir().expect("tempdir");
            let root = tmp.path().to_path_buf();
            let a = root.join("a");
            let sim = SimDisk::install(&root);
            let fa = create_rw(&a).await.expect("create");
            sync_dir(&root).await.expect("sync dir");
            write_small_at(&fa, &a, 0, b"lost").await.expect("write");
            sim.fail_next_sync("a", libc::EIO);
            let failed = fdatasync(&fa, &a).await;
            assert!(failed.is_err());
            // Linux marked the pages clean: a later sync succeeds without them.
            fdatasync(&fa, &a).await.expect("sync");
            let _ = fa.close().await;
            sim.power_loss(PowerLoss::KeepPrefix, 7);
            assert_eq!(std::fs::read(&a).expect("a"), b"");
            SimDisk::uninstall();
        });
    }
}
