//! The blocking [`Server`].

use std::collections::BTreeMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use veltix_proto::{
    Acceptor, CloseReason, Frame, MessageType, PeerHello, Router, ServerConfig, SharedTags,
};

use crate::link::{Link, Sink};
use crate::pool::{lock, Mailbox, Pool};
use veltix_proto::Error;

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

struct PeerInner {
    id: u64,
    addr: SocketAddr,
    tags: SharedTags,
    handshake_done: AtomicBool,
    peer: Mutex<Option<PeerHello>>,
    link: Mutex<Option<Weak<Link>>>,
}

/// One connected client, as the server sees it (Veltix's `ClientInfo`).
/// Cheap to clone and safe to share between threads; equality is identity.
#[derive(Clone)]
pub struct ClientInfo(Arc<PeerInner>);

impl std::fmt::Debug for ClientInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientInfo")
            .field("id", &self.0.id)
            .field("addr", &self.0.addr)
            .field("handshake_done", &self.handshake_done())
            .finish()
    }
}

impl PartialEq for ClientInfo {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for ClientInfo {}

impl ClientInfo {
    /// A process-wide unique, increasing id.
    pub fn id(&self) -> u64 {
        self.0.id
    }
    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
    /// The peer's IP.
    pub fn ip(&self) -> std::net::IpAddr {
        self.0.addr.ip()
    }
    /// The peer's port.
    pub fn port(&self) -> u16 {
        self.0.addr.port()
    }
    /// Whether its handshake finished.
    pub fn handshake_done(&self) -> bool {
        self.0.handshake_done.load(Ordering::Acquire)
    }
    /// Its hello (`v`, `pv`, `meta`), once connected.
    pub fn hello(&self) -> Option<PeerHello> {
        lock(&self.0.peer).clone()
    }
    /// Its tags (Veltix's `add_tag`, `set_tag`, `get_tag`, `has_tag`,
    /// `has_all_tags`, `has_any_tags`, `remove_tag`, `clear_tags`), shared by
    /// every clone of this handle. They never travel on the wire.
    pub fn tags(&self) -> &SharedTags {
        &self.0.tags
    }

    /// Counters of this client's connection (frames, bytes, counted drops),
    /// while it is open.
    pub fn stats(&self) -> Option<veltix_proto::ConnectionStats> {
        lock(&self.0.link)
            .as_ref()
            .and_then(Weak::upgrade)
            .map(|l| l.stats())
    }

    fn link(&self) -> Result<Arc<Link>, Error> {
        lock(&self.0.link)
            .as_ref()
            .and_then(Weak::upgrade)
            .filter(|_| self.handshake_done())
            .ok_or(Error::NotConnected)
    }
}

type ConnectFn = dyn Fn(&Server, &ClientInfo) + Send + Sync;
type ClientEntry = (ClientInfo, Arc<Link>, Arc<Mailbox>);
type MessageFn = dyn Fn(&Server, &ClientInfo, Frame) + Send + Sync;

#[derive(Default)]
struct Callbacks {
    on_connect: Option<Arc<ConnectFn>>,
    on_disconnect: Option<Arc<ConnectFn>>,
    router: Router<Arc<MessageFn>>,
}

struct Running {
    pool: Arc<Pool>,
    local_addr: SocketAddr,
    accept_thread: Option<JoinHandle<()>>,
}

struct Inner {
    config: ServerConfig,
    acceptor: Mutex<Acceptor>,
    callbacks: RwLock<Callbacks>,
    clients: Mutex<BTreeMap<u64, ClientEntry>>,
    /// Links that closed on their own, joined later (by `reap` or `close_all`).
    finished: Mutex<Vec<Arc<Link>>>,
    running: Mutex<Option<Running>>,
    stopping: AtomicBool,
}

/// A Veltix server on std threads: one reader and one writer thread per
/// client, callbacks on a pool of `max_workers` threads (serial per client,
/// in arrival order).
///
/// ```no_run
/// use veltix_std::{MessageType, Server, ServerConfig};
///
/// const ECHO: MessageType = MessageType::new(200);
/// let server = Server::new(ServerConfig::new("127.0.0.1", 8080)).unwrap();
/// server.route(ECHO, |server, client, msg| {
///     let _ = server.reply(client, &msg, ECHO, msg.payload.clone());
/// });
/// server.start().unwrap();
/// // ... later
/// server.close_all();
/// ```
#[derive(Clone)]
pub struct Server(Arc<Inner>);

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr())
            .finish()
    }
}

