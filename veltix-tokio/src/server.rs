//! The async [`Server`]: an accept task, one I/O task per connection, and the
//! core [`Hub`] (every connection, admission, tags, broadcast targeting and
//! timers) behind one mutex.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use veltix_proto::{
    CloseReason, ConnectionStats, Error, Frame, Hub, HubEvent, HubStats, MessageType, PeerHello,
    PeerId, Reply, RequestFailure, SendError, ServerConfig, Tags, Target, Wait,
};

use crate::dispatch::{BoxFut, Catch, Mailbox, RecvQueue, EVENT_OVERHEAD};
use crate::io::{self, Read, ReadBuf, Timer, WRITE_TURN};
use crate::{lock, now};

type PeerHandler = Arc<dyn Fn(Server, Peer) -> BoxFut + Send + Sync>;
type MsgHandler = Arc<dyn Fn(Server, Peer, Frame) -> BoxFut + Send + Sync>;
type Outcome = Result<Reply, RequestFailure>;

/// Listen backlog.
const BACKLOG: u32 = 4096;
/// How long handlers may still run after `shutdown`'s deadline.
const HANDLER_SLACK: Duration = Duration::from_millis(50);

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

/// One client of a [`Server`]: its id, address, and the server's state for
/// it (tags, hello, counters). Cheap to clone; compares by connection.
#[derive(Clone)]
#[doc(alias = "ClientInfo")]
pub struct Peer {
    id: PeerId,
    addr: SocketAddr,
    hello: Option<Arc<PeerHello>>,
    server: Weak<Inner>,
}

/// Veltix's name for a [`Peer`].
pub type ClientInfo = Peer;

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
impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id.as_u64())
            .field("addr", &self.addr)
            .finish()
    }
}

impl Peer {
    fn with_hub<T>(&self, f: impl FnOnce(&mut Hub, PeerId) -> T) -> Option<T> {
        let inner = self.server.upgrade()?;
        let mut st = lock(&inner.state);
        Some(f(&mut st.hub, self.id))
    }
    fn with_tags<T>(&self, f: impl FnOnce(&mut Tags) -> T) -> Option<T> {
        self.with_hub(|h, id| h.tags_mut(id).map(f)).flatten()
    }

    /// A number unique to this connection within its server.
    pub fn id(&self) -> u64 {
        self.id.as_u64()
    }
    /// The client's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The client's IP address.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
    /// The client's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// Whether the client is connected (handshake done, not closed).
    pub fn handshake_done(&self) -> bool {
        self.with_hub(|h, id| h.is_connected(id)).unwrap_or(false)
    }
    /// The client's hello (kept after the client is gone).
    pub fn hello(&self) -> Option<PeerHello> {
        self.hello.as_deref().cloned()
    }
    /// Counters of the connection.
    pub fn stats(&self) -> Option<ConnectionStats> {
        self.with_hub(|h, id| h.peer_stats(id)).flatten()
    }
    /// Adds a tag; `false` (and no change) if it exists or the peer is gone.
    pub fn add_tag(&self, name: &str, value: Value) -> bool {
        self.with_tags(|t| t.add_tag(name, value)).unwrap_or(false)
    }
    /// Sets a tag (overwriting).
    pub fn set_tag(&self, name: &str, value: Value) {
        self.with_tags(|t| t.set_tag(name, value));
    }
    /// A tag's value.
    pub fn get_tag(&self, name: &str) -> Option<Value> {
        self.with_tags(|t| t.get_tag(name).cloned()).flatten()
    }
    /// Whether the tag exists.
    pub fn has_tag(&self, name: &str) -> bool {
        self.with_tags(|t| t.has_tag(name)).unwrap_or(false)
    }
    /// Whether every one of these tags exists.
    pub fn has_all_tags(&self, names: &[&str]) -> bool {
        self.with_tags(|t| t.has_all_tags(names.iter().copied()))
            .unwrap_or(false)
    }
    /// Whether any of these tags exists.
    pub fn has_any_tags(&self, names: &[&str]) -> bool {
        self.with_tags(|t| t.has_any_tags(names.iter().copied()))
            .unwrap_or(false)
    }
    /// Removes a tag; `false` if it did not exist.
    pub fn remove_tag(&self, name: &str) -> bool {
        self.with_tags(|t| t.remove_tag(name)).unwrap_or(false)
    }
    /// Removes every tag.
    pub fn clear_tags(&self) {
        self.with_tags(Tags::clear_tags);
    }
    /// A copy of the tags (empty once the peer is gone).
    pub fn tags(&self) -> Tags {
        self.with_tags(|t| t.clone()).unwrap_or_default()
    }
}

