//! The agent's BGP speaker (`vipam::agent::speaker::Speaker`, in process, on a tokio runtime)
//! against scripted routers on 127.0.0.1: TCP listeners written here that accept the speaker's
//! connection, speak BGP by hand (bytes built and read in this file, not with vipam's codec)
//! and then misbehave.
//!
//! For each hostile peer (DESIGN invariant 7: a peer that sends garbage loses its session,
//! never the agent): the NOTIFICATION the speaker sends back is the one RFC 4271 section 6
//! names (or none, where the RFC sends none), the speaker closes that connection, the session
//! report's `last_error` says what happened, the log says it too, the speaker connects again
//! after its first backoff (1 s) and reaches Established with a well-behaved router, and a second
//! session of the same speaker, to a healthy router, stays Established and gets its routes.
//!
//! Then UPDATE packing: 5,000 /32s with one attribute set added to an Established session, and
//! the full table then End-of-RIB on a new session.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use vipam::agent::speaker::{PeerSetup, SessionReport, Speaker, SpeakerMetrics};
use vipam::core::bgp::codes;
use vipam::core::bgp::config::{Peer, PeerSpec};
use vipam::core::bgp::message::RouteAttrs;
use vipam::core::bgp::session::State;

const ROUTER_ASN: u32 = 65000;
const NODE_ASN: u32 = 4_200_000_001;
const NODE_ROUTER_ID: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

// ---------------------------------------------------------------------------------------------
// BGP by hand (RFC 4271 section 4), independent of the codec under test.

const OPEN: u8 = 1;
const UPDATE: u8 = 2;
const NOTIFICATION: u8 = 3;
const KEEPALIVE: u8 = 4;

/// A whole message: marker, length, type, body.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0xff; 16];
    bytes.extend_from_slice(&u16::try_from(19 + body.len()).unwrap().to_be_bytes());
    bytes.push(kind);
    bytes.extend_from_slice(body);
    bytes
}

/// An optional parameter of an OPEN.
fn parameter(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut bytes = vec![kind, u8::try_from(value.len()).unwrap()];
    bytes.extend_from_slice(value);
    bytes
}

/// Capabilities (optional parameter 2): IPv4 unicast, 4-octet ASN, route refresh, and `extra`.
fn capabilities(asn: u32, extra: &[u8]) -> Vec<u8> {
    let mut caps = vec![1, 4, 0, 1, 0, 1]; // multiprotocol IPv4 unicast
    caps.extend_from_slice(&[65, 4]);
    caps.extend_from_slice(&asn.to_be_bytes());
    caps.extend_from_slice(&[2, 0]); // route refresh
    caps.extend_from_slice(extra);
    parameter(2, &caps)
}

/// An OPEN from the router: version 4, `my_as`, `hold_time`, router ID 192.0.2.1, `params`.
fn open(my_as: u16, hold_time: u16, params: &[u8]) -> Vec<u8> {
    let mut body = vec![4];
    body.extend_from_slice(&my_as.to_be_bytes());
    body.extend_from_slice(&hold_time.to_be_bytes());
    body.extend_from_slice(&[192, 0, 2, 1]);
    body.push(u8::try_from(params.len()).unwrap());
    body.extend_from_slice(params);
    message(OPEN, &body)
}

/// The router's OPEN as a well-behaved router sends it.
fn good_open() -> Vec<u8> {
    open(ROUTER_ASN as u16, 9, &capabilities(ROUTER_ASN, &[]))
}

fn keepalive() -> Vec<u8> {
    message(KEEPALIVE, &[])
}

fn notification(code: u8, subcode: u8, data: &[u8]) -> Vec<u8> {
    let mut body = vec![code, subcode];
    body.extend_from_slice(data);
    message(NOTIFICATION, &body)
}

/// A path attribute: type code and value.
type Attribute = (u8, Vec<u8>);

/// A message from the speaker.
#[derive(Clone, Debug)]
struct Msg {
    kind: u8,
    body: Vec<u8>,
}

impl Msg {
    /// (code, subcode, data) of a NOTIFICATION.
    fn notification(&self) -> Option<(u8, u8, Vec<u8>)> {
        (self.kind == NOTIFICATION && self.body.len() >= 2)
            .then(|| (self.body[0], self.body[1], self.body[2..].to_vec()))
    }

