//! The emulated home network, exercised for real: network namespaces, veth, a bridge, nftables
//! NAT, the HTB modem. Needs root (CAP_NET_ADMIN) and the `homenet` example
//! (`cargo build --examples`, which `make test` does first).

#[path = "support/load.rs"]
mod load;
#[path = "support/scenario.rs"]
mod scenario;
#[path = "support/topology.rs"]
mod topology;

use std::net::SocketAddr;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use topology::{HomeNet, Lines, Options};

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "these tests build network namespaces: run them as root"
    );
}

fn exe() -> String {
    topology::homenet_exe()
        .expect("the homenet example")
        .to_string_lossy()
        .into_owned()
}

fn net_with(uplink_kbit: u64, viewers: usize) -> HomeNet {
    require_root();
    HomeNet::up(&Options {
        uplink_kbit,
        buffer_ms: 200,
        viewers,
    })
    .expect("the home network comes up")
}

/// Starts a server tool in `ns` and waits until it listens.
fn server(net: &HomeNet, ns: &str, args: &[&str]) -> (Child, Lines) {
    let exe = exe();
    let mut argv = vec![exe.as_str()];
    argv.extend_from_slice(args);
    let mut child = net.spawn(ns, &argv).expect("spawn");
    let lines = Lines::new(child.stdout.take().expect("stdout"));
    lines
        .next_json(Duration::from_secs(10), |v| v.get("listening").is_some())
        .unwrap_or_else(|e| panic!("{args:?} did not start: {e}"));
    (child, lines)
}

/// Runs a client tool in `ns` to completion; returns its last JSON line.
fn client(net: &HomeNet, ns: &str, args: &[&str]) -> serde_json::Value {
    let exe = exe();
    let mut argv = vec![exe.as_str()];
    argv.extend_from_slice(args);
    let out = net.exec(ns, &argv).unwrap_or_else(|e| panic!("{e}"));
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{args:?} printed {out:?}: {e}"))
}

/// The peer address of the next connection the sink accepts.
fn accepted_peer(lines: &Lines) -> SocketAddr {
    let v = lines
        .next_json(Duration::from_secs(10), |v| v.get("accept").is_some())
        .expect("a connection reaches the sink");
    v["accept"].as_str().unwrap().parse().unwrap()
}

fn namespaces_present(names: &[String]) -> Vec<String> {
    let now = topology::list_namespaces();
    names.iter().filter(|n| now.contains(n)).cloned().collect()
}

#[test]
fn comes_up_like_an_openwrt_router_and_goes_away() {
    let net = net_with(20_000, 2);
    let names = net.namespaces();
    assert_eq!(names.len(), 6);
    assert_eq!(namespaces_present(&names), names);

    let links = net
        .exec(&net.router, &["ip", "-o", "link", "show"])
        .unwrap();
    for port in ["lan1", "lan2"] {
        let line = links
            .lines()
            .find(|l| l.contains(&format!(" {port}@")))
            .unwrap_or_else(|| panic!("{port} missing: {links}"));
        assert!(line.contains("master br-lan"), "{line}");
    }
    assert!(links.contains(" wan@"), "{links}");
    let sysctl = |k: &str| {
        net.exec(&net.router, &["sysctl", "-n", k])
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(sysctl("net.netfilter.nf_conntrack_acct"), "1");
    assert_eq!(sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl("net.ipv6.conf.all.forwarding"), "1");
    if std::path::Path::new("/proc/sys/net/bridge").exists() {
        for k in ["iptables", "ip6tables", "arptables"] {
            assert_eq!(
                sysctl(&format!("net.bridge.bridge-nf-call-{k}")),
                "0",
                "{k}"
            );
        }
    }
    let rules = net.exec(&net.router, &["nft", "list", "ruleset"]).unwrap();
    assert!(rules.contains("dnat ip to 192.168.1.2:8096"), "{rules}");
    assert!(rules.contains("masquerade"), "{rules}");
    let qdisc = net
        .exec(&net.router, &["tc", "qdisc", "show", "dev", "wan"])
        .unwrap();
    assert!(
        qdisc.contains("htb 1:") && qdisc.contains("bfifo"),
        "{qdisc}"
    );
    assert!(
        qdisc.contains("limit 500000b"),
        "200 ms at 20 Mbit/s: {qdisc}"
    );

    // Something running inside must not keep a namespace alive.
    let (sink, _lines) = server(&net, &net.jf, &["sink", "--listen", "0.0.0.0:8096"]);
    let pid = sink.id();
    drop(net);
    assert!(
        namespaces_present(&names).is_empty(),
        "left behind: {names:?}"
    );
    assert!(!process_alive(pid), "the sink survived the teardown");
}

fn process_alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) no longer runs.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

