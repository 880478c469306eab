//! SIGTERM and SIGINT: the start of a graceful handover.

/// Resolves at the first SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: handing over"),
        _ = int.recv() => tracing::info!("SIGINT: handing over"),
    }
}
