//! One Veltix connection as a state machine (client or server side).
//!
//! See the [crate documentation](crate) for the calling contract and a
//! complete event loop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::correlation::{IdAllocator, PendingRequests, RequestKind, DEFAULT_ID_WINDOW};
use crate::decoder::{Decoded, Decoder, DecoderConfig, DecoderStats};
use crate::error::SendError;
use crate::event::{CloseReason, Event, RequestFailure};
use crate::frame::{EncodedFrame, Frame, Header, MessageType, HEADER_LEN};
use crate::handshake::{Handshake, HandshakeError, LocalHello, PeerHello, Progress, Side};
use crate::outbox::Outbox;

/// Default handshake deadline (Veltix's `handshake_timeout`, 5 s), applied to
/// the **whole** handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on bytes queued for sending and not yet taken by `poll_transmit`.
pub const DEFAULT_MAX_OUTBOUND: usize = 32 * 1024 * 1024;

/// Settings of a connection. Share one between many connections with an `Arc`.
///
/// ```
/// use std::time::Duration;
/// use veltix_proto::ConnectionConfig;
/// let mut config = ConnectionConfig::default();
/// config.handshake_timeout = Duration::from_secs(2);
/// config.decoder.max_message_size = 1 << 20;
/// assert_eq!(config.id_window, 30_000);
/// ```
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Receive limits, strict mode and accepted types.
    pub decoder: DecoderConfig,
    /// Deadline for the whole handshake, from the connection's creation.
    pub handshake_timeout: Duration,
    /// What we announce in our hello.
    pub hello: LocalHello,
    /// Server side: size of the request-id window (capped at 32 768).
    pub id_window: u16,
    /// Cap on queued outbound bytes; beyond it `send` fails with
    /// [`SendError::QueueFull`] and PINGs go unanswered (counted). A single
    /// frame is always accepted into an empty queue, whatever its size.
    pub max_outbound: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            decoder: DecoderConfig::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            hello: LocalHello::default(),
            id_window: DEFAULT_ID_WINDOW,
            max_outbound: DEFAULT_MAX_OUTBOUND,
        }
    }
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Bytes given to `handle_input`.
    pub bytes_in: u64,
    /// Bytes handed out by `poll_transmit`.
    pub bytes_out: u64,
    /// Frames received intact (PINGs included).
    pub frames_in: u64,
    /// Frames queued for sending (PONGs included).
    pub frames_out: u64,
    /// PINGs left unanswered because the outbound queue was full.
    pub pongs_dropped: u64,
    /// The decoder's counters.
    pub decoder: DecoderStats,
}

#[derive(Debug)]
enum State {
    Handshaking(Box<Handshake>),
    Established,
    Closed(CloseReason),
}

/// A Veltix connection: handshake, framing, correlation and ping, without I/O.
///
/// Methods come in four kinds:
///
/// * **getters** ([`side`](Self::side), [`is_established`](Self::is_established),
///   [`stats`](Self::stats), ...) never change anything;
/// * **input**, `handle_*`: [`handle_input`](Self::handle_input) with received
///   bytes, [`handle_timeout`](Self::handle_timeout) when the deadline from
///   `poll_timeout` has passed (extra calls are harmless),
///   [`handle_eof`](Self::handle_eof) / [`handle_transport_error`](Self::handle_transport_error)
///   when the socket ends;
/// * **commands**: [`send`](Self::send), [`request`](Self::request),
///   [`reply`](Self::reply), [`ping`](Self::ping), [`close`](Self::close), ...;
/// * **output**, `poll_*`: [`poll_transmit`](Self::poll_transmit) (bytes to
///   write, in order), [`poll_event`](Self::poll_event) (events for the
///   application) and [`poll_timeout`](Self::poll_timeout) (when to call
///   `handle_timeout`).
///
/// After any input or command, drain `poll_transmit` and `poll_event`, then
/// sleep until `poll_timeout` or the next input. `poll_timeout` returns a time
/// not after the latest `now` seen while output or events are queued, so a
/// driver that trusts it never sleeps on ready work.
#[derive(Debug)]
pub struct Connection {
    side: Side,
    config: Arc<ConnectionConfig>,
    state: State,
    handshake_deadline: Option<Instant>,
    decoder: Decoder,
    ids: IdAllocator,
    pending: PendingRequests,
    out: Outbox,
    events: VecDeque<Event>,
    peer: Option<Box<PeerHello>>,
    now: Instant,
    stats: ConnectionStats,
}

impl Connection {
    /// A new connection whose transport was opened at `now`. A server
    /// connection queues its hello at once; the handshake deadline starts now.
    pub fn new(side: Side, config: Arc<ConnectionConfig>, now: Instant) -> Self {
        let (hs, first) = match side {
            Side::Client => Handshake::client(config.hello.clone()),
            Side::Server => Handshake::server(&config.hello),
        };
        let mut out = Outbox::default();
        out.push_raw(first);
        Connection {
            side,
            handshake_deadline: now.checked_add(config.handshake_timeout),
            decoder: Decoder::new(config.decoder.clone()),
            ids: IdAllocator::for_side(side, config.id_window),
            config,
            state: State::Handshaking(Box::new(hs)),
            pending: PendingRequests::new(),
            out,
            events: VecDeque::new(),
            peer: None,
            now,
            stats: ConnectionStats::default(),
        }
    }

