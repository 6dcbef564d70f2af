//! The pure part of the shaper: desired state + parsed actual state → tc batch commands.
//!
//! Handles (all hex, as tc writes them):
//! - `4a44:` ("JD") root htb qdisc on the own ifb, `default e`;
//! - `4a44:1` root class (fast), `4a44:a` Jellyfin parent (capped at the budget),
//!   `4a44:e` newcomer class under the parent (the htb default: external destinations that
//!   have no class yet, held to the minimum share until the next tick gives them one),
//!   `4a44:f` unlimited class outside the parent (internal destinations: LAN, the router);
//! - u32 filters at priorities 0x10..0xff, one per internal prefix, to `4a44:f`;
//! - `4a44:100`..`4a44:fff` one class per viewer, leaf qdisc `<minor>:`, one u32 filter at
//!   priority = minor (so a viewer's filter can be deleted by priority alone);
//! - on the LAN device's ingress hook: u32 filters at priorities 4 (IPv4) and 6 (IPv6) whose
//!   action redirects to the own ifb. The redirect target marks them as ours.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::parse::{Class, Filter, Key, Qdisc};
use super::Spec;

/// Major number of the own htb qdisc ("JD").
pub const ROOT_MAJOR: u16 = 0x4a44;
/// Root class (fast).
pub const MINOR_ROOT: u16 = 0x1;
/// The Jellyfin parent class, capped at the budget.
pub const MINOR_JELLYFIN: u16 = 0xa;
/// The htb default, under the Jellyfin parent: external destinations without a class yet.
pub const MINOR_NEWCOMER: u16 = 0xe;
/// Unlimited class outside the Jellyfin parent, for internal destinations.
pub const MINOR_UNLIMITED: u16 = 0xf;
/// First filter priority for internal prefixes (below the viewer range, so tried first).
pub const INTERNAL_FIRST: u16 = 0x10;
/// Last filter priority for internal prefixes.
pub const INTERNAL_LAST: u16 = 0xff;
/// First minor (and filter priority) used for viewer classes.
pub const VIEWER_FIRST: u16 = 0x100;
/// Last minor (and filter priority) used for viewer classes.
pub const VIEWER_LAST: u16 = 0xfff;
/// Priorities of the redirect filters on the LAN ingress hook. Low, so the server's packets
/// reach the shaper before a catch-all redirect of another tool (sqm-scripts uses 10).
pub const LAN_PRIO_V4: u32 = 4;
/// Priority of the IPv6 redirect filters on the LAN ingress hook.
pub const LAN_PRIO_V6: u32 = 6;
/// "Unlimited": the rate of the root and unlimited classes and of counting-only classes.
pub const FAST_BPS: u64 = 10_000_000_000;
/// htb cannot do less than a byte per second; keep a floor far above that.
pub const MIN_RATE_BPS: u64 = 8_000;

/// Leaf qdisc for the default and viewer classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    FqCodel,
    /// Fallback when the kernel has no fq_codel.
    Pfifo,
}

impl Leaf {
    fn kind(self) -> &'static str {
        match self {
            Leaf::FqCodel => "fq_codel",
            Leaf::Pfifo => "pfifo",
        }
    }
    fn args(self) -> &'static [&'static str] {
        match self {
            Leaf::FqCodel => &["fq_codel", "limit", "1000", "memory_limit", "4Mb"],
            // A bridge or ifb queue length is tiny or zero; an explicit limit avoids a
            // one-packet fifo, and stays short enough not to add seconds of delay.
            Leaf::Pfifo => &["pfifo", "limit", "128"],
        }
    }
}

/// One redirect rule on the LAN ingress hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanRule {
    /// "ip" or "ipv6".
    pub protocol: &'static str,
    /// [`LAN_PRIO_V4`] or [`LAN_PRIO_V6`].
    pub prio: u32,
    /// Sorted.
    pub keys: Vec<Key>,
}

/// What the kernel should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub lan_device: String,
    pub ifb: String,
    pub leaf: Leaf,
    /// Rate and ceil of the Jellyfin parent class.
    pub jellyfin_bps: u64,
    /// Rate and ceil of the newcomer class.
    pub newcomer: (u64, u64),
    /// Internal destinations, aggregated and sorted; index i gets priority
    /// [`INTERNAL_FIRST`] + i.
    pub internal: Vec<IpNet>,
    /// Viewer address → (rate, ceil) in bit/s.
    pub viewers: BTreeMap<IpAddr, (u64, u64)>,
    pub lan_rules: Vec<LanRule>,
}

