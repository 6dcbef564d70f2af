//! Publishing: the atomic status file on a real filesystem, the status table, the Prometheus
//! text checked by the reference parser (Python `prometheus_client`, installed by
//! tests/deps.sh), and the webhook against a real HTTP receiver.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jellydemon::config::Secret;
use jellydemon::publish::{render_prometheus, render_table, write_atomic, Event, Webhook};
use jellydemon::status::{
    Averages, JellyfinStatus, ShapingStatus, Status, StreamStatus, WanStatus, WolStatus,
};
use jellydemon::tlsclient::{Kind, TlsClient};
use serde_json::Value;
use tiny_http::{Response, Server, StatusCode};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory removed on drop, unique per process and test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("jd-publish-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn write_atomic_creates_replaces_and_leaves_nothing_behind() {
    let dir = TempDir::new("atomic");
    let path = dir.0.join("run/jellydemon/status.json");
    write_atomic(&path, b"{\"version\":1}").expect("first write creates the directory");
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"version\":1}");
    write_atomic(&path, b"second").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second");
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("status.json")]);

    // The target is a directory: a clear error, and no temporary file left.
    let blocker = dir.0.join("blocked");
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    assert!(write_atomic(&blocker, b"data").is_err());
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(write_atomic(std::path::Path::new("/"), b"x").is_err());
}

/// A reader never sees a mix of two versions or a cut file.
#[test]
fn readers_see_whole_versions_only() {
    let dir = TempDir::new("readers");
    let path = dir.0.join("status.json");
    let a = vec![b'a'; 100_000];
    let b = vec![b'b'; 150_000];
    write_atomic(&path, &a).unwrap();
    let done = Arc::new(Mutex::new(false));
    let reader = {
        let path = path.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !*done.lock().unwrap() && reads < 100_000 {
                let data = std::fs::read(&path).expect("the file always exists");
                let whole = (data.len() == 100_000 && data.iter().all(|&c| c == b'a'))
                    || (data.len() == 150_000 && data.iter().all(|&c| c == b'b'));
                assert!(whole, "torn read of {} bytes", data.len());
                reads += 1;
            }
            reads
        })
    };
    for i in 0..200 {
        write_atomic(&path, if i % 2 == 0 { &b } else { &a }).unwrap();
    }
    *done.lock().unwrap() = true;
    let reads = reader.join().expect("reader saw only whole files");
    assert!(reads > 0);
}

fn stream(session: &str, ip: &str, user: &str, external: bool, m: (u64, u64, u64)) -> StreamStatus {
    StreamStatus {
        session_id: session.into(),
        user: user.into(),
        client: "Jellyfin Web".into(),
        device: "Firefox".into(),
        remote_ip: ip.into(),
        external,
        play_method: "Transcode".into(),
        title: format!("movie: {user}'s film"),
        paused: false,
        source_bps: Some(8_454_000),
        limit_bps: if external { 5_000_000 } else { 0 },
        shaped_bps: 0,
        measured_bps: Averages {
            m1: m.0,
            m5: m.1,
            m10: m.2,
        },
        restarts: 1,
    }
}

fn sample_status() -> Status {
    let mut local = stream("s-local", "192.168.1.20", "bob", false, (900_000, 0, 0));
    local.play_method = "DirectPlay".into();
    let mut paused = stream(
        "s-carol",
        "198.51.100.7",
        "carol",
        true,
        (0, 1_000_000, 2_000_000),
    );
    paused.paused = true;
    paused.shaped_bps = 5_750_000;
    Status {
        version: 1,
        updated: 1_795_829_403,
        interval: 5,
        dry_run: false,
        managing: true,
        managing_reason: None,
        jellyfin: JellyfinStatus {
            reachable: true,
            server_version: Some("10.11.11".into()),
            error: None,
        },
        wan: WanStatus {
            device: Some("eth0".into()),
            capacity_bps: Some(20_000_000),
            tx_bps: 12_340_000,
            jellyfin_bps: 8_100_000,
            other_bps: 4_240_000,
        },
        budget_bps: 14_000_000,
        streams: vec![
            local,
            stream(
                "s-alice",
                "203.0.113.7",
                "alice",
                true,
                (3_310_000, 4_110_000, 4_340_000),
            ),
            paused,
            // A second session from alice's address: same measurement, shown once.
            stream(
                "s-alice2",
                "203.0.113.7",
                "alice",
                true,
                (3_310_000, 4_110_000, 4_340_000),
            ),
        ],
        wol: WolStatus {
            enabled: true,
            last_wake: Some(1_795_829_000),
            last_reason: Some("session".into()),
            wakes: 3,
            server_awake: Some(true),
            server_state: Some("awake".into()),
            asleep_since: None,
            awake_after_s: Some(8.4),
        },
        shaping: ShapingStatus {
            enabled: true,
            active: true,
            error: None,
        },
        network: Default::default(),
        errors: vec!["upload capacity unknown: set bandwidth.upload_mbps".into()],
    }
}

