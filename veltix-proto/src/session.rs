//! The reconnecting client as a sans-IO state machine: [`ClientSession`].
//!
//! A session owns the retry policy, the current [`Connection`], the attempt
//! count, Veltix's `DisconnectState` reports, manual disconnect and
//! `stop_retry`. The driver only dials when told, moves bytes, and sleeps
//! until [`ClientSession::poll_timeout`]. One rule decides what every
//! failure counts as: a dial failure, a reset during the handshake, a
//! rejection and the loss of an established connection each count exactly
//! once.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use veltix_proto::{ClientConfig, ClientSession, Error, SessionEvent};
//!
//! let config = ClientConfig::new("127.0.0.1", 9).retry(1).retry_delay(Duration::from_secs(1));
//! let t0 = Instant::now();
//! let mut s = ClientSession::new(&config, 7, t0);
//! s.connect(t0);
//! let dial = s.poll_dial(t0).expect("dial now");
//! s.handle_dial_failed(t0, dial.transport, Error::Refused("127.0.0.1:9".into()));
//! // (false, 0), then attempt 1 at once.
//! assert!(matches!(s.poll_event(), Some(SessionEvent::Disconnected(d)) if !d.permanent && d.attempt == 0));
//! let dial = s.poll_dial(t0).expect("attempt 1");
//! s.handle_dial_failed(t0, dial.transport, Error::Refused("127.0.0.1:9".into()));
//! // (false, 1) then (true, 1), and the last error.
//! assert!(matches!(s.poll_event(), Some(SessionEvent::Disconnected(d)) if !d.permanent && d.attempt == 1));
//! assert!(matches!(s.poll_event(), Some(SessionEvent::Disconnected(d)) if d.permanent));
//! assert!(matches!(s.poll_event(), Some(SessionEvent::GaveUp(Error::Refused(_)))));
//! assert!(s.poll_dial(t0).is_none());
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::ClientConfig;
use crate::connection::{Connection, ConnectionConfig, ConnectionStats};
use crate::driver_error::{Error, Wait};
use crate::error::SendError;
use crate::event::{CloseReason, Event, Reply, RequestFailure, Routed};
use crate::frame::{Frame, MessageType};
use crate::handshake::PeerHello;
use crate::retry::{DisconnectReason, DisconnectState, NextStep, Reconnect};

/// What a [`ClientSession`] reports through `poll_event`.
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The handshake finished (first connect and every reconnect).
    Connected(PeerHello),
    /// A message that answered no pending request.
    Message(Frame),
    /// A request or ping ended: hand the outcome to its waiter.
    Completed {
        /// The request's id.
        request_id: u16,
        /// Its reply, or why there is none.
        outcome: Result<Reply, RequestFailure>,
    },
    /// A disconnect or retry step, as Veltix reports to `on_disconnect`.
    Disconnected(DisconnectState),
    /// Connecting stopped for good without a connection (retries exhausted,
    /// `stop_retry`, `disconnect`, or a rejection on the first connect):
    /// the last error. A pending `connect()` returns it.
    GaveUp(Error),
}

/// The driver must open a transport now (see [`ClientSession::poll_dial`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dial {
    /// The id of this transport: pass it to `handle_dialed` /
    /// `handle_dial_failed`; the transport is the session's while
    /// [`ClientSession::transport`] returns it.
    pub transport: u64,
    /// Give up dialling (TCP connect) by then.
    pub deadline: Instant,
}

#[derive(Debug)]
enum Phase {
    /// Not connecting.
    Idle,
    /// A dial is due now.
    DialDue,
    /// The driver is dialling.
    Dialing { deadline: Instant },
    /// A transport is open.
    Open(Box<Connection>),
    /// Waiting before the next attempt.
    Backoff { until: Instant },
}

