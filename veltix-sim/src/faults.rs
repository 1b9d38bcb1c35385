//! How links behave: [`LinkConfig`] (latency, segmentation and faults) and
//! [`Partition`]s.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::NodeId;

/// How one TCP-like link behaves. Every probability is drawn from the
/// link's own seeded stream when the link opens (per direction), or per
/// segment / per dial where stated.
///
/// Start from a preset and change fields:
///
/// ```
/// use std::time::Duration;
/// use veltix_sim::LinkConfig;
/// let mut c = LinkConfig::hostile();
/// c.corrupt = 0.0; // everything but flipped bytes
/// let calm = LinkConfig::none().with_latency(Duration::from_millis(20));
/// assert_eq!(calm.reset, 0.0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct LinkConfig {
    /// One-way latency of every segment.
    pub latency: Duration,
    /// Extra random delay per segment, in `[0, jitter]` (order is kept, as TCP does).
    pub jitter: Duration,
    /// Largest segment: writes are cut at random points into segments of
    /// `1..=max_segment` bytes; due segments are coalesced into one read,
    /// handed to the receiver in random chunks.
    pub max_segment: usize,
    /// Bytes one direction holds in flight. A sender whose pipe is full
    /// keeps what it took from its core and reports it written only as the
    /// pipe accepts it, so a receiver that does not read fills the sender's
    /// `max_outbound`.
    pub window: usize,
    /// Per direction: probability of a reset (both ends see
    /// `ConnectionReset`) at a random byte offset in `[0, reset_within)`.
    pub reset: f64,
    /// See [`reset`](Self::reset).
    pub reset_within: u64,
    /// Per direction: probability of one flipped bit, at a random byte
    /// offset in `[0, corrupt_within)`. (TCP's checksum normally prevents
    /// this; Veltix's CRC covers payloads only.)
    pub corrupt: f64,
    /// See [`corrupt`](Self::corrupt).
    pub corrupt_within: u64,
    /// Per direction: probability that the receiver stops reading for up
    /// to `max_pause`, starting within `stop_reading_within` of the open.
    pub stop_reading: f64,
    /// See [`stop_reading`](Self::stop_reading).
    pub stop_reading_within: Duration,
    /// Per segment: probability of a stall of up to `max_pause` (later
    /// segments wait behind it).
    pub stall: f64,
    /// Longest stall or reading pause.
    pub max_pause: Duration,
    /// Per dial: probability that the network refuses the connection.
    pub dial_fail: f64,
}

impl LinkConfig {
    /// No faults: 1 ms of latency, large segments, a 1 MiB window.
    pub fn none() -> Self {
        LinkConfig {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            max_segment: 1 << 16,
            window: 1 << 20,
            reset: 0.0,
            reset_within: 200_000,
            corrupt: 0.0,
            corrupt_within: 100_000,
            stop_reading: 0.0,
            stop_reading_within: Duration::from_secs(20),
            stall: 0.0,
            max_pause: Duration::ZERO,
            dial_fail: 0.0,
        }
    }

    /// Every fault on, at rates that still let work get done: 5 ms + up to
    /// 20 ms of jitter, segments of up to 1 500 bytes, a 64 KiB window; per
    /// direction a 25 % chance of a reset within 200 000 bytes, 15 % of a
    /// flipped bit within 100 000 bytes, 15 % of a reader pausing for up to
    /// 8 s; stalls of up to 8 s on 0.2 % of segments; 3 % of dials refused.
    pub fn hostile() -> Self {
        LinkConfig {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(20),
            max_segment: 1500,
            window: 64 * 1024,
            reset: 0.25,
            reset_within: 200_000,
            corrupt: 0.15,
            corrupt_within: 100_000,
            stop_reading: 0.15,
            stop_reading_within: Duration::from_secs(20),
            stall: 0.002,
            max_pause: Duration::from_secs(8),
            dial_fail: 0.03,
        }
    }

    /// The same, with this one-way latency.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The same, with this jitter.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// The same without flipped bits (every other fault kept).
    pub fn without_corruption(mut self) -> Self {
        self.corrupt = 0.0;
        self
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self::none()
    }
}

/// One direction of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Dir {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

impl Dir {
    /// 0 for [`ToServer`](Dir::ToServer), 1 for [`ToClient`](Dir::ToClient).
    pub fn index(self) -> usize {
        match self {
            Dir::ToServer => 0,
            Dir::ToClient => 1,
        }
    }

    pub(crate) const BOTH: [Dir; 2] = [Dir::ToServer, Dir::ToClient];
}

impl std::fmt::Display for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dir::ToServer => "c->s",
            Dir::ToClient => "s->c",
        })
    }
}

/// A network partition: nothing crosses between side `a` and side `b`
/// from `from` until `until` (forever when `None`, or until
/// [`Sim::heal`](crate::Sim::heal)).
///
/// While it holds, bytes already sent stay in their pipes (nothing is
/// lost, as with TCP retransmitting behind a dead route) and are read
/// after the heal; senders keep writing until their window is full, so
/// their cores' write deadlines run. A dial across it gets no answer:
/// it completes at the heal if the session is still dialling then,
/// otherwise the session's own dial deadline fails the attempt.
///
/// ```
/// use std::time::Duration;
/// use veltix_sim::{Partition, Sim};
/// let mut sim = Sim::new(1);
/// # let (a, b) = (veltix_sim::NodeId::from_index(0), veltix_sim::NodeId::from_index(1));
/// let t = sim.now();
/// sim.partition(Partition::between(&[a], &[b]).from(t + Duration::from_secs(10)).until(t + Duration::from_secs(20)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub(crate) a: BTreeSet<NodeId>,
    pub(crate) b: BTreeSet<NodeId>,
    pub(crate) from: Option<Instant>,
    pub(crate) until: Option<Instant>,
}

impl Partition {
    /// Cuts every link between a node of `a` and a node of `b`, from now
    /// until healed.
    pub fn between(a: &[NodeId], b: &[NodeId]) -> Self {
        Partition {
            a: a.iter().copied().collect(),
            b: b.iter().copied().collect(),
            from: None,
            until: None,
        }
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(node: NodeId) -> Self {
        Partition {
            a: [node].into_iter().collect(),
            b: BTreeSet::new(),
            from: None,
            until: None,
        }
    }

    /// Starts at `at` instead of now.
    pub fn from(mut self, at: Instant) -> Self {
        self.from = Some(at);
        self
    }

    /// Heals at `at`.
    pub fn until(mut self, at: Instant) -> Self {
        self.until = Some(at);
        self
    }

    /// Whether it separates `x` from `y` (ignoring time).
    pub fn separates(&self, x: NodeId, y: NodeId) -> bool {
        if self.b.is_empty() {
            // isolate(): one side against everybody else.
            return self.a.contains(&x) != self.a.contains(&y);
        }
        (self.a.contains(&x) && self.b.contains(&y)) || (self.a.contains(&y) && self.b.contains(&x))
    }
}

/// A partition registered with [`Sim::partition`](crate::Sim::partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId(pub(crate) u32);

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "partition#{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates() {
        let n = NodeId::from_index;
        let p = Partition::between(&[n(0), n(1)], &[n(2)]);
        assert!(p.separates(n(0), n(2)) && p.separates(n(2), n(1)));
        assert!(!p.separates(n(0), n(1)) && !p.separates(n(3), n(2)));
        let i = Partition::isolate(n(1));
        assert!(i.separates(n(1), n(5)) && i.separates(n(0), n(1)));
        assert!(!i.separates(n(0), n(5)));
    }
}
