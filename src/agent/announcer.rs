//! The announcer: makes the LAN send traffic for this node's addresses to this node.
//!
//! The lead's code hands it the complete desired state ([`Announcer::set`]); the announcer
//! applies the difference at once and keeps enforcing it:
//!
//! - [`AnnounceMode::Arp`]: a filtered raw socket on the interface answers ARP requests and
//!   neighbour solicitations for the address with the interface's MAC. The address is not
//!   added to the interface (kube-proxy or the CNI handle the traffic, as with MetalLB). For
//!   IPv6 the solicited-node multicast group is joined (receive filter and MLD report).
//! - [`AnnounceMode::Address`]: the /32 or /128 is added to the interface, marked as ours
//!   (see [`super::address`]); the kernel answers.
//! - [`AnnounceMode::Local`]: the address is added as in address mode (usually to `lo`), and
//!   nothing is sent or answered on the LAN: a router learns it by BGP. No raw socket, no
//!   probe, no gratuitous announcements.
//!
//! In both modes, gaining an address sends a gratuitous ARP (IPv4) or an unsolicited
//! neighbour advertisement with the override flag (IPv6) at once, again at +250 ms, +750 ms
//! and +2 s, then every `garp_interval`. Losing it stops the answers and removes the address
//! at once.
//!
//! Enforcement runs every `resync` and whenever the kernel reports an address or link change:
//! addresses of ours that should be there are re-added, addresses of ours that should not are
//! removed, interfaces that appeared are put to use. Addresses that are not ours are never
//! touched (DESIGN invariant 4).
//!
//! Threads: netlink requests can wait for the kernel's RTNL lock, so they never run on the
//! caller's async runtime. The engine (desired state, enforcement, netlink address changes,
//! announcements) runs on a thread of its own (`vipam-announcer`); links come from the
//! [`LinkWatch`] thread; the readers that answer ARP and neighbour solicitations run on the
//! caller's runtime and consult only a small table (locked for memory operations alone), so a
//! slow netlink call delays neither an answer nor the caller's watches and lease renewals.
//!
//! Nothing here talks to the API server: once told, the announcer keeps announcing until
//! told otherwise (DESIGN invariant 5). Dropping the [`Announcer`] without
//! [`Announcer::shutdown`] stops answering but leaves addresses in place, exactly as a crash
//! would; the next run's first [`Announcer::set`] removes what is no longer wanted.
//!
//! All sockets are created in the network namespace of the thread that calls
//! [`Announcer::start`] (the announcer's threads inherit it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::net::NetError;
use super::net::address::{Added, AddressManager, KernelAddr, Marker, RecordEntry, is_ours};
use super::net::iface::Interface;
use super::net::links::{LinkWatch, NetState};
use super::net::packet::{self, MacAddr, NdpKind, Payload};
use super::net::rawsock::{MldGroups, PACKET_OUTGOING, RawSocket};
use crate::core::category::Category;
use crate::core::ownership::AnnounceMode;

/// When the repeated announcements after a gain go out, counted from the gain.
pub const BURST: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_millis(750),
    Duration::from_millis(2000),
];

/// How long the raw socket of an interface stays open after its last address went away.
/// Closing a packet socket waits for an RCU grace period (milliseconds) in the kernel; an
/// address that comes back soon (flapping ownership, or the next of several moves) must not
/// wait for that.
const LINK_LINGER: Duration = Duration::from_secs(60);

/// Enforcement waits this long after a kernel change notification, so a burst of changes
/// (including our own) costs one pass.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(20);

/// Where and how one address is announced.
#[derive(Debug, Clone)]
pub struct Target {
    /// Interface name (resolved to an index when used; may appear later).
    pub interface: String,
    pub mode: AnnounceMode,
    /// Probe the LAN for another host using the address before announcing it the first time
    /// (duplicate address detection). The caller sets it when no node of the cluster has
    /// announced the address before; a takeover from another node is not delayed. A hint for
    /// the first activation only: two targets that differ in it alone are equal.
    pub probe_first: bool,
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        self.interface == other.interface && self.mode == other.mode
    }
}

impl Eq for Target {}

/// Duplicate address detection: probes go out at these offsets from the start of a probe...
pub const PROBES: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(100),
    Duration::from_millis(200),
];

/// ...and an address nobody else answered for is announced this long after the first probe.
/// It delays only the first announcement of an address that no node of the cluster announced
/// before (see [`Target::probe_first`]).
pub const PROBE_WAIT: Duration = Duration::from_millis(300);

/// An address in conflict is probed again this often; it is announced once nobody answers.
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(10);

/// Another host on the LAN uses one of this node's addresses, so the node does not announce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub ip: IpAddr,
    pub interface: String,
    /// The other host's MAC.
    pub mac: MacAddr,
    /// When the conflict was first seen.
    pub since: SystemTime,
}

/// Timings and paths.
#[derive(Debug, Clone)]
pub struct AnnouncerConfig {
    /// Period of the refresh announcements after the initial burst.
    pub garp_interval: Duration,
    /// Enforcement period.
    pub resync: Duration,
    /// Directory of the record file (`addresses.json`).
    pub state_dir: PathBuf,
    /// How added addresses are marked (one marker per kind of announcer on a node).
    pub marker: Marker,
}

/// Counters the announcer increments; clones share the values. The caller registers them.
#[derive(Debug, Clone, Default)]
pub struct NetCounters {
    /// ARP replies sent for addresses announced in ARP mode.
    pub arp_replies: Counter,
    /// Neighbour advertisements sent in answer to solicitations (ARP mode).
    pub ndp_replies: Counter,
    /// Gratuitous ARPs and unsolicited neighbour advertisements sent.
    pub gratuitous: Counter,
    /// Announcements of one of our addresses by another MAC seen on the LAN.
    pub claims_seen: Counter,
    /// Addresses dropped because another MAC claimed them while yielding.
    pub yielded: Counter,
    /// Enforcement repairs: our addresses re-added or stale ones removed.
    pub repairs: Counter,
    /// Addresses found in use by another host on the LAN (probe answered, or announced by a
    /// MAC that is no agent's).
    pub conflicts: Counter,
    /// Data-plane errors by category: `netlink`, `socket`, `state`, `stopped` (a
    /// [`NetError`]), `send` and `receive` (a frame could not be sent or received).
    pub errors: Family<ErrorLabel, Counter>,
}

