//! The `strom` command-line tools: topics, producing, consuming, consumer groups and cluster
//! information, over the Kafka protocol, so they work against any Kafka-compatible broker.
//!
//! Output is an aligned table by default and JSON with `--format json`; a failure is one line
//! on stderr and a non-zero exit code. Every network wait is bounded by `--timeout-ms`.
//!
//! A library on `strom-client` only (no broker code, no glommio), so the tools build wherever
//! Rust does; the `strom` binary dispatches its subcommands here.

mod client;
pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod time;
pub mod topic;

use std::io::Write;

use serde_json::Value;

pub use client::Client;

/// Options every tool takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Bootstrap brokers, comma-separated.
    #[arg(
        short = 'b',
        long,
        global = true,
        env = "STROM_BROKERS",
        default_value = "127.0.0.1:9092",
        value_name = "HOST:PORT[,...]"
    )]
    pub brokers: String,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Bound on connecting and on every request, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000, value_name = "MS")]
    pub timeout_ms: u64,
}

/// How a tool prints its results (`--format`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Prints `rows` under `headers`, columns padded to their widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

/// Prints `v` as pretty JSON.
pub fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_default()
    );
}

/// Parses `KEY=VALUE`.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Whether stderr is a terminal (progress lines are only drawn there).
pub fn stderr_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// Wall clock in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A progress line on stderr, redrawn at most once a second, only on a terminal.
pub struct Progress {
    enabled: bool,
    last: std::time::Instant,
    drawn: bool,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress::new()
    }
}

impl Progress {
    /// A progress line, drawn only if stderr is a terminal.
    pub fn new() -> Progress {
        Progress {
            enabled: stderr_is_tty(),
            last: std::time::Instant::now(),
            drawn: false,
        }
    }

    /// Redraws the line with `msg()` if a second has passed; `msg` is not called otherwise.
    pub fn update(&mut self, msg: impl FnOnce() -> String) {
        if self.enabled && self.last.elapsed() >= std::time::Duration::from_secs(1) {
            self.last = std::time::Instant::now();
            self.drawn = true;
            eprint!("\r\x1b[2K{}", msg());
        }
    }

    /// Erases the line, so the tool's output starts on a clean line.
    pub fn finish(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            self.drawn = false;
        }
    }
}
