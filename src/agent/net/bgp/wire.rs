//! The BGP codec: [`Message`] to bytes and back, through netgauze-bgp-pkt.
//!
//! [`encode`] builds netgauze's message and lets it write the bytes; [`decode`] checks the
//! header itself (so a bad header gets the RFC 4271 6.1 NOTIFICATION with the right data), then
//! lets netgauze parse OPEN and UPDATE bodies. What vipam writes or reads by hand instead is said
//! where it happens, with the reason.
//!
//! Layout of an encoded UPDATE (the RIB-out's size estimate relies on it):
//! - attributes in ascending type code: ORIGIN (1), AS_PATH (2), NEXT_HOP (3, IPv4 only),
//!   LOCAL_PREF (5, iBGP only), COMMUNITIES (8), MP_REACH_NLRI (14), MP_UNREACH_NLRI (15),
//!   AS4_PATH (17), LARGE_COMMUNITY (32);
//! - an attribute's length is one byte, two (Extended Length flag) only when its value is
//!   longer than 255 bytes;
//! - an IPv4 UPDATE that only withdraws has no attributes; an IPv6 one carries only
//!   MP_UNREACH_NLRI; End-of-RIB is an empty UPDATE (IPv4) or an empty MP_UNREACH_NLRI (IPv6).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily,
    GracefulRestartCapability as NgGracefulRestart, MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::community::{Community as NgCommunity, LargeCommunity};
use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::notification::BgpNotificationMessage;
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute::{
    As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, Communities,
    LargeCommunities, LocalPreference, MpReach, MpUnreach, NextHop, Origin, PathAttribute,
    PathAttributeValue,
};
use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::wire::deserializer::open::{
    BgpOpenMessageParsingError, BgpParameterParsingError,
};
use netgauze_bgp_pkt::wire::deserializer::{BgpMessageParsingError, BgpParsingContext};
use netgauze_iana::address_family::{AddressFamily, AddressType, SubsequentAddressFamily};
use netgauze_parse_utils::WritablePdu;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::{ParseFrom, ParseFromWithOneInput};

use crate::core::bgp::{
    AS_TRANS, Capabilities, Community, Family, GracefulRestart, Message, Notification, Open,
    Update, codes,
};
use crate::core::category::Category;

/// Marker, length and type.
pub const HEADER_LEN: usize = 19;
/// The largest message without the Extended Message capability (RFC 8654), which vipam does
/// not advertise.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Message type codes (RFC 4271 4.1, RFC 2918).
pub mod message_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// LOCAL_PREF sent to an internal peer when the route sets none (the usual default).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// Capability codes vipam reads (RFC 5492 registry).
const CAP_MULTIPROTOCOL: u8 = 1;
const CAP_ROUTE_REFRESH: u8 = 2;
const CAP_GRACEFUL_RESTART: u8 = 64;
const CAP_FOUR_OCTET_AS: u8 = 65;
const CAP_ROUTE_REFRESH_OLD: u8 = 128;

/// What an UPDATE's encoding depends on besides the UPDATE: the session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodeContext {
    /// vipam's ASN on this session (AS_PATH for eBGP).
    pub local_asn: u32,
    /// Both sides sent the 4-octet ASN capability: AS numbers are 4 bytes on the wire.
    pub four_octet_asn: bool,
    /// The peer is in vipam's AS: empty AS_PATH, LOCAL_PREF sent.
    pub ibgp: bool,
    /// NEXT_HOP of IPv4 announcements (required for them).
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Global next hop of IPv6 announcements (required for them).
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Link-local next hop sent beside the global one (32-byte next hop) when set.
    pub next_hop_v6_link_local: Option<Ipv6Addr>,
}

/// Why bytes are not a message, or a message cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The peer sent bytes that are not a valid message: the NOTIFICATION to send back before
    /// closing the session, and what was wrong.
    #[error("{reason} (NOTIFICATION {})", notification.describe())]
    Malformed {
        notification: Notification,
        reason: String,
    },
    /// vipam cannot put this message on the wire (a missing next hop, a prefix of the wrong
    /// family, a message over 4096 bytes): a bug or a configuration problem above the codec.
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

