//! Scenarios: who watches what, when and from where, when the household uploads, for how long.
//! `homenet scenario FILE` plays one in a fresh emulated network (optionally with the real
//! daemon in the router) and summarises it; `homenet demo` plays the built-in demo scenario
//! with live output. The file format is documented in the README (The emulated home network).
#![allow(dead_code)]

use super::load::{percentile, Args, RttStats};
use super::topology::{self, HomeNet, Lines, Options};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The demo scenario, built in so `homenet demo` runs from anywhere.
pub const DEMO_SCENARIO: &str = include_str!("../scenarios/demo.json");

/// A scenario file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, printed in the summary.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Length in seconds.
    pub duration_s: u64,
    /// Modem uplink, Mbit/s.
    #[serde(default = "default_uplink")]
    pub uplink_mbps: f64,
    /// Modem buffer, ms at the uplink rate.
    #[serde(default = "default_buffer")]
    pub buffer_ms: u64,
    /// Jellyfin API key the daemon uses; default: the world's first (`api_keys[0].token`).
    #[serde(default)]
    pub api_key: String,
    /// The emulator's world file (passed through verbatim to `homenet jellyfin --world`).
    /// Absent: no media server runs (household-only scenarios).
    #[serde(default)]
    pub world: Option<serde_json::Value>,
    /// Daemon settings.
    #[serde(default)]
    pub daemon: DaemonSettings,
    /// Viewers, remote or local.
    #[serde(default)]
    pub viewers: Vec<ViewerSpec>,
    /// Household uploads.
    #[serde(default)]
    pub household: Vec<UploadSpec>,
    /// Narrative lines printed at given times in live mode.
    #[serde(default)]
    pub notes: Vec<Note>,
}

fn default_uplink() -> f64 {
    20.0
}
fn default_buffer() -> u64 {
    200
}
fn default_interval() -> u32 {
    2
}
fn default_true() -> bool {
    true
}

/// How the daemon is configured in the scenario.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    /// `main.interval`.
    #[serde(default = "default_interval")]
    pub interval: u32,
    /// `bandwidth.upload_mbps`; default: the scenario's uplink.
    #[serde(default)]
    pub upload_mbps: Option<f64>,
    /// More options, `"section.option": "value"` (e.g. `"bandwidth.reserve_mbps": "2"`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            interval: default_interval(),
            upload_mbps: None,
            options: BTreeMap::new(),
        }
    }
}

/// One viewer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ViewerSpec {
    /// Where from: a remote viewer address (198.51.100.10+i or 2001:db8:1::10+i) or `lan`
    /// (the household host, a local viewer).
    pub from: String,
    /// Jellyfin user name.
    pub user: String,
    /// Item id.
    pub item: String,
    /// Item title, for the narrative.
    #[serde(default)]
    pub title: String,
    /// Client name.
    #[serde(default = "default_client")]
    pub client: String,
    /// Device id; default `<user>-<from>`.
    #[serde(default)]
    pub device_id: String,
    /// Whether the client supports remote control (restarts).
    #[serde(default = "default_true")]
    pub remote_control: bool,
    /// `transcode` or `direct`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Start, seconds from the scenario start.
    #[serde(default)]
    pub start_s: u64,
    /// Stop; default: the end.
    #[serde(default)]
    pub stop_s: Option<u64>,
    /// The viewer pauses, at scenario seconds, for a while each.
    #[serde(default)]
    pub pauses: Vec<PauseSpec>,
    /// The viewer seeks two minutes ahead at these scenario seconds.
    #[serde(default)]
    pub seeks_s: Vec<u64>,
}

/// One pause of a viewer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PauseSpec {
    /// When, scenario seconds.
    pub at_s: u64,
    /// How long, seconds.
    pub for_s: u64,
}

fn default_client() -> String {
    "Jellyfin Web".into()
}
fn default_method() -> String {
    "transcode".into()
}

/// One household upload (lan → the sink in inet).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UploadSpec {
    /// Start, seconds.
    pub start_s: u64,
    /// Stop; default: the end.
    #[serde(default)]
    pub stop_s: Option<u64>,
    /// Paced rate, Mbit/s; absent: greedy.
    #[serde(default)]
    pub rate_mbps: Option<f64>,
}

/// A narrative line.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Note {
    /// When, seconds.
    pub at_s: u64,
    /// What to print.
    pub text: String,
}

/// Where a viewer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Remote viewer host `i`, connecting over IPv6 or not.
    Remote { index: usize, v6: bool },
    /// The household host.
    Lan,
}

/// Resolves a viewer's `from`.
pub fn place_of(from: &str) -> Result<Place, String> {
    if from == "lan" {
        return Ok(Place::Lan);
    }
    let ip: IpAddr = from
        .parse()
        .map_err(|_| format!("viewer from {from:?}: not an address or \"lan\""))?;
    (0..topology::MAX_VIEWERS)
        .find_map(|i| {
            if IpAddr::V4(topology::viewer_v4(i)) == ip {
                Some(Place::Remote {
                    index: i,
                    v6: false,
                })
            } else if IpAddr::V6(topology::viewer_v6(i)) == ip {
                Some(Place::Remote { index: i, v6: true })
            } else {
                None
            }
        })
        .ok_or_else(|| {
            format!("viewer from {from}: remote viewers are 198.51.100.10-109 or 2001:db8:1::10-6f")
        })
}

