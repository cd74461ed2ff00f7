//! The settings of a multi-node cluster, with Kafka's names: the controller quorum
//! (`controller.quorum.voters`), the controller and replication listeners, and replication's
//! timing. An empty `controller.quorum.voters` is single-node mode, in which
//! [`BrokerConfig::cluster`](super::BrokerConfig::cluster) is `None` and these settings are only
//! checked for well-formed values.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::listeners::{self, Endpoint, Listeners};
use super::{parse, positive, ConfigError};

/// A member of the controller quorum, from `controller.quorum.voters` (`id@host:port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    /// The voter's `node.id`.
    pub id: i32,
    /// Where its controller listener is reached (IPv6 without brackets).
    pub host: String,
    /// Its controller listener's port.
    pub port: u16,
}
impl Voter {
    /// The voter's controller address. A host name is looked up with the system's blocking
    /// resolver, so call this at startup or on a thread that may block, never on a shard.
    pub fn socket_addr(&self) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        use std::net::ToSocketAddrs;
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("voter {}: {} has no address", self.id, self.host),
                )
            })
    }
}

/// Where clients and other nodes reach one of this node's listeners (`advertised.listeners`,
/// or the listen address when not given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertisedListener {
    /// The listener's name (`PLAINTEXT`, `CONTROLLER`, `REPLICATION`, ...).
    pub name: String,
    /// Host or IP given to peers (IPv6 without brackets).
    pub host: String,
    /// Port given to peers; for the replication listener, the port of shard 0.
    pub port: u16,
}

/// The settings of a node in a multi-node cluster (Kafka's names in the comments).
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// `node.id`: this node, one of the voters.
    pub node_id: i32,
    /// `controller.quorum.voters`, in the order given; every node is a voter.
    pub voters: Vec<Voter>,
    /// Name of the client listener (the one named PLAINTEXT, or else the first other one).
    pub client_listener: String,
    /// Name of the controller listener (the first of `controller.listener.names`).
    #[allow(
        dead_code,
        reason = "the quorum binds `controller_listen`; the name is checked by the config tests"
    )]
    pub controller_listener: String,
    /// Where the controller's Raft traffic is served.
    pub controller_listen: SocketAddr,
    /// Name of the replication listener (`inter.broker.listener.name`).
    pub replication_listener: String,
    /// Where shard 0 serves replication; shard i listens on this port + i (see
    /// [`ClusterSettings::replication_listen_of_shard`]).
    pub replication_listen: SocketAddr,
    /// The advertised endpoints of the client, controller and replication listeners, in that
    /// order.
    pub advertised: Vec<AdvertisedListener>,
    /// `broker.rack`: the rack (or zone) of this node, for rack-aware replica placement.
    pub rack: Option<String>,
    /// `default.replication.factor`: replicas of a topic created without a factor.
    pub default_replication_factor: i16,
    /// `offsets.topic.replication.factor`, capped at the number of voters.
    pub offsets_replication_factor: i16,
    /// `replica.lag.time.max.ms`: a follower that has not caught up for this long leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// `replica.fetch.wait.max.ms`: longest wait of a follower's fetch for new records.
    pub replica_fetch_wait_max_ms: i64,
    /// `replica.fetch.max.bytes`: record bytes a follower asks for per partition and fetch.
    pub replica_fetch_max_bytes: i32,
    /// `broker.heartbeat.interval.ms`: how often the node heartbeats to the controller.
    pub heartbeat_interval_ms: u64,
    /// `broker.session.timeout.ms`: a node without a heartbeat for this long is fenced.
    pub session_timeout_ms: u64,
    /// `auto.leader.rebalance.enable`: the controller gives partitions back to their preferred
    /// leader (first replica) once it is live and in sync again.
    pub auto_leader_rebalance: bool,
    /// `leader.imbalance.check.interval.seconds`, in ms: how often the controller looks.
    pub leader_imbalance_check_interval_ms: u64,
    /// `controlled.shutdown.enable`: SIGTERM or SIGINT first moves this node's leaderships
    /// to other in-sync replicas, then stops.
    pub controlled_shutdown: bool,
    /// `controlled.shutdown.timeout.ms`: the longest a stop waits for that.
    pub controlled_shutdown_timeout_ms: u64,
}
impl ClusterSettings {
    /// Where shard `shard` serves replication: a partition's replicas use the same shard on
    /// every node, so shard i of each node talks only to shard i of its peers, each on its own
    /// port (the replication listener's port + i).
    pub fn replication_listen_of_shard(&self, shard: usize) -> SocketAddr {
        let mut addr = self.replication_listen;
        addr.set_port(port_of_shard(addr.port(), shard));
        addr
    }

