//! Tests of the tokio driver on loopback: deadlines and reconnect timing on
//! tokio's paused clock, backpressure, cancellation, ordering, and 1 000
//! concurrent clients with a shutdown that leaves no task behind.

use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::time::Instant;
use veltix_tokio::{
    Client, ClientConfig, ClientEvent, DisconnectReason, Error, MessageType, SendError, Server,
    ServerConfig, ServerEvent,
};

const T: MessageType = MessageType::new(200);

fn client_cfg(server: &Server) -> ClientConfig {
    ClientConfig::new("127.0.0.1", server.local_addr().port())
}

/// Echoes every message back, until the server shuts down.
fn spawn_echo(server: &Server) -> tokio::task::JoinHandle<()> {
    let s = server.clone();
    tokio::spawn(async move {
        while let Some(ev) = s.recv().await {
            if let ServerEvent::Message(peer, m) = ev {
                let _ = s.reply(&peer, &m, m.message_type, m.payload.clone());
            }
        }
    })
}

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
    let err = Client::connect(
        ClientConfig::new("127.0.0.1", port).handshake_timeout(Duration::from_secs(7)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::TimedOut(d) if d == Duration::from_secs(7)),
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
    let server = Server::bind(ServerConfig::new("127.0.0.1", 0))
        .await
        .unwrap();
    let echo = spawn_echo(&server);
    let delay = Duration::from_secs(10);
    let client = Client::connect(client_cfg(&server).retry(3).retry_delay(delay))
        .await
        .unwrap();
    assert!(matches!(
        client.recv().await,
        Some(ClientEvent::Connected(_))
    ));

    server.shutdown(Duration::from_secs(1)).await;
    echo.abort();
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
}

