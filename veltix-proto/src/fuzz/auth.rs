//! `handshake_auth`: the authenticating handshakes (SCRAM-SHA-256, bearer
//! tokens, capabilities) against an honest peer whose messages the input
//! delivers, corrupts, replaces or withholds.

use std::sync::OnceLock;
use std::time::Instant;

use arbitrary::{Result, Unstructured};
use bytes::Bytes;
use serde_json::{Map, Value};

use super::prefix;
use crate::auth::{AuthMethod, ClientAuth, MemoryStore, ScramCredential, ServerAuth};
use crate::handshake::{Capability, Handshake, HandshakeError, LocalHello, Progress};
use crate::json::to_vec_python;

/// PBKDF2 rounds of the fuzzing credentials: few, so that executions stay fast
/// (set through the public config, as any user could).
const ROUNDS: u32 = 8;

fn verifier(password: &str) -> ScramCredential {
    ScramCredential::derive(password, b"fuzz-salt-123456", ROUNDS)
}

/// The server's store: `alice` (password `pencil`, or another one when the
/// honest peers disagree) and the token `tok_good` for `bot`.
fn store(agree: bool) -> MemoryStore {
    static GOOD: OnceLock<ScramCredential> = OnceLock::new();
    static BAD: OnceLock<ScramCredential> = OnceLock::new();
    let s = MemoryStore::new();
    let cred = if agree {
        GOOD.get_or_init(|| verifier("pencil"))
    } else {
        BAD.get_or_init(|| verifier("not-pencil"))
    };
    s.insert_user("alice", cred.clone());
    s.insert_token("bot", "tok_good");
    s
}

/// An authenticating handshake under attack. The side under test is an
/// authenticating server (bit 0 of `p[0]` clear) or client (set); its
/// counterpart is an honest state machine whose credentials agree with ours
/// (bit 1) or not, using SCRAM (bit 2 clear) or a token; bit 3: the server
/// requires authentication; bit 4: the client requires the server to prove
/// itself; bit 5: the server holds authenticated peers. The rest, read as
/// [`Unstructured`], decides for each message of the honest peer whether it
/// is delivered as is, with one byte changed, replaced by an arbitrary
/// JSON object (`auth`, `result`, `error`, `caps`, `identity` ... with
/// SCRAM-like strings, iteration counts of any size), replaced by raw
/// bytes, or withheld.
///
/// Asserts: no panic; when the two sides' credentials disagree the server
/// never authenticates anyone and the client never believes the server
/// proved itself; a server that requires authentication never establishes
/// an anonymous peer; a client that requires the server's proof never
/// establishes without it; identities are only `alice` (SCRAM) or `bot`
/// (token); the client never computes PBKDF2 beyond its range (checked by
/// the range being tiny: a huge count would stall the fuzzer).
pub fn handshake_auth(_t0: Instant, data: &[u8]) {
    let (p, rest) = prefix::<1>(data);
    let flags = p[0];
    let _ = run(flags, &mut Unstructured::new(rest));
}

fn run(flags: u8, u: &mut Unstructured<'_>) -> Result<()> {
    let test_client = flags & 1 != 0;
    let agree = flags & 2 != 0;
    let bearer = flags & 4 != 0;
    let required = flags & 8 != 0;
    let require_server = flags & 16 != 0;
    let hold = flags & 32 != 0;

    let server_auth = ServerAuth::new(store(agree)).required(required);
    server_auth.seed([7; 32]);
    let client_auth = if bearer {
        ClientAuth::bearer(if agree { "tok_good" } else { "tok_bad" })
    } else {
        ClientAuth::scram("alice", "pencil")
    }
    .require_server_auth(require_server)
    .iterations(1..=64);
    client_auth.seed([8; 32]);
    let caps = vec![Capability::new("fuzz.cap", 1..=3)];
    let (mut server, hello) = Handshake::server_with(
        &LocalHello::default(),
        caps.clone(),
        Some(server_auth),
        hold,
    );
    let (mut client, _) = Handshake::client_with(LocalHello::default(), caps, Some(client_auth));

    // Messages in flight to each side.
    let mut to_client = vec![hello];
    let mut to_server: Vec<Bytes> = Vec::new();
    let mut c_state: Option<std::result::Result<Progress, HandshakeError>> = None;
    let mut s_state: Option<std::result::Result<Progress, HandshakeError>> = None;
    for _ in 0..8 {
        // Deliver to the side under test through the attacker, to the
        // honest side as is.
        let (to_test, to_honest) = if test_client {
            (&mut to_client, &mut to_server)
        } else {
            (&mut to_server, &mut to_client)
        };
        let mut delivered_test = Vec::new();
        for m in to_test.drain(..) {
            if let Some(b) = tamper(u, m)? {
                delivered_test.push(b);
            }
        }
        let honest_in: Vec<Bytes> = std::mem::take(to_honest);
        let (test_in, honest_in) = (delivered_test, honest_in);
        let (c_in, s_in) = if test_client {
            (test_in, honest_in)
        } else {
            (honest_in, test_in)
        };
        for b in c_in {
            if matches!(c_state, None | Some(Ok(Progress::NeedMore))) {
                c_state = Some(client.handle_input(&b, &mut |x| to_server.push(x)));
            }
        }
        for b in s_in {
            if matches!(s_state, None | Some(Ok(Progress::NeedMore))) {
                s_state = Some(server.handle_input(&b, &mut |x| to_client.push(x)));
            }
        }
        if let Some(Ok(Progress::Held { identity, .. })) = &s_state {
            check_identity(&identity.name, identity.method, agree);
            if u.arbitrary::<bool>()? {
                if let Some((ack, _)) = server.admit() {
                    to_client.push(ack);
                    s_state = Some(Ok(Progress::NeedMore));
                }
            } else {
                to_client.push(server.refuse(&HandshakeError::IdentityInUse));
                s_state = Some(Err(HandshakeError::IdentityInUse));
            }
        }
        if to_client.is_empty() && to_server.is_empty() {
            break;
        }
    }
    if let Some(Ok(Progress::Established { peer, .. })) = &s_state {
        match peer.identity() {
            Some(id) => check_identity(&id.name, id.method, agree),
            None => assert!(
                !required,
                "a server requiring auth admitted an anonymous peer"
            ),
        }
    }
    if let Some(Ok(Progress::Established { peer, .. })) = &c_state {
        let n = &peer.negotiated;
        if require_server {
            assert!(n.server_verified, "established without the server's proof");
        }
        if n.server_verified {
            assert!(agree, "the server 'proved' a verifier it does not have");
        }
        if let Some(v) = n.version("fuzz.cap") {
            assert!((1..=3).contains(&v));
        }
    }
    Ok(())
}

