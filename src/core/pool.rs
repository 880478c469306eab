//! The pool model: parsing of blocks, exclusions, overlap detection and pool selection.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::range::{Family, FamilySets, IpRange, RangeSet, format_ranges, ip_value};
use super::selector::LabelSelector;

/// Pseudo-label matched against a Service's namespace by `serviceSelector`.
pub const SERVICE_NAMESPACE_LABEL: &str = "vipam.io/service-namespace";
/// Pseudo-label matched against a Service's name by `serviceSelector`.
pub const SERVICE_NAME_LABEL: &str = "vipam.io/service-name";

/// One block as written in `spec.blocks[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockSpec {
    pub cidr: Option<String>,
    pub start: Option<String>,
    pub stop: Option<String>,
}

impl fmt::Display for BlockSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.cidr, &self.start, &self.stop) {
            (Some(cidr), None, None) => write!(f, "cidr {cidr}"),
            (None, Some(start), None) => write!(f, "start {start}"),
            (None, Some(start), Some(stop)) => write!(f, "{start}-{stop}"),
            _ => write!(
                f,
                "{{cidr: {:?}, start: {:?}, stop: {:?}}}",
                self.cidr, self.start, self.stop
            ),
        }
    }
}

/// What an `IPPool` says, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub blocks: Vec<BlockSpec>,
    pub allow_first_last_ips: bool,
    pub avoid_buggy_ips: bool,
    pub service_selector: Option<LabelSelector>,
    pub namespaces: Vec<String>,
    pub auto_assign: bool,
    pub priority: i32,
    pub disabled: bool,
    /// Creation time (unix seconds) when known; older pools keep ranges shared with newer ones.
    pub created: Option<i64>,
}

impl PoolSpec {
    /// A pool with the defaults of the CRD.
    pub fn new(name: impl Into<String>, blocks: Vec<BlockSpec>) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            blocks,
            allow_first_last_ips: false,
            avoid_buggy_ips: false,
            service_selector: None,
            namespaces: Vec::new(),
            auto_assign: true,
            priority: 0,
            disabled: false,
            created: None,
        }
    }
}

impl BlockSpec {
    pub fn cidr(cidr: &str) -> BlockSpec {
        BlockSpec {
            cidr: Some(cidr.to_string()),
            ..BlockSpec::default()
        }
    }

    pub fn range(start: &str, stop: &str) -> BlockSpec {
        BlockSpec {
            start: Some(start.to_string()),
            stop: Some(stop.to_string()),
            cidr: None,
        }
    }
}

/// Why a pool was refused. Every problem of every block is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("IPPool {pool}: {}", problems.join("; "))]
pub struct PoolError {
    pub pool: String,
    pub problems: Vec<String>,
}

impl crate::core::category::Category for PoolError {
    fn category(&self) -> &'static str {
        "invalid_pool"
    }
}

/// A block after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// How the user wrote it (for messages).
    pub text: String,
    pub range: IpRange,
    /// Network and broadcast addresses skipped (IPv4 cidr /30 or larger without allowFirstLastIPs).
    pub skipped: Vec<IpAddr>,
}

/// A validated pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub spec: PoolSpec,
    pub blocks: Vec<Block>,
    /// Addresses of the blocks minus skipped network/broadcast addresses.
    usable: FamilySets,
    /// Ranges this pool shares with an older (or lower-named) pool, which keeps them.
    lost: Vec<(IpRange, String)>,
    /// `usable` minus `lost`: what the pool may hand out (before avoidBuggyIPs).
    owned: FamilySets,
}

/// Why an address is not available from a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    NotInBlocks,
    NetworkOrBroadcast,
    Buggy,
    HeldByOverlappingPool(String),
}

impl Unusable {
    pub fn explain(&self, pool: &str) -> String {
        match self {
            Unusable::NotInBlocks => format!("it is not in pool {pool}"),
            Unusable::NetworkOrBroadcast => format!(
                "it is the network or broadcast address of a block of pool {pool} \
                 (set allowFirstLastIPs: true to use it)"
            ),
            Unusable::Buggy => {
                format!("pool {pool} avoids addresses ending in .0 or .255 (avoidBuggyIPs: true)")
            }
            Unusable::HeldByOverlappingPool(other) => format!(
                "pool {pool} overlaps pool {other} there, and {other} keeps the shared range"
            ),
        }
    }
}

