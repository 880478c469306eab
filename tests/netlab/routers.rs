//! Real BGP routers in a lab host's namespace: BIRD 2 (`/usr/sbin/bird`, `birdc`) and GoBGP 3
//! (`/usr/bin/gobgpd`, `gobgp`). Each writes its configuration into the lab's scratch
//! directory, starts in the host's namespace with its output in a log file there, and is
//! killed on drop. A daemon that does not start (or dies) panics with its log: a test that
//! cannot run fails.
//!
//! Queries: the state of the BGP session with a neighbour, and the routes learned from BGP
//! as [`LearnedRoute`]s (prefix, next hops, communities, large communities, LOCAL_PREF).

use std::fs::File;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Netlab;

/// One BGP neighbour of a router, and the router's own side of the session.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Session name (BIRD protocol name; letters, digits, `_`).
    pub name: String,
    /// The router's router ID and local address of the session.
    pub router_id: std::net::Ipv4Addr,
    pub local_asn: u32,
    /// The neighbour (the node) and its ASN.
    pub neighbor: IpAddr,
    pub neighbor_asn: u32,
    /// TCP MD5 password, set on the router's side.
    pub md5_password: Option<String>,
    /// Wait for the neighbour to connect, never connect to it.
    pub passive: bool,
    /// Graceful restart (RFC 4724) on, for both families.
    pub graceful_restart: bool,
}

impl PeerConfig {
    /// A passive eBGP (or iBGP when the ASNs match) session with graceful restart, no password.
    pub fn new(router_id: std::net::Ipv4Addr, local_asn: u32, neighbor: IpAddr, asn: u32) -> Self {
        PeerConfig {
            name: "node".to_string(),
            router_id,
            local_asn,
            neighbor,
            neighbor_asn: asn,
            md5_password: None,
            passive: true,
            graceful_restart: true,
        }
    }
}

/// A route a router learned by BGP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedRoute {
    /// `203.0.113.10/32`, `2001:db8:ff::10/128`.
    pub prefix: String,
    pub next_hops: Vec<IpAddr>,
    /// Standard communities as `(high, low)`.
    pub communities: Vec<(u16, u16)>,
    pub large_communities: Vec<(u32, u32, u32)>,
    pub local_pref: Option<u32>,
}