    /// A client connection (we dialled).
    pub fn client(config: Arc<ConnectionConfig>, now: Instant) -> Self {
        Self::new(Side::Client, config, now)
    }

    /// A server connection (we accepted). See also [`Acceptor`](crate::Acceptor),
    /// which enforces `max_connection`.
    pub fn server(config: Arc<ConnectionConfig>, now: Instant) -> Self {
        Self::new(Side::Server, config, now)
    }

    // ----------------------------------------------------------------- getters

    /// Which end we are.
    pub fn side(&self) -> Side {
        self.side
    }
    /// The configuration.
    pub fn config(&self) -> &Arc<ConnectionConfig> {
        &self.config
    }
    /// The handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, State::Handshaking(_))
    }
    /// The handshake finished and the connection is open.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }
    /// The connection is closed (no new output will be generated).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }
    /// Why it closed.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match &self.state {
            State::Closed(r) => Some(r),
            _ => None,
        }
    }
    /// The peer's hello, once the handshake is done.
    pub fn peer_hello(&self) -> Option<&PeerHello> {
        self.peer.as_deref()
    }
    /// Counters.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            decoder: *self.decoder.stats(),
            ..self.stats
        }
    }
    /// Bytes queued and not yet taken by `poll_transmit`.
    pub fn queued_bytes(&self) -> usize {
        self.out.len()
    }
    /// Requests and pings waiting for a reply.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }
    /// Whether `id` is waiting for a reply.
    pub fn is_pending(&self, id: u16) -> bool {
        self.pending.contains(id)
    }
    /// Received bytes buffered and not yet decoded.
    pub fn buffered_input(&self) -> usize {
        self.decoder.buffered()
    }

    // ------------------------------------------------------------------- input

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    /// Feeds bytes received from the peer at `now`.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.advance(now);
        if self.is_closed() || data.is_empty() {
            return;
        }
        // The deadline holds even for a driver that reads before it checks
        // its timers: late handshake bytes are not accepted.
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            self.terminate(CloseReason::Handshake(HandshakeError::TimedOut), false);
            return;
        }
        self.stats.bytes_in += data.len() as u64;
        let mut rest = data;
        if let State::Handshaking(hs) = &mut self.state {
            let out = &mut self.out;
            match hs.handle_input(data, &mut |b| out.push_raw(b)) {
                Ok(Progress::NeedMore) => return,
                Ok(Progress::Established { consumed, peer }) => {
                    tracing::debug!(side = ?self.side, peer_version = ?peer.version, "handshake done");
                    self.state = State::Established;
                    self.handshake_deadline = None;
                    self.events.push_back(Event::Connected(peer.clone()));
                    self.peer = Some(Box::new(peer));
                    rest = &data[consumed..];
                }
                Err(e) => {
                    tracing::debug!(side = ?self.side, error = %e, "handshake failed");
                    self.terminate(CloseReason::Handshake(e), false);
                    return;
                }
            }
        }
        if !rest.is_empty() {
            self.decoder.push(rest);
            self.drain_decoder();
        }
    }

    fn drain_decoder(&mut self) {
        while let Some(d) = self.decoder.next_frame() {
            match d {
                Decoded::Frame(f) => self.dispatch(f),
                Decoded::Discarded(d) => {
                    tracing::debug!(reason = ?d.reason, bytes = d.bytes, "discarded input");
                    self.events.push_back(Event::Discarded(d));
                    if self.decoder.is_failed() {
                        self.terminate(CloseReason::Protocol(d.reason), false);
                        return;
                    }
                }
            }
        }
    }

    /// Spec §5.1: PING first, then pending requests, then the application.
    fn dispatch(&mut self, f: Frame) {
        self.stats.frames_in += 1;
        if f.message_type == MessageType::PING {
            // Same admission rule as `send`: an empty queue takes any frame.
            if !self.out.is_empty() && self.out.len() + HEADER_LEN > self.config.max_outbound {
                self.stats.pongs_dropped += 1;
                tracing::warn!(side = ?self.side, request_id = f.request_id, "PING unanswered: the peer does not read");
                self.events.push_back(Event::PongDropped {
                    request_id: f.request_id,
                });
                return;
            }
            let h = Header::for_payload(MessageType::PONG, f.request_id, &[])
                .expect("empty payload fits");
            self.out.push_frame(&h, &Bytes::new());
            self.stats.frames_out += 1;
            return;
        }
        if let Some(p) = self.pending.resolve(f.request_id) {
            self.events.push_back(match p.kind {
                RequestKind::Ping => Event::Pong {
                    request_id: f.request_id,
                    rtt: self.now.saturating_duration_since(p.sent_at),
                },
                RequestKind::Request => Event::Response {
                    request_id: f.request_id,
                    frame: f,
                },
            });
            return;
        }
        self.events.push_back(Event::Message(f));
    }

    /// The peer closed its side of the transport (read returned 0).
    pub fn handle_eof(&mut self, now: Instant) {
        self.advance(now);
        let reason = if self.is_handshaking() {
            CloseReason::Handshake(HandshakeError::PeerClosed)
        } else {
            CloseReason::PeerClosed
        };
        self.terminate(reason, false);
    }

    /// The transport failed (reset, broken pipe, ...).
    pub fn handle_transport_error(&mut self, now: Instant, error: impl std::fmt::Display) {
        self.advance(now);
        self.terminate(CloseReason::Transport(error.to_string()), false);
    }

    /// Fires every deadline that is due at `now`: the handshake deadline and
    /// request/ping deadlines. Calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if self.is_closed() {
            return;
        }
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            self.terminate(CloseReason::Handshake(HandshakeError::TimedOut), false);
            return;
        }
        while let Some((request_id, p)) = self.pending.expire(now) {
            self.events.push_back(Event::RequestFailed {
                request_id,
                kind: p.kind,
                reason: RequestFailure::TimedOut,
            });
        }
    }

    // ---------------------------------------------------------------- commands

    fn check_send(&self, payload_len: usize) -> Result<(), SendError> {
        match &self.state {
            State::Closed(r) => return Err(SendError::Closed(r.clone())),
            State::Handshaking(_) => return Err(SendError::NotConnected),
            State::Established => {}
        }
        let queued = self.out.len();
        if queued > 0 && queued + HEADER_LEN + payload_len > self.config.max_outbound {
            return Err(SendError::QueueFull {
                queued,
                limit: self.config.max_outbound,
            });
        }
        Ok(())
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
    /// See [`SendError`]; nothing is queued on error.
    pub fn send(
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
    /// See [`SendError`]; nothing is queued on error.
    pub fn send_with_id(
        &mut self,
        message_type: MessageType,
        request_id: u16,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.enqueue(message_type, request_id, &payload.into())
    }

    /// Answers a request: sends with the request's id (any type will do).
    ///
    /// # Errors
    /// See [`SendError`]; nothing is queued on error.
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
        self.out.push_raw(frame.bytes().clone());
        self.stats.frames_out += 1;
        Ok(())
    }

    /// Sends a request and waits for the first frame carrying its id
    /// (Veltix's `send_and_wait`). The reply arrives as [`Event::Response`];
    /// if none comes within `timeout`, [`Event::RequestFailed`] does.
    ///
    /// # Errors
    /// See [`SendError`]; nothing is queued and nothing is pending on error.
    pub fn request(
        &mut self,
        now: Instant,
        message_type: MessageType,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<u16, SendError> {
        self.advance(now);
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
    /// [`SendError::IdInUse`] if `request_id` is pending, else see [`SendError`].
    pub fn request_with_id(
        &mut self,
        now: Instant,
        message_type: MessageType,
        request_id: u16,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<(), SendError> {
        self.advance(now);
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

    /// Closes the connection. Output queued before the close can still be
    /// drained with `poll_transmit` (a graceful close); nothing new is
    /// generated. Pending requests fail with [`CloseReason::Local`].
    pub fn close(&mut self) {
        self.terminate(CloseReason::Local, true);
    }

    fn terminate(&mut self, reason: CloseReason, keep_output: bool) {
        if self.is_closed() {
            return;
        }
        for (request_id, p) in self.pending.drain() {
            self.events.push_back(Event::RequestFailed {
                request_id,
                kind: p.kind,
                reason: RequestFailure::Closed(reason.clone()),
            });
        }
        let unsent_bytes = if keep_output { 0 } else { self.out.clear() };
        if unsent_bytes > 0 {
            tracing::warn!(side = ?self.side, unsent_bytes, %reason, "closed with unsent data");
        } else {
            tracing::debug!(side = ?self.side, %reason, "closed");
        }
        self.handshake_deadline = None;
        // Free the receive buffer; the counters stay readable after the close.
        self.decoder.clear();
        self.state = State::Closed(reason.clone());
        self.events.push_back(Event::Closed {
            reason,
            unsent_bytes,
        });
    }

    // ------------------------------------------------------------------ output

    /// The next bytes to write to the socket, in order. Small frames queued
    /// together come out as one contiguous chunk.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let b = self.out.pop()?;
        self.stats.bytes_out += b.len() as u64;
        Some(b)
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest timer (handshake or request deadline), ignoring queued
    /// output and events; `None` when no timer runs or the connection is
    /// closed. For drivers whose reading and writing run on different
    /// threads: the reader sleeps until this, while the writer drains
    /// `poll_transmit` (a reader waiting on [`poll_timeout`](Self::poll_timeout)
    /// would spin until the writer is done). Single-loop drivers use `poll_timeout`.
    pub fn next_timer(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        match (self.handshake_deadline, self.pending.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When `handle_timeout` must be called next. While output or events are
    /// queued this is the latest `now` seen (so a driver does not sleep);
    /// `None` when no timer runs and nothing is queued.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.events.is_empty() || !self.out.is_empty() {
            return Some(self.now);
        }
        self.next_timer()
    }
}
