use super::*;

fn run(stream: &str) -> Imported {
    import_inputs(&["-".to_string()], &mut stream.as_bytes()).unwrap()
}

fn pools(imported: &Imported) -> Vec<&IPPool> {
    imported
        .objects
        .iter()
        .filter_map(|c| match &c.object {
            Object::Pool(p) => Some(p.as_ref()),
            _ => None,
        })
        .collect()
}

/// The blocks as vipam's messages write them (`cidr 10.0.0.0/24`, `a-b`, `start a`).
fn block_texts(pool: &IPPool) -> Vec<String> {
    api::pool_spec(pool)
        .unwrap()
        .blocks
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn fields(imported: &Imported, outcome: Outcome) -> Vec<String> {
    imported
        .warnings
        .iter()
        .filter(|w| w.outcome == outcome)
        .map(|w| w.field.clone())
        .collect()
}

fn metallb_pool(name: &str, addresses: &str) -> String {
    format!(
        "---\napiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: {name}, namespace: metallb-system}}\nspec:\n  addresses: [{addresses}]\n"
    )
}

#[test]
fn host_bits_are_cleared_and_overlapping_entries_merged() {
    let imported = run(&metallb_pool(
        "lan",
        "192.0.2.5/29, 192.0.2.6-192.0.2.12, 192.0.2.2-192.0.2.3",
    ));
    let pools = pools(&imported);
    assert_eq!(
        block_texts(pools[0]),
        ["cidr 192.0.2.0/29", "192.0.2.8-192.0.2.12"],
        "the union, nothing twice"
    );
    assert_eq!(
        fields(&imported, Outcome::Changed),
        [
            "spec.addresses[0]",
            "spec.addresses[1]",
            "spec.addresses[2]"
        ]
    );
    assert!(!imported.lost_anything());
    assert!(
        imported.warnings[0]
            .message
            .contains("reads it as 192.0.2.0/29")
    );
    assert!(
        imported.warnings[2]
            .message
            .contains("nothing new in this entry")
    );
}

#[test]
fn a_cidr_end_listed_again_by_a_later_entry_is_reported() {
    let imported = run(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kubevip}\ndata:\n  cidr-global: 192.0.2.0/30,192.0.2.3-192.0.2.5\n  skip-end-ips-in-cidr: \"true\"\n",
    );
    assert_eq!(fields(&imported, Outcome::Lost), ["data.cidr-global"]);
    assert!(
        imported
            .warnings
            .iter()
            .any(|w| w.message.contains("192.0.2.3 is listed here"))
    );
}

#[test]
fn a_pool_vipam_would_refuse_is_reported_and_not_written() {
    let imported = run(&metallb_pool("loop", "127.0.0.1-127.0.0.5"));
    assert!(pools(&imported).is_empty());
    let lost = &imported.warnings[0];
    assert_eq!(lost.outcome, Outcome::Lost);
    assert!(lost.message.contains("a loopback address"), "{lost}");
    let imported = run(&metallb_pool("junk", "not-an-address"));
    assert_eq!(
        fields(&imported, Outcome::Lost),
        ["spec.addresses[0]", "spec"]
    );
}

#[test]
fn pools_that_overlap_each_other_are_reported_naming_both() {
    let imported = run(&format!(
        "{}{}",
        metallb_pool("a", "192.0.2.0/28"),
        metallb_pool("b", "192.0.2.8-192.0.2.20")
    ));
    assert_eq!(pools(&imported).len(), 2);
    let lost: Vec<&Warning> = imported
        .warnings
        .iter()
        .filter(|w| w.outcome == Outcome::Lost)
        .collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].object, "IPPool b");
    assert!(
        lost[0].message.contains("overlaps IPPool a")
            && lost[0].message.contains("192.0.2.8-192.0.2.15"),
        "{}",
        lost[0]
    );
}

#[test]
fn two_sources_of_one_name_keep_the_first() {
    let cilium = "---\napiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\nmetadata: {name: lan}\nspec:\n  blocks: [{cidr: 198.51.100.0/28}]\n";
    let imported = run(&format!("{cilium}{}", metallb_pool("lan", "192.0.2.0/28")));
    let pools = pools(&imported);
    assert_eq!(pools.len(), 1);
    assert_eq!(block_texts(pools[0]), ["cidr 198.51.100.0/28"]);
    assert_eq!(fields(&imported, Outcome::Lost), ["metadata.name"]);
}

