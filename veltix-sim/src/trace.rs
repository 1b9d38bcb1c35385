//! What happened: the [`Trace`] of a run.
//!
//! Every network action, every event a core reported, every application
//! timer and note becomes a [`TraceEntry`]. The trace keeps the last
//! entries (a bounded ring, [`Sim::set_trace_capacity`](crate::Sim::set_trace_capacity))
//! and a running 64-bit hash of *all* of them, so two runs can be compared
//! bit for bit ([`Trace::fingerprint`]) without keeping millions of entries.
//! Times are offsets from the simulation's start, so the hash does not
//! depend on the wall clock the base instant was taken from.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use veltix_proto::{DisconnectState, HubEvent, Reply, SessionEvent};

use crate::faults::{Dir, PartitionId};
use crate::rng::fnv1a;
use crate::{LinkId, NodeId};

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceEntry {
    /// Its number in the run (0, 1, 2, ...).
    pub seq: u64,
    /// Virtual time since the start.
    pub at: Duration,
    /// The node it concerns (`None`: the network as a whole).
    pub node: Option<NodeId>,
    /// What.
    pub kind: TraceKind,
}

/// What a [`TraceEntry`] records.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TraceKind {
    /// The node's application was started (`on_start`).
    Started,
    /// A client's session asked for a connection to `server`.
    Dialing {
        /// The server node dialled.
        server: NodeId,
    },
    /// The network refused that dial.
    DialRefused {
        /// The server node dialled.
        server: NodeId,
    },
    /// A partition swallowed that dial (it completes at the heal, if the
    /// session still waits then).
    DialHeld {
        /// The server node dialled.
        server: NodeId,
    },
    /// A client's dial connected: `link` is open, the handshake starts.
    Opened {
        /// The new link.
        link: LinkId,
        /// Its server node.
        server: NodeId,
    },
    /// A server's hub accepted the transport of `link` as `peer`.
    Accepted {
        /// The link.
        link: LinkId,
        /// The peer's serial ([`PeerId::as_u64`](veltix_proto::PeerId::as_u64)).
        peer: u64,
    },
    /// A server's hub refused the transport of `link` (`server_full`).
    Refused {
        /// The link.
        link: LinkId,
    },
    /// A driver moved `bytes` from its core into the pipe (reported written).
    Written {
        /// The link.
        link: LinkId,
        /// The direction.
        dir: Dir,
        /// How many.
        bytes: u32,
    },
    /// A receiver read `bytes` (one coalesced read, handed in chunks).
    Read {
        /// The link.
        link: LinkId,
        /// The direction.
        dir: Dir,
        /// How many.
        bytes: u32,
    },
    /// A receiver read end-of-file (the sender dropped its transport).
    Eof {
        /// The link.
        link: LinkId,
        /// The direction read.
        dir: Dir,
    },
    /// A reset fault: both ends see `ConnectionReset`.
    Reset {
        /// The link.
        link: LinkId,
        /// The direction whose byte `offset` it hit.
        dir: Dir,
        /// Bytes of that direction delivered before it.
        offset: u64,
    },
    /// A corruption fault flipped one bit of byte `offset`.
    Corrupted {
        /// The link.
        link: LinkId,
        /// The direction.
        dir: Dir,
        /// The byte's offset in that direction.
        offset: u64,
    },
    /// A receiver stopped reading until `until` (a fault).
    ReadPause {
        /// The link.
        link: LinkId,
        /// The direction not read.
        dir: Dir,
        /// Offset from the start when reading resumes.
        until: Duration,
    },
    /// A client's session let go of the transport of `link`.
    Dropped {
        /// The link.
        link: LinkId,
    },
    /// A server's hub finished `peer` (its transport is dropped).
    Finished {
        /// The link.
        link: LinkId,
        /// The peer's serial.
        peer: u64,
    },
    /// A client's session reported an event.
    Session(EventNote),
    /// A server's hub reported an event about `peer`.
    Hub {
        /// The peer's serial.
        peer: u64,
        /// The event.
        event: EventNote,
    },
    /// An application timer fired.
    Timer {
        /// The tag it was set with.
        tag: u64,
    },
    /// A partition started.
    Partitioned(PartitionId),
    /// A partition healed.
    Healed(PartitionId),
    /// A note from an application ([`ClientCtx::note`](crate::ClientCtx::note),
    /// [`ServerCtx::note`](crate::ServerCtx::note)) or the test
    /// ([`Sim::note`](crate::Sim::note)).
    Note(String),
}

