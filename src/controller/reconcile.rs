//! The leader's reconcilers, as one level-triggered pass over the caches: the ledger's
//! lifecycle (leaves, release, expiry, orphans), Services' status and conditions, and the status
//! of IPPools and L2Announcements. Every decision comes from `core`; a pass writes only what
//! differs from what is stored, so a correct cluster costs zero writes.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{LoadBalancerIngress, ObjectReference, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::DeserializeGuard;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::bgp;
use super::clock::SharedClock;
use super::conditions::{
    self, ADDRESS_CONFLICT, ALLOCATED, ANNOUNCED, CONFLICT, ORPHANED, READY, Wanted,
};
use super::explain;
use super::lease::LeaderGate;
use super::placement::Placement;
use crate::api::view;
use crate::api::{
    AllocationPhase, AnnouncingNode, BGPAnnouncement, BGPPeer, IPAllocation, IPPool,
    L2Announcement, LabelSelectorExt, allocation_object, l2_pool_names, patch_params, pool_spec,
    post_params, service_view, time_from_seconds,
};
use crate::cache::{Caches, valid};
use crate::core::allocate::{Context, Decision, Denial, How, Ledger, LedgerEntry};
use crate::core::category::Category;
use crate::core::lifecycle::{decide_adopting, needs_decision, stale_holdings};
use crate::core::names::allocation_name;
use crate::core::pool::{Pool, PoolSet};
use crate::core::range::Family;
use crate::core::request::{Request, RequestError, RequestPolicy, ServiceRef, format_ip_list};
use crate::webhook::ledger::{LedgerView, WriteError, plan_writes};

/// Field manager of the controller's writes.
pub const FIELD_MANAGER: &str = "vipam-controller";

/// How many times one Service's allocation is retried after losing races in one pass.
const MAX_ATTEMPTS: usize = 8;

/// What the reconcilers need to know.
#[derive(Debug, Clone)]
pub struct ReconcilerConfig {
    pub policy: RequestPolicy,
    pub sticky_release_secs: i64,
    /// This replica (Events' reporting instance).
    pub identity: String,
}

/// Why one write of a pass failed (the pass goes on; the next one retries).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Ledger(#[from] WriteError),
    #[error("allocating for Service {service}: lost {attempts} races in a row; retried next pass")]
    Contention {
        service: ServiceRef,
        attempts: usize,
    },
    #[error("this replica stopped leading")]
    NotLeader,
}

impl crate::core::category::Category for ReconcileError {
    fn category(&self) -> &'static str {
        match self {
            ReconcileError::Api { .. } => "api_error",
            ReconcileError::Ledger(err) => err.category(),
            ReconcileError::Contention { .. } => "contention",
            ReconcileError::NotLeader => "not_leader",
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// The pass did not run: this replica does not lead.
    pub not_leader: bool,
    /// Objects written (creates, replaces, patches, deletes), Events excluded.
    pub writes: usize,
    pub events: usize,
    /// Writes that failed (retried by the next pass), by metric label.
    pub failures: BTreeMap<&'static str, usize>,
    /// Time until the first sticky reservation runs out (the next pass should come then,
    /// not at the next resync).
    pub next_expiry_in: Option<std::time::Duration>,
}

impl PassReport {
    fn failed(&mut self, err: &ReconcileError) {
        tracing::warn!(error = %err, label = err.category(), "reconcile write failed; retried next pass");
        *self.failures.entry(err.category()).or_default() += 1;
    }
}

/// The leader's reconcilers.
pub struct Reconciler {
    client: Client,
    caches: Caches,
    ledger: LedgerView,
    services: Store<DeserializeGuard<Service>>,
    config: ReconcilerConfig,
    clock: SharedClock,
    gate: LeaderGate,
    recorder: Recorder,
    allocations: Api<IPAllocation>,
    /// Who announced each bound address at the last pass (node, interface); `None` until the
    /// first pass as leader, which only remembers (a restart or failover announces nothing new).
    announcers: std::sync::Mutex<Option<BTreeMap<IpAddr, (String, String)>>>,
    /// Nodes, agent Leases and endpoints, to say why nobody announces an address (None: the
    /// conditions say only whether an L2Announcement covers the pool).
    placement: Option<Placement>,
    /// Each Service as this replica last wrote its status, until the watch shows that version
    /// or a newer one: a reconciliation that comes before the watch's event (an IPAllocation
    /// event can) compares with what was written, not with the older cached object, and does
    /// not write the same status twice.
    written: std::sync::Mutex<BTreeMap<ServiceRef, Service>>,
}

/// An address whose announcer appeared or moved: (ip, before, (node, interface), Services).
type AnnouncerChange = (
    IpAddr,
    Option<(String, String)>,
    (String, String),
    Vec<ServiceRef>,
);

/// What one allocation's status lacks (see [`Reconciler::allocation_change`]).
struct AllocationChange {
    name: String,
    set_phase: bool,
    /// `status.announcers` to write, when it differs.
    announcers: Option<Vec<AnnouncingNode>>,
    wanted: Vec<Wanted>,
    existing: Vec<Condition>,
    services: Vec<ServiceRef>,
}

/// One Service as read in a pass.
struct Seen {
    service: Service,
    request: Result<Option<Request>, RequestError>,
}

fn service_reference(service: &ServiceRef) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(service.namespace.clone()),
        name: Some(service.name.clone()),
        ..ObjectReference::default()
    }
}

/// The Service's `status.loadBalancer.ingress` entries.
fn ingress(service: &Service) -> impl Iterator<Item = &LoadBalancerIngress> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
}