/// What the kernel holds, as parsed from `tc ... show`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actual {
    pub ifb_qdiscs: Vec<Qdisc>,
    pub ifb_classes: Vec<Class>,
    pub ifb_filters: Vec<Filter>,
    pub lan_qdiscs: Vec<Qdisc>,
    /// Filters of the LAN device's ingress hook.
    pub lan_filters: Vec<Filter>,
}

/// One `tc -batch` line as an argument vector.
pub type Cmd = Vec<String>;

fn cmd(parts: &[&str]) -> Cmd {
    parts.iter().map(|s| s.to_string()).collect()
}

fn classid(minor: u16) -> String {
    format!("{ROOT_MAJOR:x}:{minor:x}")
}

fn root_handle() -> String {
    format!("{ROOT_MAJOR:x}:")
}

/// Device names go into a tc batch line split on whitespace; allow only what Linux device
/// names on OpenWrt use.
pub fn valid_device_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@' | '+'))
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn v4_key(ip: Ipv4Addr, off: i32) -> Key {
    Key {
        value: u32::from(ip),
        mask: u32::MAX,
        off,
    }
}

fn v6_keys(ip: Ipv6Addr, off: i32) -> Vec<Key> {
    let o = ip.octets();
    (0..4)
        .map(|i| Key {
            value: u32::from_be_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]),
            mask: u32::MAX,
            off: off + 4 * i as i32,
        })
        .collect()
}

fn port_key(port: u16, off: i32) -> Key {
    Key {
        value: u32::from(port) << 16,
        mask: 0xffff_0000,
        off,
    }
}

/// Offsets in the IP header, assuming no IPv4 options and no IPv6 extension headers (true
/// for the TCP streams of a media server).
const V4_SRC: i32 = 12;
const V4_DST: i32 = 16;
const V4_SPORT: i32 = 20;
const V6_SRC: i32 = 8;
const V6_DST: i32 = 24;
const V6_SPORT: i32 = 40;

fn dst_keys(ip: IpAddr) -> Vec<Key> {
    match ip {
        IpAddr::V4(v4) => vec![v4_key(v4, V4_DST)],
        IpAddr::V6(v6) => v6_keys(v6, V6_DST),
    }
}

fn proto_of(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ipv6",
    }
}

/// Link-local destinations never leave the LAN, so they are internal whatever the list says.
fn link_local() -> [IpNet; 2] {
    [
        IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16)),
        IpNet::V6(Ipv6Net::new_assert(
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
            10,
        )),
    ]
}

/// An IPv4-mapped IPv6 prefix (`::ffff:10.0.0.0/104`) is the IPv4 prefix: packets on the wire
/// carry IPv4 headers.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
    .trunc()
}

/// The u32 keys matching destinations in `net`; a /0 still has one (all-zero) key, since u32
/// needs at least one.
fn prefix_keys(net: IpNet) -> Vec<Key> {
    match net.trunc() {
        IpNet::V4(n) => vec![Key {
            value: u32::from(n.network()),
            mask: u32::from(n.netmask()),
            off: V4_DST,
        }],
        IpNet::V6(n) => {
            let addr = n.network().octets();
            let mask = n.netmask().octets();
            let word = |o: &[u8; 16], i: usize| {
                u32::from_be_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]])
            };
            let mut keys: Vec<Key> = (0..4)
                .filter(|i| word(&mask, *i) != 0)
                .map(|i| Key {
                    value: word(&addr, i),
                    mask: word(&mask, i),
                    off: V6_DST + 4 * i as i32,
                })
                .collect();
            if keys.is_empty() {
                keys.push(Key {
                    value: 0,
                    mask: 0,
                    off: V6_DST,
                });
            }
            keys
        }
    }
}

fn net_proto(net: IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ipv6",
    }
}

