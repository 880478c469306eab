//! What one session has sent (its Adj-RIB-Out), and the UPDATEs that bring the peer from that
//! to what is wanted.
//!
//! The speaker keeps one [`RibOut`] per session: it sets the desired routes whenever they change,
//! sends [`RibOut::updates`] while the session is Established, sends [`RibOut::full`] and then
//! End-of-RIB per family when it becomes Established or the peer asks for a route refresh, and
//! calls [`RibOut::reset`] when it goes down.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::message::{Community, Family, RouteAttrs, Update};
use super::session::{Negotiated, SessionConfig};

/// The largest BGP message without the extended message capability (RFC 4271 4.1; vipam does
/// not negotiate RFC 8654).
pub const MAX_MESSAGE: usize = 4096;
/// The BGP header: marker 16, length 2, type 1.
const HEADER: usize = 19;
/// An attribute's value is at most this long with a one-byte length field.
const SHORT_ATTRIBUTE: usize = 255;

/// How a session encodes UPDATEs: what changes their size on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// Our ASN, for the AS_PATH (and AS4_PATH when it does not fit in 2 bytes).
    pub local_asn: u32,
    /// AS numbers are 4 bytes in AS_PATH (both sides sent the capability).
    pub four_octet_asn: bool,
    /// Internal peer: empty AS_PATH, LOCAL_PREF sent.
    pub ibgp: bool,
    /// Length of the IPv6 next hop in MP_REACH_NLRI: 16 (global) or 32 (global + link-local).
    pub ipv6_next_hop_len: u8,
}

impl Encoding {
    /// The encoding of an Established session.
    pub fn of(config: &SessionConfig, negotiated: &Negotiated, ipv6_next_hop_len: u8) -> Encoding {
        Encoding {
            local_asn: config.local_asn,
            four_octet_asn: negotiated.four_octet_asn,
            ibgp: negotiated.ibgp,
            ipv6_next_hop_len,
        }
    }

    /// The eBGP AS_PATH needs AS_TRANS and an AS4_PATH (RFC 6793 4.2.2).
    fn needs_as4_path(&self) -> bool {
        !self.ibgp && !self.four_octet_asn && self.local_asn > u32::from(u16::MAX)
    }
}

/// The family of a prefix.
fn family_of(prefix: &IpNet) -> Family {
    Family::of(prefix.addr())
}

/// A prefix in NLRI, withdrawn routes or MP_(UN)REACH_NLRI: length byte, then the bytes that
/// hold its bits.
fn prefix_size(prefix: &IpNet) -> usize {
    1 + usize::from(prefix.prefix_len()).div_ceil(8)
}

fn prefixes_size(prefixes: &[IpNet]) -> usize {
    prefixes.iter().map(prefix_size).sum()
}

/// A path attribute with a value of `value` bytes: flags 1, type 1, length 1, or 2 with the
/// extended-length flag, which is set only when the value exceeds 255 bytes.
fn attribute_size(value: usize) -> usize {
    let length_field = if value > SHORT_ATTRIBUTE { 2 } else { 1 };
    2 + length_field + value
}

/// MP_UNREACH_NLRI's value before its prefixes: AFI 2, SAFI 1.
const MP_UNREACH_FIXED: usize = 3;

/// MP_REACH_NLRI's value before its prefixes: AFI 2, SAFI 1, next hop length 1, next hop,
/// reserved 1.
fn mp_reach_fixed(encoding: &Encoding) -> usize {
    5 + usize::from(encoding.ipv6_next_hop_len)
}

/// The attributes that go with announced prefixes, except MP_REACH_NLRI.
fn announcement_attributes_size(family: Family, attrs: &RouteAttrs, encoding: &Encoding) -> usize {
    let mut size = attribute_size(1); // ORIGIN
    if encoding.ibgp {
        size += attribute_size(0); // AS_PATH, empty
    } else {
        // One AS_SEQUENCE segment: type 1, count 1, our ASN.
        let asn = if encoding.four_octet_asn { 4 } else { 2 };
        size += attribute_size(2 + asn);
        if encoding.needs_as4_path() {
            size += attribute_size(2 + 4);
        }
    }
    if family == Family::Ipv4Unicast {
        size += attribute_size(4); // NEXT_HOP
    }
    // RFC 4271 5.1.5: every UPDATE to an internal peer carries LOCAL_PREF (100 when the route
    // sets none); external peers never get it.
    if encoding.ibgp {
        size += attribute_size(4);
    }
    let (standard, large) =
        attrs
            .communities
            .iter()
            .fold((0, 0), |(standard, large), community| match community {
                Community::Standard(_) => (standard + 1, large),
                Community::Large { .. } => (standard, large + 1),
            });
    if standard > 0 {
        size += attribute_size(4 * standard);
    }
    if large > 0 {
        size += attribute_size(12 * large);
    }
    size
}

