//! A live Veltix echo server and client in one process, over `std::net`,
//! driven by the sans-IO core alone. The crate docs include this file as
//! their event-loop example, so it is compiled and run by `cargo test`.
//!
//! Run it: `cargo run -p veltix-proto --example event_loop`

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use veltix_proto::{Connection, ConnectionConfig, Event, MessageType};

/// Runs one connection until `on_event` returns `false` or it closes.
fn drive(
    conn: &mut Connection,
    sock: &mut TcpStream,
    mut on_event: impl FnMut(&mut Connection, Event) -> bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
    loop {
        // 1. Output: everything queued, in order, each chunk reported written
        //    (a blocking socket writes it all; a non-blocking one reports
        //    what it wrote and waits for writability).
        while let Some(bytes) = conn.poll_transmit() {
            sock.write_all(&bytes)?;
            conn.handle_written(Instant::now(), bytes.len());
        }
        // 2. Events: hand each to the application (which may issue commands).
        while let Some(event) = conn.poll_event() {
            let closed = matches!(event, Event::Closed { .. });
            if !on_event(conn, event) || closed {
                while let Some(bytes) = conn.poll_transmit() {
                    sock.write_all(&bytes)?; // graceful: flush what was queued
                    conn.handle_written(Instant::now(), bytes.len());
                }
                return Ok(());
            }
        }
        // Events taken may have let decoding resume and queue output (PONGs).
        if conn.has_transmit() {
            continue;
        }
        // 3. Wait for input, no longer than the next deadline.
        let now = Instant::now();
        match conn.poll_timeout() {
            Some(t) if t <= now => {
                conn.handle_timeout(now);
                continue;
            }
            Some(t) => sock.set_read_timeout(Some(t - now))?,
            None => sock.set_read_timeout(None)?,
        }
        // 4. Input.
        match sock.read(&mut buf) {
            Ok(0) => conn.handle_eof(Instant::now()),
            Ok(n) => conn.handle_input(Instant::now(), &buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                conn.handle_timeout(Instant::now())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => conn.handle_transport_error(Instant::now(), &e),
        }
    }
}

fn main() -> std::io::Result<()> {
    let config = Arc::new(ConnectionConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;

    // An echo server for one client: replies to every message with its payload.
    let server_config = config.clone();
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut sock, _) = listener.accept()?;
        let mut conn = Connection::server(server_config, Instant::now());
        drive(&mut conn, &mut sock, |conn, event| {
            println!("server: {event:?}");
            if let Event::Message(m) = event {
                conn.reply(m.request_id, m.message_type, m.payload)
                    .expect("reply");
            }
            true
        })
    });

    // A client: one request, one ping, then close.
    let mut sock = TcpStream::connect(addr)?;
    let mut conn = Connection::client(config, Instant::now());
    let mut reply = None;
    let mut rtt = None;
    drive(&mut conn, &mut sock, |conn, event| {
        println!("client: {event:?}");
        match event {
            Event::Connected(peer) => {
                println!("connected to veltix {:?}", peer.version);
                let now = Instant::now();
                conn.request(
                    now,
                    MessageType::new(200),
                    &b"hello"[..],
                    Duration::from_secs(5),
                )
                .expect("request");
                conn.ping(now, Duration::from_secs(5)).expect("ping");
            }
            Event::Response { frame, .. } => reply = Some(frame.payload),
            Event::Pong { rtt: r, .. } => rtt = Some(r),
            Event::RequestFailed { reason, .. } => panic!("request failed: {reason}"),
            _ => {}
        }
        if reply.is_some() && rtt.is_some() {
            conn.close(Instant::now());
            return false;
        }
        true
    })?;
    drop(sock); // the server sees EOF and returns
    server.join().expect("server thread")?;
    assert_eq!(reply.as_deref(), Some(&b"hello"[..]));
    println!("echo ok, ping rtt {:?}", rtt.expect("a pong arrived"));
    Ok(())
}
