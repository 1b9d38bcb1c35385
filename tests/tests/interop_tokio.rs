//! Live interop between `veltix_tokio` and the real Python veltix 3.3.0, both
//! directions: tokio [`Server`] ⇄ Python clients and Python server ⇄ tokio
//! [`Client`] — the matrix of `interop_std.rs`, with the async driver on the
//! Rust side and the same peer scripts in `tests/python/`.
//!
//! The tokio server is driven by an event-loop task
//! ([`veltix_tests::tokio_peers::TokioEcho`]) that records every
//! `ServerEvent::Message` and answers with `Server::reply`; a tokio client
//! that must answer the Python server runs a
//! [`Responder`](veltix_tests::tokio_peers::Responder) over `Client::recv`.
//! Every test asserts what the *peer* received, byte for byte: the Python
//! scripts print the full hex of every payload they get, and the Rust side
//! records everything its loop sees. Payload specs (`empty`, `text`,
//! `bin256`, `frame`, `mib`, `json`, `hex:..`) are built identically by
//! `tests/python/peer_common.py` and [`veltix_tests::specs`].
//!
//! The blocking [`PyPeer`] waits run on tokio's blocking pool (see [`Py`]),
//! never on the runtime's workers. Without Python veltix 3.3.0 each test
//! prints a loud warning and passes locally; under CI it fails (see
//! [`veltix_tests::python`]).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use veltix_tests::specs::{assert_bytes, hex_field, payload_of, type_of, unhex, ECHO, JSON, SPECS};
use veltix_tests::tokio_peers::{off, Responder, TokioEcho};
use veltix_tests::PyPeer;
use veltix_tokio::{payload, Client, ClientConfig, Error, LocalHello, MessageType, ServerConfig};

/// Upper bound for any single wait on a peer.
const T: Duration = Duration::from_secs(20);
const SECS5: Option<Duration> = Some(Duration::from_secs(5));
const SECS10: Option<Duration> = Some(Duration::from_secs(10));

// ------------------------------------------------------- blocking helpers

/// A [`PyPeer`] whose blocking waits run on the blocking pool. If a wait
/// panics, the peer is dropped (killed) there and the panic re-raised here.
struct Py(Option<PyPeer>);

impl Py {
    fn spawn(py: &Path, name: &str, args: &[&str]) -> Py {
        Py(Some(PyPeer::spawn(py, name, args)))
    }

    fn client(py: &Path, port: &str, scenario: &str, specs: &[&str]) -> Py {
        let mut args = vec!["--port", port, "--scenario", scenario];
        for s in specs {
            args.extend(["--payload", s]);
        }
        Py::spawn(py, "py_client.py", &args)
    }

    async fn with<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut PyPeer) -> R + Send + 'static,
    ) -> R {
        let mut p = self.0.take().expect("peer lost to an earlier panic");
        let (p, r) = off(move || {
            let r = f(&mut p);
            (p, r)
        })
        .await;
        self.0 = Some(p);
        r
    }

    async fn expect_event(&mut self, event: &str) -> Value {
        let event = event.to_owned();
        self.with(move |p| p.expect_event(&event, T)).await
    }

    async fn finish_ok(&mut self) {
        self.with(|p| p.finish_ok(T)).await;
    }

    fn events(&self, event: &str) -> Vec<Value> {
        self.0.as_ref().expect("peer").events(event)
    }
}

fn port_of(v: &Value) -> u16 {
    u16::try_from(v["port"].as_u64().expect("port")).expect("port fits u16")
}

/// Checks the `reply` lines of a Python `echo` run against the specs.
#[track_caller]
fn assert_python_replies(peer: &Py, specs: &[&str]) {
    let replies = peer.events("reply");
    assert_eq!(replies.len(), specs.len(), "replies: {replies:?}");
    for (r, spec) in replies.iter().zip(specs) {
        assert_eq!(r["spec"], *spec);
        assert_eq!(r["match"], true, "Python says the {spec} reply differs");
        assert_eq!(r["type"], u64::from(type_of(spec).0));
        assert_eq!(r["id"], r["sent_id"], "{spec}: reply id");
        assert_bytes(&hex_field(r), &payload_of(spec), spec);
    }
}

async fn echo_server(config: ServerConfig) -> TokioEcho {
    TokioEcho::start(config).await
}

/// A loopback server config with negotiation on (caps and optional auth).
fn local() -> ServerConfig {
    veltix_tests::negotiating_server(ServerConfig::new("127.0.0.1", 0))
}

// ------------------------------------------------------------ tokio server

