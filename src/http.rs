//! Plain HTTP/1.1 to one LAN host through ureq, with the guarantees the daemon relies on: one
//! deadline over name resolution, connecting, the request and the whole answer; bounded heads
//! and bodies (an announced length over the limit is refused unread); no redirects, no proxy,
//! no connection pool; errors that never repeat the URL.
//!
//! The host name is resolved once per [`Endpoint`] (the daemon builds a new one on every
//! (re)configure), inside the deadline of the call that needs it, so a stuck DNS server can
//! neither stall a tick beyond its timeout nor the restore on SIGTERM.

use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{NextTimeout, TcpConnector};

/// Largest status line + headers accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most addresses ureq takes from a resolver.
const MAX_ADDRS: usize = 16;
/// Longest text of a server's protocol error kept in a message.
const MAX_ERROR_TEXT: usize = 200;

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Resolving, connecting or the whole call took longer than the timeout.
    Timeout,
    /// Nothing listens on the port.
    Refused,
    /// No connection (no route, unknown host, reset, closed early).
    Unreachable(String),
    /// The head or the body is larger than the accepted limit.
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
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            Error::Unreachable("the connection was reset".into())
        }
        _ => Error::Unreachable(bounded(e.to_string())),
    }
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// What ureq's errors mean here. Its texts can carry the URI (a webhook's secret path), so
/// only those that cannot are passed on.
fn ureq_error(e: ureq::Error) -> Error {
    match e {
        ureq::Error::Timeout(_) => Error::Timeout,
        ureq::Error::Io(e) => match e.get_ref().and_then(|i| i.downcast_ref::<ResolveFailed>()) {
            Some(ResolveFailed(ours)) => ours.clone(),
            None => io_error(&e),
        },
        ureq::Error::HostNotFound => Error::Unreachable("host name not found".into()),
        ureq::Error::ConnectionFailed => Error::Unreachable("cannot connect".into()),
        ureq::Error::LargeResponseHeader(..) | ureq::Error::BodyExceedsLimit(_) => Error::TooLarge,
        ureq::Error::Protocol(p) => Error::Protocol(bounded(p.to_string())),
        ureq::Error::Http(_) => Error::BadUrl("a header or the path cannot be sent".into()),
        ureq::Error::BadUri(_) => Error::BadUrl("the address cannot be used".into()),
        ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => {
            Error::Protocol("the server redirects elsewhere (redirects are not followed)".into())
        }
        other => Error::Protocol(bounded(other.to_string())),
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
    /// Parses `http://host[:port][/path]`; https is refused here (the daemon's client has no
    /// TLS; https webhooks go through the router's TLS client, see `publish`).
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
            return Err(Error::BadUrl("the address must start with http://".into()));
        }
        let rest = &s[scheme_end + 3..];
        let rest = rest.split('#').next().unwrap_or("");
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(auth_end);
        if authority.contains('@') {
            return Err(Error::BadUrl("user names are not supported".into()));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (inner, after) = v6
                .split_once(']')
                .ok_or_else(|| Error::BadUrl("unclosed [".into()))?;
            inner
                .parse::<Ipv6Addr>()
                .map_err(|_| Error::BadUrl("bad IPv6 address".into()))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| Error::BadUrl("bad port".into()))?,
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
            return Err(Error::BadUrl("missing or invalid host".into()));
        }
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(Error::BadUrl("bad port".into())),
            },
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Error::BadUrl("spaces or control characters".into()));
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
}

/// An answer. Only a 2xx answer's body is read: the others are decided on their status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The headers the daemon uses (`Retry-After`), names in lower case.
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

/// Resolves one host name at most once per [`Endpoint`], each attempt bounded by the calling
/// request's deadline. A lookup that outlives its deadline keeps running in its thread and is
/// picked up by the next call, so a dead DNS server costs one thread, not one per tick.
#[derive(Debug)]
struct OnceResolver {
    host: String,
    port: u16,
    state: Mutex<Lookup>,
}

