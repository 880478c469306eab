//! Which node announces which address.
//!
//! Every agent computes the same answer from the same view: for each address, the eligible
//! nodes are those an L2Announcement selects for it that are alive, not excluded and (for
//! `externalTrafficPolicy: Local`) run a ready endpoint; the owner is the eligible node with the
//! highest rendezvous hash of (node, address). A node joining or leaving therefore moves only
//! the addresses it wins or held, and an address shared by several Services has one owner.
//!
//! Liveness is judged by the observer's own monotonic clock from when it last *saw* a node's
//! Lease change ([`Liveness`]), never by comparing timestamps written by other nodes, so clock
//! skew between nodes cannot move addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use regex::Regex;

use super::pool::{SERVICE_NAME_LABEL, SERVICE_NAMESPACE_LABEL};
use super::selector::LabelSelector;

/// How an owned address is announced on its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnnounceMode {
    /// The agent answers ARP requests and neighbour solicitations itself.
    Arp,
    /// The agent adds the /32 or /128 to the interface; the kernel answers.
    Address,
    /// The agent adds the /32 or /128 to the interface (usually `lo`) so the kernel accepts
    /// its traffic, and announces nothing on the LAN: a router learns the address by BGP
    /// (the control-plane VIP with `--bgp`). Never probed, never yielded on a LAN claim.
    Local,
}

impl AnnounceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AnnounceMode::Arp => "arp",
            AnnounceMode::Address => "address",
            AnnounceMode::Local => "local",
        }
    }

    /// Whether the agent puts the address on the interface (and removes it again).
    pub fn adds_address(self) -> bool {
        matches!(self, AnnounceMode::Address | AnnounceMode::Local)
    }

    /// Whether the address is announced on the LAN (gratuitous ARP / unsolicited NA).
    pub fn on_lan(self) -> bool {
        matches!(self, AnnounceMode::Arp | AnnounceMode::Address)
    }
}

/// Whether an announcement's service selector picks an address held by `services` (None or
/// empty = all; any one Service matching is enough: the address is announced for all of them).
/// Matches the Service's labels plus the pseudo-labels `vipam.io/service-namespace` and
/// `vipam.io/service-name`.
pub fn selects_services(selector: Option<&LabelSelector>, services: &[ServiceOnAddress]) -> bool {
    match selector {
        None => true,
        Some(selector) if selector.is_empty() => true,
        Some(selector) => services.iter().any(|s| {
            let mut labels = s.labels.clone();
            labels.insert(SERVICE_NAMESPACE_LABEL.to_string(), s.namespace.clone());
            labels.insert(SERVICE_NAME_LABEL.to_string(), s.name.clone());
            selector.matches(&labels)
        }),
    }
}

/// One L2Announcement, as ownership needs it.
#[derive(Debug, Clone)]
pub struct AnnouncementRule {
    pub name: String,
    /// Services whose addresses are announced (None or empty = all). Matches the Service's labels
    /// plus the pseudo-labels `vipam.io/service-namespace` and `vipam.io/service-name`.
    pub service_selector: Option<LabelSelector>,
    /// Pools whose addresses are announced (empty = all).
    pub ip_pools: Vec<String>,
    /// Nodes that announce (None or empty = all).
    pub node_selector: Option<LabelSelector>,
    /// Interface name patterns, unanchored as in Cilium (`^eth[0-9]+$` to be strict); empty = the
    /// interface of the node's default route.
    pub interfaces: Vec<Regex>,
    pub mode: AnnounceMode,
}

impl AnnouncementRule {
    /// Whether this rule selects `node` to announce at all (node selector only).
    pub fn selects_node(&self, node: &NodeView) -> bool {
        self.node_selector
            .as_ref()
            .is_none_or(|s| s.matches(&node.labels))
    }

    /// Whether the rule covers an address of `pool` held by `services` (any one matching is
    /// enough: the address is announced for all of them).
    fn covers(&self, pool: &str, services: &[ServiceOnAddress]) -> bool {
        if !self.ip_pools.is_empty() && !self.ip_pools.iter().any(|p| p == pool) {
            return false;
        }
        selects_services(self.service_selector.as_ref(), services)
    }

    /// The interface this rule announces on for `node`: the first of its interfaces (sorted by
    /// name) that a pattern matches, or its default-route interface when the rule names none.
    pub fn interface_on(&self, node: &NodeView) -> Option<String> {
        if self.interfaces.is_empty() {
            return node.default_interface.clone();
        }
        let mut names: Vec<&String> = node.interfaces.iter().collect();
        names.sort();
        names
            .into_iter()
            .find(|name| self.interfaces.iter().any(|re| re.is_match(name)))
            .cloned()
    }
}

