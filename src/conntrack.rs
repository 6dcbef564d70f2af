//! Conntrack adapters (DESIGN.md §3, §8, §10).
//!
//! 1. Per-viewer Jellyfin bytes without shaping: the reply direction (server → viewer) of the
//!    flows whose reply source is the server's address and port. A port forward shows up as
//!    orig = viewer → WAN IP:port, reply src = server; IPv6 without NAT as orig dst = server.
//!    Two sources give the same [`Flow`]s: [`NetlinkSource`] (ctnetlink dump filtered in the
//!    kernel) and [`ProcSource`] (a streaming reader of `/proc/net/nf_conntrack`).
//!    [`FlowCounter`] turns per-flow counters into monotonic per-viewer totals.
//! 2. New connections for Wake-on-LAN: [`ConnectWatch`] (ctnetlink NEW events) and the
//!    fallback [`ProcConnectPoll`].
//!
//! The dump is always `IPCTNL_MSG_CT_GET`, never `..._CTRZERO`, which would zero the counters
//! nlbwmon relies on; in turn, nlbwmon zeroes them under our feet, so every decrease of a flow's
//! counter is taken as a reset (see [`FlowCounter`]).

use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Where the kernel publishes the conntrack table as text.
pub const PROC_PATH: &str = "/proc/net/nf_conntrack";
/// The accounting switch; counters exist only for connections created while it is 1.
pub const ACCT_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";

const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What went wrong reading conntrack.
#[derive(Debug)]
pub enum Error {
    /// A system call or file access failed.
    Io {
        what: &'static str,
        source: io::Error,
    },
    /// The kernel answered a netlink request with an error.
    Netlink { what: &'static str, errno: i32 },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { what, source } => {
                write!(f, "{what}: {source}")?;
                if source.kind() == io::ErrorKind::NotFound {
                    write!(f, " (is kmod-nf-conntrack loaded?)")?;
                } else if source.kind() == io::ErrorKind::PermissionDenied {
                    write!(f, " (conntrack needs root)")?;
                }
                Ok(())
            }
            Error::Netlink { what, errno } => {
                let e = io::Error::from_raw_os_error(*errno);
                write!(f, "{what}: {e}")?;
                if *errno == nix::libc::EPROTONOSUPPORT || *errno == nix::libc::ENOENT {
                    write!(f, " (is kmod-nf-conntrack-netlink installed?)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Error {}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// One direction of a connection. Ports are 0 for protocols without ports (ICMP, GRE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// The TCP state word of an entry (other protocols' states are `Other`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
    Other,
}

impl State {
    fn from_word(w: &str) -> State {
        match w {
            "SYN_SENT" | "SYN_SENT2" => State::SynSent,
            "SYN_RECV" => State::SynRecv,
            "ESTABLISHED" => State::Established,
            "FIN_WAIT" => State::FinWait,
            "CLOSE_WAIT" => State::CloseWait,
            "LAST_ACK" => State::LastAck,
            "TIME_WAIT" => State::TimeWait,
            "CLOSE" => State::Close,
            _ => State::Other,
        }
    }

    fn from_tcp_number(n: u8) -> State {
        // enum tcp_conntrack in the kernel's uapi.
        match n {
            1 | 9 => State::SynSent,
            2 => State::SynRecv,
            3 => State::Established,
            4 => State::FinWait,
            5 => State::CloseWait,
            6 => State::LastAck,
            7 => State::TimeWait,
            8 => State::Close,
            _ => State::Other,
        }
    }
}

/// One conntrack entry, as much as jellydemon needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Layer-4 protocol number (6 = TCP, 17 = UDP, ...).
    pub proto: u8,
    /// Seconds left; absent for offloaded entries.
    pub timeout: Option<u32>,
    pub state: Option<State>,
    pub orig: Tuple,
    pub reply: Tuple,
    /// Bytes in the original direction; absent without accounting.
    pub orig_bytes: Option<u64>,
    /// Bytes in the reply direction; absent without accounting.
    pub reply_bytes: Option<u64>,
    /// No packet seen in the reply direction yet.
    pub unreplied: bool,
    /// Handled by (software or hardware) flow offloading.
    pub offloaded: bool,
    pub mark: Option<u32>,
}

fn parse_addr(v: &str) -> Option<IpAddr> {
    v.parse().ok()
}

/// Parses one line of `/proc/net/nf_conntrack` (see the module docs of the kernel's
/// `nf_conntrack_standalone.c`). Accepts every layout current kernels print: with or without
/// timeout (offloaded), state word, accounting, `[UNREPLIED]`, zones, marks, unknown
/// `key=value` tokens and full-form IPv6 addresses; also the old `ip_conntrack` layout without
/// the layer-3 columns. Returns `None` for anything else; never panics.
pub fn parse_line(line: &str) -> Option<Entry> {
    let mut it = line.split_ascii_whitespace();
    let first = it.next()?;
    let family = match first {
        "ipv4" => {
            (it.next()? == "2").then_some(())?;
            it.next()?;
            Some(AF_INET)
        }
        "ipv6" => {
            (it.next()? == "10").then_some(())?;
            it.next()?;
            Some(AF_INET6)
        }
        w if w.bytes().all(|b| b.is_ascii_lowercase()) => None,
        _ => return None,
    };
    let proto: u8 = it.next()?.parse().ok()?;

    let mut timeout = None;
    let mut state = None;
    // Index of the tuple being filled: 0 = none yet, 1 = orig, 2 = reply.
    let mut dir = 0usize;
    let mut src: [Option<IpAddr>; 2] = [None; 2];
    let mut dst: [Option<IpAddr>; 2] = [None; 2];
    let mut sport = [0u16; 2];
    let mut dport = [0u16; 2];
    let mut bytes: [Option<u64>; 2] = [None; 2];
    let mut unreplied = false;
    let mut offloaded = false;
    let mut mark = None;

    for tok in it {
        if let Some((k, v)) = tok.split_once('=') {
            match k {
                "src" => {
                    if dir >= 2 {
                        return None;
                    }
                    dir += 1;
                    src[dir - 1] = Some(parse_addr(v)?);
                }
                "dst" | "sport" | "dport" | "bytes" if dir == 0 => return None,
                "dst" => dst[dir - 1] = Some(parse_addr(v)?),
                "sport" => sport[dir - 1] = v.parse().ok()?,
                "dport" => dport[dir - 1] = v.parse().ok()?,
                "bytes" => bytes[dir - 1] = Some(v.parse().ok()?),
                "mark" => mark = v.parse().ok(),
                _ => {}
            }
        } else if dir == 0 {
            if tok.bytes().all(|b| b.is_ascii_digit()) {
                if timeout.is_some() || state.is_some() {
                    return None;
                }
                timeout = Some(tok.parse().ok()?);
            } else if tok
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
            {
                state = Some(State::from_word(tok));
            } else {
                return None;
            }
        } else {
            match tok {
                "[UNREPLIED]" => unreplied = true,
                "[OFFLOAD]" | "[HW_OFFLOAD]" => offloaded = true,
                _ => {}
            }
        }
    }
    let orig = Tuple {
        src: src[0]?,
        dst: dst[0]?,
        sport: sport[0],
        dport: dport[0],
    };
    let reply = Tuple {
        src: src[1]?,
        dst: dst[1]?,
        sport: sport[1],
        dport: dport[1],
    };
    let v4 = |a: IpAddr| a.is_ipv4();
    let all_v4 = [orig.src, orig.dst, reply.src, reply.dst]
        .iter()
        .all(|a| v4(*a));
    let all_v6 = [orig.src, orig.dst, reply.src, reply.dst]
        .iter()
        .all(|a| !v4(*a));
    match family {
        Some(AF_INET) if !all_v4 => return None,
        Some(AF_INET6) if !all_v6 => return None,
        None if !(all_v4 || all_v6) => return None,
        _ => {}
    }
    if proto != IPPROTO_TCP {
        state = None;
    }
    Some(Entry {
        proto,
        timeout,
        state,
        orig,
        reply,
        orig_bytes: bytes[0],
        reply_bytes: bytes[1],
        unreplied,
        offloaded,
        mark,
    })
}

/// Identifies a flow across polls: protocol and original tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: u8,
    pub orig: Tuple,
}

/// One Jellyfin flow: the viewer and the bytes the server has sent it so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub key: FlowKey,
    /// The remote peer (orig source), IPv4-mapped addresses folded to IPv4.
    pub viewer: IpAddr,
    /// Reply-direction (server → viewer) bytes as the kernel counts them (IP packet lengths).
    pub bytes: u64,
}

fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// The Jellyfin flow an entry is, if any: TCP, reply source = one of `servers` on one of
/// `ports`, with accounting.
pub fn flow_of(e: &Entry, servers: &[IpAddr], ports: &[u16]) -> Option<Flow> {
    if e.proto != IPPROTO_TCP || !ports.contains(&e.reply.sport) {
        return None;
    }
    let rs = canonical(e.reply.src);
    if !servers.iter().any(|s| canonical(*s) == rs) {
        return None;
    }
    Some(Flow {
        key: FlowKey {
            proto: e.proto,
            orig: e.orig,
        },
        viewer: canonical(e.orig.src),
        bytes: e.reply_bytes?,
    })
}

/// A source of Jellyfin flows (see [`flow_of`]).
pub trait FlowSource {
    /// Appends the current flows from `server` addresses on `ports` to `out`.
    fn flows(&mut self, server: &[IpAddr], ports: &[u16], out: &mut Vec<Flow>)
        -> Result<(), Error>;
}

struct FlowState {
    viewer: IpAddr,
    last: u64,
    seen: u64,
}

/// Monotonic per-viewer byte totals from per-flow counters.
///
/// A flow's counter that went down was reset (nlbwmon's zeroing dump, or a new connection
/// reusing the tuple): its whole new value counts as new bytes. Bytes a flow sent between the
/// last poll and its end (or a reset) are missed; they are small at a few seconds per tick.
#[derive(Default)]
pub struct FlowCounter {
    flows: HashMap<FlowKey, FlowState>,
    totals: HashMap<IpAddr, u64>,
    viewer_seen: HashMap<IpAddr, u64>,
    generation: u64,
}

impl FlowCounter {
    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one poll's flows (all of them); returns the per-viewer totals. Flows absent from
    /// `flows` are forgotten. A total starts at the viewer's bytes so far when first seen.
    pub fn update(&mut self, flows: &[Flow]) -> &HashMap<IpAddr, u64> {
        self.generation = self.generation.wrapping_add(1);
        let g = self.generation;
        for f in flows {
            let delta = match self.flows.get_mut(&f.key) {
                Some(st) if st.seen == g => continue,
                Some(st) => {
                    let d = if f.bytes >= st.last {
                        f.bytes - st.last
                    } else {
                        f.bytes
                    };
                    st.last = f.bytes;
                    st.seen = g;
                    st.viewer = f.viewer;
                    d
                }
                None => {
                    self.flows.insert(
                        f.key,
                        FlowState {
                            viewer: f.viewer,
                            last: f.bytes,
                            seen: g,
                        },
                    );
                    f.bytes
                }
            };
            let t = self.totals.entry(f.viewer).or_insert(0);
            *t = t.saturating_add(delta);
            self.viewer_seen.insert(f.viewer, g);
        }
        self.flows.retain(|_, st| st.seen == g);
        &self.totals
    }

    /// The totals as of the last update.
    pub fn totals(&self) -> &HashMap<IpAddr, u64> {
        &self.totals
    }

    /// Drops viewers without any flow in the last `updates` updates (bounded memory when many
    /// addresses come and go). A dropped viewer that comes back starts a new total.
    pub fn forget_idle(&mut self, updates: u64) {
        let g = self.generation;
        let seen = &mut self.viewer_seen;
        seen.retain(|_, s| g.wrapping_sub(*s) < updates);
        self.totals.retain(|ip, _| seen.contains_key(ip));
    }

    /// Number of flows being followed.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }
}

/// Reads conntrack text in chunks, calling `f` for every parsable line, without holding the
/// whole table: memory stays at the buffer size whatever the table size. Over-long lines are
/// skipped.
pub fn parse_stream<R: Read>(r: R, buf: &mut Vec<u8>, f: impl FnMut(Entry)) -> io::Result<()> {
    parse_stream_matching(r, buf, &[], f)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Like [`parse_stream`], but parses only lines that contain one of `needles` (all lines when
/// empty): a cheap byte search spares the full parse of the many unrelated entries.
pub fn parse_stream_matching<R: Read>(
    mut r: R,
    buf: &mut Vec<u8>,
    needles: &[Vec<u8>],
    mut f: impl FnMut(Entry),
) -> io::Result<()> {
    const CHUNK: usize = 32 * 1024;
    let mut line_fn = |line: &[u8]| {
        if !needles.is_empty() && !needles.iter().any(|n| contains(line, n)) {
            return;
        }
        if let Some(e) = std::str::from_utf8(line).ok().and_then(parse_line) {
            f(e);
        }
    };
    buf.clear();
    buf.resize(CHUNK, 0);
    let mut filled = 0usize;
    let mut skipping = false;
    loop {
        if filled == buf.len() {
            // A line longer than the buffer: drop it up to its end.
            filled = 0;
            skipping = true;
        }
        let n = match r.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let eof = n == 0;
        let end = filled + n;
        let mut start = 0usize;
        while let Some(pos) = buf[start..end].iter().position(|&b| b == b'\n') {
            if skipping {
                skipping = false;
            } else {
                line_fn(&buf[start..start + pos]);
            }
            start += pos + 1;
        }
        if eof {
            if !skipping && start < end {
                line_fn(&buf[start..end]);
            }
            return Ok(());
        }
        buf.copy_within(start..end, 0);
        filled = end - start;
    }
}

/// Flows from `/proc/net/nf_conntrack`; works without ctnetlink, costs a full text dump.
pub struct ProcSource {
    path: PathBuf,
    buf: Vec<u8>,
}

impl Default for ProcSource {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcSource {
    /// Reads [`PROC_PATH`].
    pub fn new() -> Self {
        Self::with_path(PROC_PATH)
    }

    /// Reads another file of the same format.
    pub fn with_path(path: impl Into<PathBuf>) -> Self {
        ProcSource {
            path: path.into(),
            buf: Vec::new(),
        }
    }

    /// The file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `f` for every entry of the table.
    pub fn for_each(&mut self, f: impl FnMut(Entry)) -> Result<(), Error> {
        self.for_each_matching(&[], f)
    }

    /// Calls `f` for the entries whose line contains one of `needles` (all when empty).
    pub fn for_each_matching(
        &mut self,
        needles: &[Vec<u8>],
        f: impl FnMut(Entry),
    ) -> Result<(), Error> {
        let file =
            std::fs::File::open(&self.path).map_err(io_err("opening the conntrack table"))?;
        parse_stream_matching(file, &mut self.buf, needles, f)
            .map_err(io_err("reading the conntrack table"))
    }
}

impl FlowSource for ProcSource {
    fn flows(
        &mut self,
        server: &[IpAddr],
        ports: &[u16],
        out: &mut Vec<Flow>,
    ) -> Result<(), Error> {
        let needles: Vec<Vec<u8>> = ports
            .iter()
            .map(|p| format!(" sport={p} ").into_bytes())
            .collect();
        self.for_each_matching(&needles, |e| {
            if let Some(fl) = flow_of(&e, server, ports) {
                out.push(fl);
            }
        })
    }
}

/// Whether conntrack accounting (byte counters) is on in this network namespace.
pub fn accounting_enabled() -> Result<bool, Error> {
    let s = std::fs::read_to_string(ACCT_SYSCTL).map_err(io_err("reading nf_conntrack_acct"))?;
    Ok(s.trim() != "0")
}

// ---- ctnetlink -------------------------------------------------------------------------------

pub(crate) mod nl {
    pub const NLMSG_HDRLEN: usize = 16;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const NLM_F_REQUEST: u16 = 1;
    pub const NLM_F_ACK: u16 = 4;
    pub const NLM_F_DUMP: u16 = 0x300;
    pub const NLA_F_NESTED: u16 = 0x8000;
    pub const NLA_TYPE_MASK: u16 = 0x3fff;
    pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    pub const IPCTNL_MSG_CT_NEW: u16 = 0;
    pub const IPCTNL_MSG_CT_GET: u16 = 1;
    pub const IPCTNL_MSG_CT_DELETE: u16 = 2;
    pub const NFNLGRP_CONNTRACK_NEW: u32 = 1;
    pub const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

    pub const CTA_TUPLE_ORIG: u16 = 1;
    pub const CTA_TUPLE_REPLY: u16 = 2;
    pub const CTA_STATUS: u16 = 3;
    pub const CTA_PROTOINFO: u16 = 4;
    pub const CTA_TIMEOUT: u16 = 7;
    pub const CTA_MARK: u16 = 8;
    pub const CTA_COUNTERS_ORIG: u16 = 9;
    pub const CTA_COUNTERS_REPLY: u16 = 10;
    pub const CTA_FILTER: u16 = 25;

    pub const CTA_TUPLE_IP: u16 = 1;
    pub const CTA_TUPLE_PROTO: u16 = 2;
    pub const CTA_IP_V4_SRC: u16 = 1;
    pub const CTA_IP_V4_DST: u16 = 2;
    pub const CTA_IP_V6_SRC: u16 = 3;
    pub const CTA_IP_V6_DST: u16 = 4;
    pub const CTA_PROTO_NUM: u16 = 1;
    pub const CTA_PROTO_SRC_PORT: u16 = 2;
    pub const CTA_PROTO_DST_PORT: u16 = 3;
    pub const CTA_PROTOINFO_TCP: u16 = 1;
    pub const CTA_PROTOINFO_TCP_STATE: u16 = 1;
    pub const CTA_COUNTERS_BYTES: u16 = 2;
    pub const CTA_FILTER_REPLY_FLAGS: u16 = 2;

    // Tuple fields a CTA_FILTER compares (kernel nf_internals.h, since 5.9).
    pub const F_IP_SRC: u32 = 1 << 0;
    pub const F_PROTO_NUM: u32 = 1 << 3;
    pub const F_PROTO_SRC_PORT: u32 = 1 << 4;

    pub const IPS_SEEN_REPLY: u32 = 1 << 1;
    pub const IPS_OFFLOAD: u32 = 1 << 14;
    pub const IPS_HW_OFFLOAD: u32 = 1 << 15;

    /// Iterates the attributes of a buffer; stops at the first malformed one.
    pub fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
        std::iter::from_fn(move || {
            if b.len() < 4 {
                return None;
            }
            let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
            let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
            if len < 4 || len > b.len() {
                b = &[];
                return None;
            }
            let payload = &b[4..len];
            let adv = (len + 3) & !3;
            b = b.get(adv..).unwrap_or(&[]);
            Some((ty, payload))
        })
    }

    pub fn be16(p: &[u8]) -> Option<u16> {
        Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
    }
    pub fn be32(p: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
    }
    pub fn be64(p: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
    }

    /// Builds netlink messages (attributes in native order, payloads as given).
    pub struct Msg {
        pub buf: Vec<u8>,
        nests: Vec<usize>,
    }

    impl Msg {
        pub fn new(ty: u16, flags: u16, seq: u32, family: u8) -> Msg {
            let mut buf = Vec::with_capacity(128);
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.extend_from_slice(&flags.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            // nfgenmsg: family, version 0, res_id 0.
            buf.extend_from_slice(&[family, 0, 0, 0]);
            Msg {
                buf,
                nests: Vec::new(),
            }
        }
        pub fn attr(&mut self, ty: u16, data: &[u8]) {
            let len = (4 + data.len()) as u16;
            self.buf.extend_from_slice(&len.to_ne_bytes());
            self.buf.extend_from_slice(&ty.to_ne_bytes());
            self.buf.extend_from_slice(data);
            while self.buf.len() % 4 != 0 {
                self.buf.push(0);
            }
        }
        pub fn begin(&mut self, ty: u16) {
            self.nests.push(self.buf.len());
            self.buf.extend_from_slice(&0u16.to_ne_bytes());
            self.buf
                .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        }
        pub fn end(&mut self) {
            if let Some(at) = self.nests.pop() {
                let len = (self.buf.len() - at) as u16;
                self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
            }
        }
        pub fn finish(mut self) -> Vec<u8> {
            let len = self.buf.len() as u32;
            self.buf[..4].copy_from_slice(&len.to_ne_bytes());
            self.buf
        }
    }
}

fn parse_tuple(b: &[u8], proto: &mut u8) -> Option<Tuple> {
    let (mut src, mut dst, mut sport, mut dport) = (None, None, 0, 0);
    for (ty, p) in nl::attrs(b) {
        match ty {
            nl::CTA_TUPLE_IP => {
                for (t, a) in nl::attrs(p) {
                    let v4 = || Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(a).ok()?)));
                    let v6 = || Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(a).ok()?)));
                    match t {
                        nl::CTA_IP_V4_SRC => src = v4(),
                        nl::CTA_IP_V4_DST => dst = v4(),
                        nl::CTA_IP_V6_SRC => src = v6(),
                        nl::CTA_IP_V6_DST => dst = v6(),
                        _ => {}
                    }
                }
            }
            nl::CTA_TUPLE_PROTO => {
                for (t, a) in nl::attrs(p) {
                    match t {
                        nl::CTA_PROTO_NUM => *proto = *a.first()?,
                        nl::CTA_PROTO_SRC_PORT => sport = nl::be16(a)?,
                        nl::CTA_PROTO_DST_PORT => dport = nl::be16(a)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        sport,
        dport,
    })
}

