//! One BGPPeer's session on this node: the I/O around `core::bgp::session::Session` (the state
//! machine) and `core::bgp::rib_out::RibOut` (what was sent). Every decision is theirs; this
//! task connects, reads, writes, and feeds them events and time.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{PeerSetup, SessionReport, SpeakerMetrics};
use crate::agent::net::bgp::socket::{self, PeerSocketConfig};
use crate::agent::net::bgp::wire::{self, EncodeContext, WireError};
use crate::core::bgp::message::{Family, Message, Notification, RouteAttrs, Update};
use crate::core::bgp::rib_out::{Encoding, RibOut};
use crate::core::bgp::session::{Action, Event, Negotiated, Session, SessionConfig, State};
use crate::core::category::Category;

/// The routes of one peer.
pub type Routes = Arc<BTreeMap<IpNet, RouteAttrs>>;

/// How long a TCP handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// On a graceful stop, how long to wait for the peer's TCP to acknowledge the withdrawals
/// before the NOTIFICATION goes out anyway.
const WITHDRAW_ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a write may wait for the peer to read (longer than any usual hold time: a peer
/// that reads nothing for this long has lost the session anyway).
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest read at once.
const READ_CHUNK: usize = 64 * 1024;

/// A connection attempt in flight.
type Connecting =
    std::pin::Pin<Box<dyn Future<Output = Result<TcpStream, socket::BgpSocketError>> + Send>>;

/// What the task is told from outside.
pub(super) struct PeerInputs {
    pub routes: watch::Receiver<Routes>,
    /// true: withdraw everything, send Cease, close, end.
    pub stop: watch::Receiver<bool>,
    pub report: watch::Sender<SessionReport>,
}

/// An open connection.
struct Connection {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    buffer: Vec<u8>,
    ctx: EncodeContext,
}

pub(super) struct PeerTask {
    setup: PeerSetup,
    session: Session,
    rib: RibOut,
    connection: Option<Connection>,
    epoch: Instant,
    /// Wall-clock time of `epoch`, for the report's `since`.
    epoch_wall: SystemTime,
    metrics: SpeakerMetrics,
    updates_sent: u64,
    /// The failure last logged: its error and when the session entered the state it left the
    /// session in (each failure logs once, even when the same error repeats).
    logged_failure: Option<(String, Duration)>,
}

/// The session settings of a peer.
pub(super) fn session_config(setup: &PeerSetup) -> SessionConfig {
    let peer = &setup.peer;
    SessionConfig {
        peer_address: peer.address,
        local_asn: peer.my_asn,
        peer_asn: peer.peer_asn,
        router_id: setup.router_id,
        hold_time: peer.hold_time,
        keepalive: peer.keepalive,
        families: [Family::of(peer.address)].into(),
        graceful_restart: peer
            .graceful_restart
            .then_some(crate::core::bgp::config::RESTART_TIME),
        restarted: setup.restarted,
    }
}

impl PeerTask {
    pub(super) fn new(setup: PeerSetup, metrics: SpeakerMetrics) -> PeerTask {
        PeerTask {
            session: Session::new(session_config(&setup)),
            setup,
            rib: RibOut::new(),
            connection: None,
            epoch: Instant::now(),
            epoch_wall: SystemTime::now(),
            metrics,
            updates_sent: 0,
            logged_failure: None,
        }
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn name(&self) -> &str {
        &self.setup.peer.name
    }

    fn socket_config(&self) -> PeerSocketConfig {
        let peer = &self.setup.peer;
        PeerSocketConfig {
            peer: SocketAddr::new(peer.address, peer.port),
            source: peer.source,
            ttl: peer.ttl,
            md5_password: self.setup.password.clone(),
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// Runs the session until told to stop.
    pub(super) async fn run(mut self, mut inputs: PeerInputs) {
        self.rib
            .set_desired((**inputs.routes.borrow_and_update()).clone());
        let mut connecting: Option<Connecting> = None;
        let actions = self.session.handle(Event::Start, self.now());
        self.execute(actions, &mut connecting).await;
        loop {
            self.publish(&inputs.report);
            let deadline = self
                .session
                .next_deadline()
                .map(|at| self.epoch + at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let event = tokio::select! {
                result = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                    connecting = None;
                    match result {
                        Ok(stream) => match self.connected(stream) {
                            Ok(()) => Event::Connected,
                            Err(reason) => Event::ConnectFailed(reason),
                        },
                        Err(err) => {
                            self.count_error(err.category());
                            Event::ConnectFailed(err.to_string())
                        }
                    }
                }
                read = read_some(self.connection.as_mut()), if self.connection.is_some() => {
                    match read {
                        Ok(0) => Event::Closed("the peer closed the connection".into()),
                        Ok(_) => {
                            self.drain_messages(&mut connecting).await;
                            continue;
                        }
                        Err(err) => Event::Closed(format!("reading from the peer: {err}")),
                    }
                }
                changed = inputs.routes.changed() => {
                    if changed.is_err() {
                        // The speaker is gone without a stop: stop as if told to.
                        self.stop_gracefully(&mut connecting).await;
                        return;
                    }
                    self.rib.set_desired((**inputs.routes.borrow_and_update()).clone());
                    self.send_changes().await;
                    continue;
                }
                _ = inputs.stop.changed() => {
                    self.stop_gracefully(&mut connecting).await;
                    self.publish(&inputs.report);
                    return;
                }
                _ = tokio::time::sleep_until(deadline) => Event::Tick,
            };
            if let Event::Closed(reason) | Event::ConnectFailed(reason) = &event {
                tracing::info!(peer = %self.name(), address = %self.setup.peer.address, %reason, "BGP connection ended");
                self.connection = None;
            }
            let actions = self.session.handle(event, self.now());
            self.execute(actions, &mut connecting).await;
        }
    }

    /// Takes a new TCP connection: the next hop of our routes is its local address.
    fn connected(&mut self, stream: TcpStream) -> Result<(), String> {
        let local = stream
            .local_addr()
            .map_err(|err| format!("reading the connection's local address: {err}"))?;
        let (reader, writer) = stream.into_split();
        let mut ctx = EncodeContext {
            local_asn: self.setup.peer.my_asn,
            four_octet_asn: false,
            ibgp: self.setup.peer.ibgp(),
            ..EncodeContext::default()
        };
        match local.ip() {
            IpAddr::V4(v4) => ctx.next_hop_v4 = Some(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ctx.next_hop_v4 = Some(v4),
                None => ctx.next_hop_v6 = Some(v6),
            },
        }
        self.connection = Some(Connection {
            reader,
            writer,
            buffer: Vec::with_capacity(READ_CHUNK),
            ctx,
        });
        Ok(())
    }

    /// Decodes every whole message in the buffer and hands each to the session.
    async fn drain_messages(&mut self, connecting: &mut Option<Connecting>) {
        loop {
            let four_octet = self.session.negotiated().is_some_and(|n| n.four_octet_asn);
            let decoded = {
                let Some(connection) = self.connection.as_mut() else {
                    return;
                };
                let decoded = wire::decode(&connection.buffer, four_octet);
                match &decoded {
                    Ok(Some((_, used))) => {
                        connection.buffer.drain(..*used);
                    }
                    Ok(None) => {}
                    // The stream cannot be resynchronised after garbage: the session resets.
                    Err(_) => connection.buffer.clear(),
                }
                decoded
            };
            let event = match decoded {
                Ok(None) => return,
                Ok(Some((message, _))) => {
                    if let Message::Notification(notification) = &message {
                        tracing::warn!(peer = %self.setup.peer.name, address = %self.setup.peer.address, notification = %notification.describe(), "the BGP peer sent a NOTIFICATION");
                    }
                    Event::Received(message)
                }
                Err(WireError::Malformed {
                    notification,
                    reason,
                }) => {
                    tracing::warn!(peer = %self.setup.peer.name, address = %self.setup.peer.address, %reason, "malformed message from the BGP peer: resetting the session");
                    self.count_error("bgp_malformed");
                    Event::Malformed(
                        notification,
                        format!("the peer sent a malformed message: {reason}"),
                    )
                }
                Err(err) => Event::Malformed(
                    Notification::new(crate::core::bgp::message::codes::CEASE, 0),
                    err.to_string(),
                ),
            };
            let actions = self.session.handle(event, self.now());
            self.execute(actions, connecting).await;
        }
    }

    /// Carries out the session's actions in order.
    async fn execute(&mut self, actions: Vec<Action>, connecting: &mut Option<Connecting>) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Connect => {
                    let config = self.socket_config();
                    *connecting = Some(Box::pin(async move { socket::connect(&config).await }));
                }
                Action::Send(message) => {
                    if let Err(reason) = self.send(&message).await {
                        self.connection = None;
                        let more = self.session.handle(Event::Closed(reason), self.now());
                        queue.extend(more);
                    }
                }
                Action::Close => {
                    if let Some(mut connection) = self.connection.take() {
                        let _ = connection.writer.shutdown().await;
                    }
                    *connecting = None;
                }
                Action::Established(negotiated) => {
                    tracing::info!(peer = %self.setup.peer.name, address = %self.setup.peer.address, families = ?negotiated.families, hold_time = negotiated.hold_time, "BGP session established");
                    self.established(&negotiated);
                    if let Err(reason) = self.send_table(&negotiated).await {
                        self.connection = None;
                        let more = self.session.handle(Event::Closed(reason), self.now());
                        queue.extend(more);
                    }
                }
                Action::Resend(family) => {
                    let encoding = self.encoding();
                    let updates = self.rib.full(family, &encoding);
                    if let Err(reason) = self.send_updates(updates).await {
                        self.connection = None;
                        let more = self.session.handle(Event::Closed(reason), self.now());
                        queue.extend(more);
                    }
                }
                Action::Down => {
                    // Why it went down is logged with the failure (`log_failure`), or it was
                    // stopped: `last_error` may be an older failure's here.
                    self.rib.reset();
                    tracing::info!(peer = %self.setup.peer.name, address = %self.setup.peer.address, "BGP session left Established");
                }
            }
        }
    }

    fn established(&mut self, negotiated: &Negotiated) {
        if let Some(connection) = self.connection.as_mut() {
            connection.ctx.four_octet_asn = negotiated.four_octet_asn;
            connection.ctx.ibgp = negotiated.ibgp;
        }
    }

    fn encoding(&self) -> Encoding {
        let negotiated = self.session.negotiated();
        Encoding {
            four_octet_asn: negotiated.is_some_and(|n| n.four_octet_asn),
            ibgp: self.setup.peer.ibgp(),
            ipv6_next_hop_len: 16,
            local_asn: self.setup.peer.my_asn,
        }
    }

    /// The whole table, then End-of-RIB, for each negotiated family.
    async fn send_table(&mut self, negotiated: &Negotiated) -> Result<(), String> {
        let encoding = self.encoding();
        for family in &negotiated.families {
            let mut updates = self.rib.full(*family, &encoding);
            updates.push(Update::end_of_rib(*family));
            self.send_updates(updates).await?;
        }
        Ok(())
    }

    /// What changed since the last UPDATEs, when the session is up.
    async fn send_changes(&mut self) {
        if self.session.state() != State::Established {
            return;
        }
        let Some(families) = self.session.negotiated().map(|n| n.families.clone()) else {
            return;
        };
        let encoding = self.encoding();
        let updates = self.rib.updates(&families, &encoding);
        if let Err(reason) = self.send_updates(updates).await {
            self.connection = None;
            let actions = self.session.handle(Event::Closed(reason), self.now());
            let mut none = None;
            Box::pin(self.execute(actions, &mut none)).await;
        }
    }

    async fn send_updates(&mut self, updates: Vec<Update>) -> Result<(), String> {
        if updates.is_empty() {
            return Ok(());
        }
        let Some(connection) = self.connection.as_mut() else {
            return Err("no connection".into());
        };
        // Every UPDATE of a change goes out in one write: few segments, at once.
        let mut bytes = Vec::new();
        for update in &updates {
            match wire::encode(&Message::Update(update.clone()), &connection.ctx) {
                Ok(encoded) => bytes.extend_from_slice(&encoded),
                Err(err) => {
                    // A bug or an impossible configuration (no next hop): say so, keep going.
                    tracing::error!(peer = %self.setup.peer.name, error = %err, "cannot encode an UPDATE");
                }
            }
        }
        write_within(&mut connection.writer, &bytes).await?;
        self.updates_sent += updates.len() as u64;
        self.metrics
            .updates_sent(&self.setup.peer.name, updates.len() as u64);
        Ok(())
    }

    async fn send(&mut self, message: &Message) -> Result<(), String> {
        let Some(connection) = self.connection.as_mut() else {
            // The session sends only while connected; a late action finds nothing to do.
            return Ok(());
        };
        let bytes = wire::encode(message, &connection.ctx)
            .map_err(|err| format!("encoding a message: {err}"))?;
        write_within(&mut connection.writer, &bytes).await
    }

    /// SIGTERM: withdraw everything, wait until the peer's TCP acknowledged it (or a short
    /// timeout), then NOTIFICATION Cease / Administrative Shutdown and close.
    async fn stop_gracefully(&mut self, connecting: &mut Option<Connecting>) {
        if self.session.state() == State::Established {
            let withdrawn = self.rib.sent_count();
            self.rib.set_desired(BTreeMap::new());
            self.send_changes().await;
            if let Some(connection) = self.connection.as_ref() {
                let acked = wait_acknowledged(&connection.writer, WITHDRAW_ACK_TIMEOUT).await;
                tracing::info!(peer = %self.setup.peer.name, withdrawn, acknowledged = acked, "withdrew every route before stopping");
            }
        }
        let actions = self.session.handle(
            Event::Stop(Notification::administrative_shutdown()),
            self.now(),
        );
        self.execute(actions, connecting).await;
    }

    fn count_error(&self, category: &str) {
        self.metrics.error(&self.setup.peer.name, category);
    }

    /// Logs the session's failure once: a session that failed waits in Idle or Active to
    /// retry, with its reason in `last_error` (an OPEN refused, a hold timer that expired, a
    /// malformed message, a connection that closed, in any state).
    fn log_failure(&mut self) {
        let state = self.session.state();
        if !self.session.started() || !matches!(state, State::Idle | State::Active) {
            return;
        }
        let Some(error) = self.session.last_error() else {
            return;
        };
        let failure = (error.to_string(), self.session.since());
        if self.logged_failure.as_ref() == Some(&failure) {
            return;
        }
        let retry_in = self
            .session
            .next_deadline()
            .map(|at| at.saturating_sub(self.now()));
        tracing::warn!(peer = %self.setup.peer.name, address = %self.setup.peer.address, %state, ?retry_in, %error, "BGP session failed");
        self.logged_failure = Some(failure);
    }

    fn publish(&mut self, report: &watch::Sender<SessionReport>) {
        self.log_failure();
        let state = self.session.state();
        let next = SessionReport {
            peer: self.setup.peer.name.clone(),
            address: self.setup.peer.address,
            state,
            since: self.epoch_wall + self.session.since(),
            prefixes_sent: self.rib.sent_count(),
            updates_sent: self.updates_sent,
            last_error: self.session.last_error().map(str::to_string),
        };
        self.metrics.report(&next);
        report.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }
}

/// Writes `bytes`, or fails when the peer has not taken them within [`WRITE_TIMEOUT`]: a peer
/// that stops reading must not stall the session's task (its timers, its graceful stop).
async fn write_within(writer: &mut OwnedWriteHalf, bytes: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("writing to the peer: {err}")),
        Err(_) => Err(format!(
            "the peer took none of {} bytes for {} s (it stopped reading)",
            bytes.len(),
            WRITE_TIMEOUT.as_secs()
        )),
    }
}

/// Reads what is there into the connection's buffer (cancel-safe: nothing is lost when the
/// select drops it).
async fn read_some(connection: Option<&mut Connection>) -> std::io::Result<usize> {
    let connection = connection.expect("guarded by the select");
    let mut chunk = [0u8; 8192];
    let n = connection.reader.read(&mut chunk).await?;
    connection.buffer.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Waits until the kernel has no unacknowledged bytes on the socket (SIOCOUTQ = 0), or the
/// timeout. True when everything was acknowledged.
async fn wait_acknowledged(writer: &OwnedWriteHalf, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let fd = writer.as_ref().as_raw_fd();
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int through the pointer, which lives across
        // the call; the descriptor stays open while `writer` is borrowed.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut pending) };
        if rc != 0 || pending == 0 {
            return rc == 0;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
