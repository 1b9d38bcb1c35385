//! The public value types of a [`Hub`](super::Hub): peer ids, events,
//! broadcast targets and outcomes, counters.

use serde_json::Value;

use crate::event::{CloseReason, Reply, RequestFailure};
use crate::frame::Frame;
use crate::handshake::PeerHello;

/// A connection of a [`Hub`](super::Hub): a slot index and the peer's serial
/// (1, 2, 3, ... in accept order, one counter per hub), so an id of a
/// connection that ended never names a later one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId {
    pub(super) index: u32,
    pub(super) generation: u32,
}

impl PeerId {
    /// The slot index (reused after the connection ends).
    pub fn index(self) -> u32 {
        self.index
    }
    /// The peer's serial: unique within its hub (1, 2, 3, ... in accept
    /// order; it wraps only after 2³² connections).
    pub fn as_u64(self) -> u64 {
        u64::from(self.generation)
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer#{}", self.generation)
    }
}

/// What a [`Hub`](super::Hub) reports through `poll_event`, per peer.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HubEvent {
    /// The peer finished its handshake.
    Connected(PeerHello),
    /// A message that answered no pending request.
    Message(Frame),
    /// A request or ping to this peer ended.
    Completed {
        /// The request's id.
        request_id: u16,
        /// Its reply, or why there is none.
        outcome: Result<Reply, RequestFailure>,
    },
    /// A peer that had connected went away (its last event).
    Disconnected(CloseReason),
}

/// Whom a broadcast goes to. Only peers that finished the handshake are
/// ever targeted.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Target<'a> {
    /// Every connected peer.
    All,
    /// Every connected peer except these.
    Except(&'a [PeerId]),
    /// Exactly these peers (those still connected).
    Only(&'a [PeerId]),
    /// Every connected peer with this tag (equal to the value, when given).
    Tag(&'a str, Option<&'a Value>),
}

/// The outcome of a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Broadcast {
    /// The id carried by every copy.
    pub request_id: u16,
    /// Peers it was queued for.
    pub sent: usize,
    /// Targeted peers whose queue refused it (full or closing).
    pub skipped: usize,
}

/// Counters of a hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused with `server_full`.
    pub rejected: u64,
    /// Connections cut to keep partial frames within `max_buffered_input`.
    pub budget_cuts: u64,
}
