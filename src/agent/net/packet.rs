//! Byte-level Ethernet frames the announcer sends and reads: ARP (RFC 826, gratuitous
//! announcements as in RFC 5227) and IPv6 neighbour discovery (RFC 4861 neighbour solicitation
//! and advertisement with link-layer address options).
//!
//! Pure: no I/O. Parsing never panics; a frame that is truncated, of another protocol or
//! malformed is a [`ParseError`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Ethertype of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IPv6 next header value of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 type of a neighbour solicitation.
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 type of a neighbour advertisement.
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

const ETH_HEADER_LEN: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HEADER_LEN: usize = 40;
/// ICMPv6 header (4) + reserved/flags (4) + target (16).
const ND_BODY_LEN: usize = 24;
/// One link-layer address option for Ethernet: type, length (in units of 8 bytes), MAC.
const LLADDR_OPT_LEN: usize = 8;
const OPT_SOURCE_LLADDR: u8 = 1;
const OPT_TARGET_LLADDR: u8 = 2;
/// Ethernet frames shorter than this (without FCS) are padded on the wire.
const MIN_FRAME_LEN: usize = 60;

const NA_FLAG_ROUTER: u32 = 0x8000_0000;
const NA_FLAG_SOLICITED: u32 = 0x4000_0000;
const NA_FLAG_OVERRIDE: u32 = 0x2000_0000;

/// An Ethernet (EUI-48) address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// True for group (multicast and broadcast) addresses.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(ParseError::BadMac)?;
            if part.is_empty() || part.len() > 2 {
                return Err(ParseError::BadMac);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseError::BadMac)?;
        }
        if parts.next().is_some() {
            return Err(ParseError::BadMac);
        }
        Ok(MacAddr(out))
    }
}

/// Why a frame was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame truncated")]
    Truncated,
    #[error("ethertype {0:#06x} is neither ARP nor IPv6")]
    OtherEthertype(u16),
    #[error("ARP for another hardware or protocol type")]
    UnsupportedArp,
    #[error("ARP operation {0} is neither request nor reply")]
    ArpOperation(u16),
    #[error("not IPv6 version 6")]
    BadIpVersion,
    #[error("IPv6 next header {0} is not ICMPv6")]
    NotIcmpv6(u8),
    #[error("ICMPv6 type {0} is not neighbour solicitation or advertisement")]
    OtherIcmpv6(u8),
    #[error("neighbour discovery with hop limit {0} (must be 255)")]
    HopLimit(u8),
    #[error("neighbour discovery with code {0} (must be 0)")]
    IcmpCode(u8),
    #[error("ICMPv6 checksum mismatch")]
    Checksum,
    #[error("malformed neighbour discovery option")]
    BadOption,
    #[error("malformed MAC address")]
    BadMac,
}

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
}

impl ArpOp {
    fn code(self) -> u16 {
        match self {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
        }
    }
}

/// An ARP packet for Ethernet and IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: ArpOp,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl Arp {
    /// A gratuitous ARP (an "ARP announcement" of RFC 5227): a request whose sender and
    /// target are both the announced address. Receivers with an entry for it update the MAC.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip && !self.sender_ip.is_unspecified()
    }
}

/// A neighbour solicitation or advertisement with its IPv6 header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ndp {
    pub src_ip: Ipv6Addr,
    pub dst_ip: Ipv6Addr,
    pub kind: NdpKind,
    pub target: Ipv6Addr,
    /// Source link-layer address option (solicitations) or target link-layer address option
    /// (advertisements), when present.
    pub lladdr: Option<MacAddr>,
}

/// Solicitation or advertisement (with its flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdpKind {
    Solicitation,
    Advertisement {
        router: bool,
        solicited: bool,
        override_: bool,
    },
}

/// A parsed frame of interest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub eth_dst: MacAddr,
    pub eth_src: MacAddr,
    pub payload: Payload,
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Arp(Arp),
    Ndp(Ndp),
}

