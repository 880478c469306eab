use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::core::bgp::config::{AnnouncementSpec, PeerSpec};
use crate::core::bgp::message::Community;
use crate::core::ownership::ServiceOnAddress;
use crate::core::selector::LabelSelector;

fn node(name: &str) -> NodeView {
    NodeView {
        name: name.to_string(),
        labels: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
        live: true,
        ..NodeView::default()
    }
}

fn peer(name: &str, address: &str) -> Peer {
    Peer::parse(PeerSpec {
        name: name.into(),
        peer_address: address.into(),
        peer_asn: 65000,
        my_asn: 65001,
        peer_port: 179,
        hold_time: "9s".into(),
        graceful_restart: true,
        ..PeerSpec::default()
    })
    .unwrap()
}

fn announcement(name: &str) -> Announcement {
    Announcement::parse(AnnouncementSpec {
        name: name.into(),
        aggregation_length: 32,
        aggregation_length_v6: 128,
        ..AnnouncementSpec::default()
    })
    .unwrap()
}

fn service(local: bool, ready: &[&str]) -> ServiceOnAddress {
    ServiceOnAddress {
        namespace: "apps".into(),
        name: "web".into(),
        local_traffic: local,
        ready_nodes: ready.iter().map(|n| n.to_string()).collect(),
        ..ServiceOnAddress::default()
    }
}

fn address(ip: &str, services: Vec<ServiceOnAddress>) -> AddressView {
    AddressView {
        ip: ip.parse().unwrap(),
        pool: "routed".into(),
        services,
    }
}

fn selector(key: &str, value: &str) -> LabelSelector {
    LabelSelector::new(BTreeMap::from([(key.into(), value.into())]), []).unwrap()
}

