//! TLS on both drivers, one test source (the facade of
//! `veltix_tests::drivers`): every test body is a generic function over
//! `D: Driver` (or a server driver `S` and a client driver `C`),
//! instantiated for veltix-std and veltix-tokio (and std <-> tokio both
//! ways) by `veltix_tests::both!` and `pairs!`.
//!
//! * std <-> tokio over TLS, both directions, with requests both ways,
//!   pings, large payloads, the negotiated parameters on both ends;
//! * mutual TLS: the client certificate's identity on the server's peer;
//! * failures, each a typed error within a bound, never a hang: unknown
//!   CA, wrong server name, expired certificate, TLS client to a plaintext
//!   server, plaintext client to a TLS server (rejected `tls_required`),
//!   missing client certificate;
//! * peers that stall in the TLS handshake are cut at the handshake
//!   deadline while another client is served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustls::{AlertDescription, CertificateError, ProtocolVersion};
use veltix_proto::{ClientConfig, Error, MessageType, ServerConfig};
use veltix_tests::drivers::{ClientApi, Driver, PeerApi, ServerApi};
use veltix_tests::harness::{timed, wait_until};
use veltix_tests::pki::{self, Pki, SERVER_CN};
use veltix_tls::{ClientTls, ServerTls, TlsError};

const ECHO: MessageType = MessageType::new(200);
const T: Option<Duration> = Some(Duration::from_secs(5));

veltix_tests::pairs!(
    tls_between_any_two_drivers,
    scram_over_tls_between_any_two_drivers
);

veltix_tests::both!(
    mutual_tls_identity_on_the_peer,
    unknown_ca_is_a_typed_error,
    wrong_server_name_is_a_typed_error,
    expired_certificate_is_a_typed_error,
    tls_client_to_plaintext_server_is_a_typed_error,
    plaintext_client_to_tls_server_is_rejected_tls_required,
    missing_client_certificate_is_a_typed_error,
    stalled_tls_handshakes_are_cut_while_others_are_served,
);

fn local() -> ServerConfig {
    ServerConfig::new("127.0.0.1", 0)
}

fn start_tls<D: Driver>(config: ServerConfig, tls: ServerTls) -> D::Server {
    let s = D::server_tls(config, tls).expect("server config");
    s.route(ECHO, |server, peer, msg| {
        let _ = server.reply(peer, &msg, ECHO, msg.payload.clone());
    })
    .expect("route");
    s.start().expect("server starts");
    s
}

fn port<S: ServerApi>(s: &S) -> u16 {
    s.local_addr().expect("server running").port()
}

/// Connects a TLS client of driver `D` with `tls` to `port`; the outcome
/// and how long it took (bounded: a hang fails the test).
fn connect_tls<D: Driver>(
    port: u16,
    tls: ClientTls,
    handshake: Duration,
) -> (Result<D::Client, Error>, Duration) {
    timed("connect", Duration::from_secs(15), move || {
        let c = D::client_tls(
            ClientConfig::new("127.0.0.1", port).handshake_timeout(handshake),
            tls,
        )?;
        c.connect().map(|()| c)
    })
}

/// The `TlsError` of a failed connect (panics on success or another error).
#[track_caller]
fn tls_error<C>(r: Result<C, Error>) -> TlsError {
    match r {
        Err(Error::Tls(e)) => match e.downcast::<TlsError>() {
            Ok(t) => *t,
            Err(e) => panic!("Error::Tls without a TlsError: {e}"),
        },
        Err(other) => panic!("expected Error::Tls, got {other:?}"),
        Ok(_) => panic!("expected Error::Tls, but the client connected"),
    }
}

// ----------------------------------------------------------------- success

