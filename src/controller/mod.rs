//! `vipam controller`: every replica serves the admission webhooks over TLS and the admin
//! endpoints over plain HTTP; the replica holding the Lease `vipam-controller` also runs the
//! reconcilers (Service status, the ledger's lifecycle, pool status). See docs/controller.md.

pub mod bgp;
pub mod clock;
pub mod conditions;
pub mod explain;
pub mod lease;
pub mod objects;
pub mod placement;
pub mod reconcile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use self::clock::{SharedClock, SystemClock};
use self::lease::{Elector, LeaderGate, LeaseConfig};
use self::placement::Placement;
use self::reconcile::{PassReport, Reconciler, ReconcilerConfig};
use crate::admin::{self, Metrics, PhaseLabel, PoolLabel, Readiness, ReconcileLabel};
use crate::cache::Caches;
use crate::core::category::Category;
use crate::core::range::Family;
use crate::core::request::RequestPolicy;
use crate::webhook::selfsigned::{self, SelfSignedConfig};
use crate::webhook::{self, WebhookState, ledger::LedgerView, tls};

/// Flags of `vipam controller` (each also from the environment).
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Namespace vipam runs in.
    #[arg(long, env = "POD_NAMESPACE", default_value = "vipam-system")]
    pub namespace: String,
    /// Address of the admission webhooks (HTTPS only).
    #[arg(long, env = "VIPAM_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    pub webhook_addr: SocketAddr,
    /// Address of /livez, /readyz and /metrics (plain HTTP).
    #[arg(long, env = "VIPAM_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Directory holding tls.crt and tls.key (a cert-manager or any TLS Secret, mounted);
    /// reloaded without restart when their content changes.
    #[arg(
        long,
        env = "VIPAM_TLS_DIR",
        required_unless_present = "self_signed",
        conflicts_with = "self_signed"
    )]
    pub tls_dir: Option<PathBuf>,
    /// vipam makes its own CA and serving certificate, keeps them in the Secret
    /// --tls-secret, renews them, and writes the CA into its webhook configurations' caBundle.
    #[arg(long, env = "VIPAM_SELF_SIGNED")]
    pub self_signed: bool,
    /// Name of the webhook Service (the certificate covers its DNS names).
    #[arg(long, env = "VIPAM_WEBHOOK_SERVICE", default_value = "vipam-webhook")]
    pub webhook_service: String,
    /// Secret holding the self-signed CA and certificate (in --namespace).
    #[arg(long, env = "VIPAM_TLS_SECRET", default_value = "vipam-webhook-tls")]
    pub tls_secret: String,
    /// MutatingWebhookConfiguration whose caBundle vipam keeps (with --self-signed).
    #[arg(
        long,
        env = "VIPAM_MUTATING_WEBHOOK_CONFIGURATION",
        default_value = "vipam"
    )]
    pub mutating_webhook_configuration: String,
    /// ValidatingWebhookConfiguration whose caBundle vipam keeps (with --self-signed).
    #[arg(
        long,
        env = "VIPAM_VALIDATING_WEBHOOK_CONFIGURATION",
        default_value = "vipam"
    )]
    pub validating_webhook_configuration: String,
    /// How often the self-signed Secret and the caBundles are checked (renewal, repair).
    #[arg(long, env = "VIPAM_SELF_SIGNED_CHECK_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub self_signed_check_interval: Duration,
    /// How often the certificate files are checked for new content.
    #[arg(long, env = "VIPAM_TLS_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
    /// How long a released address stays reserved for the Service that held it.
    #[arg(long, env = "VIPAM_STICKY_RELEASE", default_value = "10m", value_parser = parse_duration)]
    pub sticky_release: Duration,
    /// vipam handles LoadBalancer Services without loadBalancerClass.
    #[arg(long, env = "VIPAM_DEFAULT_CLASS", default_value_t = true, action = clap::ArgAction::Set)]
    pub default_class: bool,
    /// Family of single-stack Services that name none (the cluster's primary family).
    #[arg(long, env = "VIPAM_DEFAULT_FAMILY", default_value = "IPv4", value_parser = parse_family)]
    pub default_family: Family,
    /// This replica's name in the leader Lease (the pod name); unset: the host name, or a
    /// name made unique by process id and start time (two replicas must never share one).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long the leader's Lease stays valid without renewal (a standby takes over after it).
    #[arg(long, env = "VIPAM_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews its Lease (and standbys try to take it). Keep it well under
    /// --lease-duration.
    #[arg(long, env = "VIPAM_LEASE_RENEW_PERIOD", default_value = "5s", value_parser = parse_duration)]
    pub lease_renew_period: Duration,
    /// Full reconciliation at least this often, besides every Service, pool or ledger change.
    #[arg(long, env = "VIPAM_RESYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub resync_interval: Duration,
}

