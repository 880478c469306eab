//! Admission of LoadBalancer Services: decide the addresses (pure core), reserve them in the
//! ledger, and answer with a JSON patch setting `vipam.io/assigned-ips`, or a refusal that names
//! what conflicts.

use std::net::IpAddr;

use json_patch::{AddOperation, Patch, PatchOperation};
use jsonptr::PointerBuf;
use k8s_openapi::api::core::v1::Service;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::ledger::{Snapshot, plan_writes};
use super::{Outcome, WebhookState};
use crate::api::service_view;
use crate::core::allocate::{Decision, Denial, DenialKind, current_assignment, decide, same_claim};
use crate::core::category::Category;
use crate::core::range::format_ranges;
use crate::core::request::{
    ANN_ASSIGNED_IPS, ANN_IPS, Request, SPEC_LOAD_BALANCER_IP, format_ip_list, parse_ip_list,
};

/// How many times a decision is retried after losing a race to another writer.
const MAX_ATTEMPTS: usize = 64;

/// Answers one Service admission request.
pub async fn admit(state: &WebhookState, req: &AdmissionRequest<Service>) -> Outcome {
    let response = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Outcome::allowed(response, "not_create_or_update");
    }
    let Some(service) = req.object.as_ref() else {
        return Outcome::denied(
            response,
            "malformed_review",
            "the review carries no object".into(),
        );
    };
    if req.operation == Operation::Update && req.old_object.is_none() {
        return Outcome::denied(
            response,
            "malformed_review",
            "malformed review: an UPDATE without oldObject".into(),
        );
    }
    let mut view = service_view(service);
    if service
        .metadata
        .namespace
        .as_deref()
        .unwrap_or("")
        .is_empty()
    {
        view.namespace = req.namespace.clone().unwrap_or_else(|| "default".into());
    }
    if view.name.is_empty() {
        view.name = req.name.clone();
    }
    let request = match view.request(&state.policy) {
        Ok(None) => return Outcome::allowed(response, "not_ours"),
        Ok(Some(request)) => request,
        Err(err) => {
            let label = err.category();
            return Outcome::denied(response, label, err.to_string());
        }
    };
    if !state.ledger.caches().is_synced() {
        // Deciding against an empty ledger could hand out an address twice.
        return Outcome::denied(
            response,
            "not_ready",
            "vipam is starting and has not read the allocation ledger yet; retry".into(),
        );
    }
    if request.service.name.is_empty() {
        // generateName: the name is chosen after admission; the controller assigns later.
        return Outcome::allowed(response, "generate_name").warn(
            "vipam: a Service created with generateName gets its address from the controller \
             once it has a name"
                .into(),
        );
    }
    // An UPDATE that changes nothing vipam reads gets the same answer as before, whatever pool
    // edits happened meanwhile (they never renumber a live Service).
    let unchanged = req.operation == Operation::Update
        && req
            .old_object
            .as_ref()
            .and_then(|old| {
                let mut old_view = service_view(old);
                old_view.namespace = view.namespace.clone();
                old_view.name = view.name.clone();
                old_view.request(&state.policy).ok().flatten()
            })
            .is_some_and(|old| same_claim(&old, &request));
    let ctx = state.context();
    let mut last_race = String::new();
    let mut pools_checked = false;
    for _ in 0..MAX_ATTEMPTS {
        let (decided, writes) = state.ledger.plan(req.dry_run, |snapshot| {
            let decided = match current_assignment(&request, snapshot.ledger) {
                Some(kept) if unchanged => Ok((kept.clone(), warnings(&request, &kept, snapshot))),
                _ => decide_with_checks(req, &request, snapshot, &ctx),
            };
            let writes = match &decided {
                Ok((decision, _)) => plan_writes(&request, decision, snapshot),
                Err(_) => Vec::new(),
            };
            (decided, writes)
        });
        let (decision, warnings) = match decided {
            Ok(ok) => ok,
            Err((kind, message)) => {
                // A refusal that depends on the pools is given only against pools as fresh
                // as the API server's (the cache can trail a pool applied a moment before).
                let about_pools = matches!(
                    kind,
                    "unknown_pool" | "no_pool" | "pin_outside_pools" | "pool_exhausted"
                );
                if about_pools && !pools_checked {
                    pools_checked = true;
                    if state.ledger.pools_caught_up().await {
                        continue;
                    }
                }
                return Outcome::denied(response, kind, message);
            }
        };
        if !req.dry_run
            && let Err(err) = state.ledger.execute(&writes).await
        {
            match err {
                super::ledger::WriteError::Raced(name) => {
                    last_race = name;
                    continue;
                }
                other => {
                    let label = other.category();
                    return Outcome::denied(
                        response,
                        label,
                        format!("vipam could not record the allocation: {other}; retry"),
                    );
                }
            }
        }
        let mut outcome = match response
            .clone()
            .with_patch(annotation_patch(service, &decision))
        {
            Ok(response) => Outcome::allowed(response, "assigned"),
            Err(err) => Outcome::denied(response, "internal", err.to_string()),
        };
        for warning in warnings {
            outcome = outcome.warn(warning);
        }
        return outcome;
    }
    Outcome::denied(
        response,
        "contention",
        format!(
            "vipam lost {MAX_ATTEMPTS} races in a row recording the allocation (last on \
             IPAllocation {last_race}); retry"
        ),
    )
}

