//! The media server's IPv6 address, learned from the router's neighbour tables: its MAC from
//! the IPv4 ARP table (`/proc/net/arp`; the daemon talks to the server over IPv4 every tick, so
//! the entry is there), then the global IPv6 addresses the router has seen with that MAC on the
//! LAN device (an rtnetlink neighbour dump; no process). Used when `jellyfin.server_ip6` is not
//! set, and only when exactly one address qualifies: a server with several (temporary privacy
//! addresses beside the stable one) cannot be told apart from here, so the user is asked to set
//! the option.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{recv, send, MsgFlags};

pub type Mac = [u8; 6];

/// The MAC of `ip` in `/proc/net/arp`'s text (`IP address  HW type  Flags  HW address  Mask
/// Device`); incomplete entries (flags 0x0) and all-zero addresses are not answers.
pub fn mac_of(arp: &str, ip: Ipv4Addr) -> Option<Mac> {
    arp.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 4 || f[0].parse::<Ipv4Addr>().ok()? != ip {
            return None;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
        if flags & 0x2 == 0 {
            return None;
        }
        parse_mac(f[3]).filter(|m| m.iter().any(|b| *b != 0))
    })
}

fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// One IPv6 neighbour: address, link-layer address, interface index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: Ipv6Addr,
    pub mac: Mac,
    pub ifindex: u32,
}

const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const AF_INET6: u8 = 10;
/// NUD_INCOMPLETE | NUD_FAILED: no link-layer address worth believing.
const NUD_UNUSABLE: u16 = 0x01 | 0x20;

/// Parses one receive buffer of an `RTM_GETNEIGH` dump into `out`. `Some(())` once the dump's
/// `NLMSG_DONE` is seen, `None` while more is to come; an `NLMSG_ERROR` is an error.
pub fn parse_dump(mut buf: &[u8], out: &mut Vec<Neighbour>) -> io::Result<Option<()>> {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        if len < 16 || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad netlink message",
            ));
        }
        let body = &buf[16..len];
        match kind {
            NLMSG_DONE => return Ok(Some(())),
            NLMSG_ERROR => {
                let code = body
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .unwrap_or(-1);
                return Err(io::Error::from_raw_os_error(-code));
            }
            RTM_NEWNEIGH if body.len() >= 12 && body[0] == AF_INET6 => {
                let ifindex = i32::from_ne_bytes(body[4..8].try_into().expect("4 bytes"));
                let state = u16::from_ne_bytes(body[8..10].try_into().expect("2 bytes"));
                let (mut ip, mut mac) = (None, None);
                for (akind, payload) in crate::conntrack::nl::attrs(&body[12..]) {
                    match (akind, payload.len()) {
                        (NDA_DST, 16) => {
                            let b: [u8; 16] = payload.try_into().expect("16 bytes");
                            ip = Some(Ipv6Addr::from(b));
                        }
                        (NDA_LLADDR, 6) => mac = Some(payload.try_into().expect("6 bytes")),
                        _ => {}
                    }
                }
                if let (Some(ip), Some(mac), true) = (ip, mac, state & NUD_UNUSABLE == 0) {
                    out.push(Neighbour {
                        ip,
                        mac,
                        ifindex: ifindex.max(0) as u32,
                    });
                }
            }
            _ => {}
        }
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    Ok(None)
}

/// The kernel's IPv6 neighbour table (at most `limit` entries kept).
pub fn ipv6_neighbours(limit: usize) -> io::Result<Vec<Neighbour>> {
    let fd = crate::shaper::netlink::route_socket_with_timeout(2)?;
    // nlmsghdr + ndmsg { family = AF_INET6 }
    let mut req = Vec::with_capacity(28);
    req.extend_from_slice(&28u32.to_ne_bytes());
    req.extend_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.push(AF_INET6);
    req.extend_from_slice(&[0u8; 11]);
    send(fd.as_raw_fd(), &req, MsgFlags::empty())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    // A home LAN has a few dozen neighbours; the bound keeps a hostile LAN from costing more.
    for _ in 0..256 {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 || parse_dump(&buf[..n], &mut out)?.is_some() {
            break;
        }
        if out.len() > limit {
            out.truncate(limit);
            break;
        }
    }
    Ok(out)
}

/// What the neighbour table says about the server's IPv6 address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Learned {
    /// Nothing yet (no IPv6 packet between the router and the server so far).
    None,
    One(Ipv6Addr),
    /// Several global addresses: set `jellyfin.server_ip6`.
    Several(Vec<Ipv6Addr>),
}

