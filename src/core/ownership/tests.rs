use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use proptest::prelude::*;
use regex::Regex;

use super::*;
use crate::core::selector::LabelSelector;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn node(name: &str) -> NodeView {
    NodeView {
        name: name.to_string(),
        labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]),
        live: true,
        interfaces: vec!["eth0".to_string(), "eth1".to_string(), "lo".to_string()],
        default_interface: Some("eth0".to_string()),
        ..NodeView::default()
    }
}

fn rule(name: &str) -> AnnouncementRule {
    AnnouncementRule {
        name: name.to_string(),
        service_selector: None,
        ip_pools: Vec::new(),
        node_selector: None,
        interfaces: Vec::new(),
        mode: AnnounceMode::Arp,
    }
}

fn service(ns: &str, name: &str) -> ServiceOnAddress {
    ServiceOnAddress {
        namespace: ns.to_string(),
        name: name.to_string(),
        ..ServiceOnAddress::default()
    }
}

fn address(text: &str, services: Vec<ServiceOnAddress>) -> AddressView {
    AddressView {
        ip: ip(text),
        pool: "lan".to_string(),
        services,
    }
}

fn selector(key: &str, value: &str) -> LabelSelector {
    LabelSelector::new(BTreeMap::from([(key.to_string(), value.to_string())]), []).unwrap()
}

#[test]
fn score_is_stable_across_versions() {
    // Fixed values (computed independently): every agent, whatever its build or architecture,
    // must compute the same owner, so a change of hash is a breaking change.
    assert_eq!(
        rendezvous_score("node-a", ip("192.0.2.10")),
        0x283f_8e38_8d06_b706
    );
    assert_eq!(
        rendezvous_score("node-b", ip("2001:db8::1")),
        0xbe0c_7d6b_faa2_c56c
    );
    assert_eq!(
        rendezvous_score("node-a", ip("192.0.2.10")),
        rendezvous_score("node-a", ip("192.0.2.10"))
    );
    assert_ne!(
        rendezvous_score("node-a", ip("192.0.2.10")),
        rendezvous_score("node-b", ip("192.0.2.10"))
    );
    assert_ne!(
        rendezvous_score("node-a", ip("192.0.2.10")),
        rendezvous_score("node-a", ip("192.0.2.11"))
    );
}

#[test]
fn owners_spread_over_nodes() {
    let nodes: Vec<NodeView> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
    let rules = [rule("all")];
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..3000u32 {
        let addr = AddressView {
            ip: IpAddr::V4(std::net::Ipv4Addr::from(0xc633_6400 + i)),
            pool: "lan".into(),
            services: vec![service("ns", "svc")],
        };
        *per_node
            .entry(owner(&addr, &rules, &nodes).unwrap().node)
            .or_default() += 1;
    }
    for (node, count) in &per_node {
        assert!((800..1200).contains(count), "{node} owns {count} of 3000");
    }
}

#[test]
fn dead_excluded_and_unavailable_nodes_never_own() {
    let mut nodes: Vec<NodeView> = ["a", "b", "c", "d"].iter().map(|n| node(n)).collect();
    nodes[0].live = false;
    nodes[1].excluded = true;
    nodes[2].network_unavailable = true;
    let rules = [rule("all")];
    for i in 0..50u8 {
        let addr = address(&format!("192.0.2.{i}"), vec![service("ns", "svc")]);
        assert_eq!(owner(&addr, &rules, &nodes).unwrap().node, "d");
    }
    nodes[3].live = false;
    assert_eq!(
        owner(
            &address("192.0.2.1", vec![service("ns", "s")]),
            &rules,
            &nodes
        ),
        None
    );
}

#[test]
fn no_rule_or_no_service_means_no_owner() {
    let nodes = [node("a")];
    let addr = address("192.0.2.1", vec![service("ns", "s")]);
    assert_eq!(owner(&addr, &[], &nodes), None);
    let unheld = address("192.0.2.1", vec![]);
    assert_eq!(owner(&unheld, &[rule("all")], &nodes), None);
}

