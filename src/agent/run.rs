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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::AgentArgs;
use super::announcer::{Announcer, AnnouncerConfig, Conflict, NetCounters, Target};
use super::control_plane::ControlPlaneError;
use super::control_plane::shares::{AnnouncerShares, Share};
use super::metrics::{AgentMetrics, ChangeLabel};
use super::net::NetError;
use super::net::address::Marker;
use super::net::links::{LinkWatch, NetState};
use super::net::packet::MacAddr;
use super::view::{
    self, AGENT_LEASE_LABEL, DEFAULT_INTERFACE_ANNOTATION, INTERFACES_ANNOTATION,
    LEASE_DURATION_MS_ANNOTATION, LeaseFacts, MACS_ANNOTATION,
};
use crate::admin::{self, Readiness};
use crate::api::{IPAllocation, L2Announcement};
use crate::cache::valid;
use crate::core::category::Category;
use crate::core::ownership::{self, AnnouncementRule, Liveness, NodeView};
use crate::core::standing::{self, Announce, Standing};

/// Field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "vipam-agent";

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connecting to the Kubernetes API: {0}")]
    Connect(#[source] kube::Error),
    #[error("starting the announcer: {0}")]
    Announcer(#[source] NetError),
    #[error("serving the admin endpoints on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--node-name (or NODE_NAME) is required without --control-plane")]
    MissingNodeName,
    #[error("control-plane VIP: {0}")]
    ControlPlane(#[from] ControlPlaneError),
}

impl Category for AgentError {
    fn category(&self) -> &'static str {
        match self {
            AgentError::Connect(_) => "connect",
            AgentError::Announcer(_) => "announcer",
            AgentError::Admin { .. } => "admin",
            AgentError::MissingNodeName => "usage",
            AgentError::ControlPlane(err) => err.category(),
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT, then hands its addresses over.
/// With --control-plane, runs the control-plane VIP instead (and the Service announcer only
/// with --announce-services; see `super::control_plane`).
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    if args.control_plane.control_plane {
        return super::control_plane::run(args).await;
    }
    if args.node_name.is_empty() {
        return Err(AgentError::MissingNodeName);
    }
    let client = Client::try_default().await.map_err(AgentError::Connect)?;
    run_with(args, client, shutdown_signal()).await
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: handing over"),
        _ = int.recv() => tracing::info!("SIGINT: handing over"),
    }
}

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
                Err(message) => {
                    tracing::debug!(%message, "skipping an invalid L2Announcement");
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

    /// Whether this node's agent must hold a Lease (some L2Announcement selects the node).
    fn needs_lease(&self) -> bool {
        self.own_node()
            .is_some_and(|node| ownership::needs_lease(&node, &self.rules()))
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

    /// Who owns what, from the current view.
    fn owners(&self) -> BTreeMap<IpAddr, ownership::Owner> {
        let now = self.now();
        let rules = self.rules();
        let nodes: Vec<NodeView> = {
            let book = lock(&self.leases);
            self.nodes
                .state()
                .iter()
                .map(|node| {
                    let facts = self.facts(&book, &node.name_any());
                    view::node_view(node, facts.as_ref(), &book.liveness, now)
                })
                .collect()
        };
        let services = self.services.state();
        let index = view::index_services(services.iter().map(|s| s.as_ref()));
        let slices = self.slices.state();
        let ready = view::ready_nodes(slices.iter().map(|s| s.as_ref()));
        let addresses: Vec<_> = valid(&self.allocations)
            .iter()
            .filter_map(|a| view::address_view(a, &index, &ready))
            .collect();
        ownership::assign(&addresses, &rules, &nodes)
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
    let shared = Arc::new(Shared {
        args: args.clone(),
        epoch: Instant::now(),
        allocations,
        services,
        slices,
        nodes,
        l2,
        leases: Mutex::new(LeaseBook::default()),
        lease_watch_ok: AtomicBool::new(false),
        own: Mutex::new(OwnLease::default()),
        changed: Notify::new(),
        metrics: metrics.clone(),
        links: OnceLock::new(),
    });
    spawn_reflector(
        Api::<DeserializeGuard<IPAllocation>>::all(client.clone()),
        allocation_writer,
        watcher::Config::default(),
        trim_metadata,
        allocation_fingerprint,
        shared.clone(),
    );
    spawn_reflector(
        Api::<Service>::all(client.clone()),
        service_writer,
        watcher::Config::default(),
        trim_metadata,
        service_fingerprint,
        shared.clone(),
    );
    spawn_reflector(
        Api::<EndpointSlice>::all(client.clone()),
        slice_writer,
        watcher::Config::default(),
        trim_metadata,
        slice_fingerprint,
        shared.clone(),
    );
    spawn_reflector(
        Api::<Node>::all(client.clone()),
        node_writer,
        watcher::Config::default(),
        trim_node,
        node_fingerprint,
        shared.clone(),
    );
    spawn_reflector(
        Api::<DeserializeGuard<L2Announcement>>::all(client.clone()),
        l2_writer,
        watcher::Config::default(),
        trim_metadata,
        l2_fingerprint,
        shared.clone(),
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
        report_tx,
        stop_rx.clone(),
    ));

    shutdown.await;
    // Graceful handover: stop deciding (so losing our own Lease does not silence us early),
    // give up the Lease so the others re-decide at once, keep answering until they announce.
    let _ = stop_tx.send(true);
    let _ = decide_task.await;
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

/// Drops what the agent never reads from cached objects (managedFields and annotations can
/// be most of an object's size), so memory follows the number of objects, not their history.
fn trim_metadata<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}

/// A Node as the agent needs it: labels and conditions (not images, addresses, capacity...).
fn trim_node(node: &mut Node) {
    trim_metadata(node);
    node.spec = None;
    if let Some(status) = node.status.as_mut() {
        *status = k8s_openapi::api::core::v1::NodeStatus {
            conditions: status.conditions.take(),
            ..Default::default()
        };
    }
}

/// A hash of what ownership reads from an object: events that change nothing of it (status
/// writes, unrelated fields) do not trigger a new computation.
fn fingerprint(parts: impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(parts)
}

fn allocation_fingerprint(guard: &DeserializeGuard<IPAllocation>) -> u64 {
    match &guard.0 {
        Ok(a) => fingerprint((
            serde_json::to_string(&a.spec).unwrap_or_default(),
            a.status
                .as_ref()
                .and_then(|s| s.phase.as_ref())
                .map(|p| format!("{p:?}")),
        )),
        Err(invalid) => {
            tracing::warn!(kind = "IPAllocation", name = %invalid.metadata.name.clone().unwrap_or_default(), error = %invalid.error, "skipping a malformed object");
            fingerprint(&invalid.error)
        }
    }
}

fn service_fingerprint(service: &Service) -> u64 {
    fingerprint((
        service.labels(),
        service
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.as_ref()),
    ))
}

fn slice_fingerprint(slice: &EndpointSlice) -> u64 {
    let endpoints: Vec<(Option<&String>, Option<bool>)> = slice
        .endpoints
        .iter()
        .map(|e| {
            (
                e.node_name.as_ref(),
                e.conditions.as_ref().and_then(|c| c.ready),
            )
        })
        .collect();
    fingerprint((slice.labels().get("kubernetes.io/service-name"), endpoints))
}

fn node_fingerprint(node: &Node) -> u64 {
    let conditions: Vec<(&String, &String)> = node
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .map(|c| (&c.type_, &c.status))
        .collect();
    fingerprint((node.labels(), conditions))
}

fn l2_fingerprint(guard: &DeserializeGuard<L2Announcement>) -> u64 {
    match &guard.0 {
        Ok(l2) => fingerprint(serde_json::to_string(&l2.spec).unwrap_or_default()),
        Err(invalid) => {
            tracing::warn!(kind = "L2Announcement", name = %invalid.metadata.name.clone().unwrap_or_default(), error = %invalid.error, "skipping a malformed object");
            fingerprint(&invalid.error)
        }
    }
}

fn spawn_reflector<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    relevant: fn(&K) -> u64,
    shared: Arc<Shared>,
) where
    K: Resource<DynamicType = ()>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).to_string();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff().modify(trim));
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut seen: std::collections::HashMap<(Option<String>, String), u64> =
            std::collections::HashMap::new();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    let key = (object.meta().namespace.clone(), object.name_any());
                    let print = relevant(&object);
                    if seen.insert(key, print) != Some(print) {
                        shared.changed.notify_one();
                    }
                }
                Ok(watcher::Event::Delete(object)) => {
                    seen.remove(&(object.meta().namespace.clone(), object.name_any()));
                    shared.changed.notify_one();
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => shared.changed.notify_one(),
                Err(err) => {
                    tracing::warn!(%kind, error = %err, "watch error; retrying with backoff")
                }
            }
        }
    });
}

