//! Authentication through the public layers: a refusal reaches the client
//! before the close, the hub's duplicate-identity rules, identities in
//! events, and a reconnecting client that gives up at once on bad
//! credentials instead of retrying.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pump_hub;
use veltix_proto::auth::{ClientAuth, MemoryStore, ScramCredential, ServerAuth};
use veltix_proto::{
    ClientConfig, ClientSession, CloseReason, Connection, DuplicateIdentity, Error, Event,
    HandshakeError, Hub, HubEvent, PeerId, ServerConfig, SessionEvent,
};

fn store() -> MemoryStore {
    let s = MemoryStore::new();
    s.insert_user(
        "alice",
        ScramCredential::derive("pencil", b"salt-of-alice-16", 4096),
    );
    s.insert_token("bot", "tok_good");
    s
}

fn server_config(rule: DuplicateIdentity) -> ServerConfig {
    let auth = ServerAuth::new(store());
    auth.seed([5; 32]);
    ServerConfig::default()
        .auth(Some(auth))
        .duplicate_identity(rule)
}

fn client_config(auth: ClientAuth) -> ClientConfig {
    auth.seed([6; 32]);
    ClientConfig::default().auth(Some(auth))
}

fn dial(hub: &mut Hub, auth: ClientAuth, now: Instant) -> (PeerId, Connection) {
    let peer = hub.accept(now).unwrap();
    let mut c = Connection::client(client_config(auth).connection_config(), now);
    pump_hub(hub, peer, &mut c, now);
    (peer, c)
}

fn closed(c: &mut Connection) -> Option<CloseReason> {
    std::iter::from_fn(|| c.poll_event()).find_map(|e| match e {
        Event::Closed { reason, .. } => Some(reason),
        _ => None,
    })
}

#[test]
fn the_client_hears_why_before_the_server_closes() {
    let t0 = Instant::now();
    let mut hub = Hub::new(&server_config(DuplicateIdentity::Allow));
    let (peer, mut c) = dial(&mut hub, ClientAuth::scram("alice", "wrong"), t0);
    assert_eq!(
        closed(&mut c),
        Some(CloseReason::Handshake(HandshakeError::AuthenticationFailed))
    );
    assert_eq!(hub.poll_finished(), Some(peer));
    assert!(!hub.is_open(peer));
    assert_eq!(
        hub.poll_event().map(|(_, e)| e),
        None,
        "never connected, never reported"
    );
}

#[test]
fn identities_reach_hub_events() {
    let t0 = Instant::now();
    let mut hub = Hub::new(&server_config(DuplicateIdentity::Allow));
    let (peer, c) = dial(&mut hub, ClientAuth::scram("alice", "pencil"), t0);
    assert!(c.is_established());
    assert_eq!(c.peer_hello().unwrap().identity().unwrap().name, "alice");
    assert_eq!(hub.identity(peer).unwrap().name, "alice");
    match hub.poll_event() {
        Some((p, HubEvent::Connected(h))) if p == peer => {
            assert_eq!(h.identity().unwrap().name, "alice")
        }
        e => panic!("{e:?}"),
    }
    // Allow: a second connection of alice is fine.
    let (second, c2) = dial(&mut hub, ClientAuth::scram("alice", "pencil"), t0);
    assert!(c2.is_established() && hub.is_open(peer) && hub.is_open(second));
}

#[test]
fn refuse_keeps_the_first_connection_of_an_identity() {
    let t0 = Instant::now();
    let mut hub = Hub::new(&server_config(DuplicateIdentity::Refuse));
    let (first, c1) = dial(&mut hub, ClientAuth::bearer("tok_good"), t0);
    assert!(c1.is_established());
    let (second, mut c2) = dial(&mut hub, ClientAuth::bearer("tok_good"), t0);
    assert_eq!(
        closed(&mut c2),
        Some(CloseReason::Handshake(HandshakeError::IdentityInUse))
    );
    assert!(hub.is_open(first) && !hub.is_open(second));
    assert_eq!(hub.peer_by_identity("bot"), Some(first));
    // Once the first is gone, the identity is free again.
    hub.handle_transport_error(first, t0, &std::io::ErrorKind::ConnectionReset.into());
    while hub.poll_event().is_some() {}
    let (third, c3) = dial(&mut hub, ClientAuth::bearer("tok_good"), t0);
    assert!(c3.is_established() && hub.is_open(third));
    assert_eq!(hub.peer_by_identity("bot"), Some(third));
}

