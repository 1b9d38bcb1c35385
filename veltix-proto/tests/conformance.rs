//! Conformance against the golden vectors made by the real Python `veltix`
//! 3.3.0 package (`tests/vectors.json`, a copy of `shared/spec/vectors.json`).
//!
//! Every vector of every section is replayed and checked byte for byte:
//!
//! * `frames[]`: encoding, header fields, CRC, and decoding back (including the
//!   generator-made 64 KiB vector, checked through its header and SHA-256);
//! * `decode_only[]`: frames only a receiver sees (non-zero flags);
//! * `streams[]`: stream reassembly with the vector's limits and the receiver's
//!   registered types, draining after every chunk as Veltix does, including the
//!   decoder's discard counters;
//! * `split_read_check`: read-size independence at every split point;
//! * `handshake`: byte-exact messages, the server's reaction to every client
//!   hello (whole and one byte at a time), the PING/PONG examples, and the
//!   client-side cases of spec §9 items 12 and 13.
//!
//! No vector is skipped silently: every loop counts what it processed and
//! asserts the count equals the array length, and every vector field is known
//! (an unknown key fails the test instead of being ignored).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use veltix_proto::handshake::{encode_ack, encode_hello, encode_rejection, MAX_HANDSHAKE_LEN};
use veltix_proto::{
    CloseReason, Connection, ConnectionConfig, Decoded, Decoder, DecoderConfig, DecoderStats,
    Discard, DiscardReason, Event, Frame, HandshakeError, Header, LocalHello, MessageType, TypeSet,
    HEADER_LEN,
};

// ------------------------------------------------------------------ helpers

fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors.json");
        let text = std::fs::read_to_string(path).expect("read tests/vectors.json");
        serde_json::from_str(&text).expect("vectors.json is JSON")
    })
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key)
        .unwrap_or_else(|| panic!("vector has no {key:?}: {v}"))
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    field(v, key)
        .as_str()
        .unwrap_or_else(|| panic!("{key:?} is not a string in {v}"))
}

fn u64_of(v: &Value, key: &str) -> u64 {
    field(v, key)
        .as_u64()
        .unwrap_or_else(|| panic!("{key:?} is not an unsigned integer in {v}"))
}

fn u16_of(v: &Value, key: &str) -> u16 {
    u16::try_from(u64_of(v, key)).expect("fits u16")
}

fn array_of<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    field(v, key)
        .as_array()
        .unwrap_or_else(|| panic!("{key:?} is not an array"))
}

fn name_of(v: &Value) -> &str {
    str_of(v, "name")
}

/// Fails on any key this test does not know how to check, so a new vector
/// field can never be ignored silently.
fn assert_known_keys(v: &Value, known: &[&str]) {
    let obj = v.as_object().expect("vector is an object");
    for k in obj.keys() {
        assert!(
            known.contains(&k.as_str()),
            "vector {:?} has a field {k:?} this test does not check (keys: {:?})",
            obj.get("name"),
            obj.keys().collect::<Vec<_>>()
        );
    }
}

/// A message as the vectors describe it: type, request id, payload.
type Msg = (u16, u16, Vec<u8>);

fn msgs_of(expected: &Value) -> Vec<Msg> {
    array_of(expected, "messages")
        .iter()
        .map(|m| {
            assert_known_keys(m, &["type_code", "request_id", "payload_hex"]);
            (
                u16_of(m, "type_code"),
                u16_of(m, "request_id"),
                unhex(str_of(m, "payload_hex")),
            )
        })
        .collect()
}

fn msg_of_frame(f: &Frame) -> Msg {
    (f.message_type.0, f.request_id, f.payload.to_vec())
}

/// Everything a decoder produced.
#[derive(Debug, Default)]
struct Drained {
    frames: Vec<Frame>,
    discards: Vec<Discard>,
}

/// Calls `next_frame` until it returns `None`.
fn drain_into(dec: &mut Decoder, out: &mut Drained) {
    while let Some(d) = dec.next_frame() {
        match d {
            Decoded::Frame(f) => out.frames.push(f),
            Decoded::Discarded(d) => out.discards.push(d),
        }
    }
}

/// Pushes each chunk and drains after each one (what Veltix does per `recv`).
fn run_chunks<'a>(
    config: DecoderConfig,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Decoder, Drained) {
    let mut dec = Decoder::new(config);
    let mut out = Drained::default();
    for c in chunks {
        dec.push(c);
        drain_into(&mut dec, &mut out);
    }
    (dec, out)
}

/// The receiver of the stream vectors: only `receiver_registered_type_codes` are accepted.
fn registered_types() -> Arc<TypeSet> {
    let codes = array_of(vectors(), "receiver_registered_type_codes");
    assert!(!codes.is_empty());
    let set: TypeSet = codes
        .iter()
        .map(|c| MessageType(u16::try_from(c.as_u64().expect("code")).expect("u16")))
        .collect();
    let unregistered = u16_of(vectors(), "unregistered_type_code_used");
    assert!(!set.contains(MessageType(unregistered)));
    assert!(set.contains(MessageType::PING) && set.contains(MessageType::PONG));
    Arc::new(set)
}

fn stream_config(max_message_size: usize, max_buffer_size: usize) -> DecoderConfig {
    DecoderConfig {
        max_message_size,
        max_buffer_size,
        accepted_types: Some(registered_types()),
        strict: false,
        ..DecoderConfig::default()
    }
}

