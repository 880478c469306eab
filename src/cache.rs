//! In-memory views of vipam's objects, tolerant of malformed objects.
//!
//! Every webhook replica keeps IPPools, L2Announcements, BGPPeers and BGPAnnouncements in
//! reflector stores, and the ledger
//! (IPAllocations) as a live [`Ledger`] updated per watch event, so an admission costs
//! O(log n) in the ledger's size instead of a rebuild. A malformed object is logged and skipped;
//! it never stops the watch (DESIGN invariant 7).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::api::{
    BGPAnnouncement, BGPPeer, IPAllocation, IPPool, L2Announcement, allocation_entry,
};
use crate::core::allocate::Ledger;
use crate::core::category::Category;
use crate::core::names::allocation_ip;
use crate::core::request::ServiceRef;

/// How many changed-allocation notices may wait for a slow reader before it is told it lagged
/// (it then reconciles everything).
const TOUCHED_BACKLOG: usize = 4096;

/// The ledger as last seen, plus what this replica wrote since.
#[derive(Default)]
pub struct LedgerState {
    pub ledger: Ledger,
    /// The object behind each entry (resourceVersion, timestamps).
    pub objects: BTreeMap<IpAddr, IPAllocation>,
    /// Names seen since a relist began (to drop the ones that vanished meanwhile).
    relisting: Option<BTreeSet<String>>,
}

fn rv(object: &IPAllocation) -> Option<&str> {
    object.metadata.resource_version.as_deref()
}

impl LedgerState {
    /// Records an object unless what is held is the same version or newer: the watch echo of
    /// this replica's own write (already applied when the write returned), or a late event.
    /// Skipping the echo also keeps an in-flight reservation on that address intact.
    pub fn apply(&mut self, object: IPAllocation) {
        let name = object.name_any();
        if let Some(held) = allocation_ip(&name).and_then(|ip| self.objects.get(&ip))
            && let (Some(held_rv), Some(new_rv)) = (rv(held), rv(&object))
            && crate::api::compare_resource_versions(held_rv, new_rv)
                .is_some_and(|order| order.is_ge())
        {
            if let Some(seen) = self.relisting.as_mut() {
                seen.insert(name);
            }
            return;
        }
        if let Some(seen) = self.relisting.as_mut() {
            seen.insert(name.clone());
        }
        let entry = match allocation_entry(&object) {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(error = %err, category = err.category(), "ignoring a malformed IPAllocation");
                return;
            }
        };
        self.objects.insert(entry.ip, object);
        self.ledger.upsert(entry);
    }

    /// Forgets an object (deleted, or found missing).
    pub fn delete(&mut self, name: &str) {
        if let Some(ip) = allocation_ip(name) {
            self.objects.remove(&ip);
            self.ledger.remove(&ip);
        }
    }

    fn begin_relist(&mut self) {
        self.relisting = Some(BTreeSet::new());
    }

    fn end_relist(&mut self) {
        let Some(seen) = self.relisting.take() else {
            return;
        };
        let gone: Vec<String> = self
            .objects
            .values()
            .map(|o| o.name_any())
            .filter(|n| !seen.contains(n))
            .collect();
        for name in gone {
            self.delete(&name);
        }
    }
}

/// The live ledger, shared by the watch task and the webhook.
#[derive(Clone, Default)]
pub struct LiveLedger {
    state: Arc<Mutex<LedgerState>>,
}