type Decided = Result<(Decision, Vec<String>), (&'static str, String)>;

fn decide_with_checks(
    req: &AdmissionRequest<Service>,
    request: &Request,
    snapshot: &Snapshot<'_>,
    ctx: &crate::core::allocate::Context,
) -> Decided {
    // On CREATE, an assigned-ips value the ledger does not back is refused: only vipam writes it.
    if req.operation == Operation::Create
        && let Some(raw) = &request.assigned_annotation
    {
        let claimed = parse_ip_list(ANN_ASSIGNED_IPS, raw).unwrap_or_default();
        let backed: Vec<IpAddr> = snapshot
            .ledger
            .entries_of(&request.service)
            .filter(|e| !e.is_released() || e.is_reserved(ctx))
            .map(|e| e.ip)
            .collect();
        if claimed.is_empty() || claimed.iter().any(|ip| !backed.contains(ip)) {
            return Err((
                "assigned_ips_not_backed",
                format!(
                    "{ANN_ASSIGNED_IPS} ({raw}) is written by vipam and no allocation of \
                     {} backs it; remove it and pin the address with {ANN_IPS} instead",
                    request.service
                ),
            ));
        }
    }
    let decision = decide(request, snapshot.pools, snapshot.ledger, ctx)
        .map_err(|denial| (denial.kind.category(), explain(&denial, request, snapshot)))?;
    Ok((decision.clone(), warnings(request, &decision, snapshot)))
}

/// The denial message, with who holds the address since when and where free addresses are.
fn explain(denial: &Denial, request: &Request, snapshot: &Snapshot<'_>) -> String {
    let mut message = denial.message.clone();
    let conflict = matches!(
        denial.kind,
        DenialKind::IpInUse
            | DenialKind::PortClash
            | DenialKind::CrossNamespace
            | DenialKind::SelectorMismatch
            | DenialKind::Reserved
    );
    if !conflict {
        return message;
    }
    let Some(pin) = request.pins.as_ref().and_then(|p| p.value.first()) else {
        return message;
    };
    if let Some(since) = snapshot
        .objects
        .get(pin)
        .and_then(|o| o.metadata.creation_timestamp.as_ref())
    {
        message.push_str(&format!(" (allocated since {})", since.0));
    }
    if let Some(pool) = snapshot.pools.pool_of(pin) {
        let (free, more) = pool.free_ranges(snapshot.ledger.used(), 8);
        let free = if free.is_empty() {
            "none".to_string()
        } else {
            format!(
                "{}{}",
                format_ranges(&free),
                if more { ", ..." } else { "" }
            )
        };
        message.push_str(&format!(
            "; pick a free address in pool {:?} ({free}) or set a shared sharing key",
            pool.name()
        ));
    }
    message
}

fn warnings(request: &Request, decision: &Decision, snapshot: &Snapshot<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    for assignment in &decision.assignments {
        let covers =
            |pools: &[String]| pools.is_empty() || pools.iter().any(|p| p == &assignment.pool);
        let covered = snapshot
            .l2announcements
            .iter()
            .any(|l2| covers(&l2.spec.ip_pools))
            || snapshot
                .bgp_announcements
                .iter()
                .any(|bgp| covers(&bgp.spec.ip_pools));
        if !covered {
            warnings.push(format!(
                "vipam: no L2Announcement or BGPAnnouncement covers pool {:?}: {} is assigned \
                 but will not be announced",
                assignment.pool, assignment.ip
            ));
        }
    }
    if let Some(pins) = &request.pins {
        if pins.source == SPEC_LOAD_BALANCER_IP {
            warnings.push(format!(
                "spec.loadBalancerIP is deprecated since Kubernetes 1.24; use the annotation \
                 {ANN_IPS}: {}",
                format_ip_list(&pins.value)
            ));
        } else if pins.source != ANN_IPS {
            warnings.push(format!(
                "vipam reads {} for compatibility; prefer {ANN_IPS}",
                pins.source
            ));
        }
    }
    for source in [
        request.pools.as_ref().map(|p| p.source),
        request.sharing_key.as_ref().map(|k| k.source),
    ]
    .into_iter()
    .flatten()
    {
        if !source.starts_with("vipam.io/") {
            warnings.push(format!(
                "vipam reads {source} for compatibility; prefer the vipam.io/ annotation"
            ));
        }
    }
    warnings
}

/// The JSON patch that sets `vipam.io/assigned-ips` (the webhook's only write to a Service).
pub fn annotation_patch(service: &Service, decision: &Decision) -> Patch {
    let value = format_ip_list(&decision.ips());
    let operation = if service.metadata.annotations.is_some() {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations", ANN_ASSIGNED_IPS]),
            value: serde_json::Value::String(value),
        })
    } else {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations"]),
            value: serde_json::json!({ ANN_ASSIGNED_IPS: value }),
        })
    };
    Patch(vec![operation])
}