fn counter_bytes(b: &[u8]) -> Option<u64> {
    nl::attrs(b)
        .find(|(t, _)| *t == nl::CTA_COUNTERS_BYTES)
        .and_then(|(_, p)| nl::be64(p))
}

/// Parses the attributes of one ctnetlink conntrack message (after the nfgenmsg header).
fn parse_ct_attrs(b: &[u8]) -> Option<Entry> {
    let mut proto = 0u8;
    let (mut orig, mut reply) = (None, None);
    let (mut status, mut timeout, mut mark, mut state) = (None, None, None, None);
    let (mut ob, mut rb) = (None, None);
    for (ty, p) in nl::attrs(b) {
        match ty {
            nl::CTA_TUPLE_ORIG => orig = parse_tuple(p, &mut proto),
            nl::CTA_TUPLE_REPLY => reply = parse_tuple(p, &mut 0),
            nl::CTA_STATUS => status = nl::be32(p),
            nl::CTA_TIMEOUT => timeout = nl::be32(p),
            nl::CTA_MARK => mark = nl::be32(p),
            nl::CTA_COUNTERS_ORIG => ob = counter_bytes(p),
            nl::CTA_COUNTERS_REPLY => rb = counter_bytes(p),
            nl::CTA_PROTOINFO => {
                for (t, a) in nl::attrs(p) {
                    if t == nl::CTA_PROTOINFO_TCP {
                        state = nl::attrs(a)
                            .find(|(x, _)| *x == nl::CTA_PROTOINFO_TCP_STATE)
                            .and_then(|(_, s)| s.first().copied())
                            .map(State::from_tcp_number);
                    }
                }
            }
            _ => {}
        }
    }
    let status = status.unwrap_or(0);
    let offloaded = status & (nl::IPS_OFFLOAD | nl::IPS_HW_OFFLOAD) != 0;
    Some(Entry {
        proto,
        timeout: if offloaded { None } else { timeout },
        state: if proto == IPPROTO_TCP { state } else { None },
        orig: orig?,
        reply: reply?,
        orig_bytes: ob,
        reply_bytes: rb,
        unreplied: status & nl::IPS_SEEN_REPLY == 0,
        offloaded,
        mark,
    })
}

/// Splits a datagram of netlink messages; calls `f(type, flags, seq, payload)`.
pub(crate) fn for_each_msg(mut b: &[u8], mut f: impl FnMut(u16, u16, u32, &[u8])) {
    while b.len() >= nl::NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < nl::NLMSG_HDRLEN || len > b.len() {
            return;
        }
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        let flags = u16::from_ne_bytes([b[6], b[7]]);
        let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        f(ty, flags, seq, &b[nl::NLMSG_HDRLEN..len]);
        let adv = (len + 3) & !3;
        b = b.get(adv..).unwrap_or(&[]);
    }
}

/// Parses a ctnetlink conntrack message payload (nfgenmsg + attributes).
pub(crate) fn parse_ct_msg(payload: &[u8]) -> Option<Entry> {
    parse_ct_attrs(payload.get(4..)?)
}

fn netlink_socket(flags: nix::sys::socket::SockFlag) -> Result<OwnedFd, Error> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        flags | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|e| Error::Netlink {
        what: "opening a ctnetlink socket",
        errno: e as i32,
    })
}

/// A kernel-side dump filter on the reply tuple (TCP only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpFilter {
    /// Reply source address; honoured for IPv4 only (IPv6 is checked after the dump).
    pub reply_src: Option<IpAddr>,
    /// Reply source port.
    pub reply_sport: Option<u16>,
}

/// Ticks between two safety resynchronisations of the tracked flows by a dump.
const RESYNC_EVERY: u32 = 720;

