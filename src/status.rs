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
    /// True when the daemon divides a known uplink and enforces the result; false while it
    /// cannot (then remote streams pass unlimited and `managing_reason` says why).
    pub managing: bool,
    /// Why the daemon is not managing, one sentence; `None` while it is.
    pub managing_reason: Option<String>,
    pub jellyfin: JellyfinStatus,
    pub wan: WanStatus,
    pub budget_bps: u64,
    pub streams: Vec<StreamStatus>,
    pub wol: WolStatus,
    pub shaping: ShapingStatus,
    pub network: NetworkStatus,
    /// Problems that need the user's attention now, one sentence each.
    pub errors: Vec<String>,
}

/// Why the daemon does not manage the uplink now, or `None` when it does. Pure, so the rule
/// is tested: no capacity means no division and no cap; no plan yet (Jellyfin never answered)
/// means nothing to enforce; a dry run changes nothing.
pub fn unmanaged_reason(
    capacity_known: bool,
    decided: bool,
    dry_run: bool,
    jellyfin_error: Option<&str>,
) -> Option<String> {
    if !capacity_known {
        return Some(
            "uplink capacity unknown (set bandwidth.upload_mbps, configure SQM on the WAN device, \
             or set bandwidth.capacity 'auto'): remote streams pass unlimited"
                .into(),
        );
    }
    if !decided {
        return Some(match jellyfin_error {
            Some(e) => format!("no answer from Jellyfin yet ({e}): remote streams pass unlimited"),
            None => "waiting for Jellyfin's sessions: remote streams pass unlimited".into(),
        });
    }
    if dry_run {
        return Some("dry run: decisions are logged, nothing is changed".into());
    }
    None
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

/// The home network as the daemon follows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworkStatus {
    /// The LAN device the server's packets are shaped on (`null` while unknown).
    pub lan_device: Option<String>,
    /// Every network whose viewers count as local, interfaces resolved.
    pub internal: Vec<String>,
    /// True when netifd gave no network for the interfaces in `internal`, so the private
    /// ranges (RFC 1918, ULA) stand in.
    pub internal_fallback: bool,
    /// The server's IPv6 address shaping and counting match (`null`: IPv6 left alone).
    pub server_ip6: Option<String>,
    /// Flow offloading in the firewall: "off", "software" or "hardware". When on, the LAN
    /// ingress hook misses established connections: router-side shaping cannot work.
    pub flow_offloading: crate::firewall::Offload,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managing_needs_a_capacity_a_plan_and_no_dry_run() {
        assert_eq!(unmanaged_reason(true, true, false, None), None);
        let r = unmanaged_reason(false, true, false, None).unwrap();
        assert!(
            r.contains("capacity unknown") && r.contains("unlimited"),
            "{r}"
        );
        // The capacity is the first thing to fix, whatever else is wrong.
        assert_eq!(unmanaged_reason(false, false, true, Some("x")), Some(r));
        let r = unmanaged_reason(true, false, false, Some("connection refused")).unwrap();
        assert!(
            r.contains("connection refused") && r.contains("unlimited"),
            "{r}"
        );
        assert!(unmanaged_reason(true, false, false, None)
            .unwrap()
            .contains("waiting"));
        assert!(unmanaged_reason(true, true, true, None)
            .unwrap()
            .contains("dry run"));
    }

    #[test]
    fn old_status_files_still_parse() {
        // A file from before `managing` existed reads as not managing, with no reason.
        let st: Status = serde_json::from_str(r#"{"version":1,"budget_bps":5}"#).unwrap();
        assert!(!st.managing);
        assert_eq!(st.managing_reason, None);
        assert_eq!(st.budget_bps, 5);
    }
}
