//! Typed, validated settings (docs/design.md §4), built from a parsed UCI package.
//!
//! Every option has a default except `jellyfin.url` and `jellyfin.api_key`. An absent option
//! means its default, exactly as LuCI assumes when it drops options equal to their default.

use crate::uci::{self, Package, ParseError, Section, Value};
use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// A string that must never reach a log, a status file or an error message.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    /// The secret itself, for the one place that must send it (the HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<hidden>\""
        })
    }
}

/// `main.log_level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

/// `bandwidth.algorithm`: how the budget is divided between streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Equal,
    Priority,
    Demand,
}

/// `config jellydemon 'main'`.
#[derive(Clone, Debug, PartialEq)]
pub struct Main {
    pub enabled: bool,
    /// Seconds per tick, 1..=300.
    pub interval: u32,
    pub dry_run: bool,
    pub log_level: LogLevel,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
}

/// `config jellyfin 'jellyfin'`.
#[derive(Clone, Debug, PartialEq)]
pub struct Jellyfin {
    /// `http://host:port[/base]`; `None` until the user sets it.
    pub url: Option<String>,
    pub api_key: Secret,
    /// LAN address the media traffic comes from; `None` = the url's host when it is an IP.
    pub server_ip: Option<IpAddr>,
    /// The server's global IPv6 address, which remote IPv6 viewers reach directly (IPv6 is
    /// routed, not forwarded); `None` = `server_ip` when that is IPv6, else learned by the
    /// daemon from the router's neighbour tables.
    pub server_ip6: Option<Ipv6Addr>,
    pub ports: Vec<u16>,
    /// Seconds per HTTP call.
    pub timeout: u32,
    pub manage_limits: bool,
    pub restart_playback: bool,
    pub restart_min_interval: u32,
    pub notify_viewer: bool,
}

/// `config network 'network'`.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    pub wan_interface: String,
    /// Explicit WAN device; wins over `wan_interface` when set.
    pub wan_device: Option<String>,
    /// Logical LAN interface, resolved with ubus like the WAN.
    pub lan_interface: String,
    /// Explicit LAN device; wins over `lan_interface` when set.
    pub lan_device: Option<String>,
    /// The networks `internal` names directly (CIDRs).
    pub internal: Vec<IpNet>,
    /// The interfaces `internal` names: their subnets and prefixes, read from netifd.
    pub internal_interfaces: Vec<String>,
}

/// `config bandwidth 'bandwidth'`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bandwidth {
    /// Uplink capacity in Mbit/s; `None` = take SQM's configured upload.
    pub upload_mbps: Option<f64>,
    pub reserve_mbps: f64,
    /// Percent of capacity the total may use, 1..=100.
    pub target_pct: f64,
    pub algorithm: Algorithm,
    pub min_stream_mbps: f64,
    pub max_stream_mbps: f64,
}

/// One `config user` section.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    /// Jellyfin user name, compared case-insensitively.
    pub name: String,
    pub priority: f64,
    pub min_mbps: Option<f64>,
    pub max_mbps: Option<f64>,
    pub exempt: bool,
}

/// `config shaping 'shaping'`.
#[derive(Clone, Debug, PartialEq)]
pub struct Shaping {
    pub enabled: bool,
    /// Class ceil = share * burst_pct / 100.
    pub burst_pct: u32,
}

/// `config wol 'wol'`: Wake-on-LAN.
#[derive(Clone, Debug, PartialEq)]
pub struct Wol {
    pub enabled: bool,
    pub mac: Option<[u8; 6]>,
    /// SecureOn password (4 or 6 bytes), optional.
    pub password: Option<Vec<u8>>,
    pub interface: String,
    pub broadcast: Option<Ipv4Addr>,
    pub on_connect: bool,
    pub on_session: bool,
    pub cooldown: u32,
    pub idle_minutes: u32,
    /// argv, split without a shell; empty = none.
    pub idle_command: Vec<String>,
}

/// `config publish 'publish'`.
#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    pub prometheus_file: Option<PathBuf>,
    pub webhook_url: Option<String>,
}

/// The whole validated configuration (docs/design.md §4).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub main: Main,
    pub jellyfin: Jellyfin,
    pub network: Network,
    pub bandwidth: Bandwidth,
    pub users: Vec<User>,
    pub shaping: Shaping,
    pub wol: Wol,
    pub publish: Publish,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            main: Main {
                enabled: false,
                interval: 5,
                dry_run: false,
                log_level: LogLevel::Info,
                state_dir: PathBuf::from("/etc/jellydemon"),
                run_dir: PathBuf::from("/var/run/jellydemon"),
            },
            jellyfin: Jellyfin {
                url: None,
                api_key: Secret::default(),
                server_ip: None,
                server_ip6: None,
                ports: vec![8096],
                timeout: 5,
                manage_limits: true,
                restart_playback: true,
                restart_min_interval: 600,
                notify_viewer: true,
            },
            network: Network {
                wan_interface: "wan".into(),
                wan_device: None,
                lan_interface: "lan".into(),
                lan_device: None,
                internal: Vec::new(),
                internal_interfaces: vec!["lan".into()],
            },
            bandwidth: Bandwidth {
                upload_mbps: None,
                reserve_mbps: 2.0,
                target_pct: 90.0,
                algorithm: Algorithm::Equal,
                min_stream_mbps: 1.0,
                max_stream_mbps: 20.0,
            },
            users: Vec::new(),
            shaping: Shaping {
                enabled: true,
                burst_pct: 115,
            },
            wol: Wol {
                enabled: false,
                mac: None,
                password: None,
                interface: "br-lan".into(),
                broadcast: None,
                on_connect: true,
                on_session: true,
                cooldown: 60,
                idle_minutes: 0,
                idle_command: Vec::new(),
            },
            publish: Publish {
                prometheus_file: None,
                webhook_url: None,
            },
        }
    }
}

impl Config {
    /// The per-user settings for a Jellyfin user name (case-insensitive), if any.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| same_user(&u.name, name))
    }

    /// The server's IPv6 address for shaping and counting: `server_ip6`, else `server_ip` (or
    /// the url's host) when that is IPv6. `None`: the server's IPv6 traffic is left alone.
    pub fn server_ip6(&self) -> Option<Ipv6Addr> {
        self.jellyfin.server_ip6.or(match self.server_ip() {
            Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => Some(v6),
            _ => None,
        })
    }

    /// The server's LAN address: `server_ip`, else the url's host when that is an IP literal.
    pub fn server_ip(&self) -> Option<IpAddr> {
        if let Some(ip) = self.jellyfin.server_ip {
            return Some(ip);
        }
        let url = self.jellyfin.url.as_deref()?;
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
        let authority = rest.split('/').next().unwrap_or("");
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            authority
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(authority)
        };
        host.parse().ok()
    }
}

/// Jellyfin compares user names without regard to case, in any script.
pub fn same_user(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

// ---- loading and validation ------------------------------------------------------------------

/// The configuration file the daemon reads unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/config/jellydemon";
/// OpenWrt 25.12 and later: `/var/run/uci/<pkg>` overrides `/etc/config/<pkg>` when it exists.
pub const OVERRIDE_DIR: &str = "/var/run/uci";
/// The UCI package name, as `uci show` prints it.
pub const PACKAGE: &str = "jellydemon";
/// Larger files are refused: a router's config is a few KB, and reading must stay cheap.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A validated configuration together with what it was read from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    /// Unknown sections and options, ignored settings; each names the file and line.
    pub warnings: Vec<String>,
    /// The file as parsed (for `config` and the sources in `config --effective`).
    pub package: Package,
    /// The file actually read (it may be the `/var/run/uci` override).
    pub file: PathBuf,
    /// The secrets file as read, when it exists (see [`secrets_path`]).
    pub secrets: Option<(PathBuf, Package)>,
}

/// What went wrong while loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The file could not be read.
    Io,
    /// The file is not valid UCI; uci itself would refuse it.
    Parse(ParseError),
    /// A value is out of range, malformed, or inconsistent with another.
    Invalid,
}

/// A configuration error naming the file, the line and the setting, never the API key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<u32>,
    pub kind: ErrorKind,
    /// E.g. `jellydemon.bandwidth.target_pct: '150' is not allowed (a number from 1 to 100)`.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The file to read for `path`: the `/var/run/uci` override when `path` is the default path
/// and the override exists (OpenWrt 25.12 behaviour), else `path` itself.
pub fn resolve_path(path: &Path) -> PathBuf {
    override_path(path, Path::new(DEFAULT_PATH), Path::new(OVERRIDE_DIR))
}

/// [`resolve_path`] with the default path and the override directory given explicitly.
pub fn override_path(path: &Path, default: &Path, override_dir: &Path) -> PathBuf {
    if path == default {
        if let Some(name) = default.file_name() {
            let candidate = override_dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    path.to_path_buf()
}

/// The UCI package that holds the secrets (`jellyfin.api_key`, `wol.password`,
/// `publish.webhook_url`): a file of its own, because rpcd grants LuCI users access per file,
/// so a role that may read the settings must not be able to read these.
pub const SECRETS_PACKAGE: &str = "jellydemon_secrets";
/// The options kept in [`SECRETS_PACKAGE`], under the same section and option names as in the
/// main file (where they are still read, with a warning, for configurations made before).
pub const SECRET_OPTIONS: &[(&str, &str)] = &[
    ("jellyfin", "api_key"),
    ("wol", "password"),
    ("publish", "webhook_url"),
];

/// The secrets file that goes with the main file `file`: its sibling `<name>_secrets`
/// (`/etc/config/jellydemon` -> `/etc/config/jellydemon_secrets`).
pub fn secrets_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push("_secrets");
    file.with_file_name(name)
}

/// Reads, parses and validates the configuration at `path` (see [`resolve_path`]), with the
/// secrets file beside it (also looked up in the override directory for the default path).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let secrets = if path == Path::new(DEFAULT_PATH) {
        override_path(
            &secrets_path(path),
            &secrets_path(Path::new(DEFAULT_PATH)),
            Path::new(OVERRIDE_DIR),
        )
    } else {
        secrets_path(path)
    };
    load_files(&resolve_path(path), &secrets)
}

/// Reads, parses and validates exactly `file` and its [`secrets_path`], without the override
/// lookup.
pub fn load_file(file: &Path) -> Result<Loaded, ConfigError> {
    load_files(file, &secrets_path(file))
}

/// The main file and the secrets file; a missing secrets file means no secrets there.
fn load_files(file: &Path, secrets: &Path) -> Result<Loaded, ConfigError> {
    let package = read_and_parse(file)?;
    let secrets = match read_and_parse(secrets) {
        Ok(p) => Some((secrets.to_path_buf(), p)),
        Err(ConfigError {
            kind: ErrorKind::Io,
            ..
        }) if !secrets.exists() => None,
        Err(e) => return Err(e),
    };
    let mut loaded = from_packages(
        &package,
        file,
        secrets.as_ref().map(|(f, p)| (p, f.as_path())),
    )?;
    if let Some(w) = secrets.as_ref().and_then(|(f, _)| loose_mode_warning(f)) {
        loaded.warnings.push(w);
    }
    Ok(loaded)
}

