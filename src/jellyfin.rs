//! The Jellyfin adapter: a small synchronous client (plain HTTP on the LAN, `crate::http`) and the
//! models of what the daemon reads from the server.
//!
//! The server's real behaviour is the contract (reference/jellyfin-api.md): PascalCase JSON with
//! null fields left out, ids as 32 hex digits, ticks of 100 ns, `Authorization: MediaBrowser
//! Token=…` as the only auth form that works from 10.8 to 12.0, 503 while 10.11+ starts, and
//! error bodies of four shapes — so every decision here is made on the status code alone.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::Secret;
use crate::http;
use crate::text;

mod lenient;

/// Largest `/Sessions` answer accepted (10.8 also embeds whole server items per session).
pub const SESSIONS_BODY_LIMIT: u64 = 8 * 1024 * 1024;
/// Largest answer accepted from every other endpoint.
pub const BODY_LIMIT: u64 = 1024 * 1024;
/// Jellyfin stores bitrates as int32: the largest limit it can hold.
pub const MAX_LIMIT_BPS: i64 = i32::MAX as i64;
/// Ticks per second (.NET ticks, 100 ns).
pub const TICKS_PER_SECOND: i64 = 10_000_000;

/// Why a call to the server failed. `Display` never contains the API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No connection (refused, no route, DNS, reset).
    Unreachable(String),
    /// Connecting or the whole call took longer than the configured timeout.
    Timeout,
    /// 503: the server is starting or migrating (10.11+); retry after the hint if any.
    Starting { retry_after: Option<Duration> },
    /// 401: the API key is unknown or missing.
    Unauthorized,
    /// 403: the key is valid but the server refuses this change.
    Forbidden,
    /// 404: unknown user, session or item.
    NotFound,
    /// Any other unexpected status code.
    Status(u16),
    /// The answer is not what the API promises (bad JSON, wrong shape).
    Malformed(String),
    /// The answer is larger than the accepted limit; it was not read.
    TooLarge,
    /// The configured URL cannot be used (bad scheme, https without TLS, no host).
    BadUrl(String),
}

impl Error {
    /// True when the same call may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable(_) | Error::Timeout | Error::Starting { .. } => true,
            Error::Status(code) => *code >= 500 || *code == 429 || *code == 408,
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable(why) => write!(f, "Jellyfin unreachable: {why}"),
            Error::Timeout => f.write_str("Jellyfin did not answer in time"),
            Error::Starting {
                retry_after: Some(d),
            } => write!(
                f,
                "Jellyfin is starting (HTTP 503), retry in {} s",
                d.as_secs()
            ),
            Error::Starting { retry_after: None } => f.write_str("Jellyfin is starting (HTTP 503)"),
            Error::Unauthorized => f.write_str(
                "Jellyfin refused the API key (HTTP 401): create one in Dashboard > API Keys \
                 and set jellyfin.api_key",
            ),
            Error::Forbidden => f.write_str("Jellyfin refused the request (HTTP 403)"),
            Error::NotFound => f.write_str("not found on the Jellyfin server (HTTP 404)"),
            Error::Status(code) => write!(f, "Jellyfin answered HTTP {code}"),
            Error::Malformed(why) => write!(f, "Jellyfin sent an unexpected answer: {why}"),
            Error::TooLarge => f.write_str("Jellyfin's answer is larger than the accepted limit"),
            Error::BadUrl(why) => write!(f, "bad Jellyfin URL: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// What `/System/Info` (or `/System/Info/Public`) says about the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerInfo {
    pub version: Option<String>,
    pub server_name: Option<String>,
    pub id: Option<String>,
}

impl ServerInfo {
    /// Reads the fields case-insensitively: during startup 10.11 answers camelCase.
    pub fn from_slice(body: &[u8]) -> Result<ServerInfo, Error> {
        parse_with(body, |d| {
            serde::Deserializer::deserialize_map(d, ServerInfoVisitor)
        })
    }
}

struct ServerInfoVisitor;

impl<'de> serde::de::Visitor<'de> for ServerInfoVisitor {
    type Value = ServerInfo;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("system info as a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ServerInfo, A::Error> {
        let mut info = ServerInfo::default();
        while let Some(key) = map.next_key::<lenient::Scalar>()? {
            let key = key.into_string().unwrap_or_default();
            let slot = if key.eq_ignore_ascii_case("Version") {
                &mut info.version
            } else if key.eq_ignore_ascii_case("ServerName") {
                &mut info.server_name
            } else if key.eq_ignore_ascii_case("Id") {
                &mut info.id
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            *slot = map
                .next_value::<lenient::Scalar>()?
                .into_string()
                .map(|v| text::clean(&v, text::MAX_NAME));
        }
        Ok(info)
    }
}

/// The kind of a media stream, as far as the bitrate estimate cares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StreamKind {
    Video,
    Audio,
    /// Subtitles, attachments, data, unknown: not kept.
    #[default]
    Other,
}

/// A video or audio stream of the playing item's source file (`NowPlayingItem.MediaStreams[]`).
/// Other streams are not kept: only these two count for the bitrate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct MediaStream {
    /// `Type`: `Video`, `Audio`, …
    #[serde(rename = "Type", deserialize_with = "stream_kind")]
    pub kind: StreamKind,
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub index: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_bitrate")]
    pub bit_rate: Option<u64>,
    #[serde(deserialize_with = "lenient::boolean")]
    pub is_default: bool,
}

