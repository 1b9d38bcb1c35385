//! What an application can do when it is called: [`ServerCtx`] and
//! [`ClientCtx`]. Their commands are the core's own
//! ([`Hub`]'s and [`ClientSession`]'s), with `now` supplied by the
//! simulation's clock; reading the core is open through
//! [`ServerCtx::hub`] and [`ClientCtx::session`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use veltix_proto::{Broadcast, ClientSession, Hub, MessageType, PeerId, SendError, Tags, Target};

use crate::net::{Link, Links};
use crate::rng::SimRng;
use crate::trace::TraceKind;
use crate::types::{LinkId, LinkInfo, NodeId};
use crate::world::{Log, TimerId, Timers};

/// What a server node knows about one of its hub's transports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerLink {
    pub link: LinkId,
    pub client: NodeId,
    /// 0: handshaking, 1: `Connected` reported, 2: `Disconnected` reported.
    pub state: u8,
    /// `poll_finished` named it (its transport is dropped).
    pub finished: bool,
}

/// The parts of the simulation every context reaches.
pub(crate) struct Shared<'a> {
    pub log: &'a mut Log,
    pub timers: &'a mut Timers,
    pub links: &'a Links,
}

macro_rules! common_ctx {
    () => {
        /// This node.
        pub fn node(&self) -> NodeId {
            self.node
        }
        /// This node's name.
        pub fn name(&self) -> &str {
            self.name
        }
        /// The virtual time now.
        pub fn now(&self) -> Instant {
            self.shared.log.now
        }
        /// Virtual time 0: the simulation's base instant.
        pub fn start(&self) -> Instant {
            self.shared.log.start
        }
        /// Virtual time since the simulation started.
        pub fn elapsed(&self) -> Duration {
            self.shared.log.elapsed()
        }
        /// The simulation's seed.
        pub fn seed(&self) -> u64 {
            self.shared.log.seed
        }
        /// This node's random source (its own stream of the seed).
        pub fn rng(&mut self) -> &mut SimRng {
            self.rng
        }
        /// Calls `on_timer(tag)` after `delay` (at the next step when zero).
        pub fn set_timer(&mut self, delay: Duration, tag: u64) -> TimerId {
            let at = self.shared.log.now + delay;
            self.shared.timers.set(self.node, at, tag)
        }
        /// Calls `on_timer(tag)` at `at` (at the next step when not later than now).
        pub fn set_timer_at(&mut self, at: Instant, tag: u64) -> TimerId {
            let at = at.max(self.shared.log.now);
            self.shared.timers.set(self.node, at, tag)
        }
        /// Cancels a timer of this node; false if it already fired or was cancelled.
        pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
            self.shared.timers.cancel(self.node, timer)
        }
        /// Adds a line to the trace (it counts in the trace's hash).
        pub fn note(&mut self, text: impl Into<String>) {
            self.shared
                .log
                .record(Some(self.node), TraceKind::Note(text.into()));
        }
        /// The network's facts about an open link.
        pub fn link_info(&self, link: LinkId) -> Option<LinkInfo> {
            self.shared.links.get(link).map(Link::info)
        }
        /// Fails the run: panics with `what`, the seed, the replay command
        /// and the end of the trace.
        pub fn fail(&self, what: impl fmt::Display) -> ! {
            self.shared.log.fail(&what)
        }
    };
}

/// A server application's view of its node, while one of its methods runs.
pub struct ServerCtx<'a> {
    pub(crate) node: NodeId,
    pub(crate) name: &'a str,
    pub(crate) hub: &'a mut Hub,
    pub(crate) rng: &'a mut SimRng,
    pub(crate) peers: &'a BTreeMap<PeerId, PeerLink>,
    pub(crate) shared: Shared<'a>,
}

