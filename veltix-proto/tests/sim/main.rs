//! Deterministic simulation of a client and a server core on a virtual clock.
//!
//! Every scenario runs on an in-memory link with latency, and splits every
//! segment at random points drawn from a seed, so each one also checks that
//! nothing depends on how TCP happens to cut the stream.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use harness::{End, Sim};
use serde_json::json;
use veltix_proto::handshake::{encode_hello, LocalHello};
use veltix_proto::{
    CloseReason, ConnectionConfig, Event, HandshakeError, MessageType, RequestFailure, RequestKind,
};

const MS: Duration = Duration::from_millis(1);
const SEEDS: u64 = 32;

fn config() -> ConnectionConfig {
    ConnectionConfig::default()
}

#[test]
fn handshake_success_exposes_versions_and_meta_both_ways() {
    for seed in 0..SEEDS {
        let mut c = config();
        c.hello = LocalHello {
            version: "client-1".into(),
            meta: json!({"caps": ["zstd"]}).as_object().unwrap().clone(),
        };
        let mut s = config();
        s.hello.version = "server-9".into();
        let mut sim = Sim::with_configs(Arc::new(c), Arc::new(s), 10 * MS, seed);
        assert!(sim.run_until(Duration::from_secs(1), |s| {
            s.connected(End::Client) && s.connected(End::Server)
        }));
        // server hello (10 ms) -> client hello (20 ms) -> ack (30 ms).
        assert_eq!(sim.elapsed(), 30 * MS, "seed {seed}");
        match sim.kinds(End::Client)[0] {
            Event::Connected(p) => assert_eq!(p.version.as_deref(), Some("server-9")),
            e => panic!("{e:?}"),
        }
        match sim.kinds(End::Server)[0] {
            Event::Connected(p) => {
                assert_eq!(p.version.as_deref(), Some("client-1"));
                assert_eq!(p.meta["caps"], json!(["zstd"]));
                assert_eq!(p.protocol_version, "1.0");
            }
            e => panic!("{e:?}"),
        }
        assert!(sim.client.is_established() && sim.server.is_established());
        // Nothing else happens: no timers are left running.
        assert_eq!(sim.client.poll_timeout(), None);
        assert_eq!(sim.server.poll_timeout(), None);
    }
}

#[test]
fn version_mismatch_closes_the_client_without_sending() {
    let mut sim = Sim::new(config(), 5 * MS, 1);
    sim.silence(End::Server);
    sim.inject(End::Client, 5 * MS, b"\x00\x0d{\"pv\": \"2.0\"}");
    sim.run_idle(Duration::from_secs(10));
    assert_eq!(
        sim.closed(End::Client),
        Some(&Event::Closed {
            reason: CloseReason::Handshake(HandshakeError::IncompatibleProtocolVersion(
                "2.0".into()
            )),
            unsent_bytes: 0
        })
    );
    assert_eq!(sim.client.stats().bytes_out, 0, "client sent nothing");
}

#[test]
fn version_mismatch_closes_the_server_silently() {
    let mut sim = Sim::new(config(), 5 * MS, 2);
    sim.silence(End::Client);
    sim.inject(End::Server, 5 * MS, b"\x00\x0d{\"pv\": \"0.9\"}");
    sim.run_idle(Duration::from_secs(10));
    assert!(matches!(
        sim.closed(End::Server),
        Some(Event::Closed {
            reason: CloseReason::Handshake(HandshakeError::IncompatibleProtocolVersion(_)),
            ..
        })
    ));
    // Only the server hello went out: no ack, no error message.
    let hello_len = encode_hello(&LocalHello::default()).len() as u64;
    assert_eq!(sim.server.stats().bytes_out, hello_len);
}

#[test]
fn server_full_rejection_reaches_the_client_with_its_reason() {
    let mut hub = veltix_proto::Hub::with_connection_config(Arc::new(config()), Some(1), 1 << 20);
    let mut sim = Sim::new(config(), 5 * MS, 3);
    let _held = hub.accept(sim.now).expect("first fits");
    let rejection = hub.accept(sim.now).expect_err("second is refused");
    sim.silence(End::Server);
    sim.inject(End::Client, 5 * MS, &rejection.bytes);
    sim.run_idle(Duration::from_secs(10));
    assert_eq!(
        sim.closed(End::Client),
        Some(&Event::Closed {
            reason: CloseReason::Handshake(HandshakeError::Rejected("server_full".into())),
            unsent_bytes: 0
        })
    );
    assert!(!sim.connected(End::Client));
}

