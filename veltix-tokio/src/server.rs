//! The async [`Server`]: an accept task, one I/O task per connection, and the
//! core [`Hub`] (every connection, admission, tags, broadcast targeting and
//! timers) behind one mutex.

use std::collections::HashMap;
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use veltix_proto::{
    CloseReason, Error, Frame, Hub, HubStats, MessageType, PeerHello, PeerId, Reply,
    RequestFailure, SendError, ServerConfig, Target, Wait,
};

use crate::dispatch::{BoxFut, Mailbox, RecvQueue};
use crate::io::Io;
use crate::{lock, now};
use veltix_tls::{ServerTls, TlsInfo};

mod conn;
mod peer;
use self::conn::{accept_loop, bind};
pub use self::peer::{ClientInfo, Peer};

type PeerHandler = Arc<dyn Fn(Server, Peer) -> BoxFut + Send + Sync>;
type MsgHandler = Arc<dyn Fn(Server, Peer, Frame) -> BoxFut + Send + Sync>;
type Outcome = Result<Reply, RequestFailure>;

/// Listen backlog.
const BACKLOG: u32 = 4096;
/// How long handlers may still run after `shutdown`'s deadline.
const HANDLER_SLACK: Duration = Duration::from_millis(50);

/// Where a [`Server`] gets its connections from ([`Server::start_on`]):
/// a TCP listener, or any other source of byte streams (a Unix socket, a
/// simulated network).
pub trait Listener: Send + 'static {
    /// The connections' stream type.
    type Stream: Io;
    /// The next connection and its peer's address. Errors are logged and
    /// accepting goes on (after a short pause when file descriptors ran out).
    fn accept(
        &mut self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, SocketAddr)>> + Send;
    /// The address listened on.
    ///
    /// # Errors
    /// As the listener reports.
    fn local_addr(&self) -> std::io::Result<SocketAddr>;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<(Self::Stream, SocketAddr)> {
        let (s, addr) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok((s, addr))
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

/// The address of Unix sockets, which have none: `0.0.0.0:0` (the
/// unspecified IPv4 address, port 0), as veltix-std reports it.
#[cfg(unix)]
const UNIX_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// A Unix socket listener. Unix sockets have no IP address: the listener
/// and every peer report `0.0.0.0:0` as theirs.
#[cfg(unix)]
impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<(Self::Stream, SocketAddr)> {
        let (s, _) = tokio::net::UnixListener::accept(self).await?;
        Ok((s, UNIX_ADDR))
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(UNIX_ADDR)
    }
}

/// What [`Server::recv`] returns: the events no handler consumed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A client finished its handshake (no `on_connect` handler).
    Connected(Peer),
    /// A message no route or `on_recv` handler took, and that answered no request.
    Message(Peer, Frame),
    /// A client that had connected went away (no `on_disconnect` handler).
    Disconnected(Peer, CloseReason),
}

enum Job {
    Peer(Peer, PeerHandler),
    Message(Peer, Frame, MsgHandler),
}

#[derive(Default)]
struct Handlers {
    on_connect: Option<PeerHandler>,
    on_disconnect: Option<PeerHandler>,
    on_recv: Option<MsgHandler>,
    routes: HashMap<MessageType, MsgHandler>,
}

/// Wake-ups of one connection task.
#[derive(Default)]
struct ConnCtl {
    /// Output queued, connection finished, or its handler queue drained.
    wake: Notify,
    /// Output was written (room for a waiting `send`), or the connection ended.
    room: Notify,
}

struct PeerInfo {
    addr: SocketAddr,
    /// What its TLS handshake negotiated (TLS servers, once it finished).
    tls: Option<Arc<TlsInfo>>,
    /// The client's hello, once connected (kept by every `Peer` handed out).
    hello: Option<Arc<PeerHello>>,
    /// Present while the connection task runs.
    ctl: Option<Arc<ConnCtl>>,
    /// The task stopped reading (the hub did not want input, or the
    /// handler queue was full): wake it once the hub wants input again.
    read_paused: bool,
    task: Option<JoinHandle<()>>,
}

#[derive(PartialEq, Eq)]
enum Phase {
    New,
    Running,
    Stopped,
}

struct State {
    hub: Hub,
    phase: Phase,
    rt: Option<Handle>,
    local_addr: Option<SocketAddr>,
    accept: Option<JoinHandle<()>>,
    peers: HashMap<PeerId, PeerInfo>,
    waiters: HashMap<(PeerId, u16), oneshot::Sender<Outcome>>,
    mailboxes: HashMap<PeerId, Mailbox<Job>>,
    recv: RecvQueue<ServerEvent>,
    handlers: Handlers,
}

