//! vipam end to end on a real control plane (tests/kubecp): installed from the shipped
//! manifests, two `vipam controller` replicas running as local processes with their own
//! ServiceAccount's token, the API server calling the webhook through the shipped
//! `vipam-webhook` Service, and users' commands run with kubectl.
//!
//! The tests share one installation and run one at a time (they restart controllers and read
//! cluster-scoped objects). Each keeps to its own namespace and pool, and every Service names
//! its pool (`vipam.io/pool`), except the examples/gitops tree, which is the only user of its
//! pool `lan`.

mod kubecp;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use kubecp::vipam::{
    Installation, describe, get_json, ingress_ips, pool_json, service_json, service_yaml, text,
    vipam_bin,
};
use kubecp::{ControlPlane, TestNamespace, WEBHOOK_ADDRESSES, wait_for};
use serde_json::{Value, json};

/// The sticky period of the test installation (short, so the lifecycle test sees expiry).
const STICKY: Duration = Duration::from_secs(8);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The installation shared by the tests: two controllers, and a second ServiceCIDR so the
/// burst test's 254 Services get ClusterIPs (documentation ranges only).
fn vipam() -> &'static Installation<'static> {
    static VIPAM: OnceLock<Installation<'static>> = OnceLock::new();
    VIPAM.get_or_init(|| {
        let cp = kubecp::shared();
        let sticky = format!("{}s", STICKY.as_secs());
        let installation =
            Installation::install(cp, &WEBHOOK_ADDRESSES, &["--sticky-release", &sticky]);
        let extra_cidr = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "ServiceCIDR",
            "metadata": {"name": "vipam-tests"},
            "spec": {"cidrs": ["203.0.113.128/25"]}
        });
        apply_ok(cp, &extra_cidr.to_string());
        installation
    })
}

/// A namespace for one test and a pool of the same name serving it (and the namespaces in
/// `also`); both go when the guard drops.
fn namespace_with_pool(
    cp: &'static ControlPlane,
    name: &str,
    blocks: Value,
    also: &[&str],
) -> TestNamespace {
    let mut guard = cp.namespace(name);
    let mut namespaces = vec![name];
    namespaces.extend_from_slice(also);
    apply_ok(cp, &pool_json(name, blocks, &namespaces));
    guard.delete_on_drop("ippool", name);
    guard
}

/// `kubectl apply -f -` of `object`, which must succeed.
fn apply_ok(cp: &ControlPlane, object: &str) {
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], object);
    assert!(out.status.success(), "{}", describe(&out));
}

