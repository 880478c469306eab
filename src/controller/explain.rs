//! Why an address is not served, in a sentence a person can act on: the Service's
//! `vipam.io/Announced=False` condition when no node may announce one of its addresses
//! ([`crate::core::ownership::explain`] on the controller's [`Placement`] view).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use super::bgp::BgpConfig;
use super::conditions::{ANNOUNCED, Wanted};
use super::placement::Placement;
use crate::api::view;
use crate::api::{IPAllocation, L2Announcement};
use crate::core::bgp::announce;
use crate::core::ownership::{self, Blocked, Unserved};

/// How many nodes a message names before it counts the rest.
const NAMED_NODES: usize = 5;

/// Why nobody may announce each address that needs it: every bound address without an
/// announcer, or whose announcer's agent Lease is no longer live. Addresses some node may
/// announce are absent (an agent is about to, or already does).
pub fn unserved(
    placement: &Placement,
    allocations: &[&IPAllocation],
    services: &[&Service],
    l2announcements: &[L2Announcement],
    bgp: &BgpConfig,
) -> BTreeMap<IpAddr, Why> {
    let waiting: Vec<&IPAllocation> = allocations
        .iter()
        .copied()
        .filter(|a| {
            let status = a.status.as_ref();
            if status.is_some_and(|s| s.conflict.is_some()) {
                return false; // the agent's report says why already
            }
            match status.and_then(|s| s.announcer.as_ref()) {
                None => true,
                Some(announcer) => !placement.is_live(&announcer.node),
            }
        })
        .collect();
    if waiting.is_empty() {
        return BTreeMap::new();
    }
    // Invalid announcements are reported on their own status and skipped here, as the agents
    // skip them.
    let rules: Vec<_> = l2announcements
        .iter()
        .filter_map(|l2| view::rule(l2).ok())
        .collect();
    let nodes = placement.nodes();
    let ready = placement.ready_nodes();
    let index = view::index_services(services.iter().copied());
    waiting
        .into_iter()
        .filter_map(|allocation| {
            let address = view::address_view(allocation, &index, &ready)?;
            // Served when either way may announce it; otherwise the reason of the way that
            // covers it (L2 first when both do).
            let l2 = ownership::explain(&address, &rules, &nodes)?;
            let by_bgp = if bgp.is_empty() {
                Some(Unserved::NoAnnouncement)
            } else {
                announce::explain(&address, &bgp.peers, &bgp.announcements, &nodes)
            }?;
            let why = match (l2, by_bgp) {
                (Unserved::NoAnnouncement, Unserved::NoAnnouncement) => Why {
                    bgp: false,
                    unserved: Unserved::NoAnnouncement,
                },
                (Unserved::NoAnnouncement, unserved) => Why {
                    bgp: true,
                    unserved,
                },
                (unserved, _) => Why {
                    bgp: false,
                    unserved,
                },
            };
            Some((address.ip, why))
        })
        .collect()
}

/// Why nobody may announce an address, and by which way (the one that covers it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why {
    /// The reason is BGP's (a BGPAnnouncement covers the address, no L2Announcement does).
    pub bgp: bool,
    pub unserved: Unserved,
}

/// The Announced condition for `ip` of `pool`, which nobody may announce because of `why`.
pub fn condition(ip: IpAddr, pool: &str, why: &Why) -> Wanted {
    let kind = if why.bgp {
        "BGPAnnouncement"
    } else {
        "L2Announcement"
    };
    match &why.unserved {
        Unserved::NoAnnouncement => Wanted::new(
            ANNOUNCED,
            false,
            "NoL2Announcement",
            format!(
                "no L2Announcement or BGPAnnouncement covers {ip} (IPPool {pool}; an \
                 announcement's ipPools and serviceSelector must both match), so nothing \
                 announces it: create one that lists the pool (or lists no pools) and selects \
                 the Service"
            ),
        ),
        Unserved::NoNodeSelected {
            announcements,
            nodes: 0,
        } => Wanted::new(
            ANNOUNCED,
            false,
            "NoNodeSelected",
            format!(
                "the cluster has no Node for {kind} {} to select, so nothing announces {ip}",
                announcements.join(", ")
            ),
        ),
        Unserved::NoNodeSelected { announcements, .. } => Wanted::new(
            ANNOUNCED,
            false,
            "NoNodeSelected",
            format!(
                "the nodeSelector of {kind} {} selects no node, so nothing announces {ip}: \
                 label the nodes that should announce it, or change the selector",
                announcements.join(", ")
            ),
        ),
        Unserved::NoEligibleNode(nodes) => {
            let first = nodes.first().map(|(_, why)| *why);
            let same = first.filter(|first| nodes.iter().all(|(_, why)| why == first));
            let listed: Vec<String> = nodes
                .iter()
                .take(NAMED_NODES)
                .map(|(node, why)| format!("{node}: {}", why.describe()))
                .collect();
            let more = nodes.len().saturating_sub(NAMED_NODES);
            let more = if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            };
            let (reason, hint) = match same {
                Some(why) => (why.reason(), hint(why)),
                None => ("NoEligibleNode", "see each node's reason"),
            };
            Wanted::new(
                ANNOUNCED,
                false,
                reason,
                format!(
                    "no node may announce {ip} ({}{more}): {hint}",
                    listed.join("; ")
                ),
            )
        }
    }
}

