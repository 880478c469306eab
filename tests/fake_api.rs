//! Tests of the fake API server itself (tests/support): one per semantic it promises.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::core::Status;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};
use support::{FakeApi, Fault, Outage, Verb};

const WAIT: Duration = Duration::from_secs(10);

fn service(name: &str, labels: Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }))
    .expect("valid Service")
}

fn ippool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("vipam.io", "v1alpha1", "IPPool"),
        "ippools",
    )
}

fn ippool(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "vipam.io/v1alpha1", "kind": "IPPool",
        "metadata": {"name": name},
        "spec": {"blocks": [{"cidr": "192.168.0.0/24"}]},
    }))
    .expect("valid IPPool")
}

fn pools(client: kube::Client) -> Api<DynamicObject> {
    Api::all_with(client, &ippool_resource())
}

fn api_status(result: Result<impl std::fmt::Debug, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(s)) => *s,
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

fn rv(obj: &impl kube::Resource) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .expect("resourceVersion")
        .parse()
        .expect("numeric rv")
}

async fn next_item<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("no stream item within the time limit")
        .expect("the stream ended")
}

/// Consumes watcher events up to and including `InitDone`; returns the objects listed.
async fn until_init_done<K: kube::Resource + Clone, S>(stream: &mut S) -> Vec<K>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Unpin,
{
    let mut listed = Vec::new();
    loop {
        match next_item(stream).await.expect("watcher error") {
            watcher::Event::InitApply(o) => listed.push(o),
            watcher::Event::InitDone => return listed,
            watcher::Event::Init => listed.clear(),
            watcher::Event::Apply(_) | watcher::Event::Delete(_) => {
                panic!("unexpected Apply/Delete before InitDone")
            }
        }
    }
}

fn names<K: kube::Resource>(objs: &[K]) -> BTreeSet<String> {
    objs.iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn create_fills_server_fields_with_one_global_resource_version() {
    let fake = FakeApi::new();
    let client = fake.client();
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let a = services
        .create(&PostParams::default(), &service("a", json!({})))
        .await
        .unwrap();
    let pool = pools(client)
        .create(&PostParams::default(), &ippool("p"))
        .await
        .unwrap();

    let meta = &a.metadata;
    assert!(
        meta.uid.as_deref().is_some_and(|u| u.len() == 36),
        "uid: {:?}",
        meta.uid
    );
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert_ne!(pool.metadata.uid, a.metadata.uid);
    // One counter across resources, as etcd's revision.
    assert_eq!(rv(&pool), rv(&a) + 1);
    assert_eq!(fake.resource_version(), rv(&pool));
    assert!(
        pool.metadata.namespace.is_none(),
        "cluster-scoped objects have no namespace"
    );
}

#[tokio::test]
async fn create_with_generate_name_picks_a_unique_name() {
    let fake = FakeApi::new();
    let leases: Api<Lease> = Api::default_namespaced(fake.client());
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let l: Lease =
            serde_json::from_value(json!({"metadata": {"generateName": "vipam-"}})).unwrap();
        let created = leases.create(&PostParams::default(), &l).await.unwrap();
        let name = created.metadata.name.unwrap();
        assert!(
            name.starts_with("vipam-") && name.len() == "vipam-".len() + 5,
            "{name}"
        );
        assert!(seen.insert(name));
    }
}

