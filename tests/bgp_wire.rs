//! vipam's BGP codec (`agent::net::bgp::wire`) and socket (`agent::net::bgp::socket`) against
//! real routers, BIRD 2 and GoBGP 3, in network namespaces (root only; see tests/netlab).
//!
//! Each test builds a LAN with a node (192.0.2.11) and a router (192.0.2.1) waiting passively
//! for the node. The test drives a minimal session by hand from the node's namespace: OPEN,
//! OPEN received, KEEPALIVE, KEEPALIVE received, an IPv4 UPDATE (/32) and an IPv6 UPDATE (/128)
//! with standard and large communities, End-of-RIB for both families; then asks the router
//! whether the session is Established and what it learned. Also with 4-byte ASNs and a TCP MD5
//! password on both sides, and with a wrong password, which must never establish.

mod netlab;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use netlab::Netlab;
use netlab::routers::{Bird, Gobgp, LearnedRoute, PeerConfig};
use vipam::agent::net::bgp::socket::{BgpSocketError, PeerSocketConfig, connect};
use vipam::agent::net::bgp::wire::{self, EncodeContext};
use vipam::core::bgp::{
    AS_TRANS, Capabilities, Community, Family, GracefulRestart, Message, Notification, Open,
    RouteAttrs, Update,
};

const NODE: u8 = 11;
const ROUTER: u8 = 1;
const PREFIX_V4: &str = "203.0.113.10/32";
const PREFIX_V6: &str = "2001:db8:ff::10/128";
const PASSWORD: &str = "vipam-bgp-secret";

fn lab() -> Netlab {
    Netlab::new(&[("node", NODE), ("router", ROUTER)])
}

fn node_v4() -> Ipv4Addr {
    netlab::ipv4(NODE)
}

fn node_v6() -> Ipv6Addr {
    netlab::ipv6(NODE)
}

fn router_peer(router_asn: u32, node_asn: u32, password: Option<&str>) -> PeerConfig {
    let mut peer = PeerConfig::new(
        netlab::ipv4(ROUTER),
        router_asn,
        IpAddr::V4(node_v4()),
        node_asn,
    );
    peer.md5_password = password.map(str::to_string);
    peer
}

fn communities(node_asn: u32) -> BTreeSet<Community> {
    [
        Community::parse("65000:100").unwrap(),
        Community::parse("65000:200").unwrap(),
        Community::Large {
            global: node_asn,
            local1: 1,
            local2: 2,
        },
    ]
    .into()
}

/// What the hand-driven session saw.
#[derive(Debug)]
struct Established {
    peer_open: Open,
}

