//! The blocking [`Server`]: the core's [`Hub`] behind one mutex, one mio
//! I/O thread (listener, every connection, a waker), callbacks on the pool.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::Value;
use veltix_proto::{
    ConnectionStats, Error, Frame, Hub, HubEvent, HubStats, MessageType, PeerHello, PeerId, Reply,
    RequestFailure, Router, SendError, ServerConfig, Tags, Target, Wait,
};

use crate::io::{self, Flushed, Output, Read1};
use crate::pool::{lock, wait_until, Item, Mailbox, Pool, MAILBOX_BYTES};

const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Extra wait of a blocked `request`/`ping` past its deadline, in case the
/// I/O thread is late delivering the core's outcome.
pub(crate) const WAIT_MARGIN: Duration = Duration::from_millis(50);

/// How long the listener rests after an accept error (EMFILE, ENFILE, ...).
const ACCEPT_PAUSE: Duration = Duration::from_millis(75);

/// Accepts per pass of the I/O loop.
const ACCEPTS_PER_PASS: usize = 128;

type ConnectFn = dyn Fn(&Server, &Peer) + Send + Sync;
type MessageFn = dyn Fn(&Server, &Peer, Frame) + Send + Sync;

#[derive(Default)]
struct Callbacks {
    on_connect: Option<Arc<ConnectFn>>,
    on_disconnect: Option<Arc<ConnectFn>>,
    router: Router<Arc<MessageFn>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    Stopping { until: Instant },
    Stopped,
}

/// Everything under the one lock: the core and what waiters need.
struct Core {
    hub: Hub,
    addrs: HashMap<PeerId, SocketAddr>,
    /// Requests and pings with a blocked caller: their outcome, once known.
    waiting: HashMap<(PeerId, u16), Option<Result<Reply, RequestFailure>>>,
    waker: Option<Arc<Waker>>,
    wake_pending: bool,
    phase: Phase,
    local_addr: Option<SocketAddr>,
}

impl Core {
    /// Makes the I/O thread look at the core again (coalesced).
    fn wake(&mut self) {
        if !self.wake_pending {
            if let Some(w) = &self.waker {
                self.wake_pending = true;
                if let Err(e) = w.wake() {
                    tracing::warn!(error = %e, "cannot wake the I/O thread");
                }
            }
        }
    }
}

#[derive(Default)]
struct Control {
    io: Option<JoinHandle<()>>,
    pool: Option<Arc<Pool>>,
}

struct Shared {
    config: ServerConfig,
    core: Mutex<Core>,
    /// Signalled when outcomes arrive, output is written, peers end, the phase changes.
    cv: Condvar,
    callbacks: RwLock<Callbacks>,
    control: Mutex<Control>,
}

/// A Veltix server on std threads.
///
/// One I/O thread (a `mio` readiness loop) serves the listener and every
/// connection; the protocol (admission, handshakes, deadlines, broadcast
/// targeting, tags) is the core's [`Hub`]. Callbacks run on a pool of
/// `max_workers` threads, serially per peer and in arrival order.
///
/// A started server runs until [`shutdown`](Self::shutdown), even if every
/// handle is dropped.
///
/// ```no_run
/// use std::time::Duration;
/// use veltix_std::{MessageType, Server, ServerConfig};
///
/// const ECHO: MessageType = MessageType::new(200);
/// let server = Server::new(ServerConfig::new("127.0.0.1", 8080)).unwrap();
/// server.route(ECHO, |server, peer, msg| {
///     let _ = server.reply(peer, &msg, ECHO, msg.payload.clone());
/// }).unwrap();
/// server.start().unwrap();
/// // ... later
/// server.shutdown(Duration::from_secs(1));
/// ```
#[derive(Clone)]
pub struct Server(Arc<Shared>);

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .finish()
    }
}

/// One client as the server sees it (Veltix's `ClientInfo`): the core's
/// [`PeerId`] and a weak reference to the server. Cheap to clone; equal
/// handles name the same connection of the same server.
#[doc(alias = "ClientInfo")]
#[derive(Clone)]
pub struct Peer {
    id: PeerId,
    addr: SocketAddr,
    /// The hello seen when the handle was made (kept after the peer left).
    hello: Option<Arc<PeerHello>>,
    server: Weak<Shared>,
}

