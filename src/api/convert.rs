//! Translations between Kubernetes objects and core types. No decisions here.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use super::types::*;
use crate::core::allocate::{LedgerEntry, Member};
use crate::core::bgp::config as bgp;
use crate::core::names::{allocation_ip, allocation_name};
use crate::core::pool::{BlockSpec, PoolSpec};
use crate::core::request::{CrossNamespace, PortKey, ServiceRef, ServiceView};
use crate::core::selector;

/// An object that cannot be turned into a core value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {message}")]
pub struct ConvertError {
    pub kind: &'static str,
    pub name: String,
    pub message: String,
}

impl crate::core::category::Category for ConvertError {
    fn category(&self) -> &'static str {
        "invalid_object"
    }
}

fn selector_of(
    selector: &LabelSelector,
) -> Result<selector::LabelSelector, selector::SelectorError> {
    selector::LabelSelector::new(
        selector.match_labels.clone().unwrap_or_default(),
        selector.match_expressions.iter().flatten().map(|r| {
            (
                r.key.clone(),
                r.operator.clone(),
                r.values.clone().unwrap_or_default(),
            )
        }),
    )
}

/// Conversion of a Kubernetes label selector to the core one.
pub trait LabelSelectorExt {
    fn to_core(&self) -> Result<selector::LabelSelector, selector::SelectorError>;
}

impl LabelSelectorExt for LabelSelector {
    fn to_core(&self) -> Result<selector::LabelSelector, selector::SelectorError> {
        selector_of(self)
    }
}

fn seconds(time: &Time) -> i64 {
    time.0.as_second()
}

/// A Kubernetes timestamp from unix seconds.
pub fn time_from_seconds(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The core view of an `IPPool`.
pub fn pool_spec(pool: &IPPool) -> Result<PoolSpec, ConvertError> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let service_selector = pool
        .spec
        .service_selector
        .as_ref()
        .map(selector_of)
        .transpose()
        .map_err(|e| ConvertError {
            kind: "IPPool",
            name: name.clone(),
            message: format!("serviceSelector: {e}"),
        })?;
    Ok(PoolSpec {
        name,
        blocks: pool
            .spec
            .blocks
            .iter()
            .map(|b| BlockSpec {
                cidr: b.cidr.clone(),
                start: b.start.clone(),
                stop: b.stop.clone(),
            })
            .collect(),
        allow_first_last_ips: pool.spec.allow_first_last_ips,
        avoid_buggy_ips: pool.spec.avoid_buggy_ips,
        service_selector,
        namespaces: pool.spec.namespaces.clone(),
        auto_assign: pool.spec.auto_assign,
        priority: pool.spec.priority,
        disabled: pool.spec.disabled,
        created: pool.metadata.creation_timestamp.as_ref().map(seconds),
    })
}

/// Pools an L2Announcement covers (empty = all).
pub fn l2_pool_names(l2: &L2Announcement) -> Vec<String> {
    l2.spec.ip_pools.clone()
}

/// The core view of a Service.
pub fn service_view(service: &Service) -> ServiceView {
    let meta = &service.metadata;
    let spec = service.spec.clone().unwrap_or_default();
    ServiceView {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        service_type: spec.type_,
        load_balancer_class: spec.load_balancer_class,
        load_balancer_ip: spec.load_balancer_ip,
        ip_families: spec.ip_families.unwrap_or_default(),
        ip_family_policy: spec.ip_family_policy,
        ports: spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.protocol, p.port))
            .collect(),
        external_traffic_policy: spec.external_traffic_policy,
        selector: spec.selector.unwrap_or_default(),
    }
}

