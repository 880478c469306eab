//! The agent's metrics (`/metrics` on its admin port).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::announcer::NetCounters;
use super::speaker::SpeakerMetrics;
use crate::admin::{MetricsText, encode_registry};

/// Labels of `vipam_agent_ownership_changes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabel {
    /// `gained` or `lost`.
    pub change: String,
}

/// Labels of counters split by outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok`, or the short category of the failure.
    pub result: String,
}

pub struct AgentMetrics {
    registry: Registry,
    pub owned_addresses: Gauge,
    pub ownership_changes: Family<ChangeLabel, Counter>,
    pub lease_renew_seconds: Histogram,
    pub lease_renewals: Family<OutcomeLabel, Counter>,
    pub status_writes: Family<OutcomeLabel, Counter>,
    /// 1 while ownership is frozen (own lease not renewed, or the lease watch is down).
    pub frozen: Gauge,
    pub net: NetCounters,
    /// The BGP sessions (`vipam_agent_bgp_*`).
    pub speaker: SpeakerMetrics,
}

impl AgentMetrics {
    pub fn new(net: NetCounters) -> AgentMetrics {
        let mut registry = Registry::with_prefix("vipam_agent");
        let owned_addresses = Gauge::default();
        registry.register(
            "owned_addresses",
            "Addresses this node announces now",
            owned_addresses.clone(),
        );
        let ownership_changes = Family::<ChangeLabel, Counter>::default();
        registry.register(
            "ownership_changes",
            "Addresses this node started (gained) or stopped (lost) announcing",
            ownership_changes.clone(),
        );
        let lease_renew_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "lease_renew_duration_seconds",
            "Time to renew this node's liveness Lease",
            lease_renew_seconds.clone(),
        );
        let lease_renewals = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "lease_renewals",
            "Renewals of this node's liveness Lease, by result",
            lease_renewals.clone(),
        );
        let status_writes = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "status_writes",
            "Writes of IPAllocation status.announcer, by result",
            status_writes.clone(),
        );
        let frozen = Gauge::default();
        registry.register(
            "ownership_frozen",
            "1 while ownership is frozen: this node's lease is not being renewed or the lease \
             watch is down, so the node keeps what it announces",
            frozen.clone(),
        );
        let net_counters = [
            (
                "arp_replies",
                "ARP replies sent for addresses announced in arp mode",
                &net.arp_replies,
            ),
            (
                "ndp_replies",
                "Neighbour advertisements sent in answer to solicitations (arp mode)",
                &net.ndp_replies,
            ),
            (
                "gratuitous",
                "Gratuitous ARPs and unsolicited neighbour advertisements sent",
                &net.gratuitous,
            ),
            (
                "claims_seen",
                "Announcements of one of this node's addresses by another MAC",
                &net.claims_seen,
            ),
            (
                "address_conflicts",
                "Addresses found in use by another host on the LAN (probe answered, or announced by a MAC that is no agent's)",
                &net.conflicts,
            ),
            (
                "yielded",
                "Addresses dropped because another node claimed them while this node's lease had lapsed",
                &net.yielded,
            ),
            (
                "repairs",
                "Enforcement repairs: addresses of ours re-added or stale ones removed",
                &net.repairs,
            ),
        ];
        for (name, help, counter) in net_counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "net_errors",
            "Data-plane errors by category (netlink, socket, state, send, receive)",
            net.errors.clone(),
        );
        let speaker = SpeakerMetrics::default();
        speaker.register(&mut registry);
        AgentMetrics {
            registry,
            owned_addresses,
            ownership_changes,
            lease_renew_seconds,
            lease_renewals,
            status_writes,
            frozen,
            net,
            speaker,
        }
    }

    pub fn outcome(family: &Family<OutcomeLabel, Counter>, result: &str) {
        family
            .get_or_create(&OutcomeLabel {
                result: result.to_string(),
            })
            .inc();
    }
}

impl MetricsText for AgentMetrics {
    fn encode(&self) -> String {
        encode_registry(&self.registry)
    }
}
