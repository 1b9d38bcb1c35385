//! Small public value types: ids, link facts, counters.

use std::fmt;
use std::time::Instant;

use veltix_proto::PeerId;

use crate::faults::Dir;

/// A node of the simulation (server or client), numbered in the order they
/// were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) u32);

impl NodeId {
    /// Its number (0 for the first node added).
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The id of the `i`th node added.
    pub fn from_index(i: usize) -> Self {
        NodeId(u32::try_from(i).expect("fewer than 2^32 nodes"))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node#{}", self.0)
    }
}

/// One TCP-like connection between a client node and a server node (one
/// per successful dial; never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub(crate) u64);

impl LinkId {
    /// Its number (1, 2, 3, ... in the order links opened).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link#{}", self.0)
    }
}

/// What the network did in one direction of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipeInfo {
    /// Bytes the sender's driver wrote into it.
    pub written: u64,
    /// Bytes read by (or, after the receiver left, drained towards) the receiver.
    pub delivered: u64,
    /// A bit of it was flipped by a fault.
    pub corrupted: bool,
    /// Bytes the receiver's decoder discarded (as its connection counted them).
    pub discarded: u64,
}

/// The simulator's ground truth about a link: what a test needs to judge
/// what the cores did with it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LinkInfo {
    /// The link.
    pub id: LinkId,
    /// Its client node.
    pub client: NodeId,
    /// Its server node.
    pub server: NodeId,
    /// The hub's id of it (`None`: the hub refused it, `server_full`).
    pub peer: Option<PeerId>,
    /// When it opened.
    pub opened: Instant,
    /// A fault reset it.
    pub reset: bool,
    /// The hub refused it and its whole rejection reached the client
    /// (possibly with a flipped bit: see `to_client.corrupted`).
    pub refusal_delivered: bool,
    /// Client to server.
    pub to_server: PipeInfo,
    /// Server to client.
    pub to_client: PipeInfo,
}

impl LinkInfo {
    /// One direction.
    pub fn pipe(&self, dir: Dir) -> &PipeInfo {
        match dir {
            Dir::ToServer => &self.to_server,
            Dir::ToClient => &self.to_client,
        }
    }
}

/// Counters of a simulation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SimStats {
    /// Steps taken (each moves time to the next thing due, or handles what
    /// is due now).
    pub steps: u64,
    /// Dials the sessions asked for.
    pub dials: u64,
    /// Dials the network refused.
    pub dial_refusals: u64,
    /// Dials a partition held.
    pub dials_held: u64,
    /// Links opened.
    pub links: u64,
    /// Transports the hubs refused (`server_full`).
    pub server_full: u64,
    /// Links reset by a fault.
    pub resets: u64,
    /// Bits flipped by a fault.
    pub corruptions: u64,
    /// Receivers that stopped reading for a while.
    pub read_pauses: u64,
    /// Segments delayed by a stall.
    pub stalls: u64,
    /// Bytes written into pipes.
    pub bytes_written: u64,
    /// Bytes read from pipes.
    pub bytes_read: u64,
    /// Bytes the receivers' decoders discarded.
    pub discarded_bytes: u64,
    /// Application timers fired.
    pub timers: u64,
}