/// The ledger entry an `IPAllocation` records.
pub fn allocation_entry(allocation: &IPAllocation) -> Result<LedgerEntry, ConvertError> {
    let name = allocation.metadata.name.clone().unwrap_or_default();
    let fail = |message: String| ConvertError {
        kind: "IPAllocation",
        name: name.clone(),
        message,
    };
    let ip: IpAddr = allocation.spec.ip.parse().map_err(|_| {
        fail(format!(
            "spec.ip {:?} is not an IP address",
            allocation.spec.ip
        ))
    })?;
    if allocation_ip(&name) != Some(ip) {
        return Err(fail(format!(
            "name does not match spec.ip {ip} (expected {})",
            allocation_name(&ip)
        )));
    }
    let status = allocation.status.as_ref();
    let released_at = match status.and_then(|s| s.phase.as_ref()) {
        Some(AllocationPhase::Released) => Some(
            status
                .and_then(|s| s.released_at.as_ref())
                .map(seconds)
                .or_else(|| allocation.metadata.creation_timestamp.as_ref().map(seconds))
                .unwrap_or(0),
        ),
        _ => None,
    };
    let members = allocation
        .spec
        .services
        .iter()
        .map(|s| Member {
            service: ServiceRef::new(&s.namespace, &s.name),
            ports: {
                let mut ports: Vec<PortKey> = s
                    .ports
                    .iter()
                    .map(|p| PortKey {
                        protocol: p.protocol.clone(),
                        port: p.port,
                    })
                    .collect();
                ports.sort();
                ports
            },
            cross_namespace: CrossNamespace::parse(
                s.sharing_cross_namespace.as_deref().unwrap_or(""),
            ),
            etp_local: s.external_traffic_policy.as_deref() == Some("Local"),
            selector: s.selector.clone(),
        })
        .collect();
    Ok(LedgerEntry {
        ip,
        pool: allocation.spec.pool.clone(),
        sharing_key: allocation.spec.sharing_key.clone(),
        members,
        released_at,
    })
}

/// The `IPAllocation` (spec and phase) recording a ledger entry.
pub fn allocation_object(entry: &LedgerEntry) -> IPAllocation {
    let services = entry
        .members
        .iter()
        .map(|m| AllocatedService {
            namespace: m.service.namespace.clone(),
            name: m.service.name.clone(),
            ports: m
                .ports
                .iter()
                .map(|p| AllocatedPort {
                    protocol: p.protocol.clone(),
                    port: p.port,
                })
                .collect(),
            sharing_cross_namespace: Some(m.cross_namespace.to_annotation())
                .filter(|s| !s.is_empty()),
            external_traffic_policy: m.etp_local.then(|| "Local".to_string()),
            selector: m.selector.clone(),
        })
        .collect();
    IPAllocation {
        metadata: ObjectMeta {
            name: Some(allocation_name(&entry.ip)),
            ..ObjectMeta::default()
        },
        spec: IPAllocationSpec {
            ip: entry.ip.to_string(),
            pool: entry.pool.clone(),
            sharing_key: entry.sharing_key.clone(),
            services,
        },
        status: Some(IPAllocationStatus {
            phase: Some(if entry.is_released() {
                AllocationPhase::Released
            } else {
                AllocationPhase::Bound
            }),
            released_at: entry.released_at.map(time_from_seconds),
            ..IPAllocationStatus::default()
        }),
    }
}

/// Converts a selector, recording a problem under `field` when it is invalid.
fn selector_field(
    field: &str,
    selector: &Option<LabelSelector>,
    problems: &mut Vec<String>,
) -> Option<selector::LabelSelector> {
    match selector.as_ref().map(selector_of).transpose() {
        Ok(selector) => selector,
        Err(err) => {
            problems.push(format!("{field}: {err}"));
            None
        }
    }
}

