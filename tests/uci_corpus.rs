//! The UCI parser against a corpus whose expected outputs were produced by OpenWrt's own `uci`
//! (commit 66127cd, `uci show jellydemon` on each file): `good/*.uci` must print exactly
//! `good/*.show`, `bad/*.uci` must fail with exactly the message in `bad/*.err`.

use jellydemon::uci;
use proptest::prelude::*;
use std::fs;
use std::path::{Path, PathBuf};

fn fixtures(dir: &str, ext: &str) -> Vec<(PathBuf, PathBuf)> {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/uci")
        .join(dir);
    let mut out: Vec<(PathBuf, PathBuf)> = fs::read_dir(&base)
        .unwrap_or_else(|e| panic!("{}: {e}", base.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "uci"))
        .map(|p| {
            let exp = p.with_extension(ext);
            (p, exp)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn well_formed_files_show_like_uci() {
    let cases = fixtures("good", "show");
    assert!(cases.len() >= 25, "corpus too small: {}", cases.len());
    let mut failures = Vec::new();
    for (input, expected) in cases {
        let src = fs::read(&input).expect("fixture readable");
        // Bytes, not text: uci prints values byte for byte (cli.c `uci_print_value`).
        let want = fs::read(&expected).expect("expected output present");
        match uci::parse(&src) {
            Ok(pkg) => {
                let got = pkg.show_bytes("jellydemon");
                if got != want {
                    failures.push(format!(
                        "{}:\n--- want\n{}--- got\n{}",
                        input.display(),
                        String::from_utf8_lossy(&want),
                        String::from_utf8_lossy(&got)
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected {e}", input.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn malformed_files_fail_like_uci() {
    let cases = fixtures("bad", "err");
    assert!(cases.len() >= 25, "corpus too small: {}", cases.len());
    let mut failures = Vec::new();
    for (input, expected) in cases {
        let src = fs::read(&input).expect("fixture readable");
        let want = fs::read_to_string(&expected).expect("expected error present");
        let want = want.trim_end();
        match uci::parse(&src) {
            Ok(pkg) => failures.push(format!(
                "{}: parsed, but uci says {want}:\n{}",
                input.display(),
                pkg.show("jellydemon")
            )),
            Err(e) => {
                if e.to_string() != want {
                    failures.push(format!("{}: want {want}, got {e}", input.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// 400 generated files (valid and not) with what real `uci show` printed or reported for each.
#[test]
fn generated_files_match_uci_exactly() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/uci/differential.jsonl");
    let text = fs::read_to_string(&path).expect("differential corpus present");
    let mut n = 0;
    let mut failures = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let case: serde_json::Value = serde_json::from_str(line).expect("corpus line is JSON");
        let input = case["input"].as_str().expect("input");
        let got = match uci::parse(input.as_bytes()) {
            Ok(p) => ("show", p.show("jellydemon")),
            Err(e) => ("error", e.to_string()),
        };
        let want = if let Some(s) = case["show"].as_str() {
            ("show", s.to_string())
        } else {
            (
                "error",
                case["error"].as_str().expect("show or error").to_string(),
            )
        };
        if got != want {
            failures.push(format!(
                "case {i} {input:?}:\n want {want:?}\n got  {got:?}"
            ));
        }
        n += 1;
    }
    assert!(n >= 400, "corpus too small: {n}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_default_file_shows_like_uci_and_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("net/jellydemon/files/jellydemon.config");
    let want = fs::read_to_string(root.join("tests/fixtures/uci/default-config.show"))
        .expect("expected output present");
    let loaded = jellydemon::config::load(&file).expect("default file loads");
    assert_eq!(jellydemon::config::render_show(&loaded), want);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let mut expected = jellydemon::config::Config::default();
    expected.jellyfin.url = Some("http://192.168.1.2:8096".into());
    assert_eq!(loaded.config, expected);
    assert!(
        !loaded.config.main.enabled,
        "the package must install disabled"
    );
}

/// Writes a package back in `uci export` form (what `uci commit` and LuCI write).
fn export(pkg: &uci::Package) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut out = String::new();
    for s in &pkg.sections {
        out.push_str(&format!("\nconfig {}", s.stype));
        if let Some(n) = &s.name {
            out.push_str(&format!(" {}", q(n)));
        }
        out.push('\n');
        for o in &s.options {
            match &o.value {
                uci::Value::Single(v) => out.push_str(&format!("\toption {} {}\n", o.name, q(v))),
                uci::Value::List(items) => {
                    for i in items {
                        out.push_str(&format!("\tlist {} {}\n", o.name, q(i)));
                    }
                }
            }
        }
    }
    out.push('\n');
    out
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("config".to_string()),
        Just("option".to_string()),
        Just("list".to_string()),
        Just("package".to_string()),
        Just("c".to_string()),
        Just("o".to_string()),
        Just("l".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("#".to_string()),
        Just(";".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just("\0".to_string()),
        "[a-z_]{1,6}",
        "[ -~]{1,4}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(p) = uci::parse(&data) {
            // The exact bytes and the text reading agree wherever the file is UTF-8.
            let bytes = p.show_bytes("x");
            prop_assert_eq!(p.show("x"), String::from_utf8_lossy(&bytes).into_owned());
        }
    }

    #[test]
    fn random_uci_like_text_never_panics(toks in proptest::collection::vec(token(), 0..60)) {
        let src = toks.concat();
        match uci::parse(src.as_bytes()) {
            Ok(p) => { let _ = p.show("x"); }
            Err(e) => {
                // uci's counters never point outside what was read.
                prop_assert!(e.line as usize <= src.matches('\n').count());
                prop_assert!(e.byte <= src.len());
            }
        }
    }

    /// What uci writes on commit reads back to the same configuration.
    #[test]
    fn export_round_trips(
        sections in proptest::collection::vec(
            (
                "[a-z]{1,5}",
                proptest::option::of("[a-z_0-9]{1,6}"),
                proptest::collection::vec(("[a-z_]{1,5}", "[ -~\n\t]{0,12}", any::<bool>()), 0..5),
            ),
            0..6,
        )
    ) {
        let mut src = String::new();
        for (t, n, opts) in &sections {
            src.push_str(&format!("config {t}"));
            if let Some(n) = n { src.push_str(&format!(" {n}")); }
            src.push('\n');
            for (k, v, list) in opts {
                let kw = if *list { "list" } else { "option" };
                src.push_str(&format!("\t{kw} {k} '{}'\n", v.replace('\'', "'\\''")));
            }
        }
        match uci::parse(src.as_bytes()) {
            Ok(p) => {
                let again = uci::parse(export(&p).as_bytes()).expect("export parses");
                prop_assert_eq!(p.show("x"), again.show("x"));
            }
            // The only possible failure: the same name reused with another type.
            Err(e) => prop_assert_eq!(e.msg, "section of different type overwrites prior section with same name"),
        }
    }
}

const SECTION_HEADS: &[&str] = &[
    "config jellydemon 'main'",
    "config jellyfin 'jellyfin'",
    "config network 'network'",
    "config bandwidth 'bandwidth'",
    "config user",
    "config user 'named'",
    "config shaping 'shaping'",
    "config wol 'wol'",
    "config publish 'publish'",
    "config foo",
    "config main 'main'",
];
const OPTION_NAMES: &[&str] = &[
    "enabled",
    "interval",
    "dry_run",
    "log_level",
    "state_dir",
    "run_dir",
    "url",
    "api_key",
    "server_ip",
    "server_ip6",
    "port",
    "timeout",
    "manage_limits",
    "restart_playback",
    "restart_min_interval",
    "notify_viewer",
    "wan_interface",
    "wan_device",
    "lan_interface",
    "lan_device",
    "internal",
    "upload_mbps",
    "reserve_mbps",
    "target_pct",
    "algorithm",
    "min_stream_mbps",
    "max_stream_mbps",
    "name",
    "priority",
    "min_mbps",
    "max_mbps",
    "exempt",
    "burst_pct",
    "mac",
    "password",
    "interface",
    "broadcast",
    "on_connect",
    "on_session",
    "cooldown",
    "idle_minutes",
    "idle_command",
    "prometheus_file",
    "webhook_url",
    "bogus",
];

fn config_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("0".to_string()),
        Just("1".to_string()),
        Just("yes".to_string()),
        Just("-1".to_string()),
        Just("1.5".to_string()),
        Just("100000000000".to_string()),
        Just("http://192.168.1.2:8096".to_string()),
        Just("aa:bb:cc:dd:ee:ff".to_string()),
        Just("192.168.0.0/16".to_string()),
        Just("fd00::1".to_string()),
        Just("/tmp/x".to_string()),
        Just("ssh 'a b".to_string()),
        "[ -~]{0,10}",
        "\\PC{0,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Validation never panics, whatever the values, and the API key never shows.
    #[test]
    fn validation_never_panics_nor_leaks_the_key(
        sections in proptest::collection::vec(
            (
                0..SECTION_HEADS.len(),
                proptest::collection::vec((0..OPTION_NAMES.len(), config_value(), any::<bool>()), 0..8),
            ),
            0..8,
        ),
        key in "[A-Za-z]{6,12}( x)?",
    ) {
        let key = format!("KEY{key}");
        let mut src = String::new();
        for (h, opts) in &sections {
            src.push_str(SECTION_HEADS[*h]);
            src.push('\n');
            for (o, v, list) in opts {
                let name = OPTION_NAMES[*o];
                let v = if name == "api_key" { key.clone() } else { v.clone() };
                let kw = if *list { "list" } else { "option" };
                src.push_str(&format!("\t{kw} {name} '{}'\n", v.replace('\'', "'\\''")));
            }
        }
        // `config main 'main'` after `config jellydemon 'main'` is uci's own error.
        let parsed = uci::parse(src.as_bytes());
        if let Err(e) = &parsed {
            prop_assert_eq!(e.msg, "section of different type overwrites prior section with same name");
        }
        prop_assume!(parsed.is_ok());
        let pkg = parsed.expect("checked above");
        match jellydemon::config::from_package(&pkg, Path::new("/etc/config/jellydemon")) {
            Ok(l) => {
                let eff = jellydemon::config::effective(&l);
                prop_assert!(!eff.contains(&key));
                for w in &l.warnings {
                    prop_assert!(!w.contains(&key), "{}", w);
                }
                prop_assert_eq!(jellydemon::config::render_show(&l), pkg.show("jellydemon"));
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.contains(&key), "{}", msg);
                prop_assert!(msg.starts_with("/etc/config/jellydemon:"), "{}", msg);
            }
        }
    }
}
