//! Where a request's time goes: timestamps taken along the request path, turned into one HDR
//! histogram per (API, stage) on each shard. Always on; a request costs about ten clock reads
//! and as many histogram increments.
//!
//! The stamps, in order (a request that makes no cross-shard call has no hop stamps):
//!
//! | stamp | taken when |
//! |---|---|
//! | `read` | the whole frame is in memory (connection reader) |
//! | `started` | the handler task first runs |
//! | `decoded` | the request body is decoded |
//! | `owner_start` / `owner_end` | the partition owner starts / ends the work (append, fetch read; on this shard or another) |
//! | `replied` | the handler has the owner's answer back |
//! | `encoded` | the handler returned its response |
//! | `write_start` | the connection writer picked the response up |
//! | `written` | the response is in the socket |
//!
//! The stages are the gaps between consecutive stamps ([`Stage`]); `total` is `read` to
//! `written`. With several owner calls in one request (partitions on several shards) the hop
//! stages use the earliest start and the latest end.

use std::cell::Cell;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kafka_protocol::messages::ApiKey;

/// Longest duration a stage histogram tells apart; longer ones are counted at this value.
const STAGE_MAX: Duration = Duration::from_secs(60);
/// Significant decimal digits the histograms keep (1% resolution).
const STAGE_SIGFIG: u8 = 2;

/// One gap between two stamps of a request (in the order of [`Stage::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Frame read to handler running: the executor's scheduling delay.
    Schedule,
    /// Decoding the request body.
    Decode,
    /// Decoded to the owner starting the work (a cross-shard message, or nothing).
    HopOut,
    /// The work on the owner: append (and fsync for acks=all), fetch read or long poll; for
    /// requests without an owner call, the whole handler after decoding.
    Execute,
    /// The owner's answer travelling back.
    HopBack,
    /// Building the response after the owner answered.
    Encode,
    /// Response ready to the writer picking it up (waits for earlier responses of the
    /// connection, and for the writer task to be scheduled).
    Queue,
    /// Writing the response into the socket.
    Send,
    /// Frame read to response written.
    Total,
}

impl Stage {
    pub const ALL: [Stage; 9] = [
        Stage::Schedule,
        Stage::Decode,
        Stage::HopOut,
        Stage::Execute,
        Stage::HopBack,
        Stage::Encode,
        Stage::Queue,
        Stage::Send,
        Stage::Total,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Schedule => "schedule",
            Stage::Decode => "decode",
            Stage::HopOut => "hop_out",
            Stage::Execute => "execute",
            Stage::HopBack => "hop_back",
            Stage::Encode => "encode",
            Stage::Queue => "queue",
            Stage::Send => "send",
            Stage::Total => "total",
        }
    }
}

/// The stamps of one request (see the module documentation).
#[derive(Debug)]
pub struct RequestTrace {
    read: Instant,
    started: Cell<Option<Instant>>,
    decoded: Cell<Option<Instant>>,
    owner_start: Cell<Option<Instant>>,
    owner_end: Cell<Option<Instant>>,
    replied: Cell<Option<Instant>>,
    encoded: Cell<Option<Instant>>,
    write_start: Cell<Option<Instant>>,
    written: Cell<Option<Instant>>,
}

/// When the owner of a partition ran an operation (for the hop stages).
#[derive(Clone, Copy, Debug)]
pub struct OwnerTimes {
    /// When it started.
    pub start: Instant,
    /// When it finished.
    pub end: Instant,
}

fn stamp(cell: &Cell<Option<Instant>>) {
    cell.set(Some(Instant::now()));
}

impl RequestTrace {
    /// A trace whose frame was read just now.
    pub fn new() -> RequestTrace {
        RequestTrace {
            read: Instant::now(),
            started: Cell::new(None),
            decoded: Cell::new(None),
            owner_start: Cell::new(None),
            owner_end: Cell::new(None),
            replied: Cell::new(None),
            encoded: Cell::new(None),
            write_start: Cell::new(None),
            written: Cell::new(None),
        }
    }