#[test]
fn tears_down_after_a_panic_in_the_test_body() {
    require_root();
    let seen: Mutex<(Vec<String>, u32)> = Mutex::new((Vec::new(), 0));
    let result = std::panic::catch_unwind(|| {
        let net = net_with(20_000, 1);
        let (child, _lines) = server(&net, &net.inet, &["echo", "--listen", "198.51.100.200:7"]);
        *seen.lock().unwrap() = (net.namespaces(), child.id());
        panic!("test body fails");
    });
    assert!(result.is_err());
    let (names, pid) = seen.into_inner().unwrap();
    assert_eq!(names.len(), 5);
    assert!(
        namespaces_present(&names).is_empty(),
        "left behind: {names:?}"
    );
    assert!(!process_alive(pid), "the echo server survived");
}

#[test]
fn port_forward_shows_the_viewers_real_address_and_lan_is_masqueraded() {
    let net = net_with(20_000, 2);
    let (_jf, jf_lines) = server(
        &net,
        &net.jf,
        &["sink", "--listen", "0.0.0.0:8096", "--listen", "[::]:8096"],
    );
    let (_inet, inet_lines) = server(
        &net,
        &net.inet,
        &["sink", "--listen", "198.51.100.200:9000"],
    );
    let up = ["--rate-mbps", "1", "--seconds", "0.3"];

    let mut args = vec!["upload", "--to", "198.51.100.1:8096"];
    args.extend_from_slice(&up);
    let r = client(&net, &net.viewers[1], &args);
    assert!(r["upload"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        accepted_peer(&jf_lines).ip().to_string(),
        "198.51.100.11",
        "jf must see the viewer's own address (DNAT without SNAT)"
    );

    let mut args = vec!["upload", "--to", "198.51.100.200:9000"];
    args.extend_from_slice(&up);
    client(&net, &net.lan, &args);
    assert_eq!(
        accepted_peer(&inet_lines).ip().to_string(),
        "198.51.100.1",
        "the household leaves with the router's WAN address"
    );

    // Only the Jellyfin port is forwarded.
    let err = net
        .exec(
            &net.viewers[0],
            &[
                &exe(),
                "probe",
                "--to",
                "198.51.100.1:9000",
                "--timeout-ms",
                "500",
            ],
        )
        .unwrap_err();
    assert!(err.contains("not reachable"), "{err}");
}

#[test]
fn ipv6_is_routed_to_jf_port_8096_only() {
    let net = net_with(20_000, 1);
    let (_jf, jf_lines) = server(&net, &net.jf, &["sink", "--listen", "[::]:8096"]);
    let (_other, _l) = server(&net, &net.jf, &["sink", "--listen", "[::]:9000"]);
    client(
        &net,
        &net.viewers[0],
        &[
            "upload",
            "--to",
            "[2001:db8:2::2]:8096",
            "--rate-mbps",
            "1",
            "--seconds",
            "0.3",
        ],
    );
    assert_eq!(accepted_peer(&jf_lines).ip().to_string(), "2001:db8:1::10");
    let err = net
        .exec(
            &net.viewers[0],
            &[
                &exe(),
                "probe",
                "--to",
                "[2001:db8:2::2]:9000",
                "--timeout-ms",
                "500",
            ],
        )
        .unwrap_err();
    assert!(
        err.contains("not reachable"),
        "the firewall must drop other ports: {err}"
    );
}

#[test]
fn the_modem_caps_the_uplink_near_its_rate() {
    let net = net_with(8_000, 0);
    let (_sink, sink_lines) = server(
        &net,
        &net.inet,
        &["sink", "--listen", "198.51.100.200:9000"],
    );
    let mut up = net
        .spawn(
            &net.lan,
            &[
                &exe(),
                "upload",
                "--to",
                "198.51.100.200:9000",
                "--greedy",
                "--seconds",
                "5",
            ],
        )
        .unwrap();
    let lines = Lines::new(up.stdout.take().unwrap());
    // Let TCP leave slow start, then measure the wire for three seconds.
    std::thread::sleep(Duration::from_secs(1));
    let (t0, b0) = (Instant::now(), net.wan_tx_bytes().unwrap());
    std::thread::sleep(Duration::from_secs(3));
    let (t1, b1) = (Instant::now(), net.wan_tx_bytes().unwrap());
    let rate = load::rate_bps(b1 - b0, t1 - t0) as f64;
    assert!(
        (0.85 * 8e6..=1.03 * 8e6).contains(&rate),
        "uplink ran at {rate} bit/s, expected about 8 Mbit/s"
    );
    lines
        .next_json(Duration::from_secs(10), |v| v.get("upload").is_some())
        .unwrap();
    // What arrives is payload only: under the wire rate. The sender's own count would include
    // what still sits in its socket buffer.
    let rates: Vec<f64> = sink_lines
        .drain()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("rate_bps").and_then(|r| r.as_f64()))
        .filter(|r| *r > 0.0)
        .collect();
    let goodput = load::percentile(&rates, 50.0);
    assert!(
        (0.8 * 8e6..=1.0 * 8e6).contains(&goodput),
        "the sink received {goodput} bit/s through 8 Mbit/s ({rates:?})"
    );
    let _ = up.wait();
}

