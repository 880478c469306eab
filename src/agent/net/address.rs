//! Kernel addresses through NETLINK_ROUTE ([`super::netlink`]): list, add and remove IPv4 /32
//! and IPv6 /128 addresses, marked as ours, plus the agent's own record of what it added.
//!
//! # What makes an address "ours" (DESIGN invariant 4)
//!
//! An address is ours when it is a full-length prefix (/32 or /128) and either
//! - it carries `IFA_PROTO` = [`VIPAM_ADDR_PROTO`] (kernels 6.1 and later keep this attribute), or
//! - it carries no protocol marker at all and our record file (`addresses.json` in the state
//!   directory) lists it with the same interface index and an interface of the same name
//!   (kernels before 6.1 silently drop `IFA_PROTO`, so the record is what survives there).
//!
//! Nothing else is ever removed. IPv4 addresses also get the label `<ifname>:vipam` when that
//! fits the kernel's 15 bytes, so `ip addr` shows them as ours to a person.
//!
//! The record is written before an address is added and pruned after it is removed, so a
//! crash in between leaves at worst a record entry without an address (pruned later), never an
//! address of ours that we could not recognise.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeader, AddressHeaderFlags, AddressMessage, AddressScope,
};
use serde::{Deserialize, Serialize};

use super::NetError;
use super::netlink::Netlink;

/// The `IFA_PROTO` value marking addresses added by vipam: 0x56, ASCII 'V'. The kernel reserves
/// 0-3 (unspec, loopback, kernel link-local, kernel RA); other values are free for user space
/// (`ip addr` prints it as `proto 0x56`).
pub const VIPAM_ADDR_PROTO: u8 = 0x56;

/// Suffix of the IPv4 label: `<ifname>:vipam`.
pub const LABEL_SUFFIX: &str = ":vipam";

/// The `IFA_PROTO` value of the control-plane VIP (`vipam agent --control-plane`): 0x57.
pub const CONTROL_PLANE_ADDR_PROTO: u8 = 0x57;

/// How one announcer marks the addresses it adds. The Service announcer (a DaemonSet) and the
/// control-plane VIP (often a static pod) may run as two processes on one node: each has its own
/// marker and record, so neither ever removes the other's addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// `IFA_PROTO` value.
    pub proto: u8,
    /// IPv4 label suffix (`<ifname><suffix>`, when it fits in 15 bytes).
    pub label_suffix: &'static str,
}

impl Marker {
    /// Addresses of LoadBalancer Services: proto 0x56, label `<ifname>:vipam`.
    pub const SERVICES: Marker = Marker {
        proto: VIPAM_ADDR_PROTO,
        label_suffix: LABEL_SUFFIX,
    };
    /// The control-plane VIP: proto 0x57, label `<ifname>:vipcp`.
    pub const CONTROL_PLANE: Marker = Marker {
        proto: CONTROL_PLANE_ADDR_PROTO,
        label_suffix: ":vipcp",
    };

    /// The IPv4 label for an address on `ifname`, when it fits in 15 bytes.
    pub fn label_for(self, ifname: &str) -> Option<String> {
        let label = format!("{ifname}{}", self.label_suffix);
        (label.len() <= IFNAME_MAX).then_some(label)
    }
}

impl Default for Marker {
    fn default() -> Self {
        Marker::SERVICES
    }
}

/// Name of the record file in the state directory.
pub const RECORD_FILE: &str = "addresses.json";
/// No duplicate address detection (IPv6): usable at once, and a takeover is not refused.
pub const IFA_F_NODAD: u32 = 0x02;
/// Longest interface name (IFNAMSIZ minus the terminating NUL).
pub const IFNAME_MAX: usize = 15;

/// An address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelAddr {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub ifindex: u32,
    /// IFA_F_* flags (from IFA_FLAGS when present).
    pub flags: u32,
    /// IPv4 label (IFA_LABEL).
    pub label: Option<String>,
    /// IFA_PROTO, 0 when absent.
    pub proto: u8,
}

impl KernelAddr {
    /// /32 for IPv4, /128 for IPv6: the only shape we ever add.
    pub fn is_host_route(&self) -> bool {
        match self.ip {
            IpAddr::V4(_) => self.prefix_len == 32,
            IpAddr::V6(_) => self.prefix_len == 128,
        }
    }
}
fn header(ip: IpAddr, ifindex: u32) -> AddressHeader {
    let (family, prefix_len) = match ip {
        IpAddr::V4(_) => (AddressFamily::Inet, 32),
        IpAddr::V6(_) => (AddressFamily::Inet6, 128),
    };
    AddressHeader {
        family,
        prefix_len,
        flags: AddressHeaderFlags::empty(),
        scope: AddressScope::Universe,
        index: ifindex,
    }
}

