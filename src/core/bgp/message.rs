//! BGP messages as vipam's speaker sees them. The codec (`agent::net::bgp::wire`, netgauze)
//! translates between these and the wire; the state machine and the RIB-out work on these only.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// AS_TRANS (RFC 6793): the 2-byte ASN sent in place of a 4-byte one.
pub const AS_TRANS: u16 = 23456;

/// An address family vipam announces (AFI/SAFI unicast only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4Unicast,
            IpAddr::V6(_) => Family::Ipv6Unicast,
        }
    }

    /// (AFI, SAFI) numbers.
    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv4Unicast => (1, 1),
            Family::Ipv6Unicast => (2, 1),
        }
    }

    /// The family of (AFI, SAFI) numbers, if vipam speaks it.
    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (1, 1) => Some(Family::Ipv4Unicast),
            (2, 1) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4Unicast => "ipv4-unicast",
            Family::Ipv6Unicast => "ipv6-unicast",
        })
    }
}

/// Graceful restart capability (RFC 4724).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// The R bit: the sender has restarted and its peer should keep its routes until End-of-RIB.
    pub restarting: bool,
    /// Seconds the peer should keep the sender's routes after the session drops (12 bits).
    pub restart_time: u16,
    /// Families whose forwarding state the sender preserves (the F bit set for each).
    pub families: BTreeSet<Family>,
}

/// The capabilities of an OPEN that vipam reads or sends. Others are kept only by their codes
/// (RFC 5492: an unknown capability is ignored).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Multiprotocol extensions (RFC 4760), the families the sender speaks. Empty in a received
    /// OPEN that carries none means IPv4 unicast only (RFC 4760 section 7).
    pub families: BTreeSet<Family>,
    /// Multiprotocol (AFI, SAFI) pairs received that vipam does not speak.
    pub other_families: Vec<(u16, u8)>,
    /// The 4-octet ASN capability (RFC 6793) with the sender's ASN.
    pub four_octet_asn: Option<u32>,
    /// Route refresh (RFC 2918, code 2; the pre-standard code 128 counts too).
    pub route_refresh: bool,
    pub graceful_restart: Option<GracefulRestart>,
    /// Codes of the other capabilities received.
    pub unknown: Vec<u8>,
}

/// An OPEN message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// Version (4).
    pub version: u8,
    /// The 2-byte "My Autonomous System" field (AS_TRANS when the ASN needs 4 bytes).
    pub my_as: u16,
    /// Seconds; 0 (no keepalives) or at least 3.
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Capabilities,
}

impl Open {
    /// The sender's ASN: from the 4-octet capability if present, else the 2-byte field.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .four_octet_asn
            .unwrap_or(u32::from(self.my_as))
    }
}

/// Standard well-known communities (IANA registry).
pub const WELL_KNOWN_COMMUNITIES: [(&str, u32); 9] = [
    ("graceful-shutdown", 0xFFFF_0000),
    ("accept-own", 0xFFFF_0001),
    ("llgr-stale", 0xFFFF_0006),
    ("no-llgr", 0xFFFF_0007),
    ("blackhole", 0xFFFF_029A),
    ("no-export", 0xFFFF_FF01),
    ("no-advertise", 0xFFFF_FF02),
    ("no-export-subconfed", 0xFFFF_FF03),
    ("no-peer", 0xFFFF_FF04),
];

/// A BGP community: standard (RFC 1997) or large (RFC 8092).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Community {
    Standard(u32),
    Large {
        global: u32,
        local1: u32,
        local2: u32,
    },
}

/// Why a community string is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a community: {reason} (use `65000:100`, a well-known name such as \
     `no-export`, or `large:65000:1:2`)"
)]
pub struct CommunityError {
    pub input: String,
    pub reason: String,
}

impl Community {
    /// Parses `a:b` (each 0..=65535), a well-known name (`no-export`, ...) or `large:a:b:c`
    /// (each a 32-bit number).
    pub fn parse(input: &str) -> Result<Community, CommunityError> {
        let error = |reason: &str| CommunityError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let text = input.trim();
        if let Some((_, value)) = WELL_KNOWN_COMMUNITIES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(text))
        {
            return Ok(Community::Standard(*value));
        }
        if let Some(rest) = text.strip_prefix("large:") {
            let parts: Vec<&str> = rest.split(':').collect();
            if parts.len() != 3 {
                return Err(error("a large community has three numbers after `large:`"));
            }
            let mut numbers = [0u32; 3];
            for (slot, part) in numbers.iter_mut().zip(&parts) {
                *slot = part.parse::<u32>().map_err(|_| {
                    error(&format!("{part:?} is not a number from 0 to 4294967295"))
                })?;
            }
            return Ok(Community::Large {
                global: numbers[0],
                local1: numbers[1],
                local2: numbers[2],
            });
        }
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() != 2 {
            return Err(error("not two numbers separated by `:` nor a known name"));
        }
        let mut numbers = [0u16; 2];
        for (slot, part) in numbers.iter_mut().zip(&parts) {
            *slot = part
                .parse::<u16>()
                .map_err(|_| error(&format!("{part:?} is not a number from 0 to 65535")))?;
        }
        Ok(Community::Standard(
            (u32::from(numbers[0]) << 16) | u32::from(numbers[1]),
        ))
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Community::Standard(value) => {
                match WELL_KNOWN_COMMUNITIES.iter().find(|(_, v)| v == value) {
                    Some((name, _)) => f.write_str(name),
                    None => write!(f, "{}:{}", value >> 16, value & 0xFFFF),
                }
            }
            Community::Large {
                global,
                local1,
                local2,
            } => write!(f, "large:{global}:{local1}:{local2}"),
        }
    }
}

