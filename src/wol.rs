//! Wake-on-LAN (docs/design.md §8): the magic packet, a sender that puts it on the LAN twice (UDP
//! broadcast to port 9 and a raw Ethernet frame with ethertype 0x0842), a pure scheduler that
//! decides when to wake and when to run the idle hook, and the idle hook runner.
//!
//! Both forms are sent because NICs match the pattern anywhere in a frame, but some sleeping
//! NICs only see one of them: the raw frame reaches hosts without an IPv4 address, the UDP one
//! crosses Wi-Fi bridges that drop unknown ethertypes.

use crate::config;
use std::fmt;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Ethertype of a raw Wake-on-LAN frame (what etherwake sends).
pub const ETHERTYPE_WOL: u16 = 0x0842;
/// UDP port of the broadcast copy ("discard").
pub const WOL_PORT: u16 = 9;
/// Length of the magic payload without password: 6 × 0xFF + 16 × MAC.
pub const MAGIC_LEN: usize = 102;
/// Bytes of idle-command output kept (the rest is read and dropped).
pub const OUTPUT_LIMIT: usize = 4096;

/// What went wrong while waking the server or running the idle hook.
#[derive(Debug)]
pub enum Error {
    /// A MAC address or SecureOn password that does not parse.
    BadMac(String),
    /// A SecureOn password must be 4 or 6 bytes.
    BadPassword(usize),
    /// `wol.interface` does not exist.
    NoInterface(String),
    /// No `wol.broadcast` configured and the interface has no IPv4 broadcast address.
    NoIpv4(String),
    /// The interface has no Ethernet address (e.g. a tun device).
    NoHwAddr(String),
    /// The kernel refused for lack of privilege (root or CAP_NET_RAW needed).
    Permission {
        what: &'static str,
        interface: String,
    },
    /// Any other system error, with what was being done.
    Io {
        what: &'static str,
        interface: String,
        source: io::Error,
    },
    /// Neither form could be sent.
    NotSent { udp: Box<Error>, raw: Box<Error> },
    /// The idle command is empty.
    EmptyCommand,
    /// The idle command could not be started.
    Spawn { program: String, source: io::Error },
    /// The idle command ran longer than allowed and was killed.
    Timeout {
        program: String,
        after: Duration,
        output: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMac(m) => write!(f, "{m}"),
            Error::BadPassword(n) => {
                write!(f, "SecureOn password must be 4 or 6 bytes, not {n}")
            }
            Error::NoInterface(i) => write!(
                f,
                "interface '{i}' does not exist (set wol.interface to the LAN device, e.g. br-lan)"
            ),
            Error::NoIpv4(i) => write!(
                f,
                "interface '{i}' has no IPv4 broadcast address (give one in wol.broadcast)"
            ),
            Error::NoHwAddr(i) => write!(f, "interface '{i}' has no Ethernet address"),
            Error::Permission { what, interface } => write!(
                f,
                "{what} on '{interface}': permission denied (run as root or with CAP_NET_RAW)"
            ),
            Error::Io {
                what,
                interface,
                source,
            } => write!(f, "{what} on '{interface}': {source}"),
            Error::NotSent { udp, raw } => {
                write!(f, "magic packet not sent: UDP: {udp}; raw frame: {raw}")
            }
            Error::EmptyCommand => write!(f, "idle command is empty"),
            Error::Spawn { program, source } => write!(f, "cannot start '{program}': {source}"),
            Error::Timeout { program, after, .. } => {
                write!(
                    f,
                    "'{program}' still running after {}s, killed",
                    after.as_secs_f32()
                )
            }
        }
    }
}

impl std::error::Error for Error {}

/// The magic payload: 6 × 0xFF, the MAC 16 times, then the SecureOn password if any.
pub fn magic_payload(mac: [u8; 6], password: Option<&[u8]>) -> Vec<u8> {
    let extra = password.map_or(0, <[u8]>::len);
    let mut p = Vec::with_capacity(MAGIC_LEN + extra);
    p.extend_from_slice(&[0xFF; 6]);
    for _ in 0..16 {
        p.extend_from_slice(&mac);
    }
    if let Some(pw) = password {
        p.extend_from_slice(pw);
    }
    p
}

