//! The two Rust drivers against each other on loopback, both directions:
//! `veltix_std` clients ⇄ a `veltix_tokio` server, and `veltix_tokio`
//! clients ⇄ a `veltix_std` server. Handshake, echo of every payload kind
//! (up to 1 MiB), requests and pings started from either end, broadcast
//! from each server kind (one frame, one id, to clients of the other kind),
//! `max_connection` refusals, and per-connection ordering of 10 000
//! messages. Every test asserts, byte for byte and id for id, what the
//! *other* driver received.
//!
//! Blocking `veltix_std` calls run on tokio's blocking pool
//! ([`off`]), never on the runtime's workers.
//!
//! The last section holds regression tests of `veltix_tokio`'s `recv`
//! loops ending (both failed on the driver before its rebuild on the one
//! API; see their docs).

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use veltix_tests::specs::{assert_bytes, echo_answer, payload_of, type_of, ECHO, JSON, SPECS};
use veltix_tests::tokio_peers::{off, Got, Responder, TokioEcho};
use veltix_tokio::{
    ClientConfig, ClientEvent, Error, LocalHello, MessageType, ServerConfig, ServerEvent,
};

/// Broadcast frames: recorded, never answered.
const BCAST: MessageType = MessageType::new(202);
/// Ordering frames: recorded, never answered.
const SEQ: MessageType = MessageType::new(203);
/// Upper bound for any single wait.
const T: Duration = Duration::from_secs(20);
const SECS5: Option<Duration> = Some(Duration::from_secs(5));
const SECS10: Option<Duration> = Some(Duration::from_secs(10));

fn local() -> ServerConfig {
    ServerConfig::new("127.0.0.1", 0)
}

/// Polls `cond` (blocking-free) until it holds; panics after [`T`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------- std side

/// A `veltix_std` server: ECHO/JSON routed and answered with
/// [`echo_answer`], every other type recorded by `on_recv`; connected
/// clients handed out by [`next_client`](Self::next_client).
struct StdEcho {
    server: veltix_std::Server,
    port: u16,
    got: Arc<Mutex<Vec<Got>>>,
    /// Replies a route could not queue (a callback panic would be caught
    /// and only logged by the pool, so failures are recorded instead).
    reply_errors: Arc<Mutex<Vec<String>>>,
    connected: mpsc::Receiver<veltix_std::ClientInfo>,
}

impl StdEcho {
    async fn start(config: ServerConfig) -> StdEcho {
        off(move || {
            let server = veltix_std::Server::new(config).unwrap();
            let got = Arc::new(Mutex::new(Vec::new()));
            let reply_errors = Arc::new(Mutex::new(Vec::new()));
            for t in [ECHO, JSON] {
                let (got, errors) = (got.clone(), reply_errors.clone());
                server
                    .route(t, move |s, c, msg| {
                        got.lock().unwrap().push(Got::of(c.id(), &msg));
                        if let Err(e) = s.reply(c, &msg, msg.message_type, echo_answer(&msg)) {
                            errors.lock().unwrap().push(format!(
                                "reply to peer {} id {}: {e}",
                                c.id(),
                                msg.request_id
                            ));
                        }
                    })
                    .unwrap();
            }
            {
                let got = got.clone();
                server.on_recv(move |_, c, msg| got.lock().unwrap().push(Got::of(c.id(), &msg)));
            }
            let (tx, connected) = mpsc::channel();
            let tx = Mutex::new(tx);
            server.on_connect(move |_, c| {
                let _ = tx.lock().unwrap().send(c.clone());
            });
            server.start().unwrap();
            let port = server.local_addr().unwrap().port();
            StdEcho {
                server,
                port,
                got,
                reply_errors,
                connected,
            }
        })
        .await
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    async fn next_client(&self) -> veltix_std::ClientInfo {
        let deadline = Instant::now() + T;
        loop {
            match self.connected.try_recv() {
                Ok(c) => return c,
                Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("no client connected to the std server: {e:?}"),
            }
        }
    }

    async fn stop(self) {
        let server = self.server.clone();
        off(move || server.shutdown(Duration::from_secs(1))).await;
        let errors = self.reply_errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "{errors:?}");
    }
}

