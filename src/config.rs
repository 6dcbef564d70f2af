//! Typed, validated settings (DESIGN.md §4), built from a parsed UCI package.
//!
//! Every option has a default except `jellyfin.url` and `jellyfin.api_key`. An absent option
//! means its default, exactly as LuCI assumes when it drops options equal to their default.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// A string that must never reach a log, a status file or an error message.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"<hidden>\"" })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Equal,
    Priority,
    Demand,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Main {
    pub enabled: bool,
    /// Seconds per tick, 1..=300.
    pub interval: u32,
    pub dry_run: bool,
    pub log_level: LogLevel,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Jellyfin {
    /// `http://host:port[/base]`; `None` until the user sets it.
    pub url: Option<String>,
    pub api_key: Secret,
    /// LAN address the media traffic comes from; `None` = the url's host when it is an IP.
    pub server_ip: Option<IpAddr>,
    pub ports: Vec<u16>,
    /// Seconds per HTTP call.
    pub timeout: u32,
    pub manage_limits: bool,
    pub restart_playback: bool,
    pub restart_min_interval: u32,
    pub notify_viewer: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub wan_interface: String,
    /// Explicit WAN device; wins over `wan_interface` when set.
    pub wan_device: Option<String>,
    pub lan_device: String,
    pub internal: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bandwidth {
    /// Uplink capacity in Mbit/s; `None` = take SQM's configured upload.
    pub upload_mbps: Option<f64>,
    pub reserve_mbps: f64,
    /// Percent of capacity the total may use, 1..=100.
    pub target_pct: f64,
    pub algorithm: Algorithm,
    pub min_stream_mbps: f64,
    pub max_stream_mbps: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    /// Jellyfin user name, compared case-insensitively.
    pub name: String,
    pub priority: f64,
    pub min_mbps: Option<f64>,
    pub max_mbps: Option<f64>,
    pub exempt: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Shaping {
    pub enabled: bool,
    /// Class ceil = share * burst_pct / 100.
    pub burst_pct: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Wol {
    pub enabled: bool,
    pub mac: Option<[u8; 6]>,
    /// SecureOn password (4 or 6 bytes), optional.
    pub password: Option<Vec<u8>>,
    pub interface: String,
    pub broadcast: Option<Ipv4Addr>,
    pub on_connect: bool,
    pub on_session: bool,
    pub cooldown: u32,
    pub idle_minutes: u32,
    /// argv, split without a shell; empty = none.
    pub idle_command: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    pub prometheus_file: Option<PathBuf>,
    pub webhook_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub main: Main,
    pub jellyfin: Jellyfin,
    pub network: Network,
    pub bandwidth: Bandwidth,
    pub users: Vec<User>,
    pub shaping: Shaping,
    pub wol: Wol,
    pub publish: Publish,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            main: Main {
                enabled: false,
                interval: 5,
                dry_run: false,
                log_level: LogLevel::Info,
                state_dir: PathBuf::from("/etc/jellydemon"),
                run_dir: PathBuf::from("/var/run/jellydemon"),
            },
            jellyfin: Jellyfin {
                url: None,
                api_key: Secret::default(),
                server_ip: None,
                ports: vec![8096],
                timeout: 5,
                manage_limits: true,
                restart_playback: true,
                restart_min_interval: 600,
                notify_viewer: true,
            },
            network: Network {
                wan_interface: "wan".into(),
                wan_device: None,
                lan_device: "br-lan".into(),
                internal: ["192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "fc00::/7"]
                    .iter()
                    .map(|s| s.parse().expect("built-in default"))
                    .collect(),
            },
            bandwidth: Bandwidth {
                upload_mbps: None,
                reserve_mbps: 2.0,
                target_pct: 90.0,
                algorithm: Algorithm::Equal,
                min_stream_mbps: 1.0,
                max_stream_mbps: 20.0,
            },
            users: Vec::new(),
            shaping: Shaping {
                enabled: true,
                burst_pct: 115,
            },
            wol: Wol {
                enabled: false,
                mac: None,
                password: None,
                interface: "br-lan".into(),
                broadcast: None,
                on_connect: true,
                on_session: true,
                cooldown: 60,
                idle_minutes: 0,
                idle_command: Vec::new(),
            },
            publish: Publish {
                prometheus_file: None,
                webhook_url: None,
            },
        }
    }
}

impl Config {
    /// The per-user settings for a Jellyfin user name (case-insensitive), if any.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name.eq_ignore_ascii_case(name))
    }

    /// The server's LAN address: `server_ip`, else the url's host when that is an IP literal.
    pub fn server_ip(&self) -> Option<IpAddr> {
        if let Some(ip) = self.jellyfin.server_ip {
            return Some(ip);
        }
        let url = self.jellyfin.url.as_deref()?;
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
        let authority = rest.split('/').next().unwrap_or("");
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority)
        };
        host.parse().ok()
    }
}
