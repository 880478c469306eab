//! Leader election on the Lease `vipam-controller`: one leader writes, a standby takes over
//! within the lease duration when the leader dies, and a leader that cannot renew stops at once.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{FakeApi, Fault, Verb};
use vipam::admin::Metrics;
use vipam::cache::Caches;
use vipam::controller::clock::{Clock, SharedClock, SystemClock};
use vipam::controller::lease::{LEASE_NAME, LeaseConfig};
use vipam::controller::reconcile::ReconcilerConfig;
use vipam::controller::{LeaderSettings, Reconcilers};
use vipam::core::request::RequestPolicy;

const LEASE: Duration = Duration::from_secs(1);
const RENEW: Duration = Duration::from_millis(100);

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    })
}

async fn start(fake: &FakeApi, identity: &str) -> Reconcilers {
    start_with(fake, identity, Arc::new(Metrics::new())).await
}

async fn start_with(fake: &FakeApi, identity: &str, metrics: Arc<Metrics>) -> Reconcilers {
    start_clocked(fake, identity, metrics, Arc::new(SystemClock)).await
}

/// The system clock, off by a fixed amount (a node whose clock is wrong).
struct SkewedClock(i64);

impl Clock for SkewedClock {
    fn now_millis(&self) -> i64 {
        SystemClock.now_millis() + self.0
    }
}

async fn start_clocked(
    fake: &FakeApi,
    identity: &str,
    metrics: Arc<Metrics>,
    clock: SharedClock,
) -> Reconcilers {
    let (caches, writers) = Caches::new();
    Caches::start(fake.client(), writers, &caches).await;
    Reconcilers::spawn(
        fake.client(),
        caches,
        LeaderSettings {
            lease: LeaseConfig {
                namespace: "vipam-system".into(),
                name: LEASE_NAME.into(),
                identity: identity.into(),
                lease_duration: LEASE,
                renew_period: RENEW,
            },
            reconciler: ReconcilerConfig {
                policy: RequestPolicy::default(),
                sticky_release_secs: 600,
                identity: identity.into(),
            },
            resync_interval: Duration::from_secs(30),
        },
        clock,
        metrics,
    )
}

fn fake_with_pool() -> FakeApi {
    let fake = FakeApi::new();
    fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "lan"},
        "spec": {"blocks": [{"cidr": "192.0.2.0/28"}]}
    }));
    fake
}

fn holder(fake: &FakeApi) -> Option<String> {
    fake.get(
        "leases.coordination.k8s.io",
        Some("vipam-system"),
        LEASE_NAME,
    )?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_string)
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(timeout, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what} did not happen within {timeout:?}");
}

fn has_ingress(value: &Value) -> bool {
    value["status"]["loadBalancer"]["ingress"][0]["ip"].is_string()
}

