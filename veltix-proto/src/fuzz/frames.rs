//! `frame_decode`, `frame_roundtrip`, `frame_chunking`: the codec and the
//! stream decoder.

use std::sync::Arc;
use std::time::Instant;

use arbitrary::{Result, Unstructured};
use bytes::{Bytes, BytesMut};

use super::{cut_points, magic_at, magics, pieces, prefix, XorShift};
use crate::decoder::{
    Decoded, Decoder, DecoderConfig, DecoderStats, Discard, DiscardReason, TypeSet,
    DEFAULT_MAX_BUFFER_SIZE,
};
use crate::frame::{
    encode_frame, EncodedFrame, Frame, Header, MessageType, DEFAULT_MAX_MESSAGE_SIZE, HEADER_LEN,
    MAGIC,
};

/// The type codes registered by the receiver of the golden vectors.
pub(crate) const VECTOR_TYPES: [u16; 11] = [0, 1, 200, 201, 202, 203, 204, 300, 9999, 10000, 65535];

/// The decoder settings encoded in the 4 leading bytes of a `frame_decode` input:
///
/// * `p[0]` bit 0: strict; bit 1: accept only [`VECTOR_TYPES`] and the type
///   `u16::from_be_bytes([p[2], p[3]])`; bits 2–3: `max_message_size`
///   (10 MiB, 1024, `p[2]` — below 15 every frame is oversize —, `15 + 16·p[2]`);
///   bits 4–5: `max_buffer_size` (20 MiB, 50, `p[3]`, `2·max_message_size`);
///   bits 6–7: how to push (see [`frame_decode`]).
/// * `p[1]`: how to cut the stream (the style of [`cut_points`], and the seed).
fn decoder_config(p: [u8; 4]) -> DecoderConfig {
    let flags = p[0];
    let max_message_size = match (flags >> 2) & 3 {
        0 => DEFAULT_MAX_MESSAGE_SIZE,
        1 => 1024,
        2 => usize::from(p[2]),
        _ => HEADER_LEN + 16 * usize::from(p[2]),
    };
    let max_buffer_size = match (flags >> 4) & 3 {
        0 => DEFAULT_MAX_BUFFER_SIZE,
        1 => 50,
        2 => usize::from(p[3]),
        _ => max_message_size.saturating_mul(2),
    };
    let accepted_types = (flags & 2 != 0).then(|| {
        let mut set: TypeSet = VECTOR_TYPES.iter().map(|&c| MessageType(c)).collect();
        set.insert(MessageType(u16::from_be_bytes([p[2], p[3]])));
        Arc::new(set)
    });
    DecoderConfig {
        max_message_size,
        max_buffer_size,
        strict: flags & 1 != 0,
        accepted_types,
        ..DecoderConfig::default()
    }
}

/// What the events said so far, checked against the input itself.
///
/// The decoder only ever drops or delivers bytes from the front of its buffer,
/// and an overflow drops the whole buffer and the chunk: so, as long as a
/// strict decoder has not failed, its buffer is exactly `stream[cursor..pushed]`
/// and every event describes the bytes at `cursor`.
pub(super) struct Tracker<'a> {
    pub(super) config: DecoderConfig,
    pub(super) stream: &'a [u8],
    /// Bytes handed to `push`.
    pub(super) pushed: usize,
    /// Bytes accounted for by events.
    pub(super) cursor: usize,
    /// Whether `cursor` still points into the buffer (false once strict failed).
    tracking: bool,
    /// What the events add up to.
    seen: DecoderStats,
}

impl<'a> Tracker<'a> {
    pub(super) fn new(config: DecoderConfig, stream: &'a [u8]) -> Self {
        Tracker {
            config,
            stream,
            pushed: 0,
            cursor: 0,
            tracking: true,
            seen: DecoderStats::default(),
        }
    }

