//! The pre-framing handshake (spec §3).
//!
//! Three messages, each a big-endian `u16` length and a UTF-8 JSON object:
//! `server_hello` (S→C), `client_hello` (C→S), `ack` (S→C). A full server
//! sends `{"error": "server_full"}` instead of its hello and closes.
//!
//! [`Handshake`] is the state machine for either side. It reads exactly the
//! bytes of each message, never more: what follows the last message is
//! returned to the caller (the connection hands it to the frame decoder).
//! Deadlines are not kept here but by the [`Connection`](crate::Connection),
//! which enforces one deadline for the **whole** handshake (Veltix's per-read
//! timeout lets a peer that trickles one byte at a time stay forever).

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::json::to_vec_python;

/// Largest handshake message body accepted (30 KiB).
pub const MAX_HANDSHAKE_LEN: usize = 30 * 1024;
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: &str = "1.0";
/// The protocol major this crate is compatible with.
pub const PROTOCOL_MAJOR: u32 = 1;
/// The reason a full server gives.
pub const SERVER_FULL: &str = "server_full";

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A message announced more than [`MAX_HANDSHAKE_LEN`] bytes.
    #[error("handshake message of {0} bytes exceeds the {MAX_HANDSHAKE_LEN}-byte cap")]
    TooLong(usize),
    /// A message of length 0.
    #[error("empty handshake message")]
    Empty,
    /// The body was not UTF-8 JSON.
    #[error("handshake message is not valid JSON: {0}")]
    InvalidJson(String),
    /// The body was JSON but not an object.
    #[error("handshake message is not a JSON object")]
    NotAnObject,
    /// The body was `{}`.
    #[error("handshake message is an empty JSON object")]
    EmptyObject,
    /// The hello had no `pv`, or an empty one.
    #[error("peer sent no protocol version")]
    MissingProtocolVersion,
    /// `pv` was not a `"MAJOR.MINOR"` string.
    #[error("malformed protocol version {0}")]
    MalformedProtocolVersion(String),
    /// `pv` had another major than ours.
    #[error("incompatible protocol version {0:?} (this side speaks {PROTOCOL_MAJOR}.x)")]
    IncompatibleProtocolVersion(String),
    /// The server refused us (its first message carried `error`).
    #[error("server rejected the connection: {0}")]
    Rejected(String),
    /// The server's third message was not `{"result": "ok"}`.
    #[error("server did not acknowledge the handshake: {0}")]
    NotAcknowledged(String),
    /// The handshake deadline passed.
    #[error("handshake timed out")]
    TimedOut,
    /// The transport closed before the handshake finished.
    #[error("connection closed during the handshake")]
    PeerClosed,
}

/// Which end of the TCP connection a state machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Side {
    /// Dialled out; speaks second in the handshake.
    Client,
    /// Accepted; speaks first.
    Server,
}

/// What we announce in our hello.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalHello {
    /// Informational version string (`"v"`). Python peers only log it.
    pub version: String,
    /// Free-form `"meta"` object.
    pub meta: Map<String, Value>,
}

impl Default for LocalHello {
    fn default() -> Self {
        LocalHello {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            meta: Map::new(),
        }
    }
}

/// What the peer announced in its hello.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PeerHello {
    /// Its `"v"`, when it sent a string.
    pub version: Option<String>,
    /// Its `"pv"`.
    pub protocol_version: String,
    /// Its `"meta"` object (empty when absent or not an object).
    pub meta: Map<String, Value>,
}

#[derive(Serialize)]
struct HelloOut<'a> {
    v: &'a str,
    pv: &'a str,
    meta: &'a Map<String, Value>,
}

/// Frames one handshake body with its `u16` length prefix.
fn with_prefix(body: Vec<u8>) -> Bytes {
    // Our own messages are tiny, but a huge `meta` must not wrap the prefix.
    let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body[..usize::from(len)]);
    Bytes::from(out)
}

/// Encodes a hello (`{"v": …, "pv": "1.0", "meta": {…}}`), byte-identical to Veltix.
pub fn encode_hello(local: &LocalHello) -> Bytes {
    let body = to_vec_python(
        &HelloOut {
            v: &local.version,
            pv: PROTOCOL_VERSION,
            meta: &local.meta,
        },
        false,
    )
    .unwrap_or_default();
    with_prefix(body)
}

