//! vipam installed on a test control plane as users install it: manifests/install.yaml applied
//! server-side, `vipam controller` replicas as local processes inside the control plane's
//! namespace with their ServiceAccount's token (so the shipped RBAC is what applies), and the
//! API server calling them through the shipped `vipam-webhook` Service.

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use super::{ControlPlane, repo, wait_for};

pub fn vipam_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vipam")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A failed command's status and output, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The installation: install.yaml and one controller per webhook address.
pub struct Installation<'a> {
    pub cp: &'a ControlPlane,
    kubeconfig: PathBuf,
    /// Webhook address of each replica (an address of the control plane's namespace).
    addresses: Vec<String>,
    /// Extra flags of every controller.
    flags: Vec<String>,
    controllers: Mutex<Vec<Child>>,
    pub logs: Vec<PathBuf>,
}

/// Admin (probe and metrics) address of controller `i`, inside the namespace.
pub fn admin_addr(i: usize) -> String {
    format!("127.0.0.1:{}", 18080 + i)
}

impl<'a> Installation<'a> {
    /// Applies install.yaml and starts one controller per address in `addresses`, each with
    /// `flags`; returns once every replica is ready and the API server reaches the webhook.
    pub fn install(cp: &'a ControlPlane, addresses: &[&str], flags: &[&str]) -> Installation<'a> {
        let install = repo().join("manifests/install.yaml");
        cp.kubectl_ok(&["apply", "--server-side", "-f", install.to_str().unwrap()]);
        cp.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ]);
        let kubeconfig = cp.service_account_kubeconfig("vipam-system", "vipam-controller");
        let logs = (0..addresses.len())
            .map(|i| cp.scratch.join(format!("controller-{i}.log")))
            .collect();
        let installation = Installation {
            cp,
            kubeconfig,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            controllers: Mutex::new(Vec::new()),
            logs,
        };
        installation.set_webhook_endpoints(addresses);
        for i in 0..addresses.len() {
            let child = installation.spawn_controller(i);
            installation.controllers.lock().unwrap().push(child);
        }
        for i in 0..addresses.len() {
            installation.wait_ready(i);
        }
        installation.wait_webhook_answers();
        installation
    }

    fn spawn_controller(&self, i: usize) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.logs[i])
            .unwrap();
        let mut cmd = self.cp.command_in_ns(vipam_bin());
        cmd.args(["controller", "--self-signed"])
            .args(["--webhook-addr", &format!("{}:9443", self.addresses[i])])
            .args(["--admin-addr", &admin_addr(i)])
            .args(["--identity", &format!("vipam-controller-test-{i}")])
            .args(["--self-signed-check-interval", "2s"])
            .args(&self.flags)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAMESPACE", "vipam-system")
            .env("RUST_LOG", "info,vipam=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        super::spawn_owned(cmd)
    }

    fn wait_ready(&self, i: usize) {
        let addr = admin_addr(i);
        wait_for(
            &format!("controller {i} /readyz"),
            Duration::from_secs(60),
            || {
                let ready = self.cp.http_get_in_ns(&addr, "/readyz");
                matches!(ready, Some((200, _))).then_some(())
            },
        );
    }

    /// Waits until the API server calls the webhook through the Service with the injected
    /// caBundle: a server dry run of a LoadBalancer Service is answered by vipam itself.
    pub fn wait_webhook_answers(&self) {
        let probe = service_yaml("default", "webhook-probe", &[], &[(80, "TCP")]);
        wait_for(
            "the API server to reach vipam's webhook",
            Duration::from_secs(60),
            || {
                let out = self.cp.kubectl_stdin(
                    &["create", "--dry-run=server", "-f", "-", "-o", "json"],
                    &probe,
                );
                // Admitted with vipam's annotation (a pool serves `default`), or refused
                // with vipam's own reason; never "failed calling webhook".
                let stderr = text(&out.stderr);
                let answered = if out.status.success() {
                    text(&out.stdout).contains("vipam.io/assigned-ips")
                } else {
                    stderr.contains("vipam") && !stderr.contains("failed calling webhook")
                };
                answered.then_some(())
            },
        );
    }

    /// Restarts every controller one at a time, as a rolling update does: the restarted
    /// replica's endpoint leaves the Service while it is down.
    pub fn restart_controllers(&self) {
        let all: Vec<&str> = self.addresses.iter().map(String::as_str).collect();
        for i in 0..self.addresses.len() {
            let others: Vec<&str> = all
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, a)| *a)
                .collect();
            self.set_webhook_endpoints(&others);
            {
                let mut controllers = self.controllers.lock().unwrap();
                let _ = controllers[i].kill();
                let _ = controllers[i].wait();
                controllers[i] = self.spawn_controller(i);
            }
            self.wait_ready(i);
            self.set_webhook_endpoints(&all);
        }
        self.wait_webhook_answers();
    }

    /// Service admissions replica `i` has answered (its `vipam_admissions_total`).
    pub fn admissions(&self, i: usize) -> u64 {
        let (status, body) = self
            .cp
            .http_get_in_ns(&admin_addr(i), "/metrics")
            .unwrap_or_else(|| panic!("controller {i} /metrics does not answer"));
        assert_eq!(status, 200, "controller {i} /metrics");
        body.lines()
            .filter(|l| {
                l.starts_with("vipam_admissions_total{") && l.contains("webhook=\"service\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Fails the test if the shipped RBAC refused any call of a controller.
    pub fn assert_no_forbidden(&self) {
        assert_no_forbidden(&self.logs);
    }

    /// The EndpointSlice of the shipped `vipam-webhook` Service, naming the controllers'
    /// addresses (there is no kubelet: the tests publish what the endpointslice controller
    /// would).
    fn set_webhook_endpoints(&self, addresses: &[&str]) {
        let endpoints: Vec<Value> = addresses
            .iter()
            .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
            .collect();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "vipam-webhook-tests",
                "namespace": "vipam-system",
                "labels": {
                    "kubernetes.io/service-name": "vipam-webhook",
                    "endpointslice.kubernetes.io/managed-by": "vipam-tests"
                }
            },
            "addressType": "IPv4",
            "ports": [{"name": "webhook", "port": 9443, "protocol": "TCP"}],
            "endpoints": endpoints
        });
        let out = self
            .cp
            .kubectl_stdin(&["apply", "-f", "-"], &slice.to_string());
        assert!(out.status.success(), "EndpointSlice: {}", describe(&out));
    }
}

