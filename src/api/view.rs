//! Translation of what the agents and the controller watch (Nodes, agent Leases,
//! EndpointSlices, IPAllocations, L2Announcements) into `core::ownership`'s view. No decisions
//! here: the agents decide ownership from it, the controller explains why an address is not
//! served.

use crate::lease::Sighting;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use regex::Regex;

use crate::api::{
    AllocationPhase, AnnouncementMode, IPAllocation, L2Announcement, LabelSelectorExt,
};
use crate::core::category::Category;
use crate::core::mac::MacAddr;
use crate::core::ownership::{
    AddressView, AnnounceMode, AnnouncementRule, Liveness, NodeView, ServiceOnAddress,
};
use crate::core::selector::SelectorError;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Label on every agent Lease (the agents watch only these).
pub const AGENT_LEASE_LABEL: &str = "vipam.io/agent-lease";
/// Prefix of the agents' Lease names: `vipam-agent-<node>`.
pub const AGENT_LEASE_PREFIX: &str = "vipam-agent-";
/// Lease annotation: the node's interface names, comma-separated (other agents need them to
/// know whether an L2Announcement's patterns match an interface there).
pub const INTERFACES_ANNOTATION: &str = "vipam.io/interfaces";
/// Lease annotation: the interface of the node's default route.
pub const DEFAULT_INTERFACE_ANNOTATION: &str = "vipam.io/default-interface";
/// Lease annotation: the MACs of the usable interfaces, comma-separated. Another agent's
/// announcement from one of them is a takeover, not an address conflict.
pub const MACS_ANNOTATION: &str = "vipam.io/macs";
/// Nodes with this label never announce (the Kubernetes convention).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The Lease name of `node`'s agent.
pub fn lease_name(node: &str) -> String {
    format!("{AGENT_LEASE_PREFIX}{node}")
}

/// Why an L2Announcement cannot be a rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("L2Announcement {name}: {field}: {source}")]
    Selector {
        name: String,
        field: &'static str,
        #[source]
        source: SelectorError,
    },
    #[error("L2Announcement {name}: interface {pattern:?}: {source}")]
    Interface {
        name: String,
        pattern: String,
        #[source]
        source: regex::Error,
    },
}

impl Category for RuleError {
    fn category(&self) -> &'static str {
        match self {
            RuleError::Selector { .. } => "invalid_selector",
            RuleError::Interface { .. } => "invalid_interface",
        }
    }
}

