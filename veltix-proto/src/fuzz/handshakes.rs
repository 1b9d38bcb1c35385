//! `handshake_client`, `handshake_server`: a [`Connection`] during its
//! handshake, fed by an arbitrary peer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Value};

use super::{cut_points, magics, pieces, prefix, XorShift};
use crate::connection::{Connection, ConnectionConfig};
use crate::event::{CloseReason, Event};
use crate::frame::{Frame, MessageType};
use crate::handshake::{
    encode_ack, encode_hello, encode_rejection, HandshakeError, LocalHello, PeerHello, Side,
    MAX_HANDSHAKE_LEN,
};
use crate::json::to_vec_python;

/// Arbitrary bytes, or arbitrary JSON objects, as the server at every step of
/// a client's handshake (hello or rejection, then ack, then framed traffic).
/// See [`handshake_server`] for the input layout and the invariants.
pub fn handshake_client(t0: Instant, data: &[u8]) {
    run(t0, Side::Client, data);
}

/// Arbitrary bytes, or arbitrary JSON objects, as the client hello a server
/// connection receives, then framed traffic.
///
/// Layout: `p[0]` bit 0 chooses the mode (0: the rest of the input is the
/// peer's byte stream, verbatim; 1: the rest is read as
/// [`arbitrary::Unstructured`] to build each handshake message — the valid
/// one, an arbitrary JSON object with `pv`/`v`/`meta`/`result`/`error` keys
/// of any type behind a right or wrong `u16` length, raw bytes, a rejection,
/// a hello padded to around the 30 KiB cap when a further byte is `P` — and
/// trailing frames); bit 1:
/// strict decoder; bit 2: EOF after the last byte; bits 3–4: whether
/// `handle_timeout(now)` runs before each input, after it, either, or only at
/// the end. `p[1]·40 ms` is the handshake timeout. `p[2]` chooses how the
/// stream is cut (the style of [`cut_points`], with the message and frame
/// starts as marks: at most [`MAX_PIECES`](super::MAX_PIECES) pieces, so
/// that a hello padded to 30 KiB costs no more than a short one) and `p[3]`
/// how far time moves between pieces.
///
/// Asserts: no panic; before `Connected` the only possible event is a `Closed`
/// with [`CloseReason::Handshake`]; at most one `Connected`, `Closed` last;
/// bytes sent are a prefix of our hello (server: hello then ack once
/// connected); while handshaking `poll_timeout` is the deadline; once
/// `handle_timeout` has seen the deadline the connection is no longer
/// handshaking. In structured mode an oracle predicts the outcome of
/// well-formed messages (established with the peer's hello, or the exact
/// failure), checked as soon as the deciding bytes are in.
pub fn handshake_server(t0: Instant, data: &[u8]) {
    run(t0, Side::Server, data);
}

/// How one message ends the handshake, as far as the oracle knows.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Valid; the next message decides.
    Next,
    /// The handshake succeeds with this peer hello.
    Done(PeerHello),
    /// The handshake fails like this.
    Fail(Failure),
    /// The oracle cannot tell (raw bytes, a wrong length prefix).
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
enum Failure {
    TooLong(usize),
    EmptyObject,
    Rejected(String),
    /// Missing, malformed or incompatible `pv`.
    Version,
    NotAcknowledged,
}

impl Failure {
    fn matches(&self, e: &HandshakeError) -> bool {
        match (self, e) {
            (Failure::TooLong(a), HandshakeError::TooLong(b)) => a == b,
            (Failure::EmptyObject, HandshakeError::EmptyObject) => true,
            (Failure::Rejected(a), HandshakeError::Rejected(b)) => a == b,
            (
                Failure::Version,
                HandshakeError::MissingProtocolVersion
                | HandshakeError::MalformedProtocolVersion(_)
                | HandshakeError::IncompatibleProtocolVersion(_),
            ) => true,
            (Failure::NotAcknowledged, HandshakeError::NotAcknowledged(_)) => true,
            _ => false,
        }
    }
}