impl lenient::Keep for MediaStream {
    fn keep(&self) -> bool {
        self.kind != StreamKind::Other
    }
}

fn stream_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StreamKind, D::Error> {
    Ok(match lenient::Scalar::deserialize(d)? {
        lenient::Scalar::Str(t) if t.eq_ignore_ascii_case("Video") => StreamKind::Video,
        lenient::Scalar::Str(t) if t.eq_ignore_ascii_case("Audio") => StreamKind::Audio,
        _ => StreamKind::Other,
    })
}

/// The item a session plays (`NowPlayingItem`, a trimmed `BaseItemDto`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NowPlaying {
    #[serde(deserialize_with = "lenient::id")]
    pub id: String,
    #[serde(deserialize_with = "lenient::opt_name")]
    pub name: Option<String>,
    /// `Movie`, `Episode`, `Audio`, …
    #[serde(rename = "Type", deserialize_with = "lenient::opt_name")]
    pub item_type: Option<String>,
    #[serde(deserialize_with = "lenient::opt_name")]
    pub series_name: Option<String>,
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub parent_index_number: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub index_number: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub run_time_ticks: Option<i64>,
    #[serde(deserialize_with = "lenient::seq")]
    pub media_streams: Vec<MediaStream>,
}

/// `PlayState`, present on every session (also idle ones).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PlayState {
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub position_ticks: Option<i64>,
    #[serde(deserialize_with = "lenient::boolean")]
    pub is_paused: bool,
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub audio_stream_index: Option<i64>,
    /// `-1` means subtitles off.
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub subtitle_stream_index: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_id")]
    pub media_source_id: Option<String>,
    /// `Transcode`, `DirectStream` or `DirectPlay`, as the client reports it.
    #[serde(deserialize_with = "lenient::opt_name")]
    pub play_method: Option<String>,
}

/// `TranscodingInfo`: present while ffmpeg runs for the session's device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Transcoding {
    /// ffmpeg's output bitrate, or the target bitrate when ffmpeg reports none.
    #[serde(deserialize_with = "lenient::opt_bitrate")]
    pub bitrate: Option<u64>,
    #[serde(deserialize_with = "lenient::boolean")]
    pub is_video_direct: bool,
    #[serde(deserialize_with = "lenient::boolean")]
    pub is_audio_direct: bool,
    #[serde(deserialize_with = "lenient::opt_name")]
    pub video_codec: Option<String>,
    #[serde(deserialize_with = "lenient::opt_name")]
    pub audio_codec: Option<String>,
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub width: Option<i64>,
    #[serde(deserialize_with = "lenient::opt_i64")]
    pub height: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Capabilities {
    #[serde(deserialize_with = "lenient::display_message")]
    supported_commands: Option<bool>,
}

/// One entry of `GET /Sessions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "RawSession")]
pub struct Session {
    pub id: String,
    /// `None` for sessions without a user (the all-zero GUID), e.g. an API key's own session.
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub client: Option<String>,
    pub device_name: Option<String>,
    pub device_id: Option<String>,
    /// The viewer's address (`RemoteEndPoint`); IPv4-mapped IPv6 is given as IPv4.
    pub remote_ip: Option<IpAddr>,
    pub now_playing: Option<NowPlaying>,
    pub play_state: PlayState,
    pub transcoding: Option<Transcoding>,
    pub supports_remote_control: bool,
    /// `DisplayMessage` is among the client's `SupportedCommands` (the only one used).
    pub supports_display_message: bool,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RawSession {
    #[serde(deserialize_with = "lenient::id")]
    id: String,
    #[serde(deserialize_with = "lenient::opt_id")]
    user_id: Option<String>,
    #[serde(deserialize_with = "lenient::opt_name")]
    user_name: Option<String>,
    #[serde(deserialize_with = "lenient::opt_name")]
    client: Option<String>,
    #[serde(deserialize_with = "lenient::opt_name")]
    device_name: Option<String>,
    #[serde(deserialize_with = "lenient::opt_id")]
    device_id: Option<String>,
    #[serde(deserialize_with = "lenient::opt_string")]
    remote_end_point: Option<String>,
    #[serde(deserialize_with = "lenient::opt_object")]
    now_playing_item: Option<NowPlaying>,
    #[serde(deserialize_with = "lenient::opt_object")]
    play_state: Option<PlayState>,
    #[serde(rename = "TranscodingInfo", deserialize_with = "lenient::opt_object")]
    transcoding_info: Option<Transcoding>,
    #[serde(deserialize_with = "lenient::boolean")]
    supports_remote_control: bool,
    #[serde(deserialize_with = "lenient::display_message")]
    supported_commands: Option<bool>,
    #[serde(deserialize_with = "lenient::opt_object")]
    capabilities: Option<Capabilities>,
}

impl From<RawSession> for Session {
    fn from(r: RawSession) -> Session {
        let user_id = r.user_id.filter(|u| !is_empty_guid(u));
        let supports_display_message = r
            .supported_commands
            .or_else(|| r.capabilities.and_then(|c| c.supported_commands))
            .unwrap_or_default();
        Session {
            id: r.id,
            user_id,
            user_name: r.user_name,
            client: r.client,
            device_name: r.device_name,
            device_id: r.device_id,
            remote_ip: r.remote_end_point.as_deref().and_then(parse_endpoint),
            now_playing: r.now_playing_item,
            play_state: r.play_state.unwrap_or_default(),
            transcoding: r.transcoding_info,
            supports_remote_control: r.supports_remote_control,
            supports_display_message,
        }
    }
}

fn is_empty_guid(s: &str) -> bool {
    s.chars()
        .all(|c| c == '0' || c == '-' || c == '{' || c == '}')
}

/// Parses a `RemoteEndPoint`: a bare address normally, but an accidental `ip:port`,
/// `[v6]:port` or `v6%scope` is tolerated; IPv4-mapped IPv6 becomes IPv4.
pub fn parse_endpoint(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let ip = if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else if let Some(rest) = s.strip_prefix('[') {
        let inner = rest.split(']').next()?;
        strip_scope(inner).parse().ok()?
    } else if s.matches(':').count() == 1 {
        s.split(':').next()?.parse().ok()?
    } else {
        strip_scope(s).parse().ok()?
    };
    Some(match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    })
}

