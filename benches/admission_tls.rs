//! Admission latency and throughput over TLS on loopback.
//!
//! `cargo bench --bench admission_tls`: the real webhook (`POST /mutate/service`, each request a
//! CREATE that allocates a new address from an IPv6 /64 and records its IPAllocation in the
//! in-process fake API) side by side, in the same run, with a minimal axum TLS handler that
//! returns a fixed "allowed" review (the floor for TLS + HTTP + JSON on this machine). Clients
//! keep one HTTP/1.1 connection each; concurrency 1, 16 and 64, a few seconds each.
//!
//! Three more rows explain the cost: the floor that also creates one IPAllocation before its
//! fixed answer (the floor for any webhook that records before it answers), the same CREATEs as
//! dry runs (the decision without the API write), and the API write alone (a kube client creating
//! IPAllocations on the fake while the webhook's ledger watch applies each event). "CPU per
//! admission" is the process's CPU time (client, servers and fake together) divided by the
//! admissions of the row. Every row starts from the same state: a new runtime, fake API and
//! webhook with one pool and 1,000 allocations. Rows run three times, interleaved; the tables
//! give medians, and a second table the p99 ratios.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use axum_server::tls_rustls::RustlsConfig;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};
use vipam::admin::Metrics;
use vipam::api::{IPAllocation, allocation_object};
use vipam::cache::Caches;
use vipam::core::allocate::{LedgerEntry, Member};
use vipam::core::request::RequestPolicy;
use vipam::core::request::{CrossNamespace, PortKey, ServiceRef};
use vipam::webhook::{self, WebhookState, ledger::LedgerView};

const RUN: Duration = Duration::from_secs(3);

fn review(i: usize) -> Bytes {
    review_with(i, false)
}

fn review_with(i: usize, dry_run: bool) -> Bytes {
    let body = json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": format!("uid-{i}"),
            "kind": {"group": "", "version": "v1", "kind": "Service"},
            "resource": {"group": "", "version": "v1", "resource": "services"},
            "name": format!("svc-{i}"),
            "namespace": format!("ns-{}", i % 50),
            "operation": "CREATE",
            "userInfo": {"username": "bench"},
            "object": {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 50)},
                "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv6"],
                         "ports": [{"port": 443, "protocol": "TCP"}],
                         "selector": {"app": format!("svc-{i}")}}
            },
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

async fn serve(router: Router, tls: RustlsConfig) -> SocketAddr {
    let handle = axum_server::Handle::new();
    let server =
        axum_server::bind_rustls("127.0.0.1:0".parse().unwrap(), tls).handle(handle.clone());
    tokio::spawn(async move {
        server.serve(router.into_make_service()).await.unwrap();
    });
    handle.listening().await.expect("listening")
}

/// CPU time of the whole process (client, servers and fake API), user + system.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

struct Result {
    requests: usize,
    elapsed: Duration,
    /// Process CPU time spent during the run.
    cpu: Duration,
    p50: Duration,
    p99: Duration,
}

async fn load(
    addr: SocketAddr,
    connector: TlsConnector,
    concurrency: usize,
    bodies: Arc<Vec<Bytes>>,
    next: Arc<AtomicUsize>,
) -> Result {
    let started = Instant::now();
    let cpu_started = cpu_time();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (connector, bodies, next) = (connector.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut latencies = Vec::new();
            while started.elapsed() < RUN {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body = bodies[i % bodies.len()].clone();
                let request = hyper::Request::post("/mutate/service")
                    .header("host", "localhost")
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .unwrap();
                let t = Instant::now();
                let response = sender.send_request(request).await.unwrap();
                assert!(response.status().is_success());
                let bytes = response.into_body().collect().await.unwrap().to_bytes();
                latencies.push(t.elapsed());
                assert!(
                    bytes.windows(14).any(|w| w == b"\"allowed\":true"),
                    "{}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            latencies
        }));
    }
    summarize(started, cpu_started, tasks).await
}