    /// The resync rule: `bytes` reach exactly the next `VX` after offset 0, or the end.
    fn check_resync(at: &[u8], d: &Discard) {
        match magic_at(&at[1..]) {
            Some(i) => assert_eq!(d.bytes, i + 1, "resync must stop at the next VX: {d:?}"),
            None => assert_eq!(d.bytes, at.len(), "no VX left: the buffer goes: {d:?}"),
        }
    }

    pub(super) fn event(&mut self, dec: &Decoder, d: Decoded) {
        let at = &self.stream[self.cursor.min(self.pushed)..self.pushed];
        match d {
            Decoded::Frame(f) => {
                let len = f.encoded_len();
                assert!(
                    len <= self.config.max_message_size,
                    "frame of {len} bytes delivered past max_message_size {}",
                    self.config.max_message_size
                );
                if let Some(set) = &self.config.accepted_types {
                    assert!(set.contains(f.message_type), "unaccepted type delivered");
                }
                if self.tracking {
                    // The input at its position, flags kept (compared in
                    // place: no copy of the frame).
                    let h = Header::parse(at).expect("a frame starts with a header");
                    assert_eq!(
                        (h.flags, h.message_type, h.request_id, h.frame_len()),
                        (f.flags, f.message_type, f.request_id, len),
                        "a delivered frame must be the input at its position"
                    );
                    assert!(at[HEADER_LEN..len] == f.payload[..], "payload differs");
                    assert_eq!(h.crc32, crc32fast::hash(&f.payload), "frame with a bad CRC");
                }
                self.cursor += len;
                self.seen.frames += 1;
                self.seen.frame_bytes += len as u64;
            }
            Decoded::Discarded(d) => {
                assert!(d.bytes > 0, "empty discard {d:?}");
                if self.tracking {
                    assert!(d.bytes <= at.len(), "discard {d:?} past the input");
                    self.check_discard(at, &d);
                }
                if (self.config.strict && d.reason.is_corruption())
                    || d.reason == DiscardReason::ResyncLimit
                {
                    assert!(dec.is_failed(), "decoder survived {d:?}");
                    self.tracking = false;
                }
                self.cursor += d.bytes;
                self.seen.discarded_bytes += d.bytes as u64;
                match d.reason {
                    DiscardReason::BadMagic => self.seen.bad_magic += 1,
                    DiscardReason::Oversize { .. } => self.seen.oversize += 1,
                    DiscardReason::CrcMismatch { .. } => self.seen.crc_mismatch += 1,
                    DiscardReason::UnknownType(_) => self.seen.unknown_type += 1,
                    DiscardReason::BufferOverflow => self.seen.overflow += 1,
                    DiscardReason::ResyncLimit => self.seen.resync_limit += 1,
                }
            }
        }
    }

    fn check_discard(&self, at: &[u8], d: &Discard) {
        let max = self.config.max_message_size;
        match d.reason {
            DiscardReason::BadMagic => {
                assert!(at.len() >= HEADER_LEN, "resync before a whole header");
                assert!(!at.starts_with(&MAGIC), "BadMagic on a VX");
                Self::check_resync(at, d);
            }
            DiscardReason::Oversize { declared } => {
                let h = Header::parse(at).expect("Oversize needs a header");
                assert_eq!(declared, h.frame_len() as u64);
                assert!(declared > max as u64, "{declared} is not over {max}");
                Self::check_resync(at, d);
            }
            DiscardReason::CrcMismatch { expected, actual } => {
                let h = Header::parse(at).expect("CrcMismatch needs a header");
                assert!(h.frame_len() <= at.len() && h.frame_len() <= max);
                assert_eq!(expected, h.crc32);
                assert_eq!(actual, crc32fast::hash(&at[HEADER_LEN..h.frame_len()]));
                assert_ne!(expected, actual);
                Self::check_resync(at, d);
            }
            DiscardReason::UnknownType(t) => {
                let set = self.config.accepted_types.as_ref();
                assert!(
                    set.is_some_and(|s| !s.contains(t)),
                    "{t} dropped as unknown"
                );
                let h = Header::parse(at).expect("UnknownType needs a header");
                assert_eq!((h.message_type, h.frame_len()), (t, d.bytes));
                assert_eq!(h.crc32, crc32fast::hash(&at[HEADER_LEN..d.bytes]));
            }
            DiscardReason::BufferOverflow => {}
            DiscardReason::ResyncLimit => {
                assert!(!self.config.strict, "strict mode has no CRC budget");
                let h = Header::parse(at).expect("ResyncLimit needs a header");
                assert!(h.frame_len() <= at.len() && h.frame_len() <= max);
                assert_ne!(h.crc32, crc32fast::hash(&at[HEADER_LEN..h.frame_len()]));
                assert_eq!(d.bytes, at.len(), "the whole buffer goes");
            }
        }
    }

