//! A small LAN built from network namespaces, for root tests of the agent.
//!
//! One namespace holds a Linux bridge (the switch, multicast snooping off so it behaves like a
//! plain switch); every host (nodes, client, api, ...) gets its own namespace, attached to the
//! bridge by a veth pair whose end inside the host is named `eth0`, with a fixed MAC
//! `02:00:00:00:00:<n>`, `192.0.2.<n>/24` and `2001:db8:1::<n>/64` (same digits) (documentation ranges only;
//! nothing leaves the namespaces created here). IPv6 duplicate address detection is off so the
//! addresses are usable at once.
//!
//! Namespace names are `vn<pid>x<counter>-<host>`, so tests in parallel never collide; every
//! namespace is deleted on drop, also when the test panics. Namespaces left behind by a test
//! process that was killed are removed by the next lab. Without root (or if `ip netns add`
//! fails) the constructor panics with the reason: a test that cannot run fails.

#![allow(dead_code)]

pub mod routers;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Name prefix of every namespace a lab creates.
pub const PREFIX: &str = "vn";

/// One host of the lab.
#[derive(Debug, Clone)]
pub struct Host {
    /// Logical name given to [`Netlab::new`] (`node1`, `client`, ...).
    pub name: String,
    /// Its network namespace (`ip netns` name).
    pub ns: String,
    /// Host number: the last byte of its addresses and MAC.
    pub number: u8,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// MAC of its `eth0`.
    pub mac: [u8; 6],
}

impl Host {
    /// The MAC as `02:00:00:00:00:0b`.
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The lab; dropping it deletes every namespace it made.
pub struct Netlab {
    /// The bridge's namespace.
    pub switch_ns: String,
    /// A scratch directory (state directories of agents, ...), deleted on drop.
    pub scratch: std::path::PathBuf,
    pub hosts: Vec<Host>,
    created: Vec<String>,
}

/// The IPv4 address of host number `n` in the lab's LAN.
pub fn ipv4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, n)
}

/// The IPv4 address of host number `n` on the management network
/// ([`Netlab::add_management_network`]).
pub fn mgmt_ipv4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, n)
}

/// The IPv6 address of host number `n` in the lab's LAN: its decimal digits are the last
/// group, so host 11 is `2001:db8:1::11` like `192.0.2.11`.
pub fn ipv6(n: u8) -> Ipv6Addr {
    let last = u16::from_str_radix(&n.to_string(), 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, last)
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("netlab: cannot run {cmd}: {e}"))
}

