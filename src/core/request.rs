//! What a Service asks for: pins, pools, sharing, families and ports, from every annotation
//! dialect vipam reads (its own, Cilium's, kube-vip's, MetalLB's and `spec.loadBalancerIP`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::range::Family;

/// The load balancer class vipam implements.
pub const LB_CLASS: &str = "vipam.io/lb";

/// Pin annotation, one address per family, comma-separated.
pub const ANN_IPS: &str = "vipam.io/ips";
pub const ANN_POOL: &str = "vipam.io/pool";
pub const ANN_SHARING_KEY: &str = "vipam.io/sharing-key";
pub const ANN_SHARING_CROSS_NAMESPACE: &str = "vipam.io/sharing-cross-namespace";
/// Written by the webhook only.
pub const ANN_ASSIGNED_IPS: &str = "vipam.io/assigned-ips";
/// The pseudo-source for `spec.loadBalancerIP` in messages.
pub const SPEC_LOAD_BALANCER_IP: &str = "spec.loadBalancerIP";

/// Every source of pins, vipam's first.
pub const PIN_SOURCES: &[&str] = &[
    ANN_IPS,
    "lbipam.cilium.io/ips",
    "io.cilium/lb-ipam-ips",
    "kube-vip.io/loadbalancerIPs",
    "metallb.io/loadBalancerIPs",
    "metallb.universe.tf/loadBalancerIPs",
];
pub const POOL_SOURCES: &[&str] = &[
    ANN_POOL,
    "metallb.io/address-pool",
    "metallb.universe.tf/address-pool",
];
pub const SHARING_KEY_SOURCES: &[&str] = &[
    ANN_SHARING_KEY,
    "lbipam.cilium.io/sharing-key",
    "metallb.io/allow-shared-ip",
    "metallb.universe.tf/allow-shared-ip",
];
pub const CROSS_NAMESPACE_SOURCES: &[&str] = &[
    ANN_SHARING_CROSS_NAMESPACE,
    "lbipam.cilium.io/sharing-cross-namespace",
];

/// A Service as vipam's decisions see it; the edges fill it from the Kubernetes object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub service_type: Option<String>,
    pub load_balancer_class: Option<String>,
    pub load_balancer_ip: Option<String>,
    pub ip_families: Vec<String>,
    pub ip_family_policy: Option<String>,
    /// `(protocol, port)`; protocol defaults to TCP.
    pub ports: Vec<(Option<String>, i32)>,
    pub external_traffic_policy: Option<String>,
    pub selector: BTreeMap<String, String>,
}

/// Cluster-wide settings that shape requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPolicy {
    /// vipam handles LoadBalancer Services without `loadBalancerClass`.
    pub default_class: bool,
    /// The family of a single-stack Service that names none (the cluster's primary family).
    pub default_family: Family,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        RequestPolicy {
            default_class: true,
            default_family: Family::V4,
        }
    }
}

/// namespace/name of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl ServiceRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceRef {
        ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A (protocol, port) the Service exposes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub protocol: String,
    pub port: i32,
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// Namespaces a Service consents to share its IP with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CrossNamespace {
    /// Only its own namespace.
    #[default]
    None,
    Some(Vec<String>),
    Any,
}

impl CrossNamespace {
    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            CrossNamespace::None => false,
            CrossNamespace::Some(list) => list.iter().any(|n| n == namespace),
            CrossNamespace::Any => true,
        }
    }

    /// The annotation value (`ns1,ns2` or `*`), empty for none.
    pub fn to_annotation(&self) -> String {
        match self {
            CrossNamespace::None => String::new(),
            CrossNamespace::Some(list) => list.join(","),
            CrossNamespace::Any => "*".to_string(),
        }
    }

    pub fn parse(value: &str) -> CrossNamespace {
        let list: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if list.iter().any(|n| n == "*") {
            CrossNamespace::Any
        } else if list.is_empty() {
            CrossNamespace::None
        } else {
            CrossNamespace::Some(list)
        }
    }
}

