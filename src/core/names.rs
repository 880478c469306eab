//! Canonical `IPAllocation` names: one valid DNS-1123 subdomain per address, round-tripping.
//!
//! IPv4: `v4-` + dotted quad with `-` for `.` (`v4-192-168-0-223`).
//! IPv6: `v6-` + the RFC 5952 text with `-` for `:` (`v6-2001-db8--1`). A name may not end in
//! `-`, so an address whose text ends in `::` gets a trailing `0` (`2001:db8::` ->
//! `v6-2001-db8--0`), which parses back to the same address. IPv4-mapped forms keep their dots,
//! which DNS-1123 subdomains allow.

use std::net::IpAddr;

/// The `IPAllocation` name of an address.
pub fn allocation_name(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("v4-{}", v4.to_string().replace('.', "-")),
        IpAddr::V6(v6) => {
            // std's Display is RFC 5952 (lowercase, longest zero run compressed).
            let mut body = v6.to_string().replace(':', "-");
            if body.ends_with('-') {
                body.push('0');
            }
            format!("v6-{body}")
        }
    }
}

/// The address an `IPAllocation` name stands for; `None` unless `name` is canonical.
pub fn allocation_ip(name: &str) -> Option<IpAddr> {
    let ip: IpAddr = if let Some(rest) = name.strip_prefix("v4-") {
        rest.replace('-', ".")
            .parse::<std::net::Ipv4Addr>()
            .ok()?
            .into()
    } else if let Some(rest) = name.strip_prefix("v6-") {
        rest.replace('-', ":")
            .parse::<std::net::Ipv6Addr>()
            .ok()?
            .into()
    } else {
        return None;
    };
    (allocation_name(&ip) == name).then_some(ip)
}

/// Whether `name` is a valid DNS-1123 subdomain (what Kubernetes requires of object names).
pub fn is_dns1123_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let cases = [
            ("192.168.0.223", "v4-192-168-0-223"),
            ("2001:db8::1", "v6-2001-db8--1"),
            ("2001:db8::", "v6-2001-db8--0"),
            ("::", "v6---0"),
            ("::1", "v6---1"),
            ("2001:db8:0:0:1:0:0:1", "v6-2001-db8--1-0-0-1"),
            ("2001:DB8::AB", "v6-2001-db8--ab"),
            ("::ffff:192.0.2.1", "v6---ffff-192.0.2.1"),
        ];
        for (ip, name) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(allocation_name(&ip), name);
            assert_eq!(allocation_ip(name), Some(ip));
            assert!(is_dns1123_subdomain(name), "{name}");
        }
    }

    #[test]
    fn non_canonical_names_are_refused() {
        for name in [
            "v4-192-168-000-1",
            "v6-2001-0db8--1",
            "v6-2001-db8-0-0-0-0-0-1",
            "v6-2001-DB8--1",
            "v4-1-2-3",
            "x-1-2-3-4",
            "v6-2001-db8--",
        ] {
            assert_eq!(allocation_ip(name), None, "{name}");
        }
    }

    proptest! {
        #[test]
        fn v4_round_trips(bits in any::<u32>()) {
            let ip = IpAddr::V4(bits.into());
            let name = allocation_name(&ip);
            prop_assert!(is_dns1123_subdomain(&name), "{}", name);
            prop_assert_eq!(allocation_ip(&name), Some(ip));
        }

        #[test]
        fn v6_round_trips(bits in any::<u128>(), zero_mask in any::<u8>()) {
            // Zero some groups so compressed forms (::) are well covered.
            let mut value = bits;
            for group in 0..8 {
                if zero_mask & (1 << group) != 0 {
                    value &= !(0xffffu128 << (group * 16));
                }
            }
            let ip = IpAddr::V6(value.into());
            let name = allocation_name(&ip);
            prop_assert!(is_dns1123_subdomain(&name), "{}", name);
            prop_assert_eq!(allocation_ip(&name), Some(ip));
        }
    }
}
