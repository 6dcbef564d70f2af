//! Publishing what the daemon sees: the status file (atomically replaced), the human table of
//! `jellydemon status`, the Prometheus textfile and the event webhook.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::Path;
// 32-bit atomics: mips and mipsel (most routers) have no 64-bit ones.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::config::Secret;
use crate::status::{Status, StreamStatus};
use crate::tlsclient::{self, TlsClient};

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Replaces `path` with `data` so that readers see the old or the new file, never a part:
/// a temporary file in the same directory, fsync, rename, then fsync of the directory. The
/// directory is created when missing.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    fs::create_dir_all(dir)?;
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}.{n}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // The rename is durable only once the directory is on flash too; not fatal on tmpfs.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn mbit(bps: u64, decimals: usize) -> String {
    format!("{:.*}", decimals, bps as f64 / 1e6)
}

/// `2026-11-22 01:50:03 UTC` from unix seconds, without a date library.
pub fn format_utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
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
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn method_word(m: &str) -> String {
    match m {
        "" => "-".into(),
        "Transcode" => "transcode".into(),
        "DirectStream" => "directstream".into(),
        "DirectPlay" => "directplay".into(),
        other => other.to_ascii_lowercase(),
    }
}

/// Only printable characters of server-provided text reach the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Streams in display order: external first, then by address so one viewer's sessions sit
/// together.
fn ordered(st: &Status) -> Vec<&StreamStatus> {
    let mut v: Vec<&StreamStatus> = st.streams.iter().collect();
    v.sort_by(|a, b| {
        (!a.external, &a.remote_ip, &a.user).cmp(&(!b.external, &b.remote_ip, &b.user))
    });
    v
}

