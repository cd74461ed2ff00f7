//! `strom consume TOPIC`: prints records, alone or as a member of a consumer group.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use strom_client::batch::{self, InRecord};
use strom_client::code_name;
use strom_client::member::{GroupTimeouts, Heartbeat, Member};

use super::time::parse_datetime_ms;
use super::{Client, Common, Format};

const FETCH_MAX_WAIT_MS: i32 = 500;
const PARTITION_MAX_BYTES: i32 = 1024 * 1024;
const FETCH_MAX_BYTES: i32 = 8 * 1024 * 1024;
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const COMMIT_EVERY: Duration = Duration::from_secs(1);
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// `strom consume`: where to read from, how much, and how to print it.
#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    /// Brokers, output format and timeout.
    #[command(flatten)]
    pub common: Common,
    /// Topic to read.
    pub topic: String,
    /// Only these partitions (repeatable; default all). Not with --group.
    #[arg(short, long = "partition", conflicts_with = "group")]
    pub partitions: Vec<i32>,
    /// Where to start: beginning, end, an offset N, -N (N before the end), or @TIME
    /// (Unix ms or a date-time). With --group, only where the group has no committed offset.
    #[arg(short, long, default_value = "beginning", allow_hyphen_values = true)]
    pub offset: String,
    /// Start at the first record at or after this time (Unix ms or YYYY-MM-DDTHH:MM:SS[Z]).
    #[arg(long, value_name = "TIME", conflicts_with = "offset")]
    pub from_timestamp: Option<String>,
    /// Exit after this many records.
    #[arg(short, long = "num")]
    pub num: Option<u64>,
    /// Exit once every partition is read up to the end it had at start.
    #[arg(short, long)]
    pub exit_at_end: bool,
    /// Consume as a member of this group, committing what was printed.
    #[arg(short, long)]
    pub group: Option<String>,
    /// Output template: %t topic, %p partition, %o offset, %k key, %v value, %T timestamp
    /// (ms), %h headers (k=v,...), %K / %S key / value size, %% and \n \t \\ escapes.
    #[arg(short = 'f', long, default_value = "%v\\n")]
    pub template: String,
}

/// Where a partition starts, from `--offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    Beginning,
    End,
    At(i64),
    FromEnd(i64),
    Time(i64),
}

fn parse_start(s: &str) -> Result<Start, String> {
    Ok(match s {
        "beginning" | "earliest" | "start" | "oldest" => Start::Beginning,
        "end" | "latest" | "newest" => Start::End,
        _ if s.starts_with('@') => Start::Time(parse_datetime_ms(&s[1..])?),
        _ if s.starts_with('-') => Start::FromEnd(s[1..].parse().map_err(|_| bad_offset(s))?),
        _ => Start::At(
            s.parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .ok_or_else(|| bad_offset(s))?,
        ),
    })
}

fn bad_offset(s: &str) -> String {
    format!("bad --offset {s:?}: expected beginning, end, N, -N or @TIME")
}

/// Runs `strom consume`: fetches records (alone or as a group member) and prints them to stdout.
pub fn run(args: ConsumeArgs) -> Result<(), String> {
    let start = match &args.from_timestamp {
        Some(t) => Start::Time(parse_datetime_ms(t)?),
        None => parse_start(&args.offset)?,
    };
    let template = Template::parse(&args.template);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let mut client = Client::connect(&args.common)?;
    let mut leaders = client.leaders(&args.topic)?;
    for p in &args.partitions {
        if !leaders.contains_key(p) {
            return Err(format!(
                "topic {} has no partition {p} (it has {})",
                args.topic,
                leaders.len()
            ));
        }
    }
    if !args.partitions.is_empty() {
        leaders.retain(|p, _| args.partitions.contains(p));
    }
    let mut out = Output {
        format: args.common.format,
        template,
        topic: args.topic.clone(),
        printed: 0,
        limit: args.num,
    };
    let mut member = match &args.group {
        Some(g) => Some(join(&mut client, g, &args.topic, leaders.len() as i32)?),
        None => None,
    };
    let result = consume(
        &mut client,
        &mut member,
        &args,
        start,
        &mut leaders,
        &mut out,
        &stop,
    );
    if let Some(m) = member.as_mut() {
        // Leaving lets the rest of the group take the partitions over at once.
        let _ = m.leave();
    }
    result
}

