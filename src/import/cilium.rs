//! Cilium: `CiliumLoadBalancerIPPool` (LB-IPAM) and `CiliumL2AnnouncementPolicy`; the BGP
//! control plane's objects are reported (vipam has no BGP mode yet).

use std::net::IpAddr;

use serde_json::Value;

use super::{ALL_INTERFACES, Blocks, Ctx, Imported, Object, name_of, new_pool, selectors};
use crate::api::{AnnouncementMode, L2Announcement, L2AnnouncementSpec};
use crate::check::Document;
use crate::core::range::{Family, ip_value};

const GROUP: &str = "cilium.io";

const BGP_KINDS: &[&str] = &[
    "CiliumBGPPeeringPolicy",
    "CiliumBGPClusterConfig",
    "CiliumBGPPeerConfig",
    "CiliumBGPAdvertisement",
    "CiliumBGPNodeConfig",
    "CiliumBGPNodeConfigOverride",
];

pub(super) fn import(documents: &[Document], out: &mut Imported) {
    for doc in documents {
        let group = doc.value["apiVersion"]
            .as_str()
            .and_then(|v| v.split_once('/'))
            .map_or("", |(g, _)| g);
        if group != GROUP {
            continue;
        }
        match doc.value["kind"].as_str().unwrap_or("") {
            "CiliumLoadBalancerIPPool" => pool(&mut Ctx::new(doc, out), &doc.value),
            "CiliumL2AnnouncementPolicy" => l2_policy(&mut Ctx::new(doc, out), &doc.value),
            kind if BGP_KINDS.contains(&kind) => Ctx::new(doc, out).bgp("spec"),
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
