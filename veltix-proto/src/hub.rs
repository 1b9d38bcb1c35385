//! The server side as one sans-IO state machine: [`Hub`].
//!
//! A hub owns every server connection, keyed by a small copyable
//! [`PeerId`]: admission (`max_connection`, `server_full`, and the slot's
//! release when a connection ends), the registry, tags and lookups by tag,
//! broadcast targeting (encoded once, queued on each target), closing one
//! peer or all, the timers of every connection in one ordered set, a
//! server-wide budget for partial frames, and "connected/disconnected"
//! events only for peers that finished the handshake. Events of different
//! peers are served round robin, one at a time, so a flooding peer cannot
//! starve the others.
//!
//! ```
//! use std::time::Instant;
//! use veltix_proto::{Hub, HubEvent, ServerConfig};
//!
//! let t0 = Instant::now();
//! let mut hub = Hub::new(&ServerConfig::default().max_connection(Some(1)));
//! let peer = hub.accept(t0).expect("room for one");
//! assert!(hub.accept(t0).is_err(), "server_full");
//! // The driver writes the server's hello ...
//! let hello = hub.poll_transmit(peer).unwrap();
//! hub.handle_written(peer, t0, hello.len());
//! // ... and the client resets before its own: no Connected, no Disconnected.
//! hub.handle_transport_error(peer, t0, &std::io::ErrorKind::ConnectionReset.into());
//! assert_eq!(hub.poll_finished(), Some(peer), "drop the socket");
//! assert!(hub.poll_event().is_none());
//! assert_eq!(hub.live(), 0);
//! assert!(hub.accept(t0).is_ok(), "the slot was released");
//! ```

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use crate::auth::Identity;
use crate::config::DuplicateIdentity;
use crate::config::ServerConfig;
use crate::connection::{Connection, ConnectionConfig, ConnectionStats};
use crate::correlation::IdAllocator;
use crate::event::{CloseReason, Event, Routed};
use crate::handshake::{encode_rejection, HandshakeError, PeerHello, SERVER_FULL};
use crate::server::{Rejection, Tags};

mod commands;
mod types;
pub use self::types::{Broadcast, HubEvent, HubStats, PeerId, Target};

#[derive(Debug)]
struct Peer {
    conn: Connection,
    tags: Tags,
    /// `Connected` was reported (so `Disconnected` will be).
    connected: bool,
    /// In `ready`.
    queued: bool,
    /// In `transmit`.
    transmit_queued: bool,
    /// In `completions`.
    completion_queued: bool,
    /// Its application events are not served (completions still are).
    paused: bool,
    /// Reported in `finished`, admission released.
    finished: bool,
    timer: Option<Instant>,
    buffered: usize,
    /// Identity set by the driver (a verified TLS client certificate).
    transport_identity: Option<Identity>,
    /// The identity this peer holds in `Hub::identities`.
    identity: Option<String>,
    /// Its established identity went through the duplicate rule.
    identity_checked: bool,
}

fn slot_peer(slots: &mut [Slot], id: PeerId) -> Option<&mut Peer> {
    let slot = slots.get_mut(id.index as usize)?;
    if slot.generation != id.generation {
        return None;
    }
    slot.peer.as_deref_mut()
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    peer: Option<Box<Peer>>,
}

/// Every connection of one server, without I/O. See the [module docs](self).
///
/// Calling contract, per peer as for a [`Connection`]: after `accept`,
/// write `poll_transmit(peer)` output and report it with `handle_written`,
/// read while `wants_input(peer)`, feed `handle_input` / `handle_eof` /
/// `handle_transport_error`; drop a peer's transport when `poll_finished`
/// names it. Hub-wide: drain `poll_event` (application events, round robin
/// between peers), `poll_transmit_ready` (peers given output by commands or
/// timers), and sleep until `poll_timeout`.
#[derive(Debug)]
pub struct Hub {
    config: Arc<ConnectionConfig>,
    max_connections: Option<usize>,
    max_buffered_input: usize,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    connected: usize,
    buffered: usize,
    broadcast_ids: IdAllocator,
    timers: BTreeSet<(Instant, PeerId)>,
    ready: VecDeque<PeerId>,
    completions: VecDeque<PeerId>,
    transmit: VecDeque<PeerId>,
    finished: VecDeque<PeerId>,
    now: Option<Instant>,
    stats: HubStats,
    /// The last peer serial handed out.
    serial: u32,
    duplicate: DuplicateIdentity,
    /// Connected identities (by name) and the peer holding each, when
    /// `duplicate` is not `Allow`.
    identities: HashMap<String, PeerId>,
}