/// The spec's version rule, written independently of the core: a string of
/// ASCII digits, a dot, ASCII digits, whose major is 1 (leading zeros allowed).
fn pv_ok(pv: Option<&Value>) -> bool {
    let Some(Value::String(s)) = pv else {
        return false;
    };
    let Some((major, minor)) = s.split_once('.') else {
        return false;
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(minor) && major.trim_start_matches('0') == "1"
}

/// The peer hello a map announces (for the oracle).
fn announced(m: &Map<String, Value>) -> PeerHello {
    PeerHello {
        version: m.get("v").and_then(Value::as_str).map(str::to_owned),
        protocol_version: m
            .get("pv")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        meta: match m.get("meta") {
            Some(Value::Object(meta)) => meta.clone(),
            _ => Map::new(),
        },
        ..PeerHello::default()
    }
}

/// What a well-formed message carrying `m` does at handshake step `step` of `side`.
fn oracle(side: Side, step: usize, m: &Map<String, Value>, body_len: usize) -> Outcome {
    if body_len > MAX_HANDSHAKE_LEN {
        return Outcome::Fail(Failure::TooLong(body_len));
    }
    let reason = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match (side, step) {
        // The server's hello (or refusal), as the client sees it.
        (Side::Client, 0) => {
            if m.is_empty() {
                Outcome::Fail(Failure::EmptyObject)
            } else if let Some(e) = m.get("error") {
                Outcome::Fail(Failure::Rejected(reason(e)))
            } else if pv_ok(m.get("pv")) {
                Outcome::Next
            } else {
                Outcome::Fail(Failure::Version)
            }
        }
        // The ack.
        (Side::Client, _) => {
            if m.get("result").and_then(Value::as_str) == Some("ok") {
                Outcome::Done(PeerHello::default()) // filled in from step 0
            } else if let Some(e) = m.get("error") {
                Outcome::Fail(Failure::Rejected(reason(e)))
            } else {
                Outcome::Fail(Failure::NotAcknowledged)
            }
        }
        // The client's hello, as the server sees it.
        (Side::Server, _) => {
            if m.is_empty() {
                Outcome::Fail(Failure::EmptyObject)
            } else if pv_ok(m.get("pv")) {
                Outcome::Done(announced(m))
            } else {
                Outcome::Fail(Failure::Version)
            }
        }
    }
}

const KEYS: [&str; 5] = ["pv", "v", "meta", "result", "error"];
const PVS: [&str; 16] = [
    "1.0", "1.7", "01.0", "1.99", "001.5", "2.0", "0.9", "1", "1.0.0", " 1.0", "+1.0", "1.x", "",
    ".0", "1.", "١.٠",
];

fn arb_string(u: &mut Unstructured<'_>) -> Result<String> {
    let s: &str = u.arbitrary()?;
    Ok(s.chars().take(48).collect())
}

/// Any JSON value; numbers are integers or multiples of 1/8, which survive
/// a JSON round trip exactly.
fn arb_value(u: &mut Unstructured<'_>, depth: u8) -> Result<Value> {
    let top = if depth == 0 { 4 } else { 6 };
    Ok(match u.int_in_range(0..=top)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => Value::from(f64::from(u.arbitrary::<i32>()?) / 8.0),
        4 => Value::String(arb_string(u)?),
        5 => Value::Array(
            (0..u.int_in_range(0..=3u8)?)
                .map(|_| arb_value(u, depth - 1))
                .collect::<Result<_>>()?,
        ),
        _ => Value::Object(arb_object(u, depth - 1)?),
    })
}

/// A JSON object whose keys are mostly the handshake's, with values of the
/// expected type or of any other.
fn arb_object(u: &mut Unstructured<'_>, depth: u8) -> Result<Map<String, Value>> {
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=5u8)? {
        let key = match u.int_in_range(0..=6u8)? {
            k @ 0..=4 => KEYS[usize::from(k)].to_owned(),
            _ => arb_string(u)?,
        };
        let value = if u.ratio(2u8, 3)? {
            match key.as_str() {
                "pv" => Value::from(*u.choose(&PVS)?),
                "result" => Value::from(if u.ratio(3u8, 4)? { "ok" } else { "no" }),
                "meta" if depth > 0 => Value::Object(arb_object(u, depth - 1)?),
                "v" | "error" => Value::String(arb_string(u)?),
                _ => arb_value(u, depth)?,
            }
        } else {
            arb_value(u, depth)?
        };
        m.insert(key, value);
    }
    Ok(m)
}

/// A hello a real peer would send (Python-compatible bytes).
fn arb_local_hello(u: &mut Unstructured<'_>) -> Result<LocalHello> {
    Ok(LocalHello {
        version: arb_string(u)?,
        meta: arb_object(u, 1)?,
    })
}

