//! veltix-tokio over streams other than TCP: a [`Listener`] of in-memory
//! `tokio::io::duplex` pipes, served plain and with TLS layered over the
//! pipe (`Server::start_on`), and a [`Connector`] that dials by handing the
//! server a fresh pipe (`Client::with_connector`). The first tests speak
//! the protocol by hand (and TLS with `tokio-rustls`); the last runs the
//! driver's client against its server. Nothing here dials TCP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use veltix_proto::frame::{Header, HEADER_LEN};
use veltix_proto::handshake::{encode_hello, parse_body};
use veltix_proto::ClientConfig;
use veltix_proto::{Frame, LocalHello, MessageType, ServerConfig};
use veltix_tests::pki::Pki;
use veltix_tokio::{Client, ClientEvent, Connector, Error, Listener, Server};

const ECHO: MessageType = MessageType::new(200);
/// Any address: the peers of this listener have none.
const NOWHERE: ([u8; 4], u16) = ([127, 0, 0, 2], 1);

/// Hands the server the pipes the test makes.
struct Pipes(mpsc::Receiver<DuplexStream>);

impl Listener for Pipes {
    type Stream = DuplexStream;
    async fn accept(&mut self) -> std::io::Result<(DuplexStream, SocketAddr)> {
        match self.0.recv().await {
            Some(s) => Ok((s, SocketAddr::from(NOWHERE))),
            // No more pipes: accept nothing, forever.
            None => std::future::pending().await,
        }
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(SocketAddr::from(NOWHERE))
    }
}

async fn read_message<S: AsyncRead + Unpin>(
    s: &mut S,
) -> serde_json::Map<String, serde_json::Value> {
    let len = s.read_u16().await.expect("handshake length");
    let mut body = vec![0u8; usize::from(len)];
    s.read_exact(&mut body).await.expect("handshake body");
    parse_body(&body).expect("handshake JSON")
}

/// The client's side of the handshake, then one echo request; returns the reply's payload.
async fn handshake_and_echo<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    payload: &[u8],
) -> Vec<u8> {
    let hello = read_message(s).await;
    assert!(hello.contains_key("pv"), "server hello: {hello:?}");
    s.write_all(&encode_hello(&LocalHello::default()))
        .await
        .expect("client hello");
    let ack = read_message(s).await;
    assert_eq!(ack.get("result").and_then(|v| v.as_str()), Some("ok"));
    let f = Frame::new(ECHO, 7, payload.to_vec())
        .to_vec()
        .expect("frame");
    s.write_all(&f).await.expect("request");
    s.flush().await.expect("flush");
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).await.expect("reply header");
    let header = Header::parse(&h).expect("magic");
    assert_eq!((header.message_type, header.request_id), (ECHO, 7));
    let mut body = vec![0u8; header.payload_len as usize];
    s.read_exact(&mut body).await.expect("reply body");
    body
}

fn echo_server(server: &Server) {
    server
        .route(ECHO, |s: Server, peer, m| async move {
            let _ = s.reply(&peer, &m, ECHO, m.payload.clone());
        })
        .expect("route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_runs_over_in_memory_pipes() {
    let server = Server::new(ServerConfig::new("127.0.0.1", 0)).expect("server");
    echo_server(&server);
    let (tx, rx) = mpsc::channel(4);
    server.start_on(Pipes(rx)).expect("start_on");
    let (mut ours, theirs) = tokio::io::duplex(64 * 1024);
    tx.send(theirs).await.expect("hand over a pipe");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let reply = tokio::time::timeout(Duration::from_secs(10), handshake_and_echo(&mut ours, &big))
        .await
        .expect("echo over a pipe in time");
    assert_eq!(reply, big);
    assert_eq!(server.clients().len(), 1);
    assert!(server.clients()[0].tls_info().is_none());
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_runs_over_any_stream() {
    let pki = Pki::new("Veltix test CA");
    let clients = Pki::new("client CA");
    let tls = veltix_tests::pki::server_tls(&pki.server_cert(), Some(&clients));
    let server = Server::with_tls(ServerConfig::new("127.0.0.1", 0), tls).expect("server");
    echo_server(&server);
    let (tx, rx) = mpsc::channel(4);
    server.start_on(Pipes(rx)).expect("start_on");
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tx.send(theirs).await.expect("hand over a pipe");
    let client_tls = pki.client_tls_with(&clients.client_cert("pipe-client"));
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(client_tls.config()));
    let name = client_tls.name_for("localhost").expect("name");
    let run = async {
        let mut s = connector
            .connect(name, ours)
            .await
            .expect("TLS over a pipe");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"veltix/1"[..]));
        let reply = handshake_and_echo(&mut s, b"through TLS through a pipe").await;
        // The stream stays open until the checks below (dropping it ends the peer).
        (reply, s)
    };
    let (reply, _open) = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("in time");
    assert_eq!(reply, b"through TLS through a pipe");
    let peers = server.clients();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].tls_identity().as_deref(), Some("pipe-client"));
    server.shutdown(Duration::from_secs(1)).await;
}