#[test]
fn household_latency_grows_under_a_greedy_upload_without_shaping() {
    require_root();
    let sc = scenario::Scenario::parse(include_str!("scenarios/household-greedy.json")).unwrap();
    let opts = scenario::RunOptions {
        homenet: topology::homenet_exe().unwrap(),
        daemon: None,
        live: false,
        keep_logs: None,
    };
    let s = scenario::run_scenario(&sc, &opts).unwrap();
    let phase = |n: &str| s.phases.iter().find(|p| p.phase == n).cloned().unwrap();
    let (idle, loaded) = (phase("idle"), phase("loaded"));
    assert!(idle.rtt.received >= 20, "{idle:?}");
    assert!(
        idle.rtt.p95_ms < 20.0,
        "idle latency should be tiny: {idle:?}"
    );
    assert!(
        loaded.rtt.p50_ms > 60.0 && loaded.rtt.p95_ms > 100.0,
        "a greedy upload into a 200 ms FIFO should bloat latency: {loaded:?}"
    );
    assert!(
        loaded.uplink_avg_bps as f64 > 0.9 * 10e6,
        "the upload should fill the uplink: {loaded:?}"
    );
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    // The baseline fails the product's latency goal: that is what the daemon must fix.
    let goal = s
        .checks
        .iter()
        .find(|c| c.name == "latency while loaded stays near idle")
        .expect("the latency goal is judged");
    assert!(!goal.ok, "{goal:?}");
    assert!(scenario::render_summary(&s).contains("FAIL  latency while loaded"));
}

#[test]
fn two_networks_side_by_side_do_not_collide() {
    let a = net_with(20_000, 1);
    let b = net_with(20_000, 1);
    assert_ne!(a.router, b.router);
    let (_sa, la) = server(&a, &a.jf, &["sink", "--listen", "0.0.0.0:8096"]);
    let (_sb, lb) = server(&b, &b.jf, &["sink", "--listen", "0.0.0.0:8096"]);
    let a_tx = a.wan_tx_bytes().unwrap();
    client(
        &b,
        &b.viewers[0],
        &[
            "upload",
            "--to",
            "198.51.100.1:8096",
            "--rate-mbps",
            "1",
            "--seconds",
            "0.3",
        ],
    );
    assert_eq!(accepted_peer(&lb).ip().to_string(), "198.51.100.10");
    assert!(
        la.drain().iter().all(|l| !l.contains("accept")),
        "b's viewer reached a's server"
    );
    client(
        &a,
        &a.viewers[0],
        &[
            "upload",
            "--to",
            "198.51.100.1:8096",
            "--rate-mbps",
            "1",
            "--seconds",
            "0.3",
        ],
    );
    assert_eq!(accepted_peer(&la).ip().to_string(), "198.51.100.10");
    assert!(a.wan_tx_bytes().unwrap() >= a_tx);
}