/// Parses `90s`, `10m`, `1h`, `500ms` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 90s, 10m, 1h)"))?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(value),
        "ms" => Duration::from_millis(value),
        "m" => Duration::from_secs(value * 60),
        "h" => Duration::from_secs(value * 3600),
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    Ok(duration)
}

/// Parses `IPv4` or `IPv6`.
pub fn parse_family(text: &str) -> Result<Family, String> {
    match text {
        "IPv4" | "ipv4" => Ok(Family::V4),
        "IPv6" | "ipv6" => Ok(Family::V6),
        other => Err(format!("{other:?} is not IPv4 or IPv6")),
    }
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("connecting to the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serving on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl crate::core::category::Category for ControllerError {
    fn category(&self) -> &'static str {
        match self {
            ControllerError::Kube(_) => "kube",
            ControllerError::Serve { .. } => "serve",
        }
    }
}

/// Runs the controller until it fails.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::new());
    let (readiness, flags) = Readiness::new(&["certificate", "caches"]);
    let (caches, writers) = Caches::new();

    admin::serve(args.admin_addr, metrics.clone(), readiness)
        .await
        .map_err(|source| ControllerError::Serve {
            addr: args.admin_addr,
            source,
        })?;

    let caches_synced = flags[1].clone();
    let sync_client = client.clone();
    let sync_caches = caches.clone();
    tokio::spawn(async move {
        Caches::start(sync_client, writers, &sync_caches).await;
        caches_synced.store(true, std::sync::atomic::Ordering::Release);
    });
    spawn_ledger_gauges(caches.clone(), metrics.clone());
    let _reconcilers = Reconcilers::spawn(
        client.clone(),
        caches.clone(),
        LeaderSettings::from_args(&args),
        Arc::new(SystemClock),
        metrics.clone(),
    );

    let tls_config = match &args.tls_dir {
        Some(dir) => {
            tls::serve_config_from_dir(dir.clone(), args.tls_reload_interval, flags[0].clone())
                .await
        }
        None => self_signed_config(&client, &args, flags[0].clone()).await?,
    };
    let state = Arc::new(WebhookState {
        policy: RequestPolicy {
            default_class: args.default_class,
            default_family: args.default_family,
        },
        sticky_release_secs: args.sticky_release.as_secs() as i64,
        ledger: LedgerView::new(client, caches),
        metrics,
    });
    tracing::info!(addr = %args.webhook_addr, namespace = %args.namespace, "webhook listening (TLS)");
    let mut server = axum_server::bind_rustls(args.webhook_addr, tls_config);
    // Slow clients must not hold connections open forever.
    server
        .http_builder()
        .http1()
        .header_read_timeout(Duration::from_secs(10));
    server
        .serve(webhook::router(state).into_make_service())
        .await
        .map_err(|source| ControllerError::Serve {
            addr: args.webhook_addr,
            source,
        })
}

/// Settings of the leader-elected reconcilers.
#[derive(Debug, Clone)]
pub struct LeaderSettings {
    pub lease: LeaseConfig,
    pub reconciler: ReconcilerConfig,
    pub resync_interval: Duration,
}

impl LeaderSettings {
    pub fn from_args(args: &ControllerArgs) -> LeaderSettings {
        let identity = args.identity.clone().unwrap_or_else(default_identity);
        LeaderSettings {
            lease: LeaseConfig {
                namespace: args.namespace.clone(),
                name: lease::LEASE_NAME.into(),
                identity: identity.clone(),
                lease_duration: args.lease_duration,
                renew_period: args.lease_renew_period,
            },
            reconciler: ReconcilerConfig {
                policy: RequestPolicy {
                    default_class: args.default_class,
                    default_family: args.default_family,
                },
                sticky_release_secs: args.sticky_release.as_secs() as i64,
                identity,
            },
            resync_interval: args.resync_interval,
        }
    }
}

fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("vipam-controller-{}-{started}", std::process::id())
        })
}

