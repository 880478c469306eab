//! `vipam check`: read a GitOps tree offline, simulate admission, report the allocation table
//! and every problem. No cluster needed.
//!
//! Simulation order is deterministic: pinned Services first, then the others, each group in
//! namespace/name order. Auto-assigned results are *predicted*: in a cluster they depend on the
//! order Services are created.

mod clusters;
mod load;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use serde::{Deserialize, Serialize};

use crate::api::{self, BGPAnnouncement, BGPPeer, IPPool, L2Announcement};
use crate::core::allocate::{Context, Ledger, decide};
use crate::core::category::Category;
use crate::core::pool::{Pool, PoolSet};
use crate::core::range::{Family, IpRange};
use crate::core::request::{
    ANN_ASSIGNED_IPS, RequestError, RequestPolicy, SPEC_LOAD_BALANCER_IP, ServiceRef,
};

pub use clusters::{ClusterReport, ClusterRun, check_clusters, render_clusters};
pub use load::{Document, LoadError, Loaded, load};
pub use report::{Format, render};

/// Where something was read from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Source {
    pub file: String,
    /// 1-based index of the document in its file (empty documents are not counted).
    pub document: usize,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (document {})",
            self.file, self.line, self.document
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// Stable category (documented in docs/check.md).
    pub kind: &'static str,
    pub message: String,
    pub source: Option<Source>,
    /// Other places involved (the other Service, the other pool).
    pub related: Vec<Source>,
}

/// One row of the allocation table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationRow {
    pub ip: IpAddr,
    pub family: &'static str,
    pub namespace: String,
    pub name: String,
    pub pool: String,
    /// `pinned`, `shared:<key>` or `auto`.
    pub how: String,
    /// Auto-assigned: the real address depends on creation order.
    pub predicted: bool,
    pub source: Source,
}

/// One pool's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub name: String,
    pub blocks: Vec<String>,
    pub capacity: u128,
    pub allocated: u128,
    pub available: u128,
    pub free: Vec<IpRange>,
    pub free_truncated: bool,
    pub announced: bool,
    pub source: Source,
    /// What the pool may hand out (its blocks minus skipped ends and ranges an overlapping
    /// pool keeps), for `--clusters`.
    pub owned: Vec<IpRange>,
}

/// Everything `check` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub allocations: Vec<AllocationRow>,
    pub pools: Vec<PoolRow>,
    pub problems: Vec<Problem>,
    pub files: usize,
    /// LoadBalancer Services vipam handles.
    pub services: usize,
    /// Services that are not vipam's (other type or class), for `--verbose`.
    pub ignored: Vec<(ServiceRef, String)>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.problems.len() - self.errors()
    }
}

/// Settings of a check run.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    pub policy: RequestPolicy,
}

/// How many free ranges a pool row lists at most.
const FREE_RANGES_SHOWN: usize = 32;

/// Reads the inputs and checks them.
pub fn check_inputs(
    inputs: &[String],
    stdin: &mut dyn Read,
    options: &CheckOptions,
) -> Result<Report, LoadError> {
    let loaded = load(inputs, stdin)?;
    Ok(check_documents(loaded, options))
}

struct ServiceDoc<'a> {
    doc: &'a load::Document,
    request: crate::core::request::Request,
}

fn problem(kind: &'static str, message: String, source: Source) -> Problem {
    Problem {
        severity: Severity::Error,
        kind,
        message,
        source: Some(source),
        related: vec![],
    }
}

fn warning(kind: &'static str, message: String, source: Source) -> Problem {
    Problem {
        severity: Severity::Warning,
        ..problem(kind, message, source)
    }
}

fn object_name(doc: &load::Document) -> String {
    doc.value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string()
}

