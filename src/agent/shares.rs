//! One [`Announcer`] for several parts of one process.
//!
//! The Service announcer and the control-plane VIP may run in one process. They must share one
//! announcer: its marker and record of "addresses of ours" are per node, so two announcers
//! would each remove the other's addresses as leftovers. Each part sets its own share of the
//! desired addresses through a [`Share`]; the announcer gets the union.
//!
//! - An address wanted by two parts with different targets goes to the part registered first
//!   (the control plane), with a warning.
//! - Yielding to other announcers (see [`Announcer::set_yield_to_others`]) is on while any part
//!   asks for it: the announcer has one switch for all its addresses.
//! - The announcer's first `set` removes what a previous run left behind. So that one part's
//!   first decision cannot remove another part's leftovers (and interrupt its traffic), the
//!   first union is applied only once every part has decided, or [`FIRST_DECISION_GRACE`] after
//!   the first part did (a part that cannot decide, e.g. because its CRDs are missing, does not
//!   hold the others back for ever).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::agent::announcer::{Announced, Announcer, Target};
use crate::agent::net::NetError;

/// How long the first union waits for parts that have not decided yet, from the first decision.
pub const FIRST_DECISION_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Part {
    name: &'static str,
    /// None until the part's first `set`.
    desired: Option<BTreeMap<IpAddr, Target>>,
    yield_to_others: bool,
}

#[derive(Debug)]
struct PartsState {
    parts: Vec<Part>,
    first_decision: Option<Instant>,
}

/// The announcer and the parts sharing it.
#[derive(Debug)]
pub struct AnnouncerShares {
    announcer: Announcer,
    state: Mutex<PartsState>,
    /// Serializes the underlying `set` calls, so the last one applies the latest union.
    applying: tokio::sync::Mutex<()>,
    decided: Notify,
    released: AtomicBool,
}

/// One part's handle: the same calls as [`Announcer`], for this part's addresses only.
#[derive(Debug, Clone)]
pub struct Share {
    shares: Arc<AnnouncerShares>,
    index: usize,
}

impl AnnouncerShares {
    /// Shares `announcer` between `parts` (in priority order); returns one [`Share`] per part.
    pub fn new(announcer: Announcer, parts: &[&'static str]) -> (Arc<AnnouncerShares>, Vec<Share>) {
        let shares = Arc::new(AnnouncerShares {
            announcer,
            state: Mutex::new(PartsState {
                parts: parts
                    .iter()
                    .map(|name| Part {
                        name,
                        desired: None,
                        yield_to_others: false,
                    })
                    .collect(),
                first_decision: None,
            }),
            applying: tokio::sync::Mutex::new(()),
            decided: Notify::new(),
            released: AtomicBool::new(false),
        });
        let handles = (0..parts.len())
            .map(|index| Share {
                shares: shares.clone(),
                index,
            })
            .collect();
        (shares, handles)
    }

    fn lock(&self) -> MutexGuard<'_, PartsState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// See [`Announcer::wait_claimed_by_others`] (every address, whichever part wanted it).
    pub async fn wait_claimed_by_others(&self, timeout: Duration) -> Vec<IpAddr> {
        self.announcer.wait_claimed_by_others(timeout).await
    }

    /// See [`Announcer::shutdown`]: removes every address of ours.
    pub async fn shutdown(&self) -> Result<(), NetError> {
        let _guard = self.applying.lock().await;
        self.released.store(true, Ordering::Release);
        self.announcer.shutdown().await
    }

    /// Everything announced now, by every part.
    pub fn announced(&self) -> Vec<Announced> {
        self.announcer.announced()
    }

    /// The end of a graceful handover, once the Leases are released: keep answering until the
    /// new owners announced every address (at most `timeout`), then remove ours.
    pub async fn hand_over(&self, timeout: Duration, started: std::time::Instant) {
        let held = self.announced().len();
        let claimed = self.wait_claimed_by_others(timeout).await;
        tracing::info!(
            held,
            claimed = claimed.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "handover done"
        );
        if let Err(err) = self.shutdown().await {
            tracing::warn!(error = %err, "removing addresses at shutdown");
        }
    }

    /// The union of the parts' desired addresses; None while the first union must wait.
    fn union(&self, st: &PartsState) -> Option<BTreeMap<IpAddr, Target>> {
        let undecided: Vec<&str> = st
            .parts
            .iter()
            .filter(|p| p.desired.is_none())
            .map(|p| p.name)
            .collect();
        if !undecided.is_empty() {
            let first = st.first_decision?;
            if first.elapsed() < FIRST_DECISION_GRACE {
                return None;
            }
            tracing::warn!(parts = ?undecided, "applying announcements without parts that have not decided yet");
        }
        let mut union: BTreeMap<IpAddr, Target> = BTreeMap::new();
        for part in &st.parts {
            for (ip, target) in part.desired.iter().flatten() {
                match union.get(ip) {
                    Some(existing) if existing != target => tracing::warn!(
                        %ip, part = part.name,
                        "address wanted by two parts with different targets; the first part's wins"
                    ),
                    Some(_) => {}
                    None => {
                        union.insert(*ip, target.clone());
                    }
                }
            }
        }
        Some(union)
    }
}

impl Share {
    /// The node's links, as the shared announcer sees them.
    pub fn links(&self) -> &crate::agent::net::links::LinkWatch {
        self.shares.announcer.links()
    }