/// IPAllocations: ip -> (pool, phase, holders "ns/name").
fn ledger(cp: &ControlPlane) -> BTreeMap<String, (String, String, BTreeSet<String>)> {
    let list = get_json(cp, &["get", "ipallocations"]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let holders = a["spec"]["services"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|h| {
                            format!(
                                "{}/{}",
                                h["namespace"].as_str().unwrap_or(""),
                                h["name"].as_str().unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (
                a["spec"]["ip"].as_str().unwrap_or("").to_string(),
                (
                    a["spec"]["pool"].as_str().unwrap_or("").to_string(),
                    a["status"]["phase"].as_str().unwrap_or("").to_string(),
                    holders,
                ),
            )
        })
        .collect()
}

fn split_documents(yaml: &str) -> Vec<String> {
    yaml.split("\n---\n")
        .map(|d| d.trim_start_matches("---\n").trim().to_string())
        .filter(|d| !d.is_empty())
        .collect()
}

/// `kind: X` and `metadata.name`/`namespace` of a rendered document (kubectl kustomize output).
fn doc_identity(doc: &str) -> (String, String, String) {
    let as_json: Value = serde_saphyr::from_str(doc).unwrap();
    (
        as_json["kind"].as_str().unwrap_or("").to_string(),
        as_json["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        as_json["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

/// The checker's allocation table for examples/gitops: (namespace/name, ip, pinned).
fn checked_gitops() -> Vec<(String, String, bool)> {
    let out = Command::new(vipam_bin())
        .args(["check", "--format", "json"])
        .arg(repo().join("examples/gitops"))
        .output()
        .unwrap();
    assert!(out.status.success(), "vipam check: {}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                format!(
                    "{}/{}",
                    a["namespace"].as_str().unwrap(),
                    a["name"].as_str().unwrap()
                ),
                a["ip"].as_str().unwrap().to_string(),
                !a["predicted"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// Applies examples/gitops once: everything but the Services, then each Service alone in the
/// order of the checker's table (so automatic addresses are predictable), then the whole tree
/// with `kubectl apply --server-side -k`, as Argo CD does with `ServerSideApply=true`.
/// (After a client-side apply, `kubectl diff --server-side` always shows kubectl's own rewrite
/// of its last-applied annotation, whatever the object; the zero-drift test covers the
/// client-side path with the client-side diff.)
fn gitops_applied() -> &'static Vec<(String, String, bool)> {
    static APPLIED: OnceLock<Vec<(String, String, bool)>> = OnceLock::new();
    APPLIED.get_or_init(|| {
        let v = vipam();
        let cp = v.cp;
        let tree = repo().join("examples/gitops");
        let rendered = cp.kubectl_ok(&["kustomize", tree.to_str().unwrap()]);
        let docs = split_documents(&rendered);
        let (services, others): (Vec<&String>, Vec<&String>) =
            docs.iter().partition(|d| doc_identity(d).0 == "Service");
        let out = cp.kubectl_stdin(
            &["apply", "--server-side", "-f", "-"],
            &others
                .iter()
                .map(|d| d.as_str())
                .collect::<Vec<_>>()
                .join("\n---\n"),
        );
        assert!(
            out.status.success(),
            "applying the non-Service objects: {}",
            describe(&out)
        );
        let checked = checked_gitops();
        let mut done = BTreeSet::new();
        for (key, _, _) in &checked {
            if !done.insert(key.clone()) {
                continue;
            }
            let doc = services
                .iter()
                .find(|d| {
                    let (_, ns, name) = doc_identity(d);
                    format!("{ns}/{name}") == *key
                })
                .unwrap_or_else(|| panic!("Service {key} of the check table is not in the tree"));
            let out = cp.kubectl_stdin(&["apply", "--server-side", "-f", "-"], doc);
            assert!(
                out.status.success(),
                "applying Service {key}: {}",
                describe(&out)
            );
        }
        cp.kubectl_ok(&["apply", "--server-side", "-k", tree.to_str().unwrap()]);
        checked
    })
}

/// Waits until every Service of the check table shows its address in status.
fn wait_gitops_status(cp: &ControlPlane, checked: &[(String, String, bool)]) {
    for (key, ip, _) in checked {
        let (ns, name) = key.split_once('/').unwrap();
        wait_for(
            &format!("{key} to show {ip} in status.loadBalancer.ingress"),
            Duration::from_secs(60),
            || {
                let svc = get_json(cp, &["get", "service", "-n", ns, name]);
                ingress_ips(&svc).contains(ip).then_some(())
            },
        );
    }
}

#[test]
fn install_applies_and_the_webhook_is_reached_through_the_shipped_service() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    // The caBundle was injected by --self-signed into the configurations as shipped.
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let config = get_json(cp, &["get", kind, "vipam"]);
        for webhook in config["webhooks"].as_array().unwrap() {
            assert_eq!(
                webhook["clientConfig"]["service"]["name"], "vipam-webhook",
                "{kind} {}: clientConfig changed",
                webhook["name"]
            );
            assert!(
                webhook["clientConfig"]["caBundle"]
                    .as_str()
                    .is_some_and(|b| !b.is_empty()),
                "{kind} {}: no caBundle injected",
                webhook["name"]
            );
        }
    }
    let secret = get_json(
        cp,
        &["get", "secret", "-n", "vipam-system", "vipam-webhook-tls"],
    );
    assert!(secret["data"]["tls.crt"].is_string(), "{secret}");

    // Every overlay applies (server dry run). Objects of cert-manager and prometheus-operator
    // are filtered out: their CRDs are not installed in the test cluster.
    let overlays = std::fs::read_dir(repo().join("kustomize/overlays")).unwrap();
    let mut applied = Vec::new();
    for overlay in overlays.flatten() {
        let path = overlay.path();
        let rendered = cp.kubectl_ok(&["kustomize", path.to_str().unwrap()]);
        let mut kept = Vec::new();
        for doc in split_documents(&rendered) {
            let third_party = doc.lines().any(|l| {
                l.starts_with("apiVersion: cert-manager.io/")
                    || l.starts_with("apiVersion: monitoring.coreos.com/")
            });
            if third_party {
                let (kind, _, name) = doc_identity(&doc);
                eprintln!(
                    "overlay {}: {kind} {name} skipped (its CRD is not installed here)",
                    path.display()
                );
            } else {
                kept.push(doc);
            }
        }
        let out = cp.kubectl_stdin(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            &kept.join("\n---\n"),
        );
        assert!(
            out.status.success(),
            "overlay {} does not apply: {}",
            path.display(),
            describe(&out)
        );
        applied.push(path);
    }
    assert!(applied.len() >= 4, "overlays found: {applied:?}");
    v.assert_no_forbidden();
}

#[test]
fn gitops_example_gets_the_addresses_vipam_check_printed() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    let checked = gitops_applied();
    assert!(checked.len() >= 10, "{checked:?}");
    wait_gitops_status(cp, checked);
    // `kubectl get ipallocations` is the same table.
    let ledger = ledger(cp);
    for (key, ip, _) in checked {
        let (pool, phase, holders) = ledger
            .get(ip)
            .unwrap_or_else(|| panic!("no IPAllocation for {ip} ({key}): {ledger:?}"));
        assert_eq!(pool, "lan");
        assert_eq!(phase, "Bound", "{ip}");
        assert!(holders.contains(key), "{ip} held by {holders:?}, not {key}");
    }
    let table = cp.kubectl_ok(&["get", "ipallocations"]);
    eprintln!("{table}");
    for (_, ip, _) in checked {
        assert!(table.contains(ip.as_str()), "{ip} missing from\n{table}");
    }
    v.assert_no_forbidden();
}

/// `kubectl apply` of `object` must fail with vipam's webhook's denial; returns kubectl's
/// error output.
fn apply_error(cp: &ControlPlane, object: &str) -> String {
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], object);
    assert!(
        !out.status.success(),
        "kubectl apply should have failed: {}",
        describe(&out)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("admission webhook \"services.vipam.io\" denied the request"),
        "not vipam's denial: {stderr}"
    );
    stderr
}

#[test]
fn conflicts_are_apply_errors_and_dry_runs_reserve_nothing() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    let pool = "t-conflicts";
    let blocks = json!([{"start": "203.0.113.16", "stop": "203.0.113.17"}]);
    let ns_guard = namespace_with_pool(cp, pool, blocks, &[]);
    let ns = ns_guard.name.as_str();
    let in_pool = [("vipam.io/pool", pool)];

    // A server dry run is answered but reserves nothing.
    let before = ledger(cp).len();
    let out = cp.kubectl_stdin(
        &["apply", "--dry-run=server", "-f", "-", "-o", "json"],
        &service_yaml(ns, "dry", &in_pool, &[(80, "TCP")]),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let answered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        answered["metadata"]["annotations"]["vipam.io/assigned-ips"].is_string(),
        "the dry run got no address: {answered}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        ledger(cp).len(),
        before,
        "a dry run created an IPAllocation"
    );

    let pinned = |name: &str, ip: &str, extra: &[(&str, &str)], ports: &[(u16, &str)]| {
        let mut annotations = vec![("vipam.io/ips", ip)];
        annotations.extend_from_slice(extra);
        service_yaml(ns, name, &annotations, ports)
    };
    apply_ok(cp, &pinned("first", "203.0.113.16", &[], &[(80, "TCP")]));

    // A duplicate pin names the holder.
    let err = apply_error(cp, &pinned("second", "203.0.113.16", &[], &[(80, "TCP")]));
    assert!(
        err.contains("203.0.113.16") && err.contains("first"),
        "{err}"
    );

    // A pin outside every pool names the address.
    let err = apply_error(cp, &pinned("outside", "203.0.113.99", &[], &[(80, "TCP")]));
    assert!(err.contains("203.0.113.99"), "{err}");

    // A port clash on a shared address names the port and the other Service.
    let share = [("vipam.io/sharing-key", "dns")];
    apply_ok(
        cp,
        &pinned("dns-udp", "203.0.113.17", &share, &[(53, "UDP")]),
    );
    let err = apply_error(
        cp,
        &pinned("dns-udp-2", "203.0.113.17", &share, &[(53, "UDP")]),
    );
    assert!(err.contains("53") && err.contains("dns-udp"), "{err}");

    // The pool is full now: an automatic address is refused naming the pool.
    let err = apply_error(cp, &service_yaml(ns, "auto", &in_pool, &[(80, "TCP")]));
    assert!(err.contains(pool) && err.contains("vipam"), "{err}");
    v.assert_no_forbidden();
}

