//! The admission webhooks, driven through the axum router with AdmissionReview fixtures shaped as
//! the API server sends them (tests/data/admission/), against the fake API.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use serde_json::{Value, json};
use support::{FakeApi, Fault, Verb};
use tower::ServiceExt;
use vipam::admin::Metrics;
use vipam::cache::Caches;
use vipam::core::request::RequestPolicy;
use vipam::webhook::{self, WebhookState, ledger::LedgerView};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/data/admission/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn pool(name: &str, blocks: Value) -> Value {
    json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"blocks": blocks}
    })
}

fn lan() -> Value {
    pool(
        "lan",
        json!([{"start": "192.0.2.1", "stop": "192.0.2.4"}, {"cidr": "2001:db8::/126"}]),
    )
}

struct Harness {
    fake: FakeApi,
    router: Router,
}

async fn harness_on(fake: FakeApi) -> (Harness, Arc<WebhookState>) {
    let (caches, writers) = Caches::new();
    Caches::start(fake.client(), writers, &caches).await;
    let state = Arc::new(WebhookState {
        policy: RequestPolicy::default(),
        sticky_release_secs: 600,
        ledger: LedgerView::new(fake.client(), caches),
        metrics: Arc::new(Metrics::new()),
    });
    (
        Harness {
            fake,
            router: webhook::router(state.clone()),
        },
        state,
    )
}

async fn harness(pools: Vec<Value>) -> Harness {
    let fake = FakeApi::new();
    for p in pools {
        fake.seed(p);
    }
    fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1",
        "kind": "L2Announcement",
        "metadata": {"name": "lan"},
        "spec": {"ipPools": ["lan"]}
    }));
    harness_on(fake).await.0
}

/// A decoded answer.
#[derive(Debug)]
struct Answer {
    allowed: bool,
    message: String,
    reason: String,
    /// The decoded JSON patch, if any.
    patch: Option<Value>,
    raw_patch: Option<String>,
    warnings: Vec<String>,
}

impl Answer {
    /// The `vipam.io/assigned-ips` value the patch sets.
    fn assigned(&self) -> Option<String> {
        let op = &self.patch.as_ref()?[0];
        assert_eq!(op["op"], "add");
        match op["path"].as_str()? {
            "/metadata/annotations/vipam.io~1assigned-ips" => Some(op["value"].as_str()?.into()),
            "/metadata/annotations" => Some(op["value"]["vipam.io/assigned-ips"].as_str()?.into()),
            other => panic!("unexpected patch path {other}"),
        }
    }
}

