//! The allocator: `decide(request, pools, ledger, context) -> Decision | Denial`.
//!
//! Rules, in order, per requested family:
//! 1. an address the Service already holds is kept (stability), unless its own pin, pool
//!    annotation or sharing changed so that the address no longer fits the request;
//! 2. a pin must lie in a pool the Service may use and be free, or shared compatibly;
//! 3. otherwise: an address released by this same Service and still reserved for it, then an
//!    address shared under the Service's sharing key, then the lowest free address of the first
//!    candidate pool (by priority, then name) with space.
//!
//! Released addresses stay reserved for their last holders until `released_at + sticky`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use super::pool::{PoolQuery, PoolSet, Selection};
use super::range::{Family, FamilySets, format_ranges};
use super::request::{CrossNamespace, PortKey, Request, ServiceRef};

/// A Service holding (or having held) a ledger address, with what sharing needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub service: ServiceRef,
    pub ports: Vec<PortKey>,
    pub cross_namespace: CrossNamespace,
    pub etp_local: bool,
    pub selector: BTreeMap<String, String>,
}

impl Member {
    pub fn of(request: &Request) -> Member {
        Member {
            service: request.service.clone(),
            ports: request.ports.clone(),
            cross_namespace: request.cross_namespace.clone(),
            etp_local: request.etp_local,
            selector: request.selector.clone(),
        }
    }
}

/// One ledger entry: one address (an `IPAllocation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub ip: IpAddr,
    pub pool: String,
    pub sharing_key: Option<String>,
    /// The Services holding the address; when released, the last holders.
    pub members: Vec<Member>,
    /// Set when no Service holds the address (unix seconds).
    pub released_at: Option<i64>,
}

impl LedgerEntry {
    pub fn is_released(&self) -> bool {
        self.released_at.is_some()
    }

    pub fn has_member(&self, service: &ServiceRef) -> bool {
        self.members.iter().any(|m| &m.service == service)
    }

    /// Whether a released entry is still reserved for its last holders.
    pub fn is_reserved(&self, ctx: &Context) -> bool {
        self.released_at
            .is_some_and(|at| at.saturating_add(ctx.sticky_release_secs) > ctx.now)
    }

    fn is_expired(&self, ctx: &Context) -> bool {
        self.is_released() && !self.is_reserved(ctx)
    }

    fn holders(&self) -> String {
        self.members
            .iter()
            .map(|m| m.service.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Time and policy handed to the allocator (core never reads the clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Now, unix seconds.
    pub now: i64,
    /// How long a released address stays reserved for its last holders.
    pub sticky_release_secs: i64,
}

/// Default `--sticky-release`: 10 minutes.
pub const DEFAULT_STICKY_RELEASE_SECS: i64 = 600;

impl Default for Context {
    fn default() -> Self {
        Context {
            now: 0,
            sticky_release_secs: DEFAULT_STICKY_RELEASE_SECS,
        }
    }
}

/// All allocations, one entry per address.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    entries: BTreeMap<IpAddr, LedgerEntry>,
    /// Every address with an entry (bound or released), kept in step with `entries`.
    used: FamilySets,
    /// Bound addresses per sharing key, to find share partners without a scan.
    by_key: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Addresses per Service (bound or released), to find a Service's holdings without a scan.
    by_service: BTreeMap<ServiceRef, BTreeSet<IpAddr>>,
    released: usize,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    pub fn from_entries(entries: impl IntoIterator<Item = LedgerEntry>) -> Ledger {
        let mut ledger = Ledger::new();
        for entry in entries {
            ledger.upsert(entry);
        }
        ledger
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, ip: &IpAddr) -> Option<&LedgerEntry> {
        self.entries.get(ip)
    }

    /// Entries in address order (IPv4 first).
    pub fn entries(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.entries.values()
    }

    /// Every address with an entry.
    pub fn used(&self) -> &FamilySets {
        &self.used
    }

    /// Adds or replaces an entry.
    pub fn upsert(&mut self, entry: LedgerEntry) {
        self.remove(&entry.ip);
        self.used.insert(&entry.ip);
        if entry.is_released() {
            self.released += 1;
        } else if let Some(key) = &entry.sharing_key {
            self.by_key.entry(key.clone()).or_default().insert(entry.ip);
        }
        for member in &entry.members {
            self.by_service
                .entry(member.service.clone())
                .or_default()
                .insert(entry.ip);
        }
        self.entries.insert(entry.ip, entry);
    }

    /// Removes an entry (the controller's garbage collection).
    pub fn remove(&mut self, ip: &IpAddr) -> Option<LedgerEntry> {
        let old = self.entries.remove(ip)?;
        self.used.remove(ip);
        if old.is_released() {
            self.released -= 1;
        } else if let Some(key) = &old.sharing_key
            && let Some(set) = self.by_key.get_mut(key)
        {
            set.remove(ip);
            if set.is_empty() {
                self.by_key.remove(key);
            }
        }
        for member in &old.members {
            if let Some(set) = self.by_service.get_mut(&member.service) {
                set.remove(ip);
                if set.is_empty() {
                    self.by_service.remove(&member.service);
                }
            }
        }
        Some(old)
    }

    /// Entries listing the Service (bound and released), in address order.
    pub fn entries_of(&self, service: &ServiceRef) -> impl Iterator<Item = &LedgerEntry> {
        self.by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|ip| self.entries.get(ip))
    }

    /// Addresses the Service holds now.
    pub fn bound_to(&self, service: &ServiceRef) -> Vec<IpAddr> {
        self.entries_of(service)
            .filter(|e| !e.is_released())
            .map(|e| e.ip)
            .collect()
    }

    /// Addresses no one may take: bound ones and released ones still reserved.
    fn taken(&self, ctx: &Context) -> Cow<'_, FamilySets> {
        if self.released == 0 {
            return Cow::Borrowed(&self.used);
        }
        let mut taken = self.used.clone();
        for entry in self.entries.values().filter(|e| e.is_expired(ctx)) {
            taken.remove(&entry.ip);
        }
        Cow::Owned(taken)
    }

