//! The ledger as the webhook sees it: the reflector cache, plus what this replica wrote or read
//! since (overlay), plus reservations in flight in this replica. The API server's create of an
//! `IPAllocation` is the final arbiter across replicas: AlreadyExists or Conflict means "refresh
//! and decide again".

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::api::{self, IPAllocation, IPPool, L2Announcement, allocation_entry, allocation_object};
use crate::cache::{Caches, valid};
use crate::core::allocate::{Context, Decision, Ledger, LedgerEntry, Member};
use crate::core::names::allocation_name;
use crate::core::pool::{Pool, PoolSet};
use crate::core::request::Request;

/// How long a write this replica made (or an object it read) overrides the cache.
const OVERLAY_TTL: Duration = Duration::from_secs(30);

/// A consistent view for one decision.
pub struct Snapshot {
    pub pools: PoolSet,
    pub ledger: Ledger,
    /// The `IPAllocation` object behind each ledger entry (for resourceVersion and timestamps).
    pub objects: BTreeMap<IpAddr, IPAllocation>,
    pub l2announcements: Vec<L2Announcement>,
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
    /// Another writer got there first; the fresh object is in the overlay now.
    #[error("{0} changed concurrently")]
    Raced(String),
    #[error("recording {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl WriteError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            WriteError::Raced(_) => "raced",
            WriteError::Api { .. } => "api_error",
        }
    }
}

#[derive(Default)]
struct Local {
    /// name -> (object, when learnt); `None` when we learnt it does not exist.
    overlay: BTreeMap<String, (Option<IPAllocation>, Instant)>,
    /// Entries being written by this replica right now.
    inflight: BTreeMap<IpAddr, LedgerEntry>,
}

/// The webhook's ledger access.
pub struct LedgerView {
    api: Api<IPAllocation>,
    caches: Caches,
    local: Mutex<Local>,
}

fn rv_number(object: &IPAllocation) -> Option<u64> {
    object.metadata.resource_version.as_ref()?.parse().ok()
}

impl LedgerView {
    pub fn new(client: Client, caches: Caches) -> LedgerView {
        LedgerView {
            api: Api::all(client),
            caches,
            local: Mutex::new(Local::default()),
        }
    }

    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// Takes a snapshot and, unless `dry_run`, runs `plan` on it while holding the local lock,
    /// marking the planned writes in flight so that concurrent requests in this replica decide
    /// around them.
    pub fn plan<T>(
        &self,
        dry_run: bool,
        plan: impl FnOnce(&Snapshot) -> (T, Vec<Write>),
    ) -> (T, Vec<Write>) {
        let mut local = self.local.lock().expect("ledger lock");
        let snapshot = self.snapshot_locked(&mut local);
        let (result, writes) = plan(&snapshot);
        if !dry_run {
            for write in &writes {
                local.inflight.insert(write.ip(), write.entry().clone());
            }
        }
        (result, writes)
    }

    /// A snapshot without reserving anything (validation of pools, warnings).
    pub fn snapshot(&self) -> Snapshot {
        let mut local = self.local.lock().expect("ledger lock");
        self.snapshot_locked(&mut local)
    }

    fn snapshot_locked(&self, local: &mut Local) -> Snapshot {
        let mut by_name: BTreeMap<String, IPAllocation> = valid(&self.caches.allocations)
            .into_iter()
            .map(|a| (a.name_any(), a))
            .collect();
        local
            .overlay
            .retain(|_, (_, learnt)| learnt.elapsed() < OVERLAY_TTL);
        for (name, (object, _)) in &local.overlay {
            let newer = match (object, by_name.get(name)) {
                (Some(mine), Some(cached)) => match (rv_number(mine), rv_number(cached)) {
                    (Some(a), Some(b)) => a >= b,
                    _ => true,
                },
                _ => true,
            };
            if newer {
                match object {
                    Some(mine) => {
                        by_name.insert(name.clone(), mine.clone());
                    }
                    None => {
                        by_name.remove(name);
                    }
                }
            }
        }
        let mut objects = BTreeMap::new();
        let mut entries = Vec::new();
        for object in by_name.into_values() {
            match allocation_entry(&object) {
                Ok(entry) => {
                    objects.insert(entry.ip, object);
                    entries.push(entry);
                }
                Err(err) => tracing::warn!(error = %err, "ignoring a malformed IPAllocation"),
            }
        }
        let mut ledger = Ledger::from_entries(entries);
        for entry in local.inflight.values() {
            ledger.upsert(entry.clone());
        }
        Snapshot {
            pools: pool_set(&valid(&self.caches.pools)),
            ledger,
            objects,
            l2announcements: valid(&self.caches.l2announcements),
        }
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
        let mut local = self.local.lock().expect("ledger lock");
        for write in writes {
            local.inflight.remove(&write.ip());
        }
        for object in done {
            local
                .overlay
                .insert(object.name_any(), (Some(object), Instant::now()));
        }
        result
    }

    async fn execute_one(&self, write: &Write) -> Result<IPAllocation, WriteError> {
        let name = allocation_name(&write.ip());
        let outcome = match write {
            Write::Create(entry) => {
                let mut object = allocation_object(entry);
                object.status = None;
                self.api.create(&PostParams::default(), &object).await
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
                    .replace(&name, &PostParams::default(), &object)
                    .await;
                match replaced {
                    Ok(replaced) if *rebind => {
                        let patch = serde_json::json!({
                            "status": {"phase": "Bound", "releasedAt": null}
                        });
                        self.api
                            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
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

    /// Reads one object fresh into the overlay (after losing a race on it).
    async fn refresh(&self, name: &str) {
        let fresh = match self.api.get_opt(name).await {
            Ok(object) => object,
            Err(err) => {
                tracing::warn!(%name, error = %err, "refreshing after a conflict failed");
                return;
            }
        };
        self.local
            .lock()
            .expect("ledger lock")
            .overlay
            .insert(name.to_string(), (fresh, Instant::now()));
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
pub fn plan_writes(
    request: &Request,
    decision: &Decision,
    snapshot: &Snapshot,
    ctx: &Context,
) -> Vec<Write> {
    let member = Member::of(request);
    let key = request.sharing_key.as_ref().map(|k| k.value.clone());
    let mut writes = Vec::new();
    for assignment in &decision.assignments {
        let current_entry = snapshot.ledger.get(&assignment.ip);
        let object = snapshot.objects.get(&assignment.ip);
        let live = current_entry.filter(|e| !e.is_released() || e.is_reserved(ctx));
        let mut entry = match live {
            Some(existing) if !existing.is_released() => existing.clone(),
            _ => LedgerEntry {
                ip: assignment.ip,
                pool: assignment.pool.clone(),
                sharing_key: None,
                members: Vec::new(),
                released_at: None,
            },
        };
        entry.members.retain(|m| m.service != request.service);
        entry.members.push(member.clone());
        entry.members.sort_by(|a, b| a.service.cmp(&b.service));
        entry.sharing_key = key.clone();
        let rebind = current_entry.is_some_and(|e| e.is_released());
        match object {
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
