//! Tests of the handshake state machine.
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

// ------------------------------------------------------------ capabilities and authentication

use crate::auth::{AuthMethod, ClientAuth, MemoryStore, ScramCredential, ServerAuth};

/// Runs both state machines against each other until both stop. Returns
/// each side's outcome and every message the server sent.
fn run(
    client: &mut Handshake,
    server: &mut Handshake,
    hello: Bytes,
) -> (
    Result<Progress, HandshakeError>,
    Result<Progress, HandshakeError>,
    Vec<Bytes>,
) {
    let mut to_client = vec![hello.clone()];
    let mut server_sent = vec![hello];
    let mut c_out = Ok(Progress::NeedMore);
    let mut s_out = Ok(Progress::NeedMore);
    for _ in 0..10 {
        let mut to_server = Vec::new();
        for b in to_client.drain(..) {
            if matches!(c_out, Ok(Progress::NeedMore)) {
                c_out = client.handle_input(&b, &mut |x| to_server.push(x));
            }
        }
        for b in to_server {
            if matches!(s_out, Ok(Progress::NeedMore)) {
                s_out = server.handle_input(&b, &mut |x| {
                    server_sent.push(x.clone());
                    to_client.push(x);
                });
            }
        }
        if to_client.is_empty() {
            break;
        }
    }
    (c_out, s_out, server_sent)
}

fn store() -> MemoryStore {
    let s = MemoryStore::new();
    s.insert_user(
        "alice",
        ScramCredential::derive("pencil", b"salt-of-alice-16", 4096),
    );
    s.insert_token("deploy-bot", "tok_good");
    s
}

fn server_auth(required: bool) -> ServerAuth {
    let a = ServerAuth::new(store()).required(required);
    a.seed([9; 32]);
    a
}

fn scram(user: &str, password: &str) -> ClientAuth {
    let a = ClientAuth::scram(user, password);
    a.seed([3; 32]);
    a
}

fn pair(
    client_auth: Option<ClientAuth>,
    server_auth: Option<ServerAuth>,
) -> (
    Result<Progress, HandshakeError>,
    Result<Progress, HandshakeError>,
    Vec<Bytes>,
) {
    let (mut s, hello) = Handshake::server_with(&py_hello(), Vec::new(), server_auth, false);
    let (mut c, _) = Handshake::client_with(py_hello(), Vec::new(), client_auth);
    run(&mut c, &mut s, hello)
}

fn peer_of(p: Result<Progress, HandshakeError>) -> PeerHello {
    match p {
        Ok(Progress::Established { peer, .. }) => peer,
        other => panic!("not established: {other:?}"),
    }
}

fn body_of(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(&b[2..]).unwrap()
}

#[test]
fn capabilities_negotiate_highest_common_version() {
    let offer = vec![
        Capability::new("chat.zip", 1..=3).param("algos", ["zstd"]),
        Capability::new("chat.old", 1..=1),
    ];
    let want = vec![
        Capability::new("chat.zip", 2..=5).param("level", 3),
        Capability::new("chat.new", 1..=1),
    ];
    let (mut s, hello) = Handshake::server_with(&py_hello(), offer, None, false);
    assert_eq!(
        body_of(&hello)["meta"]["caps"]["chat.zip"],
        json!({"algos": ["zstd"], "min": 1, "max": 3})
    );
    let (mut c, _) = Handshake::client_with(py_hello(), want, None);
    let (co, so, sent) = run(&mut c, &mut s, hello);
    let (cp, sp) = (peer_of(co), peer_of(so));
    assert_eq!(cp.negotiated.version("chat.zip"), Some(3));
    assert_eq!(sp.negotiated.version("chat.zip"), Some(3));
    assert!(!cp.negotiated.has("chat.old") && !cp.negotiated.has("chat.new"));
    assert_eq!(
        sp.negotiated.caps["chat.zip"].choice,
        *json!({"level": 3}).as_object().unwrap()
    );
    assert_eq!(
        cp.negotiated.caps["chat.zip"].offer,
        *json!({"algos": ["zstd"]}).as_object().unwrap()
    );
    assert_eq!(
        body_of(sent.last().unwrap())["caps"],
        json!({"chat.zip": {"v": 3}})
    );
}

#[test]
fn a_plain_client_gets_the_byte_exact_ack_from_a_server_with_caps() {
    let offer = vec![Capability::new("chat.zip", 1..=1)];
    let (mut s, hello) =
        Handshake::server_with(&py_hello(), offer, Some(server_auth(false)), false);
    let (mut c, _) = Handshake::client(py_hello());
    let (co, so, sent) = run(&mut c, &mut s, hello);
    assert!(peer_of(co).negotiated.caps.is_empty());
    assert!(peer_of(so).negotiated.identity.is_none());
    assert_eq!(sent.last().unwrap(), &encode_ack());
}