/// A node, as ownership needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Labelled `node.kubernetes.io/exclude-from-external-load-balancers`.
    pub excluded: bool,
    /// Cordoned (`spec.unschedulable`): being drained, so it stops announcing first.
    pub cordoned: bool,
    /// Condition `NetworkUnavailable` is True.
    pub network_unavailable: bool,
    /// Its agent holds a live Lease (see [`Liveness`]).
    pub live: bool,
    /// Interface names the node's agent reported in its Lease.
    pub interfaces: Vec<String>,
    /// The interface of the node's default route, as its agent reported it.
    pub default_interface: Option<String>,
}

impl NodeView {
    /// The first reason of the node's own state not to announce anything, for L2 and BGP
    /// alike: no live agent Lease, excluded, cordoned, network unavailable.
    pub fn blocked(&self) -> Option<Blocked> {
        if !self.live {
            Some(Blocked::NoLiveAgent)
        } else if self.excluded {
            Some(Blocked::Excluded)
        } else if self.cordoned {
            Some(Blocked::Cordoned)
        } else if self.network_unavailable {
            Some(Blocked::NetworkUnavailable)
        } else {
            None
        }
    }

    /// Why the node cannot announce anything, if it cannot.
    pub fn unavailable(&self) -> Option<&'static str> {
        if !self.live {
            Some("no live agent lease")
        } else if self.excluded {
            Some("excluded from external load balancers")
        } else if self.cordoned {
            Some("cordoned")
        } else if self.network_unavailable {
            Some("network unavailable")
        } else {
            None
        }
    }
}

/// One Service holding an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceOnAddress {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `externalTrafficPolicy: Local`: only nodes with a ready endpoint may announce.
    pub local_traffic: bool,
    /// Nodes running a ready endpoint of the Service.
    pub ready_nodes: BTreeSet<String>,
}

/// One allocated address and the Services on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressView {
    pub ip: IpAddr,
    pub pool: String,
    pub services: Vec<ServiceOnAddress>,
}

/// Who announces an address, and how.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    pub node: String,
    pub interface: String,
    pub mode: AnnounceMode,
    /// The L2Announcement that made the node eligible.
    pub announcement: String,
}

/// The rendezvous (highest random weight) score of `node` for `ip`: FNV-1a over the node name,
/// a separator and the address bytes, then a 64-bit finaliser so that similar names spread.
/// Stable across processes, versions and architectures (no `std` hasher).
pub fn rendezvous_score(node: &str, ip: IpAddr) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    };
    node.bytes().for_each(&mut feed);
    feed(0xff); // never part of a UTF-8 name: "ab"+ip and "a"+"b…" cannot collide
    match ip {
        IpAddr::V4(v4) => v4.octets().into_iter().for_each(&mut feed),
        IpAddr::V6(v6) => v6.octets().into_iter().for_each(&mut feed),
    }
    // splitmix64 finaliser
    let mut z = hash;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Why one node may not announce an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Blocked {
    /// Its agent holds no live Lease (not running, not selected long, or cut off from the API).
    NoLiveAgent,
    /// Labelled `node.kubernetes.io/exclude-from-external-load-balancers`.
    Excluded,
    /// Cordoned (`kubectl cordon`, `kubectl drain`).
    Cordoned,
    /// Its condition `NetworkUnavailable` is True.
    NetworkUnavailable,
    /// A Service on the address has `externalTrafficPolicy: Local` and no ready endpoint here.
    NoReadyEndpoint,
    /// BGP: no BGPPeer of the address's family that a covering BGPAnnouncement names selects
    /// the node.
    NoPeer,
    /// No usable interface (Ethernet, up, with carrier) that the L2Announcement names: a link
    /// is down, or the patterns match nothing there (or no default route, when it names none).
    NoInterface,
}