/// A session run from the node's namespace on its own runtime; stopped (with a Cease
/// NOTIFICATION) on drop.
struct Session {
    established: mpsc::Receiver<Result<Established, String>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Session {
    fn start(lab: &Netlab, node_asn: u32, password: Option<&str>) -> Session {
        let (established_tx, established) = mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let password = password.map(|p| p.as_bytes().to_vec());
        let thread = lab.thread_in("node", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(run_session(node_asn, password, established_tx, stop_rx));
        });
        Session {
            established,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Waits for the session to reach Established on the node's side (or fail).
    fn wait_established(&self) -> Established {
        match self.established.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(established)) => established,
            Ok(Err(e)) => panic!("the node's session failed: {e}"),
            Err(e) => panic!("the node's session did not establish in 30 s ({e})"),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one whole message, reading from the socket as needed.
async fn read_message(
    reader: &mut OwnedReadHalf,
    buffer: &mut Vec<u8>,
    four_octet: bool,
) -> Result<Message, String> {
    loop {
        match wire::decode(buffer, four_octet) {
            Ok(Some((message, used))) => {
                buffer.drain(..used);
                return Ok(message);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("decoding what the router sent: {e}")),
        }
        let mut chunk = [0u8; 4096];
        let n = reader
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading from the router: {e}"))?;
        if n == 0 {
            return Err("the router closed the connection".to_string());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

async fn send(
    writer: &mut OwnedWriteHalf,
    message: &Message,
    ctx: &EncodeContext,
) -> Result<(), String> {
    let bytes = wire::encode(message, ctx).map_err(|e| e.to_string())?;
    writer
        .write_all(&bytes)
        .await
        .map_err(|e| format!("writing to the router: {e}"))
}

fn socket_config(password: Option<Vec<u8>>, timeout: Duration) -> PeerSocketConfig {
    PeerSocketConfig {
        peer: SocketAddr::new(IpAddr::V4(netlab::ipv4(ROUTER)), 179),
        source: Some(IpAddr::V4(node_v4())),
        ttl: 1,
        md5_password: password,
        connect_timeout: timeout,
    }
}

fn node_open(node_asn: u32) -> Open {
    Open {
        version: 4,
        my_as: u16::try_from(node_asn).unwrap_or(AS_TRANS),
        hold_time: 90,
        router_id: node_v4(),
        capabilities: Capabilities {
            families: [Family::Ipv4Unicast, Family::Ipv6Unicast].into(),
            other_families: Vec::new(),
            four_octet_asn: Some(node_asn),
            route_refresh: true,
            graceful_restart: Some(GracefulRestart {
                restarting: false,
                restart_time: 120,
                families: [Family::Ipv4Unicast, Family::Ipv6Unicast].into(),
            }),
            unknown: Vec::new(),
        },
    }
}

async fn run_session(
    node_asn: u32,
    password: Option<Vec<u8>>,
    established: mpsc::Sender<Result<Established, String>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let result = async {
        let stream = connect(&socket_config(password, Duration::from_secs(10)))
            .await
            .map_err(|e| e.to_string())?;
        let (mut reader, mut writer) = stream.into_split();
        let mut buffer = Vec::new();
        let mut ctx = EncodeContext {
            local_asn: node_asn,
            four_octet_asn: false,
            ibgp: false,
            next_hop_v4: Some(node_v4()),
            next_hop_v6: Some(node_v6()),
            next_hop_v6_link_local: None,
        };
        let step = Duration::from_secs(15);
        send(&mut writer, &Message::Open(node_open(node_asn)), &ctx).await?;
        let peer_open =
            match tokio::time::timeout(step, read_message(&mut reader, &mut buffer, false))
                .await
                .map_err(|_| "no OPEN from the router in 15 s".to_string())??
            {
                Message::Open(open) => open,
                other => return Err(format!("expected an OPEN, got {other:?}")),
            };
        ctx.four_octet_asn = peer_open.capabilities.four_octet_asn.is_some();
        send(&mut writer, &Message::Keepalive, &ctx).await?;
        loop {
            match tokio::time::timeout(
                step,
                read_message(&mut reader, &mut buffer, ctx.four_octet_asn),
            )
            .await
            .map_err(|_| "no KEEPALIVE from the router in 15 s".to_string())??
            {
                Message::Keepalive => break,
                Message::Notification(n) => {
                    return Err(format!("the router sent NOTIFICATION {}", n.describe()));
                }
                _ => {}
            }
        }
        let attrs = RouteAttrs {
            local_pref: None,
            communities: communities(node_asn),
        };
        for update in [
            Update {
                family: Family::Ipv4Unicast,
                withdrawn: Vec::new(),
                attrs: attrs.clone(),
                announced: vec![PREFIX_V4.parse().unwrap()],
            },
            Update {
                family: Family::Ipv6Unicast,
                withdrawn: Vec::new(),
                attrs,
                announced: vec![PREFIX_V6.parse().unwrap()],
            },
            Update::end_of_rib(Family::Ipv4Unicast),
            Update::end_of_rib(Family::Ipv6Unicast),
        ] {
            send(&mut writer, &Message::Update(update), &ctx).await?;
        }
        Ok((reader, writer, buffer, ctx, peer_open))
    }
    .await;
    let (mut reader, mut writer, mut buffer, ctx, peer_open) = match result {
        Ok(parts) => parts,
        Err(e) => {
            let _ = established.send(Err(e));
            return;
        }
    };
    let _ = established.send(Ok(Established { peer_open }));
    // Keep the session up until told to stop: KEEPALIVEs every 5 s, the router's messages
    // read (a NOTIFICATION ends the session).
    let mut keepalive = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = &mut stop => {
                let _ = send(&mut writer, &Message::Notification(Notification::administrative_shutdown()), &ctx).await;
                return;
            }
            _ = keepalive.tick() => {
                if send(&mut writer, &Message::Keepalive, &ctx).await.is_err() {
                    return;
                }
            }
            message = read_message(&mut reader, &mut buffer, ctx.four_octet_asn) => {
                match message {
                    Ok(Message::Notification(n)) => {
                        eprintln!("the router ended the session: {}", n.describe());
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("session: {e}");
                        return;
                    }
                }
            }
        }
    }
}

/// A router under test.
enum Router {
    Bird(Bird),
    Gobgp(Gobgp),
}

impl Router {
    fn start(kind: &str, lab: &Netlab, peer: PeerConfig) -> Router {
        match kind {
            "bird" => Router::Bird(Bird::start(lab, "router", &[peer])),
            "gobgp" => Router::Gobgp(Gobgp::start(lab, "router", &[peer])),
            other => panic!("no router {other}"),
        }
    }

    fn state(&mut self) -> String {
        match self {
            Router::Bird(bird) => bird.bgp_state("node").to_lowercase(),
            Router::Gobgp(gobgp) => gobgp.bgp_state(IpAddr::V4(node_v4())),
        }
    }

    fn routes(&mut self) -> Vec<LearnedRoute> {
        match self {
            Router::Bird(bird) => bird.routes(),
            Router::Gobgp(gobgp) => gobgp.routes(),
        }
    }

    fn log(&self) -> String {
        match self {
            Router::Bird(bird) => bird.log(),
            Router::Gobgp(gobgp) => gobgp.log(),
        }
    }
}

/// The node establishes a session with `kind` and the router learns both prefixes with the
/// node as next hop and the communities.
fn router_learns_routes(kind: &str, router_asn: u32, node_asn: u32, password: Option<&str>) {
    let lab = lab();
    let mut router = Router::start(kind, &lab, router_peer(router_asn, node_asn, password));
    let session = Session::start(&lab, node_asn, password);
    let established = session.wait_established();
    assert_eq!(established.peer_open.asn(), router_asn, "{kind}'s OPEN");
    assert!(
        established
            .peer_open
            .capabilities
            .families
            .contains(&Family::Ipv6Unicast),
        "{kind} does not offer IPv6 unicast: {:?}",
        established.peer_open
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    let (state, routes) = loop {
        let state = router.state();
        let routes = router.routes();
        let has = |p: &str| routes.iter().any(|r| r.prefix == p);
        if (state == "established" && has(PREFIX_V4) && has(PREFIX_V6)) || Instant::now() > deadline
        {
            break (state, routes);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(state, "established", "{kind} log:\n{}", router.log());
    eprintln!("{kind} is {state} and learned {routes:?}");
    let expected_communities = vec![(65000, 100), (65000, 200)];
    let expected_large = vec![(node_asn, 1, 2)];
    for (prefix, next_hop) in [
        (PREFIX_V4, IpAddr::V4(node_v4())),
        (PREFIX_V6, IpAddr::V6(node_v6())),
    ] {
        let route = routes
            .iter()
            .find(|r| r.prefix == prefix)
            .unwrap_or_else(|| {
                panic!(
                    "{kind} has no route {prefix}: {routes:#?}\nlog:\n{}",
                    router.log()
                )
            });
        assert!(
            route.next_hops.contains(&next_hop),
            "{kind}: {prefix} not via {next_hop}: {route:?}"
        );
        assert_eq!(route.communities, expected_communities, "{kind}: {route:?}");
        assert_eq!(route.large_communities, expected_large, "{kind}: {route:?}");
    }
    if kind == "bird" {
        // BIRD put them into the router's kernel tables.
        let v4 = lab.exec_ok("router", "ip", &["-4", "route", "show", PREFIX_V4]);
        assert!(v4.contains(&format!("via {}", node_v4())), "kernel: {v4}");
        let v6 = lab.exec_ok("router", "ip", &["-6", "route", "show", PREFIX_V6]);
        assert!(v6.contains(&format!("via {}", node_v6())), "kernel: {v6}");
    }
    drop(session);
}

/// With a password the node does not have (or a wrong one), the session never establishes:
/// the router drops the unsigned or badly signed SYNs, and the connect times out.
fn wrong_password_never_establishes(kind: &str) {
    let lab = lab();
    let mut router = Router::start(kind, &lab, router_peer(65000, 65001, Some(PASSWORD)));
    for node_password in [Some(b"not-the-password".to_vec()), None] {
        let started = Instant::now();
        let result = lab.run_in("node", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(connect(&socket_config(
                node_password,
                Duration::from_secs(3),
            )))
        });
        match result {
            Err(BgpSocketError::Timeout { .. }) => {}
            Err(other) => panic!("{kind}: expected a connect timeout, got {other}"),
            Ok(stream) => panic!("{kind}: connected with a wrong password: {stream:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let state = router.state();
        assert_ne!(state, "established", "{kind} log:\n{}", router.log());
    }
}

#[test]
fn bird_learns_routes_from_a_2_byte_asn_node() {
    router_learns_routes("bird", 65000, 65001, None);
}

#[test]
fn bird_learns_routes_with_4_byte_asns_and_md5() {
    router_learns_routes("bird", 4_200_000_000, 4_200_000_001, Some(PASSWORD));
}

#[test]
fn bird_never_establishes_with_a_wrong_md5_password() {
    wrong_password_never_establishes("bird");
}

#[test]
fn gobgp_learns_routes_from_a_2_byte_asn_node() {
    router_learns_routes("gobgp", 65000, 65001, None);
}

#[test]
fn gobgp_learns_routes_with_4_byte_asns_and_md5() {
    router_learns_routes("gobgp", 4_200_000_000, 4_200_000_001, Some(PASSWORD));
}

#[test]
fn gobgp_never_establishes_with_a_wrong_md5_password() {
    wrong_password_never_establishes("gobgp");
}
