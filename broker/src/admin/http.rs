//! A deliberately small HTTP/1.1 request reader: one GET-style request per connection, headers
//! only (a body is never read), bounded in size and time. Enough for health checks, load
//! balancers and Prometheus; anything else gets a 4xx and the connection is closed.

/// Largest request head (request line + headers) read. Prometheus and curl send a few hundred
/// bytes; 8 KiB is what common servers allow per header section.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;

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
}

/// Where the request head ends (index just past the blank line), if it is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// Parses a complete request head.
pub fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text =
        std::str::from_utf8(head).map_err(|_| HeadError::Malformed("request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("bad request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed("bad method"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HeadError::Malformed("not HTTP/1.0 or HTTP/1.1"));
    }
    if !target.starts_with('/') {
        return Err(HeadError::Malformed("request target must be a path"));
    }
    for header in lines.take_while(|l| !l.is_empty()) {
        match header.split_once(':') {
            Some((name, _)) if !name.is_empty() && !name.contains(' ') => {}
            _ => return Err(HeadError::Malformed("bad header line")),
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
    })
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
    use super::*;

    #[test]
    fn parses_request_lines() {
        let r = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(
            r,
            Request {
                method: "GET".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost"), None);
        assert!(parse_head(b"GET /\r\n\r\n").is_err());
        assert!(parse_head(b"GET / SPDY/3\r\n\r\n").is_err());
        assert!(parse_head(b"get / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno colon\r\n\r\n").is_err());
        assert!(parse_head(b"\xff\xfe\r\n\r\n").is_err());
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
