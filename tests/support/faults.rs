//! Fault injection: failing or delaying chosen requests, and whole-server outages.

use std::time::Duration;

use super::status::{ApiError, reason_for};

/// The Kubernetes verb of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn is_write(self) -> bool {
        !matches!(self, Verb::Get | Verb::List | Verb::Watch)
    }
}

/// How an outage looks to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outage {
    /// Requests wait, unanswered, until `resume()`; then they are served.
    Hang,
    /// Requests fail at once as a refused connection would.
    Refuse,
}

#[derive(Clone, Debug)]
pub(crate) enum FaultAction {
    Fail(ApiError),
    Delay(Duration),
}

/// A rule that fails or delays the next matching requests. Build with [`Fault::fail`] or
/// [`Fault::delay`], narrow with [`Fault::verb`], [`Fault::resource`], [`Fault::name`],
/// and inject with `FakeApi::inject`. Matches once unless [`Fault::times`]/[`Fault::always`].
#[derive(Clone, Debug)]
pub struct Fault {
    pub(crate) verb: Option<Verb>,
    /// `plural` (any subresource), `plural/status` (only the subresource), or `plural.group`.
    pub(crate) resource: Option<String>,
    pub(crate) name: Option<String>,
    /// Remaining matches; `None` for always.
    pub(crate) remaining: Option<usize>,
    pub(crate) action: FaultAction,
    /// Run the request for real first, then answer with the fault (a write that happened but
    /// whose answer was lost).
    pub(crate) after_commit: bool,
}

impl Fault {
    /// Answer with `code` and its usual reason (500 InternalError, 409 Conflict...).
    pub fn fail(code: u16) -> Self {
        Self::new(FaultAction::Fail(ApiError::new(
            code,
            reason_for(code),
            format!("injected fault: {}", reason_for(code)),
        )))
    }

    /// Answer with a given `Status`.
    pub fn fail_with(error: ApiError) -> Self {
        Self::new(FaultAction::Fail(error))
    }

    /// Hold the answer back for `d`.
    pub fn delay(d: Duration) -> Self {
        Self::new(FaultAction::Delay(d))
    }

    fn new(action: FaultAction) -> Self {
        Fault {
            verb: None,
            resource: None,
            name: None,
            remaining: Some(1),
            action,
            after_commit: false,
        }
    }

    pub fn verb(mut self, verb: Verb) -> Self {
        self.verb = Some(verb);
        self
    }

    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_string());
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Match the next `n` requests.
    pub fn times(mut self, n: usize) -> Self {
        self.remaining = Some(n);
        self
    }

    /// Match every request until `clear_faults()`.
    pub fn always(mut self) -> Self {
        self.remaining = None;
        self
    }

    /// Serve the request (and store its effect) before failing or delaying the answer.
    pub fn after_commit(mut self) -> Self {
        self.after_commit = true;
        self
    }

    pub(crate) fn matches(&self, req: &RequestRecord) -> bool {
        let verb_ok = self.verb.is_none_or(|v| v == req.verb);
        let name_ok = self.name.is_none() || self.name == req.name;
        let resource_ok = match &self.resource {
            None => true,
            Some(want) => match want.split_once('/') {
                Some((r, sub)) => {
                    req.matches_resource(r) && req.subresource.as_deref() == Some(sub)
                }
                None => req.matches_resource(want),
            },
        };
        verb_ok && name_ok && resource_ok && self.remaining != Some(0)
    }
}

/// One request the fake received (kept for assertions such as "nothing was written").
#[derive(Clone, Debug, PartialEq)]
pub struct RequestRecord {
    pub verb: Verb,
    pub group: String,
    /// Plural resource name.
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub dry_run: bool,
    /// Path and query as received.
    pub uri: String,
}

impl RequestRecord {
    pub(crate) fn matches_resource(&self, name: &str) -> bool {
        name == self.resource || name == format!("{}.{}", self.resource, self.group)
    }
}
