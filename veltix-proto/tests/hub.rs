//! The server hub's guarantees through the public API: admission released
//! when a connection ends, generation-safe peer ids, round-robin event
//! service, broadcast targeting, connected/disconnected only for handshaken
//! peers, and the receive budget.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::pump_hub;
use serde_json::json;
use veltix_proto::{
    CloseReason, Connection, ConnectionConfig, Event, Frame, Hub, HubEvent, MessageType, PeerId,
    SendError, Target,
};

const MSG: MessageType = MessageType(200);

fn hub(max: Option<usize>, budget: usize) -> Hub {
    Hub::with_connection_config(Arc::new(ConnectionConfig::default()), max, budget)
}

/// A client connected to a new hub peer (its `Connected` not yet taken).
fn connect(hub: &mut Hub, now: Instant) -> (PeerId, Connection) {
    let peer = hub.accept(now).expect("admitted");
    let mut c = Connection::client(Arc::new(ConnectionConfig::default()), now);
    pump_hub(hub, peer, &mut c, now);
    assert!(c.is_established() && hub.is_connected(peer));
    while c.poll_event().is_some() {}
    (peer, c)
}

fn events(hub: &mut Hub) -> Vec<(PeerId, HubEvent)> {
    std::iter::from_fn(|| hub.poll_event()).collect()
}

fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
    Frame::new(MSG, id, Bytes::copy_from_slice(payload))
        .to_vec()
        .unwrap()
}

#[test]
fn admission_is_released_when_a_connection_finishes() {
    let t0 = Instant::now();
    let mut h = hub(Some(2), 1 << 20);
    let (a, _ca) = connect(&mut h, t0);
    let b = h.accept(t0).unwrap();
    assert_eq!(h.live(), 2);
    let r = h.accept(t0).unwrap_err();
    assert_eq!(r.reason, "server_full");
    assert_eq!(h.stats().rejected, 1);
    // A handshaking peer counts too; it times out, and its slot is released.
    h.handle_timeout(t0 + Duration::from_secs(60));
    assert_eq!(h.poll_finished(), Some(b));
    assert_eq!(h.live(), 1);
    // A connected peer resets: released as soon as it finished, events or not.
    h.handle_transport_error(a, t0, &std::io::ErrorKind::ConnectionReset.into());
    assert_eq!(h.poll_finished(), Some(a));
    assert_eq!(h.live(), 0);
    assert!(h.accept(t0).is_ok() && h.accept(t0).is_ok());
    assert!(h.accept(t0).is_err());
}

#[test]
fn peer_ids_are_never_reused_for_another_connection() {
    let t0 = Instant::now();
    let mut h = hub(None, 1 << 20);
    let (a, _ca) = connect(&mut h, t0);
    h.handle_eof(a, t0);
    let evs = events(&mut h);
    assert!(
        matches!(evs.last(), Some((p, HubEvent::Disconnected(CloseReason::PeerClosed))) if *p == a)
    );
    assert_eq!(h.poll_finished(), Some(a));
    // The slot is free; the next peer takes it with a new generation.
    let (b, mut cb) = connect(&mut h, t0);
    assert_eq!(a.index(), b.index());
    assert_ne!(a, b);
    assert_ne!(a.as_u64(), b.as_u64());
    // The stale id names nothing.
    assert!(!h.is_open(a) && !h.is_connected(a) && h.tags(a).is_none());
    assert_eq!(h.send(a, MSG, &b"x"[..]), Err(SendError::NotConnected));
    assert!(!h.close(a, t0));
    h.handle_input(a, t0, &frame(1, b"to the old peer"));
    h.handle_transport_error(a, t0, &std::io::ErrorKind::ConnectionReset.into());
    assert!(h.is_connected(b), "input for the stale id did not reach b");
    let evs = events(&mut h);
    assert!(evs
        .iter()
        .all(|(p, e)| *p == b && matches!(e, HubEvent::Connected(_))));
    h.send(b, MSG, &b"hi"[..]).unwrap();
    pump_hub(&mut h, b, &mut cb, t0);
    assert!(matches!(cb.poll_event(), Some(Event::Message(f)) if &f.payload[..] == b"hi"));
}

