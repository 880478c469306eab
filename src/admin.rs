//! Plain-HTTP admin endpoints: `/livez`, `/readyz`, `/metrics` (Prometheus text format).
//! They live on their own port; the webhook port is TLS only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `vipam_admissions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    /// `service`, `ippool`, `l2announcement`, `bgppeer` or `bgpannouncement`.
    pub webhook: String,
    /// `allowed` or `denied`.
    pub result: String,
    /// Short category: `assigned`, `not_ours`, `pin_outside_pools`, `pool_exhausted`, ...
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    pub webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

/// Labels of `vipam_controller_reconciles_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabel {
    /// `Service` or `IPAllocation` (one object reconciled), or `global` (the pass over what
    /// spans objects).
    pub kind: String,
    /// `ok`, or the category of the failure (`api_error`, `raced`, `contention`, `not_leader`).
    pub result: String,
}

/// Labels of `vipam_ledger_allocations`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// `Bound` or `Released`.
    pub phase: String,
}

/// Every metric vipam exports.
pub struct Metrics {
    registry: Registry,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub admission_seconds: Family<WebhookLabel, Histogram>,
    pub ledger_addresses: Family<PoolLabel, Gauge>,
    pub reconciles: Family<ReconcileLabel, Counter>,
    pub ledger_phases: Family<PhaseLabel, Gauge>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("vipam");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "Admission requests answered, by webhook, result and reason",
            admissions.clone(),
        );
        let admission_seconds = Family::<WebhookLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        });
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request",
            admission_seconds.clone(),
        );
        let ledger_addresses = Family::<PoolLabel, Gauge>::default();
        registry.register(
            "ledger_addresses",
            "IPAllocations (bound or released) per pool",
            ledger_addresses.clone(),
        );
        let reconciles = Family::<ReconcileLabel, Counter>::default();
        registry.register(
            "controller_reconciles",
            "Reconciliations of the leader, by kind (Service, global) and result",
            reconciles.clone(),
        );
        let ledger_phases = Family::<PhaseLabel, Gauge>::default();
        registry.register(
            "ledger_allocations",
            "IPAllocations by phase",
            ledger_phases.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "controller_leader",
            "1 while this replica holds the vipam-controller Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            admissions,
            admission_seconds,
            ledger_addresses,
            reconciles,
            ledger_phases,
            leader,
        }
    }

    pub fn encode(&self) -> String {
        encode_registry(&self.registry)
    }
}

/// What `/readyz` waits for.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Vec<(String, Arc<AtomicBool>)>>,
}

impl Readiness {
    /// A readiness with named conditions, all false at first.
    pub fn new(names: &[&str]) -> (Readiness, Vec<Arc<AtomicBool>>) {
        let flags: Vec<Arc<AtomicBool>> = names
            .iter()
            .map(|_| Arc::new(AtomicBool::new(false)))
            .collect();
        let checks = names
            .iter()
            .map(|n| n.to_string())
            .zip(flags.iter().cloned())
            .collect();
        (
            Readiness {
                checks: Arc::new(checks),
            },
            flags,
        )
    }

    /// The conditions still false.
    pub fn missing(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Acquire))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// Anything that renders a Prometheus registry (the controller's and the agent's metrics).
pub trait MetricsText: Send + Sync {
    fn encode(&self) -> String;
}

impl MetricsText for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

/// Renders a registry in the OpenMetrics text format.
pub fn encode_registry(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<dyn MetricsText>,
    readiness: Readiness,
}

/// The admin router.
pub fn router(metrics: Arc<dyn MetricsText>, readiness: Readiness) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AdminState { metrics, readiness })
}

/// Binds `addr` and serves the admin endpoints in the background; a bind failure is returned
/// (the caller names the flag), a later serve failure is logged.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<dyn MetricsText>,
    readiness: Readiness,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let router = router(metrics, readiness);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(error = %err, "admin server stopped");
        }
    });
    tracing::info!(%addr, "admin endpoints listening");
    Ok(())
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let missing = state.readiness.missing();
    if missing.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for {}\n", missing.join(", ")),
        )
    }
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