#[tokio::test]
async fn create_of_an_existing_name_is_already_exists() {
    let fake = FakeApi::new();
    let services: Api<Service> = Api::default_namespaced(fake.client());
    services
        .create(&PostParams::default(), &service("a", json!({})))
        .await
        .unwrap();
    let s = api_status(
        services
            .create(&PostParams::default(), &service("a", json!({})))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(s.message, "services \"a\" already exists");
    assert_eq!(s.details.unwrap().name, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_exactly_one_wins() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    let attempts = (0..24).map(|_| {
        let api = api.clone();
        tokio::spawn(async move {
            api.create(&PostParams::default(), &ippool("v4-192-168-0-10"))
                .await
        })
    });
    let results = futures::future::join_all(attempts).await;
    let mut won = 0;
    for r in results {
        match r.unwrap() {
            Ok(_) => won += 1,
            Err(e) => assert!(api_status(Err::<(), _>(e)).is_already_exists()),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(fake.list("ippools", None).len(), 1);
}

#[tokio::test]
async fn get_of_a_missing_object_is_not_found_status() {
    let fake = FakeApi::new();
    let s = api_status(pools(fake.client()).get("nope").await);
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    assert_eq!(s.message, "ippools.vipam.io \"nope\" not found");
    let details = s.details.unwrap();
    assert_eq!(
        (details.group.as_str(), details.kind.as_str()),
        ("vipam.io", "ippools")
    );
}

#[tokio::test]
async fn list_filters_by_label_and_field_selectors_and_reports_its_resource_version() {
    let fake = FakeApi::new();
    let services: Api<Service> = Api::default_namespaced(fake.client());
    for (name, labels) in [
        ("web", json!({"app": "web", "tier": "front"})),
        ("db", json!({"app": "db", "tier": "back"})),
        ("cache", json!({"app": "cache"})),
    ] {
        services
            .create(&PostParams::default(), &service(name, labels))
            .await
            .unwrap();
    }
    fake.seed(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "namespace": "kube-system", "labels": {"app": "web"}}}));

    let select = |sel: &str| {
        let services = services.clone();
        let sel = sel.to_string();
        async move {
            names(
                &services
                    .list(&ListParams::default().labels(&sel))
                    .await
                    .unwrap()
                    .items,
            )
        }
    };
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(select("app=web").await, set(&["web"]));
    assert_eq!(select("app!=web").await, set(&["cache", "db"]));
    assert_eq!(select("app in (web, db)").await, set(&["db", "web"]));
    assert_eq!(select("app notin (web),tier").await, set(&["db"]));
    assert_eq!(select("!tier").await, set(&["cache"]));
    assert_eq!(select("tier,app==db").await, set(&["db"]));

    let by_name = services
        .list(&ListParams::default().fields("metadata.name=db"))
        .await
        .unwrap();
    assert_eq!(names(&by_name.items), set(&["db"]));
    let all: Api<Service> = Api::all(fake.client());
    let in_system = all
        .list(&ListParams::default().fields("metadata.namespace!=default"))
        .await
        .unwrap();
    assert_eq!(names(&in_system.items), set(&["other"]));
    let list = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 4);
    assert_eq!(
        list.metadata.resource_version,
        Some(fake.resource_version().to_string())
    );

    let bad = api_status(
        services
            .list(&ListParams::default().labels("app in web"))
            .await,
    );
    assert_eq!((bad.code, bad.reason.as_str()), (400, "BadRequest"));
    let bad = api_status(
        services
            .list(&ListParams::default().fields("spec.type=LoadBalancer"))
            .await,
    );
    assert_eq!(bad.code, 400);
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    for i in 0..5 {
        api.create(&PostParams::default(), &ippool(&format!("p{i}")))
            .await
            .unwrap();
    }
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), ["p0", "p1"].map(String::from).into());
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("continue token");
    let second = api
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        names(&second.items),
        ["p2", "p3", "p4"].map(String::from).into()
    );
    assert!(
        second
            .metadata
            .continue_
            .as_deref()
            .unwrap_or("")
            .is_empty()
    );
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_is_conflict() {
    let fake = FakeApi::new();
    let leases: Api<Lease> = Api::default_namespaced(fake.client());
    let l: Lease = serde_json::from_value(
        json!({"metadata": {"name": "vipam-controller"}, "spec": {"holderIdentity": "a"}}),
    )
    .unwrap();
    let created = leases.create(&PostParams::default(), &l).await.unwrap();
    let mut mine = created.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let replaced = leases
        .replace("vipam-controller", &PostParams::default(), &mine)
        .await
        .unwrap();
    assert!(rv(&replaced) > rv(&created));

    // `mine` still carries the old resourceVersion.
    let s = api_status(
        leases
            .replace("vipam-controller", &PostParams::default(), &mine)
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
    assert!(
        s.message.contains("the object has been modified"),
        "{}",
        s.message
    );

    // Without a resourceVersion a replace is unconditional, as on the real server.
    mine.metadata.resource_version = None;
    leases
        .replace("vipam-controller", &PostParams::default(), &mine)
        .await
        .unwrap();
    let missing = api_status(
        leases
            .replace("other", &PostParams::default(), &{
                let mut m = mine.clone();
                m.metadata.name = Some("other".into());
                m
            })
            .await,
    );
    assert_eq!(missing.code, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replaces_with_one_resource_version_exactly_one_wins() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    let base = api
        .create(&PostParams::default(), &ippool("p"))
        .await
        .unwrap();
    let attempts = (0..24).map(|i| {
        let (api, mut obj) = (api.clone(), base.clone());
        obj.data["spec"]["priority"] = json!(i);
        tokio::spawn(async move { api.replace("p", &PostParams::default(), &obj).await })
    });
    let mut won = Vec::new();
    for r in futures::future::join_all(attempts).await {
        match r.unwrap() {
            Ok(o) => won.push(o),
            Err(e) => assert!(api_status(Err::<(), _>(e)).is_conflict()),
        }
    }
    assert_eq!(won.len(), 1);
    let stored = fake.get("ippools", None, "p").unwrap();
    assert_eq!(stored["spec"]["priority"], won[0].data["spec"]["priority"]);
    assert_eq!(stored["metadata"]["generation"], 2);
}

#[tokio::test]
async fn generation_moves_on_spec_changes_only() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    api.create(&PostParams::default(), &ippool("p"))
        .await
        .unwrap();
    let pp = PatchParams::default();
    let labelled = api
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(1));
    let status = api
        .patch_status(
            "p",
            &pp,
            &Patch::Merge(json!({"status": {"allocated": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(status.metadata.generation, Some(1));
    let spec = api
        .patch("p", &pp, &Patch::Merge(json!({"spec": {"priority": 5}})))
        .await
        .unwrap();
    assert_eq!(spec.metadata.generation, Some(2));
    // A write that changes nothing is not a change: same resourceVersion, no event.
    let same = api
        .patch("p", &pp, &Patch::Merge(json!({"spec": {"priority": 5}})))
        .await
        .unwrap();
    assert_eq!(rv(&same), rv(&spec));
}

#[tokio::test]
async fn status_subresource_separates_status_from_the_rest() {
    let fake = FakeApi::new();
    let client = fake.client();
    let services: Api<Service> = Api::default_namespaced(client.clone());
    let mut s = service("web", json!({}));
    s.status =
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}})).unwrap();
    let created = services.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(
        created.status, None,
        "create drops status when status is a subresource"
    );

    let pp = PatchParams::default();
    let with_status = services
        .patch_status(
            "web",
            &pp,
            &Patch::Merge(json!({
                "spec": {"type": "ClusterIP"},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.168.0.10", "ipMode": "VIP"}]}},
            })),
        )
        .await
        .unwrap();
    assert_eq!(
        with_status.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer"),
        "status writes leave spec alone"
    );
    assert_eq!(
        with_status
            .status
            .as_ref()
            .unwrap()
            .load_balancer
            .as_ref()
            .unwrap()
            .ingress
            .as_ref()
            .unwrap()[0]
            .ip
            .as_deref(),
        Some("192.168.0.10")
    );

    // Main writes keep status.
    let mut replaced = with_status.clone();
    replaced.status = None;
    replaced.spec.as_mut().unwrap().load_balancer_class = Some("vipam.io/lb".into());
    let replaced = services
        .replace("web", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert!(replaced.status.is_some());
    assert_eq!(
        replaced
            .spec
            .as_ref()
            .unwrap()
            .load_balancer_class
            .as_deref(),
        Some("vipam.io/lb")
    );

    // PUT on /status.
    let mut cleared = replaced.clone();
    cleared.status = Some(Default::default());
    cleared.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    let put = services
        .replace_status("web", &PostParams::default(), &cleared)
        .await
        .unwrap();
    assert_eq!(put.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(put.status.unwrap().load_balancer, None);

    // Secrets have no status subresource.
    let raw = client
        .request_text(
            http::Request::get("/api/v1/namespaces/default/secrets/x/status")
                .body(vec![])
                .unwrap(),
        )
        .await;
    assert_eq!(api_status(raw).code, 404);
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let fake = FakeApi::new();
    let services: Api<Service> = Api::default_namespaced(fake.client());
    let mut s = service("web", json!({"keep": "yes", "drop": "me"}));
    s.metadata.finalizers = Some(vec!["a.io/one".into()]);
    services.create(&PostParams::default(), &s).await.unwrap();
    let pp = PatchParams::default();

    // JSON merge patch: maps merge, null deletes, lists are replaced.
    let merged = services
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({
                "metadata": {"labels": {"drop": null, "new": "1"}},
                "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP"}]},
            })),
        )
        .await
        .unwrap();
    let labels = merged.metadata.labels.clone().unwrap();
    assert_eq!(labels.keys().cloned().collect::<Vec<_>>(), ["keep", "new"]);
    let ports = |s: &Service| {
        s.spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect::<Vec<_>>()
    };
    assert_eq!(ports(&merged), [443]);

    // Strategic merge patch: ports merge by port, finalizers merge as a set, $patch: delete.
    let strategic = services
        .patch("web", &pp, &Patch::Strategic(json!({
            "metadata": {"finalizers": ["b.io/two"]},
            "spec": {"ports": [{"port": 80, "name": "http", "protocol": "TCP"}, {"port": 443, "name": "tls"}]},
        })))
        .await
        .unwrap();
    assert_eq!(ports(&strategic), [443, 80]);
    assert_eq!(
        strategic.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
            .name
            .as_deref(),
        Some("tls")
    );
    assert_eq!(
        strategic.metadata.finalizers.clone().unwrap(),
        ["a.io/one", "b.io/two"]
    );
    let deleted = services
        .patch(
            "web",
            &pp,
            &Patch::Strategic(json!({"spec": {"ports": [{"port": 443, "$patch": "delete"}]}})),
        )
        .await
        .unwrap();
    assert_eq!(ports(&deleted), [80]);

    // Conditions merge by type in status.
    services.patch_status("web", &pp, &Patch::Strategic(json!({"status": {"conditions": [
        {"type": "vipam.io/Allocated", "status": "True", "reason": "A", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}))).await.unwrap();
    let both = services.patch_status("web", &pp, &Patch::Strategic(json!({"status": {"conditions": [
        {"type": "vipam.io/Announced", "status": "False", "reason": "B", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}}))).await.unwrap();
    assert_eq!(both.status.unwrap().conditions.unwrap().len(), 2);

    // JSON patch, with a failing test op answered as Invalid.
    let jp: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/annotations", "value": {"vipam.io/assigned-ips": "192.168.0.10"}},
    ])).unwrap();
    let patched = services
        .patch("web", &pp, &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(
        patched.metadata.annotations.unwrap()["vipam.io/assigned-ips"],
        "192.168.0.10"
    );
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/spec/type", "value": "ClusterIP"}]))
            .unwrap();
    assert_eq!(
        api_status(
            services
                .patch("web", &pp, &Patch::<()>::Json(failing))
                .await
        )
        .code,
        422
    );

    // Custom resources refuse strategic merge patch, as the real server does.
    let api = pools(fake.client());
    api.create(&PostParams::default(), &ippool("p"))
        .await
        .unwrap();
    let s = api_status(
        api.patch(
            "p",
            &pp,
            &Patch::Strategic(json!({"spec": {"priority": 1}})),
        )
        .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (415, "UnsupportedMediaType"));

    // A patch carrying a stale resourceVersion is a conflict.
    let stale = api_status(
        services
            .patch(
                "web",
                &pp,
                &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}})),
            )
            .await,
    );
    assert_eq!(stale.code, 409);
    assert_eq!(
        api_status(services.patch("nope", &pp, &Patch::Merge(json!({}))).await).code,
        404
    );
}

