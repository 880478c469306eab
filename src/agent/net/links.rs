//! The node's links as the kernel reports them, kept current by a netlink subscription on a
//! thread of its own.
//!
//! Netlink requests take the kernel's RTNL lock, which a busy node (CNI plugins, kube-proxy,
//! routing daemons) holds often; a request can wait for it. So no netlink call runs on the
//! agent's async runtime for links: the `vipam-links` thread subscribes to link, address and
//! route changes, dumps the links again when one changed (or when the subscription overran:
//! changes were lost, so everything is read again), works out the interface of the default
//! route, and publishes a [`NetState`] through a `tokio::sync::watch` channel. Readers take
//! the latest snapshot without a system call.
//!
//! An interface is *usable* for announcements when it has an Ethernet address, is
//! administratively up and has carrier (`IFF_LOWER_UP`): a cable pulled, a switch port down or
//! a bond without members all clear the carrier while the interface stays "up".
//!
//! Everything belongs to the network namespace of the thread that calls [`LinkWatch::start`]
//! (the watcher thread inherits it).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::NetError;
use libc::{RTM_DELADDR, RTM_DELLINK, RTM_DELROUTE, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE};

use super::iface::{self, Interface};
use super::netlink::{Netlink, message_types};

/// After a failed dump, the watcher tries again this long later.
const RETRY: Duration = Duration::from_secs(1);

/// The node's network as last read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetState {
    /// Every interface, sorted by name.
    pub interfaces: Vec<Interface>,
    /// The interface of the default route (IPv4 first, then IPv6).
    pub default_interface: Option<String>,
    /// Grows by one for every batch of address changes the kernel reported (ours or anyone's),
    /// so the announcer can check its addresses at once.
    pub address_changes: u64,
}

impl NetState {
    pub fn interface(&self, name: &str) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// Names of the interfaces announcements can use now (see [`Interface::usable`]), sorted.
    pub fn usable(&self) -> Vec<String> {
        self.interfaces
            .iter()
            .filter(|i| i.usable())
            .map(|i| i.name.clone())
            .collect()
    }
}

/// Handle to the watcher thread. The thread stops within a second of the last receiver
/// (this handle and every [`LinkWatch::subscribe`]) being dropped.
#[derive(Debug, Clone)]
pub struct LinkWatch {
    state: watch::Receiver<Arc<NetState>>,
}

impl LinkWatch {
    /// Subscribes, reads the links once and starts the watcher thread; resolves once the first
    /// snapshot is there. The dump runs on the watcher thread, not on the caller's runtime.
    pub async fn start() -> Result<LinkWatch, NetError> {
        let (ready_tx, ready_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("vipam-links".into())
            .spawn(move || watcher(ready_tx))
            .map_err(|e| NetError::Netlink {
                op: "start the link watcher",
                source: e,
            })?;
        let state = ready_rx.await.map_err(|_| NetError::Stopped)??;
        Ok(LinkWatch { state })
    }

    /// The latest snapshot (no system call).
    pub fn current(&self) -> Arc<NetState> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<NetState>> {
        self.state.clone()
    }
}

fn netlink_error(op: &'static str) -> impl FnOnce(io::Error) -> NetError {
    move |source| NetError::Netlink { op, source }
}

/// What a batch of notifications asks the watcher to read again.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Dirty {
    links: bool,
    routes: bool,
    addresses: bool,
}

impl Dirty {
    const ALL: Dirty = Dirty {
        links: true,
        routes: true,
        addresses: true,
    };

    fn any(self) -> bool {
        self.links || self.routes || self.addresses
    }

    /// Marks what the notifications in `datagram` changed.
    fn note(&mut self, datagram: &[u8]) {
        for kind in message_types(datagram) {
            match kind {
                RTM_NEWLINK | RTM_DELLINK => self.links = true,
                RTM_NEWADDR | RTM_DELADDR => self.addresses = true,
                RTM_NEWROUTE | RTM_DELROUTE => self.routes = true,
                _ => {}
            }
        }
    }
}