impl Scenario {
    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let sc: Scenario = serde_json::from_str(text).map_err(|e| format!("scenario: {e}"))?;
        sc.validate()?;
        Ok(sc)
    }

    /// Checks times, rates and places.
    pub fn validate(&self) -> Result<(), String> {
        if self.duration_s == 0 || self.duration_s > 3600 {
            return Err("duration_s must be 1..3600".into());
        }
        if !(self.uplink_mbps.is_finite() && self.uplink_mbps > 0.0 && self.uplink_mbps <= 10_000.0)
        {
            return Err("uplink_mbps must be in (0, 10000]".into());
        }
        if !(1..=300).contains(&self.daemon.interval) {
            return Err("daemon.interval must be 1..300".into());
        }
        for (k, v) in &self.daemon.options {
            let ok_key = k.split_once('.').is_some_and(|(s, o)| {
                [s, o].iter().all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
            });
            if !ok_key || v.contains('\n') {
                return Err(format!("daemon.options: bad entry {k:?}: {v:?}"));
            }
        }
        let window = |what: &str, start: u64, stop: Option<u64>| {
            let stop = stop.unwrap_or(self.duration_s);
            if start >= stop || stop > self.duration_s {
                Err(format!("{what}: needs start_s < stop_s <= duration_s"))
            } else {
                Ok(())
            }
        };
        for v in &self.viewers {
            place_of(&v.from)?;
            window(&format!("viewer {}", v.user), v.start_s, v.stop_s)?;
            if !matches!(v.method.as_str(), "transcode" | "direct") {
                return Err(format!("viewer {}: method is transcode or direct", v.user));
            }
            if v.user.is_empty() || v.item.is_empty() {
                return Err("viewer: user and item are required".into());
            }
            let inside = |t: u64| v.start_s < t && t < v.stop_s.unwrap_or(self.duration_s);
            for p in &v.pauses {
                if !inside(p.at_s) || p.for_s == 0 || !inside(p.at_s + p.for_s) {
                    return Err(format!(
                        "viewer {}: a pause must start and end while it watches",
                        v.user
                    ));
                }
            }
            if let Some(t) = v.seeks_s.iter().find(|t| !inside(**t)) {
                return Err(format!(
                    "viewer {}: seek at {t} s is not while it watches",
                    v.user
                ));
            }
        }
        if !self.viewers.is_empty() && self.world.is_none() {
            return Err("viewers need a world (the media server's users and items)".into());
        }
        for u in &self.household {
            window("household upload", u.start_s, u.stop_s)?;
            if let Some(r) = u.rate_mbps {
                if !(r.is_finite() && r > 0.0) {
                    return Err("household rate_mbps must be > 0".into());
                }
            }
        }
        Ok(())
    }

    /// `api_key`, or else the first API key of the world (`api_keys[0].token`).
    pub fn effective_api_key(&self) -> String {
        if !self.api_key.is_empty() {
            return self.api_key.clone();
        }
        self.world
            .as_ref()
            .and_then(|w| w.get("api_keys"))
            .and_then(|k| k.get(0))
            .and_then(|k| k.get("token"))
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// Viewer hosts needed in the internet.
    pub fn remote_hosts(&self) -> usize {
        self.viewers
            .iter()
            .filter_map(|v| match place_of(&v.from) {
                Ok(Place::Remote { index, .. }) => Some(index + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// UCI single-quoted value (`'` becomes `'\''`).
pub fn uci_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// A UCI section's options, in order.
type UciOptions = Vec<(String, String)>;

/// The daemon's configuration file for the emulated network.
pub fn daemon_config(sc: &Scenario, run_dir: &Path, state_dir: &Path) -> String {
    let upload = sc.daemon.upload_mbps.unwrap_or(sc.uplink_mbps);
    let mut sections: Vec<(&str, &str, UciOptions)> = vec![
        (
            "jellydemon",
            "main",
            vec![
                ("enabled".into(), "1".into()),
                ("interval".into(), sc.daemon.interval.to_string()),
                ("state_dir".into(), state_dir.display().to_string()),
                ("run_dir".into(), run_dir.display().to_string()),
            ],
        ),
        (
            "jellyfin",
            "jellyfin",
            vec![
                (
                    "url".into(),
                    format!("http://{}:{}", topology::JF_V4, topology::JF_PORT),
                ),
                ("api_key".into(), sc.effective_api_key()),
                // Remote IPv6 viewers reach the server's global address directly; the
                // daemon shapes and counts IPv6 only for the server's own address.
                ("server_ip6".into(), topology::JF_V6.to_string()),
            ],
        ),
        (
            "network",
            "network",
            vec![
                ("wan_device".into(), topology::WAN_DEV.into()),
                ("lan_device".into(), topology::LAN_DEV.into()),
            ],
        ),
        (
            "bandwidth",
            "bandwidth",
            vec![("upload_mbps".into(), format!("{upload}"))],
        ),
    ];
    let mut extra: Vec<(String, UciOptions)> = Vec::new();
    for (k, v) in &sc.daemon.options {
        let Some((sec, opt)) = k.split_once('.') else {
            continue;
        };
        if let Some(s) = sections.iter_mut().find(|s| s.1 == sec) {
            s.2.retain(|(o, _)| o != opt);
            s.2.push((opt.into(), v.clone()));
        } else if let Some(s) = extra.iter_mut().find(|s| s.0 == sec) {
            s.1.push((opt.into(), v.clone()));
        } else {
            extra.push((sec.into(), vec![(opt.into(), v.clone())]));
        }
    }
    let mut out = String::new();
    for (ty, name, opts) in &sections {
        out.push_str(&format!("config {ty} {}\n", uci_quote(name)));
        for (o, v) in opts {
            out.push_str(&format!("\toption {o} {}\n", uci_quote(v)));
        }
        out.push('\n');
    }
    for (name, opts) in &extra {
        out.push_str(&format!("config {name} {}\n", uci_quote(name)));
        for (o, v) in opts {
            out.push_str(&format!("\toption {o} {}\n", uci_quote(v)));
        }
        out.push('\n');
    }
    out
}

/// What one second of the run looked like, for phase statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Nothing runs: the latency baseline.
    Idle,
    /// Streams run, the household does not upload.
    Streaming,
    /// A household upload runs.
    Loaded,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Streaming => "streaming",
            Phase::Loaded => "loaded",
        }
    }
}

/// The phase of second `t`. The first second after a change is counted with the new phase
/// only when the new phase is the quieter one, so queues that drain slowly are not counted as
/// idle.
pub fn phase_at(sc: &Scenario, t: u64) -> Phase {
    let active = |start: u64, stop: Option<u64>| start <= t && t < stop.unwrap_or(sc.duration_s);
    if sc.household.iter().any(|u| active(u.start_s, u.stop_s)) {
        Phase::Loaded
    } else if sc.viewers.iter().any(|v| active(v.start_s, v.stop_s)) {
        Phase::Streaming
    } else {
        Phase::Idle
    }
}

/// Per-phase figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseSummary {
    /// `idle`, `streaming` or `loaded`.
    pub phase: String,
    /// Seconds measured.
    pub seconds: u64,
    /// Household RTT in this phase.
    pub rtt: RttStats,
    /// Mean uplink rate (router `wan` tx), bit/s.
    pub uplink_avg_bps: u64,
}

/// Per-viewer figures, from the viewer's last stats line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ViewerSummary {
    /// User name.
    pub user: String,
    /// Where from.
    pub from: String,
    /// Bytes received.
    pub bytes: u64,
    /// Mean rate over its watching time, bit/s.
    pub avg_bps: u64,
    /// Stalls.
    pub stalls: u64,
    /// Time stalled, ms.
    pub stall_ms: u64,
    /// Playback restarts.
    pub restarts: u64,
    /// Why the viewer failed, if it did.
    pub error: Option<String>,
}

/// A household upload's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UploadSummary {
    /// Requested rate, Mbit/s; none: greedy.
    pub rate_mbps: Option<f64>,
    /// Bytes sent.
    pub bytes: u64,
    /// Mean rate, bit/s.
    pub rate_bps: u64,
}

/// The result of a scenario run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Seconds played.
    pub seconds: u64,
    /// Modem uplink, bit/s.
    pub uplink_capacity_bps: u64,
    /// Mean uplink rate, bit/s.
    pub uplink_avg_bps: u64,
    /// Highest one-second uplink rate, bit/s.
    pub uplink_max_bps: u64,
    /// Mean / capacity.
    pub uplink_utilisation: f64,
    /// Per phase.
    pub phases: Vec<PhaseSummary>,
    /// Per viewer.
    pub viewers: Vec<ViewerSummary>,
    /// Per household upload.
    pub household: Vec<UploadSummary>,
    /// Whether the daemon ran to the end and left cleanly on SIGTERM within 5 s.
    pub daemon: Option<bool>,
    /// Problems met (a process that would not start, ...).
    pub errors: Vec<String>,
    /// The control goals, judged on this run (see [`control_checks`]).
    pub checks: Vec<Check>,
}

/// One control goal, judged on a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// What is judged.
    pub name: String,
    /// Whether the run met it.
    pub ok: bool,
    /// The figures behind the verdict.
    pub detail: String,
}

/// How far above idle the household's p95 latency may be and still count as "near idle".
pub const LATENCY_MARGIN_MS: f64 = 30.0;

fn daemon_option(sc: &Scenario, key: &str, default: f64) -> f64 {
    sc.daemon
        .options
        .get(key)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .unwrap_or(default)
}

/// Demand changes a viewer lives through: its own start, and every other start or stop of a
/// viewer or household upload while it watches.
pub fn demand_changes(sc: &Scenario, viewer: usize) -> u64 {
    let Some(v) = sc.viewers.get(viewer) else {
        return 0;
    };
    let (from, to) = (v.start_s, v.stop_s.unwrap_or(sc.duration_s));
    let inside = |t: u64| from < t && t < to;
    let mut events: Vec<u64> = Vec::new();
    for (i, o) in sc.viewers.iter().enumerate() {
        if i != viewer {
            events.push(o.start_s);
            events.extend(o.stop_s);
        }
        // A pause or a resume changes every viewer's share; a seek is a new start.
        for p in &o.pauses {
            events.push(p.at_s);
            events.push(p.at_s + p.for_s);
        }
        if i == viewer {
            events.extend(&o.seeks_s);
        }
    }
    for u in &sc.household {
        events.push(u.start_s);
        events.extend(u.stop_s);
    }
    1 + events.into_iter().filter(|t| inside(*t)).count() as u64
}

