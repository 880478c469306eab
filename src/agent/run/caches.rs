//! What of the agent's cached objects ownership reads: an event that changes none of it wakes
//! nothing (the reflectors are [`crate::cache::spawn_watched`]).

use super::*;
use crate::cache::fingerprint;

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
