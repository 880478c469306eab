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
//!
//! With [`ManifestBgp`] the agent announces the VIP by BGP (`--bgp ...`). The MD5 password
//! comes from a file on the host (hostPath, read-only, same path in the container; by
//! convention under /etc/kubernetes, next to the kubeconfig): a static pod cannot mount a
//! Secret, and the DaemonSet uses the same file so both read the password the same way and
//! start without the API. The arguments are checked by parsing them as the agent does.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use clap::Parser;

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

/// The BGP flags of the agents (see `vipam agent --help`, `--bgp-*`).
#[derive(Debug, Clone, Default)]
pub struct ManifestBgp {
    pub peers: Vec<String>,
    pub peer_asn: u32,
    pub my_asn: u32,
    pub router_id: Option<Ipv4Addr>,
    pub hold_time: Option<String>,
    /// The MD5 password file on every control-plane node (mounted read-only, same path).
    pub password_file: Option<String>,
    pub multihop_ttl: Option<u8>,
    pub source_address: Option<String>,
    pub communities: Vec<String>,
}

impl ManifestBgp {
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--bgp".to_string()];
        args.extend(self.peers.iter().map(|p| format!("--bgp-peer={p}")));
        args.push(format!("--bgp-peer-asn={}", self.peer_asn));
        args.push(format!("--bgp-my-asn={}", self.my_asn));
        if let Some(id) = self.router_id {
            args.push(format!("--bgp-router-id={id}"));
        }
        if let Some(hold) = &self.hold_time {
            args.push(format!("--bgp-hold-time={hold}"));
        }
        if let Some(path) = &self.password_file {
            args.push(format!("--bgp-password-file={path}"));
        }
        if let Some(ttl) = self.multihop_ttl {
            args.push(format!("--bgp-multihop-ttl={ttl}"));
        }
        if let Some(source) = &self.source_address {
            args.push(format!("--bgp-source-address={source}"));
        }
        args.extend(
            self.communities
                .iter()
                .map(|c| format!("--bgp-communities={c}")),
        );
        args
    }
}

/// What the manifests say.
#[derive(Debug, Clone)]
pub struct ManifestOptions {
    pub vip: IpAddr,
    /// Where the VIP goes (L2); with BGP only the source of the default router ID.
    pub interface: Option<String>,
    pub image: String,
    /// The API servers' port.
    pub port: u16,
    /// Namespace of the Lease and of the DaemonSet's objects.
    pub namespace: String,
    /// Static pod: the kubeconfig file on the host, mounted at the same path.
    pub kubeconfig: String,
    pub lease_duration: Duration,
    pub renew_interval: Duration,
    /// Announce the VIP by BGP instead of on the LAN.
    pub bgp: Option<ManifestBgp>,
}

/// Why a manifest could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("serializing the manifest: {0}")]
    Serialize(#[from] serde_saphyr::SerializeError),
    /// The agent would refuse these arguments: every reason, each naming its flag.
    #[error("the agent would refuse these flags:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// `vipam agent`'s flags, parsed as the binary parses them.
#[derive(Parser)]
#[command(name = "agent")]
struct AgentCli {
    #[command(flatten)]
    agent: crate::agent::AgentArgs,
}

/// Checks the options by parsing the agent's arguments as the agent does (clap, then the
/// --bgp checks shared with BGPPeer).
pub fn validate(options: &ManifestOptions) -> Result<(), ManifestError> {
    let mut problems = Vec::new();
    if options.bgp.is_none() && options.interface.as_deref().is_none_or(str::is_empty) {
        problems.push("--interface: required without --bgp (the VIP goes on it)".to_string());
    }
    if let Some(path) = options.bgp.as_ref().and_then(|b| b.password_file.as_ref())
        && !path.starts_with('/')
    {
        problems.push(format!(
            "--bgp-password-file: {path:?} must be an absolute path on the node (a hostPath)"
        ));
    }
    let args = agent_args(options, &[]);
    match AgentCli::try_parse_from(std::iter::once("agent".to_string()).chain(args)) {
        Err(err) => problems.push(err.to_string().trim().to_string()),
        Ok(cli) => {
            let cp = &cli.agent.control_plane;
            if let Err(more) = crate::agent::control_plane::bgp::parse_flags(cp, options.vip) {
                problems.extend(more);
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ManifestError::Invalid(problems))
    }
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

/// The agent's arguments after `agent`.
fn agent_args(options: &ManifestOptions, extra_args: &[String]) -> Vec<String> {
    let mut args = vec![
        "--control-plane".to_string(),
        format!("--vip={}", options.vip),
    ];
    if let Some(interface) = &options.interface {
        args.push(format!("--interface={interface}"));
    }
    args.extend([
        format!("--port={}", options.port),
        format!("--control-plane-namespace={}", options.namespace),
        format!("--lease-duration={}", duration_arg(options.lease_duration)),
        format!("--renew-interval={}", duration_arg(options.renew_interval)),
        format!("--admin-addr=0.0.0.0:{ADMIN_PORT}"),
        format!("--state-dir={STATE_DIR}"),
    ]);
    if let Some(bgp) = &options.bgp {
        args.extend(bgp.args());
    }
    args.extend(extra_args.iter().cloned());
    args
}

/// The password file's volume and mount, with --bgp-password-file.
fn password_volume(options: &ManifestOptions) -> Option<(Volume, VolumeMount)> {
    let path = options.bgp.as_ref()?.password_file.as_ref()?;
    Some((
        host_path("bgp-password", path, "File"),
        mount("bgp-password", path, true),
    ))
}

fn container(
    options: &ManifestOptions,
    extra_args: &[String],
    mut mounts: Vec<VolumeMount>,
) -> Container {
    let mut args = vec!["agent".to_string()];
    args.extend(agent_args(options, extra_args));
    mounts.extend(password_volume(options).map(|(_, m)| m));
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
            volumes: Some(
                [
                    host_path("kubeconfig", &kubeconfig, "File"),
                    host_path("state", STATE_DIR, "DirectoryOrCreate"),
                ]
                .into_iter()
                .chain(password_volume(options).map(|(v, _)| v))
                .collect(),
            ),
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
                    volumes: Some(
                        std::iter::once(host_path("state", STATE_DIR, "DirectoryOrCreate"))
                            .chain(password_volume(options).map(|(v, _)| v))
                            .collect(),
                    ),
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
    validate(options)?;
    let mut out = String::new();
    document(&mut out, &static_pod(options))?;
    Ok(out)
}

/// The DaemonSet and its RBAC as a multi-document YAML stream.
pub fn daemonset_yaml(options: &ManifestOptions) -> Result<String, ManifestError> {
    validate(options)?;
    let (account, role, binding, daemonset) = daemonset(options);
    let mut out = String::new();
    document(&mut out, &account)?;
    document(&mut out, &role)?;
    document(&mut out, &binding)?;
    document(&mut out, &daemonset)?;
    Ok(out)
}
