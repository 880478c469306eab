//! BGPPeer and BGPAnnouncement as the speaker needs them, parsed from their specs. The webhook,
//! `vipam check`, the controller and the agents all parse with these functions, so they agree
//! on what is valid. Problems are collected (all of them, with the field path), not the first.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::message::{AS_TRANS, Community, RouteAttrs};
use crate::core::selector::LabelSelector;

/// Default hold time: the router drops a crashed node's routes after it.
pub const DEFAULT_HOLD_TIME: u16 = 9;
/// Restart time advertised with graceful restart (RFC 4724): how long the router keeps a
/// restarting agent's routes. An agent restarts in a few seconds; 120 s is MetalLB's and
/// GoBGP's default too.
pub const RESTART_TIME: u16 = 120;

/// A BGPPeer's spec, fields as written (selectors already converted).
#[derive(Debug, Clone, Default)]
pub struct PeerSpec {
    pub name: String,
    pub peer_address: String,
    pub peer_asn: u32,
    pub my_asn: u32,
    pub peer_port: u16,
    pub source_address: Option<String>,
    pub hold_time: String,
    pub keepalive_time: Option<String>,
    pub ebgp_multi_hop: Option<u8>,
    /// (namespace, name, key) of the MD5 password's Secret.
    pub password_secret_ref: Option<(String, String, String)>,
    pub node_selector: Option<LabelSelector>,
    pub graceful_restart: bool,
}

/// A valid BGPPeer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub peer_asn: u32,
    pub my_asn: u32,
    pub source: Option<IpAddr>,
    /// Seconds proposed; 0 = no keepalives and no hold timer.
    pub hold_time: u16,
    /// Seconds between KEEPALIVEs; None = a third of the negotiated hold time.
    pub keepalive: Option<u16>,
    /// IP TTL / hop limit of the session's packets.
    pub ttl: u8,
    pub password_secret_ref: Option<(String, String, String)>,
    pub node_selector: Option<LabelSelector>,
    pub graceful_restart: bool,
}

impl Peer {
    /// An internal session (same AS on both sides).
    pub fn ibgp(&self) -> bool {
        self.peer_asn == self.my_asn
    }

    /// Whether the peer is for `node_labels`.
    pub fn selects_node(&self, node_labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.node_selector
            .as_ref()
            .is_none_or(|s| s.matches(node_labels))
    }
}

/// Parses a Go-style duration of whole seconds (`9s`, `90s`, `1m30s`, `1h`, `0`, `500ms` is
/// refused: BGP timers are whole seconds).
pub fn parse_seconds(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut millis: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration (write `9s`, `90s` or `1m30s`)"
            ));
        }
        let number: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let factor: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => {
                return Err(format!(
                    "{text:?} needs a unit (`s`, `m` or `h`), as in `9s`"
                ));
            }
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use `s`, `m` or `h`)"
                ));
            }
        };
        millis = millis.saturating_add(number.saturating_mul(factor));
    }
    if !millis.is_multiple_of(1_000) {
        return Err(format!("{text:?} is not a whole number of seconds"));
    }
    u64::try_from(millis / 1_000).map_err(|_| format!("{text:?} is too long"))
}

/// Checks an AS number as vipam uses it: 0 and AS_TRANS (23456) are reserved.
fn check_asn(field: &str, asn: u32, problems: &mut Vec<String>) {
    if asn == 0 {
        problems.push(format!("{field}: 0 is not an AS number (1 to 4294967295)"));
    } else if asn == u32::from(AS_TRANS) {
        problems.push(format!(
            "{field}: 23456 is AS_TRANS, reserved for 2-byte speakers (RFC 6793)"
        ));
    }
}