/// A connected `veltix_std` client whose every message is recorded
/// (peer 0) and ECHO/JSON ones answered with [`echo_answer`].
async fn std_client(port: u16) -> (veltix_std::Client, Arc<Mutex<Vec<Got>>>) {
    let (client, got) = std_client_unconnected(port);
    let c = client.clone();
    off(move || c.connect()).await.expect("std client connects");
    (client, got)
}

fn std_client_unconnected(port: u16) -> (veltix_std::Client, Arc<Mutex<Vec<Got>>>) {
    let client = veltix_std::Client::new(ClientConfig::new("127.0.0.1", port)).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    {
        let got = got.clone();
        client.on_recv(move |c, msg| {
            got.lock().unwrap().push(Got::of(0, &msg));
            if msg.message_type == ECHO || msg.message_type == JSON {
                c.reply(&msg, msg.message_type, echo_answer(&msg)).unwrap();
            }
        });
    }
    (client, got)
}

async fn std_disconnect(client: &veltix_std::Client) -> bool {
    let c = client.clone();
    off(move || c.disconnect()).await
}

async fn tokio_client(port: u16) -> veltix_tokio::Client {
    let client = veltix_tokio::Client::new(ClientConfig::new("127.0.0.1", port)).unwrap();
    client.connect().await.expect("tokio client connects");
    client
}

#[track_caller]
fn assert_echoes_received(got: &[Got], peer: u64) {
    assert_eq!(got.len(), SPECS.len(), "{got:?}");
    for (i, (g, spec)) in got.iter().zip(SPECS).enumerate() {
        assert_eq!(g.peer, peer, "{spec}");
        assert_eq!(g.message_type, type_of(spec), "{spec}");
        assert_eq!(usize::from(g.request_id), i, "{spec}: client ids from 0");
        assert_bytes(&g.payload, &payload_of(spec), spec);
    }
}

// ------------------------------------------------ handshake, echo, ping

/// std client → tokio server: the handshake completes (the tokio server
/// reports the std client's hello: its crate version, pv "1.0", no meta);
/// `request` of every payload kind comes back with the same id and
/// bytes; the tokio server received exactly those bytes with ids 0, 1, ...;
/// `ping` returns an RTT; the disconnect is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn std_client_echo_and_ping_through_tokio_server() {
    let mut srv = TokioEcho::start(local()).await;
    let (client, client_got) = std_client(srv.port).await;
    let peer = srv.next_client(T).await;
    let hello = peer.hello().expect("hello");
    assert_eq!(hello.version, Some(LocalHello::default().version));
    assert_eq!(hello.protocol_version, "1.0");
    assert!(hello.meta.is_empty());

    let c = client.clone();
    let replies = off(move || {
        SPECS
            .iter()
            .map(|s| c.request(type_of(s), payload_of(s), SECS10))
            .collect::<Vec<_>>()
    })
    .await;
    for (i, (r, spec)) in replies.into_iter().zip(SPECS).enumerate() {
        let r = r.unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(r.message_type, type_of(spec));
        assert_eq!(usize::from(r.request_id), i);
        assert_bytes(&r.payload, &payload_of(spec), spec);
    }
    let c = client.clone();
    assert!(off(move || c.ping(SECS5)).await.is_ok());
    assert_echoes_received(&srv.got(), peer.id());
    assert!(
        client_got.lock().unwrap().is_empty(),
        "a reply reached on_recv"
    );

    assert!(std_disconnect(&client).await);
    srv.wait_until("the disconnect is reported", T, |s| {
        s.counts.disconnects.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(srv.reply_errors().is_empty(), "{:?}", srv.reply_errors());
    srv.stop().await;
}

/// tokio client → std server: `Connected` carries the std server's hello;
/// `request` of every payload kind comes back with the same id and bytes;
/// the std server received exactly those bytes with ids 0, 1, ... and the
/// tokio client's hello; `ping` returns an RTT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_echo_and_ping_through_std_server() {
    let srv = StdEcho::start(local()).await;
    let client = tokio_client(srv.port).await;
    let responder = Responder::start(&client);
    let info = srv.next_client().await;
    let hello = info.hello().expect("hello");
    assert_eq!(hello.version, Some(LocalHello::default().version));
    assert_eq!(hello.protocol_version, "1.0");

    for (i, spec) in SPECS.iter().enumerate() {
        let r = client
            .request(type_of(spec), payload_of(spec), SECS10)
            .await
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(r.message_type, type_of(spec));
        assert_eq!(usize::from(r.request_id), i);
        assert_bytes(&r.payload, &payload_of(spec), spec);
    }
    assert!(client.ping(SECS5).await.is_ok());
    assert_echoes_received(&srv.got(), info.id());

    let hellos = responder.hellos();
    assert_eq!(hellos.len(), 1);
    assert_eq!(hellos[0].version, Some(LocalHello::default().version));
    assert_eq!(hellos[0].protocol_version, "1.0");
    assert!(responder.got().is_empty(), "a reply reached recv");
    assert!(client.disconnect().await);
    responder.stop().await;
    srv.stop().await;
}

