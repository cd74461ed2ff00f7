//! Reports of `strom-bench run`: the human table, the JSON file, the SVG chart, and
//! `strom-bench compare`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chart::{self, Panel, Series};
use crate::run::findmax::FindMax;
use crate::run::workload::Workload;
use crate::run::{Latency, RunResult};
use crate::sysinfo;

pub const REPORT_FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub format: u32,
    pub tool: String,
    pub tool_version: String,
    pub git_revision: String,
    /// UTC, RFC 3339.
    pub started_at: String,
    pub broker: String,
    pub broker_pid: Option<u32>,
    pub machine: Value,
    pub workload: Workload,
    pub result: Option<RunResult>,
    pub find_max: Option<FindMax>,
    /// This machine's ceilings (`strom-bench limits --json-out`), when given with `--limits`.
    pub limits: Option<Value>,
    /// Throughput as a share of those ceilings.
    pub fraction_of_limits: Option<Value>,
}

impl Report {
    pub fn new(broker: &str, broker_pid: Option<u32>, workload: &Workload) -> Report {
        Report {
            format: REPORT_FORMAT,
            tool: "strom-bench".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            git_revision: sysinfo::git_revision(),
            started_at: utc_now(),
            broker: broker.into(),
            broker_pid,
            machine: sysinfo::machine(),
            workload: workload.clone(),
            result: None,
            find_max: None,
            limits: None,
            fraction_of_limits: None,
        }
    }

    /// Fills `fraction_of_limits` from `limits` and the result.
    pub fn relate_to_limits(&mut self) {
        let (Some(limits), Some(r)) = (&self.limits, &self.result) else {
            return;
        };
        let mut out = serde_json::Map::new();
        let mut ratio = |name: &str, measured: Option<f64>, limit_key: &str| {
            if let (Some(m), Some(l)) = (measured, limits.get(limit_key).and_then(Value::as_f64)) {
                if l > 0.0 {
                    out.insert(
                        name.into(),
                        serde_json::json!(((m / l) * 1000.0).round() / 1000.0),
                    );
                }
            }
        };
        let produced = r.produced.as_ref().map(|p| p.mb_per_s);
        ratio("produce_vs_direct_write", produced, "direct_write_mb_s");
        ratio(
            "produce_vs_direct_write_qd1",
            produced,
            "direct_write_qd1_mb_s",
        );
        ratio(
            "produce_vs_buffered_write",
            produced,
            "buffered_write_then_fdatasync_mb_s",
        );
        ratio(
            "produce_vs_direct_write_fdatasync_each_mib",
            produced,
            "direct_write_fdatasync_each_mib_mb_s",
        );
        ratio(
            "consume_vs_loopback_sendfile",
            r.consumed.as_ref().map(|c| c.mb_per_s),
            "loopback_sendfile_mb_s",
        );
        self.fraction_of_limits = Some(Value::Object(out));
    }

    pub fn print_table(&self) {
        println!(
            "strom-bench {} ({}) against {} at {}",
            self.tool_version, self.git_revision, self.broker, self.started_at
        );
        let w = &self.workload;
        println!(
            "workload: {} ({} partitions each), {} producers, {} consumers{} per topic, {} B messages, keys {}, \
             acks {}, compression {}, linger {} ms, batch {} B, rate {}, warm-up {} s, duration {} s",
            if w.topics > 1 { format!("{} topics {}-0..{}", w.topics, w.topic, w.topics - 1) } else { format!("topic {}", w.topic) },
            w.partitions,
            w.producers,
            w.consumers,
            w.group.as_deref().map(|g| format!(" in group {g}")).unwrap_or_default(),
            w.message_bytes,
            w.keys,
            w.acks,
            w.compression,
            w.linger_ms,
            w.batch_bytes,
            w.rate,
            w.warmup_s,
            w.duration_s
        );
        if !w.topic_configs.is_empty() {
            let list: Vec<String> = w
                .topic_configs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("topic configs: {}", list.join(" "));
        }
        if let Some(r) = &self.result {
            print_result(r);
        }
        if let Some(f) = &self.find_max {
            print_find_max(f);
        }
        if let Some(Value::Object(fr)) = &self.fraction_of_limits {
            for (k, v) in fr {
                println!("{k:<44} {:.1}%", v.as_f64().unwrap_or(0.0) * 100.0);
            }
        }
    }