/// Checks loaded documents.
pub fn check_documents(loaded: load::Loaded, options: &CheckOptions) -> Report {
    let mut report = Report {
        files: loaded.files,
        problems: loaded.problems,
        ..Report::default()
    };
    let mut pools: Vec<(Pool, Source)> = Vec::new();
    let mut pool_sources: BTreeMap<String, Source> = BTreeMap::new();
    let mut l2s: Vec<(L2Announcement, Source)> = Vec::new();
    let mut bgp_peers: Vec<(BGPPeer, Source)> = Vec::new();
    let mut bgp_announcements: Vec<(BGPAnnouncement, Source)> = Vec::new();
    let mut services: Vec<ServiceDoc<'_>> = Vec::new();
    let mut seen_services: BTreeMap<ServiceRef, Source> = BTreeMap::new();

    for doc in &loaded.documents {
        let api_version = doc.value["apiVersion"].as_str().unwrap_or("");
        let kind = doc.value["kind"].as_str().unwrap_or("");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        if group == api::GROUP && version != api::VERSION {
            report.problems.push(problem(
                "unsupported_version",
                format!(
                    "{kind} {}: apiVersion {api_version} is not served; use {}/{}",
                    object_name(doc),
                    api::GROUP,
                    api::VERSION
                ),
                doc.source.clone(),
            ));
            continue;
        }
        if group == api::GROUP {
            for field in api::unknown_fields(kind, &doc.value) {
                let leaf = field
                    .rsplit('.')
                    .next()
                    .unwrap_or("")
                    .split([' ', '['])
                    .next()
                    .unwrap_or("")
                    .to_string();
                report.problems.push(problem(
                    "unknown_field",
                    format!(
                        "{kind} {}: unknown field {field}; the API server would drop or refuse it",
                        object_name(doc)
                    ),
                    doc.source_at(&format!("{leaf}:")),
                ));
            }
        }
        match (group, kind) {
            (api::GROUP, "IPPool") => load_pool(doc, &mut pools, &mut pool_sources, &mut report),
            (api::GROUP, "L2Announcement") => match L2Announcement::deserialize(&doc.value) {
                Ok(l2) => l2s.push((l2, doc.source.clone())),
                Err(e) => report.problems.push(problem(
                    "invalid_object",
                    format!("L2Announcement {}: {e}", object_name(doc)),
                    doc.source.clone(),
                )),
            },
            (api::GROUP, "BGPPeer") => {
                if let Some(peer) = load_bgp(doc, "BGPPeer", api::bgp_peer, &mut report) {
                    bgp_peers.push((peer, doc.source.clone()));
                }
            }
            (api::GROUP, "BGPAnnouncement") => {
                if let Some(announcement) =
                    load_bgp(doc, "BGPAnnouncement", api::bgp_announcement, &mut report)
                {
                    bgp_announcements.push((announcement, doc.source.clone()));
                }
            }
            (api::GROUP, "IPAllocation") => report.problems.push(warning(
                "ledger_in_git",
                format!(
                    "IPAllocation {} is vipam's ledger, written at run time; keep it out of Git",
                    object_name(doc)
                ),
                doc.source.clone(),
            )),
            ("", "Service") if version == "v1" => {
                if let Some(service) = load_service(doc, options, &mut seen_services, &mut report) {
                    services.push(service);
                }
            }
            _ => {}
        }
    }

    let pool_set = PoolSet::new(pools.into_iter().map(|(p, _)| p).collect());
    for overlap in pool_set.overlaps() {
        let mut p = problem(
            "overlapping_pools",
            overlap.to_string(),
            pool_sources[&overlap.loser].clone(),
        );
        p.related.push(pool_sources[&overlap.keeper].clone());
        report.problems.push(p);
    }

    let sources: BTreeMap<ServiceRef, Source> = services
        .iter()
        .map(|s| (s.request.service.clone(), s.doc.source.clone()))
        .collect();
    // Pins first (they are what Git fixes), then auto requests; each in namespace/name order.
    services.sort_by(|a, b| {
        (a.request.pins.is_none(), &a.request.service)
            .cmp(&(b.request.pins.is_none(), &b.request.service))
    });
    let ctx = Context::default();
    let mut ledger = Ledger::new();
    for service in &services {
        let request = &service.request;
        match decide(request, &pool_set, &ledger, &ctx) {
            Ok(decision) => {
                ledger.apply(request, &decision, &ctx);
                for a in &decision.assignments {
                    report.allocations.push(AllocationRow {
                        ip: a.ip,
                        family: Family::of(&a.ip).k8s_name(),
                        namespace: request.service.namespace.clone(),
                        name: request.service.name.clone(),
                        pool: a.pool.clone(),
                        how: if request.pins.is_some()
                            && !matches!(a.how, crate::core::allocate::How::Shared(_))
                        {
                            "pinned".to_string()
                        } else {
                            a.how.to_string()
                        },
                        predicted: request.pins.is_none(),
                        source: service.doc.source.clone(),
                    });
                }
            }
            Err(denial) => {
                let needle = request.pins.as_ref().map_or("", |p| p.source);
                let needle = if needle == SPEC_LOAD_BALANCER_IP {
                    "loadBalancerIP"
                } else {
                    needle
                };
                let mut p = problem(
                    denial.kind.category(),
                    format!("Service {}: {}", request.service, denial.message),
                    if needle.is_empty() {
                        service.doc.source.clone()
                    } else {
                        service.doc.source_at(needle)
                    },
                );
                p.related = denial
                    .others
                    .iter()
                    .filter_map(|o| sources.get(o).cloned())
                    .collect();
                report.problems.push(p);
            }
        }
    }
    report.services = services.len();
    report
        .allocations
        .sort_by(|a, b| (a.ip, &a.namespace, &a.name).cmp(&(b.ip, &b.namespace, &b.name)));

    // Pools: usage, free ranges, and whether any L2Announcement covers them.
    let pool_names: BTreeSet<&str> = pool_set.pools().iter().map(|p| p.name()).collect();
    for (l2, source) in &l2s {
        for name in &l2.spec.ip_pools {
            if !pool_names.contains(name.as_str()) {
                report.problems.push(warning(
                    "unknown_pool",
                    format!(
                        "L2Announcement {} names IPPool {name}, which is not in the checked files",
                        l2.metadata.name.as_deref().unwrap_or("")
                    ),
                    source.clone(),
                ));
            }
        }
    }
    let peer_names: BTreeSet<&str> = bgp_peers
        .iter()
        .map(|(p, _)| p.metadata.name.as_deref().unwrap_or(""))
        .collect();
    for (announcement, source) in &bgp_announcements {
        let name = announcement.metadata.name.as_deref().unwrap_or("");
        for pool in &announcement.spec.ip_pools {
            if !pool_names.contains(pool.as_str()) {
                report.problems.push(warning(
                    "unknown_pool",
                    format!(
                        "BGPAnnouncement {name} names IPPool {pool}, which is not in the checked \
                         files"
                    ),
                    source.clone(),
                ));
            }
        }
        for peer in &announcement.spec.peers {
            if !peer_names.contains(peer.as_str()) {
                report.problems.push(warning(
                    "unknown_peer",
                    format!(
                        "BGPAnnouncement {name} names BGPPeer {peer}, which is not in the checked \
                         files"
                    ),
                    source.clone(),
                ));
            }
        }
        if peer_names.is_empty() {
            report.problems.push(warning(
                "no_bgp_peer",
                format!(
                    "BGPAnnouncement {name}: no BGPPeer is in the checked files, so nothing is \
                     announced by BGP"
                ),
                source.clone(),
            ));
        }
    }
    let mut sorted_pools: Vec<&Pool> = pool_set.pools().iter().collect();
    sorted_pools.sort_by_key(|p| p.name().to_string());
    for pool in sorted_pools {
        let covers = |pools: &[String]| pools.is_empty() || pools.iter().any(|n| n == pool.name());
        let announced = l2s.iter().any(|(l2, _)| covers(&l2.spec.ip_pools))
            || bgp_announcements
                .iter()
                .any(|(bgp, _)| covers(&bgp.spec.ip_pools));
        let source = pool_sources[pool.name()].clone();
        if !announced {
            report.problems.push(warning(
                "pool_not_announced",
                format!(
                    "IPPool {} is covered by no L2Announcement or BGPAnnouncement: its \
                     addresses would be assigned but never announced",
                    pool.name()
                ),
                source.clone(),
            ));
        }
        let (allocated, available) = pool.usage(ledger.used());
        let (free, free_truncated) = pool.free_ranges(ledger.used(), FREE_RANGES_SHOWN);
        report.pools.push(PoolRow {
            name: pool.name().to_string(),
            blocks: pool.blocks.iter().map(|b| b.range.to_string()).collect(),
            capacity: pool.capacity(),
            allocated,
            available,
            free,
            free_truncated,
            announced,
            source,
            owned: pool.owned().ranges().collect(),
        });
    }
    report.problems.sort_by(|a, b| {
        (a.severity, &a.source, a.kind, &a.message)
            .cmp(&(b.severity, &b.source, b.kind, &b.message))
    });
    report
}