impl Peer {
    /// Parses a spec, or says every problem with its field path (`spec.holdTime: ...`).
    pub fn parse(spec: PeerSpec) -> Result<Peer, Vec<String>> {
        let mut problems = Vec::new();
        let address = match spec.peer_address.trim().parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                problems.push(format!(
                    "spec.peerAddress: {ip} cannot be a BGP peer (unspecified or multicast)"
                ));
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                problems.push(format!(
                    "spec.peerAddress: {:?} is not an IPv4 or IPv6 address",
                    spec.peer_address
                ));
                None
            }
        };
        check_asn("spec.peerASN", spec.peer_asn, &mut problems);
        check_asn("spec.myASN", spec.my_asn, &mut problems);
        if spec.peer_port == 0 {
            problems.push("spec.peerPort: 0 is not a TCP port".into());
        }
        let source = match &spec.source_address {
            None => None,
            Some(text) => match text.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    if let Some(peer) = address
                        && peer.is_ipv4() != ip.is_ipv4()
                    {
                        problems.push(format!(
                            "spec.sourceAddress: {ip} is not of the family of peerAddress {peer}"
                        ));
                    }
                    Some(ip)
                }
                Err(_) => {
                    problems.push(format!(
                        "spec.sourceAddress: {text:?} is not an IPv4 or IPv6 address"
                    ));
                    None
                }
            },
        };
        let hold_time = match parse_seconds(&spec.hold_time) {
            Ok(0) => Some(0),
            Ok(secs @ 3..=65535) => Some(secs as u16),
            Ok(secs) => {
                problems.push(format!(
                    "spec.holdTime: {secs}s is not allowed (0, or 3s to 65535s; RFC 4271)"
                ));
                None
            }
            Err(err) => {
                problems.push(format!("spec.holdTime: {err}"));
                None
            }
        };
        let keepalive = match &spec.keepalive_time {
            None => None,
            Some(text) => match parse_seconds(text) {
                Ok(secs) => match hold_time {
                    Some(0) => {
                        problems.push(
                            "spec.keepaliveTime: set, but holdTime 0 turns keepalives off".into(),
                        );
                        None
                    }
                    Some(hold) if secs == 0 || secs >= u64::from(hold) => {
                        problems.push(format!(
                            "spec.keepaliveTime: {secs}s must be above 0 and below holdTime \
                             ({hold}s); a third of it is usual"
                        ));
                        None
                    }
                    _ => Some(secs.min(u64::from(u16::MAX)) as u16),
                },
                Err(err) => {
                    problems.push(format!("spec.keepaliveTime: {err}"));
                    None
                }
            },
        };
        let ibgp = spec.peer_asn == spec.my_asn;
        let ttl = match spec.ebgp_multi_hop {
            Some(0) => {
                problems.push("spec.ebgpMultiHop: a TTL is 1 to 255".into());
                1
            }
            Some(ttl) => ttl,
            None if ibgp => 64,
            None => 1,
        };
        if let Some((namespace, name, key)) = &spec.password_secret_ref {
            for (field, value) in [("namespace", namespace), ("name", name), ("key", key)] {
                if value.trim().is_empty() {
                    problems.push(format!("spec.passwordSecretRef.{field}: empty"));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Peer {
            name: spec.name,
            address: address.expect("checked above"),
            port: spec.peer_port,
            peer_asn: spec.peer_asn,
            my_asn: spec.my_asn,
            source,
            hold_time: hold_time.expect("checked above"),
            keepalive,
            ttl,
            password_secret_ref: spec.password_secret_ref,
            node_selector: spec.node_selector,
            graceful_restart: spec.graceful_restart,
        })
    }
}

/// A BGPAnnouncement's spec, fields as written (selectors already converted).
#[derive(Debug, Clone, Default)]
pub struct AnnouncementSpec {
    pub name: String,
    pub ip_pools: Vec<String>,
    pub service_selector: Option<LabelSelector>,
    pub node_selector: Option<LabelSelector>,
    pub peers: Vec<String>,
    pub communities: Vec<String>,
    pub local_pref: Option<u32>,
    pub aggregation_length: u8,
    pub aggregation_length_v6: u8,
}

/// A valid BGPAnnouncement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub name: String,
    pub ip_pools: Vec<String>,
    pub service_selector: Option<LabelSelector>,
    pub node_selector: Option<LabelSelector>,
    /// BGPPeer names (empty = all).
    pub peers: Vec<String>,
    pub attrs: RouteAttrs,
    pub aggregation_length: u8,
    pub aggregation_length_v6: u8,
}

