//! `vipam manifest`: ready-to-commit manifests for the control-plane VIP, generated from typed
//! Kubernetes objects (no creationTimestamp, no status).
//!
//! - [`static_pod`]: a Pod for `/etc/kubernetes/manifests/` on every control-plane node. Runs
//!   before the cluster exists: talks to the local API server with the kubeconfig file mounted
//!   from the host (`/etc/kubernetes/admin.conf`; on the first node of a kubeadm ≥ 1.29
//!   cluster, `/etc/kubernetes/super-admin.conf` until `kubeadm init` is done, as kube-vip
//!   documents).
//! - [`daemonset`]: ServiceAccount, Role and RoleBinding for the Lease, and a DaemonSet on the
//!   control-plane nodes (in-cluster configuration).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    HostPathVolumeSource, ObjectFieldSelector, Pod, PodSpec, PodTemplateSpec, Probe,
    SecurityContext, ServiceAccount, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::agent::control_plane::LEASE_NAME;

/// Default image of the generated manifests.
pub const DEFAULT_IMAGE: &str = "ghcr.io/vipam/vipam:0.1.0";
/// Admin port of the control-plane VIP's process (the Service agent's 9478 + 1: both may run
/// on one node with hostNetwork).
pub const ADMIN_PORT: u16 = 9479;
/// Name of every generated object.
pub const NAME: &str = "vipam-control-plane";
/// Where the control-plane VIP process records the addresses it added.
pub const STATE_DIR: &str = "/run/vipam-control-plane";

/// What the manifests say.
#[derive(Debug, Clone)]
pub struct ManifestOptions {
    pub vip: IpAddr,
    pub interface: String,
    pub image: String,
    /// The API servers' port.
    pub port: u16,
    /// Namespace of the Lease and of the DaemonSet's objects.
    pub namespace: String,
    /// Static pod: the kubeconfig file on the host, mounted at the same path.
    pub kubeconfig: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
}

/// Why a manifest could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("serializing the manifest: {0}")]
    Serialize(#[from] serde_saphyr::SerializeError),
}

fn duration_arg(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "vipam".to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "control-plane-vip".to_string(),
        ),
    ])
}

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

fn host_path(name: &str, path: &str, kind: &str) -> Volume {
    Volume {
        name: name.to_string(),
        host_path: Some(HostPathVolumeSource {
            path: path.to_string(),
            type_: Some(kind.to_string()),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

fn container(
    options: &ManifestOptions,
    extra_args: &[String],
    mounts: Vec<VolumeMount>,
) -> Container {
    let mut args = vec![
        "agent".to_string(),
        "--control-plane".to_string(),
        format!("--vip={}", options.vip),
        format!("--interface={}", options.interface),
        format!("--port={}", options.port),
        format!("--control-plane-namespace={}", options.namespace),
        format!("--lease-duration={}", duration_arg(options.lease_duration)),
        format!("--renew-interval={}", duration_arg(options.renew_interval)),
        format!("--admin-addr=0.0.0.0:{ADMIN_PORT}"),
        format!("--state-dir={STATE_DIR}"),
    ];
    args.extend(extra_args.iter().cloned());
    Container {
        name: "vipam".to_string(),
        image: Some(options.image.clone()),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: "NODE_NAME".to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.nodeName".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("admin".to_string()),
            container_port: i32::from(ADMIN_PORT),
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(probe("/livez")),
        readiness_probe: Some(probe("/readyz")),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_string(), "NET_RAW".to_string()]),
                drop: Some(vec!["ALL".to_string()]),
            }),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// The static pod (one document).
pub fn static_pod(options: &ManifestOptions) -> Pod {
    let kubeconfig = options.kubeconfig.clone();
    Pod {
        metadata: meta(NAME, &options.namespace),
        spec: Some(PodSpec {
            host_network: Some(true),
            priority_class_name: Some("system-node-critical".to_string()),
            termination_grace_period_seconds: Some(10),
            containers: vec![container(
                options,
                &[format!("--kubeconfig={kubeconfig}")],
                vec![
                    mount("kubeconfig", &kubeconfig, true),
                    mount("state", STATE_DIR, false),
                ],
            )],
            volumes: Some(vec![
                host_path("kubeconfig", &kubeconfig, "File"),
                host_path("state", STATE_DIR, "DirectoryOrCreate"),
            ]),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The DaemonSet and its RBAC, in apply order.
pub fn daemonset(options: &ManifestOptions) -> (ServiceAccount, Role, RoleBinding, DaemonSet) {
    let ns = &options.namespace;
    let account = ServiceAccount {
        metadata: meta(NAME, ns),
        ..ServiceAccount::default()
    };
    let role = Role {
        metadata: meta(NAME, ns),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".to_string()]),
                resources: Some(vec!["leases".to_string()]),
                verbs: vec![
                    "create".to_string(),
                    "list".to_string(),
                    "watch".to_string(),
                ],
                ..PolicyRule::default()
            },
            PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".to_string()]),
                resources: Some(vec!["leases".to_string()]),
                resource_names: Some(vec![LEASE_NAME.to_string()]),
                verbs: vec!["get".to_string(), "update".to_string()],
                ..PolicyRule::default()
            },
        ]),
    };
    let binding = RoleBinding {
        metadata: meta(NAME, ns),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "Role".to_string(),
            name: NAME.to_string(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: NAME.to_string(),
            namespace: Some(ns.clone()),
            ..Subject::default()
        }]),
    };
    let toleration = |key: &str| Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".to_string()),
        effect: Some("NoSchedule".to_string()),
        ..Toleration::default()
    };
    let daemonset = DaemonSet {
        metadata: meta(NAME, ns),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(NAME.to_string()),
                    host_network: Some(true),
                    dns_policy: Some("ClusterFirstWithHostNet".to_string()),
                    priority_class_name: Some("system-node-critical".to_string()),
                    termination_grace_period_seconds: Some(10),
                    node_selector: Some(BTreeMap::from([(
                        "node-role.kubernetes.io/control-plane".to_string(),
                        String::new(),
                    )])),
                    tolerations: Some(vec![
                        toleration("node-role.kubernetes.io/control-plane"),
                        toleration("node-role.kubernetes.io/master"),
                    ]),
                    containers: vec![container(
                        options,
                        &[],
                        vec![mount("state", STATE_DIR, false)],
                    )],
                    volumes: Some(vec![host_path("state", STATE_DIR, "DirectoryOrCreate")]),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        status: None,
    };
    (account, role, binding, daemonset)
}

fn document(out: &mut String, object: &impl Serialize) -> Result<(), ManifestError> {
    out.push_str("---\n");
    out.push_str(&serde_saphyr::to_string(object)?);
    Ok(())
}

/// The static pod as YAML.
pub fn static_pod_yaml(options: &ManifestOptions) -> Result<String, ManifestError> {
    let mut out = String::new();
    document(&mut out, &static_pod(options))?;
    Ok(out)
}

/// The DaemonSet and its RBAC as a multi-document YAML stream.
pub fn daemonset_yaml(options: &ManifestOptions) -> Result<String, ManifestError> {
    let (account, role, binding, daemonset) = daemonset(options);
    let mut out = String::new();
    document(&mut out, &account)?;
    document(&mut out, &role)?;
    document(&mut out, &binding)?;
    document(&mut out, &daemonset)?;
    Ok(out)
}
