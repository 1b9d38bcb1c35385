//! What a [`Connection`](crate::Connection) reports through `poll_event`.

use std::time::Duration;

use crate::correlation::RequestKind;
use crate::decoder::{Discard, DiscardReason};
use crate::frame::Frame;
use crate::handshake::{HandshakeError, PeerHello};

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// [`Connection::close`](crate::Connection::close) was called.
    #[error("closed locally")]
    Local,
    /// The peer closed its side (EOF) after the handshake.
    #[error("closed by the peer")]
    PeerClosed,
    /// The driver reported a transport error (reset, broken pipe, ...), of this kind.
    #[error("transport error: {0}")]
    Transport(std::io::ErrorKind),
    /// The handshake failed, timed out or was refused.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer sent corrupt data: strict mode, or past the decoder's
    /// resync limits.
    #[error("protocol violation: {0:?}")]
    Protocol(DiscardReason),
    /// Slow consumer: our output made no progress for `write_timeout`
    /// (the peer stopped reading).
    #[error("slow consumer: output made no progress within the write deadline")]
    SlowConsumer,
    /// A frame's body did not arrive within `body_timeout`.
    #[error("a frame's body did not arrive within the body deadline")]
    BodyTimeout,
    /// The server's budget for partial frames was exceeded and this
    /// connection held the largest one.
    #[error("the server's receive-buffer budget was exceeded")]
    BufferBudget,
    /// A newer connection of the same authenticated identity replaced this
    /// one ([`DuplicateIdentity::Replace`](crate::DuplicateIdentity::Replace)).
    #[error("replaced by a newer connection of the same identity")]
    Replaced,
}

/// Why a request or ping failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestFailure {
    /// No reply came before its deadline.
    #[error("request timed out")]
    TimedOut,
    /// The connection closed first.
    #[error("connection closed: {0}")]
    Closed(CloseReason),
}

/// What a request or ping got back.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// The reply frame to a request.
    Frame(Frame),
    /// A PING's round-trip time.
    Pong(Duration),
}

/// An [`Event`] sorted by what a driver does with it (see [`Event::routed`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Routed {
    /// The handshake finished.
    Connected(PeerHello),
    /// A message for the application.
    Message(Frame),
    /// A request or ping ended: hand the outcome to its waiter.
    Completed {
        /// The request's id.
        request_id: u16,
        /// Its reply, or why there is none.
        outcome: Result<Reply, RequestFailure>,
    },
    /// The connection closed (the last event).
    Closed(CloseReason),
    /// A diagnostic only (a discard, an unanswered PING); the core has
    /// already counted and logged it.
    Diagnostic,
}

/// An event for the application. Drain them with
/// [`Connection::poll_event`](crate::Connection::poll_event) after every input.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake finished; frames can be sent. Carries the peer's hello
    /// (`v`, `pv`, `meta`).
    Connected(PeerHello),
    /// A frame that answered no pending request of ours. PINGs never appear
    /// here: they are answered automatically.
    Message(Frame),
    /// The reply to a [`request`](crate::Connection::request), matched by id
    /// whatever its type.
    Response {
        /// The id of the request it answers.
        request_id: u16,
        /// The reply.
        frame: Frame,
    },
    /// The reply to a [`ping`](crate::Connection::ping).
    Pong {
        /// The ping's id.
        request_id: u16,
        /// Time from the `ping` call to the reply's arrival, on the caller's clock.
        rtt: Duration,
    },
    /// A request or ping will never get its reply. Emitted exactly once per
    /// request that did not get a `Response`/`Pong`.
    RequestFailed {
        /// The id.
        request_id: u16,
        /// Request or ping.
        kind: RequestKind,
        /// Why.
        reason: RequestFailure,
    },
    /// Received bytes were dropped (a counted diagnostic; the connection goes on
    /// unless strict mode is on).
    Discarded(Discard),
    /// A PING could not be answered because the outbound queue was full (the
    /// peer does not read); counted in [`ConnectionStats::pongs_dropped`](crate::ConnectionStats).
    PongDropped {
        /// The PING's id.
        request_id: u16,
    },
    /// The connection is closed; this is the last event.
    Closed {
        /// Why.
        reason: CloseReason,
        /// Outbound bytes accepted but never reported written: dropped by
        /// the close (for a local close, what the flush deadline cut off).
        unsent_bytes: usize,
    },
}

impl Event {
    /// The event sorted for a driver: requests' outcomes (responses, pongs,
    /// failures) are folded into [`Routed::Completed`], diagnostics into
    /// [`Routed::Diagnostic`], so a driver only dispatches.
    ///
    /// ```
    /// use std::time::Duration;
    /// use veltix_proto::{Event, Reply, Routed};
    /// let e = Event::Pong { request_id: 3, rtt: Duration::from_micros(40) };
    /// assert_eq!(
    ///     e.routed(),
    ///     Routed::Completed { request_id: 3, outcome: Ok(Reply::Pong(Duration::from_micros(40))) }
    /// );
    /// ```
    pub fn routed(self) -> Routed {
        match self {
            Event::Connected(p) => Routed::Connected(p),
            Event::Message(f) => Routed::Message(f),
            Event::Response { request_id, frame } => Routed::Completed {
                request_id,
                outcome: Ok(Reply::Frame(frame)),
            },
            Event::Pong { request_id, rtt } => Routed::Completed {
                request_id,
                outcome: Ok(Reply::Pong(rtt)),
            },
            Event::RequestFailed {
                request_id, reason, ..
            } => Routed::Completed {
                request_id,
                outcome: Err(reason),
            },
            Event::Discarded(_) | Event::PongDropped { .. } => Routed::Diagnostic,
            Event::Closed { reason, .. } => Routed::Closed(reason),
        }
    }
}
