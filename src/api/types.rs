//! CRD types. Field docs are what `kubectl explain` shows.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn default_true() -> bool {
    true
}

/// A pool of addresses vipam hands out to LoadBalancer Services. Pools live in Git.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vipam.io",
    version = "v1alpha1",
    kind = "IPPool",
    doc = "A pool of addresses vipam hands out to LoadBalancer Services.",
    plural = "ippools",
    singular = "ippool",
    shortname = "ipp",
    status = "IPPoolStatus",
    printcolumn = r#"{"name":"Blocks","type":"string","jsonPath":".status.blocks"}"#,
    printcolumn = r#"{"name":"Allocated","type":"string","jsonPath":".status.allocated"}"#,
    printcolumn = r#"{"name":"Available","type":"string","jsonPath":".status.available"}"#,
    printcolumn = r#"{"name":"Conflict","type":"string","jsonPath":".status.conditions[?(@.type==\"Conflict\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.blocks) > 0").message("an IPPool needs at least one block"))]
pub struct IPPoolSpec {
    /// Address blocks: `{cidr: 192.168.0.0/24}` or `{start: 192.168.0.220, stop: 192.168.0.239}`
    /// (`stop` omitted = one address). IPv4 and IPv6 may mix in one pool.
    pub blocks: Vec<IPPoolBlock>,
    /// Hand out the network and broadcast addresses of IPv4 `cidr` blocks of /30 or larger.
    /// Never applies to start/stop blocks.
    #[serde(default, rename = "allowFirstLastIPs")]
    pub allow_first_last_ips: bool,
    /// Skip IPv4 addresses ending in .0 or .255 (some clients mishandle them).
    #[serde(default, rename = "avoidBuggyIPs")]
    pub avoid_buggy_ips: bool,
    /// Only Services matching this selector draw from the pool. The pseudo-labels
    /// `vipam.io/service-namespace` and `vipam.io/service-name` match a Service's namespace and
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Only Services in these namespaces draw from the pool (empty = all namespaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Hand out addresses to Services that ask for none in particular. When false, only pinned
    /// addresses and Services naming the pool (`vipam.io/pool`) get addresses from it.
    #[serde(default = "default_true")]
    pub auto_assign: bool,
    /// Pools are tried in ascending priority, then by name.
    #[serde(default)]
    pub priority: i32,
    /// No new allocations; existing ones are kept.
    #[serde(default)]
    pub disabled: bool,
}

/// One block of addresses: either `cidr`, or `start` with an optional `stop`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.cidr) != has(self.start)").message("a block has either cidr or start (with an optional stop)"))]
#[x_kube(validation = Rule::new("!has(self.stop) || has(self.start)").message("stop needs start"))]
pub struct IPPoolBlock {
    /// A CIDR, e.g. `192.168.0.0/24` or `2001:db8::/64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// First address of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Last address of a range (inclusive); omitted = only `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

/// What the controller observed about a pool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// The blocks, summarised for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<String>,
    /// Addresses the pool may hand out (decimal: IPv6 counts exceed 64 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Addresses allocated from the pool (decimal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<String>,
    /// Addresses still free (decimal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<String>,
    /// `Ready`, and `Conflict` naming an overlapping pool and the shared range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The allocation ledger: one object per address, named from the address
/// (`v4-192-168-0-223`, `v6-2001-db8--1`). `kubectl get ipallocations` is the allocation table.
/// The API server's name uniqueness is what makes allocation race-free across replicas.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vipam.io",
    version = "v1alpha1",
    kind = "IPAllocation",
    doc = "vipam's allocation ledger: one object per address, written by vipam (not kept in Git).",
    plural = "ipallocations",
    singular = "ipallocation",
    shortname = "ipa",
    status = "IPAllocationStatus",
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ip"}"#,
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"Services","type":"string","jsonPath":".spec.services[*].name"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.announcers[*].node"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAllocationSpec {
    /// The address (RFC 5952 form for IPv6). Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("ip is immutable"))]
    pub ip: String,
    /// The pool the address was allocated from.
    pub pool: String,
    /// The sharing key of the Services on the address, if they share it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing_key: Option<String>,
    /// The Services holding the address; when released, the last holders (the address stays
    /// reserved for them for the sticky-release period).
    #[serde(default)]
    pub services: Vec<AllocatedService>,
}

/// A Service on an address, with what sharing decisions need.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocatedService {
    pub namespace: String,
    pub name: String,
    /// The Service's ports on the address.
    #[serde(default)]
    pub ports: Vec<AllocatedPort>,
    /// Namespaces the Service shares with (`ns1,ns2` or `*`), from
    /// `vipam.io/sharing-cross-namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing_cross_namespace: Option<String>,
    /// `Local` when the Service has `externalTrafficPolicy: Local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<String>,
    /// The Service's pod selector (Services on one address with `externalTrafficPolicy: Local`
    /// must select the same pods).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
}

