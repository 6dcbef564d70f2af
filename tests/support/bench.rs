//! `homenet bench`: the efficiency figures of DESIGN.md §10, measured side by side in one run
//! and printed as a table with each budget and PASS/FAIL (test support, never shipped; see
//! the README, "Efficiency").
//!
//! The real release daemon runs in the emulated router namespace with two remote viewers
//! streaming from the Jellyfin emulator and 65,536 real conntrack entries in the router's
//! table. Its CPU comes from `/proc/<pid>/stat` (user+sys, including exited threads) over whole
//! ticks, counted by the status file it rewrites each tick; over the same ticks, the processes
//! it starts (shims first in its PATH log each) and its requests to the media server (the
//! emulator's request log). `cat /proc/net/nf_conntrack` and `conntrack -L` run in the same
//! namespace on the same table; their CPU comes from `wait4`.
//! Instruction counts of the pure decision core come from callgrind (`homenet bench-decide`).

use crate::topology::{self, HomeNet, Options};
use jellydemon::decide::{self, Algorithm, Input, Policy, State, StreamIn, UserRule};
use serde_json::Value;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

type Result<T> = std::result::Result<T, String>;

const KEY: &str = "0123456789abcdef0123456789abcdef";
const ALICE: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const BOB: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
/// Bob's own limit in the server before the daemon touches it.
const BOB_ORIGINAL: i64 = 12_000_000;
const ITEM6: &str = "60000000000000000000000000000006";
const ITEM2: &str = "20000000000000000000000000000002";
/// Conntrack entries the router's table holds during the measurements (DESIGN.md §10).
const ENTRIES: u32 = 65_536;
/// The daemon's tick in these runs, seconds.
const INTERVAL_S: u64 = 1;
/// Sizes are compared in decimal kilobytes (the stricter reading of "KB").
const KB: f64 = 1000.0;

/// One line of the result table.
struct Row {
    figure: String,
    measured: String,
    budget: String,
    verdict: &'static str,
}

impl Row {
    fn new(figure: &str, measured: String, budget: &str, pass: Option<bool>) -> Row {
        Row {
            figure: figure.into(),
            measured,
            budget: budget.into(),
            verdict: match pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "-",
            },
        }
    }
}

struct Args {
    daemon: PathBuf,
    binaries: Vec<(String, PathBuf)>,
    packages: Vec<PathBuf>,
    ticks: u32,
    off_ticks: u32,
    dry_ticks: u32,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut a = Args {
        daemon: PathBuf::new(),
        binaries: Vec::new(),
        packages: Vec::new(),
        ticks: 100,
        off_ticks: 30,
        dry_ticks: 60,
    };
    let mut daemon = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--daemon" => daemon = Some(PathBuf::from(val()?)),
            "--binary" => {
                let v = val()?;
                let (arch, path) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--binary wants ARCH=PATH, got {v:?}"))?;
                a.binaries.push((arch.to_string(), PathBuf::from(path)));
            }
            "--package" => a.packages.push(PathBuf::from(val()?)),
            "--ticks" => a.ticks = number(&val()?, "--ticks")?,
            "--off-ticks" => a.off_ticks = number(&val()?, "--off-ticks")?,
            "--dry-ticks" => a.dry_ticks = number(&val()?, "--dry-ticks")?,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    a.daemon = daemon.ok_or("--daemon PATH is required")?;
    if a.ticks == 0 || a.off_ticks == 0 || a.dry_ticks == 0 {
        return Err("tick counts must be positive".into());
    }
    Ok(a)
}

fn number(s: &str, what: &str) -> Result<u32> {
    s.parse()
        .map_err(|_| format!("{what}: not a number: {s:?}"))
}

/// `homenet bench --daemon PATH [--binary ARCH=PATH]... [--package PATH]... [--ticks N]
/// [--off-ticks N] [--dry-ticks N]`
pub fn bench_main(args: &[String]) -> Result<()> {
    let a = parse_args(args)?;
    if !is_root() {
        return Err("needs root (network namespaces)".into());
    }
    let daemon =
        fs::canonicalize(&a.daemon).map_err(|e| format!("daemon {}: {e}", a.daemon.display()))?;
    let started = Instant::now();
    println!("{}", machine());
    let mut rows = Vec::new();
    eprintln!("bench: decision core instruction counts (callgrind)");
    rows.extend(decide_rows());
    rows.extend(size_rows(&a));
    eprintln!("bench: building the home network");
    rows.extend(network_rows(&a, &daemon)?);
    println!();
    print_table(&rows);
    println!("\n(bench took {:.0} s)", started.elapsed().as_secs_f64());
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.verdict == "FAIL")
        .map(|r| r.figure.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("budget not held: {}", failed.join("; ")))
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `nproc`, CPU model and kernel, for the record next to the figures.
fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("machine: nproc {cpus}, {model}, Linux {}", kernel.trim())
}

