//! The CRD YAML in manifests/crds/ is generated from the Rust types; this fails when it drifts.
//! Regenerate with `cargo run -- crds --out-dir manifests/crds`.

use std::path::Path;

#[test]
fn manifests_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/crds");
    let mut expected_files = Vec::new();
    for crd in vipam::api::crds() {
        let name = vipam::api::crd_file_name(&crd);
        let generated = serde_saphyr::to_string(&crd).expect("CRD serialises");
        let path = dir.join(&name);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -- crds --out-dir manifests/crds`",
                path.display()
            )
        });
        assert!(
            on_disk == generated,
            "{} drifted from the Rust types; run `cargo run -- crds --out-dir manifests/crds`",
            path.display()
        );
        expected_files.push(name);
    }
    // No stale CRD files either (kustomization.yaml lists them for kustomize/base).
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("manifests/crds exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "kustomization.yaml")
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(present, expected_files);
    // The kustomization names exactly the generated files.
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml"))
        .expect("manifests/crds/kustomization.yaml exists");
    let kustomization: serde_json::Value =
        serde_saphyr::from_str(&kustomization).expect("kustomization.yaml parses");
    let mut listed: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("kustomization.yaml has resources")
        .iter()
        .map(|r| r.as_str().expect("resource is a string").to_string())
        .collect();
    listed.sort();
    assert_eq!(
        listed, expected_files,
        "manifests/crds/kustomization.yaml must list exactly the generated CRD files"
    );
}

#[test]
fn crds_are_structural_and_carry_status_and_columns() {
    for crd in vipam::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        assert_eq!(crd.spec.group, "vipam.io");
        assert_eq!(crd.spec.scope, "Cluster", "{name}");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        let sub = version.subresources.as_ref().expect("subresources");
        assert!(sub.status.is_some(), "{name} has a status subresource");
        let columns: Vec<String> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        let wanted: &[&str] = match crd.spec.names.kind.as_str() {
            "IPPool" => &["Blocks", "Allocated", "Available", "Conflict", "Age"],
            "IPAllocation" => &["IP", "Pool", "Services", "Nodes", "Phase", "Age"],
            "L2Announcement" => &["Pools", "Mode", "Age"],
            "BGPPeer" => &["Peer", "Peer ASN", "My ASN", "Established", "Ready", "Age"],
            "BGPAnnouncement" => &["Pools", "Peers", "Ready", "Age"],
            other => panic!("unexpected CRD {other}"),
        };
        assert_eq!(columns, wanted, "{name}");
        // Shipped manifests carry nothing vipam rewrites at run time.
        let yaml = serde_saphyr::to_string(&crd).unwrap();
        assert!(!yaml.contains("caBundle"), "{name}");
        assert!(!yaml.contains("argocd.argoproj.io"), "{name}");
    }
}

#[test]
fn crd_defaults_and_rules() {
    let crds = vipam::api::crds();
    let json = serde_json::to_value(&crds).unwrap().to_string();
    for needle in [
        r#""autoAssign":{"default":true"#,
        r#""allowFirstLastIPs":{"default":false"#,
        "has(self.cidr) != has(self.start)",
        "self == oldSelf",
        r#""enum":["arp","address"]"#,
        r#""peerPort":{"default":179"#,
        r#""holdTime":{"default":"9s""#,
        r#""gracefulRestart":{"default":true"#,
        r#""aggregationLength":{"default":32"#,
        r#""aggregationLengthV6":{"default":128"#,
    ] {
        assert!(json.contains(needle), "CRDs lack {needle}");
    }
}
