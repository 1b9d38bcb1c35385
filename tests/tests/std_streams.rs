//! veltix-std over streams other than TCP: a server on a
//! `mio::net::UnixListener` (`Server::start_on`) and clients that dial the
//! socket's path (`Client::with_connector`), plain and with TLS layered over
//! the Unix socket; and connections over socketpairs, one end handed to the
//! server by a channel-fed `Listener`, the other returned by the client's
//! `Connector` (streams connected before the driver sees them). Nothing here
//! dials TCP.
//!
//! Every wait is bounded: requests and pings carry timeouts, channel
//! receives and polls have deadlines, and `connect` runs on a thread the test
//! gives up on.
#![cfg(unix)]

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use veltix_std::mio::net::{UnixListener, UnixStream};
use veltix_std::mio::{event::Source, Interest, Registry, Token};
use veltix_std::{
    Client, ClientConfig, ClientTls, Connector, DisconnectReason, DisconnectState, Error, Frame,
    Io, Listener, MessageType, Server, ServerConfig, ServerTls,
};
use veltix_tests::pki::{self, Pki};

const ECHO: MessageType = MessageType::new(200);
const PUSH: MessageType = MessageType::new(201);
const T: Option<Duration> = Some(Duration::from_secs(5));
/// What the std `UnixListener` reports for itself and its peers.
const UNIX_ADDR: ([u8; 4], u16) = ([0, 0, 0, 0], 0);
/// The placeholder the test's connectors and pair listener report.
const NOWHERE: ([u8; 4], u16) = ([127, 0, 0, 2], 1);

// ------------------------------------------------------------------ helpers

/// A Unix socket path unique to this process and test, removed on drop.
struct SockPath(PathBuf);

