//! The agent's caches: reflectors that keep only what ownership reads, and wake the
//! decision loop only when it changed.

use super::*;

/// Drops what the agent never reads from cached objects (managedFields and annotations can
/// be most of an object's size), so memory follows the number of objects, not their history.
pub(super) fn trim_metadata<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}

/// A Node as the agent needs it: labels and conditions (not images, addresses, capacity...).
pub(super) fn trim_node(node: &mut Node) {
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
pub(super) fn fingerprint(parts: impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(parts)
}

pub(super) fn allocation_fingerprint(guard: &DeserializeGuard<IPAllocation>) -> u64 {
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

pub(super) fn service_fingerprint(service: &Service) -> u64 {
    fingerprint((
        service.labels(),
        service
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.as_ref()),
    ))
}

pub(super) fn slice_fingerprint(slice: &EndpointSlice) -> u64 {
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

pub(super) fn node_fingerprint(node: &Node) -> u64 {
    let conditions: Vec<(&String, &String)> = node
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .map(|c| (&c.type_, &c.status))
        .collect();
    fingerprint((node.labels(), conditions))
}

pub(super) fn l2_fingerprint(guard: &DeserializeGuard<L2Announcement>) -> u64 {
    match &guard.0 {
        Ok(l2) => fingerprint(serde_json::to_string(&l2.spec).unwrap_or_default()),
        Err(invalid) => {
            tracing::warn!(kind = "L2Announcement", name = %invalid.metadata.name.clone().unwrap_or_default(), error = %invalid.error, "skipping a malformed object");
            fingerprint(&invalid.error)
        }
    }
}

pub(super) fn spawn_reflector<K>(
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