/// A secrets file that others may read defeats its purpose; the package installs it 0600.
fn loose_mode_warning(file: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{}: readable by others (mode {mode:03o}): chmod 600 {}",
            file.display(),
            file.display()
        )
    })
}

/// Reads and parses the configuration at `path` (after the override lookup) without
/// validating it: what `jellydemon config` prints, as `uci show` would, also when a value is
/// invalid for jellydemon. Returns the file actually read.
pub fn read_package(path: &Path) -> Result<(Package, PathBuf), ConfigError> {
    let file = resolve_path(path);
    let package = read_and_parse(&file)?;
    Ok((package, file))
}

fn read_and_parse(file: &Path) -> Result<Package, ConfigError> {
    use std::io::Read;
    let io_err = |e: std::io::Error| ConfigError {
        file: file.to_path_buf(),
        line: None,
        kind: ErrorKind::Io,
        message: format!("cannot read: {e}"),
    };
    let mut data = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut data))
        .map_err(io_err)?;
    if data.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError {
            file: file.to_path_buf(),
            line: None,
            kind: ErrorKind::Io,
            message: format!("larger than {MAX_FILE_BYTES} bytes, refused"),
        });
    }
    uci::parse(&data).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        line: None,
        message: e.to_string(),
        kind: ErrorKind::Parse(e),
    })
}

/// The `uci show jellydemon` text of the loaded file.
pub fn render_show(loaded: &Loaded) -> String {
    loaded.package.show(PACKAGE)
}

const BOOL_ALLOWED: &str = "1, on, true, yes, enabled, or 0, off, false, no, disabled";

/// The single-instance sections: (type, name, known options).
const SECTIONS: &[(&str, &str, &[&str])] = &[
    (
        "jellydemon",
        "main",
        &[
            "enabled",
            "interval",
            "dry_run",
            "log_level",
            "state_dir",
            "run_dir",
        ],
    ),
    (
        "jellyfin",
        "jellyfin",
        &[
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
        ],
    ),
    (
        "network",
        "network",
        &[
            "wan_interface",
            "wan_device",
            "lan_interface",
            "lan_device",
            "internal",
        ],
    ),
    (
        "bandwidth",
        "bandwidth",
        &[
            "upload_mbps",
            "reserve_mbps",
            "target_pct",
            "algorithm",
            "min_stream_mbps",
            "max_stream_mbps",
        ],
    ),
    ("shaping", "shaping", &["enabled", "burst_pct"]),
    (
        "wol",
        "wol",
        &[
            "enabled",
            "mac",
            "password",
            "interface",
            "broadcast",
            "on_connect",
            "on_session",
            "cooldown",
            "idle_minutes",
            "idle_command",
        ],
    ),
    ("publish", "publish", &["prometheus_file", "webhook_url"]),
];
const USER_OPTIONS: &[&str] = &["name", "priority", "min_mbps", "max_mbps", "exempt"];

/// Validates a parsed package into a [`Config`]; `file` is only used to name it in messages.
pub fn from_package(pkg: &Package, file: &Path) -> Result<Loaded, ConfigError> {
    from_packages(pkg, file, None)
}

/// [`from_package`] with the secrets package and its file, whose values win over the main
/// file's.
pub fn from_packages(
    pkg: &Package,
    file: &Path,
    secrets: Option<(&Package, &Path)>,
) -> Result<Loaded, ConfigError> {
    let refs = pkg.section_refs();
    let mut warnings = Vec::new();
    let mut c = Config::default();
    // Section index of each entry of `c.users`, to name the first holder of a duplicate name.
    let mut user_secs: Vec<usize> = Vec::new();
    let mut user_names: std::collections::HashMap<String, usize> = Default::default();
    for (i, s) in pkg.sections.iter().enumerate() {
        let r = Reader {
            file,
            sec: s,
            path: format!("{PACKAGE}.{}", refs[i]),
        };
        if s.stype == "user" {
            r.warn_unknown(USER_OPTIONS, &mut warnings);
            let u = r.user()?;
            if let Some(&j) = user_names.get(&u.name.to_lowercase()) {
                let line = s.get("name").map_or(s.line, |o| o.line);
                return Err(r.err_at(
                    line,
                    "name",
                    format!(
                        "{} is not allowed (a user name not already used by {PACKAGE}.{}; names compare case-insensitively)",
                        shown(&u.name),
                        refs[user_secs[j]]
                    ),
                ));
            }
            user_names.insert(u.name.to_lowercase(), c.users.len());
            user_secs.push(i);
            c.users.push(u);
            continue;
        }
        let known = SECTIONS
            .iter()
            .find(|(t, n, _)| Some(*n) == s.name.as_deref() && *t == s.stype);
        if let Some((_, _, opts)) = known {
            r.warn_unknown(opts, &mut warnings);
            match s.stype.as_str() {
                "jellydemon" => r.main(&mut c.main)?,
                "jellyfin" => r.jellyfin(&mut c.jellyfin)?,
                "network" => r.network(&mut c.network)?,
                "bandwidth" => r.bandwidth(&mut c.bandwidth)?,
                "shaping" => r.shaping(&mut c.shaping)?,
                "wol" => r.wol(&mut c.wol)?,
                _ => r.publish(&mut c.publish)?,
            }
            continue;
        }
        if let Some((t, n, _)) = SECTIONS
            .iter()
            .find(|(_, n, _)| Some(*n) == s.name.as_deref())
        {
            return Err(ConfigError {
                file: file.to_path_buf(),
                line: Some(s.line),
                kind: ErrorKind::Invalid,
                message: format!(
                    "{}: section type '{}' is not allowed (the section named '{n}' must be 'config {t} '{n}'')",
                    r.path, s.stype
                ),
            });
        }
        let msg = match SECTIONS.iter().find(|(t, _, _)| *t == s.stype) {
            Some((t, n, _)) => format!(
                "{}: ignored: settings of type '{t}' are read from the section named '{n}' (config {t} '{n}')",
                r.path
            ),
            None => format!("{}: unknown section type '{}', ignored", r.path, s.stype),
        };
        warnings.push(format!("{}:{}: {msg}", file.display(), s.line));
    }
    for (sec, opt) in SECRET_OPTIONS {
        if let Some(o) = named(pkg, sec).and_then(|s| s.get(opt)) {
            if o.value.items().iter().any(|v| !v.is_empty()) {
                warnings.push(format!(
                    "{}:{}: {PACKAGE}.{sec}.{opt}: a secret in the main file, which every LuCI user allowed to see the settings can read; move it to {SECRETS_PACKAGE}.{sec}.{opt} (docs/configuration.md: Secrets)",
                    file.display(),
                    o.line
                ));
            }
        }
    }
    if let Some((spkg, sfile)) = secrets {
        apply_secrets(spkg, sfile, &mut c, &mut warnings)?;
    }
    cross_checks(pkg, file, &c, &mut warnings)?;
    Ok(Loaded {
        config: c,
        warnings,
        package: pkg.clone(),
        file: file.to_path_buf(),
        secrets: secrets.map(|(p, f)| (f.to_path_buf(), p.clone())),
    })
}

/// Takes the secrets from their own package; anything else there is ignored with a warning.
fn apply_secrets(
    pkg: &Package,
    file: &Path,
    c: &mut Config,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let refs = pkg.section_refs();
    for (i, s) in pkg.sections.iter().enumerate() {
        let r = Reader {
            file,
            sec: s,
            path: format!("{SECRETS_PACKAGE}.{}", refs[i]),
        };
        let known = SECRET_OPTIONS
            .iter()
            .find(|(n, _)| Some(*n) == s.name.as_deref() && s.stype == *n);
        let Some((sec, opt)) = known else {
            warnings.push(format!(
                "{}:{}: {}: ignored: only the sections jellyfin, wol and publish (each of its own type) hold secrets",
                file.display(),
                s.line,
                r.path
            ));
            continue;
        };
        r.warn_unknown(&[opt], warnings);
        match *sec {
            "jellyfin" => {
                let key = r.api_key()?;
                if !key.is_empty() {
                    c.jellyfin.api_key = key;
                }
            }
            "wol" => {
                if let Some(p) = r.password()? {
                    c.wol.password = Some(p);
                }
            }
            _ => {
                if let Some(u) = r.webhook()? {
                    c.publish.webhook_url = Some(u);
                }
            }
        }
    }
    Ok(())
}

fn named<'a>(pkg: &'a Package, name: &str) -> Option<&'a Section> {
    let (t, _, _) = SECTIONS.iter().find(|(_, n, _)| *n == name)?;
    pkg.sections
        .iter()
        .find(|s| s.name.as_deref() == Some(name) && s.stype == *t)
}

/// Checks between options; an error names the option whose value breaks the rule.
fn cross_checks(
    pkg: &Package,
    file: &Path,
    c: &Config,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let at = |sec: &str, opt: &str| -> (Option<u32>, String) {
        let line = named(pkg, sec).and_then(|s| s.get(opt)).map(|o| o.line);
        (line, format!("{PACKAGE}.{sec}.{opt}"))
    };
    let fail = |(line, path): (Option<u32>, String), msg: String| ConfigError {
        file: file.to_path_buf(),
        line,
        kind: ErrorKind::Invalid,
        message: format!("{path}: {msg}"),
    };
    let b = &c.bandwidth;
    if b.min_stream_mbps > b.max_stream_mbps {
        let which = if at("bandwidth", "min_stream_mbps").0.is_some() {
            "min_stream_mbps"
        } else {
            "max_stream_mbps"
        };
        return Err(fail(
            at("bandwidth", which),
            format!(
                "min_stream_mbps ({}) must not exceed max_stream_mbps ({})",
                b.min_stream_mbps, b.max_stream_mbps
            ),
        ));
    }
    if c.wol.enabled && c.wol.mac.is_none() {
        return Err(fail(
            at("wol", "enabled"),
            "Wake-on-LAN is enabled but wol.mac is not set (the media server's MAC address)".into(),
        ));
    }
    if c.wol.idle_minutes > 0 && c.wol.idle_command.is_empty() {
        let (line, path) = at("wol", "idle_minutes");
        let place = line.map_or_else(
            || file.display().to_string(),
            |l| format!("{}:{l}", file.display()),
        );
        warnings.push(format!(
            "{place}: {path}: set, but wol.idle_command is empty: nothing will run when idle"
        ));
    }
    if c.main.enabled {
        if c.jellyfin.url.is_none() {
            warnings.push(format!(
                "{}: {PACKAGE}.jellyfin.url is not set: the daemon cannot reach Jellyfin",
                file.display()
            ));
        }
        if c.jellyfin.api_key.is_empty() {
            warnings.push(format!(
                "{}: {SECRETS_PACKAGE}.jellyfin.api_key is not set: Jellyfin will refuse the daemon",
                file.display()
            ));
        }
    }
    Ok(())
}

