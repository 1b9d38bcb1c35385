//! Property tests of the codec and the connection state machine.
//!
//! * Any frame (any type, id, flags, payload up to 2 KiB) survives
//!   encode → decode unchanged, and what decodes re-encodes to the same bytes.
//! * Reassembly does not depend on how a valid stream is cut into reads.
//! * Arbitrary bytes in arbitrary chunks never panic the decoder, never grow its
//!   buffer past `max_buffer_size`, and every byte pushed is accounted for
//!   exactly once: delivered in a frame, reported in a `Discard`, or still
//!   buffered. Frames are consumed from the front, so every delivered frame is
//!   the verbatim input at its position.
//! * The CRC budget changes nothing until it stops the decoder: a decoder with
//!   a tight budget gives the events of an unlimited one, except that one
//!   `CrcMismatch` may become a final `ResyncLimit`; its CRC work stays
//!   below `(factor + 2) × pushed`.
//! * Arbitrary bytes, commands and deadlines never panic a client or a server
//!   `Connection`; after it closes it generates no new output, `poll_timeout`
//!   never lies about ready work or past deadlines, and every request or ping
//!   ends exactly once.
//!
//! Case counts are kept moderate so the file runs in seconds in debug builds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::Map;
use veltix_proto::handshake::{encode_ack, encode_hello};
use veltix_proto::{
    CloseReason, Connection, ConnectionConfig, Decoded, Decoder, DecoderConfig, Discard,
    DiscardReason, Event, Frame, Header, LocalHello, MessageType, RequestKind, SendError, Side,
    TypeSet, HEADER_LEN, TRANSMIT_WINDOW,
};

// ------------------------------------------------------------ strategies

fn arb_frame(max_payload: usize) -> impl Strategy<Value = Frame> {
    (
        any::<u16>(),
        any::<u16>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..=max_payload),
    )
        .prop_map(|(t, request_id, flags, payload)| Frame {
            message_type: MessageType(t),
            request_id,
            flags,
            payload: Bytes::from(payload),
        })
}

/// A frame with "interesting" fields: system and user types, ids a
/// connection is likely to have pending.
fn arb_plausible_frame(max_payload: usize) -> impl Strategy<Value = Frame> {
    (
        prop_oneof![
            Just(0u16),
            Just(1u16),
            Just(200u16),
            Just(201u16),
            any::<u16>()
        ],
        prop_oneof![0u16..4, 32_768u16..32_772, any::<u16>()],
        prop::collection::vec(any::<u8>(), 0..=max_payload),
    )
        .prop_map(|(t, id, payload)| Frame::new(MessageType(t), id, payload))
}

/// One piece of a hostile stream.
fn arb_segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Plain junk.
        prop::collection::vec(any::<u8>(), 0..64),
        // A valid frame; some exceed the small test limit of 128 bytes.
        arb_plausible_frame(160).prop_map(|f| f.to_vec().unwrap()),
        // A valid frame with one byte flipped (bad CRC, magic, length...).
        (
            arb_plausible_frame(40),
            any::<prop::sample::Index>(),
            1u8..=255
        )
            .prop_map(|(f, at, x)| {
                let mut v = f.to_vec().unwrap();
                let i = at.index(v.len());
                v[i] ^= x;
                v
            }),
        // A false magic followed by junk (bogus headers of any length).
        prop::collection::vec(any::<u8>(), 0..24).prop_map(|mut v| {
            v.splice(0..0, *b"VX");
            v
        }),
        // A lone 'V' (split magic) or "VX".
        Just(b"V".to_vec()),
        Just(b"VX".to_vec()),
    ]
}

fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(arb_segment(), 0..40).prop_map(|s| s.concat())
}

/// Cuts `data` into chunks whose sizes cycle through `sizes` (all ≥ 1).
fn chunks_of<'a>(data: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
        i += 1;
    }
    out
}

fn decode_all(dec: &mut Decoder) -> Vec<Decoded> {
    std::iter::from_fn(|| dec.next_frame()).collect()
}

