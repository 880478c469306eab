//! What the controller needs to say *why* nobody announces an address: the Nodes, the agents'
//! Leases (judged live by this replica's own clock, as the agents judge them) and the
//! EndpointSlices, read into `core::ownership`'s view by `api::view`. The agents decide
//! ownership; the controller only explains it when it finds nobody ([`core::ownership::explain`]).
//!
//! A change that matters (a node's labels or conditions, a Lease appearing, expiring or
//! reporting other interfaces, a Service's ready endpoints) bumps the caches' generation, which
//! wakes the reconcile loop. A Lease's plain renewal does not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::task::JoinHandle;

use crate::api::view::{self, AGENT_LEASE_LABEL, LeaseFacts};
use crate::cache::{node_fingerprint, slice_fingerprint, spawn_watched, trim_metadata, trim_node};
use crate::core::ownership::{Liveness, NodeView};

/// How often Lease expiry is checked (a Lease that stops renewing changes nothing by itself).
const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// A Lease's duration when it says none (the agents' default).
const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Leases {
    facts: BTreeMap<String, LeaseFacts>,
    liveness: Liveness,
    /// Which nodes were live at the last look (a change wakes the reconcile loop).
    live: BTreeSet<String>,
    /// The first list is complete.
    synced: bool,
}

/// The controller's view of where addresses could be announced.
#[derive(Clone)]
pub struct Placement {
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    leases: Arc<Mutex<Leases>>,
    epoch: Instant,
}

fn lock(leases: &Mutex<Leases>) -> MutexGuard<'_, Leases> {
    leases.lock().unwrap_or_else(|p| p.into_inner())
}