struct Inner {
    config: ServerConfig,
    /// TLS-only when set.
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Mutex<State>,
    /// `max_workers`: handlers running at once, all peers together (FIFO,
    /// so flooding peers cannot starve the others).
    workers: tokio::sync::Semaphore,
    recv_ready: Notify,
    dispatch_idle: Notify,
    closed: Notify,
}

/// An async Veltix server. Cheap to clone (all clones are the same server).
///
/// Register handlers, then [`start`](Self::start); handlers run on their
/// own tasks, in order per peer. Events no handler takes go to
/// [`recv`](Self::recv).
///
/// ```no_run
/// # async fn demo() -> Result<(), veltix_tokio::Error> {
/// use veltix_tokio::{MessageType, Server, ServerConfig};
/// let server = Server::new(ServerConfig::new("0.0.0.0", 8080))?;
/// server.on_connect(|_server: Server, peer| async move { println!("{} joined", peer.addr()) });
/// server.on_recv(|server: Server, peer, msg| async move {
///     let _ = server.reply(&peer, &msg, msg.message_type, msg.payload.clone());
/// });
/// server.start().await?;
/// server.wait_closed().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server(Arc<Inner>);

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

/// Clears a pending request whose future was dropped before its outcome.
struct Pending<'a> {
    inner: &'a Inner,
    key: (PeerId, u16),
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut st = lock(&self.inner.state);
            st.waiters.remove(&self.key);
            st.hub.cancel_request(self.key.0, self.key.1);
        }
    }
}

impl Server {
    /// A server for `config` (validated; no I/O before [`start`](Self::start)).
    ///
    /// # Errors
    /// [`Error::Config`] for a setting out of range.
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
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use veltix_tokio::{Server, ServerConfig, ServerTls};
    ///
    /// let tls = ServerTls::builder().cert_pem_files("cert.pem", "key.pem")?.build()?;
    /// let server = Server::with_tls(ServerConfig::new("0.0.0.0", 8443), tls)?;
    /// server.start().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for a setting out of range.
    pub fn with_tls(config: ServerConfig, tls: ServerTls) -> Result<Server, Error> {
        Self::build(config, Some(tls))
    }

