//! Waking a sleeping media server without waiting for the tick (docs/design.md §8), and telling
//! "host asleep" from "Jellyfin down".
//!
//! A sleeping machine is silent: every Jellyfin call to it times out, so a tick can spend its
//! whole interval blocked. The on-connect wake therefore runs in a thread of its own that owns
//! the conntrack NEW-event socket: it sends the magic packet within milliseconds of the first
//! SYN from outside, whatever the tick is doing. The tick's session wake and the thread share
//! one [`wol::Scheduler`] (and so one cooldown) behind a mutex held only for the decision,
//! never while sending.
//!
//! Liveness: a TCP connect to the server's Jellyfin port with a short timeout. An awake host
//! answers it at once, with a SYN-ACK (Jellyfin up) or a RST ("connection refused": awake,
//! Jellyfin down). A sleeping host answers nothing, not even ARP/ND, so the connect ends in a
//! timeout or EHOSTUNREACH (real-world.md, Hosts and servers). The neighbour table alone would
//! not do: an entry stays REACHABLE/STALE for a while after the host went to sleep, and only
//! traffic makes the kernel re-probe it — which is what the connect does. It costs one SYN
//! and is bounded by its timeout; it runs only after a failed Jellyfin call and while the host
//! is known asleep (in place of the Jellyfin calls, which would each block for the timeout).

use crate::config;
use crate::conntrack::{self, ConnectWatch, NewConn, ProcConnectPoll};
use crate::wol;
use ipnet::IpNet;
use log::{debug, info, warn};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a liveness probe waits for any answer. An awake host on the LAN answers in
/// milliseconds; a sleeping one never does.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Jellyfin may take to answer after its host is back from sleep before a refusal
/// is reported as Jellyfin being down.
pub const BOOT_GRACE_S: u64 = 300;
/// How often the wake thread looks at its stop flag when no event arrives.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Netlink reads per event burst before the thread yields: a SYN flood costs bounded work per
/// round instead of a loop that never returns.
const READS_PER_BURST: usize = 8;
/// Pause after a burst that left events pending (rate limit under a flood; the packet still
/// leaves within the first burst).
const FLOOD_PAUSE: Duration = Duration::from_millis(5);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---- liveness --------------------------------------------------------------------------------

/// What a probe of the server host found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The host answered (accepted, or refused: something runs there).
    Awake,
    /// No answer at all: timeout, or the neighbour resolution failed.
    Asleep,
}

/// Classifies the outcome of a TCP connect to the server host.
pub fn classify(result: &io::Result<()>) -> Liveness {
    match result {
        Ok(()) => Liveness::Awake,
        Err(e) => match e.kind() {
            // A RST: the host's kernel is running.
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Liveness::Awake,
            _ => Liveness::Asleep,
        },
    }
}

/// Probes `addr` with one TCP connect (closed at once if it succeeds).
pub fn probe(addr: SocketAddr, timeout: Duration) -> Liveness {
    let r = TcpStream::connect_timeout(&addr, timeout).map(drop);
    if let Err(e) = &r {
        debug!("liveness probe of {addr}: {e}");
    }
    classify(&r)
}

/// What the daemon knows about the server host, driven by the tick (pure).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Presence {
    /// Unix seconds since when the host has been silent; None = answering or unknown.
    pub asleep_since: Option<u64>,
    /// Unix seconds the last sleep began, kept until Jellyfin answers (the host may answer
    /// probes a while before Jellyfin does).
    pub slept_since: Option<u64>,
    /// Seconds from the magic packet to Jellyfin's first answer, for the last wake from sleep.
    pub awake_after_s: Option<f64>,
    /// Unix seconds the host answered probes again after a sleep, until Jellyfin answers.
    pub host_back_since: Option<u64>,
    /// True once the host answered or was found asleep: a known state.
    pub known: bool,
}

/// What a transition means for the log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Change {
    None,
    FellAsleep,
    /// The host answers probes again, Jellyfin not yet.
    HostBack,
    /// Jellyfin answers after a sleep, with the seconds since the packet when one was sent
    /// for this wake.
    Woke(Option<f64>),
}

impl Presence {
    pub fn asleep(&self) -> bool {
        self.asleep_since.is_some()
    }

    /// True when a packet sent at unix second `sent` belongs to the current sleep (sent
    /// during it, or up to a minute before it was noticed: the packet may beat the tick that
    /// found the silence).
    pub fn woken_by(&self, sent: u64) -> bool {
        self.slept_since
            .is_some_and(|since| sent.saturating_add(60) >= since)
    }

