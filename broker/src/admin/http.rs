//! A deliberately small HTTP/1.1 request reader: one GET-style request per connection, headers
//! only (a body is never read), bounded in size, header count and time. Enough for health
//! checks, load balancers and Prometheus; anything else gets a 4xx and the connection is closed.
//! The request line and header syntax are checked by `httparse`; this module adds the bounds
//! and the few rules of its own (upper-case method, a path as target, a UTF-8 head).

use futures_lite::{AsyncRead, AsyncReadExt};

/// Largest request head (request line + headers) read. Prometheus and curl send a few hundred
/// bytes; 8 KiB is what common servers allow per header section.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;

/// Most header lines a request head may have. curl sends 3 and Prometheus 5; a proxy in front
/// adds a few `X-Forwarded-*`. Without this bound 8 KiB of `a:` lines would be 2,000 headers.
pub const REQUEST_HEADERS_MAX: usize = 64;

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 1024;

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
}

/// Why a request head was refused, with its status code.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 400: not an HTTP/1.x request line, or bad header lines.
    Malformed(&'static str),
    /// 431: the head is longer than [`REQUEST_HEAD_BYTES_MAX`].
    TooLarge,
    /// 431: the head has more than [`REQUEST_HEADERS_MAX`] header lines.
    TooManyHeaders,
}

impl HeadError {
    /// The complete response (400 or 431) this error is answered with.
    pub fn response(&self) -> Vec<u8> {
        match self {
            HeadError::Malformed(why) => response(
                400,
                "text/plain",
                format!("bad request: {why}\n").as_bytes(),
                None,
            ),
            HeadError::TooLarge => response(431, "text/plain", b"request head too large\n", None),
            HeadError::TooManyHeaders => {
                response(431, "text/plain", b"too many header lines\n", None)
            }
        }
    }
}

/// Parses the bytes received so far: `Ok(None)` while the head is incomplete and may still
/// fit in [`REQUEST_HEAD_BYTES_MAX`]. Bytes after the head (a body) are ignored.
pub fn parse_head(buf: &[u8]) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= REQUEST_HEAD_BYTES_MAX => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(refusal(e)),
    };
    if len > REQUEST_HEAD_BYTES_MAX {
        return Err(HeadError::TooLarge);
    }
    // Complete: httparse has set the method, path and version.
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Err(HeadError::Malformed("bad request line"));
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed("bad method"));
    }
    if !target.starts_with('/') {
        return Err(HeadError::Malformed("request target must be a path"));
    }
    // httparse passes any byte >= 0x80 in header values; the head is text here.
    if std::str::from_utf8(&buf[..len]).is_err() {
        return Err(HeadError::Malformed("request head is not UTF-8"));
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
    }))
}

fn refusal(e: httparse::Error) -> HeadError {
    HeadError::Malformed(match e {
        httparse::Error::TooManyHeaders => return HeadError::TooManyHeaders,
        httparse::Error::Version => "not HTTP/1.0 or HTTP/1.1",
        httparse::Error::Token | httparse::Error::Status => "bad request line",
        httparse::Error::HeaderName | httparse::Error::HeaderValue => "bad header line",
        httparse::Error::NewLine => "bad line ending",
    })
}

