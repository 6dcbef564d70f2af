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
        fs::write(dir.join("world.json"), world()).unwrap();
        let cfg = dir.join("jellydemon");
        fs::write(
            &cfg,
            format!(
                "config jellydemon 'main'\n\toption enabled '1'\n\toption interval '1'\n\toption state_dir '{d}/state'\n\toption run_dir '{d}/run'\n\
                 config jellyfin 'jellyfin'\n\toption url 'http://192.168.1.2:8096'\n\toption api_key '{KEY}'\n\toption timeout '2'\n\toption notify_viewer '1'\n\
                 config network 'network'\n\toption wan_device 'wan'\n\toption lan_device 'br-lan'\n\
                 config bandwidth 'bandwidth'\n\toption upload_mbps '20'\n{extra}",
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
                    "--listen",
                    "0.0.0.0:8096",
                    "--world",
                    world.to_str().unwrap(),
                ],
                Stdio::null(),
                Stdio::null(),
            )
            .expect("emulator");
        let log = dir.join("daemon.log");
        let home = Home {
            net,
            dir,
            cfg,
            emu: Some(emu),
            daemon: None,
            viewers: Vec::new(),
            log,
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

    fn start_daemon(&mut self, args: &[&str]) {
        let log = fs::File::create(&self.log).unwrap();
        let exe = daemon_exe();
        let mut argv = vec![
            exe.to_str().unwrap(),
            "--config",
            self.cfg.to_str().unwrap(),
            "run",
            "--stderr",
        ];
        argv.extend_from_slice(args);
        let child = self
            .net
            .spawn_io(&self.net.router, &argv, Stdio::null(), Stdio::from(log))
            .expect("daemon");
        self.daemon = Some(child);
        wait_for(Duration::from_secs(10), "a first status", || self.status());
    }

    fn jd(&self, args: &[&str]) -> (i32, String) {
        let exe = daemon_exe();
        let mut argv = vec![
            "ip",
            "netns",
            "exec",
            &self.net.router,
            exe.to_str().unwrap(),
            "--config",
            self.cfg.to_str().unwrap(),
        ];
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
        let (s, _) = ns_http(
            &self.net.router,
            "POST",
            "http://192.168.1.2:8096/_emu/fault",
            Some(serde_json::json!({"mode": mode, "delay_ms": delay_ms})),
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
    // One external stream gets the whole budget: 20 × 0.9 − 2 = 16 Mbit/s (minus noise) on
    // the wire, so a Jellyfin limit 20 % lower (headers and refill room): 13.3.
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

#[test]
fn wake_on_lan_within_a_second_of_the_first_syn_then_cooldown() {
    if !need_root() {
        return;
    }
    let mut h = Home::new(
        "config wol 'wol'\n\toption enabled '1'\n\toption mac '52:54:00:12:34:56'\n\toption interface 'br-lan'\n\toption on_connect '1'\n\toption on_session '1'\n\toption cooldown '60'\n",
    );
    // The media server sleeps: nothing answers on 8096.
    if let Some(mut e) = h.emu.take() {
        let _ = e.kill();
        let _ = e.wait();
    }
    h.start_daemon(&[]);
    // The server's NIC, as seen from its LAN: the UDP form of the magic packet on port 9.
    let jf = h.net.jf.clone();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        in_ns(&jf, move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:9").expect("bind :9");
            let _ = ready_tx.send(());
            sock.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut buf = [0u8; 512];
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        })
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the LAN-side listener is bound");
    let viewer = h.net.viewers[0].clone();
    let connect = || {
        in_ns(&viewer, || {
            let t = Instant::now();
            let _ = std::net::TcpStream::connect_timeout(
                &"198.51.100.1:8096".parse().unwrap(),
                Duration::from_millis(500),
            );
            t
        })
    };
    let t0 = connect();
    let (t1, pkt) = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("a magic packet within 2 s");
    assert!(
        t1.duration_since(t0) < Duration::from_secs(1),
        "wake took {:?}",
        t1.duration_since(t0)
    );
    let mut want = vec![0xffu8; 6];
    for _ in 0..16 {
        want.extend_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    }
    assert_eq!(pkt, want, "the magic packet, byte for byte");
    // A second connection within the cooldown sends nothing.
    connect();
    assert!(
        rx.recv_timeout(Duration::from_secs(2)).is_err(),
        "cooldown holds"
    );
    let st = h.status().unwrap();
    assert_eq!(st["wol"]["last_reason"], "connect");
    assert_eq!(st["wol"]["wakes"], 1);
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
