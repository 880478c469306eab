//! kube-vip: the `kubevip` ConfigMap of kube-vip-cloud-provider (the pools), and the kube-vip
//! DaemonSet or static Pod (its environment: services mode becomes an L2Announcement, or with
//! BGP BGPPeers and a BGPAnnouncement; control-plane mode the output of `vipam manifest` for the
//! same VIP, interface and port).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use super::bgp::{self, Timers};
use super::{
    Blocks, Ctx, Imported, Object, interface_pattern, new_pool, selectors, string_map, truthy,
};
use crate::api::{AnnouncementMode, L2Announcement, L2AnnouncementSpec};
use crate::check::Document;
use crate::manifest::{self, ManifestOptions};

/// Name of the cloud provider's ConfigMap.
const CONFIG_MAP: &str = "kubevip";
/// Prefix of the pools this import writes (`kube-vip-global`, `kube-vip-<namespace>`).
const POOL_PREFIX: &str = "kube-vip-";
/// Name of the L2Announcement (and BGPAnnouncement) written for services mode; its BGPPeers are
/// `kube-vip-1`, `kube-vip-2`, ...
const L2_NAME: &str = "kube-vip";

pub(super) fn import(documents: &[Document], out: &mut Imported) {
    for doc in documents {
        let api_version = doc.value["apiVersion"].as_str().unwrap_or("");
        let kind = doc.value["kind"].as_str().unwrap_or("");
        let name = doc.value.pointer("/metadata/name").and_then(Value::as_str);
        match (api_version, kind) {
            ("v1", "ConfigMap") if name == Some(CONFIG_MAP) => {
                config_map(&mut Ctx::new(doc, out), &doc.value)
            }
            ("v1", "Pod") => {
                if let Some((index, container)) = kube_vip_container(&doc.value["spec"]) {
                    let mut ctx = Ctx::new(doc, out);
                    workload(&mut ctx, &doc.value, Shape::StaticPod, index, container);
                }
            }
            ("apps/v1", "DaemonSet") => {
                if let Some((index, container)) =
                    kube_vip_container(&doc.value["spec"]["template"]["spec"])
                {
                    let mut ctx = Ctx::new(doc, out);
                    workload(&mut ctx, &doc.value, Shape::DaemonSet, index, container);
                }
            }
            _ => {}
        }
    }
}

/// The namespace part of a `cidr-`/`range-` key, and whether the key is a `cidr-` one.
fn pool_key(key: &str) -> Option<(&str, bool)> {
    key.strip_prefix("cidr-")
        .map(|ns| (ns, true))
        .or_else(|| key.strip_prefix("range-").map(|ns| (ns, false)))
}

fn config_map(ctx: &mut Ctx<'_>, value: &Value) {
    let data = string_map(value.get("data"));
    let skip_ends = data
        .get("skip-end-ips-in-cidr")
        .is_some_and(|v| truthy(v) == Some(true));
    // namespace ("global" for the global pool) -> blocks from both key kinds.
    let mut pools: BTreeMap<&str, Blocks> = BTreeMap::new();
    for (key, entries) in &data {
        let field = format!("data.{key}");
        if let Some((namespace, is_cidr_key)) = pool_key(key) {
            let blocks = pools.entry(namespace).or_insert_with(|| Blocks {
                skips_ends: skip_ends,
                ..Blocks::default()
            });
            for entry in entries.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let looks_like_cidr = entry.contains('/');
                if looks_like_cidr != is_cidr_key {
                    ctx.changed(
                        &field,
                        format!(
                            "{entry} is a {} under a {} key: read as what it is",
                            if looks_like_cidr { "CIDR" } else { "range" },
                            if is_cidr_key { "cidr-" } else { "range-" }
                        ),
                    );
                }
                blocks.add_entry(ctx, &field, entry);
            }
            continue;
        }
        match key.as_str() {
            "skip-end-ips-in-cidr" => {}
            "search-order" => {
                if data[key].trim() != "asc" {
                    ctx.lost(
                        &field,
                        format!(
                            "{:?}: vipam hands out the lowest free address first; there is no \
                             other order: not converted",
                            data[key]
                        ),
                    );
                }
            }
            k if k.starts_with("allow-share-") => ctx.lost(
                &field,
                "vipam shares an address only between Services with the same \
                 vipam.io/sharing-key (and vipam.io/sharing-cross-namespace across \
                 namespaces), never by namespace: not converted; annotate the Services that \
                 share",
            ),
            k if k.starts_with("interface-") => ctx.lost(
                &field,
                "a per-namespace service interface: not converted; write an L2Announcement \
                 whose serviceSelector matches vipam.io/service-namespace with these interfaces",
            ),
            _ => ctx.lost(&field, "a key vipam import does not know: not converted"),
        }
    }
    let has_namespace_pools = pools.keys().any(|ns| *ns != "global");
    for (namespace, blocks) in pools {
        let field = if namespace == "global" {
            "data.cidr-global/range-global".to_string()
        } else {
            format!("data.cidr-{namespace}/range-{namespace}")
        };
        let mut pool = new_pool(&format!("{POOL_PREFIX}{namespace}"), blocks.blocks.clone());
        // The cloud provider hands out every address of a CIDR unless told to skip the ends.
        pool.spec.allow_first_last_ips = blocks.has_v4_cidr_with_ends && !skip_ends;
        if namespace == "global" {
            if has_namespace_pools {
                pool.spec.priority = 1;
                ctx.changed(
                    &field,
                    "kube-vip uses the global pool only in namespaces without a pool of their own; \
                     vipam tries the namespace pools first (priority 0) and falls back to the \
                     global pool (priority 1) when a namespace pool is full",
                );
            }
        } else {
            pool.spec.namespaces = vec![namespace.to_string()];
        }
        ctx.emit_pool(pool);
    }
}

