//! `decoder_resync`: the decoder's bounded-work resynchronisation (the CRC
//! budget, [`DiscardReason::ResyncLimit`]) under resync-heavy streams.

use std::time::Instant;

use bytes::BytesMut;

use super::frames::Tracker;
use super::{cut_points, pieces, prefix, XorShift};
use crate::decoder::{
    Decoded, Decoder, DecoderConfig, Discard, DiscardReason, DEFAULT_RESYNC_BUDGET_BURST,
};
use crate::frame::{Frame, Header, MessageType, HEADER_LEN, MAGIC};

/// The stream built from one input stops growing past this many bytes:
/// enough for a thousand resyncs, small enough to stay fast.
const MAX_SCRIPT: usize = 16 * 1024;

/// Reads the script one byte at a time (0 once it is exhausted).
struct Script<'a> {
    data: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}

/// A header announcing `payload_len` bytes with the given CRC.
fn header(payload_len: u32, crc32: u32, request_id: u16) -> [u8; HEADER_LEN] {
    Header {
        flags: 0,
        message_type: MessageType(200),
        payload_len,
        crc32,
        request_id,
    }
    .to_bytes()
}

/// The stream: resync bait from the script, honest frames in between.
fn build(max: usize, script: &mut Script<'_>) -> Stream {
    let max_payload = max - HEADER_LEN;
    let mut s = Vec::new();
    let mut honest = Vec::new();
    let mut marks = Vec::new();
    while !script.data.is_empty() && s.len() < MAX_SCRIPT {
        marks.push(s.len());
        let op = script.byte();
        let arg = script.byte();
        let id = u16::from(op);
        match op & 7 {
            // An honest frame of at most `max_message_size` bytes.
            0 => {
                let len = usize::from(arg) * 17 % (max_payload + 1);
                let fill = script.byte();
                let start = s.len();
                Frame::new(MessageType(200 + u16::from(op >> 3)), id, vec![fill; len])
                    .encode(&mut s)
                    .expect("small");
                honest.push((start, s.len() - start));
            }
            // A header alone with a CRC that (almost surely) does not match
            // what follows: the longest payload, a short one, or none.
            1 => {
                let len = match op >> 6 {
                    0 | 1 => max_payload,
                    2 => usize::from(arg) % (max_payload + 1),
                    _ => 0,
                };
                let crc = 0x5678_0000 | (u32::from(op) << 8) | u32::from(arg);
                s.extend_from_slice(&header(len as u32, crc, id));
            }
            // The attack of issue 10: headers back to back, each announcing
            // the longest payload (made of the headers after it).
            2 => {
                let h = header(max_payload as u32, 0x1234_5678 ^ u32::from(arg), id);
                for _ in 0..=arg % 64 {
                    s.extend_from_slice(&h);
                }
            }
            // Magic everywhere: `VX` or `VVX` runs.
            3 => {
                let unit: &[u8] = if op & 8 != 0 { b"VVX" } else { &MAGIC };
                for _ in 0..=arg % 64 {
                    s.extend_from_slice(unit);
                }
            }
            // A header announcing more than `max_message_size`.
            4 => {
                let len = if op & 8 != 0 {
                    u32::MAX
                } else {
                    (max_payload + 1 + usize::from(arg) * 64) as u32
                };
                s.extend_from_slice(&header(len, u32::from(arg), id));
            }
            // Raw bytes from the input.
            5 => s.extend_from_slice(script.bytes(usize::from(arg % 32))),
            // A whole frame whose CRC is off by a few bits.
            6 => {
                let len = usize::from(arg) * 13 % (max_payload + 1);
                let start = s.len();
                Frame::new(MessageType(200), id, vec![op; len])
                    .encode(&mut s)
                    .expect("small");
                s[start + 9] ^= 1 | (arg & 0x70);
            }
            // Filler without magic (lets announced payloads complete).
            _ => s.resize(s.len() + 16 * (1 + usize::from(arg % 64)), 0),
        }
    }
    Stream {
        bytes: s,
        honest,
        marks,
    }
}

/// What [`build`] made.
struct Stream {
    bytes: Vec<u8>,
    /// Offset and length of each honest frame.
    honest: Vec<(usize, usize)>,
    /// Where each op's bytes begin.
    marks: Vec<usize>,
}

/// What the decoder must have done, recomputed from the events and the
/// input at their positions.
#[derive(Default)]
struct Model {
    /// CRC credit left (the rule of `DecoderConfig::resync_budget_factor`).
    credit: u64,
    /// Payload bytes the decoder must have run through the CRC.
    crc_bytes: u64,
    /// Of which in checks that failed and were paid for.
    paid: u64,
    /// Bytes it must have examined searching for `VX`.
    scan_bytes: u64,
    /// Bytes pushed while the decoder was running.
    pushed_live: u64,
    /// Where the decoder gave up (`ResyncLimit`), if it did.
    gave_up_at: Option<usize>,
    overflowed: bool,
    /// Delivered frames (offset, length).
    frames: Vec<(usize, usize)>,
}

