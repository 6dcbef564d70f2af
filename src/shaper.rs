//! Router-side enforcement: one tc HTB class per remote viewer.
//!
//! The Jellyfin server's packets are taken at the LAN device's ingress hook (where the reply
//! packets still carry the viewer's real address as destination), redirected to an own ifb
//! device, and shaped there by an HTB tree. See the README, "Router-side shaping", for the layout and handles.
//!
//! [`plan`] is the pure part (desired + parsed actual state → tc commands); [`TcShaper`] is the
//! thin adapter that reads the kernel state over rtnetlink (so a steady-state tick starts no
//! process; `tc ... show` is the fallback when rtnetlink fails), applies the plan with
//! `tc -batch -` and manages the ifb device over rtnetlink.

pub(crate) mod netlink;
pub mod parse;
pub mod plan;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parse::{Class, Filter, Qdisc};
use plan::{Actual, Leaf};

/// One viewer's class: its public address and limits in bit/s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerClass {
    pub ip: IpAddr,
    pub rate_bps: u64,
    pub ceil_bps: u64,
}

/// What the router should enforce this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub lan_device: String,
    pub server_ip: IpAddr,
    pub server_ip6: Option<Ipv6Addr>,
    pub ports: Vec<u16>,
    /// Cap of the Jellyfin parent class (the Jellyfin budget).
    pub total_bps: u64,
    /// Guaranteed rate of the newcomer class: server traffic to an external destination that
    /// has no viewer class yet (a stream starting between two ticks). Its ceil is the budget.
    pub newcomer_bps: u64,
    /// Internal destinations (the LAN ranges, which hold the router's own address): server
    /// traffic to them is never limited nor counted as Jellyfin's. Link-local ranges are
    /// always added.
    pub internal: Vec<ipnet::IpNet>,
    pub viewers: Vec<ViewerClass>,
    /// false = counting only: classes unlimited.
    pub enforce: bool,
}

