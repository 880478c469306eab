//! `src/core` stays pure: no Kubernetes client, async runtime, web framework or netlink.

use std::path::Path;

const FORBIDDEN: &[&str] = &["kube", "k8s_openapi", "tokio", "axum", "rtnetlink", "pnet"];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/core is readable") {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Finds a forbidden crate used as a path root (`use kube::...`, `kube::Api`, `extern crate`).
fn offending_lines(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for name in FORBIDDEN {
            let as_path = format!("{name}::");
            let hits = code.match_indices(&as_path).any(|(i, _)| {
                let before = code[..i].chars().last();
                // Not part of a longer identifier or path (e.g. `my_kube::` or `crate::kube::`).
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            });
            let extern_crate = code.contains(&format!("extern crate {name}"));
            if hits || extern_crate {
                found.push(format!("line {}: {}", n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn core_imports_no_io_crates() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(
        files.len() >= 6,
        "expected the core modules under {}",
        core.display()
    );
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for hit in offending_lines(&text) {
            problems.push(format!("{}: {hit}", file.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "src/core must stay pure:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_detector_catches_imports() {
    assert_eq!(offending_lines("use kube::Api;").len(), 1);
    assert_eq!(offending_lines("    let x = tokio::spawn(f);").len(), 1);
    assert_eq!(
        offending_lines("use k8s_openapi::api::core::v1::Service;").len(),
        1
    );
    assert_eq!(offending_lines("extern crate pnet;").len(), 1);
    assert!(offending_lines("// kube::Api in a comment").is_empty());
    assert!(offending_lines("use crate::core::range;").is_empty());
}

/// `src/import` converts files to objects: no client, runtime, web framework or netlink (the
/// Kubernetes object types of k8s_openapi are data and allowed).
#[test]
fn import_imports_no_io_crates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/import");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(files.len() >= 4, "expected the import modules");
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for hit in offending_lines(&text) {
            if !hit.contains("k8s_openapi::") {
                problems.push(format!("{}: {hit}", file.display()));
            }
        }
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if [
                "crate::agent",
                "crate::controller",
                "crate::webhook",
                "crate::cache",
            ]
            .iter()
            .any(|m| code.contains(m))
            {
                problems.push(format!(
                    "{}: line {}: {}",
                    file.display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "src/import must stay pure:\n{}",
        problems.join("\n")
    );
}
