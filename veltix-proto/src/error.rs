//! Errors returned by commands.

use crate::correlation::IdsExhausted;
use crate::event::CloseReason;
use crate::frame::PayloadTooLarge;

/// Why a command (`send`, `request`, `ping`, `reply`) was refused. Nothing was
/// queued when one of these comes back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The handshake has not finished yet.
    #[error("the handshake has not finished")]
    NotConnected,
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(CloseReason),
    /// The payload does not fit the u32 length field.
    #[error(transparent)]
    PayloadTooLarge(#[from] PayloadTooLarge),
    /// The outbound queue holds `queued` bytes; adding this frame would pass `limit`.
    #[error("outbound queue full ({queued} bytes queued, limit {limit})")]
    QueueFull {
        /// Bytes queued now.
        queued: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Every request id is pending.
    #[error(transparent)]
    IdsExhausted(#[from] IdsExhausted),
    /// An explicit request id is already pending.
    #[error("request id {0} is already pending")]
    IdInUse(u16),
    /// Types below 200 belong to the protocol (Python veltix's
    /// `MessageTypeError`); applications use 200 and above.
    #[error("message type {0} is reserved for the protocol (application types start at 200)")]
    ReservedType(crate::frame::MessageType),
}
