//! A Jellyfin server emulator for tests and the demo: it answers the parts of the real server's
//! HTTP contract that jellydemon and its viewers use (see the README, "Jellyfin emulator and viewer"), and streams real TCP
//! bytes at the bitrate negotiated at PlaybackInfo, in bursty segments like a transcoder.
//!
//! Usable standalone (`homenet jellyfin`) and from integration tests via
//! `#[path = "support/emulator.rs"] mod emulator;`.
#![allow(dead_code)]

use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Provider ids of the stock server (round-tripped, never required to be these values).
pub const DEFAULT_AUTH_PROVIDER: &str =
    "Jellyfin.Server.Implementations.Users.DefaultAuthenticationProvider";
/// See [`DEFAULT_AUTH_PROVIDER`].
pub const DEFAULT_RESET_PROVIDER: &str =
    "Jellyfin.Server.Implementations.Users.DefaultPasswordResetProvider";

const TICKS_PER_SECOND: i64 = 10_000_000;
const MAX_REQUEST_BODY: u64 = 1 << 20;
const REQUEST_LOG_CAP: usize = 2000;
/// A command channel poll keeps the session "connected" (like an open WebSocket) this long.
const CONTROLLER_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// World file
// ---------------------------------------------------------------------------------------------

/// The emulated server's content, read from the `--world` JSON file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    #[serde(default = "default_server_name")]
    /// Friendly name (`ServerName`, `/System/Ping`).
    pub server_name: String,
    #[serde(default = "default_version")]
    /// `Version` reported by `/System/Info[/Public]`.
    pub version: String,
    #[serde(default = "default_server_id")]
    /// SystemId / ServerId, 32 hex digits.
    pub server_id: String,
    #[serde(default)]
    /// API keys (administrator rights, no user).
    pub api_keys: Vec<WorldApiKey>,
    #[serde(default)]
    /// Users, all without a password.
    pub users: Vec<WorldUser>,
    #[serde(default)]
    /// Library items.
    pub items: Vec<WorldItem>,
    /// Server-wide "Internet streaming bitrate limit", b/s; 0 = none.
    #[serde(default)]
    pub remote_client_bitrate_limit: i64,
    /// network.xml LocalNetworkSubnets; empty = RFC1918 + 127/8; `!cidr` excludes.
    #[serde(default)]
    pub local_network_subnets: Vec<String>,
    /// 10.11's EnableLegacyAuthorization (X-Emby-Token, `Emby` scheme, `api_key`).
    #[serde(default)]
    pub enable_legacy_authorization: bool,
    /// Media seconds per streamed segment.
    #[serde(default = "default_segment_ms")]
    pub segment_ms: u64,
    /// Segments sent at wire speed when a stream starts.
    #[serde(default = "default_prefill")]
    pub prefill_segments: u64,
    /// A playing session whose client has not reported for this long is stopped.
    #[serde(default = "default_checkin_timeout")]
    pub playback_checkin_timeout_s: u64,
}

/// An API key (Dashboard → API Keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldApiKey {
    /// Key name: the `Client` of its session.
    pub name: String,
    /// The token, as sent in `Token="…"`.
    pub token: String,
}

/// A password-less user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldUser {
    /// Login name.
    pub name: String,
    /// 32 hex digits.
    pub id: String,
    #[serde(default)]
    /// `Policy.IsAdministrator`.
    pub is_administrator: bool,
    #[serde(default)]
    /// `Policy.RemoteClientBitrateLimit`, b/s; 0 = none.
    pub remote_client_bitrate_limit: i64,
    /// "" = the field is missing from the stored policy (emulates some plugins).
    #[serde(default = "default_auth_provider")]
    pub authentication_provider_id: String,
    #[serde(default = "default_reset_provider")]
    /// As `authentication_provider_id`.
    pub password_reset_provider_id: String,
    #[serde(default)]
    /// `Policy.IsDisabled`: login refused, tokens invalid.
    pub is_disabled: bool,
}

/// A library item with one media source (id = item id).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldItem {
    /// 32 hex digits.
    pub id: String,
    /// `Name`.
    pub name: String,
    /// "Movie" or "Episode".
    #[serde(rename = "type", default = "default_item_type")]
    pub item_type: String,
    #[serde(default)]
    /// `SeriesName` for episodes.
    pub series_name: Option<String>,
    /// Container bitrate, b/s (video + audio).
    pub bitrate: i64,
    /// Part of `bitrate` that is audio.
    #[serde(default = "default_audio_bitrate")]
    pub audio_bitrate: i64,
    #[serde(default = "default_runtime_ticks")]
    /// `RunTimeTicks`.
    pub runtime_ticks: i64,
    #[serde(default = "default_container")]
    /// `Container`.
    pub container: String,
}

fn default_server_name() -> String {
    "homenet-jellyfin".into()
}
fn default_version() -> String {
    "10.11.11".into()
}
fn default_server_id() -> String {
    "e2a9f0c4b1d84f6a9c3e7b5d1f2a4c68".into()
}
fn default_segment_ms() -> u64 {
    2000
}
fn default_prefill() -> u64 {
    3
}
fn default_checkin_timeout() -> u64 {
    300
}
fn default_auth_provider() -> String {
    DEFAULT_AUTH_PROVIDER.into()
}
fn default_reset_provider() -> String {
    DEFAULT_RESET_PROVIDER.into()
}
fn default_item_type() -> String {
    "Movie".into()
}
fn default_audio_bitrate() -> i64 {
    384_000
}
fn default_runtime_ticks() -> i64 {
    2 * 3600 * TICKS_PER_SECOND
}
fn default_container() -> String {
    "mkv".into()
}

impl World {
    /// Parses and validates a world file's text.
    pub fn parse(text: &str) -> Result<World, String> {
        let w: World = serde_json::from_str(text).map_err(|e| format!("world file: {e}"))?;
        w.validate()?;
        Ok(w)
    }

    /// Reads a world file.
    pub fn load(path: &str) -> Result<World, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        World::parse(&text).map_err(|e| format!("{path}: {e}"))
    }

    fn validate(&self) -> Result<(), String> {
        if !is_hex32(&self.server_id) {
            return Err(format!(
                "server_id {:?} is not 32 lowercase hex digits",
                self.server_id
            ));
        }
        if self.segment_ms == 0 {
            return Err("segment_ms must be > 0".into());
        }
        for u in &self.users {
            if !is_hex32(&u.id) {
                return Err(format!(
                    "user {:?}: id {:?} is not 32 lowercase hex digits",
                    u.name, u.id
                ));
            }
        }
        for i in &self.items {
            if !is_hex32(&i.id) {
                return Err(format!(
                    "item {:?}: id {:?} is not 32 lowercase hex digits",
                    i.name, i.id
                ));
            }
            if i.bitrate <= 0 || i.audio_bitrate <= 0 || i.audio_bitrate >= i.bitrate {
                return Err(format!(
                    "item {:?}: need 0 < audio_bitrate < bitrate (b/s)",
                    i.name
                ));
            }
            if i.runtime_ticks <= 0 {
                return Err(format!("item {:?}: runtime_ticks must be > 0", i.name));
            }
        }
        parse_subnets(&self.local_network_subnets)?;
        Ok(())
    }
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a GUID the way `Guid.Parse` accepts the common forms; returns the "N" form.
fn parse_guid(s: &str) -> Option<String> {
    let t = s.trim_start_matches('{').trim_end_matches('}');
    let hex: String = if t.len() == 36 {
        let b = t.as_bytes();
        if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
            return None;
        }
        t.chars().filter(|c| *c != '-').collect()
    } else {
        t.to_string()
    };
    if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(hex.to_ascii_lowercase())
    } else {
        None
    }
}

type Subnets = (Vec<ipnet::IpNet>, Vec<ipnet::IpNet>);

fn parse_subnets(list: &[String]) -> Result<Subnets, String> {
    let mut lan = Vec::new();
    let mut excluded = Vec::new();
    for s in list {
        let (neg, body) = match s.strip_prefix('!') {
            Some(b) => (true, b),
            None => (false, s.as_str()),
        };
        let net: ipnet::IpNet = body
            .parse()
            .or_else(|_| body.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("local_network_subnets: {s:?} is not a CIDR"))?;
        if neg {
            excluded.push(net);
        } else {
            lan.push(net);
        }
    }
    if lan.is_empty() {
        for d in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "127.0.0.0/8",
        ] {
            lan.push(d.parse().map_err(|_| "internal".to_string())?);
        }
    }
    Ok((lan, excluded))
}

/// `NetworkManager.IsInLocalNetwork` (10.10/10.11): exactly 127.0.0.1 or ::1, or inside the LAN
/// subnets and not excluded. Other 127/8 addresses are local only through the default subnets,
/// which lets a test on loopback play a remote viewer from 127.0.0.2.
pub fn is_in_local_network(ip: IpAddr, subnets: &[String]) -> bool {
    let Ok((lan, excluded)) = parse_subnets(subnets) else {
        return false;
    };
    let exact_loopback =
        ip == IpAddr::from([127, 0, 0, 1]) || ip == IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]);
    exact_loopback
        || (lan.iter().any(|n| n.contains(&ip)) && !excluded.iter().any(|n| n.contains(&ip)))
}

/// `MediaInfoHelper.GetMaxBitrate`: the user limit if > 0, else the server's; applied (min with
/// the client's request) only to callers outside the local network.
pub fn max_bitrate(
    client_max: Option<i64>,
    user_limit: i64,
    server_limit: i64,
    remote_is_local: bool,
) -> Option<i64> {
    let mut remote_max = user_limit;
    if remote_max <= 0 {
        remote_max = server_limit;
    }
    if remote_max > 0 && !remote_is_local {
        Some(client_max.unwrap_or(remote_max).min(remote_max))
    } else {
        client_max
    }
}

/// Splits a transcode target (total b/s) into (video, audio) like a transcoder profile would.
pub fn transcode_split(total: i64, source_audio: i64) -> (i64, i64) {
    let audio = source_audio.min(192_000).min(total / 2).max(1);
    (total.saturating_sub(audio).max(1), audio)
}

