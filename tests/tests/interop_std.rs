//! Live interop between `veltix_std` and the real Python veltix 3.3.0, both
//! directions: Rust [`Server`] ⇄ Python clients and Python server ⇄ Rust
//! [`Client`], driving the peer scripts in `tests/python/`.
//!
//! Every test asserts what the *peer* received, byte for byte: the Python
//! scripts print the full hex of every payload they get, and the Rust side
//! records everything its callbacks see. Payloads are named by "specs"
//! (`empty`, `text`, `bin256`, `frame`, `mib`, `json`, `hex:..`) that
//! `tests/python/peer_common.py` and [`payload_of`] build identically.
//!
//! Without Python veltix 3.3.0 each test prints a loud warning and passes
//! locally; under CI it fails (see [`veltix_tests::python`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use veltix_std::{
    payload, Client, ClientConfig, ClientInfo, Error, LocalHello, MessageType, Server, ServerConfig,
};
use veltix_tests::specs::{assert_bytes, hex_field, payload_of, type_of, unhex, ECHO, JSON, SPECS};
use veltix_tests::{negotiating_client, negotiating_server, PyPeer};

/// Upper bound for any single wait on a peer.
const T: Duration = Duration::from_secs(20);

fn port_of(v: &Value) -> u16 {
    u16::try_from(v["port"].as_u64().expect("port")).expect("port fits u16")
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------ Rust server

/// One message a Rust callback saw.
#[derive(Debug, Clone)]
struct Got {
    /// `ClientInfo::id` on the server, 0 on a client.
    client: u64,
    message_type: MessageType,
    request_id: u16,
    payload: Vec<u8>,
}

/// A Rust echo server that records everything it receives and tracks its
/// connections. ECHO is answered with the same bytes, JSON with
/// `payload::json` of the decoded value; both with the request's id.
struct EchoServer {
    server: Server,
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    connected: mpsc::Receiver<ClientInfo>,
    connects: Arc<AtomicUsize>,
    disconnects: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Handlers that panicked (the pool catches and logs them).
    panics: Arc<AtomicUsize>,
}

/// Counts a handler that unwinds.
struct PanicCount<'a>(&'a AtomicUsize);

impl Drop for PanicCount<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl EchoServer {
    fn start(config: ServerConfig) -> EchoServer {
        let server = Server::new(config).unwrap();
        let panics = Arc::new(AtomicUsize::new(0));
        let got = Arc::new(Mutex::new(Vec::new()));
        for t in [ECHO, JSON] {
            let got = got.clone();
            let panics = panics.clone();
            server
                .route(t, move |server, client, msg| {
                    let _count = PanicCount(&panics);
                    got.lock().unwrap().push(Got {
                        client: client.id(),
                        message_type: msg.message_type,
                        request_id: msg.request_id,
                        payload: msg.payload.to_vec(),
                    });
                    let reply = if msg.message_type == JSON {
                        payload::json(&msg.json::<Value>().unwrap()).unwrap()
                    } else {
                        msg.payload.clone()
                    };
                    // A peer that died mid-stream may be gone by the time its
                    // earlier message is handled: its reply is refused.
                    match server.reply(client, &msg, msg.message_type, reply) {
                        Ok(()) | Err(Error::NotConnected | Error::Closed(_)) => {}
                        Err(e) => panic!("reply: {e}"),
                    }
                })
                .unwrap();
        }
        let (tx, connected) = mpsc::channel();
        let tx = Mutex::new(tx);
        let connects = Arc::new(AtomicUsize::new(0));
        let disconnects = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        {
            let (connects, current, peak) = (connects.clone(), current.clone(), peak.clone());
            server.on_connect(move |_, client| {
                connects.fetch_add(1, Ordering::SeqCst);
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let _ = tx.lock().unwrap().send(client.clone());
            });
        }
        {
            let disconnects = disconnects.clone();
            server.on_disconnect(move |_, _| {
                current.fetch_sub(1, Ordering::SeqCst);
                disconnects.fetch_add(1, Ordering::SeqCst);
            });
        }
        server.start().unwrap();
        let port = server.local_addr().unwrap().port();
        EchoServer {
            server,
            port,
            got,
            connected,
            connects,
            disconnects,
            peak,
            panics,
        }
    }