/// Labels of `vipam_agent_net_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub category: &'static str,
}

impl NetCounters {
    /// Counts one data-plane error of `category` (a static, bounded label).
    pub fn error(&self, category: &'static str) {
        self.errors.get_or_create(&ErrorLabel { category }).inc();
    }
}

/// One address as announced now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    pub ip: IpAddr,
    pub interface: String,
    pub mode: AnnounceMode,
    /// When this node started announcing it.
    pub since: SystemTime,
}

/// Handle to the running announcer. See the module documentation.
#[derive(Debug)]
pub struct Announcer {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    links: LinkWatch,
}

enum Command {
    Set {
        desired: BTreeMap<IpAddr, Target>,
        done: oneshot::Sender<Result<(), NetError>>,
    },
    KnownMacs(BTreeSet<MacAddr>),
    StopYielding,
    Shutdown {
        done: oneshot::Sender<Result<(), NetError>>,
    },
}

/// What the readers and the handle share with the engine. The lock is held for memory
/// operations only, never across a system call that can block.
#[derive(Debug)]
struct Shared {
    table: Mutex<Table>,
    yield_to_others: AtomicBool,
    claimed: Notify,
    /// Another MAC announced or answered for an address that is active or being probed: the
    /// engine decides (yield, conflict, or nothing).
    claims: mpsc::UnboundedSender<(IpAddr, MacAddr)>,
    counters: NetCounters,
    config: AnnouncerConfig,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The engine's active addresses as the readers need them, and the claims they saw.
#[derive(Debug, Default)]
struct Table {
    active: HashMap<IpAddr, Entry>,
    /// Addresses being probed before their first announcement: (ifindex, our MAC).
    probing: HashMap<IpAddr, (u32, MacAddr)>,
    /// Last claim by another MAC seen for each address.
    claims: HashMap<IpAddr, (Instant, MacAddr)>,
    conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone)]
struct Entry {
    ifindex: u32,
    mac: MacAddr,
    mode: AnnounceMode,
    interface: String,
    since: SystemTime,
}

impl Table {
    /// Whether ARP/NS for `ip` on `ifindex` is ours to answer (ARP mode, active there).
    fn answers(&self, ip: IpAddr, ifindex: u32) -> bool {
        self.active
            .get(&ip)
            .is_some_and(|e| e.mode == AnnounceMode::Arp && e.ifindex == ifindex)
    }
}

/// An interface in use: its raw socket and the task answering on it.
#[derive(Debug)]
struct Link {
    index: u32,
    socket: Arc<RawSocket>,
    reader: JoinHandle<()>,
    /// When the last address announced on it went away (see [`LINK_LINGER`]).
    unused_since: Option<Instant>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Debug)]
struct Held {
    target: Target,
    active: Option<Active>,
}

#[derive(Debug)]
struct Probing {
    ifindex: u32,
    interface: String,
    mac: MacAddr,
    started: Instant,
    sent: usize,
}

#[derive(Debug)]
struct ConflictState {
    interface: String,
    mac: MacAddr,
    since: SystemTime,
    recheck_at: Instant,
}

#[derive(Debug)]
struct Active {
    ifindex: u32,
    mac: MacAddr,
    since: SystemTime,
    gained: Instant,
    /// How many announcements of the burst went out.
    sent: usize,
    next_announce: Instant,
    /// Address mode: the kernel address is ours (we added it, or adopted our own leftover).
    owns_address: bool,
}

/// The engine's state, owned by the engine task.
#[derive(Debug)]
struct State {
    addrs: AddressManager,
    mld: Option<MldGroups>,
    mld_refs: HashMap<(u32, Ipv6Addr), usize>,
    links: HashMap<String, Link>,
    desired: BTreeMap<IpAddr, Target>,
    held: BTreeMap<IpAddr, Held>,
    /// Dropped while yielding; not taken again until yielding stops.
    yielded: BTreeSet<IpAddr>,
    /// Interfaces reported missing, so the warning is logged once per disappearance.
    missing: BTreeSet<String>,
    cleaned_up: bool,
    /// Addresses being probed before they are announced.
    probing: BTreeMap<IpAddr, Probing>,
    /// Addresses another host uses: not announced, probed again at `recheck_at`.
    conflicts: BTreeMap<IpAddr, ConflictState>,
    /// MACs of the cluster's agents: their announcements are takeovers, not conflicts.
    known_macs: BTreeSet<MacAddr>,
    /// The node's links, from the link watcher.
    net: watch::Receiver<Arc<NetState>>,
    /// The caller's runtime: the readers run there, apart from the engine's netlink calls.
    readers: Handle,
}