/// The container running kube-vip (not its cloud provider), by image or environment.
fn kube_vip_container(pod_spec: &Value) -> Option<(usize, &Value)> {
    pod_spec
        .get("containers")
        .and_then(Value::as_array)?
        .iter()
        .enumerate()
        .find(|(_, c)| {
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let by_image = image.contains("kube-vip") && !image.contains("cloud-provider");
            let by_env = c
                .get("env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("name").and_then(Value::as_str))
                .any(|n| matches!(n, "cp_enable" | "svc_enable" | "vip_interface"));
            by_image || by_env
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    StaticPod,
    DaemonSet,
}

/// Settings read (and used) below; every other one is reported.
const READ: &[&str] = &[
    "vip_interface",
    "vip_servicesinterface",
    "address",
    "vip_address",
    "port",
    "vip_arp",
    "cp_enable",
    "svc_enable",
    "vip_leaderelection",
    "svc_election",
    "vip_leaseduration",
    "vip_renewdeadline",
    "vip_retryperiod",
    "vip_leasename",
    "cp_namespace",
    "vip_cidr",
    "vip_subnet",
    // The node's name from the downward API: vipam's manifests set NODE_NAME the same way.
    "vip_nodename",
];

/// BGP settings read by [`bgp_mode`].
const BGP_READ: &[&str] = &[
    "bgp_enable",
    "bgp_routerid",
    "bgp_routerinterface",
    "bgp_as",
    "bgp_peeraddress",
    "bgp_peeras",
    "bgp_peerpass",
    "bgp_multihop",
    "bgp_sourceip",
    "bgp_sourceif",
    "bgp_peers",
    "bgp_hold_time",
    "bgp_keepalive_interval",
];

struct Env {
    values: BTreeMap<String, Option<String>>,
    field: String,
}

impl Env {
    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.as_deref())
    }

    fn flag(&self, ctx: &mut Ctx<'_>, name: &str) -> bool {
        match self.get(name).map(truthy) {
            None => false,
            Some(Some(b)) => b,
            Some(None) => {
                ctx.lost(
                    &self.at(name),
                    format!("{:?} is not true or false: read as false", self.get(name)),
                );
                false
            }
        }
    }

    fn at(&self, name: &str) -> String {
        format!("{}[{name}]", self.field)
    }

    fn seconds(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<Duration> {
        let text = self.get(name)?;
        match text.trim().parse::<u64>() {
            Ok(s) if s > 0 => Some(Duration::from_secs(s)),
            _ => {
                ctx.lost(
                    &self.at(name),
                    format!("{text:?} is not a whole number of seconds: not converted"),
                );
                None
            }
        }
    }
}

fn workload(ctx: &mut Ctx<'_>, value: &Value, shape: Shape, index: usize, container: &Value) {
    let pod_path = match shape {
        Shape::StaticPod => "spec",
        Shape::DaemonSet => "spec.template.spec",
    };
    let env = Env {
        values: container
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let name = e.get("name").and_then(Value::as_str)?;
                Some((
                    name.to_string(),
                    e.get("value").and_then(Value::as_str).map(str::to_string),
                ))
            })
            .collect(),
        field: format!("{pod_path}.containers[{index}].env"),
    };
    for name in env.values.keys() {
        if !READ.contains(&name.as_str()) && !BGP_READ.contains(&name.as_str()) {
            ctx.lost(
                &env.at(name),
                "a kube-vip setting vipam has no equivalent for: not converted",
            );
        }
    }
    let control_plane = env.flag(ctx, "cp_enable");
    let services = env.flag(ctx, "svc_enable");
    let arp = env.flag(ctx, "vip_arp");
    let bgp = env.flag(ctx, "bgp_enable");
    if !bgp {
        for name in env.values.keys().filter(|n| n.starts_with("bgp_")) {
            if name != "bgp_enable" {
                ctx.lost(
                    &env.at(name),
                    "bgp_enable is not true, so kube-vip does not use this setting: not converted",
                );
            }
        }
    }
    if !control_plane && !services {
        ctx.lost(
            &env.field,
            "neither cp_enable nor svc_enable is true: kube-vip serves nothing here, nothing to \
             convert",
        );
        return;
    }
    if !arp && !bgp {
        ctx.lost(
            &env.at("vip_arp"),
            "vip_arp is not true and BGP is off (routing-table or other modes): vipam announces \
             by ARP/NDP or BGP only: not converted",
        );
        return;
    }
    if env.get("vip_leaderelection").map(truthy) == Some(Some(false)) {
        ctx.changed(
            &env.at("vip_leaderelection"),
            "false in kube-vip; vipam always elects exactly one node per address",
        );
    }
    if env.get("svc_election").is_some() {
        ctx.changed(
            &env.at("svc_election"),
            "vipam elects the announcing node per address from its agents' leases; there is no \
             per-Service election to switch",
        );
    }
    for name in ["vip_cidr", "vip_subnet"] {
        if let Some(prefix) = env.get(name)
            && !matches!(prefix.trim(), "32" | "128" | "32,128" | "")
        {
            ctx.changed(
                &env.at(name),
                format!("/{prefix} in kube-vip; vipam adds the VIP as /32 (IPv4) or /128 (IPv6)"),
            );
        }
    }
    let pod_spec = match shape {
        Shape::StaticPod => &value["spec"],
        Shape::DaemonSet => &value["spec"]["template"]["spec"],
    };
    if services {
        services_mode(ctx, &env, pod_spec, pod_path, control_plane, arp);
        if bgp {
            let node_labels = string_map(pod_spec.get("nodeSelector"));
            bgp_mode(ctx, &env, selectors::from_map(&node_labels));
        }
    } else if bgp {
        ctx.lost(
            &env.at("bgp_enable"),
            "BGP without svc_enable: kube-vip announces only the control-plane VIP by BGP, which \
             vipam announces by ARP/NDP (vipam manifest): not converted",
        );
    }
    if control_plane && arp {
        control_plane_mode(ctx, &env, value, pod_spec, shape);
    } else if control_plane {
        ctx.lost(
            &env.at("cp_enable"),
            "the control-plane VIP is announced by BGP here; vipam's control-plane VIP (vipam \
             manifest) is announced by ARP/NDP only: not converted",
        );
    } else if let Some(address) = env.get("address").or(env.get("vip_address")) {
        ctx.lost(
            &env.at("address"),
            format!(
                "{address}: cp_enable is not true, so kube-vip does not serve it; not converted"
            ),
        );
    }
}

