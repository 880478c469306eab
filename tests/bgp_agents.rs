//! vipam agents announcing LoadBalancer addresses by BGP to real routers: BIRD 2 and GoBGP 3
//! in a network-namespace LAN (tests/netlab, tests/netlab/routers.rs), the agents talking to
//! the fake API (tests/support) served in the LAN (tests/agentlab). Root only: a test that
//! cannot build its lab fails saying why.
//!
//! The client reaches the LoadBalancer range through the router, so what it sees is what the
//! router learned: ECMP over every eligible node for externalTrafficPolicy: Cluster, only the
//! endpoint's node for Local.

#[path = "agentlab/mod.rs"]
mod agentlab;
#[path = "netlab/mod.rs"]
mod netlab;
mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use agentlab::{AgentFlags, AgentLab, NODES, failures_after};
use netlab::routers::{Bird, Gobgp, LearnedRoute, PeerConfig};
use serde_json::json;

const ROUTER_ASN: u32 = 65000;
const NODE_ASN: u32 = 4_200_000_001;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// BIRD on the router, one passive session per node (eBGP, 4-byte node ASN, graceful restart).
fn bird(lab: &AgentLab) -> Bird {
    let router = lab.net.host("router").ipv4;
    let peers: Vec<PeerConfig> = NODES
        .iter()
        .map(|node| {
            let mut peer = PeerConfig::new(
                router,
                ROUTER_ASN,
                IpAddr::V4(lab.net.host(node).ipv4),
                NODE_ASN,
            );
            peer.name = node.to_string();
            peer
        })
        .collect();
    Bird::start(&lab.net, "router", &peers)
}

fn seed_bgp(lab: &AgentLab, peer_spec: serde_json::Value) {
    lab.fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "BGPPeer",
        "metadata": {"name": "router"},
        "spec": peer_spec,
    }));
    lab.fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "BGPAnnouncement",
        "metadata": {"name": "routed"},
        "spec": {"communities": ["65000:100", "no-export", "large:4200000001:1:2"], "localPref": 200},
    }));
}

/// The EndpointSlice of `default/<service>` with one ready endpoint on `node`.
fn seed_endpoint(lab: &AgentLab, service: &str, node: &str) {
    lab.fake.seed(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": node, "conditions": {"ready": true}}],
    }));
}

/// The next hops BIRD holds for `prefix` (one path per announcing node), sorted.
fn paths(routes: &[LearnedRoute], prefix: &str) -> Vec<IpAddr> {
    let mut hops: Vec<IpAddr> = routes
        .iter()
        .filter(|r| r.prefix == prefix)
        .flat_map(|r| r.next_hops.iter().copied())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    hops.sort();
    hops
}

fn node_ips(lab: &AgentLab, nodes: &[&str]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = nodes
        .iter()
        .map(|n| IpAddr::V4(lab.net.host(n).ipv4))
        .collect();
    ips.sort();
    ips
}