#[tokio::test]
async fn server_side_apply_creates_merges_and_records_the_manager() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    let pp = PatchParams::apply("gitops");
    let config = json!({"apiVersion": "vipam.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "p", "labels": {"a": "1", "b": "2"}}, "spec": {"blocks": [{"cidr": "10.0.0.0/24"}]}});
    let created = api.patch("p", &pp, &Patch::Apply(&config)).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let mf = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(
        (mf[0].manager.as_deref(), mf[0].operation.as_deref()),
        (Some("gitops"), Some("Apply"))
    );

    // Another manager's fields survive; fields this manager stops applying are removed.
    api.patch("p", &PatchParams::apply("other"), &Patch::Apply(json!({"apiVersion": "vipam.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "p", "labels": {"c": "3"}}}))).await.unwrap();
    let config2 = json!({"apiVersion": "vipam.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "p", "labels": {"a": "1"}}, "spec": {"blocks": [{"cidr": "10.0.1.0/24"}]}});
    let applied = api.patch("p", &pp, &Patch::Apply(&config2)).await.unwrap();
    let labels = applied.metadata.labels.clone().unwrap();
    assert_eq!(labels.keys().cloned().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(
        applied.data["spec"]["blocks"],
        json!([{"cidr": "10.0.1.0/24"}]),
        "CRD lists are atomic"
    );
    assert_eq!(applied.metadata.generation, Some(2));

    // Apply to status touches only status, and needs the object to exist.
    let st = api.patch_status("p", &PatchParams::apply("vipam-controller"), &Patch::Apply(json!({"apiVersion": "vipam.io/v1alpha1", "kind": "IPPool", "status": {"allocated": "0"}}))).await.unwrap();
    assert_eq!(st.data["status"], json!({"allocated": "0"}));
    assert_eq!(st.metadata.generation, Some(2));
    let mf = st.metadata.managed_fields.unwrap();
    assert!(
        mf.iter()
            .any(|e| e.manager.as_deref() == Some("vipam-controller")
                && e.subresource.as_deref() == Some("status"))
    );
    let missing = api
        .patch_status(
            "q",
            &PatchParams::apply("x"),
            &Patch::Apply(
                json!({"apiVersion": "vipam.io/v1alpha1", "kind": "IPPool", "status": {}}),
            ),
        )
        .await;
    assert_eq!(api_status(missing).code, 404);

    // Built-in types merge conditions by type under apply.
    let services: Api<Service> = Api::default_namespaced(fake.client());
    services
        .create(&PostParams::default(), &service("web", json!({})))
        .await
        .unwrap();
    let cond = |t: &str| json!({"apiVersion": "v1", "kind": "Service", "status": {"conditions": [{"type": t, "status": "True", "reason": "R", "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}]}});
    services
        .patch_status(
            "web",
            &PatchParams::apply("a"),
            &Patch::Apply(cond("vipam.io/Allocated")),
        )
        .await
        .unwrap();
    let s = services
        .patch_status(
            "web",
            &PatchParams::apply("b"),
            &Patch::Apply(cond("vipam.io/Announced")),
        )
        .await
        .unwrap();
    assert_eq!(s.status.unwrap().conditions.unwrap().len(), 2);

    // The field manager is required.
    let raw = fake
        .client()
        .request_text(
            http::Request::patch("/apis/vipam.io/v1alpha1/ippools/p")
                .header("content-type", "application/apply-patch+yaml")
                .body(
                    b"apiVersion: vipam.io/v1alpha1\nkind: IPPool\nmetadata:\n  name: p\n".to_vec(),
                )
                .unwrap(),
        )
        .await;
    assert_eq!(api_status(raw).code, 422);
    // YAML bodies are accepted, as curl or kubectl would send them.
    let raw = fake.client().request_text(
        http::Request::patch("/apis/vipam.io/v1alpha1/ippools/y?fieldManager=curl")
            .header("content-type", "application/apply-patch+yaml")
            .body(b"apiVersion: vipam.io/v1alpha1\nkind: IPPool\nmetadata:\n  name: y\nspec:\n  priority: 3\n".to_vec())
            .unwrap(),
    ).await.unwrap();
    assert!(raw.contains("\"priority\":3"), "{raw}");
}

#[tokio::test]
async fn delete_waits_for_finalizers_then_removes_with_a_deleted_event() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    let mut p = ippool("p");
    p.metadata.finalizers = Some(vec!["vipam.io/ledger".into()]);
    let created = api.create(&PostParams::default(), &p).await.unwrap();
    let mut events = api
        .watch(&WatchParams::default(), &rv(&created).to_string())
        .await
        .unwrap()
        .boxed();

    let marked = api
        .delete("p", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("object while finalizers remain");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.generation, Some(2));
    match next_item(&mut events).await.unwrap() {
        WatchEvent::Modified(o) => assert!(o.metadata.deletion_timestamp.is_some()),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    // Deleting again changes nothing; adding a finalizer now is refused.
    let again = api
        .delete("p", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(rv(&again), rv(&marked));
    let add = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["vipam.io/ledger", "x.io/y"]}})),
        )
        .await;
    assert_eq!(api_status(add).code, 422);

    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    match next_item(&mut events).await.unwrap() {
        WatchEvent::Deleted(o) => assert!(rv(&o) > rv(&marked)),
        other => panic!("expected DELETED, got {other:?}"),
    }
    assert!(fake.get("ippools", None, "p").is_none());

    // Without finalizers deletion is immediate.
    api.create(&PostParams::default(), &ippool("q"))
        .await
        .unwrap();
    api.delete("q", &DeleteParams::default()).await.unwrap();
    assert!(matches!(
        next_item(&mut events).await.unwrap(),
        WatchEvent::Added(_)
    ));
    assert!(matches!(
        next_item(&mut events).await.unwrap(),
        WatchEvent::Deleted(_)
    ));
    assert_eq!(
        api_status(api.delete("q", &DeleteParams::default()).await).code,
        404
    );
}

#[tokio::test]
async fn delete_preconditions_and_delete_collection() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    let p = api
        .create(&PostParams::default(), &ippool("p"))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("other".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(api_status(api.delete("p", &dp).await).code, 409);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: p.metadata.uid.clone(),
            resource_version: Some("0".into()),
        }),
        ..Default::default()
    };
    assert_eq!(api_status(api.delete("p", &dp).await).code, 409);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: p.metadata.uid.clone(),
            resource_version: p.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    api.delete("p", &dp).await.unwrap();

    for (name, team) in [("a", "x"), ("b", "x"), ("c", "y")] {
        let mut pool = ippool(name);
        pool.metadata.labels = Some([("team".to_string(), team.to_string())].into());
        api.create(&PostParams::default(), &pool).await.unwrap();
    }
    let gone = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("team=x"),
        )
        .await
        .unwrap();
    assert_eq!(
        names(&gone.left().unwrap().items),
        ["a", "b"].map(String::from).into()
    );
    assert_eq!(fake.list("ippools", None).len(), 1);
}

#[tokio::test]
async fn dry_run_validates_but_never_stores() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let created = api.create(&dry, &ippool("p")).await.unwrap();
    assert!(created.metadata.uid.is_some());
    assert_eq!(fake.resource_version(), 0);
    assert!(fake.get("ippools", None, "p").is_none());
    let invalid = api.create(&dry, &ippool("Not_A_Name")).await;
    assert_eq!(api_status(invalid).code, 422);

    let real = api
        .create(&PostParams::default(), &ippool("p"))
        .await
        .unwrap();
    let rv0 = fake.resource_version();
    let mut changed = real.clone();
    changed.data["spec"]["priority"] = json!(9);
    let replaced = api.replace("p", &dry, &changed).await.unwrap();
    assert_eq!(replaced.data["spec"]["priority"], 9);
    let pp = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    api.patch("p", &pp, &Patch::Merge(json!({"spec": {"priority": 7}})))
        .await
        .unwrap();
    api.patch(
        "p",
        &PatchParams::apply("m").dry_run(),
        &Patch::Apply(
            json!({"apiVersion": "vipam.io/v1alpha1", "kind": "IPPool", "spec": {"priority": 8}}),
        ),
    )
    .await
    .unwrap();
    api.delete(
        "p",
        &DeleteParams {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(fake.resource_version(), rv0);
    assert_eq!(
        fake.get("ippools", None, "p").unwrap()["spec"],
        real.data["spec"]
    );
    let writes: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.verb.is_write())
        .collect();
    assert_eq!(
        writes.iter().filter(|r| !r.dry_run).count(),
        1,
        "{writes:#?}"
    );
}

#[tokio::test]
async fn watch_from_a_resource_version_replays_then_follows_with_bookmarks() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    let a = api
        .create(&PostParams::default(), &ippool("a"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &ippool("b"))
        .await
        .unwrap();
    let mut events = api
        .watch(&WatchParams::default(), &rv(&a).to_string())
        .await
        .unwrap()
        .boxed();
    // Replayed from history: only what happened after `a`.
    match next_item(&mut events).await.unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
        other => panic!("expected ADDED b, got {other:?}"),
    }
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"priority": 1}})),
    )
    .await
    .unwrap();
    assert!(
        matches!(next_item(&mut events).await.unwrap(), WatchEvent::Modified(o) if o.data["spec"]["priority"] == 1)
    );
    fake.bookmark();
    match next_item(&mut events).await.unwrap() {
        WatchEvent::Bookmark(b) => assert_eq!(
            b.metadata.resource_version,
            fake.resource_version().to_string()
        ),
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
    api.delete("b", &DeleteParams::default()).await.unwrap();
    assert!(
        matches!(next_item(&mut events).await.unwrap(), WatchEvent::Deleted(o) if o.metadata.name.as_deref() == Some("b"))
    );

    // Watching from "0" starts with the current objects.
    let mut from_zero = api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(next_item(&mut from_zero).await.unwrap(), WatchEvent::Added(o) if o.metadata.name.as_deref() == Some("a"))
    );
}