/// Watches the agents' Leases: every new resourceVersion is a sign of life, judged by this
/// agent's clock. After a watch error, the first event back refreshes every Lease (renewals
/// may have been missed meanwhile), and ownership stays frozen until then.
async fn watch_leases(client: Client, shared: Arc<Shared>, synced: Arc<Notify>) {
    let api: Api<Lease> = Api::namespaced(client, &shared.args.namespace);
    let config = watcher::Config::default().labels(&format!("{AGENT_LEASE_LABEL}=true"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut relisting: Option<BTreeSet<String>> = None;
    let mut after_error = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                if shared.lease_watch_ok.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %err, "lease watch failed: ownership frozen until it is back");
                }
                after_error = true;
                shared.changed.notify_one();
                continue;
            }
        };
        let now = shared.now();
        let fallback = shared.args.lease_duration;
        let mut relevant = true;
        let mut after_refresh = false;
        {
            let mut book = lock(&shared.leases);
            if after_error {
                book.liveness.refresh_all(now);
                after_error = false;
                after_refresh = true;
            }
            // Whether ownership may change: a node became live or not, or what it reports
            // changed. A renewal of a live Lease changes nothing (expiry has its deadline).
            let apply = |book: &mut LeaseBook, lease: &Lease| -> bool {
                let Some(facts) = view::lease_facts(lease, fallback) else {
                    return false;
                };
                let was_live = book.liveness.is_live(&facts.node, now);
                book.liveness
                    .observe(&facts.node, &facts.version, facts.duration, facts.held, now);
                let is_live = book.liveness.is_live(&facts.node, now);
                let same = book.facts.get(&facts.node).is_some_and(|old| {
                    (
                        &old.interfaces,
                        &old.default_interface,
                        old.held,
                        old.duration,
                        &old.macs,
                    ) == (
                        &facts.interfaces,
                        &facts.default_interface,
                        facts.held,
                        facts.duration,
                        &facts.macs,
                    )
                });
                book.facts.insert(facts.node.clone(), facts);
                was_live != is_live || !same
            };
            match event {
                watcher::Event::Init => relisting = Some(BTreeSet::new()),
                watcher::Event::InitApply(lease) => {
                    if let (Some(seen), Some(facts)) =
                        (relisting.as_mut(), view::lease_facts(&lease, fallback))
                    {
                        seen.insert(facts.node);
                    }
                    relevant = apply(&mut book, &lease);
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = relisting.take() {
                        let gone: Vec<String> = book
                            .facts
                            .keys()
                            .filter(|n| !seen.contains(*n))
                            .cloned()
                            .collect();
                        for node in gone {
                            book.facts.remove(&node);
                            book.liveness.forget(&node);
                        }
                    }
                    shared.lease_watch_ok.store(true, Ordering::Release);
                    synced.notify_waiters();
                }
                watcher::Event::Apply(lease) => {
                    relevant = apply(&mut book, &lease);
                    shared.lease_watch_ok.store(true, Ordering::Release);
                }
                watcher::Event::Delete(lease) => {
                    if let Some(facts) = view::lease_facts(&lease, fallback) {
                        book.facts.remove(&facts.node);
                        book.liveness.forget(&facts.node);
                    }
                    shared.lease_watch_ok.store(true, Ordering::Release);
                }
            }
        }
        if relevant || after_refresh {
            shared.changed.notify_one();
        }
    }
}