// ------------------------------------------------------------- the codec

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Encoding then decoding gives back exactly the frame, flags included.
    #[test]
    fn encode_decode_round_trip(f in arb_frame(2048)) {
        let bytes = f.to_vec().unwrap();
        prop_assert_eq!(bytes.len(), HEADER_LEN + f.payload.len());
        prop_assert_eq!(bytes.len(), f.encoded_len());
        let h = Header::parse(&bytes).unwrap();
        prop_assert_eq!(h.message_type, f.message_type);
        prop_assert_eq!(h.request_id, f.request_id);
        prop_assert_eq!(h.flags, f.flags);
        prop_assert_eq!(h.payload_len as usize, f.payload.len());
        prop_assert_eq!(h.crc32, crc32fast::hash(&f.payload));
        prop_assert_eq!(&h.to_bytes()[..], &bytes[..HEADER_LEN]);

        let mut dec = Decoder::new(DecoderConfig::default());
        dec.push(&bytes);
        let out = decode_all(&mut dec);
        prop_assert_eq!(out, vec![Decoded::Frame(f.clone())]);
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(dec.stats().frame_bytes, bytes.len() as u64);
    }

    /// Bytes that decode as a frame re-encode to the same bytes, whatever
    /// their header fields (the CRC is made valid, the rest is arbitrary).
    #[test]
    fn decoded_bytes_re_encode_identically(
        header in prop::array::uniform15(any::<u8>()),
        payload in prop::collection::vec(any::<u8>(), 0..512),
        tail in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut bytes = header.to_vec();
        bytes[0..2].copy_from_slice(b"VX");
        bytes[5..9].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes[9..13].copy_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        bytes.extend_from_slice(&payload);
        let frame_len = bytes.len();
        bytes.extend_from_slice(&tail);
        let mut dec = Decoder::new(DecoderConfig::default());
        dec.push(&bytes);
        let Some(Decoded::Frame(f)) = dec.next_frame() else {
            return Err(TestCaseError::fail("a well-formed frame did not decode"));
        };
        prop_assert_eq!(f.to_vec().unwrap(), bytes[..frame_len].to_vec());
        prop_assert_eq!(&f.header().unwrap().to_bytes()[..], &bytes[..HEADER_LEN]);
    }

    /// Any cut of a valid stream into reads yields the frames of one read.
    #[test]
    fn reassembly_is_read_size_independent(
        frames in prop::collection::vec(arb_frame(300), 1..8),
        sizes in prop::collection::vec(1usize..120, 1..16),
        drain_each in any::<bool>(),
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.to_vec().unwrap()).collect();
        let want: Vec<Decoded> = frames.iter().cloned().map(Decoded::Frame).collect();

        let mut one = Decoder::new(DecoderConfig::default());
        one.push(&wire);
        prop_assert_eq!(&decode_all(&mut one), &want);
        prop_assert_eq!(one.buffered(), 0);

        let mut split = Decoder::new(DecoderConfig::default());
        let mut got = Vec::new();
        for c in chunks_of(&wire, &sizes) {
            split.push(c);
            if drain_each {
                got.extend(decode_all(&mut split));
            }
        }
        got.extend(decode_all(&mut split));
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(split.buffered(), 0);
        prop_assert_eq!(split.stats(), one.stats());
    }
}

// ------------------------------------------------- hostile decoder input

const SMALL_MAX_MESSAGE: usize = 128;
const SMALL_MAX_BUFFER: usize = 256;

