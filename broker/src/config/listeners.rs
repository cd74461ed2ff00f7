//! `listeners`, `advertised.listeners` and `listener.security.protocol.map`: named endpoints
//! (`NAME://host:port,...`), as in Kafka. A listener's name says what it is for (the client,
//! controller and replication listeners); the protocol map says which security protocol it
//! speaks, and Strom speaks only PLAINTEXT.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::ConfigError;

/// The only security protocol Strom speaks.
const PLAINTEXT: &str = "PLAINTEXT";

/// One entry of `listeners` or `advertised.listeners`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// Listener name, upper-cased as Kafka normalises it.
    pub name: String,
    /// Host as written; an empty host is `0.0.0.0` (every interface), IPv6 without brackets.
    pub host: String,
    pub port: u16,
}

fn invalid(key: &str, value: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        msg: msg.into(),
    }
}

/// `host:port` (or `[v6]:port`); an empty host is `0.0.0.0`.
pub(super) fn host_port(key: &str, value: &str, addr: &str) -> Result<(String, u16), ConfigError> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid(key, value, "expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| invalid(key, value, "bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.chars().any(char::is_whitespace) {
        return Err(invalid(key, value, format!("bad host `{host}`")));
    }
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok((host.to_string(), port))
}

/// `NAME://host:port,...`; an entry without `NAME://` is named `unnamed` (so `--listen
/// 127.0.0.1:9092` keeps meaning the client listener). Names are distinct.
pub(super) fn parse_list(
    key: &str,
    value: &str,
    unnamed: &str,
) -> Result<Vec<Endpoint>, ConfigError> {
    let mut out: Vec<Endpoint> = Vec::new();
    for entry in value.split(',').map(str::trim) {
        let (name, addr) = match entry.split_once("://") {
            Some((name, addr)) => (name.trim().to_ascii_uppercase(), addr),
            None => (unnamed.to_string(), entry),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(key, value, format!("bad listener name `{name}`")));
        }
        let (host, port) = host_port(key, value, addr)?;
        if out.iter().any(|e| e.name == name) {
            return Err(invalid(
                key,
                value,
                format!("listener {name} is listed twice"),
            ));
        }
        out.push(Endpoint { name, host, port });
    }
    Ok(out)
}

/// `listener.security.protocol.map`: `NAME:PROTOCOL,...`, listener name to security protocol.
/// Any protocol but PLAINTEXT is refused, even for a listener not in use: a config that asks for
/// TLS or SASL must not start a broker that would speak plaintext.
pub(super) fn protocol_map(value: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    const KEY: &str = "listener.security.protocol.map";
    let mut map = BTreeMap::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, protocol) = entry
            .split_once(':')
            .ok_or_else(|| invalid(KEY, value, format!("`{entry}` is not NAME:PROTOCOL")))?;
        let (name, protocol) = (
            name.trim().to_ascii_uppercase(),
            protocol.trim().to_ascii_uppercase(),
        );
        if protocol != PLAINTEXT {
            return Err(invalid(
                KEY,
                value,
                format!("listener {name}: security protocol {protocol} is not supported (only PLAINTEXT)"),
            ));
        }
        if map.insert(name.clone(), protocol).is_some() {
            return Err(invalid(
                KEY,
                value,
                format!("listener {name} is mapped twice"),
            ));
        }
    }
    Ok(map)
}

/// Every listener in `listeners`, with what each is for.
pub(super) struct Listeners {
    pub all: Vec<Endpoint>,
    /// The listener clients use: the one named PLAINTEXT, else the first that is neither a
    /// controller listener nor the replication listener.
    pub client: Endpoint,
}

impl Listeners {
    /// Parses `listeners` and picks the client listener. `not_client` are the controller and
    /// replication listener names.
    pub fn parse(
        value: &str,
        map: &BTreeMap<String, String>,
        not_client: &[&str],
    ) -> Result<Listeners, ConfigError> {
        const KEY: &str = "listeners";
        let all = parse_list(KEY, value, PLAINTEXT)?;
        if let Some(e) = all.iter().find(|e| !map.contains_key(&e.name)) {
            return Err(invalid(
                KEY,
                value,
                format!(
                    "listener {} has no security protocol in listener.security.protocol.map",
                    e.name
                ),
            ));
        }
        let client = all
            .iter()
            .find(|e| e.name == PLAINTEXT)
            .or_else(|| all.iter().find(|e| !not_client.contains(&e.name.as_str())))
            .cloned()
            .ok_or_else(|| {
                invalid(
                    KEY,
                    value,
                    "no client listener (one named PLAINTEXT, or any that is not the controller's or the replication listener)",
                )
            })?;
        Ok(Listeners { all, client })
    }

    /// The listener named `name`.
    pub fn get(&self, name: &str) -> Option<&Endpoint> {
        self.all.iter().find(|e| e.name == name)
    }
}

/// `host:port` resolved to one socket address (a name is looked up once, at startup).
pub(super) fn resolve(
    key: &str,
    value: &str,
    host: &str,
    port: u16,
) -> Result<SocketAddr, ConfigError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| invalid(key, value, "cannot resolve host"))
}

/// Whether `host` is an address that means "every interface", which no peer can connect to.
pub(super) fn is_unspecified(host: &str) -> bool {
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}