/// The control goals of the product, judged on a run's summary: the uplink stays under
/// target, the household keeps its reserve, each viewer keeps at least its minimum and does not
/// stall, at most one restart per viewer per demand change, and latency under load stays near
/// idle (p95 within [`LATENCY_MARGIN_MS`]). A run without the daemon shows which of them fail
/// on their own.
pub fn control_checks(sc: &Scenario, s: &Summary) -> Vec<Check> {
    let mut out = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        out.push(Check {
            name: name.into(),
            ok,
            detail,
        })
    };
    let capacity = s.uplink_capacity_bps as f64;
    let target = capacity * daemon_option(sc, "bandwidth.target_pct", 90.0) / 100.0;
    let reserve = daemon_option(sc, "bandwidth.reserve_mbps", 2.0) * 1e6;
    let min_stream = daemon_option(sc, "bandwidth.min_stream_mbps", 1.0) * 1e6;
    let busy: Vec<&PhaseSummary> = s.phases.iter().filter(|p| p.phase != "idle").collect();
    if !busy.is_empty() {
        let worst = busy.iter().map(|p| p.uplink_avg_bps).max().unwrap_or(0) as f64;
        check(
            "uplink under target",
            worst <= target * 1.03,
            format!(
                "busiest phase {} Mbit/s, target {} Mbit/s",
                mbit(worst as u64),
                mbit(target as u64)
            ),
        );
    }
    for (u, spec) in s.household.iter().zip(&sc.household) {
        let want = spec.rate_mbps.map_or(reserve, |r| (r * 1e6).min(reserve));
        check(
            "household keeps its reserve",
            u.rate_bps as f64 >= 0.9 * want,
            format!(
                "upload got {} Mbit/s, reserve {} Mbit/s",
                mbit(u.rate_bps),
                mbit(reserve as u64)
            ),
        );
    }
    for (i, v) in s.viewers.iter().enumerate() {
        check(
            &format!("{} keeps at least the minimum", v.user),
            v.error.is_none() && v.avg_bps as f64 >= 0.9 * min_stream,
            format!(
                "{} Mbit/s, minimum {} Mbit/s{}",
                mbit(v.avg_bps),
                mbit(min_stream as u64),
                v.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        );
        check(
            &format!("{} does not stall", v.user),
            v.error.is_none() && v.stalls == 0,
            format!("{} stalls, {} ms", v.stalls, v.stall_ms),
        );
        let allowed = demand_changes(sc, i);
        check(
            &format!("{} restarts at most once per demand change", v.user),
            v.restarts <= allowed,
            format!("{} restarts, {allowed} demand changes", v.restarts),
        );
    }
    if let Some(idle) = s.phases.iter().find(|p| p.phase == "idle") {
        for p in &busy {
            check(
                &format!("latency while {} stays near idle", p.phase),
                p.rtt.p95_ms <= idle.rtt.p95_ms + LATENCY_MARGIN_MS,
                format!(
                    "p95 {:.1} ms vs idle {:.1} ms (margin {LATENCY_MARGIN_MS} ms)",
                    p.rtt.p95_ms, idle.rtt.p95_ms
                ),
            );
        }
    }
    out
}

/// One second of measurement.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since start.
    pub t: u64,
    /// Uplink rate in that second, bit/s.
    pub uplink_bps: u64,
    /// Household RTTs measured in that second, ms.
    pub rtts_ms: Vec<f64>,
    /// Probes sent in that second.
    pub probes: u64,
}

fn sum_saturating(it: impl Iterator<Item = u64>) -> u64 {
    it.fold(0, u64::saturating_add)
}

/// Folds per-second samples into per-phase figures (pure, for tests).
pub fn summarise_phases(sc: &Scenario, samples: &[Sample]) -> Vec<PhaseSummary> {
    let mut out = Vec::new();
    for phase in [Phase::Idle, Phase::Streaming, Phase::Loaded] {
        let mine: Vec<&Sample> = samples
            .iter()
            .filter(|s| phase_at(sc, s.t) == phase && (s.t == 0 || phase_at(sc, s.t - 1) == phase))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let rtts: Vec<f64> = mine
            .iter()
            .flat_map(|s| s.rtts_ms.iter().copied())
            .collect();
        let sent = sum_saturating(mine.iter().map(|s| s.probes));
        let up = sum_saturating(mine.iter().map(|s| s.uplink_bps));
        out.push(PhaseSummary {
            phase: phase.name().into(),
            seconds: mine.len() as u64,
            rtt: RttStats {
                sent,
                received: rtts.len() as u64,
                p50_ms: percentile(&rtts, 50.0),
                p95_ms: percentile(&rtts, 95.0),
                max_ms: rtts.iter().copied().fold(0.0, f64::max),
            },
            uplink_avg_bps: up / mine.len() as u64,
        });
    }
    out
}

/// How a run is done.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The `homenet` program (for the tools run inside the namespaces).
    pub homenet: PathBuf,
    /// The daemon binary, if it runs.
    pub daemon: Option<PathBuf>,
    /// Print narrative and a table every tick.
    pub live: bool,
    /// Copy the run's files here at the end (daemon, emulator and viewer logs, viewer stats,
    /// the daemon's configuration), for a look after a failure.
    pub keep_logs: Option<PathBuf>,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Result<TempDir, String> {
        let p = std::env::temp_dir().join(format!("homenet-{tag}"));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("run"))
            .and_then(|_| std::fs::create_dir_all(p.join("state")))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    flag
}

fn mbit(bps: u64) -> String {
    format!("{:.1}", bps as f64 / 1e6)
}

/// Last complete JSON line of a viewer's stats file.
fn last_stats(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
}

fn field(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k)
        .and_then(|x| x.as_u64().or_else(|| x.as_f64().map(|f| f as u64)))
        .unwrap_or(0)
}

struct RunningViewer {
    idx: usize,
    child: Child,
    stats: PathBuf,
    started: u64,
    /// Bytes and time at the last live print.
    printed: (u64, u64),
}