/// Fails the test if the shipped RBAC refused any call logged in `logs`.
pub fn assert_no_forbidden(logs: &[PathBuf]) {
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let forbidden: Vec<&str> = text
            .lines()
            // RBAC's refusal: `... is forbidden: User "system:serviceaccount:..." cannot ...`
            .filter(|l| l.contains("is forbidden: User"))
            .collect();
        assert!(
            forbidden.is_empty(),
            "the shipped RBAC refused calls ({}):\n{}",
            log.display(),
            forbidden.join("\n")
        );
    }
}

/// A LoadBalancer Service with annotations and (port, protocol) pairs.
pub fn service_json(
    ns: &str,
    name: &str,
    annotations: &[(&str, &str)],
    ports: &[(u16, &str)],
) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port, protocol)| {
            json!({
                "name": format!("p{port}-{}", protocol.to_ascii_lowercase()),
                "port": port,
                "protocol": protocol
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": ports}
    })
}

/// [`service_json`] as text for kubectl (JSON is YAML).
pub fn service_yaml(
    ns: &str,
    name: &str,
    annotations: &[(&str, &str)],
    ports: &[(u16, &str)],
) -> String {
    service_json(ns, name, annotations, ports).to_string()
}

/// An IPPool for `namespaces` (empty: all).
pub fn pool_json(name: &str, blocks: Value, namespaces: &[&str]) -> String {
    json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"blocks": blocks, "namespaces": namespaces}
    })
    .to_string()
}

/// `kubectl get ... -o json`, parsed.
pub fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cp.kubectl_ok(&all)).unwrap()
}

/// The addresses in a Service's `status.loadBalancer.ingress`.
pub fn ingress_ips(service: &Value) -> Vec<String> {
    service["status"]["loadBalancer"]["ingress"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|i| i["ip"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
