//! coordination.k8s.io Leases as vipam's three holders write and read them: the controller's
//! leader Lease (`vipam-controller`), each agent's node Lease (`vipam-agent-<node>`) and the
//! control-plane VIP's Lease (`vipam-control-plane`).
//!
//! Whether a Lease is live is one pure rule, [`crate::core::ownership::Liveness`]: live while
//! less than its duration has passed, on the *observer's* monotonic clock, since the observer
//! saw it change (a new resourceVersion). The renewTime another node wrote is never compared
//! with the local clock, so clock skew between nodes cannot make anyone take over from a holder
//! that is still renewing. This module is what the three holders share on top of that rule:
//! reading a Lease ([`Sighting`]) into the observer's [`Liveness`], and writing the object a
//! holder creates, renews or releases ([`write`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use crate::core::ownership::Liveness;

/// The Lease's duration in milliseconds: `leaseDurationSeconds` cannot say a sub-second
/// duration, which tests and fast-failover set-ups use. Read first when present.
pub const DURATION_MS_ANNOTATION: &str = "vipam.io/lease-duration-ms";

/// What one look at a Lease tells an observer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// resourceVersion: opaque, compared for equality only.
    pub version: String,
    /// `None` for a released Lease (no holder, or an empty one).
    pub holder: Option<String>,
    /// As its writer meant it: the milliseconds annotation, else `leaseDurationSeconds`, else
    /// the observer's own default.
    pub duration: Duration,
}

impl Sighting {
    pub fn of(lease: &Lease, fallback: Duration) -> Sighting {
        let spec = lease.spec.as_ref();
        let seconds = spec
            .and_then(|s| s.lease_duration_seconds)
            .filter(|s| *s > 0)
            .map(|s| Duration::from_secs(s as u64));
        let millis = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DURATION_MS_ANNOTATION))
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        Sighting {
            version: lease.metadata.resource_version.clone().unwrap_or_default(),
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            duration: millis.or(seconds).unwrap_or(fallback),
        }
    }

    /// Records this sighting as `key`'s in `liveness` at the observer's time `now`; whether
    /// the Lease changed since the last sighting.
    pub fn record(&self, liveness: &mut Liveness, key: &str, now: Duration) -> bool {
        liveness.observe(
            key,
            &self.version,
            self.duration,
            self.holder.is_some(),
            now,
        )
    }
}

/// The Lease `holder` writes: `base` as read (its resourceVersion makes a replace a
/// compare-and-swap) or, the first time, a new one named `name` in `namespace`. `holder: None`
/// releases it as client-go does: no holder, the shortest duration. Taking it from another
/// holder (or creating it) sets acquireTime and counts a transition.
pub fn write(
    base: Option<&Lease>,
    name: &str,
    namespace: &str,
    holder: Option<&str>,
    duration: Duration,
    now: Timestamp,
) -> Lease {
    let now = MicroTime(now);
    let mut lease = base.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec::default()),
    });
    let duration_ms = match holder {
        Some(_) => duration.as_millis().max(1) as u64,
        None => 1,
    };
    lease
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(DURATION_MS_ANNOTATION.to_string(), duration_ms.to_string());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let previous = spec.holder_identity.clone().filter(|h| !h.is_empty());
    if let Some(holder) = holder
        && previous.as_deref() != Some(holder)
    {
        if base.is_some() {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.acquire_time = Some(now.clone());
    }
    spec.lease_transitions.get_or_insert(0);
    spec.holder_identity = holder.map(str::to_string);
    spec.lease_duration_seconds = Some(duration_ms.div_ceil(1000) as i32);
    spec.renew_time = Some(now);
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn creating_renewing_taking_over_and_releasing() {
        let d = Duration::from_millis(1500);
        let created = write(None, "l", "ns", Some("a"), d, at(0));
        let spec = created.spec.clone().unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("l"));
        assert_eq!(created.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(2), "rounded up");
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(Sighting::of(&created, Duration::ZERO).duration, d);

        let renewed = write(Some(&created), "l", "ns", Some("a"), d, at(1));
        let spec = renewed.spec.clone().unwrap();
        assert_eq!(
            spec.acquire_time,
            Some(MicroTime(at(0))),
            "a renewal keeps it"
        );
        assert_eq!(spec.renew_time, Some(MicroTime(at(1))));
        assert_eq!(spec.lease_transitions, Some(0));

        let taken = write(Some(&renewed), "l", "ns", Some("b"), d, at(2));
        let spec = taken.spec.clone().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("b"));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(2))));
        assert_eq!(spec.lease_transitions, Some(1));

        let released = write(Some(&taken), "l", "ns", None, d, at(3));
        let seen = Sighting::of(&released, d);
        assert_eq!(seen.holder, None);
        assert_eq!(seen.duration, Duration::from_millis(1));
        assert_eq!(released.spec.unwrap().lease_duration_seconds, Some(1));
    }

    #[test]
    fn sightings_read_what_the_writer_meant() {
        let fallback = Duration::from_secs(15);
        let mut lease = Lease::default();
        assert_eq!(
            Sighting::of(&lease, fallback),
            Sighting {
                version: String::new(),
                holder: None,
                duration: fallback
            }
        );
        lease.metadata.resource_version = Some("abc".into());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(7),
            ..LeaseSpec::default()
        });
        let seen = Sighting::of(&lease, fallback);
        assert_eq!(
            (seen.version.as_str(), seen.holder, seen.duration),
            ("abc", None, Duration::from_secs(7)),
            "an empty holder is a released Lease"
        );
        lease.metadata.annotations = Some(BTreeMap::from([(
            DURATION_MS_ANNOTATION.to_string(),
            "250".to_string(),
        )]));
        assert_eq!(
            Sighting::of(&lease, fallback).duration,
            Duration::from_millis(250)
        );
        lease
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DURATION_MS_ANNOTATION.to_string(), "soon".to_string());
        assert_eq!(
            Sighting::of(&lease, fallback).duration,
            Duration::from_secs(7),
            "an unreadable annotation falls back to the seconds"
        );
    }

    #[test]
    fn liveness_follows_changes_by_the_observers_clock() {
        let d = Duration::from_secs(2);
        let mut liveness = Liveness::default();
        let mut lease = write(None, "l", "ns", Some("a"), d, at(0));
        lease.metadata.resource_version = Some("1".into());
        let seen = Sighting::of(&lease, d);
        assert!(seen.record(&mut liveness, "l", Duration::from_secs(100)));
        assert!(liveness.is_live("l", Duration::from_millis(101_999)));
        // The same version again is no sign of life, whatever its renewTime says.
        assert!(!seen.record(&mut liveness, "l", Duration::from_secs(101)));
        assert!(!liveness.is_live("l", Duration::from_secs(102)));
        lease.metadata.resource_version = Some("2".into());
        assert!(Sighting::of(&lease, d).record(&mut liveness, "l", Duration::from_secs(103)));
        assert!(liveness.is_live("l", Duration::from_secs(104)));
    }
}