/// A reconnecting Veltix client, without I/O.
///
/// Methods come in the same four kinds as [`Connection`]'s: getters,
/// `handle_*` inputs, commands ([`connect`](Self::connect),
/// [`send`](Self::send), [`request`](Self::request), [`disconnect`](Self::disconnect),
/// ...), and `poll_*` outputs ([`poll_dial`](Self::poll_dial),
/// [`poll_transmit`](Self::poll_transmit), [`poll_event`](Self::poll_event),
/// [`poll_timeout`](Self::poll_timeout)).
///
/// The driver's loop: dial when `poll_dial` says so and report the result;
/// while [`transport`](Self::transport) is the id of its open transport,
/// write `poll_transmit` output and report it with `handle_written`, read
/// while [`wants_input`](Self::wants_input) and feed `handle_input` /
/// `handle_eof` / `handle_transport_error`; drop the transport as soon as
/// `transport()` no longer returns its id; dispatch `poll_event`; sleep
/// until `poll_timeout` or I/O.
#[derive(Debug)]
pub struct ClientSession {
    config: Arc<ConnectionConfig>,
    dial_timeout: Duration,
    reconnect: Reconnect,
    phase: Phase,
    transport: u64,
    /// The current attempt loop began with `connect()`.
    initial: bool,
    /// `disconnect()` was called: no more attempts.
    manual: bool,
    /// `stop_retry()` was called: the next failure is final.
    stop_requested: bool,
    /// The open connection's success was counted.
    success_noted: bool,
    last_reason: DisconnectReason,
    last_error: Option<Error>,
    /// Events of finished connections and lifecycle reports, before the
    /// current connection's.
    events: VecDeque<SessionEvent>,
    event_bytes: usize,
    completions: VecDeque<SessionEvent>,
    now: Instant,
}

fn routed(e: Event) -> Option<SessionEvent> {
    match e.routed() {
        Routed::Connected(p) => Some(SessionEvent::Connected(p)),
        Routed::Message(f) => Some(SessionEvent::Message(f)),
        Routed::Completed {
            request_id,
            outcome,
        } => Some(SessionEvent::Completed {
            request_id,
            outcome,
        }),
        _ => None,
    }
}

fn cost(e: &SessionEvent) -> usize {
    64 + match e {
        SessionEvent::Message(f) => f.payload.len(),
        _ => 0,
    }
}

impl ClientSession {
    /// A session for `config` (its retry policy, deadlines and limits);
    /// `seed` drives the backoff jitter. Nothing happens before
    /// [`connect`](Self::connect).
    pub fn new(config: &ClientConfig, seed: u64, now: Instant) -> Self {
        Self::with_connection_config(
            config.connection_config(),
            Reconnect::new(config.retry_policy(), seed),
            config.handshake_timeout,
            now,
        )
    }

    /// A session from its parts: the connection settings, the reconnect
    /// state machine, and the deadline of one TCP connect.
    pub fn with_connection_config(
        config: Arc<ConnectionConfig>,
        reconnect: Reconnect,
        dial_timeout: Duration,
        now: Instant,
    ) -> Self {
        ClientSession {
            config,
            dial_timeout,
            reconnect,
            phase: Phase::Idle,
            transport: 0,
            initial: true,
            manual: false,
            stop_requested: false,
            success_noted: false,
            last_reason: DisconnectReason::Error,
            last_error: None,
            events: VecDeque::new(),
            event_bytes: 0,
            completions: VecDeque::new(),
            now,
        }
    }

    // ----------------------------------------------------------------- getters

    fn conn(&self) -> Option<&Connection> {
        match &self.phase {
            Phase::Open(c) => Some(c),
            _ => None,
        }
    }

    fn conn_mut(&mut self) -> Option<&mut Connection> {
        match &mut self.phase {
            Phase::Open(c) => Some(c),
            _ => None,
        }
    }

    fn established(&mut self) -> Result<&mut Connection, SendError> {
        match &mut self.phase {
            Phase::Open(c) => {
                if c.is_established() {
                    Ok(c)
                } else if c.is_closed() {
                    Err(SendError::Closed(CloseReason::Local))
                } else {
                    Err(SendError::NotConnected)
                }
            }
            _ => Err(SendError::NotConnected),
        }
    }