impl Hub {
    /// A hub for `config` (limits, deadlines, `max_connection`).
    pub fn new(config: &ServerConfig) -> Self {
        let mut hub = Self::with_connection_config(
            config.connection_config(),
            config.max_connection,
            config.max_buffered_input,
        );
        hub.duplicate = config.duplicate_identity;
        hub
    }

    /// Sets the rule for a second connection of one identity. `Refuse`
    /// refuses before the ack when the connection config has
    /// [`hold_authenticated`](ConnectionConfig::hold_authenticated) (as
    /// [`Hub::new`] sets it), else right after it.
    pub fn set_duplicate_identity(&mut self, rule: DuplicateIdentity) {
        self.duplicate = rule;
    }

    /// Records the identity the transport proved for `peer` (a verified TLS
    /// client certificate), before its handshake ends. It is reported as
    /// the peer's identity unless the handshake authenticates another.
    pub fn set_transport_identity(&mut self, peer: PeerId, identity: Identity) {
        if let Some(p) = self.peer_mut(peer) {
            p.conn.set_transport_identity(identity.clone());
            p.transport_identity = Some(identity);
        }
    }

    /// `peer`'s authenticated identity: the handshake's, else the
    /// transport's.
    pub fn identity(&self, peer: PeerId) -> Option<&Identity> {
        let p = self.peer(peer)?;
        p.conn
            .peer_hello()
            .and_then(PeerHello::identity)
            .or(p.transport_identity.as_ref())
    }

    /// The connected peer holding `name`'s identity, when the duplicate rule
    /// is `Refuse` or `Replace` (the hub only tracks identities then).
    pub fn peer_by_identity(&self, name: &str) -> Option<PeerId> {
        self.identities.get(name).copied()
    }

    /// A hub from its parts.
    pub fn with_connection_config(
        config: Arc<ConnectionConfig>,
        max_connections: Option<usize>,
        max_buffered_input: usize,
    ) -> Self {
        Hub {
            broadcast_ids: IdAllocator::server(config.id_window),
            config,
            max_connections,
            max_buffered_input,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            connected: 0,
            buffered: 0,
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
            completions: VecDeque::new(),
            transmit: VecDeque::new(),
            finished: VecDeque::new(),
            now: None,
            stats: HubStats::default(),
            serial: 0,
            duplicate: DuplicateIdentity::Allow,
            identities: HashMap::new(),
        }
    }

    // ----------------------------------------------------------------- getters