/// A core's event, summed up for the trace (payloads by length and digest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventNote {
    /// The handshake finished.
    Connected,
    /// A message that answered no request.
    Message {
        /// Its type.
        ty: u16,
        /// Its request id.
        request_id: u16,
        /// Payload length.
        len: u32,
        /// FNV-1a of the payload.
        digest: u64,
    },
    /// A request or ping ended.
    Completed {
        /// The request's id.
        request_id: u16,
        /// Reply payload length and digest, or `None` for a pong or a failure.
        reply: Option<(u32, u64)>,
        /// Why it failed, if it did.
        failure: Option<String>,
    },
    /// A `DisconnectState` report (client).
    Disconnected(DisconnectState),
    /// A peer went away (server), with the close reason.
    PeerGone(String),
    /// The session gave up connecting, with its last error.
    GaveUp(String),
    /// An event kind this version does not sum up.
    Other,
}

fn message(f: &veltix_proto::Frame) -> EventNote {
    EventNote::Message {
        ty: f.message_type.code(),
        request_id: f.request_id,
        len: f.payload.len() as u32,
        digest: fnv1a(&f.payload),
    }
}

fn completed(request_id: u16, outcome: &Result<Reply, veltix_proto::RequestFailure>) -> EventNote {
    let (reply, failure) = match outcome {
        Ok(Reply::Frame(f)) => (Some((f.payload.len() as u32, fnv1a(&f.payload))), None),
        Ok(_) => (None, None),
        Err(e) => (None, Some(e.to_string())),
    };
    EventNote::Completed {
        request_id,
        reply,
        failure,
    }
}

impl EventNote {
    /// Sums up a client session's event.
    pub fn of_session(e: &SessionEvent) -> Self {
        match e {
            SessionEvent::Connected(_) => EventNote::Connected,
            SessionEvent::Message(f) => message(f),
            SessionEvent::Completed {
                request_id,
                outcome,
            } => completed(*request_id, outcome),
            SessionEvent::Disconnected(d) => EventNote::Disconnected(d.clone()),
            SessionEvent::GaveUp(e) => EventNote::GaveUp(e.to_string()),
            _ => EventNote::Other,
        }
    }

    /// Sums up a hub's event.
    pub fn of_hub(e: &HubEvent) -> Self {
        match e {
            HubEvent::Connected(_) => EventNote::Connected,
            HubEvent::Message(f) => message(f),
            HubEvent::Completed {
                request_id,
                outcome,
            } => completed(*request_id, outcome),
            HubEvent::Disconnected(r) => EventNote::PeerGone(r.to_string()),
            _ => EventNote::Other,
        }
    }
}

/// A deterministic 64-bit hasher (FNV-1a over little-endian encodings, so
/// `usize` hashes the same on 32- and 64-bit targets).
#[derive(Debug, Clone)]
struct TraceHasher(u64);

impl Hasher for TraceHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    fn write_usize(&mut self, i: usize) {
        self.write(&(i as u64).to_le_bytes());
    }
    fn write_isize(&mut self, i: isize) {
        self.write(&(i as i64).to_le_bytes());
    }
}

/// The identity of a run's trace: how many entries, and the hash of all
/// of them. Two runs with equal fingerprints did the same things in the
/// same order at the same virtual times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// Entries recorded.
    pub entries: u64,
    /// Running hash of every entry.
    pub hash: u64,
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} entries, hash {:016x}", self.entries, self.hash)
    }
}

