//! The imperative shell: one synchronous loop that observes, calls the pure `decide`, and acts
//! through the adapters. It also owns start-up recovery, reload on SIGHUP and clean-up on
//! SIGTERM/SIGINT.

use crate::config::Config;
use crate::conntrack::{self, ConnectWatch, FlowCounter, FlowSource};
use crate::decide::{self, Plan};
use crate::firewall::{self, Offload};
use crate::jellyfin::{self, MediaServer, Session};
use crate::limits::{self, Limits};
use crate::monitor::Monitor;
use crate::neigh;
use crate::netifd::{self, LinkWatch};
use crate::observe::{self, RateMeter};
use crate::publish::{self, Event, Webhook};
use crate::shaper::{self, Shaper};
use crate::status::{self, Status, StreamStatus};
use crate::wake::{self, Liveness};
use crate::wol;
use log::{debug, error, info, warn};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The ifb device the shaper owns. No "ifb" in the name, so sqm-scripts never mistakes it
/// for its own.
pub const SHAPER_DEVICE: &str = "jdshape0";
/// Where the kernel's interface counters live.
pub const SYS_ROOT: &str = "/sys";
/// sqm-scripts' configuration, the capacity fallback.
pub const SQM_CONFIG: &str = "/etc/config/sqm";

#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    pub dry_run: bool,
    pub once: bool,
}

/// Signals arrive through self-pipes so the loop can wait on them with `poll`.
pub struct Signals {
    term: UnixStream,
    hup: UnixStream,
}

impl Signals {
    /// Installs the handlers. Call first thing in `main`: SIGHUP's default action would kill
    /// the process, and procd may send one right after start.
    pub fn install() -> std::io::Result<Signals> {
        let (term_r, term_w) = UnixStream::pair()?;
        let (hup_r, hup_w) = UnixStream::pair()?;
        term_r.set_nonblocking(true)?;
        hup_r.set_nonblocking(true)?;
        let term_w2 = term_w.try_clone()?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGTERM, term_w)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGINT, term_w2)?;
        signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, hup_w)?;
        Ok(Signals {
            term: term_r,
            hup: hup_r,
        })
    }
}

fn drain(s: &mut UnixStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let mut got = false;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got = true;
    }
    got
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The bitrate policy for `decide`, from the configuration and the known capacity.
pub fn policy(cfg: &Config, capacity_bps: Option<u64>) -> decide::Policy {
    let mbps = |m: f64| (m * 1_000_000.0).max(0.0) as u64;
    decide::Policy {
        capacity_bps,
        target_pct: cfg.bandwidth.target_pct,
        reserve_bps: mbps(cfg.bandwidth.reserve_mbps),
        algorithm: cfg.bandwidth.algorithm,
        min_bps: mbps(cfg.bandwidth.min_stream_mbps),
        max_bps: mbps(cfg.bandwidth.max_stream_mbps),
        burst_pct: cfg.shaping.burst_pct,
        internal: cfg.network.internal.clone(),
        users: cfg
            .users
            .iter()
            .map(|u| decide::UserRule {
                name: u.name.clone(),
                weight: u.priority,
                min_bps: u.min_mbps.map(mbps),
                max_bps: u.max_mbps.map(mbps),
                exempt: u.exempt,
            })
            .collect(),
        restart_playback: cfg.jellyfin.restart_playback,
        restart_min_interval_s: cfg.jellyfin.restart_min_interval as f64,
    }
}

/// The WAN device: `wan_device` when set, else the device netifd reports for `wan_interface`.
pub fn wan_device(cfg: &Config) -> Result<String, String> {
    match &cfg.network.wan_device {
        Some(d) => Ok(d.clone()),
        None => observe::resolve_interface(&cfg.network.wan_interface),
    }
}

/// The LAN device: `lan_device` when set, else the device netifd reports for `lan_interface`.
pub fn lan_device(cfg: &Config) -> Result<String, String> {
    match &cfg.network.lan_device {
        Some(d) => Ok(d.clone()),
        None => netifd::resolve_device(
            &mut netifd::Ubus,
            &cfg.network.lan_interface,
            "network.lan_device",
        ),
    }
}

/// The WAN interfaces whose delegated IPv6 prefixes are the home's: `wan_interface` and its
/// DHCPv6 twin (`wan6`, as OpenWrt names it), which is where netifd reports the prefix.
pub fn wan_interfaces(cfg: &Config) -> Vec<String> {
    let w = &cfg.network.wan_interface;
    vec![w.clone(), format!("{w}6")]
}

/// What `network.internal` means now: `configured` (its CIDRs) and, when it names interfaces,
/// their networks as netifd reports them (the private ranges when it reports none).
pub fn internal_networks(cfg: &Config, configured: &[ipnet::IpNet]) -> netifd::Internal {
    if cfg.network.internal_interfaces.is_empty() {
        return netifd::Internal {
            nets: configured.to_vec(),
            ..Default::default()
        };
    }
    netifd::resolve_internal(
        &mut netifd::Ubus,
        configured,
        &cfg.network.internal_interfaces,
        &wan_interfaces(cfg),
    )
}

/// The server's IPv6 address from the router's neighbour tables (see [`crate::neigh`]), when
/// the configuration does not give it and `server_ip` is IPv4.
pub fn learn_server_ip6(cfg: &Config, lan_device: &str) -> neigh::Learned {
    let Some(IpAddr::V4(v4)) = cfg.server_ip() else {
        return neigh::Learned::None;
    };
    let Ok(lan) = nix::net::if_::if_nametoindex(lan_device) else {
        return neigh::Learned::None;
    };
    let Some(mac) = std::fs::read_to_string("/proc/net/arp")
        .ok()
        .and_then(|t| neigh::mac_of(&t, v4))
    else {
        return neigh::Learned::None;
    };
    match neigh::ipv6_neighbours(4096) {
        Ok(n) => neigh::learn(&n, mac, lan),
        Err(e) => {
            debug!("IPv6 neighbour table unreadable: {e}");
            neigh::Learned::None
        }
    }
}

/// The uplink capacity: `upload_mbps`, else SQM's configured upload on the WAN device.
pub fn capacity(cfg: &Config, wan_dev: Option<&str>, sqm_path: &Path) -> Option<u64> {
    if let Some(m) = cfg.bandwidth.upload_mbps {
        return Some((m * 1_000_000.0) as u64);
    }
    let dev = wan_dev?;
    let text = std::fs::read(sqm_path).ok()?;
    observe::sqm_upload_bps(&text, dev)
}

/// A Jellyfin client for the configured server, or why there is none.
pub fn server_for(cfg: &Config, timeout: Duration) -> Result<Box<dyn MediaServer>, String> {
    let url = cfg
        .jellyfin
        .url
        .as_deref()
        .ok_or("jellyfin.url is not set")?;
    if cfg.jellyfin.api_key.is_empty() {
        return Err("jellyfin.api_key is not set (Dashboard > API Keys)".into());
    }
    jellyfin::Client::new(
        url,
        &cfg.jellyfin.api_key,
        timeout,
        env!("CARGO_PKG_VERSION"),
    )
    .map(|c| Box::new(c) as Box<dyn MediaServer>)
    .map_err(|e| e.to_string())
}

/// Where per-viewer bytes come from when no tc counters exist: ctnetlink with kernel-side
/// filtering, else a streaming read of /proc/net/nf_conntrack.
pub fn best_flow_source() -> Option<Box<dyn FlowSource>> {
    match conntrack::NetlinkSource::new() {
        Ok(s) => Some(Box::new(s)),
        Err(e) => {
            let p = conntrack::ProcSource::new();
            if p.path().exists() {
                debug!(
                    "conntrack netlink unavailable ({e}); reading {}",
                    p.path().display()
                );
                Some(Box::new(p))
            } else {
                None
            }
        }
    }
}

