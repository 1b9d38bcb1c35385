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
/// Default cap on bytes accepted for sending and not yet reported written
/// (8 MiB): what one peer that stops reading can make us hold.
pub const DEFAULT_MAX_OUTBOUND: usize = 8 * 1024 * 1024;
/// Default cap on the bytes of events queued and not yet taken (1 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Default write deadline (30 s): queued output that makes no progress for
/// this long marks the peer a slow consumer.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default body deadline (60 s): a frame started but not complete after this long.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default flush deadline of a local close (5 s).
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes a driver may hold (taken with `poll_transmit`, not yet reported with
/// `handle_written`) before `poll_transmit` gives no more: 256 KiB.
pub const TRANSMIT_WINDOW: usize = 256 * 1024;

/// Per-event overhead counted against [`ConnectionConfig::max_event_bytes`].
const EVENT_OVERHEAD: usize = 64;

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
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Receive limits, strict mode and accepted types.
    pub decoder: DecoderConfig,
    /// Deadline for the whole handshake, from the connection's creation.
    pub handshake_timeout: Duration,
    /// What we announce in our hello.
    pub hello: LocalHello,
    /// Server side: size of the request-id window (capped at 32 768).
    pub id_window: u16,
    /// Cap on outbound bytes accepted and not yet reported written by the
    /// driver; beyond it `send` fails with [`SendError::QueueFull`] and PINGs
    /// go unanswered (counted). A single frame is always accepted into an
    /// empty queue, whatever its size.
    pub max_outbound: usize,
    /// Cap on the bytes of queued events (payloads plus a small overhead
    /// each). At the cap the connection stops decoding and
    /// [`Connection::wants_input`] turns false until events are taken; timers
    /// still run.
    pub max_event_bytes: usize,
    /// Output that makes no progress for this long closes the connection
    /// with [`CloseReason::SlowConsumer`]. `None`: never.
    pub write_timeout: Option<Duration>,
    /// A frame begun but not complete after this long closes the connection
    /// with [`CloseReason::BodyTimeout`]. `None`: never.
    pub body_timeout: Option<Duration>,
    /// After a local [`close`](Connection::close), how long queued output
    /// may take to drain before it is dropped (and reported as unsent).
    pub flush_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            decoder: DecoderConfig::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            hello: LocalHello::default(),
            id_window: DEFAULT_ID_WINDOW,
            max_outbound: DEFAULT_MAX_OUTBOUND,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            body_timeout: Some(DEFAULT_BODY_TIMEOUT),
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
        }
    }
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Bytes given to `handle_input`.
    pub bytes_in: u64,
    /// Bytes handed out by `poll_transmit`.
    pub bytes_out: u64,
    /// Bytes the driver reported written with `handle_written`.
    pub bytes_written: u64,
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
    /// A local close: output drains until done or the flush deadline.
    Closing,
    Closed(CloseReason),
}

/// A Veltix connection: handshake, framing, correlation and ping, without I/O.
///
/// Methods come in four kinds:
///
/// * **getters** ([`side`](Self::side), [`is_established`](Self::is_established),
///   [`wants_input`](Self::wants_input), [`stats`](Self::stats), ...) never change anything;
/// * **input**, `handle_*`: [`handle_input`](Self::handle_input) with received
///   bytes, [`handle_written`](Self::handle_written) with bytes written,
///   [`handle_timeout`](Self::handle_timeout) when the deadline from
///   `poll_timeout` has passed (extra calls are harmless),
///   [`handle_eof`](Self::handle_eof) / [`handle_transport_error`](Self::handle_transport_error)
///   when the socket ends;
/// * **commands**: [`send`](Self::send), [`request`](Self::request),
///   [`reply`](Self::reply), [`ping`](Self::ping), [`close`](Self::close), ...;
/// * **output**, `poll_*`: [`poll_transmit`](Self::poll_transmit) (bytes to
///   write, in order, within the [`TRANSMIT_WINDOW`]),
///   [`poll_event`](Self::poll_event) (events for the application) and
///   [`poll_timeout`](Self::poll_timeout) (when to call `handle_timeout`).
///
/// See the [crate documentation](crate) for the calling contract.
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
    /// Bytes handed out by `poll_transmit` and not yet reported written.
    in_flight: usize,
    /// Since when unwritten output has made no progress.
    stalled_since: Option<Instant>,
    /// Since when a frame has been partly received.
    body_since: Option<Instant>,
    /// A local close's flush deadline.
    flush_deadline: Option<Instant>,
    /// Requests' outcomes; taken before `events`.
    completions: VecDeque<Event>,
    events: VecDeque<Event>,
    event_bytes: usize,
    peer: Option<Box<PeerHello>>,
    now: Instant,
    stats: ConnectionStats,
}

