//! `vipam import`: kube-vip, Cilium and MetalLB configuration as it sits in Git, converted to
//! vipam objects. Pure: documents in (read by the checker's loader), typed objects and warnings
//! out. Every setting that has no vipam equivalent, or that changes on the way, is a [`Warning`]
//! naming the file, the object and the field; nothing is dropped silently.

mod bgp;
mod cilium;
mod kube_vip;
mod metallb;
mod selectors;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::Serialize;
use serde_json::Value;

use crate::api::{self, BGPAnnouncement, BGPPeer, IPPool, IPPoolBlock, L2Announcement};
use crate::check::{Document, LoadError, load};
use crate::core::pool::{Pool, PoolSet};
use crate::core::range::{FamilySets, IpRange};

/// What happened to a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Carried over in another form (same effect, or a documented difference).
    Changed,
    /// Not carried over: vipam has no equivalent (exit status 1).
    Lost,
}

/// One setting that was changed on the way or could not be carried over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub outcome: Outcome,
    /// The file (with line and document) the object came from.
    pub file: String,
    /// `Kind namespace/name` of the source object.
    pub object: String,
    /// The field's path in the source object (`spec.serviceAllocation.namespaceSelectors`).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.outcome {
            Outcome::Changed => "changed",
            Outcome::Lost => "not converted",
        };
        write!(
            f,
            "warning[{what}]: {}: {}: {}: {}",
            self.file, self.object, self.field, self.message
        )
    }
}

/// A vipam object (or a manifest of `vipam manifest`) produced by the import.
#[derive(Debug, Clone)]
pub enum Object {
    Pool(Box<IPPool>),
    L2(Box<L2Announcement>),
    Peer(Box<BGPPeer>),
    Bgp(Box<BGPAnnouncement>),
    Pod(Box<Pod>),
    ServiceAccount(Box<ServiceAccount>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    DaemonSet(Box<DaemonSet>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Pool(_) => "IPPool",
            Object::L2(_) => "L2Announcement",
            Object::Peer(_) => "BGPPeer",
            Object::Bgp(_) => "BGPAnnouncement",
            Object::Pod(_) => "Pod",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::DaemonSet(_) => "DaemonSet",
        }
    }

    /// Output order: pools, announcements (L2, then BGP peers and announcements), then the
    /// control-plane manifests in apply order.
    fn rank(&self) -> u8 {
        match self {
            Object::Pool(_) => 0,
            Object::L2(_) => 1,
            Object::Peer(_) => 2,
            Object::Bgp(_) => 3,
            Object::ServiceAccount(_) => 4,
            Object::Role(_) => 5,
            Object::RoleBinding(_) => 6,
            Object::DaemonSet(_) => 7,
            Object::Pod(_) => 8,
        }
    }

    pub fn name(&self) -> &str {
        let meta = match self {
            Object::Pool(o) => &o.metadata,
            Object::L2(o) => &o.metadata,
            Object::Peer(o) => &o.metadata,
            Object::Bgp(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Role(o) => &o.metadata,
            Object::RoleBinding(o) => &o.metadata,
            Object::DaemonSet(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or("")
    }

    /// The object as one YAML document (no `---`).
    pub fn to_yaml(&self) -> Result<String, ImportError> {
        let text = match self {
            Object::Pool(o) => serde_saphyr::to_string(o)?,
            Object::L2(o) => serde_saphyr::to_string(o)?,
            Object::Peer(o) => serde_saphyr::to_string(o)?,
            Object::Bgp(o) => serde_saphyr::to_string(o)?,
            Object::Pod(o) => serde_saphyr::to_string(o)?,
            Object::ServiceAccount(o) => serde_saphyr::to_string(o)?,
            Object::Role(o) => serde_saphyr::to_string(o)?,
            Object::RoleBinding(o) => serde_saphyr::to_string(o)?,
            Object::DaemonSet(o) => serde_saphyr::to_string(o)?,
        };
        Ok(text)
    }

    /// File name under `--out-dir`: `ippool-lan.yaml`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.yaml", self.kind().to_lowercase(), self.name())
    }
}

/// An object with what it came from.
#[derive(Debug, Clone)]
pub struct Converted {
    pub object: Object,
    /// `metallb.io/v1beta1 IPAddressPool metallb-system/lan at pools.yaml:3 (document 1)`.
    pub from: String,
}

/// Everything an import produced.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    pub objects: Vec<Converted>,
    pub warnings: Vec<Warning>,
    /// Source objects recognised as another tool's configuration.
    pub recognised: usize,
}

impl Imported {
    /// Something could not be carried over (exit status 1).
    pub fn lost_anything(&self) -> bool {
        self.warnings.iter().any(|w| w.outcome == Outcome::Lost)
    }

