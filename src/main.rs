//! `jellydemon [--config PATH] <verb>` (DESIGN.md §5).

use argh::FromArgs;
use jellydemon::config::{self, Config};
use jellydemon::daemon::{self, Options, Signals};
use jellydemon::{check, publish, status, wol};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const DEFAULT_CONFIG: &str = "/etc/config/jellydemon";

#[derive(FromArgs)]
/// Shares a small uplink between remote Jellyfin viewers and the household: measures the WAN
/// upload, divides the spare among remote streams, and enforces it in Jellyfin and with tc.
struct Cli {
    /// the UCI configuration file (default /etc/config/jellydemon)
    #[argh(option, default = "PathBuf::from(DEFAULT_CONFIG)")]
    config: PathBuf,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    verb: Option<Verb>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Verb {
    Run(Run),
    Check(Check),
    Status(StatusCmd),
    Restore(Restore),
    Wake(Wake),
    Config(ConfigCmd),
}

#[derive(FromArgs)]
/// Run the daemon in the foreground (procd starts it this way). SIGTERM/SIGINT restore every
/// original limit and remove all shaping; SIGHUP reloads the configuration.
#[argh(subcommand, name = "run")]
struct Run {
    /// decide and log what would change, change nothing (originals left in the backup are put back)
    #[argh(switch)]
    dry_run: bool,
    /// run one tick and exit, leaving what it applied in place (`restore` undoes it)
    #[argh(switch)]
    once: bool,
    /// log to stderr instead of syslog (the default on a terminal)
    #[argh(switch)]
    stderr: bool,
}

#[derive(FromArgs)]
/// Check every prerequisite, one line each, with a hint for what fails. Exit 1 if any fails.
#[argh(subcommand, name = "check")]
struct Check {}

#[derive(FromArgs)]
/// Show what the running daemon sees: the WAN, the budget and every stream.
#[argh(subcommand, name = "status")]
struct StatusCmd {
    /// print the raw status.json
    #[argh(switch)]
    json: bool,
    /// refresh every N seconds until interrupted
    #[argh(option)]
    watch: Option<u64>,
}

#[derive(FromArgs)]
/// Put every backed-up user limit back and remove all own shaping state.
#[argh(subcommand, name = "restore")]
struct Restore {}

#[derive(FromArgs)]
/// Send the Wake-on-LAN magic packet now.
#[argh(subcommand, name = "wake")]
struct Wake {}

#[derive(FromArgs)]
/// Print the configuration as parsed, exactly as `uci show jellydemon` would.
#[argh(subcommand, name = "config")]
struct ConfigCmd {
    /// print every setting the daemon uses, defaults included, with its source
    #[argh(switch)]
    effective: bool,
}

fn load(path: &Path) -> Result<config::Loaded, String> {
    config::load(path).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // Handlers first: SIGHUP's default action would kill us before the loop is ready.
    let signals = Signals::install();
    let cli: Cli = argh::from_env();
    if cli.version {
        println!("jellydemon {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(verb) = cli.verb else {
        eprintln!(
            "jellydemon: a verb is needed (run, check, status, restore, wake, config); see --help"
        );
        return ExitCode::from(2);
    };
    let code = match verb {
        Verb::Run(r) => run(&cli.config, r, signals),
        Verb::Check(_) => {
            jellydemon::init_logging(true, config::LogLevel::Warn);
            check::run(&cli.config)
        }
        Verb::Status(s) => status_cmd(&cli.config, s),
        Verb::Restore(_) => restore(&cli.config),
        Verb::Wake(_) => wake(&cli.config),
        Verb::Config(c) => config_cmd(&cli.config, c),
    };
    ExitCode::from(code)
}

fn run(path: &Path, r: Run, signals: std::io::Result<Signals>) -> u8 {
    let to_stderr = r.stderr || nix::unistd::isatty(std::io::stderr()).unwrap_or(false);
    let loaded = match load(path) {
        Ok(l) => l,
        Err(e) => {
            jellydemon::init_logging(to_stderr, config::LogLevel::Info);
            log::error!("{e}");
            eprintln!("jellydemon: {e}");
            return 1;
        }
    };
    jellydemon::init_logging(to_stderr, loaded.config.main.log_level);
    for w in &loaded.warnings {
        log::warn!("{w}");
    }
    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return 1;
        }
    };
    log::info!(
        "jellydemon {} starting{}",
        env!("CARGO_PKG_VERSION"),
        if r.dry_run || loaded.config.main.dry_run {
            " (dry run: nothing will be changed)"
        } else {
            ""
        }
    );
    let opts = Options {
        dry_run: r.dry_run,
        once: r.once,
    };
    daemon::run(path.to_path_buf(), loaded.config, opts, signals) as u8
}

fn status_path(cfg: &Config) -> PathBuf {
    cfg.main.run_dir.join("status.json")
}

fn status_cmd(path: &Path, s: StatusCmd) -> u8 {
    let cfg = match load(path) {
        Ok(l) => l.config,
        Err(e) => {
            eprintln!("jellydemon: {e}");
            return 1;
        }
    };
    loop {
        let code = print_status(&cfg, s.json);
        match s.watch {
            Some(n) if n > 0 => {
                std::thread::sleep(Duration::from_secs(n));
                print!("\x1b[2J\x1b[H");
            }
            _ => return code,
        }
    }
}

fn print_status(cfg: &Config, json: bool) -> u8 {
    let p = status_path(cfg);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(_) => {
            eprintln!(
                "jellydemon is not running (no {}); start it with /etc/init.d/jellydemon start",
                p.display()
            );
            return 1;
        }
    };
    let st: status::Status = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("jellydemon: {} is unreadable: {e}", p.display());
            return 1;
        }
    };
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(st.updated);
    if json {
        println!("{}", String::from_utf8_lossy(&bytes));
    } else {
        print!("{}", publish::render_table(&st));
    }
    if age > 3 * st.interval.max(1) as u64 + 5 {
        eprintln!("jellydemon is not running: the status is {age} s old");
        return 1;
    }
    0
}

fn restore(path: &Path) -> u8 {
    jellydemon::init_logging(true, config::LogLevel::Info);
    let cfg = match load(path) {
        Ok(l) => l.config,
        Err(e) => {
            eprintln!("jellydemon: {e}");
            return 1;
        }
    };
    match daemon::restore_all(&cfg) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("jellydemon: {e}");
            1
        }
    }
}

fn wake(path: &Path) -> u8 {
    let cfg = match load(path) {
        Ok(l) => l.config,
        Err(e) => {
            eprintln!("jellydemon: {e}");
            return 1;
        }
    };
    let Some(mac) = cfg.wol.mac else {
        eprintln!("jellydemon: wol.mac is not set (the media server's MAC address)");
        return 1;
    };
    let sender = wol::Sender::from_config(&cfg.wol);
    match sender.send(mac, cfg.wol.password.as_deref()) {
        Ok(_) => {
            println!("magic packet sent on {}", cfg.wol.interface);
            0
        }
        Err(e) => {
            eprintln!("jellydemon: Wake-on-LAN failed: {e}");
            1
        }
    }
}

fn config_cmd(path: &Path, c: ConfigCmd) -> u8 {
    match load(path) {
        Ok(l) => {
            if c.effective {
                print!("{}", config::effective(&l));
            } else {
                print!("{}", config::render_show(&l));
            }
            0
        }
        Err(e) => {
            eprintln!("jellydemon: {e}");
            1
        }
    }
}
