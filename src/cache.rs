//! Reflector caches of vipam's own objects, tolerant of malformed objects.
//!
//! Every webhook replica keeps IPPools, IPAllocations and L2Announcements in memory; a malformed
//! object is logged and skipped (it never stops the watch), as DESIGN invariant 7 asks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::api::{IPAllocation, IPPool, L2Announcement};

/// In-memory views of vipam's objects.
#[derive(Clone)]
pub struct Caches {
    pub pools: Store<DeserializeGuard<IPPool>>,
    pub allocations: Store<DeserializeGuard<IPAllocation>>,
    pub l2announcements: Store<DeserializeGuard<L2Announcement>>,
    synced: Arc<AtomicBool>,
}

/// Writers for [`Caches`], for tests that feed objects by hand.
pub struct CacheWriters {
    pub pools: reflector::store::Writer<DeserializeGuard<IPPool>>,
    pub allocations: reflector::store::Writer<DeserializeGuard<IPAllocation>>,
    pub l2announcements: reflector::store::Writer<DeserializeGuard<L2Announcement>>,
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
        let (allocations, allocation_writer) = reflector::store();
        let (l2announcements, l2_writer) = reflector::store();
        (
            Caches {
                pools,
                allocations,
                l2announcements,
                synced: Arc::new(AtomicBool::new(false)),
            },
            CacheWriters {
                pools: pool_writer,
                allocations: allocation_writer,
                l2announcements: l2_writer,
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

    /// Starts the reflectors on `client`; returns once every cache listed its objects.
    pub async fn start(client: Client, writers: CacheWriters, caches: &Caches) {
        spawn_reflector::<IPPool>(client.clone(), writers.pools);
        spawn_reflector::<IPAllocation>(client.clone(), writers.allocations);
        spawn_reflector::<L2Announcement>(client, writers.l2announcements);
        let _ = caches.pools.wait_until_ready().await;
        let _ = caches.allocations.wait_until_ready().await;
        let _ = caches.l2announcements.wait_until_ready().await;
        caches.mark_synced();
        tracing::info!("caches synced");
    }
}

fn spawn_reflector<K>(client: Client, writer: reflector::store::Writer<DeserializeGuard<K>>)
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
    let guarded: Api<DeserializeGuard<K>> = Api::all(client);
    let stream = reflector::reflector(
        writer,
        watcher(guarded, watcher::Config::default()).default_backoff(),
    )
    .applied_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(DeserializeGuard(Err(invalid))) => {
                    tracing::warn!(%kind, name = %invalid.metadata.name.clone().unwrap_or_default(), error = %invalid.error, "skipping a malformed object");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%kind, error = %err, "watch error; retrying with backoff")
                }
            }
        }
    });
}