/// Flows from ctnetlink, at a cost that does not grow with the size of the conntrack table.
///
/// Every dump walks the kernel's whole conntrack hash table (tens of milliseconds of CPU with
/// 65,536 entries), even when a filter keeps it from serialising anything. So a dump only
/// (re)builds the set of the server's flows: at the first tick, when the servers or ports
/// change, after lost events and every [`RESYNC_EVERY`] ticks. In between, conntrack NEW and
/// DESTROY events keep the set current, and each tick reads just those flows by exact tuple
/// (`IPCTNL_MSG_CT_GET`, a hash lookup). DESTROY events carry the final counters, so a flow
/// that ends between two ticks still counts fully.
///
/// Dumps are filtered in the kernel by the reply tuple (`CTA_FILTER`, Linux 5.9+). Older
/// kernels ignore the filter and send the whole table of that address family; the same filter
/// then runs here. Without events (`nf_conntrack_events=0`) every tick is a filtered dump.
pub struct NetlinkSource {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
    kernel_filter: bool,
    events: Option<OwnedFd>,
    tracked: HashSet<(u8, u8, Tuple)>,
    ended: Vec<Entry>,
    query: (Vec<IpAddr>, Vec<u16>),
    resync: bool,
    ticks_since_dump: u32,
    dumps: u64,
}

