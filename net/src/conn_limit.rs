//! Connection counts for the whole broker (Kafka's `max.connections` and
//! `max.connections.per.ip`), shared by every shard's acceptor. Only the accept path takes the
//! lock, once per connection opened and once per connection closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max.connections` are open.
    Total,
    /// `max.connections.per.ip` are open from this address.
    PerIp,
}

impl Refused {
    /// The setting that refused it.
    pub fn setting(self) -> &'static str {
        match self {
            Refused::Total => "max.connections",
            Refused::PerIp => "max.connections.per.ip",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Open connections per client address; an address leaves the map with its last
    /// connection, so the map never holds more than `total_max` entries.
    per_ip: HashMap<IpAddr, usize>,
}

/// Open client connections, bounded in all and per client address.
pub struct ConnectionLimiter {
    total_max: usize,
    per_ip_max: usize,
    counts: Mutex<Counts>,
}

/// One admitted connection; gives its place back when dropped.
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.limiter.lock();
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

impl ConnectionLimiter {
    /// A limiter shared by every acceptor: at most `total_max` connections, `per_ip_max` from
    /// one client address.
    pub fn new(total_max: usize, per_ip_max: usize) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            total_max,
            per_ip_max,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked (every update is one step).
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut c = self.lock();
        if c.total >= self.total_max {
            return Err(Refused::Total);
        }
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.per_ip_max {
            return Err(Refused::PerIp);
        }
        c.total += 1;
        c.per_ip.insert(ip, from_ip + 1);
        Ok(ConnectionSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_all_and_per_address() {
        let l = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = l.admit(a).unwrap();
        let a2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).err(), Some(Refused::PerIp));
        let b1 = l.admit(b).unwrap();
        assert_eq!(l.admit(b).err(), Some(Refused::Total));
        assert_eq!(l.open(), 3);
        drop(a1);
        let a3 = l.admit(a).unwrap();
        drop((a2, a3, b1));
        assert_eq!(l.open(), 0);
        assert!(
            l.lock().per_ip.is_empty(),
            "addresses leave the map with their last connection"
        );
    }
}
