//! Writes responses to a non-blocking socket: byte chunks with `sendmsg`, file ranges with
//! `sendfile`, so log bytes go from the page cache to the socket without a user-space copy.
//!
//! Rules that keep the stream well-formed: one `ResponseSender` per connection (one writer);
//! a response is written whole or the connection is closed (a half-sent frame cannot be
//! recovered); the file descriptor of a range stays open until the range is sent.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::limits::{SENDFILE_CALL_BYTES_MAX, WRITEV_IOVECS_MAX};
use crate::{side_ring, sys, NetError};

/// One piece of a response.
#[derive(Clone)]
pub enum OutChunk {
    /// Bytes built in memory (headers, encoded responses).
    Bytes(Bytes),
    /// A byte range of a file, sent with `sendfile(2)`.
    File {
        /// The open file; shared so the descriptor stays valid until the range is sent.
        fd: Arc<dyn AsRawFd + Send + Sync>,
        /// Byte offset of the range in the file.
        position: u64,
        /// Length of the range in bytes.
        len: u32,
    },
}

impl OutChunk {
    /// Bytes this chunk puts on the wire.
    pub fn len(&self) -> usize {
        match self {
            OutChunk::Bytes(b) => b.len(),
            OutChunk::File { len, .. } => *len as usize,
        }
    }

    /// True for a chunk that sends nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for OutChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutChunk::Bytes(b) => write!(f, "Bytes({})", b.len()),
            OutChunk::File { fd, position, len } => {
                write!(f, "File(fd {}, {}+{})", fd.as_raw_fd(), position, len)
            }
        }
    }
}

/// The single writer of one connection.
pub struct ResponseSender {
    fd: OwnedFd,
    wait_ms_max: u64,
    bytes_sent: u64,
    writable_waits: u64,
}

impl ResponseSender {
    /// Takes its own descriptor of the socket (a `dup`), so it can finish writing responses after
    /// the reading side has gone. Sets `O_NONBLOCK` and `TCP_NODELAY` on the socket.
    pub fn new(socket: RawFd, wait_ms_max: u64) -> Result<Self, NetError> {
        let fd = sys::dup(socket).map_err(|e| NetError::io("dup socket", e))?;
        sys::set_nonblocking(fd.as_raw_fd()).map_err(|e| NetError::io("set O_NONBLOCK", e))?;
        sys::set_nodelay(fd.as_raw_fd()).map_err(|e| NetError::io("set TCP_NODELAY", e))?;
        Ok(ResponseSender {
            fd,
            wait_ms_max,
            bytes_sent: 0,
            writable_waits: 0,
        })
    }

    /// Total bytes written so far.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// How often a send found the socket full and waited for it to drain.
    pub fn writable_waits(&self) -> u64 {
        self.writable_waits
    }

    /// The sender's own descriptor of the socket (to hand the connection to another thread).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Closes both directions now (after a protocol error), waking the connection's reader.
    pub fn shutdown(&self) {
        sys::shutdown(self.fd.as_raw_fd());
    }

    /// Writes `chunks` in order. `more_follows` says another response is queued right behind,
    /// so the last bytes may wait in the kernel for it (`MSG_MORE`).
    pub async fn send(&mut self, chunks: &[OutChunk], more_follows: bool) -> Result<(), NetError> {
        let mut i = 0;
        while i < chunks.len() {
            match &chunks[i] {
                OutChunk::Bytes(_) => {
                    let run_end = chunks[i..]
                        .iter()
                        .position(|c| !matches!(c, OutChunk::Bytes(_)))
                        .map_or(chunks.len(), |p| i + p)
                        .min(i + WRITEV_IOVECS_MAX);
                    let more = more_follows || run_end < chunks.len();
                    self.send_bytes(&chunks[i..run_end], more).await?;
                    i = run_end;
                }
                OutChunk::File { fd, position, len } => {
                    self.send_file(fd.as_raw_fd(), *position, *len as usize)
                        .await?;
                    i += 1;
                }
            }
        }
        Ok(())
    }

