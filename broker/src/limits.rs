//! Bounds of the broker, each with the reason for its value. Settings a user may change (Kafka's
//! names) start from the defaults in `config.rs`; the constants here are fixed.
//!
//! What a client can make the broker hold, and what bounds it, is summarised in
//! `docs/design.md` ("Memory model").

// ---------------------------------------------------------------------------------------------
// Connections and request bytes
//
// The settings (Kafka's names, defaults in `config.rs`): `max.connections` (10000) and
// `max.connections.per.ip` (1000) bound the connections, `connections.max.idle.ms` (10 min)
// closes quiet ones, `queued.max.request.bytes` (512 MiB, split evenly over the shards) bounds
// request bytes in flight, `queued.max.requests` (32) the requests of one connection, and
// `socket.request.max.bytes` (100 MiB) one frame.

/// A frame up to this size counts as small for the request budget: it fits in one read of the
/// connection's buffer (`strom_net::limits::READ_CHUNK_BYTES`). Large frames together may take
/// only three quarters of a shard's budget, so small requests (metadata, heartbeats, commits,
/// fetches, most produces) are still read while clients announce huge frames and stall.
pub const REQUEST_SMALL_BYTES_MAX: usize = strom_net::limits::READ_CHUNK_BYTES;

/// How long the body of a started request may make no progress (no byte arrives) before the
/// connection is closed. A request that has been charged to the budget holds its share until its
/// last byte arrives; a client that announces a frame and stops sending is broken or hostile,
/// and a live one on the slowest link still delivers bytes within this time. Kafka has only the
/// 10-minute idle timeout for this; 30 s bounds how long such a client holds budget.
pub const REQUEST_BODY_STALL_MS_MAX: u64 = 30_000;

/// Smallest `queued.max.request.bytes` per shard: one small request always fits.
pub const REQUEST_BUDGET_SHARD_BYTES_MIN: usize = 4 * REQUEST_SMALL_BYTES_MAX;

/// Requests in a row that touched only partitions of one other shard before a connection moves
/// to that shard (`kafka/affinity.rs`). Long enough that a client's first requests (metadata,
/// a few produces to several partitions) do not move it, short enough that a producer moves
/// within its first few milliseconds of traffic.
pub const CONNECTION_MIGRATE_STREAK: u32 = 8;

/// A connection moves to another shard at most once per this many ms, so a client whose
/// requests alternate between shards cannot make its connection bounce.
pub const CONNECTION_MIGRATE_INTERVAL_MS: u64 = 1_000;

/// Warnings about refused connections, at most one per shard per this many ms (a flood of
/// connections must not become a flood of log lines; the metric counts every one).
pub const CONNECTION_REFUSED_LOG_INTERVAL_MS: u64 = 10_000;

// ---------------------------------------------------------------------------------------------
// Shard mesh

/// Requests queued for one peer shard beyond its channel (`MESH_CHANNEL_CAPACITY`, 1024). The
/// outbox fills only while the peer does not drain its channel; the requests come from handler
/// tasks, whose number connections and `queued.max.requests` bound, so this is far above what a
/// healthy broker queues and a request that finds it full is answered `Unavailable` (a retriable
/// error for the client) rather than growing the queue.
pub const MESH_OUTBOX_REQUESTS_MAX: usize = 8192;

// ---------------------------------------------------------------------------------------------
// Consumer groups
//
// Checked where a request enters (`group/input.rs`), before it is forwarded, looked up or
// stored; the offsets-log encoder (`group/store.rs`) refuses anything its length fields cannot
// hold, as a second line. `group.max.size` (default 1000, `config.rs`) bounds the members, so
// one group holds at most about 2 GiB of protocols and assignments. A group's record must fit in
// one batch of the offsets log (1 GiB); one that does not fails its SyncGroup with
// UNKNOWN_SERVER_ERROR and is not stored, as Kafka fails a group whose record exceeds its offsets
// topic's `max.message.bytes` (1 MiB by default, for the whole group).

/// Longest group id, in UTF-8 bytes. Kafka keeps group ids in the keys of its offsets topic
/// (`OffsetCommitKey`, `GroupMetadataKey`) as classic strings with an `i16` length, so Kafka
/// cannot store a longer one either (its serializer throws "field is too long to be serialized"
/// and the request fails). Flexible request versions can carry longer ids: INVALID_GROUP_ID.
pub const GROUP_ID_BYTES_MAX: usize = i16::MAX as usize;

