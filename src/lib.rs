//! jellydemon: shares a router's uplink between remote Jellyfin viewers and the household.
//!
//! The daemon loop is `observe → decide → act` (DESIGN.md §3): adapters observe the kernel and
//! the server, a pure core decides, adapters act. Modules are named for those concepts.

pub mod backup;
pub mod check;
pub mod child;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod decide;
pub mod http;
pub mod jellyfin;
pub mod monitor;
pub mod observe;
pub mod publish;
pub mod shaper;
pub mod status;
pub mod text;
pub mod uci;
pub mod wake;
pub mod wol;

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// One entry point per parser of outside input, for the fuzz targets in `fuzz/` and the
/// replay in `tests/fuzz_replay.rs`. Not an API: each runs the parser on arbitrary bytes and
/// everything it leads to, and must never panic.
#[doc(hidden)]
pub mod fuzzing {
    /// `/etc/config/jellydemon` (and sqm's file): the UCI grammar, `uci show`, validation.
    pub fn uci(data: &[u8]) {
        if let Ok(pkg) = crate::uci::parse(data) {
            let _ = pkg.show_bytes("jellydemon");
            if let Ok(l) = crate::config::from_package(&pkg, std::path::Path::new("/fuzz")) {
                let _ = crate::config::effective(&l);
            }
        }
        let _ = crate::observe::sqm_upload_bps(data, "eth0");
    }

    /// Every Jellyfin answer the daemon decodes, and what it derives from them.
    pub fn jellyfin(data: &[u8]) {
        use crate::jellyfin as jf;
        if let Ok(sessions) = jf::decode_sessions(data) {
            for s in &sessions {
                let _ = (s.title(), s.estimated_bitrate(), s.can_message());
                if let Some(r) = s.resume_request() {
                    let _ = r.query();
                }
            }
        }
        if let Ok(users) = jf::decode_users(data) {
            for u in &users {
                let _ = u.policy_with_limit(u.remote_limit);
            }
        }
        let _ = jf::decode_user(data);
        let _ = jf::decode_item_bitrate(data, Some("a"));
        let _ = jf::ServerInfo::from_slice(data);
        let _ = crate::observe::parse_ubus_status(data);
    }

    /// What `tc` prints back (`qdisc show`, `-s class show`, `filter show`).
    pub fn tc(data: &[u8]) {
        use crate::shaper::parse;
        let text = String::from_utf8_lossy(data);
        let _ = parse::qdiscs(&text);
        let _ = parse::classes(&text);
        let _ = parse::filters(&text);
        for word in text.split_ascii_whitespace().take(64) {
            let _ = parse::parse_rate(word);
            let _ = parse::parse_classid(word);
        }
    }

    /// Kernel netlink replies: rtnetlink acknowledgements and ctnetlink conntrack messages.
    pub fn netlink(data: &[u8]) {
        let _ = crate::shaper::netlink::find_ack(data, 1);
        crate::conntrack::for_each_msg(data, |_, _, _, payload| {
            let _ = crate::conntrack::parse_ct_msg(payload);
        });
        let _ = crate::conntrack::parse_ct_msg(data);
    }

    /// `/proc/net/nf_conntrack` text, line by line and as a stream.
    pub fn conntrack(data: &[u8]) {
        for line in String::from_utf8_lossy(data).lines() {
            let _ = crate::conntrack::parse_line(line);
        }
        let mut buf = Vec::new();
        let _ = crate::conntrack::parse_stream(data, &mut buf, |_| {});
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(3);

/// Writes a printing verb's output. Rust ignores SIGPIPE, so a reader that went away
/// (`jellydemon status --json | head -c1`) shows up as EPIPE: that ends the verb cleanly with
/// exit 0, as SIGPIPE would for a C tool, instead of a panic (an abort in the shipped builds).
pub fn print_out(text: impl AsRef<[u8]>) {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_ref()).and_then(|()| out.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("jellydemon: cannot write to standard output: {e}");
            std::process::exit(1)
        }
    }
}