/// Feeds `data` in chunks to a decoder with small limits and checks the
/// buffer cap, byte conservation and that frames are verbatim input.
fn check_hostile_input(
    data: &[u8],
    sizes: &[usize],
    drains: &[bool],
    restrict_types: bool,
) -> Result<(), TestCaseError> {
    let accepted = restrict_types.then(|| {
        Arc::new(
            [0u16, 1, 200, 201]
                .into_iter()
                .map(MessageType)
                .collect::<TypeSet>(),
        )
    });
    let mut dec = Decoder::new(DecoderConfig {
        max_message_size: SMALL_MAX_MESSAGE,
        max_buffer_size: SMALL_MAX_BUFFER,
        strict: false,
        accepted_types: accepted.clone(),
        ..DecoderConfig::default()
    });
    let mut pushed = 0usize;
    // Bytes consumed from the front of the input: delivered or discarded.
    let mut consumed = 0usize;
    let mut delivered = 0usize;
    let mut discarded = 0usize;
    let mut frames = 0u64;

    let mut drain = |dec: &mut Decoder, pushed: usize| -> Result<(), TestCaseError> {
        while let Some(d) = dec.next_frame() {
            match d {
                Decoded::Frame(f) => {
                    let len = f.encoded_len();
                    prop_assert!(len <= SMALL_MAX_MESSAGE, "frame of {} delivered", len);
                    if let Some(set) = &accepted {
                        prop_assert!(set.contains(f.message_type));
                    }
                    prop_assert!(consumed + len <= pushed);
                    prop_assert_eq!(
                        f.to_vec().unwrap(),
                        data[consumed..consumed + len].to_vec(),
                        "a delivered frame is not the input at offset {}",
                        consumed
                    );
                    consumed += len;
                    delivered += len;
                    frames += 1;
                }
                Decoded::Discarded(d) => {
                    prop_assert!(d.bytes > 0, "empty discard {:?}", d);
                    consumed += d.bytes;
                    discarded += d.bytes;
                }
            }
            prop_assert!(consumed <= pushed, "more bytes consumed than pushed");
        }
        // Conservation at every quiescent point.
        prop_assert_eq!(consumed + dec.buffered(), pushed);
        Ok(())
    };

    let chunks = chunks_of(data, sizes);
    for (i, c) in chunks.iter().enumerate() {
        dec.push(c);
        pushed += c.len();
        prop_assert!(
            dec.buffered() <= SMALL_MAX_BUFFER,
            "buffered {} after a push",
            dec.buffered()
        );
        if drains[i % drains.len()] {
            drain(&mut dec, pushed)?;
        }
    }
    drain(&mut dec, pushed)?;
    prop_assert_eq!(pushed, data.len());
    prop_assert_eq!(delivered + discarded + dec.buffered(), data.len());
    // With the drain done, fewer than a header or an incomplete frame remain.
    prop_assert!(dec.buffered() <= SMALL_MAX_MESSAGE.max(HEADER_LEN));
    let stats = dec.stats();
    prop_assert_eq!(stats.frames, frames);
    prop_assert_eq!(stats.frame_bytes, delivered as u64);
    prop_assert_eq!(stats.discarded_bytes, discarded as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Uniformly random bytes (mostly junk).
    #[test]
    fn random_bytes_are_conserved(
        data in prop::collection::vec(any::<u8>(), 0..8192),
        sizes in prop::collection::vec(1usize..700, 1..32),
        drains in prop::collection::vec(any::<bool>(), 1..8),
        restrict in any::<bool>(),
    ) {
        check_hostile_input(&data, &sizes, &drains, restrict)?;
    }

    /// Frames, corrupted frames, false magics and junk, mixed.
    #[test]
    fn hostile_streams_are_conserved(
        data in arb_stream(),
        sizes in prop::collection::vec(1usize..400, 1..32),
        drains in prop::collection::vec(any::<bool>(), 1..8),
        restrict in any::<bool>(),
    ) {
        check_hostile_input(&data, &sizes, &drains, restrict)?;
    }
}

/// A bare header announcing up to 120 payload bytes (the bytes that follow),
/// with a CRC that almost never matches them: the resync amplifier.
fn arb_bad_crc_header() -> impl Strategy<Value = Vec<u8>> {
    (0u32..=120, any::<u32>(), any::<u16>()).prop_map(|(payload_len, crc32, request_id)| {
        Header {
            flags: 0,
            message_type: MessageType(200),
            payload_len,
            crc32,
            request_id,
        }
        .to_bytes()
        .to_vec()
    })
}

/// The same input into an unlimited decoder and one with the given budget.
fn check_budget_is_transparent(
    data: &[u8],
    sizes: &[usize],
    factor: u32,
    burst: usize,
) -> Result<(), TestCaseError> {
    let base = DecoderConfig {
        max_message_size: SMALL_MAX_MESSAGE,
        max_buffer_size: SMALL_MAX_BUFFER,
        ..DecoderConfig::default()
    };
    let mut free = Decoder::new(DecoderConfig {
        resync_budget_burst: usize::MAX,
        ..base.clone()
    });
    let mut tight = Decoder::new(DecoderConfig {
        resync_budget_factor: factor,
        resync_budget_burst: burst,
        ..base
    });
    let (mut want, mut got) = (Vec::new(), Vec::new());
    let mut pushed = 0u64;
    for chunk in chunks_of(data, sizes) {
        if !tight.is_failed() {
            pushed += chunk.len() as u64;
        }
        free.push(chunk);
        want.extend(decode_all(&mut free));
        tight.push(chunk);
        got.extend(decode_all(&mut tight));
    }
    prop_assert!(!free.is_failed());
    let st = *tight.stats();
    let stop = got.iter().position(|e| {
        matches!(
            e,
            Decoded::Discarded(Discard {
                reason: DiscardReason::ResyncLimit,
                ..
            })
        )
    });
    match stop {
        None => {
            prop_assert!(!tight.is_failed());
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(&st, free.stats());
        }
        Some(k) => {
            prop_assert!(tight.is_failed());
            prop_assert_eq!(k + 1, got.len(), "ResyncLimit is the last event");
            prop_assert_eq!(&got[..k], &want[..k]);
            prop_assert!(
                matches!(
                    want[k],
                    Decoded::Discarded(Discard {
                        reason: DiscardReason::CrcMismatch { .. },
                        ..
                    })
                ),
                "the stop replaces a CRC mismatch, not {:?}",
                want[k]
            );
            prop_assert_eq!(tight.buffered(), 0);
            prop_assert_eq!(st.resync_limit, 1);
            prop_assert_eq!(st.frame_bytes + st.discarded_bytes, pushed);
        }
    }
    prop_assert!(st.crc_bytes <= (u64::from(factor) + 2) * pushed);
    // Each resync reads at most one byte past what it discards.
    prop_assert!(st.scan_bytes <= 2 * pushed);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Hostile streams rich in bad-CRC headers, with budgets small enough to
    /// run out.
    #[test]
    fn crc_budget_only_stops_the_decoder(
        segments in prop::collection::vec(
            prop_oneof![arb_segment(), arb_bad_crc_header(), arb_bad_crc_header()],
            0..60,
        ),
        sizes in prop::collection::vec(1usize..64, 1..16),
        factor in 0u32..6,
        burst in 0usize..1000,
    ) {
        check_budget_is_transparent(&segments.concat(), &sizes, factor, burst)?;
    }
}

// ------------------------------------------------- the connection machine

/// Something the application does between inputs.
#[derive(Debug, Clone)]
enum Command {
    Nothing,
    Send(Vec<u8>),
    Request(u64),
    Ping(u64),
    Close,
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        6 => Just(Command::Nothing),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Command::Send),
        1 => (0u64..3000).prop_map(Command::Request),
        1 => (0u64..3000).prop_map(Command::Ping),
        1 => Just(Command::Close),
    ]
}