fn stream_inputs(seen: &[Seen]) -> Vec<decide::StreamIn> {
    seen.iter()
        .map(|s| decide::StreamIn {
            session_id: s.session.id.clone(),
            user_id: s.session.user_id.clone().unwrap_or_default(),
            user_name: s.session.user_name.clone().unwrap_or_default(),
            remote_ip: s.session.remote_ip,
            paused: s.session.play_state.is_paused,
            transcoding: s.session.transcoding.is_some(),
            stream_bps: s.stream_bps,
            source_bps: s.source_bps,
            supports_remote_control: s.session.supports_remote_control,
        })
        .collect()
}

/// How long the restore on SIGTERM may take in all (the promise is 5 s; some is left for tc
/// and the exit).
pub const SHUTDOWN_BUDGET: Duration = Duration::from_millis(4000);

/// The guard's measurement window: the WAN rate over the last half second.
pub const GUARD_PERIOD: Duration = Duration::from_millis(500);
/// How often the guard samples the WAN counter (by the clock, between ticks): the window
/// slides by this step, so a jump is seen within a step of filling the window.
pub const GUARD_STEP: Duration = Duration::from_millis(100);
/// After a packet to a sleeping server, how long the loop ticks every second.
const WAKING_WINDOW: Duration = Duration::from_secs(180);
/// After Jellyfin answered from sleep, how long the loop keeps ticking every second (the
/// viewer who woke it is about to start playing).
const AFTER_WAKE_WINDOW: Duration = Duration::from_secs(60);
/// The tick period while waking.
const WAKING_TICK: Duration = Duration::from_secs(1);

/// What the wake path needs from the configuration.
fn wake_config(cfg: &Config, opts: Options) -> wake::WakeConfig {
    wake::WakeConfig {
        wol: cfg.wol.clone(),
        internal: cfg.network.internal.clone(),
        ports: cfg.jellyfin.ports.clone(),
        dry_run: opts.dry_run || cfg.main.dry_run,
    }
}

/// A stream as this tick saw it, with what the status and the events need.
struct Seen {
    session: Session,
    external: bool,
    stream_bps: Option<u64>,
    source_bps: Option<u64>,
}

pub struct Daemon {
    cfg: Config,
    opts: Options,
    started: Instant,
    server: Option<Box<dyn MediaServer>>,
    server_error: Option<String>,
    shaper: Option<Box<dyn Shaper>>,
    shaper_error: Option<String>,
    flows: Option<(Box<dyn FlowSource>, FlowCounter)>,
    /// The conntrack watch, only when the wake thread could not start (then drained between
    /// ticks, as a fallback).
    connect: Option<ConnectWatch>,
    /// Owns the conntrack watch and sends on-connect wakes, whatever the tick is doing.
    wake_thread: Option<wake::WakeThread>,
    /// The scheduler and the record of sent packets, shared with the wake thread.
    waker: wake::Waker,
    /// Host asleep or awake, as the probes and Jellyfin's answers say.
    presence: wake::Presence,
    /// When Jellyfin last answered after a sleep.
    woke_at: Option<Instant>,
    webhook: Option<Webhook>,
    /// Users' limits and the backup of their originals.
    limits: Limits,
    /// Limit errors of the last tick, so each is logged when it appears, not every tick.
    limit_errors: BTreeSet<String>,
    state: decide::State,
    monitor: Monitor,
    wan_meter: RateMeter,
    /// Rate of the shaper's Jellyfin parent class: all of the server's external upload.
    jf_meter: RateMeter,
    /// Jellyfin's external upload as the last tick measured it (what `decide` used, what the
    /// status shows, what the guard subtracts).
    jellyfin_bps: u64,
    /// The guard's own meter (short windows between ticks).
    guard_wan: observe::WindowMeter,
    guard_last: Option<Instant>,
    wan_dev: Result<String, String>,
    /// The WAN device's interface index when last read: a new one means new counters.
    wan_ifindex: Option<u32>,
    lan_dev: Result<String, String>,
    /// `network.internal`'s own networks, before interfaces are resolved into
    /// `cfg.network.internal` (which then holds every local network).
    internal_configured: Vec<ipnet::IpNet>,
    internal: netifd::Internal,
    links: Option<LinkWatch>,
    /// The server's IPv6 address as the neighbour tables tell it (without `server_ip6`).
    learned_ip6: neigh::Learned,
    offload: Offload,
    ticks: u64,
    capacity_bps: Option<u64>,
    reachable: Option<bool>,
    server_version: Option<String>,
    last_logged_error: Option<String>,
    item_bitrates: HashMap<(String, String), Option<u64>>,
    wol_status: status::WolStatus,
    known: BTreeMap<String, Event>,
    last_plan: Plan,
    last_seen: Vec<Seen>,
    status: Status,
}

impl Daemon {
    pub fn new(cfg: Config, opts: Options) -> Daemon {
        let mut d = Daemon {
            cfg: cfg.clone(),
            opts,
            started: Instant::now(),
            server: None,
            server_error: None,
            shaper: None,
            shaper_error: None,
            flows: None,
            connect: None,
            wake_thread: None,
            waker: wake::Waker::new(wake_config(&cfg, opts)),
            presence: wake::Presence::default(),
            woke_at: None,
            webhook: None,
            limits: Limits::load(&cfg.main.state_dir),
            limit_errors: BTreeSet::new(),
            state: decide::State::default(),
            monitor: Monitor::new(cfg.main.interval),
            wan_meter: RateMeter::default(),
            jf_meter: RateMeter::default(),
            jellyfin_bps: 0,
            guard_wan: observe::WindowMeter::new(GUARD_PERIOD.as_secs_f64()),
            guard_last: None,
            wan_dev: Err("not resolved".into()),
            wan_ifindex: None,
            lan_dev: Err("not resolved".into()),
            internal_configured: cfg.network.internal.clone(),
            internal: netifd::Internal::default(),
            links: None,
            learned_ip6: neigh::Learned::None,
            offload: Offload::Off,
            ticks: 0,
            capacity_bps: None,
            reachable: None,
            server_version: None,
            last_logged_error: None,
            item_bitrates: HashMap::new(),
            wol_status: status::WolStatus::default(),
            known: BTreeMap::new(),
            last_plan: Plan::default(),
            last_seen: Vec::new(),
            status: Status::default(),
        };
        d.configure(cfg);
        d
    }