fn print_table(rows: &[Row]) {
    let w0 = rows
        .iter()
        .map(|r| r.figure.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let w1 = rows
        .iter()
        .map(|r| r.measured.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let w2 = rows
        .iter()
        .map(|r| r.budget.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!(
        "| {:w0$} | {:w1$} | {:w2$} | result |",
        "figure", "measured", "budget"
    );
    println!(
        "|{}|{}|{}|--------|",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 2),
        "-".repeat(w2 + 2)
    );
    for r in rows {
        println!(
            "| {:w0$} | {:w1$} | {:w2$} | {:6} |",
            r.figure, r.measured, r.budget, r.verdict
        );
    }
}

// ---- 3. sizes -------------------------------------------------------------------------------

fn size_rows(a: &Args) -> Vec<Row> {
    let mut rows = Vec::new();
    for arch in ["mipsel", "aarch64", "x86_64"] {
        // DESIGN.md §10: 1,000 KB on mips/mipsel (ureq and syslog included), 900 KB on aarch64.
        let limit_kb = if arch == "mipsel" { 1000.0 } else { 900.0 };
        let budgeted = arch != "x86_64";
        let budget = match (budgeted, arch) {
            (false, _) => "(reference)",
            (true, "mipsel") => "<= 1000 KB",
            (true, _) => "<= 900 KB",
        };
        let figure = format!("binary size {arch} (static musl, stripped)");
        match a.binaries.iter().find(|(x, _)| x == arch) {
            Some((_, p)) => match fs::metadata(p) {
                Ok(m) => {
                    let kb = m.len() as f64 / KB;
                    let pass = budgeted.then_some(kb <= limit_kb);
                    rows.push(Row::new(&figure, format!("{kb:.0} KB"), budget, pass));
                }
                Err(e) => rows.push(Row::new(
                    &figure,
                    format!("missing: {e}"),
                    budget,
                    Some(false),
                )),
            },
            None => rows.push(Row::new(
                &figure,
                "not built (make cross)".into(),
                budget,
                None,
            )),
        }
    }
    if a.packages.is_empty() {
        rows.push(Row::new(
            "package size (.ipk)",
            "not built (make ipk)".into(),
            "<= 450 KB",
            None,
        ));
    }
    for p in &a.packages {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let figure = format!("package size {name}");
        match fs::metadata(p) {
            Ok(m) => {
                let kb = m.len() as f64 / KB;
                rows.push(Row::new(
                    &figure,
                    format!("{kb:.0} KB"),
                    "<= 450 KB",
                    Some(kb <= 450.0),
                ));
            }
            Err(e) => rows.push(Row::new(
                &figure,
                format!("missing: {e}"),
                "<= 450 KB",
                Some(false),
            )),
        }
    }
    rows
}

// ---- instruction counts of the decision core -------------------------------------------------

/// Streams in the decision benchmark.
const DECIDE_STREAMS: usize = 50;

/// A busy evening: 50 playing sessions of 20 users, most remote (some on IPv6), a few local,
/// transcodes and direct plays of 2-12 Mbit/s, per-user rules for some users.
pub fn decide_scenario() -> (Policy, Input) {
    let internal = ["192.168.0.0/16", "10.0.0.0/8", "fd00::/8"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let users = (0..20)
        .filter(|u| u % 4 == 0)
        .map(|u| UserRule {
            name: format!("user{u}"),
            weight: 1.0 + (u % 3) as f64,
            min_bps: Some(1_500_000),
            max_bps: Some(8_000_000),
            exempt: u == 12,
        })
        .collect();
    let policy = Policy {
        capacity_bps: Some(50_000_000),
        target_pct: 90.0,
        reserve_bps: 2_000_000,
        algorithm: Algorithm::Equal,
        min_bps: 1_000_000,
        max_bps: 20_000_000,
        burst_pct: 115,
        internal,
        users,
        restart_playback: true,
        restart_min_interval_s: 600.0,
    };
    let streams = (0..DECIDE_STREAMS)
        .map(|i| {
            let remote_ip: IpAddr = if i % 10 == 9 {
                IpAddr::V4(Ipv4Addr::new(192, 168, 1, 100 + i as u8))
            } else if i % 5 == 0 {
                IpAddr::V6(std::net::Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    7,
                    0,
                    0,
                    0,
                    0,
                    i as u16 + 1,
                ))
            } else {
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, i as u8 + 1))
            };
            let source = 2_000_000 + (i as u64 % 6) * 2_000_000;
            let transcoding = i % 3 != 0;
            StreamIn {
                session_id: format!("session{i:03}"),
                user_id: format!("{:032x}", i % 20),
                user_name: format!("user{}", i % 20),
                remote_ip: Some(remote_ip),
                paused: i % 17 == 16,
                transcoding,
                stream_bps: Some(if transcoding { source / 2 } else { source }),
                source_bps: Some(source),
                supports_remote_control: i % 7 != 0,
            }
        })
        .collect();
    let input = Input {
        now: 0.0,
        wan_tx_bps: Some(40_000_000),
        jellyfin_bps: Some(35_000_000),
        streams,
    };
    (policy, input)
}

/// `homenet bench-decide --iterations N`: runs the decision N times on the 50-stream scenario,
/// each tick feeding the previous tick's state, with a varying measured upload.
pub fn decide_main(args: &[String]) -> Result<()> {
    let n: u32 = match args {
        [flag, v] if flag == "--iterations" => number(v, "--iterations")?,
        _ => return Err("usage: homenet bench-decide --iterations N".into()),
    };
    let (policy, mut input) = decide_scenario();
    let mut state = State::default();
    let mut restarts = 0usize;
    for k in 0..n {
        input.now = f64::from(k) * INTERVAL_S as f64;
        input.wan_tx_bps = Some(36_000_000 + u64::from(k % 7) * 1_000_000);
        input.jellyfin_bps = Some(30_000_000 + u64::from(k % 5) * 1_000_000);
        let (plan, next) = decide::decide(&state, std::hint::black_box(&input), &policy);
        restarts += std::hint::black_box(plan).restarts.len();
        state = next;
    }
    println!("{n} decisions, {restarts} restarts");
    Ok(())
}

