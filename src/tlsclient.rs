//! HTTPS POSTs through the router's own TLS client, so the binary carries no TLS stack: OpenWrt's
//! `uclient-fetch` (installed by default, TLS from its `libustream-*` library) or `curl` where
//! that is installed. Used by the webhook's background sender only.
//!
//! Both are run with an argument vector (never a shell), told to use no proxy (whatever the
//! environment says), and a deadline after which the child is killed. What each can keep
//! off the command line, read from their sources:
//! - curl reads its options from stdin with `--config -` (curl's manual, "-K, --config"): the URL
//!   and the body go there, so `ps` shows no part of the URL.
//! - uclient-fetch (openwrt/uclient, uclient-fetch.c) takes the URL only as a positional
//!   argument: it is visible in `ps` / `/proc/<pid>/cmdline` to local users while the POST runs
//!   (at most the timeout). The body is read from stdin (`--post-file=/proc/self/fd/0`).
//!
//! So curl is preferred when both exist.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which program speaks TLS for us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Curl,
    UclientFetch,
}

/// Where the programs are looked for (OpenWrt: `/bin/uclient-fetch`, `/usr/bin/curl`).
pub const SEARCH_DIRS: &[&str] = &["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"];

/// Largest body handed to the client. A pipe holds 64 KiB on Linux, so writing this much to the
/// child's stdin never blocks, whatever the child does.
pub const MAX_BODY: usize = 16 * 1024;

/// The router's TLS client and how to call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsClient {
    pub kind: Kind,
    pub program: PathBuf,
    /// Trust only this CA file instead of the system's certificates (tests, private CAs).
    pub ca_file: Option<PathBuf>,
}

/// What a POST came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered with this status (uclient-fetch reports success as 200).
    Status(u16),
    /// No answer; why, in words that never contain the URL.
    Failed(String),
}

impl TlsClient {
    /// The first of curl, uclient-fetch found in `dirs`.
    pub fn find_in(dirs: &[&str]) -> Option<TlsClient> {
        for (kind, name) in [(Kind::Curl, "curl"), (Kind::UclientFetch, "uclient-fetch")] {
            for d in dirs {
                let p = Path::new(d).join(name);
                if is_executable(&p) {
                    return Some(TlsClient {
                        kind,
                        program: p,
                        ca_file: None,
                    });
                }
            }
        }
        None
    }

    /// [`TlsClient::find_in`] the usual directories.
    pub fn find() -> Option<TlsClient> {
        Self::find_in(SEARCH_DIRS)
    }

    /// The command line (after the program name). For curl it holds no part of the URL.
    pub fn args(&self, url: &str, timeout: Duration) -> Vec<OsString> {
        let secs = timeout.as_secs().max(1);
        let mut a: Vec<OsString> = Vec::new();
        match self.kind {
            Kind::Curl => {
                // -q first: no ~/.curlrc. The rest of the options arrive on stdin.
                a.extend(["-q", "--config", "-"].map(OsString::from));
            }
            Kind::UclientFetch => {
                a.extend(
                    [
                        "-q".to_string(),
                        // Never through a proxy from the environment.
                        "--no-proxy".into(),
                        "-O".into(),
                        "/dev/null".into(),
                        format!("--timeout={secs}"),
                        "--header=Content-Type: application/json".into(),
                        // Body from stdin: /dev/stdin need not exist on OpenWrt, /proc does.
                        "--post-file=/proc/self/fd/0".into(),
                    ]
                    .map(OsString::from),
                );
                if let Some(ca) = &self.ca_file {
                    let mut o = OsString::from("--ca-certificate=");
                    o.push(ca);
                    a.push(o);
                }
                a.push(url.into());
            }
        }
        a
    }

    /// What the child reads on stdin: curl's whole configuration, or uclient-fetch's body.
    pub fn stdin(&self, url: &str, body: &[u8], timeout: Duration) -> Vec<u8> {
        match self.kind {
            Kind::UclientFetch => body.to_vec(),
            Kind::Curl => {
                let mut c = String::new();
                let mut opt = |name: &str, value: &str| {
                    c.push_str(name);
                    c.push_str(" = \"");
                    c.push_str(&curl_quote(value));
                    c.push_str("\"\n");
                };
                opt("url", url);
                // https only, never a redirect (curl follows none without --location).
                opt("proto", "=https");
                // Never through a proxy from the environment.
                opt("noproxy", "*");
                opt(
                    "max-time",
                    &format!("{:.1}", timeout.as_secs_f64().max(0.1)),
                );
                opt("header", "Content-Type: application/json");
                opt("data-raw", &String::from_utf8_lossy(body));
                opt("output", "/dev/null");
                opt("write-out", "%{http_code}");
                if let Some(ca) = &self.ca_file {
                    opt("cacert", &ca.to_string_lossy());
                }
                c.push_str("silent\n");
                c.into_bytes()
            }
        }
    }