/// The running election, Service watch and reconcile loop; stopped when dropped.
pub struct Reconcilers {
    pub gate: LeaderGate,
    pub reconciler: Arc<Reconciler>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Reconcilers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Reconcilers {
    /// Starts leader election on the Lease, a Service watch, the placement view, the Service
    /// controller (each Service on its own, see [`services`]) and the loop that runs the global
    /// pass while leading: on every Service event, pool or L2Announcement change, change of
    /// what the agents report, leadership gain, the earliest sticky expiry, and every resync
    /// interval.
    pub fn spawn(
        client: kube::Client,
        caches: Caches,
        settings: LeaderSettings,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Reconcilers {
        let gate = LeaderGate::new(clock.clone());
        let elector = Elector::new(client.clone(), settings.lease.clone(), gate.clone());
        let mut tasks = vec![tokio::spawn(elector.run())];
        let (writer_end, applied) = tokio::sync::mpsc::unbounded_channel();
        let (services, writer) = reflector::store::<DeserializeGuard<Service>>();
        let changed = Arc::new(Notify::new());
        let (listed, services_listed) = tokio::sync::watch::channel(false);
        tasks.push(spawn_service_watch(
            client.clone(),
            writer,
            changed.clone(),
            Some((writer_end, listed)),
        ));
        let placement_changes = Arc::new(AtomicU64::new(0));
        let (placement, placement_tasks) = Placement::spawn(
            client.clone(),
            &settings.lease.namespace,
            placement_changes.clone(),
        );
        tasks.extend(placement_tasks);
        let reconciler = Arc::new(
            Reconciler::new(
                client,
                caches.clone(),
                services.clone(),
                settings.reconciler,
                clock,
                gate.clone(),
            )
            .with_placement(placement),
        );
        let controller = objects::ObjectControllers {
            reconciler: reconciler.clone(),
            caches: caches.clone(),
            services: services.clone(),
            applied,
            services_listed: services_listed.clone(),
            placement_changes,
            leadership: gate.subscribe(),
            allocations_leadership: gate.subscribe(),
            resync: settings.resync_interval,
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(controller.run()));
        tasks.push(tokio::spawn(reconcile_loop(
            reconciler.clone(),
            caches,
            services_listed,
            changed,
            gate.clone(),
            settings.resync_interval,
            metrics,
        )));
        Reconcilers {
            gate,
            reconciler,
            tasks,
        }
    }
}

/// A store of every Service, kept by a watch that tolerates malformed objects; the Notify
/// fires on every change after the first list.
pub fn watch_services(
    client: kube::Client,
) -> (
    Store<DeserializeGuard<Service>>,
    Arc<Notify>,
    JoinHandle<()>,
) {
    let (services, writer) = reflector::store::<DeserializeGuard<Service>>();
    let changed = Arc::new(Notify::new());
    let task = spawn_service_watch(client, writer, changed.clone(), None);
    (services, changed, task)
}

/// Where the Service watch hands every applied Service (the Service controller), and says
/// that the first list is complete.
type Forward = (
    tokio::sync::mpsc::UnboundedSender<DeserializeGuard<Service>>,
    tokio::sync::watch::Sender<bool>,
);

/// The Service watch: keeps `writer`'s store, notifies `changed` after every change (not
/// during a relist), and feeds `forward`.
fn spawn_service_watch(
    client: kube::Client,
    writer: reflector::store::Writer<DeserializeGuard<Service>>,
    changed: Arc<Notify>,
    forward: Option<Forward>,
) -> JoinHandle<()> {
    let api: kube::Api<DeserializeGuard<Service>> = kube::Api::all(client);
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Some((applied, listed)) = &forward {
                match &event {
                    Ok(watcher::Event::Apply(service) | watcher::Event::InitApply(service)) => {
                        let _ = applied.send(service.clone());
                    }
                    Ok(watcher::Event::InitDone) => {
                        listed.send_replace(true);
                    }
                    _ => {}
                }
            }
            match event {
                Ok(watcher::Event::Apply(DeserializeGuard(Err(invalid))))
                | Ok(watcher::Event::InitApply(DeserializeGuard(Err(invalid)))) => {
                    tracing::warn!(kind = "Service", name = %invalid.metadata.name.clone().unwrap_or_default(), error = %invalid.error, "skipping a malformed object");
                }
                // A relist in progress is not a change worth a pass (the store swaps at its end).
                Ok(watcher::Event::Init) | Ok(watcher::Event::InitApply(_)) => {}
                Ok(_) => changed.notify_one(),
                Err(err) => {
                    tracing::warn!(kind = "Service", error = %err, "watch error; retrying with backoff")
                }
            }
        }
    })
}

fn record_pass(metrics: &Metrics, report: &PassReport, caches: &Caches, leading: bool) {
    metrics.leader.set(i64::from(leading));
    if report.not_leader {
        return;
    }
    tracing::debug!(writes = report.writes, events = report.events, failures = ?report.failures, "reconcile pass");
    let result = report.failures.keys().next().copied().unwrap_or("ok");
    metrics
        .reconciles
        .get_or_create(&ReconcileLabel {
            kind: "global".into(),
            result: result.into(),
        })
        .inc();
    let (mut bound, mut released) = (0, 0);
    for entry in caches.ledger.lock().ledger.entries() {
        if entry.is_released() {
            released += 1;
        } else {
            bound += 1;
        }
    }
    for (phase, count) in [("Bound", bound), ("Released", released)] {
        metrics
            .ledger_phases
            .get_or_create(&PhaseLabel {
                phase: phase.into(),
            })
            .set(count);
    }
}

