//! BGP in the agent's loop: the BGPPeers and BGPAnnouncements that concern this node, the
//! sessions they call for (router ID, MD5 passwords from Secrets), the routes of each peer,
//! and the sessions' state for the Lease note. Decisions come from `core::bgp::announce`.

use super::*;

use k8s_openapi::api::core::v1::Secret;

use crate::agent::speaker::PeerSetup;
use crate::core::bgp::announce::PeerRoutes;
use crate::core::bgp::config::{Announcement, Peer};

/// (namespace, name, key) of a Secret holding an MD5 password.
pub(super) type SecretKey = (String, String, String);

pub(super) use crate::api::view::BGP_SESSIONS_ANNOTATION;

/// How long a graceful stop may take for all sessions together.
pub(super) const BGP_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the MD5 passwords are read again (a rotated password takes effect then).
const PASSWORD_REFRESH: Duration = Duration::from_secs(60);

/// How often the restart marker is touched while sessions are Established.
const MARKER_TOUCH: Duration = Duration::from_secs(10);

impl Shared {
    /// Valid BGPPeers and BGPAnnouncements; invalid ones are skipped (the controller reports
    /// them).
    pub(super) fn bgp_config(&self) -> (Vec<Peer>, Vec<Announcement>) {
        let peers = valid(&self.bgp_peers)
            .iter()
            .filter_map(|p| match crate::api::bgp_peer(p) {
                Ok(peer) => Some(peer),
                Err(err) => {
                    tracing::debug!(error = %err, "skipping an invalid BGPPeer");
                    None
                }
            })
            .collect();
        let announcements = valid(&self.bgp_announcements)
            .iter()
            .filter_map(|a| match crate::api::bgp_announcement(a) {
                Ok(announcement) => Some(announcement),
                Err(err) => {
                    tracing::debug!(error = %err, "skipping an invalid BGPAnnouncement");
                    None
                }
            })
            .collect();
        (peers, announcements)
    }

    /// The sessions this node runs: every BGPPeer selecting it, while some BGPAnnouncement
    /// selects it too. A peer whose password cannot be read is left out (logged); without a
    /// router ID there are no sessions (logged).
    pub(super) fn bgp_setups(
        &self,
        peers: &[Peer],
        announcements: &[Announcement],
    ) -> Vec<PeerSetup> {
        let Some(node) = self.own_node() else {
            return Vec::new();
        };
        if !announce::peers_with(&node, peers, announcements) {
            return Vec::new();
        }
        let Some(own) = self
            .nodes
            .get(&reflector::ObjectRef::new(&self.args.node_name))
        else {
            return Vec::new();
        };
        let router_id = match view::router_id(&own) {
            Ok(id) => id,
            Err(reason) => {
                tracing::warn!(%reason, "no BGP router ID: no sessions");
                return Vec::new();
            }
        };
        let passwords = lock(&self.passwords);
        peers
            .iter()
            .filter(|p| p.selects_node(&node.labels))
            .filter_map(|peer| {
                let password = match &peer.password_secret_ref {
                    None => None,
                    Some(key) => match passwords.get(key) {
                        Some(Ok(password)) => Some(password.clone()),
                        Some(Err(reason)) => {
                            tracing::warn!(peer = %peer.name, %reason, "no session: the MD5 password cannot be read");
                            return None;
                        }
                        // Not read yet: the password task wakes the loop when it is.
                        None => return None,
                    },
                };
                Some(PeerSetup {
                    peer: peer.clone(),
                    password,
                    router_id,
                    // The R bit says "I restarted": only sessions opened within the restart
                    // time of this process starting carry it.
                    restarted: self.bgp_restarted
                        && self.epoch.elapsed()
                            < Duration::from_secs(u64::from(
                                crate::core::bgp::config::RESTART_TIME,
                            )),
                })
            })
            .collect()
    }

    /// The routes this node announces among `addresses`, per peer.
    pub(super) fn bgp_routes(
        &self,
        peers: &[Peer],
        announcements: &[Announcement],
        addresses: &[ownership::AddressView],
    ) -> PeerRoutes {
        let Some(node) = self.own_node() else {
            return PeerRoutes::new();
        };
        announce::node_routes(&node, peers, announcements, addresses)
    }
}

/// Reads the MD5 passwords the BGPPeers name, at once when a new one is named and every
/// minute (rotation). The agent may read only `vipam-bgp-passwords` unless given more (RBAC).
pub(super) async fn fetch_passwords(client: Client, shared: Arc<Shared>) {
    let mut last_full = Instant::now();
    loop {
        let (peers, _) = shared.bgp_config();
        let wanted: BTreeSet<SecretKey> = peers
            .iter()
            .filter_map(|p| p.password_secret_ref.clone())
            .collect();
        let refresh_all = last_full.elapsed() >= PASSWORD_REFRESH;
        if refresh_all {
            last_full = Instant::now();
        }
        let missing: Vec<SecretKey> = {
            let mut passwords = lock(&shared.passwords);
            passwords.retain(|key, _| wanted.contains(key));
            wanted
                .iter()
                .filter(|key| refresh_all || !passwords.contains_key(*key))
                .cloned()
                .collect()
        };
        let mut changed = false;
        for key in missing {
            let (namespace, name, field) = &key;
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let result = match api.get(name).await {
                Ok(secret) => secret
                    .data
                    .and_then(|mut data| data.remove(field))
                    .map(|bytes| bytes.0)
                    .ok_or_else(|| format!("Secret {namespace}/{name} has no key {field:?}")),
                Err(err) => Err(format!("reading Secret {namespace}/{name}: {err}")),
            };
            let mut passwords = lock(&shared.passwords);
            if passwords.get(&key) != Some(&result) {
                if let Err(reason) = &result {
                    tracing::warn!(%reason, "cannot read a BGP MD5 password");
                }
                passwords.insert(key, result);
                changed = true;
            }
        }
        if changed {
            shared.changed.notify_one();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Keeps the Lease note of the sessions up to date, and the restart marker touched while a
/// session is Established.
pub(super) async fn note_sessions(
    shared: Arc<Shared>,
    speaker: Arc<tokio::sync::Mutex<Speaker>>,
    changed: Arc<Notify>,
) {
    let marker = speaker::restart_marker(&shared.args.state_dir);
    let mut touched: Option<Instant> = None;
    loop {
        let reports = speaker.lock().await.reports();
        let notes: Vec<SessionNote> = reports.iter().map(SessionNote::from).collect();
        *lock(&shared.bgp_notes) = notes;
        let established = reports
            .iter()
            .any(|r| r.state == crate::core::bgp::session::State::Established);
        if established && touched.is_none_or(|at| at.elapsed() >= MARKER_TOUCH) {
            // Blocking file I/O off the runtime threads.
            let marker = marker.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(dir) = marker.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                std::fs::write(&marker, b"vipam agent with BGP sessions\n")
            })
            .await;
            touched = Some(Instant::now());
        }
        tokio::select! {
            _ = changed.notified() => {}
            _ = tokio::time::sleep(MARKER_TOUCH) => {}
        }
    }
}