/// A (protocol, port) of a Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct AllocatedPort {
    /// TCP, UDP or SCTP.
    pub protocol: String,
    pub port: i32,
}

/// Lifecycle of an allocation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum AllocationPhase {
    /// Held by at least one Service.
    Bound,
    /// No Service holds it; reserved for its last holders until the sticky period ends.
    Released,
}

/// What the controller and agents observed about an allocation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPAllocationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<AllocationPhase>,
    /// When the last Service left the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
    /// The node announcing the address on the LAN (ARP/NDP), as its agent reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcer: Option<Announcer>,
    /// Every node announcing the address and how: the LAN announcer above (`l2`), and each
    /// node whose BGP session with a router that gets the address is Established (`bgp`).
    /// Written by the controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub announcers: Vec<AnnouncingNode>,
    /// Another host on the LAN uses the address, as the agent of the node that should announce
    /// it found (a probe was answered, or another MAC announced it). The address is not
    /// announced while this lasts; the agent probes again every 10 s and clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<AddressConflict>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// An address in use by another host on the LAN.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct AddressConflict {
    /// The node whose agent found the conflict.
    pub node: String,
    /// The interface it was found on.
    pub interface: String,
    /// The other host's MAC address.
    pub mac: String,
    /// When it was first seen.
    pub since: Time,
}

/// One node announcing an address, and how.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub struct AnnouncingNode {
    pub node: String,
    /// `l2` (ARP/NDP on the LAN) or `bgp`.
    pub via: String,
    /// The interface (l2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The BGPPeers that have the route (bgp).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

/// Where an address is announced.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Announcer {
    pub node: String,
    pub interface: String,
    pub since: Time,
}

/// Which nodes announce which addresses on which interfaces (ARP/NDP).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vipam.io",
    version = "v1alpha1",
    kind = "L2Announcement",
    doc = "Which nodes announce which LoadBalancer addresses on which interfaces (ARP/NDP).",
    plural = "l2announcements",
    singular = "l2announcement",
    shortname = "l2a",
    status = "L2AnnouncementStatus",
    printcolumn = r#"{"name":"Pools","type":"string","jsonPath":".spec.ipPools"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementSpec {
    /// Only addresses of Services matching this selector (empty = all Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Only addresses of these pools (empty = all pools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_pools: Vec<String>,
    /// Only these nodes announce (empty = all nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Interfaces to announce on, as regular expressions (empty = the interface holding the
    /// node's default route).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// `arp`: the agent answers ARP/NDP itself. `address`: the agent adds the /32 or /128 to the
    /// interface and the kernel answers.
    #[serde(default)]
    pub mode: AnnouncementMode,
}

/// How an address is announced.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnnouncementMode {
    #[default]
    Arp,
    Address,
}

/// What the controller observed about an L2Announcement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementStatus {
    /// `Ready`, or why a selector or interface pattern is invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn default_bgp_port() -> u16 {
    179
}

fn default_hold_time() -> String {
    "9s".to_string()
}

