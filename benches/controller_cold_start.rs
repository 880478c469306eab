//! Controller cold start against 5,000 already-allocated Services, on the in-process fake API.
//!
//! `cargo bench --bench controller_cold_start`: a fresh controller replica (caches, Service
//! watch, one reconcile pass as leader) is started against a cluster in a given state; the table
//! shows the time until the first pass finished (steady state: a second pass writes nothing) and
//! the API writes it made (Events excluded). Goal: zero writes when everything is correct, and
//! only changed objects written otherwise.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::FakeApi;
use vipam::cache::Caches;
use vipam::controller::clock::SystemClock;
use vipam::controller::lease::LeaderGate;
use vipam::controller::reconcile::{Reconciler, ReconcilerConfig};
use vipam::controller::watch_services;
use vipam::core::request::RequestPolicy;

const SERVICES: usize = 5_000;

fn ip(i: usize) -> String {
    format!("10.0.{}.{}", i / 250, i % 250 + 1)
}

fn service(i: usize, assigned: bool) -> Value {
    let mut annotations = serde_json::Map::new();
    if assigned {
        annotations.insert("vipam.io/assigned-ips".into(), json!(ip(i)));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "default", "annotations": annotations},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    })
}

fn allocation(i: usize) -> Value {
    json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "IPAllocation",
        "metadata": {"name": format!("v4-{}", ip(i).replace('.', "-"))},
        "spec": {
            "ip": ip(i),
            "pool": "lan",
            "services": [{"namespace": "default", "name": format!("svc-{i}"), "ports": [{"protocol": "TCP", "port": 80}]}]
        }
    })
}

fn cluster(allocated: bool) -> FakeApi {
    let fake = FakeApi::new();
    fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "lan"},
        "spec": {"blocks": [{"cidr": "10.0.0.0/16"}]}
    }));
    fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "L2Announcement",
        "metadata": {"name": "lan"},
        "spec": {}
    }));
    for i in 0..SERVICES {
        if allocated {
            fake.seed(allocation(i));
        }
        fake.seed(service(i, allocated));
    }
    fake
}

struct Row {
    state: &'static str,
    elapsed: Duration,
    writes: usize,
    second_pass_writes: usize,
}

/// Starts a replica on `fake`, runs passes until one writes nothing; returns the first pass.
async fn cold_start(fake: &FakeApi, state: &'static str) -> Row {
    fake.clear_requests();
    let started = Instant::now();
    let (caches, writers) = Caches::new();
    Caches::start(fake.client(), writers, &caches).await;
    let (services, _changed, watch) = watch_services(fake.client());
    let _ = services.wait_until_ready().await;
    let clock = Arc::new(SystemClock);
    let reconciler = Reconciler::new(
        fake.client(),
        caches,
        services,
        ReconcilerConfig {
            policy: RequestPolicy::default(),
            sticky_release_secs: 600,
            identity: "bench".into(),
        },
        clock.clone(),
        LeaderGate::always(clock),
    );
    let first = reconciler.pass().await;
    let elapsed = started.elapsed();
    assert!(first.failures.is_empty(), "{first:?}");
    let writes = fake
        .requests()
        .iter()
        .filter(|r| r.verb.is_write() && r.resource != "events")
        .count();
    assert_eq!(writes, first.writes);
    let second = reconciler.pass().await;
    watch.abort();
    Row {
        state,
        elapsed,
        writes,
        second_pass_writes: second.writes,
    }
}

fn strip_status(fake: &FakeApi, count: usize) {
    for i in 0..count {
        let mut service = fake
            .get(
                "services",
                Some("default"),
                &format!("svc-{}", i * (SERVICES / count)),
            )
            .unwrap();
        service.as_object_mut().unwrap().remove("status");
        fake.seed(service);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut rows = Vec::new();
    let admitted = cluster(true);
    rows.push(cold_start(&admitted, "admitted by the webhook, no status yet").await);
    rows.push(cold_start(&admitted, "everything already correct (restart)").await);
    strip_status(&admitted, 50);
    rows.push(cold_start(&admitted, "50 Services lost their status").await);
    let bypassed = cluster(false);
    rows.push(cold_start(&bypassed, "webhook bypassed: nothing allocated").await);
    rows.push(cold_start(&bypassed, "everything already correct (restart)").await);

    println!("controller cold start, {SERVICES} LoadBalancer Services, in-process fake API");
    println!();
    println!("| cluster state | time to steady state | API writes | writes in the next pass |");
    println!("| --- | ---: | ---: | ---: |");
    for row in rows {
        println!(
            "| {} | {:.0} ms | {} | {} |",
            row.state,
            row.elapsed.as_secs_f64() * 1000.0,
            row.writes,
            row.second_pass_writes
        );
    }
}