/// The `jellydemon status` table: readable at a glance, one line per stream.
pub fn render_table(st: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "jellydemon  updated {}, every {} s{}",
        format_utc(st.updated),
        st.interval,
        if st.dry_run {
            ", DRY RUN (nothing is changed)"
        } else {
            ""
        }
    );

    let w = &st.wan;
    let capacity = match w.capacity_bps {
        Some(c) => mbit(c, 2),
        None => "unknown".into(),
    };
    let _ = writeln!(
        out,
        "WAN           {}  capacity {capacity}  used {}  Jellyfin {}  other {}  budget {} Mbit/s",
        clean(w.device.as_deref().unwrap_or("?")),
        mbit(w.tx_bps, 2),
        mbit(w.jellyfin_bps, 2),
        mbit(w.other_bps, 2),
        mbit(st.budget_bps, 2),
    );

    let jf = &st.jellyfin;
    let jf_line = if jf.reachable {
        format!(
            "reachable, version {}",
            clean(jf.server_version.as_deref().unwrap_or("unknown"))
        )
    } else {
        format!(
            "UNREACHABLE: {}",
            clean(jf.error.as_deref().unwrap_or("no answer yet"))
        )
    };
    let _ = writeln!(out, "Jellyfin      {jf_line}");

    let sh = &st.shaping;
    let shaping = match (sh.enabled, sh.active, &sh.error) {
        (false, _, _) => "off".to_string(),
        (true, true, _) => "active".to_string(),
        (true, false, Some(e)) => format!("inactive: {}", clean(e)),
        (true, false, None) => "inactive".to_string(),
    };
    let _ = writeln!(out, "Shaping       {shaping}");
    let control = match (st.managing, &st.managing_reason) {
        (true, _) => "managing: limits and classes follow the spare upload".to_string(),
        (false, Some(r)) => format!("NOT managing: {}", clean(r)),
        (false, None) => "NOT managing".to_string(),
    };
    let _ = writeln!(out, "Control       {control}");

    let streams = ordered(st);
    let external: Vec<_> = streams.iter().filter(|s| s.external).collect();
    let viewers: HashSet<&str> = external.iter().map(|s| s.remote_ip.as_str()).collect();
    let local = streams.len() - external.len();
    let _ = writeln!(
        out,
        "Streams       {} external ({} viewer{}), {local} local",
        external.len(),
        viewers.len(),
        if viewers.len() == 1 { "" } else { "s" }
    );

    let figure = |s: &StreamStatus| {
        let m = &s.measured_bps;
        format!(
            "[{}, {}, {} Mbps]",
            mbit(m.m1, 2),
            mbit(m.m5, 2),
            mbit(m.m10, 2)
        )
    };
    let rows: Vec<[String; 6]> = {
        let mut seen: HashSet<(bool, &str)> = HashSet::new();
        streams
            .iter()
            .map(|s| {
                let fig = if !s.external {
                    // LAN streams are bridged past the router: nothing here measures them.
                    "[on the LAN]".to_string()
                } else if seen.insert((s.external, s.remote_ip.as_str())) {
                    figure(s)
                } else {
                    // One address, one measurement: shown on its first session only.
                    "[same address]".to_string()
                };
                let mut limit = if !s.external {
                    "local".to_string()
                } else if s.limit_bps == 0 {
                    "no limit".to_string()
                } else {
                    format!("limit {}", mbit(s.limit_bps, 1))
                };
                if s.shaped_bps > 0 {
                    let _ = write!(limit, "  shaped {}", mbit(s.shaped_bps, 1));
                }
                let mut title = clean(&s.title);
                if s.paused {
                    title = format!("(paused) {title}");
                }
                [
                    clean(&s.remote_ip),
                    method_word(&s.play_method),
                    clean(if s.user.is_empty() { "-" } else { &s.user }),
                    fig,
                    limit,
                    title,
                ]
            })
            .collect()
    };
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let mut line = String::from(" ");
        for (cell, w) in r.iter().zip(&widths) {
            let _ = write!(line, " {cell:<w$} ");
        }
        line.push(' ');
        line.push_str(&r[5]);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if !external.is_empty() {
        let mut seen = HashSet::new();
        let (mut a, mut b, mut c) = (0u64, 0u64, 0u64);
        for s in &external {
            if seen.insert(s.remote_ip.as_str()) {
                a = a.saturating_add(s.measured_bps.m1);
                b = b.saturating_add(s.measured_bps.m5);
                c = c.saturating_add(s.measured_bps.m10);
            }
        }
        let _ = writeln!(
            out,
            "  external total [{}, {}, {} Mbps]",
            mbit(a, 2),
            mbit(b, 2),
            mbit(c, 2)
        );
    }

    let restarts: u64 = st.streams.iter().map(|s| u64::from(s.restarts)).sum();
    let _ = writeln!(out, "Restarts      {restarts} (current streams)");

    let wol = &st.wol;
    let wake = if !wol.enabled {
        match wol.server_awake {
            Some(false) => "off, server asleep".to_string(),
            _ => "off".to_string(),
        }
    } else {
        let last = match wol.last_wake {
            Some(t) => format!(
                "last wake {}{}",
                format_utc(t),
                wol.last_reason
                    .as_deref()
                    .map(|r| format!(" ({})", clean(r)))
                    .unwrap_or_default()
            ),
            None => "no wake yet".into(),
        };
        let awake = match wol.server_awake {
            Some(true) => ", server awake".to_string(),
            Some(false) => match wol.asleep_since {
                Some(t) => format!(", server asleep since {}", format_utc(t)),
                None => ", server asleep".to_string(),
            },
            None => String::new(),
        };
        format!("{last}, {} wakes{awake}", wol.wakes)
    };
    // The story of a wake is told only where Wake-on-LAN is on.
    let story = wol.server_state.as_deref().filter(|_| wol.enabled);
    let wake = match (story, wol.last_wake, wol.awake_after_s) {
        // The story of a wake from sleep, in the order it happens.
        (Some("asleep"), _, _) => format!("{wake}; asleep, not woken yet"),
        (Some("waking"), Some(t), _) => format!(
            "{wake}; asleep, woken at {}{}; waiting for Jellyfin",
            format_utc(t),
            wol.last_reason
                .as_deref()
                .map(|r| format!(" ({})", clean(r)))
                .unwrap_or_default()
        ),
        (Some("booting"), _, _) => {
            format!("{wake}; the host answers, Jellyfin not yet")
        }
        (Some("awake"), _, Some(a)) => {
            format!("{wake}; last wake from sleep: awake after {a:.1} s")
        }
        _ => wake,
    };
    let _ = writeln!(out, "Wake-on-LAN   {wake}");

    if st.errors.is_empty() {
        let _ = writeln!(out, "Errors        none");
    } else {
        let _ = writeln!(out, "Errors");
        for e in &st.errors {
            let _ = writeln!(out, "  - {}", clean(e));
        }
    }
    out
}