#[test]
fn zero_drift_after_restarts_and_twenty_applies() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    let checked = gitops_applied();
    wait_gitops_status(cp, checked);
    let tree = repo().join("examples/gitops");
    let tree = tree.to_str().unwrap();
    let install = repo().join("manifests/install.yaml");
    let install = install.to_str().unwrap();
    let assert_no_diff = |when: &str| {
        for args in [
            vec!["diff", "-k", tree],
            vec!["diff", "--server-side", "-k", tree],
            vec!["diff", "-f", install],
            vec!["diff", "--server-side", "-f", install],
        ] {
            let out = cp.kubectl(&args);
            assert!(
                out.status.success(),
                "{when}: kubectl {} reports drift: {}",
                args.join(" "),
                describe(&out)
            );
        }
    };
    assert_no_diff("settled");
    let addresses = |cp: &ControlPlane| -> BTreeMap<String, Vec<String>> {
        checked
            .iter()
            .map(|(key, _, _)| {
                let (ns, name) = key.split_once('/').unwrap();
                (
                    key.clone(),
                    ingress_ips(&get_json(cp, &["get", "service", "-n", ns, name])),
                )
            })
            .collect()
    };
    let settled = addresses(cp);
    v.restart_controllers();
    // Give the new leader a full pass.
    std::thread::sleep(Duration::from_secs(5));
    assert_no_diff("after both controllers restarted");
    for _ in 0..20 {
        cp.kubectl_ok(&["apply", "--server-side", "-k", tree]);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_no_diff("after 20 applies");
    assert_eq!(addresses(cp), settled, "an address changed");
    // The client-side path: `kubectl apply -k` (which takes the objects over with its
    // last-applied annotation), then `kubectl diff -k` reports nothing either.
    cp.kubectl_ok(&["apply", "-k", tree]);
    cp.kubectl_ok(&["apply", "-k", tree]);
    let out = cp.kubectl(&["diff", "-k", tree]);
    assert!(
        out.status.success(),
        "client-side drift: {}",
        describe(&out)
    );
    assert_eq!(addresses(cp), settled, "an address changed");
    v.assert_no_forbidden();
}