impl Announcement {
    /// Parses a spec, or says every problem with its field path.
    pub fn parse(spec: AnnouncementSpec) -> Result<Announcement, Vec<String>> {
        let mut problems = Vec::new();
        let mut communities = BTreeSet::new();
        for (index, text) in spec.communities.iter().enumerate() {
            match Community::parse(text) {
                Ok(community) => {
                    communities.insert(community);
                }
                Err(err) => problems.push(format!("spec.communities[{index}]: {err}")),
            }
        }
        if spec.aggregation_length > 32 {
            problems.push(format!(
                "spec.aggregationLength: {} is longer than an IPv4 prefix (0 to 32)",
                spec.aggregation_length
            ));
        }
        if spec.aggregation_length_v6 > 128 {
            problems.push(format!(
                "spec.aggregationLengthV6: {} is longer than an IPv6 prefix (0 to 128)",
                spec.aggregation_length_v6
            ));
        }
        for (field, names) in [
            ("spec.ipPools", &spec.ip_pools),
            ("spec.peers", &spec.peers),
        ] {
            for (index, name) in names.iter().enumerate() {
                if name.trim().is_empty() {
                    problems.push(format!("{field}[{index}]: empty name"));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Announcement {
            name: spec.name,
            ip_pools: spec.ip_pools,
            service_selector: spec.service_selector,
            node_selector: spec.node_selector,
            peers: spec.peers,
            attrs: RouteAttrs {
                local_pref: spec.local_pref,
                communities,
            },
            aggregation_length: spec.aggregation_length,
            aggregation_length_v6: spec.aggregation_length_v6,
        })
    }

    /// Whether the announcement sends to the BGPPeer `peer`.
    pub fn to_peer(&self, peer: &str) -> bool {
        self.peers.is_empty() || self.peers.iter().any(|p| p == peer)
    }

    /// The prefix announced for `ip`: the address itself, or its covering aggregate.
    pub fn prefix_of(&self, ip: IpAddr) -> ipnet::IpNet {
        let len = match ip {
            IpAddr::V4(_) => self.aggregation_length,
            IpAddr::V6(_) => self.aggregation_length_v6,
        };
        ipnet::IpNet::new(ip, len)
            .map(|net| net.trunc())
            .unwrap_or_else(|_| ipnet::IpNet::from(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_spec() -> PeerSpec {
        PeerSpec {
            name: "tor".into(),
            peer_address: "192.0.2.1".into(),
            peer_asn: 65000,
            my_asn: 4_200_000_001,
            peer_port: 179,
            hold_time: "9s".into(),
            graceful_restart: true,
            ..PeerSpec::default()
        }
    }

    #[test]
    fn durations_are_whole_seconds() {
        for (text, secs) in [
            ("9s", 9),
            ("90s", 90),
            ("1m30s", 90),
            ("1h", 3600),
            ("0", 0),
            ("3000ms", 3),
        ] {
            assert_eq!(parse_seconds(text), Ok(secs), "{text}");
        }
        for bad in ["9", "", "1.5s", "500ms", "9x", "s", "-3s"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_valid_peer_gets_its_defaults() {
        let peer = Peer::parse(peer_spec()).unwrap();
        assert_eq!(peer.hold_time, 9);
        assert_eq!(peer.ttl, 1, "eBGP: directly connected by default");
        assert!(!peer.ibgp());
        let ibgp = Peer::parse(PeerSpec {
            my_asn: 65000,
            ..peer_spec()
        })
        .unwrap();
        assert_eq!(ibgp.ttl, 64);
        let multihop = Peer::parse(PeerSpec {
            ebgp_multi_hop: Some(4),
            keepalive_time: Some("2s".into()),
            source_address: Some("192.0.2.10".into()),
            ..peer_spec()
        })
        .unwrap();
        assert_eq!((multihop.ttl, multihop.keepalive), (4, Some(2)));
    }

    #[test]
    fn every_problem_of_a_peer_is_named_with_its_field() {
        let problems = Peer::parse(PeerSpec {
            peer_address: "192.0.2.300".into(),
            peer_asn: 0,
            my_asn: 23456,
            peer_port: 0,
            source_address: Some("2001:db8::1".into()),
            hold_time: "2s".into(),
            keepalive_time: Some("1x".into()),
            ebgp_multi_hop: Some(0),
            password_secret_ref: Some(("kube-system".into(), "".into(), "password".into())),
            ..peer_spec()
        })
        .unwrap_err();
        let text = problems.join("\n");
        for field in [
            "spec.peerAddress",
            "spec.peerASN",
            "spec.myASN: 23456 is AS_TRANS",
            "spec.peerPort",
            "spec.holdTime: 2s",
            "spec.keepaliveTime",
            "spec.ebgpMultiHop",
            "spec.passwordSecretRef.name",
        ] {
            assert!(text.contains(field), "{field} missing in:\n{text}");
        }
        let mixed = Peer::parse(PeerSpec {
            source_address: Some("2001:db8::1".into()),
            ..peer_spec()
        })
        .unwrap_err();
        assert!(mixed[0].contains("not of the family"), "{mixed:?}");
        let slow_keepalive = Peer::parse(PeerSpec {
            keepalive_time: Some("9s".into()),
            ..peer_spec()
        })
        .unwrap_err();
        assert!(
            slow_keepalive[0].contains("below holdTime"),
            "{slow_keepalive:?}"
        );
    }

    #[test]
    fn announcements_parse_communities_and_aggregate() {
        let spec = AnnouncementSpec {
            name: "routers".into(),
            communities: vec![
                "65000:100".into(),
                "no-export".into(),
                "large:65000:1:2".into(),
            ],
            local_pref: Some(200),
            aggregation_length: 24,
            aggregation_length_v6: 128,
            ..AnnouncementSpec::default()
        };
        let announcement = Announcement::parse(spec.clone()).unwrap();
        assert_eq!(announcement.attrs.communities.len(), 3);
        assert_eq!(
            announcement
                .prefix_of("192.0.2.77".parse().unwrap())
                .to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            announcement
                .prefix_of("2001:db8::7".parse().unwrap())
                .to_string(),
            "2001:db8::7/128"
        );
        assert!(announcement.to_peer("anything"));
        let problems = Announcement::parse(AnnouncementSpec {
            communities: vec!["65000:100".into(), "70000:1".into()],
            aggregation_length: 33,
            aggregation_length_v6: 129,
            peers: vec!["".into()],
            ..spec
        })
        .unwrap_err();
        let text = problems.join("\n");
        for field in [
            "spec.communities[1]",
            "spec.aggregationLength:",
            "spec.aggregationLengthV6",
            "spec.peers[0]",
        ] {
            assert!(text.contains(field), "{field} missing in:\n{text}");
        }
    }
}
