//! Percentile table and JSON object of the `group` benchmark.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// A join phase above this suggests the broker delays the first join of a new group.
const SLOW_JOIN: Duration = Duration::from_millis(2500);

/// Latency samples of one metric, in microseconds.
pub struct Series {
    hist: Histogram<u64>,
}

impl Series {
    fn new() -> Result<Series, String> {
        // 1 us .. 1 h at 3 significant digits.
        let hist = Histogram::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?;
        Ok(Series { hist })
    }

    pub fn record(&mut self, d: Duration) {
        self.hist.saturating_record((d.as_micros() as u64).max(1));
    }

    /// min, p50, p90, p99, max in microseconds.
    fn stats(&self) -> [u64; 5] {
        let h = &self.hist;
        [
            h.min(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
        ]
    }
}

pub struct Report {
    topic: String,
    partitions: i32,
    rounds: u32,
    heartbeat: Duration,
    /// First JoinGroup sent to first record received.
    pub join_to_first_record: Series,
    /// First JoinGroup sent to SyncGroup answered.
    pub join_sync: Series,
    /// SyncGroup answered to first record received (OffsetFetch, ListOffsets, Fetch).
    pub offsets_fetch: Series,
    /// B's LeaveGroup sent to A holding every partition.
    pub rebalance: Series,
    /// B's LeaveGroup sent to A's heartbeat answering REBALANCE_IN_PROGRESS.
    pub rebalance_notice: Series,
    /// That heartbeat answer to A holding every partition (JoinGroup + SyncGroup).
    pub rebalance_rejoin: Series,
}

impl Report {
    pub fn new(
        topic: &str,
        partitions: i32,
        rounds: u32,
        heartbeat: Duration,
    ) -> Result<Report, String> {
        Ok(Report {
            topic: topic.to_string(),
            partitions,
            rounds,
            heartbeat,
            join_to_first_record: Series::new()?,
            join_sync: Series::new()?,
            offsets_fetch: Series::new()?,
            rebalance: Series::new()?,
            rebalance_notice: Series::new()?,
            rebalance_rejoin: Series::new()?,
        })
    }

    fn rows(&self) -> [(&'static str, &'static str, &Series); 6] {
        [
            (
                "join_to_first_record_us",
                "join -> first record",
                &self.join_to_first_record,
            ),
            ("join_sync_us", "  join + sync", &self.join_sync),
            (
                "offsets_first_fetch_us",
                "  offsets + first fetch",
                &self.offsets_fetch,
            ),
            (
                "rebalance_after_leave_us",
                "rebalance after leave",
                &self.rebalance,
            ),
            (
                "rebalance_notice_us",
                "  leave -> heartbeat notice",
                &self.rebalance_notice,
            ),
            (
                "rebalance_rejoin_us",
                "  rejoin + sync",
                &self.rebalance_rejoin,
            ),
        ]
    }

    fn notes(&self) -> Vec<String> {
        let hb = self.heartbeat.as_millis();
        vec![format!(
            "classic protocol: the remaining member learns of a rebalance only from its next heartbeat, so \
             rebalance latency is bounded below by the wait for that heartbeat, up to the heartbeat interval \
             ({hb} ms here; B leaves at phases spread over that interval, so ~{} ms is spent there on average)",
            hb / 2
        )]
    }

    fn warnings(&self) -> Vec<String> {
        let slowest_join = Duration::from_micros(self.join_sync.hist.max());
        if slowest_join <= SLOW_JOIN {
            return Vec::new();
        }
        vec![format!(
            "a join phase took {:.2} s: the broker probably delays the first join of a new group \
             (Kafka's group.initial.rebalance.delay.ms, 3000 by default); set it to 0 for meaningful numbers",
            slowest_join.as_secs_f64()
        )]
    }

    /// Prints the table, or one JSON object with `json` (then warnings also go to stderr).
    pub fn print(&self, json: bool) {
        let warnings = self.warnings();
        if json {
            for w in &warnings {
                eprintln!("strom-bench: warning: {w}");
            }
            println!("{}", self.json(&warnings));
        } else {
            print!("{}", self.table(&warnings));
        }
    }

    fn table(&self, warnings: &[String]) -> String {
        let mut out = format!(
            "group: topic {}, partitions {}, rounds {} per scenario (a new group each), heartbeat {} ms\n",
            self.topic,
            self.partitions,
            self.rounds,
            self.heartbeat.as_millis()
        );
        let (name, min, p50, p90, p99, max) = ("latency (us)", "min", "p50", "p90", "p99", "max");
        let _ = writeln!(
            out,
            "{name:<30}{min:>10}{p50:>10}{p90:>10}{p99:>10}{max:>10}"
        );
        for (_, label, series) in self.rows() {
            let [min, p50, p90, p99, max] = series.stats();
            let _ = writeln!(
                out,
                "{label:<30}{min:>10}{p50:>10}{p90:>10}{p99:>10}{max:>10}"
            );
        }
        for n in self.notes() {
            let _ = writeln!(out, "note: {n}");
        }
        for w in warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }

    fn json(&self, warnings: &[String]) -> String {
        let mut out = format!(
            "{{\"topic\":{},\"partitions\":{},\"rounds\":{},\"heartbeat_ms\":{}",
            json_str(&self.topic),
            self.partitions,
            self.rounds,
            self.heartbeat.as_millis()
        );
        for (key, _, series) in self.rows() {
            let [min, p50, p90, p99, max] = series.stats();
            let _ = write!(
                out,
                ",\"{key}\":{{\"min\":{min},\"p50\":{p50},\"p90\":{p90},\"p99\":{p99},\"max\":{max},\"n\":{}}}",
                series.hist.len()
            );
        }
        let list = |items: Vec<String>| {
            items
                .iter()
                .map(|s| json_str(s))
                .collect::<Vec<_>>()
                .join(",")
        };
        let _ = write!(
            out,
            ",\"notes\":[{}],\"warnings\":[{}]}}",
            list(self.notes()),
            list(warnings.to_vec())
        );
        out
    }
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