#[test]
fn five_hundred_concurrent_creates_never_share_an_address() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    let pool = "t-burst";
    let ns_guard = namespace_with_pool(cp, pool, json!([{"cidr": "192.0.2.0/24"}]), &[]);
    let ns = ns_guard.name.clone();
    let served_before = [v.admissions(0), v.admissions(1)];
    // Every fifth request pins one of the first 100 addresses: many collide.
    let pin = |i: usize| {
        i.is_multiple_of(5)
            .then(|| format!("192.0.2.{}", 1 + (i * 7) % 100))
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let results = runtime.block_on(async {
        let client = cp.client().await;
        let api: Api<Service> = Api::namespaced(client, &ns);
        let creates = (0..500).map(|i| {
            let api = api.clone();
            let ns = ns.clone();
            let pinned = pin(i);
            async move {
                let mut annotations = vec![("vipam.io/pool", "t-burst")];
                if let Some(ip) = &pinned {
                    annotations.push(("vipam.io/ips", ip.as_str()));
                }
                let svc: Service = serde_json::from_value(service_json(
                    &ns,
                    &format!("burst-{i:03}"),
                    &annotations,
                    &[(80, "TCP")],
                ))
                .unwrap();
                (pinned, api.create(&PostParams::default(), &svc).await)
            }
        });
        futures::future::join_all(creates).await
    });
    let mut granted: BTreeMap<String, String> = BTreeMap::new();
    let mut denials = Vec::new();
    for (pinned, result) in results {
        match result {
            Ok(svc) => {
                let name = svc.metadata.name.clone().unwrap();
                let ip = svc
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("vipam.io/assigned-ips").cloned())
                    .unwrap_or_else(|| panic!("{name} was admitted without an address"));
                if let Some(pinned) = pinned {
                    assert_eq!(ip, pinned, "{name} pinned {pinned}");
                }
                if let Some(other) = granted.insert(ip.clone(), name.clone()) {
                    panic!("{ip} granted to both {other} and {name}");
                }
            }
            Err(kube::Error::Api(status)) => denials.push((pinned, status.message)),
            Err(other) => panic!("create failed outside the API: {other}"),
        }
    }
    let served = [
        v.admissions(0) - served_before[0],
        v.admissions(1) - served_before[1],
    ];
    eprintln!(
        "500 concurrent creates: {} granted, {} denied; admissions per replica {served:?}",
        granted.len(),
        denials.len()
    );
    assert!(
        served.iter().all(|n| *n >= 50),
        "both replicas must have answered: {served:?}"
    );
    assert_eq!(granted.len(), 254, "a /24 has 254 usable addresses");
    assert_eq!(denials.len(), 246);
    for (pinned, message) in &denials {
        assert!(
            message.contains("services.vipam.io\" denied the request")
                && (message.contains(pool) || pinned.as_ref().is_some_and(|p| message.contains(p))),
            "a denial without vipam's reason: {message}"
        );
    }
    // The ledger agrees: one IPAllocation per granted address, each with its one Service.
    let ledger = ledger(cp);
    let in_pool: BTreeMap<&String, &BTreeSet<String>> = ledger
        .iter()
        .filter(|(_, (p, _, _))| p == pool)
        .map(|(ip, (_, _, holders))| (ip, holders))
        .collect();
    assert_eq!(in_pool.len(), 254);
    for (ip, name) in &granted {
        let holders = in_pool[ip];
        assert_eq!(
            holders,
            &BTreeSet::from([format!("{ns}/{name}")]),
            "ledger for {ip}"
        );
    }
    v.assert_no_forbidden();
}

