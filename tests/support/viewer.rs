//! A remote Jellyfin viewer: logs in, negotiates a playback like a real client, pulls the stream
//! over real TCP, reports progress, obeys Stop/Play/DisplayMessage from the emulator's command
//! channel and models a player buffer to count stalls.
//!
//! Usable standalone (`homenet viewer`) and from integration tests via
//! `#[path = "support/viewer.rs"] mod viewer;`. Also holds the small HTTP/1.1 client the tests use.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const TICKS_PER_SECOND: f64 = 10_000_000.0;
const START_BUFFER_S: f64 = 2.0;
const TICK: Duration = Duration::from_millis(100);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// One connection attempt while retrying (a browser gives up on a silent server after some
/// seconds and tries again).
const RETRY_ATTEMPT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client (one request per connection)
// ---------------------------------------------------------------------------------------------

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers in arrival order.
    pub headers: Vec<(String, String)>,
    /// The whole body (chunked or not).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
    /// The body as JSON.
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("HTTP {}: bad JSON: {e}", self.status))
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// An open response whose body is still on the socket.
pub struct HttpStream {
    /// Status code.
    pub status: u16,
    /// Headers in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body, still on the socket.
    pub reader: BufReader<TcpStream>,
    /// A handle to shut the connection down from another thread.
    pub socket: TcpStream,
}

/// Sends one request and returns the response head, leaving the body unread.
pub fn http_open(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<HttpStream> {
    http_open_from(None, addr, method, path, headers, body, timeout)
}

/// Connects, from `source` when given (e.g. 127.0.0.2 to look remote on loopback).
pub fn connect(source: Option<IpAddr>, addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
    let Some(src) = source else {
        return TcpStream::connect_timeout(&sa, timeout);
    };
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = if sa.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd =
        socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(io::Error::from)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(SocketAddr::new(src, 0)),
    )
    .map_err(io::Error::from)?;
    nix::sys::socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(sa),
    )
    .map_err(io::Error::from)?;
    Ok(TcpStream::from(fd))
}

/// [`http_open`] from a chosen source address.
pub fn http_open_from(
    source: Option<IpAddr>,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<HttpStream> {
    let mut s = connect(source, addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    } else if method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    let socket = s.try_clone()?;
    let mut reader = BufReader::new(s);
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let mut hdrs = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            hdrs.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(HttpStream {
        status,
        headers: hdrs,
        reader,
        socket,
    })
}

/// Sends one request and reads the whole response.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<HttpResponse> {
    http_from(None, addr, method, path, headers, body, timeout)
}

/// [`http`] from a chosen source address.
pub fn http_from(
    source: Option<IpAddr>,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut st = http_open_from(source, addr, method, path, headers, body, timeout)?;
    let mut out = Vec::new();
    let chunked = find_header(&st.headers, "Transfer-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if method == "HEAD" || st.status == 204 || st.status == 304 {
        // no body
    } else if chunked {
        loop {
            let mut line = String::new();
            st.reader.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk"))?;
            if n == 0 {
                break;
            }
            let mut buf = vec![0; n];
            st.reader.read_exact(&mut buf)?;
            out.extend_from_slice(&buf);
            let mut crlf = [0u8; 2];
            st.reader.read_exact(&mut crlf)?;
        }
    } else if let Some(n) = find_header(&st.headers, "Content-Length").and_then(|v| v.parse().ok())
    {
        out.resize(n, 0);
        st.reader.read_exact(&mut out)?;
    } else {
        st.reader.read_to_end(&mut out)?;
    }
    Ok(HttpResponse {
        status: st.status,
        headers: st.headers,
        body: out,
    })
}

/// The `Authorization` header a client sends (`Token` only once it has one).
pub fn auth_header(client: &str, device: &str, device_id: &str, token: Option<&str>) -> String {
    let mut h = format!(
        "MediaBrowser Client=\"{client}\", Device=\"{device}\", DeviceId=\"{device_id}\", Version=\"1.0.0\""
    );
    if let Some(t) = token {
        h.push_str(&format!(", Token=\"{t}\""));
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Player buffer model (pure)
// ---------------------------------------------------------------------------------------------

/// Player state for stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayerState {
    /// Filling up before the first frame.
    Buffering,
    /// Consuming the buffer.
    Playing,
    /// Ran dry mid-stream; waits for the start threshold again.
    Stalled,
    /// No playback.
    Stopped,
    /// The stream ended and the buffer is played out.
    Ended,
}

impl PlayerState {
    fn name(self) -> &'static str {
        match self {
            PlayerState::Buffering => "buffering",
            PlayerState::Playing => "playing",
            PlayerState::Stalled => "stalled",
            PlayerState::Stopped => "stopped",
            PlayerState::Ended => "ended",
        }
    }
}

