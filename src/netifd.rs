//! netifd's view of the router's logical interfaces (`lan`, `wan`, `wan6`): the device behind
//! each and the networks on it, from `ubus call network.interface.<name> status`.
//!
//! The reply's shape is netifd's `netifd_dump_status` (ubus.c): `up`, `l3_device` (only while
//! up), `device`, and while up the arrays `ipv4-address` and `ipv6-address` (`address`,
//! `mask`), `ipv6-prefix` (prefixes delegated to this interface, e.g. the ISP's /56 on `wan6`)
//! and `ipv6-prefix-assignment` (the part of a delegated prefix handed to this interface, e.g.
//! the LAN's /64, with the router's own `local-address` in it). nlbwmon's `local_network 'lan'`
//! resolves a name to the same subnets (through network.sh's `network_get_subnets[6]`).
//!
//! Parsing is pure; running `ubus` is the adapter, behind [`Netifd`] so the daemon's logic
//! runs in tests without it.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// The replies this module reads are a few KB; anything far larger is not netifd.
const MAX_REPLY: usize = 256 * 1024;

#[derive(Debug, Default, Deserialize)]
struct Addr {
    #[serde(default)]
    address: String,
    #[serde(default)]
    mask: u8,
}

#[derive(Debug, Default, Deserialize)]
struct Assignment {
    #[serde(default)]
    address: String,
    #[serde(default)]
    mask: u8,
    #[serde(rename = "local-address", default)]
    local_address: Option<Addr>,
}

#[derive(Debug, Default, Deserialize)]
struct RawStatus {
    #[serde(default)]
    up: bool,
    #[serde(default)]
    l3_device: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(rename = "ipv4-address", default)]
    ipv4_address: Vec<Addr>,
    #[serde(rename = "ipv6-address", default)]
    ipv6_address: Vec<Addr>,
    #[serde(rename = "ipv6-prefix", default)]
    ipv6_prefix: Vec<Addr>,
    #[serde(rename = "ipv6-prefix-assignment", default)]
    ipv6_prefix_assignment: Vec<Assignment>,
}

/// One interface as netifd reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceStatus {
    pub up: bool,
    /// The layer-3 device (`pppoe-wan` on PPPoE), else the main device (`eth1`, `br-lan`).
    pub device: Option<String>,
    /// The interface's own subnets: IPv4 and IPv6 addresses with their masks, and the IPv6
    /// prefixes assigned to it, normalised to their network address.
    pub subnets: Vec<IpNet>,
    /// Prefixes delegated to this interface (a WAN's `ipv6-prefix`): all of the home's.
    pub delegated: Vec<IpNet>,
}

fn net(address: &str, mask: u8) -> Option<IpNet> {
    let ip: IpAddr = address.parse().ok()?;
    IpNet::new(ip, mask).ok().map(|n| n.trunc())
}

/// Parses a `network.interface.<name> status` reply. `None` when it is not one.
pub fn parse_status(json: &[u8]) -> Option<InterfaceStatus> {
    if json.len() > MAX_REPLY {
        return None;
    }
    // serde would also take a JSON array for the struct; netifd always answers an object.
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let raw: RawStatus = serde_json::from_slice(json).ok()?;
    let device = [raw.l3_device, raw.device]
        .into_iter()
        .flatten()
        .find(|d| !d.is_empty());
    let mut subnets = Vec::new();
    for a in raw.ipv4_address.iter().chain(&raw.ipv6_address) {
        subnets.extend(net(&a.address, a.mask));
    }
    for a in &raw.ipv6_prefix_assignment {
        subnets.extend(net(&a.address, a.mask));
        if let Some(l) = &a.local_address {
            subnets.extend(net(&l.address, l.mask));
        }
    }
    let delegated: Vec<IpNet> = raw
        .ipv6_prefix
        .iter()
        .filter_map(|p| net(&p.address, p.mask))
        .collect();
    // An unspecified or zero-length entry would make the whole internet "local".
    subnets.retain(|n| n.prefix_len() > 0 && !n.addr().is_unspecified());
    let mut delegated = delegated;
    delegated.retain(|n| n.prefix_len() > 0 && !n.addr().is_unspecified());
    Some(InterfaceStatus {
        up: raw.up,
        device,
        subnets,
        delegated,
    })
}

/// Whether `name` can be a netifd interface (letters, digits, `_`): it becomes part of a ubus
/// object path.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Access to netifd. `Ok(None)`: netifd knows no such interface.
pub trait Netifd {
    fn status(&mut self, name: &str) -> Result<Option<InterfaceStatus>, String>;
}

/// The real one: the `ubus` program, run with an argument vector.
#[derive(Debug, Default)]
pub struct Ubus;