impl ServerCtx<'_> {
    common_ctx!();

    /// The node's hub, to read (`peers`, `tags`, `identity`, `live`, ...).
    pub fn hub(&self) -> &Hub {
        self.hub
    }

    /// The link a peer's transport is on (`None` once finished).
    pub fn peer_link(&self, peer: PeerId) -> Option<LinkId> {
        self.peers
            .get(&peer)
            .filter(|p| !p.finished)
            .map(|p| p.link)
    }

    /// The client node behind a peer (ground truth a real server does not have).
    pub fn peer_node(&self, peer: PeerId) -> Option<NodeId> {
        self.peers.get(&peer).map(|p| p.client)
    }

    /// Every transport the hub accepted and has not finished, handshaking
    /// ones included, in id order.
    pub fn transports(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| !p.finished)
            .map(|(&id, _)| id)
    }

    /// [`Hub::send`].
    ///
    /// # Errors
    /// As [`Hub::send`].
    pub fn send(
        &mut self,
        peer: PeerId,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, SendError> {
        self.hub.send(peer, t, payload)
    }

    /// [`Hub::send_system`].
    ///
    /// # Errors
    /// As [`Hub::send_system`].
    pub fn send_system(
        &mut self,
        peer: PeerId,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, SendError> {
        self.hub.send_system(peer, t, payload)
    }

    /// [`Hub::reply`].
    ///
    /// # Errors
    /// As [`Hub::reply`].
    pub fn reply(
        &mut self,
        peer: PeerId,
        request_id: u16,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.hub.reply(peer, request_id, t, payload)
    }

    /// [`Hub::request`] at the current time.
    ///
    /// # Errors
    /// As [`Hub::request`].
    pub fn request(
        &mut self,
        peer: PeerId,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<u16, SendError> {
        let now = self.shared.log.now;
        self.hub.request(peer, now, t, payload, timeout)
    }

    /// [`Hub::ping`] at the current time.
    ///
    /// # Errors
    /// As [`Hub::ping`].
    pub fn ping(&mut self, peer: PeerId, timeout: Duration) -> Result<u16, SendError> {
        let now = self.shared.log.now;
        self.hub.ping(peer, now, timeout)
    }

    /// [`Hub::cancel_request`].
    pub fn cancel_request(&mut self, peer: PeerId, request_id: u16) -> bool {
        self.hub.cancel_request(peer, request_id)
    }

    /// [`Hub::broadcast`].
    ///
    /// # Errors
    /// As [`Hub::broadcast`].
    pub fn broadcast(
        &mut self,
        t: MessageType,
        payload: &[u8],
        target: Target<'_>,
    ) -> Result<Broadcast, SendError> {
        self.hub.broadcast(t, payload, target)
    }

    /// [`Hub::close`] at the current time.
    pub fn close(&mut self, peer: PeerId) -> bool {
        let now = self.shared.log.now;
        self.hub.close(peer, now)
    }

    /// [`Hub::close_all`] at the current time.
    pub fn close_all(&mut self) -> usize {
        let now = self.shared.log.now;
        self.hub.close_all(now)
    }

    /// [`Hub::tags_mut`].
    pub fn tags_mut(&mut self, peer: PeerId) -> Option<&mut Tags> {
        self.hub.tags_mut(peer)
    }

    /// [`Hub::set_paused`]: stop (or resume) taking `peer`'s application
    /// events, as a driver does when that peer's handlers are busy.
    pub fn set_paused(&mut self, peer: PeerId, paused: bool) {
        self.hub.set_paused(peer, paused);
    }
}

/// A client application's view of its node, while one of its methods runs.
pub struct ClientCtx<'a> {
    pub(crate) node: NodeId,
    pub(crate) name: &'a str,
    pub(crate) session: &'a mut ClientSession,
    pub(crate) rng: &'a mut SimRng,
    pub(crate) server: &'a mut NodeId,
    pub(crate) link: Option<LinkId>,
    pub(crate) shared: Shared<'a>,
}

impl ClientCtx<'_> {
    common_ctx!();

    /// The node's session, to read (`is_connected`, `attempts`, `stats`, ...).
    pub fn session(&self) -> &ClientSession {
        self.session
    }

    /// The server node the session dials.
    pub fn server(&self) -> NodeId {
        *self.server
    }

    /// Dials `server` from the next dial on (failover; the open transport stays).
    pub fn set_server(&mut self, server: NodeId) {
        *self.server = server;
    }

    /// The link of the session's transport (`None` while it has none).
    pub fn link(&self) -> Option<LinkId> {
        self.link
    }

    /// [`ClientSession::connect`] at the current time.
    pub fn connect(&mut self) {
        let now = self.shared.log.now;
        self.session.connect(now);
    }

    /// [`ClientSession::retry`] at the current time.
    pub fn retry(&mut self, max: Option<u32>) {
        let now = self.shared.log.now;
        self.session.retry(now, max);
    }

    /// [`ClientSession::stop_retry`] at the current time.
    pub fn stop_retry(&mut self) {
        let now = self.shared.log.now;
        self.session.stop_retry(now);
    }

    /// [`ClientSession::disconnect`] at the current time.
    pub fn disconnect(&mut self) {
        let now = self.shared.log.now;
        self.session.disconnect(now);
    }

    /// [`ClientSession::send`].
    ///
    /// # Errors
    /// As [`ClientSession::send`].
    pub fn send(&mut self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, SendError> {
        self.session.send(t, payload)
    }

    /// [`ClientSession::send_system`].
    ///
    /// # Errors
    /// As [`ClientSession::send_system`].
    pub fn send_system(
        &mut self,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, SendError> {
        self.session.send_system(t, payload)
    }

    /// [`ClientSession::reply`].
    ///
    /// # Errors
    /// As [`ClientSession::reply`].
    pub fn reply(
        &mut self,
        request_id: u16,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), SendError> {
        self.session.reply(request_id, t, payload)
    }

    /// [`ClientSession::request`] at the current time.
    ///
    /// # Errors
    /// As [`ClientSession::request`].
    pub fn request(
        &mut self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<u16, SendError> {
        let now = self.shared.log.now;
        self.session.request(now, t, payload, timeout)
    }

    /// [`ClientSession::ping`] at the current time.
    ///
    /// # Errors
    /// As [`ClientSession::ping`].
    pub fn ping(&mut self, timeout: Duration) -> Result<u16, SendError> {
        let now = self.shared.log.now;
        self.session.ping(now, timeout)
    }

    /// [`ClientSession::cancel_request`].
    pub fn cancel_request(&mut self, request_id: u16) -> bool {
        self.session.cancel_request(request_id)
    }
}