/// The API write alone, as the webhook makes it: `concurrency` tasks creating new
/// IPAllocations through a kube client on the in-process fake, while the webhook's ledger watch
/// receives and applies every event.
async fn load_api(api: Api<IPAllocation>, concurrency: usize, next: Arc<AtomicUsize>) -> Result {
    let started = Instant::now();
    let cpu_started = cpu_time();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (api, next) = (api.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < RUN {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let object = api_object(i);
                let t = Instant::now();
                api.create(&PostParams::default(), &object).await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    summarize(started, cpu_started, tasks).await
}

/// An IPAllocation like the ones the webhook records, in a /64 no pool uses.
fn api_object(i: usize) -> IPAllocation {
    allocation(
        0x2001_0db8_0002_0000_0000_0000_0000_0000u128 + i as u128 + 1,
        "api-only",
        "api",
        i,
    )
}

/// An IPAllocation of `ip` in `pool` for Service `ns-{i % 50}/{prefix}-{i}`.
fn allocation(ip: u128, pool: &str, prefix: &str, i: usize) -> IPAllocation {
    let mut object = allocation_object(&LedgerEntry {
        ip: std::net::Ipv6Addr::from(ip).into(),
        pool: pool.into(),
        sharing_key: None,
        members: vec![Member {
            service: ServiceRef::new(format!("ns-{}", i % 50), format!("{prefix}-{i}")),
            ports: vec![PortKey {
                protocol: "TCP".into(),
                port: 443,
            }],
            cross_namespace: CrossNamespace::None,
            etp_local: false,
            selector: [("app".to_string(), format!("{prefix}-{i}"))].into(),
        }],
        released_at: None,
    });
    object.status = None;
    object
}

/// Latencies of every task, the run's wall and CPU time.
async fn summarize(
    started: Instant,
    cpu_started: Duration,
    tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
) -> Result {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_started;
    all.sort();
    Result {
        requests: all.len(),
        elapsed,
        cpu,
        p50: all[all.len() / 2],
        p99: all[(all.len() * 99 / 100).min(all.len() - 1)],
    }
}

/// Allocations every row starts with: a ledger of a realistic size, at the top of the pool.
const SEEDED: usize = 1_000;

const FIXED: &[u8] = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"x","allowed":true,"status":{}}}"#;

/// One row's world, built fresh: the fake API (one pool, one L2Announcement, [`SEEDED`]
/// allocations), the webhook and its caches, and the two floors.
struct Stand {
    fake: support::FakeApi,
    vipam: SocketAddr,
    floor: SocketAddr,
    write_floor: SocketAddr,
    allocations: Api<IPAllocation>,
    /// Creates by the write floor and the API-only row.
    api_next: Arc<AtomicUsize>,
}

