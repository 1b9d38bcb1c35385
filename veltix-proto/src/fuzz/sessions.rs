//! `session_ops` and `hub_ops`: the reconnecting client and the server hub
//! under arbitrary scripts of dial results, bytes, resets, EOFs, time and
//! commands, against real peer cores joined by byte queues.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use serde_json::json;

use super::prefix;
use crate::connection::{Connection, ConnectionConfig};
use crate::driver_error::Error;
use crate::event::{CloseReason, Event};
use crate::frame::MessageType;
use crate::handshake::{encode_rejection, HandshakeError};
use crate::hub::{Hub, HubEvent, PeerId, Target};
use crate::retry::{DisconnectReason, Reconnect, RetryPolicy};
use crate::session::{ClientSession, SessionEvent};

/// Most ops one input runs.
const MAX_OPS: usize = 300;
/// Most transports one `hub_ops` input accepts (finished ones included).
const MAX_CLIENTS: usize = 24;
const MSG: MessageType = MessageType(200);

fn byte(u: &mut Unstructured<'_>) -> Result<u8> {
    u.arbitrary()
}

fn config(b: u8) -> ConnectionConfig {
    ConnectionConfig {
        handshake_timeout: Duration::from_millis(500),
        max_outbound: [crate::connection::DEFAULT_MAX_OUTBOUND, 256][usize::from(b & 1)],
        max_event_bytes: [crate::connection::DEFAULT_MAX_EVENT_BYTES, 512]
            [usize::from((b >> 1) & 1)],
        write_timeout: Some(Duration::from_secs(3)),
        body_timeout: Some(Duration::from_secs(4)),
        flush_timeout: Duration::from_secs(2),
        ..ConnectionConfig::default()
    }
}

/// Up to `k` queued bytes (all when `k` is 0), then drops them from `q`
/// once `f` has seen them (no byte-by-byte copy).
fn take<R>(q: &mut VecDeque<u8>, k: usize, f: impl FnOnce(&[u8]) -> R) -> R {
    let k = if k == 0 { q.len() } else { k.min(q.len()) };
    let r = f(&q.make_contiguous()[..k]);
    q.drain(..k);
    r
}

// ----------------------------------------------------------------- session

struct SessionWorld {
    s: ClientSession,
    now: Instant,
    /// The server core of the open transport (or the rejection bytes instead).
    server: Option<Connection>,
    /// A transport being dialled / open.
    dialing: Option<u64>,
    open: Option<u64>,
    to_client: VecDeque<u8>,
    to_server: VecDeque<u8>,
    /// Requests and pings not ended yet, by transport.
    outstanding: BTreeMap<u64, BTreeSet<u16>>,
    /// A permanent report was seen; its `GaveUp` (unless Manual) must follow.
    awaiting_gave_up: bool,
    server_requests: Vec<u16>,
}

impl SessionWorld {
    fn settle(&mut self) {
        let now = self.now;
        self.s.handle_timeout(now);
        // The transport the session gave up: drop it (and the server's side).
        if let Some(t) = self.dialing {
            if self.s.transport() != Some(t) {
                self.dialing = None;
            }
        }
        if let Some(t) = self.open {
            if self.s.transport() != Some(t) {
                self.open = None;
                self.server = None;
                self.to_client.clear();
                self.to_server.clear();
            }
        }
        if let Some(d) = self.s.poll_dial(now) {
            assert!(self.dialing.is_none() && self.open.is_none());
            assert_eq!(self.s.transport(), Some(d.transport));
            assert!(d.deadline >= now);
            self.dialing = Some(d.transport);
        }
        while let Some(b) = self.s.poll_transmit() {
            assert!(self.open.is_some(), "output without an open transport");
            self.s.handle_written(now, b.len());
            self.to_server.extend(b.iter());
        }
        if let Some(srv) = self.server.as_mut() {
            while let Some(b) = srv.poll_transmit() {
                srv.handle_written(now, b.len());
                self.to_client.extend(b.iter());
            }
            while let Some(e) = srv.poll_event() {
                if let Event::Message(f) = e {
                    if self.server_requests.len() < 16 {
                        self.server_requests.push(f.request_id);
                    }
                }
            }
        }
        while let Some(e) = self.s.poll_event() {
            self.event(e);
        }
        // Requests of transports that are gone all ended.
        let current = self.open;
        for (t, ids) in &self.outstanding {
            assert!(
                Some(*t) == current || ids.is_empty(),
                "requests of a finished connection never ended: {ids:?}"
            );
        }
        self.outstanding.retain(|t, _| Some(*t) == current);
        // Nothing left to do now: the next wakeup is in the future.
        assert!(!self.s.has_transmit());
        assert!(
            self.s.poll_timeout().is_none_or(|t| t > now),
            "poll_timeout due after everything was done"
        );
        assert!(
            self.s.poll_timeout().is_some()
                || !self.s.is_connecting()
                || self.dialing.is_some()
                || self.open.is_some()
        );
        if self.s.is_connected() {
            assert!(self.open.is_some());
        }
    }