impl Model {
    fn event(&mut self, at: usize, buf: &[u8], d: &Decoded) {
        let checked = || {
            let h = Header::parse(buf).expect("a CRC check needs a header");
            (h.frame_len() - HEADER_LEN) as u64
        };
        let resync = |d: &Discard| {
            // The search reads from offset 1 through the `X` of the magic
            // it finds, or to the end. (The tracker checks that the discard
            // ends exactly on that magic, or takes everything.)
            if d.bytes < buf.len() {
                d.bytes as u64 + 1
            } else {
                d.bytes as u64 - 1
            }
        };
        match d {
            Decoded::Frame(f) => {
                self.crc_bytes += f.payload.len() as u64;
                self.frames.push((at, f.encoded_len()));
            }
            Decoded::Discarded(d) => match d.reason {
                DiscardReason::CrcMismatch { .. } => {
                    let c = checked();
                    assert!(
                        c <= self.credit,
                        "a failed check of {c} bytes passed with {} bytes of credit",
                        self.credit
                    );
                    self.credit -= c;
                    self.crc_bytes += c;
                    self.paid += c;
                    self.scan_bytes += resync(d);
                }
                DiscardReason::ResyncLimit => {
                    let c = checked();
                    assert!(
                        c > self.credit,
                        "gave up on a check of {c} bytes with {} bytes of credit",
                        self.credit
                    );
                    self.crc_bytes += c;
                    self.gave_up_at = Some(at);
                }
                DiscardReason::BadMagic | DiscardReason::Oversize { .. } => {
                    self.scan_bytes += resync(d);
                }
                DiscardReason::BufferOverflow => self.overflowed = true,
                DiscardReason::UnknownType(_) => panic!("no type filter here: {d:?}"),
            },
        }
    }
}

/// Resync-heavy streams into a non-strict [`Decoder`] with a small CRC
/// budget: the work stays bounded and honest frames keep coming through.
///
/// Layout: `p[0]` bits 0–1: `max_message_size` (64, 256, 1024, 4096); bits
/// 2–3: drain after every push, now and then, or only at the end; bit 4:
/// `push_bytes` now and then. `p[1] % 9`: `resync_budget_factor` (0–8).
/// `p[2] & 7`: `resync_budget_burst` (0, half a `max_message_size`, one less
/// than one, one, four, 40 MiB (the default), `15·(p[2] >> 3)`, 40 MiB).
/// `p[3]`: how the stream is cut (the style of [`cut_points`], and the
/// seed; the marks are where each op's bytes begin). Then
/// the script, ops of two bytes (`op`, `arg`; low 3 bits of `op`): an
/// honest frame (and a fill byte), a header alone announcing the longest,
/// a short or an empty payload with a wrong CRC, up to 64 such headers back
/// to back (the attack the budget stops), up to 64 `VX` or `VVX`, a header
/// announcing more than `max_message_size` (up to `u32::MAX`), `arg % 32`
/// raw bytes from the input, a whole frame with a wrong CRC, zero filler
/// (which lets the payloads headers announce complete). Cuts never split
/// the magic of an honest frame (a resync may drop a trailing `V`, by the
/// spec).
///
/// Asserts, besides everything `frame_decode` checks of each event (exact
/// positions, counters, conservation): a failed CRC check passes only when
/// the credit (`factor` per byte pushed, banked up to `burst`) covers it and
/// is paid from it, and the decoder gives up (`ResyncLimit`, once, last)
/// exactly when a check costs more than the credit left; `crc_bytes` and
/// `scan_bytes` are exactly the bytes checked and searched; the CRC work on
/// failed checks is at most `factor × pushed` and the whole CRC work at
/// most `(factor + 2) × pushed`, the search at most `2 × pushed`; every
/// honest frame the decoder went past (before the point where it gave up,
/// if it did; what it still holds at the end is a frame still arriving, as
/// `frame_decode` checks) was delivered at its offset, unless a frame the
/// decoder delivered covers its start (a "bad" CRC the input made right).
pub fn decoder_resync(_t0: Instant, data: &[u8]) {
    decoder_resync_report(data);
}

/// What one [`decoder_resync`] execution did, for tests of the body itself
/// (that its seeds reach what they are named for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncReport {
    /// Bytes pushed into the decoder.
    pub pushed: usize,
    /// Honest frames in the stream.
    pub honest: usize,
    /// Of which delivered at their offset.
    pub honest_delivered: usize,
    /// Failed CRC checks (paid for).
    pub crc_mismatch: u64,
    /// Whether the decoder gave up ([`DiscardReason::ResyncLimit`]).
    pub gave_up: bool,
}

