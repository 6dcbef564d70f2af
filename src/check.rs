//! `jellydemon check`: every prerequisite, one line each, with what to do about what fails.

use crate::config::{self, Config};
use crate::daemon;
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    pub level: Level,
    pub what: String,
    pub fix: Option<String>,
}

impl Line {
    fn ok(what: impl Into<String>) -> Line {
        Line {
            level: Level::Ok,
            what: what.into(),
            fix: None,
        }
    }
    fn warn(what: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            level: Level::Warn,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Line {
        Line {
            level: Level::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// The report text and the exit code (0 when nothing failed; warnings do not fail).
pub fn render(lines: &[Line]) -> (String, u8) {
    let mut out = String::new();
    for l in lines {
        let tag = match l.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        out.push_str(&format!("{tag}  {}\n", l.what));
        if let Some(f) = &l.fix {
            out.push_str(&format!("      -> {f}\n"));
        }
    }
    let failed = lines.iter().filter(|l| l.level == Level::Fail).count();
    if failed == 0 {
        out.push_str("all checks passed\n");
    } else {
        out.push_str(&format!("{failed} check(s) failed\n"));
    }
    (out, u8::from(failed > 0))
}

/// Runs every check against the configuration at `path` and prints the report.
pub fn run(path: &Path) -> u8 {
    let lines = gather(path);
    let (text, code) = render(&lines);
    crate::print_out(text);
    code
}

fn gather(path: &Path) -> Vec<Line> {
    let mut lines = Vec::new();
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            lines.push(Line::fail(
                format!("configuration: {e}"),
                "fix the file (LuCI > Services > JellyDemon, or uci set ...; uci commit jellydemon)",
            ));
            return lines;
        }
    };
    lines.push(Line::ok(format!(
        "configuration {} parsed{}",
        path.display(),
        if loaded.warnings.is_empty() {
            String::new()
        } else {
            format!(" ({} warning(s))", loaded.warnings.len())
        }
    )));
    for w in &loaded.warnings {
        lines.push(Line::warn(w.clone(), "remove or correct the option"));
    }
    let cfg = &loaded.config;
    if !cfg.main.enabled {
        lines.push(Line::warn(
            "the service is disabled (main.enabled '0')",
            "uci set jellydemon.main.enabled=1; uci commit jellydemon; /etc/init.d/jellydemon enable; /etc/init.d/jellydemon start",
        ));
    }
    lines.push(check_jellyfin(cfg));
    let wan = daemon::wan_device(cfg);
    match &wan {
        Ok(dev) => match crate::observe::read_tx_bytes(Path::new(daemon::SYS_ROOT), dev) {
            Ok(_) => lines.push(Line::ok(format!("WAN device {dev} found"))),
            Err(e) => lines.push(Line::fail(
                format!("WAN device: {e}"),
                "set network.wan_device to the device that carries the upload (ip link)",
            )),
        },
        Err(e) => lines.push(Line::fail(
            format!("WAN device: {e}"),
            "set network.wan_device (e.g. eth1, pppoe-wan)",
        )),
    }
    match daemon::capacity(cfg, wan.as_deref().ok(), Path::new(daemon::SQM_CONFIG)) {
        Some(c) => lines.push(Line::ok(format!(
            "uplink capacity {:.1} Mbit/s ({})",
            c as f64 / 1e6,
            if cfg.bandwidth.upload_mbps.is_some() {
                "bandwidth.upload_mbps"
            } else {
                "from SQM"
            }
        ))),
        None => lines.push(Line::fail(
            "uplink capacity unknown: limits will not be managed",
            "set bandwidth.upload_mbps to about 90% of your measured upload",
        )),
    }
    match cfg.server_ip() {
        Some(ip) => lines.push(Line::ok(format!("media server address {ip}"))),
        None => lines.push(Line::fail(
            "media server address unknown (jellyfin.url has a host name)",
            "set jellyfin.server_ip to the server's LAN address",
        )),
    }
    if !Path::new(&format!(
        "{}/class/net/{}",
        daemon::SYS_ROOT,
        cfg.network.lan_device
    ))
    .exists()
    {
        lines.push(Line::fail(
            format!("LAN device {} not found", cfg.network.lan_device),
            "set network.lan_device (usually br-lan)",
        ));
    } else {
        lines.push(Line::ok(format!(
            "LAN device {} found",
            cfg.network.lan_device
        )));
    }
    lines.extend(check_shaping(cfg));
    lines.push(check_conntrack());
    lines.extend(check_bridge_netfilter());
    lines.extend(check_wol(cfg));
    for (name, dir) in [
        ("state_dir", &cfg.main.state_dir),
        ("run_dir", &cfg.main.run_dir),
    ] {
        lines.push(match writable(dir) {
            Ok(()) => Line::ok(format!("{name} {} writable", dir.display())),
            Err(e) => Line::fail(
                format!("{name} {}: {e}", dir.display()),
                format!("create it or set main.{name}"),
            ),
        });
    }
    lines
}

fn writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(".check{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

fn check_jellyfin(cfg: &Config) -> Line {
    let mut server = match daemon::server_for(cfg, Duration::from_secs(cfg.jellyfin.timeout as u64))
    {
        Ok(s) => s,
        Err(e) => return Line::fail(
            format!("Jellyfin: {e}"),
            "set jellyfin.url (http://<server>:8096) and jellyfin.api_key (Dashboard > API Keys)",
        ),
    };
    match server.system_info() {
        Ok(info) => Line::ok(format!(
            "Jellyfin {} reachable, API key accepted",
            info.version.as_deref().unwrap_or("(version unknown)")
        )),
        Err(crate::jellyfin::Error::Unauthorized) | Err(crate::jellyfin::Error::Forbidden) => {
            Line::fail(
                "Jellyfin rejected the API key",
                "create a key in Dashboard > API Keys and set jellyfin.api_key",
            )
        }
        Err(e) => Line::fail(
            format!("Jellyfin unreachable: {e}"),
            "check jellyfin.url, that the server runs, and that the router can reach it",
        ),
    }
}

fn check_shaping(cfg: &Config) -> Vec<Line> {
    let caps = crate::shaper::probe("tc");
    let mut out = Vec::new();
    match caps.first_error().map(|e| e.to_string()) {
        None => out.push(Line::ok(format!(
            "tc, ifb and htb available{}",
            if caps.fq_codel {
                ""
            } else {
                " (no fq_codel: plain FIFO leaves)"
            }
        ))),
        Some(p) if cfg.shaping.enabled => out.push(Line::fail(
            format!("shaping unavailable: {p}"),
            "opkg install tc kmod-ifb kmod-sched-core (or set shaping.enabled '0')",
        )),
        Some(p) => out.push(Line::warn(
            format!("per-viewer counting unavailable: {p}"),
            "opkg install tc kmod-ifb kmod-sched-core",
        )),
    }
    out
}

fn check_conntrack() -> Line {
    let probe = match crate::conntrack::NetlinkSource::new() {
        Ok(_) => Ok("netlink"),
        Err(e) => {
            let p = crate::conntrack::ProcSource::new();
            std::fs::File::open(p.path())
                .map(|_| "/proc/net/nf_conntrack")
                .map_err(|_| e.to_string())
        }
    };
    match probe {
        Ok(how) => Line::ok(format!("conntrack readable ({how})")),
        Err(e) => Line::warn(
            format!("conntrack not readable: {e}"),
            "opkg install kmod-nf-conntrack-netlink (needed for Wake-on-LAN on connect and counting without tc)",
        ),
    }
}

fn check_bridge_netfilter() -> Vec<Line> {
    let mut on = Vec::new();
    for k in ["iptables", "ip6tables", "arptables"] {
        let p = format!("/proc/sys/net/bridge/bridge-nf-call-{k}");
        if std::fs::read_to_string(&p)
            .map(|v| v.trim() == "1")
            .unwrap_or(false)
        {
            on.push(k);
        }
    }
    if on.is_empty() {
        vec![]
    } else {
        vec![Line::warn(
            format!("bridge netfilter is on (bridge-nf-call-{}): LAN-side shaping breaks port-forward replies", on.join(", ")),
            "sysctl -w net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0",
        )]
    }
}

fn check_wol(cfg: &Config) -> Vec<Line> {
    if !cfg.wol.enabled {
        return vec![];
    }
    let mut out = Vec::new();
    match cfg.wol.mac {
        Some(m) => out.push(Line::ok(format!(
            "Wake-on-LAN target {}",
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        ))),
        None => out.push(Line::fail(
            "Wake-on-LAN enabled but wol.mac is not set",
            "set wol.mac to the media server's MAC address",
        )),
    }
    if Path::new(&format!(
        "{}/class/net/{}",
        daemon::SYS_ROOT,
        cfg.wol.interface
    ))
    .exists()
    {
        out.push(Line::ok(format!(
            "Wake-on-LAN interface {} found",
            cfg.wol.interface
        )));
    } else {
        out.push(Line::fail(
            format!("Wake-on-LAN interface {} not found", cfg.wol.interface),
            "set wol.interface to the LAN bridge (br-lan)",
        ));
    }
    // The asleep/down distinction probes the server's address; a host name gives none.
    if cfg.server_ip().is_none() {
        out.push(Line::warn(
            "the media server's IP address is unknown: a sleeping server will be reported as Jellyfin down",
            "set jellyfin.server_ip (or use an IP address in jellyfin.url)",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wol_without_server_address_warns() {
        let mut cfg = Config::default();
        cfg.wol.enabled = true;
        cfg.jellyfin.url = Some("http://nas.lan:8096".into());
        let lines = check_wol(&cfg);
        let (t, _) = render(&lines);
        assert!(
            t.contains("warn  the media server's IP address is unknown"),
            "{t}"
        );
        cfg.jellyfin.server_ip = Some("192.168.1.2".parse().unwrap());
        let (t, _) = render(&check_wol(&cfg));
        assert!(!t.contains("IP address is unknown"), "{t}");
    }

    #[test]
    fn render_exit_codes() {
        let (t, c) = render(&[Line::ok("a"), Line::warn("b", "do x")]);
        assert_eq!(c, 0);
        assert!(t.contains("ok    a") && t.contains("warn  b") && t.contains("-> do x"));
        assert!(t.ends_with("all checks passed\n"));
        let (t, c) = render(&[Line::ok("a"), Line::fail("b", "fix b")]);
        assert_eq!(c, 1);
        assert!(t.contains("FAIL  b") && t.ends_with("1 check(s) failed\n"));
    }

    #[test]
    fn bad_config_is_one_failing_line() {
        let p = std::env::temp_dir().join(format!("jd-check-{}", std::process::id()));
        std::fs::write(&p, "config jellydemon 'main'\n\toption interval '0'\n").unwrap();
        let lines = gather(&p);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].level, Level::Fail);
        assert!(lines[0].what.contains("interval"), "{:?}", lines[0]);
        std::fs::remove_file(&p).unwrap();
    }
}