/// Escapes a label value for the Prometheus text format: backslash, quote, newline.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Prom {
    out: String,
}

impl Prom {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }
}

/// The status in the Prometheus text exposition format (for node_exporter's textfile
/// collector). Per-stream series carry the labels session, user, client, remote_ip, external
/// and play_method.
pub fn render_prometheus(st: &Status) -> String {
    let mut p = Prom { out: String::new() };
    p.gauge(
        "jellydemon_status_updated_timestamp_seconds",
        "Unix time of the daemon tick that wrote these figures.",
        st.updated,
    );
    p.gauge(
        "jellydemon_dry_run",
        "1 when the daemon only decides and logs, changing nothing.",
        u64::from(st.dry_run),
    );
    p.gauge(
        "jellydemon_jellyfin_up",
        "1 when the Jellyfin server answered the last tick.",
        u64::from(st.jellyfin.reachable),
    );
    if let Some(v) = &st.jellyfin.server_version {
        p.family(
            "jellydemon_jellyfin_info",
            "gauge",
            "The Jellyfin server version, as a label.",
        );
        p.sample("jellydemon_jellyfin_info", &[("version", v)], 1);
    }
    if let Some(c) = st.wan.capacity_bps {
        p.gauge(
            "jellydemon_wan_capacity_bits",
            "Configured uplink capacity in bits per second.",
            c,
        );
    }
    p.gauge(
        "jellydemon_wan_tx_bits_per_second",
        "Measured WAN upload, all traffic.",
        st.wan.tx_bps,
    );
    p.gauge(
        "jellydemon_wan_jellyfin_bits_per_second",
        "Measured WAN upload of Jellyfin streams.",
        st.wan.jellyfin_bps,
    );
    p.gauge(
        "jellydemon_wan_other_bits_per_second",
        "Measured WAN upload of everything but Jellyfin.",
        st.wan.other_bps,
    );
    p.gauge(
        "jellydemon_budget_bits_per_second",
        "Upload shared among external streams this tick.",
        st.budget_bps,
    );
    p.gauge(
        "jellydemon_managing",
        "1 when the daemon divides a known uplink and enforces it; 0 while remote streams pass unlimited.",
        u64::from(st.managing),
    );
    p.gauge(
        "jellydemon_shaping_active",
        "1 when router-side shaping is in force.",
        u64::from(st.shaping.active),
    );
    p.gauge(
        "jellydemon_errors",
        "Number of problems that need attention now.",
        st.errors.len() as u64,
    );

    p.family(
        "jellydemon_streams",
        "gauge",
        "Playing sessions, by whether they come from outside.",
    );
    let ext = st.streams.iter().filter(|s| s.external).count() as u64;
    p.sample("jellydemon_streams", &[("external", "true")], ext);
    p.sample(
        "jellydemon_streams",
        &[("external", "false")],
        st.streams.len() as u64 - ext,
    );

    // A session id seen twice would make duplicate series, which Prometheus rejects.
    let mut seen = HashSet::new();
    let streams: Vec<&StreamStatus> = st
        .streams
        .iter()
        .filter(|s| seen.insert(s.session_id.as_str()))
        .collect();
    let labels = |s: &StreamStatus| -> Vec<(&'static str, String)> {
        vec![
            ("session", s.session_id.clone()),
            ("user", s.user.clone()),
            ("client", s.client.clone()),
            ("remote_ip", s.remote_ip.clone()),
            ("external", s.external.to_string()),
            ("play_method", s.play_method.clone()),
        ]
    };
    let per_stream = |p: &mut Prom,
                      name: &str,
                      kind: &str,
                      help: &str,
                      value: &dyn Fn(&StreamStatus) -> Option<u64>| {
        if streams.iter().all(|s| value(s).is_none()) {
            return;
        }
        p.family(name, kind, help);
        for s in &streams {
            if let Some(v) = value(s) {
                let l = labels(s);
                let refs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                p.sample(name, &refs, v);
            }
        }
    };
    per_stream(
        &mut p,
        "jellydemon_stream_limit_bits_per_second",
        "gauge",
        "The user's Jellyfin remote bitrate limit in force (0 = none).",
        &|s| Some(s.limit_bps),
    );
    per_stream(
        &mut p,
        "jellydemon_stream_shaped_bits_per_second",
        "gauge",
        "The router-side class rate for the stream's viewer (0 = not shaped).",
        &|s| Some(s.shaped_bps),
    );
    per_stream(
        &mut p,
        "jellydemon_stream_source_bits_per_second",
        "gauge",
        "Bitrate of the source media, when known.",
        &|s| s.source_bps,
    );
    per_stream(
        &mut p,
        "jellydemon_stream_paused",
        "gauge",
        "1 while the stream is paused.",
        &|s| Some(u64::from(s.paused)),
    );
    if !streams.is_empty() {
        let name = "jellydemon_stream_measured_bits_per_second";
        p.family(
            name,
            "gauge",
            "Measured rate of the stream's viewer address over a window (shared by sessions \
             from one address).",
        );
        for s in &streams {
            let l = labels(s);
            for (window, v) in [
                ("1m", s.measured_bps.m1),
                ("5m", s.measured_bps.m5),
                ("10m", s.measured_bps.m10),
            ] {
                let mut refs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                refs.push(("window", window));
                p.sample(name, &refs, v);
            }
        }
    }
    per_stream(
        &mut p,
        "jellydemon_stream_restarts_total",
        "counter",
        "Playback restarts the daemon made for this session.",
        &|s| Some(u64::from(s.restarts)),
    );

    p.family(
        "jellydemon_wol_wakes_total",
        "counter",
        "Wake-on-LAN packets sent since the daemon started.",
    );
    p.sample("jellydemon_wol_wakes_total", &[], st.wol.wakes);
    if let Some(t) = st.wol.last_wake {
        p.gauge(
            "jellydemon_wol_last_wake_timestamp_seconds",
            "Unix time of the last magic packet.",
            t,
        );
    }
    if let Some(awake) = st.wol.server_awake {
        p.gauge(
            "jellydemon_wol_server_awake",
            "1 when the media server answers.",
            u64::from(awake),
        );
    }
    if let Some(t) = st.wol.asleep_since {
        p.gauge(
            "jellydemon_wol_asleep_since_timestamp_seconds",
            "Unix time since when the media server host has not answered at all.",
            t,
        );
    }
    if let Some(a) = st.wol.awake_after_s.filter(|a| a.is_finite() && *a >= 0.0) {
        p.family(
            "jellydemon_wol_awake_after_seconds",
            "gauge",
            "Seconds from the last magic packet to Jellyfin's first answer after a sleep.",
        );
        let _ = writeln!(p.out, "jellydemon_wol_awake_after_seconds {a:.1}");
    }
    p.out
}