    fn build(config: ServerConfig, tls: Option<ServerTls>) -> Result<Server, Error> {
        config.validate()?;
        if config.auth.is_some() {
            config.seed_auth(crate::os_seed()?);
        }
        let hub = Hub::new(&config);
        Ok(Server(Arc::new(Inner {
            tls: tls.map(|t| tokio_rustls::TlsAcceptor::from(t.config().clone())),
            workers: tokio::sync::Semaphore::new(config.max_workers),
            config,
            state: Mutex::new(State {
                hub,
                phase: Phase::New,
                rt: None,
                local_addr: None,
                accept: None,
                peers: HashMap::new(),
                waiters: HashMap::new(),
                mailboxes: HashMap::new(),
                recv: RecvQueue::default(),
                handlers: Handlers::default(),
            }),
            recv_ready: Notify::new(),
            dispatch_idle: Notify::new(),
            closed: Notify::new(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.0.state)
    }

    fn check(&self, peer: &Peer) -> Result<(), Error> {
        if Weak::ptr_eq(&peer.server, &Arc::downgrade(&self.0)) {
            Ok(())
        } else {
            Err(Error::NotConnected)
        }
    }

    /// Runs `f` on each client that finishes its handshake (Veltix's
    /// `on_connect`); without it, [`recv`](Self::recv) gets `Connected`.
    pub fn on_connect<F, Fut>(&self, f: F)
    where
        F: Fn(Server, Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.state().handlers.on_connect = Some(Arc::new(move |s, p| Box::pin(f(s, p))));
    }

    /// Runs `f` when a client that had connected goes away, after its last
    /// message (Veltix's `on_disconnect`); without it, `recv` gets `Disconnected`.
    pub fn on_disconnect<F, Fut>(&self, f: F)
    where
        F: Fn(Server, Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.state().handlers.on_disconnect = Some(Arc::new(move |s, p| Box::pin(f(s, p))));
    }

    /// Runs `f` on every message no route takes (Veltix's `on_recv`);
    /// without it, `recv` gets them.
    pub fn on_recv<F, Fut>(&self, f: F)
    where
        F: Fn(Server, Peer, Frame) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.state().handlers.on_recv = Some(Arc::new(move |s, p, m| Box::pin(f(s, p, m))));
    }

    /// Runs `f` on every message of type `t` (Veltix's `route`).
    ///
    /// # Errors
    /// [`SendError::ReservedType`] below 200; [`Error::RouteExists`] if `t`
    /// has a route already (the first stays).
    pub fn route<F, Fut>(&self, t: MessageType, f: F) -> Result<(), Error>
    where
        F: Fn(Server, Peer, Frame) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if t.is_system() {
            return Err(Error::Send(SendError::ReservedType(t)));
        }
        let mut st = self.state();
        if st.handlers.routes.contains_key(&t) {
            return Err(Error::RouteExists(t));
        }
        st.handlers
            .routes
            .insert(t, Arc::new(move |s, p, m| Box::pin(f(s, p, m))));
        Ok(())
    }

    /// Binds and listens (backlog 4096), then accepts and serves clients.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`], [`Error::ShutDown`] after a shutdown,
    /// [`Error::Resolve`] or [`Error::Io`] when binding fails.
    pub async fn start(&self) -> Result<(), Error> {
        self.check_new()?;
        let listener = bind(&self.0.config).await?;
        self.start_on(listener)
    }

    fn check_new(&self) -> Result<(), Error> {
        match self.state().phase {
            Phase::New => Ok(()),
            Phase::Running => Err(Error::AlreadyRunning),
            Phase::Stopped => Err(Error::ShutDown),
        }
    }

    /// Serves the clients `listener` accepts instead of binding the
    /// config's `host:port` (a Unix socket, an in-memory or simulated
    /// network: any [`Listener`]). TLS, when configured, runs over its
    /// streams. Call from within a tokio runtime.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`], [`Error::ShutDown`] after a shutdown,
    /// [`Error::Io`] when the listener has no address.
    pub fn start_on<L: Listener>(&self, listener: L) -> Result<(), Error> {
        self.check_new()?;
        let addr = listener.local_addr()?;
        let mut st = self.state();
        if st.phase != Phase::New {
            return Err(Error::AlreadyRunning);
        }
        st.phase = Phase::Running;
        st.hub
            .set_max_connections(fitted_max_connection(&self.0.config));
        st.local_addr = Some(addr);
        st.rt = Some(Handle::current());
        st.accept = Some(tokio::spawn(accept_loop(self.0.clone(), listener)));
        tracing::info!(%addr, "server listening");
        Ok(())
    }

    /// Whether this server is TLS-only ([`with_tls`](Self::with_tls)).
    pub fn is_tls(&self) -> bool {
        self.0.tls.is_some()
    }

    /// The address listened on, while running.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.state().local_addr
    }

    /// The connected clients.
    pub fn clients(&self) -> Vec<Peer> {
        let st = self.state();
        st.hub.peers().map(|id| st.peer(&self.0, id)).collect()
    }

    /// The connected clients with `tag` (equal to `value`, when given).
    #[doc(alias = "get_clients_by_tag")]
    pub fn clients_by_tag(&self, tag: &str, value: Option<&Value>) -> Vec<Peer> {
        let st = self.state();
        st.hub
            .peers_by_tag(tag, value)
            .into_iter()
            .map(|id| st.peer(&self.0, id))
            .collect()
    }

    /// Sends a message, waiting while the peer's outbound queue is full,
    /// up to `timeout` (`None`: the config's `request_timeout`).
    ///
    /// # Errors
    /// [`Error::TimedOut`] (`Wait::Send`) when no room came in time, else as
    /// [`try_send`](Self::try_send).
    pub async fn send(
        &self,
        peer: &Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<u16, Error> {
        let after = timeout.unwrap_or(self.0.config.request_timeout);
        let deadline = tokio::time::Instant::now() + after;
        let payload = payload.into();
        loop {
            self.check(peer)?;
            let ctl = {
                let st = self.state();
                st.peers.get(&peer.id).and_then(|i| i.ctl.clone())
            };
            let ctl = ctl.ok_or(Error::NotConnected)?;
            let room = ctl.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(peer, t, payload.clone()) {
                Err(Error::Send(SendError::QueueFull { .. })) => {}
                r => return r,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(Error::TimedOut {
                    what: Wait::Send,
                    after,
                });
            }
        }
    }

    /// Queues a message without waiting; returns its request id.
    ///
    /// # Errors
    /// [`Error::Send`] (`QueueFull`, `ReservedType`, ...), [`Error::NotConnected`],
    /// [`Error::Closed`].
    pub fn try_send(
        &self,
        peer: &Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, Error> {
        self.check(peer)?;
        let mut st = self.state();
        let id = st.hub.send(peer.id, t, payload)?;
        st.pump(&self.0, None, false);
        Ok(id)
    }

    /// Answers `request` (same id) without waiting.
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
        self.check(peer)?;
        let mut st = self.state();
        st.hub.reply(peer.id, request.request_id, t, payload)?;
        st.pump(&self.0, None, false);
        Ok(())
    }

    async fn outcome(
        &self,
        peer: &Peer,
        start: impl FnOnce(&mut Hub) -> Result<u16, SendError>,
    ) -> Result<Outcome, Error> {
        self.check(peer)?;
        let (key, rx) = {
            let mut st = self.state();
            let rid = start(&mut st.hub)?;
            let (tx, rx) = oneshot::channel();
            st.waiters.insert((peer.id, rid), tx);
            st.pump(&self.0, None, false);
            ((peer.id, rid), rx)
        };
        let mut pending = Pending {
            inner: &self.0,
            key,
            done: false,
        };
        let r = rx.await;
        pending.done = true;
        r.map_err(|_| Error::ShutDown)
    }

    /// Sends a request and waits for the peer's reply (same id), up to
    /// `timeout` (`None`: `request_timeout`). Only this peer's reply counts.
    /// Dropping the future forgets the request.
    ///
    /// # Errors
    /// [`Error::TimedOut`] (`Wait::Request`), [`Error::Closed`], or as `try_send`.
    #[doc(alias = "send_and_wait")]
    pub async fn request(
        &self,
        peer: &Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        let after = timeout.unwrap_or(self.0.config.request_timeout);
        let payload = payload.into();
        match self
            .outcome(peer, |h| h.request(peer.id, now(), t, payload, after))
            .await?
        {
            Ok(Reply::Frame(f)) => Ok(f),
            Ok(_) => Err(Error::NotConnected),
            Err(f) => Err(Error::from_request_failure(f, Wait::Request, after)),
        }
    }

    /// PINGs one client; returns the round-trip time.
    ///
    /// # Errors
    /// [`Error::TimedOut`] (`Wait::Ping`), [`Error::Closed`], or as `try_send`.
    #[doc(alias = "ping_client")]
    pub async fn ping(&self, peer: &Peer, timeout: Option<Duration>) -> Result<Duration, Error> {
        let after = timeout.unwrap_or(self.0.config.request_timeout);
        match self
            .outcome(peer, |h| h.ping(peer.id, now(), after))
            .await?
        {
            Ok(Reply::Pong(rtt)) => Ok(rtt),
            Ok(_) => Err(Error::NotConnected),
            Err(f) => Err(Error::from_request_failure(f, Wait::Ping, after)),
        }
    }

    fn broadcast_target(
        &self,
        t: MessageType,
        payload: &[u8],
        target: Target<'_>,
    ) -> Result<usize, Error> {
        let mut st = self.state();
        let b = st.hub.broadcast(t, payload, target)?;
        st.pump(&self.0, None, false);
        Ok(b.sent)
    }

    fn ids(&self, peers: &[Peer]) -> Vec<PeerId> {
        let me = Arc::downgrade(&self.0);
        peers
            .iter()
            .filter(|p| Weak::ptr_eq(&p.server, &me))
            .map(|p| p.id)
            .collect()
    }

    /// Sends one frame (one id, encoded once) to every connected client;
    /// returns how many it was queued for.
    ///
    /// # Errors
    /// [`SendError::ReservedType`] below 200, [`SendError::PayloadTooLarge`].
    pub fn broadcast(&self, t: MessageType, payload: &[u8]) -> Result<usize, Error> {
        self.broadcast_target(t, payload, Target::All)
    }

    /// As [`broadcast`](Self::broadcast), skipping `except`.
    ///
    /// # Errors
    /// As `broadcast`.
    pub fn broadcast_except(
        &self,
        t: MessageType,
        payload: &[u8],
        except: &[Peer],
    ) -> Result<usize, Error> {
        let ids = self.ids(except);
        self.broadcast_target(t, payload, Target::Except(&ids))
    }

    /// As [`broadcast`](Self::broadcast), to these clients only (Veltix's
    /// `Sender.broadcast(clients)`).
    ///
    /// # Errors
    /// As `broadcast`.
    pub fn broadcast_to(
        &self,
        t: MessageType,
        payload: &[u8],
        peers: &[Peer],
    ) -> Result<usize, Error> {
        let ids = self.ids(peers);
        self.broadcast_target(t, payload, Target::Only(&ids))
    }

    /// As [`broadcast`](Self::broadcast), to the clients with `tag` (equal
    /// to `value`, when given).
    ///
    /// # Errors
    /// As `broadcast`.
    pub fn broadcast_tag(
        &self,
        t: MessageType,
        payload: &[u8],
        tag: &str,
        value: Option<&Value>,
    ) -> Result<usize, Error> {
        self.broadcast_target(t, payload, Target::Tag(tag, value))
    }

    /// Closes one client gracefully (queued output drains within the flush
    /// deadline). `false` if it was gone or closing.
    pub fn close_client(&self, peer: &Peer) -> bool {
        if self.check(peer).is_err() {
            return false;
        }
        let mut st = self.state();
        let closed = st.hub.close(peer.id, now());
        st.pump(&self.0, None, false);
        closed
    }

    /// Stops accepting, closes every client gracefully, waits at most
    /// `flush` for their output to drain and their tasks to end, then cuts
    /// the rest. Handlers get a few more milliseconds; `recv` returns `None`
    /// once drained. Always ends.
    #[doc(alias = "close_all")]
    pub async fn shutdown(&self, flush: Duration) {
        let deadline = tokio::time::Instant::now() + flush;
        let was = std::mem::replace(&mut self.state().phase, Phase::Stopped);
        match was {
            Phase::Running => {}
            Phase::New => {
                self.state().recv.closed = true;
                self.0.recv_ready.notify_waiters();
                self.0.closed.notify_waiters();
                return;
            }
            Phase::Stopped => {
                self.wait_closed().await;
                return;
            }
        }
        let (accept, tasks) = {
            let mut st = self.state();
            st.local_addr = None;
            let closed = st.hub.close_all(now());
            tracing::info!(closed, "server shutting down");
            for info in st.peers.values() {
                if let Some(ctl) = &info.ctl {
                    ctl.wake.notify_one();
                }
            }
            st.pump(&self.0, None, false);
            let tasks: Vec<(PeerId, JoinHandle<()>)> = st
                .peers
                .iter_mut()
                .filter_map(|(id, i)| i.task.take().map(|t| (*id, t)))
                .collect();
            (st.accept.take(), tasks)
        };
        if let Some(a) = accept {
            a.abort();
            let _ = a.await;
        }
        let mut cut = Vec::new();
        for (id, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
                cut.push(id);
            }
        }
        {
            let mut st = self.state();
            if !cut.is_empty() {
                tracing::warn!(connections = cut.len(), "shutdown deadline passed: cutting");
            }
            let aborted = std::io::Error::from(ErrorKind::ConnectionAborted);
            for id in cut {
                st.hub.handle_transport_error(id, now(), &aborted);
                if let Some(i) = st.peers.get_mut(&id) {
                    i.ctl = None;
                }
            }
            st.pump(&self.0, None, true);
            let st = &mut *st;
            st.peers.retain(|id, _| st.hub.tags(*id).is_some());
        }
        let handlers_deadline = deadline + HANDLER_SLACK;
        loop {
            let idle = self.0.dispatch_idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if !self.state().mailboxes.values().any(|m| m.running) {
                break;
            }
            if tokio::time::timeout_at(handlers_deadline, idle)
                .await
                .is_err()
            {
                tracing::warn!("shutdown: handlers still running");
                break;
            }
        }
        self.state().recv.closed = true;
        self.0.recv_ready.notify_waiters();
        self.0.closed.notify_waiters();
    }

    /// Waits until the server has been shut down.
    pub async fn wait_closed(&self) {
        loop {
            let closed = self.0.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.state().recv.closed {
                return;
            }
            closed.await;
        }
    }

    /// The next event no handler consumed; `None` after shutdown once drained.
    pub async fn recv(&self) -> Option<ServerEvent> {
        loop {
            let ready = self.0.recv_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut st = self.state();
                if let Some((e, resumed)) = st.recv.pop() {
                    if resumed {
                        st.pump(&self.0, None, false);
                    }
                    return Some(e);
                }
                if st.recv.closed {
                    return None;
                }
            }
            ready.await;
        }
    }

    /// Whether the next connection would be refused (`max_connection`).
    pub fn is_full(&self) -> bool {
        self.state().hub.is_full()
    }

    /// Counters (accepted, rejected, budget cuts).
    pub fn stats(&self) -> HubStats {
        self.state().hub.stats()
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.0.config
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
