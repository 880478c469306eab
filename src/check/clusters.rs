//! `vipam check --clusters`: several clusters' trees that share a LAN. Each tree is checked as
//! usual; across trees, every address two clusters could both hand out or announce (pools that
//! overlap, one address pinned in both) is an error naming both clusters and files.

use std::fmt::Write;

use serde_json::json;

use super::report::{problem_line, to_json};
use super::{CheckOptions, Format, LoadError, Problem, Report, Severity, check_inputs, render};
use crate::core::range::{FamilySets, format_ranges};

/// One cluster's tree and its report.
#[derive(Debug, Clone)]
pub struct ClusterRun {
    pub name: String,
    pub path: String,
    pub report: Report,
}

/// Every cluster's report, and what clusters share.
#[derive(Debug, Clone, Default)]
pub struct ClusterReport {
    pub clusters: Vec<ClusterRun>,
    /// Addresses two clusters could both hand out or announce.
    pub across: Vec<Problem>,
}

impl ClusterReport {
    /// Errors in any tree or across trees (and warnings too with `strict`).
    pub fn failed(&self, strict: bool) -> bool {
        !self.across.is_empty()
            || self
                .clusters
                .iter()
                .any(|c| c.report.errors() > 0 || (strict && c.report.warnings() > 0))
    }
}

/// Checks each `(name, path)` tree, then every pair of them.
pub fn check_clusters(
    clusters: &[(String, String)],
    options: &CheckOptions,
) -> Result<ClusterReport, LoadError> {
    let mut out = ClusterReport::default();
    for (name, path) in clusters {
        if out.clusters.iter().any(|c| &c.name == name) {
            return Err(LoadError::DuplicateCluster(name.clone()));
        }
        // Standard input is not a tree here: every cluster names its own path.
        let report = check_inputs(std::slice::from_ref(path), &mut std::io::empty(), options)?;
        out.clusters.push(ClusterRun {
            name: name.clone(),
            path: path.clone(),
            report,
        });
    }
    for (i, a) in out.clusters.iter().enumerate() {
        for b in &out.clusters[i + 1..] {
            out.across.extend(shared_pools(a, b));
            out.across.extend(shared_pins(a, b));
        }
    }
    Ok(out)
}

fn sets(ranges: &[crate::core::range::IpRange]) -> FamilySets {
    let mut set = FamilySets::default();
    for r in ranges {
        set.insert_range(r);
    }
    set
}

fn shared_pools(a: &ClusterRun, b: &ClusterRun) -> Vec<Problem> {
    let mut found = Vec::new();
    for pa in &a.report.pools {
        let owned_a = sets(&pa.owned);
        for pb in &b.report.pools {
            let shared = owned_a.intersection(&sets(&pb.owned));
            if shared.is_empty() {
                continue;
            }
            let shared: Vec<_> = shared.ranges().collect();
            found.push(Problem {
                severity: Severity::Error,
                kind: "cluster_overlap",
                message: format!(
                    "cluster {} IPPool {} ({}) and cluster {} IPPool {} ({}) could both hand out \
                     and announce {}: one LAN, two owners; give each cluster its own range",
                    a.name,
                    pa.name,
                    pa.source,
                    b.name,
                    pb.name,
                    pb.source,
                    format_ranges(&shared)
                ),
                source: Some(pa.source.clone()),
                related: vec![pb.source.clone()],
            });
        }
    }
    found
}

fn shared_pins(a: &ClusterRun, b: &ClusterRun) -> Vec<Problem> {
    let mut found = Vec::new();
    for ra in a.report.allocations.iter().filter(|r| !r.predicted) {
        for rb in b
            .report
            .allocations
            .iter()
            .filter(|r| !r.predicted && r.ip == ra.ip)
        {
            found.push(Problem {
                severity: Severity::Error,
                kind: "cluster_pinned_twice",
                message: format!(
                    "{} is pinned in cluster {} by Service {}/{} ({}) and in cluster {} by \
                     Service {}/{} ({}): both clusters would announce it",
                    ra.ip,
                    a.name,
                    ra.namespace,
                    ra.name,
                    ra.source,
                    b.name,
                    rb.namespace,
                    rb.name,
                    rb.source
                ),
                source: Some(ra.source.clone()),
                related: vec![rb.source.clone()],
            });
        }
    }
    found
}

/// Renders every cluster's report, then what they share.
pub fn render_clusters(report: &ClusterReport, format: Format, verbose: bool) -> String {
    match format {
        Format::Json => {
            let doc = json!({
                "version": super::report::JSON_VERSION,
                "ok": !report.failed(false),
                "clusters": report.clusters.iter().map(|c| json!({
                    "name": c.name,
                    "path": c.path,
                    "report": to_json(&c.report, verbose),
                })).collect::<Vec<_>>(),
                "across": report.across,
            });
            serde_json::to_string_pretty(&doc).expect("JSON of plain data") + "\n"
        }
        Format::Table | Format::Markdown => {
            let markdown = format == Format::Markdown;
            let mut out = String::new();
            for c in &report.clusters {
                if markdown {
                    let _ = writeln!(out, "# Cluster {} (`{}`)\n", c.name, c.path);
                } else {
                    let _ = writeln!(out, "=== CLUSTER {} ({})", c.name, c.path);
                }
                out.push_str(&render(&c.report, format, verbose));
                out.push('\n');
            }
            out.push_str(if markdown {
                "# Across clusters\n\n"
            } else {
                "=== ACROSS CLUSTERS\n"
            });
            if report.across.is_empty() {
                out.push_str("No address could be handed out or announced by two clusters.\n");
            }
            for p in &report.across {
                let line = problem_line(p);
                if markdown {
                    let _ = writeln!(out, "- {}", line.replace('\n', " ").replace('|', "\\|"));
                } else {
                    let _ = writeln!(out, "{line}");
                }
            }
            let _ = writeln!(
                out,
                "\n{}: {} clusters, {} shared address problem(s)",
                if report.failed(false) { "FAILED" } else { "OK" },
                report.clusters.len(),
                report.across.len()
            );
            out
        }
    }
}