#[derive(Debug, Clone)]
struct Step {
    input_len: usize,
    advance_ms: u64,
    command: Command,
    drain_output: bool,
}

fn arb_step() -> impl Strategy<Value = Step> {
    (
        1usize..200,
        0u64..1500,
        arb_command(),
        prop::bool::weighted(0.8),
    )
        .prop_map(|(input_len, advance_ms, command, drain_output)| Step {
            input_len,
            advance_ms,
            command,
            drain_output,
        })
}

#[derive(Debug, Clone)]
struct Scenario {
    side: Side,
    /// Start the input with a valid handshake from the peer.
    valid_handshake: bool,
    strict: bool,
    restrict_types: bool,
    max_outbound: usize,
    body: Vec<u8>,
    steps: Vec<Step>,
    eof_at_end: bool,
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    (
        prop_oneof![Just(Side::Client), Just(Side::Server)],
        prop::bool::weighted(0.7),
        prop::bool::weighted(0.2),
        any::<bool>(),
        prop_oneof![Just(64usize), Just(1 << 20)],
        prop_oneof![arb_stream(), prop::collection::vec(any::<u8>(), 0..4096)],
        prop::collection::vec(arb_step(), 1..48),
        any::<bool>(),
    )
        .prop_map(
            |(side, valid_handshake, strict, restrict_types, max_outbound, body, steps, eof)| {
                Scenario {
                    side,
                    valid_handshake,
                    strict,
                    restrict_types,
                    max_outbound,
                    body,
                    steps,
                    eof_at_end: eof,
                }
            },
        )
}

