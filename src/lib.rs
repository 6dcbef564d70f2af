//! jellydemon: shares a router's uplink between remote Jellyfin viewers and the household.
//!
//! The daemon loop is `observe → decide → act` (DESIGN.md §3): adapters observe the kernel and
//! the server, a pure core decides, adapters act. Modules are named for those concepts.

pub mod backup;
pub mod capacity;
pub mod check;
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
pub mod uci;
pub mod wol;

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

static LEVEL: AtomicU8 = AtomicU8::new(3);

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
