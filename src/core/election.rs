//! The control-plane election as pure decisions (no I/O, clock passed in): what to do with the
//! Lease `vipam-control-plane`, and whether this node holds the VIP.
//!
//! Rules (docs/agent.md, "Control-plane VIP"):
//!
//! 1. Candidacy. A node competes only while its local API server's last health check passed.
//!    It takes the Lease when the Lease is absent (create), released (no holder), held by itself
//!    (a restarted process resumes), or held by another node whose Lease has not changed for a
//!    lease duration *by this node's own clock since it saw the last change*
//!    ([`crate::core::ownership::Liveness`]); timestamps written by other nodes are never
//!    compared with the local clock. Every write is a compare-and-swap on the resourceVersion,
//!    so two candidates never both win.
//! 2. Leading. The leader renews every renew interval. It holds the VIP while its last
//!    successful write started less than a lease duration ago (no other node can have taken
//!    the Lease before then).
//! 3. Static stability. When renewals fail for longer than that (API unreachable), the leader
//!    keeps the VIP but yields it: it drops the VIP as soon as another MAC announces it (a new
//!    leader's gratuitous ARP), or as soon as it sees another holder in the Lease. When the API is
//!    unreachable from every node, nobody else announces, so the VIP stays where it is.
//! 4. Health. After `threshold` consecutive failed checks the leader drops the VIP at once and
//!    releases the Lease (clears the holder), so a healthy standby takes over without waiting
//!    for the Lease to expire. A node that is not healthy never takes the Lease.

use std::time::Duration;

/// What this node knows of the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseView {
    /// Not known (the watch has not listed yet, or is failing): wait.
    Unknown,
    /// Listed: there is no Lease.
    Absent,
    /// The Lease: its holder (None when released) and resourceVersion.
    Present {
        holder: Option<String>,
        version: String,
    },
}

/// The local API server's health, as the checks saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// At least one check has completed.
    pub checked: bool,
    /// The last check passed.
    pub last_ok: bool,
    /// Failed checks in a row.
    pub consecutive_failures: u32,
}

impl Health {
    /// The leader gives up after this many failures in a row.
    pub fn gave_up(&self, threshold: u32) -> bool {
        self.consecutive_failures >= threshold.max(1)
    }

    /// May compete for the Lease.
    pub fn candidate(&self) -> bool {
        self.checked && self.last_ok
    }
}

/// This process's own hold on the Lease (from its own successful writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hold {
    /// This process's last write made it the holder and nothing since said otherwise.
    pub holding: bool,
    /// When the last successful write started (this process's monotonic clock).
    pub written_at: Option<Duration>,
}

/// Everything a decision needs.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub me: &'a str,
    /// This process's monotonic clock.
    pub now: Duration,
    pub lease_duration: Duration,
    pub lease: LeaseView,
    /// The Lease changed less than its duration ago, by this process's clock.
    pub lease_live: bool,
    pub health: Health,
    pub health_threshold: u32,
    pub hold: Hold,
}

/// The next write to the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseAction {
    Wait,
    /// Create the Lease, held by this node.
    Create,
    /// Take the Lease seen at this resourceVersion.
    Acquire {
        version: String,
    },
    /// Renew this node's Lease (the resourceVersion is the one of its own last write).
    Renew,
    /// Clear the holder (health failed, or shutting down).
    Release,
}

/// What to do with the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipState {
    /// Not announced.
    Drop,
    /// Announced.
    Hold,
    /// Announced, but given up as soon as another node announces it (rule 3).
    HoldYielding,
}

impl Inputs<'_> {
    fn held_by_me(&self) -> bool {
        matches!(&self.lease, LeaseView::Present { holder: Some(h), .. } if h == self.me)
    }
}

/// The next Lease write.
pub fn lease_action(inputs: &Inputs) -> LeaseAction {
    let gave_up = inputs.health.gave_up(inputs.health_threshold);
    if inputs.hold.holding {
        return if gave_up {
            LeaseAction::Release
        } else {
            LeaseAction::Renew
        };
    }
    if !inputs.health.candidate() {
        // A Lease a previous run of this node still holds is released rather than left to
        // expire, when this node cannot serve.
        return if gave_up && inputs.held_by_me() {
            LeaseAction::Release
        } else {
            LeaseAction::Wait
        };
    }
    match &inputs.lease {
        LeaseView::Unknown => LeaseAction::Wait,
        LeaseView::Absent => LeaseAction::Create,
        LeaseView::Present { holder, version } => {
            let free = holder.as_deref().is_none_or(str::is_empty);
            let mine = holder.as_deref() == Some(inputs.me);
            if free || mine || !inputs.lease_live {
                LeaseAction::Acquire {
                    version: version.clone(),
                }
            } else {
                LeaseAction::Wait
            }
        }
    }
}