/// Parses an `Authorization` header value with the server's grammar
/// (`AuthorizationContext.GetAuthorization` + `GetParts`). `None` when the scheme is not accepted.
pub fn parse_authorization(value: &str, legacy: bool) -> Option<HashMap<String, String>> {
    let first_space = value.find(' ')?;
    let scheme = &value[..first_space];
    if !(scheme.eq_ignore_ascii_case("MediaBrowser")
        || legacy && scheme.eq_ignore_ascii_case("Emby"))
    {
        return None;
    }
    let s: Vec<char> = value[first_space + 1..].chars().collect();
    let mut out = HashMap::new();
    let mut escaped = false;
    let mut start = 0usize;
    let mut key = String::new();
    let mut i = 0usize;
    while i < s.len() {
        let c = s[i];
        if c == '"' || c == ',' {
            // The server's XOR: a quote toggles "inside a value", a comma does not.
            escaped ^= c == '"';
            if c == ',' && !escaped {
                if start < i {
                    let v: String = s[start..i].iter().collect();
                    out.insert(
                        std::mem::take(&mut key),
                        url_decode(v.trim_matches('"'), true),
                    );
                }
                start = i + 1;
            }
        } else if !escaped && c == '=' {
            key = s[start..i].iter().collect::<String>().trim().to_string();
            start = i + 1;
        }
        i += 1;
    }
    if start < i {
        let v: String = s[start..i].iter().collect();
        out.insert(key, url_decode(v.trim_matches('"'), true));
    }
    Some(out)
}

/// Percent-decoding; `plus_is_space` as in `WebUtility.UrlDecode` and query strings.
pub fn url_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A 32-hex key derived from text (the real server uses MD5 of Client + DeviceId).
pub fn hex_key(text: &str) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x6c62_272e_07bb_0142;
    for byte in text.bytes() {
        a = (a ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b ^ u64::from(byte))
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(7);
    }
    format!("{a:016x}{b:016x}")
}

fn random_hex32() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let rs = std::collections::hash_map::RandomState::new();
    let mut h1 = rs.build_hasher();
    h1.write_u64(n);
    let mut h2 = rs.build_hasher();
    h2.write_u64(n ^ 0x5555_5555);
    format!("{:016x}{:016x}", h1.finish(), h2.finish())
}

/// Formats a time like the server: UTC, 7 fractional digits, `Z`.
pub fn format_date(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:07}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos() / 100
    )
}

/// Removes `null` members from objects, recursively (the server omits nulls).
pub fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// User policy
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Bool,
    Int,
    OptInt,
    Str,
    Arr,
    Enum,
}

/// UserPolicy fields (10.11) with the C# constructor defaults.
fn policy_fields() -> Vec<(&'static str, Kind, Value)> {
    use Kind::*;
    vec![
        ("IsAdministrator", Bool, json!(false)),
        ("IsHidden", Bool, json!(true)),
        ("EnableCollectionManagement", Bool, json!(false)),
        ("EnableSubtitleManagement", Bool, json!(false)),
        ("EnableLyricManagement", Bool, json!(false)),
        ("IsDisabled", Bool, json!(false)),
        ("MaxParentalRating", OptInt, Value::Null),
        ("MaxParentalSubRating", OptInt, Value::Null),
        ("BlockedTags", Arr, json!([])),
        ("AllowedTags", Arr, json!([])),
        ("EnableUserPreferenceAccess", Bool, json!(true)),
        ("AccessSchedules", Arr, json!([])),
        ("BlockUnratedItems", Arr, json!([])),
        ("EnableRemoteControlOfOtherUsers", Bool, json!(false)),
        ("EnableSharedDeviceControl", Bool, json!(true)),
        ("EnableRemoteAccess", Bool, json!(true)),
        ("EnableLiveTvManagement", Bool, json!(true)),
        ("EnableLiveTvAccess", Bool, json!(true)),
        ("EnableMediaPlayback", Bool, json!(true)),
        ("EnableAudioPlaybackTranscoding", Bool, json!(true)),
        ("EnableVideoPlaybackTranscoding", Bool, json!(true)),
        ("EnablePlaybackRemuxing", Bool, json!(true)),
        ("ForceRemoteSourceTranscoding", Bool, json!(false)),
        ("EnableContentDeletion", Bool, json!(false)),
        ("EnableContentDeletionFromFolders", Arr, json!([])),
        ("EnableContentDownloading", Bool, json!(true)),
        ("EnableSyncTranscoding", Bool, json!(true)),
        ("EnableMediaConversion", Bool, json!(true)),
        ("EnabledDevices", Arr, json!([])),
        ("EnableAllDevices", Bool, json!(true)),
        ("EnabledChannels", Arr, json!([])),
        ("EnableAllChannels", Bool, json!(true)),
        ("EnabledFolders", Arr, json!([])),
        ("EnableAllFolders", Bool, json!(true)),
        ("InvalidLoginAttemptCount", Int, json!(0)),
        ("LoginAttemptsBeforeLockout", Int, json!(-1)),
        ("MaxActiveSessions", Int, json!(0)),
        ("EnablePublicSharing", Bool, json!(true)),
        ("BlockedMediaFolders", Arr, json!([])),
        ("BlockedChannels", Arr, json!([])),
        ("RemoteClientBitrateLimit", Int, json!(0)),
        ("AuthenticationProviderId", Str, Value::Null),
        ("PasswordResetProviderId", Str, Value::Null),
        ("SyncPlayAccess", Enum, json!("CreateAndJoinGroups")),
    ]
}