impl Announcer {
    /// Starts the link watcher and the engine thread, opens the netlink socket and loads the
    /// record; answers nothing and changes nothing until the first [`Announcer::set`]. Must
    /// run inside a tokio runtime (the readers run on it), on a thread in the node's network
    /// namespace. Nothing here blocks the caller's runtime.
    pub async fn start(
        config: AnnouncerConfig,
        counters: NetCounters,
    ) -> Result<Announcer, NetError> {
        let links = LinkWatch::start().await?;
        let (claims, claims_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            yield_to_others: AtomicBool::new(false),
            claimed: Notify::new(),
            claims,
            counters,
            config,
        });
        let (commands, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let engine_shared = shared.clone();
        let net = links.subscribe();
        let readers = Handle::current();
        std::thread::Builder::new()
            .name("vipam-announcer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(NetError::Netlink {
                            op: "start the announcer's runtime",
                            source: e,
                        }));
                        return;
                    }
                };
                let config = &engine_shared.config;
                let addrs = match AddressManager::open(&config.state_dir, config.marker) {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let mld = match MldGroups::open() {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "no IPv6 socket for MLD reports; IPv6 ARP-mode answers rely on switches flooding multicast");
                        None
                    }
                };
                let state = State {
                    addrs,
                    mld,
                    mld_refs: HashMap::new(),
                    links: HashMap::new(),
                    desired: BTreeMap::new(),
                    held: BTreeMap::new(),
                    yielded: BTreeSet::new(),
                    missing: BTreeSet::new(),
                    cleaned_up: false,
                    probing: BTreeMap::new(),
                    conflicts: BTreeMap::new(),
                    known_macs: BTreeSet::new(),
                    net,
                    readers,
                };
                if ready_tx.send(Ok(())).is_err() {
                    return;
                }
                runtime.block_on(engine(engine_shared, state, rx, claims_rx));
            })
            .map_err(|e| NetError::Netlink {
                op: "start the announcer thread",
                source: e,
            })?;
        ready_rx.await.map_err(|_| NetError::Stopped)??;
        Ok(Announcer {
            shared,
            commands,
            links,
        })
    }

    /// The MACs of the cluster's agents (from their Leases). Another MAC announcing or
    /// answering for one of this node's addresses is a conflict; one of these is a takeover.
    pub fn set_known_macs(&self, macs: BTreeSet<MacAddr>) {
        let _ = self.commands.send(Command::KnownMacs(macs));
    }

    /// Addresses this node does not announce because another host on the LAN uses them.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.shared.table().conflicts.clone()
    }

    /// The node's links as the announcer sees them (see [`LinkWatch`]).
    pub fn links(&self) -> &LinkWatch {
        &self.links
    }

    /// Sets the desired state for this node: every address it announces and how. Applies the
    /// difference before returning: lost addresses stop being answered and their addresses are
    /// removed; gained ones are answered (ARP mode) or added (address mode) and announced at
    /// once, then per [`BURST`] and every `garp_interval`. A named interface that does not
    /// exist yet is logged and retried at each enforcement pass (not an error).
    ///
    /// The first call also removes leftovers of a previous run: addresses of ours (marker or
    /// record) that are not desired. Until then, leftovers stay (they keep traffic flowing
    /// while this run waits for its first view of the cluster).
    ///
    /// Returns the first error met; the rest of the change is applied regardless and
    /// enforcement retries what failed.
    pub async fn set(&self, desired: BTreeMap<IpAddr, Target>) -> Result<(), NetError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Set { desired, done })
            .map_err(|_| NetError::Stopped)?;
        wait.await.map_err(|_| NetError::Stopped)?
    }

    /// While true (the lead sets it when this node's lease has expired), an address is dropped
    /// as soon as another MAC announces it on the LAN (gratuitous ARP, ARP reply or
    /// neighbour advertisement), and repeated announcements stop. Dropped addresses are taken
    /// again (from the last desired state) when this is set back to false.
    pub fn set_yield_to_others(&self, yield_: bool) {
        let was = self.shared.yield_to_others.swap(yield_, Ordering::SeqCst);
        if was && !yield_ {
            let _ = self.commands.send(Command::StopYielding);
        }
    }

    /// For graceful handover: resolves when every address held at the time of the call has
    /// been announced by another MAC since the call, or when `timeout` passes. Returns the
    /// addresses that were claimed. Keeps answering meanwhile.
    pub async fn wait_claimed_by_others(&self, timeout: Duration) -> Vec<IpAddr> {
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start + timeout);
        // Local addresses are never claimed on the LAN: nothing to wait for.
        let targets: Vec<IpAddr> = self
            .shared
            .table()
            .active
            .iter()
            .filter(|(_, e)| e.mode.on_lan())
            .map(|(ip, _)| *ip)
            .collect();
        loop {
            let notified = self.shared.claimed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let claimed: Vec<IpAddr> = {
                let table = self.shared.table();
                targets
                    .iter()
                    .filter(|ip| table.claims.get(ip).is_some_and(|(at, _)| *at >= start))
                    .copied()
                    .collect()
            };
            if claimed.len() == targets.len() {
                return claimed;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return claimed,
            }
        }
    }

    /// Stops answering and removes every address of ours (marker or record), then stops.
    pub async fn shutdown(&self) -> Result<(), NetError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Shutdown { done })
            .map_err(|_| NetError::Stopped)?;
        wait.await.map_err(|_| NetError::Stopped)?
    }

    /// What is announced now. Addresses waiting for their interface are not listed.
    pub fn announced(&self) -> Vec<Announced> {
        let table = self.shared.table();
        let mut out: Vec<Announced> = table
            .active
            .iter()
            .map(|(ip, e)| Announced {
                ip: *ip,
                interface: e.interface.clone(),
                mode: e.mode,
                since: e.since,
            })
            .collect();
        out.sort_by_key(|a| a.ip);
        out
    }
}

async fn engine(
    shared: Arc<Shared>,
    mut st: State,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut claims: mpsc::UnboundedReceiver<(IpAddr, MacAddr)>,
) {
    let resync = shared.config.resync;
    let mut next_resync = tokio::time::Instant::now() + resync;
    let mut pending_event: Option<tokio::time::Instant> = None;
    let mut net = st.net.clone();
    let mut events_ok = true;
    loop {
        let mut deadline = next_resync;
        if let Some(t) = st.next_timer().map(tokio::time::Instant::from_std) {
            deadline = deadline.min(t);
        }
        if let Some(t) = pending_event {
            deadline = deadline.min(t);
        }
        tokio::select! {
            command = commands.recv() => match command {
                None => break, // handle dropped: stop like a crash, leave addresses
                Some(Command::Set { desired, done }) => {
                    let result = st.apply(&shared, desired);
                    st.publish(&shared);
                    let _ = done.send(result);
                }
                Some(Command::KnownMacs(macs)) => st.known_macs = macs,
                Some(Command::StopYielding) => {
                    st.yielded.clear();
                    let desired = st.desired.clone();
                    if let Err(e) = st.apply(&shared, desired) {
                        shared.counters.error(e.category());
                        tracing::warn!(error = %e, "re-taking addresses after yielding");
                    }
                    st.publish(&shared);
                }
                Some(Command::Shutdown { done }) => {
                    let result = st.shutdown(&shared);
                    st.publish(&shared);
                    let _ = done.send(result);
                    break;
                }
            },
            Some((ip, by)) = claims.recv() => {
                st.on_claim(&shared, ip, by);
                st.publish(&shared);
            }
            changed = net.changed(), if events_ok => {
                if changed.is_err() {
                    tracing::warn!("the link watcher stopped; relying on the resync period");
                    events_ok = false;
                }
                pending_event.get_or_insert_with(|| tokio::time::Instant::now() + EVENT_DEBOUNCE);
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now = tokio::time::Instant::now();
                if now >= next_resync || pending_event.is_some_and(|t| now >= t) {
                    pending_event = None;
                    next_resync = now + resync;
                    st.enforce(&shared);
                    st.publish(&shared);
                }
                st.announce_due(&shared, Instant::now());
                if st.probes_due(&shared, Instant::now()) {
                    st.publish(&shared);
                }
            }
        }
    }
    // Stop the readers (they run on the caller's runtime).
    st.links.clear();
    shared.table().active.clear();
}