fn services_mode(
    ctx: &mut Ctx<'_>,
    env: &Env,
    pod_spec: &Value,
    pod_path: &str,
    cp: bool,
    arp: bool,
) {
    let interface = env
        .get("vip_servicesinterface")
        .or(env.get("vip_interface"))
        .filter(|i| !i.trim().is_empty());
    let node_labels = string_map(pod_spec.get("nodeSelector"));
    if pod_spec.get("affinity").is_some() {
        ctx.lost(
            &format!("{pod_path}.affinity"),
            "which nodes run kube-vip by affinity: not converted to the announcement's \
             nodeSelector; write the matching nodeSelector by hand",
        );
    }
    if !cp {
        for name in [
            "vip_leaseduration",
            "vip_renewdeadline",
            "vip_retryperiod",
            "vip_leasename",
        ] {
            if env.get(name).is_some() {
                ctx.lost(
                    &env.at(name),
                    "services mode: vipam's agents hold their own liveness leases (agent flags), \
                     not one per Service: not converted",
                );
            }
        }
    }
    if !arp {
        return;
    }
    let spec = L2AnnouncementSpec {
        service_selector: None,
        ip_pools: Vec::new(),
        node_selector: selectors::from_map(&node_labels),
        // Unset, kube-vip uses the interface of the default route, as vipam does.
        interfaces: interface.map(interface_pattern).into_iter().collect(),
        mode: AnnouncementMode::Arp,
    };
    ctx.emit(Object::L2(Box::new(L2Announcement::new(L2_NAME, spec))));
}

