//! The connection's guarantees under backpressure and deadlines, through the
//! public API: the transmit window, `max_outbound` counting unreported
//! bytes, `poll_timeout` for a driver that cannot write, bounded events and
//! `wants_input`, request deadlines with events untaken, and the write,
//! body and flush deadlines.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pump;
use veltix_proto::{
    CloseReason, Connection, ConnectionConfig, Event, Frame, MessageType, RequestFailure,
    RequestKind, SendError, DEFAULT_BODY_TIMEOUT, DEFAULT_FLUSH_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
    TRANSMIT_WINDOW,
};

const MSG: MessageType = MessageType(200);

fn pair_with(config: ConnectionConfig) -> (Connection, Connection, Instant) {
    let t0 = Instant::now();
    let config = Arc::new(config);
    let mut c = Connection::client(config.clone(), t0);
    let mut s = Connection::server(config, t0);
    pump(&mut c, &mut s, t0);
    assert!(c.is_established() && s.is_established());
    assert!(matches!(c.poll_event(), Some(Event::Connected(_))));
    assert!(matches!(s.poll_event(), Some(Event::Connected(_))));
    (c, s, t0)
}

fn pair() -> (Connection, Connection, Instant) {
    pair_with(ConnectionConfig::default())
}

fn frame(t: u16, id: u16, payload: &[u8]) -> Vec<u8> {
    Frame::new(MessageType(t), id, Bytes::copy_from_slice(payload))
        .to_vec()
        .unwrap()
}

/// Takes output without reporting it (a driver whose socket is full).
fn take_all(c: &mut Connection) -> usize {
    let mut n = 0;
    while let Some(b) = c.poll_transmit() {
        n += b.len();
    }
    n
}

#[test]
fn a_driver_that_does_not_report_holds_at_most_the_transmit_window() {
    let (_c, mut s, t0) = pair();
    let chunk = vec![7u8; 10_000];
    let mut queued = 0;
    while s.send(MSG, chunk.clone()).is_ok() {
        queued += 1;
    }
    assert!(queued * 10_000 > 4 * TRANSMIT_WINDOW, "the queue is deep");
    let held = take_all(&mut s);
    assert_eq!(held, s.in_flight());
    assert!(held >= TRANSMIT_WINDOW, "stops only at the window");
    assert!(
        held < TRANSMIT_WINDOW + 10_015,
        "at most one chunk past the window: {held}"
    );
    assert!(!s.has_transmit());
    assert!(s.poll_transmit().is_none());
    // Reporting some lets it give more, again up to the window.
    let written = s.stats().bytes_written;
    s.handle_written(t0, 50_000);
    assert!(s.has_transmit());
    let more = take_all(&mut s);
    assert!(more > 0 && s.in_flight() >= TRANSMIT_WINDOW);
    assert_eq!(s.stats().bytes_written, written + 50_000);
}

#[test]
fn max_outbound_counts_bytes_taken_and_not_reported() {
    let mut config = ConnectionConfig::default();
    config.max_outbound = 100_000;
    let (_c, mut s, t0) = pair_with(config);
    let chunk = vec![1u8; 1_000];
    while s.send(MSG, chunk.clone()).is_ok() {}
    let queued = s.queued_bytes();
    assert!(queued <= 100_000 && queued + 1_015 > 100_000);
    // The driver takes everything but writes nothing: still full.
    let held = take_all(&mut s);
    assert_eq!(held, queued);
    assert_eq!(s.queued_bytes(), queued, "unreported bytes still count");
    assert!(matches!(
        s.send(MSG, chunk.clone()),
        Err(SendError::QueueFull { queued: q, limit: 100_000 }) if q == queued
    ));
    // Reported written: room again.
    s.handle_written(t0, 5_000);
    assert_eq!(s.queued_bytes(), queued - 5_000);
    assert!(s.send(MSG, chunk).is_ok());
}