#[test]
fn poll_event_serves_a_flooding_peer_and_a_quiet_one_in_turn() {
    let t0 = Instant::now();
    let mut h = hub(None, 1 << 20);
    let (flood, _cf) = connect(&mut h, t0);
    let (quiet, _cq) = connect(&mut h, t0);
    let _ = events(&mut h);
    let mut wire = Vec::new();
    for i in 0..1000u16 {
        wire.extend(frame(i, b"flood"));
    }
    h.handle_input(flood, t0, &wire);
    let mut quiet_wire = Vec::new();
    for i in 0..5u16 {
        quiet_wire.extend(frame(i, b"quiet"));
    }
    h.handle_input(quiet, t0, &quiet_wire);
    let first: Vec<PeerId> = (0..10).map(|_| h.poll_event().unwrap().0).collect();
    assert_eq!(
        first.iter().filter(|&&p| p == quiet).count(),
        5,
        "the quiet peer's 5 messages come within the first 10 events: {first:?}"
    );
    // Strictly alternating while both have events.
    for pair in first.chunks(2) {
        assert_ne!(pair[0], pair[1]);
    }
    assert_eq!(events(&mut h).len(), 995);
}

#[test]
fn poll_events_takes_batches_of_one_peer_in_turn_and_matches_poll_event() {
    let t0 = Instant::now();
    let mut h = hub(None, 1 << 20);
    let (flood, _cf) = connect(&mut h, t0);
    let (quiet, _cq) = connect(&mut h, t0);
    let _ = events(&mut h);
    let mut wire = Vec::new();
    for i in 0..1000u16 {
        wire.extend(frame(i, b"flood"));
    }
    h.handle_input(flood, t0, &wire);
    let mut quiet_wire = Vec::new();
    for i in 0..5u16 {
        quiet_wire.extend(frame(i, b"quiet"));
    }
    h.handle_input(quiet, t0, &quiet_wire);
    let mut out = Vec::new();
    assert_eq!(h.poll_events(0, &mut out), 0);
    assert_eq!(h.poll_events(8, &mut out), 8);
    assert!(out.iter().all(|(p, _)| *p == flood));
    out.clear();
    assert_eq!(h.poll_events(8, &mut out), 5, "the quiet peer's turn");
    assert!(out.iter().all(|(p, _)| *p == quiet));
    let mut ids: Vec<u16> = Vec::new();
    let mut total = 8;
    loop {
        out.clear();
        let n = h.poll_events(64, &mut out);
        if n == 0 {
            break;
        }
        assert!(n <= 64);
        total += n;
        for (p, e) in &out {
            assert_eq!(*p, flood);
            if let HubEvent::Message(f) = e {
                ids.push(f.request_id);
            }
        }
    }
    assert_eq!(total, 1000);
    assert_eq!(ids, (8..1000).collect::<Vec<u16>>(), "in order");
    assert!(h.poll_event().is_none());
}