/// The policy a POST would store: C# defaults, overlaid by the posted fields (names matched
/// case-insensitively, unknown ones ignored). Err = ValidationProblemDetails `errors`.
pub fn policy_from_post(body: &Value) -> Result<Map<String, Value>, Map<String, Value>> {
    let mut errors = Map::new();
    let Some(posted) = body.as_object() else {
        errors.insert(
            "$".into(),
            json!(["The JSON value could not be converted to UserPolicy."]),
        );
        return Err(errors);
    };
    let mut out = Map::new();
    for (name, kind, default) in policy_fields() {
        let given = posted
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v);
        let value = match given {
            None => default,
            Some(v) => match coerce(kind, v) {
                Some(v) => v,
                None => {
                    errors.insert(
                        format!("$.{name}"),
                        json!([format!("The JSON value could not be converted to {name}.")]),
                    );
                    continue;
                }
            },
        };
        out.insert(name.to_string(), value);
    }
    for field in ["AuthenticationProviderId", "PasswordResetProviderId"] {
        let ok = out
            .get(field)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.trim().is_empty());
        if !ok && !errors.contains_key(&format!("$.{field}")) {
            errors.insert(
                field.into(),
                json!([format!("The {field} field is required.")]),
            );
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn coerce(kind: Kind, v: &Value) -> Option<Value> {
    let as_i32 = |v: &Value| -> Option<Value> {
        let n = match v {
            Value::Number(n) => n.as_i64()?,
            Value::String(s) => s.trim().parse::<i64>().ok()?,
            _ => return None,
        };
        i32::try_from(n).ok().map(|n| json!(n))
    };
    match kind {
        Kind::Bool => v.is_boolean().then(|| v.clone()),
        Kind::Int => as_i32(v),
        Kind::OptInt => {
            if v.is_null() {
                Some(Value::Null)
            } else {
                as_i32(v)
            }
        }
        Kind::Str => (v.is_string() || v.is_null()).then(|| v.clone()),
        Kind::Arr => {
            if v.is_null() {
                Some(json!([]))
            } else {
                v.is_array().then(|| v.clone())
            }
        }
        Kind::Enum => match v.as_str() {
            Some(s) => ["CreateAndJoinGroups", "JoinGroups", "None"]
                .iter()
                .find(|n| n.eq_ignore_ascii_case(s))
                .map(|n| json!(n)),
            None => None,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// Fault injection, set with `POST /_emu/fault`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// none | status500 | garbage | slow | late | starting | huge. `slow` waits before
    /// handling; `late` handles at once (a POST is applied) and answers after `delay_ms`, as a
    /// busy server does (reference/real-world.md: "a busy Jellyfin may apply a write and
    /// answer late").
    pub mode: String,
    #[serde(default)]
    /// Delay before answering (any mode).
    pub delay_ms: u64,
    /// "api" (default): everything but the viewer-side endpoints; "all": every non-/_emu path;
    /// "writes": the POSTs of "api" only (a server whose reads are quick and writes slow).
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Body size for "huge".
    #[serde(default = "default_huge")]
    pub size_bytes: u64,
}

fn default_scope() -> String {
    "api".into()
}
fn default_huge() -> u64 {
    16 << 20
}

impl Default for Fault {
    fn default() -> Self {
        Fault {
            mode: "none".into(),
            delay_ms: 0,
            scope: default_scope(),
            size_bytes: default_huge(),
        }
    }
}

struct UserState {
    name: String,
    id: String,
    policy: Map<String, Value>,
    last_activity: Option<SystemTime>,
}

struct TokenInfo {
    user_id: String,
    client: String,
    device: String,
    device_id: String,
    version: String,
}

#[derive(Clone)]
struct Playing {
    item_id: String,
    media_source_id: String,
    play_method: String,
    play_session_id: Option<String>,
    position_ticks: i64,
    position_at: Instant,
    paused: bool,
    paused_since: Option<SystemTime>,
    audio_stream_index: Option<i64>,
    subtitle_stream_index: Option<i64>,
}

impl Playing {
    fn position_now(&self) -> i64 {
        if self.paused {
            return self.position_ticks;
        }
        let ms = i64::try_from(self.position_at.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.position_ticks
            .saturating_add(ms.saturating_mul(10_000))
    }
}

/// What a PlaybackInfo call fixed for one playback (the limit is never re-read afterwards).
#[derive(Clone, serde::Serialize)]
struct Negotiation {
    play_session_id: String,
    item_id: String,
    session_id: String,
    remote_ip: String,
    is_local: bool,
    limit_bps: Option<i64>,
    transcode: bool,
    video_bitrate: i64,
    audio_bitrate: i64,
    reasons: Vec<String>,
}

struct Session {
    id: String,
    client: String,
    device_name: String,
    device_id: String,
    version: String,
    user_id: Option<String>,
    user_name: Option<String>,
    remote_end_point: String,
    last_activity: SystemTime,
    last_playback_check_in: Option<SystemTime>,
    capabilities: Option<Value>,
    polling: u32,
    last_poll: Option<Instant>,
    commands: VecDeque<Value>,
    commands_seen: Vec<String>,
    playing: Option<Playing>,
    negotiation: Option<Negotiation>,
    playback_info_count: u64,
    restarts: u64,
    bytes_sent: Arc<AtomicU64>,
    stream_cancel: Vec<Arc<AtomicBool>>,
}

impl Session {
    fn connected(&self) -> bool {
        self.polling > 0
            || self
                .last_poll
                .is_some_and(|t| t.elapsed() < CONTROLLER_GRACE)
    }
    fn supports_media_control(&self) -> bool {
        let caps = self
            .capabilities
            .as_ref()
            .and_then(|c| c.get("SupportsMediaControl"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        caps && self.connected()
    }
    fn stop_streams(&mut self) {
        for c in self.stream_cancel.drain(..) {
            c.store(true, Ordering::SeqCst);
        }
    }
}

#[derive(serde::Serialize)]
struct LogEntry {
    t_ms: u64,
    method: String,
    path: String,
    status: u16,
    remote: String,
    caller: String,
}

struct State {
    world: World,
    server_limit: i64,
    users: Vec<UserState>,
    tokens: HashMap<String, TokenInfo>,
    sessions: Vec<Session>,
    negotiations: HashMap<String, Negotiation>,
    fault: Fault,
    log: VecDeque<LogEntry>,
}

struct Shared {
    state: Mutex<State>,
    commands_cv: Condvar,
    started: Instant,
    shutdown: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking handler thread must not take the whole emulator down.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// A running emulator; stops when dropped.
pub struct Emulator {
    /// The bound addresses, in `--listen` order.
    pub addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    servers: Vec<Arc<tiny_http::Server>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Emulator {
    /// Binds every address (port 0 = any) and serves `world` until dropped.
    pub fn start(world: World, listen: &[String]) -> Result<Emulator, String> {
        if listen.is_empty() {
            return Err("at least one --listen ADDR:PORT is needed".into());
        }
        let users = world
            .users
            .iter()
            .map(|u| {
                let mut policy: Map<String, Value> = policy_fields()
                    .into_iter()
                    .map(|(n, _, d)| (n.to_string(), d))
                    .collect();
                policy.insert("IsAdministrator".into(), json!(u.is_administrator));
                policy.insert("IsHidden".into(), json!(false));
                policy.insert("IsDisabled".into(), json!(u.is_disabled));
                policy.insert(
                    "RemoteClientBitrateLimit".into(),
                    json!(u.remote_client_bitrate_limit),
                );
                let ap = &u.authentication_provider_id;
                let rp = &u.password_reset_provider_id;
                policy.insert("AuthenticationProviderId".into(), json_opt_str(ap));
                policy.insert("PasswordResetProviderId".into(), json_opt_str(rp));
                UserState {
                    name: u.name.clone(),
                    id: u.id.clone(),
                    policy,
                    last_activity: None,
                }
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                server_limit: world.remote_client_bitrate_limit,
                world,
                users,
                tokens: HashMap::new(),
                sessions: Vec::new(),
                negotiations: HashMap::new(),
                fault: Fault::default(),
                log: VecDeque::new(),
            }),
            commands_cv: Condvar::new(),
            started: Instant::now(),
            shutdown: AtomicBool::new(false),
        });
        let mut servers = Vec::new();
        let mut addrs = Vec::new();
        for l in listen {
            let server = tiny_http::Server::http(l.as_str()).map_err(|e| format!("{l}: {e}"))?;
            let addr = server
                .server_addr()
                .to_ip()
                .ok_or_else(|| format!("{l}: not an IP listener"))?;
            addrs.push(addr);
            servers.push(Arc::new(server));
        }
        let threads = servers
            .iter()
            .map(|server| {
                let server = Arc::clone(server);
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    for req in server.incoming_requests() {
                        if shared.shutdown.load(Ordering::SeqCst) {
                            break;
                        }
                        let shared = Arc::clone(&shared);
                        std::thread::spawn(move || serve(&shared, req));
                    }
                })
            })
            .collect();
        Ok(Emulator {
            addrs,
            shared,
            servers,
            threads,
        })
    }

    /// `http://ADDR` of the first listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.addrs[0])
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let mut st = self.shared.lock();
            for s in &mut st.sessions {
                s.stop_streams();
            }
        }
        self.shared.commands_cv.notify_all();
        for s in &self.servers {
            s.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn json_opt_str(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        json!(s)
    }
}

/// A request, detached from the HTTP library.
struct Req {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    peer: IpAddr,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Query parameters bind case-insensitively, like ASP.NET model binding.
    fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json_body(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

enum Reply {
    Json(u16, Value),
    Empty(u16),
    Text(u16, String),
    Raw(u16, &'static str, Vec<(String, String)>, Vec<u8>),
    Huge(u64),
    Stream(StreamPlan),
}

struct StreamPlan {
    rate_bps: u64,
    total_bytes: u64,
    segment_bytes: u64,
    segment: Duration,
    prefill: u64,
    cancel: Arc<AtomicBool>,
    counter: Arc<AtomicU64>,
}

fn problem(status: u16, errors: Map<String, Value>) -> Reply {
    Reply::Json(
        status,
        json!({
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
            "title": "One or more validation errors occurred.",
            "status": status,
            "errors": errors,
            "traceId": format!("00-{}-{}-00", random_hex32(), &random_hex32()[..16]),
        }),
    )
}

fn error_text(status: u16) -> Reply {
    Reply::Text(status, "Error processing request.".into())
}

/// The server's `GetNormalizedRemoteIP`: IPv4-mapped IPv6 becomes IPv4.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn serve(shared: &Arc<Shared>, mut req: tiny_http::Request) {
    let peer = req
        .remote_addr()
        .map(|a| normalize_ip(a.ip()))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let url = req.url().to_string();
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (url.clone(), String::new()),
    };
    let query = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (url_decode(k, true), url_decode(v, true)),
            None => (url_decode(kv, true), String::new()),
        })
        .collect();
    let headers = req
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_string(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    let mut body = Vec::new();
    if req
        .as_reader()
        .take(MAX_REQUEST_BODY)
        .read_to_end(&mut body)
        .is_err()
    {
        let _ = req.respond(tiny_http::Response::empty(400));
        return;
    }
    let r = Req {
        method: req.method().as_str().to_ascii_uppercase(),
        path: url_decode(&path, false),
        query,
        headers,
        body,
        peer,
    };
    let (reply, caller) = handle(shared, &r);
    let status = match &reply {
        Reply::Json(s, _) | Reply::Empty(s) | Reply::Text(s, _) | Reply::Raw(s, _, _, _) => *s,
        Reply::Huge(_) | Reply::Stream(_) => 200,
    };
    if !r.path.starts_with("/_emu/") {
        let mut st = shared.lock();
        let t_ms = u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let redacted: Vec<String> = r
            .query
            .iter()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case("apikey") || k.eq_ignore_ascii_case("api_key") {
                    format!("{k}=REDACTED")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        let path = if redacted.is_empty() {
            r.path.clone()
        } else {
            format!("{}?{}", r.path, redacted.join("&"))
        };
        st.log.push_back(LogEntry {
            t_ms,
            method: r.method.clone(),
            path,
            status,
            remote: r.peer.to_string(),
            caller,
        });
        while st.log.len() > REQUEST_LOG_CAP {
            st.log.pop_front();
        }
    }
    let header = |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).ok();
    let res = match reply {
        Reply::Json(status, v) => {
            let body = serde_json::to_vec(&strip_nulls(v)).unwrap_or_default();
            let mut resp = tiny_http::Response::from_data(body).with_status_code(status);
            if let Some(h) = header("Content-Type", "application/json; charset=utf-8") {
                resp.add_header(h);
            }
            req.respond(resp)
        }
        Reply::Empty(status) => req.respond(tiny_http::Response::empty(status)),
        Reply::Text(status, t) => {
            let mut resp = tiny_http::Response::from_string(t).with_status_code(status);
            if let Some(h) = header("Content-Type", "text/plain") {
                resp.add_header(h);
            }
            req.respond(resp)
        }
        Reply::Raw(status, ctype, extra, body) => {
            let mut resp = tiny_http::Response::from_data(body).with_status_code(status);
            if let Some(h) = header("Content-Type", ctype) {
                resp.add_header(h);
            }
            for (k, v) in extra {
                if let Some(h) = header(&k, &v) {
                    resp.add_header(h);
                }
            }
            req.respond(resp)
        }
        Reply::Huge(n) => {
            let reader = HugeJson {
                left: n,
                first: true,
            };
            let mut resp = tiny_http::Response::new(
                tiny_http::StatusCode(200),
                Vec::new(),
                reader,
                usize::try_from(n).ok(),
                None,
            );
            if let Some(h) = header("Content-Type", "application/json; charset=utf-8") {
                resp.add_header(h);
            }
            req.respond(resp)
        }
        Reply::Stream(plan) => {
            let w = req.into_writer();
            stream(shared, w, plan)
        }
    };
    let _ = res;
}

/// A syntactically valid but oversized JSON body: `[0,0,0,…]`.
struct HugeJson {
    left: u64,
    first: bool,
}

impl Read for HugeJson {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() && self.left > 0 {
            buf[n] = if self.first {
                self.first = false;
                b'['
            } else if self.left == 1 {
                b']'
            } else if self.left % 2 == 0 {
                b'0'
            } else {
                b','
            };
            self.left -= 1;
            n += 1;
        }
        Ok(n)
    }
}

/// Sends a stream like a transcoder fills an HLS buffer: `prefill` segments at once, then one
/// segment per segment duration, each as fast as TCP allows.
fn stream(shared: &Shared, mut w: Box<dyn Write + Send>, plan: StreamPlan) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nContent-Length: {}\r\nConnection: close\r\nX-Emu-Rate-Bps: {}\r\n\r\n",
        plan.total_bytes, plan.rate_bps
    );
    w.write_all(head.as_bytes())?;
    w.flush()?;
    let chunk = vec![0x47u8; 64 * 1024];
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut seg: u64 = 0;
    while sent < plan.total_bytes {
        // Segments 0..prefill are due at once; segment k after that at (k - prefill + 1) segment
        // durations, i.e. the transcoder keeps `prefill` segments ahead of real time.
        let due = if seg < plan.prefill {
            Duration::ZERO
        } else {
            let n = (seg - plan.prefill).saturating_add(1);
            plan.segment
                .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
        };
        // Pacing, not synchronisation: the transcoder's clock.
        loop {
            if plan.cancel.load(Ordering::SeqCst) || shared.shutdown.load(Ordering::SeqCst) {
                return Ok(());
            }
            let el = start.elapsed();
            if el >= due {
                break;
            }
            std::thread::sleep((due - el).min(Duration::from_millis(50)));
        }
        let mut left = plan.segment_bytes.min(plan.total_bytes - sent);
        while left > 0 {
            let n = usize::try_from(left)
                .unwrap_or(chunk.len())
                .min(chunk.len());
            w.write_all(&chunk[..n])?;
            left -= n as u64;
            sent += n as u64;
            plan.counter.fetch_add(n as u64, Ordering::Relaxed);
        }
        w.flush()?;
        seg += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

enum Caller {
    ApiKey(String),
    User(String),
}

struct Auth {
    /// `None` = no token; `Some(None)` = a token that is not valid.
    caller: Option<Option<Caller>>,
    parts: HashMap<String, String>,
    token: Option<String>,
}

fn authenticate(st: &State, r: &Req) -> Auth {
    let legacy = st.world.enable_legacy_authorization;
    let mut parts = HashMap::new();
    if let Some(h) = r.header("Authorization") {
        if let Some(p) = parse_authorization(h, legacy) {
            parts = p;
        }
    }
    if parts.is_empty() && legacy {
        if let Some(h) = r.header("X-Emby-Authorization") {
            if let Some(p) = parse_authorization(h, legacy) {
                parts = p;
            }
        }
    }
    let mut token = parts.get("Token").cloned().filter(|t| !t.is_empty());
    if token.is_none() && legacy {
        token = r
            .header("X-Emby-Token")
            .or_else(|| r.header("X-MediaBrowser-Token"))
            .map(str::to_string);
    }
    if token.is_none() {
        token = r
            .query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("ApiKey") || legacy && k == "api_key")
            .map(|(_, v)| v.clone());
    }
    let caller = token.as_ref().map(|t| {
        if let Some(k) = st.world.api_keys.iter().find(|k| &k.token == t) {
            return Some(Caller::ApiKey(k.name.clone()));
        }
        let info = st.tokens.get(t)?;
        let user = st.users.iter().find(|u| u.id == info.user_id)?;
        if user.policy.get("IsDisabled").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        Some(Caller::User(info.user_id.clone()))
    });
    Auth {
        caller,
        parts,
        token,
    }
}

fn fault_applies(f: &Fault, r: &Req) -> bool {
    if f.scope == "all" {
        return true;
    }
    if f.scope == "writes" && r.method != "POST" {
        return false;
    }
    let p = r.path.to_ascii_lowercase();
    !(p == "/users/authenticatebyname"
        || p.starts_with("/sessions/playing")
        || p.starts_with("/sessions/capabilities")
        || p.starts_with("/videos/")
        || (p.starts_with("/items/") && p.ends_with("/playbackinfo")))
}

fn handle(shared: &Shared, r: &Req) -> (Reply, String) {
    if r.path.starts_with("/_emu/") {
        return (emu_control(shared, r), "emu".into());
    }
    let fault = shared.lock().fault.clone();
    let late = fault.mode == "late" && fault_applies(&fault, r);
    if fault.mode != "none" && !late && fault_applies(&fault, r) {
        if fault.delay_ms > 0 {
            std::thread::sleep(Duration::from_millis(fault.delay_ms));
        }
        match fault.mode.as_str() {
            "status500" => return (error_text(500), "fault".into()),
            "garbage" => {
                return (
                    Reply::Raw(
                        200,
                        "application/json; charset=utf-8",
                        vec![],
                        b"{\"Id\":\"\x01<html>garbage\xff,,]".to_vec(),
                    ),
                    "fault".into(),
                )
            }
            "huge" => return (Reply::Huge(fault.size_bytes.max(2)), "fault".into()),
            "starting" => {
                let st = shared.lock();
                if r.path.eq_ignore_ascii_case("/System/Info/Public") {
                    let v = json!({
                        "localAddress": local_address(r),
                        "serverName": st.world.server_name,
                        "version": st.world.version,
                        "productName": "Jellyfin Server",
                        "operatingSystem": "",
                        "id": st.world.server_id,
                        "startupWizardCompleted": false,
                    });
                    return (Reply::Json(200, v), "fault".into());
                }
                return (
                    Reply::Raw(
                        503,
                        "text/html",
                        vec![("Retry-After".into(), "005".into())],
                        b"<html><body><h1>Jellyfin is starting up</h1></body></html>".to_vec(),
                    ),
                    "fault".into(),
                );
            }
            _ => {}
        }
    }
    let mut st = shared.lock();
    expire_idle_playback(&mut st);
    let auth = authenticate(&st, r);
    let caller_name = match &auth.caller {
        None => "anonymous".to_string(),
        Some(None) => "invalid-token".to_string(),
        Some(Some(Caller::ApiKey(n))) => format!("apikey:{n}"),
        Some(Some(Caller::User(id))) => format!(
            "user:{}",
            st.users
                .iter()
                .find(|u| &u.id == id)
                .map(|u| u.name.as_str())
                .unwrap_or("?")
        ),
    };
    let reply = route(shared, &mut st, r, &auth);
    drop(st);
    if late && fault.delay_ms > 0 {
        std::thread::sleep(Duration::from_millis(fault.delay_ms));
    }
    (reply, caller_name)
}

/// Like the server's idle-playback check: a playback whose client has not reported for
/// `playback_checkin_timeout_s` (a crashed or killed player) is stopped.
fn expire_idle_playback(st: &mut State) {
    let limit = Duration::from_secs(st.world.playback_checkin_timeout_s);
    let now = SystemTime::now();
    for s in &mut st.sessions {
        let stale = s.playing.is_some()
            && s.last_playback_check_in
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|d| d > limit);
        if stale {
            s.playing = None;
            s.stop_streams();
        }
    }
}

fn local_address(r: &Req) -> String {
    format!("http://{}", r.header("Host").unwrap_or("127.0.0.1:8096"))
}

fn route(shared: &Shared, st: &mut State, r: &Req, auth: &Auth) -> Reply {
    let segs: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = lower.iter().map(String::as_str).collect();
    let m = r.method.as_str();

    // Anonymous endpoints.
    match (m, l.as_slice()) {
        ("GET", ["system", "info", "public"]) => return Reply::Json(200, public_info(st, r)),
        ("GET" | "POST", ["system", "ping"]) => {
            return Reply::Json(200, json!(st.world.server_name))
        }
        ("GET", ["health"]) => return Reply::Text(200, "Healthy".into()),
        ("POST", ["users", "authenticatebyname"]) => return authenticate_by_name(st, r, auth),
        _ => {}
    }
    let caller = match &auth.caller {
        Some(Some(c)) => c,
        _ => return Reply::Empty(401),
    };
    let is_admin = match caller {
        Caller::ApiKey(_) => true,
        Caller::User(id) => st
            .users
            .iter()
            .find(|u| &u.id == id)
            .and_then(|u| u.policy.get("IsAdministrator"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
    };
    match (m, l.as_slice()) {
        ("GET", ["system", "info"]) => {
            let mut v = public_info(st, r);
            if let Value::Object(o) = &mut v {
                for (k, val) in [
                    ("OperatingSystemDisplayName", json!("Linux")),
                    ("HasPendingRestart", json!(false)),
                    ("IsShuttingDown", json!(false)),
                    ("SupportsLibraryMonitor", json!(true)),
                    ("WebSocketPortNumber", json!(8096)),
                    ("CompletedInstallations", json!([])),
                    ("CanSelfRestart", json!(false)),
                    ("CanLaunchWebBrowser", json!(false)),
                    ("HasUpdateAvailable", json!(false)),
                    ("SystemArchitecture", json!("X64")),
                    ("CastReceiverApplications", json!([])),
                ] {
                    o.insert(k.into(), val);
                }
            }
            Reply::Json(200, v)
        }
        ("GET", ["sessions"]) => get_sessions(st, r, caller, is_admin),
        ("GET", ["system", "configuration"]) => Reply::Json(
            200,
            json!({
                "ServerName": st.world.server_name,
                "RemoteClientBitrateLimit": st.server_limit,
                "EnableLegacyAuthorization": st.world.enable_legacy_authorization,
                "IsStartupWizardCompleted": true,
                "EnableMetrics": false,
                "MinResumePct": 5,
                "MaxResumePct": 90,
                "UICulture": "en-US",
            }),
        ),
        ("GET", ["system", "configuration", "network"]) => Reply::Json(
            200,
            json!({
                "LocalNetworkSubnets": st.world.local_network_subnets,
                "LocalNetworkAddresses": [],
                "KnownProxies": [],
                "EnableIPv4": true,
                "EnableIPv6": false,
                "EnableRemoteAccess": true,
                "InternalHttpPort": 8096,
                "PublicHttpPort": 8096,
            }),
        ),
        ("POST", ["sessions", "capabilities"]) | ("POST", ["sessions", "capabilities", "full"]) => {
            let sid = log_session_activity(st, r, auth);
            let caps = if l.len() == 3 {
                match r.json_body() {
                    Some(v @ Value::Object(_)) => v,
                    _ => return problem(400, single_error("capabilities", "A body is required.")),
                }
            } else {
                let commands: Vec<String> = r
                    .q("supportedCommands")
                    .map(|s| s.split(',').map(str::to_string).collect())
                    .unwrap_or_default();
                json!({
                    "PlayableMediaTypes": r.q("playableMediaTypes").map(|s| s.split(',').collect::<Vec<_>>()).unwrap_or_default(),
                    "SupportedCommands": commands,
                    "SupportsMediaControl": r.q("supportsMediaControl").is_some_and(|v| v.eq_ignore_ascii_case("true")),
                })
            };
            if let Some(s) = find_session_mut(st, &sid) {
                s.capabilities = Some(caps);
            }
            Reply::Empty(204)
        }
        ("POST", ["sessions", "playing"]) => {
            if r.q("playCommand").is_some() || r.q("itemIds").is_some() {
                // This is the remote-control Play route without a session id: not a route.
                return error_text(404);
            }
            playback_report(st, r, auth, Report::Start)
        }
        ("POST", ["sessions", "playing", "progress"]) => {
            playback_report(st, r, auth, Report::Progress)
        }
        ("POST", ["sessions", "playing", "stopped"]) => {
            playback_report(st, r, auth, Report::Stopped)
        }
        ("POST", ["sessions", _, "playing"]) => {
            let target = segs[1].to_string();
            let Some(pc) = r.q("playCommand") else {
                return problem(
                    400,
                    single_error("playCommand", "The playCommand field is required."),
                );
            };
            let Some(pc) = [
                "PlayNow",
                "PlayNext",
                "PlayLast",
                "PlayInstantMix",
                "PlayShuffle",
            ]
            .iter()
            .find(|c| c.eq_ignore_ascii_case(pc)) else {
                return problem(
                    400,
                    single_error("playCommand", &format!("The value '{pc}' is not valid.")),
                );
            };
            let Some(ids) = r.q("itemIds") else {
                return problem(
                    400,
                    single_error("itemIds", "The itemIds field is required."),
                );
            };
            let mut item_ids = Vec::new();
            for id in ids.split(',').filter(|s| !s.is_empty()) {
                match parse_guid(id) {
                    Some(g) => item_ids.push(g),
                    None => {
                        return problem(
                            400,
                            single_error("itemIds", &format!("The value '{ids}' is not valid.")),
                        )
                    }
                }
            }
            let num = |name: &str| -> Result<Option<i64>, Reply> {
                match r.q(name) {
                    None | Some("") => Ok(None),
                    Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                        problem(
                            400,
                            single_error(name, &format!("The value '{v}' is not valid.")),
                        )
                    }),
                }
            };
            let (start, audio, sub, start_index) = match (
                num("startPositionTicks"),
                num("audioStreamIndex"),
                num("subtitleStreamIndex"),
                num("startIndex"),
            ) {
                (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
                (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return e,
            };
            let caller_sid = log_session_activity(st, r, auth);
            let controlling = caller_user_id(st, &caller_sid);
            let known: Vec<String> = item_ids
                .into_iter()
                .filter(|id| st.world.items.iter().any(|i| &i.id == id))
                .collect();
            let msg = json!({
                "MessageType": "Play",
                "Data": {
                    "ItemIds": known,
                    "StartPositionTicks": start,
                    "PlayCommand": pc,
                    "ControllingUserId": controlling,
                    "MediaSourceId": r.q("mediaSourceId"),
                    "AudioStreamIndex": audio,
                    "SubtitleStreamIndex": sub,
                    "StartIndex": start_index,
                }
            });
            send_command(shared, st, &target, msg, "Play")
        }
        ("POST", ["sessions", _, "playing", cmd]) => {
            let target = segs[1].to_string();
            let Some(cmd) = [
                "Stop",
                "Pause",
                "Unpause",
                "NextTrack",
                "PreviousTrack",
                "Seek",
                "Rewind",
                "FastForward",
                "PlayPause",
            ]
            .iter()
            .find(|c| c.eq_ignore_ascii_case(cmd)) else {
                return problem(
                    400,
                    single_error("command", &format!("The value '{cmd}' is not valid.")),
                );
            };
            let seek = r.q("seekPositionTicks").and_then(|v| v.parse::<i64>().ok());
            let caller_sid = log_session_activity(st, r, auth);
            let controlling = caller_user_id(st, &caller_sid);
            let msg = json!({
                "MessageType": "Playstate",
                "Data": {"Command": cmd, "SeekPositionTicks": seek, "ControllingUserId": controlling}
            });
            send_command(shared, st, &target, msg, cmd)
        }
        ("POST", ["sessions", _, "message"]) => {
            if let Some(r415) = require_json(r) {
                return r415;
            }
            let target = segs[1].to_string();
            let body = r.json_body().unwrap_or(Value::Null);
            let get = |k: &str| -> Option<&Value> {
                body.as_object()
                    .and_then(|o| o.iter().find(|(kk, _)| kk.eq_ignore_ascii_case(k)))
                    .map(|(_, v)| v)
            };
            let text = get("Text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty());
            let Some(text) = text else {
                return problem(400, single_error("Text", "The Text field is required."));
            };
            let header = get("Header")
                .and_then(Value::as_str)
                .filter(|h| !h.is_empty())
                .unwrap_or("Message from Server");
            let timeout = get("TimeoutMs").and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            });
            let caller_sid = log_session_activity(st, r, auth);
            let controlling = caller_user_id(st, &caller_sid);
            let mut args = Map::new();
            args.insert("Header".into(), json!(header));
            args.insert("Text".into(), json!(text));
            if let Some(t) = timeout {
                args.insert("TimeoutMs".into(), json!(t.to_string()));
            }
            let msg = json!({
                "MessageType": "GeneralCommand",
                "Data": {"Name": "DisplayMessage", "ControllingUserId": controlling, "Arguments": args}
            });
            send_command(shared, st, &target, msg, "DisplayMessage")
        }
        ("POST", ["sessions", _, "command"]) => {
            if let Some(r415) = require_json(r) {
                return r415;
            }
            let target = segs[1].to_string();
            let body = r.json_body().unwrap_or(Value::Null);
            let get = |k: &str| -> Option<&Value> {
                body.as_object()
                    .and_then(|o| o.iter().find(|(kk, _)| kk.eq_ignore_ascii_case(k)))
                    .map(|(_, v)| v)
            };
            let Some(name) = get("Name").and_then(Value::as_str).map(str::to_string) else {
                return problem(400, single_error("Name", "The Name field is required."));
            };
            let args = get("Arguments").cloned().unwrap_or(json!({}));
            let caller_sid = log_session_activity(st, r, auth);
            // The server overwrites ControllingUserId with the caller's.
            let controlling = caller_user_id(st, &caller_sid);
            let msg = json!({
                "MessageType": "GeneralCommand",
                "Data": {"Name": name, "ControllingUserId": controlling, "Arguments": args}
            });
            send_command(shared, st, &target, msg, &name)
        }
        ("POST", ["sessions", _, "command", _]) | ("POST", ["sessions", _, "system", _]) => {
            let target = segs[1].to_string();
            let caller_sid = log_session_activity(st, r, auth);
            let controlling = caller_user_id(st, &caller_sid);
            let msg = json!({
                "MessageType": "GeneralCommand",
                "Data": {"Name": segs[3], "ControllingUserId": controlling, "Arguments": {}}
            });
            send_command(shared, st, &target, msg, segs[3])
        }
        ("GET", ["users"]) => {
            let mut users: Vec<Value> = st
                .users
                .iter()
                .filter(|u| {
                    let hidden = u.policy.get("IsHidden").and_then(Value::as_bool);
                    let disabled = u.policy.get("IsDisabled").and_then(Value::as_bool);
                    r.q("isHidden")
                        .is_none_or(|v| Some(v.eq_ignore_ascii_case("true")) == hidden)
                        && r.q("isDisabled")
                            .is_none_or(|v| Some(v.eq_ignore_ascii_case("true")) == disabled)
                })
                .map(|u| user_dto(&st.world, u))
                .collect();
            users.sort_by(|a, b| {
                let n = |v: &Value| v["Name"].as_str().unwrap_or("").to_lowercase();
                n(a).cmp(&n(b))
            });
            Reply::Json(200, Value::Array(users))
        }
        ("GET", ["users", "me"]) => match caller {
            Caller::ApiKey(_) => error_text(400),
            Caller::User(id) => match st.users.iter().find(|u| &u.id == id) {
                Some(u) => Reply::Json(200, user_dto(&st.world, u)),
                None => error_text(400),
            },
        },
        ("GET", ["users", _]) => {
            let Some(id) = parse_guid(segs[1]) else {
                return problem(
                    400,
                    single_error("userId", &format!("The value '{}' is not valid.", segs[1])),
                );
            };
            if id.bytes().all(|b| b == b'0') {
                return error_text(400);
            }
            match st.users.iter().find(|u| u.id == id) {
                Some(u) => Reply::Json(200, user_dto(&st.world, u)),
                None => Reply::Json(404, json!("User not found")),
            }
        }
        ("POST", ["users", _, "policy"]) => {
            // Authorization filters run before model binding and validation.
            if !is_admin {
                return Reply::Empty(403);
            }
            if let Some(r415) = require_json(r) {
                return r415;
            }
            let Some(id) = parse_guid(segs[1]) else {
                return problem(
                    400,
                    single_error("userId", &format!("The value '{}' is not valid.", segs[1])),
                );
            };
            let Some(body) = r.json_body() else {
                return problem(400, single_error("$", "The JSON value could not be converted to MediaBrowser.Model.Users.UserPolicy."));
            };
            let policy = match policy_from_post(&body) {
                Ok(p) => p,
                Err(errors) => return problem(400, errors),
            };
            let Some(idx) = st.users.iter().position(|u| u.id == id) else {
                return Reply::Json(
                    404,
                    json!({"type": "https://tools.ietf.org/html/rfc9110#section-15.5.5", "title": "Not Found", "status": 404, "traceId": format!("00-{}-0000000000000000-00", random_hex32())}),
                );
            };
            let flag =
                |p: &Map<String, Value>, k: &str| p.get(k).and_then(Value::as_bool) == Some(true);
            let was_admin = flag(&st.users[idx].policy, "IsAdministrator");
            let admins = st
                .users
                .iter()
                .filter(|u| flag(&u.policy, "IsAdministrator"))
                .count();
            if was_admin && !flag(&policy, "IsAdministrator") && admins == 1 {
                return Reply::Json(
                    403,
                    json!(
                        "There must be at least one user in the system with administrative access."
                    ),
                );
            }
            if flag(&policy, "IsAdministrator") && flag(&policy, "IsDisabled") {
                return Reply::Json(403, json!("Administrators cannot be disabled."));
            }
            let enabled = st
                .users
                .iter()
                .filter(|u| !flag(&u.policy, "IsDisabled"))
                .count();
            if flag(&policy, "IsDisabled")
                && !flag(&st.users[idx].policy, "IsDisabled")
                && enabled == 1
            {
                return Reply::Json(403, json!("At least one enabled user must be present."));
            }
            st.users[idx].policy = policy;
            if flag(&st.users[idx].policy, "IsDisabled") {
                st.tokens.retain(|_, t| t.user_id != id);
            }
            Reply::Empty(204)
        }
        ("GET", ["users", _, "items", _]) => {
            let (Some(uid), Some(iid)) = (parse_guid(segs[1]), parse_guid(segs[3])) else {
                return problem(400, single_error("itemId", "The value is not valid."));
            };
            if !st.users.iter().any(|u| u.id == uid) {
                return Reply::Json(404, json!("User not found"));
            }
            match st.world.items.iter().find(|i| i.id == iid) {
                Some(item) => Reply::Json(200, item_dto(&st.world, item, true)),
                None => error_text(404),
            }
        }
        ("GET", ["items", _]) => {
            let Some(iid) = parse_guid(segs[1]) else {
                return problem(400, single_error("itemId", "The value is not valid."));
            };
            match st.world.items.iter().find(|i| i.id == iid) {
                Some(item) => Reply::Json(200, item_dto(&st.world, item, true)),
                None => error_text(404),
            }
        }
        ("POST", ["items", _, "playbackinfo"]) => playback_info(st, r, auth, segs[1]),
        ("GET" | "HEAD", ["videos", _, "stream"])
        | ("GET" | "HEAD", ["videos", _, "stream.ts"])
        | ("GET" | "HEAD", ["videos", _, "master.m3u8"]) => open_stream(st, r, segs[1]),
        _ => error_text(404),
    }
}

/// `[FromBody]` parameters accept only JSON media types: anything else is 415 ProblemDetails.
fn require_json(r: &Req) -> Option<Reply> {
    let ct = r.header("Content-Type").unwrap_or("").to_ascii_lowercase();
    let media = ct.split(';').next().unwrap_or("").trim();
    if media == "application/json" || media == "text/json" || media.ends_with("+json") {
        return None;
    }
    Some(Reply::Json(
        415,
        json!({
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.16",
            "title": "Unsupported Media Type",
            "status": 415,
            "traceId": format!("00-{}-0000000000000000-00", random_hex32()),
        }),
    ))
}

fn single_error(field: &str, msg: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(field.into(), json!([msg]));
    m
}

fn public_info(st: &State, r: &Req) -> Value {
    json!({
        "LocalAddress": local_address(r),
        "ServerName": st.world.server_name,
        "Version": st.world.version,
        "ProductName": "Jellyfin Server",
        "OperatingSystem": "",
        "Id": st.world.server_id,
        "StartupWizardCompleted": true,
    })
}

fn user_dto(world: &World, u: &UserState) -> Value {
    let mut policy = u.policy.clone();
    // GetUserDto never fills EnableLyricManagement (10.9–12.0), so GET always shows false.
    policy.insert("EnableLyricManagement".into(), json!(false));
    json!({
        "Name": u.name,
        "ServerId": world.server_id,
        "Id": u.id,
        "HasPassword": false,
        "HasConfiguredPassword": false,
        "HasConfiguredEasyPassword": false,
        "EnableAutoLogin": false,
        "LastActivityDate": u.last_activity.map(format_date),
        "LastLoginDate": u.last_activity.map(format_date),
        "Configuration": {
            "PlayDefaultAudioTrack": true,
            "SubtitleLanguagePreference": "",
            "DisplayMissingEpisodes": false,
            "GroupedFolders": [],
            "SubtitleMode": "Default",
            "DisplayCollectionsView": false,
            "EnableLocalPassword": false,
            "OrderedViews": [],
            "LatestItemsExcludes": [],
            "MyMediaExcludes": [],
            "HidePlayedInLatest": true,
            "RememberAudioSelections": true,
            "RememberSubtitleSelections": true,
            "EnableNextEpisodeAutoPlay": true,
            "CastReceiverId": "F007D354"
        },
        "Policy": Value::Object(policy),
    })
}

fn media_streams(item: &WorldItem) -> Value {
    let video = item.bitrate.saturating_sub(item.audio_bitrate);
    json!([
        {"Codec": "h264", "TimeBase": "1/1000", "VideoRange": "SDR", "VideoRangeType": "SDR",
         "DisplayTitle": "1080p H264 SDR", "IsInterlaced": false, "BitRate": video, "BitDepth": 8,
         "IsDefault": true, "IsForced": false, "IsHearingImpaired": false, "Height": 1080,
         "Width": 1920, "AverageFrameRate": 23.976025, "RealFrameRate": 23.976025,
         "Profile": "High", "Type": "Video", "AspectRatio": "16:9", "Index": 0,
         "IsExternal": false, "IsTextSubtitleStream": false, "SupportsExternalStream": false,
         "PixelFormat": "yuv420p", "Level": 41},
        {"Codec": "eac3", "Language": "eng", "TimeBase": "1/1000",
         "DisplayTitle": "English - Dolby Digital+ - 5.1 - Default", "IsInterlaced": false,
         "ChannelLayout": "5.1", "BitRate": item.audio_bitrate, "Channels": 6,
         "SampleRate": 48000, "IsDefault": true, "IsForced": false, "IsHearingImpaired": false,
         "Type": "Audio", "Index": 1, "IsExternal": false, "IsTextSubtitleStream": false,
         "SupportsExternalStream": false, "Level": 0}
    ])
}

fn media_source(item: &WorldItem) -> Value {
    json!({
        "Protocol": "File",
        "Id": item.id,
        "Path": format!("/media/{}.{}", item.name.replace('/', "_"), item.container),
        "Type": "Default",
        "Container": item.container,
        "Name": item.name,
        "IsRemote": false,
        "RunTimeTicks": item.runtime_ticks,
        "SupportsTranscoding": true,
        "SupportsDirectStream": true,
        "SupportsDirectPlay": true,
        "IsInfiniteStream": false,
        "RequiresOpening": false,
        "RequiresClosing": false,
        "RequiresLooping": false,
        "SupportsProbing": true,
        "MediaStreams": media_streams(item),
        "Bitrate": item.bitrate,
        "DefaultAudioStreamIndex": 1,
    })
}

fn item_dto(world: &World, item: &WorldItem, with_sources: bool) -> Value {
    let mut v = json!({
        "Name": item.name,
        "ServerId": world.server_id,
        "Id": item.id,
        "Container": item.container,
        "RunTimeTicks": item.runtime_ticks,
        "IsFolder": false,
        "Type": item.item_type,
        "SeriesName": item.series_name,
        "MediaType": "Video",
        "VideoType": "VideoFile",
        "LocationType": "FileSystem",
        "Width": 1920,
        "Height": 1080,
        "MediaStreams": media_streams(item),
        "ImageTags": {},
        "BackdropImageTags": [],
    });
    if with_sources {
        v["MediaSources"] = json!([media_source(item)]);
    }
    v
}

fn find_session_mut<'a>(st: &'a mut State, id: &str) -> Option<&'a mut Session> {
    st.sessions.iter_mut().find(|s| s.id == id)
}