    pub fn started(&self) {
        stamp(&self.started);
    }

    pub fn decoded(&self) {
        if self.decoded.get().is_none() {
            stamp(&self.decoded);
        }
    }

    /// An owner call came back: `times` is when the owner ran it, now is when its answer
    /// arrived. Several calls widen the window.
    pub fn owner_replied(&self, times: OwnerTimes) {
        let start = self
            .owner_start
            .get()
            .map_or(times.start, |s| s.min(times.start));
        let end = self.owner_end.get().map_or(times.end, |e| e.max(times.end));
        self.owner_start.set(Some(start));
        self.owner_end.set(Some(end));
        stamp(&self.replied);
    }

    pub fn encoded(&self) {
        stamp(&self.encoded);
    }

    pub fn write_start(&self) {
        stamp(&self.write_start);
    }

    pub fn written(&self) {
        stamp(&self.written);
    }

    /// Calls `f` with each stage whose two ends were stamped and its duration, in order.
    pub fn for_each_stage(&self, mut f: impl FnMut(Stage, Duration)) {
        let gap = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        let read = Some(self.read);
        let decoded = self.decoded.get().or(self.started.get());
        let mut push = |stage, d: Option<Duration>| {
            if let Some(d) = d {
                f(stage, d);
            }
        };
        push(Stage::Schedule, gap(read, self.started.get()));
        push(Stage::Decode, gap(self.started.get(), self.decoded.get()));
        if self.owner_start.get().is_some() {
            push(Stage::HopOut, gap(decoded, self.owner_start.get()));
            push(
                Stage::Execute,
                gap(self.owner_start.get(), self.owner_end.get()),
            );
            push(
                Stage::HopBack,
                gap(self.owner_end.get(), self.replied.get()),
            );
            push(Stage::Encode, gap(self.replied.get(), self.encoded.get()));
        } else {
            push(Stage::Execute, gap(decoded, self.encoded.get()));
        }
        push(
            Stage::Queue,
            gap(self.encoded.get(), self.write_start.get()),
        );
        push(Stage::Send, gap(self.write_start.get(), self.written.get()));
        push(Stage::Total, gap(read, self.written.get()));
    }
}

/// Which APIs get their own stage histograms; every other API is counted as `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiGroup {
    Produce,
    Fetch,
    Other,
}

impl ApiGroup {
    pub const ALL: [ApiGroup; 3] = [ApiGroup::Produce, ApiGroup::Fetch, ApiGroup::Other];

    pub fn of(api: ApiKey) -> ApiGroup {
        match api {
            ApiKey::Produce => ApiGroup::Produce,
            ApiKey::Fetch => ApiGroup::Fetch,
            _ => ApiGroup::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ApiGroup::Produce => "Produce",
            ApiGroup::Fetch => "Fetch",
            ApiGroup::Other => "other",
        }
    }
}

/// Microsecond histograms per (API group, stage); a fixed set, so its memory is bounded.
#[derive(Clone, Debug)]
pub struct StageHistograms {
    /// Indexed by `ApiGroup as usize * Stage::ALL.len() + Stage as usize`.
    hists: Vec<Histogram<u64>>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, STAGE_MAX.as_micros() as u64, STAGE_SIGFIG)
        .expect("valid histogram bounds")
}

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms {
            hists: (0..ApiGroup::ALL.len() * Stage::ALL.len())
                .map(|_| new_histogram())
                .collect(),
        }
    }
}

impl StageHistograms {
    fn slot(&self, api: ApiGroup, stage: Stage) -> usize {
        api as usize * Stage::ALL.len() + stage as usize
    }

    /// Records every stamped stage of a finished request.
    pub fn record(&mut self, api: ApiKey, trace: &RequestTrace) {
        let group = ApiGroup::of(api);
        trace.for_each_stage(|stage, d| {
            let slot = self.slot(group, stage);
            self.hists[slot].saturating_record(d.as_micros() as u64);
        });
    }