impl LiveLedger {
    pub fn lock(&self) -> MutexGuard<'_, LedgerState> {
        // A panic elsewhere must not take the ledger down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// In-memory views of vipam's objects.
#[derive(Clone)]
pub struct Caches {
    pub pools: Store<DeserializeGuard<IPPool>>,
    pub l2announcements: Store<DeserializeGuard<L2Announcement>>,
    pub bgp_peers: Store<DeserializeGuard<BGPPeer>>,
    pub bgp_announcements: Store<DeserializeGuard<BGPAnnouncement>>,
    pub ledger: LiveLedger,
    /// Bumped when a pool's, L2Announcement's, BGPPeer's or BGPAnnouncement's spec changes, one appears or goes, or their
    /// watch lists again (derived data is rebuilt only then).
    pub generation: Arc<AtomicU64>,
    /// Bumped when what the agents report on an allocation (`status.announcer`,
    /// `status.conflict`) changes: the controller's Events and conditions follow it at once.
    /// The controller's own status writes (phase, conditions) do not bump it.
    pub reports: Arc<AtomicU64>,
    /// The Services of each IPAllocation whose spec or agent report changed, or that was
    /// deleted, after the first list: the controller reconciles exactly those.
    pub touched: broadcast::Sender<Vec<ServiceRef>>,
    /// The IPAllocations as objects (the same watch as the ledger), for the controller's
    /// per-allocation reconciliation.
    pub allocations: Store<DeserializeGuard<IPAllocation>>,
    /// The name of each IPAllocation that changed, after the first list.
    pub allocations_changed: broadcast::Sender<String>,
    synced: Arc<AtomicBool>,
    ledger_synced: Arc<AtomicBool>,
}

/// Writers for [`Caches`], for the reflectors (or tests that feed objects by hand).
pub struct CacheWriters {
    pub pools: reflector::store::Writer<DeserializeGuard<IPPool>>,
    pub l2announcements: reflector::store::Writer<DeserializeGuard<L2Announcement>>,
    pub bgp_peers: reflector::store::Writer<DeserializeGuard<BGPPeer>>,
    pub bgp_announcements: reflector::store::Writer<DeserializeGuard<BGPAnnouncement>>,
    pub allocations: reflector::store::Writer<DeserializeGuard<IPAllocation>>,
}

/// The well-formed objects of a store; malformed ones are skipped (they were logged on arrival).
pub fn valid<K: Clone>(store: &Store<DeserializeGuard<K>>) -> Vec<K>
where
    DeserializeGuard<K>: Resource,
    <DeserializeGuard<K> as Resource>::DynamicType: std::hash::Hash + Eq + Clone,
{
    store
        .state()
        .iter()
        .filter_map(|guard| guard.0.as_ref().ok().cloned())
        .collect()
}

impl Caches {
    /// Empty caches and their writers.
    pub fn new() -> (Caches, CacheWriters) {
        let (pools, pool_writer) = reflector::store();
        let (l2announcements, l2_writer) = reflector::store();
        let (bgp_peers, bgp_peer_writer) = reflector::store();
        let (bgp_announcements, bgp_announcement_writer) = reflector::store();
        let (allocations, allocation_writer) = reflector::store();
        (
            Caches {
                pools,
                l2announcements,
                bgp_peers,
                bgp_announcements,
                ledger: LiveLedger::default(),
                generation: Arc::new(AtomicU64::new(0)),
                reports: Arc::new(AtomicU64::new(0)),
                touched: broadcast::channel(TOUCHED_BACKLOG).0,
                allocations,
                allocations_changed: broadcast::channel(TOUCHED_BACKLOG).0,
                synced: Arc::new(AtomicBool::new(false)),
                ledger_synced: Arc::new(AtomicBool::new(false)),
            },
            CacheWriters {
                pools: pool_writer,
                l2announcements: l2_writer,
                bgp_peers: bgp_peer_writer,
                bgp_announcements: bgp_announcement_writer,
                allocations: allocation_writer,
            },
        )
    }

