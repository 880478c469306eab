//! MetalLB: `IPAddressPool`, `L2Advertisement`, `BGPPeer`, `BGPAdvertisement` (with the aliases
//! of `Community` objects resolved), the `AddressPool` CRD of 0.12/0.13 and the `config`
//! ConfigMap of MetalLB before 0.13.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Map, Value};

use super::bgp::{self, Timers};
use super::{
    ALL_INTERFACES, Blocks, Ctx, Imported, Object, interface_pattern, name_of, new_pool, selectors,
    string_map,
};
use crate::api::BGPAnnouncementSpec;
use crate::api::{AnnouncementMode, IPPool, L2Announcement, L2AnnouncementSpec, LabelSelectorExt};
use crate::check::Document;

const GROUP: &str = "metallb.io";

/// Community aliases: name -> (value, what defines it).
type Aliases = BTreeMap<String, (String, String)>;
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
    let aliases = community_aliases(documents);
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
            "AddressPool" => legacy_address_pool(&mut Ctx::new(doc, out), &doc.value, &aliases),
            "L2Advertisement" => l2_advertisement(&mut Ctx::new(doc, out), &doc.value, &pools),
            "BGPPeer" => {
                let name = name_of(&doc.value);
                peer(
                    &mut Ctx::new(doc, out),
                    "spec",
                    &name,
                    &doc.value["spec"],
                    &CRD_PEER,
                );
            }
            "BGPAdvertisement" => {
                bgp_advertisement(&mut Ctx::new(doc, out), &doc.value, &pools, &aliases)
            }
            "Community" => community_object(&mut Ctx::new(doc, out), &doc.value),
            "BFDProfile" => Ctx::new(doc, out).lost(
                "spec",
                "vipam has no BFD: not converted; a session notices a dead router by its hold \
                 time (BGPPeer spec.holdTime) only",
            ),
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
    if !resolve_pool_selectors(ctx, spec, pools, &mut l2.ip_pools, "L2Announcement") {
        return;
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

/// Adds the pools `spec.ipAddressPoolSelectors` select (by the labels of the `IPAddressPool`s in
/// the inputs) to `ip_pools`. False when selectors are given and match nothing: the advertisement
/// announces nothing in MetalLB, and no `kind` is written (vipam's empty ipPools is every pool).
fn resolve_pool_selectors(
    ctx: &mut Ctx<'_>,
    spec: &Value,
    pools: &[&Document],
    ip_pools: &mut Vec<String>,
    kind: &str,
) -> bool {
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
                    if !ip_pools.contains(&name) {
                        ip_pools.push(name.clone());
                        matched.push(name);
                    }
                }
            }
        }
        if ip_pools.is_empty() {
            ctx.lost(
                "spec.ipAddressPoolSelectors",
                format!(
                    "the selectors match no IPAddressPool in the inputs, so the advertisement \
                     announces nothing; no {kind} written (vipam's empty ipPools would mean \
                     every pool)"
                ),
            );
            return false;
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
    true
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
fn legacy_address_pool(ctx: &mut Ctx<'_>, value: &Value, aliases: &Aliases) {
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
    protocol(ctx, "spec", spec, &name, &CRD_ADVERTISEMENT, aliases);
}

fn protocol(
    ctx: &mut Ctx<'_>,
    field: &str,
    pool: &Value,
    name: &str,
    keys: &AdvertisementKeys,
    aliases: &Aliases,
) {
    match pool.get("protocol").and_then(Value::as_str) {
        Some("layer2") => {
            legacy_layer2(ctx, field, name);
            if pool.get(keys.list).is_some() {
                ctx.lost(
                    &format!("{field}.{}", keys.list),
                    "BGP advertisements of a layer2 pool: MetalLB does not use them either; \
                     not converted",
                );
            }
        }
        Some("bgp") => legacy_bgp(ctx, field, pool, name, keys, aliases),
        other => ctx.lost(
            &format!("{field}.protocol"),
            format!("{other:?} is neither layer2 nor bgp: the pool is not announced"),
        ),
    }
}

/// A bgp pool of the old shapes: one BGPAnnouncement of the pool per advertisement (`<pool>`, or
/// `<pool>-<n>` when there are several), to every peer from every node; none listed is one
/// advertisement with the defaults, as in MetalLB.
fn legacy_bgp(
    ctx: &mut Ctx<'_>,
    field: &str,
    pool: &Value,
    name: &str,
    keys: &AdvertisementKeys,
    aliases: &Aliases,
) {
    let advertisements = pool
        .get(keys.list)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if advertisements.is_empty() {
        let mut spec = bgp::new_announcement();
        spec.ip_pools = vec![name.to_string()];
        bgp::emit_announcement(ctx, &format!("{field}.protocol"), name, spec);
        return;
    }
    for (index, advertisement) in advertisements.iter().enumerate() {
        let path = format!("{field}.{}[{index}]", keys.list);
        ctx.unknown_keys(advertisement, &path, &keys.known());
        let mut spec = bgp::new_announcement();
        spec.ip_pools = vec![name.to_string()];
        attributes(ctx, &path, advertisement, keys, aliases, &mut spec);
        let announcement = if advertisements.len() == 1 {
            name.to_string()
        } else {
            format!("{name}-{}", index + 1)
        };
        bgp::emit_announcement(ctx, &path, &announcement, spec);
    }
}

/// How an advertisement's route attributes are spelled: in the CRDs, and in the ConfigMap.
struct AdvertisementKeys {
    /// The list of advertisements in a pool of the old shapes.
    list: &'static str,
    aggregation: &'static str,
    aggregation_v6: &'static str,
    local_pref: &'static str,
    communities: &'static str,
}

impl AdvertisementKeys {
    fn known(&self) -> [&'static str; 4] {
        [
            self.aggregation,
            self.aggregation_v6,
            self.local_pref,
            self.communities,
        ]
    }
}

const CRD_ADVERTISEMENT: AdvertisementKeys = AdvertisementKeys {
    list: "bgpAdvertisements",
    aggregation: "aggregationLength",
    aggregation_v6: "aggregationLengthV6",
    local_pref: "localPref",
    communities: "communities",
};

const CONFIG_ADVERTISEMENT: AdvertisementKeys = AdvertisementKeys {
    list: "bgp-advertisements",
    aggregation: "aggregation-length",
    aggregation_v6: "aggregation-length-v6",
    local_pref: "localpref",
    communities: "communities",
};

/// Aggregation lengths, LOCAL_PREF and communities (aliases resolved) of an advertisement.
fn attributes(
    ctx: &mut Ctx<'_>,
    field: &str,
    advertisement: &Value,
    keys: &AdvertisementKeys,
    aliases: &Aliases,
    spec: &mut BGPAnnouncementSpec,
) {
    let at = |key: &str| format!("{field}.{key}");
    if let Some(raw) = advertisement.get(keys.aggregation)
        && let Some(length) = bgp::prefix_length(ctx, &at(keys.aggregation), raw, 32)
    {
        spec.aggregation_length = length;
    }
    if let Some(raw) = advertisement.get(keys.aggregation_v6)
        && let Some(length) = bgp::prefix_length(ctx, &at(keys.aggregation_v6), raw, 128)
    {
        spec.aggregation_length_v6 = length;
    }
    if let Some(raw) = advertisement.get(keys.local_pref) {
        match raw.as_u64().and_then(|n| u32::try_from(n).ok()) {
            // 0 is MetalLB's "unset" (no LOCAL_PREF chosen).
            Some(0) => {}
            Some(pref) => spec.local_pref = Some(pref),
            None => ctx.lost(
                &at(keys.local_pref),
                format!("{raw} is not a LOCAL_PREF (0 to 4294967295): not converted"),
            ),
        }
    }
    for (index, entry) in advertisement
        .get(keys.communities)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("{}[{index}]", at(keys.communities));
        match entry.as_str() {
            Some(text) => {
                if let Some(community) = bgp::community(ctx, &path, text, aliases)
                    && !spec.communities.contains(&community)
                {
                    spec.communities.push(community);
                }
            }
            None => ctx.lost(&path, "not a string: not converted"),
        }
    }
}

