//! The ledger as the webhook sees it: the live ledger (watch events and this replica's own
//! writes) with reservations in flight in this replica marked in it. The API server's create of
//! an `IPAllocation` is the final arbiter across replicas: AlreadyExists or Conflict means
//! "refresh and decide again".

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use kube::Client;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch};

use crate::api::{
    self, BGPAnnouncement, IPAllocation, IPPool, L2Announcement, allocation_object, patch_params,
    post_params,
};
use crate::cache::{Caches, valid};
use crate::core::allocate::{Decision, Ledger, LedgerEntry};
use crate::core::names::allocation_name;
use crate::core::pool::{Pool, PoolSet};
use crate::core::request::Request;
use crate::webhook::FIELD_MANAGER;

/// A consistent view for one decision (borrowed while the ledger is locked).
pub struct Snapshot<'a> {
    pub pools: &'a PoolSet,
    pub ledger: &'a Ledger,
    /// The `IPAllocation` object behind each ledger entry (for resourceVersion and timestamps).
    pub objects: &'a BTreeMap<IpAddr, IPAllocation>,
    pub l2announcements: &'a [L2Announcement],
    pub bgp_announcements: &'a [BGPAnnouncement],
}

/// One write that records a decision.
#[derive(Debug, Clone)]
pub enum Write {
    Create(LedgerEntry),
    /// Replace an existing object's spec; `rebind` also flips a released entry back to Bound.
    Replace {
        current: Box<IPAllocation>,
        entry: LedgerEntry,
        rebind: bool,
    },
}

impl Write {
    pub fn ip(&self) -> IpAddr {
        match self {
            Write::Create(entry) | Write::Replace { entry, .. } => entry.ip,
        }
    }

    fn entry(&self) -> &LedgerEntry {
        match self {
            Write::Create(entry) | Write::Replace { entry, .. } => entry,
        }
    }
}

/// Why writing failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another writer got there first; the fresh object is in the ledger now.
    #[error("{0} changed concurrently")]
    Raced(String),
    #[error("recording {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl crate::core::category::Category for WriteError {
    fn category(&self) -> &'static str {
        match self {
            WriteError::Raced(_) => "raced",
            WriteError::Api { .. } => "api_error",
        }
    }
}

/// Pools and L2Announcements as last built, with the cache generation they come from.
struct Derived {
    generation: u64,
    pools: PoolSet,
    l2announcements: Vec<L2Announcement>,
    bgp_announcements: Vec<BGPAnnouncement>,
}

/// An in-flight reservation: what the ledger held before it (to restore on failure).
struct Inflight {
    previous: Option<(LedgerEntry, Option<IPAllocation>)>,
    mine: LedgerEntry,
}

/// The webhook's ledger access.
pub struct LedgerView {
    api: Api<IPAllocation>,
    caches: Caches,
    derived: Mutex<Option<Derived>>,
    inflight: Mutex<BTreeMap<IpAddr, Inflight>>,
}