    /// Takes every event, then checks the counters, conservation and liveness.
    fn drain(&mut self, dec: &mut Decoder) {
        while let Some(d) = dec.next_frame() {
            self.event(dec, d);
        }
        self.check(dec);
    }

    /// Once `next_frame` said `None`: the counters, conservation and liveness.
    pub(super) fn check(&mut self, dec: &mut Decoder) {
        assert!(dec.next_frame().is_none(), "None is not sticky");
        let st = *dec.stats();
        let seen = self.seen;
        assert_eq!(
            (st.frames, st.frame_bytes, st.discarded_bytes),
            (seen.frames, seen.frame_bytes, seen.discarded_bytes),
            "counters disagree with the events"
        );
        assert_eq!(
            (
                st.bad_magic,
                st.oversize,
                st.crc_mismatch,
                st.unknown_type,
                st.resync_limit
            ),
            (
                seen.bad_magic,
                seen.oversize,
                seen.crc_mismatch,
                seen.unknown_type,
                seen.resync_limit
            )
        );
        // Overflows that follow each other without a `next_frame` merge into one event.
        assert!(st.overflow >= seen.overflow);
        let buffered = dec.buffered();
        assert!(buffered <= self.config.max_buffer_size);
        let accounted = st.frame_bytes + st.discarded_bytes + buffered as u64;
        if dec.is_failed() {
            assert!(
                self.config.strict || st.resync_limit == 1,
                "only a strict decoder or an exhausted CRC budget fails"
            );
            assert_eq!(buffered, 0, "a failed decoder holds nothing");
            assert!(accounted <= self.pushed as u64);
            return;
        }
        // Conservation: delivered + discarded + buffered == pushed.
        assert_eq!(accounted, self.pushed as u64, "bytes lost or invented");
        assert_eq!(self.cursor + buffered, self.pushed);
        // Liveness: what stays buffered is a frame still arriving, never
        // something the decoder could already deliver or drop.
        let rest = &self.stream[self.cursor..self.pushed];
        if rest.len() >= HEADER_LEN {
            let h = Header::parse(rest).expect("stuck on bad magic");
            assert!(
                h.frame_len() > rest.len() && h.frame_len() <= self.config.max_message_size,
                "stuck on a frame of {} bytes with {} buffered",
                h.frame_len(),
                rest.len()
            );
        }
    }
}