/// The aliases every `Community` object of the inputs defines (the first definition wins, as
/// MetalLB refuses a second one).
fn community_aliases(documents: &[Document]) -> Aliases {
    let mut aliases = Aliases::new();
    for doc in documents
        .iter()
        .filter(|d| group_of(d) == GROUP && kind_of(d) == "Community")
    {
        let source = format!(
            "Community {}/{}",
            doc.value
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
            name_of(&doc.value)
        );
        for entry in doc
            .value
            .pointer("/spec/communities")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(value)) = (
                entry.get("name").and_then(Value::as_str),
                entry.get("value").and_then(Value::as_str),
            ) {
                aliases
                    .entry(name.to_string())
                    .or_insert_with(|| (value.to_string(), source.clone()));
            }
        }
    }
    aliases
}

/// A `Community` object: its aliases are resolved where advertisements use them; nothing of its
/// own is written.
fn community_object(ctx: &mut Ctx<'_>, value: &Value) {
    let spec = &value["spec"];
    ctx.unknown_keys(spec, "spec", &["communities"]);
    for (index, entry) in spec
        .get("communities")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        ctx.unknown_keys(
            entry,
            &format!("spec.communities[{index}]"),
            &["name", "value"],
        );
    }
}

fn bgp_advertisement(ctx: &mut Ctx<'_>, value: &Value, pools: &[&Document], aliases: &Aliases) {
    let spec = &value["spec"];
    ctx.unknown_keys(
        spec,
        "spec",
        &[
            "aggregationLength",
            "aggregationLengthV6",
            "localPref",
            "communities",
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "peers",
            "serviceSelectors",
        ],
    );
    let mut announcement = bgp::new_announcement();
    announcement.ip_pools = strings(spec.get("ipAddressPools"));
    if !resolve_pool_selectors(
        ctx,
        spec,
        pools,
        &mut announcement.ip_pools,
        "BGPAnnouncement",
    ) {
        return;
    }
    attributes(
        ctx,
        "spec",
        spec,
        &CRD_ADVERTISEMENT,
        aliases,
        &mut announcement,
    );
    announcement.node_selector = selectors::read_any_of(
        ctx,
        "spec.nodeSelectors",
        spec.get("nodeSelectors"),
        "nodes matching only the others no longer announce (or write one BGPAnnouncement per \
         selector by hand)",
    );
    announcement.service_selector = selectors::read_any_of(
        ctx,
        "spec.serviceSelectors",
        spec.get("serviceSelectors"),
        "Services matching only the others are no longer announced by it (or write one \
         BGPAnnouncement per selector by hand)",
    );
    // Peers are named alike: each MetalLB BGPPeer becomes a vipam BGPPeer of the same name.
    announcement.peers = strings(spec.get("peers"));
    bgp::emit_announcement(ctx, "spec", &name_of(value), announcement);
}