#[tokio::test]
async fn watch_with_a_selector_sees_objects_enter_and_leave_it() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    api.create(&PostParams::default(), &ippool("p"))
        .await
        .unwrap();
    let start = fake.resource_version().to_string();
    let mut events = api
        .watch(&WatchParams::default().labels("team=x"), &start)
        .await
        .unwrap()
        .boxed();
    let pp = PatchParams::default();
    api.patch(
        "p",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"team": "x"}}})),
    )
    .await
    .unwrap();
    api.patch("p", &pp, &Patch::Merge(json!({"spec": {"priority": 2}})))
        .await
        .unwrap();
    api.patch(
        "p",
        &pp,
        &Patch::Merge(json!({"metadata": {"labels": {"team": "y"}}})),
    )
    .await
    .unwrap();
    let kinds: Vec<&str> = [
        next_item(&mut events).await.unwrap(),
        next_item(&mut events).await.unwrap(),
        next_item(&mut events).await.unwrap(),
    ]
    .iter()
    .map(|e| match e {
        WatchEvent::Added(_) => "ADDED",
        WatchEvent::Modified(_) => "MODIFIED",
        WatchEvent::Deleted(_) => "DELETED",
        _ => "other",
    })
    .collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_is_gone_and_the_watcher_relists() {
    let fake = FakeApi::with_history(2);
    let api = pools(fake.client());
    for name in ["a", "b", "c", "d"] {
        api.create(&PostParams::default(), &ippool(name))
            .await
            .unwrap();
    }
    // Raw watch: an ERROR event carrying 410, then the end of the stream.
    let mut raw = api
        .watch(&WatchParams::default(), "1")
        .await
        .unwrap()
        .boxed();
    match next_item(&mut raw).await.unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(raw.next().await.is_none());

    // kube-runtime: list, then history moves past the listed version before the watch.
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    assert_eq!(until_init_done(&mut stream).await.len(), 4);
    for name in ["e", "f", "g"] {
        fake.seed(ippool(name));
    }
    match next_item(&mut stream).await {
        Err(watcher::Error::WatchError(s)) => assert_eq!(s.code, 410),
        other => panic!("expected a 410 from the watch, got {other:?}"),
    }
    assert!(matches!(
        next_item(&mut stream).await,
        Ok(watcher::Event::Init)
    ));
    let relisted = until_init_done(&mut stream).await;
    assert_eq!(
        names(&relisted),
        ["a", "b", "c", "d", "e", "f", "g"].map(String::from).into()
    );
}