#[test]
fn scram_authenticates_both_ways() {
    let (co, so, sent) = pair(
        Some(scram("alice", "pencil").require_server_auth(true)),
        Some(server_auth(true)),
    );
    let (cp, sp) = (peer_of(co), peer_of(so));
    let id = sp.identity().unwrap();
    assert_eq!(
        (id.name.as_str(), id.method),
        ("alice", AuthMethod::ScramSha256)
    );
    assert_eq!(cp.identity().unwrap().name, "alice");
    assert!(cp.negotiated.server_verified);
    assert!(cp.negotiated.has(AUTH_CAP) && sp.negotiated.has(AUTH_CAP));
    // hello (with error for Python clients), challenge, ack.
    assert_eq!(sent.len(), 3);
    assert!(body_of(&sent[0])["error"]
        .as_str()
        .unwrap()
        .contains("authentication required"));
    assert!(body_of(&sent[1])["auth"]
        .as_str()
        .unwrap()
        .starts_with("r="));
    assert!(body_of(&sent[2])["auth"]
        .as_str()
        .unwrap()
        .starts_with("v="));
    // The application never sees the client's SCRAM message in meta.
    assert!(sp.meta["caps"][AUTH_CAP].get("first").is_none());
}

#[test]
fn wrong_password_and_unknown_user_fail_alike() {
    let (co, so, sent_bad) = pair(Some(scram("alice", "wrong")), Some(server_auth(true)));
    assert_eq!(co.unwrap_err(), HandshakeError::AuthenticationFailed);
    assert_eq!(so.unwrap_err(), HandshakeError::AuthenticationFailed);
    let (co, so, sent_unknown) = pair(Some(scram("mallory", "x")), Some(server_auth(true)));
    assert_eq!(co.unwrap_err(), HandshakeError::AuthenticationFailed);
    assert_eq!(so.unwrap_err(), HandshakeError::AuthenticationFailed);
    assert_eq!(sent_bad.len(), sent_unknown.len());
    assert_eq!(
        sent_bad.last(),
        sent_unknown.last(),
        "the same refusal bytes"
    );
    let challenge = body_of(&sent_unknown[1]);
    assert!(
        challenge["auth"].as_str().unwrap().contains(",i=4096"),
        "unknown users get a plausible challenge"
    );
}

#[test]
fn bearer_tokens() {
    let bearer = |t: &str| {
        let a = ClientAuth::bearer(t);
        Some(a)
    };
    let (co, so, _) = pair(bearer("tok_good"), Some(server_auth(true)));
    let sp = peer_of(so);
    assert_eq!(sp.identity().unwrap().name, "deploy-bot");
    assert_eq!(sp.identity().unwrap().method, AuthMethod::Bearer);
    let cp = peer_of(co);
    assert_eq!(cp.identity().unwrap().name, "deploy-bot");
    assert!(!cp.negotiated.server_verified);
    assert!(
        sp.meta["caps"][AUTH_CAP].get("token").is_none(),
        "token kept out of meta"
    );
    let (co, so, _) = pair(bearer("tok_bad"), Some(server_auth(true)));
    assert_eq!(co.unwrap_err(), HandshakeError::AuthenticationFailed);
    assert_eq!(so.unwrap_err(), HandshakeError::AuthenticationFailed);
}

#[test]
fn required_auth_refuses_clients_without_credentials() {
    // A veltix-rs client without credentials stops before sending anything.
    let (co, so, _) = pair(None, Some(server_auth(true)));
    assert_eq!(co.unwrap_err(), HandshakeError::AuthenticationRequired);
    assert_eq!(so.unwrap(), Progress::NeedMore);
    // A Python client reads the hello's `error` as its rejection reason;
    // if it sent its hello anyway, the server refuses it with an error.
    let (mut s, hello) =
        Handshake::server_with(&py_hello(), Vec::new(), Some(server_auth(true)), false);
    assert_eq!(body_of(&hello)["error"], json!(AUTH_REQUIRED_TEXT));
    let mut sent = Vec::new();
    let r = s.handle_input(&encode_hello(&py_hello()), &mut |b| sent.push(b));
    assert_eq!(r.unwrap_err(), HandshakeError::AuthenticationRequired);
    assert_eq!(sent, vec![encode_rejection(AUTHENTICATION_REQUIRED)]);
}

