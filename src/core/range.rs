//! Sets of IP addresses as sorted, disjoint, non-adjacent inclusive ranges over `u128`.
//!
//! IPv4 and IPv6 live in separate [`RangeSet`]s (see [`FamilySets`]); an IPv4 address is its
//! 32-bit value widened to `u128`. Every operation costs O(log n) or O(n) in the number of
//! *ranges* held, never in the number of addresses, so a /64 with a million allocations is cheap.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The Kubernetes spelling (`IPv4`, `IPv6`), as in `spec.ipFamilies`.
    pub fn k8s_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The largest address value of the family.
    pub fn max_value(self) -> u128 {
        match self {
            Family::V4 => u32::MAX as u128,
            Family::V6 => u128::MAX,
        }
    }

    /// Builds the address of this family from its numeric value (truncated to 32 bits for v4).
    pub fn addr(self, value: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(value as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.k8s_name())
    }
}

/// The numeric value of an address.
pub fn ip_value(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(*v4) as u128,
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl IpRange {
    /// A range from `start` to `end`, which must be of one family with `start <= end`.
    pub fn new(start: IpAddr, end: IpAddr) -> Option<IpRange> {
        (Family::of(&start) == Family::of(&end) && ip_value(&start) <= ip_value(&end))
            .then_some(IpRange { start, end })
    }

    pub fn single(ip: IpAddr) -> IpRange {
        IpRange { start: ip, end: ip }
    }

    pub fn family(&self) -> Family {
        Family::of(&self.start)
    }

    /// Number of addresses; saturates at `u128::MAX` for the whole IPv6 space.
    pub fn count(&self) -> u128 {
        span_count(ip_value(&self.start), ip_value(&self.end))
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        Family::of(ip) == self.family()
            && (ip_value(&self.start)..=ip_value(&self.end)).contains(&ip_value(ip))
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

fn span_count(start: u128, end: u128) -> u128 {
    (end - start).saturating_add(1)
}

/// A set of `u128` values stored as disjoint, non-adjacent inclusive ranges (start -> end).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<u128, u128>,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    pub fn from_range(start: u128, end: u128) -> RangeSet {
        let mut set = RangeSet::new();
        set.insert_range(start, end);
        set
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of stored ranges (what memory and time scale with).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Number of values held; saturates at `u128::MAX`.
    pub fn count(&self) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |acc, (s, e)| acc.saturating_add(span_count(*s, *e)))
    }

    /// The ranges in ascending order, as inclusive `(start, end)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    pub fn first(&self) -> Option<u128> {
        self.ranges.keys().next().copied()
    }

    /// The range holding `value`, if any.
    fn range_containing(&self, value: u128) -> Option<(u128, u128)> {
        self.ranges
            .range(..=value)
            .next_back()
            .filter(|(_, end)| **end >= value)
            .map(|(s, e)| (*s, *e))
    }

    pub fn contains(&self, value: u128) -> bool {
        self.range_containing(value).is_some()
    }

    /// True when every value of `[start, end]` is held.
    pub fn contains_range(&self, start: u128, end: u128) -> bool {
        self.range_containing(start).is_some_and(|(_, e)| e >= end)
    }

    pub fn insert(&mut self, value: u128) {
        self.insert_range(value, value);
    }

    /// Adds `[start, end]`, merging with overlapping and adjacent ranges.
    pub fn insert_range(&mut self, start: u128, end: u128) {
        assert!(start <= end, "insert_range: start {start} > end {end}");
        let mut new_start = start;
        let mut new_end = end;
        // A range that starts before `start` and reaches it (or touches it) is absorbed.
        if let Some((s, e)) = self
            .ranges
            .range(..start)
            .next_back()
            .map(|(s, e)| (*s, *e))
            && e.saturating_add(1) >= start
        {
            new_start = s;
            new_end = new_end.max(e);
            self.ranges.remove(&s);
        }
        // Ranges starting inside `[start, end + 1]` are absorbed too.
        let upper = new_end.saturating_add(1);
        let absorbed: Vec<(u128, u128)> = self
            .ranges
            .range(new_start..=upper)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in absorbed {
            new_end = new_end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(new_start, new_end);
    }

    pub fn remove(&mut self, value: u128) {
        self.remove_range(value, value);
    }

    /// Removes `[start, end]`, splitting ranges that straddle it.
    pub fn remove_range(&mut self, start: u128, end: u128) {
        assert!(start <= end, "remove_range: start {start} > end {end}");
        if let Some((s, e)) = self.range_containing(start) {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, start - 1);
            }
            if e > end {
                self.ranges.insert(end + 1, e);
                return;
            }
        }
        let inside: Vec<(u128, u128)> = self
            .ranges
            .range(start..=end)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in inside {
            self.ranges.remove(&s);
            if e > end {
                self.ranges.insert(end + 1, e);
            }
        }
    }

    /// The first value `>= from` that is *not* in the set (`None` past `max`).
    pub fn first_free_at_or_after(&self, from: u128, max: u128) -> Option<u128> {
        if from > max {
            return None;
        }
        match self.range_containing(from) {
            None => Some(from),
            // Ranges are merged, so the value after a range's end is free.
            Some((_, end)) => end.checked_add(1).filter(|next| *next <= max),
        }
    }

    /// The first value of `self` that `used` does not hold.
    pub fn first_not_in(&self, used: &RangeSet) -> Option<u128> {
        self.first_not_in_at_or_after(used, 0)
    }

    /// The first value `>= from` of `self` that `used` does not hold.
    pub fn first_not_in_at_or_after(&self, used: &RangeSet, from: u128) -> Option<u128> {
        let first_relevant = self.range_containing(from).map_or(from, |(s, _)| s);
        self.ranges
            .range(first_relevant..)
            .find_map(|(s, e)| used.first_free_at_or_after((*s).max(from), *e))
    }

    /// Values in `self` but not in `other`.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = self.clone();
        for (s, e) in other.iter() {
            if out.is_empty() {
                break;
            }
            out.remove_range(s, e);
        }
        out
    }

    /// Values in both sets.
    pub fn intersection(&self, other: &RangeSet) -> RangeSet {
        let mut out = RangeSet::new();
        let (small, large) = if self.range_count() <= other.range_count() {
            (self, other)
        } else {
            (other, self)
        };
        for (s, e) in small.iter() {
            let first = large.range_containing(s).map_or(s, |(ls, _)| ls);
            for (ls, le) in large.ranges.range(first..=e) {
                let lo = s.max(*ls);
                let hi = e.min(*le);
                if lo <= hi {
                    out.ranges.insert(lo, hi);
                }
            }
        }
        out
    }

    /// Number of values of `[start, end]` that the set holds.
    pub fn count_within(&self, start: u128, end: u128) -> u128 {
        let first = self.range_containing(start).map_or(start, |(s, _)| s);
        self.ranges.range(first..=end).fold(0u128, |acc, (s, e)| {
            let lo = start.max(*s);
            let hi = end.min(*e);
            if lo <= hi {
                acc.saturating_add(span_count(lo, hi))
            } else {
                acc
            }
        })
    }
}

