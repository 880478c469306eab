//! NETLINK_ROUTE for the node's links and addresses: the socket is netlink-sys's, the messages
//! are netlink-packet-route's (the message layer `rtnetlink` is built on).
//!
//! Every call here blocks (a request waits for the kernel, which takes the RTNL lock). They run
//! only on the agent's own threads, the announcer's engine and the link watcher, never on the
//! async runtime (docs/agent.md, "Threads"). That is also why this is not `rtnetlink`: its
//! connection is an async task that owns the socket, and the link watcher must see a multicast
//! overrun (`ENOBUFS`) itself, as "read everything again".

use std::io;
use std::time::Duration;

use netlink_packet_core::{
    DecodeError, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// A request never waits long for the kernel; bound it anyway.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Large enough for any datagram the kernel sends on NETLINK_ROUTE.
const BUFFER_LEN: usize = 64 * 1024;
const HEADER_LEN: usize = 16;

/// A NETLINK_ROUTE socket of the calling thread's network namespace.
pub(crate) struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

impl Netlink {
    /// Opens a socket subscribed to the multicast `groups` (`RTMGRP_*`; 0 for requests only).
    /// Receiving blocks for at most two seconds.
    pub(crate) fn open(groups: u32) -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, groups))?;
        socket2::SockRef::from(&socket).set_read_timeout(Some(RECEIVE_TIMEOUT))?;
        Ok(Netlink {
            socket,
            seq: 1,
            buf: vec![0; BUFFER_LEN],
        })
    }

    /// Receives one datagram (`flags` such as `MSG_DONTWAIT`); an overrun is `ENOBUFS`.
    pub(crate) fn recv(&mut self, flags: libc::c_int) -> io::Result<&[u8]> {
        let n = self.socket.recv(&mut &mut self.buf[..], flags)?;
        Ok(&self.buf[..n.min(BUFFER_LEN)])
    }

    /// Sends one request and collects the messages that answer it. Dumps end at NLMSG_DONE;
    /// other requests ask for an acknowledgement, and a negative one is the errno.
    pub(crate) fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = flags | NLM_F_REQUEST | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let mut out = Vec::new();
        loop {
            let datagram = self.recv(0)?;
            for message in messages(datagram) {
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        // One message the library cannot read; the rest of the answer stands.
                        tracing::debug!(error = %e, "skipping an unreadable netlink message");
                        continue;
                    }
                };
                if message.header.sequence_number != seq {
                    continue; // a late answer to an earlier request that timed out
                }
                match message.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::Error(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}

/// The message frames of one datagram: (header, whole message bytes). Stops at the first
/// frame whose length is impossible.
fn frames(mut datagram: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let buffer = NetlinkBuffer::new_checked(datagram).ok()?;
        let len = buffer.length() as usize;
        if len < HEADER_LEN {
            return None;
        }
        let kind = buffer.message_type();
        let frame = &datagram[..len];
        datagram = datagram.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, frame))
    })
}

/// The messages of one datagram, each decoded by netlink-packet-route.
pub(crate) fn messages(
    datagram: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<RouteNetlinkMessage>, DecodeError>> {
    frames(datagram).map(|(_, frame)| NetlinkMessage::deserialize(frame))
}

/// The message types of one datagram, without decoding the messages.
pub(crate) fn message_types(datagram: &[u8]) -> impl Iterator<Item = u16> {
    frames(datagram).map(|(kind, _)| kind)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One datagram holding `messages`, as the kernel frames them.
    pub(crate) fn datagram(messages: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            let mut message =
                NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(m));
            message.finalize();
            let start = out.len();
            out.resize(start + message.buffer_len(), 0);
            message.serialize(&mut out[start..]);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    #[test]
    fn frames_split_a_datagram_and_stop_at_a_lying_length() {
        use netlink_packet_route::link::LinkMessage;
        let two = datagram(vec![
            RouteNetlinkMessage::NewLink(LinkMessage::default()),
            RouteNetlinkMessage::DelLink(LinkMessage::default()),
        ]);
        let types: Vec<u16> = message_types(&two).collect();
        assert_eq!(types, [16, 17]); // RTM_NEWLINK, RTM_DELLINK
        assert_eq!(messages(&two).filter(Result::is_ok).count(), 2);
        for len in 0..two.len() {
            let _ = messages(&two[..len]).count();
        }
        let mut bad = two.clone();
        bad[0] = 0xff; // the first length now points past the end
        assert_eq!(message_types(&bad).count(), 0);
        bad[..4].copy_from_slice(&3u32.to_ne_bytes()); // shorter than a header
        assert_eq!(message_types(&bad).count(), 0);
    }
}