/// A daemon in a namespace, killed on drop.
struct Daemon {
    what: &'static str,
    ns: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(what: &'static str, ns: &str, log: PathBuf, cmd: &str, args: &[&str]) -> Daemon {
        let out = File::create(&log).unwrap_or_else(|e| panic!("{what}: log file: {e}"));
        let err = out.try_clone().expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns, cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start {cmd}: {e}"));
        Daemon {
            what,
            ns: ns.to_string(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the daemon has exited.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}); its log:\n{}", self.what, self.log());
        }
    }

    /// Waits until `ready` holds (the daemon answers), panicking with the log otherwise.
    fn wait_ready(&mut self, mut ready: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            self.check_alive();
            let last = match ready() {
                Ok(()) => return,
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "{} did not become ready in 15 s (last answer: {last}); its log:\n{}",
                    self.what,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// BIRD 2

/// BIRD 2 running in a lab host's namespace.
pub struct Bird {
    daemon: Daemon,
    socket: PathBuf,
    pub config: String,
}

/// BIRD's configuration: one BGP protocol per peer importing everything (exporting nothing)
/// in both families, and kernel protocols exporting the learned routes to the host's tables
/// (equal paths from several peers merged into one multipath route: ECMP).
pub fn bird_config(router_id: std::net::Ipv4Addr, peers: &[PeerConfig]) -> String {
    let mut conf = format!(
        "log stderr all;\n\
         router id {router_id};\n\
         protocol device {{ }}\n\
         protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
         protocol kernel kernel6 {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n"
    );
    for peer in peers {
        let mut options = String::new();
        if let Some(password) = &peer.md5_password {
            options.push_str(&format!("  password \"{password}\";\n"));
        }
        if peer.passive {
            options.push_str("  passive on;\n");
        }
        if peer.graceful_restart {
            options.push_str("  graceful restart on;\n");
        }
        conf.push_str(&format!(
            "protocol bgp {name} {{\n\
             \x20 local as {local};\n\
             \x20 neighbor {neighbor} as {asn};\n\
             {options}\
             \x20 ipv4 {{ import all; export none; }};\n\
             \x20 ipv6 {{ import all; export none; }};\n\
             }}\n",
            name = peer.name,
            local = peer.local_asn,
            neighbor = peer.neighbor,
            asn = peer.neighbor_asn,
        ));
    }
    conf
}

impl Bird {
    /// Starts BIRD in host `host` of `lab` with `peers`; returns once it answers on its
    /// control socket.
    pub fn start(lab: &Netlab, host: &str, peers: &[PeerConfig]) -> Bird {
        let dir = lab.scratch.join(format!("bird-{host}"));
        std::fs::create_dir_all(&dir).expect("bird directory");
        let router_id = peers
            .first()
            .map(|p| p.router_id)
            .unwrap_or(lab.host(host).ipv4);
        let config = bird_config(router_id, peers);
        let conf_path = dir.join("bird.conf");
        std::fs::write(&conf_path, &config).expect("bird.conf");
        let socket = dir.join("bird.ctl");
        let daemon = Daemon::start(
            "BIRD",
            lab.ns(host),
            dir.join("bird.log"),
            "/usr/sbin/bird",
            &[
                "-f",
                "-c",
                conf_path.to_str().unwrap(),
                "-s",
                socket.to_str().unwrap(),
            ],
        );
        let mut bird = Bird {
            daemon,
            socket,
            config,
        };
        let socket = bird.socket.clone();
        bird.daemon
            .wait_ready(|| birdc_at(&socket, &["show", "status"]).map(|_| ()));
        bird
    }

    /// `birdc -s SOCK args...`, panicking with BIRD's log when it fails.
    pub fn birdc(&mut self, args: &[&str]) -> String {
        self.daemon.check_alive();
        birdc_at(&self.socket, args)
            .unwrap_or_else(|e| panic!("{e}\nBIRD log:\n{}", self.daemon.log()))
    }

    /// The BGP state of protocol `name` ("Established", "Active", "Connect", ...).
    pub fn bgp_state(&mut self, name: &str) -> String {
        let out = self.birdc(&["show", "protocols", "all", name]);
        out.lines()
            .find_map(|l| l.trim().strip_prefix("BGP state:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| format!("(no BGP state in: {out})"))
    }

    /// Routes learned from BGP, in every table.
    pub fn routes(&mut self) -> Vec<LearnedRoute> {
        parse_bird_routes(&self.birdc(&["show", "route", "all"]))
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

fn birdc_at(socket: &std::path::Path, args: &[&str]) -> Result<String, String> {
    run(Command::new("birdc").arg("-s").arg(socket).args(args))
}

/// Parses `show route all`: a route starts at column 0 with its prefix (or, for another
/// route to the same prefix, with spaces then the route); its attributes follow indented.
pub fn parse_bird_routes(text: &str) -> Vec<LearnedRoute> {
    let mut routes: Vec<LearnedRoute> = Vec::new();
    let mut prefix = String::new();
    let mut current: Option<LearnedRoute> = None;
    let numbers = |s: &str| -> Vec<u32> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|t| !t.is_empty())
            .filter_map(|t| t.parse().ok())
            .collect()
    };
    for line in text.lines() {
        if line.starts_with("BIRD ") || line.starts_with("Table ") || line.trim().is_empty() {
            continue;
        }
        let starts_route = !line.starts_with(char::is_whitespace)
            || (line.starts_with(' ') && line.contains(" [") && !line.contains(':'));
        if starts_route {
            if let Some(route) = current.take() {
                routes.push(route);
            }
            if !line.starts_with(char::is_whitespace) {
                prefix = line
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
            current = Some(LearnedRoute {
                prefix: prefix.clone(),
                next_hops: Vec::new(),
                communities: Vec::new(),
                large_communities: Vec::new(),
                local_pref: None,
            });
            continue;
        }
        let Some(route) = current.as_mut() else {
            continue;
        };
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("via ") {
            if let Some(ip) = rest.split_whitespace().next().and_then(|s| s.parse().ok()) {
                route.next_hops.push(ip);
            }
        } else if let Some(rest) = line.strip_prefix("BGP.next_hop:") {
            for word in rest.split_whitespace() {
                if let Ok(ip) = word.parse::<IpAddr>()
                    && !route.next_hops.contains(&ip)
                {
                    route.next_hops.push(ip);
                }
            }
        } else if let Some(rest) = line.strip_prefix("BGP.local_pref:") {
            route.local_pref = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("BGP.community:") {
            route.communities = numbers(rest)
                .chunks_exact(2)
                .map(|c| (c[0] as u16, c[1] as u16))
                .collect();
        } else if let Some(rest) = line.strip_prefix("BGP.large_community:") {
            route.large_communities = numbers(rest)
                .chunks_exact(3)
                .map(|c| (c[0], c[1], c[2]))
                .collect();
        }
    }
    routes.extend(current);
    // Only BGP routes carry BGP attributes; the kernel and device routes are dropped.
    routes.retain(|r| !r.next_hops.is_empty());
    routes
}

// ---------------------------------------------------------------------------------------------
// GoBGP 3

/// The gRPC port gobgpd listens on, on 127.0.0.1 of its own namespace.
pub const GOBGP_API_PORT: u16 = 50051;

/// GoBGP running in a lab host's namespace.
pub struct Gobgp {
    daemon: Daemon,
    pub config: String,
}

/// gobgpd's configuration (TOML): the global AS and router ID, and one neighbour per peer
/// with IPv4 and IPv6 unicast.
pub fn gobgp_config(router_id: std::net::Ipv4Addr, local_asn: u32, peers: &[PeerConfig]) -> String {
    let mut conf = format!(
        "[global.config]\n  as = {local_asn}\n  router-id = \"{router_id}\"\n  port = 179\n\n"
    );
    for peer in peers {
        conf.push_str(&format!(
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}\n",
            peer.neighbor, peer.neighbor_asn
        ));
        if let Some(password) = &peer.md5_password {
            conf.push_str(&format!("    auth-password = \"{password}\"\n"));
        }
        if peer.passive {
            conf.push_str("  [neighbors.transport.config]\n    passive-mode = true\n");
        }
        if peer.graceful_restart {
            conf.push_str(
                "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 120\n",
            );
        }
        for family in ["ipv4-unicast", "ipv6-unicast"] {
            conf.push_str(&format!(
                "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{family}\"\n"
            ));
            if peer.graceful_restart {
                conf.push_str(
                    "    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n",
                );
            }
        }
        conf.push('\n');
    }
    conf
}

impl Gobgp {
    /// Starts gobgpd in host `host` of `lab` (all peers share the first one's local ASN);
    /// returns once its API answers.
    pub fn start(lab: &Netlab, host: &str, peers: &[PeerConfig]) -> Gobgp {
        let dir = lab.scratch.join(format!("gobgp-{host}"));
        std::fs::create_dir_all(&dir).expect("gobgp directory");
        let first = peers.first().expect("GoBGP needs a peer");
        let config = gobgp_config(first.router_id, first.local_asn, peers);
        let conf_path = dir.join("gobgpd.toml");
        std::fs::write(&conf_path, &config).expect("gobgpd.toml");
        let api = format!("127.0.0.1:{GOBGP_API_PORT}");
        let daemon = Daemon::start(
            "gobgpd",
            lab.ns(host),
            dir.join("gobgpd.log"),
            "/usr/bin/gobgpd",
            &[
                "-f",
                conf_path.to_str().unwrap(),
                "-t",
                "toml",
                "--api-hosts",
                &api,
                "--pprof-disable",
                "-p",
            ],
        );
        let mut gobgp = Gobgp { daemon, config };
        let ns = gobgp.daemon.ns.clone();
        gobgp
            .daemon
            .wait_ready(|| gobgp_at(&ns, &["global"]).map(|_| ()));
        gobgp
    }

    /// `gobgp -p PORT args...` in the router's namespace, panicking with the log on failure.
    pub fn gobgp(&mut self, args: &[&str]) -> String {
        self.daemon.check_alive();
        gobgp_at(&self.daemon.ns, args)
            .unwrap_or_else(|e| panic!("{e}\ngobgpd log:\n{}", self.daemon.log()))
    }

    /// The session state with `neighbor` as `gobgp neighbor` prints it ("established",
    /// "active", ...).
    pub fn bgp_state(&mut self, neighbor: IpAddr) -> String {
        let out = self.gobgp(&["neighbor", &neighbor.to_string(), "-j"]);
        let json: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("gobgp neighbor -j: {e}: {out}"));
        match &json["state"]["session_state"] {
            serde_json::Value::String(s) => s.to_lowercase(),
            // Older clients print the enum number (6 = established).
            serde_json::Value::Number(n) if n.as_u64() == Some(6) => "established".to_string(),
            other => format!("{other}"),
        }
    }

    /// Routes in the global RIB of both families.
    pub fn routes(&mut self) -> Vec<LearnedRoute> {
        let mut routes = Vec::new();
        for family in ["ipv4", "ipv6"] {
            let out = self.gobgp(&["global", "rib", "-a", family, "-j"]);
            routes.extend(parse_gobgp_rib(&out));
        }
        routes
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

fn gobgp_at(ns: &str, args: &[&str]) -> Result<String, String> {
    let port = GOBGP_API_PORT.to_string();
    run(Command::new("ip")
        .args(["netns", "exec", ns, "gobgp", "-u", "127.0.0.1", "-p", &port])
        .args(args))
}

/// Parses `gobgp global rib -j`: prefix -> paths, each with its attributes by type code.
pub fn parse_gobgp_rib(text: &str) -> Vec<LearnedRoute> {
    let json: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("gobgp global rib -j is not JSON ({e}): {text}"));
    let mut routes = Vec::new();
    let Some(map) = json.as_object() else {
        return routes;
    };
    for (prefix, paths) in map {
        for path in paths.as_array().into_iter().flatten() {
            let mut route = LearnedRoute {
                prefix: prefix.clone(),
                next_hops: Vec::new(),
                communities: Vec::new(),
                large_communities: Vec::new(),
                local_pref: None,
            };
            for attr in path["attrs"].as_array().into_iter().flatten() {
                match attr["type"].as_u64() {
                    Some(3) | Some(14) => {
                        if let Some(ip) = attr["nexthop"].as_str().and_then(|s| s.parse().ok()) {
                            route.next_hops.push(ip);
                        }
                        if let Some(ip) = attr["linklocal_nexthop"]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                        {
                            route.next_hops.push(ip);
                        }
                    }
                    Some(5) => route.local_pref = attr["value"].as_u64().map(|v| v as u32),
                    Some(8) => {
                        route.communities = attr["communities"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|c| c.as_u64())
                            .map(|c| ((c >> 16) as u16, (c & 0xffff) as u16))
                            .collect()
                    }
                    Some(32) => {
                        route.large_communities = attr["value"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| {
                                let n = |k: &str| c[k].as_u64().unwrap_or(u64::MAX) as u32;
                                (n("ASN"), n("LocalData1"), n("LocalData2"))
                            })
                            .collect()
                    }
                    _ => {}
                }
            }
            routes.push(route);
        }
    }
    routes
}
