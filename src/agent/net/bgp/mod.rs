//! BGP transport: the codec between [`crate::core::bgp::Message`] and bytes ([`wire`]) and
//! the TCP connection to a peer ([`socket`]). The session's decisions live in
//! `core::bgp`; this module only moves its messages.

pub mod socket;
pub mod wire;

#[cfg(test)]
mod wire_tests;
