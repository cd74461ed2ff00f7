//! `strom group list|describe|delete|reset-offsets`.

use std::collections::BTreeMap;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, DeleteGroupsRequest, DeleteGroupsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, GroupId, ListGroupsRequest, ListGroupsResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
};
use kafka_protocol::protocol::Decodable;
use serde_json::{json, Value};
use strom_client::code_name;
use strom_client::conn::{str_bytes, topic_name};

use super::time::parse_datetime_ms;
use super::{print_json, print_table, Client, Common, Format, Progress};

const OFFSET_FETCH: (i16, i16) = (8, 8);
const OFFSET_COMMIT: (i16, i16) = (2, 8);
const DESCRIBE_GROUPS: (i16, i16) = (0, 5);

/// `strom group`: options and the action to run.
#[derive(clap::Args, Debug)]
pub struct GroupCmd {
    /// Brokers, output format and timeout.
    #[command(flatten)]
    pub common: Common,
    /// What to do with consumer groups.
    #[command(subcommand)]
    pub action: GroupAction,
}

/// The `strom group` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum GroupAction {
    /// List consumer groups.
    List,
    /// Members, committed offsets and lag per partition.
    Describe {
        /// Group ids.
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Delete groups (they must have no members).
    Delete {
        /// Group ids.
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Move a group's committed offsets (the group must have no members).
    #[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"])))]
    ResetOffsets {
        /// Group id.
        group: String,
        /// TOPIC or TOPIC:P1,P2; repeatable.
        #[arg(short, long = "topic", required_unless_present = "all_topics")]
        topics: Vec<String>,
        /// Every topic the group has committed offsets for.
        #[arg(long, conflicts_with = "topics")]
        all_topics: bool,
        /// To each partition's log start offset.
        #[arg(long)]
        to_earliest: bool,
        /// To each partition's end (high watermark).
        #[arg(long)]
        to_latest: bool,
        /// To this offset (clamped to what the log holds).
        #[arg(long, value_name = "N")]
        to_offset: Option<i64>,
        /// To the first record at or after this time (Unix ms or YYYY-MM-DDTHH:MM:SS[Z]).
        #[arg(long, value_name = "TIME")]
        to_datetime: Option<String>,
        /// By N (negative: back) from the committed offset.
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        shift_by: Option<i64>,
        /// Show the new offsets without committing them.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs one `strom group` action against the group coordinators and prints its outcome.
pub fn run(cmd: GroupCmd) -> Result<(), String> {
    let mut c = Client::connect(&cmd.common)?;
    let format = cmd.common.format;
    match cmd.action {
        GroupAction::List => list(&mut c, format),
        GroupAction::Describe { groups } => describe(&mut c, format, &groups),
        GroupAction::Delete { groups } => delete(&mut c, format, &groups),
        GroupAction::ResetOffsets {
            group,
            topics,
            all_topics,
            to_earliest,
            to_latest,
            to_offset,
            to_datetime,
            shift_by,
            dry_run,
        } => {
            let to = if to_earliest {
                Target::Earliest
            } else if to_latest {
                Target::Latest
            } else if let Some(o) = to_offset {
                Target::Offset(o)
            } else if let Some(t) = to_datetime {
                Target::Time(parse_datetime_ms(&t)?)
            } else {
                Target::Shift(shift_by.expect("clap requires one target"))
            };
            reset(&mut c, format, &group, &topics, all_topics, to, dry_run)
        }
    }
}

fn list(c: &mut Client, format: Format) -> Result<(), String> {
    let brokers: Vec<i32> = c
        .metadata(Some(&[]))?
        .brokers
        .iter()
        .map(|b| b.node_id.0)
        .collect();
    let mut groups = Vec::new();
    for b in brokers {
        let resp: ListGroupsResponse = c.call(
            Some(b),
            ApiKey::ListGroups,
            (0, 4),
            &ListGroupsRequest::default(),
        )?;
        if resp.error_code != 0 {
            return Err(format!(
                "ListGroups on broker {b}: {}",
                code_name(resp.error_code)
            ));
        }
        for g in resp.groups {
            groups.push((
                g.group_id.to_string(),
                g.group_state.to_string(),
                g.protocol_type.to_string(),
                b,
            ));
        }
    }
    groups.sort();
    match format {
        Format::Json => print_json(&Value::Array(
            groups.iter().map(|(g, s, p, b)| json!({"group": g, "state": s, "protocol_type": p, "coordinator": b})).collect(),
        )),
        Format::Table => print_table(
            &["GROUP", "STATE", "PROTOCOL-TYPE", "COORDINATOR"],
            &groups.iter().map(|(g, s, p, b)| vec![g.clone(), s.clone(), p.clone(), b.to_string()]).collect::<Vec<_>>(),
        ),
    }
    Ok(())
}

/// A member as DescribeGroups tells it.
struct GroupMember {
    id: String,
    client_id: String,
    host: String,
    assigned: Vec<(String, i32)>,
}

/// A partition's committed offset and the member it is assigned to, when any.
type PartitionRow<'a> = (Option<i64>, Option<&'a GroupMember>);

struct Described {
    state: String,
    protocol: String,
    members: Vec<GroupMember>,
}

fn describe_one(c: &mut Client, coordinator: i32, group: &str) -> Result<Described, String> {
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![GroupId(str_bytes(group))];
    let resp: DescribeGroupsResponse = c.call(
        Some(coordinator),
        ApiKey::DescribeGroups,
        DESCRIBE_GROUPS,
        &req,
    )?;
    let g = resp
        .groups
        .into_iter()
        .next()
        .ok_or("DescribeGroups: no group in the response")?;
    if g.error_code != 0 {
        return Err(format!(
            "describing group {group}: {}",
            code_name(g.error_code)
        ));
    }
    let members = g
        .members
        .into_iter()
        .map(|m| GroupMember {
            id: m.member_id.to_string(),
            client_id: m.client_id.to_string(),
            host: m.client_host.to_string(),
            assigned: assignment(m.member_assignment),
        })
        .collect();
    Ok(Described {
        state: g.group_state.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
    })
}

/// The (topic, partition) pairs of a consumer-protocol assignment; empty if it is not one.
fn assignment(mut b: Bytes) -> Vec<(String, i32)> {
    if b.remaining() < 2 {
        return Vec::new();
    }
    let version = b.get_i16().clamp(0, 3);
    let Ok(a) = ConsumerProtocolAssignment::decode(&mut b, version) else {
        return Vec::new();
    };
    a.assigned_partitions
        .iter()
        .flat_map(|tp| {
            tp.partitions
                .iter()
                .map(move |p| (tp.topic.to_string(), *p))
        })
        .collect()
}

/// Every committed offset of `group`: topic → partition → offset.
fn committed(
    c: &mut Client,
    coordinator: i32,
    group: &str,
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>, String> {
    let mut g = OffsetFetchRequestGroup::default();
    g.group_id = GroupId(str_bytes(group));
    g.topics = None;
    let mut req = OffsetFetchRequest::default();
    req.groups = vec![g];
    let resp: OffsetFetchResponse =
        c.call(Some(coordinator), ApiKey::OffsetFetch, OFFSET_FETCH, &req)?;
    let g = resp
        .groups
        .into_iter()
        .next()
        .ok_or("OffsetFetch: no group in the response")?;
    if g.error_code != 0 {
        return Err(format!(
            "reading the offsets of group {group}: {}",
            code_name(g.error_code)
        ));
    }
    let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for t in g.topics {
        for p in t.partitions {
            if p.error_code == 0 && p.committed_offset >= 0 {
                out.entry(t.name.to_string())
                    .or_default()
                    .insert(p.partition_index, p.committed_offset);
            }
        }
    }
    Ok(out)
}

fn describe(c: &mut Client, format: Format, groups: &[String]) -> Result<(), String> {
    let mut json_groups = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let coordinator = c.coordinator(group)?;
        let d = describe_one(c, coordinator, group)?;
        let offsets = committed(c, coordinator, group)?;
        // Partitions to show: committed ones and assigned ones.
        let mut rows: BTreeMap<(String, i32), PartitionRow<'_>> = BTreeMap::new();
        for (t, parts) in &offsets {
            for (p, o) in parts {
                rows.insert((t.clone(), *p), (Some(*o), None));
            }
        }
        for m in &d.members {
            for (t, p) in &m.assigned {
                rows.entry((t.clone(), *p)).or_insert((None, None)).1 = Some(m);
            }
        }
        let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        let topics: Vec<String> = rows
            .keys()
            .map(|(t, _)| t.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for t in topics {
            // A topic deleted since the commit has no end to compare with.
            if let Ok(leaders) = c.leaders(&t) {
                ends.insert(t.clone(), c.offsets(&t, &leaders, -1)?);
            }
        }
        let mut total_lag = 0;
        let parts: Vec<Value> = rows
            .iter()
            .map(|((t, p), (o, m))| {
                let end = ends.get(t).and_then(|e| e.get(p)).copied();
                let lag = match (o, end) {
                    (Some(o), Some(e)) => Some((e - o).max(0)),
                    (None, Some(_)) => None,
                    _ => None,
                };
                total_lag += lag.unwrap_or(0);
                json!({
                    "topic": t, "partition": p, "current_offset": o, "log_end_offset": end, "lag": lag,
                    "member_id": m.map(|m| m.id.clone()), "client_id": m.map(|m| m.client_id.clone()), "host": m.map(|m| m.host.clone()),
                })
            })
            .collect();
        match format {
            Format::Json => json_groups.push(json!({
                "group": group, "coordinator": coordinator, "state": d.state, "protocol": d.protocol,
                "members": d.members.len(), "total_lag": total_lag, "partitions": parts,
            })),
            Format::Table => {
                if i > 0 {
                    println!();
                }
                print_table(
                    &["GROUP", "COORDINATOR", "STATE", "PROTOCOL", "MEMBERS", "TOTAL-LAG"],
                    &[vec![
                        group.clone(),
                        coordinator.to_string(),
                        d.state.clone(),
                        d.protocol.clone(),
                        d.members.len().to_string(),
                        total_lag.to_string(),
                    ]],
                );
                if !parts.is_empty() {
                    println!();
                    let cell = |v: &Value| match v {
                        Value::Null => "-".to_string(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let cols = ["topic", "partition", "current_offset", "log_end_offset", "lag", "member_id", "client_id", "host"];
                    print_table(
                        &["TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "MEMBER-ID", "CLIENT-ID", "HOST"],
                        &parts.iter().map(|r| cols.iter().map(|k| cell(&r[*k])).collect()).collect::<Vec<_>>(),
                    );
                }
            }
        }
    }
    if format == Format::Json {
        print_json(&Value::Array(json_groups));
    }
    Ok(())
}

fn delete(c: &mut Client, format: Format, groups: &[String]) -> Result<(), String> {
    let mut rows = Vec::new();
    for group in groups {
        let coordinator = c.coordinator(group)?;
        let mut req = DeleteGroupsRequest::default();
        req.groups_names = vec![GroupId(str_bytes(group))];
        let resp: DeleteGroupsResponse =
            c.call(Some(coordinator), ApiKey::DeleteGroups, (0, 2), &req)?;
        let code = resp.results.first().map_or(0, |r| r.error_code);
        rows.push((
            group.clone(),
            match code {
                0 => Ok("deleted".to_string()),
                68 => Err(format!("group {group} still has members; stop them first")),
                69 => Err(format!("group {group} does not exist")),
                e => Err(format!("deleting group {group}: {}", code_name(e))),
            },
        ));
    }
    match format {
        Format::Json => print_json(&Value::Array(
            rows.iter()
                .map(|(g, r)| match r {
                    Ok(_) => json!({"group": g, "ok": true}),
                    Err(e) => json!({"group": g, "ok": false, "error": e}),
                })
                .collect(),
        )),
        Format::Table => print_table(
            &["GROUP", "STATUS"],
            &rows
                .iter()
                .map(|(g, r)| {
                    vec![
                        g.clone(),
                        r.clone().unwrap_or_else(|e| format!("ERROR: {e}")),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
    }
    match rows.iter().find_map(|(_, r)| r.as_ref().err()) {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Earliest,
    Latest,
    Offset(i64),
    Time(i64),
    Shift(i64),
}

fn reset(
    c: &mut Client,
    format: Format,
    group: &str,
    topics: &[String],
    all_topics: bool,
    to: Target,
    dry_run: bool,
) -> Result<(), String> {
    let coordinator = c.coordinator(group)?;
    let d = describe_one(c, coordinator, group)?;
    if !d.members.is_empty() {
        return Err(format!(
            "group {group} has {} active member(s) (state {}); stop its consumers before resetting offsets",
            d.members.len(),
            d.state
        ));
    }
    let current = committed(c, coordinator, group)?;
    // topic → partitions to move.
    let mut wanted: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    if all_topics {
        if current.is_empty() {
            return Err(format!(
                "group {group} has no committed offsets; name the topics with --topic"
            ));
        }
        for (t, parts) in &current {
            wanted.insert(t.clone(), parts.keys().copied().collect());
        }
    }
    for spec in topics {
        let (t, parts) = match spec.split_once(':') {
            Some((t, ps)) => {
                let parts = ps
                    .split(',')
                    .map(|p| {
                        p.trim()
                            .parse::<i32>()
                            .map_err(|_| format!("bad partition list in {spec:?}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (t.to_string(), Some(parts))
            }
            None => (spec.clone(), None),
        };
        let leaders = c.leaders(&t)?;
        let parts = match parts {
            Some(ps) => {
                if let Some(p) = ps.iter().find(|p| !leaders.contains_key(p)) {
                    return Err(format!(
                        "topic {t} has no partition {p} (it has {})",
                        leaders.len()
                    ));
                }
                ps
            }
            None => leaders.keys().copied().collect(),
        };
        wanted.insert(t, parts);
    }
    let mut plan: Vec<(String, i32, Option<i64>, i64)> = Vec::new();
    let mut progress = Progress::new();
    for (t, parts) in &wanted {
        let leaders: BTreeMap<i32, i32> = c
            .leaders(t)?
            .into_iter()
            .filter(|(p, _)| parts.contains(p))
            .collect();
        let start = c.offsets(t, &leaders, -2)?;
        let end = c.offsets(t, &leaders, -1)?;
        let at_time = match to {
            Target::Time(ms) => Some(c.offsets(t, &leaders, ms)?),
            _ => None,
        };
        for p in parts {
            let old = current.get(t).and_then(|m| m.get(p)).copied();
            let (lo, hi) = (start[p], end[p]);
            let new = match to {
                Target::Earliest => lo,
                Target::Latest => hi,
                Target::Offset(o) => o,
                Target::Time(_) => at_time
                    .as_ref()
                    .and_then(|m| m.get(p))
                    .copied()
                    .filter(|o| *o >= 0)
                    .unwrap_or(hi),
                Target::Shift(n) => old.unwrap_or(lo) + n,
            };
            plan.push((t.clone(), *p, old, new.clamp(lo, hi)));
        }
        progress.update(|| format!("planned {} partition(s)", plan.len()));
    }
    progress.finish();
    if !dry_run {
        let mut by_topic: BTreeMap<&str, Vec<(i32, i64)>> = BTreeMap::new();
        for (t, p, _, new) in &plan {
            by_topic.entry(t.as_str()).or_default().push((*p, *new));
        }
        let mut req = OffsetCommitRequest::default();
        req.group_id = GroupId(str_bytes(group));
        req.generation_id_or_member_epoch = -1;
        req.member_id = str_bytes("");
        req.retention_time_ms = -1;
        req.topics = by_topic
            .iter()
            .map(|(t, parts)| {
                let mut ot = OffsetCommitRequestTopic::default();
                ot.name = topic_name(t);
                ot.partitions = parts
                    .iter()
                    .map(|(p, o)| {
                        let mut op = OffsetCommitRequestPartition::default();
                        op.partition_index = *p;
                        op.committed_offset = *o;
                        op.committed_leader_epoch = -1;
                        op
                    })
                    .collect();
                ot
            })
            .collect();
        let resp: OffsetCommitResponse =
            c.call(Some(coordinator), ApiKey::OffsetCommit, OFFSET_COMMIT, &req)?;
        for t in &resp.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(format!(
                        "committing {group} {}/{}: {}",
                        t.name.as_str(),
                        p.partition_index,
                        code_name(p.error_code)
                    ));
                }
            }
        }
    }
    match format {
        Format::Json => print_json(&json!({
            "group": group,
            "dry_run": dry_run,
            "partitions": plan.iter().map(|(t, p, old, new)| json!({"topic": t, "partition": p, "old_offset": old, "new_offset": new})).collect::<Vec<_>>(),
        })),
        Format::Table => {
            print_table(
                &["GROUP", "TOPIC", "PARTITION", "OLD-OFFSET", "NEW-OFFSET"],
                &plan
                    .iter()
                    .map(|(t, p, old, new)| {
                        vec![
                            group.to_string(),
                            t.clone(),
                            p.to_string(),
                            old.map_or("-".into(), |o| o.to_string()),
                            new.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            if dry_run {
                eprintln!("dry run: nothing was committed");
            }
        }
    }
    Ok(())
}
