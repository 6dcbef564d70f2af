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
    lines.extend(check_lan(cfg));
    lines.extend(check_shaping(cfg));
    lines.push(check_conntrack());
    lines.extend(check_bridge_netfilter());
    lines.extend(check_wol(cfg));
    lines.extend(check_webhook(cfg, crate::tlsclient::TlsClient::find()));
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

/// An https webhook needs the router's TLS client; say which one posts, and what shows in `ps`.
fn check_webhook(cfg: &Config, tls: Option<crate::tlsclient::TlsClient>) -> Option<Line> {
    use crate::tlsclient::Kind;
    let url = cfg.publish.webhook_url.as_deref()?;
    if !url.get(..8)?.eq_ignore_ascii_case("https://") {
        return None;
    }
    Some(match tls {
        Some(c) if c.kind == Kind::Curl => Line::ok(format!(
            "webhook: https through {} (the URL is passed on stdin)",
            c.program.display()
        )),
        Some(c) => Line::warn(
            format!("webhook: https through {}", c.program.display()),
            "uclient-fetch takes the URL on its command line, visible in ps while an event is \
             posted; install curl to keep it hidden (opkg install curl / apk add curl)",
        ),
        None => Line::fail(
            "webhook: https needs the router's TLS client; neither curl nor uclient-fetch found",
            "opkg install uclient-fetch libustream-mbedtls ca-bundle (or curl)",
        ),
    })
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
        None => {
            out.push(Line::ok(format!(
                "tc, ifb and htb available{}",
                if caps.fq_codel {
                    ""
                } else {
                    " (no fq_codel: plain FIFO leaves)"
                }
            )));
            if let Some(e) = &caps.netlink_error {
                out.push(Line::warn(
                    format!("traffic control not readable over rtnetlink ({e}): every tick runs tc instead"),
                    "shaping works, at a process per listing; report this with your OpenWrt version",
                ));
            }
        }
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

/// The LAN device, the local networks and the server's IPv6 address, as netifd tells them.
fn check_lan(cfg: &Config) -> Vec<Line> {
    let mut out = Vec::new();
    match daemon::lan_device(cfg) {
        Ok(dev) if Path::new(&format!("{}/class/net/{dev}", daemon::SYS_ROOT)).exists() => {
            out.push(Line::ok(format!("LAN device {dev} found")))
        }
        Ok(dev) => out.push(Line::fail(
            format!("LAN device {dev} not found"),
            "set network.lan_interface to the interface the media server is on, or network.lan_device (e.g. br-lan)",
        )),
        Err(e) => out.push(Line::fail(
            format!("LAN device: {e}"),
            "set network.lan_interface (usually lan) or network.lan_device (e.g. br-lan)",
        )),
    }
    let internal = daemon::internal_networks(cfg, &cfg.network.internal);
    let list: Vec<String> = internal.nets.iter().map(|n| n.to_string()).collect();
    if internal.fallback {
        out.push(Line::warn(
            format!(
                "local networks: netifd gave none for {} ({}); the private ranges stand in: {}",
                cfg.network.internal_interfaces.join(", "),
                internal.problems.join("; "),
                list.join(" ")
            ),
            "check that the interface is up (ifstatus lan), or list the networks in network.internal (e.g. 192.168.1.0/24 2001:db8:1::/64)",
        ));
    } else {
        out.push(Line::ok(format!("local networks {}", list.join(" "))));
        for p in &internal.problems {
            out.push(Line::warn(
                p.clone(),
                "remove the name from network.internal or fix it",
            ));
        }
    }
    let global_v6 = internal.nets.iter().any(|n| match n {
        ipnet::IpNet::V6(n) => (n.addr().segments()[0] & 0xe000) == 0x2000,
        _ => false,
    });
    let learned = match (cfg.server_ip6(), daemon::lan_device(cfg)) {
        (None, Ok(lan)) => daemon::learn_server_ip6(cfg, &lan),
        _ => crate::neigh::Learned::None,
    };
    match (cfg.server_ip6(), learned) {
        (Some(ip), _) => out.push(Line::ok(format!("media server IPv6 address {ip}"))),
        (None, crate::neigh::Learned::One(ip)) => out.push(Line::ok(format!(
            "media server IPv6 address {ip} (from the neighbour table; set jellyfin.server_ip6 to fix it)"
        ))),
        (None, crate::neigh::Learned::Several(all)) => out.push(Line::warn(
            format!(
                "the media server has several IPv6 addresses ({}): remote IPv6 viewers are neither shaped nor counted",
                all.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            ),
            "set jellyfin.server_ip6 to the address its viewers use (the stable one, not a temporary one)",
        )),
        (None, _) if global_v6 => out.push(Line::warn(
            "the LAN has global IPv6 but the media server's IPv6 address is unknown: remote IPv6 viewers are neither shaped nor counted",
            "set jellyfin.server_ip6 to the server's global address (ip -6 addr on the server)",
        )),
        (None, _) => {}
    }
    let offload = crate::firewall::read_offload(Path::new(crate::firewall::FIREWALL_CONFIG));
    if offload.is_on() && cfg.shaping.enabled {
        out.push(Line::warn(offload.meaning(), offload.fix()));
    }
    out
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
        // The https rule for jellyfin.url fails with the hint the config load, LuCI and the
        // README give.
        std::fs::write(
            &p,
            "config jellyfin 'jellyfin'\n\toption url 'https://nas:8920'\n",
        )
        .unwrap();
        let lines = gather(&p);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].level, Level::Fail);
        assert!(
            lines[0].what.contains(config::JELLYFIN_HTTPS_HINT),
            "{:?}",
            lines[0]
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn https_webhooks_name_the_tls_client() {
        use crate::tlsclient::{Kind, TlsClient};
        let mut cfg = Config::default();
        assert_eq!(check_webhook(&cfg, None), None);
        cfg.publish.webhook_url = Some("http://ha.lan:8123/api/webhook/x".into());
        assert_eq!(check_webhook(&cfg, None), None);
        cfg.publish.webhook_url = Some("https://discord.com/api/webhooks/1/SECRET".into());
        let l = check_webhook(&cfg, None).unwrap();
        assert_eq!(l.level, Level::Fail);
        let tool = |kind, p: &str| {
            Some(TlsClient {
                kind,
                program: p.into(),
                ca_file: None,
            })
        };
        let l = check_webhook(&cfg, tool(Kind::Curl, "/usr/bin/curl")).unwrap();
        assert_eq!(l.level, Level::Ok);
        let l = check_webhook(&cfg, tool(Kind::UclientFetch, "/bin/uclient-fetch")).unwrap();
        assert_eq!(l.level, Level::Warn);
        assert!(!format!("{l:?}").contains("SECRET"), "{l:?}");
    }
}