/// An L2Announcement as a rule; `Err` says what is invalid (the object is then skipped; the
/// controller reports it in the object's status).
pub fn rule(l2: &L2Announcement) -> Result<AnnouncementRule, RuleError> {
    let name = l2.name_any();
    let selector = |field: &'static str, s: Option<&LabelSelector>| {
        s.map(|s| s.to_core())
            .transpose()
            .map_err(|source| RuleError::Selector {
                name: name.clone(),
                field,
                source,
            })
    };
    let service_selector = selector("serviceSelector", l2.spec.service_selector.as_ref())?;
    let node_selector = selector("nodeSelector", l2.spec.node_selector.as_ref())?;
    let interfaces = l2
        .spec
        .interfaces
        .iter()
        .map(|p| {
            Regex::new(p).map_err(|source| RuleError::Interface {
                name: name.clone(),
                pattern: p.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AnnouncementRule {
        name,
        service_selector,
        ip_pools: l2.spec.ip_pools.clone(),
        node_selector,
        interfaces,
        mode: match l2.spec.mode {
            AnnouncementMode::Arp => AnnounceMode::Arp,
            AnnouncementMode::Address => AnnounceMode::Address,
        },
    })
}

/// What one agent Lease says: its node, whether it is held, its duration, the interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFacts {
    pub node: String,
    pub version: String,
    pub held: bool,
    pub duration: Duration,
    pub interfaces: Vec<String>,
    pub default_interface: Option<String>,
    /// MACs of the node's usable interfaces (`vipam.io/macs`).
    pub macs: Vec<MacAddr>,
    /// The node's BGP sessions (`vipam.io/bgp-sessions`); empty when it runs none (or the
    /// note cannot be read, which is logged).
    pub bgp_sessions: Vec<SessionNote>,
}

/// Annotation of an agent Lease listing the node's BGP sessions (JSON list of
/// [`SessionNote`]). It rides on the Lease renewals the agent makes anyway: no extra writes.
pub const BGP_SESSIONS_ANNOTATION: &str = "vipam.io/bgp-sessions";

/// One BGP session of a node, as its agent notes it in its Lease.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionNote {
    /// The BGPPeer's name.
    pub peer: String,
    /// Idle, Connect, Active, OpenSent, OpenConfirm or Established.
    pub state: String,
    /// Unix seconds when the state was entered.
    pub since: i64,
    pub prefixes_sent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Reads an agent Lease (None if it is not one).
pub fn lease_facts(lease: &Lease, fallback_duration: Duration) -> Option<LeaseFacts> {
    let name = lease.metadata.name.as_deref()?;
    let node = name.strip_prefix(AGENT_LEASE_PREFIX)?.to_string();
    let seen = Sighting::of(lease, fallback_duration);
    let annotations = lease.annotations();
    let interfaces = annotations
        .get(INTERFACES_ANNOTATION)
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let default_interface = annotations
        .get(DEFAULT_INTERFACE_ANNOTATION)
        .filter(|s| !s.is_empty())
        .cloned();
    let macs = annotations
        .get(MACS_ANNOTATION)
        .map(|list| {
            list.split(',')
                .filter_map(|m| m.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let bgp_sessions = match annotations.get(BGP_SESSIONS_ANNOTATION) {
        None => Vec::new(),
        Some(text) => serde_json::from_str(text).unwrap_or_else(|err| {
            tracing::warn!(lease = %name, error = %err, "unreadable {BGP_SESSIONS_ANNOTATION} annotation");
            Vec::new()
        }),
    };
    Some(LeaseFacts {
        node,
        version: seen.version,
        bgp_sessions,
        held: seen.holder.is_some(),
        duration: seen.duration,
        interfaces,
        default_interface,
        macs,
    })
}

/// Annotation on a Node that sets its BGP router ID (else its first IPv4 InternalIP).
pub const ROUTER_ID_ANNOTATION: &str = "vipam.io/bgp-router-id";

/// The BGP router ID of a node: the annotation `vipam.io/bgp-router-id`, else its first IPv4
/// InternalIP. `Err` says why there is none (or why the annotation is not an IPv4 address).
pub fn router_id(node: &Node) -> Result<std::net::Ipv4Addr, String> {
    if let Some(text) = node.annotations().get(ROUTER_ID_ANNOTATION) {
        return text.trim().parse().map_err(|_| {
            format!(
                "Node {}: annotation {ROUTER_ID_ANNOTATION}: {text:?} is not an IPv4 address",
                node.name_any()
            )
        });
    }
    node.status
        .iter()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<std::net::Ipv4Addr>().ok())
        .ok_or_else(|| {
            format!(
                "Node {} has no IPv4 InternalIP for a BGP router ID; set the annotation \
                 {ROUTER_ID_ANNOTATION}",
                node.name_any()
            )
        })
}

/// A node as ownership sees it.
pub fn node_view(
    node: &Node,
    lease: Option<&LeaseFacts>,
    liveness: &Liveness,
    now: Duration,
) -> NodeView {
    let name = node.name_any();
    let labels = node.labels().clone();
    let network_unavailable = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
        });
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    NodeView {
        excluded: labels.contains_key(EXCLUDE_LABEL),
        cordoned,
        live: liveness.is_live(&name, now),
        interfaces: lease.map(|l| l.interfaces.clone()).unwrap_or_default(),
        default_interface: lease.and_then(|l| l.default_interface.clone()),
        name,
        labels,
        network_unavailable,
    }
}

/// Nodes running a ready endpoint, per (namespace, Service name).
pub fn ready_nodes<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice.labels().get("kubernetes.io/service-name") else {
            continue;
        };
        let namespace = slice.namespace().unwrap_or_default();
        let nodes = out.entry((namespace, service.clone())).or_default();
        for endpoint in &slice.endpoints {
            // Kubernetes: a nil `ready` means ready.
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if ready && let Some(node) = &endpoint.node_name {
                nodes.insert(node.clone());
            }
        }
    }
    out
}

/// An IPAllocation as an address to announce; None when there is nothing to announce
/// (released, malformed, or none of its Services exists any more).
pub fn address_view(
    allocation: &IPAllocation,
    services: &BTreeMap<(String, String), &Service>,
    ready: &BTreeMap<(String, String), BTreeSet<String>>,
) -> Option<AddressView> {
    if allocation
        .status
        .as_ref()
        .and_then(|s| s.phase.as_ref())
        .is_some_and(|p| *p == AllocationPhase::Released)
    {
        return None;
    }
    let ip: IpAddr = allocation.spec.ip.parse().ok()?;
    let holders: Vec<ServiceOnAddress> = allocation
        .spec
        .services
        .iter()
        .filter_map(|held| {
            let key = (held.namespace.clone(), held.name.clone());
            let service = services.get(&key)?;
            let local_traffic = service
                .spec
                .as_ref()
                .and_then(|s| s.external_traffic_policy.as_deref())
                == Some("Local");
            Some(ServiceOnAddress {
                labels: service.labels().clone(),
                local_traffic,
                ready_nodes: ready.get(&key).cloned().unwrap_or_default(),
                namespace: key.0,
                name: key.1,
            })
        })
        .collect();
    if holders.is_empty() {
        return None;
    }
    Some(AddressView {
        ip,
        pool: allocation.spec.pool.clone(),
        services: holders,
    })
}