/// The IPv4 label the Service announcer gives an address on `ifname` (`<ifname>:vipam`), when
/// it fits in 15 bytes.
pub fn label_for(ifname: &str) -> Option<String> {
    Marker::SERVICES.label_for(ifname)
}

/// The RTM_NEWADDR message adding `ip` as /32 or /128 on `ifindex`, marked as ours.
pub fn new_addr_message(ip: IpAddr, ifindex: u32, ifname: &str, marker: Marker) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header = header(ip, ifindex);
    let mut flags = AddressFlags::empty();
    if ip.is_ipv6() {
        flags |= AddressFlags::Nodad;
        message.header.flags |= AddressHeaderFlags::Nodad;
    }
    message.attributes.push(AddressAttribute::Local(ip));
    message.attributes.push(AddressAttribute::Address(ip));
    if ip.is_ipv4()
        && let Some(label) = marker.label_for(ifname)
    {
        message.attributes.push(AddressAttribute::Label(label));
    }
    message.attributes.push(AddressAttribute::Flags(flags));
    message
        .attributes
        .push(AddressAttribute::Protocol(marker.proto.into()));
    message
}

fn del_addr_message(ip: IpAddr, ifindex: u32) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header = header(ip, ifindex);
    message.attributes.push(AddressAttribute::Local(ip));
    message.attributes.push(AddressAttribute::Address(ip));
    message
}

/// Reads an address message (from a dump or a notification).
pub fn parse_addr(message: &AddressMessage) -> Option<KernelAddr> {
    let mut local = None;
    let mut address = None;
    let mut label = None;
    let mut flags = u32::from(message.header.flags.bits());
    let mut proto = 0;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Label(l) => label = Some(l.clone()),
            AddressAttribute::Flags(f) => flags = f.bits(),
            AddressAttribute::Protocol(p) => proto = u8::from(*p),
            _ => {}
        }
    }
    // IFA_LOCAL is the address itself; IFA_ADDRESS the peer on point-to-point links. IPv6
    // often sends only IFA_ADDRESS.
    let ip = local.or(address)?;
    let family_matches = match ip {
        IpAddr::V4(_) => message.header.family == AddressFamily::Inet,
        IpAddr::V6(_) => message.header.family == AddressFamily::Inet6,
    };
    family_matches.then_some(KernelAddr {
        ip,
        prefix_len: message.header.prefix_len,
        ifindex: message.header.index,
        flags,
        label,
        proto,
    })
}

/// One address the agent added, as written in the record file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordEntry {
    pub ip: IpAddr,
    pub ifindex: u32,
    pub ifname: String,
}

/// The agent's own record of the addresses it added (`addresses.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub addresses: BTreeSet<RecordEntry>,
}