    /// The entry `assignment.ip` becomes once `request`'s Service joins it: a released entry is
    /// reclaimed (the other last holders' claims end), an expired one starts afresh.
    pub fn joined(&self, request: &Request, assignment: &Assignment) -> LedgerEntry {
        let mut entry = match self.entries.get(&assignment.ip) {
            Some(existing) if !existing.is_released() => existing.clone(),
            _ => LedgerEntry {
                ip: assignment.ip,
                pool: assignment.pool.clone(),
                sharing_key: None,
                members: Vec::new(),
                released_at: None,
            },
        };
        entry.members.retain(|m| m.service != request.service);
        entry.members.push(Member::of(request));
        entry.members.sort_by(|a, b| a.service.cmp(&b.service));
        entry.sharing_key = request.sharing_key.as_ref().map(|k| k.value.clone());
        entry
    }

    /// Records a decision: the Service joins its addresses and leaves the ones it dropped.
    pub fn apply(&mut self, request: &Request, decision: &Decision, ctx: &Context) {
        for ip in &decision.dropped {
            self.leave(ip, &request.service, ctx);
        }
        for assignment in &decision.assignments {
            let entry = self.joined(request, assignment);
            self.upsert(entry);
        }
    }

    /// The Service no longer holds `ip`; an entry left without holders is released.
    pub fn leave(&mut self, ip: &IpAddr, service: &ServiceRef, ctx: &Context) {
        let Some(mut entry) = self.entries.get(ip).cloned() else {
            return;
        };
        if entry.is_released() || !entry.has_member(service) {
            return;
        }
        if entry.members.len() == 1 {
            entry.released_at = Some(ctx.now);
        } else {
            entry.members.retain(|m| &m.service != service);
        }
        self.upsert(entry);
    }

    /// The Service is gone: it leaves every address it holds.
    pub fn release(&mut self, service: &ServiceRef, ctx: &Context) {
        for ip in self.bound_to(service) {
            self.leave(&ip, service, ctx);
        }
    }

    /// When the first released entry's reservation runs out (unix seconds; at that second
    /// [`Ledger::expire`] drops it), or None when nothing is released.
    pub fn next_expiry(&self, ctx: &Context) -> Option<i64> {
        self.entries
            .values()
            .filter_map(|e| e.released_at)
            .map(|at| at.saturating_add(ctx.sticky_release_secs))
            .min()
    }

