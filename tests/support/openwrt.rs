//! What the emulated router needs of OpenWrt that cannot run here: netifd's answer to
//! `ubus call network.interface.<name> status`, and files under `/etc/config` (the firewall's).
//!
//! **`ubus` here is a stand-in**, not ubus: netifd, ubusd and procd do not run on a Linux PC.
//! It answers the one call jellydemon makes, in the shape of netifd's `netifd_dump_status`
//! (openwrt/netifd, ubus.c, at e97e36f9b5b5): `up`, `pending`, `available`, `autostart`,
//! `dynamic`, `proto`, `device` (the main device, when it exists); while up also `uptime`,
//! `l3_device`, `metric`, `dns_metric`, `delegation`, and the arrays `ipv4-address` and
//! `ipv6-address` (each `{address, mask}`; from `interface_ip_dump_address_list`),
//! `ipv6-prefix` (`{address, mask, class, assigned}`; `interface_ip_dump_prefix_list`),
//! `ipv6-prefix-assignment` (`{address, mask, local-address: {address, mask}}`;
//! `interface_ip_dump_prefix_assignment_list`), `route`, `dns-server`, `dns-search`,
//! `neighbors`, `inactive`; and `data`. An unknown interface makes real ubus print
//! "Command failed: Not found" and exit 4 (UBUS_STATUS_NOT_FOUND); so does this one.
//!
//! netifd answers from what it configured; the stand-in reads the same from the kernel (the
//! test network configures the devices as netifd would have): the interface's device is
//! given in a small JSON file (`HOMENET_NETIFD`), its addresses are those of that device
//! (global scope, as netifd lists only those it set; link-local ones are the kernel's). An
//! interface with `ip6assign` reports its global IPv6 addresses as a prefix assignment with
//! the router's `local-address`, as netifd does for a LAN that receives part of a delegated
//! prefix; `prefix` entries become `ipv6-prefix` (the ISP's delegation on `wan6`).
//!
//! The file: `{"interfaces": {"lan": {"device": "br-lan", "proto": "static",
//! "ip6assign": 64}, "wan": {"device": "wan", "proto": "dhcp"}, "wan6": {"device": "wan",
//! "proto": "dhcpv6", "prefix": ["2001:db8:2::/48"]}}}`. Tests rewrite it to follow the
//! network (a PPPoE WAN coming back as `pppoe-wan`), as netifd would update its state.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// The environment variable naming the stand-in's interface file.
pub const NETIFD_ENV: &str = "HOMENET_NETIFD";

/// `ubus ...` as the stand-in answers it; returns the exit code.
pub fn ubus_main(args: &[String]) -> i32 {
    let mut call: Vec<&str> = args.iter().map(String::as_str).collect();
    // `-t <seconds>` (ubus's request timeout) is accepted and has nothing to wait for here.
    if call.first() == Some(&"-t") && call.len() >= 2 {
        call.drain(..2);
    }
    let name = match call.as_slice() {
        ["call", obj, "status", ..] => match obj.strip_prefix("network.interface.") {
            Some(n) => n.to_string(),
            None => return not_found(),
        },
        _ => {
            eprintln!("ubus stand-in: only `call network.interface.<name> status` is emulated");
            return 2;
        }
    };
    let conf = match std::env::var(NETIFD_ENV)
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
    {
        Some(c) => c,
        // ubus without ubusd: "Failed to connect to ubus", exit 255... a failed command.
        None => {
            eprintln!("Failed to connect to ubus");
            return 255;
        }
    };
    let Some(iface) = conf["interfaces"].get(&name) else {
        return not_found();
    };
    println!("{}", status(iface));
    0
}

fn not_found() -> i32 {
    eprintln!("Command failed: Not found");
    4
}