    /// Whether every cache has listed its objects once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Marks the caches synced (tests that feed writers by hand).
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Starts the watches on `client`; returns once every cache listed its objects.
    pub async fn start(client: Client, writers: CacheWriters, caches: &Caches) {
        let bump = |generation: &Arc<AtomicU64>| {
            let generation = generation.clone();
            move || {
                generation.fetch_add(1, Ordering::AcqRel);
            }
        };
        spawn_watched(
            Api::<DeserializeGuard<IPPool>>::all(client.clone()),
            writers.pools,
            watcher::Config::default(),
            |_| {},
            spec_fingerprint::<IPPool>,
            bump(&caches.generation),
        );
        spawn_watched(
            Api::<DeserializeGuard<L2Announcement>>::all(client.clone()),
            writers.l2announcements,
            watcher::Config::default(),
            |_| {},
            spec_fingerprint::<L2Announcement>,
            bump(&caches.generation),
        );
        spawn_watched(
            Api::<DeserializeGuard<BGPPeer>>::all(client.clone()),
            writers.bgp_peers,
            watcher::Config::default(),
            |_| {},
            spec_fingerprint::<BGPPeer>,
            bump(&caches.generation),
        );
        spawn_watched(
            Api::<DeserializeGuard<BGPAnnouncement>>::all(client.clone()),
            writers.bgp_announcements,
            watcher::Config::default(),
            |_| {},
            spec_fingerprint::<BGPAnnouncement>,
            bump(&caches.generation),
        );
        spawn_ledger_watch(client, caches.clone(), writers.allocations);
        let _ = caches.pools.wait_until_ready().await;
        let _ = caches.l2announcements.wait_until_ready().await;
        let _ = caches.bgp_peers.wait_until_ready().await;
        let _ = caches.bgp_announcements.wait_until_ready().await;
        while !caches.ledger_synced.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        caches.mark_synced();
        tracing::info!("caches synced");
    }
}

/// What the webhook and the controller read of an IPPool or L2Announcement: its spec (their
/// status, which the controller writes, wakes nothing). A malformed object is logged; its
/// readers skip it.
pub fn spec_fingerprint<K>(guard: &DeserializeGuard<K>) -> u64
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    match &guard.0 {
        Ok(object) => {
            let spec = serde_json::to_value(object)
                .ok()
                .and_then(|mut v| v.get_mut("spec").map(std::mem::take));
            fingerprint((object.meta().uid.as_deref(), spec.map(|s| s.to_string())))
        }
        Err(invalid) => {
            tracing::warn!(kind = %K::kind(&()), name = %invalid.metadata.name.clone().unwrap_or_default(), error = %invalid.error, "skipping a malformed object");
            fingerprint(&invalid.error)
        }
    }
}

/// What the agents report on an allocation (`status.announcer`, `status.conflict`).
fn agent_report(
    allocation: &IPAllocation,
) -> (
    Option<crate::api::Announcer>,
    Option<crate::api::AddressConflict>,
    Vec<crate::api::AnnouncingNode>,
) {
    let status = allocation.status.as_ref();
    (
        status.and_then(|s| s.announcer.clone()),
        status.and_then(|s| s.conflict.clone()),
        // Who announces by BGP (the controller's summary): the Services' Announced follows.
        status.map(|s| s.announcers.clone()).unwrap_or_default(),
    )
}

/// The Services an allocation lists.
fn services_of(allocation: &IPAllocation) -> impl Iterator<Item = ServiceRef> + '_ {
    allocation
        .spec
        .services
        .iter()
        .map(|s| ServiceRef::new(s.namespace.clone(), s.name.clone()))
}

