//! Leader election on a coordination.k8s.io Lease (the object is [`crate::lease`]'s, shared
//! with the agents): create, or replace with the resourceVersion read (optimistic concurrency
//! makes two candidates race safely).
//!
//! Only the leader runs the reconcilers. Leadership is checked before every write and lapses
//! on its own when the lease is not renewed in time: a leader that cannot renew stops writing
//! at once, before anyone else may take the lease over.
//!
//! Expiry of another replica's lease is judged by this replica's own clock, with the rule the
//! agents use ([`crate::core::ownership::Liveness`], through [`crate::lease::Sighting`]): the lease is live while it changed (a new
//! resourceVersion) less than its duration ago *as seen from here*. The renewTime another
//! replica wrote is never compared with the local clock, so clock skew between nodes cannot
//! make a standby take over from a leader that is still renewing. The cost: a standby that
//! starts after the leader died waits one lease duration from its first look at the lease.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use tokio::sync::watch;

use super::clock::SharedClock;
use super::reconcile::FIELD_MANAGER;
use crate::api::post_params;
use crate::core::category::Category;
use crate::core::ownership::Liveness;
use crate::lease::Sighting;

/// Name of the controller's Lease.
pub const LEASE_NAME: &str = "vipam-controller";

/// Settings of one candidate.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica (the pod name).
    pub identity: String,
    /// How long a lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How often the leader renews (and candidates retry).
    pub renew_period: Duration,
}

/// Why a lease round failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("Lease {name}: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl crate::core::category::Category for LeaseError {
    fn category(&self) -> &'static str {
        match self {
            LeaseError::Api { .. } => "api_error",
        }
    }
}

/// Whether this replica may write now; shared by every writer.
#[derive(Clone)]
pub struct LeaderGate {
    clock: SharedClock,
    /// Unix milliseconds until which the lease is ours; 0 when not leading.
    valid_until: Arc<AtomicI64>,
    changes: watch::Sender<bool>,
}

impl LeaderGate {
    pub fn new(clock: SharedClock) -> LeaderGate {
        LeaderGate {
            clock,
            valid_until: Arc::new(AtomicI64::new(0)),
            changes: watch::channel(false).0,
        }
    }

    /// A gate that always leads (a single replica, tests and benchmarks of the reconciler).
    pub fn always(clock: SharedClock) -> LeaderGate {
        let gate = LeaderGate::new(clock);
        gate.hold_until(i64::MAX);
        gate
    }

    /// Whether this replica leads now (its lease is held and not yet due).
    pub fn is_leader(&self) -> bool {
        self.clock.now_millis() < self.valid_until.load(Ordering::Acquire)
    }

    /// Leadership changes (true = gained), for waking the reconcilers.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.changes.subscribe()
    }

    fn hold_until(&self, millis: i64) {
        self.valid_until.store(millis, Ordering::Release);
        self.changes
            .send_if_modified(|leading| !std::mem::replace(leading, true));
    }

    fn lose(&self) {
        self.valid_until.store(0, Ordering::Release);
        self.changes
            .send_if_modified(|leading| std::mem::replace(leading, false));
    }
}

/// One candidate for the Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    gate: LeaderGate,
    /// When this replica saw the lease change, by its own clock.
    observed: Mutex<Liveness>,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig, gate: LeaderGate) -> Elector {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            gate,
            observed: Mutex::new(Liveness::default()),
        }
    }

    /// Acquires or renews the lease once; updates the gate. Any failure ends leadership at once
    /// (a leader unsure of its lease must not write).
    pub async fn round(&self) -> Result<bool, LeaseError> {
        let started = self.gate.clock.now_millis();
        match self.try_hold(started).await {
            Ok(true) => {
                let duration = self.config.lease_duration.as_millis() as i64;
                // Measured from before the request: the lease may have been written at its start.
                self.gate.hold_until(started + duration);
                Ok(true)
            }
            Ok(false) => {
                self.gate.lose();
                Ok(false)
            }
            Err(err) => {
                self.gate.lose();
                Err(err)
            }
        }
    }

    async fn try_hold(&self, now: i64) -> Result<bool, LeaseError> {
        let name = &self.config.name;
        let api_error = |source| LeaseError::Api {
            name: name.clone(),
            source,
        };
        let now_at = Timestamp::from_millisecond(now).unwrap_or(Timestamp::UNIX_EPOCH);
        let duration = self.config.lease_duration;
        let namespace = &self.config.namespace;
        let identity = self.config.identity.as_str();
        let Some(lease) = self.api.get_opt(name).await.map_err(api_error)? else {
            let lease =
                crate::lease::write(None, name, namespace, Some(identity), duration, now_at);
            return match self.api.create(&post_params(FIELD_MANAGER), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(source) => Err(api_error(source)),
            };
        };
        let seen = Sighting::of(&lease, duration);
        let mine = seen.holder.as_deref() == Some(identity);
        let seen_at = Duration::from_millis(now.max(0) as u64);
        let live = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            seen.record(&mut observed, name, seen_at);
            observed.is_live(name, seen_at)
        };
        if !mine && live {
            return Ok(false);
        }
        let lease = crate::lease::write(
            Some(&lease),
            name,
            namespace,
            Some(identity),
            duration,
            now_at,
        );
        // The resourceVersion read makes this a compare-and-swap.
        match self
            .api
            .replace(name, &post_params(FIELD_MANAGER), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(source) => Err(api_error(source)),
        }
    }

    /// Runs rounds every renew period until the task is dropped.
    pub async fn run(self) {
        loop {
            let was = self.gate.is_leader();
            match self.round().await {
                Ok(now) if now != was => {
                    tracing::info!(identity = %self.config.identity, leader = now, "leadership changed")
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, label = err.category(), "lease round failed; not leading")
                }
            }
            tokio::time::sleep(self.config.renew_period).await;
        }
    }
}