    /// All objects as one multi-document YAML stream, each with a comment naming its source.
    pub fn to_yaml(&self) -> Result<String, ImportError> {
        let mut out = String::new();
        for converted in &self.objects {
            out.push_str(&document_text(converted)?);
        }
        Ok(out)
    }
}

/// One converted object as a YAML document with its source comment.
pub fn document_text(converted: &Converted) -> Result<String, ImportError> {
    Ok(format!(
        "---\n# vipam import: from {}\n{}",
        converted.from,
        converted.object.to_yaml()?
    ))
}

/// An import that could not run at all (usage or I/O error: exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("serializing an object: {0}")]
    Serialize(#[from] serde_saphyr::SerializeError),
}

impl crate::core::category::Category for ImportError {
    fn category(&self) -> &'static str {
        match self {
            ImportError::Load(e) => e.category(),
            ImportError::Serialize(_) => "serialize",
        }
    }
}

/// Reads the inputs (files, directories, `-` for standard input) and converts them.
pub fn import_inputs(inputs: &[String], stdin: &mut dyn Read) -> Result<Imported, ImportError> {
    let loaded = load(inputs, stdin)?;
    let mut imported = Imported::default();
    for problem in &loaded.problems {
        imported.warnings.push(Warning {
            outcome: Outcome::Lost,
            file: problem
                .source
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
            object: "(unreadable)".into(),
            field: "-".into(),
            message: format!("{}; nothing in it was converted", problem.message),
        });
    }
    import_documents(&loaded.documents, &mut imported);
    Ok(imported)
}

/// Converts loaded documents; each tool's converter picks the kinds it knows.
pub fn import_documents(documents: &[Document], imported: &mut Imported) {
    kube_vip::import(documents, imported);
    cilium::import(documents, imported);
    metallb::import(documents, imported);
    // Pools first, then announcements, then manifests; each in input order.
    imported.objects.sort_by_key(|c| c.object.rank());
    dedupe(imported);
    report_pool_overlaps(imported);
    if imported.recognised == 0 {
        imported.warnings.push(Warning {
            outcome: Outcome::Lost,
            file: "-".into(),
            object: "-".into(),
            field: "-".into(),
            message: "no kube-vip, Cilium or MetalLB configuration found in the inputs".into(),
        });
    }
}

/// Two objects of one kind with one name: the first is kept, the second reported.
fn dedupe(imported: &mut Imported) {
    let mut seen = BTreeSet::new();
    let mut kept = Vec::new();
    for converted in std::mem::take(&mut imported.objects) {
        let key = (converted.object.kind(), converted.object.name().to_string());
        if seen.insert(key) {
            kept.push(converted);
        } else {
            imported.warnings.push(Warning {
                outcome: Outcome::Lost,
                file: converted.from.clone(),
                object: format!("{} {}", converted.object.kind(), converted.object.name()),
                field: "metadata.name".into(),
                message: "another input already produced an object of this kind and name; \
                          this one was not written (rename one of the sources)"
                    .into(),
            });
        }
    }
    imported.objects = kept;
}

/// Overlapping pools would fail `vipam check`: say so here, naming both.
fn report_pool_overlaps(imported: &mut Imported) {
    let mut parsed = Vec::new();
    let mut origin = BTreeMap::new();
    for converted in &imported.objects {
        if let Object::Pool(pool) = &converted.object
            && let Ok(pool) = api::pool_spec(pool)
                .map_err(|e| e.to_string())
                .and_then(|spec| Pool::parse(spec).map_err(|e| e.to_string()))
        {
            origin.insert(pool.name().to_string(), converted.from.clone());
            parsed.push(pool);
        }
    }
    for overlap in PoolSet::new(parsed).overlaps() {
        imported.warnings.push(Warning {
            outcome: Outcome::Lost,
            file: origin[&overlap.loser].clone(),
            object: format!("IPPool {}", overlap.loser),
            field: "spec.blocks".into(),
            message: format!(
                "overlaps IPPool {} (from {}) on {}: vipam refuses overlapping pools \
                 (`vipam check` fails); remove the shared range from one of them",
                overlap.keeper,
                origin[&overlap.keeper],
                crate::core::range::format_ranges(&overlap.shared)
            ),
        });
    }
}