impl State {
    /// Makes the readers' table match the active addresses.
    fn publish(&self, shared: &Shared) {
        let active: HashMap<IpAddr, Entry> = self
            .held
            .iter()
            .filter_map(|(ip, h)| {
                h.active.as_ref().map(|a| {
                    (
                        *ip,
                        Entry {
                            ifindex: a.ifindex,
                            mac: a.mac,
                            mode: h.target.mode,
                            interface: h.target.interface.clone(),
                            since: a.since,
                        },
                    )
                })
            })
            .collect();
        let probing: HashMap<IpAddr, (u32, MacAddr)> = self
            .probing
            .iter()
            .map(|(ip, p)| (*ip, (p.ifindex, p.mac)))
            .collect();
        let conflicts: Vec<Conflict> = self
            .conflicts
            .iter()
            .map(|(ip, c)| Conflict {
                ip: *ip,
                interface: c.interface.clone(),
                mac: c.mac,
                since: c.since,
            })
            .collect();
        let mut table = shared.table();
        table.probing = probing;
        table.conflicts = conflicts;
        // Claims of addresses no longer held are kept for a while: a handover in progress may
        // still ask for them.
        table
            .claims
            .retain(|ip, (at, _)| active.contains_key(ip) || at.elapsed() < LINK_LINGER);
        table.active = active;
    }

    /// The next announcement, probe, end of a probe, or conflict recheck.
    fn next_timer(&self) -> Option<Instant> {
        let announces = self
            .held
            .values()
            .filter(|h| h.target.mode.on_lan())
            .filter_map(|h| h.active.as_ref().map(|a| a.next_announce));
        let probes = self.probing.values().map(|p| match PROBES.get(p.sent) {
            Some(offset) => p.started + *offset,
            None => p.started + PROBE_WAIT,
        });
        let rechecks = self.conflicts.values().map(|c| c.recheck_at);
        announces.chain(probes).chain(rechecks).min()
    }

    fn wanted(&self) -> BTreeMap<IpAddr, Target> {
        self.desired
            .iter()
            .filter(|(ip, _)| !self.yielded.contains(ip))
            .map(|(ip, t)| (*ip, t.clone()))
            .collect()
    }