/// Longest `group.instance.id` (static membership), in bytes. Kafka's clients validate it as a
/// topic name (at most 249 characters, `JoinGroupRequest.validateGroupInstanceId`); Kafka's
/// broker does not check it. Only the length is bounded here (other clients may use other
/// characters); a longer one is INVALID_REQUEST, the code Kafka's broker gives an invalid
/// instance id in ConsumerGroupHeartbeat.
pub const GROUP_INSTANCE_ID_BYTES_MAX: usize = 249;

/// Longest prefix (client id, or instance id of a static member) of a member id Strom generates.
/// Member ids are opaque to clients, and a client id may be 32767 bytes; every member id is kept
/// in memory, in the group's record and in every JoinGroup and DescribeGroups answer. As long as
/// the longest instance id, so a static member's id shows its whole instance id.
pub const MEMBER_ID_PREFIX_BYTES_MAX: usize = GROUP_INSTANCE_ID_BYTES_MAX;

/// Bytes of the random part of a member id: a hyphenated UUID.
pub const MEMBER_ID_UUID_BYTES: usize = 36;

/// Longest member id Strom generates (prefix, `-`, UUID). A longer member id in a request cannot
/// name a member and is answered UNKNOWN_MEMBER_ID before any lookup.
pub const MEMBER_ID_BYTES_MAX: usize = MEMBER_ID_PREFIX_BYTES_MAX + 1 + MEMBER_ID_UUID_BYTES;

/// Most protocols (assignors) one member may offer in JoinGroup. Clients offer one per configured
/// assignor (two by default in Kafka's Java client and in librdkafka); every protocol vote of a
/// rebalance looks at each member's list, so the list must stay short. Kafka has no such bound:
/// INVALID_REQUEST.
pub const JOIN_PROTOCOLS_MAX: usize = 64;

/// Bytes of one member's JoinGroup protocols (protocol type, names and metadata together), kept
/// in memory and in the group's record while the member is in the group. A consumer's metadata
/// is its subscription: the topic names (at most 249 bytes each), the partitions it owns and
/// assignor user data (Kafka Streams sends per-task offset sums), so 1 MiB holds thousands of
/// topics. Kafka has no per-member bound (only its offsets topic's `max.message.bytes`, about
/// 1 MiB by default, for the record of the whole group): INVALID_REQUEST.
pub const JOIN_PROTOCOLS_BYTES_MAX: usize = 1 << 20;

/// Bytes of one member's assignment in the leader's SyncGroup, kept like the protocols. A
/// consumer's assignment lists its partitions; Kafka Streams adds the partitions of every host of
/// the application, which grows with the partition count, hence as generous as the metadata.
/// Kafka has no per-member bound: INVALID_REQUEST.
pub const SYNC_ASSIGNMENT_BYTES_MAX: usize = 1 << 20;

// A group id must fit the `u16` length of the offsets log's keys, and so must a topic name.
const _: () = assert!(GROUP_ID_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(strom_storage::limits::TOPIC_NAME_BYTES_MAX <= u16::MAX as usize);
// A static member's generated id keeps its whole instance id.
const _: () = assert!(MEMBER_ID_PREFIX_BYTES_MAX >= GROUP_INSTANCE_ID_BYTES_MAX);
// One member at every bound (with a client id of Kafka's longest, 32767 bytes) fits in one batch
// of the offsets log, so only the member count (`group.max.size`) decides whether a group's
// record does.
const _: () = assert!(
    (JOIN_PROTOCOLS_BYTES_MAX
        + SYNC_ASSIGNMENT_BYTES_MAX
        + MEMBER_ID_BYTES_MAX
        + GROUP_INSTANCE_ID_BYTES_MAX
        + i16::MAX as usize) as u64
        <= strom_storage::limits::BATCH_BYTES_MAX
);

/// Bytes of record data a follower asks a leader for in one Fetch, over all its partitions
/// (Kafka's `replica.fetch.response.max.bytes`, 10 MiB). The leader may add one whole batch
/// past it (KIP-74), so a follower reads at most this plus `BATCH_BYTES_MAX` per answer.
pub const REPLICA_FETCH_RESPONSE_BYTES_MAX: usize = 10 << 20;

/// How long a follower waits for a connection to its leader, and beyond its fetch's own wait
/// for an answer, before it drops the connection and tries again.
pub const REPLICA_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// How long a follower waits before it fetches again after an error or while it has nothing to
/// fetch (Kafka's `replica.fetch.backoff.ms` is 1 s; Strom retries faster on loopback-scale
/// clusters, bounded by the per-fetch wait on the leader).
pub const REPLICA_RETRY_MS: u64 = 100;
