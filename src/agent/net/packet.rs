//! The Ethernet frames the announcer sends and reads: ARP (RFC 826, gratuitous announcements
//! as in RFC 5227) and IPv6 neighbour discovery (RFC 4861 neighbour solicitation and
//! advertisement with link-layer address options), built and read through `pnet_packet`.
//!
//! Pure: no I/O. Parsing never panics; a frame that is truncated, of another protocol or
//! malformed is a [`ParseError`].

use std::net::{Ipv4Addr, Ipv6Addr};

use pnet_base::MacAddr as PnetMac;
use pnet_packet::Packet;
use pnet_packet::arp::{ArpHardwareTypes, ArpOperations, ArpPacket, MutableArpPacket};
use pnet_packet::ethernet::{EtherType, EtherTypes, EthernetPacket, MutableEthernetPacket};
use pnet_packet::icmpv6::ndp::{
    MutableNeighborAdvertPacket, MutableNeighborSolicitPacket, NdpOption, NdpOptionPacket,
    NdpOptionType, NdpOptionTypes, NeighborAdvertFlags, NeighborAdvertPacket,
    NeighborSolicitPacket,
};
use pnet_packet::icmpv6::{self, Icmpv6Packet, Icmpv6Types, MutableIcmpv6Packet};
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv6::{Ipv6Packet, MutableIpv6Packet};

/// Ethertype of ARP.
pub const ETHERTYPE_ARP: u16 = EtherTypes::Arp.0;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = EtherTypes::Ipv6.0;
/// IPv6 next header value of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = IpNextHeaderProtocols::Icmpv6.0;
/// ICMPv6 type of a neighbour solicitation.
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = Icmpv6Types::NeighborSolicit.0;
/// ICMPv6 type of a neighbour advertisement.
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = Icmpv6Types::NeighborAdvert.0;

const ETH_HEADER_LEN: usize = 14;
const ARP_LEN: usize = 28;
const IPV6_HEADER_LEN: usize = 40;
/// ICMPv6 header (4) + reserved/flags (4) + target (16).
const ND_BODY_LEN: usize = 24;
/// One link-layer address option for Ethernet: type, length (in units of 8 bytes), MAC.
const LLADDR_OPT_LEN: usize = 8;
/// Ethernet frames shorter than this (without FCS) are padded on the wire.
const MIN_FRAME_LEN: usize = 60;

pub use crate::core::mac::MacAddr;

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
}

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
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

impl From<MacAddr> for PnetMac {
    fn from(m: MacAddr) -> PnetMac {
        let [a, b, c, d, e, f] = m.0;
        PnetMac::new(a, b, c, d, e, f)
    }
}

impl From<PnetMac> for MacAddr {
    fn from(m: PnetMac) -> MacAddr {
        MacAddr(m.octets())
    }
}

/// A zeroed frame of `len` bytes (at least the Ethernet minimum) with its Ethernet header
/// written; the caller fills the payload.
fn ethernet_frame(len: usize, dst: MacAddr, src: MacAddr, ethertype: EtherType) -> Vec<u8> {
    let mut frame = vec![0u8; len.max(MIN_FRAME_LEN)];
    let mut eth = MutableEthernetPacket::new(&mut frame).expect("sized for the header");
    eth.set_destination(dst.into());
    eth.set_source(src.into());
    eth.set_ethertype(ethertype);
    frame
}