impl Netifd for Ubus {
    fn status(&mut self, name: &str) -> Result<Option<InterfaceStatus>, String> {
        if !valid_name(name) {
            return Err(format!("'{name}' is not a netifd interface name"));
        }
        status_with("ubus", name, UBUS_DEADLINE)
    }
}

/// How long the whole `ubus` run may take, whatever hangs (ubusd, the socket, ubus itself):
/// beyond its own `-t 3`, so a stuck child is killed rather than waited for.
const UBUS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

fn status_with(
    ubus: &str,
    name: &str,
    limit: std::time::Duration,
) -> Result<Option<InterfaceStatus>, String> {
    // `-t`: ubus's own timeout (30 s by default) would stall the tick on a stuck ubusd.
    let (ok, stdout, _) = crate::child::run(
        ubus,
        &[
            "-t",
            "3",
            "call",
            &format!("network.interface.{name}"),
            "status",
        ],
        None,
        limit,
    )
    .map_err(|e| format!("cannot run ubus ({e})"))?;
    if !ok {
        // ubus exits 4 (UBUS_STATUS_NOT_FOUND) for an unknown object.
        return Ok(None);
    }
    parse_status(stdout.as_bytes())
        .map(Some)
        .ok_or_else(|| format!("ubus gave no interface status for '{name}'"))
}

/// The device behind interface `name`; `setting` names the option that would set it directly
/// (for the message).
pub fn resolve_device(
    netifd: &mut dyn Netifd,
    name: &str,
    setting: &str,
) -> Result<String, String> {
    match netifd.status(name) {
        Ok(Some(st)) => st.device.ok_or_else(|| {
            format!("interface '{name}' has no device (is it up?); or set {setting}")
        }),
        Ok(None) => Err(format!(
            "netifd knows no interface '{name}'; check the interface name or set {setting}"
        )),
        Err(e) => Err(format!(
            "cannot find the device of interface '{name}': {e}; set {setting}"
        )),
    }
}

/// The RFC 1918 and ULA ranges: local when netifd cannot say what the home's networks are.
pub fn fallback_internal() -> Vec<IpNet> {
    ["192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "fc00::/7"]
        .iter()
        .map(|s| s.parse().expect("built-in range"))
        .collect()
}

/// What the `internal` setting means now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Internal {
    /// Every local network, sorted and merged.
    pub nets: Vec<IpNet>,
    /// The fallback ranges are in use (no interface named in `internal` gave a network).
    pub fallback: bool,
    /// Interfaces that could not be read, with why.
    pub problems: Vec<String>,
}

/// Resolves `internal`: the configured CIDRs, plus each named interface's subnets and
/// delegated prefixes, plus the prefixes delegated to the WAN interfaces (`wan_ifaces`, e.g.
/// `wan` and `wan6`: a prefix the ISP delegates is the home's whole IPv6 space). When names
/// were given and none of them yielded a network, the RFC 1918/ULA ranges stand in, so a
/// router without ubus, or with the LAN still down, never treats the household as remote.
pub fn resolve_internal(
    netifd: &mut dyn Netifd,
    cidrs: &[IpNet],
    names: &[String],
    wan_ifaces: &[String],
) -> Internal {
    let mut nets: Vec<IpNet> = cidrs.to_vec();
    let mut problems = Vec::new();
    let mut from_names = 0;
    for name in names {
        match netifd.status(name) {
            Ok(Some(st)) => {
                from_names += st.subnets.len() + st.delegated.len();
                nets.extend(st.subnets);
                nets.extend(st.delegated);
            }
            Ok(None) => problems.push(format!(
                "network.internal: netifd knows no interface '{name}'"
            )),
            Err(e) => problems.push(format!("network.internal: interface '{name}': {e}")),
        }
    }
    let fallback = !names.is_empty() && from_names == 0;
    if fallback {
        nets.extend(fallback_internal());
    } else if !names.is_empty() {
        // Only worth asking when interfaces are followed at all: explicit CIDRs mean the
        // user chose the list.
        for w in wan_ifaces.iter().filter(|w| !names.contains(w)) {
            if let Ok(Some(st)) = netifd.status(w) {
                nets.extend(st.delegated);
            }
        }
    }
    Internal {
        nets: IpNet::aggregate(&nets),
        fallback,
        problems,
    }
}

/// Kernel notifications of links and addresses coming and going (rtnetlink multicast), so the
/// daemon asks netifd again only when something changed: no process in a steady tick.
pub struct LinkWatch {
    fd: std::os::fd::OwnedFd,
}