/// Veltix's name for a [`Peer`].
pub type ClientInfo = Peer;

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish()
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && Weak::ptr_eq(&self.server, &other.server)
    }
}
impl Eq for Peer {}
impl Hash for Peer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl Peer {
    fn with_hub<T>(&self, f: impl FnOnce(&mut Hub) -> T) -> Option<T> {
        let shared = self.server.upgrade()?;
        let mut g = lock(&shared.core);
        Some(f(&mut g.hub))
    }
    /// A number unique to this connection within its server (the core's
    /// [`PeerId::as_u64`]).
    pub fn id(&self) -> u64 {
        self.id.as_u64()
    }
    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The peer's IP.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
    /// The peer's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// Whether the peer finished its handshake and is still connected.
    pub fn handshake_done(&self) -> bool {
        self.with_hub(|h| h.is_connected(self.id)).unwrap_or(false)
    }
    /// Its hello (`v`, `pv`, `meta`): once it connected (still known after
    /// it left, for handles made while it was connected).
    pub fn hello(&self) -> Option<PeerHello> {
        self.with_hub(|h| h.peer_hello(self.id).cloned())
            .flatten()
            .or_else(|| self.hello.as_deref().cloned())
    }
    /// Counters of its connection (frames, bytes, counted drops), while open.
    pub fn stats(&self) -> Option<ConnectionStats> {
        self.with_hub(|h| h.peer_stats(self.id)).flatten()
    }
    fn tags_mut<T>(&self, f: impl FnOnce(&mut Tags) -> T) -> Option<T> {
        self.with_hub(|h| h.tags_mut(self.id).map(f)).flatten()
    }
    /// Adds a tag; `false` if it exists (or the peer is gone).
    pub fn add_tag(&self, name: &str, value: Value) -> bool {
        self.tags_mut(|t| t.add_tag(name, value)).unwrap_or(false)
    }
    /// Sets a tag, replacing its value.
    pub fn set_tag(&self, name: &str, value: Value) {
        self.tags_mut(|t| t.set_tag(name, value));
    }
    /// A tag's value.
    pub fn get_tag(&self, name: &str) -> Option<Value> {
        self.tags_mut(|t| t.get_tag(name).cloned()).flatten()
    }
    /// Whether the tag is set.
    pub fn has_tag(&self, name: &str) -> bool {
        self.tags_mut(|t| t.has_tag(name)).unwrap_or(false)
    }
    /// Whether every one of these tags is set.
    pub fn has_all_tags(&self, names: &[&str]) -> bool {
        self.tags_mut(|t| t.has_all_tags(names.iter().copied()))
            .unwrap_or(false)
    }
    /// Whether any of these tags is set.
    pub fn has_any_tags(&self, names: &[&str]) -> bool {
        self.tags_mut(|t| t.has_any_tags(names.iter().copied()))
            .unwrap_or(false)
    }
    /// Removes a tag; `false` if it was not set.
    pub fn remove_tag(&self, name: &str) -> bool {
        self.tags_mut(|t| t.remove_tag(name)).unwrap_or(false)
    }
    /// Removes every tag.
    pub fn clear_tags(&self) {
        self.tags_mut(Tags::clear_tags);
    }
    /// A copy of its tags (empty once the peer is gone).
    pub fn tags(&self) -> Tags {
        self.tags_mut(|t| t.clone()).unwrap_or_default()
    }
}

fn reserved(t: MessageType) -> Result<(), Error> {
    if t.is_system() {
        Err(Error::Send(SendError::ReservedType(t)))
    } else {
        Ok(())
    }
}

impl Server {
    /// A server (not listening yet; no I/O).
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid setting.
    pub fn new(config: ServerConfig) -> Result<Server, Error> {
        config.validate()?;
        let hub = Hub::new(&config);
        Ok(Server(Arc::new(Shared {
            config,
            core: Mutex::new(Core {
                hub,
                addrs: HashMap::new(),
                waiting: HashMap::new(),
                waker: None,
                wake_pending: false,
                phase: Phase::Idle,
                local_addr: None,
            }),
            cv: Condvar::new(),
            callbacks: RwLock::new(Callbacks::default()),
            control: Mutex::new(Control::default()),
        })))
    }