#[derive(Debug, Default)]
struct Lookup {
    done: Option<Vec<SocketAddr>>,
    pending: Option<Arc<Slot>>,
}

/// Where a lookup thread leaves its answer. (A mutex and a condition variable rather than a
/// channel: the same wait for a fraction of the code on a router.)
#[derive(Debug, Default)]
struct Slot {
    answer: Mutex<Option<io::Result<Vec<SocketAddr>>>>,
    ready: Condvar,
}

impl Slot {
    fn put(&self, r: io::Result<Vec<SocketAddr>>) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        self.ready.notify_all();
    }

    /// The answer, if it comes within `wait`.
    fn take(&self, wait: Duration) -> Option<io::Result<Vec<SocketAddr>>> {
        let guard = self.answer.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = self
            .ready
            .wait_timeout_while(guard, wait, |a| a.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.take()
    }
}

impl OnceResolver {
    fn new(host: &str, port: u16) -> OnceResolver {
        let done = host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| vec![SocketAddr::new(ip, port)]);
        OnceResolver {
            host: host.to_string(),
            port,
            state: Mutex::new(Lookup {
                done,
                pending: None,
            }),
        }
    }

    /// The host's addresses, waiting at most `wait` for the lookup.
    fn addrs(&self, wait: Duration) -> Result<Vec<SocketAddr>, Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = &st.done {
            return Ok(a.clone());
        }
        let slot = match st.pending.take() {
            Some(slot) => slot,
            None => {
                let slot = Arc::new(Slot::default());
                let theirs = slot.clone();
                let target = (self.host.clone(), self.port);
                std::thread::Builder::new()
                    .name("resolve".into())
                    .spawn(move || {
                        theirs.put(target.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
                    })
                    .map_err(|e| {
                        Error::Unreachable(format!("cannot start the name lookup: {e}"))
                    })?;
                slot
            }
        };
        match slot.take(wait) {
            Some(Ok(a)) if !a.is_empty() => {
                st.done = Some(a.clone());
                Ok(a)
            }
            Some(_) => Err(Error::Unreachable("host name not found".into())),
            None => {
                st.pending = Some(slot);
                Err(Error::Timeout)
            }
        }
    }
}

/// Carries our own error through ureq's resolver interface (as an I/O error's inner error).
#[derive(Debug)]
struct ResolveFailed(Error);

impl fmt::Display for ResolveFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ResolveFailed {}

#[derive(Debug)]
struct SharedResolver(Arc<OnceResolver>);

impl Resolver for SharedResolver {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        // Every request of this agent goes to the endpoint's own host (no redirects, no proxy).
        let wait = (*timeout.after).max(Duration::from_millis(1));
        match self.0.addrs(wait) {
            Ok(list) => {
                let mut out = self.empty();
                for a in list.into_iter().take(MAX_ADDRS) {
                    out.push(a);
                }
                Ok(out)
            }
            Err(Error::Timeout) => Err(ureq::Error::Timeout(ureq::Timeout::Resolve)),
            Err(e) => Err(ureq::Error::Io(io::Error::other(ResolveFailed(e)))),
        }
    }
}

/// One HTTP server: its URL, its (lazily, once) resolved address and the client settings.
pub struct Endpoint {
    url: Url,
    agent: ureq::Agent,
    resolver: Arc<OnceResolver>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.url.host)
            .field("port", &self.url.port)
            .finish()
    }
}

impl Endpoint {
    /// A client for `url` whose every call, name lookup included, ends within `timeout`.
    pub fn new(url: Url, timeout: Duration) -> Endpoint {
        let resolver = Arc::new(OnceResolver::new(&url.host, url.port));
        Self::build(url, timeout, resolver)
    }

    /// The same server with another timeout, keeping the address already looked up (the
    /// shutdown shortens the timeout and must not wait for DNS again).
    pub fn with_timeout(&self, timeout: Duration) -> Endpoint {
        Self::build(self.url.clone(), timeout, self.resolver.clone())
    }

