//! `vipam import` and `vipam check --clusters` end to end: every field of the fixtures (shaped as
//! kube-vip, Cilium and MetalLB document them) converted or warned about by name, the output
//! accepted by `vipam check` with every pinned address kept, the example tree's pools surviving a
//! round trip through each tool's format, and overlaps across clusters found.

mod cli;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cli::{root, stderr, stdout, vipam};
use serde::Deserialize;
use serde_json::Value;
use vipam::api::{BGPAnnouncement, BGPPeer, IPPool, L2Announcement};

const FIXTURES: &str = "tests/data/import";

/// The YAML documents of a stream, parsed.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .flat_map(|d| d.strip_prefix("---\n").or(Some(d)))
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str::<Value>(d).unwrap_or_else(|e| panic!("{e}:\n{d}")))
        .collect()
}

fn of_kind<'a, T: Deserialize<'a>>(docs: &'a [Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| T::deserialize(d).unwrap())
        .collect()
}

fn peer<'a>(peers: &'a [BGPPeer], name: &str) -> &'a BGPPeer {
    peers
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no BGPPeer {name}"))
}

fn announcement<'a>(all: &'a [BGPAnnouncement], name: &str) -> &'a BGPAnnouncement {
    all.iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no BGPAnnouncement {name}"))
}

fn pool<'a>(pools: &'a [IPPool], name: &str) -> &'a IPPool {
    pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no IPPool {name}"))
}

fn l2<'a>(l2s: &'a [L2Announcement], name: &str) -> &'a L2Announcement {
    l2s.iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no L2Announcement {name}"))
}

/// The blocks as vipam's messages write them (`cidr 10.0.0.0/24`, `a-b`, `start a`).
fn blocks(pool: &IPPool) -> Vec<String> {
    vipam::api::pool_spec(pool)
        .unwrap()
        .blocks
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap()
}

/// Asserts every needle appears on one warning line of stderr that also names `field`.
fn warned(err: &str, object: &str, field: &str, needle: &str) {
    assert!(
        err.lines().any(|l| l.starts_with("warning[")
            && l.contains(object)
            && l.contains(&format!(": {field}: "))
            && l.contains(needle)),
        "no warning on {object} {field} with {needle:?}:\n{err}"
    );
}

#[test]
fn metallb_every_field_is_converted_or_named() {
    let out = vipam(&["import", &format!("{FIXTURES}/metallb/full")], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let docs = documents(&stdout(&out));
    let pools: Vec<IPPool> = of_kind(&docs, "IPPool");
    let l2s: Vec<L2Announcement> = of_kind(&docs, "L2Announcement");
    assert_eq!(pools.len(), 3);

    let lan = pool(&pools, "lan");
    assert_eq!(blocks(lan), ["192.168.0.220-192.168.0.239"]);
    // No serviceAllocation: MetalLB tries it after every pool that has one.
    assert_eq!(lan.spec.priority, 12);
    warned(
        &err,
        "IPAddressPool metallb-system/lan",
        "spec.serviceAllocation.priority",
        "written as priority 12",
    );

    let servers = pool(&pools, "servers");
    assert_eq!(
        blocks(servers),
        [
            "cidr 10.20.0.0/28",
            "10.20.0.32-10.20.0.40",
            "cidr fd00:20::/124"
        ]
    );
    assert!(!servers.spec.auto_assign);
    assert!(servers.spec.avoid_buggy_ips);
    // MetalLB hands out a CIDR's network and broadcast addresses.
    assert!(servers.spec.allow_first_last_ips);
    assert_eq!(servers.spec.priority, 10);
    assert_eq!(servers.spec.namespaces, ["db", "cache"]);
    assert_eq!(
        json(&servers.spec.service_selector),
        serde_json::json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["data", "cache"]}]})
    );

    let tenants = pool(&pools, "tenants");
    assert_eq!(tenants.spec.priority, 11);
    warned(
        &err,
        "IPAddressPool metallb-system/tenants",
        "spec.serviceAllocation.namespaceSelectors",
        "serves Services of every namespace",
    );
    warned(
        &err,
        "IPAddressPool metallb-system/tenants",
        "spec.serviceAllocation.serviceSelectors",
        "only the first was carried over",
    );

    let home = l2(&l2s, "home");
    assert_eq!(home.spec.ip_pools, ["lan"]);
    assert_eq!(home.spec.interfaces, ["^eth0$", "^enp1s0$"]);
    assert_eq!(
        json(&home.spec.node_selector),
        serde_json::json!({"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a", "node-b"]}]})
    );
    let dc = l2(&l2s, "dc");
    assert_eq!(
        dc.spec.ip_pools,
        ["servers"],
        "the pool selector resolved by labels"
    );
    warned(
        &err,
        "L2Advertisement metallb-system/dc",
        "spec.ipAddressPoolSelectors",
        "matched servers",
    );
    warned(
        &err,
        "L2Advertisement metallb-system/dc",
        "spec.nodeSelectors",
        "only the first was carried over",
    );
    warned(
        &err,
        "L2Advertisement metallb-system/dc",
        "spec.interfaces",
        "every interface",
    );
    warned(
        &err,
        "L2Advertisement metallb-system/nowhere",
        "spec.ipAddressPoolSelectors",
        "no L2Announcement written",
    );
    assert!(
        l2s.iter()
            .all(|l| l.metadata.name.as_deref() != Some("nowhere"))
    );
    let everything = l2(&l2s, "everything");
    assert!(everything.spec.ip_pools.is_empty() && everything.spec.node_selector.is_none());

    // BGP (tests/data/import/metallb/bgp has every field): the peer, the advertisement with
    // its Community alias resolved; BFD is reported.
    let peers: Vec<BGPPeer> = of_kind(&docs, "BGPPeer");
    assert_eq!(peer(&peers, "router").spec.peer_address, "10.0.0.1");
    let announcements: Vec<BGPAnnouncement> = of_kind(&docs, "BGPAnnouncement");
    let servers = announcement(&announcements, "servers");
    assert_eq!(servers.spec.ip_pools, ["servers"]);
    assert_eq!(servers.spec.communities, ["65535:65281"]);
    warned(
        &err,
        "BFDProfile metallb-system/fast",
        "spec",
        "vipam has no BFD",
    );
    assert!(!err.contains("no BGP mode"), "{err}");
    // Each object says where it came from.
    assert!(stdout(&out).contains(
        "# vipam import: from metallb.io/v1beta1 IPAddressPool metallb-system/servers at tests/data/import/metallb/full/pools.yaml:13"
    ));
}

