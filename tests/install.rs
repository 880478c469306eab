//! The install manifests: kustomize/ (base and overlays), manifests/install.yaml, argocd/ and the
//! Dockerfile. Statically proves what the "zero drift" promise needs: everything renders and
//! validates offline, nothing shipped is a field vipam (or Argo CD) writes at run time, RBAC is
//! least privilege, the Argo CD health scripts give the right answers, and the manifests' flags,
//! ports and environment match the binary's.
//!
//! Needs `kubectl` (kustomize), `python3` with `kubernetes-validate`, and `lua5.1`; `.ci/run`
//! installs them. A missing tool fails the test that needs it, with the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use clap::{Args, FromArgMatches};
use serde_json::{Value, json};
use vipam::agent::AgentArgs;
use vipam::controller::ControllerArgs;
use vipam::controller::conditions::{ALLOCATED, ANNOUNCED, CONFLICT, ORPHANED, READY};

const IMAGE: &str = "ghcr.io/vipam/vipam:0.1.0";
const NAMESPACE: &str = "vipam-system";
/// Kubernetes versions the built-in kinds are validated against: the oldest supported
/// (matchConditions are GA since 1.30) and the one k8s-openapi is built for.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.33.0"];
const WRITE_VERBS: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a tool; a tool that is not installed fails the test with how to get it.
fn run(program: &str, args: &[&str], stdin: Option<&str>, hint: &str) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => panic!("cannot run `{program}`: {err}; {hint}"),
    };
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing to `{program}`: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for `{program}`: {e}"))
}

fn parse_documents(text: &str, origin: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text)
        .unwrap_or_else(|e| panic!("{origin} is not valid YAML: {e}"));
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// `kubectl kustomize DIR`, parsed.
fn kustomize(dir: &str) -> Vec<Value> {
    let output = run(
        "kubectl",
        &["kustomize", dir],
        None,
        "install kubectl (it embeds kustomize)",
    );
    assert!(
        output.status.success(),
        "`kubectl kustomize {dir}` failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("kustomize prints UTF-8");
    parse_documents(&text, &format!("`kubectl kustomize {dir}`"))
}

/// The base and every overlay under kustomize/overlays/.
fn kustomize_dirs() -> Vec<String> {
    let mut dirs = vec!["kustomize/base".to_string()];
    let mut overlays: Vec<String> = std::fs::read_dir(root().join("kustomize/overlays"))
        .expect("kustomize/overlays exists")
        .map(|e| e.expect("readable entry"))
        .filter(|e| e.path().is_dir())
        .map(|e| format!("kustomize/overlays/{}", e.file_name().to_string_lossy()))
        .collect();
    overlays.sort();
    dirs.extend(overlays);
    dirs
}

/// Every kustomization, rendered once for all tests.
fn renders() -> &'static Vec<(String, Vec<Value>)> {
    static RENDERS: OnceLock<Vec<(String, Vec<Value>)>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        kustomize_dirs()
            .into_iter()
            .map(|dir| {
                let objects = kustomize(&dir);
                (dir, objects)
            })
            .collect()
    })
}

fn render(dir: &str) -> &'static [Value] {
    &renders()
        .iter()
        .find(|(d, _)| d == dir)
        .unwrap_or_else(|| panic!("{dir} is not a kustomization under kustomize/"))
        .1
}

/// The shipped Argo CD files (Application and argocd-cm patches).
fn argocd_objects() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("argocd"))
        .expect("argocd/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        let name = path.strip_prefix(root()).unwrap().display().to_string();
        for doc in parse_documents(&text, &name) {
            out.push((name.clone(), doc));
        }
    }
    out
}

/// Every shipped object with where it comes from.
fn everything() -> Vec<(String, Value)> {
    let mut all: Vec<(String, Value)> = renders()
        .iter()
        .flat_map(|(dir, objects)| objects.iter().map(move |o| (dir.clone(), o.clone())))
        .collect();
    all.extend(argocd_objects());
    all
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or("")
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

fn group(obj: &Value) -> &str {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    match api_version.split_once('/') {
        Some((group, _)) => group,
        None => "",
    }
}

fn label(obj: &Value) -> String {
    format!("{} {}", kind(obj), name(obj))
}

fn find<'a>(objects: &'a [Value], kind_: &str, name_: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == kind_ && name(o) == name_)
        .unwrap_or_else(|| panic!("no {kind_} {name_}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_kustomization_renders() {
    let dirs = kustomize_dirs();
    for wanted in ["cert-manager", "homelab-l2", "metrics", "ha"] {
        assert!(
            dirs.contains(&format!("kustomize/overlays/{wanted}")),
            "overlay {wanted} is missing"
        );
    }
    let base = render("kustomize/base");
    let base_ids: BTreeSet<String> = base.iter().map(label).collect();
    for expected in [
        "Namespace vipam-system",
        "CustomResourceDefinition ippools.vipam.io",
        "CustomResourceDefinition ipallocations.vipam.io",
        "CustomResourceDefinition l2announcements.vipam.io",
        "Deployment vipam-controller",
        "PodDisruptionBudget vipam-controller",
        "Service vipam-webhook",
        "DaemonSet vipam-agent",
        "MutatingWebhookConfiguration vipam",
        "ValidatingWebhookConfiguration vipam",
        "ServiceAccount vipam-controller",
        "ServiceAccount vipam-agent",
    ] {
        assert!(base_ids.contains(expected), "the base lacks {expected}");
    }
    for (dir, objects) in renders() {
        assert!(!objects.is_empty(), "{dir} renders nothing");
        let ids: BTreeSet<String> = objects.iter().map(label).collect();
        // Every overlay keeps the whole install (cert-manager drops only self-signed RBAC).
        for id in &base_ids {
            if dir.ends_with("cert-manager") && id.ends_with("vipam-controller-self-signed") {
                assert!(!ids.contains(id), "{dir} keeps {id}");
                continue;
            }
            assert!(ids.contains(id), "{dir} lacks {id} of the base");
        }
        for obj in objects {
            let namespaced = obj["metadata"]["namespace"].as_str();
            if let Some(namespace) = namespaced {
                assert_eq!(namespace, NAMESPACE, "{dir}: {}", label(obj));
            }
        }
    }
    let homelab = render("kustomize/overlays/homelab-l2");
    assert_eq!(
        find(homelab, "IPPool", "lan")["spec"]["blocks"],
        json!([{"start": "192.168.0.220", "stop": "192.168.0.239"}])
    );
    assert_eq!(
        strings(&find(homelab, "L2Announcement", "lan")["spec"]["ipPools"]),
        ["lan"]
    );
    let ha = render("kustomize/overlays/ha");
    let deployment = find(ha, "Deployment", "vipam-controller");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["whenUnsatisfiable"],
        "DoNotSchedule"
    );
    assert_eq!(
        find(ha, "PodDisruptionBudget", "vipam-controller")["spec"]["minAvailable"],
        2
    );
    let metrics = render("kustomize/overlays/metrics");
    find(metrics, "ServiceMonitor", "vipam");
    let cert_manager = render("kustomize/overlays/cert-manager");
    find(cert_manager, "Certificate", "vipam-webhook");
    find(cert_manager, "Issuer", "vipam-selfsigned");
}