impl SockPath {
    fn new(test: &str) -> SockPath {
        let p = std::env::temp_dir().join(format!("veltix-std-{}-{test}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        SockPath(p)
    }
    fn listen(&self) -> UnixListener {
        UnixListener::bind(&self.0).expect("bind the Unix socket")
    }
}

impl Drop for SockPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Dials a Unix socket path; counts its dials.
struct UnixConnector {
    path: PathBuf,
    dials: Arc<AtomicUsize>,
}

impl UnixConnector {
    fn new(path: &Path) -> (UnixConnector, Arc<AtomicUsize>) {
        let dials = Arc::new(AtomicUsize::new(0));
        let c = UnixConnector {
            path: path.to_owned(),
            dials: dials.clone(),
        };
        (c, dials)
    }
}

impl Connector for UnixConnector {
    type Stream = UnixStream;
    fn connect(&self, _host: &str, _port: u16) -> Result<(UnixStream, SocketAddr), Error> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let s = UnixStream::connect(&self.path)?;
        Ok((s, SocketAddr::from(NOWHERE)))
    }
}

/// The sending side of a [`Pairs`] listener: queues a stream, then rings
/// the bell (a byte on a socketpair the listener is registered with).
struct Handover {
    tx: mpsc::Sender<UnixStream>,
    bell: Mutex<UnixStream>,
}

impl Handover {
    fn hand_over(&self, s: UnixStream) {
        self.tx.send(s).expect("the listener is alive");
        // A full bell already has a wake-up pending.
        let _ = self.bell.lock().unwrap().write(&[1]);
    }
}

/// A listener of streams connected elsewhere (socketpair ends), fed by a
/// channel: readable when its bell rings.
struct Pairs {
    rx: mpsc::Receiver<UnixStream>,
    bell: UnixStream,
    /// `local_addr` fails (for `start_on`'s error).
    no_addr: bool,
}

fn pairs() -> (Pairs, Arc<Handover>) {
    let (tx, rx) = mpsc::channel();
    let (ring, bell) = UnixStream::pair().expect("socketpair");
    let l = Pairs {
        rx,
        bell,
        no_addr: false,
    };
    let h = Handover {
        tx,
        bell: Mutex::new(ring),
    };
    (l, Arc::new(h))
}

impl Source for Pairs {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> std::io::Result<()> {
        self.bell.register(r, t, i)
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> std::io::Result<()> {
        self.bell.reregister(r, t, i)
    }
    fn deregister(&mut self, r: &Registry) -> std::io::Result<()> {
        self.bell.deregister(r)
    }
}

impl Listener for Pairs {
    type Stream = UnixStream;
    fn accept(&mut self) -> std::io::Result<(UnixStream, SocketAddr)> {
        // The bell first, the queue after: a stream queued before a ring
        // that is drained here is found below.
        let mut sink = [0u8; 64];
        while matches!(self.bell.read(&mut sink), Ok(n) if n > 0) {}
        match self.rx.try_recv() {
            Ok(s) => Ok((s, SocketAddr::from(NOWHERE))),
            Err(_) => Err(ErrorKind::WouldBlock.into()),
        }
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        if self.no_addr {
            return Err(std::io::Error::new(ErrorKind::NotConnected, "no address"));
        }
        Ok(SocketAddr::from(NOWHERE))
    }
}

/// Opens each connection as a socketpair: one end to the server's
/// [`Pairs`] listener, the other returned, connected already (boxed, as a
/// connector that picks its stream type at run time would).
struct PairConnector {
    handover: Arc<Handover>,
    dials: Arc<AtomicUsize>,
}

impl Connector for PairConnector {
    type Stream = Box<dyn Io>;
    fn connect(&self, _host: &str, _port: u16) -> Result<(Box<dyn Io>, SocketAddr), Error> {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let (ours, theirs) = UnixStream::pair()?;
        self.handover.hand_over(theirs);
        Ok((Box::new(ours), SocketAddr::from(NOWHERE)))
    }
}

/// Runs `f` on a thread; panics if it has not returned within `limit`.
#[track_caller]
fn within<R: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> R {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(_) => panic!("{what} did not return within {limit:?}"),
    }
}

/// `client.connect()`, bounded.
#[track_caller]
fn connect(client: &Client) -> Result<(), Error> {
    let c = client.clone();
    within("connect", Duration::from_secs(15), move || c.connect())
}

/// Polls `cond` every 5 ms; panics after 5 s.
#[track_caller]
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn echo_server(server: &Server) {
    server
        .route(ECHO, |s, peer, m| {
            let _ = s.reply(peer, &m, ECHO, m.payload.clone());
        })
        .expect("route");
}

fn plain_server() -> Server {
    let s = Server::new(ServerConfig::new("localhost", 0)).expect("server");
    echo_server(&s);
    s
}

/// A mutual-TLS server (its clients need a certificate of `clients`).
fn tls_server(pki: &Pki, clients: &Pki) -> Server {
    let tls: ServerTls = pki::server_tls(&pki.server_cert(), Some(clients));
    let s = Server::with_tls(ServerConfig::new("localhost", 0), tls).expect("server");
    echo_server(&s);
    s
}

/// Client settings: the name "localhost" is what TLS verifies; the port is
/// never used (the connectors ignore both).
fn client_config() -> ClientConfig {
    ClientConfig::new("localhost", 0).handshake_timeout(Duration::from_secs(5))
}

/// Frames of `PUSH` the client receives.
fn pushes(client: &Client) -> mpsc::Receiver<Frame> {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    client
        .route(PUSH, move |_, f| {
            let _ = tx.lock().unwrap().send(f);
        })
        .expect("route");
    rx
}

/// The echo, a server push and pings both ways over `client`'s connection,
/// the server's one peer.
#[track_caller]
fn exchange(server: &Server, client: &Client, pushed: &mpsc::Receiver<Frame>, what: &str) {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let reply = client.request(ECHO, big.clone(), T).expect("echo");
    assert_eq!(reply.payload.as_ref(), &big[..], "{what}: echo");
    let peers = server.clients();
    assert_eq!(peers.len(), 1, "{what}: one peer");
    server
        .send(&peers[0], PUSH, what.to_owned(), T)
        .expect("push");
    let f = pushed
        .recv_timeout(Duration::from_secs(5))
        .expect("the push arrives");
    assert_eq!(f.text().expect("text"), what);
    assert!(client.ping(T).is_ok(), "{what}: client ping");
    assert!(server.ping(&peers[0], T).is_ok(), "{what}: server ping");
}

// ------------------------------------------------------------------ tests

#[test]
fn a_server_and_a_client_run_over_a_unix_socket() {
    let path = SockPath::new("plain");
    let server = plain_server();
    server.start_on(path.listen()).expect("start_on");
    assert_eq!(server.local_addr(), Some(SocketAddr::from(UNIX_ADDR)));
    assert!(matches!(server.start(), Err(Error::AlreadyRunning)));
    assert!(matches!(
        server.start_on(pairs().0),
        Err(Error::AlreadyRunning)
    ));

    let (connector, dials) = UnixConnector::new(&path.0);
    let client = Client::with_connector(client_config(), connector, None).expect("client");
    assert!(!client.is_tls());
    let pushed = pushes(&client);
    connect(&client).expect("connect over the Unix socket");
    assert!(client.is_connected());
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    // The connector's address; a Unix socket has no local IP address.
    assert_eq!(client.peer_addr(), Some(SocketAddr::from(NOWHERE)));
    assert_eq!(client.local_addr(), None);
    assert!(client.tls_info().is_none());
    assert_eq!(
        client.server_hello().expect("hello").protocol_version,
        "1.0"
    );

    exchange(&server, &client, &pushed, "over a Unix socket");
    let peer = &server.clients()[0];
    assert_eq!(peer.addr(), SocketAddr::from(UNIX_ADDR));
    assert!(peer.handshake_done());
    assert!(peer.tls_info().is_none());

    assert!(client.disconnect());
    wait_until("the server saw the client leave", || {
        server.clients().is_empty()
    });
    server.shutdown(Duration::from_secs(1));
    assert_eq!(server.local_addr(), None);
}

#[test]
fn the_client_dials_again_after_the_server_closes_it() {
    let path = SockPath::new("reconnect");
    let server = plain_server();
    server.start_on(path.listen()).expect("start_on");
    let (connector, dials) = UnixConnector::new(&path.0);
    let client = Client::with_connector(
        client_config()
            .retry(5)
            .retry_delay(Duration::from_millis(50)),
        connector,
        None,
    )
    .expect("client");
    let connects = Arc::new(AtomicUsize::new(0));
    let n = connects.clone();
    client.on_connect(move |_| {
        n.fetch_add(1, Ordering::SeqCst);
    });
    let states = Arc::new(Mutex::new(Vec::<DisconnectState>::new()));
    let st = states.clone();
    client.on_disconnect(move |_, s| st.lock().unwrap().push(s.clone()));
    let pushed = pushes(&client);
    connect(&client).expect("connect");
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    exchange(&server, &client, &pushed, "first connection");
    let first = server.clients()[0].id();

    assert!(server.close_client(&server.clients()[0]));
    wait_until("the client reconnected", || {
        connects.load(Ordering::SeqCst) == 2 && client.is_connected()
    });
    assert_eq!(
        dials.load(Ordering::SeqCst),
        2,
        "the connector dialled again"
    );
    let seen = states.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].reason, DisconnectReason::ServerClosed);
    assert!(!seen[0].permanent);
    exchange(&server, &client, &pushed, "after the reconnect");
    assert_ne!(server.clients()[0].id(), first, "a new connection");

    client.disconnect();
    server.shutdown(Duration::from_secs(1));
}