/// Copies the plain files of `from` into `to` (created).
fn copy_files(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let entries = std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file() {
            if let Some(name) = p.file_name() {
                std::fs::copy(&p, to.join(name)).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
    }
    Ok(())
}

/// stdout and stderr of a process both going to the file at `path`.
fn log_pair(path: &Path) -> Result<(Stdio, Stdio), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let g = f.try_clone().map_err(|e| e.to_string())?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

/// A server started in a namespace: waits for its `{"listening":...}` line.
fn start_server(net: &HomeNet, ns: &str, argv: &[&str]) -> Result<(Child, Lines), String> {
    let mut child = net.spawn(ns, argv)?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let lines = Lines::new(out);
    lines
        .next_json(Duration::from_secs(10), |v| v.get("listening").is_some())
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    Ok((child, lines))
}

/// Plays `sc` in a fresh network and returns its summary.
pub fn run_scenario(sc: &Scenario, opts: &RunOptions) -> Result<Summary, String> {
    sc.validate()?;
    let stop = stop_flag();
    let say = |s: &str| {
        if opts.live {
            println!("{s}");
        }
    };
    let exe = opts.homenet.to_string_lossy().into_owned();
    let net = HomeNet::up(&Options {
        uplink_kbit: (sc.uplink_mbps * 1000.0).round() as u64,
        buffer_ms: sc.buffer_ms,
        viewers: sc.remote_hosts(),
    })?;
    let tmp = TempDir::new(&net.tag)?;
    say(&format!(
        "== {}: home network up (namespaces {}*), modem uplink {} Mbit/s with {} ms of buffer",
        sc.name, net.tag, sc.uplink_mbps, sc.buffer_ms
    ));
    let mut summary = Summary {
        scenario: sc.name.clone(),
        uplink_capacity_bps: (sc.uplink_mbps * 1e6) as u64,
        ..Summary::default()
    };

    let echo_addr = format!("{}:7", topology::INET_V4);
    let sink_addr = format!("{}:9000", topology::INET_V4);
    let (_echo, _echo_out) =
        start_server(&net, &net.inet, &[&exe, "echo", "--listen", &echo_addr])?;
    let (_sink, _sink_out) =
        start_server(&net, &net.inet, &[&exe, "sink", "--listen", &sink_addr])?;

    let mut emulator = None;
    if let Some(world) = &sc.world {
        let world_file = tmp.0.join("world.json");
        std::fs::write(&world_file, world.to_string()).map_err(|e| e.to_string())?;
        let wf = world_file.to_string_lossy().into_owned();
        // The server's own addresses: a `[::]` listener would be dual-stack and collide
        // with a `0.0.0.0` one.
        let v4 = format!("{}:{}", topology::JF_V4, topology::JF_PORT);
        let v6 = format!("[{}]:{}", topology::JF_V6, topology::JF_PORT);
        let argv = [
            &exe, "jellyfin", "--listen", &v4, "--listen", &v6, "--world", &wf,
        ];
        let (out, err) = log_pair(&tmp.0.join("jellyfin.log"))?;
        let mut child = net.spawn_io(&net.jf, &argv, out, err)?;
        let target = format!("{}:{}", topology::JF_V4, topology::JF_PORT);
        let mut probe = net.spawn_io(
            &net.router,
            &[&exe, "probe", "--to", &target, "--timeout-ms", "15000"],
            Stdio::null(),
            Stdio::null(),
        )?;
        // Await whichever comes first: the port opens, or the emulator dies.
        let ready = loop {
            if let Ok(Some(st)) = child.try_wait() {
                let _ = probe.kill();
                let _ = probe.wait();
                break Err(format!("the Jellyfin emulator exited ({st})"));
            }
            match probe.try_wait() {
                Ok(Some(st)) if st.success() => break Ok(()),
                Ok(Some(_)) | Err(_) => {
                    break Err("the Jellyfin emulator did not open its port within 15 s".into())
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        emulator = Some(child);
        if let Err(e) = ready {
            let log = std::fs::read_to_string(tmp.0.join("jellyfin.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!("{e}; its log ends with: {}", tail.join(" | ")));
        }
        say(&format!(
            "Jellyfin (emulated) listens on {}:{} in the LAN; the router forwards WAN port {} to it",
            topology::JF_V4,
            topology::JF_PORT,
            topology::JF_PORT
        ));
    }

    let mut daemon = None;
    let config_file = tmp.0.join("jellydemon.conf");
    let config_path = config_file.to_string_lossy().into_owned();
    if let Some(d) = &opts.daemon {
        let cfg = daemon_config(sc, &tmp.0.join("run"), &tmp.0.join("state"));
        std::fs::write(&config_file, cfg).map_err(|e| e.to_string())?;
        let (out, err) = log_pair(&tmp.0.join("daemon.log"))?;
        let dp = d.to_string_lossy().into_owned();
        let child = net.spawn_io(
            &net.router,
            &[&dp, "--config", &config_path, "run", "--stderr"],
            out,
            err,
        )?;
        daemon = Some(child);
        say(&format!(
            "jellydemon runs in the router: upload {} Mbit/s, a decision every {} s",
            sc.daemon.upload_mbps.unwrap_or(sc.uplink_mbps),
            sc.daemon.interval
        ));
    }

    let mut ping = net.spawn(&net.lan, &[&exe, "ping", "--to", &echo_addr])?;
    let ping_out = Lines::new(ping.stdout.take().ok_or("no stdout")?);

    let mut viewers: Vec<Option<RunningViewer>> = sc.viewers.iter().map(|_| None).collect();
    let mut uploads: Vec<Option<(Child, Lines)>> = sc.household.iter().map(|_| None).collect();
    summary.household = sc
        .household
        .iter()
        .map(|u| UploadSummary {
            rate_mbps: u.rate_mbps,
            ..UploadSummary::default()
        })
        .collect();
    summary.viewers = sc
        .viewers
        .iter()
        .map(|v| ViewerSummary {
            user: v.user.clone(),
            from: v.from.clone(),
            ..ViewerSummary::default()
        })
        .collect();

    let mut samples: Vec<Sample> = Vec::new();
    let start = Instant::now();
    let tx0 = net.wan_tx_bytes()?;
    let mut last_tx = tx0;
    let mut window_rtts: Vec<f64> = Vec::new();
    let mut window_probes = 0u64;
    let mut t = 0u64;
    let mut daemon_gone = false;
    let mut log_seen = 0usize;
    while t < sc.duration_s && !stop.load(Ordering::Relaxed) {
        for n in sc.notes.iter().filter(|n| n.at_s == t) {
            say(&format!("[{t:>3}s] {}", n.text));
        }
        for (i, v) in sc.viewers.iter().enumerate() {
            if v.stop_s == Some(t) {
                if let Some(mut rv) = viewers[i].take() {
                    HomeNet::stop(&mut rv.child, Duration::from_secs(5));
                    finish_viewer(&mut summary.viewers[i], &rv, t);
                    say(&format!("[{t:>3}s] {} stops watching", v.user));
                }
            }
            if v.start_s == t {
                match start_viewer(&net, &exe, v, i, &tmp.0, sc.duration_s - t) {
                    Ok(child) => {
                        viewers[i] = Some(RunningViewer {
                            idx: i,
                            child,
                            stats: tmp.0.join(format!("viewer{i}.jsonl")),
                            started: t,
                            printed: (0, t),
                        });
                        say(&format!("[{t:>3}s] {}", narrate_viewer(v)));
                    }
                    Err(e) => summary.viewers[i].error = Some(e),
                }
            }
        }
        for (i, u) in sc.household.iter().enumerate() {
            if u.stop_s == Some(t) {
                if let Some((mut c, lines)) = uploads[i].take() {
                    HomeNet::stop(&mut c, Duration::from_secs(3));
                    finish_upload(&mut summary.household[i], &lines);
                    say(&format!("[{t:>3}s] the household upload stops"));
                }
            }
            if u.start_s == t {
                let mut argv = vec![
                    exe.clone(),
                    "upload".into(),
                    "--to".into(),
                    sink_addr.clone(),
                ];
                match u.rate_mbps {
                    Some(r) => argv.extend(["--rate-mbps".into(), format!("{r}")]),
                    None => argv.push("--greedy".into()),
                }
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                match net.spawn(&net.lan, &argv) {
                    Ok(mut c) => {
                        let lines = match c.stdout.take() {
                            Some(o) => Lines::new(o),
                            None => Lines::from_reader(std::io::empty()),
                        };
                        uploads[i] = Some((c, lines));
                        say(&format!(
                            "[{t:>3}s] the household starts {} upload to the internet (192.168.1.10 → {})",
                            match u.rate_mbps {
                                Some(r) => format!("a {r} Mbit/s"),
                                None => "a greedy (as fast as TCP goes)".into(),
                            },
                            topology::INET_V4
                        ));
                    }
                    Err(e) => summary.errors.push(format!("household upload: {e}")),
                }
            }
        }

        // Pace the timeline by wall clock, not by how long the work above took.
        let due = start + Duration::from_secs(t + 1);
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok(line) = ping_out.next(left) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(r) = v.get("rtts_ms").and_then(|r| r.as_array()) {
                        window_rtts.extend(r.iter().filter_map(|x| x.as_f64()));
                        window_probes += field(&v["window"], "sent");
                    }
                }
            }
        }
        if let Some(d) = daemon.as_mut() {
            if let Ok(Some(st)) = d.try_wait() {
                if !daemon_gone {
                    daemon_gone = true;
                    summary
                        .errors
                        .push(format!("jellydemon exited by itself at {t} s ({st})"));
                    say(&format!("[{t:>3}s] jellydemon exited by itself ({st})!"));
                }
            }
        }
        let tx = net.wan_tx_bytes().unwrap_or(last_tx);
        let sample = Sample {
            t,
            uplink_bps: tx.wrapping_sub(last_tx).saturating_mul(8),
            rtts_ms: std::mem::take(&mut window_rtts),
            probes: std::mem::take(&mut window_probes),
        };
        last_tx = tx;
        if opts.live && (t + 1) % u64::from(sc.daemon.interval) == 0 {
            samples.push(sample);
            let from = samples.len().saturating_sub(sc.daemon.interval as usize);
            print_tick(sc, &net, opts, &config_path, &samples[from..], &mut viewers);
            if opts.daemon.is_some() {
                log_seen = print_new_log(&tmp.0.join("daemon.log"), log_seen);
            }
        } else {
            samples.push(sample);
        }
        t += 1;
    }
    if stop.load(Ordering::Relaxed) {
        summary.errors.push(format!("interrupted at {t} s"));
        say("interrupted: cleaning up");
    }
    summary.seconds = t;

    // Everyone at once, so a slow leaver does not delay the others.
    for rv in viewers.iter().flatten() {
        HomeNet::terminate(&rv.child);
    }
    for (c, _) in uploads.iter().flatten() {
        HomeNet::terminate(c);
    }
    for (i, rv) in viewers.iter_mut().enumerate() {
        if let Some(rv) = rv.as_mut() {
            HomeNet::stop(&mut rv.child, Duration::from_secs(5));
            let rv_ref: &RunningViewer = rv;
            finish_viewer(&mut summary.viewers[i], rv_ref, t);
        }
    }
    for (i, up) in uploads.iter_mut().enumerate() {
        if let Some((c, lines)) = up.as_mut() {
            HomeNet::stop(c, Duration::from_secs(3));
            finish_upload(&mut summary.household[i], lines);
        }
    }
    if let Some(mut d) = daemon {
        // The daemon must restore limits and remove its tc state within 5 s (procd's timeout).
        let clean = HomeNet::stop(&mut d, Duration::from_secs(5)) && !daemon_gone;
        summary.daemon = Some(clean);
        if !clean && !daemon_gone {
            summary
                .errors
                .push("the daemon did not exit within 5 s of SIGTERM".into());
        }
        if opts.live && !daemon_gone {
            say("jellydemon stopped (SIGTERM): it restores the users' limits and removes its tc state");
            print_new_log(&tmp.0.join("daemon.log"), log_seen);
        } else if !clean {
            if let Ok(log) = std::fs::read_to_string(tmp.0.join("daemon.log")) {
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                summary
                    .errors
                    .push(format!("daemon log ends with: {}", tail.join(" | ")));
            }
        }
    }
    if let Some(mut e) = emulator {
        HomeNet::stop(&mut e, Duration::from_secs(3));
    }
    HomeNet::stop(&mut ping, Duration::from_secs(3));

    let total = sum_saturating(samples.iter().map(|s| s.uplink_bps));
    summary.uplink_avg_bps = total / (samples.len().max(1) as u64);
    summary.uplink_max_bps = samples.iter().map(|s| s.uplink_bps).max().unwrap_or(0);
    summary.uplink_utilisation = if summary.uplink_capacity_bps > 0 {
        summary.uplink_avg_bps as f64 / summary.uplink_capacity_bps as f64
    } else {
        0.0
    };
    summary.phases = summarise_phases(sc, &samples);
    summary.checks = control_checks(sc, &summary);
    drop(net);
    if let Some(dir) = &opts.keep_logs {
        if let Err(e) = copy_files(&tmp.0, dir) {
            summary.errors.push(format!("keeping logs: {e}"));
        }
    }
    Ok(summary)
}

fn start_viewer(
    net: &HomeNet,
    exe: &str,
    v: &ViewerSpec,
    i: usize,
    dir: &Path,
    seconds_left: u64,
) -> Result<Child, String> {
    let (ns, server) = match place_of(&v.from)? {
        Place::Lan => (
            net.lan.clone(),
            format!("{}:{}", topology::JF_V4, topology::JF_PORT),
        ),
        Place::Remote { index, v6: false } => (
            net.viewers[index].clone(),
            format!("{}:{}", topology::ROUTER_WAN_V4, topology::JF_PORT),
        ),
        Place::Remote { index, v6: true } => (
            net.viewers[index].clone(),
            format!("[{}]:{}", topology::JF_V6, topology::JF_PORT),
        ),
    };
    let device = if v.device_id.is_empty() {
        format!("{}-{}", v.user, v.from.replace([':', '.'], "-"))
    } else {
        v.device_id.clone()
    };
    let stats = dir
        .join(format!("viewer{i}.jsonl"))
        .to_string_lossy()
        .into_owned();
    let secs = (v.stop_s.unwrap_or(u64::MAX).saturating_sub(v.start_s))
        .min(seconds_left)
        .saturating_add(5)
        .to_string();
    let rc = if v.remote_control { "yes" } else { "no" };
    let mut script: Vec<String> = Vec::new();
    for p in &v.pauses {
        script.push("--pause".into());
        script.push(format!("{}:{}", p.at_s - v.start_s, p.for_s));
    }
    for t in &v.seeks_s {
        script.push("--seek".into());
        script.push((t - v.start_s).to_string());
    }
    let mut argv = vec![
        exe,
        "viewer",
        "--server",
        &server,
        "--user",
        &v.user,
        "--item",
        &v.item,
        "--client",
        &v.client,
        "--device-id",
        &device,
        "--remote-control",
        rc,
        "--method",
        &v.method,
        "--seconds",
        &secs,
        "--stats",
        &stats,
    ];
    argv.extend(script.iter().map(String::as_str));
    let (out, err) = log_pair(&dir.join(format!("viewer{i}.log")))?;
    net.spawn_io(&ns, &argv, out, err)
}

fn narrate_viewer(v: &ViewerSpec) -> String {
    let what = if v.title.is_empty() {
        &v.item
    } else {
        &v.title
    };
    let (where_, kind) = match place_of(&v.from) {
        Ok(Place::Lan) => ("the living room (LAN)".to_string(), "local, never limited"),
        _ => (v.from.clone(), "remote"),
    };
    format!(
        "{} starts watching {what} from {where_} ({kind}, {}{})",
        v.user,
        v.method,
        if v.remote_control {
            ""
        } else {
            ", client without remote control"
        }
    )
}

fn finish_viewer(s: &mut ViewerSummary, rv: &RunningViewer, t: u64) {
    match last_stats(&rv.stats) {
        Some(v) => {
            s.bytes = field(&v, "bytes");
            s.stalls = field(&v, "stalls");
            s.stall_ms = field(&v, "stall_ms");
            s.restarts = field(&v, "restarts");
            let secs = t.saturating_sub(rv.started).max(1);
            s.avg_bps = s.bytes.saturating_mul(8) / secs;
        }
        None => {
            if s.error.is_none() {
                s.error = Some("the viewer wrote no stats (see its log)".into());
            }
        }
    }
}

fn finish_upload(s: &mut UploadSummary, lines: &Lines) {
    if let Ok(v) = lines.next_json(Duration::from_secs(3), |v| v.get("upload").is_some()) {
        s.bytes = field(&v["upload"], "bytes");
        s.rate_bps = field(&v["upload"], "rate_bps");
    }
}

fn print_tick(
    sc: &Scenario,
    net: &HomeNet,
    opts: &RunOptions,
    config: &str,
    recent: &[Sample],
    viewers: &mut [Option<RunningViewer>],
) {
    let Some(last) = recent.last() else { return };
    let secs = recent.len().max(1) as u64;
    let rtts: Vec<f64> = recent
        .iter()
        .flat_map(|s| s.rtts_ms.iter().copied())
        .collect();
    let up = sum_saturating(recent.iter().map(|s| s.uplink_bps)) / secs;
    println!(
        "---- t={:>3}s  uplink {} of {} Mbit/s  household latency p50 {:.1} ms, max {:.1} ms",
        last.t + 1,
        mbit(up),
        sc.uplink_mbps,
        percentile(&rtts, 50.0),
        rtts.iter().copied().fold(0.0, f64::max)
    );
    let now = last.t + 1;
    for rv in viewers.iter_mut().flatten() {
        let v = &sc.viewers[rv.idx];
        let Some(st) = last_stats(&rv.stats) else {
            println!("     viewer {:<6} {:<15} (starting)", v.user, v.from);
            continue;
        };
        // Streams arrive in segment bursts: average over the tick, not the last second.
        let bytes = field(&st, "bytes");
        let (b0, t0) = rv.printed;
        let rate = bytes.wrapping_sub(b0).saturating_mul(8) / now.saturating_sub(t0).max(1);
        rv.printed = (bytes, now);
        let negotiated = st
            .get("negotiated_bps")
            .and_then(|n| n.as_u64())
            .map(|n| format!("stream {} Mbit/s", mbit(n)))
            .unwrap_or_default();
        println!(
            "     viewer {:<6} {:<15} {:>5} Mbit/s received  {:<18} {:<9} stalls {}  restarts {}",
            v.user,
            v.from,
            mbit(rate),
            negotiated,
            st.get("state").and_then(|s| s.as_str()).unwrap_or(""),
            field(&st, "stalls"),
            field(&st, "restarts")
        );
    }
    if let Some(d) = &opts.daemon {
        let dp = d.to_string_lossy();
        match net.exec(&net.router, &[&dp, "--config", config, "status"]) {
            Ok(out) => {
                for l in out.lines() {
                    println!("     | {l}");
                }
            }
            Err(e) => println!(
                "     | (jellydemon status: {})",
                e.lines().last().unwrap_or("")
            ),
        }
    }
}

/// Prints what the daemon logged since byte `seen` (at most a few lines, so a chatty log
/// does not bury the table); returns the new position.
fn print_new_log(path: &Path, seen: usize) -> usize {
    const MAX_LINES: usize = 8;
    let Ok(bytes) = std::fs::read(path) else {
        return seen;
    };
    let Some(new) = bytes.get(seen..) else {
        return seen;
    };
    // Only whole lines; a partial last line waits for the next tick.
    let Some(end) = new.iter().rposition(|b| *b == b'\n') else {
        return seen;
    };
    let text = String::from_utf8_lossy(&new[..end]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let skip = lines.len().saturating_sub(MAX_LINES);
    if skip > 0 {
        println!("     jellydemon log: ({skip} earlier lines)");
    }
    for l in &lines[skip..] {
        println!("     jellydemon log: {l}");
    }
    seen + end + 1
}

/// The summary as a short human-readable report.
pub fn render_summary(s: &Summary) -> String {
    let mut out = format!(
        "== {}: {} s, uplink mean {} Mbit/s (max {}) of {} = {:.0}%\n",
        s.scenario,
        s.seconds,
        mbit(s.uplink_avg_bps),
        mbit(s.uplink_max_bps),
        mbit(s.uplink_capacity_bps),
        s.uplink_utilisation * 100.0
    );
    for p in &s.phases {
        out.push_str(&format!(
            "   {:<9} {:>3} s  household RTT p50 {:>6.1} ms  p95 {:>6.1} ms  max {:>6.1} ms  lost {}/{}  uplink {} Mbit/s\n",
            p.phase,
            p.seconds,
            p.rtt.p50_ms,
            p.rtt.p95_ms,
            p.rtt.max_ms,
            p.rtt.sent.saturating_sub(p.rtt.received),
            p.rtt.sent,
            mbit(p.uplink_avg_bps)
        ));
    }
    for v in &s.viewers {
        out.push_str(&format!(
            "   viewer {:<8} {:<16} {:>6} Mbit/s mean  {} bytes  stalls {} ({} ms)  restarts {}{}\n",
            v.user,
            v.from,
            mbit(v.avg_bps),
            v.bytes,
            v.stalls,
            v.stall_ms,
            v.restarts,
            v.error.as_ref().map(|e| format!("  ERROR: {e}")).unwrap_or_default()
        ));
    }
    for u in &s.household {
        out.push_str(&format!(
            "   household upload {}: {} Mbit/s achieved\n",
            u.rate_mbps
                .map(|r| format!("{r} Mbit/s"))
                .unwrap_or_else(|| "greedy".into()),
            mbit(u.rate_bps)
        ));
    }
    if let Some(clean) = s.daemon {
        out.push_str(&format!(
            "   jellydemon {}\n",
            if clean {
                "ran throughout and exited cleanly on SIGTERM"
            } else {
                "died early or did NOT exit within 5 s of SIGTERM"
            }
        ));
    }
    if !s.checks.is_empty() {
        let passed = s.checks.iter().filter(|c| c.ok).count();
        out.push_str(&format!(
            "   control goals: {passed} of {} met\n",
            s.checks.len()
        ));
        for c in &s.checks {
            out.push_str(&format!(
                "   {} {}: {}\n",
                if c.ok { "  ok " } else { "FAIL " },
                c.name,
                c.detail
            ));
        }
    }
    for e in &s.errors {
        out.push_str(&format!("   error: {e}\n"));
    }
    out
}

fn read_scenario(path: &str) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    Scenario::parse(&text).map_err(|e| format!("{path}: {e}"))
}

/// `homenet scenario FILE (--daemon PATH | --no-daemon) [--json OUT] [--live] [--keep-logs DIR]`.
pub fn scenario_main(args: &[String]) -> Result<(), String> {
    let (file, rest) = args
        .split_first()
        .ok_or("usage: scenario FILE (--daemon PATH | --no-daemon) [--json OUT] [--live] [--keep-logs DIR]")?;
    let a = Args::parse(rest, &["no-daemon", "live"])?;
    let sc = read_scenario(file)?;
    let daemon = match (a.get("daemon"), a.has("no-daemon")) {
        (Some(d), false) => Some(PathBuf::from(d)),
        (None, true) => None,
        _ => return Err("give exactly one of --daemon PATH and --no-daemon".into()),
    };
    let opts = RunOptions {
        homenet: topology::homenet_exe()?,
        daemon,
        live: a.has("live"),
        keep_logs: a.get("keep-logs").map(PathBuf::from),
    };
    let summary = run_scenario(&sc, &opts)?;
    print!("{}", render_summary(&summary));
    if let Some(out) = a.get("json") {
        let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(out, text).map_err(|e| format!("{out}: {e}"))?;
    }
    Ok(())
}

/// `homenet demo --daemon PATH [--scenario FILE] [--keep-logs DIR]`.
pub fn demo_main(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &["wake-only"])?;
    let daemon = PathBuf::from(a.get("daemon").ok_or("--daemon PATH is required")?);
    if !daemon.is_file() {
        return Err(format!(
            "{}: no such daemon binary (run make demo)",
            daemon.display()
        ));
    }
    let sc = match a.get("scenario") {
        Some(f) => read_scenario(f)?,
        None => Scenario::parse(DEMO_SCENARIO)?,
    };
    println!("{}\n", sc.description);
    let opts = RunOptions {
        homenet: topology::homenet_exe()?,
        daemon: Some(daemon),
        live: true,
        keep_logs: a.get("keep-logs").map(PathBuf::from),
    };
    // Ctrl-C during the scenario ends the demo there.
    let interrupted = stop_flag();
    if !a.has("wake-only") {
        let summary = run_scenario(&sc, &opts)?;
        println!();
        print!("{}", render_summary(&summary));
        println!();
    }
    if a.get("scenario").is_none() && !interrupted.load(Ordering::Relaxed) {
        wake_demo(&sc, &opts)?;
    }
    Ok(())
}

/// The wake part of the demo: the media server sleeps (silent, see
/// `HomeNet::sleep_server`), a friend opens the app, the router wakes the server, the stream
/// starts and is limited. Uses the scenario's world and the daemon's shipped timings
/// (interval 5, Jellyfin timeout 5).
pub fn wake_demo(sc: &Scenario, opts: &RunOptions) -> Result<(), String> {
    let daemon = opts
        .daemon
        .as_ref()
        .ok_or("the wake demo needs the daemon")?;
    let world = sc.world.as_ref().ok_or("the wake demo needs a world")?;
    let friend = sc
        .viewers
        .iter()
        .find(|v| v.from != "lan")
        .ok_or("the wake demo needs a remote viewer")?;
    let stop = stop_flag();
    let exe = opts.homenet.to_string_lossy().into_owned();
    let net = HomeNet::up(&Options {
        uplink_kbit: (sc.uplink_mbps * 1000.0).round() as u64,
        buffer_ms: sc.buffer_ms,
        viewers: 1,
    })?;
    let tmp = TempDir::new(&net.tag)?;
    println!("== wake: the media server sleeps; a friend opens the app");
    let world_file = tmp.0.join("world.json");
    std::fs::write(&world_file, world.to_string()).map_err(|e| e.to_string())?;
    let wf = world_file.to_string_lossy().into_owned();
    let v4 = format!("{}:{}", topology::JF_V4, topology::JF_PORT);
    let (out, err) = log_pair(&tmp.0.join("jellyfin.log"))?;
    let _emu = net.spawn_io(
        &net.jf,
        &[&exe, "jellyfin", "--listen", &v4, "--world", &wf],
        out,
        err,
    )?;
    net.exec(
        &net.router,
        &[&exe, "probe", "--to", &v4, "--timeout-ms", "15000"],
    )
    .map_err(|e| format!("the Jellyfin emulator did not start: {e}"))?;
    let sleeper = net.sleep_server(topology::BOOT_DELAY)?;
    println!(
        "the server sleeps: it answers nothing (no RST, no ICMP, no ARP) until a magic packet for {} reaches it, then needs {} s to resume",
        topology::mac_text(topology::JF_MAC),
        topology::BOOT_DELAY.as_secs()
    );
    let mut wsc = sc.clone();
    wsc.daemon.interval = 5;
    for (k, v) in [
        ("jellyfin.timeout", "5".to_string()),
        ("wol.enabled", "1".into()),
        ("wol.mac", topology::mac_text(topology::JF_MAC)),
        ("wol.interface", topology::LAN_DEV.into()),
        ("wol.on_connect", "1".into()),
    ] {
        wsc.daemon.options.insert(k.into(), v);
    }
    let run_dir = tmp.0.join("run");
    let cfg = daemon_config(&wsc, &run_dir, &tmp.0.join("state"));
    let config_file = tmp.0.join("jellydemon.conf");
    std::fs::write(&config_file, cfg).map_err(|e| e.to_string())?;
    let log = tmp.0.join("daemon.log");
    let (out, err) = log_pair(&log)?;
    let dp = daemon.to_string_lossy().into_owned();
    let cp = config_file.to_string_lossy().into_owned();
    let mut d = net.spawn_io(
        &net.router,
        &[&dp, "--config", &cp, "run", "--stderr"],
        out,
        err,
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("watching new connections")
    {
        if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
            HomeNet::stop(&mut d, Duration::from_secs(5));
            return Err("the daemon did not start its wake thread".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("jellydemon runs in the router (interval 5, jellyfin.timeout 5, wol.on_connect 1)");
    let stats = tmp.0.join("friend.jsonl");
    let t0 = Instant::now();
    let target = format!("{}:{}", topology::ROUTER_WAN_V4, topology::JF_PORT);
    let mut viewer = net.spawn_io(
        &net.viewers[0],
        &[
            &exe,
            "viewer",
            "--server",
            &target,
            "--user",
            &friend.user,
            "--item",
            &friend.item,
            "--client",
            "Jellyfin Web",
            "--device-id",
            "friend-phone",
            "--method",
            "transcode",
            "--retry-for",
            "60",
            "--stats",
            &stats.to_string_lossy(),
        ],
        Stdio::null(),
        Stdio::null(),
    )?;
    println!(
        "0.0 s  {} opens the app: the first SYN reaches the router",
        friend.user
    );
    let secs = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let mut result = Ok(());
    match sleeper.next(Duration::from_secs(5)) {
        Some(topology::SleepEvent::Magic { at, raw }) => println!(
            "{:.1} s  the magic packet reaches the server's NIC ({} form first; {:.1} ms after the app started)",
            secs(at),
            if raw { "raw 0x0842" } else { "UDP port 9" },
            at.saturating_duration_since(t0).as_secs_f64() * 1000.0
        ),
        _ => result = Err("no magic packet reached the server".to_string()),
    }
    if result.is_ok() {
        match sleeper.next(topology::BOOT_DELAY + Duration::from_secs(5)) {
            Some(topology::SleepEvent::Awake { at }) => {
                println!("{:.1} s  the server has resumed and answers", secs(at))
            }
            _ => result = Err("the server did not wake".to_string()),
        }
    }
    let status = run_dir.join("status.json");
    let mut shown_playing = false;
    let deadline = Instant::now() + Duration::from_secs(40);
    while result.is_ok() {
        if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
            result = Err("the friend's stream was not limited within 40 s".into());
            break;
        }
        let st: Option<serde_json::Value> = std::fs::read_to_string(&status)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let stream = st.as_ref().and_then(|st| {
            st["streams"]
                .as_array()?
                .iter()
                .find(|x| x["user"] == friend.user.as_str())
                .cloned()
        });
        if let Some(x) = stream {
            if !shown_playing {
                println!(
                    "{:.1} s  {} plays {}",
                    secs(Instant::now()),
                    friend.user,
                    x["title"].as_str().unwrap_or("")
                );
                shown_playing = true;
            }
            let limit = x["limit_bps"].as_u64().unwrap_or(0);
            if limit > 0 {
                let after = st.as_ref().and_then(|s| s["wol"]["awake_after_s"].as_f64());
                println!(
                    "{:.1} s  limited to {} Mbit/s (Jellyfin limit; shaped {} Mbit/s on the router)",
                    secs(Instant::now()),
                    mbit(limit),
                    mbit(x["shaped_bps"].as_u64().unwrap_or(0))
                );
                if let Some(a) = after {
                    println!(
                        "status: \"awake after {a:.1} s\" (magic packet to Jellyfin answering)"
                    );
                }
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    HomeNet::stop(&mut viewer, Duration::from_secs(5));
    HomeNet::stop(&mut d, Duration::from_secs(5));
    if result.is_err() {
        if let Some(dir) = &opts.keep_logs {
            let _ = copy_files(&tmp.0, &dir.join("wake"));
        }
    }
    result
}

/// `homenet up [--uplink-mbps R] [--buffer-ms MS] [--viewers N]`: builds the network and leaves
/// it in place for exploring (`ip netns exec NAME ...`); `homenet down TAG` removes it.
pub fn up_main(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &[])?;
    let d = Options::default();
    let mbps: f64 = a.num("uplink-mbps", d.uplink_kbit as f64 / 1000.0)?;
    if !(mbps.is_finite() && mbps > 0.0) {
        return Err("--uplink-mbps must be > 0".into());
    }
    let net = HomeNet::up(&Options {
        uplink_kbit: (mbps * 1000.0).round() as u64,
        buffer_ms: a.num("buffer-ms", d.buffer_ms)?,
        viewers: a.num("viewers", d.viewers)?,
    })?;
    println!(
        "router  {}  wan {} / {}, br-lan {} / {}",
        net.router,
        topology::ROUTER_WAN_V4,
        topology::ROUTER_WAN_V6,
        topology::ROUTER_LAN_V4,
        topology::ROUTER_LAN_V6
    );
    println!(
        "jf      {}  {} / {}",
        net.jf,
        topology::JF_V4,
        topology::JF_V6
    );
    println!(
        "lan     {}  {} / {}",
        net.lan,
        topology::LAN_V4,
        topology::LAN_V6
    );
    println!(
        "inet    {}  {} / {}",
        net.inet,
        topology::INET_V4,
        topology::INET_V6
    );
    for (i, v) in net.viewers.iter().enumerate() {
        println!(
            "viewer  {v}  {} / {}",
            topology::viewer_v4(i),
            topology::viewer_v6(i)
        );
    }
    let tag = net.keep();
    println!("remove with: homenet down {tag}");
    Ok(())
}

/// `homenet down TAG | --all [--force]`.
pub fn down_main(args: &[String]) -> Result<(), String> {
    let removed = match args.first().map(String::as_str) {
        Some("--all") => topology::cleanup_leftovers(args.iter().any(|a| a == "--force")),
        Some(tag) if topology::parse_ns_name(&format!("{tag}r")).is_some() => {
            topology::cleanup_tag(tag)
        }
        _ => return Err("usage: down TAG | down --all [--force]".into()),
    };
    for ns in &removed {
        println!("removed {ns}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Scenario {
        Scenario::parse(
            r#"{"name":"t","duration_s":30,"world":{},"api_key":"k'ey",
                "viewers":[{"from":"198.51.100.11","user":"bob","item":"i1","start_s":5,"stop_s":20},
                           {"from":"lan","user":"carol","item":"i2","start_s":10}],
                "household":[{"start_s":15,"stop_s":25,"rate_mbps":6}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn demo_scenario_is_valid_and_short() {
        let sc = Scenario::parse(DEMO_SCENARIO).unwrap();
        assert!(sc.duration_s <= 110, "the demo must stay under two minutes");
        assert!(sc.viewers.iter().any(|v| v.from == "lan"));
        assert!(sc.viewers.iter().filter(|v| v.from != "lan").count() >= 2);
        assert!(!sc.household.is_empty());
        assert!(sc.household[0].start_s > 0 && sc.household[0].start_s < sc.duration_s);
    }

    #[test]
    fn scenario_files_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&p).unwrap();
                Scenario::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn api_key_falls_back_to_the_worlds_first() {
        let mut sc = base();
        assert_eq!(sc.effective_api_key(), "k'ey");
        sc.api_key.clear();
        assert_eq!(sc.effective_api_key(), "");
        sc.world = Some(
            serde_json::json!({"api_keys":[{"name":"a","token":"t1"},{"name":"b","token":"t2"}]}),
        );
        assert_eq!(sc.effective_api_key(), "t1");
    }

    #[test]
    fn places() {
        assert_eq!(place_of("lan"), Ok(Place::Lan));
        assert_eq!(
            place_of("198.51.100.10"),
            Ok(Place::Remote {
                index: 0,
                v6: false
            })
        );
        assert_eq!(
            place_of("2001:db8:1::13"),
            Ok(Place::Remote { index: 3, v6: true })
        );
        assert!(place_of("198.51.100.200").is_err());
        assert!(place_of("10.0.0.1").is_err());
        assert!(place_of("garbage").is_err());
        assert_eq!(base().remote_hosts(), 2);
    }

    #[test]
    fn rejects_bad_scenarios() {
        let bad = [
            r#"{"name":"t","duration_s":0}"#,
            r#"{"name":"t","duration_s":10,"uplink_mbps":-1}"#,
            r#"{"name":"t","duration_s":10,"household":[{"start_s":5,"stop_s":5}]}"#,
            r#"{"name":"t","duration_s":10,"household":[{"start_s":5,"stop_s":11}]}"#,
            r#"{"name":"t","duration_s":10,"household":[{"start_s":1,"rate_mbps":0}]}"#,
            r#"{"name":"t","duration_s":10,"viewers":[{"from":"lan","user":"a","item":"b"}]}"#,
            r#"{"name":"t","duration_s":10,"world":{},"viewers":[{"from":"lan","user":"a","item":"b","method":"x"}]}"#,
            r#"{"name":"t","duration_s":10,"daemon":{"options":{"noDot":"1"}}}"#,
            r#"{"name":"t","duration_s":10,"daemon":{"options":{"a.b":"1\n2"}}}"#,
            r#"{"name":"t","duration_s":10,"unknown":1}"#,
            r#"not json"#,
        ];
        for b in bad {
            assert!(Scenario::parse(b).is_err(), "{b}");
        }
    }

    #[test]
    fn phases_follow_the_schedule() {
        let sc = base();
        assert_eq!(phase_at(&sc, 0), Phase::Idle);
        assert_eq!(phase_at(&sc, 5), Phase::Streaming);
        assert_eq!(phase_at(&sc, 15), Phase::Loaded);
        assert_eq!(phase_at(&sc, 24), Phase::Loaded);
        assert_eq!(phase_at(&sc, 25), Phase::Streaming);
    }

    #[test]
    fn phase_summary_skips_transition_seconds() {
        let sc = base();
        let samples: Vec<Sample> = (0..30)
            .map(|t| Sample {
                t,
                uplink_bps: if phase_at(&sc, t) == Phase::Loaded {
                    8_000_000
                } else {
                    1_000_000
                },
                rtts_ms: vec![t as f64],
                probes: 2,
            })
            .collect();
        let p = summarise_phases(&sc, &samples);
        let idle = p.iter().find(|p| p.phase == "idle").unwrap();
        assert_eq!(idle.seconds, 5);
        assert_eq!(idle.rtt.sent, 10);
        assert_eq!(idle.rtt.received, 5);
        let loaded = p.iter().find(|p| p.phase == "loaded").unwrap();
        assert_eq!(loaded.seconds, 9, "second 15 is a transition");
        assert_eq!(loaded.uplink_avg_bps, 8_000_000);
        assert_eq!(loaded.rtt.max_ms, 24.0);
    }

    #[test]
    fn config_is_uci_with_overrides() {
        let mut sc = base();
        sc.daemon
            .options
            .insert("bandwidth.reserve_mbps".into(), "3".into());
        sc.daemon
            .options
            .insert("bandwidth.upload_mbps".into(), "18".into());
        sc.daemon
            .options
            .insert("shaping.burst_pct".into(), "120".into());
        let c = daemon_config(&sc, Path::new("/r"), Path::new("/s"));
        assert!(c.contains("config jellydemon 'main'\n\toption enabled '1'\n"));
        assert!(c.contains("\toption url 'http://192.168.1.2:8096'\n"));
        assert!(c.contains("\toption api_key 'k'\\''ey'\n"));
        assert!(c.contains("\toption server_ip6 '2001:db8:2::2'\n"));
        assert!(c.contains("\toption wan_device 'wan'\n\toption lan_device 'br-lan'\n"));
        assert!(c.contains("\toption run_dir '/r'\n"));
        assert!(c.contains("\toption reserve_mbps '3'\n"));
        assert!(c.contains("\toption upload_mbps '18'\n"));
        assert!(!c.contains("upload_mbps '20'"));
        assert!(c.contains("config shaping 'shaping'\n\toption burst_pct '120'\n"));
    }

    #[test]
    fn demand_changes_count_what_happens_while_watching() {
        let sc = base();
        // bob watches 5..20: carol starts at 10, the upload starts at 15 (stops at 25, after).
        assert_eq!(demand_changes(&sc, 0), 3);
        // carol watches 10..30: bob stops at 20, the upload starts at 15 and stops at 25.
        assert_eq!(demand_changes(&sc, 1), 4);
        assert_eq!(demand_changes(&sc, 9), 0);
    }

    fn judged(s: &Summary) -> Vec<(String, bool)> {
        control_checks(&base(), s)
            .into_iter()
            .map(|c| (c.name, c.ok))
            .collect()
    }

    fn good_run() -> Summary {
        let rtt = |p95| RttStats {
            sent: 100,
            received: 100,
            p50_ms: 1.0,
            p95_ms: p95,
            max_ms: p95,
        };
        let phase = |name: &str, p95, up| PhaseSummary {
            phase: name.into(),
            seconds: 5,
            rtt: rtt(p95),
            uplink_avg_bps: up,
        };
        Summary {
            uplink_capacity_bps: 20_000_000,
            phases: vec![
                phase("idle", 2.0, 0),
                phase("streaming", 10.0, 16_000_000),
                phase("loaded", 20.0, 18_000_000),
            ],
            viewers: ["bob", "carol"]
                .iter()
                .map(|u| ViewerSummary {
                    user: (*u).into(),
                    avg_bps: 5_000_000,
                    restarts: 1,
                    ..Default::default()
                })
                .collect(),
            household: vec![UploadSummary {
                rate_mbps: Some(6.0),
                bytes: 1,
                rate_bps: 5_900_000,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn control_goals_met() {
        let all = judged(&good_run());
        assert_eq!(all.len(), 1 + 1 + 2 * 3 + 2, "{all:?}");
        assert!(all.iter().all(|(_, ok)| *ok), "{all:?}");
    }

    #[test]
    fn control_goals_each_can_fail() {
        let failing = |f: &dyn Fn(&mut Summary), name: &str| {
            let mut s = good_run();
            f(&mut s);
            let bad: Vec<String> = judged(&s)
                .into_iter()
                .filter(|(_, ok)| !ok)
                .map(|(n, _)| n)
                .collect();
            assert_eq!(bad, vec![name.to_string()]);
        };
        failing(
            &|s| s.phases[2].uplink_avg_bps = 19_500_000,
            "uplink under target",
        );
        failing(
            &|s| s.household[0].rate_bps = 1_000_000,
            "household keeps its reserve",
        );
        failing(
            &|s| s.viewers[0].avg_bps = 500_000,
            "bob keeps at least the minimum",
        );
        failing(&|s| s.viewers[1].stalls = 1, "carol does not stall");
        failing(
            &|s| s.viewers[0].restarts = 4,
            "bob restarts at most once per demand change",
        );
        failing(
            &|s| s.phases[2].rtt.p95_ms = 150.0,
            "latency while loaded stays near idle",
        );
    }

    #[test]
    fn new_log_lines_only_whole_ones() {
        let p = std::env::temp_dir().join(format!("homenet-log-test-{}", std::process::id()));
        std::fs::write(&p, "one\ntwo\npart").unwrap();
        let seen = print_new_log(&p, 0);
        assert_eq!(seen, 8, "up to the last newline");
        assert_eq!(print_new_log(&p, seen), seen, "a partial line waits");
        std::fs::write(&p, "one\ntwo\npartial\n").unwrap();
        assert_eq!(print_new_log(&p, seen), 16);
        assert_eq!(
            print_new_log(&p, 1000),
            1000,
            "a position past the end is kept"
        );
        let _ = std::fs::remove_file(&p);
        assert_eq!(print_new_log(&p, 3), 3, "a missing file changes nothing");
    }

    #[test]
    fn summary_renders_every_part() {
        let s = Summary {
            scenario: "x".into(),
            seconds: 10,
            uplink_capacity_bps: 20_000_000,
            uplink_avg_bps: 10_000_000,
            uplink_utilisation: 0.5,
            viewers: vec![ViewerSummary {
                user: "bob".into(),
                error: Some("boom".into()),
                ..Default::default()
            }],
            daemon: Some(false),
            ..Default::default()
        };
        let r = render_summary(&s);
        assert!(r.contains("50%"));
        assert!(r.contains("bob") && r.contains("ERROR: boom"));
        assert!(r.contains("did NOT exit within 5 s"));
    }
}