fn family_of(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

fn is_server_reply(e: &Entry, servers: &[IpAddr], ports: &[u16]) -> bool {
    e.proto == IPPROTO_TCP
        && ports.contains(&e.reply.sport)
        && servers.contains(&canonical(e.reply.src))
}

impl NetlinkSource {
    /// Opens ctnetlink sockets in the calling thread's network namespace.
    pub fn new() -> Result<Self, Error> {
        use nix::sys::socket::{bind, setsockopt, sockopt, NetlinkAddr, SockFlag};
        let fd = netlink_socket(SockFlag::empty())?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| Error::Netlink {
            what: "binding a ctnetlink socket",
            errno: e as i32,
        })?;
        // A kernel that never answers must not stall the daemon's loop.
        let _ = setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(5, 0),
        );
        let events_on = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_events")
            .map(|s| s.trim() != "0")
            .unwrap_or(false);
        let events = if events_on {
            let ev = netlink_socket(SockFlag::SOCK_NONBLOCK)?;
            if setsockopt(&ev, sockopt::RcvBufForce, &(1 << 20)).is_err() {
                let _ = setsockopt(&ev, sockopt::RcvBuf, &(1 << 20));
            }
            let groups = (1u32 << (nl::NFNLGRP_CONNTRACK_NEW - 1))
                | (1u32 << (nl::NFNLGRP_CONNTRACK_DESTROY - 1));
            bind(ev.as_raw_fd(), &NetlinkAddr::new(0, groups))
                .ok()
                .map(|()| ev)
        } else {
            None
        };
        // Dump replies are bounded by the kernel's skb size (at most 32 KiB); 64 KiB is safe.
        Ok(NetlinkSource {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
            kernel_filter: true,
            events,
            tracked: HashSet::new(),
            ended: Vec::new(),
            query: (Vec::new(), Vec::new()),
            resync: true,
            ticks_since_dump: 0,
            dumps: 0,
        })
    }

    /// False once the kernel refused the tuple filter and dumps are filtered here instead.
    pub fn kernel_filtering(&self) -> bool {
        self.kernel_filter
    }

    /// True when conntrack events keep the flow set current between dumps.
    pub fn tracking(&self) -> bool {
        self.events.is_some()
    }

    /// How many table dumps this source has made.
    pub fn dumps(&self) -> u64 {
        self.dumps
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn dump_request(&mut self, family: u8, filter: Option<DumpFilter>) -> Vec<u8> {
        let seq = self.next_seq();
        let mut m = nl::Msg::new(
            (nl::NFNL_SUBSYS_CTNETLINK << 8) | nl::IPCTNL_MSG_CT_GET,
            nl::NLM_F_REQUEST | nl::NLM_F_DUMP,
            seq,
            family,
        );
        if let Some(f) = filter {
            let mut flags = nl::F_PROTO_NUM;
            m.begin(nl::CTA_TUPLE_REPLY);
            // IPv4 only: the kernel's IPv6 address test in dump filters is inverted
            // (`!ipv6_addr_cmp` in ctnetlink_filter_match_tuple, seen up to 6.18), so it would
            // match every address except the one asked for. IPv6 addresses are checked here.
            if let Some(IpAddr::V4(a)) = f.reply_src {
                m.begin(nl::CTA_TUPLE_IP);
                m.attr(nl::CTA_IP_V4_SRC, &a.octets());
                m.end();
                flags |= nl::F_IP_SRC;
            }
            m.begin(nl::CTA_TUPLE_PROTO);
            m.attr(nl::CTA_PROTO_NUM, &[IPPROTO_TCP]);
            if let Some(port) = f.reply_sport {
                m.attr(nl::CTA_PROTO_SRC_PORT, &port.to_be_bytes());
                flags |= nl::F_PROTO_SRC_PORT;
            }
            m.end();
            m.end();
            m.begin(nl::CTA_FILTER);
            m.attr(nl::CTA_FILTER_REPLY_FLAGS, &flags.to_ne_bytes());
            m.end();
        }
        m.finish()
    }

    fn get_request(&mut self, family: u8, proto: u8, t: &Tuple) -> Vec<u8> {
        let seq = self.next_seq();
        let mut m = nl::Msg::new(
            (nl::NFNL_SUBSYS_CTNETLINK << 8) | nl::IPCTNL_MSG_CT_GET,
            nl::NLM_F_REQUEST | nl::NLM_F_ACK,
            seq,
            family,
        );
        m.begin(nl::CTA_TUPLE_ORIG);
        m.begin(nl::CTA_TUPLE_IP);
        match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                m.attr(nl::CTA_IP_V4_SRC, &s.octets());
                m.attr(nl::CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V6(x) => x,
                    IpAddr::V4(x) => x.to_ipv6_mapped(),
                };
                m.attr(nl::CTA_IP_V6_SRC, &v6(s).octets());
                m.attr(nl::CTA_IP_V6_DST, &v6(d).octets());
            }
        }
        m.end();
        m.begin(nl::CTA_TUPLE_PROTO);
        m.attr(nl::CTA_PROTO_NUM, &[proto]);
        m.attr(nl::CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
        m.attr(nl::CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        m.end();
        m.end();
        m.finish()
    }

    /// Sends one request and reads its answer up to DONE or the ACK/error.
    fn transact(
        &mut self,
        req: &[u8],
        what: &'static str,
        mut f: impl FnMut(Entry),
    ) -> Result<(), Error> {
        use nix::sys::socket::{recv, send, MsgFlags};
        let seq = self.seq;
        send(self.fd.as_raw_fd(), req, MsgFlags::empty()).map_err(|e| Error::Netlink {
            what,
            errno: e as i32,
        })?;
        loop {
            let n = match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(Error::Netlink {
                        what,
                        errno: e as i32,
                    })
                }
            };
            if n == 0 {
                return Ok(());
            }
            let mut done = false;
            let mut err = 0i32;
            for_each_msg(&self.buf[..n], |ty, _flags, s, payload| {
                if s != seq || done {
                    return;
                }
                match ty {
                    nl::NLMSG_DONE => done = true,
                    nl::NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        err = code.saturating_neg();
                        done = true;
                    }
                    t if t >> 8 == nl::NFNL_SUBSYS_CTNETLINK => {
                        if let Some(e) = parse_ct_msg(payload) {
                            f(e);
                        }
                    }
                    _ => {}
                }
            });
            if err != 0 {
                return Err(Error::Netlink { what, errno: err });
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Dumps the entries of one address family (2 = IPv4, 10 = IPv6), optionally only the TCP
    /// ones whose reply tuple matches `filter`; calls `f` for each.
    pub fn dump(
        &mut self,
        family: u8,
        filter: Option<DumpFilter>,
        f: impl FnMut(Entry),
    ) -> Result<(), Error> {
        let req = self.dump_request(family, filter);
        self.dumps = self.dumps.saturating_add(1);
        self.transact(&req, "dumping conntrack", f)
    }

    /// Reads one entry by its original tuple; `None` when it no longer exists.
    pub fn get(&mut self, proto: u8, orig: &Tuple) -> Result<Option<Entry>, Error> {
        let req = self.get_request(family_of(&orig.src), proto, orig);
        let mut found = None;
        match self.transact(&req, "reading a conntrack entry", |e| found = Some(e)) {
            Ok(()) => Ok(found),
            Err(Error::Netlink { errno, .. }) if errno == nix::libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All entries from the servers on the ports, by as few filtered dumps as possible.
    fn dump_servers(
        &mut self,
        servers: &[IpAddr],
        ports: &[u16],
        mut push: impl FnMut(Entry),
    ) -> Result<(), Error> {
        let mut keep = |e: Entry| {
            if is_server_reply(&e, servers, ports) {
                push(e);
            }
        };
        if self.kernel_filter {
            // One dump per IPv4 server (the address alone is selective), one per port for IPv6
            // (see `dump_request` for why not by address).
            let mut dumps: Vec<(u8, DumpFilter)> = vec![];
            for s in servers.iter().filter(|s| s.is_ipv4()) {
                dumps.push((
                    AF_INET,
                    DumpFilter {
                        reply_src: Some(*s),
                        reply_sport: None,
                    },
                ));
            }
            if servers.iter().any(IpAddr::is_ipv6) {
                for p in ports {
                    dumps.push((
                        AF_INET6,
                        DumpFilter {
                            reply_src: None,
                            reply_sport: Some(*p),
                        },
                    ));
                }
            }
            let mut refused = false;
            for (family, filter) in dumps {
                match self.dump(family, Some(filter), &mut keep) {
                    Ok(()) => {}
                    Err(Error::Netlink { errno, .. })
                        if errno == nix::libc::EOPNOTSUPP || errno == nix::libc::EINVAL =>
                    {
                        refused = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !refused {
                return Ok(());
            }
            log::info!("kernel refuses conntrack dump filters; filtering conntrack in jellydemon");
            self.kernel_filter = false;
        }
        // Entries a refused filtered pass delivered come again: FlowCounter drops duplicates.
        if servers.iter().any(IpAddr::is_ipv4) {
            self.dump(AF_INET, None, &mut keep)?;
        }
        if servers.iter().any(IpAddr::is_ipv6) {
            self.dump(AF_INET6, None, &mut keep)?;
        }
        Ok(())
    }

    /// Applies pending NEW/DESTROY events to the tracked set.
    fn drain_events(&mut self) {
        use nix::errno::Errno;
        use nix::sys::socket::{recv, MsgFlags};
        let Some(ev) = self.events.as_ref() else {
            return;
        };
        let (servers, ports) = (&self.query.0, &self.query.1);
        loop {
            match recv(ev.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return,
                Ok(n) => for_each_msg(&self.buf[..n], |ty, _, _, payload| {
                    if ty >> 8 != nl::NFNL_SUBSYS_CTNETLINK {
                        return;
                    }
                    let Some(e) = parse_ct_msg(payload) else {
                        return;
                    };
                    if !is_server_reply(&e, servers, ports) {
                        return;
                    }
                    let fam = payload.first().copied().unwrap_or(0);
                    let key = (fam, e.proto, e.orig);
                    match ty & 0xff {
                        nl::IPCTNL_MSG_CT_NEW => {
                            self.tracked.insert(key);
                        }
                        nl::IPCTNL_MSG_CT_DELETE => {
                            self.tracked.remove(&key);
                            self.ended.push(e);
                        }
                        _ => {}
                    }
                }),
                Err(Errno::EINTR) => continue,
                // Events were lost: only a dump can tell what exists now.
                Err(Errno::ENOBUFS) => self.resync = true,
                Err(_) => return,
            }
        }
    }
}

impl FlowSource for NetlinkSource {
    fn flows(
        &mut self,
        server: &[IpAddr],
        ports: &[u16],
        out: &mut Vec<Flow>,
    ) -> Result<(), Error> {
        let mut servers: Vec<IpAddr> = server.iter().map(|s| canonical(*s)).collect();
        servers.sort();
        servers.dedup();
        let mut ports_u: Vec<u16> = ports.to_vec();
        ports_u.sort_unstable();
        ports_u.dedup();
        if self.query != (servers.clone(), ports_u.clone()) {
            self.query = (servers.clone(), ports_u.clone());
            self.tracked.clear();
            self.ended.clear();
            self.resync = true;
        }
        self.drain_events();
        self.ticks_since_dump = self.ticks_since_dump.saturating_add(1);
        let dump = self.resync || self.events.is_none() || self.ticks_since_dump >= RESYNC_EVERY;

        let mut entries: Vec<Entry> = std::mem::take(&mut self.ended);
        if dump {
            let mut fresh = Vec::new();
            // A failed dump leaves `resync` set, so the next tick tries again.
            self.dump_servers(&servers, &ports_u, |e| fresh.push(e))?;
            self.tracked = fresh
                .iter()
                .map(|e| (family_of(&e.orig.src), e.proto, e.orig))
                .collect();
            entries.extend(fresh);
            self.resync = false;
            self.ticks_since_dump = 0;
        } else {
            let keys: Vec<(u8, u8, Tuple)> = self.tracked.iter().copied().collect();
            for key in keys {
                match self.get(key.1, &key.2)? {
                    Some(e) => entries.push(e),
                    // Gone without a DESTROY event (e.g. created before we subscribed).
                    None => {
                        self.tracked.remove(&key);
                    }
                }
            }
        }
        out.extend(
            entries
                .iter()
                .filter_map(|e| flow_of(e, &servers, &ports_u)),
        );
        Ok(())
    }
}

// ---- new connections -------------------------------------------------------------------------

/// A new connection as conntrack saw its first packet (the original direction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NewConn {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: u16,
    pub proto: u8,
}

impl NewConn {
    fn from_entry(e: &Entry) -> NewConn {
        NewConn {
            src: e.orig.src,
            dst: e.orig.dst,
            dport: e.orig.dport,
            proto: e.proto,
        }
    }
}

/// True for a connection from outside to the Jellyfin port: TCP, source outside every
/// `internal` range, destination port in `ports`, destination one of `targets` (the WAN
/// address or the server; empty = any).
pub fn is_outside_connect(
    c: &NewConn,
    internal: &[IpNet],
    ports: &[u16],
    targets: &[IpAddr],
) -> bool {
    let src = canonical(c.src);
    let dst = canonical(c.dst);
    c.proto == IPPROTO_TCP
        && ports.contains(&c.dport)
        && !internal.iter().any(|n| n.contains(&src))
        && (targets.is_empty() || targets.iter().any(|t| canonical(*t) == dst))
}

/// Conntrack NEW events (`NFNLGRP_CONNTRACK_NEW`): the daemon polls [`ConnectWatch::as_raw_fd`]
/// with its own timeout and calls [`ConnectWatch::drain`] when readable.
pub struct ConnectWatch {
    fd: OwnedFd,
    buf: Vec<u8>,
    overruns: u64,
}

impl ConnectWatch {
    /// Subscribes in the calling thread's network namespace.
    pub fn new() -> Result<Self, Error> {
        use nix::sys::socket::{bind, setsockopt, sockopt, NetlinkAddr, SockFlag};
        let fd = netlink_socket(SockFlag::SOCK_NONBLOCK)?;
        // A burst of new connections elsewhere must not push the one we wait for out.
        if setsockopt(&fd, sockopt::RcvBufForce, &(1 << 20)).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
        }
        let groups = 1u32 << (nl::NFNLGRP_CONNTRACK_NEW - 1);
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups)).map_err(|e| Error::Netlink {
            what: "subscribing to conntrack events",
            errno: e as i32,
        })?;
        Ok(ConnectWatch {
            fd,
            buf: vec![0; 64 * 1024],
            overruns: 0,
        })
    }

    /// The descriptor to poll for readability.
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// How many times the kernel dropped events because we read too slowly.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Appends every pending new connection to `out`, without blocking.
    pub fn drain(&mut self, out: &mut Vec<NewConn>) {
        while self.drain_at_most(out, 64) {}
    }

    /// Like [`ConnectWatch::drain`], reading at most `reads` datagrams (bounded work under a
    /// flood of new connections); true when more may be pending.
    pub fn drain_at_most(&mut self, out: &mut Vec<NewConn>, reads: usize) -> bool {
        use nix::errno::Errno;
        use nix::sys::socket::{recv, MsgFlags};
        for _ in 0..reads {
            match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return false,
                Ok(n) => for_each_msg(&self.buf[..n], |ty, _, _, payload| {
                    if ty == (nl::NFNL_SUBSYS_CTNETLINK << 8) | nl::IPCTNL_MSG_CT_NEW {
                        if let Some(e) = parse_ct_msg(payload) {
                            out.push(NewConn::from_entry(&e));
                        }
                    }
                }),
                Err(Errno::EINTR) => continue,
                // Lost events: the socket is usable again after the error was reported.
                Err(Errno::ENOBUFS) => self.overruns = self.overruns.saturating_add(1),
                Err(_) => return false,
            }
        }
        true
    }
}

