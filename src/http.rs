//! A minimal synchronous HTTP/1.1 client on `std::net`: plain HTTP to a LAN host, one
//! connection per request, the whole call bounded by one timeout, every answer bounded in size.
//!
//! The daemon talks to one Jellyfin server and one webhook receiver and decides on status codes,
//! so this is all it needs; a general client cost ~145 KB of a 900 KB router binary.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest status line + headers accepted (all interim 1xx answers included).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines accepted in one answer.
pub const MAX_HEADERS: usize = 100;

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Connecting or the whole call took longer than the timeout.
    Timeout,
    /// Nothing listens on the port.
    Refused,
    /// No connection (no route, unknown host, reset, closed early).
    Unreachable(String),
    /// The body is larger than the accepted limit.
    TooLarge,
    /// The answer is not HTTP/1.x as the client understands it.
    Protocol(String),
    /// The URL or the request cannot be used.
    BadUrl(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => f.write_str("no answer in time"),
            Error::Refused => f.write_str("connection refused"),
            Error::Unreachable(why) => f.write_str(why),
            Error::TooLarge => f.write_str("the answer is larger than the accepted limit"),
            Error::Protocol(why) => write!(f, "HTTP protocol error: {why}"),
            Error::BadUrl(why) => write!(f, "bad URL: {why}"),
        }
    }
}

impl std::error::Error for Error {}

fn io_error(e: &io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout,
        io::ErrorKind::ConnectionRefused => Error::Refused,
        io::ErrorKind::UnexpectedEof => {
            Error::Unreachable("the connection closed before the answer was complete".into())
        }
        _ => Error::Unreachable(e.to_string()),
    }
}

/// Where requests go: `http://host[:port][/path]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// A host name, an IPv4 address or an IPv6 address (without brackets).
    pub host: String,
    pub port: u16,
    /// Prefix of every request path, without a trailing `/` (may be empty; may carry a query).
    pub base_path: String,
}

impl Url {
    /// Parses `http://host[:port][/path]`; https is refused (TLS is not built in).
    pub fn parse(s: &str) -> Result<Url, Error> {
        let s = s.trim();
        let scheme_end = s.find("://").unwrap_or(0);
        let scheme = s[..scheme_end].to_ascii_lowercase();
        if scheme == "https" {
            return Err(Error::BadUrl(
                "https is not supported (TLS is not built in); use an http:// address on the LAN"
                    .into(),
            ));
        }
        if scheme != "http" {
            return Err(Error::BadUrl(format!("{s:?} must start with http://")));
        }
        let rest = &s[scheme_end + 3..];
        let rest = rest.split('#').next().unwrap_or("");
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(auth_end);
        if authority.contains('@') {
            return Err(Error::BadUrl(format!(
                "{s:?}: user names are not supported"
            )));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (inner, after) = v6
                .split_once(']')
                .ok_or_else(|| Error::BadUrl(format!("{s:?}: unclosed [")))?;
            inner
                .parse::<Ipv6Addr>()
                .map_err(|_| Error::BadUrl(format!("{s:?}: bad IPv6 address")))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| Error::BadUrl(format!("{s:?}: bad port")))?,
                ),
            };
            (inner, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let host_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
        if host.is_empty() || !host.chars().all(host_ok) {
            return Err(Error::BadUrl(format!("{s:?}: missing or invalid host")));
        }
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(Error::BadUrl(format!("{s:?}: bad port"))),
            },
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Error::BadUrl(format!(
                "{s:?}: spaces or control characters"
            )));
        }
        Ok(Url {
            host: host.to_string(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn target(&self, path_and_query: &str) -> String {
        let t = format!("{}{}", self.base_path, path_and_query);
        if t.starts_with('/') {
            t
        } else {
            format!("/{t}")
        }
    }

    fn addrs(&self) -> Result<Vec<SocketAddr>, Error> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        match (self.host.as_str(), self.port).to_socket_addrs() {
            Ok(a) => {
                let a: Vec<SocketAddr> = a.collect();
                if a.is_empty() {
                    Err(Error::Unreachable("host name not found".into()))
                } else {
                    Ok(a)
                }
            }
            Err(_) => Err(Error::Unreachable("host name not found".into())),
        }
    }
}

/// An answer. Only a 2xx answer's body is read: the others are decided on their status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Names and values as sent (values trimmed).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Sends one request on a new connection (`Connection: close`) and reads the answer. The whole
/// call, connecting included, ends within `timeout` (name resolution aside); a 2xx body longer
/// than `max_body` is `TooLarge`, refused unread when its length is announced. Bodies of other
/// statuses are not read.
pub fn request(
    url: &Url,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
    max_body: u64,
) -> Result<Response, Error> {
    let deadline = Instant::now() + timeout;
    let head = request_head(url, method, path_and_query, headers, body)?;
    let mut stream = connect(url, deadline)?;
    let mut out = head;
    out.extend_from_slice(body.unwrap_or_default());
    let mut sent = 0;
    while sent < out.len() {
        let left = time_left(deadline)?;
        stream
            .set_write_timeout(Some(left))
            .map_err(|e| io_error(&e))?;
        match stream.write(&out[sent..]) {
            Ok(0) => return Err(Error::Unreachable("the connection closed".into())),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(&e)),
        }
    }
    let mut reader = Deadlined { stream, deadline };
    read_response(&mut reader, method.eq_ignore_ascii_case("HEAD"), max_body)
}