struct ServerSink {
    server: Weak<Inner>,
    client: ClientInfo,
    mailbox: Arc<Mailbox>,
    pool: Arc<Pool>,
}

impl ServerSink {
    fn post(&self, job: impl FnOnce(&Server) + Send + 'static) {
        let Some(inner) = self.server.upgrade() else {
            return;
        };
        let server = Server(inner);
        self.mailbox
            .post(&self.pool, Box::new(move || job(&server)));
    }
}

impl Sink for ServerSink {
    fn connected(&self, _link: &Arc<Link>, peer: PeerHello) {
        *lock(&self.client.0.peer) = Some(peer);
        self.client.0.handshake_done.store(true, Ordering::Release);
        tracing::debug!(client = self.client.id(), addr = %self.client.addr(), "client connected");
        let client = self.client.clone();
        self.post(move |server| {
            let cb = server
                .0
                .callbacks
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .on_connect
                .clone();
            if let Some(cb) = cb {
                cb(server, &client);
            }
        });
    }

    fn messages(&self, _link: &Arc<Link>, frames: Vec<Frame>) {
        let client = self.client.clone();
        let guard = self.pool.guard();
        self.post(move |server| {
            for f in frames {
                let handler = server
                    .0
                    .callbacks
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .router
                    .handler(f.message_type)
                    .cloned();
                match handler {
                    Some(h) => guard.call("route/on_recv", || h(server, &client, f)),
                    None => tracing::debug!(message_type = %f.message_type, "no handler; message dropped"),
                }
            }
        });
    }

    fn closed(&self, _link: &Arc<Link>, reason: CloseReason, _was_established: bool) {
        tracing::debug!(client = self.client.id(), %reason, "client disconnected");
        let Some(inner) = self.server.upgrade() else {
            return;
        };
        lock(&inner.acceptor).release();
        if let Some((_, link, _)) = lock(&inner.clients).remove(&self.client.id()) {
            lock(&inner.finished).push(link);
        }
        if !self.client.handshake_done() {
            // Never connected: no on_connect was fired, so no on_disconnect either.
            self.mailbox.close();
            return;
        }
        let client = self.client.clone();
        self.post(move |server| {
            let cb = server
                .0
                .callbacks
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .on_disconnect
                .clone();
            if let Some(cb) = cb {
                cb(server, &client);
            }
        });
        self.mailbox.close();
    }
}

impl Server {
    /// A server (not listening yet).
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid setting.
    pub fn new(config: ServerConfig) -> Result<Server, Error> {
        config.validate()?;
        let acceptor = Acceptor::new(config.connection_config(), config.max_connection);
        Ok(Server(Arc::new(Inner {
            config,
            acceptor: Mutex::new(acceptor),
            callbacks: RwLock::new(Callbacks::default()),
            clients: Mutex::new(BTreeMap::new()),
            finished: Mutex::new(Vec::new()),
            running: Mutex::new(None),
            stopping: AtomicBool::new(false),
        })))
    }