    fn event(&mut self, e: SessionEvent) {
        match e {
            SessionEvent::Disconnected(d) => {
                assert!(
                    !self.awaiting_gave_up,
                    "a report after a permanent one: {d:?}"
                );
                if !d.permanent {
                    assert!(d.attempt <= d.retry_max, "{d:?}");
                    assert_ne!(d.reason, DisconnectReason::Manual);
                } else if d.reason != DisconnectReason::Manual {
                    self.awaiting_gave_up = true;
                }
            }
            SessionEvent::GaveUp(_) => {
                self.awaiting_gave_up = false;
            }
            SessionEvent::Completed { request_id, .. } => {
                let ended = self
                    .outstanding
                    .values_mut()
                    .any(|ids| ids.remove(&request_id));
                assert!(ended, "request {request_id} ended twice or never began");
            }
            SessionEvent::Connected(_) | SessionEvent::Message(_) => {}
        }
    }

    fn op(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let code = byte(u)?;
        let now = self.now;
        match code & 0x0f {
            0 => self.s.connect(now),
            1 => {
                let b = byte(u)?;
                self.s
                    .retry(now, (b & 0x80 == 0).then_some(u32::from(b % 4)));
            }
            2 => self.s.stop_retry(now),
            3 => self.s.disconnect(now),
            4 => {
                if let Some(t) = self.dialing.take() {
                    self.s.handle_dialed(now, t);
                    if self.s.transport() == Some(t) {
                        self.open = Some(t);
                        let b = byte(u)?;
                        if b & 3 == 0 {
                            // The server is full: its rejection, then EOF.
                            self.to_client
                                .extend(encode_rejection("server_full").iter());
                        } else {
                            self.server = Some(Connection::server(Arc::new(config(b >> 2)), now));
                        }
                    }
                }
            }
            5 => {
                if let Some(t) = self.dialing {
                    self.s
                        .handle_dial_failed(now, t, Error::Refused("fuzz".into()));
                }
            }
            6 => {
                let k = usize::from(byte(u)?);
                let (s, open) = (&mut self.s, self.open.is_some());
                take(&mut self.to_client, k, |bytes| {
                    if !bytes.is_empty() && open {
                        s.handle_input(now, bytes);
                    }
                });
            }
            7 => {
                let k = usize::from(byte(u)?);
                let server = self.server.as_mut();
                take(&mut self.to_server, k, |bytes| {
                    if let Some(srv) = server {
                        srv.handle_input(now, bytes);
                    }
                });
            }
            8 => {
                if self.open.is_some() {
                    let e = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
                    self.s.handle_transport_error(now, &e);
                }
            }
            9 => {
                if self.open.is_some() && self.to_client.is_empty() {
                    self.s.handle_eof(now);
                }
            }
            10 => {
                let n = usize::from(byte(u)? % 32).min(u.len());
                let junk = u.bytes(n)?;
                self.to_client.extend(junk.iter());
            }
            11 => {
                let b = byte(u)?;
                let t = self.open;
                let d = Duration::from_millis(50 * u64::from(b % 64));
                let r = match b >> 6 {
                    0 => self.s.send(MSG, vec![b; usize::from(b)]).map(|_| None),
                    1 => self.s.request(now, MSG, vec![b; 3], d).map(Some),
                    2 => self.s.ping(now, d).map(Some),
                    _ => self
                        .s
                        .send_system(MessageType(u16::from(b % 4)), vec![])
                        .map(|_| None),
                };
                if let Ok(Some(id)) = r {
                    let t = t.expect("a request needs a connection");
                    assert!(
                        self.outstanding.entry(t).or_default().insert(id),
                        "id {id} reused while pending"
                    );
                }
            }
            12 => {
                if let Some(srv) = self.server.as_mut() {
                    let b = byte(u)?;
                    if let Some(id) = self.server_requests.pop() {
                        let _ = srv.reply(id, MSG, vec![b; 2]);
                    } else {
                        let _ = srv.send(MSG, vec![b; usize::from(b)]);
                    }
                    if b & 0x80 != 0 {
                        srv.close(now);
                    }
                }
            }
            13 => {
                let b = u64::from(byte(u)?);
                self.now += Duration::from_millis(b * b / 8);
            }
            14 => {
                if let Some(t) = self.s.poll_timeout() {
                    self.now = self.now.max(t);
                }
            }
            _ => {
                // The server finished: its transport closes after its output.
                if self.server.as_ref().is_some_and(Connection::is_finished)
                    && self.to_client.is_empty()
                {
                    self.s.handle_eof(now);
                }
            }
        }
        Ok(())
    }
}