    async fn send_bytes(&mut self, run: &[OutChunk], more: bool) -> Result<(), NetError> {
        let bufs: Vec<&Bytes> = run
            .iter()
            .filter_map(|c| match c {
                OutChunk::Bytes(b) if !b.is_empty() => Some(b),
                _ => None,
            })
            .collect();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut done = 0usize;
        while done < total {
            // Rebuild the iovec list from the first unsent byte.
            let mut iov = Vec::with_capacity(bufs.len());
            let mut skip = done;
            for b in &bufs {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                iov.push(libc::iovec {
                    iov_base: b[skip..].as_ptr() as *mut libc::c_void,
                    iov_len: b.len() - skip,
                });
                skip = 0;
            }
            match sys::sendmsg(self.fd.as_raw_fd(), &iov, more) {
                Ok(n) => {
                    done += n;
                    self.bytes_sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NetError::io("sending response", e)),
            }
        }
        Ok(())
    }

    async fn send_file(
        &mut self,
        file: RawFd,
        mut position: u64,
        mut remaining: usize,
    ) -> Result<(), NetError> {
        while remaining > 0 {
            let call = remaining.min(SENDFILE_CALL_BYTES_MAX);
            match sys::sendfile(self.fd.as_raw_fd(), file, &mut position, call) {
                Ok(0) => {
                    return Err(NetError::FileShorter {
                        position,
                        remaining,
                    })
                }
                Ok(n) => {
                    remaining -= n;
                    self.bytes_sent += n as u64;
                    // A fast reader never makes the socket return EAGAIN; yield so one large
                    // fetch cannot hold the core.
                    glommio::yield_if_needed().await;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NetError::io("sendfile", e)),
            }
        }
        Ok(())
    }

    async fn wait_writable(&mut self) -> Result<(), NetError> {
        self.writable_waits += 1;
        let fd = self.fd.as_raw_fd();
        let ms = self.wait_ms_max;
        let timeout = async {
            glommio::timer::Timer::new(Duration::from_millis(ms)).await;
            Err(NetError::SendTimeout { ms })
        };
        let wait = async {
            side_ring::writable(fd)
                .await
                .map_err(|e| NetError::io("waiting for socket", e))
        };
        futures_lite::future::or(wait, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    /// Bytes, a file range and bytes again arrive intact and in order, also when the reader is
    /// slow enough that the socket fills up (EAGAIN -> side ring POLLOUT wait).
    #[test]
    fn mixed_chunks_reach_a_slow_reader_in_order() {
        let mut file = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&content).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut reads = 0;
            loop {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                reads += 1;
                if reads % 16 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            got
        });
        let file = Arc::new(file);
        let f2 = file.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let stream = std::net::TcpStream::connect(addr).unwrap();
                let mut sender = ResponseSender::new(stream.as_raw_fd(), 10_000).unwrap();
                let chunks = vec![
                    OutChunk::Bytes(Bytes::from_static(b"head")),
                    OutChunk::File {
                        fd: f2,
                        position: 1000,
                        len: 6 * 1024 * 1024,
                    },
                    OutChunk::Bytes(Bytes::from_static(b"tail")),
                ];
                sender.send(&chunks, false).await.unwrap();
                assert_eq!(sender.bytes_sent(), 8 + 6 * 1024 * 1024);
                assert!(
                    sender.writable_waits() > 0,
                    "the slow reader should have filled the socket"
                );
                drop(sender);
                drop(stream);
            })
            .unwrap()
            .join()
            .unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 8 + 6 * 1024 * 1024);
        assert_eq!(&got[..4], b"head");
        assert!(got[4..4 + 6 * 1024 * 1024] == content[1000..1000 + 6 * 1024 * 1024]);
        assert_eq!(&got[got.len() - 4..], b"tail");
        drop(file);
    }

    #[test]
    fn file_shorter_than_range_is_an_error() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[1u8; 100]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
        });
        let file = Arc::new(file);
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let stream = std::net::TcpStream::connect(addr).unwrap();
                let mut sender = ResponseSender::new(stream.as_raw_fd(), 1_000).unwrap();
                let r = sender
                    .send(
                        &[OutChunk::File {
                            fd: file,
                            position: 50,
                            len: 100,
                        }],
                        false,
                    )
                    .await;
                assert!(matches!(r, Err(NetError::FileShorter { .. })), "{r:?}");
            })
            .unwrap()
            .join()
            .unwrap();
        t.join().unwrap();
    }
}