#[test]
fn poll_timeout_is_never_now_for_a_driver_that_cannot_write() {
    let (_c, mut s, t0) = pair();
    let chunk = vec![3u8; 64 * 1024];
    for _ in 0..16 {
        s.send(MSG, chunk.clone()).unwrap();
    }
    assert!(s.has_transmit());
    assert_eq!(s.poll_timeout(), Some(t0), "output to take: now");
    take_all(&mut s);
    // The window is held and nothing reported: wait for writability or the
    // write deadline, never "now".
    assert!(!s.has_transmit());
    assert_eq!(s.poll_timeout(), s.next_timer());
    assert_eq!(s.poll_timeout(), Some(t0 + DEFAULT_WRITE_TIMEOUT));
    // Time passes (below the deadline), the driver wakes up: still not now.
    let t1 = t0 + Duration::from_secs(10);
    s.handle_timeout(t1);
    assert!(s.poll_timeout().is_some_and(|t| t > t1));
    // Progress restarts the write deadline.
    s.handle_written(t1, 65_551);
    assert!(s.in_flight() < TRANSMIT_WINDOW);
    assert_eq!(s.poll_timeout(), Some(t1), "room in the window again");
    take_all(&mut s);
    assert_eq!(s.poll_timeout(), Some(t1 + DEFAULT_WRITE_TIMEOUT));
}

#[test]
fn events_are_bounded_and_wants_input_turns_false_at_the_cap() {
    let mut config = ConnectionConfig::default();
    config.max_event_bytes = 4096;
    let (mut c, _s, t0) = pair_with(config);
    let mut wire = Vec::new();
    for i in 0..100u16 {
        wire.extend(frame(200, i, &[i as u8; 500]));
    }
    assert!(c.wants_input());
    c.handle_input(t0, &wire);
    assert!(!c.wants_input(), "stopped decoding at the cap");
    assert!(c.event_bytes() >= 4096 && c.event_bytes() < 4096 + 564);
    assert!(c.buffered_input() > 0, "the rest waits undecoded");
    // Taking events resumes decoding; everything arrives, in order.
    let mut ids = Vec::new();
    while let Some(e) = c.poll_event() {
        assert!(c.event_bytes() < 4096 + 564);
        if let Event::Message(f) = e {
            ids.push(f.request_id);
        }
    }
    assert_eq!(ids, (0..100).collect::<Vec<_>>());
    assert!(c.wants_input());
    assert_eq!(c.buffered_input(), 0);
}

#[test]
fn request_and_ping_deadlines_fire_with_thousands_of_events_untaken() {
    let (mut c, mut s, t0) = pair();
    let req = c
        .request(t0, MSG, &b"q"[..], Duration::from_secs(2))
        .unwrap();
    let ping = c.ping(t0, Duration::from_secs(1)).unwrap();
    // The server floods; the client's application takes nothing.
    for i in 0..3000u16 {
        s.send(MSG, vec![(i % 251) as u8; 16]).unwrap();
    }
    let mut wire = Vec::new();
    while let Some(b) = s.poll_transmit() {
        s.handle_written(t0, b.len());
        wire.extend_from_slice(&b);
    }
    // The server never answers the request nor the ping (not delivered).
    c.handle_input(t0, &wire);
    assert!(c.has_events());
    assert_eq!(c.next_timer(), Some(t0 + Duration::from_secs(1)));
    c.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(
        c.poll_completion(),
        Some(Event::RequestFailed {
            request_id: ping,
            kind: RequestKind::Ping,
            reason: RequestFailure::TimedOut
        })
    );
    assert_eq!(c.poll_completion(), None);
    c.handle_timeout(t0 + Duration::from_secs(2));
    // poll_event gives outcomes first, before the 3000 messages.
    assert_eq!(
        c.poll_event(),
        Some(Event::RequestFailed {
            request_id: req,
            kind: RequestKind::Request,
            reason: RequestFailure::TimedOut
        })
    );
    let messages = std::iter::from_fn(|| c.poll_event())
        .filter(|e| matches!(e, Event::Message(_)))
        .count();
    assert_eq!(messages, 3000);
}

#[test]
fn a_peer_that_stops_reading_is_a_slow_consumer_at_the_write_deadline() {
    let (_c, mut s, t0) = pair();
    s.send(MSG, vec![0u8; 100_000]).unwrap();
    let held = take_all(&mut s);
    let t1 = t0 + Duration::from_secs(1);
    s.handle_written(t1, 1_000);
    s.handle_timeout(t0 + DEFAULT_WRITE_TIMEOUT);
    assert!(!s.is_closed(), "progress at t1 restarted the deadline");
    assert_eq!(s.next_timer(), Some(t1 + DEFAULT_WRITE_TIMEOUT));
    s.handle_timeout(t1 + DEFAULT_WRITE_TIMEOUT);
    assert!(s.is_finished());
    assert_eq!(
        s.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::SlowConsumer,
            unsent_bytes: held - 1_000
        })
    );
}

