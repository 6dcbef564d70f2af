//! The command line and the daemon's life cycle without namespaces: the real binary against the
//! Jellyfin emulator on loopback (a real HTTP server). No root needed.

#[path = "support/emulator.rs"]
mod emulator;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "0123456789abcdef0123456789abcdef";

fn exe() -> &'static str {
    env!("CARGO_BIN_EXE_jellydemon")
}

static N: AtomicU32 = AtomicU32::new(0);

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Dir {
    let d = std::env::temp_dir().join(format!(
        "jd-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn emulator() -> emulator::Emulator {
    let world = emulator::World::parse(
        &serde_json::json!({
            "api_keys": [{"name": "jellydemon", "token": KEY}],
            "users": [{"name": "alice", "id": "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"}],
            "items": [{"id": "20000000000000000000000000000002", "name": "Two", "bitrate": 2000000}]
        })
        .to_string(),
    )
    .unwrap();
    emulator::Emulator::start(world, &["127.0.0.1:0".to_string()]).unwrap()
}

fn config(dir: &Path, url: &str, extra: &str) -> PathBuf {
    let p = dir.join("jellydemon");
    fs::write(
        &p,
        format!(
            "config jellydemon 'main'\n\toption enabled '1'\n\toption interval '1'\n\toption state_dir '{d}/state'\n\toption run_dir '{d}/run'\n\
             config jellyfin 'jellyfin'\n\toption url '{url}'\n\toption api_key '{KEY}'\n\toption timeout '2'\n\
             config network 'network'\n\toption wan_device 'lo'\n\toption lan_device 'lo'\n\
             config bandwidth 'bandwidth'\n\toption upload_mbps '20'\n\
             config shaping 'shaping'\n\toption enabled '0'\n{extra}",
            d = dir.display()
        ),
    )
    .unwrap();
    p
}

fn jd(cfg: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe())
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Daemon(Child, PathBuf);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(cfg: &Path, dir: &Path, args: &[&str]) -> Daemon {
    let log = dir.join("daemon.log");
    let child = Command::new(exe())
        .arg("--config")
        .arg(cfg)
        .arg("run")
        .arg("--stderr")
        .args(args)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Daemon(child, log)
}

fn status(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&fs::read_to_string(dir.join("run/status.json")).ok()?).ok()
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

#[test]
fn version_and_help() {
    let out = Command::new(exe()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("jellydemon {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(exe()).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for verb in ["run", "check", "status", "restore", "wake", "config"] {
        assert!(text.contains(verb), "--help lists {verb}: {text}");
    }
    let out = Command::new(exe()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "no verb is a usage error");
}

#[test]
fn sighup_reloads_and_a_bad_file_keeps_the_running_configuration() {
    let d = tempdir();
    let emu = emulator();
    let cfg = config(&d.0, &emu.url(), "");
    let daemon = start(&cfg, &d.0, &[]);
    wait_for(Duration::from_secs(10), "a status", || status(&d.0));
    // A broken file: the daemon logs why and keeps going with what it has.
    fs::write(
        &cfg,
        "config jellydemon 'main'\n\toption interval 'often'\n",
    )
    .unwrap();
    signal(&daemon.0, nix::sys::signal::Signal::SIGHUP);
    wait_for(
        Duration::from_secs(5),
        "the reload error in the log",
        || {
            let log = fs::read_to_string(&daemon.1).ok()?;
            log.contains("keeping the running configuration")
                .then_some(())
        },
    );
    let before = status(&d.0).unwrap()["updated"].as_u64().unwrap();
    wait_for(Duration::from_secs(5), "ticks going on", || {
        (status(&d.0)?["updated"].as_u64()? > before).then_some(())
    });
    // A good file with another interval is taken.
    config(&d.0, &emu.url(), "");
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace("option interval '1'", "option interval '3'");
    fs::write(&cfg, text).unwrap();
    signal(&daemon.0, nix::sys::signal::Signal::SIGHUP);
    wait_for(Duration::from_secs(5), "the new interval", || {
        (status(&d.0)?["interval"] == 3).then_some(())
    });
    let mut daemon = daemon;
    signal(&daemon.0, nix::sys::signal::Signal::SIGTERM);
    let t0 = Instant::now();
    let code = wait_for(Duration::from_secs(5), "exit", || {
        daemon.0.try_wait().ok().flatten()
    });
    assert_eq!(code.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        !d.0.join("run/status.json").exists(),
        "status removed on a clean exit"
    );
}

#[test]
fn once_dry_run_writes_a_status_and_exits() {
    let d = tempdir();
    let emu = emulator();
    let cfg = config(&d.0, &emu.url(), "");
    let out = Command::new(exe())
        .arg("--config")
        .arg(&cfg)
        .args(["run", "--once", "--dry-run", "--stderr"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = status(&d.0).expect("status.json");
    assert_eq!(st["version"], 1);
    assert_eq!(st["dry_run"], true);
    assert_eq!(st["jellyfin"]["reachable"], true);
    assert_eq!(st["jellyfin"]["server_version"], "10.11.11");
    assert_eq!(st["wan"]["device"], "lo");
    assert_eq!(st["wan"]["capacity_bps"], 20_000_000);
    assert!(!fs::read_to_string(d.0.join("run/status.json"))
        .unwrap()
        .contains(KEY));
    let (code, table, _) = jd(&cfg, &["status"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("DRY RUN") && table.contains("budget 16.00"),
        "{table}"
    );
}

#[test]
fn unreachable_server_is_reported_not_fatal() {
    let d = tempdir();
    // Nothing listens on this port (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config(&d.0, &format!("http://127.0.0.1:{port}"), "");
    let mut daemon = start(&cfg, &d.0, &[]);
    let st = wait_for(Duration::from_secs(10), "a status", || status(&d.0));
    assert_eq!(st["jellyfin"]["reachable"], false);
    let err = st["jellyfin"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!err.is_empty(), "the error is reported");
    std::thread::sleep(Duration::from_secs(2));
    assert!(daemon.0.try_wait().unwrap().is_none(), "still running");
    let log = fs::read_to_string(&daemon.1).unwrap();
    assert_eq!(
        log.matches("Jellyfin unavailable").count(),
        1,
        "logged once, not every tick: {log}"
    );
    let (code, out, _) = jd(&cfg, &["check"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  Jellyfin unreachable"), "{out}");
}

#[test]
fn check_passes_and_fails_with_hints() {
    let d = tempdir();
    let emu = emulator();
    let cfg = config(&d.0, &emu.url(), "");
    let (code, out, _) = jd(&cfg, &["check"]);
    assert!(
        out.contains("ok    Jellyfin 10.11.11 reachable, API key accepted"),
        "{out}"
    );
    assert!(out.contains("uplink capacity 20.0 Mbit/s"), "{out}");
    // On a build machine bridge netfilter or shaping modules may differ; Jellyfin must pass.
    let _ = code;
    let bad = fs::read_to_string(&cfg)
        .unwrap()
        .replace(KEY, "ffffffffffffffffffffffffffffffff");
    fs::write(&cfg, bad).unwrap();
    let (code, out, _) = jd(&cfg, &["check"]);
    assert_eq!(code, 1);
    assert!(out.contains("FAIL  Jellyfin rejected the API key"), "{out}");
    assert!(out.contains("-> create a key"), "{out}");
    assert!(!out.contains("ffffffff"), "never the key: {out}");
}

#[test]
fn config_verb_and_malformed_files() {
    let d = tempdir();
    let cfg = d.0.join("c");
    fs::write(
        &cfg,
        "config jellydemon 'main'\n\toption enabled '1'\nconfig user\n\toption name 'it'\\''s'\n",
    )
    .unwrap();
    let (code, out, _) = jd(&cfg, &["config"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "jellydemon.main=jellydemon\njellydemon.main.enabled='1'\njellydemon.@user[0]=user\njellydemon.@user[0].name='it'\\''s'\n"
    );
    let (code, out, _) = jd(&cfg, &["config", "--effective"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("bandwidth.target_pct = 90  (default)"),
        "{out}"
    );
    // A file uci reads but jellydemon refuses: `config` still prints what `uci show` prints,
    // names the problem on stderr and exits 0; the daemon and `check` refuse it.
    for (text, needle) in [
        (
            "config jellydemon 'main'\n\toption interval '0'\n",
            "jellydemon.main.interval: '0' is not allowed",
        ),
        (
            "config jellydemon 'main'\n\toption enabled 'maybe'\n",
            "jellydemon.main.enabled",
        ),
        (
            "config bandwidth 'bandwidth'\n\toption target_pct '150'\n",
            "a number from 1 to 100",
        ),
        (
            "config wol 'wol'\n\toption mac 'zz:zz'\n",
            "jellydemon.wol.mac",
        ),
    ] {
        fs::write(&cfg, text).unwrap();
        let (code, out, err) = jd(&cfg, &["config"]);
        let show = jellydemon::uci::parse(text.as_bytes())
            .unwrap()
            .show("jellydemon");
        assert_eq!(
            (code, out.as_str()),
            (0, show.as_str()),
            "config on {text:?}: {err}"
        );
        assert!(err.contains(needle), "config on {text:?}: {err}");
        for verb in [
            &["run", "--once"][..],
            &["check"][..],
            &["config", "--effective"][..],
        ] {
            let (code, out, err) = jd(&cfg, verb);
            assert_eq!(code, 1, "{verb:?} on {text:?}");
            assert!(
                out.contains(needle) || err.contains(needle),
                "{verb:?} on {text:?}: {out}{err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // A file uci itself refuses: every verb exits 1 naming the error.
    for text in [
        "option x y\n",
        "config jellydemon 'main'\n\toption x 'unterminated\n",
    ] {
        fs::write(&cfg, text).unwrap();
        for verb in [&["config"][..], &["run", "--once"][..], &["check"][..]] {
            let (code, out, err) = jd(&cfg, verb);
            assert_eq!(code, 1, "{verb:?} on {text:?}");
            assert!(
                out.contains("Parse error") || err.contains("Parse error"),
                "{verb:?} on {text:?}: {out}{err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
    }
}

/// Bytes that are not UTF-8 are printed as they are. uci's cli.c (openwrt/uci 66127cd,
/// `uci_print_value`) writes a value byte by byte with `fputc`, changing only `'` into
/// `'\''`: no escaping and no re-encoding, so the bytes come out as they are in the file.
#[test]
fn config_prints_bytes_that_are_not_utf8_as_uci_does() {
    let d = tempdir();
    let cfg = d.0.join("c");
    fs::write(
        &cfg,
        b"config jellydemon 'main'\n\toption enabled '1'\nconfig user\n\toption name 'caf\xe9 \xff'\n\tlist note 'it'\\''s \xc3'\n",
    )
    .unwrap();
    let out = Command::new(exe())
        .arg("--config")
        .arg(&cfg)
        .arg("config")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.stdout,
        b"jellydemon.main=jellydemon\njellydemon.main.enabled='1'\njellydemon.@user[0]=user\n\
          jellydemon.@user[0].name='caf\xe9 \xff'\njellydemon.@user[0].note='it'\\''s \xc3'\n"
            .to_vec()
    );
}

#[test]
fn status_without_daemon_and_restore_without_backup() {
    let d = tempdir();
    let emu = emulator();
    let cfg = config(&d.0, &emu.url(), "");
    let (code, _, err) = jd(&cfg, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("not running"), "{err}");
    let (code, out, err) = jd(&cfg, &["restore"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no backed-up limits"), "{out}");
}

#[test]
fn wake_without_mac_is_a_clear_error() {
    let d = tempdir();
    let emu = emulator();
    let cfg = config(&d.0, &emu.url(), "");
    let (code, _, err) = jd(&cfg, &["wake"]);
    assert_eq!(code, 1);
    assert!(err.contains("wol.mac is not set"), "{err}");
}

/// Ctrl-C in a terminal sends SIGINT to the foreground process group: `status --watch` must
/// die of it like any other viewer (only `run` turns SIGINT into a clean-up).
#[test]
fn status_watch_stops_on_sigint() {
    use std::io::BufRead;
    let d = tempdir();
    let emu = emulator();
    let cfg = config(&d.0, &emu.url(), "");
    let mut child = Command::new(exe())
        .arg("--config")
        .arg(&cfg)
        .args(["status", "--watch", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first "not running" line proves the loop runs (and main() is past any set-up).
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("not running"), "{line}");
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("status --watch ignored SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc_sigint()), "{status:?}");
}

fn libc_sigint() -> i32 {
    nix::sys::signal::Signal::SIGINT as i32
}

/// `status --json | head -c0`, `config | head`: a reader that goes away is a normal end of
/// output, not a crash (Rust ignores SIGPIPE, so every write then fails with EPIPE).
#[test]
fn printing_verbs_exit_cleanly_when_stdout_is_closed() {
    let d = tempdir();
    let emu = emulator();
    let cfg = config(&d.0, &emu.url(), "");
    let out = Command::new(exe())
        .arg("--config")
        .arg(&cfg)
        .args(["run", "--once", "--dry-run", "--stderr"])
        .output()
        .unwrap();
    assert!(out.status.success());
    for verb in [
        &["status", "--json"][..],
        &["status"][..],
        &["config"][..],
        &["config", "--effective"][..],
        &["--help"][..],
        &["status", "--help"][..],
        &["--version"][..],
    ] {
        let (rd, wr) = nix::unistd::pipe().unwrap();
        drop(rd);
        let out = Command::new(exe())
            .arg("--config")
            .arg(&cfg)
            .args(verb)
            .stdout(Stdio::from(wr))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{verb:?}: {err}");
        assert!(!err.contains("panicked"), "{verb:?}: {err}");
    }
}

/// The API key in its own file (the layout the package ships): the daemon authenticates with it,
/// `config` prints the settings file alone and finds nothing missing, `--effective` names where
/// the key came from without showing it, and a key left in the settings file is warned about.
#[test]
fn secrets_file_beside_the_config() {
    let d = tempdir();
    let emu = emulator();
    let cfg = config(&d.0, &emu.url(), "");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(
        &cfg,
        text.replace(&format!("\toption api_key '{KEY}'\n"), ""),
    )
    .unwrap();
    let secrets = d.0.join("jellydemon_secrets");
    fs::write(
        &secrets,
        format!("config jellyfin 'jellyfin'\n\toption api_key '{KEY}'\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();

    let out = Command::new(exe())
        .arg("--config")
        .arg(&cfg)
        .args(["run", "--once", "--dry-run", "--stderr"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("api_key") && !err.contains("secret"),
        "no complaint about the key: {err}"
    );
    let st = status(&d.0).expect("status.json");
    assert_eq!(
        st["jellyfin"]["reachable"], true,
        "authenticated with the key"
    );

    let (code, show, err) = jd(&cfg, &["config"]);
    assert_eq!(code, 0);
    assert!(!show.contains("api_key") && !show.contains(KEY), "{show}");
    assert!(
        !err.contains("api_key") && !err.contains("secret"),
        "nothing missing: the key is in the secrets file: {err}"
    );
    let (code, eff, _) = jd(&cfg, &["config", "--effective"]);
    assert_eq!(code, 0);
    assert!(
        eff.contains("jellyfin.api_key = <set>  (jellydemon_secrets line 2)"),
        "{eff}"
    );
    assert!(!eff.contains(KEY));

    // The old place still works, with a warning naming the move (never the key).
    fs::write(&cfg, &text).unwrap();
    fs::remove_file(&secrets).unwrap();
    let (code, _, err) = jd(&cfg, &["config"]);
    assert_eq!(code, 0);
    assert!(
        err.contains("jellydemon.jellyfin.api_key: a secret in the main file")
            && err.contains("move it to jellydemon_secrets.jellyfin.api_key"),
        "{err}"
    );
    assert!(!err.contains(KEY), "{err}");
}