/// How a peer's fields are spelled: in the CRDs, and in the ConfigMap before 0.13.
struct PeerKeys {
    my_asn: &'static str,
    peer_asn: &'static str,
    address: &'static str,
    source: &'static str,
    port: &'static str,
    hold: &'static str,
    keepalive: &'static str,
    router_id: &'static str,
    node_selectors: &'static str,
    password: &'static str,
    bfd: &'static str,
    multihop: &'static str,
    /// Fields only the CRDs have.
    crd_only: &'static [&'static str],
}

impl PeerKeys {
    fn known(&self) -> Vec<&'static str> {
        let mut known = vec![
            self.my_asn,
            self.peer_asn,
            self.address,
            self.source,
            self.port,
            self.hold,
            self.keepalive,
            self.router_id,
            self.node_selectors,
            self.password,
            self.bfd,
            self.multihop,
        ];
        known.extend_from_slice(self.crd_only);
        known
    }
}

const CRD_PEER: PeerKeys = PeerKeys {
    my_asn: "myASN",
    peer_asn: "peerASN",
    address: "peerAddress",
    source: "sourceAddress",
    port: "peerPort",
    hold: "holdTime",
    keepalive: "keepaliveTime",
    router_id: "routerID",
    node_selectors: "nodeSelectors",
    password: "password",
    bfd: "bfdProfile",
    multihop: "ebgpMultiHop",
    crd_only: &[
        "dynamicASN",
        "interface",
        "connectTime",
        "passwordSecret",
        "enableGracefulRestart",
        "vrf",
        "disableMP",
        "dualStackAddressFamily",
    ],
};