fn load_pool(
    doc: &load::Document,
    pools: &mut Vec<(Pool, Source)>,
    pool_sources: &mut BTreeMap<String, Source>,
    report: &mut Report,
) {
    let object: IPPool = match IPPool::deserialize(&doc.value) {
        Ok(p) => p,
        Err(e) => {
            report.problems.push(problem(
                "invalid_object",
                format!("IPPool {}: {e}", object_name(doc)),
                doc.source.clone(),
            ));
            return;
        }
    };
    let name = object.metadata.name.clone().unwrap_or_default();
    if let Some(first) = pool_sources.get(&name) {
        let mut p = problem(
            "duplicate_object",
            format!("IPPool {name} is defined twice"),
            doc.source.clone(),
        );
        p.related.push(first.clone());
        report.problems.push(p);
        return;
    }
    let parsed = api::pool_spec(&object)
        .map_err(|e| e.to_string())
        .and_then(|spec| Pool::parse(spec).map_err(|e| e.to_string()));
    match parsed {
        Ok(pool) => {
            pool_sources.insert(name, doc.source.clone());
            pools.push((pool, doc.source.clone()));
        }
        Err(message) => {
            report
                .problems
                .push(problem("invalid_pool", message, doc.source_at("blocks")))
        }
    }
}

fn load_service<'a>(
    doc: &'a load::Document,
    options: &CheckOptions,
    seen: &mut BTreeMap<ServiceRef, Source>,
    report: &mut Report,
) -> Option<ServiceDoc<'a>> {
    let service: Service = match Service::deserialize(&doc.value) {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(problem(
                "invalid_object",
                format!("Service {}: {e}", object_name(doc)),
                doc.source.clone(),
            ));
            return None;
        }
    };
    let mut view = api::service_view(&service);
    if service.metadata.namespace.is_none() {
        view.namespace = doc
            .default_namespace
            .clone()
            .unwrap_or_else(|| "default".into());
    }
    let service_ref = view.service_ref();
    if let Some(first) = seen.get(&service_ref) {
        let mut p = problem(
            "duplicate_object",
            format!("Service {service_ref} is defined twice"),
            doc.source.clone(),
        );
        p.related.push(first.clone());
        report.problems.push(p);
        return None;
    }
    seen.insert(service_ref.clone(), doc.source.clone());
    let request = match view.request(&options.policy) {
        Ok(Some(request)) => request,
        Ok(None) => {
            let why = match (
                view.service_type.as_deref(),
                view.load_balancer_class.as_deref(),
            ) {
                (Some("LoadBalancer"), Some(class)) => format!("loadBalancerClass {class}"),
                (Some("LoadBalancer"), None) => "no loadBalancerClass (not the default)".into(),
                (t, _) => format!("type {}", t.unwrap_or("ClusterIP")),
            };
            report.ignored.push((service_ref, why));
            return None;
        }
        Err(err) => {
            let needle = match &err {
                RequestError::MalformedIp { annotation, .. } => annotation.clone(),
                RequestError::ConflictingSources { second, .. } => second.clone(),
                RequestError::Invalid { field, .. } => field.clone(),
            };
            let needle = needle.strip_prefix("spec.").unwrap_or(&needle).to_string();
            report.problems.push(problem(
                err.category(),
                format!("Service {service_ref}: {err}"),
                doc.source_at(&needle),
            ));
            return None;
        }
    };
    if request.assigned_annotation.is_some() {
        report.problems.push(problem(
            "assigned_ips_in_git",
            format!(
                "Service {service_ref}: {ANN_ASSIGNED_IPS} is written by vipam's webhook; remove it \
                 from Git (pin with vipam.io/ips instead), or Argo CD will show the Service \
                 OutOfSync whenever the two differ"
            ),
            doc.source_at(ANN_ASSIGNED_IPS),
        ));
    }
    Some(ServiceDoc { doc, request })
}

#[cfg(test)]
mod tests;

/// Reads a BGPPeer or BGPAnnouncement and validates it as the webhook does; a problem names
/// every invalid field.
fn load_bgp<K, T>(
    doc: &load::Document,
    kind: &'static str,
    convert: fn(&K) -> Result<T, api::ConvertError>,
    report: &mut Report,
) -> Option<K>
where
    K: serde::de::DeserializeOwned,
{
    let object = match K::deserialize(&doc.value) {
        Ok(object) => object,
        Err(e) => {
            report.problems.push(problem(
                "invalid_object",
                format!("{kind} {}: {e}", object_name(doc)),
                doc.source.clone(),
            ));
            return None;
        }
    };
    if let Err(err) = convert(&object) {
        let category = match kind {
            "BGPPeer" => "invalid_bgppeer",
            _ => "invalid_bgpannouncement",
        };
        report
            .problems
            .push(problem(category, err.to_string(), doc.source.clone()));
        return None;
    }
    Some(object)
}
