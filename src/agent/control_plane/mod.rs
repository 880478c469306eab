//! `vipam agent --control-plane`: holds the Kubernetes API server's virtual IP.
//!
//! The control-plane nodes elect a leader on the Lease `vipam-control-plane` (namespace
//! `kube-system` by default); the leader adds the VIP to the chosen interface (address mode of
//! the [`Announcer`]: marked as ours, gratuitous ARP / unsolicited NA at once and repeatedly)
//! and removes it the moment it loses the Lease or stops. The decisions are in [`crate::core::election`];
//! this module reads the world (the Lease watch, the local API server's `/readyz`) and applies
//! them. See docs/agent.md, "Control-plane VIP".
//!
//! Runs as a static pod before the cluster exists (it talks to the *local* API server through
//! the kubeconfig file, never through the VIP) or as a DaemonSet (in-cluster configuration).
//! With `--announce-services` the Service announcer runs in the same process, sharing one
//! announcer ([`shares`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, GetParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};

use super::AgentArgs;
use super::announcer::{Announcer, AnnouncerConfig, NetCounters, Target};
use super::error::{AgentError, ControlPlaneError};
use super::metrics::AgentMetrics;
use super::net::NetError;
use super::run::{self, AnnouncerSource};
use super::shares::{AnnouncerShares, Share};
use super::signals;
use super::speaker::Speaker;
use crate::admin::{self, MetricsText, Readiness, encode_registry};
use crate::controller::parse_duration;
use crate::core::category::Category;
use crate::core::election::{self, Health, Hold, Inputs, LeaseAction, LeaseView, VipState};
use crate::core::ownership::{AnnounceMode, Liveness};
use crate::lease::Sighting;

pub mod bgp;

/// The Lease the control-plane nodes compete for.
pub const LEASE_NAME: &str = "vipam-control-plane";
/// Field manager of the control-plane Lease writes.
pub const FIELD_MANAGER: &str = "vipam-agent";
/// TLS name checked when talking to the local API server by address (`--api-server local`):
/// every kubeadm API server certificate carries it.
pub const LOCAL_TLS_SERVER_NAME: &str = "kubernetes";

