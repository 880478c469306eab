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

/// The LAN with its workloads and the control plane in its `api` host.
struct Lab {
    net: Netlab,
    cp: ControlPlane,
    api_address: String,
    workload_stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    workloads: Vec<std::thread::JoinHandle<()>>,
}

impl Lab {
    /// With `management`, the nodes and the API server also share a second LAN
    /// (203.0.113.0/24 on `eth1`) and the API server is reached over it only, so a node that
    /// loses its first LAN still renews its Lease.
    fn start(management: bool) -> Lab {
        Lab::start_on(Netlab::standard(), management)
    }

    /// The LAN with a BGP router host `router` (.1) as well (for BIRD).
    fn start_with_router() -> Lab {
        let net = Netlab::with_router();
        Lab::start_on(net, false)
    }

    fn start_on(net: Netlab, management: bool) -> Lab {
        let (workload_stop, workloads) = agentlab::start_workloads(&net);
        let api_address = if management {
            net.add_management_network(&["node1", "node2", "node3", "api"]);
            netlab::mgmt_ipv4(net.host("api").number).to_string()
        } else {
            net.host("api").ipv4.to_string()
        };
        let cp = ControlPlane::start_in(net.ns("api"), &api_address);
        Lab {
            net,
            cp,
            api_address,
            workload_stop,
            workloads,
        }
    }

