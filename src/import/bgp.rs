//! What the three converters share for BGP: peers and announcements built, validated with the
//! code `vipam check` and the webhook use, and emitted; timers, passwords, communities and
//! names as the tools write them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use super::{Ctx, Object};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{self, BGPAnnouncement, BGPAnnouncementSpec, BGPPeer, BGPPeerSpec, SecretKeyRef};
use crate::core::bgp::config::{DEFAULT_HOLD_TIME, parse_seconds};
use crate::core::bgp::message::Community;

/// The Secret every converted BGPPeer with a password reads it from (the one Secret vipam's
/// agent may read), one key per peer. Passwords never go into the import's output.
pub(super) const PASSWORD_NAMESPACE: &str = "vipam-system";
pub(super) const PASSWORD_SECRET: &str = "vipam-bgp-passwords";

/// A peer with vipam's defaults and graceful restart off (no tool turns it on by default).
pub(super) fn new_peer(peer_address: String, peer_asn: u32, my_asn: u32) -> BGPPeerSpec {
    BGPPeerSpec {
        peer_address,
        peer_asn,
        my_asn,
        peer_port: 179,
        source_address: None,
        hold_time: format!("{DEFAULT_HOLD_TIME}s"),
        keepalive_time: None,
        ebgp_multi_hop: None,
        password_secret_ref: None,
        node_selector: None,
        graceful_restart: false,
    }
}

/// An announcement with vipam's defaults (no aggregation, every pool, peer and node).
pub(super) fn new_announcement() -> BGPAnnouncementSpec {
    BGPAnnouncementSpec {
        ip_pools: Vec::new(),
        service_selector: None,
        node_selector: None,
        peers: Vec::new(),
        communities: Vec::new(),
        local_pref: None,
        aggregation_length: 32,
        aggregation_length_v6: 128,
    }
}

/// Validates a peer as `vipam check` does, then emits it; one vipam would refuse is reported
/// (naming every problem) and not written.
pub(super) fn emit_peer(ctx: &mut Ctx<'_>, field: &str, name: &str, spec: BGPPeerSpec) {
    let peer = BGPPeer::new(name, spec);
    match api::bgp_peer(&peer) {
        Ok(_) => ctx.emit(Object::Peer(Box::new(peer))),
        Err(e) => ctx.lost(
            field,
            format!("the converted {e}; it is not valid for vipam, so it was not written"),
        ),
    }
}

/// Validates an announcement as `vipam check` does, then emits it.
pub(super) fn emit_announcement(
    ctx: &mut Ctx<'_>,
    field: &str,
    name: &str,
    spec: BGPAnnouncementSpec,
) {
    let announcement = BGPAnnouncement::new(name, spec);
    match api::bgp_announcement(&announcement) {
        Ok(_) => ctx.emit(Object::Bgp(Box::new(announcement))),
        Err(e) => ctx.lost(
            field,
            format!("the converted {e}; it is not valid for vipam, so it was not written"),
        ),
    }
}

/// The reference written for a password found at `field` (`what` says where it was). The
/// password itself is never written: the output goes to Git.
pub(super) fn password_ref(ctx: &mut Ctx<'_>, field: &str, peer: &str, what: &str) -> SecretKeyRef {
    ctx.lost(
        field,
        format!(
            "{what}: vipam import never writes a password into its output (it goes to Git). \
             BGPPeer {peer} reads it from Secret {PASSWORD_NAMESPACE}/{PASSWORD_SECRET}, key \
             {peer}: create that Secret (one key per peer) with the same password before the \
             agents start, or the session stays down"
        ),
    );
    SecretKeyRef {
        namespace: PASSWORD_NAMESPACE.to_string(),
        name: PASSWORD_SECRET.to_string(),
        key: peer.to_string(),
    }
}

/// A Go-style duration (`90s`, `1m30s`) as whole seconds; anything else is reported.
pub(super) fn duration(ctx: &mut Ctx<'_>, field: &str, value: &Value) -> Option<u64> {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match parse_seconds(&text) {
        Ok(secs) => Some(secs),
        Err(e) => {
            ctx.lost(field, format!("{e}: not converted"));
            None
        }
    }
}

/// A whole number of seconds, as Cilium and kube-vip write timers.
pub(super) fn whole_seconds(ctx: &mut Ctx<'_>, field: &str, value: &Value) -> Option<u64> {
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    if parsed.is_none() {
        ctx.lost(
            field,
            format!("{value} is not a whole number of seconds: not converted"),
        );
    }
    parsed
}

/// The session timers from what the tool wrote. `hold_default` is the tool's documented hold
/// time when it has one (written as is); without one vipam's default is kept and reported.
pub(super) struct Timers<'a> {
    pub hold_field: &'a str,
    pub hold: Option<u64>,
    pub keepalive: Option<u64>,
    pub hold_default: Option<u64>,
    /// What the tool does when the hold time is unset (for the message).
    pub unset: &'a str,
}

