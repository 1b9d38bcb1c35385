//! The [`Hub`](super::Hub)'s commands: sending, replying, requests and pings to
//! one peer, broadcasts, and closing one peer or all.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::connection::Connection;
use crate::error::SendError;
use crate::frame::{EncodedFrame, MessageType};

use super::types::{Broadcast, PeerId, Target};
use super::Hub;

impl Hub {
    // ---------------------------------------------------------------- commands

    fn with_conn<T>(
        &mut self,
        peer: PeerId,
        f: impl FnOnce(&mut Connection) -> Result<T, SendError>,
    ) -> Result<T, SendError> {
        let p = self.peer_mut(peer).ok_or(SendError::NotConnected)?;
        if p.conn.is_handshaking() {
            return Err(SendError::NotConnected);
        }
        let r = f(&mut p.conn);
        self.touch(peer);
        r
    }

    /// Sends a message to one peer (see [`Connection::send`]).
    ///
    /// # Errors
    /// [`SendError::NotConnected`] for an unknown or handshaking peer, else the connection's refusal.
    pub fn send(
        &mut self,
        peer: PeerId,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, SendError> {
        self.with_conn(peer, |c| c.send(t, payload))
    }

    /// Sends a message of any type, reserved ones included.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn send_system(
        &mut self,
        peer: PeerId,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, SendError> {
        self.with_conn(peer, |c| c.send_system(t, payload))
    }

    /// Answers a request of `peer` with its id.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn reply(
        &mut self,
        peer: PeerId,
        request_id: u16,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.with_conn(peer, |c| c.reply(request_id, t, payload))
    }

    /// Sends a request to one peer; only that peer's frame with the same id
    /// answers it ([`HubEvent::Completed`](super::HubEvent::Completed)).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn request(
        &mut self,
        peer: PeerId,
        now: Instant,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<u16, SendError> {
        self.advance(now);
        self.with_conn(peer, |c| c.request(now, t, payload, timeout))
    }

    /// PINGs one peer.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn ping(
        &mut self,
        peer: PeerId,
        now: Instant,
        timeout: Duration,
    ) -> Result<u16, SendError> {
        self.advance(now);
        self.with_conn(peer, |c| c.ping(now, timeout))
    }

    /// Forgets a pending request to `peer` (its waiter went away).
    pub fn cancel_request(&mut self, peer: PeerId, request_id: u16) -> bool {
        self.peer_mut(peer)
            .is_some_and(|p| p.conn.cancel_request(request_id))
    }

    /// One frame, encoded once with one id from the server's window (as
    /// Veltix does), queued on every targeted connected peer.
    ///
    /// # Errors
    /// [`SendError::ReservedType`] below 200, [`SendError::PayloadTooLarge`].
    pub fn broadcast(
        &mut self,
        t: MessageType,
        payload: &[u8],
        target: Target<'_>,
    ) -> Result<Broadcast, SendError> {
        if t.is_system() {
            return Err(SendError::ReservedType(t));
        }
        let request_id = self.broadcast_ids.allocate(|_| false).unwrap_or(0);
        let frame = EncodedFrame::new(t, request_id, payload)?;
        let targets: Vec<PeerId> = match target {
            Target::All => self.peers().collect(),
            Target::Except(ex) => self.peers().filter(|p| !ex.contains(p)).collect(),
            Target::Only(only) => {
                let mut v: Vec<PeerId> = only
                    .iter()
                    .copied()
                    .filter(|&p| self.is_connected(p))
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            }
            Target::Tag(name, value) => self.peers_by_tag(name, value),
        };
        let mut out = Broadcast {
            request_id,
            ..Broadcast::default()
        };
        for id in targets {
            match self.with_conn(id, |c| c.send_encoded(&frame)) {
                Ok(()) => out.sent += 1,
                Err(e) => {
                    out.skipped += 1;
                    tracing::debug!(peer = %id, error = %e, "broadcast skipped a peer");
                }
            }
        }
        Ok(out)
    }

    /// Closes one peer gracefully at `now` (queued output drains within the
    /// flush deadline). `false` if unknown or already closed.
    pub fn close(&mut self, peer: PeerId, now: Instant) -> bool {
        self.advance(now);
        let Some(p) = self.peer_mut(peer) else {
            return false;
        };
        if p.conn.is_closed() {
            return false;
        }
        p.conn.close(now);
        self.touch(peer);
        true
    }

    /// Closes every peer, handshaking ones included; returns how many.
    pub fn close_all(&mut self, now: Instant) -> usize {
        let ids: Vec<PeerId> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.peer.as_ref().map(|_| PeerId {
                    index: i as u32,
                    generation: s.generation,
                })
            })
            .collect();
        ids.into_iter().filter(|&id| self.close(id, now)).count()
    }
}
