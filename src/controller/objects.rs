//! Each Service and each IPAllocation reconciled on its own: two kube-runtime `Controller`s
//! over the shared watches (malformed objects are skipped through `DeserializeGuard`), with a
//! backoff per object. An object whose write fails is retried after 1 s, 2 s, 4 s ... (at most
//! [`MAX_BACKOFF`]) without delaying any other; the count starts again when it succeeds or the
//! object changes.
//!
//! What triggers a Service: its own changes; a change of an IPAllocation it is on (created by
//! the webhook, announced, in conflict, released); and, for every Service, a change of the
//! IPPools or L2Announcements, of what decides whether a node may announce (the placement
//! view), leadership gained, and every resync interval.
//!
//! What triggers an IPAllocation: its own changes; and, for every one, a change of the IPPools
//! (an address outside every pool is `Orphaned`), leadership gained, and every resync interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt, stream};
use k8s_openapi::api::core::v1::Service;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tokio::sync::{broadcast, mpsc, watch};

use super::reconcile::{PassReport, ReconcileError, Reconciler};
use crate::admin::{Metrics, ReconcileLabel};
use crate::api::IPAllocation;
use crate::cache::Caches;
use crate::core::category::Category;
use crate::core::request::ServiceRef;

/// The longest wait before a failing Service is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How many objects of one kind are reconciled at once. Unbounded, a burst (500 Services
/// created together) sent hundreds of status writes at the API server at once, beside the
/// admissions it must answer within their 5 s webhook timeout; a few at a time keep one slow
/// write from holding up the others without flooding the server.
const CONCURRENCY: u16 = 4;

/// The controllers' settings: bursts (a pool edit, a relist) are taken together (20 ms), each
/// object once, [`CONCURRENCY`] at a time.
fn config() -> Config {
    Config::default()
        .debounce(Duration::from_millis(20))
        .concurrency(CONCURRENCY)
}

/// How long the first reconciliations wait for the placement view to list its objects.
const PLACEMENT_WAIT: Duration = Duration::from_secs(10);
/// The shortest time between two reconciliations of everything.
const MIN_GAP: Duration = Duration::from_secs(2);
/// How often the change counters are looked at.
const POLL: Duration = Duration::from_millis(250);

/// The wait before the `failures`-th retry of one Service: 1 s, doubling, at most
/// [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF)
}

type Key = ObjectRef<DeserializeGuard<Service>>;

/// Failures in a row per object, with the resourceVersion they were seen at.
type Failures<K> = HashMap<ObjectRef<K>, (Option<String>, u32)>;

/// What one kind's controller shares between its reconciliations.
struct Context<K: Resource<DynamicType = ()>> {
    reconciler: Arc<Reconciler>,
    metrics: Arc<Metrics>,
    failures: Mutex<Failures<K>>,
}

