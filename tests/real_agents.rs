//! The agent on the real API server: the control plane (tests/kubecp) runs in the `api` host of
//! the network-namespace LAN (tests/netlab), vipam is installed from manifests/install.yaml with
//! one controller, three `vipam agent`s run in the node namespaces with the `vipam-agent`
//! ServiceAccount's token, and a client on the LAN probes a LoadBalancer address that a Service
//! got through the webhook. Exactly one node answers ARP for it; `kill -9` of the owner moves it
//! within the lease; with the API server stopped for 60 s the same node answers every probe.

#[path = "agentlab/mod.rs"]
mod agentlab;
mod kubecp;
#[path = "netlab/mod.rs"]
mod netlab;
mod support;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agentlab::{NODES, add_vip_on_nodes, failures_after, gap_after, probe, prober_in};
use kubecp::vipam::{Installation, assert_no_forbidden, describe, get_json, service_yaml};
use kubecp::{ControlPlane, wait_for};
use netlab::Netlab;
use serde_json::json;

const SECOND: Duration = Duration::from_secs(1);
const LEASE: Duration = Duration::from_secs(3);

/// The agents, killed when the test ends (also when it fails).
struct Agents {
    children: Vec<(String, Child)>,
    logs: Vec<PathBuf>,
}

impl Agents {
    fn pid(&self, node: &str) -> u32 {
        self.children
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, c)| c.id())
            .unwrap_or_else(|| panic!("no agent on {node}"))
    }

    fn logs(&self) -> String {
        self.logs
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "----- {} -----\n{}",
                    path.display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn announcer(cp: &ControlPlane, allocation: &str) -> Option<String> {
    let out = cp.kubectl(&["get", "ipallocation", allocation, "-o", "json"]);
    let object: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    object["status"]["announcer"]["node"]
        .as_str()
        .map(str::to_string)
}

fn signal(pid: i32, signal: i32) {
    // SAFETY: kill with a pid this test started and a valid signal number.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

#[test]
fn agents_on_the_real_api_server_answer_fail_over_and_outlive_an_outage() {
    let net = Netlab::standard();
    let (workload_stop, workloads) = agentlab::start_workloads(&net);
    let api_address = net.host("api").ipv4.to_string();
    let cp = ControlPlane::start_in(net.ns("api"), &api_address);
    let vipam = Installation::install(&cp, &[&api_address], &[]);

    // No kubelet registers the nodes: create them as it would.
    for node in NODES {
        let object = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}
        });
        let out = cp.kubectl_stdin(&["create", "-f", "-"], &object.to_string());
        assert!(out.status.success(), "Node {node}: {}", describe(&out));
    }
    let config = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "vipam.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "lan"},
         "spec": {"blocks": [{"start": "192.0.2.200", "stop": "192.0.2.209"}]}},
        {"apiVersion": "vipam.io/v1alpha1", "kind": "L2Announcement", "metadata": {"name": "lan"},
         "spec": {"interfaces": ["^eth0$"], "mode": "arp"}}
    ]});
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &config.to_string());
    assert!(
        out.status.success(),
        "pool and announcement: {}",
        describe(&out)
    );

    let kubeconfig = cp.service_account_kubeconfig("vipam-system", "vipam-agent");
    let mut agents = Agents {
        children: Vec::new(),
        logs: Vec::new(),
    };
    for node in NODES {
        let log_path = cp.scratch.join(format!("agent-{node}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = std::process::Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            net.ns(node),
            kubecp::vipam::vipam_bin(),
            "agent",
        ])
        .args(["--node-name", node, "--namespace", "vipam-system"])
        .args(["--admin-addr", "127.0.0.1:9478"])
        .arg("--state-dir")
        .arg(cp.scratch.join(format!("agent-{node}-state")))
        .args(["--lease-duration", "3s", "--renew-interval", "1s"])
        .args(["--resync", "2s", "--garp-interval", "10s"])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,vipam=debug")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        agents
            .children
            .push((node.to_string(), kubecp::spawn_owned(cmd)));
        agents.logs.push(log_path);
    }

    // A Service pins an address through the webhook, as a user would apply it.
    let vip: IpAddr = "192.0.2.200".parse().unwrap();
    add_vip_on_nodes(&net, vip);
    let service = service_yaml(
        "default",
        "web",
        &[("vipam.io/ips", "192.0.2.200")],
        &[(agentlab::SERVICE_PORT, "TCP")],
    );
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &service);
    assert!(out.status.success(), "Service: {}", describe(&out));
    let allocation = agentlab::allocation_name(vip);
    let owner = wait_for("an announcer in status", 30 * SECOND, || {
        announcer(&cp, &allocation)
    });
    let answered = wait_for("the client to reach the address", 20 * SECOND, || {
        net.run_in("client", move || probe(vip, Duration::from_millis(300)))
    });
    assert_eq!(answered, owner, "{}", agents.logs());
    wait_for("the Service's status", 30 * SECOND, || {
        let svc = get_json(&cp, &["get", "service", "-n", "default", "web"]);
        kubecp::vipam::ingress_ips(&svc)
            .contains(&vip.to_string())
            .then_some(())
    });

    // Exactly one MAC answers ARP: the owner's.
    let out = net.exec(
        "client",
        "arping",
        &["-c", "3", "-w", "4", "-I", "eth0", "192.0.2.200"],
    );
    assert!(
        out.status.success(),
        "arping from the client: {}",
        describe(&out)
    );
    let replies = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        replies.contains(&net.host(&owner).mac_string()),
        "no ARP reply from the owner {owner}:\n{replies}"
    );
    for node in NODES.iter().filter(|n| **n != owner) {
        let mac = net.host(node).mac_string();
        assert!(
            !replies.contains(&mac),
            "{node} ({mac}) answered ARP too:\n{replies}"
        );
    }

    // kill -9 of the owner: another node answers within the lease.
    let prober = prober_in(&net, Duration::from_millis(20), move |t| probe(vip, t));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    signal(agents.pid(&owner) as i32, libc::SIGKILL);
    std::thread::sleep(LEASE + 4 * SECOND);
    let samples = prober.finish();
    let (gap, second) = gap_after(&samples, killed, &owner)
        .unwrap_or_else(|| panic!("no node took {vip} over after kill -9\n{}", agents.logs()));
    eprintln!("real API: crash failover gap {gap:?} ({owner} -> {second})");
    assert!(
        gap <= LEASE + 2 * SECOND,
        "failover took {gap:?}\n{}",
        agents.logs()
    );
    wait_for("status.announcer to move", 10 * SECOND, || {
        (announcer(&cp, &allocation).as_deref() == Some(second.as_str())).then_some(())
    });

    // The API server stopped for 60 s: every probe is answered by the same node.
    let prober = prober_in(&net, Duration::from_millis(100), move |t| probe(vip, t));
    let apiserver = cp.pid("kube-apiserver");
    signal(apiserver, libc::SIGSTOP);
    let stopped = Instant::now();
    std::thread::sleep(60 * SECOND);
    let samples = prober.finish();
    signal(apiserver, libc::SIGCONT);
    let failed = failures_after(&samples, stopped);
    let moved = samples
        .iter()
        .filter(|(_, a)| a.as_ref().is_some_and(|n| *n != second))
        .count();
    eprintln!(
        "real API stopped 60 s: {} probes, {failed} unanswered, {moved} by another node",
        samples.len()
    );
    assert!(samples.len() > 300, "only {} probes", samples.len());
    assert_eq!(
        failed,
        0,
        "probes failed during the outage\n{}",
        agents.logs()
    );
    assert_eq!(
        moved,
        0,
        "the address moved during the outage\n{}",
        agents.logs()
    );
    // After it: still the same node.
    let answered = wait_for("the client to reach the address", 20 * SECOND, || {
        net.run_in("client", move || probe(vip, Duration::from_millis(300)))
    });
    assert_eq!(answered, second);

    assert_no_forbidden(&agents.logs);
    vipam.assert_no_forbidden();
    drop(agents);
    workload_stop.store(true, Ordering::Release);
    for thread in workloads {
        let _ = thread.join();
    }
}