const CONFIG_PEER: PeerKeys = PeerKeys {
    my_asn: "my-asn",
    peer_asn: "peer-asn",
    address: "peer-address",
    source: "source-address",
    port: "peer-port",
    hold: "hold-time",
    keepalive: "keepalive-time",
    router_id: "router-id",
    node_selectors: "node-selectors",
    password: "password",
    bfd: "bfd-profile",
    multihop: "ebgp-multihop",
    crd_only: &[],
};

/// TTL written for `ebgpMultiHop: true`: MetalLB's FRR configuration says `ebgp-multihop`
/// without a hop count, which FRR (like other routers) takes as the maximum, 255.
const MULTIHOP_TTL: u8 = 255;

/// A MetalLB peer (`peer` at `field`) as BGPPeer `name`.
fn peer(ctx: &mut Ctx<'_>, field: &str, name: &str, peer: &Value, keys: &PeerKeys) {
    let at = |key: &str| format!("{field}.{key}");
    let text = |key: &str| {
        peer.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|t| !t.is_empty())
    };
    ctx.unknown_keys(peer, field, &keys.known());
    let my_asn = bgp::asn(ctx, &at(keys.my_asn), peer.get(keys.my_asn));
    let peer_asn = bgp::asn(ctx, &at(keys.peer_asn), peer.get(keys.peer_asn)).filter(|a| *a != 0);
    let peer_asn = match (peer_asn, text("dynamicASN"), my_asn) {
        (Some(asn), _, _) => Some(asn),
        (None, Some("internal"), Some(mine)) => {
            ctx.changed(
                &at("dynamicASN"),
                format!(
                    "internal: the router is in the nodes' AS, written as peerASN {mine} (same \
                     effect)"
                ),
            );
            Some(mine)
        }
        (None, Some(mode), _) => {
            ctx.lost(
                &at("dynamicASN"),
                format!(
                    "{mode}: vipam needs the router's AS number; the peer is not converted \
                     (write spec.peerASN)"
                ),
            );
            None
        }
        (None, None, _) => {
            ctx.lost(
                &at(keys.peer_asn),
                "no peer AS number: the peer is not converted",
            );
            None
        }
    };
    if my_asn.is_none() && peer.get(keys.my_asn).is_none() {
        ctx.lost(
            &at(keys.my_asn),
            "no local AS number: the peer is not converted",
        );
    }
    let address = match (text(keys.address), text("interface")) {
        (Some(address), _) => bgp::peer_address(ctx, &at(keys.address), address),
        (None, Some(interface)) => {
            ctx.lost(
                &at("interface"),
                format!(
                    "unnumbered BGP over {interface}: vipam peers with an address; the peer is \
                     not converted"
                ),
            );
            None
        }
        (None, None) => {
            ctx.lost(
                &at(keys.address),
                "no peer address: the peer is not converted",
            );
            None
        }
    };
    if let Some(vrf) = text("vrf") {
        ctx.lost(
            &at("vrf"),
            format!(
                "the session runs in the host VRF {vrf}: vipam's agents peer from the default \
                 VRF only; the peer is not converted"
            ),
        );
    }
    let (Some(address), Some(peer_asn), Some(my_asn)) = (address, peer_asn, my_asn) else {
        return;
    };
    if text("vrf").is_some() {
        return;
    }
    let mut spec = bgp::new_peer(address.to_string(), peer_asn, my_asn);
    if let Some(raw) = peer.get(keys.port) {
        match raw.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(port) if port > 0 => spec.peer_port = port,
            _ => ctx.lost(
                &at(keys.port),
                format!("{raw} is not a TCP port: not converted (179 written)"),
            ),
        }
    }
    spec.source_address = text(keys.source).map(str::to_string);
    let hold = peer
        .get(keys.hold)
        .and_then(|v| bgp::duration(ctx, &at(keys.hold), v));
    let keepalive = peer
        .get(keys.keepalive)
        .and_then(|v| bgp::duration(ctx, &at(keys.keepalive), v));
    bgp::timers(
        ctx,
        Timers {
            hold_field: &at(keys.hold),
            hold,
            keepalive,
            hold_default: None,
            unset: "MetalLB leaves the hold time to its BGP speaker's default",
        },
        &mut spec,
    );
    if peer.get("connectTime").is_some() {
        ctx.changed(
            &at("connectTime"),
            "vipam reconnects after 1 s, doubling up to 15 s, with no setting: the retry \
             interval differs",
        );
    }
    if let Some(router_id) = text(keys.router_id) {
        ctx.lost(
            &at(keys.router_id),
            format!(
                "{router_id}: vipam's router ID is each node's IPv4 InternalIP, or the node's \
                 annotation vipam.io/bgp-router-id; not converted: annotate the nodes to choose \
                 it"
            ),
        );
    }
    let node_selectors = if keys.crd_only.is_empty() {
        peer.get(keys.node_selectors).map(config_selectors)
    } else {
        peer.get(keys.node_selectors).cloned()
    };
    spec.node_selector = selectors::read_any_of(
        ctx,
        &at(keys.node_selectors),
        node_selectors.as_ref(),
        "nodes matching only the others no longer peer with this router (or write one BGPPeer \
         per selector by hand)",
    );
    if text(keys.password).is_some() {
        spec.password_secret_ref = Some(bgp::password_ref(
            ctx,
            &at(keys.password),
            name,
            "a password written in the object",
        ));
    }
    if let Some(secret) = peer.get("passwordSecret")
        && let Some(secret_name) = secret.get("name").and_then(Value::as_str)
    {
        let namespace = secret
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("metallb-system");
        spec.password_secret_ref = Some(bgp::password_ref(
            ctx,
            &at("passwordSecret"),
            name,
            &format!("the password in Secret {namespace}/{secret_name} (key password)"),
        ));
    }
    if let Some(profile) = text(keys.bfd) {
        ctx.lost(
            &at(keys.bfd),
            format!(
                "{profile}: vipam has no BFD; the session notices a dead router by its hold \
                 time only: not converted"
            ),
        );
    }
    if peer.get(keys.multihop).and_then(Value::as_bool) == Some(true) {
        spec.ebgp_multi_hop = Some(MULTIHOP_TTL);
        ctx.changed(
            &at(keys.multihop),
            format!(
                "true: written as ebgpMultiHop {MULTIHOP_TTL} (a TTL), what MetalLB's FRR \
                 configuration (`ebgp-multihop` without a hop count) sends"
            ),
        );
    }
    spec.graceful_restart = peer
        .get("enableGracefulRestart")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // disableMP: true is what vipam always does (each family only to peers of that family).
    if peer.get("dualStackAddressFamily").and_then(Value::as_bool) == Some(true) {
        ctx.lost(
            &at("dualStackAddressFamily"),
            "vipam announces IPv4 addresses only to IPv4 peers and IPv6 addresses only to IPv6 \
             peers: not converted; add a BGPPeer for the router's other address",
        );
    }
    bgp::emit_peer(ctx, field, name, spec);
}

