//! The agent end to end, as root, in real network namespaces: three node namespaces running
//! `vipam agent` against the fake API served on the same LAN, and a client reaching the VIPs.
//! See tests/agentlab for the set-up.

#[path = "agentlab/mod.rs"]
mod agentlab;
#[path = "netlab/mod.rs"]
mod netlab;
mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use agentlab::{AgentFlags, AgentLab, NODES, failures_after, gap_after};
use serde_json::json;
use support::Outage;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

const SECOND: Duration = Duration::from_secs(1);

/// Waits until the client reaches `ip` and returns who answered.
fn reach(lab: &AgentLab, ip: IpAddr, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(node) = lab.probe(ip, Duration::from_millis(300)) {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "the client cannot reach {ip} within {timeout:?}\n{}",
            lab.logs()
        );
    }
}

#[test]
fn the_owner_answers_arp_and_ndp_and_only_the_owner() {
    let lab = AgentLab::new("reach", AgentFlags::default());
    let v4 = ip("192.0.2.200");
    let v6 = ip("2001:db8:1::200");
    lab.add_vip_on_nodes(v4);
    lab.add_vip_on_nodes(v6);
    lab.seed_announcement("arp");
    lab.seed_service("web", v4, false);
    lab.seed_service("web6", v6, false);
    // Bad input next to the good (invariant 7): a malformed IPAllocation and an
    // L2Announcement whose pattern does not compile are logged and skipped.
    lab.fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "IPAllocation",
        "metadata": {"name": "v4-192-0-2-199"},
        "spec": {"ip": 42, "pool": ["not", "a", "name"]},
    }));
    lab.fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "L2Announcement",
        "metadata": {"name": "broken"},
        "spec": {"interfaces": ["(eth"], "mode": "arp"},
    }));
    lab.start_all();

    let owner4 = lab.wait_announcer(v4, None, 20 * SECOND);
    let owner6 = lab.wait_announcer(v6, None, 20 * SECOND);
    assert_eq!(reach(&lab, v4, 10 * SECOND), owner4);
    assert_eq!(reach(&lab, v6, 10 * SECOND), owner6);

    // Exactly one MAC answers ARP for the VIP: the owner's.
    let out = lab.net.exec(
        "client",
        "arping",
        &["-c", "3", "-w", "4", "-I", "eth0", "192.0.2.200"],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let owner_mac = lab.net.host(&owner4).mac_string();
    assert!(
        text.contains(&owner_mac),
        "no reply from the owner {owner4} ({owner_mac}):\n{text}"
    );
    for node in NODES.iter().filter(|n| **n != owner4) {
        let mac = lab.net.host(node).mac_string();
        assert!(
            !text.contains(&mac),
            "{node} ({mac}) answered ARP too:\n{text}"
        );
    }
    // And one answers neighbour solicitation.
    let out = lab
        .net
        .exec("client", "ndisc6", &["-r", "3", "2001:db8:1::200", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout).to_uppercase();
    let owner_mac6 = lab.net.host(&owner6).mac_string().to_uppercase();
    assert!(
        text.contains(&owner_mac6),
        "ndisc6 did not get the owner's MAC {owner_mac6}:\n{text}"
    );

    // An address nobody owns is not answered.
    let out = lab.net.exec(
        "client",
        "arping",
        &["-c", "2", "-w", "2", "-I", "eth0", "192.0.2.201"],
    );
    assert!(
        !out.status.success(),
        "someone answered ARP for an unallocated address"
    );
    for node in NODES {
        let log = lab.log(node);
        assert!(
            log.contains("skipping a malformed object") && log.contains("v4-192-0-2-199"),
            "{node} did not log the malformed IPAllocation"
        );
    }
}

#[test]
fn a_crashed_owner_is_replaced_and_sigterm_hands_over() {
    let lab = AgentLab::new("failover", AgentFlags::default());
    let vip = ip("192.0.2.210");
    lab.add_vip_on_nodes(vip);
    lab.seed_announcement("arp");
    lab.seed_service("web", vip, false);
    lab.start_all();
    let first = lab.wait_announcer(vip, None, 20 * SECOND);
    assert_eq!(reach(&lab, vip, 10 * SECOND), first);

    // kill -9: the others take over when its lease expires (3 s by their own clocks).
    let prober = lab.prober(vip, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    lab.signal_agent(&first, "KILL");
    std::thread::sleep(8 * SECOND);
    let samples = prober.finish();
    let (gap, second) = gap_after(&samples, killed, &first).unwrap_or_else(|| {
        panic!(
            "no other node took {vip} over after the crash\n{}",
            lab.logs()
        )
    });
    eprintln!("crash failover gap: {gap:?} ({first} -> {second})");
    assert!(gap < 6 * SECOND, "crash failover took {gap:?}");
    assert_eq!(lab.wait_announcer(vip, Some(&first), 5 * SECOND), second);

    // SIGTERM: the owner gives its lease up and keeps answering until the new owner announced.
    let prober = lab.prober(vip, Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(300));
    let termed = Instant::now();
    lab.signal_agent(&second, "TERM");
    assert_eq!(
        lab.wait_agent_exit(&second, 10 * SECOND),
        Some(true),
        "the agent did not exit cleanly on SIGTERM\n{}",
        lab.logs()
    );
    std::thread::sleep(SECOND);
    let samples = prober.finish();
    let (gap, third) = gap_after(&samples, termed, &second)
        .unwrap_or_else(|| panic!("nobody took {vip} over after SIGTERM\n{}", lab.logs()));
    eprintln!("graceful handover gap: {gap:?} ({second} -> {third})");
    assert_ne!(third, first, "{first}'s agent is dead");
    assert!(gap < 2 * SECOND, "graceful handover took {gap:?}");
    // Every probe after the signal was answered by someone (no blackout longer than a probe).
    let failures = failures_after(&samples, termed);
    assert!(
        failures <= 2,
        "{failures} probes failed during the graceful handover"
    );
    assert!(
        lab.fake
            .get(
                "leases",
                Some("vipam-system"),
                &format!("vipam-agent-{second}")
            )
            .is_none(),
        "the stopped agent left its lease"
    );
}

#[test]
fn local_traffic_follows_the_ready_endpoint() {
    let lab = AgentLab::new("local", AgentFlags::default());
    let vip = ip("192.0.2.220");
    lab.add_vip_on_nodes(vip);
    lab.seed_announcement("arp");
    lab.seed_service("local", vip, true);
    let slice = |node: &str| {
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "local-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "local"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.7"], "nodeName": node, "conditions": {"ready": true}}],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        })
    };
    lab.fake.seed(slice("node2"));
    lab.start_all();
    assert_eq!(lab.wait_announcer(vip, None, 20 * SECOND), "node2");
    assert_eq!(reach(&lab, vip, 10 * SECOND), "node2");

    // The pod moves to node3: so does the announcement.
    lab.fake.seed(slice("node3"));
    assert_eq!(lab.wait_announcer(vip, Some("node2"), 10 * SECOND), "node3");
    let deadline = Instant::now() + 5 * SECOND;
    loop {
        if lab.probe(vip, Duration::from_millis(300)).as_deref() == Some("node3") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client still does not reach node3\n{}",
            lab.logs()
        );
    }
}