fn prefixes(routes: &PeerRoutes, peer: &str) -> Vec<String> {
    routes
        .get(peer)
        .map(|r| r.keys().map(|p| p.to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn cluster_traffic_is_announced_by_every_eligible_node() {
    let peers = [peer("tor", "192.0.2.1")];
    let announcements = [announcement("all")];
    let web = address("198.51.100.7", vec![service(false, &[])]);
    let mut dead = node("n-dead");
    dead.live = false;
    let mut excluded = node("n-excluded");
    excluded.excluded = true;
    let mut cordoned = node("n-cordoned");
    cordoned.cordoned = true;
    let nodes = [node("n1"), node("n2"), dead, excluded, cordoned];
    assert_eq!(
        announcing_nodes(&web, &peers, &announcements, &nodes),
        ["n1", "n2"]
    );
    for n in &nodes {
        let routes = node_routes(n, &peers, &announcements, std::slice::from_ref(&web));
        let expected: Vec<String> = if ["n1", "n2"].contains(&n.name.as_str()) {
            vec!["198.51.100.7/32".into()]
        } else {
            vec![]
        };
        assert_eq!(prefixes(&routes, "tor"), expected, "{}", n.name);
    }
}

#[test]
fn local_traffic_is_announced_only_where_an_endpoint_is_ready_and_moves_with_it() {
    let peers = [peer("tor", "192.0.2.1")];
    let announcements = [announcement("all")];
    let nodes = [node("n1"), node("n2"), node("n3")];
    let on_n2 = address("198.51.100.7", vec![service(true, &["n2"])]);
    assert_eq!(
        announcing_nodes(&on_n2, &peers, &announcements, &nodes),
        ["n2"]
    );
    let on_n3 = address("198.51.100.7", vec![service(true, &["n3"])]);
    assert_eq!(
        announcing_nodes(&on_n3, &peers, &announcements, &nodes),
        ["n3"]
    );
    let nowhere = address("198.51.100.7", vec![service(true, &[])]);
    assert_eq!(
        explain(&nowhere, &peers, &announcements, &nodes),
        Some(Unserved::NoEligibleNode(vec![
            ("n1".into(), Blocked::NoReadyEndpoint),
            ("n2".into(), Blocked::NoReadyEndpoint),
            ("n3".into(), Blocked::NoReadyEndpoint),
        ]))
    );
}

#[test]
fn prefixes_go_to_peers_of_their_family_named_by_the_announcement() {
    let peers = [
        peer("tor-v4", "192.0.2.1"),
        peer("tor-v6", "2001:db8::1"),
        peer("other", "192.0.2.2"),
    ];
    let mut only_tors = announcement("tors");
    only_tors.peers = vec!["tor-v4".into(), "tor-v6".into()];
    let addresses = [
        address("198.51.100.7", vec![service(false, &[])]),
        address("2001:db8:5::7", vec![service(false, &[])]),
    ];
    let routes = node_routes(&node("n1"), &peers, &[only_tors], &addresses);
    assert_eq!(prefixes(&routes, "tor-v4"), ["198.51.100.7/32"]);
    assert_eq!(prefixes(&routes, "tor-v6"), ["2001:db8:5::7/128"]);
    assert!(!routes.contains_key("other"));
}

#[test]
fn selectors_of_peers_and_announcements_pick_the_nodes() {
    let mut rack2_peer = peer("tor", "192.0.2.1");
    rack2_peer.node_selector = Some(selector("rack", "r2"));
    let web = address("198.51.100.7", vec![service(false, &[])]);
    let nodes = [node("n1")];
    assert_eq!(
        explain(&web, &[rack2_peer.clone()], &[announcement("all")], &nodes),
        Some(Unserved::NoEligibleNode(vec![(
            "n1".into(),
            Blocked::NoPeer
        )]))
    );
    let mut rack2 = announcement("rack2");
    rack2.node_selector = Some(selector("rack", "r2"));
    assert_eq!(
        explain(&web, &[peer("tor", "192.0.2.1")], &[rack2], &nodes),
        Some(Unserved::NoNodeSelected {
            announcements: vec!["rack2".into()],
            nodes: 1
        })
    );
    let mut other_pool = announcement("other");
    other_pool.ip_pools = vec!["elsewhere".into()];
    assert_eq!(
        explain(&web, &[peer("tor", "192.0.2.1")], &[other_pool], &nodes),
        Some(Unserved::NoAnnouncement)
    );
    assert!(!peers_with(
        &node("n1"),
        &[rack2_peer],
        &[announcement("all")]
    ));
    assert!(peers_with(
        &node("n1"),
        &[peer("tor", "192.0.2.1")],
        &[announcement("all")]
    ));
}

#[test]
fn aggregates_are_one_route_and_attributes_merge() {
    let peers = [peer("tor", "192.0.2.1")];
    let mut wide = announcement("a-wide");
    wide.aggregation_length = 24;
    wide.attrs.local_pref = Some(200);
    wide.attrs.communities = BTreeSet::from([Community::parse("65000:1").unwrap()]);
    let mut tagged = announcement("b-tagged");
    tagged.aggregation_length = 24;
    tagged.attrs.local_pref = Some(50);
    tagged.attrs.communities = BTreeSet::from([Community::parse("large:65000:1:2").unwrap()]);
    let addresses = [
        address("198.51.100.7", vec![service(false, &[])]),
        address("198.51.100.9", vec![service(false, &[])]),
    ];
    let routes = node_routes(&node("n1"), &peers, &[tagged, wide], &addresses);
    assert_eq!(prefixes(&routes, "tor"), ["198.51.100.0/24"]);
    let attrs = &routes["tor"][&"198.51.100.0/24".parse::<IpNet>().unwrap()];
    assert_eq!(attrs.local_pref, Some(200), "the first by name sets it");
    assert_eq!(attrs.communities.len(), 2);
}

#[test]
fn an_address_without_services_is_not_announced() {
    let peers = [peer("tor", "192.0.2.1")];
    let released = address("198.51.100.7", vec![]);
    assert!(
        node_routes(
            &node("n1"),
            &peers,
            &[announcement("all")],
            std::slice::from_ref(&released)
        )
        .is_empty()
    );
    assert_eq!(
        explain(&released, &peers, &[announcement("all")], &[node("n1")]),
        None
    );
}

proptest! {
    /// `explain` speaks exactly when no node announces, and the nodes that announce are those
    /// whose routes carry the address.
    #[test]
    fn explain_speaks_exactly_when_nobody_announces(
        flags in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()), 0..5),
        local in any::<bool>(),
        v6 in any::<bool>(),
        peer_v6 in any::<bool>(),
    ) {
        let nodes: Vec<NodeView> = flags.iter().enumerate().map(|(i, (live, excluded, cordoned, ready, rack2))| {
            let mut n = node(&format!("n{i}"));
            n.live = *live;
            n.excluded = *excluded;
            n.cordoned = *cordoned;
            if *rack2 {
                n.labels.insert("rack".into(), "r2".into());
            }
            let _ = ready;
            n
        }).collect();
        let ready: Vec<&str> = flags.iter().enumerate().filter(|(_, f)| f.3).map(|(i, _)| nodes[i].name.as_str()).collect();
        let ip: IpAddr = if v6 { "2001:db8::7".parse().unwrap() } else { "198.51.100.7".parse().unwrap() };
        let web = AddressView { ip, pool: "routed".into(), services: vec![service(local, &ready)] };
        let mut p = peer("tor", if peer_v6 { "2001:db8::1" } else { "192.0.2.1" });
        p.node_selector = Some(selector("rack", "r1"));
        let peers = [p];
        let announcements = [announcement("all")];
        let announcing = announcing_nodes(&web, &peers, &announcements, &nodes);
        prop_assert_eq!(explain(&web, &peers, &announcements, &nodes).is_none(), !announcing.is_empty());
        for n in &nodes {
            let routes = node_routes(n, &peers, &announcements, std::slice::from_ref(&web));
            prop_assert_eq!(routes.contains_key("tor"), announcing.contains(&n.name));
        }
    }
}
