//! jellydemon: shares a router's uplink between remote Jellyfin viewers and the household.
//!
//! The daemon loop is `observe → decide → act` (docs/design.md §3): adapters observe the kernel and
//! the server, a pure core decides, adapters act. Modules are named for those concepts.

pub mod backup;
pub mod capacity;
pub mod check;
pub mod child;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod decide;
pub mod decimal;
pub mod firewall;
pub mod http;
pub mod jellyfin;
pub mod limits;
pub mod monitor;
pub mod neigh;
pub mod netifd;
pub mod observe;
pub mod publish;
pub mod shaper;
pub mod status;
pub mod text;
pub mod tlsclient;
pub mod uci;
pub mod wake;
pub mod wol;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use syslog::{Facility, LogFormat, LoggerBackend, Severity};

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
        let _ = crate::netifd::parse_status(data);
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

    /// Kernel netlink replies: rtnetlink acknowledgements, traffic-control dumps (qdiscs,
    /// classes, filters) and ctnetlink conntrack messages.
    pub fn netlink(data: &[u8]) {
        use crate::shaper::netlink as tc;
        let _ = tc::find_ack(data, 1);
        let name = |i: u32| format!("if{i}");
        crate::conntrack::for_each_msg(data, |_, _, _, payload| {
            let _ = crate::conntrack::parse_ct_msg(payload);
            let _ = tc::decode_qdisc(payload, 1);
            let _ = tc::decode_class(payload);
            let _ = tc::decode_filter(payload, &name);
        });
        let _ = crate::conntrack::parse_ct_msg(data);
        let _ = crate::neigh::parse_dump(data, &mut Vec::new());
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
    write_out(text.as_ref())
}

// One copy of the writing code, not one per type `print_out` is called with.
fn write_out(text: &[u8]) {
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
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

/// `<PRI>jellydemon[pid]: message`, facility daemon: RFC 3164 without the timestamp, which
/// OpenWrt's logd and busybox syslogd add themselves (the crate's `Formatter3164` would format
/// a UTC time they drop, with a date library's code).
#[derive(Clone, Copy)]
struct Rfc3164 {
    pid: u32,
}

impl<T: std::fmt::Display> LogFormat<T> for Rfc3164 {
    fn format<W: Write>(&self, w: &mut W, severity: Severity, message: T) -> syslog::Result<()> {
        let pri = Facility::LOG_DAEMON as u8 | severity as u8;
        write!(w, "<{pri}>jellydemon[{}]: {message}", self.pid).map_err(syslog::Error::Write)
    }
}

/// The local syslog socket through the syslog crate, reconnected when the log daemon went away
/// (logd restarts with a new socket: the old connection then refuses every line).
struct Syslog {
    path: PathBuf,
    format: Rfc3164,
    conn: Option<syslog::Logger<LoggerBackend, Rfc3164>>,
}

impl Syslog {
    fn connect(path: &Path) -> Option<Syslog> {
        let mut s = Syslog {
            path: path.to_path_buf(),
            format: Rfc3164 {
                pid: std::process::id(),
            },
            conn: None,
        };
        s.reconnect();
        s.conn.is_some().then_some(s)
    }

    fn reconnect(&mut self) {
        self.conn = syslog::unix_custom(self.format, &self.path).ok();
        if let Some(c) = &self.conn {
            // A log daemon that stops reading must not stop the daemon: drop the line instead.
            if let LoggerBackend::Unix(sock) = &c.backend {
                let _ = sock.set_nonblocking(true);
            }
        }
    }

    /// Sends one line; false when it could not be delivered (the caller writes it to stderr).
    fn send(&mut self, level: log::Level, msg: &str) -> bool {
        for _ in 0..2 {
            if self.conn.is_none() {
                self.reconnect();
            }
            let Some(c) = self.conn.as_mut() else {
                return false;
            };
            let sent = match level {
                log::Level::Error => c.err(msg),
                log::Level::Warn => c.warning(msg),
                log::Level::Info => c.info(msg),
                _ => c.debug(msg),
            };
            match sent {
                Ok(()) => return true,
                // Full queue: the daemon is alive but busy; reconnecting would not help.
                Err(syslog::Error::Write(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return false
                }
                Err(_) => self.conn = None,
            }
        }
        false
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
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            if s.send(r.level(), &msg) {
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
/// stderr for every line syslog does not take (procd forwards stderr to logread anyway).
pub fn init_logging(to_stderr: bool, level: config::LogLevel) {
    let syslog = if to_stderr {
        None
    } else {
        Syslog::connect(Path::new("/dev/log")).map(Mutex::new)
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
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    fn recv(rx: &UnixDatagram) -> String {
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        let n = rx.recv(&mut buf).expect("a line at the log socket");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn syslog_lines_are_rfc3164_with_facility_daemon() {
        let path = std::env::temp_dir().join(format!("jd-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let mut s = Syslog::connect(&path).unwrap();
        assert!(s.send(log::Level::Warn, "hello"));
        assert!(s.send(log::Level::Info, "there"));
        assert!(s.send(log::Level::Error, "bad"));
        assert!(s.send(log::Level::Debug, "detail"));
        let pid = std::process::id();
        assert_eq!(recv(&rx), format!("<28>jellydemon[{pid}]: hello"));
        assert_eq!(recv(&rx), format!("<30>jellydemon[{pid}]: there"));
        assert_eq!(recv(&rx), format!("<27>jellydemon[{pid}]: bad"));
        assert_eq!(recv(&rx), format!("<31>jellydemon[{pid}]: detail"));
        std::fs::remove_file(&path).unwrap();
        assert!(Syslog::connect(Path::new("/nonexistent/log")).is_none());
    }

    /// The log daemon restarts the way OpenWrt's logd does (ubox log/syslog.c: a new datagram
    /// socket bound at the path after the old one is gone): the next line reaches the new one.
    #[test]
    fn syslog_reconnects_after_the_log_daemon_restarts() {
        let path = std::env::temp_dir().join(format!("jd-log-restart-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let mut s = Syslog::connect(&path).unwrap();
        assert!(s.send(log::Level::Info, "before"));
        assert!(recv(&rx).ends_with("before"));

        drop(rx);
        std::fs::remove_file(&path).unwrap();
        // While nobody listens the line is not taken (the caller writes it to stderr).
        assert!(!s.send(log::Level::Info, "while down"));
        let rx = UnixDatagram::bind(&path).unwrap();
        assert!(s.send(log::Level::Warn, "after"));
        let pid = std::process::id();
        assert_eq!(recv(&rx), format!("<28>jellydemon[{pid}]: after"));

        // Restarted between two lines: the first line after it is not lost either.
        drop(rx);
        std::fs::remove_file(&path).unwrap();
        let rx = UnixDatagram::bind(&path).unwrap();
        assert!(s.send(log::Level::Error, "next"));
        assert_eq!(recv(&rx), format!("<27>jellydemon[{pid}]: next"));
        std::fs::remove_file(&path).unwrap();
    }
}