fn event_cost(e: &Event) -> usize {
    EVENT_OVERHEAD
        + match e {
            Event::Message(f) => f.payload.len(),
            _ => 0,
        }
}

fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
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
            handshake_deadline: Some(after(now, config.handshake_timeout)),
            decoder: Decoder::new(config.decoder.clone()),
            ids: IdAllocator::for_side(side, config.id_window),
            config,
            state: State::Handshaking(Box::new(hs)),
            pending: PendingRequests::new(),
            stalled_since: (!out.is_empty()).then_some(now),
            out,
            in_flight: 0,
            body_since: None,
            flush_deadline: None,
            completions: VecDeque::new(),
            events: VecDeque::new(),
            event_bytes: 0,
            peer: None,
            now,
            stats: ConnectionStats::default(),
        }
    }

    /// A client connection (we dialled).
    pub fn client(config: Arc<ConnectionConfig>, now: Instant) -> Self {
        Self::new(Side::Client, config, now)
    }

    /// A server connection (we accepted). See also [`Hub`](crate::Hub),
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
    /// The connection is closing or closed: no new output will be generated
    /// (queued output may still drain after a local close).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closing | State::Closed(_))
    }
    /// Closed, `Closed` event queued, nothing left to write: the driver
    /// drops the transport.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }
    /// Why it closed.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match &self.state {
            State::Closed(r) => Some(r),
            State::Closing => Some(&CloseReason::Local),
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
    /// Outbound bytes accepted and not yet reported written: queued in the
    /// core plus held by the driver. This is what `max_outbound` caps.
    pub fn queued_bytes(&self) -> usize {
        self.out.len() + self.in_flight
    }
    /// Bytes taken with `poll_transmit` and not yet reported written.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
    /// Whether [`poll_transmit`](Self::poll_transmit) has bytes to give now.
    pub fn has_transmit(&self) -> bool {
        !self.out.is_empty() && self.in_flight < TRANSMIT_WINDOW
    }
    /// Whether request outcomes are waiting in [`poll_completion`](Self::poll_completion).
    pub fn has_completions(&self) -> bool {
        !self.completions.is_empty()
    }
    /// Whether events are waiting in [`poll_event`](Self::poll_event).
    pub fn has_events(&self) -> bool {
        !self.completions.is_empty() || !self.events.is_empty()
    }
    /// Bytes of events queued and not taken (see `max_event_bytes`).
    pub fn event_bytes(&self) -> usize {
        self.event_bytes
    }
    /// Whether the driver should read from the transport. False once closed,
    /// and while queued events reach `max_event_bytes` (take events to
    /// resume). Bytes given anyway are buffered up to the decoder's
    /// `max_buffer_size`, never beyond.
    pub fn wants_input(&self) -> bool {
        match self.state {
            State::Handshaking(_) => true,
            State::Established => self.event_bytes < self.config.max_event_bytes,
            State::Closing | State::Closed(_) => false,
        }
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

    fn push_event(&mut self, e: Event) {
        match e {
            Event::Response { .. } | Event::Pong { .. } | Event::RequestFailed { .. } => {
                self.completions.push_back(e);
            }
            e => {
                self.event_bytes += event_cost(&e);
                self.events.push_back(e);
            }
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
            self.terminate(CloseReason::Handshake(HandshakeError::TimedOut));
            return;
        }
        self.stats.bytes_in += data.len() as u64;
        let mut rest = data;
        if let State::Handshaking(hs) = &mut self.state {
            let out = &mut self.out;
            let before = out.len();
            let r = hs.handle_input(data, &mut |b| out.push_raw(b));
            if self.out.len() > before {
                self.note_queued();
            }
            match r {
                Ok(Progress::NeedMore) => return,
                Ok(Progress::Established { consumed, peer }) => {
                    tracing::debug!(side = ?self.side, peer_version = ?peer.version, "handshake done");
                    self.state = State::Established;
                    self.handshake_deadline = None;
                    self.push_event(Event::Connected(peer.clone()));
                    self.peer = Some(Box::new(peer));
                    rest = &data[consumed..];
                }
                Err(e) => {
                    tracing::debug!(side = ?self.side, error = %e, "handshake failed");
                    self.terminate(CloseReason::Handshake(e));
                    return;
                }
            }
        }
        if !rest.is_empty() {
            self.decoder.push(rest);
            self.drain_decoder();
        }
    }

    /// Decodes buffered input while there is room for events.
    fn drain_decoder(&mut self) {
        let mut progressed = false;
        while self.event_bytes < self.config.max_event_bytes && self.is_established() {
            let Some(d) = self.decoder.next_frame() else {
                break;
            };
            match d {
                Decoded::Frame(f) => {
                    progressed = true;
                    self.dispatch(f);
                }
                Decoded::Discarded(d) => {
                    tracing::debug!(reason = ?d.reason, bytes = d.bytes, "discarded input");
                    self.push_event(Event::Discarded(d));
                    if self.decoder.is_failed() {
                        self.terminate(CloseReason::Protocol(d.reason));
                        return;
                    }
                }
            }
        }
        // The body deadline runs while a frame is partly received, and
        // restarts whenever one completes.
        if self.decoder.buffered() == 0 {
            self.body_since = None;
        } else if progressed || self.body_since.is_none() {
            self.body_since = Some(self.now);
        }
    }

    /// Spec §5.1: PING first, then pending requests, then the application.
    fn dispatch(&mut self, f: Frame) {
        self.stats.frames_in += 1;
        if f.message_type == MessageType::PING {
            // Same admission rule as `send`: an empty queue takes any frame.
            let queued = self.queued_bytes();
            if queued > 0 && queued + HEADER_LEN > self.config.max_outbound {
                self.stats.pongs_dropped += 1;
                tracing::warn!(side = ?self.side, request_id = f.request_id, "PING unanswered: the peer does not read");
                self.push_event(Event::PongDropped {
                    request_id: f.request_id,
                });
                return;
            }
            let h = Header::for_payload(MessageType::PONG, f.request_id, &[])
                .expect("empty payload fits");
            self.note_queued();
            self.out.push_frame(&h, &Bytes::new());
            self.stats.frames_out += 1;
            return;
        }
        if let Some(p) = self.pending.resolve(f.request_id) {
            self.push_event(match p.kind {
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
        self.push_event(Event::Message(f));
    }

    /// The driver wrote `n` more bytes of what `poll_transmit` gave it, at
    /// `now`. Until then those bytes count against `max_outbound`.
    pub fn handle_written(&mut self, now: Instant, n: usize) {
        self.advance(now);
        let n = n.min(self.in_flight);
        if n == 0 {
            return;
        }
        self.in_flight -= n;
        self.stats.bytes_written += n as u64;
        self.stalled_since = (self.queued_bytes() > 0).then_some(self.now);
        if matches!(self.state, State::Closing) && self.queued_bytes() == 0 {
            self.finish(CloseReason::Local, 0);
        }
    }

    /// The peer closed its side of the transport (read returned 0).
    pub fn handle_eof(&mut self, now: Instant) {
        self.advance(now);
        if matches!(self.state, State::Closing) {
            // Half-closed: our queued output may still be delivered.
            return;
        }
        let reason = if self.is_handshaking() {
            CloseReason::Handshake(HandshakeError::PeerClosed)
        } else {
            CloseReason::PeerClosed
        };
        self.terminate(reason);
    }

    /// The transport failed (reset, broken pipe, ...); its kind is kept.
    pub fn handle_transport_error(&mut self, now: Instant, error: &std::io::Error) {
        self.advance(now);
        tracing::debug!(side = ?self.side, %error, "transport error");
        self.terminate(CloseReason::Transport(error.kind()));
    }

    /// Fires every deadline that is due at `now`: handshake, request and
    /// ping deadlines, the write, body and flush deadlines. Calling it early
    /// or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if self.is_finished() {
            return;
        }
        if self.flush_deadline.is_some_and(|d| now >= d) {
            let unsent = self.queued_bytes();
            tracing::warn!(side = ?self.side, unsent, "flush deadline passed: output dropped");
            self.finish(CloseReason::Local, unsent);
            return;
        }
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            self.terminate(CloseReason::Handshake(HandshakeError::TimedOut));
            return;
        }
        if let (Some(t), Some(since)) = (self.config.write_timeout, self.stalled_since) {
            if now >= after(since, t) && !matches!(self.state, State::Closing) {
                tracing::warn!(side = ?self.side, queued = self.queued_bytes(), "slow consumer: no write progress");
                self.terminate(CloseReason::SlowConsumer);
                return;
            }
        }
        if let (Some(t), Some(since)) = (self.config.body_timeout, self.body_since) {
            if now >= after(since, t) {
                tracing::warn!(side = ?self.side, buffered = self.decoder.buffered(), "frame body timed out");
                self.terminate(CloseReason::BodyTimeout);
                return;
            }
        }
        while let Some((request_id, p)) = self.pending.expire(now) {
            self.push_event(Event::RequestFailed {
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
            State::Closing => return Err(SendError::Closed(CloseReason::Local)),
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
    fn note_queued(&mut self) {
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
            self.state = State::Closing;
            self.flush_deadline = Some(after(self.now, self.config.flush_timeout));
        }
    }

    /// Ends the connection at once with `reason` (queued output is
    /// dropped): for an owner enforcing a limit that spans connections.
    pub(crate) fn abort(&mut self, now: Instant, reason: CloseReason) {
        self.advance(now);
        self.terminate(reason);
    }

    fn fail_pending(&mut self, reason: &CloseReason) {
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
    fn terminate(&mut self, reason: CloseReason) {
        if self.is_finished() {
            return;
        }
        self.fail_pending(&reason);
        let unsent = self.queued_bytes();
        self.finish(reason, unsent);
    }

    fn finish(&mut self, reason: CloseReason, unsent_bytes: usize) {
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

    // ------------------------------------------------------------------ output

    /// The next bytes to write to the transport, in order. Small frames
    /// queued together come out as one contiguous chunk. `None` when nothing
    /// is queued, or while the driver already holds [`TRANSMIT_WINDOW`]
    /// bytes not reported with [`handle_written`](Self::handle_written).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.in_flight >= TRANSMIT_WINDOW || self.is_finished() {
            return None;
        }
        let b = self.out.pop()?;
        self.in_flight += b.len();
        self.stats.bytes_out += b.len() as u64;
        Some(b)
    }

    /// The next event for the application. Requests' outcomes
    /// (`Response`, `Pong`, `RequestFailed`) come before other queued
    /// events; `Closed` is always last. Taking events lets decoding resume
    /// (which may queue output, e.g. PONGs: check `poll_transmit` after).
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.poll_completion() {
            return Some(e);
        }
        if self.events.is_empty() && self.decoder.buffered() > 0 {
            self.drain_decoder();
            if let Some(e) = self.poll_completion() {
                return Some(e);
            }
        }
        let e = self.events.pop_front()?;
        self.event_bytes -= event_cost(&e);
        if self.events.is_empty() && self.decoder.buffered() > 0 {
            self.drain_decoder();
        }
        Some(e)
    }

    /// The next request outcome only (`Response`, `Pong`, `RequestFailed`),
    /// leaving other events queued: for a driver that can hand replies to
    /// their waiters while its application is not taking messages.
    pub fn poll_completion(&mut self) -> Option<Event> {
        self.completions.pop_front()
    }

    /// The earliest timer: handshake, request, write, body or flush
    /// deadline. Queued output and events do not count; `None` when no timer
    /// runs.
    pub fn next_timer(&self) -> Option<Instant> {
        if self.is_finished() {
            return None;
        }
        let write = self
            .config
            .write_timeout
            .zip(self.stalled_since)
            .filter(|_| !matches!(self.state, State::Closing))
            .map(|(t, s)| after(s, t));
        let body = self
            .config
            .body_timeout
            .zip(self.body_since)
            .map(|(t, s)| after(s, t));
        [
            self.handshake_deadline,
            self.pending.next_deadline(),
            write,
            body,
            self.flush_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When `handle_timeout` must be called next: the latest `now` seen while
    /// [`has_transmit`](Self::has_transmit) (output the driver may take
    /// now), else [`next_timer`](Self::next_timer). A driver that cannot
    /// write holds the transmit window, so this never stays "now" for it:
    /// it waits for writability or the next real deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.has_transmit() {
            return Some(self.now);
        }
        self.next_timer()
    }
}