fn ip_json(args: &[&str]) -> Option<Value> {
    let out = Command::new("ip")
        .args(["-j"])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// One interface's status from its description and the kernel's view of its device.
pub fn status(iface: &Value) -> Value {
    let device = iface["device"].as_str().unwrap_or("");
    let proto = iface["proto"].as_str().unwrap_or("static");
    let link = ip_json(&["addr", "show", "dev", device]).and_then(|v| v.get(0).cloned());
    let mut st = json!({
        "up": false, "pending": false, "available": link.is_some(), "autostart": true,
        "dynamic": false, "proto": proto,
    });
    let Some(link) = link else {
        // A PPPoE interface between two sessions: no device, not up, still pending.
        st["pending"] = json!(true);
        st["data"] = json!({});
        return st;
    };
    st["device"] = json!(device);
    let up = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    if !up {
        st["data"] = json!({});
        return st;
    }
    st["up"] = json!(true);
    st["uptime"] = json!(60);
    st["l3_device"] = json!(device);
    st["updated"] = json!(["addresses"]);
    st["metric"] = json!(0);
    st["dns_metric"] = json!(0);
    st["delegation"] = json!(true);
    let assign = iface["ip6assign"].as_u64();
    let (mut v4, mut v6, mut assigned) = (vec![], vec![], vec![]);
    for a in link["addr_info"].as_array().into_iter().flatten() {
        if a["scope"] != "global" {
            continue;
        }
        let (Some(local), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
            continue;
        };
        match (a["family"].as_str(), assign) {
            (Some("inet"), _) => v4.push(json!({"address": local, "mask": len})),
            (Some("inet6"), Some(alen)) => {
                let net: ipnet::Ipv6Net = format!("{local}/{alen}")
                    .parse::<ipnet::Ipv6Net>()
                    .map(|n| n.trunc())
                    .unwrap_or_default();
                assigned.push(json!({
                    "address": net.addr().to_string(), "mask": alen,
                    "preferred": 3600, "valid": 7200,
                    "local-address": {"address": local, "mask": alen}
                }));
            }
            (Some("inet6"), None) => v6.push(json!({"address": local, "mask": len,
                "preferred": 3600, "valid": 7200})),
            _ => {}
        }
    }
    let prefixes: Vec<Value> = iface["prefix"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str()?.parse::<ipnet::Ipv6Net>().ok())
        .map(|p| {
            json!({"address": p.network().to_string(), "mask": p.prefix_len(),
                   "preferred": 3600, "valid": 7200, "class": "wan6", "assigned": {}})
        })
        .collect();
    st["ipv4-address"] = json!(v4);
    st["ipv6-address"] = json!(v6);
    st["ipv6-prefix"] = json!(prefixes);
    st["ipv6-prefix-assignment"] = json!(assigned);
    for k in ["route", "dns-server", "dns-search", "neighbors"] {
        st[k] = json!([]);
    }
    st["inactive"] = json!({"ipv4-address": [], "ipv6-address": [], "route": [],
        "dns-server": [], "dns-search": [], "neighbors": []});
    st["data"] = json!({});
    st
}

/// `homenet router-exec [--etc DIR] [--netifd FILE] -- PROGRAM ARGS...`: runs PROGRAM as on
/// the emulated OpenWrt router: `ubus` on its PATH is the stand-in above (this program under
/// that name, answering from FILE), and DIR's files lie over `/etc` (e.g. DIR/config/firewall
/// as `/etc/config/firewall`) through a read-only overlay in a private mount namespace, so the
/// host's `/etc` is never touched.
pub fn router_exec_main(args: &[String]) -> Result<(), String> {
    let sep = args
        .iter()
        .position(|a| a == "--")
        .ok_or("router-exec needs -- PROGRAM")?;
    let (opts, prog) = (&args[..sep], &args[sep + 1..]);
    let (mut etc, mut netifd) = (None, None);
    let mut it = opts.iter();
    while let Some(o) = it.next() {
        let v = it.next().ok_or_else(|| format!("{o} needs a value"))?;
        match o.as_str() {
            "--etc" => etc = Some(v.clone()),
            "--netifd" => netifd = Some(v.clone()),
            _ => return Err(format!("unknown option {o}")),
        }
    }
    let (program, rest) = prog.split_first().ok_or("router-exec needs a PROGRAM")?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    if let Some(file) = netifd {
        // A directory holding `ubus` → this program, first on PATH.
        let dir = std::path::Path::new(&file)
            .parent()
            .ok_or("--netifd FILE needs a directory")?
            .join("bin");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let link = dir.join("ubus");
        if !link.exists() {
            let me = std::env::current_exe().map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(me, &link)
                .map_err(|e| format!("{}: {e}", link.display()))?;
        }
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", dir.display()));
        cmd.env(NETIFD_ENV, &file);
    }
    if let Some(dir) = etc {
        use nix::mount::{mount, MsFlags};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("unshare: {e}"))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("private /: {e}"))?;
        let opts = format!("lowerdir={dir}:/etc");
        mount(
            Some("overlay"),
            "/etc",
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(opts.as_str()),
        )
        .map_err(|e| format!("overlay on /etc: {e}"))?;
    }
    Err(format!("exec {program}: {}", cmd.exec()))
}