/// Flags of the control-plane VIP (part of `vipam agent`; each also from the environment).
#[derive(clap::Args, Debug, Clone)]
pub struct ControlPlaneArgs {
    /// Hold the control-plane VIP (--vip on --interface), elected on the Lease
    /// `vipam-control-plane`. The Service announcer then runs only with --announce-services.
    #[arg(long, env = "VIPAM_CONTROL_PLANE")]
    pub control_plane: bool,
    /// The control-plane VIP (IPv4 or IPv6), e.g. the host of `controlPlaneEndpoint`.
    #[arg(long, env = "VIPAM_VIP")]
    pub vip: Option<IpAddr>,
    /// The interface the VIP is added to (e.g. `eno1`).
    #[arg(long, env = "VIPAM_INTERFACE")]
    pub interface: Option<String>,
    /// The API servers' port (for `--api-server local` and the default --health-url).
    #[arg(long, env = "VIPAM_API_PORT", default_value_t = 6443)]
    pub port: u16,
    /// Kubeconfig file to talk to the API with (static pod: `/etc/kubernetes/admin.conf`).
    /// Without it: in-cluster configuration, or $KUBECONFIG.
    #[arg(long, env = "VIPAM_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Which API server to talk to: `local` (https://127.0.0.1:<port>, certificate checked for
    /// the name `kubernetes`; never the VIP, which may not be up yet), `kubeconfig` (the
    /// server the configuration names), or a URL. Default: `local` with --kubeconfig,
    /// `kubeconfig` otherwise (in-cluster: the `kubernetes` Service).
    #[arg(long, env = "VIPAM_API_SERVER")]
    pub api_server: Option<String>,
    /// Namespace of the Lease `vipam-control-plane`.
    #[arg(
        long,
        env = "VIPAM_CONTROL_PLANE_NAMESPACE",
        default_value = "kube-system"
    )]
    pub control_plane_namespace: String,
    /// Health check of the local API server. Default: https://127.0.0.1:<port>/readyz. The
    /// certificate is not verified (a liveness check of the server on this node); the
    /// credentials of the kubeconfig are sent. `http://` URLs are accepted.
    #[arg(long, env = "VIPAM_HEALTH_URL")]
    pub health_url: Option<String>,
    /// How often the local API server is checked (also the timeout of one check).
    #[arg(long, env = "VIPAM_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// The leader gives the VIP and the Lease up after this many failed checks in a row.
    #[arg(long, env = "VIPAM_HEALTH_FAILURES", default_value_t = 3)]
    pub health_failures: u32,
    /// With --control-plane, also run the Service announcer in this process (needs vipam's
    /// CRDs, so off by default: a static pod runs before they exist).
    #[arg(long, env = "VIPAM_ANNOUNCE_SERVICES")]
    pub announce_services: bool,
    /// Announce the VIP by BGP to the --bgp-peer routers instead of on the LAN: the leader
    /// announces it as a /32 (/128) and puts it on `lo` (no ARP/NDP); the others announce
    /// nothing. --interface is then optional (it only gives the default router ID).
    #[arg(long, env = "VIPAM_BGP")]
    pub bgp: bool,
    /// A router to announce the VIP to: `ADDRESS`, `ADDRESS:PORT` or `[IPV6]:PORT` (port
    /// 179 by default). Repeatable, or comma-separated.
    #[arg(
        long = "bgp-peer",
        env = "VIPAM_BGP_PEERS",
        value_delimiter = ',',
        value_name = "ADDRESS[:PORT]"
    )]
    pub bgp_peers: Vec<String>,
    /// The routers' AS number.
    #[arg(long, env = "VIPAM_BGP_PEER_ASN", value_name = "ASN")]
    pub bgp_peer_asn: Option<u32>,
    /// This node's AS number (equal to --bgp-peer-asn: iBGP).
    #[arg(long, env = "VIPAM_BGP_MY_ASN", value_name = "ASN")]
    pub bgp_my_asn: Option<u32>,
    /// BGP router ID. Default: --bgp-source-address when IPv4, else the first IPv4 address of
    /// --interface (or of the interface holding the default route).
    #[arg(long, env = "VIPAM_BGP_ROUTER_ID", value_name = "IPV4")]
    pub bgp_router_id: Option<std::net::Ipv4Addr>,
    /// Hold time proposed to the routers (0, or 3s to 65535s): how long a router keeps the
    /// route of a node that died without closing its session.
    #[arg(long, env = "VIPAM_BGP_HOLD_TIME", default_value = "9s")]
    pub bgp_hold_time: String,
    /// File holding the TCP MD5 password of the sessions (one trailing newline is ignored).
    /// Never a flag value: the command line is visible to every user of the node.
    #[arg(long, env = "VIPAM_BGP_PASSWORD_FILE", value_name = "PATH")]
    pub bgp_password_file: Option<PathBuf>,
    /// IP TTL of the sessions' packets (eBGP multihop). Default: 1 for eBGP, 64 for iBGP.
    #[arg(long, env = "VIPAM_BGP_MULTIHOP_TTL", value_name = "TTL")]
    pub bgp_multihop_ttl: Option<u8>,
    /// Local address of the sessions (default: chosen by the kernel's routing).
    #[arg(long, env = "VIPAM_BGP_SOURCE_ADDRESS", value_name = "ADDRESS")]
    pub bgp_source_address: Option<String>,
    /// Communities of the VIP's route: `65000:100`, a well-known name (`no-export`), or
    /// `large:65000:1:2`. Repeatable, or comma-separated.
    #[arg(
        long,
        env = "VIPAM_BGP_COMMUNITIES",
        value_delimiter = ',',
        value_name = "COMMUNITY"
    )]
    pub bgp_communities: Vec<String>,
}

/// This node's name: --node-name, else the host name (lower case, as the kubelet registers
/// it by default).
pub fn node_name(given: &str) -> Result<String, ControlPlaneError> {
    if !given.is_empty() {
        return Ok(given.to_string());
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| ControlPlaneError::NodeName(format!("reading the host name: {e}")))?;
    let name = name.trim().to_lowercase();
    if name.is_empty() {
        return Err(ControlPlaneError::NodeName("the host name is empty".into()));
    }
    Ok(name)
}

/// The client configuration: the kubeconfig file (or in-cluster / $KUBECONFIG), pointed at
/// the API server --api-server names.
pub async fn client_config(args: &ControlPlaneArgs) -> Result<Config, ControlPlaneError> {
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).map_err(|source| ControlPlaneError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|source| ControlPlaneError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None => Config::infer().await.map_err(ControlPlaneError::Infer)?,
    };
    let default = if args.kubeconfig.is_some() {
        "local"
    } else {
        "kubeconfig"
    };
    let url_error = |value: &str, reason: String| ControlPlaneError::Url {
        flag: "--api-server",
        value: value.to_string(),
        reason,
    };
    match args.api_server.as_deref().unwrap_or(default) {
        "kubeconfig" => {}
        "local" => {
            let url = format!("https://127.0.0.1:{}", args.port);
            config.cluster_url = url.parse().map_err(|e| url_error(&url, format!("{e}")))?;
            config.tls_server_name = Some(LOCAL_TLS_SERVER_NAME.to_string());
        }
        url => {
            config.cluster_url = url.parse().map_err(|e| url_error(url, format!("{e}")))?;
        }
    }
    Ok(config)
}

/// Checks the local API server's health endpoint.
#[derive(Clone)]
pub struct HealthProbe {
    client: Client,
    path: String,
    url: String,
    timeout: Duration,
}