fn watcher(ready: oneshot::Sender<Result<watch::Receiver<Arc<NetState>>, NetError>>) {
    let groups = libc::RTMGRP_LINK
        | libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV6_IFADDR
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV6_ROUTE;
    // Subscribe before the first dump, so no change falls between the two.
    let opened = Netlink::open(groups as u32)
        .map_err(netlink_error("subscribe to link changes"))
        .and_then(|sub| {
            let mut requests = Netlink::open(0).map_err(netlink_error("open"))?;
            let interfaces = iface::list_with(&mut requests)?;
            Ok((sub, requests, interfaces))
        });
    let (mut sub, mut requests, interfaces) = match opened {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let (tx, rx) = watch::channel(Arc::new(NetState {
        interfaces,
        default_interface: iface::default_route_interface(),
        address_changes: 0,
    }));
    if ready.send(Ok(rx)).is_err() {
        return;
    }
    let mut dirty = Dirty::default();
    while !tx.is_closed() {
        // Blocks for at most the socket's receive timeout, so a closed channel is noticed.
        match sub.recv(0) {
            Ok(datagram) => {
                dirty.note(datagram);
                // Drain what else is queued, so a burst costs one dump.
                loop {
                    match sub.recv(libc::MSG_DONTWAIT) {
                        Ok(datagram) => dirty.note(datagram),
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => dirty = Dirty::ALL,
                        Err(_) => break,
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::debug!("link notifications overran: reading everything again");
                dirty = Dirty::ALL;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                tracing::warn!(error = %e, "link notifications failed; reading everything again");
                dirty = Dirty::ALL;
                std::thread::sleep(RETRY);
            }
        }
        if !dirty.any() {
            continue;
        }
        let links = if dirty.links {
            match iface::list_with(&mut requests) {
                Ok(links) => Some(links),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the interfaces; retrying");
                    std::thread::sleep(RETRY);
                    continue; // `dirty` is kept: the next round reads again
                }
            }
        } else {
            None
        };
        let default_interface = dirty.routes.then(iface::default_route_interface);
        let addresses = dirty.addresses;
        dirty = Dirty::default();
        tx.send_if_modified(|state| {
            let mut next = NetState::clone(state);
            if let Some(links) = links {
                next.interfaces = links;
            }
            if let Some(default) = default_interface {
                next.default_interface = default;
            }
            if addresses {
                next.address_changes += 1;
            }
            if next == **state {
                return false;
            }
            log_changes(state, &next);
            *state = Arc::new(next);
            true
        });
    }
}

fn log_changes(old: &NetState, new: &NetState) {
    for i in &new.interfaces {
        let before = old.interface(&i.name);
        if before.map(Interface::usable) != Some(i.usable()) {
            tracing::info!(interface = %i.name, usable = i.usable(), up = i.up, carrier = i.carrier,
                "interface changed");
        }
    }
    for i in &old.interfaces {
        if new.interface(&i.name).is_none() {
            tracing::info!(interface = %i.name, "interface removed");
        }
    }
    if old.default_interface != new.default_interface {
        tracing::info!(default = ?new.default_interface, "default route interface changed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::net::netlink::tests::datagram;
    use netlink_packet_route::RouteNetlinkMessage as M;

    #[test]
    fn notifications_mark_what_to_read_again() {
        let link = || Default::default();
        let addr = || Default::default();
        let route = || Default::default();
        let cases = [
            (vec![M::NewLink(link())], (true, false, false)),
            (
                vec![M::DelLink(link()), M::NewAddress(addr())],
                (true, false, true),
            ),
            (vec![M::DelRoute(route())], (false, true, false)),
            (
                vec![M::DelAddress(addr()), M::NewRoute(route())],
                (false, true, true),
            ),
            (
                vec![M::NewNeighbour(Default::default())],
                (false, false, false),
            ),
        ];
        for (messages, (links, routes, addresses)) in cases {
            let kinds: Vec<_> = messages.iter().map(|m| format!("{m:?}")).collect();
            let mut dirty = Dirty::default();
            dirty.note(&datagram(messages));
            assert_eq!(
                dirty,
                Dirty {
                    links,
                    routes,
                    addresses
                },
                "{kinds:?}"
            );
        }
    }

    #[test]
    fn usable_needs_mac_up_and_carrier() {
        let i = |name: &str, mac: bool, up: bool, carrier: bool| Interface {
            name: name.into(),
            index: 1,
            mac: mac.then_some(crate::agent::net::packet::MacAddr([2, 0, 0, 0, 0, 1])),
            up,
            carrier,
        };
        let state = NetState {
            interfaces: vec![
                i("eth0", true, true, true),
                i("eth1", true, true, false),
                i("eth2", true, false, false),
                i("tun0", false, true, true),
            ],
            default_interface: Some("eth0".into()),
            address_changes: 0,
        };
        assert_eq!(state.usable(), ["eth0"]);
        assert!(state.interface("eth1").is_some_and(|i| !i.carrier));
        assert!(state.interface("eth9").is_none());
    }
}