impl Harness {
    async fn post(&self, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let response = self
            .router
            .clone()
            .oneshot(
                Request::post(path)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    async fn review(&self, path: &str, review: &Value) -> Answer {
        let (status, body) = self.post(path, serde_json::to_vec(review).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        decode(&body, review)
    }

    async fn service(&self, review: &Value) -> Answer {
        self.review("/mutate/service", review).await
    }

    fn allocations(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = self
            .fake
            .list("ipallocations", None)
            .iter()
            .map(|a| {
                let services = a["spec"]["services"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        format!(
                            "{}/{}",
                            s["namespace"].as_str().unwrap(),
                            s["name"].as_str().unwrap()
                        )
                    })
                    .collect();
                (a["spec"]["ip"].as_str().unwrap().to_string(), services)
            })
            .collect();
        out.sort();
        out
    }
}

fn decode(body: &[u8], review: &Value) -> Answer {
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    let r = &v["response"];
    assert_eq!(r["uid"], review["request"]["uid"], "the uid is echoed");
    let raw_patch = r["patch"].as_str().map(str::to_string);
    if let Some(raw) = &raw_patch {
        assert_eq!(r["patchType"], "JSONPatch");
        let _ = raw;
    } else {
        assert!(
            r["patch"].is_null(),
            "patch is base64 text on the wire: {}",
            r["patch"]
        );
    }
    let patch = raw_patch.as_ref().map(|raw| {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .expect("base64 patch");
        serde_json::from_slice(&bytes).unwrap()
    });
    Answer {
        allowed: r["allowed"].as_bool().unwrap(),
        message: r["status"]["message"].as_str().unwrap_or("").to_string(),
        reason: r["status"]["reason"].as_str().unwrap_or("").to_string(),
        patch,
        raw_patch,
        warnings: r["warnings"]
            .as_array()
            .map(|w| w.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default(),
    }
}

/// A CREATE review of Service `ns/name`, changed by `edit` (on the Service object).
fn create(ns: &str, name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let mut review = fixture("service-create.json");
    let request = &mut review["request"];
    request["uid"] = json!(format!("uid-{ns}-{name}"));
    request["name"] = json!(name);
    request["namespace"] = json!(ns);
    let object = &mut request["object"];
    object["metadata"]["name"] = json!(name);
    object["metadata"]["namespace"] = json!(ns);
    edit(object);
    review
}

/// An UPDATE review from the fixture with `old` and `new` edits.
fn update(old: impl FnOnce(&mut Value), new: impl FnOnce(&mut Value)) -> Value {
    let mut review = fixture("service-update.json");
    old(&mut review["request"]["oldObject"]);
    new(&mut review["request"]["object"]);
    review
}

fn annotate(object: &mut Value, key: &str, value: &str) {
    if object["metadata"]["annotations"].is_null() {
        object["metadata"]["annotations"] = json!({});
    }
    object["metadata"]["annotations"][key] = json!(value);
}

fn no_edit(_: &mut Value) {}

#[tokio::test]
async fn create_auto_assigns_the_lowest_free_address_and_records_it() {
    let h = harness(vec![lan()]).await;
    let a = h.service(&create("apps", "web", no_edit)).await;
    assert!(a.allowed, "{a:?}");
    assert_eq!(a.assigned().as_deref(), Some("192.0.2.1"));
    // The fixture has no annotations: the patch adds the whole map.
    assert_eq!(
        a.patch.as_ref().unwrap()[0]["path"],
        "/metadata/annotations"
    );
    assert_eq!(
        h.allocations(),
        vec![("192.0.2.1".into(), vec!["apps/web".into()])]
    );
    let object = h.fake.get("ipallocations", None, "v4-192-0-2-1").unwrap();
    assert_eq!(object["spec"]["pool"], "lan");
    // Objects vipam creates carry no Argo CD tracking label or annotation (invariant 3).
    let meta = object["metadata"].to_string();
    assert!(
        !meta.contains("argocd.argoproj.io") && !meta.contains("app.kubernetes.io/instance"),
        "{meta}"
    );
    assert_eq!(
        object["spec"]["services"][0]["ports"][0],
        json!({"protocol": "TCP", "port": 443})
    );
    assert!(a.warnings.is_empty(), "{:?}", a.warnings);
    let b = h.service(&create("apps", "api", no_edit)).await;
    assert_eq!(b.assigned().as_deref(), Some("192.0.2.2"));
}

#[tokio::test]
async fn create_pinned_and_every_compatibility_dialect() {
    let h = harness(vec![lan()]).await;
    let a = h
        .service(&create("apps", "web", |o| {
            annotate(o, "vipam.io/ips", "192.0.2.3")
        }))
        .await;
    assert_eq!(a.assigned().as_deref(), Some("192.0.2.3"));
    assert_eq!(
        a.patch.as_ref().unwrap()[0]["path"],
        "/metadata/annotations/vipam.io~1assigned-ips",
        "the annotation key's / is escaped"
    );
    assert!(a.warnings.is_empty());
    for (i, dialect) in [
        "lbipam.cilium.io/ips",
        "io.cilium/lb-ipam-ips",
        "kube-vip.io/loadbalancerIPs",
        "metallb.io/loadBalancerIPs",
        "metallb.universe.tf/loadBalancerIPs",
    ]
    .iter()
    .enumerate()
    {
        let h = harness(vec![lan()]).await;
        let ip = format!("192.0.2.{}", 1 + i % 4);
        let a = h
            .service(&create("apps", "web", |o| annotate(o, dialect, &ip)))
            .await;
        assert!(a.allowed, "{dialect}: {a:?}");
        assert_eq!(a.assigned(), Some(ip.clone()), "{dialect}");
        assert!(
            a.warnings.iter().any(|w| w.contains(&format!(
                "vipam reads {dialect} for compatibility; prefer vipam.io/ips"
            ))),
            "{dialect}: {:?}",
            a.warnings
        );
    }
    let h = harness(vec![lan()]).await;
    let a = h
        .service(&create("apps", "web", |o| {
            o["spec"]["loadBalancerIP"] = json!("192.0.2.4")
        }))
        .await;
    assert_eq!(a.assigned().as_deref(), Some("192.0.2.4"));
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("spec.loadBalancerIP is deprecated")),
        "{:?}",
        a.warnings
    );
    let a = h
        .service(&create("apps", "two", |o| {
            annotate(o, "vipam.io/ips", "192.0.2.1");
            annotate(o, "metallb.io/loadBalancerIPs", "192.0.2.2");
        }))
        .await;
    assert!(!a.allowed);
    assert_eq!(a.reason, "conflicting_annotations");
    assert!(
        a.message.contains(
            "vipam.io/ips (192.0.2.1) and metallb.io/loadBalancerIPs (192.0.2.2) disagree"
        ),
        "{}",
        a.message
    );
}

#[tokio::test]
async fn dual_stack_policies() {
    let h = harness(vec![lan()]).await;
    let a = h
        .service(&create("apps", "dual", |o| {
            o["spec"]["ipFamilyPolicy"] = json!("RequireDualStack")
        }))
        .await;
    assert_eq!(a.assigned().as_deref(), Some("192.0.2.1,2001:db8::"));
    let a = h
        .service(&create("apps", "prefer", |o| {
            o["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
            o["spec"]["ipFamilies"] = json!(["IPv6", "IPv4"]);
        }))
        .await;
    assert_eq!(a.assigned().as_deref(), Some("2001:db8::1,192.0.2.2"));
    let a = h
        .service(&create("apps", "v6", |o| {
            o["spec"]["ipFamilies"] = json!(["IPv6"])
        }))
        .await;
    assert_eq!(a.assigned().as_deref(), Some("2001:db8::2"));
    // IPv4-only pools: Require fails, Prefer takes what exists.
    let h = harness(vec![pool("lan", json!([{"cidr": "192.0.2.0/30"}]))]).await;
    let a = h
        .service(&create("apps", "dual", |o| {
            o["spec"]["ipFamilyPolicy"] = json!("RequireDualStack")
        }))
        .await;
    assert!(!a.allowed);
    assert_eq!(a.reason, "no_pool");
    assert!(
        a.message.contains("lan: has no IPv6 addresses"),
        "{}",
        a.message
    );
    assert!(
        h.allocations().is_empty(),
        "nothing is reserved when the decision fails"
    );
    let a = h
        .service(&create("apps", "prefer", |o| {
            o["spec"]["ipFamilyPolicy"] = json!("PreferDualStack")
        }))
        .await;
    assert_eq!(a.assigned().as_deref(), Some("192.0.2.1"));
}

#[tokio::test]
async fn sharing_allowed_port_clash_and_cross_namespace() {
    let h = harness(vec![lan()]).await;
    let shared = |ns: &str, name: &str, port: i64, proto: &str, cross: Option<&str>| {
        let (proto, cross) = (proto.to_string(), cross.map(str::to_string));
        create(ns, name, move |o| {
            annotate(o, "vipam.io/ips", "192.0.2.2");
            annotate(o, "vipam.io/sharing-key", "media");
            if let Some(c) = &cross {
                annotate(o, "vipam.io/sharing-cross-namespace", c);
            }
            o["spec"]["ports"] = json!([{"protocol": proto, "port": port}]);
        })
    };
    assert!(
        h.service(&shared("plex", "plex", 32400, "TCP", Some("dlna")))
            .await
            .allowed
    );
    let a = h.service(&shared("plex", "web", 443, "TCP", None)).await;
    assert!(a.allowed, "{a:?}");
    let a = h.service(&shared("plex", "clash", 443, "TCP", None)).await;
    assert!(!a.allowed);
    assert_eq!(a.reason, "port_clash");
    assert!(
        a.message.contains("Service plex/web already uses TCP/443"),
        "{}",
        a.message
    );
    assert!(
        a.message
            .contains("pick a free address in pool \"lan\" (192.0.2.1, 192.0.2.3-192.0.2.4"),
        "{}",
        a.message
    );
    let a = h.service(&shared("dlna", "dlna", 1900, "UDP", None)).await;
    assert!(!a.allowed);
    assert_eq!(a.reason, "cross_namespace");
    let a = h
        .service(&shared("dlna", "dlna", 1900, "UDP", Some("plex")))
        .await;
    assert!(!a.allowed, "plex/web gave no consent to dlna");
    assert_eq!(
        h.allocations(),
        vec![(
            "192.0.2.2".into(),
            vec!["plex/plex".into(), "plex/web".into()]
        )]
    );
}

#[tokio::test]
async fn out_of_pool_pin_and_exhausted_pool_are_refused_with_reasons() {
    let h = harness(vec![lan()]).await;
    let a = h
        .service(&create("apps", "web", |o| {
            annotate(o, "vipam.io/ips", "203.0.113.9")
        }))
        .await;
    assert!(!a.allowed);
    assert_eq!(a.reason, "pin_outside_pools");
    assert_eq!(
        a.message,
        "vipam.io/ips pins 203.0.113.9, which is outside every IPPool; the pools this Service may use are lan (192.0.2.1-192.0.2.4, 2001:db8::-2001:db8::3)"
    );
    for i in 0..4 {
        assert!(
            h.service(&create("apps", &format!("s{i}"), no_edit))
                .await
                .allowed
        );
    }
    let a = h.service(&create("apps", "s4", no_edit)).await;
    assert!(!a.allowed);
    assert_eq!(a.reason, "pool_exhausted");
    assert!(
        a.message
            .contains("no free IPv4 address for apps/s4 in lan"),
        "{}",
        a.message
    );
    let a = h
        .service(&create("apps", "taken", |o| {
            annotate(o, "vipam.io/ips", "192.0.2.1")
        }))
        .await;
    assert_eq!(a.reason, "ip_in_use");
    assert!(
        a.message
            .contains("192.0.2.1 is already used by Service apps/s0"),
        "{}",
        a.message
    );
    assert!(a.message.contains("(allocated since "), "{}", a.message);
}

#[tokio::test]
async fn dry_run_writes_nothing_and_answers_the_same() {
    let h = harness(vec![lan()]).await;
    let mut review = create("apps", "web", |o| annotate(o, "vipam.io/ips", "192.0.2.3"));
    review["request"]["dryRun"] = json!(true);
    let dry = h.service(&review).await;
    assert!(dry.allowed);
    assert!(h.allocations().is_empty());
    assert!(
        h.fake.requests().iter().all(|r| !r.verb.is_write()),
        "a dry run sends no write"
    );
    review["request"]["dryRun"] = json!(false);
    let real = h.service(&review).await;
    assert_eq!(real.raw_patch, dry.raw_patch);
    assert_eq!(h.allocations().len(), 1);
}

#[tokio::test]
async fn updates_give_the_same_answer_unless_the_pin_changes() {
    let h = harness(vec![lan()]).await;
    assert!(h.service(&create("apps", "web", no_edit)).await.allowed);
    // Unchanged: 100 identical UPDATEs, byte-identical answers (uids aside).
    let review = update(no_edit, no_edit);
    let first = h.service(&review).await;
    assert_eq!(first.assigned().as_deref(), Some("192.0.2.1"));
    for _ in 0..100 {
        assert_eq!(h.service(&review).await.raw_patch, first.raw_patch);
    }
    // A replace sync that drops the annotation gets it back.
    let dropped = update(no_edit, |o| {
        o["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .clear();
    });
    assert_eq!(
        h.service(&dropped).await.assigned().as_deref(),
        Some("192.0.2.1")
    );
    // A user-set value the ledger does not back is replaced by the truth.
    let forged = update(no_edit, |o| {
        annotate(o, "vipam.io/assigned-ips", "192.0.2.4")
    });
    assert_eq!(
        h.service(&forged).await.assigned().as_deref(),
        Some("192.0.2.1")
    );
    // A new pin moves the Service; the new address is reserved (the controller releases the old).
    let moved = update(no_edit, |o| annotate(o, "vipam.io/ips", "192.0.2.3"));
    assert_eq!(
        h.service(&moved).await.assigned().as_deref(),
        Some("192.0.2.3")
    );
    assert!(
        h.allocations()
            .contains(&("192.0.2.3".into(), vec!["apps/web".into()]))
    );
}

#[tokio::test]
async fn assigned_ips_set_by_a_user_on_create_is_refused() {
    let h = harness(vec![lan()]).await;
    let a = h
        .service(&create("apps", "web", |o| {
            annotate(o, "vipam.io/assigned-ips", "192.0.2.2")
        }))
        .await;
    assert!(!a.allowed);
    assert_eq!(a.reason, "assigned_ips_not_backed");
    assert!(
        a.message
            .contains("pin the address with vipam.io/ips instead"),
        "{}",
        a.message
    );
}

#[tokio::test]
async fn not_ours_and_malformed_requests() {
    let h = harness(vec![lan()]).await;
    // Another class, and a type change away from LoadBalancer: allowed, untouched.
    let a = h
        .service(&create("apps", "cilium", |o| {
            o["spec"]["loadBalancerClass"] = json!("io.cilium/l2-announcer")
        }))
        .await;
    assert!(a.allowed && a.patch.is_none());
    let a = h
        .service(&update(no_edit, |o| o["spec"]["type"] = json!("ClusterIP")))
        .await;
    assert!(a.allowed && a.patch.is_none());
    assert!(h.allocations().is_empty());
    // Missing oldObject on UPDATE.
    let mut review = update(no_edit, no_edit);
    review["request"]["oldObject"] = Value::Null;
    let a = h.service(&review).await;
    assert!(!a.allowed);
    assert!(a.message.contains("UPDATE without oldObject"));
    // Malformed JSON, wrong kind, oversized body: HTTP errors, no panic.
    let (status, body) = h.post("/mutate/service", b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("malformed JSON"));
    let (status, body) = h
        .post(
            "/mutate/service",
            serde_json::to_vec(&fixture("ippool-create.json")).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("admits Service objects, not \"IPPool\""));
    let mut big = create("apps", "big", no_edit);
    big["request"]["object"]["metadata"]["annotations"] = json!({"x": "y".repeat(4 * 1024 * 1024)});
    let (status, _) = h
        .post("/mutate/service", serde_json::to_vec(&big).unwrap())
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut bad_object = create("apps", "bad", no_edit);
    bad_object["request"]["object"]["spec"]["ports"] = json!("not-a-list");
    let (status, body) = h
        .post("/mutate/service", serde_json::to_vec(&bad_object).unwrap())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("malformed AdmissionReview"));
    // A malformed annotation is a denial naming it.
    let a = h
        .service(&create("apps", "web", |o| {
            annotate(o, "vipam.io/ips", "192.0.2.300")
        }))
        .await;
    assert_eq!(a.reason, "malformed_annotation");
    assert_eq!(
        a.message,
        "annotation vipam.io/ips: \"192.0.2.300\" is not an IP address"
    );
}

#[tokio::test]
async fn warns_when_no_l2announcement_covers_the_pool() {
    let fake = FakeApi::new();
    fake.seed(lan());
    let (h, _) = harness_on(fake).await;
    let a = h.service(&create("apps", "web", no_edit)).await;
    assert!(a.allowed);
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("no L2Announcement or BGPAnnouncement covers pool \"lan\"")),
        "{:?}",
        a.warnings
    );
}