/// The exact size in bytes of `update` on the wire, as the codec (netgauze, in
/// `agent::net::bgp`) encodes it: header 19; withdrawn routes length 2 and the IPv4 withdrawn
/// prefixes; total path attribute length 2 and the attributes; the IPv4 NLRI. Announcements
/// carry ORIGIN, AS_PATH (eBGP: one AS_SEQUENCE of our ASN, 2 or 4 bytes; AS_TRANS plus an
/// AS4_PATH when the ASN needs 4 bytes and the peer lacks the capability; iBGP: empty),
/// NEXT_HOP (IPv4) or MP_REACH_NLRI (IPv6, with its prefixes), LOCAL_PREF (iBGP, always),
/// COMMUNITIES and LARGE_COMMUNITY (when any). IPv6 withdrawals go in MP_UNREACH_NLRI; the
/// IPv6 End-of-RIB is an empty MP_UNREACH_NLRI, the IPv4 one an empty UPDATE (23 bytes). No
/// other attribute is sent. The codec must set the extended-length flag exactly when a value
/// exceeds 255 bytes, or these sizes are off.
pub fn encoded_size(update: &Update, encoding: &Encoding) -> usize {
    let withdrawn = prefixes_size(&update.withdrawn);
    let announced = prefixes_size(&update.announced);
    let (classic_withdrawn, classic_nlri, attributes) = match update.family {
        Family::Ipv4Unicast => {
            let attributes = if update.announced.is_empty() {
                0
            } else {
                announcement_attributes_size(update.family, &update.attrs, encoding)
            };
            (withdrawn, announced, attributes)
        }
        Family::Ipv6Unicast => {
            let mut attributes = 0;
            if !update.withdrawn.is_empty() || update.is_end_of_rib() {
                attributes += attribute_size(MP_UNREACH_FIXED + withdrawn);
            }
            if !update.announced.is_empty() {
                attributes += announcement_attributes_size(update.family, &update.attrs, encoding)
                    + attribute_size(mp_reach_fixed(encoding) + announced);
            }
            (0, 0, attributes)
        }
    };
    HEADER + 2 + classic_withdrawn + 2 + attributes + classic_nlri
}

/// Packs `prefixes` of one family into UPDATEs of at most [`MAX_MESSAGE`] bytes: withdrawals
/// when `attrs` is None, else announcements with `attrs`. A prefix whose attributes alone are too
/// large for a message still goes out, alone (the API bounds communities so that it cannot
/// happen).
fn pack(
    family: Family,
    attrs: Option<&RouteAttrs>,
    prefixes: impl IntoIterator<Item = IpNet>,
    encoding: &Encoding,
) -> Vec<Update> {
    let make = |prefixes: Vec<IpNet>| match attrs {
        None => Update {
            family,
            withdrawn: prefixes,
            attrs: RouteAttrs::default(),
            announced: Vec::new(),
        },
        Some(attrs) => Update {
            family,
            withdrawn: Vec::new(),
            attrs: attrs.clone(),
            announced: prefixes,
        },
    };
    // The attribute value that grows with each IPv6 prefix (its length field grows past 255).
    let mp_fixed = match attrs {
        None => MP_UNREACH_FIXED,
        Some(_) => mp_reach_fixed(encoding),
    };
    let mut updates = Vec::new();
    let mut current: Vec<IpNet> = Vec::new();
    let mut size = 0;
    let mut mp_value = 0;
    for prefix in prefixes {
        let grow = prefix_size(&prefix);
        if current.is_empty() {
            current.push(prefix);
            size = encoded_size(&make(current.clone()), encoding);
            mp_value = mp_fixed + grow;
            continue;
        }
        let longer_length_field = family == Family::Ipv6Unicast
            && mp_value <= SHORT_ATTRIBUTE
            && mp_value + grow > SHORT_ATTRIBUTE;
        let grown = size + grow + usize::from(longer_length_field);
        if grown > MAX_MESSAGE {
            let full = std::mem::replace(&mut current, vec![prefix]);
            updates.push(make(full));
            size = encoded_size(&make(current.clone()), encoding);
            mp_value = mp_fixed + grow;
        } else {
            current.push(prefix);
            size = grown;
            mp_value += grow;
        }
    }
    if !current.is_empty() {
        updates.push(make(current));
    }
    debug_assert!(
        updates
            .iter()
            .all(|u| encoded_size(u, encoding) <= MAX_MESSAGE
                || u.withdrawn.len() + u.announced.len() == 1)
    );
    updates
}

/// The routes wanted at a peer, and those sent to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RibOut {
    desired: BTreeMap<IpNet, RouteAttrs>,
    sent: BTreeMap<IpNet, RouteAttrs>,
    /// The families served since the last reset (None: none yet).
    served: Option<BTreeSet<Family>>,
    /// Desired prefixes of families the last `updates()` could not send.
    held_back: usize,
}