/// Why shaping does not work; `Display` tells the user what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The tc program cannot be run.
    NoTc {
        path: String,
        detail: String,
    },
    NoIfb,
    NoHtb,
    /// ingress qdisc, u32 classifier or mirred action missing.
    NoClassifier(String),
    Permission,
    /// The LAN device does not exist (yet).
    NoDevice(String),
    /// The spec cannot be turned into tc state.
    InvalidSpec(String),
    /// tc refused or failed.
    Tc {
        what: String,
        detail: String,
    },
    /// rtnetlink refused or failed.
    Link {
        what: String,
        detail: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoTc { path, detail } => write!(
                f,
                "cannot run tc at {path} ({detail}): install the tc package (opkg install tc-tiny)"
            ),
            Error::NoIfb => write!(f, "kernel lacks ifb: install kmod-ifb"),
            Error::NoHtb => write!(f, "kernel lacks the htb qdisc: install kmod-sched-core"),
            Error::NoClassifier(what) => {
                write!(f, "kernel lacks tc {what}: install kmod-sched-core")
            }
            Error::Permission => write!(
                f,
                "not allowed to change traffic control: run as root (CAP_NET_ADMIN)"
            ),
            Error::NoDevice(d) => write!(
                f,
                "LAN device '{d}' does not exist: check network.lan_device (shaping resumes when it appears)"
            ),
            Error::InvalidSpec(m) => write!(f, "shaping not applied: {m}"),
            Error::Tc { what, detail } => write!(f, "tc {what} failed: {detail}"),
            Error::Link { what, detail } => write!(f, "{what} failed: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

/// Router-side enforcement, called once per tick.
pub trait Shaper {
    /// Makes the kernel state match `spec`, changing only what differs.
    fn reconcile(&mut self, spec: &Spec) -> Result<(), Error>;
    /// Cumulative bytes sent per viewer class since the class was created (the per-viewer
    /// Jellyfin byte counter for the daemon; stays right under nlbwmon and flow offloading).
    fn counters(&mut self) -> Result<HashMap<IpAddr, u64>, Error>;
    /// Cumulative bytes of the Jellyfin parent class: all the server's traffic to external
    /// destinations (viewers and newcomers), since the tree was built. 0 without a tree; it
    /// starts again from 0 when the tree is rebuilt, so treat a decrease as a reset.
    fn jellyfin_bytes(&mut self) -> Result<u64, Error>;
    /// Removes every own qdisc, class, filter and the ifb.
    fn remove(&mut self) -> Result<(), Error>;
}

/// What the kernel and tc offer, for `jellydemon check` and the shaper itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// tc runs; its version line.
    pub tc: bool,
    pub tc_version: Option<String>,
    pub ifb: bool,
    pub htb: bool,
    pub fq_codel: bool,
    pub ingress: bool,
    pub u32: bool,
    pub mirred: bool,
    /// Why tc or the ifb test failed, when it did.
    pub detail: Option<String>,
    /// Why listing the scratch tree over rtnetlink failed (then every tick runs `tc`); `None`
    /// when it worked or was not tried.
    pub netlink_error: Option<String>,
}

impl Capabilities {
    /// Everything shaping needs is there (fq_codel is optional).
    pub fn usable(&self) -> bool {
        self.first_error().is_none()
    }

    /// The first missing piece as an actionable error.
    pub fn first_error(&self) -> Option<Error> {
        if !self.tc {
            return Some(Error::NoTc {
                path: "tc".into(),
                detail: self.detail.clone().unwrap_or_else(|| "not found".into()),
            });
        }
        if !self.ifb {
            if self.detail.as_deref() == Some("permission denied") {
                return Some(Error::Permission);
            }
            return Some(Error::NoIfb);
        }
        if !self.htb {
            return Some(Error::NoHtb);
        }
        for (ok, what) in [
            (self.ingress, "ingress qdisc"),
            (self.u32, "u32 classifier"),
            (self.mirred, "mirred action"),
        ] {
            if !ok {
                return Some(Error::NoClassifier(what.into()));
            }
        }
        None
    }
}

const TC_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a program with an argument vector (never a shell), feeding `input`, with a time limit.
/// `started` counts the processes started.
fn run(
    path: &str,
    args: &[&str],
    input: Option<&str>,
    started: &AtomicU32,
) -> std::io::Result<(bool, String, String)> {
    started.fetch_add(1, Ordering::Relaxed);
    crate::child::run(path, args, input, TC_TIMEOUT)
}

fn short(s: &str) -> String {
    let t: String = s.trim().lines().take(4).collect::<Vec<_>>().join("; ");
    t.chars().take(400).collect()
}

fn link_error(what: &str, e: std::io::Error) -> Error {
    match e.raw_os_error() {
        Some(code) if code == nix::errno::Errno::EPERM as i32 => Error::Permission,
        Some(code) if code == nix::errno::Errno::EOPNOTSUPP as i32 => Error::NoIfb,
        _ => Error::Link {
            what: what.into(),
            detail: e.to_string(),
        },
    }
}

/// Tests what shaping needs on a scratch ifb device (created and deleted again). Needs root.
pub fn probe(tc_path: &str) -> Capabilities {
    probe_counted(tc_path, &AtomicU32::new(0))
}

fn probe_counted(tc_path: &str, started: &AtomicU32) -> Capabilities {
    let mut caps = Capabilities::default();
    match run(tc_path, &["-V"], None, started) {
        Ok((true, out, _)) => {
            caps.tc = true;
            caps.tc_version = Some(out.trim().to_string());
        }
        Ok((false, out, err)) => {
            caps.detail = Some(short(&format!("{out}{err}")));
            return caps;
        }
        Err(e) => {
            caps.detail = Some(e.to_string());
            return caps;
        }
    }
    // Unique per call: "jdp" + pid + "." + counter fits the 15-character limit.
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10_000;
    let dev = format!("jdp{}.{n}", std::process::id() % 10_000_000);
    if let Err(e) = netlink::create_ifb(&dev) {
        caps.detail = Some(match link_error("", e) {
            Error::Permission => "permission denied".into(),
            other => other.to_string(),
        });
        return caps;
    }
    caps.ifb = true;
    let ok = |args: &[&str]| matches!(run(tc_path, args, None, started), Ok((true, _, _)));
    caps.htb = ok(&["qdisc", "add", "dev", &dev, "root", "handle", "1:", "htb"]);
    if caps.htb {
        caps.fq_codel = ok(&[
            "qdisc", "add", "dev", &dev, "parent", "1:", "handle", "2:", "fq_codel",
        ]);
    } else {
        caps.fq_codel = ok(&[
            "qdisc", "add", "dev", &dev, "root", "handle", "2:", "fq_codel",
        ]);
    }
    caps.ingress = ok(&["qdisc", "add", "dev", &dev, "handle", "ffff:", "ingress"]);
    if caps.ingress {
        caps.u32 = ok(&[
            "filter", "add", "dev", &dev, "ingress", "protocol", "ip", "prio", "1", "u32", "match",
            "u32", "0", "0", "at", "0",
        ]);
        caps.mirred = ok(&[
            "filter", "add", "dev", &dev, "ingress", "protocol", "ip", "prio", "2", "u32", "match",
            "u32", "0", "0", "at", "0", "action", "mirred", "egress", "redirect", "dev", &dev,
        ]);
    }
    // The tree just built (htb, fq_codel, ingress, u32 with mirred) read back over rtnetlink
    // as each tick reads its own.
    if caps.htb {
        let listed = netlink_listing(&dev, Part::Ifb)
            .and_then(|_| netlink_listing(&dev, Part::LanIngress).map(|_| ()));
        caps.netlink_error = listed.err().map(|e| e.to_string());
    }
    let _ = netlink::delete_link(&dev);
    caps
}

/// Where the shaper reads the kernel's traffic-control state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    /// rtnetlink dumps: no process (the default); `tc` when a dump fails.
    Netlink,
    /// `tc ... show`, a process per listing.
    Tc,
}