#[test]
fn install_yaml_is_the_rendered_base() {
    let path = root().join("manifests/install.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let on_disk = parse_documents(&text, "manifests/install.yaml");
    let rendered = render("kustomize/base");
    // Compared as objects, so a kustomize version that formats differently is not drift.
    assert!(
        on_disk == rendered,
        "manifests/install.yaml is stale; regenerate it with \
         `kubectl kustomize kustomize/base > manifests/install.yaml`"
    );
}

/// Built-in API groups (validated with kubernetes-validate).
fn is_builtin(obj: &Value) -> bool {
    let g = group(obj);
    g.is_empty()
        || g.ends_with(".k8s.io")
        || ["apps", "batch", "policy", "autoscaling"].contains(&g)
}

fn crd_objects() -> Vec<Value> {
    render("kustomize/base")
        .iter()
        .filter(|o| kind(o) == "CustomResourceDefinition")
        .cloned()
        .collect()
}

/// Runs tests/data/install/validate.py; returns (success, output).
fn validate_offline(builtin: Vec<Value>, custom: Vec<Value>) -> (bool, String) {
    let request = json!({
        "versions": KUBERNETES_VERSIONS,
        "builtin": builtin,
        "crds": crd_objects(),
        "custom": custom,
    });
    let output = run(
        "python3",
        &["tests/data/install/validate.py"],
        Some(&request.to_string()),
        "install Python 3 and `python3 -m pip install kubernetes-validate`",
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_ne!(
        output.status.code(),
        Some(2),
        "the offline validator cannot run:\n{text}"
    );
    (output.status.success(), text)
}

fn unique(objects: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    objects
        .into_iter()
        .filter(|o| seen.insert(o.to_string()))
        .collect()
}

#[test]
fn every_object_validates_offline() {
    let all = unique(everything().into_iter().map(|(_, o)| o));
    let builtin: Vec<Value> = all.iter().filter(|o| is_builtin(o)).cloned().collect();
    let vipam: Vec<Value> = all
        .iter()
        .filter(|o| group(o) == "vipam.io")
        .cloned()
        .collect();
    assert!(
        builtin.len() >= 20,
        "too few built-in objects: {}",
        builtin.len()
    );
    assert_eq!(vipam.len(), 2, "the homelab-l2 IPPool and L2Announcement");
    let (ok, output) = validate_offline(builtin, vipam);
    assert!(ok, "schema validation failed:\n{output}");
    // Third-party kinds: no schema here, so the fields they cannot work without.
    let mut third_party = 0;
    for obj in all
        .iter()
        .filter(|o| !is_builtin(o) && group(o) != "vipam.io")
    {
        third_party += 1;
        check_third_party(obj, &all);
    }
    assert_eq!(
        third_party, 4,
        "Issuer, Certificate, ServiceMonitor, Application"
    );
}

fn check_third_party(obj: &Value, all: &[Value]) {
    let id = label(obj);
    let spec = &obj["spec"];
    assert!(!name(obj).is_empty(), "{id}: metadata.name");
    match (obj["apiVersion"].as_str().unwrap_or(""), kind(obj)) {
        ("cert-manager.io/v1", "Issuer") => {
            let types = ["selfSigned", "ca", "acme", "vault", "venafi"];
            let set = types.iter().filter(|t| spec.get(**t).is_some()).count();
            assert_eq!(set, 1, "{id}: exactly one issuer type");
        }
        ("cert-manager.io/v1", "Certificate") => {
            assert!(spec["secretName"].is_string(), "{id}: spec.secretName");
            let issuer = spec["issuerRef"]["name"]
                .as_str()
                .expect("spec.issuerRef.name");
            assert!(
                all.iter().any(|o| kind(o) == "Issuer" && name(o) == issuer),
                "{id}: issuer {issuer} is shipped"
            );
            let dns = strings(&spec["dnsNames"]);
            assert!(
                dns.contains(&format!("vipam-webhook.{NAMESPACE}.svc")),
                "{id}: covers the webhook Service ({dns:?})"
            );
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor") => {
            let selector = spec["selector"]["matchLabels"]
                .as_object()
                .expect("spec.selector.matchLabels");
            let endpoints = spec["endpoints"].as_array().expect("spec.endpoints");
            assert!(!endpoints.is_empty(), "{id}: endpoints");
            let selected: Vec<&Value> = all
                .iter()
                .filter(|o| kind(o) == "Service")
                .filter(|o| {
                    selector
                        .iter()
                        .all(|(k, v)| o["metadata"]["labels"][k.as_str()] == *v)
                })
                .collect();
            assert_eq!(selected.len(), 2, "{id}: selects the two metrics Services");
            for endpoint in endpoints {
                let port = endpoint["port"].as_str().expect("endpoint port name");
                for service in &selected {
                    assert!(
                        service["spec"]["ports"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| p["name"] == port),
                        "{id}: {} has a port named {port}",
                        label(service)
                    );
                }
            }
        }
        ("argoproj.io/v1alpha1", "Application") => {
            for field in ["repoURL", "targetRevision", "path"] {
                assert!(
                    spec["source"][field].is_string(),
                    "{id}: spec.source.{field}"
                );
            }
            assert!(spec["project"].is_string(), "{id}: spec.project");
            assert!(
                spec["destination"]["server"].is_string()
                    || spec["destination"]["name"].is_string(),
                "{id}: spec.destination"
            );
        }
        (api_version, kind_) => panic!("unexpected third-party object {api_version} {kind_}"),
    }
}

#[test]
fn the_validator_rejects_broken_objects() {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "broken", "namespace": NAMESPACE},
        "spec": {
            "replicas": "two",
            "selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": IMAGE}]}}
        }
    });
    let unknown_field = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "broken"},
        "spec": {"ports": [{"port": 80}], "typo": true}
    });
    let pool = json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "broken"},
        "spec": {"blocks": [{"cidr": 5}], "avoidBuggyIps": true}
    });
    let l2 = json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "L2Announcement",
        "metadata": {"name": "broken"},
        "spec": {"mode": "bgp"}
    });
    let (ok, output) = validate_offline(vec![deployment, unknown_field], vec![pool, l2]);
    assert!(!ok, "broken objects passed:\n{output}");
    for needle in [
        "FAIL apps/v1 Deployment vipam-system/broken (Kubernetes 1.30.0): spec/replicas",
        "FAIL v1 Service broken (Kubernetes 1.33.0)",
        "FAIL vipam.io/v1alpha1 IPPool broken: spec/blocks/0/cidr",
        "FAIL vipam.io/v1alpha1 IPPool broken: spec: Additional properties are not allowed ('avoidBuggyIps'",
        "FAIL vipam.io/v1alpha1 L2Announcement broken: spec/mode",
    ] {
        assert!(output.contains(needle), "expected {needle:?} in:\n{output}");
    }
}