/// Server-initiated, tokio server → std client: `ping(&peer)` returns an
/// RTT and `request(&peer, ..)` of every payload kind gets the std client's
/// same-id reply; the std client's `on_recv` got exactly those bytes and
/// ids (in the server half).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_server_requests_and_pings_std_client() {
    let mut srv = TokioEcho::start(local()).await;
    let (client, client_got) = std_client(srv.port).await;
    let peer = srv.next_client(T).await;

    assert!(srv.server.ping(&peer, SECS5).await.is_ok());
    let mut ids = Vec::new();
    for spec in SPECS {
        let r = srv
            .server
            .request(&peer, type_of(spec), payload_of(spec), SECS10)
            .await
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(r.message_type, type_of(spec));
        assert!((32768..62768).contains(&r.request_id), "{}", r.request_id);
        assert_bytes(&r.payload, &payload_of(spec), spec);
        ids.push(r.request_id);
    }
    let got = client_got.lock().unwrap().clone();
    assert_eq!(got.len(), SPECS.len(), "{got:?}");
    for ((g, spec), id) in got.iter().zip(SPECS).zip(&ids) {
        assert_eq!(g.message_type, type_of(spec));
        assert_eq!(g.request_id, *id, "{spec}");
        assert_bytes(&g.payload, &payload_of(spec), spec);
    }
    assert!(srv.got().is_empty(), "a reply reached the event loop");
    std_disconnect(&client).await;
    srv.stop().await;
}

/// Server-initiated, std server → tokio client: `ping(&peer)` returns an
/// RTT and `request(&peer, ..)` of every payload kind gets the tokio client's
/// same-id reply (from its `recv` loop); the tokio client received exactly
/// those bytes and ids (in the server half).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn std_server_requests_and_pings_tokio_client() {
    let srv = StdEcho::start(local()).await;
    let client = tokio_client(srv.port).await;
    let responder = Responder::start(&client);
    let info = srv.next_client().await;

    let (s, i) = (srv.server.clone(), info.clone());
    let (rtt, replies) = off(move || {
        let rtt = s.ping(&i, SECS5);
        let replies: Vec<_> = SPECS
            .iter()
            .map(|spec| s.request(&i, type_of(spec), payload_of(spec), SECS10))
            .collect();
        (rtt, replies)
    })
    .await;
    assert!(rtt.is_ok(), "ping of a tokio client: {rtt:?}");
    let mut ids = Vec::new();
    for (r, spec) in replies.into_iter().zip(SPECS) {
        let r = r.unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(r.message_type, type_of(spec));
        assert!((32768..62768).contains(&r.request_id), "{}", r.request_id);
        assert_bytes(&r.payload, &payload_of(spec), spec);
        ids.push(r.request_id);
    }
    let got = responder.got();
    assert_eq!(got.len(), SPECS.len(), "{got:?}");
    for ((g, spec), id) in got.iter().zip(SPECS).zip(&ids) {
        assert_eq!(g.message_type, type_of(spec));
        assert_eq!(g.request_id, *id, "{spec}");
        assert_bytes(&g.payload, &payload_of(spec), spec);
    }
    assert!(srv.got().is_empty(), "a reply reached a server callback");
    assert!(client.disconnect().await);
    responder.stop().await;
    srv.stop().await;
}

