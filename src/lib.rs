//! jellydemon: shares a router's uplink between remote Jellyfin viewers and the household.
//!
//! The daemon loop is `observe → decide → act` (DESIGN.md §3): adapters observe the kernel and
//! the server, a pure core decides, adapters act. Modules are named for those concepts.

pub mod backup;
pub mod check;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod decide;
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

struct Logger {
    syslog: Option<Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>>,
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
            if let Ok(mut s) = s.lock() {
                let _ = match r.level() {
                    log::Level::Error => s.err(&msg),
                    log::Level::Warn => s.warning(&msg),
                    log::Level::Info => s.info(&msg),
                    _ => s.debug(&msg),
                };
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
        syslog::unix(syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "jellydemon".into(),
            pid: std::process::id(),
        })
        .ok()
        .map(Mutex::new)
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