/// Arbitrary bytes into a stream [`Decoder`]: 4 leading bytes choose the
/// limits, strictness, accepted types and how the stream is cut (see
/// `decoder_config`); bits 6–7 of the first byte choose `push` or
/// `push_bytes`, and whether to drain after every push, now and then, or only
/// at the end. The rest is the stream.
///
/// Asserts: no panic; `buffered() <= max_buffer_size` after every push;
/// every event describes the bytes at its position (frames verbatim, resyncs to
/// the next `VX`, unknown types whole); the counters match the events;
/// delivered + discarded + buffered == pushed (a failed strict decoder: `<=`,
/// and it holds nothing); nothing decodable is left buffered.
pub fn frame_decode(_t0: Instant, data: &[u8]) {
    let (p, stream) = prefix::<4>(data);
    let config = decoder_config(p);
    let mode = p[0] >> 6;
    let mut rng = XorShift::new(u64::from(u32::from_le_bytes(p)) ^ ((stream.len() as u64) << 32));
    let cuts = cut_points(p[1], &mut rng, stream.len(), || magics(stream));
    let mut dec = Decoder::new(config.clone());
    let mut t = Tracker::new(config, stream);
    for piece in pieces(&cuts, stream.len()) {
        let chunk = &stream[piece];
        let owned = match mode {
            1 => true,
            2 => rng.below(2) == 0,
            _ => false,
        };
        if owned {
            dec.push_bytes(BytesMut::from(chunk));
        } else {
            dec.push(chunk);
        }
        t.pushed += chunk.len();
        assert!(
            dec.buffered() <= t.config.max_buffer_size,
            "buffer {} past max_buffer_size {}",
            dec.buffered(),
            t.config.max_buffer_size
        );
        let drain_now = match mode {
            0 | 1 => true,
            2 => rng.below(3) == 0,
            _ => false,
        };
        if drain_now {
            t.drain(&mut dec);
        }
    }
    t.drain(&mut dec);
    dec.push(&[]);
    dec.push_bytes(BytesMut::new());
    assert!(
        dec.next_frame().is_none(),
        "an empty push produced something"
    );
}

/// An arbitrary frame: any type, id and flags; a payload from the input, or,
/// when a byte says `L` (while `long` is set, which it then clears: at most
/// one per execution, as each costs some 15 copies and CRCs of up to 70 KB
/// and a resync scanning it, a hundred times a short frame) a long run of
/// one byte (up to 70 000, past `u16` lengths). Not a ratio: a run of zero
/// bytes, or the end of the input, must not mean "long".
pub(crate) fn arb_frame(u: &mut Unstructured<'_>, long: &mut bool) -> Result<Frame> {
    let message_type: MessageType = u.arbitrary()?;
    let request_id: u16 = u.arbitrary()?;
    let flags: u8 = u.arbitrary()?;
    let payload = if *long && u.arbitrary::<u8>()? == b'L' {
        *long = false;
        let fill: u8 = u.arbitrary()?;
        vec![fill; u.int_in_range(0..=70_000usize)?]
    } else {
        u.arbitrary::<&[u8]>()?.to_vec()
    };
    Ok(Frame {
        message_type,
        request_id,
        flags,
        payload: Bytes::from(payload),
    })
}

fn drain_all(dec: &mut Decoder) -> Vec<Decoded> {
    std::iter::from_fn(|| dec.next_frame()).collect()
}

fn decode_all(config: DecoderConfig, bytes: &[u8]) -> (Vec<Decoded>, usize) {
    let mut dec = Decoder::new(config);
    dec.push(bytes);
    let out = drain_all(&mut dec);
    (out, dec.buffered())
}

/// Bytes → frames → bytes with the default configuration: every frame the
/// input decodes to re-encodes (flags included) to exactly the bytes it came
/// from. Then, from the same input as [`arbitrary::Unstructured`], 1–4
/// arbitrary frames: each encodes to its header and payload, decodes back to
/// itself (also with an exact `max_message_size` and a one-type filter),
/// agrees with the other encoders, is refused at one byte under the limit,
/// fails its CRC when a payload byte changes and waits when truncated.
pub fn frame_roundtrip(_t0: Instant, data: &[u8]) {
    let (events, buffered) = decode_all(DecoderConfig::default(), data);
    let mut cursor = 0;
    for d in events {
        match d {
            Decoded::Frame(f) => {
                let enc = f.to_vec().expect("a decoded frame fits");
                assert_eq!(
                    &data[cursor..cursor + enc.len()],
                    &enc[..],
                    "a decoded frame must re-encode to its bytes"
                );
                let h = Header::parse(&enc).expect("our own header parses");
                assert_eq!(
                    (h.flags, h.message_type, h.request_id, h.frame_len()),
                    (f.flags, f.message_type, f.request_id, enc.len())
                );
                cursor += enc.len();
            }
            Decoded::Discarded(d) => cursor += d.bytes,
        }
    }
    assert_eq!(cursor + buffered, data.len());

    let mut u = Unstructured::new(data);
    let _ = structured_roundtrips(&mut u);
}

