//! This node's liveness Lease (renewal, release, what it tells the others) and the watch on
//! every agent's Lease.

use super::*;

/// Watches the agents' Leases: every new resourceVersion is a sign of life, judged by this
/// agent's clock. After a watch error, the first event back refreshes every Lease (renewals
/// may have been missed meanwhile), and ownership stays frozen until then.
pub(super) async fn watch_leases(client: Client, shared: Arc<Shared>, synced: Arc<Notify>) {
    let api: Api<Lease> = Api::namespaced(client, &shared.args.namespace);
    let config = watcher::Config::default().labels(&format!("{AGENT_LEASE_LABEL}=true"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut relisting: Option<BTreeSet<String>> = None;
    let mut after_error = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                if shared.lease_watch_ok.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %err, "lease watch failed: ownership frozen until it is back");
                }
                after_error = true;
                shared.changed.notify_one();
                continue;
            }
        };
        let now = shared.now();
        let fallback = shared.args.lease_duration;
        let mut relevant = true;
        let mut after_refresh = false;
        {
            let mut book = lock(&shared.leases);
            if after_error {
                book.liveness.refresh_all(now);
                after_error = false;
                after_refresh = true;
            }
            // Whether ownership may change: a node became live or not, or what it reports
            // changed. A renewal of a live Lease changes nothing (expiry has its deadline).
            let apply = |book: &mut LeaseBook, lease: &Lease| -> bool {
                let Some(facts) = view::lease_facts(lease, fallback) else {
                    return false;
                };
                let was_live = book.liveness.is_live(&facts.node, now);
                book.liveness
                    .observe(&facts.node, &facts.version, facts.duration, facts.held, now);
                let is_live = book.liveness.is_live(&facts.node, now);
                let same = book.facts.get(&facts.node).is_some_and(|old| {
                    (
                        &old.interfaces,
                        &old.default_interface,
                        old.held,
                        old.duration,
                        &old.macs,
                    ) == (
                        &facts.interfaces,
                        &facts.default_interface,
                        facts.held,
                        facts.duration,
                        &facts.macs,
                    )
                });
                book.facts.insert(facts.node.clone(), facts);
                was_live != is_live || !same
            };
            match event {
                watcher::Event::Init => relisting = Some(BTreeSet::new()),
                watcher::Event::InitApply(lease) => {
                    if let (Some(seen), Some(facts)) =
                        (relisting.as_mut(), view::lease_facts(&lease, fallback))
                    {
                        seen.insert(facts.node);
                    }
                    relevant = apply(&mut book, &lease);
                }
                watcher::Event::InitDone => {
                    if let Some(seen) = relisting.take() {
                        let gone: Vec<String> = book
                            .facts
                            .keys()
                            .filter(|n| !seen.contains(*n))
                            .cloned()
                            .collect();
                        for node in gone {
                            book.facts.remove(&node);
                            book.liveness.forget(&node);
                        }
                    }
                    shared.lease_watch_ok.store(true, Ordering::Release);
                    synced.notify_waiters();
                }
                watcher::Event::Apply(lease) => {
                    relevant = apply(&mut book, &lease);
                    shared.lease_watch_ok.store(true, Ordering::Release);
                }
                watcher::Event::Delete(lease) => {
                    if let Some(facts) = view::lease_facts(&lease, fallback) {
                        book.facts.remove(&facts.node);
                        book.liveness.forget(&facts.node);
                    }
                    shared.lease_watch_ok.store(true, Ordering::Release);
                }
            }
        }
        if relevant || after_refresh {
            shared.changed.notify_one();
        }
    }
}

/// The interfaces this node can announce on now (Ethernet address, up, carrier) and the
/// default route's interface when it is one of them.
pub(super) fn usable_interfaces(net: &NetState) -> (Vec<String>, Option<String>) {
    let usable = net.usable();
    let default = net
        .default_interface
        .clone()
        .filter(|name| usable.contains(name));
    (usable, default)
}

/// The Lease this node's agent writes.
pub(super) fn lease_object(shared: &Shared) -> Lease {
    let args = &shared.args;
    let net = shared.links.get().map(LinkWatch::current);
    let (interfaces, default) = net.as_deref().map(usable_interfaces).unwrap_or_default();
    let default = default.unwrap_or_default();
    let macs: BTreeSet<String> = net
        .iter()
        .flat_map(|net| net.interfaces.iter())
        .filter(|i| i.usable())
        .filter_map(|i| i.mac.map(|m| m.to_string()))
        .collect();
    let mut lease = crate::lease::write(
        None,
        &view::lease_name(&args.node_name),
        &args.namespace,
        Some(&args.node_name),
        args.lease_duration,
        Timestamp::now(),
    );
    lease.metadata.labels = Some(BTreeMap::from([(
        AGENT_LEASE_LABEL.to_string(),
        "true".to_string(),
    )]));
    lease.metadata.annotations.get_or_insert_default().extend([
        (INTERFACES_ANNOTATION.to_string(), interfaces.join(",")),
        (DEFAULT_INTERFACE_ANNOTATION.to_string(), default),
        (
            MACS_ANNOTATION.to_string(),
            macs.into_iter().collect::<Vec<_>>().join(","),
        ),
        (
            BGP_SESSIONS_ANNOTATION.to_string(),
            serde_json::to_string(&*lock(&shared.bgp_notes)).unwrap_or_else(|_| "[]".into()),
        ),
    ]);
    // A renewal is a merge patch of this object: it must not move acquireTime or the count of
    // transitions (set once, when the Lease is created).
    if let Some(spec) = lease.spec.as_mut() {
        spec.acquire_time = None;
        spec.lease_transitions = None;
    }
    lease
}

