//! An AF_PACKET raw socket on one interface that only ever sees ARP and IPv6 neighbour
//! solicitations/advertisements, thanks to a classic BPF filter attached before binding.
//! Not promiscuous: it sees broadcast, frames for the interface's MAC and the multicast groups
//! joined with [`RawSocket::join_multicast`]. Needs CAP_NET_RAW only.
//!
//! The socket belongs to the network namespace of the thread that opens it.
//!
//! Sockets, the filter and IPv6 group membership go through `socket2`; what it does not cover
//! (the packet socket's link-layer address, its multicast membership, the packet type of a
//! received frame) is a few lines of commented `unsafe`.

use std::io;
use std::mem;
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;

use socket2::{Domain, SockAddr, SockAddrStorage, SockFilter, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::packet::{ETHERTYPE_ARP, ETHERTYPE_IPV6, ICMPV6_NEIGHBOR_ADVERT, MacAddr};
use super::packet::{ICMPV6_NEIGHBOR_SOLICIT, IPPROTO_ICMPV6};

/// `sll_pkttype` of a frame this host sent (AF_PACKET sockets see those too).
pub const PACKET_OUTGOING: u8 = libc::PACKET_OUTGOING;

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_B_ABS: u16 = 0x30;
const BPF_LD_H_ABS: u16 = 0x28;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
/// Ancillary load of the packet type (SKF_AD_OFF + SKF_AD_PKTTYPE).
const SKF_AD_PKTTYPE: u32 = 0xffff_f000 + 4;
/// Ancillary load: 1 when the frame carried a VLAN tag, which the kernel stripped before
/// packet sockets see it (SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT).
const SKF_AD_VLAN_TAG_PRESENT: u32 = 0xffff_f000 + 48;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter: drop our own outgoing frames; drop frames that carried a VLAN tag (on a
/// trunk, the parent interface's socket also sees its VLANs' frames, tag stripped: they belong
/// to other LANs, and answering them untagged would answer on the wrong one); accept ethertype
/// ARP; accept IPv6 whose next header is ICMPv6 with type 135 or 136; drop everything else.
/// Offsets are those of an untagged Ethernet frame (a tag still in the frame leaves 0x8100 at
/// offset 12, which is dropped).
pub fn filter_program() -> Vec<libc::sock_filter> {
    const ACCEPT: u32 = 0x0004_0000;
    vec![
        /* 0 */ stmt(BPF_LD_B_ABS, SKF_AD_PKTTYPE),
        /* 1 */ jump(BPF_JEQ_K, u32::from(PACKET_OUTGOING), 10, 0), // -> 12 drop
        /* 2 */ stmt(BPF_LD_B_ABS, SKF_AD_VLAN_TAG_PRESENT),
        /* 3 */ jump(BPF_JEQ_K, 0, 0, 8), // tagged -> 12 drop
        /* 4 */ stmt(BPF_LD_H_ABS, 12),
        /* 5 */ jump(BPF_JEQ_K, u32::from(ETHERTYPE_ARP), 5, 0), // -> 11 accept
        /* 6 */ jump(BPF_JEQ_K, u32::from(ETHERTYPE_IPV6), 0, 5), // -> 12 drop
        /* 7 */ stmt(BPF_LD_B_ABS, 14 + 6),
        /* 8 */ jump(BPF_JEQ_K, u32::from(IPPROTO_ICMPV6), 0, 3), // -> 12 drop
        /* 9 */ stmt(BPF_LD_B_ABS, 14 + 40),
        /* 10 */
        jump(BPF_JEQ_K, u32::from(ICMPV6_NEIGHBOR_SOLICIT), 0, 2), // -> 11 / 13
        /* 11 */ stmt(BPF_RET_K, ACCEPT),
        /* 12 */ stmt(BPF_RET_K, 0),
        /* 13 */ jump(BPF_JEQ_K, u32::from(ICMPV6_NEIGHBOR_ADVERT), 0, 1), // -> 14 / 15
        /* 14 */ stmt(BPF_RET_K, ACCEPT),
        /* 15 */ stmt(BPF_RET_K, 0),
    ]
}

/// `setsockopt(2)` for the options socket2 does not cover (packet-socket multicast
/// membership).
fn setsockopt<T>(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a valid, initialised T for the duration of the call and its size is
    // passed along; the descriptor is open for as long as `socket` lives.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A received frame's length and its `sll_pkttype` (PACKET_HOST, PACKET_BROADCAST, ...).
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub pkttype: u8,
}

/// The filtered raw socket of one interface.
#[derive(Debug)]
pub struct RawSocket {
    fd: AsyncFd<Socket>,
    ifindex: u32,
}

/// The link-layer address a packet socket binds to: every protocol, on `ifindex`.
fn link_address(ifindex: u32) -> SockAddr {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: the storage is large enough for a sockaddr_ll and zero is a valid value of it.
    let sll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    let len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: the storage holds an initialised sockaddr_ll of `len` bytes.
    unsafe { SockAddr::new(storage, len) }
}

impl RawSocket {
    /// Opens the socket on interface `ifindex` (of the calling thread's network namespace).
    /// Must be called within a tokio runtime.
    pub fn open(ifindex: u32) -> io::Result<RawSocket> {
        // Protocol 0: receives nothing until bound, so no unfiltered frame is queued before
        // the filter is in place.
        let socket = Socket::new(Domain::PACKET, Type::RAW.nonblocking().cloexec(), None)?;
        let program: Vec<SockFilter> = filter_program()
            .iter()
            .map(|i| SockFilter::new(i.code, i.jt, i.jf, i.k))
            .collect();
        socket.attach_filter(&program)?;
        socket.bind(&link_address(ifindex))?;
        // SAFETY: the AsyncFd owns the socket, which stays open and unchanged until dropped.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)?;
        Ok(RawSocket { fd, ifindex })
    }

    /// The interface the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    fn membership(&self, mac: MacAddr, add: bool) -> io::Result<()> {
        let mut mreq = libc::packet_mreq {
            mr_ifindex: self.ifindex as i32,
            mr_type: libc::PACKET_MR_MULTICAST as u16,
            mr_alen: 6,
            mr_address: [0; 8],
        };
        mreq.mr_address[..6].copy_from_slice(&mac.0);
        let opt = if add {
            libc::PACKET_ADD_MEMBERSHIP
        } else {
            libc::PACKET_DROP_MEMBERSHIP
        };
        setsockopt(self.fd.get_ref(), libc::SOL_PACKET, opt, &mreq)
    }

    /// Lets multicast frames to `mac` reach the interface (and this socket). The kernel
    /// counts joins per socket, so every join needs its own [`RawSocket::leave_multicast`].
    /// Memberships end with the socket.
    pub fn join_multicast(&self, mac: MacAddr) -> io::Result<()> {
        self.membership(mac, true)
    }

    /// Undoes one [`RawSocket::join_multicast`].
    pub fn leave_multicast(&self, mac: MacAddr) -> io::Result<()> {
        self.membership(mac, false)
    }

    /// Sends one complete Ethernet frame now. Never waits: a full queue is an error
    /// (the frame would be stale by the time it could go out; ARP and NDP retry).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let n = self.fd.get_ref().send(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short send"));
        }
        Ok(())
    }

    fn try_recv(socket: &Socket, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: initialised bytes viewed as possibly-uninitialised ones; recvfrom(2) only
        // writes initialised bytes into them, so `buf` stays initialised.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [mem::MaybeUninit<u8>]) };
        let (len, from) = socket.recv_from(uninit)?;
        let mut storage = from.as_storage();
        // SAFETY: a packet socket's source address is a sockaddr_ll, which the storage holds.
        let pkttype = unsafe { storage.view_as::<libc::sockaddr_ll>() }.sll_pkttype;
        Ok(Received { len, pkttype })
    }

    /// Waits for the next frame (the filter has already dropped everything but ARP/NDP and
    /// our own outgoing frames).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| Self::try_recv(fd.get_ref(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// IPv6 multicast group memberships taken through an ordinary UDP socket, so the kernel sends
