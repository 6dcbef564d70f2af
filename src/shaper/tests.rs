//! Planner tests: desired vs actual → commands, checked against a small model of what the
//! kernel does with each command (and how tc prints the result back).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::parse::{self, Class, Filter, Key, Qdisc};
use super::plan::{self, Actual, Cmd, Leaf, FAST_BPS, MIN_RATE_BPS};
use super::{Spec, ViewerClass};

const IFB: &str = "jdshape0";
const LAN: &str = "br-lan";

fn spec(viewers: &[(&str, u64, u64)]) -> Spec {
    Spec {
        lan_device: LAN.into(),
        server_ip: "192.168.1.2".parse().unwrap(),
        server_ip6: None,
        ports: vec![8096],
        total_bps: 20_000_000,
        newcomer_bps: 1_000_000,
        internal: vec!["192.168.0.0/16".parse().unwrap()],
        viewers: viewers
            .iter()
            .map(|(ip, r, c)| ViewerClass {
                ip: ip.parse().unwrap(),
                rate_bps: *r,
                ceil_bps: *c,
            })
            .collect(),
        enforce: true,
    }
}

fn desired(s: &Spec) -> plan::Desired {
    plan::desired(s, IFB, Leaf::Pfifo).unwrap()
}

/// What tc prints back for a rate (kernel keeps bytes/s; tc shortens with K/M/G units).
fn tc_rounded(bps: u64) -> u64 {
    parse::printed_rate(bps / 8 * 8)
}

fn arg<'a>(c: &'a [String], word: &str) -> Option<&'a str> {
    c.iter()
        .position(|t| t == word)
        .and_then(|i| c.get(i + 1))
        .map(String::as_str)
}

fn keys_of(c: &[String]) -> Vec<Key> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i] == "match" && i + 5 < c.len() && c[i + 1] == "u32" {
            let hex = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            out.push(Key {
                value: hex(&c[i + 2]),
                mask: hex(&c[i + 3]),
                off: c[i + 5].parse().unwrap(),
            });
            i += 6;
        } else {
            i += 1;
        }
    }
    out
}

/// A model of the kernel: applies one tc command to the parsed state, failing like tc would
/// on the mistakes that matter (duplicates, missing objects, deleting a class in use).
fn apply(a: &mut Actual, c: &Cmd, next_handle: &mut u32) -> Result<(), String> {
    let w: Vec<&str> = c.iter().map(String::as_str).collect();
    let dev = arg(c, "dev").ok_or("no dev")?;
    match (w[0], w[1], dev == IFB) {
        ("qdisc", "replace", true) if w.contains(&"root") => {
            a.ifb_qdiscs.clear();
            a.ifb_classes.clear();
            a.ifb_filters.clear();
            a.ifb_qdiscs.push(root_htb_default(c));
        }
        ("qdisc", "add", true) if w.contains(&"root") => {
            if a.ifb_qdiscs.iter().any(|q| q.parent.is_none()) {
                return Err("root exists".into());
            }
            a.ifb_qdiscs.push(root_htb_default(c));
        }
        ("qdisc", "del", true) => {
            a.ifb_qdiscs.clear();
            a.ifb_classes.clear();
            a.ifb_filters.clear();
        }
        ("qdisc", "replace", true) => {
            let parent = arg(c, "parent").unwrap().to_string();
            a.ifb_qdiscs
                .retain(|q| q.parent.as_deref() != Some(parent.as_str()));
            a.ifb_qdiscs.push(Qdisc {
                kind: w[8].to_string(),
                handle: arg(c, "handle").unwrap().to_string(),
                parent: Some(parent),
                default_minor: None,
            });
        }
        ("class", verb, true) if verb == "add" || verb == "change" => {
            let (major, minor) = parse::parse_classid(arg(c, "classid").unwrap()).unwrap();
            let parent = arg(c, "parent").unwrap();
            let rate = parse::parse_rate(arg(c, "rate").unwrap()).unwrap();
            let ceil = parse::parse_rate(arg(c, "ceil").unwrap()).unwrap();
            let exists = a.ifb_classes.iter().position(|k| k.minor == minor);
            if verb == "add" && exists.is_some() {
                return Err(format!("class {minor:x} exists"));
            }
            if verb == "change" && exists.is_none() {
                return Err(format!("class {minor:x} missing"));
            }
            let parent_id = if parent.ends_with(':') {
                None
            } else {
                let (_, pm) = parse::parse_classid(parent).unwrap();
                if !a.ifb_classes.iter().any(|k| k.minor == pm) {
                    return Err(format!("parent {parent} missing"));
                }
                Some(parent.to_string())
            };
            let class = Class {
                kind: "htb".into(),
                major,
                minor,
                parent: parent_id,
                rate_bps: tc_rounded(rate),
                ceil_bps: tc_rounded(ceil),
                bytes: exists.map(|i| a.ifb_classes[i].bytes).unwrap_or(0),
            };
            match exists {
                Some(i) => a.ifb_classes[i] = class,
                None => a.ifb_classes.push(class),
            }
        }
        ("class", "del", true) => {
            let id = arg(c, "classid").unwrap();
            if a.ifb_filters
                .iter()
                .any(|f| f.flowid.as_deref() == Some(id))
            {
                return Err(format!("class {id} in use by a filter"));
            }
            let before = a.ifb_classes.len();
            let (_, minor) = parse::parse_classid(id).unwrap();
            a.ifb_classes.retain(|k| k.minor != minor);
            if before == a.ifb_classes.len() {
                return Err("no such class".into());
            }
            a.ifb_qdiscs.retain(|q| q.parent.as_deref() != Some(id));
        }
        ("filter", "del", _) => {
            let proto = arg(c, "protocol").unwrap();
            let prio: u32 = arg(c, "prio").unwrap().parse().unwrap();
            let handle = arg(c, "handle");
            let list = if dev == IFB {
                &mut a.ifb_filters
            } else {
                &mut a.lan_filters
            };
            let before = list.len();
            list.retain(|f| {
                !(f.protocol == proto
                    && f.prio == prio
                    && (handle.is_none() || f.handle.as_deref() == handle))
            });
            if before == list.len() {
                return Err("no such filter".into());
            }
        }
        ("filter", "add", _) => {
            let proto = arg(c, "protocol").unwrap().to_string();
            let prio: u32 = arg(c, "prio").unwrap().parse().unwrap();
            let list = if dev == IFB {
                &mut a.ifb_filters
            } else {
                &mut a.lan_filters
            };
            if list.iter().any(|f| f.prio == prio && f.protocol != proto) {
                return Err("priority in use by another protocol".into());
            }
            *next_handle += 1;
            list.push(Filter {
                protocol: proto,
                prio,
                kind: "u32".into(),
                handle: Some(format!("800::{:x}", *next_handle)),
                flowid: arg(c, "flowid").map(str::to_string),
                keys: keys_of(c),
                redirect_to: if w.contains(&"mirred") {
                    Some(w[w.len() - 1].to_string())
                } else {
                    None
                },
            });
        }
        ("qdisc", "add", false) => {
            if a.lan_qdiscs.iter().any(|q| q.handle == "ffff:") {
                return Err("ingress exists".into());
            }
            a.lan_qdiscs.push(Qdisc {
                kind: "ingress".into(),
                handle: "ffff:".into(),
                parent: Some("ffff:fff1".into()),
                default_minor: None,
            });
        }
        ("qdisc", "del", false) => {
            a.lan_qdiscs.retain(|q| q.kind != "ingress");
            a.lan_filters.clear();
        }
        _ => return Err(format!("model does not know: {}", c.join(" "))),
    }
    Ok(())
}