/// Per-object conversion state: where warnings point, where objects go.
struct Ctx<'a> {
    file: String,
    object: String,
    from: String,
    out: &'a mut Imported,
}

impl<'a> Ctx<'a> {
    fn new(doc: &Document, out: &'a mut Imported) -> Ctx<'a> {
        out.recognised += 1;
        let kind = doc.value["kind"].as_str().unwrap_or("");
        let api_version = doc.value["apiVersion"].as_str().unwrap_or("");
        let name = doc.value.pointer("/metadata/name").and_then(Value::as_str);
        let namespace = doc
            .value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        let qualified = match (namespace, name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            (None, Some(name)) => name.to_string(),
            (_, None) => "(unnamed)".to_string(),
        };
        Ctx {
            file: doc.source.to_string(),
            object: format!("{kind} {qualified}"),
            from: format!("{api_version} {kind} {qualified} at {}", doc.source),
            out,
        }
    }

    fn warn(&mut self, outcome: Outcome, field: &str, message: impl Into<String>) {
        self.out.warnings.push(Warning {
            outcome,
            file: self.file.clone(),
            object: self.object.clone(),
            field: field.to_string(),
            message: message.into(),
        });
    }

    fn changed(&mut self, field: &str, message: impl Into<String>) {
        self.warn(Outcome::Changed, field, message);
    }

    fn lost(&mut self, field: &str, message: impl Into<String>) {
        self.warn(Outcome::Lost, field, message);
    }

    fn emit(&mut self, object: Object) {
        self.out.objects.push(Converted {
            object,
            from: self.from.clone(),
        });
    }

    /// Every key of `map` not in `known` is reported as not converted.
    fn unknown_keys(&mut self, value: &Value, path: &str, known: &[&str]) {
        if let Some(map) = value.as_object() {
            for key in map.keys() {
                if !known.contains(&key.as_str()) {
                    self.lost(
                        &format!("{path}.{key}"),
                        "a field vipam import does not know: not converted",
                    );
                }
            }
        }
    }

    /// Validates a pool with the same code `vipam check` and the webhook use, then emits it;
    /// a pool vipam would refuse is reported and not written.
    fn emit_pool(&mut self, pool: IPPool) {
        let checked = api::pool_spec(&pool)
            .map_err(|e| e.to_string())
            .and_then(|spec| Pool::parse(spec).map_err(|e| e.to_string()));
        match checked {
            Ok(_) => self.emit(Object::Pool(Box::new(pool))),
            Err(message) => self.lost(
                "spec",
                format!(
                    "the converted pool is not valid for vipam, so it was not written: {message}"
                ),
            ),
        }
    }
}

/// Addresses as the other tools write them, turned into vipam blocks.
#[derive(Debug, Default)]
struct Blocks {
    blocks: Vec<IPPoolBlock>,
    /// Addresses read so far, to merge overlapping entries (the tools accept them, vipam not).
    seen: FamilySets,
    /// An IPv4 CIDR of /30 or larger: where `allowFirstLastIPs` matters.
    has_v4_cidr_with_ends: bool,
    /// Network and broadcast addresses of those CIDRs (a later entry may list them again).
    cidr_ends: Vec<std::net::IpAddr>,
    /// The pool skips those ends (`allowFirstLastIPs: false`), as the tool did.
    skips_ends: bool,
}

impl Blocks {
    /// Reads `192.0.2.0/24`, `192.0.2.10-192.0.2.20` or a single address. `field` names the
    /// entry in warnings.
    fn add_entry(&mut self, ctx: &mut Ctx<'_>, field: &str, entry: &str) {
        let entry = entry.trim();
        if entry.is_empty() {
            return;
        }
        if let Some((start, stop)) = entry.split_once('-') {
            self.add_range(ctx, field, start.trim(), Some(stop.trim()));
        } else if entry.contains('/') {
            self.add_cidr(ctx, field, entry);
        } else {
            self.add_range(ctx, field, entry, None);
        }
    }

