//! Tests of the tokio driver on loopback: deadlines and reconnect timing on
//! tokio's paused clock, backpressure bounded by the core, deadlines that
//! fire while the application takes no events, handlers without a recv
//! loop, cancellation, ordering, and 1 000 concurrent clients with a
//! shutdown that leaves no task behind.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use veltix_proto::{Connection, ConnectionConfig};
use veltix_tokio::{
    Client, ClientConfig, ClientEvent, CloseReason, Deadlines, DisconnectReason, Error,
    MessageType, SendError, Server, ServerConfig, ServerEvent, Wait,
};

const T: MessageType = MessageType::new(200);

async fn start(config: ServerConfig) -> Server {
    let server = Server::new(config).unwrap();
    server.start().await.unwrap();
    server
}

fn client_cfg(server: &Server) -> ClientConfig {
    ClientConfig::new("127.0.0.1", server.local_addr().unwrap().port())
}

async fn connect(config: ClientConfig) -> Client {
    let c = Client::new(config).unwrap();
    c.connect().await.unwrap();
    c
}

/// Echoes every message back (a handler: no recv loop).
async fn echo_server() -> Server {
    let server = Server::new(ServerConfig::new("127.0.0.1", 0)).unwrap();
    server.on_recv(|s: Server, peer, m| async move {
        let _ = s.reply(&peer, &m, m.message_type, m.payload.clone());
    });
    server.start().await.unwrap();
    server
}

/// Drives a core connection's handshake over a raw socket, then returns the
/// socket: the test decides what happens next (typically: never read).
async fn raw_handshake(s: &mut TcpStream, mut conn: Connection) -> Connection {
    let mut buf = [0u8; 4096];
    loop {
        while let Some(b) = conn.poll_transmit() {
            s.write_all(&b).await.unwrap();
            conn.handle_written(std::time::Instant::now(), b.len());
        }
        if conn.is_established() {
            return conn;
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "peer closed during the handshake");
        conn.handle_input(std::time::Instant::now(), &buf[..n]);
    }
}

fn core_config() -> Arc<ConnectionConfig> {
    Arc::new(ConnectionConfig::default())
}

// ---------------------------------------------------------------- defects

