use super::*;

fn run(stream: &str) -> Report {
    check_inputs(
        &["-".to_string()],
        &mut stream.as_bytes(),
        &CheckOptions::default(),
    )
    .unwrap()
}

const POOL: &str = "apiVersion: vipam.io/v1alpha1
kind: IPPool
metadata: {name: lan}
spec:
  blocks:
    - {start: 192.0.2.10, stop: 192.0.2.13}
    - {cidr: '2001:db8::/126'}
---
apiVersion: vipam.io/v1alpha1
kind: L2Announcement
metadata: {name: lan}
spec: {}
";

fn service(ns: &str, name: &str, annotations: &str, extra_spec: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations: {{{annotations}}}\nspec:\n  type: LoadBalancer\n  ports: [{{port: 80}}]\n{extra_spec}"
    )
}

fn kinds(report: &Report) -> Vec<&'static str> {
    report.problems.iter().map(|p| p.kind).collect()
}

#[test]
fn non_kubernetes_yaml_and_other_kinds_are_skipped_quietly() {
    let stream = format!(
        "{POOL}---\njust: some config\n---\n- a\n- list\n---\n# only a comment\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n{}",
        service("a", "web", "", "")
    );
    let report = run(&stream);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.allocations.len(), 1);
    assert_eq!(report.allocations[0].source.document, 6);
}

#[test]
fn list_objects_are_expanded() {
    let stream = format!(
        "{POOL}---\napiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Service\n    metadata: {{name: a, namespace: x}}\n    spec: {{type: LoadBalancer}}\n  - apiVersion: v1\n    kind: Service\n    metadata: {{name: b, namespace: x}}\n    spec: {{type: LoadBalancer}}\n"
    );
    let report = run(&stream);
    assert_eq!(report.services, 2);
}

#[test]
fn ipv6_and_dual_stack_services() {
    let stream = format!(
        "{POOL}{}{}",
        service("a", "v6", "", "  ipFamilies: [IPv6]\n"),
        service("a", "dual", "", "  ipFamilyPolicy: RequireDualStack\n"),
    );
    let report = run(&stream);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let rows: Vec<(String, String)> = report
        .allocations
        .iter()
        .map(|a| (a.ip.to_string(), format!("{}/{}", a.namespace, a.name)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("192.0.2.10".to_string(), "a/dual".to_string()),
            ("2001:db8::".to_string(), "a/dual".to_string()),
            ("2001:db8::1".to_string(), "a/v6".to_string()),
        ]
    );
    let pool = &report.pools[0];
    assert_eq!((pool.capacity, pool.allocated, pool.available), (8, 3, 5));
}

#[test]
fn problems_point_at_the_offending_line() {
    let stream = format!(
        "{POOL}{}",
        service("a", "web", "vipam.io/ips: 192.0.2.99", "")
    );
    let report = run(&stream);
    assert_eq!(kinds(&report), vec!["pin_outside_pools"]);
    let source = report.problems[0].source.clone().unwrap();
    // The annotation is on line 6 of the Service document, which starts on line 14.
    assert_eq!((source.document, source.line), (3, 19));
}

#[test]
fn written_by_vipam_and_ledger_objects_are_flagged() {
    let stream = format!(
        "{POOL}{}---\napiVersion: vipam.io/v1alpha1\nkind: IPAllocation\nmetadata: {{name: v4-192-0-2-10}}\nspec: {{ip: 192.0.2.10, pool: lan}}\n",
        service("a", "web", "vipam.io/assigned-ips: 192.0.2.10", "")
    );
    let report = run(&stream);
    assert_eq!(kinds(&report), vec!["assigned_ips_in_git", "ledger_in_git"]);
    assert_eq!(report.errors(), 1);
}

#[test]
fn duplicates_and_unsupported_versions() {
    let stream = format!(
        "{POOL}---\n{POOL}{}{}---\napiVersion: vipam.io/v1beta9\nkind: IPPool\nmetadata: {{name: future}}\nspec: {{}}\n",
        service("a", "web", "", ""),
        service("a", "web", "", "")
    );
    let report = run(&stream);
    let mut k = kinds(&report);
    k.sort();
    assert_eq!(
        k,
        vec![
            "duplicate_object",
            "duplicate_object",
            "unsupported_version"
        ]
    );
    // The second L2Announcement with the same name is not a pool problem.
    assert_eq!(report.pools.len(), 1);
}

