//! The decision loop: ownership from the current view, applied through the announcer, with
//! the standing rules of `core::standing` (frozen, yielding, starting up).

use super::*;

/// What this node announces and since when (for status.announcer).
pub(super) type Held = BTreeMap<IpAddr, (Target, SystemTime)>;

/// Computes ownership on every change and at every deadline, and hands this node's share to
/// the announcer. Frozen (nothing gained or lost) while this node's own Lease is stale or the
/// lease watch is down: the data plane outlives the control plane.
pub(super) async fn decide(
    shared: Arc<Shared>,
    announcer: Arc<Share>,
    speaker: Arc<tokio::sync::Mutex<Speaker>>,
    report: watch::Sender<Held>,
    mut stop: watch::Receiver<bool>,
) {
    let me = shared.args.node_name.clone();
    let mut held: Held = BTreeMap::new();
    let mut applied = false;
    let mut was_frozen = false;
    let mut retry_at: Option<Instant> = None;
    let mut known_macs = BTreeSet::new();
    loop {
        // The cluster's agents, by MAC: their announcements are takeovers, not conflicts.
        let macs: BTreeSet<MacAddr> = lock(&shared.leases)
            .facts
            .values()
            .flat_map(|f| f.macs.iter().copied())
            .collect();
        if macs != known_macs {
            announcer.set_known_macs(macs.clone());
            known_macs = macs;
        }
        let own_healthy = shared.own_lease_healthy();
        let watch_ok = shared.lease_watch_ok.load(Ordering::Acquire);
        let (own_lapsed, first_renewal_settled, renewal_failing) = {
            let own = lock(&shared.own);
            (
                own.renewed
                    .is_none_or(|at| at.elapsed() >= shared.args.lease_duration),
                own.first_renewed
                    .is_some_and(|at| at.elapsed() >= shared.args.renew_interval),
                own.failing,
            )
        };
        let verdict = standing::verdict(&Standing {
            needs_lease: shared.needs_lease(),
            own_lapsed,
            own_healthy,
            lease_watch_ok: watch_ok,
            applied,
            first_renewal_settled,
            renewal_failing,
        });
        announcer.set_yield_to_others(verdict.yield_to_others);
        let frozen = verdict.frozen;
        if was_frozen && !frozen {
            // Back from an outage: renewals of the others may have been missed meanwhile, so
            // every Lease gets a full duration before anything moves.
            lock(&shared.leases).liveness.refresh_all(shared.now());
            tracing::info!("lease renewals and the lease watch are back: ownership unfrozen");
        } else if frozen && !was_frozen && applied {
            tracing::warn!(
                own_lease_healthy = own_healthy,
                lease_watch_ok = watch_ok,
                "ownership frozen: keeping what this node announces"
            );
        }
        was_frozen = frozen;
        shared.metrics.frozen.set(i64::from(frozen));
        if verdict.announce != Announce::Keep {
            // BGP: every eligible node announces; nothing is elected. Sessions stay up even
            // when this node may announce nothing (its Lease lapsed): only routes go.
            // The address views are built once per pass, for BGP and L2 alike.
            let addresses = if verdict.announce == Announce::Nothing {
                Vec::new()
            } else {
                shared.address_views()
            };
            let (peers, announcements) = shared.bgp_config();
            let setups = shared.bgp_setups(&peers, &announcements);
            let routes = if setups.is_empty() {
                Default::default()
            } else {
                shared.bgp_routes(&peers, &announcements, &addresses)
            };
            {
                let mut speaker = speaker.lock().await;
                speaker.set_peers(setups);
                speaker.set_routes(&routes);
            }
            let desired: BTreeMap<IpAddr, Target> = if verdict.announce == Announce::Nothing {
                BTreeMap::new()
            } else {
                shared
                    .owners(&addresses)
                    .into_iter()
                    .filter(|(_, owner)| owner.node == me)
                    .map(|(ip, owner)| {
                        (
                            ip,
                            Target {
                                interface: owner.interface,
                                mode: owner.mode,
                                probe_first: shared.never_announced(ip),
                            },
                        )
                    })
                    .collect()
            };
            let current: BTreeMap<IpAddr, Target> =
                held.iter().map(|(ip, (t, _))| (*ip, t.clone())).collect();
            if desired != current || !applied || retry_at.is_some() {
                match announcer.set(desired.clone()).await {
                    Ok(()) => {
                        retry_at = None;
                        applied = true;
                        let now = SystemTime::now();
                        let mut gained = 0u64;
                        let mut lost = 0u64;
                        for (ip, target) in &desired {
                            if current.get(ip) != Some(target) {
                                gained += 1;
                                tracing::info!(%ip, interface = %target.interface, mode = target.mode.as_str(), "this node owns the address");
                                held.insert(*ip, (target.clone(), now));
                            }
                        }
                        for ip in current.keys().filter(|ip| !desired.contains_key(ip)) {
                            lost += 1;
                            tracing::info!(%ip, "this node no longer owns the address");
                        }
                        held.retain(|ip, _| desired.contains_key(ip));
                        count_changes(&shared.metrics, gained, lost);
                        shared.metrics.owned_addresses.set(held.len() as i64);
                        let _ = report.send(held.clone());
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, category = err.category(), "applying announcements failed; retrying");
                        retry_at = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        }
        let mut deadline = shared.next_deadline();
        if let Some(at) = retry_at {
            deadline = deadline.min(at);
        }
        tokio::select! {
            _ = shared.changed.notified() => {
                // Let a burst of watch events land before computing again.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = stop.changed() => return,
        }
    }
}

pub(super) fn count_changes(metrics: &AgentMetrics, gained: u64, lost: u64) {
    for (change, n) in [("gained", gained), ("lost", lost)] {
        if n > 0 {
            metrics
                .ownership_changes
                .get_or_create(&ChangeLabel {
                    change: change.to_string(),
                })
                .inc_by(n);
        }
    }
}