#[tokio::test]
async fn kube_runtime_watcher_sees_adds_updates_and_deletes() {
    let fake = FakeApi::new();
    let services: Api<Service> = Api::default_namespaced(fake.client());
    services
        .create(&PostParams::default(), &service("first", json!({})))
        .await
        .unwrap();
    let mut stream = watcher(services.clone(), watcher::Config::default()).boxed();
    assert_eq!(
        names(&until_init_done(&mut stream).await),
        ["first".to_string()].into()
    );

    services
        .create(&PostParams::default(), &service("second", json!({})))
        .await
        .unwrap();
    services
        .patch(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    services
        .delete("second", &DeleteParams::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(match next_item(&mut stream).await.unwrap() {
            watcher::Event::Apply(s) => format!("apply {}", s.metadata.name.unwrap()),
            watcher::Event::Delete(s) => format!("delete {}", s.metadata.name.unwrap()),
            _ => "other".into(),
        });
    }
    assert_eq!(seen, ["apply second", "apply first", "delete second"]);

    // Ended streams are resumed from the last resourceVersion, without a relist.
    fake.end_watches();
    services
        .create(&PostParams::default(), &service("third", json!({})))
        .await
        .unwrap();
    assert!(
        matches!(next_item(&mut stream).await.unwrap(), watcher::Event::Apply(s) if s.metadata.name.as_deref() == Some("third"))
    );

    // The streaming-list initial strategy works too.
    let mut streaming = watcher(
        services.clone(),
        watcher::Config::default().streaming_lists(),
    )
    .boxed();
    assert!(matches!(
        next_item(&mut streaming).await.unwrap(),
        watcher::Event::Init
    ));
    assert_eq!(
        names(&until_init_done(&mut streaming).await),
        ["first", "third"].map(String::from).into()
    );
}

#[tokio::test]
async fn reflector_store_follows_the_fake() {
    let fake = FakeApi::new();
    let client = fake.client();
    let api = pools(client);
    api.create(&PostParams::default(), &ippool("a"))
        .await
        .unwrap();
    let writer = reflector::store::Writer::new(ippool_resource());
    let reader = writer.as_reader();
    let mut stream = reflector(writer, watcher(api.clone(), watcher::Config::default())).boxed();
    until_init_done(&mut stream).await;
    tokio::time::timeout(WAIT, reader.wait_until_ready())
        .await
        .expect("store ready")
        .unwrap();
    let current = |r: &reflector::Store<DynamicObject>| {
        names(&r.state().iter().map(|o| (**o).clone()).collect::<Vec<_>>())
    };
    assert_eq!(current(&reader), ["a".to_string()].into());

    api.create(&PostParams::default(), &ippool("b"))
        .await
        .unwrap();
    next_item(&mut stream).await.unwrap();
    assert_eq!(current(&reader), ["a", "b"].map(String::from).into());
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"priority": 4}})),
    )
    .await
    .unwrap();
    next_item(&mut stream).await.unwrap();
    let b = reader
        .get(&reflector::ObjectRef::new_with("b", ippool_resource()))
        .unwrap();
    assert_eq!(b.data["spec"]["priority"], 4);
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(matches!(
        next_item(&mut stream).await.unwrap(),
        watcher::Event::Delete(_)
    ));
    assert_eq!(current(&reader), ["b".to_string()].into());
}