fn micro_time_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// The interfaces this node can announce on now (Ethernet address, up, carrier) and the
/// default route's interface when it is one of them.
fn usable_interfaces(net: &NetState) -> (Vec<String>, Option<String>) {
    let usable = net.usable();
    let default = net
        .default_interface
        .clone()
        .filter(|name| usable.contains(name));
    (usable, default)
}

/// The Lease this node's agent writes.
fn lease_object(shared: &Shared) -> Lease {
    let args = &shared.args;
    let net = shared.links.get().map(LinkWatch::current);
    let (interfaces, default) = net.as_deref().map(usable_interfaces).unwrap_or_default();
    let default = default.unwrap_or_default();
    let macs: BTreeSet<String> = net
        .iter()
        .flat_map(|net| net.interfaces.iter())
        .filter(|i| i.usable())
        .filter_map(|i| i.mac.map(|m| m.to_string()))
        .collect();
    let duration_ms = args.lease_duration.as_millis().max(1) as u64;
    Lease {
        metadata: ObjectMeta {
            name: Some(view::lease_name(&args.node_name)),
            namespace: Some(args.namespace.clone()),
            labels: Some(BTreeMap::from([(
                AGENT_LEASE_LABEL.to_string(),
                "true".to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (INTERFACES_ANNOTATION.to_string(), interfaces.join(",")),
                (DEFAULT_INTERFACE_ANNOTATION.to_string(), default),
                (
                    MACS_ANNOTATION.to_string(),
                    macs.into_iter().collect::<Vec<_>>().join(","),
                ),
                (
                    LEASE_DURATION_MS_ANNOTATION.to_string(),
                    duration_ms.to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(args.node_name.clone()),
            lease_duration_seconds: Some(duration_ms.div_ceil(1000) as i32),
            renew_time: Some(micro_time_now()),
            ..LeaseSpec::default()
        }),
    }
}

/// One renewal: a merge patch (one API write), or a create the first time.
async fn renew_once(api: &Api<Lease>, shared: &Shared) -> Result<(), kube::Error> {
    let lease = lease_object(shared);
    let name = lease.metadata.name.clone().unwrap_or_default();
    let params = PatchParams::default();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..params
    };
    match api.patch(&name, &params, &Patch::Merge(&lease)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let mut lease = lease;
            lease
                .spec
                .get_or_insert_with(LeaseSpec::default)
                .acquire_time = Some(micro_time_now());
            let post = PostParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PostParams::default()
            };
            api.create(&post, &lease).await.map(|_| ())
        }
        Err(err) => Err(err),
    }
}

/// Renews this node's Lease every --renew-interval while some L2Announcement selects the node
/// (API writes per second = eligible nodes / renew interval, whatever the number of Services),
/// and at once when the usable interfaces change (a link lost or regained carrier), so the
/// other agents move this node's addresses without waiting for the Lease to expire.
async fn renew_lease(client: Client, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &shared.args.namespace);
    let mut tick = tokio::time::interval(shared.args.renew_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut net = shared.links.get().map(LinkWatch::subscribe);
    let mut written = net
        .as_ref()
        .map(|net| usable_interfaces(&net.borrow()))
        .unwrap_or_default();
    loop {
        let links_changed = async {
            match net.as_mut() {
                Some(net) => net.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            ok = links_changed => {
                if !ok {
                    net = None;
                    continue;
                }
                let now = net
                    .as_mut()
                    .map(|net| usable_interfaces(&net.borrow_and_update()))
                    .unwrap_or_default();
                if now == written {
                    continue;
                }
                tracing::info!(usable = ?now.0, default = ?now.1, "usable interfaces changed: renewing the lease at once");
                written = now;
                // This node's own view follows the links at once.
                shared.changed.notify_one();
                tick.reset();
            }
            _ = stop.changed() => return,
        }
        if !shared.needs_lease() {
            let held = lock(&shared.own).held;
            if held {
                tracing::info!("no L2Announcement selects this node any more: releasing its lease");
                release_lease_api(&api, &shared).await;
            }
            continue;
        }
        let started = Instant::now();
        lock(&shared.own).in_flight = Some(started);
        // A renewal slower than the interval is as good as failed: the next one starts fresh.
        let limit = shared.args.renew_interval.max(Duration::from_millis(500));
        let result = tokio::time::timeout(limit, renew_once(&api, &shared)).await;
        // Ownership is computed again only when the lease's health changes (or on the first
        // renewal); a routine renewal changes nothing.
        let health_changed = {
            let mut own = lock(&shared.own);
            own.in_flight = None;
            let failing_now = !matches!(result, Ok(Ok(())));
            let changed = own.failing != failing_now || own.first_renewed.is_none();
            own.failing = failing_now;
            changed
        };
        match result {
            Ok(Ok(())) => {
                shared
                    .metrics
                    .lease_renew_seconds
                    .observe(started.elapsed().as_secs_f64());
                AgentMetrics::outcome(&shared.metrics.lease_renewals, "ok");
                let mut own = lock(&shared.own);
                own.renewed = Some(started);
                own.first_renewed.get_or_insert(started);
                own.held = true;
                if failing {
                    tracing::info!("lease renewed again");
                    failing = false;
                }
            }
            Ok(Err(err)) => {
                AgentMetrics::outcome(&shared.metrics.lease_renewals, "api_error");
                if !failing {
                    tracing::warn!(error = %err, "renewing this node's lease failed; keeping what is announced");
                    failing = true;
                }
            }
            Err(_) => {
                AgentMetrics::outcome(&shared.metrics.lease_renewals, "timeout");
                if !failing {
                    tracing::warn!(
                        "renewing this node's lease timed out; keeping what is announced"
                    );
                    failing = true;
                }
            }
        }
        if health_changed {
            shared.changed.notify_one();
        }
    }
}

async fn release_lease_api(api: &Api<Lease>, shared: &Shared) {
    let name = view::lease_name(&shared.args.node_name);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(err) => tracing::warn!(error = %err, "releasing this node's lease"),
    }
    let mut own = lock(&shared.own);
    own.held = false;
    own.renewed = None;
}

/// Gives up this node's Lease (bounded: at shutdown the API may be unreachable).
async fn release_lease(client: &Client, shared: &Shared) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &shared.args.namespace);
    if tokio::time::timeout(Duration::from_secs(1), release_lease_api(&api, shared))
        .await
        .is_err()
    {
        tracing::warn!(
            "releasing this node's lease timed out; the others take over when it expires"
        );
    }
}