/// Checks the connection contract while driving it; see the module docs.
struct Harness {
    conn: Connection,
    /// The driver's clock.
    now: Instant,
    /// The latest `now` handed to the connection (`send` and `close` take none).
    seen_now: Instant,
    /// Set once the connection is closed: bytes it may still hand out.
    allowed_after_close: Option<usize>,
    saw_closed_event: bool,
    /// When `close` was called (for the flush deadline).
    closed_at: Option<Instant>,
    saw_connected: bool,
    /// Requests and pings issued and not yet ended, by id.
    outstanding: HashMap<u16, RequestKind>,
    issued: usize,
    ended: usize,
}

impl Harness {
    /// Call after every input or command.
    fn after_call(&mut self, queued_before: usize, was_closed: bool) -> Result<(), TestCaseError> {
        let queued = self.conn.queued_bytes();
        if was_closed {
            prop_assert!(
                queued <= queued_before,
                "a closed connection queued more output ({} -> {})",
                queued_before,
                queued
            );
        } else if self.conn.is_closed() {
            // Just closed: only what is queued now may still come out.
            if !matches!(self.conn.close_reason(), Some(CloseReason::Local)) {
                prop_assert_eq!(queued, 0, "a non-local close drops the output queue");
            }
            self.allowed_after_close = Some(queued);
        }
        // poll_timeout is "now" exactly while output can be taken, else
        // the next timer.
        if self.conn.has_transmit() {
            prop_assert_eq!(
                self.conn.poll_timeout(),
                Some(self.seen_now),
                "output to take must make poll_timeout due"
            );
        } else {
            prop_assert_eq!(self.conn.poll_timeout(), self.conn.next_timer());
        }
        if queued > 0 && !self.conn.is_closed() {
            prop_assert!(
                self.conn.poll_timeout().is_some(),
                "queued output without a deadline"
            );
        }
        Ok(())
    }

    /// The driver writes everything at once and reports it written.
    fn transmit_all(&mut self) -> Result<(), TestCaseError> {
        while let Some(b) = self.conn.poll_transmit() {
            prop_assert!(self.conn.in_flight() <= TRANSMIT_WINDOW);
            self.conn.handle_written(self.now, b.len());
            self.seen_now = self.now;
            prop_assert!(!b.is_empty(), "empty transmit");
            if let Some(left) = &mut self.allowed_after_close {
                prop_assert!(
                    b.len() <= *left,
                    "{} bytes transmitted after close, only {} were queued",
                    b.len(),
                    left
                );
                *left -= b.len();
            }
        }
        prop_assert_eq!(self.conn.queued_bytes(), 0);
        prop_assert!(!self.conn.has_transmit());
        if let Some(left) = self.allowed_after_close {
            // Unless the flush deadline dropped them (then reported unsent).
            prop_assert!(
                left == 0 || self.conn.is_finished(),
                "bytes queued before the close were not handed out"
            );
        }
        Ok(())
    }

