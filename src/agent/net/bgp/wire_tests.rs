//! The codec: round trips of every message kind, exact bytes checked against RFC layouts
//! written out by hand, the header and OPEN errors with their NOTIFICATIONs, and the decoder
//! fed random and mutated bytes (it must never panic).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::path_attribute::{AsPath, MpReach, MpUnreach, Origin, PathAttributeValue};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use proptest::prelude::*;

use super::wire::{EncodeContext, WireError, decode, encode, encoded_len};
use crate::core::bgp::{
    Capabilities, Community, Family, GracefulRestart, Message, Notification, Open, RouteAttrs,
    Update,
};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ebgp(asn: u32, four_octet: bool) -> EncodeContext {
    EncodeContext {
        local_asn: asn,
        four_octet_asn: four_octet,
        ibgp: false,
        next_hop_v4: Some(Ipv4Addr::new(192, 0, 2, 11)),
        next_hop_v6: Some("2001:db8:1::11".parse().unwrap()),
        next_hop_v6_link_local: None,
    }
}

fn communities(list: &[&str]) -> BTreeSet<Community> {
    list.iter().map(|c| Community::parse(c).unwrap()).collect()
}

fn announce(family: Family, prefixes: &[&str], attrs: RouteAttrs) -> Update {
    Update {
        family,
        withdrawn: Vec::new(),
        attrs,
        announced: prefixes.iter().map(|p| net(p)).collect(),
    }
}

fn withdraw(family: Family, prefixes: &[&str]) -> Update {
    Update {
        family,
        withdrawn: prefixes.iter().map(|p| net(p)).collect(),
        attrs: RouteAttrs::default(),
        announced: Vec::new(),
    }
}

fn full_open() -> Open {
    Open {
        version: 4,
        my_as: 65001,
        hold_time: 90,
        router_id: Ipv4Addr::new(192, 0, 2, 11),
        capabilities: Capabilities {
            families: [Family::Ipv4Unicast, Family::Ipv6Unicast].into(),
            other_families: Vec::new(),
            four_octet_asn: Some(65001),
            route_refresh: true,
            graceful_restart: Some(GracefulRestart {
                restarting: true,
                restart_time: 120,
                families: [Family::Ipv4Unicast, Family::Ipv6Unicast].into(),
            }),
            unknown: Vec::new(),
        },
    }
}

/// What an encoded UPDATE says, read by netgauze directly (vipam's decoder does not keep the
/// content of UPDATEs).
#[derive(Debug, Default, PartialEq)]
struct Seen {
    withdrawn: Vec<IpNet>,
    announced: Vec<IpNet>,
    attribute_codes: Vec<u8>,
    as_path: Vec<u32>,
    as4_path: Vec<u32>,
    next_hops: Vec<IpAddr>,
    local_pref: Option<u32>,
    communities: BTreeSet<Community>,
}

fn seen(bytes: &[u8], four_octet: bool) -> Seen {
    let mut ctx = BgpParsingContext::new(
        four_octet,
        HashMap::new(),
        HashMap::new(),
        true,
        true,
        true,
        true,
    );
    let message = BgpMessage::parse(&mut SliceReader::new(bytes), &mut ctx).expect("netgauze");
    let BgpMessage::Update(update) = message else {
        panic!("not an UPDATE: {message:?}")
    };
    let mut out = Seen {
        withdrawn: update
            .withdraw_routes()
            .iter()
            .map(|a| IpNet::V4(a.network().address()))
            .collect(),
        announced: update
            .nlri()
            .iter()
            .map(|a| IpNet::V4(a.network().address()))
            .collect(),
        ..Seen::default()
    };
    for attr in update.path_attributes() {
        out.attribute_codes
            .push(attr.path_attribute_type().map(u8::from).unwrap_or(0));
        match attr.value() {
            PathAttributeValue::Origin(origin) => assert_eq!(*origin, Origin::IGP),
            PathAttributeValue::AsPath(path) => out.as_path = Vec::from(path.clone()),
            PathAttributeValue::As4Path(path) => {
                out.as4_path = Vec::from(AsPath::As4PathSegments(path.segments().into()))
            }
            PathAttributeValue::NextHop(nh) => out.next_hops.push(IpAddr::V4(nh.next_hop())),
            PathAttributeValue::LocalPreference(lp) => out.local_pref = Some(lp.metric()),
            PathAttributeValue::Communities(c) => out.communities.extend(
                c.communities()
                    .iter()
                    .map(|c| Community::Standard(c.value())),
            ),
            PathAttributeValue::LargeCommunities(c) => {
                out.communities
                    .extend(c.communities().iter().map(|c| Community::Large {
                        global: c.global_admin(),
                        local1: c.local_data1(),
                        local2: c.local_data2(),
                    }))
            }
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                next_hop_global,
                next_hop_local,
                nlri,
            }) => {
                out.next_hops.push(IpAddr::V6(*next_hop_global));
                out.next_hops.extend(next_hop_local.map(IpAddr::V6));
                out.announced
                    .extend(nlri.iter().map(|a| IpNet::V6(a.network().address())));
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) => out
                .withdrawn
                .extend(nlri.iter().map(|a| IpNet::V6(a.network().address()))),
            other => panic!("unexpected attribute {other:?}"),
        }
    }
    out
}

fn decode_one(bytes: &[u8], four_octet: bool) -> Message {
    let (message, used) = decode(bytes, four_octet)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a whole message");
    assert_eq!(used, bytes.len());
    message
}

