//! The node's network, below the announcer: netlink (links, addresses, the record of the
//! addresses vipam added), the link watcher, the filtered raw socket, the ARP/NDP frames, and
//! the BGP transport (codec and TCP socket to a peer).
//! Nothing here knows about Kubernetes or ownership; the announcer
//! ([`super::announcer`]) sits above it, and the Service and control-plane loops above that.
//! See docs/agent.md ("Threads", "Link loss").

pub mod address;
pub mod bgp;
pub mod iface;
pub mod links;
pub(crate) mod netlink;
pub mod packet;
pub mod rawsock;

#[cfg(test)]
mod parser_props;

use std::io;
use std::path::PathBuf;

use crate::core::category::Category;

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink {op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("raw socket on {interface}: {source}")]
    Socket {
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("state file {}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    #[error("the announcer has stopped")]
    Stopped,
}

impl Category for NetError {
    fn category(&self) -> &'static str {
        match self {
            NetError::Netlink { .. } => "netlink",
            NetError::Socket { .. } => "socket",
            NetError::State { .. } => "state",
            NetError::Stopped => "stopped",
        }
    }
}