fn spawn_ledger_watch(
    client: Client,
    caches: Caches,
    mut objects: reflector::store::Writer<DeserializeGuard<IPAllocation>>,
) {
    let (ledger, synced) = (caches.ledger, caches.ledger_synced);
    let (reports, touched) = (caches.reports, caches.touched);
    let changed = caches.allocations_changed;
    let api: Api<DeserializeGuard<IPAllocation>> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    tracing::warn!(kind = "IPAllocation", error = %err, "watch error; retrying with backoff");
                    continue;
                }
            };
            objects.apply_watcher_event(&event);
            if let watcher::Event::Apply(object) | watcher::Event::Delete(object) = &event {
                let _ = changed.send(object.name_any());
            }
            let mut state = ledger.lock();
            match event {
                watcher::Event::Init => state.begin_relist(),
                watcher::Event::InitDone => {
                    state.end_relist();
                    synced.store(true, Ordering::Release);
                }
                watcher::Event::Apply(DeserializeGuard(Ok(object))) => {
                    let previous = object
                        .spec
                        .ip
                        .parse::<std::net::IpAddr>()
                        .ok()
                        .and_then(|ip| state.objects.get(&ip));
                    let before = previous.map(agent_report);
                    let after = agent_report(&object);
                    // What a Service's status follows: the spec and what the agents report.
                    // The controller's own writes of phase and conditions change neither.
                    let spec_changed = previous.is_none_or(|p| {
                        serde_json::to_value(&p.spec).ok()
                            != serde_json::to_value(&object.spec).ok()
                    });
                    let report_changed = before.as_ref().is_some_and(|before| *before != after);
                    let mut services: BTreeSet<ServiceRef> =
                        previous.into_iter().flat_map(services_of).collect();
                    services.extend(services_of(&object));
                    state.apply(object);
                    if report_changed {
                        reports.fetch_add(1, Ordering::AcqRel);
                    }
                    if spec_changed || report_changed {
                        // Nobody listening (a webhook-only process) is fine.
                        let _ = touched.send(services.into_iter().collect());
                    }
                }
                watcher::Event::InitApply(DeserializeGuard(Ok(object))) => state.apply(object),
                watcher::Event::Delete(DeserializeGuard(Ok(object))) => {
                    state.delete(&object.name_any());
                    let _ = touched.send(services_of(&object).collect());
                }
                watcher::Event::Delete(DeserializeGuard(Err(invalid))) => {
                    state.delete(&invalid.metadata.name.clone().unwrap_or_default())
                }
                watcher::Event::Apply(DeserializeGuard(Err(invalid)))
                | watcher::Event::InitApply(DeserializeGuard(Err(invalid))) => {
                    tracing::warn!(kind = "IPAllocation", name = %invalid.metadata.name.clone().unwrap_or_default(), error = %invalid.error, "skipping a malformed object");
                }
            }
        }
    });
}

/// Drops what vipam never reads from cached objects (managedFields and annotations can
/// be most of an object's size), so memory follows the number of objects, not their history.
pub fn trim_metadata<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}

/// A Node as ownership needs it: labels, conditions, whether it is cordoned, and what picks
/// its BGP router ID (InternalIP addresses, `vipam.io/bgp-router-id`); not images, capacity...
pub fn trim_node(node: &mut Node) {
    let router_id = node
        .annotations()
        .get(crate::api::view::ROUTER_ID_ANNOTATION)
        .cloned();
    trim_metadata(node);
    if let Some(router_id) = router_id {
        node.meta_mut().annotations = Some(
            [(
                crate::api::view::ROUTER_ID_ANNOTATION.to_string(),
                router_id,
            )]
            .into_iter()
            .collect(),
        );
    }
    node.spec = node
        .spec
        .take()
        .map(|spec| k8s_openapi::api::core::v1::NodeSpec {
            unschedulable: spec.unschedulable,
            ..Default::default()
        });
    if let Some(status) = node.status.as_mut() {
        *status = k8s_openapi::api::core::v1::NodeStatus {
            conditions: status.conditions.take(),
            addresses: status.addresses.take().map(|addresses| {
                addresses
                    .into_iter()
                    .filter(|a| a.type_ == "InternalIP")
                    .collect()
            }),
            ..Default::default()
        };
    }
}

/// A hash of what a reader needs from an object: events that change nothing of it (status
/// writes, unrelated fields) wake nothing.
pub fn fingerprint(parts: impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(parts)
}