    /// Drops released entries whose reservation ran out; returns their addresses.
    pub fn expire(&mut self, ctx: &Context) -> Vec<IpAddr> {
        let expired: Vec<IpAddr> = self
            .entries
            .values()
            .filter(|e| e.is_expired(ctx))
            .map(|e| e.ip)
            .collect();
        for ip in &expired {
            self.remove(ip);
        }
        expired
    }
}

/// How an address was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// The Service already held it.
    Kept,
    /// Its pin, on a free address.
    Pinned,
    /// Shared with other Services under this key (pinned or auto).
    Shared(String),
    /// The lowest free address of the first pool with space.
    Auto,
    /// It had released the address and claimed it again within the sticky period.
    Reclaimed,
}

impl fmt::Display for How {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            How::Kept => f.write_str("kept"),
            How::Pinned => f.write_str("pinned"),
            How::Shared(key) => write!(f, "shared:{key}"),
            How::Auto => f.write_str("auto"),
            How::Reclaimed => f.write_str("reclaimed"),
        }
    }
}

/// One address given to a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub ip: IpAddr,
    pub pool: String,
    pub how: How,
}

/// The allocator's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// In the order of the Service's families.
    pub assignments: Vec<Assignment>,
    /// Addresses the Service held and no longer does (its pin or pool changed).
    pub dropped: Vec<IpAddr>,
}

impl Decision {
    pub fn ips(&self) -> Vec<IpAddr> {
        self.assignments.iter().map(|a| a.ip).collect()
    }
}

/// Categories of refusal (metrics labels, Event reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DenialKind {
    UnknownPool,
    NoPool,
    PinOutsidePools,
    PinUnusable,
    IpInUse,
    CrossNamespace,
    PortClash,
    SelectorMismatch,
    Reserved,
    Exhausted,
}

impl crate::core::category::Category for DenialKind {
    fn category(&self) -> &'static str {
        match self {
            DenialKind::UnknownPool => "unknown_pool",
            DenialKind::NoPool => "no_pool",
            DenialKind::PinOutsidePools => "pin_outside_pools",
            DenialKind::PinUnusable => "pin_unusable",
            DenialKind::IpInUse => "ip_in_use",
            DenialKind::CrossNamespace => "cross_namespace",
            DenialKind::PortClash => "port_clash",
            DenialKind::SelectorMismatch => "selector_mismatch",
            DenialKind::Reserved => "reserved",
            DenialKind::Exhausted => "pool_exhausted",
        }
    }
}

/// A refusal, with a message naming what conflicts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    pub kind: DenialKind,
    pub message: String,
    /// Services the refusal names (for reports that point at their files).
    pub others: Vec<ServiceRef>,
}

impl Denial {
    fn new(kind: DenialKind, message: String) -> Denial {
        Denial {
            kind,
            message,
            others: Vec::new(),
        }
    }

    fn naming(mut self, others: impl IntoIterator<Item = ServiceRef>) -> Denial {
        self.others.extend(others);
        self
    }
}

