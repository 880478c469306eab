//! The control-plane VIP end to end, as root, in real network namespaces: three control-plane
//! "nodes" running `vipam agent --control-plane` against the fake API, a stand-in API server on
//! :6443 in each (its /readyz can be switched off), and a client connecting to the VIP.
//! Also: the generated manifests validate against the Kubernetes schemas.
//! See tests/cplab for the set-up.

#[path = "agentlab/mod.rs"]
mod agentlab;
#[path = "cplab/mod.rs"]
mod cplab;
#[path = "netlab/mod.rs"]
mod netlab;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentlab::{AgentFlags, failures_after, gap_after};
use clap::Parser;
use cplab::CpLab;
use serde_json::{Value, json};
use support::Outage;

const SECOND: Duration = Duration::from_secs(1);

/// `vipam agent`'s flags, parsed as the binary parses them.
#[derive(Parser)]
struct AgentCli {
    #[command(flatten)]
    agent: vipam::agent::AgentArgs,
}

#[test]
fn the_leader_holds_the_vip_a_crash_moves_it_and_a_restart_leaves_one_holder() {
    let cp = CpLab::new("cp-crash", AgentFlags::default(), &[]);
    cp.start_all();
    let first = cp.wait_single_holder(None, 20 * SECOND);
    assert_eq!(
        cp.reach(10 * SECOND),
        first,
        "the client reached another node"
    );
    assert_eq!(cp.lease_holder().as_deref(), Some(first.as_str()));
    // The holder stays put while nothing happens (no flapping between renewals).
    std::thread::sleep(3 * SECOND);
    assert_eq!(cp.holders(), vec![first.clone()]);

    // kill -9: the others take over once the Lease has not changed for 3 s by their clocks.
    let prober = cp.prober(Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    cp.lab.signal_agent(&first, "KILL");
    let second = wait_lease_holder(&cp, &first, 10 * SECOND);
    std::thread::sleep(2 * SECOND);
    let samples = prober.finish();
    let (gap, answered) = gap_after(&samples, killed, &first)
        .unwrap_or_else(|| panic!("no other node answered on the VIP\n{}", cp.lab.logs()));
    eprintln!("control-plane crash failover gap: {gap:?} ({first} -> {answered})");
    assert_eq!(answered, second);
    assert!(gap < 6 * SECOND, "crash failover took {gap:?}");

    // A crash leaves the VIP on the dead process's interface; its restart removes it.
    cp.start(&first);
    let holder = cp.wait_single_holder(None, 10 * SECOND);
    assert_eq!(holder, second, "the restarted node took the VIP back");
    std::thread::sleep(3 * SECOND);
    assert_eq!(cp.holders(), vec![second.clone()], "{}", cp.lab.logs());
    assert_eq!(cp.reach(5 * SECOND), second);
}

#[test]
fn an_unhealthy_api_server_gives_the_vip_up_and_sigterm_hands_over() {
    let cp = CpLab::new("cp-health", AgentFlags::default(), &[]);
    // node3's API server is unhealthy from the start: it must never take the Lease.
    cp.set_healthy("node3", false);
    cp.start_all();
    let first = cp.wait_single_holder(None, 20 * SECOND);
    assert_ne!(
        first, "node3",
        "a node with an unhealthy API server took the VIP"
    );

    // The leader's API server fails: after 3 failed checks (500 ms apart) it gives up and
    // releases the Lease; the one healthy node left takes over at once.
    let other = if first == "node1" { "node2" } else { "node1" };
    let failed = Instant::now();
    cp.set_healthy(&first, false);
    let second = cp.wait_single_holder(Some(&first), 10 * SECOND);
    eprintln!(
        "unhealthy API server: the VIP moved {first} -> {second} in {:?}",
        failed.elapsed()
    );
    assert_eq!(
        second, other,
        "the VIP went to a node whose API server is unhealthy"
    );
    assert_eq!(cp.reach(5 * SECOND), second);

    // SIGTERM the new leader: it releases the Lease; the former leader, healthy again, takes
    // over while the leaving node still answers.
    cp.set_healthy(&first, true);
    std::thread::sleep(2 * SECOND);
    assert_eq!(
        cp.holders(),
        vec![second.clone()],
        "the VIP moved back by itself"
    );
    let prober = cp.prober(Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(300));
    let termed = Instant::now();
    cp.lab.signal_agent(&second, "TERM");
    assert_eq!(
        cp.lab.wait_agent_exit(&second, 10 * SECOND),
        Some(true),
        "the agent did not exit cleanly on SIGTERM\n{}",
        cp.lab.logs()
    );
    std::thread::sleep(SECOND);
    let samples = prober.finish();
    let (gap, third) = gap_after(&samples, termed, &second)
        .unwrap_or_else(|| panic!("nobody took the VIP over after SIGTERM\n{}", cp.lab.logs()));
    eprintln!("control-plane graceful handover gap: {gap:?} ({second} -> {third})");
    assert_eq!(third, first);
    assert!(gap < 2 * SECOND, "graceful handover took {gap:?}");
    let failures = failures_after(&samples, termed);
    assert!(
        failures <= 2,
        "{failures} probes failed during the handover"
    );
    assert_eq!(cp.lease_holder().as_deref(), Some(first.as_str()));
    assert_eq!(
        cp.holders(),
        vec![first.clone()],
        "the stopped node left the VIP"
    );
}

#[test]
fn the_holder_keeps_the_vip_while_the_api_is_unreachable_from_every_node() {
    let cp = CpLab::new("cp-outage", AgentFlags::default(), &[]);
    cp.start_all();
    let leader = cp.wait_single_holder(None, 20 * SECOND);
    assert_eq!(cp.reach(10 * SECOND), leader);

    cp.lab.fake.outage(Outage::Refuse);
    let until = Instant::now() + 10 * SECOND;
    while Instant::now() < until {
        assert_eq!(
            cp.holders(),
            vec![leader.clone()],
            "the VIP moved or vanished during the API outage\n{}",
            cp.lab.logs()
        );
        assert_eq!(cp.probe(SECOND).as_deref(), Some(leader.as_str()));
        std::thread::sleep(Duration::from_millis(200));
    }
    cp.lab.fake.resume();
    // The leader renews again; nobody takes over after the outage.
    std::thread::sleep(5 * SECOND);
    assert_eq!(cp.holders(), vec![leader.clone()], "{}", cp.lab.logs());
    assert_eq!(cp.lease_holder().as_deref(), Some(leader.as_str()));
}

fn wait_lease_holder(cp: &CpLab, not: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(holder) = cp.lease_holder()
            && holder != not
        {
            return holder;
        }
        assert!(
            Instant::now() < deadline,
            "no other holder of the Lease within {timeout:?}\n{}",
            cp.lab.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `vipam manifest ...` output, as JSON objects.
fn manifest(kind: &str) -> Vec<Value> {
    manifest_with(kind, &["--vip", "192.0.2.230", "--interface", "eno1"])
}

/// `vipam manifest KIND ARGS...` (run as the shell would), as JSON objects.
fn manifest_with(kind: &str, args: &[&str]) -> Vec<Value> {
    let output = Command::new(agentlab::bin())
        .args(["manifest", kind])
        .args(args)
        .output()
        .expect("running vipam manifest");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    text.split("\n---")
        .map(|doc| doc.trim_start_matches("---").trim())
        .filter(|doc| !doc.is_empty())
        .map(|doc| serde_saphyr::from_str::<Value>(doc).expect("YAML"))
        .collect()
}

#[test]
fn the_generated_manifests_are_valid_and_least_privilege() {
    let pod = manifest("static-pod");
    let objects = manifest("daemonset");
    assert_eq!(pod.len(), 1);
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "Role", "RoleBinding", "DaemonSet"]
    );

    let all: Vec<Value> = pod.iter().chain(objects.iter()).cloned().collect();
    for object in &all {
        assert!(object.get("status").is_none(), "status in {object}");
        assert!(
            object["metadata"].get("creationTimestamp").is_none(),
            "creationTimestamp in {object}"
        );
    }
    let pod_spec = &pod[0]["spec"];
    let ds_spec = &objects[3]["spec"]["template"]["spec"];
    for spec in [pod_spec, ds_spec] {
        assert_eq!(spec["hostNetwork"], true);
        let container = &spec["containers"][0];
        assert_eq!(container["image"], "ghcr.io/vipam/vipam:0.1.0");
        assert_eq!(
            container["securityContext"]["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        assert!(container["securityContext"].get("privileged").is_none());
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for expected in [
            "agent",
            "--control-plane",
            "--vip=192.0.2.230",
            "--interface=eno1",
        ] {
            assert!(args.contains(&expected), "{expected} missing from {args:?}");
        }
        // The arguments parse as the binary's flags and say what was asked.
        let parsed =
            AgentCli::try_parse_from(std::iter::once("agent").chain(args[1..].iter().copied()))
                .unwrap_or_else(|e| panic!("the agent refuses {args:?}: {e}"));
        let cp = parsed.agent.control_plane;
        assert!(cp.control_plane);
        assert_eq!(cp.vip, Some("192.0.2.230".parse().unwrap()));
        assert_eq!(cp.interface.as_deref(), Some("eno1"));
        assert_eq!(cp.port, 6443);
        assert_eq!(cp.control_plane_namespace, "kube-system");
        assert_eq!(parsed.agent.lease_duration, Duration::from_secs(3));
        assert_eq!(parsed.agent.renew_interval, SECOND);
        assert_eq!(
            container["ports"][0]["containerPort"],
            json!(parsed.agent.admin_addr.port())
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["port"],
            json!(parsed.agent.admin_addr.port())
        );
        let kubeconfig = cp.kubeconfig.map(|p| p.display().to_string());
        if spec == pod_spec {
            assert_eq!(kubeconfig.as_deref(), Some("/etc/kubernetes/admin.conf"));
            assert_eq!(
                container["volumeMounts"][0]["mountPath"],
                "/etc/kubernetes/admin.conf"
            );
        } else {
            assert_eq!(
                kubeconfig, None,
                "the DaemonSet uses the in-cluster configuration"
            );
        }
    }
    assert_eq!(
        pod_spec["volumes"][0]["hostPath"]["path"],
        "/etc/kubernetes/admin.conf"
    );
    assert!(
        ds_spec["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "node-role.kubernetes.io/control-plane")
    );
    assert_eq!(
        ds_spec["nodeSelector"]["node-role.kubernetes.io/control-plane"],
        ""
    );
    assert_eq!(ds_spec["serviceAccountName"], "vipam-control-plane");
    // RBAC: Leases only, in the Lease's namespace.
    let role = &objects[1];
    assert_eq!(role["metadata"]["namespace"], "kube-system");
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["resources"], json!(["leases"]));
        assert_eq!(rule["apiGroups"], json!(["coordination.k8s.io"]));
    }

    validate_schemas(&all);
}

#[test]
fn the_vip_and_service_addresses_share_one_process() {
    // `--announce-services`: the control-plane VIP and the Service announcer in one process,
    // one announcer. Neither part's start-up or enforcement removes the other's addresses.
    let cp = CpLab::new("cp-both", AgentFlags::default(), &["--announce-services"]);
    let service_ip: std::net::IpAddr = "192.0.2.215".parse().unwrap();
    cp.lab.seed_announcement("address");
    cp.lab.seed_service("web", service_ip, false);
    cp.start_all();

    let holder = cp.wait_single_holder(None, 20 * SECOND);
    assert_eq!(cp.reach(10 * SECOND), holder);
    let owner = cp.lab.wait_announcer(service_ip, None, 20 * SECOND);
    let deadline = Instant::now() + 10 * SECOND;
    while cp
        .lab
        .probe(service_ip, Duration::from_millis(300))
        .as_deref()
        != Some(owner.as_str())
    {
        assert!(
            Instant::now() < deadline,
            "the client does not reach the Service address on {owner}\n{}",
            cp.lab.logs()
        );
    }
    // Several resyncs later both are still in place, each on its node only.
    std::thread::sleep(5 * SECOND);
    assert_eq!(cp.holders(), vec![holder.clone()], "{}", cp.lab.logs());
    let with_service: Vec<&str> = agentlab::NODES
        .iter()
        .copied()
        .filter(|n| cp.lab.addresses(n, "eth0").contains("192.0.2.215/32"))
        .collect();
    assert_eq!(with_service, vec![owner.as_str()], "{}", cp.lab.logs());
    assert_eq!(cp.reach(5 * SECOND), holder);
}

const BGP_MANIFEST_ARGS: [&str; 20] = [
    "--vip",
    "203.0.113.250",
    "--bgp",
    "--bgp-peer",
    "192.0.2.1",
    "--bgp-peer",
    "[2001:db8::1]:1179,192.0.2.2:1179",
    "--bgp-peer-asn",
    "65000",
    "--bgp-my-asn",
    "4200000001",
    "--bgp-hold-time",
    "3s",
    "--bgp-password-file",
    "/etc/kubernetes/vipam-bgp-password",
    "--bgp-communities",
    "65000:250,no-export",
    "--bgp-multihop-ttl",
    "2",
    "--bgp-router-id=10.0.0.1",
];

#[test]
fn the_manifests_pass_the_bgp_flags_through_and_mount_the_password_file() {
    // The IPv6 router is refused by the agent's own checks (the VIP is IPv4): so is the
    // manifest, naming the flag.
    let output = Command::new(agentlab::bin())
        .args(["manifest", "static-pod"])
        .args(BGP_MANIFEST_ARGS)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--bgp-peer: 2001:db8::1 is not of the family of the VIP"),
        "{stderr}"
    );

    let args: Vec<&str> = BGP_MANIFEST_ARGS
        .iter()
        .map(|a| {
            if a.starts_with("[2001") {
                "192.0.2.3:1179,192.0.2.2:1179"
            } else {
                a
            }
        })
        .collect();
    let pod = manifest_with("static-pod", &args);
    let objects = manifest_with("daemonset", &args);
    let pod_spec = &pod[0]["spec"];
    let ds_spec = &objects[3]["spec"]["template"]["spec"];
    for spec in [pod_spec, ds_spec] {
        let container = &spec["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for expected in [
            "--bgp",
            "--bgp-peer=192.0.2.1",
            "--bgp-peer=192.0.2.3:1179",
            "--bgp-peer=192.0.2.2:1179",
            "--bgp-peer-asn=65000",
            "--bgp-my-asn=4200000001",
            "--bgp-hold-time=3s",
            "--bgp-password-file=/etc/kubernetes/vipam-bgp-password",
            "--bgp-communities=65000:250",
            "--bgp-communities=no-export",
            "--bgp-multihop-ttl=2",
            "--bgp-router-id=10.0.0.1",
        ] {
            assert!(args.contains(&expected), "{expected} missing from {args:?}");
        }
        assert!(
            !args.iter().any(|a| a.starts_with("--interface")),
            "no --interface was asked for: {args:?}"
        );
        // The arguments parse as the binary's flags, and pass the agent's --bgp checks.
        let parsed =
            AgentCli::try_parse_from(std::iter::once("agent").chain(args[1..].iter().copied()))
                .unwrap_or_else(|e| panic!("the agent refuses {args:?}: {e}"));
        let cp = parsed.agent.control_plane;
        let bgp = vipam::agent::control_plane::bgp::parse_flags(&cp, cp.vip.unwrap())
            .expect("valid --bgp flags")
            .expect("--bgp on");
        assert_eq!(bgp.peers.len(), 3);
        assert_eq!(bgp.peers[1].port, 1179);
        assert_eq!(bgp.peers[0].hold_time, 3);
        assert_eq!(bgp.peers[0].ttl, 2);
        assert_eq!(bgp.prefix.to_string(), "203.0.113.250/32");
        assert_eq!(
            bgp.password_file.as_deref(),
            Some(std::path::Path::new("/etc/kubernetes/vipam-bgp-password"))
        );
        // The password file: a read-only hostPath at the same path, never a value in the spec.
        let mount = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "bgp-password")
            .unwrap_or_else(|| panic!("no password mount in {container}"));
        assert_eq!(mount["mountPath"], "/etc/kubernetes/vipam-bgp-password");
        assert_eq!(mount["readOnly"], true);
        let volume = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "bgp-password")
            .unwrap();
        assert_eq!(
            volume["hostPath"],
            json!({"path": "/etc/kubernetes/vipam-bgp-password", "type": "File"})
        );
    }
    // Without --bgp the L2 manifests carry no BGP flag and no password volume.
    let plain = manifest("static-pod");
    let text = plain[0].to_string();
    assert!(!text.contains("bgp"), "{text}");

    // Usage errors name the flag.
    for (args, expected) in [
        (
            vec!["--vip", "203.0.113.250", "--bgp-peer", "192.0.2.1"],
            "--bgp",
        ),
        (
            vec![
                "--vip",
                "203.0.113.250",
                "--bgp",
                "--bgp-peer",
                "192.0.2.1",
                "--bgp-peer-asn",
                "65000",
                "--bgp-my-asn",
                "65001",
                "--bgp-hold-time",
                "2s",
            ],
            "--bgp-hold-time: 2s is not allowed",
        ),
        (
            vec![
                "--vip",
                "203.0.113.250",
                "--bgp",
                "--bgp-peer",
                "192.0.2.1",
                "--bgp-peer-asn",
                "65000",
                "--bgp-my-asn",
                "65001",
                "--bgp-password-file",
                "vipam-bgp-password",
            ],
            "--bgp-password-file: \"vipam-bgp-password\" must be an absolute path",
        ),
        (vec!["--vip", "203.0.113.250"], "--interface"),
    ] {
        let output = Command::new(agentlab::bin())
            .args(["manifest", "daemonset"])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: {expected} not in {stderr}"
        );
    }

    // Schema validation of the BGP variants too.
    let all: Vec<Value> = pod.iter().chain(objects.iter()).cloned().collect();
    validate_schemas(&all);
}

/// Validates objects against the Kubernetes schemas (kubernetes-validate, strict) with
/// tests/install.rs's script.
fn validate_schemas(all: &[Value]) {
    let request =
        json!({"versions": ["1.30.0", "1.33.0"], "builtin": all, "crds": [], "custom": []});
    let mut child = Command::new("python3")
        .arg("tests/data/install/validate.py")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect(
            "python3 is needed: install Python 3 and `python3 -m pip install kubernetes-validate`",
        );
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "validation failed:\n{text}");
    assert!(!text.trim().is_empty(), "the validator printed nothing");
}