fn root_htb_default(c: &Cmd) -> Qdisc {
    Qdisc {
        kind: "htb".into(),
        handle: "4a44:".into(),
        parent: None,
        default_minor: arg(c, "default").and_then(|d| u32::from_str_radix(d, 16).ok()),
    }
}

static HANDLES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0x900);

fn apply_all(a: &mut Actual, cmds: &[Cmd]) {
    for c in cmds {
        let mut h = HANDLES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        apply(a, c, &mut h).unwrap_or_else(|e| panic!("{e}\nplan:\n{}", plan::render(cmds)));
    }
}

fn fresh() -> Actual {
    Actual {
        ifb_qdiscs: vec![Qdisc {
            kind: "noqueue".into(),
            handle: "0:".into(),
            parent: None,
            default_minor: None,
        }],
        lan_qdiscs: vec![Qdisc {
            kind: "noqueue".into(),
            handle: "0:".into(),
            parent: None,
            default_minor: None,
        }],
        ..Actual::default()
    }
}

/// Converges in one plan and stays put.
fn converge(a: &mut Actual, s: &Spec) {
    let d = desired(s);
    let cmds = plan::plan(&d, a);
    apply_all(a, &cmds);
    let again = plan::plan(&d, a);
    assert!(again.is_empty(), "not converged:\n{}", plan::render(&again));
}

fn lines(cmds: &[Cmd]) -> Vec<String> {
    cmds.iter().map(|c| c.join(" ")).collect()
}

#[test]
fn a_fresh_router_gets_the_whole_tree() {
    let s = spec(&[("203.0.113.7", 4_000_000, 4_600_000)]);
    let got = lines(&plan::plan(&desired(&s), &fresh()));
    let want = [
        "qdisc replace dev jdshape0 root handle 4a44: htb default e",
        "class add dev jdshape0 parent 4a44: classid 4a44:1 htb rate 10000000000bit ceil 10000000000bit quantum 200000",
        "class add dev jdshape0 parent 4a44:1 classid 4a44:a htb rate 20000000bit ceil 20000000bit quantum 200000",
        "class add dev jdshape0 parent 4a44:a classid 4a44:e htb rate 1000000bit ceil 20000000bit quantum 12500",
        "class add dev jdshape0 parent 4a44:1 classid 4a44:f htb rate 10000000000bit ceil 10000000000bit quantum 200000",
        "qdisc replace dev jdshape0 parent 4a44:e handle e: pfifo limit 128",
        "qdisc replace dev jdshape0 parent 4a44:f handle f: pfifo limit 128",
        "filter add dev jdshape0 parent 4a44: protocol ip prio 16 u32 match u32 0xa9fe0000 0xffff0000 at 16 flowid 4a44:f",
        "filter add dev jdshape0 parent 4a44: protocol ip prio 17 u32 match u32 0xc0a80000 0xffff0000 at 16 flowid 4a44:f",
        "filter add dev jdshape0 parent 4a44: protocol ipv6 prio 18 u32 match u32 0xfe800000 0xffc00000 at 24 flowid 4a44:f",
        "class add dev jdshape0 parent 4a44:a classid 4a44:100 htb rate 4000000bit ceil 4600000bit quantum 50000",
        "qdisc replace dev jdshape0 parent 4a44:100 handle 100: pfifo limit 128",
        "filter add dev jdshape0 parent 4a44: protocol ip prio 256 u32 match u32 0xcb007107 0xffffffff at 16 flowid 4a44:100",
        "qdisc add dev br-lan handle ffff: ingress",
        "filter add dev br-lan ingress protocol ip prio 4 u32 match u32 0x1fa00000 0xffff0000 at 20 match u32 0xc0a80102 0xffffffff at 12 action mirred egress redirect dev jdshape0",
    ];
    assert_eq!(got, want);
}

