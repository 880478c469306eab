//! Cilium: `CiliumLoadBalancerIPPool` (LB-IPAM), `CiliumL2AnnouncementPolicy` and the BGP
//! control plane's `CiliumBGPPeeringPolicy`; its newer resources (`CiliumBGPClusterConfig`, ...)
//! are reported by kind, not converted.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::bgp::{self, Timers};
use super::{
    ALL_INTERFACES, Blocks, Ctx, Imported, Object, name_of, new_pool, selectors, string_map,
};
use crate::api::LabelSelectorExt;
use crate::api::{AnnouncementMode, BGPAnnouncementSpec, L2Announcement, L2AnnouncementSpec};
use crate::check::Document;
use crate::core::bgp::config::RESTART_TIME;
use crate::core::range::{Family, ip_value};

const GROUP: &str = "cilium.io";

/// The BGP control plane's v2 resources: not converted (reported by kind).
const BGP_V2_KINDS: &[&str] = &[
    "CiliumBGPClusterConfig",
    "CiliumBGPPeerConfig",
    "CiliumBGPAdvertisement",
    "CiliumBGPNodeConfig",
    "CiliumBGPNodeConfigOverride",
];

fn group_of(doc: &Document) -> &str {
    doc.value["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map_or("", |(g, _)| g)
}

pub(super) fn import(documents: &[Document], out: &mut Imported) {
    let lb_pools: Vec<&Document> = documents
        .iter()
        .filter(|d| group_of(d) == GROUP && d.value["kind"] == "CiliumLoadBalancerIPPool")
        .collect();
    for doc in documents {
        if group_of(doc) != GROUP {
            continue;
        }
        match doc.value["kind"].as_str().unwrap_or("") {
            "CiliumLoadBalancerIPPool" => pool(&mut Ctx::new(doc, out), &doc.value),
            "CiliumL2AnnouncementPolicy" => l2_policy(&mut Ctx::new(doc, out), &doc.value),
            "CiliumBGPPeeringPolicy" => {
                peering_policy(&mut Ctx::new(doc, out), &doc.value, &lb_pools)
            }
            kind if BGP_V2_KINDS.contains(&kind) => Ctx::new(doc, out).lost(
                "spec",
                format!(
                    "{kind} (the BGP control plane's v2 resources) is not converted by vipam \
                     import: write the BGPPeer and BGPAnnouncement objects by hand \
                     (docs/import.md, Cilium BGP, shows how the fields map)"
                ),
            ),
            // Other Cilium kinds (network policies, nodes, ...) are not LoadBalancer settings.
            _ => {}
        }
    }
}

fn pool(ctx: &mut Ctx<'_>, value: &Value) {
    let spec = &value["spec"];
    ctx.unknown_keys(
        spec,
        "spec",
        &[
            "blocks",
            "cidrs",
            "allowFirstLastIPs",
            "serviceSelector",
            "disabled",
        ],
    );
    // `Yes` or unset: the first and last addresses of every CIDR are handed out.
    let allow_first_last = match spec.get("allowFirstLastIPs").and_then(Value::as_str) {
        None | Some("Yes") => true,
        Some("No") => false,
        Some(other) => {
            ctx.lost(
                "spec.allowFirstLastIPs",
                format!("{other:?} is neither Yes nor No: read as Yes (Cilium's default)"),
            );
            true
        }
    };
    let mut blocks = Blocks {
        skips_ends: !allow_first_last,
        ..Blocks::default()
    };
    // `cidrs` is the v2alpha1 name of `blocks` (deprecated), with the same shape.
    for field in ["blocks", "cidrs"] {
        for (index, block) in spec
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = format!("spec.{field}[{index}]");
            ctx.unknown_keys(block, &path, &["cidr", "start", "stop"]);
            let text = |k: &str| block.get(k).and_then(Value::as_str);
            match (text("cidr"), text("start"), text("stop")) {
                (Some(cidr), None, None) => {
                    if !allow_first_last && let Some(inner) = v6_without_ends(cidr) {
                        ctx.changed(
                            &path,
                            format!(
                                "allowFirstLastIPs: No reserves the first and last address of \
                                 {cidr}; vipam does that only for IPv4 CIDRs, so the block is \
                                 written as the range {inner}"
                            ),
                        );
                        blocks.add_entry(ctx, &path, &inner);
                    } else {
                        blocks.add_cidr(ctx, &path, cidr);
                    }
                }
                (None, Some(start), stop) => blocks.add_range(ctx, &path, start, stop),
                _ => ctx.lost(&path, "a block needs cidr, or start with an optional stop"),
            }
        }
    }
    let mut pool = new_pool(&name_of(value), blocks.blocks.clone());
    pool.spec.allow_first_last_ips = allow_first_last && blocks.has_v4_cidr_with_ends;
    pool.spec.disabled = spec
        .get("disabled")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(raw) = spec.get("serviceSelector")
        && let Some(mut selector) = selectors::read(ctx, "spec.serviceSelector", raw)
    {
        selectors::rewrite_cilium_pseudo_labels(ctx, "spec.serviceSelector", &mut selector);
        pool.spec.service_selector = (!selectors::is_empty(&selector)).then_some(selector);
    }
    ctx.emit_pool(pool);
}