    fn callbacks(&self) -> std::sync::RwLockWriteGuard<'_, Callbacks> {
        self.0.callbacks.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Called after each client's handshake.
    pub fn on_connect(&self, f: impl Fn(&Server, &ClientInfo) + Send + Sync + 'static) {
        self.callbacks().on_connect = Some(Arc::new(f));
    }
    /// Called once per client when it goes away (after its last message).
    pub fn on_disconnect(&self, f: impl Fn(&Server, &ClientInfo) + Send + Sync + 'static) {
        self.callbacks().on_disconnect = Some(Arc::new(f));
    }
    /// Called for every message no route claims.
    pub fn on_recv(&self, f: impl Fn(&Server, &ClientInfo, Frame) + Send + Sync + 'static) {
        self.callbacks().router.set_fallback(Arc::new(f));
    }
    /// Routes one message type to a handler; `false` if it already has one.
    pub fn route(
        &self,
        message_type: MessageType,
        f: impl Fn(&Server, &ClientInfo, Frame) + Send + Sync + 'static,
    ) -> bool {
        self.callbacks().router.route(message_type, Arc::new(f))
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    /// Binds and starts accepting; returns once listening.
    ///
    /// # Errors
    /// [`Error::Io`] if the address cannot be bound, [`Error::State`] if already started.
    pub fn start(&self) -> Result<(), Error> {
        let mut running = lock(&self.0.running);
        if running.is_some() {
            return Err(Error::State("server already started"));
        }
        let cfg = &self.0.config;
        let addr = (cfg.host.as_str(), cfg.port)
            .to_socket_addrs()
            .map_err(|_| Error::Resolve(format!("{}:{}", cfg.host, cfg.port)))?
            .next()
            .ok_or_else(|| Error::Resolve(format!("{}:{}", cfg.host, cfg.port)))?;
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let pool = Arc::new(Pool::new(cfg.max_workers, "veltix-server")?);
        self.0.stopping.store(false, Ordering::SeqCst);
        let weak = Arc::downgrade(&self.0);
        let p = pool.clone();
        let accept_thread = std::thread::Builder::new()
            .name("veltix-accept".into())
            .spawn(move || accept_loop(&listener, &weak, &p))?;
        tracing::info!(%local_addr, "veltix server listening");
        *running = Some(Running {
            pool,
            local_addr,
            accept_thread: Some(accept_thread),
        });
        Ok(())
    }

    /// The bound address (useful with port 0), while running.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        lock(&self.0.running).as_ref().map(|r| r.local_addr)
    }

    /// Clients whose handshake is done.
    pub fn clients(&self) -> Vec<ClientInfo> {
        lock(&self.0.clients)
            .values()
            .map(|(c, _, _)| c.clone())
            .filter(ClientInfo::handshake_done)
            .collect()
    }

    /// Clients carrying `tag` (with `value`, when given).
    pub fn clients_by_tag(&self, tag: &str, value: Option<&Value>) -> Vec<ClientInfo> {
        self.clients()
            .into_iter()
            .filter(|c| c.tags().matches(tag, value))
            .collect()
    }

    /// Whether a new connection would be refused with `server_full`.
    pub fn is_full(&self) -> bool {
        lock(&self.0.acceptor).is_full()
    }

    /// Sends a message to one client; returns its request id.
    ///
    /// # Errors
    /// [`Error::NotConnected`] if the client is gone or still handshaking, or a send error.
    pub fn send(
        &self,
        client: &ClientInfo,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, Error> {
        client.link()?.send(t, payload.into())
    }

    /// Answers `request` (same id) on behalf of the server.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn reply(
        &self,
        client: &ClientInfo,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        client
            .link()?
            .send_with_id(t, request.request_id, payload.into())
    }

    /// Sends one frame, encoded once and with one id, to every connected
    /// client except `except`. Returns how many clients it was queued for.
    ///
    /// # Errors
    /// [`Error::Send`] if the payload cannot be framed. Per-client failures are
    /// logged and not counted.
    pub fn broadcast(
        &self,
        t: MessageType,
        payload: &[u8],
        except: &[ClientInfo],
    ) -> Result<usize, Error> {
        let frame = lock(&self.0.acceptor)
            .broadcast_frame(t, payload)
            .map_err(|e| Error::Send(e.into()))?;
        let mut sent = 0;
        for c in self.clients() {
            if except.contains(&c) {
                continue;
            }
            match c.link().and_then(|l| l.send_encoded(&frame)) {
                Ok(()) => sent += 1,
                Err(e) => {
                    tracing::debug!(client = c.id(), error = %e, "broadcast skipped a client")
                }
            }
        }
        Ok(sent)
    }

    /// Sends a request to one client and waits for the first frame from
    /// **that client** carrying its id.
    ///
    /// # Errors
    /// [`Error::Timeout`] without a reply in time, [`Error::Closed`] if the client left.
    pub fn send_and_wait(
        &self,
        client: &ClientInfo,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        client.link()?.request(t, payload.into(), timeout)
    }