/// Whether this node announces the VIP.
pub fn vip_state(inputs: &Inputs) -> VipState {
    if !inputs.hold.holding || inputs.health.gave_up(inputs.health_threshold) {
        return VipState::Drop;
    }
    match inputs.hold.written_at {
        Some(at) if inputs.now < at + inputs.lease_duration => VipState::Hold,
        Some(_) => VipState::HoldYielding,
        None => VipState::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn healthy() -> Health {
        Health {
            checked: true,
            last_ok: true,
            consecutive_failures: 0,
        }
    }

    fn failing(n: u32) -> Health {
        Health {
            checked: true,
            last_ok: false,
            consecutive_failures: n,
        }
    }

    fn present(holder: Option<&str>) -> LeaseView {
        LeaseView::Present {
            holder: holder.map(String::from),
            version: "7".into(),
        }
    }

    fn inputs(lease: LeaseView, live: bool, health: Health, hold: Hold) -> Inputs<'static> {
        Inputs {
            me: "cp1",
            now: 10 * S,
            lease_duration: 3 * S,
            lease,
            lease_live: live,
            health,
            health_threshold: 3,
            hold,
        }
    }

    const NOT_HOLDING: Hold = Hold {
        holding: false,
        written_at: None,
    };

    fn holding(at: Duration) -> Hold {
        Hold {
            holding: true,
            written_at: Some(at),
        }
    }

    fn acquire() -> LeaseAction {
        LeaseAction::Acquire {
            version: "7".into(),
        }
    }

    #[test]
    fn a_healthy_candidate_takes_an_absent_released_expired_or_own_lease() {
        let h = healthy();
        assert_eq!(
            lease_action(&inputs(LeaseView::Absent, false, h, NOT_HOLDING)),
            LeaseAction::Create
        );
        assert_eq!(
            lease_action(&inputs(present(None), true, h, NOT_HOLDING)),
            acquire()
        );
        assert_eq!(
            lease_action(&inputs(present(Some("")), true, h, NOT_HOLDING)),
            acquire()
        );
        assert_eq!(
            lease_action(&inputs(present(Some("cp2")), false, h, NOT_HOLDING)),
            acquire()
        );
        assert_eq!(
            lease_action(&inputs(present(Some("cp1")), true, h, NOT_HOLDING)),
            acquire()
        );
    }

    #[test]
    fn a_live_lease_of_another_node_or_an_unknown_one_is_left_alone() {
        let h = healthy();
        assert_eq!(
            lease_action(&inputs(present(Some("cp2")), true, h, NOT_HOLDING)),
            LeaseAction::Wait
        );
        assert_eq!(
            lease_action(&inputs(LeaseView::Unknown, false, h, NOT_HOLDING)),
            LeaseAction::Wait
        );
    }

    #[test]
    fn an_unhealthy_or_unchecked_node_never_takes_the_lease() {
        for health in [failing(1), failing(5), Health::default()] {
            for lease in [LeaseView::Absent, present(None), present(Some("cp2"))] {
                assert_eq!(
                    lease_action(&inputs(lease, false, health, NOT_HOLDING)),
                    LeaseAction::Wait,
                    "{health:?}"
                );
            }
        }
        // A lease left by a previous run of this node is released once health gave up.
        assert_eq!(
            lease_action(&inputs(present(Some("cp1")), true, failing(3), NOT_HOLDING)),
            LeaseAction::Release
        );
        assert_eq!(
            lease_action(&inputs(present(Some("cp1")), true, failing(1), NOT_HOLDING)),
            LeaseAction::Wait
        );
    }

    #[test]
    fn the_leader_renews_through_transient_failures_and_releases_after_the_threshold() {
        let hold = holding(9 * S);
        let lease = present(Some("cp1"));
        assert_eq!(
            lease_action(&inputs(lease.clone(), true, healthy(), hold)),
            LeaseAction::Renew
        );
        assert_eq!(
            lease_action(&inputs(lease.clone(), true, failing(2), hold)),
            LeaseAction::Renew
        );
        assert_eq!(
            vip_state(&inputs(lease.clone(), true, failing(2), hold)),
            VipState::Hold
        );
        assert_eq!(
            lease_action(&inputs(lease.clone(), true, failing(3), hold)),
            LeaseAction::Release
        );
        assert_eq!(
            vip_state(&inputs(lease, true, failing(3), hold)),
            VipState::Drop
        );
    }

    #[test]
    fn the_vip_is_held_while_the_lease_is_surely_ours_then_yielded_never_dropped_by_silence() {
        let lease = present(Some("cp1"));
        // Renewed 1 s ago: held.
        assert_eq!(
            vip_state(&inputs(lease.clone(), true, healthy(), holding(9 * S))),
            VipState::Hold
        );
        // Renewals failed for a lease duration (API unreachable): kept, but yielding.
        assert_eq!(
            vip_state(&inputs(lease.clone(), false, healthy(), holding(7 * S))),
            VipState::HoldYielding
        );
        assert_eq!(
            vip_state(&inputs(lease.clone(), false, healthy(), holding(S))),
            VipState::HoldYielding
        );
        // Not holding: never announced.
        assert_eq!(
            vip_state(&inputs(lease, true, healthy(), NOT_HOLDING)),
            VipState::Drop
        );
    }
}
