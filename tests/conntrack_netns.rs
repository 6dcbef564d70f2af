//! Conntrack adapters against the real kernel: a router namespace with an nftables DNAT port
//! forward and accounting, real TCP transfers from an "inet" namespace to a server namespace,
//! and the per-viewer bytes both sources report. Needs root.
//!
//! The CPU benchmark (`cargo test --test conntrack_netns -- --ignored --nocapture`) fills a
//! table with 65,536 entries and compares one NetlinkSource tick with `cat
//! /proc/net/nf_conntrack`.

mod netns_helper;

use ipnet::IpNet;
use jellydemon::conntrack::{
    is_outside_connect, ConnectWatch, Flow, FlowCounter, FlowSource, NetlinkSource, NewConn,
    ProcConnectPoll, ProcSource,
};
use netns_helper::{veth, Netns};
use nix::sys::socket::{
    bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The conntrack table of the calling thread's namespace (`/proc/net` is the process's).
const THREAD_CT: &str = "/proc/thread-self/net/nf_conntrack";

const SERVER4: &str = "192.168.77.2";
const OTHER4: &str = "192.168.77.3";
const SERVER6: &str = "fd00:77::2";
const WAN: &str = "198.51.100.1";
const VIEWER_A: &str = "198.51.100.2";
const VIEWER_B: &str = "198.51.100.3";
const VIEWER_C: &str = "2001:db8:1::2";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

struct Net {
    inet: Netns,
    router: Netns,
    srv: Netns,
}

/// inet --wan-- router (DNAT 8096 → server, 8097 → another LAN host, 8099 → nobody) --lan-- srv
fn net() -> Net {
    let inet = Netns::new("ci");
    let router = Netns::new("cr");
    let srv = Netns::new("cs");
    veth(&inet, "wan1", &router, "wan0");
    veth(&router, "lan0", &srv, "lan1");
    router.sysctl("net.ipv4.ip_forward", "1");
    router.sysctl("net.ipv6.conf.all.forwarding", "1");
    router.sysctl("net.netfilter.nf_conntrack_acct", "1");
    for (ns, dev, addrs) in [
        (
            &inet,
            "wan1",
            &["198.51.100.2/24", "198.51.100.3/24", "2001:db8:1::2/64"][..],
        ),
        (
            &router,
            "wan0",
            &["198.51.100.1/24", "2001:db8:1::1/64"][..],
        ),
        (&router, "lan0", &["192.168.77.1/24", "fd00:77::1/64"][..]),
        (
            &srv,
            "lan1",
            &["192.168.77.2/24", "192.168.77.3/24", "fd00:77::2/64"][..],
        ),
    ] {
        for a in addrs {
            if a.contains(':') {
                ns.ip(&["addr", "add", a, "dev", dev, "nodad"]);
            } else {
                ns.ip(&["addr", "add", a, "dev", dev]);
            }
        }
    }
    inet.ip(&["route", "add", "default", "via", WAN]);
    inet.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
    srv.ip(&["route", "add", "default", "via", "192.168.77.1"]);
    srv.ip(&["-6", "route", "add", "default", "via", "fd00:77::1"]);
    router.nft(
        "table ip jdtest {
           chain pre {
             type nat hook prerouting priority dstnat; policy accept;
             iifname \"wan0\" tcp dport 8096 dnat to 192.168.77.2:8096
             iifname \"wan0\" tcp dport 8097 dnat to 192.168.77.3:8096
             iifname \"wan0\" tcp dport 8099 dnat to 192.168.77.9:8096
           }
         }
         table inet jdtrack {
           chain track { type filter hook forward priority 0; policy accept; ct state new accept; }
         }",
    );
    Net { inet, router, srv }
}