    /// PINGs a client: its round-trip time, or why there is none.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::NotConnected`], [`Error::Closed`], ...
    pub fn ping(&self, client: &ClientInfo, timeout: Option<Duration>) -> Result<Duration, Error> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        client.link()?.ping(timeout)
    }

    /// PINGs a client; its round-trip time, or `None` on timeout or error
    /// (Veltix's `ping_client`; [`ping`](Self::ping) says why).
    pub fn ping_client(&self, client: &ClientInfo, timeout: Option<Duration>) -> Option<Duration> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        client.link().and_then(|l| l.ping(timeout)).ok()
    }

    /// [`ping_client`](Self::ping_client) on a short-lived thread; `callback`
    /// gets the result.
    ///
    /// # Errors
    /// [`Error::Io`] if the thread cannot be spawned.
    pub fn ping_client_async(
        &self,
        client: &ClientInfo,
        timeout: Option<Duration>,
        callback: impl FnOnce(Option<Duration>) + Send + 'static,
    ) -> Result<JoinHandle<()>, Error> {
        let server = self.clone();
        let client = client.clone();
        Ok(std::thread::Builder::new()
            .name("veltix-ping".into())
            .spawn(move || callback(server.ping_client(&client, timeout)))?)
    }

    /// Closes one client (queued frames are flushed first); `false` if unknown.
    pub fn close_client(&self, client: &ClientInfo) -> bool {
        let link = lock(&self.0.clients)
            .get(&client.id())
            .map(|(_, l, _)| l.clone());
        match link {
            Some(l) => {
                l.close();
                true
            }
            None => false,
        }
    }

    /// Stops listening, closes every client, waits for every thread of the
    /// server to end (callbacks already queued run first). The server can be
    /// started again.
    pub fn close_all(&self) {
        let Some(mut running) = lock(&self.0.running).take() else {
            return;
        };
        self.0.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection of our own.
        let _ = TcpStream::connect_timeout(&wake_addr(running.local_addr), Duration::from_secs(1));
        if let Some(h) = running.accept_thread.take() {
            let _ = h.join();
        }
        let links: Vec<Arc<Link>> = lock(&self.0.clients)
            .values()
            .map(|(_, l, _)| l.clone())
            .collect();
        for l in &links {
            l.close();
        }
        for l in &links {
            l.join();
        }
        // Taken only now, and outside the loop: a closing reader pushes itself
        // there, so that lock must never be held while joining.
        let finished = std::mem::take(&mut *lock(&self.0.finished));
        for l in &finished {
            l.join();
        }
        running.pool.shutdown();
        tracing::info!("veltix server closed");
    }

    /// Callbacks that panicked so far (each was caught and logged).
    pub fn callback_panics(&self) -> u64 {
        lock(&self.0.running)
            .as_ref()
            .map_or(0, |r| r.pool.panics())
    }
}

/// The address to dial to wake our own accept loop.
fn wake_addr(local: SocketAddr) -> SocketAddr {
    let mut a = local;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

fn accept_loop(listener: &TcpListener, weak: &Weak<Inner>, pool: &Arc<Pool>) {
    loop {
        let accepted = listener.accept();
        let Some(inner) = weak.upgrade() else { return };
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (sock, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        lock(&inner.finished).retain(|l| !l.try_join());
        let accepted = lock(&inner.acceptor).accept(Instant::now());
        let conn = match accepted {
            Ok(conn) => conn,
            Err(rejection) => {
                tracing::info!(%addr, reason = %rejection.reason, "connection refused");
                let _ = sock.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = std::io::Write::write_all(&mut &sock, &rejection.bytes);
                let _ = sock.shutdown(Shutdown::Both);
                continue;
            }
        };
        let client = ClientInfo(Arc::new(PeerInner {
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            addr,
            tags: SharedTags::default(),
            handshake_done: AtomicBool::new(false),
            peer: Mutex::new(None),
            link: Mutex::new(None),
        }));
        let mailbox = Arc::new(Mailbox::default());
        let sink = Arc::new(ServerSink {
            server: weak.clone(),
            client: client.clone(),
            mailbox: mailbox.clone(),
            pool: pool.clone(),
        });
        // Register before the threads start, so `closed` always finds the entry.
        let mut clients = lock(&inner.clients);
        match Link::spawn(sock, conn, sink, inner.config.buffer_size, "veltix-conn") {
            Ok(link) => {
                *lock(&client.0.link) = Some(Arc::downgrade(&link));
                clients.insert(client.id(), (client, link, mailbox));
            }
            Err(e) => {
                drop(clients);
                tracing::warn!(error = %e, "cannot start connection threads");
                lock(&inner.acceptor).release();
            }
        }
    }
}
