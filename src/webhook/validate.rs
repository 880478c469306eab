//! Validation of IPPools, L2Announcements, BGPPeers and BGPAnnouncements.
//!
//! Malformed pools are denied with the field path. Edits that strand allocated addresses or
//! overlap another pool only warn: denying them would wedge Argo CD when addresses move between
//! pools in one commit; the controller reports the Conflict / Orphaned state instead.

use kube::ResourceExt;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::{Outcome, WebhookState};
use crate::api::{self, BGPAnnouncement, BGPPeer, IPPool, L2Announcement, LabelSelectorExt};
use crate::core::pool::{Pool, PoolSet};
use crate::core::range::format_ranges;

/// The object of a CREATE or UPDATE review, with the response to build on; `Err` is the whole
/// answer (other operations are allowed as they are, a review without an object is refused).
fn object_to_validate<K: kube::Resource + Clone>(
    req: &AdmissionRequest<K>,
) -> Result<(&K, AdmissionResponse), Box<Outcome>> {
    let response = AdmissionResponse::from(req);
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Err(Box::new(Outcome::allowed(response, "not_create_or_update")));
    }
    match req.object.as_ref() {
        Some(object) => Ok((object, response)),
        None => Err(Box::new(Outcome::denied(
            response,
            "malformed_review",
            "the review carries no object".into(),
        ))),
    }
}

/// Answers one IPPool admission request.
pub fn admit_pool(state: &WebhookState, req: &AdmissionRequest<IPPool>) -> Outcome {
    let (pool, response) = match object_to_validate(req) {
        Ok(found) => found,
        Err(outcome) => return *outcome,
    };
    let spec = match api::pool_spec(pool) {
        Ok(spec) => spec,
        Err(err) => {
            return Outcome::denied(response, "invalid_pool", format!("spec.{}", err.message));
        }
    };
    let parsed = match Pool::parse(spec) {
        Ok(parsed) => parsed,
        Err(err) => {
            let problems: Vec<String> = err.problems.iter().map(|p| format!("spec.{p}")).collect();
            return Outcome::denied(
                response,
                "invalid_pool",
                format!("IPPool {}: {}", err.pool, problems.join("; ")),
            );
        }
    };
    let name = parsed.name().to_string();
    let (stranded, others) = state.ledger.read(|snapshot| {
        let stranded: Vec<String> = snapshot
            .ledger
            .entries()
            .filter(|e| e.pool == name && !parsed.covers(&e.ip))
            .map(|e| {
                let holders: Vec<String> =
                    e.members.iter().map(|m| m.service.to_string()).collect();
                format!("{} ({})", e.ip, holders.join(", "))
            })
            .collect();
        let others: Vec<Pool> = snapshot
            .pools
            .pools()
            .iter()
            .filter(|p| p.name() != name)
            .cloned()
            .collect();
        (stranded, others)
    });
    let mut outcome = Outcome::allowed(response, "valid");
    // Allocations of this pool that the edit leaves outside it.
    if !stranded.is_empty() {
        outcome = outcome.warn(format!(
            "vipam: this edit leaves {} allocated address(es) outside IPPool {name}: {}; they stay \
             with their Services and are reported Orphaned",
            stranded.len(),
            stranded.join(", ")
        ));
    }
    // Overlaps with the other pools, as the controller will resolve them.
    let mut others = others;
    let mut candidate = parsed;
    if candidate.spec.created.is_none() {
        // A new pool is younger than every existing one.
        candidate.spec.created = Some(i64::MAX);
    }
    others.push(candidate);
    for overlap in PoolSet::new(others).overlaps() {
        if overlap.keeper == name || overlap.loser == name {
            outcome = outcome.warn(format!(
                "vipam: IPPool {} overlaps IPPool {} on {}; {} keeps the shared range",
                overlap.loser,
                overlap.keeper,
                format_ranges(&overlap.shared),
                overlap.keeper
            ));
        }
    }
    outcome
}

/// Answers one L2Announcement admission request.
pub fn admit_l2announcement(
    state: &WebhookState,
    req: &AdmissionRequest<L2Announcement>,
) -> Outcome {
    let (l2, response) = match object_to_validate(req) {
        Ok(found) => found,
        Err(outcome) => return *outcome,
    };
    let mut problems = Vec::new();
    for (index, pattern) in l2.spec.interfaces.iter().enumerate() {
        if let Err(err) = regex::Regex::new(pattern) {
            let first = err
                .to_string()
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .to_string();
            problems.push(format!(
                "spec.interfaces[{index}]: {pattern:?} is not a regular expression ({first})"
            ));
        }
    }
    for (field, selector) in [
        ("spec.serviceSelector", &l2.spec.service_selector),
        ("spec.nodeSelector", &l2.spec.node_selector),
    ] {
        if let Some(selector) = selector
            && let Err(err) = selector.to_core()
        {
            problems.push(format!("{field}: {err}"));
        }
    }
    if !problems.is_empty() {
        return Outcome::denied(
            response,
            "invalid_l2announcement",
            format!("L2Announcement {}: {}", l2.name_any(), problems.join("; ")),
        );
    }
    let mut outcome = Outcome::allowed(response, "valid");
    let unknown: Vec<String> = state.ledger.read(|snapshot| {
        l2.spec
            .ip_pools
            .iter()
            .filter(|name| snapshot.pools.get(name).is_none())
            .cloned()
            .collect()
    });
    for name in &unknown {
        {
            outcome = outcome.warn(format!(
                "vipam: L2Announcement {} names IPPool {name}, which does not exist (yet)",
                l2.name_any()
            ));
        }
    }
    outcome
}

/// Answers one BGPPeer admission request: every invalid field is named.
pub fn admit_bgppeer(_state: &WebhookState, req: &AdmissionRequest<BGPPeer>) -> Outcome {
    let (peer, response) = match object_to_validate(req) {
        Ok(found) => found,
        Err(outcome) => return *outcome,
    };
    match api::bgp_peer(peer) {
        Ok(_) => Outcome::allowed(response, "valid"),
        Err(err) => Outcome::denied(response, "invalid_bgppeer", err.to_string()),
    }
}

/// Answers one BGPAnnouncement admission request: invalid selectors, communities and lengths
/// are denied; pools that do not exist (yet) are a warning, as for L2Announcement.
pub fn admit_bgpannouncement(
    state: &WebhookState,
    req: &AdmissionRequest<BGPAnnouncement>,
) -> Outcome {
    let (announcement, response) = match object_to_validate(req) {
        Ok(found) => found,
        Err(outcome) => return *outcome,
    };
    if let Err(err) = api::bgp_announcement(announcement) {
        return Outcome::denied(response, "invalid_bgpannouncement", err.to_string());
    }
    let mut outcome = Outcome::allowed(response, "valid");
    let unknown: Vec<String> = state.ledger.read(|snapshot| {
        announcement
            .spec
            .ip_pools
            .iter()
            .filter(|name| snapshot.pools.get(name).is_none())
            .cloned()
            .collect()
    });
    for name in &unknown {
        outcome = outcome.warn(format!(
            "vipam: BGPAnnouncement {} names IPPool {name}, which does not exist (yet)",
            announcement.name_any()
        ));
    }
    outcome
}