#[test]
fn services_of_other_classes_are_ignored_and_listed() {
    let stream = format!(
        "{POOL}{}{}",
        service(
            "a",
            "cilium",
            "",
            "  loadBalancerClass: io.cilium/l2-announcer\n"
        ),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: plain, namespace: a}\nspec: {type: ClusterIP}\n"
    );
    let report = run(&stream);
    assert_eq!(report.services, 0);
    let ignored: Vec<String> = report
        .ignored
        .iter()
        .map(|(s, why)| format!("{s}: {why}"))
        .collect();
    assert_eq!(
        ignored,
        vec![
            "a/cilium: loadBalancerClass io.cilium/l2-announcer",
            "a/plain: type ClusterIP"
        ]
    );
    assert!(render(&report, Format::Table, true).contains("IGNORED SERVICES"));
}

#[test]
fn kustomization_namespace_applies_below_it() {
    let dir = std::env::temp_dir().join(format!("vipam-check-ns-{}", std::process::id()));
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(dir.join("pool.yaml"), POOL).unwrap();
    std::fs::write(
        app.join("kustomization.yaml"),
        "namespace: media\nresources: [svc.yaml]\n",
    )
    .unwrap();
    std::fs::write(
        app.join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {type: LoadBalancer}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("top.yml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: top}\nspec: {type: LoadBalancer}\n",
    )
    .unwrap();
    let report = check_inputs(
        &[dir.display().to_string()],
        &mut std::io::empty(),
        &CheckOptions::default(),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let names: Vec<String> = report
        .allocations
        .iter()
        .map(|a| format!("{}/{}", a.namespace, a.name))
        .collect();
    assert_eq!(names, vec!["default/top", "media/web"]);
    assert_eq!(report.files, 3);
}

const BGP_POOL: &str = "apiVersion: vipam.io/v1alpha1
kind: IPPool
metadata: {name: routed}
spec:
  blocks: [{cidr: 198.51.100.0/28}]
";

#[test]
fn a_pool_announced_by_bgp_only_is_announced() {
    let stream = format!(
        "{BGP_POOL}---\napiVersion: vipam.io/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{peerAddress: 192.0.2.1, peerASN: 65000, myASN: 4200000001}}\n---\napiVersion: vipam.io/v1alpha1\nkind: BGPAnnouncement\nmetadata: {{name: routed}}\nspec: {{ipPools: [routed], communities: ['65000:1', no-export, 'large:65000:1:2'], localPref: 200}}\n"
    );
    let report = run(&stream);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.pools[0].announced);
    // Without any announcement the pool is reported, naming both kinds.
    let report = run(BGP_POOL);
    assert_eq!(kinds(&report), ["pool_not_announced"]);
    assert!(
        report.problems[0]
            .message
            .contains("no L2Announcement or BGPAnnouncement"),
        "{}",
        report.problems[0].message
    );
}

#[test]
fn invalid_bgp_objects_fail_naming_every_field() {
    let stream = format!(
        "{BGP_POOL}---\napiVersion: vipam.io/v1alpha1\nkind: BGPPeer\nmetadata: {{name: tor}}\nspec: {{peerAddress: 192.0.2.999, peerASN: 0, myASN: 65000, holdTime: 1s}}\n---\napiVersion: vipam.io/v1alpha1\nkind: BGPAnnouncement\nmetadata: {{name: routed}}\nspec: {{ipPools: [routed, nowhere], peers: [elsewhere], communities: ['65000:70000'], aggregationLength: 40}}\n"
    );
    let report = run(&stream);
    let found = kinds(&report);
    for kind in ["invalid_bgppeer", "invalid_bgpannouncement"] {
        assert!(
            found.contains(&kind),
            "{kind} missing: {:?}",
            report.problems
        );
    }
    let peer = report
        .problems
        .iter()
        .find(|p| p.kind == "invalid_bgppeer")
        .unwrap();
    for field in ["spec.peerAddress", "spec.peerASN", "spec.holdTime"] {
        assert!(peer.message.contains(field), "{}", peer.message);
    }
    let announcement = report
        .problems
        .iter()
        .find(|p| p.kind == "invalid_bgpannouncement")
        .unwrap();
    for field in ["spec.communities[0]", "spec.aggregationLength"] {
        assert!(
            announcement.message.contains(field),
            "{}",
            announcement.message
        );
    }
    // A valid announcement naming what is not there only warns.
    let stream = format!(
        "{BGP_POOL}---\napiVersion: vipam.io/v1alpha1\nkind: BGPAnnouncement\nmetadata: {{name: routed}}\nspec: {{ipPools: [routed, nowhere], peers: [elsewhere]}}\n"
    );
    let report = run(&stream);
    assert_eq!(
        kinds(&report),
        ["no_bgp_peer", "unknown_peer", "unknown_pool"],
        "{:?}",
        report.problems
    );
    assert_eq!(report.errors(), 0);
}
