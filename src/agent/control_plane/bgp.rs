//! `--bgp`: the leader announces the control-plane VIP as a /32 (or /128) to the routers
//! named on the command line, with the agent's speaker; the other nodes keep their sessions
//! up and announce nothing.
//!
//! The peers come from flags, not from BGPPeer objects: this mode fronts the API server and
//! must work while it is down (or before the cluster exists). The flags are checked with the
//! parser BGPPeers go through ([`Peer::parse`], [`Community::parse`]), so a value is refused
//! for the same reason, with the flag named instead of the field.
//!
//! The VIP is also added to `lo` on the leader, marked as the control plane's (IFA_PROTO
//! 0x57) and in [`AnnounceMode::Local`]: the kernel must accept the packets the router sends
//! for it (the API server listens on every address), and nothing may answer ARP or neighbour
//! solicitations for it on the LAN: the router's route is the only way to it. Only the leader
//! has it, so a follower's own connections to the VIP (kubelet, kube-proxy) go through the
//! router to the leader instead of its own, possibly unhealthy, API server.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::ControlPlaneArgs;
use crate::agent::announcer::Target;
use crate::agent::net::address;
use crate::agent::net::iface;
use crate::agent::speaker::PeerSetup;
use crate::core::bgp::announce::PeerRoutes;
use crate::core::bgp::config::{Peer, PeerSpec};
use crate::core::bgp::message::{Community, RouteAttrs};
use crate::core::ownership::AnnounceMode;

/// Session names (metrics label `peer`, logs): `control-plane/<address>[:port]`. A BGPPeer
/// name cannot contain `/`, so they never clash with the Service speaker's in one process.
pub const PEER_NAME_PREFIX: &str = "control-plane/";
/// Where the leader puts the VIP with --bgp.
pub const VIP_INTERFACE: &str = "lo";
/// The default BGP port.
pub const BGP_PORT: u16 = 179;
/// Longest TCP MD5 key the kernel takes (TCP_MD5SIG_MAXKEYLEN).
pub const MD5_KEY_MAX: usize = 80;
/// How long a graceful stop of the sessions may take (withdraw, acknowledgement, Cease).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// On SIGTERM, once another node holds the Lease, the route stays this much longer so the new
/// leader's UPDATE reaches the router first: the router switches paths without a gap.
pub const HANDOVER_GRACE: Duration = Duration::from_millis(500);

/// The BGP flags of the control-plane VIP, valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipBgp {
    pub peers: Vec<Peer>,
    /// --bgp-router-id; None: see [`default_router_id`].
    pub router_id: Option<Ipv4Addr>,
    pub password_file: Option<PathBuf>,
    /// The VIP as a host prefix.
    pub prefix: IpNet,
    pub attrs: RouteAttrs,
}

impl VipBgp {
    /// The routes of every session: the VIP while `announce`, nothing otherwise.
    pub fn routes(&self, announce: bool) -> PeerRoutes {
        self.peers
            .iter()
            .map(|peer| {
                let routes = if announce {
                    BTreeMap::from([(self.prefix, self.attrs.clone())])
                } else {
                    BTreeMap::new()
                };
                (peer.name.clone(), routes)
            })
            .collect()
    }

    /// The sessions to run.
    pub fn setups(&self, router_id: Ipv4Addr, password: Option<Vec<u8>>) -> Vec<PeerSetup> {
        self.peers
            .iter()
            .map(|peer| PeerSetup {
                peer: peer.clone(),
                password: password.clone(),
                router_id,
                restarted: false,
            })
            .collect()
    }
}

/// Where the leader puts the VIP with --bgp.
pub fn vip_target() -> Target {
    Target {
        interface: VIP_INTERFACE.to_string(),
        mode: AnnounceMode::Local,
        probe_first: false,
    }
}

/// BGPPeer field paths as [`Peer::parse`] names them, and the flag that sets each.
const FLAG_OF_FIELD: [(&str, &str); 7] = [
    ("spec.peerAddress", "--bgp-peer"),
    ("spec.peerPort", "--bgp-peer"),
    ("spec.peerASN", "--bgp-peer-asn"),
    ("spec.myASN", "--bgp-my-asn"),
    ("spec.sourceAddress", "--bgp-source-address"),
    ("spec.holdTime", "--bgp-hold-time"),
    ("spec.ebgpMultiHop", "--bgp-multihop-ttl"),
];