fn is_buggy(family: Family, value: u128) -> bool {
    family == Family::V4 && matches!(value & 0xff, 0 | 0xff)
}

/// Number of values in `[start, end]` whose low byte is `byte`.
fn count_low_byte(start: u128, end: u128, byte: u128) -> u128 {
    let upto = |x: u128| if x < byte { 0 } else { (x - byte) / 256 + 1 };
    upto(end) - if start == 0 { 0 } else { upto(start - 1) }
}

fn count_buggy(set: &RangeSet) -> u128 {
    set.iter()
        .map(|(s, e)| count_low_byte(s, e, 0) + count_low_byte(s, e, 255))
        .sum()
}

fn unusable_reason(ip: &IpAddr) -> Option<&'static str> {
    let reason = match ip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() {
                "the unspecified address"
            } else if v4.is_loopback() {
                "a loopback address"
            } else if v4.is_multicast() {
                "a multicast address"
            } else if v4.is_link_local() {
                "a link-local address"
            } else if v4.is_broadcast() {
                "the limited broadcast address"
            } else {
                return None;
            }
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() {
                "the unspecified address"
            } else if v6.is_loopback() {
                "a loopback address"
            } else if v6.is_multicast() {
                "a multicast address"
            } else if v6.is_unicast_link_local() {
                "a link-local address"
            } else if v6.to_ipv4_mapped().is_some() {
                "an IPv4-mapped IPv6 address (write the IPv4 address instead)"
            } else {
                return None;
            }
        }
    };
    Some(reason)
}