/// One [`RangeSet`] per family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilySets {
    pub v4: RangeSet,
    pub v6: RangeSet,
}

impl FamilySets {
    pub fn get(&self, family: Family) -> &RangeSet {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    pub fn get_mut(&mut self, family: Family) -> &mut RangeSet {
        match family {
            Family::V4 => &mut self.v4,
            Family::V6 => &mut self.v6,
        }
    }

    pub fn insert(&mut self, ip: &IpAddr) {
        self.get_mut(Family::of(ip)).insert(ip_value(ip));
    }

    pub fn remove(&mut self, ip: &IpAddr) {
        self.get_mut(Family::of(ip)).remove(ip_value(ip));
    }

    pub fn insert_range(&mut self, range: &IpRange) {
        self.get_mut(range.family())
            .insert_range(ip_value(&range.start), ip_value(&range.end));
    }

    pub fn remove_range(&mut self, range: &IpRange) {
        self.get_mut(range.family())
            .remove_range(ip_value(&range.start), ip_value(&range.end));
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.get(Family::of(ip)).contains(ip_value(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn count(&self) -> u128 {
        self.v4.count().saturating_add(self.v6.count())
    }

    pub fn difference(&self, other: &FamilySets) -> FamilySets {
        FamilySets {
            v4: self.v4.difference(&other.v4),
            v6: self.v6.difference(&other.v6),
        }
    }

    pub fn intersection(&self, other: &FamilySets) -> FamilySets {
        FamilySets {
            v4: self.v4.intersection(&other.v4),
            v6: self.v6.intersection(&other.v6),
        }
    }

    /// All ranges, IPv4 first, each ascending.
    pub fn ranges(&self) -> impl Iterator<Item = IpRange> + '_ {
        [Family::V4, Family::V6]
            .into_iter()
            .flat_map(move |family| {
                self.get(family).iter().map(move |(s, e)| IpRange {
                    start: family.addr(s),
                    end: family.addr(e),
                })
            })
    }
}

/// Formats ranges as `a-b, c, d-e`.
pub fn format_ranges<'a>(ranges: impl IntoIterator<Item = &'a IpRange>) -> String {
    let parts: Vec<String> = ranges.into_iter().map(|r| r.to_string()).collect();
    if parts.is_empty() {
        "(none)".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn set(ranges: &[(u128, u128)]) -> RangeSet {
        let mut s = RangeSet::new();
        for (a, b) in ranges {
            s.insert_range(*a, *b);
        }
        s
    }

    type Ranges<'a> = &'a [(u128, u128)];

    fn pairs(s: &RangeSet) -> Vec<(u128, u128)> {
        s.iter().collect()
    }

    #[test]
    fn insert_merges_overlapping_and_adjacent() {
        let cases: &[(Ranges<'_>, Ranges<'_>)] = &[
            (&[(1, 3), (5, 7)], &[(1, 3), (5, 7)]),
            (&[(1, 3), (4, 7)], &[(1, 7)]),
            (&[(5, 7), (1, 4)], &[(1, 7)]),
            (&[(1, 10), (3, 4)], &[(1, 10)]),
            (&[(3, 4), (1, 10)], &[(1, 10)]),
            (&[(1, 2), (4, 5), (7, 8), (3, 6)], &[(1, 8)]),
            (
                &[(0, 0), (u128::MAX, u128::MAX)],
                &[(0, 0), (u128::MAX, u128::MAX)],
            ),
            (&[(0, u128::MAX), (5, 6)], &[(0, u128::MAX)]),
        ];
        for (input, expected) in cases {
            assert_eq!(pairs(&set(input)), expected.to_vec(), "input {input:?}");
        }
    }

    #[test]
    fn remove_splits_and_trims() {
        let cases: &[(Ranges<'_>, (u128, u128), Ranges<'_>)] = &[
            (&[(1, 10)], (4, 5), &[(1, 3), (6, 10)]),
            (&[(1, 10)], (1, 10), &[]),
            (&[(1, 10)], (0, 3), &[(4, 10)]),
            (&[(1, 10)], (8, 20), &[(1, 7)]),
            (&[(1, 3), (5, 7), (9, 11)], (2, 10), &[(1, 1), (11, 11)]),
            (&[(1, 3)], (5, 7), &[(1, 3)]),
            (
                &[(0, u128::MAX)],
                (u128::MAX, u128::MAX),
                &[(0, u128::MAX - 1)],
            ),
        ];
        for (input, (a, b), expected) in cases {
            let mut s = set(input);
            s.remove_range(*a, *b);
            assert_eq!(pairs(&s), expected.to_vec(), "{input:?} minus {a}-{b}");
        }
    }

    #[test]
    fn first_free_and_counts() {
        let s = set(&[(10, 20), (22, 30)]);
        assert_eq!(s.first_free_at_or_after(0, 100), Some(0));
        assert_eq!(s.first_free_at_or_after(10, 100), Some(21));
        assert_eq!(s.first_free_at_or_after(22, 100), Some(31));
        assert_eq!(s.first_free_at_or_after(22, 30), None);
        assert_eq!(s.count(), 20);
        assert_eq!(s.count_within(15, 25), 10);
        let pool = set(&[(10, 40)]);
        assert_eq!(pool.first_not_in(&s), Some(21));
        assert_eq!(pool.first_not_in_at_or_after(&s, 22), Some(31));
        assert_eq!(pairs(&pool.difference(&s)), vec![(21, 21), (31, 40)]);
        assert_eq!(pairs(&pool.intersection(&s)), vec![(10, 20), (22, 30)]);
    }

    #[test]
    fn counts_are_u128() {
        // A /64 holds 2^64 addresses, more than u64 can count.
        let base: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0000;
        let s = RangeSet::from_range(base, base + (1u128 << 64) - 1);
        assert_eq!(s.count(), 1u128 << 64);
        assert_eq!(RangeSet::from_range(0, u128::MAX).count(), u128::MAX);
    }

    #[test]
    fn ip_range_display_and_contains() {
        let r = IpRange::new("192.0.2.1".parse().unwrap(), "192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(r.to_string(), "192.0.2.1-192.0.2.9");
        assert_eq!(r.count(), 9);
        assert!(r.contains(&"192.0.2.5".parse().unwrap()));
        assert!(!r.contains(&"2001:db8::5".parse().unwrap()));
        assert!(IpRange::new("192.0.2.9".parse().unwrap(), "192.0.2.1".parse().unwrap()).is_none());
        assert!(
            IpRange::new("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()).is_none()
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8),
        Remove(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), 0u8..16).prop_map(|(s, l)| Op::Insert(s, l)),
            (any::<u8>(), 0u8..16).prop_map(|(s, l)| Op::Remove(s, l)),
        ]
    }

    proptest! {
        /// The range set behaves exactly like a plain set of values.
        #[test]
        fn matches_naive_model(ops in proptest::collection::vec(op(), 0..60), probe in any::<u8>()) {
            let mut model: BTreeSet<u128> = BTreeSet::new();
            let mut s = RangeSet::new();
            for op in ops {
                match op {
                    Op::Insert(start, len) => {
                        let (a, b) = (start as u128, start as u128 + len as u128);
                        s.insert_range(a, b);
                        model.extend(a..=b);
                    }
                    Op::Remove(start, len) => {
                        let (a, b) = (start as u128, start as u128 + len as u128);
                        s.remove_range(a, b);
                        for v in a..=b { model.remove(&v); }
                    }
                }
                // Invariant: sorted, disjoint, non-adjacent.
                let mut prev_end: Option<u128> = None;
                for (a, b) in s.iter() {
                    prop_assert!(a <= b);
                    if let Some(p) = prev_end { prop_assert!(a > p + 1); }
                    prev_end = Some(b);
                }
            }
            prop_assert_eq!(s.count(), model.len() as u128);
            for v in 0u128..300 {
                prop_assert_eq!(s.contains(v), model.contains(&v));
            }
            let p = probe as u128;
            let expected = (p..=300).find(|v| !model.contains(v));
            prop_assert_eq!(s.first_free_at_or_after(p, 300), expected);
            let window = RangeSet::from_range(p, p + 20);
            let naive_inter: BTreeSet<u128> = (p..=p + 20).filter(|v| model.contains(v)).collect();
            prop_assert_eq!(window.intersection(&s).count(), naive_inter.len() as u128);
            prop_assert_eq!(s.count_within(p, p + 20), naive_inter.len() as u128);
            prop_assert_eq!(window.difference(&s).count(), 21 - naive_inter.len() as u128);
            prop_assert_eq!(window.first_not_in(&s), (p..=p + 20).find(|v| !model.contains(v)));
        }
    }
}