    fn port_arg(&self) -> String {
        self.port.to_string()
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn next_client(&self) -> ClientInfo {
        self.connected
            .recv_timeout(T)
            .expect("no client connected to the Rust server")
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.server.shutdown(Duration::from_secs(2));
    }
}

fn py_client(py: &std::path::Path, port: &str, scenario: &str, specs: &[&str]) -> PyPeer {
    let mut args = vec!["--port", port, "--scenario", scenario];
    for s in specs {
        args.extend(["--payload", s]);
    }
    PyPeer::spawn(py, "py_client.py", &args)
}

/// Checks the `reply` lines of a Python `echo` run against the specs.
#[track_caller]
fn assert_python_replies(peer: &PyPeer, specs: &[&str]) {
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

/// Handshake with a Python client, then Python `send_and_wait` echoes of
/// every payload kind through the Rust server: the Rust server got exactly
/// Python's bytes (JSON: exactly `payload::json` of the same value, i.e.
/// Python's `json.dumps`), with Python's ids 0, 1, 2, ..., and Python got
/// back exactly what it sent.
#[test]
fn python_client_send_and_wait_echo_through_rust_server() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let srv = EchoServer::start(negotiating_server(ServerConfig::new("127.0.0.1", 0)));
    let mut peer = py_client(&py, &srv.port_arg(), "echo", &SPECS);
    peer.finish_ok(T);

    let client = srv.next_client();
    let hello = client.hello().expect("handshake done");
    assert_eq!(hello.version.as_deref(), Some("3.3.0"));
    assert_eq!(hello.protocol_version, "1.0");
    assert!(hello.meta.is_empty());

    assert_python_replies(&peer, &SPECS);
    let got = srv.got();
    assert_eq!(got.len(), SPECS.len());
    for (i, (g, spec)) in got.iter().zip(SPECS).enumerate() {
        assert_eq!(g.client, client.id());
        assert_eq!(g.message_type, type_of(spec), "{spec}");
        assert_eq!(
            usize::from(g.request_id),
            i,
            "{spec}: Python client ids start at 0"
        );
        assert_bytes(&g.payload, &payload_of(spec), spec);
    }
    assert_eq!(srv.panics.load(Ordering::SeqCst), 0, "a handler panicked");
}

/// The Rust server drives a connected Python client: `ping_client` returns
/// Some, `send_and_wait` of every payload kind gets Python's same-id reply
/// with the same bytes (JSON re-encoded by Python's `json.dumps` equals
/// Rust's `payload::json`), and Python printed exactly those bytes; Python's
/// own `ping_server` against the Rust server returns a float.
#[test]
fn rust_server_send_and_wait_and_ping_python_client() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let srv = EchoServer::start(negotiating_server(ServerConfig::new("127.0.0.1", 0)));
    let mut peer = py_client(&py, &srv.port_arg(), "serve", &[]);
    peer.expect_event("connected", T);
    let client = srv.next_client();

    let rtt = srv.server.ping(&client, Some(Duration::from_secs(5)));
    assert!(rtt.is_ok(), "ping on a Python client: {rtt:?}");
    let mut ids = Vec::new();
    for spec in SPECS {
        let reply = srv
            .server
            .request(
                &client,
                type_of(spec),
                payload_of(spec),
                Some(Duration::from_secs(10)),
            )
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
    let ping = peer.expect_event("ping", T);
    assert!(ping["rtt"].is_f64(), "Python ping_server: {ping}");
    peer.finish_ok(T);

    // What the Python client received, in order, byte for byte.
    let recv = peer.events("recv");
    assert_eq!(recv.len(), SPECS.len(), "{recv:?}");
    for ((r, spec), id) in recv.iter().zip(SPECS).zip(&ids) {
        assert_eq!(r["type"], u64::from(type_of(spec).0), "{spec}");
        assert_eq!(r["id"], u64::from(*id), "{spec}");
        assert_bytes(&hex_field(r), &payload_of(spec), spec);
    }
    // A reply is never routed as a new message on the Rust side.
    assert!(srv.got().is_empty(), "{:?}", srv.got());
}

/// `max_connection = 1` on the Rust server: with one Python client
/// connected, a second Python client's `connect()` raises
/// `ServerFullError("server_full")`; once the first leaves, a new Python
/// client is served again.
#[test]
fn rust_server_full_rejects_python_client() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let srv = EchoServer::start(
        negotiating_server(ServerConfig::new("127.0.0.1", 0)).max_connection(Some(1)),
    );
    let port = srv.port_arg();
    let mut first = py_client(&py, &port, "hold", &[]);
    first.expect_event("connected", T);
    srv.next_client();
    assert!(srv.server.is_full());