    /// An IPv4 UPDATE's withdrawn prefixes, path attributes (type code, value) and NLRI.
    fn update(&self) -> (Vec<IpNet>, Vec<Attribute>, Vec<IpNet>) {
        assert_eq!(self.kind, UPDATE, "{self:?}");
        let body = &self.body;
        let withdrawn_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let withdrawn = prefixes(&body[2..2 + withdrawn_len]);
        let rest = &body[2 + withdrawn_len..];
        let attrs_len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let mut attrs_bytes = &rest[2..2 + attrs_len];
        let mut attrs = Vec::new();
        while let [flags, code, more @ ..] = attrs_bytes {
            let (len, value_at) = if flags & 0x10 != 0 {
                (usize::from(u16::from_be_bytes([more[0], more[1]])), 2)
            } else {
                (usize::from(more[0]), 1)
            };
            attrs.push((*code, more[value_at..value_at + len].to_vec()));
            attrs_bytes = &more[value_at + len..];
        }
        let nlri = prefixes(&rest[2 + attrs_len..]);
        (withdrawn, attrs, nlri)
    }

    /// The IPv4 End-of-RIB: an UPDATE with nothing in it (RFC 4724 2).
    fn is_end_of_rib(&self) -> bool {
        self.kind == UPDATE && self.body == [0, 0, 0, 0]
    }
}

/// IPv4 prefixes as in NLRI: a length in bits, then the bytes that hold them.
fn prefixes(mut bytes: &[u8]) -> Vec<IpNet> {
    let mut out = Vec::new();
    while let [len, rest @ ..] = bytes {
        let n = usize::from(*len).div_ceil(8);
        let mut octets = [0u8; 4];
        octets[..n].copy_from_slice(&rest[..n]);
        out.push(IpNet::new(IpAddr::V4(Ipv4Addr::from(octets)), *len).unwrap());
        bytes = &rest[n..];
    }
    out
}

/// One connection of a scripted router.
struct Conn {
    stream: TcpStream,
}

impl Conn {
    /// The next message, or None when the speaker closed (or reset) the connection.
    async fn read(&mut self) -> Option<Msg> {
        let mut header = [0u8; 19];
        self.stream.read_exact(&mut header).await.ok()?;
        assert_eq!(header[..16], [0xff; 16], "the speaker sent a bad marker");
        let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
        assert!(
            (19..=4096).contains(&len),
            "the speaker sent a message of length {len}"
        );
        let mut body = vec![0u8; len - 19];
        self.stream.read_exact(&mut body).await.ok()?;
        Some(Msg {
            kind: header[18],
            body,
        })
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The speaker may have closed already (that is what some cases are about).
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads the speaker's OPEN and checks it.
    async fn expect_open(&mut self) {
        let open = self
            .read()
            .await
            .expect("the speaker closed before its OPEN");
        assert_eq!(open.kind, OPEN, "{open:?}");
        assert_eq!(open.body[0], 4, "version");
        assert_eq!(
            u16::from_be_bytes([open.body[1], open.body[2]]),
            23456,
            "AS_TRANS: the node's ASN needs 4 bytes"
        );
        assert_eq!(u16::from_be_bytes([open.body[3], open.body[4]]), 9, "hold");
        assert_eq!(open.body[5..9], NODE_ROUTER_ID.octets());
        let mut four_octet = NODE_ASN.to_be_bytes().to_vec();
        four_octet.splice(0..0, [65, 4]);
        assert!(
            open.body.windows(6).any(|w| w == four_octet),
            "no 4-octet ASN capability with {NODE_ASN}: {open:?}"
        );
    }

    /// The speaker's OPEN, then OPEN and KEEPALIVE from the router, then the speaker's
    /// KEEPALIVE: the session is Established.
    async fn handshake(&mut self) {
        self.expect_open().await;
        self.answer_open().await;
    }

    /// OPEN and KEEPALIVE from the router after the speaker's OPEN, then its KEEPALIVE.
    async fn answer_open(&mut self) {
        let mut bytes = good_open();
        bytes.extend(keepalive());
        self.send(&bytes).await;
        let answer = self.read().await.expect("the speaker closed after OPEN");
        assert_eq!(answer.kind, KEEPALIVE, "{answer:?}");
    }

    /// Reads until the speaker closes the connection or `limit` passes; returns what it sent
    /// and when it closed (None: still open at the limit).
    async fn until_closed(&mut self, limit: Duration) -> (Vec<Msg>, Option<Instant>) {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.read()).await {
                Ok(Some(msg)) => got.push(msg),
                Ok(None) => return (got, Some(Instant::now())),
                Err(_) => return (got, None),
            }
        }
    }

    /// Serves a healthy session until the speaker closes it: a KEEPALIVE every second, every
    /// UPDATE's NLRI recorded in `prefixes`.
    async fn serve(&mut self, prefixes: Arc<Mutex<Vec<IpNet>>>) -> Vec<Msg> {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut others = Vec::new();
        loop {
            tokio::select! {
                msg = self.read() => match msg {
                    None => return others,
                    Some(msg) if msg.kind == UPDATE => {
                        let (_, _, nlri) = msg.update();
                        prefixes.lock().unwrap().extend(nlri);
                    }
                    Some(msg) => others.push(msg),
                },
                _ = ticker.tick() => self.send(&keepalive()).await,
            }
        }
    }
}