#[test]
fn lifecycle_through_real_garbage_collection() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    let pool = "t-life";
    let blocks = json!([{"start": "203.0.113.32", "stop": "203.0.113.47"}]);
    let ns_guard = namespace_with_pool(cp, pool, blocks, &["t-life-gone"]);
    let ns = ns_guard.name.clone();
    let svc = service_yaml(&ns, "web", &[("vipam.io/pool", pool)], &[(80, "TCP")]);
    let created = |cp: &ControlPlane| -> String {
        let out = cp.kubectl_stdin(&["apply", "-f", "-", "-o", "json"], &svc);
        assert!(out.status.success(), "{}", describe(&out));
        let obj: Value = serde_json::from_slice(&out.stdout).unwrap();
        obj["metadata"]["annotations"]["vipam.io/assigned-ips"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let phase = |ip: &str| ledger(cp).get(ip).map(|(_, phase, _)| phase.clone());
    let ip = created(cp);
    wait_for(
        "the allocation to be Bound",
        Duration::from_secs(30),
        || (phase(&ip).as_deref() == Some("Bound")).then_some(()),
    );

    // Deleted -> Released; re-created within the sticky period -> the same address.
    cp.kubectl_ok(&["delete", "service", "-n", &ns, "web"]);
    wait_for(
        "the allocation to be Released",
        Duration::from_secs(30),
        || (phase(&ip).as_deref() == Some("Released")).then_some(()),
    );
    assert_eq!(created(cp), ip, "re-created in time, yet renumbered");
    wait_for(
        "the allocation to be Bound again",
        Duration::from_secs(30),
        || (phase(&ip).as_deref() == Some("Bound")).then_some(()),
    );

    // Deleted for good -> the IPAllocation goes when the sticky period ends (the controller
    // wakes up for it; its resync is the default 30 s), within a second or so.
    cp.kubectl_ok(&["delete", "service", "-n", &ns, "web"]);
    let started = Instant::now();
    wait_for(
        "the Released allocation to be deleted",
        STICKY + Duration::from_secs(2),
        || phase(&ip).is_none().then_some(()),
    );
    eprintln!(
        "released allocation deleted {:.1}s after the Service",
        started.elapsed().as_secs_f64()
    );

    // Namespace deleted (the namespace controller deletes its Services) -> released.
    let gone = cp.namespace("t-life-gone");
    let svc_gone = service_yaml(
        "t-life-gone",
        "web",
        &[("vipam.io/pool", pool)],
        &[(80, "TCP")],
    );
    let out = cp.kubectl_stdin(&["apply", "-f", "-", "-o", "json"], &svc_gone);
    assert!(out.status.success(), "{}", describe(&out));
    let obj: Value = serde_json::from_slice(&out.stdout).unwrap();
    let gone_ip = obj["metadata"]["annotations"]["vipam.io/assigned-ips"]
        .as_str()
        .unwrap()
        .to_string();
    drop(gone);
    wait_for(
        "the deleted namespace's address to be released",
        Duration::from_secs(90),
        || (phase(&gone_ip).as_deref() != Some("Bound")).then_some(()),
    );

    // IPPool deleted -> the Service keeps its address, reported Orphaned.
    let ip = created(cp);
    wait_for("status of web", Duration::from_secs(30), || {
        ingress_ips(&get_json(cp, &["get", "service", "-n", &ns, "web"]))
            .contains(&ip)
            .then_some(())
    });
    cp.kubectl_ok(&["delete", "ippool", pool]);
    let name = format!("v4-{}", ip.replace('.', "-"));
    wait_for(
        "the allocation to be reported Orphaned",
        Duration::from_secs(60),
        || {
            let alloc = get_json(cp, &["get", "ipallocation", &name]);
            alloc["status"]["conditions"]
                .as_array()
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Orphaned" && c["status"] == "True")
                })
                .then_some(())
        },
    );
    let svc_now = get_json(cp, &["get", "service", "-n", &ns, "web"]);
    assert_eq!(
        ingress_ips(&svc_now),
        vec![ip.clone()],
        "the pool's deletion took the address"
    );
    assert_eq!(phase(&ip).as_deref(), Some("Bound"));
    v.assert_no_forbidden();
}