#[tokio::test]
async fn pool_validation() {
    let h = harness(vec![lan()]).await;
    let a = h
        .review("/validate/ippool", &fixture("ippool-create.json"))
        .await;
    assert!(a.allowed && a.warnings.is_empty(), "{a:?}");
    let mut bad = fixture("ippool-create.json");
    bad["request"]["object"]["spec"]["blocks"] =
        json!([{"start": "198.51.100.9", "stop": "198.51.100.1"}, {"cidr": "127.0.0.0/8"}]);
    let a = h.review("/validate/ippool", &bad).await;
    assert!(!a.allowed);
    assert_eq!(
        a.message,
        "IPPool extra: spec.blocks[0]: stop 198.51.100.1 is before start 198.51.100.9; spec.blocks[1]: cidr 127.0.0.0/8 contains 127.0.0.0, a loopback address"
    );
    // Overlap with an existing pool: a warning, never a denial.
    let mut overlapping = fixture("ippool-create.json");
    overlapping["request"]["object"]["spec"]["blocks"] = json!([{"cidr": "192.0.2.0/29"}]);
    let a = h.review("/validate/ippool", &overlapping).await;
    assert!(a.allowed);
    assert!(
        a.warnings.iter().any(|w| w.contains(
            "IPPool extra overlaps IPPool lan on 192.0.2.1-192.0.2.4; lan keeps the shared range"
        )),
        "{:?}",
        a.warnings
    );
    // An edit that strands an allocated address: a warning naming the Service.
    assert!(h.service(&create("apps", "web", no_edit)).await.allowed);
    let mut shrink = fixture("ippool-create.json");
    shrink["request"]["operation"] = json!("UPDATE");
    shrink["request"]["object"]["metadata"]["name"] = json!("lan");
    shrink["request"]["object"]["spec"]["blocks"] =
        json!([{"start": "192.0.2.3", "stop": "192.0.2.4"}]);
    shrink["request"]["oldObject"] = lan();
    let a = h.review("/validate/ippool", &shrink).await;
    assert!(a.allowed);
    assert!(
        a.warnings
            .iter()
            .any(|w| w.contains("outside IPPool lan: 192.0.2.1 (apps/web)")),
        "{:?}",
        a.warnings
    );
}