impl State {
    fn peer(&self, inner: &Arc<Inner>, id: PeerId) -> Peer {
        let info = self.peers.get(&id);
        Peer {
            id,
            addr: info.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |i| i.addr),
            hello: info.and_then(|i| i.hello.clone()),
            server: Arc::downgrade(inner),
        }
    }

    fn wake(&self, id: PeerId, me: Option<PeerId>) {
        if Some(id) != me {
            if let Some(ctl) = self.peers.get(&id).and_then(|i| i.ctl.as_ref()) {
                ctl.wake.notify_one();
            }
        }
    }

    fn push_job(&mut self, inner: &Arc<Inner>, id: PeerId, job: Job, cost: usize) {
        if self.mailboxes.entry(id).or_default().push(job, cost) {
            if let Some(rt) = &self.rt {
                rt.spawn(dispatch(inner.clone(), id));
            }
        }
    }

    fn push_recv(&mut self, inner: &Inner, e: ServerEvent, cost: usize) {
        self.recv.push(e, cost);
        inner.recv_ready.notify_one();
    }

    /// Takes what the hub has for the driver: request outcomes always,
    /// application events while the `recv` queue has room (or `force`),
    /// then wakes the connections with output or that finished (except `me`,
    /// the caller's own).
    fn pump(&mut self, inner: &Arc<Inner>, me: Option<PeerId>, force: bool) {
        while let Some((id, ev)) = self.hub.poll_completion() {
            self.route(inner, id, ev);
        }
        while force || !self.recv.is_over() {
            let Some((id, ev)) = self.hub.poll_event() else {
                break;
            };
            self.route(inner, id, ev);
            // Taking events lets the core decode again: resume reading.
            if let Some(info) = self.peers.get_mut(&id) {
                if info.read_paused && self.hub.wants_input(id) {
                    info.read_paused = false;
                    if let (Some(ctl), true) = (&info.ctl, Some(id) != me) {
                        ctl.wake.notify_one();
                    }
                }
            }
        }
        while let Some(id) = self.hub.poll_transmit_ready() {
            self.wake(id, me);
        }
        while let Some(id) = self.hub.poll_finished() {
            self.wake(id, me);
        }
    }

    fn route(&mut self, inner: &Arc<Inner>, id: PeerId, ev: HubEvent) {
        match ev {
            HubEvent::Completed {
                request_id,
                outcome,
            } => {
                if let Some(tx) = self.waiters.remove(&(id, request_id)) {
                    let _ = tx.send(outcome);
                }
            }
            HubEvent::Connected(hello) => {
                if let Some(info) = self.peers.get_mut(&id) {
                    info.hello = Some(Arc::new(hello));
                }
                let peer = self.peer(inner, id);
                match self.handlers.on_connect.clone() {
                    Some(h) => self.push_job(inner, id, Job::Peer(peer, h), EVENT_OVERHEAD),
                    None => self.push_recv(inner, ServerEvent::Connected(peer), EVENT_OVERHEAD),
                }
            }
            HubEvent::Message(f) => {
                let peer = self.peer(inner, id);
                let cost = EVENT_OVERHEAD + f.payload.len();
                let h = self.handlers.routes.get(&f.message_type);
                match h.or(self.handlers.on_recv.as_ref()).cloned() {
                    Some(h) => self.push_job(inner, id, Job::Message(peer, f, h), cost),
                    None => self.push_recv(inner, ServerEvent::Message(peer, f), cost),
                }
            }
            HubEvent::Disconnected(reason) => {
                let peer = self.peer(inner, id);
                match self.handlers.on_disconnect.clone() {
                    Some(h) => self.push_job(inner, id, Job::Peer(peer, h), EVENT_OVERHEAD),
                    None => self.push_recv(
                        inner,
                        ServerEvent::Disconnected(peer, reason),
                        EVENT_OVERHEAD,
                    ),
                }
                if let Some(mb) = self.mailboxes.get_mut(&id) {
                    mb.ended = true;
                    if !mb.running && mb.is_empty() {
                        self.mailboxes.remove(&id);
                    }
                }
                if self.peers.get(&id).is_some_and(|i| i.ctl.is_none()) {
                    self.peers.remove(&id);
                }
            }
            _ => {}
        }
    }
}