    fn callbacks(&self) -> std::sync::RwLockWriteGuard<'_, Callbacks> {
        self.0.callbacks.write().unwrap_or_else(|e| e.into_inner())
    }
    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.0.core)
    }

    /// Called after each peer's handshake.
    pub fn on_connect(&self, f: impl Fn(&Server, &Peer) + Send + Sync + 'static) {
        self.callbacks().on_connect = Some(Arc::new(f));
    }
    /// Called once per peer that had connected, after its last message.
    pub fn on_disconnect(&self, f: impl Fn(&Server, &Peer) + Send + Sync + 'static) {
        self.callbacks().on_disconnect = Some(Arc::new(f));
    }
    /// Called for every message no route claims.
    pub fn on_recv(&self, f: impl Fn(&Server, &Peer, Frame) + Send + Sync + 'static) {
        self.callbacks().router.set_fallback(Arc::new(f));
    }
    /// Routes one message type to a handler.
    ///
    /// # Errors
    /// [`Error::Send`]`(`[`SendError::ReservedType`]`)` below 200,
    /// [`Error::RouteExists`] if the type has a route (the first one stays).
    pub fn route(
        &self,
        t: MessageType,
        f: impl Fn(&Server, &Peer, Frame) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        reserved(t)?;
        if self.callbacks().router.route(t, Arc::new(f)) {
            Ok(())
        } else {
            Err(Error::RouteExists(t))
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    /// Binds, listens (backlog 4096) and starts the I/O thread and the pool.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`], [`Error::Resolve`], [`Error::Io`] (bind,
    /// or a thread that cannot be spawned).
    pub fn start(&self) -> Result<(), Error> {
        let mut ctl = lock(&self.0.control);
        if matches!(self.core().phase, Phase::Running | Phase::Stopping { .. }) {
            return Err(Error::AlreadyRunning);
        }
        if let Some(h) = ctl.io.take() {
            let _ = h.join();
        }
        let listener = bind(&self.0.config)?;
        let local_addr = listener.local_addr()?;
        let pool = Arc::new(Pool::new(self.0.config.max_workers, "veltix-server")?);
        let started = (|| -> std::io::Result<_> {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            Ok((poll, waker))
        })();
        let (poll, waker) = match started {
            Ok(x) => x,
            Err(e) => {
                pool.shutdown();
                return Err(e.into());
            }
        };
        {
            let mut g = self.core();
            g.waker = Some(waker.clone());
            g.wake_pending = false;
            g.phase = Phase::Running;
            g.local_addr = Some(local_addr);
        }
        let mut io = IoLoop::new(self.0.clone(), poll, waker, listener, pool.clone());
        let spawned = std::thread::Builder::new()
            .name("veltix-server-io".into())
            .spawn(move || io.run());
        match spawned {
            Ok(h) => {
                ctl.io = Some(h);
                ctl.pool = Some(pool);
                tracing::info!(addr = %local_addr, "server listening");
                Ok(())
            }
            Err(e) => {
                let mut g = self.core();
                g.waker = None;
                g.phase = Phase::Idle;
                g.local_addr = None;
                drop(g);
                pool.shutdown();
                Err(Error::Io(e))
            }
        }
    }

    /// The bound address, while running.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.core().local_addr
    }

    fn peer_of(&self, g: &Core, id: PeerId) -> Option<Peer> {
        g.addrs.get(&id).map(|&addr| Peer {
            id,
            addr,
            hello: g.hub.peer_hello(id).cloned().map(Arc::new),
            server: Arc::downgrade(&self.0),
        })
    }

    /// Peers that finished their handshake.
    pub fn clients(&self) -> Vec<Peer> {
        let g = self.core();
        g.hub
            .peers()
            .filter_map(|id| self.peer_of(&g, id))
            .collect()
    }

    /// Connected peers with this tag (equal to `value`, when given).
    #[doc(alias = "get_clients_by_tag")]
    pub fn clients_by_tag(&self, tag: &str, value: Option<&Value>) -> Vec<Peer> {
        let g = self.core();
        g.hub
            .peers_by_tag(tag, value)
            .into_iter()
            .filter_map(|id| self.peer_of(&g, id))
            .collect()
    }

    /// Sends a message to `peer`, waiting while its outbound queue is full,
    /// up to `timeout` (`None`: the config's `request_timeout`).
    ///
    /// # Errors
    /// [`Error::TimedOut`]`{ what: Wait::Send, .. }`, [`Error::NotConnected`],
    /// [`Error::Closed`], [`Error::Send`].
    pub fn send(
        &self,
        peer: &Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<u16, Error> {
        let payload = payload.into();
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        let deadline = Instant::now() + timeout;
        let mut g = self.core();
        loop {
            match g.hub.send(peer.id, t, payload.clone()) {
                Ok(id) => {
                    g.wake();
                    return Ok(id);
                }
                Err(SendError::QueueFull { .. }) => {
                    if Instant::now() >= deadline {
                        return Err(Error::TimedOut {
                            what: Wait::Send,
                            after: timeout,
                        });
                    }
                    g.wake();
                    g = wait_until(&self.0.cv, g, Some(deadline));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a message to `peer` without waiting.
    ///
    /// # Errors
    /// [`Error::Send`]`(`[`SendError::QueueFull`]`)` when its queue is full, ...
    pub fn try_send(
        &self,
        peer: &Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, Error> {
        let mut g = self.core();
        let id = g.hub.send(peer.id, t, payload)?;
        g.wake();
        Ok(id)
    }

    /// Answers `request` of `peer` with the same id (without waiting).
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    pub fn reply(
        &self,
        peer: &Peer,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let mut g = self.core();
        g.hub.reply(peer.id, request.request_id, t, payload)?;
        g.wake();
        Ok(())
    }

    fn wait_outcome(
        &self,
        mut g: MutexGuard<'_, Core>,
        key: (PeerId, u16),
        what: Wait,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Reply, Error> {
        loop {
            if let Some(Some(_)) = g.waiting.get(&key) {
                let outcome = g.waiting.remove(&key).flatten().expect("checked");
                return outcome.map_err(|f| Error::from_request_failure(f, what, timeout));
            }
            if Instant::now() >= deadline {
                g.waiting.remove(&key);
                g.hub.cancel_request(key.0, key.1);
                return Err(Error::TimedOut {
                    what,
                    after: timeout,
                });
            }
            g = wait_until(&self.0.cv, g, Some(deadline));
        }
    }

    /// Sends a request to `peer` and waits for its reply (a reply counts
    /// only from that peer). `None`: the config's `request_timeout`.
    ///
    /// # Errors
    /// [`Error::TimedOut`]`{ what: Wait::Request, .. }`, [`Error::Closed`], ...
    #[doc(alias = "send_and_wait")]
    pub fn request(
        &self,
        peer: &Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        let now = Instant::now();
        let mut g = self.core();
        let id = g.hub.request(peer.id, now, t, payload, timeout)?;
        g.waiting.insert((peer.id, id), None);
        g.wake();
        match self.wait_outcome(
            g,
            (peer.id, id),
            Wait::Request,
            timeout,
            now + timeout + WAIT_MARGIN,
        )? {
            Reply::Frame(f) => Ok(f),
            _ => Err(Error::Closed(veltix_proto::CloseReason::Local)),
        }
    }

    /// PINGs `peer`: the round-trip time.
    ///
    /// # Errors
    /// [`Error::TimedOut`]`{ what: Wait::Ping, .. }`, [`Error::Closed`], ...
    #[doc(alias = "ping_client")]
    pub fn ping(&self, peer: &Peer, timeout: Option<Duration>) -> Result<Duration, Error> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        let now = Instant::now();
        let mut g = self.core();
        let id = g.hub.ping(peer.id, now, timeout)?;
        g.waiting.insert((peer.id, id), None);
        g.wake();
        match self.wait_outcome(
            g,
            (peer.id, id),
            Wait::Ping,
            timeout,
            now + timeout + WAIT_MARGIN,
        )? {
            Reply::Pong(rtt) => Ok(rtt),
            _ => Err(Error::Closed(veltix_proto::CloseReason::Local)),
        }
    }

    fn broadcast_target(
        &self,
        t: MessageType,
        payload: &[u8],
        target: Target<'_>,
    ) -> Result<usize, Error> {
        let mut g = self.core();
        let b = g.hub.broadcast(t, payload, target)?;
        if b.sent > 0 {
            g.wake();
        }
        Ok(b.sent)
    }

    /// Sends one frame (encoded once, one id) to every connected peer;
    /// returns how many it was queued for.
    ///
    /// # Errors
    /// [`Error::Send`] (reserved type, payload too large).
    pub fn broadcast(&self, t: MessageType, payload: &[u8]) -> Result<usize, Error> {
        self.broadcast_target(t, payload, Target::All)
    }

    /// [`broadcast`](Self::broadcast) to every connected peer but these.
    ///
    /// # Errors
    /// As [`broadcast`](Self::broadcast).
    pub fn broadcast_except(
        &self,
        t: MessageType,
        payload: &[u8],
        except: &[Peer],
    ) -> Result<usize, Error> {
        let ids: Vec<PeerId> = except.iter().map(|p| p.id).collect();
        self.broadcast_target(t, payload, Target::Except(&ids))
    }

    /// [`broadcast`](Self::broadcast) to these peers only (Veltix's
    /// `Sender.broadcast(clients)`).
    ///
    /// # Errors
    /// As [`broadcast`](Self::broadcast).
    pub fn broadcast_to(
        &self,
        t: MessageType,
        payload: &[u8],
        peers: &[Peer],
    ) -> Result<usize, Error> {
        let ids: Vec<PeerId> = peers.iter().map(|p| p.id).collect();
        self.broadcast_target(t, payload, Target::Only(&ids))
    }

    /// [`broadcast`](Self::broadcast) to the connected peers with this tag
    /// (equal to `value`, when given).
    ///
    /// # Errors
    /// As [`broadcast`](Self::broadcast).
    pub fn broadcast_tag(
        &self,
        t: MessageType,
        payload: &[u8],
        tag: &str,
        value: Option<&Value>,
    ) -> Result<usize, Error> {
        self.broadcast_target(t, payload, Target::Tag(tag, value))
    }

    /// Closes one peer gracefully (its queued output drains within the flush
    /// deadline). `false` if it is unknown or already closing.
    pub fn close_client(&self, peer: &Peer) -> bool {
        let mut g = self.core();
        let closed = g.hub.close(peer.id, Instant::now());
        if closed {
            g.wake();
        }
        closed
    }

    /// Stops accepting, closes every peer gracefully, waits at most `flush`
    /// for their output to drain, then cuts what is left; waits for the I/O
    /// thread and the pool. Messages not yet handed to a handler are
    /// dropped; `on_disconnect` still runs for every connected peer. Always
    /// ends (unless a callback never returns).
    #[doc(alias = "close_all")]
    pub fn shutdown(&self, flush: Duration) {
        let (io, pool) = {
            let mut ctl = lock(&self.0.control);
            {
                let mut g = self.core();
                if g.phase == Phase::Running {
                    let now = Instant::now();
                    g.phase = Phase::Stopping {
                        until: now
                            .checked_add(flush)
                            .unwrap_or(now + Duration::from_secs(86_400)),
                    };
                    let n = g.hub.close_all(now);
                    tracing::info!(peers = n, "server shutting down");
                    g.wake();
                }
            }
            (ctl.io.take(), ctl.pool.take())
        };
        match io {
            Some(h) => {
                let _ = h.join();
            }
            None => self.wait_closed(),
        }
        if let Some(p) = pool {
            p.shutdown();
        }
    }

    /// Blocks until the server has been shut down (returns at once if it
    /// never started).
    pub fn wait_closed(&self) {
        let mut g = self.core();
        while matches!(g.phase, Phase::Running | Phase::Stopping { .. }) {
            g = wait_until(&self.0.cv, g, None);
        }
    }

    /// Whether the next connection would be refused (`server_full`).
    pub fn is_full(&self) -> bool {
        self.core().hub.is_full()
    }

    /// The hub's counters (accepted, rejected, budget cuts).
    pub fn stats(&self) -> HubStats {
        self.core().hub.stats()
    }

    fn handler(&self, t: MessageType) -> Option<Arc<MessageFn>> {
        self.0
            .callbacks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .router
            .handler(t)
            .cloned()
    }
}

fn bind(config: &ServerConfig) -> Result<TcpListener, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let name = format!("{}:{}", config.host, config.port);
    let addrs: Vec<SocketAddr> = (config.host.as_str(), config.port)
        .to_socket_addrs()
        .map_err(|_| Error::Resolve(name.clone()))?
        .collect();
    let mut last = None;
    for addr in addrs {
        let r = (|| -> std::io::Result<TcpListener> {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            #[cfg(unix)]
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(4096)?;
            s.set_nonblocking(true)?;
            Ok(TcpListener::from_std(s.into()))
        })();
        match r {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or(Error::Resolve(name), Error::Io))
}

// ------------------------------------------------------------------ I/O loop

struct Sock {
    stream: TcpStream,
    peer: PeerId,
    /// Taken from the core, not yet written.
    pending: VecDeque<Bytes>,
    /// Readable and not read to `WouldBlock` yet.
    readable: bool,
    interest: Option<Interest>,
}

/// The handler side of one connected peer.
struct Dispatch {
    peer: Peer,
    mailbox: Arc<Mailbox>,
    /// Items taken from the core and not yet in the mailbox (it was full).
    /// Bounded: the peer's socket is not read while this is non-empty, so
    /// it holds at most the core's queued events of the peer
    /// (`max_event_bytes`) and what one read decoded.
    held: VecDeque<Item>,
    /// `on_disconnect` was queued: forget this once `held` is empty.
    closed: bool,
}

impl Dispatch {
    fn can_take(&self) -> bool {
        self.held.is_empty() && self.mailbox.has_room()
    }
}

struct HubOut<'a> {
    core: &'a Mutex<Core>,
    peer: PeerId,
    now: Instant,
}

impl Output for HubOut<'_> {
    fn exchange(&mut self, written: usize, pending: &mut VecDeque<Bytes>) {
        let mut g = lock(self.core);
        if written > 0 {
            g.hub.handle_written(self.peer, self.now, written);
        }
        while let Some(b) = g.hub.poll_transmit(self.peer) {
            if !b.is_empty() {
                pending.push_back(b);
            }
        }
    }
}

struct IoLoop {
    shared: Arc<Shared>,
    poll: Poll,
    waker: Arc<Waker>,
    listener: Option<TcpListener>,
    listener_registered: bool,
    accept_ready: bool,
    paused_until: Option<Instant>,
    last_accept_log: Option<Instant>,
    socks: HashMap<Token, Sock>,
    by_peer: HashMap<PeerId, Token>,
    next_token: usize,
    dispatch: HashMap<PeerId, Dispatch>,
    pool: Arc<Pool>,
    mailbox_cap: usize,
    buf: Vec<u8>,
    /// Sockets to read this pass (events, and leftovers of earlier passes).
    to_read: HashSet<Token>,
    /// Sockets whose interest may have to change.
    dirty: HashSet<Token>,
    /// Sockets not read because their peer's mailbox is full: looked at
    /// again every pass, so reading resumes when it drains.
    blocked: HashSet<Token>,
    /// Peers with items in `held`.
    staged: HashSet<PeerId>,
}

impl IoLoop {
    fn new(
        shared: Arc<Shared>,
        poll: Poll,
        waker: Arc<Waker>,
        listener: TcpListener,
        pool: Arc<Pool>,
    ) -> IoLoop {
        let buf = vec![0; shared.config.buffer_size.max(io::READ_CHUNK)];
        let mailbox_cap = MAILBOX_BYTES;
        IoLoop {
            shared,
            poll,
            waker,
            listener: Some(listener),
            listener_registered: false,
            accept_ready: true,
            paused_until: None,
            last_accept_log: None,
            socks: HashMap::new(),
            by_peer: HashMap::new(),
            next_token: FIRST_CONN,
            dispatch: HashMap::new(),
            pool,
            mailbox_cap,
            buf,
            to_read: HashSet::new(),
            dirty: HashSet::new(),
            blocked: HashSet::new(),
            staged: HashSet::new(),
        }
    }

    fn run(&mut self) {
        if let Some(l) = self.listener.as_mut() {
            match self
                .poll
                .registry()
                .register(l, LISTENER, Interest::READABLE)
            {
                Ok(()) => self.listener_registered = true,
                Err(e) => tracing::error!(error = %e, "cannot register the listener"),
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut timeout = Some(Duration::ZERO);
        loop {
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept_ready = true,
                    t => {
                        if let Some(s) = self.socks.get_mut(&t) {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                s.readable = true;
                                self.to_read.insert(t);
                            }
                            self.dirty.insert(t);
                        }
                    }
                }
            }
            match self.pass(Instant::now()) {
                Some(t) => timeout = t,
                None => break,
            }
        }
    }

    /// One round of work; the next poll timeout (`Some(None)`: no
    /// deadline), or `None` to exit.
    fn pass(&mut self, now: Instant) -> Option<Option<Duration>> {
        let shared = self.shared.clone();
        let mut g = lock(&shared.core);
        g.wake_pending = false;
        if let Phase::Stopping { until } = g.phase {
            if let Some(mut l) = self.listener.take() {
                if self.listener_registered {
                    let _ = self.poll.registry().deregister(&mut l);
                }
            }
            if self.socks.is_empty() || now >= until {
                self.teardown(&mut g, now);
                return None;
            }
        }
        let mut notify = false;

        // Accept.
        if let Some(until) = self.paused_until {
            if now >= until {
                self.paused_until = None;
                if let Some(l) = self.listener.as_mut() {
                    if self
                        .poll
                        .registry()
                        .register(l, LISTENER, Interest::READABLE)
                        .is_ok()
                    {
                        self.listener_registered = true;
                    }
                }
                self.accept_ready = true;
            }
        }
        if self.accept_ready && self.listener.is_some() && self.paused_until.is_none() {
            self.accept(&mut g, now);
        }

        // Read (the lock is released around each read).
        drop(g);
        let candidates: Vec<Token> = self.to_read.iter().copied().collect();
        for t in candidates {
            self.read(&shared, t, now);
        }
        let mut g = lock(&shared.core);

        // Timers.
        if g.hub.poll_timeout().is_some_and(|t| t <= now) {
            g.hub.handle_timeout(now);
            self.dirty.extend(self.socks.keys().copied());
        }

        // Events and completions.
        notify |= self.dispatch_events(&mut g);

        // Write.
        let mut to_write: Vec<Token> = Vec::new();
        while let Some(p) = g.hub.poll_transmit_ready() {
            if let Some(&t) = self.by_peer.get(&p) {
                to_write.push(t);
            }
        }
        for t in &self.dirty {
            if self.socks.get(t).is_some_and(|s| !s.pending.is_empty()) {
                to_write.push(*t);
            }
        }
        drop(g);
        for t in to_write {
            notify |= self.write(&shared, t, now);
        }
        let mut g = lock(&shared.core);
        // Writing can end connections (errors) and queue events.
        notify |= self.dispatch_events(&mut g);

        // Finished connections: drop their sockets at once.
        while let Some(p) = g.hub.poll_finished() {
            g.addrs.remove(&p);
            if let Some(t) = self.by_peer.remove(&p) {
                if let Some(mut s) = self.socks.remove(&t) {
                    if s.interest.is_some() {
                        let _ = self.poll.registry().deregister(&mut s.stream);
                    }
                }
                self.to_read.remove(&t);
                self.dirty.remove(&t);
                self.blocked.remove(&t);
            }
            notify = true;
        }

        // Interest.
        let dispatch = &self.dispatch;
        let socks = &self.socks;
        let dirty = &mut self.dirty;
        self.blocked.retain(|t| {
            let Some(s) = socks.get(t) else { return false };
            let free = dispatch.get(&s.peer).is_none_or(Dispatch::can_take);
            if free {
                dirty.insert(*t);
            }
            !free
        });
        let dirty: Vec<Token> = self.dirty.drain().collect();
        for t in dirty {
            let Some(s) = self.socks.get_mut(&t) else {
                continue;
            };
            let free = self.dispatch.get(&s.peer).is_none_or(Dispatch::can_take);
            if !free {
                self.blocked.insert(t);
            }
            let read = g.hub.wants_input(s.peer) && free;
            let want = io::interest(read, !s.pending.is_empty());
            io::set_interest(
                self.poll.registry(),
                &mut s.stream,
                t,
                &mut s.interest,
                want,
            );
        }

        if notify {
            shared.cv.notify_all();
        }

        // Next wake-up.
        let mut deadline = g.hub.poll_timeout();
        if let Some(p) = self.paused_until {
            deadline = Some(deadline.map_or(p, |d| d.min(p)));
        }
        if let Phase::Stopping { until } = g.phase {
            deadline = Some(deadline.map_or(until, |d| d.min(until)));
        }
        let stopping_done = matches!(g.phase, Phase::Stopping { .. }) && self.socks.is_empty();
        let busy = stopping_done
            || (self.accept_ready && self.listener.is_some() && self.paused_until.is_none())
            || self.to_read.iter().any(|t| {
                self.socks.get(t).is_some_and(|s| {
                    g.hub.wants_input(s.peer)
                        && self.dispatch.get(&s.peer).is_none_or(Dispatch::can_take)
                })
            });
        drop(g);
        if busy {
            return Some(Some(Duration::ZERO));
        }
        Some(deadline.map(|d| d.saturating_duration_since(Instant::now())))
    }

    fn accept(&mut self, g: &mut Core, now: Instant) {
        let Some(listener) = self.listener.as_mut() else {
            return;
        };
        for _ in 0..ACCEPTS_PER_PASS {
            match listener.accept() {
                Ok((mut stream, addr)) => match g.hub.accept(now) {
                    Ok(peer) => {
                        let _ = stream.set_nodelay(true);
                        let t = Token(self.next_token);
                        self.next_token = self.next_token.wrapping_add(1).max(FIRST_CONN);
                        g.addrs.insert(peer, addr);
                        self.by_peer.insert(peer, t);
                        self.socks.insert(
                            t,
                            Sock {
                                stream,
                                peer,
                                pending: VecDeque::new(),
                                readable: false,
                                interest: None,
                            },
                        );
                        self.dirty.insert(t);
                        tracing::debug!(%peer, %addr, "accepted");
                    }
                    Err(rejection) => {
                        // Best effort, non-blocking: the socket is fresh, the
                        // rejection small. Then close.
                        let _ = stream.write(&rejection.bytes);
                        tracing::debug!(%addr, reason = %rejection.reason, "rejected");
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.accept_ready = false;
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    // EMFILE/ENFILE and the like: rest the listener instead of
                    // spinning on it, log at most once a second.
                    if self
                        .last_accept_log
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        self.last_accept_log = Some(now);
                        #[cfg(unix)]
                        let fd_limit = matches!(e.raw_os_error(), Some(23 | 24));
                        #[cfg(not(unix))]
                        let fd_limit = false;
                        tracing::warn!(error = %e, fd_limit, pause = ?ACCEPT_PAUSE, "accept failed; pausing the listener");
                    }
                    if self.listener_registered {
                        let _ = self.poll.registry().deregister(listener);
                        self.listener_registered = false;
                    }
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    self.accept_ready = false;
                    return;
                }
            }
        }
        // More may be waiting: `accept_ready` stays set.
    }

    fn read(&mut self, shared: &Shared, t: Token, now: Instant) {
        let Some(s) = self.socks.get_mut(&t) else {
            self.to_read.remove(&t);
            return;
        };
        let peer = s.peer;
        let mut g = lock(&shared.core);
        for _ in 0..io::READS_PER_PASS {
            if !g.hub.wants_input(peer) || !self.dispatch.get(&peer).is_none_or(Dispatch::can_take)
            {
                // Stays in `to_read` while readable: resumed when allowed.
                self.dirty.insert(t);
                return;
            }
            drop(g);
            let r = io::read1(&mut s.stream, &mut self.buf);
            g = lock(&shared.core);
            match r {
                Read1::Data(n) => g.hub.handle_input(peer, now, &self.buf[..n]),
                Read1::Eof => {
                    g.hub.handle_eof(peer, now);
                    break;
                }
                Read1::Blocked => {
                    s.readable = false;
                    self.to_read.remove(&t);
                    self.dirty.insert(t);
                    return;
                }
                Read1::Failed(e) => {
                    g.hub.handle_transport_error(peer, now, &e);
                    break;
                }
            }
        }
        self.dirty.insert(t);
        if !g.hub.is_open(peer) {
            s.readable = false;
            self.to_read.remove(&t);
        }
    }

    /// Writes what the core has for the socket; `true` if bytes went out.
    fn write(&mut self, shared: &Shared, t: Token, now: Instant) -> bool {
        let Some(s) = self.socks.get_mut(&t) else {
            return false;
        };
        let mut out = HubOut {
            core: &shared.core,
            peer: s.peer,
            now,
        };
        let (r, n) = io::flush(&mut s.stream, &mut s.pending, &mut out);
        if let Flushed::Failed(e) = r {
            lock(&shared.core)
                .hub
                .handle_transport_error(s.peer, now, &e);
            s.pending.clear();
        }
        self.dirty.insert(t);
        n > 0
    }

    /// Takes completions and events from the core; `true` if a waiter got
    /// its outcome.
    fn dispatch_events(&mut self, g: &mut Core) -> bool {
        let mut notify = false;
        while let Some((peer, ev)) = g.hub.poll_completion() {
            notify |= complete(g, peer, ev);
        }
        let mut last = None;
        while let Some((peer, ev)) = g.hub.poll_event() {
            // Taking events can let the core want input again.
            if last != Some(peer) {
                last = Some(peer);
                if let Some(&t) = self.by_peer.get(&peer) {
                    self.dirty.insert(t);
                }
            }
            match ev {
                HubEvent::Connected(hello) => {
                    let Some(&addr) = g.addrs.get(&peer) else {
                        continue;
                    };
                    let handle = Peer {
                        id: peer,
                        addr,
                        hello: Some(Arc::new(hello)),
                        server: Arc::downgrade(&self.shared),
                    };
                    let waker = self.waker.clone();
                    let (shared, p) = (self.shared.clone(), handle.clone());
                    let mailbox = Mailbox::new(
                        self.mailbox_cap,
                        move |f: Frame| {
                            let server = Server(shared.clone());
                            match server.handler(f.message_type) {
                                Some(h) => h(&server, &p, f),
                                None => {
                                    tracing::debug!(message_type = %f.message_type, "no handler; message dropped")
                                }
                            }
                        },
                        move || {
                            let _ = waker.wake();
                        },
                    );
                    let shared = self.shared.clone();
                    let p = handle.clone();
                    self.dispatch.insert(
                        peer,
                        Dispatch {
                            peer: handle,
                            mailbox,
                            held: VecDeque::new(),
                            closed: false,
                        },
                    );
                    self.enqueue(
                        peer,
                        Item::Job(Box::new(move || {
                            let server = Server(shared);
                            let cb = server.callbacks_read().on_connect.clone();
                            if let Some(cb) = cb {
                                cb(&server, &p);
                            }
                        })),
                    );
                }
                HubEvent::Message(f) => self.enqueue(peer, Item::Message(f)),
                HubEvent::Disconnected(reason) => {
                    let Some(d) = self.dispatch.get_mut(&peer) else {
                        continue;
                    };
                    tracing::debug!(%peer, %reason, "peer disconnected");
                    d.closed = true;
                    let shared = self.shared.clone();
                    let p = d.peer.clone();
                    self.enqueue(
                        peer,
                        Item::Job(Box::new(move || {
                            let server = Server(shared);
                            let cb = server.callbacks_read().on_disconnect.clone();
                            if let Some(cb) = cb {
                                cb(&server, &p);
                            }
                        })),
                    );
                }
                ev @ HubEvent::Completed { .. } => notify |= complete(g, peer, ev),
                _ => {}
            }
        }
        // Staged items move to their mailboxes while there is room (one
        // lock per peer); finished peers go once everything is handed over.
        for peer in std::mem::take(&mut self.staged) {
            let Some(d) = self.dispatch.get_mut(&peer) else {
                continue;
            };
            if d.mailbox.post_while_room(&self.pool, &mut d.held) {
                if d.closed {
                    self.dispatch.remove(&peer);
                }
                if let Some(&t) = self.by_peer.get(&peer) {
                    self.dirty.insert(t);
                }
            } else {
                self.staged.insert(peer);
            }
        }
        notify
    }

    /// Queues an item for `peer`'s handlers (handed to its mailbox at the
    /// end of `dispatch_events`).
    fn enqueue(&mut self, peer: PeerId, item: Item) {
        let Some(d) = self.dispatch.get_mut(&peer) else {
            return;
        };
        d.held.push_back(item);
        self.staged.insert(peer);
    }

    /// The end of a shutdown: cut what is left, hand every last event to the
    /// pool, release the sockets.
    fn teardown(&mut self, g: &mut Core, now: Instant) {
        let cut = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        for s in self.socks.values() {
            g.hub.handle_transport_error(s.peer, now, &cut);
        }
        self.dispatch_events(g);
        while g.hub.poll_finished().is_some() {}
        for (_, mut s) in self.socks.drain() {
            if s.interest.is_some() {
                let _ = self.poll.registry().deregister(&mut s.stream);
            }
        }
        self.by_peer.clear();
        g.addrs.clear();
        let mut dropped = 0;
        for (_, d) in self.dispatch.drain() {
            dropped += d.mailbox.discard_messages();
            for item in d.held {
                match item {
                    Item::Job(_) => d.mailbox.post(&self.pool, item),
                    Item::Message(_) => dropped += 1,
                }
            }
        }
        if dropped > 0 {
            tracing::debug!(dropped, "shutdown: messages not yet handled were dropped");
        }
        g.phase = Phase::Stopped;
        g.local_addr = None;
        g.waker = None;
        self.shared.cv.notify_all();
        tracing::info!("server stopped");
    }
}

impl Server {
    fn callbacks_read(&self) -> std::sync::RwLockReadGuard<'_, Callbacks> {
        self.0.callbacks.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hands a request's outcome to its waiter; `true` if one was waiting.
fn complete(g: &mut Core, peer: PeerId, ev: HubEvent) -> bool {
    if let HubEvent::Completed {
        request_id,
        outcome,
    } = ev
    {
        if let Some(slot) = g.waiting.get_mut(&(peer, request_id)) {
            *slot = Some(outcome);
            return true;
        }
    }
    false
}
