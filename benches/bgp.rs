//! vipam agents announcing by BGP to BIRD 2, on a LAN of network namespaces (root): the time
//! from an IPAllocation to the route at BIRD, the gap a client sees when the node its flow goes
//! to stops or dies, a full table of 5,000 addresses after a session comes up, API writes per
//! second and agent memory. Results go to BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench bgp               # everything (about 8 minutes)
//! cargo bench --bench bgp -- latency    # IPAllocation -> route at BIRD
//! cargo bench --bench bgp -- gaps       # graceful stop and node crash, client-side gap
//! cargo bench --bench bgp -- table      # 5,000 addresses after a session comes up
//! cargo bench --bench bgp -- writes     # API writes/s and RSS (1, 100, 5,000 addresses)
//! cargo bench --bench bgp -- writes-5000
//! ```

#[path = "../tests/agentlab/mod.rs"]
mod agentlab;
#[path = "../tests/netlab/mod.rs"]
mod netlab;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream};
use std::time::{Duration, Instant};

use agentlab::{AgentFlags, AgentLab, NODES, Samples, failures_after, gap_after};
use netlab::routers::{Bird, PeerConfig};
use serde_json::json;

const ROUTER_ASN: u32 = 65000;
const NODE_ASN: u32 = 4_200_000_001;

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wants("latency") || wants("gaps") {
        latency_and_gaps(wants("latency"), wants("gaps"));
    }
    if wants("table") {
        table_after_session_up();
    }
    for ips in [1usize, 100, 5000] {
        if wants(&format!("writes-{ips}")) {
            writes_and_memory(ips);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lab

/// BIRD on the router with one passive session per node and family (`node1`, `node1v6`, ...).
fn bird(lab: &AgentLab, v6: bool) -> Bird {
    let router = lab.net.host("router").ipv4;
    let mut peers = Vec::new();
    for node in NODES {
        let host = lab.net.host(node).clone();
        let mut peer = PeerConfig::new(router, ROUTER_ASN, IpAddr::V4(host.ipv4), NODE_ASN);
        peer.name = node.to_string();
        peers.push(peer);
        if v6 {
            let mut peer = PeerConfig::new(router, ROUTER_ASN, IpAddr::V6(host.ipv6), NODE_ASN);
            peer.name = format!("{node}v6");
            peers.push(peer);
        }
    }
    Bird::start(&lab.net, "router", &peers)
}

/// BGPPeer `router` (and `router-v6` when `v6`), default hold time (9 s), and one
/// BGPAnnouncement for every address.
fn seed_bgp(lab: &AgentLab, v6: bool) {
    let router = lab.net.host("router").clone();
    let mut peers = vec![("router", router.ipv4.to_string())];
    if v6 {
        peers.push(("router-v6", router.ipv6.to_string()));
    }
    for (name, address) in peers {
        lab.fake.seed(json!({
            "apiVersion": "vipam.io/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": name},
            "spec": {"peerAddress": address, "peerASN": ROUTER_ASN, "myASN": NODE_ASN},
        }));
    }
    lab.fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "BGPAnnouncement",
        "metadata": {"name": "routed"},
        "spec": {"communities": ["65000:100"]},
    }));
}

fn seed_service_only(lab: &AgentLab, name: &str) {
    lab.fake.seed(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
                 "selector": {"app": name},
                 "ports": [{"port": agentlab::SERVICE_PORT, "protocol": "TCP"}]},
    }));
}

fn seed_allocation(lab: &AgentLab, name: &str, ip: IpAddr) {
    lab.fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "IPAllocation",
        "metadata": {"name": agentlab::allocation_name(ip)},
        "spec": {"ip": ip.to_string(), "pool": "lan",
                 "services": [{"namespace": "default", "name": name,
                               "ports": [{"protocol": "TCP", "port": agentlab::SERVICE_PORT}]}]},
        "status": {"phase": "Bound"},
    }));
}

/// How many BGP paths BIRD holds for `prefix` (one per announcing node), and how long the
/// `birdc` round trip took.
fn paths_at_bird(bird: &mut Bird, prefix: &str) -> (usize, Duration) {
    let start = Instant::now();
    // `show route PREFIX` fails while the network is unknown; a filter just matches nothing.
    let out = bird.birdc(&["show", "route", "where", "net", "=", prefix]);
    (out.matches(" unicast [").count(), start.elapsed())
}