#[tokio::test]
async fn injected_faults_fail_or_delay_matching_requests_only() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    fake.inject(
        Fault::fail(500)
            .verb(Verb::Create)
            .resource("ippools")
            .times(2),
    );
    for _ in 0..2 {
        let s = api_status(api.create(&PostParams::default(), &ippool("p")).await);
        assert_eq!(
            (s.code, s.reason.as_str(), s.status),
            (
                500,
                "InternalError",
                Some(kube::core::response::StatusSummary::Failure)
            )
        );
    }
    // Other verbs and resources are unaffected; the third create goes through.
    assert_eq!(api_status(api.get("p").await).code, 404);
    api.create(&PostParams::default(), &ippool("p"))
        .await
        .unwrap();

    // A fault after the commit: the write happened, the client saw an error.
    fake.inject(Fault::fail(504).verb(Verb::Create).after_commit());
    let s = api_status(api.create(&PostParams::default(), &ippool("q")).await);
    assert_eq!((s.code, s.reason.as_str()), (504, "Timeout"));
    assert!(fake.get("ippools", None, "q").is_some());

    fake.inject(Fault::fail(429).resource("ippools/status").always());
    let pp = PatchParams::default();
    assert_eq!(
        api_status(
            api.patch_status("p", &pp, &Patch::Merge(json!({"status": {}})))
                .await
        )
        .code,
        429
    );
    assert_eq!(
        api_status(
            api.patch_status("p", &pp, &Patch::Merge(json!({"status": {}})))
                .await
        )
        .code,
        429
    );
    api.patch("p", &pp, &Patch::Merge(json!({"spec": {"priority": 1}})))
        .await
        .unwrap();
    fake.clear_faults();
    api.patch_status("p", &pp, &Patch::Merge(json!({"status": {}})))
        .await
        .unwrap();

    fake.inject(
        Fault::delay(Duration::from_millis(150))
            .verb(Verb::Get)
            .name("p"),
    );
    let started = std::time::Instant::now();
    api.get("p").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));

    let creates = fake
        .requests()
        .iter()
        .filter(|r| r.verb == Verb::Create && r.resource == "ippools")
        .count();
    assert_eq!(creates, 4);
}

