//! The fake Kubernetes API server of tests/support, served on plain HTTP until killed, so
//! other processes (the controller, agents in network namespaces, curl, benchmarks) share
//! one API:
//!
//! ```text
//! cargo run --example fake-apiserver -- --listen 127.0.0.1:6443 --kubeconfig /tmp/fake.kubeconfig
//! KUBECONFIG=/tmp/fake.kubeconfig vipam controller
//! ```
//!
//! See docs/fake-apiserver.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "A fake Kubernetes API server (plain HTTP, in memory) for tests and benchmarks")]
struct Args {
    /// Address to listen on; an address inside a network namespace works when started there.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Write a kubeconfig for this server here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Changes kept for watches to resume from; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = support::DEFAULT_HISTORY)]
    history: usize,
    /// YAML or JSON files (multi-document) whose objects are stored at start.
    #[arg(long)]
    seed: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let fake = support::FakeApi::with_history(args.history);
    for path in &args.seed {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            fake.try_seed(doc)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let server = fake.serve(args.listen).await?;
    if let Some(path) = &args.kubeconfig {
        server.write_kubeconfig(path)?;
        eprintln!("kubeconfig written to {}", path.display());
    }
    eprintln!("fake API server listening on {}", server.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