/// Which of a device's objects a listing holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The own ifb: qdiscs, the filters of the root htb, classes with their counters.
    Ifb,
    /// The LAN device: qdiscs and, when it has an ingress hook, the hook's filters.
    LanIngress,
}

/// One device's traffic-control objects, as `tc ... show` prints them (see [`parse`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub qdiscs: Vec<Qdisc>,
    pub classes: Vec<Class>,
    pub filters: Vec<Filter>,
}

fn has_ingress_hook(qdiscs: &[Qdisc]) -> bool {
    qdiscs
        .iter()
        .any(|q| (q.kind == "ingress" || q.kind == "clsact") && q.handle == "ffff:")
}

/// The listing over rtnetlink: one socket, one dump per object type.
fn netlink_listing(dev: &str, part: Part) -> std::io::Result<Listing> {
    let index = netlink::device_index(dev)?;
    let mut nl = netlink::Lister::open()?;
    let qdiscs = nl.qdiscs(index)?;
    let mut l = Listing::default();
    match part {
        Part::Ifb => {
            l.filters = nl.filters(index, u32::from(plan::ROOT_MAJOR) << 16)?;
            l.classes = nl.classes(index)?;
        }
        Part::LanIngress if has_ingress_hook(&qdiscs) => {
            l.filters = nl.filters(index, netlink::INGRESS_FILTERS)?;
        }
        Part::LanIngress => {}
    }
    l.qdiscs = qdiscs;
    Ok(l)
}

/// A planned `class change` of an htb class.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HtbChange {
    dev: String,
    parent: u32,
    classid: u32,
    rate_bps: u64,
    ceil_bps: u64,
    quantum: u32,
}

