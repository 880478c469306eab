//! The RFC 4271 session state machine of vipam's speaker, as a pure function of events and time.
//!
//! vipam's speaker is announce-only and active-only: it connects out to each peer and never
//! listens on port 179, because the node may run other BGP software that owns the port, and a
//! router whose session drops keeps retrying towards us anyway. With one connection per peer
//! there is no connection collision to resolve.
//!
//! The agent's I/O task feeds [`Event`]s with the time they happened (`now`: a monotonic
//! [`Duration`] since an arbitrary epoch, as in [`crate::core::election`]) and executes the
//! returned [`Action`]s in order. It calls [`Session::handle`] with [`Event::Tick`] when
//! [`Session::next_deadline`] is reached. Every call applies its event, then fires the timers
//! that are due, so after any call every deadline lies in the future.
//!
//! Timers (decisions the integrator must know):
//! - connect: an attempt that has not completed within [`CONNECT_TIMEOUT`] (10 s) is abandoned
//!   ([`Action::Close`]) and retried by backoff;
//! - retry backoff: 1 s, doubling, capped at 15 s ([`RETRY_FIRST`], [`RETRY_MAX`]); reset when a
//!   session reaches Established, so the first retry after an Established session drops comes
//!   after 1 s;
//! - OpenSent: the peer's OPEN must arrive within [`OPEN_HOLD`] (30 s); so must its KEEPALIVE in
//!   OpenConfirm when the negotiated hold time is 0;
//! - hold and keepalive: negotiated from the OPENs (RFC 4271 4.2, 10); hold time 0 means no
//!   keepalives and no hold timer.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::message::{
    AS_TRANS, Capabilities, Family, GracefulRestart, Message, Notification, Open, codes,
};

/// The BGP version vipam speaks.
pub const BGP_VERSION: u8 = 4;
/// How long a connection attempt may take before it is abandoned and retried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the peer's OPEN after ours (RFC 4271 suggests a "large value").
pub const OPEN_HOLD: Duration = Duration::from_secs(30);
/// The first reconnect delay, and the delay after a session that was Established drops.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest reconnect delay (the delay doubles after each failure up to this).
pub const RETRY_MAX: Duration = Duration::from_secs(15);
/// The smallest non-zero hold time (RFC 4271 4.2).
const MIN_HOLD_TIME: u16 = 3;
/// The largest restart time the GR capability can carry (12 bits).
const MAX_RESTART_TIME: u16 = 0x0FFF;

/// One peer's session settings (from a `BGPPeer` and the node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// The peer's address: named in errors.
    pub peer_address: IpAddr,
    /// Our ASN (`myASN`).
    pub local_asn: u32,
    /// The ASN the peer must announce in its OPEN (`peerASN`).
    pub peer_asn: u32,
    /// This node's BGP identifier.
    pub router_id: Ipv4Addr,
    /// Seconds we propose (the CRD's default is 9). 0 = no keepalives; 1 and 2 are not allowed
    /// by RFC 4271 and are proposed as 3.
    pub hold_time: u16,
    /// Seconds between KEEPALIVEs; None = a third of the negotiated hold time. Never more than
    /// that third, never less than 1 s.
    pub keepalive: Option<u16>,
    /// The families we announce. Empty = IPv4 unicast.
    pub families: BTreeSet<Family>,
    /// Some(restart time in seconds) = advertise the graceful restart capability (RFC 4724),
    /// with the F bit for every announced family.
    pub graceful_restart: Option<u16>,
    /// The R bit: this agent restarted within the restart time (the agent decides).
    pub restarted: bool,
}

impl SessionConfig {
    /// The families announced: the configured ones, or IPv4 unicast when none is configured
    /// (what an OPEN without multiprotocol capability would mean).
    pub fn announced_families(&self) -> BTreeSet<Family> {
        if self.families.is_empty() {
            BTreeSet::from([Family::Ipv4Unicast])
        } else {
            self.families.clone()
        }
    }

    /// The hold time proposed in our OPEN: the configured one, 1 and 2 raised to 3.
    pub fn proposed_hold_time(&self) -> u16 {
        match self.hold_time {
            0 => 0,
            hold => hold.max(MIN_HOLD_TIME),
        }
    }

    /// Whether the peer is internal (iBGP).
    pub fn ibgp(&self) -> bool {
        self.local_asn == self.peer_asn
    }

    /// The OPEN we send.
    pub fn open(&self) -> Open {
        let families = self.announced_families();
        Open {
            version: BGP_VERSION,
            my_as: u16::try_from(self.local_asn).unwrap_or(AS_TRANS),
            hold_time: self.proposed_hold_time(),
            router_id: self.router_id,
            capabilities: Capabilities {
                families: families.clone(),
                other_families: Vec::new(),
                four_octet_asn: Some(self.local_asn),
                route_refresh: true,
                graceful_restart: self.graceful_restart.map(|restart_time| GracefulRestart {
                    restarting: self.restarted,
                    restart_time: restart_time.min(MAX_RESTART_TIME),
                    families,
                }),
                unknown: Vec::new(),
            },
        }
    }
}

/// The RFC 4271 session states. Active means "waiting to retry after a failed connection"
/// (vipam never listens); Idle with a retry pending means the same after a session failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not connecting: stopped, or waiting to retry after a session failed.
    Idle,
    /// A connection attempt is in progress.
    Connect,
    /// Waiting to retry after a connection attempt failed.
    Active,
    /// Our OPEN is sent; waiting for the peer's.
    OpenSent,
    /// OPENs agreed; waiting for the peer's KEEPALIVE.
    OpenConfirm,
    /// Routes flow.
    Established,
}

impl State {
    /// A TCP connection to the peer is up.
    pub fn connected(self) -> bool {
        matches!(
            self,
            State::OpenSent | State::OpenConfirm | State::Established
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        })
    }
}

/// What happened: administrative events, the connection's events, and the passing of time.
/// Events that do not fit the state (a late message after the session closed) are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Start connecting (no-op when already started).
    Start,
    /// Administrative stop: send this NOTIFICATION if connected, close, stay Idle, and do not
    /// reconnect until [`Event::Start`].
    Stop(Notification),
    /// The TCP connection asked for by [`Action::Connect`] is up.
    Connected,
    /// The connection attempt failed (the reason, e.g. "Connection refused").
    ConnectFailed(String),
    /// The TCP connection was closed or reset by the peer, or an I/O error ended it (the
    /// reason). The connection is gone; no [`Action::Close`] follows.
    Closed(String),
    /// A message from the peer.
    Received(Message),
    /// The decoder refused the peer's bytes: send this NOTIFICATION and close (the text says
    /// what was wrong, for a person).
    Malformed(Notification, String),
    /// Time passed: fire the timers that are due.
    Tick,
}

/// What the I/O task does, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer, then report [`Event::Connected`] or
    /// [`Event::ConnectFailed`].
    Connect,
    /// Send a message on the connection.
    Send(Message),
    /// Close the connection, or abandon the attempt in progress.
    Close,
    /// The session is Established: the speaker sends its full table and then End-of-RIB for
    /// each negotiated family.
    Established(Negotiated),
    /// The peer asked for a route refresh of a negotiated family: send it all again.
    Resend(Family),
    /// The session left Established: the speaker resets its RIB-out.
    Down,
}

