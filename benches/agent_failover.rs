//! The agent's failover gap as a client sees it, its API writes per second and its memory, on
//! a LAN of network namespaces (root). Results go to BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench agent_failover            # everything (about 5 minutes)
//! cargo bench --bench agent_failover -- gaps    # failover gaps only
//! cargo bench --bench agent_failover -- carrier # carrier-loss failover only
//! cargo bench --bench agent_failover -- writes  # API writes per second and RSS only
//! cargo bench --bench agent_failover -- writes-5000  # one size only
//! ```

#[path = "../tests/agentlab/mod.rs"]
mod agentlab;
#[path = "../tests/netlab/mod.rs"]
mod netlab;
#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use agentlab::{AgentFlags, AgentLab, NODES, gap_after};
use serde_json::json;

const TRIALS: usize = 10;
/// How long one probe waits for an answer (as in the tests: generous).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A probe timeout short enough that a probe lost inside a takeover does not hide how long the
/// takeover took (a probe that left for the old owner's MAC waits this long).
const SHORT_PROBE_TIMEOUT: Duration = Duration::from_millis(50);

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    if wants("gaps") {
        gaps(
            "default timings (--lease-duration 3s --renew-interval 1s)",
            AgentFlags::default(),
        );
        gaps(
            "fast timings (--lease-duration 1s --renew-interval 250ms)",
            AgentFlags {
                lease_duration: "1s",
                renew_interval: "250ms",
                ..AgentFlags::default()
            },
        );
    }
    if wants("carrier") {
        carrier_loss();
    }
    for ips in [1usize, 100, 5000] {
        if wants(&format!("writes-{ips}")) {
            writes_and_memory(ips);
        }
    }
}

