//! vipam: LoadBalancer IPs for bare-metal Kubernetes, managed the GitOps way.
//!
//! `core` decides, everything else translates (see DESIGN.md).

pub mod admin;
pub mod agent;
pub mod api;
pub mod cache;
pub mod check;
pub mod controller;
pub mod core;
pub mod import;
pub mod lease;
pub mod manifest;
pub mod webhook;