/// Handshake with a Python client, then Python `send_and_wait` echoes of
/// every payload kind through the tokio server: the server's loop got
/// exactly Python's bytes (JSON: exactly `payload::json` of the same value,
/// i.e. Python's `json.dumps`) with Python's ids 0, 1, 2, ..., the peer's
/// hello is Python's, and Python got back exactly what it sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_send_and_wait_echo_through_tokio_server() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let mut srv = echo_server(local()).await;
    let mut peer = Py::client(&py, &srv.port_arg(), "echo", &SPECS);
    let client = srv.next_client(T).await;
    peer.finish_ok().await;

    let hello = client.hello().expect("handshake done");
    assert_eq!(hello.version.as_deref(), Some("3.3.0"));
    assert_eq!(hello.protocol_version, "1.0");
    assert!(hello.meta.is_empty());

    assert_python_replies(&peer, &SPECS);
    let got = srv.got();
    assert_eq!(got.len(), SPECS.len());
    for (i, (g, spec)) in got.iter().zip(SPECS).enumerate() {
        assert_eq!(g.peer, client.id());
        assert_eq!(g.message_type, type_of(spec), "{spec}");
        assert_eq!(
            usize::from(g.request_id),
            i,
            "{spec}: Python client ids start at 0"
        );
        assert_bytes(&g.payload, &payload_of(spec), spec);
    }
    assert!(srv.reply_errors().is_empty(), "{:?}", srv.reply_errors());
    srv.stop().await;
}

/// The tokio server drives a connected Python client: `ping(&peer)` returns
/// an RTT, `request(&peer, ..)` of every payload kind gets Python's same-id
/// reply with the same bytes (ids in the server half), and Python printed
/// exactly those bytes with those ids; Python's own `ping_server` against
/// the tokio server returns a float; a reply never reaches the event loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_server_request_and_ping_python_client() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let mut srv = echo_server(local()).await;
    let mut peer = Py::client(&py, &srv.port_arg(), "serve", &[]);
    peer.expect_event("connected").await;
    let client = srv.next_client(T).await;

    let rtt = srv.server.ping(&client, SECS5).await;
    assert!(rtt.is_ok(), "ping of a Python client: {rtt:?}");
    let mut ids = Vec::new();
    for spec in SPECS {
        let reply = srv
            .server
            .request(&client, type_of(spec), payload_of(spec), SECS10)
            .await
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(reply.message_type, type_of(spec), "{spec}");
        assert_bytes(&reply.payload, &payload_of(spec), spec);
        assert!(
            (32768..62768).contains(&reply.request_id),
            "server id {} outside the server half",
            reply.request_id
        );
        ids.push(reply.request_id);
    }
    let ping = peer.expect_event("ping").await;
    assert!(ping["rtt"].is_f64(), "Python ping_server: {ping}");
    peer.finish_ok().await;

    let recv = peer.events("recv");
    assert_eq!(recv.len(), SPECS.len(), "{recv:?}");
    for ((r, spec), id) in recv.iter().zip(SPECS).zip(&ids) {
        assert_eq!(r["type"], u64::from(type_of(spec).0), "{spec}");
        assert_eq!(r["id"], u64::from(*id), "{spec}");
        assert_bytes(&hex_field(r), &payload_of(spec), spec);
    }
    assert!(srv.got().is_empty(), "{:?}", srv.got());
    srv.stop().await;
}

/// `max_connection = 1` on the tokio server: with one Python client
/// connected, a second Python client's `connect()` raises
/// `ServerFullError("server_full")`; once the first leaves, a new Python
/// client is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_server_full_rejects_python_client() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let mut srv = echo_server(local().max_connection(Some(1))).await;
    let port = srv.port_arg();
    let mut first = Py::client(&py, &port, "hold", &[]);
    first.expect_event("connected").await;
    srv.next_client(T).await;
    assert!(srv.server.is_full());

    let mut second = Py::client(&py, &port, "expect_reject", &[]);
    second.finish_ok().await;
    assert_eq!(second.events("rejected")[0]["reason"], "server_full");
    assert_eq!(srv.counts.connects.load(Ordering::SeqCst), 1);

    first.finish_ok().await;
    srv.wait_until("the slot is free", T, |s| !s.server.is_full())
        .await;
    let mut third = Py::client(&py, &port, "echo", &["text"]);
    third.finish_ok().await;
    assert_python_replies(&third, &["text"]);
    let got = srv.got();
    assert_eq!(got.len(), 1);
    assert_bytes(&got[0].payload, &payload_of("text"), "text");
    assert_eq!(srv.counts.connects.load(Ordering::SeqCst), 2);
    srv.stop().await;
}