async fn accept(listener: &TcpListener, limit: Duration) -> (Conn, Instant) {
    let (stream, _) = tokio::time::timeout(limit, listener.accept())
        .await
        .unwrap_or_else(|_| panic!("the speaker did not connect within {limit:?}"))
        .expect("accepting");
    (Conn { stream }, Instant::now())
}

// ---------------------------------------------------------------------------------------------
// The speaker under test

fn setup(name: &str, port: u16) -> PeerSetup {
    let peer = Peer::parse(PeerSpec {
        name: name.into(),
        peer_address: "127.0.0.1".into(),
        peer_asn: ROUTER_ASN,
        my_asn: NODE_ASN,
        peer_port: port,
        hold_time: "9s".into(),
        ..PeerSpec::default()
    })
    .expect("a valid BGPPeer");
    PeerSetup {
        peer,
        password: None,
        router_id: NODE_ROUTER_ID,
        restarted: false,
    }
}

fn routes(prefixes: impl IntoIterator<Item = IpNet>) -> BTreeMap<IpNet, RouteAttrs> {
    prefixes
        .into_iter()
        .map(|p| (p, RouteAttrs::default()))
        .collect()
}

/// `n` /32s from 100.64.0.0.
fn host_routes(n: usize) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + i as u32);
            IpNet::new(IpAddr::V4(ip), 32).unwrap()
        })
        .collect()
}

fn report<'a>(reports: &'a [SessionReport], peer: &str) -> &'a SessionReport {
    reports
        .iter()
        .find(|r| r.peer == peer)
        .unwrap_or_else(|| panic!("no report for {peer}: {reports:?}"))
}

/// What the speaker logs, captured by a `tracing` subscriber on the test's thread (the test
/// runtime is single-threaded, so every task of the speaker logs there).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile peers

/// How the hostile router misbehaves once the speaker's OPEN has arrived.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    BadMarker,
    Length(u16),
    UnknownType,
    UnknownCapability,
    UnknownParameter,
    WrongAs,
    HoldTimeOne,
    AdministrativeShutdown,
    GarbageUpdate,
    ClosedMidMessage,
    KeepaliveFlood,
}

const SHUTDOWN_MESSAGE: &str = "maintenance: replacing linecard 3";
const FLOOD: usize = 100_000;

async fn misbehave(conn: &mut Conn, hostile: Hostile) {
    match hostile {
        Hostile::BadMarker => {
            let mut bytes = keepalive();
            bytes[3] = 0x00;
            conn.send(&bytes).await;
        }
        Hostile::Length(len) => {
            let mut bytes = keepalive();
            bytes[16..18].copy_from_slice(&len.to_be_bytes());
            conn.send(&bytes).await;
        }
        Hostile::UnknownType => conn.send(&message(9, &[])).await,
        Hostile::UnknownCapability => {
            // Capability 200 (unassigned) with 3 bytes: ignored (RFC 5492 5).
            conn.send(&open(
                ROUTER_ASN as u16,
                9,
                &capabilities(ROUTER_ASN, &[200, 3, 1, 2, 3]),
            ))
            .await;
            conn.send(&keepalive()).await;
        }
        Hostile::UnknownParameter => {
            // Parameter type 42 (unassigned) beside the capabilities (one unknown too).
            let mut params = capabilities(ROUTER_ASN, &[200, 3, 1, 2, 3]);
            params.extend(parameter(42, &[7, 7]));
            conn.send(&open(ROUTER_ASN as u16, 9, &params)).await;
        }
        Hostile::WrongAs => {
            conn.send(&open(65099, 9, &capabilities(65099, &[]))).await;
        }
        Hostile::HoldTimeOne => {
            conn.send(&open(ROUTER_ASN as u16, 1, &capabilities(ROUTER_ASN, &[])))
                .await;
        }
        Hostile::AdministrativeShutdown => {
            established(conn).await;
            let mut data = vec![SHUTDOWN_MESSAGE.len() as u8];
            data.extend_from_slice(SHUTDOWN_MESSAGE.as_bytes());
            conn.send(&notification(6, 2, &data)).await;
        }
        Hostile::GarbageUpdate => {
            established(conn).await;
            // Withdrawn Routes Length 0xfff0 in a 27-byte UPDATE: it runs past the message.
            conn.send(&message(UPDATE, &[0xff, 0xf0, 24, 10, 0, 0, 0, 0]))
                .await;
        }
        Hostile::ClosedMidMessage => {
            established(conn).await;
            // The first 30 bytes of a 40-byte UPDATE, then FIN.
            let update = message(UPDATE, &[0, 0, 0, 0, 24, 10, 1, 2, 24, 10, 1, 3, 24, 10, 1]);
            let mut bytes = update;
            bytes.resize(40, 1);
            conn.send(&bytes[..30]).await;
            let _ = conn.stream.shutdown().await;
        }
        Hostile::KeepaliveFlood => {
            established(conn).await;
            conn.send(&keepalive().repeat(FLOOD)).await;
        }
    }
}