/// Serves `conns` connections on [::]:8096 (both families): each request is a big-endian u64
/// byte count, answered with that many bytes, until the client closes.
fn serve(srv: &Netns, conns: usize) -> std::thread::JoinHandle<()> {
    let listener = srv.run(|| TcpListener::bind("[::]:8096").expect("listen"));
    srv.spawn(move || {
        for _ in 0..conns {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            // Detached: a client whose connection the test cut off must not hold it up.
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            std::thread::spawn(move || {
                let chunk = vec![0x5au8; 64 * 1024];
                let mut req = [0u8; 8];
                while s.read_exact(&mut req).is_ok() {
                    let mut left = u64::from_be_bytes(req);
                    while left > 0 {
                        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(0);
                        if s.write_all(&chunk[..n]).is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                }
            });
        }
    })
}

/// A TCP connection from `src` to `dst` (in the calling thread's namespace).
fn connect_from(src: IpAddr, dst: SocketAddr, nonblocking: bool) -> OwnedFd {
    let flags = if nonblocking {
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC
    } else {
        SockFlag::SOCK_CLOEXEC
    };
    let fam = if src.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(fam, SockType::Stream, flags, None).expect("socket");
    let r = match (src, dst) {
        (IpAddr::V4(s), SocketAddr::V4(d)) => {
            bind(
                fd.as_raw_fd(),
                &SockaddrIn::from(std::net::SocketAddrV4::new(s, 0)),
            )
            .expect("bind");
            connect(fd.as_raw_fd(), &SockaddrIn::from(d))
        }
        (IpAddr::V6(s), SocketAddr::V6(d)) => {
            bind(
                fd.as_raw_fd(),
                &SockaddrIn6::from(std::net::SocketAddrV6::new(s, 0, 0, 0)),
            )
            .expect("bind");
            connect(fd.as_raw_fd(), &SockaddrIn6::from(d))
        }
        _ => panic!("mixed families"),
    };
    match r {
        Ok(()) => {}
        Err(nix::errno::Errno::EINPROGRESS) if nonblocking => {}
        Err(e) => panic!("connect {src} -> {dst}: {e}"),
    }
    fd
}

/// Asks for `n` bytes on `s` and reads them all.
fn fetch(s: &mut TcpStream, n: u64) {
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(&n.to_be_bytes()).expect("request");
    let mut left = n;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(0);
        let got = s.read(&mut buf[..want]).expect("read");
        assert!(got > 0, "server closed early");
        left -= got as u64;
    }
}

fn open(inet: &Netns, src: &str, dst: &str) -> TcpStream {
    let (src, dst) = (ip(src), dst.parse().expect("socket address"));
    inet.run(move || TcpStream::from(connect_from(src, dst, false)))
}

fn within(measured: u64, sent: u64, what: &str) {
    let ratio = measured as f64 / sent as f64;
    assert!(
        (0.95..=1.05).contains(&ratio),
        "{what}: measured {measured} bytes, sent {sent} (ratio {ratio:.3})"
    );
}

fn both_sources(router: &Netns, servers: &[IpAddr]) -> (Vec<Flow>, Vec<Flow>, bool) {
    router.run(|| {
        let mut nl = NetlinkSource::new().expect("ctnetlink");
        let mut a = vec![];
        nl.flows(servers, &[8096], &mut a).expect("netlink flows");
        let mut b = vec![];
        ProcSource::with_path(THREAD_CT)
            .flows(servers, &[8096], &mut b)
            .expect("proc flows");
        (a, b, nl.kernel_filtering())
    })
}

fn sorted(mut v: Vec<Flow>) -> Vec<Flow> {
    v.sort_by_key(|f| format!("{:?}", f.key));
    v
}