#[test]
fn tls_runs_over_a_unix_socket() {
    let path = SockPath::new("tls");
    let pki = Pki::new("Veltix test CA");
    let clients = Pki::new("client CA");
    let server = tls_server(&pki, &clients);
    server.start_on(path.listen()).expect("start_on");
    let (connector, _) = UnixConnector::new(&path.0);
    let tls: ClientTls = pki.client_tls_with(&clients.client_cert("unix-client"));
    let client = Client::with_connector(client_config(), connector, Some(tls)).expect("client");
    assert!(client.is_tls());
    let pushed = pushes(&client);
    connect(&client).expect("TLS over a Unix socket");
    let info = client.tls_info().expect("negotiated TLS");
    assert_eq!(info.alpn.as_deref(), Some(&b"veltix/1"[..]));
    assert_eq!(info.peer_identity.as_deref(), Some(pki::SERVER_CN));
    exchange(&server, &client, &pushed, "TLS over a Unix socket");
    let peer = &server.clients()[0];
    assert_eq!(peer.tls_identity().as_deref(), Some("unix-client"));
    assert_eq!(peer.addr(), SocketAddr::from(UNIX_ADDR));
    client.disconnect();
    server.shutdown(Duration::from_secs(1));
}

/// A plaintext client reaches a TLS server over a Unix socket: the server
/// takes the silent peer for a plaintext Veltix client (its probe, half the
/// handshake deadline) and answers `tls_required`, as over TCP.
#[test]
fn a_plaintext_client_of_a_tls_server_over_a_unix_socket_is_told_tls_required() {
    let path = SockPath::new("tls-required");
    let pki = Pki::new("Veltix test CA");
    let tls = pki.server_tls();
    let server = Server::with_tls(
        ServerConfig::new("localhost", 0).handshake_timeout(Duration::from_secs(1)),
        tls,
    )
    .expect("server");
    server.start_on(path.listen()).expect("start_on");
    let (connector, _) = UnixConnector::new(&path.0);
    let client = Client::with_connector(
        ClientConfig::new("localhost", 0).handshake_timeout(Duration::from_secs(3)),
        connector,
        None,
    )
    .expect("client");
    let t0 = Instant::now();
    match connect(&client) {
        Err(Error::Rejected(reason)) => assert_eq!(reason, veltix_tls::TLS_REQUIRED),
        other => panic!("expected Rejected(tls_required), got {other:?}"),
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "took {took:?} (probe at 500 ms)"
    );
    assert!(server.clients().is_empty());
    server.shutdown(Duration::from_secs(1));
}