/// Defect 1: the old driver moved everything `poll_transmit` gave into its
/// own unbounded queue (a client with max_outbound 64 KiB accepted 423 MiB
/// to a server that stopped reading). Now `try_send` stops at max_outbound
/// plus what the sockets hold, and `send` times out with `Wait::Send`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_bounds_try_send_to_max_outbound() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stalled = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let conn = raw_handshake(
            &mut s,
            Connection::server(core_config(), std::time::Instant::now()),
        )
        .await;
        (s, conn) // never read again
    });
    let client = connect(ClientConfig::new("127.0.0.1", port).max_outbound(64 * 1024)).await;
    let _held = stalled.await.unwrap();

    let msg = Bytes::from(vec![7u8; 16 * 1024]);
    let mut accepted = 0usize;
    let mut full_in_a_row = 0;
    while full_in_a_row < 20 {
        match client.try_send(T, msg.clone()) {
            Ok(_) => {
                accepted += msg.len();
                full_in_a_row = 0;
            }
            Err(Error::Send(SendError::QueueFull { .. })) => {
                full_in_a_row += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(
            accepted < 64 * 1024 * 1024,
            "try_send accepted {accepted} bytes: unbounded"
        );
        if accepted % (1024 * 1024) == 0 {
            tokio::task::yield_now().await;
        }
    }
    eprintln!("try_send accepted {accepted} bytes before the queue stayed full");
    // max_outbound + one frame + the two socket buffers of loopback.
    assert!(
        accepted <= 64 * 1024 + 16 * 1024 + 32 * 1024 * 1024,
        "accepted {accepted}"
    );
    let t0 = Instant::now();
    let err = client
        .send(T, msg.clone(), Some(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TimedOut { what: Wait::Send, after } if after == Duration::from_millis(200)),
        "{err}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(client.disconnect().await);
}

/// Defect 2: deadlines needed the application to drain `recv()`. Now a
/// client that never takes events still gets its request and ping
/// deadlines on time (core timers), and `disconnect` is bounded.
#[tokio::test(start_paused = true)]
async fn deadlines_fire_while_the_application_takes_no_events() {
    let server = Server::new(ServerConfig::new("127.0.0.1", 0)).unwrap();
    server.on_connect(|s: Server, peer| async move {
        let chunk = Bytes::from(vec![1u8; 1024]);
        for _ in 0..20_000 {
            if s.send(&peer, T, chunk.clone(), Some(Duration::from_secs(600)))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    server.start().await.unwrap();
    let flush = Duration::from_secs(2);
    let mut deadlines = Deadlines::default();
    deadlines.flush_timeout = flush;
    let client = connect(client_cfg(&server).deadlines(deadlines)).await;
    // Let the push fill the client's queues; nobody calls recv().
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(client.is_connected());
    let bytes_in = client.stats().unwrap().bytes_in;
    assert!(
        bytes_in < 8 * 1024 * 1024,
        "the client stopped reading ({bytes_in} bytes in of 20 MiB pushed)"
    );

    let t0 = Instant::now();
    let err = client
        .request(T, "q", Some(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TimedOut {
                what: Wait::Request,
                ..
            }
        ),
        "{err}"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took <= Duration::from_millis(1100),
        "{took:?}"
    );

    let t0 = Instant::now();
    let err = client.ping(Some(Duration::from_secs(1))).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TimedOut {
                what: Wait::Ping,
                ..
            }
        ),
        "{err}"
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took <= Duration::from_millis(1100),
        "{took:?}"
    );

    let t0 = Instant::now();
    assert!(client.disconnect().await);
    assert!(t0.elapsed() <= flush + Duration::from_millis(100));
    server.shutdown(Duration::from_secs(1)).await;
}

/// Defect 3: a server that resets every connection before its hello, with
/// retry(2) and retry_delay(100 ms): the reports are exactly
/// (false,0)(false,1)(false,2)(true,2), through `on_disconnect`.
#[tokio::test(start_paused = true)]
async fn resets_before_the_hello_report_each_attempt_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let resetter = tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            s.set_zero_linger().unwrap();
            drop(s);
        }
    });
    let client = Client::new(
        ClientConfig::new("127.0.0.1", port)
            .retry(2)
            .retry_delay(Duration::from_millis(100)),
    )
    .unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r = reports.clone();
    client.on_disconnect(move |_c: Client, d| {
        let r = r.clone();
        async move { r.lock().unwrap().push((d.permanent, d.attempt)) }
    });
    assert!(client.connect().await.is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    while reports.lock().unwrap().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        *reports.lock().unwrap(),
        vec![(false, 0), (false, 1), (false, 2), (true, 2)]
    );
    assert!(!client.is_connected());
    resetter.abort();
}

/// A client flooding PINGs (1 MiB at a time) and never reading: the server
/// holds at most max_outbound for it (PONGs are dropped and counted) and
/// cuts it at the write deadline; nothing is buffered outside the core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_from_a_client_that_never_reads_stays_bounded() {
    let mut deadlines = Deadlines::default();
    deadlines.write_timeout = Some(Duration::from_secs(1));
    let server = Server::new(
        ServerConfig::new("127.0.0.1", 0)
            .max_outbound(256 * 1024)
            .deadlines(deadlines),
    )
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tx2 = tx.clone();
    server.on_connect(move |_s: Server, peer| {
        let tx = tx2.clone();
        async move {
            let _ = tx.send(Ok(peer));
        }
    });
    server.on_disconnect(move |_s: Server, peer| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Err(peer));
        }
    });
    server.start().await.unwrap();
    let mut s = TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    let _conn = raw_handshake(
        &mut s,
        Connection::client(core_config(), std::time::Instant::now()),
    )
    .await;
    let peer = rx.recv().await.unwrap().unwrap();
    let mut pings = Vec::new();
    for i in 0..(1024 * 1024 / 15) {
        veltix_proto::frame::encode_frame(MessageType::PING, i as u16, &[], &mut pings).unwrap();
    }
    let flood = tokio::spawn(async move { while s.write_all(&pings).await.is_ok() {} });
    let t0 = Instant::now();
    let mut dropped = 0;
    let gone = loop {
        if let Some(st) = peer.stats() {
            dropped = dropped.max(st.pongs_dropped);
        }
        match tokio::time::timeout(Duration::from_millis(20), rx.recv()).await {
            Ok(Some(Err(p))) => break p,
            Ok(_) => {}
            Err(_) => assert!(t0.elapsed() < Duration::from_secs(20), "never cut"),
        }
    };
    assert_eq!(gone, peer);
    assert!(
        dropped > 0,
        "PONGs were refused by the core's bounded queue"
    );
    flood.abort();
    server.shutdown(Duration::from_secs(1)).await;
}