/// A player buffer: starts once `START_BUFFER_S` of media is in, consumes at the media bitrate,
/// and counts a stall each time it runs dry before the stream has ended.
#[derive(Debug, Clone)]
pub struct Buffer {
    /// Media bitrate the player consumes at.
    pub rate_bps: f64,
    /// Bytes received and not yet played.
    pub buffered_bytes: f64,
    /// Bytes played.
    pub consumed_bytes: f64,
    /// Current state.
    pub state: PlayerState,
    /// Stalls so far.
    pub stalls: u64,
    /// Time spent stalled.
    pub stall_ms: u64,
}

impl Buffer {
    /// An empty buffer for a stream of `rate_bps`.
    pub fn new(rate_bps: f64) -> Buffer {
        Buffer {
            rate_bps: rate_bps.max(1.0),
            buffered_bytes: 0.0,
            consumed_bytes: 0.0,
            state: PlayerState::Buffering,
            stalls: 0,
            stall_ms: 0,
        }
    }

    /// Advances by `dt` during which `arrived` bytes came in; `done` = the stream has ended.
    pub fn step(&mut self, dt: Duration, arrived: u64, done: bool, paused: bool) {
        self.buffered_bytes += arrived as f64;
        let threshold = self.rate_bps / 8.0 * START_BUFFER_S;
        if matches!(self.state, PlayerState::Buffering | PlayerState::Stalled) {
            if self.state == PlayerState::Stalled {
                self.stall_ms = self
                    .stall_ms
                    .saturating_add(u64::try_from(dt.as_millis()).unwrap_or(u64::MAX));
            }
            if self.buffered_bytes >= threshold || (done && self.buffered_bytes > 0.0) {
                self.state = PlayerState::Playing;
            }
            return;
        }
        if self.state != PlayerState::Playing || paused {
            return;
        }
        let need = self.rate_bps / 8.0 * dt.as_secs_f64();
        if self.buffered_bytes >= need {
            self.buffered_bytes -= need;
            self.consumed_bytes += need;
        } else {
            self.consumed_bytes += self.buffered_bytes;
            self.buffered_bytes = 0.0;
            if done {
                self.state = PlayerState::Ended;
            } else {
                self.state = PlayerState::Stalled;
                self.stalls += 1;
            }
        }
    }

    /// Media time held in the buffer.
    pub fn buffer_ms(&self) -> u64 {
        (self.buffered_bytes * 8.0 / self.rate_bps * 1000.0) as u64
    }

    /// Media ticks played so far.
    pub fn played_ticks(&self) -> i64 {
        (self.consumed_bytes * 8.0 / self.rate_bps * TICKS_PER_SECOND) as i64
    }
}

// ---------------------------------------------------------------------------------------------
// Viewer
// ---------------------------------------------------------------------------------------------

/// Command-line options of `homenet viewer`.
#[derive(Debug, Clone)]
pub struct ViewerOpts {
    /// `--server HOST:PORT`.
    pub server: String,
    /// `--user NAME`.
    pub user: String,
    /// `--item ID`.
    pub item: String,
    /// `--client NAME` (the session's Client).
    pub client: String,
    /// `--device-id ID`.
    pub device_id: String,
    /// `--remote-control yes|no`.
    pub remote_control: bool,
    /// true = the client forces direct play (ignores the server's limit).
    pub direct: bool,
    /// `--max-bitrate BPS`: the client's MaxStreamingBitrate.
    pub max_bitrate: Option<i64>,
    /// `--seconds N`; None = until stopped.
    pub seconds: Option<u64>,
    /// `--stats FILE`; None = stdout.
    pub stats: Option<String>,
    /// Source address for every connection (`--bind`), e.g. 127.0.0.2 to look remote.
    pub bind: Option<IpAddr>,
    /// `--pause AT:FOR`: the viewer pauses at AT seconds after its start for FOR seconds.
    pub pauses: Vec<(u64, u64)>,
    /// `--seek AT`: the viewer seeks 2 minutes ahead at AT seconds after its start.
    pub seeks: Vec<u64>,
    /// `--retry-for S`: keep trying to reach the server for this long, as apps do when the
    /// server does not answer (e.g. while it wakes from sleep). 0 = one attempt.
    pub retry_for: Duration,
}