/// Node selectors as the ConfigMap writes them (`match-labels`, `match-expressions`), in the
/// shape of a LabelSelector list.
fn config_selectors(list: &Value) -> Value {
    let rename = |selector: &Value| {
        let mut out = Map::new();
        for (key, value) in selector.as_object().into_iter().flatten() {
            let key = match key.as_str() {
                "match-labels" => "matchLabels",
                "match-expressions" => "matchExpressions",
                other => other,
            };
            out.insert(key.to_string(), value.clone());
        }
        Value::Object(out)
    };
    match list.as_array() {
        Some(items) => Value::Array(items.iter().map(rename).collect()),
        None => list.clone(),
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
    let aliases: Aliases = config
        .get("bgp-communities")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, value)| {
            Some((
                name.clone(),
                (
                    value.as_str()?.to_string(),
                    "data.config.bgp-communities".to_string(),
                ),
            ))
        })
        .collect();
    // Peers have no names in the ConfigMap: metallb-peer-1, metallb-peer-2, ...
    for (index, entry) in config
        .get("peers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        peer(
            ctx,
            &format!("data.config.peers[{index}]"),
            &format!("metallb-peer-{}", index + 1),
            entry,
            &CONFIG_PEER,
        );
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
        protocol(ctx, &field, pool, name, &CONFIG_ADVERTISEMENT, &aliases);
    }
}
