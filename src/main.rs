//! The `vipam` binary: one binary, several modes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use vipam::check::{self, CheckOptions, Format};
use vipam::core::range::Family;
use vipam::core::request::RequestPolicy;

/// LoadBalancer IPs for bare-metal Kubernetes, managed the GitOps way.
#[derive(Parser, Debug)]
#[command(name = "vipam", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a GitOps tree offline: print the IP allocation table and fail on every conflict.
    ///
    /// Reads every *.yaml/*.yml under the given directories (recursively) or files, or a
    /// multi-document stream on stdin with `-` (`kubectl kustomize DIR | vipam check -`).
    /// Exit status: 0 clean, 1 problems found, 2 usage or I/O error.
    Check(CheckArgs),
    /// Serve the admission webhooks (HTTPS) and the admin endpoints (HTTP). Runs as a
    /// Deployment with 2+ replicas; finds the cluster in-cluster or through KUBECONFIG.
    Controller(Box<vipam::controller::ControllerArgs>),
    /// Announce the LoadBalancer addresses this node owns (ARP/NDP or kernel addresses) and
    /// hold its liveness Lease. Runs as a DaemonSet with hostNetwork and CAP_NET_RAW,
    /// CAP_NET_ADMIN.
    Agent(Box<vipam::agent::AgentArgs>),
    /// Print ready-to-commit manifests for the control-plane VIP.
    #[command(subcommand)]
    Manifest(ManifestCommand),
    /// Convert kube-vip, Cilium LB-IPAM / L2 announcement or MetalLB configuration to vipam
    /// objects.
    ///
    /// Reads files, directories (recursively) or `-` (a multi-document stream, e.g.
    /// `kubectl get ipaddresspools,l2advertisements -A -o yaml | vipam import -`) and prints the
    /// vipam objects as YAML. Warnings on stderr name every setting that was changed on the way
    /// or has no vipam equivalent. Exit status: 0 all carried over, 1 something could not be
    /// (what could is still printed), 2 usage or I/O error.
    Import(ImportArgs),
    /// Print the CustomResourceDefinitions (generated from the Rust types).
    Crds {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ManifestCommand {
    /// A static pod for /etc/kubernetes/manifests/ on every control-plane node (works before
    /// the cluster exists: talks to the local API server with the mounted kubeconfig).
    StaticPod(Box<ManifestArgs>),
    /// A DaemonSet on the control-plane nodes with its ServiceAccount, Role and RoleBinding
    /// (in-cluster configuration).
    Daemonset(Box<ManifestArgs>),
}

#[derive(clap::Args, Debug)]
struct ManifestArgs {
    /// The control-plane VIP.
    #[arg(long)]
    vip: std::net::IpAddr,
    /// The interface the VIP is added to on every control-plane node. With --bgp, optional:
    /// the VIP goes on `lo`, and this interface's first IPv4 address is the router ID.
    #[arg(long, required_unless_present = "bgp")]
    interface: Option<String>,
    /// Container image.
    #[arg(long, default_value = vipam::manifest::DEFAULT_IMAGE)]
    image: String,
    /// The API servers' port.
    #[arg(long, default_value_t = 6443)]
    port: u16,
    /// Namespace of the Lease (and of the DaemonSet's objects).
    #[arg(long, default_value = "kube-system")]
    namespace: String,
    /// Static pod: the kubeconfig on the host (kubeadm >= 1.29: super-admin.conf on the first
    /// control-plane node during `kubeadm init`).
    #[arg(long, default_value = "/etc/kubernetes/admin.conf")]
    kubeconfig: String,
    /// Lease duration of the election.
    #[arg(long, default_value = "3s", value_parser = vipam::controller::parse_duration)]
    lease_duration: std::time::Duration,
    /// Renew interval of the election.
    #[arg(long, default_value = "1s", value_parser = vipam::controller::parse_duration)]
    renew_interval: std::time::Duration,
    /// Announce the VIP by BGP to the --bgp-peer routers (the leader alone; the VIP on `lo`).
    #[arg(long, requires_all = ["bgp_peers", "bgp_peer_asn", "bgp_my_asn"])]
    bgp: bool,
    /// A router: `ADDRESS`, `ADDRESS:PORT` or `[IPV6]:PORT`. Repeatable, or comma-separated.
    #[arg(
        long = "bgp-peer",
        value_delimiter = ',',
        value_name = "ADDRESS[:PORT]",
        requires = "bgp"
    )]
    bgp_peers: Vec<String>,
    /// The routers' AS number.
    #[arg(long, value_name = "ASN", requires = "bgp")]
    bgp_peer_asn: Option<u32>,
    /// The nodes' AS number.
    #[arg(long, value_name = "ASN", requires = "bgp")]
    bgp_my_asn: Option<u32>,
    /// BGP router ID (default: each node's first IPv4 address of --interface, or of its
    /// default route's interface).
    #[arg(long, value_name = "IPV4", requires = "bgp")]
    bgp_router_id: Option<std::net::Ipv4Addr>,
    /// Hold time proposed to the routers (agent default 9s).
    #[arg(long, requires = "bgp")]
    bgp_hold_time: Option<String>,
    /// TCP MD5 password file on every control-plane node, mounted read-only (hostPath), e.g.
    /// /etc/kubernetes/vipam-bgp-password (mode 0600).
    #[arg(long, value_name = "PATH", requires = "bgp")]
    bgp_password_file: Option<String>,
    /// IP TTL of the sessions (eBGP multihop).
    #[arg(long, value_name = "TTL", requires = "bgp")]
    bgp_multihop_ttl: Option<u8>,
    /// Local address of the sessions.
    #[arg(long, value_name = "ADDRESS", requires = "bgp")]
    bgp_source_address: Option<String>,
    /// Communities of the VIP's route. Repeatable, or comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "COMMUNITY",
        requires = "bgp"
    )]
    bgp_communities: Vec<String>,
}

