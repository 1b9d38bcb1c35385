//! The [`Connection`](super::Connection)'s commands: sends, replies, requests
//! and pings with their checks, closing, and the paths that end a connection.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::correlation::RequestKind;
use crate::error::SendError;
use crate::event::{CloseReason, Event, RequestFailure};
use crate::frame::{EncodedFrame, Header, MessageType, HEADER_LEN};

use super::{after, Connection, State};

impl Connection {
    // ---------------------------------------------------------------- commands

    fn check_send(&self, payload_len: usize) -> Result<(), SendError> {
        match &self.state {
            State::Closed(r) => return Err(SendError::Closed(r.clone())),
            State::Closing(r) => return Err(SendError::Closed(r.clone())),
            State::Handshaking(_) => return Err(SendError::NotConnected),
            State::Established => {}
        }
        let queued = self.queued_bytes();
        if queued > 0 && queued + HEADER_LEN + payload_len > self.config.max_outbound {
            return Err(SendError::QueueFull {
                queued,
                limit: self.config.max_outbound,
            });
        }
        Ok(())
    }

    fn check_type(t: MessageType) -> Result<(), SendError> {
        if t.is_system() {
            return Err(SendError::ReservedType(t));
        }
        Ok(())
    }

    /// Output is being queued: start the write deadline if idle. (Called
    /// before or after the push: `stalled_since` is `None` exactly while
    /// nothing is queued, so it must not test `queued_bytes`, which the
    /// handshake path has already grown.)
    pub(super) fn note_queued(&mut self) {
        if self.stalled_since.is_none() {
            self.stalled_since = Some(self.now);
        }
    }

    fn enqueue(&mut self, t: MessageType, id: u16, payload: &Bytes) -> Result<(), SendError> {
        self.check_send(payload.len())?;
        self.enqueue_checked(t, id, payload)
    }

    /// `enqueue` for callers that already ran `check_send`.
    fn enqueue_checked(
        &mut self,
        t: MessageType,
        id: u16,
        payload: &Bytes,
    ) -> Result<(), SendError> {
        let h = Header::for_payload(t, id, payload)?;
        self.note_queued();
        self.out.push_frame(&h, payload);
        self.stats.frames_out += 1;
        Ok(())
    }

    fn next_id(&mut self) -> Result<u16, SendError> {
        let pending = &self.pending;
        Ok(self.ids.allocate(|id| pending.contains(id))?)
    }

