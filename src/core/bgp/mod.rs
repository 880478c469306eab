//! BGP, announce-only: what vipam's speaker sends and how a session behaves, as pure functions
//! of messages and time (the agent's `net::bgp` puts them on the wire).
//!
//! - [`message`]: the messages vipam's speaker sends and understands, independent of the codec.
//! - [`session`]: the RFC 4271 state machine and its timers.
//! - [`rib_out`]: what each session has sent, and the UPDATEs that bring a peer to what is wanted.

pub mod announce;
pub mod config;
pub mod message;
pub mod rib_out;
pub mod session;

pub use message::*;