    let mut second = py_client(&py, &port, "expect_reject", &[]);
    second.finish_ok(T);
    assert_eq!(second.events("rejected")[0]["reason"], "server_full");
    assert_eq!(srv.connects.load(Ordering::SeqCst), 1);

    first.finish_ok(T);
    wait_until("the slot is free", || !srv.server.is_full());
    let mut third = py_client(&py, &port, "echo", &["text"]);
    third.finish_ok(T);
    assert_python_replies(&third, &["text"]);
    assert_eq!(srv.got().len(), 1);
    assert_bytes(&srv.got()[0].payload, &payload_of("text"), "text");
}

/// A (fake, raw-socket) Python peer announcing protocol `"2.0"`: the Rust
/// server sends its hello (`pv "1.0"`, exact `json.dumps` layout), then
/// closes without sending an ack or anything else, and never reports the
/// client. Control: the same fake with `"1.7"` gets the exact ack bytes.
#[test]
fn rust_server_closes_on_python_hello_with_major_2() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let srv = EchoServer::start(ServerConfig::new("127.0.0.1", 0));
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

    let mut bad = PyPeer::spawn(
        &py,
        "py_fake_peer.py",
        &["client", "--port", &port, "--pv", "2.0"],
    );
    bad.finish_ok(T);
    let hello = &bad.events("server_hello")[0];
    assert_bytes(&hex_field(hello), &want_hello, "server hello");
    let after = &bad.events("after_hello")[0];
    assert_eq!(after["hex"], "", "the Rust server answered a pv 2.0 hello");
    assert_eq!(
        after["eof"], true,
        "the Rust server kept a pv 2.0 peer open"
    );
    assert_eq!(srv.connects.load(Ordering::SeqCst), 0);
    assert!(srv.server.clients().is_empty());

    let mut ok = PyPeer::spawn(
        &py,
        "py_fake_peer.py",
        &["client", "--port", &port, "--pv", "1.7"],
    );
    ok.finish_ok(T);
    let after = &ok.events("after_hello")[0];
    assert_bytes(
        &hex_field(after),
        &unhex("00107b22726573756c74223a20226f6b227d"),
        "ack",
    );
    srv.next_client();
}

/// Python peers that vanish mid-stream — half a frame then FIN, half a
/// frame then RST, a real veltix client that `os._exit`s while sending
/// 8 MiB — leave the Rust server up: the partial frames are never delivered,
/// the Rust reply before them was byte-identical to Python's own
/// `Request.compile()`, every disconnect is noticed, and a new Python client
/// then gets correct echoes.
#[test]
fn rust_server_survives_python_peers_dying_mid_stream() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let srv = EchoServer::start(negotiating_server(ServerConfig::new("127.0.0.1", 0)));
    let port = srv.port_arg();
    let mut fin = PyPeer::spawn(
        &py,
        "py_fake_peer.py",
        &["partial", "--port", &port, "--close", "close"],
    );
    let mut rst = PyPeer::spawn(
        &py,
        "py_fake_peer.py",
        &["partial", "--port", &port, "--close", "reset"],
    );
    let mut die = py_client(&py, &port, "die", &[]);
    for p in [&mut fin, &mut rst] {
        p.finish_ok(T);
        let echo = &p.events("echo")[0];
        assert_eq!(echo["hex"], echo["expected_hex"], "Rust reply frame bytes");
        assert_eq!(p.events("partial_sent")[0]["sent"], 515);
    }
    die.finish_ok(T);
    assert_python_replies(&die, &["text"]);
    assert_eq!(die.events("dying").len(), 1);
    wait_until("all three disconnects are seen", || {
        srv.disconnects.load(Ordering::SeqCst) == 3
    });
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
    let mut after = py_client(&py, &port, "echo", &specs);
    after.finish_ok(T);
    assert_python_replies(&after, &specs);
    let got = srv.got();
    assert_eq!(got.len(), before + specs.len());
    for (g, spec) in got[before..].iter().zip(specs) {
        assert_bytes(&g.payload, &payload_of(spec), spec);
    }
    assert_eq!(srv.panics.load(Ordering::SeqCst), 0, "a handler panicked");
}

