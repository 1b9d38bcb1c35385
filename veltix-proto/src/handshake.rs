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

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::auth::{scram, AuthMethod, ClientAuth, Credentials, Identity, ServerAuth};
use crate::json::to_vec_python;

mod caps;
mod client;
mod server;
pub use caps::{Agreed, Capability, Negotiated, AUTH_CAP, RESERVED_PREFIX};

/// Largest handshake message body accepted (30 KiB).
pub const MAX_HANDSHAKE_LEN: usize = 30 * 1024;
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: &str = "1.0";
/// The protocol major this crate is compatible with.
pub const PROTOCOL_MAJOR: u32 = 1;
/// The reason a full server gives.
pub const SERVER_FULL: &str = "server_full";
/// The server's answer to a wrong password, token or user (one error for all).
pub const AUTHENTICATION_FAILED: &str = "authentication_failed";
/// The server's answer to a client that does not authenticate when it must.
pub const AUTHENTICATION_REQUIRED: &str = "authentication_required";
/// The server's answer to a second connection of an identity it refuses twice.
pub const IDENTITY_IN_USE: &str = "identity_in_use";

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
    /// Authentication is required and was not offered: the server requires
    /// it and we have no credentials it accepts (client side), or the
    /// client offered none (server side).
    #[error("authentication required")]
    AuthenticationRequired,
    /// Unknown user, wrong password or wrong token: one error for all.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// We require the server to authenticate itself (SCRAM) and it does not
    /// offer to.
    #[error("the server does not authenticate itself (SCRAM-SHA-256 required by this client)")]
    ServerNotAuthenticated,
    /// The server's SCRAM signature is wrong: it does not know our verifier.
    #[error("the server's SCRAM signature is wrong (not the server we have an account on?)")]
    ServerSignatureMismatch,
    /// The server asked for a PBKDF2 iteration count outside our range.
    #[error("the server asked for {0} PBKDF2 iterations, outside the accepted range")]
    IterationsOutOfRange(u32),
    /// An authentication message was malformed or out of order.
    #[error("authentication protocol error: {0}")]
    AuthProtocol(String),
    /// The server refused a second connection of this identity.
    #[error("this identity is already connected")]
    IdentityInUse,
    /// Authentication needs nonces and the generator was never seeded
    /// (`ServerAuth::seed` / `ClientAuth::seed`): refused rather than
    /// predictable.
    #[error("authentication unavailable: nonce generator not seeded")]
    NotSeeded,
}

impl HandshakeError {
    /// Whether trying again with the same settings cannot help
    /// (authentication and policy failures): a reconnecting client gives up.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            HandshakeError::AuthenticationRequired
                | HandshakeError::AuthenticationFailed
                | HandshakeError::ServerNotAuthenticated
                | HandshakeError::ServerSignatureMismatch
                | HandshakeError::IterationsOutOfRange(_)
                | HandshakeError::NotSeeded
        )
    }
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
    /// What the handshake negotiated: capabilities and the authenticated
    /// identity (empty with a plain peer).
    pub negotiated: Negotiated,
}

impl PeerHello {
    /// The authenticated identity: on a server, who the client proved to
    /// be; on a client, who we logged in as.
    pub fn identity(&self) -> Option<&Identity> {
        self.negotiated.identity.as_ref()
    }
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
        negotiated: Negotiated::default(),
    })
}

/// How Python's `str()` would render an `error` value, close enough for a reason string.
fn reason_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The client's authentication step while it waits for the ack.
#[derive(Debug, Clone)]
enum ClientStep {
    /// No authentication chosen.
    None,
    /// A token was sent in the hello.
    Bearer,
    /// SCRAM: our first message was sent, the server's is due.
    ScramFirst(scram::ClientFirst),
    /// SCRAM: our proof was sent; the ack must carry this signature.
    ScramFinal(Box<[u8; 32]>),
}

/// Client: what it keeps while waiting for the ack.
#[derive(Debug, Clone)]
struct ClientWait {
    peer: PeerHello,
    offer: Map<String, Value>,
    /// Our `caps` choice, without secrets.
    chosen: Map<String, Value>,
    step: ClientStep,
}

/// Server: what it keeps while the client computes its SCRAM proof.
#[derive(Debug, Clone)]
struct ServerWait {
    peer: PeerHello,
    agreed: BTreeMap<String, Agreed>,
    exchange: scram::ServerExchange,
    user: String,
}

