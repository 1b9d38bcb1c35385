//! The books of a network simulation: every message and request the test
//! applications sent, what became of it, and the ground truth the checks
//! need (which links the network corrupted). Shared by every node's
//! application through an `Rc<RefCell<Ledger>>`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use veltix_proto::{DisconnectReason, DisconnectState, MessageType, PeerId};
use veltix_sim::LinkId;

use crate::reconnect_model::{self, Reason};

pub const MSG: MessageType = MessageType::new(200);
pub const REQ: MessageType = MessageType::new(201);
pub const GROUPS: u8 = 3;

/// The SCRAM user of even clients.
pub const SIM_USER: &str = "sim-user";
/// The identity odd clients' bearer token maps to.
pub const SIM_SERVICE: &str = "sim-service";

/// Message directions in the books: 0 client->server, 1 server->client,
/// 2 request (and its echoed reply), 3 broadcast copy for one client.
pub type Key = (u8, usize, u64);

/// A message (or request) an application sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub link: LinkId,
    pub delivered: u32,
    pub told_failed: bool,
}

/// What [`Ledger::payload`] made for one seq (the rest follows from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dir: u8,
    client: u32,
    filler: usize,
    sum: [u8; 4],
}

/// Counters of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Seed of the run (shown in the report).
    pub seed: u64,
    /// Messages delivered intact, both directions (broadcast copies included).
    pub delivered: u64,
    /// Broadcast copies delivered.
    pub broadcast_delivered: u64,
    /// Messages lost with their sender told (failed connection or send error).
    pub lost_told: u64,
    /// Requests answered.
    pub responses: u64,
    /// Replies that arrived after their request had failed.
    pub late_replies: u64,
    /// Requests failed at their deadline.
    pub timeouts: u64,
    /// Requests failed because their connection closed.
    pub aborted: u64,
    /// Connections established.
    pub connects: u64,
    /// Server-side connects whose identity was checked (authentication on).
    pub authenticated: u64,
    /// Dials refused with `server_full`.
    pub rejections: u64,
    /// Dials that failed (refused by the network).
    pub dial_failures: u64,
    /// `DisconnectState` reports checked against the model.
    pub reports: u64,
    /// Manual disconnects.
    pub manual: u64,
    /// Links reset by a fault.
    pub resets: u64,
    /// Bits flipped by a fault.
    pub corruptions: u64,
    /// Messages lost on a link whose bytes were corrupted in flight.
    pub lost_to_corruption: u64,
    /// Bytes the receivers dropped (counted by the decoders).
    pub discarded_bytes: u64,
    /// Replies whose id was altered by a corrupted header byte (the CRC
    /// covers the payload only; see TESTING.md).
    pub header_corruption_misroutes: u64,
    /// Simulation steps (each moves time to the next thing due).
    pub steps: u64,
}

/// Everything the applications sent and what became of it.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Authentication is on (no corruption in the faults).
    pub auth: bool,
    /// Manual disconnects may happen (off in the quiet period).
    pub faults_on: bool,
    /// Applications send (off at the very end, so that everything lands).
    pub traffic: bool,
    pub max_connections: Option<usize>,
    pub request_timeout: Duration,
    /// Probability of a manual disconnect per client action.
    pub disconnect: f64,
    /// Each client's group (its tag on the server).
    pub groups: Vec<u8>,
    pub sent: BTreeMap<Key, Sent>,
    /// The keys sent on each link and not yet settled by its failure.
    pub by_link: BTreeMap<LinkId, Vec<Key>>,
    /// (link, direction) pairs whose bytes the network corrupted (0 =
    /// client->server): the ground truth the loss accounting needs.
    pub corrupted: BTreeSet<(LinkId, u8)>,
    /// (client, seq) of requests that failed (their replies may still come).
    pub expired: BTreeSet<(usize, u64)>,
    pub next_seq: u64,
    /// What each payload was made of, by its seq: a delivered payload is
    /// checked against it byte for byte ([`Ledger::parse`]).
    pub stamps: Vec<Option<Stamp>>,
    /// Links on which the client saw the handshake finish.
    pub established: BTreeSet<LinkId>,
    /// Which link and client a peer is on (ids are never reused).
    pub peer_link: BTreeMap<PeerId, (LinkId, usize)>,
    /// Peers by serial (the server's per-peer traffic timers carry it).
    pub peer_by_serial: BTreeMap<u64, PeerId>,
    /// Peers whose `Connected` was reported and `Disconnected` not yet.
    pub connected: BTreeSet<PeerId>,
    /// Peers ever reported `Connected`.
    pub ever_connected: BTreeSet<PeerId>,
    /// Transports the hub accepted and has not finished.
    pub live: usize,
    pub report: Report,
}

