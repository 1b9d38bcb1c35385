//! The async [`Server`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use veltix_proto::{
    Acceptor, CloseReason, ConnectionStats, Error, Frame, MessageType, PeerHello, Router,
    ServerConfig, SharedTags,
};

use crate::conn::{drive, now, Conn, Delivery, Inbox};
use crate::lock;

/// Capacity of the server's event channel, shared by all peers, in batches
/// (one batch holds what one read of one connection produced).
const EVENTS: usize = 512;
/// Pending connections the kernel may queue before `accept`.
const LISTEN_BACKLOG: u32 = 4096;

static NEXT_PEER_ID: AtomicU64 = AtomicU64::new(1);

struct PeerInner {
    id: u64,
    addr: SocketAddr,
    conn: Arc<Conn>,
    tags: SharedTags,
    hello: Mutex<Option<PeerHello>>,
}

/// One client as the server sees it (Veltix's `ClientInfo`): address, tags,
/// handshake state. Cheap to clone; equality is identity.
#[derive(Clone)]
pub struct Peer(Arc<PeerInner>);

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.0.id)
            .field("addr", &self.0.addr)
            .field("handshake_done", &self.handshake_done())
            .finish()
    }
}

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for Peer {}

impl Peer {
    /// A process-wide unique, increasing id.
    pub fn id(&self) -> u64 {
        self.0.id
    }
    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }
    /// Whether its handshake finished (and it is still connected).
    pub fn handshake_done(&self) -> bool {
        self.0.conn.is_established()
    }
    /// Its hello, once connected.
    pub fn hello(&self) -> Option<PeerHello> {
        lock(&self.0.hello).clone()
    }
    /// Counters of its connection.
    pub fn stats(&self) -> ConnectionStats {
        self.0.conn.stats()
    }
    /// Its tags (Veltix's `add_tag`, `set_tag`, `get_tag`, `has_tag`,
    /// `has_all_tags`, `has_any_tags`, `remove_tag`, `clear_tags`), shared by
    /// every clone of this handle. They never travel on the wire.
    pub fn tags(&self) -> &SharedTags {
        &self.0.tags
    }

    fn conn(&self) -> Result<&Arc<Conn>, Error> {
        if self.handshake_done() {
            Ok(&self.0.conn)
        } else {
            Err(Error::NotConnected)
        }
    }
}

/// What [`Server::recv`] returns.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// A client finished its handshake.
    Connected(Peer),
    /// A message no route claimed and no request was waiting for.
    Message(Peer, Frame),
    /// A connected client went away.
    Disconnected(Peer, CloseReason),
}

type Route = Arc<dyn Fn(&Server, &Peer, Frame) + Send + Sync>;

struct Shared {
    config: ServerConfig,
    local_addr: SocketAddr,
    acceptor: Mutex<Acceptor>,
    peers: Mutex<BTreeMap<u64, Peer>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    stopping: AtomicBool,
    stop: Arc<Notify>,
    tx: mpsc::Sender<(Peer, Vec<Delivery>)>,
    rx: tokio::sync::Mutex<Inbox<Peer>>,
    routes: Mutex<Router<Route>>,
}

/// An async Veltix server: one task per connection, events through
/// [`recv`](Self::recv) in arrival order per peer.
///
/// ```no_run
/// # async fn demo() -> Result<(), veltix_tokio::Error> {
/// use veltix_tokio::{MessageType, Server, ServerConfig, ServerEvent};
/// let server = Server::bind(ServerConfig::new("127.0.0.1", 8080)).await?;
/// while let Some(event) = server.recv().await {
///     if let ServerEvent::Message(peer, msg) = event {
///         server.reply(&peer, &msg, msg.message_type, msg.payload.clone())?;
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server(Arc<Shared>);

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.0.local_addr)
            .finish()
    }
}

async fn refuse(mut stream: TcpStream, bytes: Bytes) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    let _ = stream.shutdown().await;
}