/// Something worth telling the webhook about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    StreamStarted {
        session_id: String,
        user: String,
        client: String,
        remote_ip: String,
        external: bool,
        play_method: String,
        title: String,
    },
    StreamStopped {
        session_id: String,
        user: String,
        remote_ip: String,
        title: String,
    },
    /// A user's Jellyfin limit changed; 0 means none.
    LimitChanged {
        user: String,
        old_bps: u64,
        new_bps: u64,
    },
    PlaybackRestarted {
        user: String,
        session_id: String,
        limit_bps: u64,
    },
    ServerWoken {
        reason: String,
    },
    JellyfinUnreachable {
        error: String,
    },
    JellyfinBack {
        version: Option<String>,
    },
}

fn limit_text(bps: u64) -> String {
    if bps == 0 {
        "none".into()
    } else {
        format!("{} Mbit/s", mbit(bps, 1))
    }
}

impl Event {
    /// The `event` field: `stream_started`, `limit_changed`, …
    pub fn name(&self) -> &'static str {
        match self {
            Event::StreamStarted { .. } => "stream_started",
            Event::StreamStopped { .. } => "stream_stopped",
            Event::LimitChanged { .. } => "limit_changed",
            Event::PlaybackRestarted { .. } => "playback_restarted",
            Event::ServerWoken { .. } => "server_woken",
            Event::JellyfinUnreachable { .. } => "jellyfin_unreachable",
            Event::JellyfinBack { .. } => "jellyfin_back",
        }
    }

    /// One human sentence (Discord's `content`).
    pub fn content(&self) -> String {
        match self {
            Event::StreamStarted {
                user,
                client,
                remote_ip,
                external,
                play_method,
                title,
                ..
            } => format!(
                "{user} started {title} ({play_method}) on {client} from {remote_ip} ({})",
                if *external { "remote" } else { "local" }
            ),
            Event::StreamStopped {
                user,
                remote_ip,
                title,
                ..
            } => format!("{user} stopped {title} ({remote_ip})"),
            Event::LimitChanged {
                user,
                old_bps,
                new_bps,
            } => format!(
                "{user}'s remote limit: {} -> {}",
                limit_text(*old_bps),
                limit_text(*new_bps)
            ),
            Event::PlaybackRestarted {
                user, limit_bps, ..
            } => format!(
                "restarted {user}'s playback at the same position to apply {}",
                limit_text(*limit_bps)
            ),
            Event::ServerWoken { reason } => format!("woke the media server ({reason})"),
            Event::JellyfinUnreachable { error } => format!("Jellyfin unreachable: {error}"),
            Event::JellyfinBack { version } => match version {
                Some(v) => format!("Jellyfin is back (version {v})"),
                None => "Jellyfin is back".into(),
            },
        }
    }

    /// The JSON payload: `content`, `event`, `time` and the event's own fields.
    pub fn payload(&self, unix_time: u64) -> Value {
        let mut m = Map::new();
        let mut content = format!("jellydemon: {}", self.content());
        if content.chars().count() > 1900 {
            // Discord refuses content over 2000 characters.
            content = content.chars().take(1900).collect::<String>() + "…";
        }
        m.insert("content".into(), Value::from(content));
        m.insert("event".into(), Value::from(self.name()));
        m.insert("time".into(), Value::from(unix_time));
        let fields = match self {
            Event::StreamStarted {
                session_id,
                user,
                client,
                remote_ip,
                external,
                play_method,
                title,
            } => json!({"session_id": session_id, "user": user, "client": client,
                "remote_ip": remote_ip, "external": external, "play_method": play_method,
                "title": title}),
            Event::StreamStopped {
                session_id,
                user,
                remote_ip,
                title,
            } => json!({"session_id": session_id, "user": user, "remote_ip": remote_ip,
                "title": title}),
            Event::LimitChanged {
                user,
                old_bps,
                new_bps,
            } => json!({"user": user, "old_bps": old_bps, "new_bps": new_bps}),
            Event::PlaybackRestarted {
                user,
                session_id,
                limit_bps,
            } => json!({"user": user, "session_id": session_id, "limit_bps": limit_bps}),
            Event::ServerWoken { reason } => json!({ "reason": reason }),
            Event::JellyfinUnreachable { error } => json!({ "error": error }),
            Event::JellyfinBack { version } => json!({ "version": version }),
        };
        if let Value::Object(f) = fields {
            m.extend(f);
        }
        Value::Object(m)
    }
}