/// The trace of a run: the last entries and a hash of all of them.
#[derive(Debug, Clone)]
pub struct Trace {
    capacity: usize,
    ring: VecDeque<TraceEntry>,
    count: u64,
    hasher: TraceHasher,
    names: Vec<String>,
}

impl Trace {
    pub(crate) fn new(capacity: usize) -> Self {
        Trace {
            capacity,
            ring: VecDeque::new(),
            count: 0,
            hasher: TraceHasher(0xCBF2_9CE4_8422_2325),
            names: Vec::new(),
        }
    }

    pub(crate) fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        while self.ring.len() > capacity {
            self.ring.pop_front();
        }
    }

    pub(crate) fn add_name(&mut self, name: &str) {
        self.names.push(name.to_owned());
    }

    /// Records one entry; returns it (for the observer).
    pub(crate) fn record(
        &mut self,
        at: Duration,
        node: Option<NodeId>,
        kind: TraceKind,
    ) -> &TraceEntry {
        let e = TraceEntry {
            seq: self.count,
            at,
            node,
            kind,
        };
        self.count += 1;
        e.hash(&mut self.hasher);
        if self.ring.len() >= self.capacity.max(1) {
            self.ring.pop_front();
        }
        self.ring.push_back(e);
        let last = self.ring.back().expect("just pushed");
        last
    }

    /// Entries recorded so far (all of them, kept or not).
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The running hash of every entry so far.
    pub fn hash(&self) -> u64 {
        self.hasher.finish()
    }

    /// Entry count and hash.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            entries: self.count,
            hash: self.hash(),
        }
    }

    /// The entries kept (the last ones, oldest first).
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &TraceEntry> + '_ {
        self.ring.iter()
    }

    /// A node's name.
    pub fn name(&self, node: NodeId) -> &str {
        self.names
            .get(node.index())
            .map_or("?", std::string::String::as_str)
    }

    /// One entry as a line: time, node name, what.
    pub fn render(&self, e: &TraceEntry) -> String {
        let node = e.node.map_or("-", |n| self.name(n));
        let mut s = format!(
            "#{:<8} {:>5}.{:06}s {:<14} ",
            e.seq,
            e.at.as_secs(),
            e.at.subsec_micros(),
            node
        );
        let _ = match &e.kind {
            TraceKind::Dialing { server } => write!(s, "dialing {}", self.name(*server)),
            TraceKind::DialRefused { server } => {
                write!(s, "dial to {} refused by the network", self.name(*server))
            }
            TraceKind::DialHeld { server } => {
                write!(s, "dial to {} held by a partition", self.name(*server))
            }
            TraceKind::Opened { link, server } => {
                write!(s, "{link} open to {}", self.name(*server))
            }
            other => write!(s, "{other:?}"),
        };
        s
    }

    /// The last `n` entries kept, one per line.
    pub fn render_tail(&self, n: usize) -> String {
        let skip = self.ring.len().saturating_sub(n);
        let mut out = String::new();
        for e in self.ring.iter().skip(skip) {
            out.push_str("    ");
            out.push_str(&self.render(e));
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_the_hash_covers_everything() {
        let mut a = Trace::new(3);
        let mut b = Trace::new(100);
        for i in 0..10u64 {
            for t in [&mut a, &mut b] {
                t.record(Duration::from_millis(i), None, TraceKind::Timer { tag: i });
            }
        }
        assert_eq!(a.entries().len(), 3);
        assert_eq!(a.entries().next().map(|e| e.seq), Some(7));
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.record(Duration::ZERO, None, TraceKind::Note("x".into()));
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = Trace::new(3);
        for i in 0..10u64 {
            c.record(
                Duration::from_millis(i),
                None,
                TraceKind::Timer { tag: i ^ 1 },
            );
        }
        assert_ne!(a.hash(), c.hash(), "a different tag changes the hash");
    }
}