/// How far a scripted seek jumps, in media seconds.
pub const SEEK_JUMP_S: i64 = 120;

/// A scripted user action due at a viewer's second `t` (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Pause,
    Resume,
    Seek,
}

/// The scripted actions that fall in `(from, to]` seconds after the start, in time order.
pub fn actions_between(pauses: &[(u64, u64)], seeks: &[u64], from: f64, to: f64) -> Vec<Action> {
    let mut due: Vec<(u64, u8, Action)> = Vec::new();
    for &(at, dur) in pauses {
        due.push((at, 0, Action::Pause));
        due.push((at.saturating_add(dur), 1, Action::Resume));
    }
    for &at in seeks {
        due.push((at, 2, Action::Seek));
    }
    due.sort();
    due.into_iter()
        .filter(|(t, _, _)| from < *t as f64 && *t as f64 <= to)
        .map(|(_, _, a)| a)
        .collect()
}

impl ViewerOpts {
    /// Parses `--server HOST:PORT --user NAME --item ID --client NAME --device-id ID
    /// [--remote-control yes|no] [--method transcode|direct] [--max-bitrate BPS] [--seconds N]
    /// [--stats FILE] [--bind IP] [--retry-for S]`.
    pub fn parse(args: &[String]) -> Result<ViewerOpts, String> {
        let mut o = ViewerOpts {
            server: String::new(),
            user: String::new(),
            item: String::new(),
            client: String::new(),
            device_id: String::new(),
            remote_control: true,
            direct: false,
            max_bitrate: None,
            seconds: None,
            stats: None,
            bind: None,
            pauses: Vec::new(),
            seeks: Vec::new(),
            retry_for: Duration::ZERO,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{a} needs a value"))
            };
            match a.as_str() {
                "--server" => o.server = val()?,
                "--user" => o.user = val()?,
                "--item" => o.item = val()?,
                "--client" => o.client = val()?,
                "--device-id" => o.device_id = val()?,
                "--remote-control" => {
                    o.remote_control = match val()?.as_str() {
                        "yes" => true,
                        "no" => false,
                        v => return Err(format!("--remote-control: {v:?} is not yes|no")),
                    }
                }
                "--method" => {
                    o.direct = match val()?.as_str() {
                        "transcode" => false,
                        "direct" => true,
                        v => return Err(format!("--method: {v:?} is not transcode|direct")),
                    }
                }
                "--max-bitrate" => {
                    let v = val()?;
                    o.max_bitrate = Some(
                        v.parse()
                            .ok()
                            .filter(|n: &i64| *n > 0)
                            .ok_or(format!("--max-bitrate: {v:?} is not a positive b/s"))?,
                    )
                }
                "--seconds" => {
                    let v = val()?;
                    o.seconds = Some(v.parse().map_err(|_| format!("--seconds: {v:?}"))?)
                }
                "--stats" => o.stats = Some(val()?),
                "--pause" => {
                    let v = val()?;
                    let p = v
                        .split_once(':')
                        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                        .ok_or(format!("--pause: {v:?} is not AT:FOR (seconds)"))?;
                    o.pauses.push(p);
                }
                "--seek" => {
                    let v = val()?;
                    o.seeks.push(
                        v.parse()
                            .map_err(|_| format!("--seek: {v:?} is not seconds"))?,
                    );
                }
                "--retry-for" => {
                    let v = val()?;
                    o.retry_for =
                        Duration::from_secs(v.parse().map_err(|_| format!("--retry-for: {v:?}"))?);
                }
                "--bind" => {
                    let v = val()?;
                    o.bind = Some(
                        v.parse()
                            .map_err(|_| format!("--bind: {v:?} is not an IP"))?,
                    )
                }
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        for (name, v) in [
            ("--server", &o.server),
            ("--user", &o.user),
            ("--item", &o.item),
            ("--client", &o.client),
            ("--device-id", &o.device_id),
        ] {
            if v.is_empty() {
                return Err(format!("{name} is required"));
            }
        }
        Ok(o)
    }
}

/// What a viewer run ended with.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Stream bytes received.
    pub bytes: u64,
    /// Stalls over all playbacks.
    pub stalls: u64,
    /// Time stalled over all playbacks.
    pub stall_ms: u64,
    /// Play commands followed.
    pub restarts: u64,
    /// DisplayMessage commands received.
    pub messages: u64,
    /// Scripted seeks done.
    pub seeks: u64,
    /// Media bitrate of the latest playback.
    pub negotiated_bps: i64,
    /// The session id the server gave at login.
    pub session_id: String,
    /// Failed restarts (the player stayed stopped).
    pub errors: u64,
    /// Every stats line written.
    pub lines: Vec<Value>,
}

