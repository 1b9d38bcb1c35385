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
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_buffer_size: DEFAULT_MAX_BUFFER_SIZE,
            strict: false,
            accepted_types: None,
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

    /// In strict mode: whether a corruption was seen (the decoder then
    /// ignores all further input).
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
        self.stats.crc_bytes += (total - HEADER_LEN) as u64;
        let actual = crc32fast::hash(&self.buf[HEADER_LEN..total]);
        if actual != h.crc32 {
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
    while let Some(i) = hay[from..].iter().position(|&b| b == MAGIC[0]) {
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

    #[test]
    fn resync_attack_work_is_amplified() {
        // The attack of issue 10, scaled down to a 64 KiB limit.
        let cfg = DecoderConfig {
            max_message_size: 64 * 1024,
            ..DecoderConfig::default()
        };
        let payload_len = (64 * 1024 - HEADER_LEN) as u32;
        let wire = bad_crc_headers(payload_len, 64 * 1024 / HEADER_LEN + 2000);
        let mut d = Decoder::new(cfg);
        for chunk in wire.chunks(HEADER_LEN) {
            d.push(chunk);
            drain(&mut d);
        }
        let st = *d.stats();
        let ratio = st.crc_bytes / wire.len() as u64;
        eprintln!(
            "pushed {} crc_bytes {} scan_bytes {} ratio {ratio}",
            wire.len(),
            st.crc_bytes,
            st.scan_bytes
        );
        assert!(st.crc_mismatch >= 2000);
        // The defect: thousands of CRC bytes per byte received.
        assert!(ratio > 1000, "ratio {ratio}");
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