    fn build(url: Url, timeout: Duration, resolver: Arc<OnceResolver>) -> Endpoint {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            // The API key must reach only the configured server: no proxy from the
            // environment, ever.
            .proxy(None)
            .timeout_global(Some(timeout))
            .max_response_header_size(MAX_HEAD)
            // One connection per call: a server restarted between ticks never meets a stale
            // pooled socket, and a POST is never retried.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent(concat!("jellydemon/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            TcpConnector::default(),
            SharedResolver(resolver.clone()),
        );
        Endpoint {
            url,
            agent,
            resolver,
        }
    }

    /// The server's addresses once they are known (for the status and `check`).
    pub fn resolved(&self) -> Option<Vec<SocketAddr>> {
        let st = self
            .resolver
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        st.done.clone()
    }

    /// Sends one request and reads the answer. A 2xx body longer than `max_body` is
    /// `TooLarge`, refused unread when its length is announced; bodies of other statuses are
    /// not read.
    pub fn request(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        max_body: u64,
    ) -> Result<Response, Error> {
        let target = self.url.target(path_and_query);
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(Error::BadUrl(
                "spaces or control characters in the path".into(),
            ));
        }
        let uri = format!("http://{}{target}", self.url.host_header());
        let mut req = ureq::http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        // ureq frames a POST with no body as chunked; Jellyfin's POSTs without a body get an
        // explicit `Content-Length: 0`, as every other client sends them.
        let needs_length = matches!(method, "POST" | "PUT" | "PATCH");
        let body = body.or(needs_length.then_some(&[][..]));
        let resp = match body {
            Some(b) => req
                .body(b)
                .map_err(|_| Error::BadUrl("a header or the path cannot be sent".into()))
                .and_then(|r| self.agent.run(r).map_err(ureq_error)),
            None => req
                .body(())
                .map_err(|_| Error::BadUrl("a header or the path cannot be sent".into()))
                .and_then(|r| self.agent.run(r).map_err(ureq_error)),
        }?;
        let status = resp.status().as_u16();
        // Only what the daemon decides on (503's hint) is kept.
        let headers = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(|v| vec![("retry-after".to_string(), v.to_string())])
            .unwrap_or_default();
        let mut out = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if !(200..300).contains(&status) || method.eq_ignore_ascii_case("HEAD") {
            return Ok(out);
        }
        let mut body = resp.into_body();
        if let Some(len) = body.content_length() {
            if len > max_body {
                return Err(Error::TooLarge);
            }
            // Announced and allowed: one allocation of the right size instead of doublings.
            out.body.reserve_exact(usize::try_from(len).unwrap_or(0));
        }
        let mut reader = body.as_reader().take(max_body.saturating_add(1));
        reader
            .read_to_end(&mut out.body)
            .map_err(|e| ureq_error(ureq::Error::from(e)))?;
        if out.body.len() as u64 > max_body {
            return Err(Error::TooLarge);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::mpsc::{self, channel};
    use std::time::Instant;

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
            let e = Url::parse(bad).unwrap_err();
            assert!(matches!(e, Error::BadUrl(_)), "{bad}");
            // Webhook URLs carry secrets in their path: errors never repeat the address.
            assert!(!e.to_string().contains(bad.trim()), "{bad}: {e}");
        }
    }

    /// A server thread that reads the request head, writes `answer` in pieces of `step` bytes
    /// (flushing each, as a slow network delivers), then holds the connection open until the
    /// test ends. Returns the endpoint URL, the request as received, and the guard.
    fn serve_in_steps(
        answer: Vec<u8>,
        step: usize,
    ) -> (Url, mpsc::Receiver<Vec<u8>>, mpsc::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let (req_tx, req_rx) = channel();
        let (hold_tx, hold_rx) = channel::<()>();
        std::thread::spawn(move || {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = conn.set_nodelay(true);
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = req_tx.send(got);
            for piece in answer.chunks(step.max(1)) {
                if conn.write_all(piece).and_then(|_| conn.flush()).is_err() {
                    return;
                }
            }
            let _ = hold_rx.recv_timeout(Duration::from_secs(10));
        });
        (url, req_rx, hold_tx)
    }

    fn serve(answer: &[u8]) -> (Url, mpsc::Receiver<Vec<u8>>, mpsc::Sender<()>) {
        serve_in_steps(answer.to_vec(), usize::MAX)
    }

    fn get(url: Url, timeout: Duration, max: u64) -> Result<Response, Error> {
        Endpoint::new(url, timeout).request("GET", "/", &[], None, max)
    }

    fn answer(data: &[u8], max: u64) -> Result<Response, Error> {
        let (url, _req, _hold) = serve(data);
        get(url, Duration::from_secs(2), max)
    }

    #[test]
    fn round_trip_sends_what_it_is_given() {
        let (url, req, _hold) =
            serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nRetry-After: 7 \r\n\r\nok");
        let ep = Endpoint::new(url, Duration::from_secs(5));
        let r = ep
            .request(
                "POST",
                "/a?b=1",
                &[("Authorization", "t"), ("Content-Type", "application/json")],
                Some(b"{}"),
                10,
            )
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
        assert_eq!(r.header("Retry-After"), Some("7"));
        let sent = String::from_utf8(req.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
        let lower = sent.to_ascii_lowercase();
        assert!(sent.starts_with("POST /a?b=1 HTTP/1.1\r\n"), "{sent}");
        assert!(lower.contains("\r\nauthorization: t\r\n"), "{sent}");
        assert!(lower.contains("\r\nhost: 127.0.0.1:"), "{sent}");
        assert!(lower.contains("\r\ncontent-length: 2\r\n"), "{sent}");
        assert!(lower.contains("\r\nuser-agent: jellydemon/"), "{sent}");
        assert_eq!(ep.resolved().map(|a| a.len()), Some(1));
        assert_eq!(
            ep.with_timeout(Duration::from_secs(1)).resolved(),
            ep.resolved()
        );
    }

    #[test]
    fn a_post_without_body_announces_zero() {
        let (url, req, _hold) = serve(b"HTTP/1.1 204 No Content\r\n\r\n");
        let r = Endpoint::new(url, Duration::from_secs(5))
            .request("POST", "/x", &[], None, 10)
            .unwrap();
        assert_eq!(r.status, 204);
        let sent = String::from_utf8(req.recv_timeout(Duration::from_secs(5)).unwrap())
            .unwrap()
            .to_ascii_lowercase();
        assert!(sent.contains("\r\ncontent-length: 0\r\n"), "{sent}");
        assert!(!sent.contains("transfer-encoding"), "{sent}");
    }

    #[test]
    fn chunked_bodies_in_every_split() {
        let data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1A \r\n abcdefghijklmnopqrstuvwxy\r\n0\r\nTrailer: x\r\n\r\n";
        for step in [1, 2, 3, 7, 16, 50] {
            let (url, _req, _hold) = serve_in_steps(data.to_vec(), step);
            let r = get(url, Duration::from_secs(5), 1024).unwrap();
            assert_eq!(r.body, b"hello abcdefghijklmnopqrstuvwxy", "step {step}");
        }
    }

    #[test]
    fn limits() {
        // Announced: refused whatever follows.
        assert_eq!(
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1025\r\n\r\n", 1024),
            Err(Error::TooLarge)
        );
        let at_limit = [
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".as_slice(),
            &[b'x'; 1024],
        ]
        .concat();
        let (url, _req, hold) = serve(&at_limit);
        // Close-delimited: the body ends when the server closes.
        drop(hold);
        assert_eq!(
            get(url, Duration::from_secs(2), 1024).unwrap().body.len(),
            1024
        );
        let over = [at_limit.as_slice(), b"x"].concat();
        let (url, _req, hold) = serve(&over);
        drop(hold);
        assert_eq!(get(url, Duration::from_secs(2), 1024), Err(Error::TooLarge));
        let announced_at_limit = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n".as_slice(),
            &[b'x'; 1024],
        ]
        .concat();
        assert_eq!(answer(&announced_at_limit, 1024).unwrap().body.len(), 1024);
        let chunked = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n".as_slice(),
            &[b'x'; 1025],
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(answer(&chunked, 1024), Err(Error::TooLarge));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..200 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        assert!(answer(&many, 1024).is_err());
        let long = [
            b"HTTP/1.1 200 OK\r\nX: ".as_slice(),
            &vec![b'a'; MAX_HEAD],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(answer(&long, 1024), Err(Error::TooLarge));
    }

    #[test]
    fn bodies_of_other_statuses_are_not_read() {
        for data in [
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\n\r\n",
            "HTTP/1.1 503 Unavailable\r\nContent-Length: 99999999\r\nRetry-After: 5\r\n\r\n",
            "HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 5\r\n\r\n",
        ] {
            let r = answer(data.as_bytes(), 10).unwrap();
            assert!(r.body.is_empty(), "{data}");
        }
        let r = answer(b"HTTP/1.1 503 x\r\nRetry-After: 005\r\n\r\n", 10).unwrap();
        assert_eq!((r.status, r.header("retry-after")), (503, Some("005")));
        let r = answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            10,
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok".as_slice()));
    }

    #[test]
    fn malformed_answers_are_errors() {
        for data in [
            "\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            "HTTP/1.1 200 OK\r\nX: y",
            "",
        ] {
            let (url, _req, hold) = serve(data.as_bytes());
            drop(hold);
            let e = get(url, Duration::from_secs(2), 1024).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Protocol(_) | Error::Unreachable(_) | Error::TooLarge
                ),
                "{data:?}: {e:?}"
            );
        }
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
            let e = get(url, Duration::from_millis(300), 100);
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
        assert_eq!(get(url, Duration::from_secs(2), 10), Err(Error::Refused));
        let url = Url::parse("http://no-such-host.invalid").unwrap();
        let e = get(url, Duration::from_secs(5), 10);
        assert!(matches!(e, Err(Error::Unreachable(_))), "{e:?}");
    }

    #[test]
    fn bad_headers_and_paths_are_refused_before_sending() {
        let ep = Endpoint::new(
            Url::parse("http://127.0.0.1:9").unwrap(),
            Duration::from_secs(1),
        );
        for (p, hs) in [
            ("/a\r\nX: y", &[][..]),
            ("/a b", &[][..]),
            ("/", &[("X", "a\r\nEvil: 1")][..]),
            ("/", &[("X Y", "a")][..]),
        ] {
            let e = ep.request("GET", p, hs, None, 10).unwrap_err();
            assert!(matches!(e, Error::BadUrl(_)), "{p:?} {hs:?}: {e:?}");
        }
    }

    /// A host name is looked up once per endpoint; a lookup that does not finish in time ends
    /// the call at its deadline, and the next call picks up the same lookup.
    #[test]
    fn names_are_resolved_once_and_within_the_deadline() {
        let r = OnceResolver::new("localhost", 8096);
        let a = r.addrs(Duration::from_secs(5)).unwrap();
        assert!(
            a.iter().all(|s| s.ip().is_loopback() && s.port() == 8096),
            "{a:?}"
        );
        assert!(r.state.lock().unwrap().done.is_some());
        // An address needs no lookup at all.
        let r = OnceResolver::new("fd00::2", 80);
        assert_eq!(
            r.addrs(Duration::ZERO).unwrap(),
            vec!["[fd00::2]:80".parse().unwrap()]
        );
        // A lookup still running is waited for, not started again.
        let r = OnceResolver::new("slow.invalid", 80);
        let slot = Arc::new(Slot::default());
        r.state.lock().unwrap().pending = Some(slot.clone());
        let t = Instant::now();
        assert_eq!(r.addrs(Duration::from_millis(200)), Err(Error::Timeout));
        assert!(t.elapsed() >= Duration::from_millis(150));
        assert!(t.elapsed() < Duration::from_secs(1));
        slot.put(Ok(vec!["192.0.2.7:80".parse().unwrap()]));
        assert_eq!(
            r.addrs(Duration::from_millis(200)).unwrap(),
            vec!["192.0.2.7:80".parse().unwrap()]
        );
    }
}