/// What both OPENs agreed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's OPEN as received.
    pub peer_open: Open,
    /// The families announced: ours that the peer speaks too (never empty).
    pub families: BTreeSet<Family>,
    /// Both sides sent the 4-octet ASN capability (we always do): AS numbers are 4 bytes.
    pub four_octet_asn: bool,
    /// Seconds; 0 = no keepalives, no hold timer.
    pub hold_time: u16,
    /// Seconds between our KEEPALIVEs; 0 when the hold time is 0.
    pub keepalive: u16,
    /// The peer's graceful restart capability.
    pub peer_graceful_restart: Option<GracefulRestart>,
    /// The peer can send ROUTE-REFRESH.
    pub peer_route_refresh: bool,
    /// Internal peer (same ASN).
    pub ibgp: bool,
}

/// One peer's session.
#[derive(Clone, Debug)]
pub struct Session {
    config: SessionConfig,
    state: State,
    since: Duration,
    /// Started and not stopped: failures are retried.
    started: bool,
    /// The delay of the next retry.
    retry_delay: Duration,
    retry_at: Option<Duration>,
    connect_deadline: Option<Duration>,
    hold_deadline: Option<Duration>,
    keepalive_at: Option<Duration>,
    negotiated: Option<Negotiated>,
    last_error: Option<String>,
    /// The peer's last NOTIFICATION before a session came up: a router that refused us once
    /// (Bad Peer AS) often just closes the next attempts, and the error must keep saying why.
    refusal: Option<String>,
}

impl Session {
    /// A session in Idle, not started.
    pub fn new(config: SessionConfig) -> Session {
        Session {
            config,
            state: State::Idle,
            since: Duration::ZERO,
            started: false,
            retry_delay: RETRY_FIRST,
            retry_at: None,
            connect_deadline: None,
            hold_deadline: None,
            keepalive_at: None,
            negotiated: None,
            last_error: None,
            refusal: None,
        }
    }

    /// The settings the session was created with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// When the current state was entered (0 before the first change).
    pub fn since(&self) -> Duration {
        self.since
    }