fn tls_between_any_two_drivers<S: Driver, C: Driver>() {
    let pki = Pki::new("Veltix test CA");
    let server = start_tls::<S>(local(), pki.server_tls());
    let (client, _) = connect_tls::<C>(port(&server), pki.client_tls(), Duration::from_secs(5));
    let client = client.expect("TLS client connects");
    assert!(server.is_tls() && client.is_tls());
    client
        .route(ECHO, |c, msg| {
            let _ = c.reply(&msg, ECHO, msg.payload.clone());
        })
        .expect("client route");

    // Client -> server, small and large (records split, buffers fill).
    let reply = client.request(ECHO, "hello over TLS", T).expect("request");
    assert_eq!(reply.text().expect("text"), "hello over TLS");
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let reply = client.request(ECHO, big.clone(), T).expect("large request");
    assert_eq!(&reply.payload[..], &big[..], "large payload intact");
    assert!(client.ping(T).is_ok(), "ping over TLS");

    // Server -> client.
    let mut peers = Vec::new();
    wait_until("the server lists the client", || {
        peers = server.clients();
        peers.len() == 1
    });
    let peer = &peers[0];
    let reply = server
        .request(peer, ECHO, "from the server", T)
        .expect("server request");
    assert_eq!(reply.text().expect("text"), "from the server");
    assert!(server.ping(peer, T).is_ok(), "server ping over TLS");

    // What was negotiated, on both ends.
    let info = client.tls_info().expect("client tls_info while connected");
    assert_eq!(info.protocol, ProtocolVersion::TLSv1_3);
    assert_eq!(info.alpn.as_deref(), Some(&b"veltix/1"[..]));
    assert_eq!(info.peer_identity.as_deref(), Some(SERVER_CN));
    let pinfo = peer.tls_info().expect("peer tls_info on a TLS server");
    assert_eq!(pinfo.cipher_suite, info.cipher_suite);
    assert_eq!(peer.tls_identity(), None, "no client certificate");

    assert!(client.disconnect());
    assert!(client.tls_info().is_none(), "no TLS info once disconnected");
    server.shutdown(Duration::from_secs(1));
}

fn mutual_tls_identity_on_the_peer<D: Driver>() {
    let servers = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let tls = pki::server_tls(&servers.server_cert(), Some(&clients));
    let server = start_tls::<D>(local(), tls);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    server.on_connect(move |_, peer| {
        s2.lock().unwrap().push(peer.tls_identity());
    });
    let alice = servers.client_tls_with(&clients.client_cert("alice"));
    let (client, _) = connect_tls::<D>(port(&server), alice, Duration::from_secs(5));
    let client = client.expect("mutual TLS client connects");
    assert_eq!(
        client
            .request(ECHO, "hi", T)
            .expect("request")
            .text()
            .expect("text"),
        "hi"
    );
    wait_until("on_connect ran", || !seen.lock().unwrap().is_empty());
    assert_eq!(seen.lock().unwrap()[0].as_deref(), Some("alice"));
    let peers = server.clients();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].tls_identity().as_deref(), Some("alice"));
    // The certificate is the peer's authenticated identity too, and its
    // hello (from the Connected event) carries it.
    let id = peers[0]
        .identity()
        .expect("identity from the client certificate");
    assert_eq!(
        (id.name.as_str(), id.method),
        ("alice", veltix_proto::AuthMethod::ClientCertificate)
    );
    let hello_id = peers[0].hello().and_then(|h| h.negotiated.identity);
    assert_eq!(hello_id, Some(id));
    assert_eq!(
        peers[0].tls_info().and_then(|i| i.peer_identity).as_deref(),
        Some("alice")
    );
    assert!(client.disconnect());
    server.shutdown(Duration::from_secs(1));
}

