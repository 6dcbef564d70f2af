//! Peak heap while decoding hostile Jellyfin answers (DESIGN.md §10: memory for any answer
//! stays within 3x its body limit). A counting global allocator measures every byte this test
//! binary allocates; the body itself is one of the three, so decoding may add at most two.
//!
//! One test function on purpose: the counter is process-wide, and the harness runs tests of a
//! binary in parallel threads.

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

    // The measurement can fail: the generic tree the first decoder built for the same answer.
    let (peak, _) = peak_of(|| serde_json::from_slice::<serde_json::Value>(&sessions[0].1));
    eprintln!("control, a generic tree of the zeros: peak {peak} bytes");
    assert!(
        peak > 3 * s as usize,
        "the control should exceed the budget"
    );
}