/// Connections over socketpairs: streams connected before the driver sees
/// them, on both sides. The client's connector hands one end to the
/// server's listener and keeps the other; a reconnect makes a new pair.
#[test]
fn socketpairs_handed_over_carry_connections_and_reconnects() {
    let server = plain_server();
    let (listener, handover) = pairs();
    server.start_on(listener).expect("start_on");
    assert_eq!(server.local_addr(), Some(SocketAddr::from(NOWHERE)));
    let dials = Arc::new(AtomicUsize::new(0));
    let connector = PairConnector {
        handover,
        dials: dials.clone(),
    };
    let client = Client::with_connector(
        client_config()
            .retry(5)
            .retry_delay(Duration::from_millis(50)),
        connector,
        None,
    )
    .expect("client");
    let pushed = pushes(&client);
    connect(&client).expect("connect over a socketpair");
    assert_eq!(client.peer_addr(), Some(SocketAddr::from(NOWHERE)));
    exchange(&server, &client, &pushed, "over a socketpair");
    assert_eq!(server.clients()[0].addr(), SocketAddr::from(NOWHERE));

    assert!(server.close_client(&server.clients()[0]));
    wait_until("the client reconnected over a new pair", || {
        dials.load(Ordering::SeqCst) == 2 && client.is_connected() && server.clients().len() == 1
    });
    exchange(&server, &client, &pushed, "over the second socketpair");
    client.disconnect();
    server.shutdown(Duration::from_secs(1));
}

#[test]
fn tls_runs_over_socketpairs() {
    let pki = Pki::new("Veltix test CA");
    let clients = Pki::new("client CA");
    let server = tls_server(&pki, &clients);
    let (listener, handover) = pairs();
    server.start_on(listener).expect("start_on");
    let connector = PairConnector {
        handover,
        dials: Arc::new(AtomicUsize::new(0)),
    };
    let tls = pki.client_tls_with(&clients.client_cert("pair-client"));
    let client = Client::with_connector(client_config(), connector, Some(tls)).expect("client");
    let pushed = pushes(&client);
    connect(&client).expect("TLS over a socketpair");
    assert!(client.tls_info().is_some());
    exchange(&server, &client, &pushed, "TLS over a socketpair");
    assert_eq!(
        server.clients()[0].tls_identity().as_deref(),
        Some("pair-client")
    );
    client.disconnect();
    server.shutdown(Duration::from_secs(1));
}

/// `start_on` with a listener that has no address fails with `Error::Io`
/// and leaves the server stopped, ready for another listener.
#[test]
fn start_on_a_listener_without_an_address_is_an_io_error() {
    let server = plain_server();
    let (mut broken, _h) = pairs();
    broken.no_addr = true;
    match server.start_on(broken) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), ErrorKind::NotConnected),
        other => panic!("expected Error::Io, got {other:?}"),
    }
    assert_eq!(server.local_addr(), None, "not running");
    let (listener, handover) = pairs();
    server
        .start_on(listener)
        .expect("a working listener starts");
    let client = Client::with_connector(
        client_config(),
        PairConnector {
            handover,
            dials: Arc::new(AtomicUsize::new(0)),
        },
        None,
    )
    .expect("client");
    connect(&client).expect("connect");
    assert_eq!(
        client
            .request(ECHO, "up", T)
            .expect("echo")
            .text()
            .expect("text"),
        "up"
    );
    client.disconnect();
    server.shutdown(Duration::from_secs(1));
}

/// A connector's I/O errors are reported as TCP connect errors are: a
/// socket file with no listener is `Refused`, a missing path stays `Io`.
#[test]
fn connector_errors_are_mapped_as_connect_errors() {
    let path = SockPath::new("refused");
    // Bound, then closed: the file stays, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&path.0).expect("bind"));
    let (connector, dials) = UnixConnector::new(&path.0);
    let client = Client::with_connector(client_config(), connector, None).expect("client");
    match connect(&client) {
        Err(Error::Refused(name)) => assert_eq!(name, "localhost:0"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(dials.load(Ordering::SeqCst), 1, "no retry by default");

    let missing = SockPath::new("missing");
    let (connector, _) = UnixConnector::new(&missing.0);
    let client = Client::with_connector(client_config(), connector, None).expect("client");
    match connect(&client) {
        Err(Error::Io(e)) => assert_eq!(e.kind(), ErrorKind::NotFound),
        other => panic!("expected Io(NotFound), got {other:?}"),
    }
    assert!(!client.is_connected());
}