/// What a person can do about one reason.
fn hint(why: Blocked) -> &'static str {
    match why {
        Blocked::NoLiveAgent => {
            "check that the vipam agent runs on these nodes and reaches the API server"
        }
        Blocked::Excluded => {
            "remove the label from a node that should announce, or select other nodes"
        }
        Blocked::Cordoned => "uncordon the nodes once their drain is done (kubectl uncordon)",
        Blocked::NoPeer => {
            "no BGPPeer of the address's family selects these nodes: check the BGPPeers' \
             nodeSelector and the BGPAnnouncement's peers"
        }
        Blocked::NetworkUnavailable => "the nodes' network plugin reports no network",
        Blocked::NoReadyEndpoint => {
            "the Service has externalTrafficPolicy: Local, so only a node running a ready \
             endpoint may announce it: start one on a selected node, or use Cluster"
        }
        Blocked::NoInterface => {
            "check the links (carrier) and the L2Announcement's interfaces patterns"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_condition_reason_and_names_the_nodes() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let one = |why| Unserved::NoEligibleNode(vec![("n1".to_string(), why)]);
        let cases = [
            (Unserved::NoAnnouncement, "NoL2Announcement", "IPPool lan"),
            (
                Unserved::NoNodeSelected {
                    announcements: vec!["edge".into()],
                    nodes: 3,
                },
                "NoNodeSelected",
                "L2Announcement edge selects no node",
            ),
            (
                Unserved::NoNodeSelected {
                    announcements: vec!["edge".into()],
                    nodes: 0,
                },
                "NoNodeSelected",
                "no Node for L2Announcement edge",
            ),
            (
                one(Blocked::NoLiveAgent),
                "NoLiveAgent",
                "n1: no live vipam agent Lease",
            ),
            (
                one(Blocked::Excluded),
                "NodesExcluded",
                "n1: labelled node.kubernetes.io/exclude",
            ),
            (
                one(Blocked::NetworkUnavailable),
                "NetworkUnavailable",
                "n1: condition",
            ),
            (
                one(Blocked::NoReadyEndpoint),
                "NoReadyEndpoint",
                "externalTrafficPolicy: Local",
            ),
            (one(Blocked::NoInterface), "NoUsableInterface", "link down"),
            (one(Blocked::Cordoned), "NodesCordoned", "n1: cordoned"),
            (one(Blocked::NoPeer), "NoBGPPeer", "n1: no BGPPeer"),
            (
                Unserved::NoEligibleNode(vec![
                    ("n1".into(), Blocked::Excluded),
                    ("n2".into(), Blocked::NoLiveAgent),
                ]),
                "NoEligibleNode",
                "n1: labelled",
            ),
        ];
        for (unserved, reason, text) in cases {
            let why = Why {
                bgp: false,
                unserved,
            };
            let wanted = condition(ip, "lan", &why);
            assert!(!wanted.status, "{reason}");
            assert_eq!(wanted.reason, reason);
            assert!(
                wanted.message.contains(text),
                "{reason}: {}",
                wanted.message
            );
            assert!(wanted.message.contains("192.0.2.7"), "{}", wanted.message);
        }
        let many = Unserved::NoEligibleNode(
            (0..8)
                .map(|i| (format!("n{i}"), Blocked::NoLiveAgent))
                .collect(),
        );
        let message = condition(
            ip,
            "lan",
            &Why {
                bgp: false,
                unserved: many,
            },
        )
        .message;
        assert!(
            message.contains("n4:") && !message.contains("n5:"),
            "{message}"
        );
        assert!(message.contains("and 3 more"), "{message}");
        // A BGP reason names the BGPAnnouncement.
        let bgp = Why {
            bgp: true,
            unserved: Unserved::NoNodeSelected {
                announcements: vec!["routed".into()],
                nodes: 2,
            },
        };
        let message = condition(ip, "lan", &bgp).message;
        assert!(
            message.contains("BGPAnnouncement routed selects no node"),
            "{message}"
        );
    }
}