#[test]
fn table_reads_at_a_glance() {
    let t = render_table(&sample_status());
    println!("{t}");
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].contains("2026-11-28 01:30:03 UTC") && lines[0].contains("every 5 s"));
    let wan = lines.iter().find(|l| l.starts_with("WAN")).unwrap();
    for part in [
        "eth0",
        "capacity 20.00",
        "used 12.34",
        "Jellyfin 8.10",
        "other 4.24",
        "budget 14.00 Mbit/s",
    ] {
        assert!(wan.contains(part), "{wan:?} lacks {part:?}");
    }
    assert!(t.contains("reachable, version 10.11.11"));
    assert!(t.contains("3 external (2 viewers), 1 local"));

    let stream_lines: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("  ") && !l.contains("total") && !l.starts_with("  - "))
        .collect();
    assert_eq!(stream_lines.len(), 4, "{stream_lines:#?}");
    // External first; alice's two sessions together, the figure once.
    assert!(stream_lines[0].contains("198.51.100.7") && stream_lines[0].contains("(paused)"));
    assert!(stream_lines[0].contains("shaped 5.8"));
    assert!(
        stream_lines[1].contains("alice") && stream_lines[1].contains("[3.31, 4.11, 4.34 Mbps]")
    );
    assert!(
        stream_lines[1].contains("limit 5.0") && stream_lines[1].contains("movie: alice's film")
    );
    assert!(stream_lines[2].contains("alice") && stream_lines[2].contains("[same address]"));
    assert!(!stream_lines[2].contains("3.31"));
    assert!(stream_lines[3].contains("192.168.1.20") && stream_lines[3].contains("local"));
    assert!(stream_lines[3].contains("directplay") && !stream_lines[3].contains("limit"));
    // Totals per address: 3.31 + 0 (not 6.62 + 0), 4.11 + 1, 4.34 + 2.
    assert!(t.contains("external total [3.31, 5.11, 6.34 Mbps]"), "{t}");
    assert!(t.contains("Restarts      4"));
    assert!(t.contains("last wake 2026-11-28 01:23:20 UTC (session), 3 wakes, server awake"));
    assert!(t.contains("last wake from sleep: awake after 8.4 s"), "{t}");

    // The wake story: asleep, then woken at T (reason), then awake after N s.
    let mut asleep = sample_status();
    asleep.wol.server_awake = Some(false);
    asleep.wol.server_state = Some("asleep".into());
    asleep.wol.asleep_since = Some(1_795_828_000);
    asleep.wol.awake_after_s = None;
    let t2 = render_table(&asleep);
    assert!(
        t2.contains("server asleep since 2026-11-28 01:06:40 UTC"),
        "{t2}"
    );
    assert!(t2.contains("asleep, not woken yet"), "{t2}");
    let mut off = asleep.clone();
    off.wol.enabled = false;
    let t4 = render_table(&off);
    assert!(t4.contains("Wake-on-LAN   off, server asleep\n"), "{t4}");
    asleep.wol.server_state = Some("waking".into());
    asleep.wol.last_reason = Some("connect".into());
    let t3 = render_table(&asleep);
    assert!(
        t3.contains("asleep, woken at 2026-11-28 01:23:20 UTC (connect); waiting for Jellyfin"),
        "{t3}"
    );
    assert!(t.contains("  - upload capacity unknown"));

    let mut down = sample_status();
    down.jellyfin = JellyfinStatus {
        reachable: false,
        server_version: None,
        error: Some("Jellyfin did not answer in time".into()),
    };
    down.streams.clear();
    down.wan.capacity_bps = None;
    down.errors.clear();
    let t = render_table(&down);
    assert!(t.contains("UNREACHABLE: Jellyfin did not answer in time"));
    assert!(t.contains("capacity unknown"));
    assert!(t.contains("0 external (0 viewers), 0 local"));
    assert!(!t.contains("external total"));
    assert!(t.contains("Errors        none"));
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;