/// Reads the options of one section, turning bad values into errors that name them.
struct Reader<'a> {
    file: &'a Path,
    sec: &'a Section,
    /// `jellydemon.bandwidth`, `jellydemon.@user[1]`.
    path: String,
}

type R<T> = Result<T, ConfigError>;

impl<'a> Reader<'a> {
    fn err_at(&self, line: u32, opt: &str, msg: String) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: Some(line),
            kind: ErrorKind::Invalid,
            message: format!("{}.{opt}: {msg}", self.path),
        }
    }

    fn bad(&self, line: u32, opt: &str, value: &str, allowed: &str) -> ConfigError {
        self.err_at(
            line,
            opt,
            format!("{} is not allowed ({allowed})", shown(value)),
        )
    }

    fn warn_unknown(&self, known: &[&str], warnings: &mut Vec<String>) {
        for o in &self.sec.options {
            if !known.contains(&o.name.as_str()) {
                warnings.push(format!(
                    "{}:{}: {}.{}: unknown option, ignored",
                    self.file.display(),
                    o.line,
                    self.path,
                    o.name
                ));
            }
        }
    }

    /// The value of a single-valued option and its line; a list is an error.
    fn single(&self, opt: &str, allowed: &str) -> R<Option<(&'a str, u32)>> {
        match self.sec.get(opt) {
            None => Ok(None),
            Some(o) => match &o.value {
                Value::Single(v) => Ok(Some((v.as_str(), o.line))),
                Value::List(_) => Err(self.err_at(
                    o.line,
                    opt,
                    format!("a list is not allowed here (one value: {allowed})"),
                )),
            },
        }
    }

    fn get<T>(&self, opt: &str, allowed: &str, parse: impl Fn(&str) -> Option<T>) -> R<Option<T>> {
        match self.single(opt, allowed)? {
            None => Ok(None),
            Some((v, line)) => parse(v)
                .map(Some)
                .ok_or_else(|| self.bad(line, opt, v, allowed)),
        }
    }

    /// An option that may be given once (`option`) or many times (`list`).
    fn list<T>(
        &self,
        opt: &str,
        allowed: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> R<Option<Vec<T>>> {
        let Some(o) = self.sec.get(opt) else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for (k, item) in o.value.items().into_iter().enumerate() {
            let line = o.item_lines.get(k).copied().unwrap_or(o.line);
            out.push(parse(item).ok_or_else(|| self.bad(line, opt, item, allowed))?);
        }
        Ok(Some(out))
    }

    fn set<T>(
        &self,
        slot: &mut T,
        opt: &str,
        allowed: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> R<()> {
        if let Some(v) = self.get(opt, allowed, parse)? {
            *slot = v;
        }
        Ok(())
    }

    fn flag(&self, slot: &mut bool, opt: &str) -> R<()> {
        self.set(slot, opt, BOOL_ALLOWED, parse_bool)
    }

    fn uint(&self, slot: &mut u32, opt: &str, lo: u32, hi: u32, unit: &str) -> R<()> {
        let allowed = format!("a whole number{unit} from {lo} to {hi}");
        self.set(slot, opt, &allowed, |v| parse_uint(v, lo, hi))
    }

    fn main(&self, m: &mut Main) -> R<()> {
        self.flag(&mut m.enabled, "enabled")?;
        self.uint(&mut m.interval, "interval", 1, 300, " of seconds")?;
        self.flag(&mut m.dry_run, "dry_run")?;
        self.set(
            &mut m.log_level,
            "log_level",
            "error, warn, info or debug",
            |v| match v {
                "error" => Some(LogLevel::Error),
                "warn" => Some(LogLevel::Warn),
                "info" => Some(LogLevel::Info),
                "debug" => Some(LogLevel::Debug),
                _ => None,
            },
        )?;
        let path = "an absolute path without '.' or '..' parts, outside /etc/jellydemon/hooks";
        self.set(&mut m.state_dir, "state_dir", path, parse_own_dir)?;
        self.set(&mut m.run_dir, "run_dir", path, parse_own_dir)
    }

    fn jellyfin(&self, j: &mut Jellyfin) -> R<()> {
        let allowed = "http:// then host[:port][/path], e.g. http://192.168.1.2:8096";
        j.url = match self.single("url", allowed)? {
            Some((v, line))
                if v.get(..8)
                    .is_some_and(|s| s.eq_ignore_ascii_case("https://")) =>
            {
                return Err(self.bad(line, "url", v, JELLYFIN_HTTPS_HINT))
            }
            _ => self.get("url", allowed, |v| {
                v.starts_with("http://").then(|| parse_url(v)).flatten()
            })?,
        };
        j.api_key = self.api_key()?;
        j.server_ip = self.get("server_ip", "an IPv4 or IPv6 address", |v| v.parse().ok())?;
        j.server_ip6 = self.get(
            "server_ip6",
            "the server's global IPv6 address, e.g. 2001:db8:2::2",
            |v| {
                v.parse::<Ipv6Addr>()
                    .ok()
                    .filter(|a| !a.is_unspecified() && !a.is_multicast())
            },
        )?;
        if let Some(mut ports) = self.list("port", "a TCP port from 1 to 65535", parse_port)? {
            let mut seen = Vec::new();
            ports.retain(|p| {
                let new = !seen.contains(p);
                seen.push(*p);
                new
            });
            j.ports = ports;
        }
        self.uint(&mut j.timeout, "timeout", 1, 60, " of seconds")?;
        self.flag(&mut j.manage_limits, "manage_limits")?;
        self.flag(&mut j.restart_playback, "restart_playback")?;
        self.uint(
            &mut j.restart_min_interval,
            "restart_min_interval",
            0,
            86400,
            " of seconds",
        )?;
        self.flag(&mut j.notify_viewer, "notify_viewer")
    }

    /// Never quotes the value: an error here must not leak the key.
    fn api_key(&self) -> R<Secret> {
        let Some(o) = self.sec.get("api_key") else {
            return Ok(Secret::default());
        };
        match &o.value {
            Value::Single(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()) => {
                Ok(Secret(v.clone()))
            }
            Value::Single(_) => Err(self.err_at(
                o.line,
                "api_key",
                "the value is not allowed (printable ASCII without spaces, as Jellyfin's API keys are; value not shown)"
                    .into(),
            )),
            Value::List(_) => Err(self.err_at(
                o.line,
                "api_key",
                "a list is not allowed here (one API key; value not shown)".into(),
            )),
        }
    }

    fn network(&self, n: &mut Network) -> R<()> {
        self.set(
            &mut n.wan_interface,
            "wan_interface",
            "a logical interface name: letters, digits and _",
            |v| valid_uci_name(v).then(|| v.to_string()),
        )?;
        let dev = "a network device name: 1 to 15 characters, no spaces, '/' or ':'";
        n.wan_device = self.get("wan_device", dev, parse_ifname)?;
        self.set(
            &mut n.lan_interface,
            "lan_interface",
            "a logical interface name: letters, digits and _",
            |v| valid_uci_name(v).then(|| v.to_string()),
        )?;
        n.lan_device = self.get("lan_device", dev, parse_ifname)?;
        if let Some(items) = self.list(
            "internal",
            "an IPv4 or IPv6 network (e.g. 192.168.0.0/16 or fc00::/7) or an interface name (e.g. lan)",
            parse_internal,
        )? {
            n.internal = items.iter().filter_map(|i| i.clone().ok()).collect();
            n.internal_interfaces = items.into_iter().filter_map(|i| i.err()).collect();
        }
        Ok(())
    }

    fn bandwidth(&self, b: &mut Bandwidth) -> R<()> {
        b.upload_mbps = self.get(
            "upload_mbps",
            "a decimal number of Mbit/s above 0 and at most 100000, with '.' as decimal point",
            |v| parse_dec(v, 0.0, false, 100_000.0),
        )?;
        let mbps = "a decimal number of Mbit/s from 0 to 100000, with '.' as decimal point";
        self.set(&mut b.reserve_mbps, "reserve_mbps", mbps, |v| {
            parse_dec(v, 0.0, true, 100_000.0)
        })?;
        self.set(
            &mut b.target_pct,
            "target_pct",
            "a number from 1 to 100",
            |v| parse_dec(v, 1.0, true, 100.0),
        )?;
        self.set(
            &mut b.algorithm,
            "algorithm",
            "equal, priority or demand",
            |v| match v {
                "equal" => Some(Algorithm::Equal),
                "priority" => Some(Algorithm::Priority),
                "demand" => Some(Algorithm::Demand),
                _ => None,
            },
        )?;
        let stream =
            "a decimal number of Mbit/s above 0 and at most 10000, with '.' as decimal point";
        let pos = |v: &str| parse_dec(v, 0.0, false, 10_000.0);
        self.set(&mut b.min_stream_mbps, "min_stream_mbps", stream, pos)?;
        self.set(&mut b.max_stream_mbps, "max_stream_mbps", stream, pos)
    }

    fn user(&self) -> R<User> {
        let name = self.get("name", "a Jellyfin user name", |v| Some(v.to_string()))?;
        let Some(name) = name else {
            return Err(ConfigError {
                file: self.file.to_path_buf(),
                line: Some(self.sec.line),
                kind: ErrorKind::Invalid,
                message: format!(
                    "{}: option 'name' is required (the Jellyfin user name this section applies to)",
                    self.path
                ),
            });
        };
        let mut u = User {
            name,
            priority: 1.0,
            min_mbps: None,
            max_mbps: None,
            exempt: false,
        };
        self.set(
            &mut u.priority,
            "priority",
            "a decimal number above 0 and at most 1000, with '.' as decimal point",
            |v| parse_dec(v, 0.0, false, 1000.0),
        )?;
        let mbps =
            "a decimal number of Mbit/s above 0 and at most 10000, with '.' as decimal point";
        let pos = |v: &str| parse_dec(v, 0.0, false, 10_000.0);
        u.min_mbps = self.get("min_mbps", mbps, pos)?;
        u.max_mbps = self.get("max_mbps", mbps, pos)?;
        if let (Some(lo), Some(hi)) = (u.min_mbps, u.max_mbps) {
            if lo > hi {
                let line = self.sec.get("min_mbps").map_or(self.sec.line, |o| o.line);
                return Err(self.err_at(
                    line,
                    "min_mbps",
                    format!("min_mbps ({lo}) must not exceed max_mbps ({hi})"),
                ));
            }
        }
        self.flag(&mut u.exempt, "exempt")?;
        Ok(u)
    }

    fn shaping(&self, s: &mut Shaping) -> R<()> {
        self.flag(&mut s.enabled, "enabled")?;
        self.uint(&mut s.burst_pct, "burst_pct", 100, 1000, " (percent)")
    }

    fn wol(&self, w: &mut Wol) -> R<()> {
        self.flag(&mut w.enabled, "enabled")?;
        w.mac = self.get(
            "mac",
            "a unicast MAC address like aa:bb:cc:dd:ee:ff (or with '-'), not all zero",
            |v| parse_mac(v).filter(|m| m[0] & 1 == 0 && *m != [0; 6]),
        )?;
        w.password = self.password()?;
        let dev = "a network device name: 1 to 15 characters, no spaces, '/' or ':'";
        self.set(&mut w.interface, "interface", dev, parse_ifname)?;
        w.broadcast = self.get("broadcast", "an IPv4 address", |v| v.parse().ok())?;
        self.flag(&mut w.on_connect, "on_connect")?;
        self.flag(&mut w.on_session, "on_session")?;
        self.uint(&mut w.cooldown, "cooldown", 0, 86400, " of seconds")?;
        self.uint(
            &mut w.idle_minutes,
            "idle_minutes",
            0,
            525_600,
            " of minutes",
        )?;
        if let Some((v, line)) = self.single("idle_command", "a command line")? {
            let argv = split_argv(v).map_err(|why| {
                self.bad(
                    line,
                    "idle_command",
                    v,
                    &format!("a command and its arguments, split at spaces, with '...' or \"...\" quoting; {why}"),
                )
            })?;
            // Whoever may edit the settings (a LuCI role) must not be able to run any program
            // as root: only programs root put into the hooks directory are allowed.
            if argv.first().is_some_and(|p| !is_hook(p)) {
                return Err(self.bad(
                    line,
                    "idle_command",
                    v,
                    &format!("a program in {HOOKS_DIR}/ and its arguments, e.g. {HOOKS_DIR}/poweroff-nas; put the commands into that script"),
                ));
            }
            w.idle_command = argv;
        }
        Ok(())
    }

    fn publish(&self, p: &mut Publish) -> R<()> {
        p.prometheus_file = self.get(
            "prometheus_file",
            "an absolute file path ending in .prom, without '.' or '..' parts",
            parse_prom_file,
        )?;
        p.webhook_url = self.webhook()?;
        Ok(())
    }

    fn password(&self) -> R<Option<Vec<u8>>> {
        self.get(
            "password",
            "a SecureOn password: 6 bytes like aa:bb:cc:dd:ee:ff, or 4 bytes like 192.168.1.1",
            parse_password,
        )
    }

    /// The URL's path usually holds the webhook's token: never echo it.
    fn webhook(&self) -> R<Option<String>> {
        let Some((v, line)) = self.single("webhook_url", "an http:// or https:// URL")? else {
            return Ok(None);
        };
        parse_webhook(v).map(Some).ok_or_else(|| {
            self.err_at(
                line,
                "webhook_url",
                "the value is not allowed (http:// or https:// then host[:port][/path][?query]; value not shown)".into(),
            )
        })
    }
}

/// A value as quoted in messages: like `uci show`, with control characters escaped and long
/// values cut, so a message stays one readable line.
fn shown(v: &str) -> String {
    let mut out = String::new();
    for (i, ch) in v.chars().enumerate() {
        if i == 80 {
            out.push_str("...");
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else {
            out.push(ch);
        }
    }
    uci::show_quote(&out)
}

/// OpenWrt's boolean words (`/lib/functions.sh` `get_bool`).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "on" | "true" | "yes" | "enabled" => Some(true),
        "0" | "off" | "false" | "no" | "disabled" => Some(false),
        _ => None,
    }
}