#[tokio::test]
async fn l2announcement_validation() {
    let h = harness(vec![lan()]).await;
    let a = h
        .review(
            "/validate/l2announcement",
            &fixture("l2announcement-create.json"),
        )
        .await;
    assert!(a.allowed && a.warnings.is_empty(), "{a:?}");
    let mut bad = fixture("l2announcement-create.json");
    bad["request"]["object"]["spec"]["interfaces"] = json!(["^eth(0"]);
    bad["request"]["object"]["spec"]["nodeSelector"] =
        json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]});
    bad["request"]["object"]["spec"]["ipPools"] = json!(["nope"]);
    let a = h.review("/validate/l2announcement", &bad).await;
    assert!(!a.allowed);
    assert!(
        a.message
            .contains("spec.interfaces[0]: \"^eth(0\" is not a regular expression"),
        "{}",
        a.message
    );
    assert!(
        a.message
            .contains("spec.nodeSelector: matchExpressions key \"a\": unknown operator \"Equals\""),
        "{}",
        a.message
    );
}

#[tokio::test]
async fn bgppeer_validation_names_every_invalid_field() {
    let h = harness(vec![lan()]).await;
    let a = h
        .review("/validate/bgppeer", &fixture("bgppeer-create.json"))
        .await;
    assert!(a.allowed && a.warnings.is_empty(), "{a:?}");
    let mut bad = fixture("bgppeer-create.json");
    let spec = &mut bad["request"]["object"]["spec"];
    spec["peerAddress"] = json!("router.example");
    spec["peerASN"] = json!(23456);
    spec["holdTime"] = json!("2s");
    spec["ebgpMultiHop"] = json!(0);
    spec["nodeSelector"] = json!({"matchExpressions": [{"key": "a", "operator": "In"}]});
    let a = h.review("/validate/bgppeer", &bad).await;
    assert!(!a.allowed);
    assert_eq!(a.reason, "invalid_bgppeer");
    for field in [
        "BGPPeer tor: ",
        "spec.nodeSelector: matchExpressions key \"a\": operator In needs at least one value",
        "spec.peerAddress: \"router.example\" is not an IPv4 or IPv6 address",
        "spec.peerASN: 23456 is AS_TRANS",
        "spec.holdTime: 2s is not allowed (0, or 3s to 65535s; RFC 4271)",
        "spec.ebgpMultiHop: a TTL is 1 to 255",
    ] {
        assert!(a.message.contains(field), "{field} not in {}", a.message);
    }
    // The API server's schema refuses an ASN beyond 32 bits before the webhook sees it; a
    // review that carries one anyway is a malformed review (400, saying why), not a crash.
    let mut huge = fixture("bgppeer-create.json");
    huge["request"]["object"]["spec"]["peerASN"] = json!(4294967296u64);
    let (status, body) = h
        .post("/validate/bgppeer", serde_json::to_vec(&huge).unwrap())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("expected u32"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn bgpannouncement_validation() {
    let h = harness(vec![lan()]).await;
    let a = h
        .review(
            "/validate/bgpannouncement",
            &fixture("bgpannouncement-create.json"),
        )
        .await;
    assert!(a.allowed && a.warnings.is_empty(), "{a:?}");
    let mut bad = fixture("bgpannouncement-create.json");
    bad["request"]["object"]["spec"]["communities"] = json!(["65000:100", "65000:100000"]);
    bad["request"]["object"]["spec"]["aggregationLengthV6"] = json!(129);
    let a = h.review("/validate/bgpannouncement", &bad).await;
    assert!(!a.allowed);
    assert_eq!(a.reason, "invalid_bgpannouncement");
    assert!(
        a.message
            .contains("spec.communities[1]: \"65000:100000\" is not a community"),
        "{}",
        a.message
    );
    assert!(
        a.message.contains("spec.aggregationLengthV6: 129"),
        "{}",
        a.message
    );
    let mut unknown_pool = fixture("bgpannouncement-create.json");
    unknown_pool["request"]["object"]["spec"]["ipPools"] = json!(["nope"]);
    let a = h.review("/validate/bgpannouncement", &unknown_pool).await;
    assert!(a.allowed);
    assert_eq!(
        a.warnings,
        ["vipam: BGPAnnouncement routed names IPPool nope, which does not exist (yet)"]
    );
}

#[tokio::test]
async fn malformed_objects_in_the_watch_are_skipped() {
    let fake = FakeApi::new();
    fake.seed(lan());
    // Neither deserialises: the watches log them and go on.
    fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "IPAllocation",
        "metadata": {"name": "v4-192-0-2-1"},
        "spec": {"ip": 42, "pool": ["not", "a", "string"]}
    }));
    fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "IPPool",
        "metadata": {"name": "broken"},
        "spec": {"blocks": "192.0.2.0/24"}
    }));
    // Well-formed but inconsistent: the name does not match the address.
    fake.seed(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "IPAllocation",
        "metadata": {"name": "v4-192-0-2-9"},
        "spec": {"ip": "192.0.2.2", "pool": "lan", "services": []}
    }));
    let (h, _) = harness_on(fake).await;
    let a = h
        .service(&create("apps", "web", |o| {
            annotate(o, "vipam.io/ips", "192.0.2.3")
        }))
        .await;
    assert!(a.allowed, "{a:?}");
    assert_eq!(a.assigned().as_deref(), Some("192.0.2.3"));
}

