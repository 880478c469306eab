//! The agent's control loop: watches -> `core::ownership` -> announcer, plus this node's
//! liveness Lease and the `status.announcer` reports.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, watch};

use super::AgentArgs;
use super::announcer::{Announcer, AnnouncerConfig, Conflict, NetCounters, Target};
use super::error::AgentError;
use super::metrics::{AgentMetrics, ChangeLabel};
use super::net::address::Marker;
use super::net::links::{LinkWatch, NetState};
use super::net::packet::MacAddr;
use super::shares::{AnnouncerShares, Share};
use super::speaker::{self, SessionNote, Speaker};
use crate::admin::{self, Readiness};
use crate::api::view::{
    self, AGENT_LEASE_LABEL, DEFAULT_INTERFACE_ANNOTATION, INTERFACES_ANNOTATION, LeaseFacts,
    MACS_ANNOTATION,
};
use crate::api::{BGPAnnouncement, BGPPeer, IPAllocation, L2Announcement};
use crate::cache::{
    node_fingerprint, slice_fingerprint, spawn_watched, spec_fingerprint, trim_metadata, trim_node,
    valid,
};
use crate::core::bgp::announce;
use crate::core::category::Category;
use crate::core::ownership::{self, AnnouncementRule, Liveness, NodeView};
use crate::core::standing::{self, Announce, Standing};

mod bgp;
mod caches;
mod decide;
mod lease;
mod report;

use bgp::*;
use caches::*;
use decide::*;
use lease::*;
use report::*;

/// Field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "vipam-agent";

/// This node's agent Lease, as far as this process knows.
#[derive(Default)]
struct OwnLease {
    /// Start of the last successful renewal (the Lease counts from there, conservatively).
    renewed: Option<Instant>,
    /// Start of the first successful renewal.
    first_renewed: Option<Instant>,
    /// Start of the renewal in flight, if any.
    in_flight: Option<Instant>,
    /// The last renewal failed.
    failing: bool,
    held: bool,
}

/// Agent Leases seen through the watch, and their liveness by this agent's clock.
#[derive(Default)]
struct LeaseBook {
    facts: BTreeMap<String, LeaseFacts>,
    liveness: Liveness,
}

/// Everything the loops share.
struct Shared {
    args: AgentArgs,
    epoch: Instant,
    allocations: Store<DeserializeGuard<IPAllocation>>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    l2: Store<DeserializeGuard<L2Announcement>>,
    bgp_peers: Store<DeserializeGuard<BGPPeer>>,
    bgp_announcements: Store<DeserializeGuard<BGPAnnouncement>>,
    /// MD5 passwords read from Secrets, by (namespace, name, key).
    passwords: Mutex<BTreeMap<SecretKey, Result<Vec<u8>, String>>>,
    /// This node's BGP sessions, for the Lease annotation.
    bgp_notes: Mutex<Vec<SessionNote>>,
    /// Set the graceful-restart R bit on the first sessions: the previous agent ran sessions
    /// less than the restart time ago and did not stop gracefully.
    bgp_restarted: bool,
    leases: Mutex<LeaseBook>,
    lease_watch_ok: AtomicBool,
    own: Mutex<OwnLease>,
    changed: Notify,
    metrics: Arc<AgentMetrics>,
    /// The node's links (set once the announcer runs); this node's own eligibility is judged
    /// from them at once, not from its Lease as the watch echoes it back.
    links: OnceLock<LinkWatch>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Valid L2Announcements as rules; invalid ones are skipped (the controller reports them).
    fn rules(&self) -> Vec<AnnouncementRule> {
        valid(&self.l2)
            .iter()
            .filter_map(|l2| match view::rule(l2) {
                Ok(rule) => Some(rule),
                Err(err) => {
                    tracing::debug!(error = %err, label = err.category(), "skipping an invalid L2Announcement");
                    None
                }
            })
            .collect()
    }

    fn own_node(&self) -> Option<NodeView> {
        let node = self
            .nodes
            .get(&reflector::ObjectRef::new(&self.args.node_name))?;
        let book = lock(&self.leases);
        let facts = self.facts(&book, &self.args.node_name);
        Some(view::node_view(
            &node,
            facts.as_ref(),
            &book.liveness,
            self.now(),
        ))
    }