/// A minimal SHA-256 (FIPS 180-4), only to check the `frame_sha256` of the
/// generator-made vector without adding a dependency.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (wi, b) in w.iter_mut().zip(block.chunks_exact(4)) {
            *wi = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for (k, wi) in K.iter().zip(w.iter()) {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(*k)
                .wrapping_add(*wi);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[test]
fn sha256_helper_is_correct() {
    assert_eq!(
        hex::encode(sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex::encode(sha256(b"")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    // Two blocks (56 bytes forces the padding into a second block).
    assert_eq!(
        hex::encode(sha256(
            b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
        )),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}

// --------------------------------------------------------------- frames[]

/// The only payload generator the vectors use; any other text fails the test
/// rather than being guessed at.
const GENERATOR_MOD_256: &str = "bytes(i % 256 for i in range(65536))";

fn vector_payload(f: &Value) -> Vec<u8> {
    match field(f, "payload_hex") {
        Value::String(h) => {
            assert!(
                f.get("payload_generator").is_none(),
                "{}: both hex and generator",
                name_of(f)
            );
            unhex(h)
        }
        Value::Null => {
            let generator = str_of(f, "payload_generator");
            assert_eq!(
                generator,
                GENERATOR_MOD_256,
                "{}: unknown payload generator",
                name_of(f)
            );
            (0..65536u32).map(|i| (i % 256) as u8).collect()
        }
        other => panic!("{}: payload_hex is {other}", name_of(f)),
    }
}

#[test]
fn frames_encode_parse_and_decode_exactly() {
    let frames = array_of(vectors(), "frames");
    let mut processed = 0;
    let mut generated = 0;
    for f in frames {
        let name = name_of(f);
        assert_known_keys(
            f,
            &[
                "name",
                "description",
                "type_code",
                "request_id",
                "flags",
                "payload_hex",
                "payload_generator",
                "payload_len",
                "crc32_hex",
                "header_hex",
                "frame_hex",
                "frame_len",
                "frame_sha256",
            ],
        );
        let type_code = u16_of(f, "type_code");
        let request_id = u16_of(f, "request_id");
        let flags = u8::try_from(u64_of(f, "flags")).expect("flags fit u8");
        assert_eq!(flags, 0, "{name}: senders always write flags 0");
        let payload = vector_payload(f);
        let payload_len = u64_of(f, "payload_len");
        assert_eq!(payload.len() as u64, payload_len, "{name}: payload_len");
        let crc = u32::from_str_radix(str_of(f, "crc32_hex"), 16).expect("crc hex");
        assert_eq!(str_of(f, "crc32_hex").len(), 8, "{name}: crc32_hex width");

        // Encoding with the public constructor (flags 0).
        let frame = Frame::new(MessageType(type_code), request_id, payload.clone());
        let encoded = frame.to_vec().expect("encodes");
        assert_eq!(
            encoded.len() as u64,
            u64_of(f, "frame_len"),
            "{name}: frame_len"
        );
        match field(f, "frame_hex") {
            Value::String(h) => assert_eq!(hex::encode(&encoded), *h, "{name}: frame bytes"),
            Value::Null => {
                generated += 1;
                assert!(
                    f.get("frame_sha256").is_some() && f.get("header_hex").is_some(),
                    "{name}: a vector without frame_hex must give header_hex and frame_sha256"
                );
            }
            other => panic!("{name}: frame_hex is {other}"),
        }
        if let Some(h) = f.get("header_hex") {
            let h = h.as_str().expect("header_hex string");
            assert_eq!(
                hex::encode(&encoded[..HEADER_LEN]),
                h,
                "{name}: header bytes"
            );
        }
        if let Some(d) = f.get("frame_sha256") {
            let d = d.as_str().expect("frame_sha256 string");
            assert_eq!(hex::encode(sha256(&encoded)), d, "{name}: frame sha256");
        }
        // The header used for sending agrees with the bytes.
        assert_eq!(
            frame.header().expect("header").to_bytes(),
            encoded[..HEADER_LEN],
            "{name}: Frame::header"
        );

        // Parsing the header.
        let h = Header::parse(&encoded).expect("header parses");
        assert_eq!(h.crc32, crc, "{name}: crc32");
        assert_eq!(u64::from(h.payload_len), payload_len, "{name}: payload_len");
        assert_eq!(h.message_type, MessageType(type_code), "{name}: type");
        assert_eq!(h.request_id, request_id, "{name}: request id");
        assert_eq!(h.flags, flags, "{name}: flags");
        assert_eq!(h.frame_len(), encoded.len(), "{name}: frame_len()");
        assert_eq!(crc32fast::hash(&payload), crc, "{name}: crc of payload");

        // Decoding: exactly this frame, nothing else, nothing left over; both
        // with the default receiver and with the vectors' registered types.
        let expected = Frame {
            message_type: MessageType(type_code),
            request_id,
            flags,
            payload: payload.into(),
        };
        for config in [DecoderConfig::default(), stream_config(1 << 20, 20 << 20)] {
            let (dec, out) = run_chunks(config, [&encoded[..]]);
            assert!(
                out.discards.is_empty(),
                "{name}: discards {:?}",
                out.discards
            );
            assert_eq!(out.frames, vec![expected.clone()], "{name}: decoded frame");
            assert_eq!(dec.buffered(), 0, "{name}: bytes left");
            assert_eq!(dec.stats().frames, 1);
            assert_eq!(dec.stats().frame_bytes, encoded.len() as u64);
        }
        processed += 1;
    }
    assert_eq!(processed, frames.len());
    assert_eq!(
        generated, 1,
        "exactly one generator-made vector (payload_64KiB)"
    );
    assert!(
        processed >= 23,
        "vectors.json lost frame vectors: {processed}"
    );
}

// ----------------------------------------------------------- decode_only[]

#[test]
fn decode_only_vectors() {
    let list = array_of(vectors(), "decode_only");
    let mut processed = 0;
    for v in list {
        let name = name_of(v);
        assert_known_keys(
            v,
            &[
                "name",
                "description",
                "type_code",
                "request_id",
                "flags",
                "payload_hex",
                "frame_hex",
                "expected",
            ],
        );
        let bytes = unhex(str_of(v, "frame_hex"));
        let flags = u8::try_from(u64_of(v, "flags")).expect("u8");
        assert_ne!(flags, 0, "{name}: decode_only vectors carry non-zero flags");
        let h = Header::parse(&bytes).expect("header");
        assert_eq!(h.flags, flags, "{name}: flags in header");
        assert_eq!(h.message_type.0, u16_of(v, "type_code"));
        assert_eq!(h.request_id, u16_of(v, "request_id"));

        let expected = field(v, "expected");
        assert_known_keys(expected, &["type_code", "request_id", "payload_hex"]);
        let want: Msg = (
            u16_of(expected, "type_code"),
            u16_of(expected, "request_id"),
            unhex(str_of(expected, "payload_hex")),
        );
        assert_eq!(want.2, unhex(str_of(v, "payload_hex")));

        for config in [DecoderConfig::default(), stream_config(1024, 20 << 20)] {
            let (dec, out) = run_chunks(config, [&bytes[..]]);
            assert!(out.discards.is_empty(), "{name}: {:?}", out.discards);
            assert_eq!(out.frames.len(), 1, "{name}: one frame");
            assert_eq!(msg_of_frame(&out.frames[0]), want, "{name}: message");
            assert_eq!(out.frames[0].flags, flags, "{name}: flags kept as received");
            assert_eq!(dec.buffered(), 0);
            // Re-encoding the received frame keeps its flags: same bytes.
            assert_eq!(out.frames[0].to_vec().unwrap(), bytes, "{name}: re-encode");
        }
        // What we would send for the same message: identical but flags 0x00.
        let ours = Frame::new(MessageType(want.0), want.1, want.2.clone())
            .to_vec()
            .unwrap();
        let mut with_zero_flags = bytes.clone();
        with_zero_flags[2] = 0;
        assert_eq!(ours, with_zero_flags, "{name}: we always send flags 0");
        processed += 1;
    }
    assert_eq!(processed, list.len());
    assert!(processed >= 1);
}

// ---------------------------------------------------------------- streams[]

/// Discard counters each stream vector must produce:
/// `(bad_magic, oversize, crc_mismatch, unknown_type, overflow, discarded_bytes)`,
/// worked out by hand from the vector bytes. Every stream name must be here.
fn expected_discards(name: &str) -> (u64, u64, u64, u64, u64, u64) {
    match name {
        "two_frames_one_read"
        | "three_frames_incl_empty"
        | "frame_exactly_max"
        | "nonzero_flags" => (0, 0, 0, 0, 0, 0),
        // Waiting, nothing examined or dropped.
        "truncated_frame" | "header_complete_payload_missing" | "short_garbage_kept" => {
            (0, 0, 0, 0, 0, 0)
        }
        // The bogus header (79 bytes declared) blocks; nothing dropped yet.
        "false_magic_waits" => (0, 0, 0, 0, 0, 0),
        // "xyzV" skipped up to the real "VX".
        "garbage_prefix" => (1, 0, 0, 0, 0, 4),
        // 00 01 56 51 skipped.
        "garbage_between" => (1, 0, 0, 0, 0, 4),
        // Frame A (18 bytes, no "VX" after offset 0) skipped up to B.
        "crc_mismatch" => (0, 0, 1, 0, 0, 18),
        // Type 4321 frame (18 bytes) dropped whole.
        "unknown_type_code" => (0, 0, 0, 1, 0, 18),
        // 2015-byte declared frame: header + x's skipped up to B.
        "oversize_declared" => (0, 1, 0, 0, 0, 2015),
        // 1025 bytes, no "VX" after offset 0: all cleared.
        "frame_max_plus_one" => (0, 1, 0, 0, 0, 1025),
        "no_magic_20_bytes" => (1, 0, 0, 0, 0, 20),
        // Bogus 15-byte header fails its CRC once complete: resync to A.
        "false_magic_recovers" => (0, 0, 1, 0, 0, 15),
        // 10 buffered + 100-byte chunk.
        "buffer_overflow" => (0, 0, 0, 0, 1, 110),
        // 13 junk bytes skipped, the 'V' kept.
        "split_magic_after_short_garbage" => (1, 0, 0, 0, 0, 13),
        // 20 bytes cleared (incl. 'V'), then the 17-byte rest of A up to B.
        "split_magic_after_long_garbage_lost" => (2, 0, 0, 0, 0, 37),
        // CRC first: resync from offset 1 finds the nested frame at 18.
        "unknown_type_bad_crc_nested_frame" => (0, 0, 1, 0, 0, 18),
        other => panic!("stream vector {other:?} has no expected discard counters in this test"),
    }
}

fn expected_result(e: &Value) -> (Vec<Msg>, usize) {
    assert_known_keys(e, &["messages", "bytes_left_in_buffer"]);
    (
        msgs_of(e),
        usize::try_from(u64_of(e, "bytes_left_in_buffer")).expect("usize"),
    )
}

#[test]
fn streams_follow_the_rust_engine() {
    let streams = array_of(vectors(), "streams");
    let mut processed = 0;
    let mut divergent = Vec::new();
    for s in streams {
        let name = name_of(s);
        assert_known_keys(
            s,
            &[
                "name",
                "description",
                "action",
                "max_message_size",
                "max_buffer_size",
                "chunks_hex",
                "expected_python_engine",
                "expected_rust_engine",
                "engines_agree",
            ],
        );
        let max_message_size = usize::try_from(u64_of(s, "max_message_size")).unwrap();
        let max_buffer_size = usize::try_from(u64_of(s, "max_buffer_size")).unwrap();
        let chunks: Vec<Vec<u8>> = array_of(s, "chunks_hex")
            .iter()
            .map(|c| unhex(c.as_str().expect("chunk hex")))
            .collect();
        assert!(!chunks.is_empty(), "{name}: no chunks");
        let total_in: usize = chunks.iter().map(Vec::len).sum();

        let (dec, out) = run_chunks(
            stream_config(max_message_size, max_buffer_size),
            chunks.iter().map(Vec::as_slice),
        );
        let got: Vec<Msg> = out.frames.iter().map(msg_of_frame).collect();
        let got_left = dec.buffered();

        let rust = field(s, "expected_rust_engine");
        let python = field(s, "expected_python_engine");
        let (rust_msgs, rust_left) = expected_result(rust);
        let (python_msgs, python_left) = expected_result(python);
        assert_eq!(got, rust_msgs, "{name}: messages (rust engine)");
        assert_eq!(got_left, rust_left, "{name}: bytes left (rust engine)");

        let agree = field(s, "engines_agree").as_bool().expect("bool");
        if agree {
            assert_eq!(
                rust, python,
                "{name}: engines_agree but expectations differ"
            );
            assert_eq!(got, python_msgs, "{name}: messages (python engine)");
            assert_eq!(got_left, python_left, "{name}: bytes left (python engine)");
        } else {
            // Spec §2.3: the pure-Python engine checks the type before the CRC
            // and drops `total` bytes of a frame with an unknown type and a bad
            // CRC; the compiled engine (and this crate) checks the CRC first,
            // resyncs from offset 1 and finds the frame nested in the payload.
            // We deliberately follow the compiled engine, so here our result
            // must differ from the Python one.
            assert_ne!(
                rust, python,
                "{name}: engines_agree=false but same expectations"
            );
            assert!(
                got != python_msgs || got_left != python_left,
                "{name}: we matched the python engine, not the rust one"
            );
            divergent.push(name.to_owned());
        }

        // Discards are counted, by kind and in bytes.
        let (bad_magic, oversize, crc_mismatch, unknown_type, overflow, discarded_bytes) =
            expected_discards(name);
        let frame_bytes: u64 = rust_msgs
            .iter()
            .map(|m| (HEADER_LEN + m.2.len()) as u64)
            .sum();
        let want_stats = DecoderStats {
            frames: rust_msgs.len() as u64,
            frame_bytes,
            bad_magic,
            oversize,
            crc_mismatch,
            unknown_type,
            overflow,
            discarded_bytes,
            // The work counters are checked by the decoder's own tests.
            crc_bytes: dec.stats().crc_bytes,
            scan_bytes: dec.stats().scan_bytes,
            resync_limit: 0,
        };
        assert_eq!(*dec.stats(), want_stats, "{name}: decoder stats");
        // The reported discards agree with the counters.
        assert_eq!(
            out.discards.iter().map(|d| d.bytes as u64).sum::<u64>(),
            discarded_bytes,
            "{name}: sum of Discard.bytes"
        );
        let kinds = |f: fn(&DiscardReason) -> bool| {
            out.discards.iter().filter(|d| f(&d.reason)).count() as u64
        };
        assert_eq!(kinds(|r| matches!(r, DiscardReason::BadMagic)), bad_magic);
        assert_eq!(
            kinds(|r| matches!(r, DiscardReason::Oversize { .. })),
            oversize
        );
        assert_eq!(
            kinds(|r| matches!(r, DiscardReason::CrcMismatch { .. })),
            crc_mismatch
        );
        assert_eq!(
            kinds(|r| matches!(r, DiscardReason::UnknownType(_))),
            unknown_type
        );
        assert_eq!(
            kinds(|r| matches!(r, DiscardReason::BufferOverflow)),
            overflow
        );
        // Every input byte is accounted for: delivered, discarded or buffered.
        assert_eq!(
            frame_bytes + discarded_bytes + got_left as u64,
            total_in as u64,
            "{name}: byte conservation"
        );
        // Whatever was not delivered shows up as a counted discard or is still buffered.
        if frame_bytes < total_in as u64 {
            assert!(
                dec.stats().discarded_bytes > 0 || got_left > 0,
                "{name}: bytes vanished without a discard"
            );
        }
        processed += 1;
    }
    assert_eq!(processed, streams.len());
    assert!(
        processed >= 20,
        "vectors.json lost stream vectors: {processed}"
    );
    assert_eq!(
        divergent,
        vec!["unknown_type_bad_crc_nested_frame".to_owned()]
    );
}

/// The unknown-type/bad-CRC vector also exercises the detail of which bytes
/// each step skips: 18 bytes to the nested frame, the frame, then 3 bytes that
/// stay buffered (fewer than a header).
#[test]
fn nested_frame_vector_discard_sequence() {
    let s = array_of(vectors(), "streams")
        .iter()
        .find(|s| name_of(s) == "unknown_type_bad_crc_nested_frame")
        .expect("vector present");
    let chunk = unhex(array_of(s, "chunks_hex")[0].as_str().unwrap());
    let mut dec = Decoder::new(stream_config(1024, 20 << 20));
    dec.push(&chunk);
    let Some(Decoded::Discarded(d)) = dec.next_frame() else {
        panic!("expected a discard first")
    };
    assert!(matches!(d.reason, DiscardReason::CrcMismatch { .. }));
    assert_eq!(d.bytes, 18);
    let Some(Decoded::Frame(f)) = dec.next_frame() else {
        panic!("expected the nested frame")
    };
    assert_eq!(
        (f.message_type.0, f.request_id, &f.payload[..]),
        (200, 77, &b"INNER"[..])
    );
    assert_eq!(dec.next_frame(), None);
    assert_eq!(dec.buffered(), 3);
}

// --------------------------------------------------------- split_read_check

#[test]
fn split_read_check_every_split_point_and_single_bytes() {
    let v = field(vectors(), "split_read_check");
    assert_known_keys(v, &["stream_hex", "expected", "checked"]);
    let stream = unhex(str_of(v, "stream_hex"));
    let (want, want_left) = expected_result(field(v, "expected"));
    assert_eq!(want_left, 0);
    assert_eq!(want.len(), 4);

    let check = |label: &str, chunks: Vec<&[u8]>| {
        for config in [DecoderConfig::default(), stream_config(1024, 20 << 20)] {
            let (dec, out) = run_chunks(config, chunks.iter().copied());
            let got: Vec<Msg> = out.frames.iter().map(msg_of_frame).collect();
            assert_eq!(got, want, "{label}");
            assert!(out.discards.is_empty(), "{label}: {:?}", out.discards);
            assert_eq!(dec.buffered(), 0, "{label}: bytes left");
        }
    };
    check("one read", vec![&stream[..]]);
    let mut splits = 0;
    for i in 0..=stream.len() {
        let (a, b) = stream.split_at(i);
        check(&format!("split at {i}"), vec![a, b]);
        splits += 1;
    }
    assert_eq!(splits, stream.len() + 1);
    check("1-byte reads", stream.chunks(1).collect());
}

// ------------------------------------------------------------- handshake

fn hs() -> &'static Value {
    field(vectors(), "handshake")
}

fn hs_message(name: &str) -> Vec<u8> {
    let m = array_of(hs(), "messages")
        .iter()
        .find(|m| name_of(m) == name)
        .unwrap_or_else(|| panic!("no handshake message {name:?}"));
    unhex(str_of(m, "hex"))
}

fn py_hello() -> LocalHello {
    LocalHello {
        version: "3.3.0".into(),
        meta: Map::new(),
    }
}

/// A connection config announcing what Veltix 3.3.0 announces.
fn config() -> Arc<ConnectionConfig> {
    let mut config = ConnectionConfig::default();
    config.hello = py_hello();
    Arc::new(config)
}

/// Takes all output and reports it written (at `now`, or the connection's
/// latest time if that is later).
fn drain_tx(c: &mut Connection, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = c.poll_transmit() {
        c.handle_written(now, b.len());
        out.extend_from_slice(&b);
    }
    out
}

fn drain_events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Prefixes a handshake body with its u16 length.
fn prefixed(body: &[u8]) -> Vec<u8> {
    let mut v = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

#[test]
fn handshake_messages_are_byte_exact() {
    let msgs = array_of(hs(), "messages");
    let mut processed = 0;
    for m in msgs {
        let name = name_of(m);
        assert_known_keys(
            m,
            &[
                "name",
                "direction",
                "hex",
                "length_prefix",
                "json_text",
                "description",
                "varies",
            ],
        );
        let bytes = unhex(str_of(m, "hex"));
        // The vector is self-consistent: prefix + JSON text.
        assert_eq!(
            u64::from(u16::from_be_bytes([bytes[0], bytes[1]])),
            u64_of(m, "length_prefix"),
            "{name}: prefix"
        );
        assert_eq!(
            &bytes[2..],
            str_of(m, "json_text").as_bytes(),
            "{name}: body"
        );
        let ours = match name {
            "server_hello" | "client_hello" => encode_hello(&py_hello()),
            "ack_ok" => encode_ack(),
            "error_server_full" => encode_rejection("server_full"),
            other => panic!("unknown handshake message {other:?}"),
        };
        assert_eq!(hex::encode(&ours), hex::encode(&bytes), "{name}");
        processed += 1;
    }
    assert_eq!(processed, msgs.len());
    assert_eq!(processed, 4);
}

/// The hello a `v` of another length gets a matching prefix (§9 item 10).
#[test]
fn hello_prefix_follows_version_length() {
    for v in ["", "0.0.0.dev", "3.3.0", "10.20.30-rc.1+build.5"] {
        let b = encode_hello(&LocalHello {
            version: v.into(),
            meta: Map::new(),
        });
        let body = format!("{{\"v\": \"{v}\", \"pv\": \"1.0\", \"meta\": {{}}}}");
        assert_eq!(&b[..], &prefixed(body.as_bytes())[..], "{v:?}");
    }
}

/// The body of the `length_30720_max` case: a JSON object of exactly 30 720 bytes.
fn max_length_client_hello() -> Vec<u8> {
    let head = b"{\"pv\": \"1.0\", \"pad\": \"";
    let tail = b"\"}";
    let mut body = head.to_vec();
    body.resize(MAX_HANDSHAKE_LEN - tail.len(), b'x');
    body.extend_from_slice(tail);
    assert_eq!(body.len(), 30_720);
    assert_eq!(MAX_HANDSHAKE_LEN, 30_720);
    let v: Value = serde_json::from_slice(&body).expect("valid JSON");
    assert_eq!(v["pv"], "1.0");
    let wire = prefixed(&body);
    assert_eq!(wire[..2], [0x78, 0x00]);
    wire
}

/// A check of the error a handshake failed with.
type ErrCheck = fn(&HandshakeError) -> bool;

/// What the server must close with for each rejected client hello.
fn expected_server_error(name: &str) -> ErrCheck {
    match name {
        "pv_major_2" => |e| *e == HandshakeError::IncompatibleProtocolVersion("2.0".into()),
        "pv_major_0" => |e| *e == HandshakeError::IncompatibleProtocolVersion("0.9".into()),
        "pv_missing" => |e| *e == HandshakeError::MissingProtocolVersion,
        "pv_three_parts" | "pv_not_string" => {
            |e| matches!(e, HandshakeError::MalformedProtocolVersion(_))
        }
        "zero_length_body" => |e| *e == HandshakeError::Empty,
        "json_array" => |e| *e == HandshakeError::NotAnObject,
        "empty_object" => |e| *e == HandshakeError::EmptyObject,
        "invalid_json" => |e| matches!(e, HandshakeError::InvalidJson(_)),
        "length_30721_too_big" => |e| *e == HandshakeError::TooLong(30_721),
        other => panic!("no expected error for server reaction {other:?}"),
    }
}

/// Runs a server connection: takes its hello, then feeds `input` in chunks of
/// `chunk` bytes. Returns the bytes transmitted after the hello, the index of
/// the chunk after which the first of them appeared, and the events.
fn run_server(input: &[u8], chunk: usize) -> (Vec<u8>, Option<usize>, Vec<Event>, Connection) {
    let t0 = Instant::now();
    let mut s = Connection::server(config(), t0);
    assert!(s.is_handshaking());
    assert_eq!(s.poll_timeout(), Some(t0), "the hello is ready at once");
    let hello = drain_tx(&mut s, t0);
    assert_eq!(hello, hs_message("server_hello"), "server hello bytes");
    assert!(drain_events(&mut s).is_empty());
    let mut tx = Vec::new();
    let mut first_tx_at = None;
    let mut events = Vec::new();
    for (i, c) in input.chunks(chunk).enumerate() {
        s.handle_input(t0 + Duration::from_millis(1), c);
        let out = drain_tx(&mut s, t0);
        if !out.is_empty() && first_tx_at.is_none() {
            first_tx_at = Some(i);
        }
        tx.extend_from_slice(&out);
        events.extend(drain_events(&mut s));
    }
    (tx, first_tx_at, events, s)
}

#[test]
fn server_reactions_to_client_hello() {
    let cases = array_of(hs(), "server_reactions_to_client_hello");
    let ack = hs_message("ack_ok");
    let mut processed = 0;
    let mut accepted = 0;
    for case in cases {
        let name = name_of(case);
        assert_known_keys(
            case,
            &[
                "name",
                "client_sends_hex",
                "client_sends_desc",
                "server_reply_hex",
                "outcome",
            ],
        );
        let input = match field(case, "client_sends_hex") {
            Value::String(h) => unhex(h),
            Value::Null => {
                assert_eq!(
                    name, "length_30720_max",
                    "only this case is described, not given"
                );
                assert_eq!(
                    str_of(case, "client_sends_desc"),
                    "u16 length 30720 + JSON object padded to that length"
                );
                max_length_client_hello()
            }
            other => panic!("{name}: client_sends_hex is {other}"),
        };
        let outcome = str_of(case, "outcome");
        let chunk_sizes = [input.len(), 1, 7];
        for chunk in chunk_sizes {
            let label = format!("{name} (chunks of {chunk})");
            let (tx, first_tx_at, events, s) = run_server(&input, chunk);
            let n_chunks = input.len().div_ceil(chunk);
            match outcome {
                "ack_ok" => {
                    let reply = unhex(str_of(case, "server_reply_hex"));
                    assert_eq!(reply, ack, "{label}: vector reply is the ack");
                    assert_eq!(tx, reply, "{label}: server reply");
                    assert_eq!(
                        first_tx_at,
                        Some(n_chunks - 1),
                        "{label}: ack only at the end"
                    );
                    assert_eq!(events.len(), 1, "{label}: {events:?}");
                    let Event::Connected(peer) = &events[0] else {
                        panic!("{label}: expected Connected, got {events:?}")
                    };
                    let sent: Value = serde_json::from_slice(&input[2..]).unwrap();
                    assert_eq!(
                        peer.protocol_version,
                        sent["pv"].as_str().unwrap(),
                        "{label}"
                    );
                    assert_eq!(peer.version.as_deref(), sent["v"].as_str(), "{label}");
                    assert!(s.is_established(), "{label}");
                    assert_eq!(
                        s.poll_timeout(),
                        None,
                        "{label}: no deadline once connected"
                    );
                }
                "closed_without_reply" => {
                    assert!(field(case, "server_reply_hex").is_null());
                    assert!(
                        tx.is_empty(),
                        "{label}: server must send nothing, sent {tx:02x?}"
                    );
                    assert_eq!(events.len(), 1, "{label}: {events:?}");
                    let Event::Closed {
                        reason: CloseReason::Handshake(e),
                        unsent_bytes,
                    } = &events[0]
                    else {
                        panic!("{label}: expected a handshake close, got {events:?}")
                    };
                    assert!(expected_server_error(name)(e), "{label}: wrong error {e:?}");
                    assert_eq!(*unsent_bytes, 0, "{label}");
                    assert!(s.is_closed(), "{label}");
                    assert_eq!(s.poll_timeout(), None, "{label}");
                }
                other => panic!("{name}: unknown outcome {other:?}"),
            }
        }
        if outcome == "ack_ok" {
            accepted += 1;
        }
        processed += 1;
    }
    assert_eq!(processed, cases.len());
    assert_eq!(
        accepted, 4,
        "standard, compact, pv 1.7 and 30720-byte hellos are accepted"
    );
}

/// Completes a server handshake with the standard client hello.
fn established_server(t0: Instant) -> Connection {
    let mut s = Connection::server(config(), t0);
    assert_eq!(drain_tx(&mut s, t0), hs_message("server_hello"));
    s.handle_input(t0, &hs_message("client_hello"));
    assert_eq!(drain_tx(&mut s, t0), hs_message("ack_ok"));
    assert!(matches!(drain_events(&mut s)[..], [Event::Connected(_)]));
    s
}

/// Completes a client handshake: server hello, our hello, ack.
fn established_client(t0: Instant) -> Connection {
    let mut c = Connection::client(config(), t0);
    assert!(drain_tx(&mut c, t0).is_empty(), "the client speaks second");
    c.handle_input(t0, &hs_message("server_hello"));
    assert_eq!(drain_tx(&mut c, t0), hs_message("client_hello"));
    c.handle_input(t0, &hs_message("ack_ok"));
    assert!(drain_tx(&mut c, t0).is_empty());
    let ev = drain_events(&mut c);
    let [Event::Connected(peer)] = &ev[..] else {
        panic!("expected Connected, got {ev:?}")
    };
    assert_eq!(peer.version.as_deref(), Some("3.3.0"));
    assert_eq!(peer.protocol_version, "1.0");
    assert!(peer.meta.is_empty());
    c
}

#[test]
fn post_handshake_examples() {
    let ex = field(hs(), "post_handshake_examples");
    let known = ["server_replies_pong", "client_ping_server"];
    assert_known_keys(ex, &known);
    let t0 = Instant::now();

    let pong = field(ex, "server_replies_pong");
    assert_known_keys(
        pong,
        &["client_sends_ping_hex", "server_sends_pong_hex", "note"],
    );
    for chunk in [15, 1] {
        let mut s = established_server(t0);
        for c in unhex(str_of(pong, "client_sends_ping_hex")).chunks(chunk) {
            s.handle_input(t0 + Duration::from_millis(3), c);
        }
        assert_eq!(
            hex::encode(drain_tx(&mut s, t0)),
            str_of(pong, "server_sends_pong_hex"),
            "auto-PONG (chunks of {chunk})"
        );
        let ev = drain_events(&mut s);
        assert!(
            ev.is_empty(),
            "a PING never reaches the application: {ev:?}"
        );
        assert_eq!(s.stats().frames_in, 1);
    }

    let ping = field(ex, "client_ping_server");
    assert_known_keys(ping, &["client_sends_ping_hex", "note"]);
    let mut c = established_client(t0);
    assert_eq!(c.ping(t0, Duration::from_secs(5)), Ok(0));
    assert_eq!(
        hex::encode(drain_tx(&mut c, t0)),
        str_of(ping, "client_sends_ping_hex")
    );
    // The server's PONG completes it.
    c.handle_input(
        t0 + Duration::from_millis(9),
        &unhex("565800000100000000000000000000"),
    );
    assert_eq!(
        drain_events(&mut c),
        vec![Event::Pong {
            request_id: 0,
            rtt: Duration::from_millis(9)
        }]
    );
}

/// Feeds a client connection the server hello, takes its hello, then feeds
/// `second` (what the server sends next) in chunks; returns the events after
/// the hello, the bytes sent after it, and the connection.
fn client_after(second: &[u8], chunk: usize) -> (Vec<Event>, Vec<u8>, Connection) {
    let t0 = Instant::now();
    let mut c = Connection::client(config(), t0);
    c.handle_input(t0, &hs_message("server_hello"));
    assert_eq!(drain_tx(&mut c, t0), hs_message("client_hello"));
    assert!(drain_events(&mut c).is_empty());
    let mut events = Vec::new();
    let mut tx = Vec::new();
    for part in second.chunks(chunk) {
        c.handle_input(t0 + Duration::from_millis(1), part);
        tx.extend(drain_tx(&mut c, t0));
        events.extend(drain_events(&mut c));
    }
    (events, tx, c)
}

fn assert_handshake_close(events: &[Event], check: impl Fn(&HandshakeError) -> bool, label: &str) {
    let [Event::Closed {
        reason: CloseReason::Handshake(e),
        unsent_bytes: 0,
    }] = events
    else {
        panic!("{label}: expected one handshake close, got {events:?}")
    };
    assert!(check(e), "{label}: wrong error {e:?}");
}

/// Spec §9 item 12: a first message carrying `error` is a rejection, whatever
/// its value and other keys; the client sends nothing.
#[test]
fn client_rejected_by_server() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (hs_message("error_server_full"), "server_full"),
        (
            prefixed(br#"{"error": "maintenance", "v": "3.3.0", "pv": "1.0", "meta": {}}"#),
            "maintenance",
        ),
        (prefixed(br#"{"error": 5}"#), "5"),
    ];
    for (msg, reason) in cases {
        for chunk in [msg.len(), 1] {
            let t0 = Instant::now();
            let mut c = Connection::client(config(), t0);
            for part in msg.chunks(chunk) {
                c.handle_input(t0, part);
            }
            assert!(
                drain_tx(&mut c, t0).is_empty(),
                "{reason}: client must send nothing"
            );
            assert_handshake_close(
                &drain_events(&mut c),
                |e| *e == HandshakeError::Rejected(reason.into()),
                reason,
            );
            assert!(c.is_closed());
        }
    }
}

/// Spec §9 item 12: the client requires `"result": "ok"`; other keys are ignored.
#[test]
fn client_checks_the_ack() {
    // Extra keys: accepted.
    for chunk in [100, 1] {
        let ack = prefixed(br#"{"result": "ok", "extra": 1, "meta": {"a": [1, 2]}}"#);
        let (events, tx, c) = client_after(&ack, chunk);
        assert!(tx.is_empty());
        assert!(matches!(events[..], [Event::Connected(_)]), "{events:?}");
        assert!(c.is_established());
    }
    // Compact JSON, other key order: accepted.
    let (events, _, _) = client_after(&prefixed(br#"{"x":null,"result":"ok"}"#), 100);
    assert!(matches!(events[..], [Event::Connected(_)]), "{events:?}");

    let failures: Vec<(&[u8], ErrCheck)> = vec![
        (br#"{"result": "no"}"#, |e| {
            matches!(e, HandshakeError::NotAcknowledged(_))
        }),
        (br#"{"result": "OK"}"#, |e| {
            matches!(e, HandshakeError::NotAcknowledged(_))
        }),
        (br#"{"result": true}"#, |e| {
            matches!(e, HandshakeError::NotAcknowledged(_))
        }),
        (br#"{"error": "bye"}"#, |e| {
            *e == HandshakeError::Rejected("bye".into())
        }),
        (br#"{}"#, |e| {
            matches!(e, HandshakeError::NotAcknowledged(_))
        }),
        (br#"[]"#, |e| *e == HandshakeError::NotAnObject),
        (br#"{"result": "ok""#, |e| {
            matches!(e, HandshakeError::InvalidJson(_))
        }),
    ];
    for (body, check) in failures {
        let label = String::from_utf8_lossy(body).into_owned();
        for chunk in [100, 1] {
            let (events, tx, c) = client_after(&prefixed(body), chunk);
            assert!(tx.is_empty(), "{label}");
            assert_handshake_close(&events, check, &label);
            assert!(c.is_closed(), "{label}");
        }
    }
    // Length 0 and an oversize prefix fail from the prefix alone.
    let (events, _, _) = client_after(&[0, 0], 1);
    assert_handshake_close(&events, |e| *e == HandshakeError::Empty, "empty ack");
    let (events, _, _) = client_after(&[0x78, 0x01, b'{'], 1);
    assert_handshake_close(
        &events,
        |e| *e == HandshakeError::TooLong(30_721),
        "long ack",
    );
}

/// Spec §9 item 13: frames in the same read as the ack are delivered, and a
/// PING among them is answered; also when everything trickles in byte by byte.
#[test]
fn frames_in_the_same_read_as_the_ack() {
    let a = Frame::new(MessageType(200), 5, &b"hi"[..]);
    let b = Frame::new(MessageType(300), 32_768, &b"second"[..]);
    let mut second = hs_message("ack_ok");
    second.extend(a.to_vec().unwrap());
    second.extend(Frame::new(MessageType::PING, 9, &b""[..]).to_vec().unwrap());
    second.extend(b.to_vec().unwrap());
    let partial = Frame::new(MessageType(201), 1, &b"later"[..])
        .to_vec()
        .unwrap();
    second.extend_from_slice(&partial[..10]);
    for chunk in [second.len(), 1, 5] {
        let (events, tx, c) = client_after(&second, chunk);
        assert!(matches!(events[0], Event::Connected(_)), "{events:?}");
        assert_eq!(
            events[1..],
            [Event::Message(a.clone()), Event::Message(b.clone())],
            "chunks of {chunk}"
        );
        assert_eq!(
            hex::encode(tx),
            "565800000100000000000000000009",
            "PONG for id 9 (chunks of {chunk})"
        );
        assert_eq!(c.buffered_input(), 10, "the partial frame waits");
    }
    // The whole server side in one read (hello and ack together) also works.
    let t0 = Instant::now();
    let mut c = Connection::client(config(), t0);
    let mut all = hs_message("server_hello");
    all.extend_from_slice(&second);
    c.handle_input(t0, &all);
    let ev = drain_events(&mut c);
    assert!(matches!(
        ev[..],
        [Event::Connected(_), Event::Message(_), Event::Message(_)]
    ));
    let mut tx = hs_message("client_hello");
    tx.extend(unhex("565800000100000000000000000009"));
    assert_eq!(drain_tx(&mut c, t0), tx);

    // And a server receives frames that follow the client hello in one read.
    let mut s = Connection::server(config(), t0);
    drain_tx(&mut s, t0);
    let mut input = hs_message("client_hello");
    input.extend(a.to_vec().unwrap());
    s.handle_input(t0, &input);
    assert_eq!(drain_tx(&mut s, t0), hs_message("ack_ok"));
    let ev = drain_events(&mut s);
    assert!(
        matches!(&ev[..], [Event::Connected(_), Event::Message(f)] if *f == a),
        "{ev:?}"
    );
}

/// Spec §9 item 12, timeouts. Veltix applies `handshake_timeout` per read (a
/// trickling peer stays forever); this port deliberately applies one deadline
/// to the whole handshake (crate docs, "Where this port differs").
#[test]
fn handshake_deadline_covers_the_whole_handshake() {
    let t0 = Instant::now();
    let timeout = veltix_proto::DEFAULT_HANDSHAKE_TIMEOUT;
    assert_eq!(timeout, Duration::from_secs(5));

    // A silent server: the client fails at the deadline, not before.
    let mut c = Connection::client(config(), t0);
    assert_eq!(c.poll_timeout(), Some(t0 + timeout));
    c.handle_timeout(t0 + timeout - Duration::from_millis(1));
    assert!(drain_events(&mut c).is_empty() && c.is_handshaking());
    c.handle_timeout(t0 + timeout);
    assert_handshake_close(
        &drain_events(&mut c),
        |e| *e == HandshakeError::TimedOut,
        "silent server",
    );
    assert!(drain_tx(&mut c, t0).is_empty());

    // A client trickling its hello one byte per second: each read is well
    // within the timeout, but the whole handshake is not.
    let mut s = Connection::server(config(), t0);
    drain_tx(&mut s, t0);
    let hello = hs_message("client_hello");
    let mut now = t0;
    for b in hello.iter().take(6) {
        now += Duration::from_secs(1);
        s.handle_timeout(now);
        s.handle_input(now, &[*b]);
        if s.is_closed() {
            break;
        }
    }
    assert!(s.is_closed(), "closed once 5 s passed in total");
    assert!(
        drain_tx(&mut s, t0).is_empty(),
        "nothing sent to a timed-out client"
    );
    assert_handshake_close(
        &drain_events(&mut s),
        |e| *e == HandshakeError::TimedOut,
        "trickling client",
    );

    // EOF during the handshake is a handshake failure too.
    let mut c = Connection::client(config(), t0);
    c.handle_input(t0, &hs_message("server_hello")[..10]);
    c.handle_eof(t0);
    assert_handshake_close(
        &drain_events(&mut c),
        |e| *e == HandshakeError::PeerClosed,
        "eof",
    );
}
