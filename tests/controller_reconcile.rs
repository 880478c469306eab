//! The leader's reconcilers against the fake API, with an injected clock: Service status and
//! conditions, the ledger's lifecycle (release, sticky period, expiry, orphans), adoption when
//! migrating from other implementations, pool status, and stability across restarts.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use serde_json::{Value, json};
use support::FakeApi;
use tokio::task::JoinHandle;
use vipam::api::IPAllocation;
use vipam::cache::Caches;
use vipam::controller::clock::ManualClock;
use vipam::controller::lease::LeaderGate;
use vipam::controller::reconcile::{PassReport, Reconciler, ReconcilerConfig};
use vipam::controller::watch_services;
use vipam::core::request::RequestPolicy;

const START: i64 = 1_800_000_000;
const STICKY: i64 = 600;

fn pool(name: &str, blocks: Value) -> Value {
    json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"blocks": blocks}
    })
}

fn lan() -> Value {
    pool("lan", json!([{"start": "192.0.2.1", "stop": "192.0.2.8"}]))
}

fn service(name: &str, annotations: &[(&str, &str)]) -> Value {
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
    })
}

/// One controller "process": its caches, Service watch and reconciler, on a shared fake.
struct Replica {
    caches: Caches,
    services: Store<DeserializeGuard<Service>>,
    reconciler: Reconciler,
    watch: JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

struct Harness {
    fake: FakeApi,
    clock: ManualClock,
    replica: Replica,
}

async fn replica(fake: &FakeApi, clock: &ManualClock) -> Replica {
    let (caches, writers) = Caches::new();
    Caches::start(fake.client(), writers, &caches).await;
    let (services, _changed, watch) = watch_services(fake.client());
    let _ = services.wait_until_ready().await;
    let clock: Arc<ManualClock> = Arc::new(clock.clone());
    let reconciler = Reconciler::new(
        fake.client(),
        caches.clone(),
        services.clone(),
        ReconcilerConfig {
            policy: RequestPolicy::default(),
            sticky_release_secs: STICKY,
            identity: "test".into(),
        },
        clock.clone(),
        LeaderGate::always(clock),
    );
    Replica {
        caches,
        services,
        reconciler,
        watch,
    }
}

async fn harness(objects: Vec<Value>) -> Harness {
    let fake = FakeApi::new();
    for object in objects {
        fake.seed(object);
    }
    let clock = ManualClock::at_secs(START);
    let replica = replica(&fake, &clock).await;
    Harness {
        fake,
        clock,
        replica,
    }
}

fn rv(value: &Value) -> String {
    value["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl Harness {
    /// Waits until the replica's caches hold exactly what the fake holds (no sleeps on time).
    async fn settle(&self) {
        let caught_up = || {
            let services: BTreeMap<String, String> = self
                .fake
                .list("services", None)
                .iter()
                .map(|s| (s["metadata"]["name"].as_str().unwrap().to_string(), rv(s)))
                .collect();
            let cached: BTreeMap<String, String> = self
                .replica
                .services
                .state()
                .iter()
                .filter_map(|g| g.0.as_ref().ok())
                .map(|s| {
                    (
                        s.metadata.name.clone().unwrap(),
                        s.metadata.resource_version.clone().unwrap(),
                    )
                })
                .collect();
            let allocations: BTreeMap<String, String> = self
                .fake
                .list("ipallocations", None)
                .iter()
                .map(|a| (a["metadata"]["name"].as_str().unwrap().to_string(), rv(a)))
                .collect();
            let ledger: BTreeMap<String, String> = self
                .replica
                .caches
                .ledger
                .lock()
                .objects
                .values()
                .map(|o| {
                    (
                        o.metadata.name.clone().unwrap(),
                        o.metadata.resource_version.clone().unwrap(),
                    )
                })
                .collect();
            let pools: Vec<String> = self.fake.list("ippools", None).iter().map(rv).collect();
            let mut cached_pools: Vec<String> = self
                .replica
                .caches
                .pools
                .state()
                .iter()
                .map(|g| match &g.0 {
                    Ok(p) => p.metadata.resource_version.clone().unwrap(),
                    Err(e) => e.metadata.resource_version.clone().unwrap_or_default(),
                })
                .collect();
            cached_pools.sort();
            let mut pools = pools;
            pools.sort();
            let mut l2: Vec<String> = self
                .fake
                .list("l2announcements", None)
                .iter()
                .map(rv)
                .collect();
            l2.sort();
            let mut cached_l2: Vec<String> = self
                .replica
                .caches
                .l2announcements
                .state()
                .iter()
                .map(|g| match &g.0 {
                    Ok(l) => l.metadata.resource_version.clone().unwrap(),
                    Err(e) => e.metadata.resource_version.clone().unwrap_or_default(),
                })
                .collect();
            cached_l2.sort();
            services == cached && allocations == ledger && pools == cached_pools && l2 == cached_l2
        };
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while !caught_up() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the caches did not catch up with the fake");
    }

    async fn pass(&self) -> PassReport {
        self.settle().await;
        let report = self.replica.reconciler.pass().await;
        assert!(report.failures.is_empty(), "{report:?}");
        report
    }

    fn service(&self, name: &str) -> Service {
        self.fake.get_as(Some("default"), name).expect("service")
    }

    fn ingress(&self, name: &str) -> Vec<String> {
        self.service(name)
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .into_iter()
            .map(|i| {
                assert_eq!(i.ip_mode.as_deref(), Some("VIP"));
                i.ip.unwrap()
            })
            .collect()
    }

    fn condition(&self, name: &str, type_: &str) -> Option<(String, String, String)> {
        self.service(name)
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status, c.reason, c.message))
    }