pub fn slice_fingerprint(slice: &EndpointSlice) -> u64 {
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

pub fn node_fingerprint(node: &Node) -> u64 {
    let conditions: Vec<(&String, &String)> = node
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .map(|c| (&c.type_, &c.status))
        .collect();
    let addresses: Vec<&String> = node
        .status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .map(|a| &a.address)
        .collect();
    fingerprint((
        node.labels(),
        conditions,
        node.spec.as_ref().and_then(|s| s.unschedulable),
        addresses,
        node.annotations()
            .get(crate::api::view::ROUTER_ID_ANNOTATION),
    ))
}

/// A reflector that keeps `trim`med objects and calls `wake` only when what `relevant` hashes
/// of an object changed, an object went away, or a (re)list began or ended. The agents and the
/// controller's placement view use it.
pub fn spawn_watched<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    relevant: fn(&K) -> u64,
    wake: impl Fn() + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
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
                        wake();
                    }
                }
                Ok(watcher::Event::Delete(object)) => {
                    seen.remove(&(object.meta().namespace.clone(), object.name_any()));
                    wake();
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => wake(),
                Err(err) => {
                    tracing::warn!(%kind, error = %err, "watch error; retrying with backoff")
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::allocation_object;
    use crate::core::allocate::{LedgerEntry, Member};
    use crate::core::request::ServiceRef;

    fn entry(ip: &str, service: &str) -> LedgerEntry {
        LedgerEntry {
            ip: ip.parse().unwrap(),
            pool: "lan".into(),
            sharing_key: None,
            members: vec![Member {
                service: ServiceRef::new("apps", service),
                ports: Vec::new(),
                cross_namespace: Default::default(),
                etp_local: false,
                selector: BTreeMap::new(),
            }],
            released_at: None,
        }
    }

    fn object(entry: &LedgerEntry, rv: u64) -> IPAllocation {
        let mut object = allocation_object(entry);
        object.metadata.resource_version = Some(rv.to_string());
        object
    }

    fn holder(state: &LedgerState, ip: &str) -> Option<String> {
        let entry = state.ledger.get(&ip.parse().unwrap())?;
        Some(entry.members[0].service.name.clone())
    }

    #[test]
    fn only_newer_versions_replace_what_is_held() {
        let mut state = LedgerState::default();
        state.apply(object(&entry("192.0.2.10", "web"), 5));
        assert_eq!(holder(&state, "192.0.2.10").as_deref(), Some("web"));
        // A late event and the echo of the same version change nothing.
        state.apply(object(&entry("192.0.2.10", "old"), 4));
        state.apply(object(&entry("192.0.2.10", "echo"), 5));
        assert_eq!(holder(&state, "192.0.2.10").as_deref(), Some("web"));
        state.apply(object(&entry("192.0.2.10", "api"), 6));
        assert_eq!(holder(&state, "192.0.2.10").as_deref(), Some("api"));
        assert_eq!(
            rv(&state.objects[&"192.0.2.10".parse().unwrap()]),
            Some("6")
        );
    }

    #[test]
    fn the_echo_of_a_held_version_keeps_a_reservation_in_flight() {
        let mut state = LedgerState::default();
        state.apply(object(&entry("192.0.2.11", "web"), 7));
        // A request of this replica reserves the address for a replace that is in flight.
        state.ledger.upsert(entry("192.0.2.11", "web-and-api"));
        // A relist delivers the version already held.
        state.begin_relist();
        state.apply(object(&entry("192.0.2.11", "web"), 7));
        state.end_relist();
        assert_eq!(holder(&state, "192.0.2.11").as_deref(), Some("web-and-api"));
        assert!(state.objects.contains_key(&"192.0.2.11".parse().unwrap()));
    }

    #[test]
    fn a_relist_drops_what_vanished_and_keeps_what_it_saw() {
        let mut state = LedgerState::default();
        state.apply(object(&entry("192.0.2.12", "a"), 1));
        state.apply(object(&entry("192.0.2.13", "b"), 2));
        state.begin_relist();
        state.apply(object(&entry("192.0.2.13", "b"), 2));
        state.end_relist();
        assert_eq!(holder(&state, "192.0.2.12"), None);
        assert_eq!(holder(&state, "192.0.2.13").as_deref(), Some("b"));
    }
}