impl Ledger {
    pub fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A payload for `seq` (see `payload`), remembered for [`Ledger::parse`].
    pub fn payload(&mut self, dir: u8, client: usize, seq: u64, filler: usize) -> Bytes {
        let p = payload(dir, client, seq, filler);
        let i = usize::try_from(seq).expect("seq fits usize");
        if self.stamps.len() <= i {
            self.stamps.resize(i + 1, None);
        }
        let sum = p[p.len() - 4..].try_into().expect("4 bytes");
        let stamp = Stamp {
            dir,
            client: client as u32,
            filler,
            sum,
        };
        assert!(
            self.stamps[i].replace(stamp).is_none(),
            "two payloads for seq {seq}"
        );
        p
    }

    /// The (direction, client, seq) of a payload that is byte for byte
    /// the one [`Ledger::payload`] made for its seq; `None` for anything
    /// else (a damaged payload). Stricter than checking the checksum, and
    /// no byte is hashed again.
    pub fn parse(&self, p: &[u8]) -> Option<(u8, usize, u64)> {
        if p.len() < 17 {
            return None;
        }
        let (body, sum) = p.split_at(p.len() - 4);
        let dir = body[0];
        let client = u32::from_be_bytes(body[1..5].try_into().ok()?);
        let seq = u64::from_be_bytes(body[5..13].try_into().ok()?);
        let stamp = (*self.stamps.get(usize::try_from(seq).ok()?)?)?;
        let want = Stamp {
            dir,
            client,
            filler: body.len() - 13,
            sum: sum.try_into().ok()?,
        };
        let b = (seq % 251) as u8;
        // (A fold, not `all`: it vectorizes.)
        let filler_ok = body[13..].iter().fold(0u8, |acc, &x| acc | (x ^ b)) == 0;
        (stamp == want && filler_ok).then_some((dir, client as usize, seq))
    }

    /// Records a message sent on `link` (`refused`: its `send` failed).
    pub fn sent(&mut self, key: Key, link: LinkId, refused: bool) {
        self.sent.insert(
            key,
            Sent {
                link,
                delivered: 0,
                told_failed: refused,
            },
        );
        if !refused {
            self.by_link.entry(link).or_default().push(key);
        }
    }

    /// The connection on `link` failed: every message sent on it and not
    /// delivered is one its sender was told about.
    pub fn connection_failed(&mut self, link: LinkId) {
        for key in self.by_link.remove(&link).unwrap_or_default() {
            if let Some(s) = self.sent.get_mut(&key) {
                if s.delivered == 0 {
                    s.told_failed = true;
                }
            }
        }
    }

    pub fn link_corrupted(&self, link: Option<LinkId>) -> bool {
        link.is_some_and(|l| self.corrupted.contains(&(l, 0)) || self.corrupted.contains(&(l, 1)))
    }

    /// A payload of direction `dir` arrived (on `link`; `parsed` is what
    /// [`Ledger::parse`] made of it): intact, sent by somebody, in the
    /// right direction, the first time.
    pub fn record_delivery(
        &mut self,
        dir: u8,
        parsed: Option<(u8, usize, u64)>,
        link: Option<LinkId>,
    ) -> Result<(), String> {
        let Some((d, client, seq)) = parsed else {
            return Err(format!("a damaged payload was delivered on {link:?}"));
        };
        if d != dir {
            return Err("a payload arrived in the wrong direction".into());
        }
        let Some(rec) = self.sent.get_mut(&(dir, client, seq)) else {
            return Err(format!(
                "delivered a message nobody sent: {dir}/{client}/{seq}"
            ));
        };
        rec.delivered += 1;
        if rec.delivered > 1 {
            return Err(format!("message {dir}/{client}/{seq} delivered twice"));
        }
        self.report.delivered += 1;
        Ok(())
    }

    /// The end: every message not delivered was sent on a connection that
    /// failed (or its `send` failed), or on a pipe the network corrupted.
    pub fn settle(&mut self) -> Result<(), String> {
        let (mut lost_told, mut lost_corrupt) = (0, 0);
        for (&(dir, c, seq), s) in &self.sent {
            if s.delivered > 0 {
                continue;
            }
            if s.told_failed {
                lost_told += 1;
            } else if self.corrupted.contains(&(s.link, dir.min(1))) {
                // No acks in Veltix: a frame dropped by the CRC check is
                // lost without word to its sender (see TESTING.md).
                lost_corrupt += 1;
            } else {
                return Err(format!(
                    "message {dir}/{c}/{seq} on {} was lost and its sender was never told",
                    s.link
                ));
            }
        }
        self.report.lost_told = lost_told;
        self.report.lost_to_corruption = lost_corrupt;
        if self.sent.is_empty() && !self.groups.is_empty() {
            return Err("no traffic at all".into());
        }
        Ok(())
    }
}