fn strip_scope(s: &str) -> &str {
    s.split('%').next().unwrap_or(s)
}

impl Session {
    /// A stream is a session with a `NowPlayingItem`; everything else is idle UI or API use.
    pub fn is_playing(&self) -> bool {
        self.now_playing.is_some()
    }

    /// A short human title: `movie: Name`, `episode: Series S08E03 Name`, `audio: Name`.
    pub fn title(&self) -> String {
        let Some(np) = &self.now_playing else {
            return String::new();
        };
        let name = np.name.as_deref().unwrap_or("");
        let kind = np.item_type.as_deref().unwrap_or("").to_ascii_lowercase();
        let mut out = String::new();
        if !kind.is_empty() {
            out.push_str(&kind);
            out.push_str(": ");
        }
        if kind == "episode" {
            if let Some(series) = np.series_name.as_deref().filter(|s| !s.is_empty()) {
                out.push_str(series);
                out.push(' ');
            }
            match (np.parent_index_number, np.index_number) {
                (Some(s), Some(e)) => out.push_str(&format!("S{s:02}E{e:02} ")),
                (None, Some(e)) => out.push_str(&format!("E{e:02} ")),
                _ => {}
            }
        }
        out.push_str(name);
        out.trim_end().to_string()
    }

    /// Bitrate of the source (selected video + audio stream), when every selected stream
    /// reports one. `AudioStreamIndex` picks the audio stream, else the default, else the first.
    pub fn source_bitrate(&self) -> Option<u64> {
        let np = self.now_playing.as_ref()?;
        let pick = |t: StreamKind, index: Option<i64>| {
            let mut of_type = np.media_streams.iter().filter(|s| s.kind == t);
            index
                .and_then(|i| of_type.clone().find(|s| s.index == Some(i)))
                .or_else(|| of_type.clone().find(|s| s.is_default))
                .or_else(|| of_type.next())
        };
        let video = pick(StreamKind::Video, None);
        let audio = pick(StreamKind::Audio, self.play_state.audio_stream_index);
        if video.is_none() && audio.is_none() {
            return None;
        }
        let mut sum: u64 = 0;
        for s in [video, audio].into_iter().flatten() {
            sum = sum.saturating_add(s.bit_rate?);
        }
        Some(sum)
    }

    /// The best guess of what the stream sends now: the transcoder's bitrate when ffmpeg runs
    /// (also remux), else the source's.
    pub fn estimated_bitrate(&self) -> Option<u64> {
        self.transcoding
            .as_ref()
            .and_then(|t| t.bitrate)
            .filter(|b| *b > 0)
            .or_else(|| self.source_bitrate())
    }

    /// True when the client will show a `DisplayMessage` (the API answers 204 either way).
    pub fn can_message(&self) -> bool {
        self.supports_remote_control && self.supports_display_message
    }

    /// The PlayNow request that resumes this stream where it is, with the same media source,
    /// audio and subtitle tracks. `None` when nothing plays.
    pub fn resume_request(&self) -> Option<PlayRequest> {
        let np = self.now_playing.as_ref()?;
        if np.id.is_empty() {
            return None;
        }
        Some(PlayRequest {
            item_id: np.id.clone(),
            start_position_ticks: self.play_state.position_ticks,
            media_source_id: self.play_state.media_source_id.clone(),
            audio_stream_index: self.play_state.audio_stream_index,
            subtitle_stream_index: self.play_state.subtitle_stream_index,
        })
    }
}

/// A Jellyfin user with the policy exactly as the server sent it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(from = "RawUser")]
pub struct User {
    pub id: String,
    pub name: String,
    /// Every field kept verbatim: the policy POST is a full replace.
    pub policy: Map<String, Value>,
    /// `Policy.RemoteClientBitrateLimit` in bits/s; `<= 0` means none.
    pub remote_limit: i64,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RawUser {
    #[serde(deserialize_with = "lenient::id")]
    id: String,
    #[serde(deserialize_with = "lenient::name")]
    name: String,
    #[serde(deserialize_with = "lenient::object")]
    policy: Map<String, Value>,
}

impl From<RawUser> for User {
    fn from(r: RawUser) -> User {
        // Jellyfin stores the limit as int32: anything beyond is not a limit it could hold.
        let remote_limit = r
            .policy
            .get("RemoteClientBitrateLimit")
            .and_then(value_to_i64)
            .unwrap_or(0)
            .clamp(i32::MIN as i64, MAX_LIMIT_BPS);
        User {
            id: r.id,
            name: r.name,
            policy: r.policy,
            remote_limit,
        }
    }
}

impl User {
    /// The user's policy with only `RemoteClientBitrateLimit` changed (clamped to int32).
    pub fn policy_with_limit(&self, bps: i64) -> Map<String, Value> {
        let mut p = self.policy.clone();
        let v = bps.clamp(i32::MIN as i64, MAX_LIMIT_BPS);
        p.insert("RemoteClientBitrateLimit".into(), Value::from(v));
        p
    }
}

/// What to play with `PlayNow` (the position-preserving restart).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlayRequest {
    pub item_id: String,
    pub start_position_ticks: Option<i64>,
    pub media_source_id: Option<String>,
    pub audio_stream_index: Option<i64>,
    pub subtitle_stream_index: Option<i64>,
}

