//! Property tests: every parser of bytes from the network or the kernel (Ethernet frames,
//! netlink messages, their attributes, link and address payloads) takes arbitrary input
//! without panicking, and a valid frame with random bytes appended or cut short does too.

use proptest::prelude::*;

use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;

use super::address::parse_addr;
use super::iface::parse_link;
use super::netlink::{message_types, messages};
use super::packet::{self, MacAddr};

/// Decodes every message of `datagram` and reads the link and address messages, as the agent
/// does with the kernel's answers and notifications.
fn read_all(datagram: &[u8]) {
    let _ = message_types(datagram).count();
    for message in messages(datagram).flatten() {
        match message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                let _ = parse_link(&l);
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                let _ = parse_addr(&a);
            }
            _ => {}
        }
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn frames_never_panic(frame in bytes(200)) {
        let _ = packet::parse(&frame);
    }

    #[test]
    fn frames_that_look_like_arp_or_ndp_never_panic(
        kind in 0usize..3,
        tail in bytes(120),
        cut in 0usize..120,
    ) {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut frame = match kind {
            0 => packet::gratuitous_arp(mac, "192.0.2.1".parse().unwrap()),
            1 => packet::unsolicited_advert(mac, "2001:db8::1".parse().unwrap()),
            _ => packet::neighbor_solicit(mac, "::".parse().unwrap(), "2001:db8::1".parse().unwrap()),
        };
        // Keep the headers, replace the rest with noise of any length.
        frame.truncate(14 + cut.min(frame.len() - 14));
        frame.extend_from_slice(&tail);
        let _ = packet::parse(&frame);
    }

    #[test]
    fn netlink_datagrams_never_panic(datagram in bytes(300)) {
        read_all(&datagram);
    }

    #[test]
    fn netlink_messages_with_random_bodies_never_panic(
        kind in prop_oneof![Just(16u16), Just(20u16), Just(24u16), any::<u16>()],
        len in any::<u32>(),
        attributes in bytes(200),
    ) {
        // A header of a link, address or route message (or any other type) whose length may
        // lie, then a body of random attributes.
        let mut datagram = len.to_ne_bytes().to_vec();
        datagram.extend_from_slice(&kind.to_ne_bytes());
        datagram.extend_from_slice(&[0; 10]);
        datagram.extend_from_slice(&attributes);
        read_all(&datagram);
        // The same with a truthful length, so the body is really decoded.
        let truthful = datagram.len() as u32;
        datagram[..4].copy_from_slice(&truthful.to_ne_bytes());
        read_all(&datagram);
    }

    #[test]
    fn netlink_attributes_with_lying_lengths_never_panic(
        kind in prop_oneof![Just(16u16), Just(20u16)],
        attr_len in any::<u16>(),
        attr_kind in 0u16..64,
        rest in bytes(64),
    ) {
        // A well-framed link or address message carrying one attribute whose length lies.
        let mut body = vec![0u8; 16];
        body[0] = 2; // AF_INET
        body.extend_from_slice(&attr_len.to_ne_bytes());
        body.extend_from_slice(&attr_kind.to_ne_bytes());
        body.extend_from_slice(&rest);
        let mut datagram = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        datagram.extend_from_slice(&kind.to_ne_bytes());
        datagram.extend_from_slice(&[0; 10]);
        datagram.extend_from_slice(&body);
        read_all(&datagram);
    }
}
