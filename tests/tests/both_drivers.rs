//! Both drivers, one test source: every test body is a generic
//! `fn name<D: Driver>()` over the synchronous facade of
//! `veltix_tests::drivers`, instantiated by `both!` as
//! `std_driver::name` (veltix-std) and `tokio_driver::name` (veltix-tokio).
//! A behaviour that differs between the drivers fails on one of them.
//!
//! Which test exercises each method of API.md (on both drivers):
//!
//! | method                                   | test(s)                                          |
//! |------------------------------------------|--------------------------------------------------|
//! | Client::new, connect, config             | echo_request_ping_both_ways (and most others)    |
//! | client.on_connect / on_disconnect        | connect_disconnect_and_handshake_done, reconnects_after_server_restart |
//! | client.on_recv                           | echo_request_ping_both_ways, broadcasts_reach_exactly_their_targets |
//! | client.route                             | handlers_run_in_order_per_peer, route_twice_and_reserved_types |
//! | client.is_connected                      | connect_disconnect_and_handshake_done            |
//! | client.send / try_send                   | echo_request_ping_both_ways, client_send_waits_try_send_refuses_disconnect_bounded |
//! | client.send_system                       | route_twice_and_reserved_types                   |
//! | client.reply / request / ping            | echo_request_ping_both_ways                      |
//! | client.retry / stop_retry                | stop_retry_ends_the_loop_and_retry_starts_one    |
//! | client.disconnect                        | connect_disconnect_and_handshake_done, client_send_waits_try_send_refuses_disconnect_bounded |
//! | client.wait_closed                       | connect_disconnect_and_handshake_done, stop_retry_ends_the_loop_and_retry_starts_one |
//! | client.server_hello, peer_addr, local_addr, stats | echo_request_ping_both_ways             |
//! | Server::new, start, local_addr, config   | echo_request_ping_both_ways                      |
//! | server.on_connect / on_disconnect        | connect_disconnect_and_handshake_done            |
//! | server.on_recv, route                    | echo_request_ping_both_ways, route_twice_and_reserved_types |
//! | server.clients, clients_by_tag           | broadcasts_reach_exactly_their_targets           |
//! | server.send / try_send                   | echo_request_ping_both_ways, server_send_waits_try_send_refuses_shutdown_bounded |
//! | server.reply / request / ping            | echo_request_ping_both_ways                      |
//! | server.broadcast, broadcast_except, broadcast_to, broadcast_tag | broadcasts_reach_exactly_their_targets |
//! | server.close_client                      | connect_disconnect_and_handshake_done            |
//! | server.shutdown, wait_closed             | server_send_waits_try_send_refuses_shutdown_bounded |
//! | server.is_full, stats                    | max_connection_one_rejects_then_frees, echo_request_ping_both_ways |
//! | peer.id, addr, ip, port, hello, stats    | echo_request_ping_both_ways                      |
//! | peer.handshake_done                      | connect_disconnect_and_handshake_done            |
//! | peer.add_tag, set_tag, get_tag, has_tag, has_all_tags, has_any_tags, remove_tag, clear_tags, tags | broadcasts_reach_exactly_their_targets (and connect_disconnect_and_handshake_done: after the peer left) |
//!
//! Reserved types (< 200) are checked against every sending method in
//! route_twice_and_reserved_types.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use veltix_proto::{
    ClientConfig, Deadlines, DisconnectReason, Error, Frame, MessageType, SendError, ServerConfig,
    Tags, Wait,
};
use veltix_tests::drivers::{ClientApi, Driver, PeerApi, ServerApi};
use veltix_tests::harness::{timed, wait_until_within};
use veltix_tests::raw::{serve_handshake, RawPeer};

/// Answered by the other side (server: same payload; client: reversed).
const ECHO: MessageType = MessageType::new(200);
/// Recorded by `on_recv`, never answered.
const DATA: MessageType = MessageType::new(201);
/// Ordering frames, recorded by a route.
const SEQ: MessageType = MessageType::new(202);
/// Broadcast frames, recorded by `on_recv`.
const BCAST: MessageType = MessageType::new(203);
/// Upper bound for any request/ping in these tests.
const T: Option<Duration> = Some(Duration::from_secs(3));

veltix_tests::both!(
    echo_request_ping_both_ways,
    connect_disconnect_and_handshake_done,
    handlers_run_in_order_per_peer,
    broadcasts_reach_exactly_their_targets,
    server_send_waits_try_send_refuses_shutdown_bounded,
    client_send_waits_try_send_refuses_disconnect_bounded,
    route_twice_and_reserved_types,
    max_connection_one_rejects_then_frees,
    reconnects_after_server_restart,
    stop_retry_ends_the_loop_and_retry_starts_one,
);

