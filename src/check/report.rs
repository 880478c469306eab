//! Rendering a [`Report`] as a terminal table, stable JSON, or Markdown for docs.

use std::fmt::Write;

use serde_json::{Value, json};

use super::{Problem, Report, Severity};
use crate::core::range::format_ranges;

/// Output format of `vipam check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Markdown,
}

/// Version of the JSON document; bumped only on incompatible changes.
pub const JSON_VERSION: u32 = 1;

/// Renders the report; `verbose` adds the Services vipam ignores.
pub fn render(report: &Report, format: Format, verbose: bool) -> String {
    match format {
        Format::Table => table(report, verbose),
        Format::Json => {
            serde_json::to_string_pretty(&to_json(report, verbose)).expect("JSON of plain data")
                + "\n"
        }
        Format::Markdown => markdown(report),
    }
}

fn how(row: &super::AllocationRow) -> String {
    if row.predicted {
        format!("{}*", row.how)
    } else {
        row.how.clone()
    }
}

/// Left-aligned columns separated by two spaces.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub(super) fn problem_line(p: &Problem) -> String {
    let severity = match p.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut line = match &p.source {
        Some(s) => format!("{severity}[{}]: {s}: {}", p.kind, p.message),
        None => format!("{severity}[{}]: {}", p.kind, p.message),
    };
    for related in &p.related {
        let _ = write!(line, "\n    see {related}");
    }
    line
}

fn free_text(pool: &super::PoolRow) -> String {
    let mut text = format_ranges(&pool.free);
    if pool.free_truncated {
        text.push_str(", ...");
    }
    text
}

fn table(report: &Report, verbose: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "IP ALLOCATION");
    if report.allocations.is_empty() {
        out.push_str("(no LoadBalancer Services handled by vipam)\n");
    } else {
        let mut rows = vec![vec![
            "IP".into(),
            "SERVICE".into(),
            "POOL".into(),
            "HOW".into(),
        ]];
        for a in &report.allocations {
            rows.push(vec![
                a.ip.to_string(),
                format!("{}/{}", a.namespace, a.name),
                a.pool.clone(),
                how(a),
            ]);
        }
        out.push_str(&columns(&rows));
        if report.allocations.iter().any(|a| a.predicted) {
            out.push_str(
                "* predicted: auto-assigned addresses depend on the order Services are created\n",
            );
        }
    }
    out.push_str("\nPOOLS\n");
    if report.pools.is_empty() {
        out.push_str("(no valid IPPool)\n");
    } else {
        let mut rows = vec![vec![
            "NAME".into(),
            "BLOCKS".into(),
            "CAPACITY".into(),
            "ALLOCATED".into(),
            "AVAILABLE".into(),
            "FREE".into(),
        ]];
        for p in &report.pools {
            rows.push(vec![
                p.name.clone(),
                p.blocks.join(","),
                p.capacity.to_string(),
                p.allocated.to_string(),
                p.available.to_string(),
                free_text(p),
            ]);
        }
        out.push_str(&columns(&rows));
    }
    if verbose && !report.ignored.is_empty() {
        out.push_str("\nIGNORED SERVICES (not vipam's)\n");
        for (service, why) in &report.ignored {
            let _ = writeln!(out, "{service}: {why}");
        }
    }
    if !report.problems.is_empty() {
        out.push_str("\nPROBLEMS\n");
        for p in &report.problems {
            out.push_str(&problem_line(p));
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "\n{}: {}, {}, {}, {}; {}, {}",
        if report.errors() == 0 { "OK" } else { "FAILED" },
        count(report.files, "file"),
        count(report.services, "Service"),
        count(distinct_ips(report), "address"),
        count(report.pools.len(), "pool"),
        count(report.errors(), "error"),
        count(report.warnings(), "warning"),
    );
    out
}

fn count(n: usize, noun: &str) -> String {
    match (n, noun) {
        (1, _) => format!("1 {noun}"),
        (_, "address") => format!("{n} addresses"),
        _ => format!("{n} {noun}s"),
    }
}

fn distinct_ips(report: &Report) -> usize {
    let mut ips: Vec<_> = report.allocations.iter().map(|a| a.ip).collect();
    ips.dedup();
    ips.len()
}

pub(super) fn to_json(report: &Report, verbose: bool) -> Value {
    let pools: Vec<Value> = report
        .pools
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "blocks": p.blocks,
                "capacity": p.capacity.to_string(),
                "allocated": p.allocated.to_string(),
                "available": p.available.to_string(),
                "freeRanges": p.free.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                "freeRangesTruncated": p.free_truncated,
                "announced": p.announced,
                "source": p.source,
            })
        })
        .collect();
    let mut doc = json!({
        "version": JSON_VERSION,
        "ok": report.errors() == 0,
        "allocations": report.allocations,
        "pools": pools,
        "problems": report.problems,
        "summary": {
            "files": report.files,
            "services": report.services,
            "addresses": distinct_ips(report),
            "pools": report.pools.len(),
            "errors": report.errors(),
            "warnings": report.warnings(),
        },
    });
    if verbose {
        doc["ignored"] = report
            .ignored
            .iter()
            .map(|(s, why)| json!({"namespace": s.namespace, "name": s.name, "reason": why}))
            .collect();
    }
    doc
}

fn md_escape(text: &str) -> String {
    text.replace('|', "\\|")
}

fn markdown(report: &Report) -> String {
    let mut out = String::from("## IP allocation table\n\n");
    if report.allocations.is_empty() {
        out.push_str("No LoadBalancer Service is handled by vipam.\n");
    } else {
        out.push_str("| IP | Service | Pool | How |\n|---|---|---|---|\n");
        for a in &report.allocations {
            let _ = writeln!(
                out,
                "| `{}` | {}/{} | {} | {} |",
                a.ip,
                a.namespace,
                a.name,
                a.pool,
                md_escape(&how(a))
            );
        }
        if report.allocations.iter().any(|a| a.predicted) {
            out.push_str(
                "\n\\* predicted: auto-assigned addresses depend on the order Services are created.\n",
            );
        }
    }
    out.push_str("\n### Pools\n\n");
    out.push_str("| Pool | Blocks | Capacity | Allocated | Available | Free addresses |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for p in &report.pools {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            p.name,
            p.blocks.join(", "),
            p.capacity,
            p.allocated,
            p.available,
            free_text(p)
        );
    }
    if !report.problems.is_empty() {
        out.push_str("\n### Problems\n\n");
        for p in &report.problems {
            let _ = writeln!(out, "- {}", md_escape(&problem_line(p)).replace('\n', " "));
        }
    }
    out
}