/// Instructions callgrind counts for `homenet bench-decide --iterations n`.
fn callgrind(n: u32) -> Result<u64> {
    let exe = topology::homenet_exe()?;
    let out_file = std::env::temp_dir().join(format!("jd-bench-cg-{}-{n}", std::process::id()));
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(&exe)
        .args(["bench-decide", "--iterations", &n.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("valgrind: {e} (apt-get install valgrind)"))?;
    let _ = fs::remove_file(&out_file);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("valgrind failed: {err}"));
    }
    // "==123== Collected : 4567890"
    err.lines()
        .find_map(|l| {
            l.split_once("Collected :")
                .map(|(_, v)| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no instruction count in valgrind's output: {err}"))
}

fn decide_rows() -> Vec<Row> {
    const FEW: u32 = 1;
    const MANY: u32 = 101;
    let figure = format!("decide(): instructions per call, {DECIDE_STREAMS} streams (callgrind)");
    // The difference of two runs cancels process start-up and the scenario's construction.
    match (callgrind(FEW), callgrind(MANY)) {
        (Ok(a), Ok(b)) => {
            let per = b.saturating_sub(a) / u64::from(MANY - FEW);
            vec![Row::new(
                &figure,
                format!("{per} Ir"),
                "(regression reference)",
                None,
            )]
        }
        (Err(e), _) | (_, Err(e)) => {
            vec![Row::new(&figure, e, "(regression reference)", Some(false))]
        }
    }
}

// ---- the emulated network: CPU, memory, reactions ----------------------------------------------

fn world() -> String {
    serde_json::json!({
        "version": "10.11.11",
        "api_keys": [{"name": "jellydemon", "token": KEY}],
        "segment_ms": 1000,
        "prefill_segments": 2,
        "users": [
            {"name": "admin", "id": "4b8e2f1a9c7d4e3fa1b2c3d4e5f60718", "is_administrator": true},
            {"name": "alice", "id": ALICE},
            {"name": "bob", "id": BOB, "remote_client_bitrate_limit": BOB_ORIGINAL}
        ],
        "items": [
            {"id": ITEM6, "name": "Six", "type": "Movie", "bitrate": 6000000, "audio_bitrate": 256000, "runtime_ticks": 36000000000u64},
            {"id": ITEM2, "name": "Two", "type": "Movie", "bitrate": 2000000, "audio_bitrate": 128000, "runtime_ticks": 36000000000u64}
        ]
    })
    .to_string()
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The network, the emulator and the viewers; children are killed by `HomeNet`'s drop.
struct Bench {
    net: HomeNet,
    dir: TempDir,
    exe: PathBuf,
    daemon_exe: PathBuf,
    emu: Option<Child>,
    viewers: Vec<Child>,
}

/// A running daemon: its process and where it writes.
struct Daemon {
    child: Child,
    status: PathBuf,
    log: PathBuf,
    /// One line per program the daemon started (written by the shims first in its PATH).
    spawned: PathBuf,
}

/// Programs the daemon may start (by name, through PATH): `tc` (the shaper's changes and
/// its fallback) and `ubus` (netifd interface names). Each gets a shim that logs one line and
/// then runs the real program, so the bench counts processes without tracing the daemon. The
/// shim's own shell is a process too: its CPU lands in the children's figure, only when a
/// process is started at all.
const SPAWNED_PROGRAMS: [&str; 2] = ["tc", "ubus"];

/// Writes the shims into `dir` and returns the PATH that puts them first.
fn shim_path(dir: &Path, log: &Path) -> Result<String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    for name in SPAWNED_PROGRAMS {
        let Some(real) = std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
        else {
            continue;
        };
        let shim = dir.join(name);
        let text = format!(
            "#!/bin/sh\necho {name} >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        );
        fs::write(&shim, text).map_err(|e| format!("{}: {e}", shim.display()))?;
        let mut perm = fs::metadata(&shim)
            .map_err(|e| format!("{}: {e}", shim.display()))?
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        fs::set_permissions(&shim, perm).map_err(|e| format!("{}: {e}", shim.display()))?;
    }
    Ok(format!("PATH={}:{path}", dir.display()))
}

/// Lines of the shims' log: processes the daemon started so far.
fn spawned(d: &Daemon) -> u64 {
    fs::read_to_string(&d.spawned).map_or(0, |s| s.lines().count() as u64)
}

impl Bench {
    fn config(&self, name: &str, extra: &str) -> Result<PathBuf> {
        let d = self.dir.0.join(name);
        fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        let cfg = d.join("jellydemon");
        let text = format!(
            "config jellydemon 'main'\n\toption enabled '1'\n\toption interval '{INTERVAL_S}'\n\toption state_dir '{d}/state'\n\toption run_dir '{d}/run'\n\
             config jellyfin 'jellyfin'\n\toption url 'http://{jf}:{port}'\n\toption api_key '{KEY}'\n\toption timeout '2'\n\
             config network 'network'\n\toption wan_device '{wan}'\n\toption lan_device '{lan}'\n\
             config bandwidth 'bandwidth'\n\toption upload_mbps '20'\n{extra}",
            d = d.display(),
            jf = topology::JF_V4,
            port = topology::JF_PORT,
            wan = topology::WAN_DEV,
            lan = topology::LAN_DEV,
        );
        fs::write(&cfg, text).map_err(|e| format!("{}: {e}", cfg.display()))?;
        Ok(cfg)
    }

    /// Starts the daemon in the router namespace and waits for its first status file.
    fn start_daemon(&self, name: &str, extra: &str) -> Result<Daemon> {
        self.start_daemon_args(name, extra, &[])
    }

    /// Like [`Bench::start_daemon`] with more arguments to `run`.
    fn start_daemon_args(&self, name: &str, extra: &str, more: &[&str]) -> Result<Daemon> {
        self.start_daemon_under(name, extra, &[], more)
    }

    /// Like [`Bench::start_daemon_args`], the daemon run by `wrapper` (e.g. valgrind).
    fn start_daemon_under(
        &self,
        name: &str,
        extra: &str,
        wrapper: &[&str],
        more: &[&str],
    ) -> Result<Daemon> {
        let cfg = self.config(name, extra)?;
        let d = self.dir.0.join(name);
        let log = d.join("daemon.log");
        let logf = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let spawned = d.join("spawned.log");
        let path = shim_path(&d.join("shims"), &spawned)?;
        // `env` replaces itself with the daemon, as `ip netns exec` does: one pid throughout.
        let mut argv = vec!["env", path.as_str()];
        argv.extend_from_slice(wrapper);
        argv.extend_from_slice(&[
            path_str(&self.daemon_exe)?,
            "--config",
            path_str(&cfg)?,
            "run",
            "--stderr",
        ]);
        argv.extend_from_slice(more);
        let child = self
            .net
            .spawn_io(&self.net.router, &argv, Stdio::null(), Stdio::from(logf))?;
        let daemon = Daemon {
            child,
            status: d.join("run/status.json"),
            log,
            spawned,
        };
        let first = if wrapper.is_empty() { 15 } else { 120 };
        wait_for(
            Duration::from_secs(first),
            "the daemon's first status",
            || mtime(&daemon.status),
        )
        .map_err(|e| {
            format!(
                "{e}; log: {}",
                fs::read_to_string(&daemon.log).unwrap_or_default()
            )
        })?;
        // `ip netns exec` replaces itself with the program: the pid is the daemon's (or its
        // wrapper's, which runs it in the same process).
        let comm =
            fs::read_to_string(format!("/proc/{}/comm", daemon.child.id())).unwrap_or_default();
        if wrapper.is_empty() && comm.trim() != "jellydemon" {
            return Err(format!(
                "pid {} is {comm:?}, not the daemon",
                daemon.child.id()
            ));
        }
        Ok(daemon)
    }

    fn http_get(&self, ns: &str, url: &str) -> Result<Value> {
        let url = url.to_string();
        in_ns(ns, move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(3)))
                .build()
                .into();
            let body = agent
                .get(&url)
                .call()
                .map_err(|e| format!("GET {url}: {e}"))?
                .body_mut()
                .read_to_string()
                .map_err(|e| format!("GET {url}: {e}"))?;
            serde_json::from_str(&body).map_err(|e| format!("GET {url}: {e}"))
        })?
    }

    fn emu_state(&self) -> Result<Value> {
        self.http_get(
            &self.net.jf,
            &format!("http://127.0.0.1:{}/_emu/state", topology::JF_PORT),
        )
    }

    fn start_viewer(&mut self, i: usize, user: &str, item: &str) -> Result<()> {
        let server = SocketAddr::new(IpAddr::V4(topology::ROUTER_WAN_V4), topology::JF_PORT);
        let dev = format!("bench-{user}-{i}");
        let child = self.net.spawn_io(
            &self.net.viewers[i],
            &[
                path_str(&self.exe)?,
                "viewer",
                "--server",
                &server.to_string(),
                "--user",
                user,
                "--item",
                item,
                "--client",
                "Jellyfin Web",
                "--device-id",
                &dev,
                "--method",
                "transcode",
            ],
            Stdio::null(),
            Stdio::null(),
        )?;
        self.viewers.push(child);
        Ok(())
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| format!("path is not UTF-8: {}", p.display()))
}