/// A token bucket: `burst` events at once, then one more per `refill`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    burst: f64,
    tokens: f64,
    refill_secs: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, refill: Duration) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            burst,
            tokens: burst,
            refill_secs: refill.as_secs_f64().max(1e-3),
            last: None,
        }
    }

    /// Takes a token at `now` if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt / self.refill_secs).min(self.burst);
        }
        self.last = Some(self.last.map_or(now, |l| l.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counters of a [`Webhook`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Handed to the sending thread.
    pub queued: u64,
    /// Answered with a 2xx.
    pub sent: u64,
    /// Refused, unreachable or timed out.
    pub failed: u64,
    /// Dropped by the rate limit.
    pub dropped_rate: u64,
    /// Dropped because the queue was full (receiver slow or down).
    pub dropped_full: u64,
}

#[derive(Default)]
struct Shared {
    sent: AtomicU32,
    failed: AtomicU32,
}

/// Default burst of the webhook's rate limit.
pub const WEBHOOK_BURST: u32 = 5;
/// Default time to earn one more webhook event.
pub const WEBHOOK_REFILL: Duration = Duration::from_secs(12);
const WEBHOOK_QUEUE: usize = 8;

/// Sends events as JSON POSTs from one background thread; `notify` never blocks.
pub struct Webhook {
    tx: SyncSender<Vec<u8>>,
    bucket: TokenBucket,
    shared: Arc<Shared>,
    queued: u64,
    dropped_rate: u64,
    dropped_full: u64,
    secret: Option<String>,
}

impl Webhook {
    /// A webhook posting to `url`, each POST bounded by `timeout`. `http://` goes through the
    /// daemon's own client; `https://` through the router's TLS client (curl or uclient-fetch,
    /// see [`crate::tlsclient`]), refused here when there is none. Starts the sending thread.
    pub fn new(url: &str, timeout: Duration) -> io::Result<Webhook> {
        Self::with_tls_client(url, timeout, TlsClient::find())
    }

    /// [`Webhook::new`] with the TLS client given (or none).
    pub fn with_tls_client(
        url: &str,
        timeout: Duration,
        tls: Option<TlsClient>,
    ) -> io::Result<Webhook> {
        let poster = poster_for(url, timeout, tls)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (tx, rx) = sync_channel::<Vec<u8>>(WEBHOOK_QUEUE);
        let shared = Arc::new(Shared::default());
        let worker_shared = shared.clone();
        std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || send_loop(&poster, &rx, &worker_shared))?;
        Ok(Webhook {
            tx,
            bucket: TokenBucket::new(WEBHOOK_BURST, WEBHOOK_REFILL),
            shared,
            queued: 0,
            dropped_rate: 0,
            dropped_full: 0,
            secret: None,
        })
    }

    /// Replaces the rate limit (burst, time per extra event).
    pub fn with_rate_limit(mut self, burst: u32, refill: Duration) -> Webhook {
        self.bucket = TokenBucket::new(burst, refill);
        self
    }

    /// Removes `secret` from every payload, whatever an event's text carries.
    pub fn with_secret(mut self, secret: &Secret) -> Webhook {
        if secret.expose().len() >= 4 {
            self.secret = Some(secret.expose().to_string());
        }
        self
    }

    /// Queues `event` unless the rate limit or a full queue says no (then it is counted and
    /// dropped). Returns whether it was queued. Never blocks.
    pub fn notify(&mut self, event: Event) -> bool {
        if !self.bucket.try_take(Instant::now()) {
            self.dropped_rate += 1;
            log::debug!("webhook: rate limit, dropped {}", event.name());
            return false;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut text = event.payload(now).to_string();
        if let Some(s) = &self.secret {
            if text.contains(s.as_str()) {
                text = text.replace(s.as_str(), "<secret>");
            }
        }
        match self.tx.try_send(text.into_bytes()) {
            Ok(()) => {
                self.queued += 1;
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped_full += 1;
                log::debug!("webhook: queue full, dropped {}", event.name());
                false
            }
        }
    }

    /// What happened to the events so far.
    pub fn stats(&self) -> WebhookStats {
        WebhookStats {
            queued: self.queued,
            sent: u64::from(self.shared.sent.load(Ordering::Relaxed)),
            failed: u64::from(self.shared.failed.load(Ordering::Relaxed)),
            dropped_rate: self.dropped_rate,
            dropped_full: self.dropped_full,
        }
    }
}

/// Largest answer body read from the receiver (it is not used; 2xx is all that counts).
const WEBHOOK_ANSWER_LIMIT: u64 = 64 * 1024;

/// How one event reaches the receiver.
enum Poster {
    Http(crate::http::Endpoint),
    Tls {
        client: TlsClient,
        url: String,
        timeout: Duration,
    },
}

/// The URL's path is the receiver's secret: no message here repeats the URL.
fn poster_for(url: &str, timeout: Duration, tls: Option<TlsClient>) -> Result<Poster, String> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("https://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() || host.contains('@') || !url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "publish.webhook_url: missing host, or spaces or control characters".into(),
            );
        }
        let client = tls.ok_or(
            "publish.webhook_url: https needs the router's TLS client, and neither curl nor \
             uclient-fetch was found (install uclient-fetch with a libustream TLS library and \
             ca-bundle, or curl)",
        )?;
        return Ok(Poster::Tls {
            client,
            url: url.to_string(),
            timeout,
        });
    }
    if !lower.starts_with("http://") {
        return Err("publish.webhook_url must be an http:// or https:// URL".into());
    }
    let target = crate::http::Url::parse(url).map_err(|e| format!("publish.webhook_url: {e}"))?;
    Ok(Poster::Http(crate::http::Endpoint::new(target, timeout)))
}