fn caller_user_id(st: &State, sid: &str) -> String {
    st.sessions
        .iter()
        .find(|s| s.id == sid)
        .and_then(|s| s.user_id.clone())
        .unwrap_or_else(|| "0".repeat(32))
}

/// `SessionManager.LogSessionActivity` for the caller: creates or refreshes its session and
/// sets `RemoteEndPoint` to the TCP peer. Returns the session id ("" when there is no caller).
fn log_session_activity(st: &mut State, r: &Req, auth: &Auth) -> String {
    let p = |k: &str| auth.parts.get(k).filter(|v| !v.is_empty()).cloned();
    let (client, device, device_id, version, user_id) = match &auth.caller {
        Some(Some(Caller::ApiKey(name))) => (
            name.clone(),
            p("Device").unwrap_or_else(|| st.world.server_name.clone()),
            p("DeviceId").unwrap_or_else(|| st.world.server_id.clone()),
            p("Version").unwrap_or_else(|| st.world.version.clone()),
            None,
        ),
        Some(Some(Caller::User(uid))) => {
            let Some(t) = auth.token.as_ref().and_then(|t| st.tokens.get(t)) else {
                return String::new();
            };
            (
                p("Client").unwrap_or_else(|| t.client.clone()),
                p("Device").unwrap_or_else(|| t.device.clone()),
                p("DeviceId").unwrap_or_else(|| t.device_id.clone()),
                p("Version").unwrap_or_else(|| t.version.clone()),
                Some(uid.clone()),
            )
        }
        _ => return String::new(),
    };
    touch_session(st, r.peer, &client, &device, &device_id, &version, user_id)
}