impl<K: Resource<DynamicType = ()>> Context<K> {
    fn new(reconciler: Arc<Reconciler>, metrics: Arc<Metrics>) -> Arc<Context<K>> {
        Arc::new(Context {
            reconciler,
            metrics,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one reconciliation; a success forgets the object's failures.
    fn finish(
        &self,
        object: &K,
        result: Result<PassReport, ReconcileError>,
    ) -> Result<Action, ReconcileError> {
        let label = match &result {
            Ok(report) if report.not_leader => return Ok(Action::await_change()),
            Ok(_) => "ok",
            Err(err) => err.category(),
        };
        self.metrics
            .reconciles
            .get_or_create(&ReconcileLabel {
                kind: K::kind(&()).to_string(),
                result: label.into(),
            })
            .inc();
        result?;
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ObjectRef::from_obj(object));
        Ok(Action::await_change())
    }
}

async fn reconcile_service(
    object: Arc<DeserializeGuard<Service>>,
    ctx: Arc<Context<DeserializeGuard<Service>>>,
) -> Result<Action, ReconcileError> {
    // A malformed Service was logged by the watch; it is never ours to write.
    let Ok(service) = &object.0 else {
        return Ok(Action::await_change());
    };
    let result = ctx.reconciler.reconcile_one(service).await;
    ctx.finish(&object, result)
}

async fn reconcile_allocation(
    object: Arc<DeserializeGuard<IPAllocation>>,
    ctx: Arc<Context<DeserializeGuard<IPAllocation>>>,
) -> Result<Action, ReconcileError> {
    if object.0.is_err() {
        return Ok(Action::await_change());
    }
    let result = ctx
        .reconciler
        .reconcile_allocation(&object.name_any())
        .await;
    ctx.finish(&object, result)
}

fn error_policy<K: Resource<DynamicType = ()>>(
    object: Arc<K>,
    err: &ReconcileError,
    ctx: Arc<Context<K>>,
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
    tracing::warn!(object = %key, error = %err, label = err.category(), failures, retry_in = ?wait, "reconciling failed; retrying this object alone");
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

/// One item whenever every object should be looked at: at once when this replica already
/// leads as the stream starts (it may have won the election before anyone listened), then
/// whenever a counter in `counters` moves, leadership is gained, or `resync` passes.
fn everything_of(
    counters: Vec<Arc<AtomicU64>>,
    mut leadership: watch::Receiver<bool>,
    resync: Duration,
) -> impl Stream<Item = ()> + Send {
    let read = |counters: &[Arc<AtomicU64>]| -> Vec<u64> {
        counters.iter().map(|c| c.load(Ordering::Acquire)).collect()
    };
    let seen = read(&counters);
    let leading_already = *leadership.borrow_and_update();
    let deadline = tokio::time::Instant::now() + resync;
    let later = stream::unfold(
        (counters, seen, leadership, deadline),
        move |(counters, mut seen, mut leadership, mut deadline)| async move {
            // At most one "everything" per MIN_GAP: during a burst (hundreds of Services and
            // their EndpointSlices created at once) the counters move all the time, and
            // reconciling every object each time crowded out the webhook's admissions.
            tokio::time::sleep(MIN_GAP).await;
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
    );
    stream::iter(leading_already.then_some(())).chain(later)
}

/// What the Service and IPAllocation controllers need.
pub struct ObjectControllers {
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
    /// The same, for the IPAllocation controller.
    pub allocations_leadership: watch::Receiver<bool>,
    pub resync: Duration,
    pub metrics: Arc<Metrics>,
}

impl ObjectControllers {
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
        let everything = everything_of(
            vec![
                self.caches.generation.clone(),
                self.placement_changes,
                lagged,
            ],
            self.leadership,
            self.resync,
        );
        let services = Controller::for_stream(applied, self.services)
            .with_config(config())
            .reconcile_all_on(everything)
            .reconcile_on(touched)
            .run(
                reconcile_service,
                error_policy,
                Context::new(self.reconciler.clone(), self.metrics.clone()),
            )
            .for_each(|_| std::future::ready(()));
        let allocations_lagged = Arc::new(AtomicU64::new(0));
        let changed = changed_allocations(
            self.caches.allocations_changed.subscribe(),
            allocations_lagged.clone(),
        );
        let all_allocations = everything_of(
            vec![self.caches.generation.clone(), allocations_lagged],
            self.allocations_leadership,
            self.resync,
        );
        // The allocations' own trigger is `changed` (the ledger watch feeds the store).
        let allocations =
            Controller::for_stream(stream::pending(), self.caches.allocations.clone())
                .with_config(config())
                .reconcile_all_on(all_allocations)
                .reconcile_on(changed)
                .run(
                    reconcile_allocation,
                    error_policy,
                    Context::new(self.reconciler, self.metrics),
                )
                .for_each(|_| std::future::ready(()));
        futures::join!(services, allocations);
    }
}

/// The allocations the ledger watch saw change. A reader that fell behind reconciles every
/// allocation instead (`lagged` is bumped).
fn changed_allocations(
    receiver: broadcast::Receiver<String>,
    lagged: Arc<AtomicU64>,
) -> impl Stream<Item = ObjectRef<DeserializeGuard<IPAllocation>>> + Send {
    stream::unfold(receiver, move |mut receiver| {
        let lagged = lagged.clone();
        async move {
            loop {
                match receiver.recv().await {
                    Ok(name) => return Some((ObjectRef::new(&name), receiver)),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        lagged.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
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
