//! `strom produce TOPIC`: one record per line of stdin.
//!
//! Lines are batched per partition and sent when a batch is full or stdin has nothing more
//! buffered, so piped input goes out in large batches and typed lines go out at once.

use std::collections::BTreeMap;
use std::io::BufRead;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};
use kafka_protocol::records::Compression;
use serde_json::json;
use strom_client::batch::{self, compression_from_name, OutRecord};
use strom_client::code_name;
use strom_client::conn::topic_name;
use strom_client::partitioner::partition_for_key;

use super::{key_value, print_json, Client, Common, Format, Progress};

/// Records per batch at most.
const BATCH_RECORDS: usize = 10_000;
/// Bytes of record data per batch at most (well under the default max.message.bytes).
const BATCH_BYTES: usize = 512 * 1024;
const PRODUCE: (i16, i16) = (3, 9);

/// `strom produce`: the topic, how lines become records, and how they are sent.
#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    /// Brokers, output format and timeout.
    #[command(flatten)]
    pub common: Common,
    /// Topic to write to.
    pub topic: String,
    /// Split each line at the first SEP into key and value (no SEP in a line: no key).
    #[arg(short = 'k', long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// A header for every record; repeatable.
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Write every record to this partition (default: by key hash, keyless batches rotate).
    #[arg(short, long)]
    pub partition: Option<i32>,
    /// Acknowledgements: all (-1), 1 or 0.
    #[arg(short, long, default_value = "all", allow_hyphen_values = true)]
    pub acks: String,
    /// Compression codec: none, gzip, snappy, lz4, zstd.
    #[arg(short = 'z', long, default_value = "none")]
    pub compression: String,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
}

struct Producer<'a> {
    client: &'a mut Client,
    topic: &'a str,
    leaders: BTreeMap<i32, i32>,
    acks: i16,
    compression: Compression,
    pending: BTreeMap<i32, Vec<OutRecord>>,
    pending_bytes: usize,
    /// Records acknowledged (or sent, with acks=0) per partition.
    sent: BTreeMap<i32, u64>,
    /// First offset written per partition (unknown with acks=0).
    first_offset: BTreeMap<i32, i64>,
    last_offset: BTreeMap<i32, i64>,
}

impl Producer<'_> {
    fn push(&mut self, partition: i32, r: OutRecord) -> Result<(), String> {
        self.pending_bytes +=
            r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len()) + 16;
        let batch = self.pending.entry(partition).or_default();
        batch.push(r);
        if batch.len() >= BATCH_RECORDS || self.pending_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends every pending batch, one Produce request per leader.
    fn flush(&mut self) -> Result<(), String> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let mut by_leader: BTreeMap<i32, Vec<(i32, Vec<OutRecord>)>> = BTreeMap::new();
        for (p, recs) in pending {
            let leader = *self
                .leaders
                .get(&p)
                .ok_or_else(|| format!("{}/{p}: no such partition", self.topic))?;
            by_leader.entry(leader).or_default().push((p, recs));
        }
        for (leader, parts) in by_leader {
            let mut td = TopicProduceData::default();
            td.name = topic_name(self.topic);
            let counts: Vec<(i32, usize)> = parts.iter().map(|(p, r)| (*p, r.len())).collect();
            for (p, recs) in &parts {
                let mut pd = PartitionProduceData::default();
                pd.index = *p;
                pd.records = Some(batch::encode(recs, self.compression)?);
                td.partition_data.push(pd);
            }
            let mut req = ProduceRequest::default();
            req.acks = self.acks;
            req.timeout_ms = self.client.timeout.as_millis() as i32;
            req.topic_data = vec![td];
            let v = self.client.version(ApiKey::Produce, PRODUCE)?;
            let conn = self.client.conn_to_node(leader)?;
            let id = conn.send(ApiKey::Produce, v, &req)?;
            if self.acks != 0 {
                let resp: ProduceResponse = conn.recv(ApiKey::Produce, v, id)?;
                for pr in resp.responses.iter().flat_map(|t| &t.partition_responses) {
                    if pr.error_code != 0 {
                        let msg = pr
                            .error_message
                            .as_ref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default();
                        return Err(format!(
                            "producing to {}/{}: {}{msg}",
                            self.topic,
                            pr.index,
                            code_name(pr.error_code)
                        ));
                    }
                    let n = counts
                        .iter()
                        .find(|(p, _)| *p == pr.index)
                        .map_or(0, |(_, n)| *n) as i64;
                    self.first_offset.entry(pr.index).or_insert(pr.base_offset);
                    self.last_offset.insert(pr.index, pr.base_offset + n - 1);
                }
            }
            for (p, n) in counts {
                *self.sent.entry(p).or_default() += n as u64;
            }
        }
        Ok(())
    }
}

