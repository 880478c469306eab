//! Serving certificates from a directory (`tls.crt`, `tls.key`), reloaded without restart.
//!
//! The files are polled for a change of *content*: kubelet updates Secret volumes by swapping a
//! symlink, which file watchers miss.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: tls.crt and tls.key do not form a usable certificate: {source}")]
    Invalid {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl crate::core::category::Category for TlsError {
    fn category(&self) -> &'static str {
        match self {
            TlsError::Read { .. } => "tls_read",
            TlsError::Invalid { .. } => "tls_invalid",
        }
    }
}

fn read(path: PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
}

/// The PEM pair in `dir`.
pub fn read_pair(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    Ok((read(dir.join("tls.crt"))?, read(dir.join("tls.key"))?))
}

async fn load(dir: &Path) -> Result<(RustlsConfig, (Vec<u8>, Vec<u8>)), TlsError> {
    let (cert, key) = read_pair(dir)?;
    let config = RustlsConfig::from_pem(cert.clone(), key.clone())
        .await
        .map_err(|source| TlsError::Invalid {
            dir: dir.to_path_buf(),
            source,
        })?;
    Ok((config, (cert, key)))
}

/// Loads the certificate in `dir` and keeps it fresh: every `interval`, if the files' content
/// changed, the new pair is loaded (a bad pair is logged and the old one kept). Until a usable
/// pair exists (cert-manager may issue it after the pod starts) this waits, logging why, and
/// `/readyz` says so; `loaded` turns true once a certificate is in use.
pub async fn serve_config_from_dir(
    dir: PathBuf,
    interval: Duration,
    loaded: Arc<AtomicBool>,
) -> RustlsConfig {
    let mut last_error = String::new();
    let (config, (cert, key)) = loop {
        match load(&dir).await {
            Ok(loaded) => break loaded,
            Err(err) => {
                let message = err.to_string();
                if message != last_error {
                    tracing::warn!(error = %message, "waiting for a usable serving certificate");
                    last_error = message;
                }
                tokio::time::sleep(interval).await;
            }
        }
    };
    tracing::info!(dir = %dir.display(), "serving certificate loaded");
    loaded.store(true, Ordering::Release);
    let reloading = config.clone();
    tokio::spawn(async move {
        let mut current = (cert, key);
        loop {
            tokio::time::sleep(interval).await;
            let next = match read_pair(&dir) {
                Ok(pair) => pair,
                // Mid-swap or briefly missing: try again next round.
                Err(err) => {
                    tracing::debug!(error = %err, "certificate not readable right now");
                    continue;
                }
            };
            if next == current {
                continue;
            }
            match reloading
                .reload_from_pem(next.0.clone(), next.1.clone())
                .await
            {
                Ok(()) => {
                    tracing::info!(dir = %dir.display(), "serving certificate reloaded");
                    current = next;
                }
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "new certificate rejected; keeping the old one");
                    // Remember it so a bad pair is not retried (and logged) every round.
                    current = next;
                }
            }
        }
    });
    config
}