/// An IPv6 CIDR of /126 or larger as the range without its first and last address (Cilium's
/// `allowFirstLastIPs: No`); None for everything else.
fn v6_without_ends(cidr: &str) -> Option<String> {
    let net: ipnet::IpNet = cidr.trim().parse().ok()?;
    let net = net.trunc();
    if Family::of(&net.network()) != Family::V6 || net.prefix_len() > 126 {
        return None;
    }
    let first = ip_value(&net.network()) + 1;
    let last = ip_value(&net.broadcast()) - 1;
    let (first, last): (IpAddr, IpAddr) = (Family::V6.addr(first), Family::V6.addr(last));
    Some(format!("{first}-{last}"))
}

fn l2_policy(ctx: &mut Ctx<'_>, value: &Value) {
    let spec = &value["spec"];
    ctx.unknown_keys(
        spec,
        "spec",
        &[
            "serviceSelector",
            "nodeSelector",
            "interfaces",
            "loadBalancerIPs",
            "externalIPs",
        ],
    );
    if spec.get("externalIPs").and_then(Value::as_bool) == Some(true) {
        ctx.lost(
            "spec.externalIPs",
            "vipam announces LoadBalancer addresses only, not spec.externalIPs: not converted",
        );
    }
    if spec.get("loadBalancerIPs").and_then(Value::as_bool) != Some(true) {
        ctx.lost(
            "spec.loadBalancerIPs",
            "the policy does not announce LoadBalancer addresses, so there is no \
             L2Announcement to write",
        );
        return;
    }
    let mut l2 = L2AnnouncementSpec {
        service_selector: None,
        ip_pools: Vec::new(),
        node_selector: None,
        interfaces: Vec::new(),
        mode: AnnouncementMode::Arp,
    };
    if let Some(raw) = spec.get("serviceSelector")
        && let Some(mut selector) = selectors::read(ctx, "spec.serviceSelector", raw)
    {
        selectors::rewrite_cilium_pseudo_labels(ctx, "spec.serviceSelector", &mut selector);
        l2.service_selector = (!selectors::is_empty(&selector)).then_some(selector);
    }
    if let Some(raw) = spec.get("nodeSelector")
        && let Some(selector) = selectors::read(ctx, "spec.nodeSelector", raw)
    {
        l2.node_selector = (!selectors::is_empty(&selector)).then_some(selector);
    }
    // Cilium's interfaces are regular expressions already, like vipam's.
    for (index, pattern) in spec
        .get("interfaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match pattern.as_str().map(|p| (p, regex::Regex::new(p))) {
            Some((p, Ok(_))) => l2.interfaces.push(p.to_string()),
            Some((p, Err(e))) => ctx.lost(
                &format!("spec.interfaces[{index}]"),
                format!("{p:?} is not a regular expression vipam reads ({e}): not converted"),
            ),
            None => ctx.lost(&format!("spec.interfaces[{index}]"), "not a string"),
        }
    }
    if l2.interfaces.is_empty() {
        ctx.changed("spec.interfaces", ALL_INTERFACES);
    }
    ctx.emit(Object::L2(Box::new(L2Announcement::new(
        &name_of(value),
        l2,
    ))));
}

/// `CiliumBGPPeeringPolicy`: one BGPPeer per neighbor (`<policy>-<address>`, with the virtual
/// router's number after the policy's name when there are several), and per virtual router one
/// BGPAnnouncement of the Services it selects, to its neighbors, from the policy's nodes.
fn peering_policy(ctx: &mut Ctx<'_>, value: &Value, lb_pools: &[&Document]) {
    let spec = &value["spec"];
    ctx.unknown_keys(spec, "spec", &["nodeSelector", "virtualRouters"]);
    let policy = name_of(value);
    let node_selector = bgp::optional_selector(ctx, "spec.nodeSelector", spec.get("nodeSelector"));
    let routers = spec
        .get("virtualRouters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if routers.is_empty() {
        ctx.lost(
            "spec.virtualRouters",
            "no virtual routers: nothing to convert",
        );
    }
    for (index, router) in routers.iter().enumerate() {
        let name = if routers.len() > 1 {
            format!("{policy}-{}", index + 1)
        } else {
            policy.clone()
        };
        let router_ctx = Router {
            field: format!("spec.virtualRouters[{index}]"),
            name,
            node_selector: node_selector.clone(),
        };
        virtual_router(ctx, &router_ctx, router, lb_pools);
    }
}