impl LinkWatch {
    pub fn new() -> Result<LinkWatch, String> {
        use nix::sys::socket::{
            bind, socket, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType,
        };
        // RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_PREFIX
        const GROUPS: u32 = 0x1 | 0x10 | 0x100 | 0x20000;
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|e| format!("netlink socket: {e}"))?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, GROUPS),
        )
        .map_err(|e| format!("netlink bind: {e}"))?;
        Ok(LinkWatch { fd })
    }

    /// Whether anything changed since the last call (reads every pending notification).
    pub fn changed(&mut self) -> bool {
        use nix::errno::Errno;
        let mut buf = [0u8; 4096];
        let mut any = false;
        // Bounded: a flood of notifications is "changed" after a few hundred reads.
        for _ in 0..256 {
            match nix::sys::socket::recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                &mut buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => break,
                Ok(_) => any = true,
                Err(Errno::EINTR) => continue,
                // Lost notifications: something changed.
                Err(Errno::ENOBUFS) => any = true,
                Err(_) => break,
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    /// A stuck ubus (ubusd hung, or the call never answered) must not stop the daemon: the
    /// whole run has a deadline. A script that sleeps stands in for it.
    #[test]
    fn a_stuck_ubus_is_killed_at_the_deadline() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("jd-ubus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("ubus");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t0 = std::time::Instant::now();
        let r = super::status_with(
            fake.to_str().unwrap(),
            "wan",
            std::time::Duration::from_millis(300),
        );
        let _ = std::fs::remove_dir_all(&dir);
        let e = r.unwrap_err();
        assert!(e.contains("ubus"), "{e}");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t0.elapsed()
        );
    }

    use super::*;
    use std::collections::HashMap;

    /// A LAN as netifd reports it with a delegated prefix (ip6assign 64) and a ULA, trimmed
    /// of the fields this module ignores (route, dns-server, inactive, data...).
    const LAN: &str = r#"{
        "up": true, "pending": false, "available": true, "autostart": true, "dynamic": false,
        "uptime": 5012, "l3_device": "br-lan", "proto": "static", "device": "br-lan",
        "updated": ["addresses"], "metric": 0, "dns_metric": 0, "delegation": true,
        "ipv4-address": [{"address": "192.168.1.1", "mask": 24}],
        "ipv6-address": [],
        "ipv6-prefix": [],
        "ipv6-prefix-assignment": [
            {"address": "2001:db8:2::", "mask": 64, "preferred": 3600, "valid": 7200,
             "local-address": {"address": "2001:db8:2::1", "mask": 64}},
            {"address": "fd12:3456:789a::", "mask": 64,
             "local-address": {"address": "fd12:3456:789a::1", "mask": 64}}
        ],
        "route": [], "dns-server": [], "dns-search": [], "neighbors": [],
        "inactive": {"ipv4-address": [], "ipv6-address": [], "route": [], "dns-server": [],
                     "dns-search": [], "neighbors": []},
        "data": {}
    }"#;

    /// A DHCPv6 WAN with an address from IA_NA and a /56 delegated.
    const WAN6: &str = r#"{
        "up": true, "l3_device": "eth1", "proto": "dhcpv6", "device": "eth1",
        "ipv4-address": [],
        "ipv6-address": [{"address": "2001:db8:ffff::1234", "mask": 128, "preferred": 3000, "valid": 6000}],
        "ipv6-prefix": [{"address": "2001:db8:2::", "mask": 56, "class": "wan6", "assigned": {"lan": {"address": "2001:db8:2::", "mask": 64}}}],
        "ipv6-prefix-assignment": []
    }"#;

    /// A PPPoE WAN while down: netifd leaves out l3_device and the address arrays.
    const WAN_DOWN: &str = r#"{"up": false, "pending": true, "available": true,
        "autostart": true, "dynamic": false, "proto": "pppoe", "data": {}}"#;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn lan_status_gives_device_and_subnets() {
        let st = parse_status(LAN.as_bytes()).unwrap();
        assert!(st.up);
        assert_eq!(st.device.as_deref(), Some("br-lan"));
        assert_eq!(
            st.subnets,
            nets(&[
                "192.168.1.0/24",
                "2001:db8:2::/64",
                "2001:db8:2::/64",
                "fd12:3456:789a::/64",
                "fd12:3456:789a::/64"
            ])
        );
        assert!(st.delegated.is_empty());
    }

    #[test]
    fn wan_status_gives_the_delegated_prefix() {
        let st = parse_status(WAN6.as_bytes()).unwrap();
        assert_eq!(st.device.as_deref(), Some("eth1"));
        assert_eq!(st.subnets, nets(&["2001:db8:ffff::1234/128"]));
        assert_eq!(st.delegated, nets(&["2001:db8:2::/56"]));
    }

    #[test]
    fn down_interface_has_no_device() {
        let st = parse_status(WAN_DOWN.as_bytes()).unwrap();
        assert!(!st.up);
        assert_eq!(st.device, None);
        assert!(st.subnets.is_empty());
    }

    #[test]
    fn l3_device_wins_over_device() {
        let st = parse_status(br#"{"up":true,"l3_device":"pppoe-wan","device":"eth1"}"#).unwrap();
        assert_eq!(st.device.as_deref(), Some("pppoe-wan"));
        let st = parse_status(br#"{"up":true,"l3_device":"","device":"eth1"}"#).unwrap();
        assert_eq!(st.device.as_deref(), Some("eth1"));
    }

    #[test]
    fn garbage_and_odd_entries() {
        assert_eq!(parse_status(b"garbage"), None);
        assert_eq!(parse_status(b"[]"), None);
        assert_eq!(parse_status(br#"{"up":"yes"}"#), None);
        let big = vec![b' '; MAX_REPLY + 1];
        assert_eq!(parse_status(&big), None);
        // Bad addresses, impossible masks and "everything" entries are dropped, not fatal.
        let st = parse_status(
            br#"{"up":true,"ipv4-address":[{"address":"x","mask":24},{"address":"10.0.0.1","mask":40},
                {"address":"0.0.0.0","mask":0},{"address":"10.1.2.3","mask":8}],
                "ipv6-prefix":[{"address":"::","mask":0}]}"#,
        )
        .unwrap();
        assert_eq!(st.subnets, nets(&["10.0.0.0/8"]));
        assert!(st.delegated.is_empty());
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("lan"));
        assert!(valid_name("wan_6"));
        assert!(!valid_name(""));
        assert!(!valid_name("lan.x"));
        assert!(!valid_name("lan status"));
        assert!(Ubus.status("a/b").is_err());
    }

    struct Fake(HashMap<&'static str, Result<Option<&'static str>, String>>);

    impl Netifd for Fake {
        fn status(&mut self, name: &str) -> Result<Option<InterfaceStatus>, String> {
            match self.0.get(name) {
                None => Ok(None),
                Some(Err(e)) => Err(e.clone()),
                Some(Ok(None)) => Ok(None),
                Some(Ok(Some(j))) => Ok(parse_status(j.as_bytes())),
            }
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn internal_from_interfaces_and_the_wan_prefix() {
        let mut f = Fake(HashMap::from([
            ("lan", Ok(Some(LAN))),
            ("wan6", Ok(Some(WAN6))),
            ("wan", Ok(Some(WAN_DOWN))),
        ]));
        let i = resolve_internal(
            &mut f,
            &nets(&["10.8.0.0/24"]),
            &s(&["lan"]),
            &s(&["wan", "wan6"]),
        );
        assert!(!i.fallback);
        assert!(i.problems.is_empty());
        assert_eq!(
            i.nets,
            nets(&[
                "10.8.0.0/24",
                "192.168.1.0/24",
                "2001:db8:2::/56",
                "fd12:3456:789a::/64"
            ])
        );
        // The WAN's own address is not the home's.
        assert!(!i
            .nets
            .iter()
            .any(|n| n.contains(&"2001:db8:ffff::1234".parse::<IpAddr>().unwrap())));
    }

    #[test]
    fn fallback_when_no_interface_answers() {
        let mut f = Fake(HashMap::from([
            (
                "lan",
                Err("cannot run ubus (No such file or directory)".to_string()),
            ),
            ("wan6", Ok(Some(WAN6))),
        ]));
        let i = resolve_internal(&mut f, &[], &s(&["lan", "guest"]), &s(&["wan6"]));
        assert!(i.fallback);
        assert_eq!(i.nets, IpNet::aggregate(&fallback_internal()));
        assert_eq!(i.problems.len(), 2, "{:?}", i.problems);
        assert!(i.problems[0].contains("cannot run ubus"));
        assert!(i.problems[1].contains("no interface 'guest'"));
        // A LAN that is down has no networks yet: the fallback holds until it comes up.
        let mut f = Fake(HashMap::from([("lan", Ok(Some(WAN_DOWN)))]));
        assert!(resolve_internal(&mut f, &[], &s(&["lan"]), &[]).fallback);
    }

    #[test]
    fn cidrs_alone_ask_nothing() {
        let mut f = Fake(HashMap::from([("wan6", Ok(Some(WAN6)))]));
        let i = resolve_internal(&mut f, &nets(&["192.168.7.0/24"]), &[], &s(&["wan6"]));
        assert!(!i.fallback);
        assert_eq!(i.nets, nets(&["192.168.7.0/24"]));
    }
}
