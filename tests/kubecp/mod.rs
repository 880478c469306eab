//! A real Kubernetes control plane for the tests: etcd, kube-apiserver and
//! kube-controller-manager built from the published Go modules (tests/controlplane/build.sh)
//! and started by tests/controlplane/start.sh inside a network namespace of this test binary.
//!
//! One control plane per test binary ([`shared`]), started on first use and stopped by
//! start.sh's watchdog when the binary exits. Inside its namespace the API server listens on
//! [`API_ADDRESS`]; the namespace also holds [`WEBHOOK_ADDRESSES`] for processes the tests run
//! there (the API server reaches a webhook Service through its EndpointSlice, which may not name
//! a loopback address). The test process itself reaches the API server through a forwarder on
//! 127.0.0.1, so `kubectl` and kube clients run on the host unchanged.
//!
//! Without Go, or when the build fails, [`shared`] panics saying so and how to fix it: tests
//! that need the control plane fail, they never pass silently.

#![allow(dead_code)]

pub mod vipam;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Address of the API server inside the control plane's namespace.
pub const API_ADDRESS: &str = "203.0.113.1";
/// Addresses in the namespace for webhook servers (one per controller replica).
pub const WEBHOOK_ADDRESSES: [&str; 2] = ["203.0.113.11", "203.0.113.12"];
/// Prefix of the namespaces (and directories) of this helper; the rest is the owner's pid.
const PREFIX: &str = "vkcp";

pub struct ControlPlane {
    /// The network namespace every control-plane process runs in.
    pub netns: String,
    /// State directory of start.sh (removed by stop.sh).
    dir: PathBuf,
    /// Scratch directory of the tests (kubeconfigs, manifests).
    pub scratch: PathBuf,
    /// Binaries built by build.sh (kubectl among them).
    pub bin: PathBuf,
    /// The admin kubeconfig for the host side (through the forwarder).
    pub kubeconfig: PathBuf,
    /// The admin kubeconfig for processes inside the namespace.
    pub kubeconfig_in_ns: PathBuf,
    /// `https://API_ADDRESS:6443`, as seen inside the namespace.
    pub server_in_ns: String,
    /// The forwarder's address on the host.
    pub forward: std::net::SocketAddr,
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("kubecp: cannot run {cmd}: {e}"))
}

fn must(cmd: &str, args: &[&str]) {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "kubecp: `{cmd} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Builds (or finds in the cache) the control-plane binaries; panics with the reason.
pub fn binaries() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = repo().join("tests/controlplane/build.sh");
        let out = Command::new(&script)
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("kubecp: cannot run {}: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "kubecp: the real control plane could not be built (tests/controlplane/build.sh, exit {}).\n\
             It needs Go >= 1.26 on PATH and the Go module proxy; see README \"Developing\".\n{stderr}",
            out.status
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// Stops the control planes and deletes the namespaces and scratch directories of earlier test
/// processes that no longer exist (normally their watchdog has done it; a binary that exited a
/// moment ago, or was killed with its watchdog, can leave them).
fn sweep_stale() {
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(&format!("{PREFIX}-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                // Its watchdog may not have run yet (a binary that just exited): stop the
                // processes through their pid files before the directory that holds them goes.
                let _ = Command::new(repo().join("tests/controlplane/stop.sh"))
                    .arg(entry.path().join("controlplane"))
                    .status();
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }
}

/// The control plane of this test binary, started on first use in a namespace of its own.
pub fn shared() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        require_root();
        let netns = format!("{PREFIX}{}", std::process::id());
        let _ = run("ip", &["netns", "del", &netns]);
        must("ip", &["netns", "add", &netns]);
        must("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        for address in std::iter::once(API_ADDRESS).chain(WEBHOOK_ADDRESSES) {
            let cidr = format!("{address}/32");
            must("ip", &["-n", &netns, "addr", "add", &cidr, "dev", "lo"]);
        }
        ControlPlane::start(&netns, API_ADDRESS, true)
    })
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "kubecp: the control plane runs in a network namespace; run the tests as root (euid is {euid})"
    );
}

impl ControlPlane {
    /// A control plane inside an existing namespace (e.g. a tests/netlab host), the API server
    /// on `address` of that namespace; stopped when dropped (or when the binary exits).
    pub fn start_in(netns: &str, address: &str) -> ControlPlane {
        ControlPlane::start(netns, address, false)
    }