    /// Started and not stopped.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The most recent failure, as a sentence a person can act on. Kept after the session
    /// recovers: it explains the last flap.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// What the OPENs agreed, in OpenConfirm and Established.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// When to feed [`Event::Tick`] next: None only when stopped (or never started) in Idle, or
    /// Established with hold time 0.
    pub fn next_deadline(&self) -> Option<Duration> {
        [
            self.retry_at,
            self.connect_deadline,
            self.hold_deadline,
            self.keepalive_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles one event at `now` (monotonic, never earlier than the previous call's) and
    /// returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        // The event first: it happened by `now`, so a connection or message that arrives as a
        // timer falls due still counts. Then the timers still due.
        match event {
            Event::Tick => {}
            Event::Start => {
                if !self.started {
                    self.started = true;
                    self.retry_delay = RETRY_FIRST;
                    if self.state == State::Idle {
                        self.connect(now, &mut actions);
                    }
                }
            }
            Event::Stop(notification) => self.stop(notification, now, &mut actions),
            Event::Connected => match self.state {
                State::Connect => {
                    actions.push(Action::Send(Message::Open(self.config.open())));
                    self.enter(State::OpenSent, now);
                    self.hold_deadline = Some(now + OPEN_HOLD);
                }
                // A connection nobody asked for (any more): not ours to keep.
                State::Idle | State::Active => actions.push(Action::Close),
                _ => {}
            },
            Event::ConnectFailed(reason) => {
                if self.state == State::Connect {
                    self.connect_failed(&reason, now);
                }
            }
            Event::Closed(reason) => match self.state {
                State::Connect => self.connect_failed(&reason, now),
                state if state.connected() => {
                    let mut error = format!(
                        "the connection to {} closed in {state}: {reason}",
                        self.config.peer_address
                    );
                    if state != State::Established
                        && let Some(refusal) = &self.refusal
                    {
                        error.push_str(&format!(" (before that: {refusal})"));
                    }
                    self.fail(None, false, error, now, &mut actions);
                }
                _ => {}
            },
            Event::Malformed(notification, text) => {
                if self.state.connected() {
                    self.fail(Some(notification), true, text, now, &mut actions);
                }
            }
            Event::Received(message) => {
                if self.state.connected() {
                    self.receive(message, now, &mut actions);
                }
            }
        }
        self.fire_timers(now, &mut actions);
        actions
    }

    /// Fires the timers due at `now`. One pass suffices: whatever fires sets deadlines after
    /// `now`.
    fn fire_timers(&mut self, now: Duration, actions: &mut Vec<Action>) {
        let due = |deadline: Option<Duration>| deadline.is_some_and(|at| at <= now);
        match self.state {
            State::Idle | State::Active => {
                if due(self.retry_at) {
                    self.connect(now, actions);
                }
            }
            State::Connect => {
                if due(self.connect_deadline) {
                    actions.push(Action::Close);
                    self.last_error = Some(format!(
                        "connection to {} timed out after {} s",
                        self.config.peer_address,
                        CONNECT_TIMEOUT.as_secs()
                    ));
                    self.retry(State::Active, now);
                }
            }
            State::OpenSent | State::OpenConfirm | State::Established => {
                if due(self.hold_deadline) {
                    let peer = self.config.peer_address;
                    let hold = self.negotiated.as_ref().map_or(0, |n| n.hold_time);
                    let error = match self.state {
                        State::OpenSent => {
                            format!("no OPEN from {peer} within {} s", OPEN_HOLD.as_secs())
                        }
                        State::OpenConfirm if hold == 0 => format!(
                            "no KEEPALIVE from {peer} within {} s after its OPEN",
                            OPEN_HOLD.as_secs()
                        ),
                        _ => format!("hold timer expired (no message from {peer} for {hold} s)"),
                    };
                    let expired = Notification::new(codes::HOLD_TIMER_EXPIRED, 0);
                    self.fail(Some(expired), true, error, now, actions);
                } else if due(self.keepalive_at) {
                    actions.push(Action::Send(Message::Keepalive));
                    self.keepalive_at = Some(now + self.keepalive_interval());
                }
            }
        }
    }

    fn receive(&mut self, message: Message, now: Duration, actions: &mut Vec<Action>) {
        let peer = self.config.peer_address;
        if let Message::Notification(notification) = message {
            let error = if self.state == State::OpenSent
                && notification.code == codes::OPEN_MESSAGE_ERROR
            {
                format!("peer {peer} refused our OPEN: {}", notification.describe())
            } else {
                format!("peer {peer} sent NOTIFICATION {}", notification.describe())
            };
            if self.state != State::Established {
                self.refusal = Some(error.clone());
            }
            // RFC 4271 6: no NOTIFICATION in reply to one.
            self.fail(None, true, error, now, actions);
            return;
        }
        match (self.state, message) {
            (State::OpenSent, Message::Open(open)) => self.receive_open(open, now, actions),
            (State::OpenConfirm, Message::Keepalive) => {
                let Some(negotiated) = self.negotiated.clone() else {
                    return; // unreachable: OpenConfirm is entered with the negotiation
                };
                // The keepalive timer keeps running from OpenConfirm; the hold timer restarts.
                let keepalive_at = self.keepalive_at;
                self.enter(State::Established, now);
                self.keepalive_at = keepalive_at;
                self.restart_hold_timer(now);
                self.retry_delay = RETRY_FIRST;
                self.refusal = None;
                actions.push(Action::Established(negotiated));
            }
            (
                State::Established,
                Message::Keepalive | Message::Update(_) | Message::UpdateReceived,
            ) => self.restart_hold_timer(now),
            (State::Established, Message::RouteRefresh { afi, safi }) => {
                self.restart_hold_timer(now);
                // A family we did not negotiate is ignored (RFC 2918 3: "SHOULD ignore").
                if let Some(family) = Family::from_afi_safi(afi, safi)
                    && self
                        .negotiated
                        .as_ref()
                        .is_some_and(|n| n.families.contains(&family))
                {
                    actions.push(Action::Resend(family));
                }
            }
            (state, message) => {
                let what = match message {
                    Message::Open(_) => "an OPEN",
                    Message::Update(_) | Message::UpdateReceived => "an UPDATE",
                    Message::Keepalive => "a KEEPALIVE",
                    Message::RouteRefresh { .. } => "a ROUTE-REFRESH",
                    Message::Notification(_) => "a NOTIFICATION",
                };
                let fsm_error = Notification::new(codes::FSM_ERROR, 0);
                let error = format!(
                    "peer {peer} sent {what} in {state}; sent NOTIFICATION {}",
                    fsm_error.describe()
                );
                self.fail(Some(fsm_error), true, error, now, actions);
            }
        }
    }

    /// Validates the peer's OPEN (RFC 4271 6.2, in its order) and negotiates.
    fn receive_open(&mut self, open: Open, now: Duration, actions: &mut Vec<Action>) {
        let peer = self.config.peer_address;
        let refuse = |subcode: u8, data: Vec<u8>, error: String| {
            let notification = Notification {
                code: codes::OPEN_MESSAGE_ERROR,
                subcode,
                data,
            };
            let error = format!("{error}; sent NOTIFICATION {}", notification.describe());
            (notification, error)
        };
        let ibgp = self.config.ibgp();
        let peer_asn = open.asn();
        let peer_families = if open.capabilities.families.is_empty()
            && open.capabilities.other_families.is_empty()
        {
            // RFC 4760 7: no multiprotocol capability = IPv4 unicast only.
            BTreeSet::from([Family::Ipv4Unicast])
        } else {
            open.capabilities.families.clone()
        };
        let announced = self.config.announced_families();
        let families: BTreeSet<Family> = announced.intersection(&peer_families).copied().collect();

        let refused = if open.version != BGP_VERSION {
            Some(refuse(
                codes::open::UNSUPPORTED_VERSION,
                u16::from(BGP_VERSION).to_be_bytes().to_vec(),
                format!(
                    "peer {peer} speaks BGP version {}, vipam speaks version {BGP_VERSION}",
                    open.version
                ),
            ))
        } else if peer_asn != self.config.peer_asn {
            let hint = if open.capabilities.four_octet_asn.is_none()
                && open.my_as == AS_TRANS
                && self.config.peer_asn > u32::from(u16::MAX)
            {
                " (AS_TRANS: the peer did not send the 4-octet ASN capability)"
            } else {
                ""
            };
            Some(refuse(
                codes::open::BAD_PEER_AS,
                Vec::new(),
                format!(
                    "peer {peer} says its AS is {peer_asn}{hint}, configured peerASN is {}",
                    self.config.peer_asn
                ),
            ))
        } else if matches!(open.hold_time, 1 | 2) {
            Some(refuse(
                codes::open::UNACCEPTABLE_HOLD_TIME,
                Vec::new(),
                format!(
                    "peer {peer} proposed hold time {} s; 0 or at least 3 is required",
                    open.hold_time
                ),
            ))
        } else if open.router_id.is_unspecified() {
            Some(refuse(
                codes::open::BAD_BGP_IDENTIFIER,
                Vec::new(),
                format!("peer {peer} sent BGP identifier 0.0.0.0"),
            ))
        } else if ibgp && open.router_id == self.config.router_id {
            Some(refuse(
                codes::open::BAD_BGP_IDENTIFIER,
                Vec::new(),
                format!(
                    "peer {peer} has BGP identifier {}, the same as this node's router ID \
                     (iBGP peers need different ones; set the annotation vipam.io/bgp-router-id)",
                    open.router_id
                ),
            ))
        } else if families.is_empty() {
            // Established with nothing to announce would look healthy and do nothing.
            let data = announced
                .iter()
                .flat_map(|family| {
                    let (afi, safi) = family.afi_safi();
                    let [afi_high, afi_low] = afi.to_be_bytes();
                    [1, 4, afi_high, afi_low, 0, safi] // the multiprotocol capability we need
                })
                .collect();
            Some(refuse(
                codes::open::UNSUPPORTED_CAPABILITY,
                data,
                format!(
                    "peer {peer} speaks none of the families vipam announces to it ({}); it \
                     offers {}",
                    names(&announced),
                    names(&peer_families)
                ),
            ))
        } else {
            None
        };
        if let Some((notification, error)) = refused {
            self.fail(Some(notification), true, error, now, actions);
            return;
        }

        let hold_time = self.config.proposed_hold_time().min(open.hold_time);
        let keepalive = if hold_time == 0 {
            0
        } else {
            let third = hold_time / 3;
            self.config.keepalive.map_or(third, |k| k.min(third)).max(1)
        };
        let negotiated = Negotiated {
            families,
            four_octet_asn: open.capabilities.four_octet_asn.is_some(),
            hold_time,
            keepalive,
            peer_graceful_restart: open.capabilities.graceful_restart.clone(),
            peer_route_refresh: open.capabilities.route_refresh,
            ibgp,
            peer_open: open,
        };
        actions.push(Action::Send(Message::Keepalive));
        self.enter(State::OpenConfirm, now);
        self.negotiated = Some(negotiated);
        if hold_time == 0 {
            self.hold_deadline = Some(now + OPEN_HOLD);
        } else {
            self.restart_hold_timer(now);
            self.keepalive_at = Some(now + self.keepalive_interval());
        }
    }

    fn stop(&mut self, notification: Notification, now: Duration, actions: &mut Vec<Action>) {
        if !self.started && self.state == State::Idle {
            return;
        }
        match self.state {
            State::Connect => actions.push(Action::Close),
            state if state.connected() => {
                actions.push(Action::Send(Message::Notification(notification)));
                actions.push(Action::Close);
                if state == State::Established {
                    actions.push(Action::Down);
                }
            }
            _ => {}
        }
        self.started = false;
        self.negotiated = None;
        self.enter(State::Idle, now);
    }

    fn connect(&mut self, now: Duration, actions: &mut Vec<Action>) {
        actions.push(Action::Connect);
        self.enter(State::Connect, now);
        self.connect_deadline = Some(now + CONNECT_TIMEOUT);
    }

    fn connect_failed(&mut self, reason: &str, now: Duration) {
        self.last_error = Some(format!(
            "connection to {} failed: {reason}",
            self.config.peer_address
        ));
        self.retry(State::Active, now);
    }

    /// Ends a connected session: optionally sends a NOTIFICATION, closes, reports Down when it
    /// was Established, records the error, and retries by backoff.
    fn fail(
        &mut self,
        notification: Option<Notification>,
        close: bool,
        error: String,
        now: Duration,
        actions: &mut Vec<Action>,
    ) {
        if let Some(notification) = notification {
            actions.push(Action::Send(Message::Notification(notification)));
        }
        if close {
            actions.push(Action::Close);
        }
        if self.state == State::Established {
            actions.push(Action::Down);
        }
        self.last_error = Some(error);
        self.negotiated = None;
        self.retry(State::Idle, now);
    }

    /// Enters `state` and schedules a reconnect by backoff (none when stopped).
    fn retry(&mut self, state: State, now: Duration) {
        self.enter(state, now);
        if self.started {
            self.retry_at = Some(now + self.retry_delay);
            self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
        }
    }

    /// Enters `state` with every timer stopped.
    fn enter(&mut self, state: State, now: Duration) {
        self.state = state;
        self.since = now;
        self.retry_at = None;
        self.connect_deadline = None;
        self.hold_deadline = None;
        self.keepalive_at = None;
    }

    fn restart_hold_timer(&mut self, now: Duration) {
        let hold = self.negotiated.as_ref().map_or(0, |n| n.hold_time);
        if hold > 0 {
            self.hold_deadline = Some(now + Duration::from_secs(u64::from(hold)));
        }
    }

    fn keepalive_interval(&self) -> Duration {
        let keepalive = self.negotiated.as_ref().map_or(0, |n| n.keepalive);
        Duration::from_secs(u64::from(keepalive.max(1)))
    }
}

fn names(families: &BTreeSet<Family>) -> String {
    families
        .iter()
        .map(Family::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::core::bgp::message::Update;

    const S: Duration = Duration::from_secs(1);
    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

    fn config() -> SessionConfig {
        SessionConfig {
            peer_address: PEER,
            local_asn: 64512,
            peer_asn: 65002,
            router_id: ME,
            hold_time: 9,
            keepalive: None,
            families: BTreeSet::from([Family::Ipv4Unicast, Family::Ipv6Unicast]),
            graceful_restart: None,
            restarted: false,
        }
    }

    /// A valid OPEN from the peer of `config()`.
    fn peer_open() -> Open {
        Open {
            version: 4,
            my_as: 65002,
            hold_time: 90,
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            capabilities: Capabilities {
                families: BTreeSet::from([Family::Ipv4Unicast, Family::Ipv6Unicast]),
                four_octet_asn: Some(65002),
                route_refresh: true,
                ..Capabilities::default()
            },
        }
    }

    fn notification_sent(actions: &[Action]) -> Option<&Notification> {
        actions.iter().find_map(|a| match a {
            Action::Send(Message::Notification(n)) => Some(n),
            _ => None,
        })
    }

    /// A session of `config` brought to OpenSent at 0 s.
    fn open_sent(config: SessionConfig) -> Session {
        let mut session = Session::new(config);
        session.handle(Event::Start, Duration::ZERO);
        session.handle(Event::Connected, Duration::ZERO);
        assert_eq!(session.state(), State::OpenSent);
        session
    }

    /// A session of `config` Established with `open` at 1 s.
    fn established_with(config: SessionConfig, open: Open) -> Session {
        let mut session = open_sent(config);
        session.handle(Event::Received(Message::Open(open)), S);
        let actions = session.handle(Event::Received(Message::Keepalive), S);
        assert!(
            matches!(actions.as_slice(), [Action::Established(_)]),
            "{actions:?}"
        );
        session
    }

    fn established() -> Session {
        established_with(config(), peer_open())
    }

    #[test]
    fn start_connects() {
        let mut session = Session::new(config());
        assert_eq!(session.state(), State::Idle);
        assert_eq!(session.next_deadline(), None);
        assert_eq!(session.handle(Event::Start, 5 * S), vec![Action::Connect]);
        assert_eq!(session.state(), State::Connect);
        assert_eq!(session.since(), 5 * S);
        assert_eq!(session.next_deadline(), Some(5 * S + CONNECT_TIMEOUT));
        // A second Start changes nothing.
        assert_eq!(session.handle(Event::Start, 6 * S), vec![]);
        assert_eq!(session.state(), State::Connect);
    }

    #[test]
    fn connected_sends_our_open() {
        let mut session = Session::new(config());
        session.handle(Event::Start, Duration::ZERO);
        let actions = session.handle(Event::Connected, 2 * S);
        let expected = Open {
            version: 4,
            my_as: 64512,
            hold_time: 9,
            router_id: ME,
            capabilities: Capabilities {
                families: BTreeSet::from([Family::Ipv4Unicast, Family::Ipv6Unicast]),
                other_families: vec![],
                four_octet_asn: Some(64512),
                route_refresh: true,
                graceful_restart: None,
                unknown: vec![],
            },
        };
        assert_eq!(actions, vec![Action::Send(Message::Open(expected))]);
        assert_eq!(session.state(), State::OpenSent);
        assert_eq!(session.next_deadline(), Some(2 * S + OPEN_HOLD));
    }

    #[test]
    fn our_open_carries_as_trans_and_graceful_restart() {
        let mut config = config();
        config.local_asn = 4_200_000_001;
        config.families = BTreeSet::from([Family::Ipv6Unicast]);
        config.graceful_restart = Some(120);
        config.restarted = true;
        let open = config.open();
        assert_eq!(open.my_as, AS_TRANS);
        assert_eq!(open.asn(), 4_200_000_001);
        assert_eq!(open.capabilities.four_octet_asn, Some(4_200_000_001));
        assert_eq!(
            open.capabilities.graceful_restart,
            Some(GracefulRestart {
                restarting: true,
                restart_time: 120,
                families: BTreeSet::from([Family::Ipv6Unicast]),
            })
        );
        config.restarted = false;
        config.graceful_restart = Some(10_000);
        let gr = config.open().capabilities.graceful_restart.unwrap();
        assert!(!gr.restarting);
        assert_eq!(gr.restart_time, 4095, "12 bits");
        // No family configured: IPv4 unicast; hold times 1 and 2 are proposed as 3.
        config.families.clear();
        config.hold_time = 2;
        let open = config.open();
        assert_eq!(
            open.capabilities.families,
            BTreeSet::from([Family::Ipv4Unicast])
        );
        assert_eq!(open.hold_time, 3);
    }

    #[test]
    fn failed_connections_back_off_up_to_15_s() {
        let mut session = Session::new(config());
        let mut now = Duration::ZERO;
        assert_eq!(session.handle(Event::Start, now), vec![Action::Connect]);
        for delay in [1, 2, 4, 8, 15, 15, 15] {
            now += S / 2;
            let actions = session.handle(Event::ConnectFailed("Connection refused".into()), now);
            assert_eq!(actions, vec![]);
            assert_eq!(session.state(), State::Active);
            assert_eq!(
                session.last_error(),
                Some("connection to 192.0.2.1 failed: Connection refused")
            );
            let deadline = now + delay * S;
            assert_eq!(session.next_deadline(), Some(deadline));
            // Not yet.
            assert_eq!(session.handle(Event::Tick, deadline - S / 10), vec![]);
            now = deadline;
            assert_eq!(session.handle(Event::Tick, now), vec![Action::Connect]);
            assert_eq!(session.state(), State::Connect);
        }
    }

    #[test]
    fn a_connection_attempt_times_out() {
        let mut session = Session::new(config());
        session.handle(Event::Start, Duration::ZERO);
        let actions = session.handle(Event::Tick, CONNECT_TIMEOUT);
        assert_eq!(actions, vec![Action::Close]);
        assert_eq!(session.state(), State::Active);
        assert_eq!(
            session.last_error(),
            Some("connection to 192.0.2.1 timed out after 10 s")
        );
        assert_eq!(session.next_deadline(), Some(CONNECT_TIMEOUT + S));
        // The attempt's late result is stale: a late connection is closed, a late failure ignored.
        assert_eq!(
            session.handle(Event::Connected, CONNECT_TIMEOUT),
            vec![Action::Close]
        );
        assert_eq!(
            session.handle(Event::ConnectFailed("late".into()), CONNECT_TIMEOUT),
            vec![]
        );
        assert_eq!(session.state(), State::Active);
    }

    #[test]
    fn backoff_restarts_at_1_s_after_an_established_session_drops() {
        let mut session = Session::new(config());
        let mut now = Duration::ZERO;
        session.handle(Event::Start, now);
        // Three failures: the next delay would be 8 s.
        for _ in 0..3 {
            session.handle(Event::ConnectFailed("refused".into()), now);
            now = session.next_deadline().unwrap();
            session.handle(Event::Tick, now);
        }
        session.handle(Event::Connected, now);
        session.handle(Event::Received(Message::Open(peer_open())), now);
        session.handle(Event::Received(Message::Keepalive), now);
        assert_eq!(session.state(), State::Established);
        now += 2 * S;
        let actions = session.handle(Event::Closed("Connection reset by peer".into()), now);
        assert_eq!(actions, vec![Action::Down]);
        assert_eq!(session.state(), State::Idle);
        assert_eq!(
            session.last_error(),
            Some("the connection to 192.0.2.1 closed in Established: Connection reset by peer")
        );
        assert_eq!(session.next_deadline(), Some(now + S));
        assert_eq!(session.handle(Event::Tick, now + S), vec![Action::Connect]);
        // And doubles again from there.
        session.handle(Event::ConnectFailed("refused".into()), now + S);
        assert_eq!(session.next_deadline(), Some(now + 3 * S));
    }

    #[test]
    fn a_valid_open_is_negotiated_and_answered_with_keepalive() {
        let mut session = open_sent(config());
        let actions = session.handle(Event::Received(Message::Open(peer_open())), 3 * S);
        assert_eq!(actions, vec![Action::Send(Message::Keepalive)]);
        assert_eq!(session.state(), State::OpenConfirm);
        let negotiated = session.negotiated().unwrap().clone();
        assert_eq!(
            negotiated,
            Negotiated {
                peer_open: peer_open(),
                families: BTreeSet::from([Family::Ipv4Unicast, Family::Ipv6Unicast]),
                four_octet_asn: true,
                hold_time: 9,
                keepalive: 3,
                peer_graceful_restart: None,
                peer_route_refresh: true,
                ibgp: false,
            }
        );
        // Keepalive timer (3 s) before the hold timer (9 s).
        assert_eq!(session.next_deadline(), Some(6 * S));
        let actions = session.handle(Event::Received(Message::Keepalive), 4 * S);
        assert_eq!(actions, vec![Action::Established(negotiated)]);
        assert_eq!(session.state(), State::Established);
        assert_eq!(session.since(), 4 * S);
        // The keepalive timer kept running from OpenConfirm.
        assert_eq!(session.next_deadline(), Some(6 * S));
    }

    #[test]
    fn negotiation_table() {
        // (ours, configured keepalive, theirs) -> (hold, keepalive)
        let table: [(u16, Option<u16>, u16, u16, u16); 10] = [
            (9, None, 90, 9, 3),
            (90, None, 9, 9, 3),
            (9, None, 0, 0, 0),
            (0, Some(5), 90, 0, 0),
            (30, Some(5), 90, 30, 5),
            (9, Some(5), 90, 9, 3), // capped at a third of the hold time
            (9, Some(0), 90, 9, 1), // at least 1 s
            (3, None, 90, 3, 1),
            (1, None, 90, 3, 1), // we propose 3, not 1
            (10, None, 11, 10, 3),
        ];
        for (ours, keepalive, theirs, hold, expect_keepalive) in table {
            let mut config = config();
            config.hold_time = ours;
            config.keepalive = keepalive;
            let mut open = peer_open();
            open.hold_time = theirs;
            let mut session = open_sent(config);
            session.handle(Event::Received(Message::Open(open)), S);
            let negotiated = session.negotiated().unwrap();
            assert_eq!(
                (negotiated.hold_time, negotiated.keepalive),
                (hold, expect_keepalive),
                "ours {ours} keepalive {keepalive:?} theirs {theirs}"
            );
        }
    }

    #[test]
    fn families_four_octet_ibgp_and_graceful_restart_are_negotiated() {
        // No multiprotocol capability: IPv4 unicast only.
        let mut open = peer_open();
        open.capabilities.families.clear();
        open.capabilities.four_octet_asn = None;
        open.capabilities.route_refresh = false;
        let session = established_with(config(), open);
        let negotiated = session.negotiated().unwrap();
        assert_eq!(negotiated.families, BTreeSet::from([Family::Ipv4Unicast]));
        assert!(!negotiated.four_octet_asn);
        assert!(!negotiated.peer_route_refresh);

        // Intersection; iBGP; the peer's GR capability kept.
        let mut config = config();
        config.peer_asn = 64512;
        config.families = BTreeSet::from([Family::Ipv6Unicast]);
        let gr = GracefulRestart {
            restarting: false,
            restart_time: 120,
            families: BTreeSet::from([Family::Ipv4Unicast, Family::Ipv6Unicast]),
        };
        let mut open = peer_open();
        open.my_as = 64512;
        open.capabilities.four_octet_asn = Some(64512);
        open.capabilities.graceful_restart = Some(gr.clone());
        open.capabilities.other_families = vec![(1, 128)];
        let session = established_with(config, open);
        let negotiated = session.negotiated().unwrap();
        assert_eq!(negotiated.families, BTreeSet::from([Family::Ipv6Unicast]));
        assert!(negotiated.ibgp);
        assert_eq!(negotiated.peer_graceful_restart, Some(gr));
    }

    #[test]
    fn bad_opens_are_refused_with_the_right_notification() {
        let as_trans_peer = {
            let mut config = config();
            config.peer_asn = 4_200_000_002;
            config
        };
        let ibgp = {
            let mut config = config();
            config.peer_asn = 64512;
            config
        };
        // (config, the peer's OPEN, (code, subcode, data) sent, last_error)
        type Case = (SessionConfig, Open, (u8, u8, Vec<u8>), &'static str);
        let mut cases: Vec<Case> = Vec::new();
        let mut open = peer_open();
        open.version = 3;
        cases.push((
            config(),
            open,
            (2, 1, vec![0, 4]),
            "peer 192.0.2.1 speaks BGP version 3, vipam speaks version 4; sent NOTIFICATION \
             OPEN Message Error / Unsupported Version Number (2/1)",
        ));
        let mut open = peer_open();
        open.my_as = 65001;
        open.capabilities.four_octet_asn = Some(65001);
        cases.push((
            config(),
            open,
            (2, 2, vec![]),
            "peer 192.0.2.1 says its AS is 65001, configured peerASN is 65002; sent \
             NOTIFICATION OPEN Message Error / Bad Peer AS (2/2)",
        ));
        let mut open = peer_open();
        open.my_as = AS_TRANS;
        open.capabilities.four_octet_asn = None;
        cases.push((
            as_trans_peer,
            open,
            (2, 2, vec![]),
            "peer 192.0.2.1 says its AS is 23456 (AS_TRANS: the peer did not send the 4-octet \
             ASN capability), configured peerASN is 4200000002; sent NOTIFICATION OPEN Message \
             Error / Bad Peer AS (2/2)",
        ));
        for hold in [1, 2] {
            let mut open = peer_open();
            open.hold_time = hold;
            cases.push((
                config(),
                open,
                (2, 6, vec![]),
                if hold == 1 {
                    "peer 192.0.2.1 proposed hold time 1 s; 0 or at least 3 is required; sent \
                     NOTIFICATION OPEN Message Error / Unacceptable Hold Time (2/6)"
                } else {
                    "peer 192.0.2.1 proposed hold time 2 s; 0 or at least 3 is required; sent \
                     NOTIFICATION OPEN Message Error / Unacceptable Hold Time (2/6)"
                },
            ));
        }
        let mut open = peer_open();
        open.router_id = Ipv4Addr::UNSPECIFIED;
        cases.push((
            config(),
            open,
            (2, 3, vec![]),
            "peer 192.0.2.1 sent BGP identifier 0.0.0.0; sent NOTIFICATION OPEN Message Error \
             / Bad BGP Identifier (2/3)",
        ));
        let mut open = peer_open();
        open.my_as = 64512;
        open.capabilities.four_octet_asn = Some(64512);
        open.router_id = ME;
        cases.push((
            ibgp,
            open,
            (2, 3, vec![]),
            "peer 192.0.2.1 has BGP identifier 10.0.0.5, the same as this node's router ID \
             (iBGP peers need different ones; set the annotation vipam.io/bgp-router-id); sent \
             NOTIFICATION OPEN Message Error / Bad BGP Identifier (2/3)",
        ));
        let mut open = peer_open();
        open.capabilities.families = BTreeSet::from([Family::Ipv4Unicast]);
        let v6_only = {
            let mut config = config();
            config.families = BTreeSet::from([Family::Ipv6Unicast]);
            config
        };
        cases.push((
            v6_only,
            open,
            (2, 7, vec![1, 4, 0, 2, 0, 1]),
            "peer 192.0.2.1 speaks none of the families vipam announces to it (ipv6-unicast); \
             it offers ipv4-unicast; sent NOTIFICATION OPEN Message Error / Unsupported \
             Capability (2/7)",
        ));

        for (config, open, (code, subcode, data), error) in cases {
            let mut session = open_sent(config);
            let actions = session.handle(Event::Received(Message::Open(open)), S);
            assert_eq!(
                actions,
                vec![
                    Action::Send(Message::Notification(Notification {
                        code,
                        subcode,
                        data
                    })),
                    Action::Close
                ],
                "{error}"
            );
            assert_eq!(session.state(), State::Idle);
            assert_eq!(session.last_error(), Some(error));
            assert_eq!(session.negotiated(), None);
            assert_eq!(session.next_deadline(), Some(2 * S), "retry after 1 s");
        }
    }

    #[test]
    fn ebgp_peers_may_share_our_router_id() {
        let mut open = peer_open();
        open.router_id = ME;
        let session = established_with(config(), open);
        assert_eq!(session.state(), State::Established);
    }

    #[test]
    fn established_sends_keepalives_and_expires_the_hold_timer() {
        let mut session = established(); // at 1 s, keepalive 3 s (first due at 4 s), hold 9 s
        assert_eq!(
            session.handle(Event::Tick, 4 * S),
            vec![Action::Send(Message::Keepalive)]
        );
        assert_eq!(session.next_deadline(), Some(7 * S));
        assert_eq!(
            session.handle(Event::Tick, 7 * S),
            vec![Action::Send(Message::Keepalive)]
        );
        assert_eq!(session.next_deadline(), Some(10 * S), "hold: 1 s + 9 s");
        let actions = session.handle(Event::Tick, 10 * S);
        assert_eq!(
            actions,
            vec![
                Action::Send(Message::Notification(Notification::new(4, 0))),
                Action::Close,
                Action::Down
            ]
        );
        assert_eq!(session.state(), State::Idle);
        assert_eq!(
            session.last_error(),
            Some("hold timer expired (no message from 192.0.2.1 for 9 s)")
        );
        assert_eq!(session.negotiated(), None);
        assert_eq!(session.next_deadline(), Some(11 * S));
        assert_eq!(session.handle(Event::Tick, 11 * S), vec![Action::Connect]);
    }

    #[test]
    fn any_received_message_restarts_the_hold_timer() {
        let mut session = established(); // hold expires at 10 s
        let mut now = S;
        for message in [
            Message::Keepalive,
            Message::UpdateReceived,
            Message::Update(Update::end_of_rib(Family::Ipv4Unicast)),
            Message::RouteRefresh { afi: 1, safi: 128 },
        ] {
            now += 8 * S;
            // Keepalives of our own go out meanwhile; no Down.
            let mut actions = session.handle(Event::Tick, now);
            actions.extend(session.handle(Event::Received(message), now));
            assert!(
                actions
                    .iter()
                    .all(|a| *a == Action::Send(Message::Keepalive)),
                "{actions:?}"
            );
            assert_eq!(session.state(), State::Established);
        }
        let actions = session.handle(Event::Tick, now + 9 * S);
        assert!(actions.contains(&Action::Down));
    }

    #[test]
    fn route_refresh_resends_negotiated_families_only() {
        let mut config = config();
        config.families = BTreeSet::from([Family::Ipv4Unicast]);
        let mut session = established_with(config, peer_open());
        assert_eq!(
            session.handle(
                Event::Received(Message::RouteRefresh { afi: 1, safi: 1 }),
                2 * S
            ),
            vec![Action::Resend(Family::Ipv4Unicast)]
        );
        for (afi, safi) in [(2, 1), (1, 128), (25, 70)] {
            assert_eq!(
                session.handle(Event::Received(Message::RouteRefresh { afi, safi }), 2 * S),
                vec![],
                "{afi}/{safi}"
            );
        }
        assert_eq!(session.state(), State::Established);
        assert_eq!(session.last_error(), None);
    }

    #[test]
    fn a_received_notification_closes_without_reply() {
        let mut session = established();
        let actions = session.handle(
            Event::Received(Message::Notification(
                Notification::administrative_shutdown(),
            )),
            2 * S,
        );
        assert_eq!(actions, vec![Action::Close, Action::Down]);
        assert_eq!(
            session.last_error(),
            Some("peer 192.0.2.1 sent NOTIFICATION Cease / Administrative Shutdown (6/2)")
        );
        assert_eq!(session.state(), State::Idle);
        assert_eq!(session.next_deadline(), Some(3 * S), "reconnect by backoff");

        // An OPEN error in reply to our OPEN: the peer refused it.
        let mut session = open_sent(config());
        let actions = session.handle(
            Event::Received(Message::Notification(Notification::new(2, 2))),
            S,
        );
        assert_eq!(actions, vec![Action::Close]);
        assert_eq!(
            session.last_error(),
            Some("peer 192.0.2.1 refused our OPEN: OPEN Message Error / Bad Peer AS (2/2)")
        );
    }

    #[test]
    fn unexpected_messages_are_fsm_errors() {
        let fsm = |actions: &[Action]| notification_sent(actions).cloned();
        let mut session = open_sent(config());
        let actions = session.handle(Event::Received(Message::UpdateReceived), S);
        assert_eq!(fsm(&actions), Some(Notification::new(5, 0)));
        assert_eq!(actions.last(), Some(&Action::Close));
        assert_eq!(
            session.last_error(),
            Some(
                "peer 192.0.2.1 sent an UPDATE in OpenSent; sent NOTIFICATION Finite State \
                 Machine Error / unspecific (5/0)"
            )
        );

        let mut session = open_sent(config());
        session.handle(Event::Received(Message::Open(peer_open())), S);
        let actions = session.handle(
            Event::Received(Message::RouteRefresh { afi: 1, safi: 1 }),
            S,
        );
        assert_eq!(fsm(&actions), Some(Notification::new(5, 0)));
        assert_eq!(session.state(), State::Idle);

        let mut session = established();
        let actions = session.handle(Event::Received(Message::Open(peer_open())), 2 * S);
        assert_eq!(
            actions,
            vec![
                Action::Send(Message::Notification(Notification::new(5, 0))),
                Action::Close,
                Action::Down
            ]
        );
    }

    #[test]
    fn malformed_input_sends_the_decoders_notification() {
        let mut session = established();
        let notification = Notification {
            code: 1,
            subcode: 2,
            data: vec![0, 5],
        };
        let actions = session.handle(
            Event::Malformed(notification.clone(), "message length 5 is below 19".into()),
            2 * S,
        );
        assert_eq!(
            actions,
            vec![
                Action::Send(Message::Notification(notification)),
                Action::Close,
                Action::Down
            ]
        );
        assert_eq!(session.last_error(), Some("message length 5 is below 19"));
        assert_eq!(session.state(), State::Idle);
    }

    #[test]
    fn stop_closes_and_stays_idle_until_start() {
        let mut session = established();
        let stop = Notification::administrative_shutdown();
        let actions = session.handle(Event::Stop(stop.clone()), 2 * S);
        assert_eq!(
            actions,
            vec![
                Action::Send(Message::Notification(stop.clone())),
                Action::Close,
                Action::Down
            ]
        );
        assert_eq!(session.state(), State::Idle);
        assert!(!session.started());
        assert_eq!(session.next_deadline(), None);
        assert_eq!(session.handle(Event::Tick, 1000 * S), vec![]);
        assert_eq!(session.handle(Event::Stop(stop.clone()), 1001 * S), vec![]);
        assert_eq!(
            session.handle(Event::Start, 1002 * S),
            vec![Action::Connect]
        );

        // While connecting: abandon the attempt. While waiting to retry: just stop.
        assert_eq!(
            session.handle(Event::Stop(stop.clone()), 1003 * S),
            vec![Action::Close]
        );
        session.handle(Event::Start, 1004 * S);
        session.handle(Event::ConnectFailed("refused".into()), 1004 * S);
        assert_eq!(session.state(), State::Active);
        assert_eq!(session.handle(Event::Stop(stop.clone()), 1004 * S), vec![]);
        assert_eq!(session.next_deadline(), None);

        // In OpenSent: NOTIFICATION, no Down.
        let mut session = open_sent(config());
        assert_eq!(
            session.handle(Event::Stop(stop.clone()), S),
            vec![Action::Send(Message::Notification(stop)), Action::Close]
        );
    }

    #[test]
    fn hold_time_zero_means_no_timers_once_established() {
        let mut config = config();
        config.hold_time = 0;
        let mut session = open_sent(config);
        session.handle(Event::Received(Message::Open(peer_open())), S);
        // OpenConfirm is still bounded.
        assert_eq!(session.next_deadline(), Some(S + OPEN_HOLD));
        session.handle(Event::Received(Message::Keepalive), 2 * S);
        assert_eq!(session.state(), State::Established);
        assert_eq!(session.next_deadline(), None);
        assert_eq!(session.handle(Event::Tick, 100_000 * S), vec![]);
        assert_eq!(session.state(), State::Established);

        let mut config = super::tests::config();
        config.hold_time = 0;
        let mut session = open_sent(config);
        session.handle(Event::Received(Message::Open(peer_open())), S);
        let actions = session.handle(Event::Tick, S + OPEN_HOLD);
        assert_eq!(notification_sent(&actions), Some(&Notification::new(4, 0)));
        assert_eq!(
            session.last_error(),
            Some("no KEEPALIVE from 192.0.2.1 within 30 s after its OPEN")
        );
    }

    #[test]
    fn no_open_within_30_s_expires() {
        let mut session = open_sent(config());
        assert_eq!(session.handle(Event::Tick, OPEN_HOLD - S), vec![]);
        let actions = session.handle(Event::Tick, OPEN_HOLD);
        assert_eq!(
            actions,
            vec![
                Action::Send(Message::Notification(Notification::new(4, 0))),
                Action::Close
            ]
        );
        assert_eq!(
            session.last_error(),
            Some("no OPEN from 192.0.2.1 within 30 s")
        );
    }

    #[test]
    fn a_refusal_is_remembered_when_the_next_attempts_are_just_closed() {
        let mut session = open_sent(config());
        session.handle(
            Event::Received(Message::Notification(Notification::new(2, 2))),
            S,
        );
        assert_eq!(
            session.last_error(),
            Some("peer 192.0.2.1 refused our OPEN: OPEN Message Error / Bad Peer AS (2/2)")
        );
        // The retry: connected, OPEN sent, then closed without a word.
        session.handle(Event::Tick, 3 * S);
        session.handle(Event::Connected, 3 * S);
        session.handle(
            Event::Closed("the peer closed the connection".into()),
            4 * S,
        );
        assert_eq!(
            session.last_error(),
            Some(
                "the connection to 192.0.2.1 closed in OpenSent: the peer closed the connection \
                 (before that: peer 192.0.2.1 refused our OPEN: OPEN Message Error / Bad Peer AS \
                 (2/2))"
            )
        );
    }

    #[test]
    fn closed_before_established_retries_and_stale_events_are_ignored() {
        let mut session = open_sent(config());
        let actions = session.handle(Event::Closed("Connection reset by peer".into()), S);
        assert_eq!(actions, vec![]);
        assert_eq!(session.state(), State::Idle);
        assert_eq!(
            session.last_error(),
            Some("the connection to 192.0.2.1 closed in OpenSent: Connection reset by peer")
        );
        for event in [
            Event::Received(Message::Keepalive),
            Event::Malformed(Notification::new(1, 1), "x".into()),
            Event::Closed("again".into()),
            Event::ConnectFailed("late".into()),
        ] {
            assert_eq!(session.handle(event, S), vec![]);
        }
        assert_eq!(session.state(), State::Idle);
        assert_eq!(session.next_deadline(), Some(2 * S));
    }

    #[test]
    fn an_event_at_a_deadline_counts_before_the_timer() {
        // A KEEPALIVE that arrives as the hold timer falls due keeps the session.
        let mut session = established(); // hold expires at 10 s; keepalive due at 10 s too
        let actions = session.handle(Event::Received(Message::Keepalive), 10 * S);
        assert_eq!(actions, vec![Action::Send(Message::Keepalive)]);
        assert_eq!(session.state(), State::Established);
        assert_eq!(session.next_deadline(), Some(13 * S));
        // A connection that completes as its attempt times out is taken.
        let mut session = Session::new(config());
        session.handle(Event::Start, Duration::ZERO);
        let actions = session.handle(Event::Connected, CONNECT_TIMEOUT);
        assert!(matches!(
            actions.as_slice(),
            [Action::Send(Message::Open(_))]
        ));
        // Without the event, the timer fires.
        let mut session = established();
        let actions = session.handle(Event::Tick, 10 * S);
        assert_eq!(
            actions,
            vec![
                Action::Send(Message::Notification(Notification::new(4, 0))),
                Action::Close,
                Action::Down
            ]
        );
    }

    // --- properties ---

    /// The I/O task as the actions leave it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Conn {
        None,
        Pending,
        Up,
    }

    fn message() -> impl Strategy<Value = Message> {
        let open = (
            // Mostly acceptable, so that sessions get Established often.
            prop_oneof![9 => Just(4u8), 1 => Just(3u8)],
            prop_oneof![9 => Just(65002u32), 1 => Just(65001u32)],
            prop_oneof![Just(0u16), Just(1), Just(3), Just(9), Just(90), Just(90)],
            prop_oneof![
                9 => Just(Ipv4Addr::new(192, 0, 2, 1)),
                1 => Just(Ipv4Addr::UNSPECIFIED),
                1 => Just(ME)
            ],
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(version, asn, hold_time, router_id, v6_only)| {
                let mut open = peer_open();
                open.version = version;
                open.my_as = asn as u16;
                open.capabilities.four_octet_asn = Some(asn);
                open.hold_time = hold_time;
                open.router_id = router_id;
                if v6_only {
                    open.capabilities.families = BTreeSet::from([Family::Ipv6Unicast]);
                }
                Message::Open(open)
            });
        prop_oneof![
            3 => open,
            6 => Just(Message::Keepalive),
            2 => Just(Message::UpdateReceived),
            1 => Just(Message::Update(Update::end_of_rib(Family::Ipv6Unicast))),
            1 => Just(Message::Notification(Notification::new(6, 4))),
            1 => (0u16..3, prop_oneof![Just(1u8), Just(128)])
                .prop_map(|(afi, safi)| Message::RouteRefresh { afi, safi }),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            2 => Just(Event::Start),
            1 => Just(Event::Stop(Notification::administrative_shutdown())),
            3 => Just(Event::Connected),
            1 => Just(Event::ConnectFailed("refused".into())),
            1 => Just(Event::Closed("reset".into())),
            8 => message().prop_map(Event::Received),
            1 => Just(Event::Malformed(Notification::new(1, 2), "bad length".into())),
            6 => Just(Event::Tick),
        ]
    }

    /// Milliseconds between events: mostly short, sometimes past every timer.
    fn advance() -> impl Strategy<Value = u64> {
        prop_oneof![8 => 0u64..2_000, 1 => 0u64..40_000]
    }

    fn config_strategy() -> impl Strategy<Value = SessionConfig> {
        (
            prop_oneof![Just(0u16), Just(3), Just(9), Just(90)],
            proptest::option::of(0u16..40),
            proptest::bool::ANY,
            proptest::option::of(0u16..200),
        )
            .prop_map(|(hold_time, keepalive, ibgp, graceful_restart)| {
                let mut config = config();
                config.hold_time = hold_time;
                config.keepalive = keepalive;
                config.graceful_restart = graceful_restart;
                if ibgp {
                    config.local_asn = config.peer_asn;
                }
                config
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Driven like the I/O task would: connection events only when they can happen.
        #[test]
        fn actions_match_the_connection_and_deadlines_lie_ahead(
            config in config_strategy(),
            // None: the peer does what moves the session on (so many runs reach Established).
            steps in proptest::collection::vec(
                (prop_oneof![1 => Just(None), 2 => event().prop_map(Some)], advance()),
                1..120,
            ),
        ) {
            let mut session = Session::new(config);
            let mut conn = Conn::None;
            let mut started = false;
            let mut now = Duration::ZERO;
            for (event, advance_ms) in steps {
                now += Duration::from_millis(advance_ms);
                let event = event.unwrap_or(match session.state() {
                    State::Idle | State::Active => Event::Start,
                    State::Connect => Event::Connected,
                    State::OpenSent => Event::Received(Message::Open(peer_open())),
                    _ => Event::Received(Message::Keepalive),
                });
                let possible = match &event {
                    Event::Connected | Event::ConnectFailed(_) => conn == Conn::Pending,
                    Event::Closed(_) | Event::Received(_) | Event::Malformed(..) => conn == Conn::Up,
                    _ => true,
                };
                let event = if possible { event } else { Event::Tick };
                match &event {
                    Event::Connected => conn = Conn::Up,
                    Event::ConnectFailed(_) | Event::Closed(_) => conn = Conn::None,
                    Event::Start => started = true,
                    Event::Stop(_) => started = false,
                    _ => {}
                }
                let before = session.state();
                let actions = session.handle(event.clone(), now);
                let after = session.state();
                for action in &actions {
                    match action {
                        Action::Connect => {
                            prop_assert_eq!(conn, Conn::None, "{:?} in {:?}", event, actions);
                            conn = Conn::Pending;
                        }
                        Action::Send(_) => prop_assert_eq!(conn, Conn::Up, "{:?}", actions),
                        Action::Close => {
                            prop_assert_ne!(conn, Conn::None, "{:?}", actions);
                            conn = Conn::None;
                        }
                        Action::Established(n) => {
                            prop_assert!(before != State::Established && after == State::Established);
                            prop_assert!(!n.families.is_empty());
                        }
                        Action::Resend(family) => {
                            prop_assert_eq!(after, State::Established);
                            prop_assert!(session.negotiated().unwrap().families.contains(family));
                        }
                        Action::Down => prop_assert_eq!(before, State::Established),
                    }
                }
                let left = before == State::Established && after != State::Established;
                prop_assert_eq!(left, actions.contains(&Action::Down), "{:?}", actions);
                let expected_conn = match after {
                    State::Connect => Conn::Pending,
                    state if state.connected() => Conn::Up,
                    _ => Conn::None,
                };
                prop_assert_eq!(conn, expected_conn, "{:?} after {:?}: {:?}", after, event, actions);
                prop_assert_eq!(session.started(), started);
                prop_assert_eq!(
                    session.negotiated().is_some(),
                    matches!(after, State::OpenConfirm | State::Established)
                );
                match session.next_deadline() {
                    Some(deadline) => prop_assert!(deadline > now, "{:?} <= {:?}", deadline, now),
                    None => prop_assert!(
                        (after == State::Idle && !started)
                            || (after == State::Established
                                && session.negotiated().unwrap().hold_time == 0),
                        "no deadline in {:?}", after
                    ),
                }
                if after == State::Idle && started {
                    prop_assert!(session.next_deadline().unwrap() <= now + RETRY_MAX);
                }
            }
        }

        /// Any event in any state, even ones the I/O task cannot produce: no panic, and the
        /// deadline never lies in the past.
        #[test]
        fn any_events_never_panic(
            config in config_strategy(),
            steps in proptest::collection::vec((event(), 0u64..40_000), 1..120),
        ) {
            let mut session = Session::new(config);
            let mut now = Duration::ZERO;
            for (event, advance_ms) in steps {
                now += Duration::from_millis(advance_ms);
                session.handle(event, now);
                if let Some(deadline) = session.next_deadline() {
                    prop_assert!(deadline > now);
                }
            }
        }
    }
}
