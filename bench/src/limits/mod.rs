//! `strom-bench limits`: this machine's physical ceilings, so a benchmark report can state its
//! figures as a fraction of what the hardware can do at most.
//!
//! Measured, in this order (MB = 10^6 bytes):
//! 1. O_DIRECT sequential write, 1 MiB writes at queue depth 1, appending to a new file (like
//!    `dd oflag=direct`), then one fdatasync (like `dd oflag=direct conv=fdatasync`).
//! 2. O_DIRECT overwrite of that file by `--writers` threads on disjoint ranges, one 1 MiB
//!    `pwrite` in flight per thread (the device's bandwidth with several writes in flight).
//! 3. O_DIRECT append with an fdatasync after every 1 MiB write (what a broker that fsyncs once
//!    per group commit of about 1 MiB can do at most).
//! 4. Latency of a 4 KiB O_DIRECT append + fdatasync, `--syncs` times.
//! 5. Loopback TCP: one connection, the server `sendfile`s a page-cached file, the client reads
//!    into a 1 MiB buffer and discards it; thread CPU time of both sides.
//!
//! Each measurement stops at `--max-seconds` and reports on what it did until then. Temporary
//! files are created in the measured directory and removed afterwards, also on errors.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

const MIB: usize = 1 << 20;
/// Alignment of O_DIRECT buffers, offsets and lengths (covers 512 and 4096 byte sectors).
const ALIGN: usize = 4096;
const SYNC_WRITE_BYTES: usize = 4096;
/// Bytes handed to one `sendfile` call (the loop checks the deadline between calls).
const SENDFILE_CHUNK: usize = 16 * MIB;
/// Directory measured when `--dir` is not given (or its parent while it does not exist).
const DEFAULT_DIR: &str = "./strom-data";

/// Flags of the `limits` subcommand; also usable programmatically (see `Default`).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct LimitsArgs {
    /// Directory on the disk to measure; if it does not exist, its nearest existing ancestor
    /// [default: ./strom-data, or . while that does not exist].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// MiB written by each sequential write measurement.
    #[arg(long, default_value_t = 1024)]
    pub write_mib: u64,
    /// Threads (each with one 1 MiB write in flight) of the parallel O_DIRECT measurement.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Iterations of the 4 KiB O_DIRECT write + fdatasync latency measurement.
    #[arg(long, default_value_t = 200)]
    pub syncs: u64,
    /// MiB sent over loopback TCP with sendfile.
    #[arg(long, default_value_t = 1024)]
    pub sendfile_mib: u64,
    /// Time limit of each measurement; one that hits it reports on what it did until then.
    #[arg(long, default_value_t = 30.0)]
    pub max_seconds: f64,
    /// Also write the results as one JSON object to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

impl Default for LimitsArgs {
    fn default() -> Self {
        LimitsArgs {
            dir: None,
            write_mib: 1024,
            writers: 4,
            syncs: 200,
            sendfile_mib: 1024,
            max_seconds: 30.0,
            json_out: None,
        }
    }
}

/// Bytes moved in some time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub bytes: u64,
    pub seconds: f64,
    /// The measurement hit `--max-seconds` before moving everything it was asked to.
    pub stopped_early: bool,
}

impl Throughput {
    /// 10^6 bytes per second (0 when nothing was timed).
    pub fn mb_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds / 1e6
        } else {
            0.0
        }
    }

    pub fn mib(&self) -> f64 {
        self.bytes as f64 / MIB as f64
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: u64,
    pub stopped_early: bool,
}

impl Percentiles {
    fn from_histogram(h: &Histogram<u64>, stopped_early: bool) -> Self {
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
            stopped_early,
        }
    }
}