/// Reads a viewer's address back from its filter keys.
fn ip_from_dst_keys(protocol: &str, keys: &[Key]) -> Option<IpAddr> {
    let mut keys = keys.to_vec();
    keys.sort_by_key(|k| k.off);
    match protocol {
        "ip" => match keys.as_slice() {
            [k] if k.off == V4_DST && k.mask == u32::MAX => Some(IpAddr::V4(k.value.into())),
            _ => None,
        },
        "ipv6" => {
            if keys.len() != 4 {
                return None;
            }
            let mut octets = [0u8; 16];
            for (i, k) in keys.iter().enumerate() {
                if k.off != V6_DST + 4 * i as i32 || k.mask != u32::MAX {
                    return None;
                }
                octets[i * 4..i * 4 + 4].copy_from_slice(&k.value.to_be_bytes());
            }
            Some(IpAddr::V6(octets.into()))
        }
        _ => None,
    }
}

/// Turns the caller's spec into the desired kernel state. Errors name what is wrong.
pub fn desired(spec: &Spec, ifb: &str, leaf: Leaf) -> Result<Desired, String> {
    if !valid_device_name(&spec.lan_device) {
        return Err(format!(
            "invalid LAN device name '{}' (1-15 characters: letters, digits, - _ . @ +)",
            spec.lan_device.escape_debug()
        ));
    }
    if !valid_device_name(ifb) {
        return Err(format!("invalid ifb name '{}'", ifb.escape_debug()));
    }
    if ifb == spec.lan_device {
        return Err("the ifb name must differ from the LAN device".into());
    }
    let server = canonical(spec.server_ip);
    if server.is_unspecified() {
        return Err("server address is unspecified (0.0.0.0 or ::)".into());
    }
    let jellyfin_bps = if spec.enforce {
        spec.total_bps.max(MIN_RATE_BPS)
    } else {
        FAST_BPS
    };
    let newcomer = if spec.enforce {
        (
            spec.newcomer_bps.max(MIN_RATE_BPS).min(jellyfin_bps),
            jellyfin_bps,
        )
    } else {
        (FAST_BPS, FAST_BPS)
    };
    let mut nets: Vec<IpNet> = spec.internal.iter().copied().map(canonical_net).collect();
    nets.extend(link_local());
    let internal = IpNet::aggregate(&nets);
    let slots = usize::from(INTERNAL_LAST - INTERNAL_FIRST) + 1;
    if internal.len() > slots {
        return Err(format!(
            "too many internal ranges ({} after merging; at most {slots})",
            internal.len()
        ));
    }
    let mut viewers: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
    for v in &spec.viewers {
        let ip = canonical(v.ip);
        if ip.is_unspecified() {
            return Err(format!("viewer address {} is unspecified", v.ip));
        }
        // Two sessions behind one address share one class: add their shares.
        let e = viewers.entry(ip).or_insert((0, 0));
        e.0 = e.0.saturating_add(v.rate_bps);
        e.1 = e.1.saturating_add(v.ceil_bps);
    }
    for (rate, ceil) in viewers.values_mut() {
        if spec.enforce {
            let r = (*rate).max(MIN_RATE_BPS);
            let c = (*ceil).max(r).min(jellyfin_bps);
            *rate = r.min(c);
            *ceil = c;
        } else {
            *rate = FAST_BPS;
            *ceil = FAST_BPS;
        }
    }
    let mut ports: Vec<u16> = spec.ports.iter().copied().filter(|p| *p != 0).collect();
    ports.sort_unstable();
    ports.dedup();
    let mut lan_rules = Vec::new();
    let mut push = |protocol: &'static str, prio: u32, mut keys: Vec<Key>| {
        keys.sort();
        lan_rules.push(LanRule {
            protocol,
            prio,
            keys,
        });
    };
    let v6_server = match (server, spec.server_ip6) {
        (_, Some(v6)) if !v6.is_unspecified() => Some(v6),
        (IpAddr::V6(v6), _) => Some(v6),
        _ => None,
    };
    if let IpAddr::V4(v4) = server {
        if ports.is_empty() {
            push("ip", LAN_PRIO_V4, vec![v4_key(v4, V4_SRC)]);
        }
        for p in &ports {
            push(
                "ip",
                LAN_PRIO_V4,
                vec![v4_key(v4, V4_SRC), port_key(*p, V4_SPORT)],
            );
        }
    }
    match v6_server {
        Some(v6) if ports.is_empty() => push("ipv6", LAN_PRIO_V6, v6_keys(v6, V6_SRC)),
        Some(v6) => {
            for p in &ports {
                let mut k = v6_keys(v6, V6_SRC);
                k.push(port_key(*p, V6_SPORT));
                push("ipv6", LAN_PRIO_V6, k);
            }
        }
        // Without the server's IPv6 address nothing tells its packets from another LAN
        // host's service on the same port: IPv6 is left alone rather than shaped wrongly.
        None => {}
    }
    Ok(Desired {
        lan_device: spec.lan_device.clone(),
        ifb: ifb.to_string(),
        leaf,
        jellyfin_bps,
        newcomer,
        internal,
        viewers,
        lan_rules,
    })
}