    /// The chart: throughput and latency over time for a run, latency against rate for a sweep.
    pub fn svg(&self) -> String {
        let mut panels = Vec::new();
        if let Some(r) = self.result.as_ref().or(self
            .find_max
            .as_ref()
            .and_then(|f| f.at_sustainable.as_ref()))
        {
            let t = &r.timeline;
            let series = |name: &str, f: &dyn Fn(&crate::run::Point) -> Option<f64>| Series {
                name: name.into(),
                points: t.iter().filter_map(|p| f(p).map(|v| (p.t_s, v))).collect(),
            };
            let mut thr = vec![series("produce MB/s", &|p| Some(p.produce_mb_per_s))];
            if self.workload.consumers > 0 {
                thr.push(series("consume MB/s", &|p| Some(p.consume_mb_per_s)));
            }
            panels.push(Panel {
                title: "Throughput".into(),
                x_label: "seconds".into(),
                y_label: "MB/s".into(),
                log_y: false,
                series: thr,
            });
            let ms = |v: Option<f64>| v.map(|u| u / 1000.0);
            let mut lat = vec![
                series("publish p50", &|p| ms(p.publish_p50_us)),
                series("publish p99", &|p| ms(p.publish_p99_us)),
                series("publish p99.9", &|p| ms(p.publish_p999_us)),
                series("publish max", &|p| ms(p.publish_max_us)),
            ];
            if self.workload.consumers > 0 {
                lat.push(series("end-to-end p50", &|p| ms(p.e2e_p50_us)));
                lat.push(series("end-to-end p99", &|p| ms(p.e2e_p99_us)));
            }
            lat.retain(|s| !s.points.is_empty());
            panels.push(Panel {
                title: "Latency per second".into(),
                x_label: "seconds".into(),
                y_label: "ms".into(),
                log_y: true,
                series: lat,
            });
            let mut res = vec![
                series("broker CPU %", &|p| p.broker_cpu_pct),
                series("client CPU %", &|p| Some(p.client_cpu_pct)),
            ];
            res.retain(|s| !s.points.is_empty());
            panels.push(Panel {
                title: "CPU (100% = one core)".into(),
                x_label: "seconds".into(),
                y_label: "%".into(),
                log_y: false,
                series: res,
            });
        }
        if let Some(f) = &self.find_max {
            let mut fixed: Vec<&crate::run::findmax::Step> = f
                .steps
                .iter()
                .filter(|s| s.offered_messages_per_s.is_some())
                .collect();
            fixed.sort_by(|a, b| {
                a.offered_messages_per_s
                    .partial_cmp(&b.offered_messages_per_s)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            let series =
                |name: &str, g: &dyn Fn(&crate::run::findmax::Step) -> Option<f64>| Series {
                    name: name.into(),
                    points: fixed
                        .iter()
                        .filter_map(|s| g(s).map(|v| (s.offered_messages_per_s.unwrap_or(0.0), v)))
                        .collect(),
                };
            let ms = |v: Option<f64>| v.map(|u| u / 1000.0);
            panels.push(Panel {
                title: format!(
                    "Publish latency against offered rate (target p99 {} ms)",
                    f.target_p99_us / 1000.0
                ),
                x_label: "offered msg/s".into(),
                y_label: "ms".into(),
                log_y: true,
                series: vec![
                    series("p50", &|s| ms(s.publish_p50_us)),
                    series("p99", &|s| ms(s.publish_p99_us)),
                    series("p99.9", &|s| ms(s.publish_p999_us)),
                    series("max", &|s| ms(s.publish_max_us)),
                ],
            });
            panels.push(Panel {
                title: "Achieved against offered rate".into(),
                x_label: "offered msg/s".into(),
                y_label: "msg/s".into(),
                log_y: false,
                series: vec![
                    series("achieved", &|s| Some(s.achieved_messages_per_s)),
                    series("offered", &|s| s.offered_messages_per_s),
                ],
            });
        }
        let title = format!(
            "strom-bench {} against {} ({})",
            self.git_revision, self.broker, self.started_at
        );
        chart::svg(&title, &panels)
    }
}

fn lat_row(name: &str, l: &Option<Latency>) {
    match l {
        Some(l) => println!(
            "{name:<22} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>10}",
            l.p50_us / 1000.0,
            l.p90_us / 1000.0,
            l.p99_us / 1000.0,
            l.p999_us / 1000.0,
            l.p9999_us / 1000.0,
            l.max_us / 1000.0,
            l.count
        ),
        None => println!("{name:<22} (none)"),
    }
}

fn print_result(r: &RunResult) {
    println!(
        "measured window: {:.2} s after {:.1} s of warm-up",
        r.measured_s, r.warmup_s
    );
    if let Some(o) = r.offered_messages_per_s {
        println!("offered: {o:.0} msg/s");
    }
    for (name, f) in [("produced", &r.produced), ("consumed", &r.consumed)] {
        if let Some(f) = f {
            println!(
                "{name}: {} messages, {:.0} msg/s, {:.1} MB/s{}",
                f.messages,
                f.messages_per_s,
                f.mb_per_s,
                if f.errors > 0 {
                    format!(
                        ", {} errors (last: {})",
                        f.errors,
                        f.last_error.as_deref().unwrap_or("?")
                    )
                } else {
                    String::new()
                }
            );
        }
    }
    if r.produced.is_some() {
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "p99.99", "max", "count"
        );
        lat_row("publish", &r.publish_latency);
    }
    if r.consumed.is_some() && r.produced.is_some() {
        lat_row("end-to-end", &r.e2e_latency);
    }
    if let Some(b) = &r.broker {
        println!(
            "broker: {:.2} CPU s ({:.1}% of a core){}{}, RSS {:.1} -> {:.1} MiB (max {:.1})",
            b.cpu_s,
            b.cpu_pct,
            b.cpu_s_per_gib_in
                .map(|c| format!(", {c:.2} s per GiB in"))
                .unwrap_or_default(),
            b.cpu_s_per_gib_out
                .map(|c| format!(", {c:.2} s per GiB out"))
                .unwrap_or_default(),
            b.rss_mib_start.unwrap_or(0.0),
            b.rss_mib_end.unwrap_or(0.0),
            b.rss_mib_max.unwrap_or(0.0)
        );
    } else {
        println!("broker: process not found on this machine (no CPU or memory figures)");
    }
    println!(
        "client: {:.2} CPU s ({:.1}% of a core)",
        r.client.cpu_s, r.client.cpu_pct
    );
}

fn print_find_max(f: &FindMax) {
    println!(
        "find-max: target publish p99 <= {:.2} ms, achieved >= {:.0}% of offered, {} s per step",
        f.target_p99_us / 1000.0,
        f.min_achieved_ratio * 100.0,
        f.step_s
    );
    println!(
        "{:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  verdict",
        "offered/s", "achieved/s", "MB/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "cpu %"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |u| format!("{:.3}", u / 1000.0));
    for s in &f.steps {
        println!(
            "{:>12} {:>12.0} {:>9.1} {:>9} {:>9} {:>9} {:>9} {:>7}  {}",
            s.offered_messages_per_s
                .map_or("max".to_string(), |o| format!("{o:.0}")),
            s.achieved_messages_per_s,
            s.achieved_mb_per_s,
            ms(s.publish_p50_us),
            ms(s.publish_p99_us),
            ms(s.publish_p999_us),
            ms(s.publish_max_us),
            s.broker_cpu_pct
                .map_or("-".to_string(), |c| format!("{c:.0}")),
            s.verdict
        );
    }
    match (f.sustainable_messages_per_s, f.sustainable_mb_per_s) {
        (Some(m), Some(mb)) => println!("sustainable maximum: {m:.0} msg/s ({mb:.1} MB/s)"),
        _ => println!("sustainable maximum: none of the steps met the target"),
    }
}

/// `strom-bench compare A.json B.json`: every figure both reports have, with B / A.
pub fn compare(a: &str, b: &str) -> Result<(), String> {
    let load = |path: &str| -> Result<Value, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON: {e}"))?;
        if v.get("tool").and_then(Value::as_str) != Some("strom-bench") {
            return Err(format!("{path} is not a strom-bench report"));
        }
        Ok(v)
    };
    let (va, vb) = (load(a)?, load(b)?);
    println!(
        "A: {a} ({} against {}, {})",
        s(&va, "git_revision"),
        s(&va, "broker"),
        s(&va, "started_at")
    );
    println!(
        "B: {b} ({} against {}, {})",
        s(&vb, "git_revision"),
        s(&vb, "broker"),
        s(&vb, "started_at")
    );
    let mut fa = Vec::new();
    for section in ["result", "find_max"] {
        if let Some(v) = va.get(section) {
            flatten(section, v, &mut fa);
        }
    }
    let mut fb = Vec::new();
    for section in ["result", "find_max"] {
        if let Some(v) = vb.get(section) {
            flatten(section, v, &mut fb);
        }
    }
    println!("{:<52} {:>14} {:>14} {:>9}", "figure", "A", "B", "B/A");
    let mut shown = 0;
    for (key, x) in &fa {
        if let Some((_, y)) = fb.iter().find(|(k, _)| k == key) {
            let ratio = if *x != 0.0 {
                format!("{:.3}", y / x)
            } else {
                "-".to_string()
            };
            println!("{key:<52} {x:>14.3} {y:>14.3} {ratio:>9}");
            shown += 1;
        }
    }
    if shown == 0 {
        return Err("the two reports have no figure in common".into());
    }
    Ok(())
}

fn s(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string()
}

/// Numeric leaves of `v` as dotted paths, skipping the per-second timeline and sweep steps.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((prefix.to_string(), x));
            }
        }
        Value::Object(m) => {
            for (k, child) in m {
                if k == "timeline" || k == "steps" {
                    continue;
                }
                flatten(&format!("{prefix}.{k}"), child, out);
            }
        }
        _ => {}
    }
}

/// The current UTC time as RFC 3339 (seconds).
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil() {
        let t = utc_now();
        assert_eq!(t.len(), 20);
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn flatten_skips_timelines() {
        let v = serde_json::json!({"a": 1, "b": {"c": 2.5, "timeline": [{"x": 1}]}, "d": "text"});
        let mut out = Vec::new();
        flatten("r", &v, &mut out);
        assert_eq!(
            out,
            vec![("r.a".to_string(), 1.0), ("r.b.c".to_string(), 2.5)]
        );
    }
}
