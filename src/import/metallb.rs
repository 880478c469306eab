//! MetalLB: `IPAddressPool`, `L2Advertisement`, the BGP objects (reported: vipam has no BGP mode
//! yet), the `AddressPool` CRD of 0.12/0.13 and the `config` ConfigMap of MetalLB before 0.13.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::{
    ALL_INTERFACES, Blocks, Ctx, Imported, Object, interface_pattern, name_of, new_pool, selectors,
    string_map,
};
use crate::api::{AnnouncementMode, IPPool, L2Announcement, L2AnnouncementSpec, LabelSelectorExt};
use crate::check::Document;

const GROUP: &str = "metallb.io";

const BGP_KINDS: &[&str] = &["BGPPeer", "BGPAdvertisement", "Community", "BFDProfile"];
/// Kinds that hold no configuration (status, or the operator's install object).
const QUIET_KINDS: &[&str] = &[
    "ServiceL2Status",
    "ServiceBGPStatus",
    "MetalLB",
    "FRRConfiguration",
];

fn group_of(doc: &Document) -> &str {
    doc.value["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map_or("", |(g, _)| g)
}

fn kind_of(doc: &Document) -> &str {
    doc.value["kind"].as_str().unwrap_or("")
}

/// The `config` ConfigMap of MetalLB before 0.13 (`data.config` holds the YAML).
fn is_legacy_config(doc: &Document) -> bool {
    kind_of(doc) == "ConfigMap"
        && doc.value["apiVersion"].as_str() == Some("v1")
        && name_of(&doc.value) == "config"
        && doc
            .value
            .pointer("/data/config")
            .is_some_and(Value::is_string)
}

pub(super) fn import(documents: &[Document], out: &mut Imported) {
    let pools: Vec<&Document> = documents
        .iter()
        .filter(|d| group_of(d) == GROUP && kind_of(d) == "IPAddressPool")
        .collect();
    let order = PoolOrder::of(&pools);
    for doc in documents {
        if is_legacy_config(doc) {
            legacy_config(&mut Ctx::new(doc, out), &doc.value);
            continue;
        }
        if group_of(doc) != GROUP {
            continue;
        }
        match kind_of(doc) {
            "IPAddressPool" => address_pool(&mut Ctx::new(doc, out), &doc.value, &order),
            "AddressPool" => legacy_address_pool(&mut Ctx::new(doc, out), &doc.value),
            "L2Advertisement" => l2_advertisement(&mut Ctx::new(doc, out), &doc.value, &pools),
            kind if BGP_KINDS.contains(&kind) => Ctx::new(doc, out).bgp("spec"),
            kind if QUIET_KINDS.contains(&kind) => {}
            kind => Ctx::new(doc, out).lost(
                "kind",
                format!("{kind} is a MetalLB kind vipam import does not know: not converted"),
            ),
        }
    }
}

/// MetalLB tries pools with a `serviceAllocation` first, by ascending `priority` (unset is the
/// lowest), then the pools without one. vipam tries pools by ascending priority only, so the
/// order is written into priorities: given ones kept, unset ones after the highest given.
struct PoolOrder {
    any_allocation: bool,
    highest: i32,
}

impl PoolOrder {
    fn of(pools: &[&Document]) -> PoolOrder {
        let allocations: Vec<&Value> = pools
            .iter()
            .filter_map(|d| d.value.pointer("/spec/serviceAllocation"))
            .collect();
        PoolOrder {
            any_allocation: !allocations.is_empty(),
            highest: allocations
                .iter()
                .filter_map(|a| a.get("priority").and_then(Value::as_i64))
                .map(|p| i32::try_from(p).unwrap_or(i32::MAX - 2))
                .max()
                .unwrap_or(0)
                .max(0),
        }
    }

    fn priority(&self, allocation: Option<&Value>) -> i32 {
        if !self.any_allocation {
            return 0;
        }
        match allocation.map(|a| a.get("priority").and_then(Value::as_i64)) {
            Some(Some(p)) if p > 0 => i32::try_from(p).unwrap_or(i32::MAX - 2),
            Some(_) => self.highest + 1,
            None => self.highest + 2,
        }
    }
}

fn read_addresses(ctx: &mut Ctx<'_>, field: &str, addresses: Option<&Value>) -> Blocks {
    let mut blocks = Blocks::default();
    for (index, entry) in addresses
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("{field}[{index}]");
        match entry.as_str() {
            Some(text) => blocks.add_entry(ctx, &path, text),
            None => ctx.lost(&path, "not a string: not converted"),
        }
    }
    blocks
}

/// How a pool's fields are spelled: in the CRDs, and in the ConfigMap before 0.13.
struct Keys {
    addresses: &'static str,
    avoid_buggy: &'static str,
    auto_assign: &'static str,
}

const CRD_KEYS: Keys = Keys {
    addresses: "addresses",
    avoid_buggy: "avoidBuggyIPs",
    auto_assign: "autoAssign",
};