impl AsFd for ConnectWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for ConnectWatch {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Fallback for [`ConnectWatch`] without ctnetlink: polls the text table for connections that
/// got no answer yet (`[UNREPLIED]` or `SYN_SENT`) to one of the ports, reporting each once.
pub struct ProcConnectPoll {
    src: ProcSource,
    seen: HashSet<NewConnKey>,
}

type NewConnKey = (u8, Tuple);

impl Default for ProcConnectPoll {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcConnectPoll {
    /// Polls [`PROC_PATH`].
    pub fn new() -> Self {
        Self::with_source(ProcSource::new())
    }

    /// Polls another source (e.g. a file of the same format).
    pub fn with_source(src: ProcSource) -> Self {
        ProcConnectPoll {
            src,
            seen: HashSet::new(),
        }
    }

    /// Appends the not yet reported unanswered connections to `ports` to `out`.
    pub fn poll(&mut self, ports: &[u16], out: &mut Vec<NewConn>) -> Result<(), Error> {
        let mut now = HashSet::new();
        let seen = &self.seen;
        let needles: Vec<Vec<u8>> = ports
            .iter()
            .map(|p| format!(" dport={p} ").into_bytes())
            .collect();
        self.src.for_each_matching(&needles, |e| {
            let waiting = e.unreplied || e.state == Some(State::SynSent);
            if waiting && ports.contains(&e.orig.dport) {
                let k = (e.proto, e.orig);
                if !seen.contains(&k) {
                    out.push(NewConn::from_entry(&e));
                }
                now.insert(k);
            }
        })?;
        self.seen = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L1: &str = "ipv4     2 tcp      6 7437 ESTABLISHED src=192.168.1.23 dst=142.250.74.110 sport=51544 dport=443 packets=1250 bytes=98342 src=142.250.74.110 dst=203.0.113.7 sport=443 dport=51544 packets=2310 bytes=3021875 [ASSURED] mark=0 zone=0 use=2";
    const L2: &str = "ipv4     2 tcp      6 7431 ESTABLISHED src=198.51.100.44 dst=203.0.113.7 sport=60122 dport=8096 packets=4102 bytes=246311 src=192.168.1.50 dst=198.51.100.44 sport=8096 dport=60122 packets=9877 bytes=13204581 [ASSURED] mark=0 zone=0 use=2";
    const L3: &str = "ipv6     10 udp      17 176 src=2001:0db8:0042:0000:0a1b:2cff:fe3d:4e5f dst=2a00:1450:4001:0829:0000:0000:0000:200e sport=53211 dport=443 packets=842 bytes=112304 src=2a00:1450:4001:0829:0000:0000:0000:200e dst=2001:0db8:0042:0000:0a1b:2cff:fe3d:4e5f sport=443 dport=53211 packets=1604 bytes=2089533 [ASSURED] mark=0 zone=0 use=2";
    const L4: &str = "ipv4     2 udp      17 27 src=192.168.1.23 dst=203.0.113.99 sport=50000 dport=3478 [UNREPLIED] src=203.0.113.99 dst=203.0.113.7 sport=3478 dport=50000 mark=0 zone=0 use=2";
    const L5: &str = "ipv4     2 tcp      6 ESTABLISHED src=192.168.1.23 dst=93.184.216.34 sport=40100 dport=443 packets=10 bytes=1500 src=93.184.216.34 dst=203.0.113.7 sport=443 dport=40100 packets=12 bytes=9000 [OFFLOAD] mark=0 zone=0 use=3";
    const L6: &str = "ipv6     10 tcp      6 7440 ESTABLISHED src=2001:0db8:0000:0000:0000:0000:0000:0099 dst=fd00:0000:0000:0000:0000:0000:0000:0050 sport=40000 dport=8096 packets=3 bytes=300 src=fd00:0000:0000:0000:0000:0000:0000:0050 dst=2001:0db8:0000:0000:0000:0000:0000:0099 sport=8096 dport=40000 packets=5 bytes=7000 [ASSURED] mark=0 secctx=system_u:object_r:unlabeled_t:s0 zone=0 delta-time=12 use=2";
    const L7: &str = "ipv4     2 icmp     1 29 src=192.168.1.23 dst=8.8.8.8 type=8 code=0 id=77 packets=1 bytes=84 src=8.8.8.8 dst=203.0.113.7 type=0 code=0 id=77 packets=1 bytes=84 mark=0 zone=0 use=2";
    const L8: &str = "ipv4     2 unknown  47 599 src=192.168.1.23 dst=198.51.100.1 packets=3 bytes=200 src=198.51.100.1 dst=203.0.113.7 packets=2 bytes=100 mark=0 zone=0 use=2";
    const L9: &str = "ipv4     2 tcp      6 118 SYN_SENT src=198.51.100.44 dst=203.0.113.7 sport=60130 dport=8096 [UNREPLIED] src=192.168.1.50 dst=198.51.100.44 sport=8096 dport=60130 mark=0 zone=0 use=2";
    const L10: &str = "ipv4     2 tcp      6 300 ESTABLISHED src=198.51.100.44 dst=203.0.113.7 sport=60122 dport=8096 zone-orig=1 packets=4 bytes=246 src=192.168.1.50 dst=198.51.100.44 sport=8096 dport=60122 zone-reply=1 packets=9 bytes=1320 [HW_OFFLOAD] mark=16 zone=1 use=2";
    const OLD: &str = "tcp      6 431999 ESTABLISHED src=10.0.0.2 dst=10.0.0.1 sport=1 dport=2 src=10.0.0.1 dst=10.0.0.2 sport=2 dport=1 [ASSURED] mark=0 use=1";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_masqueraded_client() {
        let e = parse_line(L1).unwrap();
        assert_eq!(e.proto, 6);
        assert_eq!(e.timeout, Some(7437));
        assert_eq!(e.state, Some(State::Established));
        assert_eq!(e.orig.src, ip("192.168.1.23"));
        assert_eq!(e.orig.dport, 443);
        assert_eq!(e.reply.dst, ip("203.0.113.7"));
        assert_eq!(e.orig_bytes, Some(98342));
        assert_eq!(e.reply_bytes, Some(3021875));
        assert!(!e.unreplied && !e.offloaded);
        assert_eq!(e.mark, Some(0));
    }

    #[test]
    fn parses_port_forward() {
        let e = parse_line(L2).unwrap();
        assert_eq!(e.reply.src, ip("192.168.1.50"));
        assert_eq!(e.reply.sport, 8096);
        let f = flow_of(&e, &[ip("192.168.1.50")], &[8096]).unwrap();
        assert_eq!(f.viewer, ip("198.51.100.44"));
        assert_eq!(f.bytes, 13204581);
    }

    #[test]
    fn parses_ipv6_full_form_udp_without_state() {
        let e = parse_line(L3).unwrap();
        assert_eq!(e.proto, 17);
        assert_eq!(e.state, None);
        assert_eq!(e.orig.src, ip("2001:db8:42:0:a1b:2cff:fe3d:4e5f"));
        assert_eq!(e.reply_bytes, Some(2089533));
    }

    #[test]
    fn parses_unreplied_without_accounting() {
        let e = parse_line(L4).unwrap();
        assert!(e.unreplied);
        assert_eq!((e.orig_bytes, e.reply_bytes), (None, None));
        assert_eq!(e.reply.sport, 3478);
    }

    #[test]
    fn parses_offloaded_without_timeout() {
        let e = parse_line(L5).unwrap();
        assert_eq!(e.timeout, None);
        assert_eq!(e.state, Some(State::Established));
        assert!(e.offloaded);
        assert_eq!(e.reply_bytes, Some(9000));
        let e = parse_line(L10).unwrap();
        assert!(e.offloaded);
        assert_eq!(e.mark, Some(16));
        assert_eq!(e.reply_bytes, Some(1320));
    }

    #[test]
    fn parses_ipv6_server_flow_with_extra_tokens() {
        let e = parse_line(L6).unwrap();
        let f = flow_of(&e, &[ip("fd00::50")], &[8096]).unwrap();
        assert_eq!(f.viewer, ip("2001:db8::99"));
        assert_eq!(f.bytes, 7000);
    }

    #[test]
    fn parses_icmp_gre_and_old_layout() {
        let e = parse_line(L7).unwrap();
        assert_eq!((e.proto, e.orig.sport, e.orig.dport), (1, 0, 0));
        let e = parse_line(L8).unwrap();
        assert_eq!(e.proto, 47);
        assert_eq!(e.reply_bytes, Some(100));
        let e = parse_line(OLD).unwrap();
        assert_eq!(e.timeout, Some(431999));
        assert_eq!(e.reply.sport, 2);
    }

    #[test]
    fn syn_sent_unreplied() {
        let e = parse_line(L9).unwrap();
        assert_eq!(e.state, Some(State::SynSent));
        assert!(e.unreplied);
        // No accounting → not a flow with bytes.
        assert_eq!(flow_of(&e, &[ip("192.168.1.50")], &[8096]), None);
    }

    #[test]
    fn rejects_garbage() {
        for l in [
            "",
            "   ",
            "ipv4",
            "ipv4 2",
            "ipv4 2 tcp",
            "ipv4 2 tcp 6",
            "ipv4 3 tcp 6 10 src=1.1.1.1 dst=2.2.2.2 src=2.2.2.2 dst=1.1.1.1",
            "ipv4 2 tcp 6 10 src=1.1.1.1 dst=2.2.2.2",
            "ipv4 2 tcp 6 10 src=1.1.1.1 dst=2.2.2.2 src=2.2.2.2",
            "ipv4 2 tcp 6 10 src=1.1.1.1 dst=2.2.2.2 src=2.2.2.2 dst=1.1.1.1 src=3.3.3.3 dst=4.4.4.4",
            "ipv4 2 tcp 6 10 src=1.1.1.1 dst=2.2.2.2 sport=99999 src=2.2.2.2 dst=1.1.1.1",
            "ipv4 2 tcp 6 10 src=1.1.1.x dst=2.2.2.2 src=2.2.2.2 dst=1.1.1.1",
            "ipv4 2 tcp 6 10 src=::1 dst=::2 src=::2 dst=::1",
            "ipv6 10 tcp 6 10 src=1.1.1.1 dst=2.2.2.2 src=2.2.2.2 dst=1.1.1.1",
            "ipv4 2 tcp 6 10 dst=2.2.2.2 src=1.1.1.1 dst=2.2.2.2 src=2.2.2.2 dst=1.1.1.1",
            "ipv4 2 tcp 6 10 src=1.1.1.1 dst=2.2.2.2 bytes=-1 src=2.2.2.2 dst=1.1.1.1",
            "ipv4 2 tcp 300 6 10 src=1.1.1.1 dst=2.2.2.2 src=2.2.2.2 dst=1.1.1.1",
            "ipv4 2 tcp x 10 src=1.1.1.1 dst=2.2.2.2 src=2.2.2.2 dst=1.1.1.1",
            "ipv4 2 tcp 6 1x src=1.1.1.1 dst=2.2.2.2 src=2.2.2.2 dst=1.1.1.1",
            "ipv4 2 tcp 6 10 src=1.1.1.1 dst=2.2.2.2 src=2.2.2.2 dst=::1",
            "GARBAGE 2 tcp 6 10 src=1.1.1.1 dst=2.2.2.2 src=2.2.2.2 dst=1.1.1.1",
        ] {
            assert_eq!(parse_line(l), None, "{l}");
        }
    }

    #[test]
    fn unknown_tokens_are_ignored() {
        let l = "ipv4 2 tcp 6 10 ESTABLISHED src=1.1.1.1 dst=2.2.2.2 sport=1 dport=2 foo=bar [NEWFLAG] src=2.2.2.2 dst=1.1.1.1 sport=2 dport=1 bytes=5 [WHATEVER] labels=0x1 use=1";
        let e = parse_line(l).unwrap();
        assert_eq!(e.reply_bytes, Some(5));
    }

    #[test]
    fn flow_filter() {
        let e = parse_line(L2).unwrap();
        assert!(flow_of(&e, &[ip("192.168.1.51")], &[8096]).is_none());
        assert!(flow_of(&e, &[ip("192.168.1.50")], &[8920]).is_none());
        assert!(flow_of(&e, &[ip("192.168.1.51"), ip("192.168.1.50")], &[8920, 8096]).is_some());
        assert!(flow_of(&e, &[ip("::ffff:192.168.1.50")], &[8096]).is_some());
        // A LAN client's upload to a remote 8096 is not the server's flow.
        assert!(flow_of(&parse_line(L1).unwrap(), &[ip("142.250.74.110")], &[8096]).is_none());
        // UDP from the server port is not Jellyfin.
        let u = L2.replace("tcp      6", "udp      17");
        assert!(flow_of(&parse_line(&u).unwrap(), &[ip("192.168.1.50")], &[8096]).is_none());
    }

    fn fl(viewer: &str, sport: u16, bytes: u64) -> Flow {
        Flow {
            key: FlowKey {
                proto: 6,
                orig: Tuple {
                    src: ip(viewer),
                    dst: ip("203.0.113.7"),
                    sport,
                    dport: 8096,
                },
            },
            viewer: ip(viewer),
            bytes,
        }
    }

    #[test]
    fn counter_sums_flows_per_viewer() {
        let mut c = FlowCounter::new();
        let t = c.update(&[
            fl("1.1.1.1", 1, 100),
            fl("1.1.1.1", 2, 50),
            fl("2.2.2.2", 1, 7),
        ]);
        assert_eq!(t[&ip("1.1.1.1")], 150);
        assert_eq!(t[&ip("2.2.2.2")], 7);
        let t = c.update(&[
            fl("1.1.1.1", 1, 300),
            fl("1.1.1.1", 2, 60),
            fl("2.2.2.2", 1, 7),
        ]);
        assert_eq!(t[&ip("1.1.1.1")], 360);
        assert_eq!(t[&ip("2.2.2.2")], 7);
    }

    #[test]
    fn counter_survives_resets_and_churn() {
        let mut c = FlowCounter::new();
        c.update(&[fl("1.1.1.1", 1, 1000)]);
        // nlbwmon zeroed the counter; 40 new bytes since.
        assert_eq!(c.update(&[fl("1.1.1.1", 1, 40)])[&ip("1.1.1.1")], 1040);
        assert_eq!(c.update(&[fl("1.1.1.1", 1, 90)])[&ip("1.1.1.1")], 1090);
        // The flow ended, a new one began.
        assert_eq!(c.update(&[fl("1.1.1.1", 2, 10)])[&ip("1.1.1.1")], 1100);
        assert_eq!(c.flow_count(), 1);
        // No flows at all: totals stay.
        assert_eq!(c.update(&[])[&ip("1.1.1.1")], 1100);
        assert_eq!(c.flow_count(), 0);
        // The old tuple reused by a new connection counts from its start.
        assert_eq!(c.update(&[fl("1.1.1.1", 1, 5)])[&ip("1.1.1.1")], 1105);
    }

    #[test]
    fn counter_ignores_duplicates_within_an_update() {
        let mut c = FlowCounter::new();
        let t = c.update(&[fl("1.1.1.1", 1, 100), fl("1.1.1.1", 1, 100)]);
        assert_eq!(t[&ip("1.1.1.1")], 100);
        let t = c.update(&[fl("1.1.1.1", 1, 150), fl("1.1.1.1", 1, 150)]);
        assert_eq!(t[&ip("1.1.1.1")], 150);
    }

    #[test]
    fn counter_saturates() {
        let mut c = FlowCounter::new();
        c.update(&[fl("1.1.1.1", 1, u64::MAX - 1)]);
        let t = c.update(&[fl("1.1.1.1", 1, 5), fl("1.1.1.1", 2, u64::MAX)]);
        assert_eq!(t[&ip("1.1.1.1")], u64::MAX);
    }

    #[test]
    fn counter_forgets_idle_viewers() {
        let mut c = FlowCounter::new();
        c.update(&[fl("1.1.1.1", 1, 10), fl("2.2.2.2", 1, 10)]);
        c.update(&[fl("2.2.2.2", 1, 20)]);
        c.update(&[fl("2.2.2.2", 1, 30)]);
        c.forget_idle(2);
        assert!(!c.totals().contains_key(&ip("1.1.1.1")));
        assert_eq!(c.totals()[&ip("2.2.2.2")], 30);
    }

    #[test]
    fn stream_parser_handles_chunks_long_lines_and_no_final_newline() {
        let long = format!("ipv4 2 tcp 6 1 {} src=1.1.1.1", "x=y ".repeat(20_000));
        let text = format!("{L1}\n{long}\n{L2}\n\n{L3}\n{L4}\ngarbage\n{L5}");
        let mut got = vec![];
        let mut buf = vec![];
        parse_stream(io::Cursor::new(text.as_bytes()), &mut buf, |e| got.push(e)).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], parse_line(L5).unwrap());
        assert!(buf.len() <= 32 * 1024);
        // One byte at a time: the same result.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || b.is_empty() {
                    return Ok(0);
                }
                b[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let mut got2 = vec![];
        parse_stream(Trickle(text.as_bytes()), &mut buf, |e| got2.push(e)).unwrap();
        assert_eq!(got, got2);
    }