impl Placement {
    /// Starts the watches (Nodes, EndpointSlices, the agents' Leases in `namespace`); each
    /// relevant change bumps `generation`.
    pub fn spawn(
        client: Client,
        namespace: &str,
        generation: Arc<AtomicU64>,
    ) -> (Placement, Vec<JoinHandle<()>>) {
        let (nodes, node_writer) = reflector::store();
        let (slices, slice_writer) = reflector::store();
        let placement = Placement {
            nodes,
            slices,
            leases: Arc::new(Mutex::new(Leases::default())),
            epoch: Instant::now(),
        };
        let bump = |generation: &Arc<AtomicU64>| {
            let generation = generation.clone();
            move || {
                generation.fetch_add(1, Ordering::AcqRel);
            }
        };
        let nodes = spawn_watched(
            Api::<Node>::all(client.clone()),
            node_writer,
            watcher::Config::default(),
            trim_node,
            node_fingerprint,
            bump(&generation),
        );
        let slices = spawn_watched(
            Api::<EndpointSlice>::all(client.clone()),
            slice_writer,
            watcher::Config::default(),
            trim_metadata,
            slice_fingerprint,
            bump(&generation),
        );
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let tasks = vec![
            nodes,
            slices,
            tokio::spawn(placement.clone().watch_leases(api, generation.clone())),
            tokio::spawn(placement.clone().check_expiry(generation)),
        ];
        (placement, tasks)
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn watch_leases(self, api: Api<Lease>, generation: Arc<AtomicU64>) {
        let config = watcher::Config::default().labels(&format!("{AGENT_LEASE_LABEL}=true"));
        let stream = watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        let mut relisted: Option<BTreeSet<String>> = None;
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    tracing::warn!(kind = "Lease", error = %err, "watch error; retrying with backoff");
                    continue;
                }
            };
            let now = self.now();
            let mut leases = lock(&self.leases);
            let changed = match event {
                watcher::Event::Init => {
                    relisted = Some(BTreeSet::new());
                    false
                }
                watcher::Event::InitApply(lease) | watcher::Event::Apply(lease) => {
                    let Some(facts) = view::lease_facts(&lease, DEFAULT_LEASE_DURATION) else {
                        continue;
                    };
                    if let Some(seen) = relisted.as_mut() {
                        seen.insert(facts.node.clone());
                    }
                    let leases = &mut *leases;
                    leases.liveness.observe(
                        &facts.node,
                        &facts.version,
                        facts.duration,
                        facts.held,
                        now,
                    );
                    // BGP sessions count by state and error; a prefix count that moved is
                    // picked up by the next pass, not worth waking everything for.
                    let sessions = |f: &LeaseFacts| -> Vec<(String, String, Option<String>)> {
                        f.bgp_sessions
                            .iter()
                            .map(|s| (s.peer.clone(), s.state.clone(), s.last_error.clone()))
                            .collect()
                    };
                    let before = leases.facts.get(&facts.node).map(|f| {
                        (
                            f.interfaces.clone(),
                            f.default_interface.clone(),
                            f.held,
                            sessions(f),
                        )
                    });
                    let after = (
                        facts.interfaces.clone(),
                        facts.default_interface.clone(),
                        facts.held,
                        sessions(&facts),
                    );
                    leases.facts.insert(facts.node.clone(), facts);
                    before != Some(after)
                }
                watcher::Event::InitDone => {
                    let seen = relisted.take().unwrap_or_default();
                    let gone: Vec<String> = leases
                        .facts
                        .keys()
                        .filter(|n| !seen.contains(*n))
                        .cloned()
                        .collect();
                    for node in &gone {
                        leases.facts.remove(node);
                        leases.liveness.forget(node);
                    }
                    // Renewals may have been missed while the watch was down.
                    leases.liveness.refresh_all(now);
                    leases.synced = true;
                    true
                }
                watcher::Event::Delete(lease) => {
                    match view::lease_facts(&lease, DEFAULT_LEASE_DURATION) {
                        Some(facts) => {
                            leases.facts.remove(&facts.node);
                            leases.liveness.forget(&facts.node);
                            true
                        }
                        None => false,
                    }
                }
            };
            let live_changed = Self::note_live(&mut leases, now);
            if changed || live_changed {
                generation.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Records which nodes are live now; whether that set changed.
    fn note_live(leases: &mut Leases, now: Duration) -> bool {
        let live: BTreeSet<String> = leases
            .facts
            .keys()
            .filter(|n| leases.liveness.is_live(n, now))
            .cloned()
            .collect();
        if live == leases.live {
            return false;
        }
        leases.live = live;
        true
    }

    async fn check_expiry(self, generation: Arc<AtomicU64>) {
        let mut tick = tokio::time::interval(EXPIRY_CHECK);
        loop {
            tick.tick().await;
            let now = self.now();
            if Self::note_live(&mut lock(&self.leases), now) {
                generation.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Whether Nodes, EndpointSlices and Leases have each been listed once. Until then nothing
    /// is explained: an empty view would blame every address on missing nodes.
    pub fn is_synced(&self) -> bool {
        let ready = |done: Option<Result<(), _>>| matches!(done, Some(Ok(())));
        lock(&self.leases).synced
            && ready(self.nodes.wait_until_ready().now_or_never())
            && ready(self.slices.wait_until_ready().now_or_never())
    }

    /// Every node as ownership sees it now.
    pub fn nodes(&self) -> Vec<NodeView> {
        let now = self.now();
        let leases = lock(&self.leases);
        self.nodes
            .state()
            .iter()
            .map(|node| {
                let name = node.metadata.name.clone().unwrap_or_default();
                view::node_view(node, leases.facts.get(&name), &leases.liveness, now)
            })
            .collect()
    }

    /// Whether `node`'s agent holds a live Lease now.
    pub fn is_live(&self, node: &str) -> bool {
        lock(&self.leases).liveness.is_live(node, self.now())
    }

    /// The BGP sessions each node's agent notes in its Lease, by node.
    pub fn sessions(&self) -> BTreeMap<String, Vec<view::SessionNote>> {
        lock(&self.leases)
            .facts
            .iter()
            .filter(|(_, f)| !f.bgp_sessions.is_empty())
            .map(|(node, f)| (node.clone(), f.bgp_sessions.clone()))
            .collect()
    }

    /// Nodes running a ready endpoint, per (namespace, Service name).
    pub fn ready_nodes(&self) -> BTreeMap<(String, String), BTreeSet<String>> {
        let slices = self.slices.state();
        view::ready_nodes(slices.iter().map(|s| s.as_ref()))
    }
}