fn flag_problem(problem: &str) -> String {
    for (field, flag) in FLAG_OF_FIELD {
        if let Some(rest) = problem.strip_prefix(field) {
            return format!("{flag}{rest}");
        }
    }
    problem.to_string()
}

fn push_once(problems: &mut Vec<String>, problem: String) {
    if !problems.contains(&problem) {
        problems.push(problem);
    }
}

/// Splits `ADDRESS`, `ADDRESS:PORT`, `[IPV6]` or `[IPV6]:PORT`. What is not an address is
/// passed on whole, for [`Peer::parse`] to refuse with its own words.
fn split_peer(text: &str) -> (String, u16) {
    let text = text.trim();
    if text.parse::<IpAddr>().is_ok() {
        return (text.to_string(), BGP_PORT);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return (socket.ip().to_string(), socket.port());
    }
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return (inner.to_string(), BGP_PORT);
    }
    // `192.0.2.1:0` is not a SocketAddr for every parser: keep the port for the port check.
    if let Some((host, port)) = text.rsplit_once(':')
        && let Ok(port) = port.parse::<u16>()
        && let Ok(ip) = host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
    {
        return (ip.to_string(), port);
    }
    (text.to_string(), BGP_PORT)
}

/// Checks the --bgp-* flags. `Ok(None)` without --bgp (then no --bgp-* flag may be set).
/// Every problem is reported, each naming its flag.
pub fn parse_flags(cp: &ControlPlaneArgs, vip: IpAddr) -> Result<Option<VipBgp>, Vec<String>> {
    let mut problems = Vec::new();
    if !cp.bgp {
        let set: Vec<&str> = [
            ("--bgp-peer", !cp.bgp_peers.is_empty()),
            ("--bgp-peer-asn", cp.bgp_peer_asn.is_some()),
            ("--bgp-my-asn", cp.bgp_my_asn.is_some()),
            ("--bgp-router-id", cp.bgp_router_id.is_some()),
            ("--bgp-password-file", cp.bgp_password_file.is_some()),
            ("--bgp-multihop-ttl", cp.bgp_multihop_ttl.is_some()),
            ("--bgp-source-address", cp.bgp_source_address.is_some()),
            ("--bgp-communities", !cp.bgp_communities.is_empty()),
        ]
        .into_iter()
        .filter(|(_, given)| *given)
        .map(|(flag, _)| flag)
        .collect();
        if set.is_empty() {
            return Ok(None);
        }
        return Err(vec![format!(
            "{} given without --bgp (the VIP is announced on the LAN unless --bgp is set)",
            set.join(", ")
        )]);
    }
    if cp.bgp_peers.is_empty() {
        problems.push("--bgp-peer: at least one router is needed with --bgp".to_string());
    }
    // A missing ASN is said once; the peers are still checked with a stand-in.
    let peer_asn = cp.bgp_peer_asn.unwrap_or_else(|| {
        problems.push("--bgp-peer-asn: required with --bgp (the routers' AS number)".into());
        65535
    });
    let my_asn = cp.bgp_my_asn.unwrap_or_else(|| {
        problems.push("--bgp-my-asn: required with --bgp (this node's AS number)".into());
        65535
    });
    let mut peers: Vec<Peer> = Vec::new();
    for text in &cp.bgp_peers {
        let (address, port) = split_peer(text);
        let spec = PeerSpec {
            name: format!("{PEER_NAME_PREFIX}{}", text.trim()),
            peer_address: address,
            peer_asn,
            my_asn,
            peer_port: port,
            source_address: cp.bgp_source_address.clone(),
            hold_time: cp.bgp_hold_time.clone(),
            keepalive_time: None,
            ebgp_multi_hop: cp.bgp_multihop_ttl,
            password_secret_ref: None,
            node_selector: None,
            // A crashed leader's route must go at once (the kernel closes its sessions), not
            // be kept for the restart time while another node announces the VIP.
            graceful_restart: false,
        };
        match Peer::parse(spec) {
            Ok(peer) => {
                if peer.address.is_ipv4() != vip.is_ipv4() {
                    push_once(
                        &mut problems,
                        format!(
                            "--bgp-peer: {} is not of the family of the VIP {vip} (a route goes \
                             to peers of its own family only)",
                            peer.address
                        ),
                    );
                } else if peers
                    .iter()
                    .any(|p| p.address == peer.address && p.port == peer.port)
                {
                    push_once(
                        &mut problems,
                        format!("--bgp-peer: {} given twice", text.trim()),
                    );
                } else {
                    peers.push(peer);
                }
            }
            Err(errors) => {
                for error in errors {
                    push_once(&mut problems, flag_problem(&error));
                }
            }
        }
    }
    let mut communities = std::collections::BTreeSet::new();
    for text in &cp.bgp_communities {
        match Community::parse(text.trim()) {
            Ok(community) => {
                communities.insert(community);
            }
            Err(err) => problems.push(format!("--bgp-communities: {err}")),
        }
    }
    if let Some(path) = &cp.bgp_password_file
        && path.as_os_str().is_empty()
    {
        problems.push("--bgp-password-file: empty path".into());
    }
    if let Some(id) = cp.bgp_router_id
        && (id.is_unspecified() || id.is_broadcast() || id.is_multicast())
    {
        problems.push(format!(
            "--bgp-router-id: {id} cannot be a router ID (a unicast IPv4 address)"
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Some(VipBgp {
        peers,
        router_id: cp.bgp_router_id,
        password_file: cp.bgp_password_file.clone(),
        prefix: IpNet::from(vip),
        attrs: RouteAttrs {
            local_pref: None,
            communities,
        },
    }))
}

/// The MD5 password in a file: its bytes without one trailing newline. Never a flag value,
/// which `ps` and the pod spec would show.
pub fn read_password(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path)
        .map_err(|e| format!("--bgp-password-file: cannot read {}: {e}", path.display()))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(format!("--bgp-password-file: {} is empty", path.display()));
    }
    if bytes.len() > MD5_KEY_MAX {
        return Err(format!(
            "--bgp-password-file: {} holds {} bytes; TCP MD5 keys are at most {MD5_KEY_MAX}",
            path.display(),
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// The router ID when --bgp-router-id is not given: --bgp-source-address when it is IPv4,
/// else the first IPv4 address (in the kernel's order; not loopback, link-local or the VIP)
/// of --interface, or of the interface holding the default route. Blocking (netlink).
pub fn default_router_id(
    source: Option<IpAddr>,
    interface: Option<&str>,
    vip: IpAddr,
) -> Result<Ipv4Addr, String> {
    if let Some(IpAddr::V4(source)) = source {
        return Ok(source);
    }
    let name = match interface {
        Some(name) => name.to_string(),
        None => iface::default_route_interface().ok_or(
            "no BGP router ID: no --bgp-router-id, no --interface and no default route to take \
             an IPv4 address from",
        )?,
    };
    let addresses = address::addresses_of(&name)
        .map_err(|e| format!("no BGP router ID: reading the addresses of {name}: {e}"))?
        .ok_or_else(|| {
            format!("no BGP router ID: there is no interface {name}; set --bgp-router-id")
        })?;
    first_router_id(addresses.iter().map(|a| a.ip), vip)
        .ok_or_else(|| format!("no BGP router ID: {name} has no IPv4 address; set --bgp-router-id"))
}

/// The first address fit to be a router ID.
fn first_router_id(addresses: impl Iterator<Item = IpAddr>, vip: IpAddr) -> Option<Ipv4Addr> {
    addresses.filter(|ip| *ip != vip).find_map(|ip| match ip {
        IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() => Some(v4),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: crate::agent::AgentArgs,
    }

    const VIP: &str = "203.0.113.250";

    fn parse(extra: &[&str]) -> Result<Option<VipBgp>, Vec<String>> {
        let args = ["agent", "--control-plane", "--vip", VIP]
            .iter()
            .chain(extra)
            .copied();
        let cli = Cli::try_parse_from(args).expect("clap accepts the flags");
        parse_flags(&cli.agent.control_plane, VIP.parse().unwrap())
    }

    fn problems(extra: &[&str]) -> String {
        parse(extra).expect_err("refused").join("\n")
    }

    const GOOD: [&str; 7] = [
        "--bgp",
        "--bgp-peer",
        "192.0.2.1",
        "--bgp-peer-asn",
        "65000",
        "--bgp-my-asn",
        "4200000001",
    ];

    #[test]
    fn without_bgp_nothing_changes_and_bgp_flags_alone_are_refused() {
        assert_eq!(parse(&[]), Ok(None));
        let text = problems(&["--bgp-peer", "192.0.2.1", "--bgp-my-asn", "65001"]);
        assert!(
            text.contains("--bgp-peer, --bgp-my-asn given without --bgp"),
            "{text}"
        );
    }

    #[test]
    fn valid_flags_give_one_session_per_router_and_the_vip_as_a_host_route() {
        let bgp = parse(
            &[
                &GOOD[..],
                &[
                    "--bgp-peer",
                    "192.0.2.2:1179",
                    "--bgp-communities",
                    "65000:100,no-export",
                    "--bgp-communities",
                    "large:65000:1:2",
                    "--bgp-hold-time",
                    "3s",
                    "--bgp-multihop-ttl",
                    "4",
                    "--bgp-source-address",
                    "192.0.2.11",
                    "--bgp-router-id",
                    "10.0.0.1",
                ],
            ]
            .concat(),
        )
        .unwrap()
        .unwrap();
        let names: Vec<&str> = bgp.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["control-plane/192.0.2.1", "control-plane/192.0.2.2:1179"]
        );
        let second = &bgp.peers[1];
        assert_eq!(second.address, "192.0.2.2".parse::<IpAddr>().unwrap());
        assert_eq!(second.port, 1179);
        assert_eq!((second.peer_asn, second.my_asn), (65000, 4_200_000_001));
        assert_eq!((second.hold_time, second.ttl), (3, 4));
        assert_eq!(second.source, Some("192.0.2.11".parse().unwrap()));
        assert!(!second.graceful_restart);
        assert_eq!(bgp.peers[0].port, BGP_PORT);
        assert_eq!(bgp.router_id, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(bgp.prefix.to_string(), "203.0.113.250/32");
        assert_eq!(bgp.attrs.communities.len(), 3);
        assert_eq!(bgp.attrs.local_pref, None);

        let on = bgp.routes(true);
        assert_eq!(on.len(), 2);
        assert!(
            on.values()
                .all(|r| r.len() == 1 && r.contains_key(&bgp.prefix))
        );
        let off = bgp.routes(false);
        assert_eq!(off.len(), 2);
        assert!(off.values().all(BTreeMap::is_empty));

        let setups = bgp.setups("192.0.2.11".parse().unwrap(), Some(b"secret".to_vec()));
        assert_eq!(setups.len(), 2);
        assert!(setups.iter().all(|s| !s.restarted && s.password.is_some()));

        // Defaults: hold time 9 s, eBGP directly connected.
        let plain = parse(&GOOD).unwrap().unwrap();
        assert_eq!((plain.peers[0].hold_time, plain.peers[0].ttl), (9, 1));
        assert!(plain.attrs.communities.is_empty());
    }

    #[test]
    fn ipv6_routers_take_brackets_and_a_port() {
        let cli = Cli::try_parse_from([
            "agent",
            "--control-plane",
            "--vip",
            "2001:db8:ff::250",
            "--bgp",
            "--bgp-peer",
            "[2001:db8:1::1]:1179",
            "--bgp-peer",
            "2001:db8:1::2",
            "--bgp-peer-asn",
            "65000",
            "--bgp-my-asn",
            "65000",
        ])
        .unwrap();
        let bgp = parse_flags(
            &cli.agent.control_plane,
            "2001:db8:ff::250".parse().unwrap(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(bgp.peers[0].address.to_string(), "2001:db8:1::1");
        assert_eq!(bgp.peers[0].port, 1179);
        assert_eq!(bgp.peers[1].port, BGP_PORT);
        assert_eq!(bgp.peers[1].ttl, 64, "iBGP default TTL");
        assert_eq!(bgp.prefix.to_string(), "2001:db8:ff::250/128");
    }

    #[test]
    fn every_problem_names_its_flag_with_the_bgppeer_reason() {
        let text = problems(&[
            "--bgp",
            "--bgp-peer",
            "router.example",
            "--bgp-peer",
            "192.0.2.3:0",
            "--bgp-peer",
            "2001:db8::1",
            "--bgp-peer-asn",
            "23456",
            "--bgp-my-asn",
            "0",
            "--bgp-hold-time",
            "2s",
            "--bgp-multihop-ttl",
            "0",
            "--bgp-source-address",
            "192.0.2.300",
            "--bgp-communities",
            "70000:1",
            "--bgp-router-id",
            "0.0.0.0",
        ]);
        for expected in [
            "--bgp-peer: \"router.example\" is not an IPv4 or IPv6 address",
            "--bgp-peer: 0 is not a TCP port",
            "--bgp-peer-asn: 23456 is AS_TRANS",
            "--bgp-my-asn: 0 is not an AS number",
            "--bgp-hold-time: 2s is not allowed (0, or 3s to 65535s; RFC 4271)",
            "--bgp-multihop-ttl: a TTL is 1 to 255",
            "--bgp-source-address: \"192.0.2.300\" is not an IPv4 or IPv6 address",
            "--bgp-communities: \"70000:1\" is not a community",
            "--bgp-router-id: 0.0.0.0 cannot be a router ID",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
        }
        // Said once, not once per router.
        assert_eq!(text.matches("--bgp-peer-asn").count(), 1, "{text}");

        let family = problems(&[&GOOD[..], &["--bgp-peer", "2001:db8::1"]].concat());
        assert!(
            family.contains("--bgp-peer: 2001:db8::1 is not of the family of the VIP"),
            "{family}"
        );
        let twice = problems(&[&GOOD[..], &["--bgp-peer", "192.0.2.1:179"]].concat());
        assert!(twice.contains("given twice"), "{twice}");
        let missing = problems(&["--bgp"]);
        for expected in [
            "--bgp-peer: at least one router",
            "--bgp-peer-asn: required",
            "--bgp-my-asn: required",
        ] {
            assert!(missing.contains(expected), "{expected:?} in {missing}");
        }
        let mixed = problems(&[&GOOD[..], &["--bgp-source-address", "2001:db8::9"]].concat());
        assert!(
            mixed.contains("--bgp-source-address: 2001:db8::9 is not of the family"),
            "{mixed}"
        );
    }

    #[test]
    fn clap_refuses_malformed_numbers_naming_the_flag() {
        for (flag, value) in [
            ("--bgp-peer-asn", "AS65000"),
            ("--bgp-multihop-ttl", "256"),
            ("--bgp-router-id", "router1"),
        ] {
            let err = Cli::try_parse_from(["agent", "--control-plane", flag, value])
                .err()
                .unwrap_or_else(|| panic!("{flag} {value} accepted"))
                .to_string();
            assert!(err.contains(flag), "{err}");
        }
    }

    #[test]
    fn the_password_file_loses_one_trailing_newline_and_must_fit_tcp_md5() {
        let dir = std::env::temp_dir().join(format!("vipam-cp-bgp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        assert_eq!(
            read_password(&file("lf", b"s3cret\n")),
            Ok(b"s3cret".to_vec())
        );
        assert_eq!(
            read_password(&file("crlf", b"s3cret\r\n")),
            Ok(b"s3cret".to_vec())
        );
        assert_eq!(
            read_password(&file("raw", b" two words ")),
            Ok(b" two words ".to_vec())
        );
        assert!(
            read_password(&file("empty", b"\n"))
                .unwrap_err()
                .contains("is empty")
        );
        assert!(
            read_password(&file("long", &[b'x'; 81]))
                .unwrap_err()
                .contains("at most 80")
        );
        let missing = read_password(&dir.join("absent")).unwrap_err();
        assert!(
            missing.starts_with("--bgp-password-file: cannot read"),
            "{missing}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_router_id_is_the_first_usable_ipv4_address() {
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|s| s.parse().unwrap()).collect() };
        let vip: IpAddr = VIP.parse().unwrap();
        assert_eq!(
            first_router_id(
                ips(&[
                    "2001:db8::1",
                    "127.0.0.1",
                    "169.254.0.1",
                    VIP,
                    "192.0.2.11",
                    "192.0.2.12"
                ])
                .into_iter(),
                vip
            ),
            Some("192.0.2.11".parse().unwrap())
        );
        assert_eq!(
            first_router_id(ips(&["2001:db8::1"]).into_iter(), vip),
            None
        );
        assert_eq!(
            default_router_id(
                Some("192.0.2.9".parse().unwrap()),
                Some("nonexistent0"),
                vip
            ),
            Ok("192.0.2.9".parse().unwrap()),
            "an IPv4 source address is the router ID"
        );
    }
}
