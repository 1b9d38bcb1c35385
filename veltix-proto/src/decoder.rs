//! Stream reassembly (spec §2): turns the bytes of one TCP direction into frames.
//!
//! The algorithm is the one Veltix 3.x runs, byte for byte:
//!
//! * nothing is examined until 15 bytes are buffered;
//! * bytes that do not start with `VX` are skipped up to the next `VX`
//!   (searched from offset 1; when none is found the whole buffer goes);
//! * a header announcing a frame longer than `max_message_size` (header
//!   included) is skipped the same way, without waiting for its payload;
//! * a frame whose CRC does not match is skipped the same way;
//! * a frame with a type the receiver does not accept is dropped whole;
//! * a chunk that would push the buffer past `max_buffer_size` clears the
//!   buffer and is itself discarded.
//!
//! One guard is ours, not Veltix's: the resync rule lets a peer make the
//! receiver check the CRC of the same bytes again and again (headers 15
//! bytes apart, each announcing a frame of nearly `max_message_size` with a
//! wrong CRC, cost one CRC over that many bytes per 15 bytes received). Outside
//! strict mode, CRC work spent on frames that then fail their check is paid
//! from a credit earned by the bytes pushed
//! ([`DecoderConfig::resync_budget_factor`] per byte, banked up to
//! [`DecoderConfig::resync_budget_burst`]); when a failed check costs more
//! than the credit left, the decoder discards its buffer with
//! [`DiscardReason::ResyncLimit`] and stops, as strict mode does. Frames that
//! pass their CRC cost nothing, so honest traffic never reaches the limit; a
//! check can only cover bytes already pushed, so the total CRC work stays
//! below `(factor + 2) × pushed`.
//!
//! The CRC is checked **before** the type (the order of Veltix's compiled
//! engine; the pure-Python engine checks the type first, which trusts a
//! corrupt header's length). Every skipped run is reported as a
//! [`Discard`] and counted in [`DecoderStats`]; nothing panics, and the buffer
//! never holds more than `max_buffer_size` bytes.
//!
//! ```
//! use veltix_proto::{Decoded, Decoder, DecoderConfig, Frame, MessageType};
//! let mut wire = b"junk".to_vec();
//! Frame::new(MessageType::new(200), 7, &b"hi"[..]).encode(&mut wire).unwrap();
//!
//! let mut dec = Decoder::new(DecoderConfig::default());
//! dec.push(&wire);
//! match dec.next_frame() {
//!     Some(Decoded::Discarded(d)) => assert_eq!(d.bytes, 4), // the junk
//!     other => panic!("{other:?}"),
//! }
//! match dec.next_frame() {
//!     Some(Decoded::Frame(f)) => assert_eq!(&f.payload[..], b"hi"),
//!     other => panic!("{other:?}"),
//! }
//! assert!(dec.next_frame().is_none());
//! ```

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::frame::{Frame, Header, MessageType, DEFAULT_MAX_MESSAGE_SIZE, HEADER_LEN, MAGIC};

/// Default cap on the receive buffer: 20 MiB (Veltix's fixed value).
pub const DEFAULT_MAX_BUFFER_SIZE: usize = 20 * 1024 * 1024;

/// Default [`DecoderConfig::resync_budget_factor`]: 8 bytes of CRC credit per
/// byte received.
pub const DEFAULT_RESYNC_BUDGET_FACTOR: u32 = 8;

/// Default [`DecoderConfig::resync_budget_burst`]: 40 MiB, four failed CRC
/// checks of a frame of the default `max_message_size`.
pub const DEFAULT_RESYNC_BUDGET_BURST: usize = 4 * DEFAULT_MAX_MESSAGE_SIZE;