/// 50 Python clients (one process, 50 threads, 50 veltix `Client`s) all
/// connected at once to the Rust server, each echoing its own payload: the
/// server saw 50 simultaneous connections and each client's exact bytes,
/// and each client got its own bytes back.
#[test]
fn fifty_python_clients_at_once() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    const N: usize = 50;
    let srv = EchoServer::start(negotiating_server(ServerConfig::new("127.0.0.1", 0)));
    let mut peer = PyPeer::spawn(
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
    peer.finish_ok(T);
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

    let mut got: Vec<Vec<u8>> = srv.got().into_iter().map(|g| g.payload).collect();
    got.sort();
    assert_eq!(got, (0..N).map(want).collect::<Vec<_>>());
    let mut clients: Vec<u64> = srv.got().iter().map(|g| g.client).collect();
    clients.sort_unstable();
    clients.dedup();
    assert_eq!(clients.len(), N, "one message per connection");
    assert_eq!(srv.peak.load(Ordering::SeqCst), N);
    assert_eq!(srv.connects.load(Ordering::SeqCst), N);
}

// ------------------------------------------------------------ Python server

fn py_server(py: &std::path::Path, args: &[&str]) -> (PyPeer, u16) {
    let mut peer = PyPeer::spawn(py, "py_server.py", args);
    let listening = peer.expect_event("listening", T);
    (peer, port_of(&listening))
}

fn rust_client(port: u16) -> Client {
    Client::new(negotiating_client(ClientConfig::new("127.0.0.1", port))).unwrap()
}

/// The Rust client against a Python server: `send_and_wait` echoes of every
/// payload kind come back with the same id and bytes; Python received
/// exactly those bytes with ids 0, 1, 2, ... (and the JSON bytes equal
/// Python's own `json.dumps` of the object); a JSON value with float
/// exponents (`1e+16`, `2.5e-10`) survives Python's decode/re-encode
/// unchanged; `ping_server`
/// returns Some.
#[test]
fn rust_client_send_and_wait_echo_through_python_server() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let (mut server, port) = py_server(&py, &[]);
    let client = rust_client(port);
    client.connect().unwrap();
    server.expect_event("connected", T);

    // Floats whose Rust and Python spellings agree (see
    // `rust_json_small_floats_match_python_json_dumps` for those that do not).
    let floats = payload::json(&json!([1e16, 2.5e-10, 1.5e300, 1e22, 5e-324, 123456.789]))
        .unwrap()
        .to_vec();
    let mut sent: Vec<(MessageType, Vec<u8>)> =
        SPECS.iter().map(|s| (type_of(s), payload_of(s))).collect();
    sent.push((JSON, floats));
    for (i, (t, p)) in sent.iter().enumerate() {
        let reply = client
            .request(*t, p.clone(), Some(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
        assert_eq!(reply.message_type, *t);
        assert_eq!(usize::from(reply.request_id), i);
        assert_bytes(&reply.payload, p, &format!("reply {i}"));
    }
    assert!(client.ping(Some(Duration::from_secs(5))).is_ok());
    client.disconnect();
    server.expect_event("disconnected", T);
    server.finish_ok(T);

    let recv = server.events("recv");
    assert_eq!(recv.len(), sent.len(), "{recv:?}");
    for (i, (r, (t, p))) in recv.iter().zip(&sent).enumerate() {
        assert_eq!(r["type"], u64::from(t.0));
        assert_eq!(r["id"], i, "Rust client ids start at 0");
        assert_bytes(&hex_field(r), p, &format!("Python received message {i}"));
    }
    assert_eq!(recv[5]["json_equal"], true, "payload::json != json.dumps");
}

/// `payload::json` promises Python's `json.dumps` bytes; a Python server
/// decodes what Rust sent and re-encodes it with `json.dumps` (its `json=`
/// helper). Regression test: for `0 < |x| < 1e-4` Python writes
/// `repr(float)` (`9.9e-05`, `1e-05`, `1e-07`: exponent form, at least two
/// exponent digits); veltix-proto used to write `0.000099`, `0.00001`,
/// `1e-7` (same value, other bytes) until its formatter copied `repr`.
#[test]
fn rust_json_small_floats_match_python_json_dumps() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let (mut server, port) = py_server(&py, &[]);
    let client = rust_client(port);
    client.connect().unwrap();
    let sent = payload::json(&json!([9.9e-5, 1e-5, 1.5e-6, 1e-7, 1.2345e-8, 1e-10])).unwrap();
    let reply = client
        .request(JSON, sent.clone(), Some(Duration::from_secs(10)))
        .unwrap();
    client.disconnect();
    server.finish_ok(T);
    let python = String::from_utf8(reply.payload.to_vec()).unwrap();
    assert_eq!(
        python,
        "[9.9e-05, 1e-05, 1.5e-06, 1e-07, 1.2345e-08, 1e-10]"
    );
    let recv = &server.events("recv")[0];
    assert_bytes(&hex_field(recv), &sent, "Python received");
    assert_eq!(
        std::str::from_utf8(&sent).unwrap(),
        python,
        "veltix_proto::payload::json differs from Python's json.dumps for the same floats"
    );
}