/// A BGP router the nodes' agents peer with (announce-only: nothing is learned from it).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vipam.io",
    version = "v1alpha1",
    kind = "BGPPeer",
    doc = "A BGP router the nodes' agents peer with to announce LoadBalancer addresses.",
    plural = "bgppeers",
    singular = "bgppeer",
    shortname = "bgpp",
    status = "BGPPeerStatus",
    printcolumn = r#"{"name":"Peer","type":"string","jsonPath":".spec.peerAddress"}"#,
    printcolumn = r#"{"name":"Peer ASN","type":"integer","jsonPath":".spec.peerASN"}"#,
    printcolumn = r#"{"name":"My ASN","type":"integer","jsonPath":".spec.myASN"}"#,
    printcolumn = r#"{"name":"Established","type":"string","jsonPath":".status.established"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    /// The router's address (IPv4 or IPv6). Each selected node's agent connects to it.
    pub peer_address: String,
    /// The router's AS number (1 to 4294967295; 4-byte ASNs are supported).
    #[serde(rename = "peerASN")]
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub peer_asn: u32,
    /// The nodes' AS number. Equal to peerASN: an internal (iBGP) session.
    #[serde(rename = "myASN")]
    #[schemars(range(min = 1, max = 4294967295u32))]
    pub my_asn: u32,
    /// The router's TCP port.
    #[serde(default = "default_bgp_port")]
    #[schemars(range(min = 1))]
    pub peer_port: u16,
    /// The local address to connect from (default: chosen by the node's routing table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// Hold time proposed to the router (`9s`, `90s`, `1m30s`; 0 or 3s to 65535s). The
    /// session uses the smaller of the two proposals; a crashed node's routes are dropped by
    /// the router when it expires.
    #[serde(default = "default_hold_time")]
    pub hold_time: String,
    /// Interval between KEEPALIVEs (default: a third of the negotiated hold time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<String>,
    /// TTL of the session's packets for a router more than one hop away (eBGP multihop,
    /// 1 to 255). Default: 1 for eBGP, 64 for iBGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ebgp_multi_hop: Option<u8>,
    /// The TCP MD5 password (RFC 2385), read from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Which nodes peer with the router (default: every node with an agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Advertise graceful restart (RFC 4724): the router keeps a restarting agent's routes
    /// for 120 s, until the agent has sent them again.
    #[serde(default = "default_true")]
    pub graceful_restart: bool,
}

/// A key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct SecretKeyRef {
    pub namespace: String,
    pub name: String,
    pub key: String,
}

/// What the controller observed about a BGPPeer, and the sessions the agents report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerStatus {
    /// Sessions Established out of sessions wanted, for `kubectl get` (`2/3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established: Option<String>,
    /// One entry per node that peers with the router, as its agent last reported it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<BGPSessionStatus>,
    /// `Ready`, or why the spec is invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One node's session with a router.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPSessionStatus {
    pub node: String,
    /// Idle, Connect, Active, OpenSent, OpenConfirm or Established.
    pub state: String,
    /// When the session entered this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Prefixes announced on the session.
    #[serde(default)]
    pub prefixes_sent: u32,
    /// Why the session last failed, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

fn default_aggregation_v4() -> u8 {
    32
}

fn default_aggregation_v6() -> u8 {
    128
}

/// Which addresses are announced by BGP, from which nodes, to which routers.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vipam.io",
    version = "v1alpha1",
    kind = "BGPAnnouncement",
    doc = "Which LoadBalancer addresses are announced by BGP, from which nodes, to which routers.",
    plural = "bgpannouncements",
    singular = "bgpannouncement",
    shortname = "bgpa",
    status = "BGPAnnouncementStatus",
    printcolumn = r#"{"name":"Pools","type":"string","jsonPath":".spec.ipPools"}"#,
    printcolumn = r#"{"name":"Peers","type":"string","jsonPath":".spec.peers"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPAnnouncementSpec {
    /// Only addresses of these pools (empty = all pools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_pools: Vec<String>,
    /// Only addresses of Services matching this selector (empty = all Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Only these nodes announce (empty = all nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Only to these BGPPeers (names; empty = all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// Communities attached to the routes: `65000:100`, a well-known name (`no-export`,
    /// `no-advertise`, `blackhole`, ...) or a large community `large:65000:1:2`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    /// LOCAL_PREF of the routes (sent to iBGP peers only, as RFC 4271 requires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    /// Prefix length announced for IPv4 addresses (0 to 32): below 32 the address's covering
    /// prefix is announced once for all its addresses.
    #[serde(default = "default_aggregation_v4")]
    #[schemars(range(max = 32))]
    pub aggregation_length: u8,
    /// Prefix length announced for IPv6 addresses (0 to 128).
    #[serde(default = "default_aggregation_v6", rename = "aggregationLengthV6")]
    #[schemars(range(max = 128))]
    pub aggregation_length_v6: u8,
}

/// What the controller observed about a BGPAnnouncement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BGPAnnouncementStatus {
    /// `Ready`, or why a selector or community is invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