    #[test]
    fn stream_prefilter_only_skips_unrelated_lines() {
        let text = format!("{L1}\n{L2}\n{L6}\n{L9}\n");
        let mut got = vec![];
        let needles = vec![b" sport=8096 ".to_vec()];
        parse_stream_matching(
            io::Cursor::new(text.as_bytes()),
            &mut vec![],
            &needles,
            |e| got.push(e),
        )
        .unwrap();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got.iter().all(|e| e.reply.sport == 8096));
        let needles = vec![b" sport=809 ".to_vec()];
        let mut n = 0;
        parse_stream_matching(
            io::Cursor::new(text.as_bytes()),
            &mut vec![],
            &needles,
            |_| n += 1,
        )
        .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn netlink_message_round_trip() {
        // Build a dump-reply-like message with the request builder and parse it back.
        let mut m = nl::Msg::new(nl::NFNL_SUBSYS_CTNETLINK << 8, 0, 7, AF_INET);
        for (dir, s, d, sp, dp) in [
            (
                nl::CTA_TUPLE_ORIG,
                [198, 51, 100, 2],
                [198, 51, 100, 1],
                40000u16,
                8096u16,
            ),
            (
                nl::CTA_TUPLE_REPLY,
                [192, 168, 77, 2],
                [198, 51, 100, 2],
                8096,
                40000,
            ),
        ] {
            m.begin(dir);
            m.begin(nl::CTA_TUPLE_IP);
            m.attr(nl::CTA_IP_V4_SRC, &s);
            m.attr(nl::CTA_IP_V4_DST, &d);
            m.end();
            m.begin(nl::CTA_TUPLE_PROTO);
            m.attr(nl::CTA_PROTO_NUM, &[6]);
            m.attr(nl::CTA_PROTO_SRC_PORT, &sp.to_be_bytes());
            m.attr(nl::CTA_PROTO_DST_PORT, &dp.to_be_bytes());
            m.end();
            m.end();
        }
        m.begin(nl::CTA_COUNTERS_REPLY);
        m.attr(1, &9u64.to_be_bytes());
        m.attr(nl::CTA_COUNTERS_BYTES, &123456u64.to_be_bytes());
        m.end();
        m.attr(nl::CTA_STATUS, &(nl::IPS_SEEN_REPLY).to_be_bytes());
        m.begin(nl::CTA_PROTOINFO);
        m.begin(nl::CTA_PROTOINFO_TCP);
        m.attr(nl::CTA_PROTOINFO_TCP_STATE, &[3]);
        m.end();
        m.end();
        let bytes = m.finish();
        let mut seen = vec![];
        for_each_msg(&bytes, |ty, _, seq, p| {
            seen.push((ty, seq, parse_ct_msg(p)))
        });
        assert_eq!(seen.len(), 1);
        let e = seen[0].2.clone().unwrap();
        assert_eq!(e.reply.src, ip("192.168.77.2"));
        assert_eq!(e.reply_bytes, Some(123456));
        assert_eq!(e.state, Some(State::Established));
        assert!(!e.unreplied);
        let f = flow_of(&e, &[ip("192.168.77.2")], &[8096]).unwrap();
        assert_eq!((f.viewer, f.bytes), (ip("198.51.100.2"), 123456));
        // Every truncation of the message parses to something or nothing, never panics.
        for cut in 0..bytes.len() {
            for_each_msg(&bytes[..cut], |_, _, _, p| {
                let _ = parse_ct_msg(p);
            });
            let _ = parse_ct_attrs(&bytes[..cut]);
        }
    }