/// The handshake after the speaker's OPEN, and the speaker's table (its End-of-RIB last).
async fn established(conn: &mut Conn) {
    conn.answer_open().await;
    loop {
        let msg = conn.read().await.expect("closed before End-of-RIB");
        if msg.is_end_of_rib() {
            return;
        }
    }
}

/// What the hostile router saw.
#[derive(Debug)]
struct HostileOutcome {
    /// Messages the speaker sent after the misbehaviour, until it closed.
    after: Vec<Msg>,
    /// When the speaker closed the connection (None: it kept it open for 3 s).
    closed: Option<Instant>,
    /// When the speaker connected again (None: it kept the first connection).
    reconnected: Option<Instant>,
}

/// What the test saw of the speaker while the hostile router played.
struct Run {
    outcome: HostileOutcome,
    /// Every distinct `last_error` of the hostile session, in order.
    errors: Vec<String>,
    final_report: SessionReport,
    logs: String,
}

/// Runs one speaker with two sessions, a healthy router and a hostile one, until the hostile
/// router has played `hostile` and the speaker is Established with it again (a well-behaved
/// second connection). Checks on the way that the healthy session never leaves Established
/// and gets its routes.
async fn run_hostile(hostile: Hostile) -> Run {
    let (logs, _guard) = Logs::capture();
    let healthy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hostile_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let healthy_port = healthy_listener.local_addr().unwrap().port();
    let hostile_port = hostile_listener.local_addr().unwrap().port();

    let healthy_prefixes = Arc::new(Mutex::new(Vec::new()));
    let healthy_connections = Arc::new(Mutex::new(0usize));
    {
        let prefixes = healthy_prefixes.clone();
        let connections = healthy_connections.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = accept(&healthy_listener, Duration::from_secs(60)).await;
                *connections.lock().unwrap() += 1;
                conn.handshake().await;
                conn.serve(prefixes.clone()).await;
            }
        });
    }
    let (outcome_tx, mut outcome_rx) = oneshot::channel::<HostileOutcome>();
    tokio::spawn(async move {
        let (mut conn, _) = accept(&hostile_listener, Duration::from_secs(10)).await;
        conn.expect_open().await;
        misbehave(&mut conn, hostile).await;
        let (after, closed) = conn.until_closed(Duration::from_secs(3)).await;
        let second = match closed {
            Some(_) => Some(accept(&hostile_listener, Duration::from_secs(5)).await),
            None => None,
        };
        let reconnected = second.as_ref().map(|(_, at)| *at);
        let _ = outcome_tx.send(HostileOutcome {
            after,
            closed,
            reconnected,
        });
        // The second connection is a well-behaved router; without one, the first stays open.
        let mut conn = match second {
            Some((mut next, _)) => {
                next.handshake().await;
                next
            }
            None => conn,
        };
        conn.serve(Arc::default()).await;
    });

    let mut speaker = Speaker::new(SpeakerMetrics::default(), Arc::default());
    speaker.set_peers(vec![
        setup("healthy", healthy_port),
        setup("hostile", hostile_port),
    ]);
    let wanted = host_routes(3);
    let peer_routes = ["healthy", "hostile"]
        .into_iter()
        .map(|peer| (peer.to_string(), routes(wanted.clone())))
        .collect();
    speaker.set_routes(&peer_routes);

    let start = Instant::now();
    let mut errors: Vec<String> = Vec::new();
    let mut healthy_up_since: Option<Instant> = None;
    let mut outcome = None;
    loop {
        let reports = speaker.reports();
        let healthy = report(&reports, "healthy");
        let hostile_report = report(&reports, "hostile");
        if let Some(error) = &hostile_report.last_error
            && errors.last() != Some(error)
        {
            errors.push(error.clone());
        }
        match (healthy.state, healthy_up_since) {
            (State::Established, None) => healthy_up_since = Some(Instant::now()),
            (State::Established, Some(_)) => {}
            (state, Some(since)) => panic!(
                "the healthy session left Established ({state}, last error {:?}) {:?} after it \
                 came up, while the other peer played {hostile:?}\n{}",
                healthy.last_error,
                since.elapsed(),
                logs.text()
            ),
            (_, None) => {}
        }
        if outcome.is_none()
            && let Ok(result) = outcome_rx.try_recv()
        {
            outcome = Some(result);
        }
        if let Some(result) = &outcome
            && hostile_report.state == State::Established
            && healthy.state == State::Established
            && healthy_prefixes.lock().unwrap().len() >= wanted.len()
        {
            // The outcome comes once the speaker connected again, when the first session was
            // over: Established now is the second session (or the first one, kept).
            let _ = result;
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{hostile:?}: no end after 20 s; reports {reports:?}, hostile router {outcome:?}\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = healthy_prefixes.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, wanted, "the healthy router's routes");
    assert_eq!(
        *healthy_connections.lock().unwrap(),
        1,
        "the healthy session reconnected"
    );
    let final_report = report(&speaker.reports(), "hostile").clone();
    speaker.shutdown(Duration::from_secs(3)).await;
    Run {
        outcome: outcome.expect("checked above"),
        errors,
        final_report,
        logs: logs.text(),
    }
}