/// Runs `strom produce`: reads stdin line by line and produces one record per line.
pub fn run(args: ProduceArgs) -> Result<(), String> {
    let acks: i16 = match args.acks.as_str() {
        "all" | "-1" => -1,
        "1" => 1,
        "0" => 0,
        other => return Err(format!("--acks must be all, -1, 1 or 0, not {other:?}")),
    };
    let compression = compression_from_name(&args.compression)?;
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|h| key_value(h).map(|(k, v)| (k, Some(Bytes::from(v)))))
        .collect::<Result<_, _>>()?;
    if args.key_separator.as_deref() == Some("") {
        return Err("--key-separator must not be empty".into());
    }
    let mut client = Client::connect(&args.common)?;
    let leaders = client.leaders(&args.topic)?;
    let partitions = leaders.len() as i32;
    if let Some(p) = args.partition {
        if !leaders.contains_key(&p) {
            return Err(format!(
                "topic {} has no partition {p} (it has {partitions})",
                args.topic
            ));
        }
    }
    let mut producer = Producer {
        client: &mut client,
        topic: &args.topic,
        leaders,
        acks,
        compression,
        pending: BTreeMap::new(),
        pending_bytes: 0,
        sent: BTreeMap::new(),
        first_offset: BTreeMap::new(),
        last_offset: BTreeMap::new(),
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    let mut keyless_partition = 0;
    let mut total: u64 = 0;
    let mut progress = Progress::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading stdin: {e}"))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let (key, value) = split_key(&line, args.key_separator.as_deref());
        let partition = match (args.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, partitions),
            (None, None) => keyless_partition,
        };
        let record = OutRecord {
            key,
            value: Some(value),
            headers: headers.clone(),
            timestamp: crate::now_ms(),
        };
        producer.push(partition, record)?;
        total += 1;
        // Nothing more buffered: send now rather than wait for a full batch.
        if input.fill_buf().map(|b| b.is_empty()).unwrap_or(true) {
            producer.flush()?;
            keyless_partition = (keyless_partition + 1) % partitions.max(1);
        }
        progress.update(|| format!("produced {total} record(s) to {}", args.topic));
    }
    producer.flush()?;
    progress.finish();
    let Producer {
        sent,
        first_offset,
        last_offset,
        ..
    } = producer;
    match args.common.format {
        Format::Json => print_json(&json!({
            "topic": args.topic,
            "records": total,
            "partitions": sent.iter().map(|(p, n)| json!({
                "partition": p,
                "records": n,
                "first_offset": first_offset.get(p),
                "last_offset": last_offset.get(p),
            })).collect::<Vec<_>>(),
        })),
        Format::Table if !args.quiet => {
            eprintln!(
                "produced {total} record(s) to {} ({} partition(s))",
                args.topic,
                sent.len()
            );
        }
        Format::Table => {}
    }
    Ok(())
}

/// Key and value of a line: split at the first `sep` when given and present.
fn split_key(line: &[u8], sep: Option<&str>) -> (Option<Bytes>, Bytes) {
    if let Some(sep) = sep {
        let sep = sep.as_bytes();
        if let Some(i) = line.windows(sep.len()).position(|w| w == sep) {
            return (
                Some(Bytes::copy_from_slice(&line[..i])),
                Bytes::copy_from_slice(&line[i + sep.len()..]),
            );
        }
    }
    (None, Bytes::copy_from_slice(line))
}

#[cfg(test)]
mod tests {
    use super::split_key;

    #[test]
    fn keys_split_at_the_first_separator() {
        assert_eq!(
            split_key(b"k:v:w", Some(":")),
            (Some("k".into()), "v:w".into())
        );
        assert_eq!(split_key(b"novalue", Some(":")), (None, "novalue".into()));
        assert_eq!(
            split_key(b"a::b", Some("::")),
            (Some("a".into()), "b".into())
        );
        assert_eq!(split_key(b"k:v", None), (None, "k:v".into()));
        assert_eq!(split_key(b":v", Some(":")), (Some("".into()), "v".into()));
    }
}