#[derive(Debug, Clone)]
enum Stage {
    /// Client: waiting for the server's hello (or its rejection).
    AwaitServerHello,
    /// Client: sent our hello, waiting for the ack (or a SCRAM challenge).
    AwaitAck(Box<ClientWait>),
    /// Server: sent our hello, waiting for the client's.
    AwaitClientHello,
    /// Server: sent the SCRAM challenge, waiting for the proof.
    AwaitClientFinal(Box<ServerWait>),
    /// Server: authenticated; the ack waits for the owner's decision.
    AwaitAdmission(Box<(PeerHello, Bytes)>),
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
        /// What the peer announced, and what was negotiated.
        peer: PeerHello,
    },
    /// Server, when built to hold authenticated peers: the peer proved
    /// `identity`; call [`Handshake::admit`] or [`Handshake::refuse`].
    /// `consumed` bytes of the input belonged to the handshake.
    Held {
        /// Bytes of this input used by the handshake.
        consumed: usize,
        /// Who the peer proved to be.
        identity: Identity,
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
    /// Capabilities wanted (client) or offered (server).
    caps: Vec<Capability>,
    client_auth: Option<ClientAuth>,
    server_auth: Option<ServerAuth>,
    /// Server: stop before the ack of an authenticated peer.
    hold: bool,
}

/// A JSON object body with its prefix.
fn encode_object(m: &Map<String, Value>) -> Bytes {
    with_prefix(to_vec_python(m, false).unwrap_or_default())
}

/// A hello whose `meta` carries `caps` (when any), and, for a server that
/// requires authentication, an `error` Python clients print (veltix-rs
/// clients read the offer instead).
fn encode_hello_with(local: &LocalHello, caps: Map<String, Value>, error: Option<&str>) -> Bytes {
    if caps.is_empty() && error.is_none() {
        return encode_hello(local);
    }
    let mut meta = local.meta.clone();
    if !caps.is_empty() {
        meta.insert("caps".into(), Value::Object(caps));
    }
    let mut m = Map::new();
    m.insert("v".into(), Value::String(local.version.clone()));
    m.insert("pv".into(), Value::String(PROTOCOL_VERSION.into()));
    m.insert("meta".into(), Value::Object(meta));
    if let Some(e) = error {
        m.insert("error".into(), Value::String(e.into()));
    }
    encode_object(&m)
}

/// What a server that requires authentication tells a client that does not
/// offer it (Python veltix prints it as the rejection reason).
pub const AUTH_REQUIRED_TEXT: &str =
    "authentication required: this server accepts only veltix-rs clients with credentials (SCRAM-SHA-256 or BEARER)";

fn wire_error(e: &HandshakeError) -> &'static str {
    match e {
        HandshakeError::AuthenticationRequired => AUTHENTICATION_REQUIRED,
        HandshakeError::IdentityInUse => IDENTITY_IN_USE,
        HandshakeError::NotSeeded => "authentication_unavailable",
        _ => AUTHENTICATION_FAILED,
    }
}

impl Handshake {
    /// A plain client handshake. Returns the bytes to send first (none: the
    /// server speaks first).
    pub fn client(local: LocalHello) -> (Self, Bytes) {
        Self::client_with(local, Vec::new(), None)
    }

    /// A client handshake that wants `caps` and authenticates with `auth`.
    pub fn client_with(
        local: LocalHello,
        caps: Vec<Capability>,
        auth: Option<ClientAuth>,
    ) -> (Self, Bytes) {
        let hs = Handshake {
            stage: Stage::AwaitServerHello,
            partial: Vec::new(),
            local: Some(local),
            caps,
            client_auth: auth,
            server_auth: None,
            hold: false,
        };
        (hs, Bytes::new())
    }

    /// A plain server handshake. Returns the server hello to send at once.
    pub fn server(local: &LocalHello) -> (Self, Bytes) {
        Self::server_with(local, Vec::new(), None, false)
    }