/// Runs `hostile` and checks what every hostile case shares: the speaker answered with
/// `notification` (code, subcode, and data when given) or with none, closed the connection,
/// connected again after its first backoff (1 s), recorded `error_words` in `last_error` (kept
/// after the session recovered) and logged them for the hostile peer.
async fn check_reset(
    hostile: Hostile,
    notification: Option<(u8, u8, Option<&[u8]>)>,
    error_words: &[&str],
) -> Run {
    let run = run_hostile(hostile).await;
    if std::env::var_os("SHOW_LOGS").is_some() {
        eprintln!("{}", run.logs);
    }
    let outcome = &run.outcome;
    let notifications: Vec<(u8, u8, Vec<u8>)> =
        outcome.after.iter().filter_map(Msg::notification).collect();
    match notification {
        Some((code, subcode, data)) => {
            assert_eq!(
                notifications.len(),
                1,
                "{hostile:?}: the speaker sent {:?}",
                outcome.after
            );
            let (got_code, got_subcode, got_data) = &notifications[0];
            assert_eq!(
                (*got_code, *got_subcode),
                (code, subcode),
                "{hostile:?}: NOTIFICATION data {got_data:?}"
            );
            if let Some(data) = data {
                assert_eq!(got_data, data, "{hostile:?}: NOTIFICATION data");
            }
            assert_eq!(
                outcome.after.last().and_then(Msg::notification),
                Some(notifications[0].clone()),
                "{hostile:?}: the NOTIFICATION is the last message: {:?}",
                outcome.after
            );
        }
        None => assert!(
            notifications.is_empty(),
            "{hostile:?}: the speaker answered with {notifications:?}"
        ),
    }
    let closed = outcome
        .closed
        .unwrap_or_else(|| panic!("{hostile:?}: the speaker kept the connection\n{}", run.logs));
    let reconnected = outcome.reconnected.expect("reconnected");
    let backoff = reconnected - closed;
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(1600)).contains(&backoff),
        "{hostile:?}: the speaker connected again {backoff:?} after the reset (first backoff 1 s)"
    );
    let error = run
        .errors
        .first()
        .unwrap_or_else(|| panic!("{hostile:?}: no last_error\n{}", run.logs));
    for word in error_words {
        assert!(
            error.contains(word),
            "{hostile:?}: last_error {error:?} lacks {word:?}"
        );
    }
    assert_eq!(
        run.final_report.last_error.as_deref(),
        Some(error.as_str()),
        "{hostile:?}: the error is kept after the session recovered (it explains the flap)"
    );
    assert_eq!(run.final_report.state, State::Established);
    let logged = run
        .logs
        .lines()
        .filter(|l| l.contains("peer=hostile") && l.contains("BGP session failed"))
        .collect::<Vec<_>>();
    assert!(
        logged.iter().any(|l| l.contains(error.as_str())),
        "{hostile:?}: no log line with the error {error:?}:\n{}",
        run.logs
    );
    eprintln!(
        "{hostile:?}: NOTIFICATION {notifications:?}, reconnected after {backoff:?}, \
         last_error {error:?}"
    );
    run
}