fn eth_header(out: &mut Vec<u8>, dst: MacAddr, src: MacAddr, ethertype: u16) {
    out.extend_from_slice(&dst.0);
    out.extend_from_slice(&src.0);
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn pad(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.len() < MIN_FRAME_LEN {
        frame.resize(MIN_FRAME_LEN, 0);
    }
    frame
}

/// Builds an Ethernet frame carrying `arp`.
pub fn build_arp(eth_dst: MacAddr, eth_src: MacAddr, arp: &Arp) -> Vec<u8> {
    let mut out = Vec::with_capacity(MIN_FRAME_LEN);
    eth_header(&mut out, eth_dst, eth_src, ETHERTYPE_ARP);
    out.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    out.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    out.push(6);
    out.push(4);
    out.extend_from_slice(&arp.op.code().to_be_bytes());
    out.extend_from_slice(&arp.sender_mac.0);
    out.extend_from_slice(&arp.sender_ip.octets());
    out.extend_from_slice(&arp.target_mac.0);
    out.extend_from_slice(&arp.target_ip.octets());
    pad(out)
}

/// The reply of `our_mac` to an ARP `request` for an address we announce.
pub fn arp_reply(our_mac: MacAddr, request: &Arp) -> Vec<u8> {
    let reply = Arp {
        op: ArpOp::Reply,
        sender_mac: our_mac,
        sender_ip: request.target_ip,
        target_mac: request.sender_mac,
        target_ip: request.sender_ip,
    };
    build_arp(request.sender_mac, our_mac, &reply)
}

/// A gratuitous ARP announcing that `ip` is at `mac`: broadcast request with sender and
/// target address both `ip` (RFC 5227 announcement).
pub fn gratuitous_arp(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    let arp = Arp {
        op: ArpOp::Request,
        sender_mac: mac,
        sender_ip: ip,
        target_mac: MacAddr::ZERO,
        target_ip: ip,
    };
    build_arp(MacAddr::BROADCAST, mac, &arp)
}

/// An ARP request from `sender` asking who has `target` (used by tests and probes).
pub fn arp_request(sender_mac: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let arp = Arp {
        op: ArpOp::Request,
        sender_mac,
        sender_ip,
        target_mac: MacAddr::ZERO,
        target_ip,
    };
    build_arp(MacAddr::BROADCAST, sender_mac, &arp)
}

/// The solicited-node multicast address of `ip`: ff02::1:ffXX:XXXX with its low 24 bits.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address an IPv6 multicast address maps to: 33:33 and its low 32 bits.
pub fn ipv6_multicast_mac(group: Ipv6Addr) -> MacAddr {
    let o = group.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The Ethernet address of the solicited-node multicast group of `ip`.
pub fn solicited_node_mac(ip: Ipv6Addr) -> MacAddr {
    ipv6_multicast_mac(solicited_node(ip))
}

/// ff02::1, all nodes on the link.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The ICMPv6 checksum (RFC 8200 section 8.1 pseudo-header) of `icmp` with its checksum
/// field taken as it is (zero it first to compute, keep it to verify: then the result is 0).
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(u16::from_be_bytes([*last, 0]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    // Upper-layer length fits in 32 bits; next header in the last byte of 4.
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, IPPROTO_ICMPV6]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds Ethernet + IPv6 (hop limit 255) + ICMPv6 neighbour discovery with one link-layer
/// address option (source for solicitations, target for advertisements) and its checksum.
pub fn build_ndp(eth_dst: MacAddr, eth_src: MacAddr, ndp: &Ndp) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(ND_BODY_LEN + LLADDR_OPT_LEN);
    let (icmp_type, flags, opt_type) = match ndp.kind {
        NdpKind::Solicitation => (ICMPV6_NEIGHBOR_SOLICIT, 0u32, OPT_SOURCE_LLADDR),
        NdpKind::Advertisement {
            router,
            solicited,
            override_,
        } => {
            let mut f = 0;
            if router {
                f |= NA_FLAG_ROUTER;
            }
            if solicited {
                f |= NA_FLAG_SOLICITED;
            }
            if override_ {
                f |= NA_FLAG_OVERRIDE;
            }
            (ICMPV6_NEIGHBOR_ADVERT, f, OPT_TARGET_LLADDR)
        }
    };
    icmp.push(icmp_type);
    icmp.push(0); // code
    icmp.extend_from_slice(&[0, 0]); // checksum, filled below
    icmp.extend_from_slice(&flags.to_be_bytes());
    icmp.extend_from_slice(&ndp.target.octets());
    if let Some(mac) = ndp.lladdr {
        icmp.push(opt_type);
        icmp.push(1);
        icmp.extend_from_slice(&mac.0);
    }
    let sum = icmpv6_checksum(ndp.src_ip, ndp.dst_ip, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut out = Vec::with_capacity(ETH_HEADER_LEN + IPV6_HEADER_LEN + icmp.len());
    eth_header(&mut out, eth_dst, eth_src, ETHERTYPE_IPV6);
    out.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    out.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    out.push(IPPROTO_ICMPV6);
    out.push(255); // hop limit: receivers drop ND with anything else
    out.extend_from_slice(&ndp.src_ip.octets());
    out.extend_from_slice(&ndp.dst_ip.octets());
    out.extend_from_slice(&icmp);
    pad(out)
}

/// The solicited advertisement answering `solicitation` for an address we announce at
/// `our_mac`. Sent to the solicitation's source, or to all nodes (not solicited) when the
/// source is unspecified (duplicate address detection), as RFC 4861 7.2.4 says.
pub fn neighbor_advert_reply(our_mac: MacAddr, solicitation: &Ndp, requester: MacAddr) -> Vec<u8> {
    let (dst_ip, dst_mac, solicited) = if solicitation.src_ip.is_unspecified() {
        (ALL_NODES, ipv6_multicast_mac(ALL_NODES), false)
    } else {
        (
            solicitation.src_ip,
            solicitation.lladdr.unwrap_or(requester),
            true,
        )
    };
    let na = Ndp {
        src_ip: solicitation.target,
        dst_ip,
        kind: NdpKind::Advertisement {
            router: false,
            solicited,
            override_: true,
        },
        target: solicitation.target,
        lladdr: Some(our_mac),
    };
    build_ndp(dst_mac, our_mac, &na)
}

/// An unsolicited neighbour advertisement with the override flag to all nodes: the IPv6
/// counterpart of a gratuitous ARP.
pub fn unsolicited_advert(mac: MacAddr, ip: Ipv6Addr) -> Vec<u8> {
    let na = Ndp {
        src_ip: ip,
        dst_ip: ALL_NODES,
        kind: NdpKind::Advertisement {
            router: false,
            solicited: false,
            override_: true,
        },
        target: ip,
        lladdr: Some(mac),
    };
    build_ndp(ipv6_multicast_mac(ALL_NODES), mac, &na)
}

/// A neighbour solicitation from `src_ip`/`mac` for `target`, sent to its solicited-node group.
pub fn neighbor_solicit(mac: MacAddr, src_ip: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node(target);
    let ns = Ndp {
        src_ip,
        dst_ip: group,
        kind: NdpKind::Solicitation,
        target,
        lladdr: if src_ip.is_unspecified() {
            None
        } else {
            Some(mac)
        },
    };
    build_ndp(ipv6_multicast_mac(group), mac, &ns)
}

fn mac_at(b: &[u8], at: usize) -> Result<MacAddr, ParseError> {
    let s = b.get(at..at + 6).ok_or(ParseError::Truncated)?;
    let mut m = [0u8; 6];
    m.copy_from_slice(s);
    Ok(MacAddr(m))
}

fn u16_at(b: &[u8], at: usize) -> Result<u16, ParseError> {
    let s = b.get(at..at + 2).ok_or(ParseError::Truncated)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

fn ipv4_at(b: &[u8], at: usize) -> Result<Ipv4Addr, ParseError> {
    let s = b.get(at..at + 4).ok_or(ParseError::Truncated)?;
    Ok(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

fn ipv6_at(b: &[u8], at: usize) -> Result<Ipv6Addr, ParseError> {
    let s = b.get(at..at + 16).ok_or(ParseError::Truncated)?;
    let mut o = [0u8; 16];
    o.copy_from_slice(s);
    Ok(Ipv6Addr::from(o))
}

/// Parses an Ethernet frame carrying ARP or an ICMPv6 neighbour solicitation/advertisement.
pub fn parse(frame: &[u8]) -> Result<Frame, ParseError> {
    let eth_dst = mac_at(frame, 0)?;
    let eth_src = mac_at(frame, 6)?;
    let ethertype = u16_at(frame, 12)?;
    let body = &frame[ETH_HEADER_LEN..];
    let payload = match ethertype {
        ETHERTYPE_ARP => Payload::Arp(parse_arp(body)?),
        ETHERTYPE_IPV6 => Payload::Ndp(parse_ndp(body)?),
        other => return Err(ParseError::OtherEthertype(other)),
    };
    Ok(Frame {
        eth_dst,
        eth_src,
        payload,
    })
}

fn parse_arp(b: &[u8]) -> Result<Arp, ParseError> {
    if b.len() < ARP_LEN {
        return Err(ParseError::Truncated);
    }
    if u16_at(b, 0)? != 1 || u16_at(b, 2)? != 0x0800 || b[4] != 6 || b[5] != 4 {
        return Err(ParseError::UnsupportedArp);
    }
    let op = match u16_at(b, 6)? {
        1 => ArpOp::Request,
        2 => ArpOp::Reply,
        other => return Err(ParseError::ArpOperation(other)),
    };
    Ok(Arp {
        op,
        sender_mac: mac_at(b, 8)?,
        sender_ip: ipv4_at(b, 14)?,
        target_mac: mac_at(b, 18)?,
        target_ip: ipv4_at(b, 24)?,
    })
}

fn parse_ndp(b: &[u8]) -> Result<Ndp, ParseError> {
    if b.len() < IPV6_HEADER_LEN {
        return Err(ParseError::Truncated);
    }
    if b[0] >> 4 != 6 {
        return Err(ParseError::BadIpVersion);
    }
    let payload_len = usize::from(u16_at(b, 4)?);
    if b[6] != IPPROTO_ICMPV6 {
        return Err(ParseError::NotIcmpv6(b[6]));
    }
    let hop_limit = b[7];
    let src_ip = ipv6_at(b, 8)?;
    let dst_ip = ipv6_at(b, 24)?;
    // Trailing bytes past the payload length are Ethernet padding.
    let icmp = b
        .get(IPV6_HEADER_LEN..IPV6_HEADER_LEN + payload_len)
        .ok_or(ParseError::Truncated)?;
    let Some(&icmp_type) = icmp.first() else {
        return Err(ParseError::Truncated);
    };
    if icmp_type != ICMPV6_NEIGHBOR_SOLICIT && icmp_type != ICMPV6_NEIGHBOR_ADVERT {
        return Err(ParseError::OtherIcmpv6(icmp_type));
    }
    if icmp.len() < ND_BODY_LEN {
        return Err(ParseError::Truncated);
    }
    if hop_limit != 255 {
        return Err(ParseError::HopLimit(hop_limit));
    }
    if icmp[1] != 0 {
        return Err(ParseError::IcmpCode(icmp[1]));
    }
    if icmpv6_checksum(src_ip, dst_ip, icmp) != 0 {
        return Err(ParseError::Checksum);
    }
    let flags = u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]);
    let target = ipv6_at(icmp, 8)?;
    let (kind, wanted_opt) = if icmp_type == ICMPV6_NEIGHBOR_SOLICIT {
        (NdpKind::Solicitation, OPT_SOURCE_LLADDR)
    } else {
        (
            NdpKind::Advertisement {
                router: flags & NA_FLAG_ROUTER != 0,
                solicited: flags & NA_FLAG_SOLICITED != 0,
                override_: flags & NA_FLAG_OVERRIDE != 0,
            },
            OPT_TARGET_LLADDR,
        )
    };
    let mut lladdr = None;
    let mut opts = &icmp[ND_BODY_LEN..];
    while !opts.is_empty() {
        if opts.len() < 2 {
            return Err(ParseError::BadOption);
        }
        let len = usize::from(opts[1]) * 8;
        if len == 0 || len > opts.len() {
            return Err(ParseError::BadOption);
        }
        if opts[0] == wanted_opt && len >= LLADDR_OPT_LEN {
            lladdr = Some(mac_at(opts, 2)?);
        }
        opts = &opts[len..];
    }
    Ok(Ndp {
        src_ip,
        dst_ip,
        kind,
        target,
        lladdr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
    const MAC_B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x64]);

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn arp_frames_round_trip() {
        let cases: Vec<(&str, Vec<u8>, MacAddr, MacAddr, Arp)> = vec![
            (
                "gratuitous",
                gratuitous_arp(MAC_A, v4("192.0.2.50")),
                MacAddr::BROADCAST,
                MAC_A,
                Arp {
                    op: ArpOp::Request,
                    sender_mac: MAC_A,
                    sender_ip: v4("192.0.2.50"),
                    target_mac: MacAddr::ZERO,
                    target_ip: v4("192.0.2.50"),
                },
            ),
            (
                "request",
                arp_request(MAC_B, v4("192.0.2.100"), v4("192.0.2.50")),
                MacAddr::BROADCAST,
                MAC_B,
                Arp {
                    op: ArpOp::Request,
                    sender_mac: MAC_B,
                    sender_ip: v4("192.0.2.100"),
                    target_mac: MacAddr::ZERO,
                    target_ip: v4("192.0.2.50"),
                },
            ),
        ];
        for (name, frame, dst, src, arp) in cases {
            assert_eq!(frame.len(), 60, "{name}: padded to the Ethernet minimum");
            let parsed = parse(&frame).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed.eth_dst, dst, "{name}");
            assert_eq!(parsed.eth_src, src, "{name}");
            assert_eq!(parsed.payload, Payload::Arp(arp), "{name}");
        }
    }

    #[test]
    fn arp_reply_answers_the_requester() {
        let request = arp_request(MAC_B, v4("192.0.2.100"), v4("192.0.2.50"));
        let Payload::Arp(req) = parse(&request).unwrap().payload else {
            panic!("not ARP")
        };
        assert!(!req.is_gratuitous());
        let reply = parse(&arp_reply(MAC_A, &req)).unwrap();
        assert_eq!(reply.eth_dst, MAC_B);
        assert_eq!(reply.eth_src, MAC_A);
        assert_eq!(
            reply.payload,
            Payload::Arp(Arp {
                op: ArpOp::Reply,
                sender_mac: MAC_A,
                sender_ip: v4("192.0.2.50"),
                target_mac: MAC_B,
                target_ip: v4("192.0.2.100"),
            })
        );
        let Payload::Arp(g) = parse(&gratuitous_arp(MAC_A, v4("192.0.2.9")))
            .unwrap()
            .payload
        else {
            panic!("not ARP")
        };
        assert!(g.is_gratuitous());
    }

    #[test]
    fn arp_wire_layout_matches_rfc826() {
        let f = gratuitous_arp(MAC_A, v4("192.0.2.50"));
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 0x08, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &MAC_A.0);
        assert_eq!(&f[28..32], &[192, 0, 2, 50]);
        assert_eq!(&f[38..42], &[192, 0, 2, 50]);
    }

    #[test]
    fn solicited_node_helpers() {
        let cases = [
            (
                "2001:db8:1::50",
                "ff02::1:ff00:50",
                [0x33, 0x33, 0xff, 0, 0, 0x50],
            ),
            (
                "2001:db8::abcd:ef12:3456",
                "ff02::1:ff12:3456",
                [0x33, 0x33, 0xff, 0x12, 0x34, 0x56],
            ),
        ];
        for (ip, group, mac) in cases {
            assert_eq!(solicited_node(v6(ip)), v6(group), "{ip}");
            assert_eq!(solicited_node_mac(v6(ip)), MacAddr(mac), "{ip}");
        }
        assert_eq!(
            ipv6_multicast_mac(ALL_NODES),
            MacAddr([0x33, 0x33, 0, 0, 0, 1])
        );
    }

    #[test]
    fn checksum_matches_known_value() {
        // Verified independently: summing the pseudo-header and message of a built frame
        // (checksum included) gives 0xffff, i.e. the verification result 0.
        let f = unsolicited_advert(MAC_A, v6("2001:db8:1::50"));
        let icmp = &f[54..54 + 32];
        assert_eq!(icmpv6_checksum(v6("2001:db8:1::50"), ALL_NODES, icmp), 0);
        let mut zeroed = icmp.to_vec();
        zeroed[2] = 0;
        zeroed[3] = 0;
        let computed = icmpv6_checksum(v6("2001:db8:1::50"), ALL_NODES, &zeroed);
        assert_eq!(computed.to_be_bytes(), [icmp[2], icmp[3]]);
        assert_ne!(computed, 0);
    }

    #[test]
    fn ndp_frames_round_trip() {
        let ns_frame = neighbor_solicit(MAC_B, v6("2001:db8:1::100"), v6("2001:db8:1::50"));
        let ns = parse(&ns_frame).unwrap();
        assert_eq!(ns.eth_dst, MacAddr([0x33, 0x33, 0xff, 0, 0, 0x50]));
        let Payload::Ndp(ns) = ns.payload else {
            panic!("not NDP")
        };
        assert_eq!(
            ns,
            Ndp {
                src_ip: v6("2001:db8:1::100"),
                dst_ip: v6("ff02::1:ff00:50"),
                kind: NdpKind::Solicitation,
                target: v6("2001:db8:1::50"),
                lladdr: Some(MAC_B),
            }
        );
        assert_eq!(ns_frame[14 + 7], 255, "hop limit");

        let reply = parse(&neighbor_advert_reply(MAC_A, &ns, MAC_B)).unwrap();
        assert_eq!(reply.eth_dst, MAC_B);
        assert_eq!(reply.eth_src, MAC_A);
        assert_eq!(
            reply.payload,
            Payload::Ndp(Ndp {
                src_ip: v6("2001:db8:1::50"),
                dst_ip: v6("2001:db8:1::100"),
                kind: NdpKind::Advertisement {
                    router: false,
                    solicited: true,
                    override_: true
                },
                target: v6("2001:db8:1::50"),
                lladdr: Some(MAC_A),
            })
        );

        // Duplicate address detection probe: unspecified source, reply to all nodes.
        let dad = neighbor_solicit(MAC_B, Ipv6Addr::UNSPECIFIED, v6("2001:db8:1::50"));
        let Payload::Ndp(dad) = parse(&dad).unwrap().payload else {
            panic!("not NDP")
        };
        assert_eq!(dad.lladdr, None);
        let reply = parse(&neighbor_advert_reply(MAC_A, &dad, MAC_B)).unwrap();
        assert_eq!(reply.eth_dst, MacAddr([0x33, 0x33, 0, 0, 0, 1]));
        let Payload::Ndp(na) = reply.payload else {
            panic!("not NDP")
        };
        assert_eq!(na.dst_ip, ALL_NODES);
        assert_eq!(
            na.kind,
            NdpKind::Advertisement {
                router: false,
                solicited: false,
                override_: true
            }
        );

        let una = parse(&unsolicited_advert(MAC_A, v6("2001:db8:1::50"))).unwrap();
        assert_eq!(una.eth_dst, MacAddr([0x33, 0x33, 0, 0, 0, 1]));
        let Payload::Ndp(una) = una.payload else {
            panic!("not NDP")
        };
        assert_eq!(una.src_ip, v6("2001:db8:1::50"));
        assert_eq!(una.lladdr, Some(MAC_A));
    }

    #[test]
    fn rejects_truncated_and_garbage_without_panicking() {
        let good_arp = gratuitous_arp(MAC_A, v4("192.0.2.50"));
        let good_na = unsolicited_advert(MAC_A, v6("2001:db8:1::50"));
        for frame in [&good_arp, &good_na] {
            // Every truncation inside the meaningful part must be rejected, never panic.
            let meaningful = if frame[12] == 0x08 {
                14 + 28
            } else {
                14 + 40 + 32
            };
            for len in 0..meaningful {
                assert!(
                    parse(&frame[..len]).is_err(),
                    "accepted a {len}-byte prefix"
                );
            }
        }
        let mut bad_checksum = good_na.clone();
        bad_checksum[14 + 40 + 2] ^= 0xff;
        let mut hop_64 = good_na.clone();
        hop_64[14 + 7] = 64;
        let mut ipv4_ethertype = good_arp.clone();
        ipv4_ethertype[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut arp_op_3 = good_arp.clone();
        arp_op_3[21] = 3;
        // Option damage with a valid checksum, so the option parser itself is exercised.
        let fix_checksum = |f: &mut Vec<u8>| {
            let src = ipv6_at(f, 14 + 8).unwrap();
            let dst = ipv6_at(f, 14 + 24).unwrap();
            f[14 + 40 + 2] = 0;
            f[14 + 40 + 3] = 0;
            let sum = icmpv6_checksum(src, dst, &f[14 + 40..14 + 40 + 32]);
            f[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&sum.to_be_bytes());
        };
        let mut zero_len_opt = good_na.clone();
        zero_len_opt[14 + 40 + 24 + 1] = 0;
        fix_checksum(&mut zero_len_opt);
        let mut long_opt = good_na.clone();
        long_opt[14 + 40 + 24 + 1] = 9;
        fix_checksum(&mut long_opt);
        let mut echo = good_na.clone();
        echo[14 + 40] = 128;
        let cases: Vec<(&str, Vec<u8>, ParseError)> = vec![
            ("checksum", bad_checksum, ParseError::Checksum),
            ("hop limit", hop_64, ParseError::HopLimit(64)),
            (
                "ethertype",
                ipv4_ethertype,
                ParseError::OtherEthertype(0x0800),
            ),
            ("arp op", arp_op_3, ParseError::ArpOperation(3)),
            ("zero option length", zero_len_opt, ParseError::BadOption),
            ("option past end", long_opt, ParseError::BadOption),
            ("echo request", echo, ParseError::OtherIcmpv6(128)),
        ];
        for (name, frame, want) in cases {
            assert_eq!(parse(&frame), Err(want), "{name}");
        }
        // Pseudo-random garbage of every length: any result but a panic.
        let mut x: u32 = 0x1234_5678;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse(&bytes);
            let mut with_v6 = bytes.clone();
            if with_v6.len() > 14 + 41 {
                with_v6[12] = 0x86;
                with_v6[13] = 0xdd;
                with_v6[14] = 0x60;
                with_v6[14 + 6] = 58;
                with_v6[14 + 40] = 136;
                let _ = parse(&with_v6);
            }
        }
    }

    #[test]
    fn mac_parse_and_display() {
        let m: MacAddr = "02:00:00:00:00:0b".parse().unwrap();
        assert_eq!(m, MAC_A);
        assert_eq!(m.to_string(), "02:00:00:00:00:0b");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:0b:01",
            "zz:00:00:00:00:00",
            "002:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!MAC_A.is_multicast());
    }
}
