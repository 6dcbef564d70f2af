//! Wake-on-LAN against the real kernel: a router namespace sends, a LAN namespace captures with
//! an AF_PACKET socket, and both forms are checked byte for byte. Needs root.

mod netns_helper;

use jellydemon::wol::{
    ethernet_frame, interface_info, magic_payload, parse_mac, run_idle_command, Action, Error,
    Scheduler, Sender,
};
use netns_helper::{veth, Netns};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const TARGET: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A packet socket that sees every frame arriving on one interface.
struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Opens on `ifname` in the calling thread's namespace.
    fn open(ifname: &str) -> Capture {
        use nix::libc;
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain syscalls on values we own; the descriptor is owned right away.
        unsafe {
            let raw = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(all),
            );
            assert!(
                raw >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = OwnedFd::from_raw_fd(raw);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = all;
            sll.sll_ifindex = nix::net::if_::if_nametoindex(ifname).expect("ifindex") as i32;
            let r = libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            Capture { fd }
        }
    }

    /// The next frame, or None when `deadline` passes first.
    fn next(&self, deadline: Instant) -> Option<Vec<u8>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(ms)).expect("poll") == 0 {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            let n = nix::sys::socket::recv(
                self.fd.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            );
            if let Ok(n) = n {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }
}

fn is_raw_wol(f: &[u8]) -> bool {
    f.len() >= 14 && f[12..14] == [0x08, 0x42]
}

/// (destination address, UDP payload) of an IPv4 UDP datagram to port 9.
fn udp9(f: &[u8]) -> Option<(Ipv4Addr, Vec<u8>)> {
    if f.len() < 42 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 17 || ip.len() < ihl + 8 {
        return None;
    }
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = &ip[ihl..];
    if u16::from_be_bytes([udp[2], udp[3]]) != 9 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    Some((dst, udp.get(8..len)?.to_vec()))
}

struct Lan {
    router: Netns,
    lan: Netns,
    cap: Capture,
    router_mac: [u8; 6],
}

fn lan() -> Lan {
    let router = Netns::new("wr");
    let lan = Netns::new("wl");
    veth(&router, "lan0", &lan, "cap0");
    router.ip(&["addr", "add", "192.168.88.1/24", "dev", "lan0"]);
    let cap = lan.run(|| Capture::open("cap0"));
    let router_mac = router
        .run(|| interface_info("lan0"))
        .expect("lan0")
        .mac
        .expect("mac");
    Lan {
        router,
        lan,
        cap,
        router_mac,
    }
}

#[test]
fn sends_both_forms_byte_for_byte() {
    let l = lan();
    let report = l
        .router
        .run(|| Sender::new("lan0", None).send(TARGET, None))
        .expect("send");
    assert_eq!(
        report.udp.as_ref().ok(),
        Some(&SocketAddrV4::new(Ipv4Addr::new(192, 168, 88, 255), 9))
    );
    assert_eq!(report.raw.as_ref().ok(), Some(&l.router_mac));
    assert!(report.complete());

    let payload = magic_payload(TARGET, None);
    let expected_raw = ethernet_frame(l.router_mac, &payload);
    let (mut raw, mut udp) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(3);
    while raw.is_none() || udp.is_none() {
        let f = l.cap.next(deadline).expect("both frames within 3 s");
        if is_raw_wol(&f) {
            raw = Some(f);
        } else if let Some(u) = udp9(&f) {
            assert_eq!(
                &f[..6],
                &[0xff; 6],
                "UDP copy goes to the Ethernet broadcast"
            );
            assert_eq!(&f[6..12], &l.router_mac);
            udp = Some(u);
        }
    }
    assert_eq!(raw.unwrap(), expected_raw);
    assert_eq!(udp.unwrap(), (Ipv4Addr::new(192, 168, 88, 255), payload));
    drop(l.lan);
}

#[test]
fn limited_broadcast_stays_on_the_bound_interface_and_password_is_appended() {
    let l = lan();
    // A default route out of another interface: without the device binding the limited
    // broadcast would follow it.
    let wan = Netns::new("ww");
    veth(&l.router, "wan0", &wan, "up0");
    l.router
        .ip(&["addr", "add", "203.0.113.7/24", "dev", "wan0"]);
    l.router
        .ip(&["route", "add", "default", "via", "203.0.113.1"]);
    let wan_cap = wan.run(|| Capture::open("up0"));

    let pw = [1u8, 2, 3, 4, 5, 6];
    let report = l
        .router
        .run(|| Sender::new("lan0", Some(Ipv4Addr::BROADCAST)).send(TARGET, Some(&pw)))
        .expect("send");
    assert_eq!(
        report.udp.ok(),
        Some(SocketAddrV4::new(Ipv4Addr::BROADCAST, 9))
    );
    let payload = magic_payload(TARGET, Some(&pw));
    assert_eq!(payload.len(), 108);
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut raw, mut udp) = (false, false);
    while !(raw && udp) {
        let f = l.cap.next(deadline).expect("both frames on the LAN");
        if is_raw_wol(&f) {
            assert_eq!(f, ethernet_frame(l.router_mac, &payload));
            raw = true;
        } else if let Some((dst, p)) = udp9(&f) {
            assert_eq!((dst, p), (Ipv4Addr::BROADCAST, payload.clone()));
            udp = true;
        }
    }
    // Whatever reached the WAN side by now would have left at the same moment.
    let window = Instant::now() + Duration::from_millis(300);
    while let Some(f) = wan_cap.next(window) {
        assert!(
            !is_raw_wol(&f) && udp9(&f).is_none(),
            "magic packet leaked to the WAN"
        );
    }
}

