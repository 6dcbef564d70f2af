//! The status file (DESIGN.md §6): what the daemon publishes each tick for the CLI, LuCI and
//! Prometheus. Field names are a contract; add, never rename.

use serde::{Deserialize, Serialize};

pub const STATUS_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub version: u32,
    /// Unix seconds of this tick.
    pub updated: u64,
    pub interval: u32,
    pub dry_run: bool,
    pub jellyfin: JellyfinStatus,
    pub wan: WanStatus,
    pub budget_bps: u64,
    pub streams: Vec<StreamStatus>,
    pub wol: WolStatus,
    pub shaping: ShapingStatus,
    /// Problems that need the user's attention now, one sentence each.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JellyfinStatus {
    pub reachable: bool,
    pub server_version: Option<String>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WanStatus {
    pub device: Option<String>,
    pub capacity_bps: Option<u64>,
    pub tx_bps: u64,
    pub jellyfin_bps: u64,
    pub other_bps: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Averages {
    #[serde(rename = "1m")]
    pub m1: u64,
    #[serde(rename = "5m")]
    pub m5: u64,
    #[serde(rename = "10m")]
    pub m10: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamStatus {
    pub session_id: String,
    pub user: String,
    pub client: String,
    pub device: String,
    pub remote_ip: String,
    pub external: bool,
    pub play_method: String,
    pub title: String,
    pub paused: bool,
    pub source_bps: Option<u64>,
    /// The Jellyfin limit this stream's user has now (0 = none set by us).
    pub limit_bps: u64,
    /// The router-side class rate for this viewer (0 = not shaped).
    pub shaped_bps: u64,
    /// Measured per viewer address (two sessions behind one address share the figure).
    pub measured_bps: Averages,
    pub restarts: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WolStatus {
    pub enabled: bool,
    /// Unix seconds of the last magic packet.
    pub last_wake: Option<u64>,
    /// Why it was sent: "session", "connect" or "manual".
    pub last_reason: Option<String>,
    pub wakes: u64,
    /// True when the server host answers, false while it sleeps (None: not known yet).
    pub server_awake: Option<bool>,
    /// "awake", "asleep", "waking" (a packet left, no answer yet) or "booting" (the host
    /// answers, Jellyfin not yet).
    pub server_state: Option<String>,
    /// Unix seconds since when the host has been silent.
    pub asleep_since: Option<u64>,
    /// Seconds from the last magic packet to Jellyfin's first answer after a sleep.
    pub awake_after_s: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShapingStatus {
    pub enabled: bool,
    /// True when the kernel and tc support what shaping needs.
    pub active: bool,
    pub error: Option<String>,
}
