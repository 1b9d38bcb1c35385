//! Links as the simulator keeps them: two pipes, what each driver holds,
//! and the fault plan drawn when the link opened.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use veltix_proto::PeerId;

use crate::faults::{Dir, LinkConfig};
use crate::rng::SimRng;
use crate::types::{LinkId, LinkInfo, NodeId, PipeInfo};

mod table;

pub(crate) use table::{Links, DUE};

/// One direction of a link: in-order segments with arrival times.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    pub segments: VecDeque<(Instant, Bytes)>,
    pub in_flight: usize,
    /// Bytes accepted from the sender.
    pub written: u64,
    /// Bytes taken out at the receiving end (the offset faults count in).
    pub delivered: u64,
    /// Reset when `delivered` passes this offset.
    pub reset_at: Option<u64>,
    /// Flip a bit of the byte at this offset.
    pub corrupt_at: Option<u64>,
    /// The receiver stops reading at this time ...
    pub pause_at: Option<Instant>,
    /// ... until this one.
    pub paused_until: Option<Instant>,
    pub corrupted: bool,
    pub discarded: u64,
}

impl Pipe {
    /// When the receiver could read next (ignoring whether it wants to).
    pub fn readable_at(&self) -> Option<Instant> {
        let head = self.segments.front()?.0;
        Some(match self.paused_until {
            Some(p) => head.max(p),
            None => head,
        })
    }

    /// The faults of this direction, drawn when the link opens.
    pub fn plan(rng: &mut SimRng, cfg: &LinkConfig, now: Instant, faulty: bool) -> Pipe {
        let mut p = Pipe::default();
        // The draws happen whatever the probabilities, so one setting does
        // not shift the randomness of the others.
        let reset = rng.chance(cfg.reset);
        let reset_at = rng.below(cfg.reset_within.max(1));
        let corrupt = rng.chance(cfg.corrupt);
        let corrupt_at = rng.below(cfg.corrupt_within.max(1));
        let pause = rng.chance(cfg.stop_reading);
        let pause_at = rng.upto(cfg.stop_reading_within);
        if faulty {
            p.reset_at = reset.then_some(reset_at);
            p.corrupt_at = corrupt.then_some(corrupt_at);
            p.pause_at = pause.then_some(now + pause_at);
        }
        p
    }

    /// Cancels every fault still to come (pauses end now).
    pub fn calm(&mut self) {
        self.reset_at = None;
        self.corrupt_at = None;
        self.pause_at = None;
        self.paused_until = None;
    }

    pub fn info(&self) -> PipeInfo {
        PipeInfo {
            written: self.written,
            delivered: self.delivered,
            corrupted: self.corrupted,
            discarded: self.discarded,
        }
    }
}

/// Bytes a driver took from its core and its pipe has not accepted yet.
#[derive(Debug, Default)]
pub(crate) struct Held {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Held {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn push(&mut self, b: Bytes) {
        self.len += b.len();
        self.chunks.push_back(b);
    }
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }
    /// The first `n` bytes, contiguous (copied only when they span chunks).
    pub fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.len);
        self.len -= n;
        let front = self.chunks.front_mut().expect("n <= len");
        if front.len() >= n {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let front = self.chunks.front_mut().expect("n <= len");
            let k = (n - out.len()).min(front.len());
            out.extend_from_slice(&front.split_to(k));
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        out.freeze()
    }
}

/// A TCP-like connection between a client node and a server node.
#[derive(Debug)]
pub(crate) struct Link {
    pub id: LinkId,
    pub client: NodeId,
    pub server: NodeId,
    /// The session's id of this transport.
    pub transport: u64,
    pub opened: Instant,
    pub cfg: LinkConfig,
    pub rng: SimRng,
    /// Indexed by [`Dir::index`].
    pub pipes: [Pipe; 2],
    /// What the sending driver of each direction holds.
    pub held: [Held; 2],
    /// The hub's side (`None`: refused).
    pub peer: Option<PeerId>,
    /// The rejection still to write (refused transports).
    pub refusal: Option<Bytes>,
    pub client_gone: bool,
    pub server_gone: bool,
    /// EOF handed to the receiver of each direction.
    pub eof: [bool; 2],
    /// Reset: nothing moves any more.
    pub dead: bool,
    /// The hub named this link's peer in `poll_transmit_ready`.
    pub tx_ready: bool,
    /// Where [`Links`] filed this link's wake times.
    pub filed: table::Filed,
}

