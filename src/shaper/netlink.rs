//! The ifb device over rtnetlink: create, bring up, delete.
//!
//! Done here rather than with `ip link` so the package needs no `ip` binary (OpenWrt images do
//! not always ship one); everything else goes through `tc`.

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFF_UP: u32 = 0x1;

/// Whether a network device of that name exists in this network namespace.
pub fn link_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// Creates an ifb device, already up. `AlreadyExists` when the name is taken.
pub fn create_ifb(name: &str) -> io::Result<()> {
    let mut attrs = Vec::new();
    push_attr(&mut attrs, IFLA_IFNAME, &cstr(name));
    let mut info = Vec::new();
    push_attr(&mut info, IFLA_INFO_KIND, b"ifb\0");
    push_attr(&mut attrs, IFLA_LINKINFO, &info);
    request(
        RTM_NEWLINK,
        NLM_F_CREATE | NLM_F_EXCL,
        IFF_UP,
        IFF_UP,
        &attrs,
    )
}

/// Sets the device administratively up (a no-op when it already is).
pub fn set_up(name: &str) -> io::Result<()> {
    let mut attrs = Vec::new();
    push_attr(&mut attrs, IFLA_IFNAME, &cstr(name));
    request(RTM_NEWLINK, 0, IFF_UP, IFF_UP, &attrs)
}

/// Deletes the device; a device that is already gone is success.
pub fn delete_link(name: &str) -> io::Result<()> {
    let mut attrs = Vec::new();
    push_attr(&mut attrs, IFLA_IFNAME, &cstr(name));
    match request(RTM_DELLINK, 0, 0, 0, &attrs) {
        Err(e) if e.raw_os_error() == Some(libc_enodev()) => Ok(()),
        other => other,
    }
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// Sends one link request and waits (bounded) for the kernel's acknowledgement.
fn request(
    msg_type: u16,
    extra_flags: u16,
    ifi_flags: u32,
    ifi_change: u32,
    attrs: &[u8],
) -> io::Result<()> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(5, 0))?;
    let seq: u32 = 1;
    let mut msg = Vec::with_capacity(32 + attrs.len());
    let total = 16 + 16 + attrs.len();
    msg.extend_from_slice(&(total as u32).to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | extra_flags).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // struct ifinfomsg: family, pad, type, index, flags, change
    msg.extend_from_slice(&[0u8, 0u8]);
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&0i32.to_ne_bytes());
    msg.extend_from_slice(&ifi_flags.to_ne_bytes());
    msg.extend_from_slice(&ifi_change.to_ne_bytes());
    msg.extend_from_slice(attrs);
    send(fd.as_raw_fd(), &msg, MsgFlags::empty())?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| {
            if e == nix::errno::Errno::EAGAIN {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from the kernel (rtnetlink)",
                )
            } else {
                io::Error::from(e)
            }
        })?;
        if let Some(result) = find_ack(&buf[..n], seq) {
            return result;
        }
    }
}

/// Looks for the NLMSG_ERROR answer to `seq` in one datagram.
pub(crate) fn find_ack(mut data: &[u8], seq: u32) -> Option<io::Result<()>> {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let mseq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        if len < 16 || len > data.len() {
            return None;
        }
        if kind == NLMSG_ERROR && mseq == seq && len >= 20 {
            let code = i32::from_ne_bytes([data[16], data[17], data[18], data[19]]);
            return Some(if code == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(code.saturating_neg()))
            });
        }
        let aligned = (len + 3) & !3;
        data = data.get(aligned..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_are_padded_to_four_bytes() {
        let mut b = Vec::new();
        push_attr(&mut b, IFLA_IFNAME, b"ab\0");
        assert_eq!(b.len(), 8);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 7);
    }

    #[test]
    fn ack_is_found_and_errors_are_decoded() {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&7u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-95i32).to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]);
        let r = find_ack(&m, 7).expect("ack present");
        assert_eq!(r.unwrap_err().raw_os_error(), Some(95));
        assert!(find_ack(&m, 8).is_none());
        assert!(find_ack(&m[..10], 7).is_none());
    }
}