    /// What an exit code without an HTTP status means.
    fn explain(&self, code: Option<i32>) -> String {
        let why = match (self.kind, code) {
            (_, None) => "the TLS client was killed",
            (Kind::Curl, Some(6)) => "host name not found",
            (Kind::Curl, Some(7)) => "cannot connect",
            (Kind::Curl, Some(28)) => "no answer in time",
            (Kind::Curl, Some(35)) => "TLS handshake failed",
            (Kind::Curl, Some(60)) => "the receiver's certificate is not trusted",
            (Kind::Curl, Some(1)) => "curl cannot speak https (built without TLS?)",
            (Kind::UclientFetch, Some(4)) => "cannot connect, or no answer in time",
            (Kind::UclientFetch, Some(5)) => "the receiver's certificate is not trusted",
            (Kind::UclientFetch, Some(8)) => {
                "the receiver answered with an error status or a redirect"
            }
            (Kind::UclientFetch, Some(1)) => {
                "uclient-fetch failed (is a libustream TLS library and ca-bundle installed?)"
            }
            _ => "",
        };
        if why.is_empty() {
            format!("{} failed (exit {})", self.name(), code.unwrap_or(-1))
        } else {
            why.to_string()
        }
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Curl => "curl",
            Kind::UclientFetch => "uclient-fetch",
        }
    }

    /// POSTs `body` as JSON to `url`, everything over within `timeout` (plus a second for the
    /// client to start and report): a child that outlives it is killed.
    pub fn post(&self, url: &str, body: &[u8], timeout: Duration) -> Outcome {
        if body.len() > MAX_BODY {
            return Outcome::Failed("the event is too large".into());
        }
        let deadline = Instant::now() + timeout + Duration::from_secs(1);
        let mut child = match Command::new(&self.program)
            .args(self.args(url, timeout))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(format!("cannot run {}: {e}", self.name())),
        };
        let input = self.stdin(url, body, timeout);
        if let Some(mut stdin) = child.stdin.take() {
            // Fits the pipe (MAX_BODY and a short URL): never blocks. A child that exits early
            // makes this fail (EPIPE; SIGPIPE is ignored by the daemon); its exit code tells why.
            let _ = stdin.write_all(&input);
        }
        let out = read_until_exit(&mut child, deadline);
        let status = match out {
            Some(_) => child.wait().ok(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Failed("no answer in time".into());
            }
        };
        let code = status.and_then(|s| s.code());
        let printed = out.unwrap_or_default();
        match self.kind {
            Kind::Curl => {
                let text = String::from_utf8_lossy(&printed);
                match text.trim().parse::<u16>() {
                    Ok(s) if s >= 100 => Outcome::Status(s),
                    _ => Outcome::Failed(self.explain(code)),
                }
            }
            Kind::UclientFetch if code == Some(0) => Outcome::Status(200),
            Kind::UclientFetch => Outcome::Failed(self.explain(code)),
        }
    }
}