#[test]
fn every_reason_an_address_is_not_served_is_named() {
    let web = || service("ns", "web");
    let mut local = service("ns", "local");
    local.local_traffic = true;
    local.ready_nodes = BTreeSet::from(["b".to_string()]);
    let mut edge = rule("edge");
    edge.node_selector = Some(selector("role", "edge"));
    let mut strict = rule("strict");
    strict.interfaces = vec![Regex::new("^bond0$").unwrap()];
    let mut other_pool = rule("other");
    other_pool.ip_pools = vec!["dmz".to_string()];
    let dead = |name: &str| NodeView {
        live: false,
        ..node(name)
    };
    let excluded = |name: &str| NodeView {
        excluded: true,
        ..node(name)
    };
    let no_network = |name: &str| NodeView {
        network_unavailable: true,
        ..node(name)
    };
    let link_down = |name: &str| NodeView {
        interfaces: vec![],
        default_interface: None,
        ..node(name)
    };
    use Blocked::*;
    type Case = (
        &'static str,
        Vec<AnnouncementRule>,
        Vec<NodeView>,
        Vec<ServiceOnAddress>,
        Option<Unserved>,
    );
    let cases: Vec<Case> = vec![
        (
            "served",
            vec![rule("all")],
            vec![node("a")],
            vec![web()],
            None,
        ),
        (
            "no rule",
            vec![],
            vec![node("a")],
            vec![web()],
            Some(Unserved::NoAnnouncement),
        ),
        (
            "rule for another pool",
            vec![other_pool],
            vec![node("a")],
            vec![web()],
            Some(Unserved::NoAnnouncement),
        ),
        (
            "node selector matches nothing",
            vec![edge.clone()],
            vec![node("a"), node("b")],
            vec![web()],
            Some(Unserved::NoNodeSelected {
                announcements: vec!["edge".to_string()],
                nodes: 2,
            }),
        ),
        (
            "no agent",
            vec![rule("all")],
            vec![dead("a")],
            vec![web()],
            Some(Unserved::NoEligibleNode(vec![("a".into(), NoLiveAgent)])),
        ),
        (
            "excluded",
            vec![rule("all")],
            vec![excluded("a")],
            vec![web()],
            Some(Unserved::NoEligibleNode(vec![("a".into(), Excluded)])),
        ),
        (
            "network unavailable",
            vec![rule("all")],
            vec![no_network("a")],
            vec![web()],
            Some(Unserved::NoEligibleNode(vec![(
                "a".into(),
                NetworkUnavailable,
            )])),
        ),
        (
            "link down",
            vec![rule("all")],
            vec![link_down("a")],
            vec![web()],
            Some(Unserved::NoEligibleNode(vec![("a".into(), NoInterface)])),
        ),
        (
            "pattern matches no interface",
            vec![strict],
            vec![node("a")],
            vec![web()],
            Some(Unserved::NoEligibleNode(vec![("a".into(), NoInterface)])),
        ),
        (
            "local traffic without a ready endpoint where nodes may announce",
            vec![rule("all")],
            vec![node("a"), dead("b")],
            vec![local.clone()],
            Some(Unserved::NoEligibleNode(vec![
                ("a".into(), NoReadyEndpoint),
                ("b".into(), NoLiveAgent),
            ])),
        ),
        (
            "local traffic with a ready endpoint",
            vec![rule("all")],
            vec![node("a"), node("b")],
            vec![local],
            None,
        ),
        (
            "only the selected nodes are listed, each for its first reason",
            vec![edge],
            vec![
                NodeView {
                    labels: BTreeMap::from([("role".to_string(), "edge".to_string())]),
                    ..excluded("e1")
                },
                NodeView {
                    labels: BTreeMap::from([("role".to_string(), "edge".to_string())]),
                    live: false,
                    ..excluded("e2")
                },
                dead("c"),
            ],
            vec![web()],
            Some(Unserved::NoEligibleNode(vec![
                ("e1".into(), Excluded),
                ("e2".into(), NoLiveAgent),
            ])),
        ),
    ];
    for (name, rules, nodes, services, want) in cases {
        let addr = address("192.0.2.7", services);
        assert_eq!(explain(&addr, &rules, &nodes), want, "{name}");
        assert_eq!(
            want.is_none(),
            !eligible(&addr, &rules, &nodes).is_empty(),
            "{name}"
        );
    }
}

#[test]
fn rules_filter_by_pool_service_and_node() {
    let mut nodes = vec![node("a"), node("b")];
    nodes[1].labels.insert("role".into(), "edge".into());
    let mut only_edge = rule("edge");
    only_edge.node_selector = Some(selector("role", "edge"));
    only_edge.ip_pools = vec!["lan".into()];
    let mut web = service("web", "frontend");
    web.labels.insert("tier".into(), "web".into());
    let addr = address("192.0.2.7", vec![web.clone()]);
    assert_eq!(
        owner(&addr, std::slice::from_ref(&only_edge), &nodes)
            .unwrap()
            .node,
        "b"
    );

    let mut other_pool = only_edge.clone();
    other_pool.ip_pools = vec!["dmz".into()];
    assert_eq!(owner(&addr, &[other_pool], &nodes), None);

    let mut by_service = rule("svc");
    by_service.service_selector = Some(selector("tier", "db"));
    assert_eq!(
        owner(&addr, std::slice::from_ref(&by_service), &nodes),
        None
    );
    by_service.service_selector = Some(selector("vipam.io/service-namespace", "web"));
    assert!(owner(&addr, &[by_service], &nodes).is_some());
}