/// Every key path in `value` (for finding fields anywhere).
fn walk<'a>(value: &'a Value, path: &mut Vec<String>, visit: &mut dyn FnMut(&[String], &'a Value)) {
    visit(path, value);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(k.clone());
                walk(v, path, visit);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                walk(v, path, visit);
                path.pop();
            }
        }
        _ => {}
    }
}

/// What the drift lint finds in one shipped object: anything the API server, vipam, kubectl or
/// Argo CD write at run time (Argo CD would show it as drift, or fight over it).
fn drift(origin: &str, obj: &Value) -> Vec<String> {
    let id = format!("{origin}: {}", label(obj));
    let mut problems = Vec::new();
    if obj.get("status").is_some() {
        problems.push(format!("{id}: status"));
    }
    for field in [
        "creationTimestamp",
        "resourceVersion",
        "uid",
        "generation",
        "managedFields",
    ] {
        if obj["metadata"].get(field).is_some() {
            problems.push(format!("{id}: metadata.{field}"));
        }
    }
    // What vipam creates itself: IPAllocations, the self-signed Secret, Leases.
    if ["IPAllocation", "Lease"].contains(&kind(obj))
        || (kind(obj) == "Secret" && name(obj) == "vipam-webhook-tls")
    {
        problems.push(format!("{id}: an object vipam creates at run time"));
    }
    walk(obj, &mut Vec::new(), &mut |path, value| {
        let last = path.last().map(String::as_str).unwrap_or("");
        if last == "caBundle" {
            problems.push(format!(
                "{id}: {} (written by vipam or cert-manager)",
                path.join(".")
            ));
        }
        // Labels and annotations of the object and of pod templates.
        if last == "labels" || last == "annotations" {
            for key in value.as_object().into_iter().flat_map(|m| m.keys()) {
                let forbidden = match key.as_str() {
                    "vipam.io/assigned-ips" => Some("written by the webhook"),
                    "kubectl.kubernetes.io/last-applied-configuration" => {
                        Some("written by kubectl apply")
                    }
                    "argocd.argoproj.io/tracking-id" | "argocd.argoproj.io/instance" => {
                        Some("Argo CD tracking")
                    }
                    "app.kubernetes.io/instance" => {
                        Some("Argo CD's tracking label (label tracking mode)")
                    }
                    _ => None,
                };
                if let Some(why) = forbidden {
                    problems.push(format!("{id}: {}.{key} ({why})", path.join(".")));
                }
            }
        }
    });
    problems
}

