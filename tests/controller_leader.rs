//! Leader election on the Lease `vipam-controller`: one leader writes, a standby takes over
//! within the lease duration when the leader dies, and a leader that cannot renew stops at once.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{FakeApi, Fault, Verb};
use vipam::admin::Metrics;
use vipam::cache::Caches;
use vipam::controller::clock::SystemClock;
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
        Arc::new(SystemClock),
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