/// TTL kube-vip gives eBGP multihop sessions (its GoBGP peer configuration).
const MULTIHOP_TTL: u8 = 50;
/// kube-vip's AS number when `bgp_as` / `bgp_peeras` are unset.
const DEFAULT_ASN: u32 = 65000;

/// One peer as kube-vip's environment describes it.
struct KubeVipPeer {
    field: String,
    address: String,
    asn: u32,
    /// Where a password was found.
    password: Option<String>,
    multihop: bool,
    port: u16,
}

/// Services announced by BGP: BGPPeers `kube-vip-1`, ... (`bgp_peeraddress` first, then the
/// entries of `bgp_peers`), and BGPAnnouncement `kube-vip` of every pool to them, from the nodes
/// kube-vip runs on.
fn bgp_mode(ctx: &mut Ctx<'_>, env: &Env, node_selector: Option<LabelSelector>) {
    let asn = |ctx: &mut Ctx<'_>, name: &str| match env.get(name) {
        None => Some(DEFAULT_ASN),
        Some(text) => bgp::asn(ctx, &env.at(name), Some(&Value::String(text.to_string()))),
    };
    let Some(my_asn) = asn(ctx, "bgp_as") else {
        return;
    };
    if env.values.contains_key("bgp_routerid") {
        match env.get("bgp_routerid") {
            None => ctx.changed(
                &env.at("bgp_routerid"),
                "set from the downward API (the node's address): vipam's router ID is each \
                 node's IPv4 InternalIP (or its annotation vipam.io/bgp-router-id), the same \
                 address on most clusters",
            ),
            Some(id) => ctx.lost(
                &env.at("bgp_routerid"),
                format!(
                    "{id}: vipam's router ID is each node's IPv4 InternalIP, or the node's \
                     annotation vipam.io/bgp-router-id; not converted: annotate the nodes to \
                     choose it"
                ),
            ),
        }
    }
    for (name, why) in [
        (
            "bgp_routerinterface",
            "vipam's router ID is each node's IPv4 InternalIP, or the node's annotation \
             vipam.io/bgp-router-id: not converted",
        ),
        (
            "bgp_sourceif",
            "vipam connects from the address the routing table chooses, or the BGPPeer's \
             sourceAddress: not converted",
        ),
    ] {
        if env.values.contains_key(name) {
            ctx.lost(&env.at(name), why);
        }
    }
    let source = if env.values.contains_key("bgp_sourceip") {
        match env.get("bgp_sourceip") {
            None => {
                ctx.changed(
                    &env.at("bgp_sourceip"),
                    "set from the downward API (the node's address): vipam lets the routing \
                     table choose the source, the node's address towards the router",
                );
                None
            }
            Some(ip) => Some(ip.trim().to_string()),
        }
    } else {
        None
    };
    let hold = env
        .get("bgp_hold_time")
        .and_then(|v| bgp::whole_seconds(ctx, &env.at("bgp_hold_time"), &Value::String(v.into())));
    let keepalive = env.get("bgp_keepalive_interval").and_then(|v| {
        bgp::whole_seconds(
            ctx,
            &env.at("bgp_keepalive_interval"),
            &Value::String(v.into()),
        )
    });
    let mut peers = Vec::new();
    if let Some(address) = env.get("bgp_peeraddress").filter(|a| !a.trim().is_empty()) {
        if let Some(peer_asn) = asn(ctx, "bgp_peeras") {
            peers.push(KubeVipPeer {
                field: env.at("bgp_peeraddress"),
                address: address.trim().to_string(),
                asn: peer_asn,
                password: env
                    .values
                    .get("bgp_peerpass")
                    .filter(|v| v.as_deref() != Some(""))
                    .map(|_| env.at("bgp_peerpass")),
                multihop: env.flag(ctx, "bgp_multihop"),
                port: 179,
            });
        }
    } else {
        for name in ["bgp_peeras", "bgp_peerpass", "bgp_multihop"] {
            if env.values.contains_key(name) {
                ctx.lost(
                    &env.at(name),
                    "no bgp_peeraddress: kube-vip does not use this setting: not converted",
                );
            }
        }
    }
    if let Some(list) = env.get("bgp_peers") {
        let field = env.at("bgp_peers");
        for (index, entry) in list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            if let Some(peer) = parse_peer(ctx, &format!("{field}[{index}]"), entry) {
                peers.push(peer);
            }
        }
    }
    if peers.is_empty() {
        ctx.lost(
            &env.at("bgp_enable"),
            "no peer in bgp_peeraddress or bgp_peers could be converted: nothing announces by \
             BGP",
        );
        return;
    }
    let mut names = Vec::new();
    for (index, peer) in peers.into_iter().enumerate() {
        let name = format!("{L2_NAME}-{}", index + 1);
        let Some(address) = bgp::peer_address(ctx, &peer.field, &peer.address) else {
            continue;
        };
        let mut spec = bgp::new_peer(address.to_string(), peer.asn, my_asn);
        spec.peer_port = peer.port;
        spec.source_address = source.clone();
        spec.node_selector = node_selector.clone();
        bgp::timers(
            ctx,
            Timers {
                hold_field: &env.at("bgp_hold_time"),
                hold,
                keepalive,
                hold_default: None,
                unset: "kube-vip leaves the hold time to GoBGP's default",
            },
            &mut spec,
        );
        if peer.multihop {
            spec.ebgp_multi_hop = Some(MULTIHOP_TTL);
            ctx.changed(
                &peer.field,
                format!(
                    "multihop: written as ebgpMultiHop {MULTIHOP_TTL} (a TTL), the TTL kube-vip \
                     gives multihop sessions"
                ),
            );
        }
        if let Some(field) = &peer.password {
            spec.password_secret_ref = Some(bgp::password_ref(
                ctx,
                field,
                &name,
                "a password in kube-vip's environment",
            ));
        }
        bgp::emit_peer(ctx, &peer.field, &name, spec);
        names.push(name);
    }
    if names.is_empty() {
        return;
    }
    let mut spec = bgp::new_announcement();
    spec.node_selector = node_selector;
    spec.peers = names;
    bgp::emit_announcement(ctx, &env.at("bgp_enable"), L2_NAME, spec);
}