/// `shutdown(flush)` ends within `flush` even with a client that never reads
/// and a full queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_by_its_flush_deadline() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).await;
    let mut s = TcpStream::connect(server.local_addr().unwrap())
        .await
        .unwrap();
    let _conn = raw_handshake(
        &mut s,
        Connection::client(core_config(), std::time::Instant::now()),
    )
    .await;
    let peer = loop {
        if let Some(ServerEvent::Connected(p)) = server.recv().await {
            break p;
        }
    };
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    while server.try_send(&peer, T, chunk.clone()).is_ok() {
        tokio::task::yield_now().await;
    }
    let t0 = Instant::now();
    server.shutdown(Duration::from_millis(300)).await;
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    assert!(server.local_addr().is_none());
    match tokio::time::timeout(Duration::from_secs(1), server.recv()).await {
        Ok(Some(ServerEvent::Disconnected(p, _))) => assert_eq!(p, peer),
        other => panic!("expected the disconnect, got {other:?}"),
    }
    assert!(server.recv().await.is_none());
}

/// The server's `recv` queue fills while nobody calls `recv`: events stay
/// in the core and the connection stops reading; once the application
/// drains `recv`, reading resumes and everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_recv_loop_resumes_reading_and_gets_everything() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).await;
    let client = connect(client_cfg(&server)).await;
    let n = 8_000u32;
    let sender = {
        let c = client.clone();
        tokio::spawn(async move {
            let mut pad = vec![0u8; 1024];
            for i in 0..n {
                pad[..4].copy_from_slice(&i.to_be_bytes());
                c.send(T, pad.clone(), Some(Duration::from_secs(30)))
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = 0u32;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(10), server.recv()).await {
            Ok(Some(ServerEvent::Message(_, m))) => {
                assert_eq!(u32::from_be_bytes(m.payload[..4].try_into().unwrap()), got);
                got += 1;
            }
            Ok(Some(_)) => {}
            other => panic!(
                "stalled after {got} messages: {other:?}; server side {:?}; client {:?}",
                server.clients().first().and_then(|p| p.stats()),
                client.stats()
            ),
        }
    }
    sender.await.unwrap();
    client.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
}

// ---------------------------------------------------------------- handlers

/// Handlers run without any recv loop, in order per peer: connect, every
/// message, disconnect; a client's routes and on_recv run too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_run_in_order_per_peer_without_a_recv_loop() {
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let server = Server::new(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let l = log.clone();
    server.on_connect(move |_s: Server, _p| {
        let l = l.clone();
        async move { l.lock().unwrap().push("connect".into()) }
    });
    let l = log.clone();
    server.on_recv(move |s: Server, p, m| {
        let l = l.clone();
        async move {
            tokio::task::yield_now().await;
            l.lock().unwrap().push(m.text().unwrap().to_owned());
            let _ = s.reply(&p, &m, MessageType::new(201), m.payload.clone());
        }
    });
    let l = log.clone();
    server.on_disconnect(move |_s: Server, _p| {
        let l = l.clone();
        async move { l.lock().unwrap().push("disconnect".into()) }
    });
    assert!(matches!(
        server.route(MessageType::new(5), |_s: Server, _p, _m| async {}),
        Err(Error::Send(SendError::ReservedType(_)))
    ));
    server
        .route(MessageType::new(300), |_s: Server, _p, _m| async {})
        .unwrap();
    assert!(matches!(
        server.route(MessageType::new(300), |_s: Server, _p, _m| async {}),
        Err(Error::RouteExists(_))
    ));
    server.start().await.unwrap();
    assert!(matches!(server.start().await, Err(Error::AlreadyRunning)));

    let client = Client::new(client_cfg(&server)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    client
        .route(MessageType::new(201), move |_c: Client, m| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(m.text().unwrap().to_owned());
            }
        })
        .unwrap();
    client.connect().await.unwrap();
    for i in 0..100 {
        client.send(T, format!("m{i}"), None).await.unwrap();
    }
    for i in 0..100 {
        assert_eq!(rx.recv().await.unwrap(), format!("m{i}"));
    }
    assert!(client.disconnect().await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.lock().unwrap().last().map(String::as_str) != Some("disconnect") {
        assert!(Instant::now() < deadline, "{:?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut want = vec!["connect".to_owned()];
    want.extend((0..100).map(|i| format!("m{i}")));
    want.push("disconnect".into());
    assert_eq!(*log.lock().unwrap(), want);
    server.shutdown(Duration::from_secs(1)).await;
}

/// A handler that panics does not stop the peer's later events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_does_not_stop_the_queue() {
    let server = Server::new(ServerConfig::new("127.0.0.1", 0)).unwrap();
    server.on_recv(|s: Server, p, m| async move {
        assert_ne!(m.text().unwrap(), "boom", "handler panics (expected)");
        let _ = s.reply(&p, &m, T, "ok");
    });
    server.start().await.unwrap();
    let client = connect(client_cfg(&server)).await;
    client.try_send(T, "boom").unwrap();
    let r = client
        .request(T, "after", Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(r.text().unwrap(), "ok");
    client.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
}

// ------------------------------------------------------------ ported tests

#[tokio::test(start_paused = true)]
async fn silent_server_hits_the_handshake_deadline_on_the_paused_clock() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and never says a word.
    let held = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(s);
    });
    let t0 = Instant::now();
    let client =
        Client::new(ClientConfig::new("127.0.0.1", port).handshake_timeout(Duration::from_secs(7)))
            .unwrap();
    let err = client.connect().await.unwrap_err();
    assert!(
        matches!(err, Error::TimedOut { what: Wait::Handshake, after } if after == Duration::from_secs(7)),
        "{err}"
    );
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(7),
        "exactly the deadline, virtual time"
    );
    held.abort();
}