/// One renewal: a merge patch (one API write), or a create the first time.
pub(super) async fn renew_once(api: &Api<Lease>, shared: &Shared) -> Result<(), kube::Error> {
    let lease = lease_object(shared);
    let name = lease.metadata.name.clone().unwrap_or_default();
    let params = PatchParams::default();
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..params
    };
    match api.patch(&name, &params, &Patch::Merge(&lease)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let mut lease = lease;
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.acquire_time = spec.renew_time.clone();
            spec.lease_transitions = Some(0);
            let post = PostParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PostParams::default()
            };
            api.create(&post, &lease).await.map(|_| ())
        }
        Err(err) => Err(err),
    }
}

/// Renews this node's Lease every --renew-interval while some L2Announcement selects the node
/// (API writes per second = eligible nodes / renew interval, whatever the number of Services),
/// and at once when the usable interfaces change (a link lost or regained carrier), so the
/// other agents move this node's addresses without waiting for the Lease to expire.
pub(super) async fn renew_lease(
    client: Client,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &shared.args.namespace);
    let mut tick = tokio::time::interval(shared.args.renew_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut net = shared.links.get().map(LinkWatch::subscribe);
    let mut written = net
        .as_ref()
        .map(|net| usable_interfaces(&net.borrow()))
        .unwrap_or_default();
    loop {
        let links_changed = async {
            match net.as_mut() {
                Some(net) => net.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            ok = links_changed => {
                if !ok {
                    net = None;
                    continue;
                }
                let now = net
                    .as_mut()
                    .map(|net| usable_interfaces(&net.borrow_and_update()))
                    .unwrap_or_default();
                if now == written {
                    continue;
                }
                tracing::info!(usable = ?now.0, default = ?now.1, "usable interfaces changed: renewing the lease at once");
                written = now;
                // This node's own view follows the links at once.
                shared.changed.notify_one();
                tick.reset();
            }
            _ = stop.changed() => return,
        }
        if !shared.needs_lease() {
            let held = lock(&shared.own).held;
            if held {
                tracing::info!("no L2Announcement selects this node any more: releasing its lease");
                release_lease_api(&api, &shared).await;
            }
            continue;
        }
        let started = Instant::now();
        lock(&shared.own).in_flight = Some(started);
        // A renewal slower than the interval is as good as failed: the next one starts fresh.
        let limit = shared.args.renew_interval.max(Duration::from_millis(500));
        let result = tokio::time::timeout(limit, renew_once(&api, &shared)).await;
        // Ownership is computed again only when the lease's health changes (or on the first
        // renewal); a routine renewal changes nothing.
        let health_changed = {
            let mut own = lock(&shared.own);
            own.in_flight = None;
            let failing_now = !matches!(result, Ok(Ok(())));
            let changed = own.failing != failing_now || own.first_renewed.is_none();
            own.failing = failing_now;
            changed
        };
        match result {
            Ok(Ok(())) => {
                shared
                    .metrics
                    .lease_renew_seconds
                    .observe(started.elapsed().as_secs_f64());
                AgentMetrics::outcome(&shared.metrics.lease_renewals, "ok");
                let mut own = lock(&shared.own);
                own.renewed = Some(started);
                own.first_renewed.get_or_insert(started);
                own.held = true;
                if failing {
                    tracing::info!("lease renewed again");
                    failing = false;
                }
            }
            Ok(Err(err)) => {
                AgentMetrics::outcome(&shared.metrics.lease_renewals, "api_error");
                if !failing {
                    tracing::warn!(error = %err, "renewing this node's lease failed; keeping what is announced");
                    failing = true;
                }
            }
            Err(_) => {
                AgentMetrics::outcome(&shared.metrics.lease_renewals, "timeout");
                if !failing {
                    tracing::warn!(
                        "renewing this node's lease timed out; keeping what is announced"
                    );
                    failing = true;
                }
            }
        }
        if health_changed {
            shared.changed.notify_one();
        }
    }
}

pub(super) async fn release_lease_api(api: &Api<Lease>, shared: &Shared) {
    let name = view::lease_name(&shared.args.node_name);
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(err) => tracing::warn!(error = %err, "releasing this node's lease"),
    }
    let mut own = lock(&shared.own);
    own.held = false;
    own.renewed = None;
}

/// Gives up this node's Lease (bounded: at shutdown the API may be unreachable).
pub(super) async fn release_lease(client: &Client, shared: &Shared) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &shared.args.namespace);
    if tokio::time::timeout(Duration::from_secs(1), release_lease_api(&api, shared))
        .await
        .is_err()
    {
        tracing::warn!(
            "releasing this node's lease timed out; the others take over when it expires"
        );
    }
}