/// A (fake, raw-socket) Python peer announcing protocol `"2.0"`: the tokio
/// server sends its hello (`pv "1.0"`, exact `json.dumps` layout), then
/// closes without an ack or anything else, and never reports the client.
/// Control: the same fake with `"1.7"` gets the exact ack bytes and is
/// reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_server_closes_on_python_hello_with_major_2() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    // Plain (no caps offered): the hello is compared byte for byte.
    let mut srv = echo_server(ServerConfig::new("127.0.0.1", 0)).await;
    let port = srv.port_arg();
    let hello_body = format!(
        r#"{{"v": "{}", "pv": "1.0", "meta": {{}}}}"#,
        LocalHello::default().version
    );
    let mut want_hello = u16::try_from(hello_body.len())
        .unwrap()
        .to_be_bytes()
        .to_vec();
    want_hello.extend_from_slice(hello_body.as_bytes());

    let mut bad = Py::spawn(
        &py,
        "py_fake_peer.py",
        &["client", "--port", &port, "--pv", "2.0"],
    );
    bad.finish_ok().await;
    let hello = &bad.events("server_hello")[0];
    assert_bytes(&hex_field(hello), &want_hello, "server hello");
    let after = &bad.events("after_hello")[0];
    assert_eq!(after["hex"], "", "the tokio server answered a pv 2.0 hello");
    assert_eq!(
        after["eof"], true,
        "the tokio server kept a pv 2.0 peer open"
    );
    assert_eq!(srv.counts.connects.load(Ordering::SeqCst), 0);
    assert!(srv.server.clients().is_empty());

    let mut ok = Py::spawn(
        &py,
        "py_fake_peer.py",
        &["client", "--port", &port, "--pv", "1.7"],
    );
    ok.finish_ok().await;
    let after = &ok.events("after_hello")[0];
    assert_bytes(
        &hex_field(after),
        &unhex("00107b22726573756c74223a20226f6b227d"),
        "ack",
    );
    let peer = srv.next_client(T).await;
    assert_eq!(peer.hello().unwrap().protocol_version, "1.7");
    assert_eq!(srv.counts.connects.load(Ordering::SeqCst), 1);
    srv.stop().await;
}

/// Python peers that vanish mid-stream — half a frame then FIN, half a
/// frame then RST, a real veltix client that `os._exit`s while sending
/// 8 MiB — leave the tokio server up: the partial frames are never
/// delivered, the reply before them was byte-identical to Python's own
/// `Request.compile()`, every disconnect is reported, and a new Python
/// client then gets correct echoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_server_survives_python_peers_dying_mid_stream() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let srv = echo_server(local()).await;
    let port = srv.port_arg();
    let mut fin = Py::spawn(
        &py,
        "py_fake_peer.py",
        &["partial", "--port", &port, "--close", "close"],
    );
    let mut rst = Py::spawn(
        &py,
        "py_fake_peer.py",
        &["partial", "--port", &port, "--close", "reset"],
    );
    let mut die = Py::client(&py, &port, "die", &[]);
    for p in [&mut fin, &mut rst] {
        p.finish_ok().await;
        let echo = &p.events("echo")[0];
        assert_eq!(echo["hex"], echo["expected_hex"], "tokio reply frame bytes");
        assert_eq!(p.events("partial_sent")[0]["sent"], 515);
    }
    die.finish_ok().await;
    assert_python_replies(&die, &["text"]);
    assert_eq!(die.events("dying").len(), 1);
    srv.wait_until("all three disconnects are reported", T, |s| {
        s.counts.disconnects.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(srv.counts.connects.load(Ordering::SeqCst), 3);
    assert!(srv.server.clients().is_empty());

    let got = srv.got();
    let partial = got
        .iter()
        .filter(|g| g.payload == b"before-partial")
        .count();
    assert_eq!(partial, 2, "{got:?}");
    let eight_mib = payload_of("mib").repeat(8);
    for g in &got {
        match g.payload.len() {
            14 => assert_eq!(g.request_id, 7),
            23 => assert_bytes(&g.payload, &payload_of("text"), "text"),
            // The dying client's frame may or may not have made it whole.
            n if n == eight_mib.len() => assert_bytes(&g.payload, &eight_mib, "8 MiB"),
            n => panic!(
                "a partial or unexpected frame was delivered: {n} bytes, id {}",
                g.request_id
            ),
        }
    }
    let before = got.len();

    let specs = ["text", "bin256", "mib"];
    let mut after = Py::client(&py, &port, "echo", &specs);
    after.finish_ok().await;
    assert_python_replies(&after, &specs);
    let got = srv.got();
    assert_eq!(got.len(), before + specs.len());
    for (g, spec) in got[before..].iter().zip(specs) {
        assert_bytes(&g.payload, &payload_of(spec), spec);
    }
    srv.stop().await;
}

/// 50 Python clients (one process, 50 threads, 50 veltix `Client`s) all
/// connected at once to the tokio server, each echoing its own payload: the
/// server saw 50 simultaneous connections and each client's exact bytes on
/// its own connection, and each client got its own bytes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_python_clients_at_once_on_tokio_server() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    const N: usize = 50;
    let srv = echo_server(local()).await;
    let mut peer = Py::spawn(
        &py,
        "py_client.py",
        &[
            "--port",
            &srv.port_arg(),
            "--scenario",
            "many",
            "--clients",
            "50",
        ],
    );
    peer.finish_ok().await;
    assert_eq!(peer.events("all_connected").len(), 1);

    let want = |i: usize| {
        let mut p = format!("client-{i:02}|").into_bytes();
        p.extend(0..=255u8);
        p
    };
    let mut replies = peer.events("reply");
    assert_eq!(replies.len(), N);
    replies.sort_by_key(|r| r["client"].as_u64());
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r["client"], i);
        assert_eq!(r["match"], true);
        assert_eq!(r["id"], 0, "each client's first id is 0");
        assert_bytes(&hex_field(r), &want(i), "reply");
    }

    let got = srv.got();
    let mut payloads: Vec<Vec<u8>> = got.iter().map(|g| g.payload.clone()).collect();
    payloads.sort();
    assert_eq!(payloads, (0..N).map(want).collect::<Vec<_>>());
    let mut peers: Vec<u64> = got.iter().map(|g| g.peer).collect();
    peers.sort_unstable();
    peers.dedup();
    assert_eq!(peers.len(), N, "one message per connection");
    assert_eq!(srv.counts.peak.load(Ordering::SeqCst), N);
    assert_eq!(srv.counts.connects.load(Ordering::SeqCst), N);
    srv.wait_until("all 50 disconnects are reported", T, |s| {
        s.counts.disconnects.load(Ordering::SeqCst) == N
    })
    .await;
    srv.stop().await;
}