/// The raw Ethernet frame: broadcast destination, `src`, ethertype 0x0842, payload.
pub fn ethernet_frame(src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&[0xFF; 6]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE_WOL.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn parse_hex_groups(s: &str, what: &str, n: usize) -> Result<Vec<u8>, String> {
    let bad = || format!("invalid {what} '{s}': expected {n} hex bytes like aa:bb:cc:dd:ee:ff");
    let t = s.trim();
    let groups: Vec<&str> = if t.contains(':') {
        t.split(':').collect()
    } else if t.contains('-') {
        t.split('-').collect()
    } else if t.len() == 2 * n && t.is_ascii() {
        (0..n).map(|i| &t[2 * i..2 * i + 2]).collect()
    } else {
        return Err(bad());
    };
    if groups.len() != n {
        return Err(bad());
    }
    groups
        .iter()
        .map(|g| {
            if g.is_empty() || g.len() > 2 || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
                Err(bad())
            } else {
                u8::from_str_radix(g, 16).map_err(|_| bad())
            }
        })
        .collect()
}

/// Parses a target MAC: `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` or `aabbccddeeff`
/// (case-insensitive). Refuses the all-zero and group (multicast/broadcast) addresses, which
/// no NIC owns.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let v = parse_hex_groups(s, "MAC address", 6)?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&v);
    if mac == [0; 6] {
        return Err(format!("invalid MAC address '{}': all zero", s.trim()));
    }
    if mac[0] & 1 == 1 {
        return Err(format!(
            "invalid MAC address '{}': a multicast/broadcast address cannot be a target",
            s.trim()
        ));
    }
    Ok(mac)
}

/// Parses a SecureOn password: 6 bytes as a MAC-like `aa:bb:cc:dd:ee:ff`, or 4 bytes as a
/// dotted quad `1.2.3.4` (the forms etherwake accepts).
pub fn parse_password(s: &str) -> Result<Vec<u8>, String> {
    let t = s.trim();
    if let Ok(ip) = t.parse::<Ipv4Addr>() {
        return Ok(ip.octets().to_vec());
    }
    parse_hex_groups(t, "SecureOn password", 6)
        .map_err(|_| format!("invalid SecureOn password '{t}': use aa:bb:cc:dd:ee:ff or 1.2.3.4"))
}

/// The addresses of one interface that sending needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfInfo {
    pub index: u32,
    pub mac: Option<[u8; 6]>,
    pub broadcast: Option<Ipv4Addr>,
}

/// Looks an interface up in the calling thread's network namespace.
pub fn interface_info(name: &str) -> Result<IfInfo, Error> {
    let index = match nix::net::if_::if_nametoindex(name) {
        Ok(i) => i,
        Err(_) => return Err(Error::NoInterface(name.to_string())),
    };
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| Error::Io {
        what: "listing interface addresses",
        interface: name.to_string(),
        source: io::Error::from(e),
    })?;
    let mut info = IfInfo {
        index,
        mac: None,
        broadcast: None,
    };
    for a in addrs.filter(|a| a.interface_name == name) {
        if let Some(l) = a.address.as_ref().and_then(|s| s.as_link_addr()) {
            if let Some(m) = l.addr() {
                if m != [0; 6] {
                    info.mac = Some(m);
                }
            }
        }
        if info.broadcast.is_some() {
            continue;
        }
        let Some(ip) = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip())
        else {
            continue;
        };
        // An address added without `brd` has no broadcast (libc then reports the address
        // itself); the netmask gives the directed broadcast. /31 and /32 have none.
        let from_mask = a
            .netmask
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|m| u32::from(m.ip()))
            .filter(|m| m.count_zeros() >= 2)
            .map(|m| Ipv4Addr::from(u32::from(ip) | !m));
        let reported = a
            .broadcast
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip())
            .filter(|b| !b.is_unspecified() && *b != ip);
        let bcast = reported.or(from_mask);
        info.broadcast = bcast;
    }
    Ok(info)
}

/// What one `send` achieved: each form, or why it failed.
#[derive(Debug)]
pub struct SendReport {
    /// Where the UDP copy went.
    pub udp: Result<SocketAddrV4, Error>,
    /// The source MAC the raw frame was sent with.
    pub raw: Result<[u8; 6], Error>,
}

