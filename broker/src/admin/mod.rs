//! The admin HTTP server: health, readiness, status and Prometheus metrics, on shard 0.
//!
//! It starts before the shard opens its logs, so `/v1/ready` can say "not yet" during recovery.
//! Connections are few (probes and scrapers): one request each, answered with
//! `Connection: close`, at most [`CONNECTIONS_MAX`] at once, each bounded by
//! [`http::REQUEST_HEAD_BYTES_MAX`], [`http::REQUEST_HEADERS_MAX`] and
//! [`REQUEST_READ_TIMEOUT_MS`].

mod http;

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};

use crate::metrics;
use crate::shard::stats;
use crate::shard::Shard;

/// Admin connections served at once; more are closed at accept. Probes and scrapers need a few.
pub const CONNECTIONS_MAX: usize = 64;

/// How long a client may take to send its request head (a slow client cannot hold a slot).
pub const REQUEST_READ_TIMEOUT_MS: u64 = 5_000;

/// How long "address in use" is retried at startup: a broker killed a moment ago can still hold
/// its socket while the kernel tears its io_uring down (see `probe_port` in runtime/mod.rs).
const PORT_BUSY_WAIT_MS: u64 = 5_000;

/// Binds the admin listener (without `SO_REUSEPORT`, so a port in use is an error).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    strom_net::listener::bind_exclusive(addr, PORT_BUSY_WAIT_MS)
}

/// Starts serving the listener `serve` bound, on this shard.
pub fn spawn(shard: &Rc<Shard>, listener: &std::net::TcpListener) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    let fd = listener.try_clone()?.into_raw_fd();
    // SAFETY: `fd` is a duplicate of a listening TCP socket that nothing else owns.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    tracing::info!("admin HTTP server listening on {addr}");
    glommio::spawn_local(accept_loop(shard.clone(), listener)).detach();
    Ok(())
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok(stream) if open.get() >= CONNECTIONS_MAX => {
                tracing::debug!("admin: {CONNECTIONS_MAX} connections open, closing a new one");
                drop(stream);
            }
            Ok(stream) => {
                open.set(open.get() + 1);
                let (shard, open) = (shard.clone(), open.clone());
                glommio::spawn_local(async move {
                    if let Err(e) = serve(&shard, stream).await {
                        tracing::debug!("admin connection: {e}");
                    }
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(shard: &Rc<Shard>, mut stream: TcpStream) -> std::io::Result<()> {
    let timeout = Some(Duration::from_millis(REQUEST_READ_TIMEOUT_MS));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let out = match http::read_head(&mut stream).await {
        Ok(Some(Ok(req))) => route(shard, &req.method, &req.path).await,
        Ok(Some(Err(refused))) => refused.response(),
        Ok(None) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            http::response(408, "text/plain", b"request timeout\n", None)
        }
        Err(e) => return Err(e),
    };
    stream.write_all(&out).await?;
    stream.flush().await?;
    stream.close().await
}

const JSON: &str = "application/json";

async fn route(shard: &Rc<Shard>, method: &str, path: &str) -> Vec<u8> {
    const PATHS: [&str; 4] = ["/v1/health", "/v1/ready", "/v1/status", "/metrics"];
    if !PATHS.contains(&path) {
        return http::response(404, "text/plain", b"not found\n", None);
    }
    if method != "GET" {
        return http::response(405, "text/plain", b"method not allowed\n", Some("GET"));
    }
    let process = stats::process_info(shard);
    match path {
        "/v1/health" => http::response(200, JSON, br#"{"status":"ok"}"#, None),
        "/v1/ready" if process.ready() => http::response(200, JSON, br#"{"ready":true}"#, None),
        "/v1/ready" => http::response(503, JSON, br#"{"ready":false}"#, None),
        "/v1/status" => {
            let snaps = stats::collect(shard).await;
            let mut status = metrics::status_json(&process, &shard.meta(), &snaps);
            if let Some(view) = &shard.quorum {
                status["cluster"] = cluster_json(&view.load());
            }
            let body = status.to_string();
            http::response(200, JSON, body.as_bytes(), None)
        }
        _ => {
            let snaps = stats::collect(shard).await;
            let mut body = metrics::render(&stats::process_info(shard), &snaps);
            if let Some(view) = &shard.quorum {
                body.push_str(&metrics::render_cluster(&cluster_gauges(&view.load())));
                body.push_str(&metrics::render_replication(&snaps));
            }
            http::response(200, "text/plain; version=0.0.4", body.as_bytes(), None)
        }
    }
}

/// The `cluster` part of `/v1/status` in cluster mode: the controller's view of the brokers,
/// who leads the quorum, and every partition's leader, epoch, replicas and ISR.
fn cluster_json(state: &crate::quorum::QuorumState) -> serde_json::Value {
    use serde_json::json;
    let brokers: Vec<serde_json::Value> = state
        .image
        .brokers
        .values()
        .map(|b| {
            let endpoints: Vec<serde_json::Value> = b
                .endpoints
                .iter()
                .map(|e| json!({ "listener": e.listener, "host": e.host, "port": e.port }))
                .collect();
            json!({
                "node_id": b.node_id,
                "fenced": b.fenced,
                "rack": b.rack,
                "endpoints": endpoints,
            })
        })
        .collect();
    let topics: serde_json::Map<String, serde_json::Value> = state
        .image
        .topics
        .iter()
        .map(|(name, t)| {
            let partitions: Vec<serde_json::Value> = t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    json!({
                        "partition": i,
                        "leader": p.leader,
                        "leader_epoch": p.leader_epoch,
                        "replicas": p.replicas,
                        "isr": p.isr,
                    })
                })
                .collect();
            (name.clone(), serde_json::Value::Array(partitions))
        })
        .collect();
    json!({
        "node_id": state.node_id.0,
        "controller_id": state.controller_id(),
        "term": state.term,
        "applied_index": state.applied,
        "brokers": brokers,
        "topics": topics,
    })
}

/// The cluster gauges of `/metrics` from the controller's committed view.
fn cluster_gauges(state: &crate::quorum::QuorumState) -> metrics::ClusterGauges {
    let image = &state.image;
    let live = |n: i32| image.brokers.get(&n).is_some_and(|b| !b.fenced);
    let partitions = image.topics.values().flat_map(|t| &t.partitions);
    metrics::ClusterGauges {
        node_id: state.node_id.0,
        controller_id: state.controller_id(),
        term: state.term,
        applied_index: state.applied,
        brokers_live: image.brokers.values().filter(|b| !b.fenced).count(),
        brokers_fenced: image.brokers.values().filter(|b| b.fenced).count(),
        partitions: partitions.clone().count(),
        partitions_offline: partitions.clone().filter(|p| !live(p.leader)).count(),
        partitions_led: partitions.filter(|p| p.leader == state.node_id.0).count(),
    }
}
