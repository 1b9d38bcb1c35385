//! The error type of the drivers (`veltix-std`, `veltix-tokio`): one type for
//! both, so switching driver does not change error handling.

use std::time::Duration;

use crate::config::ConfigError;
use crate::event::{CloseReason, RequestFailure};
use crate::handshake::HandshakeError;
use crate::payload::PayloadError;
use crate::retry::DisconnectReason;
use crate::SendError;

/// What a deadline was waiting for (carried by [`Error::TimedOut`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Wait {
    /// TCP connect.
    Connect,
    /// The Veltix handshake.
    Handshake,
    /// The reply to a request (`send_and_wait`).
    Request,
    /// A PONG.
    Ping,
    /// Room in a full outbound queue (`send` with a deadline).
    Send,
    /// Queued output to drain on close or shutdown.
    Flush,
}

/// Everything a driver's `Client` or `Server` call can fail with, and what
/// a [`ClientSession`](crate::ClientSession) reports when connecting fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The address could not be resolved.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// Nobody listens there.
    #[error("connection refused by {0}")]
    Refused(String),
    /// A deadline passed: `what` was not done `after` this long.
    #[error("{what:?} timed out after {after:?}")]
    TimedOut {
        /// What was being waited for.
        what: Wait,
        /// How long was waited.
        after: Duration,
    },
    /// The server refused us with this reason (`server_full`).
    #[error("rejected by the server: {0}")]
    Rejected(String),
    /// The server speaks another protocol major.
    #[error("protocol version mismatch: peer speaks {0}")]
    VersionMismatch(String),
    /// Any other handshake failure.
    #[error(transparent)]
    Handshake(HandshakeError),
    /// Not connected (never connected, disconnected, or the handshake is still running).
    #[error("not connected")]
    NotConnected,
    /// The connection closed.
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// The core refused the command.
    #[error(transparent)]
    Send(SendError),
    /// A payload could not be decoded/encoded.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A route for this message type exists already (the first one stays).
    #[error("message type {0} already has a route")]
    RouteExists(crate::frame::MessageType),
    /// The server is already running.
    #[error("the server is already running")]
    AlreadyRunning,
    /// The server or client has been shut down.
    #[error("shut down")]
    ShutDown,
    /// TLS failed: the handshake (certificate not trusted, wrong name,
    /// expired, no client certificate, a peer that does not speak TLS, ...)
    /// or a TLS record later on. The drivers box a `veltix_tls::TlsError`;
    /// downcast the source to match on it.
    #[error("TLS: {0}")]
    Tls(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl From<HandshakeError> for Error {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Rejected(r) => Error::Rejected(r),
            HandshakeError::IncompatibleProtocolVersion(v) => Error::VersionMismatch(v),
            e => Error::Handshake(e),
        }
    }
}

impl From<CloseReason> for Error {
    fn from(r: CloseReason) -> Self {
        match r {
            CloseReason::Handshake(e) => e.into(),
            r => Error::Closed(r),
        }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        match e {
            SendError::NotConnected => Error::NotConnected,
            SendError::Closed(r) => Error::Closed(r),
            e => Error::Send(e),
        }
    }
}

impl Error {
    /// Whether retrying with the same settings cannot help: an
    /// authentication or policy failure in the handshake
    /// ([`HandshakeError::is_permanent`]). A reconnecting client gives up
    /// at once.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Handshake(e) if e.is_permanent())
    }

    /// Whether this is a [`TimedOut`](Error::TimedOut).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::TimedOut { .. })
    }

    /// A request's or ping's failure, with the timeout it was given.
    pub fn from_request_failure(f: RequestFailure, what: Wait, timeout: Duration) -> Error {
        match f {
            RequestFailure::TimedOut => Error::TimedOut {
                what,
                after: timeout,
            },
            RequestFailure::Closed(r) => Error::Closed(r),
        }
    }

    /// Maps the I/O error of a TCP connect to `addr` (with `timeout`).
    pub fn from_connect(
        e: std::io::Error,
        addr: impl std::fmt::Display,
        timeout: Duration,
    ) -> Error {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Error::Refused(addr.to_string()),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Error::TimedOut {
                what: Wait::Connect,
                after: timeout,
            },
            _ => Error::Io(e),
        }
    }

    /// Maps the close reason of a connection that failed its handshake
    /// (a handshake deadline becomes [`Error::TimedOut`]).
    pub fn from_handshake_close(reason: CloseReason, timeout: Duration) -> Error {
        match reason {
            CloseReason::Handshake(HandshakeError::TimedOut) => Error::TimedOut {
                what: Wait::Handshake,
                after: timeout,
            },
            r => r.into(),
        }
    }

    /// What Veltix reports to `on_disconnect` for a failed connect attempt:
    /// the server's rejection, `Error` on the first `connect()`, and
    /// `ServerClosed` inside a reconnect loop.
    pub fn disconnect_reason(&self, initial_connect: bool) -> DisconnectReason {
        match self {
            Error::Rejected(r) => DisconnectReason::Rejected(r.clone()),
            _ if initial_connect => DisconnectReason::Error,
            _ => DisconnectReason::ServerClosed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_are_typed() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(
            matches!(Error::from_connect(refused, "h:1", Duration::ZERO), Error::Refused(a) if a == "h:1")
        );
        let e = Error::from_handshake_close(
            CloseReason::Handshake(HandshakeError::TimedOut),
            Duration::from_secs(5),
        );
        assert!(
            matches!(e, Error::TimedOut { what: Wait::Handshake, after } if after == Duration::from_secs(5))
        );
        let e: Error =
            CloseReason::Handshake(HandshakeError::Rejected("server_full".into())).into();
        assert!(matches!(e, Error::Rejected(ref r) if r == "server_full"));
        assert_eq!(
            e.disconnect_reason(true),
            DisconnectReason::Rejected("server_full".into())
        );
        assert_eq!(
            Error::NotConnected.disconnect_reason(true),
            DisconnectReason::Error
        );
        assert_eq!(
            Error::NotConnected.disconnect_reason(false),
            DisconnectReason::ServerClosed
        );
    }
}