fn join(client: &mut Client, group: &str, topic: &str, partitions: i32) -> Result<Member, String> {
    let coordinator = client.coordinator(group)?;
    let addr = client
        .brokers
        .get(&coordinator)
        .cloned()
        .ok_or("the coordinator has no address")?;
    let deadline = Instant::now() + client.timeout + Duration::from_secs(30);
    let timeouts = GroupTimeouts {
        session_ms: 10_000,
        rebalance_ms: 30_000,
    };
    let mut m = Member::connect(&addr, group, topic, partitions, timeouts, deadline)?;
    m.join_and_sync(deadline)?;
    Ok(m)
}

/// Start offsets of `parts`: committed ones first (with a group), then `start`.
fn positions(
    client: &mut Client,
    member: &mut Option<Member>,
    topic: &str,
    leaders: &BTreeMap<i32, i32>,
    parts: &[i32],
    start: Start,
) -> Result<BTreeMap<i32, i64>, String> {
    let mut pos = BTreeMap::new();
    if let Some(m) = member.as_mut() {
        let group = m.group().to_string();
        for (p, o) in m.conn().offset_fetch(&group, topic, parts)? {
            if o >= 0 {
                pos.insert(p, o);
            }
        }
    }
    let missing: BTreeMap<i32, i32> = parts
        .iter()
        .filter(|p| !pos.contains_key(p))
        .filter_map(|p| leaders.get(p).map(|l| (*p, *l)))
        .collect();
    if missing.is_empty() {
        return Ok(pos);
    }
    let resolved = match start {
        Start::Beginning => client.offsets(topic, &missing, -2)?,
        Start::End => client.offsets(topic, &missing, -1)?,
        Start::At(o) => missing.keys().map(|p| (*p, o)).collect(),
        Start::FromEnd(n) => {
            let begin = client.offsets(topic, &missing, -2)?;
            let end = client.offsets(topic, &missing, -1)?;
            end.iter()
                .map(|(p, e)| (*p, (e - n).max(begin[p])))
                .collect()
        }
        Start::Time(t) => {
            let end = client.offsets(topic, &missing, -1)?;
            let at = client.offsets(topic, &missing, t)?;
            // No record at or after the time: start at the end.
            at.iter()
                .map(|(p, o)| (*p, if *o < 0 { end[p] } else { *o }))
                .collect()
        }
    };
    pos.extend(resolved);
    Ok(pos)
}

