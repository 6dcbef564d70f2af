//! The shaper against the real kernel: tc, ifb, htb, u32 and mirred in network namespaces made
//! by each test (run as root). Topology per test:
//!
//!   srv (Jellyfin stand-in, 192.0.2.2 / 2001:db8::2, serves TCP on 8096 as fast as it can)
//!    └ veth ── rtr: br-lan 192.0.2.1 / 2001:db8::1 ── routes ── wan veth 198.51.100.1
//!                                                                 └ cli 198.51.100.2-.4 / 2001:db8:1::2
//!
//! The LAN (192.0.2.0/24, 2001:db8::/64) is the internal range: the router's own address is
//! in it. Every namespace name carries the pid and a counter, so tests run in parallel; a Drop
//! guard deletes them even when a test fails.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jellydemon::shaper::parse::printed_rate;
use jellydemon::shaper::{
    probe, Error, Listing, Part, Reader, Shaper, Spec, TcShaper, ViewerClass,
};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6,
};

const IFB: &str = "jdshape0";
const PORT: u16 = 8096;
const MBIT: u64 = 1_000_000;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn run_ok(prog: &str, args: &[&str]) -> String {
    let out = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run_ok("ip", args)
}

/// Runs `f` on a fresh thread inside namespace `ns`: sockets it opens and programs it starts
/// live there. The calling thread keeps its own namespace.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    })
}

fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("open netns");
    setns(f, CloneFlags::CLONE_NEWNET).expect("setns");
}

struct Topo {
    srv: String,
    rtr: String,
    cli: String,
    server: Option<Server>,
}