impl SendReport {
    /// True when both forms left.
    pub fn complete(&self) -> bool {
        self.udp.is_ok() && self.raw.is_ok()
    }
}

/// Sends magic packets on one LAN interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    interface: String,
    broadcast: Option<Ipv4Addr>,
}

fn sys_err(what: &'static str, interface: &str, e: io::Error) -> Error {
    if matches!(
        e.raw_os_error(),
        Some(nix::libc::EPERM) | Some(nix::libc::EACCES)
    ) {
        Error::Permission {
            what,
            interface: interface.to_string(),
        }
    } else {
        Error::Io {
            what,
            interface: interface.to_string(),
            source: e,
        }
    }
}

impl Sender {
    /// A sender on `interface`; `broadcast` overrides the interface's own IPv4 broadcast.
    pub fn new(interface: impl Into<String>, broadcast: Option<Ipv4Addr>) -> Self {
        Sender {
            interface: interface.into(),
            broadcast,
        }
    }

    /// The sender `wol.interface` and `wol.broadcast` describe.
    pub fn from_config(wol: &config::Wol) -> Self {
        Sender::new(wol.interface.clone(), wol.broadcast)
    }

    /// The interface name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Sends the packet `config wol` describes (`wol.mac`, its password); what `jellydemon
    /// wake` and the daemon call.
    pub fn wake(wol: &config::Wol) -> Result<SendReport, Error> {
        let mac = wol.mac.ok_or_else(|| {
            Error::BadMac("wol.mac is not set (the media server's MAC address)".into())
        })?;
        Sender::from_config(wol).send(mac, wol.password.as_deref())
    }

    /// Sends the magic packet for `mac` both as a UDP broadcast to port 9 and as a raw
    /// Ethernet broadcast frame. Succeeds when at least one form left; the report says which.
    pub fn send(&self, mac: [u8; 6], password: Option<&[u8]>) -> Result<SendReport, Error> {
        if let Some(pw) = password {
            if pw.len() != 4 && pw.len() != 6 {
                return Err(Error::BadPassword(pw.len()));
            }
        }
        let info = interface_info(&self.interface)?;
        let payload = magic_payload(mac, password);
        let udp = match self.broadcast.or(info.broadcast) {
            Some(b) => {
                let to = SocketAddrV4::new(b, WOL_PORT);
                self.send_udp(to, &payload).map(|()| to)
            }
            None => Err(Error::NoIpv4(self.interface.clone())),
        };
        let raw = match info.mac {
            Some(src) => self
                .send_raw(info.index, &ethernet_frame(src, &payload))
                .map(|()| src),
            None => Err(Error::NoHwAddr(self.interface.clone())),
        };
        match (udp, raw) {
            (Err(u), Err(r)) => Err(Error::NotSent {
                udp: Box::new(u),
                raw: Box::new(r),
            }),
            (udp, raw) => Ok(SendReport { udp, raw }),
        }
    }

    fn send_udp(&self, to: SocketAddrV4, payload: &[u8]) -> Result<(), Error> {
        use nix::sys::socket::{
            sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
            SockaddrIn,
        };
        let ifn = self.interface.as_str();
        let e = |what, err: nix::Error| sys_err(what, ifn, io::Error::from(err));
        let fd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|x| e("opening a UDP socket", x))?;
        setsockopt(&fd, sockopt::Broadcast, &true).map_err(|x| e("enabling broadcast", x))?;
        // Without the device binding a limited broadcast (255.255.255.255) follows the default
        // route, i.e. out of the WAN.
        setsockopt(&fd, sockopt::BindToDevice, &std::ffi::OsString::from(ifn))
            .map_err(|x| e("binding to the interface", x))?;
        let n = sendto(
            fd.as_raw_fd(),
            payload,
            &SockaddrIn::from(to),
            MsgFlags::empty(),
        )
        .map_err(|x| e("sending the UDP magic packet", x))?;
        if n != payload.len() {
            return Err(Error::Io {
                what: "sending the UDP magic packet",
                interface: ifn.to_string(),
                source: io::Error::new(io::ErrorKind::WriteZero, "short write"),
            });
        }
        Ok(())
    }

    fn send_raw(&self, ifindex: u32, frame: &[u8]) -> Result<(), Error> {
        use nix::libc;
        let ifn = self.interface.as_str();
        let proto = ETHERTYPE_WOL.to_be();
        // SAFETY: plain syscall; the returned descriptor is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        if raw < 0 {
            return Err(sys_err(
                "opening a packet socket",
                ifn,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xFF; 6]);
        // SAFETY: the buffer and address outlive the call; lengths are their exact sizes.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(sys_err(
                "sending the raw magic frame",
                ifn,
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// Why a wake packet is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A Jellyfin session is playing.
    Session,
    /// A new connection from outside to the Jellyfin port.
    Connect,
}