impl ManifestArgs {
    fn options(self) -> vipam::manifest::ManifestOptions {
        vipam::manifest::ManifestOptions {
            vip: self.vip,
            interface: self.interface,
            image: self.image,
            port: self.port,
            namespace: self.namespace,
            kubeconfig: self.kubeconfig,
            lease_duration: self.lease_duration,
            renew_interval: self.renew_interval,
            bgp: self.bgp.then(|| vipam::manifest::ManifestBgp {
                peers: self.bgp_peers,
                peer_asn: self.bgp_peer_asn.unwrap_or_default(),
                my_asn: self.bgp_my_asn.unwrap_or_default(),
                router_id: self.bgp_router_id,
                hold_time: self.bgp_hold_time,
                password_file: self.bgp_password_file,
                multihop_ttl: self.bgp_multihop_ttl,
                source_address: self.bgp_source_address,
                communities: self.bgp_communities,
            }),
        }
    }
}

#[derive(clap::Args, Debug)]
struct ImportArgs {
    /// Directories, files, or `-` for standard input.
    #[arg(value_name = "PATH", required = true)]
    paths: Vec<String>,
    /// Write one file per object into this directory (created if missing) instead of printing.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct CheckArgs {
    /// Directories, files, or `-` for standard input.
    #[arg(value_name = "PATH", default_value = ".")]
    paths: Vec<String>,
    /// Check several clusters' trees that share a LAN: each tree as usual, plus every address
    /// two clusters could both hand out or announce (overlapping pools, one pinned address).
    #[arg(long, value_name = "NAME=PATH", num_args = 2.., conflicts_with = "paths", value_parser = parse_cluster)]
    clusters: Vec<(String, String)>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Table)]
    format: FormatArg,
    /// Also list the Services vipam ignores (other type or class).
    #[arg(long, short)]
    verbose: bool,
    /// Fail (exit 1) on warnings too.
    #[arg(long)]
    strict: bool,
    /// vipam is not the default LoadBalancer implementation: only Services with
    /// `loadBalancerClass: vipam.io/lb` are checked.
    #[arg(long)]
    no_default_class: bool,
    /// Family of single-stack Services that name none (the cluster's primary family).
    #[arg(long, value_enum, default_value_t = FamilyArg::Ipv4)]
    default_family: FamilyArg,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FormatArg {
    Table,
    Json,
    Markdown,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FamilyArg {
    #[value(name = "IPv4", alias = "ipv4")]
    Ipv4,
    #[value(name = "IPv6", alias = "ipv6")]
    Ipv6,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS provider for the process: ring (kube and the webhook server both use rustls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn parse_cluster(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_string(), path.to_string()))
        }
        _ => Err(format!("{text:?} is not NAME=PATH")),
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check(args) => run_check(args),
        Command::Import(args) => run_import(args),
        Command::Controller(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(vipam::controller::run(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Agent(args) => {
            // One thread: the agent waits on sockets and timers; a single thread keeps its
            // memory small on every node (one allocator arena, no idle workers).
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(vipam::agent::run(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Manifest(ManifestCommand::StaticPod(args)) => {
            print!("{}", vipam::manifest::static_pod_yaml(&args.options())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Manifest(ManifestCommand::Daemonset(args)) => {
            print!("{}", vipam::manifest::daemonset_yaml(&args.options())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Crds { out_dir } => {
            match out_dir {
                None => print!("{}", vipam::api::crds_yaml()?),
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    for crd in vipam::api::crds() {
                        let path = dir.join(vipam::api::crd_file_name(&crd));
                        let yaml = serde_saphyr::to_string(&crd)?;
                        std::fs::write(&path, yaml)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_check(args: CheckArgs) -> Result<ExitCode> {
    let options = CheckOptions {
        policy: RequestPolicy {
            default_class: !args.no_default_class,
            default_family: match args.default_family {
                FamilyArg::Ipv4 => Family::V4,
                FamilyArg::Ipv6 => Family::V6,
            },
        },
    };
    let format = match args.format {
        FormatArg::Table => Format::Table,
        FormatArg::Json => Format::Json,
        FormatArg::Markdown => Format::Markdown,
    };
    if !args.clusters.is_empty() {
        let report = check::check_clusters(&args.clusters, &options)?;
        print!("{}", check::render_clusters(&report, format, args.verbose));
        return Ok(if report.failed(args.strict) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    let report = check::check_inputs(&args.paths, &mut std::io::stdin().lock(), &options)?;
    print!("{}", check::render(&report, format, args.verbose));
    let failed = report.errors() > 0 || (args.strict && report.warnings() > 0);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn run_import(args: ImportArgs) -> Result<ExitCode> {
    let imported = vipam::import::import_inputs(&args.paths, &mut std::io::stdin().lock())?;
    match &args.out_dir {
        None => print!("{}", imported.to_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for converted in &imported.objects {
                let path = dir.join(converted.object.file_name());
                std::fs::write(&path, vipam::import::document_text(converted)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    for warning in &imported.warnings {
        eprintln!("{warning}");
    }
    let lost = imported.lost_anything();
    eprintln!(
        "{}: {} object(s) written; {} setting(s) changed, {} not converted",
        if lost { "INCOMPLETE" } else { "OK" },
        imported.objects.len(),
        imported
            .warnings
            .iter()
            .filter(|w| w.outcome == vipam::import::Outcome::Changed)
            .count(),
        imported
            .warnings
            .iter()
            .filter(|w| w.outcome == vipam::import::Outcome::Lost)
            .count(),
    );
    Ok(if lost {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