/// One entry of `bgp_peers`: `<address>:<AS>[:<password>[:<multihop>[:<port>[:<MP-BGP
/// options>[:<BFD options>]]]]]`, an IPv6 address in brackets (`[2001:db8::1]:64512`); older
/// kube-vip wrote MP-BGP options after a `/`.
fn parse_peer(ctx: &mut Ctx<'_>, field: &str, entry: &str) -> Option<KubeVipPeer> {
    let (entry, options) = match entry.split_once('/') {
        Some((peer, options)) => (peer, Some(options)),
        None => (entry, None),
    };
    if let Some(options) = options.filter(|o| !o.is_empty()) {
        ctx.lost(
            field,
            format!("MP-BGP options {options:?}: vipam announces each family to peers of that family only: not converted"),
        );
    }
    if entry.starts_with("unnumbered:") {
        ctx.lost(
            field,
            format!("{entry}: unnumbered BGP; vipam peers with an address: not converted"),
        );
        return None;
    }
    let split = match entry.strip_prefix('[') {
        Some(rest) => rest
            .split_once(']')
            .map(|(address, rest)| (address, rest.strip_prefix(':').unwrap_or(rest))),
        None => entry.split_once(':'),
    };
    let Some((address, rest)) = split else {
        ctx.lost(
            field,
            format!("{entry:?} is not <address>:<AS>: the peer is not converted"),
        );
        return None;
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let asn = bgp::asn(ctx, field, Some(&Value::String(parts[0].to_string())))?;
    let part = |i: usize| parts.get(i).copied().unwrap_or("").trim();
    let multihop = match truthy(part(2)) {
        Some(b) => b,
        None => {
            ctx.lost(
                field,
                format!("multihop {:?} is not true or false: read as false", part(2)),
            );
            false
        }
    };
    let port = match part(3) {
        "" => 179,
        text => match text.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                ctx.lost(
                    field,
                    format!("port {text:?} is not a TCP port: not converted (179 written)"),
                );
                179
            }
        },
    };
    if !part(4).is_empty() {
        ctx.lost(
            field,
            format!(
                "MP-BGP options {:?}: vipam announces each family to peers of that family only: \
                 not converted",
                part(4)
            ),
        );
    }
    if !part(5).is_empty() {
        ctx.lost(
            field,
            format!(
                "BFD options {:?}: vipam has no BFD; the session notices a dead router by its \
                 hold time only: not converted",
                part(5)
            ),
        );
    }
    if parts.len() > 6 {
        ctx.lost(
            field,
            format!(
                "{entry:?} has more fields than kube-vip's peer format: the rest is not converted"
            ),
        );
    }
    Some(KubeVipPeer {
        field: field.to_string(),
        address: address.to_string(),
        asn,
        password: (!part(1).is_empty()).then(|| field.to_string()),
        multihop,
        port,
    })
}

