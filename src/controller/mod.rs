//! `vipam controller`: every replica serves the admission webhooks over TLS and the admin
//! endpoints over plain HTTP. (Leader-elected reconcilers join this process later.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{self, Metrics, PoolLabel, Readiness};
use crate::cache::{Caches, valid};
use crate::core::range::Family;
use crate::core::request::RequestPolicy;
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
    #[arg(long, env = "VIPAM_TLS_DIR")]
    pub tls_dir: PathBuf,
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
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("serving on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl ControllerError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Kube(_) => "kube",
            ControllerError::Tls(e) => e.metric_label(),
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

    let admin_listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .map_err(|source| ControllerError::Serve {
            addr: args.admin_addr,
            source,
        })?;
    let admin_router = admin::router(metrics.clone(), readiness);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(admin_listener, admin_router).await {
            tracing::error!(error = %err, "admin server stopped");
        }
    });
    tracing::info!(addr = %args.admin_addr, "admin endpoints listening");

    let caches_synced = flags[1].clone();
    let sync_client = client.clone();
    let sync_caches = caches.clone();
    tokio::spawn(async move {
        Caches::start(sync_client, writers, &sync_caches).await;
        caches_synced.store(true, std::sync::atomic::Ordering::Release);
    });
    spawn_ledger_gauges(caches.clone(), metrics.clone());

    let tls_config = tls::serve_config_from_dir(
        args.tls_dir.clone(),
        args.tls_reload_interval,
        flags[0].clone(),
    )
    .await?;
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

fn spawn_ledger_gauges(caches: Caches, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        loop {
            let mut counts = std::collections::BTreeMap::<String, i64>::new();
            for allocation in valid(&caches.allocations) {
                *counts.entry(allocation.spec.pool.clone()).or_default() += 1;
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