#[test]
fn applying_the_plan_converges_and_counters_follow_the_classes() {
    let mut a = fresh();
    converge(
        &mut a,
        &spec(&[
            ("203.0.113.7", 4_000_000, 4_600_000),
            ("2001:db8::9", 2_123_456, 2_441_974),
        ]),
    );
    for c in &mut a.ifb_classes {
        c.bytes = u64::from(c.minor) * 1000;
    }
    let counters = plan::counters(&a.ifb_classes, &a.ifb_filters);
    assert_eq!(counters.len(), 2);
    assert_eq!(
        counters[&"203.0.113.7".parse::<IpAddr>().unwrap()],
        0x100 * 1000
    );
    assert_eq!(
        counters[&"2001:db8::9".parse::<IpAddr>().unwrap()],
        0x101 * 1000
    );
}

#[test]
fn a_vanished_viewer_loses_filter_then_class() {
    let mut a = fresh();
    converge(
        &mut a,
        &spec(&[
            ("203.0.113.7", 4_000_000, 4_000_000),
            ("203.0.113.8", 1_000_000, 1_000_000),
        ]),
    );
    let got = lines(&plan::plan(
        &desired(&spec(&[("203.0.113.8", 1_000_000, 1_000_000)])),
        &a,
    ));
    assert_eq!(
        got,
        [
            "filter del dev jdshape0 parent 4a44: protocol ip prio 256",
            "class del dev jdshape0 classid 4a44:100",
        ]
    );
}

#[test]
fn a_new_viewer_never_reuses_a_minor_freed_in_the_same_batch() {
    let mut a = fresh();
    converge(&mut a, &spec(&[("203.0.113.7", 4_000_000, 4_000_000)]));
    let cmds = plan::plan(
        &desired(&spec(&[("203.0.113.9", 1_000_000, 1_000_000)])),
        &a,
    );
    let text = plan::render(&cmds);
    assert!(
        text.contains("class del dev jdshape0 classid 4a44:100"),
        "{text}"
    );
    assert!(text.contains("classid 4a44:101 htb"), "{text}");
    apply_all(&mut a, &cmds);
    assert!(plan::plan(
        &desired(&spec(&[("203.0.113.9", 1_000_000, 1_000_000)])),
        &a
    )
    .is_empty());
}

#[test]
fn a_rate_change_is_one_class_change() {
    let mut a = fresh();
    converge(&mut a, &spec(&[("203.0.113.7", 4_000_000, 4_600_000)]));
    let got = lines(&plan::plan(
        &desired(&spec(&[("203.0.113.7", 3_000_000, 3_450_000)])),
        &a,
    ));
    assert_eq!(
        got,
        ["class change dev jdshape0 parent 4a44:a classid 4a44:100 htb rate 3000000bit ceil 3450000bit quantum 37500"]
    );
}

#[test]
fn rates_read_back_rounded_are_not_changed_again() {
    let mut a = fresh();
    converge(&mut a, &spec(&[("203.0.113.7", 4_123_457, 4_741_975)]));
    let c = a.ifb_classes.iter().find(|c| c.minor == 0x100).unwrap();
    assert_eq!(c.rate_bps, 4_123_000);
}

#[test]
fn the_budget_change_touches_only_the_jellyfin_and_newcomer_ceils() {
    let mut a = fresh();
    converge(&mut a, &spec(&[("203.0.113.7", 4_000_000, 4_000_000)]));
    let mut s = spec(&[("203.0.113.7", 4_000_000, 4_000_000)]);
    s.total_bps = 15_000_000;
    let got = lines(&plan::plan(&desired(&s), &a));
    assert_eq!(
        got,
        [
            "class change dev jdshape0 parent 4a44:1 classid 4a44:a htb rate 15000000bit ceil 15000000bit quantum 187500",
            "class change dev jdshape0 parent 4a44:a classid 4a44:e htb rate 1000000bit ceil 15000000bit quantum 12500",
        ]
    );
}

#[test]
fn counting_only_makes_every_class_fast() {
    let mut s = spec(&[("203.0.113.7", 4_000_000, 4_600_000)]);
    s.enforce = false;
    let d = desired(&s);
    assert_eq!(d.jellyfin_bps, FAST_BPS);
    assert_eq!(d.viewers.values().next(), Some(&(FAST_BPS, FAST_BPS)));
    let mut a = fresh();
    converge(&mut a, &s);
}

#[test]
fn spec_normalisation() {
    let mut s = spec(&[
        ("::ffff:203.0.113.7", 1_000_000, 1_500_000),
        ("203.0.113.7", 2_000_000, 2_000_000),
        ("203.0.113.8", 10, 5),
        ("203.0.113.9", 50_000_000, 90_000_000),
    ]);
    s.total_bps = 30_000_000;
    let d = desired(&s);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // v4-mapped is IPv4; two sessions from one address share one class.
    assert_eq!(d.viewers[&ip("203.0.113.7")], (3_000_000, 3_500_000));
    assert_eq!(d.viewers[&ip("203.0.113.8")], (MIN_RATE_BPS, MIN_RATE_BPS));
    // Capped by the Jellyfin parent.
    assert_eq!(d.viewers[&ip("203.0.113.9")], (30_000_000, 30_000_000));
    assert_eq!(d.viewers.len(), 3);
    s.total_bps = 0;
    assert_eq!(desired(&s).jellyfin_bps, MIN_RATE_BPS);
}

#[test]
fn bad_specs_are_refused_with_a_reason() {
    let mut s = spec(&[]);
    for bad in [
        "",
        "br lan",
        "a;b",
        "averyveryverylongname",
        "br-lan\n",
        "x/y",
    ] {
        s.lan_device = bad.into();
        let e = plan::desired(&s, IFB, Leaf::Pfifo).unwrap_err();
        assert!(e.contains("LAN device"), "{e}");
    }
    let mut s = spec(&[]);
    s.server_ip = Ipv4Addr::UNSPECIFIED.into();
    assert!(plan::desired(&s, IFB, Leaf::Pfifo)
        .unwrap_err()
        .contains("unspecified"));
    let s = spec(&[("0.0.0.0", 1, 1)]);
    assert!(plan::desired(&s, IFB, Leaf::Pfifo).is_err());
    assert!(plan::desired(&spec(&[]), "bad name", Leaf::Pfifo).is_err());
    assert!(plan::desired(&spec(&[]), LAN, Leaf::Pfifo).is_err());
}