    #[test]
    fn outside_connect_filter() {
        let internal: Vec<IpNet> = ["192.168.0.0/16", "10.0.0.0/8", "fc00::/7"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let c = NewConn {
            src: ip("198.51.100.2"),
            dst: ip("203.0.113.7"),
            dport: 8096,
            proto: 6,
        };
        assert!(is_outside_connect(
            &c,
            &internal,
            &[8096],
            &[ip("203.0.113.7")]
        ));
        assert!(is_outside_connect(&c, &internal, &[8096], &[]));
        assert!(!is_outside_connect(&c, &internal, &[8920], &[]));
        assert!(!is_outside_connect(
            &c,
            &internal,
            &[8096],
            &[ip("192.168.1.50")]
        ));
        let lan = NewConn {
            src: ip("192.168.1.9"),
            ..c
        };
        assert!(!is_outside_connect(&lan, &internal, &[8096], &[]));
        let mapped = NewConn {
            src: ip("::ffff:192.168.1.9"),
            ..c
        };
        assert!(!is_outside_connect(&mapped, &internal, &[8096], &[]));
        let udp = NewConn { proto: 17, ..c };
        assert!(!is_outside_connect(&udp, &internal, &[8096], &[]));
        let v6 = NewConn {
            src: ip("2001:db8::1"),
            dst: ip("fd00::50"),
            dport: 8096,
            proto: 6,
        };
        assert!(is_outside_connect(
            &v6,
            &internal,
            &[8096],
            &[ip("fd00::50")]
        ));
        let v6in = NewConn {
            src: ip("fd00::9"),
            ..v6
        };
        assert!(!is_outside_connect(&v6in, &internal, &[8096], &[]));
    }

    #[test]
    fn proc_connect_poll_reports_once() {
        let dir = std::env::temp_dir().join(format!("jd-ct-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("nf_conntrack");
        std::fs::write(&p, format!("{L9}\n{L2}\n{L4}\n")).unwrap();
        let mut poll = ProcConnectPoll::with_source(ProcSource::with_path(&p));
        let mut out = vec![];
        poll.poll(&[8096], &mut out).unwrap();
        assert_eq!(
            out,
            vec![NewConn {
                src: ip("198.51.100.44"),
                dst: ip("203.0.113.7"),
                dport: 8096,
                proto: 6
            }]
        );
        out.clear();
        poll.poll(&[8096], &mut out).unwrap();
        assert!(out.is_empty());
        std::fs::write(&p, format!("{L2}\n")).unwrap();
        poll.poll(&[8096], &mut out).unwrap();
        std::fs::write(&p, format!("{L9}\n")).unwrap();
        poll.poll(&[8096], &mut out).unwrap();
        assert_eq!(
            out.len(),
            1,
            "a new attempt with the same tuple is reported again"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let mut missing = ProcSource::with_path(dir.join("nope"));
        let e = missing.flows(&[], &[], &mut vec![]).unwrap_err();
        assert!(e.to_string().contains("conntrack"), "{e}");
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parse_line_never_panics(s in "\\PC{0,300}") {
                let _ = parse_line(&s);
            }

            #[test]
            fn parse_line_never_panics_on_token_soup(
                toks in proptest::collection::vec(prop_oneof![
                    Just("ipv4".to_string()), Just("ipv6".to_string()), Just("2".to_string()),
                    Just("10".to_string()), Just("tcp".to_string()), Just("6".to_string()),
                    Just("[UNREPLIED]".to_string()), Just("ESTABLISHED".to_string()),
                    "src=[0-9.:a-f]{0,20}", "dst=[0-9.:a-f]{0,20}", "sport=[0-9]{0,6}",
                    "dport=[0-9]{0,6}", "bytes=[0-9]{0,21}", "[a-z]{1,5}=[a-z0-9]{0,5}",
                ], 0..30)
            ) {
                let _ = parse_line(&toks.join(" "));
            }

            #[test]
            fn known_lines_survive_any_single_token_removal(i in 0usize..40, which in 0usize..6) {
                let l = [L1, L2, L3, L4, L5, L6][which];
                let toks: Vec<&str> = l.split_whitespace().collect();
                let i = i % toks.len();
                let cut: Vec<&str> = toks.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, t)| *t).collect();
                let _ = parse_line(&cut.join(" "));
            }

            #[test]
            fn netlink_parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_ct_attrs(&b);
                for_each_msg(&b, |_, _, _, p| { let _ = parse_ct_msg(p); });
            }

            #[test]
            fn counter_totals_never_decrease(
                steps in proptest::collection::vec(
                    proptest::collection::vec((0u16..4, 0u64..1_000_000), 0..6), 1..30)
            ) {
                let mut c = FlowCounter::new();
                let mut prev = 0u64;
                for s in steps {
                    let flows: Vec<Flow> = s.iter().map(|(p, b)| fl("1.1.1.1", *p, *b)).collect();
                    let t = c.update(&flows).get(&ip("1.1.1.1")).copied().unwrap_or(0);
                    prop_assert!(t >= prev);
                    prev = t;
                }
            }
        }
    }
}