struct Router {
    field: String,
    /// The BGPAnnouncement's name, and the prefix of its peers' names.
    name: String,
    node_selector: Option<LabelSelector>,
}

fn virtual_router(ctx: &mut Ctx<'_>, router: &Router, value: &Value, lb_pools: &[&Document]) {
    let at = |key: &str| format!("{}.{key}", router.field);
    ctx.unknown_keys(
        value,
        &router.field,
        &[
            "localASN",
            "exportPodCIDR",
            "podIPPoolSelector",
            "serviceSelector",
            "serviceAdvertisements",
            "neighbors",
        ],
    );
    let local_asn = bgp::asn(ctx, &at("localASN"), value.get("localASN"));
    if value.get("localASN").is_none() {
        ctx.lost(&at("localASN"), "no local AS number: no peer is converted");
    }
    if value.get("exportPodCIDR").and_then(Value::as_bool) == Some(true) {
        ctx.lost(
            &at("exportPodCIDR"),
            "vipam announces LoadBalancer addresses only, not the nodes' pod CIDRs: not \
             converted",
        );
    }
    if value.get("podIPPoolSelector").is_some() {
        ctx.lost(
            &at("podIPPoolSelector"),
            "vipam announces LoadBalancer addresses only, not pod IP pools: not converted",
        );
    }
    let advertisements = match value.get("serviceAdvertisements").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        None => vec!["LoadBalancerIP".to_string()],
    };
    for other in advertisements.iter().filter(|a| *a != "LoadBalancerIP") {
        ctx.lost(
            &at("serviceAdvertisements"),
            format!("{other}: vipam announces LoadBalancer addresses only: not converted"),
        );
    }
    let mut peers = Vec::new();
    let mut attributes = Vec::new();
    for (index, neighbor_value) in value
        .get("neighbors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = at(&format!("neighbors[{index}]"));
        if let Some(peer) = neighbor(ctx, &field, router, neighbor_value, local_asn) {
            for (j, entry) in neighbor_value
                .get("advertisedPathAttributes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                attributes.push((
                    format!("{field}.advertisedPathAttributes[{j}]"),
                    format!("{peer}-attributes-{}", j + 1),
                    peer.clone(),
                    entry.clone(),
                ));
            }
            peers.push(peer);
        }
    }
    let raw_selector = value.get("serviceSelector");
    let selector = raw_selector
        .and_then(|raw| selectors::read(ctx, &at("serviceSelector"), raw))
        .map(|mut selector| {
            selectors::rewrite_cilium_pseudo_labels(ctx, &at("serviceSelector"), &mut selector);
            selector
        });
    let selector = match selector {
        Some(selector) if !selectors::is_empty(&selector) => selector,
        // Invalid: reported by the reader.
        None if raw_selector.is_some() => return,
        _ => {
            ctx.changed(
                &at("serviceSelector"),
                "unset or empty: Cilium announces no Service from this virtual router, so no \
                 BGPAnnouncement is written (its peers are)",
            );
            return;
        }
    };
    if !advertisements.iter().any(|a| a == "LoadBalancerIP") {
        ctx.lost(
            &at("serviceAdvertisements"),
            "LoadBalancerIP is not listed: the virtual router announces no LoadBalancer address, \
             so no BGPAnnouncement is written",
        );
        return;
    }
    if peers.is_empty() {
        ctx.lost(
            &at("neighbors"),
            "no neighbor could be converted, so no BGPAnnouncement is written (an empty peers \
             list would mean every BGPPeer)",
        );
        return;
    }
    let mut spec = bgp::new_announcement();
    spec.service_selector = Some(selector);
    spec.node_selector = router.node_selector.clone();
    spec.peers = peers;
    bgp::emit_announcement(ctx, &router.field, &router.name, spec.clone());
    for (field, name, peer, entry) in attributes {
        path_attributes(ctx, &field, &name, &peer, &entry, &spec, lb_pools);
    }
}