async fn accept_loop(listener: TcpListener, weak: Weak<Shared>, stop: Arc<Notify>) {
    loop {
        let accepted = {
            let stopped = stop.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            // Only a weak reference is held while waiting: dropping the
            // server's last handle ends this loop.
            if weak
                .upgrade()
                .is_none_or(|s| s.stopping.load(Ordering::SeqCst))
            {
                return;
            }
            tokio::select! {
                r = listener.accept() => r,
                () = stopped => return,
            }
        };
        let Some(s) = weak.upgrade() else { return };
        let (stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        {
            let mut tasks = lock(&s.tasks);
            if tasks.len() % 64 == 0 {
                tasks.retain(|t| !t.is_finished());
            }
        }
        let admitted = lock(&s.acceptor).accept(now());
        let conn = match admitted {
            Ok(c) => c,
            Err(rejection) => {
                tracing::info!(%addr, reason = %rejection.reason, "connection refused");
                let t = tokio::spawn(refuse(stream, rejection.bytes));
                lock(&s.tasks).push(t);
                continue;
            }
        };
        let peer = Peer(Arc::new(PeerInner {
            id: NEXT_PEER_ID.fetch_add(1, Ordering::Relaxed),
            addr,
            conn: Conn::new(conn, addr),
            tags: SharedTags::default(),
            hello: Mutex::new(None),
        }));
        lock(&s.peers).insert(peer.id(), peer.clone());
        let (tx, read_size, w) = (s.tx.clone(), s.config.buffer_size, weak.clone());
        let task = tokio::spawn(async move {
            let conn = peer.0.conn.clone();
            drive(conn, stream, peer.clone(), tx, read_size).await;
            if let Some(s) = w.upgrade() {
                lock(&s.acceptor).release();
                lock(&s.peers).remove(&peer.id());
            }
        });
        lock(&s.tasks).push(task);
    }
}

impl Server {
    /// Binds `host:port` and starts accepting.
    ///
    /// # Errors
    /// [`Error::Config`], [`Error::Resolve`], [`Error::Io`] when binding fails.
    pub async fn bind(config: ServerConfig) -> Result<Server, Error> {
        config.validate()?;
        let name = format!("{}:{}", config.host, config.port);
        let addr = tokio::net::lookup_host((config.host.as_str(), config.port))
            .await
            .map_err(|_| Error::Resolve(name.clone()))?
            .next()
            .ok_or(Error::Resolve(name))?;
        // A deep backlog: a burst of connects must not overflow it (dropped
        // SYNs are retried by the kernel only after 1 s, 3 s, 7 s ...).
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(LISTEN_BACKLOG)?;
        let local_addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(EVENTS);
        let shared = Arc::new(Shared {
            acceptor: Mutex::new(Acceptor::new(
                config.connection_config(),
                config.max_connection,
            )),
            config,
            local_addr,
            peers: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
            accept_task: Mutex::new(None),
            stopping: AtomicBool::new(false),
            stop: Arc::new(Notify::new()),
            tx,
            rx: tokio::sync::Mutex::new(Inbox::new(rx)),
            routes: Mutex::new(Router::default()),
        });
        let t = tokio::spawn(accept_loop(
            listener,
            Arc::downgrade(&shared),
            shared.stop.clone(),
        ));
        *lock(&shared.accept_task) = Some(t);
        tracing::info!(%local_addr, "veltix server listening");
        Ok(Server(shared))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.0.local_addr
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.0.config
    }

    /// Routes messages of one type to a handler, called from
    /// [`recv`](Self::recv) in arrival order; `false` if the type has one.
    pub fn route(
        &self,
        message_type: MessageType,
        f: impl Fn(&Server, &Peer, Frame) + Send + Sync + 'static,
    ) -> bool {
        lock(&self.0.routes).route(message_type, Arc::new(f))
    }

    /// The next event. Routed messages are handed to their handler here and
    /// not returned. `None` after [`shutdown`](Self::shutdown).
    pub async fn recv(&self) -> Option<ServerEvent> {
        let mut rx = self.0.rx.lock().await;
        loop {
            let (peer, d) = rx
                .next(&self.0.stop, || self.0.stopping.load(Ordering::SeqCst))
                .await?;
            match d {
                Delivery::Connected(hello) => {
                    *lock(&peer.0.hello) = Some(hello);
                    return Some(ServerEvent::Connected(peer));
                }
                Delivery::Message(f) => {
                    let route = {
                        let routes = lock(&self.0.routes);
                        routes
                            .has_route(f.message_type)
                            .then(|| routes.handler(f.message_type).cloned())
                            .flatten()
                    };
                    match route {
                        Some(h) => h(self, &peer, f),
                        None => return Some(ServerEvent::Message(peer, f)),
                    }
                }
                Delivery::Closed(reason) => {
                    // Only clients that were connected get a Disconnected event.
                    if lock(&peer.0.hello).is_some() {
                        return Some(ServerEvent::Disconnected(peer, reason));
                    }
                }
                Delivery::Lifecycle(_) => {}
            }
        }
    }

    /// Clients whose handshake is done.
    pub fn clients(&self) -> Vec<Peer> {
        lock(&self.0.peers)
            .values()
            .filter(|p| p.handshake_done())
            .cloned()
            .collect()
    }

    /// Clients carrying `tag` (with `value`, when given).
    pub fn clients_by_tag(&self, tag: &str, value: Option<&Value>) -> Vec<Peer> {
        self.clients()
            .into_iter()
            .filter(|p| p.tags().matches(tag, value))
            .collect()
    }

    /// Whether a new connection would be refused with `server_full`.
    pub fn is_full(&self) -> bool {
        lock(&self.0.acceptor).is_full()
    }

    /// Queues a message for one client, or fails with a full-queue error.
    ///
    /// # Errors
    /// [`Error::NotConnected`], or the core's refusal.
    pub fn try_send(
        &self,
        peer: &Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, Error> {
        peer.conn()?.try_send(t, payload.into())
    }

    /// Queues a message for one client, waiting while its queue is full.
    ///
    /// # Errors
    /// [`Error::NotConnected`], or the core's refusal.
    pub async fn send(
        &self,
        peer: &Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, Error> {
        let conn = peer.conn()?;
        let payload = payload.into();
        conn.with_space(|| conn.try_send(t, payload.clone())).await
    }

    /// Answers `request` (same id).
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
        peer.conn()?
            .try_send_with_id(t, request.request_id, payload.into())
    }

    /// One frame, encoded once with one id, queued for every connected client
    /// except `except`. Returns how many it was queued for.
    ///
    /// # Errors
    /// [`Error::Send`] when the payload cannot be framed.
    pub fn broadcast(
        &self,
        t: MessageType,
        payload: &[u8],
        except: &[Peer],
    ) -> Result<usize, Error> {
        let frame = lock(&self.0.acceptor)
            .broadcast_frame(t, payload)
            .map_err(|e| Error::Send(e.into()))?;
        let mut sent = 0;
        for p in self.clients() {
            if except.contains(&p) {
                continue;
            }
            match p.conn().and_then(|c| c.try_send_encoded(&frame)) {
                Ok(()) => sent += 1,
                Err(e) => tracing::debug!(peer = p.id(), error = %e, "broadcast skipped a peer"),
            }
        }
        Ok(sent)
    }

    /// Sends a request to one client; only that client's frame with the same
    /// id answers it. Dropping the future frees the id.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Closed`], ...
    pub async fn request(
        &self,
        peer: &Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        peer.conn()?.request(t, payload.into(), timeout).await
    }

    /// PINGs one client and returns the round-trip time.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::NotConnected`], ...
    pub async fn ping(&self, peer: &Peer, timeout: Option<Duration>) -> Result<Duration, Error> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        peer.conn()?.ping(timeout).await
    }

    /// Closes one client gracefully; `false` if unknown.
    pub fn close_client(&self, peer: &Peer) -> bool {
        let known = lock(&self.0.peers).contains_key(&peer.id());
        if known {
            peer.0.conn.close();
        }
        known
    }

    /// Stops accepting, closes every connection after flushing what is queued
    /// (at most `flush_deadline`, then connections are cut), and waits until
    /// every task of the server has ended.
    pub async fn shutdown(&self, flush_deadline: Duration) {
        self.0.stopping.store(true, Ordering::SeqCst);
        self.0.stop.notify_waiters();
        let accept = lock(&self.0.accept_task).take();
        if let Some(t) = accept {
            let _ = t.await;
        }
        let peers: Vec<Peer> = lock(&self.0.peers).values().cloned().collect();
        for p in &peers {
            p.0.conn.close();
        }
        let tasks: Vec<JoinHandle<()>> = lock(&self.0.tasks).drain(..).collect();
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(flush_deadline, all).await.is_err() {
            tracing::warn!(
                "shutdown deadline passed: cutting connections that still had data queued"
            );
            for a in &aborts {
                a.abort();
            }
            // Let the aborted tasks finish unwinding.
            tokio::task::yield_now().await;
        }
        lock(&self.0.peers).clear();
        tracing::info!("veltix server shut down");
    }
}
