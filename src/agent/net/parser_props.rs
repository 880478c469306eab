//! Property tests: every parser of bytes from the network or the kernel (Ethernet frames,
//! netlink messages, their attributes, link and address payloads) takes arbitrary input
//! without panicking, and a valid frame with random bytes appended or cut short does too.

use proptest::prelude::*;

use super::address::{attrs, messages, parse_addr};
use super::iface::parse_link;
use super::packet::{self, MacAddr};

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
    fn netlink_messages_and_attributes_never_panic(datagram in bytes(300)) {
        for (_, _, _, payload) in messages(&datagram) {
            let _ = parse_link(payload);
            let _ = parse_addr(payload);
            for (_, data) in attrs(payload) {
                let _ = data.len();
            }
        }
        let _ = parse_link(&datagram);
        let _ = parse_addr(&datagram);
        for (_, data) in attrs(&datagram) {
            let _ = data.len();
        }
    }

    #[test]
    fn netlink_lengths_at_the_edges_never_panic(len in any::<u32>(), kind in any::<u16>(), rest in bytes(64)) {
        // A header whose length field lies (too small, too large, unaligned).
        let mut datagram = len.to_ne_bytes().to_vec();
        datagram.extend_from_slice(&kind.to_ne_bytes());
        datagram.extend_from_slice(&[0; 10]);
        datagram.extend_from_slice(&rest);
        for (_, _, _, payload) in messages(&datagram) {
            let _ = parse_link(payload);
            let _ = parse_addr(payload);
        }
        let mut attr = (len as u16).to_ne_bytes().to_vec();
        attr.extend_from_slice(&kind.to_ne_bytes());
        attr.extend_from_slice(&rest);
        for (_, data) in attrs(&attr) {
            let _ = data.len();
        }
    }
}
