//! Kernel addresses through NETLINK_ROUTE, written by hand (the messages are small and fixed):
//! list, add and remove IPv4 /32 and IPv6 /128 addresses, marked as ours, plus the agent's own
//! record of what it added, and a subscription to address and link changes.
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
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::NetError;

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

// linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h, linux/if_link.h
const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
pub(crate) const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const IFA_FLAGS: u16 = 8;
const IFA_PROTO: u16 = 11;
/// No duplicate address detection (IPv6): usable at once, and a takeover is not refused.
pub const IFA_F_NODAD: u32 = 0x02;
/// Longest interface name (IFNAMSIZ minus the terminating NUL).
pub const IFNAME_MAX: usize = 15;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Appends one route attribute (rtattr) to `out`, padded to 4 bytes.
pub(crate) fn push_attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len() + align4(len) - len, 0);
}

/// Iterates over route attributes; stops at the first malformed one.
pub(crate) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff; // strip NLA_F_NESTED/BYTEORDER
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = b.get(align4(len)..).unwrap_or(&[]);
        Some((kind, data))
    })
}

/// Splits a buffer of netlink messages into (type, flags, seq, payload).
pub(crate) fn messages(mut b: &[u8]) -> impl Iterator<Item = (u16, u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < NLMSG_HDR_LEN {
            return None;
        }
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < NLMSG_HDR_LEN || len > b.len() {
            return None;
        }
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        let flags = u16::from_ne_bytes([b[6], b[7]]);
        let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        let payload = &b[NLMSG_HDR_LEN..len];
        b = b.get(align4(len)..).unwrap_or(&[]);
        Some((kind, flags, seq, payload))
    })
}

/// A NETLINK_ROUTE socket of the calling thread's network namespace.
#[derive(Debug)]
pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a socket subscribed to `groups` (0 for plain requests).
    pub(crate) fn open(groups: u32, nonblocking: bool) -> io::Result<Netlink> {
        let mut ty = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
        if nonblocking {
            ty |= libc::SOCK_NONBLOCK;
        }
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = cvt(unsafe { libc::socket(libc::AF_NETLINK, ty, libc::NETLINK_ROUTE) })?;
        // SAFETY: fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zero is valid (pid 0: the kernel assigns one).
        let mut sa: libc::sockaddr_nl = unsafe { mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        // SAFETY: valid sockaddr_nl and its size.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        if !nonblocking {
            // A request never waits long for the kernel; bound it anyway.
            let tv = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            // SAFETY: valid timeval and its size.
            cvt(unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
        }
        Ok(Netlink { fd, seq: 1 })
    }

    pub(crate) fn recv_into(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_with(buf, 0)
    }

    /// recv(2) with `flags` (e.g. `MSG_DONTWAIT` to drain a blocking socket).
    pub(crate) fn recv_with(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Sends one request and collects the payloads of its replies. Dumps end at NLMSG_DONE;
    /// other requests ask for an acknowledgement. A negative acknowledgement is the errno.
    pub(crate) fn request(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
    ) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let flags = flags | NLM_F_REQUEST | if dump { 0 } else { NLM_F_ACK };
        let len = NLMSG_HDR_LEN + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: `msg` is valid for reads of its length.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv_into(&mut buf)?;
            for (mkind, _mflags, mseq, payload) in messages(&buf[..n]) {
                if mseq != seq {
                    continue; // a late answer to an earlier request that timed out
                }
                match mkind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EPROTO);
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        return Ok(out);
                    }
                    _ => out.push(payload.to_vec()),
                }
            }
        }
    }
}

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