/// Receiver-side limits and policy.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Largest acceptable frame, **header included** (default 10 MiB).
    pub max_message_size: usize,
    /// Cap on buffered, not yet decoded bytes (default 20 MiB).
    pub max_buffer_size: usize,
    /// In strict mode the first corruption (bad magic, oversize, CRC,
    /// overflow) stops the decoder instead of resynchronising; see
    /// [`Decoder::is_failed`]. Unknown types are not corruption.
    pub strict: bool,
    /// Types to deliver; frames of any other type are dropped whole, as Veltix
    /// drops unregistered types. `None` (the default) accepts every type.
    pub accepted_types: Option<Arc<TypeSet>>,
    /// Outside strict mode, bytes of CRC credit earned by each byte pushed
    /// (default [`DEFAULT_RESYNC_BUDGET_FACTOR`], 8); a new decoder has none.
    /// A CRC check that fails costs the payload length it covered; a check
    /// that passes costs nothing. When a failed check costs more than the
    /// credit left, the decoder gives up: [`DiscardReason::ResyncLimit`].
    /// With 0, any failed check of a non-empty payload is fatal. See the
    /// [module documentation](self).
    pub resync_budget_factor: u32,
    /// Outside strict mode, the most CRC credit that can be banked (default
    /// [`DEFAULT_RESYNC_BUDGET_BURST`], 40 MiB), so that a long honest
    /// exchange does not pay for a long attack. Keep it at a few
    /// `max_message_size`: below one, a single corrupt frame of the largest
    /// size stops the decoder. `usize::MAX` disables the limit.
    pub resync_budget_burst: usize,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_buffer_size: DEFAULT_MAX_BUFFER_SIZE,
            strict: false,
            accepted_types: None,
            resync_budget_factor: DEFAULT_RESYNC_BUDGET_FACTOR,
            resync_budget_burst: DEFAULT_RESYNC_BUDGET_BURST,
        }
    }
}

/// A set of message types, 8 KiB, meant to be shared between connections
/// through an `Arc`.
#[derive(Clone, PartialEq, Eq)]
pub struct TypeSet {
    bits: Box<[u64; 1024]>,
}

impl std::fmt::Debug for TypeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries((0..=u16::MAX).filter(|&c| self.contains(MessageType(c))))
            .finish()
    }
}

impl TypeSet {
    /// The empty set.
    pub fn new() -> Self {
        TypeSet {
            bits: Box::new([0; 1024]),
        }
    }
    /// Adds a type; PING and PONG should normally be members.
    pub fn insert(&mut self, t: MessageType) {
        self.bits[usize::from(t.0 >> 6)] |= 1 << (t.0 & 63);
    }
    /// Whether `t` is in the set.
    #[inline]
    pub fn contains(&self, t: MessageType) -> bool {
        self.bits[usize::from(t.0 >> 6)] & (1 << (t.0 & 63)) != 0
    }
}

impl Default for TypeSet {
    fn default() -> Self {
        Self::new()
    }
}

impl FromIterator<MessageType> for TypeSet {
    fn from_iter<I: IntoIterator<Item = MessageType>>(iter: I) -> Self {
        let mut s = TypeSet::new();
        for t in iter {
            s.insert(t);
        }
        s
    }
}

/// Why bytes were discarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscardReason {
    /// The buffer did not start with `VX`; bytes up to the next `VX` went.
    BadMagic,
    /// A header announced a frame of `declared` bytes (header included),
    /// more than `max_message_size`.
    Oversize {
        /// Announced total frame length.
        declared: u64,
    },
    /// The payload's CRC-32 did not match the header.
    CrcMismatch {
        /// CRC in the header.
        expected: u32,
        /// CRC of the received payload.
        actual: u32,
    },
    /// A well-formed frame of a type this receiver does not accept.
    UnknownType(MessageType),
    /// A chunk would have pushed the buffer past `max_buffer_size`: the buffer
    /// and the chunk were both discarded.
    BufferOverflow,
    /// Outside strict mode, a frame failed its CRC check when the CRC budget
    /// ([`DecoderConfig::resync_budget_factor`],
    /// [`DecoderConfig::resync_budget_burst`]) could not pay for it: the peer
    /// makes the decoder check the CRC of the same bytes over and over. The
    /// whole buffer was discarded and the decoder stopped
    /// ([`Decoder::is_failed`]); this is its last event.
    ResyncLimit,
}

impl DiscardReason {
    /// Whether this is corruption (everything except an unknown type).
    pub fn is_corruption(&self) -> bool {
        !matches!(self, DiscardReason::UnknownType(_))
    }
}

/// A counted drop: `bytes` bytes of input were thrown away for `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discard {
    /// Why.
    pub reason: DiscardReason,
    /// How many bytes of input were dropped.
    pub bytes: usize,
}