fn prefixed(len: usize, body: &[u8]) -> Vec<u8> {
    let mut v = (len.min(usize::from(u16::MAX)) as u16)
        .to_be_bytes()
        .to_vec();
    v.extend_from_slice(body);
    v
}

/// One handshake message of `side`'s peer at step `step`, and what it does.
fn arb_message(
    u: &mut Unstructured<'_>,
    side: Side,
    step: usize,
    peer: &LocalHello,
) -> Result<(Vec<u8>, Outcome)> {
    let valid = || match (side, step) {
        (Side::Client, 1) => (encode_ack().to_vec(), Outcome::Done(PeerHello::default())),
        (Side::Client, _) => (encode_hello(peer).to_vec(), Outcome::Next),
        (Side::Server, _) => (
            encode_hello(peer).to_vec(),
            Outcome::Done(PeerHello {
                version: Some(peer.version.clone()),
                protocol_version: "1.0".into(),
                meta: peer.meta.clone(),
                ..PeerHello::default()
            }),
        ),
    };
    Ok(match u.int_in_range(0..=5u8)? {
        0 | 1 => valid(),
        2 => {
            let m = arb_object(u, 2)?;
            let body = if u.arbitrary()? {
                to_vec_python(&m, false)
            } else {
                serde_json::to_vec(&m)
            }
            .expect("a Value serializes");
            let (len, outcome) = match u.int_in_range(0..=5u8)? {
                0 => (u.arbitrary::<u16>()?.into(), Outcome::Unknown),
                1 => (body.len().saturating_sub(1), Outcome::Unknown),
                _ => (body.len(), oracle(side, step, &m, body.len())),
            };
            (prefixed(len, &body), outcome)
        }
        3 => {
            let n = u.int_in_range(0..=64u8)?;
            (
                u.bytes(usize::from(n).min(u.len()))?.to_vec(),
                Outcome::Unknown,
            )
        }
        4 => {
            let reason = arb_string(u)?;
            let outcome = match side {
                Side::Client => Outcome::Fail(Failure::Rejected(reason.clone())),
                Side::Server => Outcome::Fail(Failure::Version),
            };
            (encode_rejection(&reason).to_vec(), outcome)
        }
        5 if u.arbitrary::<u8>()? != b'P' => valid(),
        _ => {
            // Pad a valid message with JSON whitespace to a length around the
            // cap, when a further byte says `P`: parsing 30 KiB costs as
            // much as a hundred short messages.
            let (msg, outcome) = valid();
            let body = &msg[2..];
            let lo = body.len().max(MAX_HANDSHAKE_LEN - 4);
            let len = u.int_in_range(lo..=lo.max(MAX_HANDSHAKE_LEN + 2))?;
            let mut padded = body.to_vec();
            padded.resize(len, b' ');
            let outcome = if len > MAX_HANDSHAKE_LEN {
                Outcome::Fail(Failure::TooLong(len))
            } else {
                outcome
            };
            (prefixed(len, &padded), outcome)
        }
    })
}

/// The oracle's verdict and the offset of the byte after which it must hold.
type Verdict = (usize, Outcome);

/// The peer's bytes in structured mode, with the oracle's verdict.
fn arb_peer_stream(u: &mut Unstructured<'_>, side: Side) -> Result<(Vec<u8>, Option<Verdict>)> {
    let peer = arb_local_hello(u)?;
    let steps = match side {
        Side::Client => 2,
        Side::Server => 1,
    };
    let mut wire = Vec::new();
    let mut verdict = None;
    let mut server_hello = None;
    for step in 0..steps {
        let (msg, outcome) = arb_message(u, side, step, &peer)?;
        if side == Side::Client && step == 0 && outcome == Outcome::Next {
            // Remember what the client will have learnt from this hello.
            let body = &msg[2..];
            let m: Map<String, Value> = serde_json::from_slice(body).unwrap_or_default();
            server_hello = Some(announced(&m));
        }
        wire.extend_from_slice(&msg);
        if verdict.is_none() {
            match outcome {
                Outcome::Next => {}
                Outcome::Unknown => verdict = Some(None),
                Outcome::Done(hello) => {
                    let hello = server_hello.clone().unwrap_or(hello);
                    verdict = Some(Some((wire.len(), Outcome::Done(hello))));
                }
                fail => verdict = Some(Some((wire.len(), fail))),
            }
        }
    }
    // Framed traffic after the handshake: pings, messages, junk.
    for _ in 0..u.int_in_range(0..=3u8)? {
        match u.int_in_range(0..=2u8)? {
            0 => Frame::new(MessageType::PING, u.arbitrary()?, bytes::Bytes::new())
                .encode(&mut wire)
                .expect("fits"),
            1 => Frame::new(MessageType(200), u.arbitrary()?, b"after".to_vec())
                .encode(&mut wire)
                .expect("fits"),
            _ => {
                let n = usize::from(u.int_in_range(0..=32u8)?).min(u.len());
                wire.extend_from_slice(u.bytes(n)?);
            }
        }
    }
    Ok((wire, verdict.flatten()))
}