/// What the Service holds now, as a decision, when it holds an address for every family it
/// asks for; `None` otherwise. An UPDATE that changes nothing vipam reads gets exactly this, so
/// pool edits since the last decision never renumber it.
pub fn current_assignment(request: &Request, ledger: &Ledger) -> Option<Decision> {
    let held: Vec<&LedgerEntry> = ledger
        .entries_of(&request.service)
        .filter(|e| !e.is_released())
        .collect();
    let assignments = request
        .families
        .iter()
        .map(|family| {
            held.iter()
                .find(|e| Family::of(&e.ip) == *family)
                .map(|e| Assignment {
                    ip: e.ip,
                    pool: e.pool.clone(),
                    how: How::Kept,
                })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Decision {
        assignments,
        dropped: Vec::new(),
    })
}

/// Whether two requests of one Service claim the same thing: pins, pools, sharing, families,
/// ports, traffic policy and selector.
pub fn same_claim(a: &Request, b: &Request) -> bool {
    let values = |r: &Request| {
        (
            r.pins.as_ref().map(|p| p.value.clone()),
            r.pools.as_ref().map(|p| p.value.clone()),
            r.sharing_key.as_ref().map(|k| k.value.clone()),
            r.families.clone(),
        )
    };
    Member::of(a) == Member::of(b) && values(a) == values(b)
}

/// Decides the addresses of a Service. Pure and deterministic.
pub fn decide(
    request: &Request,
    pools: &PoolSet,
    ledger: &Ledger,
    ctx: &Context,
) -> Result<Decision, Denial> {
    let held: Vec<&LedgerEntry> = ledger
        .entries_of(&request.service)
        .filter(|e| !e.is_released())
        .collect();
    let mut decision = Decision::default();
    let mut first_failure: Option<Denial> = None;
    for &family in &request.families {
        let current = held.iter().copied().find(|e| Family::of(&e.ip) == family);
        match decide_family(request, family, current, pools, ledger, ctx) {
            Ok(assignment) => decision.assignments.push(assignment),
            // PreferDualStack takes what exists; the other policies need every family.
            Err(denial) if request.policy == super::request::FamilyPolicy::PreferDualStack => {
                first_failure.get_or_insert(denial);
            }
            Err(denial) => return Err(denial),
        }
    }
    if decision.assignments.is_empty() {
        return Err(first_failure.unwrap_or_else(|| {
            Denial::new(
                DenialKind::NoPool,
                "the Service requests no address family".into(),
            )
        }));
    }
    let kept = decision.ips();
    decision.dropped = held
        .iter()
        .map(|e| e.ip)
        .filter(|ip| !kept.contains(ip))
        .collect();
    Ok(decision)
}

fn decide_family(
    request: &Request,
    family: Family,
    current: Option<&LedgerEntry>,
    pools: &PoolSet,
    ledger: &Ledger,
    ctx: &Context,
) -> Result<Assignment, Denial> {
    let pin = request.pin_for(family);
    if let Some(entry) = current {
        let pin_moved = pin.is_some_and(|p| p != entry.ip);
        let pool_moved = request.pools.as_ref().is_some_and(|named| {
            !named
                .value
                .iter()
                .any(|n| pools.get(n).is_some_and(|p| p.covers(&entry.ip)))
        });
        let sharing_fits = sharing_check(entry, request).is_ok();
        if !pin_moved && !pool_moved && sharing_fits {
            return Ok(Assignment {
                ip: entry.ip,
                pool: entry.pool.clone(),
                how: How::Kept,
            });
        }
    }
    match pin {
        Some(ip) => decide_pin(request, ip, pools, ledger, ctx),
        None => decide_auto(request, family, pools, ledger, ctx),
    }
}

fn query<'a>(request: &'a Request, family: Family, pinned: bool) -> PoolQuery<'a> {
    PoolQuery {
        namespace: &request.service.namespace,
        name: &request.service.name,
        labels: &request.labels,
        named: request.pools.as_ref().map(|p| p.value.as_slice()),
        family,
        pinned,
    }
}