#[test]
fn nothing_shipped_is_written_at_run_time() {
    let problems: Vec<String> = everything()
        .iter()
        .flat_map(|(origin, obj)| drift(origin, obj))
        .collect();
    assert!(
        problems.is_empty(),
        "drift in shipped manifests:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_drift_lint_sees_run_time_fields() {
    let samples = [
        json!({"kind": "MutatingWebhookConfiguration", "metadata": {"name": "x"}, "webhooks": [{"clientConfig": {"caBundle": "Zm9v"}}]}),
        json!({"kind": "Service", "metadata": {"name": "x", "annotations": {"vipam.io/assigned-ips": "192.0.2.1"}}}),
        json!({"kind": "Deployment", "metadata": {"name": "x"}, "spec": {"template": {"metadata": {"labels": {"app.kubernetes.io/instance": "vipam"}}}}}),
        json!({"kind": "Service", "metadata": {"name": "x", "annotations": {"argocd.argoproj.io/tracking-id": "vipam:/Service:default/x"}}}),
        json!({"kind": "IPPool", "metadata": {"name": "x"}, "status": {"capacity": "1"}}),
        json!({"kind": "IPPool", "metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}}),
        json!({"kind": "IPAllocation", "metadata": {"name": "v4-192-0-2-1"}}),
        json!({"kind": "Secret", "metadata": {"name": "vipam-webhook-tls"}}),
    ];
    for sample in samples {
        assert_eq!(drift("sample", &sample).len(), 1, "{sample}");
    }
}

/// RBAC rules bound to a ServiceAccount in one render.
fn rules_of(objects: &[Value], service_account: &str) -> Vec<Value> {
    let mut rules = Vec::new();
    for binding in objects
        .iter()
        .filter(|o| ["RoleBinding", "ClusterRoleBinding"].contains(&kind(o)))
    {
        let bound = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == service_account
                    && s["namespace"] == NAMESPACE
            });
        if !bound {
            continue;
        }
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
        let role_name = binding["roleRef"]["name"].as_str().unwrap();
        let role = find(objects, role_kind, role_name);
        rules.extend(role["rules"].as_array().cloned().unwrap_or_default());
    }
    rules
}

fn allows(rules: &[Value], api_group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        strings(&r["apiGroups"]).iter().any(|g| g == api_group)
            && strings(&r["resources"]).iter().any(|x| x == resource)
            && strings(&r["verbs"]).iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_is_least_privilege() {
    for (dir, objects) in renders() {
        for obj in objects {
            let id = format!("{dir}: {}", label(obj));
            match kind(obj) {
                "Role" | "ClusterRole" => {
                    assert!(obj.get("aggregationRule").is_none(), "{id}: aggregation");
                    for rule in obj["rules"].as_array().expect("rules") {
                        for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                            for item in strings(&rule[field]) {
                                assert!(!item.contains('*'), "{id}: wildcard in {field}: {rule}");
                            }
                        }
                        assert!(rule.get("nonResourceURLs").is_none(), "{id}: {rule}");
                        let verbs = strings(&rule["verbs"]);
                        for verb in ["escalate", "bind", "impersonate"] {
                            assert!(!verbs.iter().any(|v| v == verb), "{id}: {verb}");
                        }
                        // resourceNames cannot restrict these verbs: such a rule is a mistake.
                        if rule.get("resourceNames").is_some() {
                            for verb in ["create", "list", "watch", "deletecollection"] {
                                assert!(
                                    !verbs.iter().any(|v| v == verb),
                                    "{id}: {verb} with resourceNames"
                                );
                            }
                        }
                        assert!(
                            !strings(&rule["resources"]).iter().any(|r| r == "secrets")
                                || strings(&rule["verbs"])
                                    .iter()
                                    .all(|v| v != "list" && v != "watch"),
                            "{id}: never list or watch Secrets"
                        );
                    }
                }
                "RoleBinding" | "ClusterRoleBinding" => {
                    let role = obj["roleRef"]["name"].as_str().unwrap();
                    assert!(
                        !["cluster-admin", "admin", "edit"].contains(&role),
                        "{id} binds {role}"
                    );
                    // Every binding refers to a role shipped alongside.
                    find(objects, obj["roleRef"]["kind"].as_str().unwrap(), role);
                }
                _ => {}
            }
        }
        let agent = rules_of(objects, "vipam-agent");
        assert!(
            allows(&agent, "vipam.io", "ipallocations/status", "patch"),
            "{dir}"
        );
        assert!(
            allows(&agent, "coordination.k8s.io", "leases", "update"),
            "{dir}"
        );
        for resource in ["services", "services/status"] {
            for verb in WRITE_VERBS {
                assert!(
                    !allows(&agent, "", resource, verb),
                    "{dir}: the agent may {verb} {resource}"
                );
            }
        }
        // The agent reads one Secret, by name: the BGP MD5 passwords (README, BGP). Never the
        // webhook's key or any other Secret.
        for rule in &agent {
            if strings(&rule["resources"]).iter().any(|r| r == "secrets") {
                assert_eq!(strings(&rule["verbs"]), ["get"], "{dir}: {rule}");
                assert_eq!(
                    strings(&rule["resourceNames"]),
                    ["vipam-bgp-passwords"],
                    "{dir}: the agent reads Secrets other than vipam-bgp-passwords: {rule}"
                );
            }
        }
        // The agent deletes nothing but Leases (its own, when it stops).
        for rule in &agent {
            if strings(&rule["verbs"]).iter().any(|v| v == "delete") {
                assert_eq!(strings(&rule["resources"]), ["leases"], "{dir}: {rule}");
            }
        }
        let controller = rules_of(objects, "vipam-controller");
        assert!(allows(&controller, "", "services/status", "patch"), "{dir}");
        for verb in WRITE_VERBS {
            assert!(
                !allows(&controller, "", "services", verb),
                "{dir}: the controller may {verb} services (only the webhook's patch, at admission)"
            );
        }
        for verb in ["create", "update", "delete"] {
            assert!(
                allows(&controller, "vipam.io", "ipallocations", verb),
                "{dir}: {verb}"
            );
        }
        for verb in WRITE_VERBS {
            for resource in ["ippools", "l2announcements"] {
                assert!(
                    !allows(&controller, "vipam.io", resource, verb),
                    "{dir}: the controller may {verb} {resource} (Git owns them)"
                );
            }
        }
    }
}

/// A JSON value as a Lua table constructor (what Argo CD hands its health scripts as `obj`).
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for byte in s.bytes() {
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(byte as char),
            other => out.push_str(&format!("\\{other}")),
        }
    }
    out.push('"');
    out
}

