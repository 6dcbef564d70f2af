//! Peak heap while decoding hostile Jellyfin answers (DESIGN.md §10: memory for any answer
//! stays within 3x its body limit). A counting global allocator measures every byte this test
//! binary allocates; the body itself is one of the three, so decoding may add at most two.
//!
//! The same holds for the whole daemon: `run --once` against a server whose `/Sessions` is such
//! an answer, its peak RSS (the kernel's `ru_maxrss` of the waited-for child) compared with the
//! same run against an ordinary answer.
//!
//! One test function on purpose: the counter and the children's peak RSS are process-wide, and
//! the harness runs tests of a binary in parallel threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use jellydemon::jellyfin::{self, BODY_LIMIT, SESSIONS_BODY_LIMIT};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = NOW.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        NOW.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                let now = NOW.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                NOW.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Bytes allocated by `f` at its peak, above what was live when it started.
fn peak_of<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (PEAK.load(Ordering::Relaxed) - base, r)
}

/// `head`, then `item` and `sep` repeated while the whole stays within `limit`, then `tail`.
fn fill(head: &str, item: &str, sep: &str, tail: &str, limit: u64) -> Vec<u8> {
    let mut b = head.as_bytes().to_vec();
    let room = limit as usize - tail.len();
    let mut first = true;
    while b.len() + item.len() + sep.len() <= room {
        if !first {
            b.extend_from_slice(sep.as_bytes());
        }
        b.extend_from_slice(item.as_bytes());
        first = false;
    }
    b.extend_from_slice(tail.as_bytes());
    b
}

fn numbered(head: &str, make: impl Fn(usize) -> String, tail: &str, limit: u64) -> Vec<u8> {
    let mut b = head.as_bytes().to_vec();
    let mut i = 0;
    loop {
        let item = make(i);
        if b.len() + item.len() + 1 + tail.len() > limit as usize {
            break;
        }
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(item.as_bytes());
        i += 1;
    }
    b.extend_from_slice(tail.as_bytes());
    b
}