impl Poster {
    /// The receiver's status, or why there is none.
    fn post(&self, body: &[u8]) -> Result<u16, String> {
        match self {
            Poster::Http(ep) => ep
                .request(
                    "POST",
                    "",
                    &[("Content-Type", "application/json")],
                    Some(body),
                    WEBHOOK_ANSWER_LIMIT,
                )
                .map(|r| r.status)
                .map_err(|e| e.to_string()),
            Poster::Tls {
                client,
                url,
                timeout,
            } => match client.post(url, body, *timeout) {
                tlsclient::Outcome::Status(s) => Ok(s),
                tlsclient::Outcome::Failed(why) => Err(format!("{why} ({})", client.name())),
            },
        }
    }
}

fn send_loop(poster: &Poster, rx: &Receiver<Vec<u8>>, shared: &Shared) {
    let mut was_ok = true;
    // Ends when the Webhook (the sender) is dropped.
    while let Ok(body) = rx.recv() {
        let res = poster.post(&body);
        let ok = matches!(res, Ok(s) if (200..300).contains(&s));
        if ok {
            shared.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        // Log on a change of state only, so a dead receiver does not flood the log.
        if ok != was_ok {
            match res {
                Ok(_) if ok => log::info!("webhook: delivering again"),
                Ok(s) => log::warn!("webhook: receiver answered HTTP {s}"),
                Err(e) => log::warn!("webhook: not delivered: {e}"),
            }
            was_ok = ok;
        }
    }
}

#[cfg(test)]
mod tests {

    proptest::proptest! {
        /// Figures in a status file can be anything a u64 holds (and the file is read back by
        /// `status`): rendering saturates, in debug builds too, where an overflow panics.
        #[test]
        fn rendering_survives_extreme_figures(
            v in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(0u64), proptest::strategy::Just(u64::MAX),
                proptest::strategy::Just(i64::MAX as u64), proptest::strategy::Just(i32::MAX as u64),
                proptest::prelude::any::<u64>()], 12),
            restarts in proptest::prelude::any::<u32>(), interval in proptest::prelude::any::<u32>()) {
            let stream = crate::status::StreamStatus {
                external: true,
                source_bps: Some(v[0]),
                limit_bps: v[1],
                shaped_bps: v[2],
                measured_bps: crate::status::Averages { m1: v[3], m5: v[4], m10: v[5] },
                restarts,
                ..Default::default()
            };
            let st = crate::status::Status {
                updated: v[6],
                interval,
                budget_bps: v[7],
                wan: crate::status::WanStatus {
                    capacity_bps: Some(v[8]), tx_bps: v[9], jellyfin_bps: v[10], other_bps: v[11],
                    device: Some("wan".into()),
                },
                wol: crate::status::WolStatus { last_wake: Some(v[6]), wakes: v[7], ..Default::default() },
                streams: vec![stream.clone(), stream],
                ..Default::default()
            };
            let _ = render_table(&st);
            let _ = render_prometheus(&st);
            let _ = format_utc(v[6]);
            for e in [
                Event::LimitChanged { user: "u".into(), old_bps: v[0], new_bps: v[1] },
                Event::PlaybackRestarted { user: "u".into(), session_id: "s".into(), limit_bps: v[2] },
            ] {
                let _ = e.content();
                let _ = e.payload(v[6]);
            }
        }
    }
    use super::*;
    use crate::status::Averages;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_795_829_403), "2026-11-28 01:30:03 UTC");
        assert_eq!(format_utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn bucket_bursts_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(5, Duration::from_secs(12));
        for _ in 0..5 {
            assert!(b.try_take(t0));
        }
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_secs(11)));
        assert!(b.try_take(t0 + Duration::from_secs(12)));
        assert!(!b.try_take(t0 + Duration::from_secs(13)));
        // A long quiet spell refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
        // A clock read that goes backwards neither panics nor mints tokens.
        assert!(!b.try_take(t0));
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("plain ü"), "plain ü");
    }

    #[test]
    fn payload_fields() {
        let e = Event::LimitChanged {
            user: "alice".into(),
            old_bps: 0,
            new_bps: 3_500_000,
        };
        let p = e.payload(42);
        assert_eq!(p["event"], "limit_changed");
        assert_eq!(p["time"], 42);
        assert_eq!(p["new_bps"], 3_500_000);
        assert_eq!(
            p["content"],
            "jellydemon: alice's remote limit: none -> 3.5 Mbit/s"
        );
        let long = Event::JellyfinUnreachable {
            error: "x".repeat(5000),
        };
        assert!(long.payload(0)["content"].as_str().unwrap().chars().count() <= 1901);
    }

    fn stream(ip: &str, user: &str, external: bool) -> StreamStatus {
        StreamStatus {
            session_id: format!("s-{user}"),
            user: user.into(),
            remote_ip: ip.into(),
            external,
            play_method: "Transcode".into(),
            title: "movie: Name".into(),
            limit_bps: 5_000_000,
            measured_bps: Averages {
                m1: 3_310_000,
                m5: 4_110_000,
                m10: 4_340_000,
            },
            ..Default::default()
        }
    }

    #[test]
    fn table_line_shape() {
        let st = Status {
            streams: vec![stream("203.0.113.7", "alice", true)],
            ..Default::default()
        };
        let t = render_table(&st);
        let line = t.lines().find(|l| l.contains("alice")).unwrap();
        assert_eq!(
            line,
            "  203.0.113.7  transcode  alice  [3.31, 4.11, 4.34 Mbps]  limit 5.0  movie: Name"
        );
    }

    #[test]
    fn table_and_metrics_say_whether_the_daemon_manages() {
        let mut st = Status {
            managing_reason: Some("uplink capacity unknown: remote streams pass unlimited".into()),
            ..Default::default()
        };
        let t = render_table(&st);
        assert!(
            t.contains("Control       NOT managing: uplink capacity unknown"),
            "{t}"
        );
        assert!(render_prometheus(&st).contains("\njellydemon_managing 0\n"));
        st.managing = true;
        st.managing_reason = None;
        assert!(render_table(&st).contains("Control       managing"));
        assert!(render_prometheus(&st).contains("\njellydemon_managing 1\n"));
    }
}
