//! vipam: LoadBalancer IPs for bare-metal Kubernetes, managed the GitOps way.
//!
//! `core` decides, everything else translates (see DESIGN.md).

pub mod api;
pub mod check;
pub mod core;
