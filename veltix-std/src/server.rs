//! The blocking [`Server`]: the core's [`Hub`] behind one mutex, one mio
//! I/O thread (listener, every connection, a waker), callbacks on the pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Poll, Token, Waker};
use serde_json::Value;
use veltix_proto::{
    Error, Frame, Hub, HubStats, MessageType, PeerId, Reply, Router, SendError, ServerConfig,
    Target, Wait,
};
use veltix_tls::{ServerTls, TlsInfo};

use crate::pool::{lock, wait_until, Pool};

mod io_loop;
mod listener;
mod peer;
use self::io_loop::IoLoop;
pub use self::listener::Listener;
use self::listener::{bind, AnyListener};
pub use self::peer::{ClientInfo, Peer};

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
    /// What each TLS peer's handshake negotiated (TLS servers only).
    tls: HashMap<PeerId, Arc<TlsInfo>>,
    /// Requests and pings with a blocked caller: their outcome, once known.
    waiting: crate::pool::Waiting<(PeerId, u16)>,
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
    /// TLS-only when set.
    tls: Option<ServerTls>,
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
/// up to `max_workers` threads (started on demand), serially per peer and in arrival order.
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
        Self::build(config, None)
    }

    /// A TLS-only server: every connection starts with a TLS handshake
    /// (inside the handshake deadline, `handshake_timeout`); a peer that
    /// does not speak TLS is cut. With a client CA in `tls` (mutual TLS),
    /// the verified client identity is on each [`Peer`]
    /// ([`Peer::tls_identity`]).
    ///
    /// ```no_run
    /// use veltix_std::{Server, ServerConfig, ServerTls};
    ///
    /// let tls = ServerTls::builder().cert_pem_files("cert.pem", "key.pem")?.build()?;
    /// let server = Server::with_tls(ServerConfig::new("0.0.0.0", 8443), tls)?;
    /// server.start()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid setting.
    pub fn with_tls(config: ServerConfig, tls: ServerTls) -> Result<Server, Error> {
        Self::build(config, Some(tls))
    }

    fn build(config: ServerConfig, tls: Option<ServerTls>) -> Result<Server, Error> {
        config.validate()?;
        if config.auth.is_some() {
            config.seed_auth(crate::os_seed()?);
        }
        let hub = Hub::new(&config);
        Ok(Server(Arc::new(Shared {
            config,
            tls,
            core: Mutex::new(Core {
                hub,
                addrs: HashMap::new(),
                tls: HashMap::new(),
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

    /// Whether this server is TLS-only ([`with_tls`](Self::with_tls)).
    pub fn is_tls(&self) -> bool {
        self.0.tls.is_some()
    }

    /// Binds, listens (backlog 4096) and starts the I/O thread and the pool.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`], [`Error::Resolve`], [`Error::Io`] (bind,
    /// or a thread that cannot be spawned).
    pub fn start(&self) -> Result<(), Error> {
        let mut ctl = self.stopped()?;
        let listener = bind(&self.0.config)?;
        self.launch(&mut ctl, Box::new(listener))
    }

    /// Serves the clients `listener` accepts instead of binding the
    /// config's `host:port` (a Unix socket, an already connected stream
    /// handed over, any [`Listener`]). TLS, when configured, runs over its
    /// streams. [`local_addr`](Self::local_addr) is the listener's.
    ///
    /// ```
    /// # #[cfg(unix)] {
    /// use std::time::Duration;
    /// use veltix_std::{mio, Client, ClientConfig, Connector, Error, MessageType, Server, ServerConfig};
    ///
    /// const ECHO: MessageType = MessageType::new(200);
    /// let path = std::env::temp_dir().join(format!("veltix-doc-{}.sock", std::process::id()));
    /// let _ = std::fs::remove_file(&path);
    ///
    /// // `start_on` does not bind: the config's host and port are not used.
    /// let server = Server::new(ServerConfig::new("localhost", 0))?;
    /// server.route(ECHO, |server, peer, msg| {
    ///     let _ = server.reply(peer, &msg, ECHO, msg.payload.clone());
    /// })?;
    /// server.start_on(mio::net::UnixListener::bind(&path)?)?;
    ///
    /// // A client dials the socket's path instead of host:port.
    /// struct Unix(std::path::PathBuf);
    /// impl Connector for Unix {
    ///     type Stream = mio::net::UnixStream;
    ///     fn connect(&self, _host: &str, _port: u16) -> Result<(Self::Stream, std::net::SocketAddr), Error> {
    ///         let s = mio::net::UnixStream::connect(&self.0)?;
    ///         Ok((s, ([0, 0, 0, 0], 0).into()))
    ///     }
    /// }
    /// let client = Client::with_connector(ClientConfig::new("localhost", 0), Unix(path.clone()), None)?;
    /// client.connect()?;
    /// let reply = client.request(ECHO, "hello", Some(Duration::from_secs(5)))?;
    /// assert_eq!(reply.text()?, "hello");
    /// client.disconnect();
    /// server.shutdown(Duration::from_secs(1));
    /// std::fs::remove_file(&path)?;
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`], [`Error::Io`] when the listener has no
    /// address or a thread cannot be spawned.
    pub fn start_on<L: Listener>(&self, listener: L) -> Result<(), Error> {
        let mut ctl = self.stopped()?;
        self.launch(&mut ctl, Box::new(listener))
    }

    /// The control lock, once the server is not running (its last I/O
    /// thread joined).
    fn stopped(&self) -> Result<MutexGuard<'_, Control>, Error> {
        let mut ctl = lock(&self.0.control);
        if matches!(self.core().phase, Phase::Running | Phase::Stopping { .. }) {
            return Err(Error::AlreadyRunning);
        }
        if let Some(h) = ctl.io.take() {
            let _ = h.join();
        }
        Ok(ctl)
    }

    /// Starts the pool and the I/O thread over `listener`.
    fn launch(&self, ctl: &mut Control, listener: Box<dyn AnyListener>) -> Result<(), Error> {
        let local_addr = listener.listen_addr()?;
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
            g.hub
                .set_max_connections(fitted_max_connection(&self.0.config));
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

    /// The address listened on (the [`Listener`]'s), while running.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.core().local_addr
    }

    fn peer_of(&self, g: &Core, id: PeerId) -> Option<Peer> {
        g.addrs.get(&id).map(|&addr| Peer {
            id,
            addr,
            hello: g.hub.peer_hello(id).cloned().map(Arc::new),
            tls: g.tls.get(&id).cloned(),
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

    fn wait_outcome<'a>(
        &'a self,
        g: MutexGuard<'a, Core>,
        key: (PeerId, u16),
        what: Wait,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Reply, Error> {
        crate::pool::wait_outcome(
            &self.0.core,
            &self.0.cv,
            g,
            |c| &mut c.waiting,
            key,
            |c| {
                c.hub.cancel_request(key.0, key.1);
            },
            (what, timeout, deadline),
        )
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

/// `max_connection` fitted to the process's open-file limit (see
/// [`ServerConfig::max_connection_for_fds`]).
fn fitted_max_connection(config: &ServerConfig) -> Option<usize> {
    #[cfg(unix)]
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let fit = config.max_connection_for_fds(soft);
        if fit != config.max_connection {
            tracing::warn!(
                configured = ?config.max_connection,
                fd_limit = soft,
                max_connection = ?fit,
                "max_connection lowered to fit the open-file limit"
            );
        }
        return fit;
    }
    config.max_connection
}