/// A value and the annotation (or field) it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: &'static str,
}

/// What a Service asks of vipam.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub service: ServiceRef,
    pub labels: BTreeMap<String, String>,
    /// Pinned addresses, at most one per family, in the order written.
    pub pins: Option<Sourced<Vec<IpAddr>>>,
    /// Pools the Service restricts itself to.
    pub pools: Option<Sourced<Vec<String>>>,
    pub sharing_key: Option<Sourced<String>>,
    pub cross_namespace: CrossNamespace,
    /// Families to assign, in order of preference.
    pub families: Vec<Family>,
    pub policy: FamilyPolicy,
    pub ports: Vec<PortKey>,
    pub etp_local: bool,
    pub selector: BTreeMap<String, String>,
    /// The raw `vipam.io/assigned-ips` value, if the Service carries one.
    pub assigned_annotation: Option<String>,
}

/// Why a Service's request cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("annotation {annotation}: {token:?} is not an IP address")]
    MalformedIp { annotation: String, token: String },
    #[error("{first} ({first_value}) and {second} ({second_value}) disagree; keep one of them")]
    ConflictingSources {
        first: String,
        first_value: String,
        second: String,
        second_value: String,
    },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl crate::core::category::Category for RequestError {
    fn category(&self) -> &'static str {
        match self {
            RequestError::MalformedIp { .. } => "malformed_annotation",
            RequestError::ConflictingSources { .. } => "conflicting_annotations",
            RequestError::Invalid { .. } => "invalid_request",
        }
    }
}