    fn allocation(&self, name: &str) -> Option<IPAllocation> {
        self.fake.get_as(None, name)
    }

    fn events(&self, reason: &str) -> Vec<Value> {
        self.fake
            .list("events.events.k8s.io", Some("default"))
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect()
    }

    async fn delete_service(&self, name: &str) {
        let api: Api<Service> = Api::namespaced(self.fake.client(), "default");
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

fn phase(allocation: &IPAllocation) -> Option<String> {
    allocation.status.as_ref()?.phase.map(|p| format!("{p:?}"))
}

#[tokio::test]
async fn a_bypassed_service_gets_an_address_status_and_condition_then_nothing_is_rewritten() {
    let h = harness(vec![lan(), service("web", &[])]).await;
    let first = h.pass().await;
    assert!(first.writes >= 2, "{first:?}");
    assert_eq!(h.ingress("web"), vec!["192.0.2.1"]);
    let (status, reason, message) = h.condition("web", "vipam.io/Allocated").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Allocated"));
    assert_eq!(message, "192.0.2.1 from IPPool lan");
    let (status, reason, message) = h.condition("web", "vipam.io/Announced").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "NoL2Announcement")
    );
    assert!(message.contains("IPPool lan"), "{message}");
    let allocation = h.allocation("v4-192-0-2-1").expect("ledger entry");
    assert_eq!(allocation.spec.services[0].name, "web");
    assert_eq!(h.events("IPAllocated").len(), 1);
    let pool = h.fake.get("ippools", None, "lan").unwrap();
    assert_eq!(pool["status"]["capacity"], "8");
    assert_eq!(pool["status"]["allocated"], "1");
    assert_eq!(pool["status"]["available"], "7");
    // The status subresource, with the controller's own field manager.
    let status_writes: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.resource == "services" && r.verb.is_write())
        .collect();
    assert!(
        status_writes
            .iter()
            .all(|r| r.subresource.as_deref() == Some("status"))
    );
    assert!(
        status_writes
            .iter()
            .all(|r| r.uri.contains("fieldManager=vipam-controller"))
    );

    h.fake.clear_requests();
    let second = h.pass().await;
    assert_eq!(second.writes, 0, "{second:?}");
    assert!(h.fake.requests().iter().all(|r| !r.verb.is_write()));
}

