//! The node's network interfaces: list them (netlink RTM_GETLINK, [`super::netlink`]), find the one holding the
//! default route, pick one by name patterns.
//!
//! Everything reads the network namespace of the calling *thread* (netlink sockets are
//! created there; routes come from `/proc/thread-self/net`), so it also works on a thread that
//! entered another namespace with setns(2).

use std::io;

use regex::Regex;

use netlink_packet_core::NLM_F_DUMP;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

use super::NetError;
use super::netlink::Netlink;
use super::packet::MacAddr;

/// RTF_UP and RTF_REJECT of route flags.
const RTF_UP: u32 = 0x1;
const RTF_REJECT: u32 = 0x200;

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// Its Ethernet address; `None` for interfaces without a 6-byte link-layer address.
    pub mac: Option<MacAddr>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// The link has carrier (IFF_LOWER_UP): a cable, a switch port, a bond member that is up.
    pub carrier: bool,
}

impl Interface {
    /// Whether announcements can reach the LAN through it now: an Ethernet address,
    /// administratively up, and carrier.
    pub fn usable(&self) -> bool {
        self.mac.is_some() && self.up && self.carrier
    }
}

/// Reads a link message (from a dump or a notification); `None` without a name.
pub(crate) fn parse_link(message: &LinkMessage) -> Option<Interface> {
    let mut name = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    let flags = message.header.flags;
    Some(Interface {
        name: name?,
        index: message.header.index,
        mac: mac.map(MacAddr),
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
    })
}

pub(crate) fn list_with(nl: &mut Netlink) -> Result<Vec<Interface>, NetError> {
    let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
    let replies = nl
        .request(request, NLM_F_DUMP)
        .map_err(|e| NetError::Netlink {
            op: "list interfaces",
            source: e,
        })?;
    let mut out: Vec<Interface> = replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => parse_link(l),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The interface of the best IPv4 default route in `/proc/net/route` text (lowest metric).
pub fn default_route_v4(route_table: &str) -> Option<String> {
    route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            (f[1] == "00000000"
                && f[7] == "00000000"
                && flags & RTF_UP != 0
                && flags & RTF_REJECT == 0)
                .then(|| (metric, f[0].to_owned()))
        })
        .min()
        .map(|(_, name)| name)
}

/// The interface of the best IPv6 default route in `/proc/net/ipv6_route` text (lowest
/// metric; the kernel's unreachable default on `lo` is skipped).
pub fn default_route_v6(route_table: &str) -> Option<String> {
    route_table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                return None;
            }
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            let is_default = f[0].bytes().all(|b| b == b'0') && f[1] == "00";
            (is_default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && f[9] != "lo")
                .then(|| (metric, f[9].to_owned()))
        })
        .min()
        .map(|(_, name)| name)
}

fn read_proc_net(file: &str) -> io::Result<String> {
    // thread-self: the namespace of this thread, which may have called setns(2); /proc/net
    // would be the main thread's.
    std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
        .or_else(|_| std::fs::read_to_string(format!("/proc/net/{file}")))
}

/// The name of the interface holding the default route: IPv4 first, then IPv6.
pub fn default_route_interface() -> Option<String> {
    read_proc_net("route")
        .ok()
        .and_then(|t| default_route_v4(&t))
        .or_else(|| {
            read_proc_net("ipv6_route")
                .ok()
                .and_then(|t| default_route_v6(&t))
        })
}