fn consume(
    client: &mut Client,
    member: &mut Option<Member>,
    args: &ConsumeArgs,
    start: Start,
    leaders: &mut BTreeMap<i32, i32>,
    out: &mut Output,
    stop: &AtomicBool,
) -> Result<(), String> {
    let topic = args.topic.as_str();
    let assigned = |member: &Option<Member>, leaders: &BTreeMap<i32, i32>| -> Vec<i32> {
        match member {
            Some(m) => m.assigned().to_vec(),
            None => leaders.keys().copied().collect(),
        }
    };
    let mut parts = assigned(member, leaders);
    let mut pos = positions(client, member, topic, leaders, &parts, start)?;
    let ends = if args.exit_at_end {
        Some(client.offsets(topic, leaders, -1)?)
    } else {
        None
    };
    let mut committed: BTreeMap<i32, i64> = pos.clone();
    let mut last_heartbeat = Instant::now();
    let mut last_commit = Instant::now();
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    loop {
        if out.done() || stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(ends) = &ends {
            if parts
                .iter()
                .all(|p| pos.get(p).copied().unwrap_or(0) >= ends.get(p).copied().unwrap_or(0))
            {
                break;
            }
        }
        if let Some(m) = member.as_mut() {
            if last_commit.elapsed() >= COMMIT_EVERY {
                commit(m, topic, &pos, &mut committed)?;
                last_commit = Instant::now();
            }
            if last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
                last_heartbeat = Instant::now();
                if m.heartbeat()? == Heartbeat::Rejoin {
                    commit(m, topic, &pos, &mut committed)?;
                    m.join_and_sync(Instant::now() + client.timeout + Duration::from_secs(30))?;
                    parts = assigned(member, leaders);
                    pos = positions(client, member, topic, leaders, &parts, start)?;
                    committed = pos.clone();
                    continue;
                }
            }
        }
        if parts.is_empty() {
            std::thread::sleep(Duration::from_millis(FETCH_MAX_WAIT_MS as u64));
            continue;
        }
        let mut by_leader: BTreeMap<i32, Vec<(i32, i64)>> = BTreeMap::new();
        for p in &parts {
            if let Some(ends) = &ends {
                if pos[p] >= ends.get(p).copied().unwrap_or(0) {
                    continue;
                }
            }
            by_leader.entry(leaders[p]).or_default().push((*p, pos[p]));
        }
        let mut refresh = false;
        for (leader, fetch) in by_leader {
            let sets = client.conn_to_node(leader)?.fetch_sets(
                topic,
                &fetch,
                FETCH_MAX_WAIT_MS,
                PARTITION_MAX_BYTES,
                FETCH_MAX_BYTES,
            )?;
            for (p, error, records) in sets {
                match error {
                    0 => {}
                    OFFSET_OUT_OF_RANGE => {
                        return Err(format!(
                            "offset {} is out of range for {topic}/{p}",
                            pos.get(&p).copied().unwrap_or(-1)
                        ))
                    }
                    // Leadership or metadata moved: look the leaders up again.
                    3 | 6 | 74 | 75 => {
                        refresh = true;
                        continue;
                    }
                    e => return Err(format!("fetching {topic}/{p}: {}", code_name(e))),
                }
                let decoded = batch::decode(&records)?;
                let at = pos.get_mut(&p).expect("fetched partitions have positions");
                let from = *at;
                for r in decoded.records.iter().filter(|r| r.offset >= from) {
                    if out.done() {
                        break;
                    }
                    if !out.write(&mut w, p, r)? {
                        return Ok(()); // stdout closed (e.g. piped into head)
                    }
                    *at = r.offset + 1;
                }
                if !out.done() {
                    if let Some(next) = decoded.next_offset {
                        *at = (*at).max(next);
                    }
                }
            }
        }
        if w.flush().is_err() {
            return Ok(());
        }
        if refresh {
            std::thread::sleep(Duration::from_millis(100));
            let fresh = client.leaders(topic)?;
            leaders
                .iter_mut()
                .for_each(|(p, l)| *l = fresh.get(p).copied().unwrap_or(*l));
        }
    }
    let _ = w.flush();
    if let Some(m) = member.as_mut() {
        commit(m, topic, &pos, &mut committed)?;
    }
    Ok(())
}

/// Commits the positions that moved since the last commit.
fn commit(
    m: &mut Member,
    topic: &str,
    pos: &BTreeMap<i32, i64>,
    committed: &mut BTreeMap<i32, i64>,
) -> Result<(), String> {
    let moved: Vec<(i32, i64)> = pos
        .iter()
        .filter(|(p, o)| committed.get(p) != Some(o) && m.assigned().contains(p))
        .map(|(p, o)| (*p, *o))
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    let (group, generation, member_id) = (
        m.group().to_string(),
        m.generation(),
        m.member_id().to_string(),
    );
    m.conn()
        .offset_commit(&group, generation, &member_id, topic, &moved)?;
    committed.extend(moved);
    Ok(())
}

struct Output {
    format: Format,
    template: Template,
    topic: String,
    printed: u64,
    limit: Option<u64>,
}

impl Output {
    fn done(&self) -> bool {
        self.limit.is_some_and(|n| self.printed >= n)
    }

    /// Writes one record; false once stdout is closed.
    fn write(&mut self, w: &mut impl Write, partition: i32, r: &InRecord) -> Result<bool, String> {
        let ok = match self.format {
            Format::Json => {
                let text = |b: &Option<bytes::Bytes>| {
                    b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
                };
                let v = json!({
                    "topic": self.topic,
                    "partition": partition,
                    "offset": r.offset,
                    "timestamp": r.timestamp,
                    "key": text(&r.key),
                    "value": text(&r.value),
                    "headers": r.headers.iter().map(|(k, v)| json!({"key": k, "value": text(v)})).collect::<Vec<_>>(),
                });
                writeln!(w, "{v}").is_ok()
            }
            Format::Table => self.template.render(w, &self.topic, partition, r).is_ok(),
        };
        self.printed += 1;
        Ok(ok)
    }
}

