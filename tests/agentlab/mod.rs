//! A cluster of vipam agents on a LAN of network namespaces (tests/netlab), talking to the fake
//! Kubernetes API (tests/support) served inside the LAN, plus a client that probes the VIPs.
//!
//! Each node namespace runs a TCP server on port 8080 that answers with the node's name, and
//! holds the test VIPs on `lo` with `arp_ignore=1` / `arp_announce=2` (as kube-proxy in IPVS
//! mode does on `kube-ipvs0`): the kernel accepts traffic for a VIP but never answers ARP or
//! neighbour solicitations for it, so only the agent that owns it makes it reachable.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::netlab::Netlab;
use crate::support::FakeApi;

/// The port of the stand-in workload on every node.
pub const SERVICE_PORT: u16 = 8080;
/// Nodes of the lab (host names in netlab and Node names in the API).
pub const NODES: [&str; 3] = ["node1", "node2", "node3"];

/// Timings and extra flags of the agents.
#[derive(Clone, Debug)]
pub struct AgentFlags {
    pub lease_duration: &'static str,
    pub renew_interval: &'static str,
    pub resync: &'static str,
    pub garp_interval: &'static str,
}

impl Default for AgentFlags {
    fn default() -> Self {
        AgentFlags {
            lease_duration: "3s",
            renew_interval: "1s",
            resync: "2s",
            garp_interval: "10s",
        }
    }
}

pub struct AgentLab {
    pub net: Netlab,
    pub fake: FakeApi,
    pub dir: PathBuf,
    kubeconfig: PathBuf,
    flags: AgentFlags,
    agents: Mutex<BTreeMap<String, Child>>,
    stop: Arc<AtomicBool>,
    api_stop: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

/// The binary under test: `VIPAM_TEST_BIN` when set (a copy taken right after the build,
/// for a target directory that several checkouts share), else cargo's.
pub fn bin() -> String {
    std::env::var("VIPAM_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vipam").to_string())
}

impl AgentLab {
    /// The LAN, the fake API at 192.0.2.5:6443 with three Nodes, and a server on every node.
    /// Agents are started with [`AgentLab::start_agent`].
    pub fn new(name: &str, flags: AgentFlags) -> AgentLab {
        AgentLab::build(name, flags, false)
    }

    /// Like [`AgentLab::new`], with a management network (tests/netlab) between the nodes and
    /// the `api` host, over which alone the agents reach the fake API (203.0.113.5:6443): a
    /// node that loses its LAN keeps renewing its Lease.
    pub fn with_management_network(name: &str, flags: AgentFlags) -> AgentLab {
        AgentLab::build(name, flags, true)
    }