#[test]
fn per_viewer_bytes_from_both_sources() {
    let n = net();
    // The daemon's source lives across ticks: it follows flows by events after its first dump.
    let mut tracker = n.router.run(|| NetlinkSource::new().expect("ctnetlink"));
    assert!(tracker.tracking(), "conntrack events are on here");
    let server = serve(&n.srv, 5);
    let mut a = open(&n.inet, VIEWER_A, "198.51.100.1:8096");
    let mut b = open(&n.inet, VIEWER_B, "198.51.100.1:8096");
    let mut b_other = open(&n.inet, VIEWER_B, "198.51.100.1:8097");
    let mut c = open(&n.inet, VIEWER_C, "[fd00:77::2]:8096");
    fetch(&mut a, 4_000_000);
    fetch(&mut b, 2_000_000);
    fetch(&mut b_other, 3_000_000);
    fetch(&mut c, 3_000_000);

    let servers = [ip(SERVER4), ip(SERVER6)];
    let (nl, pr, kernel_filtered) = both_sources(&n.router, &servers);
    assert!(kernel_filtered, "this kernel supports CTA_FILTER (5.9+)");
    assert_eq!(pr.len(), 3, "proc: {pr:?}");
    assert_eq!(nl.len(), 3, "{nl:?}");
    assert_eq!(
        sorted(nl.clone()),
        sorted(pr.clone()),
        "both sources see the same flows"
    );
    assert!(nl.iter().all(|f| f.key.orig.src != ip(OTHER4)));
    let tr = tick(&mut tracker, &servers);
    assert_eq!(
        sorted(tr.clone()),
        sorted(pr.clone()),
        "the tracker's first tick (a dump)"
    );
    let dumps = tracker.dumps();
    assert_eq!(dumps, 2, "one IPv4 and one IPv6 dump");

    let mut by_nl = FlowCounter::new();
    let mut by_proc = FlowCounter::new();
    let mut by_tracker = FlowCounter::new();
    let t: HashMap<IpAddr, u64> = by_nl.update(&nl).clone();
    by_proc.update(&pr);
    by_tracker.update(&tr);
    assert_eq!(t.len(), 3, "only the server's viewers: {t:?}");
    within(t[&ip(VIEWER_A)], 4_000_000, "viewer A");
    within(
        t[&ip(VIEWER_B)],
        2_000_000,
        "viewer B (its flow from another LAN host ignored)",
    );
    within(t[&ip(VIEWER_C)], 3_000_000, "viewer C over IPv6");

    // nlbwmon-style zeroing dump, then more traffic, on an old and a new connection: totals
    // keep growing by what was sent.
    n.router.exec(&["conntrack", "-L", "-z"]);
    fetch(&mut a, 1_000_000);
    let mut a2 = open(&n.inet, VIEWER_A, "198.51.100.1:8096");
    fetch(&mut a2, 500_000);
    let (nl, pr, _) = both_sources(&n.router, &servers);
    let tr = tick(&mut tracker, &servers);
    assert_eq!(
        tracker.dumps(),
        dumps,
        "the new flow came by event, not by a dump"
    );
    assert_eq!(sorted(tr.clone()), sorted(pr.clone()));
    let t2 = by_nl.update(&nl).clone();
    let p2 = by_proc.update(&pr).clone();
    let k2 = by_tracker.update(&tr).clone();
    for totals in [&t2, &p2, &k2] {
        within(
            totals[&ip(VIEWER_A)],
            5_500_000,
            "viewer A after a counter reset",
        );
        within(totals[&ip(VIEWER_B)], 2_000_000, "viewer B unchanged");
        assert!(totals[&ip(VIEWER_B)] >= t[&ip(VIEWER_B)], "never backwards");
        assert!(totals[&ip(VIEWER_C)] >= t[&ip(VIEWER_C)], "never backwards");
    }

    // A's flows end between two ticks: the DESTROY events' final counters still count, then
    // the flows are gone.
    fetch(&mut a2, 300_000);
    n.router.exec(&["conntrack", "-D", "-s", VIEWER_A]);
    let k3 = by_tracker.update(&tick(&mut tracker, &servers)).clone();
    within(k3[&ip(VIEWER_A)], 5_800_000, "viewer A's final bytes");
    // The deleted entries are not read again. (A's open connections may get new entries
    // from a trailing ACK; those start from zero.)
    let last = tick(&mut tracker, &servers);
    assert!(
        last.iter()
            .all(|f| f.viewer != ip(VIEWER_A) || f.bytes < 100_000),
        "{last:?}"
    );
    assert_eq!(last.iter().filter(|f| f.viewer != ip(VIEWER_A)).count(), 2);
    within(
        by_tracker.update(&last)[&ip(VIEWER_A)],
        5_800_000,
        "viewer A afterwards",
    );
    assert_eq!(tracker.dumps(), dumps);

    drop((a, a2, b, b_other, c));
    server.join().expect("server");
}

fn tick(src: &mut NetlinkSource, servers: &[IpAddr]) -> Vec<Flow> {
    let mut v = vec![];
    src.flows(servers, &[8096], &mut v).expect("tracker flows");
    v
}