    fn start(netns: &str, address: &str, delete_netns: bool) -> ControlPlane {
        require_root();
        let bin = binaries();
        sweep_stale();
        let pid = std::process::id();
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let netns = netns.to_string();
        let scratch = std::env::temp_dir().join(format!("{PREFIX}-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).expect("kubecp: scratch directory");
        let dir = scratch.join("controlplane");
        let kubeconfig_in_ns = scratch.join("admin-in-ns.kubeconfig");
        let started = Instant::now();
        let mut command = Command::new(repo().join("tests/controlplane/start.sh"));
        command
            .arg("--bin")
            .arg(&bin)
            .arg("--dir")
            .arg(&dir)
            .arg("--kubeconfig")
            .arg(&kubeconfig_in_ns)
            .args(["--netns", &netns, "--address", address]);
        if delete_netns {
            command.arg("--delete-netns");
        }
        let out = command
            .args(["--owner-pid", &pid.to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("kubecp: running tests/controlplane/start.sh");
        assert!(
            out.status.success(),
            "kubecp: the control plane did not start:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server_in_ns = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!(
            "kubecp: control plane ready in {:.1}s ({server_in_ns} in namespace {netns})",
            started.elapsed().as_secs_f64()
        );
        let forward = forwarder(&netns, format!("{address}:6443"));
        let kubeconfig = scratch.join("admin.kubeconfig");
        let text = std::fs::read_to_string(&kubeconfig_in_ns).expect("kubecp: admin kubeconfig");
        std::fs::write(
            &kubeconfig,
            text.replace(&server_in_ns, &format!("https://{forward}")),
        )
        .expect("kubecp: writing the host kubeconfig");
        ControlPlane {
            netns,
            dir,
            scratch,
            bin,
            kubeconfig,
            kubeconfig_in_ns,
            server_in_ns,
            forward,
        }
    }

    /// The built kubectl against this control plane (host side), output captured.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command()
            .args(args)
            .output()
            .expect("kubecp: running kubectl")
    }

    /// kubectl that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .kubectl_command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubecp: running kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// A kube client with admin rights (host side).
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig for processes in the namespace, authenticating as ServiceAccount `sa` of
    /// namespace `ns` with a token from the TokenRequest API (so its RBAC is what applies).
    pub fn service_account_kubeconfig(&self, ns: &str, sa: &str) -> PathBuf {
        let token = self.kubectl_ok(&["create", "token", sa, "-n", ns, "--duration", "24h"]);
        let text = std::fs::read_to_string(&self.kubeconfig_in_ns).unwrap();
        // The same kubeconfig with the ServiceAccount's token in place of the admin's.
        let out: String = text
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("token:") {
                    format!("      token: {}\n", token.trim())
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        assert_ne!(
            out,
            text,
            "kubecp: no token in {}",
            self.kubeconfig_in_ns.display()
        );
        let path = self.scratch.join(format!("{ns}-{sa}.kubeconfig"));
        std::fs::write(&path, out).unwrap();
        path
    }

    /// A command that runs `program` inside the control plane's namespace.
    pub fn command_in_ns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Starts a thread inside the control plane's namespace running `f` (sockets it, or a
    /// runtime it builds, opens are there).
    pub fn thread_in_ns<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.netns);
        let ns_file = std::fs::File::open(&path).unwrap();
        std::thread::spawn(move || {
            enter(&ns_file);
            f()
        })
    }

    /// Runs `f` on a thread inside the control plane's namespace (sockets it opens are there).
    pub fn run_in_ns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.thread_in_ns(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// GET `path` from a plain-HTTP server inside the namespace: (status, body), or None.
    pub fn http_get_in_ns(&self, addr: &str, path: &str) -> Option<(u16, String)> {
        let addr = addr.to_string();
        let path = path.to_string();
        self.run_in_ns(move || {
            use std::io::{Read, Write};
            let mut stream =
                std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2))
                    .ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            let status = response.split_whitespace().nth(1)?.parse().ok()?;
            let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
            Some((status, body))
        })
    }

    /// The pid of a control-plane process (`etcd`, `kube-apiserver`, `kube-controller-manager`).
    pub fn pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.dir.join(format!("{name}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Creates namespace `name` for one test; deleted when the guard drops.
    pub fn namespace(&'static self, name: &str) -> TestNamespace {
        let _ = self.kubectl(&["delete", "namespace", name, "--wait=true", "--timeout=60s"]);
        self.kubectl_ok(&["create", "namespace", name]);
        TestNamespace {
            cp: self,
            name: name.to_string(),
            cluster_scoped: Vec::new(),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/controlplane/stop.sh"))
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// A Kubernetes namespace of one test, deleted (without waiting) on drop, with the
/// cluster-scoped objects the test made for it.
pub struct TestNamespace {
    cp: &'static ControlPlane,
    pub name: String,
    /// Cluster-scoped objects deleted with the namespace: (resource, name).
    cluster_scoped: Vec<(String, String)>,
}

impl TestNamespace {
    /// Deletes `resource`/`name` (cluster-scoped) when the namespace goes.
    pub fn delete_on_drop(&mut self, resource: &str, name: &str) {
        self.cluster_scoped
            .push((resource.to_string(), name.to_string()));
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = self
            .cp
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
        for (resource, name) in &self.cluster_scoped {
            let _ = self.cp.kubectl(&["delete", resource, name, "--wait=false"]);
        }
    }
}

fn enter(ns_file: &std::fs::File) {
    // SAFETY: setns on a valid namespace descriptor; affects the calling thread only.
    let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "kubecp: setns failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Forwards connections from a free port on the host's 127.0.0.1 to `target` inside `netns`:
/// a runtime whose threads all live in the namespace, accepting on a listener made on the host.
fn forwarder(netns: &str, target: String) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("kubecp: forwarder port");
    listener.set_nonblocking(true).unwrap();
    let local = listener.local_addr().unwrap();
    let ns_path = format!("/run/netns/{netns}");
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns_file = std::fs::File::open(&ns_path).unwrap();
    std::thread::Builder::new()
        .name("kubecp-forwarder".into())
        .spawn(move || {
            enter(&ns_file);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                ready_tx.send(()).unwrap();
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let target = target.clone();
                    tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ = outbound.set_nodelay(true);
                            let _ = inbound.set_nodelay(true);
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            });
        })
        .unwrap();
    ready_rx.recv().expect("kubecp: forwarder did not start");
    local
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from one thread that lives as long as the process, with PR_SET_PDEATHSIG:
/// the child is killed when the test binary exits, whichever test started it (the signal
/// follows the thread that forked, so a test's own thread would kill it when the test ends).
pub fn spawn_owned(cmd: Command) -> Child {
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kubecp-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl is async-signal-safe; called between fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .unwrap();
        std::sync::Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap()
        .send((cmd, reply_tx))
        .expect("kubecp: spawner thread gone");
    reply_rx
        .recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("kubecp: spawning a process: {e}"))
}

/// Polls `f` until it returns Some or `timeout` passes; panics naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