// ---------------------------------------------------------------- helpers

type Log<T> = Arc<Mutex<Vec<T>>>;

fn log<T>() -> Log<T> {
    Arc::new(Mutex::new(Vec::new()))
}

fn snapshot<T: Clone>(l: &Log<T>) -> Vec<T> {
    l.lock().unwrap().clone()
}

fn local() -> ServerConfig {
    ServerConfig::new("127.0.0.1", 0)
}

fn start<D: Driver>(config: ServerConfig) -> D::Server {
    let s = D::server(config).expect("server config");
    s.start().expect("server starts");
    s
}

fn addr<S: ServerApi>(s: &S) -> SocketAddr {
    s.local_addr().expect("server running")
}

fn client_config(port: u16) -> ClientConfig {
    ClientConfig::new("127.0.0.1", port)
}

fn connected<D: Driver>(port: u16) -> D::Client {
    let c = D::client(client_config(port)).expect("client config");
    c.connect().expect("client connects");
    c
}

/// Polls `cond` every 2 ms; panics after 3 s.
#[track_caller]
fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_within(what, Duration::from_secs(3), cond);
}

/// The server's peer for `client` (matched by address), once handshaken.
#[track_caller]
fn peer_of<D: Driver>(server: &D::Server, client: &D::Client) -> D::Peer {
    let local = client.local_addr().expect("client connected");
    let mut found = None;
    wait_until("the server lists the client", || {
        found = server.clients().into_iter().find(|p| p.addr() == local);
        found.is_some()
    });
    found.expect("found")
}

#[track_caller]
fn assert_reserved<T: std::fmt::Debug>(r: Result<T, Error>, t: u16, what: &str) {
    match r {
        Err(Error::Send(SendError::ReservedType(got))) => assert_eq!(got.code(), t, "{what}"),
        other => panic!("{what}: expected ReservedType({t}), got {other:?}"),
    }
}

// ------------------------------------------------------------------ tests

/// Requests, pings, `send` and `try_send` in both directions; the
/// addresses, hellos and counters each side reports.
fn echo_request_ping_both_ways<D: Driver>() {
    let server = D::server(local()).unwrap();
    assert!(server.local_addr().is_none(), "not running yet");
    assert_eq!(server.config().host, "127.0.0.1");
    let server_got: Log<(u64, Frame)> = log();
    server
        .route(ECHO, |s, p, m| {
            s.reply(p, &m, ECHO, m.payload.clone()).unwrap();
        })
        .unwrap();
    {
        let g = server_got.clone();
        server.on_recv(move |_, p, m| g.lock().unwrap().push((p.id(), m)));
    }
    server.start().unwrap();
    assert!(matches!(server.start(), Err(Error::AlreadyRunning)));
    let port = addr(&server).port();

    let client = D::client(client_config(port)).unwrap();
    assert_eq!(client.config().port, port);
    assert!(!client.is_connected());
    assert!(client.stats().is_none(), "no stats before connecting");
    assert!(client.peer_addr().is_none() && client.local_addr().is_none());
    assert!(client.server_hello().is_none());
    client
        .route(ECHO, |c, m| {
            let mut p = m.payload.to_vec();
            p.reverse();
            c.reply(&m, ECHO, p).unwrap();
        })
        .unwrap();
    let client_got: Log<Frame> = log();
    {
        let g = client_got.clone();
        client.on_recv(move |_, m| g.lock().unwrap().push(m));
    }
    client.connect().unwrap();
    assert!(client.is_connected());
    assert_eq!(
        client.server_hello().expect("hello").protocol_version,
        "1.0"
    );
    assert_eq!(client.peer_addr(), Some(addr(&server)));

    let peer = peer_of::<D>(&server, &client);
    let local = client.local_addr().unwrap();
    assert_eq!(peer.addr(), local);
    assert_eq!(peer.ip(), local.ip());
    assert_eq!(peer.port(), local.port());
    assert_eq!(peer.hello().expect("hello").protocol_version, "1.0");
    assert_eq!(server.stats().accepted, 1);

    // client → server
    let r = client.request(ECHO, "hello", T).unwrap();
    assert_eq!((r.message_type, &r.payload[..]), (ECHO, &b"hello"[..]));
    assert!(client.ping(T).unwrap() < Duration::from_secs(3));
    let id1 = client.send(DATA, "one", None).unwrap();
    let id2 = client.try_send(DATA, "two").unwrap();
    wait_until("the server got both", || {
        server_got.lock().unwrap().len() == 2
    });
    let got = snapshot(&server_got);
    assert_eq!(got[0].0, peer.id());
    assert_eq!(
        (got[0].1.request_id, &got[0].1.payload[..]),
        (id1, &b"one"[..])
    );
    assert_eq!(
        (got[1].1.request_id, &got[1].1.payload[..]),
        (id2, &b"two"[..])
    );

    // server → client
    let r = server.request(&peer, ECHO, "abc", T).unwrap();
    assert_eq!(&r.payload[..], b"cba");
    assert!(server.ping(&peer, T).unwrap() < Duration::from_secs(3));
    let id3 = server.send(&peer, DATA, "three", None).unwrap();
    let id4 = server.try_send(&peer, DATA, "four").unwrap();
    wait_until("the client got both", || {
        client_got.lock().unwrap().len() == 2
    });
    let got = snapshot(&client_got);
    assert_eq!(
        (got[0].request_id, &got[0].payload[..]),
        (id3, &b"three"[..])
    );
    assert_eq!(
        (got[1].request_id, &got[1].payload[..]),
        (id4, &b"four"[..])
    );

    // counters: request, ping, two sends, reply each way (PONGs included)
    let cs = client.stats().expect("connected");
    assert!(cs.frames_out >= 5 && cs.frames_in >= 5, "{cs:?}");
    let ps = peer.stats().expect("connected");
    assert!(ps.frames_in >= 5 && ps.frames_out >= 5, "{ps:?}");
    assert!(ps.bytes_in > 0 && cs.bytes_in > 0);

    assert!(client.disconnect());
    server.shutdown(Duration::from_secs(1));
}