/// One neighbor as BGPPeer `<router>-<address>`; its name when a peer was written (or tried).
fn neighbor(
    ctx: &mut Ctx<'_>,
    field: &str,
    router: &Router,
    value: &Value,
    local_asn: Option<u32>,
) -> Option<String> {
    let at = |key: &str| format!("{field}.{key}");
    ctx.unknown_keys(
        value,
        field,
        &[
            "peerAddress",
            "peerPort",
            "peerASN",
            "eBGPMultihopTTL",
            "connectRetryTimeSeconds",
            "holdTimeSeconds",
            "keepAliveTimeSeconds",
            "gracefulRestart",
            "families",
            "advertisedPathAttributes",
            "authSecretRef",
        ],
    );
    let Some(text) = value.get("peerAddress").and_then(Value::as_str) else {
        ctx.lost(
            &at("peerAddress"),
            "no peer address: the peer is not converted",
        );
        return None;
    };
    let address = bgp::peer_address(ctx, &at("peerAddress"), text)?;
    let name = format!("{}-{}", router.name, bgp::address_name(&address));
    let peer_asn = bgp::asn(ctx, &at("peerASN"), value.get("peerASN"));
    if value.get("peerASN").is_none() {
        ctx.lost(
            &at("peerASN"),
            "no peer AS number: the peer is not converted",
        );
    }
    let (Some(peer_asn), Some(local_asn)) = (peer_asn, local_asn) else {
        return None;
    };
    let mut spec = bgp::new_peer(address.to_string(), peer_asn, local_asn);
    spec.node_selector = router.node_selector.clone();
    if let Some(raw) = value.get("peerPort") {
        match raw.as_u64().and_then(|p| u16::try_from(p).ok()) {
            Some(port) if port > 0 => spec.peer_port = port,
            _ => ctx.lost(
                &at("peerPort"),
                format!("{raw} is not a TCP port: not converted (179 written)"),
            ),
        }
    }
    // Cilium ignores the TTL for iBGP peers; 1 is a directly connected eBGP peer (vipam's
    // default too).
    if let Some(raw) = value.get("eBGPMultihopTTL") {
        match raw.as_u64().and_then(|t| u8::try_from(t).ok()) {
            Some(ttl) if ttl >= 1 => {
                if ttl > 1 && peer_asn != local_asn {
                    spec.ebgp_multi_hop = Some(ttl);
                }
            }
            _ => ctx.lost(
                &at("eBGPMultihopTTL"),
                format!("{raw} is not a TTL (1 to 255): not converted"),
            ),
        }
    }
    if value.get("connectRetryTimeSeconds").is_some() {
        ctx.changed(
            &at("connectRetryTimeSeconds"),
            "vipam reconnects after 1 s, doubling up to 15 s, with no setting: the retry \
             interval differs",
        );
    }
    let hold = value
        .get("holdTimeSeconds")
        .and_then(|v| bgp::whole_seconds(ctx, &at("holdTimeSeconds"), v));
    // Cilium's keepalive is 30 s unless set, whatever the hold time.
    let keepalive = match value.get("keepAliveTimeSeconds") {
        Some(v) => bgp::whole_seconds(ctx, &at("keepAliveTimeSeconds"), v),
        None => Some(CILIUM_KEEPALIVE),
    };
    bgp::timers(
        ctx,
        Timers {
            hold_field: &at("holdTimeSeconds"),
            hold,
            keepalive,
            hold_default: Some(CILIUM_HOLD_TIME),
            unset: "",
        },
        &mut spec,
    );
    if let Some(restart) = value.get("gracefulRestart") {
        ctx.unknown_keys(
            restart,
            &at("gracefulRestart"),
            &["enabled", "restartTimeSeconds"],
        );
        spec.graceful_restart = restart.get("enabled").and_then(Value::as_bool) == Some(true);
        if let Some(time) = restart.get("restartTimeSeconds").and_then(Value::as_u64)
            && spec.graceful_restart
            && time != u64::from(RESTART_TIME)
        {
            ctx.lost(
                &at("gracefulRestart.restartTimeSeconds"),
                format!(
                    "{time}: vipam advertises a restart time of {RESTART_TIME} s, with no \
                     setting: not converted"
                ),
            );
        }
    }
    if let Some(secret) = value.get("authSecretRef").and_then(Value::as_str) {
        spec.password_secret_ref = Some(bgp::password_ref(
            ctx,
            &at("authSecretRef"),
            &name,
            &format!(
                "the password in Secret {secret} (key password, in Cilium's BGP secrets \
                 namespace, kube-system by default)"
            ),
        ));
    }
    families(ctx, &at("families"), value.get("families"), &address);
    bgp::emit_peer(ctx, field, &name, spec);
    Some(name)
}