/// Runs the handler jobs of one peer in order, then exits.
async fn dispatch(inner: Arc<Inner>, id: PeerId) {
    let server = Server(inner.clone());
    let mut batch = VecDeque::new();
    let mut lingered = false;
    loop {
        if batch.is_empty() {
            let linger = {
                let mut st = lock(&inner.state);
                let Some(mb) = st.mailboxes.get_mut(&id) else {
                    break;
                };
                if mb.is_empty() && !mb.ended && !lingered {
                    // Wait one turn before exiting: a busy peer's next
                    // event is usually about to come, and a spawn costs more.
                    true
                } else {
                    let resumed = mb.pop_batch(&mut batch);
                    let ended = mb.ended;
                    if resumed {
                        // Under its cap again: the connection may read.
                        st.wake(id, None);
                    }
                    if batch.is_empty() {
                        if ended {
                            st.mailboxes.remove(&id);
                        }
                        break;
                    }
                    false
                }
            };
            if linger {
                lingered = true;
                tokio::task::yield_now().await;
                continue;
            }
            lingered = false;
        }
        let Some(job) = batch.pop_front() else {
            continue;
        };
        let fut = match job {
            Job::Peer(p, h) => h(server.clone(), p),
            Job::Message(p, f, h) => h(server.clone(), p, f),
        };
        // Closed only never: `acquire` cannot fail here.
        let permit = inner.workers.acquire().await;
        let failed = Catch(fut).await.is_err();
        drop(permit);
        if failed {
            tracing::error!(peer = %id, "a server handler panicked");
        }
    }
    inner.dispatch_idle.notify_waiters();
}

/// Accepts until aborted by `shutdown`. Running out of file descriptors
/// backs off and is logged at most once a second.
async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let mut last_log: Option<tokio::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => admit(&inner, stream, addr),
            Err(e) => {
                let exhausted =
                    matches!(e.raw_os_error(), Some(23 | 24)) || e.kind() == ErrorKind::OutOfMemory;
                let quiet = last_log.is_some_and(|t| t.elapsed() < Duration::from_secs(1));
                if !quiet {
                    tracing::warn!(error = %e, "accept failed");
                    last_log = Some(tokio::time::Instant::now());
                }
                if exhausted || !matches!(e.kind(), ErrorKind::ConnectionAborted) {
                    tokio::time::sleep(Duration::from_millis(75)).await;
                }
            }
        }
    }
}

fn admit(inner: &Arc<Inner>, stream: TcpStream, addr: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut st = lock(&inner.state);
    if st.phase != Phase::Running {
        return;
    }
    match st.hub.accept(now()) {
        Ok(id) => {
            tracing::debug!(peer = %id, %addr, "accepted");
            let ctl = Arc::new(ConnCtl::default());
            let task = tokio::spawn(conn_task(inner.clone(), id, ctl.clone(), stream));
            st.peers.insert(
                id,
                PeerInfo {
                    addr,
                    hello: None,
                    read_paused: false,
                    ctl: Some(ctl),
                    task: Some(task),
                },
            );
        }
        Err(rejection) => {
            drop(st);
            tokio::spawn(async move {
                let mut out = rejection.bytes;
                let written = tokio::time::timeout(Duration::from_secs(1), async {
                    while !out.is_empty() {
                        if stream.writable().await.is_err() || io::write(&stream, &mut out).is_err()
                        {
                            break;
                        }
                    }
                });
                let _ = written.await;
            });
        }
    }
}