/// The field managers recorded in `object`'s managedFields, with the subresource they wrote.
fn managers(object: &Value) -> BTreeSet<String> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let manager = e["manager"].as_str().unwrap_or("");
                    match e["subresource"].as_str() {
                        Some(sub) if !sub.is_empty() => format!("{manager}/{sub}"),
                        _ => manager.to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_write_names_its_component_as_field_manager() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    let checked = gitops_applied();
    wait_gitops_status(cp, checked);
    // What users' tools write (kubectl, server-side or not) and what vipam writes.
    let users = ["kubectl", "kubectl-client-side-apply", "kubectl-create"];
    let vipam = ["vipam-webhook", "vipam-controller", "vipam-agent"];
    let mut seen = Vec::new();
    let mut check = |what: String, object: &Value| {
        for manager in managers(object) {
            let name = manager.split('/').next().unwrap().to_string();
            assert!(
                users.contains(&name.as_str()) || vipam.contains(&name.as_str()),
                "{what}: field manager {manager:?} is neither a user's tool nor a vipam component"
            );
            seen.push(format!("{what}: {manager}"));
        }
    };
    for (key, _, _) in checked {
        let (ns, name) = key.split_once('/').unwrap();
        check(
            format!("Service {key}"),
            &get_json(
                cp,
                &["get", "--show-managed-fields", "service", "-n", ns, name],
            ),
        );
    }
    for kind in ["ipallocations", "ippools", "l2announcements"] {
        for item in get_json(cp, &["get", "--show-managed-fields", kind])["items"]
            .as_array()
            .unwrap()
        {
            check(format!("{kind} {}", item["metadata"]["name"]), item);
        }
    }
    check(
        "Lease vipam-controller".into(),
        &get_json(
            cp,
            &[
                "get",
                "--show-managed-fields",
                "lease",
                "-n",
                "vipam-system",
                "vipam-controller",
            ],
        ),
    );
    check(
        "Secret vipam-webhook-tls".into(),
        &get_json(
            cp,
            &[
                "get",
                "--show-managed-fields",
                "secret",
                "-n",
                "vipam-system",
                "vipam-webhook-tls",
            ],
        ),
    );
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        check(
            format!("{kind} vipam"),
            &get_json(cp, &["get", "--show-managed-fields", kind, "vipam"]),
        );
    }
    // Each vipam component's writes are there to be seen.
    let seen = seen.join("\n");
    for expected in [
        "vipam-webhook",
        "vipam-controller/status",
        "Secret vipam-webhook-tls: vipam-controller",
        "Lease vipam-controller: vipam-controller",
    ] {
        assert!(seen.contains(expected), "no {expected:?} among\n{seen}");
    }
    v.assert_no_forbidden();
}

#[test]
fn a_pool_and_its_service_in_one_apply() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    let guard = cp.namespace("t-together");
    let ns = guard.name.as_str();
    // One `kubectl apply` of a new pool and a Service naming it (as a kustomization without
    // Argo CD's sync waves does): the Service gets the pool's first address every time.
    for round in 0..5 {
        let pool = format!("t-together-{round}");
        let first = format!("203.0.113.{}", 64 + round * 4);
        let list = json!({"apiVersion": "v1", "kind": "List", "items": [
            serde_json::from_str::<Value>(&pool_json(
                &pool,
                json!([{"start": first, "stop": format!("203.0.113.{}", 67 + round * 4)}]),
                &[ns],
            ))
            .unwrap(),
            service_json(ns, &format!("web-{round}"), &[("vipam.io/pool", &pool)], &[(80, "TCP")]),
        ]});
        let out = cp.kubectl_stdin(
            &["apply", "--server-side", "-f", "-", "-o", "json"],
            &list.to_string(),
        );
        assert!(out.status.success(), "round {round}: {}", describe(&out));
        let applied: Value = serde_json::from_slice(&out.stdout).unwrap();
        let service = &applied["items"][1];
        assert_eq!(
            service["metadata"]["annotations"]["vipam.io/assigned-ips"], first,
            "round {round}: {service}"
        );
    }
    drop(guard);
    for round in 0..5 {
        cp.kubectl(&[
            "delete",
            "ippool",
            &format!("t-together-{round}"),
            "--wait=false",
        ]);
    }
    v.assert_no_forbidden();
}

#[test]
fn the_control_plane_health_probe_verifies_the_api_server_certificate() {
    use vipam::agent::control_plane::HealthProbe;
    let cp = kubecp::shared();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        // The API server's /readyz through a loopback URL, as the agent probes its own node.
        let url = format!("https://127.0.0.1:{}/readyz", cp.forward.port());
        let timeout = Duration::from_secs(5);
        let probe = HealthProbe::new(&config, &url, timeout).unwrap();
        probe
            .check()
            .await
            .unwrap_or_else(|e| panic!("the probe of the real API server failed: {e}"));
        // With a CA that did not sign the server's certificate, the probe fails in the TLS
        // handshake: the credentials are never sent to a server it cannot verify.
        let key = rcgen::KeyPair::generate().unwrap();
        let other_ca = rcgen::CertificateParams::new(vec!["kubernetes".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut untrusted = config.clone();
        untrusted.root_cert = Some(vec![other_ca.der().to_vec()]);
        let probe = HealthProbe::new(&untrusted, &url, timeout).unwrap();
        let err = probe
            .check()
            .await
            .expect_err("a server whose certificate the CA did not sign was trusted");
        eprintln!("untrusted server refused: {err}");
    });
}