/// Plain decimal digits, no sign, within `lo..=hi`.
pub fn parse_uint(v: &str, lo: u32, hi: u32) -> Option<u32> {
    if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = v.parse().ok()?;
    (u64::from(lo)..=u64::from(hi))
        .contains(&n)
        .then_some(n as u32)
}

/// A decimal number with `.` as decimal point (`12`, `12.5`, `.5`), no sign or exponent,
/// above `lo` (or equal when `lo_inclusive`) and at most `hi`.
pub fn parse_dec(v: &str, lo: f64, lo_inclusive: bool, hi: f64) -> Option<f64> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if v.len() > 32 || (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let n = crate::decimal::parse(v)?;
    let above = if lo_inclusive { n >= lo } else { n > lo };
    (above && n <= hi).then_some(n)
}

fn parse_port(v: &str) -> Option<u16> {
    parse_uint(v, 1, 65535).and_then(|p| u16::try_from(p).ok())
}

/// A network in CIDR form; a bare address means that one host.
fn parse_cidr(v: &str) -> Option<IpNet> {
    if let Ok(n) = v.parse::<IpNet>() {
        return Some(n);
    }
    v.parse::<IpAddr>().ok().map(IpNet::from)
}

/// One `internal` item: a network (`Ok`) or a netifd interface name (`Err`).
fn parse_internal(v: &str) -> Option<Result<IpNet, String>> {
    if let Some(n) = parse_cidr(v) {
        return Some(Ok(n));
    }
    // A name has no '.', ':' or '/', so a mistyped address is never taken for one.
    (valid_uci_name(v) && v.len() <= 64).then(|| Err(v.to_string()))
}

/// Where `wol.idle_command` programs must live: root puts them there (LuCI cannot write
/// files), so a role that may edit the settings chooses among them but cannot add one.
pub const HOOKS_DIR: &str = "/etc/jellydemon/hooks";

/// An absolute path without `.`, `..` or empty parts, so prefix checks on it mean what they
/// say.
fn parse_abs_path(v: &str) -> Option<PathBuf> {
    let clean = v.starts_with('/')
        && v.len() > 1
        && !v.chars().any(char::is_control)
        && v[1..]
            .trim_end_matches('/')
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    clean.then(|| PathBuf::from(v))
}

fn is_hook(program: &str) -> bool {
    program
        .strip_prefix(HOOKS_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| !name.is_empty() && !name.ends_with('/'))
        && parse_abs_path(program).is_some()
}

/// `state_dir` and `run_dir`: the daemon writes its own files there, never into the hooks.
fn parse_own_dir(v: &str) -> Option<PathBuf> {
    let p = parse_abs_path(v)?;
    (!p.starts_with(HOOKS_DIR)).then_some(p)
}

/// The textfile collector reads `*.prom`; requiring the suffix keeps a root-written file away
/// from every file the system itself uses.
fn parse_prom_file(v: &str) -> Option<PathBuf> {
    let p = parse_abs_path(v)?;
    let name = p.file_name()?.to_str()?;
    (name.len() > ".prom".len() && name.ends_with(".prom") && !v.ends_with('/')).then_some(p)
}

/// A Linux interface name as the kernel accepts it (`dev_valid_name`).
fn parse_ifname(v: &str) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() < 16
        && v != "."
        && v != ".."
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    ok.then(|| v.to_string())
}