/// Payload: direction u8, client u32, seq u64, filler, then a checksum u32 of all before it.
fn payload(dir: u8, client: usize, seq: u64, filler: usize) -> Bytes {
    let mut v = Vec::with_capacity(17 + filler);
    v.push(dir);
    v.extend_from_slice(&(client as u32).to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    let b = (seq % 251) as u8;
    let sum = checksum_run(checksum(&v), b, filler);
    v.resize(v.len() + filler, b);
    v.extend_from_slice(&sum.to_be_bytes());
    Bytes::from(v)
}

const FNV32_BASIS: u32 = 0x811C_9DC5;
const FNV32_PRIME: u32 = 0x0100_0193;

/// FNV-1a: a different checksum than the protocol's CRC (part of the
/// payload's bytes; [`Ledger::parse`] compares them to what was made).
fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(FNV32_BASIS, |h, &b| fnv32_step(h, b))
}

fn fnv32_step(h: u32, b: u8) -> u32 {
    (h ^ u32::from(b)).wrapping_mul(FNV32_PRIME)
}

/// The checksum continued from `h` over `n` copies of `b`: what the byte
/// loop computes, in O(256 + log n) steps (fillers of up to 20 000 bytes
/// made this the costliest line of a run). The low byte of the state
/// evolves alone, by a permutation (the prime is odd), so it returns to
/// its start after `t <= 256` bytes; those `t` bytes add up to the affine
/// map `h -> h * prime^t + s` (the xor is `h + ((l ^ b) - l)`, `l` the low
/// byte), applied `n / t` times by squaring, then `n % t` bytes.
fn checksum_run(mut h: u32, b: u8, n: usize) -> u32 {
    let l0 = h as u8;
    let mut t = 1;
    let mut l = (l0 ^ b).wrapping_mul(FNV32_PRIME as u8);
    while l != l0 {
        l = (l ^ b).wrapping_mul(FNV32_PRIME as u8);
        t += 1;
    }
    if n < 2 * t {
        return (0..n).fold(h, |h, _| fnv32_step(h, b));
    }
    let start = h;
    h = (0..t).fold(h, |h, _| fnv32_step(h, b));
    let qt = FNV32_PRIME.wrapping_pow(t as u32);
    let s = h.wrapping_sub(start.wrapping_mul(qt));
    let (mut mq, mut ms) = (qt, s);
    let mut m = n / t - 1;
    while m > 0 {
        if m & 1 == 1 {
            h = h.wrapping_mul(mq).wrapping_add(ms);
        }
        ms = ms.wrapping_mul(mq).wrapping_add(ms);
        mq = mq.wrapping_mul(mq);
        m >>= 1;
    }
    (0..n % t).fold(h, |h, _| fnv32_step(h, b))
}

#[test]
fn the_checksum_of_a_run_is_the_byte_loops() {
    for h in [0, 1, 0xFF, FNV32_BASIS, 0xDEAD_BEEF, u32::MAX] {
        for b in 0..=255u8 {
            for n in [0, 1, 2, 255, 256, 257, 600, 20_000] {
                let want = (0..n).fold(h, |h, _| fnv32_step(h, b));
                assert_eq!(checksum_run(h, b, n), want, "h {h:x} b {b} n {n}");
            }
        }
    }
}

pub fn to_state(r: reconnect_model::Report) -> DisconnectState {
    DisconnectState {
        permanent: r.permanent,
        attempt: r.attempt,
        retry_max: r.retry_max,
        reason: match r.reason {
            Reason::ServerClosed => DisconnectReason::ServerClosed,
            Reason::Error => DisconnectReason::Error,
            Reason::Manual => DisconnectReason::Manual,
            Reason::Rejected(s) => DisconnectReason::Rejected(s),
        },
    }
}

/// 32 seed bytes for a nonce generator, from the run's seed.
pub fn seed_bytes(seed: u64, salt: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, c) in out.chunks_mut(8).enumerate() {
        c.copy_from_slice(
            &(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i as u64).to_le_bytes(),
        );
    }
    out
}