#[tokio::test(start_paused = true)]
async fn reconnect_timing_follows_the_policy_exactly() {
    let server = echo_server().await;
    let delay = Duration::from_secs(10);
    let client = connect(client_cfg(&server).retry(3).retry_delay(delay)).await;
    assert!(matches!(
        client.recv().await,
        Some(ClientEvent::Connected(_))
    ));

    server.shutdown(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    let mut steps = Vec::new();
    while let Some(ev) = client.recv().await {
        if let ClientEvent::Disconnected(st) = ev {
            steps.push((st.permanent, st.attempt, st.reason.clone(), t0.elapsed()));
            if st.permanent {
                break;
            }
        }
    }
    let shape: Vec<(bool, u32)> = steps.iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        shape,
        vec![(false, 0), (false, 1), (false, 2), (false, 3), (true, 3)]
    );
    assert!(steps.iter().all(|s| s.2 == DisconnectReason::ServerClosed));
    // Attempt 1 right away, then one retry_delay between attempts.
    let times: Vec<Duration> = steps.iter().map(|s| s.3).collect();
    assert_eq!(times[1], times[0]);
    assert_eq!(times[2] - times[1], delay);
    assert_eq!(times[3] - times[2], delay);
    assert!(!client.is_connected());
    client.wait_closed().await;
    assert!(client.recv().await.is_none(), "recv ends after give-up");
}