/// Reads a planner command back when it is exactly `class change dev D parent P classid C htb
/// rate R ceil C quantum Q`; anything else (or any other wording) is left to tc.
fn htb_change(c: &[String]) -> Option<HtbChange> {
    let w: Vec<&str> = c.iter().map(String::as_str).collect();
    let handle =
        |s: &str| parse::parse_classid(s).map(|(maj, min)| u32::from(maj) << 16 | u32::from(min));
    match w.as_slice() {
        ["class", "change", "dev", dev, "parent", parent, "classid", classid, "htb", "rate", rate, "ceil", ceil, "quantum", quantum] => {
            Some(HtbChange {
                dev: dev.to_string(),
                parent: handle(parent)?,
                classid: handle(classid)?,
                rate_bps: parse::parse_rate(rate)?,
                ceil_bps: parse::parse_rate(ceil)?,
                quantum: quantum.parse().ok()?,
            })
        }
        _ => None,
    }
}

/// The kernel's traffic control as the [`Shaper`]: read and share changes over rtnetlink,
/// everything else with `tc`.
#[derive(Debug)]
pub struct TcShaper {
    ifb: String,
    tc: String,
    reader: Reader,
    /// Processes started so far (all `tc`): 0 per steady-state tick. 32 bits: mips has no
    /// 64-bit atomics, and a count that wraps after 4 billion runs is still a fine counter.
    started: AtomicU32,
    /// A failed rtnetlink listing is logged once, not every tick.
    netlink_warned: AtomicBool,
    /// Learnt once, on the first reconcile that finds everything needed.
    leaf: Option<Leaf>,
    /// The LAN device of the last reconcile, for `remove`.
    lan_device: Option<String>,
    /// The ifb's qdiscs, classes and filters as `counters` last read them. The reconcile that
    /// follows in the same tick plans against them instead of listing them again, and
    /// `jellyfin_bytes` right after `counters` reads its figure from them too.
    ifb_read: Option<(Instant, Actual)>,
}

/// How old a listing taken by `counters` may be for `reconcile` to use it.
const IFB_READ_FRESH: Duration = Duration::from_secs(3);
/// How long a `counters()` reading may serve `jellyfin_bytes()`; well under a tick (>= 1 s).
const READING_REUSE: Duration = Duration::from_millis(900);

impl TcShaper {
    /// `ifb_name` must not contain "ifb" (sqm-scripts greps for `ifb[^) ]+`), e.g. "jdshape0".
    pub fn new(ifb_name: &str, tc_path: &str) -> Self {
        TcShaper {
            ifb: ifb_name.to_string(),
            tc: tc_path.to_string(),
            reader: Reader::Netlink,
            started: AtomicU32::new(0),
            netlink_warned: AtomicBool::new(false),
            leaf: None,
            lan_device: None,
            ifb_read: None,
        }
    }

    /// Reads the state with `reader` instead of the default (rtnetlink, tc as fallback).
    pub fn with_reader(mut self, reader: Reader) -> Self {
        self.reader = reader;
        self
    }

    /// How many processes (`tc` runs) this shaper has started.
    pub fn processes_started(&self) -> u64 {
        u64::from(self.started.load(Ordering::Relaxed))
    }

    /// Lists `dev` with the given reader, without falling back to the other.
    pub fn listing(&self, reader: Reader, dev: &str, part: Part) -> Result<Listing, Error> {
        if !plan::valid_device_name(dev) {
            return Err(Error::InvalidSpec(format!(
                "invalid device name '{}'",
                dev.escape_debug()
            )));
        }
        match reader {
            Reader::Netlink => netlink_listing(dev, part).map_err(|e| Error::Link {
                what: format!("listing traffic control of {dev} over rtnetlink"),
                detail: e.to_string(),
            }),
            Reader::Tc => self.tc_listing(dev, part),
        }
    }