impl Stand {
    async fn new(tls: &RustlsConfig) -> Stand {
        let fake = support::FakeApi::new();
        fake.seed(
            json!({"apiVersion": "vipam.io/v1alpha1", "kind": "IPPool", "metadata": {"name": "v6"},
                         "spec": {"blocks": [{"cidr": "2001:db8:1::/64"}]}}),
        );
        fake.seed(json!({"apiVersion": "vipam.io/v1alpha1", "kind": "L2Announcement", "metadata": {"name": "all"}, "spec": {}}));
        for i in 0..SEEDED {
            fake.seed(allocation(
                0x2001_0db8_0001_0000_8000_0000_0000_0000u128 + i as u128,
                "v6",
                "seeded",
                i,
            ));
        }
        let (caches, writers) = Caches::new();
        Caches::start(fake.client(), writers, &caches).await;
        assert_eq!(
            caches.ledger.lock().ledger.len(),
            SEEDED,
            "the webhook read the seeded ledger"
        );
        let state = Arc::new(WebhookState {
            policy: RequestPolicy::default(),
            sticky_release_secs: 600,
            ledger: LedgerView::new(fake.client(), caches),
            metrics: Arc::new(Metrics::new()),
        });
        let vipam = serve(webhook::router(state), tls.clone()).await;
        let floor = Router::new().route(
            "/mutate/service",
            post(|_body: Bytes| async {
                (
                    [("content-type", "application/json")],
                    Bytes::from_static(FIXED),
                )
            }),
        );
        let floor = serve(floor, tls.clone()).await;
        // The floor for a webhook that must record before it answers: the fixed answer after one
        // kube client create of an IPAllocation (no parsing, no decision).
        let allocations: Api<IPAllocation> = Api::all(fake.client());
        let api_next = Arc::new(AtomicUsize::new(0));
        let (write_api, write_next) = (allocations.clone(), api_next.clone());
        let write_floor = Router::new().route(
            "/mutate/service",
            post(move |_body: Bytes| {
                let api = write_api.clone();
                let object = api_object(write_next.fetch_add(1, Ordering::Relaxed));
                async move {
                    api.create(&PostParams::default(), &object).await.unwrap();
                    (
                        [("content-type", "application/json")],
                        Bytes::from_static(FIXED),
                    )
                }
            }),
        );
        let write_floor = serve(write_floor, tls.clone()).await;
        Stand {
            fake,
            vipam,
            floor,
            write_floor,
            allocations,
            api_next,
        }
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let tls = runtime()
        .block_on(RustlsConfig::from_pem(
            cert.pem().into_bytes(),
            key.serialize_pem().into_bytes(),
        ))
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let client =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(client));

    // Each admission to vipam is a new Service (a new address); the floors ignore bodies.
    let bodies: Arc<Vec<Bytes>> = Arc::new((0..200_000).map(review).collect());
    // Dry runs decide the same way but write nothing: the webhook's own cost.
    let dry_bodies: Arc<Vec<Bytes>> = Arc::new((0..1000).map(|i| review_with(i, true)).collect());
    println!("| concurrency | handler | admissions/s | p50 | p99 | CPU per admission |");
    println!("|---|---|---|---|---|---|");
    // ADMISSION_BENCH_ONLY=floor|write-floor|dry|recorded|api and ADMISSION_BENCH_CONCURRENCY=N
    // narrow the run (for profiling one row).
    let only = std::env::var("ADMISSION_BENCH_ONLY").ok();
    let levels: Vec<usize> = match std::env::var("ADMISSION_BENCH_CONCURRENCY") {
        Ok(n) => vec![n.parse().expect("ADMISSION_BENCH_CONCURRENCY is a number")],
        Err(_) => vec![1, 16, 64],
    };
    // ADMISSION_BENCH_REPEATS=N: repetitions of every row, interleaved (default 3); the tables
    // give each column's median, so one slow moment of this shared guest moves one repetition.
    let repeats: usize = match std::env::var("ADMISSION_BENCH_REPEATS") {
        Ok(n) => n.parse().expect("ADMISSION_BENCH_REPEATS is a number"),
        Err(_) => 3,
    };
    let rows = [
        ("floor", "floor (fixed answer)"),
        (
            "write-floor",
            "floor + API write (fixed answer after one create)",
        ),
        ("dry", "vipam, dry run (decides, writes nothing)"),
        (
            "recorded",
            "vipam webhook (decides, records the IPAllocation)",
        ),
        (
            "api",
            "API write alone (kube client create on the fake, watched)",
        ),
    ];
    let mut medians = Vec::new();
    for &concurrency in &levels {
        let mut results: Vec<Vec<Result>> = rows.iter().map(|_| Vec::new()).collect();
        for _ in 0..repeats {
            for (k, &(row, _)) in rows.iter().enumerate() {
                if only.as_deref().is_some_and(|o| o != row) {
                    continue;
                }
                results[k].push(run_row(
                    row,
                    concurrency,
                    &tls,
                    &connector,
                    &bodies,
                    &dry_bodies,
                ));
            }
        }
        for (k, &(row, name)) in rows.iter().enumerate() {
            if results[k].is_empty() {
                continue;
            }
            let m = Median::of(&results[k]);
            println!(
                "| {concurrency} | {name} | {:.0} | {:.0} µs | {:.0} µs | {:.0} µs |",
                m.rate, m.p50, m.p99, m.cpu
            );
            medians.push((concurrency, row, m));
        }
    }
    let get = |c: usize, row: &str| {
        medians
            .iter()
            .find(|(mc, mr, _)| *mc == c && *mr == row)
            .map(|(_, _, m)| m.p99)
    };
    println!(
        "\n| concurrency | p99 vipam ÷ floor | p99 floor + API write ÷ floor | p99 vipam ÷ (floor + API write) | p99 dry run ÷ floor |"
    );
    println!("|---|---|---|---|---|");
    for &c in &levels {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        println!(
            "| {c} | {} | {} | {} | {} |",
            ratio(get(c, "recorded"), get(c, "floor")),
            ratio(get(c, "write-floor"), get(c, "floor")),
            ratio(get(c, "recorded"), get(c, "write-floor")),
            ratio(get(c, "dry"), get(c, "floor")),
        );
    }
}