impl Link {
    /// Whether the receiver of `dir` dropped its transport (or never had one).
    pub fn receiver_gone(&self, dir: Dir) -> bool {
        match dir {
            Dir::ToServer => self.server_gone || self.peer.is_none(),
            Dir::ToClient => self.client_gone,
        }
    }

    /// Whether the sender of `dir` dropped its transport.
    pub fn sender_gone(&self, dir: Dir) -> bool {
        match dir {
            Dir::ToServer => self.client_gone,
            Dir::ToClient => self.server_gone,
        }
    }

    pub fn info(&self) -> LinkInfo {
        LinkInfo {
            id: self.id,
            client: self.client,
            server: self.server,
            peer: self.peer,
            opened: self.opened,
            reset: self.dead,
            refusal_delivered: self.peer.is_none()
                && !self.dead
                && self.refusal.is_none()
                && self.held[1].is_empty()
                && self.pipes[1].segments.is_empty(),
            to_server: self.pipes[0].info(),
            to_client: self.pipes[1].info(),
        }
    }

    /// Cuts `bytes` into segments with in-order arrival times; returns how
    /// many segments stalled.
    pub fn push(&mut self, dir: Dir, now: Instant, mut bytes: Bytes, faults: bool) -> u64 {
        let cfg = self.cfg;
        let pipe = &mut self.pipes[dir.index()];
        pipe.written += bytes.len() as u64;
        let mut stalls = 0;
        while !bytes.is_empty() {
            let n = (1 + self.rng.below(cfg.max_segment.max(1) as u64) as usize).min(bytes.len());
            let mut at = now + cfg.latency + self.rng.upto(cfg.jitter);
            let stall = self.rng.chance(cfg.stall);
            let pause = self.rng.upto(cfg.max_pause);
            if faults && stall {
                at += pause;
                stalls += 1;
            }
            if let Some(&(last, _)) = pipe.segments.back() {
                at = at.max(last); // TCP keeps order
            }
            pipe.in_flight += n;
            pipe.segments.push_back((at, bytes.split_to(n)));
        }
        stalls
    }

    /// A reader pause due by `now` starts; returns its end if it did.
    pub fn start_pause(&mut self, dir: Dir, now: Instant) -> Option<Instant> {
        let max = self.cfg.max_pause;
        let pipe = &mut self.pipes[dir.index()];
        if pipe.pause_at.is_none_or(|t| t > now) {
            return None;
        }
        pipe.pause_at = None;
        let until = now + self.rng.upto(max);
        pipe.paused_until = Some(until);
        Some(until)
    }
}

/// A dial swallowed by a partition.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeldDial {
    pub transport: u64,
    pub server: NodeId,
}

/// Offset of `t` from `start`, for the trace.
pub(crate) fn offset(start: Instant, t: Instant) -> Duration {
    t.saturating_duration_since(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_bytes_come_out_in_order_across_chunks() {
        let mut h = Held::default();
        h.push(Bytes::from_static(b"abc"));
        h.push(Bytes::from_static(b"defg"));
        h.push(Bytes::from_static(b"h"));
        assert_eq!(&h.take(2)[..], b"ab");
        assert_eq!(&h.take(3)[..], b"cde");
        assert_eq!(h.len(), 3);
        assert_eq!(&h.take(10)[..], b"fgh");
        assert!(h.is_empty());
    }

    #[test]
    fn segments_keep_order_and_count_in_flight() {
        let now = Instant::now();
        let mut l = Link {
            id: LinkId(1),
            client: NodeId(0),
            server: NodeId(1),
            transport: 1,
            opened: now,
            cfg: LinkConfig::hostile(),
            rng: SimRng::new(5),
            pipes: Default::default(),
            held: Default::default(),
            peer: None,
            refusal: None,
            client_gone: false,
            server_gone: false,
            eof: [false; 2],
            dead: false,
            tx_ready: false,
            filed: Default::default(),
        };
        l.push(Dir::ToServer, now, Bytes::from(vec![7u8; 10_000]), true);
        let p = &l.pipes[0];
        assert_eq!(p.in_flight, 10_000);
        assert!(p
            .segments
            .iter()
            .all(|(_, s)| s.len() <= 1500 && !s.is_empty()));
        assert!(p
            .segments
            .iter()
            .zip(p.segments.iter().skip(1))
            .all(|(a, b)| a.0 <= b.0));
    }
}