/// Starts a named thread. `std::thread::spawn` panics when the system cannot start one (EAGAIN
/// under a low process limit or memory pressure) — an abort in the shipped builds, which would
/// leave every changed limit in place. This returns the error, for the caller to log and
/// survive.
pub fn spawn_thread<F, T>(name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[cfg(test)]
    if test_faults::take_spawn_failure() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "cannot start a thread (injected)",
        ));
    }
    std::thread::Builder::new().name(name.into()).spawn(f)
}

/// Faults the unit tests inject at the seams the OS owns.
#[cfg(test)]
pub(crate) mod test_faults {
    use std::cell::Cell;

    thread_local! {
        static SPAWN_FAILURES: Cell<u32> = const { Cell::new(0) };
    }

    /// The next `n` [`super::spawn_thread`] calls on this thread fail.
    pub fn fail_spawns(n: u32) {
        SPAWN_FAILURES.with(|c| c.set(n));
    }

    pub fn take_spawn_failure() -> bool {
        SPAWN_FAILURES.with(|c| {
            let n = c.get();
            c.set(n.saturating_sub(1));
            n > 0
        })
    }
}

/// Progress lines of a verb that must finish its work whatever happens to its reader
/// (`restore`): a closed or full output is ignored.
pub fn say(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// RFC 3164 over the local syslog socket, as OpenWrt's logd and every syslogd read it:
/// `<PRI>ident[pid]: message`, facility daemon. A few lines instead of a crate that brings a
/// date library along: logd stamps the time itself.
struct Syslog {
    sock: std::os::unix::net::UnixDatagram,
    pid: u32,
}

impl Syslog {
    fn connect(path: &str) -> Option<Syslog> {
        let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
        sock.connect(path).ok()?;
        Some(Syslog {
            sock,
            pid: std::process::id(),
        })
    }

    fn send(&self, level: log::Level, msg: &str) {
        // facility daemon (3) * 8 + severity
        let severity = match level {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            _ => 7,
        };
        let line = format!("<{}>jellydemon[{}]: {msg}", 3 * 8 + severity, self.pid);
        let _ = self.sock.send(line.as_bytes());
    }
}

struct Logger {
    syslog: Option<Mutex<Syslog>>,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        (m.level() as u8) <= LEVEL.load(Ordering::Relaxed) && m.target().starts_with("jellydemon")
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let msg = r.args().to_string();
        if let Some(s) = &self.syslog {
            if let Ok(s) = s.lock() {
                s.send(r.level(), &msg);
                return;
            }
        }
        let _ = writeln!(
            std::io::stderr(),
            "jellydemon: {}{msg}",
            match r.level() {
                log::Level::Error => "error: ",
                log::Level::Warn => "warning: ",
                _ => "",
            }
        );
    }

    fn flush(&self) {}
}

/// Routes `log` to syslog (facility daemon, ident jellydemon) or to stderr. Falls back to
/// stderr when no syslog socket exists (procd then forwards stderr to logread anyway).
pub fn init_logging(to_stderr: bool, level: config::LogLevel) {
    let syslog = if to_stderr {
        None
    } else {
        Syslog::connect("/dev/log").map(Mutex::new)
    };
    set_log_level(level);
    let _ = log::set_boxed_logger(Box::new(Logger { syslog }));
    log::set_max_level(log::LevelFilter::Trace);
}

/// Changes the level at run time (SIGHUP reload).
pub fn set_log_level(level: config::LogLevel) {
    let l = match level {
        config::LogLevel::Error => log::Level::Error,
        config::LogLevel::Warn => log::Level::Warn,
        config::LogLevel::Info => log::Level::Info,
        config::LogLevel::Debug => log::Level::Debug,
    };
    LEVEL.store(l as u8, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syslog_lines_are_rfc3164_with_facility_daemon() {
        let path = std::env::temp_dir().join(format!("jd-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let s = Syslog::connect(path.to_str().unwrap()).unwrap();
        s.send(log::Level::Warn, "hello");
        s.send(log::Level::Info, "there");
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        let pid = std::process::id();
        assert_eq!(
            &buf[..n],
            format!("<28>jellydemon[{pid}]: hello").as_bytes()
        );
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            format!("<30>jellydemon[{pid}]: there").as_bytes()
        );
        std::fs::remove_file(&path).unwrap();
        assert!(Syslog::connect("/nonexistent/log").is_none());
    }
}