#[test]
fn optional_auth_admits_anonymous_but_never_falls_back() {
    let (co, so, _) = pair(None, Some(server_auth(false)));
    assert!(peer_of(so).identity().is_none());
    assert!(peer_of(co).identity().is_none());
    let (co, so, _) = pair(Some(scram("alice", "nope")), Some(server_auth(false)));
    assert_eq!(co.unwrap_err(), HandshakeError::AuthenticationFailed);
    assert_eq!(so.unwrap_err(), HandshakeError::AuthenticationFailed);
}

#[test]
fn a_client_can_require_the_server_to_prove_itself() {
    let strict = || Some(scram("alice", "pencil").require_server_auth(true));
    let (co, _, _) = pair(strict(), None);
    assert_eq!(co.unwrap_err(), HandshakeError::ServerNotAuthenticated);
    let bearer_only = server_auth(true).methods(&[AuthMethod::Bearer]);
    let (co, _, _) = pair(strict(), Some(bearer_only));
    assert_eq!(co.unwrap_err(), HandshakeError::ServerNotAuthenticated);
    // Without the requirement, a plain server is fine (and we are anonymous).
    let (co, _, _) = pair(Some(scram("alice", "pencil")), None);
    assert!(peer_of(co).identity().is_none());
}

#[test]
fn a_forged_server_signature_is_caught() {
    let (mut s, hello) =
        Handshake::server_with(&py_hello(), Vec::new(), Some(server_auth(true)), false);
    let (mut c, _) = Handshake::client_with(py_hello(), Vec::new(), Some(scram("alice", "pencil")));
    let mut to_server = Vec::new();
    c.handle_input(&hello, &mut |b| to_server.push(b)).unwrap();
    let mut to_client = Vec::new();
    s.handle_input(&to_server.concat(), &mut |b| to_client.push(b))
        .unwrap();
    let mut fin = Vec::new();
    c.handle_input(&to_client.concat(), &mut |b| fin.push(b))
        .unwrap();
    assert_eq!(fin.len(), 1, "the client answered the challenge");
    let forged = encode_object(
        json!({"result": "ok", "caps": {"rs.auth": {"v": 1}}, "auth": "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="})
            .as_object()
            .unwrap(),
    );
    assert_eq!(
        c.handle_input(&forged, &mut |_| {}).unwrap_err(),
        HandshakeError::ServerSignatureMismatch
    );
}

#[test]
fn the_client_bounds_the_iteration_count() {
    let st = MemoryStore::new();
    st.insert_user(
        "bob",
        ScramCredential::derive("pw", b"salt-of-bob-1234", 5000),
    );
    let sa = ServerAuth::new(st);
    sa.seed([1; 32]);
    let ca = scram("bob", "pw").iterations(4096..=4096);
    let (co, _, _) = pair(Some(ca), Some(sa));
    assert_eq!(co.unwrap_err(), HandshakeError::IterationsOutOfRange(5000));
}

#[test]
fn unseeded_sides_fail_closed() {
    let sa = ServerAuth::new(store());
    let (co, so, sent) = pair(Some(scram("alice", "pencil")), Some(sa));
    assert_eq!(so.unwrap_err(), HandshakeError::NotSeeded);
    assert!(co.is_err());
    assert_eq!(
        body_of(sent.last().unwrap())["error"],
        json!("authentication_unavailable")
    );
    let (co, _, _) = pair(
        Some(ClientAuth::scram("alice", "pencil")),
        Some(server_auth(true)),
    );
    assert_eq!(co.unwrap_err(), HandshakeError::NotSeeded);
}

#[test]
fn a_held_peer_waits_for_admission() {
    let (mut s, hello) =
        Handshake::server_with(&py_hello(), Vec::new(), Some(server_auth(true)), true);
    let (mut c, _) =
        Handshake::client_with(py_hello(), Vec::new(), Some(ClientAuth::bearer("tok_good")));
    let (co, so, _) = run(&mut c, &mut s, hello);
    assert_eq!(co.unwrap(), Progress::NeedMore, "no ack yet");
    match so.unwrap() {
        Progress::Held { identity, .. } => assert_eq!(identity.name, "deploy-bot"),
        p => panic!("{p:?}"),
    }
    let (ack, peer) = s.admit().unwrap();
    assert_eq!(peer.identity().unwrap().name, "deploy-bot");
    assert!(matches!(
        c.handle_input(&ack, &mut |_| {}),
        Ok(Progress::Established { .. })
    ));
    // Refusal path.
    let (mut s, hello) =
        Handshake::server_with(&py_hello(), Vec::new(), Some(server_auth(true)), true);
    let (mut c, _) =
        Handshake::client_with(py_hello(), Vec::new(), Some(ClientAuth::bearer("tok_good")));
    let _ = run(&mut c, &mut s, hello);
    let no = s.refuse(&HandshakeError::IdentityInUse);
    assert_eq!(
        c.handle_input(&no, &mut |_| {}).unwrap_err(),
        HandshakeError::IdentityInUse
    );
}

