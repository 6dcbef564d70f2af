//! The emulated home network: Linux network namespaces joined by veth links, built with `ip`,
//! `nft`, `sysctl` and `tc` run as argument vectors (never through a shell).
//!
//! ```text
//!  [v0..vN: remote viewers]          [router]                         [jf: media server]
//!   198.51.100.10+i  ──┐      wan 198.51.100.1      br-lan 192.168.1.1 ──── 192.168.1.2
//!   2001:db8:1::10+i   ├─ [inet] ── (HTB modem) ── nft NAT + fwd ──┤      2001:db8:2::2
//!   sink/echo .200  ───┘  br0                                      └── [lan: household]
//!                                                                        192.168.1.10
//! ```
//!
//! Every run gets its own namespace names (`hn<pid>x<counter><role>`), so tests run in
//! parallel; [`HomeNet`]'s Drop kills what runs inside and deletes the namespaces, also when a
//! test panics. `homenet down --all` removes what a crashed run left behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Prefix of every namespace this module creates; `down --all` matches on it.
pub const PREFIX: &str = "hn";
/// Router's WAN device (the modem side), as the daemon's `network.wan_device`.
pub const WAN_DEV: &str = "wan";
/// Router's LAN bridge, as the daemon's `network.lan_device`.
pub const LAN_DEV: &str = "br-lan";
/// Router's WAN address (the public address viewers connect to).
pub const ROUTER_WAN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Router's WAN IPv6 address.
pub const ROUTER_WAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// Router's LAN address.
pub const ROUTER_LAN_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
/// Router's LAN IPv6 address.
pub const ROUTER_LAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The media server's LAN address.
pub const JF_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// The media server's global IPv6 address (routed, no NAT).
pub const JF_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);
/// The household host's LAN address.
pub const LAN_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
/// The household host's IPv6 address.
pub const LAN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
/// The internet server (sink and echo) address.
pub const INET_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
/// The internet server's IPv6 address.
pub const INET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x200);
/// The Jellyfin port, forwarded from the WAN to `jf`.
pub const JF_PORT: u16 = 8096;
/// The media server NIC's Ethernet address (fixed, so a Wake-on-LAN configuration can name it).
pub const JF_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// How long the emulated server takes from the magic packet to answering again.
pub const BOOT_DELAY: Duration = Duration::from_secs(8);

/// At most this many remote viewer hosts (their addresses stay below the sink's).
pub const MAX_VIEWERS: usize = 100;

/// Remote viewer `i`'s IPv4 address (198.51.100.10 + i, i < [`MAX_VIEWERS`]).
pub fn viewer_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + i.min(MAX_VIEWERS - 1) as u8)
}

/// Remote viewer `i`'s IPv6 address (2001:db8:1::10 + i, hex, i < [`MAX_VIEWERS`]).
pub fn viewer_v6(i: usize) -> Ipv6Addr {
    let host = 0x10 + i.min(MAX_VIEWERS - 1) as u16;
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, host)
}

/// How to build the network.
#[derive(Debug, Clone)]
pub struct Options {
    /// Modem uplink rate (router `wan` egress), kbit/s.
    pub uplink_kbit: u64,
    /// Modem buffer depth in milliseconds at the uplink rate (a deep FIFO: bufferbloat).
    pub buffer_ms: u64,
    /// Remote viewer hosts in the internet (each its own namespace and address).
    pub viewers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            uplink_kbit: 20_000,
            buffer_ms: 200,
            viewers: 4,
        }
    }
}