impl LedgerView {
    pub fn new(client: Client, caches: Caches) -> LedgerView {
        LedgerView {
            api: Api::all(client),
            caches,
            derived: Mutex::new(None),
            inflight: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// Runs `read` on a consistent snapshot.
    pub fn read<T>(&self, read: impl FnOnce(&Snapshot<'_>) -> T) -> T {
        self.plan(true, |snapshot| (read(snapshot), Vec::new())).0
    }

    /// Runs `plan` on a snapshot while holding the ledger lock and, unless `dry_run`, marks the
    /// planned writes in the ledger at once, so concurrent requests in this replica decide
    /// around them.
    pub fn plan<T>(
        &self,
        dry_run: bool,
        plan: impl FnOnce(&Snapshot<'_>) -> (T, Vec<Write>),
    ) -> (T, Vec<Write>) {
        let mut derived = self.derived.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.caches.generation.load(Ordering::Acquire);
        if derived.as_ref().is_none_or(|d| d.generation != generation) {
            *derived = Some(Derived {
                generation,
                pools: pool_set(&valid(&self.caches.pools)),
                l2announcements: valid(&self.caches.l2announcements),
                bgp_announcements: valid(&self.caches.bgp_announcements),
            });
        }
        let derived = derived.as_ref().expect("built above");
        let mut state = self.caches.ledger.lock();
        let (result, writes) = {
            let snapshot = Snapshot {
                pools: &derived.pools,
                ledger: &state.ledger,
                objects: &state.objects,
                l2announcements: &derived.l2announcements,
                bgp_announcements: &derived.bgp_announcements,
            };
            plan(&snapshot)
        };
        if !dry_run && !writes.is_empty() {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            for write in &writes {
                let ip = write.ip();
                let previous = state
                    .ledger
                    .get(&ip)
                    .cloned()
                    .map(|entry| (entry, state.objects.get(&ip).cloned()));
                state.ledger.upsert(write.entry().clone());
                inflight.insert(
                    ip,
                    Inflight {
                        previous,
                        mine: write.entry().clone(),
                    },
                );
            }
        }
        (result, writes)
    }

    /// Performs the writes in order; the first race stops and asks for a new decision.
    pub async fn execute(&self, writes: &[Write]) -> Result<(), WriteError> {
        let mut result = Ok(());
        let mut done = Vec::new();
        for write in writes {
            match self.execute_one(write).await {
                Ok(object) => done.push(object),
                Err(err) => {
                    result = Err(err);
                    break;
                }
            }
        }
        let mut state = self.caches.ledger.lock();
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Writes run in order and stop at the first failure: the first `done.len()` are
        // confirmed.
        for (k, write) in writes.iter().enumerate() {
            let ip = write.ip();
            let Some(reservation) = inflight.remove(&ip) else {
                continue;
            };
            if k < done.len() {
                // Confirmed: applying the written object below records the truth (or nothing,
                // if its watch event came first).
                continue;
            }
            // Undo an unconfirmed reservation, unless a watch event for the address arrived
            // meanwhile (it holds the truth now).
            let held_rv = |object: Option<&IPAllocation>| {
                object.and_then(|o| o.metadata.resource_version.clone())
            };
            let untouched = held_rv(state.objects.get(&ip))
                == held_rv(reservation.previous.as_ref().and_then(|(_, o)| o.as_ref()));
            if untouched && state.ledger.get(&ip) == Some(&reservation.mine) {
                match reservation.previous {
                    Some((entry, object)) => {
                        state.ledger.upsert(entry);
                        if let Some(object) = object {
                            state.objects.insert(ip, object);
                        }
                    }
                    None => {
                        state.ledger.remove(&ip);
                    }
                }
            }
        }
        for object in done {
            state.apply(object);
        }
        result
    }

    async fn execute_one(&self, write: &Write) -> Result<IPAllocation, WriteError> {
        let name = allocation_name(&write.ip());
        let outcome = match write {
            Write::Create(entry) => {
                let mut object = allocation_object(entry);
                object.status = None;
                self.api.create(&post_params(FIELD_MANAGER), &object).await
            }
            Write::Replace {
                current,
                entry,
                rebind,
            } => {
                let mut object = (**current).clone();
                object.spec = allocation_object(entry).spec;
                let replaced = self
                    .api
                    .replace(&name, &post_params(FIELD_MANAGER), &object)
                    .await;
                match replaced {
                    Ok(replaced) if *rebind => {
                        let patch = serde_json::json!({
                            "status": {"phase": "Bound", "releasedAt": null}
                        });
                        self.api
                            .patch_status(
                                &name,
                                &patch_params(FIELD_MANAGER),
                                &Patch::Merge(&patch),
                            )
                            .await
                            .or(Ok(replaced))
                    }
                    other => other,
                }
            }
        };
        match outcome {
            Ok(object) => Ok(object),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.refresh(&name).await;
                Err(WriteError::Raced(name))
            }
            Err(source) => Err(WriteError::Api { name, source }),
        }
    }

    /// Makes the pools the next decision sees as fresh as the API server's, and says whether
    /// deciding again is worth it. Lists the IPPools (a quorum read); if the cache lacks one or
    /// holds another version, waits up to two seconds for the watch to bring it; then drops the
    /// pool set derived from the cache, which can trail the cache itself by the moment between
    /// the reflector's write and the generation bump (seen under load on a real API server). A
    /// pool applied just before a Service (one `kubectl apply` of both) is then decided
    /// against, instead of a denial that the next try would not give.
    pub async fn pools_caught_up(&self) -> bool {
        let pools: Api<IPPool> = Api::all(self.api.clone().into_client());
        let listed = match pools.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(err) => {
                tracing::debug!(error = %err, "listing IPPools to check the cache failed");
                return false;
            }
        };
        let versions = |pools: &[IPPool]| -> BTreeMap<String, Option<String>> {
            pools
                .iter()
                .map(|p| (p.name_any(), p.metadata.resource_version.clone()))
                .collect()
        };
        let wanted = versions(&listed);
        let covered = |cached: &BTreeMap<String, Option<String>>| {
            wanted.iter().all(|(name, rv)| cached.get(name) == Some(rv))
        };
        if covered(&versions(&valid(&self.caches.pools))) {
            tracing::debug!(
                pools = wanted.len(),
                "the pool cache is as fresh as the API server"
            );
            self.forget_derived();
            return true;
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if covered(&versions(&valid(&self.caches.pools))) {
                tracing::debug!("the pool cache caught up with the API server");
                self.forget_derived();
                return true;
            }
        }
        tracing::debug!("the pool cache did not catch up with the API server within 2 s");
        false
    }

    /// The next [`LedgerView::plan`] rebuilds the pools and L2Announcements from the cache.
    fn forget_derived(&self) {
        *self.derived.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Reads one object fresh into the ledger (after losing a race on it).
    async fn refresh(&self, name: &str) {
        match self.api.get_opt(name).await {
            Ok(Some(object)) => self.caches.ledger.lock().apply(object),
            Ok(None) => self.caches.ledger.lock().delete(name),
            Err(err) => tracing::warn!(%name, error = %err, "refreshing after a conflict failed"),
        }
    }
}

/// Valid pools as a [`PoolSet`]; invalid ones are left out (their own admission refuses them,
/// and the controller reports them).
pub fn pool_set(pools: &[IPPool]) -> PoolSet {
    PoolSet::new(
        pools
            .iter()
            .filter_map(|p| api::pool_spec(p).ok())
            .filter_map(|spec| Pool::parse(spec).ok())
            .collect(),
    )
}

/// The writes that record `decision` for `request` against `snapshot`.
pub fn plan_writes(request: &Request, decision: &Decision, snapshot: &Snapshot<'_>) -> Vec<Write> {
    let mut writes = Vec::new();
    for assignment in &decision.assignments {
        let current_entry = snapshot.ledger.get(&assignment.ip);
        let entry = snapshot.ledger.joined(request, assignment);
        let rebind = current_entry.is_some_and(|e| e.is_released());
        match snapshot.objects.get(&assignment.ip) {
            // An entry in flight from another request of this replica has no object yet: its
            // create decides; ours will race and retry.
            None => writes.push(Write::Create(entry)),
            Some(current) => {
                if current_entry == Some(&entry) {
                    continue;
                }
                writes.push(Write::Replace {
                    current: Box::new(current.clone()),
                    entry,
                    rebind,
                })
            }
        }
    }
    writes
}