impl WireError {
    /// The NOTIFICATION vipam sends back, when the peer is at fault.
    pub fn notification(&self) -> Option<&Notification> {
        match self {
            WireError::Malformed { notification, .. } => Some(notification),
            WireError::Encode { .. } => None,
        }
    }
}

impl Category for WireError {
    fn category(&self) -> &'static str {
        match self {
            WireError::Malformed { .. } => "bgp_malformed",
            WireError::Encode { .. } => "bgp_encode",
        }
    }
}

fn malformed(code: u8, subcode: u8, data: Vec<u8>, reason: impl Into<String>) -> WireError {
    WireError::Malformed {
        notification: Notification {
            code,
            subcode,
            data,
        },
        reason: reason.into(),
    }
}

fn encode_error(what: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Encode {
        what,
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// The bytes of one message.
pub fn encode(message: &Message, ctx: &EncodeContext) -> Result<Vec<u8>, WireError> {
    match message {
        Message::Open(open) => write(&BgpMessage::Open(open_to_wire(open)?), "an OPEN"),
        Message::Update(update) => write(
            &BgpMessage::Update(update_to_wire(update, ctx)?),
            "an UPDATE",
        ),
        Message::UpdateReceived => Err(encode_error(
            "an UPDATE",
            "a received UPDATE keeps no content to send",
        )),
        Message::Notification(notification) => notification_bytes(notification),
        Message::Keepalive => write(&BgpMessage::KeepAlive, "a KEEPALIVE"),
        Message::RouteRefresh { afi, safi } => {
            let address_type = address_type_of(*afi, *safi).ok_or_else(|| {
                encode_error(
                    "a ROUTE-REFRESH",
                    format!("AFI {afi} / SAFI {safi} is not a known address family"),
                )
            })?;
            write(
                &BgpMessage::RouteRefresh(BgpRouteRefreshMessage::new(
                    address_type,
                    RouteRefreshSubcode::NormalRequest,
                )),
                "a ROUTE-REFRESH",
            )
        }
    }
}

/// The encoded length of an UPDATE, header included (what [`encode`] would return, without
/// writing it).
pub fn encoded_len(update: &Update, ctx: &EncodeContext) -> Result<usize, WireError> {
    Ok(BgpMessage::Update(update_to_wire(update, ctx)?).len())
}

fn write(message: &BgpMessage, what: &'static str) -> Result<Vec<u8>, WireError> {
    // Checked before writing: netgauze writes the length of an UPDATE as `len as u16`.
    let len = message.len();
    if len > MAX_MESSAGE_LEN {
        return Err(encode_error(
            what,
            format!("{len} bytes, more than the {MAX_MESSAGE_LEN} a BGP message may have"),
        ));
    }
    let mut bytes = Vec::with_capacity(len);
    message
        .write(&mut bytes)
        .map_err(|e| encode_error(what, e.to_string()))?;
    Ok(bytes)
}

/// NOTIFICATIONs by hand, both ways: netgauze models them as a typed enum that rejects codes
/// and subcodes it does not know, and a NOTIFICATION must always be readable (to be logged)
/// and writable as the state machine chose it. The format is three fields.
fn notification_bytes(notification: &Notification) -> Result<Vec<u8>, WireError> {
    let len = HEADER_LEN + 2 + notification.data.len();
    if len > MAX_MESSAGE_LEN {
        return Err(encode_error(
            "a NOTIFICATION",
            format!("{len} bytes, more than the {MAX_MESSAGE_LEN} a BGP message may have"),
        ));
    }
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&[0xff; 16]);
    bytes.extend_from_slice(&(len as u16).to_be_bytes());
    bytes.push(message_type::NOTIFICATION);
    bytes.push(notification.code);
    bytes.push(notification.subcode);
    bytes.extend_from_slice(&notification.data);
    Ok(bytes)
}

fn wire_address_type(family: Family) -> AddressType {
    match family {
        Family::Ipv4Unicast => AddressType::Ipv4Unicast,
        Family::Ipv6Unicast => AddressType::Ipv6Unicast,
    }
}

fn address_type_of(afi: u16, safi: u8) -> Option<AddressType> {
    let afi = AddressFamily::try_from(afi).ok()?;
    let safi = SubsequentAddressFamily::try_from(safi).ok()?;
    AddressType::from_afi_safi(afi, safi).ok()
}

fn afi_safi_of(address_type: AddressType) -> (u16, u8) {
    (
        u16::from(address_type.address_family()),
        u8::from(address_type.subsequent_address_family()),
    )
}

/// The OPEN on the wire. Capabilities, in one optional parameter, in this order: multiprotocol
/// per family (IPv4 then IPv6), route refresh (2), graceful restart (64), 4-octet ASN (65).
/// `other_families` and `unknown` describe a received OPEN and are not sent.
fn open_to_wire(open: &Open) -> Result<BgpOpenMessage, WireError> {
    if open.version != 4 {
        return Err(encode_error(
            "an OPEN",
            format!("version {} (vipam speaks BGP-4)", open.version),
        ));
    }
    let caps = &open.capabilities;
    let mut list: Vec<BgpCapability> = caps
        .families
        .iter()
        .map(|family| {
            BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(
                wire_address_type(*family),
            ))
        })
        .collect();
    if caps.route_refresh {
        list.push(BgpCapability::RouteRefresh);
    }
    if let Some(gr) = &caps.graceful_restart {
        if gr.restart_time > 0x0fff {
            return Err(encode_error(
                "an OPEN",
                format!(
                    "graceful restart time {} s does not fit in 12 bits (at most 4095)",
                    gr.restart_time
                ),
            ));
        }
        let families: Vec<GracefulRestartAddressFamily> = gr
            .families
            .iter()
            .map(|family| GracefulRestartAddressFamily::new(true, wire_address_type(*family)))
            .collect();
        list.push(BgpCapability::GracefulRestartCapability(
            NgGracefulRestart::new(gr.restarting, false, gr.restart_time, families),
        ));
    }
    if let Some(asn) = caps.four_octet_asn {
        list.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(asn)));
    }
    let params = if list.is_empty() {
        Vec::new()
    } else {
        vec![BgpOpenMessageParameter::new_capabilities(list)]
    };
    Ok(BgpOpenMessage::new(
        open.my_as,
        open.hold_time,
        open.router_id,
        params,
    ))
}