/// What the scheduler wants done now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the magic packet.
    Wake(Reason),
    /// Run `wol.idle_command` (once per idle period).
    RunIdle,
}

/// Decides when to wake the server and when to run the idle hook; pure, driven by `step`.
///
/// Time is whatever monotonic seconds the caller uses. A clock that goes backwards counts as
/// a fresh start for the cooldown (a wake is allowed) and as activity for idleness (the idle
/// hook waits a full period), so a clock jump can neither block a wake nor fire the hook early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduler {
    /// Seconds between two packets.
    pub cooldown: u64,
    pub on_session: bool,
    pub on_connect: bool,
    /// 0 = never run the idle hook.
    pub idle_minutes: u32,
    last_wake: Option<u64>,
    last_activity: Option<u64>,
    last_now: Option<u64>,
    idle_fired: bool,
}

impl Scheduler {
    /// A scheduler that has not seen any activity yet; idleness counts from the first `step`.
    pub fn new(cooldown: u64, on_session: bool, on_connect: bool, idle_minutes: u32) -> Self {
        Scheduler {
            cooldown,
            on_session,
            on_connect,
            idle_minutes,
            last_wake: None,
            last_activity: None,
            last_now: None,
            idle_fired: false,
        }
    }

    /// The scheduler `config wol` describes.
    pub fn from_config(wol: &config::Wol) -> Self {
        Scheduler::new(
            u64::from(wol.cooldown),
            wol.on_session,
            wol.on_connect,
            wol.idle_minutes,
        )
    }

    /// When the last wake was decided (in the caller's seconds).
    pub fn last_wake(&self) -> Option<u64> {
        self.last_wake
    }

    /// Tells the scheduler that a packet was sent outside `step` (e.g. `jellydemon wake`), so
    /// the cooldown starts now.
    pub fn note_wake(&mut self, now_secs: u64) {
        self.last_wake = Some(now_secs);
    }

    /// One tick: `playing` = some session plays, `new_connections` = new outside connections
    /// to the Jellyfin port since the last step. Returns what to do now, in order.
    pub fn step(&mut self, now_secs: u64, playing: bool, new_connections: usize) -> Vec<Action> {
        let mut actions = Vec::new();
        let went_back = self.last_now.is_some_and(|t| now_secs < t);
        self.last_now = Some(now_secs);
        if went_back {
            if self.last_wake.is_some() {
                self.last_wake = None;
            }
            self.last_activity = Some(now_secs);
        }

        let reason = if self.on_connect && new_connections > 0 {
            Some(Reason::Connect)
        } else if self.on_session && playing {
            Some(Reason::Session)
        } else {
            None
        };
        if let Some(r) = reason {
            let cooled = self
                .last_wake
                .is_none_or(|t| now_secs.saturating_sub(t) >= self.cooldown);
            if cooled {
                self.last_wake = Some(now_secs);
                actions.push(Action::Wake(r));
            }
        }

        if playing || new_connections > 0 {
            self.last_activity = Some(now_secs);
            self.idle_fired = false;
        } else {
            let since = *self.last_activity.get_or_insert(now_secs);
            let period = u64::from(self.idle_minutes).saturating_mul(60);
            if self.idle_minutes > 0 && !self.idle_fired && now_secs.saturating_sub(since) >= period
            {
                self.idle_fired = true;
                actions.push(Action::RunIdle);
            }
        }
        actions
    }
}