/// Rates read back from tc text are rounded to about four digits.
fn close(actual: u64, desired: u64) -> bool {
    actual.abs_diff(desired) <= (desired / 200).max(1_000)
}

fn quantum(rate_bps: u64) -> String {
    (rate_bps / 8 / 10).clamp(1514, 200_000).to_string()
}

fn class_cmd(verb: &str, ifb: &str, parent: &str, minor: u16, rate: u64, ceil: u64) -> Cmd {
    cmd(&[
        "class",
        verb,
        "dev",
        ifb,
        "parent",
        parent,
        "classid",
        &classid(minor),
        "htb",
        "rate",
        &format!("{rate}bit"),
        "ceil",
        &format!("{ceil}bit"),
        "quantum",
        &quantum(rate),
    ])
}

fn leaf_cmd(ifb: &str, minor: u16, leaf: Leaf) -> Cmd {
    let mut c = cmd(&[
        "qdisc",
        "replace",
        "dev",
        ifb,
        "parent",
        &classid(minor),
        "handle",
        &format!("{minor:x}:"),
    ]);
    c.extend(leaf.args().iter().map(|s| s.to_string()));
    c
}

fn u32_keys(keys: &[Key]) -> Vec<String> {
    let mut out = Vec::new();
    for k in keys {
        out.extend([
            "match".to_string(),
            "u32".to_string(),
            format!("0x{:08x}", k.value),
            format!("0x{:08x}", k.mask),
            "at".to_string(),
            k.off.to_string(),
        ]);
    }
    out
}

fn leaf_ok(qdiscs: &[Qdisc], minor: u16, leaf: Leaf) -> bool {
    let parent = classid(minor);
    qdiscs.iter().any(|q| {
        q.parent.as_deref() == Some(parent.as_str())
            && q.kind == leaf.kind()
            && q.handle == format!("{minor:x}:")
    })
}

/// Viewer classes that are intact: class under the Jellyfin parent, exactly one u32 rule at
/// priority = minor pointing at it, keys that decode to an address. Minor → address.
pub fn intact_viewers(classes: &[Class], filters: &[Filter]) -> BTreeMap<u16, IpAddr> {
    let jf = classid(MINOR_JELLYFIN);
    let mut out = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for c in classes {
        if c.major != ROOT_MAJOR
            || !(VIEWER_FIRST..=VIEWER_LAST).contains(&c.minor)
            || c.parent.as_deref() != Some(jf.as_str())
        {
            continue;
        }
        let rules: Vec<&Filter> = filters
            .iter()
            .filter(|f| f.prio == u32::from(c.minor) && f.is_rule())
            .collect();
        let [f] = rules.as_slice() else { continue };
        if f.kind != "u32" || f.flowid.as_deref() != Some(classid(c.minor).as_str()) {
            continue;
        }
        let Some(ip) = ip_from_dst_keys(&f.protocol, &f.keys) else {
            continue;
        };
        // A second class for the same address is stale; the lower minor wins.
        if seen.insert(ip) {
            out.insert(c.minor, ip);
        }
    }
    out
}

/// Per-viewer byte counters from the class statistics.
pub fn counters(classes: &[Class], filters: &[Filter]) -> HashMap<IpAddr, u64> {
    let viewers = intact_viewers(classes, filters);
    classes
        .iter()
        .filter(|c| c.major == ROOT_MAJOR)
        .filter_map(|c| viewers.get(&c.minor).map(|ip| (*ip, c.bytes)))
        .collect()
}

/// Cumulative bytes of the Jellyfin parent class (viewers + newcomers), 0 when it is absent.
pub fn jellyfin_bytes(classes: &[Class]) -> u64 {
    classes
        .iter()
        .find(|c| c.major == ROOT_MAJOR && c.minor == MINOR_JELLYFIN)
        .map_or(0, |c| c.bytes)
}