/// Hex digits to bytes; whitespace is ignored and `#` starts a comment to the end of the line.
fn hex(s: &str) -> Vec<u8> {
    let digits: String = s
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .flat_map(|line| line.split_whitespace())
        .collect();
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

const MARKER: &str = "ffffffff ffffffff ffffffff ffffffff";

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn open_keepalive_notification_route_refresh_round_trip() {
    let ctx = EncodeContext::default();
    let mut minimal = full_open();
    minimal.capabilities = Capabilities::default();
    minimal.hold_time = 0;
    let mut four_byte = full_open();
    four_byte.my_as = 23456;
    four_byte.capabilities.four_octet_asn = Some(4_200_000_001);
    four_byte.capabilities.graceful_restart = Some(GracefulRestart {
        restarting: false,
        restart_time: 4095,
        families: [Family::Ipv6Unicast].into(),
    });
    let messages = [
        Message::Open(full_open()),
        Message::Open(minimal),
        Message::Open(four_byte.clone()),
        Message::Keepalive,
        Message::Notification(Notification::administrative_shutdown()),
        Message::Notification(Notification {
            code: 6,
            subcode: 2,
            data: b"\x0bmaintenance".to_vec(),
        }),
        // Codes netgauze does not model still go both ways.
        Message::Notification(Notification {
            code: 9,
            subcode: 77,
            data: vec![1, 2, 3],
        }),
        Message::RouteRefresh { afi: 1, safi: 1 },
        Message::RouteRefresh { afi: 2, safi: 1 },
    ];
    for message in messages {
        let bytes = encode(&message, &ctx).unwrap();
        assert_eq!(decode_one(&bytes, true), message, "{bytes:02x?}");
    }
    let Message::Open(back) = decode_one(&encode(&Message::Open(four_byte), &ctx).unwrap(), false)
    else {
        panic!()
    };
    assert_eq!(back.asn(), 4_200_000_001);
}

/// Every UPDATE shape vipam sends: encoded, decoded by vipam (as traffic), and read back by
/// netgauze with the same attributes, in ascending type order.
#[test]
fn updates_round_trip() {
    let attrs = RouteAttrs {
        local_pref: Some(200),
        communities: communities(&["65000:100", "no-export", "large:4200000001:1:2"]),
    };
    let v4 = Family::Ipv4Unicast;
    let v6 = Family::Ipv6Unicast;
    let node_v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
    let node_v6: IpAddr = "2001:db8:1::11".parse().unwrap();
    let link_local: Ipv6Addr = "fe80::11".parse().unwrap();
    let mut ibgp = ebgp(65001, true);
    ibgp.ibgp = true;
    let mut ibgp_2byte_big = ebgp(4_200_000_001, false);
    ibgp_2byte_big.ibgp = true;
    let mut with_link_local = ebgp(65001, true);
    with_link_local.next_hop_v6_link_local = Some(link_local);

    struct Case {
        update: Update,
        ctx: EncodeContext,
        codes: Vec<u8>,
        as_path: Vec<u32>,
        as4_path: Vec<u32>,
        next_hops: Vec<IpAddr>,
        local_pref: Option<u32>,
    }
    let cases = [
        Case {
            update: announce(v4, &["198.51.100.1/32", "198.51.100.2/32"], attrs.clone()),
            ctx: ebgp(65001, true),
            codes: vec![1, 2, 3, 8, 32],
            as_path: vec![65001],
            as4_path: vec![],
            next_hops: vec![node_v4],
            local_pref: None,
        },
        Case {
            update: announce(v4, &["198.51.100.1/32"], attrs.clone()),
            ctx: ebgp(65001, false),
            codes: vec![1, 2, 3, 8, 32],
            as_path: vec![65001],
            as4_path: vec![],
            next_hops: vec![node_v4],
            local_pref: None,
        },
        Case {
            update: announce(v4, &["198.51.100.1/32"], attrs.clone()),
            ctx: ebgp(4_200_000_001, false),
            codes: vec![1, 2, 3, 8, 17, 32],
            as_path: vec![23456],
            as4_path: vec![4_200_000_001],
            next_hops: vec![node_v4],
            local_pref: None,
        },
        Case {
            update: announce(v4, &["198.51.100.1/32"], attrs.clone()),
            ctx: ebgp(4_200_000_001, true),
            codes: vec![1, 2, 3, 8, 32],
            as_path: vec![4_200_000_001],
            as4_path: vec![],
            next_hops: vec![node_v4],
            local_pref: None,
        },
        Case {
            update: announce(v4, &["198.51.100.1/32"], attrs.clone()),
            ctx: ibgp.clone(),
            codes: vec![1, 2, 3, 5, 8, 32],
            as_path: vec![],
            as4_path: vec![],
            next_hops: vec![node_v4],
            local_pref: Some(200),
        },
        Case {
            update: announce(v4, &["198.51.100.0/24"], RouteAttrs::default()),
            ctx: ibgp_2byte_big.clone(),
            codes: vec![1, 2, 3, 5],
            as_path: vec![],
            as4_path: vec![],
            next_hops: vec![node_v4],
            local_pref: Some(100),
        },
        Case {
            update: Update {
                withdrawn: vec![net("198.51.100.9/32")],
                ..announce(v4, &["198.51.100.1/32"], RouteAttrs::default())
            },
            ctx: ebgp(65001, true),
            codes: vec![1, 2, 3],
            as_path: vec![65001],
            as4_path: vec![],
            next_hops: vec![node_v4],
            local_pref: None,
        },
        Case {
            update: withdraw(v4, &["198.51.100.1/32", "203.0.113.0/24"]),
            ctx: ebgp(65001, true),
            codes: vec![],
            as_path: vec![],
            as4_path: vec![],
            next_hops: vec![],
            local_pref: None,
        },
        Case {
            update: Update::end_of_rib(v4),
            ctx: ebgp(65001, true),
            codes: vec![],
            as_path: vec![],
            as4_path: vec![],
            next_hops: vec![],
            local_pref: None,
        },
        Case {
            update: announce(v6, &["2001:db8:ff::1/128"], attrs.clone()),
            ctx: ebgp(65001, true),
            codes: vec![1, 2, 8, 14, 32],
            as_path: vec![65001],
            as4_path: vec![],
            next_hops: vec![node_v6],
            local_pref: None,
        },
        Case {
            update: announce(v6, &["2001:db8:ff::1/128"], attrs.clone()),
            ctx: with_link_local,
            codes: vec![1, 2, 8, 14, 32],
            as_path: vec![65001],
            as4_path: vec![],
            next_hops: vec![node_v6, IpAddr::V6(link_local)],
            local_pref: None,
        },
        Case {
            update: announce(v6, &["2001:db8:ff::1/128"], attrs.clone()),
            ctx: ebgp(4_200_000_001, false),
            codes: vec![1, 2, 8, 14, 17, 32],
            as_path: vec![23456],
            as4_path: vec![4_200_000_001],
            next_hops: vec![node_v6],
            local_pref: None,
        },
        Case {
            update: Update {
                withdrawn: vec![net("2001:db8:ff::9/128")],
                ..announce(v6, &["2001:db8:ff::1/128"], RouteAttrs::default())
            },
            ctx: ibgp,
            codes: vec![1, 2, 5, 14, 15],
            as_path: vec![],
            as4_path: vec![],
            next_hops: vec![node_v6],
            local_pref: Some(100),
        },
        Case {
            update: withdraw(v6, &["2001:db8:ff::1/128"]),
            ctx: ebgp(65001, true),
            codes: vec![15],
            as_path: vec![],
            as4_path: vec![],
            next_hops: vec![],
            local_pref: None,
        },
        Case {
            update: Update::end_of_rib(v6),
            ctx: ebgp(65001, true),
            codes: vec![15],
            as_path: vec![],
            as4_path: vec![],
            next_hops: vec![],
            local_pref: None,
        },
    ];
    for case in cases {
        let label = format!("{:?} / {:?}", case.update, case.ctx);
        let bytes = encode(&Message::Update(case.update.clone()), &case.ctx).unwrap();
        assert_eq!(
            encoded_len(&case.update, &case.ctx).unwrap(),
            bytes.len(),
            "{label}"
        );
        assert_eq!(
            decode_one(&bytes, case.ctx.four_octet_asn),
            Message::UpdateReceived,
            "{label}"
        );
        let got = seen(&bytes, case.ctx.four_octet_asn);
        let announcing = !case.update.announced.is_empty();
        let expected = Seen {
            withdrawn: case.update.withdrawn.clone(),
            announced: case.update.announced.clone(),
            attribute_codes: case.codes,
            as_path: case.as_path,
            as4_path: case.as4_path,
            next_hops: case.next_hops,
            local_pref: case.local_pref,
            communities: if announcing {
                case.update.attrs.communities.clone()
            } else {
                BTreeSet::new()
            },
        };
        assert_eq!(got, expected, "{label}");
    }
}

#[test]
fn messages_arrive_in_pieces_and_back_to_back() {
    let ctx = ebgp(65001, true);
    let mut stream = Vec::new();
    let messages = [
        Message::Open(full_open()),
        Message::Keepalive,
        Message::Update(announce(
            Family::Ipv4Unicast,
            &["198.51.100.1/32"],
            RouteAttrs::default(),
        )),
        Message::Update(Update::end_of_rib(Family::Ipv6Unicast)),
        Message::Notification(Notification::administrative_shutdown()),
    ];
    for message in &messages {
        stream.extend(encode(message, &ctx).unwrap());
    }
    // One byte at a time: `None` until a message is whole.
    let mut got = Vec::new();
    let mut buffer = Vec::new();
    for byte in stream {
        buffer.push(byte);
        if let Some((message, used)) = decode(&buffer, true).unwrap() {
            got.push(message);
            buffer.drain(..used);
        }
    }
    assert!(buffer.is_empty());
    let expected: Vec<Message> = messages
        .into_iter()
        .map(|m| match m {
            Message::Update(_) => Message::UpdateReceived,
            other => other,
        })
        .collect();
    assert_eq!(got, expected);
}

// ---------------------------------------------------------------------------------------------
// Exact bytes (RFC 4271 4, RFC 1997, RFC 8092, RFC 4760, RFC 4724, RFC 5492, RFC 6793)

#[test]
fn ipv4_update_with_communities_is_byte_exact() {
    let update = announce(
        Family::Ipv4Unicast,
        &["198.51.100.1/32"],
        RouteAttrs {
            local_pref: Some(300), // eBGP: not sent
            communities: communities(&["65000:100", "no-export", "large:65001:1:2"]),
        },
    );
    let expected = hex(&format!(
        "{MARKER} 004a 02
         0000  # withdrawn routes length
         002e  # total path attribute length (46)
         40 01 01 00  # ORIGIN IGP
         40 02 06 02 01 0000fde9  # AS_PATH: AS_SEQUENCE of 1, AS 65001 (4 bytes)
         40 03 04 c000020b  # NEXT_HOP 192.0.2.11
         c0 08 08 fde80064 ffffff01  # COMMUNITIES 65000:100, no-export
         c0 20 0c 0000fde9 00000001 00000002  # LARGE_COMMUNITY 65001:1:2
         20 c6336401  # NLRI 198.51.100.1/32"
    ));
    let bytes = encode(&Message::Update(update), &ebgp(65001, true)).unwrap();
    assert_eq!(bytes, expected, "\n{bytes:02x?}\n{expected:02x?}");
}

#[test]
fn ipv6_end_of_rib_is_byte_exact() {
    let expected = hex(&format!("{MARKER} 001d 02  0000 0006  80 0f 03 0002 01"));
    for ctx in [ebgp(65001, true), ebgp(4_200_000_001, false)] {
        let bytes = encode(
            &Message::Update(Update::end_of_rib(Family::Ipv6Unicast)),
            &ctx,
        )
        .unwrap();
        assert_eq!(bytes, expected, "{bytes:02x?}");
    }
    let v4 = encode(
        &Message::Update(Update::end_of_rib(Family::Ipv4Unicast)),
        &ebgp(65001, true),
    )
    .unwrap();
    assert_eq!(v4, hex(&format!("{MARKER} 0017 02 0000 0000")));
}

#[test]
fn ipv6_ibgp_update_with_link_local_next_hop_is_byte_exact() {
    let mut ctx = ebgp(65001, true);
    ctx.ibgp = true;
    ctx.next_hop_v6_link_local = Some("fe80::11".parse().unwrap());
    let update = announce(
        Family::Ipv6Unicast,
        &["2001:db8:ff::1/128"],
        RouteAttrs {
            local_pref: Some(200),
            communities: BTreeSet::new(),
        },
    );
    let expected = hex(&format!(
        "{MARKER} 005e 02 0000 0047
         40 01 01 00
         40 02 00
         40 05 04 000000c8
         80 0e 36 0002 01 20
            20010db8000100000000000000000011 fe800000000000000000000000000011
            00
            80 20010db800ff00000000000000000001"
    ));
    let bytes = encode(&Message::Update(update), &ctx).unwrap();
    assert_eq!(bytes, expected, "\n{bytes:02x?}\n{expected:02x?}");
}

#[test]
fn as_trans_and_as4_path_are_byte_exact() {
    let update = announce(
        Family::Ipv4Unicast,
        &["198.51.100.1/32"],
        RouteAttrs::default(),
    );
    let bytes = encode(&Message::Update(update), &ebgp(4_200_000_001, false)).unwrap();
    let expected = hex(&format!(
        "{MARKER} 0037 02 0000 001b
         40 01 01 00
         40 02 04 02 01 5ba0
         40 03 04 c000020b
         c0 11 06 02 01 fa56ea01
         20 c6336401"
    ));
    assert_eq!(bytes, expected, "\n{bytes:02x?}\n{expected:02x?}");
}

#[test]
fn open_with_capabilities_is_byte_exact() {
    let expected = hex(&format!(
        "{MARKER} 003f 01
         04 fde9 005a c000020b  # version 4, AS 65001, hold 90, id 192.0.2.11
         22  # optional parameters length 34
         02 20  # capabilities parameter, 32 bytes
         01 04 0001 00 01  # multiprotocol IPv4 unicast
         01 04 0002 00 01  # multiprotocol IPv6 unicast
         02 00  # route refresh
         40 0a 8078 0001 01 80 0002 01 80  # graceful restart: R, 120 s, v4 F, v6 F
         41 04 0000fde9  # 4-octet ASN 65001"
    ));
    let bytes = encode(&Message::Open(full_open()), &EncodeContext::default()).unwrap();
    assert_eq!(bytes, expected, "\n{bytes:02x?}\n{expected:02x?}");
    assert_eq!(
        encode(&Message::Keepalive, &EncodeContext::default()).unwrap(),
        hex(&format!("{MARKER} 0013 04"))
    );
    assert_eq!(
        encode(
            &Message::Notification(Notification::new(6, 2)),
            &EncodeContext::default()
        )
        .unwrap(),
        hex(&format!("{MARKER} 0015 03 06 02"))
    );
    assert_eq!(
        encode(
            &Message::RouteRefresh { afi: 2, safi: 1 },
            &EncodeContext::default()
        )
        .unwrap(),
        hex(&format!("{MARKER} 0017 05 0002 00 01"))
    );
}

// ---------------------------------------------------------------------------------------------
// What a peer sends that vipam must read or refuse

/// An OPEN from bytes: `params` is the optional parameters field.
fn open_bytes(version: u8, my_as: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0xff; 16];
    bytes.extend(((29 + params.len()) as u16).to_be_bytes());
    bytes.push(1);
    bytes.push(version);
    bytes.extend(my_as.to_be_bytes());
    bytes.extend(hold.to_be_bytes());
    bytes.extend(id);
    bytes.push(params.len() as u8);
    bytes.extend(params);
    bytes
}