fn control_plane_mode(ctx: &mut Ctx<'_>, env: &Env, value: &Value, pod_spec: &Value, shape: Shape) {
    let Some(address) = env.get("address").or(env.get("vip_address")) else {
        ctx.lost(
            &env.at("address"),
            "cp_enable without address or vip_address: no VIP to convert",
        );
        return;
    };
    let Ok(vip) = address.trim().parse::<IpAddr>() else {
        ctx.lost(
            &env.at("address"),
            format!("{address:?} is not an IP address (a DNS name with vip_ddns?): vipam's control-plane VIP is an address; not converted"),
        );
        return;
    };
    let Some(interface) = env.get("vip_interface").filter(|i| !i.trim().is_empty()) else {
        ctx.lost(
            &env.at("vip_interface"),
            "no vip_interface: vipam's control-plane VIP needs the interface named; not converted",
        );
        return;
    };
    let port = match env.get("port").map(|p| p.trim().parse::<u16>()) {
        None => 6443,
        Some(Ok(p)) => p,
        Some(Err(_)) => {
            ctx.lost(
                &env.at("port"),
                "not a port number: not converted (6443 written)",
            );
            6443
        }
    };
    let namespace = env
        .get("cp_namespace")
        .or(value.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or("kube-system")
        .to_string();
    let defaults = ManifestOptions {
        vip,
        interface: Some(interface.trim().to_string()),
        image: manifest::DEFAULT_IMAGE.to_string(),
        port,
        namespace,
        kubeconfig: "/etc/kubernetes/admin.conf".to_string(),
        lease_duration: Duration::from_secs(3),
        renew_interval: Duration::from_secs(1),
        bgp: None,
    };
    let options = ManifestOptions {
        lease_duration: env
            .seconds(ctx, "vip_leaseduration")
            .unwrap_or(defaults.lease_duration),
        renew_interval: env
            .seconds(ctx, "vip_retryperiod")
            .unwrap_or(defaults.renew_interval),
        kubeconfig: kubeconfig_path(pod_spec).unwrap_or(defaults.kubeconfig.clone()),
        ..defaults
    };
    if env.get("vip_renewdeadline").is_some() {
        ctx.changed(
            &env.at("vip_renewdeadline"),
            "vipam's control-plane election has a lease duration and a renew interval, no \
             separate renew deadline: the holder gives up when its lease would expire",
        );
    }
    if let Some(lease) = env.get("vip_leasename")
        && lease != manifest::NAME
    {
        ctx.changed(
            &env.at("vip_leasename"),
            format!("{lease} in kube-vip; vipam's Lease is {}", manifest::NAME),
        );
    }
    match shape {
        Shape::StaticPod => ctx.emit(Object::Pod(Box::new(manifest::static_pod(&options)))),
        Shape::DaemonSet => {
            let (account, role, binding, daemonset) = manifest::daemonset(&options);
            ctx.emit(Object::ServiceAccount(Box::new(account)));
            ctx.emit(Object::Role(Box::new(role)));
            ctx.emit(Object::RoleBinding(Box::new(binding)));
            ctx.emit(Object::DaemonSet(Box::new(daemonset)));
        }
    }
}

/// The host's kubeconfig mounted into kube-vip's static pod (admin.conf or super-admin.conf).
fn kubeconfig_path(pod_spec: &Value) -> Option<String> {
    pod_spec
        .get("volumes")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|v| v.pointer("/hostPath/path").and_then(Value::as_str))
        .find(|p| p.ends_with(".conf"))
        .map(str::to_string)
}
