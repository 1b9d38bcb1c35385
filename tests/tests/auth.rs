//! Authentication in the handshake on both drivers (one test source), across
//! drivers (std ⇄ tokio), and against the real Python veltix 3.3.0 client:
//! identities on both ends, one typed error for a wrong password or unknown
//! user with no retry loop, required authentication refused with a reason a
//! Python client prints, optional authentication leaving Python clients
//! working, and a second connection of one identity refused or replacing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use veltix_proto::auth::{AuthMethod, ClientAuth, MemoryStore, ScramCredential, ServerAuth};
use veltix_proto::handshake::AUTH_REQUIRED_TEXT;
use veltix_proto::{
    ClientConfig, DisconnectState, DuplicateIdentity, Error, HandshakeError, MessageType,
    ServerConfig,
};
use veltix_tests::drivers::{ClientApi, Driver, PeerApi, ServerApi};
use veltix_tests::harness::wait_until;
use veltix_tests::PyPeer;

const ECHO: MessageType = MessageType::new(200);
const T: Option<Duration> = Some(Duration::from_secs(3));

fn store() -> MemoryStore {
    let s = MemoryStore::new();
    s.insert_user(
        "alice",
        ScramCredential::derive("pencil", b"salt-of-alice-16", 4096),
    );
    s.insert_token("deploy-bot", "tok_good");
    s
}

/// A started echo server with authentication (`required` or optional).
fn server<D: Driver>(required: bool, rule: DuplicateIdentity) -> (D::Server, u16) {
    let config = ServerConfig::new("127.0.0.1", 0)
        .auth(Some(ServerAuth::new(store()).required(required)))
        .duplicate_identity(rule);
    let s = D::server(config).unwrap();
    s.route(ECHO, |s, p, f| {
        let _ = s.reply(p, &f, ECHO, f.payload.clone());
    })
    .unwrap();
    s.start().unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

fn client<D: Driver>(port: u16, auth: Option<ClientAuth>) -> D::Client {
    D::client(
        ClientConfig::new("127.0.0.1", port)
            .auth(auth)
            .retry(3)
            .retry_delay(Duration::from_millis(200)),
    )
    .unwrap()
}

fn scram_and_tokens_identify_both_ends<S: Driver, C: Driver>() {
    let (srv, port) = server::<S>(true, DuplicateIdentity::Allow);
    let alice = client::<C>(
        port,
        Some(ClientAuth::scram("alice", "pencil").require_server_auth(true)),
    );
    alice.connect().unwrap();
    let me = alice.identity().unwrap();
    assert_eq!(
        (me.name.as_str(), me.method),
        ("alice", AuthMethod::ScramSha256)
    );
    assert!(alice.server_hello().unwrap().negotiated.server_verified);
    let reply = alice.request(ECHO, &b"hi"[..], T).unwrap();
    assert_eq!(&reply.payload[..], b"hi");

    let bot = client::<C>(port, Some(ClientAuth::bearer("tok_good")));
    bot.connect().unwrap();
    assert_eq!(bot.identity().unwrap().name, "deploy-bot");
    wait_until("both peers are listed", || srv.clients().len() == 2);
    let mut names: Vec<_> = srv
        .clients()
        .iter()
        .map(|p| p.identity().unwrap().name)
        .collect();
    names.sort();
    assert_eq!(names, ["alice", "deploy-bot"]);
    let on_hello: Vec<_> = srv
        .clients()
        .iter()
        .map(|p| p.hello().unwrap().negotiated.identity.unwrap().method)
        .collect();
    assert!(on_hello.contains(&AuthMethod::Bearer));
}

fn bad_credentials_fail_once_with_one_error<D: Driver>() {
    let (srv, port) = server::<D>(true, DuplicateIdentity::Allow);
    let connects = Arc::new(Mutex::new(0));
    let c2 = connects.clone();
    srv.on_connect(move |_, _| *c2.lock().unwrap() += 1);
    for auth in [
        ClientAuth::scram("alice", "wrong"),
        ClientAuth::scram("nobody", "pencil"),
        ClientAuth::bearer("tok_bad"),
    ] {
        let c = client::<D>(port, Some(auth));
        let reports = Arc::new(Mutex::new(Vec::<DisconnectState>::new()));
        let r2 = reports.clone();
        c.on_disconnect(move |_, s| r2.lock().unwrap().push(s.clone()));
        let t0 = Instant::now();
        let err = c.connect().unwrap_err();
        assert!(
            matches!(err, Error::Handshake(HandshakeError::AuthenticationFailed)),
            "{err:?}"
        );
        assert!(err.is_permanent());
        assert!(
            t0.elapsed() < Duration::from_millis(190),
            "no retry delay was waited"
        );
        std::thread::sleep(Duration::from_millis(300));
        let reports = reports.lock().unwrap();
        assert!(
            reports.len() <= 1 && reports.iter().all(|s| s.permanent),
            "{reports:?}"
        );
    }
    assert_eq!(*connects.lock().unwrap(), 0);
    assert!(srv.clients().is_empty());
}

fn required_auth_refuses_clients_without_credentials<D: Driver>() {
    let (_srv, port) = server::<D>(true, DuplicateIdentity::Allow);
    let c = client::<D>(port, None);
    let err = c.connect().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Handshake(HandshakeError::AuthenticationRequired)
        ),
        "{err:?}"
    );
    // A client requiring the server to prove itself refuses a plain server.
    let plain = D::server(ServerConfig::new("127.0.0.1", 0)).unwrap();
    plain.start().unwrap();
    let c = client::<D>(
        plain.local_addr().unwrap().port(),
        Some(ClientAuth::scram("alice", "pencil").require_server_auth(true)),
    );
    let err = c.connect().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Handshake(HandshakeError::ServerNotAuthenticated)
        ),
        "{err:?}"
    );
}