/// Counters of everything the decoder did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Frames delivered.
    pub frames: u64,
    /// Bytes delivered as frames (headers included).
    pub frame_bytes: u64,
    /// Discards for a missing magic.
    pub bad_magic: u64,
    /// Discards for an oversize header.
    pub oversize: u64,
    /// Discards for a CRC mismatch.
    pub crc_mismatch: u64,
    /// Frames dropped for an unaccepted type.
    pub unknown_type: u64,
    /// Buffer overflows.
    pub overflow: u64,
    /// Total bytes discarded, all reasons.
    pub discarded_bytes: u64,
    /// Work: payload bytes run through the CRC-32 (delivered, dropped and
    /// mismatching frames alike).
    pub crc_bytes: u64,
    /// Work: bytes examined while searching for the next `VX`.
    pub scan_bytes: u64,
    /// Stops for an exhausted CRC budget (0 or 1).
    pub resync_limit: u64,
}

impl DecoderStats {
    fn count(&mut self, d: &Discard) {
        self.discarded_bytes += d.bytes as u64;
        match d.reason {
            DiscardReason::BadMagic => self.bad_magic += 1,
            DiscardReason::Oversize { .. } => self.oversize += 1,
            DiscardReason::CrcMismatch { .. } => self.crc_mismatch += 1,
            DiscardReason::UnknownType(_) => self.unknown_type += 1,
            DiscardReason::BufferOverflow => self.overflow += 1,
            DiscardReason::ResyncLimit => self.resync_limit += 1,
        }
    }
}

/// One step of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete, intact frame of an accepted type.
    Frame(Frame),
    /// Bytes that were dropped, and why.
    Discarded(Discard),
}

/// What [`Decoder::next_frame_ref`] yields: a frame borrowed from the
/// receive buffer, or a discard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodedRef<'a> {
    /// A complete, intact frame of an accepted type.
    Frame {
        /// Its type.
        message_type: MessageType,
        /// Its request id.
        request_id: u16,
        /// Its flags byte, as received.
        flags: u8,
        /// Its payload, valid until the next call on the decoder.
        payload: &'a [u8],
    },
    /// Bytes that were dropped, and why.
    Discarded(Discard),
}

/// One decoding step, before the frame is taken out of the buffer.
enum Step {
    Frame(Header, usize),
    Discarded(Discard),
}

/// The receive side of one connection direction.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    config: DecoderConfig,
    /// A discard decided in `push` (overflow), reported by the next `next_frame`.
    pending: Option<Discard>,
    /// Bytes of the frame last lent by `next_frame_ref`, dropped at the next step.
    skip: usize,
    /// CRC credit left for checks that fail (outside strict mode).
    credit: u64,
    failed: bool,
    stats: DecoderStats,
}