/// Parses with the reference Python parser; fails the test when it is missing or refuses.
fn parse_prometheus(text: &str) -> Vec<Value> {
    let mut child = Command::new("timeout")
        .args(["60", "python3", "-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (tests/deps.sh installs it with prometheus_client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text:\n{}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn prometheus_text_parses_with_hostile_labels() {
    let mut st = sample_status();
    let hostile_user = "ev\"il\\user\nname} x=\"1\",{";
    let hostile_client = "Kodi # TYPE fake counter\n\\\\";
    st.streams[1].user = hostile_user.into();
    st.streams[1].client = hostile_client.into();
    st.jellyfin.server_version = Some("10.11\"\n".into());
    let every_char: String = (1u8..128)
        .map(char::from)
        .chain("ünïcødé 🎬".chars())
        .collect();
    st.streams[3].user = every_char.clone();
    st.streams[3].session_id = "s-alice2\\\"".into();
    let text = render_prometheus(&st);
    let samples = parse_prometheus(&text);

    let find = |name: &str, session: Option<&str>| -> Vec<&Value> {
        samples
            .iter()
            .filter(|s| s["name"] == name)
            .filter(|s| session.is_none_or(|id| s["labels"]["session"] == id))
            .collect()
    };
    let one = |name: &str| -> f64 {
        let v = find(name, None);
        assert_eq!(v.len(), 1, "{name}: {v:?}");
        v[0]["value"].as_f64().unwrap()
    };
    assert_eq!(one("jellydemon_wan_capacity_bits"), 20_000_000.0);
    assert_eq!(one("jellydemon_wan_tx_bits_per_second"), 12_340_000.0);
    assert_eq!(one("jellydemon_wan_jellyfin_bits_per_second"), 8_100_000.0);
    assert_eq!(one("jellydemon_wan_other_bits_per_second"), 4_240_000.0);
    assert_eq!(one("jellydemon_budget_bits_per_second"), 14_000_000.0);
    assert_eq!(one("jellydemon_jellyfin_up"), 1.0);
    assert_eq!(one("jellydemon_wol_wakes_total"), 3.0);
    assert_eq!(one("jellydemon_wol_awake_after_seconds"), 8.4);
    assert_eq!(one("jellydemon_wol_server_awake"), 1.0);
    let info = find("jellydemon_jellyfin_info", None);
    assert_eq!(info[0]["labels"]["version"], "10.11\"\n");

    let limit = find("jellydemon_stream_limit_bits_per_second", Some("s-alice"));
    assert_eq!(limit.len(), 1);
    let labels = &limit[0]["labels"];
    assert_eq!(
        labels["user"], hostile_user,
        "label value survives escaping"
    );
    assert_eq!(labels["client"], hostile_client);
    assert_eq!(labels["remote_ip"], "203.0.113.7");
    assert_eq!(labels["external"], "true");
    assert_eq!(labels["play_method"], "Transcode");
    assert_eq!(limit[0]["value"], 5_000_000.0);
    assert_eq!(limit[0]["type"], "gauge");

    let odd = find(
        "jellydemon_stream_limit_bits_per_second",
        Some("s-alice2\\\""),
    );
    assert_eq!(odd.len(), 1);
    assert_eq!(odd[0]["labels"]["user"], every_char.as_str());

    let measured = find(
        "jellydemon_stream_measured_bits_per_second",
        Some("s-alice"),
    );
    let mut windows: Vec<(String, f64)> = measured
        .iter()
        .map(|s| {
            (
                s["labels"]["window"].as_str().unwrap().to_string(),
                s["value"].as_f64().unwrap(),
            )
        })
        .collect();
    windows.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        windows,
        vec![
            ("10m".to_string(), 4_340_000.0),
            ("1m".to_string(), 3_310_000.0),
            ("5m".to_string(), 4_110_000.0)
        ]
    );
    let restarts = find("jellydemon_stream_restarts_total", None);
    assert_eq!(restarts.len(), 4);
    assert_eq!(restarts[0]["type"], "counter");
    let local = find("jellydemon_stream_limit_bits_per_second", Some("s-local"));
    assert_eq!(local[0]["labels"]["external"], "false");
    let streams = find("jellydemon_streams", None);
    assert_eq!(streams.len(), 2);

    // Every family is declared once, and the empty status parses too.
    let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), types);
    let empty = parse_prometheus(&render_prometheus(&Status::default()));
    assert!(empty.iter().any(|s| s["name"] == "jellydemon_jellyfin_up"));
    assert!(!empty
        .iter()
        .any(|s| s["name"] == "jellydemon_wan_capacity_bits"));
}