/// The path attributes vipam chooses per route. ORIGIN (IGP), AS_PATH and the next hop are the
/// session's, added when the UPDATE is encoded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RouteAttrs {
    /// Sent to internal (iBGP) peers only, as RFC 4271 5.1.5 requires.
    pub local_pref: Option<u32>,
    pub communities: BTreeSet<Community>,
}

/// A route vipam announces: a prefix (a /32 or /128, or an aggregate) and its attributes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub prefix: IpNet,
    pub attrs: RouteAttrs,
}

/// An UPDATE as vipam sends it: withdrawals and announcements of one family, the announced
/// prefixes sharing one attribute set. An UPDATE with nothing in it is the family's End-of-RIB
/// marker (RFC 4724).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub family: Family,
    pub withdrawn: Vec<IpNet>,
    /// The attributes and the prefixes announced with them (empty = none announced).
    pub attrs: RouteAttrs,
    pub announced: Vec<IpNet>,
}

impl Update {
    /// The End-of-RIB marker of a family.
    pub fn end_of_rib(family: Family) -> Update {
        Update {
            family,
            withdrawn: Vec::new(),
            attrs: RouteAttrs::default(),
            announced: Vec::new(),
        }
    }

    pub fn is_end_of_rib(&self) -> bool {
        self.withdrawn.is_empty() && self.announced.is_empty()
    }
}

/// A NOTIFICATION: error code, subcode and data (RFC 4271 4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8) -> Notification {
        Notification {
            code,
            subcode,
            data: Vec::new(),
        }
    }

    /// Cease / Administrative Shutdown (RFC 4486), what vipam sends when it stops.
    pub fn administrative_shutdown() -> Notification {
        Notification::new(codes::CEASE, codes::cease::ADMINISTRATIVE_SHUTDOWN)
    }

    /// "Cease / Administrative Shutdown (6/2)": the names a log line and a status show.
    pub fn describe(&self) -> String {
        let (code_name, sub_name) = codes::names(self.code, self.subcode);
        let mut text = format!("{code_name} / {sub_name} ({}/{})", self.code, self.subcode);
        // RFC 8203: a shutdown communication is a length-prefixed UTF-8 message.
        if self.code == codes::CEASE
            && matches!(
                self.subcode,
                codes::cease::ADMINISTRATIVE_SHUTDOWN | codes::cease::ADMINISTRATIVE_RESET
            )
            && let Some((&len, rest)) = self.data.split_first()
            && usize::from(len) <= rest.len()
            && let Ok(message) = std::str::from_utf8(&rest[..usize::from(len)])
            && !message.is_empty()
        {
            text.push_str(&format!(": {message:?}"));
        }
        text
    }
}

/// A message vipam's speaker receives or sends. Received UPDATEs are not imported (the speaker
/// announces only); they count as traffic for the hold timer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    /// A received UPDATE: its content is not read.
    UpdateReceived,
    Notification(Notification),
    Keepalive,
    /// ROUTE-REFRESH for (AFI, SAFI) (RFC 2918).
    RouteRefresh {
        afi: u16,
        safi: u8,
    },
}

/// NOTIFICATION codes and subcodes vipam sends or names (RFC 4271 4.5, 6; RFC 4486; RFC 5492).
pub mod codes {
    pub const MESSAGE_HEADER_ERROR: u8 = 1;
    pub const OPEN_MESSAGE_ERROR: u8 = 2;
    pub const UPDATE_MESSAGE_ERROR: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM_ERROR: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH_ERROR: u8 = 7;

    pub mod header {
        pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
        pub const BAD_MESSAGE_LENGTH: u8 = 2;
        pub const BAD_MESSAGE_TYPE: u8 = 3;
    }

    pub mod open {
        pub const UNSUPPORTED_VERSION: u8 = 1;
        pub const BAD_PEER_AS: u8 = 2;
        pub const BAD_BGP_IDENTIFIER: u8 = 3;
        pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
        pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
        pub const UNSUPPORTED_CAPABILITY: u8 = 7;
    }