    /// What a node's Lease says; for this node, the interfaces are the ones usable now (a
    /// link that lost carrier stops counting at once, before the Lease write comes back).
    fn facts(&self, book: &LeaseBook, node: &str) -> Option<LeaseFacts> {
        let mut facts = book.facts.get(node).cloned()?;
        if node == self.args.node_name
            && let Some(links) = self.links.get()
        {
            let (interfaces, default_interface) = usable_interfaces(&links.current());
            facts.interfaces = interfaces;
            facts.default_interface = default_interface;
        }
        Some(facts)
    }

    /// Whether this node's agent must hold a Lease (some L2Announcement selects the node, or
    /// it peers by BGP).
    fn needs_lease(&self) -> bool {
        self.own_node().is_some_and(|node| {
            ownership::needs_lease(&node, &self.rules()) || {
                let (peers, announcements) = self.bgp_config();
                announce::peers_with(&node, &peers, &announcements)
            }
        })
    }

    /// How long a renewal may be in flight before the API counts as unreachable: well before
    /// any other Lease can expire in this agent's view, so an outage freezes ownership first.
    fn slow_renewal(&self) -> Duration {
        (self.args.renew_interval / 4).max(Duration::from_millis(50))
    }

    /// Whether this node's Lease is being renewed: renewed less than a lease duration ago, the
    /// last renewal succeeded, and none has been hanging for long. When not, silence from the
    /// other agents' Leases proves nothing (the API may be unreachable from here).
    fn own_lease_healthy(&self) -> bool {
        let own = lock(&self.own);
        own.renewed
            .is_some_and(|at| at.elapsed() < self.args.lease_duration)
            && !own.failing
            && own
                .in_flight
                .is_none_or(|at| at.elapsed() < self.slow_renewal())
    }

    /// Who owns what among `addresses`, from the current view.
    fn owners(&self, addresses: &[ownership::AddressView]) -> BTreeMap<IpAddr, ownership::Owner> {
        let rules = self.rules();
        if rules.is_empty() {
            return BTreeMap::new();
        }
        let nodes = self.node_views();
        ownership::assign(addresses, &rules, &nodes)
    }

    /// Every node as ownership sees it.
    fn node_views(&self) -> Vec<NodeView> {
        let now = self.now();
        let book = lock(&self.leases);
        self.nodes
            .state()
            .iter()
            .map(|node| {
                let facts = self.facts(&book, &node.name_any());
                view::node_view(node, facts.as_ref(), &book.liveness, now)
            })
            .collect()
    }

    /// Every allocated address with its Services.
    fn address_views(&self) -> Vec<ownership::AddressView> {
        let services = self.services.state();
        let index = view::index_services(services.iter().map(|s| s.as_ref()));
        let slices = self.slices.state();
        let ready = view::ready_nodes(slices.iter().map(|s| s.as_ref()));
        valid(&self.allocations)
            .iter()
            .filter_map(|a| view::address_view(a, &index, &ready))
            .collect()
    }

    /// Whether no node has announced `ip` yet (its IPAllocation names no announcer): its first
    /// announcement is preceded by a probe for another host using it. A takeover from another
    /// node is not probed, so failover is not delayed.
    fn never_announced(&self, ip: IpAddr) -> bool {
        let name = crate::core::names::allocation_name(&ip);
        self.allocations
            .get(&reflector::ObjectRef::new(&name))
            .and_then(|guard| guard.0.as_ref().ok().cloned())
            .is_none_or(|a| a.status.and_then(|s| s.announcer).is_none())
    }

    /// When ownership must be computed again although nothing was watched: the next Lease
    /// expiry, or this node's own Lease going stale.
    fn next_deadline(&self) -> Instant {
        let now = self.now();
        let mut deadline = Instant::now() + self.args.resync;
        if let Some(expiry) = lock(&self.leases).liveness.next_expiry(now) {
            deadline = deadline.min(self.epoch + expiry);
        }
        let own = lock(&self.own);
        let stale = own.renewed.map(|at| at + self.args.lease_duration);
        let slow = own.in_flight.map(|at| at + self.slow_renewal());
        let settled = own.first_renewed.map(|at| at + self.args.renew_interval);
        for at in [stale, slow, settled].into_iter().flatten() {
            if at > Instant::now() {
                deadline = deadline.min(at);
            }
        }
        deadline
    }
}