fn touch_session(
    st: &mut State,
    peer: IpAddr,
    client: &str,
    device: &str,
    device_id: &str,
    version: &str,
    user_id: Option<String>,
) -> String {
    let id = hex_key(&format!("{client}{device_id}"));
    let now = SystemTime::now();
    let user_name = user_id
        .as_ref()
        .and_then(|uid| st.users.iter().find(|u| &u.id == uid))
        .map(|u| u.name.clone());
    if let Some(uid) = &user_id {
        if let Some(u) = st.users.iter_mut().find(|u| &u.id == uid) {
            u.last_activity = Some(now);
        }
    }
    match st.sessions.iter_mut().find(|s| s.id == id) {
        Some(s) => {
            s.remote_end_point = peer.to_string();
            s.last_activity = now;
            s.device_name = device.to_string();
            s.version = version.to_string();
            if user_id.is_some() {
                s.user_id = user_id;
                s.user_name = user_name;
            }
        }
        None => st.sessions.push(Session {
            id: id.clone(),
            client: client.to_string(),
            device_name: device.to_string(),
            device_id: device_id.to_string(),
            version: version.to_string(),
            user_id,
            user_name,
            remote_end_point: peer.to_string(),
            last_activity: now,
            last_playback_check_in: None,
            capabilities: None,
            polling: 0,
            last_poll: None,
            commands: VecDeque::new(),
            commands_seen: Vec::new(),
            playing: None,
            negotiation: None,
            playback_info_count: 0,
            restarts: 0,
            bytes_sent: Arc::new(AtomicU64::new(0)),
            stream_cancel: Vec::new(),
        }),
    }
    id
}