/// Authentication (issue 12) on top of TLS, every pair of drivers: the
/// server requires SCRAM, the client requires the server's proof; both ends
/// see the identity, and a wrong password is still refused inside TLS.
fn scram_over_tls_between_any_two_drivers<S: Driver, C: Driver>() {
    use veltix_proto::auth::{ClientAuth, MemoryStore, ScramCredential, ServerAuth};
    let pki = Pki::new("Veltix test CA");
    let users = MemoryStore::new();
    users.insert_user(
        "alice",
        ScramCredential::derive("pencil", b"salt-of-alice-16", 4096),
    );
    let server = start_tls::<S>(
        local().auth(Some(ServerAuth::new(users).required(true))),
        pki.server_tls(),
    );
    let connect = |password: &str| {
        let (port, tls) = (port(&server), pki.client_tls());
        let auth = ClientAuth::scram("alice", password).require_server_auth(true);
        timed("connect", Duration::from_secs(15), move || {
            let c = C::client_tls(ClientConfig::new("127.0.0.1", port).auth(Some(auth)), tls)?;
            c.connect().map(|()| c)
        })
        .0
    };
    let client = connect("pencil").expect("SCRAM over TLS connects");
    assert!(client.is_tls());
    let me = client.identity().expect("authenticated");
    assert_eq!(me.name, "alice");
    assert!(client.server_hello().unwrap().negotiated.server_verified);
    assert_eq!(
        client
            .request(ECHO, "hi", T)
            .expect("request")
            .text()
            .unwrap(),
        "hi"
    );
    wait_until("the server lists the client", || {
        server.clients().len() == 1
    });
    let peer = &server.clients()[0];
    assert_eq!(peer.identity().map(|i| i.name).as_deref(), Some("alice"));
    assert!(peer.tls_info().is_some());
    match connect("wrong") {
        Err(Error::Handshake(veltix_proto::HandshakeError::AuthenticationFailed)) => {}
        Err(e) => panic!("expected AuthenticationFailed, got {e:?}"),
        Ok(_) => panic!("a wrong password connected"),
    }
    assert!(client.disconnect());
    server.shutdown(Duration::from_secs(1));
}

// ---------------------------------------------------------------- failures

/// Each failure comes well before the 5 s handshake deadline.
const FAST: Duration = Duration::from_secs(3);