    pub mod cease {
        pub const MAXIMUM_PREFIXES: u8 = 1;
        pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
        pub const PEER_DECONFIGURED: u8 = 3;
        pub const ADMINISTRATIVE_RESET: u8 = 4;
        pub const CONNECTION_REJECTED: u8 = 5;
        pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
        pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
        pub const OUT_OF_RESOURCES: u8 = 8;
        pub const HARD_RESET: u8 = 9;
    }

    /// The names of a code and subcode, for logs and status.
    pub fn names(code: u8, subcode: u8) -> (&'static str, &'static str) {
        let code_name = match code {
            MESSAGE_HEADER_ERROR => "Message Header Error",
            OPEN_MESSAGE_ERROR => "OPEN Message Error",
            UPDATE_MESSAGE_ERROR => "UPDATE Message Error",
            HOLD_TIMER_EXPIRED => "Hold Timer Expired",
            FSM_ERROR => "Finite State Machine Error",
            CEASE => "Cease",
            ROUTE_REFRESH_ERROR => "ROUTE-REFRESH Message Error",
            _ => "unknown error code",
        };
        let sub_name = match (code, subcode) {
            (_, 0) => "unspecific",
            (MESSAGE_HEADER_ERROR, header::CONNECTION_NOT_SYNCHRONIZED) => {
                "Connection Not Synchronized"
            }
            (MESSAGE_HEADER_ERROR, header::BAD_MESSAGE_LENGTH) => "Bad Message Length",
            (MESSAGE_HEADER_ERROR, header::BAD_MESSAGE_TYPE) => "Bad Message Type",
            (OPEN_MESSAGE_ERROR, open::UNSUPPORTED_VERSION) => "Unsupported Version Number",
            (OPEN_MESSAGE_ERROR, open::BAD_PEER_AS) => "Bad Peer AS",
            (OPEN_MESSAGE_ERROR, open::BAD_BGP_IDENTIFIER) => "Bad BGP Identifier",
            (OPEN_MESSAGE_ERROR, open::UNSUPPORTED_OPTIONAL_PARAMETER) => {
                "Unsupported Optional Parameter"
            }
            (OPEN_MESSAGE_ERROR, open::UNACCEPTABLE_HOLD_TIME) => "Unacceptable Hold Time",
            (OPEN_MESSAGE_ERROR, open::UNSUPPORTED_CAPABILITY) => "Unsupported Capability",
            (UPDATE_MESSAGE_ERROR, 1) => "Malformed Attribute List",
            (UPDATE_MESSAGE_ERROR, _) => "malformed UPDATE",
            (CEASE, cease::MAXIMUM_PREFIXES) => "Maximum Number of Prefixes Reached",
            (CEASE, cease::ADMINISTRATIVE_SHUTDOWN) => "Administrative Shutdown",
            (CEASE, cease::PEER_DECONFIGURED) => "Peer De-configured",
            (CEASE, cease::ADMINISTRATIVE_RESET) => "Administrative Reset",
            (CEASE, cease::CONNECTION_REJECTED) => "Connection Rejected",
            (CEASE, cease::OTHER_CONFIGURATION_CHANGE) => "Other Configuration Change",
            (CEASE, cease::CONNECTION_COLLISION_RESOLUTION) => "Connection Collision Resolution",
            (CEASE, cease::OUT_OF_RESOURCES) => "Out of Resources",
            (CEASE, cease::HARD_RESET) => "Hard Reset",
            _ => "unknown subcode",
        };
        (code_name, sub_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communities_parse_and_print_back() {
        for (text, value) in [
            ("65000:100", Community::Standard((65000 << 16) | 100)),
            ("0:0", Community::Standard(0)),
            ("no-export", Community::Standard(0xFFFF_FF01)),
            ("BLACKHOLE", Community::Standard(0xFFFF_029A)),
            (
                "large:4200000000:1:2",
                Community::Large {
                    global: 4_200_000_000,
                    local1: 1,
                    local2: 2,
                },
            ),
        ] {
            assert_eq!(Community::parse(text), Ok(value), "{text}");
            let printed = value.to_string();
            assert_eq!(Community::parse(&printed), Ok(value), "{printed}");
        }
        assert_eq!(Community::Standard(0xFFFF_FF01).to_string(), "no-export");
        for bad in [
            "65536:1",
            "1:2:3",
            "large:1:2",
            "large:1:2:4294967296",
            "nope",
            "",
            "-1:2",
        ] {
            let err = Community::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn notifications_are_named() {
        assert_eq!(
            Notification::administrative_shutdown().describe(),
            "Cease / Administrative Shutdown (6/2)"
        );
        let mut with_text = Notification::administrative_shutdown();
        with_text.data = b"\x0bmaintenance".to_vec();
        assert_eq!(
            with_text.describe(),
            "Cease / Administrative Shutdown (6/2): \"maintenance\""
        );
        assert_eq!(
            Notification::new(2, 2).describe(),
            "OPEN Message Error / Bad Peer AS (2/2)"
        );
        assert_eq!(
            Notification::new(99, 7).describe(),
            "unknown error code / unknown subcode (99/7)"
        );
    }
}