/// One path attribute, with the Extended Length flag only when the value needs two length
/// bytes (netgauze writes two bytes without setting the flag otherwise).
fn attribute(
    optional: bool,
    transitive: bool,
    value: PathAttributeValue,
) -> Result<PathAttribute, WireError> {
    let short = PathAttribute::from(optional, transitive, false, false, value)
        .map_err(|(_, e)| encode_error("an UPDATE", e.to_string()))?;
    // flags + type + one length byte + value
    if short.len() - 3 <= 255 {
        return Ok(short);
    }
    PathAttribute::from(optional, transitive, false, true, short.value().clone())
        .map_err(|(_, e)| encode_error("an UPDATE", e.to_string()))
}

fn ipv4_nlri(prefixes: &[IpNet]) -> Result<Vec<Ipv4UnicastAddress>, WireError> {
    prefixes
        .iter()
        .map(|prefix| match prefix.trunc() {
            IpNet::V4(net) => Ipv4Unicast::from_net(net)
                .map(Ipv4UnicastAddress::new_no_path_id)
                .map_err(|_| {
                    encode_error("an UPDATE", format!("{prefix} is not a unicast prefix"))
                }),
            IpNet::V6(_) => Err(encode_error(
                "an UPDATE",
                format!("IPv6 prefix {prefix} in an IPv4 UPDATE"),
            )),
        })
        .collect()
}