#[tokio::test]
async fn outage_refuses_or_hangs_until_resumed() {
    let fake = FakeApi::new();
    let api = pools(fake.client());
    api.create(&PostParams::default(), &ippool("p"))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    until_init_done(&mut stream).await;
    // The watcher opens its watch only while polled: poll it while waiting for the watch.
    tokio::select! {
        _ = fake.wait_for_watches("ippools", 1, WAIT) => {}
        event = stream.next() => panic!("no event expected, got {event:?}"),
    }

    fake.outage(Outage::Refuse);
    assert_eq!(fake.watch_count(None), 0, "an outage ends open watches");
    match api.get("p").await {
        Err(kube::Error::Service(e)) => assert!(e.to_string().contains("simulated outage"), "{e}"),
        other => panic!("expected a transport error, got {other:?}"),
    }
    fake.resume();
    api.get("p").await.unwrap();

    fake.outage(Outage::Hang);
    let hung = tokio::spawn({
        let api = api.clone();
        async move { api.get("p").await }
    });
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(!hung.is_finished(), "requests hang during an outage");
    fake.resume();
    hung.await.unwrap().unwrap();
}

#[tokio::test]
async fn errors_are_status_objects_with_code_and_reason() {
    let fake = FakeApi::new();
    let client = fake.client();
    let raw = |req: http::Request<Vec<u8>>| {
        let client = client.clone();
        async move { api_status(client.request_text(req).await) }
    };
    let s = raw(http::Request::get("/apis/vipam.io/v1alpha1/nothings")
        .body(vec![])
        .unwrap())
    .await;
    assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
    let s = raw(http::Request::post("/api/v1/services")
        .header("content-type", "application/json")
        .body(b"{}".to_vec())
        .unwrap())
    .await;
    assert_eq!((s.code, s.reason.as_str()), (405, "MethodNotAllowed"));
    let s = raw(http::Request::post("/api/v1/namespaces/default/services")
        .header("content-type", "application/json")
        .body(b"{not json".to_vec())
        .unwrap())
    .await;
    assert_eq!((s.code, s.reason.as_str()), (400, "BadRequest"));
    let s = raw(http::Request::post("/api/v1/namespaces/default/services")
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({"metadata": {"name": "x", "namespace": "other"}})).unwrap(),
        )
        .unwrap())
    .await;
    assert_eq!(s.code, 400);
    let s = raw(http::Request::post("/api/v1/namespaces/default/services")
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({"metadata": {"name": "x", "labels": {"bad key!": "v"}}}))
                .unwrap(),
        )
        .unwrap())
    .await;
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    let s = raw(http::Request::post("/api/v1/namespaces/default/services")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&json!({"metadata": {}})).unwrap())
        .unwrap())
    .await;
    assert_eq!(s.code, 422);
    let s = raw(
        http::Request::post("/api/v1/namespaces/default/services?dryRun=Some")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&json!({"metadata": {"name": "x"}})).unwrap())
            .unwrap(),
    )
    .await;
    assert_eq!(s.code, 400);
    let s = raw(http::Request::post("/api/v1/namespaces/default/services")
        .header("content-type", "application/json")
        .body(
            serde_json::to_vec(&json!({"metadata": {"name": "x", "resourceVersion": "5"}}))
                .unwrap(),
        )
        .unwrap())
    .await;
    assert_eq!((s.code, s.reason.as_str()), (500, "InternalError"));
}