#[test]
fn interface_patterns_and_default_route() {
    let mut n = node("a");
    n.interfaces = vec!["enp3s0".into(), "eno1".into(), "veth12".into()];
    n.default_interface = Some("enp3s0".into());
    let mut r = rule("r");
    assert_eq!(r.interface_on(&n).as_deref(), Some("enp3s0"));
    r.interfaces = vec![Regex::new("^en").unwrap()];
    assert_eq!(r.interface_on(&n).as_deref(), Some("eno1"));
    r.interfaces = vec![Regex::new("^bond").unwrap()];
    assert_eq!(r.interface_on(&n), None);
    // A node with no matching interface is not eligible; another with one is.
    let mut m = node("b");
    m.interfaces = vec!["bond0".into()];
    let addr = address("192.0.2.9", vec![service("ns", "s")]);
    let o = owner(&addr, &[r], &[n, m]).unwrap();
    assert_eq!((o.node.as_str(), o.interface.as_str()), ("b", "bond0"));
}

#[test]
fn first_rule_by_name_decides_interface_and_mode() {
    let mut z = rule("z-address");
    z.mode = AnnounceMode::Address;
    z.interfaces = vec![Regex::new("eth1").unwrap()];
    let a = rule("a-arp");
    let o = owner(
        &address("192.0.2.3", vec![service("n", "s")]),
        &[z, a],
        &[node("x")],
    )
    .unwrap();
    assert_eq!(
        (o.mode, o.interface.as_str(), o.announcement.as_str()),
        (AnnounceMode::Arp, "eth0", "a-arp")
    );
}

#[test]
fn local_traffic_follows_the_ready_endpoints() {
    let nodes: Vec<NodeView> = ["a", "b", "c"].iter().map(|n| node(n)).collect();
    let mut svc = service("ns", "web");
    svc.local_traffic = true;
    svc.ready_nodes = BTreeSet::from(["b".to_string()]);
    let addr = address("192.0.2.20", vec![svc.clone()]);
    assert_eq!(owner(&addr, &[rule("r")], &nodes).unwrap().node, "b");
    svc.ready_nodes = BTreeSet::from(["c".to_string()]);
    assert_eq!(
        owner(
            &address("192.0.2.20", vec![svc.clone()]),
            &[rule("r")],
            &nodes
        )
        .unwrap()
        .node,
        "c"
    );
    svc.ready_nodes.clear();
    assert_eq!(
        owner(&address("192.0.2.20", vec![svc]), &[rule("r")], &nodes),
        None
    );
}

#[test]
fn lease_needed_only_where_a_rule_selects_the_node() {
    let mut r = rule("edge");
    r.node_selector = Some(selector("role", "edge"));
    let mut edge = node("e");
    edge.labels.insert("role".into(), "edge".into());
    assert!(needs_lease(&edge, std::slice::from_ref(&r)));
    assert!(!needs_lease(&node("w"), std::slice::from_ref(&r)));
    assert!(!needs_lease(&edge, &[]));
}

#[test]
fn liveness_uses_the_observers_clock_only() {
    let secs = Duration::from_secs;
    let mut live = Liveness::default();
    assert!(live.observe("a", "1", secs(3), true, secs(100)));
    assert!(live.is_live("a", secs(102)));
    assert!(!live.is_live("a", secs(103)));
    // Seeing the same version again (a re-list) is not a renewal.
    assert!(!live.observe("a", "1", secs(3), true, secs(102)));
    assert!(!live.is_live("a", secs(103)));
    // A new version is, whatever time it carries inside.
    assert!(live.observe("a", "2", secs(3), true, secs(104)));
    assert!(live.is_live("a", secs(106)));
    assert_eq!(live.next_expiry(secs(105)), Some(secs(107)));
    // A released lease (no holder) is not live at once.
    live.observe("a", "3", secs(3), false, secs(105));
    assert!(!live.is_live("a", secs(105)));
    live.observe("b", "9", secs(3), true, secs(105));
    live.forget("b");
    assert!(!live.is_live("b", secs(105)));
    // After a watch outage every lease is given a full duration again.
    live.observe("c", "1", secs(3), true, secs(100));
    live.refresh_all(secs(200));
    assert!(live.is_live("c", secs(202)));
}

// ---- properties ----

fn arb_nodes() -> impl Strategy<Value = Vec<NodeView>> {
    prop::collection::btree_map(
        "[a-e][0-9]",
        (
            any::<bool>(),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.2),
        ),
        1..8,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(name, (live, excluded, edge))| {
                let mut n = node(&name);
                n.live = live || !excluded; // mostly live
                n.excluded = excluded;
                if edge {
                    n.labels.insert("role".into(), "edge".into());
                }
                n
            })
            .collect()
    })
}