async fn reconcile_loop(
    reconciler: Arc<Reconciler>,
    caches: Caches,
    mut services_listed: tokio::sync::watch::Receiver<bool>,
    changed: Arc<Notify>,
    gate: LeaderGate,
    resync: Duration,
    metrics: Arc<Metrics>,
) {
    // Deciding before every cache listed once could release what it has not seen yet.
    while !caches.is_synced() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = services_listed.wait_for(|listed| *listed).await;
    let mut leadership = gate.subscribe();
    let counters = || {
        use std::sync::atomic::Ordering::Acquire;
        (
            caches.generation.load(Acquire),
            caches.reports.load(Acquire),
        )
    };
    loop {
        let seen = counters();
        let report = reconciler.global_pass().await;
        record_pass(&metrics, &report, &caches, gate.is_leader());
        let caches_moved = async {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if counters() != seen {
                    return;
                }
            }
        };
        // Failed writes are retried soon (backoff), not only at the next resync.
        let wait = if report.failures.is_empty() {
            resync
        } else {
            resync.min(Duration::from_secs(1))
        };
        // A sticky reservation that runs out is deleted on time, not at the next resync.
        let wait = report
            .next_expiry_in
            .map_or(wait, |expiry| wait.min(expiry));
        tokio::select! {
            _ = changed.notified() => {}
            _ = leadership.changed() => {}
            _ = caches_moved => {}
            _ = tokio::time::sleep(wait) => {}
        }
        // Bursts of events make one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Serves the self-signed certificate and keeps it (and the caBundles) up to date.
async fn self_signed_config(
    client: &kube::Client,
    args: &ControllerArgs,
    loaded: Arc<std::sync::atomic::AtomicBool>,
) -> Result<axum_server::tls_rustls::RustlsConfig, ControllerError> {
    let config = SelfSignedConfig {
        namespace: args.namespace.clone(),
        secret_name: args.tls_secret.clone(),
        service_name: args.webhook_service.clone(),
        mutating_configuration: args.mutating_webhook_configuration.clone(),
        validating_configuration: args.validating_webhook_configuration.clone(),
        ca_validity_days: 3650,
        cert_validity_days: 365,
        renew_before_days: 30,
    };
    let mut bundle = loop {
        match selfsigned::ensure_secret(client, &config, now_secs()).await {
            Ok(bundle) => break bundle,
            Err(err) => {
                tracing::warn!(error = %err, category = err.category(), "self-signed certificate not available yet; retrying");
                tokio::time::sleep(args.self_signed_check_interval.min(Duration::from_secs(5)))
                    .await;
            }
        }
    };
    let tls_config = axum_server::tls_rustls::RustlsConfig::from_pem(
        bundle.cert_pem.clone().into_bytes(),
        bundle.key_pem.clone().into_bytes(),
    )
    .await
    .map_err(|source| ControllerError::Serve {
        addr: args.webhook_addr,
        source,
    })?;
    loaded.store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(secret = %config.secret_name, "serving the self-signed certificate");
    let reloading = tls_config.clone();
    let client = client.clone();
    let interval = args.self_signed_check_interval;
    tokio::spawn(async move {
        loop {
            if let Err(err) = selfsigned::inject_ca_bundle(&client, &config, &bundle.ca_pem).await {
                tracing::warn!(error = %err, category = err.category(), "writing the caBundle failed; will retry");
            }
            tokio::time::sleep(interval).await;
            match selfsigned::ensure_secret(&client, &config, now_secs()).await {
                Ok(next) if next.cert_pem != bundle.cert_pem => {
                    match reloading
                        .reload_from_pem(
                            next.cert_pem.clone().into_bytes(),
                            next.key_pem.clone().into_bytes(),
                        )
                        .await
                    {
                        Ok(()) => {
                            tracing::info!("self-signed certificate renewed and reloaded");
                            bundle = next;
                        }
                        Err(err) => tracing::warn!(error = %err, "renewed certificate rejected"),
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, category = err.category(), "checking the self-signed Secret failed")
                }
            }
        }
    });
    Ok(tls_config)
}

fn spawn_ledger_gauges(caches: Caches, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        loop {
            let mut counts = std::collections::BTreeMap::<String, i64>::new();
            for entry in caches.ledger.lock().ledger.entries() {
                *counts.entry(entry.pool.clone()).or_default() += 1;
            }
            metrics.ledger_addresses.clear();
            for (pool, count) in counts {
                metrics
                    .ledger_addresses
                    .get_or_create(&PoolLabel { pool })
                    .set(count);
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("ten minutes").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
    }
}