fn run(t0: Instant, side: Side, data: &[u8]) {
    let (p, rest) = prefix::<4>(data);
    let structured = p[0] & 1 != 0;
    let (wire, verdict) = if structured {
        let mut u = Unstructured::new(rest);
        match arb_peer_stream(&mut u, side) {
            Ok(x) => x,
            Err(_) => return,
        }
    } else {
        (rest.to_vec(), None)
    };
    feed(t0, side, p, &wire, verdict.as_ref());
}

/// Everything one connection did, checked as it happens.
struct Watch {
    side: Side,
    hello: Vec<u8>,
    /// Our hello, then the ack (what a server sends once connected).
    hello_ack: Vec<u8>,
    sent: Vec<u8>,
    connected: Option<PeerHello>,
    closed: Option<CloseReason>,
}

impl Watch {
    fn pump(&mut self, conn: &mut Connection) {
        while let Some(b) = conn.poll_transmit() {
            self.sent.extend_from_slice(&b);
        }
        while let Some(e) = conn.poll_event() {
            assert!(self.closed.is_none(), "event after Closed: {e:?}");
            match e {
                Event::Connected(peer) => {
                    assert!(self.connected.is_none(), "Connected twice");
                    assert_eq!(conn.peer_hello(), Some(&peer));
                    self.connected = Some(peer);
                }
                Event::Closed { reason, .. } => {
                    if self.connected.is_none() {
                        assert!(
                            matches!(reason, CloseReason::Handshake(_)),
                            "a failed handshake must close with a typed handshake error: {reason:?}"
                        );
                    }
                    assert_eq!(conn.close_reason(), Some(&reason));
                    self.closed = Some(reason);
                }
                other => assert!(
                    self.connected.is_some(),
                    "{other:?} before the handshake finished"
                ),
            }
        }
        // What we sent: a prefix of our hello until connected; a server then
        // sends the ack right after it.
        let expected: &[u8] = if self.connected.is_some() && self.side == Side::Server {
            &self.hello_ack
        } else {
            &self.hello
        };
        if self.connected.is_some() && self.closed.is_none() {
            assert!(
                self.sent.starts_with(expected),
                "handshake bytes sent wrong"
            );
        } else if self.closed.is_some() && self.sent.len() >= expected.len() {
            // A close other than a local one drops what was still queued
            // (reported in `unsent_bytes`), so a connection closed at once
            // may have sent less; never anything else.
            assert!(
                self.sent.starts_with(expected),
                "handshake bytes sent wrong"
            );
        } else {
            assert!(
                expected.starts_with(&self.sent),
                "sent other than our hello"
            );
        }
    }
}