#[test]
fn broadcasts_reach_exactly_their_connected_targets() {
    let t0 = Instant::now();
    let mut h = hub(None, 1 << 20);
    let mut peers = Vec::new();
    for i in 0..4 {
        let (p, c) = connect(&mut h, t0);
        h.tags_mut(p).unwrap().set_tag("room", json!(i % 2));
        peers.push((p, c));
    }
    // One more that never finishes its handshake.
    let shy = h.accept(t0).unwrap();
    while let Some(b) = h.poll_transmit(shy) {
        h.handle_written(shy, t0, b.len());
    }
    let _ = events(&mut h);
    let ids: Vec<PeerId> = peers.iter().map(|(p, _)| *p).collect();
    let room0 = json!(0);
    let only = [ids[3], shy, ids[3]];
    let cases: Vec<(Target<'_>, Vec<PeerId>)> = vec![
        (Target::All, ids.clone()),
        (Target::Except(&ids[1..2]), vec![ids[0], ids[2], ids[3]]),
        (Target::Only(&only), vec![ids[3]]),
        (Target::Tag("room", Some(&room0)), vec![ids[0], ids[2]]),
        (Target::Tag("room", None), ids.clone()),
        (Target::Tag("nothing", None), vec![]),
    ];
    for (i, (target, want)) in cases.into_iter().enumerate() {
        let before: Vec<usize> = ids.iter().map(|&p| h.queued_bytes(p)).collect();
        let b = h
            .broadcast(MSG, format!("case {i}").as_bytes(), target)
            .unwrap();
        assert_eq!(b.sent, want.len(), "case {i}");
        assert_eq!(b.skipped, 0);
        let got: BTreeSet<PeerId> = ids
            .iter()
            .zip(before)
            .filter(|(&p, q)| h.queued_bytes(p) > *q)
            .map(|(&p, _)| p)
            .collect();
        assert_eq!(got, want.into_iter().collect(), "case {i}");
        assert_eq!(
            h.queued_bytes(shy),
            0,
            "a handshaking peer is never targeted"
        );
    }
    // Every copy carries the broadcast's id and arrives.
    for (p, c) in &mut peers {
        pump_hub(&mut h, *p, c, t0);
        assert!(std::iter::from_fn(|| c.poll_event()).count() >= 2);
    }
    assert_eq!(
        h.broadcast(MessageType(1), b"x", Target::All),
        Err(SendError::ReservedType(MessageType(1)))
    );
}

#[test]
fn connected_and_disconnected_only_for_handshaken_peers() {
    let t0 = Instant::now();
    let mut h = hub(None, 1 << 20);
    // A peer that fails its handshake: no events at all.
    let bad = h.accept(t0).unwrap();
    h.handle_input(bad, t0, b"\x00\x02{}");
    assert!(!h.is_open(bad));
    assert!(events(&mut h).is_empty());
    assert_eq!(h.poll_finished(), Some(bad));
    // A peer reset before its hello: none either.
    let reset = h.accept(t0).unwrap();
    h.handle_transport_error(reset, t0, &std::io::ErrorKind::ConnectionReset.into());
    assert!(events(&mut h).is_empty());
    // A connected peer: Connected once, Disconnected once, last.
    let (p, _c) = connect(&mut h, t0);
    let evs = events(&mut h);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert!(matches!(evs[0], (q, HubEvent::Connected(_)) if q == p));
    // `connected()` counts peers whose `Connected` was reported.
    assert_eq!(h.connected(), 1);
    h.handle_input(p, t0, &frame(1, b"m"));
    h.handle_eof(p, t0);
    let evs = events(&mut h);
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(matches!(evs[0].1, HubEvent::Message(_)));
    assert!(matches!(
        evs[1].1,
        HubEvent::Disconnected(CloseReason::PeerClosed)
    ));
    assert_eq!(h.connected(), 0);
    assert!(events(&mut h).is_empty());
}

#[test]
fn the_receive_budget_cuts_the_peer_with_the_largest_partial_frame() {
    let t0 = Instant::now();
    let mut h = hub(None, 10_000);
    let (big, _cb) = connect(&mut h, t0);
    let (small, _cs) = connect(&mut h, t0);
    let (idle, _ci) = connect(&mut h, t0);
    let _ = events(&mut h);
    let big_frame = frame(1, &[1u8; 50_000]);
    let small_frame = frame(2, &[2u8; 50_000]);
    h.handle_input(big, t0, &big_frame[..6_000]);
    h.handle_input(small, t0, &small_frame[..3_000]);
    assert_eq!(h.buffered_input(), 9_000);
    assert_eq!(h.stats().budget_cuts, 0);
    // The small one grows past the budget: the largest partial frame goes.
    h.handle_input(small, t0, &small_frame[3_000..5_000]);
    assert_eq!(h.stats().budget_cuts, 1);
    assert!(!h.is_open(big));
    assert!(h.is_connected(small) && h.is_connected(idle));
    assert_eq!(h.buffered_input(), 5_000);
    let evs = events(&mut h);
    assert!(evs
        .iter()
        .any(|(p, e)| *p == big && matches!(e, HubEvent::Disconnected(CloseReason::BufferBudget))));
    assert_eq!(h.poll_finished(), Some(big));
}