fn is_ours_on_lan(f: &Filter, ifb: &str) -> bool {
    if !f.is_rule() {
        return false;
    }
    match f.redirect_to.as_deref() {
        Some(t) if t == ifb => true,
        // A redirect whose device vanished drops every packet it matches: ours if it sits at
        // our priorities.
        Some("*") => f.kind == "u32" && (f.prio == LAN_PRIO_V4 || f.prio == LAN_PRIO_V6),
        _ => false,
    }
}

/// The commands that turn `a` into `d`. Empty when nothing differs.
pub fn plan(d: &Desired, a: &Actual) -> Vec<Cmd> {
    let ifb = d.ifb.as_str();
    let mut out: Vec<Cmd> = Vec::new();
    let root = root_handle();
    let jf = classid(MINOR_JELLYFIN);

    // ---- the tree on the ifb (the whole device is ours) ----
    let root_q = a.ifb_qdiscs.iter().find(|q| q.parent.is_none());
    let dflt = format!("{MINOR_NEWCOMER:x}");
    // htb cannot change its default in place ("Change operation not supported"): a tree
    // with another default (e.g. `default f` of older versions) is rebuilt.
    let tree_ok = root_q.is_some_and(|q| {
        q.kind == "htb" && q.handle == root && q.default_minor == Some(u32::from(MINOR_NEWCOMER))
    }) && a.ifb_classes.iter().all(|c| {
        c.major == ROOT_MAJOR
            && match c.minor {
                MINOR_ROOT => c.parent.is_none(),
                MINOR_JELLYFIN | MINOR_UNLIMITED => {
                    c.parent.as_deref() == Some(classid(MINOR_ROOT).as_str())
                }
                MINOR_NEWCOMER => c.parent.as_deref() == Some(jf.as_str()),
                m if (VIEWER_FIRST..=VIEWER_LAST).contains(&m) => {
                    c.parent.as_deref() == Some(jf.as_str())
                }
                _ => false,
            }
    });
    let empty = Actual::default();
    let (classes, filters, qdiscs) = if tree_ok {
        (&a.ifb_classes, &a.ifb_filters, &a.ifb_qdiscs)
    } else {
        if root_q.is_some_and(|q| q.handle == root) {
            // `replace` with the same handle would only change the qdisc, keeping its classes.
            out.push(cmd(&["qdisc", "del", "dev", ifb, "root"]));
            out.push(cmd(&[
                "qdisc", "add", "dev", ifb, "root", "handle", &root, "htb", "default", &dflt,
            ]));
        } else {
            out.push(cmd(&[
                "qdisc", "replace", "dev", ifb, "root", "handle", &root, "htb", "default", &dflt,
            ]));
        }
        (&empty.ifb_classes, &empty.ifb_filters, &empty.ifb_qdiscs)
    };
    let find = |minor: u16| classes.iter().find(|c| c.minor == minor);
    // Parents before children.
    let fixed = [
        (MINOR_ROOT, root.clone(), FAST_BPS, FAST_BPS),
        (
            MINOR_JELLYFIN,
            classid(MINOR_ROOT),
            d.jellyfin_bps,
            d.jellyfin_bps,
        ),
        (MINOR_NEWCOMER, jf.clone(), d.newcomer.0, d.newcomer.1),
        (MINOR_UNLIMITED, classid(MINOR_ROOT), FAST_BPS, FAST_BPS),
    ];
    for (minor, parent, rate, ceil) in &fixed {
        match find(*minor) {
            None => out.push(class_cmd("add", ifb, parent, *minor, *rate, *ceil)),
            Some(c) if !close(c.rate_bps, *rate) || !close(c.ceil_bps, *ceil) => {
                out.push(class_cmd("change", ifb, parent, *minor, *rate, *ceil))
            }
            Some(_) => {}
        }
    }
    for minor in [MINOR_NEWCOMER, MINOR_UNLIMITED] {
        if !leaf_ok(qdiscs, minor, d.leaf) {
            out.push(leaf_cmd(ifb, minor, d.leaf));
        }
    }

    // Internal prefixes: priority INTERNAL_FIRST + index. A priority holding exactly the
    // wanted rule stays; anything else in the range is deleted and the rule added again.
    let wanted_internal: BTreeMap<u32, (&'static str, Vec<Key>)> = d
        .internal
        .iter()
        .enumerate()
        .map(|(i, net)| {
            (
                u32::from(INTERNAL_FIRST) + i as u32,
                (net_proto(*net), prefix_keys(*net)),
            )
        })
        .collect();
    let unlimited = classid(MINOR_UNLIMITED);
    let internal_ok: BTreeSet<u32> = wanted_internal
        .iter()
        .filter(|(prio, (protocol, keys))| {
            let at: Vec<&Filter> = filters.iter().filter(|f| f.prio == **prio).collect();
            let rules: Vec<&&Filter> = at.iter().filter(|f| f.is_rule()).collect();
            let [f] = rules.as_slice() else { return false };
            let (mut have, mut want) = (f.keys.clone(), keys.clone());
            have.sort();
            want.sort();
            at.iter()
                .all(|g| g.protocol == *protocol && g.kind == "u32")
                && f.flowid.as_deref() == Some(unlimited.as_str())
                && have == want
        })
        .map(|(prio, _)| *prio)
        .collect();

    // Viewers: keep intact classes of wanted addresses, drop everything else.
    let intact = intact_viewers(classes, filters);
    let mut keep: BTreeMap<IpAddr, u16> = BTreeMap::new();
    for (minor, ip) in &intact {
        if d.viewers.contains_key(ip) {
            keep.insert(*ip, *minor);
        }
    }
    let kept: BTreeSet<u16> = keep.values().copied().collect();
    let mut used: BTreeSet<u16> = BTreeSet::new();
    let mut dropped_prios: BTreeSet<(u32, String)> = BTreeSet::new();
    for f in filters {
        if let Ok(p) = u16::try_from(f.prio) {
            used.insert(p);
        }
        let wanted =
            internal_ok.contains(&f.prio) || u16::try_from(f.prio).is_ok_and(|p| kept.contains(&p));
        if !wanted && dropped_prios.insert((f.prio, f.protocol.clone())) {
            out.push(cmd(&[
                "filter",
                "del",
                "dev",
                ifb,
                "parent",
                &root,
                "protocol",
                &f.protocol,
                "prio",
                &f.prio.to_string(),
            ]));
        }
    }
    for c in classes {
        if (VIEWER_FIRST..=VIEWER_LAST).contains(&c.minor) {
            used.insert(c.minor);
            if !kept.contains(&c.minor) {
                out.push(cmd(&[
                    "class",
                    "del",
                    "dev",
                    ifb,
                    "classid",
                    &classid(c.minor),
                ]));
            }
        }
    }
    for (prio, (protocol, keys)) in &wanted_internal {
        if internal_ok.contains(prio) {
            continue;
        }
        let mut f = cmd(&[
            "filter",
            "add",
            "dev",
            ifb,
            "parent",
            &root,
            "protocol",
            protocol,
            "prio",
            &prio.to_string(),
            "u32",
        ]);
        f.extend(u32_keys(keys));
        f.extend(["flowid".to_string(), unlimited.clone()]);
        out.push(f);
    }
    let mut next = VIEWER_FIRST;
    for (ip, (rate, ceil)) in &d.viewers {
        if let Some(minor) = keep.get(ip) {
            if let Some(c) = find(*minor) {
                if !close(c.rate_bps, *rate) || !close(c.ceil_bps, *ceil) {
                    out.push(class_cmd("change", ifb, &jf, *minor, *rate, *ceil));
                }
            }
            if !leaf_ok(qdiscs, *minor, d.leaf) {
                out.push(leaf_cmd(ifb, *minor, d.leaf));
            }
            continue;
        }
        // Never reuse a minor deleted in this same batch.
        while next <= VIEWER_LAST && used.contains(&next) {
            next += 1;
        }
        if next > VIEWER_LAST {
            break;
        }
        let minor = next;
        used.insert(minor);
        out.push(class_cmd("add", ifb, &jf, minor, *rate, *ceil));
        out.push(leaf_cmd(ifb, minor, d.leaf));
        let mut f = cmd(&[
            "filter",
            "add",
            "dev",
            ifb,
            "parent",
            &root,
            "protocol",
            proto_of(*ip),
            "prio",
            &minor.to_string(),
            "u32",
        ]);
        f.extend(u32_keys(&dst_keys(*ip)));
        f.extend(["flowid".to_string(), classid(minor)]);
        out.push(f);
    }

    // ---- the LAN ingress hook: only our own filters ----
    let lan = d.lan_device.as_str();
    let has_hook = a
        .lan_qdiscs
        .iter()
        .any(|q| (q.kind == "ingress" || q.kind == "clsact") && q.handle == "ffff:");
    let lan_filters: &[Filter] = if has_hook { &a.lan_filters } else { &[] };
    if !has_hook {
        out.push(cmd(&[
            "qdisc", "add", "dev", lan, "handle", "ffff:", "ingress",
        ]));
    }
    let ours: Vec<&Filter> = lan_filters
        .iter()
        .filter(|f| is_ours_on_lan(f, ifb))
        .collect();
    let mut matched = vec![false; ours.len()];
    let mut missing = Vec::new();
    for rule in &d.lan_rules {
        let hit = ours.iter().enumerate().position(|(i, f)| {
            if matched[i] || f.kind != "u32" || f.protocol != rule.protocol || f.prio != rule.prio {
                return false;
            }
            if f.redirect_to.as_deref() != Some(ifb) {
                return false;
            }
            let mut k = f.keys.clone();
            k.sort();
            k == rule.keys
        });
        match hit {
            Some(i) => matched[i] = true,
            None => missing.push(rule),
        }
    }
    for (i, f) in ours.iter().enumerate() {
        if matched[i] {
            continue;
        }
        out.extend(lan_filter_del(lan, f));
    }
    for rule in missing {
        let mut c = cmd(&[
            "filter",
            "add",
            "dev",
            lan,
            "ingress",
            "protocol",
            rule.protocol,
            "prio",
            &rule.prio.to_string(),
            "u32",
        ]);
        c.extend(u32_keys(&rule.keys));
        c.extend(
            ["action", "mirred", "egress", "redirect", "dev", ifb]
                .iter()
                .map(|s| s.to_string()),
        );
        out.push(c);
    }
    out
}

/// Deletes one filter from the LAN ingress hook by its handle (a filter without one cannot be
/// addressed alone and is left for the priority-wide delete).
fn lan_filter_del(lan: &str, f: &Filter) -> Option<Cmd> {
    let h = f.handle.as_deref()?;
    Some(cmd(&[
        "filter",
        "del",
        "dev",
        lan,
        "ingress",
        "protocol",
        &f.protocol,
        "prio",
        &f.prio.to_string(),
        "handle",
        h,
        &f.kind,
    ]))
}

/// The commands that take our filters (and, when nobody else uses it, the ingress qdisc) off
/// the LAN device. The ifb itself is deleted separately, which removes its whole tree.
pub fn plan_remove(lan: &str, ifb: &str, lan_qdiscs: &[Qdisc], lan_filters: &[Filter]) -> Vec<Cmd> {
    let mut out = Vec::new();
    let Some(hook) = lan_qdiscs
        .iter()
        .find(|q| (q.kind == "ingress" || q.kind == "clsact") && q.handle == "ffff:")
    else {
        return out;
    };
    let mut groups: BTreeMap<(u32, String), Vec<&Filter>> = BTreeMap::new();
    for f in lan_filters {
        groups
            .entry((f.prio, f.protocol.clone()))
            .or_default()
            .push(f);
    }
    let mut foreign_left = false;
    for ((prio, protocol), fs) in &groups {
        let rules: Vec<&&Filter> = fs.iter().filter(|f| f.is_rule()).collect();
        let ours: Vec<&&Filter> = rules
            .iter()
            .copied()
            .filter(|f| is_ours_on_lan(f, ifb))
            .collect();
        let our_prio = *prio == LAN_PRIO_V4 || *prio == LAN_PRIO_V6;
        let only_ours = rules.len() == ours.len();
        if (!ours.is_empty() || our_prio) && only_ours && fs.iter().all(|f| f.kind == "u32") {
            out.push(cmd(&[
                "filter",
                "del",
                "dev",
                lan,
                "ingress",
                "protocol",
                protocol,
                "prio",
                &prio.to_string(),
            ]));
            continue;
        }
        for f in &ours {
            out.extend(lan_filter_del(lan, f));
        }
        if rules.len() > ours.len() {
            foreign_left = true;
        }
    }
    // clsact also carries egress filters: never ours to delete.
    if hook.kind == "ingress" && !foreign_left {
        out.push(cmd(&["qdisc", "del", "dev", lan, "ingress"]));
    }
    out
}

/// Renders commands as `tc -batch` input.
pub fn render(cmds: &[Cmd]) -> String {
    let mut s = String::new();
    for c in cmds {
        s.push_str(&c.join(" "));
        s.push('\n');
    }
    s
}