fn send_command(shared: &Shared, st: &mut State, target: &str, msg: Value, name: &str) -> Reply {
    let Some(s) = find_session_mut(st, target) else {
        return error_text(404);
    };
    // Like the real server: a session without an open controller silently drops the message.
    if s.supports_media_control() {
        s.commands.push_back(msg);
        s.commands_seen.push(name.to_string());
        if name == "Play" {
            s.restarts += 1;
        }
        shared.commands_cv.notify_all();
    }
    Reply::Empty(204)
}

fn authenticate_by_name(st: &mut State, r: &Req, auth: &Auth) -> Reply {
    let body = r.json_body().unwrap_or(Value::Null);
    let field = |k: &str| -> Option<String> {
        body.as_object()
            .and_then(|o| o.iter().find(|(kk, _)| kk.eq_ignore_ascii_case(k)))
            .and_then(|(_, v)| v.as_str().map(str::to_string))
    };
    let Some(name) = field("Username") else {
        return problem(
            400,
            single_error("Username", "The Username field is required."),
        );
    };
    let pw = field("Pw").unwrap_or_default();
    let p = |k: &str| auth.parts.get(k).filter(|v| !v.is_empty()).cloned();
    let (Some(client), Some(device), Some(device_id), Some(version)) =
        (p("Client"), p("Device"), p("DeviceId"), p("Version"))
    else {
        return error_text(400);
    };
    let Some(user) = st.users.iter().find(|u| u.name.eq_ignore_ascii_case(&name)) else {
        return error_text(401);
    };
    if !pw.is_empty() || user.policy.get("IsDisabled").and_then(Value::as_bool) == Some(true) {
        return error_text(401);
    }
    let user_id = user.id.clone();
    let token = random_hex32();
    st.tokens.insert(
        token.clone(),
        TokenInfo {
            user_id: user_id.clone(),
            client: client.clone(),
            device: device.clone(),
            device_id: device_id.clone(),
            version: version.clone(),
        },
    );
    let sid = touch_session(
        st,
        r.peer,
        &client,
        &device,
        &device_id,
        &version,
        Some(user_id.clone()),
    );
    let Some(u) = st.users.iter().find(|u| u.id == user_id) else {
        return error_text(500);
    };
    let user_v = user_dto(&st.world, u);
    let session_v = st
        .sessions
        .iter()
        .find(|s| s.id == sid)
        .map(|s| session_dto(st, s))
        .unwrap_or(Value::Null);
    Reply::Json(
        200,
        json!({"User": user_v, "SessionInfo": session_v, "AccessToken": token, "ServerId": st.world.server_id}),
    )
}