#[test]
fn silent_server_hits_the_client_handshake_deadline_exactly() {
    let mut c = config();
    c.handshake_timeout = Duration::from_secs(2);
    let mut sim = Sim::new(c, 5 * MS, 4);
    sim.silence(End::Server);
    sim.run_idle(Duration::from_secs(60));
    let (at, ev) = sim.events(End::Client).last().unwrap();
    assert_eq!(*at, Duration::from_secs(2));
    assert!(matches!(
        ev,
        Event::Closed {
            reason: CloseReason::Handshake(HandshakeError::TimedOut),
            ..
        }
    ));
}

#[test]
fn trickling_client_is_cut_at_the_overall_deadline() {
    // One byte every 900 ms: Veltix's per-read timeout of 1 s would never fire.
    let mut c = config();
    c.handshake_timeout = Duration::from_secs(1);
    let mut sim = Sim::new(c, MS, 5);
    sim.silence(End::Client);
    let hello = encode_hello(&LocalHello::default());
    for (i, b) in hello.iter().enumerate() {
        sim.inject(End::Server, 900 * MS * (i as u32 + 1), &[*b]);
    }
    sim.run_idle(Duration::from_secs(120));
    let (at, ev) = sim.events(End::Server).last().unwrap();
    assert_eq!(*at, Duration::from_secs(1));
    assert!(matches!(
        ev,
        Event::Closed {
            reason: CloseReason::Handshake(HandshakeError::TimedOut),
            ..
        }
    ));
    assert!(!sim.connected(End::Server));
}

/// A server that holds requests and answers them in reverse order once three arrived.
fn reverse_echo_server(sim: &mut Sim) {
    let mut held: Vec<(u16, Bytes)> = Vec::new();
    sim.server_app = Some(Box::new(move |conn, _now, ev| {
        if let Event::Message(m) = ev {
            held.push((m.request_id, m.payload.clone()));
            if held.len() == 3 {
                for (id, p) in held.drain(..).rev() {
                    conn.reply(id, MessageType::new(201), p).unwrap();
                }
            }
        }
    }));
}