impl Blocked {
    /// A condition reason: static, CamelCase.
    pub fn reason(self) -> &'static str {
        match self {
            Blocked::NoLiveAgent => "NoLiveAgent",
            Blocked::Excluded => "NodesExcluded",
            Blocked::Cordoned => "NodesCordoned",
            Blocked::NetworkUnavailable => "NetworkUnavailable",
            Blocked::NoReadyEndpoint => "NoReadyEndpoint",
            Blocked::NoInterface => "NoUsableInterface",
            Blocked::NoPeer => "NoBGPPeer",
        }
    }

    /// What it means, for a person.
    pub fn describe(self) -> &'static str {
        match self {
            Blocked::NoLiveAgent => "no live vipam agent Lease",
            Blocked::Excluded => "labelled node.kubernetes.io/exclude-from-external-load-balancers",
            Blocked::Cordoned => "cordoned (spec.unschedulable)",
            Blocked::NetworkUnavailable => "condition NetworkUnavailable is True",
            Blocked::NoReadyEndpoint => {
                "no ready endpoint of an externalTrafficPolicy: Local Service on the address"
            }
            Blocked::NoInterface => {
                "no usable interface the L2Announcement names (link down, or no match)"
            }
            Blocked::NoPeer => "no BGPPeer of the address's family selects the node",
        }
    }
}

/// Why nobody may announce an address: what [`explain`] finds when [`eligible`] is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unserved {
    /// No L2Announcement covers it (its pool, or its Services' labels).
    NoAnnouncement,
    /// The covering L2Announcements (named) select none of the cluster's `nodes` (which may be
    /// none at all).
    NoNodeSelected {
        announcements: Vec<String>,
        nodes: usize,
    },
    /// Every node they select is blocked, each for the first reason found.
    NoEligibleNode(Vec<(String, Blocked)>),
}

/// How a node could announce one address, or why it may not (the first reason, in the order of
/// [`Blocked`]'s variants except that a missing interface comes before missing endpoints). The
/// first covering rule (by name) that selects the node and finds an interface there decides.
fn candidacy(
    address: &AddressView,
    node: &NodeView,
    rules: &[&AnnouncementRule],
) -> Result<(String, AnnounceMode, String), Blocked> {
    if let Some(why) = node.blocked() {
        return Err(why);
    }
    // The node's own state before the Services' endpoints: a link that is down is the first
    // thing to fix, whatever runs there.
    let how = rules
        .iter()
        .filter(|rule| rule.selects_node(node))
        .find_map(|rule| {
            let interface = rule.interface_on(node)?;
            Some((interface, rule.mode, rule.name.clone()))
        })
        .ok_or(Blocked::NoInterface)?;
    let local_ok = address
        .services
        .iter()
        .filter(|s| s.local_traffic)
        .all(|s| s.ready_nodes.contains(&node.name));
    if !local_ok {
        return Err(Blocked::NoReadyEndpoint);
    }
    Ok(how)
}

/// The rules covering `address`, by name (the first decides interface and mode).
fn covering<'a>(address: &AddressView, rules: &'a [AnnouncementRule]) -> Vec<&'a AnnouncementRule> {
    let mut covering: Vec<&AnnouncementRule> = rules
        .iter()
        .filter(|r| r.covers(&address.pool, &address.services))
        .collect();
    covering.sort_by(|a, b| a.name.cmp(&b.name));
    covering
}

/// Why nobody may announce `address`, or `None` when some node may (or no Service holds it:
/// then there is nothing to announce). Nodes that no covering rule selects are not listed: they
/// were never meant to announce it.
pub fn explain(
    address: &AddressView,
    rules: &[AnnouncementRule],
    nodes: &[NodeView],
) -> Option<Unserved> {
    if address.services.is_empty() {
        return None;
    }
    let covering = covering(address, rules);
    explain_among(
        covering.iter().map(|r| r.name.clone()).collect(),
        nodes,
        |node| covering.iter().any(|r| r.selects_node(node)),
        |node| candidacy(address, node, &covering).map(|_| ()),
    )
}

/// The common part of explaining an address nobody may announce, for L2 and BGP alike:
/// `covering` names the announcements covering it (none: `NoAnnouncement`); `selects` says
/// whether one of them selects a node; `candidacy` why a selected node may not announce.
pub fn explain_among(
    covering: Vec<String>,
    nodes: &[NodeView],
    selects: impl Fn(&NodeView) -> bool,
    candidacy: impl Fn(&NodeView) -> Result<(), Blocked>,
) -> Option<Unserved> {
    if covering.is_empty() {
        return Some(Unserved::NoAnnouncement);
    }
    let selected: Vec<&NodeView> = nodes.iter().filter(|n| selects(n)).collect();
    if selected.is_empty() {
        return Some(Unserved::NoNodeSelected {
            announcements: covering,
            nodes: nodes.len(),
        });
    }
    let mut blocked = Vec::new();
    for node in selected {
        match candidacy(node) {
            Ok(()) => return None,
            Err(why) => blocked.push((node.name.clone(), why)),
        }
    }
    blocked.sort();
    Some(Unserved::NoEligibleNode(blocked))
}