    /// rtnetlink first; `tc` when that fails.
    fn read(&self, dev: &str, part: Part) -> Result<Listing, Error> {
        if self.reader == Reader::Netlink {
            match self.listing(Reader::Netlink, dev, part) {
                Ok(l) => return Ok(l),
                Err(e) => self.netlink_failed(&e),
            }
        }
        self.listing(Reader::Tc, dev, part)
    }

    /// Logged once at warning level, then at debug level: the fallback works, only dearer.
    fn netlink_failed(&self, e: &dyn fmt::Display) {
        if self.netlink_warned.swap(true, Ordering::Relaxed) {
            log::debug!("shaper: {e}; using tc instead");
        } else {
            log::warn!("shaper: {e}; using tc instead (each tc run is a process)");
        }
    }

    /// Rate changes of existing classes (the common change: shares move) over rtnetlink.
    fn netlink_changes(&self, changes: &[HtbChange]) -> std::io::Result<()> {
        let clock = netlink::Psched::read()?;
        for c in changes {
            let options = netlink::htb_class_options(c.rate_bps, c.ceil_bps, c.quantum, &clock);
            netlink::change_htb_class(
                netlink::device_index(&c.dev)?,
                c.parent,
                c.classid,
                &options,
            )?;
        }
        Ok(())
    }

    fn show(&self, args: &[&str]) -> Result<String, Error> {
        match run(&self.tc, args, None, &self.started) {
            Ok((true, out, _)) => Ok(out),
            Ok((false, out, err)) => Err(self.tc_error(&args.join(" "), &format!("{out}{err}"))),
            Err(e) => Err(self.spawn_error(&args.join(" "), e)),
        }
    }

    fn spawn_error(&self, what: &str, e: std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => Error::NoTc {
                path: self.tc.clone(),
                detail: e.to_string(),
            },
            _ => Error::Tc {
                what: what.to_string(),
                detail: e.to_string(),
            },
        }
    }

    fn tc_error(&self, what: &str, text: &str) -> Error {
        if text.contains("Operation not permitted") {
            return Error::Permission;
        }
        Error::Tc {
            what: what.to_string(),
            detail: short(text),
        }
    }

    /// Reads the ifb's qdiscs, filters and classes with their counters.
    fn read_ifb(&self, a: &mut Actual) -> Result<(), Error> {
        let l = self.read(&self.ifb, Part::Ifb)?;
        a.ifb_qdiscs = l.qdiscs;
        a.ifb_filters = l.filters;
        a.ifb_classes = l.classes;
        Ok(())
    }

    fn read_lan(&self, lan: &str, a: &mut Actual) -> Result<(), Error> {
        let l = self.read(lan, Part::LanIngress)?;
        a.lan_qdiscs = l.qdiscs;
        a.lan_filters = l.filters;
        Ok(())
    }

    /// The listing with `tc`. The ifb's takes one run: the classes come last, so the `Sent`
    /// lines of qdiscs and filters precede every class line and are not taken for a class's
    /// counter.
    fn tc_listing(&self, dev: &str, part: Part) -> Result<Listing, Error> {
        let mut l = Listing::default();
        match part {
            Part::Ifb => {
                let script = format!(
                    "qdisc show dev {dev}\nfilter show dev {dev} parent {:x}:\nclass show dev {dev}\n",
                    plan::ROOT_MAJOR
                );
                let text = match run(
                    &self.tc,
                    &["-s", "-batch", "-"],
                    Some(&script),
                    &self.started,
                ) {
                    Ok((true, out, _)) => out,
                    Ok((false, out, err)) => {
                        return Err(self.tc_error("show (batch)", &format!("{out}{err}")))
                    }
                    Err(e) => return Err(self.spawn_error("show (batch)", e)),
                };
                l.qdiscs = parse::qdiscs(&text);
                l.filters = parse::filters(&text);
                l.classes = parse::classes(&text);
            }
            Part::LanIngress => {
                l.qdiscs = parse::qdiscs(&self.show(&["qdisc", "show", "dev", dev])?);
                if has_ingress_hook(&l.qdiscs) {
                    l.filters =
                        parse::filters(&self.show(&["filter", "show", "dev", dev, "ingress"])?);
                }
            }
        }
        Ok(l)
    }

    /// Applies the planned commands: over rtnetlink when they are all rate changes of
    /// existing htb classes, else (and when rtnetlink fails) in one `tc -batch`.
    fn batch(&self, cmds: &[plan::Cmd]) -> Result<(), Error> {
        if cmds.is_empty() {
            return Ok(());
        }
        if self.reader == Reader::Netlink {
            if let Some(changes) = cmds
                .iter()
                .map(|c| htb_change(c))
                .collect::<Option<Vec<_>>>()
            {
                match self.netlink_changes(&changes) {
                    Ok(()) => return Ok(()),
                    Err(e) => self.netlink_failed(&format!("changing classes over rtnetlink: {e}")),
                }
            }
        }
        let text = plan::render(cmds);
        match run(&self.tc, &["-batch", "-"], Some(&text), &self.started) {
            Ok((true, _, _)) => Ok(()),
            Ok((false, out, err)) => Err(self.tc_error("-batch", &format!("{out}{err}"))),
            Err(e) => Err(self.spawn_error("-batch", e)),
        }
    }

    /// Returns whether the device had to be created (so any earlier listing of it is void).
    fn ensure_ifb(&self) -> Result<bool, Error> {
        let up = |created| {
            netlink::set_up(&self.ifb)
                .map(|()| created)
                .map_err(|e| link_error("bringing the ifb up", e))
        };
        if netlink::link_exists(&self.ifb) {
            return up(false);
        }
        match netlink::create_ifb(&self.ifb) {
            Ok(()) => Ok(true),
            // Raced with another start: use it.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => up(true),
            Err(e) => Err(link_error("creating the ifb device", e)),
        }
    }
}