// ------------------------------------------------------------ Python server

async fn py_server(py: &Path, args: &[&str]) -> (Py, u16) {
    let mut peer = Py::spawn(py, "py_server.py", args);
    let listening = peer.expect_event("listening").await;
    (peer, port_of(&listening))
}

async fn connect_client(port: u16) -> Result<Client, Error> {
    let client = Client::new(veltix_tests::negotiating_client(ClientConfig::new(
        "127.0.0.1",
        port,
    )))?;
    client.connect().await?;
    Ok(client)
}

async fn tokio_client(port: u16) -> Client {
    connect_client(port)
        .await
        .expect("connect to the Python server")
}

/// The tokio client against a Python server: `Connected` carries Python's
/// hello; `request` echoes of every payload kind (and JSON floats whose
/// Rust and Python spellings agree) come back with the same id and bytes;
/// Python received exactly those bytes with ids 0, 1, 2, ... (the JSON bytes
/// equal Python's own `json.dumps`); `ping` returns an RTT; `disconnect`
/// is seen by Python.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_request_echo_through_python_server() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let (mut server, port) = py_server(&py, &[]).await;
    let client = tokio_client(port).await;
    let responder = Responder::start(&client);
    server.expect_event("connected").await;

    let floats = payload::json(&json!([1e16, 2.5e-10, 1.5e300, 1e22, 5e-324, 123456.789]))
        .unwrap()
        .to_vec();
    let mut sent: Vec<(MessageType, Vec<u8>)> =
        SPECS.iter().map(|s| (type_of(s), payload_of(s))).collect();
    sent.push((JSON, floats));
    for (i, (t, p)) in sent.iter().enumerate() {
        let reply = client
            .request(*t, p.clone(), SECS10)
            .await
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(reply.message_type, *t);
        assert_eq!(usize::from(reply.request_id), i);
        assert_bytes(&reply.payload, p, &format!("reply {i}"));
    }
    let rtt = client.ping(SECS5).await;
    assert!(rtt.is_ok(), "ping of the Python server: {rtt:?}");
    assert!(client.disconnect().await, "was connected");
    server.expect_event("disconnected").await;
    server.finish_ok().await;

    assert_eq!(responder.hellos().len(), 1);
    assert_eq!(responder.hellos()[0].version.as_deref(), Some("3.3.0"));
    assert!(
        responder.got().is_empty(),
        "a reply reached recv: {:?}",
        responder.got()
    );
    responder.stop().await;
    let recv = server.events("recv");
    assert_eq!(recv.len(), sent.len(), "{recv:?}");
    for (i, (r, (t, p))) in recv.iter().zip(&sent).enumerate() {
        assert_eq!(r["type"], u64::from(t.0));
        assert_eq!(r["id"], i, "tokio client ids start at 0");
        assert_bytes(&hex_field(r), p, &format!("Python received message {i}"));
    }
    assert_eq!(recv[5]["json_equal"], true, "payload::json != json.dumps");
}