    pub fn get(&self, api: ApiGroup, stage: Stage) -> &Histogram<u64> {
        &self.hists[self.slot(api, stage)]
    }

    /// Adds another shard's histograms to these.
    pub fn merge(&mut self, other: &StageHistograms) {
        for (a, b) in self.hists.iter_mut().zip(&other.hists) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = a.add(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, us: u64) -> Option<Instant> {
        Some(base + Duration::from_micros(us))
    }

    fn stages(t: &RequestTrace) -> Vec<(Stage, Duration)> {
        let mut out = Vec::new();
        t.for_each_stage(|s, d| out.push((s, d)));
        out
    }

    #[test]
    fn stage_all_is_in_declaration_order() {
        for (i, s) in Stage::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{s:?}");
        }
    }

    #[test]
    fn stages_are_the_gaps_between_stamps() {
        let t = RequestTrace::new();
        let base = t.read;
        t.started.set(at(base, 10));
        t.decoded.set(at(base, 15));
        t.owner_replied(OwnerTimes {
            start: base + Duration::from_micros(40),
            end: base + Duration::from_micros(100),
        });
        t.replied.set(at(base, 130));
        t.encoded.set(at(base, 135));
        t.write_start.set(at(base, 1135));
        t.written.set(at(base, 1140));
        let got: Vec<(&str, u128)> = stages(&t)
            .into_iter()
            .map(|(s, d)| (s.name(), d.as_micros()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("schedule", 10),
                ("decode", 5),
                ("hop_out", 25),
                ("execute", 60),
                ("hop_back", 30),
                ("encode", 5),
                ("queue", 1000),
                ("send", 5),
                ("total", 1140)
            ]
        );
    }

    #[test]
    fn several_owner_calls_widen_the_window_and_local_work_is_execute() {
        let t = RequestTrace::new();
        let base = t.read;
        t.owner_replied(OwnerTimes {
            start: base + Duration::from_micros(50),
            end: base + Duration::from_micros(60),
        });
        t.owner_replied(OwnerTimes {
            start: base + Duration::from_micros(20),
            end: base + Duration::from_micros(90),
        });
        assert_eq!(t.owner_start.get(), at(base, 20));
        assert_eq!(t.owner_end.get(), at(base, 90));

        let local = RequestTrace::new();
        let base = local.read;
        local.started.set(at(base, 1));
        local.decoded.set(at(base, 2));
        local.encoded.set(at(base, 9));
        let got: Vec<&str> = stages(&local).into_iter().map(|(s, _)| s.name()).collect();
        assert_eq!(
            got,
            vec!["schedule", "decode", "execute"],
            "unstamped stages are left out"
        );
    }

    #[test]
    fn histograms_record_per_api_group_and_merge() {
        let mut h = StageHistograms::default();
        let t = RequestTrace::new();
        t.started.set(Some(t.read + Duration::from_micros(7)));
        h.record(ApiKey::Produce, &t);
        h.record(ApiKey::Metadata, &t);
        assert_eq!(h.get(ApiGroup::Produce, Stage::Schedule).len(), 1);
        assert_eq!(h.get(ApiGroup::Other, Stage::Schedule).len(), 1);
        assert_eq!(h.get(ApiGroup::Fetch, Stage::Schedule).len(), 0);
        let mut m = h.clone();
        m.merge(&h);
        assert_eq!(m.get(ApiGroup::Produce, Stage::Schedule).len(), 2);
        assert!(
            m.get(ApiGroup::Produce, Stage::Schedule)
                .value_at_quantile(0.5)
                >= 7
        );
        // Beyond the bound is counted, at the bound.
        let long = RequestTrace::new();
        long.started
            .set(Some(long.read + Duration::from_secs(3600)));
        h.record(ApiKey::Fetch, &long);
        assert_eq!(h.get(ApiGroup::Fetch, Stage::Schedule).len(), 1);
    }
}