/// Runs the agent on `client` until `shutdown` resolves (tests pass their own).
pub async fn run_with(
    args: AgentArgs,
    client: Client,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    tracing::info!(node = %args.node_name, namespace = %args.namespace, "vipam agent starting");
    let net = NetCounters::default();
    let metrics = Arc::new(AgentMetrics::new(net.clone()));
    let (readiness, flags) = Readiness::new(&["caches", "announcer"]);
    admin::serve(args.admin_addr, metrics.clone(), readiness)
        .await
        .map_err(|source| AgentError::Admin {
            addr: args.admin_addr,
            source,
        })?;
    run_services(
        args,
        client,
        shutdown,
        metrics,
        flags,
        AnnouncerSource::Own(net),
    )
    .await
}

/// Where the Service announcer's announcer comes from.
pub(crate) enum AnnouncerSource {
    /// Its own, started once the caches have synced; handed over and shut down at the end.
    Own(NetCounters),
    /// A share of one the caller owns (the control-plane VIP runs in the same process); the
    /// caller hands over and shuts it down.
    Shared(Share),
}

/// The Service announcer: watches, this node's liveness Lease, ownership, announcements.
/// `flags` are the readiness conditions `caches` and `announcer`.
pub(crate) async fn run_services(
    args: AgentArgs,
    client: Client,
    shutdown: impl Future<Output = ()>,
    metrics: Arc<AgentMetrics>,
    flags: Vec<Arc<AtomicBool>>,
    source: AnnouncerSource,
) -> Result<(), AgentError> {
    let (allocations, allocation_writer) = reflector::store();
    let (services, service_writer) = reflector::store();
    let (slices, slice_writer) = reflector::store();
    let (nodes, node_writer) = reflector::store();
    let (l2, l2_writer) = reflector::store();
    let (bgp_peers, bgp_peer_writer) = reflector::store();
    let (bgp_announcements, bgp_announcement_writer) = reflector::store();
    let bgp_restarted = speaker::restarted_recently(
        &args.state_dir,
        Duration::from_secs(u64::from(crate::core::bgp::config::RESTART_TIME)),
    );
    let shared = Arc::new(Shared {
        args: args.clone(),
        epoch: Instant::now(),
        allocations,
        services,
        slices,
        nodes,
        l2,
        bgp_peers,
        bgp_announcements,
        passwords: Mutex::new(BTreeMap::new()),
        bgp_notes: Mutex::new(Vec::new()),
        bgp_restarted,
        leases: Mutex::new(LeaseBook::default()),
        lease_watch_ok: AtomicBool::new(false),
        own: Mutex::new(OwnLease::default()),
        changed: Notify::new(),
        metrics: metrics.clone(),
        links: OnceLock::new(),
    });
    spawn_watched(
        Api::<DeserializeGuard<IPAllocation>>::all(client.clone()),
        allocation_writer,
        watcher::Config::default(),
        trim_metadata,
        allocation_fingerprint,
        wake(&shared),
    );
    spawn_watched(
        Api::<Service>::all(client.clone()),
        service_writer,
        watcher::Config::default(),
        trim_metadata,
        service_fingerprint,
        wake(&shared),
    );
    spawn_watched(
        Api::<EndpointSlice>::all(client.clone()),
        slice_writer,
        watcher::Config::default(),
        trim_metadata,
        slice_fingerprint,
        wake(&shared),
    );
    spawn_watched(
        Api::<Node>::all(client.clone()),
        node_writer,
        watcher::Config::default(),
        trim_node,
        node_fingerprint,
        wake(&shared),
    );
    spawn_watched(
        Api::<DeserializeGuard<L2Announcement>>::all(client.clone()),
        l2_writer,
        watcher::Config::default(),
        trim_metadata,
        spec_fingerprint::<L2Announcement>,
        wake(&shared),
    );
    spawn_watched(
        Api::<DeserializeGuard<BGPPeer>>::all(client.clone()),
        bgp_peer_writer,
        watcher::Config::default(),
        trim_metadata,
        spec_fingerprint::<BGPPeer>,
        wake(&shared),
    );
    spawn_watched(
        Api::<DeserializeGuard<BGPAnnouncement>>::all(client.clone()),
        bgp_announcement_writer,
        watcher::Config::default(),
        trim_metadata,
        spec_fingerprint::<BGPAnnouncement>,
        wake(&shared),
    );
    let leases_synced = Arc::new(Notify::new());
    tokio::spawn(watch_leases(
        client.clone(),
        shared.clone(),
        leases_synced.clone(),
    ));

    let synced = async {
        let _ = shared.allocations.wait_until_ready().await;
        let _ = shared.services.wait_until_ready().await;
        let _ = shared.slices.wait_until_ready().await;
        let _ = shared.nodes.wait_until_ready().await;
        let _ = shared.l2.wait_until_ready().await;
        let _ = shared.bgp_peers.wait_until_ready().await;
        let _ = shared.bgp_announcements.wait_until_ready().await;
        while !shared.lease_watch_ok.load(Ordering::Acquire) {
            leases_synced.notified().await;
        }
    };
    tokio::pin!(shutdown);
    tokio::select! {
        _ = synced => {}
        _ = &mut shutdown => {
            tracing::info!("stopped before the caches synced; nothing was announced");
            return Ok(());
        }
    }
    flags[0].store(true, Ordering::Release);
    tracing::info!("caches synced");

    let (announcer, own_shares) = match source {
        AnnouncerSource::Own(net) => {
            let announcer = Announcer::start(
                AnnouncerConfig {
                    garp_interval: args.garp_interval,
                    resync: args.resync,
                    state_dir: args.state_dir.clone(),
                    marker: Marker::SERVICES,
                },
                net,
            )
            .await
            .map_err(AgentError::Announcer)?;
            let (shares, mut handles) = AnnouncerShares::new(announcer, &["services"]);
            (handles.remove(0), Some(shares))
        }
        AnnouncerSource::Shared(share) => (share, None),
    };
    let _ = shared.links.set(announcer.links().clone());
    let announcer = Arc::new(announcer);
    flags[1].store(true, Ordering::Release);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (report_tx, report_rx) = watch::channel(BTreeMap::new());
    let sessions_changed = Arc::new(Notify::new());
    let speaker = Arc::new(tokio::sync::Mutex::new(Speaker::new(
        metrics.speaker.clone(),
        sessions_changed.clone(),
    )));
    let password_task = tokio::spawn(fetch_passwords(client.clone(), shared.clone()));
    let trim_task = tokio::spawn(trim_heap());
    let notes_task = tokio::spawn(note_sessions(
        shared.clone(),
        speaker.clone(),
        sessions_changed,
    ));
    let lease_task = tokio::spawn(renew_lease(client.clone(), shared.clone(), stop_rx.clone()));
    let report_task = tokio::spawn(report_announcer(
        client.clone(),
        shared.clone(),
        announcer.clone(),
        report_rx,
    ));
    let decide_task = tokio::spawn(decide(
        shared.clone(),
        announcer.clone(),
        speaker.clone(),
        report_tx,
        stop_rx.clone(),
    ));

    shutdown.await;
    // Graceful handover: stop deciding (so losing our own Lease does not silence us early),
    // give up the Lease so the others re-decide at once, keep answering until they announce.
    let _ = stop_tx.send(true);
    let _ = decide_task.await;
    // BGP first: every route is withdrawn (and acknowledged) while this node still forwards.
    speaker.lock().await.shutdown(BGP_STOP_TIMEOUT).await;
    notes_task.abort();
    password_task.abort();
    trim_task.abort();
    let _ = std::fs::remove_file(speaker::restart_marker(&args.state_dir));
    let _ = lease_task.await;
    report_task.abort();
    let handover = Instant::now();
    release_lease(&client, &shared).await;
    let Some(own_shares) = own_shares else {
        // The owner of the shared announcer hands over for every part at once.
        return Ok(());
    };
    own_shares.hand_over(args.handover_timeout, handover).await;
    Ok(())
}

/// How often freed heap memory is handed back to the kernel.
const HEAP_TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Hands freed heap memory back to the kernel every [`HEAP_TRIM_INTERVAL`]. Each decision pass
/// builds and drops a view of every address, on whichever runtime thread it runs; glibc keeps
/// what is freed in per-thread arenas, so a DaemonSet pod's RSS would hold the peak of every
/// thread (measured: 49–52 MiB against 36 MiB for the data kept, with 5,000 addresses).
async fn trim_heap() {
    let mut tick = tokio::time::interval(HEAP_TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // SAFETY: malloc_trim only walks glibc's own arenas; 0 = keep no extra padding.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    }
}

/// Wakes the decision loop (for [`spawn_watched`]).
fn wake(shared: &Arc<Shared>) -> impl Fn() + Send + 'static {
    let shared = shared.clone();
    move || shared.changed.notify_one()
}
