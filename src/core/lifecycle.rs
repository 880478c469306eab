//! The ledger's lifecycle over time (what the controller decides outside admission): which
//! holdings a Service no longer has, and adoption of addresses another implementation assigned.

use std::net::IpAddr;

use super::allocate::{Context, Decision, Denial, Ledger, decide};
use super::pool::PoolSet;
use super::range::Family;
use super::request::{ANN_ASSIGNED_IPS, Request, Sourced, parse_ip_list};

/// Where adopted addresses come from (shown in messages like a pin's source).
pub const ADOPTED_SOURCE: &str = "status.loadBalancer.ingress";

/// The addresses among `held` (those a Service holds now) that it no longer holds: all of them
/// when it is gone or not ours (`None`); those of a family it no longer asks for; the old
/// address of a family whose pin moved, once the pinned one is recorded for it too (until then
/// the old one stays: a pin that cannot be honoured never leaves a Service without an address);
/// and, when the webhook's `vipam.io/assigned-ips` names held addresses only, any other held
/// address of those families (the webhook moved the Service, e.g. its pool annotation changed).
pub fn stale_holdings(request: Option<&Request>, held: &[IpAddr]) -> Vec<IpAddr> {
    let Some(request) = request else {
        return held.to_vec();
    };
    let assigned: Vec<IpAddr> = request
        .assigned_annotation
        .as_deref()
        .and_then(|raw| parse_ip_list(ANN_ASSIGNED_IPS, raw).ok())
        .filter(|ips| !ips.is_empty() && ips.iter().all(|ip| held.contains(ip)))
        .unwrap_or_default();
    held.iter()
        .copied()
        .filter(|ip| {
            let family = Family::of(ip);
            if !request.families.contains(&family) {
                return true;
            }
            let pin_moved = request
                .pin_for(family)
                .is_some_and(|pin| pin != *ip && held.contains(&pin));
            let superseded =
                !assigned.contains(ip) && assigned.iter().any(|a| Family::of(a) == family);
            pin_moved || superseded
        })
        .collect()
}

/// Whether the controller must decide for a Service holding `held`: a requested family has no
/// address yet, or a pin names another address than the one held. Otherwise what it holds stays
/// as is, whatever happened to the pools meanwhile (pool edits never renumber a live Service;
/// only the Service's own changes, seen by the webhook, do).
pub fn needs_decision(request: &Request, held: &[IpAddr]) -> bool {
    request.families.iter().any(|family| {
        let current = held.iter().find(|ip| Family::of(ip) == *family);
        match (current, request.pin_for(*family)) {
            (None, _) => true,
            (Some(ip), Some(pin)) => *ip != pin,
            (Some(_), None) => false,
        }
    })
}

/// The request with `found` (addresses already in the Service's status, one per requested
/// family) as pins, when the Service pins nothing itself; `None` when there is nothing to adopt.
pub fn adoption_request(request: &Request, found: &[IpAddr]) -> Option<Request> {
    if request.pins.is_some() {
        return None;
    }
    let pins: Vec<IpAddr> = request
        .families
        .iter()
        .filter_map(|family| found.iter().copied().find(|ip| Family::of(ip) == *family))
        .collect();
    if pins.is_empty() {
        return None;
    }
    let mut adopted = request.clone();
    adopted.pins = Some(Sourced {
        value: pins,
        source: ADOPTED_SOURCE,
    });
    Some(adopted)
}