#[test]
fn replace_closes_the_older_connection() {
    let t0 = Instant::now();
    let mut hub = Hub::new(&server_config(DuplicateIdentity::Replace));
    let (first, mut c1) = dial(&mut hub, ClientAuth::scram("alice", "pencil"), t0);
    let (second, c2) = dial(&mut hub, ClientAuth::scram("alice", "pencil"), t0);
    assert!(c2.is_established());
    assert!(!hub.is_open(first) && hub.is_open(second));
    let reasons: Vec<_> = std::iter::from_fn(|| hub.poll_event())
        .filter_map(|(p, e)| match e {
            HubEvent::Disconnected(r) => Some((p, r)),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec![(first, CloseReason::Replaced)]);
    // The old client sees its connection end (the server dropped it).
    pump_hub(&mut hub, first, &mut c1, t0);
    assert_eq!(hub.peer_by_identity("alice"), Some(second));
}

#[test]
fn a_reconnecting_client_gives_up_at_once_on_bad_credentials() {
    let t0 = Instant::now();
    let mut hub = Hub::new(&server_config(DuplicateIdentity::Allow));
    let config = client_config(ClientAuth::scram("alice", "wrong"))
        .retry(5)
        .retry_delay(Duration::from_millis(10));
    let mut s = ClientSession::new(&config, 1, t0);
    s.connect(t0);
    let mut now = t0;
    let mut dials = 0;
    let mut events = Vec::new();
    for _ in 0..100 {
        if let Some(d) = s.poll_dial(now) {
            dials += 1;
            let peer = hub.accept(now).unwrap();
            s.handle_dialed(now, d.transport);
            pump_hub(&mut hub, peer, &mut s, now);
        }
        events.extend(std::iter::from_fn(|| s.poll_event()));
        if events.iter().any(|e| matches!(e, SessionEvent::GaveUp(_))) {
            break;
        }
        now += Duration::from_millis(10);
        s.handle_timeout(now);
    }
    assert_eq!(dials, 1, "no retry with the same wrong password");
    let reports: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Disconnected(d) => Some(d.permanent),
            _ => None,
        })
        .collect();
    assert_eq!(reports, vec![true], "one final report");
    assert!(events.iter().any(|e| matches!(
        e,
        SessionEvent::GaveUp(Error::Handshake(HandshakeError::AuthenticationFailed))
    )));
}

#[test]
fn a_plain_client_config_connects_to_an_optional_auth_server() {
    let t0 = Instant::now();
    let auth = ServerAuth::new(store()).required(false);
    auth.seed([1; 32]);
    let mut hub = Hub::new(&ServerConfig::default().auth(Some(auth)));
    let peer = hub.accept(t0).unwrap();
    let mut c = Connection::client(Arc::new(Default::default()), t0);
    pump_hub(&mut hub, peer, &mut c, t0);
    assert!(c.is_established());
    assert!(hub.identity(peer).is_none());
}

/// Every step of an authenticating handshake is under the one handshake
/// deadline: a side that stops answering after any message is cut at
/// exactly `handshake_timeout` from the connection's start.
#[test]
fn every_step_times_out_under_the_one_deadline() {
    let t0 = Instant::now();
    let timeout = veltix_proto::ConnectionConfig::default().handshake_timeout;
    // The number of messages delivered before the stall (both directions,
    // in order: server hello, client hello, challenge, client-final, ack).
    for delivered in 0..4 {
        let mut server_cfg = server_config(DuplicateIdentity::Allow);
        server_cfg.handshake_timeout = timeout;
        let mut hub = Hub::new(&server_cfg);
        let peer = hub.accept(t0).unwrap();
        let mut c = Connection::client(
            client_config(ClientAuth::scram("alice", "pencil")).connection_config(),
            t0,
        );
        let mut n = 0;
        let mut now = t0;
        'pump: loop {
            let mut moved = false;
            while let Some(b) = hub.poll_transmit(peer) {
                hub.handle_written(peer, now, b.len());
                if n == delivered {
                    break 'pump;
                }
                n += 1;
                c.handle_input(now, &b);
                moved = true;
            }
            while let Some(b) = c.poll_transmit() {
                c.handle_written(now, b.len());
                if n == delivered {
                    break 'pump;
                }
                n += 1;
                hub.handle_input(peer, now, &b);
                moved = true;
            }
            if !moved {
                break;
            }
            now += Duration::from_millis(1);
        }
        assert!(!c.is_established(), "step {delivered}");
        let just_before = t0 + timeout - Duration::from_millis(1);
        c.handle_timeout(just_before);
        hub.handle_timeout(just_before);
        assert!(
            hub.is_open(peer) && !c.is_closed(),
            "step {delivered}: cut early"
        );
        c.handle_timeout(t0 + timeout);
        hub.handle_timeout(t0 + timeout);
        assert_eq!(
            closed(&mut c),
            Some(CloseReason::Handshake(HandshakeError::TimedOut)),
            "step {delivered}"
        );
        assert_eq!(hub.poll_finished(), Some(peer), "step {delivered}");
    }
}

/// A driver's TLS client-certificate identity is the peer's identity (in
/// its hello and `Connected`), and the duplicate rule applies to it.
#[test]
fn transport_identities_count_like_authenticated_ones() {
    use veltix_proto::{AuthMethod, Identity};
    let t0 = Instant::now();
    let mut hub = Hub::new(&ServerConfig::default().duplicate_identity(DuplicateIdentity::Replace));
    let connect = |hub: &mut Hub| {
        let peer = hub.accept(t0).unwrap();
        hub.set_transport_identity(
            peer,
            Identity::new("cert-bob", AuthMethod::ClientCertificate),
        );
        let mut c = Connection::client(Arc::new(Default::default()), t0);
        pump_hub(hub, peer, &mut c, t0);
        assert!(c.is_established());
        peer
    };
    let first = connect(&mut hub);
    match hub.poll_event() {
        Some((p, HubEvent::Connected(h))) if p == first => {
            assert_eq!(h.identity().unwrap().method, AuthMethod::ClientCertificate)
        }
        e => panic!("{e:?}"),
    }
    let second = connect(&mut hub);
    assert!(!hub.is_open(first) && hub.is_open(second), "replaced");
    assert_eq!(hub.identity(second).unwrap().name, "cert-bob");
}