/// Runs an Argo CD health script on `obj` with Debian's lua5.1, in an environment with only
/// the libraries Argo CD's gopher-lua sandbox offers; returns (status, message).
fn health(script: &Path, obj: &Value) -> (String, String) {
    let chunk = format!(
        r#"local script = assert(loadfile({path}))
local env = {{obj = {obj}, ipairs = ipairs, pairs = pairs, next = next, tostring = tostring,
  tonumber = tonumber, type = type, error = error, pcall = pcall, select = select,
  unpack = unpack, string = string, table = table, math = math}}
setfenv(script, env)
local hs = script()
assert(type(hs) == "table", "the script returns no table")
io.write(tostring(hs.status), "\n", tostring(hs.message))
"#,
        path = lua_string(&script.display().to_string()),
        obj = lua_literal(obj),
    );
    let output = run(
        "lua5.1",
        &["-"],
        Some(&chunk),
        "install Debian's lua5.1 (`apt-get install lua5.1`)",
    );
    assert!(
        output.status.success(),
        "{} failed on {obj}:\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

#[test]
fn health_scripts_judge_the_fixtures() {
    let fixtures = root().join("tests/data/install/health");
    let mut covered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .expect("tests/data/install/health exists")
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let script_name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let script = root()
            .join("argocd/health")
            .join(format!("{script_name}.lua"));
        assert!(
            script.exists(),
            "{} has no script {}",
            dir.display(),
            script.display()
        );
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        cases.sort();
        for case in cases {
            let text = std::fs::read_to_string(&case).unwrap();
            let fixture: Value =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
            let (status, message) = health(&script, &fixture["object"]);
            let expected = fixture["expect"]["status"].as_str().expect("expect.status");
            assert_eq!(status, expected, "{}: message {message:?}", case.display());
            for needle in strings(&fixture["expect"]["messageContains"]) {
                assert!(
                    message.contains(&needle),
                    "{}: message {message:?} lacks {needle:?}",
                    case.display()
                );
            }
            covered
                .entry(script_name.clone())
                .or_default()
                .insert(status);
        }
    }
    let all = ["Degraded", "Healthy", "Progressing"];
    for script in [
        "vipam.io_IPPool",
        "vipam.io_IPAllocation",
        "vipam.io_L2Announcement",
        "vipam.io_BGPPeer",
        "vipam.io_BGPAnnouncement",
        "Service",
    ] {
        let seen: Vec<&str> = covered
            .get(script)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        assert_eq!(seen, all, "{script}: fixtures for every status");
    }
    assert!(covered.contains_key("argoproj.io_Application"));
}

#[test]
fn health_scripts_use_the_controllers_condition_names() {
    let read = |name: &str| {
        std::fs::read_to_string(root().join("argocd/health").join(name)).expect("script exists")
    };
    let quoted = |s: &str| format!("\"{s}\"");
    let pool = read("vipam.io_IPPool.lua");
    assert!(pool.contains(&quoted(READY)) && pool.contains(&quoted(CONFLICT)));
    assert!(read("vipam.io_L2Announcement.lua").contains(&quoted(READY)));
    assert!(read("vipam.io_BGPAnnouncement.lua").contains(&quoted(READY)));
    assert!(read("vipam.io_BGPPeer.lua").contains(&quoted(READY)));
    let allocation = read("vipam.io_IPAllocation.lua");
    assert!(allocation.contains(&quoted(ORPHANED)));
    for phase in ["Bound", "Released"] {
        let json = serde_json::to_value(
            serde_json::from_value::<vipam::api::AllocationPhase>(json!(phase)).expect("a phase"),
        )
        .unwrap();
        assert_eq!(json, json!(phase));
        assert!(allocation.contains(&quoted(phase)), "{phase}");
    }
    let service = read("Service.lua");
    assert!(service.contains(&quoted(ALLOCATED)) && service.contains(&quoted(ANNOUNCED)));
    // The reason the controller gives a Service that keeps its address after a refused change.
    let reconcile = std::fs::read_to_string(root().join("src/controller/reconcile.rs")).unwrap();
    assert!(reconcile.contains("\"KeptPrevious\"") && service.contains("\"KeptPrevious\""));
    // The fixtures use the real condition types.
    let types: BTreeSet<&str> = [READY, CONFLICT, ORPHANED, ALLOCATED, ANNOUNCED].into();
    for script in [
        "vipam.io_IPPool",
        "vipam.io_IPAllocation",
        "vipam.io_L2Announcement",
        "vipam.io_BGPPeer",
        "vipam.io_BGPAnnouncement",
        "Service",
    ] {
        let dir = root().join("tests/data/install/health").join(script);
        for case in std::fs::read_dir(&dir).unwrap() {
            let case = case.unwrap().path();
            let fixture: Value =
                serde_saphyr::from_str(&std::fs::read_to_string(&case).unwrap()).unwrap();
            for condition in fixture["object"]["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let type_ = condition["type"].as_str().unwrap();
                assert!(
                    types.contains(type_),
                    "{}: condition type {type_}",
                    case.display()
                );
            }
        }
    }
}

#[test]
fn argocd_cm_patches_carry_the_health_scripts() {
    let mut keys = BTreeSet::new();
    for (origin, obj) in argocd_objects()
        .into_iter()
        .filter(|(_, o)| kind(o) == "ConfigMap")
    {
        assert_eq!(name(&obj), "argocd-cm", "{origin}");
        for (key, value) in obj["data"].as_object().expect("data") {
            let resource = key
                .strip_prefix("resource.customizations.health.")
                .unwrap_or_else(|| panic!("{origin}: unexpected key {key}"));
            let script =
                std::fs::read_to_string(root().join(format!("argocd/health/{resource}.lua")))
                    .unwrap_or_else(|e| panic!("{origin}: {key}: {e}"));
            assert!(
                value.as_str() == Some(script.as_str()),
                "{origin}: {key} differs from argocd/health/{resource}.lua"
            );
            keys.insert(resource.to_string());
        }
    }
    let scripts: BTreeSet<String> = std::fs::read_dir(root().join("argocd/health"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(keys, scripts, "every script is in an argocd-cm patch");
}

#[test]
fn argocd_application_needs_no_ignore_differences_and_orders_waves() {
    let apps: Vec<Value> = argocd_objects()
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| kind(o) == "Application")
        .collect();
    assert_eq!(apps.len(), 1);
    let app = &apps[0];
    let text = app.to_string();
    assert!(!text.contains("ignoreDifferences"), "{text}");
    assert!(app["spec"].get("ignoreDifferences").is_none());
    assert!(
        app["metadata"].get("finalizers").is_none(),
        "a cascading delete would delete the CRDs and with them the ledger"
    );
    let path = app["spec"]["source"]["path"].as_str().unwrap();
    let objects = render(path);
    let wave = |obj: &Value| -> i64 {
        obj["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap_or_else(|e| panic!("{}: sync-wave: {e}", label(obj)))
    };
    let max_of = |kinds: &[&str]| {
        objects
            .iter()
            .filter(|o| kinds.contains(&kind(o)))
            .map(wave)
            .max()
            .unwrap()
    };
    let min_of = |kinds: &[&str]| {
        objects
            .iter()
            .filter(|o| kinds.contains(&kind(o)))
            .map(wave)
            .min()
            .unwrap()
    };
    let first = ["CustomResourceDefinition", "Namespace"];
    let components = [
        "Deployment",
        "DaemonSet",
        "Service",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
    ];
    let pools = ["IPPool", "L2Announcement"];
    assert!(
        max_of(&first) < min_of(&components),
        "CRDs before the controller"
    );
    assert!(
        max_of(&components) < min_of(&pools),
        "the controller before pools"
    );
    assert!(max_of(&pools) < 0, "pools before workloads (wave 0)");
    // The Application itself precedes workload Applications in an app-of-apps.
    assert!(wave(app) < 0);
    for obj in objects.iter().filter(|o| pools.contains(&kind(o))) {
        let options = obj["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
            .as_str()
            .unwrap_or("");
        assert!(
            options.contains("SkipDryRunOnMissingResource=true"),
            "{}",
            label(obj)
        );
    }
}

/// (long flags, env names) of an `Args` struct.
fn arg_table(command: &clap::Command) -> BTreeMap<String, Option<String>> {
    command
        .get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            Some((long, env))
        })
        .collect()
}

/// Parses a container's args (after the mode) and env as the binary would; fieldRef env
/// values get a stand-in, since they come from the downward API.
fn parse_container<T: Args + FromArgMatches>(container: &Value, mode: &'static str, id: &str) -> T {
    let command = T::augment_args(clap::Command::new(mode).no_binary_name(true));
    let table = arg_table(&command);
    let args = strings(&container["args"]);
    assert_eq!(args.first().map(String::as_str), Some(mode), "{id}: mode");
    // The binary has this mode.
    let help = Command::new(env!("CARGO_BIN_EXE_vipam"))
        .args([mode, "--help"])
        .output()
        .expect("the vipam binary runs");
    assert!(
        help.status.success(),
        "{id}: `vipam {mode}` is not a mode of the binary: {}",
        String::from_utf8_lossy(&help.stderr)
    );
    assert!(
        container.get("command").is_none(),
        "{id}: the image's ENTRYPOINT is /vipam"
    );
    let mut argv: Vec<String> = Vec::new();
    for arg in &args[1..] {
        let flag = arg
            .strip_prefix("--")
            .unwrap_or_else(|| panic!("{id}: {arg} is not a flag"));
        let flag = flag.split('=').next().unwrap();
        assert!(
            table.contains_key(flag),
            "{id}: --{flag} is not a flag of `vipam {mode}`"
        );
        argv.push(arg.clone());
    }
    let by_env: BTreeMap<&str, &str> = table
        .iter()
        .filter_map(|(long, env)| Some((env.as_deref()?, long.as_str())))
        .collect();
    for env in container["env"].as_array().into_iter().flatten() {
        let env_name = env["name"].as_str().unwrap();
        let long = by_env
            .get(env_name)
            .unwrap_or_else(|| panic!("{id}: env {env_name} is read by no flag of `vipam {mode}`"));
        let value = match env["value"].as_str() {
            Some(v) => v.to_string(),
            None => {
                assert!(
                    env["valueFrom"]["fieldRef"]["fieldPath"].is_string(),
                    "{id}: {env_name}"
                );
                format!("from-{env_name}")
            }
        };
        argv.push(format!("--{long}={value}"));
    }
    let matches = command
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| panic!("{id}: `vipam {mode}` refuses {argv:?}: {e}"));
    T::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{id}: {e}"))
}

fn container_port(container: &Value, port_name: &str) -> i64 {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == port_name)
        .and_then(|p| p["containerPort"].as_i64())
        .unwrap_or_else(|| panic!("no container port named {port_name}"))
}