/// Dials by handing the server one end of a new pipe; counts its dials.
struct PipeDialer {
    to_server: mpsc::Sender<DuplexStream>,
    dials: Arc<AtomicUsize>,
}

impl Connector for PipeDialer {
    type Stream = DuplexStream;
    async fn connect(&self, host: &str, port: u16) -> Result<(DuplexStream, SocketAddr), Error> {
        assert_eq!((host, port), ("localhost", 7), "the config's host and port");
        self.dials.fetch_add(1, Ordering::SeqCst);
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        self.to_server
            .send(theirs)
            .await
            .map_err(|_| Error::Refused("the pipe server is gone".into()))?;
        Ok((ours, SocketAddr::from(NOWHERE)))
    }
}

/// The driver's client and server over pipes only: connect, a request
/// bigger than a pipe's buffer, a server push, and a reconnect through the
/// connector after the server drops the client; with `tls`, all of it
/// inside TLS over the pipes.
async fn client_over_pipes(tls: bool) {
    let pki = Pki::new("Veltix test CA");
    let server = if tls {
        let st = veltix_tests::pki::server_tls(&pki.server_cert(), None);
        Server::with_tls(ServerConfig::new("127.0.0.1", 0), st).expect("server")
    } else {
        Server::new(ServerConfig::new("127.0.0.1", 0)).expect("server")
    };
    echo_server(&server);
    let (tx, rx) = mpsc::channel(4);
    server.start_on(Pipes(rx)).expect("start_on");
    let dials = Arc::new(AtomicUsize::new(0));
    let dialer = PipeDialer {
        to_server: tx,
        dials: Arc::clone(&dials),
    };
    let mut config = ClientConfig::new("localhost", 7);
    config.retry = 3;
    config.retry_delay = Duration::from_millis(20);
    let client_tls = tls.then(|| pki.client_tls());
    let client = Client::with_connector(config, dialer, client_tls).expect("client");
    let run = async {
        client.connect().await.expect("connect over a pipe");
        assert_eq!(client.is_tls(), tls);
        assert_eq!(client.peer_addr(), Some(SocketAddr::from(NOWHERE)));
        assert_eq!(client.local_addr(), None, "pipes have no local address");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let reply = client
            .request(ECHO, big.clone(), Some(Duration::from_secs(5)))
            .await
            .expect("echo");
        assert_eq!(reply.payload, big);
        let peer = server.clients().pop().expect("one peer");
        assert_eq!(peer.tls_info().is_some(), tls);
        server
            .send(&peer, ECHO, b"pushed".to_vec(), None)
            .await
            .expect("push");
        loop {
            match client.recv().await {
                Some(ClientEvent::Message(f)) => {
                    assert_eq!(&f.payload[..], b"pushed");
                    break;
                }
                Some(ClientEvent::Connected(_)) => {}
                other => panic!("expected the push, got {other:?}"),
            }
        }
        // The server drops the client: the client dials again through the
        // connector and works as before.
        assert!(server.close_client(&peer));
        loop {
            match client.recv().await {
                Some(ClientEvent::Connected(_)) => break,
                Some(ClientEvent::Disconnected(_)) => {}
                other => panic!("expected a reconnect, got {other:?}"),
            }
        }
        let reply = client
            .request(ECHO, b"again".to_vec(), Some(Duration::from_secs(5)))
            .await
            .expect("echo after the reconnect");
        assert_eq!(&reply.payload[..], b"again");
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("in time");
    assert_eq!(dials.load(Ordering::SeqCst), 2, "one dial per connection");
    client.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dials_through_any_connector() {
    client_over_pipes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_runs_tls_over_any_connector() {
    client_over_pipes(true).await;
}