// ------------------------------------------------------------- broadcast

fn broadcast_payload(n: u8) -> Vec<u8> {
    let mut p = format!("broadcast-{n}|").into_bytes();
    p.extend(0..=255u8);
    p
}

/// Checks that each client got exactly `want` (payload, excluded clients)
/// broadcasts, each with one id shared by all its receivers, in the server
/// half, distinct between broadcasts.
#[track_caller]
fn assert_broadcasts(per_client: &[Vec<Got>], want: &[(Vec<u8>, Vec<usize>)]) {
    let mut ids = Vec::new();
    for (b, (payload, except)) in want.iter().enumerate() {
        let mut id = None;
        for (c, got) in per_client.iter().enumerate() {
            let hits: Vec<&Got> = got.iter().filter(|g| g.payload == *payload).collect();
            if except.contains(&c) {
                assert!(hits.is_empty(), "excluded client {c} got broadcast {b}");
                continue;
            }
            assert_eq!(hits.len(), 1, "client {c}, broadcast {b}: {got:?}");
            assert_eq!(hits[0].message_type, BCAST);
            assert_bytes(&hits[0].payload, payload, "broadcast");
            match id {
                None => id = Some(hits[0].request_id),
                Some(i) => assert_eq!(hits[0].request_id, i, "broadcast {b}: one id"),
            }
        }
        let id = id.expect("someone received it");
        assert!((32768..62768).contains(&id), "broadcast id {id}");
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), want.len(), "each broadcast has its own id");
    for (c, got) in per_client.iter().enumerate() {
        let n = want.iter().filter(|(_, e)| !e.contains(&c)).count();
        assert_eq!(got.len(), n, "client {c} got something else: {got:?}");
    }
}

/// The tokio server broadcasts to three std clients (once to all, once
/// except the first): every receiver got the same bytes with one id per
/// broadcast, the excluded one nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_server_broadcast_reaches_std_clients_with_one_id() {
    let mut srv = TokioEcho::start(local()).await;
    let mut clients = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..3 {
        clients.push(std_client(srv.port).await);
        peers.push(srv.next_client(T).await);
    }
    let want = vec![
        (broadcast_payload(0), vec![]),
        (broadcast_payload(1), vec![0]),
    ];
    for (p, except) in &want {
        let except: Vec<_> = except.iter().map(|&i| peers[i].clone()).collect();
        let n = if except.is_empty() {
            srv.server.broadcast(BCAST, p)
        } else {
            srv.server.broadcast_except(BCAST, p, &except)
        }
        .unwrap();
        assert_eq!(n, 3 - except.len());
    }
    wait_until("every broadcast arrived", || {
        clients
            .iter()
            .map(|(_, g)| g.lock().unwrap().len())
            .sum::<usize>()
            == 5
    })
    .await;
    let per_client: Vec<Vec<Got>> = clients
        .iter()
        .map(|(_, g)| g.lock().unwrap().clone())
        .collect();
    assert_broadcasts(&per_client, &want);
    for (c, _) in &clients {
        std_disconnect(c).await;
    }
    srv.stop().await;
}

/// The std server broadcasts to three tokio clients (once to all, once
/// except the first): every receiver's `recv` got the same bytes with one
/// id per broadcast, the excluded one nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn std_server_broadcast_reaches_tokio_clients_with_one_id() {
    let srv = StdEcho::start(local()).await;
    let mut clients = Vec::new();
    let mut infos = Vec::new();
    for _ in 0..3 {
        let c = tokio_client(srv.port).await;
        let r = Responder::start(&c);
        clients.push((c, r));
        infos.push(srv.next_client().await);
    }
    let want = vec![
        (broadcast_payload(0), vec![]),
        (broadcast_payload(1), vec![0]),
    ];
    for (p, except) in &want {
        let except: Vec<_> = except.iter().map(|&i| infos[i].clone()).collect();
        let n = if except.is_empty() {
            srv.server.broadcast(BCAST, p)
        } else {
            srv.server.broadcast_except(BCAST, p, &except)
        }
        .unwrap();
        assert_eq!(n, 3 - except.len());
    }
    wait_until("every broadcast arrived", || {
        clients.iter().map(|(_, r)| r.got().len()).sum::<usize>() == 5
    })
    .await;
    let per_client: Vec<Vec<Got>> = clients.iter().map(|(_, r)| r.got()).collect();
    assert_broadcasts(&per_client, &want);
    for (c, r) in clients {
        assert!(c.disconnect().await);
        r.stop().await;
    }
    srv.stop().await;
}

