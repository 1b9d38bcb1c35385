//! Connection state-machine tests through the public API (they need an
//! epoch `Instant`, which only code outside the core may read).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pump;
use veltix_proto::{
    CloseReason, Connection, ConnectionConfig, Event, Frame, MessageType, RequestFailure,
    SendError, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
};

fn pair() -> (Connection, Connection, Instant) {
    let t0 = Instant::now();
    let cfg = Arc::new(ConnectionConfig::default());
    let mut c = Connection::client(cfg.clone(), t0);
    let mut s = Connection::server(cfg, t0);
    pump(&mut c, &mut s, t0);
    assert!(c.is_established() && s.is_established());
    assert!(matches!(c.poll_event(), Some(Event::Connected(_))));
    assert!(matches!(s.poll_event(), Some(Event::Connected(_))));
    (c, s, t0)
}

#[test]
fn send_before_handshake_is_refused() {
    let t0 = Instant::now();
    let mut c = Connection::client(Arc::new(ConnectionConfig::default()), t0);
    assert_eq!(
        c.send(MessageType(200), &b"x"[..]),
        Err(SendError::NotConnected)
    );
    assert_eq!(c.poll_timeout(), Some(t0 + DEFAULT_HANDSHAKE_TIMEOUT));
}

#[test]
fn ping_answered_and_pong_has_rtt() {
    let (mut c, mut s, t0) = pair();
    let id = c.ping(t0, Duration::from_secs(1)).unwrap();
    assert_eq!(id, 0);
    let wire = c.poll_transmit().unwrap();
    s.handle_input(t0, &wire);
    assert!(
        s.poll_event().is_none(),
        "PING never reaches the application"
    );
    let pong = s.poll_transmit().unwrap();
    assert_eq!(&pong[..], &hex_frame(1, 0)[..]);
    c.handle_input(t0 + Duration::from_millis(7), &pong);
    assert_eq!(
        c.poll_event(),
        Some(Event::Pong {
            request_id: 0,
            rtt: Duration::from_millis(7)
        })
    );
}

fn hex_frame(t: u16, id: u16) -> Vec<u8> {
    Frame::new(MessageType(t), id, Bytes::new())
        .to_vec()
        .unwrap()
}

#[test]
fn queue_full_is_a_typed_error_and_pong_drop_is_counted() {
    let t0 = Instant::now();
    let mut cfg = ConnectionConfig::default();
    cfg.max_outbound = 100;
    let cfg = Arc::new(cfg);
    let mut c = Connection::client(cfg.clone(), t0);
    let mut s = Connection::server(cfg, t0);
    pump(&mut c, &mut s, t0);
    s.send(MessageType(200), vec![0u8; 80]).unwrap();
    assert!(matches!(
        s.send(MessageType(200), vec![0u8; 80]),
        Err(SendError::QueueFull { .. })
    ));
    let ping = Frame::new(MessageType::PING, 5, Bytes::new())
        .to_vec()
        .unwrap();
    s.handle_input(t0, &ping);
    while let Some(e) = s.poll_event() {
        if let Event::PongDropped { request_id } = e {
            assert_eq!(request_id, 5);
        }
    }
    assert_eq!(s.stats().pongs_dropped, 1);
}

#[test]
fn decoder_counters_survive_the_close() {
    let (_c, mut s, t0) = pair();
    let mut wire = vec![b'q'; 20];
    wire.extend(hex_frame(200, 1));
    s.handle_input(t0, &wire);
    s.handle_eof(t0);
    let d = s.stats().decoder;
    assert_eq!((d.bad_magic, d.discarded_bytes, d.frames), (1, 20, 1));
}

#[test]
fn poll_timeout_never_hides_ready_output() {
    let (mut c, _s, t0) = pair();
    assert_eq!(c.poll_timeout(), None);
    c.send(MessageType(200), &b"x"[..]).unwrap();
    assert!(c.has_transmit());
    assert_eq!(c.poll_timeout(), Some(t0));
    let b = c.poll_transmit().unwrap();
    // Taken but not reported written: no longer "now", but the write deadline.
    assert!(!c.has_transmit());
    assert_eq!(c.poll_timeout(), c.next_timer());
    assert_eq!(c.poll_timeout(), Some(t0 + DEFAULT_WRITE_TIMEOUT));
    c.handle_written(t0, b.len());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn closed_connection_generates_nothing() {
    let (mut c, _s, t0) = pair();
    c.request(t0, MessageType(200), &b"q"[..], Duration::from_secs(1))
        .unwrap();
    c.close(t0);
    let evs: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(matches!(
        evs[0],
        Event::RequestFailed {
            request_id: 0,
            reason: RequestFailure::Closed(CloseReason::Local),
            ..
        }
    ));
    // Graceful: the request queued before close is still drained, and
    // `Closed` waits for it.
    assert_eq!(evs.len(), 1);
    assert!(c.is_closed() && !c.is_finished());
    let b = c.poll_transmit().expect("the queued request");
    c.handle_input(t0, &hex_frame(0, 9));
    assert!(c.poll_transmit().is_none(), "no PONG after close");
    c.handle_written(t0, b.len());
    assert!(c.is_finished());
    assert_eq!(
        c.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::Local,
            unsent_bytes: 0
        })
    );
    assert!(matches!(
        c.send(MessageType(200), Bytes::new()),
        Err(SendError::Closed(_))
    ));
    c.handle_timeout(t0 + Duration::from_secs(10));
    assert!(c.poll_event().is_none());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn pending_leaves_exactly_once() {
    let t0 = Instant::now();
    let mut p = veltix_proto::correlation::PendingRequests::new();
    assert!(p.insert(
        1,
        veltix_proto::RequestKind::Request,
        t0,
        Duration::from_secs(2)
    ));
    assert!(!p.insert(
        1,
        veltix_proto::RequestKind::Ping,
        t0,
        Duration::from_secs(1)
    ));
    assert!(p.insert(
        2,
        veltix_proto::RequestKind::Ping,
        t0,
        Duration::from_secs(1)
    ));
    assert_eq!(p.next_deadline(), Some(t0 + Duration::from_secs(1)));
    assert!(p.expire(t0).is_none());
    let (id, _) = p.expire(t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(id, 2);
    assert!(p.resolve(2).is_none());
    assert!(p.resolve(1).is_some());
    assert!(p.resolve(1).is_none());
    assert!(p.is_empty() && p.next_deadline().is_none());
}
#[test]
fn a_refused_transport_counts_nothing() {
    let mut h = veltix_proto::Hub::with_connection_config(
        Arc::new(ConnectionConfig::default()),
        Some(0),
        1,
    );
    assert!(h.accept(Instant::now()).is_err());
    assert_eq!(h.live(), 0);
    assert_eq!(h.stats().rejected, 1);
}