#[tokio::test]
async fn a_deleted_service_releases_then_its_address_is_deleted_after_the_sticky_period() {
    let h = harness(vec![lan(), service("web", &[])]).await;
    h.pass().await;
    h.delete_service("web").await;
    h.pass().await;
    let released = h.allocation("v4-192-0-2-1").expect("kept while reserved");
    assert_eq!(phase(&released).as_deref(), Some("Released"));
    assert_eq!(
        released.status.unwrap().released_at.unwrap().0.as_second(),
        START
    );
    assert_eq!(
        released.spec.services[0].name, "web",
        "reserved for its holder"
    );
    assert_eq!(h.events("IPReleased").len(), 1);

    h.clock.advance_secs(STICKY - 1);
    h.pass().await;
    assert!(h.allocation("v4-192-0-2-1").is_some(), "still reserved");
    h.clock.advance_secs(1);
    h.pass().await;
    assert!(
        h.allocation("v4-192-0-2-1").is_none(),
        "deleted after the period"
    );
}

#[tokio::test]
async fn a_service_recreated_within_the_sticky_period_gets_its_address_back() {
    let h = harness(vec![lan(), service("web", &[])]).await;
    h.pass().await;
    h.delete_service("web").await;
    h.pass().await;
    // Someone else arrives meanwhile: the reserved address is not theirs.
    h.fake.seed(service("other", &[]));
    h.pass().await;
    assert_eq!(h.ingress("other"), vec!["192.0.2.2"]);
    h.clock.advance_secs(STICKY / 2);
    h.fake.seed(service("web", &[]));
    h.pass().await;
    assert_eq!(h.ingress("web"), vec!["192.0.2.1"]);
    let rebound = h.allocation("v4-192-0-2-1").unwrap();
    assert_eq!(phase(&rebound).as_deref(), Some("Bound"));
}

#[tokio::test]
async fn a_pin_change_moves_the_service_and_releases_the_old_address() {
    let h = harness(vec![
        lan(),
        service("web", &[("vipam.io/ips", "192.0.2.3")]),
    ])
    .await;
    h.pass().await;
    assert_eq!(h.ingress("web"), vec!["192.0.2.3"]);
    h.fake
        .seed(service("web", &[("vipam.io/ips", "192.0.2.5")]));
    h.pass().await;
    assert_eq!(h.ingress("web"), vec!["192.0.2.5"]);
    let old = h.allocation("v4-192-0-2-3").unwrap();
    assert_eq!(phase(&old).as_deref(), Some("Released"));
    let new = h.allocation("v4-192-0-2-5").unwrap();
    assert_eq!(phase(&new).as_deref(), Some("Bound"));
    // A pin that cannot be honoured keeps the old address, loudly.
    h.fake
        .seed(service("web", &[("vipam.io/ips", "198.51.100.1")]));
    h.pass().await;
    assert_eq!(h.ingress("web"), vec!["192.0.2.5"]);
    let (status, reason, message) = h.condition("web", "vipam.io/Allocated").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "KeptPrevious"));
    assert!(message.contains("198.51.100.1"), "{message}");
    assert_eq!(h.events("AllocationFailed").len(), 1);
    // Unreadable annotations keep the address too.
    h.fake.seed(service(
        "web",
        &[
            ("vipam.io/ips", "192.0.2.5"),
            ("metallb.io/loadBalancerIPs", "192.0.2.6"),
        ],
    ));
    h.pass().await;
    assert_eq!(h.ingress("web"), vec!["192.0.2.5"]);
    let (status, reason, message) = h.condition("web", "vipam.io/Allocated").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "KeptPrevious"));
    assert!(message.contains("metallb.io/loadBalancerIPs"), "{message}");
}

#[tokio::test]
async fn a_deleted_pool_orphans_its_allocations_and_zero_pools_clear_nothing() {
    let h = harness(vec![lan(), service("web", &[]), service("db", &[])]).await;
    h.pass().await;
    let before = (h.ingress("web"), h.ingress("db"));
    let api: Api<vipam::api::IPPool> = Api::all(h.fake.client());
    api.delete("lan", &DeleteParams::default()).await.unwrap();
    h.pass().await;
    assert_eq!(
        (h.ingress("web"), h.ingress("db")),
        before,
        "never renumbered or cleared"
    );
    let allocation = h.allocation("v4-192-0-2-1").unwrap();
    let orphaned = &allocation.status.unwrap().conditions;
    assert!(
        orphaned
            .iter()
            .any(|c| c.type_ == "Orphaned" && c.status == "True"),
        "{orphaned:?}"
    );
    assert_eq!(
        phase(&h.allocation("v4-192-0-2-1").unwrap()).as_deref(),
        Some("Bound")
    );
    let (status, reason, _) = h.condition("web", "vipam.io/Allocated").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Orphaned"));
    assert_eq!(h.events("Orphaned").len(), 2);
    // Time passes, passes repeat: still nothing cleared, nothing rewritten.
    h.clock.advance_secs(10 * STICKY);
    let again = h.pass().await;
    assert_eq!(again.writes, 0, "{again:?}");
    assert_eq!((h.ingress("web"), h.ingress("db")), before);
    // The pool comes back: the mark is lifted.
    h.fake.seed(lan());
    h.pass().await;
    let (_, reason, _) = h.condition("web", "vipam.io/Allocated").unwrap();
    assert_eq!(reason, "Allocated");
}