#[tokio::test]
async fn discovery_version_and_other_resources() {
    let fake = FakeApi::new();
    let client = fake.client();
    assert_eq!(client.apiserver_version().await.unwrap().minor, "33");
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk(
            "vipam.io",
            "v1alpha1",
            "IPAllocation",
        ))
        .expect("ipallocations discovered");
    assert_eq!(
        (ar.plural.as_str(), caps.scope),
        ("ipallocations", kube::discovery::Scope::Cluster)
    );
    assert!(discovery.has_group("coordination.k8s.io") && discovery.has_group("discovery.k8s.io"));

    // A namespace and its namespaced objects share the /namespaces/ path prefix.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ns = namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "vipam-system"}})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "vipam-system");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"k": "v"}})).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        namespaces
            .get("vipam-system")
            .await
            .unwrap()
            .metadata
            .name
            .as_deref(),
        Some("vipam-system")
    );

    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "vipam-system");
    let ev = events.create(&PostParams::default(), &serde_json::from_value(json!({
        "metadata": {"generateName": "web."}, "eventTime": "2025-01-01T00:00:00.000000Z", "reason": "IPAllocated",
        "action": "Allocate", "reportingController": "vipam.io/controller", "reportingInstance": "x", "type": "Normal",
    })).unwrap()).await.unwrap();
    assert!(ev.metadata.name.unwrap().starts_with("web."));
    // The same resource name in two groups are two stores.
    assert!(fake.list("events", None).is_empty());
    assert_eq!(fake.list("events.events.k8s.io", None).len(), 1);

    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::default_namespaced(client.clone());
    slices.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4", "endpoints": []})).unwrap()).await.unwrap();
    assert_eq!(
        slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let hooks: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    hooks
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "vipam"}})).unwrap(),
        )
        .await
        .unwrap();
    assert!(
        fake.get_as::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>(
            None, "vipam"
        )
        .is_some()
    );

    // Metadata-only watchers get PartialObjectMetadata.
    let cms_meta: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::namespaced(client.clone(), "vipam-system");
    let meta = watcher(cms_meta, watcher::Config::default());
    let listed: Vec<_> = meta.applied_objects().take(1).try_collect().await.unwrap();
    assert_eq!(listed[0].metadata.name.as_deref(), Some("c"));
}

#[tokio::test]
async fn seeded_objects_keep_their_status_and_are_watched() {
    let fake = FakeApi::new();
    let services: Api<Service> = Api::default_namespaced(fake.client());
    let mut s = service("web", json!({}));
    s.status =
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "192.168.0.9"}]}}))
            .unwrap();
    let stored = fake.seed(&s);
    assert_eq!(stored["metadata"]["resourceVersion"], "1");
    let got = services.get("web").await.unwrap();
    assert_eq!(
        got.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
            .ip
            .as_deref(),
        Some("192.168.0.9")
    );
    let typed: Service = fake.get_as(Some("default"), "web").unwrap();
    assert_eq!(typed.metadata.uid, got.metadata.uid);
    let err = fake
        .try_seed(json!({"apiVersion": "v9", "kind": "Nothing", "metadata": {"name": "x"}}))
        .unwrap_err();
    assert_eq!(err.code, 400);

    let waiter = tokio::spawn({
        let fake = fake.clone();
        async move {
            fake.wait_for_object("services", Some("default"), "web", WAIT, |o| {
                o["metadata"]["labels"]["ready"] == "yes"
            })
            .await
        }
    });
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"ready": "yes"}}})),
        )
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap()["metadata"]["labels"]["ready"], "yes");
}

#[tokio::test]
async fn http_mode_serves_the_same_state_to_a_kubeconfig_client_and_raw_requests() {
    let fake = FakeApi::new();
    let server = fake
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .expect("bind a loopback port");
    let path = std::env::temp_dir().join(format!(
        "vipam-fake-{}-{}.kubeconfig",
        std::process::id(),
        server.addr().port()
    ));
    server.write_kubeconfig(&path).unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).unwrap();

    let api = pools(client.clone());
    api.create(&PostParams::default(), &ippool("over-http"))
        .await
        .unwrap();
    assert!(
        fake.get("ippools", None, "over-http").is_some(),
        "one state behind both doors"
    );
    fake.seed(ippool("seeded"));
    assert_eq!(
        names(&api.list(&ListParams::default()).await.unwrap().items),
        ["over-http", "seeded"].map(String::from).into()
    );
    let s = api_status(api.create(&PostParams::default(), &ippool("seeded")).await);
    assert_eq!(s.reason, "AlreadyExists");

    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    until_init_done(&mut stream).await;
    pools(fake.client())
        .delete("seeded", &DeleteParams::default())
        .await
        .unwrap();
    assert!(matches!(
        next_item(&mut stream).await.unwrap(),
        watcher::Event::Delete(_)
    ));

    // As curl would: plain HTTP/1.1 with a JSON body.
    let body =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"by-curl"},"data":{"a":"b"}}"#;
    let created = raw_http(server.addr(), &format!(
        "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )).await;
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let got = raw_http(server.addr(), "GET /api/v1/namespaces/default/configmaps/by-curl HTTP/1.1\r\nHost: fake\r\nConnection: close\r\n\r\n").await;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.contains(r#""a":"b""#),
        "{got}"
    );

    // Outages look like a dead server over HTTP too.
    fake.outage(Outage::Refuse);
    assert!(matches!(api.get("over-http").await, Err(e) if !matches!(e, kube::Error::Api(_))));
    fake.resume();
    api.get("over-http").await.unwrap();
    assert_eq!(
        server
            .client()
            .await
            .unwrap()
            .apiserver_version()
            .await
            .unwrap()
            .major,
        "1"
    );
}

async fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}