    fn dry(&self) -> bool {
        self.opts.dry_run || self.cfg.main.dry_run
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// (Re)builds the adapters for a configuration. Used at start and on SIGHUP.
    fn configure(&mut self, cfg: Config) {
        self.cfg = cfg;
        let cfg = &self.cfg;
        let timeout = Duration::from_secs(cfg.jellyfin.timeout as u64);
        match server_for(cfg, timeout) {
            Ok(s) => {
                self.server = Some(s);
                self.server_error = None;
            }
            Err(e) => {
                error!("{e}; Jellyfin limits are not managed");
                self.server = None;
                self.server_error = Some(e);
            }
        }
        self.wan_dev = wan_device(cfg);
        if let Err(e) = &self.wan_dev {
            error!("{e}");
        }
        let old_lan = std::mem::replace(&mut self.lan_dev, Err("not resolved".into()));
        self.internal_configured = self.cfg.network.internal.clone();
        self.resolve_network();
        if self.links.is_none() {
            self.links = LinkWatch::new()
                .map_err(|e| warn!("{e}: interface changes are followed every minute"))
                .ok();
        }
        self.read_offload();
        let cfg = &self.cfg;
        self.capacity_bps = capacity(cfg, self.wan_dev.as_deref().ok(), Path::new(SQM_CONFIG));
        if self.capacity_bps.is_none() {
            error!("uplink capacity unknown: set bandwidth.upload_mbps (or configure SQM on the WAN device); limits are not managed and remote streams pass unlimited");
        }
        self.limits.reconfigure(&cfg.main.state_dir);
        if let Some(e) = self.limits.error() {
            error!("{e}; Jellyfin limits are not managed until it is fixed");
        }
        self.webhook = match cfg.publish.webhook_url.as_deref() {
            None => None,
            Some(u) => match Webhook::new(u, Duration::from_secs(cfg.jellyfin.timeout as u64)) {
                Ok(w) => Some(w.with_secret(&cfg.jellyfin.api_key)),
                Err(e) => {
                    error!("publish.webhook_url: {e}; no webhook events");
                    None
                }
            },
        };
        self.waker.reconfigure(wake_config(cfg, self.opts));
        self.wol_status.enabled = cfg.wol.enabled;

        // Shaping: own tc objects on the LAN side. A changed LAN device means the old tree
        // must go first.
        let lan_changed = old_lan != self.lan_dev;
        if lan_changed {
            if let Some(s) = self.shaper.as_mut() {
                let _ = s.remove();
            }
            self.shaper = None;
        }
        if self.shaper.is_none() && !self.dry() {
            match cfg.server_ip() {
                None => {
                    self.shaper_error = Some(
                        "jellyfin.server_ip unknown (set it, or use an IP address in jellyfin.url); no per-viewer shaping"
                            .into(),
                    )
                }
                Some(_) => {
                    let mut s = shaper::TcShaper::new(SHAPER_DEVICE, "tc");
                    if let Ok(lan) = &self.lan_dev {
                        s = s.with_lan_device(lan);
                    }
                    self.shaper = Some(Box::new(s));
                    self.shaper_error = None;
                }
            }
        }
        if self.flows.is_none() {
            self.flows = best_flow_source().map(|s| (s, FlowCounter::new()));
        }
        self.configure_wake_watch();
        if let Some(e) = &self.shaper_error {
            warn!("{e}");
        }
    }

    /// After a crash or a kill -9, users may still carry limits from the last run: put every
    /// backed-up original back before managing anything. Limits only matter when playback
    /// starts, so this costs running streams nothing. Users that cannot be reached now are
    /// retried every tick until every original is back.
    pub fn recover(&mut self) {
        let pending = self.limits.pending();
        if pending == 0 {
            return;
        }
        info!("restoring {pending} original limit(s) left by a previous run");
        let Some(server) = self.server.as_mut() else {
            warn!("no Jellyfin server configured: the original limits stay in the backup");
            return;
        };
        let problems = self.limits.restore_all(server.as_mut(), true);
        for p in &problems {
            warn!("{p}");
        }
        self.limit_errors = problems.into_iter().collect();
    }

    /// One observe → decide → act round.
    pub fn tick(&mut self) {
        let now = self.now();
        let mut errors: Vec<String> = Vec::new();
        self.follow_network(&mut errors);

        // Observe: the WAN counter.
        let wan_bps = self.read_wan(now, &mut errors);

        // Observe: per-viewer Jellyfin bytes — own tc class counters, else conntrack.
        let counters = self.viewer_counters(&mut errors);
        if let Some(c) = &counters {
            self.monitor.update(now, c);
        }
        // The shaper's Jellyfin class sees every byte the server sends outside, viewers with a
        // class or not yet: the exact figure to subtract from the WAN upload.
        let jf_total = match self.shaper.as_mut().map(|s| s.jellyfin_bytes()) {
            Some(Ok(bytes)) if bytes > 0 => self.jf_meter.update(now, bytes),
            _ => None,
        };

        // Observe: who is streaming.
        let sessions = self.observe_sessions();

        if let Some(sessions) = sessions {
            let seen = self.classify(sessions);
            // Jellyfin's upload to external viewers: each viewer's class counter once it has a
            // rate, else (a class created this tick, or no counter at all) the streams'
            // estimated bitrate, so a new stream's burst is never mistaken for household
            // traffic.
            let jellyfin_bps = jf_total.unwrap_or_else(|| {
                let mut per_ip: BTreeMap<IpAddr, u64> = BTreeMap::new();
                for s in seen
                    .iter()
                    .filter(|s| s.external && !s.session.play_state.is_paused)
                {
                    if let Some(ip) = s.session.remote_ip {
                        let e = per_ip.entry(decide::canonical(ip)).or_insert(0);
                        *e = e.saturating_add(s.stream_bps.unwrap_or(0));
                    }
                }
                let measured = |ip: &IpAddr| {
                    counters.as_ref()?;
                    self.monitor
                        .get(ip)
                        .filter(|r| r.len() >= 2)
                        .map(|r| r.current())
                };
                per_ip
                    .iter()
                    .map(|(ip, est)| measured(ip).unwrap_or(*est))
                    .fold(0u64, u64::saturating_add)
            });
            self.jellyfin_bps = jellyfin_bps;
            let input = decide::Input {
                now,
                wan_tx_bps: wan_bps,
                jellyfin_bps: Some(jellyfin_bps),
                streams: stream_inputs(&seen),
            };
            let pol = policy(&self.cfg, self.capacity_bps);
            let (plan, next) = decide::decide(&self.state, &input, &pol);
            self.state = next;
            // The shaper reads the plan in force, so it is stored before acting.
            self.last_plan = plan.clone();
            self.act(&plan, &seen, &mut errors);
            self.events(&seen);
            self.last_seen = seen;
        } else {
            // Jellyfin is away: keep the last applied state (limits and classes) as it is.
            if let Some(bps) = jf_total {
                self.jellyfin_bps = bps;
            }
            self.reconcile_shaper(&mut errors);
        }
        if self.capacity_bps.is_none() {
            errors.push(
                "uplink capacity unknown: set bandwidth.upload_mbps or enable SQM on the WAN device (until then nothing is limited)"
                    .into(),
            );
        }
        if let Some(e) = self.limits.error() {
            errors.push(e.to_string());
        }
        if let Some(e) = &self.shaper_error {
            errors.push(e.clone());
        }
        // A sleeping host plays nothing, whatever the last answer listed.
        let playing = !self.presence.asleep()
            && self
                .last_seen
                .iter()
                .any(|s| !s.session.play_state.is_paused);
        self.wol_step(playing);
        self.publish(wan_bps, errors);
    }

    /// Jellyfin's sessions, or None when it is away. While the host is known asleep, a cheap
    /// probe replaces the calls (each would block for the whole timeout); after a failed call,
    /// a probe tells "host asleep" (quiet, limits kept) from "Jellyfin down" (logged once).
    fn observe_sessions(&mut self) -> Option<Vec<Session>> {
        if self.presence.asleep() && self.probe() == Some(Liveness::Asleep) {
            return None;
        }
        let result = match self.server.as_mut() {
            Some(s) => s.sessions().map_err(|e| e.to_string()),
            None => Err(self
                .server_error
                .clone()
                .unwrap_or_else(|| "no Jellyfin server configured".into())),
        };
        match result {
            Ok(s) => {
                let sent = self.waker.lock().last.as_ref().map(|l| l.at);
                if let wake::Change::Woke(after) =
                    self.presence.answered(unix_now(), Instant::now(), sent)
                {
                    self.woke_at = Some(Instant::now());
                    match after {
                        Some(a) => info!("the media server is awake: Jellyfin answered {a:.1} s after the Wake-on-LAN packet"),
                        None => info!("the media server is awake"),
                    }
                }
                self.set_reachable(true, None);
                Some(s)
            }
            Err(e) => {
                if self.server.is_some() && self.probe() == Some(Liveness::Asleep) {
                    // Quiet: sleeping is the server's normal state, not an error.
                    self.reachable = Some(false);
                    debug!("Jellyfin not answering ({e}); its host is asleep");
                } else if self.presence.booting(unix_now()) {
                    // The host is back from sleep; Jellyfin is still starting.
                    self.reachable = Some(false);
                    debug!("Jellyfin not answering yet ({e}); its host is starting");
                } else {
                    self.set_reachable(false, Some(e));
                }
                None
            }
        }
    }

    /// One liveness probe of the server host (None: no address to probe).
    fn probe(&mut self) -> Option<Liveness> {
        let ip = self.cfg.server_ip()?;
        let port = *self.cfg.jellyfin.ports.first()?;
        let timeout = wake::PROBE_TIMEOUT.min(Duration::from_secs(
            u64::from(self.cfg.jellyfin.timeout).max(1),
        ));
        let l = wake::probe(std::net::SocketAddr::new(ip, port), timeout);
        match self.presence.probed(unix_now(), l) {
            wake::Change::FellAsleep => info!(
                "the media server {ip} is asleep (no answer at all); limits kept, Jellyfin not asked until it answers"
            ),
            wake::Change::HostBack => info!("the media server {ip} answers again; waiting for Jellyfin"),
            _ => {}
        }
        Some(l)
    }

    /// True while a magic packet went out for a sleeping server that has not answered yet,
    /// and for a while after it did: the loop then ticks every second, so the stream that
    /// caused the wake is limited as soon as it starts.
    pub fn waking(&self) -> bool {
        if self
            .woke_at
            .is_some_and(|t| t.elapsed() < AFTER_WAKE_WINDOW)
        {
            return true;
        }
        let w = self.waker.lock();
        w.last
            .as_ref()
            .is_some_and(|l| l.at.elapsed() < WAKING_WINDOW && self.presence.woken_by(l.unix))
    }

    fn set_reachable(&mut self, ok: bool, err: Option<String>) {
        let was = self.reachable;
        self.reachable = Some(ok);
        if ok {
            if was != Some(true) {
                if let Some(s) = self.server.as_mut() {
                    if let Ok(info) = s.system_info() {
                        self.server_version = info.version.clone();
                    }
                    // It may be another server now (restored from a backup, reinstalled).
                    self.limits.server_changed();
                }
                info!(
                    "Jellyfin reachable (version {})",
                    self.server_version.as_deref().unwrap_or("unknown")
                );
                if was == Some(false) {
                    self.notify(Event::JellyfinBack {
                        version: self.server_version.clone(),
                    });
                }
            }
            self.last_logged_error = None;
        } else if let Some(e) = err {
            // Log once per state change, not every tick.
            if self.last_logged_error.as_deref() != Some(e.as_str()) {
                warn!("Jellyfin unavailable: {e}; keeping the last applied limits");
                if was != Some(false) {
                    self.notify(Event::JellyfinUnreachable { error: e.clone() });
                }
                self.last_logged_error = Some(e);
            }
        }
    }

    fn viewer_counters(&mut self, errors: &mut Vec<String>) -> Option<HashMap<IpAddr, u64>> {
        // The shaper's classes count while its tree can stand; when tc failed, conntrack does.
        let shaper_ok = self.status.shaping.error.is_none();
        if let Some(s) = self.shaper.as_mut().filter(|_| shaper_ok) {
            match s.counters() {
                Ok(c) => return Some(c),
                Err(e) => debug!("tc counters unavailable: {e}"),
            }
        }
        let mut servers = vec![self.cfg.server_ip()?];
        servers.extend(self.server_ip6().map(IpAddr::V6));
        servers.dedup();
        let (src, counter) = self.flows.as_mut()?;
        let mut flows = Vec::new();
        match src.flows(&servers, &self.cfg.jellyfin.ports, &mut flows) {
            Ok(()) => {
                counter.update(&flows);
                // Bounded memory when many addresses come and go: forget viewers silent for
                // about ten minutes (the longest average shown).
                let ticks = (600 / self.cfg.main.interval.max(1) as u64).max(2);
                counter.forget_idle(ticks);
                Some(counter.totals().clone())
            }
            Err(e) => {
                errors.push(format!("conntrack unreadable: {e}"));
                None
            }
        }
    }

    /// Keeps playing sessions and estimates each one's bitrate (TranscodingInfo.Bitrate,
    /// else the selected source streams, else the item's media source).
    fn classify(&mut self, sessions: Vec<Session>) -> Vec<Seen> {
        let mut out = Vec::new();
        for s in sessions {
            let Some(np) = s.now_playing.as_ref() else {
                continue;
            };
            let external = s
                .remote_ip
                .is_some_and(|ip| decide::is_external(ip, &self.cfg.network.internal));
            let mut source = s.source_bitrate();
            if source.is_none() {
                if let (Some(uid), Some(server)) = (s.user_id.clone(), self.server.as_mut()) {
                    let msid = s.play_state.media_source_id.clone().unwrap_or_default();
                    let key = (np.id.clone(), msid.clone());
                    source = *self.item_bitrates.entry(key).or_insert_with(|| {
                        server
                            .item_bitrate(
                                &uid,
                                &np.id,
                                Some(msid.as_str()).filter(|m| !m.is_empty()),
                            )
                            .ok()
                            .flatten()
                    });
                }
            }
            let stream = s.transcoding.as_ref().and_then(|t| t.bitrate).or(source);
            out.push(Seen {
                external,
                stream_bps: stream,
                source_bps: source,
                session: s,
            });
        }
        if self.item_bitrates.len() > 256 {
            self.item_bitrates.clear();
        }
        out
    }

    fn act(&mut self, plan: &Plan, seen: &[Seen], errors: &mut Vec<String>) {
        let dry = self.dry();
        let managing = plan.managing && self.cfg.jellyfin.manage_limits;
        self.limits_step(plan, managing, errors);
        if managing {
            for r in &plan.restarts {
                let Some(s) = seen.iter().find(|s| s.session.id == r.session_id) else {
                    continue;
                };
                if dry {
                    info!(
                        "[dry run] would restart {}'s playback so the {:.1} Mbit/s limit applies",
                        r.user_name,
                        r.limit_bps as f64 / 1e6
                    );
                    continue;
                }
                self.restart(&s.session, r.limit_bps);
            }
        }
        self.reconcile_shaper(errors);
    }

    /// Jellyfin limits: the plan's when they are managed; and every backed-up original the
    /// daemon no longer manages goes back — users who stopped long enough ago, entries left by
    /// a crash, and all of them when limits are not managed any more (dry run, manage_limits
    /// off, capacity lost).
    fn limits_step(&mut self, plan: &Plan, managing: bool, errors: &mut Vec<String>) {
        let dry = self.dry();
        let now = self.now();
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let mut errs = Vec::new();
        let mut managed = BTreeSet::new();
        if managing {
            let wants: Vec<limits::Want> = plan
                .user_limits
                .iter()
                .map(|u| limits::Want {
                    user_id: u.user_id.clone(),
                    user_name: u.user_name.clone(),
                    limit_bps: u.limit_bps,
                })
                .collect();
            let changes = self.limits.apply(server.as_mut(), &wants, dry, &mut errs);
            if !dry {
                // Users who streamed a moment ago keep their limit until decide lets go.
                managed.extend(self.state.users_seen.keys().cloned());
                managed.extend(wants.into_iter().map(|w| w.user_id));
            }
            for c in changes {
                self.notify(Event::LimitChanged {
                    user: c.user,
                    old_bps: c.old_bps.max(0) as u64,
                    new_bps: c.new_bps.max(0) as u64,
                });
            }
        }
        if let Some(server) = self.server.as_mut() {
            self.limits
                .restore_unmanaged(server.as_mut(), &managed, now, &mut errs);
        }
        let now_set: BTreeSet<String> = errs.iter().cloned().collect();
        for e in now_set.difference(&self.limit_errors) {
            warn!("{e}");
        }
        self.limit_errors = now_set;
        errors.extend(errs);
    }

    fn restart(&mut self, s: &Session, limit_bps: u64) {
        let Some(server) = self.server.as_mut() else {
            return;
        };
        let who = s.user_name.as_deref().unwrap_or("?");
        if self.cfg.jellyfin.notify_viewer && s.can_message() {
            let text = format!(
                "Adjusting quality to the available bandwidth ({:.1} Mbit/s); playback resumes where it was.",
                limit_bps as f64 / 1e6
            );
            if let Err(e) = server.message(&s.id, "Bandwidth", &text, 5000) {
                debug!("message to {who} failed: {e}");
            }
        }
        let Some(req) = s.resume_request() else {
            return;
        };
        let result = server
            .stop(&s.id)
            .and_then(|_| server.play_now(&s.id, &req));
        match result {
            Ok(()) => {
                info!(
                    "restarted {who}'s playback of {} at {}s so the {:.1} Mbit/s limit applies",
                    s.title(),
                    req.start_position_ticks.unwrap_or(0) / 10_000_000,
                    limit_bps as f64 / 1e6
                );
                self.notify(Event::PlaybackRestarted {
                    user: who.to_string(),
                    session_id: s.id.clone(),
                    limit_bps,
                });
            }
            Err(e) => warn!("could not restart {who}'s playback: {e}"),
        }
    }

    fn reconcile_shaper(&mut self, errors: &mut Vec<String>) {
        if self.dry() {
            return;
        }
        let Some(server_ip) = self.cfg.server_ip() else {
            return;
        };
        let lan_device = match &self.lan_dev {
            Ok(d) => d.clone(),
            Err(e) => {
                errors.push(format!("shaping: LAN device unknown: {e}"));
                return;
            }
        };
        let server_ip6 = self.server_ip6();
        let Some(sh) = self.shaper.as_mut() else {
            return;
        };
        let viewers: Vec<shaper::ViewerClass> = self
            .last_plan
            .viewers
            .iter()
            .map(|v| shaper::ViewerClass {
                ip: v.ip,
                rate_bps: v.rate_bps,
                ceil_bps: v.ceil_bps,
            })
            .collect();
        let sum = viewers
            .iter()
            .map(|v| v.rate_bps)
            .fold(0u64, u64::saturating_add);
        let spec = shaper::Spec {
            lan_device,
            server_ip,
            server_ip6,
            ports: self.cfg.jellyfin.ports.clone(),
            total_bps: self.last_plan.budget_bps.max(sum).max(1_000_000),
            newcomer_bps: (self.cfg.bandwidth.min_stream_mbps * 1e6).round() as u64,
            internal: self.cfg.network.internal.clone(),
            viewers,
            // Only a plan that divided a known capacity may cap anything: before the first
            // such plan (capacity unknown, Jellyfin not heard from yet) the classes only count.
            enforce: self.cfg.shaping.enabled && self.last_plan.managing,
        };
        match sh.reconcile(&spec) {
            Ok(()) => {
                if self.status.shaping.error.is_some() {
                    info!("shaping active again");
                }
                self.status.shaping.active = true;
                self.status.shaping.error = None;
            }
            Err(e) => {
                let msg = e.to_string();
                if self.status.shaping.error.as_deref() != Some(msg.as_str()) {
                    warn!("shaping unavailable: {msg}; running on without it");
                }
                self.status.shaping.active = false;
                self.status.shaping.error = Some(msg.clone());
                errors.push(format!("shaping: {msg}"));
            }
        }
    }

    /// Wake-on-LAN: sessions playing, through the scheduler shared with the wake thread.
    fn wol_step(&mut self, playing: bool) {
        if !self.cfg.wol.enabled {
            return;
        }
        for a in self.waker.step(playing, 0) {
            if a == wol::Action::RunIdle {
                self.run_idle();
            }
        }
        // Wakes the thread sent since the last tick become events here (the webhook is the
        // tick's).
        let sent = std::mem::take(&mut self.waker.lock().unreported);
        for why in sent {
            self.notify(Event::ServerWoken { reason: why.into() });
        }
    }

    /// Without conntrack events: the wake thread polls the `/proc` table once per interval.
    fn start_proc_wake(&mut self, why: &str) {
        if !Path::new(conntrack::PROC_PATH).exists() {
            warn!("cannot watch new connections for Wake-on-LAN ({why}); waking on sessions only");
            return;
        }
        let poll = conntrack::ProcConnectPoll::new();
        let period = Duration::from_secs(u64::from(self.cfg.main.interval.max(1)));
        match wake::WakeThread::start_proc(self.waker.clone(), poll, period) {
            Ok(t) => {
                info!(
                    "Wake-on-LAN: no conntrack events ({why}); watching {} every {} s for new connections",
                    conntrack::PROC_PATH,
                    period.as_secs()
                );
                self.wake_thread = Some(t);
            }
            Err(e) => warn!("cannot start the wake thread ({e}); waking on sessions only"),
        }
    }

    /// Starts (or stops) the wake thread as the configuration asks. A thread that cannot start
    /// leaves the watch to the loop, drained between ticks as before.
    fn configure_wake_watch(&mut self) {
        if !(self.cfg.wol.enabled && self.cfg.wol.on_connect) {
            self.wake_thread = None;
            self.connect = None;
            return;
        }
        if self.wake_thread.as_ref().is_some_and(|t| t.alive()) || self.connect.is_some() {
            return;
        }
        self.wake_thread = None;
        let watch = match ConnectWatch::new() {
            Ok(w) => w,
            Err(e) => {
                self.start_proc_wake(&e.to_string());
                return;
            }
        };
        match wake::WakeThread::start(self.waker.clone(), watch) {
            Ok(t) => {
                info!(
                    "Wake-on-LAN: watching new connections from outside to port(s) {:?}",
                    self.cfg.jellyfin.ports
                );
                self.wake_thread = Some(t);
            }
            Err(e) => {
                warn!(
                    "cannot start the wake thread ({e}); new connections are handled between ticks"
                );
                self.connect = ConnectWatch::new().ok();
            }
        }
    }

    fn run_idle(&mut self) {
        let argv = self.cfg.wol.idle_command.clone();
        if argv.is_empty() {
            return;
        }
        if self.dry() {
            info!("[dry run] would run the idle command");
            return;
        }
        // Off the loop: a slow ssh must not delay ticks.
        let started = crate::spawn_thread("idle-command", move || {
            match wol::run_idle_command(&argv, Duration::from_secs(60)) {
                Ok((code, out)) => info!("idle command exited {code}: {}", out.trim()),
                Err(e) => warn!("idle command failed: {e}"),
            }
        });
        if let Err(e) = started {
            warn!("idle command not run: cannot start a thread for it: {e}");
        }
    }

    /// Between ticks: when the uplink runs above target (a household upload just started),
    /// re-divide this instant's budget among the streams already known and tighten the
    /// router's classes at once, without waiting for the tick. Jellyfin is not asked and its
    /// limits are not touched: that stays the tick's job, with its confirmation rules.
    pub fn guard(&mut self) {
        if self.dry() || self.shaper.is_none() || !self.last_seen.iter().any(|s| s.external) {
            return;
        }
        let Some(capacity) = self.capacity_bps else {
            return;
        };
        let Ok(dev) = &self.wan_dev else { return };
        let now = self.now();
        let Ok(tx) = observe::read_tx_bytes(Path::new(SYS_ROOT), dev) else {
            return;
        };
        let Some(wan_bps) = self
            .guard_wan
            .update_within(now, tx, self.plausible_wan_bps())
        else {
            return;
        };
        // Jellyfin's own upload as the last tick measured it: cheap (no tc run), and when the
        // uplink jumps between ticks it is the household that jumped.
        let jf_bps = self.jellyfin_bps;
        let target = (capacity as f64 * self.cfg.bandwidth.target_pct / 100.0) as u64;
        if wan_bps <= target
            || self
                .guard_last
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.guard_last = Some(Instant::now());
        let input = decide::Input {
            now,
            wan_tx_bps: Some(wan_bps),
            jellyfin_bps: Some(jf_bps),
            streams: stream_inputs(&self.last_seen),
        };
        let pol = policy(&self.cfg, self.capacity_bps);
        // The state is not kept: only the tick advances hysteresis and confirmations.
        let (plan, _) = decide::decide(&self.state, &input, &pol);
        if plan.budget_bps < self.last_plan.budget_bps {
            debug!(
                "uplink at {:.1} Mbit/s, above target: tightening the classes now (budget {:.1})",
                wan_bps as f64 / 1e6,
                plan.budget_bps as f64 / 1e6
            );
            self.last_plan.viewers = plan.viewers;
            self.last_plan.budget_bps = plan.budget_bps;
            let mut errors = Vec::new();
            self.reconcile_shaper(&mut errors);
        }
    }

    /// New connections from outside to the Jellyfin port, when no wake thread runs: one
    /// bounded burst per call, so a flood cannot starve the loop.
    fn on_connections(&mut self) {
        let Some(w) = self.connect.as_mut() else {
            return;
        };
        let mut conns = Vec::new();
        wake::drain_burst(w, &mut conns);
        self.waker.on_connections(&conns);
    }

    /// The Wake-on-LAN part of the status, from the shared record and the presence.
    fn wol_status(&self) -> status::WolStatus {
        let w = self.waker.lock();
        let p = &self.presence;
        let mut st = self.wol_status.clone();
        st.last_wake = w.last.as_ref().map(|l| l.unix);
        st.last_reason = w.last.as_ref().map(|l| l.reason.to_string());
        st.wakes = w.wakes;
        st.server_awake = p.known.then_some(!p.asleep());
        st.asleep_since = p.asleep_since;
        st.awake_after_s = p.awake_after_s.map(|a| (a * 10.0).round() / 10.0);
        st.server_state = p.state(st.last_wake).map(str::to_string);
        st
    }

    fn notify(&mut self, e: Event) {
        if let Some(w) = self.webhook.as_mut() {
            w.notify(e);
        }
    }

    fn events(&mut self, seen: &[Seen]) {
        let mut now: BTreeMap<String, Event> = BTreeMap::new();
        for s in seen.iter().filter(|s| s.external) {
            now.insert(
                s.session.id.clone(),
                Event::StreamStarted {
                    session_id: s.session.id.clone(),
                    user: s.session.user_name.clone().unwrap_or_default(),
                    client: s.session.client.clone().unwrap_or_default(),
                    remote_ip: s
                        .session
                        .remote_ip
                        .map(|i| i.to_string())
                        .unwrap_or_default(),
                    external: true,
                    play_method: s.session.play_state.play_method.clone().unwrap_or_default(),
                    title: s.session.title(),
                },
            );
        }
        let started: Vec<Event> = now
            .iter()
            .filter(|(k, _)| !self.known.contains_key(*k))
            .map(|(_, v)| v.clone())
            .collect();
        let stopped: Vec<Event> = self
            .known
            .iter()
            .filter(|(k, _)| !now.contains_key(*k))
            .map(|(_, v)| v.clone())
            .collect();
        for e in started {
            if let Event::StreamStarted {
                user,
                remote_ip,
                title,
                ..
            } = &e
            {
                info!("{user} started streaming {title} from {remote_ip}");
            }
            self.notify(e);
        }
        for e in stopped {
            if let Event::StreamStarted {
                session_id,
                user,
                remote_ip,
                title,
                ..
            } = e
            {
                info!("{user} stopped streaming {title} from {remote_ip}");
                self.notify(Event::StreamStopped {
                    session_id,
                    user,
                    remote_ip,
                    title,
                });
            }
        }
        self.known = now;
    }

    fn publish(&mut self, wan_bps: Option<u64>, errors: Vec<String>) {
        let now = self.now();
        let plan = &self.last_plan;
        let jellyfin_bps = self.jellyfin_bps;
        let mut streams: Vec<StreamStatus> = self
            .last_seen
            .iter()
            .map(|s| {
                let ip = s.session.remote_ip;
                let share = plan
                    .viewers
                    .iter()
                    .find(|v| Some(v.ip) == ip.map(decide::canonical))
                    .map(|v| v.rate_bps)
                    .unwrap_or(0);
                let limit = s
                    .session
                    .user_id
                    .as_ref()
                    .and_then(|u| self.limits.limit_of(u))
                    .unwrap_or(0)
                    .max(0) as u64;
                StreamStatus {
                    session_id: s.session.id.clone(),
                    user: s.session.user_name.clone().unwrap_or_default(),
                    client: s.session.client.clone().unwrap_or_default(),
                    device: s.session.device_name.clone().unwrap_or_default(),
                    remote_ip: ip.map(|i| i.to_string()).unwrap_or_default(),
                    external: s.external,
                    play_method: s.session.play_state.play_method.clone().unwrap_or_default(),
                    title: s.session.title(),
                    paused: s.session.play_state.is_paused,
                    source_bps: s.source_bps,
                    limit_bps: limit,
                    shaped_bps: if self.status.shaping.active && self.cfg.shaping.enabled {
                        share
                    } else {
                        0
                    },
                    measured_bps: ip
                        .map(|i| self.monitor.averages(&decide::canonical(i), now))
                        .unwrap_or_default(),
                    restarts: self
                        .state
                        .streams
                        .get(&s.session.id)
                        .map(|m| m.restarts)
                        .unwrap_or(0),
                }
            })
            .collect();
        streams.sort_by(|a, b| b.external.cmp(&a.external).then(a.user.cmp(&b.user)));
        let managing_reason = status::unmanaged_reason(
            self.capacity_bps.is_some(),
            plan.managing,
            self.dry(),
            self.last_logged_error
                .as_deref()
                .or(self.server_error.as_deref()),
        );
        let st = Status {
            version: status::STATUS_VERSION,
            updated: unix_now(),
            interval: self.cfg.main.interval,
            dry_run: self.dry(),
            managing: managing_reason.is_none(),
            managing_reason,
            jellyfin: status::JellyfinStatus {
                reachable: self.reachable == Some(true),
                server_version: self.server_version.clone(),
                error: if self.reachable == Some(true) {
                    None
                } else if self.presence.asleep() {
                    Some(
                        "the media server is asleep (its host answers nothing); limits kept".into(),
                    )
                } else {
                    self.last_logged_error.clone().or(self.server_error.clone())
                },
            },
            wan: status::WanStatus {
                device: self.wan_dev.as_ref().ok().cloned(),
                capacity_bps: self.capacity_bps,
                tx_bps: wan_bps.unwrap_or(0),
                jellyfin_bps,
                other_bps: wan_bps.unwrap_or(0).saturating_sub(jellyfin_bps),
            },
            budget_bps: plan.budget_bps,
            streams,
            wol: self.wol_status(),
            shaping: status::ShapingStatus {
                enabled: self.cfg.shaping.enabled,
                active: self.status.shaping.active,
                error: self.status.shaping.error.clone(),
            },
            network: status::NetworkStatus {
                lan_device: self.lan_dev.as_ref().ok().cloned(),
                internal: self.internal.nets.iter().map(|n| n.to_string()).collect(),
                internal_fallback: self.internal.fallback,
                server_ip6: self.server_ip6().map(|a| a.to_string()),
                flow_offloading: self.offload,
            },
            errors,
        };
        let path = self.cfg.main.run_dir.join("status.json");
        match serde_json::to_vec_pretty(&st) {
            Ok(json) => {
                if let Err(e) = publish::write_atomic(&path, &json) {
                    warn!("cannot write {}: {e}", path.display());
                }
            }
            Err(e) => warn!("cannot encode the status: {e}"),
        }
        if let Some(p) = &self.cfg.publish.prometheus_file {
            if let Err(e) = publish::write_atomic(p, publish::render_prometheus(&st).as_bytes()) {
                warn!("cannot write {}: {e}", p.display());
            }
        }
        self.status = st;
    }

    /// Everything back as it was: own tc state removed, every original limit restored.
    pub fn shutdown(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_BUDGET;
        if let Some(s) = self.shaper.as_mut() {
            if let Err(e) = s.remove() {
                warn!("could not remove all shaping state: {e}");
            }
        }
        if self.presence.asleep() {
            if self.limits.pending() > 0 {
                info!("the media server is asleep: the original limits stay in the backup for the next start or `jellydemon restore`");
            }
        } else if self.limits.pending() > 0 {
            // Everything within SHUTDOWN_BUDGET of SIGTERM (DESIGN.md: 5 s; procd kills at
            // the init script's term_timeout). The running client keeps the server's address:
            // no name lookup now. Each user takes two calls, so each gets half of what is left.
            // Dry run too: these are originals the daemon changed before.
            if self.server.is_none() {
                self.server = server_for(&self.cfg, Duration::from_secs(2)).ok();
            }
            for uid in self.limits.pending_users() {
                let left = deadline.saturating_duration_since(Instant::now()) / 2;
                if left < Duration::from_millis(100) {
                    warn!("no time left to restore the remaining original limits: they stay in the backup for `jellydemon restore` or the next start");
                    break;
                }
                let Some(server) = self.server.as_mut() else {
                    warn!("no Jellyfin server configured: the original limits stay in the backup");
                    break;
                };
                server.set_timeout(left.min(Duration::from_secs(2)));
                if let Err(e) = self.limits.restore_user(server.as_mut(), &uid) {
                    warn!("{e}");
                    if e.server_away {
                        warn!("Jellyfin unreachable: the remaining original limits stay in the backup for `jellydemon restore` or the next start");
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(self.cfg.main.run_dir.join("status.json"));
    }

    /// SIGHUP: a new configuration, or the old one kept when the file is bad.
    pub fn reload(&mut self, path: &Path) {
        match crate::config::load(path) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    warn!("{w}");
                }
                info!("configuration reloaded");
                crate::set_log_level(loaded.config.main.log_level);
                self.configure(loaded.config);
            }
            Err(e) => error!("{e}; keeping the running configuration"),
        }
    }
}

/// Following the home network: netifd's interfaces, the WAN device behind them, the firewall.
impl Daemon {
    /// Resolves what depends on netifd: the LAN device and the `internal` networks, and the
    /// WAN device when it is followed (a WAN that moved to a new device while the old one
    /// stays, e.g. from DHCP on eth1 to PPPoE; where the counter fails, see
    /// [`Daemon::read_wan`]). A WAN that netifd reports down keeps its last device here.
    fn resolve_network(&mut self) {
        if self.cfg.network.wan_device.is_none() && self.wan_dev.is_ok() {
            if let Ok(d) = wan_device(&self.cfg) {
                self.set_wan_dev(Ok(d));
            }
        }
        let lan = lan_device(&self.cfg);
        if lan != self.lan_dev {
            match (&lan, &self.lan_dev) {
                (Ok(d), _) => info!("LAN device {d}"),
                (Err(e), Ok(_)) | (Err(e), Err(_)) => warn!("{e}"),
            }
            self.lan_dev = lan;
        }
        let internal = internal_networks(&self.cfg, &self.internal_configured);
        if internal != self.internal {
            let list: Vec<String> = internal.nets.iter().map(|n| n.to_string()).collect();
            info!(
                "local networks: {}{}",
                list.join(" "),
                if internal.fallback {
                    " (netifd gave none: the private ranges stand in)"
                } else {
                    ""
                }
            );
            for p in &internal.problems {
                warn!("{p}");
            }
        }
        self.cfg.network.internal = internal.nets.clone();
        self.internal = internal;
    }

    fn read_offload(&mut self) {
        let o = firewall::read_offload(Path::new(firewall::FIREWALL_CONFIG));
        if o != self.offload && o.is_on() {
            warn!("{}; {}", o.meaning(), o.fix());
        }
        self.offload = o;
    }

    /// Once per tick: when the kernel reported a link or address change (or, without that
    /// notification, about every minute), ask netifd again; the firewall's file about every
    /// minute.
    fn follow_network(&mut self, errors: &mut Vec<String>) {
        self.ticks += 1;
        let minute = (60 / self.cfg.main.interval.max(1) as u64).max(1);
        let changed = match self.links.as_mut() {
            Some(w) => w.changed(),
            None => self.ticks % minute == 0,
        };
        if changed {
            self.resolve_network();
        }
        if self.ticks % minute == 0 {
            self.read_offload();
        }
        // Until it is known, every tick (no process: a file and a netlink dump), so the first
        // IPv6 stream is shaped from its second tick; then every minute, to follow a change.
        if self.cfg.server_ip6().is_none()
            && (self.ticks % minute == 0 || !matches!(self.learned_ip6, neigh::Learned::One(_)))
        {
            self.learn_ip6();
        }
        if let neigh::Learned::Several(all) = &self.learned_ip6 {
            let list: Vec<String> = all.iter().map(|a| a.to_string()).collect();
            errors.push(format!(
                "the media server has several IPv6 addresses ({}): set jellyfin.server_ip6 to the one its viewers use; until then its IPv6 traffic is neither shaped nor counted",
                list.join(", ")
            ));
        }
        if self.offload.is_on() && self.cfg.shaping.enabled {
            errors.push(format!(
                "{}; {}",
                self.offload.meaning(),
                self.offload.fix()
            ));
        }
    }

    /// The server's IPv6 address: `server_ip6` (or an IPv6 `server_ip`), else the one the
    /// neighbour tables show for the server's MAC.
    fn server_ip6(&self) -> Option<std::net::Ipv6Addr> {
        self.cfg.server_ip6().or(match &self.learned_ip6 {
            neigh::Learned::One(a) => Some(*a),
            _ => None,
        })
    }

    fn learn_ip6(&mut self) {
        let learned = match &self.lan_dev {
            Ok(lan) => learn_server_ip6(&self.cfg, lan),
            Err(_) => neigh::Learned::None,
        };
        if learned != self.learned_ip6 {
            match &learned {
                neigh::Learned::One(a) => {
                    info!("media server's IPv6 address {a} (from the neighbour table)")
                }
                neigh::Learned::Several(v) => warn!(
                    "the media server has {} IPv6 addresses: set jellyfin.server_ip6",
                    v.len()
                ),
                // A vanished entry (the neighbour expired) keeps the address known.
                neigh::Learned::None => return,
            }
            self.learned_ip6 = learned;
        }
    }

    /// The fastest upload the WAN could carry: a counter delta beyond it is a device that
    /// started again, not traffic. Generous (10× the capacity, at least 1 Gbit/s), since a
    /// configured capacity may be well below the line's: a counter that falls from a few
    /// hundred MB to zero still reads as several Gbit/s when taken for a 32-bit wrap.
    fn plausible_wan_bps(&self) -> Option<u64> {
        self.capacity_bps
            .map(|c| c.saturating_mul(10).max(1_000_000_000))
    }

    /// Takes `dev` as the WAN device; true when it is another one (the meters start again).
    fn set_wan_dev(&mut self, dev: Result<String, String>) -> bool {
        if dev == self.wan_dev {
            return false;
        }
        if let Ok(d) = &dev {
            info!("WAN device now {d}");
        }
        self.wan_dev = dev;
        self.wan_ifindex = None;
        self.wan_meter.reset();
        self.guard_wan.reset();
        if self.cfg.bandwidth.upload_mbps.is_none() {
            self.capacity_bps = capacity(
                &self.cfg,
                self.wan_dev.as_deref().ok(),
                Path::new(SQM_CONFIG),
            );
        }
        true
    }

    /// The WAN upload since the last tick. A counter that cannot be read (PPPoE down, the
    /// device renamed or re-created) makes the daemon ask netifd for the device again at
    /// once; a new device (or the same name with a new interface index) starts a new series,
    /// so its counters from zero are never read as traffic.
    fn read_wan(&mut self, now: f64, errors: &mut Vec<String>) -> Option<u64> {
        let follow = self.cfg.network.wan_device.is_none();
        for attempt in 0..2 {
            let err = match &self.wan_dev {
                Ok(dev) => {
                    let index = observe::read_ifindex(Path::new(SYS_ROOT), dev);
                    match observe::read_tx_bytes(Path::new(SYS_ROOT), dev) {
                        Ok(c) => {
                            if index != self.wan_ifindex {
                                if self.wan_ifindex.is_some() {
                                    info!("WAN device {dev} is new (index {index:?}): its counters start again");
                                }
                                self.wan_ifindex = index;
                                self.wan_meter.reset();
                                self.guard_wan.reset();
                            }
                            let max = self.plausible_wan_bps();
                            return self.wan_meter.update_within(now, c, max);
                        }
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.clone(),
            };
            if attempt == 0 && follow && self.set_wan_dev(wan_device(&self.cfg)) {
                continue;
            }
            errors.push(err);
            return None;
        }
        None
    }
}

/// The daemon: runs until SIGTERM/SIGINT (then cleans up), or one tick with `once`.
///
/// Between ticks the loop waits on the signals (and, without a wake thread, on new
/// connections), and runs the guard by the clock every [`GUARD_STEP`], however busy the
/// event sources are.
pub fn run(config_path: PathBuf, cfg: Config, opts: Options, signals: Signals) -> i32 {
    let mut signals = signals;
    let mut d = Daemon::new(cfg, opts);
    d.recover();
    let mut next = Instant::now();
    loop {
        d.tick();
        if opts.once {
            return 0;
        }
        let period = if d.waking() {
            WAKING_TICK
        } else {
            Duration::from_secs(d.cfg.main.interval as u64)
        };
        next += period;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        if next > now + period {
            next = now + period;
        }
        let mut next_guard = now + GUARD_STEP;
        loop {
            let now = Instant::now();
            if now >= next {
                break;
            }
            if now >= next_guard {
                d.guard();
                next_guard = Instant::now() + GUARD_STEP;
                continue;
            }
            let wait = next.min(next_guard).saturating_duration_since(now);
            let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
            let term_fd = signals.term.as_fd();
            let hup_fd = signals.hup.as_fd();
            let mut fds = vec![
                nix::poll::PollFd::new(term_fd, nix::poll::PollFlags::POLLIN),
                nix::poll::PollFd::new(hup_fd, nix::poll::PollFlags::POLLIN),
            ];
            let conn_fd = d.connect.as_ref().map(|c| c.as_raw_fd());
            let borrowed;
            if let Some(fd) = conn_fd {
                // SAFETY: the watch outlives this poll call; nothing closes it meanwhile.
                borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                fds.push(nix::poll::PollFd::new(
                    borrowed,
                    nix::poll::PollFlags::POLLIN,
                ));
            }
            let timeout =
                nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX);
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    error!("poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            let term_ready = fds[0].any().unwrap_or(false);
            let hup_ready = fds[1].any().unwrap_or(false);
            let conn_ready = fds.get(2).and_then(|f| f.any()).unwrap_or(false);
            drop(fds);
            if term_ready && drain(&mut signals.term) {
                info!("stopping: restoring limits and removing shaping");
                d.shutdown();
                return 0;
            }
            if hup_ready && drain(&mut signals.hup) {
                d.reload(&config_path);
            }
            if conn_ready {
                d.on_connections();
            }
        }
    }
}

/// `jellydemon restore`: every backed-up original limit back, all own tc state removed.
/// Works without a running daemon (after a crash, or to undo `run --once`).
pub fn restore_all(cfg: &Config) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut sh = shaper::TcShaper::new(SHAPER_DEVICE, "tc");
    // Without netifd (ubus gone, the LAN down), the bridge OpenWrt names br-lan is the one
    // place left to look: a redirect to a removed device would drop the server's packets.
    let lan = lan_device(cfg).or_else(|e| {
        Path::new(&format!("{SYS_ROOT}/class/net/br-lan"))
            .exists()
            .then(|| "br-lan".to_string())
            .ok_or(e)
    });
    match lan {
        Ok(lan) => sh = sh.with_lan_device(&lan),
        Err(e) => problems.push(format!(
            "LAN device: {e} (its redirect filters, if any, stay)"
        )),
    }
    if let Err(e) = sh.remove() {
        problems.push(format!("shaping state: {e}"));
    }
    let mut lim = Limits::load(&cfg.main.state_dir);
    if let Some(e) = lim.error() {
        return Err(e.to_string());
    }
    let before = lim.pending();
    if before == 0 {
        crate::say("no backed-up limits to restore\n");
    } else {
        let mut server = server_for(cfg, Duration::from_secs(cfg.jellyfin.timeout as u64))?;
        // A server that is away would cost one timeout per user: stop at the first.
        problems.extend(lim.restore_all(server.as_mut(), true));
        crate::say(&format!(
            "{} of {before} original limit(s) restored\n",
            before - lim.pending()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not everything could be restored (the rest stays backed up): {}",
            problems.join("; ")
        ))
    }
}