fn condition<'a>(service: &'a Value, type_: &str) -> Option<&'a Value> {
    service["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[test]
fn status_writes_keep_the_ingress_and_other_writers_conditions() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    let pool = "t-status";
    let blocks = json!([{"start": "203.0.113.48", "stop": "203.0.113.51"}]);
    let guard = namespace_with_pool(cp, pool, blocks, &[]);
    let ns = guard.name.as_str();
    apply_ok(
        cp,
        &service_yaml(ns, "web", &[("vipam.io/pool", pool)], &[(80, "TCP")]),
    );
    let get = || get_json(cp, &["get", "service", "-n", ns, "web"]);
    wait_for("the address in status", Duration::from_secs(30), || {
        let svc = get();
        let reason = condition(&svc, "vipam.io/Announced")?["reason"]
            .as_str()?
            .to_string();
        (ingress_ips(&svc) == ["203.0.113.48"] && reason == "NoL2Announcement").then_some(())
    });
    // Another controller adds its own condition (strategic merge on the status subresource).
    let foreign = json!({"status": {"conditions": [{
        "type": "example.com/Probed", "status": "True", "reason": "Reachable",
        "message": "probed from outside", "lastTransitionTime": "2026-12-01T00:00:00Z"
    }]}});
    cp.kubectl_ok(&[
        "patch",
        "service",
        "-n",
        ns,
        "web",
        "--subresource=status",
        "--type=strategic",
        "--field-manager=example-prober",
        "-p",
        &foreign.to_string(),
    ]);
    // vipam rewrites its Announced condition when an L2Announcement comes to cover the pool.
    let announcement = json!({"apiVersion": "vipam.io/v1alpha1", "kind": "L2Announcement",
        "metadata": {"name": "t-status"}, "spec": {"ipPools": [pool]}});
    apply_ok(cp, &announcement.to_string());
    let svc = wait_for(
        "vipam's new Announced reason",
        Duration::from_secs(30),
        || {
            let svc = get();
            let reason = condition(&svc, "vipam.io/Announced")?["reason"]
                .as_str()?
                .to_string();
            (reason != "NoL2Announcement").then_some(svc)
        },
    );
    assert!(
        condition(&svc, "example.com/Probed").is_some(),
        "vipam's status write removed another writer's condition: {}",
        svc["status"]
    );
    assert!(condition(&svc, "vipam.io/Allocated").is_some());
    assert_eq!(ingress_ips(&svc), ["203.0.113.48"], "{}", svc["status"]);
    cp.kubectl(&["delete", "l2announcement", "t-status"]);
    v.assert_no_forbidden();
}

#[test]
fn services_that_are_not_ours_are_never_written() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    let pool = "t-not-ours";
    let blocks = json!([{"start": "203.0.113.56", "stop": "203.0.113.59"}]);
    let guard = namespace_with_pool(cp, pool, blocks, &[]);
    let ns = guard.name.as_str();
    let mut other_class = service_json(ns, "other-class", &[], &[(80, "TCP")]);
    other_class["spec"]["loadBalancerClass"] = json!("metallb.io/metallb");
    let mut plain = service_json(ns, "plain", &[], &[(80, "TCP")]);
    plain["spec"]["type"] = json!("ClusterIP");
    apply_ok(cp, &other_class.to_string());
    apply_ok(cp, &plain.to_string());
    // A Service of ours next to them, so a pass of the leader surely ran meanwhile.
    apply_ok(
        cp,
        &service_yaml(ns, "ours", &[("vipam.io/pool", pool)], &[(80, "TCP")]),
    );
    wait_for(
        "the status of the Service that is ours",
        Duration::from_secs(30),
        || {
            let svc = get_json(cp, &["get", "service", "-n", ns, "ours"]);
            (!ingress_ips(&svc).is_empty()).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    for name in ["other-class", "plain"] {
        let svc = get_json(
            cp,
            &["get", "--show-managed-fields", "service", "-n", ns, name],
        );
        let written_by: BTreeSet<String> = managers(&svc)
            .into_iter()
            .filter(|m| m.starts_with("vipam"))
            .collect();
        assert!(written_by.is_empty(), "{name} written by {written_by:?}");
        assert!(ingress_ips(&svc).is_empty(), "{name}: {}", svc["status"]);
        assert!(
            svc["metadata"]["annotations"]["vipam.io/assigned-ips"].is_null(),
            "{name} got an address"
        );
    }
    let held: Vec<String> = ledger(cp)
        .into_iter()
        .filter(|(_, (p, _, _))| p == pool)
        .flat_map(|(_, (_, _, holders))| holders)
        .collect();
    assert_eq!(held, [format!("{ns}/ours")]);
    v.assert_no_forbidden();
}

/// The Service's `vipam.io/Announced` condition as (reason, message).
fn announced(cp: &ControlPlane, ns: &str, name: &str) -> Option<(String, String)> {
    let svc = get_json(cp, &["get", "service", "-n", ns, name]);
    let c = condition(&svc, "vipam.io/Announced")?;
    Some((c["reason"].as_str()?.into(), c["message"].as_str()?.into()))
}

/// An agent's Lease as the agent writes it, listing `interfaces` (its usable ones), held for
/// an hour so that only what it says matters here.
fn agent_lease(node: &str, interfaces: &str) -> String {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": format!("vipam-agent-{node}"),
            "namespace": "vipam-system",
            "labels": {"vipam.io/agent-lease": "true"},
            "annotations": {
                "vipam.io/interfaces": interfaces,
                "vipam.io/default-interface": interfaces,
                "vipam.io/lease-duration-ms": "3600000"
            }
        },
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 3600}
    })
    .to_string()
}

