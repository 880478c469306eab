//! The agent's BGP speaker: one session per BGPPeer that selects this node, announce-only.
//! The decision loop hands it the routes of each peer (`core::bgp::announce`); it keeps each
//! session's RIB-out in step and reports every session's state (metrics, and the agent Lease's
//! `vipam.io/bgp-sessions` annotation, which the controller turns into BGPPeer status).
//!
//! Stopping (SIGTERM, or a peer no longer selecting this node) withdraws every route, waits for
//! the peer's TCP to acknowledge it, then sends NOTIFICATION Cease and closes.

mod peer;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use crate::api::view::SessionNote;
use crate::core::bgp::announce::PeerRoutes;
use crate::core::bgp::config::Peer;
use crate::core::bgp::session::State;

pub use peer::Routes;

/// One session to set up: a valid BGPPeer with what the node adds.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerSetup {
    pub peer: Peer,
    /// The TCP MD5 password, read from the Secret.
    pub password: Option<Vec<u8>>,
    pub router_id: Ipv4Addr,
    /// Set the graceful-restart R bit: this agent restarted within the restart time.
    pub restarted: bool,
}

impl std::fmt::Debug for PeerSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSetup")
            .field("peer", &self.peer.name)
            .field("router_id", &self.router_id)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// One session's state as the node reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionReport {
    pub peer: String,
    pub address: IpAddr,
    pub state: State,
    pub since: SystemTime,
    pub prefixes_sent: usize,
    pub updates_sent: u64,
    pub last_error: Option<String>,
}

impl From<&SessionReport> for SessionNote {
    fn from(report: &SessionReport) -> SessionNote {
        SessionNote {
            peer: report.peer.clone(),
            state: report.state.to_string(),
            since: report
                .since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            prefixes_sent: u32::try_from(report.prefixes_sent).unwrap_or(u32::MAX),
            last_error: report.last_error.clone(),
        }
    }
}

/// Labels of the per-session metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    pub peer: String,
}

/// Labels of the session error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerErrorLabel {
    pub peer: String,
    pub category: String,
}

/// The speaker's metrics (registered into the agent's registry).
#[derive(Clone, Default)]
pub struct SpeakerMetrics {
    /// 1 while Established.
    established: Family<PeerLabel, Gauge>,
    /// The state as a number: 1 Idle, 2 Connect, 3 Active, 4 OpenSent, 5 OpenConfirm, 6
    /// Established (as in the BGP MIB).
    state: Family<PeerLabel, Gauge>,
    /// Unix seconds when the state was entered.
    since: Family<PeerLabel, Gauge>,
    prefixes: Family<PeerLabel, Gauge>,
    updates: Family<PeerLabel, Counter>,
    errors: Family<PeerErrorLabel, Counter>,
}

impl SpeakerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bgp_session_established",
            "1 while the BGP session with the peer is Established",
            self.established.clone(),
        );
        registry.register(
            "bgp_session_state",
            "BGP session state: 1 Idle, 2 Connect, 3 Active, 4 OpenSent, 5 OpenConfirm, 6 \
             Established",
            self.state.clone(),
        );
        registry.register(
            "bgp_session_state_since_seconds",
            "Unix time the BGP session entered its state (uptime when Established)",
            self.since.clone(),
        );
        registry.register(
            "bgp_prefixes_sent",
            "Prefixes announced to the peer now",
            self.prefixes.clone(),
        );
        registry.register(
            "bgp_updates_sent",
            "UPDATE messages sent to the peer",
            self.updates.clone(),
        );
        registry.register(
            "bgp_session_errors",
            "Failures of the BGP session, by category",
            self.errors.clone(),
        );
    }

    fn label(peer: &str) -> PeerLabel {
        PeerLabel {
            peer: peer.to_string(),
        }
    }

    fn report(&self, report: &SessionReport) {
        let label = Self::label(&report.peer);
        let number = match report.state {
            State::Idle => 1,
            State::Connect => 2,
            State::Active => 3,
            State::OpenSent => 4,
            State::OpenConfirm => 5,
            State::Established => 6,
        };
        self.state.get_or_create(&label).set(number);
        self.established
            .get_or_create(&label)
            .set(i64::from(report.state == State::Established));
        self.since.get_or_create(&label).set(
            report
                .since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
        );
        self.prefixes
            .get_or_create(&label)
            .set(report.prefixes_sent as i64);
    }

    fn updates_sent(&self, peer: &str, n: u64) {
        self.updates.get_or_create(&Self::label(peer)).inc_by(n);
    }

    fn error(&self, peer: &str, category: &str) {
        self.errors
            .get_or_create(&PeerErrorLabel {
                peer: peer.to_string(),
                category: category.to_string(),
            })
            .inc();
    }

    fn forget(&self, peer: &str) {
        let label = Self::label(peer);
        self.established.remove(&label);
        self.state.remove(&label);
        self.since.remove(&label);
        self.prefixes.remove(&label);
    }
}