    fn peer(&self, id: PeerId) -> Option<&Peer> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.peer.as_deref()
    }

    fn peer_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        slot_peer(&mut self.slots, id)
    }

    /// The connection settings every peer gets.
    pub fn config(&self) -> &Arc<ConnectionConfig> {
        &self.config
    }
    /// Transports counted against `max_connection` (handshaking ones included).
    pub fn live(&self) -> usize {
        self.live
    }
    /// Changes `max_connection` (e.g. lowered to fit the process's
    /// file-descriptor limit when a driver starts); live connections stay.
    pub fn set_max_connections(&mut self, max: Option<usize>) {
        self.max_connections = max;
    }
    /// Whether the next `accept` would be refused.
    pub fn is_full(&self) -> bool {
        self.max_connections.is_some_and(|m| self.live >= m)
    }
    /// Counters.
    pub fn stats(&self) -> HubStats {
        self.stats
    }
    /// Received bytes buffered in partial frames, all peers.
    pub fn buffered_input(&self) -> usize {
        self.buffered
    }
    /// Whether `peer` finished its handshake and is still open.
    pub fn is_connected(&self, peer: PeerId) -> bool {
        self.peer(peer).is_some_and(|p| p.conn.is_established())
    }
    /// Whether the driver should keep `peer`'s transport open.
    pub fn is_open(&self, peer: PeerId) -> bool {
        self.peer(peer).is_some_and(|p| !p.conn.is_finished())
    }
    /// Whether the driver should read from `peer`'s transport.
    pub fn wants_input(&self, peer: PeerId) -> bool {
        self.peer(peer).is_some_and(|p| p.conn.wants_input())
    }
    /// Whether `poll_transmit(peer)` has bytes to give now.
    pub fn has_transmit(&self, peer: PeerId) -> bool {
        self.peer(peer).is_some_and(|p| p.conn.has_transmit())
    }
    /// Outbound bytes accepted for `peer` and not yet written.
    pub fn queued_bytes(&self, peer: PeerId) -> usize {
        self.peer(peer).map_or(0, |p| p.conn.queued_bytes())
    }
    /// The peer's hello, once connected.
    pub fn peer_hello(&self, peer: PeerId) -> Option<&PeerHello> {
        self.peer(peer).and_then(|p| p.conn.peer_hello())
    }
    /// Counters of the peer's connection.
    pub fn peer_stats(&self, peer: PeerId) -> Option<ConnectionStats> {
        self.peer(peer).map(|p| p.conn.stats())
    }
    /// The peer's tags (they never travel on the wire).
    pub fn tags(&self, peer: PeerId) -> Option<&Tags> {
        self.peer(peer).map(|p| &p.tags)
    }
    /// The peer's tags, to change them.
    pub fn tags_mut(&mut self, peer: PeerId) -> Option<&mut Tags> {
        self.peer_mut(peer).map(|p| &mut p.tags)
    }
    /// Peers that finished the handshake and are open, in id order.
    pub fn peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let p = s.peer.as_deref()?;
            p.conn.is_established().then_some(PeerId {
                index: i as u32,
                generation: s.generation,
            })
        })
    }
    /// Connected peers carrying `tag` (equal to `value`, when given):
    /// Veltix's `get_clients_by_tag`.
    pub fn peers_by_tag(&self, tag: &str, value: Option<&Value>) -> Vec<PeerId> {
        self.peers()
            .filter(|&id| self.peer(id).is_some_and(|p| p.tags.matches(tag, value)))
            .collect()
    }
    /// The earliest deadline of one peer (for drivers that run a timer per
    /// transport; [`poll_timeout`](Self::poll_timeout) is the hub-wide one).
    pub fn peer_timeout(&self, peer: PeerId) -> Option<Instant> {
        self.peer(peer).and_then(|p| p.timer)
    }
    /// Fires the due deadlines of one peer only.
    pub fn handle_peer_timeout(&mut self, peer: PeerId, now: Instant) {
        self.advance(now);
        if let Some(p) = self.peer_mut(peer) {
            p.conn.handle_timeout(now);
            self.touch(peer);
        }
    }
    /// Peers whose `Connected` event was taken and whose `Disconnected`
    /// event was not yet (the application's view; [`peers`](Self::peers)
    /// lists established peers whatever events are pending).
    pub fn connected(&self) -> usize {
        self.connected
    }

    // ---------------------------------------------------------------- accept

    fn advance(&mut self, now: Instant) {
        if self.now.is_none_or(|n| now > n) {
            self.now = Some(now);
        }
    }

    /// A transport was accepted at `now`: the new peer (its hello queued),
    /// or the rejection to write before closing the transport.
    ///
    /// # Errors
    /// [`Rejection`] when `max_connection` transports are live.
    pub fn accept(&mut self, now: Instant) -> Result<PeerId, Rejection> {
        self.advance(now);
        if self.is_full() {
            self.stats.rejected += 1;
            tracing::debug!(live = self.live, "refusing connection: server full");
            return Err(Rejection {
                reason: SERVER_FULL.to_owned(),
                bytes: encode_rejection(SERVER_FULL),
            });
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        // One serial for the whole hub (1, 2, 3, ...): a reused slot never
        // gets an id it had before, and the serial is a short number to show.
        self.serial = self.serial.wrapping_add(1).max(1);
        slot.generation = self.serial;
        slot.peer = Some(Box::new(Peer {
            conn: Connection::server(self.config.clone(), now),
            tags: Tags::default(),
            connected: false,
            queued: false,
            transmit_queued: false,
            completion_queued: false,
            paused: false,
            finished: false,
            timer: None,
            buffered: 0,
            transport_identity: None,
            identity: None,
            identity_checked: false,
        }));
        let id = PeerId {
            index,
            generation: slot.generation,
        };
        self.live += 1;
        self.stats.accepted += 1;
        self.touch(id);
        Ok(id)
    }

    // ------------------------------------------------------------------- input

    /// Bytes received from `peer`.
    pub fn handle_input(&mut self, peer: PeerId, now: Instant, data: &[u8]) {
        self.advance(now);
        if let Some(p) = self.peer_mut(peer) {
            p.conn.handle_input(now, data);
            if !p.identity_checked && (p.conn.is_established() || p.conn.held_identity().is_some())
            {
                self.check_identity(peer, now);
            }
            self.touch(peer);
            if self.buffered > self.max_buffered_input {
                self.enforce_budget(now);
            }
        }
    }

    /// The driver wrote `n` bytes of `peer`'s output.
    pub fn handle_written(&mut self, peer: PeerId, now: Instant, n: usize) {
        self.advance(now);
        if let Some(p) = self.peer_mut(peer) {
            p.conn.handle_written(now, n);
            self.touch(peer);
        }
    }

    /// `peer` closed its side (read returned 0).
    pub fn handle_eof(&mut self, peer: PeerId, now: Instant) {
        self.advance(now);
        if let Some(p) = self.peer_mut(peer) {
            p.conn.handle_eof(now);
            self.touch(peer);
        }
    }

    /// `peer`'s transport failed.
    pub fn handle_transport_error(&mut self, peer: PeerId, now: Instant, error: &std::io::Error) {
        self.advance(now);
        if let Some(p) = self.peer_mut(peer) {
            p.conn.handle_transport_error(now, error);
            self.touch(peer);
        }
    }

    /// Fires every due deadline of every peer. Calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        while let Some(&(t, id)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            if let Some(p) = self.peer_mut(id) {
                p.timer = None;
                p.conn.handle_timeout(now);
            }
            self.touch(id);
        }
    }

    // ------------------------------------------------------------------ output

    /// The next bytes to write to `peer`'s transport.
    pub fn poll_transmit(&mut self, peer: PeerId) -> Option<Bytes> {
        self.peer_mut(peer)?.conn.poll_transmit()
    }

    /// A peer whose output grew since it was last named here (after a
    /// command, a timer or another peer's input): try writing to it.
    pub fn poll_transmit_ready(&mut self) -> Option<PeerId> {
        while let Some(id) = self.transmit.pop_front() {
            if let Some(p) = self.peer_mut(id) {
                p.transmit_queued = false;
                if p.conn.has_transmit() {
                    return Some(id);
                }
            }
        }
        None
    }

    /// A peer whose connection ended: drop its transport. Its admission
    /// slot is already released.
    pub fn poll_finished(&mut self) -> Option<PeerId> {
        self.finished.pop_front()
    }

    /// The next request outcome of any peer, paused ones included.
    pub fn poll_completion(&mut self) -> Option<(PeerId, HubEvent)> {
        while let Some(id) = self.completions.pop_front() {
            let Some(p) = self.peer_mut(id) else { continue };
            p.completion_queued = false;
            let e = p.conn.poll_completion();
            self.touch(id);
            if let Some(Routed::Completed {
                request_id,
                outcome,
            }) = e.map(Event::routed)
            {
                return Some((
                    id,
                    HubEvent::Completed {
                        request_id,
                        outcome,
                    },
                ));
            }
        }
        None
    }

    /// Stops (`true`) or resumes serving `peer`'s application events from
    /// [`poll_event`](Self::poll_event): for a driver whose queue toward that
    /// peer's handlers is full. A paused peer's events stay in the core,
    /// which stops decoding at `max_event_bytes` (so `wants_input` turns
    /// false and the driver stops reading it); its request outcomes are
    /// still served by [`poll_completion`](Self::poll_completion) and its
    /// timers still run.
    pub fn set_paused(&mut self, peer: PeerId, paused: bool) {
        if let Some(p) = self.peer_mut(peer) {
            p.paused = paused;
            self.touch(peer);
        }
    }

    /// The next application event, round robin between peers (one event per
    /// peer per turn). Taking events lets a peer's decoding resume.
    pub fn poll_event(&mut self) -> Option<(PeerId, HubEvent)> {
        while let Some(id) = self.ready.pop_front() {
            let Some(p) = slot_peer(&mut self.slots, id) else {
                continue;
            };
            p.queued = false;
            if p.paused && !p.conn.is_finished() {
                // Dropped from the round; `set_paused(false)` puts it back.
                continue;
            }
            let out = Self::take_event(p, &mut self.connected);
            self.touch(id);
            if let Some(e) = out {
                return Some((id, e));
            }
        }
        None
    }

    /// Like [`poll_event`](Self::poll_event), in batches: appends up to
    /// `max` events of the next peer in the round to `out` (fewer if it
    /// has fewer), then moves that peer to the back of the round, as one
    /// turn. Returns how many were appended (0: no events anywhere). The
    /// same events, in the same order per peer, as `poll_event` would give;
    /// the hub's bookkeeping runs once per batch instead of once per event.
    pub fn poll_events(&mut self, max: usize, out: &mut Vec<(PeerId, HubEvent)>) -> usize {
        if max == 0 {
            return 0;
        }
        while let Some(id) = self.ready.pop_front() {
            let Some(p) = slot_peer(&mut self.slots, id) else {
                continue;
            };
            p.queued = false;
            if p.paused && !p.conn.is_finished() {
                continue;
            }
            let before = out.len();
            let mut taken = 0;
            while taken < max {
                let Some(e) = p.conn.poll_event() else { break };
                taken += 1;
                if let Some(e) = Self::map_event(p, &mut self.connected, e) {
                    out.push((id, e));
                }
            }
            self.touch(id);
            let n = out.len() - before;
            if n > 0 {
                return n;
            }
        }
        0
    }

    /// Takes one event of `p`'s connection, as the hub reports it.
    fn take_event(p: &mut Peer, connected: &mut usize) -> Option<HubEvent> {
        let e = p.conn.poll_event()?;
        Self::map_event(p, connected, e)
    }

    fn map_event(p: &mut Peer, connected: &mut usize, ev: Event) -> Option<HubEvent> {
        match ev {
            Event::Connected(hello) => {
                p.connected = true;
                *connected += 1;
                Some(HubEvent::Connected(hello))
            }
            Event::Closed { reason, .. } => {
                let was = std::mem::replace(&mut p.connected, false);
                if was {
                    *connected -= 1;
                }
                was.then_some(HubEvent::Disconnected(reason))
            }
            e => match e.routed() {
                Routed::Message(f) => Some(HubEvent::Message(f)),
                Routed::Completed {
                    request_id,
                    outcome,
                } => Some(HubEvent::Completed {
                    request_id,
                    outcome,
                }),
                _ => None,
            },
        }
    }

    /// When to call `handle_timeout` next (the earliest deadline of any
    /// peer); queued work of a peer shows in `poll_transmit_ready` and
    /// `poll_event`, not here.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    // -------------------------------------------------------------- internals

    /// After anything happened to `id`: its timer, queues, budget share and,
    /// once its connection finished, its release.
    fn touch(&mut self, id: PeerId) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        if slot.generation != id.generation {
            return;
        }
        let Some(p) = slot.peer.as_deref_mut() else {
            return;
        };
        let timer = p.conn.next_timer();
        if timer != p.timer {
            if let Some(old) = p.timer {
                self.timers.remove(&(old, id));
            }
            if let Some(new) = timer {
                self.timers.insert((new, id));
            }
            p.timer = timer;
        }
        let buffered = p.conn.buffered_input();
        self.buffered = self.buffered - p.buffered + buffered;
        p.buffered = buffered;
        if p.conn.has_events() && !p.queued && (!p.paused || p.conn.is_finished()) {
            p.queued = true;
            self.ready.push_back(id);
        }
        if p.conn.has_completions() && !p.completion_queued {
            p.completion_queued = true;
            self.completions.push_back(id);
        }
        if p.conn.has_transmit() && !p.transmit_queued {
            p.transmit_queued = true;
            self.transmit.push_back(id);
        }
        if p.conn.is_finished() && !p.finished {
            if let Some(name) = p.identity.take() {
                if self.identities.get(&name) == Some(&id) {
                    self.identities.remove(&name);
                }
            }
            p.finished = true;
            self.live -= 1;
            self.finished.push_back(id);
        }
        if p.finished && !p.conn.has_events() {
            // Released and every event taken: the slot is free.
            if let Some(t) = p.timer {
                self.timers.remove(&(t, id));
            }
            self.buffered -= p.buffered;
            slot.peer = None;
            self.free.push(id.index);
        }
    }

    /// Applies the duplicate-identity rule to `id`, which is established or
    /// held for admission.
    fn check_identity(&mut self, id: PeerId, now: Instant) {
        let duplicate = self.duplicate;
        let Some(p) = self.peer_mut(id) else {
            return;
        };
        p.identity_checked = true;
        let held = p.conn.held_identity().map(|i| i.name.clone());
        let name = held.clone().or_else(|| {
            p.conn
                .peer_hello()
                .and_then(PeerHello::identity)
                .or(p.transport_identity.as_ref())
                .map(|i| i.name.clone())
        });
        let Some(name) = name.filter(|_| duplicate != DuplicateIdentity::Allow) else {
            if held.is_some() {
                p.conn.admit(now);
            }
            return;
        };
        let other = self.identities.get(&name).copied().filter(|&o| o != id);
        match (duplicate, other) {
            (DuplicateIdentity::Refuse, Some(_)) => {
                tracing::debug!(identity = %name, "refusing a second connection of this identity");
                let Some(p) = self.peer_mut(id) else { return };
                if held.is_some() {
                    p.conn.refuse(now, HandshakeError::IdentityInUse);
                } else {
                    p.conn
                        .abort(now, CloseReason::Handshake(HandshakeError::IdentityInUse));
                }
            }
            (_, other) => {
                if let Some(old) = other {
                    tracing::debug!(identity = %name, "a newer connection replaces this identity's");
                    if let Some(o) = self.peer_mut(old) {
                        o.identity = None;
                        o.conn.abort(now, CloseReason::Replaced);
                    }
                    self.touch(old);
                }
                self.identities.insert(name.clone(), id);
                if let Some(p) = self.peer_mut(id) {
                    p.identity = Some(name);
                    if held.is_some() {
                        p.conn.admit(now);
                    }
                }
            }
        }
    }

    /// Cuts the peers holding the largest partial frames until the total
    /// is within `max_buffered_input`.
    fn enforce_budget(&mut self, now: Instant) {
        while self.buffered > self.max_buffered_input {
            let victim = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let p = s.peer.as_deref()?;
                    (p.buffered > 0).then_some((
                        p.buffered,
                        PeerId {
                            index: i as u32,
                            generation: s.generation,
                        },
                    ))
                })
                .max();
            let Some((bytes, id)) = victim else { return };
            tracing::warn!(peer = %id, bytes, total = self.buffered, "receive budget exceeded: cutting the largest partial frame");
            self.stats.budget_cuts += 1;
            if let Some(p) = self.peer_mut(id) {
                p.conn.abort(now, CloseReason::BufferBudget);
            }
            self.touch(id);
        }
    }
}
