//! The pure core: every allocation decision lives here.
//!
//! No kube, k8s-openapi, tokio, axum, rtnetlink or pnet (a test enforces it). Deterministic:
//! time and identity are passed in, never read.

pub mod allocate;
pub mod bgp;
pub mod category;
pub mod election;
pub mod lifecycle;
pub mod mac;
pub mod names;
pub mod ownership;
pub mod pool;
pub mod range;
pub mod request;
pub mod selector;
pub mod standing;
