//! The agent's data plane in real network namespaces (root only; see tests/netlab).
//!
//! Each test builds its own LAN (switch, nodes, client), runs an `Announcer` in-process on a
//! thread that entered a node's namespace, and looks at the result from the client with
//! `arping`, `ndisc6`, TCP connections, a raw-socket capture, and `ip -d addr` on the node.

mod netlab;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netlab::Netlab;
use vipam::agent::announcer::{Announcer, AnnouncerConfig, NetCounters, Target};
use vipam::agent::net::address::{AddressManager, KernelAddr, Marker, VIPAM_ADDR_PROTO};
use vipam::agent::net::packet::{self, Frame, MacAddr, NdpKind, Payload};
use vipam::agent::net::rawsock::RawSocket;
use vipam::core::ownership::AnnounceMode;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An Announcer running on its own runtime inside a node's namespace.
struct Agent {
    announcer: Option<Arc<Announcer>>,
    counters: NetCounters,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    state_dir: PathBuf,
    rt: tokio::runtime::Runtime,
}

fn state_dir(lab: &Netlab, host: &str) -> PathBuf {
    lab.scratch.join(format!("state-{host}"))
}

impl Agent {
    fn start(lab: &Netlab, host: &str, resync: Duration) -> Agent {
        Self::start_with(lab, host, resync, state_dir(lab, host))
    }

    fn start_with(lab: &Netlab, host: &str, resync: Duration, state_dir: PathBuf) -> Agent {
        let counters = NetCounters::default();
        let config = AnnouncerConfig {
            garp_interval: Duration::from_secs(10),
            resync,
            state_dir: state_dir.clone(),
            marker: Marker::SERVICES,
        };
        let (tx, rx) = mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let c = counters.clone();
        let thread = lab.thread_in(host, move || {
            rt().block_on(async move {
                let started = Announcer::start(config, c).await;
                let ok = started.is_ok();
                tx.send(started.map(Arc::new)).unwrap();
                if ok {
                    let _ = stop_rx.await;
                }
            })
        });
        let announcer = rx.recv().unwrap().expect("Announcer::start");
        Agent {
            announcer: Some(announcer),
            counters,
            stop: Some(stop),
            thread: Some(thread),
            state_dir,
            rt: rt(),
        }
    }

    fn a(&self) -> &Announcer {
        self.announcer.as_ref().unwrap()
    }

    fn set(&self, desired: &[(&str, &str, AnnounceMode)]) {
        self.set_with(desired, false);
    }

    /// Sets the desired state; with `probe_first`, each address is probed for before its
    /// first announcement.
    fn set_with(&self, desired: &[(&str, &str, AnnounceMode)], probe_first: bool) {
        let map: BTreeMap<IpAddr, Target> = desired
            .iter()
            .map(|(addr, interface, mode)| {
                (
                    ip(addr),
                    Target {
                        interface: interface.to_string(),
                        mode: *mode,
                        probe_first,
                    },
                )
            })
            .collect();
        self.rt.block_on(self.a().set(map)).expect("set");
    }

    fn announced(&self) -> Vec<IpAddr> {
        self.a().announced().into_iter().map(|a| a.ip).collect()
    }