fn arb_addresses() -> impl Strategy<Value = Vec<AddressView>> {
    prop::collection::btree_map(
        0u8..=255,
        (
            1usize..4,
            any::<bool>(),
            prop::collection::btree_set("[a-e][0-9]", 0..3),
        ),
        1..40,
    )
    .prop_map(|m| {
        m.into_iter()
            .map(|(last, (sharing, local, ready))| {
                let services = (0..sharing)
                    .map(|i| {
                        let mut s = service("ns", &format!("svc{i}"));
                        s.local_traffic = local && i == 0;
                        s.ready_nodes = ready.clone();
                        s
                    })
                    .collect();
                address(&format!("198.51.100.{last}"), services)
            })
            .collect()
    })
}

fn rules() -> Vec<AnnouncementRule> {
    let mut edge = rule("edge");
    edge.node_selector = Some(selector("role", "edge"));
    edge.mode = AnnounceMode::Address;
    vec![edge, rule("lan")]
}

proptest! {
    #[test]
    fn every_view_order_gives_the_same_owners(
        nodes in arb_nodes(),
        addresses in arb_addresses(),
        rotate in 0usize..8,
    ) {
        let rules = rules();
        let expected = assign(&addresses, &rules, &nodes);
        let mut shuffled = nodes.clone();
        shuffled.reverse();
        let len = shuffled.len();
        shuffled.rotate_left(rotate % len);
        let mut reversed_rules = rules.clone();
        reversed_rules.reverse();
        let mut reversed_addresses = addresses.clone();
        reversed_addresses.reverse();
        prop_assert_eq!(assign(&reversed_addresses, &reversed_rules, &shuffled), expected);
    }

    #[test]
    fn an_address_is_explained_exactly_when_nobody_may_announce_it(
        nodes in arb_nodes(),
        addresses in arb_addresses(),
    ) {
        let rules = rules();
        for addr in &addresses {
            let nobody = eligible(addr, &rules, &nodes).is_empty();
            prop_assert_eq!(explain(addr, &rules, &nodes).is_some(), nobody && !addr.services.is_empty());
        }
    }

    #[test]
    fn owners_are_eligible_and_honour_local_traffic(
        nodes in arb_nodes(),
        addresses in arb_addresses(),
    ) {
        let rules = rules();
        let owners = assign(&addresses, &rules, &nodes);
        for addr in &addresses {
            let eligible = eligible(addr, &rules, &nodes);
            match owners.get(&addr.ip) {
                None => prop_assert!(eligible.is_empty()),
                Some(o) => {
                    let n = nodes.iter().find(|n| n.name == o.node).unwrap();
                    prop_assert!(n.unavailable().is_none());
                    for s in addr.services.iter().filter(|s| s.local_traffic) {
                        prop_assert!(s.ready_nodes.contains(&o.node));
                    }
                    // No eligible node scores higher.
                    for e in &eligible {
                        prop_assert!(rendezvous_score(&e.node, addr.ip) <= rendezvous_score(&o.node, addr.ip));
                    }
                }
            }
        }
    }

    #[test]
    fn a_node_joining_or_leaving_moves_only_its_own_addresses(
        nodes in arb_nodes(),
        addresses in arb_addresses(),
        joiner in "[f-g][0-9]",
        leaver_pick in any::<prop::sample::Index>(),
    ) {
        let rules = rules();
        let before = assign(&addresses, &rules, &nodes);

        let mut joined = nodes.clone();
        joined.push(node(&joiner));
        let after_join = assign(&addresses, &rules, &joined);
        for addr in &addresses {
            let (old, new) = (before.get(&addr.ip), after_join.get(&addr.ip));
            if old != new {
                // Only addresses the newcomer wins move (or gain their first owner).
                prop_assert_eq!(new.map(|o| o.node.as_str()), Some(joiner.as_str()));
            }
        }

        let leaver = nodes[leaver_pick.index(nodes.len())].name.clone();
        let left: Vec<NodeView> = nodes.iter().filter(|n| n.name != leaver).cloned().collect();
        let after_leave = assign(&addresses, &rules, &left);
        for addr in &addresses {
            let (old, new) = (before.get(&addr.ip), after_leave.get(&addr.ip));
            if old != new {
                prop_assert_eq!(old.map(|o| o.node.as_str()), Some(leaver.as_str()));
            }
        }
    }

    #[test]
    fn shared_addresses_have_one_owner_whatever_the_number_of_services(
        nodes in arb_nodes(),
        last in 0u8..=255,
        extra in 0usize..6,
    ) {
        let rules = rules();
        let alone = address(&format!("203.0.113.{last}"), vec![service("ns", "a")]);
        let mut shared = alone.clone();
        for i in 0..extra {
            shared.services.push(service("ns", &format!("b{i}")));
        }
        prop_assert_eq!(owner(&alone, &rules, &nodes), owner(&shared, &rules, &nodes));
    }
}