    /// The state for the status: "asleep", "waking" (a packet left for this sleep), "booting"
    /// (the host answers, Jellyfin not yet, no packet of ours), "awake"; None while unknown.
    pub fn state(&self, last_wake: Option<u64>) -> Option<&'static str> {
        if !self.known {
            return None;
        }
        let woken = last_wake.is_some_and(|t| self.woken_by(t));
        Some(match (self.asleep(), self.slept_since.is_some(), woken) {
            (_, true, true) => "waking",
            (true, _, false) => "asleep",
            (false, true, false) => "booting",
            _ => "awake",
        })
    }

    /// True while the host is back from a sleep and Jellyfin may still be starting (at most
    /// [`BOOT_GRACE_S`]): a refused call then is the boot, not a fault worth a warning.
    pub fn booting(&self, now: u64) -> bool {
        self.host_back_since
            .is_some_and(|t| now.saturating_sub(t) < BOOT_GRACE_S)
    }

    /// Jellyfin answered at `now_unix` / `now` (the monotonic instant). `sent` is when the
    /// last magic packet left (monotonic), if any.
    pub fn answered(&mut self, now_unix: u64, now: Instant, sent: Option<Instant>) -> Change {
        self.known = true;
        self.asleep_since = None;
        self.host_back_since = None;
        let Some(since) = self.slept_since.take() else {
            return Change::None;
        };
        // Only a packet sent during this sleep (or shortly before it was noticed: the packet
        // may beat the tick that found the silence) counts as this wake's cause.
        let slept_for = now_unix.saturating_sub(since);
        let after = sent
            .map(|s| now.saturating_duration_since(s))
            .filter(|d| d.as_secs() <= slept_for.saturating_add(60))
            .map(|d| d.as_secs_f64());
        if after.is_some() {
            self.awake_after_s = after;
        }
        Change::Woke(after)
    }

    /// A probe at unix second `now` found `l` (after a failed call, or while asleep).
    pub fn probed(&mut self, now: u64, l: Liveness) -> Change {
        self.known = true;
        match (l, self.asleep_since) {
            (Liveness::Asleep, None) => {
                self.asleep_since = Some(now);
                self.host_back_since = None;
                if self.slept_since.is_none() {
                    self.slept_since = Some(now);
                }
                Change::FellAsleep
            }
            (Liveness::Awake, Some(_)) => {
                self.asleep_since = None;
                self.host_back_since = Some(now);
                Change::HostBack
            }
            _ => Change::None,
        }
    }
}

// ---- the wake path ---------------------------------------------------------------------------

/// What the wake thread needs from the configuration.
#[derive(Clone, Debug)]
pub struct WakeConfig {
    pub wol: config::Wol,
    pub internal: Vec<IpNet>,
    pub ports: Vec<u16>,
    pub dry_run: bool,
}

/// One magic packet that left (for the status and the webhook).
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    pub unix: u64,
    pub at: Instant,
    pub reason: &'static str,
}

/// The state both the tick and the wake thread touch.
#[derive(Debug)]
pub struct Shared {
    pub cfg: WakeConfig,
    pub scheduler: wol::Scheduler,
    pub last: Option<Sent>,
    pub wakes: u64,
    /// Wakes not yet reported as webhook events by the tick.
    pub unreported: Vec<&'static str>,
}

/// Wake-on-LAN shared between the tick and the wake thread.
#[derive(Clone, Debug)]
pub struct Waker {
    shared: Arc<Mutex<Shared>>,
}

pub fn reason_name(r: wol::Reason) -> &'static str {
    match r {
        wol::Reason::Session => "session",
        wol::Reason::Connect => "connect",
    }
}

impl Waker {
    pub fn new(cfg: WakeConfig) -> Waker {
        let scheduler = wol::Scheduler::from_config(&cfg.wol);
        Waker {
            shared: Arc::new(Mutex::new(Shared {
                cfg,
                scheduler,
                last: None,
                wakes: 0,
                unreported: Vec::new(),
            })),
        }
    }

    /// The state; a panic elsewhere while holding it leaves plain data, still usable.
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new configuration (SIGHUP): the cooldown and idle state start afresh, as before.
    pub fn reconfigure(&self, cfg: WakeConfig) {
        let mut s = self.lock();
        s.scheduler = wol::Scheduler::from_config(&cfg.wol);
        s.cfg = cfg;
    }