/// `homenet viewer ...`: runs until SIGTERM/SIGINT or `--seconds`.
pub fn main_args(args: &[String]) -> Result<(), String> {
    let opts = ViewerOpts::parse(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(|e| format!("signal: {e}"))?;
    }
    let mut out: Box<dyn Write> = match &opts.stats {
        Some(p) => Box::new(std::fs::File::create(p).map_err(|e| format!("{p}: {e}"))?),
        None => Box::new(io::stdout()),
    };
    run(&opts, &stop, &mut out).map(|_| ())
}

struct Client<'a> {
    opts: &'a ViewerOpts,
    token: String,
}

impl Client<'_> {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<HttpResponse, String> {
        let auth = auth_header(
            &self.opts.client,
            "homenet-viewer",
            &self.opts.device_id,
            Some(&self.token),
        );
        let b = body.map(|b| b.to_string());
        let mut headers = vec![("Authorization", auth.as_str())];
        if b.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        http_from(
            self.opts.bind,
            &self.opts.server,
            method,
            path,
            &headers,
            b.as_ref().map(|s| s.as_bytes()),
            HTTP_TIMEOUT,
        )
        .map_err(|e| format!("{method} {path}: {e}"))
    }
}

/// One playback: its negotiated stream and the thread reading it.
struct Playback {
    item_id: String,
    media_source_id: String,
    play_session_id: String,
    play_method: &'static str,
    start_ticks: i64,
    audio_index: Option<i64>,
    subtitle_index: Option<i64>,
    rate_bps: i64,
    buffer: Buffer,
    received: Arc<AtomicU64>,
    seen: u64,
    done: Arc<AtomicBool>,
    socket: Option<TcpStream>,
    reader: Option<std::thread::JoinHandle<()>>,
    paused: bool,
}

impl Playback {
    fn position(&self) -> i64 {
        self.start_ticks.saturating_add(self.buffer.played_ticks())
    }
    fn close(&mut self) {
        if let Some(s) = self.socket.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
    }
}

fn query_param(url: &str, name: &str) -> Option<String> {
    url.split_once('?')?
        .1
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_string())
}

struct PlayRequest {
    item_id: String,
    start_ticks: i64,
    media_source_id: Option<String>,
    audio_index: Option<i64>,
    subtitle_index: Option<i64>,
}

