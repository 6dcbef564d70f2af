//! End-to-end: the real daemon on the emulated router, the Jellyfin emulator on the LAN, real
//! viewers on the "internet", the kernel's real tc/nftables/conntrack (DESIGN.md §9). Each test
//! builds its own home network with unique namespace names and tears it down on drop, so they
//! run in parallel. Needs root.

#[path = "support/topology.rs"]
mod topology;

use serde_json::Value;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use topology::{HomeNet, Options};

const KEY: &str = "0123456789abcdef0123456789abcdef";
const ALICE: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const BOB: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const CAROL: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";
/// Items of the test world: 6 Mbit/s, 2 Mbit/s, 12 Mbit/s (video + audio).
const ITEM6: &str = "60000000000000000000000000000006";
const ITEM2: &str = "20000000000000000000000000000002";
const ITEM12: &str = "12000000000000000000000000000012";
const M: f64 = 1_000_000.0;

fn world() -> String {
    serde_json::json!({
        "version": "10.11.11",
        "api_keys": [{"name": "jellydemon", "token": KEY}],
        "segment_ms": 1000,
        "prefill_segments": 2,
        "users": [
            {"name": "admin", "id": "4b8e2f1a9c7d4e3fa1b2c3d4e5f60718", "is_administrator": true},
            {"name": "alice", "id": ALICE},
            {"name": "bob", "id": BOB, "remote_client_bitrate_limit": 12000000},
            {"name": "carol", "id": CAROL}
        ],
        "items": [
            {"id": ITEM6, "name": "Six", "type": "Movie", "bitrate": 6000000, "audio_bitrate": 256000, "runtime_ticks": 36000000000u64},
            {"id": ITEM2, "name": "Two", "type": "Movie", "bitrate": 2000000, "audio_bitrate": 128000, "runtime_ticks": 36000000000u64},
            {"id": ITEM12, "name": "Twelve", "type": "Movie", "bitrate": 12000000, "audio_bitrate": 256000, "runtime_ticks": 36000000000u64}
        ]
    })
    .to_string()
}

fn daemon_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jellydemon"))
}

static N: AtomicU32 = AtomicU32::new(0);

/// Runs `f` in a thread that has entered network namespace `ns`: sockets it opens live there.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).expect("netns file");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// An HTTP call made from inside namespace `ns`.
fn ns_http(
    ns: &str,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> Result<(u16, String), String> {
    let (method, url) = (method.to_string(), url.to_string());
    in_ns(ns, move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let resp = match (method.as_str(), body) {
            ("GET", _) => agent.get(&url).call(),
            (_, Some(b)) => agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.to_string()),
            (_, None) => agent.post(&url).send_empty(),
        };
        match resp {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                Ok((status, text))
            }
            Err(e) => Err(e.to_string()),
        }
    })
}

/// Polls `f` every 100 ms until it returns Some, for at most `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Home {
    net: HomeNet,
    dir: PathBuf,
    cfg: PathBuf,
    emu: Option<Child>,
    daemon: Option<Child>,
    viewers: Vec<Child>,
    log: PathBuf,
    /// The router as OpenWrt: the daemon runs under `homenet router-exec` with the netifd
    /// stand-in answering from this file, and `dir/etc` over `/etc`.
    netifd: Option<PathBuf>,
}

/// The emulated router's interfaces as netifd would have them (see tests/support/openwrt.rs):
/// the LAN with its part of the delegated prefix, a DHCP WAN on `wan_dev`, and `wan6` holding
/// the ISP's delegation (2001:db8:2::/56, of which the LAN has 2001:db8:2::/64).
fn netifd_file(wan_dev: &str) -> String {
    serde_json::json!({"interfaces": {
        "lan": {"device": "br-lan", "proto": "static", "ip6assign": 64},
        "wan": {"device": wan_dev, "proto": if wan_dev == "wan" { "dhcp" } else { "pppoe" }},
        "wan6": {"device": wan_dev, "proto": "dhcpv6", "prefix": ["2001:db8:2::/56"]}
    }})
    .to_string()
}