fn structured_roundtrips(u: &mut Unstructured<'_>) -> Result<()> {
    let mut long = true;
    for _ in 0..u.int_in_range(1..=4u8)? {
        let f = arb_frame(u, &mut long)?;
        let corrupt_at: usize = u.arbitrary()?;
        frame_roundtrip_one(&f, corrupt_at);
    }
    Ok(())
}

fn frame_roundtrip_one(f: &Frame, corrupt_at: usize) {
    let enc = f.to_vec().expect("payloads here are far below 4 GiB");
    assert_eq!(enc.len(), f.encoded_len());
    let h = f.header().expect("fits");
    assert_eq!(Header::parse(&enc), Some(h));
    assert_eq!(h.frame_len(), enc.len());
    assert_eq!(h.to_bytes()[..], enc[..HEADER_LEN]);
    assert_eq!(enc[HEADER_LEN..], f.payload[..]);
    let mut buf = BytesMut::new();
    f.encode(&mut buf).expect("fits");
    assert_eq!(buf[..], enc[..]);
    if f.flags == 0 {
        let mut v = Vec::new();
        encode_frame(f.message_type, f.request_id, &f.payload, &mut v).expect("fits");
        assert_eq!(v, enc);
        let e = EncodedFrame::new(f.message_type, f.request_id, &f.payload).expect("fits");
        assert_eq!(e.bytes()[..], enc[..]);
        assert_eq!(
            (e.message_type(), e.request_id(), e.payload_len()),
            (f.message_type, f.request_id, f.payload.len())
        );
        assert_eq!(
            &Frame::new(f.message_type, f.request_id, f.payload.clone()),
            f
        );
    }

    let one = |config: DecoderConfig, bytes: &[u8]| decode_all(config, bytes);
    assert_eq!(
        one(DecoderConfig::default(), &enc),
        (vec![Decoded::Frame(f.clone())], 0)
    );
    let exact = DecoderConfig {
        max_message_size: enc.len(),
        strict: true,
        accepted_types: Some(Arc::new([f.message_type].into_iter().collect())),
        ..DecoderConfig::default()
    };
    assert_eq!(
        one(exact.clone(), &enc),
        (vec![Decoded::Frame(f.clone())], 0)
    );
    let under = DecoderConfig {
        max_message_size: enc.len() - 1,
        ..exact
    };
    // Oversize is decided on the header alone (the decoder does not wait for
    // the payload): push just the header, or the resync would scan the whole
    // payload for the next `VX` (up to 70 000 bytes, one at a time).
    match one(under, &enc[..HEADER_LEN]).0.first() {
        Some(Decoded::Discarded(Discard {
            reason: DiscardReason::Oversize { declared },
            ..
        })) => assert_eq!(*declared, enc.len() as u64),
        other => panic!("one byte over the limit must be Oversize, got {other:?}"),
    }
    if !f.payload.is_empty() {
        let mut bad = enc.clone();
        bad[HEADER_LEN + corrupt_at % f.payload.len()] ^= 0x5a;
        match one(DecoderConfig::default(), &bad).0.first() {
            Some(Decoded::Discarded(Discard {
                reason: DiscardReason::CrcMismatch { expected, .. },
                ..
            })) => assert_eq!(*expected, h.crc32),
            other => panic!("a changed payload byte must fail the CRC, got {other:?}"),
        }
    }
    let short = &enc[..enc.len() - 1];
    assert_eq!(one(DecoderConfig::default(), short), (vec![], short.len()));
}