fn ipv6_nlri(prefixes: &[IpNet]) -> Result<Vec<Ipv6UnicastAddress>, WireError> {
    prefixes
        .iter()
        .map(|prefix| match prefix.trunc() {
            IpNet::V6(net) => Ipv6Unicast::from_net(net)
                .map(|net| Ipv6UnicastAddress::new(None, net))
                .map_err(|_| {
                    encode_error("an UPDATE", format!("{prefix} is not a unicast prefix"))
                }),
            IpNet::V4(_) => Err(encode_error(
                "an UPDATE",
                format!("IPv4 prefix {prefix} in an IPv6 UPDATE"),
            )),
        })
        .collect()
}

/// AS_PATH and, for a 2-byte session with a 4-byte ASN, AS4_PATH (RFC 6793 4.2.2).
fn as_paths(ctx: &EncodeContext) -> (AsPath, Option<As4Path>) {
    let sequence4 = || {
        vec![As4PathSegment::new(
            AsPathSegmentType::AsSequence,
            [ctx.local_asn],
        )]
    };
    if ctx.ibgp {
        let empty = if ctx.four_octet_asn {
            AsPath::as4_path_segments(Vec::new())
        } else {
            AsPath::as2_path_segments(Vec::new())
        };
        return (empty, None);
    }
    if ctx.four_octet_asn {
        return (AsPath::as4_path_segments(sequence4()), None);
    }
    match u16::try_from(ctx.local_asn) {
        Ok(asn) => (
            AsPath::as2_path_segments(vec![As2PathSegment::new(
                AsPathSegmentType::AsSequence,
                [asn],
            )]),
            None,
        ),
        Err(_) => (
            AsPath::as2_path_segments(vec![As2PathSegment::new(
                AsPathSegmentType::AsSequence,
                [AS_TRANS],
            )]),
            Some(As4Path::new(sequence4())),
        ),
    }
}

/// The attributes of an UPDATE that announces, in ascending type code.
fn announce_attributes(
    update: &Update,
    ctx: &EncodeContext,
    next_hop_v4: Option<Ipv4Addr>,
    mp_reach: Option<MpReach>,
    mp_unreach: Option<MpUnreach>,
) -> Result<Vec<PathAttribute>, WireError> {
    let (as_path, as4_path) = as_paths(ctx);
    let mut attrs = vec![
        attribute(false, true, PathAttributeValue::Origin(Origin::IGP))?,
        attribute(false, true, PathAttributeValue::AsPath(as_path))?,
    ];
    if let Some(next_hop) = next_hop_v4 {
        attrs.push(attribute(
            false,
            true,
            PathAttributeValue::NextHop(NextHop::new(next_hop)),
        )?);
    }
    if ctx.ibgp {
        let local_pref = update.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF);
        attrs.push(attribute(
            false,
            true,
            PathAttributeValue::LocalPreference(LocalPreference::new(local_pref)),
        )?);
    }
    let standard: Vec<NgCommunity> = update
        .attrs
        .communities
        .iter()
        .filter_map(|c| match c {
            Community::Standard(value) => Some(NgCommunity::new(*value)),
            Community::Large { .. } => None,
        })
        .collect();
    if !standard.is_empty() {
        attrs.push(attribute(
            true,
            true,
            PathAttributeValue::Communities(Communities::new(standard)),
        )?);
    }
    if let Some(reach) = mp_reach {
        attrs.push(attribute(true, false, PathAttributeValue::MpReach(reach))?);
    }
    if let Some(unreach) = mp_unreach {
        attrs.push(attribute(
            true,
            false,
            PathAttributeValue::MpUnreach(unreach),
        )?);
    }
    if let Some(as4_path) = as4_path {
        attrs.push(attribute(
            true,
            true,
            PathAttributeValue::As4Path(as4_path),
        )?);
    }
    let large: Vec<LargeCommunity> = update
        .attrs
        .communities
        .iter()
        .filter_map(|c| match c {
            Community::Large {
                global,
                local1,
                local2,
            } => Some(LargeCommunity::new(*global, *local1, *local2)),
            Community::Standard(_) => None,
        })
        .collect();
    if !large.is_empty() {
        attrs.push(attribute(
            true,
            true,
            PathAttributeValue::LargeCommunities(LargeCommunities::new(large)),
        )?);
    }
    Ok(attrs)
}