impl Drop for Home {
    fn drop(&mut self) {
        for c in self.viewers.iter_mut().chain(self.emu.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = self.daemon.as_mut() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if std::thread::panicking() {
            if let Ok(l) = fs::read_to_string(&self.log) {
                eprintln!("--- daemon log ---\n{l}");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Home {
    /// A home network with the emulator running and a daemon configuration written (not
    /// started). `extra` is appended to the UCI file.
    fn new(extra: &str) -> Home {
        Home::with_timing(1, 2, extra)
    }

    /// As `new`, with another emulator world.
    fn with_world(extra: &str, world_json: &str) -> Home {
        Home::build(
            1,
            2,
            "config network 'network'\n\toption wan_device 'wan'\n\toption lan_device 'br-lan'\n",
            extra,
            None,
            world_json,
        )
    }

    /// Like [`Home::new`] with the tick `interval` and the Jellyfin `timeout` (seconds).
    fn with_timing(interval: u32, timeout: u32, extra: &str) -> Home {
        Home::build(
            interval,
            timeout,
            "config network 'network'\n\toption wan_device 'wan'\n\toption lan_device 'br-lan'\n",
            extra,
            None,
            &world(),
        )
    }

    /// A home whose router is configured as OpenWrt ships it: the network section left at
    /// its defaults (WAN and LAN devices and the local networks from netifd), the media
    /// server's IPv6 address set (`server_ip6`) or left for the daemon to learn.
    fn openwrt(extra: &str, server_ip6: bool) -> Home {
        Home::build(
            1,
            2,
            &format!("config network 'network'\n{extra}"),
            "",
            Some(server_ip6),
            &world(),
        )
    }

    fn build(
        interval: u32,
        timeout: u32,
        network: &str,
        extra: &str,
        openwrt: Option<bool>,
        world_json: &str,
    ) -> Home {
        let net = HomeNet::up(&Options {
            viewers: 3,
            ..Options::default()
        })
        .expect("home network");
        let dir = std::env::temp_dir().join(format!(
            "jd-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("world.json"), world_json).unwrap();
        let cfg = dir.join("jellydemon");
        fs::write(
            &cfg,
            format!(
                "config jellydemon 'main'\n\toption enabled '1'\n\toption interval '{interval}'\n\toption state_dir '{d}/state'\n\toption run_dir '{d}/run'\n\
                 config jellyfin 'jellyfin'\n\toption url 'http://192.168.1.2:8096'\n\toption api_key '{KEY}'\n\toption timeout '{timeout}'\n\toption notify_viewer '1'\n{ip6}\
                 {network}\
                 config bandwidth 'bandwidth'\n\toption upload_mbps '20'\n{extra}",
                ip6 = if openwrt == Some(true) {
                    format!("\toption server_ip6 '{}'\n", topology::JF_V6)
                } else {
                    String::new()
                },
                d = dir.display()
            ),
        )
        .unwrap();
        let exe = topology::homenet_exe().expect("homenet built");
        let world = dir.join("world.json");
        let emu = net
            .spawn_io(
                &net.jf,
                &[
                    exe.to_str().unwrap(),
                    "jellyfin",
                    // IPv4 on every address; IPv6 on the server's own (a `[::]` listener
                    // would be dual-stack and collide with the IPv4 one).
                    "--listen",
                    "0.0.0.0:8096",
                    "--listen",
                    &format!("[{}]:8096", topology::JF_V6),
                    "--world",
                    world.to_str().unwrap(),
                ],
                Stdio::null(),
                Stdio::null(),
            )
            .expect("emulator");
        let log = dir.join("daemon.log");
        let netifd = openwrt.is_some().then(|| {
            let f = dir.join("netifd.json");
            fs::write(&f, netifd_file("wan")).unwrap();
            fs::create_dir_all(dir.join("etc/config")).unwrap();
            f
        });
        let home = Home {
            net,
            dir,
            cfg,
            emu: Some(emu),
            daemon: None,
            viewers: Vec::new(),
            log,
            netifd,
        };
        let router = home.net.router.clone();
        wait_for(Duration::from_secs(10), "the emulator", || {
            ns_http(
                &router,
                "GET",
                "http://192.168.1.2:8096/System/Info/Public",
                None,
            )
            .ok()
            .filter(|(s, _)| *s == 200)
        });
        home
    }

    /// `homenet router-exec ... --` when the router is OpenWrt-like, else nothing.
    fn router_exec(&self) -> Vec<String> {
        let Some(f) = &self.netifd else {
            return Vec::new();
        };
        let exe = topology::homenet_exe().unwrap();
        [
            exe.to_str().unwrap(),
            "router-exec",
            "--netifd",
            f.to_str().unwrap(),
            "--etc",
            self.dir.join("etc").to_str().unwrap(),
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn start_daemon(&mut self, args: &[&str]) {
        self.spawn_daemon(args);
        wait_for(Duration::from_secs(20), "a first status", || self.status());
    }

    /// Starts the daemon without waiting for its first status.
    fn spawn_daemon(&mut self, args: &[&str]) {
        let log = fs::File::create(&self.log).unwrap();
        let exe = daemon_exe();
        let wrap = self.router_exec();
        let mut argv: Vec<&str> = wrap.iter().map(String::as_str).collect();
        argv.extend([
            exe.to_str().unwrap(),
            "--config",
            self.cfg.to_str().unwrap(),
            "run",
            "--stderr",
        ]);
        argv.extend_from_slice(args);
        let child = self
            .net
            .spawn_io(&self.net.router, &argv, Stdio::null(), Stdio::from(log))
            .expect("daemon");
        self.daemon = Some(child);
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn jd(&self, args: &[&str]) -> (i32, String) {
        let exe = daemon_exe();
        let wrap = self.router_exec();
        let mut argv = vec!["ip", "netns", "exec", &self.net.router];
        argv.extend(wrap.iter().map(String::as_str));
        argv.extend([
            exe.to_str().unwrap(),
            "--config",
            self.cfg.to_str().unwrap(),
        ]);
        argv.extend_from_slice(args);
        let out = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .expect("run jellydemon");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn status(&self) -> Option<Value> {
        let text = fs::read_to_string(self.dir.join("run/status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn emu_state(&self) -> Value {
        let (_, body) = ns_http(
            &self.net.router,
            "GET",
            "http://192.168.1.2:8096/_emu/state",
            None,
        )
        .expect("emulator state");
        serde_json::from_str(&body).expect("state json")
    }

    fn fault(&self, mode: &str, delay_ms: u64) {
        self.fault_in(mode, delay_ms, "api");
    }

    fn fault_in(&self, mode: &str, delay_ms: u64, scope: &str) {
        let (s, _) = ns_http(
            &self.net.router,
            "POST",
            "http://192.168.1.2:8096/_emu/fault",
            Some(serde_json::json!({"mode": mode, "delay_ms": delay_ms, "scope": scope})),
        )
        .expect("fault");
        assert!(s < 300);
    }

    /// The user's RemoteClientBitrateLimit as the server stores it.
    fn limit(&self, uid: &str) -> i64 {
        let st = self.emu_state();
        user_limit(&st, uid)
    }

    /// Starts viewer host `i` (remote) watching `item` as `user`.
    fn remote_viewer(&mut self, i: usize, user: &str, item: &str, method: &str) {
        let ns = self.net.viewers[i].clone();
        self.viewer_in(
            &ns,
            "198.51.100.1:8096",
            user,
            item,
            method,
            &format!("dev-{user}-{i}"),
        );
    }

    fn viewer_in(
        &mut self,
        ns: &str,
        server: &str,
        user: &str,
        item: &str,
        method: &str,
        dev: &str,
    ) {
        let exe = topology::homenet_exe().unwrap();
        let stats = self.dir.join(format!("{dev}.jsonl"));
        let child = self
            .net
            .spawn_io(
                ns,
                &[
                    exe.to_str().unwrap(),
                    "viewer",
                    "--server",
                    server,
                    "--user",
                    user,
                    "--item",
                    item,
                    "--client",
                    "Jellyfin Web",
                    "--device-id",
                    dev,
                    "--method",
                    method,
                    "--stats",
                    stats.to_str().unwrap(),
                ],
                Stdio::null(),
                Stdio::null(),
            )
            .expect("viewer");
        self.viewers.push(child);
    }

    /// When the server first listed `user` playing, and when the user's limit was first set
    /// (each awaited for at most `timeout`).
    fn playing_then_limited(&self, user: &str, uid: &str, timeout: Duration) -> (Instant, Instant) {
        let seen = wait_for(timeout, &format!("{user}'s session"), || {
            let st = self.emu_state();
            st["sessions"]
                .as_array()?
                .iter()
                .any(|s| s["user_name"] == user && s["now_playing_item_id"].is_string())
                .then(Instant::now)
        });
        let limited = wait_for(timeout, &format!("{user}'s limit"), || {
            (self.limit(uid) > 0).then(Instant::now)
        });
        (seen, limited)
    }

    fn daemon_alive(&mut self) -> bool {
        matches!(self.daemon.as_mut().map(|d| d.try_wait()), Some(Ok(None)))
    }

    fn router_tc(&self, args: &[&str]) -> String {
        let mut argv = vec!["tc"];
        argv.extend_from_slice(args);
        self.net.exec(&self.net.router, &argv).unwrap_or_default()
    }
}

fn user_limit(state: &Value, uid: &str) -> i64 {
    state["users"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["id"] == uid))
        .and_then(|u| u["policy"]["RemoteClientBitrateLimit"].as_i64())
        .unwrap_or(-1)
}

fn stream<'a>(status: &'a Value, user: &str) -> Option<&'a Value> {
    status["streams"]
        .as_array()?
        .iter()
        .find(|s| s["user"] == user)
}

fn need_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    if fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
    {
        true
    } else {
        eprintln!("skipped: needs root for network namespaces");
        false
    }
}

/// Classes under the Jellyfin parent `4a44:a`, less the newcomer class `4a44:e`.
fn viewer_classes(tc_class_show: &str) -> usize {
    tc_class_show
        .lines()
        .filter(|l| l.contains("parent 4a44:a") && !l.contains("4a44:e "))
        .count()
}

#[test]
fn external_stream_limited_within_one_tick_local_never() {
    if !need_root() {
        return;
    }
    let mut h = Home::new("");
    h.start_daemon(&[]);
    h.remote_viewer(0, "alice", ITEM6, "transcode");
    let lan = h.net.lan.clone();
    h.viewer_in(
        &lan,
        "192.168.1.2:8096",
        "carol",
        ITEM6,
        "transcode",
        "dev-carol",
    );
    // The moment the server lists alice's playback, the next tick (1 s) must set her limit.
    let (seen, limited) = h.playing_then_limited("alice", ALICE, Duration::from_secs(15));
    assert!(
        limited.duration_since(seen) <= Duration::from_millis(2500),
        "limit took {:?}",
        limited.duration_since(seen)
    );
    // One external stream gets the whole budget: 20 × 0.9 − 2 = 16 Mbit/s (minus noise) on
    // the wire, so a Jellyfin limit 15 % lower (headers and refill room): 13.9.
    let l = h.limit(ALICE) as f64 / M;
    assert!((12.5..=14.0).contains(&l), "alice limit {l}");
    let st = wait_for(Duration::from_secs(10), "carol in the status", || {
        let st = h.status()?;
        stream(&st, "carol").is_some().then_some(st)
    });
    assert_eq!(stream(&st, "carol").unwrap()["external"], false);
    assert_eq!(stream(&st, "alice").unwrap()["external"], true);
    assert_eq!(h.limit(CAROL), 0, "a local viewer is never limited");
    // A tc class exists for alice's address, none for carol's.
    let classes = h.router_tc(&["class", "show", "dev", "jdshape0"]);
    assert_eq!(viewer_classes(&classes), 1, "one viewer class: {classes}");
    assert!(h.daemon_alive());
}

#[test]
fn two_external_streams_split_and_household_upload_restarts_only_the_exceeding_one() {
    if !need_root() {
        return;
    }
    let mut h = Home::new("");
    h.start_daemon(&[]);
    h.remote_viewer(0, "alice", ITEM6, "transcode");
    h.remote_viewer(1, "bob", ITEM2, "transcode");
    // Two external streams split the budget: ~8 Mbit/s each.
    wait_for(Duration::from_secs(20), "an even split", || {
        let (a, b) = (h.limit(ALICE) as f64 / M, h.limit(BOB) as f64 / M);
        ((6.5..=8.0).contains(&a) && (6.5..=8.0).contains(&b)).then_some(())
    });
    let st = h.emu_state();
    let restarts = |st: &Value, user: &str| -> u64 {
        st["sessions"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["user_name"] == user))
            .and_then(|s| s["restarts"].as_u64())
            .unwrap_or(0)
    };
    assert_eq!(restarts(&st, "alice"), 0, "6 Mbit/s fits under 8");
    assert_eq!(restarts(&st, "bob"), 0);
    // The household starts a paced 8 Mbit/s upload: budget ≈ 18 − 8 = 10 → 5 each; alice's
    // 6.3 Mbit/s stream exceeds 5 and renegotiates, bob's 2.1 does not.
    let exe = topology::homenet_exe().unwrap();
    let inet = h.net.inet.clone();
    let sink = h
        .net
        .spawn_io(
            &inet,
            &[exe.to_str().unwrap(), "sink", "--listen", "0.0.0.0:9000"],
            Stdio::null(),
            Stdio::null(),
        )
        .unwrap();
    h.viewers.push(sink);
    let lan = h.net.lan.clone();
    // The upload must not race the sink's listen: wait until it accepts.
    h.net
        .exec(
            &lan,
            &[
                exe.to_str().unwrap(),
                "probe",
                "--to",
                "198.51.100.200:9000",
                "--timeout-ms",
                "10000",
            ],
        )
        .expect("the sink accepts connections");
    let up = h
        .net
        .spawn_io(
            &lan,
            &[
                exe.to_str().unwrap(),
                "upload",
                "--to",
                "198.51.100.200:9000",
                "--rate-mbps",
                "8",
            ],
            Stdio::null(),
            Stdio::null(),
        )
        .unwrap();
    h.viewers.push(up);
    wait_for(Duration::from_secs(30), "alice's restart", || {
        (restarts(&h.emu_state(), "alice") >= 1).then_some(())
    });
    let a = h.limit(ALICE) as f64 / M;
    assert!(a < 6.0, "alice's limit fell below her stream: {a}");
    // Give bob a few more ticks: he must not be restarted.
    std::thread::sleep(Duration::from_secs(4));
    let st = h.emu_state();
    assert_eq!(restarts(&st, "bob"), 0, "bob's stream fits: no restart");
    assert_eq!(restarts(&st, "alice"), 1, "one restart per demand change");
}

#[test]
fn sigterm_restores_every_original_limit_and_removes_tc() {
    if !need_root() {
        return;
    }
    let mut h = Home::new("");
    h.start_daemon(&[]);
    h.remote_viewer(0, "alice", ITEM2, "transcode");
    h.remote_viewer(1, "bob", ITEM2, "transcode");
    wait_for(Duration::from_secs(20), "both limited", || {
        (h.limit(ALICE) > 0 && h.limit(BOB) != 12_000_000).then_some(())
    });
    assert!(h
        .router_tc(&["qdisc", "show", "dev", "jdshape0"])
        .contains("4a44"));
    let mut d = h.daemon.take().unwrap();
    let t0 = Instant::now();
    assert!(
        HomeNet::stop(&mut d, Duration::from_secs(5)),
        "exit within 5 s of SIGTERM"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(d.wait().ok().and_then(|s| s.code()), Some(0));
    assert_eq!(h.limit(ALICE), 0, "alice had no limit");
    assert_eq!(h.limit(BOB), 12_000_000, "bob's own 12 Mbit/s is back");
    let links = h.net.exec(&h.net.router, &["ip", "link", "show"]).unwrap();
    assert!(!links.contains("jdshape0"), "own ifb removed: {links}");
    let filters = h.router_tc(&["filter", "show", "dev", "br-lan", "ingress"]);
    assert!(
        !filters.contains("jdshape0"),
        "own redirect removed: {filters}"
    );
    assert!(!h.dir.join("run/status.json").exists());
}

#[test]
fn kill_9_then_restore_or_restart_puts_originals_back() {
    if !need_root() {
        return;
    }
    let mut h = Home::new("");
    h.start_daemon(&[]);
    h.remote_viewer(0, "bob", ITEM2, "transcode");
    wait_for(Duration::from_secs(20), "bob limited", || {
        (h.limit(BOB) != 12_000_000 && h.limit(BOB) > 0).then_some(())
    });
    let mut d = h.daemon.take().unwrap();
    d.kill().unwrap();
    d.wait().unwrap();
    assert_ne!(h.limit(BOB), 12_000_000, "a killed daemon restores nothing");
    // `restore` alone puts it back and removes the tc state.
    let (code, out) = h.jd(&["restore"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(h.limit(BOB), 12_000_000, "{out}");
    assert!(!h
        .net
        .exec(&h.net.router, &["ip", "link", "show"])
        .unwrap()
        .contains("jdshape0"));

    // Again, but this time a new start recovers (bob stopped watching meanwhile).
    h.start_daemon(&[]);
    wait_for(Duration::from_secs(20), "bob limited again", || {
        (h.limit(BOB) != 12_000_000 && h.limit(BOB) > 0).then_some(())
    });
    let mut d = h.daemon.take().unwrap();
    d.kill().unwrap();
    d.wait().unwrap();
    for mut v in h.viewers.drain(..) {
        HomeNet::stop(&mut v, Duration::from_secs(5));
    }
    h.start_daemon(&[]);
    wait_for(Duration::from_secs(10), "recovery at start", || {
        (h.limit(BOB) == 12_000_000).then_some(())
    });
}

#[test]
fn broken_server_never_crashes_the_daemon() {
    if !need_root() {
        return;
    }
    let mut h = Home::new("");
    h.start_daemon(&[]);
    h.remote_viewer(0, "alice", ITEM2, "transcode");
    wait_for(Duration::from_secs(20), "alice limited", || {
        (h.limit(ALICE) > 0).then_some(())
    });
    for (mode, delay) in [
        ("status500", 0),
        ("garbage", 0),
        ("huge", 0),
        ("slow", 4000),
        ("starting", 0),
    ] {
        let applied = h.limit(ALICE);
        h.fault(mode, delay);
        let st = wait_for(
            Duration::from_secs(20),
            &format!("status shows {mode}"),
            || {
                let st = h.status()?;
                (st["jellyfin"]["reachable"] == false && st["jellyfin"]["error"].is_string())
                    .then_some(st)
            },
        );
        assert!(h.daemon_alive(), "daemon died under {mode}: {st}");
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            h.limit(ALICE),
            applied,
            "the last applied limit stays under {mode}"
        );
        assert!(h.daemon_alive(), "daemon died under {mode}");
        h.fault("none", 0);
        wait_for(Duration::from_secs(20), "reachable again", || {
            (h.status()?["jellyfin"]["reachable"] == true).then_some(())
        });
    }
    // Unreachable: the server process is gone.
    if let Some(mut e) = h.emu.take() {
        let _ = e.kill();
        let _ = e.wait();
    }
    wait_for(Duration::from_secs(20), "status shows unreachable", || {
        (h.status()?["jellyfin"]["reachable"] == false).then_some(())
    });
    assert!(h.daemon_alive());
    let log = fs::read_to_string(&h.log).unwrap();
    assert!(!log.contains(KEY), "the API key never reaches the log");
    let status = fs::read_to_string(h.dir.join("run/status.json")).unwrap();
    assert!(!status.contains(KEY));
}

/// Reads the viewer's stats file and returns (bytes, seconds) between two marks.
fn viewer_bytes(path: &Path) -> Vec<(u64, u64)> {
    let Ok(f) = fs::File::open(path) else {
        return vec![];
    };
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter_map(|v| Some((v["t_ms"].as_u64()?, v["bytes"].as_u64()?)))
        .collect()
}

#[test]
fn client_ignoring_the_limit_is_held_to_its_share_by_tc() {
    if !need_root() {
        return;
    }
    // A 4 Mbit/s share for a direct-play client of a 12 Mbit/s file; burst 100 % so the
    // sustained rate is the share itself.
    let mut h = Home::new(
        "\toption max_stream_mbps '4'\nconfig shaping 'shaping'\n\toption burst_pct '100'\n",
    );
    h.start_daemon(&[]);
    h.remote_viewer(0, "alice", ITEM12, "direct");
    wait_for(Duration::from_secs(20), "alice's class", || {
        h.router_tc(&["class", "show", "dev", "jdshape0"])
            .contains("rate 4Mbit")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let stats = h.dir.join("dev-alice-0.jsonl");
    let a = *viewer_bytes(&stats).last().expect("viewer stats");
    std::thread::sleep(Duration::from_secs(10));
    let b = *viewer_bytes(&stats).last().unwrap();
    let rate = (b.1 - a.1) as f64 * 8.0 / ((b.0 - a.0) as f64 / 1000.0) / M;
    assert!(
        (3.6..=4.4).contains(&rate),
        "measured {rate:.2} Mbit/s for a 4 Mbit/s share"
    );
    // The status reports the measured rate for that viewer.
    let st = h.status().unwrap();
    let m = stream(&st, "alice").unwrap()["measured_bps"]["1m"]
        .as_f64()
        .unwrap()
        / M;
    assert!(m > 2.0 && m < 4.6, "status 1m {m}");
    // The viewer leaves: its class is gone within a tick or two.
    for mut v in h.viewers.drain(..) {
        HomeNet::stop(&mut v, Duration::from_secs(5));
    }
    wait_for(Duration::from_secs(5), "class removal", || {
        (viewer_classes(&h.router_tc(&["class", "show", "dev", "jdshape0"])) == 0).then_some(())
    });
}

#[test]
fn lan_device_deleted_and_recreated() {
    if !need_root() {
        return;
    }
    let mut h = Home::new("");
    h.start_daemon(&[]);
    h.remote_viewer(0, "alice", ITEM2, "transcode");
    wait_for(Duration::from_secs(20), "shaping on", || {
        h.router_tc(&["filter", "show", "dev", "br-lan", "ingress"])
            .contains("jdshape0")
            .then_some(())
    });
    let r = h.net.router.clone();
    h.net.exec(&r, &["ip", "link", "del", "br-lan"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        h.daemon_alive(),
        "the daemon survives a vanished LAN device"
    );
    for cmd in [
        vec!["ip", "link", "add", "br-lan", "type", "bridge"],
        vec!["ip", "link", "set", "lan1", "master", "br-lan"],
        vec!["ip", "link", "set", "lan2", "master", "br-lan"],
        vec!["ip", "addr", "add", "192.168.1.1/24", "dev", "br-lan"],
        vec!["ip", "link", "set", "br-lan", "up"],
    ] {
        h.net.exec(&r, &cmd).unwrap();
    }
    wait_for(Duration::from_secs(15), "shaping rebuilt", || {
        h.router_tc(&["filter", "show", "dev", "br-lan", "ingress"])
            .contains("jdshape0")
            .then_some(())
    });
    assert!(h.daemon_alive());
}

#[test]
fn dry_run_changes_nothing() {
    if !need_root() {
        return;
    }
    let mut h = Home::new("");
    h.start_daemon(&["--dry-run"]);
    h.remote_viewer(0, "bob", ITEM12, "transcode");
    wait_for(Duration::from_secs(20), "bob in the status", || {
        let st = h.status()?;
        stream(&st, "bob").map(|_| ())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(h.limit(BOB), 12_000_000);
    assert!(!h
        .net
        .exec(&h.net.router, &["ip", "link", "show"])
        .unwrap()
        .contains("jdshape0"));
    assert_eq!(h.status().unwrap()["dry_run"], true);
    let log = fs::read_to_string(&h.log).unwrap();
    assert!(log.contains("[dry run] would set bob"), "{log}");
}

#[test]
fn status_verb_renders_the_running_daemon() {
    if !need_root() {
        return;
    }
    let mut h = Home::new("");
    let (code, out) = h.jd(&["status"]);
    assert_eq!(code, 1, "no daemon yet: {out}");
    assert!(out.contains("not running"), "{out}");
    h.start_daemon(&[]);
    h.remote_viewer(0, "alice", ITEM2, "transcode");
    let out = wait_for(Duration::from_secs(20), "alice in the table", || {
        let (code, out) = h.jd(&["status"]);
        (code == 0 && out.contains("alice")).then_some(out)
    });
    let ip: IpAddr = "198.51.100.10".parse().unwrap();
    assert!(out.contains(&ip.to_string()), "{out}");
    assert!(
        out.contains("transcode") || out.contains("Transcode"),
        "{out}"
    );
    let (code, json) = h.jd(&["status", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(json.trim()).expect("status --json is JSON");
    assert_eq!(v["version"], 1);
}

/// The media server really sleeps (silent: no RST, no ICMP, no ARP — real-world.md, Hosts and
/// servers; the emulation is `HomeNet::sleep_server`). A remote viewer opens the app: the first
/// SYN reaches the router while the daemon's first tick is blocked in Jellyfin calls that time
/// out; the magic packet must still leave within a second. The server resumes after the boot
/// delay, the viewer's retry gets through, and the new stream is limited within one tick.
fn wake_a_sleeping_server(interval: u32, timeout: u32) {
    let mut h = Home::with_timing(
        interval,
        timeout,
        &format!(
            "config wol 'wol'\n\toption enabled '1'\n\toption mac '{}'\n\toption interface 'br-lan'\n\toption on_connect '1'\n\toption on_session '1'\n\toption cooldown '60'\n",
            topology::mac_text(topology::JF_MAC)
        ),
    );
    let sleeper = h
        .net
        .sleep_server(topology::BOOT_DELAY)
        .expect("the server sleeps");
    h.spawn_daemon(&[]);
    // The wake thread is up before the first tick starts (and blocks for `timeout`).
    wait_for(Duration::from_secs(10), "the wake thread", || {
        h.log_text()
            .contains("watching new connections")
            .then_some(())
    });
    let viewer = h.net.viewers[0].clone();
    let t0 = in_ns(&viewer, || {
        let t = Instant::now();
        let e = std::net::TcpStream::connect_timeout(
            &"198.51.100.1:8096".parse().unwrap(),
            Duration::from_millis(300),
        )
        .expect_err("a sleeping server does not answer");
        assert_ne!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "silent: {e}"
        );
        t
    });
    let magic = match sleeper.next(Duration::from_secs(3)) {
        Some(topology::SleepEvent::Magic { at, .. }) => at,
        other => panic!("no magic packet reached the server: {other:?}"),
    };
    let took = magic.saturating_duration_since(t0);
    eprintln!("first SYN → magic packet on the LAN: {took:?}");
    assert!(took < Duration::from_secs(1), "wake took {took:?}");
    // No status yet: the first tick is still blocked in Jellyfin calls to the silent host.
    assert!(
        h.status().is_none(),
        "the packet left while the first tick was blocked"
    );
    // The viewer's app retries until the server answers.
    let stats = h.dir.join("dev-alice.jsonl");
    let exe = topology::homenet_exe().unwrap();
    let child = h
        .net
        .spawn_io(
            &viewer,
            &[
                exe.to_str().unwrap(),
                "viewer",
                "--server",
                "198.51.100.1:8096",
                "--user",
                "alice",
                "--item",
                ITEM6,
                "--client",
                "Jellyfin Web",
                "--device-id",
                "dev-alice",
                "--method",
                "transcode",
                "--retry-for",
                "60",
                "--stats",
                stats.to_str().unwrap(),
            ],
            Stdio::null(),
            Stdio::null(),
        )
        .expect("viewer");
    h.viewers.push(child);
    // While it sleeps: the status says so, once the daemon found out.
    let asleep = wait_for(Duration::from_secs(20), "asleep in the status", || {
        let st = h.status()?;
        (st["wol"]["server_awake"] == false).then_some(st)
    });
    assert!(asleep["wol"]["asleep_since"].is_u64(), "{asleep}");
    assert_eq!(asleep["wol"]["last_reason"], "connect");
    let awake = match sleeper.next(topology::BOOT_DELAY + Duration::from_secs(5)) {
        Some(topology::SleepEvent::Awake { at }) => at,
        other => panic!("the server never woke: {other:?}"),
    };
    // The stream appears (the retry got through) and gets its limit within one tick.
    let (seen, limited) = h.playing_then_limited("alice", ALICE, Duration::from_secs(30));
    let tick = Duration::from_secs(u64::from(interval));
    eprintln!(
        "awake → playing: {:?}; playing → limited: {:?}",
        seen.saturating_duration_since(awake),
        limited.saturating_duration_since(seen)
    );
    assert!(
        limited.saturating_duration_since(seen) <= tick + Duration::from_millis(1500),
        "limit took {:?}",
        limited.saturating_duration_since(seen)
    );
    let st = wait_for(Duration::from_secs(20), "awake after N s", || {
        let st = h.status()?;
        st["wol"]["awake_after_s"].as_f64().map(|a| (a, st))
    });
    let (after, st) = st;
    eprintln!(
        "status: awake after {after} s (boot delay {:?})",
        topology::BOOT_DELAY
    );
    assert!(
        after >= topology::BOOT_DELAY.as_secs_f64() - 0.5
            && after <= topology::BOOT_DELAY.as_secs_f64() + f64::from(timeout) + 3.0,
        "awake after {after} s"
    );
    assert_eq!(st["wol"]["server_awake"], true);
    assert_eq!(st["wol"]["wakes"], 1, "one packet, then the cooldown");
    let (_, table) = h.jd(&["status"]);
    assert!(table.contains("awake after"), "{table}");
    // Quiet while asleep: once running (start-up notes about the configuration aside), no
    // error or warning, and one line saying it sleeps.
    let log = h.log_text();
    let noisy: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("watching new connections"))
        .filter(|l| {
            l.contains("Jellyfin unavailable")
                || l.contains(": error: ")
                || l.contains(": warning: ")
        })
        .collect();
    assert!(
        noisy.is_empty(),
        "no error spam while asleep: {noisy:?}\n{log}"
    );
    assert_eq!(log.matches("is asleep").count(), 1, "{log}");
    assert!(h.daemon_alive());
}

/// IPv6 is routed, not NATed (real-world.md, Home networks): a remote viewer connects to the
/// server's global address directly. That SYN wakes the sleeping server as well.
#[test]
fn an_ipv6_syn_to_the_sleeping_server_wakes_it() {
    if !need_root() {
        return;
    }
    let mut h = Home::with_timing(
        2,
        2,
        &format!(
            "config wol 'wol'\n\toption enabled '1'\n\toption mac '{}'\n\toption interface 'br-lan'\n\toption on_connect '1'\n\toption on_session '0'\n",
            topology::mac_text(topology::JF_MAC)
        ),
    );
    let sleeper = h
        .net
        .sleep_server(Duration::from_secs(1))
        .expect("the server sleeps");
    h.spawn_daemon(&[]);
    wait_for(Duration::from_secs(10), "the wake thread", || {
        h.log_text()
            .contains("watching new connections")
            .then_some(())
    });
    let viewer = h.net.viewers[1].clone();
    let t0 = in_ns(&viewer, || {
        let t = Instant::now();
        let to = std::net::SocketAddr::new(IpAddr::V6(topology::JF_V6), topology::JF_PORT);
        let e = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(300))
            .expect_err("a sleeping server does not answer");
        assert_ne!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "silent: {e}"
        );
        t
    });
    let magic = match sleeper.next(Duration::from_secs(3)) {
        Some(topology::SleepEvent::Magic { at, .. }) => at,
        other => panic!("no magic packet reached the server: {other:?}"),
    };
    let took = magic.saturating_duration_since(t0);
    assert!(took < Duration::from_secs(1), "wake took {took:?}");
    assert!(matches!(
        sleeper.next(Duration::from_secs(5)),
        Some(topology::SleepEvent::Awake { .. })
    ));
}

#[test]
fn wake_a_sleeping_server_with_the_shipped_timings() {
    if !need_root() {
        return;
    }
    wake_a_sleeping_server(5, 5);
}

#[test]
fn wake_a_sleeping_server_with_short_timings() {
    if !need_root() {
        return;
    }
    wake_a_sleeping_server(2, 2);
}

/// The server falls asleep while bob streams (his limit set): the daemon says so once, keeps
/// the limit and the router class, and SIGTERM does not wait on the silent server — the
/// original stays in the backup, and `jellydemon restore` puts it back once the server is
/// woken (here by `jellydemon wake`).
#[test]
fn limits_kept_while_the_server_sleeps_and_sigterm_does_not_wait_for_it() {
    if !need_root() {
        return;
    }
    let mut h = Home::with_timing(
        2,
        2,
        &format!(
            "config wol 'wol'\n\toption enabled '1'\n\toption mac '{}'\n\toption interface 'br-lan'\n\toption on_connect '0'\n\toption on_session '0'\n",
            topology::mac_text(topology::JF_MAC)
        ),
    );
    h.start_daemon(&[]);
    h.remote_viewer(0, "bob", ITEM2, "transcode");
    wait_for(Duration::from_secs(30), "bob limited", || {
        (h.limit(BOB) != 12_000_000 && h.limit(BOB) > 0).then_some(())
    });
    let sleeper = h
        .net
        .sleep_server(Duration::from_secs(2))
        .expect("the server sleeps");
    let st = wait_for(Duration::from_secs(20), "asleep in the status", || {
        let st = h.status()?;
        (st["wol"]["server_state"] == "asleep").then_some(st)
    });
    assert_eq!(st["wol"]["server_awake"], false);
    assert_eq!(st["jellyfin"]["reachable"], false);
    assert!(
        st["jellyfin"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("asleep"),
        "{st}"
    );
    // A few ticks asleep: quiet, and the class stays.
    let before = h.log_text().lines().count();
    wait_for(Duration::from_secs(20), "three ticks asleep", || {
        let now = h.status()?["updated"].as_u64()?;
        (now >= st["updated"].as_u64()? + 6).then_some(())
    });
    let log = h.log_text();
    let later: Vec<&str> = log.lines().skip(before).collect();
    assert!(
        later
            .iter()
            .all(|l| !l.contains(": warning: ") && !l.contains(": error: ")),
        "quiet while asleep: {later:?}"
    );
    assert_eq!(log.matches("is asleep").count(), 1, "{log}");
    let classes = h.router_tc(&["class", "show", "dev", "jdshape0"]);
    assert_eq!(viewer_classes(&classes), 1, "bob's class kept: {classes}");
    let mut d = h.daemon.take().unwrap();
    let t0 = Instant::now();
    assert!(
        HomeNet::stop(&mut d, Duration::from_secs(2)),
        "exit within 2 s of SIGTERM although the server is silent"
    );
    eprintln!("SIGTERM while asleep → exit: {:?}", t0.elapsed());
    assert_eq!(d.wait().ok().and_then(|s| s.code()), Some(0));
    assert!(
        h.log_text().contains("stay in the backup"),
        "{}",
        h.log_text()
    );
    // Wake it by hand, then restore.
    let (code, out) = h.jd(&["wake"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        matches!(
            sleeper.next(Duration::from_secs(3)),
            Some(topology::SleepEvent::Magic { .. })
        ),
        "the manual wake reached the server"
    );
    assert!(matches!(
        sleeper.next(Duration::from_secs(10)),
        Some(topology::SleepEvent::Awake { .. })
    ));
    let restored = wait_for(Duration::from_secs(20), "restore", || {
        let (code, out) = h.jd(&["restore"]);
        (code == 0).then_some(out)
    });
    assert_eq!(
        h.limit(BOB),
        12_000_000,
        "bob's own limit is back: {restored}"
    );
}

/// Sum of the viewer classes' rates (bit/s) on the shaper device.
fn viewer_class_rates(tc_class_show: &str) -> u64 {
    tc_class_show
        .lines()
        .filter(|l| l.contains("parent 4a44:a") && !l.contains("4a44:e "))
        .filter_map(|l| {
            let r = l.split_whitespace().skip_while(|w| *w != "rate").nth(1)?;
            let (num, mult) = if let Some(n) = r.strip_suffix("Mbit") {
                (n, 1e6)
            } else if let Some(n) = r.strip_suffix("Kbit") {
                (n, 1e3)
            } else {
                (r.strip_suffix("bit")?, 1.0)
            };
            num.parse::<f64>().ok().map(|v| (v * mult) as u64)
        })
        .sum()
}

/// A flood of new connections to the router's Jellyfin port from namespace `ns`: nonblocking
/// connects closed at once (a SYN each, a new conntrack entry each), paced to about `per_s`.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Flood {
    fn start(ns: &str, per_s: u64) -> Flood {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&sent));
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            use nix::sys::socket::{
                connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
            };
            let file = fs::File::open(&path).expect("netns file");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let to = SockaddrIn::new(198, 51, 100, 1, 8096);
            let batch = (per_s / 100).max(1);
            while !flag.load(Ordering::Relaxed) {
                for _ in 0..batch {
                    if let Ok(fd) = socket(
                        AddressFamily::Inet,
                        SockType::Stream,
                        SockFlag::SOCK_NONBLOCK,
                        None,
                    ) {
                        use std::os::fd::AsRawFd;
                        let _ = connect(fd.as_raw_fd(), &to);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Pacing, not synchronisation: about `per_s` SYNs a second.
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Flood { stop, sent }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A flood of new connections to the Jellyfin port (conntrack NEW events by the thousand)
/// must starve neither the guard, which tightens the viewer classes within a second of a
/// household upload (between ticks: interval 5), nor SIGTERM.
#[test]
fn guard_and_sigterm_hold_during_a_flood_of_new_connections() {
    if !need_root() {
        return;
    }
    let mut h = Home::with_timing(
        5,
        5,
        &format!(
            "config wol 'wol'\n\toption enabled '1'\n\toption mac '{}'\n\toption interface 'br-lan'\n\toption on_connect '1'\n\toption cooldown '60'\n",
            topology::mac_text(topology::JF_MAC)
        ),
    );
    h.start_daemon(&[]);
    h.remote_viewer(0, "alice", ITEM6, "transcode");
    h.remote_viewer(1, "bob", ITEM6, "transcode");
    let before = wait_for(Duration::from_secs(40), "two viewer classes", || {
        let c = h.router_tc(&["class", "show", "dev", "jdshape0"]);
        (viewer_classes(&c) == 2 && h.limit(ALICE) > 0 && h.limit(BOB) != 12_000_000)
            .then(|| viewer_class_rates(&c))
    });
    let flood = Flood::start(&h.net.viewers[2], 3000);
    wait_for(Duration::from_secs(5), "the flood", || {
        (flood.sent() > 3000).then_some(())
    });
    let exe = topology::homenet_exe().unwrap();
    let inet = h.net.inet.clone();
    let mut sink = h
        .net
        .spawn_io(
            &inet,
            &[exe.to_str().unwrap(), "sink", "--listen", "0.0.0.0:9000"],
            Stdio::piped(),
            Stdio::null(),
        )
        .unwrap();
    let lines = topology::Lines::new(sink.stdout.take().unwrap());
    h.viewers.push(sink);
    lines
        .next_json(Duration::from_secs(10), |v| v.get("listening").is_some())
        .expect("the sink listens");
    let lan = h.net.lan.clone();
    let up = h
        .net
        .spawn_io(
            &lan,
            &[
                exe.to_str().unwrap(),
                "upload",
                "--to",
                "198.51.100.200:9000",
                "--greedy",
            ],
            Stdio::null(),
            Stdio::null(),
        )
        .unwrap();
    h.viewers.push(up);
    lines
        .next_json(Duration::from_secs(10), |v| v.get("accept").is_some())
        .expect("the upload connects");
    let t_up = Instant::now();
    let tightened = wait_for(Duration::from_secs(5), "tighter classes", || {
        let c = h.router_tc(&["class", "show", "dev", "jdshape0"]);
        (viewer_class_rates(&c) < before * 9 / 10).then(Instant::now)
    });
    let took = tightened.saturating_duration_since(t_up);
    eprintln!(
        "during a flood of {} SYNs: household upload → classes tightened in {took:?}",
        flood.sent()
    );
    assert!(took <= Duration::from_millis(1000), "guard took {took:?}");
    let st = h.status().unwrap();
    assert!(
        st["wol"]["wakes"].as_u64().unwrap_or(0) <= 1,
        "cooldown: {st}"
    );
    // SIGTERM while the flood goes on.
    let mut d = h.daemon.take().unwrap();
    let t0 = Instant::now();
    assert!(
        HomeNet::stop(&mut d, Duration::from_secs(2)),
        "exit within 2 s of SIGTERM during the flood"
    );
    eprintln!("SIGTERM → exit: {:?}", t0.elapsed());
    assert_eq!(d.wait().ok().and_then(|s| s.code()), Some(0));
    assert_eq!(h.limit(BOB), 12_000_000, "bob's own 12 Mbit/s is back");
    drop(flood);
}

#[test]
fn webhook_receives_the_events_of_a_stream() {
    if !need_root() {
        return;
    }
    // A receiver inside the router namespace, where the daemon posts from.
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let (port_tx, port_rx) = std::sync::mpsc::channel::<u16>();
    let mut h0 = Home::new("");
    let router = h0.net.router.clone();
    std::thread::spawn(move || {
        in_ns(&router, move || {
            let server = tiny_http::Server::http("127.0.0.1:0").expect("receiver");
            let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or(0);
            port_tx.send(port).unwrap();
            while let Ok(Some(mut req)) = server.recv_timeout(Duration::from_secs(60)) {
                let mut body = String::new();
                let _ = req.as_reader().read_to_string(&mut body);
                let _ = req.respond(tiny_http::Response::empty(204));
                if let Ok(v) = serde_json::from_str::<Value>(&body) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        })
    });
    let port = port_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let cfg = fs::read_to_string(&h0.cfg).unwrap()
        + &format!(
            "config publish 'publish'\n\toption webhook_url 'http://127.0.0.1:{port}/hook'\n"
        );
    fs::write(&h0.cfg, cfg).unwrap();
    h0.start_daemon(&[]);
    h0.remote_viewer(0, "alice", ITEM2, "transcode");
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen.contains(&"stream_started".into()) && seen.contains(&"limit_changed".into())) {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("events so far: {seen:?}"));
        assert!(v["content"].is_string(), "Discord-compatible content: {v}");
        assert!(!v.to_string().contains(KEY), "never the API key");
        seen.push(v["event"].as_str().unwrap_or_default().to_string());
    }
    for mut v in h0.viewers.drain(..) {
        HomeNet::stop(&mut v, Duration::from_secs(5));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen.contains(&"stream_stopped".into()) {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("events so far: {seen:?}"));
        seen.push(v["event"].as_str().unwrap_or_default().to_string());
    }
}

/// The world of `world()` with `n` more accounts. A user object is ~2 KB on a real server
/// and in the emulator: with 1,000 accounts `/Users` is 1.96 MB, above the daemon's 1 MiB
/// answer limit, so a daemon that reads the whole list never limits anyone.
fn world_with_accounts(n: usize) -> String {
    let mut w: Value = serde_json::from_str(&world()).unwrap();
    let users = w["users"].as_array_mut().unwrap();
    for i in 0..n {
        users.push(serde_json::json!({
            "name": format!("account{i:04}"),
            "id": format!("{:032x}", 0xacc0_0000_u64 + i as u64),
            "remote_client_bitrate_limit": (i % 7) as i64 * 1_000_000,
        }));
    }
    w.to_string()
}

/// The daemon's own requests in the emulator's log (method and path).
fn daemon_requests(state: &Value) -> Vec<(u64, String)> {
    state["requests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| {
                    r["caller"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("apikey:"))
                })
                .map(|r| {
                    (
                        r["t_ms"].as_u64().unwrap_or(0),
                        format!(
                            "{} {}",
                            r["method"].as_str().unwrap_or(""),
                            r["path"].as_str().unwrap_or("")
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn thousand_accounts_external_viewer_limited_within_one_tick_one_request_per_tick() {
    if !need_root() {
        return;
    }
    let mut h = Home::with_world("", &world_with_accounts(1000));
    h.start_daemon(&[]);
    h.remote_viewer(0, "alice", ITEM6, "transcode");
    let seen = wait_for(Duration::from_secs(15), "alice's session", || {
        let st = h.emu_state();
        st["sessions"]
            .as_array()?
            .iter()
            .any(|s| s["user_name"] == "alice" && s["now_playing_item_id"].is_string())
            .then(Instant::now)
    });
    let limited = wait_for(Duration::from_secs(10), "alice's limit", || {
        (h.limit(ALICE) > 0).then(Instant::now)
    });
    assert!(
        limited.duration_since(seen) <= Duration::from_millis(2500),
        "limit took {:?}",
        limited.duration_since(seen)
    );
    // Steady state: the limit holds, and each tick asks Jellyfin one thing, /Sessions.
    let t0 = daemon_requests(&h.emu_state())
        .last()
        .map(|r| r.0)
        .unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(4);
    wait_for(Duration::from_secs(10), "four steady ticks", || {
        (Instant::now() >= until).then_some(())
    });
    let all = daemon_requests(&h.emu_state());
    assert!(
        !all.iter().any(|(_, r)| r == "GET /Users"),
        "the whole user list is never read: {all:?}"
    );
    let steady: Vec<&String> = all.iter().filter(|r| r.0 > t0).map(|r| &r.1).collect();
    assert!(steady.len() >= 3, "{steady:?}");
    assert!(
        steady.iter().all(|r| r.as_str() == "GET /Sessions"),
        "one request per steady tick: {steady:?}"
    );
    let st = h.status().unwrap();
    assert!(
        st["errors"].as_array().is_some_and(|e| e.is_empty()),
        "{st:#}"
    );
}

/// A tiny deterministic generator (xorshift64*), so a failing run can be repeated with its
/// seed (`JD_CHAOS_SEED`).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Crash consistency: `kill -9` at random moments while viewers come and go and limits change,
/// also while Jellyfin is slow or applies writes and answers after the daemon's timeout
/// (reference/real-world.md). After each kill the backup must hold only true originals, and
/// either `restore` or a new start follows; at the end every original must be back. The short
/// run (10 kills) is part of `cargo test`; `make chaos` runs `JD_CHAOS_KILLS=100` or more.
#[test]
fn chaos_kill_9_at_random_moments_loses_no_original() {
    if !need_root() {
        return;
    }
    let kills: usize = std::env::var("JD_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("JD_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    eprintln!("chaos: {kills} kills, JD_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    // The world's originals (world()): bob has his own 12 Mbit/s.
    let originals = [
        (ALICE, "alice", 0i64),
        (BOB, "bob", 12_000_000),
        (CAROL, "carol", 0),
    ];
    let mut h = Home::new("");
    h.start_daemon(&[]);
    let mut playing: [Option<u32>; 3] = [None; 3];
    let items = [ITEM6, ITEM2, ITEM12];
    let (mut restores, mut restarts, mut late_kills) = (0, 0, 0);
    let backup = h.dir.join("state/original-limits.json");
    for k in 0..kills {
        // The server: fine, slow to answer (under and over jellyfin.timeout = 2 s), or
        // applying writes at once and answering after the timeout — for everything, or for
        // writes only (then the next ticks read the late-applied value back).
        let (mode, delay, scope) = match rng.below(8) {
            0 | 1 => ("none", 0, "api"),
            2..=4 => ("late", 2500, "writes"),
            5 => ("late", 2500, "api"),
            6 => ("late", 1200, "api"),
            _ => ("slow", 2500, "api"),
        };
        h.fault_in(mode, delay, scope);
        // Viewers come and go (each change of who watches changes everyone's limit).
        for _ in 0..=rng.below(2) {
            let slot = rng.below(3) as usize;
            match playing[slot].take() {
                Some(pid) => {
                    if let Some(i) = h.viewers.iter().position(|c| c.id() == pid) {
                        let mut c = h.viewers.remove(i);
                        HomeNet::stop(&mut c, Duration::from_secs(5));
                    }
                }
                None => {
                    let (_, user, _) = originals[slot];
                    h.remote_viewer(slot, user, items[rng.below(3) as usize], "transcode");
                    playing[slot] = h.viewers.last().map(|c| c.id());
                }
            }
        }
        // Long enough, at times, for a change, its timed-out write and the ticks after it.
        std::thread::sleep(Duration::from_millis(rng.below(6000)));
        let mut d = h.daemon.take().expect("daemon running");
        d.kill().unwrap();
        d.wait().unwrap();
        if mode != "none" {
            late_kills += 1;
            // Requests of the killed process still in the emulator land within its delay.
            std::thread::sleep(Duration::from_millis(delay + 200));
        }
        // The backup holds nothing but true originals.
        if let Ok(text) = fs::read_to_string(&backup) {
            let v: Value = serde_json::from_str(&text).expect("backup is valid JSON");
            for (uid, e) in v["users"].as_object().into_iter().flatten() {
                let want = originals.iter().find(|o| o.0 == uid).map(|o| o.2);
                assert_eq!(
                    e["original"].as_i64(),
                    want,
                    "kill {k}: {uid}'s original in the backup: {text}"
                );
            }
        }
        h.fault("none", 0);
        if rng.below(2) == 0 {
            restores += 1;
            let (code, out) = h.jd(&["restore"]);
            assert_eq!(code, 0, "kill {k}: {out}");
            for (uid, name, orig) in originals {
                assert_eq!(
                    h.limit(uid),
                    orig,
                    "kill {k}: {name}'s original after restore: {out}"
                );
            }
        } else {
            restarts += 1;
            if rng.below(2) == 0 {
                // Recovery itself meets writes applied and answered after the timeout.
                h.fault_in("late", 2500, "writes");
            }
        }
        h.start_daemon(&[]);
    }
    // SIGTERM's time bound against a slow server is another test's subject.
    h.fault("none", 0);
    let posts = daemon_requests(&h.emu_state())
        .iter()
        .filter(|r| r.1.ends_with("/Policy"))
        .count();
    for mut v in h.viewers.drain(..) {
        HomeNet::stop(&mut v, Duration::from_secs(5));
    }
    let mut d = h.daemon.take().unwrap();
    assert!(
        HomeNet::stop(&mut d, Duration::from_secs(5)),
        "exit on SIGTERM"
    );
    for (uid, name, orig) in originals {
        assert_eq!(h.limit(uid), orig, "{name}'s original at the end");
    }
    eprintln!(
        "chaos: {kills} kills ({late_kills} during slow or late answers), {restores} followed by restore, \
         {restarts} by a new start; policy writes in the last log window: {posts}; 0 lost originals"
    );
}

#[test]
fn reload_moves_the_backup_and_restores_when_limits_are_no_longer_managed() {
    if !need_root() {
        return;
    }
    let mut h = Home::new("");
    h.start_daemon(&[]);
    h.remote_viewer(0, "bob", ITEM2, "transcode");
    let limited = |h: &Home| h.limit(BOB) != 12_000_000 && h.limit(BOB) > 0;
    wait_for(Duration::from_secs(20), "bob limited", || {
        limited(&h).then_some(())
    });
    let base = fs::read_to_string(&h.cfg).unwrap();
    let pid = nix::unistd::Pid::from_raw(h.daemon.as_ref().unwrap().id() as i32);
    let reload = |h: &Home, text: String| {
        fs::write(&h.cfg, text).unwrap();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    };
    let backup = |dir: &str| h.dir.join(dir).join("original-limits.json");

    // A new state_dir: the backup goes along.
    let moved = base.replace("/state'", "/state2'");
    reload(&h, moved.clone());
    wait_for(
        Duration::from_secs(10),
        "the backup in the new state_dir",
        || {
            let text = fs::read_to_string(backup("state2")).ok()?;
            (text.contains("12000000") && !backup("state").exists()).then_some(())
        },
    );
    assert!(limited(&h), "still managed");

    // manage_limits off: bob's original back at once, not at exit.
    reload(
        &h,
        moved.replace(
            "option timeout '2'",
            "option timeout '2'\n\toption manage_limits '0'",
        ),
    );
    wait_for(Duration::from_secs(10), "bob's original back", || {
        (h.limit(BOB) == 12_000_000).then_some(())
    });
    reload(&h, moved.clone());
    wait_for(Duration::from_secs(20), "bob limited again", || {
        limited(&h).then_some(())
    });

    // Dry run switched on by a reload: the same.
    reload(
        &h,
        moved.replace(
            "option interval '1'",
            "option interval '1'\n\toption dry_run '1'",
        ),
    );
    wait_for(
        Duration::from_secs(10),
        "bob's original back in dry run",
        || (h.limit(BOB) == 12_000_000).then_some(()),
    );
    assert!(h.daemon_alive());
}

/// Bytes sent through the classes of `tc -s class show` whose line matches `select`.
fn class_sent(tc_s_class_show: &str, select: impl Fn(&str) -> bool) -> u64 {
    let mut total = 0;
    let mut take = false;
    for l in tc_s_class_show.lines() {
        if l.starts_with("class ") {
            take = select(l);
        } else if take {
            if let Some(rest) = l.trim_start().strip_prefix("Sent ") {
                total += rest
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                take = false;
            }
        }
    }
    total
}

/// Waits until the daemon has written `n` more status files (ticks), whatever they say.
fn wait_ticks(h: &Home, n: u64) {
    let start = h.status().and_then(|s| s["updated"].as_u64()).unwrap_or(0);
    wait_for(Duration::from_secs(n * 2 + 5), "ticks", || {
        let now = h.status()?["updated"].as_u64()?;
        (now >= start + n).then_some(())
    });
}

#[test]
fn lan_viewer_on_the_global_ipv6_prefix_is_local_remote_ipv6_viewer_is_managed() {
    if !need_root() {
        return;
    }
    // The server's IPv6 address is not configured: the daemon learns it from the neighbour
    // table (the server's MAC from ARP), once the first IPv6 packet reaches it.
    let mut h = Home::openwrt("", false);
    h.start_daemon(&[]);
    let server6 = format!("[{}]:8096", topology::JF_V6);
    let v0 = h.net.viewers[0].clone();
    h.viewer_in(&v0, &server6, "alice", ITEM6, "transcode", "dev-alice-v6");
    let lan = h.net.lan.clone();
    h.viewer_in(&lan, &server6, "carol", ITEM6, "transcode", "dev-carol-v6");
    let st = wait_for(
        Duration::from_secs(20),
        "both streams in the status",
        || {
            let st = h.status()?;
            (stream(&st, "alice").is_some() && stream(&st, "carol").is_some()).then_some(st)
        },
    );
    let (alice, carol) = (stream(&st, "alice").unwrap(), stream(&st, "carol").unwrap());
    assert_eq!(alice["remote_ip"], topology::viewer_v6(0).to_string());
    assert_eq!(carol["remote_ip"], topology::LAN_V6.to_string());
    assert_eq!(alice["external"], true);
    assert_eq!(carol["external"], false, "the LAN's global prefix is local");
    // The local networks came from netifd: the LAN's subnet and the delegated prefix.
    let internal: Vec<&str> = st["network"]["internal"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(internal.contains(&"192.168.1.0/24"), "{internal:?}");
    assert!(internal.contains(&"2001:db8:2::/56"), "{internal:?}");
    assert!(
        !internal.contains(&"10.0.0.0/8"),
        "no fallback: {internal:?}"
    );
    assert_eq!(st["network"]["internal_fallback"], false);
    assert_eq!(st["network"]["lan_device"], "br-lan");
    assert_eq!(st["wan"]["device"], "wan");
    // The remote IPv6 viewer is limited, and its class carries the server's IPv6 packets.
    wait_for(Duration::from_secs(10), "alice's limit", || {
        (h.limit(ALICE) > 0).then_some(())
    });
    wait_for(Duration::from_secs(15), "alice's class counting", || {
        let out = h.router_tc(&["-s", "class", "show", "dev", "jdshape0"]);
        (class_sent(&out, |l| {
            l.contains("parent 4a44:a") && !l.contains("4a44:e ")
        }) > 100_000)
            .then_some(())
    });
    assert_eq!(
        h.status().unwrap()["network"]["server_ip6"],
        topology::JF_V6.to_string()
    );
    // The LAN viewer, over several ticks: never limited, restarted or shaped.
    wait_ticks(&h, 4);
    assert_eq!(h.limit(CAROL), 0, "a local viewer is never limited");
    let emu = h.emu_state();
    let carol_restarts: u64 = emu["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["user_name"] == "carol")
        .map(|s| s["restarts"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(carol_restarts, 0, "a local viewer is never restarted");
    let classes = h.router_tc(&["class", "show", "dev", "jdshape0"]);
    assert_eq!(viewer_classes(&classes), 1, "alice's class only: {classes}");
    let st = h.status().unwrap();
    let carol = stream(&st, "carol").unwrap();
    assert_eq!(carol["shaped_bps"], 0);
    assert_eq!(carol["limit_bps"], 0);
    assert!(h.daemon_alive());
}

#[test]
fn a_lan_service_on_the_jellyfin_port_that_is_not_the_server_is_untouched() {
    if !need_root() {
        return;
    }
    let mut h = Home::openwrt("", true);
    // The household host serves something on 8096 over IPv6, opened to the internet like
    // the media server (a firewall rule, no DNAT).
    let r = h.net.router.clone();
    h.net
        .exec(
            &r,
            &[
                "nft",
                "add",
                "rule",
                "inet",
                "homenet",
                "forward",
                "ip6",
                "daddr",
                &topology::LAN_V6.to_string(),
                "tcp",
                "dport",
                "8096",
                "accept",
            ],
        )
        .unwrap();
    let exe = topology::homenet_exe().unwrap();
    let lan = h.net.lan.clone();
    let service = format!("[{}]:8096", topology::LAN_V6);
    let src = h
        .net
        .spawn_io(
            &lan,
            &[
                exe.to_str().unwrap(),
                "source",
                "--listen",
                &service,
                "--rate-mbps",
                "4",
            ],
            Stdio::null(),
            Stdio::null(),
        )
        .unwrap();
    h.viewers.push(src);
    h.start_daemon(&[]);
    // The daemon's redirect is in place for the server, IPv4 and IPv6.
    wait_for(Duration::from_secs(15), "shaping on", || {
        let f = h.router_tc(&["filter", "show", "dev", "br-lan", "ingress"]);
        (f.contains("jdshape0") && f.contains("ipv6")).then_some(())
    });
    let v1 = h.net.viewers[1].clone();
    wait_for(Duration::from_secs(10), "the LAN service", || {
        h.net
            .exec(&v1, &[exe.to_str().unwrap(), "probe", "--to", &service])
            .ok()
    });
    let root = |h: &Home| {
        class_sent(
            &h.router_tc(&["-s", "class", "show", "dev", "jdshape0"]),
            |l| l.contains("4a44:1 ") && l.contains("root"),
        )
    };
    let before = root(&h);
    let out = h
        .net
        .exec(
            &v1,
            &[
                exe.to_str().unwrap(),
                "download",
                "--from",
                &service,
                "--seconds",
                "3",
            ],
        )
        .unwrap();
    let got: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let bytes = got["download"]["bytes"].as_u64().unwrap();
    assert!(bytes > 1_000_000, "the download ran: {out}");
    let through_shaper = root(&h) - before;
    assert!(
        through_shaper < 100_000,
        "{through_shaper} bytes of another host's port-8096 service went through the shaper"
    );
    assert!(h.daemon_alive());
}

#[test]
fn flow_offloading_is_reported_by_check_and_status() {
    if !need_root() {
        return;
    }
    let mut h = Home::openwrt("", true);
    fs::write(
        h.dir.join("etc/config/firewall"),
        "config defaults\n\toption input 'REJECT'\n\toption forward 'REJECT'\n\toption flow_offloading '1'\n\toption flow_offloading_hw '1'\n",
    )
    .unwrap();
    h.start_daemon(&[]);
    let st = wait_for(Duration::from_secs(10), "the status", || h.status());
    assert_eq!(st["network"]["flow_offloading"], "hardware");
    let errors = st["errors"].to_string();
    assert!(
        errors.contains("hardware flow offloading is on"),
        "{errors}"
    );
    assert!(errors.contains("flow_offloading=0"), "{errors}");
    let (_, out) = h.jd(&["check"]);
    assert!(out.contains("hardware flow offloading is on"), "{out}");
    assert!(out.contains("flow_offloading=0"), "{out}");
    // check reads netifd too: the LAN device and the local networks.
    assert!(out.contains("LAN device br-lan found"), "{out}");
    assert!(
        out.contains("local networks") && out.contains("2001:db8:2::/56"),
        "{out}"
    );
    // Without offloading, nothing is said.
    fs::write(
        h.dir.join("etc/config/firewall"),
        "config defaults\n\toption flow_offloading '0'\n\toption flow_offloading_hw '1'\n",
    )
    .unwrap();
    let (_, out) = h.jd(&["check"]);
    assert!(!out.contains("offloading is on"), "{out}");
}

#[test]
fn wan_down_and_up_as_a_new_device_keeps_measuring_without_a_false_spike() {
    if !need_root() {
        return;
    }
    let mut h = Home::openwrt("", true);
    let exe = topology::homenet_exe().unwrap();
    let sink = format!("{}:9000", topology::INET_V4);
    let inet = h.net.inet.clone();
    let s = h
        .net
        .spawn_io(
            &inet,
            &[exe.to_str().unwrap(), "sink", "--listen", &sink],
            Stdio::null(),
            Stdio::null(),
        )
        .unwrap();
    h.viewers.push(s);
    let lan = h.net.lan.clone();
    wait_for(Duration::from_secs(10), "the sink", || {
        h.net
            .exec(&lan, &[exe.to_str().unwrap(), "probe", "--to", &sink])
            .ok()
    });
    // The household uploads 8 Mbit/s to the internet, again after each reconnect.
    let upload = |h: &mut Home| {
        let c = h
            .net
            .spawn_io(
                &lan,
                &[
                    exe.to_str().unwrap(),
                    "upload",
                    "--to",
                    &sink,
                    "--rate-mbps",
                    "8",
                ],
                Stdio::null(),
                Stdio::null(),
            )
            .unwrap();
        h.viewers.push(c);
    };
    upload(&mut h);
    h.start_daemon(&[]);
    wait_for(
        Duration::from_secs(15),
        "the upload measured on wan",
        || {
            let st = h.status()?;
            (st["wan"]["device"] == "wan" && st["wan"]["tx_bps"].as_u64()? > 5_000_000)
                .then_some(())
        },
    );
    // Every status the daemon writes from here on, read as it comes.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (seen, stop, path) = (seen.clone(), stop.clone(), h.dir.join("run/status.json"));
        std::thread::spawn(move || {
            let mut last = String::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(t) = fs::read_to_string(&path) {
                    if t != last {
                        if let Ok(v) = serde_json::from_str::<Value>(&t) {
                            let dev = v["wan"]["device"].as_str().unwrap_or("").to_string();
                            seen.lock()
                                .unwrap()
                                .push((dev, v["wan"]["tx_bps"].as_u64().unwrap_or(0)));
                        }
                        last = t;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // A PPPoE WAN: the first session on a renamed device, down long enough for the daemon
    // to see it gone; then a quick reconnect under the same name, between two ticks. Each
    // time the device is new and its counters start from zero.
    for (old, new, slow) in [
        ("wan", "pppoe-wan", true),
        ("pppoe-wan", "pppoe-wan", false),
    ] {
        for mut c in h.viewers.drain(1..) {
            HomeNet::stop(&mut c, Duration::from_secs(2));
        }
        h.net.wan_down(old).unwrap();
        fs::write(h.netifd.as_ref().unwrap(), netifd_file(new)).unwrap();
        if slow {
            wait_for(
                Duration::from_secs(10),
                "the daemon noticing the WAN gone",
                || {
                    let st = h.status()?;
                    let e = st["errors"].to_string();
                    (e.contains("has no device") || e.contains("not readable")).then_some(())
                },
            );
        }
        h.net.wan_up(new).unwrap();
        let back = Instant::now();
        upload(&mut h);
        wait_for(Duration::from_secs(10), "measuring the new device", || {
            let st = h.status()?;
            (st["wan"]["device"] == new && st["wan"]["tx_bps"].as_u64()? > 1_000_000).then_some(())
        });
        // Two ticks of 1 s, plus the phase of the tick and the upload's first second.
        assert!(
            back.elapsed() <= Duration::from_millis(3500),
            "measuring {new} took {:?}",
            back.elapsed()
        );
    }
    wait_ticks(&h, 2);
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen.iter().any(|(d, _)| d == "pppoe-wan"));
    let max = seen.iter().map(|(_, b)| *b).max().unwrap_or(0);
    // The modem carries 20 Mbit/s; a reset read as a 32-bit wrap would show gigabits.
    assert!(max <= 25_000_000, "false spike: {max} bit/s in {seen:?}");
    assert!(h.daemon_alive());
}

#[test]
fn a_new_lan_prefix_is_followed_without_a_restart() {
    if !need_root() {
        return;
    }
    let mut h = Home::openwrt("", true);
    h.start_daemon(&[]);
    let has = |h: &Home, net: &str| {
        let st = h.status()?;
        st["network"]["internal"]
            .as_array()?
            .iter()
            .any(|n| n == net)
            .then_some(())
    };
    wait_for(Duration::from_secs(10), "the LAN's subnet", || {
        has(&h, "192.168.1.0/24")
    });
    assert!(has(&h, "2001:db8:7::/64").is_none());
    // The provider delegates another prefix: netifd assigns a /64 of it to the LAN (here: the
    // address appears on br-lan, which the kernel announces and the stand-in reports).
    let r = h.net.router.clone();
    h.net
        .exec(
            &r,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                "2001:db8:7::1/64",
                "dev",
                "br-lan",
                "nodad",
            ],
        )
        .unwrap();
    wait_for(
        Duration::from_secs(5),
        "the new prefix in the local networks",
        || has(&h, "2001:db8:7::/64"),
    );
    assert!(h.daemon_alive());
}