// -------------------------------------------------------- max_connection

/// `max_connection = 1` on the tokio server: a second std client's
/// `connect` fails with `Error::Rejected("server_full")` and is never
/// reported; the first keeps working; once it leaves a new one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_server_full_rejects_std_client() {
    let mut srv = TokioEcho::start(local().max_connection(Some(1))).await;
    let (first, _) = std_client(srv.port).await;
    srv.next_client(T).await;
    assert!(srv.server.is_full());

    let (second, _) = std_client_unconnected(srv.port);
    let s = second.clone();
    match off(move || s.connect()).await {
        Err(Error::Rejected(reason)) => assert_eq!(reason, "server_full"),
        other => panic!("expected Rejected(server_full), got {other:?}"),
    }
    assert!(!second.is_connected());
    let f = first.clone();
    let r = off(move || f.request(ECHO, payload_of("text"), SECS5))
        .await
        .unwrap();
    assert_bytes(&r.payload, &payload_of("text"), "text");
    assert_eq!(srv.counts.connects.load(Ordering::SeqCst), 1);

    std_disconnect(&first).await;
    srv.wait_until("the slot is free", T, |s| !s.server.is_full())
        .await;
    let (third, _) = std_client(srv.port).await;
    srv.next_client(T).await;
    let got = srv.got();
    assert_eq!(got.len(), 1);
    assert_bytes(&got[0].payload, &payload_of("text"), "text");
    std_disconnect(&third).await;
    srv.stop().await;
}

/// `max_connection = 1` on the std server: a second tokio client's
/// `connect` fails with `Error::Rejected("server_full")`; the first
/// keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn std_server_full_rejects_tokio_client() {
    let srv = StdEcho::start(local().max_connection(Some(1))).await;
    let first = tokio_client(srv.port).await;
    srv.next_client().await;

    let second = veltix_tokio::Client::new(ClientConfig::new("127.0.0.1", srv.port)).unwrap();
    match second.connect().await {
        Err(Error::Rejected(reason)) => assert_eq!(reason, "server_full"),
        other => panic!("expected Rejected(server_full), got {other:?}"),
    }
    let r = first
        .request(ECHO, payload_of("text"), SECS5)
        .await
        .unwrap();
    assert_bytes(&r.payload, &payload_of("text"), "text");
    assert_eq!(srv.server.clients().len(), 1);
    let got = srv.got();
    assert_eq!(got.len(), 1);
    assert_bytes(&got[0].payload, &payload_of("text"), "text");
    assert!(first.disconnect().await);
    srv.stop().await;
}

// ---------------------------------------------------------------- ordering

const ORDERED: usize = 10_000;

/// Message `i` of the ordering tests: its index (u32 BE), then `i % 61`
/// bytes `i & 0xff`, so sizes and contents vary.
fn seq_payload(i: usize) -> Vec<u8> {
    let mut p = u32::try_from(i).unwrap().to_be_bytes().to_vec();
    p.extend(std::iter::repeat_n((i & 0xff) as u8, i % 61));
    p
}

#[track_caller]
fn assert_in_order(got: &[Got], ids: &[u16], peer: u64) {
    assert_eq!(got.len(), ORDERED);
    for (i, (g, id)) in got.iter().zip(ids).enumerate() {
        assert_eq!(g.peer, peer);
        assert_eq!(g.message_type, SEQ);
        if g.payload != seq_payload(i) {
            panic!(
                "message {i} out of order or corrupted: got index {:?}, {} bytes",
                g.payload.get(..4),
                g.payload.len()
            );
        }
        assert_eq!(g.request_id, *id, "message {i}: the id `send` returned");
    }
}

