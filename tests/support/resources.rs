//! The resource types the fake serves. Everything else is generic over this table.

/// One served resource (one group/version/plural).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    /// Has a `/status` subresource: status is written only there.
    pub status_subresource: bool,
    /// A custom resource: strategic merge patch is refused (415) as the real server does,
    /// and server-side apply treats lists as atomic (CRDs without list-type markers).
    pub custom: bool,
}

impl ResourceType {
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            status_subresource: false,
            custom: false,
        }
    }

    pub fn with_status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    pub fn custom(mut self) -> Self {
        self.custom = true;
        self
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `services` or `leases.coordination.k8s.io`, as the server names resources in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether `name` (`plural` or `plural.group`) designates this type.
    pub fn is_named(&self, name: &str) -> bool {
        name == self.plural || name == self.qualified()
    }
}

/// The vipam CRDs' group and version.
pub const VIPAM_GROUP: &str = "vipam.io";
pub const VIPAM_VERSION: &str = "v1alpha1";

/// The resources served from the start.
pub fn builtin() -> Vec<ResourceType> {
    let rt = ResourceType::new;
    vec![
        rt("", "v1", "namespaces", "Namespace", false).with_status(),
        rt("", "v1", "nodes", "Node", false).with_status(),
        rt("", "v1", "services", "Service", true).with_status(),
        rt("", "v1", "secrets", "Secret", true),
        rt("", "v1", "configmaps", "ConfigMap", true),
        rt("", "v1", "events", "Event", true),
        rt(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
        ),
        rt("events.k8s.io", "v1", "events", "Event", true),
        rt("coordination.k8s.io", "v1", "leases", "Lease", true),
        rt(
            "admissionregistration.k8s.io",
            "v1",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            false,
        ),
        rt(
            "admissionregistration.k8s.io",
            "v1",
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            false,
        ),
        // Stored only: creating a CRD does not make the fake serve a new type.
        rt(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        )
        .with_status(),
        rt(VIPAM_GROUP, VIPAM_VERSION, "ippools", "IPPool", false)
            .with_status()
            .custom(),
        rt(
            VIPAM_GROUP,
            VIPAM_VERSION,
            "ipallocations",
            "IPAllocation",
            false,
        )
        .with_status()
        .custom(),
        rt(
            VIPAM_GROUP,
            VIPAM_VERSION,
            "l2announcements",
            "L2Announcement",
            false,
        )
        .with_status()
        .custom(),
        rt(VIPAM_GROUP, VIPAM_VERSION, "bgppeers", "BGPPeer", false)
            .with_status()
            .custom(),
        rt(
            VIPAM_GROUP,
            VIPAM_VERSION,
            "bgpannouncements",
            "BGPAnnouncement",
            false,
        )
        .with_status()
        .custom(),
    ]
}
