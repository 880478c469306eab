//! The control-plane VIP announced by BGP (`vipam agent --control-plane --bgp`), end to end,
//! as root, in real network namespaces: three control-plane "nodes" (tests/cplab: the fake
//! API, a stand-in API server on :6443 in each) peer with BIRD 2 on a router (tests/netlab
//! routers.rs); the client reaches the VIP (203.0.113.250, off the LAN) only through the
//! router, so what it reaches is what BIRD learned. A test that cannot build its lab fails
//! saying why.

#[path = "agentlab/mod.rs"]
mod agentlab;
#[path = "cplab/mod.rs"]
mod cplab;
#[path = "netlab/mod.rs"]
mod netlab;
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use agentlab::{AgentFlags, NODES, failures_after, gap_after};
use cplab::{BGP_VIP, CpLab};
use netlab::routers::{Bird, PeerConfig};

const SECOND: Duration = Duration::from_secs(1);
const ROUTER_ASN: u32 = 65000;
const NODE_ASN: u32 = 4_200_000_001;

fn prefix() -> String {
    format!("{BGP_VIP}/32")
}

/// The lab, its agents' --bgp flags (router ID from --interface eth0, by default), and BIRD
/// with one passive eBGP session per node, without graceful restart (the speaker offers none
/// for the VIP).
fn lab(name: &str) -> (CpLab, Bird) {
    // The router is host 1 of the LAN (tests/agentlab `with_router`).
    let router = netlab::ipv4(1);
    let peer = router.to_string();
    let asn = ROUTER_ASN.to_string();
    let my_asn = NODE_ASN.to_string();
    let cp = CpLab::with_router(
        name,
        AgentFlags::default(),
        &[
            "--bgp",
            "--bgp-peer",
            &peer,
            "--bgp-peer-asn",
            &asn,
            "--bgp-my-asn",
            &my_asn,
            "--bgp-hold-time",
            "9s",
            "--bgp-communities",
            "65000:250,no-export",
        ],
    );
    let peers: Vec<PeerConfig> = NODES
        .iter()
        .map(|node| {
            let mut peer = PeerConfig::new(
                router,
                ROUTER_ASN,
                IpAddr::V4(cp.lab.net.host(node).ipv4),
                NODE_ASN,
            );
            peer.name = node.to_string();
            peer.graceful_restart = false;
            peer
        })
        .collect();
    assert_eq!(cp.lab.net.host("router").ipv4, router);
    let bird = Bird::start(&cp.lab.net, "router", &peers);
    (cp, bird)
}

fn node_ip(cp: &CpLab, node: &str) -> IpAddr {
    IpAddr::V4(cp.lab.net.host(node).ipv4)
}

fn node_of(cp: &CpLab, ip: IpAddr) -> String {
    NODES
        .iter()
        .find(|n| node_ip(cp, n) == ip)
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("?{ip}"))
}

/// The nodes BIRD has a path to the VIP through (by next hop), sorted.
fn announcers(cp: &CpLab, bird: &mut Bird) -> Vec<String> {
    let hops: BTreeSet<IpAddr> = bird
        .routes()
        .iter()
        .filter(|r| r.prefix == prefix())
        .flat_map(|r| r.next_hops.iter().copied())
        .collect();
    hops.into_iter().map(|ip| node_of(cp, ip)).collect()
}