    /// Like [`AgentLab::new`], with a router host `router` (.1) on the LAN for BGP: it
    /// forwards, and the client reaches the LoadBalancer ranges (203.0.113.0/24,
    /// 2001:db8:ff::/48) through it, so traffic follows what the router learned. Nodes carry
    /// their LAN address as InternalIP (their BGP router ID).
    pub fn with_router(name: &str, flags: AgentFlags) -> AgentLab {
        let net = Netlab::with_router();
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ] {
            net.exec_ok("router", "sysctl", &["-qw", sysctl]);
        }
        let router = net.host("router").clone();
        net.exec_ok(
            "client",
            "ip",
            &[
                "route",
                "add",
                "203.0.113.0/24",
                "via",
                &router.ipv4.to_string(),
            ],
        );
        net.exec_ok(
            "client",
            "ip",
            &[
                "-6",
                "route",
                "add",
                "2001:db8:ff::/48",
                "via",
                &router.ipv6.to_string(),
            ],
        );
        let lab = AgentLab::build_on(net, name, flags, false);
        for node in NODES {
            let host = lab.net.host(node).clone();
            lab.fake.seed(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": host.ipv4.to_string()},
                    {"type": "InternalIP", "address": host.ipv6.to_string()},
                    {"type": "Hostname", "address": node},
                ]},
            }));
        }
        lab
    }

    fn build(name: &str, flags: AgentFlags, management: bool) -> AgentLab {
        AgentLab::build_on(Netlab::standard(), name, flags, management)
    }

    fn build_on(net: Netlab, name: &str, flags: AgentFlags, management: bool) -> AgentLab {
        if management {
            let mut members = NODES.to_vec();
            members.push("api");
            net.add_management_network(&members);
        }
        let dir = std::env::temp_dir().join(format!(
            "vipam-agentlab-{name}-{}-{}",
            std::process::id(),
            net.switch_ns
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the lab directory");
        let fake = FakeApi::new();
        let (api_stop, api_stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
        let api_ip = if management {
            crate::netlab::mgmt_ipv4(net.host("api").number)
        } else {
            net.host("api").ipv4
        };
        let api_addr: SocketAddr = (api_ip, 6443).into();
        let served = fake.clone();
        let api_thread = net.thread_in("api", move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the fake API");
            runtime.block_on(async move {
                let server = served.serve(api_addr).await.expect("serving the fake API");
                ready_tx
                    .send(server.kubeconfig())
                    .expect("reporting the kubeconfig");
                let _ = api_stopped.await;
                drop(server);
            });
        });
        let kubeconfig_text = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake API did not start");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_text).expect("writing the kubeconfig");

        fake.seed(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "vipam-system"}}),
        );
        for node in NODES {
            fake.seed(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
            }));
        }
        let (stop, mut threads) = start_workloads(&net);
        threads.push(api_thread);
        AgentLab {
            net,
            fake,
            dir,
            kubeconfig,
            flags,
            agents: Mutex::new(BTreeMap::new()),
            stop,
            api_stop: Some(api_stop),
            threads,
        }
    }

    /// Adds `ip` to `lo` on every node (the kernel accepts its traffic; the agent announces).
    pub fn add_vip_on_nodes(&self, ip: IpAddr) {
        add_vip_on_nodes(&self.net, ip);
    }

    /// An L2Announcement for every node on `eth0`, in `mode` (`arp` or `address`).
    pub fn seed_announcement(&self, mode: &str) {
        self.fake.seed(json!({
            "apiVersion": "vipam.io/v1alpha1", "kind": "L2Announcement",
            "metadata": {"name": "lan"},
            "spec": {"interfaces": ["^eth0$"], "mode": mode},
        }));
    }

    /// A LoadBalancer Service `default/<name>` holding `ip` (its IPAllocation, bound).
    pub fn seed_service(&self, name: &str, ip: IpAddr, local_traffic: bool) {
        let policy = if local_traffic { "Local" } else { "Cluster" };
        self.fake.seed(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy,
                     "selector": {"app": name},
                     "ports": [{"port": SERVICE_PORT, "protocol": "TCP"}]},
        }));
        self.fake.seed(json!({
            "apiVersion": "vipam.io/v1alpha1", "kind": "IPAllocation",
            "metadata": {"name": allocation_name(ip)},
            "spec": {"ip": ip.to_string(), "pool": "lan",
                     "services": [{"namespace": "default", "name": name,
                                   "ports": [{"protocol": "TCP", "port": SERVICE_PORT}]}]},
            "status": {"phase": "Bound"},
        }));
    }

    /// Starts (or restarts) the agent of `node`.
    pub fn start_agent(&self, node: &str) {
        self.start_agent_with(node, &[]);
    }

    pub fn start_agent_with(&self, node: &str, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{node}.log")))
            .expect("opening the agent log");
        let state = self.dir.join(format!("{node}-state"));
        let f = &self.flags;
        let child = Command::new("ip")
            .args(["netns", "exec", self.net.ns(node), &bin(), "agent"])
            .args(["--node-name", node, "--namespace", "vipam-system"])
            .args(["--admin-addr", "127.0.0.1:9478"])
            .arg("--state-dir")
            .arg(&state)
            .args(["--lease-duration", f.lease_duration])
            .args(["--renew-interval", f.renew_interval])
            .args(["--resync", f.resync])
            .args(["--garp-interval", f.garp_interval])
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,vipam=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting vipam agent");
        if let Some(mut old) = self.agents.lock().unwrap().insert(node.to_string(), child) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    pub fn start_all(&self) {
        for node in NODES {
            self.start_agent(node);
        }
    }

    /// Sends `signal` (e.g. `KILL`, `TERM`) to `node`'s agent. `ip netns exec` execs the agent,
    /// so the child's pid is the agent's.
    pub fn signal_agent(&self, node: &str, signal: &str) {
        let agents = self.agents.lock().unwrap();
        let child = agents
            .get(node)
            .unwrap_or_else(|| panic!("no agent on {node}"));
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {node}'s agent failed");
    }

    /// The process id of `node`'s agent (`ip netns exec` execs it, so the child is the agent).
    pub fn agent_pid(&self, node: &str) -> u32 {
        let agents = self.agents.lock().unwrap();
        agents
            .get(node)
            .unwrap_or_else(|| panic!("no agent on {node}"))
            .id()
    }

    /// The resident memory of `node`'s agent in MiB (VmRSS), for the benchmarks.
    pub fn rss_mib(&self, node: &str) -> Option<f64> {
        let pid = self.agent_pid(node);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    }

    /// Waits for `node`'s agent to exit; returns whether it exited with success.
    pub fn wait_agent_exit(&self, node: &str, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut agents = self.agents.lock().unwrap();
                let child = agents
                    .get_mut(node)
                    .unwrap_or_else(|| panic!("no agent on {node}"));
                if let Some(status) = child.try_wait().expect("waiting for the agent") {
                    return Some(status.success());
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The agent log of `node` (for failure messages).
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{node}.log"))).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        NODES
            .iter()
            .map(|n| format!("----- {n} -----\n{}", tail(&self.log(n), 60)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `status.announcer.node` of the IPAllocation of `ip`.
    pub fn announcer(&self, ip: IpAddr) -> Option<String> {
        let object = self.fake.get("ipallocations", None, &allocation_name(ip))?;
        object
            .pointer("/status/announcer/node")
            .and_then(Value::as_str)
            .map(String::from)
    }

    /// Waits until `status.announcer` of `ip` names a node (other than `not`), and returns it.
    pub fn wait_announcer(&self, ip: IpAddr, not: Option<&str>, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(node) = self.announcer(ip)
                && Some(node.as_str()) != not
            {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "no announcer for {ip} (other than {not:?}) within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One probe from the client: the name of the node that answered on `ip`, or None.
    pub fn probe(&self, ip: IpAddr, timeout: Duration) -> Option<String> {
        self.net.run_in("client", move || probe(ip, timeout))
    }

    /// Probes `ip` from the client every `every` until stopped.
    pub fn prober(&self, ip: IpAddr, every: Duration) -> Prober {
        self.prober_with(every, move |timeout| probe(ip, timeout))
    }

    /// Runs `probe` (given its timeout) in the client every `every` until stopped.
    pub fn prober_with(
        &self,
        every: Duration,
        probe: impl Fn(Duration) -> Option<String> + Send + 'static,
    ) -> Prober {
        prober_in(&self.net, every, probe)
    }

    /// Deletes the IPAllocation of `ip` through the API (as the controller does on release).
    pub fn delete_allocation(&self, ip: IpAddr) {
        let client = self.fake.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let api: kube::Api<vipam::api::IPAllocation> = kube::Api::all(client.client());
            api.delete(&allocation_name(ip), &Default::default())
                .await
                .expect("deleting the IPAllocation");
        });
    }

    /// Addresses on `dev` in `node`, as `ip -d addr` prints them.
    pub fn addresses(&self, node: &str, dev: &str) -> String {
        self.net
            .exec_ok(node, "ip", &["-d", "addr", "show", "dev", dev])
    }
}

/// Runs `probe` (given its timeout) in the client of `net` every `every` until stopped.
pub fn prober_in(
    net: &Netlab,
    every: Duration,
    probe: impl Fn(Duration) -> Option<String> + Send + 'static,
) -> Prober {
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let (s, out) = (stop.clone(), samples.clone());
    let start = Instant::now();
    let thread = net.thread_in("client", move || {
        while !s.load(Ordering::Acquire) {
            let at = Instant::now();
            // A generous timeout: a loaded CI machine must not turn a slow answer into a
            // failure (the failover gap is measured from answers, not timeouts).
            let answer = probe(Duration::from_millis(500));
            out.lock().unwrap().push((at, answer));
            let spent = at.elapsed();
            if spent < every {
                std::thread::sleep(every - spent);
            }
        }
    });
    Prober {
        stop,
        samples,
        thread: Some(thread),
        start,
    }
}

impl Drop for AgentLab {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut *self.agents.lock().unwrap()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stop.store(true, Ordering::Release);
        if let Some(stop) = self.api_stop.take() {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("agent logs kept in {}", self.dir.display());
        }
    }
}

/// Probes: when each started, and which node answered (None: no answer).
pub type Samples = Vec<(Instant, Option<String>)>;

/// What the client saw.
pub struct Prober {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Samples>>,
    thread: Option<JoinHandle<()>>,
    pub start: Instant,
}

impl Prober {
    pub fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }

    pub fn samples(&self) -> Samples {
        self.samples.lock().unwrap().clone()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The failover gap: from `event` to the first answer from a node other than `old` (None if
/// it never came).
pub fn gap_after(
    samples: &[(Instant, Option<String>)],
    event: Instant,
    old: &str,
) -> Option<(Duration, String)> {
    samples
        .iter()
        .filter(|(at, _)| *at >= event)
        .find_map(|(at, answer)| match answer {
            Some(node) if node != old => Some((at.duration_since(event), node.clone())),
            _ => None,
        })
}

/// How many probes started at or after `event` got no answer.
pub fn failures_after(samples: &[(Instant, Option<String>)], event: Instant) -> usize {
    samples
        .iter()
        .filter(|(at, answer)| *at >= event && answer.is_none())
        .count()
}

/// One TCP probe of `ip` on the workload port: the name of the node that answered, or None.
pub fn probe(ip: IpAddr, timeout: Duration) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&(ip, SERVICE_PORT).into(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let answer = answer.trim().to_string();
    (!answer.is_empty()).then_some(answer)
}

/// Adds `ip` to `lo` on every node of `net` (the kernel accepts its traffic; the agent
/// announces).
pub fn add_vip_on_nodes(net: &Netlab, ip: IpAddr) {
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    for node in NODES {
        net.exec_ok(
            node,
            "ip",
            &["addr", "add", &format!("{ip}/{prefix}"), "dev", "lo"],
        );
    }
}

/// Prepares the nodes of `net` as the agent tests need them (ARP sysctls) and starts the
/// stand-in workload on each; returns the stop flag and the workload threads.
pub fn start_workloads(net: &Netlab) -> (Arc<AtomicBool>, Vec<JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for node in NODES {
        for sysctl in [
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.eth0.arp_ignore=1",
            "net.ipv4.conf.eth0.arp_announce=2",
        ] {
            net.exec_ok(node, "sysctl", &["-qw", sysctl]);
        }
        let stop = stop.clone();
        let name = node.to_string();
        threads.push(net.thread_in(node, move || serve_name(&name, &stop)));
    }
    (stop, threads)
}

/// The stand-in workload: answers every connection with the node's name.
fn serve_name(name: &str, stop: &AtomicBool) {
    serve_each(SERVICE_PORT, stop, |mut stream| {
        let _ = stream.write_all(format!("{name}\n").as_bytes());
    });
}

/// Accepts connections on `port` (all addresses) and hands each, blocking, to `answer`, until
/// `stop` is set.
pub fn serve_each(port: u16, stop: &AtomicBool, mut answer: impl FnMut(TcpStream)) {
    let listener = TcpListener::bind(("::", port)).expect("binding a stand-in server");
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                answer(stream);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// The IPAllocation name of `ip` (as vipam names them).
pub fn allocation_name(ip: IpAddr) -> String {
    vipam::core::names::allocation_name(&ip)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