impl RibOut {
    /// Nothing desired, nothing sent.
    pub fn new() -> RibOut {
        RibOut::default()
    }

    /// Replaces what is wanted. Prefixes are normalized (host bits cleared: `10.0.0.1/24` is
    /// `10.0.0.0/24`); if two become one, the one sorting last keeps its attributes.
    pub fn set_desired(&mut self, routes: BTreeMap<IpNet, RouteAttrs>) {
        self.desired = routes
            .into_iter()
            .map(|(prefix, attrs)| (prefix.trunc(), attrs))
            .collect();
    }

    /// What is wanted at the peer (normalized).
    pub fn desired(&self) -> &BTreeMap<IpNet, RouteAttrs> {
        &self.desired
    }

    /// What the peer has from us.
    pub fn sent(&self) -> &BTreeMap<IpNet, RouteAttrs> {
        &self.sent
    }

    /// The UPDATEs that turn what was sent into what is desired, for the negotiated `families`
    /// (desired prefixes of other families are held back and counted in
    /// [`RibOut::held_back`]), each at most [`MAX_MESSAGE`] bytes under `encoding`; marks them
    /// sent. Withdrawals first, then announcements, one attribute set per UPDATE. A prefix whose
    /// attributes changed is announced again (that replaces it; no withdrawal).
    pub fn updates(&mut self, families: &BTreeSet<Family>, encoding: &Encoding) -> Vec<Update> {
        self.held_back = self
            .desired
            .keys()
            .filter(|prefix| !families.contains(&family_of(prefix)))
            .count();
        let mut updates = Vec::new();
        for &family in families {
            updates.extend(self.withdrawals(family, encoding));
        }
        for &family in families {
            updates.extend(self.announcements(family, false, encoding));
        }
        self.mark_sent(&updates);
        self.served = Some(families.clone());
        updates
    }

    /// Everything desired of `family` as announcements, for the initial table after
    /// Established or a route refresh, preceded by withdrawals of what was sent but is no longer
    /// desired (so nothing is forgotten); marks them sent. The End-of-RIB marker is the
    /// caller's to send after it.
    pub fn full(&mut self, family: Family, encoding: &Encoding) -> Vec<Update> {
        let mut updates = self.withdrawals(family, encoding);
        updates.extend(self.announcements(family, true, encoding));
        self.mark_sent(&updates);
        self.served.get_or_insert_with(BTreeSet::new).insert(family);
        updates
    }

    /// The session went down: the peer has nothing from us any more.
    pub fn reset(&mut self) {
        self.sent.clear();
        self.served = None;
        self.held_back = 0;
    }

    /// How many prefixes the peer has from us.
    pub fn sent_count(&self) -> usize {
        self.sent.len()
    }

    /// Desired prefixes the last [`RibOut::updates`] held back: their family was not negotiated.
    pub fn held_back(&self) -> usize {
        self.held_back
    }

    /// Something desired is not sent yet, or something sent is no longer desired, in the
    /// families served since the last reset (in any family before the first).
    pub fn pending(&self) -> bool {
        let in_scope = |prefix: &IpNet| {
            self.served
                .as_ref()
                .is_none_or(|families| families.contains(&family_of(prefix)))
        };
        self.desired
            .iter()
            .filter(|(prefix, _)| in_scope(prefix))
            .any(|(prefix, attrs)| self.sent.get(prefix) != Some(attrs))
            || self
                .sent
                .keys()
                .filter(|prefix| in_scope(prefix))
                .any(|prefix| !self.desired.contains_key(prefix))
    }

    fn withdrawals(&self, family: Family, encoding: &Encoding) -> Vec<Update> {
        let gone = self
            .sent
            .keys()
            .filter(|prefix| family_of(prefix) == family && !self.desired.contains_key(prefix))
            .copied();
        pack(family, None, gone, encoding)
    }

    /// Announcements of `family`: all desired (`everything`) or those not sent as they are.
    fn announcements(&self, family: Family, everything: bool, encoding: &Encoding) -> Vec<Update> {
        let mut by_attrs: BTreeMap<&RouteAttrs, Vec<IpNet>> = BTreeMap::new();
        for (prefix, attrs) in &self.desired {
            if family_of(prefix) == family && (everything || self.sent.get(prefix) != Some(attrs)) {
                by_attrs.entry(attrs).or_default().push(*prefix);
            }
        }
        by_attrs
            .into_iter()
            .flat_map(|(attrs, prefixes)| pack(family, Some(attrs), prefixes, encoding))
            .collect()
    }