/// An HTTP receiver recording request bodies; `gate` holds every answer until released.
struct Receiver_ {
    server: Arc<Server>,
    bodies: Receiver<Vec<u8>>,
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver_ {
    fn new(hold_answers: bool) -> Receiver_ {
        let server = Arc::new(Server::http("127.0.0.1:0").unwrap());
        let (tx, bodies) = channel();
        let (release, gate) = channel::<()>();
        let s = server.clone();
        let thread = std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                let _ = tx.send(body);
                if hold_answers {
                    // Blocks until the test releases (or drops) the gate.
                    let _ = gate.recv();
                }
                let _ = req.respond(Response::empty(StatusCode(204)));
            }
        });
        Receiver_ {
            server,
            bodies,
            release: Some(release),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        let port = self.server.server_addr().to_ip().unwrap().port();
        format!("http://127.0.0.1:{port}/hook")
    }

    fn next(&self) -> Value {
        let body = self
            .bodies
            .recv_timeout(Duration::from_secs(5))
            .expect("the webhook delivered nothing");
        serde_json::from_slice(&body).expect("JSON body")
    }
}

impl Drop for Receiver_ {
    fn drop(&mut self) {
        self.release.take();
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn webhook_delivers_json_and_the_bucket_drops_the_excess() {
    let rx = Receiver_::new(false);
    let mut hook = Webhook::new(&rx.url(), Duration::from_secs(5))
        .unwrap()
        .with_rate_limit(5, Duration::from_secs(3600))
        .with_secret(&Secret("0123456789abcdef".into()));
    let mut queued = 0;
    queued += u32::from(hook.notify(Event::StreamStarted {
        session_id: "a3f5".into(),
        user: "alice".into(),
        client: "Jellyfin Web".into(),
        remote_ip: "203.0.113.45".into(),
        external: true,
        play_method: "Transcode".into(),
        title: "episode: Example Series S08E03 The Long Night".into(),
    }));
    queued += u32::from(hook.notify(Event::LimitChanged {
        user: "alice".into(),
        old_bps: 8_000_000,
        new_bps: 3_500_000,
    }));
    queued += u32::from(hook.notify(Event::JellyfinUnreachable {
        error: "refused key 0123456789abcdef".into(),
    }));
    queued += u32::from(hook.notify(Event::ServerWoken {
        reason: "connect".into(),
    }));
    queued += u32::from(hook.notify(Event::JellyfinBack {
        version: Some("10.11.11".into()),
    }));
    for _ in 0..3 {
        queued += u32::from(hook.notify(Event::PlaybackRestarted {
            user: "alice".into(),
            session_id: "a3f5".into(),
            limit_bps: 3_500_000,
        }));
    }
    assert_eq!(queued, 5);
    let st = hook.stats();
    assert_eq!((st.queued, st.dropped_rate, st.dropped_full), (5, 3, 0));

    let started = rx.next();
    assert_eq!(started["event"], "stream_started");
    assert_eq!(started["user"], "alice");
    assert_eq!(started["remote_ip"], "203.0.113.45");
    assert_eq!(started["external"], true);
    assert_eq!(started["play_method"], "Transcode");
    let content = started["content"].as_str().unwrap();
    assert!(
        content.contains("alice") && content.contains("The Long Night"),
        "{content}"
    );
    assert!(started["time"].as_u64().unwrap() > 1_600_000_000);

    let limit = rx.next();
    assert_eq!(limit["event"], "limit_changed");
    assert_eq!(limit["old_bps"], 8_000_000);
    assert_eq!(limit["new_bps"], 3_500_000);
    assert_eq!(
        limit["content"],
        "jellydemon: alice's remote limit: 8.0 Mbit/s -> 3.5 Mbit/s"
    );

    let down = rx.next();
    assert_eq!(down["event"], "jellyfin_unreachable");
    assert!(!down.to_string().contains("0123456789abcdef"), "{down}");

    assert_eq!(rx.next()["reason"], "connect");
    assert_eq!(rx.next()["version"], "10.11.11");
    wait_until("5 deliveries counted", || hook.stats().sent == 5);
    assert_eq!(hook.stats().failed, 0);
}

#[test]
fn a_slow_receiver_never_blocks_notify() {
    let rx = Receiver_::new(true);
    let mut hook = Webhook::new(&rx.url(), Duration::from_secs(30))
        .unwrap()
        .with_rate_limit(1000, Duration::from_millis(1));
    let t = Instant::now();
    for i in 0..50 {
        hook.notify(Event::ServerWoken {
            reason: format!("test {i}"),
        });
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "notify blocked: {took:?}"
    );
    // The first event is stuck at the receiver; the queue holds a few; the rest are dropped.
    rx.next();
    let st = hook.stats();
    assert!(st.dropped_full >= 40, "{st:?}");
    assert_eq!(st.queued + st.dropped_full, 50);
    assert_eq!(st.sent, 0);
}

#[test]
fn an_unreachable_receiver_never_blocks_notify() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut hook = Webhook::new(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2))
        .unwrap()
        .with_rate_limit(3, Duration::from_secs(3600));
    let t = Instant::now();
    for _ in 0..10 {
        hook.notify(Event::JellyfinBack { version: None });
    }
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(hook.stats().dropped_rate, 7);
    wait_until("3 failures counted", || hook.stats().failed == 3);
    assert_eq!(hook.stats().sent, 0);
}