impl PlayRequest {
    /// The query string of `POST /Sessions/{id}/Playing`.
    pub fn query(&self) -> String {
        let mut q = format!(
            "playCommand=PlayNow&itemIds={}",
            encode_component(&self.item_id)
        );
        if let Some(t) = self.start_position_ticks {
            q.push_str(&format!("&startPositionTicks={}", t.max(0)));
        }
        if let Some(m) = self.media_source_id.as_deref().filter(|m| !m.is_empty()) {
            q.push_str(&format!("&mediaSourceId={}", encode_component(m)));
        }
        if let Some(a) = self.audio_stream_index {
            q.push_str(&format!("&audioStreamIndex={a}"));
        }
        if let Some(s) = self.subtitle_stream_index {
            q.push_str(&format!("&subtitleStreamIndex={s}"));
        }
        q
    }
}

/// Everything the daemon asks of the media server; the real one is [`Client`].
pub trait MediaServer {
    /// `GET /System/Info`: needs a valid key, so it validates it.
    fn system_info(&mut self) -> Result<ServerInfo, Error>;
    /// `GET /Sessions`: every session, idle ones included.
    fn sessions(&mut self) -> Result<Vec<Session>, Error>;
    /// `GET /Users/{id}`.
    fn user(&mut self, user_id: &str) -> Result<User, Error>;
    /// `GET /Users`.
    fn users(&mut self) -> Result<Vec<User>, Error>;
    /// `POST /Users/{id}/Policy`: a full replace of the policy.
    fn set_policy(&mut self, user_id: &str, policy: &Map<String, Value>) -> Result<(), Error>;
    /// Bounds every later call by `timeout` (the shutdown shortens it to fit procd's kill
    /// timeout), keeping what the client already knows (the server's address).
    fn set_timeout(&mut self, _timeout: Duration) {}
    /// `POST /Sessions/{id}/Playing/Stop`.
    fn stop(&mut self, session_id: &str) -> Result<(), Error>;
    /// `POST /Sessions/{id}/Playing?playCommand=PlayNow&…`.
    fn play_now(&mut self, session_id: &str, req: &PlayRequest) -> Result<(), Error>;
    /// `POST /Sessions/{id}/Message`.
    fn message(
        &mut self,
        session_id: &str,
        header: &str,
        text: &str,
        timeout_ms: u64,
    ) -> Result<(), Error>;
    /// `GET /Users/{uid}/Items/{id}`: the container bitrate of the chosen media source.
    fn item_bitrate(
        &mut self,
        user_id: &str,
        item_id: &str,
        media_source_id: Option<&str>,
    ) -> Result<Option<u64>, Error>;
}

/// The real client: plain HTTP to the server's LAN address, one connection per call.
pub struct Client {
    http: http::Endpoint,
    base: String,
    auth: String,
    key: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// A client for `base_url` (`http://host:port[/prefix]`). `timeout` bounds every whole call,
    /// the one-time name lookup included. https is refused: TLS is not built in.
    pub fn new(
        base_url: &str,
        api_key: &Secret,
        timeout: Duration,
        client_version: &str,
    ) -> Result<Client, Error> {
        let base = check_base_url(base_url)?;
        let device_id = format!("jellydemon-{}", host_name());
        let auth = format!(
            "MediaBrowser Client=\"jellydemon\", Device=\"OpenWrt\", DeviceId=\"{}\", \
             Version=\"{}\", Token=\"{}\"",
            encode_component(&device_id),
            encode_component(client_version),
            encode_component(api_key.expose()),
        );
        let url = http::Url::parse(&base).map_err(map_http)?;
        Ok(Client {
            http: http::Endpoint::new(url, timeout),
            base,
            auth,
            key: api_key.expose().to_string(),
        })
    }

    /// `GET /System/Info/Public`: anonymous, answers even while 10.11 starts (camelCase then).
    pub fn public_info(&mut self) -> Result<ServerInfo, Error> {
        let body = self.get("/System/Info/Public", BODY_LIMIT)?;
        ServerInfo::from_slice(&body)
    }

    fn redact(&self, e: Error) -> Error {
        let scrub = |s: String| {
            if self.key.len() >= 4 && s.contains(&self.key) {
                s.replace(&self.key, "<api key>")
            } else {
                s
            }
        };
        match e {
            Error::Unreachable(s) => Error::Unreachable(scrub(s)),
            Error::Malformed(s) => Error::Malformed(scrub(s)),
            Error::BadUrl(s) => Error::BadUrl(scrub(s)),
            other => other,
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        json: Option<&[u8]>,
        limit: u64,
    ) -> Result<Vec<u8>, Error> {
        let mut headers = vec![
            ("Authorization", self.auth.as_str()),
            ("Accept", "application/json"),
        ];
        if json.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        let out = self
            .http
            .request(method, path, &headers, json, limit)
            .map_err(map_http)
            .and_then(|resp| check_status(&resp).map(|_| resp.body));
        out.map_err(|e| self.redact(e))
    }

    fn get(&mut self, path: &str, limit: u64) -> Result<Vec<u8>, Error> {
        self.call("GET", path, None, limit)
    }

    fn post(&mut self, path: &str, json: Option<&[u8]>) -> Result<(), Error> {
        self.call("POST", path, json, BODY_LIMIT).map(|_| ())
    }
}

impl MediaServer for Client {
    fn set_timeout(&mut self, timeout: Duration) {
        self.http = self.http.with_timeout(timeout);
    }

