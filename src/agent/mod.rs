//! `vipam agent`: runs on every node (DaemonSet, hostNetwork). Watches the ledger and what
//! decides ownership, holds this node's liveness Lease, asks `core::ownership` which addresses
//! this node announces, and hands them to the announcer (ARP/NDP answers or kernel addresses).
//! See docs/agent.md.

pub mod announcer;
pub mod error;
pub mod net;

pub mod control_plane;
pub mod metrics;
pub mod run;
pub mod shares;
pub mod signals;
pub mod speaker;

pub use error::{AgentError, ControlPlaneError};
pub use run::run_with;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::controller::parse_duration;

/// Flags of `vipam agent` (each also from the environment).
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// This node's name (the DaemonSet passes `spec.nodeName` through the downward API).
    /// Required, except with --control-plane where it falls back to the host name (a static
    /// pod may start before the node is registered).
    #[arg(long, env = "NODE_NAME", default_value = "", hide_default_value = true)]
    pub node_name: String,
    /// Namespace of the agents' liveness Leases (`vipam-agent-<node>`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "vipam-system")]
    pub namespace: String,
    /// Address of /livez, /readyz and /metrics (plain HTTP). The agent runs with hostNetwork,
    /// so the port is chosen to clash with nothing common on a node.
    #[arg(long, env = "VIPAM_AGENT_ADMIN_ADDR", default_value = "0.0.0.0:9478")]
    pub admin_addr: SocketAddr,
    /// How long this node's Lease stays valid without renewal; other agents take its addresses
    /// over after it (judged by their own clocks).
    #[arg(long, env = "VIPAM_LEASE_DURATION", default_value = "3s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often this node's Lease is renewed. Keep it well under --lease-duration.
    #[arg(long, env = "VIPAM_RENEW_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub renew_interval: Duration,
    /// How often owned addresses are re-announced (gratuitous ARP / unsolicited neighbour
    /// advertisement) after the burst that follows taking them.
    #[arg(long, env = "VIPAM_GARP_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub garp_interval: Duration,
    /// Enforcement period: re-add missing addresses of ours, remove stale ones.
    #[arg(long, env = "VIPAM_RESYNC", default_value = "10s", value_parser = parse_duration)]
    pub resync: Duration,
    /// Where the agent records the addresses it added (survives a crash of the agent, not a
    /// reboot, like the addresses themselves).
    #[arg(long, env = "VIPAM_STATE_DIR", default_value = "/run/vipam")]
    pub state_dir: PathBuf,
    /// On SIGTERM, keep answering at most this long while the new owners announce.
    #[arg(long, env = "VIPAM_HANDOVER_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub handover_timeout: Duration,
    #[command(flatten)]
    pub control_plane: control_plane::ControlPlaneArgs,
}

/// Runs the agent until SIGTERM or SIGINT, then hands its addresses over.
/// With --control-plane, runs the control-plane VIP instead (and the Service announcer only
/// with --announce-services; see `super::control_plane`).
pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    if args.control_plane.control_plane {
        return control_plane::run(args).await;
    }
    if args.node_name.is_empty() {
        return Err(AgentError::MissingNodeName);
    }
    let client = kube::Client::try_default()
        .await
        .map_err(AgentError::Connect)?;
    run::run_with(args, client, signals::shutdown_signal()).await
}