/// Waits until BIRD's paths for `prefix` are `want`; returns how long it took.
fn wait_paths(
    lab: &AgentLab,
    bird: &mut Bird,
    prefix: &str,
    want: &[IpAddr],
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let routes = bird.routes();
        let got = paths(&routes, prefix);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "BIRD's paths for {prefix}: {got:?}, wanted {want:?} within {timeout:?}\n{routes:#?}\n{}\nBIRD:\n{}",
            lab.logs(),
            bird.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_established(lab: &AgentLab, bird: &mut Bird, nodes: &[&str], timeout: Duration) {
    let start = Instant::now();
    for node in nodes {
        loop {
            let state = bird.bgp_state(node);
            if state == "Established" {
                break;
            }
            assert!(
                start.elapsed() < timeout,
                "BIRD's session with {node}: {state} after {timeout:?}\n{}\nBIRD:\n{}",
                lab.logs(),
                bird.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn bird_learns_every_eligible_node_follows_endpoints_and_keeps_traffic_across_restarts() {
    let lab = AgentLab::with_router("bgp-bird", AgentFlags::default());
    let mut bird = bird(&lab);
    let router = lab.net.host("router").ipv4.to_string();
    seed_bgp(
        &lab,
        json!({"peerAddress": router, "peerASN": ROUTER_ASN, "myASN": NODE_ASN, "holdTime": "9s"}),
    );
    let web = ip("203.0.113.10");
    let local = ip("203.0.113.11");
    lab.seed_service("web", web, false);
    lab.seed_service("local", local, true);
    seed_endpoint(&lab, "local", "node2");
    lab.add_vip_on_nodes(web);
    lab.add_vip_on_nodes(local);
    lab.start_all();
    wait_established(&lab, &mut bird, &NODES, Duration::from_secs(20));

    // ETP Cluster: one path per node, with the announcement's communities.
    wait_paths(
        &lab,
        &mut bird,
        "203.0.113.10/32",
        &node_ips(&lab, &NODES),
        Duration::from_secs(5),
    );
    let routes = bird.routes();
    let route = routes
        .iter()
        .find(|r| r.prefix == "203.0.113.10/32")
        .unwrap();
    assert!(route.communities.contains(&(65000, 100)), "{route:?}");
    assert!(
        route.communities.contains(&(0xFFFF, 0xFF01)),
        "no-export: {route:?}"
    );
    assert_eq!(route.large_communities, [(NODE_ASN, 1, 2)], "{route:?}");
    // eBGP: LOCAL_PREF is not sent (RFC 4271); BIRD sets its own default for the route.
    // ETP Local: only the endpoint's node.
    wait_paths(
        &lab,
        &mut bird,
        "203.0.113.11/32",
        &node_ips(&lab, &["node2"]),
        Duration::from_secs(5),
    );
    // Traffic through the router reaches the address on the announcing node.
    assert_eq!(
        lab.probe(local, Duration::from_secs(2)).as_deref(),
        Some("node2")
    );
    assert!(
        lab.probe(web, Duration::from_secs(2)).is_some(),
        "{}",
        lab.logs()
    );

    // The endpoint moves: so does the path, at once.
    seed_endpoint(&lab, "local", "node3");
    let moved = wait_paths(
        &lab,
        &mut bird,
        "203.0.113.11/32",
        &node_ips(&lab, &["node3"]),
        Duration::from_secs(5),
    );
    eprintln!("ETP Local path moved in {moved:?}");
    assert_eq!(
        lab.probe(local, Duration::from_secs(2)).as_deref(),
        Some("node3")
    );

    // Graceful restart of node1's agent (SIGTERM): BIRD has the withdrawal before the agent
    // exits, and no probe of the ECMP address fails meanwhile.
    let prober = lab.prober(web, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(300));
    let stop = Instant::now();
    lab.signal_agent("node1", "TERM");
    assert_eq!(
        lab.wait_agent_exit("node1", Duration::from_secs(10)),
        Some(true),
        "{}",
        lab.log("node1")
    );
    let exited = stop.elapsed();
    let routes = bird.routes();
    assert_eq!(
        paths(&routes, "203.0.113.10/32"),
        node_ips(&lab, &["node2", "node3"]),
        "BIRD still had node1's path when its agent had exited ({exited:?})"
    );
    assert_ne!(bird.bgp_state("node1"), "Established");
    std::thread::sleep(Duration::from_millis(300));
    let samples = prober.finish();
    assert_eq!(
        failures_after(&samples, stop),
        0,
        "probes failed across a graceful agent stop"
    );
    lab.start_agent("node1");
    wait_established(&lab, &mut bird, &["node1"], Duration::from_secs(20));
    wait_paths(
        &lab,
        &mut bird,
        "203.0.113.10/32",
        &node_ips(&lab, &NODES),
        Duration::from_secs(5),
    );

    // A crash of node2's agent (kill -9: the kernel closes its connection without a
    // NOTIFICATION): BIRD keeps node2's routes (graceful restart) until the agent, restarted,
    // sends them again; the path never goes away.
    let prober = lab.prober(web, Duration::from_millis(20));
    let crash = Instant::now();
    lab.signal_agent("node2", "KILL");
    let _ = lab.wait_agent_exit("node2", Duration::from_secs(5));
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        let routes = bird.routes();
        assert_eq!(
            paths(&routes, "203.0.113.10/32"),
            node_ips(&lab, &NODES),
            "BIRD dropped node2's path after an agent crash (graceful restart should keep it)\n{}",
            bird.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.start_agent("node2");
    wait_established(&lab, &mut bird, &["node2"], Duration::from_secs(20));
    let routes = bird.routes();
    assert_eq!(paths(&routes, "203.0.113.10/32"), node_ips(&lab, &NODES));
    let samples = prober.finish();
    assert_eq!(
        failures_after(&samples, crash),
        0,
        "probes failed across an agent crash and restart"
    );

    // The node itself dies (its link goes down): BIRD drops its path when the hold time (9 s)
    // expires, and the client's traffic goes to the others.
    let prober = lab.prober(web, Duration::from_millis(50));
    let down = Instant::now();
    lab.net.set_lan_port("node3", false);
    let dropped = wait_paths(
        &lab,
        &mut bird,
        "203.0.113.10/32",
        &node_ips(&lab, &["node1", "node2"]),
        Duration::from_secs(12),
    );
    eprintln!("node3's path dropped {dropped:?} after its link went down (hold time 9 s)");
    // The router counts the hold time from the last message it got (a KEEPALIVE every 3 s).
    let bird_log = bird.log();
    assert!(
        bird_log.contains("Hold timer expired"),
        "BIRD did not drop node3 by its hold timer:\n{bird_log}"
    );
    assert!(
        dropped <= Duration::from_millis(9_500 + 1_000),
        "dropped {dropped:?} after the link went down (hold time 9 s)"
    );
    std::thread::sleep(Duration::from_millis(500));
    let samples = prober.finish();
    let late: Vec<_> = samples
        .iter()
        .filter(|(at, answer)| {
            at.duration_since(down) > dropped + Duration::from_millis(300) && answer.is_none()
        })
        .collect();
    assert!(
        late.is_empty(),
        "probes still failed after the path was dropped: {late:?}"
    );
    lab.net.set_lan_port("node3", true);
}

#[test]
fn sessions_survive_an_api_outage_and_keep_their_routes() {
    let lab = AgentLab::with_router("bgp-outage", AgentFlags::default());
    let mut bird = bird(&lab);
    let router = lab.net.host("router").ipv4.to_string();
    seed_bgp(
        &lab,
        json!({"peerAddress": router, "peerASN": ROUTER_ASN, "myASN": NODE_ASN}),
    );
    let web = ip("203.0.113.20");
    lab.seed_service("web", web, false);
    lab.add_vip_on_nodes(web);
    lab.start_all();
    wait_established(&lab, &mut bird, &NODES, Duration::from_secs(20));
    wait_paths(
        &lab,
        &mut bird,
        "203.0.113.20/32",
        &node_ips(&lab, &NODES),
        Duration::from_secs(5),
    );
    let prober = lab.prober(web, Duration::from_millis(100));
    let outage = Instant::now();
    lab.fake.outage(support::Outage::Refuse);
    while outage.elapsed() < Duration::from_secs(60) {
        let routes = bird.routes();
        assert_eq!(
            paths(&routes, "203.0.113.20/32"),
            node_ips(&lab, &NODES),
            "routes changed {:?} into an API outage\n{}",
            outage.elapsed(),
            lab.logs()
        );
        for node in NODES {
            assert_eq!(
                bird.bgp_state(node),
                "Established",
                "{node} after {:?}",
                outage.elapsed()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    lab.fake.resume();
    let samples = prober.finish();
    assert!(samples.len() > 300, "{} probes", samples.len());
    assert_eq!(
        failures_after(&samples, outage),
        0,
        "traffic failed during the API outage"
    );
}

/// BIRD or GoBGP, as the dual-stack MD5 test drives them.
enum Router {
    Bird(Bird),
    Gobgp(Gobgp),
}

impl Router {
    fn start(kind: &str, lab: &AgentLab, peers: &mut [PeerConfig]) -> Router {
        match kind {
            "bird" => {
                // BIRD names a session by protocol: node1_v4, node1_v6, ...
                for peer in peers.iter_mut() {
                    let node = NODES
                        .iter()
                        .find(|n| {
                            let host = lab.net.host(n);
                            peer.neighbor == IpAddr::V4(host.ipv4)
                                || peer.neighbor == IpAddr::V6(host.ipv6)
                        })
                        .unwrap();
                    let family = if peer.neighbor.is_ipv4() { "v4" } else { "v6" };
                    peer.name = format!("{node}_{family}");
                }
                Router::Bird(Bird::start(&lab.net, "router", peers))
            }
            _ => Router::Gobgp(Gobgp::start(&lab.net, "router", peers)),
        }
    }

    fn routes(&mut self) -> Vec<LearnedRoute> {
        match self {
            Router::Bird(bird) => bird.routes(),
            Router::Gobgp(gobgp) => gobgp.routes(),
        }
    }

    fn established(&mut self, lab: &AgentLab, node: &str, v6: bool) -> bool {
        match self {
            Router::Bird(bird) => {
                let family = if v6 { "v6" } else { "v4" };
                bird.bgp_state(&format!("{node}_{family}")) == "Established"
            }
            Router::Gobgp(gobgp) => {
                let host = lab.net.host(node);
                let neighbor = if v6 {
                    IpAddr::V6(host.ipv6)
                } else {
                    IpAddr::V4(host.ipv4)
                };
                gobgp.bgp_state(neighbor) == "established"
            }
        }
    }

    fn log(&self) -> String {
        match self {
            Router::Bird(bird) => bird.log(),
            Router::Gobgp(gobgp) => gobgp.log(),
        }
    }
}

#[test]
fn gobgp_learns_v4_and_v6_with_md5_and_a_wrong_password_or_asn_never_establishes() {
    dual_stack_md5_and_refusals("gobgp");
}

#[test]
fn bird_learns_v4_and_v6_with_md5_and_a_wrong_password_or_asn_never_establishes() {
    dual_stack_md5_and_refusals("bird");
}

fn dual_stack_md5_and_refusals(kind: &str) {
    let lab = AgentLab::with_router(&format!("bgp-md5-{kind}"), AgentFlags::default());
    let router = lab.net.host("router").clone();
    // node1 and node2 peer over IPv4 and IPv6 with the right password and ASN. node3: the
    // router expects another password over IPv6, and node3's IPv4 BGPPeer says a wrong ASN.
    let mut peers = Vec::new();
    for node in NODES {
        let host = lab.net.host(node).clone();
        for neighbor in [IpAddr::V4(host.ipv4), IpAddr::V6(host.ipv6)] {
            let mut peer = PeerConfig::new(router.ipv4, ROUTER_ASN, neighbor, NODE_ASN);
            let wrong = node == "node3" && neighbor.is_ipv6();
            peer.md5_password = Some(if wrong { "other" } else { "s3cret!" }.to_string());
            peers.push(peer);
        }
    }
    let mut router_daemon = Router::start(kind, &lab, &mut peers);
    lab.fake.seed(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "vipam-bgp-passwords", "namespace": "vipam-system"},
        "data": {"router": "czNjcmV0IQ=="},
    }));
    let not_node3 = json!({"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node3"]}]});
    let only_node3 = json!({"matchLabels": {"kubernetes.io/hostname": "node3"}});
    for (name, address, my_asn, nodes) in [
        ("router", router.ipv4.to_string(), NODE_ASN, not_node3),
        ("router-v6", router.ipv6.to_string(), NODE_ASN, json!({})),
        (
            "router-wrong-asn",
            router.ipv4.to_string(),
            64999,
            only_node3,
        ),
    ] {
        lab.fake.seed(json!({
            "apiVersion": "vipam.io/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": name},
            "spec": {"peerAddress": address, "peerASN": ROUTER_ASN, "myASN": my_asn,
                     "nodeSelector": nodes,
                     "passwordSecretRef": {"namespace": "vipam-system", "name": "vipam-bgp-passwords", "key": "router"}},
        }));
    }
    lab.fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "BGPAnnouncement",
        "metadata": {"name": "routed"},
        "spec": {"communities": ["65000:100", "large:4200000001:7:8"]},
    }));
    let v4 = ip("203.0.113.30");
    let v6 = ip("2001:db8:ff::30");
    lab.seed_service("web4", v4, false);
    lab.seed_service("web6", v6, false);
    lab.start_all();
    let start = Instant::now();
    let want4: Vec<IpAddr> = node_ips(&lab, &["node1", "node2"]);
    let mut want6: Vec<IpAddr> = ["node1", "node2"]
        .iter()
        .map(|n| IpAddr::V6(lab.net.host(n).ipv6))
        .collect();
    want6.sort();
    loop {
        let routes = router_daemon.routes();
        let got4 = paths(&routes, "203.0.113.30/32");
        let got6 = paths(&routes, "2001:db8:ff::30/128");
        if got4 == want4 && got6 == want6 {
            let route = routes
                .iter()
                .find(|r| r.prefix == "203.0.113.30/32")
                .unwrap();
            assert!(route.communities.contains(&(65000, 100)), "{route:?}");
            assert_eq!(route.large_communities, [(NODE_ASN, 7, 8)], "{route:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "{kind}: {got4:?} / {got6:?}, wanted {want4:?} / {want6:?}\n{routes:#?}\n{}\n{kind}:\n{}",
            lab.logs(),
            router_daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for node in ["node1", "node2"] {
        assert!(router_daemon.established(&lab, node, false), "{node}");
        assert!(router_daemon.established(&lab, node, true), "{node} v6");
    }
    // The wrong password and the wrong ASN never establish, and node3's Lease says why: the
    // first attempt times out after 5 s; the renewal after that carries the note.
    let start = Instant::now();
    loop {
        let note = lab
            .fake
            .get("leases", Some("vipam-system"), "vipam-agent-node3")
            .and_then(|lease| {
                lease["metadata"]["annotations"]["vipam.io/bgp-sessions"]
                    .as_str()
                    .map(String::from)
            })
            .unwrap_or_default();
        let notes: Vec<serde_json::Value> = serde_json::from_str(&note).unwrap_or_default();
        let error_of = |peer: &str| {
            notes
                .iter()
                .find(|n| n["peer"] == peer)
                .map(|n| {
                    assert_ne!(n["state"], "Established", "{note}");
                    n["lastError"].as_str().unwrap_or("").to_string()
                })
                .unwrap_or_default()
        };
        let password = error_of("router-v6");
        let asn = error_of("router-wrong-asn");
        if password.contains("no TCP handshake") && asn.contains("Bad Peer AS") {
            eprintln!("node3: wrong password: {password}; wrong ASN: {asn}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "node3's session notes do not say why: {note}\n{}\n{kind}:\n{}",
            lab.log("node3"),
            router_daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!router_daemon.established(&lab, "node3", false));
    assert!(!router_daemon.established(&lab, "node3", true));
}

/// An internal session (the router in the nodes' AS): LOCAL_PREF reaches the router (it is
/// only for iBGP peers, RFC 4271 5.1.5), with the communities, from every node.
fn ibgp_carries_local_pref(kind: &str) {
    let lab = AgentLab::with_router(&format!("bgp-ibgp-{kind}"), AgentFlags::default());
    let router = lab.net.host("router").clone();
    let mut peers: Vec<PeerConfig> = NODES
        .iter()
        .map(|node| {
            PeerConfig::new(
                router.ipv4,
                NODE_ASN,
                IpAddr::V4(lab.net.host(node).ipv4),
                NODE_ASN,
            )
        })
        .collect();
    let mut router_daemon = Router::start(kind, &lab, &mut peers);
    lab.fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "BGPPeer",
        "metadata": {"name": "router"},
        "spec": {"peerAddress": router.ipv4.to_string(), "peerASN": NODE_ASN, "myASN": NODE_ASN},
    }));
    lab.fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "BGPAnnouncement",
        "metadata": {"name": "routed"},
        "spec": {"communities": ["65000:100"], "localPref": 200},
    }));
    lab.seed_service("web", ip("203.0.113.40"), false);
    lab.start_all();
    let want = node_ips(&lab, &NODES);
    let start = Instant::now();
    loop {
        let routes = router_daemon.routes();
        let learned: Vec<&LearnedRoute> = routes
            .iter()
            .filter(|r| r.prefix == "203.0.113.40/32")
            .collect();
        if paths(&routes, "203.0.113.40/32") == want {
            for route in &learned {
                assert_eq!(route.local_pref, Some(200), "{kind}: {route:?}");
                assert!(
                    route.communities.contains(&(65000, 100)),
                    "{kind}: {route:?}"
                );
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(25),
            "{kind}: {learned:?}, wanted paths {want:?}\n{}\n{kind}:\n{}",
            lab.logs(),
            router_daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ibgp_carries_local_pref_to_bird() {
    ibgp_carries_local_pref("bird");
}

#[test]
fn ibgp_carries_local_pref_to_gobgp() {
    ibgp_carries_local_pref("gobgp");
}