fn capability_param(caps: &[u8]) -> Vec<u8> {
    let mut param = vec![2, caps.len() as u8];
    param.extend(caps);
    param
}

fn malformed(bytes: &[u8]) -> (Notification, String) {
    match decode(bytes, true) {
        Err(WireError::Malformed {
            notification,
            reason,
        }) => (notification, reason),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn bad_headers_get_the_rfc_notification_and_a_sentence() {
    let keepalive = encode(&Message::Keepalive, &EncodeContext::default()).unwrap();

    let mut bad_marker = keepalive.clone();
    bad_marker[3] = 0;
    let (n, reason) = malformed(&bad_marker);
    assert_eq!((n.code, n.subcode), (1, 1));
    assert_eq!(reason, "bad marker in message header");
    // Detected before the header is whole.
    assert_eq!(malformed(&[0xff, 0xff, 0x00]).0, Notification::new(1, 1));
    let error = decode(b"GET / HTTP/1.1\r\n\r\n", true).unwrap_err();
    assert_eq!(error.notification(), Some(&Notification::new(1, 1)));
    assert!(
        error.to_string().contains("Connection Not Synchronized"),
        "{error}"
    );

    let mut too_long = keepalive.clone();
    too_long[16..18].copy_from_slice(&5000u16.to_be_bytes());
    let (n, reason) = malformed(&too_long);
    assert_eq!(
        n,
        Notification {
            code: 1,
            subcode: 2,
            data: vec![0x13, 0x88]
        }
    );
    assert_eq!(reason, "message length 5000 outside 19..4096");

    let mut too_short = keepalive.clone();
    too_short[16..18].copy_from_slice(&5u16.to_be_bytes());
    assert_eq!(
        malformed(&too_short).0,
        Notification {
            code: 1,
            subcode: 2,
            data: vec![0, 5]
        }
    );

    let mut keepalive_20 = keepalive.clone();
    keepalive_20[17] = 20;
    keepalive_20.push(0);
    let (n, reason) = malformed(&keepalive_20);
    assert_eq!((n.code, n.subcode, n.data), (1, 2, vec![0, 20]));
    assert_eq!(reason, "KEEPALIVE of length 20 (must be 19)");

    let mut open_short = keepalive.clone();
    open_short[18] = 1;
    let (n, reason) = malformed(&open_short);
    assert_eq!((n.code, n.subcode), (1, 2));
    assert_eq!(reason, "OPEN of length 19, shorter than its minimum 29");

    let mut bad_type = keepalive.clone();
    bad_type[18] = 7;
    let (n, reason) = malformed(&bad_type);
    assert_eq!(
        n,
        Notification {
            code: 1,
            subcode: 3,
            data: vec![7]
        }
    );
    assert_eq!(reason, "unknown message type 7");

    // Incomplete input is not an error.
    assert_eq!(decode(&[], true), Ok(None));
    assert_eq!(decode(&keepalive[..18], true), Ok(None));
    let open = encode(&Message::Open(full_open()), &EncodeContext::default()).unwrap();
    assert_eq!(decode(&open[..open.len() - 1], true), Ok(None));
}

#[test]
fn bad_opens_get_the_rfc_notification_and_a_sentence() {
    let id = [192, 0, 2, 1];
    let caps = capability_param(&[65, 4, 0, 0, 0xfd, 0xe9]);

    let (n, reason) = malformed(&open_bytes(4, 65001, 90, id, &[7, 1, 0]));
    assert_eq!(
        n,
        Notification {
            code: 2,
            subcode: 4,
            data: vec![7]
        }
    );
    assert_eq!(reason, "OPEN: unknown optional parameter 7");

    let (n, reason) = malformed(&open_bytes(3, 65001, 90, id, &caps));
    assert_eq!((n.code, n.subcode, n.data), (2, 1, vec![0, 4]));
    assert_eq!(reason, "OPEN: unsupported BGP version 3 (vipam speaks 4)");

    let (n, reason) = malformed(&open_bytes(4, 65001, 2, id, &caps));
    assert_eq!((n.code, n.subcode), (2, 6));
    assert_eq!(
        reason,
        "OPEN: unacceptable hold time 2 s (must be 0 or at least 3)"
    );

    let (n, reason) = malformed(&open_bytes(4, 65001, 90, [0, 0, 0, 0], &caps));
    assert_eq!((n.code, n.subcode), (2, 3));
    assert_eq!(
        reason,
        "OPEN: BGP identifier 0.0.0.0 is not a unicast address"
    );

    let (n, reason) = malformed(&open_bytes(
        4,
        65001,
        90,
        id,
        &capability_param(&[65, 3, 0, 0, 1]),
    ));
    assert_eq!((n.code, n.subcode), (2, 0));
    assert_eq!(
        reason,
        "OPEN: 4-octet ASN capability of length 3 (must be 4)"
    );

    let (n, reason) = malformed(&open_bytes(4, 65001, 90, id, &[2, 4, 65, 4, 0, 0]));
    assert_eq!((n.code, n.subcode), (2, 0));
    assert_eq!(
        reason,
        "OPEN: capability 65 of length 4 overruns its optional parameter"
    );

    // Optional parameters length larger than what follows.
    let mut lying = open_bytes(4, 65001, 90, id, &caps);
    lying[28] = 200;
    let (n, _) = malformed(&lying);
    assert_eq!(n.code, 2);
}

/// What BIRD, GoBGP or a vendor may send: unknown capabilities, families vipam does not speak
/// (also ones netgauze does not know), capabilities spread over several parameters, the
/// pre-standard route refresh code.
#[test]
fn opens_with_foreign_capabilities_are_read() {
    let caps_a = capability_param(&[
        1, 4, 0, 1, 0, 1, // IPv4 unicast
        1, 4, 0, 25, 0, 70, // L2VPN EVPN
        1, 4, 0x12, 0x34, 0, 200, // an AFI/SAFI pair nobody knows
        128, 0, // route refresh, pre-standard
        70, 0, // enhanced route refresh
        73, 5, 3, b'r', b't', b'r', 0, // FQDN "rtr"
        69, 4, 0, 1, 1, 1, // ADD-PATH
    ]);
    let caps_b = capability_param(&[
        64, 14, 0x40, 0x5a, // graceful restart, N bit, 90 s
        0, 1, 1, 0x80, // IPv4 F
        0, 2, 1, 0x00, // IPv6 no F
        0x12, 0x34, 0, 0x80, // unknown family, F
        65, 4, 0xfa, 0x56, 0xea, 0x01, // 4-octet ASN 4200000001
        250, 2, 9, 9, // experimental
    ]);
    let mut params = caps_a;
    params.extend(caps_b);
    let bytes = open_bytes(4, 23456, 9, [198, 51, 100, 1], &params);
    let Message::Open(open) = decode_one(&bytes, false) else {
        panic!()
    };
    assert_eq!(open.asn(), 4_200_000_001);
    assert_eq!(open.hold_time, 9);
    assert_eq!(open.router_id, Ipv4Addr::new(198, 51, 100, 1));
    let caps = open.capabilities;
    assert_eq!(caps.families, [Family::Ipv4Unicast].into());
    assert_eq!(caps.other_families, vec![(25, 70), (0x1234, 200)]);
    assert!(caps.route_refresh);
    assert_eq!(
        caps.graceful_restart,
        Some(GracefulRestart {
            restarting: false,
            restart_time: 90,
            families: [Family::Ipv4Unicast].into(),
        })
    );
    assert_eq!(caps.unknown, vec![70, 73, 69, 250]);
}

#[test]
fn received_messages_vipam_does_not_model_are_still_read() {
    // A NOTIFICATION with a code netgauze does not know.
    let bytes = hex(&format!("{MARKER} 0017 03 0b 63 01 02"));
    assert_eq!(
        decode_one(&bytes, true),
        Message::Notification(Notification {
            code: 11,
            subcode: 99,
            data: vec![1, 2]
        })
    );
    // A ROUTE-REFRESH for a family nobody knows (to be ignored above, RFC 2918 4).
    let bytes = hex(&format!("{MARKER} 0017 05 1234 00 c8"));
    assert_eq!(
        decode_one(&bytes, true),
        Message::RouteRefresh {
            afi: 0x1234,
            safi: 200
        }
    );
    let bytes = hex(&format!("{MARKER} 0018 05 0001 00 01 00"));
    let (n, reason) = malformed(&bytes);
    assert_eq!((n.code, n.subcode), (7, 1));
    assert_eq!(reason, "ROUTE-REFRESH of length 24 (must be 23)");
}

#[test]
fn malformed_updates_are_update_errors() {
    // ORIGIN 7.
    let bytes = hex(&format!("{MARKER} 001b 02 0000 0004 40 01 01 07"));
    let error = decode(&bytes, true).unwrap_err();
    let n = error.notification().unwrap();
    assert_eq!((n.code, n.subcode), (3, 6), "{error}");
    assert!(error.to_string().starts_with("UPDATE: "), "{error}");
    // Total path attribute length beyond the message.
    let bytes = hex(&format!("{MARKER} 0017 02 0000 0010"));
    let error = decode(&bytes, true).unwrap_err();
    assert_eq!(error.notification().unwrap().code, 3, "{error}");
    // An AS_PATH read with the wrong ASN size is malformed too.
    let update = announce(
        Family::Ipv4Unicast,
        &["198.51.100.1/32"],
        RouteAttrs::default(),
    );
    let bytes = encode(&Message::Update(update), &ebgp(65001, false)).unwrap();
    let error = decode(&bytes, true).unwrap_err();
    assert_eq!(error.notification().unwrap().code, 3, "{error}");
}

#[test]
fn what_cannot_be_encoded_is_an_error() {
    let v4 = announce(
        Family::Ipv4Unicast,
        &["198.51.100.1/32"],
        RouteAttrs::default(),
    );
    let mut no_next_hop = ebgp(65001, true);
    no_next_hop.next_hop_v4 = None;
    no_next_hop.next_hop_v6 = None;
    let error = encode(&Message::Update(v4), &no_next_hop).unwrap_err();
    assert_eq!(error.notification(), None);
    assert!(error.to_string().contains("no IPv4 next hop"), "{error}");
    let v6 = announce(
        Family::Ipv6Unicast,
        &["2001:db8::1/128"],
        RouteAttrs::default(),
    );
    assert!(encode(&Message::Update(v6), &no_next_hop).is_err());
    // Withdrawals need no next hop.
    assert!(
        encode(
            &Message::Update(withdraw(Family::Ipv6Unicast, &["2001:db8::1/128"])),
            &no_next_hop
        )
        .is_ok()
    );

    let mixed = announce(
        Family::Ipv4Unicast,
        &["2001:db8::1/128"],
        RouteAttrs::default(),
    );
    let error = encode(&Message::Update(mixed), &ebgp(65001, true)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot encode an UPDATE: IPv6 prefix 2001:db8::1/128 in an IPv4 UPDATE"
    );
    // Too many prefixes for 4096 bytes: 1000 /32s take 5000 bytes.
    let many: Vec<IpNet> = (0..1000u32)
        .map(|i| IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(0xc633_0000 + i), 32).unwrap()))
        .collect();
    let big = Update {
        announced: many,
        ..Update::end_of_rib(Family::Ipv4Unicast)
    };
    let error = encode(&Message::Update(big), &ebgp(65001, true)).unwrap_err();
    assert!(error.to_string().contains("more than the 4096"), "{error}");
    let mut open = full_open();
    open.capabilities
        .graceful_restart
        .as_mut()
        .unwrap()
        .restart_time = 4096;
    assert!(encode(&Message::Open(open), &EncodeContext::default()).is_err());
    assert!(encode(&Message::UpdateReceived, &EncodeContext::default()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Fuzzing the decoder's entry point

/// Decodes like a session reads a stream: message after message until an error or the end.
/// Checks what a result may be; panics only if the decoder does.
fn decode_stream(mut bytes: &[u8], four_octet: bool) {
    loop {
        match decode(bytes, four_octet) {
            Ok(None) => return,
            Ok(Some((_, used))) => {
                assert!((19..=4096).contains(&used) && used <= bytes.len());
                bytes = &bytes[used..];
            }
            Err(WireError::Malformed {
                notification,
                reason,
            }) => {
                assert!((1..=7).contains(&notification.code), "{notification:?}");
                assert!(!reason.is_empty());
                return;
            }
            Err(other) => panic!("decode returned an encoding error: {other}"),
        }
    }
}

/// Valid messages of every kind to mutate.
fn seeds() -> Vec<Vec<u8>> {
    let attrs = RouteAttrs {
        local_pref: Some(150),
        communities: communities(&["65000:100", "no-export", "large:65001:1:2"]),
    };
    let mut ibgp = ebgp(65001, true);
    ibgp.ibgp = true;
    ibgp.next_hop_v6_link_local = Some("fe80::11".parse().unwrap());
    let mut foreign_open = open_bytes(
        4,
        65002,
        180,
        [192, 0, 2, 2],
        &capability_param(&[
            1, 4, 0, 1, 0, 1, 1, 4, 0, 2, 0, 1, 2, 0, 64, 6, 0x80, 0x78, 0, 1, 1, 0x80, 65, 4, 0,
            0, 0xfd, 0xea, 73, 5, 3, b'r', b't', b'r', 0, 69, 4, 0, 1, 1, 3,
        ]),
    );
    foreign_open.extend(encode(&Message::Keepalive, &EncodeContext::default()).unwrap());
    let messages: Vec<(Message, EncodeContext)> = vec![
        (Message::Open(full_open()), EncodeContext::default()),
        (Message::Keepalive, EncodeContext::default()),
        (
            Message::Notification(Notification {
                code: 6,
                subcode: 2,
                data: b"\x04bye!".to_vec(),
            }),
            EncodeContext::default(),
        ),
        (
            Message::RouteRefresh { afi: 1, safi: 1 },
            EncodeContext::default(),
        ),
        (
            Message::Update(announce(
                Family::Ipv4Unicast,
                &["198.51.100.1/32", "203.0.113.0/24"],
                attrs.clone(),
            )),
            ebgp(4_200_000_001, false),
        ),
        (
            Message::Update(Update {
                withdrawn: vec![net("198.51.100.7/32")],
                ..announce(Family::Ipv4Unicast, &["198.51.100.1/32"], attrs.clone())
            }),
            ibgp.clone(),
        ),
        (
            Message::Update(Update {
                withdrawn: vec![net("2001:db8:ff::7/128")],
                ..announce(Family::Ipv6Unicast, &["2001:db8:ff::1/128"], attrs.clone())
            }),
            ibgp,
        ),
        (
            Message::Update(withdraw(Family::Ipv6Unicast, &["2001:db8:ff::1/128"])),
            ebgp(65001, true),
        ),
        (
            Message::Update(Update::end_of_rib(Family::Ipv6Unicast)),
            ebgp(65001, true),
        ),
    ];
    let mut seeds: Vec<Vec<u8>> = messages
        .iter()
        .map(|(m, ctx)| encode(m, ctx).unwrap())
        .collect();
    seeds.push(foreign_open);
    seeds
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the byte at (index modulo length).
    Set(usize, u8),
    /// XOR a byte with a bit.
    Flip(usize, u8),
    /// Insert a byte.
    Insert(usize, u8),
    /// Remove a byte.
    Remove(usize),
    /// Write a 16-bit value where a length field (or anything else) is.
    Lie16(usize, u16),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, 1 << bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), any::<u16>()).prop_map(|(i, v)| Mutation::Lie16(i, v)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let len = bytes.len();
    match *mutation {
        Mutation::Set(i, b) => bytes[i % len] = b,
        Mutation::Flip(i, bit) => bytes[i % len] ^= bit,
        Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
        Mutation::Remove(i) => {
            bytes.remove(i % len);
        }
        Mutation::Lie16(i, v) => {
            let at = i % len;
            let end = (at + 2).min(len);
            bytes[at..end].copy_from_slice(&v.to_be_bytes()[..end - at]);
        }
    }
}

/// Offsets of the length fields of the seeds (header length; UPDATE withdrawn and attribute
/// lengths; OPEN parameters length; the first parameter's and capability's lengths).
const LENGTH_OFFSETS: [usize; 6] = [16, 19, 21, 28, 30, 32];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), four in any::<bool>()) {
        decode_stream(&bytes, four);
    }

    /// Random bytes behind a valid header, so netgauze's parsers see them (random bytes
    /// alone almost never pass the marker).
    #[test]
    fn random_bodies_never_panic(
        kind in 1u8..=5,
        body in proptest::collection::vec(any::<u8>(), 0..300),
        four in any::<bool>(),
    ) {
        let mut bytes = vec![0xff; 16];
        bytes.extend(((19 + body.len()) as u16).to_be_bytes());
        bytes.push(kind);
        bytes.extend(&body);
        decode_stream(&bytes, four);
    }

    #[test]
    fn mutated_messages_never_panic(
        seed in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
        four in any::<bool>(),
    ) {
        let seeds = seeds();
        let mut bytes = seed.get(&seeds).clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        decode_stream(&bytes, four);
    }

    #[test]
    fn truncated_and_lying_messages_never_panic(
        seed in any::<prop::sample::Index>(),
        field in any::<prop::sample::Index>(),
        value in any::<u16>(),
        fix_header in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        four in any::<bool>(),
    ) {
        let seeds = seeds();
        let mut bytes = seed.get(&seeds).clone();
        let at = *field.get(&LENGTH_OFFSETS);
        if at + 2 <= bytes.len() {
            if at == 28 || at == 30 || at == 32 {
                bytes[at] = value as u8;
            } else {
                bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep);
        if fix_header && bytes.len() >= 19 {
            // The header agrees with what is there, so the body's own lengths are what lie.
            let len = bytes.len() as u16;
            bytes[16..18].copy_from_slice(&len.to_be_bytes());
        }
        decode_stream(&bytes, four);
    }

    /// Random UPDATEs encode (or fail to, over 4096 bytes), decode back as traffic and read
    /// back the same through netgauze; `encoded_len` agrees with the bytes.
    #[test]
    fn random_updates_round_trip(
        v6 in any::<bool>(),
        announced in proptest::collection::btree_set(any::<u32>(), 0..40),
        withdrawn in proptest::collection::btree_set(any::<u32>(), 0..40),
        standard in proptest::collection::btree_set(any::<u32>(), 0..80),
        large in proptest::collection::btree_set((any::<u32>(), any::<u32>(), any::<u32>()), 0..30),
        local_pref in proptest::option::of(any::<u32>()),
        asn in any::<u32>(),
        four in any::<bool>(),
        ibgp in any::<bool>(),
    ) {
        let prefix = |i: &u32| -> IpNet {
            if v6 {
                IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(*i)), 128).unwrap())
            } else {
                // 10.0.0.0/8 host routes, never multicast or broadcast.
                IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)), 32).unwrap())
            }
        };
        let announced: BTreeSet<IpNet> = announced.iter().map(prefix).collect();
        let withdrawn: Vec<IpNet> = withdrawn.iter().map(prefix).filter(|p| !announced.contains(p)).collect::<BTreeSet<_>>().into_iter().collect();
        let mut communities: BTreeSet<Community> = standard.into_iter().map(Community::Standard).collect();
        communities.extend(large.into_iter().map(|(global, local1, local2)| Community::Large { global, local1, local2 }));
        let update = Update {
            family: if v6 { Family::Ipv6Unicast } else { Family::Ipv4Unicast },
            withdrawn,
            attrs: RouteAttrs { local_pref, communities },
            announced: announced.into_iter().collect(),
        };
        let mut ctx = ebgp(asn, four);
        ctx.ibgp = ibgp;
        match encode(&Message::Update(update.clone()), &ctx) {
            Ok(bytes) => {
                prop_assert_eq!(encoded_len(&update, &ctx).unwrap(), bytes.len());
                prop_assert_eq!(decode_one(&bytes, four), Message::UpdateReceived);
                let got = seen(&bytes, four);
                prop_assert_eq!(&got.announced, &update.announced);
                prop_assert_eq!(&got.withdrawn, &update.withdrawn);
                let mut sorted = got.attribute_codes.clone();
                sorted.sort();
                prop_assert_eq!(&got.attribute_codes, &sorted);
                if !update.announced.is_empty() {
                    prop_assert_eq!(&got.communities, &update.attrs.communities);
                }
            }
            Err(WireError::Encode { reason, .. }) => {
                prop_assert!(reason.contains("more than the 4096"), "{}", reason);
                prop_assert!(encoded_len(&update, &ctx).unwrap() > 4096);
            }
            Err(other) => prop_assert!(false, "{}", other),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The RIB-out packs UPDATEs by `core::bgp::rib_out::encoded_size`; the codec must produce
    /// exactly that many bytes, or a packed UPDATE could pass 4096 on the wire.
    #[test]
    fn rib_out_sizes_are_the_codecs(
        v6 in any::<bool>(),
        prefixes in proptest::collection::btree_set((any::<u32>(), 0u8..=32), 0..60),
        withdraw in any::<bool>(),
        standard in proptest::collection::btree_set(any::<u32>(), 0..80),
        large in proptest::collection::btree_set((any::<u32>(), any::<u32>(), any::<u32>()), 0..30),
        local_pref in proptest::option::of(any::<u32>()),
        asn in 1u32..,
        four in any::<bool>(),
        ibgp in any::<bool>(),
    ) {
        use crate::core::bgp::rib_out::{Encoding, encoded_size};
        let nets: BTreeSet<IpNet> = prefixes
            .iter()
            .map(|(i, len)| {
                if v6 {
                    let len = u8::min(*len * 4, 128);
                    IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(*i)), len).unwrap().trunc())
                } else {
                    IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)), *len).unwrap().trunc())
                }
            })
            .collect();
        let mut communities: BTreeSet<Community> = standard.into_iter().map(Community::Standard).collect();
        communities.extend(large.into_iter().map(|(global, local1, local2)| Community::Large { global, local1, local2 }));
        let family = if v6 { Family::Ipv6Unicast } else { Family::Ipv4Unicast };
        let nets: Vec<IpNet> = nets.into_iter().collect();
        let update = if withdraw {
            Update { family, withdrawn: nets, attrs: RouteAttrs::default(), announced: Vec::new() }
        } else {
            Update { family, withdrawn: Vec::new(), attrs: RouteAttrs { local_pref, communities }, announced: nets }
        };
        let mut ctx = ebgp(asn, four);
        ctx.ibgp = ibgp;
        let encoding = Encoding { local_asn: asn, four_octet_asn: four, ibgp, ipv6_next_hop_len: 16 };
        let predicted = encoded_size(&update, &encoding);
        match encoded_len(&update, &ctx) {
            Ok(len) => prop_assert_eq!(predicted, len),
            Err(WireError::Encode { .. }) => prop_assert!(predicted > 4096, "refused at {predicted} bytes"),
            Err(other) => prop_assert!(false, "{other}"),
        }
    }
}
