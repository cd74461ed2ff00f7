//! Length-prefixed frames: a big-endian i32 size, then that many bytes.
//!
//! The size is checked against the caller's limit before any buffer for the frame is reserved,
//! so a hostile prefix (say 2 GiB) costs nothing. Several pipelined frames that arrive in one
//! read are handed out one by one without further reads.

use bytes::{Buf, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt};

use crate::limits::READ_CHUNK_BYTES;
use crate::NetError;

/// Reads frames from one connection.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    frame_bytes_max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `frame_bytes_max` is Kafka's `socket.request.max.bytes`.
    pub fn new(inner: R, frame_bytes_max: usize) -> Self {
        FrameReader { inner, buf: BytesMut::new(), frame_bytes_max }
    }

    /// Checks the length prefix at the head of the buffer, if there is one.
    fn frame_len(&self) -> Result<Option<usize>, NetError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len < 0 {
            return Err(NetError::NegativeLength(len));
        }
        if len as usize > self.frame_bytes_max {
            return Err(NetError::FrameTooLarge { len: len as i64, max: self.frame_bytes_max });
        }
        Ok(Some(len as usize))
    }

    /// The next frame without its size prefix, or `None` on a clean end of stream between frames.
    pub async fn next_frame(&mut self) -> Result<Option<BytesMut>, NetError> {
        loop {
            let want = match self.frame_len()? {
                Some(len) if self.buf.len() >= 4 + len => {
                    self.buf.advance(4);
                    return Ok(Some(self.buf.split_to(len)));
                }
                Some(len) => 4 + len - self.buf.len(),
                None => 4 - self.buf.len(),
            };
            // Read at least what is missing, and up to a chunk more for pipelined frames.
            let chunk = want.max(READ_CHUNK_BYTES);
            let start = self.buf.len();
            self.buf.resize(start + chunk, 0);
            let n = self
                .inner
                .read(&mut self.buf[start..])
                .await
                .map_err(|e| NetError::io("reading request", e));
            match n {
                Ok(0) => {
                    self.buf.truncate(start);
                    if start == 0 {
                        return Ok(None);
                    }
                    let expected = self.frame_len()?.map_or(4, |l| 4 + l);
                    return Err(NetError::TruncatedFrame { read: start, expected });
                }
                Ok(n) => self.buf.truncate(start + n),
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            }
        }
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
        assert!(matches!(err, Some(NetError::FrameTooLarge { max: 1024, .. })));
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
        assert!(matches!(err, Some(NetError::TruncatedFrame { read: 7, expected: 14 })));
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
}