/// One connection: writes what the hub gives, reads while the hub wants
/// input (and the peer's handler queue has room), fires the peer's
/// deadlines; drops the socket as soon as the hub is done with it.
async fn conn_task(inner: Arc<Inner>, id: PeerId, ctl: Arc<ConnCtl>, stream: TcpStream) {
    let mut out = Bytes::new();
    let mut buf = ReadBuf::default();
    let mut timer = Timer::new();
    loop {
        let (read, deadline) = {
            let mut st = lock(&inner.state);
            // Route what the last step produced (this peer's and others').
            st.pump(&inner, Some(id), false);
            if !st.hub.is_open(id) {
                break;
            }
            if out.is_empty() {
                out = st.hub.poll_transmit(id).unwrap_or_default();
            }
            let read =
                st.hub.wants_input(id) && !st.mailboxes.get(&id).is_some_and(Mailbox::is_over);
            if let Some(info) = st.peers.get_mut(&id) {
                info.read_paused = !read;
            }
            (read, st.hub.peer_timeout(id))
        };
        // Output: as much as the socket takes now, reported piece by piece.
        let mut turn = 0;
        let mut failed = false;
        while !out.is_empty() && turn < WRITE_TURN {
            match io::write(&stream, &mut out) {
                Ok(0) => break,
                Ok(n) => {
                    turn += n;
                    let mut st = lock(&inner.state);
                    st.hub.handle_written(id, now(), n);
                    if out.is_empty() {
                        out = st.hub.poll_transmit(id).unwrap_or_default();
                    }
                }
                Err(e) => {
                    lock(&inner.state).hub.handle_transport_error(id, now(), &e);
                    out = Bytes::new();
                    failed = true;
                }
            }
        }
        if turn > 0 {
            ctl.room.notify_waiters();
        }
        if failed || turn >= WRITE_TURN {
            tokio::task::yield_now().await;
            continue;
        }
        let writing = !out.is_empty();
        timer.set(deadline);
        tokio::select! {
            r = stream.readable(), if read => {
                let r = match r {
                    Ok(()) => buf.read(&stream),
                    Err(e) => Read::Failed(e),
                };
                {
                    let mut st = lock(&inner.state);
                    match r {
                        Read::Data => st.hub.handle_input(id, now(), buf.data()),
                        Read::Eof => st.hub.handle_eof(id, now()),
                        Read::Failed(e) => st.hub.handle_transport_error(id, now(), &e),
                        Read::WouldBlock => {}
                    }
                }
                // A socket that is always readable (a flood) must not keep
                // this worker: `readable()` does not count against tokio's
                // cooperative budget, so count each read here.
                tokio::task::consume_budget().await;
            }
            _ = stream.writable(), if writing => {}
            () = timer.fired(), if timer.is_armed() => {
                lock(&inner.state).hub.handle_peer_timeout(id, now());
            }
            () = ctl.wake.notified() => {}
        }
    }
    drop(stream);
    ctl.room.notify_waiters();
    let mut st = lock(&inner.state);
    st.pump(&inner, Some(id), false);
    let gone = st.hub.tags(id).is_none();
    if let Some(info) = st.peers.get_mut(&id) {
        info.ctl = None;
        info.task = None;
        if gone {
            st.peers.remove(&id);
        }
    }
}

async fn bind(config: &ServerConfig) -> Result<TcpListener, Error> {
    let name = format!("{}:{}", config.host, config.port);
    let addr = tokio::net::lookup_host((config.host.as_str(), config.port))
        .await
        .map_err(|_| Error::Resolve(name.clone()))?
        .next()
        .ok_or(Error::Resolve(name))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(BACKLOG)?)
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
        config.validate()?;
        let hub = Hub::new(&config);
        Ok(Server(Arc::new(Inner {
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
        match self.state().phase {
            Phase::New => {}
            Phase::Running => return Err(Error::AlreadyRunning),
            Phase::Stopped => return Err(Error::ShutDown),
        }
        let listener = bind(&self.0.config).await?;
        let addr = listener.local_addr()?;
        let mut st = self.state();
        if st.phase != Phase::New {
            return Err(Error::AlreadyRunning);
        }
        st.phase = Phase::Running;
        st.local_addr = Some(addr);
        st.rt = Some(Handle::current());
        st.accept = Some(tokio::spawn(accept_loop(self.0.clone(), listener)));
        tracing::info!(%addr, "server listening");
        Ok(())
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