/// `{"result": "ok"}` with its prefix.
pub fn encode_ack() -> Bytes {
    Bytes::from_static(b"\x00\x10{\"result\": \"ok\"}")
}

/// `{"error": reason}` with its prefix: what a server sends instead of its
/// hello to refuse a connection.
pub fn encode_rejection(reason: &str) -> Bytes {
    let mut m = Map::new();
    m.insert("error".into(), Value::String(reason.into()));
    with_prefix(to_vec_python(&m, false).unwrap_or_default())
}

/// Checks a `pv` value: a `"MAJOR.MINOR"` string of digits whose major is ours.
pub fn check_protocol_version(pv: Option<&Value>) -> Result<String, HandshakeError> {
    let s = match pv {
        None | Some(Value::Null) => return Err(HandshakeError::MissingProtocolVersion),
        Some(Value::String(s)) if s.is_empty() => {
            return Err(HandshakeError::MissingProtocolVersion)
        }
        Some(Value::String(s)) => s,
        Some(other) => return Err(HandshakeError::MalformedProtocolVersion(other.to_string())),
    };
    let malformed = || HandshakeError::MalformedProtocolVersion(format!("{s:?}"));
    let (major, minor) = s.split_once('.').ok_or_else(malformed)?;
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return Err(malformed());
    }
    let major = major.trim_start_matches('0');
    if major != PROTOCOL_MAJOR.to_string() {
        return Err(HandshakeError::IncompatibleProtocolVersion(s.clone()));
    }
    Ok(s.clone())
}

/// Parses one handshake body into a non-empty JSON object.
pub fn parse_body(body: &[u8]) -> Result<Map<String, Value>, HandshakeError> {
    if body.is_empty() {
        return Err(HandshakeError::Empty);
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| HandshakeError::InvalidJson(e.to_string()))?;
    match v {
        Value::Object(m) if m.is_empty() => Err(HandshakeError::EmptyObject),
        Value::Object(m) => Ok(m),
        _ => Err(HandshakeError::NotAnObject),
    }
}

fn peer_hello(m: &Map<String, Value>) -> Result<PeerHello, HandshakeError> {
    let protocol_version = check_protocol_version(m.get("pv"))?;
    Ok(PeerHello {
        version: m.get("v").and_then(Value::as_str).map(str::to_owned),
        protocol_version,
        meta: match m.get("meta") {
            Some(Value::Object(meta)) => meta.clone(),
            _ => Map::new(),
        },
    })
}

/// How Python's `str()` would render an `error` value, close enough for a reason string.
fn reason_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Stage {
    /// Client: waiting for the server's hello (or its rejection).
    AwaitServerHello,
    /// Client: sent our hello, waiting for the ack.
    AwaitAck(PeerHello),
    /// Server: sent our hello, waiting for the client's.
    AwaitClientHello,
    /// Finished (either way).
    Done,
}

/// What [`Handshake::handle_input`] achieved.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Progress {
    /// More bytes are needed; all the input was consumed.
    NeedMore,
    /// The handshake succeeded. `consumed` bytes of the input belonged to it;
    /// the rest is framed traffic.
    Established {
        /// Bytes of this input used by the handshake.
        consumed: usize,
        /// What the peer announced.
        peer: PeerHello,
    },
}

/// The handshake state machine for one side.
///
/// ```
/// use veltix_proto::handshake::{Handshake, LocalHello, Progress};
///
/// let (mut server, hello) = Handshake::server(&LocalHello::default());
/// let (mut client, nothing) = Handshake::client(LocalHello::default());
/// assert!(nothing.is_empty());
///
/// let mut to_server = Vec::new();
/// assert_eq!(client.handle_input(&hello, &mut |b| to_server.push(b)).unwrap(), Progress::NeedMore);
/// let mut to_client = Vec::new();
/// let done = server.handle_input(&to_server.concat(), &mut |b| to_client.push(b)).unwrap();
/// assert!(matches!(done, Progress::Established { .. }));
/// let done = client.handle_input(&to_client.concat(), &mut |_| {}).unwrap();
/// assert!(matches!(done, Progress::Established { .. }));
/// ```
#[derive(Debug, Clone)]
pub struct Handshake {
    stage: Stage,
    /// Bytes of the message being read (prefix included).
    partial: Vec<u8>,
    /// Client: our hello, sent once the server's is accepted.
    local: Option<LocalHello>,
}