/// The first address of `range` that is unusable, with the reason. The special ranges are
/// contiguous, so checking the range's ends and the special ranges' starts is enough.
fn first_unusable_in(range: &IpRange) -> Option<(IpAddr, &'static str)> {
    let family = range.family();
    let specials: &[&str] = match family {
        Family::V4 => &[
            "0.0.0.0/32",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "224.0.0.0/4",
            "255.255.255.255/32",
        ],
        Family::V6 => &[
            "::/128",
            "::1/128",
            "fe80::/10",
            "ff00::/8",
            "::ffff:0:0/96",
        ],
    };
    let (lo, hi) = (ip_value(&range.start), ip_value(&range.end));
    specials
        .iter()
        .filter_map(|s| s.parse::<IpNet>().ok())
        .filter_map(|net| {
            let (ns, ne) = (ip_value(&net.network()), ip_value(&net.broadcast()));
            (ns <= hi && ne >= lo).then(|| family.addr(ns.max(lo)))
        })
        .min_by_key(ip_value)
        .and_then(|ip| unusable_reason(&ip).map(|why| (ip, why)))
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, String> {
    text.trim()
        .parse::<IpAddr>()
        .map_err(|_| format!("{field} {text:?} is not an IP address"))
}

fn parse_block(spec: &BlockSpec, allow_first_last: bool) -> Result<Block, String> {
    let text = spec.to_string();
    let (range, skipped) = match (&spec.cidr, &spec.start, &spec.stop) {
        (Some(cidr), None, None) => {
            let net: IpNet = cidr.trim().parse().map_err(|_| {
                format!(
                    "cidr {cidr:?} is not a CIDR (expected e.g. 192.168.0.0/24 or 2001:db8::/64)"
                )
            })?;
            if net.trunc() != net {
                return Err(format!(
                    "cidr {cidr:?} has host bits set (did you mean {}?)",
                    net.trunc()
                ));
            }
            let range = IpRange::new(net.network(), net.broadcast()).expect("network <= broadcast");
            let skipped = match net {
                IpNet::V4(v4) if v4.prefix_len() <= 30 && !allow_first_last => {
                    vec![IpAddr::V4(v4.network()), IpAddr::V4(v4.broadcast())]
                }
                _ => Vec::new(),
            };
            (range, skipped)
        }
        (None, Some(start), stop) => {
            let start_ip = parse_ip("start", start)?;
            let stop_ip = match stop {
                Some(stop) => parse_ip("stop", stop)?,
                None => start_ip,
            };
            if Family::of(&start_ip) != Family::of(&stop_ip) {
                return Err(format!(
                    "start {start_ip} and stop {stop_ip} are of different families"
                ));
            }
            let range = IpRange::new(start_ip, stop_ip)
                .ok_or_else(|| format!("stop {stop_ip} is before start {start_ip}"))?;
            (range, Vec::new())
        }
        (Some(_), Some(_), _) => {
            return Err("a block has either cidr or start/stop, not both".to_string());
        }
        (None, None, _) => return Err("a block needs cidr or start".to_string()),
        (Some(_), None, Some(_)) => {
            return Err("stop without start (use start/stop or cidr)".to_string());
        }
    };
    if let Some((ip, why)) = first_unusable_in(&range) {
        return Err(format!("{text} contains {ip}, {why}"));
    }
    Ok(Block {
        text,
        range,
        skipped,
    })
}

impl Pool {
    /// Validates a pool, reporting every problem at once.
    pub fn parse(spec: PoolSpec) -> Result<Pool, PoolError> {
        let mut problems = Vec::new();
        let mut blocks: Vec<Block> = Vec::new();
        if spec.blocks.is_empty() {
            problems.push("spec.blocks is empty".to_string());
        }
        for (index, block_spec) in spec.blocks.iter().enumerate() {
            match parse_block(block_spec, spec.allow_first_last_ips) {
                Ok(block) => {
                    for earlier in &blocks {
                        let a = FamilySets::from_range(&earlier.range);
                        let b = FamilySets::from_range(&block.range);
                        if let Some(shared) = a.intersection(&b).ranges().next() {
                            problems.push(format!(
                                "blocks[{index}] {} overlaps {} (shared {shared})",
                                block.text, earlier.text
                            ));
                        }
                    }
                    blocks.push(block);
                }
                Err(problem) => problems.push(format!("blocks[{index}]: {problem}")),
            }
        }
        let mut seen_namespaces = std::collections::BTreeSet::new();
        for ns in &spec.namespaces {
            if !seen_namespaces.insert(ns) {
                problems.push(format!("namespaces lists {ns:?} twice"));
            }
        }
        if !problems.is_empty() {
            return Err(PoolError {
                pool: spec.name.clone(),
                problems,
            });
        }
        let mut usable = FamilySets::default();
        for block in &blocks {
            usable.insert_range(&block.range);
            for ip in &block.skipped {
                usable.remove(ip);
            }
        }
        Ok(Pool {
            spec,
            blocks,
            owned: usable.clone(),
            usable,
            lost: Vec::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn has_family(&self, family: Family) -> bool {
        !self.available_set(family).is_empty()
    }

    /// Every address the pool may hand out for `family`, before avoidBuggyIPs.
    fn available_set(&self, family: Family) -> &RangeSet {
        self.owned.get(family)
    }

    /// Addresses the pool owns (blocks minus skipped and lost ranges), both families.
    pub fn owned(&self) -> &FamilySets {
        &self.owned
    }

    fn lose(&mut self, range: IpRange, keeper: String) {
        self.owned.remove_range(&range);
        self.lost.push((range, keeper));
    }

    /// The ranges lost to overlapping pools, with the pool that keeps each.
    pub fn lost_ranges(&self) -> &[(IpRange, String)] {
        &self.lost
    }

    /// The blocks' ranges, as written.
    pub fn block_ranges(&self) -> Vec<IpRange> {
        self.blocks.iter().map(|b| b.range).collect()
    }

    /// Whether the pool may hand out `ip`, and why not.
    pub fn check_address(&self, ip: &IpAddr) -> Result<(), Unusable> {
        if !self.blocks.iter().any(|b| b.range.contains(ip)) {
            return Err(Unusable::NotInBlocks);
        }
        if self.blocks.iter().any(|b| b.skipped.contains(ip)) {
            return Err(Unusable::NetworkOrBroadcast);
        }
        if let Some((_, other)) = self.lost.iter().find(|(r, _)| r.contains(ip)) {
            return Err(Unusable::HeldByOverlappingPool(other.clone()));
        }
        if self.spec.avoid_buggy_ips && is_buggy(Family::of(ip), ip_value(ip)) {
            return Err(Unusable::Buggy);
        }
        Ok(())
    }

    /// Whether `ip` lies in the pool's blocks at all (allocations there belong to it).
    pub fn covers(&self, ip: &IpAddr) -> bool {
        self.blocks.iter().any(|b| b.range.contains(ip))
    }

    /// The lowest address of `family` the pool may hand out that `used` does not hold.
    pub fn first_free(&self, family: Family, used: &RangeSet) -> Option<IpAddr> {
        let set = self.available_set(family);
        let mut from = 0u128;
        loop {
            let candidate = set.first_not_in_at_or_after(used, from)?;
            if self.spec.avoid_buggy_ips && is_buggy(family, candidate) {
                // Skip .255 and the .0 after it in one step.
                from = candidate.checked_add(if candidate & 0xff == 0xff { 2 } else { 1 })?;
                continue;
            }
            return Some(family.addr(candidate));
        }
    }

    /// How many addresses the pool may hand out in all.
    pub fn capacity(&self) -> u128 {
        [Family::V4, Family::V6]
            .into_iter()
            .map(|family| {
                let set = self.available_set(family);
                let buggy = if self.spec.avoid_buggy_ips {
                    count_buggy(set)
                } else {
                    0
                };
                set.count() - buggy
            })
            .fold(0u128, u128::saturating_add)
    }

    /// `(allocated, available)` given the addresses in use.
    pub fn usage(&self, used: &FamilySets) -> (u128, u128) {
        let mut allocated = 0u128;
        let mut allocated_usable = 0u128;
        for family in [Family::V4, Family::V6] {
            let held = self.available_set(family).intersection(used.get(family));
            allocated = allocated.saturating_add(held.count());
            let buggy = if self.spec.avoid_buggy_ips {
                count_buggy(&held)
            } else {
                0
            };
            allocated_usable = allocated_usable.saturating_add(held.count() - buggy);
        }
        (allocated, self.capacity().saturating_sub(allocated_usable))
    }

    /// Free ranges (at most `limit` of them) and whether more exist.
    pub fn free_ranges(&self, used: &FamilySets, limit: usize) -> (Vec<IpRange>, bool) {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            let free = self.available_set(family).difference(used.get(family));
            for (s, e) in free.iter() {
                let pieces: Vec<(u128, u128)> = if self.spec.avoid_buggy_ips && family == Family::V4
                {
                    split_buggy(s, e, limit + 1 - out.len().min(limit))
                } else {
                    vec![(s, e)]
                };
                for (ps, pe) in pieces {
                    if out.len() == limit {
                        return (out, true);
                    }
                    out.push(IpRange {
                        start: family.addr(ps),
                        end: family.addr(pe),
                    });
                }
            }
        }
        (out, false)
    }
}

/// Splits `[s, e]` around addresses ending in .0/.255, producing at most `max` pieces.
fn split_buggy(s: u128, e: u128, max: usize) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    let mut cursor = s;
    while cursor <= e && out.len() < max {
        if is_buggy(Family::V4, cursor) {
            cursor += 1;
            continue;
        }
        let block_end = (cursor | 0xff) - 1; // .254 of this /24
        let end = block_end.min(e);
        out.push((cursor, end));
        cursor = end + 1;
    }
    out
}

impl FamilySets {
    pub fn from_range(range: &IpRange) -> FamilySets {
        let mut sets = FamilySets::default();
        sets.insert_range(range);
        sets
    }
}

/// Two pools claim the same addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// The pool that keeps the shared ranges (older, then lower name).
    pub keeper: String,
    /// The pool that loses them.
    pub loser: String,
    pub shared: Vec<IpRange>,
}

impl fmt::Display for Overlap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IPPool {} overlaps IPPool {} on {}; {} keeps the shared range \
             ({} was created first or sorts first by name)",
            self.loser,
            self.keeper,
            format_ranges(&self.shared),
            self.keeper,
            self.keeper
        )
    }
}