/// Decides for a Service the webhook never saw: a Service holding nothing first tries to keep
/// the addresses it already shows (migration from another implementation renumbers nothing);
/// when they are outside the pools or taken, it is decided as usual.
pub fn decide_adopting(
    request: &Request,
    found: &[IpAddr],
    pools: &PoolSet,
    ledger: &Ledger,
    ctx: &Context,
) -> Result<(Decision, Request), Denial> {
    let holds_nothing = ledger.bound_to(&request.service).is_empty();
    if holds_nothing
        && let Some(adopted) = adoption_request(request, found)
        && let Ok(decision) = decide(&adopted, pools, ledger, ctx)
    {
        return Ok((decision, adopted));
    }
    decide(request, pools, ledger, ctx).map(|decision| (decision, request.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::allocate::How;
    use crate::core::pool::{BlockSpec, Pool, PoolSpec};
    use crate::core::request::{ANN_IPS, RequestPolicy, ServiceView};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pools() -> PoolSet {
        PoolSet::new(vec![
            Pool::parse(PoolSpec::new(
                "lan",
                vec![BlockSpec::range("192.0.2.10", "192.0.2.14")],
            ))
            .unwrap(),
        ])
    }

    fn request(name: &str, pin: Option<&str>) -> Request {
        let mut view = ServiceView {
            namespace: "default".into(),
            name: name.into(),
            service_type: Some("LoadBalancer".into()),
            ports: vec![(None, 80)],
            ..ServiceView::default()
        };
        if let Some(pin) = pin {
            view.annotations.insert(ANN_IPS.into(), pin.into());
        }
        view.request(&RequestPolicy::default()).unwrap().unwrap()
    }

    const CTX: Context = Context {
        now: 1000,
        sticky_release_secs: 600,
    };

    #[test]
    fn the_webhooks_assignment_supersedes_other_holdings_of_its_family() {
        let (old, new) = (ip("192.0.2.10"), ip("192.0.2.12"));
        let mut moved = request("web", None);
        moved.assigned_annotation = Some("192.0.2.12".into());
        assert_eq!(stale_holdings(Some(&moved), &[old, new]), vec![old]);
        // An annotation the ledger does not back decides nothing.
        moved.assigned_annotation = Some("192.0.2.13".into());
        assert!(stale_holdings(Some(&moved), &[old, new]).is_empty());
        moved.assigned_annotation = Some("not an address".into());
        assert!(stale_holdings(Some(&moved), &[old]).is_empty());
    }

    #[test]
    fn gone_services_and_moved_pins_make_holdings_stale() {
        let (old, new) = (ip("192.0.2.10"), ip("192.0.2.11"));
        assert_eq!(stale_holdings(None, &[old]), vec![old]);
        let pinned = request("web", Some("192.0.2.11"));
        // The new pin is not recorded yet: the old address stays.
        assert!(stale_holdings(Some(&pinned), &[old]).is_empty());
        assert_eq!(stale_holdings(Some(&pinned), &[old, new]), vec![old]);
        let auto = request("web", None);
        assert!(stale_holdings(Some(&auto), &[old]).is_empty());
        // A single-stack IPv4 Service holds no IPv6 address.
        let v6 = ip("2001:db8::1");
        assert_eq!(stale_holdings(Some(&auto), &[old, v6]), vec![v6]);
    }

    #[test]
    fn only_a_missing_family_or_a_moved_pin_needs_a_decision() {
        let auto = request("web", None);
        assert!(needs_decision(&auto, &[]));
        assert!(!needs_decision(&auto, &[ip("192.0.2.10")]));
        // Held outside every pool (pool edited away): still kept.
        assert!(!needs_decision(&auto, &[ip("203.0.113.1")]));
        let pinned = request("web", Some("192.0.2.11"));
        assert!(needs_decision(&pinned, &[ip("192.0.2.10")]));
        assert!(!needs_decision(&pinned, &[ip("192.0.2.11")]));
    }

    #[test]
    fn adoption_keeps_a_free_in_pool_address() {
        let ledger = Ledger::new();
        let (decision, adopted) = decide_adopting(
            &request("web", None),
            &[ip("192.0.2.13")],
            &pools(),
            &ledger,
            &CTX,
        )
        .unwrap();
        assert_eq!(decision.ips(), vec![ip("192.0.2.13")]);
        assert_eq!(decision.assignments[0].how, How::Pinned);
        assert_eq!(adopted.pins.unwrap().source, ADOPTED_SOURCE);
    }

    #[test]
    fn adoption_falls_back_when_the_address_is_outside_the_pools_or_taken() {
        let mut ledger = Ledger::new();
        let (outside, _) = decide_adopting(
            &request("web", None),
            &[ip("198.51.100.7")],
            &pools(),
            &ledger,
            &CTX,
        )
        .unwrap();
        assert_eq!(outside.ips(), vec![ip("192.0.2.10")]);
        let holder = request("db", Some("192.0.2.13"));
        let held = decide(&holder, &pools(), &ledger, &CTX).unwrap();
        ledger.apply(&holder, &held, &CTX);
        let (taken, _) = decide_adopting(
            &request("web", None),
            &[ip("192.0.2.13")],
            &pools(),
            &ledger,
            &CTX,
        )
        .unwrap();
        assert_eq!(taken.ips(), vec![ip("192.0.2.10")]);
    }

    #[test]
    fn a_pinned_or_holding_service_adopts_nothing() {
        assert!(
            adoption_request(&request("web", Some("192.0.2.11")), &[ip("192.0.2.13")]).is_none()
        );
        assert!(adoption_request(&request("web", None), &[]).is_none());
        let mut ledger = Ledger::new();
        let web = request("web", None);
        let first = decide(&web, &pools(), &ledger, &CTX).unwrap();
        ledger.apply(&web, &first, &CTX);
        let (again, _) =
            decide_adopting(&web, &[ip("192.0.2.14")], &pools(), &ledger, &CTX).unwrap();
        assert_eq!(again.ips(), first.ips());
        assert_eq!(again.assignments[0].how, How::Kept);
    }
}