fn ingress_ips(service: &Service) -> Vec<IpAddr> {
    ingress(service)
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn ingress_modes(service: &Service) -> Vec<(Option<String>, Option<String>)> {
    ingress(service)
        .map(|i| (i.ip.clone(), i.ip_mode.clone()))
        .collect()
}

fn service_conditions(service: &Service) -> Vec<Condition> {
    service
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
}

fn duration_text(secs: i64) -> String {
    if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

impl Reconciler {
    pub fn new(
        client: Client,
        caches: Caches,
        services: Store<DeserializeGuard<Service>>,
        config: ReconcilerConfig,
        clock: SharedClock,
        gate: LeaderGate,
    ) -> Reconciler {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(config.identity.clone()),
            },
        );
        Reconciler {
            ledger: LedgerView::new(client.clone(), caches.clone()),
            allocations: Api::all(client.clone()),
            client,
            caches,
            services,
            config,
            clock,
            gate,
            recorder,
            announcers: std::sync::Mutex::new(None),
            placement: None,
            written: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Returns once the placement view listed its objects (at once without one).
    pub async fn placement_synced(&self) {
        while self.placement.as_ref().is_some_and(|p| !p.is_synced()) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Explains unserved addresses from `placement` (the controller's own watches).
    pub fn with_placement(mut self, placement: Placement) -> Reconciler {
        self.placement = Some(placement);
        self
    }

    /// Why nobody may announce each address that needs an announcer (see [`explain`]).
    fn unserved(&self, seen: &BTreeMap<ServiceRef, Seen>) -> BTreeMap<IpAddr, explain::Why> {
        let Some(placement) = self.placement.as_ref().filter(|p| p.is_synced()) else {
            return BTreeMap::new();
        };
        let services: Vec<&Service> = seen.values().map(|s| &s.service).collect();
        let l2 = valid(&self.caches.l2announcements);
        let state = self.caches.ledger.lock();
        let allocations: Vec<&IPAllocation> = state
            .ledger
            .entries()
            .filter(|e| !e.is_released())
            .filter_map(|e| state.objects.get(&e.ip))
            .collect();
        let bgp = bgp::BgpConfig::parse(
            &valid(&self.caches.bgp_peers),
            &valid(&self.caches.bgp_announcements),
        );
        explain::unserved(placement, &allocations, &services, &l2, &bgp)
    }

    /// Who announces each bound address (or only `only`): its LAN announcer as the agent
    /// reports it, and the nodes announcing it by BGP ([`bgp::announcers`]). None until the
    /// placement view has listed (nothing is written from an empty view).
    fn announcer_lists(
        &self,
        only: Option<IpAddr>,
    ) -> Option<BTreeMap<IpAddr, Vec<AnnouncingNode>>> {
        let placement = self.placement.as_ref().filter(|p| p.is_synced())?;
        let config = bgp::BgpConfig::parse(
            &valid(&self.caches.bgp_peers),
            &valid(&self.caches.bgp_announcements),
        );
        let allocations: Vec<IPAllocation> = {
            let state = self.caches.ledger.lock();
            state
                .ledger
                .entries()
                .filter(|e| !e.is_released() && only.is_none_or(|ip| e.ip == ip))
                .filter_map(|e| state.objects.get(&e.ip).cloned())
                .collect()
        };
        let nodes = placement.nodes();
        let sessions = placement.sessions();
        let ready = placement.ready_nodes();
        let services: Vec<Service> = valid(&self.services);
        let index = view::index_services(services.iter());
        let mut lists = BTreeMap::new();
        for allocation in &allocations {
            let Ok(ip) = allocation.spec.ip.parse::<IpAddr>() else {
                continue;
            };
            let mut list = Vec::new();
            if let Some(a) = allocation
                .status
                .as_ref()
                .and_then(|s| s.announcer.as_ref())
            {
                list.push(AnnouncingNode {
                    node: a.node.clone(),
                    via: "l2".into(),
                    interface: Some(a.interface.clone()),
                    peers: Vec::new(),
                });
            }
            if !config.is_empty()
                && let Some(address) = view::address_view(allocation, &index, &ready)
            {
                for (node, peers) in bgp::announcers(&address, &config, &nodes, &sessions) {
                    list.push(AnnouncingNode {
                        node,
                        via: "bgp".into(),
                        interface: None,
                        peers,
                    });
                }
            }
            lists.insert(ip, list);
        }
        Some(lists)
    }

    fn context(&self) -> Context {
        Context {
            now: self.clock.now_secs(),
            sticky_release_secs: self.config.sticky_release_secs,
        }
    }

    fn ensure_leader(&self) -> Result<(), ReconcileError> {
        if self.gate.is_leader() {
            Ok(())
        } else {
            Err(ReconcileError::NotLeader)
        }
    }

    async fn event(
        &self,
        report: &mut PassReport,
        service: &ServiceRef,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        if !self.gate.is_leader() {
            return;
        }
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        match self
            .recorder
            .publish(&event, &service_reference(service))
            .await
        {
            Ok(()) => report.events += 1,
            // A namespace being deleted refuses new objects (403, cause NamespaceTerminating)
            // and one already gone answers 404 for it: expected while the namespace controller
            // deletes its Services, not worth a warning per Event.
            Err(kube::Error::Api(status)) if namespace_is_going(&status) => {
                tracing::debug!(%service, reason, "no Event: the namespace is being deleted")
            }
            Err(err) => {
                tracing::warn!(%service, reason, error = %err, "publishing an Event failed")
            }
        }
    }

    /// One reconciliation of everything, Services and IPAllocations included; writes only what
    /// differs. The running controller reconciles each Service ([`Reconciler::reconcile_one`])
    /// and each IPAllocation ([`Reconciler::reconcile_allocation`]) on its own instead, beside
    /// [`Reconciler::global_pass`]; tests and benchmarks use this.
    pub async fn pass(&self) -> PassReport {
        self.run_pass(true).await
    }

    /// What spans objects: Services that went away leave their addresses, sticky reservations
    /// expire, IPPool and L2Announcement status.
    pub async fn global_pass(&self) -> PassReport {
        self.run_pass(false).await
    }

    /// Reconciles one Service: its allocation, `status.loadBalancer` and conditions. A failure
    /// concerns this Service only (its own backoff retries it).
    pub async fn reconcile_one(&self, service: &Service) -> Result<PassReport, ReconcileError> {
        let mut report = PassReport::default();
        if !self.gate.is_leader() {
            report.not_leader = true;
            return Ok(report);
        }
        let ctx = self.context();
        let view = service_view(service);
        let key = view.service_ref();
        let item = Seen {
            request: view.request(&self.config.policy),
            service: self.freshest(&key, service),
        };
        let unserved = self.unserved_of(&key);
        self.reconcile_service(&key, &item, &unserved, &ctx, &mut report)
            .await?;
        Ok(report)
    }

    /// `cached`, or what this replica wrote of it when the cache has not caught up yet. Versions
    /// that cannot be ordered count as caught up (at worst one status is written twice).
    fn freshest(&self, key: &ServiceRef, cached: &Service) -> Service {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mine) = written.get(key) else {
            return cached.clone();
        };
        let version = |s: &Service| s.metadata.resource_version.clone().unwrap_or_default();
        let behind = crate::api::compare_resource_versions(&version(cached), &version(mine))
            .is_some_and(|order| order.is_lt());
        if behind {
            return mine.clone();
        }
        written.remove(key);
        cached.clone()
    }

    /// [`Reconciler::unserved`] for one Service's addresses: only the Services sharing them are
    /// read, so reconciling each Service stays independent of how many there are.
    fn unserved_of(&self, service: &ServiceRef) -> BTreeMap<IpAddr, explain::Why> {
        let Some(placement) = self.placement.as_ref().filter(|p| p.is_synced()) else {
            return BTreeMap::new();
        };
        let allocations: Vec<IPAllocation> = {
            let state = self.caches.ledger.lock();
            state
                .ledger
                .entries_of(service)
                .filter(|e| !e.is_released())
                .filter_map(|e| state.objects.get(&e.ip).cloned())
                .collect()
        };
        if allocations.is_empty() {
            return BTreeMap::new();
        }
        let services: Vec<Service> = allocations
            .iter()
            .flat_map(|a| &a.spec.services)
            .map(|s| (s.namespace.as_str(), s.name.as_str()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter_map(|(namespace, name)| {
                let found = self.services.get(&ObjectRef::new(name).within(namespace))?;
                found.0.as_ref().ok().cloned()
            })
            .collect();
        let allocations: Vec<&IPAllocation> = allocations.iter().collect();
        let services: Vec<&Service> = services.iter().collect();
        let l2 = valid(&self.caches.l2announcements);
        let bgp = bgp::BgpConfig::parse(
            &valid(&self.caches.bgp_peers),
            &valid(&self.caches.bgp_announcements),
        );
        explain::unserved(placement, &allocations, &services, &l2, &bgp)
    }

    async fn run_pass(&self, with_objects: bool) -> PassReport {
        let mut report = PassReport::default();
        if !self.gate.is_leader() {
            report.not_leader = true;
            return report;
        }
        let ctx = self.context();
        let mut seen: BTreeMap<ServiceRef, Seen> = BTreeMap::new();
        for service in valid(&self.services) {
            let view = service_view(&service);
            let request = view.request(&self.config.policy);
            let key = view.service_ref();
            let service = self.freshest(&key, &service);
            seen.insert(key, Seen { service, request });
        }
        // Services gone need no memory of what was written to them.
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| seen.contains_key(key));
        self.leave_stale(&seen, &ctx, &mut report).await;
        self.expire(&ctx, &mut report).await;
        report.next_expiry_in = self
            .caches
            .ledger
            .lock()
            .ledger
            .next_expiry(&ctx)
            .map(|at| {
                // Just past the second at which the entry counts as expired.
                let millis = at.saturating_mul(1000) - self.clock.now_millis() + 50;
                std::time::Duration::from_millis(millis.max(0) as u64)
            });
        let unserved = if with_objects {
            self.unserved(&seen)
        } else {
            BTreeMap::new()
        };
        for (service, item) in seen.iter().filter(|_| with_objects) {
            if let Err(err) = self
                .reconcile_service(service, item, &unserved, &ctx, &mut report)
                .await
            {
                report.failed(&err);
            }
        }
        if with_objects {
            self.allocation_status(&ctx, &mut report).await;
            self.announcements(&mut report).await;
        }
        // Addresses gone need no memory of their announcer.
        {
            let state = self.caches.ledger.lock();
            let mut remembered = self.announcers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(remembered) = remembered.as_mut() {
                remembered.retain(|ip, _| state.ledger.get(ip).is_some_and(|e| !e.is_released()));
            }
        }
        self.pool_status(&ctx, &mut report).await;
        self.l2_status(&ctx, &mut report).await;
        self.bgp_status(&ctx, &mut report).await;
        report
    }

    /// Events `Announced` and `AnnouncementMoved` on the Services of every bound address whose
    /// announcer appeared or changed node.
    async fn announcements(&self, report: &mut PassReport) {
        let ips: Vec<IpAddr> = {
            let state = self.caches.ledger.lock();
            state
                .ledger
                .entries()
                .filter(|e| !e.is_released())
                .map(|e| e.ip)
                .collect()
        };
        for ip in ips {
            self.announcement(ip, report).await;
        }
    }

    /// The announcer of the address at `ip`: who announces it (`IPAllocation.status.announcer`,
    /// written by agents) and the Services on it.
    fn announcer_of(
        state: &crate::cache::LedgerState,
        ip: &IpAddr,
    ) -> (Option<(String, String)>, Vec<ServiceRef>) {
        let Some(entry) = state.ledger.get(ip).filter(|e| !e.is_released()) else {
            return (None, Vec::new());
        };
        let announcer = state
            .objects
            .get(ip)
            .and_then(|o| o.status.as_ref())
            .and_then(|s| s.announcer.as_ref())
            .map(|a| (a.node.clone(), a.interface.clone()));
        let services = entry.members.iter().map(|m| m.service.clone()).collect();
        (announcer, services)
    }

    /// Event `Announced` or `AnnouncementMoved` on the Services of the address at `ip` when its
    /// announcer appeared or changed node since this replica last looked. The first look as
    /// leader only remembers every address's announcer (a restart or failover announces
    /// nothing new).
    async fn announcement(&self, ip: IpAddr, report: &mut PassReport) {
        let change: Option<AnnouncerChange> = {
            let state = self.caches.ledger.lock();
            let mut remembered = self.announcers.lock().unwrap_or_else(|p| p.into_inner());
            let Some(remembered) = remembered.as_mut() else {
                let all = state
                    .ledger
                    .entries()
                    .filter_map(|e| Some((e.ip, Self::announcer_of(&state, &e.ip).0?)))
                    .collect();
                *remembered = Some(all);
                return;
            };
            let (now, services) = Self::announcer_of(&state, &ip);
            let before = match &now {
                Some(now) => remembered.insert(ip, now.clone()),
                None => remembered.remove(&ip),
            };
            now.filter(|(node, _)| before.as_ref().is_none_or(|(n, _)| n != node))
                .map(|now| (ip, before, now, services))
        };
        let Some((ip, before, (node, interface), services)) = change else {
            return;
        };
        let (reason, note) = match before {
            None => (
                "Announced",
                format!("{ip} is announced by node {node} on {interface}"),
            ),
            Some((old_node, _)) => (
                "AnnouncementMoved",
                format!("{ip} moved from node {old_node} to node {node} ({interface})"),
            ),
        };
        for service in &services {
            self.event(report, service, false, reason, note.clone())
                .await;
        }
    }

    /// Services that are gone, not ours, or whose pin moved leave their addresses.
    async fn leave_stale(
        &self,
        seen: &BTreeMap<ServiceRef, Seen>,
        ctx: &Context,
        report: &mut PassReport,
    ) {
        let mut leaving: BTreeMap<IpAddr, Vec<ServiceRef>> = BTreeMap::new();
        {
            let state = self.caches.ledger.lock();
            let mut holders: BTreeMap<&ServiceRef, Vec<IpAddr>> = BTreeMap::new();
            for entry in state.ledger.entries().filter(|e| !e.is_released()) {
                for member in &entry.members {
                    holders.entry(&member.service).or_default().push(entry.ip);
                }
            }
            for (service, held) in holders {
                let request = match seen.get(service) {
                    None => None,
                    Some(Seen {
                        request: Ok(request),
                        ..
                    }) => request.as_ref(),
                    // An unreadable request keeps what it holds until it is fixed.
                    Some(Seen {
                        request: Err(_), ..
                    }) => continue,
                };
                for ip in stale_holdings(request, &held) {
                    leaving.entry(ip).or_default().push(service.clone());
                }
            }
        }
        for (ip, services) in leaving {
            let mut gone = Vec::new();
            for service in services {
                // The cache may lag behind a Service just admitted: only the API says "gone".
                if !seen.contains_key(&service) && !self.confirm_gone(&service, report).await {
                    continue;
                }
                gone.push(service);
            }
            if gone.is_empty() {
                continue;
            }
            match self.leave(ip, &gone, ctx, report).await {
                Ok(()) => {
                    for service in &gone {
                        let note = format!(
                            "{ip} released; it stays reserved for {service} for {}",
                            duration_text(ctx.sticky_release_secs)
                        );
                        self.event(report, service, false, "IPReleased", note).await;
                    }
                }
                Err(err) => report.failed(&err),
            }
        }
    }

    async fn confirm_gone(&self, service: &ServiceRef, report: &mut PassReport) -> bool {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &service.namespace);
        match api.get_opt(&service.name).await {
            Ok(found) => found.is_none(),
            Err(source) => {
                report.failed(&ReconcileError::Api {
                    what: format!("reading Service {service}"),
                    source,
                });
                false
            }
        }
    }

    /// `services` leave the entry at `ip`; an entry left empty becomes Released.
    async fn leave(
        &self,
        ip: IpAddr,
        services: &[ServiceRef],
        ctx: &Context,
        report: &mut PassReport,
    ) -> Result<(), ReconcileError> {
        let (entry, object) = {
            let state = self.caches.ledger.lock();
            match (state.ledger.get(&ip), state.objects.get(&ip)) {
                (Some(entry), Some(object)) => (entry.clone(), object.clone()),
                _ => return Ok(()),
            }
        };
        let mut scratch = Ledger::from_entries([entry.clone()]);
        for service in services {
            scratch.leave(&ip, service, ctx);
        }
        let Some(left) = scratch.get(&ip).cloned() else {
            return Ok(());
        };
        let name = allocation_name(&ip);
        let mut stored = object;
        if left.members != entry.members {
            self.ensure_leader()?;
            let mut replacement = stored.clone();
            replacement.spec = allocation_object(&left).spec;
            stored = self
                .allocations
                .replace(&name, &post_params(FIELD_MANAGER), &replacement)
                .await
                .map_err(|source| ReconcileError::Api {
                    what: format!("updating IPAllocation {name}"),
                    source,
                })?;
            report.writes += 1;
        }
        if left.is_released() {
            self.ensure_leader()?;
            let patch = json!({
                "metadata": {"resourceVersion": stored.metadata.resource_version},
                "status": {
                    "phase": "Released",
                    "releasedAt": left.released_at.map(time_from_seconds),
                }
            });
            stored = self
                .allocations
                .patch_status(&name, &patch_params(FIELD_MANAGER), &Patch::Merge(&patch))
                .await
                .map_err(|source| ReconcileError::Api {
                    what: format!("releasing IPAllocation {name}"),
                    source,
                })?;
            report.writes += 1;
        }
        self.caches.ledger.lock().apply(stored);
        Ok(())
    }

    /// Released entries whose reservation ran out are deleted: this is the only garbage
    /// collector of IPAllocations (cluster-scoped, they cannot have namespaced owners).
    async fn expire(&self, ctx: &Context, report: &mut PassReport) {
        let expired: Vec<(IpAddr, Option<String>)> = {
            let state = self.caches.ledger.lock();
            let mut scratch =
                Ledger::from_entries(state.ledger.entries().filter(|e| e.is_released()).cloned());
            scratch
                .expire(ctx)
                .into_iter()
                .map(|ip| {
                    let rv = state
                        .objects
                        .get(&ip)
                        .and_then(|o| o.metadata.resource_version.clone());
                    (ip, rv)
                })
                .collect()
        };
        for (ip, resource_version) in expired {
            if !self.gate.is_leader() {
                return;
            }
            let name = allocation_name(&ip);
            // The resourceVersion precondition keeps a reclaim that raced this pass.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version,
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match self.allocations.delete(&name, &params).await {
                Ok(_) => {
                    report.writes += 1;
                    self.caches.ledger.lock().delete(&name);
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    self.caches.ledger.lock().delete(&name);
                }
                Err(source) => report.failed(&ReconcileError::Api {
                    what: format!("deleting IPAllocation {name}"),
                    source,
                }),
            }
        }
    }

    /// Bound allocations get `phase: Bound` (the webhook creates them without status), and
    /// those outside every pool are reported (condition + Event) and kept.
    async fn allocation_status(&self, ctx: &Context, report: &mut PassReport) {
        let lists = self.announcer_lists(None);
        let changes: Vec<AllocationChange> = self.ledger.read(|snapshot| {
            snapshot
                .ledger
                .entries()
                .filter(|e| !e.is_released())
                .filter_map(|entry| {
                    let announcers = lists
                        .as_ref()
                        .map(|l| l.get(&entry.ip).cloned().unwrap_or_default());
                    Self::allocation_change(entry, snapshot, announcers)
                })
                .collect()
        });
        for change in changes {
            if !self.gate.is_leader() {
                return;
            }
            if let Err(err) = self.write_allocation(change, ctx, report).await {
                report.failed(&err);
            }
        }
    }

    /// What the status of a bound allocation lacks: `phase: Bound`, `Orphaned` when it lies
    /// outside every pool, `vipam.io/AddressConflict` from the agent's report.
    fn allocation_change(
        entry: &LedgerEntry,
        snapshot: &crate::webhook::ledger::Snapshot<'_>,
        announcers: Option<Vec<AnnouncingNode>>,
    ) -> Option<AllocationChange> {
        let object = snapshot.objects.get(&entry.ip)?;
        let status = object.status.clone().unwrap_or_default();
        let set_phase = status.phase != Some(AllocationPhase::Bound);
        let announcers = announcers.filter(|wanted| *wanted != status.announcers);
        let outside = snapshot.pools.pool_of(&entry.ip).is_none();
        let was_marked = status.conditions.iter().any(|c| c.type_ == ORPHANED);
        let orphaned = if outside {
            Some(Wanted::new(
                ORPHANED,
                true,
                "OutsidePools",
                format!(
                    "{} lies outside every IPPool (it came from IPPool {}); it is \
                     kept for its Services, never renumbered: add it back to a \
                     pool, or pin the Services elsewhere",
                    entry.ip, entry.pool
                ),
            ))
        } else if was_marked {
            Some(Wanted::new(
                ORPHANED,
                false,
                "InPool",
                "the address is in a pool again",
            ))
        } else {
            None
        }
        .filter(|w| !w.is_met_by(&status.conditions, None));
        let had_conflict = status
            .conditions
            .iter()
            .any(|c| c.type_ == ADDRESS_CONFLICT);
        let conflict = match &status.conflict {
            Some(c) => Some(Wanted::new(
                ADDRESS_CONFLICT,
                true,
                "AddressConflict",
                format!(
                    "another host on the LAN (MAC {}) uses {}, found by node {} on \
                     interface {}; vipam does not announce it until that host stops \
                     (the agent probes again every 10 s)",
                    c.mac, entry.ip, c.node, c.interface
                ),
            )),
            None if had_conflict => Some(Wanted::new(
                ADDRESS_CONFLICT,
                false,
                "NoConflict",
                "no other host on the LAN answers for the address",
            )),
            None => None,
        }
        .filter(|w| !w.is_met_by(&status.conditions, None));
        let wanted: Vec<Wanted> = orphaned.into_iter().chain(conflict).collect();
        if !set_phase && wanted.is_empty() && announcers.is_none() {
            return None;
        }
        Some(AllocationChange {
            name: object.name_any(),
            set_phase,
            announcers,
            wanted,
            existing: status.conditions,
            services: entry.members.iter().map(|m| m.service.clone()).collect(),
        })
    }

    /// Writes one allocation's status change, then its Events.
    async fn write_allocation(
        &self,
        change: AllocationChange,
        ctx: &Context,
        report: &mut PassReport,
    ) -> Result<(), ReconcileError> {
        self.ensure_leader()?;
        let mut status = json!({});
        if change.set_phase {
            status["phase"] = json!("Bound");
        }
        if let Some(announcers) = &change.announcers {
            // A merge patch replaces the list whole; empty = null removes it.
            status["announcers"] = if announcers.is_empty() {
                serde_json::Value::Null
            } else {
                json!(announcers)
            };
        }
        if !change.wanted.is_empty() {
            status["conditions"] = json!(conditions::merged(
                &change.wanted,
                &change.existing,
                None,
                ctx.now,
            ));
        }
        let name = &change.name;
        let stored = self
            .allocations
            .patch_status(
                name,
                &patch_params(FIELD_MANAGER),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
            .map_err(|source| ReconcileError::Api {
                what: format!("writing the status of IPAllocation {name}"),
                source,
            })?;
        report.writes += 1;
        self.caches.ledger.lock().apply(stored);
        for wanted in change.wanted.iter().filter(|w| w.status) {
            let reason = if wanted.type_ == ORPHANED {
                "Orphaned"
            } else {
                "AddressConflict"
            };
            for service in &change.services {
                self.event(report, service, true, reason, wanted.message.clone())
                    .await;
            }
        }
        Ok(())
    }

    /// Reconciles the IPAllocation `name` on its own: its status (phase, `Orphaned`,
    /// `vipam.io/AddressConflict`) and the announcement Events on its Services. Released or
    /// unknown allocations are the global pass's (expiry).
    pub async fn reconcile_allocation(&self, name: &str) -> Result<PassReport, ReconcileError> {
        let mut report = PassReport::default();
        if !self.gate.is_leader() {
            report.not_leader = true;
            return Ok(report);
        }
        let Some(ip) = crate::core::names::allocation_ip(name) else {
            return Ok(report);
        };
        let ctx = self.context();
        let lists = self.announcer_lists(Some(ip));
        let change = self.ledger.read(|snapshot| {
            let entry = snapshot.ledger.get(&ip).filter(|e| !e.is_released())?;
            let announcers = lists
                .as_ref()
                .map(|l| l.get(&ip).cloned().unwrap_or_default());
            Self::allocation_change(entry, snapshot, announcers)
        });
        if let Some(change) = change {
            self.write_allocation(change, &ctx, &mut report).await?;
        }
        self.announcement(ip, &mut report).await;
        Ok(report)
    }

    /// Allocates when needed, then brings the Service's status and conditions up to date.
    async fn reconcile_service(
        &self,
        service: &ServiceRef,
        item: &Seen,
        unserved: &BTreeMap<IpAddr, explain::Why>,
        ctx: &Context,
        report: &mut PassReport,
    ) -> Result<(), ReconcileError> {
        let request = match &item.request {
            // Not ours: never read for allocation, never written.
            Ok(None) => return Ok(()),
            Ok(Some(request)) => request,
            Err(err) => {
                let held = self.caches.ledger.lock().ledger.bound_to(service);
                let wanted = vec![if held.is_empty() {
                    Wanted::new(ALLOCATED, false, err.category(), err.to_string())
                } else {
                    kept_previous(&held, &err.to_string())
                }];
                let ips = (!held.is_empty()).then_some(held);
                return self
                    .write_service_status(service, &item.service, ips, wanted, ctx, report)
                    .await;
            }
        };
        if service.name.is_empty() {
            return Ok(());
        }
        let allocated = self.allocate(request, &item.service, ctx, report).await?;
        let (ips, wanted) = match allocated {
            Ok(decision) => {
                for dropped in &decision.dropped {
                    self.leave(*dropped, std::slice::from_ref(service), ctx, report)
                        .await?;
                }
                // Addresses taken just now were not explained yet.
                let fresh = decision.assignments.iter().any(|a| a.how != How::Kept);
                if fresh {
                    self.wanted_conditions(request, &self.unserved_of(service))
                } else {
                    self.wanted_conditions(request, unserved)
                }
            }
            Err(denial) => {
                let held = self.caches.ledger.lock().ledger.bound_to(service);
                let mut wanted = vec![Wanted::new(
                    ALLOCATED,
                    false,
                    denial.kind.category(),
                    denial.message.clone(),
                )];
                if !held.is_empty() {
                    wanted = vec![kept_previous(&held, &denial.message)];
                }
                (held, wanted)
            }
        };
        let ips = (!ips.is_empty()).then_some(ips);
        self.write_service_status(service, &item.service, ips, wanted, ctx, report)
            .await
    }

    /// Records the Service's addresses in the ledger if it does not hold them already
    /// (webhook bypassed, an outage, Services older than vipam), adopting addresses it shows.
    async fn allocate(
        &self,
        request: &Request,
        service: &Service,
        ctx: &Context,
        report: &mut PassReport,
    ) -> Result<Result<Decision, Denial>, ReconcileError> {
        let held = self.caches.ledger.lock().ledger.bound_to(&request.service);
        if !needs_decision(request, &held) {
            return Ok(Ok(Decision::default()));
        }
        let found = ingress_ips(service);
        for _ in 0..MAX_ATTEMPTS {
            self.ensure_leader()?;
            let (decided, writes) = self.ledger.plan(false, |snapshot| {
                match decide_adopting(request, &found, snapshot.pools, snapshot.ledger, ctx) {
                    Ok((decision, used)) => {
                        let unchanged = decision.dropped.is_empty()
                            && decision.assignments.iter().all(|a| a.how == How::Kept);
                        let writes = if unchanged {
                            Vec::new()
                        } else {
                            plan_writes(&used, &decision, snapshot)
                        };
                        (Ok(decision), writes)
                    }
                    Err(denial) => (Err(denial), Vec::new()),
                }
            });
            let count = writes.len();
            match self.ledger.execute(&writes).await {
                Ok(()) => {
                    report.writes += count;
                    return Ok(decided);
                }
                Err(WriteError::Raced(_)) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(ReconcileError::Contention {
            service: request.service.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The Service's addresses (in its family order) and its Allocated/Announced conditions.
    fn wanted_conditions(
        &self,
        request: &Request,
        unserved: &BTreeMap<IpAddr, explain::Why>,
    ) -> (Vec<IpAddr>, Vec<Wanted>) {
        self.ledger.read(|snapshot| {
            let mut held: Vec<&LedgerEntry> = snapshot
                .ledger
                .entries_of(&request.service)
                .filter(|e| !e.is_released())
                .collect();
            held.sort_by_key(|e| {
                request
                    .families
                    .iter()
                    .position(|f| *f == Family::of(&e.ip))
                    .unwrap_or(usize::MAX)
            });
            let ips: Vec<IpAddr> = held.iter().map(|e| e.ip).collect();
            let orphans: Vec<String> = held
                .iter()
                .filter(|e| snapshot.pools.pool_of(&e.ip).is_none())
                .map(|e| e.ip.to_string())
                .collect();
            let allocated = if orphans.is_empty() {
                let from = held
                    .iter()
                    .map(|e| format!("{} from IPPool {}", e.ip, e.pool))
                    .collect::<Vec<_>>()
                    .join(", ");
                Wanted::new(ALLOCATED, true, "Allocated", from)
            } else {
                Wanted::new(
                    ALLOCATED,
                    true,
                    "Orphaned",
                    format!(
                        "{} outside every IPPool; kept, never renumbered (add it back to a pool)",
                        orphans.join(", ")
                    ),
                )
            };
            let mut pending = Vec::new();
            let mut announced = Vec::new();
            let mut in_conflict = Vec::new();
            let mut not_served = None;
            for entry in &held {
                if let Some(why) = unserved.get(&entry.ip) {
                    not_served
                        .get_or_insert_with(|| explain::condition(entry.ip, &entry.pool, why));
                    continue;
                }
                let status = snapshot
                    .objects
                    .get(&entry.ip)
                    .and_then(|o| o.status.as_ref());
                if let Some(c) = status.and_then(|s| s.conflict.as_ref()) {
                    in_conflict.push(format!(
                        "{} is used by another host on the LAN (MAC {}, seen by node {} on {})",
                        entry.ip, c.mac, c.node, c.interface
                    ));
                    continue;
                }
                let announcer = status.and_then(|s| s.announcer.as_ref());
                let by_bgp: Vec<&str> = status
                    .iter()
                    .flat_map(|s| &s.announcers)
                    .filter(|a| a.via == "bgp")
                    .map(|a| a.node.as_str())
                    .collect();
                match announcer {
                    Some(a) => announced.push(format!(
                        "{} by node {} on interface {}",
                        entry.ip, a.node, a.interface
                    )),
                    None if !by_bgp.is_empty() => announced.push(format!(
                        "{} by BGP from node{} {}",
                        entry.ip,
                        if by_bgp.len() == 1 { "" } else { "s" },
                        by_bgp.join(", ")
                    )),
                    None => {
                        let covered = snapshot.l2announcements.iter().any(|l2| {
                            let pools = l2_pool_names(l2);
                            pools.is_empty() || pools.contains(&entry.pool)
                        }) || snapshot.bgp_announcements.iter().any(|a| {
                            a.spec.ip_pools.is_empty() || a.spec.ip_pools.contains(&entry.pool)
                        });
                        pending.push((entry.ip, entry.pool.clone(), covered));
                    }
                }
            }
            let announced = if !in_conflict.is_empty() {
                Wanted::new(
                    ANNOUNCED,
                    false,
                    "AddressConflict",
                    format!(
                        "{}; vipam does not announce it while that lasts (probed again every \
                         10 s): find the host by its MAC and remove the address there, or pin \
                         the Service to another address",
                        in_conflict.join("; ")
                    ),
                )
            } else if let Some(why) = not_served {
                why
            } else if pending.is_empty() {
                Wanted::new(ANNOUNCED, true, "Announced", announced.join(", "))
            } else if let Some((ip, pool, _)) = pending.iter().find(|(_, _, covered)| !covered) {
                Wanted::new(
                    ANNOUNCED,
                    false,
                    "NoL2Announcement",
                    format!(
                        "no L2Announcement or BGPAnnouncement selects IPPool {pool}, so nothing \
                         announces {ip}; create one that lists the pool (or lists no pools)"
                    ),
                )
            } else {
                let ips: Vec<IpAddr> = pending.iter().map(|(ip, _, _)| *ip).collect();
                Wanted::new(
                    ANNOUNCED,
                    false,
                    "Pending",
                    format!(
                        "waiting for a vipam agent to announce {}",
                        format_ip_list(&ips)
                    ),
                )
            };
            (ips, vec![allocated, announced])
        })
    }

    /// Writes `status.loadBalancer.ingress` (when `ips` is given) and the conditions through
    /// the status subresource, only when they differ from what is stored.
    async fn write_service_status(
        &self,
        service: &ServiceRef,
        object: &Service,
        ips: Option<Vec<IpAddr>>,
        wanted: Vec<Wanted>,
        ctx: &Context,
        report: &mut PassReport,
    ) -> Result<(), ReconcileError> {
        let existing = service_conditions(object);
        let ingress: Option<Vec<(Option<String>, Option<String>)>> = ips.as_ref().map(|ips| {
            ips.iter()
                .map(|ip| (Some(ip.to_string()), Some("VIP".to_string())))
                .collect()
        });
        let ingress_changed = ingress
            .as_ref()
            .is_some_and(|wanted| *wanted != ingress_modes(object));
        let generation = object.metadata.generation;
        if !ingress_changed && conditions::all_met(&wanted, &existing, generation) {
            return Ok(());
        }
        self.ensure_leader()?;
        let conditions: Vec<Condition> = wanted
            .iter()
            .map(|w| w.build(&existing, generation, ctx.now))
            .collect();
        let mut status = json!({"conditions": conditions});
        if let Some(ips) = &ips {
            status["loadBalancer"] = json!({
                "ingress": ips
                    .iter()
                    .map(|ip| json!({"ip": ip.to_string(), "ipMode": "VIP"}))
                    .collect::<Vec<_>>()
            });
        }
        let api: Api<Service> = Api::namespaced(self.client.clone(), &service.namespace);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        // Strategic merge: conditions merge by type, so other writers' conditions stay.
        let stored = api
            .patch_status(
                &service.name,
                &params,
                &Patch::Strategic(json!({"status": status})),
            )
            .await
            .map_err(|source| ReconcileError::Api {
                what: format!("writing the status of Service {service}"),
                source,
            })?;
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.clone(), stored);
        report.writes += 1;
        let allocated = wanted.iter().find(|w| w.type_ == ALLOCATED);
        if let Some(allocated) = allocated
            && !allocated.is_met_by(&existing, generation)
            && (!allocated.status || allocated.reason == KEPT_PREVIOUS)
        {
            self.event(
                report,
                service,
                true,
                "AllocationFailed",
                allocated.message.clone(),
            )
            .await;
        }
        // Nothing may announce the address: a Warning Event beside the condition, once per
        // new reason or message. Pending is no fault, and a conflict has its own Event.
        let announced = wanted.iter().find(|w| w.type_ == ANNOUNCED);
        if let Some(announced) = announced
            && !announced.status
            && !announced.is_met_by(&existing, generation)
            && !matches!(announced.reason.as_str(), "Pending" | "AddressConflict")
        {
            let reason = announced.reason.clone();
            self.event(report, service, true, &reason, announced.message.clone())
                .await;
        }
        if ingress_changed && let Some(ips) = &ips {
            let note = format!("assigned {}", format_ip_list(ips));
            self.event(report, service, false, "IPAllocated", note)
                .await;
        }
        Ok(())
    }

    /// IPPool status: capacity, allocated, available, Ready, Conflict, observedGeneration.
    async fn pool_status(&self, ctx: &Context, report: &mut PassReport) {
        let pools = valid(&self.caches.pools);
        let updates: Vec<(String, serde_json::Value)> = self.ledger.read(|snapshot| {
            pools
                .iter()
                .filter_map(|pool| pool_update(pool, snapshot.pools, snapshot.ledger, ctx))
                .collect()
        });
        let api: Api<IPPool> = Api::all(self.client.clone());
        for (name, status) in updates {
            if !self.gate.is_leader() {
                return;
            }
            write_status(&api, "IPPool", &name, &status, report).await;
        }
    }

    /// BGPPeer status (validity, each node's session as its agent notes it) and
    /// BGPAnnouncement status (validity, peers that do not exist).
    async fn bgp_status(&self, ctx: &Context, report: &mut PassReport) {
        let peers = valid(&self.caches.bgp_peers);
        let announcements = valid(&self.caches.bgp_announcements);
        if peers.is_empty() && announcements.is_empty() {
            return;
        }
        let config = bgp::BgpConfig::parse(&peers, &announcements);
        let (nodes, sessions) = match self.placement.as_ref().filter(|p| p.is_synced()) {
            Some(placement) => (placement.nodes(), placement.sessions()),
            None => Default::default(),
        };
        let peer_api: Api<BGPPeer> = Api::all(self.client.clone());
        for peer in &peers {
            let Some(status) = bgp::peer_update(peer, &config, &nodes, &sessions, ctx.now) else {
                continue;
            };
            if !self.gate.is_leader() {
                return;
            }
            write_status(&peer_api, "BGPPeer", &peer.name_any(), &status, report).await;
        }
        let names: std::collections::BTreeSet<String> =
            peers.iter().map(|p| p.name_any()).collect();
        let announcement_api: Api<BGPAnnouncement> = Api::all(self.client.clone());
        for announcement in &announcements {
            let Some(status) = bgp::announcement_update(announcement, &names, ctx.now) else {
                continue;
            };
            if !self.gate.is_leader() {
                return;
            }
            let name = announcement.name_any();
            write_status(&announcement_api, "BGPAnnouncement", &name, &status, report).await;
        }
    }

    /// L2Announcement status: Ready, or which selector or interface pattern is invalid.
    async fn l2_status(&self, ctx: &Context, report: &mut PassReport) {
        let api: Api<L2Announcement> = Api::all(self.client.clone());
        for l2 in valid(&self.caches.l2announcements) {
            let Some(status) = l2_update(&l2, ctx) else {
                continue;
            };
            if !self.gate.is_leader() {
                return;
            }
            let name = l2.name_any();
            write_status(&api, "L2Announcement", &name, &status, report).await;
        }
    }
}

const KEPT_PREVIOUS: &str = "KeptPrevious";

/// The Service keeps what it holds; only its new request cannot be met.
fn kept_previous(held: &[IpAddr], why: &str) -> Wanted {
    Wanted::new(
        ALLOCATED,
        true,
        KEPT_PREVIOUS,
        format!(
            "keeps {}; the requested change cannot be made: {why}",
            format_ip_list(held)
        ),
    )
}

/// The status an IPPool should have, when it differs from the stored one.
fn pool_update(
    pool: &IPPool,
    pools: &PoolSet,
    ledger: &Ledger,
    ctx: &Context,
) -> Option<(String, serde_json::Value)> {
    let name = pool.name_any();
    let generation = pool.metadata.generation;
    let stored = pool.status.clone().unwrap_or_default();
    let parsed: Result<Pool, String> = pool_spec(pool)
        .map_err(|e| e.message)
        .and_then(|spec| Pool::parse(spec).map_err(|e| e.problems.join("; ")));
    let blocks = pool
        .spec
        .blocks
        .iter()
        .map(|b| match (&b.cidr, &b.start, &b.stop) {
            (Some(cidr), _, _) => cidr.clone(),
            (None, Some(start), Some(stop)) => format!("{start}-{stop}"),
            (None, Some(start), None) => start.clone(),
            _ => String::new(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let mut wanted = Vec::new();
    let (mut capacity, mut allocated, mut available) = (None, None, None);
    match parsed {
        Ok(_) => {
            // The set's copy has lost the ranges an older pool keeps.
            if let Some(resolved) = pools.get(&name) {
                let (used, free) = resolved.usage(ledger.used());
                capacity = Some(resolved.capacity().to_string());
                allocated = Some(used.to_string());
                available = Some(free.to_string());
            }
            wanted.push(Wanted::new(
                READY,
                true,
                "Valid",
                "the pool can hand out addresses",
            ));
        }
        Err(problems) => {
            wanted.push(Wanted::new(READY, false, "InvalidBlocks", problems));
        }
    }
    let overlaps: Vec<String> = pools
        .overlaps()
        .iter()
        .filter(|o| o.keeper == name || o.loser == name)
        .map(|o| o.to_string())
        .collect();
    wanted.push(if overlaps.is_empty() {
        Wanted::new(
            CONFLICT,
            false,
            "NoOverlap",
            "no other IPPool claims these addresses",
        )
    } else {
        Wanted::new(CONFLICT, true, "Overlap", overlaps.join("; "))
    });
    let unchanged = stored.blocks.as_deref() == Some(blocks.as_str())
        && stored.capacity == capacity
        && stored.allocated == allocated
        && stored.available == available
        && stored.observed_generation == generation
        && conditions::all_met(&wanted, &stored.conditions, generation);
    if unchanged {
        return None;
    }
    let conditions = conditions::merged(&wanted, &stored.conditions, generation, ctx.now);
    Some((
        name,
        json!({
            "blocks": blocks,
            "capacity": capacity,
            "allocated": allocated,
            "available": available,
            "conditions": conditions,
            "observedGeneration": generation,
        }),
    ))
}

/// The status an L2Announcement should have, when it differs from the stored one.
fn l2_update(l2: &L2Announcement, ctx: &Context) -> Option<serde_json::Value> {
    let generation = l2.metadata.generation;
    let stored = l2.status.clone().unwrap_or_default();
    let mut problems = Vec::new();
    if let Some(selector) = &l2.spec.service_selector
        && let Err(err) = selector.to_core()
    {
        problems.push(format!("serviceSelector: {err}"));
    }
    if let Some(selector) = &l2.spec.node_selector
        && let Err(err) = selector.to_core()
    {
        problems.push(format!("nodeSelector: {err}"));
    }
    for pattern in &l2.spec.interfaces {
        if let Err(err) = regex::Regex::new(pattern) {
            problems.push(format!(
                "interfaces: {pattern:?} is not a regular expression: {err}"
            ));
        }
    }
    let wanted = if problems.is_empty() {
        Wanted::new(
            READY,
            true,
            "Valid",
            "selectors and interface patterns are valid",
        )
    } else {
        Wanted::new(READY, false, "InvalidSpec", problems.join("; "))
    };
    let wanted = [wanted];
    if stored.observed_generation == generation
        && conditions::all_met(&wanted, &stored.conditions, generation)
    {
        return None;
    }
    Some(json!({
        "conditions": conditions::merged(&wanted, &stored.conditions, generation, ctx.now),
        "observedGeneration": generation,
    }))
}

/// Merge-patches `status` of one object through the status subresource, counting the write.
async fn write_status<K>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    status: &impl serde::Serialize,
    report: &mut PassReport,
) where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .patch_status(
            name,
            &patch_params(FIELD_MANAGER),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
    {
        Ok(_) => report.writes += 1,
        Err(source) => report.failed(&ReconcileError::Api {
            what: format!("writing the status of {kind} {name}"),
            source,
        }),
    }
}

/// Whether the API refused a write because the object's namespace is being deleted or is gone.
fn namespace_is_going(status: &kube::core::Status) -> bool {
    let details = status.details.as_ref();
    let terminating = status.code == 403
        && details.is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"));
    let gone = status.code == 404 && details.is_some_and(|d| d.kind == "namespaces");
    terminating || gone
}

#[cfg(test)]
mod tests {
    use super::namespace_is_going;

    fn status(json: serde_json::Value) -> kube::core::Status {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_namespace_going_away_is_recognised_from_the_api_answers() {
        // As kube-apiserver 1.37 answers an Event create in a terminating namespace ...
        let terminating = status(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "events.events.k8s.io \"web.1\" is forbidden: unable to create new content in namespace t because it is being terminated",
            "details": {"name": "web.1", "group": "events.k8s.io", "kind": "events",
                        "causes": [{"reason": "NamespaceTerminating", "message": "namespace t is being terminated", "field": "metadata.namespace"}]}
        }));
        // ... and in one already deleted.
        let gone = status(serde_json::json!({
            "status": "Failure", "code": 404, "reason": "NotFound",
            "message": "namespaces \"t\" not found",
            "details": {"name": "t", "kind": "namespaces"}
        }));
        // RBAC's refusal is not one of them.
        let rbac = status(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "events.events.k8s.io is forbidden: User \"system:serviceaccount:vipam-system:vipam-controller\" cannot create resource \"events\"",
            "details": {"group": "events.k8s.io", "kind": "events"}
        }));
        assert!(namespace_is_going(&terminating));
        assert!(namespace_is_going(&gone));
        assert!(!namespace_is_going(&rbac));
    }
}