#[test]
fn address_mode_repairs_and_cleans_up_only_its_own_addresses() {
    let lab = AgentLab::new("address", AgentFlags::default());
    let vip = ip("192.0.2.230");
    lab.seed_announcement("address");
    lab.seed_service("web", vip, false);
    lab.start_all();
    let owner = lab.wait_announcer(vip, None, 20 * SECOND);
    let has_vip = |node: &str| lab.addresses(node, "eth0").contains("192.0.2.230/32");
    let deadline = Instant::now() + 5 * SECOND;
    while !has_vip(&owner) {
        assert!(
            Instant::now() < deadline,
            "{owner} never added {vip}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for node in NODES.iter().filter(|n| **n != owner) {
        assert!(!has_vip(node), "{node} holds {vip} too");
    }
    // The kernel answers: the client reaches the owner.
    assert_eq!(reach(&lab, vip, 10 * SECOND), owner);

    // Removed by hand: back within the resync period (2 s here).
    lab.net.exec_ok(
        &owner,
        "ip",
        &["addr", "del", "192.0.2.230/32", "dev", "eth0"],
    );
    let deadline = Instant::now() + 4 * SECOND;
    while !has_vip(&owner) {
        assert!(
            Instant::now() < deadline,
            "{vip} was not restored\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Crash; meanwhile the Service goes away and someone adds addresses by hand.
    lab.signal_agent(&owner, "KILL");
    assert!(lab.wait_agent_exit(&owner, 5 * SECOND).is_some());
    lab.delete_allocation(vip);
    lab.net.exec_ok(
        &owner,
        "ip",
        &["addr", "add", "192.0.2.250/32", "dev", "eth0"],
    );
    lab.net.exec_ok(
        &owner,
        "ip",
        &["addr", "add", "198.51.100.9/32", "dev", "lo"],
    );
    assert!(
        has_vip(&owner),
        "the crash removed the address (it should stay until a restart)"
    );
    lab.start_agent(&owner);
    let deadline = Instant::now() + 10 * SECOND;
    while has_vip(&owner) {
        assert!(
            Instant::now() < deadline,
            "the restarted agent left {vip}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        lab.addresses(&owner, "eth0").contains("192.0.2.250/32"),
        "a hand-made address was removed"
    );
    assert!(
        lab.addresses(&owner, "lo").contains("198.51.100.9/32"),
        "a hand-made address on lo was removed"
    );
    assert!(
        lab.addresses(&owner, "eth0").contains("192.0.2.11/24"),
        "the node's own address was removed"
    );
}

#[test]
fn an_api_outage_keeps_the_vip_reachable() {
    let lab = AgentLab::new("outage", AgentFlags::default());
    let vip = ip("192.0.2.240");
    lab.add_vip_on_nodes(vip);
    lab.seed_announcement("arp");
    lab.seed_service("web", vip, false);
    lab.start_all();
    let owner = lab.wait_announcer(vip, None, 20 * SECOND);
    assert_eq!(reach(&lab, vip, 10 * SECOND), owner);

    let prober = lab.prober(vip, Duration::from_millis(100));
    let prober_start = prober.start;
    lab.fake.outage(Outage::Hang);
    std::thread::sleep(60 * SECOND);
    let samples = prober.finish();
    lab.fake.resume();
    let failures: Vec<String> = samples
        .iter()
        .filter(|(_, a)| a.is_none())
        .map(|(at, _)| format!("{:?}", at.duration_since(prober_start)))
        .collect();
    eprintln!("failed probes at: {failures:?}");
    let answered: Vec<&Option<String>> = samples.iter().map(|(_, a)| a).collect();
    let failed = answered.iter().filter(|a| a.is_none()).count();
    let moved = answered
        .iter()
        .filter(|a| a.as_ref().is_some_and(|n| *n != owner))
        .count();
    assert!(samples.len() > 300, "only {} probes", samples.len());
    assert_eq!(
        failed,
        0,
        "{failed} of {} probes failed during the outage\n{}",
        samples.len(),
        lab.logs()
    );
    assert_eq!(moved, 0, "the VIP moved during the outage\n{}", lab.logs());
    // And after it: still the same owner, still reachable.
    std::thread::sleep(5 * SECOND);
    assert_eq!(reach(&lab, vip, 5 * SECOND), owner);
}