impl HealthProbe {
    /// A probe of `url` with the credentials of `base`, verifying the server's certificate as
    /// the main client does (the kubeconfig's CA; for a loopback URL the name `kubernetes`,
    /// which every API server certificate carries). An unverified server never sees the
    /// credentials: the TLS handshake fails first.
    pub fn new(
        base: &Config,
        url: &str,
        timeout: Duration,
    ) -> Result<HealthProbe, ControlPlaneError> {
        let error = |reason: String| ControlPlaneError::Url {
            flag: "--health-url",
            value: url.to_string(),
            reason,
        };
        let mut config = base.clone();
        config.cluster_url = url.parse().map_err(|e| error(format!("{e}")))?;
        let (scheme, authority) = match (
            config.cluster_url.scheme_str(),
            config.cluster_url.authority(),
        ) {
            (Some(s @ ("http" | "https")), Some(a)) => (s.to_string(), a.to_string()),
            _ => return Err(error("expected an http:// or https:// URL".into())),
        };
        let path = config
            .cluster_url
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        let origin = format!("{scheme}://{authority}");
        config.cluster_url = origin.parse().map_err(|e| error(format!("{e}")))?;
        let loopback = config.cluster_url.host().is_some_and(|host| {
            host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        config.tls_server_name = if loopback {
            Some(LOCAL_TLS_SERVER_NAME.to_string())
        } else {
            None
        };
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        let client = Client::try_from(config).map_err(ControlPlaneError::Client)?;
        Ok(HealthProbe {
            client,
            path,
            url: url.to_string(),
            timeout,
        })
    }

    /// One check: Ok when the server answers 2xx within the timeout.
    pub async fn check(&self) -> Result<(), String> {
        let mut request = kube::core::Request::new("")
            .get("health", &GetParams::default())
            .map_err(|e| e.to_string())?;
        *request.uri_mut() = self.path.parse().map_err(|e| format!("{e}"))?;
        match tokio::time::timeout(self.timeout, self.client.request_text(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// Runs the control-plane VIP (and, with --announce-services, the Service announcer) until
/// SIGTERM or SIGINT, then hands over.
pub async fn run(mut args: AgentArgs) -> Result<(), AgentError> {
    let cp = &args.control_plane;
    let Some(vip) = cp.vip else {
        return Err(ControlPlaneError::Missing("--vip").into());
    };
    // Usage errors before anything else is tried.
    let bgp = bgp::parse_flags(cp, vip).map_err(ControlPlaneError::Bgp)?;
    if bgp.is_none() && cp.interface.as_deref().is_none_or(str::is_empty) {
        return Err(ControlPlaneError::Missing("--interface").into());
    }
    args.node_name = node_name(&args.node_name)?;
    let config = client_config(cp).await?;
    let health_url = cp
        .health_url
        .clone()
        .unwrap_or_else(|| format!("https://127.0.0.1:{}/readyz", cp.port));
    let health = HealthProbe::new(&config, &health_url, cp.health_interval)?;
    let client = Client::try_from(config).map_err(ControlPlaneError::Client)?;
    run_with(args, client, health, signals::shutdown_signal()).await
}

/// Labels of counters split by result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

/// Metrics of the control-plane VIP (`vipam_control_plane_*` on the agent's /metrics).
struct CpMetrics {
    registry: Registry,
    leader: Gauge,
    api_server_healthy: Gauge,
    health_checks: Family<ResultLabel, Counter>,
    lease_writes: Family<ResultLabel, Counter>,
    vip_changes: Counter,
}

impl CpMetrics {
    fn new() -> CpMetrics {
        let mut registry = Registry::with_prefix("vipam_control_plane");
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this node announces the VIP",
            leader.clone(),
        );
        let api_server_healthy = Gauge::default();
        registry.register(
            "api_server_healthy",
            "1 while the last health check of the local API server passed",
            api_server_healthy.clone(),
        );
        let health_checks = Family::<ResultLabel, Counter>::default();
        registry.register(
            "health_checks",
            "Health checks of the local API server, by result",
            health_checks.clone(),
        );
        let lease_writes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "lease_writes",
            "Writes to the Lease vipam-control-plane, by result",
            lease_writes.clone(),
        );
        let vip_changes = Counter::default();
        registry.register(
            "vip_changes",
            "Times this node started or stopped announcing the VIP",
            vip_changes.clone(),
        );
        CpMetrics {
            registry,
            leader,
            api_server_healthy,
            health_checks,
            lease_writes,
            vip_changes,
        }
    }

    fn count(family: &Family<ResultLabel, Counter>, result: &str) {
        family
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }
}

/// The agent's and the control plane's metrics on one page.
struct AllMetrics {
    agent: Arc<AgentMetrics>,
    control_plane: Arc<CpMetrics>,
}

impl MetricsText for AllMetrics {
    fn encode(&self) -> String {
        let agent = self.agent.encode();
        let agent = agent.strip_suffix("# EOF\n").unwrap_or(&agent);
        format!("{agent}{}", encode_registry(&self.control_plane.registry))
    }
}

/// What the election loop knows of the Lease.
struct LeaseBook {
    view: LeaseView,
    last: Option<Lease>,
    liveness: Liveness,
}

/// This process's own hold.
#[derive(Default)]
struct Own {
    hold: Hold,
    /// The object of its last successful write (renewals are compare-and-swaps on it).
    mine: Option<Lease>,
}

struct Ctx {
    me: String,
    vip: IpAddr,
    interface: String,
    namespace: String,
    lease_duration: Duration,
    renew_interval: Duration,
    health_threshold: u32,
    epoch: Instant,
    book: Mutex<LeaseBook>,
    own: Mutex<Own>,
    health: Mutex<Health>,
    changed: Notify,
    metrics: Arc<CpMetrics>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn holder_of(lease: &Lease) -> Option<String> {
    Sighting::of(lease, Duration::ZERO).holder
}

/// Whether resourceVersion `a` is older than `b` (unknown, when the versions are not
/// comparable: treated as not older).
fn older(a: &str, b: &str) -> bool {
    crate::api::compare_resource_versions(a, b).is_some_and(|order| order.is_lt())
}

impl Ctx {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn inputs(&self) -> Inputs<'_> {
        let now = self.now();
        let (lease, lease_live) = {
            let book = lock(&self.book);
            (book.view.clone(), book.liveness.is_live(LEASE_NAME, now))
        };
        Inputs {
            me: &self.me,
            now,
            lease_duration: self.lease_duration,
            lease,
            lease_live,
            health: *lock(&self.health),
            health_threshold: self.health_threshold,
            hold: lock(&self.own).hold,
        }
    }

    /// A sighting of the Lease (watch event or a read after a conflict).
    fn observe(&self, lease: Lease) {
        let now = self.now();
        let seen = Sighting::of(&lease, self.lease_duration);
        {
            let mut own = lock(&self.own);
            let mine_version = own
                .mine
                .as_ref()
                .and_then(|m| m.metadata.resource_version.clone())
                .unwrap_or_default();
            if own.hold.holding
                && seen.holder.as_deref() != Some(self.me.as_str())
                && !older(&seen.version, &mine_version)
            {
                tracing::warn!(holder = ?seen.holder, "the control-plane Lease is held by another node now: dropping the VIP");
                own.hold.holding = false;
            }
        }
        let mut book = lock(&self.book);
        seen.record(&mut book.liveness, LEASE_NAME, now);
        book.view = LeaseView::Present {
            holder: seen.holder,
            version: seen.version,
        };
        book.last = Some(lease);
    }

    /// The Lease as `holder` writes it (`None` releases it), from `base` as last read.
    fn lease_object(&self, base: Option<&Lease>, holder: Option<&str>) -> Lease {
        let now = Timestamp::now();
        crate::lease::write(
            base,
            LEASE_NAME,
            &self.namespace,
            holder,
            self.lease_duration,
            now,
        )
    }
}

/// Runs the control-plane VIP on `client` until `shutdown` resolves (tests pass their own).
pub async fn run_with(
    args: AgentArgs,
    client: Client,
    health: HealthProbe,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let cp = args.control_plane.clone();
    let vip = cp.vip.ok_or(ControlPlaneError::Missing("--vip"))?;
    let bgp_flags = bgp::parse_flags(&cp, vip).map_err(ControlPlaneError::Bgp)?;
    let interface = match (&bgp_flags, cp.interface.clone()) {
        (Some(_), _) => bgp::VIP_INTERFACE.to_string(),
        (None, Some(interface)) if !interface.is_empty() => interface,
        (None, _) => return Err(ControlPlaneError::Missing("--interface").into()),
    };
    // BGP: the router ID and the password before any session starts (netlink and file
    // reads: off the runtime).
    let bgp_setup = match bgp_flags {
        None => None,
        Some(flags) => {
            let source = flags.peers.first().and_then(|p| p.source);
            let named = cp.interface.clone().filter(|i| !i.is_empty());
            let read = flags.clone();
            let (router_id, password) = tokio::task::spawn_blocking(move || {
                let router_id = match read.router_id {
                    Some(id) => id,
                    None => bgp::default_router_id(source, named.as_deref(), vip)?,
                };
                let password = read
                    .password_file
                    .as_deref()
                    .map(bgp::read_password)
                    .transpose()?;
                Ok::<_, String>((router_id, password))
            })
            .await
            .map_err(|e| ControlPlaneError::BgpSetup(e.to_string()))?
            .map_err(ControlPlaneError::BgpSetup)?;
            Some((flags, router_id, password))
        }
    };
    tracing::info!(node = %args.node_name, %vip, %interface, namespace = %cp.control_plane_namespace,
        services = cp.announce_services, health = %health.url, bgp = bgp_setup.is_some(),
        "vipam control-plane VIP starting");

    let net = NetCounters::default();
    let agent_metrics = Arc::new(AgentMetrics::new(net.clone()));
    let cp_metrics = Arc::new(CpMetrics::new());
    let names: &[&str] = if cp.announce_services {
        &["control-plane", "caches", "announcer"]
    } else {
        &["control-plane"]
    };
    let (readiness, flags) = Readiness::new(names);
    let all_metrics = Arc::new(AllMetrics {
        agent: agent_metrics.clone(),
        control_plane: cp_metrics.clone(),
    });
    admin::serve(args.admin_addr, all_metrics, readiness)
        .await
        .map_err(|source| AgentError::Admin {
            addr: args.admin_addr,
            source,
        })?;

    let announcer = Announcer::start(
        AnnouncerConfig {
            garp_interval: args.garp_interval,
            resync: args.resync,
            state_dir: args.state_dir.clone(),
            // Its own marker: a Service agent on the same node never removes the VIP.
            marker: crate::agent::net::address::Marker::CONTROL_PLANE,
        },
        net,
    )
    .await
    .map_err(AgentError::Announcer)?;
    let parts: &[&'static str] = if cp.announce_services {
        &["control-plane", "services"]
    } else {
        &["control-plane"]
    };
    let (shares, handles) = AnnouncerShares::new(announcer, parts);
    // Sessions run on every node (a new leader only sends an UPDATE); routes on the leader's.
    let bgp_part = bgp_setup.map(|(flags, router_id, password)| {
        tracing::info!(%router_id, peers = ?flags.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            md5 = password.is_some(), "announcing the control-plane VIP by BGP");
        let mut speaker = Speaker::new(agent_metrics.speaker.clone(), Arc::new(Notify::new()));
        speaker.set_peers(flags.setups(router_id, password));
        Arc::new(BgpPart {
            flags,
            speaker: tokio::sync::Mutex::new(speaker),
        })
    });

    let ctx = Arc::new(Ctx {
        me: args.node_name.clone(),
        vip,
        interface,
        namespace: cp.control_plane_namespace.clone(),
        lease_duration: args.lease_duration,
        renew_interval: args.renew_interval,
        health_threshold: cp.health_failures.max(1),
        epoch: Instant::now(),
        book: Mutex::new(LeaseBook {
            view: LeaseView::Unknown,
            last: None,
            liveness: Liveness::default(),
        }),
        own: Mutex::new(Own::default()),
        health: Mutex::new(Health::default()),
        changed: Notify::new(),
        metrics: cp_metrics,
    });
    let api: Api<Lease> = Api::namespaced(client.clone(), &ctx.namespace);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (vip_tx, vip_rx) = watch::channel(None::<VipState>);
    let health_task = tokio::spawn(check_health(
        ctx.clone(),
        health,
        cp.health_interval,
        stop_rx.clone(),
    ));
    let watch_task = tokio::spawn(watch_lease(api.clone(), ctx.clone()));
    let elect_task = tokio::spawn(elect(ctx.clone(), api, vip_tx, stop_rx.clone()));
    let apply_task = tokio::spawn(apply_vip(
        ctx.clone(),
        handles[0].clone(),
        bgp_part.clone(),
        vip_rx,
        flags[0].clone(),
        stop_rx.clone(),
    ));
    let services_task = cp.announce_services.then(|| {
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        tokio::spawn(run::run_services(
            args.clone(),
            client.clone(),
            stopped,
            agent_metrics.clone(),
            flags[1..].to_vec(),
            AnnouncerSource::Shared(handles[1].clone()),
        ))
    });

    shutdown.await;
    let handover = Instant::now();
    let _ = stop_tx.send(true);
    // The election loop releases the Lease (if held) before it returns; the Service part its
    // own Lease. Both keep their addresses until the new holders have announced them.
    let _ = elect_task.await;
    if let Some(task) = services_task {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "the Service announcer stopped with an error")
            }
            Err(err) => tracing::warn!(error = %err, "the Service announcer task failed"),
        }
    }
    let announced = apply_task.await.unwrap_or(false);
    if let Some(part) = &bgp_part {
        if announced {
            // The Lease is released: the route stays until another node holds it and had
            // time to announce it, so the router switches paths without a gap.
            let next = wait_other_holder(&ctx, args.handover_timeout).await;
            if next.is_some() {
                tokio::time::sleep(bgp::HANDOVER_GRACE).await;
            }
            tracing::info!(next = ?next, elapsed_ms = handover.elapsed().as_millis() as u64,
                "withdrawing the control-plane VIP's route");
        }
        // Withdraw, wait for the routers' TCP acknowledgement, Cease.
        part.speaker.lock().await.shutdown(bgp::STOP_TIMEOUT).await;
    }
    health_task.abort();
    watch_task.abort();
    shares.hand_over(args.handover_timeout, handover).await;
    Ok(())
}

/// The BGP side of the VIP (--bgp).
struct BgpPart {
    flags: bgp::VipBgp,
    speaker: tokio::sync::Mutex<Speaker>,
}

impl BgpPart {
    /// Announces (or withdraws) the VIP to every router.
    async fn announce(&self, on: bool) {
        self.speaker.lock().await.set_routes(&self.flags.routes(on));
    }
}

/// Waits until the Lease names another holder (as this process's watch sees it), at most
/// `timeout`; returns it.
async fn wait_other_holder(ctx: &Ctx, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let LeaseView::Present {
            holder: Some(holder),
            ..
        } = &lock(&ctx.book).view
            && *holder != ctx.me
        {
            return Some(holder.clone());
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks the local API server every `interval`.
async fn check_health(
    ctx: Arc<Ctx>,
    probe: HealthProbe,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let result = probe.check().await;
        let threshold = ctx.health_threshold;
        let (before, after) = {
            let mut health = lock(&ctx.health);
            let before = *health;
            health.checked = true;
            health.last_ok = result.is_ok();
            health.consecutive_failures = if result.is_ok() {
                0
            } else {
                health.consecutive_failures.saturating_add(1)
            };
            (before, *health)
        };
        CpMetrics::count(
            &ctx.metrics.health_checks,
            if result.is_ok() { "ok" } else { "failed" },
        );
        ctx.metrics.api_server_healthy.set(i64::from(after.last_ok));
        match &result {
            Err(err) if before.last_ok || !before.checked => {
                tracing::warn!(url = %probe.url, error = %err, "the local API server is not healthy")
            }
            Ok(()) if !before.last_ok => {
                tracing::info!(url = %probe.url, "the local API server is healthy")
            }
            _ => {}
        }
        if after.gave_up(threshold) && !before.gave_up(threshold) {
            tracing::warn!(
                failures = after.consecutive_failures,
                "the local API server failed {threshold} checks in a row: this node gives the VIP up"
            );
        }
        if before.candidate() != after.candidate()
            || before.gave_up(threshold) != after.gave_up(threshold)
        {
            ctx.changed.notify_one();
        }
    }
}

/// Watches the Lease: every new resourceVersion is a sign of life, judged by this process's
/// clock. While the watch is down the Lease is Unknown (no candidate acts); when it is back,
/// the Lease counts as seen anew (its renewals may have been missed meanwhile).
async fn watch_lease(api: Api<Lease>, ctx: Arc<Ctx>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={LEASE_NAME}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut listed = false;
    let mut after_error = false;
    while let Some(event) = stream.next().await {
        match event {
            Err(err) => {
                let mut book = lock(&ctx.book);
                if !after_error {
                    tracing::warn!(error = %err, "the control-plane Lease watch failed; standing by until it is back");
                }
                after_error = true;
                book.view = LeaseView::Unknown;
            }
            Ok(watcher::Event::Init) => listed = false,
            Ok(watcher::Event::InitApply(lease)) => {
                listed = true;
                ctx.observe(lease);
            }
            Ok(watcher::Event::InitDone) => {
                let mut book = lock(&ctx.book);
                if !listed {
                    book.view = LeaseView::Absent;
                    book.last = None;
                    book.liveness.forget(LEASE_NAME);
                }
                if after_error {
                    let now = ctx.now();
                    book.liveness.refresh_all(now);
                    after_error = false;
                    tracing::info!("the control-plane Lease watch is back");
                }
            }
            Ok(watcher::Event::Apply(lease)) => ctx.observe(lease),
            Ok(watcher::Event::Delete(_)) => {
                let mut book = lock(&ctx.book);
                book.view = LeaseView::Absent;
                book.last = None;
                book.liveness.forget(LEASE_NAME);
            }
        }
        ctx.changed.notify_one();
    }
}

/// The outcome of one Lease write.
enum Written {
    Ok(Box<Lease>),
    Conflict,
    Failed(String),
}

async fn write(ctx: &Ctx, api: &Api<Lease>, lease: &Lease, create: bool) -> Written {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PostParams::default()
    };
    // A write slower than the renew interval is as good as failed: the next one starts fresh.
    let limit = ctx.renew_interval.max(Duration::from_millis(500));
    let call = async {
        if create {
            api.create(&params, lease).await
        } else {
            api.replace(LEASE_NAME, &params, lease).await
        }
    };
    let result = match tokio::time::timeout(limit, call).await {
        Ok(Ok(lease)) => Written::Ok(Box::new(lease)),
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => Written::Conflict,
        Ok(Err(err)) => Written::Failed(err.to_string()),
        Err(_) => Written::Failed(format!("no answer within {limit:?}")),
    };
    CpMetrics::count(
        &ctx.metrics.lease_writes,
        match &result {
            Written::Ok(_) => "ok",
            Written::Conflict => "conflict",
            Written::Failed(_) => "error",
        },
    );
    result
}

/// Runs the election: on every change of the Lease or of health, at every renewal and at the
/// Lease's expiry by this process's clock. Publishes the VIP decision for [`apply_vip`].
async fn elect(
    ctx: Arc<Ctx>,
    api: Api<Lease>,
    vip: watch::Sender<Option<VipState>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    // A take-over attempt that failed is not retried on the same resourceVersion before this.
    let mut retry_take: Option<(String, Instant)> = None;
    loop {
        let inputs = ctx.inputs();
        let action = election::lease_action(&inputs);
        let started = ctx.now();
        let due = match &action {
            LeaseAction::Renew => inputs
                .hold
                .written_at
                .is_none_or(|at| started >= at + ctx.renew_interval),
            LeaseAction::Acquire { version } => retry_take
                .as_ref()
                .is_none_or(|(v, at)| v != version || at.elapsed() >= ctx.renew_interval),
            LeaseAction::Create => retry_take
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() >= ctx.renew_interval),
            LeaseAction::Release | LeaseAction::Wait => true,
        };
        if due {
            let outcome = match &action {
                LeaseAction::Wait => None,
                LeaseAction::Create => {
                    let lease = ctx.lease_object(None, Some(&ctx.me));
                    Some(write(&ctx, &api, &lease, true).await)
                }
                LeaseAction::Acquire { .. } => {
                    let base = lock(&ctx.book).last.clone();
                    let lease = ctx.lease_object(base.as_ref(), Some(&ctx.me));
                    Some(write(&ctx, &api, &lease, false).await)
                }
                LeaseAction::Renew => {
                    let base = lock(&ctx.own).mine.clone();
                    let lease = ctx.lease_object(base.as_ref(), Some(&ctx.me));
                    Some(write(&ctx, &api, &lease, false).await)
                }
                LeaseAction::Release => {
                    release(&ctx, &api).await;
                    None
                }
            };
            match (&action, outcome) {
                (_, None) => {}
                (_, Some(Written::Ok(lease))) => {
                    let taking = !matches!(action, LeaseAction::Renew);
                    if taking {
                        tracing::info!(node = %ctx.me, "took the control-plane Lease");
                    } else if failing {
                        tracing::info!("renewing the control-plane Lease again");
                    }
                    failing = false;
                    retry_take = None;
                    {
                        let mut own = lock(&ctx.own);
                        own.hold = Hold {
                            holding: true,
                            written_at: Some(started),
                        };
                        own.mine = Some((*lease).clone());
                    }
                    ctx.observe(*lease);
                }
                (LeaseAction::Renew, Some(Written::Conflict)) => {
                    // Changed under us: read it. Ours still (a lost answer): carry on from it.
                    match api.get_opt(LEASE_NAME).await {
                        Ok(Some(lease))
                            if holder_of(&lease).as_deref() == Some(ctx.me.as_str()) =>
                        {
                            lock(&ctx.own).mine = Some(lease.clone());
                            ctx.observe(lease);
                        }
                        Ok(found) => {
                            tracing::warn!(holder = ?found.as_ref().and_then(holder_of), "lost the control-plane Lease");
                            lock(&ctx.own).hold.holding = false;
                            if let Some(lease) = found {
                                ctx.observe(lease);
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "reading the control-plane Lease after a conflict")
                        }
                    }
                }
                (LeaseAction::Acquire { version }, Some(Written::Conflict)) => {
                    retry_take = Some((version.clone(), Instant::now()));
                }
                (_, Some(Written::Conflict)) => {
                    retry_take = Some((String::new(), Instant::now()));
                }
                (_, Some(Written::Failed(err))) => {
                    if let LeaseAction::Acquire { version } = &action {
                        retry_take = Some((version.clone(), Instant::now()));
                    } else if matches!(action, LeaseAction::Create) {
                        retry_take = Some((String::new(), Instant::now()));
                    }
                    if !failing {
                        tracing::warn!(error = %err, action = ?action, "writing the control-plane Lease failed; keeping the VIP as it is");
                        failing = true;
                    }
                }
            }
        }

        // Publish the VIP decision once it is informed: the Lease was listed (or is ours) and
        // the local API server was checked. Before that, a previous run's VIP stays.
        let inputs = ctx.inputs();
        let informed =
            inputs.health.checked && (inputs.hold.holding || inputs.lease != LeaseView::Unknown);
        if informed {
            let state = election::vip_state(&inputs);
            vip.send_if_modified(|current| {
                let changed = *current != Some(state);
                *current = Some(state);
                changed
            });
        }

        // Next wake-up: a change, the next renewal, the Lease's expiry, our own hold lapsing.
        let now = ctx.now();
        let mut deadline = now + ctx.renew_interval;
        if let Some(at) = lock(&ctx.book).liveness.expires_at(LEASE_NAME, now) {
            deadline = deadline.min(at.max(now));
        }
        let hold = lock(&ctx.own).hold;
        if let (true, Some(at)) = (hold.holding, hold.written_at) {
            for t in [at + ctx.renew_interval, at + ctx.lease_duration] {
                if t > now {
                    deadline = deadline.min(t);
                }
            }
        }
        let sleep = deadline.saturating_sub(now) + Duration::from_millis(1);
        tokio::select! {
            _ = ctx.changed.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
            _ = stop.changed() => {
                if lock(&ctx.own).hold.holding {
                    release(&ctx, &api).await;
                }
                return;
            }
        }
    }
}