    /// Sets this part's desired addresses and applies the union (see [`Announcer::set`]).
    /// The first call may wait for the other parts' first decisions (module documentation).
    pub async fn set(&self, desired: BTreeMap<IpAddr, Target>) -> Result<(), NetError> {
        {
            let mut st = self.shares.lock();
            st.parts[self.index].desired = Some(desired);
            st.first_decision.get_or_insert_with(Instant::now);
        }
        self.shares.decided.notify_waiters();
        let union = loop {
            let notified = self.shares.decided.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (union, first) = {
                let st = self.shares.lock();
                (self.shares.union(&st), st.first_decision)
            };
            if let Some(union) = union {
                break union;
            }
            let until = first.unwrap_or_else(Instant::now) + FIRST_DECISION_GRACE;
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        };
        let _guard = self.shares.applying.lock().await;
        if self.shares.released.load(Ordering::Acquire) {
            return Err(NetError::Stopped);
        }
        // Another part may have changed its share while this one waited: apply the latest.
        let latest = self.shares.union(&self.shares.lock()).unwrap_or(union);
        self.shares.announcer.set(latest).await
    }

    /// This part asks the announcer to yield its addresses to other announcers (or stops
    /// asking); see [`Announcer::set_yield_to_others`]. On while any part asks.
    pub fn set_yield_to_others(&self, yield_: bool) {
        let any = {
            let mut st = self.shares.lock();
            st.parts[self.index].yield_to_others = yield_;
            st.parts.iter().any(|p| p.yield_to_others)
        };
        self.shares.announcer.set_yield_to_others(any);
    }

    /// See [`Announcer::set_known_macs`] (one set for every part: the cluster's agents).
    pub fn set_known_macs(
        &self,
        macs: std::collections::BTreeSet<crate::agent::net::packet::MacAddr>,
    ) {
        self.shares.announcer.set_known_macs(macs);
    }

    /// See [`Announcer::conflicts`].
    pub fn conflicts(&self) -> Vec<crate::agent::announcer::Conflict> {
        self.shares.announcer.conflicts()
    }

    /// What is announced now among this part's desired addresses.
    pub fn announced(&self) -> Vec<Announced> {
        let mine: Vec<IpAddr> = self.shares.lock().parts[self.index]
            .desired
            .iter()
            .flatten()
            .map(|(ip, _)| *ip)
            .collect();
        self.shares
            .announcer
            .announced()
            .into_iter()
            .filter(|a| mine.contains(&a.ip))
            .collect()
    }

    /// The announcer behind this share.
    pub fn shares(&self) -> &Arc<AnnouncerShares> {
        &self.shares
    }
}
