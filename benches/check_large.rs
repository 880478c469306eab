//! `vipam check` on a generated tree of 10,000 Services and 100 pools.
//!
//! `cargo bench --bench check_large`: writes the tree to a temporary directory (100 folders,
//! each with one pool, an L2Announcement and 100 Services: a third pinned, some sharing a key,
//! the rest auto), then times reading + checking + rendering, best and median of 5 runs.

use std::fmt::Write;
use std::time::{Duration, Instant};

use vipam::check::{CheckOptions, Format, check_inputs, render};

#[path = "common.rs"]
mod common;

fn generate(dir: &std::path::Path) {
    for p in 0..100u32 {
        let folder = dir.join(format!("team-{p:03}"));
        std::fs::create_dir_all(&folder).unwrap();
        let mut pool = String::new();
        let _ = write!(
            pool,
            "apiVersion: vipam.io/v1alpha1\nkind: IPPool\nmetadata:\n  name: pool-{p:03}\nspec:\n  \
             blocks:\n    - cidr: 2001:db8:{p:x}::/120\n  namespaces: [team-{p:03}]\n  priority: {}\n\
             ---\napiVersion: vipam.io/v1alpha1\nkind: L2Announcement\nmetadata:\n  name: team-{p:03}\n\
             spec:\n  ipPools: [pool-{p:03}]\n",
            p % 7
        );
        std::fs::write(folder.join("pool.yaml"), pool).unwrap();
        let mut services = String::new();
        for s in 0..100u32 {
            let annotations = match s % 6 {
                0 | 1 => format!("vipam.io/ips: 2001:db8:{p:x}::{:x}", 0x80 + s),
                2 => "vipam.io/sharing-key: web".to_string(),
                _ => String::new(),
            };
            let _ = write!(
                services,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{s:03}\n  \
                 namespace: team-{p:03}\n  annotations:\n    {}\nspec:\n  type: LoadBalancer\n  \
                 ipFamilies: [IPv6]\n  selector:\n    app: svc-{s:03}\n  ports:\n    - port: {}\n      \
                 protocol: TCP\n",
                if annotations.is_empty() {
                    "example.com/owner: team".to_string()
                } else {
                    annotations
                },
                8000 + s
            );
        }
        std::fs::write(folder.join("services.yaml"), services).unwrap();
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vipam-bench-check-{}", std::process::id()));
    generate(&dir);
    let inputs = vec![dir.display().to_string()];
    let options = CheckOptions::default();
    let mut times: Vec<Duration> = Vec::new();
    let mut summary = String::new();
    for _ in 0..5 {
        let start = Instant::now();
        let report = check_inputs(&inputs, &mut std::io::empty(), &options).unwrap();
        let out = render(&report, Format::Table, false);
        times.push(start.elapsed());
        assert_eq!(report.services, 10_000);
        assert_eq!(report.pools.len(), 100);
        assert_eq!(
            report.errors(),
            0,
            "{}",
            out.lines().rev().take(5).collect::<Vec<_>>().join("\n")
        );
        summary = out.lines().last().unwrap_or("").to_string();
    }
    let start = Instant::now();
    let loaded = vipam::check::load(&inputs, &mut std::io::empty()).unwrap();
    let load_time = start.elapsed();
    let start = Instant::now();
    let report = vipam::check::check_documents(loaded, &options);
    let check_time = start.elapsed();
    let start = Instant::now();
    let _ = render(&report, Format::Table, false);
    println!(
        "of one run: reading and parsing YAML {:.0} ms, checking {:.0} ms, rendering {:.0} ms",
        load_time.as_secs_f64() * 1000.0,
        check_time.as_secs_f64() * 1000.0,
        start.elapsed().as_secs_f64() * 1000.0
    );
    std::fs::remove_dir_all(&dir).unwrap();
    times.sort();
    println!("{summary}");
    println!(
        "vipam check, 10,000 Services / 100 pools / 200 files: best {:.0} ms, median {:.0} ms; peak RSS {} KiB",
        times[0].as_secs_f64() * 1000.0,
        times[2].as_secs_f64() * 1000.0,
        common::status_kib("VmHWM")
    );
}
