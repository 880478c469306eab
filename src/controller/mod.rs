//! `vipam controller`: every replica serves the admission webhooks over TLS and the admin
//! endpoints over plain HTTP. (Leader-elected reconcilers join this process later.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{self, Metrics, PoolLabel, Readiness};
use crate::cache::Caches;
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

impl ControllerError {
    pub fn metric_label(&self) -> &'static str {
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
                tracing::warn!(error = %err, "self-signed certificate not available yet; retrying");
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
                tracing::warn!(error = %err, "writing the caBundle failed; will retry");
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
                Err(err) => tracing::warn!(error = %err, "checking the self-signed Secret failed"),
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