/// Picks the interface for an announcement: the first name, in sorted order, matched by any of
/// `patterns` (unanchored regular expressions, as written in L2Announcement
/// `spec.interfaces`); with no patterns, the interface of the default route
/// (`default_route`). Loopback is never picked.
pub fn pick<'a>(
    interfaces: &'a [Interface],
    patterns: &[Regex],
    default_route: Option<&str>,
) -> Option<&'a Interface> {
    let mut sorted: Vec<&Interface> = interfaces.iter().filter(|i| i.name != "lo").collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    if patterns.is_empty() {
        let name = default_route?;
        return sorted.into_iter().find(|i| i.name == name);
    }
    sorted
        .into_iter()
        .find(|i| patterns.iter().any(|p| p.is_match(&i.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth1\t00000000\t0102000A\t0003\t0\t0\t200\t00000000\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
";
    const ROUTE6: &str = "\
20010db8000100000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000100000000000000000001 00000400 00000001 00000000 00000003 eth2
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo
";

    #[test]
    fn default_routes() {
        assert_eq!(default_route_v4(ROUTE).as_deref(), Some("eth0"));
        assert_eq!(default_route_v6(ROUTE6).as_deref(), Some("eth2"));
        assert_eq!(default_route_v4("Iface\tDestination\n"), None);
        assert_eq!(default_route_v4("garbage\nx y z\n"), None);
        assert_eq!(default_route_v6(ROUTE6.lines().last().unwrap()), None);
    }

    fn iface(name: &str, index: u32) -> Interface {
        Interface {
            name: name.into(),
            index,
            mac: Some(MacAddr([2, 0, 0, 0, 0, index as u8])),
            up: true,
            carrier: true,
        }
    }

    #[test]
    fn picks_first_sorted_match_or_default_route() {
        let all = vec![
            iface("lo", 1),
            iface("eth1", 3),
            iface("eth0", 2),
            iface("bond0", 4),
        ];
        let re = |s: &str| Regex::new(s).unwrap();
        type Case<'a> = (&'a str, Vec<Regex>, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            ("first sorted match", vec![re("^eth")], None, Some("eth0")),
            (
                "any pattern",
                vec![re("^bond"), re("^eth1$")],
                None,
                Some("bond0"),
            ),
            ("no match", vec![re("^wlan")], Some("eth0"), None),
            ("default route", vec![], Some("eth1"), Some("eth1")),
            ("no default route", vec![], None, None),
            ("never loopback", vec![re(".")], None, Some("bond0")),
            ("default route on lo", vec![], Some("lo"), None),
        ];
        for (name, patterns, default, want) in cases {
            assert_eq!(
                pick(&all, &patterns, default).map(|i| i.name.as_str()),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn parses_link_messages_from_the_wire() {
        use crate::agent::net::netlink::{messages, tests::datagram};
        use netlink_packet_core::NetlinkPayload;
        let mut message = LinkMessage::default();
        message.header.index = 7;
        message.header.flags = LinkFlags::Up | LinkFlags::Running | LinkFlags::LowerUp;
        message
            .attributes
            .push(LinkAttribute::IfName("eth0".into()));
        message
            .attributes
            .push(LinkAttribute::Address(vec![2, 0, 0, 0, 0, 9]));
        let read = |m: LinkMessage| {
            let bytes = datagram(vec![RouteNetlinkMessage::NewLink(m)]);
            match messages(&bytes).next().unwrap().unwrap().payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => parse_link(&l),
                other => panic!("not a link message: {other:?}"),
            }
        };
        assert_eq!(
            read(message.clone()),
            Some(Interface {
                name: "eth0".into(),
                index: 7,
                mac: Some(MacAddr([2, 0, 0, 0, 0, 9])),
                up: true,
                carrier: true,
            })
        );
        let mut no_carrier = message.clone();
        no_carrier.header.flags = LinkFlags::Up;
        let no_carrier = read(no_carrier).unwrap();
        assert!(no_carrier.up && !no_carrier.carrier && !no_carrier.usable());
        // A tunnel: no 6-byte link-layer address, so never usable.
        let mut tunnel = message.clone();
        tunnel.attributes[1] = LinkAttribute::Address(vec![192, 0, 2, 1]);
        assert!(read(tunnel).is_some_and(|i| i.mac.is_none() && !i.usable()));
        let mut nameless = message;
        nameless.attributes.remove(0);
        assert_eq!(read(nameless), None);
    }
}
