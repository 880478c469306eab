//! Creating LoadBalancer Services through a real kube-apiserver (tests/kubecp), side by side in
//! one run:
//!
//! - `no webhook`: the API server alone (vipam's MutatingWebhookConfiguration removed);
//! - `fixed answer`: a minimal axum + rustls webhook that answers every review "allowed",
//!   reached exactly as vipam is (a Service, its EndpointSlice, TLS with a caBundle);
//! - `fixed answer + one API write`: the same webhook creating one small object (a ConfigMap)
//!   through the API server before it answers: the floor for any webhook that must record its
//!   decision before answering, as vipam's ledger does;
//! - `vipam`: the shipped configuration, two `vipam controller` replicas (each admission
//!   decides an address and records its IPAllocation before it answers).
//!
//! `sudo cargo bench --bench admission_real` (root: the control plane runs in a network
//! namespace). Each row creates IPv6 single-stack Services from a kube client on the host
//! (through the same forwarder for every row) at concurrency 1 and 16, in a fresh namespace
//! that is deleted, and waited for, before the next row. Rows run three times, interleaved;
//! the table gives medians of the three.

#[path = "../tests/kubecp/mod.rs"]
mod kubecp;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use axum_server::tls_rustls::RustlsConfig;
use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Api;
use kube::api::PostParams;
use kubecp::vipam::{Installation, describe};
use kubecp::{ControlPlane, WEBHOOK_ADDRESSES};
use serde_json::{Value, json};

const FIXED_PORT: u16 = 9444;
const ROUNDS: usize = 3;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Scenario {
    NoWebhook,
    Fixed,
    FixedWrite,
    Vipam,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Scenario::NoWebhook => "no webhook",
            Scenario::Fixed => "fixed answer (same TLS path)",
            Scenario::FixedWrite => "fixed answer + one API write",
            Scenario::Vipam => "vipam (2 replicas)",
        }
    }
}

struct Row {
    creates: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

/// The fixed-answer webhook: allowed, the request's uid echoed, nothing else.
async fn fixed_answer(body: axum::body::Bytes) -> axum::response::Response {
    answer(&body)
}

/// The fixed answer after one create through the API server.
async fn fixed_answer_after_write(
    axum::extract::State(api): axum::extract::State<Api<ConfigMap>>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    let record: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": format!("record-{i:06}")},
        "data": {"ip": format!("2001:db8:7::{i:x}"), "pool": "bench",
                 "service": format!("bench/svc-{i:04}"), "ports": "TCP/443"}
    }))
    .unwrap();
    if let Err(err) = api.create(&PostParams::default(), &record).await {
        panic!("the floor's write failed: {err}");
    }
    answer(&body)
}

fn answer(body: &[u8]) -> axum::response::Response {
    let review: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let uid = review["request"]["uid"].clone();
    let answer = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true}
    });
    axum::response::IntoResponse::into_response((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&answer).unwrap(),
    ))
}

/// Starts the fixed-answer webhook inside the control plane's namespace and returns the PEM
/// of its (self-signed) certificate, the caBundle.
fn start_fixed_webhook(cp: &ControlPlane) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["vipam-bench-fixed.vipam-system.svc".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let pem = cert_pem.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let kubeconfig = cp.kubeconfig_in_ns.clone();
    cp.thread_in_ns(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let tls = RustlsConfig::from_pem(cert_pem.into_bytes(), key_pem.into_bytes())
                .await
                .unwrap();
            let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .unwrap();
            let client = kube::Client::try_from(config).unwrap();
            let records: Api<ConfigMap> = Api::namespaced(client, "vipam-bench-floor");
            let router = Router::new()
                .route("/mutate", post(fixed_answer))
                .route("/mutate-write", post(fixed_answer_after_write))
                .with_state(records);
            let addr = format!("{}:{FIXED_PORT}", WEBHOOK_ADDRESSES[0]);
            let server =
                axum_server::bind_rustls(addr.parse::<std::net::SocketAddr>().unwrap(), tls);
            ready_tx.send(()).unwrap();
            server.serve(router.into_make_service()).await.unwrap();
        });
    });
    ready_rx.recv().unwrap();
    pem
}

fn apply(cp: &ControlPlane, object: &Value) {
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &object.to_string());
    assert!(out.status.success(), "{}", describe(&out));
}

/// The fixed webhook's Service, EndpointSlice and configuration (as vipam's, other names);
/// `path` picks the plain fixed answer or the one after a write.
fn fixed_objects(ca_pem: &str, path: &str) -> (Value, Value) {
    let service = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "vipam-bench-fixed", "namespace": "vipam-system"},
         "spec": {"ports": [{"name": "webhook", "port": 443, "targetPort": FIXED_PORT}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "vipam-bench-fixed", "namespace": "vipam-system",
                      "labels": {"kubernetes.io/service-name": "vipam-bench-fixed",
                                 "endpointslice.kubernetes.io/managed-by": "vipam-tests"}},
         "addressType": "IPv4",
         "ports": [{"name": "webhook", "port": FIXED_PORT, "protocol": "TCP"}],
         "endpoints": [{"addresses": [WEBHOOK_ADDRESSES[0]], "conditions": {"ready": true}}]}
    ]});
    let config = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "vipam-bench-fixed"},
        "webhooks": [{
            "name": "fixed.bench.vipam.io",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "service": {"name": "vipam-bench-fixed", "namespace": "vipam-system",
                            "path": path, "port": 443},
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem)
            },
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["services"],
                       "scope": "Namespaced"}],
            "matchConditions": [{"name": "type-loadbalancer",
                "expression": "has(object.spec.type) && object.spec.type == 'LoadBalancer'"}],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 5
        }]
    });
    (service, config)
}