/// The global unicast addresses (2000::/3) with the server's MAC on the LAN device.
pub fn learn(neighbours: &[Neighbour], mac: Mac, lan_ifindex: u32) -> Learned {
    let mut found: Vec<Ipv6Addr> = neighbours
        .iter()
        .filter(|n| n.mac == mac && n.ifindex == lan_ifindex)
        .map(|n| n.ip)
        .filter(|ip| ip.segments()[0] & 0xe000 == 0x2000)
        .collect();
    found.sort();
    found.dedup();
    match found.len() {
        0 => Learned::None,
        1 => Learned::One(found[0]),
        _ => Learned::Several(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARP: &str =
        "IP address       HW type     Flags       HW address            Mask     Device\n\
        192.168.1.2      0x1         0x2         02:00:00:00:00:02     *        br-lan\n\
        192.168.1.10     0x1         0x0         00:00:00:00:00:00     *        br-lan\n\
        192.168.1.11     0x1         0x2         02:00:00:00:00:0b     *        br-lan\n";

    #[test]
    fn arp_table() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(mac_of(ARP, ip("192.168.1.2")), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(mac_of(ARP, ip("192.168.1.10")), None, "incomplete");
        assert_eq!(mac_of(ARP, ip("192.168.1.99")), None);
        assert_eq!(mac_of("", ip("192.168.1.2")), None);
        assert_eq!(
            mac_of(
                "h\n192.168.1.2 0x1 0x2 zz:00:00:00:00:02 * x",
                ip("192.168.1.2")
            ),
            None
        );
        assert_eq!(parse_mac("02:00:00:00:00:02:03"), None);
    }

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(payload);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn msg(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(body);
        m
    }

    fn neigh(ip: &str, mac: Mac, ifindex: i32, state: u16) -> Vec<u8> {
        let mut b = vec![AF_INET6, 0, 0, 0];
        b.extend_from_slice(&ifindex.to_ne_bytes());
        b.extend_from_slice(&state.to_ne_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend(attr(NDA_DST, &ip.parse::<Ipv6Addr>().unwrap().octets()));
        b.extend(attr(NDA_LLADDR, &mac));
        b.extend(attr(9, &[1, 2, 3, 4, 5, 6, 7, 8]));
        msg(RTM_NEWNEIGH, &b)
    }

    const SERVER: Mac = [2, 0, 0, 0, 0, 2];
    const OTHER: Mac = [2, 0, 0, 0, 0, 0x10];

    #[test]
    fn dump_and_learning() {
        let mut buf = Vec::new();
        buf.extend(neigh("2001:db8:2::2", SERVER, 5, 0x02));
        buf.extend(neigh("fe80::2", SERVER, 5, 0x04));
        buf.extend(neigh("2001:db8:2::10", OTHER, 5, 0x02));
        buf.extend(neigh("2001:db8:2::99", SERVER, 5, 0x20));
        buf.extend(neigh("2001:db8:1::2", SERVER, 7, 0x02));
        let mut out = Vec::new();
        assert_eq!(parse_dump(&buf, &mut out).unwrap(), None);
        assert_eq!(out.len(), 4, "the failed entry is dropped: {out:?}");
        assert_eq!(
            parse_dump(&msg(NLMSG_DONE, &[0; 4]), &mut out).unwrap(),
            Some(())
        );
        // Only the global address with the server's MAC on the LAN device.
        assert_eq!(
            learn(&out, SERVER, 5),
            Learned::One("2001:db8:2::2".parse().unwrap())
        );
        assert_eq!(learn(&out, SERVER, 9), Learned::None);
        let mut more = out.clone();
        more.push(Neighbour {
            ip: "2001:db8:2:0:a:b:c:d".parse().unwrap(),
            mac: SERVER,
            ifindex: 5,
        });
        assert!(matches!(learn(&more, SERVER, 5), Learned::Several(v) if v.len() == 2));
    }

    #[test]
    fn bad_dumps() {
        let mut out = Vec::new();
        let err = msg(NLMSG_ERROR, &(-1i32).to_ne_bytes());
        assert!(parse_dump(&err, &mut out).is_err());
        let mut short = neigh("2001:db8:2::2", SERVER, 5, 2);
        short[0] = 200;
        assert!(parse_dump(&short, &mut out).is_err());
        // Truncated attributes and odd lengths are skipped, never a panic.
        let mut b = vec![AF_INET6, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0];
        b.extend_from_slice(&[200, 0, 1, 0, 1, 2]);
        assert_eq!(parse_dump(&msg(RTM_NEWNEIGH, &b), &mut out).unwrap(), None);
        assert!(out.is_empty());
        assert_eq!(parse_dump(&[1, 2, 3], &mut out).unwrap(), None);
    }
}
