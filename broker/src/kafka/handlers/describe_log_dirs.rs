//! DescribeLogDirs (key 35): the broker has one log directory, its data directory. Each shard
//! reports the sizes of the user-topic partitions it owns; v4 adds the volume's total and
//! usable bytes. v0 arrives here as v1 (`api::WIRE_ALIASES`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::{str_bytes, Ctx, HandlerResult};
use crate::ids::{PartitionId, ShardId};
use crate::shard::{ShardOp, ShardReply};

/// Partitions by topic, as one shard is asked for them.
type TopicPartitions = Vec<(Arc<str>, Vec<i32>)>;

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: DescribeLogDirsRequest = ctx.decode(body)?;
    let shards = ctx.shard.table.shards();
    // Which shards to ask, and for what: every shard for all partitions, or each owner for its
    // own listed partitions (unknown ones are left out of the answer, as Kafka does).
    let asks: Vec<(ShardId, Option<TopicPartitions>)> = match &req.topics {
        None => (0..shards).map(|s| (ShardId(s), None)).collect(),
        Some(topics) => {
            let meta = ctx.shard.meta();
            let mut per_shard: BTreeMap<ShardId, BTreeMap<Arc<str>, Vec<i32>>> = BTreeMap::new();
            for t in topics {
                let name: Arc<str> = Arc::from(t.topic.0.as_str());
                for &p in &t.partitions {
                    if let Some(owner) = meta.owner(&name, PartitionId(p)) {
                        per_shard
                            .entry(owner)
                            .or_default()
                            .entry(name.clone())
                            .or_default()
                            .push(p);
                    }
                }
            }
            per_shard
                .into_iter()
                .map(|(s, topics)| (s, Some(topics.into_iter().collect())))
                .collect()
        }
    };
    let calls = asks
        .into_iter()
        .map(|(s, filter)| ctx.shard.call(s, ShardOp::LogDirSizes(filter)));
    // Sorted by topic, then partition; a partition listed twice is reported once.
    let mut sizes: BTreeMap<Arc<str>, BTreeMap<i32, u64>> = BTreeMap::new();
    for reply in futures::future::join_all(calls).await {
        if let ShardReply::LogDirSizes(parts) = reply {
            for (topic, p, bytes) in parts {
                sizes.entry(topic).or_default().insert(p, bytes);
            }
        }
    }

    let data_dir = &ctx.shard.config.data_dir;
    let mut dir = DescribeLogDirsResult::default();
    dir.log_dir = str_bytes(&absolute(data_dir));
    dir.topics = sizes
        .into_iter()
        .map(|(topic, parts)| {
            let mut t = DescribeLogDirsTopic::default();
            t.name = TopicName(str_bytes(&topic));
            t.partitions = parts
                .into_iter()
                .map(|(p, bytes)| {
                    let mut pr = DescribeLogDirsPartition::default();
                    pr.partition_index = p;
                    pr.partition_size = i64::try_from(bytes).unwrap_or(i64::MAX);
                    // A single node has no replica to lag behind and no future (moving) logs.
                    pr.offset_lag = 0;
                    pr.is_future_key = false;
                    pr
                })
                .collect();
            t
        })
        .collect();
    if ctx.version >= 4 {
        match volume_bytes(data_dir) {
            Ok((total, usable)) => {
                dir.total_bytes = total;
                dir.usable_bytes = usable;
            }
            Err(e) => {
                tracing::warn!("statvfs {}: {e}", data_dir.display());
                dir.total_bytes = -1;
                dir.usable_bytes = -1;
            }
        }
    }
    let mut resp = DescribeLogDirsResponse::default();
    resp.results = vec![dir];
    Ok(ctx.respond(&resp))
}

/// The data directory as an absolute path (made absolute against the working directory,
/// without resolving symbolic links, as Kafka reports it).
fn absolute(dir: &Path) -> String {
    std::path::absolute(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string()
}

/// (total, usable) bytes of the volume holding `dir`. `statvfs` reads file system counters
/// without I/O to the device, so it is called on the shard thread; this is a rare admin request.
fn volume_bytes(dir: &Path) -> std::io::Result<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte")
    })?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `st` points to
    // writable memory of the size of `statvfs`, which the call fills on success.
    if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    let frsize = u128::from(st.f_frsize);
    let clamp =
        |blocks: libc::fsblkcnt_t| i64::try_from(u128::from(blocks) * frsize).unwrap_or(i64::MAX);
    Ok((clamp(st.f_blocks), clamp(st.f_bavail)))
}