    fn system_info(&mut self) -> Result<ServerInfo, Error> {
        let body = self.get("/System/Info", BODY_LIMIT)?;
        ServerInfo::from_slice(&body)
    }

    fn sessions(&mut self) -> Result<Vec<Session>, Error> {
        let body = self.get("/Sessions", SESSIONS_BODY_LIMIT)?;
        decode_sessions(&body)
    }

    fn user(&mut self, user_id: &str) -> Result<User, Error> {
        let body = self.get(&format!("/Users/{}", encode_component(user_id)), BODY_LIMIT)?;
        decode_user(&body)
    }

    fn users(&mut self) -> Result<Vec<User>, Error> {
        let body = self.get("/Users", BODY_LIMIT)?;
        decode_users(&body)
    }

    fn set_policy(&mut self, user_id: &str, policy: &Map<String, Value>) -> Result<(), Error> {
        // A full replace with a policy that lacks these would be refused (10.9+) or would
        // fail half-way (10.8); one without them was not read from the server, so refuse here.
        for field in ["AuthenticationProviderId", "PasswordResetProviderId"] {
            let ok = policy
                .get(field)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.trim().is_empty());
            if !ok {
                return Err(Error::Malformed(format!(
                    "refusing to send a user policy without {field}"
                )));
            }
        }
        let body = serde_json::to_vec(policy).map_err(|e| Error::Malformed(e.to_string()))?;
        self.post(
            &format!("/Users/{}/Policy", encode_component(user_id)),
            Some(&body),
        )
    }

    fn stop(&mut self, session_id: &str) -> Result<(), Error> {
        self.post(
            &format!("/Sessions/{}/Playing/Stop", encode_component(session_id)),
            None,
        )
    }

    fn play_now(&mut self, session_id: &str, req: &PlayRequest) -> Result<(), Error> {
        self.post(
            &format!(
                "/Sessions/{}/Playing?{}",
                encode_component(session_id),
                req.query()
            ),
            None,
        )
    }

    fn message(
        &mut self,
        session_id: &str,
        header: &str,
        text: &str,
        timeout_ms: u64,
    ) -> Result<(), Error> {
        // The server rejects an empty Text (400); the header alone is better than nothing.
        let text = if text.trim().is_empty() { header } else { text };
        let body = serde_json::json!({ "Header": header, "Text": text, "TimeoutMs": timeout_ms });
        let body = serde_json::to_vec(&body).map_err(|e| Error::Malformed(e.to_string()))?;
        self.post(
            &format!("/Sessions/{}/Message", encode_component(session_id)),
            Some(&body),
        )
    }

