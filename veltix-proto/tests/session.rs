//! The client session and the server hub together, on a virtual clock.

mod common;

use std::time::{Duration, Instant};

use common::pump_hub;
use veltix_proto::{
    ClientConfig, ClientSession, DisconnectReason, Error, Hub, HubEvent, MessageType, ServerConfig,
    SessionEvent, Target,
};

fn reports(s: &mut ClientSession) -> Vec<(bool, u32)> {
    let mut out = Vec::new();
    while let Some(e) = s.poll_event() {
        if let SessionEvent::Disconnected(d) = e {
            out.push((d.permanent, d.attempt));
        }
    }
    out
}

/// Defect 1 of the session issue: a server that resets every connection
/// before its hello, `retry(2)`: three attempts, four reports, one final.
#[test]
fn reset_during_handshake_counts_once_per_attempt() {
    let t0 = Instant::now();
    let config = ClientConfig::new("127.0.0.1", 1)
        .retry(2)
        .retry_delay(Duration::from_millis(100));
    let mut s = ClientSession::new(&config, 1, t0);
    s.connect(t0);
    let mut now = t0;
    let mut dials = Vec::new();
    let mut all = Vec::new();
    for _ in 0..20 {
        if let Some(d) = s.poll_dial(now) {
            dials.push(now - t0);
            s.handle_dialed(now, d.transport);
            // The client's hello goes out; the server resets.
            while let Some(b) = s.poll_transmit() {
                s.handle_written(now, b.len());
            }
            s.handle_transport_error(now, &std::io::ErrorKind::ConnectionReset.into());
            assert_eq!(s.transport(), None, "the transport is given up at once");
        }
        all.extend(reports(&mut s));
        match s.poll_timeout() {
            Some(t) => {
                now = now.max(t);
                s.handle_timeout(now);
            }
            None => break,
        }
    }
    assert_eq!(
        dials,
        vec![Duration::ZERO, Duration::ZERO, Duration::from_millis(100)]
    );
    assert_eq!(all, vec![(false, 0), (false, 1), (false, 2), (true, 2)]);
}

#[test]
fn session_and_hub_talk_and_broadcast_to_a_tag() {
    let t0 = Instant::now();
    let mut hub = Hub::new(&ServerConfig::default());
    let mut a = ClientSession::new(&ClientConfig::default(), 1, t0);
    let mut b = ClientSession::new(&ClientConfig::default(), 2, t0);
    let mut ids = Vec::new();
    for s in [&mut a, &mut b] {
        s.connect(t0);
        let d = s.poll_dial(t0).unwrap();
        s.handle_dialed(t0, d.transport);
        let p = hub.accept(t0).unwrap();
        pump_hub(&mut hub, p, s, t0);
        assert!(s.is_connected());
        assert!(matches!(s.poll_event(), Some(SessionEvent::Connected(_))));
        ids.push(p);
    }
    let mut connected = 0;
    while let Some((_, e)) = hub.poll_event() {
        assert!(matches!(e, HubEvent::Connected(_)));
        connected += 1;
    }
    assert_eq!(connected, 2);
    hub.tags_mut(ids[1])
        .unwrap()
        .set_tag("room", serde_json::json!("x"));
    let r = hub
        .broadcast(MessageType::new(300), b"hi", Target::Tag("room", None))
        .unwrap();
    assert_eq!((r.sent, r.skipped), (1, 0));
    pump_hub(&mut hub, ids[0], &mut a, t0);
    pump_hub(&mut hub, ids[1], &mut b, t0);
    assert!(a.poll_event().is_none());
    assert!(matches!(b.poll_event(), Some(SessionEvent::Message(f)) if &f.payload[..] == b"hi"));
    assert!(matches!(
        hub.broadcast(MessageType::new(5), b"x", Target::All),
        Err(veltix_proto::SendError::ReservedType(_))
    ));
    // The server closes `a`: it reconnects? retry is 0: (true, 0) and gives up.
    assert!(hub.close(ids[0], t0));
    pump_hub(&mut hub, ids[0], &mut a, t0);
    a.handle_eof(t0);
    assert_eq!(hub.poll_finished(), Some(ids[0]));
    let mut saw = Vec::new();
    while let Some(e) = a.poll_event() {
        saw.push(format!("{e:?}"));
    }
    assert!(saw[0].contains("permanent: true"), "{saw:?}");
    assert!(saw[0].contains("ServerClosed"), "{saw:?}");
    assert!(matches!(
        hub.poll_event(),
        Some((p, HubEvent::Disconnected(_))) if p == ids[0]
    ));
    let _ = DisconnectReason::Manual;
    let _ = Error::NotConnected;
}

/// A paused peer's messages stay in the core (its input stops at the event
/// cap) while its request outcomes and the other peers' events are served.
#[test]
fn paused_peer_keeps_its_events_but_not_its_completions() {
    let t0 = Instant::now();
    let mut hub = Hub::new(&ServerConfig::default());
    let mut a = ClientSession::new(&ClientConfig::default(), 1, t0);
    a.connect(t0);
    let d = a.poll_dial(t0).unwrap();
    a.handle_dialed(t0, d.transport);
    let p = hub.accept(t0).unwrap();
    pump_hub(&mut hub, p, &mut a, t0);
    assert!(matches!(a.poll_event(), Some(SessionEvent::Connected(_))));
    while hub.poll_event().is_some() {}
    hub.set_paused(p, true);
    let id = hub
        .request(
            p,
            t0,
            MessageType::new(300),
            &b"q"[..],
            Duration::from_secs(1),
        )
        .unwrap();
    for _ in 0..10 {
        a.send(MessageType::new(301), &b"m"[..]).unwrap();
    }
    pump_hub(&mut hub, p, &mut a, t0);
    while let Some(SessionEvent::Message(f)) = a.poll_event() {
        a.reply(f.request_id, MessageType::new(300), &b"r"[..])
            .unwrap();
    }
    pump_hub(&mut hub, p, &mut a, t0);
    assert!(hub.poll_event().is_none(), "paused: no messages served");
    assert!(matches!(
        hub.poll_completion(),
        Some((q, HubEvent::Completed { request_id, outcome: Ok(_) })) if q == p && request_id == id
    ));
    hub.set_paused(p, false);
    let mut n = 0;
    while let Some((_, e)) = hub.poll_event() {
        assert!(matches!(e, HubEvent::Message(_)));
        n += 1;
    }
    assert_eq!(n, 10);
}