    fn mark_sent(&mut self, updates: &[Update]) {
        for update in updates {
            for prefix in &update.withdrawn {
                self.sent.remove(prefix);
            }
            for prefix in &update.announced {
                self.sent.insert(*prefix, update.attrs.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const EBGP: Encoding = Encoding {
        local_asn: 64512,
        four_octet_asn: true,
        ibgp: false,
        ipv6_next_hop_len: 16,
    };

    fn both() -> BTreeSet<Family> {
        BTreeSet::from([Family::Ipv4Unicast, Family::Ipv6Unicast])
    }

    fn v4(i: u32, len: u8) -> IpNet {
        IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)), len)
            .unwrap()
            .trunc()
    }

    fn v6(i: u32, len: u8) -> IpNet {
        let base = u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0));
        IpNet::new(IpAddr::V6(Ipv6Addr::from(base + u128::from(i))), len)
            .unwrap()
            .trunc()
    }

    fn attrs(local_pref: Option<u32>, communities: &[&str]) -> RouteAttrs {
        RouteAttrs {
            local_pref,
            communities: communities
                .iter()
                .map(|c| Community::parse(c).unwrap())
                .collect(),
        }
    }

    /// The UPDATE's bytes, built field by field from RFC 4271, 4760, 6793, 1997 and 8092, to
    /// check [`encoded_size`] against.
    fn wire(update: &Update, encoding: &Encoding) -> Vec<u8> {
        fn prefix(out: &mut Vec<u8>, prefix: &IpNet) {
            let bytes = match prefix.addr() {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            out.push(prefix.prefix_len());
            out.extend(&bytes[..usize::from(prefix.prefix_len()).div_ceil(8)]);
        }
        fn attribute(out: &mut Vec<u8>, flags: u8, kind: u8, value: &[u8]) {
            if value.len() > 255 {
                out.extend([flags | 0x10, kind]);
                out.extend(u16::try_from(value.len()).unwrap().to_be_bytes());
            } else {
                out.extend([flags, kind, u8::try_from(value.len()).unwrap()]);
            }
            out.extend(value);
        }
        const WELL_KNOWN: u8 = 0x40;
        const OPTIONAL_TRANSITIVE: u8 = 0xC0;
        const OPTIONAL: u8 = 0x80;
        let v6 = update.family == Family::Ipv6Unicast;
        let mut withdrawn = Vec::new();
        let mut attributes = Vec::new();
        let mut nlri = Vec::new();
        if v6 {
            if !update.withdrawn.is_empty() || update.is_end_of_rib() {
                let mut value = vec![0, 2, 1];
                update.withdrawn.iter().for_each(|p| prefix(&mut value, p));
                attribute(&mut attributes, OPTIONAL, 15, &value);
            }
        } else {
            update
                .withdrawn
                .iter()
                .for_each(|p| prefix(&mut withdrawn, p));
        }
        if !update.announced.is_empty() {
            attribute(&mut attributes, WELL_KNOWN, 1, &[0]);
            let mut as_path = Vec::new();
            if !encoding.ibgp {
                as_path.extend([2, 1]);
                if encoding.four_octet_asn {
                    as_path.extend(encoding.local_asn.to_be_bytes());
                } else {
                    let two = u16::try_from(encoding.local_asn).unwrap_or(23456);
                    as_path.extend(two.to_be_bytes());
                }
            }
            attribute(&mut attributes, WELL_KNOWN, 2, &as_path);
            if !encoding.ibgp && !encoding.four_octet_asn && encoding.local_asn > 65535 {
                let mut as4_path = vec![2, 1];
                as4_path.extend(encoding.local_asn.to_be_bytes());
                attribute(&mut attributes, OPTIONAL_TRANSITIVE, 17, &as4_path);
            }
            if v6 {
                let mut value = vec![0, 2, 1, encoding.ipv6_next_hop_len];
                value.extend(vec![0xFE; usize::from(encoding.ipv6_next_hop_len)]);
                value.push(0);
                update.announced.iter().for_each(|p| prefix(&mut value, p));
                attribute(&mut attributes, OPTIONAL, 14, &value);
            } else {
                attribute(&mut attributes, WELL_KNOWN, 3, &[192, 0, 2, 9]);
                update.announced.iter().for_each(|p| prefix(&mut nlri, p));
            }
            if encoding.ibgp {
                let local_pref = update.attrs.local_pref.unwrap_or(100);
                attribute(&mut attributes, WELL_KNOWN, 5, &local_pref.to_be_bytes());
            }
            let mut standard = Vec::new();
            let mut large = Vec::new();
            for community in &update.attrs.communities {
                match *community {
                    Community::Standard(value) => standard.extend(value.to_be_bytes()),
                    Community::Large {
                        global,
                        local1,
                        local2,
                    } => {
                        for part in [global, local1, local2] {
                            large.extend(part.to_be_bytes());
                        }
                    }
                }
            }
            if !standard.is_empty() {
                attribute(&mut attributes, OPTIONAL_TRANSITIVE, 8, &standard);
            }
            if !large.is_empty() {
                attribute(&mut attributes, OPTIONAL_TRANSITIVE, 32, &large);
            }
        }
        let mut body = Vec::new();
        body.extend(u16::try_from(withdrawn.len()).unwrap().to_be_bytes());
        body.extend(withdrawn);
        body.extend(u16::try_from(attributes.len()).unwrap().to_be_bytes());
        body.extend(attributes);
        body.extend(nlri);
        let mut message = vec![0xFF; 16];
        message.extend(
            u16::try_from(HEADER + body.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        message.push(2);
        message.extend(body);
        message
    }

    fn apply(sent: &mut BTreeMap<IpNet, RouteAttrs>, updates: &[Update]) {
        for update in updates {
            for prefix in &update.withdrawn {
                sent.remove(prefix);
            }
            for prefix in &update.announced {
                sent.insert(*prefix, update.attrs.clone());
            }
        }
    }

    #[test]
    fn end_of_rib_sizes() {
        let eor4 = Update::end_of_rib(Family::Ipv4Unicast);
        let eor6 = Update::end_of_rib(Family::Ipv6Unicast);
        assert_eq!(encoded_size(&eor4, &EBGP), 23);
        assert_eq!(encoded_size(&eor6, &EBGP), 29);
        assert_eq!(wire(&eor4, &EBGP).len(), 23);
        assert_eq!(wire(&eor6, &EBGP).len(), 29);
    }

    #[test]
    fn sizes_counted_by_hand() {
        let announce = |family, prefix, attrs| Update {
            family,
            withdrawn: vec![],
            attrs,
            announced: vec![prefix],
        };
        let as_trans = Encoding {
            local_asn: 4_200_000_001,
            four_octet_asn: false,
            ..EBGP
        };
        let ibgp = Encoding { ibgp: true, ..EBGP };
        let communities = attrs(Some(200), &["65000:1", "no-export", "large:1:2:3"]);
        let v4_32 = announce(Family::Ipv4Unicast, v4(1, 32), RouteAttrs::default());
        let v6_128 = announce(Family::Ipv6Unicast, v6(1, 128), RouteAttrs::default());
        for (update, encoding, size) in [
            // 23 + ORIGIN 4 + AS_PATH 3+6 + NEXT_HOP 7 + NLRI 5
            (&v4_32, EBGP, 48),
            // AS_PATH 3+4 with AS_TRANS, AS4_PATH 3+6
            (&v4_32, as_trans, 55),
            // AS_PATH 3+4 without AS4_PATH: the ASN fits in 2 bytes
            (
                &v4_32,
                Encoding {
                    four_octet_asn: false,
                    ..EBGP
                },
                46,
            ),
            // LOCAL_PREF is not sent to eBGP peers; COMMUNITIES 3+8, LARGE 3+12
            (
                &announce(Family::Ipv4Unicast, v4(1, 32), communities.clone()),
                EBGP,
                48 + 11 + 15,
            ),
            // iBGP: AS_PATH empty (3), LOCAL_PREF 7
            (
                &announce(Family::Ipv4Unicast, v4(1, 32), communities.clone()),
                ibgp,
                48 - 6 + 7 + 11 + 15,
            ),
            // 23 + ORIGIN 4 + AS_PATH 9 + MP_REACH 3 + (5 + 16 + 17)
            (&v6_128, EBGP, 77),
            (
                &v6_128,
                Encoding {
                    ipv6_next_hop_len: 32,
                    ..EBGP
                },
                93,
            ),
            // An aggregate: /24 is 4 bytes, /22 is 4, /20 is 4, /17 is 4, /16 is 3
            (
                &announce(Family::Ipv4Unicast, v4(0, 16), RouteAttrs::default()),
                EBGP,
                46,
            ),
            (
                &Update {
                    family: Family::Ipv4Unicast,
                    withdrawn: vec![v4(1, 32), v4(0, 24)],
                    attrs: RouteAttrs::default(),
                    announced: vec![],
                },
                EBGP,
                23 + 5 + 4,
            ),
            // 23 + MP_UNREACH 3 + 3 + 17
            (
                &Update {
                    family: Family::Ipv6Unicast,
                    withdrawn: vec![v6(1, 128)],
                    attrs: RouteAttrs::default(),
                    announced: vec![],
                },
                EBGP,
                46,
            ),
        ] {
            assert_eq!(
                encoded_size(update, &encoding),
                size,
                "{update:?} {encoding:?}"
            );
            assert_eq!(
                wire(update, &encoding).len(),
                size,
                "{update:?} {encoding:?}"
            );
        }
    }

    #[test]
    fn extended_length_only_past_255_bytes() {
        // 63 communities: 252 bytes, short length; 64: 256 bytes, extended (one byte more).
        let with = |n: u32| Update {
            family: Family::Ipv4Unicast,
            withdrawn: vec![],
            attrs: RouteAttrs {
                local_pref: None,
                communities: (0..n).map(Community::Standard).collect(),
            },
            announced: vec![v4(1, 32)],
        };
        assert_eq!(encoded_size(&with(63), &EBGP), 48 + 3 + 252);
        assert_eq!(encoded_size(&with(64), &EBGP), 48 + 4 + 256);
        assert_eq!(wire(&with(64), &EBGP).len(), 48 + 4 + 256);
    }

    #[test]
    fn five_thousand_host_routes_pack_into_few_updates() {
        let mut rib = RibOut::new();
        let routes: BTreeMap<IpNet, RouteAttrs> = (0..5000)
            .map(|i| (v4(i, 32), RouteAttrs::default()))
            .collect();
        rib.set_desired(routes.clone());
        assert!(rib.pending());
        let updates = rib.updates(&both(), &EBGP);
        // 43 bytes of header and attributes, then 810 prefixes of 5 bytes: 4093 bytes.
        assert_eq!(updates.len(), 7);
        assert_eq!(updates[0].announced.len(), 810);
        for update in &updates {
            let size = encoded_size(update, &EBGP);
            assert!(size <= MAX_MESSAGE, "{size}");
            assert_eq!(size, wire(update, &EBGP).len());
        }
        assert_eq!(encoded_size(&updates[0], &EBGP), 4093);
        let mut sent = BTreeMap::new();
        apply(&mut sent, &updates);
        assert_eq!(sent, routes);
        assert_eq!(rib.sent_count(), 5000);
        assert!(!rib.pending());
        assert_eq!(rib.updates(&both(), &EBGP), vec![]);

        // Withdrawing them all: 814 prefixes per UPDATE (23 + 814 * 5 = 4093).
        rib.set_desired(BTreeMap::new());
        let updates = rib.updates(&both(), &EBGP);
        assert_eq!(updates.len(), 7);
        assert_eq!(updates[0].withdrawn.len(), 814);
        assert!(
            updates
                .iter()
                .all(|u| encoded_size(u, &EBGP) <= MAX_MESSAGE)
        );
        assert_eq!(rib.sent_count(), 0);

        // IPv6 /128s: 237 per UPDATE (MP_REACH_NLRI takes the extended length).
        rib.set_desired(
            (0..5000)
                .map(|i| (v6(i, 128), RouteAttrs::default()))
                .collect(),
        );
        let updates = rib.updates(&both(), &EBGP);
        assert_eq!(updates.len(), 22);
        assert_eq!(updates[0].announced.len(), 237);
        for update in &updates {
            let size = encoded_size(update, &EBGP);
            assert!(size <= MAX_MESSAGE, "{size}");
            assert_eq!(size, wire(update, &EBGP).len());
        }
        assert_eq!(encoded_size(&updates[0], &EBGP), 4090);
    }

    #[test]
    fn mixed_families_and_held_back_prefixes() {
        let blue = attrs(None, &["65000:1"]);
        let mut rib = RibOut::new();
        rib.set_desired(BTreeMap::from([
            (v4(1, 32), RouteAttrs::default()),
            (v4(2, 32), blue.clone()),
            (v6(1, 128), RouteAttrs::default()),
            (v6(2, 128), blue.clone()),
        ]));
        // The peer speaks IPv4 only: IPv6 held back.
        let v4_only = BTreeSet::from([Family::Ipv4Unicast]);
        let updates = rib.updates(&v4_only, &EBGP);
        assert_eq!(updates.len(), 2, "one per attribute set: {updates:?}");
        assert!(updates.iter().all(|u| u.family == Family::Ipv4Unicast));
        assert_eq!(rib.held_back(), 2);
        assert_eq!(rib.sent_count(), 2);
        assert!(!rib.pending(), "nothing more to send in the served family");

        // Both families.
        let updates = rib.updates(&both(), &EBGP);
        assert_eq!(
            updates,
            vec![
                Update {
                    family: Family::Ipv6Unicast,
                    withdrawn: vec![],
                    attrs: RouteAttrs::default(),
                    announced: vec![v6(1, 128)],
                },
                Update {
                    family: Family::Ipv6Unicast,
                    withdrawn: vec![],
                    attrs: blue.clone(),
                    announced: vec![v6(2, 128)],
                },
            ]
        );
        assert_eq!(rib.held_back(), 0);
        assert_eq!(rib.sent_count(), 4);

        // Withdrawals of both families come before any announcement.
        rib.set_desired(BTreeMap::from([
            (v4(3, 32), RouteAttrs::default()),
            (v6(3, 128), RouteAttrs::default()),
        ]));
        let updates = rib.updates(&both(), &EBGP);
        let kinds: Vec<(Family, bool)> = updates
            .iter()
            .map(|u| (u.family, u.announced.is_empty()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Family::Ipv4Unicast, true),
                (Family::Ipv6Unicast, true),
                (Family::Ipv4Unicast, false),
                (Family::Ipv6Unicast, false),
            ]
        );
        assert_eq!(updates[0].withdrawn, vec![v4(1, 32), v4(2, 32)]);
        assert_eq!(updates[1].withdrawn, vec![v6(1, 128), v6(2, 128)]);
    }

    #[test]
    fn changes_send_only_the_difference() {
        let mut rib = RibOut::new();
        let mut routes: BTreeMap<IpNet, RouteAttrs> = (0..100)
            .map(|i| (v4(i, 32), RouteAttrs::default()))
            .collect();
        rib.set_desired(routes.clone());
        rib.updates(&both(), &EBGP);
        routes.remove(&v4(7, 32));
        routes.insert(v4(1000, 32), RouteAttrs::default());
        rib.set_desired(routes);
        assert!(rib.pending());
        let updates = rib.updates(&both(), &EBGP);
        assert_eq!(
            updates,
            vec![
                Update {
                    family: Family::Ipv4Unicast,
                    withdrawn: vec![v4(7, 32)],
                    attrs: RouteAttrs::default(),
                    announced: vec![],
                },
                Update {
                    family: Family::Ipv4Unicast,
                    withdrawn: vec![],
                    attrs: RouteAttrs::default(),
                    announced: vec![v4(1000, 32)],
                },
            ]
        );
    }

    #[test]
    fn a_changed_attribute_is_announced_again_without_withdrawal() {
        let mut rib = RibOut::new();
        let mut routes = BTreeMap::from([
            (v4(1, 32), RouteAttrs::default()),
            (v4(2, 32), RouteAttrs::default()),
        ]);
        rib.set_desired(routes.clone());
        rib.updates(&both(), &EBGP);
        let graceful = attrs(Some(50), &["graceful-shutdown"]);
        routes.insert(v4(2, 32), graceful.clone());
        rib.set_desired(routes);
        let updates = rib.updates(&both(), &EBGP);
        assert_eq!(
            updates,
            vec![Update {
                family: Family::Ipv4Unicast,
                withdrawn: vec![],
                attrs: graceful.clone(),
                announced: vec![v4(2, 32)],
            }]
        );
        assert_eq!(rib.sent().get(&v4(2, 32)), Some(&graceful));
    }

    #[test]
    fn reset_then_full_sends_everything_again() {
        let mut rib = RibOut::new();
        let routes: BTreeMap<IpNet, RouteAttrs> = (0..10)
            .map(|i| (v4(i, 32), RouteAttrs::default()))
            .chain((0..10).map(|i| (v6(i, 128), attrs(None, &["65000:6"]))))
            .collect();
        rib.set_desired(routes.clone());
        rib.updates(&both(), &EBGP);
        assert!(!rib.pending());
        rib.reset();
        assert_eq!(rib.sent_count(), 0);
        assert!(rib.pending());
        let mut sent = BTreeMap::new();
        for family in both() {
            let updates = rib.full(family, &EBGP);
            assert!(
                updates
                    .iter()
                    .all(|u| u.family == family && u.withdrawn.is_empty())
            );
            apply(&mut sent, &updates);
        }
        assert_eq!(sent, routes);
        assert!(!rib.pending());
        // A route refresh: everything again, even though nothing changed.
        let again = rib.full(Family::Ipv4Unicast, &EBGP);
        assert_eq!(again.iter().map(|u| u.announced.len()).sum::<usize>(), 10);
    }

    #[test]
    fn full_also_withdraws_what_is_no_longer_desired() {
        let mut rib = RibOut::new();
        rib.set_desired(BTreeMap::from([
            (v4(1, 32), RouteAttrs::default()),
            (v4(2, 32), RouteAttrs::default()),
        ]));
        rib.updates(&both(), &EBGP);
        rib.set_desired(BTreeMap::from([(v4(2, 32), RouteAttrs::default())]));
        // A route refresh before the change was sent.
        let updates = rib.full(Family::Ipv4Unicast, &EBGP);
        assert_eq!(updates[0].withdrawn, vec![v4(1, 32)]);
        assert_eq!(updates[1].announced, vec![v4(2, 32)]);
        assert!(!rib.pending());
    }

    #[test]
    fn desired_prefixes_are_normalized() {
        let mut rib = RibOut::new();
        let sloppy: IpNet = "10.1.2.3/24".parse().unwrap();
        rib.set_desired(BTreeMap::from([(sloppy, RouteAttrs::default())]));
        let updates = rib.updates(&both(), &EBGP);
        assert_eq!(
            updates[0].announced,
            vec!["10.1.2.0/24".parse::<IpNet>().unwrap()]
        );
    }

    // --- properties ---

    fn prefix() -> impl Strategy<Value = IpNet> {
        // A small universe, so that successive tables overlap; mostly host routes.
        prop_oneof![
            6 => (0u32..3000).prop_map(|i| v4(i, 32)),
            1 => (0u32..3000, 8u8..32).prop_map(|(i, len)| v4(i << 8, len)),
            4 => (0u32..3000).prop_map(|i| v6(i, 128)),
            1 => (0u32..3000, 16u8..128).prop_map(|(i, len)| v6(i << 16, len)),
        ]
    }

    fn route_attrs() -> impl Strategy<Value = RouteAttrs> {
        prop_oneof![
            4 => Just(RouteAttrs::default()),
            2 => (proptest::option::of(0u32..3), 0u32..3).prop_map(|(local_pref, c)| RouteAttrs {
                local_pref,
                communities: (0..c).map(Community::Standard).collect(),
            }),
            1 => Just(RouteAttrs {
                local_pref: Some(100),
                communities: (0..70)
                    .map(Community::Standard)
                    .chain((0..30).map(|i| Community::Large { global: i, local1: 1, local2: 2 }))
                    .collect(),
            }),
        ]
    }

    fn table() -> impl Strategy<Value = BTreeMap<IpNet, RouteAttrs>> {
        proptest::collection::btree_map(prefix(), route_attrs(), 0..1500)
    }

    fn families() -> impl Strategy<Value = BTreeSet<Family>> {
        prop_oneof![
            Just(BTreeSet::from([Family::Ipv4Unicast])),
            Just(BTreeSet::from([Family::Ipv6Unicast])),
            Just(both()),
        ]
    }

    fn encoding() -> impl Strategy<Value = Encoding> {
        (
            prop_oneof![Just(64512u32), Just(4_200_000_001u32)],
            proptest::bool::ANY,
            proptest::bool::ANY,
            prop_oneof![Just(16u8), Just(32u8)],
        )
            .prop_map(
                |(local_asn, four_octet_asn, ibgp, ipv6_next_hop_len)| Encoding {
                    local_asn,
                    four_octet_asn,
                    ibgp,
                    ipv6_next_hop_len,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn updates_bring_the_peer_to_the_desired_table(
            first in table(),
            second in table(),
            first_families in families(),
            families in families(),
            encoding in encoding(),
        ) {
            let mut rib = RibOut::new();
            rib.set_desired(first);
            rib.updates(&first_families, &encoding);
            let old_sent = rib.sent().clone();
            rib.set_desired(second.clone());
            let updates = rib.updates(&families, &encoding);

            let mut peer = old_sent.clone();
            apply(&mut peer, &updates);
            let in_families = |p: &IpNet| families.contains(&family_of(p));
            let expected: BTreeMap<IpNet, RouteAttrs> = second
                .iter()
                .filter(|(p, _)| in_families(p))
                .map(|(p, a)| (*p, a.clone()))
                .chain(old_sent.iter().filter(|(p, _)| !in_families(p)).map(|(p, a)| (*p, a.clone())))
                .collect();
            prop_assert_eq!(&peer, &expected);
            prop_assert_eq!(rib.sent(), &expected);
            prop_assert_eq!(
                rib.held_back(),
                second.keys().filter(|p| !in_families(p)).count()
            );
            let mut seen_announcement = false;
            for update in &updates {
                let size = encoded_size(update, &encoding);
                prop_assert!(size <= MAX_MESSAGE, "{} bytes", size);
                prop_assert_eq!(size, wire(update, &encoding).len());
                prop_assert!(families.contains(&update.family));
                prop_assert!(!update.is_end_of_rib());
                prop_assert!(update.withdrawn.is_empty() || update.announced.is_empty());
                // Withdrawals first.
                if update.announced.is_empty() {
                    prop_assert!(!seen_announcement);
                } else {
                    seen_announcement = true;
                }
                // Only the difference.
                for p in &update.withdrawn {
                    prop_assert!(old_sent.contains_key(p) && !second.contains_key(p));
                }
                for p in &update.announced {
                    prop_assert_ne!(old_sent.get(p), Some(&update.attrs));
                }
            }
            // Nothing more to do, and a full table after a reset is the same table.
            prop_assert!(rib.updates(&families, &encoding).is_empty());
            rib.reset();
            let mut fresh = BTreeMap::new();
            for &family in &families {
                let updates = rib.full(family, &encoding);
                prop_assert!(updates.iter().all(|u| encoded_size(u, &encoding) <= MAX_MESSAGE));
                apply(&mut fresh, &updates);
            }
            let wanted: BTreeMap<IpNet, RouteAttrs> =
                second.into_iter().filter(|(p, _)| in_families(p)).collect();
            prop_assert_eq!(fresh, wanted);
        }
    }
}