    /// One scheduler step; sends what it decides (outside the lock). Returns the actions
    /// other than waking (the idle hook) for the caller.
    pub fn step(&self, playing: bool, new_connections: usize) -> Vec<wol::Action> {
        let (actions, cfg) = {
            let mut s = self.lock();
            if !s.cfg.wol.enabled {
                return Vec::new();
            }
            let a = s.scheduler.step(unix_now(), playing, new_connections);
            (a, s.cfg.clone())
        };
        let mut rest = Vec::new();
        for a in actions {
            match a {
                wol::Action::Wake(r) => self.send(&cfg, r),
                other => rest.push(other),
            }
        }
        rest
    }

    fn send(&self, cfg: &WakeConfig, reason: wol::Reason) {
        let Some(mac) = cfg.wol.mac else { return };
        let why = reason_name(reason);
        if cfg.dry_run {
            info!("[dry run] would send a Wake-on-LAN packet ({why})");
            return;
        }
        let sender = wol::Sender::from_config(&cfg.wol);
        match sender.send(mac, cfg.wol.password.as_deref()) {
            Ok(report) => {
                if let Err(e) = &report.udp {
                    warn!("Wake-on-LAN: the UDP form was not sent ({e}); the raw frame was");
                }
                if let Err(e) = &report.raw {
                    warn!("Wake-on-LAN: the raw frame was not sent ({e}); the UDP form was");
                }
                info!("Wake-on-LAN packet sent ({why})");
                let mut s = self.lock();
                s.last = Some(Sent {
                    unix: unix_now(),
                    at: Instant::now(),
                    reason: why,
                });
                s.wakes += 1;
                if s.unreported.len() < 16 {
                    s.unreported.push(why);
                }
            }
            Err(e) => warn!("Wake-on-LAN failed: {e}"),
        }
    }

    /// New connections seen by conntrack: counts those from outside to the Jellyfin ports
    /// and lets the scheduler decide.
    pub fn on_connections(&self, conns: &[NewConn]) {
        let n = {
            let s = self.lock();
            conns
                .iter()
                .filter(|c| conntrack::is_outside_connect(c, &s.cfg.internal, &s.cfg.ports, &[]))
                .count()
        };
        if n > 0 {
            debug!("{n} new connection(s) to Jellyfin from outside");
            self.step(false, n);
        }
    }
}

/// Reads at most [`READS_PER_BURST`] datagrams of events; true when more may be pending.
pub fn drain_burst(w: &mut ConnectWatch, out: &mut Vec<NewConn>) -> bool {
    w.drain_at_most(out, READS_PER_BURST)
}

/// The wake thread: owns the conntrack watch until told to stop.
pub struct WakeThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl WakeThread {
    /// Starts the thread with `watch` (dropped with the closure when the thread cannot start).
    pub fn start(waker: Waker, watch: ConnectWatch) -> io::Result<WakeThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("wake".into())
            .stack_size(128 * 1024)
            .spawn(move || watch_loop(waker, watch, flag))?;
        Ok(WakeThread {
            stop,
            handle: Some(handle),
        })
    }

    /// Starts the thread on the `/proc` table instead (no ctnetlink): a poll every `period`
    /// (the tick interval: the table costs as much to read as `cat` of it), never blocked by
    /// the tick.
    pub fn start_proc(
        waker: Waker,
        poll: ProcConnectPoll,
        period: Duration,
    ) -> io::Result<WakeThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("wake".into())
            .stack_size(128 * 1024)
            .spawn(move || proc_loop(waker, poll, period, flag))?;
        Ok(WakeThread {
            stop,
            handle: Some(handle),
        })
    }

    /// True while the thread runs.
    pub fn alive(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for WakeThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Not joined: it notices the flag within IDLE_POLL, and shutdown must not wait for it.
        drop(self.handle.take());
    }
}