#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over_within_the_lease_duration() {
    let fake = fake_with_pool();
    let a = start(&fake, "a").await;
    let b = start(&fake, "b").await;
    wait_for("a leader", Duration::from_secs(5), || {
        a.gate.is_leader() || b.gate.is_leader()
    })
    .await;
    assert!(
        !(a.gate.is_leader() && b.gate.is_leader()),
        "two leaders at once"
    );
    let (leader, standby, standby_name) = if a.gate.is_leader() {
        (a, b, "b")
    } else {
        (b, a, "a")
    };
    let leader_name = holder(&fake).expect("lease written");
    assert_ne!(leader_name, standby_name);

    fake.seed(service("web"));
    fake.wait_for_object(
        "services",
        Some("default"),
        "web",
        Duration::from_secs(5),
        has_ingress,
    )
    .await;
    // The Events say who wrote: the leader only.
    let events = fake.list("events.events.k8s.io", Some("default"));
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e["reportingInstance"] == leader_name.as_str()),
        "{events:#?}"
    );
    assert!(!standby.gate.is_leader());
    // A standby's pass writes nothing.
    let report = standby.reconciler.pass().await;
    assert!(report.not_leader);

    // The leader dies (no clean release): the standby takes over once the lease runs out.
    let killed = Instant::now();
    drop(leader);
    wait_for("the takeover", LEASE + Duration::from_secs(2), || {
        standby.gate.is_leader()
    })
    .await;
    let took = killed.elapsed();
    // At most one lease duration after the last renewal (itself at most one renew period before
    // the kill), plus scheduling slack.
    assert!(
        took <= LEASE + RENEW + Duration::from_millis(700),
        "takeover took {took:?}"
    );
    assert_eq!(holder(&fake).as_deref(), Some(standby_name));
    fake.seed(service("api"));
    fake.wait_for_object(
        "services",
        Some("default"),
        "api",
        Duration::from_secs(5),
        has_ingress,
    )
    .await;
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_writing_at_once() {
    let fake = fake_with_pool();
    let only = start(&fake, "only").await;
    wait_for("leadership", Duration::from_secs(5), || {
        only.gate.is_leader()
    })
    .await;
    fake.inject(
        Fault::fail(500)
            .verb(Verb::Update)
            .resource("leases")
            .always(),
    );
    let failing = Instant::now();
    wait_for("stepping down", Duration::from_secs(5), || {
        !only.gate.is_leader()
    })
    .await;
    // One failed renewal is enough: well before the lease would have run out.
    assert!(failing.elapsed() < LEASE, "{:?}", failing.elapsed());
    fake.clear_requests();
    fake.seed(service("web"));
    let report = only.reconciler.pass().await;
    assert!(report.not_leader);
    assert!(
        fake.requests()
            .iter()
            .all(|r| !(r.verb.is_write() && r.resource != "leases")),
        "a replica that is not leading wrote"
    );
    // Renewal works again: it leads and catches up.
    fake.clear_faults();
    fake.wait_for_object(
        "services",
        Some("default"),
        "web",
        Duration::from_secs(5),
        has_ingress,
    )
    .await;
}

/// Standbys whose clocks are an hour ahead of and behind the leader's neither take over while
/// the leader renews (the renewTime it writes looks an hour old to one of them) nor wait an
/// hour once it died (it looks an hour in the future to the other): expiry is judged by each
/// replica's own clock since it saw the lease change.
#[tokio::test]
async fn clock_skew_neither_steals_a_live_lease_nor_delays_a_takeover() {
    const HOUR: i64 = 3_600_000;
    let fake = fake_with_pool();
    let leader = start(&fake, "leader").await;
    wait_for("the leader", Duration::from_secs(5), || {
        leader.gate.is_leader()
    })
    .await;
    let metrics = || Arc::new(Metrics::new());
    let ahead = start_clocked(&fake, "ahead", metrics(), Arc::new(SkewedClock(HOUR))).await;
    let behind = start_clocked(&fake, "behind", metrics(), Arc::new(SkewedClock(-HOUR))).await;

    let until = Instant::now() + 4 * LEASE;
    while Instant::now() < until {
        assert!(
            !ahead.gate.is_leader() && !behind.gate.is_leader(),
            "a standby with a skewed clock took over from a live leader"
        );
        assert_eq!(holder(&fake).as_deref(), Some("leader"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let killed = Instant::now();
    drop(leader);
    wait_for("the takeover", LEASE + Duration::from_secs(2), || {
        ahead.gate.is_leader() || behind.gate.is_leader()
    })
    .await;
    assert!(
        !(ahead.gate.is_leader() && behind.gate.is_leader()),
        "two leaders at once"
    );
    let new = holder(&fake).expect("the lease");
    assert!(new == "ahead" || new == "behind", "holder {new}");
    eprintln!("takeover by {new} after {:?}", killed.elapsed());
}

/// PATCHes of the status of `resource` `name` so far.
fn status_writes(fake: &FakeApi, resource: &str, name: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| {
            r.verb == Verb::Patch
                && r.resource == resource
                && r.subresource.as_deref() == Some("status")
                && r.name.as_deref() == Some(name)
        })
        .count()
}

#[tokio::test]
async fn a_service_whose_status_write_fails_is_retried_alone_with_a_growing_backoff() {
    let fake = fake_with_pool();
    let metrics = Arc::new(Metrics::new());
    let only = start_with(&fake, "only", metrics.clone()).await;
    wait_for("leadership", Duration::from_secs(5), || {
        only.gate.is_leader()
    })
    .await;
    fake.inject(
        Fault::fail(500)
            .verb(Verb::Patch)
            .resource("services")
            .name("broken")
            .always(),
    );
    fake.seed(service("broken"));
    // The failing Service is queued first; the other is served at once all the same.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    fake.seed(service("fine"));
    fake.wait_for_object(
        "services",
        Some("default"),
        "fine",
        Duration::from_secs(3),
        has_ingress,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the healthy Service waited {:?} behind the failing one",
        started.elapsed()
    );
    // Retries of the failing one back off (1 s, 2 s, 4 s ...). In 10 s after its first attempt
    // a retry every second would make 10 attempts; the backoff makes 4 or 5 (its IPAllocation's
    // creation triggers one at once, then 2 s, 4 s and 8 s apart, from the second failure on).
    wait_for("the first attempt", Duration::from_secs(3), || {
        status_writes(&fake, "services", "broken") >= 1
    })
    .await;
    let first = Instant::now();
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(first.elapsed())).await;
    let attempts = status_writes(&fake, "services", "broken");
    assert!(
        (3..=5).contains(&attempts),
        "{attempts} status writes of the failing Service in 10 s"
    );
    let text = metrics.encode();
    assert!(
        text.contains(r#"vipam_controller_reconciles_total{kind="Service",result="api_error"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"vipam_controller_reconciles_total{kind="Service",result="ok"}"#),
        "{text}"
    );
    // Once the API accepts it again, the next retry succeeds.
    fake.clear_faults();
    fake.wait_for_object(
        "services",
        Some("default"),
        "broken",
        Duration::from_secs(10),
        has_ingress,
    )
    .await;
}

fn allocation(ip: &str, service: &str) -> Value {
    json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "IPAllocation",
        "metadata": {"name": format!("v4-{}", ip.replace('.', "-"))},
        "spec": {
            "ip": ip,
            "pool": "lan",
            "services": [{"namespace": "default", "name": service,
                          "ports": [{"protocol": "TCP", "port": 80}]}]
        }
    })
}