#[tokio::test]
async fn migration_adopts_status_addresses_and_compatibility_annotations() {
    let mut metallb = service("from-metallb", &[]);
    metallb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.6"}]}});
    let mut outside = service("outside", &[]);
    outside["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}});
    let h = harness(vec![
        lan(),
        metallb,
        service("from-cilium", &[("lbipam.cilium.io/ips", "192.0.2.4")]),
        service(
            "from-kube-vip",
            &[("kube-vip.io/loadbalancerIPs", "192.0.2.7")],
        ),
        outside,
    ])
    .await;
    h.pass().await;
    assert_eq!(h.ingress("from-metallb"), vec!["192.0.2.6"]);
    assert_eq!(h.ingress("from-cilium"), vec!["192.0.2.4"]);
    assert_eq!(h.ingress("from-kube-vip"), vec!["192.0.2.7"]);
    // An address outside every pool cannot be adopted: the Service gets one from its pool.
    assert_eq!(h.ingress("outside"), vec!["192.0.2.1"]);
    assert_eq!(h.fake.list("ipallocations", None).len(), 4);
}

#[tokio::test]
async fn bypassed_services_get_distinct_addresses_even_with_two_writers() {
    let mut objects = vec![lan()];
    for i in 0..8 {
        objects.push(service(&format!("s{i}"), &[]));
    }
    let h = harness(objects).await;
    // A second replica deciding at the same time (a stale leader): the API's name uniqueness
    // makes one of them lose each race and decide again.
    let other = replica(&h.fake, &h.clock).await;
    h.settle().await;
    let (a, b) = tokio::join!(h.replica.reconciler.pass(), other.reconciler.pass());
    assert!(!a.not_leader && !b.not_leader);
    h.pass().await;
    let mut ips: Vec<String> = (0..8).flat_map(|i| h.ingress(&format!("s{i}"))).collect();
    assert_eq!(ips.len(), 8);
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 8, "duplicates: {ips:?}");
    let allocations = h.fake.list("ipallocations", None);
    assert_eq!(allocations.len(), 8);
    assert!(
        allocations
            .iter()
            .all(|a| a["spec"]["services"].as_array().unwrap().len() == 1)
    );
}

#[tokio::test]
async fn a_service_that_cannot_be_served_says_why() {
    let h = harness(vec![
        lan(),
        service(
            "conflict",
            &[
                ("vipam.io/ips", "192.0.2.1"),
                ("metallb.io/loadBalancerIPs", "192.0.2.2"),
            ],
        ),
        service("nowhere", &[("vipam.io/pool", "missing")]),
    ])
    .await;
    h.pass().await;
    let (status, reason, message) = h.condition("conflict", "vipam.io/Allocated").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "conflicting_annotations")
    );
    assert!(message.contains("metallb.io/loadBalancerIPs"), "{message}");
    let (status, reason, message) = h.condition("nowhere", "vipam.io/Allocated").unwrap();
    assert_eq!(status, "False");
    assert_eq!(reason, "unknown_pool");
    assert!(message.contains("IPPool missing"), "{message}");
    assert!(h.ingress("nowhere").is_empty());
    assert_eq!(h.events("AllocationFailed").len(), 2);
    // Unchanged: no new Events, no writes.
    let again = h.pass().await;
    assert_eq!(again.writes, 0);
    assert_eq!(h.events("AllocationFailed").len(), 2);
}