/// [`decoder_resync`], returning what it saw.
pub fn decoder_resync_report(data: &[u8]) -> ResyncReport {
    let (p, rest) = prefix::<4>(data);
    let max = [64, 256, 1024, 4096][usize::from(p[0] & 3)];
    let drain_mode = (p[0] >> 2) & 3;
    let factor = u32::from(p[1] % 9);
    let burst = match p[2] & 7 {
        0 => 0,
        1 => max / 2,
        2 => max - HEADER_LEN - 1,
        3 => max,
        4 => 4 * max,
        6 => HEADER_LEN * usize::from(p[2] >> 3),
        _ => DEFAULT_RESYNC_BUDGET_BURST,
    };
    let config = DecoderConfig {
        max_message_size: max,
        resync_budget_factor: factor,
        resync_budget_burst: burst,
        ..DecoderConfig::default()
    };
    let Stream {
        bytes: stream,
        honest,
        marks,
    } = build(max, &mut Script { data: rest });

    let mut rng = XorShift::new(u64::from(u32::from_le_bytes(p)) ^ ((stream.len() as u64) << 32));
    let mut dec = Decoder::new(config.clone());
    let mut t = Tracker::new(config, &stream);
    let mut m = Model::default();
    let mut cuts = cut_points(p[3], &mut rng, stream.len(), || marks);
    // Never end a push between the `V` and the `X` of an honest frame.
    cuts.retain(|&c| honest.binary_search_by_key(&(c - 1), |h| h.0).is_err());
    let drain = |dec: &mut Decoder, t: &mut Tracker<'_>, m: &mut Model| {
        while let Some(d) = dec.next_frame() {
            if m.gave_up_at.is_none() {
                let buf = &t.stream[t.cursor..t.pushed];
                m.event(t.cursor, buf, &d);
            }
            t.event(dec, d);
        }
        t.check(dec);
        let st = dec.stats();
        assert_eq!(st.crc_bytes, m.crc_bytes, "CRC work miscounted");
        assert_eq!(st.scan_bytes, m.scan_bytes, "search work miscounted");
    };
    for piece in pieces(&cuts, stream.len()) {
        let n = piece.len();
        let chunk = &stream[piece];
        if !dec.is_failed() {
            let earned = u64::from(factor) * n as u64;
            m.credit = (m.credit + earned).min(burst as u64);
            m.pushed_live += n as u64;
        }
        if p[0] & 0x10 != 0 && rng.below(2) == 0 {
            dec.push_bytes(BytesMut::from(chunk));
        } else {
            dec.push(chunk);
        }
        t.pushed += n;
        let now = match drain_mode {
            0 => true,
            1 | 2 => rng.below(4) == 0,
            _ => false,
        };
        if now {
            drain(&mut dec, &mut t, &mut m);
        }
    }
    drain(&mut dec, &mut t, &mut m);

    let st = *dec.stats();
    assert_eq!(dec.is_failed(), m.gave_up_at.is_some());
    assert_eq!(st.resync_limit, u64::from(m.gave_up_at.is_some()));
    let live = m.pushed_live;
    assert!(
        m.paid <= u64::from(factor) * live,
        "failed checks cost {} CRC bytes for {live} bytes pushed (factor {factor})",
        m.paid
    );
    assert!(
        st.crc_bytes <= (u64::from(factor) + 2) * live,
        "{} CRC bytes for {live} bytes pushed (factor {factor})",
        st.crc_bytes
    );
    assert!(st.scan_bytes <= 2 * stream.len() as u64);

    let mut report = ResyncReport {
        pushed: stream.len(),
        honest: honest.len(),
        honest_delivered: 0,
        crc_mismatch: st.crc_mismatch,
        gave_up: m.gave_up_at.is_some(),
    };
    // Liveness: the honest frames came through.
    if m.overflowed {
        return report;
    }
    // Those the decoder went past (what it still holds is a frame still
    // arriving: the tracker checked it), or, when it gave up, those before.
    let end = m.gave_up_at.unwrap_or(t.cursor + 1);
    let mut delivered = m.frames.iter().peekable();
    for &(start, len) in honest.iter().take_while(|h| h.0 < end) {
        while delivered.next_if(|f| f.0 + f.1 <= start).is_some() {}
        let exact = delivered.peek().is_some_and(|&&f| f == (start, len));
        let covered = delivered.peek().is_some_and(|f| f.0 < start);
        assert!(
            exact || covered,
            "the honest frame at {start} ({len} bytes) was lost (gave up at {:?})",
            m.gave_up_at
        );
        report.honest_delivered += usize::from(exact);
    }
    report
}