const CONFIG_KEYS: Keys = Keys {
    addresses: "addresses",
    avoid_buggy: "avoid-buggy-ips",
    auto_assign: "auto-assign",
};

/// The pool with the settings every MetalLB pool shape shares (`pool` at `field`). MetalLB
/// hands out the network and broadcast addresses of a CIDR (avoidBuggyIPs is how to skip them),
/// so vipam must too.
fn pool_from(ctx: &mut Ctx<'_>, field: &str, name: &str, pool: &Value, keys: &Keys) -> IPPool {
    let blocks = read_addresses(
        ctx,
        &format!("{field}.{}", keys.addresses),
        pool.get(keys.addresses),
    );
    let mut out = new_pool(name, blocks.blocks.clone());
    out.spec.allow_first_last_ips = blocks.has_v4_cidr_with_ends;
    out.spec.avoid_buggy_ips = pool
        .get(keys.avoid_buggy)
        .and_then(Value::as_bool)
        .unwrap_or(false);
    out.spec.auto_assign = pool
        .get(keys.auto_assign)
        .and_then(Value::as_bool)
        .unwrap_or(true);
    out
}

fn address_pool(ctx: &mut Ctx<'_>, value: &Value, order: &PoolOrder) {
    let spec = &value["spec"];
    ctx.unknown_keys(
        spec,
        "spec",
        &[
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "serviceAllocation",
        ],
    );
    let mut pool = pool_from(ctx, "spec", &name_of(value), spec, &CRD_KEYS);
    let allocation = spec.get("serviceAllocation");
    pool.spec.priority = order.priority(allocation);
    let written = allocation
        .and_then(|a| a.get("priority"))
        .and_then(Value::as_i64);
    if written != Some(i64::from(pool.spec.priority)) && order.any_allocation {
        ctx.changed(
            "spec.serviceAllocation.priority",
            format!(
                "{} in MetalLB; written as priority {} so vipam tries the pools in MetalLB's \
                 order (pools with a serviceAllocation by ascending priority, unset last, then \
                 the pools without one)",
                written.map_or("unset".to_string(), |p| p.to_string()),
                pool.spec.priority
            ),
        );
    }
    if let Some(allocation) = allocation {
        service_allocation(ctx, allocation, &mut pool);
    }
    ctx.emit_pool(pool);
}