fn user_limit(state: &Value, uid: &str) -> Option<i64> {
    state["users"].as_array()?.iter().find(|u| u["id"] == uid)?["policy"]
        ["RemoteClientBitrateLimit"]
        .as_i64()
}

fn playing(state: &Value, user: &str) -> bool {
    state["sessions"].as_array().is_some_and(|a| {
        a.iter()
            .any(|s| s["user_name"] == user && s["now_playing_item_id"].is_string())
    })
}

/// Polls `f` every 10 ms until it returns Some, for at most `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Waits until the daemon has rewritten its status file `n` more times (n ticks).
fn wait_ticks(d: &Daemon, n: u32) -> Result<()> {
    let mut last = mtime(&d.status);
    for k in 0..n {
        last = Some(wait_for(
            Duration::from_secs(INTERVAL_S * 5 + 5),
            &format!("tick {} of {n}", k + 1),
            || mtime(&d.status).filter(|m| Some(*m) != last),
        )?);
    }
    Ok(())
}

/// User+system CPU of process `pid` so far: its own (`/proc/<pid>/stat` fields 14 and 15,
/// including threads that already exited) and that of the children it waited for (fields 16
/// and 17: the `tc` runs of the shaper).
fn proc_cpu(pid: u32) -> Result<Cpu> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("stat: {e}"))?;
    // The command name may contain spaces and parentheses: fields count from the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("bad /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bad /proc stat field {i}"))
    };
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100);
    let dur = |ticks: u64| Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz);
    // After ')': index 0 is field 3 (state), so field 14 (utime) is index 11.
    Ok(Cpu {
        own: dur(field(11)?.saturating_add(field(12)?)),
        children: dur(field(13)?.saturating_add(field(14)?)),
    })
}