/// Each column's median over a row's repetitions (throughput per second, times in µs).
struct Median {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu: f64,
}

impl Median {
    fn of(results: &[Result]) -> Median {
        let median = |f: &dyn Fn(&Result) -> f64| {
            let mut v: Vec<f64> = results.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Median {
            rate: median(&|r| r.requests as f64 / r.elapsed.as_secs_f64()),
            p50: median(&|r| r.p50.as_secs_f64() * 1e6),
            p99: median(&|r| r.p99.as_secs_f64() * 1e6),
            cpu: median(&|r| r.cpu.as_secs_f64() * 1e6 / r.requests as f64),
        }
    }
}

/// One repetition of one row on a fresh runtime and stand: no row inherits another's
/// allocations, heap or tasks; dropping the runtime ends the stand's servers and watches.
fn run_row(
    row: &str,
    concurrency: usize,
    tls: &RustlsConfig,
    connector: &TlsConnector,
    bodies: &Arc<Vec<Bytes>>,
    dry_bodies: &Arc<Vec<Bytes>>,
) -> Result {
    runtime().block_on(async {
        let stand = Stand::new(tls).await;
        let next = Arc::new(AtomicUsize::new(0));
        let c = connector.clone();
        let r = match row {
            "floor" => load(stand.floor, c, concurrency, bodies.clone(), next.clone()).await,
            "write-floor" => {
                load(
                    stand.write_floor,
                    c,
                    concurrency,
                    bodies.clone(),
                    next.clone(),
                )
                .await
            }
            "dry" => {
                load(
                    stand.vipam,
                    c,
                    concurrency,
                    dry_bodies.clone(),
                    next.clone(),
                )
                .await
            }
            "recorded" => load(stand.vipam, c, concurrency, bodies.clone(), next.clone()).await,
            _ => {
                load_api(
                    stand.allocations.clone(),
                    concurrency,
                    stand.api_next.clone(),
                )
                .await
            }
        };
        // Every recorded admission and every create made exactly one new IPAllocation; dry
        // runs and the floor made none.
        let created = match row {
            "recorded" => next.load(Ordering::Relaxed),
            "write-floor" | "api" => stand.api_next.load(Ordering::Relaxed),
            _ => 0,
        };
        let expected = if matches!(row, "floor" | "dry") {
            0
        } else {
            r.requests
        };
        assert_eq!(created, expected, "{row}: requests and creates disagree");
        assert_eq!(
            stand.fake.list("ipallocations", None).len(),
            SEEDED + created,
            "{row}: one IPAllocation per recorded admission"
        );
        r
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