struct Running {
    setup: PeerSetup,
    routes: watch::Sender<Routes>,
    stop: watch::Sender<bool>,
    report: watch::Receiver<SessionReport>,
    task: JoinHandle<()>,
}

/// The sessions of this node.
pub struct Speaker {
    running: BTreeMap<String, Running>,
    metrics: SpeakerMetrics,
    /// Sessions being stopped (withdrawing), awaited on shutdown.
    stopping: Vec<JoinHandle<()>>,
    /// Woken whenever a session's report changes (the agent then refreshes its Lease note).
    changed: Arc<tokio::sync::Notify>,
}

impl Speaker {
    pub fn new(metrics: SpeakerMetrics, changed: Arc<tokio::sync::Notify>) -> Speaker {
        Speaker {
            running: BTreeMap::new(),
            metrics,
            stopping: Vec::new(),
            changed,
        }
    }

    /// Runs exactly the sessions of `setups`: new peers start, gone ones stop gracefully, a
    /// peer whose settings changed restarts (withdraw, Cease, connect again).
    pub fn set_peers(&mut self, setups: Vec<PeerSetup>) {
        let wanted: BTreeMap<String, PeerSetup> = setups
            .into_iter()
            .map(|s| (s.peer.name.clone(), s))
            .collect();
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(name, running)| {
                wanted
                    .get(*name)
                    .is_none_or(|setup| !same_session(setup, &running.setup))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(running) = self.running.remove(&name) {
                tracing::info!(peer = %name, "stopping the BGP session (peer removed or changed)");
                let _ = running.stop.send(true);
                self.stopping.push(running.task);
                self.metrics.forget(&name);
            }
        }
        self.stopping.retain(|task| !task.is_finished());
        for (name, setup) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            tracing::info!(peer = %name, address = %setup.peer.address, peer_asn = setup.peer.peer_asn, my_asn = setup.peer.my_asn, router_id = %setup.router_id, "starting a BGP session");
            let (routes_tx, routes_rx) = watch::channel(Routes::default());
            let (stop_tx, stop_rx) = watch::channel(false);
            let initial = SessionReport {
                peer: name.clone(),
                address: setup.peer.address,
                state: State::Idle,
                since: SystemTime::now(),
                prefixes_sent: 0,
                updates_sent: 0,
                last_error: None,
            };
            let (report_tx, report_rx) = watch::channel(initial);
            let task = peer::PeerTask::new(setup.clone(), self.metrics.clone());
            let changed = self.changed.clone();
            let mut watched = report_rx.clone();
            tokio::spawn(async move {
                while watched.changed().await.is_ok() {
                    changed.notify_one();
                }
            });
            let handle = tokio::spawn(task.run(peer::PeerInputs {
                routes: routes_rx,
                stop: stop_rx,
                report: report_tx,
            }));
            self.running.insert(
                name,
                Running {
                    setup,
                    routes: routes_tx,
                    stop: stop_tx,
                    report: report_rx,
                    task: handle,
                },
            );
        }
    }

    /// The routes of every peer (peers not named get none).
    pub fn set_routes(&self, routes: &PeerRoutes) {
        for (name, running) in &self.running {
            let wanted = routes.get(name).cloned().unwrap_or_default();
            running.routes.send_if_modified(|current| {
                if **current == wanted {
                    false
                } else {
                    *current = Arc::new(wanted);
                    true
                }
            });
        }
    }

    /// Every session's state, by peer name.
    pub fn reports(&self) -> Vec<SessionReport> {
        self.running
            .values()
            .map(|running| running.report.borrow().clone())
            .collect()
    }

    /// The peers with a session (running).
    pub fn peers(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Stops every session gracefully (withdraw, wait for the acknowledgement, Cease) and
    /// waits for them, at most `timeout`.
    pub async fn shutdown(&mut self, timeout: Duration) {
        for running in self.running.values() {
            let _ = running.stop.send(true);
        }
        let mut tasks: Vec<JoinHandle<()>> = std::mem::take(&mut self.stopping);
        tasks.extend(
            std::mem::take(&mut self.running)
                .into_values()
                .map(|r| r.task),
        );
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!(?timeout, "BGP sessions did not all stop in time");
        }
    }
}

/// Whether two setups are the same session (nothing that needs a reconnect changed). The R
/// bit only matters for the first OPEN, so it does not restart anything.
fn same_session(a: &PeerSetup, b: &PeerSetup) -> bool {
    a.peer == b.peer && a.password == b.password && a.router_id == b.router_id
}

/// The file whose age says whether this agent restarted within the graceful-restart time
/// (its sessions then set the R bit). Touched while sessions run; removed on a graceful stop,
/// which withdraws everything (nothing to preserve).
pub fn restart_marker(state_dir: &Path) -> PathBuf {
    state_dir.join("bgp-running")
}

/// Whether the previous agent on this node ran BGP sessions less than `restart_time` ago and
/// did not stop gracefully.
pub fn restarted_recently(state_dir: &Path, restart_time: Duration) -> bool {
    std::fs::metadata(restart_marker(state_dir))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .is_some_and(|age| age < restart_time)
}