/// Services indexed by (namespace, name).
pub fn index_services<'a>(
    services: impl IntoIterator<Item = &'a Service>,
) -> BTreeMap<(String, String), &'a Service> {
    services
        .into_iter()
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn lease_facts_read_holder_duration_and_interfaces() {
        let lease: Lease = from(json!({
            "metadata": {"name": "vipam-agent-node-1", "resourceVersion": "42",
                "annotations": {"vipam.io/interfaces": "eth0, eth1,", "vipam.io/default-interface": "eth0",
                                "vipam.io/lease-duration-ms": "1500"}},
            "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 2}
        }));
        let facts = lease_facts(&lease, Duration::from_secs(3)).unwrap();
        assert_eq!(facts.node, "node-1");
        assert_eq!(facts.version, "42");
        assert!(facts.held);
        assert_eq!(facts.duration, Duration::from_millis(1500));
        assert_eq!(facts.interfaces, ["eth0", "eth1"]);
        assert_eq!(facts.default_interface.as_deref(), Some("eth0"));

        let released: Lease = from(json!({"metadata": {"name": "vipam-agent-n2"}, "spec": {}}));
        let facts = lease_facts(&released, Duration::from_secs(3)).unwrap();
        assert!(!facts.held);
        assert_eq!(facts.duration, Duration::from_secs(3));
        let other: Lease = from(json!({"metadata": {"name": "vipam-controller"}}));
        assert_eq!(lease_facts(&other, Duration::from_secs(3)), None);
    }

    #[test]
    fn ready_nodes_count_ready_and_unset_conditions_only() {
        let slice: EndpointSlice = from(json!({
            "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "nodeName": "a", "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "nodeName": "b", "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "nodeName": "c"},
                {"addresses": ["10.0.0.4"]}
            ]
        }));
        let ready = ready_nodes([&slice]);
        let nodes = &ready[&("shop".to_string(), "web".to_string())];
        assert_eq!(nodes.iter().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn address_view_skips_released_and_vanished_services() {
        let service: Service = from(json!({
            "metadata": {"name": "web", "namespace": "shop", "labels": {"tier": "web"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"}
        }));
        let index = index_services([&service]);
        let allocation: IPAllocation = from(json!({
            "metadata": {"name": "v4-192-0-2-10"},
            "spec": {"ip": "192.0.2.10", "pool": "lan", "services": [
                {"namespace": "shop", "name": "web"}, {"namespace": "shop", "name": "gone"}]}
        }));
        let ready = BTreeMap::from([(
            ("shop".to_string(), "web".to_string()),
            BTreeSet::from(["n1".to_string()]),
        )]);
        let view = address_view(&allocation, &index, &ready).unwrap();
        assert_eq!(view.ip, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(view.services.len(), 1);
        assert!(view.services[0].local_traffic);
        assert_eq!(view.services[0].labels["tier"], "web");
        assert!(view.services[0].ready_nodes.contains("n1"));

        let mut released = allocation.clone();
        released.status = Some(from(json!({"phase": "Released"})));
        assert_eq!(address_view(&released, &index, &ready), None);
        let mut orphan = allocation;
        orphan.spec.services.retain(|s| s.name == "gone");
        assert_eq!(address_view(&orphan, &index, &ready), None);
    }

    #[test]
    fn rules_report_what_is_invalid() {
        let l2: L2Announcement = from(json!({
            "metadata": {"name": "lan"},
            "spec": {"interfaces": ["^eth[0-9]+$", "(bad"], "mode": "address"}
        }));
        let err = rule(&l2).unwrap_err();
        assert_eq!(err.category(), "invalid_interface");
        let err = err.to_string();
        assert!(
            err.contains("L2Announcement lan") && err.contains("(bad"),
            "{err}"
        );
        let ok: L2Announcement = from(json!({
            "metadata": {"name": "lan"},
            "spec": {"interfaces": ["^eth[0-9]+$"], "mode": "address", "ipPools": ["lan"]}
        }));
        let r = rule(&ok).unwrap();
        assert_eq!(r.mode, AnnounceMode::Address);
        assert_eq!(r.ip_pools, ["lan"]);
    }

    #[test]
    fn node_view_reads_exclusion_and_network() {
        let node: Node = from(json!({
            "metadata": {"name": "n1", "labels": {EXCLUDE_LABEL: ""}},
            "status": {"conditions": [{"type": "NetworkUnavailable", "status": "True"}]}
        }));
        let view = node_view(&node, None, &Liveness::default(), Duration::ZERO);
        assert!(view.excluded && view.network_unavailable && !view.live);
    }
}