#[test]
fn an_unannounced_service_says_why_for_every_reason() {
    let _serial = serial();
    let v = vipam();
    let cp = v.cp;
    let pool = "t-why";
    let node = "t-why-node";
    let blocks = json!([{"start": "203.0.113.60", "stop": "203.0.113.63"}]);
    let mut guard = namespace_with_pool(cp, pool, blocks, &[]);
    guard.delete_on_drop("l2announcement", pool);
    guard.delete_on_drop("node", node);
    let ns = guard.name.clone();
    let lease_name = format!("vipam-agent-{node}");
    let _ = cp.kubectl(&["delete", "lease", "-n", "vipam-system", &lease_name]);
    // Waits for the reason and its message (a reason can stay while its message changes).
    let expect = |reason: &str, text: &str| {
        let (_, message) = wait_for(
            &format!("Announced=False reason {reason} saying {text:?}"),
            Duration::from_secs(30),
            || announced(cp, &ns, "web").filter(|(r, m)| r == reason && m.contains(text)),
        );
        assert!(message.contains("203.0.113.60"), "{reason}: {message}");
    };
    let l2 = json!({"apiVersion": "vipam.io/v1alpha1", "kind": "L2Announcement",
        "metadata": {"name": pool},
        "spec": {"ipPools": [pool], "nodeSelector": {"matchLabels": {"vipam-test/why": "yes"}}}});
    apply_ok(cp, &l2.to_string());
    // externalTrafficPolicy: Local, and no selector: the test writes its endpoints itself.
    let mut service = service_json(&ns, "web", &[("vipam.io/pool", pool)], &[(80, "TCP")]);
    service["spec"]["externalTrafficPolicy"] = json!("Local");
    service["spec"].as_object_mut().unwrap().remove("selector");
    apply_ok(cp, &service.to_string());

    // A node the announcement's selector does not match.
    let node_object = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {"vipam-test/why": "no"}}});
    apply_ok(cp, &node_object.to_string());
    expect("NoNodeSelected", "L2Announcement t-why selects no node");

    cp.kubectl_ok(&["label", "node", node, "--overwrite", "vipam-test/why=yes"]);
    expect("NoLiveAgent", "t-why-node: no live vipam agent Lease");

    // The agent lists no usable interface: its link is down.
    apply_ok(cp, &agent_lease(node, ""));
    expect("NoUsableInterface", "t-why-node: no usable interface");

    // The link is back; the Service's traffic policy still needs a ready endpoint there.
    apply_ok(cp, &agent_lease(node, "eth0"));
    expect("NoReadyEndpoint", "externalTrafficPolicy: Local");

    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-manual", "namespace": ns, "labels": {
            "kubernetes.io/service-name": "web",
            "endpointslice.kubernetes.io/managed-by": "vipam-tests"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["203.0.113.200"], "nodeName": node,
                       "conditions": {"ready": true}}],
        "ports": [{"name": "p80-tcp", "port": 80, "protocol": "TCP"}]});
    apply_ok(cp, &slice.to_string());
    // Now a node may announce it: the controller waits for that node's agent.
    let (_, message) = wait_for(
        "Announced=False reason Pending",
        Duration::from_secs(30),
        || announced(cp, &ns, "web").filter(|(r, _)| r == "Pending"),
    );
    assert!(message.contains("waiting for a vipam agent"), "{message}");

    cp.kubectl_ok(&[
        "label",
        "node",
        node,
        "node.kubernetes.io/exclude-from-external-load-balancers=",
    ]);
    expect("NodesExcluded", "exclude-from-external-load-balancers");

    let _ = cp.kubectl(&["delete", "lease", "-n", "vipam-system", &lease_name]);
    expect("NoLiveAgent", "t-why-node: no live vipam agent Lease");
    // Each reason also came as a Warning Event on the Service (invariant 6).
    let events = get_json(cp, &["get", "events.events.k8s.io", "-n", &ns]);
    let warned: BTreeSet<String> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == "web" && e["type"] == "Warning")
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect();
    for reason in [
        "NoNodeSelected",
        "NoLiveAgent",
        "NoUsableInterface",
        "NoReadyEndpoint",
        "NodesExcluded",
    ] {
        assert!(warned.contains(reason), "no {reason} Event: {warned:?}");
    }
    v.assert_no_forbidden();
}
