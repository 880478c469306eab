//! BGP as the controller reports it: BGPPeer status (the sessions the agents note in their
//! Leases), BGPAnnouncement status, and which nodes announce an address by BGP (for
//! IPAllocation status and the Service's Announced condition). Decisions come from
//! `core::bgp::announce`, on the same view as the agents'.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use serde_json::json;

use super::conditions::{self, READY, Wanted};
use crate::api::view::SessionNote;
use crate::api::{self, BGPAnnouncement, BGPPeer, BGPSessionStatus, time_from_seconds};
use crate::core::bgp::announce;
use crate::core::bgp::config::{Announcement, Peer};
use crate::core::ownership::{AddressView, NodeView};

/// The valid BGPPeers and BGPAnnouncements, parsed (invalid ones are reported on their own
/// status and skipped, as the agents skip them).
#[derive(Clone, Debug, Default)]
pub struct BgpConfig {
    pub peers: Vec<Peer>,
    pub announcements: Vec<Announcement>,
}

impl BgpConfig {
    pub fn parse(peers: &[BGPPeer], announcements: &[BGPAnnouncement]) -> BgpConfig {
        BgpConfig {
            peers: peers.iter().filter_map(|p| api::bgp_peer(p).ok()).collect(),
            announcements: announcements
                .iter()
                .filter_map(|a| api::bgp_announcement(a).ok())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty() || self.announcements.is_empty()
    }
}

/// The nodes that announce `address` by BGP now, each with the peers that have it: eligible
/// nodes whose session with such a peer is Established, as their agents note.
pub fn announcers(
    address: &AddressView,
    config: &BgpConfig,
    nodes: &[NodeView],
    sessions: &BTreeMap<String, Vec<SessionNote>>,
) -> Vec<(String, Vec<String>)> {
    if config.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for node in nodes {
        let routes = announce::node_routes(
            node,
            &config.peers,
            &config.announcements,
            std::slice::from_ref(address),
        );
        if routes.is_empty() {
            continue;
        }
        let established: Vec<String> = routes
            .keys()
            .filter(|peer| {
                sessions.get(&node.name).is_some_and(|notes| {
                    notes
                        .iter()
                        .any(|n| &n.peer == *peer && n.state == "Established")
                })
            })
            .cloned()
            .collect();
        if !established.is_empty() {
            out.push((node.name.clone(), established));
        }
    }
    out.sort();
    out
}

/// The status a BGPPeer should have, when it differs from the stored one: Ready (or what is
/// invalid), one session entry per node that notes one, and "established/wanted".
pub fn peer_update(
    object: &BGPPeer,
    config: &BgpConfig,
    nodes: &[NodeView],
    sessions: &BTreeMap<String, Vec<SessionNote>>,
    now: i64,
) -> Option<serde_json::Value> {
    let generation = object.metadata.generation;
    let stored = object.status.clone().unwrap_or_default();
    let name = object.name_any();
    let parsed = api::bgp_peer(object);
    let ready = match &parsed {
        Ok(_) => Wanted::new(READY, true, "Valid", "the spec is valid"),
        Err(err) => Wanted::new(READY, false, "InvalidSpec", err.message.clone()),
    };
    let mut entries: Vec<BGPSessionStatus> = sessions
        .iter()
        .flat_map(|(node, notes)| {
            notes
                .iter()
                .filter(|n| n.peer == name)
                .map(move |n| BGPSessionStatus {
                    node: node.clone(),
                    state: n.state.clone(),
                    since: Some(time_from_seconds(n.since)),
                    prefixes_sent: n.prefixes_sent,
                    last_error: n.last_error.clone(),
                })
        })
        .collect();
    entries.sort_by(|a, b| a.node.cmp(&b.node));
    // Wanted: the live nodes this peer and some announcement select.
    let wanted = match &parsed {
        Ok(peer) => nodes
            .iter()
            .filter(|n| {
                n.live && announce::peers_with(n, std::slice::from_ref(peer), &config.announcements)
            })
            .count(),
        Err(_) => 0,
    };
    let established = entries.iter().filter(|e| e.state == "Established").count();
    let summary = format!("{established}/{wanted}");
    let wanted_conditions = [ready];
    if stored.observed_generation == generation
        && conditions::all_met(&wanted_conditions, &stored.conditions, generation)
        && stored.sessions == entries
        && stored.established.as_deref() == Some(summary.as_str())
    {
        return None;
    }
    Some(json!({
        "conditions": conditions::merged(&wanted_conditions, &stored.conditions, generation, now),
        "observedGeneration": generation,
        "sessions": entries,
        "established": summary,
    }))
}

/// The status a BGPAnnouncement should have, when it differs from the stored one: Ready, or
/// what is invalid; Ready=False too when it names BGPPeers that do not exist.
pub fn announcement_update(
    object: &BGPAnnouncement,
    peer_names: &BTreeSet<String>,
    now: i64,
) -> Option<serde_json::Value> {
    let generation = object.metadata.generation;
    let stored = object.status.clone().unwrap_or_default();
    let missing: Vec<&String> = object
        .spec
        .peers
        .iter()
        .filter(|p| !peer_names.contains(*p))
        .collect();
    let ready = match api::bgp_announcement(object) {
        Err(err) => Wanted::new(READY, false, "InvalidSpec", err.message),
        Ok(_) if !missing.is_empty() => Wanted::new(
            READY,
            false,
            "UnknownPeer",
            format!(
                "names BGPPeer {} which does not exist: nothing is announced to it",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Ok(_) if peer_names.is_empty() => Wanted::new(
            READY,
            false,
            "NoPeer",
            "no BGPPeer exists: nothing is announced by BGP",
        ),
        Ok(_) => Wanted::new(READY, true, "Valid", "the spec is valid"),
    };
    let wanted = [ready];
    if stored.observed_generation == generation
        && conditions::all_met(&wanted, &stored.conditions, generation)
    {
        return None;
    }
    Some(json!({
        "conditions": conditions::merged(&wanted, &stored.conditions, generation, now),
        "observedGeneration": generation,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer_object(name: &str, spec: serde_json::Value) -> BGPPeer {
        serde_json::from_value(json!({
            "apiVersion": "vipam.io/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": name, "generation": 1},
            "spec": spec,
        }))
        .unwrap()
    }

    fn node(name: &str) -> NodeView {
        NodeView {
            name: name.into(),
            live: true,
            ..NodeView::default()
        }
    }

    fn note(peer: &str, state: &str) -> SessionNote {
        SessionNote {
            peer: peer.into(),
            state: state.into(),
            since: 1_700_000_000,
            prefixes_sent: 3,
            last_error: None,
        }
    }

    #[test]
    fn peer_status_lists_each_nodes_session_and_counts_established() {
        let tor = peer_object(
            "tor",
            json!({"peerAddress": "192.0.2.1", "peerASN": 65000, "myASN": 65001}),
        );
        let all: BGPAnnouncement = serde_json::from_value(json!({
            "apiVersion": "vipam.io/v1alpha1", "kind": "BGPAnnouncement",
            "metadata": {"name": "all"}, "spec": {}
        }))
        .unwrap();
        let config = BgpConfig::parse(std::slice::from_ref(&tor), &[all]);
        let sessions = BTreeMap::from([
            ("n1".to_string(), vec![note("tor", "Established")]),
            ("n2".to_string(), vec![note("tor", "Active")]),
        ]);
        let nodes = [node("n1"), node("n2"), node("n3")];
        let update = peer_update(&tor, &config, &nodes, &sessions, 1_700_000_100).unwrap();
        assert_eq!(update["established"], "1/3");
        assert_eq!(update["sessions"][0]["node"], "n1");
        assert_eq!(update["sessions"][1]["state"], "Active");
        assert_eq!(update["conditions"][0]["status"], "True");
        // Stored as such: nothing to write.
        let mut stored = tor.clone();
        stored.status = Some(serde_json::from_value(update).unwrap());
        assert!(peer_update(&stored, &config, &nodes, &sessions, 1_700_000_200).is_none());
        // An invalid spec says why.
        let bad = peer_object(
            "bad",
            json!({"peerAddress": "nope", "peerASN": 0, "myASN": 65001}),
        );
        let update = peer_update(&bad, &config, &nodes, &sessions, 1).unwrap();
        assert_eq!(update["conditions"][0]["reason"], "InvalidSpec");
        assert!(
            update["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("spec.peerAddress"),
            "{update}"
        );
    }

    #[test]
    fn an_announcement_naming_a_missing_peer_is_not_ready() {
        let announcement: BGPAnnouncement = serde_json::from_value(json!({
            "apiVersion": "vipam.io/v1alpha1", "kind": "BGPAnnouncement",
            "metadata": {"name": "a", "generation": 2}, "spec": {"peers": ["tor", "gone"]}
        }))
        .unwrap();
        let names = BTreeSet::from(["tor".to_string()]);
        let update = announcement_update(&announcement, &names, 5).unwrap();
        assert_eq!(update["conditions"][0]["reason"], "UnknownPeer");
        assert!(
            update["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("gone")
        );
    }

    #[test]
    fn announcers_are_eligible_nodes_with_an_established_session() {
        let tor = peer_object(
            "tor",
            json!({"peerAddress": "192.0.2.1", "peerASN": 65000, "myASN": 65001}),
        );
        let all: BGPAnnouncement = serde_json::from_value(json!({
            "apiVersion": "vipam.io/v1alpha1", "kind": "BGPAnnouncement",
            "metadata": {"name": "all"}, "spec": {}
        }))
        .unwrap();
        let config = BgpConfig::parse(&[tor], &[all]);
        let address = AddressView {
            ip: "198.51.100.7".parse().unwrap(),
            pool: "routed".into(),
            services: vec![crate::core::ownership::ServiceOnAddress {
                namespace: "apps".into(),
                name: "web".into(),
                ..Default::default()
            }],
        };
        let sessions = BTreeMap::from([
            ("n1".to_string(), vec![note("tor", "Established")]),
            ("n2".to_string(), vec![note("tor", "Connect")]),
            ("n3".to_string(), vec![note("tor", "Established")]),
        ]);
        let mut dead = node("n3");
        dead.live = false;
        let nodes = [node("n1"), node("n2"), dead];
        assert_eq!(
            announcers(&address, &config, &nodes, &sessions),
            [("n1".to_string(), vec!["tor".to_string()])]
        );
    }
}