impl Handshake {
    /// A client handshake. Returns the bytes to send first (none: the server speaks first).
    pub fn client(local: LocalHello) -> (Self, Bytes) {
        let hs = Handshake {
            stage: Stage::AwaitServerHello,
            partial: Vec::new(),
            local: Some(local),
        };
        (hs, Bytes::new())
    }

    /// A server handshake. Returns the server hello to send at once.
    pub fn server(local: &LocalHello) -> (Self, Bytes) {
        let hs = Handshake {
            stage: Stage::AwaitClientHello,
            partial: Vec::new(),
            local: None,
        };
        (hs, encode_hello(local))
    }

    /// Whether the handshake has finished, successfully or not.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// Feeds received bytes; `send` is called with bytes to transmit.
    ///
    /// # Errors
    /// A [`HandshakeError`] when the peer's message is unacceptable; the
    /// connection must then close (a server sends nothing more).
    pub fn handle_input(
        &mut self,
        mut input: &[u8],
        send: &mut dyn FnMut(Bytes),
    ) -> Result<Progress, HandshakeError> {
        let total_len = input.len();
        while !input.is_empty() && self.stage != Stage::Done {
            let Some(body_len) = self.fill(&mut input)? else {
                return Ok(Progress::NeedMore);
            };
            let body = std::mem::take(&mut self.partial);
            let body = &body[2..2 + body_len];
            match std::mem::replace(&mut self.stage, Stage::Done) {
                Stage::AwaitServerHello => {
                    let m = parse_body(body)?;
                    if let Some(reason) = m.get("error") {
                        return Err(HandshakeError::Rejected(reason_text(reason)));
                    }
                    let peer = peer_hello(&m)?;
                    send(encode_hello(&self.local.take().unwrap_or_default()));
                    self.stage = Stage::AwaitAck(peer);
                }
                Stage::AwaitAck(peer) => {
                    let m = parse_body(body).map_err(|e| match e {
                        HandshakeError::EmptyObject => HandshakeError::NotAcknowledged("{}".into()),
                        e => e,
                    })?;
                    if m.get("result").and_then(Value::as_str) != Some("ok") {
                        let text = String::from_utf8_lossy(body).into_owned();
                        return Err(match m.get("error") {
                            Some(reason) => HandshakeError::Rejected(reason_text(reason)),
                            None => HandshakeError::NotAcknowledged(text),
                        });
                    }
                    return Ok(Progress::Established {
                        consumed: total_len - input.len(),
                        peer,
                    });
                }
                Stage::AwaitClientHello => {
                    let peer = peer_hello(&parse_body(body)?)?;
                    send(encode_ack());
                    return Ok(Progress::Established {
                        consumed: total_len - input.len(),
                        peer,
                    });
                }
                // The loop condition keeps `Done` out.
                Stage::Done => {}
            }
        }
        Ok(Progress::NeedMore)
    }