#[test]
fn clear_errors() {
    let l = lan();
    // Malformed MAC.
    let e = parse_mac("52:54:00:12:34").unwrap_err();
    assert!(e.contains("invalid MAC address '52:54:00:12:34'"), "{e}");
    assert!(parse_mac("zz:54:00:12:34:56").is_err());

    // Missing interface.
    let e = l
        .router
        .run(|| Sender::new("nosuch0", None).send(TARGET, None))
        .unwrap_err();
    assert!(matches!(e, Error::NoInterface(_)), "{e}");
    assert!(e.to_string().contains("'nosuch0' does not exist"), "{e}");

    // No IPv4 address: the raw frame still leaves, the report says why UDP did not.
    let other = Netns::new("wo");
    veth(&l.router, "bare0", &other, "x0");
    let r = l
        .router
        .run(|| Sender::new("bare0", None).send(TARGET, None))
        .expect("raw frame still sent");
    assert!(r.raw.is_ok());
    let u = r.udp.unwrap_err();
    assert!(matches!(u, Error::NoIpv4(_)), "{u}");
    assert!(u.to_string().contains("wol.broadcast"), "{u}");

    // Interface down: neither form can leave; one error names both.
    l.router.ip(&["link", "set", "bare0", "down"]);
    let e = l
        .router
        .run(|| Sender::new("bare0", Some(Ipv4Addr::new(10, 9, 9, 255))).send(TARGET, None))
        .unwrap_err();
    assert!(matches!(e, Error::NotSent { .. }), "{e}");
    let s = e.to_string();
    assert!(s.contains("UDP") && s.contains("raw frame"), "{s}");
}

#[test]
fn scheduler_cooldown_holds_on_the_wire() {
    let l = lan();
    let mut wol = jellydemon::config::Config::default().wol;
    wol.enabled = true;
    wol.mac = Some(TARGET);
    wol.interface = "lan0".into();
    let mut s = Scheduler::from_config(&wol);
    let mut sent = 0;
    // Three simulated minutes of playback, one tick every 5 s: wakes at 0, 60, 120, 180.
    for t in (0..=180).step_by(5) {
        for a in s.step(t, true, usize::from(t % 20 == 0)) {
            assert!(matches!(a, Action::Wake(_)));
            let r = l.router.run(|| Sender::wake(&wol)).expect("send");
            assert!(r.complete());
            sent += 1;
        }
    }
    assert_eq!(sent, 4);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut raw = 0;
    while raw < 4 {
        let f = l.cap.next(deadline).expect("4 raw frames");
        raw += usize::from(is_raw_wol(&f));
    }
    let window = Instant::now() + Duration::from_millis(300);
    while let Some(f) = l.cap.next(window) {
        assert!(!is_raw_wol(&f), "more packets than wakes");
    }
}

#[test]
fn idle_command_runs_once_per_idle_period() {
    let path = std::env::temp_dir().join(format!("jd-idle-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(path.clone());
    let argv: Vec<String> = [
        "sh",
        "-c",
        "echo idle >> \"$1\"",
        "sh",
        path.to_str().expect("utf-8 temp path"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let mut s = Scheduler::new(60, true, true, 1);
    for t in (0..=900).step_by(5) {
        let playing = (200..300).contains(&t);
        let conns = usize::from(t == 450);
        for a in s.step(t, playing, conns) {
            if a == Action::RunIdle {
                let (code, _) = run_idle_command(&argv, Duration::from_secs(10)).expect("run");
                assert_eq!(code, 0);
            }
        }
    }
    // Idle from 0 (fires at 60), after the playback (355), after the connection (510).
    let log = std::fs::read_to_string(&path).expect("idle log");
    assert_eq!(log.lines().count(), 3, "{log}");
}

/// Drops CAP_NET_RAW from the calling thread only (capabilities are per thread on Linux).
fn drop_net_raw() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_RAW: u32 = 13;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and the two data words it expects.
    unsafe {
        let r = nix::libc::syscall(nix::libc::SYS_capget, &mut hdr, data.as_mut_ptr());
        assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
        data[0].effective &= !(1 << CAP_NET_RAW);
        data[0].permitted &= !(1 << CAP_NET_RAW);
        let r = nix::libc::syscall(nix::libc::SYS_capset, &mut hdr, data.as_ptr());
        assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
    }
}

#[test]
fn without_cap_net_raw_the_raw_frame_fails_with_a_permission_error() {
    let l = lan();
    let r = l
        .router
        .run(|| {
            drop_net_raw();
            Sender::new("lan0", None).send(TARGET, None)
        })
        .expect("the UDP copy needs no privilege (Linux 5.7+ binds to a device without it)");
    assert!(r.udp.is_ok());
    let raw = r.raw.unwrap_err();
    assert!(matches!(raw, Error::Permission { .. }), "{raw}");
    assert!(raw.to_string().contains("CAP_NET_RAW"), "{raw}");
}