/// Order in which pools keep shared ranges: created first, then by name. Unknown creation
/// times sort after known ones.
fn seniority(spec: &PoolSpec) -> (bool, i64, &str) {
    (
        spec.created.is_none(),
        spec.created.unwrap_or(0),
        spec.name.as_str(),
    )
}

/// A validated set of pools, with overlaps resolved.
#[derive(Debug, Clone, Default)]
pub struct PoolSet {
    /// Ordered by (priority, name): the order pools are tried in.
    pools: Vec<Pool>,
    overlaps: Vec<Overlap>,
}

impl PoolSet {
    /// Builds the set; an overlap gives the shared range to the senior pool and is reported.
    pub fn new(mut pools: Vec<Pool>) -> PoolSet {
        pools.sort_by(|a, b| seniority(&a.spec).cmp(&seniority(&b.spec)));
        let mut overlaps = Vec::new();
        for i in 0..pools.len() {
            for j in (i + 1)..pools.len() {
                let shared = pools[i].usable.intersection(&pools[j].usable);
                if shared.is_empty() {
                    continue;
                }
                let shared: Vec<IpRange> = shared.ranges().collect();
                let keeper = pools[i].spec.name.clone();
                for range in &shared {
                    pools[j].lose(*range, keeper.clone());
                }
                overlaps.push(Overlap {
                    keeper,
                    loser: pools[j].spec.name.clone(),
                    shared,
                });
            }
        }
        pools.sort_by(|a, b| (a.spec.priority, &a.spec.name).cmp(&(b.spec.priority, &b.spec.name)));
        PoolSet { pools, overlaps }
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    pub fn overlaps(&self) -> &[Overlap] {
        &self.overlaps
    }

    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.spec.name == name)
    }

    /// The pool an address belongs to: the one that owns it, else the first whose blocks hold it.
    pub fn pool_of(&self, ip: &IpAddr) -> Option<&Pool> {
        self.pools
            .iter()
            .find(|p| p.owned().contains(ip))
            .or_else(|| self.pools.iter().find(|p| p.covers(ip)))
    }

    /// Chooses the pools a Service may draw from, in the order they are tried.
    pub fn select<'a>(&'a self, query: &PoolQuery<'_>) -> Selection<'a> {
        let mut selection = Selection {
            candidates: Vec::new(),
            refused: Vec::new(),
            unknown: Vec::new(),
            namespace: query.namespace.to_string(),
            named: query.named.map(<[String]>::to_vec),
            family: query.family,
        };
        if let Some(named) = query.named {
            for name in named {
                if self.get(name).is_none() {
                    selection.unknown.push(name.clone());
                }
            }
        }
        // Service labels plus the pseudo-labels, built once, and only if a pool selects.
        let mut labels: Option<BTreeMap<String, String>> = None;
        for pool in &self.pools {
            match refusal(pool, query, &mut labels) {
                None => selection.candidates.push(pool),
                Some(why) => selection.refused.push((pool, why)),
            }
        }
        selection
    }
}