    /// Kills the runtime without shutdown: what a crash leaves behind stays.
    fn crash(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.announcer = None;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// A raw-socket capture of ARP/NDP in a host's namespace.
struct Capture {
    frames: mpsc::Receiver<(Instant, Frame)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    fn start(lab: &Netlab, host: &str) -> Capture {
        let (tx, frames) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = lab.thread_in(host, move || {
            rt().block_on(async move {
                let ifindex = ifindex("eth0");
                let sock = RawSocket::open(ifindex).expect("capture socket");
                // See solicitations for the addresses the tests use.
                sock.join_multicast(MacAddr([0x33, 0x33, 0, 0, 0, 1]))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = vec![0u8; 2048];
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        r = sock.recv(&mut buf) => {
                            let r = r.expect("capture recv");
                            if let Ok(f) = packet::parse(&buf[..r.len])
                                && tx.send((Instant::now(), f)).is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            })
        });
        ready.recv().unwrap();
        Capture {
            frames,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The first frame matching `pred` within `timeout`.
    fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> Option<(Instant, Frame)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.frames.recv_timeout(left) {
                Ok((at, f)) if pred(&f) => return Some((at, f)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Every frame matching `pred` during `window`.
    fn collect(&self, window: Duration, pred: impl Fn(&Frame) -> bool) -> Vec<(Instant, Frame)> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.frames.recv_timeout(left) {
                Ok((at, f)) if pred(&f) => out.push((at, f)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn is_garp(f: &Frame, addr: IpAddr, mac: MacAddr) -> bool {
    match (f.payload, addr) {
        (Payload::Arp(a), IpAddr::V4(v4)) => {
            a.is_gratuitous()
                && a.sender_ip == v4
                && a.sender_mac == mac
                && f.eth_dst == MacAddr::BROADCAST
        }
        (Payload::Ndp(n), IpAddr::V6(v6)) => {
            n.target == v6
                && n.lladdr == Some(mac)
                && n.dst_ip == packet::ALL_NODES
                && matches!(
                    n.kind,
                    NdpKind::Advertisement {
                        override_: true,
                        solicited: false,
                        ..
                    }
                )
        }
        _ => false,
    }
}

/// The MAC answering ARP for `addr` from `from`, if any (one try, 1 s).
fn arping(lab: &Netlab, from: &str, addr: &str) -> Option<String> {
    let out = lab.exec(from, "arping", &["-c", "1", "-w", "1", "-i", "eth0", addr]);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return None;
    }
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "from")
        .nth(1)
        .map(str::to_owned);
    assert!(mac.is_some(), "unexpected arping output: {text}");
    mac
}

/// The MAC answering a neighbour solicitation for `addr` from `from`, if any.
fn ndisc6(lab: &Netlab, from: &str, addr: &str) -> Option<String> {
    let out = lab.exec(
        from,
        "ndisc6",
        &["-q", "-1", "-r", "2", "-w", "500", addr, "eth0"],
    );
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_lowercase())
}

/// The kernel's addresses in `host`, read through netlink (iproute2 before 6.2 cannot show
/// IFA_PROTO).
fn kernel_addrs(lab: &Netlab, host: &str) -> Vec<KernelAddr> {
    let dir = lab.scratch.join(format!("probe-{host}"));
    lab.run_in(host, move || {
        let mut m = AddressManager::open(&dir, Marker::SERVICES).unwrap();
        let list = m.list().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        list
    })
}

fn proto_of(lab: &Netlab, host: &str, addr: &str) -> Option<u8> {
    kernel_addrs(lab, host)
        .into_iter()
        .find(|a| a.ip == ip(addr))
        .map(|a| a.proto)
}

/// Adds `addr` marked with our protocol, as a previous run would have (but absent from the
/// current run's record).
fn add_marked(lab: &Netlab, host: &str, addr: &str, dev: &str) {
    add_marked_as(lab, host, addr, dev, Marker::SERVICES)
}

/// Adds `addr` with `marker`, as another announcer would have (its own record dir).
fn add_marked_as(lab: &Netlab, host: &str, addr: &str, dev: &str, marker: Marker) {
    let dir = lab
        .scratch
        .join(format!("previous-run-{host}-{:x}", marker.proto));
    let (addr, dev) = (ip(addr), dev.to_owned());
    lab.run_in(host, move || {
        let index = ifindex(&dev);
        let mut m = AddressManager::open(&dir, marker).unwrap();
        m.add(addr, index, &dev).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    })
}

/// A TCP listener on [::]:7000 (dual stack) in a host's namespace, accepting until dropped.
struct Listener {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const PORT: u16 = 7000;

impl Listener {
    fn start(lab: &Netlab, host: &str) -> Listener {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready) = mpsc::channel();
        let thread = lab.thread_in(host, move || {
            let l = std::net::TcpListener::bind(("::", PORT)).expect("listen");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                match l.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready.recv().unwrap();
        Listener {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a TCP connection from `from` to `addr`:7000 succeeds within 1 s (the kernel
/// resolves the address with its own ARP / neighbour discovery first).
fn connects(lab: &Netlab, from: &str, addr: &str) -> bool {
    let target = std::net::SocketAddr::new(ip(addr), PORT);
    lab.run_in(from, move || {
        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok()
    })
}

fn addrs(lab: &Netlab, host: &str, dev: &str) -> String {
    lab.exec_ok(host, "ip", &["-d", "addr", "show", "dev", dev])
}

/// The index of interface `name` in the calling thread's network namespace.
fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("an interface name");
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(
        index,
        0,
        "no interface {name}: {}",
        std::io::Error::last_os_error()
    );
    index
}

/// Sends frames from host `host`'s eth0 (impersonating another node).
fn send_from(lab: &Netlab, host: &str, frames: Vec<Vec<u8>>) {
    lab.run_in(host, move || {
        rt().block_on(async move {
            let ifindex = ifindex("eth0");
            let sock = RawSocket::open(ifindex).expect("socket");
            for f in frames {
                sock.send(&f).expect("send");
            }
        })
    })
}

fn eventually(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const ARP: AnnounceMode = AnnounceMode::Arp;
const ADDR: AnnounceMode = AnnounceMode::Address;

#[test]
fn arp_mode_answers_arp_and_ndp_for_owned_addresses_only() {
    let lab = Netlab::new(&[("node1", 11), ("client", 100)]);
    let node_mac = lab.host("node1").mac_string();
    let agent = Agent::start(&lab, "node1", Duration::from_secs(10));
    agent.set(&[("192.0.2.50", "eth0", ARP), ("2001:db8:1::50", "eth0", ARP)]);

    assert_eq!(
        arping(&lab, "client", "192.0.2.50").as_deref(),
        Some(node_mac.as_str())
    );
    assert_eq!(
        arping(&lab, "client", "192.0.2.51"),
        None,
        "unowned IPv4 answered"
    );
    assert_eq!(
        ndisc6(&lab, "client", "2001:db8:1::50").as_deref(),
        Some(node_mac.as_str())
    );
    assert_eq!(
        ndisc6(&lab, "client", "2001:db8:1::51"),
        None,
        "unowned IPv6 answered"
    );
    assert!(agent.counters.arp_replies.get() >= 1);
    assert!(agent.counters.ndp_replies.get() >= 1);

    // ARP mode never adds the address to the interface.
    let shown = addrs(&lab, "node1", "eth0");
    assert!(
        !shown.contains("192.0.2.50") && !shown.contains("2001:db8:1::50"),
        "{shown}"
    );
    let mut announced = agent.announced();
    announced.sort();
    assert_eq!(announced, vec![ip("192.0.2.50"), ip("2001:db8:1::50")]);
    assert!(
        agent
            .a()
            .announced()
            .iter()
            .all(|a| a.mode == ARP && a.interface == "eth0")
    );
}

#[test]
fn gain_announces_at_once_then_repeats_and_loss_stops_answers() {
    let lab = Netlab::new(&[("node1", 11), ("client", 100)]);
    let mac = MacAddr(lab.host("node1").mac);
    let agent = Agent::start(&lab, "node1", Duration::from_secs(10));
    let capture = Capture::start(&lab, "client");

    let t0 = Instant::now();
    agent.set(&[("192.0.2.52", "eth0", ARP), ("2001:db8:1::52", "eth0", ARP)]);
    let v4 = capture
        .wait_for(Duration::from_secs(1), |f| {
            is_garp(f, ip("192.0.2.52"), mac)
        })
        .expect("gratuitous ARP on gain");
    assert!(
        v4.0 - t0 < Duration::from_millis(100),
        "first GARP after {:?}",
        v4.0 - t0
    );
    // The IPv6 counterpart was sent in the same pass; then the burst at +250 ms, +750 ms, +2 s.
    let rest = capture.collect(Duration::from_millis(2400), |f| {
        is_garp(f, ip("192.0.2.52"), mac) || is_garp(f, ip("2001:db8:1::52"), mac)
    });
    let v4_count = 1 + rest
        .iter()
        .filter(|(_, f)| matches!(f.payload, Payload::Arp(_)))
        .count();
    let v6_count = rest
        .iter()
        .filter(|(_, f)| matches!(f.payload, Payload::Ndp(_)))
        .count();
    assert_eq!(v4_count, 4, "GARPs in the first 2.4 s");
    assert_eq!(v6_count, 4, "unsolicited NAs in the first 2.4 s");
    assert!(agent.counters.gratuitous.get() >= 8);

    assert!(arping(&lab, "client", "192.0.2.52").is_some());
    agent.set(&[]);
    assert_eq!(
        arping(&lab, "client", "192.0.2.52"),
        None,
        "still answering after loss"
    );
    assert_eq!(
        ndisc6(&lab, "client", "2001:db8:1::52"),
        None,
        "still answering after loss"
    );
    assert!(agent.announced().is_empty());
}

#[test]
fn address_mode_adds_marked_addresses_the_client_can_reach() {
    let lab = Netlab::new(&[("node1", 11), ("client", 100)]);
    let agent = Agent::start(&lab, "node1", Duration::from_secs(10));
    agent.set(&[
        ("192.0.2.53", "eth0", ADDR),
        ("2001:db8:1::53", "eth0", ADDR),
    ]);

    let shown = addrs(&lab, "node1", "eth0");
    let v4_line = shown
        .lines()
        .find(|l| l.contains("192.0.2.53/32"))
        .unwrap_or_else(|| panic!("no 192.0.2.53/32:\n{shown}"));
    assert!(v4_line.contains("eth0:vipam"), "label: {v4_line}");
    let v6_line = shown
        .lines()
        .find(|l| l.contains("2001:db8:1::53/128"))
        .unwrap_or_else(|| panic!("no 2001:db8:1::53/128:\n{shown}"));
    assert!(v6_line.contains("nodad"), "{v6_line}");
    assert_eq!(
        proto_of(&lab, "node1", "192.0.2.53"),
        Some(VIPAM_ADDR_PROTO)
    );
    assert_eq!(
        proto_of(&lab, "node1", "2001:db8:1::53"),
        Some(VIPAM_ADDR_PROTO)
    );
    assert_eq!(
        proto_of(&lab, "node1", "192.0.2.11"),
        Some(0),
        "the node's own address"
    );
    let record = std::fs::read_to_string(agent.state_dir.join("addresses.json")).unwrap();
    assert!(
        record.contains("192.0.2.53") && record.contains("2001:db8:1::53"),
        "{record}"
    );

    let _listener = Listener::start(&lab, "node1");
    assert!(connects(&lab, "client", "192.0.2.53"), "TCP to 192.0.2.53");
    assert!(
        connects(&lab, "client", "2001:db8:1::53"),
        "TCP to 2001:db8:1::53"
    );

    agent.set(&[]);
    let shown = addrs(&lab, "node1", "eth0");
    assert!(
        !shown.contains("192.0.2.53") && !shown.contains("2001:db8:1::53"),
        "{shown}"
    );
    let record = std::fs::read_to_string(agent.state_dir.join("addresses.json")).unwrap();
    assert!(!record.contains("192.0.2.53"), "{record}");
    assert!(
        !connects(&lab, "client", "192.0.2.53"),
        "reachable after loss"
    );
}

#[test]
fn restart_after_crash_removes_only_our_leftovers() {
    let lab = Netlab::new(&[("node1", 11), ("client", 100)]);
    // A second interface (a veth pair: test kernels may lack the dummy driver).
    lab.exec_ok(
        "node1",
        "ip",
        &[
            "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy1",
        ],
    );
    lab.exec_ok("node1", "ip", &["link", "set", "dummy0", "up"]);
    let agent = Agent::start(&lab, "node1", Duration::from_secs(10));
    agent.set(&[
        ("192.0.2.54", "eth0", ADDR),
        ("2001:db8:1::54", "eth0", ADDR),
    ]);
    let dir = agent.state_dir.clone();
    agent.crash();

    // Leftovers stay after the crash; the data plane outlives the agent.
    let _listener = Listener::start(&lab, "node1");
    assert!(connects(&lab, "client", "192.0.2.54"));
    // Someone else's addresses: same interface, another interface, and our IP on another one.
    for (addr, dev) in [
        ("192.0.2.58/32", "eth0"),
        ("2001:db8:1::58/128", "eth0"),
        ("192.0.2.54/32", "dummy0"),
        ("203.0.113.9/32", "dummy0"),
    ] {
        lab.exec_ok("node1", "ip", &["addr", "add", addr, "dev", dev]);
    }
    // An address of ours known only from the record, as on kernels older than 6.1 that drop
    // IFA_PROTO: added without marker, then listed in the record.
    lab.exec_ok(
        "node1",
        "ip",
        &["addr", "add", "192.0.2.57/32", "dev", "eth0"],
    );
    let eth0_index: u32 = lab
        .exec_ok("node1", "cat", &["/sys/class/net/eth0/ifindex"])
        .trim()
        .parse()
        .unwrap();
    let record_path = dir.join("addresses.json");
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    record["addresses"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"ip": "192.0.2.57", "ifindex": eth0_index, "ifname": "eth0"}));
    std::fs::write(&record_path, record.to_string()).unwrap();
    // The control-plane VIP of a `vipam agent --control-plane` on the same node: its own
    // marker, so the Service announcer's clean-up leaves it alone.
    add_marked_as(&lab, "node1", "192.0.2.59", "eth0", Marker::CONTROL_PLANE);
    assert_eq!(proto_of(&lab, "node1", "192.0.2.59"), Some(0x57));

    let agent = Agent::start_with(&lab, "node1", Duration::from_secs(10), dir.clone());
    // Nothing is removed before the first desired state arrives.
    std::thread::sleep(Duration::from_millis(100));
    assert!(addrs(&lab, "node1", "eth0").contains("192.0.2.54/32"));
    agent.set(&[]);

    let eth0 = addrs(&lab, "node1", "eth0");
    for gone in ["192.0.2.54/32", "2001:db8:1::54/128", "192.0.2.57/32"] {
        assert!(!eth0.contains(gone), "{gone} left over:\n{eth0}");
    }
    for kept in [
        "192.0.2.11/24",
        "192.0.2.59/32",
        "192.0.2.58/32",
        "2001:db8:1::58/128",
        "2001:db8:1::11/64",
    ] {
        assert!(eth0.contains(kept), "{kept} was touched:\n{eth0}");
    }
    let dummy = addrs(&lab, "node1", "dummy0");
    for kept in ["192.0.2.54/32", "203.0.113.9/32"] {
        assert!(
            dummy.contains(kept),
            "{kept} on dummy0 was touched:\n{dummy}"
        );
    }
    let record = std::fs::read_to_string(&record_path).unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["addresses"].as_array().unwrap().len(), 0, "{record}");

    // A clean shutdown removes what it added and nothing else.
    agent.set(&[("192.0.2.54", "eth0", ADDR)]);
    assert!(addrs(&lab, "node1", "eth0").contains("192.0.2.54/32"));
    agent.rt.block_on(agent.a().shutdown()).unwrap();
    assert!(!addrs(&lab, "node1", "eth0").contains("192.0.2.54/32"));
    assert!(addrs(&lab, "node1", "dummy0").contains("192.0.2.54/32"));
    assert!(addrs(&lab, "node1", "eth0").contains("192.0.2.58/32"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn enforcement_restores_ours_removes_stale_and_uses_late_interfaces() {
    let lab = Netlab::new(&[("node1", 11), ("client", 100)]);
    let resync = Duration::from_millis(500);
    let agent = Agent::start(&lab, "node1", resync);
    agent.set(&[
        ("192.0.2.55", "eth0", ADDR),
        ("2001:db8:1::55", "eth0", ADDR),
    ]);

    lab.exec_ok(
        "node1",
        "ip",
        &["addr", "del", "192.0.2.55/32", "dev", "eth0"],
    );
    lab.exec_ok(
        "node1",
        "ip",
        &["addr", "del", "2001:db8:1::55/128", "dev", "eth0"],
    );
    eventually(resync * 2, "our removed addresses are back", || {
        let s = addrs(&lab, "node1", "eth0");
        s.contains("192.0.2.55/32") && s.contains("2001:db8:1::55/128")
    });
    assert_eq!(
        proto_of(&lab, "node1", "192.0.2.55"),
        Some(VIPAM_ADDR_PROTO)
    );
    assert_eq!(
        proto_of(&lab, "node1", "2001:db8:1::55"),
        Some(VIPAM_ADDR_PROTO)
    );

    // A marked address nobody wants (as a previous run would leave) goes.
    add_marked(&lab, "node1", "192.0.2.56", "eth0");
    // An unmarked one stays.
    lab.exec_ok(
        "node1",
        "ip",
        &["addr", "add", "192.0.2.59/32", "dev", "eth0"],
    );
    eventually(resync * 2, "stale marked address removed", || {
        !addrs(&lab, "node1", "eth0").contains("192.0.2.56/32")
    });
    std::thread::sleep(resync);
    let s = addrs(&lab, "node1", "eth0");
    assert!(
        s.contains("192.0.2.59/32") && s.contains("192.0.2.55/32"),
        "{s}"
    );
    assert!(agent.counters.repairs.get() >= 3);

    // An interface that does not exist yet is used once it appears.
    agent.set(&[
        ("192.0.2.55", "eth0", ADDR),
        ("2001:db8:1::55", "eth0", ADDR),
        ("198.51.100.7", "late0", ADDR),
    ]);
    assert!(!agent.announced().contains(&ip("198.51.100.7")));
    lab.exec_ok(
        "node1",
        "ip",
        &[
            "link", "add", "late0", "type", "veth", "peer", "name", "late1",
        ],
    );
    lab.exec_ok("node1", "ip", &["link", "set", "late0", "up"]);
    eventually(resync * 2, "address on the late interface", || {
        agent.announced().contains(&ip("198.51.100.7"))
    });
    assert!(addrs(&lab, "node1", "late0").contains("198.51.100.7/32"));
}

#[test]
fn yielding_drops_an_address_claimed_by_another_node() {
    let lab = Netlab::new(&[("node1", 11), ("node2", 12), ("client", 100)]);
    let other = MacAddr(lab.host("node2").mac);
    let agent = Agent::start(&lab, "node1", Duration::from_secs(10));
    // node2 is another agent of the cluster (its Lease lists its MAC): its announcements are
    // takeovers, not conflicts.
    agent.a().set_known_macs([other].into_iter().collect());
    agent.set(&[
        ("192.0.2.61", "eth0", ARP),
        ("192.0.2.62", "eth0", ADDR),
        ("2001:db8:1::61", "eth0", ARP),
    ]);
    let claim_all = || {
        send_from(
            &lab,
            "node2",
            vec![
                packet::gratuitous_arp(other, "192.0.2.61".parse().unwrap()),
                packet::gratuitous_arp(other, "192.0.2.62".parse().unwrap()),
                packet::unsolicited_advert(other, "2001:db8:1::61".parse().unwrap()),
            ],
        )
    };

    // Not yielding: a claim is noted, nothing is dropped.
    claim_all();
    eventually(Duration::from_secs(1), "claims seen", || {
        agent.counters.claims_seen.get() >= 3
    });
    assert_eq!(agent.announced().len(), 3);

    agent.a().set_yield_to_others(true);
    claim_all();
    eventually(Duration::from_secs(1), "addresses yielded", || {
        agent.announced().is_empty()
    });
    assert_eq!(agent.counters.yielded.get(), 3);
    assert!(!addrs(&lab, "node1", "eth0").contains("192.0.2.62/32"));
    assert_eq!(arping(&lab, "client", "192.0.2.61"), None);
    // A new desired state does not take yielded addresses back while yielding.
    agent.set(&[
        ("192.0.2.61", "eth0", ARP),
        ("192.0.2.62", "eth0", ADDR),
        ("2001:db8:1::61", "eth0", ARP),
    ]);
    assert!(agent.announced().is_empty());

    // The lease is back: the desired addresses are taken again.
    agent.a().set_yield_to_others(false);
    eventually(Duration::from_secs(1), "addresses re-taken", || {
        agent.announced().len() == 3
    });
    assert!(addrs(&lab, "node1", "eth0").contains("192.0.2.62/32"));
}

#[test]
fn wait_claimed_by_others_reports_the_new_owners_announcements() {
    let lab = Netlab::new(&[("node1", 11), ("node2", 12)]);
    let other = MacAddr(lab.host("node2").mac);
    let agent = Agent::start(&lab, "node1", Duration::from_secs(10));
    // node2 is another agent of the cluster (its Lease lists its MAC): its announcements are
    // takeovers, not conflicts.
    agent.a().set_known_macs([other].into_iter().collect());
    agent.set(&[
        ("192.0.2.63", "eth0", ARP),
        ("2001:db8:1::63", "eth0", ARP),
        ("192.0.2.64", "eth0", ARP),
    ]);

    // Only two of three are claimed: returns those at the timeout.
    let announcer = agent.announcer.clone().unwrap();
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let got = rt().block_on(announcer.wait_claimed_by_others(Duration::from_millis(800)));
        (got, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    send_from(
        &lab,
        "node2",
        vec![
            packet::gratuitous_arp(other, "192.0.2.63".parse().unwrap()),
            packet::unsolicited_advert(other, "2001:db8:1::63".parse().unwrap()),
        ],
    );
    let (mut got, elapsed) = waiter.join().unwrap();
    got.sort();
    assert_eq!(got, vec![ip("192.0.2.63"), ip("2001:db8:1::63")]);
    assert!(
        elapsed >= Duration::from_millis(800),
        "returned early: {elapsed:?}"
    );

    // All claimed: returns as soon as the last claim arrives.
    let announcer = agent.announcer.clone().unwrap();
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let got = rt().block_on(announcer.wait_claimed_by_others(Duration::from_secs(5)));
        (got, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(100));
    send_from(
        &lab,
        "node2",
        ["192.0.2.63", "192.0.2.64"]
            .iter()
            .map(|a| packet::gratuitous_arp(other, a.parse().unwrap()))
            .chain([packet::unsolicited_advert(
                other,
                "2001:db8:1::63".parse().unwrap(),
            )])
            .collect(),
    );
    let (got, elapsed) = waiter.join().unwrap();
    assert_eq!(got.len(), 3);
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    // Still announcing: claims alone do not drop anything unless yielding.
    assert_eq!(agent.announced().len(), 3);
}

/// A system call that blocks in the announcer's engine (here: writing the address record
/// into a FIFO nobody reads, as a netlink request waits for a contended RTNL lock) delays
/// neither the ARP answers for addresses already announced nor the caller's runtime. Once the
/// call returns, the change it was part of completes.
#[test]
fn a_blocked_engine_neither_stalls_answers_nor_the_callers_runtime() {
    let lab = Netlab::new(&[("node1", 11), ("client", 100)]);
    let node_mac = lab.host("node1").mac_string();
    let agent = Agent::start(&lab, "node1", Duration::from_secs(10));
    agent.set(&[("192.0.2.60", "eth0", ARP)]);
    assert_eq!(
        arping(&lab, "client", "192.0.2.60").as_deref(),
        Some(node_mac.as_str())
    );

    // The next record write opens this FIFO for writing and blocks until a reader comes.
    let fifo = agent.state_dir.join("addresses.json.tmp");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    // Should an assertion fail, a reader still comes, so the engine (and the test) can end.
    let _unblock = Unblock(fifo.clone());

    let announcer = agent.announcer.clone().unwrap();
    let (done_tx, done) = mpsc::channel();
    let setter = std::thread::spawn(move || {
        let desired = BTreeMap::from([
            (
                ip("192.0.2.60"),
                Target {
                    interface: "eth0".into(),
                    mode: ARP,
                    probe_first: false,
                },
            ),
            (
                ip("192.0.2.61"),
                Target {
                    interface: "eth0".into(),
                    mode: AnnounceMode::Address,
                    probe_first: false,
                },
            ),
        ]);
        let result = rt().block_on(announcer.set(desired));
        done_tx.send(result.map_err(|e| e.to_string())).unwrap();
    });
    // The engine is stuck in open(2) of the FIFO.
    assert!(
        done.recv_timeout(Duration::from_millis(500)).is_err(),
        "set() returned although the record write should block"
    );
    for attempt in 0..3 {
        assert_eq!(
            arping(&lab, "client", "192.0.2.60").as_deref(),
            Some(node_mac.as_str()),
            "no ARP answer while the engine is blocked (attempt {attempt})"
        );
    }
    // The caller's runtime still runs: a query of the handle answers at once.
    assert_eq!(agent.announced(), vec![ip("192.0.2.60")]);
    assert!(done.try_recv().is_err(), "the engine was not blocked");

    // Unblock: read the FIFO; the write completes and the address is added.
    let written = std::fs::read(&fifo).expect("reading the FIFO");
    let record: serde_json::Value = serde_json::from_slice(&written).expect("the record");
    assert!(record.to_string().contains("192.0.2.61"), "{record}");
    let result = done
        .recv_timeout(Duration::from_secs(5))
        .expect("set() did not finish once unblocked");
    assert_eq!(result, Ok(()));
    setter.join().unwrap();
    eventually(Duration::from_secs(5), "192.0.2.61 on eth0", || {
        addrs(&lab, "node1", "eth0").contains("192.0.2.61/32")
    });
}

/// Opens a FIFO for reading when dropped, which lets a writer blocked in open(2) go on.
struct Unblock(PathBuf);

impl Drop for Unblock {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0);
    }
}

/// `frame` with an 802.1Q tag for VLAN `vid` inserted after the two MAC addresses, as a trunk
/// port carries it.
fn tagged(frame: Vec<u8>, vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00]);
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// On a trunk, the packet socket of the parent interface also sees the frames of its VLANs
/// (the kernel strips the tag before the socket sees them). Those belong to other LANs: an ARP
/// request or neighbour solicitation tagged for VLAN 10 is not answered (the answer would go
/// out untagged, on the wrong LAN), and a tagged announcement of one of our addresses is not a
/// claim on it. The same frames untagged are answered and counted.
#[test]
fn frames_of_other_vlans_are_neither_answered_nor_claims() {
    let lab = Netlab::new(&[("node1", 11), ("node2", 12), ("client", 100)]);
    let client = lab.host("client").clone();
    let client_mac = MacAddr(client.mac);
    let other = MacAddr(lab.host("node2").mac);
    let agent = Agent::start(&lab, "node1", Duration::from_secs(10));
    agent.set(&[("192.0.2.63", "eth0", ARP), ("2001:db8:1::63", "eth0", ARP)]);
    let (v4, v6) = (
        "192.0.2.63".parse().unwrap(),
        "2001:db8:1::63".parse().unwrap(),
    );
    let questions = vec![
        packet::arp_request(client_mac, client.ipv4, v4),
        packet::neighbor_solicit(client_mac, client.ipv6, v6),
    ];
    let claims = vec![
        packet::gratuitous_arp(other, v4),
        packet::unsolicited_advert(other, v6),
    ];
    let counts = |a: &Agent| {
        (
            a.counters.arp_replies.get(),
            a.counters.ndp_replies.get(),
            a.counters.claims_seen.get(),
        )
    };
    let before = counts(&agent);

    send_from(
        &lab,
        "client",
        questions.iter().map(|f| tagged(f.clone(), 10)).collect(),
    );
    send_from(
        &lab,
        "node2",
        claims.iter().map(|f| tagged(f.clone(), 10)).collect(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        counts(&agent),
        before,
        "frames of VLAN 10 were answered or counted as claims"
    );

    send_from(&lab, "client", questions);
    send_from(&lab, "node2", claims);
    eventually(
        Duration::from_secs(2),
        "untagged questions answered and claims seen",
        || {
            let (arp, ndp, claims) = counts(&agent);
            arp > before.0 && ndp > before.1 && claims >= before.2 + 2
        },
    );
}

impl Agent {
    fn conflicts(&self) -> Vec<(IpAddr, String)> {
        self.a()
            .conflicts()
            .into_iter()
            .map(|c| (c.ip, c.mac.to_string()))
            .collect()
    }
}

/// Duplicate address detection before the first announcement: an address another host on the
/// LAN already holds (IPv4 and IPv6) is probed, found in use and not announced, while a free
/// one is announced after the probe; once the other host lets go, the next recheck announces
/// it.
#[test]
fn an_address_another_host_holds_is_not_announced_until_it_lets_go() {
    let lab = Netlab::new(&[("node1", 11), ("other", 12), ("client", 100)]);
    let node_mac = lab.host("node1").mac_string();
    let other_mac = lab.host("other").mac_string();
    lab.exec_ok(
        "other",
        "ip",
        &["addr", "add", "192.0.2.81/32", "dev", "eth0"],
    );
    lab.exec_ok(
        "other",
        "ip",
        &[
            "-6",
            "addr",
            "add",
            "2001:db8:1::81/128",
            "dev",
            "eth0",
            "nodad",
        ],
    );
    let agent = Agent::start(&lab, "node1", Duration::from_secs(10));
    let started = Instant::now();
    agent.set_with(
        &[
            ("192.0.2.81", "eth0", ARP),
            ("2001:db8:1::81", "eth0", ARP),
            ("192.0.2.82", "eth0", ARP),
        ],
        true,
    );
    // Nothing is announced during the probe.
    assert!(agent.announced().is_empty(), "{:?}", agent.announced());
    eventually(Duration::from_secs(3), "the free address announced", || {
        agent.announced() == vec![ip("192.0.2.82")]
    });
    let probe_delay = started.elapsed();
    assert!(
        probe_delay >= vipam::agent::announcer::PROBE_WAIT,
        "announced before the probe ended ({probe_delay:?})"
    );
    eventually(Duration::from_secs(2), "both conflicts found", || {
        agent.conflicts().len() == 2
    });
    let mut conflicts = agent.conflicts();
    conflicts.sort();
    assert_eq!(
        conflicts,
        vec![
            (ip("192.0.2.81"), other_mac.clone()),
            (ip("2001:db8:1::81"), other_mac.clone())
        ]
    );
    assert_eq!(agent.counters.conflicts.get(), 2);
    // Only the other host answers for it; this node keeps quiet.
    assert_eq!(
        arping(&lab, "client", "192.0.2.81").as_deref(),
        Some(other_mac.as_str())
    );
    assert_eq!(
        arping(&lab, "client", "192.0.2.82").as_deref(),
        Some(node_mac.as_str())
    );

    // The other host lets go: the next recheck finds nobody and announces.
    lab.exec_ok(
        "other",
        "ip",
        &["addr", "del", "192.0.2.81/32", "dev", "eth0"],
    );
    lab.exec_ok(
        "other",
        "ip",
        &["-6", "addr", "del", "2001:db8:1::81/128", "dev", "eth0"],
    );
    eventually(
        vipam::agent::announcer::CONFLICT_RECHECK + Duration::from_secs(3),
        "the addresses announced after the conflict ended",
        || agent.announced().len() == 3,
    );
    assert!(agent.conflicts().is_empty());
    assert_eq!(
        arping(&lab, "client", "192.0.2.81").as_deref(),
        Some(node_mac.as_str())
    );
}

/// While announcing: a gratuitous ARP for one of our addresses from a MAC that is no agent's
/// is a conflict (the address is withdrawn and reported); the same from a known agent's MAC is
/// a takeover in progress, not a conflict.
#[test]
fn another_host_announcing_our_address_is_a_conflict_but_an_agent_is_not() {
    let lab = Netlab::new(&[("node1", 11), ("node2", 12), ("other", 13), ("client", 100)]);
    let agent_mac = MacAddr(lab.host("node2").mac);
    let other_mac = MacAddr(lab.host("other").mac);
    let agent = Agent::start(&lab, "node1", Duration::from_secs(10));
    agent.set(&[("192.0.2.83", "eth0", ARP), ("192.0.2.84", "eth0", ADDR)]);
    agent.a().set_known_macs([agent_mac].into_iter().collect());
    let v4 = |s: &str| s.parse().unwrap();

    send_from(
        &lab,
        "node2",
        vec![packet::gratuitous_arp(agent_mac, v4("192.0.2.83"))],
    );
    eventually(Duration::from_secs(1), "the claim seen", || {
        agent.counters.claims_seen.get() >= 1
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        agent.announced().len(),
        2,
        "an agent's claim was taken for a conflict"
    );
    assert!(agent.conflicts().is_empty());

    send_from(
        &lab,
        "other",
        vec![
            packet::gratuitous_arp(other_mac, v4("192.0.2.83")),
            packet::gratuitous_arp(other_mac, v4("192.0.2.84")),
        ],
    );
    eventually(Duration::from_secs(2), "both addresses withdrawn", || {
        agent.announced().is_empty()
    });
    let mut conflicts = agent.conflicts();
    conflicts.sort();
    assert_eq!(
        conflicts,
        vec![
            (ip("192.0.2.83"), other_mac.to_string()),
            (ip("192.0.2.84"), other_mac.to_string())
        ]
    );
    // Address mode: the address left the interface.
    assert!(!addrs(&lab, "node1", "eth0").contains("192.0.2.84/32"));
    // Nothing else claims them: the recheck announces them again.
    eventually(
        vipam::agent::announcer::CONFLICT_RECHECK + Duration::from_secs(3),
        "the addresses announced again",
        || agent.announced().len() == 2,
    );
    assert!(agent.conflicts().is_empty());
}