/// on_connect/on_disconnect on both sides, in order; `handshake_done` and
/// `is_connected` true exactly while connected; a gone peer's tag methods
/// do nothing; `close_client` ends the client's session; the same client
/// connects again after a disconnect.
fn connect_disconnect_and_handshake_done<D: Driver>() {
    let server = D::server(local()).unwrap();
    let events: Log<String> = log();
    {
        let e = events.clone();
        server.on_connect(move |s, p| {
            let listed = s.clients().contains(p);
            e.lock().unwrap().push(format!(
                "server connect done={} listed={listed}",
                p.handshake_done()
            ));
        });
        let e = events.clone();
        server.on_disconnect(move |_, p| {
            e.lock()
                .unwrap()
                .push(format!("server disconnect done={}", p.handshake_done()));
        });
    }
    server.start().unwrap();
    let port = addr(&server).port();

    let client = D::client(client_config(port)).unwrap();
    {
        let e = events.clone();
        client.on_connect(move |c| {
            e.lock()
                .unwrap()
                .push(format!("client connect connected={}", c.is_connected()));
        });
        let e = events.clone();
        client.on_disconnect(move |_, st| {
            e.lock().unwrap().push(format!(
                "client disconnect permanent={} reason={:?}",
                st.permanent, st.reason
            ));
        });
    }
    client.connect().unwrap();
    let peer = peer_of::<D>(&server, &client);
    wait_until("both on_connect ran", || events.lock().unwrap().len() == 2);
    let mut ev = snapshot(&events);
    ev.sort();
    assert_eq!(
        ev,
        [
            "client connect connected=true",
            "server connect done=true listed=true"
        ]
    );
    assert!(client.is_connected());
    assert!(peer.handshake_done());
    assert!(peer.add_tag("k", json!(1)));

    assert!(client.disconnect(), "a connection was open");
    assert!(!client.is_connected());
    assert!(client.stats().is_none(), "no stats once disconnected");
    assert!(!client.disconnect(), "nothing open any more");
    timed(
        "client.wait_closed after disconnect",
        Duration::from_secs(1),
        {
            let c = client.clone();
            move || c.wait_closed()
        },
    );
    wait_until("the server saw the disconnect", || {
        events.lock().unwrap().len() == 4
    });
    let ev = snapshot(&events);
    assert!(
        ev[2..].contains(&"server disconnect done=false".to_string()),
        "{ev:?}"
    );
    assert!(
        ev[2..].contains(&format!(
            "client disconnect permanent=true reason={:?}",
            DisconnectReason::Manual
        )),
        "{ev:?}"
    );
    assert!(!peer.handshake_done(), "gone: handshake_done is false");
    assert!(server.clients().is_empty());
    assert!(
        peer.hello().is_some(),
        "both drivers keep a gone peer's hello"
    );
    assert!(peer.stats().is_none(), "stats: {:?}", peer.stats());
    assert!(!peer.add_tag("k2", json!(2)) && !peer.has_tag("k"));
    assert!(peer.get_tag("k").is_none() && !peer.remove_tag("k"));
    assert_eq!(peer.tags(), Tags::default());

    // The same client connects again; the server closes it.
    events.lock().unwrap().clear();
    client.connect().unwrap();
    assert!(client.is_connected());
    let peer2 = peer_of::<D>(&server, &client);
    assert_ne!(peer2.id(), peer.id());
    assert_ne!(peer2, peer);
    wait_until("both on_connect ran again", || {
        events.lock().unwrap().len() == 2
    });
    assert!(server.close_client(&peer2));
    timed(
        "client.wait_closed after close_client",
        Duration::from_secs(2),
        {
            let c = client.clone();
            move || c.wait_closed()
        },
    );
    assert!(!client.is_connected());
    wait_until("both on_disconnect ran", || {
        events.lock().unwrap().len() == 4
    });
    let ev = snapshot(&events);
    assert!(
        ev[2..].contains(&format!(
            "client disconnect permanent=true reason={:?}",
            DisconnectReason::ServerClosed
        )),
        "{ev:?}"
    );
    assert!(!peer2.handshake_done());
    assert!(!server.close_client(&peer2), "already closed");
    server.shutdown(Duration::from_secs(1));
}