fn lan_rules(s: &Spec) -> Vec<(String, u32, usize)> {
    desired(s)
        .lan_rules
        .iter()
        .map(|r| (r.protocol.to_string(), r.prio, r.keys.len()))
        .collect()
}

#[test]
fn lan_rules_per_address_family_and_port() {
    let mut s = spec(&[]);
    s.ports = vec![8920, 8096, 8096, 0];
    // Without the server's IPv6 address, no IPv6 rule: another LAN host's service on the
    // same port must not be shaped.
    assert_eq!(lan_rules(&s), [("ip".into(), 4, 2), ("ip".into(), 4, 2)]);
    s.server_ip6 = Some("2001:db8::2".parse().unwrap());
    assert_eq!(
        lan_rules(&s),
        [
            ("ip".into(), 4, 2),
            ("ip".into(), 4, 2),
            ("ipv6".into(), 6, 5),
            ("ipv6".into(), 6, 5)
        ]
    );
    s.ports.clear();
    assert_eq!(lan_rules(&s), [("ip".into(), 4, 1), ("ipv6".into(), 6, 4)]);
    s.server_ip6 = None;
    assert_eq!(lan_rules(&s), [("ip".into(), 4, 1)]);
    s.server_ip = "2001:db8::5".parse().unwrap();
    assert_eq!(lan_rules(&s), [("ipv6".into(), 6, 4)]);
}

fn foreign_lan() -> (Vec<Qdisc>, Vec<Filter>) {
    let q = parse::qdiscs(
        "qdisc noqueue 0: root refcnt 2\nqdisc ingress ffff: parent ffff:fff1 ----------------\n",
    );
    let f = parse::filters(
        "filter protocol all pref 10 u32 chain 0
filter protocol all pref 10 u32 chain 0 fh 800: ht divisor 1
filter protocol all pref 10 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 terminal flowid not_in_hw
  match 00000000/00000000 at 0
	action order 1: mirred (Egress Redirect to device ifb4lan) stolen
",
    );
    (q, f)
}

#[test]
fn a_foreign_ingress_hook_is_shared_not_replaced() {
    let (q, f) = foreign_lan();
    let mut a = fresh();
    a.lan_qdiscs = q;
    a.lan_filters = f.clone();
    let s = spec(&[("203.0.113.7", 4_000_000, 4_000_000)]);
    let cmds = plan::plan(&desired(&s), &a);
    let text = plan::render(&cmds);
    assert!(!text.contains("qdisc add dev br-lan"), "{text}");
    assert!(!text.contains("ifb4lan"), "{text}");
    apply_all(&mut a, &cmds);
    converge(&mut a, &s);
    let rm = plan::plan_remove(LAN, IFB, &a.lan_qdiscs, &a.lan_filters);
    let text = plan::render(&rm);
    assert!(!text.contains("qdisc del"), "{text}");
    assert!(!text.contains("prio 10"), "{text}");
    apply_all(&mut a, &rm);
    assert_eq!(a.lan_filters, f);
}

#[test]
fn clsact_is_used_and_never_deleted() {
    let mut a = fresh();
    a.lan_qdiscs = parse::qdiscs("qdisc clsact ffff: parent ffff:fff1\n");
    let s = spec(&[]);
    let cmds = plan::plan(&desired(&s), &a);
    assert!(!plan::render(&cmds).contains("ingress\n"));
    apply_all(&mut a, &cmds);
    let rm = plan::plan_remove(LAN, IFB, &a.lan_qdiscs, &a.lan_filters);
    assert!(!plan::render(&rm).contains("qdisc del"));
    assert_eq!(rm.len(), 1, "{}", plan::render(&rm));
}

#[test]
fn remove_takes_our_filters_and_the_hook_we_made() {
    let mut a = fresh();
    let mut s = spec(&[("203.0.113.7", 4_000_000, 4_000_000)]);
    s.server_ip6 = Some("2001:db8:2::2".parse().unwrap());
    converge(&mut a, &s);
    let rm = lines(&plan::plan_remove(LAN, IFB, &a.lan_qdiscs, &a.lan_filters));
    assert_eq!(
        rm,
        [
            "filter del dev br-lan ingress protocol ip prio 4",
            "filter del dev br-lan ingress protocol ipv6 prio 6",
            "qdisc del dev br-lan ingress",
        ]
    );
    assert!(plan::plan_remove(LAN, IFB, &[], &[]).is_empty());
}

#[test]
fn orphaned_redirects_at_our_priorities_are_replaced() {
    let mut a = fresh();
    let mut s = spec(&[]);
    s.server_ip6 = Some("2001:db8:2::2".parse().unwrap());
    converge(&mut a, &s);
    for f in &mut a.lan_filters {
        f.redirect_to = Some("*".into());
    }
    let got = plan::render(&plan::plan(&desired(&s), &a));
    assert_eq!(got.matches("filter del dev br-lan").count(), 2, "{got}");
    assert_eq!(got.matches("filter add dev br-lan").count(), 2, "{got}");
    // Someone else's orphan elsewhere stays.
    let (q, f) = foreign_lan();
    let mut a = fresh();
    a.lan_qdiscs = q;
    a.lan_filters = f;
    a.lan_filters[2].redirect_to = Some("*".into());
    let got = plan::render(&plan::plan(&desired(&spec(&[])), &a));
    assert!(!got.contains("del"), "{got}");
}