#[test]
fn unknown_fields_are_named_never_dropped_silently() {
    let imported = run(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lan}\nspec:\n  addresses: [192.0.2.0/28]\n  autoassign: false\n  serviceAllocation: {priorty: 3}\n",
    );
    assert_eq!(
        fields(&imported, Outcome::Lost),
        ["spec.autoassign", "spec.serviceAllocation.priorty"]
    );
    let imported =
        run("apiVersion: metallb.io/v1beta1\nkind: IPAddressPoolz\nmetadata: {name: lan}\n");
    assert_eq!(fields(&imported, Outcome::Lost), ["kind"]);
}

#[test]
fn metallb_priorities_keep_metallbs_order() {
    let with = |name: &str, allocation: &str| {
        format!(
            "{}\n  serviceAllocation: {allocation}\n",
            metallb_pool(name, "192.0.2.0/28").trim_end()
        )
        .replace("192.0.2.0/28", &format!("192.0.2.{}/32", name.len()))
    };
    let imported = run(&format!(
        "{}{}{}",
        with("aa", "{priority: 5}"),
        with("bbbb", "{namespaces: [x]}"),
        metallb_pool("c", "198.51.100.0/28"),
    ));
    let priorities: Vec<(String, i32)> = pools(&imported)
        .iter()
        .map(|p| (p.metadata.name.clone().unwrap(), p.spec.priority))
        .collect();
    assert_eq!(
        priorities,
        [("aa".into(), 5), ("bbbb".into(), 6), ("c".into(), 7)]
    );
    // Without any serviceAllocation, every pool keeps the default.
    let imported = run(&metallb_pool("c", "198.51.100.0/28"));
    assert_eq!(pools(&imported)[0].spec.priority, 0);
    assert!(imported.warnings.is_empty());
}

#[test]
fn cilium_first_and_last_addresses() {
    let pool = |allow: &str, cidrs: &str| {
        run(&format!(
            "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\nmetadata: {{name: p}}\nspec:\n  {allow}\n  blocks: [{cidrs}]\n"
        ))
    };
    let yes = pool("allowFirstLastIPs: \"Yes\"", "{cidr: 192.0.2.0/24}");
    assert!(pools(&yes)[0].spec.allow_first_last_ips);
    let no = pool(
        "allowFirstLastIPs: \"No\"",
        "{cidr: 192.0.2.0/24}, {cidr: '2001:db8::/126'}, {cidr: '2001:db8:1::/127'}",
    );
    let p = pools(&no)[0];
    assert!(!p.spec.allow_first_last_ips);
    assert_eq!(
        block_texts(p),
        [
            "cidr 192.0.2.0/24",
            "2001:db8::1-2001:db8::2",
            "cidr 2001:db8:1::/127"
        ],
        "IPv6 /126 loses its ends, /127 keeps them (as in Cilium)"
    );
    let odd = pool("allowFirstLastIPs: maybe", "{cidr: 192.0.2.0/24}");
    assert_eq!(fields(&odd, Outcome::Lost), ["spec.allowFirstLastIPs"]);
}

#[test]
fn kube_vip_config_map_keys() {
    let imported = run(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kubevip, namespace: kube-system}\ndata:\n  cidr-global: 192.0.2.0/29\n  range-web: 192.0.2.16-192.0.2.20,192.0.2.30\n  interface-web: eth1\n  lb-mystery: x\n",
    );
    let pools = pools(&imported);
    let global = pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("kube-vip-global"))
        .unwrap();
    assert!(
        global.spec.allow_first_last_ips,
        "the cloud provider hands out the ends unless skip-end-ips-in-cidr"
    );
    assert_eq!(global.spec.priority, 1);
    let web = pools
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("kube-vip-web"))
        .unwrap();
    assert_eq!(
        block_texts(web),
        ["192.0.2.16-192.0.2.20", "start 192.0.2.30"]
    );
    assert_eq!(web.spec.namespaces, ["web"]);
    assert_eq!(
        fields(&imported, Outcome::Lost),
        ["data.interface-web", "data.lb-mystery"]
    );
}

