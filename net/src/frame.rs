//! Length-prefixed frames: a big-endian i32 size, then that many bytes.
//!
//! The size is checked against the caller's limit before any buffer for the frame is reserved,
//! and the buffer then grows only as the frame's bytes arrive (each read asks for at most as
//! much again as the frame has delivered so far, at least `READ_CHUNK_BYTES`), so a hostile
//! prefix costs nothing until the bytes it announces are actually sent. Reading is split in two
//! steps, [`FrameReader::next_len`] and [`FrameReader::next_frame`], so that the caller can
//! charge a memory budget between them (and stop reading while it waits). Several pipelined
//! frames that arrive in one read are handed out one by one without further reads.

use std::cell::Cell;
use std::rc::Rc;

use bytes::{Buf, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt};

use crate::limits::READ_CHUNK_BYTES;
use crate::NetError;

/// Reads frames from one connection.
pub struct FrameReader<R> {
    inner: R,
    /// `buf[..filled]` holds bytes read and not yet handed out; anything past `filled` is scratch
    /// space of a read that may have been cancelled, and is discarded by the next read.
    buf: BytesMut,
    filled: usize,
    frame_bytes_max: usize,
    /// Bytes read from the connection since it opened (see [`FrameReader::progress`]).
    progress: Rc<Cell<u64>>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `frame_bytes_max` is Kafka's `socket.request.max.bytes`.
    pub fn new(inner: R, frame_bytes_max: usize) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            filled: 0,
            frame_bytes_max,
            progress: Rc::default(),
        }
    }

    /// A reader that first hands out `buffered`, bytes another reader of the same connection had
    /// read and not handed out (see [`Self::into_parts`]).
    pub fn with_buffered(inner: R, frame_bytes_max: usize, buffered: BytesMut) -> Self {
        let filled = buffered.len();
        FrameReader {
            inner,
            buf: buffered,
            filled,
            frame_bytes_max,
            progress: Rc::default(),
        }
    }

    /// The connection and the bytes read from it that were not handed out as frames yet, for a
    /// reader elsewhere to continue with.
    pub fn into_parts(mut self) -> (R, BytesMut) {
        self.buf.truncate(self.filled);
        (self.inner, self.buf)
    }

    /// Checks the length prefix at the head of the buffer, if there is one.
    fn frame_len(&self) -> Result<Option<usize>, NetError> {
        if self.filled < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len < 0 {
            return Err(NetError::NegativeLength(len));
        }
        if len as usize > self.frame_bytes_max {
            return Err(NetError::FrameTooLarge {
                len: i64::from(len),
                max: self.frame_bytes_max,
            });
        }
        Ok(Some(len as usize))
    }

    /// One read of at most `want` bytes (at least one); `Ok(false)` on end of stream.
    async fn fill(&mut self, want: usize) -> Result<bool, NetError> {
        self.buf.truncate(self.filled);
        let start = self.filled;
        self.buf.resize(start + want, 0);
        let n = self
            .inner
            .read(&mut self.buf[start..])
            .await
            .map_err(|e| NetError::io("reading request", e))?;
        self.filled = start + n;
        self.buf.truncate(self.filled);
        self.progress.set(self.progress.get() + n as u64);
        Ok(n > 0)
    }

    /// Waits for the length prefix of the next frame and returns the frame's length (checked
    /// against the limit), or `None` on a clean end of stream between frames. Reads no more
    /// than one chunk; calling it again before [`Self::next_frame`] returns the same length.
    pub async fn next_len(&mut self) -> Result<Option<usize>, NetError> {
        loop {
            if let Some(len) = self.frame_len()? {
                return Ok(Some(len));
            }
            if !self.fill(READ_CHUNK_BYTES).await? {
                if self.filled == 0 {
                    return Ok(None);
                }
                return Err(NetError::TruncatedFrame {
                    read: self.filled,
                    expected: 4,
                });
            }
        }
    }

    /// The next frame without its size prefix, or `None` on a clean end of stream between frames.
    pub async fn next_frame(&mut self) -> Result<Option<BytesMut>, NetError> {
        let Some(len) = self.next_len().await? else {
            return Ok(None);
        };
        while self.filled < 4 + len {
            let missing = 4 + len - self.filled;
            // Grow with what has arrived: at most doubling the frame's bytes per read, so memory
            // follows the bytes sent, not the length claimed.
            let want = missing.min(self.filled.max(READ_CHUNK_BYTES));
            if !self.fill(want).await? {
                return Err(NetError::TruncatedFrame {
                    read: self.filled,
                    expected: 4 + len,
                });
            }
        }
        self.buf.truncate(self.filled);
        self.buf.advance(4);
        self.filled -= 4 + len;
        Ok(Some(self.buf.split_to(len)))
    }

    /// Bytes read from the connection and not yet handed out as frames.
    pub fn buffered(&self) -> usize {
        self.filled
    }

    /// A counter of the bytes read so far, readable while a read is in progress (a timeout
    /// around [`Self::next_frame`] can tell a stalled peer from a slow one).
    pub fn progress(&self) -> Rc<Cell<u64>> {
        self.progress.clone()
    }
}

#[cfg(test)]
mod handover_tests {
    use super::*;