    /// The advertised listener named `name`. (Peers find a node's replication address in its
    /// registration, `shard/replication/fetcher.rs`; the tests check it here.)
    #[cfg(test)]
    pub fn advertised_listener(&self, name: &str) -> Option<&AdvertisedListener> {
        self.advertised.iter().find(|a| a.name == name)
    }

    /// Where peers reach shard `shard` of this node for replication (the advertised
    /// replication port + `shard`).
    #[cfg(test)]
    pub fn replication_advertised_of_shard(&self, shard: usize) -> (&str, u16) {
        let a = self
            .advertised_listener(&self.replication_listener)
            .expect("load advertises the replication listener in cluster mode");
        (a.host.as_str(), port_of_shard(a.port, shard))
    }
}

/// `base + shard`; load checked that the range of every shard fits.
fn port_of_shard(base: u16, shard: usize) -> u16 {
    u16::try_from(shard)
        .ok()
        .and_then(|s| base.checked_add(s))
        .expect("load checks that base + shard fits a port for every shard")
}

fn invalid(key: &str, value: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        msg: msg.into(),
    }
}

/// `controller.listener.names` (the first is the one used) and `inter.broker.listener.name`,
/// upper-cased as Kafka normalises listener names.
pub(super) struct ListenerNames {
    pub controller: Vec<String>,
    pub replication: String,
}

impl ListenerNames {
    pub fn parse(raw: &BTreeMap<String, String>) -> ListenerNames {
        ListenerNames {
            controller: raw["controller.listener.names"]
                .split(',')
                .map(|n| n.trim().to_ascii_uppercase())
                .filter(|n| !n.is_empty())
                .collect(),
            replication: raw["inter.broker.listener.name"]
                .trim()
                .to_ascii_uppercase(),
        }
    }

    /// Names of the listeners that never serve clients.
    pub fn not_client(&self) -> Vec<&str> {
        self.controller
            .iter()
            .map(String::as_str)
            .chain(Some(self.replication.as_str()).filter(|n| !n.is_empty()))
            .collect()
    }
}

/// What `BrokerConfig::load` knows by the time the cluster settings are read.
pub(super) struct Context<'a> {
    pub raw: &'a BTreeMap<String, String>,
    pub names: &'a ListenerNames,
    pub listeners: &'a Listeners,
    /// The resolved client listen address.
    pub client_listen: SocketAddr,
    /// `advertised.listeners`, parsed.
    pub advertised: &'a [Endpoint],
    pub node_id: i32,
    pub cores: usize,
    pub admin_listen: Option<SocketAddr>,
}

/// `controller.quorum.voters`: `id@host:port,...`; empty is single-node mode.
fn parse_voters(value: &str) -> Result<Vec<Voter>, ConfigError> {
    const KEY: &str = "controller.quorum.voters";
    let mut voters: Vec<Voter> = Vec::new();
    if value.trim().is_empty() {
        return Ok(voters);
    }
    for entry in value.split(',').map(str::trim) {
        let (id, addr) = entry
            .split_once('@')
            .ok_or_else(|| invalid(KEY, value, format!("`{entry}` is not id@host:port")))?;
        let id: i32 = id
            .trim()
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| invalid(KEY, value, format!("`{id}` is not a node id (>= 0)")))?;
        let (host, port) = listeners::host_port(KEY, value, addr.trim())?;
        if listeners::is_unspecified(&host) || port == 0 {
            return Err(invalid(
                KEY,
                value,
                format!("voter {id}: {addr} is not an address peers can connect to"),
            ));
        }
        if voters.iter().any(|v| v.id == id) {
            return Err(invalid(
                KEY,
                value,
                format!("voter id {id} is listed twice"),
            ));
        }
        if let Some(v) = voters.iter().find(|v| v.host == host && v.port == port) {
            return Err(invalid(
                KEY,
                value,
                format!("voters {} and {id} have the same address", v.id),
            ));
        }
        voters.push(Voter { id, host, port });
    }
    Ok(voters)
}