#[tokio::test]
async fn a_bad_marker_is_connection_not_synchronized() {
    check_reset(
        Hostile::BadMarker,
        Some((
            codes::MESSAGE_HEADER_ERROR,
            codes::header::CONNECTION_NOT_SYNCHRONIZED,
            Some(&[]),
        )),
        &["malformed", "bad marker"],
    )
    .await;
}

#[tokio::test]
async fn a_length_of_5000_is_bad_message_length() {
    check_reset(
        Hostile::Length(5000),
        Some((
            codes::MESSAGE_HEADER_ERROR,
            codes::header::BAD_MESSAGE_LENGTH,
            Some(&5000u16.to_be_bytes()),
        )),
        &["malformed", "length 5000"],
    )
    .await;
}

#[tokio::test]
async fn a_length_of_10_is_bad_message_length() {
    check_reset(
        Hostile::Length(10),
        Some((
            codes::MESSAGE_HEADER_ERROR,
            codes::header::BAD_MESSAGE_LENGTH,
            Some(&10u16.to_be_bytes()),
        )),
        &["malformed", "length 10"],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_message_type_is_bad_message_type() {
    check_reset(
        Hostile::UnknownType,
        Some((
            codes::MESSAGE_HEADER_ERROR,
            codes::header::BAD_MESSAGE_TYPE,
            Some(&[9]),
        )),
        &["malformed", "unknown message type 9"],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_optional_parameter_is_unsupported_optional_parameter() {
    check_reset(
        Hostile::UnknownParameter,
        Some((
            codes::OPEN_MESSAGE_ERROR,
            codes::open::UNSUPPORTED_OPTIONAL_PARAMETER,
            None,
        )),
        &["malformed", "OPEN", "parameter 42"],
    )
    .await;
}

#[tokio::test]
async fn the_wrong_as_is_bad_peer_as() {
    check_reset(
        Hostile::WrongAs,
        Some((codes::OPEN_MESSAGE_ERROR, codes::open::BAD_PEER_AS, None)),
        &["AS is 65099", "configured peerASN is 65000"],
    )
    .await;
}

#[tokio::test]
async fn hold_time_1_is_unacceptable_hold_time() {
    check_reset(
        Hostile::HoldTimeOne,
        Some((
            codes::OPEN_MESSAGE_ERROR,
            codes::open::UNACCEPTABLE_HOLD_TIME,
            None,
        )),
        &["hold time 1"],
    )
    .await;
}

#[tokio::test]
async fn an_administrative_shutdown_is_not_answered_and_its_message_is_kept() {
    check_reset(
        Hostile::AdministrativeShutdown,
        None,
        &["Administrative Shutdown", SHUTDOWN_MESSAGE],
    )
    .await;
}

#[tokio::test]
async fn a_garbage_update_is_malformed_attribute_list() {
    // RFC 4271 6.3: Withdrawn Routes Length + Total Attribute Length + 23 above the message
    // length is a Malformed Attribute List.
    check_reset(
        Hostile::GarbageUpdate,
        Some((codes::UPDATE_MESSAGE_ERROR, 1, None)),
        &["malformed", "UPDATE"],
    )
    .await;
}

#[tokio::test]
async fn a_connection_closed_mid_message_is_not_answered() {
    check_reset(
        Hostile::ClosedMidMessage,
        None,
        &["closed in Established", "the peer closed the connection"],
    )
    .await;
}

#[tokio::test]
async fn an_unknown_capability_is_ignored() {
    let run = run_hostile(Hostile::UnknownCapability).await;
    assert!(
        run.outcome.closed.is_none(),
        "the speaker closed a session whose OPEN had an unknown capability: {:?}\n{}",
        run.outcome,
        run.logs
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(!run.logs.contains("BGP session failed"), "{}", run.logs);
    assert_eq!(run.final_report.state, State::Established);
    assert_eq!(run.final_report.prefixes_sent, 3);
}

#[tokio::test]
async fn a_keepalive_flood_is_just_traffic() {
    let run = run_hostile(Hostile::KeepaliveFlood).await;
    let outcome = &run.outcome;
    assert!(
        outcome.closed.is_none(),
        "the speaker closed the session after {FLOOD} KEEPALIVEs: {:?}\n{}",
        outcome.after,
        run.logs
    );
    assert!(
        outcome.after.iter().all(|m| m.kind == KEEPALIVE),
        "{:?}",
        outcome.after
    );
    // Its own KEEPALIVEs went on (every 3 s with hold time 9): the task was not stuck.
    assert!(
        !outcome.after.is_empty(),
        "no KEEPALIVE from the speaker in 3 s"
    );
    assert!(run.errors.is_empty(), "{:?}", run.errors);
    assert!(!run.logs.contains("BGP session failed"), "{}", run.logs);
    assert_eq!(run.final_report.state, State::Established);
}

// ---------------------------------------------------------------------------------------------
// UPDATE packing and End-of-RIB

/// Reads UPDATEs until `until` says stop; returns them. Every message must be an UPDATE.
async fn read_updates(conn: &mut Conn, mut until: impl FnMut(&Msg) -> bool) -> Vec<Msg> {
    let mut updates = Vec::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), conn.read())
            .await
            .expect("no UPDATE from the speaker for 10 s")
            .expect("the speaker closed the session");
        if msg.kind == KEEPALIVE {
            continue;
        }
        assert_eq!(msg.kind, UPDATE, "{msg:?}");
        let stop = until(&msg);
        updates.push(msg);
        if stop {
            return updates;
        }
    }
}

/// Checks the UPDATEs of `wanted` /32s with one attribute set: every one at most 4096 bytes,
/// ORIGIN IGP, AS_PATH of the node's ASN (4 bytes), NEXT_HOP 127.0.0.1, nothing withdrawn,
/// every prefix once; every UPDATE but the last too full to take another /32. Returns how
/// many /32s fit in one UPDATE.
fn check_packing(updates: &[Msg], wanted: &[IpNet]) -> usize {
    let mut got = Vec::new();
    let mut per_update = 0;
    for (index, update) in updates.iter().enumerate() {
        let len = 19 + update.body.len();
        assert!(len <= 4096, "UPDATE {index} has {len} bytes");
        let (withdrawn, attrs, nlri) = update.update();
        assert!(withdrawn.is_empty());
        let mut as_path = vec![2, 1]; // AS_SEQUENCE of one ASN
        as_path.extend_from_slice(&NODE_ASN.to_be_bytes());
        assert_eq!(
            attrs,
            [
                (1, vec![0]),
                (2, as_path),
                (3, Ipv4Addr::LOCALHOST.octets().to_vec())
            ],
            "UPDATE {index}'s attributes"
        );
        let attrs_len = update.body.len() - 4 - 5 * nlri.len();
        per_update = (4096 - 19 - 4 - attrs_len) / 5;
        if index + 1 < updates.len() {
            assert_eq!(
                nlri.len(),
                per_update,
                "UPDATE {index} is not full ({len} bytes)"
            );
        }
        got.extend(nlri);
    }
    assert_eq!(
        got.len(),
        wanted.len(),
        "a prefix was sent twice or not at all"
    );
    got.sort();
    assert_eq!(got, wanted);
    per_update
}

#[tokio::test]
async fn five_thousand_routes_are_packed_into_full_updates_and_a_new_session_gets_them_then_end_of_rib()
 {
    const ROUTES: usize = 5_000;
    let (logs, _guard) = Logs::capture();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut speaker = Speaker::new(SpeakerMetrics::default(), Arc::default());
    speaker.set_peers(vec![setup("tor", port)]);
    let (mut conn, _) = accept(&listener, Duration::from_secs(5)).await;
    conn.handshake().await;
    // Nothing to announce yet: End-of-RIB alone.
    let first = conn.read().await.expect("End-of-RIB");
    assert!(first.is_end_of_rib(), "{first:?}");
    assert_eq!(report(&speaker.reports(), "tor").state, State::Established);

    let wanted = host_routes(ROUTES);
    let peer_routes = [("tor".to_string(), routes(wanted.clone()))].into();
    let set_at = Instant::now();
    speaker.set_routes(&peer_routes);
    let mut count = 0;
    let updates = read_updates(&mut conn, |msg| {
        count += msg.update().2.len();
        count >= ROUTES
    })
    .await;
    let took = set_at.elapsed();
    let per_update = check_packing(&updates, &wanted);
    // 4096 bytes less header (19), two length fields (4), ORIGIN (4), AS_PATH (9), NEXT_HOP (7):
    // 4053 bytes, 810 /32s of 5 bytes each.
    assert_eq!(per_update, 810);
    assert_eq!(updates.len(), ROUTES.div_ceil(per_update));
    assert_eq!(updates.len(), 7);
    let after = report(&speaker.reports(), "tor").clone();
    assert_eq!(after.prefixes_sent, ROUTES);
    assert_eq!(after.updates_sent, 1 + 7, "End-of-RIB, then the 7 UPDATEs");
    eprintln!(
        "{ROUTES} routes on an Established session: {} UPDATEs ({per_update} /32s each), the \
         last received {took:?} after set_routes",
        updates.len()
    );

    // The router resets the session (Cease / Administrative Reset): the speaker connects again
    // after 1 s and sends the whole table, then End-of-RIB, and nothing else.
    conn.send(&notification(6, 4, &[])).await;
    let (after_reset, closed) = conn.until_closed(Duration::from_secs(2)).await;
    assert!(
        closed.is_some() && after_reset.is_empty(),
        "{after_reset:?}"
    );
    let (mut conn, reconnected) = accept(&listener, Duration::from_secs(5)).await;
    let backoff = reconnected - closed.unwrap();
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(1600)).contains(&backoff),
        "connected again after {backoff:?}"
    );
    let up = Instant::now();
    conn.handshake().await;
    let mut table = read_updates(&mut conn, Msg::is_end_of_rib).await;
    let took = up.elapsed();
    let end_of_rib = table.pop().expect("End-of-RIB");
    assert!(end_of_rib.is_end_of_rib());
    check_packing(&table, &wanted);
    assert_eq!(table.len(), 7, "the full table before End-of-RIB");
    let (late, closed) = conn.until_closed(Duration::from_millis(500)).await;
    assert!(
        closed.is_none() && late.iter().all(|m| m.kind == KEEPALIVE),
        "after End-of-RIB: {late:?}"
    );
    let text = logs.text();
    assert!(
        text.contains("BGP session failed") && text.contains("Cease / Administrative Reset (6/4)"),
        "{text}"
    );
    eprintln!(
        "new session: {} UPDATEs then End-of-RIB, {took:?} after the connection was accepted",
        table.len()
    );
    speaker.shutdown(Duration::from_secs(3)).await;
}