fn summary(label: &str, mut gaps: Vec<Duration>) {
    gaps.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = gaps[gaps.len() / 2];
    println!(
        "{label}: n={} min {:.0} ms, median {:.0} ms, max {:.0} ms  (all: {})",
        gaps.len(),
        ms(gaps[0]),
        ms(median),
        ms(*gaps.last().unwrap()),
        gaps.iter()
            .map(|g| format!("{:.0}", ms(*g)))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn wait_reach(lab: &AgentLab, vip: IpAddr, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while lab.probe(vip, Duration::from_millis(200)).as_deref() != Some(node) {
        assert!(
            Instant::now() < deadline,
            "{node} never answered on {vip}\n{}",
            lab.logs()
        );
    }
}

/// Waits until a node announces `vip` and the client reaches it, then runs `event` on that
/// owner while probing every 10 ms (each probe gives up after `probe_timeout`); returns the
/// owner and the time from the event to the first answer from another node.
fn measure_gap(
    lab: &AgentLab,
    vip: IpAddr,
    probe_timeout: Duration,
    event: impl FnOnce(&str),
) -> (String, Duration) {
    let owner = lab.wait_announcer(vip, None, Duration::from_secs(20));
    wait_reach(lab, vip, &owner);
    std::thread::sleep(Duration::from_millis(500));
    let prober = lab.prober_with(Duration::from_millis(10), move |_| {
        agentlab::probe(vip, probe_timeout)
    });
    std::thread::sleep(Duration::from_millis(200));
    let at = Instant::now();
    event(&owner);
    let deadline = at + Duration::from_secs(10);
    loop {
        if let Some((gap, _)) = gap_after(&prober.samples(), at, &owner) {
            return (owner, gap);
        }
        assert!(
            Instant::now() < deadline,
            "no takeover from {owner}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Crash (kill -9) and graceful (SIGTERM) failover gaps: from the signal to the first answer
/// from another node, probing every 10 ms.
fn gaps(label: &str, flags: AgentFlags) {
    let lab = AgentLab::new("bench-gaps", flags);
    let vip: IpAddr = "192.0.2.210".parse().unwrap();
    lab.add_vip_on_nodes(vip);
    lab.seed_announcement("arp");
    lab.seed_service("web", vip, false);
    lab.start_all();
    let mut crash = Vec::new();
    let mut graceful = Vec::new();
    for trial in 0..2 * TRIALS {
        let graceful_trial = trial % 2 == 1;
        let (owner, gap) = measure_gap(&lab, vip, PROBE_TIMEOUT, |owner| {
            lab.signal_agent(owner, if graceful_trial { "TERM" } else { "KILL" })
        });
        if graceful_trial {
            graceful.push(gap);
        } else {
            crash.push(gap);
        }
        lab.wait_agent_exit(&owner, Duration::from_secs(10));
        lab.start_agent(&owner);
        // The restarted node wins its addresses back (rendezvous): let that settle.
        std::thread::sleep(Duration::from_secs(3));
    }
    summary(&format!("crash (kill -9), {label}"), crash);
    summary(&format!("graceful (SIGTERM), {label}"), graceful);
}

/// Carrier-loss failover: the owner's switch port on the LAN goes down (its eth0 loses
/// carrier; its Lease keeps renewing over the management network). Gap from the port going
/// down to the first answer from another node, probing every 10 ms; then the port comes back.
fn carrier_loss() {
    let lab = AgentLab::with_management_network("bench-carrier", AgentFlags::default());
    let vip: IpAddr = "192.0.2.211".parse().unwrap();
    lab.add_vip_on_nodes(vip);
    lab.seed_announcement("arp");
    lab.seed_service("web", vip, false);
    lab.start_all();
    let mut gaps = Vec::new();
    let mut short = Vec::new();
    for _ in 0..TRIALS {
        for (timeout, gaps) in [
            (PROBE_TIMEOUT, &mut gaps),
            (SHORT_PROBE_TIMEOUT, &mut short),
        ] {
            let (owner, gap) = measure_gap(&lab, vip, timeout, |owner| {
                lab.net.set_lan_port(owner, false)
            });
            gaps.push(gap);
            lab.net.set_lan_port(&owner, true);
            // The node with carrier again wins its addresses back (rendezvous): settle.
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    summary(
        "carrier loss on the owner's LAN port, default timings, probe timeout 500 ms",
        gaps,
    );
    summary(
        "carrier loss on the owner's LAN port, default timings, probe timeout 50 ms",
        short,
    );
}

fn ip_of(i: usize) -> IpAddr {
    if i < 250 {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, i as u8 + 1))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, i as u16))
    }
}

/// API writes per second in steady state, and each agent's RSS, with `ips` addresses.
fn writes_and_memory(ips: usize) {
    let lab = AgentLab::new("bench-writes", AgentFlags::default());
    lab.seed_announcement("arp");
    for i in 0..ips {
        let ip = ip_of(i);
        let name = format!("svc-{i}");
        lab.fake.seed(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
        }));
        lab.fake.seed(json!({
            "apiVersion": "vipam.io/v1alpha1", "kind": "IPAllocation",
            "metadata": {"name": agentlab::allocation_name(ip)},
            "spec": {"ip": ip.to_string(), "pool": "lan",
                     "services": [{"namespace": "default", "name": name}]},
            "status": {"phase": "Bound"},
        }));
    }
    lab.start_all();
    // Settle: every address announced and reported.
    let deadline = Instant::now() + Duration::from_secs(120);
    while (0..ips).any(|i| lab.announcer(ip_of(i)).is_none()) {
        assert!(
            Instant::now() < deadline,
            "not every address was announced\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    lab.fake.clear_requests();
    let window = Duration::from_secs(20);
    std::thread::sleep(window);
    let writes = lab
        .fake
        .requests()
        .iter()
        .filter(|r| r.verb.is_write())
        .count();
    let rss: Vec<String> = NODES
        .iter()
        .map(|n| format!("{n} {} MiB", rss_mib(&lab, n)))
        .collect();
    println!(
        "{ips} addresses, 3 eligible nodes: {:.2} API writes/s over {}s; agent RSS: {}",
        writes as f64 / window.as_secs_f64(),
        window.as_secs(),
        rss.join(", ")
    );
}

fn rss_mib(lab: &AgentLab, node: &str) -> String {
    lab.rss_mib(node)
        .map(|mib| format!("{:.1}", mib))
        .unwrap_or_else(|| "?".into())
}