#[test]
fn connect_watch_sees_a_syn_within_a_second() {
    let n = net();
    let internal: Vec<IpNet> = ["192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "fc00::/7"]
        .iter()
        .map(|s| s.parse().expect("net"))
        .collect();
    let mut watch = n.router.run(|| ConnectWatch::new().expect("subscribe"));

    // A LAN host going out: a new connection, but not from outside.
    let lan_src = ip(SERVER4);
    let _lan = n
        .srv
        .run(move || connect_from(lan_src, "198.51.100.3:8099".parse().expect("addr"), true));
    // The first SYN from outside to a forwarded port nobody answers (the server sleeps).
    let t0 = Instant::now();
    let src = ip(VIEWER_A);
    let _syn = n
        .inet
        .run(move || connect_from(src, "198.51.100.1:8099".parse().expect("addr"), true));

    let deadline = t0 + Duration::from_secs(1);
    let mut seen: Vec<NewConn> = vec![];
    let (mut outside, mut inside) = (None, false);
    while outside.is_none() || !inside {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no event within 1 s; seen {seen:?}");
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [nix::poll::PollFd::new(
            watch.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).expect("poll");
        let from = seen.len();
        watch.drain(&mut seen);
        for c in &seen[from..] {
            let ext = is_outside_connect(c, &internal, &[8099], &[ip(WAN)]);
            if c.src == ip(VIEWER_A) && c.dport == 8099 {
                assert!(ext, "{c:?} is from outside");
                assert_eq!((c.dst, c.proto), (ip(WAN), 6));
                outside.get_or_insert(t0.elapsed());
            } else if c.src == lan_src {
                assert!(!ext, "{c:?} is from the LAN");
                inside = true;
            }
        }
    }
    let took = outside.expect("seen");
    eprintln!("ConnectWatch saw the SYN after {took:?}");
    assert!(took < Duration::from_secs(1));

    // The /proc fallback sees the same unanswered connection, once.
    let polled = n.router.run(|| {
        let mut p = ProcConnectPoll::with_source(ProcSource::with_path(THREAD_CT));
        let (mut first, mut second) = (vec![], vec![]);
        p.poll(&[8099], &mut first).expect("poll");
        p.poll(&[8099], &mut second).expect("poll");
        (first, second)
    });
    assert!(
        polled
            .0
            .iter()
            .any(|c| c.src == ip(VIEWER_A) && c.dst == ip(WAN) && c.dport == 8099),
        "{polled:?}"
    );
    assert!(polled.1.is_empty(), "reported once: {polled:?}");
}

#[test]
fn netlink_source_without_accounting_reports_nothing_and_no_error() {
    let n = net();
    n.router.sysctl("net.netfilter.nf_conntrack_acct", "0");
    let server = serve(&n.srv, 1);
    let mut a = open(&n.inet, VIEWER_A, "198.51.100.1:8096");
    fetch(&mut a, 100_000);
    let (nl, pr, _) = both_sources(&n.router, &[ip(SERVER4)]);
    assert!(nl.is_empty() && pr.is_empty(), "{nl:?} {pr:?}");
    let acct = n
        .router
        .run(jellydemon::conntrack::accounting_enabled)
        .expect("sysctl");
    assert!(!acct);
    drop(a);
    server.join().expect("server");
}

fn cpu_thread() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: nix::libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { nix::libc::getrusage(nix::libc::RUSAGE_THREAD, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn cpu_children() -> Duration {
    // SAFETY: as above.
    let mut ru: nix::libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { nix::libc::getrusage(nix::libc::RUSAGE_CHILDREN, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn tv(t: nix::libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Fills the calling thread's namespace with `count` UDP conntrack entries quickly: one socket,
/// one datagram to each of `count` distinct destinations routed out of a veth.
fn fill_table(count: u32) {
    let sock = std::net::UdpSocket::bind("10.200.0.1:0").expect("udp");
    for i in 0..count {
        let dst = Ipv4Addr::new(10, 201 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        sock.send_to(&[0u8; 1], (dst, 9)).expect("send");
    }
}

#[test]
#[ignore = "benchmark: cargo test --test conntrack_netns -- --ignored --nocapture"]
fn bench_netlink_tick_vs_cat_with_65536_entries() {
    const ENTRIES: u32 = 65_536;
    let ns = Netns::new("cb");
    ns.ip(&["link", "add", "b0", "type", "veth", "peer", "name", "b1"]);
    ns.ip(&["link", "set", "b0", "up"]);
    ns.ip(&["link", "set", "b1", "up"]);
    ns.ip(&["addr", "add", "10.200.0.1/16", "dev", "b0"]);
    ns.ip(&[
        "neigh",
        "add",
        "10.200.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "b0",
        "nud",
        "permanent",
    ]);
    ns.ip(&[
        "route",
        "add",
        "10.192.0.0/10",
        "via",
        "10.200.0.2",
        "dev",
        "b0",
    ]);
    ns.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600");
    ns.nft(
        "table ip jdbench {\n chain track { type filter hook output priority 0; ct state new accept; }\n}\n",
    );

    ns.sysctl("net.netfilter.nf_conntrack_acct", "1");

    let r = ns.run(|| {
        // Eight streams from the "server" (10.200.0.1:8096) that every tick must find.
        let listener = TcpListener::bind("10.200.0.1:8096").expect("listen");
        let mut streams = vec![];
        for _ in 0..8 {
            let mut c = TcpStream::connect("10.200.0.1:8096").expect("connect");
            let (mut s, _) = listener.accept().expect("accept");
            s.write_all(&[1u8; 10_000]).expect("send");
            let mut got = vec![0u8; 10_000];
            c.read_exact(&mut got).expect("receive");
            streams.push((c, s));
        }

        let t = Instant::now();
        fill_table(ENTRIES);
        let fill = t.elapsed();
        let count: u64 = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
            .expect("count")
            .trim()
            .parse()
            .expect("number");

        const RUNS: u32 = 5;
        let before = cpu_children();
        for _ in 0..RUNS {
            let st = std::process::Command::new("cat")
                .arg("/proc/net/nf_conntrack")
                .stdout(std::process::Stdio::null())
                .status()
                .expect("cat");
            assert!(st.success());
        }
        let cat = (cpu_children() - before) / RUNS;

        let servers = [ip("10.200.0.1")];
        let ports = [8096, 8920];
        let mut out = vec![];
        // A tick that dumps (the first one, a resync, or a kernel without events).
        let before = cpu_thread();
        for _ in 0..RUNS {
            out.clear();
            let mut fresh = NetlinkSource::new().expect("ctnetlink");
            fresh.flows(&servers, &ports, &mut out).expect("flows");
            assert_eq!(out.len(), 8);
        }
        let dump_tick = (cpu_thread() - before) / RUNS;

        // The steady tick: events plus one lookup per known flow.
        let mut src = NetlinkSource::new().expect("ctnetlink");
        src.flows(&servers, &ports, &mut out).expect("flows");
        // CPU time is sampled per scheduler tick: enough iterations for a stable figure.
        const STEADY_RUNS: u32 = 2000;
        let before = cpu_thread();
        for _ in 0..STEADY_RUNS {
            out.clear();
            src.flows(&servers, &ports, &mut out).expect("flows");
            assert_eq!(out.len(), 8);
        }
        let steady = (cpu_thread() - before) / STEADY_RUNS;

        let mut p = ProcSource::with_path(THREAD_CT);
        let before = cpu_thread();
        for _ in 0..RUNS {
            out.clear();
            p.flows(&servers, &ports, &mut out).expect("flows");
            assert_eq!(out.len(), 8);
        }
        let proc_tick = (cpu_thread() - before) / RUNS;
        drop(streams);
        (
            fill,
            count,
            cat,
            dump_tick,
            steady,
            proc_tick,
            src.kernel_filtering(),
            src.tracking(),
        )
    });
    let (fill, count, cat, dump_tick, steady, proc_tick, filtered, tracking) = r;
    let ratio = |d: Duration| d.as_secs_f64() / cat.as_secs_f64();
    println!("conntrack entries: {count} (filled in {fill:?})");
    println!("cat /proc/net/nf_conntrack: {cat:?} CPU");
    println!(
        "NetlinkSource steady tick (8 flows, events {tracking}): {steady:?} CPU ({:.4}x cat)",
        ratio(steady)
    );
    println!(
        "NetlinkSource dump tick (kernel filter {filtered}; first tick, hourly resync): {dump_tick:?} CPU ({:.3}x cat)",
        ratio(dump_tick)
    );
    println!(
        "ProcSource tick: {proc_tick:?} CPU ({:.3}x cat)",
        ratio(proc_tick)
    );
    assert!(count >= u64::from(ENTRIES), "table has {count} entries");
    assert!(tracking && filtered);
    assert!(
        ratio(steady) <= 0.25,
        "budget: tick <= 0.25x cat, got {:.3}",
        ratio(steady)
    );
}