fn request_head(
    url: &Url,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Vec<u8>, Error> {
    if !is_token(method) {
        return Err(Error::BadUrl(format!("bad method {method:?}")));
    }
    let target = url.target(path_and_query);
    if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Error::BadUrl(
            "spaces or control characters in the path".into(),
        ));
    }
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: jellydemon/{}\r\nConnection: close\r\n",
        url.host_header(),
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        // A CR or LF in a value would let it forge headers or a second request.
        if !is_token(name) || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(Error::BadUrl(format!("bad header {name:?}")));
        }
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let needs_length = matches!(method, "POST" | "PUT" | "PATCH");
    match body {
        Some(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        None if needs_length => head.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    Ok(head.into_bytes())
}

fn time_left(deadline: Instant) -> Result<Duration, Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Error::Timeout)
    } else {
        Ok(left)
    }
}

/// Tries every address in turn, each with the time still left.
fn connect(url: &Url, deadline: Instant) -> Result<TcpStream, Error> {
    let mut last = Error::Unreachable("no address".into());
    for addr in url.addrs()? {
        let left = time_left(deadline)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = io_error(&e),
        }
    }
    Err(last)
}

/// A socket whose every read waits at most until the call's deadline.
struct Deadlined {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// A small read buffer over any reader: the parser below never trusts the peer for sizes.
struct Buffered<'a, R> {
    inner: &'a mut R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
}

impl<'a, R: Read> Buffered<'a, R> {
    fn new(inner: &'a mut R) -> Self {
        Buffered {
            inner,
            buf: vec![0; 8192].into_boxed_slice(),
            pos: 0,
            end: 0,
        }
    }

    /// Refills when empty; `Ok(false)` at end of stream.
    fn fill(&mut self) -> Result<bool, Error> {
        if self.pos < self.end {
            return Ok(true);
        }
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(n) => {
                    self.pos = 0;
                    self.end = n.min(self.buf.len());
                    return Ok(self.end > 0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&e)),
            }
        }
    }

    /// One line without its CRLF (or LF); `budget` bounds its length and is charged for it.
    fn line(&mut self, budget: &mut usize) -> Result<Vec<u8>, Error> {
        let mut line = Vec::new();
        loop {
            if !self.fill()? {
                return Err(io_error(&io::ErrorKind::UnexpectedEof.into()));
            }
            let avail = &self.buf[self.pos..self.end];
            let (take, done) = match avail.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            if take > *budget {
                return Err(Error::TooLarge);
            }
            *budget -= take;
            line.extend_from_slice(&avail[..take]);
            self.pos += take;
            if done {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
        }
    }

    /// Appends exactly `n` bytes to `out`.
    fn exact(&mut self, mut n: u64, out: &mut Vec<u8>) -> Result<(), Error> {
        while n > 0 {
            if !self.fill()? {
                return Err(io_error(&io::ErrorKind::UnexpectedEof.into()));
            }
            let avail = self.end - self.pos;
            let take = usize::try_from(n).map_or(avail, |n| n.min(avail));
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take as u64;
        }
        Ok(())
    }

    /// Everything up to the end of the stream, at most `max` bytes.
    fn until_eof(&mut self, max: u64, out: &mut Vec<u8>) -> Result<(), Error> {
        while self.fill()? {
            let avail = (self.end - self.pos) as u64;
            if (out.len() as u64).saturating_add(avail) > max {
                return Err(Error::TooLarge);
            }
            out.extend_from_slice(&self.buf[self.pos..self.end]);
            self.pos = self.end;
        }
        Ok(())
    }
}