/// What a Service looks like to pool selection.
#[derive(Debug, Clone)]
pub struct PoolQuery<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// Pools named by `vipam.io/pool` (or a compatible annotation).
    pub named: Option<&'a [String]>,
    pub family: Family,
    /// An explicit pin: `autoAssign: false` pools are then allowed.
    pub pinned: bool,
}

/// Why a pool may not serve a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotNamed,
    Disabled,
    NoAutoAssign,
    Namespace,
    Selector,
    Family,
}

/// The outcome of [`PoolSet::select`].
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    pub candidates: Vec<&'a Pool>,
    /// Pools passed over, with the reason (for messages).
    pub refused: Vec<(&'a Pool, Refusal)>,
    /// Names in `vipam.io/pool` that match no pool.
    pub unknown: Vec<String>,
    namespace: String,
    named: Option<Vec<String>>,
    family: Family,
}

impl Selection<'_> {
    /// Why `pool` was passed over, as a phrase ("disabled (no new allocations)").
    pub fn reason(&self, pool: &Pool, refusal: Refusal) -> String {
        let spec = &pool.spec;
        match refusal {
            Refusal::NotNamed => format!(
                "not named in the Service's pool annotation ({})",
                self.named.as_deref().unwrap_or_default().join(",")
            ),
            Refusal::Disabled => "disabled (no new allocations)".to_string(),
            Refusal::NoAutoAssign => {
                "autoAssign is false (only pinned IPs or a named pool)".to_string()
            }
            Refusal::Namespace => format!(
                "namespaces [{}] does not include {}",
                spec.namespaces.join(","),
                self.namespace
            ),
            Refusal::Selector => format!(
                "serviceSelector {} does not match",
                spec.service_selector
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ),
            Refusal::Family => format!("has no {} addresses", self.family),
        }
    }

    /// Why the named pool was passed over, if it was.
    pub fn refusal_of(&self, name: &str) -> Option<String> {
        self.refused
            .iter()
            .find(|(p, _)| p.name() == name)
            .map(|(p, r)| self.reason(p, *r))
    }

    /// "a: disabled; b: serviceSelector ... does not match" for messages.
    pub fn explain_refusals(&self) -> String {
        if self.refused.is_empty() {
            return "no IPPool exists".to_string();
        }
        self.refused
            .iter()
            .map(|(pool, why)| format!("{}: {}", pool.name(), self.reason(pool, *why)))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn refusal(
    pool: &Pool,
    query: &PoolQuery<'_>,
    labels: &mut Option<BTreeMap<String, String>>,
) -> Option<Refusal> {
    let spec = &pool.spec;
    let named = query
        .named
        .is_some_and(|names| names.iter().any(|n| n == &spec.name));
    if query.named.is_some() && !named {
        return Some(Refusal::NotNamed);
    }
    if spec.disabled {
        return Some(Refusal::Disabled);
    }
    if !spec.auto_assign && !query.pinned && !named {
        return Some(Refusal::NoAutoAssign);
    }
    if !spec.namespaces.is_empty() && !spec.namespaces.iter().any(|n| n == query.namespace) {
        return Some(Refusal::Namespace);
    }
    if let Some(selector) = &spec.service_selector {
        let labels = labels.get_or_insert_with(|| {
            let mut labels = query.labels.clone();
            labels.insert(
                SERVICE_NAMESPACE_LABEL.to_string(),
                query.namespace.to_string(),
            );
            labels.insert(SERVICE_NAME_LABEL.to_string(), query.name.to_string());
            labels
        });
        if !selector.matches(labels) {
            return Some(Refusal::Selector);
        }
    }
    if !pool.has_family(query.family) {
        return Some(Refusal::Family);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pool(name: &str, blocks: Vec<BlockSpec>) -> Pool {
        Pool::parse(PoolSpec::new(name, blocks)).unwrap()
    }

    #[test]
    fn block_parsing_table() {
        let ok: &[(BlockSpec, &str, u128)] = &[
            (
                BlockSpec::cidr("192.0.2.0/24"),
                "192.0.2.0-192.0.2.255",
                254,
            ),
            (BlockSpec::cidr("192.0.2.0/30"), "192.0.2.0-192.0.2.3", 2),
            (BlockSpec::cidr("192.0.2.0/31"), "192.0.2.0-192.0.2.1", 2),
            (BlockSpec::cidr("192.0.2.7/32"), "192.0.2.7", 1),
            (
                BlockSpec::range("192.0.2.10", "192.0.2.20"),
                "192.0.2.10-192.0.2.20",
                11,
            ),
            (
                BlockSpec {
                    start: Some("192.0.2.9".into()),
                    ..BlockSpec::default()
                },
                "192.0.2.9",
                1,
            ),
            (
                BlockSpec::cidr("2001:db8::/64"),
                "2001:db8::-2001:db8::ffff:ffff:ffff:ffff",
                1 << 64,
            ),
        ];
        for (spec, range, capacity) in ok {
            let p = pool("p", vec![spec.clone()]);
            assert_eq!(p.blocks[0].range.to_string(), *range, "{spec}");
            assert_eq!(p.capacity(), *capacity, "{spec}");
        }
        let bad: &[(BlockSpec, &str)] = &[
            (BlockSpec::cidr("192.0.2.0/33"), "is not a CIDR"),
            (
                BlockSpec::cidr("192.0.2.1/24"),
                "host bits set (did you mean 192.0.2.0/24?)",
            ),
            (
                BlockSpec::range("192.0.2.20", "192.0.2.10"),
                "stop 192.0.2.10 is before start 192.0.2.20",
            ),
            (
                BlockSpec::range("192.0.2.1", "2001:db8::1"),
                "different families",
            ),
            (
                BlockSpec::range("192.0.2.300", "192.0.2.1"),
                "start \"192.0.2.300\" is not an IP address",
            ),
            (
                BlockSpec::cidr("0.0.0.0/0"),
                "0.0.0.0, the unspecified address",
            ),
            (
                BlockSpec::cidr("127.0.0.1/32"),
                "127.0.0.1, a loopback address",
            ),
            (
                BlockSpec::range("126.255.255.250", "127.0.0.5"),
                "127.0.0.0, a loopback address",
            ),
            (BlockSpec::cidr("224.0.0.0/24"), "a multicast address"),
            (BlockSpec::cidr("169.254.0.0/16"), "a link-local address"),
            (BlockSpec::cidr("fe80::/64"), "a link-local address"),
            (BlockSpec::cidr("ff02::/16"), "a multicast address"),
            (BlockSpec::cidr("::1/128"), "a loopback address"),
            (BlockSpec::cidr("::ffff:192.0.2.0/120"), "IPv4-mapped"),
            (BlockSpec::default(), "needs cidr or start"),
            (
                BlockSpec {
                    cidr: Some("192.0.2.0/24".into()),
                    start: Some("192.0.2.1".into()),
                    stop: None,
                },
                "not both",
            ),
        ];
        for (spec, needle) in bad {
            let err = Pool::parse(PoolSpec::new("p", vec![spec.clone()])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(needle), "{spec}: {text}");
            assert!(text.starts_with("IPPool p: blocks[0]"), "{text}");
        }
    }

    #[test]
    fn overlapping_blocks_inside_one_pool_are_refused() {
        let err = Pool::parse(PoolSpec::new(
            "p",
            vec![
                BlockSpec::cidr("192.0.2.0/28"),
                BlockSpec::range("192.0.2.10", "192.0.2.20"),
            ],
        ))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("overlaps cidr 192.0.2.0/28 (shared 192.0.2.10-192.0.2.15)"),
            "{err}"
        );
    }

    #[test]
    fn allow_first_last_and_avoid_buggy() {
        let mut spec = PoolSpec::new("p", vec![BlockSpec::cidr("192.0.2.0/24")]);
        let p = Pool::parse(spec.clone()).unwrap();
        assert_eq!(
            p.check_address(&ip("192.0.2.0")),
            Err(Unusable::NetworkOrBroadcast)
        );
        assert_eq!(
            p.first_free(Family::V4, &RangeSet::new()),
            Some(ip("192.0.2.1"))
        );
        spec.allow_first_last_ips = true;
        let p = Pool::parse(spec.clone()).unwrap();
        assert_eq!(p.capacity(), 256);
        assert_eq!(
            p.first_free(Family::V4, &RangeSet::new()),
            Some(ip("192.0.2.0"))
        );

        let mut spec = PoolSpec::new(
            "b",
            vec![BlockSpec::range("198.51.100.250", "198.51.101.5")],
        );
        spec.avoid_buggy_ips = true;
        let p = Pool::parse(spec).unwrap();
        assert_eq!(p.capacity(), 12 - 2);
        assert_eq!(p.check_address(&ip("198.51.100.255")), Err(Unusable::Buggy));
        let mut used = RangeSet::new();
        used.insert_range(
            ip_value(&ip("198.51.100.250")),
            ip_value(&ip("198.51.100.254")),
        );
        assert_eq!(p.first_free(Family::V4, &used), Some(ip("198.51.101.1")));
        let used_sets = FamilySets {
            v4: used,
            ..FamilySets::default()
        };
        let (free, more) = p.free_ranges(&used_sets, 10);
        assert_eq!(format_ranges(&free), "198.51.101.1-198.51.101.5");
        assert!(!more);
        assert_eq!(p.usage(&used_sets), (5, 5));
        // start/stop blocks never skip first/last.
        let p = pool("s", vec![BlockSpec::range("192.0.2.0", "192.0.2.255")]);
        assert_eq!(p.capacity(), 256);
    }

    #[test]
    fn overlaps_between_pools_go_to_the_senior_pool() {
        let a = pool("lan", vec![BlockSpec::range("192.0.2.220", "192.0.2.239")]);
        let b = pool("extra", vec![BlockSpec::cidr("192.0.2.232/29")]);
        let set = PoolSet::new(vec![a.clone(), b.clone()]);
        // No creation times: the lower name keeps the range.
        assert_eq!(set.overlaps().len(), 1);
        let o = &set.overlaps()[0];
        assert_eq!((o.keeper.as_str(), o.loser.as_str()), ("extra", "lan"));
        assert_eq!(format_ranges(&o.shared), "192.0.2.233-192.0.2.238");
        assert_eq!(
            set.get("lan").unwrap().check_address(&ip("192.0.2.233")),
            Err(Unusable::HeldByOverlappingPool("extra".into()))
        );
        // With creation times the older keeps it.
        let mut a2 = a.clone();
        a2.spec.created = Some(100);
        let mut b2 = b.clone();
        b2.spec.created = Some(200);
        let set = PoolSet::new(vec![b2, a2]);
        assert_eq!(set.overlaps()[0].keeper, "lan");
        assert!(
            set.overlaps()[0]
                .to_string()
                .contains("IPPool extra overlaps IPPool lan on 192.0.2.233-192.0.2.238")
        );
        assert_eq!(set.get("extra").unwrap().capacity(), 0);
    }

    #[test]
    fn selection_filters_and_orders() {
        let mut specs = vec![
            PoolSpec::new("b", vec![BlockSpec::cidr("192.0.2.0/28")]),
            PoolSpec::new("a", vec![BlockSpec::cidr("192.0.2.16/28")]),
            PoolSpec::new("first", vec![BlockSpec::cidr("192.0.2.32/28")]),
            PoolSpec::new("off", vec![BlockSpec::cidr("192.0.2.48/28")]),
            PoolSpec::new("manual", vec![BlockSpec::cidr("192.0.2.64/28")]),
            PoolSpec::new("team", vec![BlockSpec::cidr("192.0.2.80/28")]),
            PoolSpec::new("v6", vec![BlockSpec::cidr("2001:db8::/120")]),
            PoolSpec::new("web", vec![BlockSpec::cidr("192.0.2.96/28")]),
        ];
        specs[2].priority = -1;
        specs[3].disabled = true;
        specs[4].auto_assign = false;
        specs[5].namespaces = vec!["team".into()];
        specs[7].service_selector = Some(
            LabelSelector::new(
                [(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into(),
                vec![],
            )
            .unwrap(),
        );
        let set = PoolSet::new(specs.into_iter().map(|s| Pool::parse(s).unwrap()).collect());
        let labels = BTreeMap::new();
        let query = PoolQuery {
            namespace: "apps",
            name: "api",
            labels: &labels,
            named: None,
            family: Family::V4,
            pinned: false,
        };
        let names = |s: &Selection<'_>| {
            s.candidates
                .iter()
                .map(|p| p.name().to_string())
                .collect::<Vec<_>>()
        };
        let sel = set.select(&query);
        assert_eq!(names(&sel), vec!["first", "a", "b"]);
        let text = sel.explain_refusals();
        for needle in [
            "off: disabled",
            "manual: autoAssign is false",
            "team: namespaces [team] does not include apps",
            "v6: has no IPv4 addresses",
            "web: serviceSelector vipam.io/service-name=web does not match",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        let sel = set.select(&PoolQuery {
            name: "web",
            pinned: true,
            ..query.clone()
        });
        assert_eq!(names(&sel), vec!["first", "a", "b", "manual", "web"]);
        let named = vec!["manual".to_string(), "nope".to_string()];
        let sel = set.select(&PoolQuery {
            named: Some(&named),
            ..query.clone()
        });
        assert_eq!(names(&sel), vec!["manual"]);
        assert_eq!(sel.unknown, vec!["nope".to_string()]);
        let sel = set.select(&PoolQuery {
            family: Family::V6,
            ..query
        });
        assert_eq!(names(&sel), vec!["v6"]);
    }
}