/// MLD reports for them: switches that do MLD snooping then forward neighbour solicitations
/// for the solicited-node groups of addresses answered in ARP mode. Complements
/// [`RawSocket::join_multicast`], which only programs the interface's receive filter.
#[derive(Debug)]
pub struct MldGroups {
    socket: Socket,
}

impl MldGroups {
    /// Opens the (unbound, never used for traffic) UDP socket.
    pub fn open() -> io::Result<MldGroups> {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM.nonblocking().cloexec(), None)?;
        Ok(MldGroups { socket })
    }

    /// Joins `group` on `ifindex`. Joining a group twice on one socket is an error
    /// (EADDRINUSE): callers count.
    pub fn join(&self, group: Ipv6Addr, ifindex: u32) -> io::Result<()> {
        self.socket.join_multicast_v6(&group, ifindex)
    }

    /// Leaves `group` on `ifindex`.
    pub fn leave(&self, group: Ipv6Addr, ifindex: u32) -> io::Result<()> {
        self.socket.leave_multicast_v6(&group, ifindex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic BPF program the way the kernel does for the subset of instructions
    /// it uses, so the jump offsets are checked without a socket.
    /// `vlan`: the frame carried a VLAN tag (stripped; only the metadata says so).
    fn run(program: &[libc::sock_filter], frame: &[u8], pkttype: u8, vlan: bool) -> u32 {
        let mut pc = 0usize;
        let mut acc: u32 = 0;
        loop {
            let ins = program[pc];
            match ins.code {
                BPF_LD_B_ABS if ins.k == SKF_AD_PKTTYPE => acc = u32::from(pkttype),
                BPF_LD_B_ABS if ins.k == SKF_AD_VLAN_TAG_PRESENT => acc = u32::from(vlan),
                BPF_LD_B_ABS => match frame.get(ins.k as usize) {
                    Some(b) => acc = u32::from(*b),
                    None => return 0,
                },
                BPF_LD_H_ABS => match frame.get(ins.k as usize..ins.k as usize + 2) {
                    Some(b) => acc = u32::from(u16::from_be_bytes([b[0], b[1]])),
                    None => return 0,
                },
                BPF_JEQ_K => {
                    pc += usize::from(if acc == ins.k { ins.jt } else { ins.jf });
                }
                BPF_RET_K => return ins.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn filter_accepts_only_arp_and_neighbour_discovery() {
        use crate::agent::net::packet::*;
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let ip6: Ipv6Addr = "2001:db8:1::50".parse().unwrap();
        let mut echo = unsolicited_advert(mac, ip6);
        echo[14 + 40] = 128;
        let mut udp = unsolicited_advert(mac, ip6);
        udp[14 + 6] = 17;
        let mut ipv4 = gratuitous_arp(mac, "192.0.2.1".parse().unwrap());
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        // A tag still in the frame (not stripped, or the inner tag of QinQ).
        let plain = gratuitous_arp(mac, "192.0.2.1".parse().unwrap());
        let mut in_frame_tag = plain[..12].to_vec();
        in_frame_tag.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        in_frame_tag.extend_from_slice(&plain[12..]);
        let host = libc::PACKET_HOST;
        let cases: Vec<(&str, Vec<u8>, u8, bool)> = vec![
            (
                "garp",
                gratuitous_arp(mac, "192.0.2.1".parse().unwrap()),
                1,
                true,
            ),
            ("ns", neighbor_solicit(mac, ip6, ip6), 2, true),
            ("na", unsolicited_advert(mac, ip6), 2, true),
            (
                "own outgoing arp",
                gratuitous_arp(mac, "192.0.2.1".parse().unwrap()),
                PACKET_OUTGOING,
                false,
            ),
            ("echo request", echo, host, false),
            ("udp", udp, host, false),
            ("ipv4", ipv4, host, false),
            ("runt", vec![0; 10], host, false),
            ("tag in the frame", in_frame_tag, host, false),
        ];
        let program = filter_program();
        for (name, frame, pkttype, accept) in cases {
            assert_eq!(run(&program, &frame, pkttype, false) != 0, accept, "{name}");
            // The same frame from a VLAN (tag stripped by the kernel) is never accepted.
            assert_eq!(
                run(&program, &frame, pkttype, true),
                0,
                "{name} from a VLAN"
            );
        }
    }
}
