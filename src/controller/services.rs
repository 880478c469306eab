//! Each Service reconciled on its own: a kube-runtime `Controller` over the shared Service
//! watch (malformed Services are skipped through `DeserializeGuard`), with a backoff per
//! Service. A Service whose status write fails is retried after 1 s, 2 s, 4 s ... (at most
//! [`MAX_BACKOFF`]) without delaying any other; the count starts again when the write succeeds
//! or the Service changes.
//!
//! What triggers a Service: its own changes; a change of an IPAllocation it is on (created by
//! the webhook, announced, in conflict, released); and, for every Service, a change of the
//! IPPools or L2Announcements, of what decides whether a node may announce (the placement
//! view), leadership gained, and every resync interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{broadcast, mpsc, watch};

use super::reconcile::{ReconcileError, Reconciler};
use crate::admin::{Metrics, ReconcileLabel};
use crate::cache::Caches;
use crate::core::category::Category;
use crate::core::request::ServiceRef;

/// The longest wait before a failing Service is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long the first reconciliations wait for the placement view to list its objects.
const PLACEMENT_WAIT: Duration = Duration::from_secs(10);
/// How often the change counters are looked at.
const POLL: Duration = Duration::from_millis(250);

/// The wait before the `failures`-th retry of one Service: 1 s, doubling, at most
/// [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF)
}

type Key = ObjectRef<DeserializeGuard<Service>>;

struct Context {
    reconciler: Arc<Reconciler>,
    metrics: Arc<Metrics>,
    /// Failures in a row per Service, with the resourceVersion they were seen at.
    failures: Mutex<HashMap<Key, (Option<String>, u32)>>,
}

impl Context {
    fn count(&self, result: &str) {
        self.metrics
            .reconciles
            .get_or_create(&ReconcileLabel {
                kind: "Service".into(),
                result: result.into(),
            })
            .inc();
    }
}

async fn reconcile(
    object: Arc<DeserializeGuard<Service>>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    // A malformed Service was logged by the watch; it is never ours to write.
    let Ok(service) = &object.0 else {
        return Ok(Action::await_change());
    };
    let report = match ctx.reconciler.reconcile_one(service).await {
        Ok(report) => report,
        Err(err) => {
            ctx.count(err.category());
            return Err(err);
        }
    };
    if !report.not_leader {
        ctx.count("ok");
        let key = ObjectRef::from_obj(&*object);
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
    Ok(Action::await_change())
}

fn error_policy(
    object: Arc<DeserializeGuard<Service>>,
    err: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let key = ObjectRef::from_obj(&*object);
    let version = object.resource_version();
    let failures = {
        let mut all = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let entry = all.entry(key.clone()).or_insert((version.clone(), 0));
        if entry.0 != version {
            // The Service changed since it last failed: start again.
            *entry = (version, 0);
        }
        entry.1 += 1;
        entry.1
    };
    let wait = backoff(failures);
    tracing::warn!(service = %key, error = %err, label = err.category(), failures, retry_in = ?wait, "reconciling a Service failed; retrying it alone");
    Action::requeue(wait)
}

/// The Services of each changed IPAllocation. A reader that fell behind reconciles every
/// Service instead (`lagged` is bumped).
fn touched(
    receiver: broadcast::Receiver<Vec<ServiceRef>>,
    lagged: Arc<AtomicU64>,
) -> impl Stream<Item = Key> + Send {
    stream::unfold(receiver, move |mut receiver| {
        let lagged = lagged.clone();
        async move {
            loop {
                match receiver.recv().await {
                    Ok(services) => return Some((services, receiver)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        lagged.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
    .flat_map(|services| {
        stream::iter(
            services
                .into_iter()
                .map(|s| ObjectRef::new(&s.name).within(&s.namespace)),
        )
    })
}

/// One item whenever every Service should be looked at: a counter in `counters` moved,
/// leadership was gained, or `resync` passed.
fn everything(
    counters: Vec<Arc<AtomicU64>>,
    leadership: watch::Receiver<bool>,
    resync: Duration,
) -> impl Stream<Item = ()> + Send {
    let read = |counters: &[Arc<AtomicU64>]| -> Vec<u64> {
        counters.iter().map(|c| c.load(Ordering::Acquire)).collect()
    };
    let seen = read(&counters);
    let deadline = tokio::time::Instant::now() + resync;
    stream::unfold(
        (counters, seen, leadership, deadline),
        move |(counters, mut seen, mut leadership, mut deadline)| async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {
                        let now = read(&counters);
                        if now != seen {
                            seen = now;
                            break;
                        }
                    }
                    changed = leadership.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        if *leadership.borrow_and_update() {
                            break;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            deadline = tokio::time::Instant::now() + resync;
            Some(((), (counters, seen, leadership, deadline)))
        },
    )
}

/// What the Service controller needs.
pub struct ServiceController {
    pub reconciler: Arc<Reconciler>,
    pub caches: Caches,
    pub services: Store<DeserializeGuard<Service>>,
    /// Every Service the shared watch applied (the first list included).
    pub applied: mpsc::UnboundedReceiver<DeserializeGuard<Service>>,
    /// True once the Service watch listed every Service.
    pub services_listed: watch::Receiver<bool>,
    /// Bumped by the placement view (nodes, agent Leases, endpoints).
    pub placement_changes: Arc<AtomicU64>,
    pub leadership: watch::Receiver<bool>,
    pub resync: Duration,
    pub metrics: Arc<Metrics>,
}

impl ServiceController {
    /// Runs until the task is dropped. Starts once every cache listed its objects: deciding
    /// earlier could allocate what the ledger already holds.
    pub async fn run(self) {
        while !self.caches.is_synced() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Not `Store::wait_until_ready`: its readiness is a oneshot that wakes only the last
        // of several waiters, and the global pass waits for the same store.
        let mut listed = self.services_listed;
        let _ = listed.wait_for(|listed| *listed).await;
        // The first conditions would otherwise say less than they could (and be rewritten a
        // moment later); bounded, since the placement watches may lack permissions.
        let placement = self.reconciler.placement_synced();
        let _ = tokio::time::timeout(PLACEMENT_WAIT, placement).await;
        let applied = stream::unfold(self.applied, |mut applied| async move {
            applied.recv().await.map(|service| (Ok(service), applied))
        });
        let lagged = Arc::new(AtomicU64::new(0));
        let touched = touched(self.caches.touched.subscribe(), lagged.clone());
        let everything = everything(
            vec![
                self.caches.generation.clone(),
                self.placement_changes,
                lagged,
            ],
            self.leadership,
            self.resync,
        );
        let context = Arc::new(Context {
            reconciler: self.reconciler,
            metrics: self.metrics,
            failures: Mutex::new(HashMap::new()),
        });
        Controller::for_stream(applied, self.services)
            // Bursts (a pool edit, a relist) are taken together, each Service once.
            .with_config(Config::default().debounce(Duration::from_millis(20)))
            .reconcile_all_on(everything)
            .reconcile_on(touched)
            .run(reconcile, error_policy, context)
            .for_each(|_| std::future::ready(()))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_second_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=11).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