/// A replication factor (`i16`, at least 1).
fn replication_factor(raw: &BTreeMap<String, String>, key: &str) -> Result<i16, ConfigError> {
    positive(raw, key)
}

/// Reads and checks the cluster settings; `None` in single-node mode. Settings that single-node
/// mode ignores are still checked for well-formed values, so a typo does not wait for the day
/// the node joins a cluster.
pub(super) fn load(
    ctx: &Context<'_>,
    warnings: &mut Vec<String>,
) -> Result<Option<ClusterSettings>, ConfigError> {
    let raw = ctx.raw;
    let bootstrap = raw["controller.quorum.bootstrap.servers"].trim();
    if !bootstrap.is_empty() {
        return Err(invalid(
            "controller.quorum.bootstrap.servers",
            bootstrap,
            "dynamic quorum membership is not supported; list the voters in controller.quorum.voters (static membership)",
        ));
    }
    let unclean: bool = parse(raw, "unclean.leader.election.enable")?;
    if unclean {
        return Err(invalid(
            "unclean.leader.election.enable",
            "true",
            super::topic::UNCLEAN_ELECTION_REFUSED,
        ));
    }
    let voters = parse_voters(&raw["controller.quorum.voters"])?;
    let default_replication_factor = replication_factor(raw, "default.replication.factor")?;
    let offsets_replication_factor = replication_factor(raw, "offsets.topic.replication.factor")?;
    let replica_lag_time_max_ms: i64 = positive(raw, "replica.lag.time.max.ms")?;
    let replica_fetch_wait_max_ms: i64 = positive(raw, "replica.fetch.wait.max.ms")?;
    if replica_fetch_wait_max_ms >= replica_lag_time_max_ms {
        // As in Kafka: a follower waiting that long on an idle partition would drop out of the
        // ISR between fetches.
        return Err(invalid(
            "replica.fetch.wait.max.ms",
            replica_fetch_wait_max_ms.to_string(),
            "must be less than replica.lag.time.max.ms",
        ));
    }
    let replica_fetch_max_bytes: i32 = positive(raw, "replica.fetch.max.bytes")?;
    let heartbeat_interval_ms: u64 = positive(raw, "broker.heartbeat.interval.ms")?;
    let session_timeout_ms: u64 = positive(raw, "broker.session.timeout.ms")?;
    if session_timeout_ms <= heartbeat_interval_ms {
        return Err(invalid(
            "broker.session.timeout.ms",
            session_timeout_ms.to_string(),
            format!(
                "must be greater than broker.heartbeat.interval.ms ({heartbeat_interval_ms}), or one late heartbeat fences the node"
            ),
        ));
    }
    let auto_leader_rebalance: bool = parse(raw, "auto.leader.rebalance.enable")?;
    let leader_imbalance_check_interval_s: u64 =
        positive(raw, "leader.imbalance.check.interval.seconds")?;
    let controlled_shutdown: bool = parse(raw, "controlled.shutdown.enable")?;
    let controlled_shutdown_timeout_ms: u64 = positive(raw, "controlled.shutdown.timeout.ms")?;
    let rack = Some(raw["broker.rack"].trim())
        .filter(|r| !r.is_empty())
        .map(str::to_string);

    let names = ctx.names;
    let client = &ctx.listeners.client;
    if voters.is_empty() {
        for e in ctx.listeners.all.iter().filter(|e| e.name != client.name) {
            warnings.push(format!(
                "listener {} ignored: single-node mode (controller.quorum.voters is empty)",
                e.name
            ));
        }
        return Ok(None);
    }

    // Cluster mode from here on.
    if !voters.iter().any(|v| v.id == ctx.node_id) {
        let ids: Vec<String> = voters.iter().map(|v| v.id.to_string()).collect();
        return Err(invalid(
            "node.id",
            ctx.node_id.to_string(),
            format!(
                "not one of controller.quorum.voters ({}); nodes that are not voters are not supported yet",
                ids.join(", ")
            ),
        ));
    }
    let voter_count = i16::try_from(voters.len()).unwrap_or(i16::MAX);
    if default_replication_factor > voter_count {
        return Err(invalid(
            "default.replication.factor",
            default_replication_factor.to_string(),
            format!("must not exceed the {voter_count} nodes of controller.quorum.voters"),
        ));
    }
    let listeners_value = raw["listeners"].as_str();
    let Some(controller_name) = names.controller.first() else {
        return Err(invalid(
            "controller.listener.names",
            raw["controller.listener.names"].as_str(),
            "a cluster node needs a controller listener",
        ));
    };
    if names.replication.is_empty() {
        return Err(invalid(
            "inter.broker.listener.name",
            "",
            "a cluster node needs a replication listener",
        ));
    }
    if names.controller.contains(&names.replication) {
        return Err(invalid(
            "inter.broker.listener.name",
            names.replication.as_str(),
            "must not be a controller listener (controller.listener.names)",
        ));
    }
    let controller = ctx.listeners.get(controller_name).ok_or_else(|| {
        invalid(
            "listeners",
            listeners_value,
            format!("no {controller_name} listener: a cluster node serves the controller's Raft traffic on the listener named by controller.listener.names"),
        )
    })?;
    let replication = ctx.listeners.get(&names.replication).ok_or_else(|| {
        invalid(
            "listeners",
            listeners_value,
            format!(
                "no {} listener: a cluster node serves replication on the listener named by inter.broker.listener.name",
                names.replication
            ),
        )
    })?;
    for e in &ctx.listeners.all {
        if ![&client.name, controller_name, &names.replication].contains(&&e.name) {
            warnings.push(format!(
                "listener {} ignored: only the client ({}), controller ({controller_name}) and replication ({}) listeners are served",
                e.name, client.name, names.replication
            ));
        }
    }
    check_ports(ctx, controller, replication)?;
    let controller_listen = listeners::resolve(
        "listeners",
        listeners_value,
        &controller.host,
        controller.port,
    )?;
    let replication_listen = listeners::resolve(
        "listeners",
        listeners_value,
        &replication.host,
        replication.port,
    )?;
    let me = voters
        .iter()
        .find(|v| v.id == ctx.node_id)
        .expect("checked above that node.id is a voter");
    if me.port != controller.port {
        warnings.push(format!(
            "controller.quorum.voters gives node {} port {} but its {controller_name} listener is on port {} (fine only behind a port mapping)",
            me.id, me.port, controller.port
        ));
    }

    let advertised_value = raw["advertised.listeners"].as_str();
    if let Some(e) = ctx
        .advertised
        .iter()
        .find(|e| ![&client.name, controller_name, &names.replication].contains(&&e.name))
    {
        return Err(invalid(
            "advertised.listeners",
            advertised_value,
            format!(
                "listener {} is not the client, controller or replication listener",
                e.name
            ),
        ));
    }
    let mut advertised = Vec::new();
    for (name, listen) in [
        (&client.name, ctx.client_listen),
        (controller_name, controller_listen),
        (&names.replication, replication_listen),
    ] {
        let (host, port) = match ctx.advertised.iter().find(|e| &e.name == name) {
            Some(e) => (e.host.clone(), e.port),
            None => (listen.ip().to_string(), listen.port()),
        };
        if listeners::is_unspecified(&host) {
            return Err(invalid(
                "advertised.listeners",
                advertised_value,
                format!("listener {name} would be advertised as {host}, which peers cannot connect to; advertise an address they can reach"),
            ));
        }
        advertised.push(AdvertisedListener {
            name: name.clone(),
            host,
            port,
        });
    }
    let replication_advertised = advertised.last().expect("three entries pushed above");
    if replication_advertised.port == 0
        || last_port(replication_advertised.port, ctx.cores).is_none()
    {
        return Err(invalid(
            "advertised.listeners",
            advertised_value,
            format!(
                "the {} listener's advertised ports {}.. (one per shard, {} shards) must lie in 1..=65535",
                names.replication, replication_advertised.port, ctx.cores
            ),
        ));
    }
    Ok(Some(ClusterSettings {
        node_id: ctx.node_id,
        offsets_replication_factor: offsets_replication_factor.min(voter_count),
        voters,
        client_listener: client.name.clone(),
        controller_listener: controller_name.clone(),
        controller_listen,
        replication_listener: names.replication.clone(),
        replication_listen,
        advertised,
        rack,
        default_replication_factor,
        replica_lag_time_max_ms,
        replica_fetch_wait_max_ms,
        replica_fetch_max_bytes,
        heartbeat_interval_ms,
        session_timeout_ms,
        auto_leader_rebalance,
        leader_imbalance_check_interval_ms: leader_imbalance_check_interval_s.saturating_mul(1000),
        controlled_shutdown,
        controlled_shutdown_timeout_ms,
    }))
}