/// Regression: the write deadline did not start for output queued by the
/// handshake (the server's ACK), so a client that sent its hello and never
/// read again held the server's connection, and everything queued after
/// the ACK, without any deadline.
#[test]
fn the_write_deadline_covers_the_handshake_ack() {
    let t0 = Instant::now();
    let config = Arc::new(ConnectionConfig::default());
    let mut c = Connection::client(config.clone(), t0);
    let mut s = Connection::server(config, t0);
    let hello = s.poll_transmit().unwrap();
    s.handle_written(t0, hello.len());
    assert_eq!(s.queued_bytes(), 0);
    c.handle_input(t0, &hello);
    let client_hello = c.poll_transmit().unwrap();
    let t1 = t0 + Duration::from_secs(1);
    s.handle_input(t1, &client_hello);
    assert!(s.is_established());
    // The ACK is queued; the driver cannot write it.
    assert!(s.queued_bytes() > 0);
    take_all(&mut s);
    assert_eq!(s.next_timer(), Some(t1 + DEFAULT_WRITE_TIMEOUT));
    s.send(MSG, &b"after the ack"[..]).unwrap();
    s.handle_timeout(t1 + DEFAULT_WRITE_TIMEOUT);
    assert_eq!(s.close_reason(), Some(&CloseReason::SlowConsumer));
}

#[test]
fn a_frame_body_that_never_arrives_hits_the_body_deadline() {
    let (mut c, _s, t0) = pair();
    let f = frame(200, 1, &[9u8; 1000]);
    c.handle_input(t0, &f[..500]);
    assert!(c.buffered_input() > 0);
    assert_eq!(c.next_timer(), Some(t0 + DEFAULT_BODY_TIMEOUT));
    // More bytes of the same frame do not restart it; a complete frame does.
    let t1 = t0 + Duration::from_secs(30);
    c.handle_input(t1, &f[500..600]);
    assert_eq!(c.next_timer(), Some(t0 + DEFAULT_BODY_TIMEOUT));
    c.handle_timeout(t0 + DEFAULT_BODY_TIMEOUT);
    assert_eq!(c.close_reason(), Some(&CloseReason::BodyTimeout));
    let last = std::iter::from_fn(|| c.poll_event()).last();
    assert!(matches!(
        last,
        Some(Event::Closed {
            reason: CloseReason::BodyTimeout,
            ..
        })
    ));
}

#[test]
fn a_close_that_cannot_flush_reports_its_unsent_bytes_at_the_flush_deadline() {
    let (_c, mut s, t0) = pair();
    s.send(MSG, vec![0u8; 10_000]).unwrap();
    s.send(MSG, vec![0u8; 10_000]).unwrap();
    let queued = s.queued_bytes();
    // The driver took some, wrote less.
    let taken = s.poll_transmit().unwrap().len();
    let written = taken.min(100);
    s.handle_written(t0, written);
    s.close(t0);
    assert!(s.is_closed() && !s.is_finished(), "draining");
    assert!(s.poll_event().is_none(), "Closed waits for the drain");
    assert!(matches!(
        s.send(MSG, Bytes::new()),
        Err(SendError::Closed(CloseReason::Local))
    ));
    assert_eq!(s.next_timer(), Some(t0 + DEFAULT_FLUSH_TIMEOUT));
    // No slow-consumer verdict while closing: the flush deadline decides.
    s.handle_timeout(t0 + DEFAULT_FLUSH_TIMEOUT - Duration::from_millis(1));
    assert!(!s.is_finished());
    s.handle_timeout(t0 + DEFAULT_FLUSH_TIMEOUT);
    assert!(s.is_finished());
    assert_eq!(
        s.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::Local,
            unsent_bytes: queued - written
        })
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_close_that_drains_reports_nothing_unsent() {
    let (mut c, mut s, t0) = pair();
    s.send(MSG, vec![5u8; 300_000]).unwrap();
    s.close(t0);
    let mut got = 0;
    while let Some(b) = s.poll_transmit() {
        assert!(!s.is_finished());
        s.handle_written(t0, b.len());
        c.handle_input(t0, &b);
        got += b.len();
    }
    assert_eq!(got, 300_015);
    assert_eq!(
        s.poll_event(),
        Some(Event::Closed {
            reason: CloseReason::Local,
            unsent_bytes: 0
        })
    );
    assert!(matches!(c.poll_event(), Some(Event::Message(f)) if f.payload.len() == 300_000));
}
