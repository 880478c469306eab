//! `vipam check` end to end: the example tree gives the exact expected table, every broken case
//! exits 1 naming its problem, and usage errors exit 2.

mod cli;

use std::path::Path;

use cli::{root, stdout, vipam};

#[test]
fn gitops_example_prints_the_expected_table() {
    let out = vipam(&["check", "examples/gitops"], None);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let expected = std::fs::read_to_string(root().join("tests/data/gitops.table.txt")).unwrap();
    assert_eq!(stdout(&out), expected);
}

#[test]
fn gitops_example_markdown_is_stable() {
    let out = vipam(&["check", "examples/gitops", "--format", "markdown"], None);
    assert_eq!(out.status.code(), Some(0));
    let expected = std::fs::read_to_string(root().join("tests/data/gitops.markdown.md")).unwrap();
    assert_eq!(stdout(&out), expected);
}

#[test]
fn gitops_example_json_has_the_documented_shape() {
    let out = vipam(&["check", "examples/gitops", "--format", "json"], None);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["summary"]["services"], 13);
    assert_eq!(doc["summary"]["addresses"], 12);
    let pool = &doc["pools"][0];
    assert_eq!(pool["name"], "lan");
    assert_eq!(
        (
            pool["capacity"].as_str(),
            pool["allocated"].as_str(),
            pool["available"].as_str()
        ),
        (Some("20"), Some("12"), Some("8"))
    );
    assert_eq!(pool["freeRanges"][0], "192.168.0.232-192.168.0.239");
    let plex = doc["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["namespace"] == "plex")
        .unwrap();
    assert_eq!(plex["ip"], "192.168.0.230");
    assert_eq!(plex["how"], "shared:media");
    assert_eq!(plex["predicted"], false);
    assert_eq!(
        plex["source"]["file"],
        "examples/gitops/apps/plex/service.yaml"
    );
    assert!(doc["problems"].as_array().unwrap().is_empty());
}

#[test]
fn kustomize_output_on_stdin_gives_the_same_allocations() {
    // What `kubectl kustomize examples/gitops | vipam check -` feeds in: every file, concatenated.
    let mut stream = String::new();
    let mut files = Vec::new();
    collect_yaml(&root().join("examples/gitops"), &mut files);
    files.sort();
    for file in files {
        if file.file_name().is_some_and(|n| n == "kustomization.yaml") {
            continue;
        }
        stream.push_str("---\n");
        stream.push_str(&std::fs::read_to_string(file).unwrap());
    }
    let from_dir = stdout(&vipam(
        &["check", "examples/gitops", "--format", "json"],
        None,
    ));
    let out = vipam(&["check", "-", "--format", "json"], Some(&stream));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let strip = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
        for a in v["allocations"].as_array_mut().unwrap() {
            a.as_object_mut().unwrap().remove("source");
        }
        v["allocations"].clone()
    };
    assert_eq!(strip(&stdout(&out)), strip(&from_dir));
}

fn collect_yaml(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_yaml(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn every_broken_case_fails_naming_its_problem() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "pin-outside-pool",
            "pin_outside_pools",
            &[
                "pins 192.168.0.50, which is outside every IPPool",
                "lan (192.168.0.220-192.168.0.239)",
            ],
        ),
        (
            "duplicate-ip",
            "ip_in_use",
            &["192.168.0.222 is already used by Service grafana/grafana, which has no sharing key"],
        ),
        ("port-clash", "port_clash", &["already uses TCP/443"]),
        (
            "overlapping-pools",
            "overlapping_pools",
            &["IPPool lan-extra overlaps IPPool lan on 192.168.0.233-192.168.0.238"],
        ),
        (
            "exhausted-pool",
            "pool_exhausted",
            &[
                "no free IPv4 address",
                "tiny (192.168.0.250-192.168.0.251; 2 of 2 allocated)",
            ],
        ),
        (
            "malformed-annotation",
            "malformed_annotation",
            &["annotation vipam.io/ips: \"192.168.0.300\" is not an IP address"],
        ),
        (
            "conflicting-annotations",
            "conflicting_annotations",
            &[
                "vipam.io/ips (192.168.0.222) and metallb.io/loadBalancerIPs (192.168.0.223) disagree",
            ],
        ),
        (
            "malformed-yaml",
            "malformed_yaml",
            &["broken.yaml:17", "malformed YAML"],
        ),
        (
            "cross-namespace-without-consent",
            "cross_namespace",
            &["does not allow namespace grafana"],
        ),
        (
            "invalid-pool",
            "invalid_pool",
            &[
                "stop 192.168.0.190 is before start 192.168.0.199",
                "127.0.0.1, a loopback address",
            ],
        ),
        (
            "unknown-field",
            "unknown_field",
            &[
                "unknown-field/resources.yaml:12 (document 1): IPPool lan: unknown field spec.avoidBuggyIps (did you mean avoidBuggyIPs?)",
            ],
        ),
    ];
    let dir = root().join("examples/broken");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = cases.iter().map(|c| c.0.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every broken case is tested");
    for (case, kind, needles) in cases {
        let path = format!("examples/broken/{case}");
        let out = vipam(&["check", &path], None);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{case}:\n{text}");
        assert!(
            text.contains(&format!("error[{kind}]: examples/broken/{case}/")),
            "{case} names {kind}:\n{text}"
        );
        for needle in *needles {
            assert!(text.contains(needle), "{case} lacks {needle:?}:\n{text}");
        }
        let json: serde_json::Value =
            serde_json::from_str(&stdout(&vipam(&["check", &path, "--format", "json"], None)))
                .unwrap();
        assert_eq!(json["ok"], false, "{case}");
        assert!(
            json["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["kind"] == *kind && p["source"]["line"].as_u64().unwrap() > 0),
            "{case}"
        );
    }
}

#[test]
fn malformed_yaml_does_not_hide_the_other_files() {
    let out = vipam(&["check", "examples/broken/malformed-yaml"], None);
    let text = stdout(&out);
    assert!(
        text.contains("web/api"),
        "the valid file's Service is still allocated:\n{text}"
    );
}

#[test]
fn usage_and_io_errors_exit_2() {
    let out = vipam(&["check", "no/such/dir"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no/such/dir: no such file or directory")
    );
    let out = vipam(&["check", "--format", "xml", "examples/gitops"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn warnings_pass_unless_strict() {
    let stream = "apiVersion: vipam.io/v1alpha1\nkind: IPPool\nmetadata: {name: lonely}\nspec:\n  blocks: [{cidr: 192.0.2.0/28}]\n";
    let out = vipam(&["check", "-"], Some(stream));
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("warning[pool_not_announced]: <stdin>:1 (document 1): IPPool lonely is covered by no L2Announcement or BGPAnnouncement"));
    let out = vipam(&["check", "--strict", "-"], Some(stream));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn crds_command_prints_all_three() {
    let out = vipam(&["crds"], None);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for name in [
        "ippools.vipam.io",
        "ipallocations.vipam.io",
        "l2announcements.vipam.io",
    ] {
        assert!(text.contains(&format!("name: {name}")), "{name}");
    }
}