/// Results of `measure`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Directory the temporary files were created in.
    pub dir: PathBuf,
    /// Block device holding `dir` (from /sys/dev/block), when known.
    pub device: Option<String>,
    pub write_mib: u64,
    pub writers: usize,
    pub syncs: u64,
    pub sendfile_mib: u64,
    pub max_seconds: f64,
    /// `writers` threads overwriting disjoint ranges, `writers` 1 MiB writes in flight.
    pub direct_write: Throughput,
    /// One thread appending to a new file, one 1 MiB write in flight.
    pub direct_write_qd1: Throughput,
    /// `direct_write_qd1` plus one fdatasync at the end (the time includes it).
    pub direct_write_then_fdatasync: Throughput,
    /// Duration of that final fdatasync.
    pub final_fdatasync_ms: f64,
    /// Appending 1 MiB O_DIRECT writes, each followed by fdatasync.
    pub direct_write_fdatasync_each_mib: Throughput,
    /// 4 KiB O_DIRECT append + fdatasync, microseconds per pair.
    pub fdatasync_4k_us: Percentiles,
    /// Buffered (page cache) writes of 1 MiB appending to a new file, then one fdatasync (the
    /// time includes it): the ceiling of a broker that writes through the page cache, as Strom
    /// and Kafka do. On virtual machines whose free memory is handed back to the host, fresh
    /// page-cache pages cost a host fault each and this is far below the O_DIRECT figure.
    pub buffered_write_then_fdatasync: Throughput,
    /// Client-side view: from connect to end of stream.
    pub loopback_sendfile: Throughput,
    /// CPU (user + system) of the sending thread.
    pub loopback_sendfile_server_cpu_s: Option<f64>,
    /// CPU (user + system) of the receiving thread.
    pub loopback_sendfile_client_cpu_s: Option<f64>,
}

impl Limits {
    /// Description of the parallel write measurement, for humans reading the JSON.
    fn direct_write_mode(&self) -> String {
        format!(
            "O_DIRECT overwrite of a freshly written file by {} threads on disjoint ranges, \
             one 1 MiB pwrite in flight per thread ({} in flight)",
            self.writers, self.writers
        )
    }

    /// Names of the measurements that hit `max_seconds`.
    fn stopped_early(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        for (name, stopped) in [
            ("direct_write_qd1", self.direct_write_qd1.stopped_early),
            ("direct_write", self.direct_write.stopped_early),
            (
                "direct_write_fdatasync_each_mib",
                self.direct_write_fdatasync_each_mib.stopped_early,
            ),
            ("fdatasync_4k", self.fdatasync_4k_us.stopped_early),
            (
                "buffered_write_then_fdatasync",
                self.buffered_write_then_fdatasync.stopped_early,
            ),
            ("loopback_sendfile", self.loopback_sendfile.stopped_early),
        ] {
            if stopped {
                names.push(name);
            }
        }
        names
    }

