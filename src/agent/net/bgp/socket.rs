//! The TCP connection to a BGP peer: a socket2 socket with the options a session needs set
//! before the SYN leaves (TCP MD5 signature, TTL or hop limit, source address, no Nagle),
//! then a non-blocking connect awaited by tokio with a timeout. Nothing here blocks a runtime
//! thread.
//!
//! The socket belongs to the network namespace of the thread that calls [`connect`].

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::core::category::Category;

/// The longest TCP MD5 key Linux accepts (TCP_MD5SIG_MAXKEYLEN).
pub const MD5_MAX_KEY_LEN: usize = 80;

/// How to reach one peer.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerSocketConfig {
    /// Address and port (179) of the peer.
    pub peer: SocketAddr,
    /// Local address to connect from (its family must be the peer's); any when `None`.
    pub source: Option<IpAddr>,
    /// IP TTL (IPv4) or hop limit (IPv6) of the session's packets: 1 for a directly
    /// connected peer, more for eBGP multi-hop, 255 for GTSM.
    pub ttl: u8,
    /// TCP MD5 signature key (RFC 2385), 1 to 80 bytes.
    pub md5_password: Option<Vec<u8>>,
    /// How long to wait for the TCP handshake.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for PeerSocketConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSocketConfig")
            .field("peer", &self.peer)
            .field("source", &self.source)
            .field("ttl", &self.ttl)
            // The password never goes to logs.
            .field("md5_password", &self.md5_password.as_ref().map(|_| "<set>"))
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Why a connection to a peer could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BgpSocketError {
    /// A system call failed; `step` says which ("setting the TCP MD5 password", ...).
    #[error("{step} for {peer}: {source}")]
    Io {
        peer: SocketAddr,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// The configuration cannot work (a password of the wrong length, a source address of
    /// the other family).
    #[error("peer {peer}: {reason}")]
    Config { peer: SocketAddr, reason: String },
    /// The handshake did not finish in time (a peer that is down, filtered, or drops our
    /// SYNs because the MD5 password does not match).
    #[error("connecting to {peer}: no TCP handshake within {timeout:?}")]
    Timeout { peer: SocketAddr, timeout: Duration },
}

impl Category for BgpSocketError {
    fn category(&self) -> &'static str {
        match self {
            BgpSocketError::Io { .. } => "bgp_socket",
            BgpSocketError::Config { .. } => "bgp_config",
            BgpSocketError::Timeout { .. } => "bgp_connect_timeout",
        }
    }
}

/// `struct tcp_md5sig` of linux/tcp.h (libc does not define it): the peer's address, flags,
/// prefix length, key length, interface index, key.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefix_len: u8,
    key_len: u16,
    ifindex: libc::c_int,
    key: [u8; MD5_MAX_KEY_LEN],
}

/// The TCP_MD5SIG option value for `key` towards `peer`.
fn md5_signature(peer: SocketAddr, key: &[u8]) -> TcpMd5Sig {
    // SAFETY: every field is an integer or an array of them, for which zero is valid.
    let mut sig: TcpMd5Sig = unsafe { mem::zeroed() };
    let addr = SockAddr::from(peer);
    let len = (addr.len() as usize).min(mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: `addr` holds `addr.len()` initialised bytes of a sockaddr, at most the size of
    // the sockaddr_storage they are copied into; the two do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            addr.as_ptr().cast::<u8>(),
            (&raw mut sig.addr).cast::<u8>(),
            len,
        );
    }
    sig.key_len = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    sig
}