fn valid_uci_name(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why `jellyfin.url` cannot be https, and what to do instead: the same words in `check`, the
/// LuCI form and docs/how-it-works.md. Calling a TLS client program per request would start processes on
/// every tick and put the API key on its command line or in its environment.
pub const JELLYFIN_HTTPS_HINT: &str = "https is not supported for Jellyfin, jellydemon has no \
     TLS: use the server's LAN http:// address, e.g. http://192.168.1.2:8096; Jellyfin serves \
     http on port 8096 also when https is enabled";

/// `http://` or `https://`, a host (name, IPv4 or `[IPv6]`), an optional port 1..65535 and an
/// optional path; no user info, query or fragment. Trailing slashes are dropped so that the
/// API paths can be appended.
pub fn parse_url(v: &str) -> Option<String> {
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            a => Some(a.strip_prefix(':')?),
        };
        (h, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(p) = port {
        parse_port(p)?;
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (authority.starts_with('[')
            || host.parse::<Ipv4Addr>().is_ok()
            || host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    let path_ok = path
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
    if !host_ok || !path_ok {
        return None;
    }
    Some(v.trim_end_matches('/').to_string())
}

/// A webhook may carry a query string (Discord's `?wait=true`), so only the scheme, host and
/// port are checked as for [`parse_url`].
fn parse_webhook(v: &str) -> Option<String> {
    let base = v.split(['?', '#']).next().unwrap_or(v);
    parse_url(base)?;
    (v.bytes().all(|b| b.is_ascii_graphic())).then(|| v.to_string())
}

/// Six hex bytes separated consistently by `:` or `-`.
pub fn parse_mac(v: &str) -> Option<[u8; 6]> {
    let sep = if v.contains(':') { ':' } else { '-' };
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in v.split(sep) {
        if n == 6 || part.len() != 2 {
            return None;
        }
        out[n] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

/// SecureOn password: 6 bytes in MAC form or 4 bytes in dotted-quad form.
pub fn parse_password(v: &str) -> Option<Vec<u8>> {
    if let Some(m) = parse_mac(v) {
        return Some(m.to_vec());
    }
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    parts
        .iter()
        .map(|p| {
            (!p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u8>().ok())
                .flatten()
        })
        .collect()
}

/// Splits a command line into argv without a shell: whitespace separates words, `'...'` is
/// literal, `"..."` is literal except `\"` and `\\`, a backslash outside quotes escapes the
/// next character. No variables, globs or redirections exist here.
pub fn split_argv(v: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err("a ' quote is not closed"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err("a \" quote is not closed"),
                        },
                        Some(c) => cur.push(c),
                        None => return Err("a \" quote is not closed"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err("it ends with a lone backslash"),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn yes_no(b: bool) -> String {
    (if b { "1" } else { "0" }).to_string()
}

fn or_unset<T: fmt::Display>(v: &Option<T>, unset: &str) -> String {
    v.as_ref()
        .map_or_else(|| unset.to_string(), |v| v.to_string())
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Equal => "equal",
            Algorithm::Priority => "priority",
            Algorithm::Demand => "demand",
        })
    }
}

/// Every setting the daemon uses, defaults included, one per line with its source:
/// `bandwidth.target_pct = 90  (default)`, `jellyfin.url = http://…  (line 7)`.
/// Secrets (the API key, the SecureOn password) show only as `<set>` or `<unset>`.
pub fn effective(loaded: &Loaded) -> String {
    let c = &loaded.config;
    let pkg = &loaded.package;
    let mut out = String::new();
    let mut put = |sec: Option<&Section>, key: &str, opt: &str, value: String| {
        // A secret set in the secrets file comes from there, whatever the main file says.
        let from_secrets = loaded.secrets.as_ref().and_then(|(_, p)| {
            p.sections
                .iter()
                .find(|s| s.name.as_deref() == Some(key) && s.stype == key)
                .and_then(|s| s.get(opt))
                .filter(|o| o.value.items().iter().any(|v| !v.is_empty()))
        });
        let src = match from_secrets {
            Some(o) if SECRET_OPTIONS.contains(&(key, opt)) => {
                format!("{SECRETS_PACKAGE} line {}", o.line)
            }
            _ => sec
                .and_then(|s| s.get(opt))
                .map_or_else(|| "default".to_string(), |o| format!("line {}", o.line)),
        };
        out.push_str(&format!("{key}.{opt} = {value}  ({src})\n"));
    };
    let secret = |set: bool| (if set { "<set>" } else { "<unset>" }).to_string();
    let list = |items: Vec<String>| items.join(" ");

    let s = named(pkg, "main");
    let m = &c.main;
    put(s, "main", "enabled", yes_no(m.enabled));
    put(s, "main", "interval", m.interval.to_string());
    put(s, "main", "dry_run", yes_no(m.dry_run));
    put(s, "main", "log_level", m.log_level.to_string());
    put(s, "main", "state_dir", m.state_dir.display().to_string());
    put(s, "main", "run_dir", m.run_dir.display().to_string());

    let s = named(pkg, "jellyfin");
    let j = &c.jellyfin;
    put(s, "jellyfin", "url", or_unset(&j.url, "<unset>"));
    put(s, "jellyfin", "api_key", secret(!j.api_key.is_empty()));
    let server = match (j.server_ip, c.server_ip()) {
        (Some(ip), _) => ip.to_string(),
        (None, Some(ip)) => format!("{ip} (the url's host)"),
        (None, None) => "<unset: the url's host is not an IP address>".into(),
    };
    put(s, "jellyfin", "server_ip", server);
    let server6 = match (j.server_ip6, c.server_ip()) {
        (Some(ip), _) => ip.to_string(),
        (None, Some(IpAddr::V6(ip))) => format!("{ip} (server_ip)"),
        (None, _) => "<unset: learned from the neighbour table>".into(),
    };
    put(s, "jellyfin", "server_ip6", server6);
    put(
        s,
        "jellyfin",
        "port",
        list(j.ports.iter().map(|p| p.to_string()).collect()),
    );
    put(s, "jellyfin", "timeout", j.timeout.to_string());
    put(s, "jellyfin", "manage_limits", yes_no(j.manage_limits));
    put(
        s,
        "jellyfin",
        "restart_playback",
        yes_no(j.restart_playback),
    );
    put(
        s,
        "jellyfin",
        "restart_min_interval",
        j.restart_min_interval.to_string(),
    );
    put(s, "jellyfin", "notify_viewer", yes_no(j.notify_viewer));

    let s = named(pkg, "network");
    let n = &c.network;
    put(s, "network", "wan_interface", n.wan_interface.clone());
    put(
        s,
        "network",
        "wan_device",
        or_unset(&n.wan_device, "<unset: from wan_interface>"),
    );
    put(s, "network", "lan_interface", n.lan_interface.clone());
    put(
        s,
        "network",
        "lan_device",
        or_unset(&n.lan_device, "<unset: from lan_interface>"),
    );
    put(
        s,
        "network",
        "internal",
        list(
            n.internal_interfaces
                .iter()
                .cloned()
                .chain(n.internal.iter().map(|i| i.to_string()))
                .collect(),
        ),
    );

    let s = named(pkg, "bandwidth");
    let b = &c.bandwidth;
    put(
        s,
        "bandwidth",
        "upload_mbps",
        or_unset(&b.upload_mbps, "<unset: SQM's configured upload>"),
    );
    put(s, "bandwidth", "reserve_mbps", b.reserve_mbps.to_string());
    put(s, "bandwidth", "target_pct", b.target_pct.to_string());
    put(s, "bandwidth", "algorithm", b.algorithm.to_string());
    put(
        s,
        "bandwidth",
        "min_stream_mbps",
        b.min_stream_mbps.to_string(),
    );
    put(
        s,
        "bandwidth",
        "max_stream_mbps",
        b.max_stream_mbps.to_string(),
    );

    let refs = pkg.section_refs();
    let user_secs = pkg
        .sections
        .iter()
        .zip(refs.iter())
        .filter(|(s, _)| s.stype == "user");
    for (u, (s, r)) in c.users.iter().zip(user_secs) {
        let s = Some(s);
        put(s, r, "name", u.name.clone());
        put(s, r, "priority", u.priority.to_string());
        put(
            s,
            r,
            "min_mbps",
            or_unset(&u.min_mbps, "<unset: bandwidth.min_stream_mbps>"),
        );
        put(
            s,
            r,
            "max_mbps",
            or_unset(&u.max_mbps, "<unset: bandwidth.max_stream_mbps>"),
        );
        put(s, r, "exempt", yes_no(u.exempt));
    }

    let s = named(pkg, "shaping");
    put(s, "shaping", "enabled", yes_no(c.shaping.enabled));
    put(s, "shaping", "burst_pct", c.shaping.burst_pct.to_string());

    let s = named(pkg, "wol");
    let w = &c.wol;
    put(s, "wol", "enabled", yes_no(w.enabled));
    let mac = w.mac.map(|m| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    });
    put(s, "wol", "mac", or_unset(&mac, "<unset>"));
    put(s, "wol", "password", secret(w.password.is_some()));
    put(s, "wol", "interface", w.interface.clone());
    put(
        s,
        "wol",
        "broadcast",
        or_unset(&w.broadcast, "<unset: the interface's broadcast>"),
    );
    put(s, "wol", "on_connect", yes_no(w.on_connect));
    put(s, "wol", "on_session", yes_no(w.on_session));
    put(s, "wol", "cooldown", w.cooldown.to_string());
    put(s, "wol", "idle_minutes", w.idle_minutes.to_string());
    let cmd = if w.idle_command.is_empty() {
        "<unset>".to_string()
    } else {
        list(w.idle_command.iter().map(|a| uci::show_quote(a)).collect())
    };
    put(s, "wol", "idle_command", cmd);

    let s = named(pkg, "publish");
    let p = &c.publish;
    let prom = p.prometheus_file.as_ref().map(|f| f.display().to_string());
    put(s, "publish", "prometheus_file", or_unset(&prom, "<unset>"));
    // Only the scheme and host: the path of a webhook URL is its secret token.
    let hook = p.webhook_url.as_ref().map(|u| {
        let rest = u.split_once("://").map_or("", |(_, r)| r);
        let host_len = rest.find(['/', '?']).unwrap_or(rest.len());
        let shown = u.len() - rest.len() + host_len;
        match u.get(..shown) {
            Some(head) if shown < u.len() => format!("{head}/<hidden>"),
            _ => u.clone(),
        }
    });
    put(s, "publish", "webhook_url", or_unset(&hook, "<unset>"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/config/jellydemon";

    fn load_str(src: &str) -> Result<Loaded, ConfigError> {
        let pkg = uci::parse(src.as_bytes()).expect("test input is valid UCI");
        from_package(&pkg, Path::new(FILE))
    }

    fn err(src: &str) -> String {
        match load_str(src) {
            Ok(l) => panic!("accepted: {src}\n{:?}", l.config),
            Err(e) => e.to_string(),
        }
    }

    fn one(stype: &str, name: &str, opt: &str, value: &str) -> String {
        format!(
            "config {stype} '{name}'\n\toption {opt} {}\n",
            uci::show_quote(value)
        )
    }

    /// (type, name, option, bad value, fragment of the allowed-values text)
    #[rustfmt::skip]
    const BAD: &[(&str, &str, &str, &str, &str)] = &[
        ("jellydemon", "main", "enabled", "2", "1, on, true"),
        ("jellydemon", "main", "enabled", "True", "0, off"),
        ("jellydemon", "main", "enabled", "y", "yes"),
        ("jellydemon", "main", "interval", "0", "from 1 to 300"),
        ("jellydemon", "main", "interval", "301", "from 1 to 300"),
        ("jellydemon", "main", "interval", "-5", "from 1 to 300"),
        ("jellydemon", "main", "interval", "5s", "from 1 to 300"),
        ("jellydemon", "main", "interval", "2.5", "whole number"),
        ("jellydemon", "main", "interval", "99999999999999999999", "from 1 to 300"),
        ("jellydemon", "main", "dry_run", "maybe", "disabled"),
        ("jellydemon", "main", "log_level", "verbose", "error, warn, info or debug"),
        ("jellydemon", "main", "log_level", "INFO", "error, warn, info or debug"),
        ("jellydemon", "main", "state_dir", "relative/dir", "an absolute path"),
        ("jellydemon", "main", "run_dir", "var/run", "an absolute path"),
        ("jellyfin", "jellyfin", "url", "192.168.1.2:8096", "http:// then host"),
        ("jellyfin", "jellyfin", "url", "ftp://host", "http:// then host"),
        ("jellyfin", "jellyfin", "url", "http://", "http:// then host"),
        ("jellyfin", "jellyfin", "url", "https://nas:8920", "LAN http:// address"),
        ("jellyfin", "jellyfin", "url", "HTTPS://nas", "no TLS"),
        ("jellyfin", "jellyfin", "url", "http://host:0", "host[:port][/path]"),
        ("jellyfin", "jellyfin", "url", "http://host:70000", "host[:port][/path]"),
        ("jellyfin", "jellyfin", "url", "http://host:port", "host[:port][/path]"),
        ("jellyfin", "jellyfin", "url", "http://user@host", "host[:port][/path]"),
        ("jellyfin", "jellyfin", "url", "http://ho st", "host[:port][/path]"),
        ("jellyfin", "jellyfin", "url", "http://[fe80::1", "host[:port][/path]"),
        ("jellyfin", "jellyfin", "url", "http://[nothex]:80", "host[:port][/path]"),
        ("jellyfin", "jellyfin", "url", "http://host/a?b=c", "host[:port][/path]"),
        ("jellyfin", "jellyfin", "server_ip", "192.168.1", "an IPv4 or IPv6 address"),
        ("jellyfin", "jellyfin", "server_ip", "nas.lan", "an IPv4 or IPv6 address"),
        ("jellyfin", "jellyfin", "server_ip6", "192.168.1.2", "global IPv6 address"),
        ("jellyfin", "jellyfin", "server_ip6", "::", "global IPv6 address"),
        ("jellyfin", "jellyfin", "server_ip6", "ff02::1", "global IPv6 address"),
        ("jellyfin", "jellyfin", "port", "0", "from 1 to 65535"),
        ("jellyfin", "jellyfin", "port", "65536", "from 1 to 65535"),
        ("jellyfin", "jellyfin", "port", "http", "from 1 to 65535"),
        ("jellyfin", "jellyfin", "timeout", "0", "from 1 to 60"),
        ("jellyfin", "jellyfin", "timeout", "61", "from 1 to 60"),
        ("jellyfin", "jellyfin", "manage_limits", "none", "1, on, true"),
        ("jellyfin", "jellyfin", "restart_playback", "-1", "1, on, true"),
        ("jellyfin", "jellyfin", "restart_min_interval", "86401", "from 0 to 86400"),
        ("jellyfin", "jellyfin", "restart_min_interval", "10m", "from 0 to 86400"),
        ("jellyfin", "jellyfin", "notify_viewer", "sure", "1, on, true"),
        ("network", "network", "wan_interface", "wan-6", "letters, digits and _"),
        ("network", "network", "wan_device", "a-very-long-device-name", "1 to 15 characters"),
        ("network", "network", "wan_device", "eth0/1", "no spaces, '/' or ':'"),
        ("network", "network", "wan_device", "eth0:1", "no spaces, '/' or ':'"),
        ("network", "network", "lan_device", "br lan", "no spaces"),
        ("network", "network", "lan_device", "..", "network device name"),
        ("network", "network", "internal", "192.168.0.0/33", "an IPv4 or IPv6 network"),
        ("network", "network", "internal", "fc00::/129", "an IPv4 or IPv6 network"),
        ("network", "network", "internal", "lan-1", "or an interface name"),
        ("network", "network", "internal", "192.168.1", "an IPv4 or IPv6 network"),
        ("network", "network", "internal", "10.0.0.0/8/8", "or an interface name"),
        ("network", "network", "lan_interface", "lan.1", "letters, digits and _"),
        ("bandwidth", "bandwidth", "upload_mbps", "0", "above 0"),
        ("bandwidth", "bandwidth", "upload_mbps", "20,5", "'.' as decimal point"),
        ("bandwidth", "bandwidth", "upload_mbps", "-3", "above 0"),
        ("bandwidth", "bandwidth", "upload_mbps", "1e3", "decimal"),
        ("bandwidth", "bandwidth", "upload_mbps", "20Mbit", "decimal"),
        ("bandwidth", "bandwidth", "upload_mbps", ".", "decimal"),
        ("bandwidth", "bandwidth", "upload_mbps", "inf", "decimal"),
        ("bandwidth", "bandwidth", "upload_mbps", "NaN", "decimal"),
        ("bandwidth", "bandwidth", "reserve_mbps", "-1", "from 0 to 100000"),
        ("bandwidth", "bandwidth", "target_pct", "150", "a number from 1 to 100"),
        ("bandwidth", "bandwidth", "target_pct", "0", "a number from 1 to 100"),
        ("bandwidth", "bandwidth", "target_pct", "0.5", "a number from 1 to 100"),
        ("bandwidth", "bandwidth", "target_pct", "90%", "a number from 1 to 100"),
        ("bandwidth", "bandwidth", "algorithm", "fair", "equal, priority or demand"),
        ("bandwidth", "bandwidth", "min_stream_mbps", "0", "above 0"),
        ("bandwidth", "bandwidth", "max_stream_mbps", "10001", "at most 10000"),
        ("shaping", "shaping", "enabled", "ja", "1, on, true"),
        ("shaping", "shaping", "burst_pct", "99", "from 100 to 1000"),
        ("shaping", "shaping", "burst_pct", "1001", "from 100 to 1000"),
        ("shaping", "shaping", "burst_pct", "115.5", "whole number"),
        ("wol", "wol", "enabled", "x", "1, on, true"),
        ("wol", "wol", "mac", "aa:bb:cc:dd:ee", "unicast MAC address"),
        ("wol", "wol", "mac", "aa:bb:cc:dd:ee:ff:00", "unicast MAC address"),
        ("wol", "wol", "mac", "aabbccddeeff", "unicast MAC address"),
        ("wol", "wol", "mac", "aa:bb-cc:dd:ee:ff", "unicast MAC address"),
        ("wol", "wol", "mac", "gg:bb:cc:dd:ee:ff", "unicast MAC address"),
        ("wol", "wol", "mac", "01:00:5e:00:00:01", "unicast"),
        ("wol", "wol", "mac", "ff:ff:ff:ff:ff:ff", "unicast"),
        ("wol", "wol", "mac", "00:00:00:00:00:00", "not all zero"),
        ("wol", "wol", "password", "abc", "SecureOn password"),
        ("wol", "wol", "password", "1.2.3", "SecureOn password"),
        ("wol", "wol", "password", "1.2.3.256", "SecureOn password"),
        ("wol", "wol", "password", "aa:bb:cc", "SecureOn password"),
        ("wol", "wol", "interface", "", "network device name"),
        ("wol", "wol", "broadcast", "ff02::1", "an IPv4 address"),
        ("wol", "wol", "broadcast", "192.168.1.255/24", "an IPv4 address"),
        ("wol", "wol", "on_connect", "2", "1, on, true"),
        ("wol", "wol", "on_session", "2", "1, on, true"),
        ("wol", "wol", "cooldown", "-1", "from 0 to 86400"),
        ("wol", "wol", "idle_minutes", "1.5", "whole number"),
        ("wol", "wol", "idle_command", "ssh 'nas poweroff", "is not closed"),
        ("wol", "wol", "idle_command", "ssh \"nas", "is not closed"),
        ("wol", "wol", "idle_command", "ssh nas\\", "lone backslash"),
        ("publish", "publish", "prometheus_file", "jellydemon.prom", "an absolute file path"),
    ];

    #[test]
    fn every_bad_value_is_named_with_what_is_allowed() {
        for (t, n, opt, v, allowed) in BAD {
            if v.is_empty() {
                // An empty option is absent in UCI; use a list item to get an empty value.
                let src = format!("config {t} '{n}'\n\tlist {opt} ''\n");
                let e = err(&src);
                assert!(
                    e.contains(&format!("jellydemon.{n}.{opt}: a list is not allowed")),
                    "{e}"
                );
                continue;
            }
            let e = err(&one(t, n, opt, v));
            let head = format!(
                "{FILE}:2: jellydemon.{n}.{opt}: {} is not allowed (",
                uci::show_quote(v)
            );
            assert!(e.starts_with(&head), "{opt}={v}: {e}");
            assert!(e.contains(allowed), "{opt}={v}: {e} lacks {allowed}");
            assert!(e.ends_with(')'), "{e}");
        }
    }

    #[test]
    fn every_option_has_bad_value_cases() {
        for (_, n, opts) in SECTIONS {
            for o in *opts {
                // These two have their own tests, which also check that the value stays hidden.
                if *o == "api_key" || *o == "webhook_url" {
                    continue;
                }
                assert!(
                    BAD.iter().any(|b| b.1 == *n && b.2 == *o),
                    "no bad-value case for {n}.{o}"
                );
            }
        }
    }

    #[test]
    fn the_documented_example_message() {
        let src = "config jellydemon 'main'\n\n\n\nconfig bandwidth 'bandwidth'\n\toption reserve_mbps 2\n\n\n\n\n\n\n\n\toption target_pct '150'\n";
        assert_eq!(
            err(src),
            "/etc/config/jellydemon:14: jellydemon.bandwidth.target_pct: '150' is not allowed (a number from 1 to 100)"
        );
    }

    #[test]
    fn good_values_are_typed() {
        let src = "
config jellydemon 'main'
	option enabled 'yes'
	option interval 300
	option dry_run on
	option log_level debug
	option state_dir /overlay/jd
config jellyfin 'jellyfin'
	option url 'http://[fd00::2]:8096/jf/'
	option api_key 'abc123'
	option server_ip 'fd00::2'
	option port '8096'
	list port '8920'
	list port '8096'
	option timeout 60
	option manage_limits disabled
	option restart_min_interval 0
config network 'network'
	option wan_device 'pppoe-wan'
	option internal '10.1.0.0/16'
	list internal '2001:db8::/32'
	list internal '192.168.5.7'
config bandwidth 'bandwidth'
	option upload_mbps 9.5
	option reserve_mbps 0
	option target_pct .5e0
";
        // `.5e0` is not a decimal: prove the error first, then load the fixed file.
        assert!(err(src).contains("target_pct: '.5e0'"));
        let src = src.replace(".5e0", "85.5");
        let c = load_str(&src).expect("valid").config;
        assert!(c.main.enabled && c.main.dry_run);
        assert_eq!(c.main.interval, 300);
        assert_eq!(c.main.log_level, LogLevel::Debug);
        assert_eq!(c.main.state_dir, PathBuf::from("/overlay/jd"));
        assert_eq!(c.jellyfin.url.as_deref(), Some("http://[fd00::2]:8096/jf"));
        assert_eq!(c.jellyfin.api_key.expose(), "abc123");
        assert_eq!(c.jellyfin.server_ip, Some("fd00::2".parse().expect("ip")));
        assert_eq!(c.jellyfin.ports, vec![8096, 8920]);
        assert_eq!(c.jellyfin.timeout, 60);
        assert!(!c.jellyfin.manage_limits);
        assert_eq!(c.jellyfin.restart_min_interval, 0);
        assert_eq!(c.network.wan_device.as_deref(), Some("pppoe-wan"));
        let nets: Vec<String> = c.network.internal.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.1.0.0/16", "2001:db8::/32", "192.168.5.7/32"]);
        assert_eq!(c.bandwidth.upload_mbps, Some(9.5));
        assert_eq!(c.bandwidth.reserve_mbps, 0.0);
        assert_eq!(c.bandwidth.target_pct, 85.5);
    }

    #[test]
    fn booleans_accept_openwrt_words() {
        for (w, b) in [
            ("1", true),
            ("on", true),
            ("true", true),
            ("yes", true),
            ("enabled", true),
            ("0", false),
            ("off", false),
            ("false", false),
            ("no", false),
            ("disabled", false),
        ] {
            let c = load_str(&one("shaping", "shaping", "enabled", w))
                .expect(w)
                .config;
            assert_eq!(c.shaping.enabled, b, "{w}");
        }
    }

    #[test]
    fn lists_rejected_where_one_value_is_expected() {
        let e = err("config jellydemon 'main'\n\tlist interval 5\n\tlist interval 6\n");
        assert_eq!(
            e,
            "/etc/config/jellydemon:3: jellydemon.main.interval: a list is not allowed here (one value: a whole number of seconds from 1 to 300)"
        );
    }

    #[test]
    fn bad_list_item_names_its_own_line() {
        let e =
            err("config jellyfin 'jellyfin'\n\tlist port 8096\n\tlist port 0\n\tlist port 8920\n");
        assert_eq!(
            e,
            "/etc/config/jellydemon:3: jellydemon.jellyfin.port: '0' is not allowed (a TCP port from 1 to 65535)"
        );
    }

    #[test]
    fn api_key_never_appears_in_errors_or_warnings() {
        let key = "s3cr3t key";
        let e = err(&one("jellyfin", "jellyfin", "api_key", key));
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(e.contains("jellydemon.jellyfin.api_key"), "{e}");
        let e = err("config jellyfin 'jellyfin'\n\tlist api_key s3cr3t\n\tlist api_key other\n");
        assert!(!e.contains("s3cr3t"), "{e}");
        let l = load_str("config jellyfin 'jellyfin'\n\toption api_key s3cr3t\n\toption apikey s3cr3t2\nconfig jellydemon main\n\toption enabled 1\n")
            .expect("valid");
        for w in &l.warnings {
            assert!(!w.contains("s3cr3t"), "{w}");
        }
        assert!(!effective(&l).contains("s3cr3t"));
        assert!(effective(&l).contains("jellyfin.api_key = <set>  (line 2)"));
        assert!(!format!("{:?}", l.config).contains("s3cr3t"));
    }

    #[test]
    fn webhook_token_is_never_echoed() {
        let e = err(&one(
            "publish",
            "publish",
            "webhook_url",
            "discord.com/api/webhooks/1/TOKEN",
        ));
        assert!(!e.contains("TOKEN"), "{e}");
        let l = load_str(&one(
            "publish",
            "publish",
            "webhook_url",
            "https://discord.com/api/webhooks/1/TOKEN?wait=true",
        ))
        .expect("valid");
        assert_eq!(
            l.config.publish.webhook_url.as_deref(),
            Some("https://discord.com/api/webhooks/1/TOKEN?wait=true")
        );
        let eff = effective(&l);
        assert!(!eff.contains("TOKEN"), "{eff}");
        assert!(
            eff.contains("publish.webhook_url = https://discord.com/<hidden>  (line 2)"),
            "{eff}"
        );
    }

    #[test]
    fn min_above_max_is_an_error() {
        let e = err("config bandwidth 'bandwidth'\n\toption min_stream_mbps 25\n");
        assert_eq!(
            e,
            "/etc/config/jellydemon:2: jellydemon.bandwidth.min_stream_mbps: min_stream_mbps (25) must not exceed max_stream_mbps (20)"
        );
        let e = err("config bandwidth 'bandwidth'\n\toption max_stream_mbps 0.5\n");
        assert!(
            e.starts_with("/etc/config/jellydemon:2: jellydemon.bandwidth.max_stream_mbps:"),
            "{e}"
        );
    }

    #[test]
    fn users() {
        let src = "
config user 'admin'
	option name 'Admin'
	option exempt 1
config user
	option name 'alice'
	option priority 2.5
	option min_mbps 2
	option max_mbps 8
config user
	option name bob
";
        let c = load_str(src).expect("valid").config;
        assert_eq!(c.users.len(), 3);
        assert!(c.user("ADMIN").is_some_and(|u| u.exempt));
        let a = c.user("Alice").expect("alice");
        assert_eq!(
            (a.priority, a.min_mbps, a.max_mbps),
            (2.5, Some(2.0), Some(8.0))
        );
        assert_eq!(c.user("bob").map(|u| u.priority), Some(1.0));

        assert_eq!(
            err("config user\n\toption priority 2\n"),
            "/etc/config/jellydemon:1: jellydemon.@user[0]: option 'name' is required (the Jellyfin user name this section applies to)"
        );
        assert_eq!(
            err("config user 'a'\n\toption name Alice\nconfig user\n\toption name alice\n"),
            "/etc/config/jellydemon:4: jellydemon.@user[1].name: 'alice' is not allowed (a user name not already used by jellydemon.a; names compare case-insensitively)"
        );
        assert_eq!(
            err("config user\n\toption name a\nconfig user\n\toption name b\n\toption priority 0\n"),
            "/etc/config/jellydemon:5: jellydemon.@user[1].priority: '0' is not allowed (a decimal number above 0 and at most 1000, with '.' as decimal point)"
        );
        assert!(err("config user\n\toption name a\n\toption priority -1\n")
            .contains("'-1' is not allowed"));
        assert_eq!(
            err("config user\n\toption name a\n\toption min_mbps 5\n\toption max_mbps 4\n"),
            "/etc/config/jellydemon:3: jellydemon.@user[0].min_mbps: min_mbps (5) must not exceed max_mbps (4)"
        );
        assert!(err("config user\n\toption name a\n\toption max_mbps 0\n")
            .contains("max_mbps: '0' is not allowed"));
        assert!(err("config user\n\toption name a\n\toption exempt maybe\n")
            .contains("exempt: 'maybe' is not allowed"));
    }

    #[test]
    fn unknown_things_are_warnings() {
        let l = load_str(
            "config jellydemon 'main'\n\toption enabld 1\nconfig foo\nconfig bandwidth\n\toption target_pct 50\nconfig user\n\toption name x\n\toption colour red\n",
        )
        .expect("valid");
        assert_eq!(
            l.warnings,
            [
                "/etc/config/jellydemon:2: jellydemon.main.enabld: unknown option, ignored",
                "/etc/config/jellydemon:3: jellydemon.@foo[0]: unknown section type 'foo', ignored",
                "/etc/config/jellydemon:4: jellydemon.@bandwidth[0]: ignored: settings of type 'bandwidth' are read from the section named 'bandwidth' (config bandwidth 'bandwidth')",
                "/etc/config/jellydemon:8: jellydemon.@user[0].colour: unknown option, ignored",
            ]
        );
        assert_eq!(l.config.bandwidth.target_pct, 90.0);
    }

    #[test]
    fn known_name_with_wrong_type_is_an_error() {
        assert_eq!(
            err("config main 'main'\n\toption enabled 1\n"),
            "/etc/config/jellydemon:1: jellydemon.main: section type 'main' is not allowed (the section named 'main' must be 'config jellydemon 'main'')"
        );
    }

    #[test]
    fn wol_needs_a_mac_and_idle_needs_a_command() {
        assert_eq!(
            err("config wol 'wol'\n\toption enabled 1\n"),
            "/etc/config/jellydemon:2: jellydemon.wol.enabled: Wake-on-LAN is enabled but wol.mac is not set (the media server's MAC address)"
        );
        let l = load_str("config wol 'wol'\n\toption enabled 1\n\toption mac AA-BB-CC-DD-EE-0F\n\toption password 192.168.1.1\n\toption idle_minutes 30\n").expect("valid");
        assert_eq!(l.config.wol.mac, Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f]));
        assert_eq!(l.config.wol.password, Some(vec![192, 168, 1, 1]));
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
        assert!(l.warnings[0].contains("move it to jellydemon_secrets.wol.password"));
        assert!(l.warnings[1].contains("wol.idle_command is empty"));
        let l = load_str("config wol 'wol'\n\toption password 01:02:03:04:05:06\n").expect("valid");
        assert_eq!(l.config.wol.password, Some(vec![1, 2, 3, 4, 5, 6]));
    }

    #[test]
    fn argv_splitting_never_involves_a_shell() {
        let ok = |s: &str| split_argv(s).expect(s);
        assert_eq!(
            ok("ssh -i /etc/id nas poweroff"),
            ["ssh", "-i", "/etc/id", "nas", "poweroff"]
        );
        assert_eq!(ok("  a   b  "), ["a", "b"]);
        assert_eq!(
            ok("echo 'a b' \"c \\\"d\\\" \\n\" e\\ f"),
            ["echo", "a b", "c \"d\" \\n", "e f"]
        );
        assert_eq!(ok("x '' \"\""), ["x", "", ""]);
        assert_eq!(
            ok("echo $HOME `id` $(id) ; rm *"),
            ["echo", "$HOME", "`id`", "$(id)", ";", "rm", "*"]
        );
        assert_eq!(ok("a'b'\"c\"d"), ["abcd"]);
        assert!(ok("").is_empty());
        assert!(split_argv("'x").is_err());
        assert!(split_argv("\"x\\\"").is_err());
        let l = load_str(
            "config wol 'wol'\n\toption idle_command \"/etc/jellydemon/hooks/off nas 'sudo poweroff'\"\n",
        )
        .expect("valid");
        assert_eq!(
            l.config.wol.idle_command,
            ["/etc/jellydemon/hooks/off", "nas", "sudo poweroff"]
        );
    }

    #[test]
    fn root_only_options_take_only_safe_values() {
        for v in [
            "ssh nas poweroff",
            "/bin/sh -c reboot",
            "/etc/jellydemon/hooks/../../../bin/sh",
            "/etc/jellydemon/hooks/",
            "/etc/jellydemon/hooks",
            "/etc/jellydemon/hooksx/a",
            "/etc/jellydemon/hooks/./a",
            "/etc/jellydemon//hooks/a",
        ] {
            let e = err(&one("wol", "wol", "idle_command", v));
            assert!(
                e.contains("a program in /etc/jellydemon/hooks/"),
                "{v}: {e}"
            );
        }
        for v in ["/etc/jellydemon/hooks/off", "/etc/jellydemon/hooks/a/b x"] {
            load_str(&one("wol", "wol", "idle_command", v)).expect(v);
        }
        for v in [
            "/etc/jellydemon/hooks",
            "/etc/jellydemon/hooks/x",
            "/etc/../tmp",
            "/",
            "relative",
            "/a//b",
        ] {
            for o in ["state_dir", "run_dir"] {
                let e = err(&one("jellydemon", "main", o, v));
                assert!(e.contains("outside /etc/jellydemon/hooks"), "{o} {v}: {e}");
            }
        }
        for v in ["/mnt/usb/jellydemon", "/tmp/x/", "/etc/jellydemon"] {
            load_str(&one("jellydemon", "main", "state_dir", v)).expect(v);
        }
        for v in [
            "/etc/shadow",
            "/etc/init.d/x",
            "/var/prometheus/.prom",
            "/var/x.prom/",
            "/var/../etc/x.prom",
        ] {
            let e = err(&one("publish", "publish", "prometheus_file", v));
            assert!(e.contains("ending in .prom"), "{v}: {e}");
        }
        load_str(&one(
            "publish",
            "publish",
            "prometheus_file",
            "/var/prometheus/jellydemon.prom",
        ))
        .expect("a .prom file");
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let f = dir.join(name);
        std::fs::write(&f, text).unwrap();
        f
    }

    #[test]
    fn secrets_come_from_their_own_file_and_win() {
        let d = std::env::temp_dir().join(format!("jd-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let main = write(
            &d,
            "jellydemon",
            "config jellydemon 'main'\n\toption enabled '1'\n\nconfig jellyfin 'jellyfin'\n\toption url 'http://10.0.0.2:8096'\n\toption api_key 'old-key'\n",
        );
        // Without a secrets file the old place still works, with a warning that names the move.
        let l = load_file(&main).expect("valid");
        assert_eq!(l.config.jellyfin.api_key.expose(), "old-key");
        assert!(l.secrets.is_none());
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(l.warnings[0].contains("jellydemon.jellyfin.api_key: a secret in the main file"));
        assert!(!l.warnings[0].contains("old-key"));

        write(
            &d,
            "jellydemon_secrets",
            "config jellyfin 'jellyfin'\n\toption api_key 'new-key'\n\toption url 'x'\n\nconfig wol 'wol'\n\toption password '01:02:03:04:05:06'\n\nconfig publish 'publish'\n\toption webhook_url 'https://discord.com/api/webhooks/1/tok'\n\nconfig bandwidth 'bandwidth'\n",
        );
        let l = load_file(&main).expect("valid");
        assert_eq!(l.config.jellyfin.api_key.expose(), "new-key");
        assert_eq!(l.config.wol.password, Some(vec![1, 2, 3, 4, 5, 6]));
        assert_eq!(
            l.config.publish.webhook_url.as_deref(),
            Some("https://discord.com/api/webhooks/1/tok")
        );
        // `config` shows the main file only, as `uci show jellydemon` does.
        assert!(!render_show(&l).contains("new-key"));
        let w = l.warnings.join("\n");
        assert!(
            w.contains("jellydemon_secrets.jellyfin.url: unknown option, ignored"),
            "{w}"
        );
        assert!(w.contains("jellydemon_secrets.bandwidth: ignored"), "{w}");
        let eff = effective(&l);
        assert!(
            eff.contains("jellyfin.api_key = <set>  (jellydemon_secrets line 2)"),
            "{eff}"
        );
        assert!(
            eff.contains("wol.password = <set>  (jellydemon_secrets line 6)"),
            "{eff}"
        );
        assert!(!eff.contains("new-key") && !eff.contains("tok"), "{eff}");

        // Others may not read it: a warning (the package installs it 0600).
        use std::os::unix::fs::PermissionsExt;
        let sf = d.join("jellydemon_secrets");
        std::fs::set_permissions(&sf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = load_file(&main).expect("valid").warnings.join("\n");
        assert!(
            w.contains("readable by others (mode 644): chmod 600"),
            "{w}"
        );
        std::fs::set_permissions(&sf, std::fs::Permissions::from_mode(0o600)).unwrap();
        let w = load_file(&main).expect("valid").warnings.join("\n");
        assert!(!w.contains("readable by others"), "{w}");
        // A bad secret is an error naming the secrets file, never the value.
        write(
            &d,
            "jellydemon_secrets",
            "config jellyfin 'jellyfin'\n\toption api_key 'has space'\n",
        );
        let e = load_file(&main).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}:2: jellydemon_secrets.jellyfin.api_key:",
                d.join("jellydemon_secrets").display()
            )),
            "{e}"
        );
        assert!(!e.contains("has space"), "{e}");
        // An unreadable (here: a directory) secrets file is an error, not "no secrets".
        std::fs::remove_file(d.join("jellydemon_secrets")).unwrap();
        std::fs::create_dir(d.join("jellydemon_secrets")).unwrap();
        assert!(load_file(&main).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn secrets_path_is_the_sibling() {
        assert_eq!(
            secrets_path(Path::new("/etc/config/jellydemon")),
            Path::new("/etc/config/jellydemon_secrets")
        );
        assert_eq!(
            secrets_path(Path::new("/tmp/x.conf")),
            Path::new("/tmp/x.conf_secrets")
        );
    }

    #[test]
    fn number_parsers() {
        assert_eq!(parse_dec("12", 0.0, false, 100.0), Some(12.0));
        assert_eq!(parse_dec("12.", 0.0, false, 100.0), Some(12.0));
        assert_eq!(parse_dec(".5", 0.0, false, 100.0), Some(0.5));
        assert_eq!(parse_dec("0", 0.0, false, 100.0), None);
        assert_eq!(parse_dec("0", 0.0, true, 100.0), Some(0.0));
        assert_eq!(parse_dec("+1", 0.0, true, 100.0), None);
        assert_eq!(parse_dec("1.2.3", 0.0, true, 100.0), None);
        assert_eq!(parse_dec("", 0.0, true, 100.0), None);
        assert_eq!(parse_uint("007", 1, 10), Some(7));
        assert_eq!(parse_uint("4294967296", 0, u32::MAX), None);
        assert_eq!(parse_uint("4294967295", 0, u32::MAX), Some(u32::MAX));
        assert_eq!(parse_uint("", 0, 1), None);
    }

    #[test]
    fn urls() {
        for good in [
            "http://192.168.1.2:8096",
            "http://jellyfin.lan",
            "https://media.example.com:443/jellyfin",
            "http://[::1]:8096/",
            "http://[fd00::2]",
            "http://nas",
        ] {
            assert!(parse_url(good).is_some(), "{good}");
        }
        assert_eq!(
            parse_url("http://nas:8096//").as_deref(),
            Some("http://nas:8096")
        );
        for bad in [
            "http:/nas",
            "nas:8096",
            "http://nas:",
            "http://-nas",
            "http://a..b",
            "http://[::1]x",
            "https://h/p ath",
        ] {
            assert!(parse_url(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn empty_option_means_default() {
        let l = load_str("config jellyfin 'jellyfin'\n\toption server_ip ''\n\toption api_key ''\nconfig bandwidth 'bandwidth'\n\toption upload_mbps ''\n").expect("valid");
        assert_eq!(l.config, Config::default());
    }

    #[test]
    fn server_ip_falls_back_to_url_host() {
        let l = load_str(&one(
            "jellyfin",
            "jellyfin",
            "url",
            "http://192.168.1.9:8096/",
        ))
        .expect("valid");
        assert_eq!(
            l.config.server_ip(),
            Some("192.168.1.9".parse().expect("ip"))
        );
        assert!(
            effective(&l).contains("jellyfin.server_ip = 192.168.1.9 (the url's host)  (default)")
        );
    }

    #[test]
    fn effective_lists_every_setting_with_its_source() {
        let src = "config jellydemon 'main'\n\toption interval 10\nconfig jellyfin 'jellyfin'\n\toption url 'http://192.168.1.2:8096'\nconfig user\n\toption name alice\n";
        let l = load_str(src).expect("valid");
        let e = effective(&l);
        for line in [
            "main.enabled = 0  (default)",
            "main.interval = 10  (line 2)",
            "jellyfin.url = http://192.168.1.2:8096  (line 4)",
            "jellyfin.api_key = <unset>  (default)",
            "jellyfin.port = 8096  (default)",
            "network.internal = lan  (default)",
            "bandwidth.upload_mbps = <unset: SQM's configured upload>  (default)",
            "bandwidth.target_pct = 90  (default)",
            "@user[0].name = alice  (line 6)",
            "@user[0].priority = 1  (default)",
            "shaping.burst_pct = 115  (default)",
            "wol.password = <unset>  (default)",
            "publish.webhook_url = <unset>  (default)",
        ] {
            assert!(e.lines().any(|l| l == line), "missing {line:?} in\n{e}");
        }
        // One line per option of every fixed section, plus five per user.
        let fixed: usize = SECTIONS.iter().map(|(_, _, o)| o.len()).sum();
        assert_eq!(e.lines().count(), fixed + 5);
    }

    const SHIPPED: &str = include_str!("../net/jellydemon/files/jellydemon.config");
    const SHIPPED_SECRETS: &str = include_str!("../net/jellydemon/files/jellydemon_secrets.config");

    #[test]
    fn shipped_default_file_is_the_default_config() {
        let main = uci::parse(SHIPPED.as_bytes()).expect("valid UCI");
        let secrets = uci::parse(SHIPPED_SECRETS.as_bytes()).expect("valid UCI");
        let l = from_packages(
            &main,
            Path::new(FILE),
            Some((&secrets, Path::new("/etc/config/jellydemon_secrets"))),
        )
        .expect("default files valid");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let mut want = Config::default();
        want.jellyfin.url = Some("http://192.168.1.2:8096".into());
        assert_eq!(l.config, want);
        // Every fixed section is there (LuCI's form edits existing sections only), and no
        // option but the two LuCI itself keeps: a default spelled out would be deleted by the
        // first Save & Apply of an unrelated change, one pending change each.
        for (t, n, _) in SECTIONS {
            let s = main.sections.iter().find(|s| s.name.as_deref() == Some(n));
            assert!(s.is_some_and(|s| s.stype == *t), "section {n}");
        }
        let options: Vec<String> = main
            .sections
            .iter()
            .flat_map(|s| {
                s.options
                    .iter()
                    .map(move |o| format!("{}.{}", s.stype, o.name))
            })
            .collect();
        assert_eq!(options, ["jellydemon.enabled", "jellyfin.url"]);
        // The secrets file: the three sections, empty.
        let secs: Vec<(&str, Option<&str>, usize)> = secrets
            .sections
            .iter()
            .map(|s| (s.stype.as_str(), s.name.as_deref(), s.options.len()))
            .collect();
        assert_eq!(
            secs,
            [
                ("jellyfin", Some("jellyfin"), 0),
                ("wol", Some("wol"), 0),
                ("publish", Some("publish"), 0)
            ]
        );
    }

    #[test]
    fn effective_of_the_shipped_file_matches_the_documentation() {
        let l = load_str(SHIPPED).expect("valid");
        let e = effective(&l);
        let doc = include_str!("../docs/configuration.md");
        let mut n = 0;
        for line in doc.lines().filter(|l| {
            l.starts_with("      ")
                && l.trim_start().starts_with(|c: char| c.is_ascii_lowercase())
                && l.contains(" = ")
                && l.contains("  (")
        }) {
            assert!(
                e.lines().any(|x| x == line.trim_start()),
                "{line:?} not in\n{e}"
            );
            n += 1;
        }
        assert!(n >= 5, "documentation example not found");
    }

    #[test]
    fn user_names_compare_case_insensitively_beyond_ascii() {
        let e =
            err("config user\n\toption name '\u{c5}sa'\nconfig user\n\toption name '\u{e5}SA'\n");
        assert!(
            e.contains("jellydemon.@user[1].name: '\u{e5}SA' is not allowed"),
            "{e}"
        );
        let c = load_str("config user\n\toption name '\u{c5}sa'\n")
            .expect("valid")
            .config;
        assert!(c.user("\u{e5}sa").is_some());
    }

    #[test]
    fn override_file_wins_only_for_the_default_path() {
        let dir = std::env::temp_dir().join(format!("jd-cfg-{}-override", std::process::id()));
        let etc = dir.join("etc");
        let run = dir.join("run");
        std::fs::create_dir_all(&etc).expect("mkdir");
        std::fs::create_dir_all(&run).expect("mkdir");
        let default = etc.join("jellydemon");
        std::fs::write(&default, "config jellydemon 'main'\n\toption interval 7\n").expect("write");
        assert_eq!(override_path(&default, &default, &run), default);
        std::fs::write(
            run.join("jellydemon"),
            "config jellydemon 'main'\n\toption interval 9\n",
        )
        .expect("write");
        let chosen = override_path(&default, &default, &run);
        assert_eq!(chosen, run.join("jellydemon"));
        assert_eq!(load_file(&chosen).expect("loads").config.main.interval, 9);
        let other = dir.join("other");
        std::fs::write(&other, "").expect("write");
        assert_eq!(override_path(&other, &default, &run), other);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn load_errors_name_the_file() {
        let missing = Path::new("/nonexistent/jellydemon");
        let e = load_file(missing).expect_err("missing");
        assert_eq!(e.kind, ErrorKind::Io);
        assert!(
            e.to_string()
                .starts_with("/nonexistent/jellydemon: cannot read: "),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("jd-cfg-{}-parse", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let f = dir.join("jellydemon");
        std::fs::write(
            &f,
            "config jellydemon main\n\toption interval 5\n\tbogus line\n",
        )
        .expect("write");
        let e = load_file(&f).expect_err("parse error");
        assert!(
            matches!(
                e.kind,
                ErrorKind::Parse(ParseError {
                    line: 3,
                    byte: 1,
                    ..
                })
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "{}: Parse error (invalid command) at line 3, byte 1",
                f.display()
            )
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