    /// One flat JSON object with unit-suffixed keys (MB = 10^6 bytes, MiB = 2^20 bytes);
    /// `fdatasync_4k_us` is the only nested object.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("dir".into(), json!(self.dir.display().to_string()));
        m.insert("device".into(), json!(self.device));
        m.insert("write_mib".into(), json!(self.write_mib));
        m.insert("writers".into(), json!(self.writers));
        m.insert("syncs".into(), json!(self.syncs));
        m.insert("sendfile_mib".into(), json!(self.sendfile_mib));
        m.insert("max_seconds".into(), json!(self.max_seconds));
        m.insert("write_block_bytes".into(), json!(MIB));
        let mut put = |name: &str, t: &Throughput| {
            m.insert(format!("{name}_mb_s"), json!(round2(t.mb_s())));
            m.insert(format!("{name}_mib"), json!(round2(t.mib())));
            m.insert(format!("{name}_s"), json!(round4(t.seconds)));
        };
        put("direct_write", &self.direct_write);
        put("direct_write_qd1", &self.direct_write_qd1);
        put(
            "direct_write_then_fdatasync",
            &self.direct_write_then_fdatasync,
        );
        put(
            "direct_write_fdatasync_each_mib",
            &self.direct_write_fdatasync_each_mib,
        );
        put(
            "buffered_write_then_fdatasync",
            &self.buffered_write_then_fdatasync,
        );
        put("loopback_sendfile", &self.loopback_sendfile);
        m.insert("direct_write_in_flight".into(), json!(self.writers));
        m.insert("direct_write_mode".into(), json!(self.direct_write_mode()));
        m.insert(
            "final_fdatasync_ms".into(),
            json!(round4(self.final_fdatasync_ms)),
        );
        let p = &self.fdatasync_4k_us;
        m.insert(
            "fdatasync_4k_us".into(),
            json!({"p50": p.p50, "p90": p.p90, "p99": p.p99, "p999": p.p999, "max": p.max}),
        );
        m.insert("fdatasync_4k_count".into(), json!(p.count));
        m.insert(
            "loopback_sendfile_server_cpu_s".into(),
            json!(self.loopback_sendfile_server_cpu_s.map(round4)),
        );
        m.insert(
            "loopback_sendfile_client_cpu_s".into(),
            json!(self.loopback_sendfile_client_cpu_s.map(round4)),
        );
        m.insert("stopped_early".into(), json!(self.stopped_early()));
        Value::Object(m)
    }

    /// Human-readable table on stdout.
    pub fn print_table(&self) {
        let device = self
            .device
            .as_deref()
            .map(|d| format!(" (device {d})"))
            .unwrap_or_default();
        let row = |label: &str, t: &Throughput, extra: &str| {
            println!(
                "  {label:<48} {:>9.1} MB/s  ({:.0} MiB in {:.2} s{extra})",
                t.mb_s(),
                t.mib(),
                t.seconds
            );
        };
        println!("Physical limits (MB = 10^6 bytes, writes of 1 MiB from 4096-aligned buffers)");
        println!("  dir: {}{device}", self.dir.display());
        println!("Sequential O_DIRECT write:");
        row("qd1, appending to a new file", &self.direct_write_qd1, "");
        row(
            "qd1, appending, then one fdatasync",
            &self.direct_write_then_fdatasync,
            &format!("; fdatasync {:.1} ms", self.final_fdatasync_ms),
        );
        row(
            &format!(
                "{} threads x qd1 ({} in flight), overwrite",
                self.writers, self.writers
            ),
            &self.direct_write,
            "",
        );
        row(
            "qd1, appending, fdatasync after every 1 MiB",
            &self.direct_write_fdatasync_each_mib,
            "",
        );
        let p = &self.fdatasync_4k_us;
        println!(
            "4 KiB O_DIRECT append + fdatasync, us: p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
            p.p50, p.p90, p.p99, p.p999, p.max, p.count
        );
        row(
            "buffered (page cache), appending, then one fdatasync",
            &self.buffered_write_then_fdatasync,
            "",
        );
        println!("Loopback TCP, one connection:");
        let cpu = |c: Option<f64>| {
            c.map(|s| format!("{s:.2} s"))
                .unwrap_or_else(|| "n/a".into())
        };
        row(
            "sendfile from page cache -> read into 1 MiB",
            &self.loopback_sendfile,
            &format!(
                "; CPU server {} client {}",
                cpu(self.loopback_sendfile_server_cpu_s),
                cpu(self.loopback_sendfile_client_cpu_s)
            ),
        );
        let stopped = self.stopped_early();
        if !stopped.is_empty() {
            println!(
                "Stopped at --max-seconds {}: {}",
                self.max_seconds,
                stopped.join(", ")
            );
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// `strom-bench limits`: measures, prints the table and writes the JSON if asked.
pub fn run(args: &LimitsArgs) -> Result<(), String> {
    let limits = measure(args)?;
    limits.print_table();
    if let Some(path) = &args.json_out {
        let text = serde_json::to_string_pretty(&limits.to_json()).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The directory whose disk is measured: `dir` (default ./strom-data) if it exists, else its
/// nearest existing ancestor, which is where it would be created.
pub fn resolve_dir(dir: Option<&Path>) -> Result<PathBuf, String> {
    let wanted = dir.unwrap_or(Path::new(DEFAULT_DIR));
    let mut candidate = if wanted.as_os_str().is_empty() {
        Path::new(".")
    } else {
        wanted
    };
    loop {
        if candidate.is_dir() {
            return Ok(candidate.to_path_buf());
        }
        match candidate.parent() {
            Some(p) if !p.as_os_str().is_empty() => candidate = p,
            _ => break,
        }
    }
    if wanted.is_relative() {
        return Ok(PathBuf::from("."));
    }
    Err(format!(
        "no existing directory at or above {}",
        wanted.display()
    ))
}

fn validate(args: &LimitsArgs) -> Result<Duration, String> {
    if args.write_mib == 0 || args.sendfile_mib == 0 || args.syncs == 0 {
        return Err("--write-mib, --sendfile-mib and --syncs must be at least 1".into());
    }
    if args.writers == 0 || args.writers > 256 {
        return Err("--writers must be between 1 and 256".into());
    }
    if !args.max_seconds.is_finite() || args.max_seconds <= 0.0 || args.max_seconds > 86_400.0 {
        return Err("--max-seconds must be a positive number of seconds (at most 86400)".into());
    }
    Ok(Duration::from_secs_f64(args.max_seconds))
}

/// Runs every measurement (see the module documentation).
pub fn measure(args: &LimitsArgs) -> Result<Limits, String> {
    let max = validate(args)?;
    let dir = resolve_dir(args.dir.as_deref())?;
    let device = block_device(&dir);
    let write_bytes = args.write_mib.saturating_mul(MIB as u64);

    let seq = TempFile::create(&dir, "seq", true)?;
    let (direct_write_qd1, direct_write_then_fdatasync, final_fdatasync_ms) =
        sequential_then_sync(&seq, write_bytes, max)?;
    // Overwrite exactly what the qd1 pass wrote: allocated, written blocks, so the filesystem
    // lets the writers proceed in parallel instead of serialising block allocation.
    let direct_write = parallel_overwrite(&seq, direct_write_qd1.bytes, args.writers, max)?;
    drop(seq);

    let each = TempFile::create(&dir, "sync-each", true)?;
    let direct_write_fdatasync_each_mib = fdatasync_each(&each, write_bytes, max)?;
    drop(each);

    let small = TempFile::create(&dir, "sync-4k", true)?;
    let fdatasync_4k_us = fdatasync_latency(&small, args.syncs, max)?;
    drop(small);

    let sendfile = loopback_sendfile(&dir, args.sendfile_mib.saturating_mul(MIB as u64), max)?;

    Ok(Limits {
        dir: std::fs::canonicalize(&dir).unwrap_or(dir),
        device,
        write_mib: args.write_mib,
        writers: args.writers,
        syncs: args.syncs,
        sendfile_mib: args.sendfile_mib,
        max_seconds: args.max_seconds,
        direct_write,
        direct_write_qd1,
        direct_write_then_fdatasync,
        final_fdatasync_ms,
        direct_write_fdatasync_each_mib,
        fdatasync_4k_us,
        buffered_write_then_fdatasync: sendfile.buffered_write,
        loopback_sendfile: sendfile.throughput,
        loopback_sendfile_server_cpu_s: sendfile.server_cpu_s,
        loopback_sendfile_client_cpu_s: sendfile.client_cpu_s,
    })
}

/// A heap buffer aligned for O_DIRECT, filled with non-repeating bytes (so that no layer can
/// shortcut zeroes or compress it).
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer exclusively owns its allocation; `&AlignedBuf` only gives shared reads.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn new(len: usize, seed: u64) -> Result<Self, String> {
        let layout = Layout::from_size_align(len.max(ALIGN), ALIGN).map_err(|e| e.to_string())?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| format!("cannot allocate {len} bytes"))?;
        let mut buf = AlignedBuf { ptr, layout };
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for chunk in buf.as_mut_slice().chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        Ok(buf)
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A file in the measured directory, removed when dropped.
struct TempFile {
    path: PathBuf,
    file: File,
}

impl TempFile {
    fn create(dir: &Path, tag: &str, direct: bool) -> Result<TempFile, String> {
        let path = dir.join(format!(".strom-limits-{}-{tag}.tmp", std::process::id()));
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        let file = options.open(&path).map_err(|e| {
            let hint = if direct && e.raw_os_error() == Some(libc::EINVAL) {
                " (the filesystem does not support O_DIRECT, e.g. tmpfs?)"
            } else {
                ""
            };
            format!("creating {}: {e}{hint}", path.display())
        })?;
        Ok(TempFile { path, file })
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn pwrite_all(file: &File, buf: &[u8], offset: u64) -> Result<(), String> {
    loop {
        match file.write_at(buf, offset) {
            Ok(n) if n == buf.len() => return Ok(()),
            // A partial O_DIRECT write would leave the next one unaligned; it does not happen
            // on local filesystems short of a full disk.
            Ok(n) => {
                return Err(format!(
                    "short write at offset {offset}: {n} of {} bytes",
                    buf.len()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("O_DIRECT write at offset {offset}: {e}")),
        }
    }
}

fn fdatasync(file: &File) -> Result<(), String> {
    file.sync_data().map_err(|e| format!("fdatasync: {e}"))
}

/// qd1 append of `bytes` in 1 MiB writes, then one fdatasync. Returns the write throughput, the
/// throughput including the fdatasync, and the fdatasync's duration in ms.
fn sequential_then_sync(
    f: &TempFile,
    bytes: u64,
    max: Duration,
) -> Result<(Throughput, Throughput, f64), String> {
    let start = Instant::now();
    let Throughput {
        bytes: offset,
        stopped_early,
        ..
    } = append_mib(f, bytes, max, 1, false)?;
    let written = start.elapsed();
    let sync_start = Instant::now();
    fdatasync(&f.file)?;
    let sync = sync_start.elapsed();
    let total = start.elapsed();
    Ok((
        Throughput {
            bytes: offset,
            seconds: written.as_secs_f64(),
            stopped_early,
        },
        Throughput {
            bytes: offset,
            seconds: total.as_secs_f64(),
            stopped_early,
        },
        sync.as_secs_f64() * 1e3,
    ))
}

/// `writers` threads overwrite disjoint ranges of the first `bytes` of `f` in 1 MiB writes.
fn parallel_overwrite(
    f: &TempFile,
    bytes: u64,
    writers: usize,
    max: Duration,
) -> Result<Throughput, String> {
    let chunks = bytes / MIB as u64;
    let writers = (writers as u64).min(chunks.max(1));
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let start = Instant::now();
    let deadline = start + max;
    let results: Vec<(u64, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (stop, first_error) = (&stop, &first_error);
                let (from, to) = (chunks * w / writers, chunks * (w + 1) / writers);
                s.spawn(move || {
                    let fail = |e: String| {
                        stop.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                    };
                    let buf = match AlignedBuf::new(MIB, 2 + w) {
                        Ok(b) => b,
                        Err(e) => {
                            fail(e);
                            return (0, false);
                        }
                    };
                    let mut done = 0u64;
                    for chunk in from..to {
                        if stop.load(Ordering::Relaxed) {
                            return (done, false);
                        }
                        if Instant::now() >= deadline {
                            return (done, true);
                        }
                        if let Err(e) = pwrite_all(&f.file, buf.as_slice(), chunk * MIB as u64) {
                            fail(e);
                            return (done, false);
                        }
                        done += MIB as u64;
                    }
                    (done, false)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, false)))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(Throughput {
        bytes: results.iter().map(|r| r.0).sum(),
        seconds,
        stopped_early: results.iter().any(|r| r.1),
    })
}

/// qd1 append of `bytes` in 1 MiB writes, each followed by fdatasync.
fn fdatasync_each(f: &TempFile, bytes: u64, max: Duration) -> Result<Throughput, String> {
    append_mib(f, bytes, max, 100, true)
}

/// Appends `bytes` to `f` in 1 MiB writes of a buffer seeded with `seed`, fdatasyncing after
/// each write if `sync_each`; stops early at `max`.
fn append_mib(
    f: &TempFile,
    bytes: u64,
    max: Duration,
    seed: u64,
    sync_each: bool,
) -> Result<Throughput, String> {
    let buf = AlignedBuf::new(MIB, seed)?;
    let start = Instant::now();
    let deadline = start + max;
    let mut offset = 0u64;
    let mut stopped_early = false;
    while offset < bytes {
        if Instant::now() >= deadline {
            stopped_early = true;
            break;
        }
        pwrite_all(&f.file, buf.as_slice(), offset)?;
        if sync_each {
            fdatasync(&f.file)?;
        }
        offset += MIB as u64;
    }
    Ok(Throughput {
        bytes: offset,
        seconds: start.elapsed().as_secs_f64(),
        stopped_early,
    })
}

/// `syncs` times: a 4 KiB O_DIRECT append then fdatasync, timed together.
fn fdatasync_latency(f: &TempFile, syncs: u64, max: Duration) -> Result<Percentiles, String> {
    let buf = AlignedBuf::new(SYNC_WRITE_BYTES, 200)?;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + max;
    let mut stopped_early = false;
    for i in 0..syncs {
        if Instant::now() >= deadline {
            stopped_early = true;
            break;
        }
        let t = Instant::now();
        pwrite_all(&f.file, buf.as_slice(), i * SYNC_WRITE_BYTES as u64)?;
        fdatasync(&f.file)?;
        hist.saturating_record((t.elapsed().as_micros() as u64).max(1));
    }
    Ok(Percentiles::from_histogram(&hist, stopped_early))
}

struct SendfileResult {
    /// Writing the file that is then sent (buffered, then fdatasync).
    buffered_write: Throughput,
    throughput: Throughput,
    server_cpu_s: Option<f64>,
    client_cpu_s: Option<f64>,
}

/// User + system CPU seconds of the calling thread.
fn thread_cpu_seconds() -> Option<f64> {
    // SAFETY: rusage is plain data; getrusage fills it or fails.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(tv(ru.ru_utime) + tv(ru.ru_stime))
}

fn cpu_delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some((after? - before?).max(0.0))
}

/// Writes a `bytes` file (buffered, then fdatasync so writeback does not overlap the
/// measurement) and reads it back once so it is in the page cache. Bounded by `max`.
/// Also returns how fast it was written (including the fdatasync).
fn page_cached_file(
    dir: &Path,
    bytes: u64,
    max: Duration,
) -> Result<(TempFile, Throughput), String> {
    let f = TempFile::create(dir, "sendfile", false)?;
    let mut buf = vec![0u8; MIB];
    let seeded = AlignedBuf::new(MIB, 300)?;
    buf.copy_from_slice(seeded.as_slice());
    let start = Instant::now();
    let deadline = start + max;
    let mut len = 0u64;
    let mut w = &f.file;
    while len < bytes && Instant::now() < deadline {
        w.write_all(&buf)
            .map_err(|e| format!("writing {}: {e}", f.path.display()))?;
        len += MIB as u64;
    }
    fdatasync(&f.file)?;
    let written = Throughput {
        bytes: len,
        seconds: start.elapsed().as_secs_f64(),
        stopped_early: len < bytes,
    };
    let mut r = File::open(&f.path).map_err(|e| format!("opening {}: {e}", f.path.display()))?;
    while r
        .read(&mut buf)
        .map_err(|e| format!("reading {}: {e}", f.path.display()))?
        > 0
    {}
    Ok((f, written))
}

/// Loopback TCP bandwidth: a server thread sendfiles a page-cached file over one connection, a
/// client thread reads it into a 1 MiB buffer and discards it.
fn loopback_sendfile(dir: &Path, bytes: u64, max: Duration) -> Result<SendfileResult, String> {
    let (file, buffered_write) = page_cached_file(dir, bytes, max)?;
    let (len, short_file) = (buffered_write.bytes, buffered_write.stopped_early);
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + max;
    let source = &file.file;

    let (server, client) = std::thread::scope(|s| {
        let server = s.spawn(move || -> Result<(u64, bool, Option<f64>), String> {
            let sock = loop {
                match listener.accept() {
                    Ok((sock, _)) => break sock,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err("no connection to the sendfile server".into());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            sock.set_nonblocking(false).map_err(|e| e.to_string())?;
            let cpu0 = thread_cpu_seconds();
            let mut offset: libc::off_t = 0;
            let mut stopped_early = false;
            while (offset as u64) < len {
                if Instant::now() >= deadline {
                    stopped_early = true;
                    break;
                }
                let count = (len - offset as u64).min(SENDFILE_CHUNK as u64) as usize;
                // SAFETY: both descriptors are open for the duration of the call and `offset`
                // is a valid, writable off_t.
                let n = unsafe {
                    libc::sendfile(sock.as_raw_fd(), source.as_raw_fd(), &mut offset, count)
                };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(format!("sendfile: {e}"));
                }
                if n == 0 {
                    break;
                }
            }
            let cpu = cpu_delta(cpu0, thread_cpu_seconds());
            drop(sock);
            Ok((offset as u64, stopped_early, cpu))
        });
        let client = s.spawn(move || -> Result<(u64, f64, Option<f64>), String> {
            let start = Instant::now();
            let mut sock = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
            // Bounded even if the server dies without closing.
            sock.set_read_timeout(Some(max + Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let cpu0 = thread_cpu_seconds();
            let mut buf = vec![0u8; MIB];
            let mut received = 0u64;
            loop {
                match sock.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => received += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("loopback read: {e}")),
                }
            }
            let seconds = start.elapsed().as_secs_f64();
            Ok((received, seconds, cpu_delta(cpu0, thread_cpu_seconds())))
        });
        (joined(server.join()), joined(client.join()))
    });
    let (sent, stopped_early, server_cpu_s) = server?;
    let (received, seconds, client_cpu_s) = client?;
    if received != sent {
        return Err(format!(
            "loopback: sent {sent} bytes but received {received}"
        ));
    }
    drop(file);
    Ok(SendfileResult {
        buffered_write,
        throughput: Throughput {
            bytes: received,
            seconds,
            stopped_early: stopped_early || short_file,
        },
        server_cpu_s,
        client_cpu_s,
    })
}

fn joined<T>(r: std::thread::Result<Result<T, String>>) -> Result<T, String> {
    r.unwrap_or_else(|_| Err("thread panicked".to_string()))
}

/// Name of the block device holding `dir`, e.g. "vda" or "nvme0n1p2".
fn block_device(dir: &Path) -> Option<String> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests;