    #[test]
    fn a_reader_continues_where_another_stopped() {
        glommio::LocalExecutor::default().run(async {
            let mut wire = Vec::new();
            for body in [&b"first"[..], b"second", b"third"] {
                wire.extend_from_slice(&(body.len() as i32).to_be_bytes());
                wire.extend_from_slice(body);
            }
            // All three frames arrive in one read; the first reader hands out only the first.
            let mut a = FrameReader::new(futures_lite::io::Cursor::new(wire), 1024);
            assert_eq!(&a.next_frame().await.unwrap().unwrap()[..], b"first");
            let (rest_of_stream, buffered) = a.into_parts();
            assert_eq!(
                buffered.len(),
                4 + 6 + 4 + 5,
                "the unread frames travel with the handover"
            );
            let mut b = FrameReader::with_buffered(rest_of_stream, 1024, buffered);
            assert_eq!(&b.next_frame().await.unwrap().unwrap()[..], b"second");
            assert_eq!(&b.next_frame().await.unwrap().unwrap()[..], b"third");
            assert!(b.next_frame().await.unwrap().is_none());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend_from_slice(&(p.len() as i32).to_be_bytes());
            out.extend_from_slice(p);
        }
        out
    }

    fn read_all(input: Vec<u8>, max: usize) -> (Vec<Vec<u8>>, Option<NetError>) {
        futures_lite::future::block_on(async {
            let mut r = FrameReader::new(futures_lite::io::Cursor::new(input), max);
            let mut got = Vec::new();
            loop {
                match r.next_frame().await {
                    Ok(Some(f)) => got.push(f.to_vec()),
                    Ok(None) => return (got, None),
                    Err(e) => return (got, Some(e)),
                }
            }
        })
    }

    #[test]
    fn pipelined_frames_come_out_in_order() {
        let (got, err) = read_all(frames(&[b"one", b"", b"three"]), 100);
        assert!(err.is_none());
        assert_eq!(got, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocation() {
        let mut input = i32::MAX.to_be_bytes().to_vec();
        input.extend_from_slice(b"xx");
        let (got, err) = read_all(input, 1024);
        assert!(got.is_empty());
        assert!(matches!(
            err,
            Some(NetError::FrameTooLarge { max: 1024, .. })
        ));
    }

    #[test]
    fn negative_prefix_is_an_error() {
        let (_, err) = read_all((-5i32).to_be_bytes().to_vec(), 1024);
        assert!(matches!(err, Some(NetError::NegativeLength(-5))));
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut input = frames(&[b"whole"]);
        input.extend_from_slice(&10i32.to_be_bytes());
        input.extend_from_slice(b"abc");
        let (got, err) = read_all(input, 1024);
        assert_eq!(got, vec![b"whole".to_vec()]);
        assert!(matches!(
            err,
            Some(NetError::TruncatedFrame {
                read: 7,
                expected: 14
            })
        ));
    }

    #[test]
    fn large_frame_spanning_many_reads() {
        let big = vec![7u8; 300_000];
        let (got, err) = read_all(frames(&[&big, b"tail"]), 1 << 20);
        assert!(err.is_none());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], big);
        assert_eq!(got[1], b"tail");
    }

    /// A reader that hands out at most `step` bytes per read and counts the largest buffer it
    /// was asked to fill.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        largest_ask: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.largest_ask = self.largest_ask.max(buf.len());
            let n = buf.len().min(self.step).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn buffer_grows_with_the_bytes_that_arrive_not_the_prefix() {
        // A prefix claiming 100 MiB followed by only 10 bytes, then end of stream.
        let mut input = (100i32 << 20).to_be_bytes().to_vec();
        input.extend_from_slice(&[1; 10]);
        let src = Trickle {
            data: input,
            pos: 0,
            step: usize::MAX,
            largest_ask: 0,
        };
        futures_lite::future::block_on(async {
            let mut r = FrameReader::new(src, 200 << 20);
            assert_eq!(r.next_len().await.unwrap(), Some(100 << 20));
            assert!(matches!(
                r.next_frame().await,
                Err(NetError::TruncatedFrame { read: 14, .. })
            ));
            assert!(
                r.buf.capacity() <= 2 * READ_CHUNK_BYTES,
                "buffer of {} bytes for 14 received",
                r.buf.capacity()
            );
            assert!(r.inner.largest_ask <= READ_CHUNK_BYTES);
        });
    }

    #[test]
    fn reads_ask_for_at_most_twice_what_arrived() {
        let big = vec![3u8; 5 << 20];
        let mut input = (big.len() as i32).to_be_bytes().to_vec();
        input.extend_from_slice(&big);
        let src = Trickle {
            data: input,
            pos: 0,
            step: usize::MAX,
            largest_ask: 0,
        };
        futures_lite::future::block_on(async {
            let mut r = FrameReader::new(src, 8 << 20);
            let f = r.next_frame().await.unwrap().unwrap();
            assert_eq!(f.len(), big.len());
            assert!(f.iter().all(|&b| b == 3));
            // The last read asks for the rest: half the frame at most.
            assert!(
                r.inner.largest_ask <= big.len() / 2 + 4,
                "asked for {}",
                r.inner.largest_ask
            );
        });
    }

    #[test]
    fn next_len_is_stable_and_frames_follow() {
        let input = frames(&[b"abc", b"defg"]);
        let src = Trickle {
            data: input,
            pos: 0,
            step: 1,
            largest_ask: 0,
        };
        futures_lite::future::block_on(async {
            let mut r = FrameReader::new(src, 100);
            assert_eq!(r.next_len().await.unwrap(), Some(3));
            assert_eq!(r.next_len().await.unwrap(), Some(3));
            assert_eq!(&r.next_frame().await.unwrap().unwrap()[..], b"abc");
            assert_eq!(r.next_len().await.unwrap(), Some(4));
            assert_eq!(&r.next_frame().await.unwrap().unwrap()[..], b"defg");
            assert_eq!(r.next_len().await.unwrap(), None);
        });
    }
}