impl Shaper for TcShaper {
    fn reconcile(&mut self, spec: &Spec) -> Result<(), Error> {
        // Taken first: whatever happens below, a listing is used at most once.
        let cached = self.ifb_read.take();
        if self.ifb.contains("ifb") {
            return Err(Error::InvalidSpec(format!(
                "ifb name '{}' contains \"ifb\", which sqm-scripts would take for its own",
                self.ifb
            )));
        }
        let leaf = match self.leaf {
            Some(l) => l,
            None => {
                let caps = probe_counted(&self.tc, &self.started);
                if let Some(mut e) = caps.first_error() {
                    if let Error::NoTc { path, .. } = &mut e {
                        *path = self.tc.clone();
                    }
                    return Err(e);
                }
                let l = if caps.fq_codel {
                    Leaf::FqCodel
                } else {
                    Leaf::Pfifo
                };
                self.leaf = Some(l);
                l
            }
        };
        let desired = plan::desired(spec, &self.ifb, leaf).map_err(Error::InvalidSpec)?;
        if !netlink::link_exists(&spec.lan_device) {
            return Err(Error::NoDevice(spec.lan_device.clone()));
        }
        if let Some(old) = &self.lan_device {
            if *old != spec.lan_device {
                let old = old.clone();
                self.remove_lan(&old)?;
            }
        }
        self.lan_device = Some(spec.lan_device.clone());
        let created = self.ensure_ifb()?;
        let mut actual = Actual::default();
        match cached {
            Some((at, read)) if !created && at.elapsed() <= IFB_READ_FRESH => {
                actual.ifb_qdiscs = read.ifb_qdiscs;
                actual.ifb_classes = read.ifb_classes;
                actual.ifb_filters = read.ifb_filters;
            }
            _ => self.read_ifb(&mut actual)?,
        }
        self.read_lan(&spec.lan_device, &mut actual)?;
        let cmds = plan::plan(&desired, &actual);
        for c in &cmds {
            log::debug!("shaper: tc {}", c.join(" "));
        }
        self.batch(&cmds)
    }