/// Messages a side sent, in order, when the other side answers everything.
fn transcript(client: Option<ClientAuth>, server: Option<ServerAuth>) -> (Vec<Bytes>, Vec<Bytes>) {
    let (mut s, hello) = Handshake::server_with(&py_hello(), Vec::new(), server, false);
    let (mut c, _) = Handshake::client_with(py_hello(), Vec::new(), client);
    let mut from_server = vec![hello.clone()];
    let mut from_client = Vec::new();
    let mut pending = vec![hello];
    while !pending.is_empty() {
        let mut to_server = Vec::new();
        for b in pending.drain(..) {
            let _ = c.handle_input(&b, &mut |x| to_server.push(x));
        }
        for b in to_server {
            from_client.push(b.clone());
            let _ = s.handle_input(&b, &mut |x| {
                from_server.push(x.clone());
                pending.push(x);
            });
        }
    }
    (from_client, from_server)
}

#[test]
fn a_replayed_client_final_is_refused() {
    // One server (one nonce generator), two connections.
    let sa = server_auth(true);
    let (client_msgs, server_msgs) = transcript(Some(scram("alice", "pencil")), Some(sa.clone()));
    assert_eq!(
        client_msgs.len(),
        2,
        "hello (with client-first), client-final"
    );
    assert!(body_of(server_msgs.last().unwrap())["result"] == "ok");
    // An eavesdropper replays both client messages to a new connection: the
    // server's new nonce makes the recorded proof worthless.
    let (mut s, _) = Handshake::server_with(&py_hello(), Vec::new(), Some(sa), false);
    let mut sent = Vec::new();
    assert_eq!(
        s.handle_input(&client_msgs[0], &mut |b| sent.push(b))
            .unwrap(),
        Progress::NeedMore
    );
    assert_ne!(
        body_of(&sent[0])["auth"],
        body_of(&server_msgs[1])["auth"],
        "a fresh challenge"
    );
    let r = s.handle_input(&client_msgs[1], &mut |b| sent.push(b));
    assert_eq!(r.unwrap_err(), HandshakeError::AuthenticationFailed);
}

/// Removes `meta.caps` (and a top-level `error`) from a hello, as a man in
/// the middle without TLS could.
fn strip_caps(b: &Bytes) -> Bytes {
    let mut v = body_of(b);
    let o = v.as_object_mut().unwrap();
    o.remove("error");
    o.get_mut("meta")
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove("caps");
    encode_object(o)
}

#[test]
fn stripping_caps_cannot_downgrade_a_require_policy() {
    // Stripped from the server's hello: a client that requires the server
    // to prove itself refuses; the server still requires credentials.
    let (mut s, hello) =
        Handshake::server_with(&py_hello(), Vec::new(), Some(server_auth(true)), false);
    let (mut c, _) = Handshake::client_with(
        py_hello(),
        Vec::new(),
        Some(scram("alice", "pencil").require_server_auth(true)),
    );
    let err = c
        .handle_input(&strip_caps(&hello), &mut |_| {})
        .unwrap_err();
    assert_eq!(err, HandshakeError::ServerNotAuthenticated);
    let (mut c, _) = Handshake::client_with(py_hello(), Vec::new(), Some(scram("alice", "pencil")));
    let mut to_server = Vec::new();
    c.handle_input(&strip_caps(&hello), &mut |b| to_server.push(b))
        .unwrap();
    assert!(
        body_of(&to_server[0])["meta"].get("caps").is_none(),
        "the client fell back to plain"
    );
    let err = s.handle_input(&to_server[0], &mut |_| {}).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::AuthenticationRequired,
        "and the server still refuses"
    );
    // Stripped from the client's hello: a requiring server refuses.
    let (mut s, hello) =
        Handshake::server_with(&py_hello(), Vec::new(), Some(server_auth(true)), false);
    let (mut c, _) = Handshake::client_with(py_hello(), Vec::new(), Some(scram("alice", "pencil")));
    let mut to_server = Vec::new();
    c.handle_input(&hello, &mut |b| to_server.push(b)).unwrap();
    let err = s
        .handle_input(&strip_caps(&to_server[0]), &mut |_| {})
        .unwrap_err();
    assert_eq!(err, HandshakeError::AuthenticationRequired);
}