/// A parsed `--template`.
struct Template(Vec<Piece>);

#[derive(Debug, PartialEq)]
enum Piece {
    Text(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
    KeySize,
    ValueSize,
}

impl Template {
    fn parse(s: &str) -> Template {
        let mut pieces = Vec::new();
        let mut text = Vec::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            let piece = match (c, chars.peek().copied()) {
                ('%', Some(n)) => {
                    let p = match n {
                        't' => Some(Piece::Topic),
                        'p' => Some(Piece::Partition),
                        'o' => Some(Piece::Offset),
                        'k' => Some(Piece::Key),
                        'v' => Some(Piece::Value),
                        'T' => Some(Piece::Timestamp),
                        'h' => Some(Piece::Headers),
                        'K' => Some(Piece::KeySize),
                        'S' => Some(Piece::ValueSize),
                        '%' => {
                            text.push(b'%');
                            None
                        }
                        _ => {
                            text.push(b'%');
                            text.extend(n.to_string().as_bytes());
                            None
                        }
                    };
                    chars.next();
                    p
                }
                ('\\', Some(n)) => {
                    match n {
                        'n' => text.push(b'\n'),
                        't' => text.push(b'\t'),
                        'r' => text.push(b'\r'),
                        '\\' => text.push(b'\\'),
                        _ => {
                            text.push(b'\\');
                            text.extend(n.to_string().as_bytes());
                        }
                    }
                    chars.next();
                    None
                }
                _ => {
                    let mut b = [0u8; 4];
                    text.extend(c.encode_utf8(&mut b).as_bytes());
                    None
                }
            };
            if let Some(p) = piece {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(p);
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Template(pieces)
    }

    fn render(
        &self,
        w: &mut impl Write,
        topic: &str,
        partition: i32,
        r: &InRecord,
    ) -> std::io::Result<()> {
        let bytes = |b: &Option<bytes::Bytes>| b.as_ref().map_or(&[][..], |b| &b[..]).to_vec();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => w.write_all(t)?,
                Piece::Topic => w.write_all(topic.as_bytes())?,
                Piece::Partition => write!(w, "{partition}")?,
                Piece::Offset => write!(w, "{}", r.offset)?,
                Piece::Key => w.write_all(&bytes(&r.key))?,
                Piece::Value => w.write_all(&bytes(&r.value))?,
                Piece::Timestamp => write!(w, "{}", r.timestamp)?,
                Piece::KeySize => write!(w, "{}", r.key.as_ref().map_or(-1, |k| k.len() as i64))?,
                Piece::ValueSize => {
                    write!(w, "{}", r.value.as_ref().map_or(-1, |v| v.len() as i64))?;
                }
                Piece::Headers => {
                    for (i, (k, v)) in r.headers.iter().enumerate() {
                        if i > 0 {
                            w.write_all(b",")?;
                        }
                        w.write_all(k.as_bytes())?;
                        w.write_all(b"=")?;
                        w.write_all(&bytes(v))?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse() {
        assert_eq!(parse_start("beginning").unwrap(), Start::Beginning);
        assert_eq!(parse_start("end").unwrap(), Start::End);
        assert_eq!(parse_start("42").unwrap(), Start::At(42));
        assert_eq!(parse_start("-3").unwrap(), Start::FromEnd(3));
        assert_eq!(parse_start("@1000").unwrap(), Start::Time(1000));
        assert!(parse_start("soon").is_err());
        assert!(parse_start("-x").is_err());
    }

    #[test]
    fn templates_render() {
        let r = InRecord {
            offset: 7,
            timestamp: 1234,
            key: Some("k".into()),
            value: Some("v".into()),
            headers: vec![("a".into(), Some("1".into())), ("b".into(), None)],
        };
        let mut out = Vec::new();
        Template::parse("%t/%p@%o %k=%v %T [%h] %K %S 100%% %x\\t\\n")
            .render(&mut out, "t", 2, &r)
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "t/2@7 k=v 1234 [a=1,b=] 1 1 100% %x\t\n"
        );
    }
}