/// 10 000 `send`s from one std client arrive at the tokio server in order,
/// each with its exact bytes and the id `send` returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_in_order_std_client_to_tokio_server() {
    let mut srv = TokioEcho::start(local()).await;
    let (client, _) = std_client(srv.port).await;
    let peer = srv.next_client(T).await;
    let c = client.clone();
    let ids = off(move || {
        (0..ORDERED)
            .map(|i| c.send(SEQ, seq_payload(i), None).unwrap())
            .collect::<Vec<u16>>()
    })
    .await;
    srv.wait_until("all 10 000 arrived", T, |s| s.got().len() >= ORDERED)
        .await;
    assert_in_order(&srv.got(), &ids, peer.id());
    std_disconnect(&client).await;
    srv.stop().await;
}

/// 10 000 `send`s from one tokio client arrive at the std server in order,
/// each with its exact bytes and the id `send` returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_in_order_tokio_client_to_std_server() {
    let srv = StdEcho::start(local()).await;
    let client = tokio_client(srv.port).await;
    let info = srv.next_client().await;
    let mut ids = Vec::with_capacity(ORDERED);
    for i in 0..ORDERED {
        ids.push(client.send(SEQ, seq_payload(i), None).await.unwrap());
    }
    wait_until("all 10 000 arrived", || srv.got().len() >= ORDERED).await;
    assert_in_order(&srv.got(), &ids, info.id());
    assert!(client.disconnect().await);
    srv.stop().await;
}

// --------------------------- veltix-tokio: recv loops end (regressions)

/// `Server::recv` promises `None` after `shutdown`. Regression: before the
/// driver's rebuild, a `recv` already pending when `shutdown` runs, with no peer
/// connected (so no `Disconnected` event wakes it), never returns — it is
/// parked in `rx.recv().await`, the channel's sender lives in the server's
/// own `Shared` (kept alive by the loop's clone), and the `stopping` flag is
/// only checked before waiting. The crate docs' own pattern (a spawned
/// `while let Some(ev) = s.recv().await` loop, then `shutdown`) leaks that
/// task and the server with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_server_recv_pending_at_shutdown_returns_none() {
    let server = veltix_tokio::Server::new(local()).unwrap();
    server.start().await.unwrap();
    let s = server.clone();
    let events = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(ev) = s.recv().await {
            seen.push(ev);
        }
        seen
    });
    // A client came and went: the loop saw it all and is now waiting.
    let c = tokio_client(server.local_addr().unwrap().port()).await;
    assert!(c.disconnect().await);
    wait_until("the disconnect is reported", || server.clients().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    server.shutdown(Duration::from_secs(1)).await;
    let seen = tokio::time::timeout(Duration::from_secs(3), events)
        .await
        .expect("Server::recv pending at shutdown never returned None")
        .unwrap();
    assert!(matches!(seen[0], ServerEvent::Connected(_)), "{seen:?}");
    assert!(matches!(seen[1], ServerEvent::Disconnected(..)), "{seen:?}");
}

/// `Client::recv` promises `None` after `disconnect` once every event was
/// taken. Regression: before the driver's rebuild, after the server closed the connection
/// (no retry: the loop gets `Disconnected { permanent: true, ServerClosed }`
/// and waits again), `disconnect()` finds no current connection, emits
/// nothing and does not wake the pending `recv`, which never returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_recv_pending_after_server_close_returns_none_on_disconnect() {
    let srv = StdEcho::start(local()).await;
    let client = tokio_client(srv.port).await;
    let c = client.clone();
    let events = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(ev) = c.recv().await {
            seen.push(ev);
        }
        seen
    });
    let info = srv.next_client().await;
    assert!(srv.server.close_client(&info));
    wait_until("the client notices", || !client.is_connected()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    client.disconnect().await;
    let seen = tokio::time::timeout(Duration::from_secs(3), events)
        .await
        .expect("Client::recv pending after a server close never returned None")
        .unwrap();
    assert!(matches!(seen[0], ClientEvent::Connected(_)), "{seen:?}");
    assert!(
        matches!(&seen[1], ClientEvent::Disconnected(st) if st.permanent),
        "{seen:?}"
    );
    srv.stop().await;
}