#[test]
fn down_all_removes_leftovers_of_dead_runs_only() {
    require_root();
    // A run that crashed: its creator's pid no longer exists.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let stale = format!("{}{dead_pid}x0r", topology::PREFIX);
    topology::run(
        &["ip", "netns", "add", &stale],
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    let live = net_with(20_000, 0);
    let out = topology::run(&[&exe(), "down", "--all"], None, Duration::from_secs(30)).unwrap();
    assert!(out.contains(&stale), "{out}");
    assert!(namespaces_present(std::slice::from_ref(&stale)).is_empty());
    assert_eq!(
        namespaces_present(&live.namespaces()),
        live.namespaces(),
        "a live run's namespaces must stay"
    );
}

#[test]
fn lan_side_ifb_shaping_keeps_the_port_forward_working() {
    // What the daemon does on a router: the server's packets entering br-lan are redirected
    // to an ifb and shaped there. The port forward's replies must still find their way.
    let net = net_with(20_000, 1);
    let (_src, _l) = server(&net, &net.jf, &["source", "--listen", "192.168.1.2:8096"]);
    let r = &net.router;
    let sh = |argv: &[&str]| net.exec(r, argv).unwrap_or_else(|e| panic!("{e}"));
    sh(&["ip", "link", "add", "name", "ifbtest", "type", "ifb"]);
    sh(&["ip", "link", "set", "dev", "ifbtest", "up"]);
    sh(&[
        "tc", "qdisc", "add", "dev", "br-lan", "handle", "ffff:", "ingress",
    ]);
    sh(&[
        "tc", "filter", "add", "dev", "br-lan", "parent", "ffff:", "protocol", "all", "u32",
        "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "ifbtest",
    ]);
    sh(&[
        "tc", "qdisc", "add", "dev", "ifbtest", "root", "handle", "1:", "htb", "default", "1",
    ]);
    sh(&[
        "tc", "class", "add", "dev", "ifbtest", "parent", "1:", "classid", "1:1", "htb", "rate",
        "4mbit",
    ]);
    let got = client(
        &net,
        &net.viewers[0],
        &["download", "--from", "198.51.100.1:8096", "--seconds", "3"],
    );
    let rate = got["download"]["rate_bps"].as_f64().unwrap();
    assert!(
        (0.75 * 4e6..=1.05 * 4e6).contains(&rate),
        "a 4 Mbit/s LAN-side class should hold the forwarded stream near 4 Mbit/s, got {rate}"
    );

    // Where br_netfilter is loaded, show why the router turns it off: with it on, the same
    // redirect breaks the forward's reply path and connections no longer open.
    if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        sh(&["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"]);
        let err = net
            .exec(
                &net.viewers[0],
                &[
                    &exe(),
                    "probe",
                    "--to",
                    "198.51.100.1:8096",
                    "--timeout-ms",
                    "1500",
                ],
            )
            .unwrap_err();
        assert!(err.contains("not reachable"), "{err}");
    }
}

