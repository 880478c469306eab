//! Ethernet (EUI-48) addresses: what the agents report in their Leases (`vipam.io/macs`) and
//! in `IPAllocation.status.conflict`, and what the announcer sends from.

use std::fmt;

/// An Ethernet (EUI-48) address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// True for group (multicast and broadcast) addresses.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(BadMac)?;
            if part.is_empty() || part.len() > 2 {
                return Err(BadMac);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| BadMac)?;
        }
        if parts.next().is_some() {
            return Err(BadMac);
        }
        Ok(MacAddr(out))
    }
}

/// A text that is not six colon-separated hex bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed MAC address")]
pub struct BadMac;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_display() {
        let m: MacAddr = "02:00:00:00:00:0b".parse().unwrap();
        assert_eq!(m, MacAddr([0x02, 0, 0, 0, 0, 0x0b]));
        assert_eq!(m.to_string(), "02:00:00:00:00:0b");
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:0b:01",
            "zz:00:00:00:00:00",
            "002:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!MacAddr([0x02, 0, 0, 0, 0, 0x0b]).is_multicast());
    }
}