    /// Sends a message with the next free id, which is returned (Veltix's `send`).
    ///
    /// # Errors
    /// [`SendError::ReservedType`] for a type below 200 (use
    /// [`send_system`](Self::send_system) for those), else see
    /// [`SendError`]; nothing is queued on error.
    pub fn send(
        &mut self,
        message_type: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, SendError> {
        Self::check_type(message_type)?;
        self.send_system(message_type, payload)
    }

    /// Like [`send`](Self::send), for any type, reserved ones included (the
    /// protocol's own range, `0..200`: for tests and tools, not applications).
    ///
    /// # Errors
    /// See [`SendError`]; nothing is queued on error.
    pub fn send_system(
        &mut self,
        message_type: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, SendError> {
        let payload = payload.into();
        self.check_send(payload.len())?;
        let id = self.next_id()?;
        self.enqueue_checked(message_type, id, &payload)?;
        Ok(id)
    }

    /// Sends a message with an explicit id.
    ///
    /// # Errors
    /// See [`send`](Self::send); nothing is queued on error.
    pub fn send_with_id(
        &mut self,
        message_type: MessageType,
        request_id: u16,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        Self::check_type(message_type)?;
        self.enqueue(message_type, request_id, &payload.into())
    }

    /// Answers a request: sends with the request's id (any user type will do).
    ///
    /// # Errors
    /// See [`send`](Self::send); nothing is queued on error.
    pub fn reply(
        &mut self,
        request_id: u16,
        message_type: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.send_with_id(message_type, request_id, payload)
    }

    /// Queues a frame encoded once for many connections (a broadcast).
    ///
    /// # Errors
    /// See [`SendError`]; nothing is queued on error.
    pub fn send_encoded(&mut self, frame: &EncodedFrame) -> Result<(), SendError> {
        self.check_send(frame.payload_len())?;
        self.note_queued();
        self.out.push_raw(frame.bytes().clone());
        self.stats.frames_out += 1;
        Ok(())
    }

    /// Sends a request and waits for the first frame carrying its id
    /// (Veltix's `send_and_wait`). The reply arrives as [`Event::Response`];
    /// if none comes within `timeout`, [`Event::RequestFailed`] does.
    ///
    /// # Errors
    /// See [`send`](Self::send); nothing is queued and nothing is pending on error.
    pub fn request(
        &mut self,
        now: Instant,
        message_type: MessageType,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<u16, SendError> {
        self.advance(now);
        Self::check_type(message_type)?;
        let payload = payload.into();
        self.check_send(payload.len())?;
        let id = self.next_id()?;
        self.enqueue_checked(message_type, id, &payload)?;
        self.pending
            .insert(id, RequestKind::Request, self.now, timeout);
        Ok(id)
    }

    /// Like [`request`](Self::request) with a caller-chosen id.
    ///
    /// # Errors
    /// [`SendError::IdInUse`] if `request_id` is pending, else see [`send`](Self::send).
    pub fn request_with_id(
        &mut self,
        now: Instant,
        message_type: MessageType,
        request_id: u16,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.advance(now);
        Self::check_type(message_type)?;
        if self.pending.contains(request_id) {
            return Err(SendError::IdInUse(request_id));
        }
        self.enqueue(message_type, request_id, &payload.into())?;
        self.pending
            .insert(request_id, RequestKind::Request, self.now, timeout);
        Ok(())
    }

    /// Sends a PING; the reply arrives as [`Event::Pong`] with the round-trip
    /// time measured on the caller's clock, or [`Event::RequestFailed`] after `timeout`.
    ///
    /// # Errors
    /// See [`SendError`].
    pub fn ping(&mut self, now: Instant, timeout: Duration) -> Result<u16, SendError> {
        self.advance(now);
        self.check_send(0)?;
        let id = self.next_id()?;
        self.enqueue_checked(MessageType::PING, id, &Bytes::new())?;
        self.pending
            .insert(id, RequestKind::Ping, self.now, timeout);
        Ok(id)
    }

    /// Forgets a pending request without an event (its waiter went away).
    /// Returns whether it was pending. A late reply then arrives as a plain
    /// [`Event::Message`].
    pub fn cancel_request(&mut self, request_id: u16) -> bool {
        self.pending.resolve(request_id).is_some()
    }

    /// Closes the connection at `now`. Output queued before the close still
    /// drains through `poll_transmit` until it is all written or
    /// `flush_timeout` passes (a graceful close); nothing new is generated
    /// and input is ignored. Pending requests fail with [`CloseReason::Local`]
    /// at once; [`Event::Closed`] comes when the output is done, with the
    /// bytes that could not be written.
    pub fn close(&mut self, now: Instant) {
        self.advance(now);
        if self.is_closed() {
            return;
        }
        self.fail_pending(&CloseReason::Local);
        self.handshake_deadline = None;
        self.body_since = None;
        self.decoder.clear();
        if self.queued_bytes() == 0 {
            self.finish(CloseReason::Local, 0);
        } else {
            tracing::debug!(side = ?self.side, queued = self.queued_bytes(), "closing: flushing");
            self.state = State::Closing(CloseReason::Local);
            self.flush_deadline = Some(after(self.now, self.config.flush_timeout));
        }
    }

    /// Ends the connection at once with `reason` (queued output is
    /// dropped): for an owner enforcing a limit that spans connections.
    pub(crate) fn abort(&mut self, now: Instant, reason: CloseReason) {
        self.advance(now);
        self.terminate(reason);
    }

    pub(super) fn fail_pending(&mut self, reason: &CloseReason) {
        let failed: Vec<_> = self.pending.drain().collect();
        for (request_id, p) in failed {
            self.push_event(Event::RequestFailed {
                request_id,
                kind: p.kind,
                reason: RequestFailure::Closed(reason.clone()),
            });
        }
    }

    /// Ends the connection at once; queued output is dropped and reported.
    pub(super) fn terminate(&mut self, reason: CloseReason) {
        if self.is_finished() {
            return;
        }
        self.fail_pending(&reason);
        let unsent = self.queued_bytes();
        self.finish(reason, unsent);
    }

    pub(super) fn finish(&mut self, reason: CloseReason, unsent_bytes: usize) {
        if unsent_bytes > 0 {
            tracing::warn!(side = ?self.side, unsent_bytes, %reason, "closed with unsent data");
        } else {
            tracing::debug!(side = ?self.side, %reason, "closed");
        }
        self.out.clear();
        self.in_flight = 0;
        self.stalled_since = None;
        self.body_since = None;
        self.flush_deadline = None;
        self.handshake_deadline = None;
        // Free the receive buffer; the counters stay readable after the close.
        self.decoder.clear();
        self.state = State::Closed(reason.clone());
        self.push_event(Event::Closed {
            reason,
            unsent_bytes,
        });
    }
}