impl Decoder {
    /// An empty decoder; it allocates nothing until the first input.
    pub fn new(config: DecoderConfig) -> Self {
        Decoder {
            buf: BytesMut::new(),
            config,
            pending: None,
            skip: 0,
            credit: 0,
            failed: false,
            stats: DecoderStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.skip
    }

    /// The counters.
    pub fn stats(&self) -> &DecoderStats {
        &self.stats
    }

    /// Whether the decoder stopped: in strict mode at the first corruption,
    /// otherwise at a [`DiscardReason::ResyncLimit`]. A failed decoder holds
    /// nothing and ignores all further input.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Drops everything buffered (without counting it as discarded) and
    /// releases the buffer; the counters are kept.
    pub fn clear(&mut self) {
        self.buf = BytesMut::new();
        self.pending = None;
        self.skip = 0;
    }

    /// Appends received bytes (one copy into the receive buffer). Call
    /// [`next_frame`](Self::next_frame) until it returns `None` after each push to get
    /// Veltix's exact results.
    pub fn push(&mut self, chunk: &[u8]) {
        self.release_lent();
        if self.failed || chunk.is_empty() {
            return;
        }
        self.earn(chunk.len());
        if self.overflows(chunk.len()) {
            return;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Appends received bytes, taking ownership: when nothing is buffered the
    /// chunk becomes the buffer, so no byte is copied.
    pub fn push_bytes(&mut self, chunk: BytesMut) {
        self.release_lent();
        if self.failed || chunk.is_empty() {
            return;
        }
        self.earn(chunk.len());
        if self.overflows(chunk.len()) {
            return;
        }
        if self.buf.is_empty() {
            self.buf = chunk;
        } else {
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// Drops the frame `next_frame_ref` lent last (its borrow has ended).
    #[inline(always)]
    fn release_lent(&mut self) {
        if self.skip > 0 {
            self.buf.advance(self.skip);
            self.skip = 0;
        }
    }

    /// Adds the CRC credit `received` bytes earn, up to the burst.
    #[inline]
    fn earn(&mut self, received: usize) {
        let earned = u64::from(self.config.resync_budget_factor).saturating_mul(received as u64);
        self.credit = self
            .credit
            .saturating_add(earned)
            .min(self.config.resync_budget_burst as u64);
    }

    fn overflows(&mut self, incoming: usize) -> bool {
        if self.buf.len().saturating_add(incoming) <= self.config.max_buffer_size {
            return false;
        }
        let d = Discard {
            reason: DiscardReason::BufferOverflow,
            bytes: self.buf.len() + incoming,
        };
        self.buf = BytesMut::new();
        self.record(d);
        true
    }

    fn record(&mut self, d: Discard) {
        self.stats.count(&d);
        if self.config.strict && d.reason.is_corruption() {
            self.failed = true;
            self.buf = BytesMut::new();
        }
        // Two overflows in a row without a `next_frame` in between merge.
        self.pending = Some(match self.pending.take() {
            Some(p) if p.reason == d.reason => Discard {
                reason: d.reason,
                bytes: p.bytes + d.bytes,
            },
            Some(p) => p, // counted already; keep the first one for reporting
            None => d,
        });
    }

    /// Skips to the next `VX` after offset 0, or clears the buffer.
    fn resync(&mut self, reason: DiscardReason) -> Discard {
        let found = find_magic(&self.buf[1..]);
        // The search reads through the `X` of the magic it finds.
        self.stats.scan_bytes += found.map_or(self.buf.len() - 1, |i| i + 2) as u64;
        let skip = found.map_or(self.buf.len(), |i| i + 1);
        self.buf.advance(skip);
        let d = Discard {
            reason,
            bytes: skip,
        };
        self.stats.count(&d);
        if self.config.strict {
            self.failed = true;
            self.buf = BytesMut::new();
        }
        d
    }

    /// Stops for good: the CRC budget is exhausted.
    fn give_up(&mut self) -> Discard {
        let d = Discard {
            reason: DiscardReason::ResyncLimit,
            bytes: self.buf.len(),
        };
        self.stats.count(&d);
        self.failed = true;
        self.buf = BytesMut::new();
        d
    }

    /// One decoding step shared by the owned and the borrowing paths: a
    /// complete intact frame (header and its total length, still in the
    /// buffer), a discard, or `None` when more input is needed.
    #[inline]
    fn step(&mut self) -> Option<Step> {
        self.release_lent();
        if let Some(d) = self.pending.take() {
            return Some(Step::Discarded(d));
        }
        if self.failed || self.buf.len() < HEADER_LEN {
            if self.buf.is_empty() && self.buf.capacity() != 0 {
                // Idle: give the allocation back (delivered frames keep their part alive).
                self.buf = BytesMut::new();
            }
            return None;
        }
        let Some(h) = Header::parse(&self.buf) else {
            return Some(Step::Discarded(self.resync(DiscardReason::BadMagic)));
        };
        let total = h.frame_len();
        if total > self.config.max_message_size {
            let declared = total as u64;
            return Some(Step::Discarded(
                self.resync(DiscardReason::Oversize { declared }),
            ));
        }
        if self.buf.len() < total {
            return None;
        }
        let checked = (total - HEADER_LEN) as u64;
        self.stats.crc_bytes += checked;
        let actual = crc32fast::hash(&self.buf[HEADER_LEN..total]);
        if actual != h.crc32 {
            if !self.config.strict && self.config.resync_budget_burst != usize::MAX {
                if checked > self.credit {
                    return Some(Step::Discarded(self.give_up()));
                }
                self.credit -= checked;
            }
            return Some(Step::Discarded(self.resync(DiscardReason::CrcMismatch {
                expected: h.crc32,
                actual,
            })));
        }
        if let Some(set) = &self.config.accepted_types {
            if !set.contains(h.message_type) {
                self.buf.advance(total);
                let d = Discard {
                    reason: DiscardReason::UnknownType(h.message_type),
                    bytes: total,
                };
                self.stats.count(&d);
                return Some(Step::Discarded(d));
            }
        }
        self.stats.frames += 1;
        self.stats.frame_bytes += total as u64;
        Some(Step::Frame(h, total))
    }

    /// Decodes the next frame or discard, or `None` when more input is needed.
    /// The frame's payload shares the receive buffer (no copy).
    #[inline]
    pub fn next_frame(&mut self) -> Option<Decoded> {
        Some(match self.step()? {
            Step::Discarded(d) => Decoded::Discarded(d),
            Step::Frame(h, total) => {
                self.buf.advance(HEADER_LEN);
                let payload = self.buf.split_to(total - HEADER_LEN).freeze();
                Decoded::Frame(Frame {
                    message_type: h.message_type,
                    request_id: h.request_id,
                    flags: h.flags,
                    payload,
                })
            }
        })
    }

    /// Like [`next_frame`](Self::next_frame), but the payload is borrowed
    /// from the receive buffer until the next call: no reference count is
    /// touched, for code that handles each frame inline (routing, counting,
    /// forwarding). Same rules, same counters.
    ///
    /// ```
    /// use veltix_proto::{frame::encode_frame, Decoder, DecoderConfig, MessageType};
    /// use veltix_proto::decoder::DecodedRef;
    /// let mut wire = Vec::new();
    /// for i in 0..3u16 {
    ///     encode_frame(MessageType::new(200), i, b"abc", &mut wire).unwrap();
    /// }
    /// let mut dec = Decoder::new(DecoderConfig::default());
    /// dec.push(&wire);
    /// let mut ids = Vec::new();
    /// while let Some(d) = dec.next_frame_ref() {
    ///     if let DecodedRef::Frame { request_id, payload, .. } = d {
    ///         assert_eq!(payload, b"abc");
    ///         ids.push(request_id);
    ///     }
    /// }
    /// assert_eq!(ids, [0, 1, 2]);
    /// ```
    #[inline]
    pub fn next_frame_ref(&mut self) -> Option<DecodedRef<'_>> {
        Some(match self.step()? {
            Step::Discarded(d) => DecodedRef::Discarded(d),
            Step::Frame(h, total) => {
                self.skip = total;
                DecodedRef::Frame {
                    message_type: h.message_type,
                    request_id: h.request_id,
                    flags: h.flags,
                    payload: &self.buf[HEADER_LEN..total],
                }
            }
        })
    }
}

/// Position of the first `VX` in `hay`.
#[inline]
fn find_magic(hay: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr::memchr(MAGIC[0], &hay[from..]) {
        let at = from + i;
        if hay.get(at + 1) == Some(&MAGIC[1]) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(t: u16, id: u16, p: &[u8]) -> Vec<u8> {
        Frame::new(MessageType(t), id, Bytes::copy_from_slice(p))
            .to_vec()
            .unwrap()
    }

    fn drain(d: &mut Decoder) -> Vec<Decoded> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn find_magic_cases() {
        assert_eq!(find_magic(b""), None);
        assert_eq!(find_magic(b"V"), None);
        assert_eq!(find_magic(b"VVX"), Some(1));
        assert_eq!(find_magic(b"abVX"), Some(2));
        assert_eq!(find_magic(b"VaVbX"), None);
    }

    #[test]
    fn strict_mode_stops_at_first_corruption() {
        let mut d = Decoder::new(DecoderConfig {
            strict: true,
            ..DecoderConfig::default()
        });
        let mut wire = b"0123456789abcdef".to_vec();
        wire.extend(frame(200, 1, b"x"));
        d.push(&wire);
        let out = drain(&mut d);
        assert_eq!(out.len(), 1);
        assert!(matches!(
            out[0],
            Decoded::Discarded(Discard {
                reason: DiscardReason::BadMagic,
                ..
            })
        ));
        assert!(d.is_failed());
        assert_eq!(d.buffered(), 0);
        d.push(&frame(200, 2, b"y"));
        assert!(d.next_frame().is_none());
    }

    #[test]
    fn unknown_type_is_not_corruption_in_strict_mode() {
        let set: TypeSet = [MessageType(200)].into_iter().collect();
        let mut d = Decoder::new(DecoderConfig {
            strict: true,
            accepted_types: Some(Arc::new(set)),
            ..DecoderConfig::default()
        });
        let mut wire = frame(300, 1, b"nope");
        wire.extend(frame(200, 2, b"yes"));
        d.push(&wire);
        let out = drain(&mut d);
        assert_eq!(out.len(), 2);
        assert!(!d.is_failed());
        assert_eq!(d.stats().unknown_type, 1);
        assert_eq!(d.stats().frames, 1);
    }

    #[test]
    fn overflow_is_reported_once_per_push_and_counted() {
        let mut d = Decoder::new(DecoderConfig {
            max_buffer_size: 50,
            ..DecoderConfig::default()
        });
        d.push(&[b'V'; 10]);
        d.push(&[b'Q'; 100]);
        assert_eq!(d.buffered(), 0);
        assert_eq!(
            drain(&mut d),
            vec![Decoded::Discarded(Discard {
                reason: DiscardReason::BufferOverflow,
                bytes: 110
            })]
        );
        assert_eq!(d.stats().overflow, 1);
    }

    #[test]
    fn borrowed_and_owned_paths_agree() {
        let mut wire = b"junk-before-the-frames!".to_vec();
        for i in 0..50u16 {
            wire.extend(frame(200 + (i % 3), i, &vec![i as u8; usize::from(i) * 7]));
            if i % 10 == 0 {
                wire.extend_from_slice(b"VXgarbage-with-magic");
            }
        }
        let cfg = DecoderConfig {
            max_message_size: 300,
            ..DecoderConfig::default()
        };
        let (mut a, mut b) = (Decoder::new(cfg.clone()), Decoder::new(cfg));
        let mut owned = Vec::new();
        let mut lent = Vec::new();
        for chunk in wire.chunks(37) {
            a.push(chunk);
            owned.extend(drain(&mut a));
            b.push(chunk);
            while let Some(d) = b.next_frame_ref() {
                lent.push(match d {
                    DecodedRef::Frame {
                        message_type,
                        request_id,
                        flags,
                        payload,
                    } => Decoded::Frame(Frame {
                        message_type,
                        request_id,
                        flags,
                        payload: Bytes::copy_from_slice(payload),
                    }),
                    DecodedRef::Discarded(d) => Decoded::Discarded(d),
                });
            }
            assert_eq!(a.buffered(), b.buffered());
        }
        assert_eq!(owned, lent);
        assert_eq!(a.stats(), b.stats());
        assert!(a.stats().oversize > 0 && a.stats().frames > 30);
    }

    /// Headers back to back, each announcing a `payload_len` payload (made of
    /// the headers after it) with a CRC that does not match: once the first
    /// `payload_len` bytes are in, every further header completes a candidate
    /// frame, which is CRC-checked and resynced by 15 bytes.
    fn bad_crc_headers(payload_len: u32, count: usize) -> Vec<u8> {
        let h = Header {
            flags: 0,
            message_type: MessageType(200),
            payload_len,
            crc32: 0x1234_5678,
            request_id: 0,
        };
        h.to_bytes().repeat(count)
    }

    /// Pushes `wire` in `piece`-byte chunks, draining after each; returns the
    /// events.
    fn trickle(d: &mut Decoder, wire: &[u8], piece: usize) -> Vec<Decoded> {
        let mut out = Vec::new();
        for chunk in wire.chunks(piece) {
            d.push(chunk);
            out.extend(drain(d));
        }
        out
    }

    fn is_limit(e: &Decoded) -> bool {
        matches!(
            e,
            Decoded::Discarded(Discard {
                reason: DiscardReason::ResyncLimit,
                ..
            })
        )
    }

    /// The attack of issue 10 at full scale: 10 MiB of headers announcing
    /// 10 MiB frames with a bad CRC, then one more header every 15 bytes.
    /// Without the budget each of those cost a 10 MiB CRC (~700 000 CRC bytes
    /// per byte received); now the decoder stops after a few.
    #[test]
    fn resync_attack_is_cut_off() {
        let cfg = DecoderConfig::default();
        let payload_len = (cfg.max_message_size - HEADER_LEN) as u32;
        let wire = bad_crc_headers(payload_len, cfg.max_message_size / HEADER_LEN + 1000);
        let mut d = Decoder::new(cfg.clone());
        let mut out = Vec::new();
        let mut pushed = 0u64;
        for chunk in wire.chunks(HEADER_LEN) {
            if d.is_failed() {
                break;
            }
            d.push(chunk);
            pushed += chunk.len() as u64;
            out.extend(drain(&mut d));
        }
        let st = *d.stats();
        eprintln!(
            "attack: pushed {pushed} crc_bytes {} scan_bytes {} crc_mismatch {}",
            st.crc_bytes, st.scan_bytes, st.crc_mismatch
        );
        assert!(d.is_failed());
        assert_eq!(d.buffered(), 0);
        assert!(is_limit(out.last().unwrap()));
        assert_eq!(out.iter().filter(|e| is_limit(e)).count(), 1);
        assert_eq!(st.resync_limit, 1);
        assert_eq!(st.frames, 0);
        // Every byte pushed before the stop is reported as discarded.
        assert_eq!(st.discarded_bytes, pushed);
        // Four 10 MiB checks from the 40 MiB burst, the fifth overdraws.
        assert_eq!(st.crc_mismatch, 4);
        assert!(st.crc_bytes <= 5 * pushed, "{} vs {pushed}", st.crc_bytes);
        let bound = (2 + u64::from(cfg.resync_budget_factor)) * pushed;
        assert!(st.crc_bytes <= bound);
        assert!(st.scan_bytes <= pushed);
        // Nothing more is examined.
        d.push(&wire[..HEADER_LEN * 10]);
        assert!(d.next_frame().is_none());
        assert_eq!(*d.stats(), st);
    }

    /// The same attack at a 64 KiB limit, where the credit cap is 640 times
    /// the limit: the CRC work stays within the documented bound.
    #[test]
    fn resync_attack_work_is_bounded_at_a_small_limit() {
        let cfg = DecoderConfig {
            max_message_size: 64 * 1024,
            ..DecoderConfig::default()
        };
        let payload_len = (64 * 1024 - HEADER_LEN) as u32;
        let wire = bad_crc_headers(payload_len, 64 * 1024 / HEADER_LEN + 2000);
        let mut d = Decoder::new(cfg.clone());
        let out = trickle(&mut d, &wire, HEADER_LEN);
        let st = *d.stats();
        // Input after the stop is ignored; what came before was all discarded.
        let pushed = st.discarded_bytes;
        eprintln!(
            "64 KiB attack: pushed {pushed} crc_bytes {} scan_bytes {}",
            st.crc_bytes, st.scan_bytes
        );
        assert!(d.is_failed() && is_limit(out.last().unwrap()));
        let bound = (2 + u64::from(cfg.resync_budget_factor)) * pushed;
        assert!(st.crc_bytes <= bound, "{} > {bound}", st.crc_bytes);
        assert!(st.scan_bytes <= pushed);
    }

    /// An honest frame of the largest size behind some junk, trickled in
    /// 1-byte and 15-byte pieces: one CRC over its payload, one scan over
    /// the junk.
    #[test]
    fn trickled_max_frame_costs_linear_work() {
        let cfg = DecoderConfig::default();
        let payload: Vec<u8> = (0..cfg.max_message_size - HEADER_LEN)
            .map(|i| (i % 251) as u8)
            .collect();
        let junk = [b'j'; 1000];
        let mut wire = junk.to_vec();
        wire.extend(frame(200, 7, &payload));
        for piece in [1, HEADER_LEN] {
            let mut d = Decoder::new(cfg.clone());
            let out = trickle(&mut d, &wire, piece);
            let st = *d.stats();
            eprintln!(
                "10 MiB frame in {piece}-byte pieces: pushed {} crc_bytes {} scan_bytes {}",
                wire.len(),
                st.crc_bytes,
                st.scan_bytes
            );
            let frames: Vec<_> = out
                .iter()
                .filter_map(|e| match e {
                    Decoded::Frame(f) => Some(f),
                    Decoded::Discarded(_) => None,
                })
                .collect();
            assert_eq!(frames.len(), 1);
            assert!(frames[0].payload[..] == payload[..]);
            assert!(!d.is_failed());
            assert_eq!(st.crc_bytes, payload.len() as u64);
            assert!(st.scan_bytes <= junk.len() as u64);
            assert_eq!(st.discarded_bytes, junk.len() as u64);
        }
    }

    /// Ordinary corruption (bit flips in big frames, good frames between
    /// them) never reaches the limit, even right after the decoder is made.
    #[test]
    fn corrupt_big_frames_do_not_reach_the_limit() {
        let cfg = DecoderConfig::default();
        let big = vec![b'p'; cfg.max_message_size - HEADER_LEN];
        let mut wire = Vec::new();
        let mut good = 0;
        for i in 0..6u16 {
            let mut bad = frame(200, i, &big);
            bad[HEADER_LEN + 1000] ^= 1;
            wire.extend(bad);
            if i % 2 == 1 {
                wire.extend(frame(201, i, b"between"));
                good += 1;
            }
        }
        let mut d = Decoder::new(cfg);
        let out = trickle(&mut d, &wire, 64 * 1024);
        assert!(!d.is_failed());
        assert_eq!(d.stats().crc_mismatch, 6);
        assert_eq!(d.stats().frames, good);
        assert!(!out.iter().any(is_limit));
    }

    /// With no budget at all, honest frames and junk still decode: only failed
    /// CRC checks are paid for.
    #[test]
    fn zero_budget_leaves_honest_traffic_alone() {
        let cfg = DecoderConfig {
            resync_budget_factor: 0,
            resync_budget_burst: 0,
            ..DecoderConfig::default()
        };
        let mut wire = b"some junk, more than fifteen bytes".to_vec();
        for i in 0..20u16 {
            wire.extend(frame(200, i, &vec![i as u8; usize::from(i) * 100]));
            wire.extend_from_slice(b"VV");
        }
        let mut reference = Decoder::new(DecoderConfig::default());
        let want = trickle(&mut reference, &wire, 7);
        let mut d = Decoder::new(cfg);
        assert_eq!(trickle(&mut d, &wire, 7), want);
        assert_eq!(d.stats().frames, 20);
        assert!(!d.is_failed());
    }

    #[test]
    fn exhausted_budget_stops_the_decoder() {
        let cfg = DecoderConfig {
            max_message_size: 1024,
            resync_budget_factor: 1,
            resync_budget_burst: 100,
            ..DecoderConfig::default()
        };
        // A failed check over an empty payload costs nothing.
        let mut empty = frame(200, 1, b"");
        empty[9] = 1;
        let mut wire = empty.clone();
        let mut bad = frame(200, 2, &[b'z'; 200]);
        bad[HEADER_LEN] ^= 1;
        wire.extend(&bad);
        wire.extend(frame(200, 3, b"after"));
        for borrowed in [false, true] {
            let mut d = Decoder::new(cfg.clone());
            d.push(&wire);
            let mut out = Vec::new();
            while let Some(e) = if borrowed {
                d.next_frame_ref().map(|e| match e {
                    DecodedRef::Discarded(x) => Decoded::Discarded(x),
                    DecodedRef::Frame { .. } => panic!("no frame expected"),
                })
            } else {
                d.next_frame()
            } {
                out.push(e);
            }
            assert_eq!(
                out,
                vec![
                    Decoded::Discarded(Discard {
                        reason: DiscardReason::CrcMismatch {
                            expected: 0x0100_0000,
                            actual: 0
                        },
                        bytes: HEADER_LEN,
                    }),
                    Decoded::Discarded(Discard {
                        reason: DiscardReason::ResyncLimit,
                        bytes: wire.len() - HEADER_LEN,
                    }),
                ]
            );
            assert!(d.is_failed());
            assert_eq!(d.buffered(), 0);
            assert_eq!(d.stats().resync_limit, 1);
            assert_eq!(d.stats().discarded_bytes, wire.len() as u64);
            d.push(&frame(200, 4, b"ignored"));
            assert!(d.next_frame().is_none());
        }
    }

    #[test]
    fn strict_mode_has_no_budget() {
        let cfg = DecoderConfig {
            strict: true,
            resync_budget_factor: 0,
            resync_budget_burst: 0,
            ..DecoderConfig::default()
        };
        let mut bad = frame(200, 2, &[b'z'; 200]);
        bad[HEADER_LEN] ^= 1;
        let mut d = Decoder::new(cfg);
        d.push(&bad);
        let out = drain(&mut d);
        assert!(matches!(
            out[..],
            [Decoded::Discarded(Discard {
                reason: DiscardReason::CrcMismatch { .. },
                ..
            })]
        ));
        assert!(d.is_failed());
        assert_eq!(d.stats().resync_limit, 0);
    }

    #[test]
    fn max_burst_disables_the_limit() {
        let cfg = DecoderConfig {
            max_message_size: 4096,
            resync_budget_factor: 0,
            resync_budget_burst: usize::MAX,
            ..DecoderConfig::default()
        };
        let wire = bad_crc_headers(4096 - HEADER_LEN as u32, 4096 / HEADER_LEN + 500);
        let mut d = Decoder::new(cfg);
        let out = trickle(&mut d, &wire, HEADER_LEN);
        assert!(!d.is_failed() && !out.iter().any(is_limit));
        assert_eq!(d.stats().crc_mismatch, 500);
    }

    #[test]
    fn push_bytes_adopts_buffer_without_copy() {
        let wire = frame(200, 9, &[7u8; 1000]);
        let chunk = BytesMut::from(&wire[..]);
        let ptr = chunk.as_ptr();
        let mut d = Decoder::new(DecoderConfig::default());
        d.push_bytes(chunk);
        let Some(Decoded::Frame(f)) = d.next_frame() else {
            panic!("expected a frame")
        };
        // The payload points into the very allocation we handed over.
        assert_eq!(f.payload.as_ptr(), ptr.wrapping_add(HEADER_LEN));
    }
}