fn watch_loop(waker: Waker, mut watch: ConnectWatch, stop: Arc<AtomicBool>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut conns = Vec::new();
    let ms = PollTimeout::try_from(IDLE_POLL.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    while !stop.load(Ordering::Relaxed) {
        let ready = {
            let mut fds = [PollFd::new(watch.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(n) => n > 0,
                Err(nix::errno::Errno::EINTR) => false,
                Err(e) => {
                    warn!("Wake-on-LAN: waiting for new connections failed: {e}");
                    std::thread::sleep(IDLE_POLL);
                    false
                }
            }
        };
        if !ready {
            continue;
        }
        conns.clear();
        let more = drain_burst(&mut watch, &mut conns);
        waker.on_connections(&conns);
        if more {
            std::thread::sleep(FLOOD_PAUSE);
        }
    }
    debug!("wake thread stopped");
}

fn proc_loop(waker: Waker, mut poll: ProcConnectPoll, period: Duration, stop: Arc<AtomicBool>) {
    let mut conns = Vec::new();
    let mut next = Instant::now();
    let mut failed = false;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(IDLE_POLL));
            continue;
        }
        next = now + period;
        let ports = waker.lock().cfg.ports.clone();
        conns.clear();
        match poll.poll(&ports, &mut conns) {
            Ok(()) => {
                failed = false;
                waker.on_connections(&conns);
            }
            Err(e) if !failed => {
                failed = true;
                warn!("Wake-on-LAN: cannot read the conntrack table ({e})");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn refused_and_accepted_mean_awake() {
        assert_eq!(classify(&Ok(())), Liveness::Awake);
        for k in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
        ] {
            assert_eq!(classify(&Err(io::Error::from(k))), Liveness::Awake, "{k:?}");
        }
    }

    #[test]
    fn silence_means_asleep() {
        assert_eq!(
            classify(&Err(io::Error::from(io::ErrorKind::TimedOut))),
            Liveness::Asleep
        );
        for errno in [nix::libc::EHOSTUNREACH, nix::libc::ENETUNREACH] {
            assert_eq!(
                classify(&Err(io::Error::from_raw_os_error(errno))),
                Liveness::Asleep,
                "{errno}"
            );
        }
    }

    #[test]
    fn probe_of_a_closed_local_port_is_awake() {
        // Bind then drop: the port is closed, the kernel answers RST.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert_eq!(probe(addr, PROBE_TIMEOUT), Liveness::Awake);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            probe(l.local_addr().unwrap(), PROBE_TIMEOUT),
            Liveness::Awake
        );
    }

    #[test]
    fn presence_sleep_then_wake_measures_from_the_packet() {
        let mut p = Presence::default();
        assert!(!p.asleep() && !p.known);
        assert_eq!(p.probed(1000, Liveness::Asleep), Change::FellAsleep);
        assert_eq!(p.probed(1005, Liveness::Asleep), Change::None);
        assert_eq!(p.asleep_since, Some(1000));
        let sent = Instant::now();
        let now = sent + Duration::from_secs(9);
        assert_eq!(p.answered(1009, now, Some(sent)), Change::Woke(Some(9.0)));
        assert!(!p.asleep());
        assert_eq!(p.awake_after_s, Some(9.0));
        // Answering again changes nothing and keeps the figure.
        assert_eq!(p.answered(1010, now, Some(sent)), Change::None);
        assert_eq!(p.awake_after_s, Some(9.0));
    }

    #[test]
    fn presence_host_back_before_jellyfin_still_measures() {
        let mut p = Presence::default();
        p.probed(100, Liveness::Asleep);
        let sent = Instant::now();
        assert_eq!(p.probed(104, Liveness::Awake), Change::HostBack);
        assert!(!p.asleep());
        assert_eq!(
            p.answered(112, sent + Duration::from_secs(12), Some(sent)),
            Change::Woke(Some(12.0))
        );
    }

    #[test]
    fn states_for_the_status() {
        let mut p = Presence::default();
        assert_eq!(p.state(None), None, "unknown before any answer or probe");
        p.probed(1000, Liveness::Awake);
        assert_eq!(p.state(None), Some("awake"));
        // A packet long before the sleep is not this sleep's wake.
        p.probed(2000, Liveness::Asleep);
        assert_eq!(p.state(Some(1000)), Some("asleep"));
        // Sent just before the silence was noticed, or during it: waking.
        assert_eq!(p.state(Some(1950)), Some("waking"));
        assert_eq!(p.state(Some(2005)), Some("waking"));
        // The host answers probes; Jellyfin not yet.
        p.probed(2010, Liveness::Awake);
        assert_eq!(p.state(Some(2005)), Some("waking"));
        assert_eq!(p.state(None), Some("booting"));
        p.answered(2012, Instant::now(), None);
        assert_eq!(p.state(Some(2005)), Some("awake"));
    }

    #[test]
    fn booting_is_quiet_for_a_while_only() {
        let mut p = Presence::default();
        assert!(!p.booting(0));
        p.probed(100, Liveness::Asleep);
        assert!(!p.booting(101), "asleep is not booting");
        p.probed(110, Liveness::Awake);
        assert!(p.booting(111));
        assert!(p.booting(110 + BOOT_GRACE_S - 1));
        assert!(!p.booting(110 + BOOT_GRACE_S));
        p.answered(120, Instant::now(), None);
        assert!(!p.booting(121));
    }

    #[test]
    fn presence_wake_without_packet_has_no_figure() {
        let mut p = Presence::default();
        p.probed(50, Liveness::Asleep);
        assert_eq!(p.answered(60, Instant::now(), None), Change::Woke(None));
        assert_eq!(p.awake_after_s, None);
    }

    #[test]
    fn presence_old_packet_is_not_this_wake() {
        let mut p = Presence::default();
        let sent = Instant::now();
        p.probed(100, Liveness::Asleep);
        let later = sent + Duration::from_secs(3600);
        assert_eq!(p.answered(110, later, Some(sent)), Change::Woke(None));
    }

    #[test]
    fn presence_awake_stays_awake() {
        let mut p = Presence::default();
        assert_eq!(p.probed(5, Liveness::Awake), Change::None);
        assert!(p.known && !p.asleep());
        assert_eq!(p.answered(6, Instant::now(), None), Change::None);
        assert_eq!(p.slept_since, None);
    }

    fn conn(src: &str, port: u16) -> NewConn {
        NewConn {
            src: src.parse::<IpAddr>().unwrap(),
            dst: "198.51.100.1".parse().unwrap(),
            dport: port,
            proto: 6,
        }
    }

    fn waker(cooldown: u32) -> Waker {
        let mut wol = config::Config::default().wol;
        wol.enabled = true;
        wol.on_connect = true;
        wol.cooldown = cooldown;
        // No MAC: decisions are made, nothing is sent (no privileges needed).
        wol.mac = None;
        Waker::new(WakeConfig {
            wol,
            internal: vec!["192.168.0.0/16".parse().unwrap()],
            ports: vec![8096],
            dry_run: true,
        })
    }

    #[test]
    fn only_outside_connections_to_the_port_count() {
        let w = waker(60);
        w.on_connections(&[conn("192.168.1.5", 8096), conn("203.0.113.9", 22)]);
        assert_eq!(w.lock().scheduler.last_wake(), None);
        w.on_connections(&[conn("203.0.113.9", 8096)]);
        assert!(w.lock().scheduler.last_wake().is_some());
    }

    #[test]
    fn tick_and_thread_share_one_cooldown() {
        let w = waker(60);
        w.on_connections(&[conn("203.0.113.9", 8096)]);
        let first = w.lock().scheduler.last_wake();
        // The tick's session trigger within the cooldown decides nothing new.
        assert!(w.step(true, 0).is_empty());
        assert_eq!(w.lock().scheduler.last_wake(), first);
    }

    #[test]
    fn disabled_decides_nothing() {
        let w = waker(0);
        w.lock().cfg.wol.enabled = false;
        w.on_connections(&[conn("203.0.113.9", 8096)]);
        assert_eq!(w.lock().scheduler.last_wake(), None);
    }

    #[test]
    fn proc_thread_wakes_on_an_unanswered_syn() {
        let dir = std::env::temp_dir().join(format!("jd-wake-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let table = dir.join("nf_conntrack");
        std::fs::write(&table, "").unwrap();
        let w = waker(60);
        let t = WakeThread::start_proc(
            w.clone(),
            ProcConnectPoll::with_source(conntrack::ProcSource::with_path(&table)),
            Duration::from_millis(50),
        )
        .unwrap();
        std::fs::write(
            &table,
            "ipv4     2 tcp      6 118 SYN_SENT src=203.0.113.9 dst=198.51.100.1 sport=60130 dport=8096 [UNREPLIED] src=192.168.1.2 dst=203.0.113.9 sport=8096 dport=60130 mark=0 zone=0 use=2\n",
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.lock().scheduler.last_wake().is_none() {
            assert!(Instant::now() < deadline, "no wake decided");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(t.alive());
        drop(t);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn concurrent_steps_never_deadlock() {
        let w = waker(0);
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        if i % 2 == 0 {
                            w.on_connections(&[conn("203.0.113.9", 8096)]);
                        } else {
                            w.step(true, 0);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(w.lock().scheduler.last_wake().is_some());
    }
}