/// A [`ClientSession`] against real server cores (or `server_full`
/// rejections), one per dialled transport.
///
/// Layout: `p[0]` retries (`% 5`), `p[1]` delay (`·10 ms`), `p[2]` the
/// client's settings and jitter seed; then up to 300 ops, one byte each
/// (low nibble: connect, retry (`+ max`), stop_retry, disconnect, dial
/// succeeds (`+ server kind`: `& 3 == 0` a rejection), dial fails, deliver
/// `k` bytes to the client, deliver `k` bytes to the server, reset, EOF,
/// junk to the client, a client command (`+ b`: send, request, ping,
/// send_system), a server reply or message (`+ b`, `0x80`: then close),
/// advance `b²/8` ms, jump to `poll_timeout`, EOF after the server finished).
///
/// Asserts: no panic; a dial only when none is open; the driver's
/// transport is exactly `transport()`; output only with an open transport;
/// reports are well-formed (a non-permanent attempt within its budget,
/// nothing after a permanent report before its `GaveUp`, `Manual` only
/// permanent); every request or ping ends exactly once, before its
/// connection is gone; after the driver did everything, `poll_timeout` is
/// in the future. At the end: disconnect, and nothing is left pending.
pub fn session_ops(t0: Instant, data: &[u8]) {
    let (p, script) = prefix::<3>(data);
    let policy = RetryPolicy::fixed(
        u32::from(p[0] % 5),
        Duration::from_millis(10 * u64::from(p[1])),
    );
    let mut w = SessionWorld {
        s: ClientSession::with_connection_config(
            Arc::new(config(p[2])),
            Reconnect::new(policy, u64::from(p[2])),
            Duration::from_secs(1),
            t0,
        ),
        now: t0,
        server: None,
        dialing: None,
        open: None,
        to_client: VecDeque::new(),
        to_server: VecDeque::new(),
        outstanding: BTreeMap::new(),
        awaiting_gave_up: false,
        server_requests: Vec::new(),
    };
    w.s.connect(t0);
    w.settle();
    let mut u = Unstructured::new(script);
    for _ in 0..MAX_OPS {
        if u.is_empty() || w.op(&mut u).is_err() {
            break;
        }
        w.settle();
    }
    w.s.disconnect(w.now);
    w.settle();
    w.now += Duration::from_secs(10);
    w.settle();
    assert!(
        w.s.transport().is_none(),
        "a transport after disconnect + flush deadline"
    );
    assert!(!w.s.is_connecting() && !w.s.is_connected());
    assert!(w.outstanding.values().all(BTreeSet::is_empty));
    assert_eq!(w.s.poll_timeout(), None);
}

// --------------------------------------------------------------------- hub

struct Client {
    peer: PeerId,
    conn: Connection,
    to_hub: VecDeque<u8>,
    to_client: VecDeque<u8>,
    finished: bool,
    connected: bool,
    disconnected: bool,
    /// Hub requests to this peer not ended yet.
    outstanding: BTreeSet<u16>,
    /// Ids of requests from this client, to reply to.
    requests: Vec<u16>,
}

struct HubWorld {
    hub: Hub,
    max: Option<usize>,
    now: Instant,
    clients: Vec<Client>,
    config: Arc<ConnectionConfig>,
}