fn check_identity(name: &str, method: AuthMethod, agree: bool) {
    assert!(
        agree,
        "authenticated {name} with credentials that do not match"
    );
    match method {
        AuthMethod::ScramSha256 => assert_eq!(name, "alice"),
        AuthMethod::Bearer => assert_eq!(name, "bot"),
        m => panic!("unexpected method {m:?}"),
    }
}

/// What the attacker does with one honest message.
fn tamper(u: &mut Unstructured<'_>, m: Bytes) -> Result<Option<Bytes>> {
    Ok(match u.int_in_range(0..=7u8)? {
        0..=2 => Some(m),
        3 => {
            let mut v = m.to_vec();
            if !v.is_empty() {
                let i = u.choose_index(v.len())?;
                v[i] ^= u.int_in_range(1..=255u8)?;
            }
            Some(Bytes::from(v))
        }
        4 | 5 => Some(json_message(u)?),
        6 => {
            let n = u.int_in_range(0..=64usize)?;
            Some(Bytes::copy_from_slice(u.bytes(n.min(u.len()))?))
        }
        _ => None,
    })
}

/// An arbitrary handshake-shaped JSON object behind its length prefix.
fn json_message(u: &mut Unstructured<'_>) -> Result<Bytes> {
    let mut m = Map::new();
    for _ in 0..u.int_in_range(0..=5u8)? {
        let key = *u.choose(&[
            "auth", "result", "error", "caps", "identity", "meta", "pv", "v",
        ])?;
        let value = match u.int_in_range(0..=5u8)? {
            0 => Value::String("ok".into()),
            1 => Value::String(scram_like(u)?),
            2 => Value::String(String::arbitrary_take(u)?),
            3 => {
                serde_json::json!({"rs.auth": {"v": 1, "min": 1, "max": 1, "mechs": ["SCRAM-SHA-256", "BEARER"], "required": u.arbitrary::<bool>()?}, "fuzz.cap": {"v": u.int_in_range(0..=4u32)?, "min": 1, "max": 3}})
            }
            4 => Value::String("1.0".into()),
            _ => Value::from(u.arbitrary::<u64>()?),
        };
        m.insert(key.into(), value);
    }
    let body = to_vec_python(&m, false).unwrap_or_default();
    let mut out = u16::try_from(body.len())
        .unwrap_or(u16::MAX)
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&body);
    Ok(Bytes::from(out))
}

/// A SCRAM-looking attribute list: nonces, salts, iteration counts of any
/// size, signatures and proofs (valid base64 or not).
fn scram_like(u: &mut Unstructured<'_>) -> Result<String> {
    let mut parts = Vec::new();
    for _ in 0..u.int_in_range(1..=4u8)? {
        let attr = *u.choose(&["r", "s", "i", "v", "p", "c", "m", "e", "n"])?;
        let value = match u.int_in_range(0..=3u8)? {
            0 => u.arbitrary::<u32>()?.to_string(),
            1 => "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
            2 => "biws".to_string(),
            _ => String::arbitrary_take(u)?,
        };
        parts.push(format!("{attr}={value}"));
    }
    Ok(parts.join(","))
}

trait TakeString {
    fn arbitrary_take(u: &mut Unstructured<'_>) -> Result<String>;
}

impl TakeString for String {
    fn arbitrary_take(u: &mut Unstructured<'_>) -> Result<String> {
        let n = u.int_in_range(0..=24usize)?;
        let b = u.bytes(n.min(u.len()))?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }
}