fn feed(t0: Instant, side: Side, p: [u8; 4], wire: &[u8], verdict: Option<&Verdict>) {
    let strict = p[0] & 2 != 0;
    let eof = p[0] & 4 != 0;
    let timer = (p[0] >> 3) & 3;
    let timeout = Duration::from_millis(40 * u64::from(p[1]));
    let mut config = ConnectionConfig {
        handshake_timeout: timeout,
        ..ConnectionConfig::default()
    };
    config.decoder.strict = strict;
    let hello = encode_hello(&config.hello).to_vec();
    let mut hello_ack = hello.clone();
    hello_ack.extend_from_slice(&encode_ack());
    // The caller's epoch: the core never reads a clock.
    let deadline = t0 + timeout;
    let mut conn = Connection::new(side, Arc::new(config), t0);
    let mut w = Watch {
        side,
        hello,
        hello_ack,
        sent: Vec::new(),
        connected: None,
        closed: None,
    };
    w.pump(&mut conn);

    let mut rng = XorShift::new(u64::from(u32::from_le_bytes(p)) ^ ((wire.len() as u64) << 32));
    let step_ms = |rng: &mut XorShift| -> u64 {
        let t = 40 * u64::from(p[1]);
        match p[3] & 3 {
            0 => 0,
            1 => rng.below(50),
            2 => rng.below(t / 2 + 1),
            _ => rng.below(2 * t + 2),
        }
    };
    let mut now = t0;
    let mut timer_saw_deadline = false;
    let mut at = 0;
    let cuts = cut_points(p[2], &mut rng, wire.len(), || marks(wire));
    for piece in pieces(&cuts, wire.len()) {
        let n = piece.len();
        now += Duration::from_millis(step_ms(&mut rng));
        if p[3] & 4 != 0 && rng.below(8) == 0 && now < deadline {
            now = deadline; // exactly on the deadline
        }
        let before = matches!(timer, 0) || (timer == 2 && rng.below(2) == 0);
        if before {
            conn.handle_timeout(now);
            timer_saw_deadline |= now >= deadline;
            w.pump(&mut conn);
        }
        let was_handshaking = conn.is_handshaking();
        conn.handle_input(now, &wire[at..at + n]);
        at += n;
        w.pump(&mut conn);
        if was_handshaking && now >= deadline {
            // Input at or after the deadline is refused whatever it says.
            assert!(
                matches!(
                    w.closed,
                    Some(CloseReason::Handshake(HandshakeError::TimedOut))
                ) && w.connected.is_none(),
                "late handshake input was accepted: {:?}",
                w.closed
            );
        } else if let Some((end, outcome)) = verdict {
            if was_handshaking && at >= *end && at - n < *end {
                check_verdict(&w, outcome);
            }
        }
        if !before && timer != 3 {
            conn.handle_timeout(now);
            timer_saw_deadline |= now >= deadline;
            w.pump(&mut conn);
        }
        if timer_saw_deadline {
            assert!(
                !conn.is_handshaking(),
                "still handshaking after the deadline"
            );
        }
        if conn.is_handshaking() {
            assert_eq!(conn.poll_timeout(), Some(deadline), "handshake deadline");
        }
    }
    if eof {
        conn.handle_eof(now);
        w.pump(&mut conn);
        assert!(conn.is_closed());
    }
    conn.handle_timeout(now.max(deadline));
    w.pump(&mut conn);
    assert!(
        !conn.is_handshaking(),
        "still handshaking after handle_timeout(deadline)"
    );
    assert_eq!(conn.is_closed(), w.closed.is_some());
    assert_eq!(
        conn.is_established(),
        w.connected.is_some() && w.closed.is_none()
    );
    if w.connected.is_none() {
        assert!(
            matches!(w.closed, Some(CloseReason::Handshake(_))),
            "the handshake neither finished nor failed: {:?}",
            w.closed
        );
    }
}

/// Where the handshake messages (a `u16` length, then the body) and the
/// frames after them begin, as far as the bytes tell.
fn marks(wire: &[u8]) -> Vec<usize> {
    let mut marks = Vec::new();
    let mut at = 0;
    for _ in 0..2 {
        let Some(len) = wire.get(at..at + 2) else {
            break;
        };
        marks.push(at);
        at += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
    }
    if let Some(rest) = wire.get(at..) {
        // The frames after the handshake: those in the first KiB will do.
        let rest = &rest[..rest.len().min(1024)];
        marks.extend(magics(rest).into_iter().map(|m| m + at));
    }
    marks
}

/// The oracle's verdict once the deciding bytes are in (the connection was
/// still handshaking before them).
fn check_verdict(w: &Watch, outcome: &Outcome) {
    match outcome {
        Outcome::Done(hello) => {
            assert_eq!(
                w.connected.as_ref(),
                Some(hello),
                "a valid handshake did not establish (closed: {:?})",
                w.closed
            );
        }
        Outcome::Fail(f) => match &w.closed {
            Some(CloseReason::Handshake(e)) if w.connected.is_none() => {
                assert!(f.matches(e), "expected {f:?}, the core said {e:?}");
            }
            other => panic!("expected failure {f:?}, got {other:?}"),
        },
        Outcome::Next | Outcome::Unknown => {}
    }
}