/// Four clients at once, each sending 500 messages while the server sends
/// each 500: every route handler sees 0..500 in order, per peer.
fn handlers_run_in_order_per_peer<D: Driver>() {
    const N: u32 = 500;
    const CLIENTS: usize = 4;
    let server = D::server(local()).unwrap();
    let seen: Log<(u64, u32)> = log();
    {
        let s = seen.clone();
        server
            .route(SEQ, move |_, p, m| {
                let i = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                s.lock().unwrap().push((p.id(), i));
            })
            .unwrap();
    }
    server.start().unwrap();
    let port = addr(&server).port();

    let mut clients = Vec::new();
    let mut client_seen = Vec::new();
    for _ in 0..CLIENTS {
        let c = D::client(client_config(port)).unwrap();
        let s: Log<u32> = log();
        {
            let s = s.clone();
            c.route(SEQ, move |_, m| {
                let i = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                s.lock().unwrap().push(i);
            })
            .unwrap();
        }
        c.connect().unwrap();
        clients.push(c);
        client_seen.push(s);
    }
    let peers: Vec<D::Peer> = clients.iter().map(|c| peer_of::<D>(&server, c)).collect();

    let payload = |i: u32| {
        let mut p = i.to_be_bytes().to_vec();
        p.extend(std::iter::repeat_n(i as u8, (i % 37) as usize));
        p
    };
    let mut threads = Vec::new();
    for (c, p) in clients.iter().zip(&peers) {
        let (c, p, s) = (c.clone(), p.clone(), server.clone());
        threads.push(thread::spawn(move || {
            for i in 0..N {
                c.send(SEQ, payload(i), None).unwrap();
            }
        }));
        threads.push(thread::spawn(move || {
            for i in 0..N {
                s.send(&p, SEQ, payload(i), None).unwrap();
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let total = N as usize * CLIENTS;
    wait_until("the server handled everything", || {
        seen.lock().unwrap().len() == total
    });
    wait_until("the clients handled everything", || {
        client_seen
            .iter()
            .all(|s| s.lock().unwrap().len() == N as usize)
    });
    let seen = snapshot(&seen);
    let want: Vec<u32> = (0..N).collect();
    for p in &peers {
        let of: Vec<u32> = seen
            .iter()
            .filter(|(id, _)| *id == p.id())
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(of, want, "server handlers of peer {}", p.id());
    }
    for (k, s) in client_seen.iter().enumerate() {
        assert_eq!(snapshot(s), want, "client {k}'s handlers");
    }
    for c in &clients {
        assert!(c.disconnect());
    }
    server.shutdown(Duration::from_secs(1));
}

/// The tag methods, `clients_by_tag`, and the four broadcasts: each reaches
/// exactly its targets, once, and returns their number.
fn broadcasts_reach_exactly_their_targets<D: Driver>() {
    let server = start::<D>(local());
    let port = addr(&server).port();
    let mut clients = Vec::new();
    let mut got: Vec<Log<Vec<u8>>> = Vec::new();
    for _ in 0..5 {
        let c = D::client(client_config(port)).unwrap();
        let g: Log<Vec<u8>> = log();
        {
            let g = g.clone();
            c.on_recv(move |_, m| {
                assert_eq!(m.message_type, BCAST);
                g.lock().unwrap().push(m.payload.to_vec());
            });
        }
        c.connect().unwrap();
        clients.push(c);
        got.push(g);
    }
    let p: Vec<D::Peer> = clients.iter().map(|c| peer_of::<D>(&server, c)).collect();

    // tags
    let (a, b) = (json!("a"), json!("b"));
    assert!(p[0].add_tag("room", a.clone()));
    assert!(!p[0].add_tag("room", b.clone()), "add_tag keeps the first");
    assert_eq!(p[0].get_tag("room"), Some(a.clone()));
    p[1].set_tag("room", b.clone());
    p[1].set_tag("room", a.clone());
    assert_eq!(p[1].get_tag("room"), Some(a.clone()));
    p[2].set_tag("room", b.clone());
    p[2].set_tag("vip", json!(true));
    assert!(p[2].has_tag("vip") && !p[1].has_tag("vip"));
    assert!(p[2].has_all_tags(&["room", "vip"]));
    assert!(!p[1].has_all_tags(&["room", "vip"]));
    assert!(p[1].has_any_tags(&["vip", "room"]));
    assert!(!p[3].has_any_tags(&["vip", "room"]));
    assert!(p[3].add_tag("tmp", json!(1)));
    assert!(p[3].remove_tag("tmp"));
    assert!(!p[3].remove_tag("tmp"));
    p[3].set_tag("x", json!(1));
    p[3].set_tag("y", json!(2));
    p[3].clear_tags();
    assert_eq!(p[3].tags(), Tags::default());
    let t2 = p[2].tags();
    assert_eq!(t2.get_tag("vip"), Some(&json!(true)));
    assert_eq!(t2.get_tag("room"), Some(&b));
    // a tagged peer that leaves is no target any more
    p[4].set_tag("room", a.clone());
    assert!(clients[4].disconnect());
    wait_until("the fifth peer is gone", || server.clients().len() == 4);

    let set = |v: Vec<D::Peer>| v.into_iter().map(|p| p.id()).collect::<HashSet<_>>();
    assert_eq!(
        set(server.clients_by_tag("room", Some(&a))),
        set(vec![p[0].clone(), p[1].clone()])
    );
    assert_eq!(
        set(server.clients_by_tag("room", None)),
        set(vec![p[0].clone(), p[1].clone(), p[2].clone()])
    );
    assert!(server.clients_by_tag("nope", None).is_empty());

    // broadcasts (p[4] is gone: never counted)
    assert_eq!(server.broadcast(BCAST, b"all").unwrap(), 4);
    assert_eq!(
        server
            .broadcast_to(BCAST, b"to", &[p[0].clone(), p[2].clone()])
            .unwrap(),
        2
    );
    assert_eq!(
        server
            .broadcast_except(BCAST, b"except", &[p[1].clone()])
            .unwrap(),
        3
    );
    assert_eq!(
        server
            .broadcast_tag(BCAST, b"tag-a", "room", Some(&a))
            .unwrap(),
        2
    );
    assert_eq!(
        server
            .broadcast_tag(BCAST, b"tag-any", "room", None)
            .unwrap(),
        3
    );
    // a list naming a peer twice, and one that left: one copy each, the
    // gone one not counted
    assert_eq!(
        server
            .broadcast_to(
                BCAST,
                b"dup",
                &[p[0].clone(), p[0].clone(), p[3].clone(), p[4].clone()]
            )
            .unwrap(),
        2
    );
    let want: [&[&str]; 4] = [
        &["all", "to", "except", "tag-a", "tag-any", "dup"],
        &["all", "tag-a", "tag-any"],
        &["all", "to", "except", "tag-any"],
        &["all", "except", "dup"],
    ];
    let total: usize = want.iter().map(|w| w.len()).sum();
    wait_until("every broadcast arrived", || {
        got.iter().map(|g| g.lock().unwrap().len()).sum::<usize>() >= total
    });
    thread::sleep(Duration::from_millis(50)); // room for a wrong extra copy
    for (k, w) in want.iter().enumerate() {
        let g: Vec<String> = snapshot(&got[k])
            .into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        assert_eq!(g, *w, "client {k}");
    }
    assert!(snapshot(&got[4]).is_empty());
    for c in &clients[..4] {
        assert!(c.disconnect());
    }
    server.shutdown(Duration::from_secs(1));
}

const CHUNK: usize = 16 * 1024;

/// Against a peer that never reads, with `max_outbound` 64 KiB: `try_send`
/// of 16 KiB frames soon refuses with `QueueFull`; `send(.., 200 ms)`
/// succeeds while the driver still moves the queue into the socket
/// buffers, and once those are full times out after 200 ms with
/// `TimedOut(Send)`; `try_send` then refuses at once. Returns the bytes
/// accepted.
#[track_caller]
fn stall(
    what: &str,
    try_send: impl Fn(Vec<u8>) -> Result<u16, Error>,
    send: impl Fn(Vec<u8>, Option<Duration>) -> Result<u16, Error>,
) -> usize {
    let chunk = vec![7u8; CHUNK];
    let full = |r: Result<u16, Error>| match r {
        Ok(_) => false,
        Err(Error::Send(SendError::QueueFull { limit, .. })) => {
            assert_eq!(limit, 64 * 1024);
            true
        }
        Err(e) => panic!("{what}: try_send: {e}"),
    };
    let mut accepted = 0;
    while !full(try_send(chunk.clone())) {
        accepted += CHUNK;
        assert!(accepted < 64 << 20, "{what}: try_send never refused");
    }
    let wait = Some(Duration::from_millis(200));
    loop {
        let t0 = Instant::now();
        match send(chunk.clone(), wait) {
            Ok(_) => {
                accepted += CHUNK;
                assert!(accepted < 256 << 20, "{what}: send never waited");
            }
            Err(Error::TimedOut {
                what: Wait::Send,
                after,
            }) => {
                let took = t0.elapsed();
                assert_eq!(after, Duration::from_millis(200));
                assert!(
                    took >= Duration::from_millis(190) && took < Duration::from_millis(1500),
                    "{what}: send waited {took:?}"
                );
                break;
            }
            Err(e) => panic!("{what}: send: {e}"),
        }
    }
    let t0 = Instant::now();
    assert!(full(try_send(chunk)), "{what}: try_send after the timeout");
    assert!(t0.elapsed() < Duration::from_millis(100), "try_send waited");
    accepted
}

/// A raw client that handshakes and never reads: the server's `try_send`
/// ends with `QueueFull`, `send(.., 200 ms)` with `TimedOut(Send)`;
/// `shutdown(300 ms)` returns within flush + 1 s and wakes `wait_closed`.
fn server_send_waits_try_send_refuses_shutdown_bounded<D: Driver>() {
    let server = start::<D>(local().max_outbound(64 * 1024));
    let raw = RawPeer::connect(addr(&server), Duration::from_secs(2)).unwrap();
    let mut peer = None;
    wait_until("the raw peer is listed", || {
        peer = server.clients().pop();
        peer.is_some()
    });
    let peer = peer.unwrap();

    let n = stall(
        "server",
        |c| server.try_send(&peer, DATA, c),
        |c, t| server.send(&peer, DATA, c, t),
    );
    eprintln!(
        "{}: the server took {n} bytes before send timed out",
        D::NAME
    );

    let waiter = {
        let s = server.clone();
        thread::spawn(move || s.wait_closed())
    };
    thread::sleep(Duration::from_millis(50));
    assert!(!waiter.is_finished(), "wait_closed returned while running");
    let flush = Duration::from_millis(300);
    let ((), took) = timed("shutdown", flush + Duration::from_secs(1), {
        let s = server.clone();
        move || s.shutdown(flush)
    });
    eprintln!(
        "{}: shutdown({flush:?}) with a stalled peer took {took:?}",
        D::NAME
    );
    timed(
        "wait_closed after shutdown",
        Duration::from_secs(1),
        move || waiter.join().unwrap(),
    );
    assert!(server.local_addr().is_none());
    drop(raw);
}

/// A raw server that handshakes and never reads: the client's `try_send`
/// ends with `QueueFull`, `send(.., 200 ms)` with `TimedOut(Send)`;
/// `disconnect()` returns within the flush deadline (300 ms) + 1 s.
fn client_send_waits_try_send_refuses_disconnect_bounded<D: Driver>() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let stalled = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        serve_handshake(&mut s, Duration::from_secs(2)).unwrap();
        let _ = hold_rx.recv(); // never reads; keeps the socket open
    });
    let mut deadlines = Deadlines::default();
    let flush = Duration::from_millis(300);
    deadlines.flush_timeout = flush;
    let client = D::client(
        client_config(port)
            .max_outbound(64 * 1024)
            .deadlines(deadlines),
    )
    .unwrap();
    client.connect().unwrap();

    let n = stall(
        "client",
        |c| client.try_send(DATA, c),
        |c, t| client.send(DATA, c, t),
    );
    eprintln!(
        "{}: the client took {n} bytes before send timed out",
        D::NAME
    );

    let (was, took) = timed("disconnect", flush + Duration::from_secs(1), {
        let c = client.clone();
        move || c.disconnect()
    });
    assert!(was);
    eprintln!(
        "{}: disconnect with a stalled server took {took:?}",
        D::NAME
    );
    assert!(!client.is_connected());
    drop(hold_tx);
    stalled.join().unwrap();
}

/// Reserved types (< 200) are refused by `route` and every sending method,
/// `send_system(150)` is not (the server's `on_recv` gets it); a second
/// `route` on a type is refused and the first handler stays.
fn route_twice_and_reserved_types<D: Driver>() {
    let server = D::server(local()).unwrap();
    let sys = MessageType::new(150);
    assert_reserved(
        server.route(MessageType::new(5), |_, _, _| {}),
        5,
        "server.route(5)",
    );
    server
        .route(ECHO, |s, p, m| s.reply(p, &m, ECHO, "first").unwrap())
        .unwrap();
    match server.route(ECHO, |s, p, m| s.reply(p, &m, ECHO, "second").unwrap()) {
        Err(Error::RouteExists(t)) => assert_eq!(t, ECHO),
        other => panic!("server.route twice: {other:?}"),
    }
    let server_got: Log<Frame> = log();
    {
        let g = server_got.clone();
        server.on_recv(move |_, _, m| g.lock().unwrap().push(m));
    }
    server.start().unwrap();

    let client = D::client(client_config(addr(&server).port())).unwrap();
    assert_reserved(
        client.route(MessageType::new(5), |_, _| {}),
        5,
        "client.route(5)",
    );
    client
        .route(ECHO, |c, m| c.reply(&m, ECHO, "first").unwrap())
        .unwrap();
    match client.route(ECHO, |c, m| c.reply(&m, ECHO, "second").unwrap()) {
        Err(Error::RouteExists(t)) => assert_eq!(t, ECHO),
        other => panic!("client.route twice: {other:?}"),
    }
    client.connect().unwrap();
    let peer = peer_of::<D>(&server, &client);

    assert_eq!(&client.request(ECHO, "x", T).unwrap().payload[..], b"first");
    assert_eq!(
        &server.request(&peer, ECHO, "x", T).unwrap().payload[..],
        b"first"
    );

    let fake = Frame::new(ECHO, 7, "");
    assert_reserved(
        client.try_send(MessageType::new(199), "x"),
        199,
        "client.try_send",
    );
    assert_reserved(client.send(sys, "x", None), 150, "client.send");
    assert_reserved(
        client.request(MessageType::new(100), "x", T),
        100,
        "client.request",
    );
    assert_reserved(client.reply(&fake, sys, "x"), 150, "client.reply");
    assert_reserved(
        server.try_send(&peer, MessageType::new(199), "x"),
        199,
        "server.try_send",
    );
    assert_reserved(server.send(&peer, sys, "x", None), 150, "server.send");
    assert_reserved(
        server.request(&peer, MessageType::new(1), "x", T),
        1,
        "server.request",
    );
    assert_reserved(server.reply(&peer, &fake, sys, "x"), 150, "server.reply");
    assert_reserved(server.broadcast(sys, b"x"), 150, "server.broadcast");
    assert_reserved(
        server.broadcast_to(sys, b"x", std::slice::from_ref(&peer)),
        150,
        "broadcast_to",
    );
    assert_reserved(
        server.broadcast_except(sys, b"x", &[]),
        150,
        "broadcast_except",
    );
    assert_reserved(
        server.broadcast_tag(sys, b"x", "t", None),
        150,
        "broadcast_tag",
    );

    let id = client.send_system(sys, "system").unwrap();
    wait_until("the server got the system frame", || {
        !server_got.lock().unwrap().is_empty()
    });
    let got = snapshot(&server_got);
    assert_eq!(got.len(), 1, "nothing refused reached the wire: {got:?}");
    assert_eq!(
        (got[0].message_type, got[0].request_id, &got[0].payload[..]),
        (sys, id, &b"system"[..])
    );
    assert!(client.disconnect());
    server.shutdown(Duration::from_secs(1));
}

/// `max_connection(Some(1))`: the second client gets
/// `Rejected("server_full")` while `is_full()`; once the first leaves a
/// new client connects.
fn max_connection_one_rejects_then_frees<D: Driver>() {
    let server = start::<D>(local().max_connection(Some(1)));
    let port = addr(&server).port();
    assert!(!server.is_full());
    let first = connected::<D>(port);
    wait_until("the first is listed", || server.clients().len() == 1);
    assert!(server.is_full());

    let second = D::client(client_config(port)).unwrap();
    match second.connect() {
        Err(Error::Rejected(r)) => assert_eq!(r, "server_full"),
        other => panic!("expected Rejected(server_full), got {other:?}"),
    }
    assert!(!second.is_connected());
    assert!(server.stats().rejected >= 1, "{:?}", server.stats());
    assert_eq!(server.clients().len(), 1);
    assert!(first.ping(T).is_ok(), "the first still works");

    assert!(first.disconnect());
    wait_until("the slot is free", || !server.is_full());
    let third = connected::<D>(port);
    assert!(third.ping(T).is_ok());
    wait_until("the third is listed", || server.clients().len() == 1);
    assert!(server.is_full());
    assert!(third.disconnect());
    server.shutdown(Duration::from_secs(1));
}

fn record_client_events<C: ClientApi>(client: &C) -> Log<String> {
    let events: Log<String> = log();
    let e = events.clone();
    client.on_connect(move |_| e.lock().unwrap().push("connect".into()));
    let e = events.clone();
    client.on_disconnect(move |_, st| {
        e.lock().unwrap().push(format!(
            "disconnect permanent={} reason={:?}",
            st.permanent, st.reason
        ));
    });
    events
}

/// Starts a server on `port` again (retrying the bind for up to 2 s).
fn restart<D: Driver>(port: u16) -> D::Server {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let s = D::server(ServerConfig::new("127.0.0.1", port)).unwrap();
        match s.start() {
            Ok(()) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding port {port}: {e}");
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot bind port {port} again: {e}"),
        }
    }
}

/// retry(3), retry_delay(100 ms): the server shuts down and another starts
/// on the same port; the client reconnects, and its handlers saw connect,
/// then non-permanent disconnect(s), then connect.
fn reconnects_after_server_restart<D: Driver>() {
    let s1 = start::<D>(local());
    let port = addr(&s1).port();
    let client = D::client(
        client_config(port)
            .retry(3)
            .retry_delay(Duration::from_millis(100)),
    )
    .unwrap();
    let events = record_client_events(&client);
    client.connect().unwrap();
    wait_until("on_connect ran", || events.lock().unwrap().len() == 1);

    s1.shutdown(Duration::from_millis(200));
    let s2 = restart::<D>(port);
    wait_until("the client is back", || {
        client.is_connected() && s2.clients().len() == 1
    });
    wait_until("on_connect ran again", || {
        snapshot(&events).iter().filter(|e| *e == "connect").count() == 2
    });
    let ev = snapshot(&events);
    assert_eq!(ev.first().map(String::as_str), Some("connect"), "{ev:?}");
    assert_eq!(ev.last().map(String::as_str), Some("connect"), "{ev:?}");
    let between = &ev[1..ev.len() - 1];
    assert!(!between.is_empty(), "no on_disconnect in between: {ev:?}");
    assert!(
        between
            .iter()
            .all(|e| e.starts_with("disconnect permanent=false")),
        "{ev:?}"
    );
    assert!(client.ping(T).is_ok());
    assert!(client.disconnect());
    s2.shutdown(Duration::from_secs(1));
}

/// With a retry budget of 1000 every 100 ms, `stop_retry` ends the loop at
/// once with a permanent report; then `retry(Some(3))` starts a fresh loop
/// that reaches a server started meanwhile on the same port.
fn stop_retry_ends_the_loop_and_retry_starts_one<D: Driver>() {
    let s1 = start::<D>(local());
    let port = addr(&s1).port();
    let client = D::client(
        client_config(port)
            .retry(1000)
            .retry_delay(Duration::from_millis(100)),
    )
    .unwrap();
    let events = record_client_events(&client);
    client.connect().unwrap();
    s1.shutdown(Duration::from_millis(200));
    wait_until("the client noticed", || events.lock().unwrap().len() >= 2);
    thread::sleep(Duration::from_millis(250)); // a few failed attempts
    client.stop_retry();
    timed("wait_closed after stop_retry", Duration::from_secs(1), {
        let c = client.clone();
        move || c.wait_closed()
    });
    thread::sleep(Duration::from_millis(250)); // nothing more happens
    let ev = snapshot(&events);
    let last = ev.last().expect("events");
    assert!(last.starts_with("disconnect permanent=true"), "{ev:?}");
    assert_eq!(
        ev.iter().filter(|e| e.contains("permanent=true")).count(),
        1,
        "{ev:?}"
    );
    assert!(ev.len() < 10, "the loop went on: {ev:?}");
    assert!(!client.is_connected());

    let s2 = restart::<D>(port);
    client.retry(Some(3));
    wait_until("retry() reconnected", || {
        client.is_connected() && s2.clients().len() == 1
    });
    assert_eq!(
        snapshot(&events).last().map(String::as_str),
        Some("connect")
    );
    assert!(client.disconnect());
    s2.shutdown(Duration::from_secs(1));
}