    fn item_bitrate(
        &mut self,
        user_id: &str,
        item_id: &str,
        media_source_id: Option<&str>,
    ) -> Result<Option<u64>, Error> {
        let path = format!(
            "/Users/{}/Items/{}",
            encode_component(user_id),
            encode_component(item_id)
        );
        let body = self.get(&path, BODY_LIMIT)?;
        decode_item_bitrate(&body, media_source_id)
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ItemSources {
    #[serde(deserialize_with = "lenient::seq")]
    media_sources: Vec<MediaSourceInfo>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct MediaSourceInfo {
    #[serde(deserialize_with = "lenient::opt_id")]
    id: Option<String>,
    #[serde(deserialize_with = "lenient::opt_bitrate")]
    bitrate: Option<u64>,
}

impl lenient::Keep for MediaSourceInfo {}

impl ItemSources {
    fn bitrate_of(&self, media_source_id: Option<&str>) -> Option<u64> {
        let by_id = media_source_id.and_then(|want| {
            self.media_sources.iter().find(|s| {
                s.id.as_deref()
                    .is_some_and(|id| id.eq_ignore_ascii_case(want))
            })
        });
        let chosen = match (by_id, media_source_id) {
            (Some(s), _) => Some(s),
            (None, None) => self.media_sources.first(),
            // An id that matches nothing: only an unambiguous single source is safe to use.
            (None, Some(_)) if self.media_sources.len() == 1 => self.media_sources.first(),
            _ => None,
        };
        chosen.and_then(|s| s.bitrate)
    }
}

fn check_base_url(url: &str) -> Result<String, Error> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(Error::BadUrl(crate::config::JELLYFIN_HTTPS_HINT.into()));
    }
    let Some(rest) = lower.strip_prefix("http://") else {
        return Err(Error::BadUrl(format!(
            "'{url}' must start with http://, e.g. http://192.168.1.2:8096"
        )));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') || url.contains(['?', '#']) {
        return Err(Error::BadUrl(format!(
            "'{url}' needs a host and no user, query or fragment, e.g. http://192.168.1.2:8096"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(48)
        .collect();
    if name.is_empty() {
        "router".into()
    } else {
        name
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for paths, queries and the
/// auth header, whose values the server URL-decodes).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn check_status(resp: &http::Response) -> Result<u16, Error> {
    let code = resp.status;
    match code {
        200..=299 => Ok(code),
        401 => Err(Error::Unauthorized),
        403 => Err(Error::Forbidden),
        404 => Err(Error::NotFound),
        503 => Err(Error::Starting {
            retry_after: resp.header("retry-after").and_then(parse_retry_after),
        }),
        other => Err(Error::Status(other)),
    }
}

/// `Retry-After` in seconds (`005` from 10.11's startup server); HTTP dates are ignored.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

fn map_http(e: http::Error) -> Error {
    match e {
        http::Error::Timeout => Error::Timeout,
        http::Error::Refused => Error::Unreachable("connection refused".into()),
        http::Error::Unreachable(why) => Error::Unreachable(text::clean(&why, text::MAX_TEXT)),
        http::Error::TooLarge => Error::TooLarge,
        // The server's own bytes (a status line, a header) can be in a protocol error.
        http::Error::Protocol(p) => Error::Malformed(text::clean(
            &format!("HTTP protocol error: {p}"),
            text::MAX_TEXT,
        )),
        http::Error::BadUrl(why) => Error::BadUrl(text::clean(&why, text::MAX_TEXT)),
    }
}

/// Most sessions or users one answer may list; more is refused as malformed rather than cut,
/// since a dropped session would look like a viewer who left.
pub const MAX_ENTRIES: usize = 2048;
/// Most values the policies kept verbatim may hold together in one answer: a real policy has
/// about 60, so this is room for hundreds of users, and ~2 MB at most.
pub const MAX_TREE_NODES: usize = 16 * 1024;

/// Decodes a `/Sessions` answer in memory proportional to the body (docs/design.md §10).
pub fn decode_sessions(body: &[u8]) -> Result<Vec<Session>, Error> {
    lenient::top_list(body, MAX_ENTRIES).map_err(json_error)
}

/// Decodes a `/Users` answer; every policy is kept verbatim, within [`MAX_TREE_NODES`].
pub fn decode_users(body: &[u8]) -> Result<Vec<User>, Error> {
    lenient::with_tree_budget(MAX_TREE_NODES, || lenient::top_list(body, MAX_ENTRIES))
        .map_err(json_error)
}

/// Decodes a `/Users/{id}` answer.
pub fn decode_user(body: &[u8]) -> Result<User, Error> {
    let user = lenient::with_tree_budget(MAX_TREE_NODES, || {
        parse_with(body, |d| lenient::Maybe::<User>::deserialize(d))
    })?;
    user.0
        .ok_or_else(|| Error::Malformed("user is not a JSON object".into()))
}

/// Decodes a `/Users/{uid}/Items/{id}` answer to the bitrate of the chosen media source.
pub fn decode_item_bitrate(
    body: &[u8],
    media_source_id: Option<&str>,
) -> Result<Option<u64>, Error> {
    let item = parse_with(body, |d| lenient::Maybe::<ItemSources>::deserialize(d))?;
    Ok(item.0.and_then(|i| i.bitrate_of(media_source_id)))
}

fn parse_with<T>(
    body: &[u8],
    f: impl FnOnce(
        &mut serde_json::Deserializer<serde_json::de::SliceRead<'_>>,
    ) -> serde_json::Result<T>,
) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let out = f(&mut de).map_err(json_error)?;
    de.end().map_err(json_error)?;
    Ok(out)
}

fn json_error(e: serde_json::Error) -> Error {
    let what = if e.is_eof() { "truncated" } else { "invalid" };
    Error::Malformed(text::clean(&format!("{what} JSON ({e})"), text::MAX_TEXT))
}

fn value_to_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn endpoints() {
        let v4 = |a, b, c, d| Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        assert_eq!(parse_endpoint("203.0.113.45"), v4(203, 0, 113, 45));
        assert_eq!(parse_endpoint(" 203.0.113.45:8096 "), v4(203, 0, 113, 45));
        assert_eq!(parse_endpoint("::ffff:198.51.100.7"), v4(198, 51, 100, 7));
        assert_eq!(
            parse_endpoint("[::ffff:198.51.100.7]:443"),
            v4(198, 51, 100, 7)
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(parse_endpoint("2001:db8::1"), Some(IpAddr::V6(v6)));
        assert_eq!(parse_endpoint("[2001:db8::1]:8920"), Some(IpAddr::V6(v6)));
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(parse_endpoint("fe80::1%eth0"), Some(IpAddr::V6(ll)));
        for bad in [
            "",
            "localhost",
            "1.2.3",
            "1.2.3.4:x:y",
            "[",
            "[]:1",
            "::ffff:zz",
        ] {
            assert_eq!(parse_endpoint(bad), None, "{bad}");
        }
    }

    fn session(json: &str) -> Session {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn titles() {
        let s = session(
            r#"{"NowPlayingItem":{"Name":"The Long Night","Type":"Episode",
            "SeriesName":"Example Series","ParentIndexNumber":8,"IndexNumber":3}}"#,
        );
        assert_eq!(s.title(), "episode: Example Series S08E03 The Long Night");
        let s = session(r#"{"NowPlayingItem":{"Name":"Heat","Type":"Movie"}}"#);
        assert_eq!(s.title(), "movie: Heat");
        let s = session(r#"{"NowPlayingItem":{"Name":"Song","Type":"Audio"}}"#);
        assert_eq!(s.title(), "audio: Song");
        let s = session(r#"{"NowPlayingItem":{"Name":"X"}}"#);
        assert_eq!(s.title(), "X");
        let s = session(r#"{"NowPlayingItem":{"Name":"Pilot","Type":"Episode","IndexNumber":1}}"#);
        assert_eq!(s.title(), "episode: E01 Pilot");
        assert_eq!(session("{}").title(), "");
    }

    #[test]
    fn source_bitrate_picks_selected_streams() {
        let streams = r#"[{"Type":"Video","Index":0,"BitRate":7814000,"IsDefault":true},
            {"Type":"Audio","Index":1,"BitRate":640000,"IsDefault":true},
            {"Type":"Audio","Index":2,"BitRate":"192000"},
            {"Type":"Subtitle","Index":3}]"#;
        let with = |ps: &str| {
            session(&format!(
                r#"{{"NowPlayingItem":{{"Id":"i","MediaStreams":{streams}}},"PlayState":{ps}}}"#
            ))
        };
        assert_eq!(
            with(r#"{"AudioStreamIndex":1}"#).source_bitrate(),
            Some(8_454_000)
        );
        assert_eq!(
            with(r#"{"AudioStreamIndex":2}"#).source_bitrate(),
            Some(8_006_000)
        );
        assert_eq!(with("{}").source_bitrate(), Some(8_454_000));
        assert_eq!(
            with(r#"{"AudioStreamIndex":9}"#).source_bitrate(),
            Some(8_454_000)
        );
        // Video without a bitrate (common in MKV): the sum would mislead.
        let s = session(
            r#"{"NowPlayingItem":{"MediaStreams":[{"Type":"Video","Index":0},
            {"Type":"Audio","Index":1,"BitRate":128000}]}}"#,
        );
        assert_eq!(s.source_bitrate(), None);
        assert_eq!(session(r#"{"NowPlayingItem":{}}"#).source_bitrate(), None);
        let audio_only = session(
            r#"{"NowPlayingItem":{"MediaStreams":[{"Type":"Audio","Index":0,"BitRate":320000}]}}"#,
        );
        assert_eq!(audio_only.source_bitrate(), Some(320_000));
    }

    #[test]
    fn lenient_fields() {
        let s = session(
            r#"{"Id":"abc","UserId":"00000000000000000000000000000000","PlayState":
            {"PositionTicks":"123","IsPaused":"true","AudioStreamIndex":null},
            "SupportsRemoteControl":1,"SupportedCommands":["DisplayMessage",7],
            "RemoteEndPoint":42,"Unknown":{"deep":[1,2]}}"#,
        );
        assert_eq!(s.user_id, None);
        assert_eq!(s.play_state.position_ticks, Some(123));
        assert!(s.play_state.is_paused);
        assert!(s.supports_remote_control);
        assert!(s.can_message());
        assert_eq!(s.remote_ip, None);
        let s = session(r#"{"UserId":"00000000-0000-0000-0000-000000000000"}"#);
        assert_eq!(s.user_id, None);
        let s = session(r#"{"Capabilities":{"SupportedCommands":["DisplayMessage"]}}"#);
        assert!(s.supports_display_message);
        assert!(
            !s.can_message(),
            "no remote control: nothing would be shown"
        );
    }

    #[test]
    fn server_text_is_bounded_and_escaped() {
        let long = "x".repeat(100_000);
        let body = format!(
            r#"[{{"UserName":"eve\u001b[2J\nroot","Client":"{long}","DeviceName":"a\u202eb",
            "NowPlayingItem":{{"Name":"{long}","Type":"Movie"}}}}]"#
        );
        let s = &decode_sessions(body.as_bytes()).unwrap()[0];
        assert_eq!(s.user_name.as_deref(), Some("eve\\u{1b}[2J\\nroot"));
        assert_eq!(s.device_name.as_deref(), Some("a\\u{202e}b"));
        assert_eq!(
            s.client.as_ref().unwrap().chars().count(),
            text::MAX_NAME + 1
        );
        assert!(
            s.title().chars().count() < 2 * text::MAX_NAME,
            "{}",
            s.title()
        );
        let u = decode_user(br#"{"Id":"u\u0000","Name":"a\r\nb"}"#).unwrap();
        assert_eq!(u.name, "a\\r\\nb");
        assert_eq!(u.id, "u\\u{0}");
        let info = ServerInfo::from_slice(br#"{"version":"10.11\u0007","ServerName":1}"#).unwrap();
        assert_eq!(info.version.as_deref(), Some("10.11\\u{7}"));
        assert_eq!(info.server_name.as_deref(), Some("1"));
        let e = decode_sessions(format!("[\"\u{1b}{long}").as_bytes()).unwrap_err();
        let Error::Malformed(m) = &e else {
            panic!("{e:?}")
        };
        assert!(
            m.chars().count() <= text::MAX_TEXT + 1 && !m.contains('\u{1b}'),
            "{m}"
        );
    }

    #[test]
    fn bitrates_are_clamped_to_int32() {
        let s = &decode_sessions(
            br#"[{"NowPlayingItem":{"MediaStreams":[
            {"Type":"Video","BitRate":9223372036854775807},
            {"Type":"Audio","BitRate":1e300}]},
            "TranscodingInfo":{"Bitrate":"99999999999999"}}]"#,
        )
        .unwrap()[0];
        assert_eq!(s.source_bitrate(), Some(2 * i32::MAX as u64));
        assert_eq!(s.estimated_bitrate(), Some(i32::MAX as u64));
        let s = &decode_sessions(
            br#"[{"NowPlayingItem":{"MediaStreams":[{"Type":"Video","BitRate":-5}]}}]"#,
        )
        .unwrap()[0];
        assert_eq!(s.source_bitrate(), None, "a negative bitrate is none");
        let u = decode_user(br#"{"Policy":{"RemoteClientBitrateLimit":1e19}}"#).unwrap();
        assert_eq!(u.remote_limit, MAX_LIMIT_BPS);
        let u = decode_user(br#"{"Policy":{"RemoteClientBitrateLimit":-9223372036854775808}}"#)
            .unwrap();
        assert_eq!(u.remote_limit, i32::MIN as i64);
        assert_eq!(
            decode_item_bitrate(
                br#"{"MediaSources":[{"Bitrate":18446744073709551615}]}"#,
                None
            ),
            Ok(Some(i32::MAX as u64))
        );
    }

    #[test]
    fn answers_of_the_wrong_shape() {
        assert!(matches!(decode_sessions(b"{}"), Err(Error::Malformed(_))));
        assert!(matches!(decode_sessions(b"[] x"), Err(Error::Malformed(_))));
        assert_eq!(decode_sessions(b"[1,null,\"x\",[]]"), Ok(vec![]));
        assert!(matches!(decode_user(b"[]"), Err(Error::Malformed(_))));
        let s = &decode_sessions(
            br#"[{"NowPlayingItem":7,"PlayState":[1],"TranscodingInfo":"x","Capabilities":0}]"#,
        )
        .unwrap()[0];
        assert!(!s.is_playing() && s.transcoding.is_none());
    }

    #[test]
    fn play_request_query() {
        let r = PlayRequest {
            item_id: "6f1c".into(),
            start_position_ticks: Some(18_234_560_000),
            media_source_id: Some("6f1c".into()),
            audio_stream_index: Some(1),
            subtitle_stream_index: Some(-1),
        };
        assert_eq!(
            r.query(),
            "playCommand=PlayNow&itemIds=6f1c&startPositionTicks=18234560000&mediaSourceId=6f1c\
             &audioStreamIndex=1&subtitleStreamIndex=-1"
        );
        let r = PlayRequest {
            item_id: "a&b=c".into(),
            ..Default::default()
        };
        assert_eq!(r.query(), "playCommand=PlayNow&itemIds=a%26b%3Dc");
    }

    #[test]
    fn policy_with_limit_changes_only_the_limit() {
        let u = decode_user(
            br#"{"Id":"u1","Name":"alice","Policy":{"IsAdministrator":false,
            "RemoteClientBitrateLimit":"8000000","AuthenticationProviderId":"X",
            "PasswordResetProviderId":"Y","BlockedTags":["a"]}}"#,
        )
        .unwrap();
        assert_eq!(u.remote_limit, 8_000_000);
        let p = u.policy_with_limit(5_000_000);
        assert_eq!(p.len(), u.policy.len());
        for (k, v) in &u.policy {
            if k == "RemoteClientBitrateLimit" {
                assert_eq!(p[k], Value::from(5_000_000));
            } else {
                assert_eq!(&p[k], v);
            }
        }
        assert_eq!(
            u.policy_with_limit(i64::MAX)["RemoteClientBitrateLimit"],
            MAX_LIMIT_BPS
        );
        let bare = decode_user(br#"{"Id":"u","Policy":null}"#).unwrap();
        assert!(bare.policy.is_empty());
        assert_eq!(bare.remote_limit, 0);
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            check_base_url("http://10.0.0.2:8096/").unwrap(),
            "http://10.0.0.2:8096"
        );
        assert_eq!(
            check_base_url(" HTTP://nas/jellyfin/ ").unwrap(),
            "HTTP://nas/jellyfin"
        );
        let e = check_base_url("https://nas:8920").unwrap_err().to_string();
        assert!(e.contains("TLS") && e.contains("http://"), "{e}");
        for bad in [
            "",
            "nas:8096",
            "ftp://x",
            "http://",
            "http://u:p@x",
            "http://x/?a=1",
        ] {
            assert!(
                matches!(check_base_url(bad), Err(Error::BadUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn transient() {
        assert!(Error::Timeout.is_transient());
        assert!(Error::Starting { retry_after: None }.is_transient());
        assert!(Error::Status(502).is_transient());
        assert!(!Error::Unauthorized.is_transient());
        assert!(!Error::Status(400).is_transient());
        assert!(!Error::Malformed("x".into()).is_transient());
        assert_eq!(parse_retry_after("005"), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn item_source_choice() {
        let item: ItemSources = serde_json::from_str(
            r#"{"MediaSources":[{"Id":"a","Bitrate":1000},{"Id":"b","Bitrate":"2000"}]}"#,
        )
        .unwrap();
        assert_eq!(item.bitrate_of(Some("b")), Some(2000));
        assert_eq!(item.bitrate_of(Some("A")), Some(1000));
        assert_eq!(item.bitrate_of(None), Some(1000));
        assert_eq!(item.bitrate_of(Some("zz")), None);
        let one: ItemSources =
            serde_json::from_str(r#"{"MediaSources":[{"Id":"a","Bitrate":1000}]}"#).unwrap();
        assert_eq!(one.bitrate_of(Some("zz")), Some(1000));
    }
}
