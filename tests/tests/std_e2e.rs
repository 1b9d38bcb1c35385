//! End-to-end tests of `veltix-std` on loopback: deadlines against slow and
//! silent peers, garbage from the network, shutdown leaving nothing behind,
//! reconnect sequences, admission control, ordering and request routing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use veltix_proto::frame::encode_frame;
use veltix_proto::handshake::{encode_hello, LocalHello};
use veltix_proto::MessageType;
use veltix_std::{
    Client, ClientConfig, DisconnectReason, DisconnectState, Error, Frame, Server, ServerConfig,
    Wait,
};

const T: MessageType = MessageType::new(200);
const SECS5: Option<Duration> = Some(Duration::from_secs(5));

fn server(cfg: ServerConfig) -> (Server, SocketAddr) {
    let s = Server::new(cfg).unwrap();
    s.start().unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

fn echo_server(cfg: ServerConfig) -> (Server, SocketAddr) {
    let (s, addr) = server(cfg);
    s.on_recv(|server, client, msg| {
        let _ = server.reply(client, &msg, msg.message_type, msg.payload.clone());
    });
    (s, addr)
}

fn client_for(addr: SocketAddr) -> ClientConfig {
    ClientConfig::new("127.0.0.1", addr.port())
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// A raw TCP peer that completes the client handshake by hand.
fn raw_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello_len = [0u8; 2];
    s.read_exact(&mut hello_len).unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(hello_len))];
    s.read_exact(&mut body).unwrap();
    s.write_all(&encode_hello(&LocalHello::default())).unwrap();
    let mut ack = [0u8; 18];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(&ack[2..], br#"{"result": "ok"}"#);
    s
}

fn frame(t: u16, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(MessageType::new(t), id, payload, &mut v).unwrap();
    v
}