/// What this node announces and since when (for status.announcer).
type Held = BTreeMap<IpAddr, (Target, SystemTime)>;

/// Computes ownership on every change and at every deadline, and hands this node's share to
/// the announcer. Frozen (nothing gained or lost) while this node's own Lease is stale or the
/// lease watch is down: the data plane outlives the control plane.
async fn decide(
    shared: Arc<Shared>,
    announcer: Arc<Share>,
    report: watch::Sender<Held>,
    mut stop: watch::Receiver<bool>,
) {
    let me = shared.args.node_name.clone();
    let mut held: Held = BTreeMap::new();
    let mut applied = false;
    let mut was_frozen = false;
    let mut retry_at: Option<Instant> = None;
    let mut known_macs = BTreeSet::new();
    loop {
        // The cluster's agents, by MAC: their announcements are takeovers, not conflicts.
        let macs: BTreeSet<MacAddr> = lock(&shared.leases)
            .facts
            .values()
            .flat_map(|f| f.macs.iter().copied())
            .collect();
        if macs != known_macs {
            announcer.set_known_macs(macs.clone());
            known_macs = macs;
        }
        let own_healthy = shared.own_lease_healthy();
        let watch_ok = shared.lease_watch_ok.load(Ordering::Acquire);
        let (own_lapsed, first_renewal_settled, renewal_failing) = {
            let own = lock(&shared.own);
            (
                own.renewed
                    .is_none_or(|at| at.elapsed() >= shared.args.lease_duration),
                own.first_renewed
                    .is_some_and(|at| at.elapsed() >= shared.args.renew_interval),
                own.failing,
            )
        };
        let verdict = standing::verdict(&Standing {
            needs_lease: shared.needs_lease(),
            own_lapsed,
            own_healthy,
            lease_watch_ok: watch_ok,
            applied,
            first_renewal_settled,
            renewal_failing,
        });
        announcer.set_yield_to_others(verdict.yield_to_others);
        let frozen = verdict.frozen;
        if was_frozen && !frozen {
            // Back from an outage: renewals of the others may have been missed meanwhile, so
            // every Lease gets a full duration before anything moves.
            lock(&shared.leases).liveness.refresh_all(shared.now());
            tracing::info!("lease renewals and the lease watch are back: ownership unfrozen");
        } else if frozen && !was_frozen && applied {
            tracing::warn!(
                own_lease_healthy = own_healthy,
                lease_watch_ok = watch_ok,
                "ownership frozen: keeping what this node announces"
            );
        }
        was_frozen = frozen;
        shared.metrics.frozen.set(i64::from(frozen));
        if verdict.announce != Announce::Keep {
            let desired: BTreeMap<IpAddr, Target> = if verdict.announce == Announce::Nothing {
                BTreeMap::new()
            } else {
                shared
                    .owners()
                    .into_iter()
                    .filter(|(_, owner)| owner.node == me)
                    .map(|(ip, owner)| {
                        (
                            ip,
                            Target {
                                interface: owner.interface,
                                mode: owner.mode,
                                probe_first: shared.never_announced(ip),
                            },
                        )
                    })
                    .collect()
            };
            let current: BTreeMap<IpAddr, Target> =
                held.iter().map(|(ip, (t, _))| (*ip, t.clone())).collect();
            if desired != current || !applied || retry_at.is_some() {
                match announcer.set(desired.clone()).await {
                    Ok(()) => {
                        retry_at = None;
                        applied = true;
                        let now = SystemTime::now();
                        let mut gained = 0u64;
                        let mut lost = 0u64;
                        for (ip, target) in &desired {
                            if current.get(ip) != Some(target) {
                                gained += 1;
                                tracing::info!(%ip, interface = %target.interface, mode = target.mode.as_str(), "this node owns the address");
                                held.insert(*ip, (target.clone(), now));
                            }
                        }
                        for ip in current.keys().filter(|ip| !desired.contains_key(ip)) {
                            lost += 1;
                            tracing::info!(%ip, "this node no longer owns the address");
                        }
                        held.retain(|ip, _| desired.contains_key(ip));
                        count_changes(&shared.metrics, gained, lost);
                        shared.metrics.owned_addresses.set(held.len() as i64);
                        let _ = report.send(held.clone());
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, category = err.category(), "applying announcements failed; retrying");
                        retry_at = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        }
        let mut deadline = shared.next_deadline();
        if let Some(at) = retry_at {
            deadline = deadline.min(at);
        }
        tokio::select! {
            _ = shared.changed.notified() => {
                // Let a burst of watch events land before computing again.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = stop.changed() => return,
        }
    }
}

fn count_changes(metrics: &AgentMetrics, gained: u64, lost: u64) {
    for (change, n) in [("gained", gained), ("lost", lost)] {
        if n > 0 {
            metrics
                .ownership_changes
                .get_or_create(&ChangeLabel {
                    change: change.to_string(),
                })
                .inc_by(n);
        }
    }
}

/// Writes `status.announcer` of every IPAllocation this node announces, when it names
/// another node or interface, and `status.conflict` of those it does not announce because
/// another host on the LAN uses them (cleared when that ends, or when this node announces an
/// address another node had found in conflict). Runs apart from `decide`, so a slow API never
/// delays an announcement.
async fn report_announcer(
    client: Client,
    shared: Arc<Shared>,
    announcer: Arc<Share>,
    mut held: watch::Receiver<Held>,
) {
    let api: Api<IPAllocation> = Api::all(client);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    let me = shared.args.node_name.clone();
    loop {
        let snapshot = held.borrow_and_update().clone();
        let active: BTreeMap<IpAddr, SystemTime> = announcer
            .announced()
            .into_iter()
            .map(|a| (a.ip, a.since))
            .collect();
        let conflicts: BTreeMap<IpAddr, Conflict> = announcer
            .conflicts()
            .into_iter()
            .map(|c| (c.ip, c))
            .collect();
        let mut failed = false;
        for (ip, (target, since)) in &snapshot {
            if !held.borrow().contains_key(ip) {
                continue;
            }
            let name = crate::core::names::allocation_name(ip);
            let current = shared
                .allocations
                .get(&reflector::ObjectRef::new(&name))
                .and_then(|guard| guard.0.as_ref().ok().cloned());
            let Some(allocation) = current else { continue };
            let status = allocation.status.unwrap_or_default();
            let patch = match (conflicts.get(ip), &status.conflict) {
                (Some(c), recorded)
                    if recorded.as_ref().is_none_or(|r| {
                        (r.node.as_str(), r.interface.as_str(), r.mac.as_str())
                            != (
                                me.as_str(),
                                c.interface.as_str(),
                                c.mac.to_string().as_str(),
                            )
                    }) =>
                {
                    let since = Timestamp::try_from(c.since).unwrap_or_else(|_| Timestamp::now());
                    Some(serde_json::json!({"status": {"conflict": {
                        "node": me, "interface": c.interface,
                        "mac": c.mac.to_string(), "since": since.to_string(),
                    }}}))
                }
                (Some(_), _) => None,
                (None, Some(r)) if r.node == me || active.contains_key(ip) => {
                    Some(serde_json::json!({"status": {"conflict": null}}))
                }
                (None, _) => None,
            };
            let patch = patch.or_else(|| {
                let recorded = status.announcer.as_ref();
                let announced = active.contains_key(ip) && !conflicts.contains_key(ip);
                let same =
                    recorded.is_some_and(|a| a.node == me && a.interface == target.interface);
                (announced && !same).then(|| {
                    let since = active.get(ip).copied().unwrap_or(*since);
                    let since = Timestamp::try_from(since).unwrap_or_else(|_| Timestamp::now());
                    serde_json::json!({
                        "status": { "announcer": {
                            "node": me,
                            "interface": target.interface,
                            "since": since.to_string(),
                        }}
                    })
                })
            });
            let Some(patch) = patch else { continue };
            match api
                .patch_status(&name, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => AgentMetrics::outcome(&shared.metrics.status_writes, "ok"),
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    AgentMetrics::outcome(&shared.metrics.status_writes, "not_found")
                }
                Err(err) => {
                    AgentMetrics::outcome(&shared.metrics.status_writes, "api_error");
                    tracing::debug!(%ip, error = %err, "writing the IPAllocation status failed; retrying");
                    failed = true;
                    break;
                }
            }
            if held.has_changed().unwrap_or(false) {
                break;
            }
        }
        // Retry failures (and pick up allocations whose status the watch has not shown yet)
        // after a pause; otherwise wait for the next change of what is held.
        // Polling the store (cheap) also catches another node's late write over ours.
        let pause = if failed {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            changed = held.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