impl HubWorld {
    fn index(&self, b: u8) -> Option<usize> {
        (!self.clients.is_empty()).then(|| usize::from(b) % self.clients.len())
    }

    fn settle(&mut self) {
        let now = self.now;
        self.hub.handle_timeout(now);
        for c in &mut self.clients {
            c.conn.handle_timeout(now);
            while let Some(b) = self.hub.poll_transmit(c.peer) {
                assert!(!c.finished, "output for a finished peer");
                self.hub.handle_written(c.peer, now, b.len());
                c.to_client.extend(b.iter());
            }
            while let Some(b) = c.conn.poll_transmit() {
                c.conn.handle_written(now, b.len());
                c.to_hub.extend(b.iter());
            }
            while let Some(e) = c.conn.poll_event() {
                if let Event::Message(f) = e {
                    if c.requests.len() < 8 {
                        c.requests.push(f.request_id);
                    }
                }
            }
        }
        while self.hub.poll_transmit_ready().is_some() {}
        while let Some((peer, e)) = self.hub.poll_event() {
            let c = self
                .clients
                .iter_mut()
                .find(|c| c.peer == peer)
                .expect("an event for a peer never accepted");
            assert!(!c.disconnected, "{peer}: event after Disconnected: {e:?}");
            match e {
                HubEvent::Connected(_) => {
                    assert!(!c.connected, "{peer}: Connected twice");
                    c.connected = true;
                }
                HubEvent::Message(f) => {
                    assert!(c.connected);
                    assert!(
                        !c.outstanding.contains(&f.request_id),
                        "a frame with a pending id came as a Message"
                    );
                    if c.requests.len() < 8 {
                        c.requests.push(f.request_id);
                    }
                }
                HubEvent::Completed { request_id, .. } => {
                    assert!(
                        c.outstanding.remove(&request_id),
                        "{peer}: request {request_id} ended twice"
                    );
                }
                HubEvent::Disconnected(_) => {
                    assert!(c.connected, "{peer}: Disconnected without Connected");
                    assert!(
                        c.outstanding.is_empty(),
                        "{peer}: Disconnected with requests pending"
                    );
                    c.disconnected = true;
                }
            }
        }
        while let Some(peer) = self.hub.poll_finished() {
            let c = self
                .clients
                .iter_mut()
                .find(|c| c.peer == peer)
                .expect("an unknown peer finished");
            assert!(!c.finished, "{peer}: finished twice");
            assert!(!self.hub.is_open(peer));
            c.finished = true;
            c.to_hub.clear();
        }
        // Admission counts exactly the transports not finished.
        let live = self.clients.iter().filter(|c| !c.finished).count();
        assert_eq!(self.hub.live(), live, "admission count");
        if let Some(m) = self.max {
            assert!(live <= m);
        }
        let connected = self
            .clients
            .iter()
            .filter(|c| c.connected && !c.disconnected)
            .count();
        assert_eq!(self.hub.connected(), connected);
        let peers: BTreeSet<PeerId> = self.hub.peers().collect();
        for c in &self.clients {
            assert_eq!(peers.contains(&c.peer), self.hub.is_connected(c.peer));
            if c.finished && !self.hub.is_open(c.peer) {
                assert!(!peers.contains(&c.peer));
            }
            if c.finished && c.connected {
                // Its Disconnected is among the events just taken.
                assert!(c.disconnected, "{}: finished without Disconnected", c.peer);
            }
        }
        assert!(
            self.hub.poll_timeout().is_none_or(|t| t > now),
            "hub deadline in the past after handle_timeout"
        );
    }