/// The port of the last of `cores` shards starting at `base`, if it fits.
fn last_port(base: u16, cores: usize) -> Option<u16> {
    u16::try_from(cores.saturating_sub(1))
        .ok()
        .and_then(|n| base.checked_add(n))
}

/// The client port, the controller port, the replication ports (one per shard) and the admin
/// port must all differ. Ports are compared whatever the hosts: two listeners on one port of
/// different addresses are legal but fragile, and one of them on 0.0.0.0 does collide.
fn check_ports(
    ctx: &Context<'_>,
    controller: &Endpoint,
    replication: &Endpoint,
) -> Result<(), ConfigError> {
    let listeners_value = ctx.raw["listeners"].as_str();
    for e in [controller, replication] {
        if e.port == 0 {
            return Err(invalid(
                "listeners",
                listeners_value,
                format!(
                    "listener {} needs a fixed port (not 0): peers connect to it",
                    e.name
                ),
            ));
        }
    }
    let Some(replication_last) = last_port(replication.port, ctx.cores) else {
        return Err(invalid(
            "listeners",
            listeners_value,
            format!(
                "listener {}: ports {}.. (one per shard, {} shards) go past 65535",
                replication.name, replication.port, ctx.cores
            ),
        ));
    };
    // (key, what, first port, last port); port 0 (any free port) collides with nothing.
    let mut ranges: Vec<(&str, String, u16, u16)> = vec![
        (
            "listeners",
            format!(
                "the {} listener's port {}",
                ctx.listeners.client.name, ctx.listeners.client.port
            ),
            ctx.listeners.client.port,
            ctx.listeners.client.port,
        ),
        (
            "listeners",
            format!(
                "the {} listener's port {}",
                controller.name, controller.port
            ),
            controller.port,
            controller.port,
        ),
        (
            "listeners",
            format!(
                "the {} listener's port range {}..={replication_last} (one port per shard)",
                replication.name, replication.port
            ),
            replication.port,
            replication_last,
        ),
    ];
    if let Some(admin) = ctx.admin_listen {
        ranges.push((
            "admin.listeners",
            format!("the admin listener's port {}", admin.port()),
            admin.port(),
            admin.port(),
        ));
    }
    ranges.retain(|r| r.2 != 0);
    for (i, (key, what, first, last)) in ranges.iter().enumerate() {
        for (_, other, o_first, o_last) in &ranges[..i] {
            if first <= o_last && o_first <= last {
                return Err(invalid(
                    key,
                    ctx.raw[*key].as_str(),
                    format!("{what} collides with {other}"),
                ));
            }
        }
    }
    Ok(())
}