/// CPU time of a process and of its reaped children.
#[derive(Clone, Copy)]
struct Cpu {
    own: Duration,
    children: Duration,
}

/// Resident memory of a process, kB.
struct Mem {
    rss: u64,
    hwm: u64,
    anon: u64,
    file: u64,
}

impl Mem {
    fn show(&self) -> String {
        format!(
            "{} / {} kB (anon {}, file {})",
            self.rss, self.hwm, self.anon, self.file
        )
    }

    fn within(&self, kb: u64) -> bool {
        self.rss.max(self.hwm) <= kb
    }
}

/// VmRSS, VmHWM, RssAnon and RssFile of `pid`.
fn proc_mem(pid: u32) -> Result<Mem> {
    let st =
        fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("status: {e}"))?;
    let kb = |key: &str| -> Result<u64> {
        st.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
    };
    Ok(Mem {
        rss: kb("VmRSS:")?,
        hwm: kb("VmHWM:")?,
        anon: kb("RssAnon:")?,
        file: kb("RssFile:")?,
    })
}

/// Runs `f` in a thread that entered network namespace `ns`: its sockets and the processes it
/// starts live there.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    spawn_in_ns(ns, f)?
        .join()
        .map_err(|_| format!("thread in {ns} panicked"))?
}

fn spawn_in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let path = format!("/run/netns/{ns}");
    Ok(std::thread::spawn(move || {
        let file = fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {path}: {e}"))?;
        Ok(f())
    }))
}

/// CPU (user+sys) of one run of `argv` in namespace `ns`, its output discarded.
fn child_cpu(ns: &str, argv: &[&str]) -> Result<Duration> {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    in_ns(ns, move || -> Result<Duration> {
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", argv[0]))?;
        let pid = i32::try_from(child.id()).map_err(|_| "pid out of range")?;
        let mut status = 0;
        // SAFETY: wait4 fills the status and rusage it is given; the child is ours and is
        // reaped here (std's Child is then dropped without waiting).
        let mut ru: nix::libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { nix::libc::wait4(pid, &mut status, 0, &mut ru) };
        if r != pid {
            return Err(format!(
                "wait4 {}: {}",
                argv[0],
                std::io::Error::last_os_error()
            ));
        }
        if !(nix::libc::WIFEXITED(status) && nix::libc::WEXITSTATUS(status) == 0) {
            return Err(format!("{} failed (status {status})", argv.join(" ")));
        }
        Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
    })?
}