#[test]
fn kube_vip_without_a_mode_converts_nothing_and_says_so() {
    let imported = run(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: kube-vip, namespace: kube-system}\nspec:\n  containers:\n    - name: kube-vip\n      image: ghcr.io/kube-vip/kube-vip:v0.8.9\n      env:\n        - {name: vip_interface, value: eth0}\n        - {name: cp_enable, value: \"true\"}\n        - {name: address, value: vip.example.com}\n        - {name: vip_arp, value: \"true\"}\n",
    );
    assert!(imported.objects.is_empty());
    let lost = fields(&imported, Outcome::Lost);
    assert_eq!(lost, ["spec.containers[0].env[address]"]);
    assert!(imported.warnings[0].message.contains("not an IP address"));
    // The cloud provider's own Deployment is not kube-vip.
    let imported = run(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ccm}\nspec:\n  containers:\n    - name: ccm\n      image: ghcr.io/kube-vip/kube-vip-cloud-provider:v0.0.12\n",
    );
    assert_eq!(imported.recognised, 0);
}

#[test]
fn warnings_print_file_object_field_and_message() {
    let w = Warning {
        outcome: Outcome::Lost,
        file: "pools.yaml:3 (document 1)".into(),
        object: "IPAddressPool metallb-system/lan".into(),
        field: "spec.serviceAllocation.namespaceSelectors".into(),
        message: "not converted".into(),
    };
    assert_eq!(
        w.to_string(),
        "warning[not converted]: pools.yaml:3 (document 1): IPAddressPool metallb-system/lan: \
         spec.serviceAllocation.namespaceSelectors: not converted"
    );
}

#[test]
fn booleans_in_strings() {
    for (text, expected) in [
        ("true", Some(true)),
        ("True", Some(true)),
        ("1", Some(true)),
        ("false", Some(false)),
        ("", Some(false)),
        ("maybe", None),
    ] {
        assert_eq!(truthy(text), expected, "{text:?}");
    }
}

fn peers(imported: &Imported) -> Vec<&BGPPeer> {
    imported
        .objects
        .iter()
        .filter_map(|c| match &c.object {
            Object::Peer(p) => Some(p.as_ref()),
            _ => None,
        })
        .collect()
}

fn kube_vip_env(env: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: kube-vip, namespace: kube-system}}\nspec:\n  containers:\n    - name: kube-vip\n      image: ghcr.io/kube-vip/kube-vip:v0.8.9\n      env:\n{env}"
    )
}