fn set_md5(socket: &Socket, sig: &TcpMd5Sig) -> io::Result<()> {
    // SAFETY: `sig` is a valid, initialised tcp_md5sig for the duration of the call and its
    // size is passed along; the descriptor is open for as long as `socket` lives.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (sig as *const TcpMd5Sig).cast(),
            mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The socket with every option set and the source bound, not yet connected. Never blocks.
fn prepare(cfg: &PeerSocketConfig) -> Result<Socket, BgpSocketError> {
    let peer = cfg.peer;
    let io_error = |step: &'static str| move |source| BgpSocketError::Io { peer, step, source };
    let config_error = |reason: String| BgpSocketError::Config { peer, reason };
    if let Some(key) = &cfg.md5_password
        && !(1..=MD5_MAX_KEY_LEN).contains(&key.len())
    {
        return Err(config_error(format!(
            "the TCP MD5 password is {} bytes; it must be 1 to {MD5_MAX_KEY_LEN}",
            key.len()
        )));
    }
    if let Some(source) = cfg.source
        && source.is_ipv4() != peer.is_ipv4()
    {
        return Err(config_error(format!(
            "source address {source} is not of the peer's address family"
        )));
    }
    let socket = Socket::new(
        Domain::for_address(peer),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(io_error("creating a TCP socket"))?;
    // Before connect: the SYN itself must be signed.
    if let Some(key) = &cfg.md5_password {
        set_md5(&socket, &md5_signature(peer, key))
            .map_err(io_error("setting the TCP MD5 password"))?;
    }
    match peer {
        SocketAddr::V4(_) => socket
            .set_ttl_v4(u32::from(cfg.ttl))
            .map_err(io_error("setting the IP TTL"))?,
        SocketAddr::V6(_) => socket
            .set_unicast_hops_v6(u32::from(cfg.ttl))
            .map_err(io_error("setting the IPv6 hop limit"))?,
    }
    socket
        .set_tcp_nodelay(true)
        .map_err(io_error("setting TCP_NODELAY"))?;
    if let Some(source) = cfg.source {
        socket
            .bind(&SockAddr::from(SocketAddr::new(source, 0)))
            .map_err(io_error("binding the source address"))?;
    }
    Ok(socket)
}

/// Connects to the peer: options set before the handshake, then a non-blocking connect
/// awaited for at most `connect_timeout`. Must be called within a tokio runtime.
pub async fn connect(cfg: &PeerSocketConfig) -> Result<TcpStream, BgpSocketError> {
    let peer = cfg.peer;
    let socket = prepare(cfg)?;
    // The socket is non-blocking already, as tokio requires; tokio runs the connect.
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    match tokio::time::timeout(cfg.connect_timeout, socket.connect(peer)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(BgpSocketError::Io {
            peer,
            step: "opening the TCP connection",
            source,
        }),
        Err(_) => Err(BgpSocketError::Timeout {
            peer,
            timeout: cfg.connect_timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(peer: &str) -> PeerSocketConfig {
        PeerSocketConfig {
            peer: peer.parse().unwrap(),
            source: None,
            ttl: 1,
            md5_password: None,
            connect_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn md5_option_has_the_kernel_layout() {
        assert_eq!(mem::size_of::<TcpMd5Sig>(), 216);
        let sig = md5_signature("192.0.2.1:179".parse().unwrap(), b"secret");
        assert_eq!(sig.key_len, 6);
        assert_eq!(&sig.key[..6], b"secret");
        assert_eq!(sig.addr.ss_family, libc::AF_INET as libc::sa_family_t);
        let sig = md5_signature("[2001:db8::1]:179".parse().unwrap(), &[7; 80]);
        assert_eq!(sig.addr.ss_family, libc::AF_INET6 as libc::sa_family_t);
        assert_eq!(sig.key_len, 80);
    }

    #[test]
    fn bad_configurations_are_refused_before_any_socket() {
        let mut long = cfg("192.0.2.1:179");
        long.md5_password = Some(vec![b'x'; 81]);
        let error = prepare(&long).unwrap_err();
        assert_eq!(
            error.to_string(),
            "peer 192.0.2.1:179: the TCP MD5 password is 81 bytes; it must be 1 to 80"
        );
        assert_eq!(error.category(), "bgp_config");
        let mut empty = cfg("192.0.2.1:179");
        empty.md5_password = Some(Vec::new());
        assert!(prepare(&empty).is_err());
        let mut mixed = cfg("[2001:db8::1]:179");
        mixed.source = Some("192.0.2.11".parse().unwrap());
        let error = prepare(&mixed).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("not of the peer's address family"),
            "{error}"
        );
        assert!(!format!("{long:?}").contains("xxx"));
    }

    /// Loopback in the test's own namespace: a listener, a connection with every option
    /// (MD5 on both ends), and a refused one.
    #[tokio::test]
    async fn connects_on_loopback_with_options() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut config = cfg(&format!("127.0.0.1:{port}"));
        config.source = Some("127.0.0.1".parse().unwrap());
        config.ttl = 255;
        let (stream, accepted) = tokio::join!(connect(&config), listener.accept());
        let stream = stream.unwrap();
        accepted.unwrap();
        assert!(stream.nodelay().unwrap());
        assert_eq!(stream.local_addr().unwrap().ip(), config.source.unwrap());

        // MD5 on both sides: the listener needs the key for the client's address.
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&SockAddr::from(
                "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
            ))
            .unwrap();
        let server = listener.local_addr().unwrap().as_socket().unwrap();
        set_md5(
            &listener,
            &md5_signature("127.0.0.1:0".parse().unwrap(), b"pw"),
        )
        .unwrap();
        listener.listen(4).unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener.into()).unwrap();
        let mut signed = cfg(&server.to_string());
        signed.md5_password = Some(b"pw".to_vec());
        let (stream, accepted) = tokio::join!(connect(&signed), listener.accept());
        stream.unwrap();
        accepted.unwrap();
        // A wrong key: the listener drops the SYNs, the connect times out.
        signed.md5_password = Some(b"wrong".to_vec());
        signed.connect_timeout = Duration::from_millis(700);
        let error = connect(&signed).await.unwrap_err();
        assert!(matches!(error, BgpSocketError::Timeout { .. }), "{error}");

        drop(listener);
        let error = connect(&cfg(&server.to_string())).await.unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("opening the TCP connection for {server}: ")),
            "{error}"
        );
    }
}