#[test]
fn up_leaves_a_network_that_down_removes() {
    require_root();
    let out = topology::run(
        &[&exe(), "up", "--viewers", "1", "--uplink-mbps", "5"],
        None,
        Duration::from_secs(60),
    )
    .unwrap();
    let tag = out
        .lines()
        .find_map(|l| l.strip_prefix("remove with: homenet down "))
        .unwrap_or_else(|| panic!("no tag in {out}"))
        .trim()
        .to_string();
    let names: Vec<String> = ["r", "i", "j", "l", "v0"]
        .iter()
        .map(|r| format!("{tag}{r}"))
        .collect();
    assert_eq!(namespaces_present(&names), names, "{out}");
    let qdisc = topology::run(
        &[
            "ip", "netns", "exec", &names[0], "tc", "class", "show", "dev", "wan",
        ],
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(qdisc.contains("rate 5Mbit"), "{qdisc}");
    let down = topology::run(&[&exe(), "down", &tag], None, Duration::from_secs(60)).unwrap();
    assert_eq!(down.lines().count(), names.len(), "{down}");
    assert!(namespaces_present(&names).is_empty());
    assert!(topology::run(&[&exe(), "down", "nonsense"], None, Duration::from_secs(10)).is_err());
}

/// Runs `f` in a thread inside namespace `ns` (sockets it opens live there).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A TCP connect from `ns` to `to`: Ok, or the error kind and errno.
fn connect_from(ns: &str, to: SocketAddr, timeout: Duration) -> Result<(), std::io::Error> {
    in_ns(ns, move || {
        std::net::TcpStream::connect_timeout(&to, timeout).map(drop)
    })
}

fn magic_from_router(net: &HomeNet, mac: [u8; 6]) {
    let r = net.router.clone();
    in_ns(&r, move || {
        jellydemon::wol::Sender::new(topology::LAN_DEV, None)
            .send(mac, None)
            .expect("magic packet sent")
            .complete()
    });
}

#[test]
fn sleeping_server_is_silent_until_its_magic_packet_then_answers_after_the_boot_delay() {
    // real-world.md: a sleeping host answers nothing (no RST, no ICMP, no ARP/ND); a connect
    // ends in a timeout or EHOSTUNREACH, never "refused"; only the magic packet for its MAC
    // wakes it. Nothing listens on port 9999 in `jf`, so an awake host refuses there.
    let net = net_with(20_000, 1);
    let jf4: SocketAddr = (topology::JF_V4, 9999).into();
    let jf6: SocketAddr = (topology::JF_V6, 9999).into();
    let e = connect_from(&net.lan, jf4, Duration::from_secs(3)).unwrap_err();
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "awake: {e}"
    );

    let boot = Duration::from_secs(2);
    let sleeper = net.sleep_server(boot).expect("asleep");
    // Forget what the household host knew, so the connect must resolve the address anew.
    net.exec(&net.lan, &["ip", "neigh", "flush", "all"])
        .unwrap();
    let t = Instant::now();
    let e = connect_from(&net.lan, jf4, Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::HostUnreachable
        ) || e.raw_os_error() == Some(nix::libc::EHOSTUNREACH),
        "asleep: a timeout or EHOSTUNREACH, never refused: {e:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "no quick answer: {e}"
    );
    let neigh = net
        .exec(
            &net.lan,
            &["ip", "neigh", "show", &topology::JF_V4.to_string()],
        )
        .unwrap();
    assert!(
        !neigh.contains("lladdr"),
        "no ARP reply from a sleeping host: {neigh}"
    );
    let e = connect_from(&net.lan, jf6, Duration::from_secs(2)).unwrap_err();
    assert_ne!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "IPv6/ND silent too"
    );

    // Someone else's magic packet wakes nothing.
    magic_from_router(&net, [0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc]);
    assert_eq!(sleeper.next(Duration::from_secs(1)), None);

    let sent = Instant::now();
    magic_from_router(&net, topology::JF_MAC);
    let Some(topology::SleepEvent::Magic { at, .. }) = sleeper.next(Duration::from_secs(2)) else {
        panic!("the NIC saw no magic packet");
    };
    assert!(at.duration_since(sent) < Duration::from_millis(500));
    // Still silent while it resumes.
    let e = connect_from(&net.lan, jf4, Duration::from_millis(500)).unwrap_err();
    assert_ne!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "still booting"
    );
    let Some(topology::SleepEvent::Awake { at: up }) = sleeper.next(boot + Duration::from_secs(5))
    else {
        panic!("never woke");
    };
    assert!(up.duration_since(at) >= boot, "not before the boot delay");
    // A client's retry gets through: a neighbour entry left failed by the sleep is probed
    // anew on the next packet, and the host answers (here: refuses, nothing listens).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = connect_from(&net.lan, jf4, Duration::from_secs(1)).unwrap_err();
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            break;
        }
        assert!(Instant::now() < deadline, "awake again: {e}");
    }
}