    /// vipam installed from manifests/install.yaml (one controller).
    fn install(&self) -> Installation<'_> {
        Installation::install(&self.cp, &[&self.api_address], &[])
    }

    /// Nodes, a pool and an L2Announcement (arp mode on eth0), and an agent on every node.
    fn start_agents(&self) -> Agents {
        let (net, cp) = (&self.net, &self.cp);
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
        agents
    }

    /// A Service that pins `vip` through the webhook, as a user would apply it; returns the
    /// node that announces it once the client reaches it.
    fn pin_service(&self, agents: &Agents, name: &str, vip: IpAddr) -> String {
        add_vip_on_nodes(&self.net, vip);
        let service = service_yaml(
            "default",
            name,
            &[("vipam.io/ips", &vip.to_string())],
            &[(agentlab::SERVICE_PORT, "TCP")],
        );
        let out = self.cp.kubectl_stdin(&["apply", "-f", "-"], &service);
        assert!(out.status.success(), "Service: {}", describe(&out));
        let allocation = agentlab::allocation_name(vip);
        let owner = wait_for("an announcer in status", 30 * SECOND, || {
            announcer(&self.cp, &allocation)
        });
        let answered = wait_for("the client to reach the address", 20 * SECOND, || {
            self.net
                .run_in("client", move || probe(vip, Duration::from_millis(300)))
        });
        assert_eq!(answered, owner, "{}", agents.logs());
        owner
    }

    /// The `vipam.io/interfaces` annotation and renewTime of `node`'s agent Lease.
    fn lease(&self, node: &str) -> (String, String) {
        let lease = get_json(
            &self.cp,
            &[
                "get",
                "lease",
                "-n",
                "vipam-system",
                &format!("vipam-agent-{node}"),
            ],
        );
        (
            lease["metadata"]["annotations"]["vipam.io/interfaces"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            lease["spec"]["renewTime"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.workload_stop.store(true, Ordering::Release);
        for thread in self.workloads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[test]
fn agents_on_the_real_api_server_answer_fail_over_and_outlive_an_outage() {
    let lab = Lab::start(false);
    let vipam = lab.install();
    let agents = lab.start_agents();
    let (net, cp) = (&lab.net, &lab.cp);
    let vip: IpAddr = "192.0.2.200".parse().unwrap();
    let owner = lab.pin_service(&agents, "web", vip);
    let allocation = agentlab::allocation_name(vip);
    wait_for("the Service's status", 30 * SECOND, || {
        let svc = get_json(cp, &["get", "service", "-n", "default", "web"]);
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
    let prober = prober_in(net, Duration::from_millis(20), move |t| probe(vip, t));
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
        (announcer(cp, &allocation).as_deref() == Some(second.as_str())).then_some(())
    });

    // The API server stopped for 60 s: every probe is answered by the same node.
    let prober = prober_in(net, Duration::from_millis(100), move |t| probe(vip, t));
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
}

/// A node whose announcing interface loses carrier (its switch port goes down; the interface
/// stays administratively up) stops being eligible at once: its Lease, still renewed over the
/// management network, drops the interface, and another node takes the address without
/// waiting for any Lease to expire. When the carrier comes back, the interface counts again.
#[test]
fn carrier_loss_on_the_owners_lan_moves_the_address_at_once() {
    let lab = Lab::start(true);
    let vipam = lab.install();
    let agents = lab.start_agents();
    let (net, cp) = (&lab.net, &lab.cp);
    let vip: IpAddr = "192.0.2.201".parse().unwrap();
    let owner = lab.pin_service(&agents, "web", vip);
    let allocation = agentlab::allocation_name(vip);
    let (interfaces, _) = lab.lease(&owner);
    assert!(
        interfaces.split(',').any(|i| i == "eth0"),
        "the owner's Lease does not list eth0: {interfaces}"
    );

    let prober = prober_in(net, Duration::from_millis(20), move |t| probe(vip, t));
    std::thread::sleep(Duration::from_millis(300));
    let cut = Instant::now();
    net.set_lan_port(&owner, false);
    let second = wait_for("another node to answer", 10 * SECOND, || {
        gap_after(&prober.samples(), cut, &owner).map(|(_, node)| node)
    });
    std::thread::sleep(SECOND);
    let samples = prober.finish();
    let (gap, _) = gap_after(&samples, cut, &owner).unwrap();
    eprintln!("real API: carrier-loss failover gap {gap:?} ({owner} -> {second})");

    // The owner's Lease was renewed all along (so nothing expired) and no longer lists eth0.
    let (interfaces, renewed) = lab.lease(&owner);
    assert!(
        !interfaces.split(',').any(|i| i == "eth0"),
        "the Lease still lists eth0 after the carrier loss: {interfaces}\n{}",
        agents.logs()
    );
    std::thread::sleep(2 * SECOND);
    let (_, renewed_later) = lab.lease(&owner);
    assert_ne!(
        renewed,
        renewed_later,
        "the owner's Lease is not being renewed over the management network\n{}",
        agents.logs()
    );
    wait_for("status.announcer to move", 10 * SECOND, || {
        (announcer(cp, &allocation).as_deref() == Some(second.as_str())).then_some(())
    });

    // Carrier back: eth0 counts again and the address stays reachable.
    net.set_lan_port(&owner, true);
    wait_for("eth0 back in the owner's Lease", 10 * SECOND, || {
        lab.lease(&owner)
            .0
            .split(',')
            .any(|i| i == "eth0")
            .then_some(())
    });
    wait_for("the client to reach the address", 20 * SECOND, || {
        net.run_in("client", move || probe(vip, Duration::from_millis(300)))
    });
    assert_no_forbidden(&agents.logs);
    vipam.assert_no_forbidden();
}

/// The condition `type_` of an object as JSON: (status, reason, message).
fn condition(object: &serde_json::Value, type_: &str) -> Option<(String, String, String)> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (text("status"), text("reason"), text("message"))
        })
}

/// Duplicate address detection end to end: a host on the LAN already holds the address a
/// Service pins. The owner's agent probes before announcing, finds it in use and does not
/// announce; the IPAllocation and the Service say so (condition naming the other MAC and the
/// interface, Announced=False with reason AddressConflict, an Event). When the host lets go, the
/// agent's recheck announces the address and the reports clear.
#[test]
fn an_address_in_use_on_the_lan_is_reported_and_recovers() {
    let lab = Lab::start(false);
    let vipam = lab.install();
    let agents = lab.start_agents();
    let (net, cp) = (&lab.net, &lab.cp);
    let vip: IpAddr = "192.0.2.202".parse().unwrap();
    add_vip_on_nodes(net, vip);
    let squatter = net.host("client").mac_string();
    net.exec_ok(
        "client",
        "ip",
        &["addr", "add", "192.0.2.202/32", "dev", "eth0"],
    );

    let service = service_yaml(
        "default",
        "web",
        &[("vipam.io/ips", "192.0.2.202")],
        &[(agentlab::SERVICE_PORT, "TCP")],
    );
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &service);
    assert!(out.status.success(), "Service: {}", describe(&out));
    let allocation = agentlab::allocation_name(vip);

    let (status, reason, message) =
        wait_for("the IPAllocation's conflict condition", 30 * SECOND, || {
            let object = get_json(cp, &["get", "ipallocation", &allocation]);
            condition(&object, "vipam.io/AddressConflict").filter(|(s, _, _)| s == "True")
        });
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "AddressConflict")
    );
    assert!(
        message.contains(&squatter) && message.contains("eth0"),
        "the condition does not name the MAC and the interface: {message}"
    );
    let object = get_json(cp, &["get", "ipallocation", &allocation]);
    assert_eq!(object["status"]["conflict"]["mac"], squatter.as_str());
    assert!(
        object["status"]["announcer"].is_null(),
        "announced although in conflict: {object}"
    );
    let (_, reason, message) = wait_for("the Service's Announced condition", 30 * SECOND, || {
        let svc = get_json(cp, &["get", "service", "-n", "default", "web"]);
        condition(&svc, "vipam.io/Announced")
            .filter(|(s, r, _)| s == "False" && r == "AddressConflict")
    });
    assert_eq!(reason, "AddressConflict");
    assert!(message.contains(&squatter), "{message}");
    wait_for("the AddressConflict Event", 30 * SECOND, || {
        let events = get_json(cp, &["get", "events.events.k8s.io", "-n", "default"]);
        events["items"]
            .as_array()
            .is_some_and(|items| {
                items
                    .iter()
                    .any(|e| e["reason"] == "AddressConflict" && e["regarding"]["name"] == "web")
            })
            .then_some(())
    });

    // The host lets go: the recheck announces the address and everything clears.
    net.exec_ok(
        "client",
        "ip",
        &["addr", "del", "192.0.2.202/32", "dev", "eth0"],
    );
    let answered = wait_for("the client to reach the address", 30 * SECOND, || {
        net.run_in("client", move || probe(vip, Duration::from_millis(300)))
    });
    wait_for("the conflict cleared", 20 * SECOND, || {
        let object = get_json(cp, &["get", "ipallocation", &allocation]);
        let cleared = object["status"]["conflict"].is_null()
            && object["status"]["announcer"]["node"] == answered.as_str()
            && condition(&object, "vipam.io/AddressConflict").is_some_and(|(s, _, _)| s == "False");
        cleared.then_some(())
    });
    wait_for("the Service announced", 20 * SECOND, || {
        let svc = get_json(cp, &["get", "service", "-n", "default", "web"]);
        condition(&svc, "vipam.io/Announced")
            .is_some_and(|(s, _, _)| s == "True")
            .then_some(())
    });
    assert_no_forbidden(&agents.logs);
    vipam.assert_no_forbidden();
}