#[test]
fn silent_and_trickling_peers_are_cut_at_the_handshake_deadline() {
    let timeout = Duration::from_millis(600);
    let (s, addr) = echo_server(ServerConfig::new("127.0.0.1", 0).handshake_timeout(timeout));

    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut trickler = TcpStream::connect(addr).unwrap();
    let hello = encode_hello(&LocalHello::default());
    let trickle = std::thread::spawn(move || {
        // One byte every 100 ms: never idle for a whole read timeout.
        for b in hello.iter() {
            if trickler.write_all(&[*b]).is_err() {
                return Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Instant::now()
    });

    // Meanwhile a normal client is served.
    let c = Client::new(client_for(addr)).unwrap();
    c.connect().unwrap();
    assert_eq!(
        c.request(T, "still serving", SECS5)
            .unwrap()
            .text()
            .unwrap(),
        "still serving"
    );

    // The silent peer gets the server hello, then EOF at the deadline.
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    silent.read_to_end(&mut got).unwrap();
    let cut_after = started.elapsed();
    assert!(got.starts_with(&[0x00]), "server hello first");
    assert!(
        cut_after >= timeout && cut_after < timeout * 4,
        "cut after {cut_after:?}"
    );

    // The trickler is cut before it finishes its 41-byte hello (4.1 s).
    let stopped = trickle.join().unwrap();
    assert!(
        stopped - started < Duration::from_secs(3),
        "trickler cut after {:?}",
        stopped - started
    );
    assert_eq!(s.clients().len(), 1, "only the real client is connected");
    c.disconnect();
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn garbage_bad_crc_and_oversize_are_dropped_and_counted_then_frames_flow() {
    let (s, addr) = server(ServerConfig::new("127.0.0.1", 0).max_message_size(1024));
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    s.on_recv(move |_, _, msg| g.lock().unwrap().push(msg.payload.to_vec()));

    let mut raw = raw_client(addr);
    let mut wire = b"this is not a frame at all!".to_vec();
    let mut bad = frame(200, 1, b"crc will not match");
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    wire.extend(bad);
    // Oversize header: 15 + 100_000 > 1024 is rejected from the header alone.
    wire.extend(&frame(200, 2, &vec![b'z'; 100_000])[..15]);
    wire.extend(frame(200, 3, b"first good"));
    wire.extend(frame(200, 4, b"second good"));
    raw.write_all(&wire).unwrap();

    assert!(wait_until(Duration::from_secs(5), || got
        .lock()
        .unwrap()
        .len()
        == 2));
    assert_eq!(
        *got.lock().unwrap(),
        vec![b"first good".to_vec(), b"second good".to_vec()]
    );
    let client = s.clients().pop().unwrap();
    let d = client.stats().unwrap().decoder;
    assert!(
        d.bad_magic >= 1 && d.crc_mismatch == 1 && d.oversize == 1,
        "{d:?}"
    );
    assert_eq!(d.frames, 2);
    drop(raw);
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn a_flood_of_junk_never_grows_memory_past_the_cap() {
    let (s, addr) = server(ServerConfig::new("127.0.0.1", 0).max_message_size(64 * 1024));
    let mut raw = raw_client(addr);
    // 8 MiB of 'V's: every byte could start a magic, none does.
    let junk = vec![b'V'; 1 << 20];
    for _ in 0..8 {
        raw.write_all(&junk).unwrap();
    }
    raw.write_all(&frame(0, 77, b"")).unwrap(); // a PING after the junk
    let mut pong = [0u8; 15];
    raw.read_exact(&mut pong).unwrap();
    assert_eq!(pong, frame(1, 77, b"")[..]);
    let client = s.clients().pop().unwrap();
    let stats = client.stats().unwrap();
    assert!(stats.decoder.discarded_bytes >= 8 << 20, "{stats:?}");
    drop(raw);
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn reconnects_when_the_server_comes_back_with_veltix_states() {
    let (s, addr) = echo_server(ServerConfig::new("127.0.0.1", 0));
    let port = addr.port();
    let states = Arc::new(Mutex::new(Vec::<DisconnectState>::new()));
    let connects = Arc::new(AtomicUsize::new(0));
    let c = Client::new(
        client_for(addr)
            .retry(50)
            .retry_delay(Duration::from_millis(40)),
    )
    .unwrap();
    let st = states.clone();
    c.on_disconnect(move |_, s| st.lock().unwrap().push(s.clone()));
    let n = connects.clone();
    c.on_connect(move |_| {
        n.fetch_add(1, Ordering::SeqCst);
    });
    c.connect().unwrap();
    assert_eq!(connects.load(Ordering::SeqCst), 1);

    s.shutdown(Duration::from_secs(1));
    assert!(wait_until(Duration::from_secs(3), || states
        .lock()
        .unwrap()
        .len()
        >= 3));
    // Back on the same port.
    let s2 = Server::new(ServerConfig::new("127.0.0.1", port)).unwrap();
    s2.on_recv(|server, client, msg| {
        let _ = server.reply(client, &msg, msg.message_type, msg.payload.clone());
    });
    s2.start().unwrap();
    assert!(wait_until(Duration::from_secs(5), || connects
        .load(Ordering::SeqCst)
        == 2));
    assert_eq!(
        c.request(T, "again", SECS5).unwrap().text().unwrap(),
        "again"
    );

    let seen = states.lock().unwrap().clone();
    assert_eq!(seen[0].attempt, 0);
    assert!(!seen[0].permanent);
    assert_eq!(seen[0].reason, DisconnectReason::ServerClosed);
    for (i, st) in seen.iter().enumerate() {
        assert_eq!(st.attempt, i as u32, "attempts count up: {seen:?}");
        assert!(!st.permanent);
        assert_eq!(st.retry_max, 50);
    }
    c.disconnect();
    let last = states.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.reason, DisconnectReason::Manual);
    assert!(last.permanent);
    s2.shutdown(Duration::from_secs(1));
}

#[test]
fn refused_connect_follows_the_retry_policy_then_gives_up() {
    // A port with nobody behind it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let states = Arc::new(Mutex::new(Vec::new()));
    let c = Client::new(
        ClientConfig::new("127.0.0.1", port)
            .retry(2)
            .retry_delay(Duration::from_millis(100)),
    )
    .unwrap();
    let st = states.clone();
    let t0 = Instant::now();
    c.on_disconnect(move |_, s| {
        st.lock()
            .unwrap()
            .push((s.permanent, s.attempt, t0.elapsed()))
    });
    let err = c.connect().unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    let seen = states.lock().unwrap().clone();
    let shape: Vec<(bool, u32)> = seen.iter().map(|&(p, a, _)| (p, a)).collect();
    // Veltix's observed sequence for N=2: (F,0) (F,1) (F,2) (T,2).
    assert_eq!(shape, vec![(false, 0), (false, 1), (false, 2), (true, 2)]);
    assert!(
        seen[1].2 < Duration::from_millis(90),
        "attempt 1 is immediate"
    );
    assert!(
        seen[2].2 >= Duration::from_millis(100),
        "attempt 2 waits retry_delay"
    );
}

#[test]
fn max_connection_counts_handshaking_peers_and_rejects_with_server_full() {
    let (s, addr) = echo_server(ServerConfig::new("127.0.0.1", 0).max_connection(Some(1)));
    // A peer that connects but never says hello still holds the only slot.
    let _pending = TcpStream::connect(addr).unwrap();
    assert!(wait_until(Duration::from_secs(2), || s.is_full()));
    let c = Client::new(client_for(addr)).unwrap();
    match c.connect() {
        Err(Error::Rejected(reason)) => assert_eq!(reason, "server_full"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn a_panicking_callback_is_contained_and_order_is_kept() {
    let (s, addr) = server(ServerConfig::new("127.0.0.1", 0).max_workers(4));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sn = seen.clone();
    s.on_recv(move |_, _, msg| {
        let n = u32::from_be_bytes(msg.payload[..4].try_into().unwrap());
        if n == 1234 {
            panic!("bug in a user callback");
        }
        sn.lock().unwrap().push(n);
    });
    let c = Client::new(client_for(addr)).unwrap();
    c.connect().unwrap();
    for n in 0..5000u32 {
        c.send(T, n.to_be_bytes().to_vec(), SECS5).unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || seen
        .lock()
        .unwrap()
        .len()
        == 4999));
    let want: Vec<u32> = (0..5000).filter(|&n| n != 1234).collect();
    assert_eq!(
        *seen.lock().unwrap(),
        want,
        "serial per connection, in order"
    );
    assert!(c.ping(None).is_ok(), "the connection survived");
    c.disconnect();
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn broadcast_reaches_connected_clients_once_with_one_id() {
    let (s, addr) = server(ServerConfig::new("127.0.0.1", 0));
    let got = Arc::new(Mutex::new(Vec::<(usize, Frame)>::new()));
    let clients: Vec<Client> = (0..3)
        .map(|i| {
            let c = Client::new(client_for(addr)).unwrap();
            let g = got.clone();
            c.on_recv(move |_, f| g.lock().unwrap().push((i, f)));
            c.connect().unwrap();
            c
        })
        .collect();
    // A fourth peer mid-handshake must not receive anything.
    let mut half = TcpStream::connect(addr).unwrap();
    assert!(wait_until(Duration::from_secs(2), || s.clients().len() == 3));
    let except = s.clients().pop().unwrap();
    let sent = s
        .broadcast_except(MessageType::new(300), b"news", &[except])
        .unwrap();
    assert_eq!(sent, 2);
    assert!(wait_until(Duration::from_secs(5), || got
        .lock()
        .unwrap()
        .len()
        == 2));
    let got = got.lock().unwrap().clone();
    assert_eq!(
        got[0].1.request_id, got[1].1.request_id,
        "one id for every copy"
    );
    assert!(got.iter().all(|(_, f)| &f.payload[..] == b"news"));
    // The handshaking peer got only the server hello: no frame was written into its handshake.
    half.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n = half.read(&mut buf).unwrap();
    assert_eq!(n, usize::from(u16::from_be_bytes([buf[0], buf[1]])) + 2);
    for c in clients {
        c.disconnect();
    }
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn server_send_and_wait_accepts_a_reply_only_from_that_client() {
    let (s, addr) = server(ServerConfig::new("127.0.0.1", 0));
    let a = Client::new(client_for(addr)).unwrap();
    let b = Client::new(client_for(addr)).unwrap();
    a.on_recv(|c, f| {
        std::thread::sleep(Duration::from_millis(200));
        c.reply(&f, T, "from a").unwrap();
    });
    a.connect().unwrap();
    assert!(wait_until(Duration::from_secs(2), || s.clients().len() == 1));
    let client_a = s.clients().pop().unwrap();
    b.connect().unwrap();
    let s2 = s.clone();
    let req = std::thread::spawn(move || s2.request(&client_a, T, "q", SECS5));
    let stray = Arc::new(Mutex::new(Vec::new()));
    let st = stray.clone();
    s.on_recv(move |_, _, f| st.lock().unwrap().push((f.request_id, f.payload.to_vec())));
    // B forges a "reply" carrying the id the server waits on (32768) before A answers.
    std::thread::sleep(Duration::from_millis(50));
    let waited_id = Frame::new(T, 32_768, bytes::Bytes::new());
    b.reply(&waited_id, T, "forged by b").unwrap();
    let reply = req.join().unwrap().unwrap();
    assert_eq!(reply.text().unwrap(), "from a");
    assert_eq!(reply.request_id, 32_768);
    // The forgery was ordinary traffic from b.
    assert!(wait_until(Duration::from_secs(2), || !stray
        .lock()
        .unwrap()
        .is_empty()));
    assert_eq!(stray.lock().unwrap()[0], (32_768, b"forged by b".to_vec()));
    a.disconnect();
    b.disconnect();
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn pending_waiters_fail_with_the_close_reason_and_timeouts_are_typed() {
    let (s, addr) = server(ServerConfig::new("127.0.0.1", 0));
    // The server never answers type 200; it closes the client on type 201.
    s.route(MessageType::new(201), |server, client, _| {
        server.close_client(client);
    })
    .unwrap();
    let c = Client::new(client_for(addr)).unwrap();
    c.connect().unwrap();
    let err = c
        .request(T, "?", Some(Duration::from_millis(150)))
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
    let c2 = c.clone();
    let waiter = std::thread::spawn(move || c2.request(T, "?", SECS5));
    std::thread::sleep(Duration::from_millis(100));
    c.send(MessageType::new(201), "close me", None).unwrap();
    let err = waiter.join().unwrap().unwrap_err();
    assert!(matches!(err, Error::Closed(_)), "{err}");
    assert!(wait_until(Duration::from_secs(2), || !c.is_connected()));
    assert!(matches!(c.try_send(T, "x"), Err(Error::NotConnected)));
    c.disconnect();
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn invalid_configs_are_typed_errors() {
    let e = Server::new(ServerConfig::new("127.0.0.1", 0).max_workers(0)).unwrap_err();
    assert!(
        matches!(e, Error::Config(ref c) if c.field == "max_workers"),
        "{e}"
    );
    let e = Client::new(ClientConfig::new("", 1)).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
}

#[test]
fn ping_says_why_and_the_server_hello_is_visible() {
    let mut cfg = ServerConfig::new("127.0.0.1", 0);
    cfg.hello.version = "srv-7".into();
    let (s, addr) = server(cfg);
    let c = Client::new(client_for(addr)).unwrap();
    assert!(matches!(c.ping(None), Err(Error::NotConnected)));
    c.connect().unwrap();
    assert_eq!(c.server_hello().unwrap().version.as_deref(), Some("srv-7"));
    assert!(c.ping(None).unwrap() > Duration::ZERO);
    assert!(wait_until(Duration::from_secs(2), || s.clients().len() == 1));
    let peer = s.clients().pop().unwrap();
    assert!(s.ping(&peer, None).unwrap() > Duration::ZERO);
    c.disconnect();
    assert!(wait_until(Duration::from_secs(2), || s
        .clients()
        .is_empty()));
    assert!(
        matches!(
            s.ping(&peer, None),
            Err(Error::Closed(_) | Error::NotConnected)
        ),
        "a gone peer is refused"
    );
    s.shutdown(Duration::from_secs(1));
}

#[test]
fn tags_select_clients_across_threads() {
    use serde_json::json;
    let (s, addr) = server(ServerConfig::new("127.0.0.1", 0));
    // Tag every client from the callback thread: odd ones join "blue".
    s.on_recv(|_, client, msg| {
        let n = msg.payload[0];
        client.set_tag("team", json!(if n % 2 == 1 { "blue" } else { "red" }));
        assert!(client.add_tag("seen", serde_json::Value::Null));
    });
    let clients: Vec<Client> = (0..4u8)
        .map(|n| {
            let c = Client::new(client_for(addr)).unwrap();
            c.connect().unwrap();
            c.send(T, vec![n], None).unwrap();
            c
        })
        .collect();
    assert!(wait_until(Duration::from_secs(5), || s
        .clients()
        .iter()
        .filter(|c| c.has_tag("seen"))
        .count()
        == 4));
    assert_eq!(s.clients_by_tag("team", Some(&json!("blue"))).len(), 2);
    assert_eq!(
        s.clients_by_tag("seen", None).len(),
        4,
        "None matches any value"
    );
    let one = s.clients_by_tag("team", Some(&json!("red"))).pop().unwrap();
    assert!(one.has_all_tags(&["team", "seen"]) && !one.has_any_tags(&["x"]));
    assert!(one.remove_tag("team") && !one.remove_tag("team"));
    assert_eq!(s.clients_by_tag("team", Some(&json!("red"))).len(), 1);
    assert_eq!(one.tags().iter().count(), 1);
    for c in clients {
        c.disconnect();
    }
    s.shutdown(Duration::from_secs(1));
}

/// (a) A server that accepts and resets every connection before its hello:
/// each attempt counts once, per Veltix's sequence.
#[test]
fn a_server_that_resets_before_its_hello_counts_each_attempt_once() {
    use std::sync::atomic::AtomicBool;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (st, acc) = (stop.clone(), accepted.clone());
    let resetter = std::thread::spawn(move || {
        while !st.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((sock, _)) => {
                    acc.fetch_add(1, Ordering::SeqCst);
                    drop(sock);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    let states = Arc::new(Mutex::new(Vec::new()));
    let c = Client::new(
        ClientConfig::new("127.0.0.1", port)
            .retry(2)
            .retry_delay(Duration::from_millis(100)),
    )
    .unwrap();
    let st = states.clone();
    c.on_disconnect(move |_, s| st.lock().unwrap().push((s.permanent, s.attempt)));
    let err = c.connect().unwrap_err();
    assert!(!c.is_connected(), "{err}");
    assert_eq!(
        *states.lock().unwrap(),
        vec![(false, 0), (false, 1), (false, 2), (true, 2)]
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "three attempts");
    stop.store(true, Ordering::SeqCst);
    resetter.join().unwrap();
    c.disconnect();
}

/// (b) A peer that stops reading: `try_send` is accepted up to about
/// `max_outbound` plus the socket buffers, then refused with `QueueFull`;
/// `send` with a timeout gives up with `TimedOut { what: Send }`.
#[test]
fn a_peer_that_stops_reading_fills_the_queue_then_send_times_out() {
    use veltix_std::SendError;
    let max_outbound = 64 * 1024;
    let (s, addr) = server(ServerConfig::new("127.0.0.1", 0).max_outbound(max_outbound));
    let _raw = raw_client(addr); // never reads again
    assert!(wait_until(Duration::from_secs(2), || s.clients().len() == 1));
    let peer = s.clients().pop().unwrap();
    let msg = bytes::Bytes::from(vec![7u8; 16 * 1024]);
    let mut accepted = 0usize;
    let started = Instant::now();
    let (err, took) = loop {
        // Fill the queue until it refuses.
        loop {
            match s.try_send(&peer, T, msg.clone()) {
                Ok(_) => accepted += 1,
                Err(Error::Send(SendError::QueueFull { limit, .. })) => {
                    assert_eq!(limit, max_outbound);
                    break;
                }
                Err(e) => panic!("unexpected {e}"),
            }
            assert!(started.elapsed() < Duration::from_secs(20), "never full");
        }
        // Then wait for room; the kernel may still take a little more (its
        // buffers grow), so a success here just means "fill again".
        let t0 = Instant::now();
        match s.send(&peer, T, msg.clone(), Some(Duration::from_millis(200))) {
            Ok(_) => accepted += 1,
            Err(e) => break (e, t0.elapsed()),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never stays full"
        );
    };
    let bytes = accepted * msg.len();
    assert!(bytes >= max_outbound - msg.len(), "accepted {bytes}");
    // max_outbound plus what loopback socket buffers can absorb.
    assert!(bytes <= max_outbound + 32 * 1024 * 1024, "accepted {bytes}");
    assert!(
        matches!(err, Error::TimedOut { what: Wait::Send, after } if after == Duration::from_millis(200)),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(600),
        "{took:?}"
    );
    s.shutdown(Duration::from_millis(100));
}

/// (c) A server floods a client whose handler sleeps: requests and pings
/// still time out on time, and `disconnect` ends within the flush deadline.
#[test]
fn a_blocked_handler_does_not_stall_deadlines_or_disconnect() {
    use std::sync::atomic::AtomicBool;
    let (s, addr) = server(ServerConfig::new("127.0.0.1", 0));
    let stop = Arc::new(AtomicBool::new(false));
    let pushers = Arc::new(Mutex::new(Vec::new()));
    let (st, ps) = (stop.clone(), pushers.clone());
    s.on_connect(move |server, peer| {
        let (server, peer, st) = (server.clone(), peer.clone(), st.clone());
        ps.lock().unwrap().push(std::thread::spawn(move || {
            let payload = bytes::Bytes::from(vec![1u8; 1024]);
            let mut n = 0;
            while !st.load(Ordering::SeqCst) && n < 20_000 {
                match server.send(&peer, T, payload.clone(), Some(Duration::from_millis(100))) {
                    Ok(_) => n += 1,
                    Err(Error::TimedOut { .. }) => {}
                    Err(_) => break,
                }
            }
            n
        }));
    });
    let flush = Duration::from_secs(2);
    let mut cfg = client_for(addr);
    cfg.deadlines.flush_timeout = flush;
    let c = Client::new(cfg).unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    c.on_recv(move |_, _| {
        h.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
    });
    c.connect().unwrap();
    // Let the flood fill every buffer on the way.
    std::thread::sleep(Duration::from_millis(500));
    let second = Duration::from_secs(1);
    let t0 = Instant::now();
    let err = c
        .request(MessageType::new(201), "q", Some(second))
        .unwrap_err();
    let took = t0.elapsed();
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
    assert!(
        took >= second && took <= second + second / 10,
        "request took {took:?}"
    );
    let t0 = Instant::now();
    let err = c.ping(Some(second)).unwrap_err();
    let took = t0.elapsed();
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
    assert!(
        took >= second && took <= second + second / 10,
        "ping took {took:?}"
    );
    let t0 = Instant::now();
    assert!(c.disconnect());
    let took = t0.elapsed();
    assert!(took < flush, "disconnect took {took:?}");
    assert!(handled.load(Ordering::SeqCst) < 200, "the handler was slow");
    stop.store(true, Ordering::SeqCst);
    s.shutdown(Duration::from_millis(100));
    for p in pushers.lock().unwrap().drain(..) {
        p.join().unwrap();
    }
}

/// (d) Four flooding clients and one legitimate one, `max_workers = 4`: the
/// legitimate client's request is answered within a second.
#[test]
fn flooding_clients_do_not_starve_a_legitimate_one() {
    use std::sync::atomic::AtomicBool;
    let (s, addr) = server(ServerConfig::new("127.0.0.1", 0).max_workers(4));
    let flood = MessageType::new(250);
    let echo = MessageType::new(251);
    let flooded = Arc::new(AtomicUsize::new(0));
    let f = flooded.clone();
    s.route(flood, move |_, _, _| {
        f.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1));
    })
    .unwrap();
    s.route(echo, move |server, peer, msg| {
        let _ = server.reply(peer, &msg, echo, msg.payload.clone());
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            let c = Client::new(client_for(addr)).unwrap();
            c.connect().unwrap();
            let st = stop.clone();
            std::thread::spawn(move || {
                let payload = bytes::Bytes::from(vec![3u8; 512]);
                while !st.load(Ordering::SeqCst) {
                    let _ = c.send(flood, payload.clone(), Some(Duration::from_millis(50)));
                }
                c.disconnect();
            })
        })
        .collect();
    let legit = Client::new(client_for(addr)).unwrap();
    legit.connect().unwrap();
    assert!(wait_until(Duration::from_secs(5), || flooded
        .load(Ordering::Relaxed)
        > 500));
    for i in 0..5 {
        let t0 = Instant::now();
        let reply = legit
            .request(echo, format!("hi {i}"), Some(Duration::from_secs(5)))
            .unwrap();
        let took = t0.elapsed();
        assert_eq!(reply.text().unwrap(), format!("hi {i}"));
        assert!(took < Duration::from_secs(1), "answered after {took:?}");
    }
    stop.store(true, Ordering::SeqCst);
    for f in flooders {
        f.join().unwrap();
    }
    legit.disconnect();
    s.shutdown(Duration::from_secs(1));
}
