//! Which node announces which prefix to which BGPPeer, and with what attributes.
//!
//! Unlike L2, BGP elects nobody: every eligible node announces an address and the router
//! spreads traffic over them (ECMP). Eligible means what it means for L2 (a live agent Lease,
//! not excluded, not cordoned, network available, selected), and for a Service with
//! `externalTrafficPolicy: Local`, a ready endpoint on the node. A prefix goes to a BGPPeer of
//! its own family only (IPv4 to IPv4 peers, IPv6 to IPv6 peers), so its next hop is the node's
//! address on that session.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::config::{Announcement, Peer};
use super::message::RouteAttrs;
use crate::core::ownership::{
    AddressView, Blocked, NodeView, Unserved, explain_among, selects_services,
};

/// The routes one node sends, per BGPPeer name.
pub type PeerRoutes = BTreeMap<String, BTreeMap<IpNet, RouteAttrs>>;

/// The BGPAnnouncements covering `address` (its pool, its Services' labels), by name.
pub fn covering<'a>(
    address: &AddressView,
    announcements: &'a [Announcement],
) -> Vec<&'a Announcement> {
    let mut covering: Vec<&Announcement> = announcements
        .iter()
        .filter(|a| a.ip_pools.is_empty() || a.ip_pools.contains(&address.pool))
        .filter(|a| selects_services(a.service_selector.as_ref(), &address.services))
        .collect();
    covering.sort_by(|a, b| a.name.cmp(&b.name));
    covering
}

fn selects_node(announcement: &Announcement, node: &NodeView) -> bool {
    announcement
        .node_selector
        .as_ref()
        .is_none_or(|s| s.matches(&node.labels))
}

/// The (announcement, peer) pairs through which `node` would announce `address`, or the first
/// reason it may not: the node's own state, then its peers, then the Services' endpoints.
fn candidacy<'a>(
    address: &AddressView,
    node: &NodeView,
    covering: &[&'a Announcement],
    peers: &'a [Peer],
) -> Result<Vec<(&'a Announcement, &'a Peer)>, Blocked> {
    if let Some(why) = node.blocked() {
        return Err(why);
    }
    let mut via = Vec::new();
    for announcement in covering.iter().filter(|a| selects_node(a, node)) {
        for peer in peers {
            if announcement.to_peer(&peer.name)
                && peer.selects_node(&node.labels)
                && peer.address.is_ipv4() == address.ip.is_ipv4()
            {
                via.push((*announcement, peer));
            }
        }
    }
    if via.is_empty() {
        return Err(Blocked::NoPeer);
    }
    let local_ok = address
        .services
        .iter()
        .filter(|s| s.local_traffic)
        .all(|s| s.ready_nodes.contains(&node.name));
    if !local_ok {
        return Err(Blocked::NoReadyEndpoint);
    }
    Ok(via)
}

/// The routes `node` announces, per BGPPeer. Several announcements covering one prefix for one
/// peer merge: communities add up, the first announcement by name with a localPref sets it.
/// Several addresses in one aggregate (aggregationLength below the address length) are one
/// route.
pub fn node_routes(
    node: &NodeView,
    peers: &[Peer],
    announcements: &[Announcement],
    addresses: &[AddressView],
) -> PeerRoutes {
    let mut routes = PeerRoutes::new();
    for address in addresses.iter().filter(|a| !a.services.is_empty()) {
        let covering = covering(address, announcements);
        if covering.is_empty() {
            continue;
        }
        let Ok(via) = candidacy(address, node, &covering, peers) else {
            continue;
        };
        for (announcement, peer) in via {
            let prefix = announcement.prefix_of(address.ip);
            let attrs = routes
                .entry(peer.name.clone())
                .or_default()
                .entry(prefix)
                .or_default();
            if attrs.local_pref.is_none() {
                attrs.local_pref = announcement.attrs.local_pref;
            }
            attrs
                .communities
                .extend(announcement.attrs.communities.iter().copied());
        }
    }
    routes
}

/// The nodes that announce `address` by BGP, by name.
pub fn announcing_nodes(
    address: &AddressView,
    peers: &[Peer],
    announcements: &[Announcement],
    nodes: &[NodeView],
) -> Vec<String> {
    if address.services.is_empty() {
        return Vec::new();
    }
    let covering = covering(address, announcements);
    if covering.is_empty() {
        return Vec::new();
    }
    let mut names: Vec<String> = nodes
        .iter()
        .filter(|node| candidacy(address, node, &covering, peers).is_ok())
        .map(|node| node.name.clone())
        .collect();
    names.sort();
    names
}

/// Why no node announces `address` by BGP, or `None` when some node does (or nothing holds
/// it). `NoAnnouncement` when no BGPAnnouncement covers it.
pub fn explain(
    address: &AddressView,
    peers: &[Peer],
    announcements: &[Announcement],
    nodes: &[NodeView],
) -> Option<Unserved> {
    if address.services.is_empty() {
        return None;
    }
    let covering = covering(address, announcements);
    explain_among(
        covering.iter().map(|a| a.name.clone()).collect(),
        nodes,
        |node| covering.iter().any(|a| selects_node(a, node)),
        |node| candidacy(address, node, &covering, peers).map(|_| ()),
    )
}

/// Whether `node` peers with anybody at all: some BGPPeer and some BGPAnnouncement select it
/// (its agent then holds a Lease, as for L2).
pub fn peers_with(node: &NodeView, peers: &[Peer], announcements: &[Announcement]) -> bool {
    peers.iter().any(|p| p.selects_node(&node.labels))
        && announcements.iter().any(|a| selects_node(a, node))
}

#[cfg(test)]
mod tests;