fn optional_auth_admits_anonymous_peers<D: Driver>() {
    let (srv, port) = server::<D>(false, DuplicateIdentity::Allow);
    let anon = client::<D>(port, None);
    anon.connect().unwrap();
    assert!(anon.identity().is_none());
    let alice = client::<D>(port, Some(ClientAuth::scram("alice", "pencil")));
    alice.connect().unwrap();
    wait_until("both listed", || srv.clients().len() == 2);
    let ids: Vec<_> = srv
        .clients()
        .iter()
        .map(|p| p.identity().map(|i| i.name))
        .collect();
    assert!(
        ids.contains(&None) && ids.contains(&Some("alice".into())),
        "{ids:?}"
    );
}

fn a_second_connection_of_one_identity<D: Driver>() {
    // Refuse: the newcomer gets a typed error, the first stays.
    let (srv, port) = server::<D>(true, DuplicateIdentity::Refuse);
    let first = client::<D>(port, Some(ClientAuth::bearer("tok_good")));
    first.connect().unwrap();
    let second = client::<D>(port, Some(ClientAuth::bearer("tok_good")));
    let err = second.connect().unwrap_err();
    assert!(
        matches!(err, Error::Handshake(HandshakeError::IdentityInUse)),
        "{err:?}"
    );
    assert!(first.is_connected());
    assert_eq!(first.request(ECHO, &b"x"[..], T).unwrap().payload.len(), 1);
    assert_eq!(srv.clients().len(), 1);
    // Replace: the newcomer wins, the old connection is closed.
    let (srv, port) = server::<D>(true, DuplicateIdentity::Replace);
    let old =
        D::client(ClientConfig::new("127.0.0.1", port).auth(Some(ClientAuth::bearer("tok_good"))))
            .unwrap();
    old.connect().unwrap();
    let new = client::<D>(port, Some(ClientAuth::bearer("tok_good")));
    new.connect().unwrap();
    wait_until("the old connection is closed", || !old.is_connected());
    assert!(new.is_connected());
    wait_until("one peer left", || srv.clients().len() == 1);
}

/// Python veltix 3.3.0 against a server that requires authentication: its
/// `connect()` raises with our reason; against optional authentication it
/// works as before.
fn python_clients_and_auth<D: Driver>() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let (_srv, port) = server::<D>(true, DuplicateIdentity::Allow);
    let port_s = port.to_string();
    let mut p = PyPeer::spawn(
        &py,
        "py_client.py",
        &["--port", &port_s, "--scenario", "expect_reject"],
    );
    p.finish_ok(Duration::from_secs(20));
    assert_eq!(p.events("rejected")[0]["reason"], AUTH_REQUIRED_TEXT);

    let (srv, port) = server::<D>(false, DuplicateIdentity::Allow);
    let port_s = port.to_string();
    let mut p = PyPeer::spawn(
        &py,
        "py_client.py",
        &["--port", &port_s, "--scenario", "echo", "--payload", "text"],
    );
    p.finish_ok(Duration::from_secs(20));
    let replies = p.events("reply");
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["match"], true);
    assert!(srv.clients().iter().all(|c| c.identity().is_none()));
}

veltix_tests::both!(
    bad_credentials_fail_once_with_one_error,
    required_auth_refuses_clients_without_credentials,
    optional_auth_admits_anonymous_peers,
    a_second_connection_of_one_identity,
    python_clients_and_auth,
);

veltix_tests::pairs!(scram_and_tokens_identify_both_ends);