    /// Applies a new desired state: losses first, then gains (announced at once).
    fn apply(
        &mut self,
        shared: &Arc<Shared>,
        desired: BTreeMap<IpAddr, Target>,
    ) -> Result<(), NetError> {
        self.desired = desired;
        let wanted = self.wanted();
        let mut first_error = None;
        let lost: Vec<IpAddr> = self
            .held
            .iter()
            .filter(|(ip, h)| wanted.get(ip) != Some(&h.target))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in lost {
            self.probing.remove(&ip);
            self.conflicts.remove(&ip);
            if let Some(held) = self.held.remove(&ip) {
                tracing::info!(%ip, interface = %held.target.interface, mode = ?held.target.mode, "stopped announcing");
                if let Err(e) = self.deactivate(shared, ip, &held) {
                    first_error.get_or_insert(e);
                }
            }
        }
        let gained: Vec<(IpAddr, Target)> = wanted
            .into_iter()
            .filter(|(ip, _)| !self.held.contains_key(ip))
            .collect();
        for (ip, target) in &gained {
            self.held.insert(
                *ip,
                Held {
                    target: target.clone(),
                    active: None,
                },
            );
        }
        if !gained.is_empty()
            && let Err(e) = self.activate_pending(shared)
        {
            first_error.get_or_insert(e);
        }
        if !self.cleaned_up {
            // First desired state of this run: remove what a previous run left behind.
            self.cleaned_up = true;
            if let Err(e) = self.enforce_addresses(shared) {
                first_error.get_or_insert(e);
            }
        }
        self.close_unused_links();
        if let Err(e) = self.addrs.flush() {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => {
                shared.counters.error(e.category());
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Activates every held address that is not yet active and whose interface exists.
    fn activate_pending(&mut self, shared: &Arc<Shared>) -> Result<(), NetError> {
        let net = self.net.borrow().clone();
        let interfaces = &net.interfaces;
        let by_name: HashMap<&str, &Interface> =
            interfaces.iter().map(|i| (i.name.as_str(), i)).collect();
        // Interfaces that were re-created under the same name get a new socket.
        let stale_links: Vec<String> = self
            .links
            .iter()
            .filter(|(name, link)| {
                by_name
                    .get(name.as_str())
                    .is_none_or(|i| i.index != link.index)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale_links {
            tracing::warn!(interface = %name, "interface disappeared or was re-created");
            let ips: Vec<IpAddr> = self
                .held
                .iter()
                .filter(|(_, h)| h.target.interface == name && h.active.is_some())
                .map(|(ip, _)| *ip)
                .collect();
            for ip in ips {
                let Some(held) = self.held.get_mut(&ip) else {
                    continue;
                };
                let mode = held.target.mode;
                if let Some(active) = held.active.take()
                    && mode == AnnounceMode::Arp
                {
                    self.leave_groups(ip, &active, &name);
                }
            }
            self.links.remove(&name);
        }

        let pending: Vec<(IpAddr, Target)> = self
            .held
            .iter()
            .filter(|(_, h)| h.active.is_none())
            .map(|(ip, h)| (*ip, h.target.clone()))
            .collect();
        // Record every address about to be added with one write.
        let reserve: Vec<RecordEntry> = pending
            .iter()
            .filter(|(_, t)| t.mode.adds_address())
            .filter_map(|(ip, t)| {
                by_name.get(t.interface.as_str()).map(|i| RecordEntry {
                    ip: *ip,
                    ifindex: i.index,
                    ifname: i.name.clone(),
                })
            })
            .collect();
        self.addrs.reserve(reserve)?;

        let mut first_error = None;
        for (ip, target) in pending {
            let Some(interface) = by_name.get(target.interface.as_str()).copied() else {
                if self.missing.insert(target.interface.clone()) {
                    tracing::warn!(interface = %target.interface, %ip, "interface not found; will retry at each resync");
                }
                continue;
            };
            if target.mode == AnnounceMode::Local {
                self.missing.remove(&target.interface);
                if let Err(e) = self.activate_local(ip, &target, interface) {
                    tracing::warn!(%ip, interface = %target.interface, error = %e, "could not add the address");
                    first_error.get_or_insert(e);
                }
                continue;
            }
            let Some(mac) = interface.mac else {
                if self.missing.insert(target.interface.clone()) {
                    tracing::warn!(interface = %target.interface, %ip, "interface has no Ethernet address; cannot announce on it");
                }
                continue;
            };
            self.missing.remove(&target.interface);
            if self.probing.contains_key(&ip) {
                continue; // announced when the probe ends
            }
            if let Some(conflict) = self.conflicts.get(&ip)
                && Instant::now() < conflict.recheck_at
            {
                continue;
            }
            if target.probe_first || self.conflicts.contains_key(&ip) {
                if let Err(e) = self.start_probe(shared, ip, interface, mac) {
                    tracing::warn!(%ip, interface = %target.interface, error = %e, "could not probe");
                    first_error.get_or_insert(e);
                }
                continue;
            }
            if let Err(e) = self.activate(shared, ip, &target, interface, mac) {
                tracing::warn!(%ip, interface = %target.interface, error = %e, "could not announce");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn link(
        &mut self,
        shared: &Arc<Shared>,
        interface: &Interface,
        mac: MacAddr,
    ) -> Result<Arc<RawSocket>, NetError> {
        if let Some(link) = self.links.get(&interface.name) {
            return Ok(link.socket.clone());
        }
        let socket = {
            // Registered with the runtime that reads it.
            let _runtime = self.readers.enter();
            Arc::new(
                RawSocket::open(interface.index).map_err(|e| NetError::Socket {
                    interface: interface.name.clone(),
                    source: e,
                })?,
            )
        };
        let reader = self.readers.spawn(reader(
            shared.clone(),
            interface.name.clone(),
            interface.index,
            mac,
            socket.clone(),
        ));
        self.links.insert(
            interface.name.clone(),
            Link {
                index: interface.index,
                socket: socket.clone(),
                reader,
                unused_since: None,
            },
        );
        Ok(socket)
    }

    fn activate(
        &mut self,
        shared: &Arc<Shared>,
        ip: IpAddr,
        target: &Target,
        interface: &Interface,
        mac: MacAddr,
    ) -> Result<(), NetError> {
        let socket = self.link(shared, interface, mac)?;
        let mut owns_address = false;
        match target.mode {
            // Local targets are activated by `activate_local`; added here alike if ever reached.
            AnnounceMode::Address | AnnounceMode::Local => {
                match self.addrs.add(ip, interface.index, &interface.name)? {
                    Added::Added | Added::AlreadyOurs => owns_address = true,
                    Added::Foreign => {
                        tracing::warn!(%ip, interface = %interface.name, "address already present and not ours; leaving it as it is");
                    }
                }
            }
            AnnounceMode::Arp => {
                if let IpAddr::V6(v6) = ip {
                    self.join_groups(&socket, interface, v6);
                }
            }
        }
        let now = Instant::now();
        let mut active = Active {
            ifindex: interface.index,
            mac,
            since: SystemTime::now(),
            gained: now,
            sent: 0,
            next_announce: now,
            owns_address,
        };
        // The announcement goes out before anything else is done for other addresses.
        announce(shared, &socket, ip, &mut active, now, &interface.name);
        tracing::info!(%ip, interface = %interface.name, mode = ?target.mode, "announcing");
        if let Some(h) = self.held.get_mut(&ip) {
            h.active = Some(active);
        }
        Ok(())
    }

    /// Local mode: the address on the interface, nothing on the LAN.
    fn activate_local(
        &mut self,
        ip: IpAddr,
        target: &Target,
        interface: &Interface,
    ) -> Result<(), NetError> {
        let owns_address = match self.addrs.add(ip, interface.index, &interface.name)? {
            Added::Added | Added::AlreadyOurs => true,
            Added::Foreign => {
                tracing::warn!(%ip, interface = %interface.name, "address already present and not ours; leaving it as it is");
                false
            }
        };
        let now = Instant::now();
        let active = Active {
            ifindex: interface.index,
            mac: interface.mac.unwrap_or(MacAddr([0; 6])),
            since: SystemTime::now(),
            gained: now,
            sent: 0,
            // Never due: announce_due and next_timer skip local addresses.
            next_announce: now,
            owns_address,
        };
        tracing::info!(%ip, interface = %interface.name, mode = ?target.mode, "address added (announced by BGP)");
        if let Some(h) = self.held.get_mut(&ip) {
            h.active = Some(active);
        }
        Ok(())
    }

    fn join_groups(&mut self, socket: &RawSocket, interface: &Interface, ip: Ipv6Addr) {
        if let Err(e) = socket.join_multicast(packet::solicited_node_mac(ip)) {
            tracing::warn!(%ip, interface = %interface.name, error = %e, "joining the solicited-node multicast MAC");
        }
        let group = packet::solicited_node(ip);
        let count = self.mld_refs.entry((interface.index, group)).or_insert(0);
        *count += 1;
        if *count == 1
            && let Some(mld) = &self.mld
            && let Err(e) = mld.join(group, interface.index)
        {
            tracing::debug!(%group, interface = %interface.name, error = %e, "MLD join");
        }
    }

    /// Undoes [`State::join_groups`] for an address announced in ARP mode.
    fn leave_groups(&mut self, ip: IpAddr, active: &Active, ifname: &str) {
        let IpAddr::V6(v6) = ip else { return };
        if let Some(link) = self.links.get(ifname)
            && link.index == active.ifindex
        {
            let _ = link.socket.leave_multicast(packet::solicited_node_mac(v6));
        }
        let group = packet::solicited_node(v6);
        if let Some(count) = self.mld_refs.get_mut(&(active.ifindex, group)) {
            *count -= 1;
            if *count == 0 {
                self.mld_refs.remove(&(active.ifindex, group));
                if let Some(mld) = &self.mld {
                    let _ = mld.leave(group, active.ifindex);
                }
            }
        }
    }

    /// Undoes `held` (already removed from `self.held`): stop answering, remove our address.
    fn deactivate(
        &mut self,
        _shared: &Arc<Shared>,
        ip: IpAddr,
        held: &Held,
    ) -> Result<(), NetError> {
        let Some(active) = &held.active else {
            return Ok(());
        };
        match held.target.mode {
            AnnounceMode::Arp => self.leave_groups(ip, active, &held.target.interface),
            AnnounceMode::Address | AnnounceMode::Local if active.owns_address => {
                let addr = KernelAddr {
                    ip,
                    prefix_len: if ip.is_ipv4() { 32 } else { 128 },
                    ifindex: active.ifindex,
                    flags: 0,
                    label: None,
                    proto: self.addrs.marker().proto,
                };
                self.addrs.remove(&addr)?;
            }
            AnnounceMode::Address | AnnounceMode::Local => {}
        }
        Ok(())
    }

    /// Closes the sockets of interfaces that announced nothing for [`LINK_LINGER`].
    fn close_unused_links(&mut self) {
        let now = Instant::now();
        let used: BTreeSet<&str> = self
            .held
            .values()
            .filter(|h| h.active.is_some())
            .map(|h| h.target.interface.as_str())
            .collect();
        self.links.retain(|name, link| {
            if used.contains(name.as_str()) {
                link.unused_since = None;
                return true;
            }
            now.duration_since(*link.unused_since.get_or_insert(now)) < LINK_LINGER
        });
    }

    /// One enforcement pass: interfaces, then addresses.
    fn enforce(&mut self, shared: &Arc<Shared>) {
        if let Err(e) = self.activate_pending(shared) {
            shared.counters.error(e.category());
            tracing::warn!(error = %e, "enforcement: activating addresses");
        }
        if self.cleaned_up
            && let Err(e) = self.enforce_addresses(shared)
        {
            shared.counters.error(e.category());
            tracing::warn!(error = %e, "enforcement: addresses");
        }
        self.close_unused_links();
    }

    /// Re-adds our missing addresses, removes our stale ones, leaves all others alone.
    fn enforce_addresses(&mut self, shared: &Arc<Shared>) -> Result<(), NetError> {
        let names: HashMap<u32, String> = self
            .net
            .borrow()
            .interfaces
            .iter()
            .map(|i| (i.index, i.name.clone()))
            .collect();
        let present = self.addrs.list()?;
        let mut first_error = None;
        let want: BTreeSet<(IpAddr, u32)> = self
            .held
            .iter()
            .filter(|(_, h)| h.target.mode.adds_address())
            .filter_map(|(ip, h)| h.active.as_ref().map(|a| (*ip, a.ifindex)))
            .collect();
        for (ip, ifindex) in &want {
            let existing = present
                .iter()
                .find(|a| a.ip == *ip && a.ifindex == *ifindex);
            let ifname = names.get(ifindex).cloned().unwrap_or_default();
            let owns = match existing {
                Some(a) => is_ours(a, Some(&ifname), self.addrs.record(), self.addrs.marker()),
                None => {
                    tracing::warn!(%ip, interface = %ifname, "our address was removed; adding it again");
                    shared.counters.repairs.inc();
                    match self.addrs.add(*ip, *ifindex, &ifname) {
                        Ok(Added::Foreign) => false,
                        Ok(_) => true,
                        Err(e) => {
                            first_error.get_or_insert(e);
                            false
                        }
                    }
                }
            };
            if let Some(a) = self.held.get_mut(ip).and_then(|h| h.active.as_mut()) {
                a.owns_address = owns;
            }
        }
        for addr in &present {
            let ifname = names.get(&addr.ifindex).map(String::as_str);
            if !is_ours(addr, ifname, self.addrs.record(), self.addrs.marker())
                || want.contains(&(addr.ip, addr.ifindex))
            {
                continue;
            }
            tracing::info!(ip = %addr.ip, interface = ifname.unwrap_or("?"), "removing stale address of ours");
            shared.counters.repairs.inc();
            if let Err(e) = self.addrs.remove(addr) {
                first_error.get_or_insert(e);
            }
        }
        let present = self.addrs.list()?;
        if let Err(e) = self.addrs.prune_record(&present, &names, &want) {
            first_error.get_or_insert(e);
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends the announcements that are due.
    fn announce_due(&mut self, shared: &Arc<Shared>, now: Instant) {
        let yielding = shared.yield_to_others.load(Ordering::SeqCst);
        let garp_interval = shared.config.garp_interval;
        let links = &self.links;
        for (ip, held) in &mut self.held {
            let Some(active) = held.active.as_mut() else {
                continue;
            };
            if !held.target.mode.on_lan() || active.next_announce > now {
                continue;
            }
            if yielding {
                // Let the new owner win: no repeats, check again later.
                active.next_announce = now + garp_interval;
                continue;
            }
            match links.get(&held.target.interface) {
                Some(link) if link.index == active.ifindex => {
                    announce(
                        shared,
                        &link.socket,
                        *ip,
                        active,
                        now,
                        &held.target.interface,
                    );
                }
                _ => active.next_announce = now + garp_interval,
            }
        }
    }

    /// Another MAC announced or answered for `ip` (seen by a reader). While yielding, an
    /// active address is dropped (the new owner wins). Otherwise a MAC that is no agent's is
    /// a conflict: a probe in progress fails, an active address stops being announced, and
    /// either is probed again every [`CONFLICT_RECHECK`].
    fn on_claim(&mut self, shared: &Arc<Shared>, ip: IpAddr, by: MacAddr) {
        let active = self.held.get(&ip).is_some_and(|h| h.active.is_some());
        if active && shared.yield_to_others.load(Ordering::SeqCst) {
            self.yield_address(shared, ip, by);
            return;
        }
        if self.known_macs.contains(&by) {
            if active {
                tracing::info!(%ip, by = %by, "another node announced one of our addresses");
            }
            return;
        }
        let probe = self.probing.remove(&ip);
        let interface = match (&probe, self.held.get(&ip)) {
            (Some(p), _) => p.interface.clone(),
            (None, Some(h)) if h.active.is_some() => h.target.interface.clone(),
            _ => return,
        };
        // Withdraw an active address; it stays held (inactive) for the rechecks.
        if active && let Some(mut held) = self.held.remove(&ip) {
            if let Err(e) = self.deactivate(shared, ip, &held) {
                shared.counters.error(e.category());
                tracing::warn!(%ip, error = %e, "withdrawing an address in conflict");
            }
            held.active = None;
            self.held.insert(ip, held);
            if let Err(e) = self.addrs.flush() {
                tracing::warn!(error = %e, "writing the address record");
            }
        }
        let now = Instant::now();
        let since = self
            .conflicts
            .get(&ip)
            .map_or_else(SystemTime::now, |c| c.since);
        if !self.conflicts.contains_key(&ip) {
            shared.counters.conflicts.inc();
            tracing::warn!(%ip, %interface, other = %by,
                "another host on the LAN uses this address: not announcing it; probing again every {}s",
                CONFLICT_RECHECK.as_secs());
        }
        self.conflicts.insert(
            ip,
            ConflictState {
                interface,
                mac: by,
                since,
                recheck_at: now + CONFLICT_RECHECK,
            },
        );
    }

    /// Starts probing `ip` on `interface`: nothing is announced until [`PROBE_WAIT`] passed
    /// without another host answering.
    fn start_probe(
        &mut self,
        shared: &Arc<Shared>,
        ip: IpAddr,
        interface: &Interface,
        mac: MacAddr,
    ) -> Result<(), NetError> {
        self.link(shared, interface, mac)?;
        let mut probing = Probing {
            ifindex: interface.index,
            interface: interface.name.clone(),
            mac,
            started: Instant::now(),
            sent: 0,
        };
        // Listen before asking, so no answer falls between the two.
        let mut table = shared.table();
        table.probing.insert(ip, (probing.ifindex, mac));
        drop(table);
        self.send_probe(shared, ip, &mut probing);
        tracing::debug!(%ip, interface = %interface.name, "probing for another host using the address");
        self.probing.insert(ip, probing);
        Ok(())
    }

    fn send_probe(&self, shared: &Shared, ip: IpAddr, probing: &mut Probing) {
        let frame = match ip {
            IpAddr::V4(v4) => packet::arp_request(probing.mac, std::net::Ipv4Addr::UNSPECIFIED, v4),
            IpAddr::V6(v6) => packet::neighbor_solicit(probing.mac, Ipv6Addr::UNSPECIFIED, v6),
        };
        probing.sent += 1;
        match self.links.get(&probing.interface) {
            Some(link) if link.index == probing.ifindex => {
                if let Err(e) = link.socket.send(&frame) {
                    shared.counters.error("send");
                    tracing::warn!(%ip, interface = %probing.interface, error = %e, "sending a probe");
                }
            }
            _ => {}
        }
    }

    /// Sends the probes that are due, announces the addresses whose probe ended without an
    /// answer, and starts probing again the conflicts due for a recheck. Returns whether
    /// anything changed.
    fn probes_due(&mut self, shared: &Arc<Shared>, now: Instant) -> bool {
        let mut changed = false;
        let ips: Vec<IpAddr> = self.probing.keys().copied().collect();
        for ip in ips {
            let Some(mut probing) = self.probing.remove(&ip) else {
                continue;
            };
            if now >= probing.started + PROBE_WAIT {
                changed = true;
                if self.conflicts.remove(&ip).is_some() {
                    tracing::info!(%ip, interface = %probing.interface, "no other host answers for the address any more: announcing it");
                }
                self.finish_probe(shared, ip, &probing);
                continue;
            }
            if PROBES
                .get(probing.sent)
                .is_some_and(|offset| now >= probing.started + *offset)
            {
                self.send_probe(shared, ip, &mut probing);
            }
            self.probing.insert(ip, probing);
        }
        let due: Vec<IpAddr> = self
            .conflicts
            .iter()
            .filter(|(ip, c)| now >= c.recheck_at && !self.probing.contains_key(ip))
            .map(|(ip, _)| *ip)
            .collect();
        if !due.is_empty() {
            changed = true;
            if let Err(e) = self.activate_pending(shared) {
                shared.counters.error(e.category());
                tracing::warn!(error = %e, "probing addresses in conflict again");
            }
            // The next recheck is a full period away, whether a probe started (it ends within
            // PROBE_WAIT, by announcing or by a new claim that resets this) or not (the
            // interface is missing): a recheck time left in the past would wake the engine
            // in a loop.
            for ip in due {
                if let Some(conflict) = self.conflicts.get_mut(&ip) {
                    conflict.recheck_at = now + CONFLICT_RECHECK;
                }
            }
        }
        changed
    }

    /// A probe ended without an answer: announce the address (if still wanted there).
    fn finish_probe(&mut self, shared: &Arc<Shared>, ip: IpAddr, probing: &Probing) {
        let Some(held) = self.held.get(&ip) else {
            return;
        };
        if held.active.is_some() || held.target.interface != probing.interface {
            return;
        }
        let target = held.target.clone();
        let net = self.net.borrow().clone();
        let Some(interface) = net
            .interface(&probing.interface)
            .filter(|i| i.index == probing.ifindex)
        else {
            return; // the interface went away: the next enforcement starts over
        };
        if let Err(e) = self.activate(shared, ip, &target, interface, probing.mac) {
            shared.counters.error(e.category());
            tracing::warn!(%ip, interface = %probing.interface, error = %e, "could not announce");
        }
        if let Err(e) = self.addrs.flush() {
            tracing::warn!(error = %e, "writing the address record");
        }
    }

    /// While yielding, another MAC announced an active address: drop it.
    fn yield_address(&mut self, shared: &Arc<Shared>, ip: IpAddr, by: MacAddr) {
        let Some(held) = self.held.remove(&ip) else {
            return;
        };
        if held.active.is_none() {
            self.held.insert(ip, held);
            return;
        }
        tracing::warn!(%ip, by = %by, "another node announced this address while our lease is expired; yielding it");
        shared.counters.yielded.inc();
        self.yielded.insert(ip);
        if let Err(e) = self.deactivate(shared, ip, &held) {
            shared.counters.error(e.category());
            tracing::warn!(%ip, error = %e, "removing a yielded address");
        }
        if let Err(e) = self.addrs.flush() {
            tracing::warn!(error = %e, "writing the address record");
        }
        self.close_unused_links();
    }

    fn shutdown(&mut self, shared: &Arc<Shared>) -> Result<(), NetError> {
        let mut first_error = None;
        let held = std::mem::take(&mut self.held);
        for (ip, h) in &held {
            if let Err(e) = self.deactivate(shared, *ip, h) {
                first_error.get_or_insert(e);
            }
        }
        self.desired.clear();
        // Everything of ours, including leftovers never taken by this run.
        self.cleaned_up = true;
        if let Err(e) = self.enforce_addresses(shared) {
            first_error.get_or_insert(e);
        }
        self.links.clear();
        tracing::info!("announcer stopped; our addresses removed");
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Sends one gratuitous ARP / unsolicited NA for `ip` and schedules the next one.
fn announce(
    shared: &Arc<Shared>,
    socket: &RawSocket,
    ip: IpAddr,
    active: &mut Active,
    now: Instant,
    ifname: &str,
) {
    let frame = match ip {
        IpAddr::V4(v4) => packet::gratuitous_arp(active.mac, v4),
        IpAddr::V6(v6) => packet::unsolicited_advert(active.mac, v6),
    };
    match socket.send(&frame) {
        Ok(()) => {
            shared.counters.gratuitous.inc();
        }
        Err(e) => {
            shared.counters.error("send");
            tracing::warn!(%ip, interface = %ifname, error = %e, "sending gratuitous announcement");
        }
    };
    active.next_announce = match BURST.get(active.sent) {
        Some(offset) => active.gained + *offset,
        None => now + shared.config.garp_interval,
    };
    active.sent += 1;
}

/// Answers ARP requests and neighbour solicitations on one interface, and watches for other
/// MACs announcing our addresses.
async fn reader(
    shared: Arc<Shared>,
    ifname: String,
    ifindex: u32,
    mac: MacAddr,
    socket: Arc<RawSocket>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let received = match socket.recv(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                shared.counters.error("receive");
                tracing::warn!(interface = %ifname, error = %e, "raw socket receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if received.pkttype == PACKET_OUTGOING {
            continue;
        }
        let Ok(frame) = packet::parse(&buf[..received.len.min(buf.len())]) else {
            continue;
        };
        if frame.eth_src == mac {
            continue;
        }
        match frame.payload {
            Payload::Arp(arp) => {
                if arp.sender_mac != mac && !arp.sender_ip.is_unspecified() {
                    claimed(&shared, IpAddr::V4(arp.sender_ip), arp.sender_mac, ifindex);
                }
                if arp.op == packet::ArpOp::Request
                    && !arp.is_gratuitous()
                    && shared.table().answers(IpAddr::V4(arp.target_ip), ifindex)
                {
                    match socket.send(&packet::arp_reply(mac, &arp)) {
                        Ok(()) => {
                            shared.counters.arp_replies.inc();
                        }
                        Err(e) => {
                            shared.counters.error("send");
                            tracing::debug!(interface = %ifname, error = %e, "sending ARP reply");
                        }
                    }
                }
            }
            Payload::Ndp(ndp) => match ndp.kind {
                NdpKind::Solicitation => {
                    if shared.table().answers(IpAddr::V6(ndp.target), ifindex) {
                        match socket.send(&packet::neighbor_advert_reply(mac, &ndp, frame.eth_src))
                        {
                            Ok(()) => {
                                shared.counters.ndp_replies.inc();
                            }
                            Err(e) => {
                                shared.counters.error("send");
                                tracing::debug!(interface = %ifname, error = %e, "sending neighbour advertisement");
                            }
                        }
                    }
                }
                NdpKind::Advertisement { .. } => {
                    let by = ndp.lladdr.unwrap_or(frame.eth_src);
                    if by != mac {
                        claimed(&shared, IpAddr::V6(ndp.target), by, ifindex);
                    }
                }
            },
        }
    }
}

/// Another MAC announced or answered for `ip` on `ifindex`: remember it (for a handover in
/// progress) and let the engine decide (yield, conflict, or nothing).
fn claimed(shared: &Shared, ip: IpAddr, by: MacAddr, ifindex: u32) {
    {
        let mut table = shared.table();
        let ours = |(index, mac): (u32, MacAddr)| index == ifindex && mac != by;
        let active = table
            .active
            .get(&ip)
            .is_some_and(|e| ours((e.ifindex, e.mac)));
        let probing = table.probing.get(&ip).is_some_and(|p| ours(*p));
        if !active && !probing {
            return;
        }
        if active {
            table.claims.insert(ip, (Instant::now(), by));
        }
    }
    shared.counters.claims_seen.inc();
    let _ = shared.claims.send((ip, by));
    shared.claimed.notify_waiters();
}
