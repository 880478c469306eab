//! What this node reports on the IPAllocations it owns: `status.announcer` and
//! `status.conflict`.

use super::*;

/// Writes `status.announcer` of every IPAllocation this node announces, when it names
/// another node or interface, and `status.conflict` of those it does not announce because
/// another host on the LAN uses them (cleared when that ends, or when this node announces an
/// address another node had found in conflict). Runs apart from `decide`, so a slow API never
/// delays an announcement.
pub(super) async fn report_announcer(
    client: Client,
    shared: Arc<Shared>,
    announcer: Arc<Share>,
    mut held: watch::Receiver<Held>,
) {
    let api: Api<IPAllocation> = Api::all(client);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    let me = shared.args.node_name.clone();
    loop {
        let snapshot = held.borrow_and_update().clone();
        let active: BTreeMap<IpAddr, SystemTime> = announcer
            .announced()
            .into_iter()
            .map(|a| (a.ip, a.since))
            .collect();
        let conflicts: BTreeMap<IpAddr, Conflict> = announcer
            .conflicts()
            .into_iter()
            .map(|c| (c.ip, c))
            .collect();
        let mut failed = false;
        for (ip, (target, since)) in &snapshot {
            if !held.borrow().contains_key(ip) {
                continue;
            }
            let name = crate::core::names::allocation_name(ip);
            let current = shared
                .allocations
                .get(&reflector::ObjectRef::new(&name))
                .and_then(|guard| guard.0.as_ref().ok().cloned());
            let Some(allocation) = current else { continue };
            let status = allocation.status.unwrap_or_default();
            let patch = match (conflicts.get(ip), &status.conflict) {
                (Some(c), recorded)
                    if recorded.as_ref().is_none_or(|r| {
                        (r.node.as_str(), r.interface.as_str(), r.mac.as_str())
                            != (
                                me.as_str(),
                                c.interface.as_str(),
                                c.mac.to_string().as_str(),
                            )
                    }) =>
                {
                    let since = Timestamp::try_from(c.since).unwrap_or_else(|_| Timestamp::now());
                    Some(serde_json::json!({"status": {"conflict": {
                        "node": me, "interface": c.interface,
                        "mac": c.mac.to_string(), "since": since.to_string(),
                    }}}))
                }
                (Some(_), _) => None,
                (None, Some(r)) if r.node == me || active.contains_key(ip) => {
                    Some(serde_json::json!({"status": {"conflict": null}}))
                }
                (None, _) => None,
            };
            let patch = patch.or_else(|| {
                let recorded = status.announcer.as_ref();
                let announced = active.contains_key(ip) && !conflicts.contains_key(ip);
                let same =
                    recorded.is_some_and(|a| a.node == me && a.interface == target.interface);
                (announced && !same).then(|| {
                    let since = active.get(ip).copied().unwrap_or(*since);
                    let since = Timestamp::try_from(since).unwrap_or_else(|_| Timestamp::now());
                    serde_json::json!({
                        "status": { "announcer": {
                            "node": me,
                            "interface": target.interface,
                            "since": since.to_string(),
                        }}
                    })
                })
            });
            let Some(patch) = patch else { continue };
            match api
                .patch_status(&name, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => AgentMetrics::outcome(&shared.metrics.status_writes, "ok"),
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    AgentMetrics::outcome(&shared.metrics.status_writes, "not_found")
                }
                Err(err) => {
                    AgentMetrics::outcome(&shared.metrics.status_writes, "api_error");
                    tracing::debug!(%ip, error = %err, "writing the IPAllocation status failed; retrying");
                    failed = true;
                    break;
                }
            }
            if held.has_changed().unwrap_or(false) {
                break;
            }
        }
        // Retry failures (and pick up allocations whose status the watch has not shown yet)
        // after a pause; otherwise wait for the next change of what is held.
        // Polling the store (cheap) also catches another node's late write over ours.
        let pause = if failed {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            changed = held.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