/// Reads the child's stdout (at most a few bytes are kept) until it closes — the child has
/// exited — or the deadline passes (`None`).
fn read_until_exit(child: &mut Child, deadline: Instant) -> Option<Vec<u8>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut out = Vec::new();
    let Some(mut stdout) = child.stdout.take() else {
        return Some(out);
    };
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
        match stdout.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => {
                if out.len() < 64 {
                    out.extend_from_slice(&buf[..n.min(64 - out.len())]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Some(out),
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A value inside double quotes in a curl config file: `\` and `"` escaped (curl's manual,
/// "-K, --config"); control characters cannot occur (URLs are checked, JSON escapes them) and
/// are dropped if they do, so no value can start a new option line.
fn curl_quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://discord.com/api/webhooks/123/SECRET-token?wait=true";

    fn client(kind: Kind) -> TlsClient {
        TlsClient {
            kind,
            program: "/x".into(),
            ca_file: Some("/tmp/ca.pem".into()),
        }
    }

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn curl_keeps_the_url_off_the_command_line() {
        let c = client(Kind::Curl);
        let args = strings(c.args(URL, Duration::from_secs(5)));
        assert_eq!(args, ["-q", "--config", "-"]);
        let conf = String::from_utf8(c.stdin(
            URL,
            br#"{"content":"a \"b\" \\ c"}"#,
            Duration::from_secs(5),
        ))
        .unwrap();
        let lines: Vec<&str> = conf.lines().collect();
        assert_eq!(lines[0], format!("url = \"{URL}\""));
        assert!(lines.contains(&"proto = \"=https\""), "{conf}");
        assert!(lines.contains(&"noproxy = \"*\""), "{conf}");
        assert!(lines.contains(&"max-time = \"5.0\""), "{conf}");
        assert!(lines.contains(&"write-out = \"%{http_code}\""), "{conf}");
        assert!(lines.contains(&"cacert = \"/tmp/ca.pem\""), "{conf}");
        assert!(
            lines.contains(&r#"data-raw = "{\"content\":\"a \\\"b\\\" \\\\ c\"}""#),
            "{conf}"
        );
        assert!(!conf.contains("location"), "{conf}");
    }

    #[test]
    fn no_value_can_inject_a_curl_option() {
        let c = client(Kind::Curl);
        let conf = String::from_utf8(c.stdin(
            "https://h/p\"\nurl = \"https://evil/",
            b"x\"\noutput = \"/etc/passwd",
            Duration::from_secs(1),
        ))
        .unwrap();
        // Exactly one url line and one output line, both ours.
        assert_eq!(conf.lines().filter(|l| l.starts_with("url")).count(), 1);
        assert_eq!(conf.lines().filter(|l| l.starts_with("output")).count(), 1);
        assert!(conf.contains("output = \"/dev/null\""));
    }

    /// uclient-fetch's options as its source defines them (openwrt/uclient uclient-fetch.c:
    /// `--timeout`, `--header`, `--post-file`, `--ca-certificate`, `-O`, `-q`; the URL is the
    /// only positional argument).
    #[test]
    fn uclient_fetch_argv() {
        let c = client(Kind::UclientFetch);
        let args = strings(c.args(URL, Duration::from_millis(4500)));
        assert_eq!(
            args,
            [
                "-q",
                "--no-proxy",
                "-O",
                "/dev/null",
                "--timeout=4",
                "--header=Content-Type: application/json",
                "--post-file=/proc/self/fd/0",
                "--ca-certificate=/tmp/ca.pem",
                URL,
            ]
        );
        assert_eq!(c.stdin(URL, b"{}", Duration::from_secs(1)), b"{}");
        let mut no_ca = c.clone();
        no_ca.ca_file = None;
        let args = strings(no_ca.args(URL, Duration::from_millis(10)));
        assert!(args.contains(&"--timeout=1".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--ca-certificate")));
    }

    #[test]
    fn exit_codes_are_explained_without_the_url() {
        for kind in [Kind::Curl, Kind::UclientFetch] {
            let c = client(kind);
            for code in [
                None,
                Some(1),
                Some(4),
                Some(5),
                Some(6),
                Some(7),
                Some(8),
                Some(28),
                Some(60),
                Some(99),
            ] {
                let why = c.explain(code);
                assert!(!why.is_empty() && !why.contains("SECRET"), "{why}");
            }
        }
    }

    #[test]
    fn finds_curl_before_uclient_fetch() {
        let dir = std::env::temp_dir().join(format!("jd-tls-find-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        assert_eq!(TlsClient::find_in(&[d]), None);
        let put = |name: &str, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.join(name);
            std::fs::write(&p, "").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        put("uclient-fetch", 0o755);
        put("curl", 0o644);
        let found = TlsClient::find_in(&[d]).unwrap();
        assert_eq!(
            found.kind,
            Kind::UclientFetch,
            "a non-executable curl is skipped"
        );
        put("curl", 0o755);
        assert_eq!(TlsClient::find_in(&[d]).unwrap().kind, Kind::Curl);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A stand-in for a client stuck on a dead network (it never answers, never exits): a
    /// script that ignores its arguments and sleeps.
    #[test]
    fn a_client_that_hangs_is_killed_at_the_deadline() {
        let dir = std::env::temp_dir().join(format!("jd-tls-hang-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("stuck-client");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let c = TlsClient {
            kind: Kind::Curl,
            program: script,
            ca_file: None,
        };
        let mut out;
        let mut tries = 0;
        let t = loop {
            let t = Instant::now();
            out = c.post("https://h/p", b"{}", Duration::from_millis(200));
            // Another test thread forking while the script was open for writing makes exec
            // fail with ETXTBSY for a moment.
            match &out {
                Outcome::Failed(why) if why.starts_with("cannot run") && tries < 20 => tries += 1,
                _ => break t,
            }
        };
        let took = t.elapsed();
        assert_eq!(out, Outcome::Failed("no answer in time".into()));
        assert!(took >= Duration::from_millis(1100), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