#[test]
fn a_changed_server_address_swaps_the_lan_filters() {
    let mut a = fresh();
    converge(&mut a, &spec(&[]));
    let mut s = spec(&[]);
    s.server_ip = "192.168.1.3".parse().unwrap();
    let got = plan::render(&plan::plan(&desired(&s), &a));
    assert_eq!(
        got.matches("filter del dev br-lan ingress protocol ip prio 4 handle")
            .count(),
        1,
        "{got}"
    );
    assert_eq!(got.matches("filter add dev br-lan").count(), 1, "{got}");
    converge(&mut a, &s);
}

#[test]
fn duplicate_lan_filters_are_reduced_to_one() {
    let mut a = fresh();
    converge(&mut a, &spec(&[]));
    let dup = a.lan_filters[0].clone();
    let mut dup2 = dup.clone();
    dup2.handle = Some("800::999".into());
    a.lan_filters.push(dup2);
    let got = plan::render(&plan::plan(&desired(&spec(&[])), &a));
    assert_eq!(got.matches("filter del").count(), 1, "{got}");
    assert!(!got.contains("filter add"), "{got}");
}

#[test]
fn a_foreign_or_broken_tree_on_the_ifb_is_rebuilt() {
    // Someone else's root qdisc on our ifb.
    let mut a = fresh();
    a.ifb_qdiscs = parse::qdiscs("qdisc tbf 1: root refcnt 2 rate 1Mbit burst 10Kb lat 50ms\n");
    let got = plan::render(&plan::plan(&desired(&spec(&[])), &a));
    assert!(
        got.starts_with("qdisc replace dev jdshape0 root handle 4a44: htb default e\n"),
        "{got}"
    );
    // Our root, but an unknown class under it.
    let mut a = fresh();
    converge(&mut a, &spec(&[("203.0.113.7", 4_000_000, 4_000_000)]));
    a.ifb_classes.push(Class {
        kind: "htb".into(),
        major: 0x4a44,
        minor: 0x20,
        parent: Some("4a44:1".into()),
        rate_bps: 1,
        ceil_bps: 1,
        bytes: 0,
    });
    let cmds = plan::plan(
        &desired(&spec(&[("203.0.113.7", 4_000_000, 4_000_000)])),
        &a,
    );
    let got = lines(&cmds);
    assert_eq!(got[0], "qdisc del dev jdshape0 root");
    assert_eq!(
        got[1],
        "qdisc add dev jdshape0 root handle 4a44: htb default e"
    );
    apply_all(&mut a, &cmds);
    converge(&mut a, &spec(&[("203.0.113.7", 4_000_000, 4_000_000)]));
    // Our root with the wrong default class.
    a.ifb_qdiscs[0].default_minor = Some(0x2);
    let got = lines(&plan::plan(&desired(&spec(&[])), &a));
    assert_eq!(got[0], "qdisc del dev jdshape0 root");
}

#[test]
fn a_wrong_leaf_is_replaced_and_a_missing_one_added() {
    let mut a = fresh();
    converge(&mut a, &spec(&[("203.0.113.7", 4_000_000, 4_000_000)]));
    let d = plan::desired(
        &spec(&[("203.0.113.7", 4_000_000, 4_000_000)]),
        IFB,
        Leaf::FqCodel,
    )
    .unwrap();
    let got = lines(&plan::plan(&d, &a));
    assert_eq!(
        got,
        [
            "qdisc replace dev jdshape0 parent 4a44:e handle e: fq_codel limit 1000 memory_limit 4Mb",
            "qdisc replace dev jdshape0 parent 4a44:f handle f: fq_codel limit 1000 memory_limit 4Mb",
            "qdisc replace dev jdshape0 parent 4a44:100 handle 100: fq_codel limit 1000 memory_limit 4Mb",
        ]
    );
}

#[test]
fn stale_viewer_objects_are_cleaned() {
    let mut a = fresh();
    let s = spec(&[("203.0.113.7", 4_000_000, 4_000_000)]);
    converge(&mut a, &s);
    // A class without its filter (a crash between two commands), and a filter of a class
    // that is gone.
    a.ifb_filters.clear();
    a.ifb_filters.push(Filter {
        protocol: "ip".into(),
        prio: 0x300,
        kind: "u32".into(),
        handle: Some("800::800".into()),
        flowid: Some("4a44:300".into()),
        keys: vec![Key {
            value: 1,
            mask: u32::MAX,
            off: 16,
        }],
        redirect_to: None,
    });
    let cmds = plan::plan(&desired(&s), &a);
    let got = plan::render(&cmds);
    assert!(
        got.contains("filter del dev jdshape0 parent 4a44: protocol ip prio 768"),
        "{got}"
    );
    assert!(
        got.contains("class del dev jdshape0 classid 4a44:100"),
        "{got}"
    );
    assert!(got.contains("classid 4a44:101 htb"), "{got}");
    apply_all(&mut a, &cmds);
    assert!(plan::plan(&desired(&s), &a).is_empty());
    assert_eq!(
        plan::intact_viewers(&a.ifb_classes, &a.ifb_filters).len(),
        1
    );
}

#[test]
fn two_classes_for_one_address_keep_the_lower() {
    let mut a = fresh();
    let s = spec(&[("203.0.113.7", 4_000_000, 4_000_000)]);
    converge(&mut a, &s);
    let mut c = a
        .ifb_classes
        .iter()
        .find(|c| c.minor == 0x100)
        .unwrap()
        .clone();
    c.minor = 0x105;
    a.ifb_classes.push(c);
    let mut f = a.ifb_filters[0].clone();
    f.prio = 0x105;
    f.flowid = Some("4a44:105".into());
    a.ifb_filters.push(f);
    let iv = plan::intact_viewers(&a.ifb_classes, &a.ifb_filters);
    assert_eq!(iv.keys().copied().collect::<Vec<_>>(), [0x100]);
    let got = lines(&plan::plan(&desired(&s), &a));
    assert_eq!(
        got,
        [
            "filter del dev jdshape0 parent 4a44: protocol ip prio 261",
            "class del dev jdshape0 classid 4a44:105",
        ]
    );
}