#[tokio::test]
async fn pool_status_reports_conflicts_naming_both_pools_and_the_range() {
    let mut old = pool("old", json!([{"cidr": "192.0.2.0/29"}]));
    old["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
    let mut new = pool("new", json!([{"start": "192.0.2.4", "stop": "192.0.2.9"}]));
    new["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
    let h = harness(vec![old, new]).await;
    h.pass().await;
    for name in ["old", "new"] {
        let pool = h.fake.get("ippools", None, name).unwrap();
        let conflict = pool["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Conflict")
            .unwrap()
            .clone();
        assert_eq!(conflict["status"], "True", "{name}");
        let message = conflict["message"].as_str().unwrap();
        assert!(
            message.contains("IPPool new overlaps IPPool old on 192.0.2.4-192.0.2.6"),
            "{message}"
        );
        assert_eq!(pool["status"]["observedGeneration"], 1);
    }
    let new = h.fake.get("ippools", None, "new").unwrap();
    // .7 is old's broadcast address, which old does not hand out: new keeps it.
    assert_eq!(new["status"]["capacity"], "3", "192.0.2.7-9 only");
}

#[tokio::test]
async fn a_malformed_pool_in_the_api_does_not_stop_reconciliation() {
    let broken = json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": "broken"},
        "spec": {"blocks": "not a list"}
    });
    let h = harness(vec![broken, lan(), service("web", &[])]).await;
    h.pass().await;
    assert_eq!(h.ingress("web"), vec!["192.0.2.1"]);
}

#[tokio::test]
async fn twenty_restarts_interleaved_with_pool_edits_change_no_address() {
    let mut objects = vec![lan()];
    for i in 0..6 {
        objects.push(service(&format!("s{i}"), &[]));
    }
    let mut h = harness(objects).await;
    h.pass().await;
    let before: Vec<Vec<String>> = (0..6).map(|i| h.ingress(&format!("s{i}"))).collect();
    for round in 0..20 {
        let blocks = match round % 4 {
            // Shrunk below the addresses in use, reordered, moved, grown.
            0 => json!([{"start": "192.0.2.5", "stop": "192.0.2.8"}]),
            1 => json!([{"cidr": "192.0.2.0/28"}]),
            2 => json!([{"start": "203.0.113.1", "stop": "203.0.113.9"}]),
            _ => {
                json!([{"start": "192.0.2.8", "stop": "192.0.2.20"}, {"start": "192.0.2.1", "stop": "192.0.2.7"}])
            }
        };
        h.fake.seed(pool("lan", blocks));
        if round % 5 == 0 {
            h.fake
                .seed(pool("extra", json!([{"cidr": "198.51.100.0/30"}])));
        }
        // A restart: new caches, new watches, new reconciler.
        h.replica = replica(&h.fake, &h.clock).await;
        h.clock.advance_secs(STICKY);
        h.pass().await;
        let now: Vec<Vec<String>> = (0..6).map(|i| h.ingress(&format!("s{i}"))).collect();
        assert_eq!(now, before, "round {round}");
    }
}

#[tokio::test]
async fn a_service_the_webhook_admitted_gets_its_status_without_ledger_changes() {
    let allocation = json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "IPAllocation",
        "metadata": {"name": "v4-192-0-2-5"},
        "spec": {
            "ip": "192.0.2.5",
            "pool": "lan",
            "services": [{"namespace": "default", "name": "web", "ports": [{"protocol": "TCP", "port": 80}]}]
        }
    });
    let h = harness(vec![
        lan(),
        allocation,
        service("web", &[("vipam.io/assigned-ips", "192.0.2.5")]),
    ])
    .await;
    h.fake.clear_requests();
    let report = h.pass().await;
    assert_eq!(h.ingress("web"), vec!["192.0.2.5"]);
    let ledger_writes: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.resource == "ipallocations" && r.verb.is_write())
        .collect();
    // Only the phase, through the status subresource; the webhook's spec is left alone.
    assert_eq!(ledger_writes.len(), 1, "{ledger_writes:?}");
    assert_eq!(ledger_writes[0].subresource.as_deref(), Some("status"));
    assert_eq!(
        phase(&h.allocation("v4-192-0-2-5").unwrap()).as_deref(),
        Some("Bound")
    );
    // Service status, pool status, the phase.
    assert_eq!(report.writes, 3, "{report:?}");
}