#[test]
fn metallb_legacy_config_map() {
    let out = vipam(&["import", &format!("{FIXTURES}/metallb/legacy")], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let docs = documents(&stdout(&out));
    let pools: Vec<IPPool> = of_kind(&docs, "IPPool");
    let default = pool(&pools, "default");
    assert_eq!(blocks(default), ["192.168.1.240-192.168.1.250"]);
    assert!(default.spec.avoid_buggy_ips);
    let bgp = pool(&pools, "bgp-pool");
    assert_eq!(blocks(bgp), ["cidr 198.51.100.0/28"]);
    assert!(!bgp.spec.auto_assign);
    assert!(bgp.spec.allow_first_last_ips);
    let l2s: Vec<L2Announcement> = of_kind(&docs, "L2Announcement");
    assert_eq!(l2s.len(), 1, "only the layer2 pool is announced by L2");
    assert_eq!(l2(&l2s, "default").spec.ip_pools, ["default"]);
    let object = "ConfigMap metallb-system/config";

    let peers: Vec<BGPPeer> = of_kind(&docs, "BGPPeer");
    assert_eq!(peers.len(), 1);
    let router = &peer(&peers, "metallb-peer-1").spec;
    assert_eq!(
        (router.peer_address.as_str(), router.peer_asn, router.my_asn),
        ("192.0.2.1", 64501, 64500)
    );
    assert_eq!(router.peer_port, 1179);
    assert_eq!(router.hold_time, "90s");
    assert_eq!(router.ebgp_multi_hop, Some(255));
    assert_eq!(
        json(&router.node_selector),
        serde_json::json!({"matchLabels": {"rack": "r1"}})
    );
    warned(
        &err,
        object,
        "data.config.peers[0].ebgp-multihop",
        "ebgpMultiHop 255",
    );
    warned(
        &err,
        object,
        "data.config.peers[0].router-id",
        "vipam.io/bgp-router-id",
    );
    let announcements: Vec<BGPAnnouncement> = of_kind(&docs, "BGPAnnouncement");
    let first = &announcement(&announcements, "bgp-pool-1").spec;
    assert_eq!(first.ip_pools, ["bgp-pool"]);
    assert_eq!(first.local_pref, Some(100));
    assert_eq!(first.communities, ["65535:65282"], "bgp-communities alias");
    assert!(first.peers.is_empty(), "every peer, as in MetalLB");
    let second = &announcement(&announcements, "bgp-pool-2").spec;
    assert_eq!(second.aggregation_length, 28);
    warned(
        &err,
        object,
        "data.config.address-pools[1].bgp-advertisements[0].communities[0]",
        "alias no-adv",
    );
    let default = &announcement(&announcements, "bgp-default").spec;
    assert_eq!(default.ip_pools, ["bgp-default"], "no advertisements: one");
    assert_eq!(default.aggregation_length, 32);
    assert_eq!(announcements.len(), 3);
    warned(
        &err,
        object,
        "data.config.address-pools[0].protocol",
        "every interface",
    );
}

#[test]
fn cilium_every_field_is_converted_or_named() {
    let out = vipam(&["import", &format!("{FIXTURES}/cilium/full")], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let docs = documents(&stdout(&out));
    let pools: Vec<IPPool> = of_kind(&docs, "IPPool");
    let blue = pool(&pools, "blue");
    assert_eq!(
        blocks(blue),
        [
            "cidr 10.0.10.0/24",
            "2004::1-2004::ffff:ffff:ffff:fffe",
            "20.0.20.100-20.0.20.200",
            "start 1.2.3.4"
        ]
    );
    assert!(!blue.spec.allow_first_last_ips, "allowFirstLastIPs: No");
    assert!(!blue.spec.disabled);
    assert_eq!(
        json(&blue.spec.service_selector),
        serde_json::json!({"matchLabels": {"color": "blue", "vipam.io/service-namespace": "team-blue"}})
    );
    warned(
        &err,
        "CiliumLoadBalancerIPPool blue",
        "spec.blocks[1]",
        "2004::1-2004::ffff:ffff:ffff:fffe",
    );
    warned(
        &err,
        "CiliumLoadBalancerIPPool blue",
        "spec.serviceSelector",
        "io.kubernetes.service.namespace",
    );
    let retired = pool(&pools, "retired");
    assert_eq!(
        blocks(retired),
        ["cidr 10.0.20.0/28"],
        "the deprecated cidrs field"
    );
    assert!(retired.spec.disabled);
    // Unset allowFirstLastIPs is Yes in Cilium.
    assert!(retired.spec.allow_first_last_ips);
    assert!(!pool(&pools, "lan").spec.allow_first_last_ips, "no CIDR");

    let l2s: Vec<L2Announcement> = of_kind(&docs, "L2Announcement");
    let policy = l2(&l2s, "blue");
    assert_eq!(policy.spec.interfaces, ["^eth[0-9]+", "^enp.*"]);
    assert_eq!(
        json(&policy.spec.service_selector),
        serde_json::json!({"matchLabels": {"color": "blue"}})
    );
    assert_eq!(
        json(&policy.spec.node_selector),
        serde_json::json!({"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]})
    );
    warned(
        &err,
        "CiliumL2AnnouncementPolicy blue",
        "spec.externalIPs",
        "not converted",
    );
    warned(
        &err,
        "CiliumL2AnnouncementPolicy everywhere",
        "spec.interfaces",
        "every interface",
    );
    warned(
        &err,
        "CiliumL2AnnouncementPolicy external-only",
        "spec.loadBalancerIPs",
        "no L2Announcement to write",
    );
    assert_eq!(l2s.len(), 2);
    warned(
        &err,
        "CiliumBGPClusterConfig cilium-bgp",
        "spec",
        "not converted by vipam import",
    );
    // A peering policy without a serviceSelector announces no Service: its peer only.
    let peers: Vec<BGPPeer> = of_kind(&docs, "BGPPeer");
    assert_eq!(peer(&peers, "rack0-10-0-0-1").spec.my_asn, 64512);
    assert!(of_kind::<BGPAnnouncement>(&docs, "BGPAnnouncement").is_empty());
    warned(
        &err,
        "CiliumBGPPeeringPolicy rack0",
        "spec.virtualRouters[0].serviceSelector",
        "announces no Service",
    );
}

#[test]
fn kube_vip_pools_services_and_control_plane() {
    let out = vipam(&["import", &format!("{FIXTURES}/kube-vip/full")], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let text = stdout(&out);
    let docs = documents(&text);
    let pools: Vec<IPPool> = of_kind(&docs, "IPPool");
    let global = pool(&pools, "kube-vip-global");
    assert_eq!(
        blocks(global),
        [
            "cidr 192.168.0.228/30",
            "192.168.0.220-192.168.0.227",
            "192.168.0.236-192.168.0.239"
        ]
    );
    assert!(global.spec.namespaces.is_empty());
    assert_eq!(global.spec.priority, 1, "namespace pools are tried first");
    assert!(
        !global.spec.allow_first_last_ips,
        "skip-end-ips-in-cidr: true"
    );
    let media = pool(&pools, "kube-vip-media");
    assert_eq!(blocks(media), ["cidr 192.168.0.240/29"]);
    assert_eq!(media.spec.namespaces, ["media"]);
    assert_eq!(
        blocks(pool(&pools, "kube-vip-dev")),
        ["cidr 192.168.0.250/31"]
    );
    let object = "ConfigMap kube-system/kubevip";
    warned(
        &err,
        object,
        "data.cidr-media",
        "is a range under a cidr- key",
    );
    warned(
        &err,
        object,
        "data.range-dev",
        "is a CIDR under a range- key",
    );
    warned(
        &err,
        object,
        "data.allow-share-media",
        "vipam.io/sharing-key",
    );
    warned(&err, object, "data.search-order", "not converted");

    let l2s: Vec<L2Announcement> = of_kind(&docs, "L2Announcement");
    let services = l2(&l2s, "kube-vip");
    assert_eq!(
        services.spec.interfaces,
        ["^enp1s0$"],
        "vip_servicesinterface"
    );
    assert_eq!(
        json(&services.spec.node_selector),
        serde_json::json!({"matchLabels": {"node.kubernetes.io/lan": "true"}})
    );
    let env = "DaemonSet kube-system/kube-vip-ds";
    let at = |name: &str| format!("spec.template.spec.containers[0].env[{name}]");
    warned(&err, env, &at("prometheus_server"), "not converted");
    warned(&err, env, &at("svc_election"), "no per-Service election");
    warned(
        &err,
        env,
        &at("vip_renewdeadline"),
        "no separate renew deadline",
    );
    warned(&err, env, &at("vip_leasename"), "vipam-control-plane");

    // Control-plane mode: exactly what `vipam manifest daemonset` prints for the same settings.
    let manifest = vipam(
        &[
            "manifest",
            "daemonset",
            "--vip",
            "192.168.0.10",
            "--interface",
            "eth0",
            "--port",
            "6443",
            "--lease-duration",
            "5s",
            "--renew-interval",
            "1s",
        ],
        None,
    );
    assert_eq!(manifest.status.code(), Some(0));
    let expected = documents(&stdout(&manifest));
    let imported: Vec<Value> = docs
        .iter()
        .filter(|d| {
            d["apiVersion"]
                .as_str()
                .is_some_and(|v| !v.starts_with("vipam.io"))
        })
        .cloned()
        .collect();
    assert_eq!(imported, expected);
}

#[test]
fn kube_vip_static_pod_becomes_the_manifest_static_pod() {
    let out = vipam(
        &["import", &format!("{FIXTURES}/kube-vip/static-pod")],
        None,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    warned(
        &err,
        "Pod kube-system/kube-vip",
        "spec.containers[0].env[vip_renewdeadline]",
        "renew deadline",
    );
    let manifest = vipam(
        &[
            "manifest",
            "static-pod",
            "--vip",
            "10.0.0.100",
            "--interface",
            "bond0",
            "--port",
            "8443",
            "--lease-duration",
            "4s",
            "--renew-interval",
            "2s",
            "--kubeconfig",
            "/etc/kubernetes/super-admin.conf",
        ],
        None,
    );
    assert_eq!(documents(&stdout(&out)), documents(&stdout(&manifest)));
}

#[test]
fn kube_vip_bgp_becomes_peers_and_one_announcement() {
    let out = vipam(&["import", &format!("{FIXTURES}/kube-vip/bgp")], None);
    let err = stderr(&out);
    // The passwords are not written: something to do by hand.
    assert_eq!(out.status.code(), Some(1), "{err}");
    let docs = documents(&stdout(&out));
    assert!(
        of_kind::<L2Announcement>(&docs, "L2Announcement").is_empty(),
        "no L2 mode invented"
    );
    let peers: Vec<BGPPeer> = of_kind(&docs, "BGPPeer");
    assert_eq!(peers.len(), 3);
    let single = &peer(&peers, "kube-vip-1").spec;
    assert_eq!(
        (single.peer_address.as_str(), single.peer_asn, single.my_asn),
        ("192.0.2.1", 64496, 64512)
    );
    assert_eq!(single.ebgp_multi_hop, Some(50), "kube-vip's multihop TTL");
    assert_eq!(single.hold_time, "15s");
    assert_eq!(
        single.keepalive_time, None,
        "5s is a third of 15s: the default"
    );
    assert_eq!(
        single.source_address, None,
        "the node's address: the default"
    );
    let secret = single.password_secret_ref.as_ref().unwrap();
    assert_eq!(
        (
            secret.namespace.as_str(),
            secret.name.as_str(),
            secret.key.as_str()
        ),
        ("vipam-system", "vipam-bgp-passwords", "kube-vip-1")
    );
    assert_eq!(
        json(&single.node_selector),
        serde_json::json!({"matchLabels": {"bgp": "true"}})
    );
    let second = &peer(&peers, "kube-vip-2").spec;
    assert_eq!(
        (
            second.peer_address.as_str(),
            second.peer_asn,
            second.peer_port
        ),
        ("198.51.100.1", 64497, 179)
    );
    assert!(second.password_secret_ref.is_none() && second.ebgp_multi_hop.is_none());
    let third = &peer(&peers, "kube-vip-3").spec;
    assert_eq!(
        (third.peer_address.as_str(), third.peer_asn, third.peer_port),
        ("2001:db8::1", 64498, 1179)
    );
    assert_eq!(third.ebgp_multi_hop, Some(50));
    let announcements: Vec<BGPAnnouncement> = of_kind(&docs, "BGPAnnouncement");
    assert_eq!(announcements.len(), 1);
    let all = &announcement(&announcements, "kube-vip").spec;
    assert!(all.ip_pools.is_empty(), "every pool");
    assert_eq!(all.peers, ["kube-vip-1", "kube-vip-2", "kube-vip-3"]);
    let object = "DaemonSet kube-system/kube-vip-ds";
    let at = |name: &str| format!("spec.template.spec.containers[0].env[{name}]");
    warned(&err, object, &at("bgp_peerpass"), "vipam-bgp-passwords");
    warned(&err, object, &at("bgp_peers][1"), "vipam-bgp-passwords");
    warned(&err, object, &at("bgp_peers][1"), "ebgpMultiHop 50");
    warned(&err, object, &at("bgp_routerid"), "InternalIP");
    warned(&err, object, &at("bgp_sourceip"), "routing");
    assert!(!err.contains("example"), "no password on stderr:\n{err}");
    assert!(
        !stdout(&out).contains("example"),
        "no password in the output"
    );
}

#[test]
fn metallb_bgp_every_field_is_converted_or_named() {
    let out = vipam(&["import", &format!("{FIXTURES}/metallb/bgp")], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let docs = documents(&stdout(&out));
    let peers: Vec<BGPPeer> = of_kind(&docs, "BGPPeer");
    let names: Vec<&str> = peers
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["tor-a", "tor-b", "tor-dynamic"]);
    let a = &peer(&peers, "tor-a").spec;
    assert_eq!(
        (a.peer_address.as_str(), a.peer_asn, a.my_asn, a.peer_port),
        ("192.0.2.1", 64496, 64512, 1179)
    );
    assert_eq!(a.source_address.as_deref(), Some("192.0.2.10"));
    assert_eq!(a.hold_time, "30s");
    assert_eq!(a.keepalive_time, None, "10s is a third of 30s");
    assert_eq!(a.ebgp_multi_hop, Some(255));
    assert!(a.graceful_restart, "enableGracefulRestart");
    assert_eq!(a.password_secret_ref.as_ref().unwrap().key, "tor-a");
    assert_eq!(
        json(&a.node_selector),
        serde_json::json!({"matchLabels": {"rack": "r1"}})
    );
    let tor_a = "BGPPeer metallb-system/tor-a";
    warned(&err, tor_a, "spec.ebgpMultiHop", "ebgpMultiHop 255");
    warned(&err, tor_a, "spec.routerID", "vipam.io/bgp-router-id");
    warned(&err, tor_a, "spec.bfdProfile", "no BFD");
    warned(&err, tor_a, "spec.connectTime", "1 s");
    warned(
        &err,
        tor_a,
        "spec.passwordSecret",
        "Secret metallb-system/tor-a-password",
    );
    let b = &peer(&peers, "tor-b").spec;
    assert_eq!(b.peer_address, "2001:db8::1");
    assert_eq!(b.hold_time, "60s", "three times keepaliveTime, as MetalLB");
    assert!(!b.graceful_restart, "MetalLB's default");
    let tor_b = "BGPPeer metallb-system/tor-b";
    warned(
        &err,
        tor_b,
        "spec.password",
        "vipam-bgp-passwords, key tor-b",
    );
    warned(&err, tor_b, "spec.holdTime", "60s");
    warned(&err, tor_b, "spec.nodeSelectors", "only the first");
    warned(&err, tor_b, "spec.dualStackAddressFamily", "not converted");
    assert!(
        !err.contains("example-not-a-secret") && !stdout(&out).contains("example-not-a-secret")
    );
    let dynamic = &peer(&peers, "tor-dynamic").spec;
    assert_eq!(dynamic.peer_asn, 64512, "dynamicASN internal");
    assert_eq!(dynamic.hold_time, "9s");
    warned(
        &err,
        "BGPPeer metallb-system/tor-dynamic",
        "spec.holdTime",
        "vipam proposes its default",
    );
    warned(
        &err,
        "BGPPeer metallb-system/tor-vrf",
        "spec.vrf",
        "not converted",
    );
    warned(
        &err,
        "BGPPeer metallb-system/tor-unnumbered",
        "spec.interface",
        "not converted",
    );

    let announcements: Vec<BGPAnnouncement> = of_kind(&docs, "BGPAnnouncement");
    assert_eq!(announcements.len(), 1, "nowhere selects no pool");
    let routed = &announcement(&announcements, "routed").spec;
    assert_eq!(routed.ip_pools, ["routed", "routed-v6"]);
    assert_eq!(
        (routed.aggregation_length, routed.aggregation_length_v6),
        (28, 120)
    );
    assert_eq!(routed.local_pref, Some(150));
    assert_eq!(
        routed.communities,
        ["65535:65282", "64512:100", "large:64512:1:2"]
    );
    assert_eq!(routed.peers, ["tor-a", "tor-b"]);
    assert_eq!(
        json(&routed.node_selector),
        serde_json::json!({"matchLabels": {"bgp": "true"}})
    );
    assert_eq!(
        json(&routed.service_selector),
        serde_json::json!({"matchLabels": {"expose": "internet"}})
    );
    let adv = "BGPAdvertisement metallb-system/routed";
    warned(&err, adv, "spec.communities[0]", "alias no-adv");
    warned(&err, adv, "spec.communities[3]", "\"gold\"");
    warned(
        &err,
        adv,
        "spec.ipAddressPoolSelectors",
        "routed, routed-v6",
    );
    warned(
        &err,
        "BGPAdvertisement metallb-system/nowhere",
        "spec.ipAddressPoolSelectors",
        "no BGPAnnouncement written",
    );
    warned(&err, "BFDProfile metallb-system/fast", "spec", "no BFD");
}

#[test]
fn cilium_bgp_peering_policy_every_field_is_converted_or_named() {
    let out = vipam(&["import", &format!("{FIXTURES}/cilium/bgp")], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let docs = documents(&stdout(&out));
    let peers: Vec<BGPPeer> = of_kind(&docs, "BGPPeer");
    assert_eq!(peers.len(), 3);
    let tor = &peer(&peers, "rack1-192-0-2-1").spec;
    assert_eq!(
        (
            tor.peer_address.as_str(),
            tor.peer_asn,
            tor.my_asn,
            tor.peer_port
        ),
        ("192.0.2.1", 64496, 64512, 1179),
        "the /32 is the address"
    );
    assert_eq!(tor.ebgp_multi_hop, Some(4));
    assert_eq!(tor.hold_time, "30s");
    assert_eq!(tor.keepalive_time, None);
    assert!(tor.graceful_restart);
    assert_eq!(
        tor.password_secret_ref.as_ref().unwrap().key,
        "rack1-192-0-2-1"
    );
    assert_eq!(
        json(&tor.node_selector),
        serde_json::json!({"matchLabels": {"rack": "r1"}})
    );
    let ibgp = &peer(&peers, "rack1-2001-db8--1").spec;
    assert_eq!(ibgp.hold_time, "90s", "Cilium's default");
    assert_eq!(ibgp.ebgp_multi_hop, None);
    assert!(!ibgp.graceful_restart, "Cilium's default");
    assert_eq!(peer(&peers, "quiet-198-51-100-1").spec.peer_asn, 64497);

    let policy = "CiliumBGPPeeringPolicy rack1";
    let router = "spec.virtualRouters[0]";
    let neighbor = format!("{router}.neighbors[0]");
    warned(
        &err,
        policy,
        &format!("{router}.exportPodCIDR"),
        "pod CIDRs",
    );
    warned(
        &err,
        policy,
        &format!("{router}.serviceAdvertisements"),
        "ClusterIP",
    );
    warned(
        &err,
        policy,
        &format!("{neighbor}.connectRetryTimeSeconds"),
        "1 s",
    );
    warned(
        &err,
        policy,
        &format!("{neighbor}.gracefulRestart.restartTimeSeconds"),
        "120 s",
    );
    warned(
        &err,
        policy,
        &format!("{neighbor}.authSecretRef"),
        "vipam-bgp-passwords",
    );
    warned(
        &err,
        policy,
        &format!("{neighbor}.families[1]"),
        "own family",
    );
    warned(
        &err,
        policy,
        &format!("{neighbor}.families[2]"),
        "l2vpn/evpn",
    );
    warned(
        &err,
        policy,
        &format!("{neighbor}.advertisedPathAttributes[1].selectorType"),
        "PodCIDR",
    );
    warned(
        &err,
        "CiliumBGPPeeringPolicy quiet",
        &format!("{router}.serviceSelector"),
        "announces no Service",
    );
    warned(
        &err,
        "CiliumBGPPeerConfig tor",
        "spec",
        "not converted by vipam import",
    );

    let announcements: Vec<BGPAnnouncement> = of_kind(&docs, "BGPAnnouncement");
    assert_eq!(announcements.len(), 2);
    let rack1 = &announcement(&announcements, "rack1").spec;
    assert!(rack1.ip_pools.is_empty());
    assert_eq!(rack1.peers, ["rack1-192-0-2-1", "rack1-2001-db8--1"]);
    assert_eq!(
        json(&rack1.service_selector),
        serde_json::json!({"matchExpressions": [{"key": "vipam.io/service-namespace", "operator": "NotIn", "values": ["kube-system"]}]})
    );
    let attributes = &announcement(&announcements, "rack1-192-0-2-1-attributes-1").spec;
    assert_eq!(
        attributes.ip_pools,
        ["routed"],
        "the pool selector resolved"
    );
    assert_eq!(attributes.peers, ["rack1-192-0-2-1"]);
    assert_eq!(attributes.service_selector, rack1.service_selector);
    assert_eq!(
        attributes.communities,
        [
            "64512:100",
            "65535:65281",
            "no-advertise",
            "large:64512:1:2"
        ]
    );
    assert_eq!(attributes.local_pref, Some(200));
}

#[test]
fn bgp_imports_pass_check() {
    for tool in [
        "metallb/bgp",
        "cilium/bgp",
        "kube-vip/bgp",
        "metallb/legacy",
    ] {
        let dir = out_dir(&tool.replace('/', "-"));
        let out = vipam(
            &[
                "import",
                &format!("{FIXTURES}/{tool}"),
                "--out-dir",
                dir.to_str().unwrap(),
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(1), "{tool}: {}", stderr(&out));
        let mut args = vec!["check".to_string(), dir.to_str().unwrap().to_string()];
        let services = root().join(format!("{FIXTURES}/{tool}/services.yaml"));
        if services.is_file() {
            args.push(services.to_str().unwrap().to_string());
        }
        args.extend(["--format".to_string(), "json".to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let check = vipam(&args, None);
        let report: Value = serde_json::from_str(&stdout(&check)).unwrap();
        assert_eq!(check.status.code(), Some(0), "{tool}: {report:#}");
        assert_eq!(report["ok"], true, "{tool}");
        let problems = report["problems"].as_array().unwrap();
        assert!(problems.is_empty(), "{tool}: {problems:#?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bgp_fully_carried_over_exits_0() {
    let stream = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: routed, namespace: metallb-system}\nspec:\n  addresses: [203.0.113.0/28]\n---\napiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: tor, namespace: metallb-system}\nspec: {myASN: 64512, peerASN: 64496, peerAddress: 192.0.2.1, holdTime: 9s}\n---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: routed, namespace: metallb-system}\nspec: {ipAddressPools: [routed], communities: [no-export]}\n";
    let out = vipam(&["import", "-"], Some(stream));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.lines().all(|l| !l.starts_with("warning")),
        "nothing changed either:\n{err}"
    );
    let docs = documents(&stdout(&out));
    assert_eq!(of_kind::<BGPPeer>(&docs, "BGPPeer").len(), 1);
    assert_eq!(
        of_kind::<BGPAnnouncement>(&docs, "BGPAnnouncement").len(),
        1
    );
}

/// The pinned addresses of a Services file, read here from the annotations directly.
fn pins(services: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(services).unwrap();
    let mut found = BTreeSet::new();
    for doc in documents(&text) {
        for key in vipam::core::request::PIN_SOURCES {
            if let Some(ips) = doc["metadata"]["annotations"][*key].as_str() {
                found.extend(ips.split(',').map(|s| s.trim().to_string()));
            }
        }
        if let Some(ip) = doc["spec"]["loadBalancerIP"].as_str() {
            found.insert(ip.to_string());
        }
    }
    found
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vipam-import-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_output_passes_check_and_keeps_every_pinned_address() {
    for tool in ["metallb", "cilium", "kube-vip"] {
        let dir = out_dir(tool);
        let out = vipam(
            &[
                "import",
                &format!("{FIXTURES}/{tool}/full"),
                "--out-dir",
                dir.to_str().unwrap(),
            ],
            None,
        );
        assert!(stdout(&out).is_empty(), "--out-dir prints nothing");
        assert!(
            dir.join(if tool == "kube-vip" {
                "ippool-kube-vip-global.yaml"
            } else {
                "ippool-lan.yaml"
            })
            .is_file()
        );
        let services = root().join(format!("{FIXTURES}/{tool}/full/services.yaml"));
        let check = vipam(
            &[
                "check",
                dir.to_str().unwrap(),
                services.to_str().unwrap(),
                "--format",
                "json",
            ],
            None,
        );
        let report: Value = serde_json::from_str(&stdout(&check)).unwrap();
        assert_eq!(check.status.code(), Some(0), "{tool}: {report:#}");
        assert_eq!(report["ok"], true);
        let expected = pins(&services);
        assert!(expected.len() >= 3, "{tool}: the fixture pins addresses");
        let pinned: BTreeSet<String> = report["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["how"] == "pinned")
            .map(|a| a["ip"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(pinned, expected, "{tool}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn example_pool() -> IPPool {
    let text =
        std::fs::read_to_string(root().join("examples/gitops/infrastructure/vipam/ippool.yaml"))
            .unwrap();
    of_kind::<IPPool>(&documents(&text), "IPPool").remove(0)
}

fn example_l2() -> L2Announcement {
    let text = std::fs::read_to_string(
        root().join("examples/gitops/infrastructure/vipam/l2announcement.yaml"),
    )
    .unwrap();
    of_kind::<L2Announcement>(&documents(&text), "L2Announcement").remove(0)
}

#[test]
fn the_example_tree_survives_a_round_trip_through_each_tool() {
    let expected = example_pool();
    let expected_l2 = example_l2();
    for (tool, name) in [
        ("metallb", "lan"),
        ("cilium", "lan"),
        ("kube-vip", "kube-vip-global"),
    ] {
        let out = vipam(&["import", &format!("{FIXTURES}/{tool}/roundtrip")], None);
        assert_eq!(out.status.code(), Some(0), "{tool}: {}", stderr(&out));
        assert!(
            stderr(&out).lines().all(|l| !l.starts_with("warning")),
            "{tool}: {}",
            stderr(&out)
        );
        let docs = documents(&stdout(&out));
        let pools: Vec<IPPool> = of_kind(&docs, "IPPool");
        assert_eq!(pools.len(), 1, "{tool}");
        assert_eq!(pools[0].metadata.name.as_deref(), Some(name), "{tool}");
        assert_eq!(pools[0].spec, expected.spec, "{tool}");
        let l2s: Vec<L2Announcement> = of_kind(&docs, "L2Announcement");
        assert_eq!(l2s.len(), 1, "{tool}");
        let l2 = &l2s[0].spec;
        // What each format can say of the example's announcement.
        match tool {
            "cilium" => {
                assert_eq!(l2.interfaces, expected_l2.spec.interfaces);
                assert_eq!(l2.node_selector, expected_l2.spec.node_selector);
            }
            "metallb" => {
                assert_eq!(l2.ip_pools, expected_l2.spec.ip_pools);
                assert_eq!(l2.interfaces, ["^eth0$"]);
            }
            _ => assert_eq!(l2.interfaces, ["^eth0$"]),
        }
        assert_eq!(l2.mode, expected_l2.spec.mode);
    }
}

#[test]
fn a_kubectl_list_on_stdin_gives_what_the_files_give() {
    let dir = root().join(format!("{FIXTURES}/metallb/full"));
    let mut items = Vec::new();
    for file in ["pools.yaml", "l2.yaml"] {
        items.extend(documents(&std::fs::read_to_string(dir.join(file)).unwrap()));
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let stream = serde_saphyr::to_string(&list).unwrap();
    let from_stdin = vipam(&["import", "-"], Some(&stream));
    let from_files = vipam(
        &[
            "import",
            &format!("{FIXTURES}/metallb/full/pools.yaml"),
            &format!("{FIXTURES}/metallb/full/l2.yaml"),
        ],
        None,
    );
    assert_eq!(from_stdin.status.code(), Some(1), "{}", stderr(&from_stdin));
    assert_eq!(
        documents(&stdout(&from_stdin)),
        documents(&stdout(&from_files))
    );
    assert!(stdout(&from_stdin).contains("at <stdin>:"));
}

#[test]
fn bad_input_is_named_and_usage_errors_exit_2() {
    let stream = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: ok, namespace: metallb-system}\nspec:\n  addresses: [192.0.2.0/28]\n---\nkind: [unclosed\n";
    let out = vipam(&["import", "-"], Some(stream));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("<stdin>:7"), "{}", stderr(&out));
    assert!(stderr(&out).contains("malformed YAML"), "{}", stderr(&out));
    assert_eq!(
        of_kind::<IPPool>(&documents(&stdout(&out)), "IPPool").len(),
        1,
        "the good document still converts"
    );

    let out = vipam(
        &["import", "-"],
        Some("apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no kube-vip, Cilium or MetalLB configuration found"));

    assert_eq!(vipam(&["import"], None).status.code(), Some(2));
    let out = vipam(&["import", "no/such/dir"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no/such/dir: no such file or directory"));
}

fn clusters(args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["check", "--clusters"];
    all.extend_from_slice(args);
    let out = vipam(&all, None);
    (out.status.code(), stdout(&out) + &stderr(&out))
}

#[test]
fn clusters_sharing_addresses_fail_naming_both() {
    let home = format!("home={FIXTURES}/clusters/home");
    let (code, text) = clusters(&[&home, &format!("lab={FIXTURES}/clusters/lab-overlap")]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(
        "cluster home IPPool lan (tests/data/import/clusters/home/vipam.yaml:1 (document 1)) and \
         cluster lab IPPool lab (tests/data/import/clusters/lab-overlap/vipam.yaml:2 (document 1)) \
         could both hand out and announce 192.168.0.235-192.168.0.239"
    ), "{text}");
    assert!(
        text.contains(
            "192.168.0.236 is pinned in cluster home by Service media/jellyfin \
         (tests/data/import/clusters/home/vipam.yaml:27 (document 4)) and in cluster lab by \
         Service git/gitea (tests/data/import/clusters/lab-overlap/vipam.yaml:17 (document 3))"
        ),
        "{text}"
    );
    // Each tree is still checked on its own.
    assert!(text.contains("=== CLUSTER home") && text.contains("=== CLUSTER lab"));

    let out = vipam(
        &[
            "check",
            "--format",
            "json",
            "--clusters",
            &home,
            &format!("lab={FIXTURES}/clusters/lab-overlap"),
        ],
        None,
    );
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["ok"], false);
    let kinds: Vec<&str> = doc["across"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["cluster_overlap", "cluster_pinned_twice"]);
    assert_eq!(
        doc["clusters"][1]["report"]["ok"], true,
        "each tree alone is fine"
    );
}

#[test]
fn clusters_with_their_own_ranges_pass() {
    let (code, text) = clusters(&[
        &format!("home={FIXTURES}/clusters/home"),
        &format!("lab={FIXTURES}/clusters/lab"),
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("No address could be handed out or announced by two clusters."));
    assert!(text.contains("OK: 2 clusters, 0 shared address problem(s)"));
}

#[test]
fn clusters_usage_errors_exit_2() {
    let home = format!("home={FIXTURES}/clusters/home");
    assert_eq!(clusters(&[&home, "lab"]).0, Some(2));
    assert_eq!(clusters(&[&home]).0, Some(2), "two clusters at least");
    let (code, text) = clusters(&[&home, &home]);
    assert_eq!(code, Some(2));
    assert!(text.contains("cluster home is named twice"), "{text}");
    assert_eq!(clusters(&[&home, "lab=no/such/dir"]).0, Some(2));
}