fn protocol(why: &str) -> Error {
    Error::Protocol(why.into())
}

/// `HTTP/1.x NNN reason`: the status code.
fn status_line(line: &[u8]) -> Result<u16, Error> {
    let bad = || {
        Error::Protocol(format!(
            "bad status line {:?}",
            String::from_utf8_lossy(line)
        ))
    };
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
    match rest {
        [v, b' ', a, b, c, tail @ ..]
            if v.is_ascii_digit()
                && [a, b, c].iter().all(|d| d.is_ascii_digit())
                && (tail.is_empty() || tail[0] == b' ') =>
        {
            let code =
                u16::from(*a - b'0') * 100 + u16::from(*b - b'0') * 10 + u16::from(*c - b'0');
            if code < 100 {
                return Err(bad());
            }
            Ok(code)
        }
        _ => Err(bad()),
    }
}

/// Reads one answer from `r`: head, then the body as its framing says.
fn read_response<R: Read>(r: &mut R, head_request: bool, max_body: u64) -> Result<Response, Error> {
    let mut r = Buffered::new(r);
    let mut budget = MAX_HEAD;
    let mut head = |r: &mut Buffered<'_, R>| -> Result<Response, Error> {
        let status = status_line(&r.line(&mut budget)?)?;
        let mut headers = Vec::new();
        loop {
            let line = r.line(&mut budget)?;
            if line.is_empty() {
                return Ok(Response {
                    status,
                    headers,
                    body: Vec::new(),
                });
            }
            if headers.len() >= MAX_HEADERS {
                return Err(Error::TooLarge);
            }
            let line = String::from_utf8_lossy(&line);
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| protocol("header line without a colon"))?;
            if !is_token(name) {
                return Err(Error::Protocol(format!("bad header name {name:?}")));
            }
            headers.push((name.to_string(), value.trim().to_string()));
        }
    };
    let mut resp = head(&mut r)?;
    // Interim answers (100 Continue, 103 Early Hints) precede the real one.
    while (100..200).contains(&resp.status) && resp.status != 101 {
        resp = head(&mut r)?;
    }
    if head_request
        || !(200..300).contains(&resp.status)
        || resp.status == 204
        || resp.status == 304
    {
        return Ok(resp);
    }
    let chunked = match resp.header("transfer-encoding") {
        Some(te) => {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                // Framed by the end of the connection (RFC 9112 6.3).
                r.until_eof(max_body, &mut resp.body)?;
                return Ok(resp);
            }
            true
        }
        None => false,
    };
    if chunked {
        read_chunked(&mut r, max_body, &mut resp.body)?;
    } else if let Some(len) = content_length(&resp)? {
        if len > max_body {
            return Err(Error::TooLarge);
        }
        r.exact(len, &mut resp.body)?;
    } else {
        r.until_eof(max_body, &mut resp.body)?;
    }
    Ok(resp)
}