#[tokio::test]
async fn a_watch_restart_clears_and_rewrites_nothing() {
    let h = harness(vec![lan(), service("web", &[]), service("db", &[])]).await;
    h.pass().await;
    let before = (h.ingress("web"), h.ingress("db"));
    let watches = h.fake.watch_count(Some("services"));
    h.fake.end_watches();
    h.fake
        .wait_for_watches("services", watches, Duration::from_secs(5))
        .await;
    h.fake
        .wait_for_watches("ipallocations", 1, Duration::from_secs(5))
        .await;
    h.fake.clear_requests();
    let report = h.pass().await;
    assert_eq!(report.writes, 0, "{report:?}");
    assert!(h.fake.requests().iter().all(|r| !r.verb.is_write()));
    assert_eq!((h.ingress("web"), h.ingress("db")), before);
}

#[tokio::test]
async fn invalid_pools_and_l2announcements_say_what_is_wrong() {
    let bad_block = pool("bad", json!([{"cidr": "192.0.2.300/24"}]));
    let l2 = |name: &str, interfaces: Value| {
        json!({
            "apiVersion": "vipam.io/v1alpha1",
            "kind": "L2Announcement",
            "metadata": {"name": name},
            "spec": {"interfaces": interfaces}
        })
    };
    let h = harness(vec![
        lan(),
        bad_block,
        l2("good", json!(["^eth[0-9]+$"])),
        l2("broken", json!(["eth(["])),
    ])
    .await;
    h.pass().await;
    let ready = |resource: &str, name: &str| {
        let object = h.fake.get(resource, None, name).unwrap();
        let condition = object["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        (
            condition["status"].as_str().unwrap().to_string(),
            condition["reason"].as_str().unwrap().to_string(),
            condition["message"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(ready("ippools", "lan").0, "True");
    let (status, reason, message) = ready("ippools", "bad");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidBlocks")
    );
    assert!(message.contains("192.0.2.300/24"), "{message}");
    assert_eq!(ready("l2announcements", "good").0, "True");
    let (status, reason, message) = ready("l2announcements", "broken");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(message.contains("eth(["), "{message}");
    let again = h.pass().await;
    assert_eq!(again.writes, 0, "{again:?}");
}

#[tokio::test]
async fn a_pool_edit_never_moves_a_service_that_names_its_pool() {
    let h = harness(vec![lan(), service("web", &[("vipam.io/pool", "lan")])]).await;
    h.pass().await;
    assert_eq!(h.ingress("web"), vec!["192.0.2.1"]);
    h.fake.seed(pool(
        "lan",
        json!([{"start": "192.0.2.5", "stop": "192.0.2.8"}]),
    ));
    h.pass().await;
    assert_eq!(h.ingress("web"), vec!["192.0.2.1"]);
    let (_, reason, _) = h.condition("web", "vipam.io/Allocated").unwrap();
    assert_eq!(reason, "Orphaned");
    assert_eq!(h.fake.list("ipallocations", None).len(), 1);
}

#[tokio::test]
async fn announcer_changes_become_events_on_the_services() {
    let h = harness(vec![lan(), service("web", &[])]).await;
    h.pass().await;
    assert!(h.events("Announced").is_empty());
    let announce = |node: &str| {
        let mut allocation = h.fake.get("ipallocations", None, "v4-192-0-2-1").unwrap();
        allocation["status"]["announcer"] =
            json!({"node": node, "interface": "eth0", "since": "2026-11-22T20:00:00Z"});
        h.fake.seed(allocation);
    };
    announce("node-a");
    h.pass().await;
    let announced = h.events("Announced");
    assert_eq!(announced.len(), 1);
    assert_eq!(
        announced[0]["note"],
        "192.0.2.1 is announced by node node-a on eth0"
    );
    assert_eq!(announced[0]["regarding"]["name"], "web");
    // Nothing new: no new Event.
    h.pass().await;
    assert_eq!(h.events("Announced").len(), 1);
    announce("node-b");
    h.pass().await;
    let moved = h.events("AnnouncementMoved");
    assert_eq!(moved.len(), 1);
    assert_eq!(
        moved[0]["note"],
        "192.0.2.1 moved from node node-a to node node-b (eth0)"
    );
}
