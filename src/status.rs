//! The status file (DESIGN.md §6): what the daemon publishes each tick for the CLI, LuCI and
//! Prometheus. Field names are a contract; add, never rename.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::firewall::Offload;

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

impl Status {
    /// Reads a status file for `jellydemon status`. By hand rather than through the derived
    /// `Deserialize` (the same result, tested below, for a fraction of the code in a router's
    /// binary): unknown fields are ignored, missing or mistyped ones take their defaults.
    pub fn from_json(v: &Value) -> Status {
        let v = J(v);
        let jf = v.at("jellyfin");
        let wan = v.at("wan");
        let wol = v.at("wol");
        let sh = v.at("shaping");
        let net = v.at("network");
        Status {
            version: v.at("version").u32(),
            updated: v.at("updated").u64(),
            interval: v.at("interval").u32(),
            dry_run: v.at("dry_run").bool(),
            managing: v.at("managing").bool(),
            managing_reason: v.at("managing_reason").opt_string(),
            jellyfin: JellyfinStatus {
                reachable: jf.at("reachable").bool(),
                server_version: jf.at("server_version").opt_string(),
                error: jf.at("error").opt_string(),
            },
            wan: WanStatus {
                device: wan.at("device").opt_string(),
                capacity_bps: wan.at("capacity_bps").opt_u64(),
                tx_bps: wan.at("tx_bps").u64(),
                jellyfin_bps: wan.at("jellyfin_bps").u64(),
                other_bps: wan.at("other_bps").u64(),
            },
            budget_bps: v.at("budget_bps").u64(),
            streams: v.at("streams").items().map(stream_from_json).collect(),
            wol: WolStatus {
                enabled: wol.at("enabled").bool(),
                last_wake: wol.at("last_wake").opt_u64(),
                last_reason: wol.at("last_reason").opt_string(),
                wakes: wol.at("wakes").u64(),
                server_awake: wol.at("server_awake").0.as_bool(),
                server_state: wol.at("server_state").opt_string(),
                asleep_since: wol.at("asleep_since").opt_u64(),
                awake_after_s: wol.at("awake_after_s").0.as_f64(),
            },
            shaping: ShapingStatus {
                enabled: sh.at("enabled").bool(),
                active: sh.at("active").bool(),
                error: sh.at("error").opt_string(),
            },
            network: NetworkStatus {
                lan_device: net.at("lan_device").opt_string(),
                internal: net.at("internal").strings(),
                internal_fallback: net.at("internal_fallback").bool(),
                server_ip6: net.at("server_ip6").opt_string(),
                flow_offloading: Offload::deserialize(net.at("flow_offloading").0)
                    .unwrap_or_default(),
            },
            errors: v.at("errors").strings(),
        }
    }
}

fn stream_from_json(s: J<'_>) -> StreamStatus {
    let m = s.at("measured_bps");
    StreamStatus {
        session_id: s.at("session_id").string(),
        user: s.at("user").string(),
        client: s.at("client").string(),
        device: s.at("device").string(),
        remote_ip: s.at("remote_ip").string(),
        external: s.at("external").bool(),
        play_method: s.at("play_method").string(),
        title: s.at("title").string(),
        paused: s.at("paused").bool(),
        source_bps: s.at("source_bps").opt_u64(),
        limit_bps: s.at("limit_bps").u64(),
        shaped_bps: s.at("shaped_bps").u64(),
        measured_bps: Averages {
            m1: m.at("1m").u64(),
            m5: m.at("5m").u64(),
            m10: m.at("10m").u64(),
        },
        restarts: s.at("restarts").u32(),
    }
}

#[derive(Clone, Copy)]
struct J<'a>(&'a Value);

impl<'a> J<'a> {
    fn at(self, key: &str) -> J<'a> {
        J(self.0.get(key).unwrap_or(&Value::Null))
    }
    fn items(self) -> impl Iterator<Item = J<'a>> {
        self.0.as_array().into_iter().flatten().map(J)
    }
    fn opt_u64(self) -> Option<u64> {
        self.0.as_u64()
    }
    fn u64(self) -> u64 {
        self.0.as_u64().unwrap_or(0)
    }
    fn u32(self) -> u32 {
        self.0
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    }
    fn bool(self) -> bool {
        self.0.as_bool().unwrap_or(false)
    }
    fn opt_string(self) -> Option<String> {
        self.0.as_str().map(str::to_string)
    }
    fn string(self) -> String {
        self.opt_string().unwrap_or_default()
    }
    fn strings(self) -> Vec<String> {
        self.items().filter_map(J::opt_string).collect()
    }
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

    /// Every field set to something other than its default: the hand-written reader gives back
    /// exactly what was written. A field added to the status without adding it to `from_json`
    /// makes this fail.
    #[test]
    fn from_json_reads_back_every_field() {
        let st = Status {
            version: 1,
            updated: 1_795_829_403,
            interval: 5,
            dry_run: true,
            managing: true,
            managing_reason: Some("r".into()),
            jellyfin: JellyfinStatus {
                reachable: true,
                server_version: Some("10.11.11".into()),
                error: Some("e".into()),
            },
            wan: WanStatus {
                device: Some("eth0".into()),
                capacity_bps: Some(20_000_000),
                tx_bps: 1,
                jellyfin_bps: 2,
                other_bps: 3,
            },
            budget_bps: 4,
            streams: vec![
                StreamStatus {
                    session_id: "s".into(),
                    user: "alice".into(),
                    client: "Web".into(),
                    device: "Firefox".into(),
                    remote_ip: "203.0.113.7".into(),
                    external: true,
                    play_method: "Transcode".into(),
                    title: "movie: x".into(),
                    paused: true,
                    source_bps: Some(5),
                    limit_bps: 6,
                    shaped_bps: 7,
                    measured_bps: Averages {
                        m1: 8,
                        m5: 9,
                        m10: 10,
                    },
                    restarts: 11,
                },
                StreamStatus::default(),
            ],
            wol: WolStatus {
                enabled: true,
                last_wake: Some(12),
                last_reason: Some("connect".into()),
                wakes: 13,
                server_awake: Some(false),
                server_state: Some("asleep".into()),
                asleep_since: Some(14),
                awake_after_s: Some(1.5),
            },
            shaping: ShapingStatus {
                enabled: true,
                active: true,
                error: Some("x".into()),
            },
            network: NetworkStatus {
                lan_device: Some("br-lan".into()),
                internal: vec!["192.168.1.0/24".into(), "fd00::/64".into()],
                internal_fallback: true,
                server_ip6: Some("fd00::2".into()),
                flow_offloading: Offload::Hardware,
            },
            errors: vec!["a".into(), "b".into()],
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(Status::from_json(&v), st);
        // The derived reader agrees (it stays for the tests and tools).
        assert_eq!(serde_json::from_value::<Status>(v).unwrap(), st);
        assert_eq!(Status::from_json(&Value::Null), Status::default());
        let odd =
            serde_json::json!({"updated": "soon", "streams": [1, {"user": 7}], "errors": [1]});
        let got = Status::from_json(&odd);
        assert_eq!(
            (got.updated, got.streams.len(), got.errors.len()),
            (0, 2, 0)
        );
    }
}
