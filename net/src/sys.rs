//! Thin, checked wrappers over the few libc calls the network layer needs.
//! All `unsafe` of this crate, apart from the side ring, lives here.

use std::io;
use std::os::fd::RawFd;

/// Sets `O_NONBLOCK` on a socket, so `sendfile` and `send` return `EAGAIN` instead of blocking
/// the shard thread. glommio keeps working on such sockets (it sends with `MSG_DONTWAIT` anyway).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a caller-owned fd with integer arguments has no memory effects.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Disables Nagle: responses are written whole, so delaying them only adds latency.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the option value points to a live c_int of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast::<libc::c_void>(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `TCP_USER_TIMEOUT`: data unacknowledged for `ms` aborts the connection, so that a
/// connection across a network partition fails within `ms` instead of after the kernel's
/// retransmission backoff (many seconds), and is replaced by a new one once the network heals.
pub fn set_user_timeout(fd: RawFd, ms: u32) -> io::Result<()> {
    let value: libc::c_uint = ms;
    // SAFETY: the option value points to a live c_uint of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&value as *const libc::c_uint).cast::<libc::c_void>(),
            size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `dup(2)`: a second descriptor of the same open socket, so the writer can outlive the reader.
pub fn dup(fd: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup has no memory effects; on success the new fd is owned by nobody else.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor returned by the kernel.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// Shuts both directions of a socket down, waking any reader of another descriptor of it.
pub fn shutdown(fd: RawFd) {
    // SAFETY: no memory effects; errors (already closed) are irrelevant here.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// Non-blocking `writev` with `MSG_MORE` semantics chosen by the caller (via `sendmsg`).
pub fn sendmsg(fd: RawFd, iov: &[libc::iovec], more: bool) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len();
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: every iovec points into a buffer the caller keeps alive for this call.
    let r = unsafe { libc::sendmsg(fd, &msg, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// `sendfile(2)` of up to `len` bytes from `file` at `*pos`; advances `*pos`.
pub fn sendfile(sock: RawFd, file: RawFd, pos: &mut u64, len: usize) -> io::Result<usize> {
    let mut off = *pos as libc::off_t;
    // SAFETY: `off` is a live local; the kernel reads and updates it.
    let r = unsafe { libc::sendfile(sock, file, &mut off, len) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    *pos = off as u64;
    Ok(r as usize)
}
