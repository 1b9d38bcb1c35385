//! One Veltix connection as a state machine (client or server side).
//!
//! See the [crate documentation](crate) for the calling contract and a
//! complete event loop.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::Identity;
use crate::correlation::{IdAllocator, PendingRequests, RequestKind};
use crate::decoder::{Decoded, Decoder};
use crate::event::{CloseReason, Event, RequestFailure};
use crate::frame::{Frame, Header, MessageType, HEADER_LEN};
use crate::handshake::{Handshake, HandshakeError, PeerHello, Progress, Side};
use crate::outbox::Outbox;

mod commands;
mod config;
use self::config::EVENT_OVERHEAD;
pub use self::config::{
    ConnectionConfig, ConnectionStats, DEFAULT_BODY_TIMEOUT, DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_OUTBOUND,
    DEFAULT_WRITE_TIMEOUT, TRANSMIT_WINDOW,
};

#[derive(Debug)]
enum State {
    Handshaking(Box<Handshake>),
    Established,
    /// A local close (or a refusal being sent): output drains until done
    /// or the flush deadline, then the connection closes with this reason.
    Closing(CloseReason),
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
    /// Server: an authenticated peer held for admission, and input that
    /// came after its last handshake message.
    held: Option<Box<(Identity, Vec<u8>)>>,
    transport_identity: Option<Identity>,
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
            Side::Client => Handshake::client_with(
                config.hello.clone(),
                config.capabilities.clone(),
                config.client_auth.clone(),
            ),
            Side::Server => Handshake::server_with(
                &config.hello,
                config.capabilities.clone(),
                config.server_auth.clone(),
                config.hold_authenticated,
            ),
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
            held: None,
            transport_identity: None,
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
        matches!(self.state, State::Closing(_) | State::Closed(_))
    }
    /// Closed, `Closed` event queued, nothing left to write: the driver
    /// drops the transport.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }
    /// Why it closed.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match &self.state {
            State::Closed(r) | State::Closing(r) => Some(r),
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
            State::Closing(_) | State::Closed(_) => false,
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
                Ok(Progress::Established { consumed, peer }) => {
                    self.established(peer);
                    rest = &data[consumed..];
                }
                Ok(Progress::Held { consumed, identity }) => {
                    tracing::debug!(side = ?self.side, %identity, "authenticated: held for admission");
                    self.held = Some(Box::new((identity, data[consumed..].to_vec())));
                    return;
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(side = ?self.side, error = %e, "handshake failed");
                    if self.side == Side::Server && self.out.len() > before {
                        // A refusal was queued: send it, then close.
                        self.close_with(CloseReason::Handshake(e));
                    } else {
                        self.terminate(CloseReason::Handshake(e));
                    }
                    return;
                }
            }
        }
        if !rest.is_empty() {
            self.decoder.push(rest);
            self.drain_decoder();
        }
    }

    /// Server: the identity the transport proved (a verified TLS client
    /// certificate), given before the handshake ends. It becomes the peer's
    /// identity in [`PeerHello::negotiated`] unless the handshake
    /// authenticates another.
    pub fn set_transport_identity(&mut self, identity: Identity) {
        self.transport_identity = Some(identity);
    }

    fn established(&mut self, mut peer: PeerHello) {
        if peer.negotiated.identity.is_none() {
            peer.negotiated.identity = self.transport_identity.take();
        }
        tracing::debug!(side = ?self.side, peer_version = ?peer.version, identity = ?peer.negotiated.identity, "handshake done");
        self.state = State::Established;
        self.handshake_deadline = None;
        self.push_event(Event::Connected(peer.clone()));
        self.peer = Some(Box::new(peer));
    }

    /// Server, with [`ConnectionConfig::hold_authenticated`]: the identity
    /// the peer proved, while its ack waits for [`admit`](Self::admit) or
    /// [`refuse`](Self::refuse).
    pub fn held_identity(&self) -> Option<&Identity> {
        self.held.as_ref().map(|h| &h.0)
    }

    /// Acknowledges a held peer: the handshake completes now.
    pub fn admit(&mut self, now: Instant) {
        self.advance(now);
        let Some(held) = self.held.take() else {
            return;
        };
        let State::Handshaking(hs) = &mut self.state else {
            return;
        };
        let Some((ack, peer)) = hs.admit() else {
            return;
        };
        self.note_queued();
        self.out.push_raw(ack);
        self.established(peer);
        let (_, rest) = *held;
        if !rest.is_empty() {
            self.decoder.push(&rest);
            self.drain_decoder();
        }
    }

    /// Refuses a held peer: the refusal is sent, then the connection closes
    /// with `why` (e.g. [`HandshakeError::IdentityInUse`]).
    pub fn refuse(&mut self, now: Instant, why: HandshakeError) {
        self.advance(now);
        if self.held.take().is_none() {
            return;
        }
        if let State::Handshaking(hs) = &mut self.state {
            let b = hs.refuse(&why);
            self.note_queued();
            self.out.push_raw(b);
        }
        self.close_with(CloseReason::Handshake(why));
    }

    /// Closes after flushing what is queued (bounded by the flush deadline
    /// and any running handshake deadline).
    fn close_with(&mut self, reason: CloseReason) {
        self.fail_pending(&reason);
        self.decoder.clear();
        self.body_since = None;
        if self.queued_bytes() == 0 {
            self.finish(reason, 0);
            return;
        }
        let flush = after(self.now, self.config.flush_timeout);
        self.flush_deadline = Some(self.handshake_deadline.map_or(flush, |d| d.min(flush)));
        self.handshake_deadline = None;
        self.state = State::Closing(reason);
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
        if let State::Closing(r) = &self.state {
            if self.queued_bytes() == 0 {
                let r = r.clone();
                self.finish(r, 0);
            }
        }
    }

    /// The peer closed its side of the transport (read returned 0).
    pub fn handle_eof(&mut self, now: Instant) {
        self.advance(now);
        if matches!(self.state, State::Closing(_)) {
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
            let reason = self.close_reason().cloned().unwrap_or(CloseReason::Local);
            self.finish(reason, unsent);
            return;
        }
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            self.terminate(CloseReason::Handshake(HandshakeError::TimedOut));
            return;
        }
        if let (Some(t), Some(since)) = (self.config.write_timeout, self.stalled_since) {
            if now >= after(since, t) && !matches!(self.state, State::Closing(_)) {
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
            .filter(|_| !matches!(self.state, State::Closing(_)))
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