/// A Python server drives the tokio client: Python's `ping_client` returns
/// a float and its `send_and_wait` of every payload kind (ids from 32768)
/// gets the tokio client's same-id reply (sent from its `recv` loop) with
/// the same bytes; the tokio client received exactly Python's bytes and
/// ids, and its `Connected` event carried Python's hello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_server_send_and_wait_and_ping_tokio_client() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let mut args = Vec::new();
    for s in SPECS {
        args.extend(["--push", s]);
    }
    let (mut server, port) = py_server(&py, &args).await;
    let client = tokio_client(port).await;
    let responder = Responder::start(&client);
    let done = server.expect_event("push_done").await;
    assert_eq!(done["ok"], true);
    assert!(client.disconnect().await);
    server.finish_ok().await;

    let hellos = responder.hellos();
    assert_eq!(hellos.len(), 1, "{hellos:?}");
    assert_eq!(hellos[0].version.as_deref(), Some("3.3.0"));
    assert_eq!(hellos[0].protocol_version, "1.0");
    let got = responder.got();
    responder.stop().await;

    let ping = &server.events("ping_client")[0];
    assert!(ping["rtt"].is_f64(), "Python ping_client: {ping}");
    let replies = server.events("reply");
    assert_eq!(replies.len(), SPECS.len(), "{replies:?}");
    assert_eq!(got.len(), SPECS.len(), "{got:?}");
    for ((r, g), spec) in replies.iter().zip(&got).zip(SPECS) {
        assert_eq!(r["match"], true, "{spec}");
        assert_eq!(r["type"], u64::from(type_of(spec).0));
        let id = r["sent_id"].as_u64().unwrap();
        assert!((32768..62768).contains(&id), "Python server id {id}");
        assert_eq!(r["id"], id);
        assert_bytes(&hex_field(r), &payload_of(spec), spec);
        assert_eq!(g.message_type, type_of(spec));
        assert_eq!(u64::from(g.request_id), id);
        assert_bytes(&g.payload, &payload_of(spec), spec);
    }
}

/// `max_connection = 1` on a Python server: with one tokio client
/// connected, a second `Client::connect` fails with
/// `Error::Rejected("server_full")`, and the first keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_server_full_rejects_tokio_client() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let (mut server, port) = py_server(&py, &["--max-connection", "1"]).await;
    let first = tokio_client(port).await;
    server.expect_event("connected").await;

    match connect_client(port).await {
        Err(Error::Rejected(reason)) => assert_eq!(reason, "server_full"),
        other => panic!("expected Rejected(server_full), got {other:?}"),
    }

    let reply = first
        .request(ECHO, payload_of("text"), SECS5)
        .await
        .unwrap();
    assert_bytes(&reply.payload, &payload_of("text"), "text");
    assert!(first.disconnect().await);
    server.finish_ok().await;
    assert_eq!(server.events("connected").len(), 1);
    let recv = server.events("recv");
    assert_eq!(recv.len(), 1);
    assert_bytes(&hex_field(&recv[0]), &payload_of("text"), "Python received");
}

/// A (fake, raw-socket) Python server announcing protocol `"2.0"`: the
/// tokio client's `connect` fails with `Error::VersionMismatch("2.0")` and
/// it closes without sending a single byte (no client hello).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_rejects_python_server_hello_with_major_2() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let mut fake = Py::spawn(&py, "py_fake_peer.py", &["server", "--pv", "2.0"]);
    let port = port_of(&fake.expect_event("listening").await);
    match connect_client(port).await {
        Err(Error::VersionMismatch(pv)) => assert_eq!(pv, "2.0"),
        other => panic!("expected VersionMismatch(\"2.0\"), got {other:?}"),
    }
    fake.finish_ok().await;
    let sent = &fake.events("client_sent")[0];
    assert_eq!(sent["hex"], "", "the tokio client answered a pv 2.0 hello");
    assert_eq!(
        sent["eof"], true,
        "the tokio client kept the connection open"
    );
}