pub(super) fn timers(ctx: &mut Ctx<'_>, timers: Timers<'_>, spec: &mut BGPPeerSpec) {
    let hold = match (timers.hold, timers.keepalive, timers.hold_default) {
        (Some(hold), _, _) => Some(hold),
        (None, _, Some(default)) => Some(default),
        (None, Some(keepalive), None) => {
            let hold = keepalive.saturating_mul(3);
            ctx.changed(
                timers.hold_field,
                format!(
                    "unset with keepaliveTime {keepalive}s: written as three times the \
                     keepalive, {hold}s, as the tool derives it"
                ),
            );
            Some(hold)
        }
        (None, None, None) => {
            ctx.changed(
                timers.hold_field,
                format!(
                    "unset: {}; vipam proposes its default hold time {DEFAULT_HOLD_TIME}s (the \
                     session uses the smaller of the two sides' proposals), so a dead node's \
                     routes are withdrawn sooner",
                    timers.unset
                ),
            );
            None
        }
    };
    if let Some(hold) = hold {
        spec.hold_time = format!("{hold}s");
    }
    if let Some(keepalive) = timers.keepalive {
        // A keepalive of a third of the hold time is vipam's default: no need to write it.
        if hold.is_none_or(|h| h != keepalive * 3) {
            spec.keepalive_time = Some(format!("{keepalive}s"));
        }
    }
}

/// An AS number (1 to 4294967295) written as a number or a string.
pub(super) fn asn(ctx: &mut Ctx<'_>, field: &str, value: Option<&Value>) -> Option<u32> {
    let value = value?;
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    }
    .and_then(|n| u32::try_from(n).ok());
    if parsed.is_none() {
        ctx.lost(
            field,
            format!("{value} is not an AS number (1 to 4294967295): not converted"),
        );
    }
    parsed
}

/// A peer address, from a CIDR of one address (Cilium's `/32`) or an address.
pub(super) fn peer_address(ctx: &mut Ctx<'_>, field: &str, text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    match text.parse::<ipnet::IpNet>() {
        Ok(net) => {
            if net.prefix_len() != net.max_prefix_len() {
                ctx.changed(
                    field,
                    format!(
                        "{text} is not a single address (/{}); the address {} is the peer",
                        net.max_prefix_len(),
                        net.addr()
                    ),
                );
            }
            Some(net.addr())
        }
        Err(_) => {
            ctx.lost(
                field,
                format!("{text:?} is not an IP address: the peer is not converted"),
            );
            None
        }
    }
}

/// A community as vipam writes it: `a:b`, a well-known name, `large:a:b:c`. `aliases` are
/// names the tool defines (MetalLB's `Community` objects and `bgp-communities`).
pub(super) fn community(
    ctx: &mut Ctx<'_>,
    field: &str,
    text: &str,
    aliases: &BTreeMap<String, (String, String)>,
) -> Option<String> {
    if let Some((value, source)) = aliases.get(text) {
        return match Community::parse(value) {
            Ok(_) => {
                ctx.changed(
                    field,
                    format!(
                        "the alias {text} (defined by {source}) is written as its value {value}"
                    ),
                );
                Some(value.clone())
            }
            Err(e) => {
                ctx.lost(
                    field,
                    format!("the alias {text} (defined by {source}): {e}"),
                );
                None
            }
        };
    }
    match Community::parse(text) {
        Ok(_) => Some(text.to_string()),
        Err(e) => {
            ctx.lost(
                field,
                format!(
                    "{e}; and no Community object in the inputs defines it as an alias: not \
                     converted"
                ),
            );
            None
        }
    }
}

/// An aggregation length (0 to `max`), or None (reported) when out of range.
pub(super) fn prefix_length(ctx: &mut Ctx<'_>, field: &str, value: &Value, max: u8) -> Option<u8> {
    match value.as_u64().and_then(|n| u8::try_from(n).ok()) {
        Some(n) if n <= max => Some(n),
        _ => {
            ctx.lost(
                field,
                format!("{value} is not a prefix length (0 to {max}): not converted"),
            );
            None
        }
    }
}

/// A name Kubernetes accepts, from an address (`192-0-2-1`, `2001-db8--1`).
pub(super) fn address_name(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The selector an optional field holds (`{}` and absent are None).
pub(super) fn optional_selector(
    ctx: &mut Ctx<'_>,
    field: &str,
    value: Option<&Value>,
) -> Option<LabelSelector> {
    let selector = super::selectors::read(ctx, field, value?)?;
    (!super::selectors::is_empty(&selector)).then_some(selector)
}