fn wait_established(bird: &mut Bird, protocols: &[String], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for name in protocols {
        while bird.bgp_state(name) != "Established" {
            assert!(
                Instant::now() < deadline,
                "BIRD's {name}: {} after {timeout:?}\n{}",
                bird.bgp_state(name),
                bird.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn node_protocols() -> Vec<String> {
    NODES.iter().map(|n| n.to_string()).collect()
}

fn wait_paths(bird: &mut Bird, prefix: &str, want: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (got, _) = paths_at_bird(bird, prefix);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{prefix}: {got} paths at BIRD, wanted {want} within {timeout:?}\n{}",
            bird.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn summary(label: &str, mut values: Vec<Duration>) {
    values.sort();
    println!(
        "{label}: n={} min {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        values.len(),
        ms(values[0]),
        ms(percentile(&values, 0.5)),
        ms(percentile(&values, 0.99)),
        ms(*values.last().unwrap()),
    );
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: IPAllocation -> route at BIRD; client-visible gaps

const LATENCY_TRIALS: usize = 50;
const GRACEFUL_TRIALS: usize = 10;
const CRASH_TRIALS: usize = 5;

fn latency_and_gaps(latency: bool, gaps: bool) {
    let lab = AgentLab::with_router("bench-bgp", AgentFlags::default());
    let mut bird = bird(&lab, false);
    seed_bgp(&lab, false);
    let web: IpAddr = "203.0.113.10".parse().unwrap();
    lab.seed_service("web", web, false);
    lab.add_vip_on_nodes(web);
    lab.start_all();
    wait_established(&mut bird, &node_protocols(), Duration::from_secs(30));
    wait_paths(&mut bird, "203.0.113.10/32", 3, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    if latency {
        allocation_to_route(&lab, &mut bird);
    }
    if gaps {
        graceful_gaps(&lab, &mut bird, web);
        crash_gaps(&lab, &mut bird, web);
    }
}

/// Seeds a Service, then (200 ms later) its IPAllocation, and polls BIRD with `birdc` in a
/// tight loop until the first path and all three paths are there.
fn allocation_to_route(lab: &AgentLab, bird: &mut Bird) {
    let mut first = Vec::new();
    let mut all = Vec::new();
    let mut round_trips = Vec::new();
    for trial in 0..LATENCY_TRIALS {
        let ip: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 100 + trial as u8));
        let prefix = format!("{ip}/32");
        let name = format!("lat-{trial}");
        seed_service_only(lab, &name);
        std::thread::sleep(Duration::from_millis(200));
        let seeded = Instant::now();
        seed_allocation(lab, &name, ip);
        let mut first_at = None;
        loop {
            let (paths, round_trip) = paths_at_bird(bird, &prefix);
            round_trips.push(round_trip);
            if paths >= 1 && first_at.is_none() {
                first_at = Some(seeded.elapsed());
            }
            if paths == NODES.len() {
                all.push(seeded.elapsed());
                break;
            }
            assert!(
                seeded.elapsed() < Duration::from_secs(10),
                "{prefix}: {paths} paths at BIRD after 10 s\n{}",
                lab.logs()
            );
        }
        first.push(first_at.expect("set above"));
        std::thread::sleep(Duration::from_millis(100));
    }
    summary(
        "IPAllocation seeded at the fake API -> first path at BIRD",
        first,
    );
    summary("IPAllocation seeded -> all three nodes' paths at BIRD", all);
    summary(
        "resolution: one `birdc show route PREFIX` round trip",
        round_trips,
    );
}

/// The node answering the client's probes of `vip` (the router's ECMP picks it by the flow).
fn flow_node(lab: &AgentLab, vip: IpAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(node) = lab.probe(vip, Duration::from_millis(300)) {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "no answer on {vip}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The longest time the client had no answer after `event`: from the start of the first
/// failed probe of a run to the start of the next answered one.
fn longest_outage(samples: &Samples, event: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    let mut failing_since: Option<Instant> = None;
    for (at, answer) in samples.iter().filter(|(at, _)| *at >= event) {
        match (answer, failing_since) {
            (None, None) => failing_since = Some(*at),
            (Some(_), Some(since)) => {
                longest = longest.max(*at - since);
                failing_since = None;
            }
            _ => {}
        }
    }
    longest
}

/// Restarts `node`'s agent and waits until BIRD has its path for the VIP again.
fn restore(lab: &AgentLab, bird: &mut Bird, node: &str) {
    lab.start_agent(node);
    wait_established(bird, &[node.to_string()], Duration::from_secs(30));
    wait_paths(bird, "203.0.113.10/32", 3, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
}

/// SIGTERM to the agent of the node the client's flow goes to: the agent withdraws, then
/// stops; the node's workload keeps answering meanwhile (it is not the agent).
fn graceful_gaps(lab: &AgentLab, bird: &mut Bird, vip: IpAddr) {
    let mut moved = Vec::new();
    let mut outages = Vec::new();
    let mut failed = 0;
    for _ in 0..GRACEFUL_TRIALS {
        let node = flow_node(lab, vip);
        let prober = lab.prober_with(Duration::from_millis(10), move |_| {
            agentlab::probe(vip, Duration::from_millis(100))
        });
        std::thread::sleep(Duration::from_millis(300));
        let at = Instant::now();
        lab.signal_agent(&node, "TERM");
        assert_eq!(
            lab.wait_agent_exit(&node, Duration::from_secs(10)),
            Some(true)
        );
        std::thread::sleep(Duration::from_millis(500));
        let samples = prober.finish();
        if let Some((gap, _)) = gap_after(&samples, at, &node) {
            moved.push(gap);
        }
        outages.push(longest_outage(&samples, at));
        failed += failures_after(&samples, at);
        restore(lab, bird, &node);
    }
    println!(
        "graceful (SIGTERM) of the flow's node: {failed} failed probes in {GRACEFUL_TRIALS} \
         trials (probe every 10 ms, timeout 100 ms); flow moved in {}/{GRACEFUL_TRIALS} trials",
        moved.len()
    );
    summary("graceful: longest client-side outage", outages);
    if !moved.is_empty() {
        summary("graceful: SIGTERM -> first answer from another node", moved);
    }
}

/// The flow's node dies: its LAN port goes down (no FIN, no NOTIFICATION). BIRD drops its path
/// when the hold time (9 s) expires.
fn crash_gaps(lab: &AgentLab, bird: &mut Bird, vip: IpAddr) {
    let mut gaps = Vec::new();
    for _ in 0..CRASH_TRIALS {
        let node = flow_node(lab, vip);
        let prober = lab.prober_with(Duration::from_millis(10), move |_| {
            agentlab::probe(vip, Duration::from_millis(100))
        });
        std::thread::sleep(Duration::from_millis(300));
        let at = Instant::now();
        lab.net.set_lan_port(&node, false);
        let deadline = at + Duration::from_secs(20);
        let gap = loop {
            if let Some((gap, _)) = gap_after(&prober.samples(), at, &node) {
                break gap;
            }
            assert!(Instant::now() < deadline, "no takeover from {node}");
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(prober);
        gaps.push(gap);
        lab.net.set_lan_port(&node, true);
        // BIRD holds a session that failed in its error wait (60 s by default) and closes
        // connections meanwhile: a restart ends it.
        bird.birdc(&["restart", &node]);
        wait_established(bird, std::slice::from_ref(&node), Duration::from_secs(40));
        wait_paths(bird, "203.0.113.10/32", 3, Duration::from_secs(20));
        std::thread::sleep(Duration::from_secs(1));
    }
    summary(
        "node crash (LAN port down), hold time 9 s: port down -> first answer from another node \
         (probe every 10 ms, timeout 100 ms)",
        gaps,
    );
}

// ---------------------------------------------------------------------------------------------
// 3: a full table of 5,000 addresses after a session comes up

fn v4_of(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i as u32,
    ))
}

fn v6_of(i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, i as u16 + 1))
}

fn seed_addresses(lab: &AgentLab, ips: &[IpAddr]) {
    for (i, ip) in ips.iter().enumerate() {
        let name = format!("svc-{i}");
        lab.fake.seed(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
        }));
        lab.fake.seed(json!({
            "apiVersion": "vipam.io/v1alpha1", "kind": "IPAllocation",
            "metadata": {"name": agentlab::allocation_name(*ip)},
            "spec": {"ip": ip.to_string(), "pool": "lan",
                     "services": [{"namespace": "default", "name": name}]},
            "status": {"phase": "Bound"},
        }));
    }
}

/// The routes imported from protocol `name` (every channel) and its BGP state.
fn imported(bird: &mut Bird, name: &str) -> (usize, String) {
    let out = bird.birdc(&["show", "protocols", "all", name]);
    // One `Routes: N imported, ...` line per channel that is up.
    let routes = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Routes:"))
        .filter_map(|r| r.split_whitespace().next())
        .filter_map(|n| n.parse::<usize>().ok())
        .sum();
    let state = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("BGP state:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    (routes, state)
}

fn wait_imported(bird: &mut Bird, protocols: &[String], want: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for name in protocols {
        loop {
            let (routes, state) = imported(bird, name);
            if routes == want && state == "Established" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "BIRD's {name}: {routes} routes ({state}), wanted {want} within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The agent's `bgp_updates_sent` counter for `peer`, from its /metrics.
fn updates_sent(lab: &AgentLab, node: &str, peer: &str) -> u64 {
    let text = lab.net.run_in(node, || {
        let mut stream = TcpStream::connect("127.0.0.1:9478").expect("the agent's admin port");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    });
    let label = format!("peer=\"{peer}\"");
    text.lines()
        .find(|l| l.contains("bgp_updates_sent") && !l.starts_with('#') && l.contains(&label))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no bgp_updates_sent for {peer} in:\n{text}"))
}

const TABLE_SIZE: usize = 5000;
const TABLE_TRIALS: usize = 5;

/// 5,000 IPv4 addresses announced by three agents; BIRD restarts its session with node1
/// (`birdc restart node1`: Cease, the agent connects again after 1 s) and the time runs from
/// the first `birdc` poll that sees the new session Established to the first that sees all
/// 5,000 routes imported from it.
fn table_after_session_up() {
    let lab = AgentLab::with_router("bench-bgp-table", AgentFlags::default());
    let mut bird = bird(&lab, false);
    seed_bgp(&lab, false);
    let ips: Vec<IpAddr> = (0..TABLE_SIZE).map(v4_of).collect();
    seed_addresses(&lab, &ips);
    let started = Instant::now();
    lab.start_all();
    wait_imported(
        &mut bird,
        &node_protocols(),
        TABLE_SIZE,
        Duration::from_secs(120),
    );
    println!(
        "{TABLE_SIZE} addresses: all at BIRD from three agents {:.1} s after the agents started \
         (cache sync included)",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));
    let mut times = Vec::new();
    let mut round_trips = Vec::new();
    for _ in 0..TABLE_TRIALS {
        let before = updates_sent(&lab, "node1", "router");
        bird.birdc(&["restart", "node1"]);
        let mut was_down = false;
        let mut up_at = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let poll = Instant::now();
            let (routes, state) = imported(&mut bird, "node1");
            round_trips.push(poll.elapsed());
            if state != "Established" {
                was_down = true;
            } else if was_down && up_at.is_none() {
                up_at = Some(poll);
            }
            if let Some(up) = up_at
                && routes == TABLE_SIZE
            {
                times.push(poll - up);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node1: {routes} routes ({state}) 30 s after the restart"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        let sent = updates_sent(&lab, "node1", "router") - before;
        println!(
            "session restarted: {sent} UPDATE messages sent by node1 for {TABLE_SIZE} routes \
             (End-of-RIB included)"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    summary(
        &format!("{TABLE_SIZE} routes: new session Established -> all imported by BIRD"),
        times,
    );
    summary(
        "resolution: one `birdc show protocols all` round trip",
        round_trips,
    );
    let rss: Vec<String> = NODES
        .iter()
        .map(|n| format!("{n} {}", rss_mib(&lab, n)))
        .collect();
    println!(
        "agent RSS, {TABLE_SIZE} addresses, one peer: {}",
        rss.join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// 4 and 5: API writes per second, RSS

/// `ips` addresses, alternately IPv4 and IPv6, announced by three agents over two peers
/// (`router` over IPv4, `router-v6` over IPv6) to BIRD; once all are at BIRD, the fake API
/// counts write requests for 30 s; then each agent's RSS.
fn writes_and_memory(ips: usize) {
    let lab = AgentLab::with_router("bench-bgp-writes", AgentFlags::default());
    let mut bird = bird(&lab, true);
    seed_bgp(&lab, true);
    let addresses: Vec<IpAddr> = (0..ips)
        .map(|i| {
            if i % 2 == 0 {
                v4_of(i / 2)
            } else {
                v6_of(i / 2)
            }
        })
        .collect();
    seed_addresses(&lab, &addresses);
    lab.start_all();
    let v4 = addresses.iter().filter(|ip| ip.is_ipv4()).count();
    let v6 = ips - v4;
    wait_imported(&mut bird, &node_protocols(), v4, Duration::from_secs(120));
    let v6_protocols: Vec<String> = NODES.iter().map(|n| format!("{n}v6")).collect();
    wait_imported(&mut bird, &v6_protocols, v6, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(5));
    lab.fake.clear_requests();
    let window = Duration::from_secs(30);
    std::thread::sleep(window);
    let requests = lab.fake.requests();
    let mut writes: BTreeMap<String, usize> = BTreeMap::new();
    for request in requests.iter().filter(|r| r.verb.is_write()) {
        *writes
            .entry(format!("{:?} {}", request.verb, request.resource))
            .or_default() += 1;
    }
    let total: usize = writes.values().sum();
    let rss: Vec<String> = NODES
        .iter()
        .map(|n| format!("{n} {}", rss_mib(&lab, n)))
        .collect();
    println!(
        "{ips} addresses ({v4} IPv4, {v6} IPv6), 3 agents, two peers each: {:.2} API writes/s \
         over {}s ({writes:?}); agent RSS: {}",
        total as f64 / window.as_secs_f64(),
        window.as_secs(),
        rss.join(", ")
    );
}

fn rss_mib(lab: &AgentLab, node: &str) -> String {
    lab.rss_mib(node)
        .map(|mib| format!("{:.1} MiB", mib))
        .unwrap_or_else(|| "?".into())
}