#[test]
fn the_viewer_range_can_run_out_without_panicking() {
    let many: Vec<ViewerClass> = (0..4000u32)
        .map(|i| ViewerClass {
            ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            rate_bps: 1_000_000,
            ceil_bps: 1_000_000,
        })
        .collect();
    let mut s = spec(&[]);
    s.viewers = many;
    let cmds = plan::plan(&desired(&s), &fresh());
    let classes = cmds
        .iter()
        .filter(|c| c[0] == "class" && c[1] == "add")
        .count();
    assert_eq!(
        classes,
        4 + usize::from(plan::VIEWER_LAST - plan::VIEWER_FIRST) + 1
    );
}

#[test]
fn newcomers_get_the_minimum_share_up_to_the_budget() {
    let mut s = spec(&[]);
    let d = desired(&s);
    assert_eq!(d.newcomer, (1_000_000, 20_000_000));
    s.newcomer_bps = 0;
    assert_eq!(desired(&s).newcomer, (MIN_RATE_BPS, 20_000_000));
    s.newcomer_bps = 50_000_000;
    assert_eq!(desired(&s).newcomer, (20_000_000, 20_000_000));
    // Counting only: newcomers are as unlimited as everyone else.
    s.enforce = false;
    assert_eq!(desired(&s).newcomer, (FAST_BPS, FAST_BPS));
    // A new minimum is one class change.
    let mut a = fresh();
    converge(&mut a, &spec(&[("203.0.113.7", 4_000_000, 4_000_000)]));
    let mut s = spec(&[("203.0.113.7", 4_000_000, 4_000_000)]);
    s.newcomer_bps = 2_000_000;
    assert_eq!(
        lines(&plan::plan(&desired(&s), &a)),
        ["class change dev jdshape0 parent 4a44:a classid 4a44:e htb rate 2000000bit ceil 20000000bit quantum 25000"]
    );
    let root = a.ifb_qdiscs.iter().find(|q| q.parent.is_none()).unwrap();
    assert_eq!(root.default_minor, Some(u32::from(plan::MINOR_NEWCOMER)));
    let e = a.ifb_classes.iter().find(|c| c.minor == 0xe).unwrap();
    assert_eq!(e.parent.as_deref(), Some("4a44:a"));
}

fn internal_of(nets: &[&str]) -> Vec<String> {
    let mut s = spec(&[]);
    s.internal = nets.iter().map(|n| n.parse().unwrap()).collect();
    desired(&s).internal.iter().map(|n| n.to_string()).collect()
}

#[test]
fn internal_ranges_are_normalised() {
    // Link-local is always there.
    assert_eq!(internal_of(&[]), ["169.254.0.0/16", "fe80::/10"]);
    // Host bits dropped, duplicates and covered ranges merged, adjacent halves joined,
    // IPv4-mapped IPv6 taken as IPv4.
    assert_eq!(
        internal_of(&[
            "192.168.1.77/16",
            "192.168.1.0/24",
            "10.0.0.0/9",
            "10.128.0.0/9",
            "::ffff:172.16.0.0/108",
            "fc00::/7",
            "fd00::/8",
        ]),
        [
            "10.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
            "fe80::/10"
        ]
    );
    let many: Vec<String> = (0..300u32)
        .map(|i| format!("{}/32", Ipv4Addr::from(0x0a00_0000 + 2 * i)))
        .collect();
    let mut s = spec(&[]);
    s.internal = many.iter().map(|n| n.parse().unwrap()).collect();
    let e = plan::desired(&s, IFB, Leaf::Pfifo).unwrap_err();
    assert!(e.contains("too many internal ranges"), "{e}");
}