#[tokio::test(start_paused = true)]
async fn request_deadline_is_exact_and_a_dropped_request_frees_its_id() {
    let server = Server::bind(ServerConfig::new("127.0.0.1", 0))
        .await
        .unwrap();
    // Answers nothing at once; replies to the first request 60 s later.
    let s = server.clone();
    let late = tokio::spawn(async move {
        while let Some(ev) = s.recv().await {
            if let ServerEvent::Message(peer, m) = ev {
                let s2 = s.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    let _ = s2.reply(&peer, &m, T, "late");
                });
            }
        }
    });
    let client = Client::connect(client_cfg(&server)).await.unwrap();
    let t0 = Instant::now();
    let err = client
        .request(T, "q", Some(Duration::from_secs(3)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
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
    late.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_reports_a_full_queue_and_send_waits_for_room() {
    let server = Server::bind(ServerConfig::new("127.0.0.1", 0))
        .await
        .unwrap();
    let client = Client::connect(client_cfg(&server).max_outbound(256 * 1024))
        .await
        .unwrap();
    // Nobody reads the server's events yet: its channel fills, it stops
    // reading, TCP fills, and the client's bounded queue fills.
    let payload = Bytes::from(vec![7u8; 1024]);
    let mut sent = 0u32;
    let full = loop {
        match client.try_send(T, payload.clone()) {
            Ok(_) => sent += 1,
            Err(e) => break e,
        }
        if sent % 64 == 0 {
            tokio::task::yield_now().await;
        }
        assert!(sent < 1_000_000, "the queue never filled");
    };
    assert!(
        matches!(full, Error::Send(SendError::QueueFull { .. })),
        "{full}"
    );
    // `send` waits instead; once the server reads again, everything arrives.
    let s = server.clone();
    let total = sent + 1;
    let counter = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            if let Some(ServerEvent::Message(_, m)) = s.recv().await {
                assert_eq!(m.payload.len(), 1024);
                n += 1;
            }
        }
        n
    });
    tokio::time::timeout(Duration::from_secs(20), client.send(T, payload.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), counter)
            .await
            .unwrap()
            .unwrap(),
        total
    );
    client.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_one_peer_arrive_in_order_both_ways() {
    let server = Server::bind(ServerConfig::new("127.0.0.1", 0))
        .await
        .unwrap();
    let client = Client::connect(client_cfg(&server)).await.unwrap();
    let s = server.clone();
    let seen = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 10_000 {
            match s.recv().await {
                Some(ServerEvent::Message(peer, m)) => {
                    got.push(u32::from_be_bytes(m.payload[..].try_into().unwrap()));
                    if got.len() == 10_000 {
                        for i in 0..10_000u32 {
                            s.send(&peer, T, i.to_be_bytes().to_vec()).await.unwrap();
                        }
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        got
    });
    for i in 0..10_000u32 {
        client.send(T, i.to_be_bytes().to_vec()).await.unwrap();
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
    let server = Server::bind(ServerConfig::new("127.0.0.1", 0))
        .await
        .unwrap();
    let a = Client::connect(client_cfg(&server)).await.unwrap();
    let b = Client::connect(client_cfg(&server)).await.unwrap();
    // Learn which peer is b.
    b.send(T, "i am b").await.unwrap();
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
    let a2 = a.clone();
    tokio::spawn(async move {
        while let Some(ev) = a2.recv().await {
            if let ClientEvent::Message(m) = ev {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = a2.reply(&m, T, "from a");
            }
        }
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
    match tokio::time::timeout(Duration::from_secs(5), server.recv()).await {
        Ok(Some(ServerEvent::Message(p, m))) => {
            assert_eq!(p, peer_b);
            assert_eq!((m.request_id, m.text().unwrap()), (32_768, "forged by b"));
        }
        other => panic!("expected b's forged frame, got {other:?}"),
    }
    a.disconnect().await;
    b.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_then_shutdown_leaves_no_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let server = Server::bind(ServerConfig::new("127.0.0.1", 0))
        .await
        .unwrap();
    let echo = spawn_echo(&server);
    let cfg = client_cfg(&server);
    let mut joins = Vec::new();
    for i in 0..1000u32 {
        let cfg = cfg.clone();
        joins.push(tokio::spawn(async move {
            let c = Client::connect(cfg).await?;
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
    server.shutdown(Duration::from_secs(5)).await;
    echo.await.unwrap();
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
    let server = Server::bind(ServerConfig::new("127.0.0.1", 0))
        .await
        .unwrap();
    let before = metrics.num_alive_tasks();
    let client = Client::connect(client_cfg(&server)).await.unwrap();
    assert!(matches!(
        server.recv().await,
        Some(ServerEvent::Connected(_))
    ));
    assert!(metrics.num_alive_tasks() > before);
    drop(client);
    match tokio::time::timeout(Duration::from_secs(5), server.recv()).await {
        Ok(Some(ServerEvent::Disconnected(_, _))) => {}
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
    let server = Server::bind(ServerConfig::new("127.0.0.1", 0).max_connection(Some(1)))
        .await
        .unwrap();
    let first = Client::connect(client_cfg(&server)).await.unwrap();
    match Client::connect(client_cfg(&server)).await {
        Err(Error::Rejected(r)) => assert_eq!(r, "server_full"),
        other => panic!("expected server_full, got {other:?}"),
    }
    assert!(matches!(
        Server::bind(ServerConfig::new("127.0.0.1", 0).max_workers(0)).await,
        Err(Error::Config(_))
    ));
    first.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_on_peers_select_clients_by_tag() {
    let server = Server::bind(ServerConfig::new("127.0.0.1", 0))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect(client_cfg(&server)).await.unwrap());
    }
    let mut peers = Vec::new();
    while peers.len() < 3 {
        if let Some(ServerEvent::Connected(p)) = server.recv().await {
            peers.push(p);
        }
    }
    peers[0].tags().set_tag("room", serde_json::json!("a"));
    peers[1].tags().set_tag("room", serde_json::json!("b"));
    assert_eq!(server.clients_by_tag("room", None).len(), 2);
    let a = server.clients_by_tag("room", Some(&serde_json::json!("a")));
    assert_eq!(a, vec![peers[0].clone()]);
    // One id for every copy; the tag chooses who gets it.
    let sent = server
        .broadcast(T, b"to room a only", &[peers[1].clone(), peers[2].clone()])
        .unwrap();
    assert_eq!(sent, 1);
    for c in clients {
        c.disconnect().await;
    }
    server.shutdown(Duration::from_secs(1)).await;
}