fn update_to_wire(update: &Update, ctx: &EncodeContext) -> Result<BgpUpdateMessage, WireError> {
    match update.family {
        Family::Ipv4Unicast => {
            let withdrawn = ipv4_nlri(&update.withdrawn)?;
            let announced = ipv4_nlri(&update.announced)?;
            let attrs = if announced.is_empty() {
                Vec::new()
            } else {
                let next_hop = ctx.next_hop_v4.ok_or_else(|| {
                    encode_error(
                        "an UPDATE",
                        "no IPv4 next hop for IPv4 announcements on this session",
                    )
                })?;
                announce_attributes(update, ctx, Some(next_hop), None, None)?
            };
            Ok(BgpUpdateMessage::new(withdrawn, attrs, announced))
        }
        Family::Ipv6Unicast => {
            let withdrawn = ipv6_nlri(&update.withdrawn)?;
            let announced = ipv6_nlri(&update.announced)?;
            // End-of-RIB of IPv6 is an MP_UNREACH_NLRI with nothing in it (RFC 4724 2).
            let unreach =
                (!withdrawn.is_empty() || announced.is_empty()).then(|| MpUnreach::Ipv6Unicast {
                    nlri: withdrawn.into(),
                });
            let attrs = if announced.is_empty() {
                let unreach = unreach.map(PathAttributeValue::MpUnreach);
                unreach
                    .into_iter()
                    .map(|value| attribute(true, false, value))
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                let next_hop_global = ctx.next_hop_v6.ok_or_else(|| {
                    encode_error(
                        "an UPDATE",
                        "no IPv6 next hop for IPv6 announcements on this session",
                    )
                })?;
                let reach = MpReach::Ipv6Unicast {
                    next_hop_global,
                    next_hop_local: ctx.next_hop_v6_link_local,
                    nlri: announced.into(),
                };
                announce_attributes(update, ctx, None, Some(reach), unreach)?
            };
            Ok(BgpUpdateMessage::new(Vec::new(), attrs, Vec::new()))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

fn type_name(kind: u8) -> &'static str {
    match kind {
        message_type::OPEN => "OPEN",
        message_type::UPDATE => "UPDATE",
        message_type::NOTIFICATION => "NOTIFICATION",
        message_type::KEEPALIVE => "KEEPALIVE",
        message_type::ROUTE_REFRESH => "ROUTE-REFRESH",
        _ => "unknown",
    }
}

/// The smallest length of a message of this type (RFC 4271 4.2-4.5, RFC 2918 3), or `None`
/// for an unknown type.
fn min_len(kind: u8) -> Option<usize> {
    match kind {
        message_type::OPEN => Some(29),
        message_type::UPDATE => Some(23),
        message_type::NOTIFICATION => Some(21),
        message_type::KEEPALIVE => Some(HEADER_LEN),
        message_type::ROUTE_REFRESH => Some(23),
        _ => None,
    }
}

/// Reads one message from the start of `buf`: `Ok(None)` when more bytes are needed, else the
/// message and the number of bytes it took. `four_octet_asn`: both sides advertised 4-octet
/// ASNs (how AS_PATH is read). Never panics, whatever the bytes.
pub fn decode(buf: &[u8], four_octet_asn: bool) -> Result<Option<(Message, usize)>, WireError> {
    // The marker is checked as soon as its bytes arrive: garbage fails at once.
    let marker = &buf[..buf.len().min(16)];
    if marker.iter().any(|b| *b != 0xff) {
        return Err(malformed(
            codes::MESSAGE_HEADER_ERROR,
            codes::header::CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
            "bad marker in message header",
        ));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let length = u16::from_be_bytes([buf[16], buf[17]]);
    let len = usize::from(length);
    let bad_length = |reason: String| {
        malformed(
            codes::MESSAGE_HEADER_ERROR,
            codes::header::BAD_MESSAGE_LENGTH,
            length.to_be_bytes().to_vec(),
            reason,
        )
    };
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(bad_length(format!(
            "message length {len} outside {HEADER_LEN}..{MAX_MESSAGE_LEN}"
        )));
    }
    let kind = buf[18];
    let Some(min) = min_len(kind) else {
        return Err(malformed(
            codes::MESSAGE_HEADER_ERROR,
            codes::header::BAD_MESSAGE_TYPE,
            vec![kind],
            format!("unknown message type {kind}"),
        ));
    };
    if kind == message_type::KEEPALIVE && len != HEADER_LEN {
        return Err(bad_length(format!(
            "KEEPALIVE of length {len} (must be {HEADER_LEN})"
        )));
    }
    if len < min {
        return Err(bad_length(format!(
            "{} of length {len}, shorter than its minimum {min}",
            type_name(kind)
        )));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let bytes = &buf[..len];
    let body = &bytes[HEADER_LEN..];
    let message = match kind {
        message_type::KEEPALIVE => Message::Keepalive,
        message_type::NOTIFICATION => Message::Notification(Notification {
            code: body[0],
            subcode: body[1],
            data: body[2..].to_vec(),
        }),
        message_type::ROUTE_REFRESH => decode_route_refresh(body)?,
        message_type::OPEN => match parse(bytes, four_octet_asn, kind)? {
            BgpMessage::Open(open) => Message::Open(decode_open(&open, body)?),
            _ => unreachable_type(kind)?,
        },
        _ => match parse(bytes, four_octet_asn, kind)? {
            BgpMessage::Update(_) => Message::UpdateReceived,
            _ => unreachable_type(kind)?,
        },
    };
    Ok(Some((message, len)))
}

/// netgauze returned another message type than the header's (it cannot: it reads the same
/// byte); an error rather than a panic all the same.
fn unreachable_type(kind: u8) -> Result<Message, WireError> {
    Err(malformed(
        codes::MESSAGE_HEADER_ERROR,
        codes::header::BAD_MESSAGE_TYPE,
        vec![kind],
        format!("message type {kind} read back as another type"),
    ))
}

/// ROUTE-REFRESH by hand: netgauze rejects AFI/SAFI pairs it does not know, which RFC 2918 4
/// says to ignore (the caller does, as it does any family it did not negotiate). The message
/// subtype (RFC 7313) is not kept: vipam does not advertise enhanced route refresh.
fn decode_route_refresh(body: &[u8]) -> Result<Message, WireError> {
    let &[afi_high, afi_low, _subtype, safi] = body else {
        return Err(malformed(
            codes::ROUTE_REFRESH_ERROR,
            1, // Invalid Message Length (RFC 7313 5)
            body.to_vec(),
            format!(
                "ROUTE-REFRESH of length {} (must be {})",
                HEADER_LEN + body.len(),
                HEADER_LEN + 4
            ),
        ));
    };
    Ok(Message::RouteRefresh {
        afi: u16::from_be_bytes([afi_high, afi_low]),
        safi,
    })
}

/// netgauze parses an OPEN or UPDATE message (header included).
fn parse(bytes: &[u8], four_octet_asn: bool, kind: u8) -> Result<BgpMessage, WireError> {
    let mut ctx = BgpParsingContext::new(
        four_octet_asn,
        HashMap::new(), // no multiple labels
        HashMap::new(), // no ADD-PATH
        // Non-unicast IPv4 prefixes (224/4) are not malformed; received routes are unused.
        false,
        false,
        // Capabilities are framed and read one by one in `decode_open` (an unknown family in
        // a multiprotocol capability must not reject the OPEN, RFC 4760 8).
        false,
        // A malformed attribute rejects the UPDATE.
        true,
    );
    BgpMessage::parse(&mut SliceReader::new(bytes), &mut ctx)
        .map_err(|error| netgauze_error(error, kind))
}

/// The NOTIFICATION and sentence for a netgauze parse error.
fn netgauze_error(error: BgpMessageParsingError, kind: u8) -> WireError {
    let name = type_name(kind);
    let reason = match &error {
        BgpMessageParsingError::BgpOpenMessageParsingError(open) => match open {
            BgpOpenMessageParsingError::UnsupportedVersionNumber { version, .. } => {
                format!("OPEN: unsupported BGP version {version} (vipam speaks 4)")
            }
            BgpOpenMessageParsingError::UnacceptableHoldTime { time, .. } => {
                format!("OPEN: unacceptable hold time {time} s (must be 0 or at least 3)")
            }
            BgpOpenMessageParsingError::InvalidBgpId { bgp_id, .. } => {
                format!("OPEN: BGP identifier {bgp_id} is not a unicast address")
            }
            BgpOpenMessageParsingError::ParameterError(
                BgpParameterParsingError::UndefinedParameterType { code, .. },
            ) => format!("OPEN: unknown optional parameter {code}"),
            other => format!("OPEN: {other}"),
        },
        BgpMessageParsingError::UnparseableBytes { unparsed_bytes, .. } => {
            format!("{name}: {unparsed_bytes} bytes left over after the message body")
        }
        BgpMessageParsingError::BgpUpdateMessageParsingError(update) => format!("UPDATE: {update}"),
        other => format!("{name}: {other}"),
    };
    let fallback = match kind {
        message_type::OPEN => codes::OPEN_MESSAGE_ERROR,
        message_type::UPDATE => codes::UPDATE_MESSAGE_ERROR,
        _ => codes::MESSAGE_HEADER_ERROR,
    };
    WireError::Malformed {
        notification: notification_of(BgpNotificationMessage::from(error), fallback),
        reason,
    }
}

/// netgauze's NOTIFICATION for an error as code, subcode and data: netgauze writes it, and
/// the fields are read back from the bytes (they are the same on the wire whatever the type).
fn notification_of(notification: BgpNotificationMessage, fallback_code: u8) -> Notification {
    let mut bytes = Vec::new();
    match BgpMessage::Notification(notification).write(&mut bytes) {
        Ok(()) if bytes.len() >= HEADER_LEN + 2 => Notification {
            code: bytes[HEADER_LEN],
            subcode: bytes[HEADER_LEN + 1],
            data: bytes[HEADER_LEN + 2..].to_vec(),
        },
        _ => Notification::new(fallback_code, 0),
    }
}

fn open_error(reason: String) -> WireError {
    malformed(codes::OPEN_MESSAGE_ERROR, 0, Vec::new(), reason)
}

/// The OPEN as vipam sees it, from netgauze's fixed fields and vipam's own reading of the
/// capabilities: each capability is framed here and parsed by netgauze alone, so one netgauze
/// cannot parse (an unknown family, a capability it does not model) costs only itself.
fn decode_open(open: &BgpOpenMessage, body: &[u8]) -> Result<Open, WireError> {
    let mut capabilities = Capabilities::default();
    // body: version (1), my AS (2), hold time (2), BGP identifier (4), parameters length (1)
    let params_len = usize::from(body.get(9).copied().unwrap_or(0));
    let mut params = body.get(10..10 + params_len).unwrap_or_default();
    while let [param_type, param_len, rest @ ..] = params {
        let param_len = usize::from(*param_len);
        let Some(value) = rest.get(..param_len) else {
            return Err(open_error(format!(
                "OPEN: optional parameter {param_type} of length {param_len} overruns the \
                 parameters"
            )));
        };
        // netgauze has accepted only capability parameters (type 2).
        read_capabilities(value, &mut capabilities)?;
        params = &rest[param_len..];
    }
    Ok(Open {
        version: open.version(),
        my_as: open.my_as(),
        hold_time: open.hold_time(),
        router_id: open.bgp_id(),
        capabilities,
    })
}

fn read_capabilities(mut caps: &[u8], into: &mut Capabilities) -> Result<(), WireError> {
    while let [code, len, rest @ ..] = caps {
        let len = usize::from(*len);
        let Some(value) = rest.get(..len) else {
            return Err(open_error(format!(
                "OPEN: capability {code} of length {len} overruns its optional parameter"
            )));
        };
        read_capability(*code, &caps[..2 + len], value, into)?;
        caps = &rest[len..];
    }
    if !caps.is_empty() {
        return Err(open_error(
            "OPEN: a capability parameter ends in the middle of a capability header".to_string(),
        ));
    }
    Ok(())
}

fn add_family(into: &mut Capabilities, (afi, safi): (u16, u8)) {
    match Family::from_afi_safi(afi, safi) {
        Some(family) => {
            into.families.insert(family);
        }
        None if !into.other_families.contains(&(afi, safi)) => {
            into.other_families.push((afi, safi))
        }
        None => {}
    }
}

/// One capability (`tlv`: code, length and value). The ones vipam reads must be well formed;
/// the others are kept by code only (RFC 5492 4: ignored).
fn read_capability(
    code: u8,
    tlv: &[u8],
    value: &[u8],
    into: &mut Capabilities,
) -> Result<(), WireError> {
    let parsed = BgpCapability::parse(&mut SliceReader::new(tlv));
    match (code, parsed) {
        (_, Ok(BgpCapability::MultiProtocolExtensions(mp))) => {
            add_family(into, afi_safi_of(mp.address_type()));
        }
        // netgauze rejects AFI/SAFI pairs it does not know; they are only not negotiated.
        (CAP_MULTIPROTOCOL, Err(_)) => {
            let &[afi_high, afi_low, _reserved, safi] = value else {
                return Err(open_error(format!(
                    "OPEN: multiprotocol capability of length {} (must be 4)",
                    value.len()
                )));
            };
            add_family(into, (u16::from_be_bytes([afi_high, afi_low]), safi));
        }
        (_, Ok(BgpCapability::RouteRefresh | BgpCapability::CiscoRouteRefresh)) => {
            into.route_refresh = true;
        }
        (CAP_ROUTE_REFRESH | CAP_ROUTE_REFRESH_OLD, Err(_)) => {
            return Err(open_error(format!(
                "OPEN: route refresh capability of length {} (must be 0)",
                value.len()
            )));
        }
        (_, Ok(BgpCapability::FourOctetAs(asn))) => into.four_octet_asn = Some(asn.asn4()),
        (CAP_FOUR_OCTET_AS, Err(_)) => {
            return Err(open_error(format!(
                "OPEN: 4-octet ASN capability of length {} (must be 4)",
                value.len()
            )));
        }
        (_, Ok(BgpCapability::GracefulRestartCapability(gr))) => {
            into.graceful_restart = Some(GracefulRestart {
                restarting: gr.restart(),
                restart_time: gr.time(),
                families: gr
                    .address_families()
                    .iter()
                    .filter(|f| f.forwarding_state())
                    .filter_map(|f| {
                        let (afi, safi) = afi_safi_of(f.address_type());
                        Family::from_afi_safi(afi, safi)
                    })
                    .collect(),
            });
        }
        // netgauze rejects families it does not know here too: read the tuples directly.
        (CAP_GRACEFUL_RESTART, Err(_)) => {
            into.graceful_restart = Some(read_graceful_restart(value)?);
        }
        _ => into.unknown.push(code),
    }
    Ok(())
}

/// Graceful restart (RFC 4724 3): flags (4 bits) and restart time (12 bits), then
/// (AFI, SAFI, flags) tuples.
fn read_graceful_restart(value: &[u8]) -> Result<GracefulRestart, WireError> {
    let [flags_time_high, time_low, tuples @ ..] = value else {
        return Err(open_error(format!(
            "OPEN: graceful restart capability of length {} (at least 2)",
            value.len()
        )));
    };
    if tuples.len() % 4 != 0 {
        return Err(open_error(format!(
            "OPEN: graceful restart capability of length {} (2 plus 4 per family)",
            value.len()
        )));
    }
    Ok(GracefulRestart {
        restarting: flags_time_high & 0x80 != 0,
        restart_time: u16::from_be_bytes([flags_time_high & 0x0f, *time_low]),
        families: tuples
            .chunks_exact(4)
            .filter(|t| t[3] & 0x80 != 0)
            .filter_map(|t| Family::from_afi_safi(u16::from_be_bytes([t[0], t[1]]), t[2]))
            .collect(),
    })
}