/// Cilium's default hold and keepalive times (CiliumBGPNeighbor).
const CILIUM_HOLD_TIME: u64 = 90;
const CILIUM_KEEPALIVE: u64 = 30;
/// vipam sends unicast routes of a peer's own family; other families are reported.
fn families(ctx: &mut Ctx<'_>, field: &str, list: Option<&Value>, peer: &IpAddr) {
    let own = if peer.is_ipv4() { "ipv4" } else { "ipv6" };
    for (index, family) in list
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let afi = family.get("afi").and_then(Value::as_str).unwrap_or("");
        let safi = family.get("safi").and_then(Value::as_str).unwrap_or("");
        let path = format!("{field}[{index}]");
        match (afi, safi) {
            (afi, "unicast") if afi == own => {}
            ("ipv4" | "ipv6", "unicast") => ctx.changed(
                &path,
                format!(
                    "{afi}/unicast over a session to {peer}: vipam announces each address only \
                     to peers of its own family; add a BGPPeer for the router's {afi} address"
                ),
            ),
            _ => ctx.lost(
                &path,
                format!(
                    "{afi}/{safi}: vipam announces IPv4 and IPv6 unicast routes only: not converted"
                ),
            ),
        }
    }
}

/// One entry of a neighbor's `advertisedPathAttributes`: an announcement to that peer of the
/// same Services (of the selected pools) that adds the communities and LOCAL_PREF (vipam merges
/// the announcements of one route: communities add up).
fn path_attributes(
    ctx: &mut Ctx<'_>,
    field: &str,
    name: &str,
    peer: &str,
    entry: &Value,
    base: &BGPAnnouncementSpec,
    lb_pools: &[&Document],
) {
    let at = |key: &str| format!("{field}.{key}");
    ctx.unknown_keys(
        entry,
        field,
        &["selectorType", "selector", "communities", "localPreference"],
    );
    match entry.get("selectorType").and_then(Value::as_str) {
        Some("CiliumLoadBalancerIPPool") => {}
        other => {
            ctx.lost(
                &at("selectorType"),
                format!(
                    "{}: attributes of routes vipam does not announce (pod CIDRs or pod IP pools): \
                     not converted",
                    other.unwrap_or("unset")
                ),
            );
            return;
        }
    }
    let mut spec = base.clone();
    spec.peers = vec![peer.to_string()];
    spec.communities = Vec::new();
    spec.local_pref = None;
    if let Some(selector) = bgp::optional_selector(ctx, &at("selector"), entry.get("selector")) {
        let matched: Vec<String> = lb_pools
            .iter()
            .filter(|pool| {
                let labels = string_map(pool.value.pointer("/metadata/labels"));
                selector.to_core().is_ok_and(|s| s.matches(&labels))
            })
            .map(|pool| name_of(&pool.value))
            .collect();
        if matched.is_empty() {
            ctx.lost(
                &at("selector"),
                "matches no CiliumLoadBalancerIPPool in the inputs: not converted (vipam names \
                 pools; an empty list would mean every pool)",
            );
            return;
        }
        ctx.changed(
            &at("selector"),
            format!(
                "vipam names pools: the selector matched {} in the inputs, listed in \
                 spec.ipPools; a pool added later with matching labels is not covered",
                matched.join(", ")
            ),
        );
        spec.ip_pools = matched;
    }
    let no_aliases = BTreeMap::new();
    if let Some(communities) = entry.get("communities") {
        ctx.unknown_keys(
            communities,
            &at("communities"),
            &["standard", "wellKnown", "large"],
        );
        for kind in ["standard", "wellKnown", "large"] {
            for (index, value) in communities
                .get(kind)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let path = format!("{}.{kind}[{index}]", at("communities"));
                let text = match value {
                    Value::String(s) => s.trim().to_string(),
                    other => other.to_string(),
                };
                let written = match kind {
                    // A standard community may be one 32-bit number.
                    "standard" => match text.parse::<u32>() {
                        Ok(n) => format!("{}:{}", n >> 16, n & 0xFFFF),
                        Err(_) => text,
                    },
                    "large" => format!("large:{text}"),
                    _ => text,
                };
                if let Some(community) = bgp::community(ctx, &path, &written, &no_aliases)
                    && !spec.communities.contains(&community)
                {
                    spec.communities.push(community);
                }
            }
        }
    }
    if let Some(raw) = entry.get("localPreference") {
        match raw.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(pref) => spec.local_pref = Some(pref),
            None => ctx.lost(
                &at("localPreference"),
                format!("{raw} is not a LOCAL_PREF (0 to 4294967295): not converted"),
            ),
        }
    }
    bgp::emit_announcement(ctx, field, name, spec);
}