/// One valid stream cut anywhere gives the events of one push. The frames are
/// those the input itself decodes to (so real streams make good seeds) plus
/// up to 6 arbitrary ones read from the input as [`arbitrary::Unstructured`],
/// which also chooses strictness, a type filter (dropped frames must come out
/// as whole `UnknownType` discards in both runs), a `max_message_size` of
/// exactly the largest frame or the default, and how to cut: the style of
/// [`cut_points`] (bit 7: drain now and then instead of after every push)
/// and its seed, with the frame starts as marks, so that each execution
/// splits headers where the cuts tell the most, in at most
/// [`MAX_PIECES`](super::MAX_PIECES) pushes.
pub fn frame_chunking(_t0: Instant, data: &[u8]) {
    let (events, _) = decode_all(DecoderConfig::default(), data);
    let frames: Vec<Frame> = events
        .into_iter()
        .filter_map(|d| match d {
            Decoded::Frame(f) => Some(f),
            Decoded::Discarded(_) => None,
        })
        .take(64)
        .collect();
    let mut u = Unstructured::new(data);
    let _ = chunking(&mut u, frames);
}

fn chunking(u: &mut Unstructured<'_>, mut frames: Vec<Frame>) -> Result<()> {
    let style: u8 = u.arbitrary()?;
    let seed: u64 = u.arbitrary()?;
    let strict: bool = u.arbitrary()?;
    let filter: u8 = u.arbitrary()?;
    let mut long = true;
    for _ in 0..u.int_in_range(0..=6u8)? {
        match arb_frame(u, &mut long) {
            Ok(f) => frames.push(f),
            Err(_) => break,
        }
    }
    let Some(largest) = frames.iter().map(Frame::encoded_len).max() else {
        return Ok(());
    };
    let accepted: Option<TypeSet> = (filter & 1 != 0).then(|| {
        frames
            .iter()
            .enumerate()
            .filter(|(i, _)| (filter >> (1 + i % 6)) & 1 != 0)
            .map(|(_, f)| f.message_type)
            .collect()
    });
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut starts = Vec::new();
    for f in &frames {
        starts.push(stream.len());
        f.encode(&mut stream).expect("fits");
        let kept = accepted.as_ref().is_none_or(|s| s.contains(f.message_type));
        expected.push(if kept {
            Decoded::Frame(f.clone())
        } else {
            Decoded::Discarded(Discard {
                reason: DiscardReason::UnknownType(f.message_type),
                bytes: f.encoded_len(),
            })
        });
    }
    let config = DecoderConfig {
        max_message_size: if filter & 0x80 != 0 {
            largest
        } else {
            DEFAULT_MAX_MESSAGE_SIZE.max(largest)
        },
        max_buffer_size: DEFAULT_MAX_BUFFER_SIZE.max(stream.len()),
        strict,
        accepted_types: accepted.map(Arc::new),
        ..DecoderConfig::default()
    };

    let mut whole = Decoder::new(config.clone());
    whole.push(&stream);
    assert_eq!(drain_all(&mut whole), expected, "one push");
    assert_eq!(whole.buffered(), 0);

    let mut rng = XorShift::new(seed);
    let cuts = cut_points(style, &mut rng, stream.len(), || starts);
    let mut cut = Decoder::new(config);
    let mut got = Vec::new();
    for piece in pieces(&cuts, stream.len()) {
        if rng.below(2) == 0 {
            cut.push(&stream[piece]);
        } else {
            cut.push_bytes(BytesMut::from(&stream[piece]));
        }
        if style & 0x80 == 0 || rng.below(4) == 0 {
            got.extend(drain_all(&mut cut));
        }
    }
    got.extend(drain_all(&mut cut));
    assert_eq!(got, expected, "cut stream differs from one push");
    assert_eq!(cut.buffered(), 0);
    assert_eq!(cut.stats(), whole.stats());
    assert!(!cut.is_failed() && !whole.is_failed());
    Ok(())
}