/// A BGPPeer as the speaker needs it; `Err` lists every problem with its field path.
pub fn bgp_peer(peer: &BGPPeer) -> Result<bgp::Peer, ConvertError> {
    let name = peer.metadata.name.clone().unwrap_or_default();
    let mut problems = Vec::new();
    let node_selector =
        selector_field("spec.nodeSelector", &peer.spec.node_selector, &mut problems);
    let spec = &peer.spec;
    let parsed = bgp::Peer::parse(bgp::PeerSpec {
        name: name.clone(),
        peer_address: spec.peer_address.clone(),
        peer_asn: spec.peer_asn,
        my_asn: spec.my_asn,
        peer_port: spec.peer_port,
        source_address: spec.source_address.clone(),
        hold_time: spec.hold_time.clone(),
        keepalive_time: spec.keepalive_time.clone(),
        ebgp_multi_hop: spec.ebgp_multi_hop,
        password_secret_ref: spec
            .password_secret_ref
            .as_ref()
            .map(|r| (r.namespace.clone(), r.name.clone(), r.key.clone())),
        node_selector,
        graceful_restart: spec.graceful_restart,
    });
    match parsed {
        Ok(parsed) if problems.is_empty() => Ok(parsed),
        Ok(_) => Err(problems_error("BGPPeer", name, problems)),
        Err(more) => {
            problems.extend(more);
            Err(problems_error("BGPPeer", name, problems))
        }
    }
}

/// A BGPAnnouncement as the speaker needs it; `Err` lists every problem with its field path.
pub fn bgp_announcement(announcement: &BGPAnnouncement) -> Result<bgp::Announcement, ConvertError> {
    let name = announcement.metadata.name.clone().unwrap_or_default();
    let spec = &announcement.spec;
    let mut problems = Vec::new();
    let service_selector = selector_field(
        "spec.serviceSelector",
        &spec.service_selector,
        &mut problems,
    );
    let node_selector = selector_field("spec.nodeSelector", &spec.node_selector, &mut problems);
    let parsed = bgp::Announcement::parse(bgp::AnnouncementSpec {
        name: name.clone(),
        ip_pools: spec.ip_pools.clone(),
        service_selector,
        node_selector,
        peers: spec.peers.clone(),
        communities: spec.communities.clone(),
        local_pref: spec.local_pref,
        aggregation_length: spec.aggregation_length,
        aggregation_length_v6: spec.aggregation_length_v6,
    });
    match parsed {
        Ok(parsed) if problems.is_empty() => Ok(parsed),
        Ok(_) => Err(problems_error("BGPAnnouncement", name, problems)),
        Err(more) => {
            problems.extend(more);
            Err(problems_error("BGPAnnouncement", name, problems))
        }
    }
}

fn problems_error(kind: &'static str, name: String, problems: Vec<String>) -> ConvertError {
    ConvertError {
        kind,
        name,
        message: problems.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::allocate::Member;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn allocation_round_trips_through_the_crd() {
        let entry = LedgerEntry {
            ip: "2001:db8::7".parse().unwrap(),
            pool: "lan".into(),
            sharing_key: Some("media".into()),
            members: vec![Member {
                service: ServiceRef::new("plex", "plex"),
                ports: vec![PortKey {
                    protocol: "TCP".into(),
                    port: 32400,
                }],
                cross_namespace: CrossNamespace::Some(vec!["dlna".into()]),
                etp_local: true,
                selector: labels(&[("app", "plex")]),
            }],
            released_at: Some(1_700_000_000),
        };
        let object = allocation_object(&entry);
        assert_eq!(object.metadata.name.as_deref(), Some("v6-2001-db8--7"));
        assert_eq!(allocation_entry(&object), Ok(entry));
    }

    #[test]
    fn a_name_that_does_not_match_the_ip_is_refused() {
        let mut object = allocation_object(&LedgerEntry {
            ip: "192.0.2.1".parse().unwrap(),
            pool: "p".into(),
            sharing_key: None,
            members: vec![],
            released_at: None,
        });
        object.metadata.name = Some("v4-192-0-2-2".into());
        let err = allocation_entry(&object).unwrap_err();
        assert_eq!(
            err.to_string(),
            "IPAllocation v4-192-0-2-2: name does not match spec.ip 192.0.2.1 (expected v4-192-0-2-1)"
        );
    }
}