fn service_allocation(ctx: &mut Ctx<'_>, allocation: &Value, pool: &mut IPPool) {
    const FIELD: &str = "spec.serviceAllocation";
    ctx.unknown_keys(
        allocation,
        FIELD,
        &[
            "priority",
            "namespaces",
            "namespaceSelectors",
            "serviceSelectors",
        ],
    );
    pool.spec.namespaces = allocation
        .get("namespaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let namespace_selectors = allocation
        .get("namespaceSelectors")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if namespace_selectors > 0 {
        let effect = if pool.spec.namespaces.is_empty() {
            "the converted pool serves Services of every namespace".to_string()
        } else {
            format!(
                "the converted pool serves only the namespaces listed ({})",
                pool.spec.namespaces.join(", ")
            )
        };
        ctx.lost(
            &format!("{FIELD}.namespaceSelectors"),
            format!(
                "vipam selects namespaces by name only (spec.namespaces), not by namespace \
                 labels: not converted; {effect}. List the namespaces the selectors match in \
                 spec.namespaces"
            ),
        );
    }
    pool.spec.service_selector = selectors::read_any_of(
        ctx,
        &format!("{FIELD}.serviceSelectors"),
        allocation.get("serviceSelectors"),
        "Services matching only the others no longer draw from this pool",
    );
}

fn l2_advertisement(ctx: &mut Ctx<'_>, value: &Value, pools: &[&Document]) {
    let spec = &value["spec"];
    ctx.unknown_keys(
        spec,
        "spec",
        &[
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "interfaces",
        ],
    );
    let mut l2 = L2AnnouncementSpec {
        service_selector: None,
        ip_pools: strings(spec.get("ipAddressPools")),
        node_selector: None,
        interfaces: Vec::new(),
        mode: AnnouncementMode::Arp,
    };
    let pool_selectors: Vec<(usize, &Value)> = spec
        .get("ipAddressPoolSelectors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .collect();
    if !pool_selectors.is_empty() {
        let mut matched = Vec::new();
        for (index, raw) in &pool_selectors {
            let field = format!("spec.ipAddressPoolSelectors[{index}]");
            let Some(selector) = selectors::read(ctx, &field, raw) else {
                continue;
            };
            for pool in pools {
                if matches_labels(&selector, &pool.value) {
                    let name = name_of(&pool.value);
                    if !l2.ip_pools.contains(&name) {
                        l2.ip_pools.push(name.clone());
                        matched.push(name);
                    }
                }
            }
        }
        if l2.ip_pools.is_empty() {
            ctx.lost(
                "spec.ipAddressPoolSelectors",
                "the selectors match no IPAddressPool in the inputs, so the advertisement \
                 announces nothing; no L2Announcement written (vipam's empty ipPools would mean \
                 every pool)",
            );
            return;
        }
        ctx.changed(
            "spec.ipAddressPoolSelectors",
            format!(
                "vipam names pools: the selectors matched {} in the inputs, listed in \
                 spec.ipPools; a pool added later with matching labels is not covered",
                if matched.is_empty() {
                    "no pool beyond those named".to_string()
                } else {
                    matched.join(", ")
                }
            ),
        );
    }
    // No pools named or selected: every pool, in MetalLB and in vipam (empty ipPools).
    l2.node_selector = selectors::read_any_of(
        ctx,
        "spec.nodeSelectors",
        spec.get("nodeSelectors"),
        "nodes matching only the others no longer announce (or write one L2Announcement per \
         selector by hand)",
    );
    l2.interfaces = strings(spec.get("interfaces"))
        .iter()
        .map(|name| interface_pattern(name))
        .collect();
    if l2.interfaces.is_empty() {
        ctx.changed("spec.interfaces", ALL_INTERFACES);
    }
    ctx.emit(Object::L2(Box::new(L2Announcement::new(
        &name_of(value),
        l2,
    ))));
}

fn matches_labels(selector: &LabelSelector, object: &Value) -> bool {
    let labels = string_map(object.pointer("/metadata/labels"));
    selector.to_core().is_ok_and(|s| s.matches(&labels))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// A layer2 pool of the old shapes: the pool, plus an L2Announcement of the same name that
/// announces it from every node (what MetalLB's layer2 mode did).
fn legacy_layer2(ctx: &mut Ctx<'_>, field: &str, name: &str) {
    ctx.changed(
        &format!("{field}.protocol"),
        format!(
            "layer2: written as L2Announcement {name} announcing pool {name} from every node; {}",
            ALL_INTERFACES
        ),
    );
    ctx.emit(Object::L2(Box::new(L2Announcement::new(
        name,
        L2AnnouncementSpec {
            service_selector: None,
            ip_pools: vec![name.to_string()],
            node_selector: None,
            interfaces: Vec::new(),
            mode: AnnouncementMode::Arp,
        },
    ))));
}

/// The `AddressPool` CRD (metallb.io/v1beta1, 0.12-0.13): a pool with its protocol.
fn legacy_address_pool(ctx: &mut Ctx<'_>, value: &Value) {
    let spec = &value["spec"];
    ctx.unknown_keys(
        spec,
        "spec",
        &[
            "protocol",
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "bgpAdvertisements",
        ],
    );
    let name = name_of(value);
    let pool = pool_from(ctx, "spec", &name, spec, &CRD_KEYS);
    ctx.emit_pool(pool);
    protocol(ctx, "spec", spec, &name, "bgpAdvertisements");
}

fn protocol(ctx: &mut Ctx<'_>, field: &str, pool: &Value, name: &str, advertisements: &str) {
    match pool.get("protocol").and_then(Value::as_str) {
        Some("layer2") => legacy_layer2(ctx, field, name),
        Some("bgp") => ctx.bgp(&format!("{field}.protocol")),
        other => ctx.lost(
            &format!("{field}.protocol"),
            format!("{other:?} is neither layer2 nor bgp: the pool is not announced"),
        ),
    }
    if pool.get(advertisements).is_some() {
        ctx.bgp(&format!("{field}.{advertisements}"));
    }
}

/// The ConfigMap of MetalLB before 0.13: `address-pools`, `peers`, `bgp-communities`.
fn legacy_config(ctx: &mut Ctx<'_>, value: &Value) {
    let text = value["data"]["config"].as_str().unwrap_or("");
    let config: Value = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            ctx.lost(
                "data.config",
                format!(
                    "not YAML ({}): nothing converted",
                    e.to_string().lines().next().unwrap_or("")
                ),
            );
            return;
        }
    };
    ctx.unknown_keys(
        &config,
        "data.config",
        &["address-pools", "peers", "bgp-communities"],
    );
    for key in ["peers", "bgp-communities"] {
        if config.get(key).is_some() {
            ctx.bgp(&format!("data.config.{key}"));
        }
    }
    for (index, pool) in config
        .get("address-pools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("data.config.address-pools[{index}]");
        ctx.unknown_keys(
            pool,
            &field,
            &[
                "name",
                "protocol",
                "addresses",
                "auto-assign",
                "avoid-buggy-ips",
                "bgp-advertisements",
            ],
        );
        let Some(name) = pool.get("name").and_then(Value::as_str) else {
            ctx.lost(&field, "a pool without a name: not converted");
            continue;
        };
        let converted = pool_from(ctx, &field, name, pool, &CONFIG_KEYS);
        ctx.emit_pool(converted);
        protocol(ctx, &field, pool, name, "bgp-advertisements");
    }
}