    /// A server handshake offering `caps` and `auth`. With `hold`, an
    /// authenticated peer is not acknowledged until [`admit`](Self::admit)
    /// (the [`Hub`](crate::Hub) uses it to refuse a second connection of
    /// one identity). Returns the server hello to send at once.
    pub fn server_with(
        local: &LocalHello,
        caps: Vec<Capability>,
        auth: Option<ServerAuth>,
        hold: bool,
    ) -> (Self, Bytes) {
        let auth_offer = auth.as_ref().map(|a| {
            let mut o = Map::new();
            o.insert("min".into(), 1.into());
            o.insert("max".into(), 1.into());
            o.insert(
                "mechs".into(),
                a.offered()
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .into(),
            );
            o.insert("required".into(), a.is_required().into());
            o
        });
        let required = auth.as_ref().is_some_and(ServerAuth::is_required);
        let hello = encode_hello_with(
            local,
            caps::offer(&caps, auth_offer),
            required.then_some(AUTH_REQUIRED_TEXT),
        );
        let hs = Handshake {
            stage: Stage::AwaitClientHello,
            partial: Vec::new(),
            local: None,
            caps,
            client_auth: None,
            server_auth: auth,
            hold,
        };
        (hs, hello)
    }

    /// Whether the handshake has finished, successfully or not.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Server: acknowledges a [`Held`](Progress::Held) peer. Returns the ack
    /// to send and the peer's hello; `None` when nothing is held.
    pub fn admit(&mut self) -> Option<(Bytes, PeerHello)> {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::AwaitAdmission(b) => {
                let (peer, ack) = *b;
                Some((ack, peer))
            }
            other => {
                self.stage = other;
                None
            }
        }
    }

    /// Server: refuses a [`Held`](Progress::Held) peer. Returns the
    /// rejection to send before closing (`identity_in_use` for
    /// [`HandshakeError::IdentityInUse`]).
    pub fn refuse(&mut self, why: &HandshakeError) -> Bytes {
        self.stage = Stage::Done;
        encode_rejection(wire_error(why))
    }

    /// Feeds received bytes; `send` is called with bytes to transmit.
    ///
    /// # Errors
    /// A [`HandshakeError`] when the peer's message is unacceptable; the
    /// connection must then close (after sending what `send` was given: a
    /// server refusing credentials says why).
    pub fn handle_input(
        &mut self,
        mut input: &[u8],
        send: &mut dyn FnMut(Bytes),
    ) -> Result<Progress, HandshakeError> {
        let total_len = input.len();
        while !input.is_empty() && !matches!(self.stage, Stage::Done | Stage::AwaitAdmission(_)) {
            let Some(body_len) = self.fill(&mut input)? else {
                return Ok(Progress::NeedMore);
            };
            let body = std::mem::take(&mut self.partial);
            let body = &body[2..2 + body_len];
            let consumed = total_len - input.len();
            let step = match std::mem::replace(&mut self.stage, Stage::Done) {
                Stage::AwaitServerHello => self.on_server_hello(body, send),
                Stage::AwaitAck(wait) => self.on_ack(*wait, body, send),
                Stage::AwaitClientHello => self.on_client_hello(body, send),
                Stage::AwaitClientFinal(wait) => self.on_client_final(*wait, body, send),
                // The loop condition keeps these out.
                s @ (Stage::AwaitAdmission(_) | Stage::Done) => {
                    self.stage = s;
                    Ok(None)
                }
            };
            match step {
                Ok(None) => {}
                Ok(Some(done)) => return Ok(self.finished(done, consumed, send)),
                Err(e) => {
                    self.stage = Stage::Done;
                    return Err(e);
                }
            }
        }
        Ok(Progress::NeedMore)
    }

    /// Turns a successful last step into progress (holding if asked).
    fn finished(&mut self, done: Done, consumed: usize, send: &mut dyn FnMut(Bytes)) -> Progress {
        let Done { peer, ack } = done;
        if let (Some(ack), true) = (&ack, self.hold) {
            if let Some(identity) = peer.negotiated.identity.clone() {
                self.stage = Stage::AwaitAdmission(Box::new((peer, ack.clone())));
                return Progress::Held { consumed, identity };
            }
        }
        if let Some(ack) = ack {
            send(ack);
        }
        Progress::Established { consumed, peer }
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

/// A finished handshake: the peer, and (server) the ack to send.
struct Done {
    peer: PeerHello,
    ack: Option<Bytes>,
}

fn auth_choice(method: AuthMethod) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("v".into(), 1.into());
    c.insert("mech".into(), Value::String(method.as_str().into()));
    c
}

#[cfg(test)]
mod tests;