#[test]
fn responses_out_of_order_resolve_the_right_requests() {
    for seed in 0..SEEDS {
        let mut sim = Sim::new(config(), 3 * MS, seed);
        reverse_echo_server(&mut sim);
        assert!(sim.run_until(Duration::from_secs(1), |s| s.connected(End::Client)));
        let now = sim.now;
        let ids: Vec<u16> = ["a", "bb", "ccc"]
            .iter()
            .map(|p| {
                sim.client
                    .request(
                        now,
                        MessageType::new(200),
                        Bytes::from(*p),
                        Duration::from_secs(5),
                    )
                    .unwrap()
            })
            .collect();
        assert_eq!(ids, vec![0, 1, 2]);
        sim.run_idle(Duration::from_secs(2));
        let responses: Vec<(u16, Vec<u8>)> = sim
            .kinds(End::Client)
            .into_iter()
            .filter_map(|e| match e {
                Event::Response { request_id, frame } => {
                    assert_eq!(frame.request_id, *request_id);
                    Some((*request_id, frame.payload.to_vec()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            responses,
            vec![
                (2, b"ccc".to_vec()),
                (1, b"bb".to_vec()),
                (0, b"a".to_vec())
            ],
            "seed {seed}"
        );
        assert_eq!(sim.client.pending_requests(), 0);
        assert!(!sim
            .kinds(End::Client)
            .iter()
            .any(|e| matches!(e, Event::RequestFailed { .. } | Event::Message(_))));
    }
}

#[test]
fn request_deadline_fails_exactly_once_at_its_deadline() {
    let mut sim = Sim::new(config(), 3 * MS, 7);
    assert!(sim.run_until(Duration::from_secs(1), |s| s.connected(End::Client)));
    let sent_at = sim.elapsed();
    let id = sim
        .client
        .request(sim.now, MessageType::new(200), &b"?"[..], 250 * MS)
        .unwrap();
    sim.run_idle(Duration::from_secs(10));
    let failures: Vec<_> = sim
        .events(End::Client)
        .iter()
        .filter(|(_, e)| matches!(e, Event::RequestFailed { .. }))
        .collect();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, sent_at + 250 * MS);
    assert_eq!(
        failures[0].1,
        Event::RequestFailed {
            request_id: id,
            kind: RequestKind::Request,
            reason: RequestFailure::TimedOut
        }
    );
    // The unanswered request reached the server as an ordinary message.
    assert!(sim
        .kinds(End::Server)
        .iter()
        .any(|e| matches!(e, Event::Message(m) if m.request_id == id)));
    // A late reply is now ordinary traffic, not a second resolution.
    sim.server
        .reply(id, MessageType::new(200), &b"late"[..])
        .unwrap();
    sim.run_idle(Duration::from_secs(20));
    assert!(matches!(sim.kinds(End::Client).last(), Some(Event::Message(m)) if m.request_id == id));
}

#[test]
fn ping_rtt_equals_twice_the_latency() {
    for (seed, latency) in [(1, MS), (2, 17 * MS), (3, 250 * MS)] {
        let mut sim = Sim::new(config(), latency, seed);
        assert!(
            sim.run_until(Duration::from_secs(5), |s| s.connected(End::Client)
                && s.connected(End::Server))
        );
        sim.client.ping(sim.now, Duration::from_secs(5)).unwrap();
        sim.server.ping(sim.now, Duration::from_secs(5)).unwrap();
        sim.run_idle(Duration::from_secs(10));
        for end in [End::Client, End::Server] {
            let rtts: Vec<Duration> = sim
                .kinds(end)
                .into_iter()
                .filter_map(|e| match e {
                    Event::Pong { rtt, .. } => Some(*rtt),
                    _ => None,
                })
                .collect();
            assert_eq!(rtts, vec![2 * latency], "{end:?}");
        }
        // PINGs never reach the application as messages.
        assert!(!sim
            .kinds(End::Server)
            .iter()
            .any(|e| matches!(e, Event::Message(_))));
    }
}

#[test]
fn closing_fails_every_pending_request_with_the_reason() {
    let mut sim = Sim::new(config(), 3 * MS, 9);
    assert!(sim.run_until(Duration::from_secs(1), |s| s.connected(End::Client)));
    let now = sim.now;
    let r1 = sim
        .client
        .request(
            now,
            MessageType::new(200),
            &b"1"[..],
            Duration::from_secs(5),
        )
        .unwrap();
    let p1 = sim.client.ping(now, Duration::from_secs(5)).unwrap();
    sim.cut();
    let evs: Vec<Event> = sim.kinds(End::Client).into_iter().cloned().collect();
    let tail: Vec<&Event> = evs[evs.len() - 3..].iter().collect();
    let closed = CloseReason::PeerClosed;
    assert_eq!(
        tail,
        vec![
            &Event::RequestFailed {
                request_id: r1,
                kind: RequestKind::Request,
                reason: RequestFailure::Closed(closed.clone())
            },
            &Event::RequestFailed {
                request_id: p1,
                kind: RequestKind::Ping,
                reason: RequestFailure::Closed(closed.clone())
            },
            // Both frames were still queued when the link dropped: reported, not lost silently.
            &Event::Closed {
                reason: closed,
                unsent_bytes: 16 + 15
            },
        ]
    );
    // Nothing is left to fire later.
    sim.run_idle(Duration::from_secs(60));
    assert_eq!(sim.kinds(End::Client).len(), evs.len());
    assert_eq!(sim.client.pending_requests(), 0);
}

#[test]
fn frames_sent_right_after_the_ack_are_not_lost() {
    // The server greets in the same segment as its ack (spec §9 item 13).
    for seed in 0..SEEDS {
        let mut sim = Sim::new(config(), 2 * MS, seed);
        sim.server_app = Some(Box::new(|conn, _now, ev| {
            if let Event::Connected(_) = ev {
                conn.send(MessageType::new(300), &b"welcome"[..]).unwrap();
            }
        }));
        sim.run_idle(Duration::from_secs(1));
        let got: Vec<_> = sim
            .kinds(End::Client)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message(m) => Some((m.message_type, m.request_id, m.payload.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            vec![(
                MessageType::new(300),
                32_768,
                Bytes::from_static(b"welcome")
            )],
            "seed {seed}"
        );
    }
}

#[test]
fn many_messages_both_ways_arrive_in_order() {
    for seed in 0..8 {
        let mut sim = Sim::new(config(), 4 * MS, seed);
        assert!(
            sim.run_until(Duration::from_secs(1), |s| s.connected(End::Client)
                && s.connected(End::Server))
        );
        for i in 0..500u32 {
            let size = (sim.rng.below(6000)) as usize; // some above the copy threshold
            let mut p = vec![(i % 251) as u8; size];
            p.extend_from_slice(&i.to_be_bytes());
            sim.client.send(MessageType::new(200), p.clone()).unwrap();
            sim.server.send(MessageType::new(201), p).unwrap();
        }
        sim.run_idle(Duration::from_secs(5));
        for end in [End::Client, End::Server] {
            let seq: Vec<u32> = sim
                .kinds(end)
                .into_iter()
                .filter_map(|e| match e {
                    Event::Message(m) => {
                        let n = m.payload.len();
                        Some(u32::from_be_bytes(m.payload[n - 4..].try_into().unwrap()))
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(seq, (0..500).collect::<Vec<_>>(), "{end:?} seed {seed}");
        }
        assert_eq!(sim.client.stats().decoder.discarded_bytes, 0);
    }
}