    /// Moves bytes of the current message from `input` into `partial`.
    /// Returns the body length once the whole message is buffered.
    fn fill(&mut self, input: &mut &[u8]) -> Result<Option<usize>, HandshakeError> {
        if self.partial.len() < 2 {
            let take = (2 - self.partial.len()).min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            *input = &input[take..];
            if self.partial.len() < 2 {
                return Ok(None);
            }
            let len = usize::from(u16::from_be_bytes([self.partial[0], self.partial[1]]));
            if len > MAX_HANDSHAKE_LEN {
                self.stage = Stage::Done;
                return Err(HandshakeError::TooLong(len));
            }
            if len == 0 {
                self.stage = Stage::Done;
                return Err(HandshakeError::Empty);
            }
            self.partial.reserve_exact(len);
        }
        let len = usize::from(u16::from_be_bytes([self.partial[0], self.partial[1]]));
        let take = (2 + len - self.partial.len()).min(input.len());
        self.partial.extend_from_slice(&input[..take]);
        *input = &input[take..];
        Ok((self.partial.len() == 2 + len).then_some(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn py_hello() -> LocalHello {
        LocalHello {
            version: "3.3.0".into(),
            meta: Map::new(),
        }
    }

    #[test]
    fn byte_exact_messages() {
        assert_eq!(
            &encode_hello(&py_hello())[..],
            b"\x00\x27{\"v\": \"3.3.0\", \"pv\": \"1.0\", \"meta\": {}}"
        );
        assert_eq!(&encode_ack()[..], b"\x00\x10{\"result\": \"ok\"}");
        assert_eq!(
            &encode_rejection(SERVER_FULL)[..],
            b"\x00\x18{\"error\": \"server_full\"}"
        );
    }

    #[test]
    fn protocol_version_rule() {
        for ok in ["1.0", "1.7", "01.0", "1.99"] {
            assert!(check_protocol_version(Some(&json!(ok))).is_ok(), "{ok}");
        }
        for bad in ["2.0", "0.9", "1.0.0", "1", "1.x", "", " 1.0", ".0", "1."] {
            assert!(check_protocol_version(Some(&json!(bad))).is_err(), "{bad}");
        }
        assert!(check_protocol_version(Some(&json!(1))).is_err());
        assert!(check_protocol_version(None).is_err());
    }

    #[test]
    fn client_sees_rejection_with_any_value() {
        let (mut c, _) = Handshake::client(py_hello());
        let err = c
            .handle_input(&encode_rejection("maintenance"), &mut |_| {})
            .unwrap_err();
        assert_eq!(err, HandshakeError::Rejected("maintenance".into()));
        let (mut c, _) = Handshake::client(py_hello());
        let msg = with_prefix(br#"{"error": 5, "v": "x", "pv": "1.0"}"#.to_vec());
        assert_eq!(
            c.handle_input(&msg, &mut |_| {}).unwrap_err(),
            HandshakeError::Rejected("5".into())
        );
    }

    #[test]
    fn ack_variants() {
        let run = |ack: &[u8]| {
            let (mut c, _) = Handshake::client(py_hello());
            let mut sent = Vec::new();
            c.handle_input(&encode_hello(&py_hello()), &mut |b| sent.push(b))
                .unwrap();
            assert_eq!(sent, vec![encode_hello(&py_hello())]);
            c.handle_input(&with_prefix(ack.to_vec()), &mut |_| {})
        };
        assert!(matches!(
            run(br#"{"result": "ok", "extra": 1}"#),
            Ok(Progress::Established { .. })
        ));
        assert!(matches!(
            run(br#"{"result": "no"}"#),
            Err(HandshakeError::NotAcknowledged(_))
        ));
        assert!(matches!(
            run(br#"{"error": "bye"}"#),
            Err(HandshakeError::Rejected(_))
        ));
    }

    #[test]
    fn leftover_after_ack_is_not_consumed() {
        let (mut c, _) = Handshake::client(py_hello());
        let mut wire = encode_hello(&py_hello()).to_vec();
        wire.extend_from_slice(&encode_ack());
        wire.extend_from_slice(b"VXrest");
        match c.handle_input(&wire, &mut |_| {}).unwrap() {
            Progress::Established { consumed, peer } => {
                assert_eq!(&wire[consumed..], b"VXrest");
                assert_eq!(peer.version.as_deref(), Some("3.3.0"));
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn oversize_fails_from_prefix_alone() {
        let (mut s, _) = Handshake::server(&py_hello());
        assert_eq!(
            s.handle_input(&[0x78, 0x01], &mut |_| {}).unwrap_err(),
            HandshakeError::TooLong(30721)
        );
    }

    #[test]
    fn one_byte_at_a_time() {
        let (mut s, _) = Handshake::server(&py_hello());
        let hello = encode_hello(&py_hello());
        let mut acks = Vec::new();
        for (i, b) in hello.iter().enumerate() {
            let p = s.handle_input(&[*b], &mut |x| acks.push(x)).unwrap();
            if i + 1 < hello.len() {
                assert_eq!(p, Progress::NeedMore);
            } else {
                assert!(matches!(p, Progress::Established { consumed: 1, .. }));
            }
        }
        assert_eq!(acks, vec![encode_ack()]);
    }
}