    fn end_request(&mut self, id: u16, kind: RequestKind) -> Result<(), TestCaseError> {
        let Some(k) = self.outstanding.remove(&id) else {
            return Err(TestCaseError::fail(format!(
                "request {id} ended but was not outstanding"
            )));
        };
        prop_assert_eq!(k, kind, "request {} ended as the wrong kind", id);
        self.ended += 1;
        Ok(())
    }

    fn events_all(&mut self) -> Result<(), TestCaseError> {
        while let Some(e) = self.conn.poll_event() {
            prop_assert!(!self.saw_closed_event, "event after Closed: {:?}", e);
            match e {
                Event::Connected(_) => {
                    prop_assert!(!self.saw_connected, "Connected twice");
                    self.saw_connected = true;
                }
                Event::Message(_) | Event::Discarded(_) | Event::PongDropped { .. } => {
                    prop_assert!(self.saw_connected, "traffic before Connected");
                }
                Event::Response { request_id, frame } => {
                    prop_assert_eq!(frame.request_id, request_id);
                    self.end_request(request_id, RequestKind::Request)?;
                }
                Event::Pong { request_id, .. } => {
                    self.end_request(request_id, RequestKind::Ping)?;
                }
                Event::RequestFailed {
                    request_id, kind, ..
                } => self.end_request(request_id, kind)?,
                Event::Closed {
                    reason,
                    unsent_bytes,
                } => {
                    prop_assert!(self.conn.is_closed());
                    prop_assert_eq!(Some(&reason), self.conn.close_reason());
                    if reason == CloseReason::Local {
                        // Written, or reported unsent once the flush deadline passed.
                        let left = self.allowed_after_close.unwrap_or(0);
                        prop_assert_eq!(unsent_bytes, left);
                        if unsent_bytes > 0 {
                            let at = self.closed_at.expect("closed locally");
                            prop_assert!(self.now >= at + self.conn.config().flush_timeout);
                        }
                    }
                    prop_assert!(
                        self.outstanding.is_empty(),
                        "Closed while requests are outstanding: {:?}",
                        self.outstanding
                    );
                    self.saw_closed_event = true;
                }
                e => return Err(TestCaseError::fail(format!("unexpected event {e:?}"))),
            }
        }
        Ok(())
    }

    fn command(&mut self, cmd: &Command) -> Result<(), TestCaseError> {
        let before = self.conn.queued_bytes();
        let was_closed = self.conn.is_closed();
        if matches!(cmd, Command::Request(_) | Command::Ping(_)) {
            self.seen_now = self.now;
        }
        let issued = match cmd {
            Command::Nothing => return Ok(()),
            Command::Send(p) => self.conn.send(MessageType(200), p.clone()).map(|_| None),
            Command::Request(ms) => self
                .conn
                .request(
                    self.now,
                    MessageType(201),
                    &b"q"[..],
                    Duration::from_millis(*ms),
                )
                .map(|id| Some((id, RequestKind::Request))),
            Command::Ping(ms) => self
                .conn
                .ping(self.now, Duration::from_millis(*ms))
                .map(|id| Some((id, RequestKind::Ping))),
            Command::Close => {
                self.seen_now = self.now;
                if !self.conn.is_closed() {
                    self.closed_at = Some(self.now);
                }
                self.conn.close(self.now);
                Ok(None)
            }
        };
        match issued {
            Ok(Some((id, kind))) => {
                prop_assert!(
                    self.outstanding.insert(id, kind).is_none(),
                    "id {} allocated while pending",
                    id
                );
                prop_assert!(self.conn.is_pending(id));
                self.issued += 1;
            }
            Ok(None) => {}
            Err(e) => {
                prop_assert_eq!(
                    self.conn.queued_bytes(),
                    before,
                    "a refused command queued output: {:?}",
                    e
                );
                let closed_ok = matches!(e, SendError::Closed(_)) == self.conn.is_closed();
                prop_assert!(
                    closed_ok,
                    "error {:?} vs closed={}",
                    e,
                    self.conn.is_closed()
                );
            }
        }
        self.after_call(before, was_closed)
    }