    /// The handshake is done and the connection open.
    pub fn is_connected(&self) -> bool {
        self.conn().is_some_and(Connection::is_established)
    }
    /// An attempt loop is running (dialling, handshaking or waiting to retry).
    pub fn is_connecting(&self) -> bool {
        match &self.phase {
            Phase::DialDue | Phase::Dialing { .. } | Phase::Backoff { .. } => true,
            Phase::Open(c) => c.is_handshaking(),
            Phase::Idle => false,
        }
    }
    /// The id of the transport the session uses (dialling or open). The
    /// driver drops its transport when this no longer returns its id.
    pub fn transport(&self) -> Option<u64> {
        match &self.phase {
            Phase::Dialing { .. } | Phase::Open(_) => Some(self.transport),
            _ => None,
        }
    }
    /// The server's hello, while connected.
    pub fn peer_hello(&self) -> Option<&PeerHello> {
        self.conn().and_then(Connection::peer_hello)
    }
    /// Counters of the current connection.
    pub fn stats(&self) -> Option<ConnectionStats> {
        self.conn().map(Connection::stats)
    }
    /// Failures counted since the last success, and the budget in force.
    pub fn attempts(&self) -> (u32, u32) {
        (self.reconnect.attempt(), self.reconnect.budget())
    }
    /// Outbound bytes accepted and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.conn().map_or(0, Connection::queued_bytes)
    }
    /// Whether `poll_transmit` has bytes to give now.
    pub fn has_transmit(&self) -> bool {
        self.conn().is_some_and(Connection::has_transmit)
    }
    /// Whether the driver should read: the connection wants input and the
    /// events of earlier connections are within `max_event_bytes`.
    pub fn wants_input(&self) -> bool {
        self.conn().is_some_and(|c| {
            c.wants_input()
                && (c.is_handshaking() || self.event_bytes < self.config.max_event_bytes)
        })
    }

    // ---------------------------------------------------------------- commands

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    /// Starts connecting (Veltix's `connect()`): a fresh attempt loop (the
    /// count and budget reset, even after an earlier give-up); failures are
    /// retried per the policy and reported with reason `Error` (or
    /// `Rejected`; a rejection here is final at once). No-op while
    /// connected or connecting.
    pub fn connect(&mut self, now: Instant) {
        self.advance(now);
        if !matches!(self.phase, Phase::Idle) {
            return;
        }
        self.manual = false;
        self.stop_requested = false;
        self.initial = true;
        // A fresh loop: a connect() after giving up retries again.
        self.reconnect.on_success();
        self.phase = Phase::DialDue;
    }

    /// Starts a fresh retry loop (Veltix's `retry(max_)`) with `max`
    /// attempts (default: the policy's). No-op while connected or connecting.
    pub fn retry(&mut self, now: Instant, max: Option<u32>) {
        self.advance(now);
        if !matches!(self.phase, Phase::Idle) {
            return;
        }
        self.manual = false;
        self.stop_requested = false;
        self.initial = false;
        self.reconnect.restart(max);
        self.phase = Phase::DialDue;
    }

    /// Cancels the retry loop (Veltix's `stop_retry()`): if one is running
    /// it ends now with a permanent report; otherwise the next failure is final.
    pub fn stop_retry(&mut self, now: Instant) {
        self.advance(now);
        self.stop_requested = true;
        if matches!(
            self.phase,
            Phase::DialDue | Phase::Dialing { .. } | Phase::Backoff { .. }
        ) {
            let report = self.reconnect.stop(self.last_reason.clone());
            self.push(SessionEvent::Disconnected(report));
            self.give_up();
        }
    }

    /// Closes the connection (queued output drains within the flush
    /// deadline) and stops connecting for good. A connection that was
    /// established is reported `(permanent, Manual)` once its output is done.
    pub fn disconnect(&mut self, now: Instant) {
        self.advance(now);
        self.manual = true;
        match &mut self.phase {
            Phase::Open(c) => {
                c.close(now);
                self.after_io();
            }
            Phase::Idle => {}
            _ => {
                self.phase = Phase::Idle;
                self.last_error = Some(Error::Closed(CloseReason::Local));
                self.give_up();
            }
        }
    }

    /// Sends a message (see [`Connection::send`]).
    ///
    /// # Errors
    /// [`SendError::NotConnected`] when not connected, else the connection's refusal.
    pub fn send(&mut self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, SendError> {
        self.established()?.send(t, payload)
    }

    /// Sends a message of any type, reserved ones included (see [`Connection::send_system`]).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn send_system(
        &mut self,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, SendError> {
        self.established()?.send_system(t, payload)
    }

    /// Answers a request with its id (see [`Connection::reply`]).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn reply(
        &mut self,
        request_id: u16,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.established()?.reply(request_id, t, payload)
    }

    /// Sends a request (see [`Connection::request`]); its outcome comes as
    /// [`SessionEvent::Completed`].
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn request(
        &mut self,
        now: Instant,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<u16, SendError> {
        self.advance(now);
        self.established()?.request(now, t, payload, timeout)
    }

    /// Sends a PING (see [`Connection::ping`]).
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn ping(&mut self, now: Instant, timeout: Duration) -> Result<u16, SendError> {
        self.advance(now);
        self.established()?.ping(now, timeout)
    }

    /// Forgets a pending request (its waiter went away).
    pub fn cancel_request(&mut self, request_id: u16) -> bool {
        self.conn_mut()
            .is_some_and(|c| c.cancel_request(request_id))
    }

    // ------------------------------------------------------------------- input

    /// The dial of `transport` succeeded at `now`: the handshake starts.
    pub fn handle_dialed(&mut self, now: Instant, transport: u64) {
        self.advance(now);
        if matches!(self.phase, Phase::Dialing { .. }) && transport == self.transport {
            self.phase = Phase::Open(Box::new(Connection::client(self.config.clone(), now)));
            self.success_noted = false;
        }
    }

    /// The dial of `transport` failed with `error` (map socket errors with
    /// [`Error::from_connect`]). Counts as one failed attempt.
    pub fn handle_dial_failed(&mut self, now: Instant, transport: u64, error: Error) {
        self.advance(now);
        if matches!(self.phase, Phase::Dialing { .. }) && transport == self.transport {
            self.attempt_failed(error);
        }
    }

    /// Bytes received on the open transport.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        self.advance(now);
        if let Some(c) = self.conn_mut() {
            c.handle_input(now, data);
            self.after_io();
        }
    }

    /// The driver wrote `n` bytes of what `poll_transmit` gave it.
    pub fn handle_written(&mut self, now: Instant, n: usize) {
        self.advance(now);
        if let Some(c) = self.conn_mut() {
            c.handle_written(now, n);
            self.after_io();
        }
    }

    /// The server closed the transport (read returned 0).
    pub fn handle_eof(&mut self, now: Instant) {
        self.advance(now);
        if let Some(c) = self.conn_mut() {
            c.handle_eof(now);
            self.after_io();
        }
    }

    /// The transport failed.
    pub fn handle_transport_error(&mut self, now: Instant, error: &std::io::Error) {
        self.advance(now);
        if let Some(c) = self.conn_mut() {
            c.handle_transport_error(now, error);
            self.after_io();
        }
    }

    /// Fires every due deadline: backoff, dial, and the connection's.
    /// Calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        match &mut self.phase {
            Phase::Backoff { until } if *until <= now => self.phase = Phase::DialDue,
            Phase::Dialing { deadline } if *deadline <= now => {
                let after = self.dial_timeout;
                self.attempt_failed(Error::TimedOut {
                    what: Wait::Connect,
                    after,
                });
            }
            Phase::Open(c) => {
                c.handle_timeout(now);
                self.after_io();
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------------ output

    /// A dial to make now, if one is due: the session then waits for
    /// `handle_dialed` or `handle_dial_failed` (or its deadline).
    pub fn poll_dial(&mut self, now: Instant) -> Option<Dial> {
        self.advance(now);
        if !matches!(self.phase, Phase::DialDue) {
            return None;
        }
        self.transport += 1;
        let deadline = self
            .now
            .checked_add(self.dial_timeout)
            .unwrap_or(self.now + Duration::from_secs(86_400));
        self.phase = Phase::Dialing { deadline };
        Some(Dial {
            transport: self.transport,
            deadline,
        })
    }

    /// The next bytes to write on the open transport (see [`Connection::poll_transmit`]).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.conn_mut()?.poll_transmit()
    }

    /// The next request outcome only, leaving other events queued.
    pub fn poll_completion(&mut self) -> Option<SessionEvent> {
        if let Some(e) = self.completions.pop_front() {
            return Some(e);
        }
        loop {
            let e = self.conn_mut()?.poll_completion()?;
            if let Some(e) = routed(e) {
                return Some(e);
            }
        }
    }

    /// The next event: request outcomes first, then, in order, what earlier
    /// connections and the reconnect loop reported, then the current
    /// connection's events.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        if let Some(e) = self.poll_completion() {
            return Some(e);
        }
        if let Some(e) = self.events.pop_front() {
            self.event_bytes -= cost(&e);
            return Some(e);
        }
        loop {
            let e = self.conn_mut()?.poll_event()?;
            if let Some(e) = routed(e) {
                return Some(e);
            }
        }
    }

    /// When to call `handle_timeout` next: now while a dial is due or output
    /// can be taken, else the earliest deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Idle => None,
            Phase::DialDue => Some(self.now),
            Phase::Dialing { deadline } => Some(*deadline),
            Phase::Backoff { until } => Some(*until),
            Phase::Open(c) => c.poll_timeout(),
        }
    }

    /// The earliest deadline, ignoring ready work.
    pub fn next_timer(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Open(c) => c.next_timer(),
            _ => self.poll_timeout(),
        }
    }

    // -------------------------------------------------------------- internals

    fn push(&mut self, e: SessionEvent) {
        self.event_bytes += cost(&e);
        self.events.push_back(e);
    }

    /// After any input to the open connection: a connection that finished is
    /// detached (its remaining events kept in order) and judged.
    fn after_io(&mut self) {
        let Phase::Open(c) = &mut self.phase else {
            return;
        };
        if c.is_established() && !self.success_noted {
            // First sight of an established connection: the count resets.
            self.success_noted = true;
            self.reconnect.on_success();
            self.initial = false;
        }
        if !c.is_finished() {
            return;
        }
        let Phase::Open(mut c) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            unreachable!("matched above");
        };
        let mut reason = None;
        let mut was_established = false;
        while let Some(e) = c.poll_event() {
            match e {
                Event::Connected(_) => was_established = true,
                Event::Closed { reason: r, .. } => {
                    reason = Some(r);
                    continue;
                }
                _ => {}
            }
            if let Some(e) = routed(e) {
                match e {
                    SessionEvent::Completed { .. } => self.completions.push_back(e),
                    e => self.push(e),
                }
            }
        }
        // An established connection's Connected event may have been taken already.
        was_established |= c.peer_hello().is_some();
        let reason = reason.unwrap_or(CloseReason::Local);
        if self.manual {
            if was_established {
                let (attempt, retry_max) = self.attempts();
                self.push(SessionEvent::Disconnected(DisconnectState {
                    permanent: true,
                    attempt,
                    retry_max,
                    reason: DisconnectReason::Manual,
                }));
            } else {
                self.last_error = Some(Error::Closed(CloseReason::Local));
                self.give_up();
            }
            return;
        }
        if was_established {
            tracing::info!(%reason, "connection lost");
            self.initial = false;
            self.failure(DisconnectReason::ServerClosed, Error::Closed(reason));
        } else {
            let error = Error::from_handshake_close(reason, self.config.handshake_timeout);
            self.attempt_failed(error);
        }
    }

    /// One failed attempt (dial or handshake).
    fn attempt_failed(&mut self, error: Error) {
        tracing::debug!(%error, "connect attempt failed");
        let reason = error.disconnect_reason(self.initial);
        self.phase = Phase::Idle;
        if error.is_permanent() && !self.manual {
            // Same credentials, same answer: one final report, no retry.
            tracing::warn!(%error, "giving up: retrying cannot help");
            self.last_reason = reason.clone();
            self.last_error = Some(error);
            let report = self.reconnect.stop(reason);
            self.push(SessionEvent::Disconnected(report));
            self.give_up();
            return;
        }
        self.failure(reason, error);
    }

    /// The one rule: report, then retry after the policy's delay or give up.
    fn failure(&mut self, reason: DisconnectReason, error: Error) {
        self.phase = Phase::Idle;
        self.last_reason = reason.clone();
        self.last_error = Some(error);
        if self.manual {
            self.give_up();
            return;
        }
        let step = self.reconnect.on_failure(reason.clone());
        for r in step.reports {
            self.push(SessionEvent::Disconnected(r));
        }
        match step.next {
            NextStep::GiveUp => self.give_up(),
            NextStep::RetryAfter(_) if self.stop_requested => {
                let report = self.reconnect.stop(reason);
                self.push(SessionEvent::Disconnected(report));
                self.give_up();
            }
            NextStep::RetryAfter(d) if d.is_zero() => self.phase = Phase::DialDue,
            NextStep::RetryAfter(d) => {
                let until = self
                    .now
                    .checked_add(d)
                    .unwrap_or(self.now + Duration::from_secs(86_400));
                self.phase = Phase::Backoff { until };
            }
        }
    }

    fn give_up(&mut self) {
        self.phase = Phase::Idle;
        let error = self.last_error.take().unwrap_or(Error::NotConnected);
        self.push(SessionEvent::GaveUp(error));
    }
}