#[tokio::test(start_paused = true)]
async fn request_deadline_is_exact_and_a_dropped_request_frees_its_id() {
    let server = Server::new(ServerConfig::new("127.0.0.1", 0)).unwrap();
    // Answers nothing at once; replies to each request 60 s later.
    server.on_recv(|s: Server, peer, m| async move {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let _ = s.reply(&peer, &m, T, "late");
        });
    });
    server.start().await.unwrap();
    let client = connect(client_cfg(&server)).await;
    let t0 = Instant::now();
    let err = client
        .request(T, "q", Some(Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TimedOut {
                what: Wait::Request,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(3));

    // Cancel a request by dropping its future: the late reply is then an
    // ordinary message instead of being swallowed by a stale waiter.
    let cancelled = tokio::time::timeout(
        Duration::from_secs(1),
        client.request(T, "q2", Some(Duration::from_secs(3600))),
    )
    .await;
    assert!(
        cancelled.is_err(),
        "the future was dropped by the outer timeout"
    );
    let mut late_ids = Vec::new();
    while late_ids.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(120), client.recv()).await {
            Ok(Some(ClientEvent::Message(m))) => late_ids.push(m.request_id),
            Ok(Some(_)) => {}
            other => panic!("expected the late replies, got {other:?}"),
        }
    }
    late_ids.sort_unstable();
    assert_eq!(
        late_ids,
        vec![0, 1],
        "both late replies arrive as plain messages"
    );
    client.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_for_room_and_everything_arrives_in_order_both_ways() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).await;
    let client = connect(client_cfg(&server).max_outbound(64 * 1024)).await;
    let s = server.clone();
    let seen = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 10_000 {
            match s.recv().await {
                Some(ServerEvent::Message(peer, m)) => {
                    got.push(u32::from_be_bytes(m.payload[..4].try_into().unwrap()));
                    if got.len() == 10_000 {
                        for i in 0..10_000u32 {
                            s.send(&peer, T, i.to_be_bytes().to_vec(), None)
                                .await
                                .unwrap();
                        }
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        got
    });
    let mut pad = vec![0u8; 1024];
    for i in 0..10_000u32 {
        pad[..4].copy_from_slice(&i.to_be_bytes());
        client.send(T, pad.clone(), None).await.unwrap();
    }
    assert_eq!(seen.await.unwrap(), (0..10_000).collect::<Vec<_>>());
    let mut back = Vec::new();
    while back.len() < 10_000 {
        if let Some(ClientEvent::Message(m)) = client.recv().await {
            back.push(u32::from_be_bytes(m.payload[..].try_into().unwrap()));
        }
    }
    assert_eq!(back, (0..10_000).collect::<Vec<_>>());
    client.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_request_only_accepts_the_reply_of_that_peer() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).await;
    let a = connect(client_cfg(&server)).await;
    let b = connect(client_cfg(&server)).await;
    // Learn which peer is b.
    b.try_send(T, "i am b").unwrap();
    let peer_b = loop {
        if let Some(ServerEvent::Message(p, _)) = server.recv().await {
            break p;
        }
    };
    let target = loop {
        let others: Vec<_> = server
            .clients()
            .into_iter()
            .filter(|p| *p != peer_b)
            .collect();
        if let Some(p) = others.into_iter().next() {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // a answers requests, but only after a pause.
    a.on_recv(|a: Client, m| async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = a.reply(&m, T, "from a");
    });
    let s = server.clone();
    let req = tokio::spawn(async move {
        s.request(&target, T, "who?", Some(Duration::from_secs(5)))
            .await
    });
    // Meanwhile b sends a frame carrying the awaited id on its own connection.
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.reply(
        &veltix_tokio::Frame::new(T, 32_768, Bytes::new()),
        T,
        "forged by b",
    )
    .unwrap();
    let reply = req.await.unwrap().unwrap();
    assert_eq!(reply.request_id, 32_768);
    assert_eq!(
        reply.text().unwrap(),
        "from a",
        "a reply from another peer never counts"
    );
    // The forgery reached the server as an ordinary message from b.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), server.recv()).await {
            Ok(Some(ServerEvent::Message(p, m))) => {
                assert_eq!(p, peer_b);
                assert_eq!((m.request_id, m.text().unwrap()), (32_768, "forged by b"));
                break;
            }
            Ok(Some(ServerEvent::Connected(_))) => {}
            other => panic!("expected b's forged frame, got {other:?}"),
        }
    }
    a.disconnect().await;
    b.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_then_shutdown_leaves_no_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let server = echo_server().await;
    let cfg = client_cfg(&server);
    let mut joins = Vec::new();
    for i in 0..1000u32 {
        let cfg = cfg.clone();
        joins.push(tokio::spawn(async move {
            let c = Client::new(cfg)?;
            c.connect().await?;
            let payload = Bytes::from(format!("client {i}"));
            let r = c
                .request(T, payload.clone(), Some(Duration::from_secs(30)))
                .await?;
            assert_eq!(r.payload, payload, "each client gets its own echo");
            Ok::<Client, Error>(c)
        }));
    }
    let mut clients = Vec::new();
    for j in joins {
        clients.push(j.await.unwrap().unwrap());
    }
    assert_eq!(server.clients().len(), 1000);
    // Idle peers cost no handler task: one I/O task per connection on each
    // side, plus the accept task.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.num_alive_tasks() > baseline + 2001 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        metrics.num_alive_tasks() <= baseline + 2001,
        "{} tasks for 1000 idle clients",
        metrics.num_alive_tasks() - baseline
    );
    server.shutdown(Duration::from_secs(5)).await;
    drop(clients); // dropping the clients ends their tasks
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > baseline && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.num_alive_tasks(), baseline, "no task left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_client_ends_its_tasks_and_the_server_sees_it() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let server = start(ServerConfig::new("127.0.0.1", 0)).await;
    let before = metrics.num_alive_tasks();
    let client = connect(client_cfg(&server)).await;
    assert!(matches!(
        server.recv().await,
        Some(ServerEvent::Connected(_))
    ));
    assert!(metrics.num_alive_tasks() > before);
    drop(client);
    match tokio::time::timeout(Duration::from_secs(5), server.recv()).await {
        Ok(Some(ServerEvent::Disconnected(_, reason))) => {
            assert_eq!(reason, CloseReason::PeerClosed);
        }
        other => panic!("expected a disconnect, got {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.num_alive_tasks() > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(metrics.num_alive_tasks() <= before, "client tasks ended");
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_and_bad_config_are_typed_errors() {
    let server = start(ServerConfig::new("127.0.0.1", 0).max_connection(Some(1))).await;
    let first = connect(client_cfg(&server)).await;
    let second = Client::new(client_cfg(&server)).unwrap();
    match second.connect().await {
        Err(Error::Rejected(r)) => assert_eq!(r, "server_full"),
        other => panic!("expected server_full, got {other:?}"),
    }
    assert!(server.is_full());
    assert_eq!(server.stats().rejected, 1);
    assert!(matches!(
        Server::new(ServerConfig::new("127.0.0.1", 0).max_workers(0)),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        first.try_send(MessageType::new(3), "x"),
        Err(Error::Send(SendError::ReservedType(_)))
    ));
    first.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_on_peers_select_clients_by_tag() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(client_cfg(&server)).await);
    }
    let mut peers = Vec::new();
    while peers.len() < 3 {
        if let Some(ServerEvent::Connected(p)) = server.recv().await {
            peers.push(p);
        }
    }
    peers[0].set_tag("room", serde_json::json!("a"));
    assert!(peers[1].add_tag("room", serde_json::json!("b")));
    assert!(!peers[1].add_tag("room", serde_json::json!("c")));
    assert_eq!(peers[1].get_tag("room"), Some(serde_json::json!("b")));
    assert_eq!(server.clients_by_tag("room", None).len(), 2);
    let a = server.clients_by_tag("room", Some(&serde_json::json!("a")));
    assert_eq!(a, vec![peers[0].clone()]);
    assert_eq!(
        server
            .broadcast_tag(T, b"room a", "room", Some(&serde_json::json!("a")))
            .unwrap(),
        1
    );
    assert_eq!(
        server
            .broadcast_to(T, b"to 1 and 2", &[peers[1].clone(), peers[2].clone()])
            .unwrap(),
        2
    );
    assert_eq!(
        server
            .broadcast_except(T, b"all but 0", &[peers[0].clone()])
            .unwrap(),
        2
    );
    assert_eq!(server.broadcast(T, b"all").unwrap(), 3);
    assert!(server.close_client(&peers[2]));
    for c in clients {
        c.disconnect().await;
    }
    server.shutdown(Duration::from_secs(1)).await;
    assert!(!peers[0].has_tag("room"), "tags end with the peer");
    assert!(!peers[0].add_tag("x", serde_json::json!(1)));
}