#[test]
fn internal_filters_match_ipv4_and_ipv6_prefixes() {
    let mut s = spec(&[]);
    s.internal = ["0.0.0.0/0", "2001:db8:aa::/48", "2001:db8::2/128", "::/0"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    let got: Vec<String> = lines(&plan::plan(&desired(&s), &fresh()))
        .into_iter()
        .filter(|l| l.contains("flowid 4a44:f"))
        .collect();
    let p = "filter add dev jdshape0 parent 4a44:";
    assert_eq!(
        got,
        [
            format!(
                "{p} protocol ip prio 16 u32 match u32 0x00000000 0x00000000 at 16 flowid 4a44:f"
            ),
            format!(
                "{p} protocol ipv6 prio 17 u32 match u32 0x00000000 0x00000000 at 24 flowid 4a44:f"
            ),
        ]
    );
    s.internal = ["2001:db8:aa::/48", "2001:db8::2/128", "fc00::/7"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    let got: Vec<String> = lines(&plan::plan(&desired(&s), &fresh()))
        .into_iter()
        .filter(|l| l.contains("flowid 4a44:f"))
        .collect();
    assert_eq!(
        got,
        [
            format!("{p} protocol ip prio 16 u32 match u32 0xa9fe0000 0xffff0000 at 16 flowid 4a44:f"),
            format!("{p} protocol ipv6 prio 17 u32 match u32 0x20010db8 0xffffffff at 24 match u32 0x00000000 0xffffffff at 28 match u32 0x00000000 0xffffffff at 32 match u32 0x00000002 0xffffffff at 36 flowid 4a44:f"),
            format!("{p} protocol ipv6 prio 18 u32 match u32 0x20010db8 0xffffffff at 24 match u32 0x00aa0000 0xffff0000 at 28 flowid 4a44:f"),
            format!("{p} protocol ipv6 prio 19 u32 match u32 0xfc000000 0xfe000000 at 24 flowid 4a44:f"),
            format!("{p} protocol ipv6 prio 20 u32 match u32 0xfe800000 0xffc00000 at 24 flowid 4a44:f"),
        ]
    );
}

#[test]
fn a_changed_internal_list_touches_only_the_shifted_filters() {
    let mut a = fresh();
    let mut s = spec(&[("203.0.113.7", 4_000_000, 4_000_000)]);
    converge(&mut a, &s);
    // 10/8 sorts first: every internal priority shifts by one.
    s.internal.push("10.0.0.0/8".parse().unwrap());
    let got = lines(&plan::plan(&desired(&s), &a));
    assert_eq!(
        got,
        [
            "filter del dev jdshape0 parent 4a44: protocol ip prio 16",
            "filter del dev jdshape0 parent 4a44: protocol ip prio 17",
            "filter del dev jdshape0 parent 4a44: protocol ipv6 prio 18",
            "filter add dev jdshape0 parent 4a44: protocol ip prio 16 u32 match u32 0x0a000000 0xff000000 at 16 flowid 4a44:f",
            "filter add dev jdshape0 parent 4a44: protocol ip prio 17 u32 match u32 0xa9fe0000 0xffff0000 at 16 flowid 4a44:f",
            "filter add dev jdshape0 parent 4a44: protocol ip prio 18 u32 match u32 0xc0a80000 0xffff0000 at 16 flowid 4a44:f",
            "filter add dev jdshape0 parent 4a44: protocol ipv6 prio 19 u32 match u32 0xfe800000 0xffc00000 at 24 flowid 4a44:f",
        ]
    );
    converge(&mut a, &s);
    // Back again: the surplus priority goes, the viewer stays.
    s.internal.pop();
    converge(&mut a, &s);
    let prios: Vec<u32> = a.ifb_filters.iter().map(|f| f.prio).collect();
    assert_eq!(prios, [256, 16, 17, 18], "{:?}", a.ifb_filters);
}

#[test]
fn a_tampered_internal_filter_is_replaced() {
    let s = spec(&[("203.0.113.7", 4_000_000, 4_000_000)]);
    let tampers: [fn(&mut Filter); 4] = [
        |f| f.flowid = Some("4a44:e".into()),
        |f| f.keys[0].mask = 0xff00_0000,
        |f| f.kind = "bpf".into(),
        |f| f.prio = 0x30,
    ];
    for tamper in tampers {
        let mut a = fresh();
        converge(&mut a, &s);
        let i = a.ifb_filters.iter().position(|f| f.prio == 17).unwrap();
        tamper(&mut a.ifb_filters[i]);
        let cmds = plan::plan(&desired(&s), &a);
        let got = plan::render(&cmds);
        assert!(
            got.contains("filter add dev jdshape0 parent 4a44: protocol ip prio 17 "),
            "{got}"
        );
        assert!(!got.contains("class"), "{got}");
        apply_all(&mut a, &cmds);
        assert!(plan::plan(&desired(&s), &a).is_empty());
        assert!(!a.ifb_filters.iter().any(|f| f.prio == 0x30));
    }
    // A second rule at an internal priority: the priority is rebuilt with one rule.
    let mut a = fresh();
    converge(&mut a, &s);
    let mut dup = a.ifb_filters.iter().find(|f| f.prio == 17).unwrap().clone();
    dup.handle = Some("800::999".into());
    a.ifb_filters.push(dup);
    let got = lines(&plan::plan(&desired(&s), &a));
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0],
        "filter del dev jdshape0 parent 4a44: protocol ip prio 17"
    );
}

#[test]
fn an_old_tree_with_default_f_is_rebuilt_once() {
    // What earlier versions left: `default f`, no newcomer class, no internal filters.
    let s = spec(&[("203.0.113.7", 4_000_000, 4_000_000)]);
    let mut a = fresh();
    converge(&mut a, &s);
    a.ifb_qdiscs
        .iter_mut()
        .filter(|q| q.parent.is_none())
        .for_each(|q| q.default_minor = Some(0xf));
    a.ifb_classes.retain(|c| c.minor != 0xe);
    a.ifb_qdiscs.retain(|q| q.handle != "e:");
    a.ifb_filters.retain(|f| f.prio >= 0x100);
    let old_lan = a.lan_filters.clone();
    let cmds = plan::plan(&desired(&s), &a);
    let got = lines(&cmds);
    assert_eq!(got[0], "qdisc del dev jdshape0 root");
    assert_eq!(
        got[1],
        "qdisc add dev jdshape0 root handle 4a44: htb default e"
    );
    assert!(
        got.iter().all(|l| !l.contains("br-lan")),
        "the LAN hook was fine: {got:?}"
    );
    apply_all(&mut a, &cmds);
    assert!(plan::plan(&desired(&s), &a).is_empty());
    assert_eq!(a.lan_filters, old_lan);
    assert_eq!(
        plan::intact_viewers(&a.ifb_classes, &a.ifb_filters)
            .values()
            .collect::<Vec<_>>(),
        [&"203.0.113.7".parse::<IpAddr>().unwrap()]
    );
    // A newcomer class in the wrong place is rebuilt too.
    let e = a.ifb_classes.iter_mut().find(|c| c.minor == 0xe).unwrap();
    e.parent = Some("4a44:1".into());
    assert_eq!(
        lines(&plan::plan(&desired(&s), &a))[0],
        "qdisc del dev jdshape0 root"
    );
}

#[test]
fn jellyfin_bytes_is_the_parent_class_counter() {
    let mut a = fresh();
    assert_eq!(plan::jellyfin_bytes(&a.ifb_classes), 0);
    converge(&mut a, &spec(&[("203.0.113.7", 4_000_000, 4_000_000)]));
    for c in &mut a.ifb_classes {
        c.bytes = u64::from(c.minor) + 1_000;
    }
    assert_eq!(plan::jellyfin_bytes(&a.ifb_classes), 0xa + 1_000);
    let text = "class htb 4a44:a parent 4a44:1 rate 20Mbit ceil 20Mbit burst 1600b cburst 1600b
 Sent 18446744073709551615 bytes 3 pkt (dropped 0, overlimits 0 requeues 0)
class htb 1:a parent 1:1 rate 20Mbit ceil 20Mbit burst 1600b cburst 1600b
 Sent 5 bytes 3 pkt (dropped 0, overlimits 0 requeues 0)
";
    assert_eq!(plan::jellyfin_bytes(&parse::classes(text)), u64::MAX);
}