/// Builds an Ethernet frame carrying `arp`.
pub fn build_arp(eth_dst: MacAddr, eth_src: MacAddr, arp: &Arp) -> Vec<u8> {
    let mut frame = ethernet_frame(ETH_HEADER_LEN + ARP_LEN, eth_dst, eth_src, EtherTypes::Arp);
    let mut packet = MutableArpPacket::new(&mut frame[ETH_HEADER_LEN..]).expect("sized for ARP");
    packet.set_hardware_type(ArpHardwareTypes::Ethernet);
    packet.set_protocol_type(EtherTypes::Ipv4);
    packet.set_hw_addr_len(6);
    packet.set_proto_addr_len(4);
    packet.set_operation(match arp.op {
        ArpOp::Request => ArpOperations::Request,
        ArpOp::Reply => ArpOperations::Reply,
    });
    packet.set_sender_hw_addr(arp.sender_mac.into());
    packet.set_sender_proto_addr(arp.sender_ip);
    packet.set_target_hw_addr(arp.target_mac.into());
    packet.set_target_proto_addr(arp.target_ip);
    frame
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

/// Builds Ethernet + IPv6 (hop limit 255) + ICMPv6 neighbour discovery with one link-layer
/// address option (source for solicitations, target for advertisements) and its checksum.
pub fn build_ndp(eth_dst: MacAddr, eth_src: MacAddr, ndp: &Ndp) -> Vec<u8> {
    let icmp_len = ND_BODY_LEN
        + if ndp.lladdr.is_some() {
            LLADDR_OPT_LEN
        } else {
            0
        };
    let icmp_at = ETH_HEADER_LEN + IPV6_HEADER_LEN;
    let mut frame = ethernet_frame(icmp_at + icmp_len, eth_dst, eth_src, EtherTypes::Ipv6);
    let mut ip = MutableIpv6Packet::new(&mut frame[ETH_HEADER_LEN..]).expect("sized for IPv6");
    ip.set_version(6);
    ip.set_payload_length(icmp_len as u16);
    ip.set_next_header(IpNextHeaderProtocols::Icmpv6);
    ip.set_hop_limit(255); // receivers drop neighbour discovery with anything else
    ip.set_source(ndp.src_ip);
    ip.set_destination(ndp.dst_ip);
    let icmp = &mut frame[icmp_at..icmp_at + icmp_len];
    let option = |option_type, mac: MacAddr| NdpOption {
        option_type,
        length: 1, // in units of 8 bytes: type, length and the 6-byte address
        data: mac.0.to_vec(),
    };
    match ndp.kind {
        NdpKind::Solicitation => {
            let mut ns = MutableNeighborSolicitPacket::new(icmp).expect("sized for NS");
            ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
            ns.set_target_addr(ndp.target);
            if let Some(mac) = ndp.lladdr {
                ns.set_options(&[option(NdpOptionTypes::SourceLLAddr, mac)]);
            }
        }
        NdpKind::Advertisement {
            router,
            solicited,
            override_,
        } => {
            let mut na = MutableNeighborAdvertPacket::new(icmp).expect("sized for NA");
            na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
            let mut flags = 0;
            for (set, flag) in [
                (router, NeighborAdvertFlags::Router),
                (solicited, NeighborAdvertFlags::Solicited),
                (override_, NeighborAdvertFlags::Override),
            ] {
                if set {
                    flags |= flag;
                }
            }
            na.set_flags(flags);
            na.set_target_addr(ndp.target);
            if let Some(mac) = ndp.lladdr {
                na.set_options(&[option(NdpOptionTypes::TargetLLAddr, mac)]);
            }
        }
    }
    let sum = {
        let packet = Icmpv6Packet::new(icmp).expect("sized for ICMPv6");
        icmpv6::checksum(&packet, &ndp.src_ip, &ndp.dst_ip)
    };
    MutableIcmpv6Packet::new(icmp)
        .expect("sized for ICMPv6")
        .set_checksum(sum);
    frame
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

/// Parses an Ethernet frame carrying ARP or an ICMPv6 neighbour solicitation/advertisement.
pub fn parse(frame: &[u8]) -> Result<Frame, ParseError> {
    let eth = EthernetPacket::new(frame).ok_or(ParseError::Truncated)?;
    let payload = match eth.get_ethertype() {
        EtherTypes::Arp => Payload::Arp(parse_arp(eth.payload())?),
        EtherTypes::Ipv6 => Payload::Ndp(parse_ndp(eth.payload())?),
        other => return Err(ParseError::OtherEthertype(other.0)),
    };
    Ok(Frame {
        eth_dst: eth.get_destination().into(),
        eth_src: eth.get_source().into(),
        payload,
    })
}

fn parse_arp(b: &[u8]) -> Result<Arp, ParseError> {
    let arp = ArpPacket::new(b).ok_or(ParseError::Truncated)?;
    if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
        || arp.get_hw_addr_len() != 6
        || arp.get_proto_addr_len() != 4
    {
        return Err(ParseError::UnsupportedArp);
    }
    let op = match arp.get_operation() {
        ArpOperations::Request => ArpOp::Request,
        ArpOperations::Reply => ArpOp::Reply,
        other => return Err(ParseError::ArpOperation(other.0)),
    };
    Ok(Arp {
        op,
        sender_mac: arp.get_sender_hw_addr().into(),
        sender_ip: arp.get_sender_proto_addr(),
        target_mac: arp.get_target_hw_addr().into(),
        target_ip: arp.get_target_proto_addr(),
    })
}

fn parse_ndp(b: &[u8]) -> Result<Ndp, ParseError> {
    let ip = Ipv6Packet::new(b).ok_or(ParseError::Truncated)?;
    if ip.get_version() != 6 {
        return Err(ParseError::BadIpVersion);
    }
    if ip.get_next_header() != IpNextHeaderProtocols::Icmpv6 {
        return Err(ParseError::NotIcmpv6(ip.get_next_header().0));
    }
    // pnet cuts the payload at the end of the frame; a payload length past it is a truncated
    // frame. Bytes past the payload length are Ethernet padding.
    let icmp = ip.payload();
    if icmp.len() < usize::from(ip.get_payload_length()) {
        return Err(ParseError::Truncated);
    }
    let header = Icmpv6Packet::new(icmp).ok_or(ParseError::Truncated)?;
    let icmp_type = header.get_icmpv6_type();
    if icmp_type != Icmpv6Types::NeighborSolicit && icmp_type != Icmpv6Types::NeighborAdvert {
        return Err(ParseError::OtherIcmpv6(icmp_type.0));
    }
    if icmp.len() < ND_BODY_LEN {
        return Err(ParseError::Truncated);
    }
    if ip.get_hop_limit() != 255 {
        return Err(ParseError::HopLimit(ip.get_hop_limit()));
    }
    if header.get_icmpv6_code().0 != 0 {
        return Err(ParseError::IcmpCode(header.get_icmpv6_code().0));
    }
    let (src_ip, dst_ip) = (ip.get_source(), ip.get_destination());
    if icmpv6::checksum(&header, &src_ip, &dst_ip) != header.get_checksum() {
        return Err(ParseError::Checksum);
    }
    let (kind, target, options, wanted) = if icmp_type == Icmpv6Types::NeighborSolicit {
        let ns = NeighborSolicitPacket::new(icmp).ok_or(ParseError::Truncated)?;
        let options = &icmp[ND_BODY_LEN..];
        let target = ns.get_target_addr();
        (
            NdpKind::Solicitation,
            target,
            options,
            NdpOptionTypes::SourceLLAddr,
        )
    } else {
        let na = NeighborAdvertPacket::new(icmp).ok_or(ParseError::Truncated)?;
        let flags = na.get_flags();
        let kind = NdpKind::Advertisement {
            router: flags & NeighborAdvertFlags::Router != 0,
            solicited: flags & NeighborAdvertFlags::Solicited != 0,
            override_: flags & NeighborAdvertFlags::Override != 0,
        };
        let options = &icmp[ND_BODY_LEN..];
        (
            kind,
            na.get_target_addr(),
            options,
            NdpOptionTypes::TargetLLAddr,
        )
    };
    Ok(Ndp {
        src_ip,
        dst_ip,
        kind,
        target,
        lladdr: link_layer_address(options, wanted)?,
    })
}

/// The link-layer address option of type `wanted` among `options`.
///
/// The options are walked here, not by pnet's `get_options()`: pnet computes an option's
/// length as `length * 8 - 2` in `u8`, which overflows for a length field of 32 or more (a
/// panic in debug builds, a wrong length in release ones). Each option is still read through
/// pnet's `NdpOptionPacket`.
fn link_layer_address(
    mut options: &[u8],
    wanted: NdpOptionType,
) -> Result<Option<MacAddr>, ParseError> {
    let mut found = None;
    while !options.is_empty() {
        let option = NdpOptionPacket::new(options).ok_or(ParseError::BadOption)?;
        let len = usize::from(option.get_length()) * 8;
        if len == 0 || len > options.len() {
            return Err(ParseError::BadOption);
        }
        if option.get_option_type() == wanted && len >= LLADDR_OPT_LEN {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&options[2..8]);
            found = Some(MacAddr(mac));
        }
        options = &options[len..];
    }
    Ok(found)
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

    /// The ICMPv6 checksum (RFC 8200 section 8.1 pseudo-header) summed by hand, for checking
    /// the library's: over the message with its checksum field as it is.
    fn ones_complement_sum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut bytes = src.octets().to_vec();
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
        bytes.extend_from_slice(icmp);
        bytes.resize(bytes.len().next_multiple_of(2), 0);
        for c in bytes.chunks_exact(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn checksum_verifies_by_hand() {
        // Summing the pseudo-header and the message, checksum included, gives 0xffff.
        for frame in [
            unsolicited_advert(MAC_A, v6("2001:db8:1::50")),
            neighbor_solicit(MAC_B, v6("2001:db8:1::100"), v6("2001:db8:1::50")),
            neighbor_solicit(MAC_B, Ipv6Addr::UNSPECIFIED, v6("2001:db8:1::50")),
        ] {
            let ip = Ipv6Packet::new(&frame[14..]).unwrap();
            let icmp = &ip.payload()[..usize::from(ip.get_payload_length())];
            let sum = ones_complement_sum(ip.get_source(), ip.get_destination(), icmp);
            assert_eq!(sum, 0xffff);
            assert_ne!([icmp[2], icmp[3]], [0, 0]);
        }
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
            let ip = Ipv6Packet::new(&f[14..]).unwrap();
            let (src, dst) = (ip.get_source(), ip.get_destination());
            f[14 + 40 + 2] = 0;
            f[14 + 40 + 3] = 0;
            let sum = !ones_complement_sum(src, dst, &f[14 + 40..14 + 40 + 32]);
            f[14 + 40 + 2..14 + 40 + 4].copy_from_slice(&sum.to_be_bytes());
        };
        let mut zero_len_opt = good_na.clone();
        zero_len_opt[14 + 40 + 24 + 1] = 0;
        fix_checksum(&mut zero_len_opt);
        let mut long_opt = good_na.clone();
        long_opt[14 + 40 + 24 + 1] = 9;
        fix_checksum(&mut long_opt);
        // 32 * 8 overflows a u8: pnet's own option walk would panic here in a debug build.
        let mut huge_opt = good_na.clone();
        huge_opt[14 + 40 + 24 + 1] = 32;
        fix_checksum(&mut huge_opt);
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
            ("option length 32", huge_opt, ParseError::BadOption),
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
}