fn unknown_ca_is_a_typed_error<D: Driver>() {
    let pki = Pki::new("the server's CA");
    let other = Pki::new("some other CA");
    let server = start_tls::<D>(local(), pki.server_tls());
    let (r, took) = connect_tls::<D>(port(&server), other.client_tls(), Duration::from_secs(5));
    let e = tls_error(r);
    assert!(
        matches!(
            e.rustls_error(),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{e:?}"
    );
    assert!(took < FAST, "took {took:?}");
    assert!(server.clients().is_empty());
    server.shutdown(Duration::from_secs(1));
}

fn wrong_server_name_is_a_typed_error<D: Driver>() {
    let pki = Pki::new("Veltix test CA");
    let server = start_tls::<D>(local(), pki.server_tls());
    let tls = pki
        .client_tls()
        .server_name("elsewhere.example")
        .expect("a valid name");
    let (r, took) = connect_tls::<D>(port(&server), tls, Duration::from_secs(5));
    let e = tls_error(r);
    assert!(
        matches!(
            e.rustls_error(),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{e:?}"
    );
    assert!(took < FAST, "took {took:?}");
    server.shutdown(Duration::from_secs(1));
}

fn expired_certificate_is_a_typed_error<D: Driver>() {
    let pki = Pki::new("Veltix test CA");
    let server = start_tls::<D>(local(), pki::server_tls(&pki.expired_server_cert(), None));
    let (r, took) = connect_tls::<D>(port(&server), pki.client_tls(), Duration::from_secs(5));
    let e = tls_error(r);
    assert!(
        matches!(
            e.rustls_error(),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{e:?}"
    );
    assert!(took < FAST, "took {took:?}");
    server.shutdown(Duration::from_secs(1));
}

fn tls_client_to_plaintext_server_is_a_typed_error<D: Driver>() {
    let pki = Pki::new("Veltix test CA");
    let server = D::server(local()).expect("plain server");
    assert!(!server.is_tls());
    server.start().expect("starts");
    let (r, took) = connect_tls::<D>(port(&server), pki.client_tls(), Duration::from_secs(5));
    let e = tls_error(r);
    assert!(matches!(e, TlsError::NotTls), "{e:?}");
    assert!(e.to_string().contains("does not speak TLS"), "{e}");
    assert!(took < FAST, "took {took:?}");
    server.shutdown(Duration::from_secs(1));
}

/// A plaintext client waits for the server's hello, which a TLS server
/// never sends in plaintext (it waits for a ClientHello): the server takes
/// a peer silent for half its handshake deadline for a plaintext Veltix
/// client and answers a plaintext rejection, `tls_required`.
fn plaintext_client_to_tls_server_is_rejected_tls_required<D: Driver>() {
    let pki = Pki::new("Veltix test CA");
    let server = start_tls::<D>(
        local().handshake_timeout(Duration::from_secs(1)),
        pki.server_tls(),
    );
    let port = port(&server);
    let (r, took) = timed("plain connect", Duration::from_secs(15), move || {
        let c = D::client(
            ClientConfig::new("127.0.0.1", port).handshake_timeout(Duration::from_secs(3)),
        )?;
        c.connect()
    });
    match r {
        Err(Error::Rejected(reason)) => assert_eq!(reason, veltix_tls::TLS_REQUIRED),
        other => panic!("expected Rejected(tls_required), got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "took {took:?} (probe at 500 ms)"
    );
    assert!(server.clients().is_empty());
    server.shutdown(Duration::from_secs(1));
}

fn missing_client_certificate_is_a_typed_error<D: Driver>() {
    let servers = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let server = start_tls::<D>(
        local(),
        pki::server_tls(&servers.server_cert(), Some(&clients)),
    );
    let (r, took) = connect_tls::<D>(port(&server), servers.client_tls(), Duration::from_secs(5));
    let e = tls_error(r);
    // TLS 1.3: the client's side of the handshake is done when the server
    // refuses it, with an alert.
    assert!(
        matches!(
            e.rustls_error(),
            Some(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            ))
        ),
        "{e:?}"
    );
    assert!(took < FAST, "took {took:?}");
    // A certificate from another CA is refused too.
    let mallory = servers.client_tls_with(&servers.client_cert("mallory"));
    let (r, _) = connect_tls::<D>(port(&server), mallory, Duration::from_secs(5));
    let e = tls_error(r);
    assert!(
        matches!(e.rustls_error(), Some(rustls::Error::AlertReceived(_))),
        "{e:?}"
    );
    assert!(server.clients().is_empty());
    server.shutdown(Duration::from_secs(1));
}

/// Raw TCP peers that send nothing, or half a ClientHello, then stall: the
/// server answers the silent ones `tls_required` at half its handshake
/// deadline and cuts the others at the deadline, and serves a TLS client
/// in the meantime.
fn stalled_tls_handshakes_are_cut_while_others_are_served<D: Driver>() {
    let pki = Pki::new("Veltix test CA");
    let deadline = Duration::from_millis(800);
    let server = start_tls::<D>(local().handshake_timeout(deadline), pki.server_tls());
    let addr = SocketAddr::from(([127, 0, 0, 1], port(&server)));
    let hello = pki::partial_client_hello(&pki);
    let t0 = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..6 {
        let mut s = TcpStream::connect(addr).expect("raw connect");
        if i % 2 == 1 {
            s.write_all(&hello).expect("half a ClientHello");
        }
        s.set_read_timeout(Some(Duration::from_secs(4)))
            .expect("timeout");
        stalled.push(s);
    }
    // Served meanwhile (before the silent ones are answered).
    let (client, _) = connect_tls::<D>(addr.port(), pki.client_tls(), Duration::from_secs(5));
    let client = client.expect("a TLS client is served while others stall");
    assert_eq!(
        client
            .request(ECHO, "ok", T)
            .expect("request")
            .text()
            .expect("text"),
        "ok"
    );
    assert!(
        t0.elapsed() < deadline / 2,
        "the TLS client was served only after {:?}",
        t0.elapsed()
    );
    let rejection = veltix_tls::tls_required_rejection();
    for (i, mut s) in stalled.into_iter().enumerate() {
        let silent = i % 2 == 0;
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        let took = t0.elapsed();
        match r {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("stalled peer {i}: expected the server to close, got {e}"),
        }
        let (expected, at) = if silent {
            (&rejection[..], deadline / 2)
        } else {
            (&[][..], deadline)
        };
        assert_eq!(
            got, expected,
            "stalled peer {i} (silent: {silent}) received"
        );
        assert!(
            took >= at - Duration::from_millis(100) && took < Duration::from_secs(3),
            "stalled peer {i} (silent: {silent}) cut after {took:?}, expected ~{at:?}"
        );
    }
    assert_eq!(server.clients().len(), 1, "only the TLS client");
    assert!(client.disconnect());
    server.shutdown(Duration::from_secs(1));
}