fn family(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ifaddrmsg(ip: IpAddr, flags: u8, ifindex: u32) -> Vec<u8> {
    let prefix = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let mut b = vec![family(ip), prefix, flags, 0];
    b.extend_from_slice(&ifindex.to_ne_bytes());
    b
}

/// The Service announcer's label `<ifname>:vipam`, when it fits in 15 bytes.
pub fn label_for(ifname: &str) -> Option<String> {
    Marker::SERVICES.label_for(ifname)
}

/// The body of an RTM_NEWADDR adding `ip` as /32 or /128 on `ifindex`, marked as ours.
pub fn new_addr_body(ip: IpAddr, ifindex: u32, ifname: &str, marker: Marker) -> Vec<u8> {
    let flags = match ip {
        IpAddr::V4(_) => 0,
        IpAddr::V6(_) => IFA_F_NODAD,
    };
    let mut b = ifaddrmsg(ip, flags as u8, ifindex);
    let bytes = ip_bytes(ip);
    push_attr(&mut b, IFA_LOCAL, &bytes);
    push_attr(&mut b, IFA_ADDRESS, &bytes);
    if ip.is_ipv4()
        && let Some(label) = marker.label_for(ifname)
    {
        let mut l = label.into_bytes();
        l.push(0);
        push_attr(&mut b, IFA_LABEL, &l);
    }
    push_attr(&mut b, IFA_FLAGS, &flags.to_ne_bytes());
    push_attr(&mut b, IFA_PROTO, &[marker.proto]);
    b
}

fn del_addr_body(ip: IpAddr, ifindex: u32) -> Vec<u8> {
    let mut b = ifaddrmsg(ip, 0, ifindex);
    let bytes = ip_bytes(ip);
    push_attr(&mut b, IFA_LOCAL, &bytes);
    push_attr(&mut b, IFA_ADDRESS, &bytes);
    b
}

/// Parses the payload of an RTM_NEWADDR message (as in dumps and notifications).
pub fn parse_addr(payload: &[u8]) -> Option<KernelAddr> {
    if payload.len() < 8 {
        return None;
    }
    let fam = payload[0];
    let prefix_len = payload[1];
    let mut flags = u32::from(payload[2]);
    let ifindex = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let mut local = None;
    let mut address = None;
    let mut label = None;
    let mut proto = 0;
    for (kind, data) in attrs(&payload[8..]) {
        match kind {
            IFA_LOCAL => local = parse_ip(fam, data),
            IFA_ADDRESS => address = parse_ip(fam, data),
            IFA_LABEL => {
                let s = data.split(|b| *b == 0).next().unwrap_or(&[]);
                label = Some(String::from_utf8_lossy(s).into_owned());
            }
            IFA_FLAGS if data.len() >= 4 => {
                flags = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
            }
            IFA_PROTO if !data.is_empty() => proto = data[0],
            _ => {}
        }
    }
    // IFA_LOCAL is the address itself; IFA_ADDRESS the peer on point-to-point links. IPv6
    // often sends only IFA_ADDRESS.
    let ip = local.or(address)?;
    Some(KernelAddr {
        ip,
        prefix_len,
        ifindex,
        flags,
        label,
        proto,
    })
}

fn parse_ip(fam: u8, data: &[u8]) -> Option<IpAddr> {
    if fam == libc::AF_INET as u8 && data.len() == 4 {
        Some(IpAddr::V4(Ipv4Addr::new(
            data[0], data[1], data[2], data[3],
        )))
    } else if fam == libc::AF_INET6 as u8 && data.len() == 16 {
        let mut o = [0u8; 16];
        o.copy_from_slice(data);
        Some(IpAddr::V6(Ipv6Addr::from(o)))
    } else {
        None
    }
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
        let nl = Netlink::open(0, false).map_err(|e| NetError::Netlink {
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
        let body = [libc::AF_UNSPEC as u8, 0, 0, 0, 0, 0, 0, 0];
        let replies = self
            .nl
            .request(RTM_GETADDR, NLM_F_DUMP, &body)
            .map_err(|e| NetError::Netlink {
                op: "list addresses",
                source: e,
            })?;
        Ok(replies.iter().filter_map(|p| parse_addr(p)).collect())
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
        let body = new_addr_body(ip, ifindex, ifname, self.marker);
        match self
            .nl
            .request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body)
        {
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
        let body = del_addr_body(addr.ip, addr.ifindex);
        match self.nl.request(RTM_DELADDR, 0, &body) {
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

    #[test]
    fn built_add_message_parses_back() {
        let cases = [
            ("192.0.2.50", "eth0", Some("eth0:vipam"), 0),
            ("192.0.2.51", "enp0s20f0u1", None, 0), // the label would exceed 15 bytes
            ("2001:db8:1::50", "eth0", None, IFA_F_NODAD),
        ];
        for (ip, ifname, label, flags) in cases {
            let body = new_addr_body(ip.parse().unwrap(), 7, ifname, Marker::SERVICES);
            let parsed = parse_addr(&body).unwrap();
            assert_eq!(parsed.ip, ip.parse::<IpAddr>().unwrap(), "{ip}");
            assert_eq!(parsed.ifindex, 7);
            assert!(parsed.is_host_route(), "{ip}");
            assert_eq!(parsed.proto, VIPAM_ADDR_PROTO, "{ip}");
            assert_eq!(parsed.label.as_deref(), label, "{ip}");
            assert_eq!(parsed.flags, flags, "{ip}");
            assert_eq!(body.len() % 4, 0);
        }
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

    #[test]
    fn netlink_framing_survives_garbage() {
        let mut b = Vec::new();
        push_attr(&mut b, IFA_LABEL, b"eth0\0");
        push_attr(&mut b, IFA_PROTO, &[1]);
        let got: Vec<_> = attrs(&b).collect();
        assert_eq!(
            got,
            vec![(IFA_LABEL, &b"eth0\0"[..]), (IFA_PROTO, &[1u8][..])]
        );
        for len in 0..b.len() {
            let _ = attrs(&b[..len]).count();
            let _ = messages(&b[..len]).count();
            let _ = parse_addr(&b[..len]);
        }
        // A length field pointing past the end stops iteration instead of panicking.
        let mut bad = b.clone();
        bad[0] = 200;
        assert_eq!(attrs(&bad).count(), 0);
        assert!(
            parse_addr(&[2, 32, 0, 0, 1, 0, 0, 0]).is_none(),
            "no address attribute"
        );
    }
}