fn must(cmd: &str, args: &[&str]) {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "netlab: `{cmd} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Deletes namespaces of earlier test processes that no longer exist.
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

impl Netlab {
    /// Builds the LAN with the given hosts: `(logical name, host number)`, numbers 1..=254
    /// and distinct. Panics with the reason when it cannot (not root, no `ip`, ...).
    pub fn new(hosts: &[(&str, u8)]) -> Netlab {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "netlab: these tests build network namespaces and must run as root (euid is {euid})"
        );
        sweep_stale();
        let id = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("{PREFIX}{}x{id}", std::process::id());
        let scratch = std::env::temp_dir().join(format!("netlab-{base}"));
        std::fs::create_dir_all(&scratch).expect("netlab: scratch directory");
        let mut lab = Netlab {
            switch_ns: format!("{base}-sw"),
            scratch,
            hosts: Vec::new(),
            created: Vec::new(),
        };
        let sw = lab.switch_ns.clone();
        lab.add_ns(&sw);
        must("ip", &["-n", &sw, "link", "set", "lo", "up"]);
        must(
            "ip",
            &[
                "-n",
                &sw,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "mcast_snooping",
                "0",
            ],
        );
        must("ip", &["-n", &sw, "link", "set", "br0", "up"]);
        for (i, (name, number)) in hosts.iter().enumerate() {
            assert!(
                !lab.hosts
                    .iter()
                    .any(|h| h.number == *number || h.name == *name),
                "netlab: duplicate host {name} / {number}"
            );
            let ns = format!("{base}-{name}");
            lab.add_ns(&ns);
            // Before eth0 exists, so `default` applies to it.
            must(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            );
            let port = format!("p{i}");
            must(
                "ip",
                &[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            );
            must(
                "ip",
                &["-n", &sw, "link", "set", &port, "master", "br0", "up"],
            );
            let mac = [0x02, 0, 0, 0, 0, *number];
            let host = Host {
                name: name.to_string(),
                ns: ns.clone(),
                number: *number,
                ipv4: ipv4(*number),
                ipv6: ipv6(*number),
                mac,
            };
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            must(
                "ip",
                &[
                    "-n",
                    &ns,
                    "link",
                    "set",
                    "eth0",
                    "address",
                    &host.mac_string(),
                ],
            );
            must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            must(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", host.ipv4),
                    "dev",
                    "eth0",
                ],
            );
            must(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/64", host.ipv6),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            lab.hosts.push(host);
        }
        lab
    }

    /// Three nodes (.11, .12, .13), a client (.100) and an API host (.5).
    pub fn standard() -> Netlab {
        Netlab::new(&[
            ("node1", 11),
            ("node2", 12),
            ("node3", 13),
            ("client", 100),
            ("api", 5),
        ])
    }

    /// [`Netlab::standard`] plus a BGP router host `router` (.1).
    pub fn with_router() -> Netlab {
        Netlab::new(&[
            ("node1", 11),
            ("node2", 12),
            ("node3", 13),
            ("client", 100),
            ("api", 5),
            ("router", 1),
        ])
    }

    fn add_ns(&mut self, ns: &str) {
        let out = run("ip", &["netns", "add", ns]);
        assert!(
            out.status.success(),
            "netlab: `ip netns add {ns}` failed ({}): {} (these tests need root and network namespaces)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.created.push(ns.to_owned());
    }

    /// The host with this logical name.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("netlab: no host {name}"))
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> &str {
        &self.host(name).ns
    }

    /// A second LAN, apart from the first ("management network", as nodes often have one for
    /// the API server): a bridge of its own in the switch namespace, and on each of `members`
    /// an interface `eth1` with [`mgmt_ipv4`] of its number.
    pub fn add_management_network(&self, members: &[&str]) {
        let sw = self.switch_ns.as_str();
        must(
            "ip",
            &[
                "-n",
                sw,
                "link",
                "add",
                "br1",
                "type",
                "bridge",
                "stp_state",
                "0",
            ],
        );
        must("ip", &["-n", sw, "link", "set", "br1", "up"]);
        for (i, name) in members.iter().enumerate() {
            let host = self.host(name);
            let port = format!("m{i}");
            must(
                "ip",
                &[
                    "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth1",
                    "netns", &host.ns,
                ],
            );
            must(
                "ip",
                &["-n", sw, "link", "set", &port, "master", "br1", "up"],
            );
            must("ip", &["-n", &host.ns, "link", "set", "eth1", "up"]);
            let address = format!("{}/24", mgmt_ipv4(host.number));
            must(
                "ip",
                &["-n", &host.ns, "addr", "add", &address, "dev", "eth1"],
            );
        }
    }

    /// Takes the switch port of host `host` on the first LAN down or up: the host's `eth0`
    /// loses or regains carrier (it stays administratively up), as when a cable is pulled.
    pub fn set_lan_port(&self, host: &str, up: bool) {
        let index = self
            .hosts
            .iter()
            .position(|h| h.name == host)
            .unwrap_or_else(|| panic!("netlab: no host {host}"));
        let state = if up { "up" } else { "down" };
        must(
            "ip",
            &[
                "-n",
                &self.switch_ns,
                "link",
                "set",
                &format!("p{index}"),
                state,
            ],
        );
    }

    fn command(&self, host: &str, cmd: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(host), cmd]).args(args);
        c
    }

    /// Runs `cmd args` in host `host`'s namespace and waits for it.
    pub fn exec(&self, host: &str, cmd: &str, args: &[&str]) -> Output {
        self.command(host, cmd, args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("netlab: cannot run {cmd} in {host}: {e}"))
    }

    /// Like [`Netlab::exec`], panicking with the output unless it succeeds; returns stdout.
    pub fn exec_ok(&self, host: &str, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(host, cmd, args);
        assert!(
            out.status.success(),
            "netlab: `{cmd} {}` in {host} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd args` in host `host`'s namespace (output piped).
    pub fn spawn(&self, host: &str, cmd: &str, args: &[&str]) -> Child {
        self.command(host, cmd, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("netlab: cannot start {cmd} in {host}: {e}"))
    }

    /// Starts a thread whose network namespace is host `host`'s, running `f`. Sockets it (or
    /// threads it starts, such as a tokio runtime's) creates belong to that namespace.
    pub fn thread_in<T, F>(&self, host: &str, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = format!("/run/netns/{}", self.ns(host));
        let ns_file = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("netlab: cannot open {path}: {e}"));
        std::thread::Builder::new()
            .name(format!("netns-{host}"))
            .spawn(move || {
                // SAFETY: setns on a valid namespace descriptor; affects this thread only.
                let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "netlab: setns({path}) failed: {}",
                    std::io::Error::last_os_error()
                );
                drop(ns_file);
                f()
            })
            .expect("netlab: spawning a thread")
    }

    /// Runs `f` on a thread in host `host`'s namespace and returns its result (re-raising
    /// its panic).
    pub fn run_in<T, F>(&self, host: &str, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match self.thread_in(host, f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Netlab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
        for ns in self.created.iter().rev() {
            let out = run("ip", &["netns", "del", ns]);
            if !out.status.success() {
                eprintln!(
                    "netlab: deleting namespace {ns} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
}