#[test]
fn hostile_answers_decode_within_the_memory_budget() {
    let s = SESSIONS_BODY_LIMIT;
    let u = BODY_LIMIT;
    let deep = |limit: u64| {
        let n = limit as usize / 2;
        let mut b = vec![b'['; n];
        b.extend(std::iter::repeat_n(b']', n));
        b
    };
    let sessions: Vec<(&str, Vec<u8>)> = vec![
        (
            "MediaStreams of zeros",
            fill(
                r#"[{"NowPlayingItem":{"MediaStreams":["#,
                "0",
                ",",
                "]}}]",
                s,
            ),
        ),
        (
            "MediaStreams of empty objects",
            fill(
                r#"[{"NowPlayingItem":{"MediaStreams":["#,
                "{}",
                ",",
                "]}}]",
                s,
            ),
        ),
        (
            "many sessions with many audio streams",
            fill(
                "[",
                &format!(
                    r#"{{"Id":"s","NowPlayingItem":{{"MediaStreams":[{}]}}}}"#,
                    vec![r#"{"Type":"Audio"}"#; 80].join(",")
                ),
                ",",
                "]",
                s,
            ),
        ),
        ("empty sessions", fill("[", "{}", ",", "]", s)),
        ("nothing but zeros", fill("[", "0", ",", "]", s)),
        (
            "SupportedCommands of empty strings",
            fill(r#"[{"SupportedCommands":["#, r#""""#, ",", "]}]", s),
        ),
        (
            "one huge name",
            fill(r#"[{"UserName":""#, "a", "", r#""}]"#, s),
        ),
        (
            "one huge escaped name",
            fill(r#"[{"UserName":""#, r"\u0001", "", r#""}]"#, s),
        ),
        (
            "many distinct unknown keys",
            numbered("[{", |i| format!(r#""k{i}":0"#), "}]", s),
        ),
        (
            "an unknown key holding a tree",
            fill(r#"[{"Unknown":["#, "[0]", ",", "]}]", s),
        ),
        ("deep nesting", deep(s)),
    ];
    for (what, body) in &sessions {
        assert!(body.len() as u64 <= s, "{what}");
        let (peak, r) = peak_of(|| jellyfin::decode_sessions(body).map(|v| v.len()));
        eprintln!(
            "/Sessions {what}: {} bytes, decoding peak {peak} bytes, {r:?}",
            body.len()
        );
        assert!(
            peak <= 2 * s as usize,
            "/Sessions {what}: peak {peak} bytes"
        );
    }

    let users: Vec<(&str, Vec<u8>)> = vec![
        (
            "a policy of zeros",
            fill(r#"[{"Id":"u","Policy":{"A":["#, "0", ",", "]}}]", u),
        ),
        (
            "many users with policies",
            fill(
                "[",
                r#"{"Id":"u","Name":"n","Policy":{"A":0,"B":[1,2],"C":"x"}}"#,
                ",",
                "]",
                u,
            ),
        ),
        (
            "many small users",
            numbered("[", |i| format!(r#"{{"Id":"{i}"}}"#), "]", u),
        ),
        (
            "a policy of many keys",
            numbered(r#"[{"Policy":{"#, |i| format!(r#""{i}":0"#), "}}]", u),
        ),
        ("deep policy", {
            let mut b = br#"[{"Policy":{"A":"#.to_vec();
            b.extend(deep(u - 40));
            b.extend_from_slice(b"}}]");
            b
        }),
    ];
    for (what, body) in &users {
        assert!(body.len() as u64 <= u, "{what}");
        let (peak, r) = peak_of(|| jellyfin::decode_users(body).map(|v| v.len()));
        eprintln!(
            "/Users {what}: {} bytes, decoding peak {peak} bytes, {r:?}",
            body.len()
        );
        assert!(peak <= 2 * u as usize, "/Users {what}: peak {peak} bytes");
        let single = &body[1..body.len() - 1];
        let (peak, _) = peak_of(|| jellyfin::decode_user(single).map(|u| u.policy.len()));
        assert!(
            peak <= 2 * u as usize,
            "/Users/id {what}: peak {peak} bytes"
        );
    }

    let item = fill(r#"{"MediaSources":["#, r#"{"Bitrate":1}"#, ",", "]}", u);
    let (peak, r) = peak_of(|| jellyfin::decode_item_bitrate(&item, Some("x")));
    eprintln!("item sources: decoding peak {peak} bytes, {r:?}");
    assert!(peak <= 2 * u as usize, "item: peak {peak} bytes");
    let info = numbered("{", |i| format!(r#""k{i}":[0]"#), "}", u);
    let (peak, _) = peak_of(|| jellyfin::ServerInfo::from_slice(&info));
    assert!(peak <= 2 * u as usize, "system info: peak {peak} bytes");

    daemon_peak_rss_stays_within_the_budget(&sessions[0].1);

    // The measurement can fail: the generic tree the first decoder built for the same answer.
    let (peak, _) = peak_of(|| serde_json::from_slice::<serde_json::Value>(&sessions[0].1));
    eprintln!("control, a generic tree of the zeros: peak {peak} bytes");
    assert!(
        peak > 3 * s as usize,
        "the control should exceed the budget"
    );
}

/// A Jellyfin stand-in for one tick (a real HTTP server, tiny_http): system info, the given
/// `/Sessions`, no users; 404 for anything else.
fn serve(
    sessions: Vec<u8>,
) -> (
    String,
    std::thread::JoinHandle<()>,
    std::sync::Arc<tiny_http::Server>,
) {
    let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let url = format!("http://{}", server.server_addr().to_ip().unwrap());
    let s = server.clone();
    let t = std::thread::spawn(move || {
        for req in s.incoming_requests() {
            let path = req.url().split('?').next().unwrap_or("").to_string();
            let body: Vec<u8> = match path.as_str() {
                "/System/Info" | "/System/Info/Public" => {
                    br#"{"Version":"10.11.0","ServerName":"nas","Id":"0123456789abcdef0123456789abcdef"}"#.to_vec()
                }
                "/Sessions" => sessions.clone(),
                "/Users" => b"[]".to_vec(),
                _ => {
                    let _ = req.respond(tiny_http::Response::empty(404));
                    continue;
                }
            };
            let _ = req.respond(tiny_http::Response::from_data(body));
        }
    });
    (url, t, server)
}

/// The daemon's peak RSS (`VmHWM`, bytes) once its first tick has published a status, read
/// from /proc while it runs: `getrusage(RUSAGE_CHILDREN)` would not do, since a child started
/// with vfork records the parent's peak as its own when it execs.
fn daemon_peak(url: &str, dir: &std::path::Path) -> u64 {
    let cfg = dir.join("jellydemon");
    let _ = std::fs::remove_dir_all(dir.join("run"));
    std::fs::write(
        &cfg,
        format!(
            "config jellydemon 'main'\n\toption enabled '1'\n\toption state_dir '{d}/state'\n\toption run_dir '{d}/run'\n\
             config jellyfin 'jellyfin'\n\toption url '{url}'\n\toption api_key '0123456789abcdef0123456789abcdef'\n\toption timeout '20'\n\
             config network 'network'\n\toption wan_device 'lo'\n\toption lan_device 'lo'\n\
             config bandwidth 'bandwidth'\n\toption upload_mbps '20'\n\
             config shaping 'shaping'\n\toption enabled '0'\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jellydemon"))
        .arg("--config")
        .arg(&cfg)
        .args(["run", "--dry-run", "--stderr"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = dir.join("run/status.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut hwm = None;
    while std::time::Instant::now() < deadline {
        let st: Option<serde_json::Value> = std::fs::read(&status)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if st.is_some_and(|st| st["jellyfin"]["server_version"].is_string()) {
            let text = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
            hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    hwm.expect("the daemon published a status after its first tick") * 1024
}

fn daemon_peak_rss_stays_within_the_budget(hostile: &[u8]) {
    let dir = std::env::temp_dir().join(format!("jd-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (url, _t, server) = serve(b"[]".to_vec());
    let ordinary = daemon_peak(&url, &dir);
    server.unblock();
    let (url, _t, server) = serve(hostile.to_vec());
    let peak = daemon_peak(&url, &dir);
    server.unblock();
    let _ = std::fs::remove_dir_all(&dir);
    let extra = peak.saturating_sub(ordinary);
    eprintln!(
        "daemon after its first tick: VmHWM {ordinary} bytes with an empty /Sessions, {peak} \
         bytes with the 8 MiB answer of zeros: {extra} bytes more"
    );
    assert!(
        extra <= 3 * SESSIONS_BODY_LIMIT,
        "the 8 MiB answer cost the daemon {extra} bytes of RSS"
    );
}
