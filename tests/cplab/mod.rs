//! Three control-plane "nodes" running `vipam agent --control-plane` on a LAN of network
//! namespaces (tests/agentlab: the fake API in the `api` namespace, a client), plus a stand-in
//! API server on :6443 in every node: it answers `/readyz` (200, or 500 once switched off with
//! [`CpLab::set_healthy`]) and every other request with the node's name, so the client can tell
//! which node holds the VIP.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::agentlab::{AgentFlags, AgentLab, NODES, Prober, serve_each};

/// The stand-in API servers' port.
pub const API_PORT: u16 = 6443;
/// The control-plane VIP of the lab.
pub const VIP: &str = "192.0.2.250";
/// The control-plane VIP announced by BGP: outside the LAN, reached through the router.
pub const BGP_VIP: &str = "203.0.113.250";

pub struct CpLab {
    pub lab: AgentLab,
    pub vip: IpAddr,
    /// Where a holder has the VIP: `eth0` (L2), `lo` (BGP).
    pub vip_dev: &'static str,
    healthy: BTreeMap<String, Arc<AtomicBool>>,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    extra: Vec<String>,
}

impl CpLab {
    /// The lab with a stand-in API server on every node; agents start with [`CpLab::start`].
    pub fn new(name: &str, flags: AgentFlags, extra: &[&str]) -> CpLab {
        CpLab::on(AgentLab::new(name, flags), VIP, "eth0", extra)
    }

    /// The lab with a router (tests/agentlab `with_router`) and the VIP [`BGP_VIP`], which
    /// holders put on `lo`; `extra` carries the --bgp flags.
    pub fn with_router(name: &str, flags: AgentFlags, extra: &[&str]) -> CpLab {
        CpLab::on(AgentLab::with_router(name, flags), BGP_VIP, "lo", extra)
    }

    fn on(lab: AgentLab, vip: &str, vip_dev: &'static str, extra: &[&str]) -> CpLab {
        let stop = Arc::new(AtomicBool::new(false));
        let mut healthy = BTreeMap::new();
        let mut servers = Vec::new();
        for node in NODES {
            let flag = Arc::new(AtomicBool::new(true));
            healthy.insert(node.to_string(), flag.clone());
            let (stop, name) = (stop.clone(), node.to_string());
            servers.push(
                lab.net
                    .thread_in(node, move || serve_api(&name, &flag, &stop)),
            );
        }
        CpLab {
            lab,
            vip: vip.parse().unwrap(),
            vip_dev,
            healthy,
            stop,
            servers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The flags of a control-plane agent in this lab.
    pub fn agent_args(&self) -> Vec<String> {
        let kubeconfig = self.lab.dir.join("kubeconfig");
        let vip = self.vip.to_string();
        let mut args: Vec<String> = [
            "--control-plane",
            "--vip",
            &vip,
            "--interface",
            "eth0",
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            // The fake API is not on this node: talk to the server the kubeconfig names.
            "--api-server",
            "kubeconfig",
            "--health-url",
            &format!("http://127.0.0.1:{API_PORT}/readyz"),
            "--health-interval",
            "500ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts (or restarts) the control-plane agent of `node`.
    pub fn start(&self, node: &str) {
        let args = self.agent_args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab.start_agent_with(node, &refs);
    }

    pub fn start_all(&self) {
        for node in NODES {
            self.start(node);
        }
    }

    /// Makes `node`'s stand-in API server answer /readyz with 500 (false) or 200 (true).
    pub fn set_healthy(&self, node: &str, healthy: bool) {
        self.healthy[node].store(healthy, Ordering::Release);
    }

    /// The nodes that have the VIP on their `eth0` (`lo` with BGP).
    pub fn holders(&self) -> Vec<String> {
        let needle = format!("{}/32", self.vip);
        NODES
            .iter()
            .filter(|node| {
                self.lab
                    .net
                    .exec_ok(node, "ip", &["-o", "addr", "show", "dev", self.vip_dev])
                    .contains(&needle)
            })
            .map(|n| n.to_string())
            .collect()
    }

    /// Waits until exactly one node has the VIP (other than `not`, if given) and returns it.
    pub fn wait_single_holder(&self, not: Option<&str>, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let holders = self.holders();
            if holders.len() == 1 && Some(holders[0].as_str()) != not {
                return holders[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "not exactly one holder of the VIP (other than {not:?}) within {timeout:?}: {holders:?}\n{}",
                self.lab.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `spec.holderIdentity` of the Lease (None when released or absent).
    pub fn lease_holder(&self) -> Option<String> {
        self.lab
            .fake
            .get("leases", Some("kube-system"), "vipam-control-plane")?
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .map(String::from)
    }

    /// One request from the client to the VIP's API port: the node that answered.
    pub fn probe(&self, timeout: Duration) -> Option<String> {
        let vip = self.vip;
        self.lab.net.run_in("client", move || probe(vip, timeout))
    }

    /// Waits until the client reaches the VIP and returns who answered.
    pub fn reach(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(node) = self.probe(Duration::from_millis(300)) {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "the client cannot reach the VIP within {timeout:?}\n{}",
                self.lab.logs()
            );
        }
    }

    /// Probes the VIP from the client every `every` until [`Prober::finish`].
    pub fn prober(&self, every: Duration) -> Prober {
        let vip = self.vip;
        self.lab
            .prober_with(every, move |timeout| probe(vip, timeout))
    }
}

impl Drop for CpLab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
    }
}

/// An HTTP GET of `/` on the VIP's API port; the body is the answering node's name.
fn probe(vip: IpAddr, timeout: Duration) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&(vip, API_PORT).into(), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let body = answer.split("\r\n\r\n").nth(1)?.trim().to_string();
    (!body.is_empty()).then_some(body)
}

/// The stand-in API server of one node.
fn serve_api(name: &str, healthy: &AtomicBool, stop: &AtomicBool) {
    serve_each(API_PORT, stop, |mut stream| {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head);
        let (status, body) = if head.starts_with("GET /readyz") {
            if healthy.load(Ordering::Acquire) {
                ("200 OK", "ok".to_string())
            } else {
                ("500 Internal Server Error", "[-]etcd failed".to_string())
            }
        } else {
            ("200 OK", name.to_string())
        };
        let _ = stream.write_all(
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    });
}