/// Makes `scenario`'s webhook the only one on Services.
fn switch_to(cp: &ControlPlane, vipam: &Installation, scenario: Scenario, fixed: &[Value; 2]) {
    let delete = |name: &str| {
        let _ = cp.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration",
            name,
            "--ignore-not-found",
        ]);
    };
    match scenario {
        Scenario::NoWebhook => {
            delete("vipam");
            delete("vipam-bench-fixed");
        }
        Scenario::Fixed | Scenario::FixedWrite => {
            delete("vipam");
            delete("vipam-bench-fixed");
            apply(cp, &fixed[usize::from(scenario == Scenario::FixedWrite)]);
        }
        Scenario::Vipam => {
            delete("vipam-bench-fixed");
            let install = kubecp::repo().join("manifests/install.yaml");
            cp.kubectl_ok(&["apply", "--server-side", "-f", install.to_str().unwrap()]);
            vipam.wait_webhook_answers();
        }
    }
    // Let the API server's configuration informers settle.
    std::thread::sleep(Duration::from_secs(2));
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i:04}")},
        "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
                 "allocateLoadBalancerNodePorts": false,
                 "selector": {"app": format!("svc-{i}")},
                 "ports": [{"port": 443, "protocol": "TCP"}]}
    }))
    .unwrap()
}

async fn load(api: Api<Service>, concurrency: usize, creates: usize) -> Row {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (api, next) = (api.clone(), next.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= creates {
                        return latencies;
                    }
                    let at = Instant::now();
                    api.create(&PostParams::default(), &service(i))
                        .await
                        .unwrap_or_else(|e| panic!("create svc-{i}: {e}"));
                    latencies.push(at.elapsed());
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    all.sort();
    Row {
        creates: all.len(),
        elapsed,
        p50: all[all.len() / 2],
        p99: all[(all.len() * 99 / 100).min(all.len() - 1)],
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = kubecp::shared();
    let vipam = Installation::install(cp, &WEBHOOK_ADDRESSES, &[]);
    let pool = json!({"apiVersion": "vipam.io/v1alpha1", "kind": "IPPool",
        "metadata": {"name": "bench"}, "spec": {"blocks": [{"cidr": "2001:db8:6::/112"}]}});
    apply(cp, &pool);
    let ca = start_fixed_webhook(cp);
    let (fixed_service, fixed_config) = fixed_objects(&ca, "/mutate");
    let (_, write_config) = fixed_objects(&ca, "/mutate-write");
    let fixed = [fixed_config, write_config];
    apply(cp, &fixed_service);
    cp.kubectl_ok(&["create", "namespace", "vipam-bench-floor"]);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(cp.client());
    let scenarios = [
        Scenario::NoWebhook,
        Scenario::Fixed,
        Scenario::FixedWrite,
        Scenario::Vipam,
    ];
    let loads = [(1, 150), (16, 480)];
    let mut results: Vec<(Scenario, usize, Row)> = Vec::new();
    for round in 0..ROUNDS {
        for &(concurrency, creates) in &loads {
            for &scenario in &scenarios {
                switch_to(cp, &vipam, scenario, &fixed);
                let ns = format!("bench-{round}-{concurrency}-{scenario:?}").to_lowercase();
                cp.kubectl_ok(&["create", "namespace", &ns]);
                let api: Api<Service> = Api::namespaced(client.clone(), &ns);
                let row = runtime.block_on(load(api, concurrency, creates));
                eprintln!(
                    "round {round}, {}, concurrency {concurrency}: p50 {:?} p99 {:?}, {:.0}/s",
                    scenario.label(),
                    row.p50,
                    row.p99,
                    row.creates as f64 / row.elapsed.as_secs_f64()
                );
                results.push((scenario, concurrency, row));
                cp.kubectl_ok(&["delete", "namespace", &ns, "--wait=true", "--timeout=300s"]);
                // vipam's reconcilers release the deleted Services' addresses before the next
                // row starts.
                std::thread::sleep(Duration::from_secs(3));
            }
        }
    }
    vipam.assert_no_forbidden();

    println!("| webhook | concurrency | creates per round | p50 ms | p99 ms | creates/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut p99 = std::collections::BTreeMap::new();
    for &(concurrency, creates) in &loads {
        for &scenario in &scenarios {
            let rows: Vec<&Row> = results
                .iter()
                .filter(|(s, c, _)| *s == scenario && *c == concurrency)
                .map(|(_, _, r)| r)
                .collect();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let p50 = median(rows.iter().map(|r| ms(r.p50)).collect());
            let p99_ms = median(rows.iter().map(|r| ms(r.p99)).collect());
            let rate = median(
                rows.iter()
                    .map(|r| r.creates as f64 / r.elapsed.as_secs_f64())
                    .collect(),
            );
            p99.insert((concurrency, scenario.label()), p99_ms);
            println!(
                "| {} | {concurrency} | {creates} | {p50:.2} | {p99_ms:.2} | {rate:.0} |",
                scenario.label()
            );
        }
    }
    println!();
    for &(concurrency, _) in &loads {
        let vipam_p99 = p99[&(concurrency, Scenario::Vipam.label())];
        let fixed_p99 = p99[&(concurrency, Scenario::Fixed.label())];
        println!(
            "concurrency {concurrency}: vipam p99 / fixed-answer p99 = {:.2} (goal <= 1.3); \
             vipam p99 / (fixed answer + one API write) p99 = {:.2}",
            vipam_p99 / fixed_p99,
            vipam_p99 / p99[&(concurrency, Scenario::FixedWrite.label())]
        );
    }
}
