//! `jellydemon [--config PATH] <verb>` (DESIGN.md §5).

use argh::FromArgs;
use jellydemon::config::{self, Config};
use jellydemon::daemon::{self, Options, Signals};
use jellydemon::{check, print_out, publish, status, wol};
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
    /// refresh every N seconds until interrupted (Ctrl-C)
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
/// Print the configuration as parsed, exactly as `uci show jellydemon` would, also when a
/// value is invalid for jellydemon (reported on stderr). Exit 1 only on a parse error.
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
    let cli = parse_args();
    if cli.version {
        print_out(format!("jellydemon {}\n", env!("CARGO_PKG_VERSION")));
        return ExitCode::SUCCESS;
    }
    let Some(verb) = cli.verb else {
        eprintln!(
            "jellydemon: a verb is needed (run, check, status, restore, wake, config); see --help"
        );
        return ExitCode::from(2);
    };
    let code = match verb {
        Verb::Run(r) => run(&cli.config, r),
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

/// `argh::from_env`, but `--help` goes through [`print_out`]: argh's own `println!` panics
/// when the reader has gone (`jellydemon --help | head -1`).
fn parse_args() -> Cli {
    use argh::FromArgs;
    let args: Vec<String> = match std::env::args_os().map(|a| a.into_string()).collect() {
        Ok(a) => a,
        Err(bad) => {
            eprintln!("jellydemon: an argument is not valid UTF-8: {bad:?}");
            std::process::exit(1);
        }
    };
    let cmd = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(a)
        })
        .unwrap_or("jellydemon");
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    Cli::from_args(&[cmd], &rest).unwrap_or_else(|early| match early.status {
        Ok(()) => {
            print_out(format!("{}\n", early.output));
            std::process::exit(0)
        }
        Err(()) => {
            eprintln!("{}\nRun {cmd} --help for more information.", early.output);
            // argh's own code for a usage error.
            std::process::exit(1)
        }
    })
}

fn run(path: &Path, r: Run) -> u8 {
    // Handlers first: SIGHUP's default action would kill us before the loop is ready. Only
    // here: every other verb keeps the default actions, so Ctrl-C stops `status --watch`.
    let signals = Signals::install();
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
                print_out("\x1b[2J\x1b[H");
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
    let st = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v) if v.is_object() => status::Status::from_json(&v),
        Ok(_) => {
            eprintln!(
                "jellydemon: {} is unreadable: not a JSON object",
                p.display()
            );
            return 1;
        }
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
        print_out([&bytes[..], b"\n"].concat());
    } else {
        print_out(publish::render_table(&st));
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
            print_out(format!("magic packet sent on {}\n", cfg.wol.interface));
            0
        }
        Err(e) => {
            eprintln!("jellydemon: Wake-on-LAN failed: {e}");
            1
        }
    }
}

fn config_cmd(path: &Path, c: ConfigCmd) -> u8 {
    if c.effective {
        return match load(path) {
            Ok(l) => {
                print_out(config::effective(&l));
                0
            }
            Err(e) => {
                eprintln!("jellydemon: {e}");
                1
            }
        };
    }
    // What `uci show jellydemon` prints for every file uci reads (DESIGN.md §5): only a file
    // uci itself refuses is an error here; jellydemon's own objections go to stderr.
    let package = match config::read_package(path) {
        Ok((p, _)) => p,
        Err(e) => {
            eprintln!("jellydemon: {e}");
            return 1;
        }
    };
    print_out(package.show_bytes("jellydemon"));
    // The objections come from the whole configuration, the secrets file included (an API key
    // kept there is not "missing").
    match config::load(path) {
        Ok(l) => {
            for w in &l.warnings {
                eprintln!("jellydemon: warning: {w}");
            }
        }
        Err(e) => eprintln!("jellydemon: {e}"),
    }
    0
}