#[test]
fn kube_vip_bgp_peers_entries() {
    let imported = run(&kube_vip_env(
        "        - {name: svc_enable, value: \"true\"}\n        - {name: bgp_enable, value: \"true\"}\n        - {name: bgp_peers, value: \"192.0.2.1:64496,unnumbered:eth0:64497,192.0.2.2:64498::false::mpbgp_nexthop=fixed,192.0.2.3:64499::false:::true;300;300;3,192.0.2.4:notanas,192.0.2.5:64500/mpbgp_nexthop=auto_sourceip\"}\n        - {name: bgp_routerid, value: 192.0.2.100}\n",
    ));
    let names: Vec<(&str, &str)> = peers(&imported)
        .iter()
        .map(|p| {
            (
                p.metadata.name.as_deref().unwrap(),
                p.spec.peer_address.as_str(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("kube-vip-1", "192.0.2.1"),
            ("kube-vip-2", "192.0.2.2"),
            ("kube-vip-3", "192.0.2.3"),
            ("kube-vip-4", "192.0.2.5"),
        ]
    );
    assert!(
        peers(&imported).iter().all(|p| p.spec.my_asn == 65000),
        "kube-vip's default bgp_as"
    );
    let lost: Vec<&str> = imported
        .warnings
        .iter()
        .filter(|w| w.outcome == Outcome::Lost)
        .map(|w| w.message.split(':').next().unwrap())
        .collect();
    assert_eq!(
        lost,
        [
            "192.0.2.100",
            "unnumbered",
            "MP-BGP options \"mpbgp_nexthop=fixed\"",
            "BFD options \"true;300;300;3\"",
            "\"notanas\" is not an AS number (1 to 4294967295)",
            "MP-BGP options \"mpbgp_nexthop=auto_sourceip\"",
        ]
        .map(|m| m.split(':').next().unwrap())
    );
    let field = |needle: &str| {
        imported
            .warnings
            .iter()
            .find(|w| w.message.contains(needle))
            .map(|w| w.field.clone())
            .unwrap()
    };
    assert_eq!(field("BFD options"), "spec.containers[0].env[bgp_peers][3]");
    assert_eq!(field("192.0.2.100"), "spec.containers[0].env[bgp_routerid]");
}

#[test]
fn kube_vip_bgp_settings_without_bgp_enable_are_named() {
    let imported = run(&kube_vip_env(
        "        - {name: svc_enable, value: \"true\"}\n        - {name: vip_arp, value: \"true\"}\n        - {name: bgp_as, value: \"64512\"}\n",
    ));
    assert_eq!(
        fields(&imported, Outcome::Lost),
        ["spec.containers[0].env[bgp_as]"]
    );
    assert!(peers(&imported).is_empty());
    // The control plane by BGP is not converted (vipam's control-plane VIP is ARP/NDP).
    let imported = run(&kube_vip_env(
        "        - {name: cp_enable, value: \"true\"}\n        - {name: bgp_enable, value: \"true\"}\n        - {name: address, value: 192.0.2.50}\n        - {name: bgp_peeraddress, value: 192.0.2.1}\n",
    ));
    assert_eq!(
        fields(&imported, Outcome::Lost),
        [
            "spec.containers[0].env[bgp_enable]",
            "spec.containers[0].env[cp_enable]"
        ]
    );
}

#[test]
fn metallb_peer_asn_and_timers() {
    let peer = |spec: &str| {
        run(&format!(
            "apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {{name: p, namespace: metallb-system}}\nspec: {{myASN: 64512, peerAddress: 192.0.2.1, {spec}}}\n"
        ))
    };
    let external = peer("dynamicASN: external");
    assert!(peers(&external).is_empty());
    assert_eq!(fields(&external, Outcome::Lost), ["spec.dynamicASN"]);
    let missing = peer("holdTime: 9s");
    assert_eq!(fields(&missing, Outcome::Lost), ["spec.peerASN"]);
    let fractional = peer("peerASN: 64496, holdTime: 1.5s");
    assert_eq!(
        fields(&fractional, Outcome::Lost),
        ["spec.holdTime"],
        "vipam's timers are whole seconds"
    );
    // A hold time vipam refuses: the peer is not written, the reason is named.
    let short = peer("peerASN: 64496, holdTime: 2s");
    assert!(peers(&short).is_empty());
    assert!(
        short.warnings[0].message.contains("spec.holdTime: 2s"),
        "{}",
        short.warnings[0]
    );
    let exact = peer("peerASN: 64496, holdTime: 1m30s, keepaliveTime: 10s");
    let spec = &peers(&exact)[0].spec;
    assert_eq!(
        (spec.hold_time.as_str(), spec.keepalive_time.as_deref()),
        ("90s", Some("10s"))
    );
    assert!(exact.warnings.is_empty(), "{:?}", exact.warnings);
}

#[test]
fn cilium_virtual_routers_name_their_peers() {
    let imported = run(
        "apiVersion: cilium.io/v2alpha1\nkind: CiliumBGPPeeringPolicy\nmetadata: {name: p}\nspec:\n  virtualRouters:\n    - localASN: 64512\n      serviceSelector: {matchLabels: {a: b}}\n      neighbors: [{peerAddress: 192.0.2.1/32, peerASN: 64496}]\n    - localASN: 64513\n      serviceSelector: {matchLabels: {a: b}}\n      serviceAdvertisements: [ClusterIP]\n      neighbors: [{peerAddress: 192.0.2.1/32, peerASN: 64496, keepAliveTimeSeconds: 60}]\n",
    );
    let peers = peers(&imported);
    let names: Vec<&str> = peers
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["p-1-192-0-2-1", "p-2-192-0-2-1"]);
    assert_eq!(
        peers[1].spec.keepalive_time.as_deref(),
        Some("60s"),
        "not a third of Cilium's 90s hold time"
    );
    let announcements: Vec<&str> = imported
        .objects
        .iter()
        .filter(|c| c.object.kind() == "BGPAnnouncement")
        .map(|c| c.object.name())
        .collect();
    assert_eq!(
        announcements,
        ["p-1"],
        "the second announces no LoadBalancer IP"
    );
    assert_eq!(
        fields(&imported, Outcome::Lost),
        [
            "spec.virtualRouters[1].serviceAdvertisements",
            "spec.virtualRouters[1].serviceAdvertisements"
        ]
    );
}