fn playback_info(st: &mut State, r: &Req, auth: &Auth, item_seg: &str) -> Reply {
    let Some(item_id) = parse_guid(item_seg) else {
        return problem(400, single_error("itemId", "The value is not valid."));
    };
    let Some(item) = st.world.items.iter().find(|i| i.id == item_id).cloned() else {
        return error_text(404);
    };
    let body = r.json_body().unwrap_or(json!({}));
    let get = |k: &str| -> Option<&Value> {
        body.as_object()
            .and_then(|o| o.iter().find(|(kk, _)| kk.eq_ignore_ascii_case(k)))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    };
    let as_i64 = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let client_max = get("MaxStreamingBitrate")
        .and_then(as_i64)
        .or_else(|| r.q("maxStreamingBitrate").and_then(|v| v.parse().ok()));
    let Some(Some(caller)) = &auth.caller else {
        return Reply::Empty(401);
    };
    let user_id = match caller {
        Caller::User(id) => Some(id.clone()),
        Caller::ApiKey(_) => get("UserId")
            .and_then(Value::as_str)
            .and_then(parse_guid)
            .or_else(|| r.q("userId").and_then(parse_guid)),
    };
    let user_limit = user_id
        .as_ref()
        .and_then(|id| st.users.iter().find(|u| &u.id == id))
        .and_then(|u| u.policy.get("RemoteClientBitrateLimit"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let sid = log_session_activity(st, r, auth);
    let profile = get("DeviceProfile").cloned().or_else(|| {
        st.sessions
            .iter()
            .find(|s| s.id == sid)
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.get("DeviceProfile").cloned())
            .filter(|p| !p.is_null())
    });
    let local = is_in_local_network(r.peer, &st.world.local_network_subnets);
    // SetDeviceSpecificData (and so the limit) runs only when a device profile is known.
    let limit = if profile.is_some() {
        max_bitrate(client_max, user_limit, st.server_limit, local)
    } else {
        None
    };
    let direct_capable = profile.as_ref().is_none_or(|p| {
        p.get("DirectPlayProfiles")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    }) && get("EnableDirectPlay").and_then(Value::as_bool) != Some(false);
    let over = limit.is_some_and(|l| item.bitrate > l);
    let mut reasons = Vec::new();
    if over {
        reasons.push("ContainerBitrateExceedsLimit".to_string());
    }
    if !direct_capable {
        reasons.push("ContainerNotSupported".to_string());
    }
    let direct = reasons.is_empty();
    let play_session_id = random_hex32();
    let total = limit.map_or(item.bitrate, |l| l.min(item.bitrate)).max(2);
    let (video, audio) = transcode_split(total, item.audio_bitrate);
    let mut source = media_source(&item);
    source["SupportsDirectPlay"] = json!(direct);
    source["SupportsDirectStream"] = json!(direct);
    if !direct {
        let token = auth.token.clone().unwrap_or_default();
        let device_id = st
            .sessions
            .iter()
            .find(|s| s.id == sid)
            .map(|s| s.device_id.clone())
            .unwrap_or_default();
        source["TranscodingUrl"] = json!(format!(
            "/videos/{}/master.m3u8?DeviceId={}&MediaSourceId={}&VideoCodec=h264&AudioCodec=aac&AudioStreamIndex=1&VideoBitrate={}&AudioBitrate={}&MaxFramerate=23.976025&PlaySessionId={}&ApiKey={}&SegmentContainer=ts&TranscodeReasons={}",
            item.id, enc(&device_id), item.id, video, audio, play_session_id, enc(&token), reasons.join(",")
        ));
        source["TranscodingSubProtocol"] = json!("hls");
        source["TranscodingContainer"] = json!("ts");
    }
    let neg = Negotiation {
        play_session_id: play_session_id.clone(),
        item_id: item.id.clone(),
        session_id: sid.clone(),
        remote_ip: r.peer.to_string(),
        is_local: local,
        limit_bps: limit,
        transcode: !direct,
        video_bitrate: if direct {
            item.bitrate - item.audio_bitrate
        } else {
            video
        },
        audio_bitrate: if direct { item.audio_bitrate } else { audio },
        reasons,
    };
    st.negotiations.insert(play_session_id.clone(), neg.clone());
    if let Some(s) = find_session_mut(st, &sid) {
        s.playback_info_count += 1;
        // A new playback on this device ends the previous transcode, as the server kills the
        // device's old ffmpeg job.
        s.stop_streams();
        s.negotiation = Some(neg);
    }
    Reply::Json(
        200,
        json!({"MediaSources": [source], "PlaySessionId": play_session_id}),
    )
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn open_stream(st: &mut State, r: &Req, item_seg: &str) -> Reply {
    let Some(item_id) = parse_guid(item_seg) else {
        return error_text(404);
    };
    let Some(item) = st.world.items.iter().find(|i| i.id == item_id).cloned() else {
        return error_text(404);
    };
    let neg = r
        .q("PlaySessionId")
        .and_then(|p| st.negotiations.get(p))
        .cloned();
    let is_static = r
        .q("Static")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    // The streaming endpoints never read a limit: only the URL's own parameters count.
    let rate = if is_static {
        item.bitrate
    } else {
        let v = r.q("VideoBitrate").and_then(|v| v.parse::<i64>().ok());
        let a = r.q("AudioBitrate").and_then(|v| v.parse::<i64>().ok());
        match (v, a) {
            (Some(v), Some(a)) => v.saturating_add(a).min(item.bitrate),
            (Some(v), None) => v.min(item.bitrate),
            _ => item.bitrate,
        }
    }
    .max(8) as u64;
    let start_ticks = r
        .q("StartTimeTicks")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0)
        .clamp(0, item.runtime_ticks);
    let remaining_ms = u64::try_from((item.runtime_ticks - start_ticks) / 10_000).unwrap_or(0);
    let total_bytes = (rate / 8).saturating_mul(remaining_ms) / 1000;
    let seg_ms = st.world.segment_ms;
    let cancel = Arc::new(AtomicBool::new(false));
    let mut counter = Arc::new(AtomicU64::new(0));
    if let Some(n) = &neg {
        if let Some(s) = find_session_mut(st, &n.session_id) {
            s.stream_cancel.push(Arc::clone(&cancel));
            counter = Arc::clone(&s.bytes_sent);
        }
    }
    if r.method == "HEAD" {
        return Reply::Raw(200, "video/mp2t", vec![], vec![]);
    }
    Reply::Stream(StreamPlan {
        rate_bps: rate,
        total_bytes,
        segment_bytes: ((rate / 8).saturating_mul(seg_ms) / 1000).max(1),
        segment: Duration::from_millis(seg_ms),
        prefill: st.world.prefill_segments,
        cancel,
        counter,
    })
}

enum Report {
    Start,
    Progress,
    Stopped,
}

fn playback_report(st: &mut State, r: &Req, auth: &Auth, kind: Report) -> Reply {
    let sid = log_session_activity(st, r, auth);
    let body = r.json_body().unwrap_or(json!({}));
    let get = |k: &str| -> Option<&Value> {
        body.as_object()
            .and_then(|o| o.iter().find(|(kk, _)| kk.eq_ignore_ascii_case(k)))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    };
    let as_i64 = |v: &Value| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    };
    let item_id = get("ItemId").and_then(Value::as_str).and_then(parse_guid);
    let position = get("PositionTicks").and_then(as_i64);
    let paused = get("IsPaused").and_then(Value::as_bool);
    let method = get("PlayMethod")
        .and_then(Value::as_str)
        .map(str::to_string);
    let psid = get("PlaySessionId")
        .and_then(Value::as_str)
        .map(str::to_string);
    let msid = get("MediaSourceId")
        .and_then(Value::as_str)
        .map(str::to_string);
    let audio = get("AudioStreamIndex").and_then(as_i64);
    let sub = get("SubtitleStreamIndex").and_then(as_i64);
    let Some(s) = find_session_mut(st, &sid) else {
        return Reply::Empty(204);
    };
    s.last_playback_check_in = Some(SystemTime::now());
    match kind {
        Report::Start | Report::Progress => {
            let Some(item_id) = item_id.or_else(|| s.playing.as_ref().map(|p| p.item_id.clone()))
            else {
                return Reply::Empty(204);
            };
            let prev = s.playing.clone();
            let mut p = prev.unwrap_or(Playing {
                item_id: item_id.clone(),
                media_source_id: item_id.clone(),
                play_method: "DirectPlay".into(),
                play_session_id: None,
                position_ticks: 0,
                position_at: Instant::now(),
                paused: false,
                paused_since: None,
                audio_stream_index: None,
                subtitle_stream_index: None,
            });
            if matches!(kind, Report::Start) || p.item_id != item_id {
                p.item_id = item_id.clone();
                p.media_source_id = msid.clone().unwrap_or_else(|| item_id.clone());
                p.position_ticks = 0;
                p.position_at = Instant::now();
                p.paused = false;
                p.paused_since = None;
            }
            p.position_ticks = position.unwrap_or_else(|| p.position_now());
            p.position_at = Instant::now();
            if let Some(m) = method {
                p.play_method = m;
            }
            if let Some(ps) = psid {
                p.play_session_id = Some(ps);
            }
            if let Some(m) = msid {
                p.media_source_id = m;
            }
            if audio.is_some() {
                p.audio_stream_index = audio;
            }
            if sub.is_some() {
                p.subtitle_stream_index = sub;
            }
            if let Some(pz) = paused {
                if pz && !p.paused {
                    p.paused_since = Some(SystemTime::now());
                }
                if !pz {
                    p.paused_since = None;
                }
                p.paused = pz;
            }
            s.playing = Some(p);
        }
        Report::Stopped => {
            s.playing = None;
            s.stop_streams();
        }
    }
    Reply::Empty(204)
}