/// The FIFO byte limit that holds `buffer_ms` of traffic at `uplink_kbit` (at least 4 full
/// frames, so the queue never starves a single burst).
pub fn fifo_bytes(uplink_kbit: u64, buffer_ms: u64) -> u64 {
    (uplink_kbit.saturating_mul(buffer_ms) / 8).max(4 * 1514)
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether `name` is a namespace this module creates; returns the pid of its creator.
pub fn parse_ns_name(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let pid: u32 = pid.parse().ok()?;
    let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    let role = &rest[digits..];
    let ok_role = matches!(role, "r" | "j" | "l" | "i")
        || (role.len() > 1
            && role.starts_with('v')
            && role[1..].chars().all(|c| c.is_ascii_digit()));
    (digits > 0 && ok_role).then_some(pid)
}

/// A running emulated home network. Dropping it tears everything down.
pub struct HomeNet {
    /// Unique tag of this run (`hn<pid>x<n>`), the namespaces' common prefix.
    pub tag: String,
    /// The internet: sink, echo, a bridge joining the viewers and the router's WAN.
    pub inet: String,
    /// The router: jellydemon runs here.
    pub router: String,
    /// The media server host.
    pub jf: String,
    /// The household host.
    pub lan: String,
    /// Remote viewer hosts, `viewers[i]` has [`viewer_v4`]`(i)` / [`viewer_v6`]`(i)`.
    pub viewers: Vec<String>,
    /// How it was built.
    pub options: Options,
    pids: Mutex<Vec<u32>>,
    keep: bool,
}

/// Errors are plain strings naming the command and what it printed: test support only.
pub type Result<T> = std::result::Result<T, String>;

/// Runs `argv` with an optional stdin, waiting at most `timeout`; returns stdout.
pub fn run(argv: &[&str], stdin: Option<&str>, timeout: Duration) -> Result<String> {
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", argv.join(" ")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("{}: writing stdin: {e}", argv.join(" ")))?;
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(|e| format!("{}: {e}", argv.join(" ")))?,
        Err(_) => {
            kill_pid(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(format!("{}: timed out after {timeout:?}", argv.join(" ")));
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {} {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

const CMD_TIMEOUT: Duration = Duration::from_secs(20);

fn kill_pid(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
}

/// Pids of the processes inside namespace `ns`.
pub fn ns_pids(ns: &str) -> Vec<u32> {
    run(&["ip", "netns", "pids", ns], None, CMD_TIMEOUT)
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Names of all network namespaces (`ip netns list`).
pub fn list_namespaces() -> Vec<String> {
    run(&["ip", "netns", "list"], None, CMD_TIMEOUT)
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every process in `ns`, then deletes it. Errors are ignored: clean-up is best effort
/// and must go on for the other namespaces.
pub fn destroy_namespace(ns: &str) {
    for _ in 0..3 {
        let pids = ns_pids(ns);
        if pids.is_empty() {
            break;
        }
        for p in &pids {
            kill_pid(*p, nix::sys::signal::Signal::SIGKILL);
        }
    }
    let _ = run(&["ip", "netns", "del", ns], None, CMD_TIMEOUT);
}

/// Removes the namespaces of runs whose creating process is gone (or all, with `force`);
/// returns the names removed.
pub fn cleanup_leftovers(force: bool) -> Vec<String> {
    let mut removed = Vec::new();
    for ns in list_namespaces() {
        let Some(pid) = parse_ns_name(&ns) else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if force || !alive {
            destroy_namespace(&ns);
            removed.push(ns);
        }
    }
    removed
}

/// Removes the namespaces of one run, by tag (`hn<pid>x<n>`).
pub fn cleanup_tag(tag: &str) -> Vec<String> {
    let mut removed = Vec::new();
    for ns in list_namespaces() {
        if ns.starts_with(tag)
            && parse_ns_name(&ns).is_some()
            && ns[tag.len()..].starts_with(|c: char| c.is_ascii_lowercase())
        {
            destroy_namespace(&ns);
            removed.push(ns);
        }
    }
    removed
}

impl HomeNet {
    /// Builds the whole network. On error, whatever was created is removed again.
    pub fn up(options: &Options) -> Result<HomeNet> {
        if options.viewers > MAX_VIEWERS {
            return Err(format!("at most {MAX_VIEWERS} viewer hosts"));
        }
        if options.uplink_kbit == 0 {
            return Err("uplink rate must be positive".into());
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{}x{n}", std::process::id());
        let net = HomeNet {
            inet: format!("{tag}i"),
            router: format!("{tag}r"),
            jf: format!("{tag}j"),
            lan: format!("{tag}l"),
            viewers: (0..options.viewers).map(|i| format!("{tag}v{i}")).collect(),
            tag,
            options: options.clone(),
            pids: Mutex::new(Vec::new()),
            keep: false,
        };
        // On error `net` drops here and removes what exists.
        net.build()?;
        Ok(net)
    }

    /// All namespace names of this run.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![
            self.router.clone(),
            self.inet.clone(),
            self.jf.clone(),
            self.lan.clone(),
        ];
        v.extend(self.viewers.iter().cloned());
        v
    }

    /// Leaves the namespaces in place when dropped (`homenet up`); `homenet down TAG` removes
    /// them later.
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.tag.clone()
    }

    fn ip(&self, ns: &str, args: &[&str]) -> Result<String> {
        let mut argv = vec!["ip", "-n", ns];
        argv.extend_from_slice(args);
        run(&argv, None, CMD_TIMEOUT)
    }

    fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<String> {
        self.exec(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")])
    }

    /// A veth pair: `a` in `ns_a`, `b` in `ns_b`, both up, sending MTU-sized frames like a
    /// real NIC after segmentation (so the modem queue holds frames, not 64 KB GSO chunks).
    fn veth(&self, ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<()> {
        self.ip(
            ns_a,
            &[
                "link", "add", "name", a, "type", "veth", "peer", "name", b, "netns", ns_b,
            ],
        )?;
        for (ns, dev) in [(ns_a, a), (ns_b, b)] {
            self.ip(ns, &["link", "set", "dev", dev, "gso_max_size", "1514"])?;
            self.ip(ns, &["link", "set", "dev", dev, "up"])?;
        }
        Ok(())
    }

    fn addr(&self, ns: &str, dev: &str, cidr: &str) -> Result<String> {
        if cidr.contains(':') {
            self.ip(ns, &["-6", "addr", "add", cidr, "dev", dev, "nodad"])
        } else {
            self.ip(ns, &["addr", "add", cidr, "dev", dev])
        }
    }

    fn build(&self) -> Result<()> {
        for ns in self.namespaces() {
            run(&["ip", "netns", "add", &ns], None, CMD_TIMEOUT)?;
            self.ip(&ns, &["link", "set", "dev", "lo", "up"])?;
            // Addresses are static and unique here; duplicate detection would only delay
            // the first packets by a second or two.
            self.sysctl(&ns, "net.ipv6.conf.all.accept_dad", "0")?;
            self.sysctl(&ns, "net.ipv6.conf.default.accept_dad", "0")?;
            // Household devices and media servers run loss-based congestion control (CUBIC
            // on Linux, Windows and macOS); a host default of BBR would keep the modem queue
            // short by itself and hide the bufferbloat the product exists to avoid.
            if self
                .sysctl(&ns, "net.ipv4.tcp_congestion_control", "cubic")
                .is_err()
            {
                let _ = self.sysctl(&ns, "net.ipv4.tcp_congestion_control", "reno");
            }
        }
        self.build_router()?;
        self.build_lan()?;
        self.build_inet()?;
        self.firewall()?;
        self.modem()?;
        Ok(())
    }

    fn build_router(&self) -> Result<()> {
        let r = &self.router;
        self.sysctl(r, "net.ipv4.ip_forward", "1")?;
        self.sysctl(r, "net.ipv6.conf.all.forwarding", "1")?;
        self.ip(r, &["link", "add", "name", LAN_DEV, "type", "bridge"])?;
        self.ip(r, &["link", "set", "dev", LAN_DEV, "up"])?;
        // Bridge netfilter (br_netfilter, loaded on many Linux hosts and then active in every
        // new namespace) passes bridged frames through the IP hooks. With it on, the daemon's
        // LAN-side ifb redirect breaks the port forward's reply path: conntrack sees the reply
        // twice and it leaves with the server's LAN source address. OpenWrt does not load it,
        // so the emulated router turns it off. The keys exist only while the module is loaded.
        if self
            .exec(
                r,
                &["test", "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
            )
            .is_ok()
        {
            for key in ["iptables", "ip6tables", "arptables"] {
                self.sysctl(r, &format!("net.bridge.bridge-nf-call-{key}"), "0")?;
            }
        }
        self.addr(r, LAN_DEV, &format!("{ROUTER_LAN_V4}/24"))?;
        self.addr(r, LAN_DEV, &format!("{ROUTER_LAN_V6}/64"))?;
        self.veth(r, WAN_DEV, &self.inet, "up0")?;
        self.addr(r, WAN_DEV, &format!("{ROUTER_WAN_V4}/24"))?;
        self.addr(r, WAN_DEV, &format!("{ROUTER_WAN_V6}/64"))?;
        Ok(())
    }

    fn build_lan(&self) -> Result<()> {
        let r = &self.router;
        for (port, ns, v4, v6) in [
            ("lan1", &self.jf, JF_V4, JF_V6),
            ("lan2", &self.lan, LAN_V4, LAN_V6),
        ] {
            self.veth(r, port, ns, "eth0")?;
            if ns == &self.jf {
                self.ip(
                    ns,
                    &["link", "set", "dev", "eth0", "address", &mac_text(JF_MAC)],
                )?;
            }
            self.ip(r, &["link", "set", "dev", port, "master", LAN_DEV])?;
            self.addr(ns, "eth0", &format!("{v4}/24"))?;
            self.addr(ns, "eth0", &format!("{v6}/64"))?;
            self.ip(
                ns,
                &["route", "add", "default", "via", &ROUTER_LAN_V4.to_string()],
            )?;
            self.ip(
                ns,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &ROUTER_LAN_V6.to_string(),
                ],
            )?;
        }
        Ok(())
    }

    fn build_inet(&self) -> Result<()> {
        let i = &self.inet;
        // The inet bridge is not a router under test: keep bridged frames out of IP hooks.
        if self
            .exec(
                i,
                &["test", "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
            )
            .is_ok()
        {
            for key in ["iptables", "ip6tables", "arptables"] {
                self.sysctl(i, &format!("net.bridge.bridge-nf-call-{key}"), "0")?;
            }
        }
        self.ip(i, &["link", "add", "name", "br0", "type", "bridge"])?;
        self.ip(i, &["link", "set", "dev", "br0", "up"])?;
        self.ip(i, &["link", "set", "dev", "up0", "master", "br0"])?;
        self.addr(i, "br0", &format!("{INET_V4}/24"))?;
        self.addr(i, "br0", &format!("{INET_V6}/64"))?;
        // The LAN's IPv6 prefix is routed (no NAT), as a provider would.
        self.ip(
            i,
            &[
                "-6",
                "route",
                "add",
                "2001:db8:2::/64",
                "via",
                &ROUTER_WAN_V6.to_string(),
            ],
        )?;
        for (k, v) in self.viewers.iter().enumerate() {
            let port = format!("v{k}");
            self.veth(i, &port, v, "eth0")?;
            self.ip(i, &["link", "set", "dev", &port, "master", "br0"])?;
            self.addr(v, "eth0", &format!("{}/24", viewer_v4(k)))?;
            self.addr(v, "eth0", &format!("{}/64", viewer_v6(k)))?;
            self.ip(
                v,
                &["route", "add", "default", "via", &ROUTER_WAN_V4.to_string()],
            )?;
            self.ip(
                v,
                &[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &ROUTER_WAN_V6.to_string(),
                ],
            )?;
        }
        Ok(())
    }

    fn firewall(&self) -> Result<()> {
        self.exec_stdin(&self.router, &["nft", "-f", "-"], &nft_ruleset())?;
        // Per-connection byte counters, as OpenWrt has them on (the daemon reads them). Set
        // after the ruleset, which loads conntrack on a fresh host (the key exists only then).
        self.sysctl(&self.router, "net.netfilter.nf_conntrack_acct", "1")?;
        Ok(())
    }

    fn modem(&self) -> Result<()> {
        self.modem_on(WAN_DEV)
    }

    /// The modem's uplink bottleneck on the router's WAN device `wan`.
    fn modem_on(&self, wan: &str) -> Result<()> {
        let rate = format!("{}kbit", self.options.uplink_kbit);
        let limit = fifo_bytes(self.options.uplink_kbit, self.options.buffer_ms).to_string();
        let r = &self.router;
        let tc = |args: &[&str]| {
            let mut argv = vec!["tc"];
            argv.extend_from_slice(args);
            self.exec(r, &argv)
        };
        tc(&[
            "qdisc", "replace", "dev", wan, "root", "handle", "1:", "htb", "default", "1",
        ])?;
        tc(&[
            "class", "add", "dev", wan, "parent", "1:", "classid", "1:1", "htb", "rate", &rate,
            "ceil", &rate, "quantum", "1514",
        ])?;
        tc(&[
            "qdisc", "add", "dev", wan, "parent", "1:1", "handle", "10:", "bfifo", "limit", &limit,
        ])?;
        Ok(())
    }

    /// A PPPoE reconnect: the WAN device `old` disappears and a new one, `new` (the same name
    /// or another), comes up with counters from zero, the same addresses, the modem's
    /// bottleneck, and the firewall rules rewritten for it (as firewall4 reloads on ifup).
    /// Between the two the router has no WAN: connections through it stall or break.
    pub fn wan_down(&self, old: &str) -> Result<()> {
        self.ip(&self.router, &["link", "del", "dev", old])?;
        Ok(())
    }

    /// The WAN back as device `new` (see [`HomeNet::wan_down`]).
    pub fn wan_up(&self, new: &str) -> Result<()> {
        let r = &self.router;
        self.veth(r, new, &self.inet, "up0")?;
        self.ip(&self.inet, &["link", "set", "dev", "up0", "master", "br0"])?;
        self.addr(r, new, &format!("{ROUTER_WAN_V4}/24"))?;
        self.addr(r, new, &format!("{ROUTER_WAN_V6}/64"))?;
        self.exec(r, &["nft", "delete", "table", "inet", "homenet"])?;
        self.exec_stdin(r, &["nft", "-f", "-"], &nft_ruleset_for(new))?;
        self.modem_on(new)
    }

    /// Runs `argv` inside `ns` (`ip netns exec`), returns its stdout.
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(argv);
        run(&full, None, CMD_TIMEOUT)
    }

    /// Like [`HomeNet::exec`], feeding `stdin` to the program.
    pub fn exec_stdin(&self, ns: &str, argv: &[&str], stdin: &str) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(argv);
        run(&full, Some(stdin), CMD_TIMEOUT)
    }

    /// Starts `argv` inside `ns` with stdout piped (stderr inherited). The process is killed
    /// when the network is dropped, if it still runs.
    pub fn spawn(&self, ns: &str, argv: &[&str]) -> Result<Child> {
        self.spawn_with(ns, argv, Stdio::inherit())
    }

    /// Like [`HomeNet::spawn`] with a chosen stderr.
    pub fn spawn_with(&self, ns: &str, argv: &[&str], stderr: Stdio) -> Result<Child> {
        self.spawn_io(ns, argv, Stdio::piped(), stderr)
    }

    /// Like [`HomeNet::spawn`] with chosen stdout and stderr (e.g. a log file for a chatty
    /// program nobody reads, whose pipe would otherwise fill up and block it).
    pub fn spawn_io(&self, ns: &str, argv: &[&str], stdout: Stdio, stderr: Stdio) -> Result<Child> {
        // Own process group: a Ctrl-C on the terminal reaches only the caller, which then stops
        // its children in order (the daemon first, so it can restore what it changed).
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("ip netns exec {ns} {}: {e}", argv.join(" ")))?;
        if let Ok(mut p) = self.pids.lock() {
            p.push(child.id());
        }
        Ok(child)
    }

    /// Bytes sent by the router's WAN device (the modem's uplink counter).
    pub fn wan_tx_bytes(&self) -> Result<u64> {
        let out = self.ip(&self.router, &["-j", "-s", "link", "show", "dev", WAN_DEV])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("ip -j -s link: {e}"))?;
        v.get(0)
            .and_then(|l| l.get("stats64"))
            .and_then(|s| s.get("tx"))
            .and_then(|t| t.get("bytes"))
            .and_then(|b| b.as_u64())
            .ok_or_else(|| format!("no tx bytes in {out}"))
    }

    /// The address of viewer host `i`, v4 or v6.
    pub fn viewer_addr(&self, i: usize, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(viewer_v6(i))
        } else {
            IpAddr::V4(viewer_v4(i))
        }
    }

    /// The viewer namespace holding `addr`, if any.
    pub fn viewer_ns_for(&self, addr: IpAddr) -> Option<&str> {
        (0..self.viewers.len())
            .find(|&i| self.viewer_addr(i, false) == addr || self.viewer_addr(i, true) == addr)
            .map(|i| self.viewers[i].as_str())
    }

    /// Sends SIGTERM to `child` without waiting (to stop several at once, then [`HomeNet::stop`]
    /// each).
    pub fn terminate(child: &Child) {
        kill_pid(child.id(), nix::sys::signal::Signal::SIGTERM);
    }

    /// Sends SIGTERM to `child`, waits up to `grace`, then kills it. Returns whether it left
    /// on its own.
    pub fn stop(child: &mut Child, grace: Duration) -> bool {
        kill_pid(child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return true,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---- the sleeping media server ---------------------------------------------------------------
//
// How a real sleeping (suspended, soft-off) machine behaves (reference/real-world.md, "Hosts and
// servers"; reference/openwrt.md §9): it answers nothing — no TCP RST, no ICMP, no ARP/ND
// reply — so a TCP connect to it ends in a timeout, or EHOSTUNREACH once the sender's
// neighbour resolution gives up (~3 s on Linux), never in "connection refused". Only its NIC
// listens, for a magic packet (6 x 0xFF then its MAC 16 times) anywhere in a frame: the UDP
// form (port 9) and the raw ethertype 0x0842 form both wake it. Then it needs some seconds to
// resume before its services answer.
//
// The emulation: nftables tables in the server's namespace drop every packet in and out
// (families inet, covering IPv4/IPv6 with ICMP and ND, and arp), which makes the host silent
// without touching its processes; an AF_PACKET socket (the NIC's pattern matcher) sees every
// frame before those hooks — packet taps run in __netif_receive_skb_core before the
// protocol handlers (net/core/dev.c) — and, on a frame carrying the magic pattern for
// [`JF_MAC`], removes the tables after the boot delay.

const SLEEP_TABLE: &str = "homenet_sleep";

fn sleep_ruleset() -> String {
    let chains = "    chain in { type filter hook input priority -400; policy drop; }\n    \
                  chain out { type filter hook output priority -400; policy drop; }\n";
    let arp = "    chain in { type filter hook input priority 0; policy drop; }\n    \
               chain out { type filter hook output priority 0; policy drop; }\n";
    format!("table inet {SLEEP_TABLE} {{\n{chains}}}\ntable arp {SLEEP_TABLE} {{\n{arp}}}\n")
}

/// True when `frame` carries the magic pattern for `mac` anywhere (what a NIC matches).
pub fn carries_magic(frame: &[u8], mac: [u8; 6]) -> bool {
    let mut pattern = vec![0xFFu8; 6];
    for _ in 0..16 {
        pattern.extend_from_slice(&mac);
    }
    frame
        .windows(pattern.len())
        .any(|w| w == pattern.as_slice())
}

/// What happened to the sleeping server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SleepEvent {
    /// A magic packet for its MAC reached the NIC (`raw`: the 0x0842 form, else UDP).
    Magic { at: Instant, raw: bool },
    /// It answers again.
    Awake { at: Instant },
}

/// The media server asleep until a magic packet wakes it; see the notes above.
pub struct Sleeper {
    events: Receiver<SleepEvent>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Sleeper {
    /// The next event, or None after `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<SleepEvent> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl HomeNet {
    /// Puts the media server to sleep: silent until a magic packet for [`JF_MAC`] reaches its
    /// NIC, then awake again `boot_delay` later. Processes in its namespace keep running (the
    /// Jellyfin emulator resumes with the host).
    pub fn sleep_server(&self, boot_delay: Duration) -> Result<Sleeper> {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let ns = self.jf.clone();
        // The NIC listens before the host goes silent, so no packet falls between the two.
        std::thread::spawn(move || {
            let nic = match open_nic(&ns) {
                Ok(n) => n,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut buf = vec![0u8; 2048];
            let mut woken = None;
            while !flag.load(Ordering::Relaxed) {
                if let Some(t) = woken {
                    if Instant::now() >= t {
                        for family in ["inet", "arp"] {
                            if let Err(e) = run(
                                &[
                                    "ip",
                                    "netns",
                                    "exec",
                                    &ns,
                                    "nft",
                                    "delete",
                                    "table",
                                    family,
                                    SLEEP_TABLE,
                                ],
                                None,
                                CMD_TIMEOUT,
                            ) {
                                eprintln!("waking the server: {e}");
                            }
                        }
                        let _ = tx.send(SleepEvent::Awake { at: Instant::now() });
                        return;
                    }
                }
                let Some(n) = nic_recv(&nic, &mut buf, Duration::from_millis(50)) else {
                    continue;
                };
                let frame = &buf[..n];
                if woken.is_none() && carries_magic(frame, JF_MAC) {
                    let at = Instant::now();
                    let raw = frame.len() >= 14 && frame[12..14] == [0x08, 0x42];
                    let _ = tx.send(SleepEvent::Magic { at, raw });
                    woken = Some(at + boot_delay);
                }
            }
        });
        // Dropped on every way out, the sleeper stops the NIC thread.
        let sleeper = Sleeper { events: rx, stop };
        ready_rx
            .recv_timeout(CMD_TIMEOUT)
            .map_err(|_| "the sleeping NIC did not open".to_string())??;
        self.exec_stdin(&self.jf, &["nft", "-f", "-"], &sleep_ruleset())?;
        Ok(sleeper)
    }
}

/// A packet socket on `eth0` of namespace `ns`, seeing every frame (the NIC's view).
fn open_nic(ns: &str) -> Result<std::os::fd::OwnedFd> {
    use nix::libc;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let f = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| format!("{ns}: {e}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns: {e}"))?;
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain syscalls on values owned here; the descriptor is owned at once.
    unsafe {
        let raw = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(all),
        );
        if raw < 0 {
            return Err(format!(
                "packet socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = all;
        sll.sll_ifindex =
            nix::net::if_::if_nametoindex("eth0").map_err(|e| format!("eth0: {e}"))? as i32;
        let r = libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if r != 0 {
            return Err(format!("bind: {}", std::io::Error::last_os_error()));
        }
        Ok(fd)
    }
}

fn nic_recv(fd: &std::os::fd::OwnedFd, buf: &mut [u8], wait: Duration) -> Option<usize> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::{AsFd, AsRawFd};
    let ms = PollTimeout::try_from(wait.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, ms).ok()? == 0 {
        return None;
    }
    nix::sys::socket::recv(
        fd.as_raw_fd(),
        buf,
        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
    )
    .ok()
}

impl Drop for HomeNet {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Ok(pids) = self.pids.lock() {
            for p in pids.iter() {
                kill_pid(*p, nix::sys::signal::Signal::SIGKILL);
            }
        }
        for ns in self.namespaces() {
            destroy_namespace(&ns);
        }
    }
}

/// The router's nftables ruleset: masquerade LAN→WAN, port forward WAN:8096 → jf (DNAT only,
/// so the server sees viewers' real addresses), IPv6 routed with only the Jellyfin port open.
pub fn nft_ruleset() -> String {
    nft_ruleset_for(WAN_DEV)
}

/// [`nft_ruleset`] for a WAN device named `wan`.
pub fn nft_ruleset_for(wan: &str) -> String {
    format!(
        r#"table inet homenet {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{wan}" ip daddr {ROUTER_WAN_V4} tcp dport {JF_PORT} dnat ip to {JF_V4}:{JF_PORT}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan}" ip saddr 192.168.1.0/24 masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state invalid drop
        iifname "{LAN_DEV}" oifname "{wan}" accept
        iifname "{wan}" ct status dnat accept
        iifname "{wan}" ip6 daddr {JF_V6} tcp dport {JF_PORT} accept
        meta l4proto ipv6-icmp accept
    }}
}}
"#
    )
}

/// The `homenet` program: this process when it is `homenet`, else the example built beside
/// the running test (`target/<profile>/examples/homenet`).
pub fn homenet_exe() -> Result<PathBuf> {
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    if me.file_stem().is_some_and(|s| s == "homenet") {
        return Ok(me);
    }
    for dir in me.ancestors().skip(1).take(3) {
        let candidate = dir.join("examples").join("homenet");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "no homenet example near {}: build it first (cargo build --examples)",
        me.display()
    ))
}

/// Reads a child's stdout line by line on a thread, so callers can await a line with a timeout.
pub struct Lines {
    rx: Receiver<String>,
}

impl Lines {
    /// Starts reading `out`.
    pub fn new(out: ChildStdout) -> Lines {
        Lines::from_reader(out)
    }

    /// Starts reading any byte stream.
    pub fn from_reader<R: Read + Send + 'static>(out: R) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    /// The next line, or an error after `timeout` or when the stream ended.
    pub fn next(&self, timeout: Duration) -> Result<String> {
        match self.rx.recv_timeout(timeout) {
            Ok(l) => Ok(l),
            Err(RecvTimeoutError::Timeout) => Err(format!("no output within {timeout:?}")),
            Err(RecvTimeoutError::Disconnected) => Err("output ended".into()),
        }
    }

    /// The next line parsed as JSON that satisfies `want`, skipping others.
    pub fn next_json(
        &self,
        timeout: Duration,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next(left)?;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if want(&v) {
                    return Ok(v);
                }
            }
        }
    }

    /// Every line available now, without waiting.
    pub fn drain(&self) -> Vec<String> {
        self.rx.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_ns_name("hn1234x0r"), Some(1234));
        assert_eq!(parse_ns_name("hn1234x17v3"), Some(1234));
        assert_eq!(parse_ns_name("hn1234x17"), None);
        assert_eq!(parse_ns_name("hn1234x17q"), None);
        assert_eq!(parse_ns_name("hnx1r"), None);
        assert_eq!(parse_ns_name("other"), None);
        assert_eq!(parse_ns_name("hn12x3v"), None);
    }

    #[test]
    fn fifo_holds_the_buffer() {
        assert_eq!(fifo_bytes(20_000, 200), 500_000);
        assert_eq!(fifo_bytes(1, 1), 4 * 1514);
    }

    #[test]
    fn longest_name_fits_interface_limits() {
        let name = format!("{PREFIX}{}x{}v{}", 4_194_304, 99, 99);
        assert!(name.len() <= 15, "{name}");
    }
}