fn unknown_pools(request: &Request, selection: &Selection<'_>) -> Result<(), Denial> {
    if selection.unknown.is_empty() {
        return Ok(());
    }
    let source = request.pools.as_ref().map_or("vipam.io/pool", |p| p.source);
    Err(Denial::new(
        DenialKind::UnknownPool,
        format!(
            "{source} names {} that does not exist",
            selection
                .unknown
                .iter()
                .map(|n| format!("IPPool {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn pool_ranges(selection: &Selection<'_>) -> String {
    selection
        .candidates
        .iter()
        .map(|p| format!("{} ({})", p.name(), format_ranges(&p.block_ranges())))
        .collect::<Vec<_>>()
        .join(", ")
}

fn decide_pin(
    request: &Request,
    ip: IpAddr,
    pools: &PoolSet,
    ledger: &Ledger,
    ctx: &Context,
) -> Result<Assignment, Denial> {
    let source = request.pins.as_ref().map_or("vipam.io/ips", |p| p.source);
    let selection = pools.select(&query(request, Family::of(&ip), true));
    unknown_pools(request, &selection)?;
    let covering: Vec<_> = selection
        .candidates
        .iter()
        .filter(|p| p.covers(&ip))
        .collect();
    let pool = match covering.iter().find(|p| p.check_address(&ip).is_ok()) {
        Some(pool) => pool.name().to_string(),
        None => {
            if let Some(pool) = covering.first() {
                let why = pool.check_address(&ip).expect_err("not usable");
                return Err(Denial::new(
                    DenialKind::PinUnusable,
                    format!("{source} pins {ip}, but {}", why.explain(pool.name())),
                ));
            }
            // The address may be in a pool the Service may not use: say which and why.
            if let Some(other) = pools.pools().iter().find(|p| p.covers(&ip))
                && let Some(why) = selection.refusal_of(other.name())
            {
                return Err(Denial::new(
                    DenialKind::PinOutsidePools,
                    format!(
                        "{source} pins {ip}, which is in IPPool {}, but that pool is {why} \
                         for this Service",
                        other.name()
                    ),
                ));
            }
            let candidates = if selection.candidates.is_empty() {
                format!(
                    "no IPPool may serve this Service ({})",
                    selection.explain_refusals()
                )
            } else {
                format!(
                    "the pools this Service may use are {}",
                    pool_ranges(&selection)
                )
            };
            return Err(Denial::new(
                DenialKind::PinOutsidePools,
                format!("{source} pins {ip}, which is outside every IPPool; {candidates}"),
            ));
        }
    };
    match ledger.get(&ip) {
        None => Ok(Assignment {
            ip,
            pool,
            how: How::Pinned,
        }),
        Some(entry) if entry.is_expired(ctx) => Ok(Assignment {
            ip,
            pool,
            how: How::Pinned,
        }),
        Some(entry) if entry.is_released() => {
            if entry.has_member(&request.service) {
                Ok(Assignment {
                    ip,
                    pool: entry.pool.clone(),
                    how: How::Reclaimed,
                })
            } else {
                let until = entry.released_at.unwrap_or(0) + ctx.sticky_release_secs;
                Err(Denial::new(
                    DenialKind::Reserved,
                    format!(
                        "{source} pins {ip}, which {} released {}s ago and which stays \
                         reserved for it for {}s more (sticky release)",
                        entry.holders(),
                        ctx.now - entry.released_at.unwrap_or(0),
                        until - ctx.now
                    ),
                )
                .naming(entry.members.iter().map(|m| m.service.clone())))
            }
        }
        Some(entry) => {
            sharing_check(entry, request)?;
            let how = if entry.has_member(&request.service) {
                How::Kept
            } else {
                match &request.sharing_key {
                    Some(key) if entry.members.iter().any(|m| m.service != request.service) => {
                        How::Shared(key.value.clone())
                    }
                    _ => How::Pinned,
                }
            };
            Ok(Assignment {
                ip,
                pool: entry.pool.clone(),
                how,
            })
        }
    }
}

fn decide_auto(
    request: &Request,
    family: Family,
    pools: &PoolSet,
    ledger: &Ledger,
    ctx: &Context,
) -> Result<Assignment, Denial> {
    let selection = pools.select(&query(request, family, false));
    unknown_pools(request, &selection)?;
    if selection.candidates.is_empty() {
        return Err(Denial::new(
            DenialKind::NoPool,
            format!(
                "no IPPool can give {} an {family} address: {}",
                request.service,
                selection.explain_refusals()
            ),
        ));
    }
    let usable_here = |ip: &IpAddr| {
        Family::of(ip) == family
            && selection
                .candidates
                .iter()
                .any(|p| p.check_address(ip).is_ok())
    };
    // Its own released address comes back within the sticky period.
    if let Some(entry) = ledger
        .entries_of(&request.service)
        .find(|e| e.is_reserved(ctx) && usable_here(&e.ip))
    {
        return Ok(Assignment {
            ip: entry.ip,
            pool: entry.pool.clone(),
            how: How::Reclaimed,
        });
    }
    if let Some(key) = &request.sharing_key
        && let Some(ips) = ledger.by_key.get(&key.value)
    {
        for ip in ips {
            let entry = &ledger.entries[ip];
            if usable_here(ip) && sharing_check(entry, request).is_ok() {
                return Ok(Assignment {
                    ip: *ip,
                    pool: entry.pool.clone(),
                    how: How::Shared(key.value.clone()),
                });
            }
        }
    }
    let taken = ledger.taken(ctx);
    for pool in &selection.candidates {
        if let Some(ip) = pool.first_free(family, taken.get(family)) {
            return Ok(Assignment {
                ip,
                pool: pool.name().to_string(),
                how: How::Auto,
            });
        }
    }
    let summary = selection
        .candidates
        .iter()
        .map(|p| {
            let (allocated, _) = p.usage(&taken);
            format!(
                "{} ({}; {allocated} of {} allocated)",
                p.name(),
                format_ranges(&p.block_ranges()),
                p.capacity()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(Denial::new(
        DenialKind::Exhausted,
        format!(
            "no free {family} address for {} in {summary}",
            request.service
        ),
    ))
}

/// Whether the request may share `entry`'s address with the Services already on it.
fn sharing_check(entry: &LedgerEntry, request: &Request) -> Result<(), Denial> {
    let ip = entry.ip;
    let others: Vec<&Member> = entry
        .members
        .iter()
        .filter(|m| m.service != request.service)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let holders = others
        .iter()
        .map(|m| m.service.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let named = || others.iter().map(|m| m.service.clone()).collect::<Vec<_>>();
    let key = request.sharing_key.as_ref().map(|k| k.value.as_str());
    match (entry.sharing_key.as_deref(), key) {
        (Some(theirs), Some(ours)) if theirs == ours => {}
        (None, _) => {
            return Err(Denial::new(
                DenialKind::IpInUse,
                format!(
                    "{ip} is already used by Service {holders}, which has no sharing key; \
                     to share it, give both Services the same vipam.io/sharing-key"
                ),
            )
            .naming(named()));
        }
        (Some(theirs), None) => {
            return Err(Denial::new(
                DenialKind::IpInUse,
                format!(
                    "{ip} is already used by Service {holders} with sharing key {theirs:?}; \
                     this Service has no sharing key"
                ),
            )
            .naming(named()));
        }
        (Some(theirs), Some(ours)) => {
            return Err(Denial::new(
                DenialKind::IpInUse,
                format!(
                    "{ip} is already used by Service {holders} with sharing key {theirs:?}; \
                     this Service's sharing key is {ours:?}"
                ),
            )
            .naming(named()));
        }
    }
    for member in &others {
        let (ns, their_ns) = (&request.service.namespace, &member.service.namespace);
        if ns != their_ns {
            let ours = request.cross_namespace.allows(their_ns);
            let theirs = member.cross_namespace.allows(ns);
            if !ours || !theirs {
                let missing = match (ours, theirs) {
                    (false, false) => format!(
                        "neither allows the other's namespace (both need \
                         vipam.io/sharing-cross-namespace: {their_ns} on {}, {ns} on {})",
                        request.service, member.service
                    ),
                    (false, true) => format!(
                        "{} does not allow namespace {their_ns} \
                         (vipam.io/sharing-cross-namespace)",
                        request.service
                    ),
                    _ => format!(
                        "{} does not allow namespace {ns} (vipam.io/sharing-cross-namespace)",
                        member.service
                    ),
                };
                return Err(Denial::new(
                    DenialKind::CrossNamespace,
                    format!(
                        "{ip} is shared under key {:?} by Service {} in another namespace, \
                         but {missing}",
                        first_key(entry),
                        member.service
                    ),
                )
                .naming([member.service.clone()]));
            }
        }
        let clashes: Vec<String> = request
            .ports
            .iter()
            .filter(|p| member.ports.contains(p))
            .map(|p| p.to_string())
            .collect();
        if !clashes.is_empty() {
            return Err(Denial::new(
                DenialKind::PortClash,
                format!(
                    "{ip} is shared under key {:?}, but Service {} already uses {} on it",
                    first_key(entry),
                    member.service,
                    clashes.join(", ")
                ),
            )
            .naming([member.service.clone()]));
        }
        if (request.etp_local || member.etp_local) && request.selector != member.selector {
            return Err(Denial::new(
                DenialKind::SelectorMismatch,
                format!(
                    "{ip} is shared with Service {}, but with externalTrafficPolicy: Local \
                     Services on one IP must select the same pods (their selectors differ)",
                    member.service
                ),
            )
            .naming([member.service.clone()]));
        }
    }
    Ok(())
}

fn first_key(entry: &LedgerEntry) -> &str {
    entry.sharing_key.as_deref().unwrap_or("")
}

#[cfg(test)]
mod tests;