impl Record {
    /// Reads the record; a missing file is an empty record.
    pub fn load(path: &Path) -> Result<Record, NetError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NetError::State {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(NetError::State {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// Writes the record atomically: a temporary file renamed over the old one. No fsync: the
    /// record must survive a crash of the agent, not of the node (the state directory is a
    /// tmpfs such as /run, and the kernel's addresses do not survive a reboot either).
    pub fn store(&self, path: &Path) -> Result<(), NetError> {
        let err = |e: io::Error| NetError::State {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| NetError::State {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Whether `addr` (on an interface now named `ifname`) is listed.
    pub fn lists(&self, addr: &KernelAddr, ifname: Option<&str>) -> bool {
        self.addresses.iter().any(|e| {
            e.ip == addr.ip && e.ifindex == addr.ifindex && Some(e.ifname.as_str()) == ifname
        })
    }
}

/// Whether `addr` is ours: see the module documentation. `ifname` is the current name of the
/// interface `addr.ifindex`.
pub fn is_ours(addr: &KernelAddr, ifname: Option<&str>, record: &Record, marker: Marker) -> bool {
    if !addr.is_host_route() {
        return false;
    }
    match addr.proto {
        p if p == marker.proto => true,
        // Another owner's marker: whatever our record says, the address was replaced.
        p if p != 0 => false,
        _ => record.lists(addr, ifname),
    }
}

/// Adds, removes and lists the node's addresses, keeping the record in step.
#[derive(Debug)]
pub struct AddressManager {
    nl: Netlink,
    marker: Marker,
    record: Record,
    record_path: PathBuf,
    dirty: bool,
}

/// What [`AddressManager::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The address was added now.
    Added,
    /// The address was already there and is ours (left by an earlier run, or re-added).
    AlreadyOurs,
    /// The address was already there and is not ours: left untouched, and never removed by us.
    Foreign,
}

/// The addresses of the interface `ifname` in kernel order (None when there is no such
/// interface), read with a netlink socket of its own in the calling thread's namespace.
/// Blocking: call it off the async runtime.
pub fn addresses_of(ifname: &str) -> Result<Option<Vec<KernelAddr>>, NetError> {
    let mut nl = Netlink::open(0).map_err(|e| NetError::Netlink {
        op: "open",
        source: e,
    })?;
    let Some(index) = super::iface::list_with(&mut nl)?
        .into_iter()
        .find(|i| i.name == ifname)
        .map(|i| i.index)
    else {
        return Ok(None);
    };
    let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
    let replies = nl
        .request(request, NLM_F_DUMP)
        .map_err(|e| NetError::Netlink {
            op: "list addresses",
            source: e,
        })?;
    Ok(Some(
        replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_addr(a),
                _ => None,
            })
            .filter(|a| a.ifindex == index)
            .collect(),
    ))
}

impl AddressManager {
    /// Opens the netlink socket (in the calling thread's namespace) and loads the record from
    /// `state_dir` (created if missing). An unreadable record is logged and replaced: losing
    /// it only matters on kernels before 6.1.
    pub fn open(state_dir: &Path, marker: Marker) -> Result<AddressManager, NetError> {
        std::fs::create_dir_all(state_dir).map_err(|e| NetError::State {
            path: state_dir.to_owned(),
            reason: e.to_string(),
        })?;
        let record_path = state_dir.join(RECORD_FILE);
        let record = match Record::load(&record_path) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unreadable address record");
                Record::default()
            }
        };
        let nl = Netlink::open(0).map_err(|e| NetError::Netlink {
            op: "open",
            source: e,
        })?;
        Ok(AddressManager {
            nl,
            marker,
            record,
            record_path,
            dirty: false,
        })
    }

    /// The record as loaded or last written.
    /// How this manager marks its addresses.
    pub fn marker(&self) -> Marker {
        self.marker
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    /// Every address of every interface.
    pub fn list(&mut self) -> Result<Vec<KernelAddr>, NetError> {
        let request = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let replies = self
            .nl
            .request(request, NLM_F_DUMP)
            .map_err(|e| NetError::Netlink {
                op: "list addresses",
                source: e,
            })?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => parse_addr(a),
                _ => None,
            })
            .collect())
    }

    /// Interface names by index (for matching record entries).
    pub fn interface_names(&mut self) -> Result<HashMap<u32, String>, NetError> {
        Ok(super::iface::list_with(&mut self.nl)?
            .into_iter()
            .map(|i| (i.index, i.name))
            .collect())
    }

    /// Our addresses now present: marked, or recorded (see the module documentation).
    pub fn ours(&mut self) -> Result<Vec<KernelAddr>, NetError> {
        let names = self.interface_names()?;
        let all = self.list()?;
        Ok(all
            .into_iter()
            .filter(|a| {
                is_ours(
                    a,
                    names.get(&a.ifindex).map(String::as_str),
                    &self.record,
                    self.marker,
                )
            })
            .collect())
    }

    /// Records entries ahead of a batch of [`AddressManager::add`] calls, writing the file once.
    pub fn reserve(
        &mut self,
        entries: impl IntoIterator<Item = RecordEntry>,
    ) -> Result<(), NetError> {
        let before = self.record.addresses.len();
        self.record.addresses.extend(entries);
        if self.record.addresses.len() != before {
            self.record.store(&self.record_path)?;
        }
        Ok(())
    }

    /// Writes the record if removals changed it since the last write.
    pub fn flush(&mut self) -> Result<(), NetError> {
        if self.dirty {
            self.record.store(&self.record_path)?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Adds `ip` (/32 or /128) on `ifindex` named `ifname`, marked as ours, recording it first.
    /// An address already present is left as it is (it may be someone else's).
    pub fn add(&mut self, ip: IpAddr, ifindex: u32, ifname: &str) -> Result<Added, NetError> {
        let entry = RecordEntry {
            ip,
            ifindex,
            ifname: ifname.to_owned(),
        };
        let was_recorded = !self.record.addresses.insert(entry.clone());
        if !was_recorded {
            self.record.store(&self.record_path)?;
        }
        let request =
            RouteNetlinkMessage::NewAddress(new_addr_message(ip, ifindex, ifname, self.marker));
        match self.nl.request(request, NLM_F_CREATE | NLM_F_EXCL) {
            Ok(_) => Ok(Added::Added),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // Not added by us now: if it is not ours, it must not stay in the record
                // (or a later cleanup would take it).
                let names = self.interface_names()?;
                let existing = self
                    .list()?
                    .into_iter()
                    .find(|a| a.ip == ip && a.ifindex == ifindex);
                let ours = existing.as_ref().is_some_and(|a| {
                    a.proto == self.marker.proto
                        || (a.proto == 0
                            && a.is_host_route()
                            && names.get(&ifindex).map(String::as_str) == Some(ifname)
                            && was_recorded)
                });
                if ours {
                    Ok(Added::AlreadyOurs)
                } else {
                    self.record.addresses.remove(&entry);
                    self.record.store(&self.record_path)?;
                    Ok(Added::Foreign)
                }
            }
            Err(e) => Err(NetError::Netlink {
                op: "add address",
                source: e,
            }),
        }
    }

    /// Removes `addr`, which must be ours (callers check with [`is_ours`]), and drops it from
    /// the record (written at the next [`AddressManager::flush`]: an entry that outlives its
    /// address is harmless and pruned later). An address already gone counts as removed.
    pub fn remove(&mut self, addr: &KernelAddr) -> Result<(), NetError> {
        let request = RouteNetlinkMessage::DelAddress(del_addr_message(addr.ip, addr.ifindex));
        match self.nl.request(request, 0) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => {
                return Err(NetError::Netlink {
                    op: "remove address",
                    source: e,
                });
            }
        }
        self.forget(addr.ip, addr.ifindex)
    }

    /// Drops record entries for `ip` on `ifindex` (written at the next flush).
    pub fn forget(&mut self, ip: IpAddr, ifindex: u32) -> Result<(), NetError> {
        let before = self.record.addresses.len();
        self.record
            .addresses
            .retain(|e| !(e.ip == ip && e.ifindex == ifindex));
        if self.record.addresses.len() != before {
            self.dirty = true;
        }
        Ok(())
    }

    /// Drops record entries whose address no longer exists (with that index and name), and
    /// that are not in `keep`.
    pub fn prune_record(
        &mut self,
        present: &[KernelAddr],
        names: &HashMap<u32, String>,
        keep: &BTreeSet<(IpAddr, u32)>,
    ) -> Result<(), NetError> {
        let before = self.record.addresses.len();
        self.record.addresses.retain(|e| {
            keep.contains(&(e.ip, e.ifindex))
                || (names.get(&e.ifindex) == Some(&e.ifname)
                    && present
                        .iter()
                        .any(|a| a.ip == e.ip && a.ifindex == e.ifindex && a.is_host_route()))
        });
        if self.record.addresses.len() != before {
            self.dirty = true;
        }
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::net::netlink::messages;
    use crate::agent::net::netlink::tests::datagram;
    use netlink_packet_core::NetlinkPayload;

    fn addr(ip: &str, prefix_len: u8, ifindex: u32, proto: u8) -> KernelAddr {
        KernelAddr {
            ip: ip.parse().unwrap(),
            prefix_len,
            ifindex,
            flags: 0,
            label: None,
            proto,
        }
    }

    /// The message as the kernel would read it: serialised, framed, decoded again.
    fn on_the_wire(message: AddressMessage) -> AddressMessage {
        let bytes = datagram(vec![RouteNetlinkMessage::NewAddress(message)]);
        match messages(&bytes).next().unwrap().unwrap().payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => m,
            other => panic!("not an address message: {other:?}"),
        }
    }

    #[test]
    fn built_add_message_parses_back() {
        let cases = [
            ("192.0.2.50", "eth0", Some("eth0:vipam"), 0),
            ("192.0.2.51", "enp0s20f0u1", None, 0), // the label would exceed 15 bytes
            ("2001:db8:1::50", "eth0", None, IFA_F_NODAD),
        ];
        for (ip, ifname, label, flags) in cases {
            let message = new_addr_message(ip.parse().unwrap(), 7, ifname, Marker::SERVICES);
            let parsed = parse_addr(&on_the_wire(message)).unwrap();
            assert_eq!(parsed.ip, ip.parse::<IpAddr>().unwrap(), "{ip}");
            assert_eq!(parsed.ifindex, 7);
            assert!(parsed.is_host_route(), "{ip}");
            assert_eq!(parsed.proto, VIPAM_ADDR_PROTO, "{ip}");
            assert_eq!(parsed.label.as_deref(), label, "{ip}");
            assert_eq!(parsed.flags, flags, "{ip}");
        }
        let cp = new_addr_message(
            "192.0.2.9".parse().unwrap(),
            2,
            "eth0",
            Marker::CONTROL_PLANE,
        );
        let parsed = parse_addr(&on_the_wire(cp)).unwrap();
        assert_eq!(parsed.proto, CONTROL_PLANE_ADDR_PROTO);
        assert_eq!(parsed.label.as_deref(), Some("eth0:vipcp"));
    }

    #[test]
    fn address_messages_without_a_usable_address_are_skipped() {
        let mut none = AddressMessage::default();
        none.header.family = AddressFamily::Inet;
        assert_eq!(parse_addr(&none), None, "no address attribute");
        let mut mismatch =
            new_addr_message("192.0.2.1".parse().unwrap(), 2, "eth0", Marker::SERVICES);
        mismatch.header.family = AddressFamily::Inet6;
        assert_eq!(
            parse_addr(&mismatch),
            None,
            "an IPv4 address in an IPv6 message"
        );
        // Unmarked (an old kernel, or someone else's): proto 0, flags from the header.
        let mut plain = del_addr_message("2001:db8::1".parse().unwrap(), 3);
        plain.header.prefix_len = 64;
        let parsed = parse_addr(&on_the_wire(plain)).unwrap();
        assert_eq!(
            (parsed.proto, parsed.prefix_len, parsed.is_host_route()),
            (0, 64, false)
        );
    }

    #[test]
    fn labels_fit_ifnamsiz() {
        assert_eq!(label_for("eth0").as_deref(), Some("eth0:vipam"));
        assert_eq!(label_for("enp0s31f6").as_deref(), Some("enp0s31f6:vipam")); // 15 bytes
        assert_eq!(label_for("enp0s20f0u1").as_deref(), None); // 17 bytes
    }

    #[test]
    fn ownership_needs_marker_or_record() {
        let mut record = Record::default();
        record.addresses.insert(RecordEntry {
            ip: "192.0.2.60".parse().unwrap(),
            ifindex: 2,
            ifname: "eth0".into(),
        });
        let cases = [
            (
                "marked /32",
                addr("192.0.2.50", 32, 2, VIPAM_ADDR_PROTO),
                "eth0",
                true,
            ),
            (
                "marked /128",
                addr("2001:db8::5", 128, 2, VIPAM_ADDR_PROTO),
                "eth0",
                true,
            ),
            (
                "marked /24 is not our shape",
                addr("192.0.2.50", 24, 2, VIPAM_ADDR_PROTO),
                "eth0",
                false,
            ),
            (
                "unmarked, not recorded",
                addr("192.0.2.61", 32, 2, 0),
                "eth0",
                false,
            ),
            (
                "recorded, old kernel",
                addr("192.0.2.60", 32, 2, 0),
                "eth0",
                true,
            ),
            (
                "recorded ip on another index",
                addr("192.0.2.60", 32, 3, 0),
                "eth0",
                false,
            ),
            (
                "recorded index renamed",
                addr("192.0.2.60", 32, 2, 0),
                "eth1",
                false,
            ),
            (
                "recorded but someone else's marker",
                addr("192.0.2.60", 32, 2, 4),
                "eth0",
                false,
            ),
            (
                "recorded but /24",
                addr("192.0.2.60", 24, 2, 0),
                "eth0",
                false,
            ),
        ];
        for (name, a, ifname, want) in cases {
            assert_eq!(
                is_ours(&a, Some(ifname), &record, Marker::SERVICES),
                want,
                "{name}"
            );
            // The other instance's marker: never ours, whatever the record says.
            if a.proto == VIPAM_ADDR_PROTO {
                assert!(
                    !is_ours(&a, Some(ifname), &record, Marker::CONTROL_PLANE),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn record_round_trips_atomically() {
        let dir = std::env::temp_dir().join(format!("vipam-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(RECORD_FILE);
        let _ = std::fs::remove_file(&path);
        assert_eq!(Record::load(&path).unwrap(), Record::default());
        let mut r = Record::default();
        r.addresses.insert(RecordEntry {
            ip: "2001:db8::7".parse().unwrap(),
            ifindex: 4,
            ifname: "eth0".into(),
        });
        r.store(&path).unwrap();
        assert_eq!(Record::load(&path).unwrap(), r);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(Record::load(&path), Err(NetError::State { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