#[tokio::test]
async fn an_allocation_whose_status_write_fails_is_retried_alone_with_a_growing_backoff() {
    let fake = fake_with_pool();
    // Admitted by the webhook: allocations without status, Services holding them.
    for (ip, name) in [("192.0.2.5", "broken"), ("192.0.2.6", "fine")] {
        fake.seed(allocation(ip, name));
        let mut svc = service(name);
        svc["metadata"]["annotations"] = json!({"vipam.io/assigned-ips": ip});
        fake.seed(svc);
    }
    fake.inject(
        Fault::fail(500)
            .verb(Verb::Patch)
            .resource("ipallocations")
            .name("v4-192-0-2-5")
            .always(),
    );
    let metrics = Arc::new(Metrics::new());
    let only = start_with(&fake, "only", metrics.clone()).await;
    wait_for("leadership", Duration::from_secs(5), || {
        only.gate.is_leader()
    })
    .await;
    fake.wait_for_object(
        "ipallocations.vipam.io",
        None,
        "v4-192-0-2-6",
        Duration::from_secs(5),
        |a| a["status"]["phase"] == "Bound",
    )
    .await;
    wait_for("the first attempt", Duration::from_secs(3), || {
        status_writes(&fake, "ipallocations", "v4-192-0-2-5") >= 1
    })
    .await;
    let first = Instant::now();
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(first.elapsed())).await;
    // 1 s, 2 s, 4 s apart: attempts at 0, 1, 3 and 7 s; a retry every second would make 10.
    let attempts = status_writes(&fake, "ipallocations", "v4-192-0-2-5");
    assert!(
        (3..=5).contains(&attempts),
        "{attempts} status writes of the failing IPAllocation in 10 s"
    );
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"vipam_controller_reconciles_total{kind="IPAllocation",result="api_error"}"#
        ),
        "{text}"
    );
    fake.clear_faults();
    fake.wait_for_object(
        "ipallocations.vipam.io",
        None,
        "v4-192-0-2-5",
        Duration::from_secs(10),
        |a| a["status"]["phase"] == "Bound",
    )
    .await;
}
