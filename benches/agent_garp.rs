//! Time from `Announcer::set()` gaining an address to its gratuitous ARP arriving at a client
//! on the same (namespace) LAN. Root only: builds a netlab LAN (tests/netlab).
//!
//! `cargo bench --bench agent_garp` (optionally `-- <gains>`, default 200). Each round loses
//! the previous address and gains a new one (alternating ARP and address mode); the clock
//! starts right before `set()` is called and stops when the client's raw socket receives the
//! gratuitous ARP for that address (one process, one monotonic clock).

#[path = "../tests/netlab/mod.rs"]
mod netlab;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vipam::agent::announcer::{Announcer, AnnouncerConfig, NetCounters, Target};
use vipam::agent::net::packet::{self, MacAddr, Payload};
use vipam::agent::net::rawsock::RawSocket;
use vipam::core::ownership::AnnounceMode;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Gains measured with duplicate address detection (each waits the probe window).
const PROBED_GAINS: usize = 20;

fn main() {
    let gains: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let lab = netlab::Netlab::new(&[("node1", 11), ("client", 100)]);
    let node_mac = MacAddr(lab.host("node1").mac);

    // The client: report (arrival time, address) of every gratuitous ARP from node1.
    let (garps_tx, garps) = mpsc::channel::<(Instant, Ipv4Addr)>();
    let (ready_tx, ready) = mpsc::channel();
    let _capture = lab.thread_in("client", move || {
        rt().block_on(async move {
            let ifindex = {
                let name = c"eth0";
                // SAFETY: a valid NUL-terminated string; the call only reads it.
                unsafe { libc::if_nametoindex(name.as_ptr()) }
            };
            let sock = RawSocket::open(ifindex).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok(r) = sock.recv(&mut buf).await else {
                    return;
                };
                let at = Instant::now();
                if let Ok(f) = packet::parse(&buf[..r.len])
                    && let Payload::Arp(a) = f.payload
                    && a.is_gratuitous()
                    && a.sender_mac == node_mac
                    && garps_tx.send((at, a.sender_ip)).is_err()
                {
                    return;
                }
            }
        })
    });
    ready.recv().unwrap();

    // The node: an announcer on its own runtime inside node1's namespace.
    let (ann_tx, ann_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let state_dir = lab.scratch.join("state");
    let node = lab.thread_in("node1", move || {
        rt().block_on(async move {
            let config = AnnouncerConfig {
                garp_interval: Duration::from_secs(10),
                resync: Duration::from_secs(10),
                state_dir,
                marker: vipam::agent::net::address::Marker::SERVICES,
            };
            let a = Announcer::start(config, NetCounters::default())
                .await
                .unwrap();
            ann_tx.send(std::sync::Arc::new(a)).unwrap();
            let _ = stop_rx.await;
        })
    });
    let announcer = ann_rx.recv().unwrap();
    let local = rt();

    let mut samples = Vec::with_capacity(gains);
    let mut by_mode: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut set_returned = Vec::with_capacity(gains);
    // One gain: withdraw everything, then gain the round's address; returns how long set()
    // took and when its gratuitous ARP arrived, both from the call.
    let gain = |round: usize, mode: AnnounceMode, probe_first: bool| -> (Duration, Duration) {
        let addr = Ipv4Addr::new(198, 51, 100, 1 + (round % 250) as u8);
        local.block_on(announcer.set(BTreeMap::new())).unwrap();
        // Drop GARPs (bursts) of earlier rounds.
        std::thread::sleep(Duration::from_millis(5));
        while garps.try_recv().is_ok() {}
        let desired = BTreeMap::from([(
            IpAddr::V4(addr),
            Target {
                interface: "eth0".into(),
                mode,
                probe_first,
            },
        )]);
        let start = Instant::now();
        local.block_on(announcer.set(desired)).unwrap();
        let returned = start.elapsed();
        loop {
            let (at, got) = garps
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_else(|_| panic!("no gratuitous ARP for {addr} within 2 s"));
            if got == addr {
                return (returned, at - start);
            }
        }
    };
    for round in 0..gains {
        let mode = if round % 2 == 0 {
            AnnounceMode::Arp
        } else {
            AnnounceMode::Address
        };
        let (returned, garp) = gain(round, mode, false);
        set_returned.push(returned);
        samples.push(garp);
        by_mode[round % 2].push(garp);
    }
    // Duplicate address detection: the same, with a probe before the first announcement (an
    // address no node announced before). Nobody answers, so this is the probe's delay.
    let mut probed: Vec<Duration> = (0..PROBED_GAINS)
        .map(|round| gain(round, AnnounceMode::Arp, true).1)
        .collect();
    local.block_on(announcer.shutdown()).unwrap();
    let _ = stop_tx.send(());
    node.join().unwrap();
    probed.sort();
    println!(
        "agent_garp: {PROBED_GAINS} gains with a probe first (arp mode, nobody answers), set() -> gratuitous ARP: \
         min {:?}, median {:?}, max {:?} (probe window {:?})",
        probed[0],
        percentile(&probed, 0.5),
        probed[probed.len() - 1],
        vipam::agent::announcer::PROBE_WAIT,
    );

    samples.sort();
    set_returned.sort();
    for m in &mut by_mode {
        m.sort();
    }
    println!(
        "agent_garp: {gains} gains (ARP and address mode alternating), set() -> gratuitous ARP at the client: \
         median {:?}, p99 {:?}, max {:?}, min {:?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1],
        samples[0],
    );
    println!(
        "agent_garp: median by mode: arp {:?}, address {:?}; set() itself returned after median {:?}, max {:?}",
        percentile(&by_mode[0], 0.5),
        percentile(&by_mode[1], 0.5),
        percentile(&set_returned, 0.5),
        set_returned[set_returned.len() - 1],
    );
}