fn env_field(container: &Value, env_name: &str) -> String {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == env_name)
        .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
        .unwrap_or_else(|| panic!("env {env_name} from the downward API"))
        .to_string()
}

/// Probes use the named admin port (or its number), on the right paths.
fn check_probes(container: &Value, admin_port: u16, id: &str) {
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{id}: {probe}");
        let port = match &get["port"] {
            Value::String(port_name) => container_port(container, port_name),
            Value::Number(n) => n.as_i64().unwrap(),
            other => panic!("{id}: {probe} port {other}"),
        };
        assert_eq!(port, i64::from(admin_port), "{id}: {probe} port");
        assert!(
            get.get("scheme").is_none() || get["scheme"] == "HTTP",
            "{id}: admin is plain HTTP"
        );
    }
}

fn container_security(pod: &Value, container: &Value) -> (Value, Value) {
    (
        pod["securityContext"].clone(),
        container["securityContext"].clone(),
    )
}

#[test]
fn flags_ports_and_env_match_the_binary() {
    for (dir, objects) in renders() {
        // The controller.
        let deployment = find(objects, "Deployment", "vipam-controller");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let id = format!("{dir}: Deployment vipam-controller");
        assert_eq!(container["image"], IMAGE, "{id}");
        let args: ControllerArgs = parse_container(container, "controller", &id);
        assert_eq!(env_field(container, "POD_NAMESPACE"), "metadata.namespace");
        assert_eq!(env_field(container, "POD_NAME"), "metadata.name");
        assert_eq!(
            container_port(container, "webhook"),
            i64::from(args.webhook_addr.port())
        );
        assert_eq!(
            container_port(container, "admin"),
            i64::from(args.admin_addr.port())
        );
        assert_eq!(
            (args.webhook_addr.port(), args.admin_addr.port()),
            (9443, 8080),
            "{id}"
        );
        check_probes(container, args.admin_addr.port(), &id);
        // The webhook Service routes to the webhook port.
        let service = find(objects, "Service", &args.webhook_service);
        let target = &service["spec"]["ports"][0]["targetPort"];
        let target = match target {
            Value::String(port_name) => container_port(container, port_name),
            other => other.as_i64().unwrap(),
        };
        assert_eq!(
            target,
            i64::from(args.webhook_addr.port()),
            "{id}: Service {}",
            args.webhook_service
        );
        for (kind_, config) in [
            (
                "MutatingWebhookConfiguration",
                &args.mutating_webhook_configuration,
            ),
            (
                "ValidatingWebhookConfiguration",
                &args.validating_webhook_configuration,
            ),
        ] {
            let configuration = find(objects, kind_, config);
            for webhook in configuration["webhooks"].as_array().unwrap() {
                let service_ref = &webhook["clientConfig"]["service"];
                assert_eq!(
                    service_ref["name"],
                    args.webhook_service.as_str(),
                    "{id}: {kind_}"
                );
                assert_eq!(service_ref["namespace"], NAMESPACE, "{id}: {kind_}");
                assert_eq!(
                    service_ref["port"], service["spec"]["ports"][0]["port"],
                    "{id}: {kind_}"
                );
            }
            let injected =
                configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].as_str();
            if args.self_signed {
                assert!(injected.is_none(), "{id}: {kind_}: two writers of caBundle");
            } else {
                assert!(
                    injected.is_some(),
                    "{id}: {kind_}: nothing writes its caBundle"
                );
            }
        }
        let role = find(objects, "Role", "vipam-controller");
        assert!(
            role["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| strings(&r["resourceNames"]) == [vipam::controller::lease::LEASE_NAME]),
            "{id}: the leader Lease by name"
        );
        if args.self_signed {
            let secrets = find(objects, "Role", "vipam-controller-self-signed");
            assert!(secrets["rules"].as_array().unwrap().iter().any(|r| strings(
                &r["resourceNames"]
            ) == [
                args.tls_secret.clone()
            ]));
            let configs = find(objects, "ClusterRole", "vipam-controller-self-signed");
            let names = strings(&configs["rules"][0]["resourceNames"]);
            assert!(
                names.contains(&args.mutating_webhook_configuration)
                    && names.contains(&args.validating_webhook_configuration)
            );
        } else {
            let dir_ = args
                .tls_dir
                .as_ref()
                .expect("--tls-dir without --self-signed");
            let mount = container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["mountPath"] == dir_.display().to_string().as_str())
                .unwrap_or_else(|| panic!("{id}: nothing mounted at {}", dir_.display()));
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap();
            let secret = volume["secret"]["secretName"].as_str().unwrap();
            assert!(
                objects
                    .iter()
                    .any(|o| kind(o) == "Certificate" && o["spec"]["secretName"] == secret),
                "{id}: {secret} comes from a Certificate"
            );
        }
        let (pod_security, security) = container_security(pod, container);
        assert_eq!(pod_security["runAsNonRoot"], true, "{id}");
        assert_eq!(
            pod_security["seccompProfile"]["type"], "RuntimeDefault",
            "{id}"
        );
        assert_eq!(security["readOnlyRootFilesystem"], true, "{id}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{id}");
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{id}");
        assert!(security["capabilities"].get("add").is_none(), "{id}");
        assert!(
            container["resources"]["requests"].is_object()
                && container["resources"]["limits"]["memory"].is_string(),
            "{id}"
        );

        // The agent.
        let daemonset = find(objects, "DaemonSet", "vipam-agent");
        let pod = &daemonset["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let id = format!("{dir}: DaemonSet vipam-agent");
        assert_eq!(container["image"], IMAGE, "{id}");
        let args: AgentArgs = parse_container(container, "agent", &id);
        assert_eq!(env_field(container, "NODE_NAME"), "spec.nodeName");
        assert_eq!(env_field(container, "POD_NAMESPACE"), "metadata.namespace");
        assert_eq!(
            container_port(container, "admin"),
            i64::from(args.admin_addr.port())
        );
        assert_eq!(args.admin_addr.port(), 9478, "{id}");
        check_probes(container, args.admin_addr.port(), &id);
        assert_eq!(pod["hostNetwork"], true, "{id}");
        assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet", "{id}");
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace period");
        assert!(
            grace > args.handover_timeout.as_secs() + args.lease_duration.as_secs(),
            "{id}: {grace}s leave no time for the handover"
        );
        let state = args.state_dir.display().to_string();
        let mount = container["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == state.as_str())
            .unwrap_or_else(|| panic!("{id}: nothing mounted at {state}"));
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(
            volume["hostPath"]["path"],
            state.as_str(),
            "{id}: survives agent restarts"
        );
        assert_eq!(volume["hostPath"]["type"], "DirectoryOrCreate", "{id}");
        let (_, security) = container_security(pod, container);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{id}");
        let mut added = strings(&security["capabilities"]["add"]);
        added.sort();
        assert_eq!(added, ["NET_ADMIN", "NET_RAW"], "{id}");
        assert_ne!(security["privileged"], true, "{id}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{id}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{id}");
        let tolerations = pod["tolerations"].as_array().expect("tolerations");
        assert!(
            tolerations
                .iter()
                .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
            "{id}: runs on every node, control plane included"
        );
    }
}

#[test]
fn webhook_configurations_are_safe_for_gitops() {
    for (dir, objects) in renders() {
        let mutating = find(objects, "MutatingWebhookConfiguration", "vipam");
        let webhooks = mutating["webhooks"].as_array().unwrap();
        assert_eq!(webhooks.len(), 1, "{dir}");
        let hook = &webhooks[0];
        assert_eq!(hook["name"], "services.vipam.io");
        assert_eq!(hook["clientConfig"]["service"]["path"], "/mutate/service");
        assert_eq!(
            hook["sideEffects"], "NoneOnDryRun",
            "{dir}: dry runs write nothing"
        );
        assert_eq!(hook["failurePolicy"], "Fail", "{dir}");
        assert!(
            hook["timeoutSeconds"].as_i64().unwrap() <= 10,
            "{dir}: short timeout"
        );
        assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(hook["rules"][0]["resources"], json!(["services"]));
        assert_eq!(hook["rules"][0]["operations"], json!(["CREATE", "UPDATE"]));
        let expression = hook["matchConditions"][0]["expression"].as_str().unwrap();
        assert!(
            expression.contains("object.spec.type == 'LoadBalancer'"),
            "{dir}: {expression}"
        );
        let validating = find(objects, "ValidatingWebhookConfiguration", "vipam");
        let mut paths: Vec<(String, String)> = validating["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                assert_eq!(h["sideEffects"], "None", "{dir}");
                assert_eq!(h["failurePolicy"], "Fail", "{dir}");
                (
                    h["rules"][0]["resources"][0].as_str().unwrap().to_string(),
                    h["clientConfig"]["service"]["path"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                (
                    "bgpannouncements".to_string(),
                    "/validate/bgpannouncement".to_string()
                ),
                ("bgppeers".to_string(), "/validate/bgppeer".to_string()),
                ("ippools".to_string(), "/validate/ippool".to_string()),
                (
                    "l2announcements".to_string(),
                    "/validate/l2announcement".to_string()
                ),
            ]
        );
    }
}

#[test]
fn dockerfile_builds_a_nonroot_distroless_image() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].starts_with("FROM rust:1-bookworm AS "),
        "{}",
        froms[0]
    );
    assert_eq!(*froms[1], "FROM gcr.io/distroless/cc-debian12:nonroot");
    assert!(dockerfile.contains("cargo build --release --locked"));
    let final_stage = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    assert!(final_stage.contains("\nUSER nonroot\n"), "runs as non-root");
    assert!(final_stage.contains("ENTRYPOINT [\"/vipam\"]"));
    assert!(
        dockerfile.contains(IMAGE),
        "the Dockerfile names the image the manifests use"
    );
    // The build context keeps what the build needs.
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    let ignored: BTreeSet<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for needed in ["src", "Cargo.toml", "Cargo.lock", "benches"] {
        assert!(!ignored.contains(needed), ".dockerignore drops {needed}");
        assert!(
            dockerfile.contains(&format!("COPY {needed}"))
                || dockerfile.contains(&format!(" {needed} ")),
            "the Dockerfile copies {needed}"
        );
    }
    // Every image in every manifest is this one.
    for (origin, obj) in everything() {
        walk(&obj, &mut Vec::new(), &mut |path, value| {
            if path.last().map(String::as_str) == Some("image") {
                assert_eq!(value, IMAGE, "{origin}: {}", label(&obj));
            }
        });
    }
}