/// Reads one request head from `reader`, at most [`REQUEST_HEAD_BYTES_MAX`] bytes of it.
/// `Ok(None)`: the peer closed before sending anything. I/O errors (a read timeout among them)
/// are returned as they are.
pub async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<Result<Request, HeadError>>> {
    let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    loop {
        match parse_head(&buf) {
            Ok(Some(request)) => return Ok(Some(Ok(request))),
            Err(e) => return Ok(Some(Err(e))),
            Ok(None) => {}
        }
        // parse_head refuses a partial head of REQUEST_HEAD_BYTES_MAX bytes, so room > 0.
        let room = (REQUEST_HEAD_BYTES_MAX - buf.len()).min(READ_CHUNK_BYTES);
        match reader.read(&mut chunk[..room]).await? {
            0 if buf.is_empty() => return Ok(None),
            0 => {
                return Ok(Some(Err(HeadError::Malformed(
                    "connection closed mid-request",
                ))))
            }
            n => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A complete response with `Connection: close`.
pub fn response(status: u16, content_type: &str, body: &[u8], allow: Option<&str>) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(allow) = allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A reader that hands out at most `step` bytes per read, as a slow client's socket does.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        /// Bytes handed out so far.
        given: usize,
    }

    impl<'a> Trickle<'a> {
        fn new(data: &'a [u8], step: usize) -> Self {
            Trickle {
                data,
                step,
                given: 0,
            }
        }
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.given += n;
            Poll::Ready(Ok(n))
        }
    }

    fn read(data: &[u8], step: usize) -> Option<Result<Request, HeadError>> {
        futures_lite::future::block_on(read_head(&mut Trickle::new(data, step)))
            .expect("the test reader never fails")
    }

    fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
        }
    }

    fn malformed(head: &[u8]) -> &'static str {
        match parse_head(head) {
            Err(HeadError::Malformed(why)) => why,
            other => panic!(
                "{:?}: expected Malformed, got {other:?}",
                String::from_utf8_lossy(head)
            ),
        }
    }

    /// A head with `n` header lines.
    fn with_headers(n: usize) -> Vec<u8> {
        let mut head = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head
    }

    #[test]
    fn well_formed_get() {
        let head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        assert_eq!(parse_head(head), Ok(Some(get("/metrics"))));
        assert_eq!(read(head, 1024), Some(Ok(get("/metrics"))));
        // HTTP/1.0, bare line feeds, and a body after the head (never read).
        assert_eq!(
            parse_head(b"GET /v1/ready HTTP/1.0\n\n"),
            Ok(Some(get("/v1/ready")))
        );
        assert_eq!(
            parse_head(b"POST /v1/health HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
            Ok(Some(Request {
                method: "POST".into(),
                path: "/v1/health".into()
            }))
        );
        // Nothing sent at all is not an error: the peer just closed.
        assert_eq!(read(b"", 1024), None);
    }

    #[test]
    fn request_split_across_reads() {
        let head = b"GET /v1/status HTTP/1.1\r\nHost: localhost:9644\r\nUser-Agent: t\r\n\r\n";
        for end in 0..head.len() {
            assert_eq!(parse_head(&head[..end]), Ok(None), "prefix of {end} bytes");
        }
        for step in [1, 2, 7, 30] {
            assert_eq!(
                read(head, step),
                Some(Ok(get("/v1/status"))),
                "{step} bytes a read"
            );
        }
        // The client closes before the blank line.
        assert_eq!(
            read(&head[..head.len() - 2], 5),
            Some(Err(HeadError::Malformed("connection closed mid-request")))
        );
    }

    #[test]
    fn oversized_header_block() {
        let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(100_000, b'a');
        big.extend_from_slice(b"\r\n\r\n");
        let mut reader = Trickle::new(&big, 4096);
        let got = futures_lite::future::block_on(read_head(&mut reader)).unwrap();
        assert_eq!(got, Some(Err(HeadError::TooLarge)));
        assert_eq!(
            reader.given, REQUEST_HEAD_BYTES_MAX,
            "reads stop at the bound"
        );
        // A complete head one byte over the bound is refused too; one at the bound is not.
        let fits = |len: usize| {
            let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
            head.resize(len - 4, b'a');
            head.extend_from_slice(b"\r\n\r\n");
            parse_head(&head)
        };
        assert_eq!(fits(REQUEST_HEAD_BYTES_MAX), Ok(Some(get("/"))));
        assert_eq!(fits(REQUEST_HEAD_BYTES_MAX + 1), Err(HeadError::TooLarge));
        assert!(HeadError::TooLarge.response().starts_with(b"HTTP/1.1 431 "));
    }

    #[test]
    fn too_many_headers() {
        assert_eq!(
            parse_head(&with_headers(REQUEST_HEADERS_MAX)),
            Ok(Some(get("/metrics")))
        );
        assert_eq!(
            parse_head(&with_headers(REQUEST_HEADERS_MAX + 1)),
            Err(HeadError::TooManyHeaders)
        );
        assert_eq!(
            read(&with_headers(500), 100),
            Some(Err(HeadError::TooManyHeaders))
        );
        assert!(HeadError::TooManyHeaders
            .response()
            .starts_with(b"HTTP/1.1 431 "));
    }

    #[test]
    fn malformed_request_line() {
        assert_eq!(malformed(b"GET /\r\n\r\n"), "bad request line");
        assert_eq!(malformed(b"garbage\r\n\r\n"), "bad request line");
        assert_eq!(malformed(b"GET  / HTTP/1.1\r\n\r\n"), "bad request line");
        assert_eq!(
            malformed(b"GET / SPDY/3\r\n\r\n"),
            "not HTTP/1.0 or HTTP/1.1"
        );
        assert_eq!(
            malformed(b"GET / HTTP/2.0\r\n\r\n"),
            "not HTTP/1.0 or HTTP/1.1"
        );
        assert_eq!(malformed(b"GET / HTTP/1.1 x\r\n\r\n"), "bad line ending");
        assert_eq!(malformed(b"get / HTTP/1.1\r\n\r\n"), "bad method");
        assert_eq!(
            malformed(b"GET http://a/metrics HTTP/1.1\r\n\r\n"),
            "request target must be a path"
        );
        assert_eq!(
            malformed(b"GET / HTTP/1.1\r\nno colon\r\n\r\n"),
            "bad header line"
        );
        assert_eq!(
            malformed(b"GET / HTTP/1.1\r\nA b: c\r\n\r\n"),
            "bad header line"
        );
        // Refused as soon as the bad byte arrives, without waiting for the rest of the head.
        assert_eq!(
            malformed(b"GET / SPDY/3\r\nHost: a\r\n"),
            "not HTTP/1.0 or HTTP/1.1"
        );
        let answer = HeadError::Malformed("bad method").response();
        assert!(
            answer.starts_with(b"HTTP/1.1 400 ") && answer.ends_with(b"bad request: bad method\n")
        );
    }

    #[test]
    fn non_utf8_garbage() {
        assert_eq!(malformed(b"\xff\xfe\r\n\r\n"), "bad request line");
        assert_eq!(malformed(b"GET /\xff HTTP/1.1\r\n\r\n"), "bad request line");
        assert_eq!(
            malformed(b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n"),
            "request head is not UTF-8"
        );
        let noise: Vec<u8> = (0..=255u8).cycle().take(1024).chain(*b"\r\n\r\n").collect();
        assert!(matches!(
            read(&noise, 100),
            Some(Err(HeadError::Malformed(_)))
        ));
        // Pseudo-random bytes, with and without a valid request line in front: always an
        // answer, never a panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2_000 {
            let mut input = if round % 2 == 0 {
                b"GET / HTTP/1.1\r\n".to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..(round % 300) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                input.push(match x % 8 {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b':',
                    3 => b' ',
                    _ => (x >> 8) as u8,
                });
            }
            let _ = parse_head(&input);
            let _ = read(&input, 1 + round % 64);
        }
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = String::from_utf8(response(404, "text/plain", b"nope", None)).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(
            r.contains("Content-Length: 4\r\n")
                && r.contains("Connection: close\r\n")
                && r.ends_with("\r\n\r\nnope")
        );
    }
}