impl Topo {
    fn new() -> Topo {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("jds{}x{n}", std::process::id());
        let t = Topo {
            srv: format!("{base}srv"),
            rtr: format!("{base}rtr"),
            cli: format!("{base}cli"),
            server: None,
        };
        for ns in [&t.srv, &t.rtr, &t.cli] {
            ip(&["netns", "add", ns]);
        }
        let (srv, rtr, cli) = (t.srv.as_str(), t.rtr.as_str(), t.cli.as_str());
        ip(&["-n", rtr, "link", "add", "br-lan", "type", "bridge"]);
        ip(&[
            "-n", rtr, "link", "add", "lanp", "type", "veth", "peer", "name", "eth0", "netns", srv,
        ]);
        ip(&["-n", rtr, "link", "set", "lanp", "master", "br-lan"]);
        ip(&[
            "-n", rtr, "link", "add", "wanv", "type", "veth", "peer", "name", "eth0", "netns", cli,
        ]);
        for (ns, dev) in [
            (rtr, "br-lan"),
            (rtr, "lanp"),
            (rtr, "wanv"),
            (rtr, "lo"),
            (srv, "eth0"),
            (srv, "lo"),
            (cli, "eth0"),
            (cli, "lo"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        // One MSS per packet, as a real LAN delivers them; keeps byte counts comparable.
        ip(&["-n", srv, "link", "set", "eth0", "gso_max_segs", "1"]);
        for (ns, dev, addr) in [
            (rtr, "br-lan", "192.0.2.1/24"),
            (rtr, "wanv", "198.51.100.1/24"),
            (srv, "eth0", "192.0.2.2/24"),
            (cli, "eth0", "198.51.100.2/24"),
            (cli, "eth0", "198.51.100.3/24"),
            (cli, "eth0", "198.51.100.4/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        }
        for (ns, dev, addr) in [
            (rtr, "br-lan", "2001:db8::1/64"),
            (rtr, "wanv", "2001:db8:1::1/64"),
            (srv, "eth0", "2001:db8::2/64"),
            (cli, "eth0", "2001:db8:1::2/64"),
        ] {
            ip(&["-n", ns, "-6", "addr", "add", addr, "dev", dev, "nodad"]);
        }
        ip(&["-n", srv, "route", "add", "default", "via", "192.0.2.1"]);
        ip(&[
            "-n",
            srv,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8::1",
        ]);
        ip(&["-n", cli, "route", "add", "default", "via", "198.51.100.1"]);
        ip(&[
            "-n",
            cli,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:1::1",
        ]);
        in_ns(rtr, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward");
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").expect("forwarding");
            // With bridge netfilter on, redirected LAN ingress packets take a wrong path;
            // OpenWrt has it off. The files exist only while br_netfilter is loaded.
            for k in ["iptables", "ip6tables", "arptables"] {
                let _ = std::fs::write(format!("/proc/sys/net/bridge/bridge-nf-call-{k}"), "0");
            }
        });
        t
    }

    fn tc(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.rtr.as_str()];
        a.extend_from_slice(args);
        run_ok("tc", &a)
    }

    /// `tc` with its arguments written as one line.
    fn tc_line(&self, line: &str) -> String {
        self.tc(&line.split_whitespace().collect::<Vec<_>>())
    }

    /// Everything the shaper owns or might touch, without statistics.
    fn state(&self) -> String {
        let mut s = String::new();
        for dev in ["br-lan", IFB] {
            if !self.link_exists(dev) {
                s.push_str(&format!("{dev}: absent\n"));
                continue;
            }
            s.push_str(&self.tc(&["qdisc", "show", "dev", dev]));
            s.push_str(&self.tc(&["class", "show", "dev", dev]));
        }
        s.push_str(&self.tc(&["filter", "show", "dev", "br-lan", "ingress"]));
        if self.link_exists(IFB) {
            s.push_str(&self.tc(&["filter", "show", "dev", IFB, "parent", "4a44:"]));
        }
        s
    }

    fn link_exists(&self, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.rtr, "link", "show", "dev", dev])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn cli_rx_bytes(&self) -> u64 {
        let out = ip(&["-n", &self.cli, "-s", "-j", "link", "show", "dev", "eth0"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
        v[0]["stats64"]["rx"]["bytes"].as_u64().expect("rx bytes")
    }

    fn reconcile(&self, sh: &mut TcShaper, spec: &Spec) -> Result<(), Error> {
        in_ns(&self.rtr, || sh.reconcile(spec))
    }

    fn counters(&self, sh: &mut TcShaper) -> HashMap<IpAddr, u64> {
        in_ns(&self.rtr, || sh.counters()).expect("counters")
    }

    fn jellyfin_bytes(&self, sh: &mut TcShaper) -> u64 {
        in_ns(&self.rtr, || sh.jellyfin_bytes()).expect("jellyfin_bytes")
    }

    fn remove(&self, sh: &mut TcShaper) {
        in_ns(&self.rtr, || sh.remove()).expect("remove");
    }

    /// Starts the server once; it streams to every client that connects.
    fn serve(&mut self) {
        if self.server.is_none() {
            self.server = Some(Server::start(&self.srv));
        }
    }

    fn stream(&mut self, from: IpAddr) -> Stream {
        self.serve();
        Stream::start(&self.cli, from)
    }

    /// A download by the router itself (e.g. the daemon's own API calls): internal.
    fn stream_to_router(&mut self) -> Stream {
        self.serve();
        Stream::start(&self.rtr, "192.0.2.1".parse().expect("ip"))
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        self.server.take();
        for ns in [&self.srv, &self.rtr, &self.cli] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The Jellyfin stand-in: accepts on [::]:8096 (IPv4 too) and writes as fast as the network
/// takes it, ignoring any limit.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let ns = ns.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let l = TcpListener::bind(("::", PORT)).expect("bind 8096");
            l.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            let mut senders = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let st = st.clone();
                        senders.push(std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                            let buf = vec![0x4au8; 64 * 1024];
                            while !st.load(Ordering::SeqCst) {
                                match s.write(&buf) {
                                    Ok(_) => {}
                                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        }));
                    }
                    // Polls the stop flag between connections.
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for s in senders {
                let _ = s.join();
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A viewer: connects from `from` to the server and counts what it receives.
struct Stream {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn connect_from(from: IpAddr) -> TcpStream {
    let fd: OwnedFd = match from {
        IpAddr::V4(v4) => {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket");
            bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn::from(std::net::SocketAddrV4::new(v4, 0)),
            )
            .expect("bind");
            let to: SocketAddr = "192.0.2.2:8096".parse().expect("addr");
            let SocketAddr::V4(to) = to else {
                unreachable!()
            };
            connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to))
                .expect("connect v4");
            fd
        }
        IpAddr::V6(v6) => {
            let fd = socket(
                AddressFamily::Inet6,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket");
            bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn6::from(std::net::SocketAddrV6::new(v6, 0, 0, 0)),
            )
            .expect("bind");
            let to = std::net::SocketAddrV6::new("2001:db8::2".parse().expect("addr"), PORT, 0, 0);
            connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(to))
                .expect("connect v6");
            fd
        }
    };
    TcpStream::from(fd)
}

impl Stream {
    fn start(ns: &str, from: IpAddr) -> Stream {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, st, ns) = (received.clone(), stop.clone(), ns.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let mut s = connect_from(from);
            let _ = ready_tx.send(());
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut buf = vec![0u8; 256 * 1024];
            while !st.load(Ordering::SeqCst) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        r.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("viewer could not connect");
        Stream {
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn bytes(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Goodput of each stream in bit/s over `window`, after `warmup` (slow start, queue fill).
fn measure(streams: &[&Stream], warmup: Duration, window: Duration) -> Vec<f64> {
    std::thread::sleep(warmup);
    let start: Vec<u64> = streams.iter().map(|s| s.bytes()).collect();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let dt = t0.elapsed().as_secs_f64();
    let rates: Vec<f64> = streams
        .iter()
        .zip(start)
        .map(|(s, b0)| (s.bytes().saturating_sub(b0)) as f64 * 8.0 / dt)
        .collect();
    eprintln!("measured over {dt:.1} s: {rates:.0?} bit/s");
    rates
}

fn v(ip: &str, rate: u64, ceil: u64) -> ViewerClass {
    ViewerClass {
        ip: ip.parse().expect("ip"),
        rate_bps: rate,
        ceil_bps: ceil,
    }
}

fn spec(viewers: Vec<ViewerClass>) -> Spec {
    Spec {
        lan_device: "br-lan".into(),
        server_ip: "192.0.2.2".parse().expect("ip"),
        server_ip6: Some("2001:db8::2".parse::<Ipv6Addr>().expect("ip")),
        ports: vec![PORT],
        total_bps: 10 * MBIT,
        newcomer_bps: MBIT,
        internal: vec![
            "192.0.2.0/24".parse().expect("net"),
            "2001:db8::/64".parse().expect("net"),
        ],
        viewers,
        enforce: true,
    }
}

fn shaper() -> TcShaper {
    TcShaper::new(IFB, "tc")
}

fn within(measured: f64, want: u64, pct: f64) -> bool {
    (measured - want as f64).abs() <= want as f64 * pct / 100.0
}

#[test]
fn viewers_are_held_to_their_share_and_others_are_not_limited() {
    let mut t = Topo::new();
    let mut sh = shaper();
    let s = spec(vec![
        v("198.51.100.2", 4 * MBIT, 4 * MBIT),
        v("198.51.100.3", 2 * MBIT, 2 * MBIT),
    ]);
    t.reconcile(&mut sh, &s).expect("reconcile");
    let a = t.stream("198.51.100.2".parse().expect("ip"));
    let b = t.stream("198.51.100.3".parse().expect("ip"));
    let r = measure(&[&a, &b], Duration::from_secs(2), Duration::from_secs(10));
    assert!(
        within(r[0], 4 * MBIT, 10.0),
        "viewer A got {:.0} bit/s, share 4 Mbit/s",
        r[0]
    );
    assert!(
        within(r[1], 2 * MBIT, 10.0),
        "viewer B got {:.0} bit/s, share 2 Mbit/s",
        r[1]
    );
    drop((a, b));
    // An internal destination (the router itself): the unlimited class, outside the capped
    // Jellyfin parent (10 Mbit/s).
    let c = t.stream_to_router();
    let r = measure(&[&c], Duration::from_millis(500), Duration::from_secs(2));
    assert!(
        r[0] > 30.0 * MBIT as f64,
        "internal destination limited: {:.0} bit/s",
        r[0]
    );
    drop(c);
    let classes = t.tc(&["class", "show", "dev", IFB]);
    assert!(
        classes.contains("4a44:100") && classes.contains("4a44:101"),
        "{classes}"
    );
    t.remove(&mut sh);
}

/// Runs `tc` through a wrapper that logs each run, to count the forks.
struct CountingTc {
    dir: std::path::PathBuf,
}

impl CountingTc {
    fn new() -> CountingTc {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("jdtc{}x{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec tc \"$@\"\n",
            dir.join("log").display()
        );
        let path = dir.join("tc");
        std::fs::write(&path, script).expect("wrapper");
        let mut perm = std::fs::metadata(&path).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&path, perm).expect("chmod");
        CountingTc { dir }
    }

    fn path(&self) -> String {
        self.dir.join("tc").display().to_string()
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(self.dir.join("log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for CountingTc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn newcomers_are_held_to_the_budget_and_counted_as_jellyfin() {
    let mut t = Topo::new();
    let tc = CountingTc::new();
    let mut sh = TcShaper::new(IFB, &tc.path());
    let viewer: IpAddr = "198.51.100.2".parse().expect("ip");
    let newcomer: IpAddr = "198.51.100.4".parse().expect("ip");
    t.reconcile(&mut sh, &spec(vec![v("198.51.100.2", 4 * MBIT, 4 * MBIT)]))
        .expect("reconcile");
    t.serve();
    let jb0 = t.jellyfin_bytes(&mut sh);
    let rx0 = t.cli_rx_bytes();
    // A destination with no class yet (a stream that started after the last tick): capped at
    // the Jellyfin budget, not unlimited.
    let n = t.stream(newcomer);
    let r = measure(&[&n], Duration::from_secs(2), Duration::from_secs(5));
    assert!(
        within(r[0], 10 * MBIT, 10.0),
        "newcomer alone got {:.0} bit/s, budget 10 Mbit/s",
        r[0]
    );
    // Beside a viewer: the viewer keeps its share, both together stay within the budget.
    let a = t.stream(viewer);
    let r = measure(&[&a, &n], Duration::from_secs(2), Duration::from_secs(6));
    assert!(
        within(r[0], 4 * MBIT, 10.0),
        "viewer got {:.0} bit/s beside a newcomer, share 4 Mbit/s",
        r[0]
    );
    assert!(
        within(r[0] + r[1], 10 * MBIT, 10.0),
        "viewer + newcomer = {:.0} bit/s, budget 10 Mbit/s",
        r[0] + r[1]
    );
    drop((a, n));
    // Everything sent to external destinations is in the Jellyfin counter.
    let (jb1, rx1) = (t.jellyfin_bytes(&mut sh), t.cli_rx_bytes());
    let (djb, drx) = (jb1 - jb0, rx1 - rx0);
    assert!(drx > 5_000_000, "too little traffic: {drx}");
    let diff = djb.abs_diff(drx) as f64 / drx as f64;
    eprintln!("jellyfin class counted {djb} bytes, viewers received {drx}");
    assert!(
        diff <= 0.05,
        "jellyfin class counted {djb}, viewers received {drx}"
    );
    // Internal traffic is neither limited nor counted as Jellyfin's.
    let c = t.stream_to_router();
    let r = measure(&[&c], Duration::from_millis(500), Duration::from_secs(2));
    let internal_bytes = c.bytes();
    drop(c);
    assert!(r[0] > 30.0 * MBIT as f64, "internal: {:.0} bit/s", r[0]);
    let jb2 = t.jellyfin_bytes(&mut sh);
    assert!(
        jb2 - jb1 < internal_bytes / 100,
        "internal traffic counted: {} of {internal_bytes} bytes",
        jb2 - jb1
    );
    // Both counters of a tick come from one listing, read over rtnetlink: no tc run.
    let before = tc.runs();
    let counters = t.counters(&mut sh);
    assert!(counters.contains_key(&viewer), "{counters:?}");
    let jb3 = t.jellyfin_bytes(&mut sh);
    assert_eq!(tc.runs() - before, 0, "counters + jellyfin_bytes ran tc");
    assert!(jb3 >= jb2);
    // Counting only: a newcomer is unlimited and still counted.
    let mut s = spec(vec![v("198.51.100.2", 4 * MBIT, 4 * MBIT)]);
    s.enforce = false;
    t.reconcile(&mut sh, &s).expect("reconcile");
    let n = t.stream(newcomer);
    let r = measure(&[&n], Duration::from_millis(500), Duration::from_secs(2));
    let got = n.bytes();
    drop(n);
    assert!(
        r[0] > 30.0 * MBIT as f64,
        "counting-only newcomer: {:.0}",
        r[0]
    );
    let jb4 = t.jellyfin_bytes(&mut sh);
    assert!(
        jb4 - jb3 >= got * 95 / 100,
        "counting-only: counted {} of {got} bytes",
        jb4 - jb3
    );
    t.remove(&mut sh);
    assert_eq!(t.jellyfin_bytes(&mut sh), 0);
}

#[test]
fn an_old_tree_is_rebuilt_with_the_newcomer_default() {
    let t = Topo::new();
    // What an earlier version left behind: `default f`, no newcomer class, its filters.
    let mut sh = shaper();
    t.reconcile(&mut sh, &spec(vec![v("198.51.100.2", 4 * MBIT, 4 * MBIT)]))
        .expect("reconcile");
    t.tc(&["qdisc", "del", "dev", IFB, "root"]);
    for args in [
        "qdisc add dev jdshape0 root handle 4a44: htb default f",
        "class add dev jdshape0 parent 4a44: classid 4a44:1 htb rate 10gbit ceil 10gbit",
        "class add dev jdshape0 parent 4a44:1 classid 4a44:a htb rate 10mbit ceil 10mbit",
        "class add dev jdshape0 parent 4a44:1 classid 4a44:f htb rate 10gbit ceil 10gbit",
        "class add dev jdshape0 parent 4a44:a classid 4a44:100 htb rate 4mbit ceil 4mbit",
        "filter add dev jdshape0 parent 4a44: protocol ip prio 256 u32 match ip dst 198.51.100.2/32 flowid 4a44:100",
    ] {
        let a: Vec<&str> = args.split(' ').collect();
        t.tc(&a);
    }
    let lan_before = t.tc(&["filter", "show", "dev", "br-lan", "ingress"]);
    let mut fresh = shaper();
    t.reconcile(
        &mut fresh,
        &spec(vec![v("198.51.100.2", 4 * MBIT, 4 * MBIT)]),
    )
    .expect("migrate");
    let q = t.tc(&["qdisc", "show", "dev", IFB]);
    assert!(q.contains("default 0xe"), "{q}");
    let classes = t.tc(&["class", "show", "dev", IFB]);
    assert!(classes.contains("4a44:e parent 4a44:a"), "{classes}");
    let filters = t.tc(&["filter", "show", "dev", IFB, "parent", "4a44:"]);
    assert!(filters.contains("c0000200/ffffff00 at 16"), "{filters}");
    assert_eq!(
        lan_before,
        t.tc(&["filter", "show", "dev", "br-lan", "ingress"])
    );
    // Settled: the next tick changes nothing.
    let state = t.state();
    t.reconcile(
        &mut fresh,
        &spec(vec![v("198.51.100.2", 4 * MBIT, 4 * MBIT)]),
    )
    .expect("again");
    assert_eq!(state, t.state());
    t.remove(&mut fresh);
}

#[test]
fn ipv6_viewer_is_classified_and_counted() {
    let mut t = Topo::new();
    let mut sh = shaper();
    let s = spec(vec![v("2001:db8:1::2", 3 * MBIT, 3 * MBIT)]);
    t.reconcile(&mut sh, &s).expect("reconcile");
    let a = t.stream("2001:db8:1::2".parse().expect("ip"));
    let r = measure(&[&a], Duration::from_secs(2), Duration::from_secs(6));
    assert!(
        within(r[0], 3 * MBIT, 10.0),
        "IPv6 viewer got {:.0} bit/s, share 3 Mbit/s",
        r[0]
    );
    drop(a);
    let c = t.counters(&mut sh);
    let ip6: IpAddr = "2001:db8:1::2".parse().expect("ip");
    assert!(c.get(&ip6).copied().unwrap_or(0) > 1_000_000, "{c:?}");
    t.remove(&mut sh);
}

#[test]
fn counters_follow_the_bytes_received() {
    let mut t = Topo::new();
    let mut sh = shaper();
    let viewer: IpAddr = "198.51.100.2".parse().expect("ip");
    t.reconcile(&mut sh, &spec(vec![v("198.51.100.2", 8 * MBIT, 8 * MBIT)]))
        .expect("reconcile");
    t.serve();
    let c0 = t
        .counters(&mut sh)
        .get(&viewer)
        .copied()
        .expect("class counter");
    let rx0 = t.cli_rx_bytes();
    let a = t.stream(viewer);
    measure(&[&a], Duration::ZERO, Duration::from_secs(3));
    drop(a);
    let c1 = t
        .counters(&mut sh)
        .get(&viewer)
        .copied()
        .expect("class counter");
    let rx1 = t.cli_rx_bytes();
    let (dc, drx) = (c1 - c0, rx1 - rx0);
    assert!(drx > 1_000_000, "too little traffic: {drx}");
    let diff = dc.abs_diff(drx) as f64 / drx as f64;
    eprintln!(
        "class counted {dc} bytes, viewer received {drx} ({:.2}% apart)",
        diff * 100.0
    );
    assert!(
        diff <= 0.05,
        "class counted {dc} bytes, viewer received {drx}"
    );
    // Counting only: the class stays, unlimited.
    let mut s = spec(vec![v("198.51.100.2", 8 * MBIT, 8 * MBIT)]);
    s.enforce = false;
    t.reconcile(&mut sh, &s).expect("reconcile");
    let c2 = t
        .counters(&mut sh)
        .get(&viewer)
        .copied()
        .expect("class kept");
    assert!(c2 >= c1, "counter went back: {c2} < {c1}");
    let a = t.stream(viewer);
    let r = measure(&[&a], Duration::from_millis(500), Duration::from_secs(2));
    assert!(
        r[0] > 30.0 * MBIT as f64,
        "counting-only class limited: {:.0}",
        r[0]
    );
    drop(a);
    t.remove(&mut sh);
}

#[test]
fn reconcile_is_idempotent_and_drops_vanished_viewers() {
    let t = Topo::new();
    let mut sh = shaper();
    let both = spec(vec![
        v("198.51.100.2", 4 * MBIT, 4_600_000),
        v("2001:db8:1::2", 2 * MBIT, 2_300_000),
    ]);
    t.reconcile(&mut sh, &both).expect("first");
    let first = t.state();
    let filters_json = t.tc(&["-j", "filter", "show", "dev", IFB, "parent", "4a44:"]);
    t.reconcile(&mut sh, &both).expect("second");
    assert_eq!(first, t.state(), "second reconcile changed something");
    assert_eq!(
        filters_json,
        t.tc(&["-j", "filter", "show", "dev", IFB, "parent", "4a44:"])
    );
    // A second daemon start (fresh shaper, kernel state left behind) changes nothing either.
    let mut again = shaper();
    t.reconcile(&mut again, &both).expect("restart");
    assert_eq!(first, t.state(), "a restart rebuilt or duplicated state");
    let lan = t.tc(&["filter", "show", "dev", "br-lan", "ingress"]);
    assert_eq!(
        lan.matches("Redirect to device jdshape0").count(),
        2,
        "{lan}"
    );

    // The IPv6 viewer leaves; a rate changes (a seek storm is many of these in a row).
    let one = spec(vec![v("198.51.100.2", 3 * MBIT, 3_450_000)]);
    for _ in 0..3 {
        t.reconcile(&mut sh, &both).expect("storm");
        t.reconcile(&mut sh, &one).expect("storm");
    }
    let classes = t.tc(&["class", "show", "dev", IFB]);
    let filters = t.tc(&["filter", "show", "dev", IFB, "parent", "4a44:"]);
    // The viewer 2001:db8:1::2 (the LAN's 2001:db8::/64 filter stays).
    assert!(
        !filters.contains("00010000/ffffffff at 28"),
        "IPv6 viewer filter left: {filters}"
    );
    // One viewer filter (4a44:1xx) beside the internal ones (4a44:f).
    assert_eq!(filters.matches("*flowid 4a44:1").count(), 1, "{filters}");
    // The viewer and the newcomer class.
    assert_eq!(classes.matches("parent 4a44:a").count(), 2, "{classes}");
    assert!(classes.contains("rate 3Mbit ceil 3450Kbit"), "{classes}");
    assert_eq!(
        t.tc(&["qdisc", "show", "dev", IFB])
            .matches("parent 4a44:")
            .count(),
        3
    );

    t.remove(&mut sh);
    let after = t.state();
    assert!(after.contains("jdshape0: absent"), "{after}");
    assert!(
        !after.contains("ingress"),
        "ingress hook left on br-lan: {after}"
    );
    assert!(!after.contains("filter"), "filters left: {after}");
    // Removing twice is fine.
    t.remove(&mut sh);
}

#[test]
fn foreign_qdiscs_and_sqm_are_untouched() {
    let t = Topo::new();
    let r = t.rtr.as_str();
    // An sqm-like WAN: root htb on the WAN device, ingress redirect to ifb4wan with its own
    // qdisc; plus someone else's ingress qdisc and filter on br-lan.
    ip(&[
        "-n", r, "link", "add", "wan", "type", "veth", "peer", "name", "wanpeer",
    ]);
    ip(&["-n", r, "link", "add", "ifb4wan", "type", "ifb"]);
    ip(&["-n", r, "link", "set", "ifb4wan", "up"]);
    t.tc(&[
        "qdisc", "add", "dev", "wan", "root", "handle", "1:", "htb", "default", "12",
    ]);
    t.tc(&[
        "class", "add", "dev", "wan", "parent", "1:", "classid", "1:1", "htb", "rate", "20mbit",
    ]);
    t.tc(&[
        "class", "add", "dev", "wan", "parent", "1:1", "classid", "1:12", "htb", "rate", "10mbit",
        "ceil", "20mbit",
    ]);
    t.tc(&["qdisc", "add", "dev", "wan", "handle", "ffff:", "ingress"]);
    t.tc(&[
        "filter", "add", "dev", "wan", "parent", "ffff:", "protocol", "all", "prio", "10", "u32",
        "match", "u32", "0", "0", "flowid", "1:1", "action", "mirred", "egress", "redirect", "dev",
        "ifb4wan",
    ]);
    t.tc(&[
        "qdisc", "add", "dev", "ifb4wan", "root", "tbf", "rate", "50mbit", "burst", "64kb",
        "latency", "50ms",
    ]);
    t.tc(&[
        "qdisc", "add", "dev", "br-lan", "handle", "ffff:", "ingress",
    ]);
    t.tc(&[
        "filter",
        "add",
        "dev",
        "br-lan",
        "parent",
        "ffff:",
        "protocol",
        "ip",
        "prio",
        "20",
        "u32",
        "match",
        "ip",
        "dst",
        "203.0.113.9/32",
        "flowid",
        "1:1",
    ]);
    let snapshot = || {
        let mut s = String::new();
        for dev in ["wan", "ifb4wan"] {
            s.push_str(&t.tc(&["-j", "qdisc", "show", "dev", dev]));
            s.push_str(&t.tc(&["class", "show", "dev", dev]));
        }
        s.push_str(&t.tc(&["-j", "filter", "show", "dev", "wan", "ingress"]));
        s.push_str(&t.tc(&["-j", "qdisc", "show", "dev", "br-lan"]));
        s
    };
    let before = snapshot();
    let lan_before = t.tc(&["filter", "show", "dev", "br-lan", "ingress"]);
    let mut sh = shaper();
    t.reconcile(&mut sh, &spec(vec![v("198.51.100.2", 4 * MBIT, 4 * MBIT)]))
        .expect("reconcile");
    t.reconcile(&mut sh, &spec(vec![v("198.51.100.3", 2 * MBIT, 2 * MBIT)]))
        .expect("reconcile");
    assert!(in_ns(r, || sh.counters()).is_ok());
    assert_eq!(
        before,
        snapshot(),
        "a foreign qdisc, class or filter changed"
    );
    let lan = t.tc(&["filter", "show", "dev", "br-lan", "ingress"]);
    assert!(lan.contains("pref 20"), "{lan}");
    assert!(lan.contains("Redirect to device jdshape0"), "{lan}");
    t.remove(&mut sh);
    assert_eq!(before, snapshot(), "remove touched a foreign object");
    // tc prints "parent ffff:" on some listings and not on others: same filter.
    let norm = |s: String| s.replace("parent ffff: ", "");
    assert_eq!(
        norm(lan_before),
        norm(t.tc(&["filter", "show", "dev", "br-lan", "ingress"])),
        "remove left or took a filter on br-lan"
    );
    assert!(!t.link_exists(IFB));
    assert!(t.link_exists("ifb4wan"));
}

#[test]
fn recreated_lan_device_is_rebuilt() {
    let mut t = Topo::new();
    let r = t.rtr.clone();
    let mut sh = shaper();
    let s = spec(vec![v("198.51.100.2", 4 * MBIT, 4 * MBIT)]);
    t.reconcile(&mut sh, &s).expect("reconcile");
    ip(&["-n", &r, "link", "del", "br-lan"]);
    match t.reconcile(&mut sh, &s) {
        Err(e @ Error::NoDevice(_)) => assert!(e.to_string().contains("br-lan"), "{e}"),
        other => panic!("expected NoDevice, got {other:?}"),
    }
    ip(&["-n", &r, "link", "add", "br-lan", "type", "bridge"]);
    ip(&["-n", &r, "link", "set", "lanp", "master", "br-lan"]);
    ip(&["-n", &r, "link", "set", "br-lan", "up"]);
    ip(&["-n", &r, "addr", "add", "192.0.2.1/24", "dev", "br-lan"]);
    ip(&[
        "-n",
        &r,
        "-6",
        "addr",
        "add",
        "2001:db8::1/64",
        "dev",
        "br-lan",
        "nodad",
    ]);
    t.reconcile(&mut sh, &s).expect("reconcile after recreate");
    // Shaped again, with real traffic.
    let a = t.stream("198.51.100.2".parse().expect("ip"));
    let m = measure(&[&a], Duration::from_secs(2), Duration::from_secs(4));
    assert!(
        within(m[0], 4 * MBIT, 10.0),
        "after recreate: {:.0} bit/s",
        m[0]
    );
    drop(a);
    // The ifb vanishing is healed too.
    ip(&["-n", &r, "link", "del", IFB]);
    t.reconcile(&mut sh, &s).expect("reconcile after ifb loss");
    let lan = t.tc(&["filter", "show", "dev", "br-lan", "ingress"]);
    assert!(!lan.contains("device *"), "orphaned redirect left: {lan}");
    assert_eq!(
        lan.matches("Redirect to device jdshape0").count(),
        2,
        "{lan}"
    );
    t.remove(&mut sh);
}

#[test]
fn missing_tc_is_a_clear_error() {
    let t = Topo::new();
    let mut sh = TcShaper::new(IFB, "/nonexistent/tc");
    let e = t
        .reconcile(&mut sh, &spec(vec![]))
        .expect_err("no tc must fail");
    assert!(matches!(e, Error::NoTc { .. }), "{e:?}");
    assert!(e.to_string().contains("install"), "{e}");
    let caps = in_ns(&t.rtr, || probe("/nonexistent/tc"));
    assert!(!caps.tc && !caps.usable());
    let caps = in_ns(&t.rtr, || probe("tc"));
    assert!(
        caps.tc && caps.ifb && caps.htb && caps.ingress && caps.u32 && caps.mirred,
        "{caps:?}"
    );
    assert_eq!(
        caps.netlink_error, None,
        "the scratch tree reads over rtnetlink"
    );
    let links = ip(&["-n", &t.rtr, "-o", "link", "show"]);
    assert!(!links.contains("jdp"), "probe device left: {links}");
    let mut bad = TcShaper::new("ifb0", "tc");
    let e = t.reconcile(&mut bad, &spec(vec![])).expect_err("ifb name");
    assert!(matches!(e, Error::InvalidSpec(_)), "{e:?}");
}

#[test]
fn reconcile_after_counters_follows_the_plan_and_heals_a_lost_ifb() {
    // The daemon lists the ifb for the counters, then reconciles in the same tick against that
    // listing: the result must be the same as with a fresh one.
    let t = Topo::new();
    let r = t.rtr.clone();
    let mut sh = shaper();
    t.reconcile(
        &mut sh,
        &spec(vec![v("198.51.100.2", 1_700_000, 1_700_000)]),
    )
    .expect("reconcile");
    t.counters(&mut sh);
    let next = spec(vec![
        v("198.51.100.2", 2_300_000, 2_300_000),
        v("198.51.100.3", 3_100_000, 3_100_000),
    ]);
    t.reconcile(&mut sh, &next)
        .expect("reconcile after counters");
    let classes = t.tc(&["class", "show", "dev", IFB]);
    assert!(classes.contains("rate 2300Kbit"), "{classes}");
    assert!(classes.contains("rate 3100Kbit"), "{classes}");
    assert!(!classes.contains("rate 1700Kbit"), "{classes}");
    // The ifb vanishes between the tick's listing and its reconcile: rebuilt at once, not
    // planned against the stale listing.
    t.counters(&mut sh);
    ip(&["-n", &r, "link", "del", IFB]);
    t.reconcile(&mut sh, &next)
        .expect("reconcile after ifb loss");
    let classes = t.tc(&["class", "show", "dev", IFB]);
    assert!(
        classes.contains("rate 2300Kbit") && classes.contains("rate 3100Kbit"),
        "{classes}"
    );
    let c = t.counters(&mut sh);
    assert_eq!(c.len(), 2, "{c:?}");
    t.remove(&mut sh);
}

/// Both readers' listings of one device, taken back to back.
fn listings(t: &Topo, sh: &TcShaper, dev: &str, part: Part) -> (Listing, Listing) {
    in_ns(&t.rtr, || {
        let nl = sh
            .listing(Reader::Netlink, dev, part)
            .expect("netlink listing");
        let tc = sh.listing(Reader::Tc, dev, part).expect("tc listing");
        (nl, tc)
    })
}

/// The netlink listing holds exactly what tc prints, rates at tc's precision.
fn assert_same(nl: &Listing, tc: &Listing) {
    assert_eq!(nl.qdiscs, tc.qdiscs, "qdiscs");
    assert_eq!(nl.filters, tc.filters, "filters");
    assert_eq!(nl.classes.len(), tc.classes.len(), "{nl:#?}\n{tc:#?}");
    for (n, t) in nl.classes.iter().zip(&tc.classes) {
        let mut rounded = n.clone();
        rounded.rate_bps = printed_rate(n.rate_bps);
        rounded.ceil_bps = printed_rate(n.ceil_bps);
        assert_eq!(&rounded, t, "class (netlink exact: {n:?})");
    }
}

#[test]
fn the_netlink_listing_equals_the_tc_listing() {
    let mut t = Topo::new();
    let r = t.rtr.clone();
    let mut sh = shaper();
    // Rates tc prints rounded (4,123,456 → 4123Kbit) next to round ones; IPv4 and IPv6
    // viewers; internal prefixes of both families.
    let s = spec(vec![
        v("198.51.100.2", 4_123_456, 4_600_000),
        v("198.51.100.3", 2 * MBIT, 2 * MBIT),
        v("2001:db8:1::2", 1_234_568, 3_000_008),
    ]);
    t.reconcile(&mut sh, &s).expect("reconcile");
    // Neighbours on the LAN hook: a foreign u32 rule with a flowid, and two whose redirect
    // device has vanished (tc prints its target as "*"), one after a mirror action. (This
    // kernel, like OpenWrt's default, has no matchall or flower classifier to try.) They match
    // no real packet: a redirect to nowhere drops what it matches.
    ip(&["-n", &r, "link", "add", "gone0", "type", "ifb"]);
    t.tc_line(
        "filter add dev br-lan ingress protocol ip prio 20 u32 \
         match ip dst 203.0.113.0/24 match ip dport 53 0xffff flowid 1:5",
    );
    t.tc_line(
        "filter add dev br-lan ingress protocol all prio 30 u32 \
         match u32 0x12345678 0xffffffff at 0 \
         action mirred egress mirror dev lanp action mirred egress redirect dev gone0",
    );
    t.tc_line(
        "filter add dev br-lan ingress protocol ipv6 prio 40 u32 \
         match u32 0x12345678 0xffffffff at 0 action mirred egress redirect dev gone0",
    );
    ip(&["-n", &r, "link", "del", "gone0"]);

    // Counters that moved: some traffic through two viewer classes and the LAN hook.
    let a = t.stream("198.51.100.2".parse().expect("ip"));
    let b = t.stream("2001:db8:1::2".parse().expect("ip"));
    measure(&[&a, &b], Duration::ZERO, Duration::from_millis(1500));
    drop((a, b));
    // Await quiet queues: two netlink listings in a row with the same counters.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = listings(&t, &sh, IFB, Part::Ifb).0;
    loop {
        let now = listings(&t, &sh, IFB, Part::Ifb).0;
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline, "counters never settled");
        last = now;
    }

    // A late packet (a retransmitted FIN) between the two listings moves a counter: such a
    // pair is taken again, a few times at most; anything else fails at once.
    let mut tries = 0;
    let (nl, tc) = loop {
        let (nl, tc) = listings(&t, &sh, IFB, Part::Ifb);
        let bytes = |l: &Listing| l.classes.iter().map(|c| c.bytes).collect::<Vec<_>>();
        tries += 1;
        if bytes(&nl) == bytes(&tc) || tries == 5 {
            break (nl, tc);
        }
    };
    assert_same(&nl, &tc);
    // Not trivially equal: the whole tree is there, with counters and exact rates.
    assert!(nl
        .qdiscs
        .iter()
        .any(|q| q.kind == "htb" && q.default_minor == Some(0xe)));
    assert_eq!(nl.classes.len(), 7, "{:#?}", nl.classes);
    let class = |minor: u16| nl.classes.iter().find(|c| c.minor == minor).expect("class");
    assert!(class(0xa).bytes > 100_000, "{:?}", class(0xa));
    assert!(nl
        .classes
        .iter()
        .any(|c| c.rate_bps == 4_123_456 && c.ceil_bps == 4_600_000));
    assert!(nl
        .classes
        .iter()
        .any(|c| c.rate_bps == 1_234_568 && c.ceil_bps == 3_000_008));
    let v6 = nl
        .filters
        .iter()
        .find(|f| {
            f.protocol == "ipv6" && f.flowid.as_deref().is_some_and(|c| c.starts_with("4a44:1"))
        })
        .expect("IPv6 viewer filter");
    assert_eq!(v6.keys.len(), 4, "{v6:?}");
    assert!(nl.filters.iter().any(|f| !f.is_rule()), "header lines kept");

    let (nl, tc) = listings(&t, &sh, "br-lan", Part::LanIngress);
    assert_same(&nl, &tc);
    let redirects: Vec<&str> = nl
        .filters
        .iter()
        .filter_map(|f| f.redirect_to.as_deref())
        .collect();
    assert_eq!(
        redirects.iter().filter(|d| **d == IFB).count(),
        2,
        "{nl:#?}"
    );
    assert_eq!(
        redirects.iter().filter(|d| **d == "*").count(),
        2,
        "{nl:#?}"
    );
    let foreign = nl
        .filters
        .iter()
        .find(|f| f.prio == 20 && f.is_rule())
        .expect("foreign");
    assert_eq!(foreign.flowid.as_deref(), Some("1:5"));
    assert_eq!(foreign.keys.len(), 2, "{foreign:?}");
    let ours = nl
        .filters
        .iter()
        .find(|f| f.prio == 4 && f.is_rule())
        .expect("ours");
    assert_eq!(ours.keys.len(), 2, "{ours:?}");

    // Without a tree and without a hook, both see the same emptiness.
    t.remove(&mut sh);
    for dev in ["br-lan", "lo"] {
        let (nl, tc) = listings(&t, &sh, dev, Part::LanIngress);
        assert_same(&nl, &tc);
    }
    let e = in_ns(&t.rtr, || sh.listing(Reader::Netlink, IFB, Part::Ifb)).expect_err("no ifb");
    assert!(e.to_string().contains(IFB), "{e}");
}

#[test]
fn a_steady_state_tick_starts_no_process() {
    let t = Topo::new();
    let s = spec(vec![
        v("198.51.100.2", 4 * MBIT, 4_600_000),
        v("2001:db8:1::2", 2 * MBIT, 2_300_000),
    ]);
    // One tick of the daemon: counters, the Jellyfin total, then the reconcile.
    let tick = |sh: &mut TcShaper| {
        in_ns(&t.rtr, || {
            sh.counters().expect("counters");
            sh.jellyfin_bytes().expect("jellyfin_bytes");
            sh.reconcile(&s).expect("reconcile");
        })
    };
    // The wrapper counts what really runs, independently of the shaper's own count.
    let wrapper = CountingTc::new();
    let mut sh = TcShaper::new(IFB, &wrapper.path());
    tick(&mut sh);
    let after_first = sh.processes_started();
    assert_eq!(after_first, wrapper.runs() as u64);
    // The first tick probes the kernel with tc and builds the tree with tc -batch.
    assert!(after_first >= 2, "{after_first}");
    let state = t.state();
    for _ in 0..3 {
        tick(&mut sh);
    }
    assert_eq!(
        (sh.processes_started(), wrapper.runs() as u64),
        (after_first, after_first),
        "a steady-state tick started a process"
    );
    assert_eq!(state, t.state(), "a steady-state tick changed something");
    // A viewer leaves and a share moves: one tc -batch; the tick after it is quiet again.
    let moved = spec(vec![v("198.51.100.2", 3 * MBIT, 3_450_000)]);
    in_ns(&t.rtr, || sh.reconcile(&moved)).expect("reconcile");
    let after_change = sh.processes_started();
    assert_eq!(
        after_change,
        after_first + 1,
        "one tc -batch for the change"
    );
    in_ns(&t.rtr, || {
        sh.counters().expect("counters");
        sh.reconcile(&moved).expect("reconcile");
    });
    assert_eq!(sh.processes_started(), after_change);
    assert_eq!(wrapper.runs() as u64, after_change);

    // Only shares move (the common change): applied over rtnetlink, no process, and the
    // class is what `tc class change` with the same figures makes of it, bursts included.
    let class_line = || {
        let text = t.tc(&["-d", "class", "show", "dev", IFB]);
        text.lines()
            .find(|l| l.contains("parent 4a44:a") && l.contains("rate 3333Kbit"))
            .unwrap_or_else(|| panic!("no class at 3333Kbit: {text}"))
            .to_string()
    };
    let shares = spec(vec![v("198.51.100.2", 3_333_333, 3_999_999)]);
    in_ns(&t.rtr, || sh.reconcile(&shares)).expect("reconcile");
    assert_eq!(
        sh.processes_started(),
        after_change,
        "a share change ran tc"
    );
    assert_eq!(wrapper.runs() as u64, after_change);
    let by_netlink = class_line();
    assert!(by_netlink.contains("ceil 3999Kbit"), "{by_netlink}");
    let word_after = |w: &str| {
        by_netlink
            .split_whitespace()
            .skip_while(|x| *x != w)
            .nth(1)
            .unwrap_or_else(|| panic!("no {w} in {by_netlink}"))
            .to_string()
    };
    let (classid, quantum) = (word_after("htb"), word_after("quantum"));
    t.tc_line(&format!(
        "class change dev {IFB} parent 4a44:a classid {classid} htb \
         rate 3333333bit ceil 3999999bit quantum {quantum}"
    ));
    assert_eq!(
        by_netlink,
        class_line(),
        "rtnetlink and tc set different classes"
    );

    // The tc reader (the fallback) reads the same state and keeps it, at a process per
    // listing: the seam counts what it claims to.
    let mut by_tc = shaper().with_reader(Reader::Tc);
    in_ns(&t.rtr, || by_tc.reconcile(&moved)).expect("reconcile by tc");
    let before = by_tc.processes_started();
    let (c_tc, c_nl) = in_ns(&t.rtr, || {
        (by_tc.counters().expect("tc"), sh.counters().expect("nl"))
    });
    assert_eq!(
        c_tc.keys().collect::<Vec<_>>(),
        c_nl.keys().collect::<Vec<_>>()
    );
    assert_eq!(by_tc.processes_started(), before + 1);
    let state = t.state();
    in_ns(&t.rtr, || by_tc.reconcile(&moved)).expect("reconcile by tc");
    assert_eq!(state, t.state());
    assert!(by_tc.processes_started() >= before + 2);
    t.remove(&mut sh);
}
