//! Listening sockets shared by all shards.
//!
//! Every shard binds its own socket to the same address with `SO_REUSEPORT`, so the kernel
//! spreads new connections over the shards. `SO_REUSEADDR` is set as well: without it the
//! TIME_WAIT connections of a previous run would make the startup check below fail.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of not-yet-accepted connections per shard.
const LISTEN_BACKLOG: i32 = 1024;

/// A listening socket for one shard.
pub fn bind_shared(addr: SocketAddr) -> io::Result<OwnedFd> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

/// Fails if another process is listening on `addr`. Binds without `SO_REUSEPORT`, which
/// conflicts with any live listener (a second broker would otherwise silently share the port),
/// but with `SO_REUSEADDR`, which ignores lingering TIME_WAIT connections.
pub fn check_free(addr: SocketAddr) -> io::Result<()> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1)?;
    Ok(())
}

/// A listening socket only this process has (no `SO_REUSEPORT`, so a port in use is an error),
/// for the listeners one shard serves (admin, controller). "In use" is retried for up to
/// `busy_wait_ms`: a broker killed a moment ago can still hold its socket while the kernel tears
/// its io_uring down.
pub fn bind_exclusive(addr: SocketAddr, busy_wait_ms: u64) -> io::Result<std::net::TcpListener> {
    const RETRY_MS: u64 = 100;
    let mut waited = 0;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && waited < busy_wait_ms => {
                std::thread::sleep(std::time::Duration::from_millis(RETRY_MS));
                waited += RETRY_MS;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_share_a_port_but_a_foreign_listener_is_detected() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = first.local_addr().unwrap();
        assert!(check_free(taken).is_err());
        drop(first);
        let a = bind_shared("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket2::SockRef::from(&a)
            .local_addr()
            .unwrap()
            .as_socket()
            .unwrap();
        let _b = bind_shared(addr).unwrap();
        assert!(
            check_free(addr).is_err(),
            "a live shard listener must be detected"
        );
    }
}