/// BGP on the real API server: a BGPPeer with an invalid field is refused at `kubectl apply`
/// naming the field; valid BGPPeer and BGPAnnouncement objects make every agent peer with BIRD,
/// which learns the Service's address from all three nodes; the controller reports each
/// node's session in BGPPeer status (`3/3` Established), every announcing node in the
/// IPAllocation's `status.announcers` (via bgp), and the Service's Announced condition.
#[test]
fn bgp_on_the_real_api_server_reports_sessions_and_announcers() {
    use netlab::routers::{Bird, PeerConfig};
    let lab = Lab::start_with_router();
    let vipam = lab.install();
    let agents = lab.start_agents();
    let (net, cp) = (&lab.net, &lab.cp);
    let router = net.host("router").ipv4;
    let peers: Vec<PeerConfig> = NODES
        .iter()
        .map(|node| {
            let mut peer = PeerConfig::new(
                router,
                65000,
                IpAddr::V4(net.host(node).ipv4),
                4_200_000_001,
            );
            peer.name = node.to_string();
            peer
        })
        .collect();
    let mut bird = Bird::start(net, "router", &peers);
    for node in NODES {
        let id = net.host(node).ipv4.to_string();
        let out = cp.kubectl(&[
            "annotate",
            "node",
            node,
            &format!("vipam.io/bgp-router-id={id}"),
        ]);
        assert!(
            out.status.success(),
            "annotating {node}: {}",
            describe(&out)
        );
    }
    // The webhook names every invalid field.
    let bad = json!({"apiVersion": "vipam.io/v1alpha1", "kind": "BGPPeer",
        "metadata": {"name": "bad"},
        "spec": {"peerAddress": "192.0.2.1", "peerASN": 23456, "myASN": 65001, "holdTime": "2s"}});
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &bad.to_string());
    let text = describe(&out);
    assert!(
        !out.status.success(),
        "an invalid BGPPeer was accepted: {text}"
    );
    assert!(
        text.contains("spec.peerASN: 23456 is AS_TRANS") && text.contains("spec.holdTime: 2s"),
        "{text}"
    );
    let config = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "vipam.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "routed"},
         "spec": {"blocks": [{"cidr": "203.0.113.0/28"}]}},
        {"apiVersion": "vipam.io/v1alpha1", "kind": "L2Announcement", "metadata": {"name": "lan"},
         "spec": {"interfaces": ["^eth0$"], "mode": "arp", "ipPools": ["lan"]}},
        {"apiVersion": "vipam.io/v1alpha1", "kind": "BGPPeer", "metadata": {"name": "router"},
         "spec": {"peerAddress": router.to_string(), "peerASN": 65000, "myASN": 4_200_000_001u32}},
        {"apiVersion": "vipam.io/v1alpha1", "kind": "BGPAnnouncement", "metadata": {"name": "routed"},
         "spec": {"ipPools": ["routed"], "communities": ["65000:100"]}}
    ]});
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &config.to_string());
    assert!(out.status.success(), "BGP objects: {}", describe(&out));
    let service = service_yaml(
        "default",
        "routed-web",
        &[("vipam.io/ips", "203.0.113.5")],
        &[(agentlab::SERVICE_PORT, "TCP")],
    );
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &service);
    assert!(out.status.success(), "Service: {}", describe(&out));

    let mut want: Vec<IpAddr> = NODES.iter().map(|n| IpAddr::V4(net.host(n).ipv4)).collect();
    want.sort();
    wait_for(
        "BIRD to learn 203.0.113.5 from every node",
        30 * SECOND,
        || {
            let mut hops: Vec<IpAddr> = bird
                .routes()
                .iter()
                .filter(|r| r.prefix == "203.0.113.5/32")
                .flat_map(|r| r.next_hops.clone())
                .collect();
            hops.sort();
            hops.dedup();
            (hops == want).then_some(())
        },
    );
    let peer = wait_for("BGPPeer status 3/3", 30 * SECOND, || {
        let peer = get_json(cp, &["get", "bgppeer", "router"]);
        (peer["status"]["established"] == "3/3").then_some(peer)
    });
    let sessions = peer["status"]["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "{peer}");
    for session in sessions {
        assert_eq!(session["state"], "Established", "{peer}");
        assert!(session["since"].is_string(), "{peer}");
    }
    assert_eq!(condition(&peer, "Ready").unwrap().0, "True", "{peer}");
    let allocation = agentlab::allocation_name("203.0.113.5".parse().unwrap());
    let announcers = wait_for("status.announcers by BGP", 30 * SECOND, || {
        let object = get_json(cp, &["get", "ipallocation", &allocation]);
        let list = object["status"]["announcers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut nodes: Vec<String> = list
            .iter()
            .filter(|a| a["via"] == "bgp")
            .filter_map(|a| a["node"].as_str().map(String::from))
            .collect();
        nodes.sort();
        (nodes == NODES).then_some(list)
    });
    assert!(
        announcers.iter().all(|a| a["peers"] == json!(["router"])),
        "{announcers:?}"
    );
    let announced = wait_for("the Service to be Announced by BGP", 30 * SECOND, || {
        let svc = get_json(cp, &["get", "service", "-n", "default", "routed-web"]);
        condition(&svc, "vipam.io/Announced").filter(|c| c.0 == "True")
    });
    assert!(
        announced
            .2
            .contains("203.0.113.5 by BGP from nodes node1, node2, node3"),
        "{announced:?}"
    );
    let announcement = get_json(cp, &["get", "bgpannouncement", "routed"]);
    assert_eq!(
        condition(&announcement, "Ready").unwrap().0,
        "True",
        "{announcement}"
    );
    assert_no_forbidden(&agents.logs);
    vipam.assert_no_forbidden();
}