/// A Python server drives the Rust client: Python's `ping_client` returns a
/// float and its `send_and_wait` of every payload kind (ids from 32768) gets
/// the Rust client's same-id reply with the same bytes; the Rust client's
/// route received exactly Python's bytes.
#[test]
fn python_server_send_and_wait_and_ping_rust_client() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let mut args = Vec::new();
    for s in SPECS {
        args.extend(["--push", s]);
    }
    let (mut server, port) = py_server(&py, &args);
    let client = rust_client(port);
    let got = Arc::new(Mutex::new(Vec::<Got>::new()));
    for t in [ECHO, JSON] {
        let got = got.clone();
        client
            .route(t, move |c, msg| {
                got.lock().unwrap().push(Got {
                    client: 0,
                    message_type: msg.message_type,
                    request_id: msg.request_id,
                    payload: msg.payload.to_vec(),
                });
                let reply = if msg.message_type == JSON {
                    payload::json(&msg.json::<Value>().unwrap()).unwrap()
                } else {
                    msg.payload.clone()
                };
                c.reply(&msg, msg.message_type, reply).unwrap();
            })
            .unwrap();
    }
    client.connect().unwrap();
    let done = server.expect_event("push_done", T);
    assert_eq!(done["ok"], true);
    client.disconnect();
    server.finish_ok(T);

    let ping = &server.events("ping_client")[0];
    assert!(ping["rtt"].is_f64(), "Python ping_client: {ping}");
    let replies = server.events("reply");
    assert_eq!(replies.len(), SPECS.len(), "{replies:?}");
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), SPECS.len());
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

/// `max_connection = 1` on a Python server: with one Rust client connected,
/// a second Rust client's `connect()` fails with
/// `Error::Rejected("server_full")`, and the first keeps working.
#[test]
fn python_server_full_rejects_rust_client() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let (mut server, port) = py_server(&py, &["--max-connection", "1"]);
    let first = rust_client(port);
    first.connect().unwrap();
    server.expect_event("connected", T);

    let second = rust_client(port);
    match second.connect() {
        Err(Error::Rejected(reason)) => assert_eq!(reason, "server_full"),
        other => panic!("expected Rejected(server_full), got {other:?}"),
    }
    assert!(!second.is_connected());

    let reply = first
        .request(ECHO, payload_of("text"), Some(Duration::from_secs(5)))
        .unwrap();
    assert_bytes(&reply.payload, &payload_of("text"), "text");
    first.disconnect();
    server.finish_ok(T);
    assert_eq!(server.events("connected").len(), 1);
    let recv = server.events("recv");
    assert_eq!(recv.len(), 1);
    assert_bytes(&hex_field(&recv[0]), &payload_of("text"), "Python received");
}

/// A (fake, raw-socket) Python server announcing protocol `"2.0"`: the Rust
/// client's `connect()` fails with `Error::VersionMismatch("2.0")` and it
/// closes without sending a single byte (no client hello).
#[test]
fn rust_client_rejects_python_server_hello_with_major_2() {
    let Some(py) = veltix_tests::python() else {
        return;
    };
    let mut fake = PyPeer::spawn(&py, "py_fake_peer.py", &["server", "--pv", "2.0"]);
    let port = port_of(&fake.expect_event("listening", T));
    let client = rust_client(port);
    match client.connect() {
        Err(Error::VersionMismatch(pv)) => assert_eq!(pv, "2.0"),
        other => panic!("expected VersionMismatch(\"2.0\"), got {other:?}"),
    }
    fake.finish_ok(T);
    let sent = &fake.events("client_sent")[0];
    assert_eq!(sent["hex"], "", "the Rust client answered a pv 2.0 hello");
    assert_eq!(
        sent["eof"], true,
        "the Rust client kept the connection open"
    );
}
