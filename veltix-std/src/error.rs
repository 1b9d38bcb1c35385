//! The driver's error type.

use std::time::Duration;

use veltix_proto::{
    CloseReason, ConfigError, HandshakeError, PayloadError, RequestFailure, SendError,
};

/// Everything a `Client` or `Server` call can fail with.
#[derive(Debug, thiserror::Error)]
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
    /// TCP connect or the handshake took longer than `handshake_timeout`.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
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
    /// No reply before the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// A payload could not be decoded/encoded.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A socket error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server is already running, or stopped for good.
    #[error("invalid state: {0}")]
    State(&'static str),
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

impl From<RequestFailure> for Error {
    fn from(f: RequestFailure) -> Self {
        match f {
            RequestFailure::TimedOut => Error::Timeout(Duration::ZERO),
            RequestFailure::Closed(r) => Error::Closed(r),
        }
    }
}
