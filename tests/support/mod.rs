//! An in-process, stateful fake Kubernetes API server for tests and benchmarks.
//!
//! `FakeApi::new()` holds the state; `fake.client()` is a `kube::Client` talking to it
//! without a socket; `fake.serve(addr)` shares the same state over plain HTTP with a
//! kubeconfig. See docs/fake-apiserver.md for the semantics and their limits.

// Each test crate (and examples/fake-apiserver.rs) compiles this module and uses a
// different part of it, so unused items and re-exports are expected.
#![allow(dead_code, unused_imports)]

mod faults;
mod handler;
mod patch;
mod resources;
mod selector;
mod serve;
mod status;
mod store;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;

pub use faults::{Fault, Outage, RequestRecord, Verb};
pub use handler::FakeBody;
pub use resources::{ResourceType, VIPAM_GROUP, VIPAM_VERSION};
pub use serve::{FakeServer, FakeService};
pub use status::ApiError;

use store::State;

/// Default number of changes kept for watches to resume from.
pub const DEFAULT_HISTORY: usize = 10_000;

/// The error a client sees while the fake is down (`Outage::Refuse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection refused: the fake API server is down (simulated outage)")
    }
}

impl std::error::Error for Unavailable {}

struct Inner {
    state: Mutex<State>,
    outage: watch::Sender<Option<Outage>>,
    /// Ticks after every request and seeded change: what `wait_for*` waits on.
    changes: watch::Sender<u64>,
}

/// A handle to one fake API server; clones share it.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// A fake that keeps only the last `changes` changes for watches: a watch from an older
    /// resourceVersion gets 410 Gone.
    pub fn with_history(changes: usize) -> Self {
        FakeApi {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(changes)),
                outage: watch::channel(None).0,
                changes: watch::channel(0).0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the others.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify_change(&self) {
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// A `kube::Client` on this fake, default namespace `default`. Needs a tokio runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.service(), "default")
    }

    /// The tower service behind `client()`, for building a client by hand.
    pub fn service(&self) -> FakeService {
        FakeService { api: self.clone() }
    }

    /// Serves another resource type (e.g. a test CRD).
    pub fn register(&self, rt: ResourceType) {
        self.lock().register(rt);
    }

    /// Keeps only the last `changes` changes from now on (drops older ones at once).
    pub fn set_history_limit(&self, changes: usize) {
        self.lock().set_history_limit(changes);
    }

    /// Stores `obj` (any serialisable Kubernetes object with apiVersion and kind) as is,
    /// status included, creating or replacing it; namespaced objects default to `default`.
    /// Returns the stored object. Panics with the reason if the object is not acceptable.
    pub fn seed(&self, obj: impl Serialize) -> Value {
        self.try_seed(obj)
            .unwrap_or_else(|e| panic!("FakeApi::seed: {e}"))
    }

    pub fn try_seed(&self, obj: impl Serialize) -> Result<Value, ApiError> {
        let value = serde_json::to_value(obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let stored = self.lock().seed(value);
        self.notify_change();
        stored
    }

    fn resource(&self, resource: &str) -> ResourceType {
        self.lock()
            .lookup(resource)
            .unwrap_or_else(|| panic!("the fake serves no resource named {resource:?}"))
    }

    /// An object by resource (`services`, `ippools`, `leases.coordination.k8s.io`),
    /// namespace (None for cluster-scoped) and name.
    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let rt = self.resource(resource);
        self.lock()
            .get_object(&rt, namespace.unwrap_or_default(), name)
            .cloned()
    }

    /// A typed object, e.g. `fake.get_as::<Service>(Some("default"), "web")`.
    pub fn get_as<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let resource = format!("{}.{}", K::plural(&()), K::group(&()));
        let resource = resource.trim_end_matches('.');
        let v = self.get(resource, namespace, name)?;
        Some(
            serde_json::from_value(v)
                .unwrap_or_else(|e| panic!("stored {resource} does not deserialise: {e}")),
        )
    }

    /// All objects of a resource (in one namespace, or all), ordered by namespace and name.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let rt = self.resource(resource);
        self.lock().all_objects(&rt, namespace)
    }

    /// The latest resourceVersion (one counter for all resources).
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Adds a fault rule; rules are tried in the order added.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Ends every open watch stream (clients see a normal end of stream and re-watch).
    pub fn end_watches(&self) {
        self.lock().end_watches();
        self.notify_change();
    }

    /// Sends a BOOKMARK at the current resourceVersion to watches that allow them.
    pub fn bookmark(&self) {
        self.lock().bookmark_all();
    }

    /// Stops answering: open watches end, and new requests hang or are refused until
    /// `resume()`.
    pub fn outage(&self, mode: Outage) {
        self.inner.outage.send_replace(Some(mode));
        self.end_watches();
    }

    pub fn resume(&self) {
        self.inner.outage.send_replace(None);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Open watch streams, on one resource or on all (`None`).
    pub fn watch_count(&self, resource: Option<&str>) -> usize {
        let rt = resource.map(|r| self.resource(r));
        self.lock().watch_count(rt.as_ref())
    }

    /// Waits until `check` holds; re-checked after every request. Wrap it in a timeout.
    pub async fn wait_until(&self, mut check: impl FnMut(&FakeApi) -> bool) {
        let mut changes = self.inner.changes.subscribe();
        loop {
            changes.borrow_and_update();
            if check(self) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until the object exists and satisfies `check`; returns it. Panics with what
    /// was last seen after `timeout`.
    pub async fn wait_for_object(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        timeout: Duration,
        mut check: impl FnMut(&Value) -> bool,
    ) -> Value {
        let mut found = None;
        let waited = tokio::time::timeout(
            timeout,
            self.wait_until(|f| {
                found = f.get(resource, namespace, name);
                found.as_ref().is_some_and(&mut check)
            }),
        )
        .await;
        match waited {
            Ok(()) => found.expect("checked"),
            Err(_) => panic!(
                "{resource} {namespace:?}/{name} did not reach the expected state within {timeout:?}; last seen: {found:#?}"
            ),
        }
    }

    /// Waits until at least `n` watches are open on `resource`.
    pub async fn wait_for_watches(&self, resource: &str, n: usize, timeout: Duration) {
        let waited = tokio::time::timeout(
            timeout,
            self.wait_until(|f| f.watch_count(Some(resource)) >= n),
        )
        .await;
        if waited.is_err() {
            panic!(
                "expected {n} watches on {resource} within {timeout:?}, found {}",
                self.watch_count(Some(resource))
            );
        }
    }
}