/// A pipe whose ends are close-on-exec from the start (pipe2): the daemon starts `tc` from
/// other threads while the idle command runs, and those must not inherit either end.
fn output_pipe() -> nix::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// Runs the idle hook: `argv[0]` with the rest as arguments, no shell, stdin from /dev/null,
/// stdout and stderr captured together (the first [`OUTPUT_LIMIT`] bytes). After `timeout` the
/// command and everything it started in its process group are killed. Returns the exit code
/// (128 + signal when killed by a signal) and the output.
pub fn run_idle_command(argv: &[String], timeout: Duration) -> Result<(i32, String), Error> {
    use nix::sys::signal::{killpg, Signal};
    use nix::sys::wait::{waitid, Id, WaitPidFlag};
    use nix::unistd::Pid;
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    let program = argv.first().ok_or(Error::EmptyCommand)?.clone();
    if program.is_empty() {
        return Err(Error::EmptyCommand);
    }
    let spawn_err = |source: io::Error| Error::Spawn {
        program: program.clone(),
        source,
    };
    let (rd, wr) = output_pipe().map_err(|e| spawn_err(io::Error::from(e)))?;
    let wr2 = wr.try_clone().map_err(spawn_err)?;
    let mut child = Command::new(&program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::from(wr))
        .stderr(Stdio::from(wr2))
        .process_group(0)
        .spawn()
        .map_err(spawn_err)?;
    // The parent's copies of the write end went into `Command` and are closed now, so the
    // reader sees EOF once the command (and whatever inherited the pipe) is gone.

    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // A watcher that cannot be started: kill what was started, reap it, report.
    let abandon = |child: &mut std::process::Child, e: io::Error| {
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = child.wait();
        Error::Spawn {
            program: program.clone(),
            source: io::Error::new(e.kind(), format!("cannot start a thread to watch it: {e}")),
        }
    };
    let output = Arc::new(Mutex::new(Vec::new()));
    let (out_tx, out_rx) = mpsc::channel::<()>();
    {
        let output = Arc::clone(&output);
        let started = crate::spawn_thread("idle-output", move || {
            let mut f = std::fs::File::from(rd);
            let mut buf = [0u8; 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Ok(mut o) = output.lock() {
                            let room = OUTPUT_LIMIT.saturating_sub(o.len());
                            o.extend_from_slice(&buf[..n.min(room)]);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            let _ = out_tx.send(());
        });
        if let Err(e) = started {
            return Err(abandon(&mut child, e));
        }
    }

    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let started = crate::spawn_thread("idle-wait", move || {
        // WNOWAIT leaves the child unreaped, so its pid cannot be recycled before the kill.
        while let Err(nix::errno::Errno::EINTR) =
            waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
        {}
        let _ = exit_tx.send(());
    });
    if let Err(e) = started {
        return Err(abandon(&mut child, e));
    }

    let timed_out = exit_rx.recv_timeout(timeout).is_err();
    if timed_out {
        let _ = killpg(pid, Signal::SIGKILL);
    }
    let status = child.wait().map_err(spawn_err)?;
    // Output still held open by a detached grandchild must not hold the daemon up.
    let _ = out_rx.recv_timeout(Duration::from_millis(500));
    let text = output
        .lock()
        .map(|o| String::from_utf8_lossy(&o).into_owned())
        .unwrap_or_default();
    if timed_out {
        return Err(Error::Timeout {
            program,
            after: timeout,
            output: text,
        });
    }
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1);
    Ok((code, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn payload_layout() {
        let p = magic_payload(MAC, None);
        assert_eq!(p.len(), MAGIC_LEN);
        assert_eq!(&p[..6], &[0xFF; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + 6 * i..12 + 6 * i], &MAC);
        }
    }

    #[test]
    fn payload_with_password() {
        let p = magic_payload(MAC, Some(&[1, 2, 3, 4]));
        assert_eq!(p.len(), 106);
        assert_eq!(&p[102..], &[1, 2, 3, 4]);
        let p = magic_payload(MAC, Some(&[1, 2, 3, 4, 5, 6]));
        assert_eq!(&p[102..], &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn frame_layout() {
        let f = ethernet_frame([2, 0, 0, 0, 0, 1], &magic_payload(MAC, None));
        assert_eq!(&f[..6], &[0xFF; 6]);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[12..14], &[0x08, 0x42]);
        assert_eq!(f.len(), 14 + MAGIC_LEN);
    }

    #[test]
    fn mac_forms() {
        for s in [
            "00:11:22:33:44:55",
            "00-11-22-33-44-55",
            "001122334455",
            " 00:11:22:33:44:55 ",
        ] {
            assert_eq!(parse_mac(s), Ok(MAC), "{s}");
        }
        assert_eq!(parse_mac("0:1:2:3:4:5"), Ok([0, 1, 2, 3, 4, 5]));
        assert_eq!(
            parse_mac("AA:bb:CC:dd:EE:fe"),
            Ok([0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFE])
        );
    }

    #[test]
    fn mac_rejects() {
        for s in [
            "",
            "00:11:22:33:44",
            "00:11:22:33:44:55:66",
            "00:11:22:33:44:5g",
            "000:11:22:33:44:55",
            "00:11:22:33:44:",
            "00:11-22:33:44:55",
            "0011223344",
            "00112233445566",
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "+0:11:22:33:44:55",
            "ää:11:22:33:44:55",
            "éé1122334455",
        ] {
            let e = parse_mac(s).expect_err(s);
            assert!(e.contains("MAC address"), "{s}: {e}");
        }
    }

    #[test]
    fn password_forms() {
        assert_eq!(parse_password("1.2.3.4"), Ok(vec![1, 2, 3, 4]));
        assert_eq!(
            parse_password("aa:bb:cc:dd:ee:ff"),
            Ok(vec![0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff])
        );
        assert!(parse_password("1.2.3").is_err());
        assert!(parse_password("xx").is_err());
    }

    #[test]
    fn bad_password_length_is_refused_before_io() {
        let s = Sender::new("no-such-if0", None);
        assert!(matches!(
            s.send(MAC, Some(&[1, 2, 3])),
            Err(Error::BadPassword(3))
        ));
    }

    #[test]
    fn wake_needs_a_mac() {
        let w = config::Config::default().wol;
        let e = Sender::wake(&w).unwrap_err();
        assert!(e.to_string().contains("wol.mac is not set"), "{e}");
    }

    #[test]
    fn missing_interface() {
        let s = Sender::new("jdnosuch0", None);
        let e = s.send(MAC, None).unwrap_err();
        assert!(matches!(e, Error::NoInterface(_)));
        assert!(e.to_string().contains("jdnosuch0"));
    }

    fn sched() -> Scheduler {
        Scheduler::new(60, true, true, 0)
    }

    #[test]
    fn first_session_wakes_at_once() {
        let mut s = sched();
        assert_eq!(s.step(1000, true, 0), vec![Action::Wake(Reason::Session)]);
        assert_eq!(s.last_wake(), Some(1000));
    }

    #[test]
    fn connect_wakes_and_wins_over_session() {
        let mut s = sched();
        assert_eq!(s.step(5, true, 3), vec![Action::Wake(Reason::Connect)]);
    }

    #[test]
    fn nothing_happens_when_idle_without_hook() {
        let mut s = sched();
        for t in 0..1000 {
            assert!(s.step(t * 60, false, 0).is_empty());
        }
    }

    #[test]
    fn cooldown_holds_between_packets() {
        let mut s = sched();
        let mut wakes = vec![];
        for t in 0..=300 {
            if !s.step(t, true, 0).is_empty() {
                wakes.push(t);
            }
        }
        assert_eq!(wakes, vec![0, 60, 120, 180, 240, 300]);
    }

    #[test]
    fn cooldown_counts_across_reasons() {
        let mut s = sched();
        assert_eq!(s.step(0, true, 0), vec![Action::Wake(Reason::Session)]);
        assert!(s.step(10, false, 1).is_empty());
        assert!(s.step(59, false, 1).is_empty());
        assert_eq!(s.step(60, false, 1), vec![Action::Wake(Reason::Connect)]);
    }

    #[test]
    fn zero_cooldown_wakes_every_tick() {
        let mut s = Scheduler::new(0, true, true, 0);
        for t in 0..10 {
            assert_eq!(s.step(t, true, 0).len(), 1);
        }
    }

    #[test]
    fn disabled_triggers_do_not_wake() {
        let mut s = Scheduler::new(60, false, false, 0);
        assert!(s.step(0, true, 5).is_empty());
        let mut s = Scheduler::new(60, false, true, 0);
        assert!(s.step(0, true, 0).is_empty());
        assert_eq!(s.step(1, true, 1), vec![Action::Wake(Reason::Connect)]);
        let mut s = Scheduler::new(60, true, false, 0);
        assert!(s.step(0, false, 5).is_empty());
        assert_eq!(s.step(1, true, 5), vec![Action::Wake(Reason::Session)]);
    }

    #[test]
    fn manual_wake_starts_cooldown() {
        let mut s = sched();
        s.note_wake(100);
        assert!(s.step(120, true, 0).is_empty());
        assert_eq!(s.step(160, true, 0).len(), 1);
    }

    #[test]
    fn idle_fires_once_per_period() {
        let mut s = Scheduler::new(60, true, true, 10);
        let mut fired = vec![];
        for t in (0..=3600).step_by(5) {
            if s.step(t, false, 0).contains(&Action::RunIdle) {
                fired.push(t);
            }
        }
        assert_eq!(fired, vec![600]);
    }

    #[test]
    fn idle_rearms_after_activity() {
        let mut s = Scheduler::new(60, true, true, 1);
        let mut fired = vec![];
        for t in (0..=600).step_by(5) {
            let playing = (200..300).contains(&t);
            let conns = usize::from(t == 450);
            if s.step(t, playing, conns).contains(&Action::RunIdle) {
                fired.push(t);
            }
        }
        // idle from 0 → 60; play 200..295 → idle again 355; a connection at 450 → 510.
        assert_eq!(fired, vec![60, 355, 510]);
    }

    #[test]
    fn idle_zero_never_fires() {
        let mut s = Scheduler::new(60, true, true, 0);
        assert!((0..100_000)
            .step_by(97)
            .all(|t| !s.step(t, false, 0).contains(&Action::RunIdle)));
    }

    #[test]
    fn idle_counts_from_first_step_not_from_zero() {
        let mut s = Scheduler::new(60, true, true, 5);
        assert!(s.step(1_000_000, false, 0).is_empty());
        assert!(s.step(1_000_299, false, 0).is_empty());
        assert_eq!(s.step(1_000_300, false, 0), vec![Action::RunIdle]);
    }

    #[test]
    fn idle_and_wake_never_together() {
        let mut s = Scheduler::new(0, true, true, 1);
        for t in 0..1000 {
            let a = s.step(t, t % 7 == 0, usize::from(t % 11 == 0));
            assert!(
                !(a.contains(&Action::RunIdle) && a.iter().any(|x| matches!(x, Action::Wake(_))))
            );
        }
    }

    #[test]
    fn activity_counts_even_when_triggers_are_off() {
        // Playing keeps the server busy even when on_session is off: idleness counts from it.
        let mut s = Scheduler::new(60, false, false, 1);
        assert!(s.step(0, true, 0).is_empty());
        assert!(s.step(30, true, 0).is_empty());
        assert!(s.step(89, false, 0).is_empty());
        assert_eq!(s.step(90, false, 0), vec![Action::RunIdle]);
        assert!(s.step(120, false, 0).is_empty());
        assert!(s.step(121, false, 0).is_empty());
    }

    #[test]
    fn clock_going_back_allows_a_wake_and_delays_idle() {
        let mut s = Scheduler::new(60, true, true, 1);
        assert_eq!(s.step(1000, true, 0).len(), 1);
        assert_eq!(s.step(10, true, 0), vec![Action::Wake(Reason::Session)]);
        let mut s = Scheduler::new(60, true, true, 1);
        assert!(s.step(1000, false, 0).is_empty());
        assert!(s.step(100, false, 0).is_empty());
        assert!(s.step(159, false, 0).is_empty());
        assert_eq!(s.step(160, false, 0), vec![Action::RunIdle]);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let mut s = Scheduler::new(u64::MAX, true, true, u32::MAX);
        assert_eq!(s.step(u64::MAX, true, usize::MAX).len(), 1);
        assert!(s.step(u64::MAX, true, 1).is_empty());
        assert!(s.step(u64::MAX, false, 0).is_empty());
    }

    #[test]
    fn from_config_takes_the_options() {
        let mut w = config::Config::default().wol;
        w.cooldown = 30;
        w.on_connect = false;
        w.idle_minutes = 7;
        let s = Scheduler::from_config(&w);
        assert_eq!(
            (s.cooldown, s.on_session, s.on_connect, s.idle_minutes),
            (30, true, false, 7)
        );
    }

    #[test]
    fn idle_command_exit_code_and_output() {
        let argv: Vec<String> = ["sh", "-c", "echo out; echo err >&2; exit 3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (code, out) = run_idle_command(&argv, Duration::from_secs(10)).unwrap();
        assert_eq!(code, 3);
        assert!(out.contains("out") && out.contains("err"), "{out}");
    }

    #[test]
    fn idle_command_arguments_are_not_shell_parsed() {
        let argv: Vec<String> = ["echo", "$HOME", ";", "rm", "-rf", "/"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (code, out) = run_idle_command(&argv, Duration::from_secs(10)).unwrap();
        assert_eq!(code, 0);
        assert_eq!(out, "$HOME ; rm -rf /\n");
    }

    #[test]
    fn idle_command_output_is_bounded() {
        let argv: Vec<String> = ["head", "-c", "1000000", "/dev/zero"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (code, out) = run_idle_command(&argv, Duration::from_secs(10)).unwrap();
        assert_eq!(code, 0);
        assert_eq!(out.len(), OUTPUT_LIMIT);
    }

    #[test]
    fn idle_command_timeout_kills() {
        let argv: Vec<String> = ["sleep", "30"].iter().map(|s| s.to_string()).collect();
        let t0 = std::time::Instant::now();
        let e = run_idle_command(&argv, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn idle_command_timeout_kills_the_whole_group() {
        // The shell's child `sleep` holds the output pipe: it must die with the group.
        let argv: Vec<String> = ["sh", "-c", "sleep 30; true"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let t0 = std::time::Instant::now();
        assert!(run_idle_command(&argv, Duration::from_millis(200)).is_err());
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }

    #[test]
    fn idle_command_errors() {
        assert!(matches!(
            run_idle_command(&[], Duration::from_secs(1)),
            Err(Error::EmptyCommand)
        ));
        assert!(matches!(
            run_idle_command(&[String::new()], Duration::from_secs(1)),
            Err(Error::EmptyCommand)
        ));
        let e = run_idle_command(&["/nonexistent/jd-cmd".to_string()], Duration::from_secs(1))
            .unwrap_err();
        assert!(matches!(e, Error::Spawn { .. }));
        assert!(e.to_string().contains("/nonexistent/jd-cmd"));
    }

    #[test]
    fn killed_by_signal_reports_128_plus() {
        let argv: Vec<String> = ["sh", "-c", "kill -TERM $$"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (code, _) = run_idle_command(&argv, Duration::from_secs(10)).unwrap();
        assert_eq!(code, 128 + 15);
    }

    /// The output pipe is created close-on-exec: a `tc` the daemon starts meanwhile from
    /// another thread must not inherit its ends (a write end held by tc delays the reader's
    /// EOF until tc exits; any end is a leaked descriptor). The child gets its copies through
    /// dup2, which clears the flag on the copies only.
    #[test]
    fn output_pipe_is_close_on_exec() {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let (rd, wr) = output_pipe().unwrap();
        for fd in [&rd, &wr] {
            let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).unwrap());
            assert!(flags.contains(FdFlag::FD_CLOEXEC), "{flags:?}");
        }
    }

    /// A thread that cannot be started is an error, not an abort; the command it would have
    /// watched is killed and reaped, not left running.
    #[test]
    fn idle_command_survives_a_thread_that_cannot_start() {
        let argv: Vec<String> = ["sleep", "30"].iter().map(|s| s.to_string()).collect();
        for failures in [1, 2] {
            crate::test_faults::fail_spawns(failures);
            let t0 = std::time::Instant::now();
            let e = run_idle_command(&argv, Duration::from_secs(20)).unwrap_err();
            crate::test_faults::fail_spawns(0);
            assert!(matches!(e, Error::Spawn { .. }), "{e}");
            assert!(e.to_string().contains("thread"), "{e}");
            assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        }
    }
}