impl RequestError {
    fn invalid(field: &str, message: impl Into<String>) -> RequestError {
        RequestError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Parses a comma-separated address list (`vipam.io/ips` format).
pub fn parse_ip_list(annotation: &str, value: &str) -> Result<Vec<IpAddr>, RequestError> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let ip: IpAddr = token.parse().map_err(|_| RequestError::MalformedIp {
            annotation: annotation.to_string(),
            token: token.to_string(),
        })?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// Formats addresses in the `vipam.io/ips` format.
pub fn format_ip_list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl ServiceView {
    pub fn service_ref(&self) -> ServiceRef {
        ServiceRef::new(&self.namespace, &self.name)
    }

    /// Whether vipam handles this Service (type LoadBalancer and our class).
    pub fn is_ours(&self, policy: &RequestPolicy) -> bool {
        self.service_type.as_deref() == Some("LoadBalancer")
            && match self.load_balancer_class.as_deref() {
                Some(class) => class == LB_CLASS,
                None => policy.default_class,
            }
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The one value the given sources agree on, or an error naming two that disagree.
    fn agreed<T: PartialEq + Clone>(
        &self,
        sources: &[&'static str],
        parse: impl Fn(&'static str, &str) -> Result<T, RequestError>,
    ) -> Result<Option<Sourced<T>>, RequestError> {
        let mut found: Option<(Sourced<T>, String)> = None;
        for source in sources {
            let Some(raw) = self.annotation(source) else {
                continue;
            };
            let value = parse(source, raw)?;
            match &found {
                None => found = Some((Sourced { value, source }, raw.to_string())),
                Some((first, first_raw)) if first.value != value => {
                    return Err(RequestError::ConflictingSources {
                        first: first.source.to_string(),
                        first_value: first_raw.clone(),
                        second: source.to_string(),
                        second_value: raw.to_string(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(found.map(|(s, _)| s))
    }

    /// What the Service asks for, or `None` when it is not ours.
    pub fn request(&self, policy: &RequestPolicy) -> Result<Option<Request>, RequestError> {
        if !self.is_ours(policy) {
            return Ok(None);
        }
        self.parse_request(policy).map(Some)
    }

    fn parse_request(&self, policy: &RequestPolicy) -> Result<Request, RequestError> {
        let pins = self.pins()?;
        let pools = self.agreed(POOL_SOURCES, |source, raw| {
            let names: Vec<String> = raw
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect();
            if names.is_empty() {
                return Err(RequestError::invalid(source, "names no pool"));
            }
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            Ok(sorted)
        })?;
        let sharing_key = self.agreed(SHARING_KEY_SOURCES, |_, raw| Ok(raw.to_string()))?;
        let cross_namespace = self
            .agreed(CROSS_NAMESPACE_SOURCES, |_, raw| {
                Ok(CrossNamespace::parse(raw))
            })?
            .map(|s| s.value)
            .unwrap_or_default();
        if cross_namespace != CrossNamespace::None && sharing_key.is_none() {
            return Err(RequestError::invalid(
                ANN_SHARING_CROSS_NAMESPACE,
                "is set without a sharing key (vipam.io/sharing-key)",
            ));
        }
        let (families, family_policy) = self.families(pins.as_ref(), policy)?;
        let ports = self.port_keys()?;
        let etp_local = match self.external_traffic_policy.as_deref() {
            None | Some("Cluster") => false,
            Some("Local") => true,
            Some(other) => {
                return Err(RequestError::invalid(
                    "spec.externalTrafficPolicy",
                    format!("{other:?} is not Cluster or Local"),
                ));
            }
        };
        Ok(Request {
            service: self.service_ref(),
            labels: self.labels.clone(),
            pins,
            pools,
            sharing_key,
            cross_namespace,
            families,
            policy: family_policy,
            ports,
            etp_local,
            selector: self.selector.clone(),
            assigned_annotation: self.annotations.get(ANN_ASSIGNED_IPS).cloned(),
        })
    }

    fn pins(&self) -> Result<Option<Sourced<Vec<IpAddr>>>, RequestError> {
        let normalize = |source: &'static str, raw: &str| -> Result<Vec<IpAddr>, RequestError> {
            let ips = parse_ip_list(source, raw)?;
            for family in [Family::V4, Family::V6] {
                let of_family: Vec<String> = ips
                    .iter()
                    .filter(|ip| Family::of(ip) == family)
                    .map(|ip| ip.to_string())
                    .collect();
                if of_family.len() > 1 {
                    return Err(RequestError::invalid(
                        source,
                        format!(
                            "pins {} {family} addresses ({}); pin at most one per family",
                            of_family.len(),
                            of_family.join(", ")
                        ),
                    ));
                }
            }
            Ok(ips)
        };
        let mut pins = self.agreed(PIN_SOURCES, normalize)?;
        if let Some(raw) = self
            .load_balancer_ip
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            let ip: IpAddr = raw.parse().map_err(|_| RequestError::MalformedIp {
                annotation: SPEC_LOAD_BALANCER_IP.to_string(),
                token: raw.to_string(),
            })?;
            match &pins {
                None => {
                    pins = Some(Sourced {
                        value: vec![ip],
                        source: SPEC_LOAD_BALANCER_IP,
                    })
                }
                // spec.loadBalancerIP holds one address; it agrees when the pins hold it.
                Some(existing) if !existing.value.contains(&ip) => {
                    return Err(RequestError::ConflictingSources {
                        first: existing.source.to_string(),
                        first_value: format_ip_list(&existing.value),
                        second: SPEC_LOAD_BALANCER_IP.to_string(),
                        second_value: raw.to_string(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(pins.filter(|p| !p.value.is_empty()))
    }

    fn families(
        &self,
        pins: Option<&Sourced<Vec<IpAddr>>>,
        policy: &RequestPolicy,
    ) -> Result<(Vec<Family>, FamilyPolicy), RequestError> {
        let family_policy = match self.ip_family_policy.as_deref() {
            None | Some("SingleStack") => FamilyPolicy::SingleStack,
            Some("PreferDualStack") => FamilyPolicy::PreferDualStack,
            Some("RequireDualStack") => FamilyPolicy::RequireDualStack,
            Some(other) => {
                return Err(RequestError::invalid(
                    "spec.ipFamilyPolicy",
                    format!("{other:?} is not SingleStack, PreferDualStack or RequireDualStack"),
                ));
            }
        };
        let mut listed: Vec<Family> = Vec::new();
        for name in &self.ip_families {
            let family = match name.as_str() {
                "IPv4" => Family::V4,
                "IPv6" => Family::V6,
                other => {
                    return Err(RequestError::invalid(
                        "spec.ipFamilies",
                        format!("{other:?} is not IPv4 or IPv6"),
                    ));
                }
            };
            if listed.contains(&family) {
                return Err(RequestError::invalid(
                    "spec.ipFamilies",
                    format!("lists {family} twice"),
                ));
            }
            listed.push(family);
        }
        let dual = family_policy != FamilyPolicy::SingleStack;
        if listed.len() > 1 && !dual {
            return Err(RequestError::invalid(
                "spec.ipFamilies",
                "lists two families but spec.ipFamilyPolicy is SingleStack (or unset)",
            ));
        }
        let mut families = listed.clone();
        if families.is_empty() {
            match pins {
                Some(p) => families.extend(p.value.iter().map(Family::of)),
                None => families.push(policy.default_family),
            }
        }
        if dual {
            for family in [Family::V4, Family::V6] {
                if !families.contains(&family) {
                    families.push(family);
                }
            }
        }
        if let Some(pins) = pins {
            for ip in &pins.value {
                let family = Family::of(ip);
                if !families.contains(&family) || (!dual && families[0] != family) {
                    return Err(RequestError::invalid(
                        pins.source,
                        format!(
                            "pins {ip} ({family}) but the Service is single-stack {}",
                            families[0]
                        ),
                    ));
                }
            }
            if family_policy == FamilyPolicy::RequireDualStack && pins.value.len() < 2 {
                return Err(RequestError::invalid(
                    pins.source,
                    "ipFamilyPolicy is RequireDualStack: pin one IPv4 and one IPv6 address, \
                     or pin none",
                ));
            }
            // Pins decide the families: a pinned Service gets exactly its pins.
            families.retain(|f| pins.value.iter().any(|ip| Family::of(ip) == *f));
        } else if !dual {
            families.truncate(1);
        }
        Ok((families, family_policy))
    }

    fn port_keys(&self) -> Result<Vec<PortKey>, RequestError> {
        let mut ports = Vec::new();
        for (protocol, port) in &self.ports {
            let protocol = protocol.clone().unwrap_or_else(|| "TCP".to_string());
            if !matches!(protocol.as_str(), "TCP" | "UDP" | "SCTP") {
                return Err(RequestError::invalid(
                    "spec.ports",
                    format!("protocol {protocol:?} is not TCP, UDP or SCTP"),
                ));
            }
            if !(1..=65535).contains(port) {
                return Err(RequestError::invalid(
                    "spec.ports",
                    format!("port {port} is not in 1-65535"),
                ));
            }
            let key = PortKey {
                protocol,
                port: *port,
            };
            if !ports.contains(&key) {
                ports.push(key);
            }
        }
        ports.sort();
        Ok(ports)
    }
}

impl Request {
    /// The pin of one family, if any.
    pub fn pin_for(&self, family: Family) -> Option<IpAddr> {
        self.pins
            .as_ref()
            .and_then(|p| p.value.iter().copied().find(|ip| Family::of(ip) == family))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::category::Category;

    fn svc(annotations: &[(&str, &str)]) -> ServiceView {
        ServiceView {
            namespace: "apps".into(),
            name: "web".into(),
            service_type: Some("LoadBalancer".into()),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ports: vec![(None, 443), (Some("UDP".into()), 443)],
            ..ServiceView::default()
        }
    }

    fn req(view: &ServiceView) -> Result<Request, RequestError> {
        view.request(&RequestPolicy::default())
            .map(|r| r.expect("ours"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn class_rules() {
        let policy = RequestPolicy::default();
        let mut v = svc(&[]);
        assert!(v.is_ours(&policy));
        v.load_balancer_class = Some(LB_CLASS.into());
        assert!(v.is_ours(&policy));
        v.load_balancer_class = Some("io.cilium/l2-announcer".into());
        assert!(!v.is_ours(&policy));
        assert_eq!(v.request(&policy), Ok(None));
        v.load_balancer_class = None;
        assert!(!v.is_ours(&RequestPolicy {
            default_class: false,
            ..policy
        }));
        v.service_type = Some("ClusterIP".into());
        assert!(!v.is_ours(&policy));
    }

    #[test]
    fn every_pin_dialect_is_read() {
        for source in PIN_SOURCES {
            let r = req(&svc(&[(source, "192.0.2.10")])).unwrap();
            let pins = r.pins.unwrap();
            assert_eq!(pins.value, vec![ip("192.0.2.10")]);
            assert_eq!(pins.source, *source);
        }
        let mut v = svc(&[]);
        v.load_balancer_ip = Some("192.0.2.11".into());
        let pins = req(&v).unwrap().pins.unwrap();
        assert_eq!(
            (pins.value, pins.source),
            (vec![ip("192.0.2.11")], SPEC_LOAD_BALANCER_IP)
        );
    }

    #[test]
    fn agreeing_sources_are_fine_and_disagreeing_ones_are_named() {
        let r = req(&svc(&[
            (ANN_IPS, "192.0.2.10"),
            ("metallb.io/loadBalancerIPs", " 192.0.2.10 "),
        ]))
        .unwrap();
        assert_eq!(r.pins.unwrap().source, ANN_IPS);
        let err = req(&svc(&[
            (ANN_IPS, "192.0.2.10"),
            ("metallb.io/loadBalancerIPs", "192.0.2.11"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "vipam.io/ips (192.0.2.10) and metallb.io/loadBalancerIPs (192.0.2.11) disagree; keep one of them"
        );
        assert_eq!(err.category(), "conflicting_annotations");
        let mut v = svc(&[("lbipam.cilium.io/ips", "192.0.2.10")]);
        v.load_balancer_ip = Some("192.0.2.12".into());
        let err = req(&v).unwrap_err();
        assert!(
            err.to_string()
                .contains("lbipam.cilium.io/ips (192.0.2.10) and spec.loadBalancerIP (192.0.2.12)"),
            "{err}"
        );
        let err = req(&svc(&[
            (ANN_POOL, "a"),
            ("metallb.universe.tf/address-pool", "b"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("vipam.io/pool (a) and metallb.universe.tf/address-pool (b)"),
            "{err}"
        );
        let err = req(&svc(&[
            (ANN_SHARING_KEY, "a"),
            ("metallb.io/allow-shared-ip", "b"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("vipam.io/sharing-key (a) and metallb.io/allow-shared-ip (b)"),
            "{err}"
        );
    }

    #[test]
    fn malformed_ips_name_the_annotation_and_token() {
        let err = req(&svc(&[(ANN_IPS, "192.0.2.10, 192.0.2.300")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation vipam.io/ips: \"192.0.2.300\" is not an IP address"
        );
        assert_eq!(err.category(), "malformed_annotation");
        let mut v = svc(&[]);
        v.load_balancer_ip = Some("not-an-ip".into());
        assert!(
            req(&v)
                .unwrap_err()
                .to_string()
                .contains("spec.loadBalancerIP: \"not-an-ip\"")
        );
        let err = req(&svc(&[(ANN_IPS, "192.0.2.1,192.0.2.2")])).unwrap_err();
        assert!(
            err.to_string().contains("pin at most one per family"),
            "{err}"
        );
    }

    /// (spec.ipFamilies, spec.ipFamilyPolicy, pins) -> families, or an error containing the text.
    type FamilyCase<'a> = (
        Vec<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Result<Vec<Family>, &'a str>,
    );

    #[test]
    fn families_follow_spec_and_pins() {
        let cases: Vec<FamilyCase<'_>> = vec![
            (vec![], None, None, Ok(vec![Family::V4])),
            (vec!["IPv6"], None, None, Ok(vec![Family::V6])),
            (
                vec![],
                Some("PreferDualStack"),
                None,
                Ok(vec![Family::V4, Family::V6]),
            ),
            (
                vec!["IPv6"],
                Some("RequireDualStack"),
                None,
                Ok(vec![Family::V6, Family::V4]),
            ),
            (vec![], None, Some("2001:db8::5"), Ok(vec![Family::V6])),
            (
                vec!["IPv4"],
                None,
                Some("2001:db8::5"),
                Err("single-stack IPv4"),
            ),
            (
                vec![],
                Some("RequireDualStack"),
                Some("192.0.2.5"),
                Err("RequireDualStack"),
            ),
            (
                vec![],
                Some("RequireDualStack"),
                Some("192.0.2.5,2001:db8::5"),
                Ok(vec![Family::V4, Family::V6]),
            ),
            (
                vec![],
                Some("PreferDualStack"),
                Some("2001:db8::5"),
                Ok(vec![Family::V6]),
            ),
            (
                vec![],
                None,
                Some("192.0.2.5,2001:db8::5"),
                Err("single-stack"),
            ),
            (vec!["IPv4", "IPv6"], None, None, Err("lists two families")),
            (
                vec!["IPv4", "IPv4"],
                Some("PreferDualStack"),
                None,
                Err("twice"),
            ),
            (vec!["IPv5"], None, None, Err("not IPv4 or IPv6")),
            (vec![], Some("Sometimes"), None, Err("is not SingleStack")),
        ];
        for (families, policy, pins, expected) in cases {
            let mut v = svc(&pins.map(|p| vec![(ANN_IPS, p)]).unwrap_or_default());
            v.ip_families = families.iter().map(|s| s.to_string()).collect();
            v.ip_family_policy = policy.map(str::to_string);
            match (req(&v), expected) {
                (Ok(r), Ok(f)) => assert_eq!(r.families, f, "{families:?} {policy:?} {pins:?}"),
                (Err(e), Err(needle)) => {
                    assert!(e.to_string().contains(needle), "{e} lacks {needle}")
                }
                (got, want) => {
                    panic!("{families:?} {policy:?} {pins:?}: got {got:?}, want {want:?}")
                }
            }
        }
    }

    #[test]
    fn sharing_ports_and_traffic_policy() {
        let mut v = svc(&[
            ("lbipam.cilium.io/sharing-key", "media"),
            ("lbipam.cilium.io/sharing-cross-namespace", "plex, dlna"),
        ]);
        v.external_traffic_policy = Some("Local".into());
        v.selector = [("app".to_string(), "web".to_string())].into();
        let r = req(&v).unwrap();
        assert_eq!(r.sharing_key.unwrap().value, "media");
        assert_eq!(
            r.cross_namespace,
            CrossNamespace::Some(vec!["plex".into(), "dlna".into()])
        );
        assert!(r.etp_local);
        assert_eq!(
            r.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            vec!["TCP/443", "UDP/443"]
        );
        assert!(CrossNamespace::parse(" * ").allows("anything"));
        let err = req(&svc(&[(ANN_SHARING_CROSS_NAMESPACE, "*")])).unwrap_err();
        assert!(err.to_string().contains("without a sharing key"), "{err}");
        let mut v = svc(&[]);
        v.ports = vec![(Some("HTTP".into()), 80)];
        assert!(
            req(&v)
                .unwrap_err()
                .to_string()
                .contains("protocol \"HTTP\"")
        );
    }
}