#[test]
fn webhook_urls_are_checked() {
    // https without a TLS client on the router: refused with what to install.
    let e = Webhook::with_tls_client(
        "https://discord.com/api/webhooks/1/SECRET",
        Duration::from_secs(1),
        None,
    )
    .err()
    .expect("https without a TLS client refused");
    let text = e.to_string();
    assert!(
        text.contains("uclient-fetch") && text.contains("curl"),
        "{text}"
    );
    assert!(!text.contains("SECRET"), "{text}");
    let curl = TlsClient {
        kind: Kind::Curl,
        program: "/usr/bin/curl".into(),
        ca_file: None,
    };
    assert!(Webhook::with_tls_client(
        "https://discord.com/api/webhooks/1/SECRET",
        Duration::from_secs(1),
        Some(curl.clone()),
    )
    .is_ok());
    for bad in [
        "ftp://x",
        "http://",
        "https://",
        "https://a b/SECRET",
        "https://u@h/SECRET",
    ] {
        let e = Webhook::with_tls_client(bad, Duration::from_secs(1), Some(curl.clone()))
            .err()
            .unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }
}

/// A real HTTPS receiver (Python's `ssl` + `http.server`) with a certificate from a CA made for
/// the test. It prints its port, then one JSON line per request, and answers each only when
/// the test writes a line to its stdin.
const TLS_RECEIVER: &str = r#"
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode()
        print(json.dumps({"path": self.path, "body": body,
                          "type": self.headers.get("Content-Type")}), flush=True)
        sys.stdin.readline()
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key).
fn make_ca(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=jellydemon test CA",
            ])
            .args(ec)
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")),
    );
    run_ok(
        Command::new("openssl")
            .args(["req", "-subj", "/CN=127.0.0.1"])
            .args(ec)
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")),
    );
    std::fs::write(p("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2"])
            .arg("-in")
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("server.pem")),
    );
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