// ---------------------------------------------------------------------------------------------
// A peer that stops reading

/// A router that completes the handshake and then reads nothing more: once the socket buffers
/// are full, the speaker's writes wait, and after 15 s it gives the session up with an error
/// that says so, instead of stalling the session's task forever. The other session is not
/// affected.
#[tokio::test]
async fn a_peer_that_stops_reading_loses_its_session_not_the_speaker() {
    let healthy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deaf_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let healthy_port = healthy_listener.local_addr().unwrap().port();
    let deaf_port = deaf_listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = accept(&healthy_listener, Duration::from_secs(60)).await;
            conn.handshake().await;
            conn.serve(Arc::default()).await;
        }
    });
    let (deaf_tx, deaf_rx) = oneshot::channel::<Conn>();
    tokio::spawn(async move {
        let (mut conn, _) = accept(&deaf_listener, Duration::from_secs(10)).await;
        conn.handshake().await;
        // Keep the connection open, read nothing.
        let _ = deaf_tx.send(conn);
        std::future::pending::<()>().await;
    });
    let mut speaker = Speaker::new(SpeakerMetrics::default(), Arc::default());
    speaker.set_peers(vec![
        setup("healthy", healthy_port),
        setup("deaf", deaf_port),
    ]);
    let _deaf = tokio::time::timeout(Duration::from_secs(10), deaf_rx)
        .await
        .expect("the deaf router's handshake")
        .unwrap();
    // Flip between two tables of 5,000 routes: every flip is ~56 kB of UPDATEs, until the
    // buffers between the speaker and the deaf router are full.
    let a = host_routes(5_000);
    let b = host_routes(10_000)[5_000..].to_vec();
    let start = Instant::now();
    let mut flips = 0;
    let failed = loop {
        let table = if flips % 2 == 0 { &a } else { &b };
        let peer_routes = ["healthy", "deaf"]
            .into_iter()
            .map(|peer| (peer.to_string(), routes(table.clone())))
            .collect();
        speaker.set_routes(&peer_routes);
        flips += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reports = speaker.reports();
        let deaf = report(&reports, "deaf");
        if let Some(error) = deaf
            .last_error
            .clone()
            .filter(|e| e.contains("stopped reading"))
        {
            break error;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the speaker did not give the deaf session up after {flips} flips: {deaf:?}"
        );
    };
    eprintln!(
        "gave the deaf session up after {:?} and {flips} flips: {failed}",
        start.elapsed()
    );
    let reports = speaker.reports();
    assert_ne!(report(&reports, "deaf").state, State::Established);
    assert_eq!(report(&reports, "healthy").state, State::Established);
    speaker.shutdown(Duration::from_secs(5)).await;
}
