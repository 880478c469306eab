//! Why the agent stops: its errors, in one place below the Service and control-plane loops
//! (which both return them), so neither loop depends on the other for its error type.

use std::path::PathBuf;

use super::net::NetError;
use crate::core::category::Category;

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connecting to the Kubernetes API: {0}")]
    Connect(#[source] kube::Error),
    #[error("starting the announcer: {0}")]
    Announcer(#[source] NetError),
    #[error("serving the admin endpoints on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("--node-name (or NODE_NAME) is required without --control-plane")]
    MissingNodeName,
    #[error("control-plane VIP: {0}")]
    ControlPlane(#[from] ControlPlaneError),
}

impl Category for AgentError {
    fn category(&self) -> &'static str {
        match self {
            AgentError::Connect(_) => "connect",
            AgentError::Announcer(_) => "announcer",
            AgentError::Admin { .. } => "admin",
            AgentError::MissingNodeName => "usage",
            AgentError::ControlPlane(err) => err.category(),
        }
    }
}

/// Why the control-plane VIP could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("--control-plane needs {0}")]
    Missing(&'static str),
    #[error("no node name: pass --node-name or NODE_NAME ({0})")]
    NodeName(String),
    #[error("reading the kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("loading the Kubernetes client configuration: {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("invalid {flag} {value:?}: {reason}")]
    Url {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("building a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The --bgp flags: every problem, each naming its flag.
    #[error("invalid BGP flags of the control-plane VIP:\n  {}", .0.join("\n  "))]
    Bgp(Vec<String>),
    /// What --bgp needs from the node (router ID, password file) is not there.
    #[error("{0}")]
    BgpSetup(String),
}

impl Category for ControlPlaneError {
    fn category(&self) -> &'static str {
        match self {
            ControlPlaneError::Missing(_) | ControlPlaneError::NodeName(_) => "usage",
            ControlPlaneError::Kubeconfig { .. } | ControlPlaneError::Infer(_) => "config",
            ControlPlaneError::Url { .. } | ControlPlaneError::Bgp(_) => "usage",
            ControlPlaneError::BgpSetup(_) => "config",
            ControlPlaneError::Client(_) => "connect",
        }
    }
}