/// Clears the holder (bounded: the API may be unreachable). The VIP is dropped in any case.
async fn release(ctx: &Ctx, api: &Api<Lease>) {
    let base = {
        let own = lock(&ctx.own);
        own.mine.clone()
    }
    .or_else(|| lock(&ctx.book).last.clone());
    lock(&ctx.own).hold.holding = false;
    let Some(base) = base else { return };
    let lease = ctx.lease_object(Some(&base), None);
    match tokio::time::timeout(Duration::from_secs(1), write(ctx, api, &lease, false)).await {
        Ok(Written::Ok(lease)) => {
            tracing::info!("released the control-plane Lease");
            ctx.observe(*lease);
        }
        Ok(Written::Conflict) => {
            tracing::info!("the control-plane Lease changed meanwhile; not releasing it")
        }
        Ok(Written::Failed(err)) => {
            tracing::warn!(error = %err, "releasing the control-plane Lease failed; the others take over when it expires")
        }
        Err(_) => tracing::warn!(
            "releasing the control-plane Lease timed out; the others take over when it expires"
        ),
    }
}

/// Applies the VIP decisions to this part's share of the announcer.
/// Returns whether the VIP was announced when it stopped (the handover is then still to do).
async fn apply_vip(
    ctx: Arc<Ctx>,
    share: Share,
    bgp: Option<Arc<BgpPart>>,
    mut decisions: watch::Receiver<Option<VipState>>,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut applied: Option<bool> = None;
    let mut retry = false;
    loop {
        let state = *decisions.borrow_and_update();
        if let Some(state) = state {
            let announce = state != VipState::Drop;
            // L2: a yielding holder lets another node's announcements win on the LAN. BGP has
            // no such signal: the holder keeps its route (invariant 5) until it drops the VIP.
            if bgp.is_none() {
                share.set_yield_to_others(state == VipState::HoldYielding);
            }
            if applied != Some(announce) || retry {
                let target = match &bgp {
                    Some(_) => bgp::vip_target(),
                    None => Target {
                        interface: ctx.interface.clone(),
                        mode: AnnounceMode::Address,
                        // The VIP is the administrator's; a standby takes it over at once.
                        probe_first: false,
                    },
                };
                let desired: BTreeMap<IpAddr, Target> = if announce {
                    BTreeMap::from([(ctx.vip, target)])
                } else {
                    BTreeMap::new()
                };
                // BGP: the route is withdrawn before the address goes, and announced only
                // once the address is there, so nothing routed here is refused.
                if !announce && let Some(part) = &bgp {
                    part.announce(false).await;
                }
                match share.set(desired).await {
                    Ok(()) => {
                        if announce && let Some(part) = &bgp {
                            part.announce(true).await;
                        }
                        retry = false;
                        if applied.is_some() || announce {
                            ctx.metrics.vip_changes.inc();
                            if announce {
                                tracing::info!(vip = %ctx.vip, interface = %ctx.interface, bgp = bgp.is_some(), "announcing the control-plane VIP");
                            } else {
                                tracing::info!(vip = %ctx.vip, "no longer announcing the control-plane VIP");
                            }
                        }
                        applied = Some(announce);
                        ctx.metrics.leader.set(i64::from(announce));
                        ready.store(true, Ordering::Release);
                    }
                    Err(NetError::Stopped) => return applied == Some(true),
                    Err(err) => {
                        tracing::warn!(error = %err, category = err.category(), "applying the control-plane VIP failed; retrying");
                        retry = true;
                    }
                }
            }
        }
        tokio::select! {
            changed = decisions.changed() => if changed.is_err() {
                // The election loop stopped (shutdown): drop the VIP only at the handover.
                return applied == Some(true);
            },
            _ = tokio::time::sleep(Duration::from_secs(1)), if retry => {}
            _ = stop.changed() => return applied == Some(true),
        }
    }
}