    fn op(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let code = byte(u)?;
        let now = self.now;
        let arg = byte(u)?;
        let i = self.index(arg);
        match code & 0x0f {
            // Every op settles every transport accepted so far: past a few
            // dozen, executions only get slower, not more telling.
            0 if self.clients.len() >= MAX_CLIENTS => {}
            0 => match self.hub.accept(now) {
                Ok(peer) => {
                    assert!(
                        self.clients.iter().all(|c| c.peer != peer),
                        "peer id reused"
                    );
                    self.clients.push(Client {
                        peer,
                        conn: Connection::client(self.config.clone(), now),
                        to_hub: VecDeque::new(),
                        to_client: VecDeque::new(),
                        finished: false,
                        connected: false,
                        disconnected: false,
                        outstanding: BTreeSet::new(),
                        requests: Vec::new(),
                    });
                }
                Err(r) => {
                    assert!(self.max.is_some_and(|m| self.hub.live() >= m));
                    let mut c = Connection::client(self.config.clone(), now);
                    c.handle_input(now, &r.bytes);
                    assert_eq!(
                        c.close_reason(),
                        Some(&CloseReason::Handshake(HandshakeError::Rejected(r.reason)))
                    );
                }
            },
            1 => {
                if let Some(i) = i {
                    let c = &mut self.clients[i];
                    let (hub, peer, finished) = (&mut self.hub, c.peer, c.finished);
                    take(&mut c.to_hub, usize::from(code >> 4) * 16, |bytes| {
                        if !finished && !bytes.is_empty() {
                            hub.handle_input(peer, now, bytes);
                        }
                    });
                }
            }
            2 => {
                if let Some(i) = i {
                    let c = &mut self.clients[i];
                    let conn = &mut c.conn;
                    take(&mut c.to_client, usize::from(code >> 4) * 16, |bytes| {
                        conn.handle_input(now, bytes)
                    });
                }
            }
            3 => {
                if let Some(i) = i {
                    let c = &mut self.clients[i];
                    let _ = if code & 0x10 != 0 {
                        c.conn
                            .request(now, MSG, vec![arg; 3], Duration::from_millis(300))
                    } else {
                        c.conn.send(MSG, vec![arg; usize::from(arg)])
                    };
                    if code & 0x20 != 0 {
                        if let Some(id) = c.requests.pop() {
                            let _ = c.conn.reply(id, MSG, vec![1]);
                        }
                    }
                }
            }
            4 => {
                if let Some(i) = i {
                    let peer = self.clients[i].peer;
                    let d = Duration::from_millis(20 * u64::from(arg));
                    let r = match code >> 4 {
                        0..=5 => self
                            .hub
                            .send(peer, MSG, vec![arg; usize::from(arg)])
                            .map(|_| None),
                        6..=9 => self.hub.request(peer, now, MSG, vec![arg; 2], d).map(Some),
                        10..=12 => self.hub.ping(peer, now, d).map(Some),
                        _ => {
                            if let Some(id) = self.clients[i].requests.pop() {
                                let _ = self.hub.reply(peer, id, MSG, vec![2]);
                            }
                            Ok(None)
                        }
                    };
                    match r {
                        Ok(Some(id)) => {
                            assert!(
                                self.clients[i].outstanding.insert(id),
                                "hub id reused while pending"
                            );
                        }
                        Ok(None) => {}
                        Err(_) => {
                            assert!(!self.hub.is_connected(peer) || self.hub.queued_bytes(peer) > 0)
                        }
                    }
                }
            }
            5 => {
                let connected: BTreeSet<PeerId> = self.hub.peers().collect();
                let some: Vec<PeerId> = self
                    .clients
                    .iter()
                    .map(|c| c.peer)
                    .filter(|p| u64::from(arg) & (1 << (p.as_u64() % 8)) != 0)
                    .collect();
                let v = json!(arg % 3);
                let (target, want): (Target<'_>, BTreeSet<PeerId>) = match code >> 4 & 3 {
                    0 => (Target::All, connected.clone()),
                    1 => (
                        Target::Except(&some),
                        connected
                            .iter()
                            .copied()
                            .filter(|p| !some.contains(p))
                            .collect(),
                    ),
                    2 => (
                        Target::Only(&some),
                        connected
                            .iter()
                            .copied()
                            .filter(|p| some.contains(p))
                            .collect(),
                    ),
                    _ => (
                        Target::Tag("g", Some(&v)),
                        connected
                            .iter()
                            .copied()
                            .filter(|&p| self.hub.tags(p).and_then(|t| t.get_tag("g")) == Some(&v))
                            .collect(),
                    ),
                };
                let before: Vec<(PeerId, usize)> = self
                    .clients
                    .iter()
                    .map(|c| (c.peer, self.hub.queued_bytes(c.peer)))
                    .collect();
                let b = self
                    .hub
                    .broadcast(MSG, &[arg; 5], target)
                    .expect("a user type and a small payload");
                assert_eq!(b.sent + b.skipped, want.len(), "broadcast targets");
                let got = before
                    .iter()
                    .filter(|&&(p, q)| self.hub.queued_bytes(p) > q)
                    .inspect(|(p, _)| assert!(want.contains(p), "broadcast reached untargeted {p}"))
                    .count();
                assert_eq!(got, b.sent);
            }
            6 => {
                if let Some(i) = i {
                    let e = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
                    self.hub
                        .handle_transport_error(self.clients[i].peer, now, &e);
                }
            }
            7 => {
                if let Some(i) = i {
                    if self.clients[i].to_hub.is_empty() {
                        self.hub.handle_eof(self.clients[i].peer, now);
                    }
                }
            }
            8 => {
                if let Some(i) = i {
                    self.hub.close(self.clients[i].peer, now);
                }
            }
            9 => {
                if code & 0x10 != 0 {
                    self.hub.close_all(now);
                }
            }
            10 => self.now += Duration::from_millis(u64::from(arg) * u64::from(arg) / 8),
            11 => {
                if let Some(t) = self.hub.poll_timeout() {
                    self.now = self.now.max(t);
                }
            }
            12 => {
                if let Some(i) = i {
                    if let Some(t) = self.hub.tags_mut(self.clients[i].peer) {
                        t.set_tag("g", json!(code % 3));
                    }
                }
            }
            13 => {
                if let Some(i) = i {
                    let n = usize::from(arg % 32).min(u.len());
                    let junk = u.bytes(n)?;
                    self.clients[i].to_hub.extend(junk.iter());
                }
            }
            14 => {
                if let Some(i) = i {
                    let peer = self.clients[i].peer;
                    if let Some(t) = self.hub.peer_timeout(peer) {
                        self.now = self.now.max(t);
                        self.hub.handle_peer_timeout(peer, self.now);
                    }
                }
            }
            _ => {
                if let Some(i) = i {
                    self.clients[i].conn.close(now);
                }
            }
        }
        Ok(())
    }
}