fn tv(t: nix::libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

/// Fills the router's conntrack table with `count` UDP entries: one socket, one datagram to
/// each of `count` destinations routed out of a veth whose peer never answers.
fn fill_table(b: &Bench, count: u32) -> Result<u64> {
    let r = &b.net.router;
    let ip = |args: &[&str]| {
        let mut argv = vec!["ip"];
        argv.extend_from_slice(args);
        b.net.exec(r, &argv)
    };
    ip(&[
        "link", "add", "jdb0", "type", "veth", "peer", "name", "jdb1",
    ])?;
    ip(&["link", "set", "jdb0", "up"])?;
    ip(&["link", "set", "jdb1", "up"])?;
    ip(&["addr", "add", "10.200.0.1/16", "dev", "jdb0"])?;
    ip(&[
        "neigh",
        "add",
        "10.200.0.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "jdb0",
        "nud",
        "permanent",
    ])?;
    ip(&[
        "route",
        "add",
        "10.192.0.0/10",
        "via",
        "10.200.0.2",
        "dev",
        "jdb0",
    ])?;
    // Unanswered UDP entries expire after 30 s by default: keep them for the whole run.
    b.net.exec(
        r,
        &[
            "sysctl",
            "-q",
            "-w",
            "net.netfilter.nf_conntrack_udp_timeout=900",
        ],
    )?;
    in_ns(r, move || -> Result<()> {
        let sock = UdpSocket::bind("10.200.0.1:0").map_err(|e| format!("udp: {e}"))?;
        for i in 0..count {
            let dst = Ipv4Addr::new(10, 201 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
            sock.send_to(&[0u8; 1], (dst, 9))
                .map_err(|e| format!("send to {dst}: {e}"))?;
        }
        Ok(())
    })??;
    let n = b
        .net
        .exec(r, &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])?;
    n.trim()
        .parse()
        .map_err(|_| format!("nf_conntrack_count: {n:?}"))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn network_rows(a: &Args, daemon_exe: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let net = HomeNet::up(&Options {
        viewers: 2,
        ..Options::default()
    })?;
    let dir = TempDir(std::env::temp_dir().join(format!("jd-bench-{}", std::process::id())));
    let _ = fs::remove_dir_all(&dir.0);
    fs::create_dir_all(&dir.0).map_err(|e| format!("{}: {e}", dir.0.display()))?;
    let world_file = dir.0.join("world.json");
    fs::write(&world_file, world()).map_err(|e| format!("world: {e}"))?;
    let exe = topology::homenet_exe()?;
    let mut b = Bench {
        net,
        dir,
        exe: exe.clone(),
        daemon_exe: daemon_exe.to_path_buf(),
        emu: None,
        viewers: Vec::new(),
    };
    let emu = b.net.spawn_io(
        &b.net.jf,
        &[
            path_str(&exe)?,
            "jellyfin",
            "--listen",
            "0.0.0.0:8096",
            "--world",
            path_str(&world_file)?,
        ],
        Stdio::null(),
        Stdio::null(),
    )?;
    b.emu = Some(emu);
    wait_for(Duration::from_secs(10), "the emulator", || {
        b.emu_state().ok()
    })?;

    // ---- run A: shaping on (class counters) ----
    let mut d = b.start_daemon("shaping-on", "")?;
    wait_ticks(&d, 3)?;
    let m = proc_mem(d.child.id())?;
    rows.push(Row::new(
        "RSS idle (no stream, empty table), VmRSS / VmHWM",
        m.show(),
        "<= 3 MB",
        Some(m.within(3 * 1024)),
    ));

    // Reaction: the server lists alice's playback → her Jellyfin limit changes.
    eprintln!("bench: stream start -> limit");
    b.start_viewer(0, "alice", ITEM6)?;
    let mut seen = None;
    let mut limited = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while limited.is_none() && Instant::now() < deadline {
        let st = b.emu_state()?;
        let now = Instant::now();
        if seen.is_none() && playing(&st, "alice") {
            seen = Some(now);
        }
        if seen.is_some() && user_limit(&st, ALICE).is_some_and(|l| l > 0) {
            limited = Some(now);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let figure = "reaction: stream listed by the server -> Jellyfin limit set";
    let budget = "<= 1 tick (1 s) + 0.5 s";
    match (seen, limited) {
        (Some(s), Some(l)) => {
            let t = l.duration_since(s);
            rows.push(Row::new(
                figure,
                ms(t),
                budget,
                Some(t <= Duration::from_millis(1500)),
            ));
        }
        _ => rows.push(Row::new(
            figure,
            "never within 30 s".into(),
            budget,
            Some(false),
        )),
    }
    b.start_viewer(1, "bob", ITEM2)?;
    wait_for(Duration::from_secs(30), "bob limited", || {
        let st = b.emu_state().ok()?;
        user_limit(&st, BOB)
            .filter(|l| *l != BOB_ORIGINAL && *l > 0)
            .map(|_| ())
    })?;

    eprintln!("bench: filling the router's conntrack table with {ENTRIES} entries");
    let count = fill_table(&b, ENTRIES)?;
    rows.push(Row::new(
        "conntrack entries in the router namespace",
        count.to_string(),
        ">= 65536",
        Some(count >= u64::from(ENTRIES)),
    ));
    let r = b.net.router.clone();
    let mut cat = Duration::ZERO;
    const CAT_RUNS: u32 = 5;
    for _ in 0..CAT_RUNS {
        cat += child_cpu(&r, &["cat", "/proc/net/nf_conntrack"])?;
    }
    let cat = cat / CAT_RUNS;
    let mut ctl = Duration::ZERO;
    const CTL_RUNS: u32 = 3;
    for _ in 0..CTL_RUNS {
        ctl += child_cpu(&r, &["conntrack", "-L"])?;
    }
    let ctl = ctl / CTL_RUNS;
    rows.push(Row::new(
        "`cat /proc/net/nf_conntrack` CPU (reference)",
        ms(cat),
        "-",
        None,
    ));
    rows.push(Row::new(
        "`conntrack -L` CPU (reference)",
        format!("{} ({:.2}x cat)", ms(ctl), ratio(ctl, cat)),
        "-",
        None,
    ));

    eprintln!("bench: {} ticks with shaping on", a.ticks);
    let tick_on = tick_cpu(&b, &d, a.ticks)?;
    rows.push(tick_row(
        &format!("tick CPU, shaping on, class counters ({} ticks)", a.ticks),
        &tick_on,
        cat,
    ));
    rows.extend(tick_count_rows("shaping on", &tick_on, a.ticks));
    let m = proc_mem(d.child.id())?;
    rows.push(Row::new(
        &format!(
            "RSS after {} ticks with the table, VmRSS / VmHWM",
            a.ticks + 3
        ),
        m.show(),
        "<= 3 MB",
        Some(m.within(3 * 1024)),
    ));

    // Reaction: SIGTERM → exited with every limit back and its tc state gone.
    eprintln!("bench: SIGTERM -> restored");
    let t0 = Instant::now();
    let left = HomeNet::stop(&mut d.child, Duration::from_secs(10));
    let took = t0.elapsed();
    let st = b.emu_state()?;
    let links = b.net.exec(&r, &["ip", "link", "show"])?;
    let filters = b.net.exec(
        &r,
        &["tc", "filter", "show", "dev", topology::LAN_DEV, "ingress"],
    )?;
    let restored = left
        && user_limit(&st, ALICE) == Some(0)
        && user_limit(&st, BOB) == Some(BOB_ORIGINAL)
        && !links.contains("jdshape")
        && !filters.contains("jdshape");
    rows.push(Row::new(
        "reaction: SIGTERM -> limits back, tc gone, exited",
        if restored {
            ms(took)
        } else {
            format!("{} but not restored", ms(took))
        },
        "<= 5 s",
        Some(restored && took <= Duration::from_secs(5)),
    ));

    // ---- run B: shaping off. The daemon still keeps its classes, unenforced, as per-viewer
    // byte counters, so this tick costs about what run A's does. ----
    let mut d = b.start_daemon(
        "shaping-off",
        "config shaping 'shaping'\n\toption enabled '0'\n",
    )?;
    wait_for(Duration::from_secs(30), "both limited again", || {
        both_limited(&b)
    })?;
    eprintln!("bench: {} ticks with shaping off", a.off_ticks);
    let tick_off = tick_cpu(&b, &d, a.off_ticks)?;
    rows.push(tick_row(
        &format!(
            "tick CPU, shaping off, class counters ({} ticks)",
            a.off_ticks
        ),
        &tick_off,
        cat,
    ));
    rows.extend(tick_count_rows("shaping off", &tick_off, a.off_ticks));
    let m = proc_mem(d.child.id())?;
    rows.push(Row::new(
        "RSS shaping off with the table, VmRSS / VmHWM",
        m.show(),
        "<= 3 MB",
        Some(m.within(3 * 1024)),
    ));
    HomeNet::stop(&mut d.child, Duration::from_secs(10));

    // ---- run B2: instructions per tick under callgrind (shaping on) ----
    eprintln!("bench: {CALLGRIND_TICKS} ticks under callgrind");
    rows.push(callgrind_tick_row(&b)?);
    rows.push(Row::new(
        "tick instructions, mipsel under qemu-user",
        "not measurable here (see README)".into(),
        "-",
        None,
    ));

    // ---- run C: no shaper at all (`run --dry-run`): per-viewer bytes come from conntrack
    // over netlink (kernel-filtered dump, then events and exact-tuple reads). ----
    let mut d = b.start_daemon_args("dry-run", "", &["--dry-run"])?;
    wait_for(
        Duration::from_secs(30),
        "both streams in the status",
        || {
            let st: Value = serde_json::from_str(&fs::read_to_string(&d.status).ok()?).ok()?;
            let measured = st["streams"]
                .as_array()?
                .iter()
                .filter(|s| s["measured_bps"]["1m"].as_u64().is_some_and(|v| v > 0));
            (measured.count() >= 2).then_some(())
        },
    )?;
    eprintln!(
        "bench: {} ticks without a shaper (conntrack netlink)",
        a.dry_ticks
    );
    let tick_ct = tick_cpu(&b, &d, a.dry_ticks)?;
    rows.push(tick_row(
        &format!(
            "tick CPU, no shaper, conntrack netlink ({} ticks)",
            a.dry_ticks
        ),
        &tick_ct,
        cat,
    ));
    rows.extend(tick_count_rows("no shaper", &tick_ct, a.dry_ticks));
    let m = proc_mem(d.child.id())?;
    rows.push(Row::new(
        "RSS no shaper with the table, VmRSS / VmHWM",
        m.show(),
        "<= 3 MB",
        Some(m.within(3 * 1024)),
    ));
    HomeNet::stop(&mut d.child, Duration::from_secs(10));

    // ---- run C: Wake-on-LAN on a connection to the forwarded port, the server asleep ----
    eprintln!("bench: first SYN -> wake packet");
    for mut v in b.viewers.drain(..) {
        HomeNet::stop(&mut v, Duration::from_secs(5));
    }
    if let Some(mut e) = b.emu.take() {
        HomeNet::stop(&mut e, Duration::from_secs(5));
    }
    rows.push(wol_row(&b)?);
    Ok(rows)
}

/// Both viewers' users carry a limit set by the daemon.
fn both_limited(b: &Bench) -> Option<()> {
    let st = b.emu_state().ok()?;
    (user_limit(&st, ALICE).is_some_and(|l| l > 0)
        && user_limit(&st, BOB).is_some_and(|l| l != BOB_ORIGINAL && l > 0))
    .then_some(())
}

/// Ticks the callgrind run counts (each takes ~50x its CPU under valgrind, well under 1 s).
const CALLGRIND_TICKS: u32 = 10;

/// Instructions per steady-state tick, shaping on, with the table and both streams: the
/// daemon runs under callgrind; its counters are zeroed after three ticks and dumped
/// `CALLGRIND_TICKS` ticks later (`callgrind_control -z` / `-d`). A count of instructions
/// does not vary with the machine's load, unlike CPU time.
fn callgrind_tick_row(b: &Bench) -> Result<Row> {
    let out = b.dir.0.join("callgrind-out");
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let file = format!("--callgrind-out-file={}/cg.out", out.display());
    let wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--dump-instr=no",
        file.as_str(),
    ];
    let mut d = b.start_daemon_under("callgrind", "", &wrapper, &[])?;
    let result: Result<u64> = (|| {
        wait_for(
            Duration::from_secs(60),
            "both limited under callgrind",
            || both_limited(b),
        )?;
        wait_ticks(&d, 3)?;
        let pid = d.child.id().to_string();
        let control = |flag: &str| -> Result<()> {
            let st = Command::new("callgrind_control")
                .args([flag, pid.as_str()])
                .stdout(Stdio::null())
                .status()
                .map_err(|e| format!("callgrind_control: {e}"))?;
            st.success()
                .then_some(())
                .ok_or_else(|| format!("callgrind_control {flag} {pid}: {st}"))
        };
        control("-z")?;
        wait_ticks(&d, CALLGRIND_TICKS)?;
        control("-d")?;
        // The dump is written asynchronously by the valgrind process: await it.
        let ir = wait_for(Duration::from_secs(30), "the callgrind dump", || {
            let dump = fs::read_dir(&out)
                .ok()?
                .flatten()
                .find(|e| e.file_name().to_string_lossy().ends_with(".1"))?;
            let text = fs::read_to_string(dump.path()).ok()?;
            text.lines()
                .find_map(|l| {
                    l.strip_prefix("totals:")
                        .or_else(|| l.strip_prefix("summary:"))
                })
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })?;
        Ok(ir / u64::from(CALLGRIND_TICKS))
    })();
    HomeNet::stop(&mut d.child, Duration::from_secs(30));
    let figure =
        format!("tick instructions, shaping on, x86_64 under callgrind ({CALLGRIND_TICKS} ticks)");
    Ok(match result {
        Ok(ir) => Row::new(&figure, format!("{ir} Ir"), "(regression reference)", None),
        Err(e) => Row::new(
            &figure,
            format!("not measured: {e}"),
            "(regression reference)",
            None,
        ),
    })
}

fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::INFINITY
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

/// Per tick over `n` whole ticks: the daemon's CPU (its own and its children's), the
/// processes it started and the requests it made to the media server.
fn tick_cpu(b: &Bench, d: &Daemon, n: u32) -> Result<Tick> {
    wait_ticks(d, 1)?;
    let (p0, t0) = (spawned(d), last_request_ms(&b.emu_state()?));
    let c0 = proc_cpu(d.child.id())?;
    wait_ticks(d, n)?;
    let c1 = proc_cpu(d.child.id())?;
    let p1 = spawned(d);
    let requests = daemon_requests_after(&b.emu_state()?, t0);
    Ok(Tick {
        cpu: Cpu {
            own: c1.own.saturating_sub(c0.own) / n,
            children: c1.children.saturating_sub(c0.children) / n,
        },
        processes: (p1 - p0) as f64 / f64::from(n),
        requests: requests.map(|r| r as f64 / f64::from(n)),
    })
}

/// What one tick costs, averaged.
struct Tick {
    cpu: Cpu,
    processes: f64,
    /// `None` when the emulator's request log no longer reaches back to the first tick.
    requests: Option<f64>,
}

/// The time of the newest request in the emulator's log (ms since it started), 0 if none.
fn last_request_ms(state: &Value) -> u64 {
    state["requests"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|r| r["t_ms"].as_u64())
        .unwrap_or(0)
}

/// Requests from the daemon (the router's LAN address) logged after `after_ms`; `None` when
/// the log (bounded) has dropped entries from that time.
fn daemon_requests_after(state: &Value, after_ms: u64) -> Option<u64> {
    let log = state["requests"].as_array()?;
    let oldest = log.first().and_then(|r| r["t_ms"].as_u64()).unwrap_or(0);
    if oldest > after_ms {
        return None;
    }
    let daemon = IpAddr::V4(topology::ROUTER_LAN_V4);
    Some(
        log.iter()
            .filter(|r| r["t_ms"].as_u64().is_some_and(|t| t > after_ms))
            .filter(|r| r["remote"].as_str().and_then(|a| a.parse().ok()) == Some(daemon))
            .count() as u64,
    )
}

/// The rows of processes and media-server requests per tick (DESIGN.md §10: none and one).
fn tick_count_rows(what: &str, t: &Tick, n: u32) -> Vec<Row> {
    let requests = match t.requests {
        Some(r) => Row::new(
            &format!("media-server requests per tick, {what} ({n} ticks)"),
            format!("{r:.2}"),
            "<= 1 (steady state)",
            Some(r <= 1.0),
        ),
        None => Row::new(
            &format!("media-server requests per tick, {what} ({n} ticks)"),
            "emulator request log overflowed".into(),
            "<= 1 (steady state)",
            Some(false),
        ),
    };
    vec![
        Row::new(
            &format!("processes started per tick, {what} ({n} ticks)"),
            format!("{:.2}", t.processes),
            "0 (steady state)",
            Some(t.processes == 0.0),
        ),
        requests,
    ]
}

/// The tick CPU row: the budget holds for the daemon and its children (any `tc`) together.
fn tick_row(figure: &str, t: &Tick, cat: Duration) -> Row {
    let c = t.cpu;
    let total = c.own + c.children;
    Row::new(
        figure,
        format!(
            "{} ({:.3}x cat; own {}, children {})",
            ms(total),
            ratio(total, cat),
            ms(c.own),
            ms(c.children)
        ),
        "<= 0.02x cat",
        Some(ratio(total, cat) <= 0.02),
    )
}

fn wol_row(b: &Bench) -> Result<Row> {
    let figure =
        "reaction: first SYN to the forwarded port -> wake packet on the LAN (server asleep)";
    let budget = "<= 1 s";
    let mac = topology::mac_text(topology::JF_MAC);
    let mut d = b.start_daemon(
        "wol",
        &format!(
            "config wol 'wol'\n\toption enabled '1'\n\toption mac '{mac}'\n\toption on_connect '1'\n\toption on_session '0'\n\toption cooldown '0'\n"
        ),
    )?;
    // A tick after the first: the connection watch is open.
    wait_ticks(&d, 1)?;
    // The server host sleeps: silent until a magic packet for its MAC reaches its NIC.
    let sleeper = b.net.sleep_server(topology::BOOT_DELAY)?;
    let target = SocketAddr::new(IpAddr::V4(topology::ROUTER_WAN_V4), topology::JF_PORT);
    let sent = in_ns(&b.net.viewers[0], move || {
        let t = Instant::now();
        // A sleeping host answers nothing: the connect times out.
        let _ = TcpStream::connect_timeout(&target, Duration::from_millis(300));
        t
    })?;
    let got = sleeper.next(Duration::from_secs(5));
    HomeNet::stop(&mut d.child, Duration::from_secs(10));
    Ok(match got {
        Some(topology::SleepEvent::Magic { at, .. }) => {
            let t = at.saturating_duration_since(sent);
            Row::new(figure, ms(t), budget, Some(t <= Duration::from_secs(1)))
        }
        _ => Row::new(
            figure,
            "no magic packet within 5 s".to_string(),
            budget,
            Some(false),
        ),
    })
}
