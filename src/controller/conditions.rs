//! Conditions (metav1.Condition) built from what the controller decided, compared without their
//! timestamps so that an unchanged state is never rewritten.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::time_from_seconds;

/// Condition on a Service: whether it holds its addresses.
pub const ALLOCATED: &str = "vipam.io/Allocated";
/// Condition on a Service: whether an agent announces its addresses.
pub const ANNOUNCED: &str = "vipam.io/Announced";
/// Condition on an IPAllocation whose address lies outside every IPPool.
pub const ORPHANED: &str = "Orphaned";
/// Condition on an IPAllocation whose address another host on the LAN uses (from the agent's
/// `status.conflict`).
pub const ADDRESS_CONFLICT: &str = "vipam.io/AddressConflict";
/// Condition on IPPools and L2Announcements: the object is usable.
pub const READY: &str = "Ready";
/// Condition on an IPPool overlapping another.
pub const CONFLICT: &str = "Conflict";

/// What a condition says, without its timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub type_: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Wanted {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Wanted {
        Wanted {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }

    fn status_text(&self) -> &'static str {
        if self.status { "True" } else { "False" }
    }

    /// Whether `existing` already says this.
    pub fn is_met_by(&self, existing: &[Condition], generation: Option<i64>) -> bool {
        existing.iter().any(|c| {
            c.type_ == self.type_
                && c.status == self.status_text()
                && c.reason == self.reason
                && c.message == self.message
                && c.observed_generation == generation
        })
    }

    /// The condition, keeping the transition time of `existing` when the status did not flip.
    pub fn build(&self, existing: &[Condition], generation: Option<i64>, now: i64) -> Condition {
        let last_transition_time = existing
            .iter()
            .find(|c| c.type_ == self.type_ && c.status == self.status_text())
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| time_from_seconds(now));
        Condition {
            type_: self.type_.to_string(),
            status: self.status_text().to_string(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            observed_generation: generation,
            last_transition_time,
        }
    }
}

/// Whether every wanted condition is met.
pub fn all_met(wanted: &[Wanted], existing: &[Condition], generation: Option<i64>) -> bool {
    wanted.iter().all(|w| w.is_met_by(existing, generation))
}

/// `existing` with the wanted conditions set (others kept, in order).
pub fn merged(
    wanted: &[Wanted],
    existing: &[Condition],
    generation: Option<i64>,
    now: i64,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = existing
        .iter()
        .filter(|c| !wanted.iter().any(|w| w.type_ == c.type_))
        .cloned()
        .collect();
    out.extend(wanted.iter().map(|w| w.build(existing, generation, now)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let ready = Wanted::new(READY, true, "Valid", "4 addresses");
        let first = merged(std::slice::from_ref(&ready), &[], Some(1), 100);
        assert!(all_met(std::slice::from_ref(&ready), &first, Some(1)));
        assert!(!all_met(std::slice::from_ref(&ready), &first, Some(2)));
        let again = merged(&[ready], &first, Some(1), 200);
        assert_eq!(again, first);
        let broken = Wanted::new(READY, false, "Invalid", "bad block");
        let flipped = merged(std::slice::from_ref(&broken), &again, Some(1), 300);
        assert_eq!(flipped.len(), 1);
        assert_eq!(flipped[0].last_transition_time, time_from_seconds(300));
        assert!(!all_met(std::slice::from_ref(&broken), &again, Some(1)));
        let message_only = Wanted::new(READY, false, "Invalid", "another block");
        let kept = merged(&[message_only], &flipped, Some(1), 400);
        assert_eq!(kept[0].last_transition_time, time_from_seconds(300));
    }
}