#[tokio::test]
async fn an_unchanged_update_keeps_the_address_after_a_pool_edit() {
    let fake = FakeApi::new();
    fake.seed(lan());
    let (h, state) = harness_on(fake).await;
    let named = |o: &mut Value| annotate(o, "vipam.io/pool", "lan");
    assert_eq!(
        h.service(&create("apps", "web", named))
            .await
            .assigned()
            .as_deref(),
        Some("192.0.2.1")
    );
    // The pool is edited so that it no longer holds the address.
    h.fake.seed(pool(
        "lan",
        json!([{"start": "192.0.2.3", "stop": "192.0.2.4"}]),
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while state.ledger.read(|s| {
        s.pools
            .get("lan")
            .is_some_and(|p| p.covers(&"192.0.2.1".parse().unwrap()))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the pool edit never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // An UPDATE that changes nothing vipam reads (a label, say): same answer, no renumbering.
    let relabel = update(
        |o| {
            annotate(o, "vipam.io/pool", "lan");
        },
        |o| {
            annotate(o, "vipam.io/pool", "lan");
            o["metadata"]["labels"]["team"] = json!("blue");
        },
    );
    assert_eq!(
        h.service(&relabel).await.assigned().as_deref(),
        Some("192.0.2.1")
    );
    // The Service's own change (a new pin) still moves it.
    let repin = update(
        |o| annotate(o, "vipam.io/pool", "lan"),
        |o| {
            annotate(o, "vipam.io/pool", "lan");
            annotate(o, "vipam.io/ips", "192.0.2.4");
        },
    );
    assert_eq!(
        h.service(&repin).await.assigned().as_deref(),
        Some("192.0.2.4")
    );
}

#[tokio::test]
async fn the_ledger_keeps_an_address_whose_watch_event_came_before_the_create_returned() {
    let h = harness(vec![lan()]).await;
    // The create is stored (and its watch event sent) 200 ms before its answer arrives.
    h.fake.inject(
        Fault::delay(Duration::from_millis(200))
            .verb(Verb::Create)
            .resource("ipallocations")
            .after_commit(),
    );
    let a = h.service(&create("apps", "web", no_edit)).await;
    assert_eq!(a.assigned().as_deref(), Some("192.0.2.1"), "{a:?}");
    // The address stays in this replica's ledger: the next Service gets another one, and a pin
    // on it is refused with the holder.
    let b = h.service(&create("apps", "api", no_edit)).await;
    assert_eq!(b.assigned().as_deref(), Some("192.0.2.2"), "{b:?}");
    let c = h
        .service(&create("apps", "pinned", |s| {
            annotate(s, "vipam.io/ips", "192.0.2.1")
        }))
        .await;
    assert!(!c.allowed, "{c:?}");
    assert!(c.message.contains("apps/web"), "{}", c.message);
    assert_eq!(
        h.allocations(),
        vec![
            ("192.0.2.1".into(), vec!["apps/web".into()]),
            ("192.0.2.2".into(), vec!["apps/api".into()])
        ]
    );
}