fn ip_strategy() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u8..6).prop_map(|i| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i))),
        (1u16..4).prop_map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i))),
    ]
}

/// Overlapping, adjacent, IPv4-mapped and IPv6 ranges, so aggregation shifts priorities.
const INTERNAL_CHOICES: [&str; 8] = [
    "192.168.0.0/16",
    "192.168.1.0/24",
    "10.0.0.0/9",
    "10.128.0.0/9",
    "172.16.0.0/12",
    "::ffff:100.64.0.0/106",
    "fc00::/7",
    "2001:db8:aa::/48",
];

fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        proptest::collection::vec((ip_strategy(), 0u64..60_000_000, 0u64..80_000_000), 0..7),
        1_000_000u64..100_000_000,
        any::<bool>(),
        proptest::collection::vec(prop_oneof![Just(8096u16), Just(8920u16), Just(0u16)], 0..3),
        any::<bool>(),
        proptest::sample::subsequence(INTERNAL_CHOICES.to_vec(), 0..INTERNAL_CHOICES.len()),
        0u64..5_000_000,
    )
        .prop_map(
            |(viewers, total, enforce, ports, v6, internal, newcomer)| Spec {
                lan_device: LAN.into(),
                server_ip: "192.168.1.2".parse().unwrap(),
                server_ip6: v6.then(|| "2001:db8::2".parse().unwrap()),
                ports,
                total_bps: total,
                newcomer_bps: newcomer,
                internal: internal.iter().map(|n| n.parse().unwrap()).collect(),
                viewers: viewers
                    .into_iter()
                    .map(|(ip, rate_bps, ceil_bps)| ViewerClass {
                        ip,
                        rate_bps,
                        ceil_bps,
                    })
                    .collect(),
                enforce,
            },
        )
}

proptest! {
    /// Any sequence of ticks: each plan applies cleanly, converges at once, leaves exactly the
    /// wanted viewers with their rates, keeps a surviving viewer's class (and counter), and
    /// never touches the foreign ingress filter; removal leaves only the foreign filter.
    #[test]
    fn every_tick_converges(specs in proptest::collection::vec(spec_strategy(), 1..8)) {
        let (q, foreign) = foreign_lan();
        let mut a = fresh();
        a.lan_qdiscs = q;
        a.lan_filters = foreign.clone();
        let mut prev: Option<std::collections::BTreeMap<u16, IpAddr>> = None;
        for s in &specs {
            let d = desired(s);
            converge(&mut a, s);
            let iv = plan::intact_viewers(&a.ifb_classes, &a.ifb_filters);
            let ips: BTreeSet<IpAddr> = iv.values().copied().collect();
            prop_assert_eq!(&ips, &d.viewers.keys().copied().collect::<BTreeSet<_>>());
            prop_assert_eq!(iv.len(), a.ifb_classes.len() - 4);
            for (minor, ip) in &iv {
                let c = a.ifb_classes.iter().find(|c| c.minor == *minor).unwrap();
                let (rate, ceil) = d.viewers[ip];
                prop_assert!(c.rate_bps.abs_diff(rate) <= (rate / 200).max(1000));
                prop_assert!(c.ceil_bps.abs_diff(ceil) <= (ceil / 200).max(1000));
                prop_assert!(ceil >= rate && (!s.enforce || ceil <= d.jellyfin_bps));
                if let Some(p) = &prev {
                    if let Some((old_minor, _)) = p.iter().find(|(_, pip)| *pip == ip) {
                        prop_assert_eq!(old_minor, minor, "a surviving viewer moved class");
                    }
                }
            }
            prop_assert!(a.lan_filters.iter().any(|f| *f == foreign[2]));
            // Internal prefixes: one rule each at consecutive priorities, to the unlimited class.
            let internal: Vec<&Filter> = a
                .ifb_filters
                .iter()
                .filter(|f| f.prio < u32::from(plan::VIEWER_FIRST))
                .collect();
            prop_assert_eq!(internal.len(), d.internal.len());
            for f in &internal {
                prop_assert_eq!(f.flowid.as_deref(), Some("4a44:f"));
                let i = (f.prio - u32::from(plan::INTERNAL_FIRST)) as usize;
                let want = if d.internal[i].addr().is_ipv4() { "ip" } else { "ipv6" };
                prop_assert_eq!(f.protocol.as_str(), want);
            }
            let e = a.ifb_classes.iter().find(|c| c.minor == plan::MINOR_NEWCOMER).unwrap();
            prop_assert!(e.rate_bps.abs_diff(d.newcomer.0) <= (d.newcomer.0 / 200).max(1000));
            prop_assert!(e.ceil_bps.abs_diff(d.jellyfin_bps) <= (d.jellyfin_bps / 200).max(1000));
            prop_assert_eq!(
                a.lan_filters.iter().filter(|f| f.redirect_to.as_deref() == Some(IFB)).count(),
                d.lan_rules.len()
            );
            prev = Some(iv);
        }
        let rm = plan::plan_remove(LAN, IFB, &a.lan_qdiscs, &a.lan_filters);
        apply_all(&mut a, &rm);
        prop_assert_eq!(&a.lan_filters, &foreign);
    }

    #[test]
    fn parsers_never_panic(text in "[a-z0-9:/ \\n\\t*()]{0,300}") {
        let _ = parse::qdiscs(&text);
        let _ = parse::classes(&text);
        let _ = parse::filters(&text);
    }
}