/// A [`Hub`] serving real client cores joined by byte queues.
///
/// Layout: `p[0]` `max_connection` (`% 6`, 0: unlimited), `p[1]` the
/// settings (see `config`), `p[2]` the receive budget (`·256` bytes, 0:
/// 64 KiB); then up to 300 ops of two bytes, `code` and `arg` (low nibble:
/// accept (a no-op past 24 transports), deliver to the hub / to a client (`code >> 4` ·16 bytes, 0: all),
/// a client command, a hub command (send, request, ping, reply), a
/// broadcast (`code >> 4 & 3`: all, except, only, tag), reset, EOF, close
/// one, close all, advance `arg²/8` ms, jump to `poll_timeout`, tag a peer,
/// junk to the hub, a peer's own timeout, a client closes).
///
/// Asserts: no panic; admission counts exactly the transports not named by
/// `poll_finished` and never passes `max_connection`; a refused accept
/// gives a rejection a client reads as `server_full`; peer ids are never
/// reused; events only for accepted peers, `Connected` once, `Disconnected`
/// only after it, last, and for every connected peer that finished; every
/// hub request or ping ends exactly once, before `Disconnected`; a
/// broadcast is queued exactly on its connected targets; `connected()` and
/// `peers()` agree with the events; after `handle_timeout(now)` the hub's
/// deadline is in the future.
pub fn hub_ops(t0: Instant, data: &[u8]) {
    let (p, script) = prefix::<3>(data);
    let max = (p[0] % 6 != 0).then_some(usize::from(p[0] % 6));
    let budget = if p[2] == 0 {
        64 * 1024
    } else {
        256 * usize::from(p[2])
    };
    let config = Arc::new(config(p[1]));
    let mut w = HubWorld {
        hub: Hub::with_connection_config(config.clone(), max, budget),
        max,
        now: t0,
        clients: Vec::new(),
        config,
    };
    let mut u = Unstructured::new(script);
    for _ in 0..MAX_OPS {
        if u.is_empty() || w.op(&mut u).is_err() {
            break;
        }
        w.settle();
    }
    // Close everything: every request ends, every slot is released.
    w.hub.close_all(w.now);
    w.settle();
    w.now += Duration::from_secs(10);
    w.settle();
    assert_eq!(w.hub.live(), 0);
    assert!(w
        .clients
        .iter()
        .all(|c| c.finished && c.outstanding.is_empty()));
}