/// Waits until BIRD learns the VIP from exactly one node, and returns it.
fn wait_single_announcer(cp: &CpLab, bird: &mut Bird, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let got = announcers(cp, bird);
        if got.len() == 1 {
            return got[0].clone();
        }
        assert!(
            start.elapsed() < timeout,
            "BIRD does not learn the VIP from exactly one node within {timeout:?}: {got:?}\n{}\nBIRD:\n{}",
            cp.lab.logs(),
            bird.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_established(cp: &CpLab, bird: &mut Bird, nodes: &[&str], timeout: Duration) {
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
                cp.lab.logs(),
                bird.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `node`'s agent /metrics (admin port 127.0.0.1:9478 in its namespace).
fn metrics(cp: &CpLab, node: &str) -> String {
    cp.lab.net.run_in(node, || {
        let mut stream = std::net::TcpStream::connect("127.0.0.1:9478").expect("admin port");
        stream.set_read_timeout(Some(2 * SECOND)).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    })
}

/// The value of a metric line starting with `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

/// Every node's session is up; only `leader` sends a prefix.
fn check_session_metrics(cp: &CpLab, leader: &str, router: &str) {
    let label = format!("{{peer=\"control-plane/{router}\"}}");
    for node in NODES {
        let text = metrics(cp, node);
        assert_eq!(
            metric(
                &text,
                &format!("vipam_agent_bgp_session_established{label}")
            ),
            Some(1.0),
            "{node}: session metric\n{text}"
        );
        let want = if node == leader { 1.0 } else { 0.0 };
        assert_eq!(
            metric(&text, &format!("vipam_agent_bgp_prefixes_sent{label}")),
            Some(want),
            "{node}: prefixes sent\n{text}"
        );
        assert_eq!(
            metric(&text, "vipam_control_plane_leader"),
            Some(want),
            "{node}: leader gauge"
        );
    }
}

#[test]
fn only_the_leader_announces_the_vip_and_a_crash_moves_the_route() {
    let (cp, mut bird) = lab("cpbgp-crash");
    let router = cp.lab.net.host("router").ipv4.to_string();
    cp.start_all();
    wait_established(&cp, &mut bird, &NODES, 20 * SECOND);
    let first = wait_single_announcer(&cp, &mut bird, 20 * SECOND);
    assert_eq!(cp.lease_holder().as_deref(), Some(first.as_str()));
    assert_eq!(cp.holders(), vec![first.clone()], "the VIP on lo");
    assert_eq!(
        cp.reach(10 * SECOND),
        first,
        "the client reached another node"
    );
    let routes = bird.routes();
    let route = routes.iter().find(|r| r.prefix == prefix()).unwrap();
    assert!(route.communities.contains(&(65000, 250)), "{route:?}");
    assert!(route.communities.contains(&(0xFFFF, 0xFF01)), "{route:?}");
    // No ARP for the VIP on the LAN: it is off the LAN, and nobody announces it there.
    let neighbours = cp.lab.net.exec_ok("client", "ip", &["neigh", "show"]);
    assert!(!neighbours.contains(BGP_VIP), "{neighbours}");

    // Steady: the followers' sessions are up and send nothing, for several renewals.
    for _ in 0..6 {
        assert_eq!(announcers(&cp, &mut bird), vec![first.clone()]);
        std::thread::sleep(Duration::from_millis(500));
    }
    check_session_metrics(&cp, &first, &router);

    // kill -9: the kernel closes the dead agent's session (BIRD drops its route at once);
    // another node takes the Lease after 3 s by its clock and announces the VIP.
    let prober = cp.prober(Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    cp.lab.signal_agent(&first, "KILL");
    let start = Instant::now();
    let second = loop {
        let got = announcers(&cp, &mut bird);
        if got.len() == 1 && got[0] != first {
            break got[0].clone();
        }
        assert!(
            start.elapsed() < 10 * SECOND,
            "the route did not move off {first}: {got:?}\n{}\nBIRD:\n{}",
            cp.lab.logs(),
            bird.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let moved = killed.elapsed();
    std::thread::sleep(2 * SECOND);
    let samples = prober.finish();
    let (gap, answered) = gap_after(&samples, killed, &first)
        .unwrap_or_else(|| panic!("no other node answered on the VIP\n{}", cp.lab.logs()));
    eprintln!(
        "BGP control-plane crash: route moved {first} -> {second} in {moved:?}; traffic gap {gap:?}"
    );
    assert_eq!(answered, second);
    assert_eq!(cp.lease_holder().as_deref(), Some(second.as_str()));
    assert!(moved < 6 * SECOND, "crash failover took {moved:?}");
    assert!(gap < 6 * SECOND, "crash traffic gap {gap:?}");

    // The crashed node comes back: it removes the VIP it left on lo, announces nothing, and
    // the route stays with the new leader.
    cp.start(&first);
    wait_established(&cp, &mut bird, &[first.as_str()], 20 * SECOND);
    std::thread::sleep(3 * SECOND);
    assert_eq!(announcers(&cp, &mut bird), vec![second.clone()]);
    assert_eq!(cp.holders(), vec![second.clone()], "{}", cp.lab.logs());
    check_session_metrics(&cp, &second, &router);
    assert_eq!(cp.reach(5 * SECOND), second);
}

#[test]
fn an_unhealthy_api_server_withdraws_at_once_and_sigterm_hands_over_before_exit() {
    let (cp, mut bird) = lab("cpbgp-term");
    cp.start_all();
    wait_established(&cp, &mut bird, &NODES, 20 * SECOND);
    let first = wait_single_announcer(&cp, &mut bird, 20 * SECOND);
    assert_eq!(cp.reach(10 * SECOND), first);

    // The leader's API server fails its checks (3 x 500 ms): it withdraws the route, releases
    // the Lease, and another node announces the VIP.
    let failed = Instant::now();
    cp.set_healthy(&first, false);
    let second = loop {
        let got = announcers(&cp, &mut bird);
        if got.len() == 1 && got[0] != first {
            break got[0].clone();
        }
        assert!(
            failed.elapsed() < 10 * SECOND,
            "the route did not leave the unhealthy {first}: {got:?}\n{}",
            cp.lab.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "BGP control-plane, unhealthy API server: route moved {first} -> {second} in {:?}",
        failed.elapsed()
    );
    assert_eq!(cp.lease_holder().as_deref(), Some(second.as_str()));
    assert_eq!(cp.holders(), vec![second.clone()]);
    assert_eq!(cp.reach(5 * SECOND), second);

    // SIGTERM the leader: the Lease is released, the route stays until the next leader has
    // announced, then is withdrawn (acknowledged), then Cease; all before the process exits.
    cp.set_healthy(&first, true);
    std::thread::sleep(2 * SECOND);
    assert_eq!(announcers(&cp, &mut bird), vec![second.clone()]);
    let prober = cp.prober(Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(300));
    let termed = Instant::now();
    cp.lab.signal_agent(&second, "TERM");
    let mut seen: Vec<Vec<String>> = Vec::new();
    let exited = loop {
        let got = announcers(&cp, &mut bird);
        if seen.last() != Some(&got) {
            seen.push(got);
        }
        if let Some(ok) = cp.lab.wait_agent_exit(&second, Duration::ZERO) {
            break ok;
        }
        assert!(
            termed.elapsed() < 10 * SECOND,
            "the agent did not exit on SIGTERM\n{}",
            cp.lab.logs()
        );
    };
    let exit_time = termed.elapsed();
    assert!(exited, "the agent did not exit cleanly\n{}", cp.lab.logs());
    let after_exit = announcers(&cp, &mut bird);
    std::thread::sleep(SECOND);
    let samples = prober.finish();
    let third = after_exit
        .first()
        .cloned()
        .unwrap_or_else(|| panic!("no route after SIGTERM: {seen:?}\n{}", cp.lab.logs()));
    assert_eq!(
        after_exit,
        vec![third.clone()],
        "the route of the stopped node was still there when it exited: {seen:?}"
    );
    assert_ne!(third, second);
    assert!(
        seen.iter().all(|s| !s.is_empty()),
        "BIRD had no route to the VIP during the handover: {seen:?}"
    );
    let (gap, answered) = gap_after(&samples, termed, &second)
        .unwrap_or_else(|| panic!("nobody took the VIP over after SIGTERM\n{}", cp.lab.logs()));
    let failures = failures_after(&samples, termed);
    eprintln!(
        "BGP control-plane SIGTERM: {second} -> {third}, routes seen {seen:?}, exit after \
         {exit_time:?}, traffic gap {gap:?}, {failures} failed probes"
    );
    assert_eq!(answered, third);
    assert!(gap < 2 * SECOND, "graceful handover took {gap:?}");
    assert!(
        failures <= 2,
        "{failures} probes failed during the handover"
    );
    let log = cp.lab.log(&second);
    assert!(
        log.contains("withdrew every route before stopping")
            && log.contains("withdrawn=1")
            && log.contains("acknowledged=true"),
        "no acknowledged withdrawal in {second}'s log:\n{log}"
    );
    assert_eq!(cp.lease_holder().as_deref(), Some(third.as_str()));
    assert_eq!(
        cp.holders(),
        vec![third.clone()],
        "the stopped node left the VIP on lo"
    );
}