struct TlsReceiver {
    child: std::process::Child,
    lines: Receiver<String>,
    port: u16,
}

impl TlsReceiver {
    fn start(cert: &std::path::Path, key: &std::path::Path) -> TlsReceiver {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(TLS_RECEIVER)
            .arg(cert)
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 for the HTTPS receiver (tests/deps.sh)");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let port = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the receiver's port")
            .trim()
            .parse()
            .expect("a port number");
        TlsReceiver { child, lines, port }
    }

    fn next(&self) -> Value {
        let l = self
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the receiver got no request");
        serde_json::from_str(&l).unwrap()
    }

    fn answer(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for TlsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Command lines of this process's children (read from /proc while they run).
fn children_cmdlines() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = e.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // ppid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .nth(1);
        if ppid == Some(me.as_str()) {
            if let Ok(c) = std::fs::read(dir.join("cmdline")) {
                out.push(String::from_utf8_lossy(&c).replace('\0', " "));
            }
        }
    }
    out
}

/// The HTTPS path end to end: the daemon's webhook, curl (the client where it exists; the
/// uclient-fetch command line is a unit test in src/tlsclient.rs, since uclient-fetch is
/// OpenWrt's and not on Debian), a TLS receiver trusting only its own CA. The secret path never
/// shows on a command line, and an untrusted certificate is a failure.
#[test]
fn https_webhook_reaches_a_tls_receiver_through_curl() {
    let Some(client) = TlsClient::find().filter(|c| c.kind == Kind::Curl) else {
        panic!("curl is needed for this test (tests/deps.sh installs it)");
    };
    let dir = TempDir::new("tls");
    std::fs::create_dir_all(&dir.0).unwrap();
    let (ca, cert, key) = make_ca(&dir.0);
    let mut rx = TlsReceiver::start(&cert, &key);
    let url = format!(
        "https://127.0.0.1:{}/api/webhooks/42/SECRET-token?wait=true",
        rx.port
    );
    let trusted = TlsClient {
        ca_file: Some(ca),
        ..client.clone()
    };
    let mut hook = Webhook::with_tls_client(&url, Duration::from_secs(5), Some(trusted))
        .unwrap()
        .with_rate_limit(5, Duration::from_secs(3600));
    assert!(hook.notify(Event::LimitChanged {
        user: "alice".into(),
        old_bps: 8_000_000,
        new_bps: 3_500_000,
    }));
    let got = rx.next();
    // While the receiver holds its answer, curl runs: its command line has no secret.
    let running = children_cmdlines();
    assert!(
        running.iter().any(|c| c.contains("curl -q --config -")),
        "no curl child seen: {running:?}"
    );
    assert!(!running.iter().any(|c| c.contains("SECRET")), "{running:?}");
    rx.answer();
    assert_eq!(got["path"], "/api/webhooks/42/SECRET-token?wait=true");
    assert_eq!(got["type"], "application/json");
    let body: Value = serde_json::from_str(got["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["event"], "limit_changed");
    assert_eq!(
        body["content"],
        "jellydemon: alice's remote limit: 8.0 Mbit/s -> 3.5 Mbit/s"
    );
    wait_until("the delivery counted", || hook.stats().sent == 1);
    assert_eq!(hook.stats().failed, 0);

    // The system's CAs do not know the test CA: nothing is delivered.
    let mut untrusted = Webhook::with_tls_client(&url, Duration::from_secs(5), Some(client))
        .unwrap()
        .with_rate_limit(5, Duration::from_secs(3600));
    assert!(untrusted.notify(Event::JellyfinBack { version: None }));
    wait_until("the failure counted", || untrusted.stats().failed == 1);
    assert_eq!(untrusted.stats().sent, 0);
    assert!(
        rx.lines.try_recv().is_err(),
        "an untrusted receiver got the event"
    );
}
