//! `--find-max`: the capacity-planning sweep. It first measures what the producers reach at
//! "max" rate, then offers fixed rates from 10% of that upwards, and stops at the first step
//! whose publish p99 exceeds the target or whose achieved throughput falls short of the offered
//! rate (throughput stopped growing). The sustainable maximum is the highest rate that passed.

use serde::{Deserialize, Serialize};

use super::workload::Workload;
use super::{run_once, RunOptions, RunResult};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    /// Offered messages per second (None: the max-rate probe).
    pub offered_messages_per_s: Option<f64>,
    pub achieved_messages_per_s: f64,
    pub achieved_mb_per_s: f64,
    pub publish_p50_us: Option<f64>,
    pub publish_p99_us: Option<f64>,
    pub publish_p999_us: Option<f64>,
    pub publish_max_us: Option<f64>,
    pub broker_cpu_pct: Option<f64>,
    pub pass: bool,
    pub verdict: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FindMax {
    pub target_p99_us: f64,
    /// A step passes when it achieves at least this share of the offered rate.
    pub min_achieved_ratio: f64,
    pub step_s: f64,
    pub steps: Vec<Step>,
    pub sustainable_messages_per_s: Option<f64>,
    pub sustainable_mb_per_s: Option<f64>,
    /// The full result of the highest passing step.
    pub at_sustainable: Option<RunResult>,
}

pub struct FindMaxArgs {
    pub target_p99_ms: f64,
    pub step_s: f64,
    pub warmup_s: f64,
    /// Fixed-rate steps after the probe, as fractions of the probe's throughput.
    pub fractions: Vec<f64>,
}

const MIN_ACHIEVED_RATIO: f64 = 0.95;

pub fn find_max(base: &Workload, args: &FindMaxArgs, opts: &RunOptions) -> Result<FindMax, String> {
    let target_us = args.target_p99_ms * 1000.0;
    let mut w = base.clone();
    w.duration_s = args.step_s;
    w.warmup_s = args.warmup_s;
    let mut steps = Vec::new();
    let mut best: Option<(f64, f64, RunResult)> = None;

    w.rate = "max".into();
    eprintln!("find-max: probing at max rate for {} s", args.step_s);
    let probe = run_once(&w, opts)?;
    let probe_rate = probe.produced.as_ref().map_or(0.0, |p| p.messages_per_s);
    if probe_rate <= 0.0 {
        return Err("find-max: the max-rate probe produced nothing".into());
    }
    steps.push(step(&probe, None, "probe".into()));

    let mut offered_rates: Vec<f64> = args
        .fractions
        .iter()
        .map(|f| (f * probe_rate).round().max(1.0))
        .collect();
    offered_rates.dedup();
    let mut last_pass: Option<f64> = None;
    let mut first_fail: Option<f64> = None;
    for rate in offered_rates {
        let (pass, s, r) = fixed_step(&w, rate, target_us, opts)?;
        steps.push(s);
        if pass {
            last_pass = Some(rate);
            best = Some((rate, r.produced.as_ref().map_or(0.0, |p| p.mb_per_s), r));
        } else {
            first_fail = Some(rate);
            break;
        }
    }
    // One step halfway between the last pass and the first failure narrows the answer.
    if let (Some(lo), Some(hi)) = (last_pass, first_fail) {
        let mid = ((lo + hi) / 2.0).round();
        if mid > lo && mid < hi {
            let (pass, s, r) = fixed_step(&w, mid, target_us, opts)?;
            steps.push(s);
            if pass {
                best = Some((mid, r.produced.as_ref().map_or(0.0, |p| p.mb_per_s), r));
            }
        }
    }
    Ok(FindMax {
        target_p99_us: target_us,
        min_achieved_ratio: MIN_ACHIEVED_RATIO,
        step_s: args.step_s,
        steps,
        sustainable_messages_per_s: best.as_ref().map(|b| b.0),
        sustainable_mb_per_s: best.as_ref().map(|b| b.1),
        at_sustainable: best.map(|b| b.2),
    })
}

fn fixed_step(
    w: &Workload,
    rate: f64,
    target_us: f64,
    opts: &RunOptions,
) -> Result<(bool, Step, RunResult), String> {
    let mut w = w.clone();
    w.rate = format!("{rate}");
    eprintln!("find-max: offering {rate:.0} msg/s for {} s", w.duration_s);
    let r = run_once(&w, opts)?;
    let achieved = r.produced.as_ref().map_or(0.0, |p| p.messages_per_s);
    let p99 = r.publish_latency.as_ref().map(|l| l.p99_us);
    let (pass, verdict) = if achieved < MIN_ACHIEVED_RATIO * rate {
        (false, format!("achieved {achieved:.0} of {rate:.0} msg/s"))
    } else if p99.is_some_and(|p| p > target_us) {
        (
            false,
            format!(
                "p99 {:.2} ms over the {:.2} ms target",
                p99.unwrap_or(0.0) / 1000.0,
                target_us / 1000.0
            ),
        )
    } else {
        (true, "pass".to_string())
    };
    let s = step(&r, Some(rate), verdict);
    Ok((pass, Step { pass, ..s }, r))
}

fn step(r: &RunResult, offered: Option<f64>, verdict: String) -> Step {
    let l = r.publish_latency.as_ref();
    Step {
        offered_messages_per_s: offered,
        achieved_messages_per_s: r.produced.as_ref().map_or(0.0, |p| p.messages_per_s),
        achieved_mb_per_s: r.produced.as_ref().map_or(0.0, |p| p.mb_per_s),
        publish_p50_us: l.map(|l| l.p50_us),
        publish_p99_us: l.map(|l| l.p99_us),
        publish_p999_us: l.map(|l| l.p999_us),
        publish_max_us: l.map(|l| l.max_us),
        broker_cpu_pct: r.broker.as_ref().map(|b| b.cpu_pct),
        pass: false,
        verdict,
    }
}