/// The nodes that may announce `address`, each with how it would, in no particular order.
pub fn eligible(
    address: &AddressView,
    rules: &[AnnouncementRule],
    nodes: &[NodeView],
) -> Vec<Owner> {
    // Several rules may select one node: the first by name decides interface and mode.
    let covering = covering(address, rules);
    if covering.is_empty() || address.services.is_empty() {
        return Vec::new();
    }
    nodes
        .iter()
        .filter_map(|node| {
            let candidate = candidacy(address, node, &covering).ok();
            candidate.map(|(interface, mode, announcement)| Owner {
                node: node.name.clone(),
                interface,
                mode,
                announcement,
            })
        })
        .collect()
}

/// The owner of `address`: the eligible node with the highest rendezvous score (ties, which
/// need a 64-bit collision, go to the smaller name).
pub fn owner(
    address: &AddressView,
    rules: &[AnnouncementRule],
    nodes: &[NodeView],
) -> Option<Owner> {
    eligible(address, rules, nodes).into_iter().max_by(|a, b| {
        rendezvous_score(&a.node, address.ip)
            .cmp(&rendezvous_score(&b.node, address.ip))
            .then_with(|| b.node.cmp(&a.node))
    })
}

/// The owner of every address that has one. Addresses nobody may announce are absent.
pub fn assign(
    addresses: &[AddressView],
    rules: &[AnnouncementRule],
    nodes: &[NodeView],
) -> BTreeMap<IpAddr, Owner> {
    addresses
        .iter()
        .filter_map(|a| owner(a, rules, nodes).map(|o| (a.ip, o)))
        .collect()
}

/// Whether a node's agent should hold a liveness Lease: some L2Announcement selects the node.
pub fn needs_lease(node: &NodeView, rules: &[AnnouncementRule]) -> bool {
    rules.iter().any(|r| r.selects_node(node))
}

/// Liveness of the agents' Leases as seen by one observer.
///
/// A Lease is live while less than its duration has passed, on the observer's monotonic clock,
/// since the observer last saw it change (a new resourceVersion). The renew timestamps other
/// nodes write are never compared with the local clock. `now` is the observer's monotonic time
/// (e.g. time since the process started), passed in.
#[derive(Debug, Default, Clone)]
pub struct Liveness {
    leases: BTreeMap<String, Observed>,
}

#[derive(Debug, Clone)]
struct Observed {
    version: String,
    changed_at: Duration,
    duration: Duration,
    held: bool,
}

impl Liveness {
    /// Records a sighting of `node`'s Lease. `held` is false when the Lease has no holder (a
    /// released Lease). Returns whether it changed.
    pub fn observe(
        &mut self,
        node: &str,
        version: &str,
        duration: Duration,
        held: bool,
        now: Duration,
    ) -> bool {
        match self.leases.get_mut(node) {
            Some(seen) if seen.version == version => {
                seen.duration = duration;
                seen.held = held;
                false
            }
            _ => {
                self.leases.insert(
                    node.to_string(),
                    Observed {
                        version: version.to_string(),
                        changed_at: now,
                        duration,
                        held,
                    },
                );
                true
            }
        }
    }

    /// The Lease is gone: its node is no longer live.
    pub fn forget(&mut self, node: &str) {
        self.leases.remove(node);
    }

    /// After a watch outage (re-list), every Lease counts as seen now: its renewals may have
    /// been missed, so silence during the outage proves nothing.
    pub fn refresh_all(&mut self, now: Duration) {
        for seen in self.leases.values_mut() {
            seen.changed_at = now;
        }
    }

    /// Whether `node` holds a live Lease at `now`.
    pub fn is_live(&self, node: &str, now: Duration) -> bool {
        self.leases
            .get(node)
            .is_some_and(|seen| seen.held && now.saturating_sub(seen.changed_at) < seen.duration)
    }

    /// When `node`'s Lease expires unless it changes again (None: not live).
    pub fn expires_at(&self, node: &str, now: Duration) -> Option<Duration> {
        self.leases
            .get(node)
            .filter(|_| self.is_live(node, now))
            .map(|seen| seen.changed_at + seen.duration)
    }

    /// The earliest expiry among live Leases: when ownership must be computed again even if
    /// nothing else changes.
    pub fn next_expiry(&self, now: Duration) -> Option<Duration> {
        self.leases
            .keys()
            .filter_map(|node| self.expires_at(node, now))
            .min()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &String> {
        self.leases.keys()
    }
}

#[cfg(test)]
mod tests;
