//! The agent's own standing when it decides what to announce: whether ownership is frozen,
//! whether it yields to other announcers, and whether it may apply a decision yet. Pure: the
//! agent passes in what it knows of its Lease and its watches.
//!
//! Rules (docs/agent.md, "static stability" and "graceful handover"):
//!
//! 1. **Frozen.** While this node's own Lease is not being renewed, or the Lease watch is down,
//!    silence from the other agents proves nothing (the API may be unreachable from here), so
//!    nothing is gained or lost: what is announced stays.
//! 2. **Yield.** Once this node's own Lease has lapsed, another node may be taking its
//!    addresses: it drops an address as soon as another MAC announces it, instead of fighting.
//! 3. **Start-up.** Before the first decision, the agent waits for its first renewal's outcome
//!    and then one renew interval, so agents starting together see each other's Leases before
//!    deciding and a restarted agent does not withdraw what it still owns. A failing first
//!    renewal does not hold it back: frozen, it announces nothing but removes a previous run's
//!    leftovers.
//! 4. A node that no L2Announcement selects announces nothing and is never frozen.

/// What the agent knows about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    /// Some L2Announcement selects this node (it must hold a Lease).
    pub needs_lease: bool,
    /// This node's Lease was last renewed longer than a lease duration ago (or never).
    pub own_lapsed: bool,
    /// Renewals succeed and none hangs: the Lease is being kept alive.
    pub own_healthy: bool,
    /// The watch on the agents' Leases is up.
    pub lease_watch_ok: bool,
    /// A decision has been applied since the start.
    pub applied: bool,
    /// The first renewal succeeded at least one renew interval ago.
    pub first_renewal_settled: bool,
    /// The last renewal failed.
    pub renewal_failing: bool,
}

/// What to hand the announcer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announce {
    /// Change nothing (frozen after a first decision, or still starting up).
    Keep,
    /// Announce nothing: not selected, or frozen before anything was applied (which also
    /// removes a previous run's leftovers).
    Nothing,
    /// Announce what this node owns.
    Owned,
}

/// The verdict for one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub frozen: bool,
    pub yield_to_others: bool,
    pub announce: Announce,
}

/// Applies the rules in the module documentation.
pub fn verdict(s: &Standing) -> Verdict {
    let frozen = s.needs_lease && (!s.own_healthy || !s.lease_watch_ok);
    let yield_to_others = s.needs_lease && s.applied && s.own_lapsed;
    let first_renewal_pending = !s.first_renewal_settled && !s.renewal_failing;
    let starting_up = s.needs_lease && !s.applied && first_renewal_pending;
    let may_apply = !frozen || !s.applied;
    let announce = if !may_apply || starting_up {
        Announce::Keep
    } else if !s.needs_lease || frozen {
        Announce::Nothing
    } else {
        Announce::Owned
    };
    Verdict {
        frozen,
        yield_to_others,
        announce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A selected node in good health that has applied a decision.
    fn healthy() -> Standing {
        Standing {
            needs_lease: true,
            own_lapsed: false,
            own_healthy: true,
            lease_watch_ok: true,
            applied: true,
            first_renewal_settled: true,
            renewal_failing: false,
        }
    }

    #[test]
    fn rules() {
        use Announce::*;
        type Case = (&'static str, Standing, (bool, bool, Announce));
        let cases: Vec<Case> = vec![
            (
                "healthy: announce what it owns",
                healthy(),
                (false, false, Owned),
            ),
            (
                "not selected: nothing, never frozen",
                Standing {
                    needs_lease: false,
                    own_healthy: false,
                    lease_watch_ok: false,
                    ..healthy()
                },
                (false, false, Nothing),
            ),
            (
                "renewals failing: frozen, keeps what it announces",
                Standing {
                    own_healthy: false,
                    renewal_failing: true,
                    ..healthy()
                },
                (true, false, Keep),
            ),
            (
                "lease watch down: frozen",
                Standing {
                    lease_watch_ok: false,
                    ..healthy()
                },
                (true, false, Keep),
            ),
            (
                "own lease lapsed: frozen and yielding",
                Standing {
                    own_lapsed: true,
                    own_healthy: false,
                    ..healthy()
                },
                (true, true, Keep),
            ),
            (
                "starting up, first renewal pending: wait",
                Standing {
                    applied: false,
                    first_renewal_settled: false,
                    own_lapsed: true,
                    own_healthy: false,
                    ..healthy()
                },
                (true, false, Keep),
            ),
            (
                "starting up, renewed but not settled: wait",
                Standing {
                    applied: false,
                    first_renewal_settled: false,
                    ..healthy()
                },
                (false, false, Keep),
            ),
            (
                "starting up, settled: decide",
                Standing {
                    applied: false,
                    ..healthy()
                },
                (false, false, Owned),
            ),
            (
                "starting up, first renewal failed: frozen, announce nothing (cleanup), never yield",
                Standing {
                    applied: false,
                    first_renewal_settled: false,
                    renewal_failing: true,
                    own_lapsed: true,
                    own_healthy: false,
                    ..healthy()
                },
                (true, false, Nothing),
            ),
        ];
        for (name, standing, (frozen, yield_to_others, announce)) in cases {
            assert_eq!(
                verdict(&standing),
                Verdict {
                    frozen,
                    yield_to_others,
                    announce
                },
                "{name}"
            );
        }
    }
}
