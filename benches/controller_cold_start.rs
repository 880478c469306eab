//! Controller cold start against 5,000 already-allocated Services, on the in-process fake API.
//!
//! `cargo bench --bench controller_cold_start`: a fresh controller replica is started against a
//! cluster in a given state, two ways, side by side:
//! - `pass`: caches, Service watch and one inline pass over everything as leader
//!   (`Reconciler::pass`, what the tests use); steady state when a second pass writes nothing;
//! - `controller`: the running controller (`Reconcilers::spawn`: leader election, the Service
//!   and IPAllocation controllers reconciling each object on its own, the global pass); steady
//!   state when every Service and every IPAllocation was reconciled and no write came for
//!   300 ms (not counted in the time).
//!
//! The table shows the time to steady state and the API writes (Events and the leader Lease
//! excluded). Goal: zero writes when everything is correct, only changed objects written
//! otherwise.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::FakeApi;
use vipam::admin::Metrics;
use vipam::cache::Caches;
use vipam::controller::clock::SystemClock;
use vipam::controller::lease::{LEASE_NAME, LeaderGate, LeaseConfig};
use vipam::controller::reconcile::{Reconciler, ReconcilerConfig};
use vipam::controller::{LeaderSettings, Reconcilers, watch_services};
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
    how: &'static str,
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
        config(),
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
        how: "pass",
        state,
        elapsed,
        writes,
        second_pass_writes: second.writes,
    }
}

fn config() -> ReconcilerConfig {
    ReconcilerConfig {
        policy: RequestPolicy::default(),
        sticky_release_secs: 600,
        identity: "bench".into(),
    }
}

/// Writes so far, Events and the leader Lease excluded.
fn writes(fake: &FakeApi) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.verb.is_write() && r.resource != "events" && r.resource != "leases")
        .count()
}

/// A number of its own for each run.
fn state_id() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Reconciliations of `kind` so far (any result).
fn reconciles(metrics: &Metrics, kind: &str) -> u64 {
    let text = metrics.encode();
    let prefix = format!("vipam_controller_reconciles_total{{kind=\"{kind}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Starts the running controller on `fake`; returns when every Service was reconciled once
/// and no write came for 300 ms.
async fn cold_start_controller(fake: &FakeApi, state: &'static str) -> Row {
    const QUIET: Duration = Duration::from_millis(300);
    fake.clear_requests();
    let started = Instant::now();
    let (caches, writers) = Caches::new();
    Caches::start(fake.client(), writers, &caches).await;
    let metrics = Arc::new(Metrics::new());
    let running = Reconcilers::spawn(
        fake.client(),
        caches,
        LeaderSettings {
            lease: LeaseConfig {
                namespace: "vipam-system".into(),
                // A Lease of its own: the previous row's replica did not release its Lease.
                name: format!("{LEASE_NAME}-{}", state_id()),
                identity: "bench".into(),
                lease_duration: Duration::from_secs(15),
                renew_period: Duration::from_secs(5),
            },
            reconciler: config(),
            resync_interval: Duration::from_secs(300),
        },
        Arc::new(SystemClock),
        metrics.clone(),
    );
    let (mut last_writes, mut last_change) = (writes(fake), started);
    let mut all_reconciled = None;
    let steady = loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = writes(fake);
        if now != last_writes {
            (last_writes, last_change) = (now, Instant::now());
        }
        if all_reconciled.is_none()
            && reconciles(&metrics, "Service") >= SERVICES as u64
            && reconciles(&metrics, "IPAllocation") >= SERVICES as u64
        {
            all_reconciled = Some(Instant::now());
        }
        if let Some(done) = all_reconciled
            && last_change.elapsed() >= QUIET
        {
            break done.max(last_change);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no steady state"
        );
    };
    // Every Service and the global pass once more: nothing may be written.
    let before = writes(fake);
    running.reconciler.pass().await;
    let second = writes(fake) - before;
    drop(running);
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for r in fake
        .requests()
        .iter()
        .filter(|r| r.verb.is_write() && r.resource != "events" && r.resource != "leases")
    {
        *kinds
            .entry(format!("{:?} {} {:?}", r.verb, r.resource, r.subresource))
            .or_default() += 1;
    }
    eprintln!("controller, {state}: writes by kind {kinds:?}");
    for line in metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("vipam_controller_reconciles_total"))
    {
        eprintln!("  {line}");
    }
    Row {
        how: "controller",
        state,
        elapsed: steady.duration_since(started),
        writes: last_writes,
        second_pass_writes: second,
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
    // The same five states for each way, side by side, each on a fresh cluster.
    for controller in [false, true] {
        let run = |fake: FakeApi, state: &'static str| async move {
            let row = if controller {
                cold_start_controller(&fake, state).await
            } else {
                cold_start(&fake, state).await
            };
            (row, fake)
        };
        let (row, admitted) = run(cluster(true), "admitted by the webhook, no status yet").await;
        rows.push(row);
        let (row, admitted) = run(admitted, "everything already correct (restart)").await;
        rows.push(row);
        strip_status(&admitted, 50);
        let (row, _) = run(admitted, "50 Services lost their status").await;
        rows.push(row);
        let (row, bypassed) = run(cluster(false), "webhook bypassed: nothing allocated").await;
        rows.push(row);
        let (row, _) = run(bypassed, "everything already correct (restart)").await;
        rows.push(row);
    }

    println!("controller cold start, {SERVICES} LoadBalancer Services, in-process fake API");
    println!();
    println!(
        "| how | cluster state | time to steady state | API writes | writes in the next pass |"
    );
    println!("| --- | --- | ---: | ---: | ---: |");
    for row in rows {
        println!(
            "| {} | {} | {:.0} ms | {} | {} |",
            row.how,
            row.state,
            row.elapsed.as_secs_f64() * 1000.0,
            row.writes,
            row.second_pass_writes
        );
    }
}