fn content_length(resp: &Response) -> Result<Option<u64>, Error> {
    let mut found: Option<u64> = None;
    for (_, v) in resp
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        // `Content-Length: 5, 5` is allowed; differing values are not.
        for part in v.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::Protocol(format!("bad Content-Length {v:?}")));
            }
            // More digits than u64 holds is larger than any limit.
            let n = part.parse::<u64>().unwrap_or(u64::MAX);
            if found.is_some_and(|f| f != n) {
                return Err(protocol("conflicting Content-Length"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

fn too_long_is_bad(e: Error) -> Error {
    match e {
        Error::TooLarge => protocol("bad chunk framing"),
        other => other,
    }
}

fn read_chunked<R: Read>(
    r: &mut Buffered<'_, R>,
    max_body: u64,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    loop {
        let mut budget = 4096;
        let line = r.line(&mut budget).map_err(too_long_is_bad)?;
        let line = String::from_utf8_lossy(&line);
        let size = line.split(';').next().unwrap_or("").trim();
        if size.is_empty() || size.len() > 16 {
            return Err(Error::Protocol(format!("bad chunk size {size:?}")));
        }
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| Error::Protocol(format!("bad chunk size {size:?}")))?;
        if size == 0 {
            // Trailers, then the empty line.
            let mut budget = MAX_HEAD;
            while !r.line(&mut budget)?.is_empty() {}
            return Ok(());
        }
        if (out.len() as u64).saturating_add(size) > max_body {
            return Err(Error::TooLarge);
        }
        r.exact(size, out)?;
        let mut budget = 2;
        if !r.line(&mut budget).map_err(too_long_is_bad)?.is_empty() {
            return Err(protocol("chunk not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::TcpListener;
    use std::sync::mpsc::channel;

    /// Hands out the answer a few bytes per read, as a slow network would.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.max(1).min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn parse_with(data: &[u8], step: usize, max: u64) -> Result<Response, Error> {
        read_response(&mut Trickle { data, step }, false, max)
    }

    fn parse(data: &[u8]) -> Result<Response, Error> {
        parse_with(data, 1 << 20, 1024)
    }

    #[test]
    fn content_length_body() {
        let r =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b \r\n\r\nhelloEXTRA").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.header("CONTENT-LENGTH"), Some("5"));
        assert_eq!(r.header("missing"), None);
    }

    #[test]
    fn chunked_bodies_in_every_split() {
        let data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1A \r\n abcdefghijklmnopqrstuvwxy\r\n0\r\nTrailer: x\r\n\r\n";
        for step in 1..data.len() {
            let r = parse_with(data, step, 1024).unwrap();
            assert_eq!(r.body, b"hello abcdefghijklmnopqrstuvwxy", "step {step}");
        }
    }

    #[test]
    fn bare_lf_lines_and_eof_bodies() {
        let r = parse(b"HTTP/1.0 200 OK\nServer: x\n\nto the end").unwrap();
        assert_eq!(r.body, b"to the end");
        let r = parse(b"HTTP/1.1 201\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.len()), (201, 0));
    }

    #[test]
    fn limits() {
        // Announced: refused whatever follows.
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1025\r\n\r\n"),
            Err(Error::TooLarge)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(Error::TooLarge)
        );
        let at_limit = [b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), &[b'x'; 1024]].concat();
        assert_eq!(parse(&at_limit).unwrap().body.len(), 1024);
        let over = [at_limit.as_slice(), b"x"].concat();
        assert_eq!(parse(&over), Err(Error::TooLarge));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n";
        assert_eq!(parse(chunked), Err(Error::TooLarge));
        let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n";
        assert_eq!(parse(huge), Err(Error::TooLarge));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many), Err(Error::TooLarge));
        let long = [
            b"HTTP/1.1 200 OK\r\nX: ".as_slice(),
            &vec![b'a'; MAX_HEAD],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(parse(&long), Err(Error::TooLarge));
    }

    #[test]
    fn bodies_not_read() {
        let no_body = [
            "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            "HTTP/1.1 503 Unavailable\r\nContent-Length: 99999999\r\nRetry-After: 5\r\n\r\n",
            "HTTP/1.1 101 Switching\r\n\r\n",
        ];
        for data in no_body {
            let r = parse(data.as_bytes()).unwrap();
            assert!(r.body.is_empty(), "{data}");
        }
        let r = read_response(
            &mut &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..],
            true,
            5,
        )
        .unwrap();
        assert_eq!((r.status, r.body.len()), (200, 0));
        let r =
            parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    }

    #[test]
    fn malformed_answers() {
        for data in [
            "",
            "\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 099 OK\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            "HTTP/1.1 200 OK\r\nX: y",
        ] {
            let e = parse(data.as_bytes()).unwrap_err();
            assert!(
                matches!(e, Error::Protocol(_) | Error::Unreachable(_)),
                "{data:?}: {e:?}"
            );
        }
    }

    #[test]
    fn urls() {
        let u = Url::parse(" http://192.168.1.2:8096/jellyfin/ ").unwrap();
        assert_eq!(
            u,
            Url {
                host: "192.168.1.2".into(),
                port: 8096,
                base_path: "/jellyfin".into()
            }
        );
        assert_eq!(u.target("/Sessions"), "/jellyfin/Sessions");
        assert_eq!(u.host_header(), "192.168.1.2:8096");
        let u = Url::parse("HTTP://[fd00::2]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fd00::2", 80));
        assert_eq!(u.host_header(), "[fd00::2]");
        assert_eq!(u.target(""), "/");
        let u = Url::parse("http://nas.lan:81/hook?x=1#frag").unwrap();
        assert_eq!(u.target(""), "/hook?x=1");
        assert_eq!(Url::parse("http://h?a=b").unwrap().target(""), "/?a=b");
        let e = Url::parse("https://nas").unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        for bad in [
            "nas:8096",
            "ftp://nas",
            "http://",
            "http://:80",
            "http://u:p@nas",
            "http://nas:0",
            "http://nas:65536",
            "http://nas:+80",
            "http://[fd00::2",
            "http://[nope]:80",
            "http://[::1]x",
            "http://a b/",
            "http://nas/a b",
        ] {
            assert!(matches!(Url::parse(bad), Err(Error::BadUrl(_))), "{bad}");
        }
    }

    #[test]
    fn request_heads() {
        let u = Url::parse("http://nas:8096/jf").unwrap();
        let h = request_head(&u, "POST", "/x?a=1", &[("Accept", "*/*")], None).unwrap();
        let h = String::from_utf8(h).unwrap();
        assert!(
            h.starts_with("POST /jf/x?a=1 HTTP/1.1\r\nHost: nas:8096\r\n"),
            "{h}"
        );
        assert!(h.contains("\r\nUser-Agent: jellydemon/"), "{h}");
        assert!(h.contains("\r\nConnection: close\r\n"), "{h}");
        assert!(h.contains("\r\nAccept: */*\r\n"), "{h}");
        assert!(h.ends_with("\r\nContent-Length: 0\r\n\r\n"), "{h}");
        let h = request_head(&u, "GET", "/y", &[], None).unwrap();
        assert!(!String::from_utf8(h).unwrap().contains("Content-Length"));
        let h = request_head(&u, "POST", "/y", &[], Some(b"{}")).unwrap();
        assert!(String::from_utf8(h)
            .unwrap()
            .contains("Content-Length: 2\r\n"));
        for (m, p, hs) in [
            ("GET", "/a\r\nX: y", &[][..]),
            ("GET", "/a b", &[][..]),
            ("G ET", "/", &[][..]),
            ("GET", "/", &[("X", "a\r\nEvil: 1")][..]),
            ("GET", "/", &[("X Y", "a")][..]),
        ] {
            assert!(
                matches!(request_head(&u, m, p, hs, None), Err(Error::BadUrl(_))),
                "{m} {p:?} {hs:?}"
            );
        }
    }

    /// A server thread that reads the request, writes `answer`, then holds the connection open
    /// until the test ends. Returns the URL, the request as received, and the guard.
    fn serve(
        answer: &'static [u8],
    ) -> (
        Url,
        std::sync::mpsc::Receiver<Vec<u8>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let (req_tx, req_rx) = channel();
        let (hold_tx, hold_rx) = channel::<()>();
        std::thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = req_tx.send(got);
            let _ = conn.write_all(answer);
            let _ = hold_rx.recv_timeout(Duration::from_secs(10));
        });
        (url, req_rx, hold_tx)
    }

    #[test]
    fn real_socket_round_trip() {
        let (url, req, _hold) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let r = request(
            &url,
            "GET",
            "/a",
            &[("Authorization", "t")],
            None,
            Duration::from_secs(5),
            10,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
        let sent = String::from_utf8(req.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
        assert!(sent.starts_with("GET /a HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("\r\nAuthorization: t\r\n"), "{sent}");
    }

    #[test]
    fn stalls_end_at_the_deadline() {
        for answer in [
            b"".as_slice(),
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        ] {
            let (url, _req, _hold) = serve(answer);
            let t = Instant::now();
            let e = request(&url, "GET", "/", &[], None, Duration::from_millis(300), 100);
            let took = t.elapsed();
            assert_eq!(e, Err(Error::Timeout), "{answer:?}");
            assert!(took >= Duration::from_millis(250), "{took:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
        }
    }

    #[test]
    fn refused_and_unknown_hosts() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = request(&url, "GET", "/", &[], None, Duration::from_secs(2), 10);
        assert_eq!(e, Err(Error::Refused));
        let url = Url::parse("http://no-such-host.invalid").unwrap();
        let e = request(&url, "GET", "/", &[], None, Duration::from_secs(2), 10);
        assert!(matches!(e, Err(Error::Unreachable(_))), "{e:?}");
    }

    proptest! {
        #[test]
        fn random_answers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048),
                                      step in 1usize..64, max in 0u64..4096) {
            let _ = parse_with(&data, step, max);
        }

        #[test]
        fn mutated_answers_never_panic(
            i in 0usize..200, b in any::<u8>(), step in 1usize..16, max in 0u64..64) {
            let mut data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
                4;x\r\nabcd\r\n10\r\n0123456789abcdef\r\n0\r\nT: 1\r\n\r\n".to_vec();
            let n = data.len();
            data[i % n] = b;
            let _ = parse_with(&data, step, max);
        }
    }
}