    fn input(&mut self, data: &[u8]) -> Result<(), TestCaseError> {
        let before = self.conn.queued_bytes();
        let was_closed = self.conn.is_closed();
        self.seen_now = self.now;
        self.conn.handle_input(self.now, data);
        self.after_call(before, was_closed)?;
        let before = self.conn.queued_bytes();
        let was_closed = self.conn.is_closed();
        self.conn.handle_timeout(self.now);
        self.after_call(before, was_closed)
    }
}

fn run_scenario(s: &Scenario) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let hello = LocalHello {
        version: "3.3.0".into(),
        meta: Map::new(),
    };
    let mut config = ConnectionConfig::default();
    config.hello = hello.clone();
    config.max_outbound = s.max_outbound;
    config.decoder.strict = s.strict;
    if s.restrict_types {
        config.decoder.accepted_types = Some(Arc::new(
            [0u16, 1, 200, 201].into_iter().map(MessageType).collect(),
        ));
    }
    let mut input = Vec::new();
    if s.valid_handshake {
        match s.side {
            Side::Client => {
                input.extend_from_slice(&encode_hello(&hello));
                input.extend_from_slice(&encode_ack());
            }
            Side::Server => input.extend_from_slice(&encode_hello(&hello)),
        }
    }
    input.extend_from_slice(&s.body);

    let mut h = Harness {
        conn: Connection::new(s.side, Arc::new(config), t0),
        now: t0,
        seen_now: t0,
        allowed_after_close: None,
        saw_closed_event: false,
        closed_at: None,
        saw_connected: false,
        outstanding: HashMap::new(),
        issued: 0,
        ended: 0,
    };
    let mut rest = &input[..];
    for step in &s.steps {
        h.now += Duration::from_millis(step.advance_ms);
        h.command(&step.command)?;
        let n = step.input_len.min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        h.input(chunk)?;
        if step.drain_output {
            h.transmit_all()?;
            h.events_all()?;
            // Nothing queued: the next deadline, if any, is in the future.
            if let Some(t) = h.conn.poll_timeout() {
                prop_assert!(
                    t > h.now,
                    "poll_timeout {:?} not after now {:?} with nothing queued",
                    t - t0,
                    h.now - t0
                );
            }
            prop_assert_eq!(h.conn.is_closed(), h.saw_closed_event);
        }
    }
    // Whatever input is left arrives in one read.
    h.input(rest)?;
    if s.eof_at_end {
        let before = h.conn.queued_bytes();
        let was_closed = h.conn.is_closed();
        h.seen_now = h.now;
        h.conn.handle_eof(h.now);
        h.after_call(before, was_closed)?;
        prop_assert!(h.conn.is_closed());
    }
    // End of the run: close (a no-op when already closed) and drain.
    let before = h.conn.queued_bytes();
    let was_closed = h.conn.is_closed();
    h.seen_now = h.now;
    if !was_closed {
        h.closed_at = Some(h.now);
    }
    h.conn.close(h.now);
    h.after_call(before, was_closed)?;
    h.transmit_all()?;
    h.events_all()?;
    prop_assert!(h.saw_closed_event, "no Closed event");
    prop_assert!(
        h.outstanding.is_empty(),
        "requests never ended: {:?}",
        h.outstanding
    );
    prop_assert_eq!(h.issued, h.ended);
    prop_assert_eq!(h.conn.poll_timeout(), None);
    prop_assert_eq!(h.conn.pending_requests(), 0);
    // A closed connection ignores everything.
    h.input(&s.body)?;
    h.conn.handle_timeout(h.now + Duration::from_secs(3600));
    prop_assert!(h.conn.poll_transmit().is_none());
    prop_assert!(h.conn.poll_event().is_none());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Client and server connections under arbitrary input, commands and time.
    #[test]
    fn connections_survive_arbitrary_input(s in arb_scenario()) {
        run_scenario(&s)?;
    }
}
