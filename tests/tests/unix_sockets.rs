//! Both drivers over Unix sockets, one test source on every pair (std and
//! tokio servers, std and tokio clients): the transport seam of each driver
//! (`Server::start_on` with its Unix listener, `Client::with_connector`
//! with a Unix connector), plain and with TLS over the socket. The socket
//! has no IP address: both drivers report `0.0.0.0:0` for its peers.
#![cfg(unix)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use veltix_proto::{ClientConfig, MessageType, ServerConfig};
use veltix_tests::drivers::{ClientApi, Driver, PeerApi, ServerApi, UNIX_ADDR};
use veltix_tests::harness::wait_until;
use veltix_tests::pairs;
use veltix_tests::pki::Pki;

const ECHO: MessageType = MessageType::new(200);
const PUSH: MessageType = MessageType::new(201);

/// A fresh socket path, removed when dropped.
struct SocketPath(PathBuf);

impl SocketPath {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "veltix-unix-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&p);
        SocketPath(p)
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Connect, a request bigger than a socket buffer, a server push, then the
/// server drops the client and the client dials again through its
/// connector; with `tls`, all of it inside TLS over the socket.
fn echo_push_reconnect<S: Driver, C: Driver>(tls: bool) {
    let path = SocketPath::new();
    let pki = Pki::new("Veltix test CA");
    let server = S::unix_server(
        ServerConfig::new("127.0.0.1", 0),
        tls.then(|| pki.server_tls()),
        &path.0,
    )
    .expect("server on a Unix socket");
    assert_eq!(server.local_addr(), Some(UNIX_ADDR));
    server
        .route(ECHO, |s, p, m| {
            let _ = s.reply(p, &m, ECHO, m.payload.clone());
        })
        .expect("route");
    let mut config = ClientConfig::new("localhost", 0);
    config.retry = 5;
    config.retry_delay = Duration::from_millis(20);
    let client = C::unix_client(config, tls.then(|| pki.client_tls()), &path.0).expect("client");
    let pushed = Arc::new(Mutex::new(Vec::new()));
    let p = Arc::clone(&pushed);
    client.on_recv(move |_, f| p.lock().unwrap().push(f.payload.to_vec()));
    client.connect().expect("connect over a Unix socket");
    assert_eq!(client.is_tls(), tls);
    assert_eq!(client.peer_addr(), Some(UNIX_ADDR));
    assert_eq!(client.local_addr(), None, "a Unix socket has no IP address");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let reply = client
        .request(ECHO, big.clone(), Some(Duration::from_secs(5)))
        .expect("echo");
    assert_eq!(reply.payload, big);
    let peer = server.clients().pop().expect("one peer");
    assert_eq!(peer.addr(), UNIX_ADDR);
    assert_eq!(peer.tls_info().is_some(), tls);
    server
        .send(&peer, PUSH, b"pushed".to_vec(), None)
        .expect("push");
    wait_until("the push arrives", || {
        pushed.lock().unwrap().as_slice() == [b"pushed".to_vec()]
    });
    assert!(server.close_client(&peer));
    wait_until("the client is back on a new connection", || {
        client.is_connected() && server.clients().iter().any(|p| p.id() != peer.id())
    });
    let reply = client
        .request(ECHO, b"again".to_vec(), Some(Duration::from_secs(5)))
        .expect("echo after the reconnect");
    assert_eq!(&reply.payload[..], b"again");
    client.disconnect();
    server.shutdown(Duration::from_secs(1));
}

fn plain<S: Driver, C: Driver>() {
    echo_push_reconnect::<S, C>(false);
}

fn tls<S: Driver, C: Driver>() {
    echo_push_reconnect::<S, C>(true);
}

pairs!(plain, tls);