fn start_playback(c: &Client, user_id: &str, req: PlayRequest) -> Result<Playback, String> {
    let o = c.opts;
    let mut profile = json!({
        "Name": "homenet-viewer",
        "TranscodingProfiles": [{"Container": "ts", "Type": "Video", "VideoCodec": "h264",
                                 "AudioCodec": "aac", "Protocol": "hls", "Context": "Streaming"}],
        "DirectPlayProfiles": [],
    });
    if o.direct {
        profile["DirectPlayProfiles"] = json!([{"Container": "mkv,mp4", "Type": "Video"}]);
    }
    if let Some(m) = o.max_bitrate {
        profile["MaxStreamingBitrate"] = json!(m);
    }
    let body = json!({
        "UserId": user_id,
        "DeviceProfile": profile,
        "MaxStreamingBitrate": o.max_bitrate,
        "StartTimeTicks": req.start_ticks,
        "AudioStreamIndex": req.audio_index,
        "SubtitleStreamIndex": req.subtitle_index,
        "MediaSourceId": req.media_source_id,
        "EnableDirectPlay": o.direct,
        "EnableDirectStream": o.direct,
        "EnableTranscoding": true,
        "AutoOpenLiveStream": true,
    });
    let r = c.call(
        "POST",
        &format!("/Items/{}/PlaybackInfo", req.item_id),
        Some(&body),
    )?;
    if r.status != 200 {
        return Err(format!("PlaybackInfo: HTTP {}", r.status));
    }
    let info = r.json()?;
    let source = &info["MediaSources"][0];
    let play_session_id = info["PlaySessionId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let media_source_id = source["Id"].as_str().unwrap_or(&req.item_id).to_string();
    let source_bitrate = source["Bitrate"].as_i64().unwrap_or(0);
    let transcode_url = source["TranscodingUrl"].as_str().map(str::to_string);
    // A "direct" client plays the file whatever the server says, like many real clients do.
    let (url, rate, method) = match (&transcode_url, o.direct) {
        (Some(u), false) => {
            let v = query_param(u, "VideoBitrate").and_then(|v| v.parse::<i64>().ok());
            let a = query_param(u, "AudioBitrate").and_then(|v| v.parse::<i64>().ok());
            let rate = v.unwrap_or(source_bitrate).saturating_add(a.unwrap_or(0));
            (
                format!("{u}&StartTimeTicks={}", req.start_ticks),
                rate.min(source_bitrate.max(1)),
                "Transcode",
            )
        }
        _ => (
            format!(
                "/Videos/{}/stream?Static=true&MediaSourceId={}&PlaySessionId={}&ApiKey={}&StartTimeTicks={}",
                req.item_id, media_source_id, play_session_id, c.token, req.start_ticks
            ),
            source_bitrate,
            "DirectPlay",
        ),
    };
    if rate <= 0 {
        return Err("PlaybackInfo gave no usable bitrate".into());
    }
    let st = http_open_from(o.bind, &o.server, "GET", &url, &[], None, HTTP_TIMEOUT)
        .map_err(|e| format!("stream: {e}"))?;
    if st.status != 200 {
        return Err(format!("stream: HTTP {}", st.status));
    }
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let socket = st.socket.try_clone().map_err(|e| format!("stream: {e}"))?;
    // The stream may idle between segments far longer than an API call: no read timeout.
    let _ = socket.set_read_timeout(None);
    let reader = {
        let received = Arc::clone(&received);
        let done = Arc::clone(&done);
        let mut rd = st.reader;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match rd.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let pb = Playback {
        item_id: req.item_id.clone(),
        media_source_id: media_source_id.clone(),
        play_session_id: play_session_id.clone(),
        play_method: method,
        start_ticks: req.start_ticks,
        audio_index: req.audio_index.or(Some(1)),
        subtitle_index: req.subtitle_index.or(Some(-1)),
        rate_bps: rate,
        buffer: Buffer::new(rate as f64),
        received,
        seen: 0,
        done,
        socket: Some(socket),
        reader: Some(reader),
        paused: false,
    };
    report(c, "/Sessions/Playing", &pb)?;
    Ok(pb)
}

/// A failed report is the server's problem: the player carries on, and says so.
fn warn(r: Result<(), String>) {
    if let Err(e) = r {
        eprintln!("viewer: {e}");
    }
}

fn report(c: &Client, path: &str, pb: &Playback) -> Result<(), String> {
    let body = json!({
        "ItemId": pb.item_id,
        "MediaSourceId": pb.media_source_id,
        "PlaySessionId": pb.play_session_id,
        "PositionTicks": pb.position(),
        "PlayMethod": pb.play_method,
        "IsPaused": pb.paused,
        "CanSeek": true,
        "AudioStreamIndex": pb.audio_index,
        "SubtitleStreamIndex": pb.subtitle_index,
    });
    let r = c.call("POST", path, Some(&body))?;
    if r.status != 204 {
        return Err(format!("{path}: HTTP {}", r.status));
    }
    Ok(())
}

/// Runs a viewer until `stop` is set or `opts.seconds` have passed, writing a JSON stats line
/// per second to `out`.
pub fn run(opts: &ViewerOpts, stop: &AtomicBool, out: &mut dyn Write) -> Result<Summary, String> {
    let login_auth = auth_header(&opts.client, "homenet-viewer", &opts.device_id, None);
    let body = json!({"Username": opts.user, "Pw": ""}).to_string();
    // A server that does not answer yet (asleep, booting) is retried with a fresh connection
    // until `retry_for` has passed; each attempt waits at most RETRY_ATTEMPT.
    let give_up = Instant::now() + opts.retry_for;
    let r = loop {
        let attempt = if opts.retry_for.is_zero() {
            HTTP_TIMEOUT
        } else {
            RETRY_ATTEMPT
        };
        let tried = Instant::now();
        match http_from(
            opts.bind,
            &opts.server,
            "POST",
            "/Users/AuthenticateByName",
            &[
                ("Authorization", &login_auth),
                ("Content-Type", "application/json"),
            ],
            Some(body.as_bytes()),
            attempt,
        ) {
            Ok(r) => break r,
            Err(e) if Instant::now() >= give_up || stop.load(Ordering::SeqCst) => {
                return Err(format!("login: {e}"))
            }
            // Pacing, as a client's retry timer: a quick refusal is not retried in a spin.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(500).saturating_sub(tried.elapsed()))
            }
        }
    };
    if r.status != 200 {
        return Err(format!("login as {:?}: HTTP {}", opts.user, r.status));
    }
    let login = r.json()?;
    let token = login["AccessToken"]
        .as_str()
        .ok_or("login: no AccessToken")?
        .to_string();
    let user_id = login["User"]["Id"].as_str().unwrap_or_default().to_string();
    let session_id = login["SessionInfo"]["Id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let c = Client { opts, token };
    let commands: Vec<&str> = if opts.remote_control {
        vec![
            "DisplayMessage",
            "SetVolume",
            "Mute",
            "Unmute",
            "PlayMediaSource",
        ]
    } else {
        vec![]
    };
    let caps = json!({
        "PlayableMediaTypes": ["Video", "Audio"],
        "SupportedCommands": commands,
        "SupportsMediaControl": opts.remote_control,
        "SupportsPersistentIdentifier": false,
    });
    let r = c.call("POST", "/Sessions/Capabilities/Full", Some(&caps))?;
    if r.status != 204 {
        return Err(format!("capabilities: HTTP {}", r.status));
    }

    // The command channel stands in for Jellyfin's WebSocket.
    let (tx, rx) = mpsc::channel::<Value>();
    let poll_stop = Arc::new(AtomicBool::new(false));
    let poller = if opts.remote_control {
        let server = opts.server.clone();
        let bind = opts.bind;
        let sid = session_id.clone();
        let poll_stop = Arc::clone(&poll_stop);
        Some(std::thread::spawn(move || {
            let path = format!("/_emu/commands?session={sid}&wait_ms=1000");
            while !poll_stop.load(Ordering::SeqCst) {
                match http_from(bind, &server, "GET", &path, &[], None, HTTP_TIMEOUT) {
                    Ok(r) if r.status == 200 => {
                        if let Ok(Value::Array(msgs)) = r.json() {
                            for m in msgs {
                                if tx.send(m).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    // The server is away: retry at the poll's own pace.
                    _ => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        }))
    } else {
        None
    };

    let mut summary = Summary {
        session_id,
        ..Summary::default()
    };
    let result = play_loop(&c, &user_id, opts, stop, &rx, out, &mut summary);
    poll_stop.store(true, Ordering::SeqCst);
    if let Some(p) = poller {
        let _ = p.join();
    }
    result.map(|_| summary)
}

#[allow(clippy::too_many_arguments)]
fn play_loop(
    c: &Client,
    user_id: &str,
    opts: &ViewerOpts,
    stop: &AtomicBool,
    rx: &mpsc::Receiver<Value>,
    out: &mut dyn Write,
    sum: &mut Summary,
) -> Result<(), String> {
    let t0 = Instant::now();
    let mut pb = Some(start_playback(
        c,
        user_id,
        PlayRequest {
            item_id: opts.item.clone(),
            start_ticks: 0,
            media_source_id: None,
            audio_index: None,
            subtitle_index: None,
        },
    )?);
    sum.negotiated_bps = pb.as_ref().map_or(0, |p| p.rate_bps);
    let mut last_tick = Instant::now();
    let mut last_stats = Instant::now();
    let mut last_progress = Instant::now();
    let mut bytes_at_last_stats = 0u64;
    let mut finished_stalls = 0u64;
    let mut finished_stall_ms = 0u64;
    let mut script_at = 0.0f64;
    loop {
        if stop.load(Ordering::SeqCst) || opts.seconds.is_some_and(|s| t0.elapsed().as_secs() >= s)
        {
            break;
        }
        // The user's own actions, as scripted: pause and resume (reported, as a real player
        // does), and a seek (a new PlaybackInfo and stream further on, like jellyfin-web).
        let now_s = t0.elapsed().as_secs_f64();
        for act in actions_between(&opts.pauses, &opts.seeks, script_at, now_s) {
            match act {
                Action::Pause | Action::Resume => {
                    if let Some(p) = pb.as_mut() {
                        p.paused = act == Action::Pause;
                        warn(report(c, "/Sessions/Playing/Progress", p));
                    }
                }
                Action::Seek => {
                    let Some(mut p) = pb.take() else { continue };
                    p.close();
                    finished_stalls += p.buffer.stalls;
                    finished_stall_ms += p.buffer.stall_ms;
                    let req = PlayRequest {
                        item_id: p.item_id.clone(),
                        start_ticks: p
                            .position()
                            .saturating_add(SEEK_JUMP_S * TICKS_PER_SECOND as i64),
                        media_source_id: Some(p.media_source_id.clone()),
                        audio_index: p.audio_index,
                        subtitle_index: p.subtitle_index,
                    };
                    sum.seeks += 1;
                    match start_playback(c, user_id, req) {
                        Ok(n) => {
                            sum.negotiated_bps = n.rate_bps;
                            pb = Some(n);
                        }
                        Err(e) => {
                            eprintln!("viewer {}: seek failed: {e}", opts.device_id);
                            sum.errors += 1;
                        }
                    }
                }
            }
        }
        script_at = now_s;
        let wait = TICK.saturating_sub(last_tick.elapsed());
        match rx.recv_timeout(wait) {
            Ok(msg) => {
                let kind = msg["MessageType"].as_str().unwrap_or("");
                let data = &msg["Data"];
                match (kind, data["Command"].as_str(), data["Name"].as_str()) {
                    ("Playstate", Some("Stop"), _) => {
                        if let Some(mut p) = pb.take() {
                            p.close();
                            finished_stalls += p.buffer.stalls;
                            finished_stall_ms += p.buffer.stall_ms;
                            warn(report(c, "/Sessions/Playing/Stopped", &p));
                        }
                    }
                    ("Playstate", Some(cmd @ ("Pause" | "Unpause" | "PlayPause")), _) => {
                        if let Some(p) = pb.as_mut() {
                            p.paused = match cmd {
                                "Pause" => true,
                                "Unpause" => false,
                                _ => !p.paused,
                            };
                            warn(report(c, "/Sessions/Playing/Progress", p));
                        }
                    }
                    ("Play", ..) => {
                        let Some(item) = data["ItemIds"][0].as_str() else {
                            continue;
                        };
                        if let Some(mut p) = pb.take() {
                            p.close();
                            finished_stalls += p.buffer.stalls;
                            finished_stall_ms += p.buffer.stall_ms;
                            warn(report(c, "/Sessions/Playing/Stopped", &p));
                        }
                        let started = start_playback(
                            c,
                            user_id,
                            PlayRequest {
                                item_id: item.to_string(),
                                start_ticks: data["StartPositionTicks"].as_i64().unwrap_or(0),
                                media_source_id: data["MediaSourceId"].as_str().map(str::to_string),
                                audio_index: data["AudioStreamIndex"].as_i64(),
                                subtitle_index: data["SubtitleStreamIndex"].as_i64(),
                            },
                        );
                        sum.restarts += 1;
                        // A real player shows an error and stays stopped; so does this one.
                        match started {
                            Ok(p) => {
                                sum.negotiated_bps = p.rate_bps;
                                pb = Some(p);
                            }
                            Err(e) => {
                                eprintln!("viewer {}: restart failed: {e}", opts.device_id);
                                sum.errors += 1;
                            }
                        }
                    }
                    ("GeneralCommand", _, Some("DisplayMessage")) => sum.messages += 1,
                    _ => {}
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        let dt = last_tick.elapsed();
        last_tick = Instant::now();
        if let Some(p) = pb.as_mut() {
            let total = p.received.load(Ordering::Relaxed);
            let arrived = total.saturating_sub(p.seen);
            p.seen = total;
            sum.bytes = sum.bytes.saturating_add(arrived);
            let done = p.done.load(Ordering::SeqCst);
            p.buffer.step(dt, arrived, done, p.paused);
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            if let Some(p) = pb.as_ref() {
                // A failed report is the server's problem; the player keeps playing.
                let _ = report(c, "/Sessions/Playing/Progress", p);
            }
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            let secs = last_stats.elapsed().as_secs_f64();
            last_stats = Instant::now();
            let rate = sum.bytes.saturating_sub(bytes_at_last_stats) as f64 * 8.0 / secs;
            bytes_at_last_stats = sum.bytes;
            sum.stalls = finished_stalls + pb.as_ref().map_or(0, |p| p.buffer.stalls);
            sum.stall_ms = finished_stall_ms + pb.as_ref().map_or(0, |p| p.buffer.stall_ms);
            let line = json!({
                "t_ms": t0.elapsed().as_millis() as u64,
                "state": pb.as_ref().map_or("stopped", |p| p.buffer.state.name()),
                "play_method": pb.as_ref().map(|p| p.play_method),
                "bytes": sum.bytes,
                "rate_bps": rate as u64,
                "negotiated_bps": pb.as_ref().map(|p| p.rate_bps),
                "buffer_ms": pb.as_ref().map(|p| p.buffer.buffer_ms()),
                "position_ticks": pb.as_ref().map(Playback::position),
                "stalls": sum.stalls,
                "stall_ms": sum.stall_ms,
                "restarts": sum.restarts,
                "messages": sum.messages,
                "seeks": sum.seeks,
                "errors": sum.errors,
            });
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            sum.lines.push(line);
        }
    }
    if let Some(mut p) = pb.take() {
        p.close();
        sum.stalls = finished_stalls + p.buffer.stalls;
        sum.stall_ms = finished_stall_ms + p.buffer.stall_ms;
        warn(report(c, "/Sessions/Playing/Stopped", &p));
    }
    Ok(())
}

#[cfg(test)]
mod script_tests {
    use super::*;

    #[test]
    fn scripted_actions_fire_once_in_order() {
        let pauses = [(10, 5)];
        let seeks = [12, 30];
        assert!(actions_between(&pauses, &seeks, 0.0, 9.9).is_empty());
        assert_eq!(
            actions_between(&pauses, &seeks, 9.9, 10.0),
            vec![Action::Pause]
        );
        assert!(actions_between(&pauses, &seeks, 10.0, 11.5).is_empty());
        assert_eq!(
            actions_between(&pauses, &seeks, 11.5, 20.0),
            vec![Action::Seek, Action::Resume]
        );
        // A late loop turn catches up on everything it missed, in time order.
        assert_eq!(
            actions_between(&pauses, &seeks, 0.0, 40.0),
            vec![Action::Pause, Action::Seek, Action::Resume, Action::Seek]
        );
    }

    #[test]
    fn pause_and_seek_options_parse() {
        let args: Vec<String> = [
            "--server",
            "a:1",
            "--user",
            "u",
            "--item",
            "i",
            "--client",
            "c",
            "--device-id",
            "d",
            "--pause",
            "10:5",
            "--pause",
            "40:3",
            "--seek",
            "25",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = ViewerOpts::parse(&args).unwrap();
        assert_eq!(o.pauses, vec![(10, 5), (40, 3)]);
        assert_eq!(o.seeks, vec![25]);
        for bad in [["--pause", "10"], ["--pause", "a:b"], ["--seek", "-1"]] {
            let mut a = args[..10].to_vec();
            a.extend(bad.iter().map(|s| s.to_string()));
            assert!(ViewerOpts::parse(&a).is_err(), "{bad:?}");
        }
    }
}