    fn add_cidr(&mut self, ctx: &mut Ctx<'_>, field: &str, cidr: &str) {
        let Ok(net) = cidr.parse::<ipnet::IpNet>() else {
            ctx.lost(
                field,
                format!("{cidr:?} is not a CIDR or range: not converted"),
            );
            return;
        };
        let truncated = net.trunc();
        if truncated != net {
            ctx.changed(
                field,
                format!(
                    "{cidr} has host bits set; the tool reads it as {truncated}, and so does the \
                     converted pool"
                ),
            );
        }
        let range =
            IpRange::new(truncated.network(), truncated.broadcast()).expect("network <= broadcast");
        if self.overlaps(ctx, field, &range) {
            return;
        }
        if let ipnet::IpNet::V4(v4) = truncated
            && v4.prefix_len() <= 30
        {
            self.has_v4_cidr_with_ends = true;
            self.cidr_ends.push(truncated.network());
            self.cidr_ends.push(truncated.broadcast());
        }
        self.blocks.push(IPPoolBlock {
            cidr: Some(truncated.to_string()),
            ..IPPoolBlock::default()
        });
    }

    fn add_range(&mut self, ctx: &mut Ctx<'_>, field: &str, start: &str, stop: Option<&str>) {
        let parse = |text: &str| text.parse::<std::net::IpAddr>();
        let (Ok(start_ip), Ok(stop_ip)) = (parse(start), parse(stop.unwrap_or(start))) else {
            ctx.lost(
                field,
                format!(
                    "{start}{} is not an address or range: not converted",
                    stop.map(|s| format!("-{s}")).unwrap_or_default()
                ),
            );
            return;
        };
        let Some(range) = IpRange::new(start_ip, stop_ip) else {
            ctx.lost(
                field,
                format!("{start_ip}-{stop_ip} is not a range (families differ or stop before start): not converted"),
            );
            return;
        };
        if self.overlaps(ctx, field, &range) {
            return;
        }
        self.blocks.push(IPPoolBlock {
            start: Some(start_ip.to_string()),
            stop: (stop_ip != start_ip).then(|| stop_ip.to_string()),
            cidr: None,
        });
    }

    /// A block overlapping earlier ones: the new addresses are added as ranges (vipam refuses
    /// overlapping blocks in one pool; the tools read the union).
    fn overlaps(&mut self, ctx: &mut Ctx<'_>, field: &str, range: &IpRange) -> bool {
        let new = FamilySets::from_range(range);
        let fresh = new.difference(&self.seen);
        if fresh == new {
            self.seen.insert_range(range);
            return false;
        }
        let fresh_ranges: Vec<IpRange> = fresh.ranges().collect();
        let skipped = self
            .cidr_ends
            .iter()
            .filter(|end| self.skips_ends && range.contains(end));
        for end in skipped {
            ctx.lost(
                field,
                format!(
                    "{end} is listed here and is the network or broadcast address of an earlier \
                     CIDR entry, which the pool skips (allowFirstLastIPs: false): vipam does not \
                     hand it out; write the CIDR as a range to keep it"
                ),
            );
        }
        ctx.changed(
            field,
            format!(
                "{range} overlaps an earlier entry of the same pool; the union is kept{}",
                if fresh_ranges.is_empty() {
                    " (nothing new in this entry)".to_string()
                } else {
                    format!(
                        ", this entry adds {}",
                        crate::core::range::format_ranges(&fresh_ranges)
                    )
                }
            ),
        );
        for r in fresh_ranges {
            self.seen.insert_range(&r);
            self.blocks.push(IPPoolBlock {
                start: Some(r.start.to_string()),
                stop: (r.start != r.end).then(|| r.end.to_string()),
                cidr: None,
            });
        }
        true
    }
}

/// Quotes an interface name as an anchored regular expression (`eth0` -> `^eth0$`).
fn interface_pattern(name: &str) -> String {
    format!("^{}$", regex::escape(name))
}

/// `metadata.name` of a source object ("" when missing).
fn name_of(value: &Value) -> String {
    value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// The string values of a map (labels, ConfigMap data, a Pod's nodeSelector); Kubernetes
/// allows no other values there.
fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
        .collect()
}

/// An empty IPPool with this name.
fn new_pool(name: &str, blocks: Vec<IPPoolBlock>) -> IPPool {
    IPPool::new(
        name,
        api::IPPoolSpec {
            blocks,
            allow_first_last_ips: false,
            avoid_buggy_ips: false,
            service_selector: None,
            namespaces: Vec::new(),
            auto_assign: true,
            priority: 0,
            disabled: false,
        },
    )
}

/// The message for interfaces left empty where the tool announced on every interface.
const ALL_INTERFACES: &str = "no interfaces listed: the tool announces on every interface, vipam \
     on the interface of the node's default route; list the interfaces to keep more than that";

/// `true`/`false` as the tools write booleans in strings.
fn truthy(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" | "" => Some(false),
        _ => None,
    }
}