    fn counters(&mut self) -> Result<HashMap<IpAddr, u64>, Error> {
        self.ifb_read = None;
        if !netlink::link_exists(&self.ifb) {
            return Ok(HashMap::new());
        }
        let mut a = Actual::default();
        self.read_ifb(&mut a)?;
        let counters = plan::counters(&a.ifb_classes, &a.ifb_filters);
        self.ifb_read = Some((Instant::now(), a));
        Ok(counters)
    }

    /// Uses the listing of the last `counters()` call when that call was less than 0.9 s ago
    /// (so a tick costs one `tc` run for both counters); otherwise reads the kernel.
    fn jellyfin_bytes(&mut self) -> Result<u64, Error> {
        if let Some((at, a)) = &self.ifb_read {
            if at.elapsed() < READING_REUSE {
                return Ok(plan::jellyfin_bytes(&a.ifb_classes));
            }
        }
        if !netlink::link_exists(&self.ifb) {
            return Ok(0);
        }
        let mut a = Actual::default();
        self.read_ifb(&mut a)?;
        Ok(plan::jellyfin_bytes(&a.ifb_classes))
    }

    fn remove(&mut self) -> Result<(), Error> {
        self.ifb_read = None;
        let mut result = Ok(());
        if let Some(lan) = self.lan_device.clone() {
            if let Err(e) = self.remove_lan(&lan) {
                result = Err(e);
            }
        }
        if let Err(e) = netlink::delete_link(&self.ifb) {
            result = Err(link_error("deleting the ifb device", e));
        }
        result
    }
}

impl TcShaper {
    /// Removes our filters (and the ingress qdisc when nobody else uses it) from `lan`.
    fn remove_lan(&self, lan: &str) -> Result<(), Error> {
        if !plan::valid_device_name(lan) || !netlink::link_exists(lan) {
            return Ok(());
        }
        let mut a = Actual::default();
        self.read_lan(lan, &mut a)?;
        self.batch(&plan::plan_remove(
            lan,
            &self.ifb,
            &a.lan_qdiscs,
            &a.lan_filters,
        ))
    }

    /// Sets the LAN device that `remove` cleans when no reconcile ran in this process (e.g.
    /// `jellydemon restore` after a crash).
    pub fn with_lan_device(mut self, lan_device: &str) -> Self {
        self.lan_device = Some(lan_device.to_string());
        self
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod io_tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn class_changes_are_read_back_and_nothing_else() {
        let c = htb_change(&words(
            "class change dev jdshape0 parent 4a44:a classid 4a44:101 htb \
             rate 3000000bit ceil 3450000bit quantum 37500",
        ))
        .expect("change");
        assert_eq!(
            c,
            HtbChange {
                dev: "jdshape0".into(),
                parent: 0x4a44_000a,
                classid: 0x4a44_0101,
                rate_bps: 3_000_000,
                ceil_bps: 3_450_000,
                quantum: 37_500,
            }
        );
        let head = "class change dev jdshape0 parent 4a44:a classid 4a44:101";
        for other in [
            "class add dev jdshape0 parent 4a44:a classid 4a44:101 htb rate 3000000bit ceil 3450000bit quantum 37500".to_string(),
            format!("{head} htb rate 3000000bit ceil 3450000bit quantum 37500 prio 1"),
            format!("{head} htb rate fast ceil 3450000bit quantum 37500"),
            format!("{head} hfsc rate 3000000bit ceil 3450000bit quantum 37500"),
            format!("{head} htb rate 3000000bit ceil 3450000bit quantum -1"),
            "class del dev jdshape0 classid 4a44:101".to_string(),
            String::new(),
        ] {
            assert_eq!(htb_change(&words(&other)), None, "{other}");
        }
    }
}