fn session_dto(st: &State, s: &Session) -> Value {
    let item = s
        .playing
        .as_ref()
        .and_then(|p| st.world.items.iter().find(|i| i.id == p.item_id));
    let play_state = match &s.playing {
        Some(p) => json!({
            "PositionTicks": p.position_now(),
            "CanSeek": true,
            "IsPaused": p.paused,
            "IsMuted": false,
            "VolumeLevel": 100,
            "AudioStreamIndex": p.audio_stream_index,
            "SubtitleStreamIndex": p.subtitle_stream_index,
            "MediaSourceId": p.media_source_id,
            "PlayMethod": p.play_method,
            "RepeatMode": "RepeatNone",
            "PlaybackOrder": "Default",
        }),
        None => json!({"CanSeek": false, "IsPaused": false, "IsMuted": false,
                       "RepeatMode": "RepeatNone", "PlaybackOrder": "Default"}),
    };
    let transcoding = match (&s.playing, &s.negotiation) {
        (Some(p), Some(n)) if p.play_method == "Transcode" && n.transcode => Some(json!({
            "AudioCodec": "aac", "VideoCodec": "h264", "Container": "ts",
            "IsVideoDirect": false, "IsAudioDirect": false,
            "Bitrate": n.video_bitrate.saturating_add(n.audio_bitrate),
            "Framerate": 48.0, "CompletionPercentage": null,
            "Width": 1920, "Height": 1080, "AudioChannels": 2,
            "HardwareAccelerationType": "none",
            "TranscodeReasons": n.reasons,
        })),
        _ => None,
    };
    let caps = s.capabilities.clone().unwrap_or(json!({}));
    let supported = caps.get("SupportedCommands").cloned().unwrap_or(json!([]));
    let playable = caps.get("PlayableMediaTypes").cloned().unwrap_or(json!([]));
    let smc = s.supports_media_control();
    json!({
        "PlayState": play_state,
        "AdditionalUsers": [],
        "Capabilities": {
            "PlayableMediaTypes": playable,
            "SupportedCommands": supported,
            "SupportsMediaControl": caps.get("SupportsMediaControl").and_then(Value::as_bool).unwrap_or(false),
            "SupportsPersistentIdentifier": caps.get("SupportsPersistentIdentifier").and_then(Value::as_bool).unwrap_or(true),
        },
        "RemoteEndPoint": s.remote_end_point,
        "PlayableMediaTypes": playable,
        "Id": s.id,
        "UserId": s.user_id.clone().unwrap_or_else(|| "0".repeat(32)),
        "UserName": s.user_name,
        "Client": s.client,
        "LastActivityDate": format_date(s.last_activity),
        "LastPlaybackCheckIn": format_date(s.last_playback_check_in.unwrap_or(UNIX_EPOCH)),
        "LastPausedDate": s.playing.as_ref().and_then(|p| p.paused_since).map(format_date),
        "DeviceName": s.device_name,
        "NowPlayingItem": item.map(|i| item_dto(&st.world, i, false)),
        "DeviceId": s.device_id,
        "ApplicationVersion": s.version,
        "TranscodingInfo": transcoding,
        "IsActive": true,
        "SupportsMediaControl": smc,
        "SupportsRemoteControl": smc,
        "NowPlayingQueue": [],
        "NowPlayingQueueFullItems": [],
        "HasCustomDeviceName": false,
        "PlaylistItemId": s.playing.as_ref().map(|_| "playlistItem0"),
        "ServerId": st.world.server_id,
        "SupportedCommands": supported,
    })
}

fn get_sessions(st: &State, r: &Req, caller: &Caller, is_admin: bool) -> Reply {
    let controllable = match r.q("controllableByUserId") {
        Some(v) if !v.is_empty() => match parse_guid(v) {
            Some(g) => Some(g),
            None => {
                return problem(
                    400,
                    single_error("controllableByUserId", "The value is not valid."),
                )
            }
        },
        _ => None,
    };
    let device = r.q("deviceId").filter(|v| !v.is_empty());
    let active = match r.q("activeWithinSeconds") {
        Some(v) if !v.is_empty() => match v.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return problem(
                    400,
                    single_error("activeWithinSeconds", "The value is not valid."),
                )
            }
        },
        _ => None,
    };
    let caller_uid = match caller {
        Caller::User(id) => Some(id.as_str()),
        Caller::ApiKey(_) => None,
    };
    let now = SystemTime::now();
    let list: Vec<Value> = st
        .sessions
        .iter()
        .filter(|s| is_admin || s.user_id.is_none() || s.user_id.as_deref() == caller_uid)
        .filter(|s| controllable.is_none() || s.supports_media_control())
        .filter(|s| device.is_none_or(|d| d.eq_ignore_ascii_case(&s.device_id)))
        .filter(|s| {
            active.is_none_or(|a| {
                a <= 0
                    || now
                        .duration_since(s.last_activity)
                        .map(|d| d.as_secs() as i64 <= a)
                        .unwrap_or(true)
            })
        })
        .map(|s| session_dto(st, s))
        .collect();
    Reply::Json(200, Value::Array(list))
}

// ---------------------------------------------------------------------------------------------
// Emulator-only control endpoints
// ---------------------------------------------------------------------------------------------

fn emu_control(shared: &Shared, r: &Req) -> Reply {
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/_emu/state") => {
            let st = shared.lock();
            Reply::Json(200, state_dump(&st))
        }
        ("POST", "/_emu/fault") => match serde_json::from_slice::<Fault>(&r.body) {
            Ok(f)
                if [
                    "none",
                    "status500",
                    "garbage",
                    "slow",
                    "late",
                    "starting",
                    "huge",
                ]
                .contains(&f.mode.as_str())
                    && ["api", "all", "writes"].contains(&f.scope.as_str()) =>
            {
                shared.lock().fault = f;
                Reply::Empty(204)
            }
            Ok(f) => Reply::Text(
                400,
                format!("unknown fault mode {:?} or scope {:?}", f.mode, f.scope),
            ),
            Err(e) => Reply::Text(400, format!("bad fault: {e}")),
        },
        ("POST", "/_emu/server") => {
            let v: Value = match serde_json::from_slice(&r.body) {
                Ok(v) => v,
                Err(e) => return Reply::Text(400, format!("bad body: {e}")),
            };
            match v.get("remote_client_bitrate_limit").and_then(Value::as_i64) {
                Some(n) => {
                    shared.lock().server_limit = n;
                    Reply::Empty(204)
                }
                None => Reply::Text(400, "need {\"remote_client_bitrate_limit\": N}".into()),
            }
        }
        ("GET", "/_emu/commands") => {
            let Some(sid) = r.q("session").map(str::to_string) else {
                return Reply::Text(400, "need ?session=ID".into());
            };
            let wait = Duration::from_millis(
                r.q("wait_ms")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0u64)
                    .min(60_000),
            );
            poll_commands(shared, &sid, wait)
        }
        _ => Reply::Text(404, "unknown emulator endpoint".into()),
    }
}

fn poll_commands(shared: &Shared, sid: &str, wait: Duration) -> Reply {
    let deadline = Instant::now() + wait;
    let mut st = shared.lock();
    match find_session_mut(&mut st, sid) {
        Some(s) => {
            s.polling += 1;
            s.last_poll = Some(Instant::now());
        }
        None => return Reply::Text(404, "unknown session".into()),
    }
    let out = loop {
        let pending = find_session_mut(&mut st, sid)
            .map(|s| s.commands.drain(..).collect::<Vec<_>>())
            .unwrap_or_default();
        let now = Instant::now();
        if !pending.is_empty() || now >= deadline || shared.shutdown.load(Ordering::SeqCst) {
            break pending;
        }
        st = match shared.commands_cv.wait_timeout(st, deadline - now) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        };
    };
    if let Some(s) = find_session_mut(&mut st, sid) {
        s.polling = s.polling.saturating_sub(1);
        s.last_poll = Some(Instant::now());
    }
    Reply::Json(200, Value::Array(out))
}

fn state_dump(st: &State) -> Value {
    let sessions: Vec<Value> = st
        .sessions
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "client": s.client,
                "device_id": s.device_id,
                "user_name": s.user_name,
                "remote_end_point": s.remote_end_point,
                "supports_remote_control": s.supports_media_control(),
                "now_playing_item_id": s.playing.as_ref().map(|p| p.item_id.clone()),
                "play_method": s.playing.as_ref().map(|p| p.play_method.clone()),
                "position_ticks": s.playing.as_ref().map(Playing::position_now),
                "paused": s.playing.as_ref().map(|p| p.paused),
                "negotiated": s.negotiation,
                "negotiated_limit_bps": s.negotiation.as_ref().and_then(|n| n.limit_bps),
                "stream_bps": s.negotiation.as_ref().map(|n| n.video_bitrate + n.audio_bitrate),
                "playback_info_count": s.playback_info_count,
                "restarts": s.restarts,
                "commands": s.commands_seen,
                "bytes_sent": s.bytes_sent.load(Ordering::Relaxed),
            })
        })
        .collect();
    let users: Vec<Value> = st
        .users
        .iter()
        .map(|u| json!({"id": u.id, "name": u.name, "policy": u.policy}))
        .collect();
    json!({
        "server_limit_bps": st.server_limit,
        "fault": st.fault,
        "sessions": sessions,
        "users": users,
        "requests": st.log.iter().collect::<Vec<_>>(),
    })
}
