//! The async [`Client`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use veltix_proto::retry::{NextStep, Reconnect};
use veltix_proto::{
    ClientConfig, CloseReason, Connection, ConnectionConfig, DisconnectReason, DisconnectState,
    Error, Frame, MessageType, PeerHello, Router,
};

use crate::conn::{drive, now, Conn, Delivery, Inbox};
use crate::lock;

/// Capacity of the client's event channel (messages and lifecycle events),
/// in batches (one batch holds what one read produced).
const EVENTS: usize = 128;

/// What [`Client::recv`] returns.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Connected (first connect and every reconnect), with the server's hello.
    Connected(PeerHello),
    /// A message no route claimed and no request was waiting for.
    Message(Frame),
    /// A disconnect or retry step, as Veltix reports to `on_disconnect`.
    Disconnected(DisconnectState),
}

type Route = Arc<dyn Fn(&Client, Frame) + Send + Sync>;

struct Shared {
    config: ClientConfig,
    connection: Arc<ConnectionConfig>,
    current: Mutex<Option<Arc<Conn>>>,
    session: Mutex<Option<JoinHandle<CloseReason>>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    reconnect: Mutex<Reconnect>,
    manual: AtomicBool,
    stop_retry: AtomicBool,
    stop: Notify,
    tx: mpsc::Sender<((), Vec<Delivery>)>,
    rx: tokio::sync::Mutex<Inbox<()>>,
    routes: Mutex<Router<Route>>,
}

/// Ends every task of the client when the last handle goes away.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        let s = &self.0;
        s.manual.store(true, Ordering::SeqCst);
        s.stop.notify_waiters();
        if let Some(c) = lock(&s.current).take() {
            c.close();
        }
        if let Some(h) = lock(&s.supervisor).take() {
            h.abort();
        }
    }
}

/// An async Veltix client. Cheap to clone; dropping the last clone closes the
/// connection and ends its tasks.
///
/// ```no_run
/// # async fn demo() -> Result<(), veltix_tokio::Error> {
/// use veltix_tokio::{Client, ClientConfig, ClientEvent, MessageType};
/// let client = Client::connect(ClientConfig::new("127.0.0.1", 8080)).await?;
/// let reply = client.request(MessageType::new(200), "hello", None).await?;
/// println!("{}", reply.text()?);
/// while let Some(event) = client.recv().await {
///     if let ClientEvent::Message(m) = event {
///         println!("pushed: {:?}", m.payload);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client(Arc<Owner>);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "server",
                &format_args!(
                    "{}:{}",
                    self.shared().config.server_addr,
                    self.shared().config.port
                ),
            )
            .field("connected", &self.is_connected())
            .finish()
    }
}

async fn dial(s: &Arc<Shared>) -> Result<Arc<Conn>, Error> {
    let c = &s.config;
    let name = format!("{}:{}", c.server_addr, c.port);
    let addr = tokio::net::lookup_host((c.server_addr.as_str(), c.port))
        .await
        .map_err(|_| Error::Resolve(name.clone()))?
        .next()
        .ok_or(Error::Resolve(name))?;
    let timeout = c.handshake_timeout;
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::TimedOut(timeout))?
        .map_err(|e| Error::from_connect(e, addr, timeout))?;
    stream.set_nodelay(true)?;
    let conn = Conn::new(Connection::client(s.connection.clone(), now()), addr);
    let task = tokio::spawn(drive(conn.clone(), stream, (), s.tx.clone(), c.buffer_size));
    match conn.established().await {
        Ok(_) => {
            *lock(&s.session) = Some(task);
            Ok(conn)
        }
        Err(reason) => {
            let _ = task.await;
            Err(Error::from_handshake_close(reason, timeout))
        }
    }
}

async fn emit(s: &Shared, state: DisconnectState) {
    tracing::debug!(?state, "disconnect state");
    let _ = s.tx.send(((), vec![Delivery::Lifecycle(state)])).await;
}

/// Sleeps `d` unless stopped; `false` when `stop_retry`/`disconnect` cut it short.
async fn sleep_unless_stopped(s: &Shared, d: Duration) -> bool {
    let stopped = s.stop.notified();
    tokio::pin!(stopped);
    stopped.as_mut().enable();
    if s.manual.load(Ordering::SeqCst) || s.stop_retry.load(Ordering::SeqCst) {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stopped => false,
    }
}

/// Dials until connected or the policy gives up; `first` is a failure that
/// already happened (a dropped session).
async fn retry_loop(
    s: &Arc<Shared>,
    mut first: Option<(Error, DisconnectReason)>,
    initial: bool,
) -> Result<Arc<Conn>, Error> {
    loop {
        if let Some((err, reason)) = first.take() {
            if s.manual.load(Ordering::SeqCst) {
                return Err(err);
            }
            let step = lock(&s.reconnect).on_failure(reason.clone());
            for r in step.reports {
                emit(s, r).await;
            }
            match step.next {
                NextStep::GiveUp => return Err(err),
                NextStep::RetryAfter(d) => {
                    if !sleep_unless_stopped(s, d).await {
                        if !s.manual.load(Ordering::SeqCst) {
                            let r = lock(&s.reconnect).stop(reason);
                            emit(s, r).await;
                        }
                        return Err(err);
                    }
                }
            }
        }
        if s.manual.load(Ordering::SeqCst) {
            return Err(Error::NotConnected);
        }
        match dial(s).await {
            Ok(conn) => {
                *lock(&s.current) = Some(conn.clone());
                lock(&s.reconnect).on_success();
                return Ok(conn);
            }
            Err(e) => {
                tracing::debug!(error = %e, "connect attempt failed");
                let reason = e.disconnect_reason(initial);
                first = Some((e, reason));
            }
        }
    }
}

/// Watches the session; after a drop, reconnects per the policy.
async fn supervise(weak: Weak<Shared>) {
    loop {
        let Some(task) = weak.upgrade().and_then(|s| lock(&s.session).take()) else {
            return;
        };
        let reason = task.await.unwrap_or(CloseReason::Local);
        let Some(s) = weak.upgrade() else { return };
        *lock(&s.current) = None;
        if s.manual.load(Ordering::SeqCst) || reason == CloseReason::Local {
            return;
        }
        tracing::info!(%reason, "connection lost");
        let first = Some((Error::Closed(reason), DisconnectReason::ServerClosed));
        if retry_loop(&s, first, false).await.is_err() {
            return;
        }
    }
}

impl Client {
    fn shared(&self) -> &Arc<Shared> {
        &self.0 .0
    }

    /// Connects and completes the handshake, retrying per the policy.
    ///
    /// # Errors
    /// [`Error::Config`], [`Error::Refused`], [`Error::TimedOut`],
    /// [`Error::Rejected`], [`Error::VersionMismatch`], ... (the last failure).
    pub async fn connect(config: ClientConfig) -> Result<Client, Error> {
        config.validate()?;
        let seed = config.retry_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let (tx, rx) = mpsc::channel(EVENTS);
        let shared = Arc::new(Shared {
            connection: config.connection_config(),
            reconnect: Mutex::new(Reconnect::new(config.retry_policy(), seed)),
            config,
            current: Mutex::new(None),
            session: Mutex::new(None),
            supervisor: Mutex::new(None),
            manual: AtomicBool::new(false),
            stop_retry: AtomicBool::new(false),
            stop: Notify::new(),
            tx,
            rx: tokio::sync::Mutex::new(Inbox::new(rx)),
            routes: Mutex::new(Router::default()),
        });
        retry_loop(&shared, None, true).await?;
        *lock(&shared.supervisor) = Some(tokio::spawn(supervise(Arc::downgrade(&shared))));
        Ok(Client(Arc::new(Owner(shared))))
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.shared().config
    }

    /// Whether the handshake is done and the connection open.
    pub fn is_connected(&self) -> bool {
        lock(&self.shared().current)
            .as_ref()
            .is_some_and(|c| c.is_established())
    }

    fn conn(&self) -> Result<Arc<Conn>, Error> {
        lock(&self.shared().current)
            .clone()
            .filter(|c| c.is_established())
            .ok_or(Error::NotConnected)
    }

    /// Routes messages of one type to a handler, called from [`recv`](Self::recv)
    /// in arrival order; `false` if the type already has one.
    pub fn route(
        &self,
        message_type: MessageType,
        f: impl Fn(&Client, Frame) + Send + Sync + 'static,
    ) -> bool {
        lock(&self.shared().routes).route(message_type, Arc::new(f))
    }

    /// Queues a message, or fails at once with
    /// `Error::Send(SendError::QueueFull { .. })` when the outbound queue is full.
    ///
    /// # Errors
    /// [`Error::NotConnected`], or the core's refusal.
    pub fn try_send(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        self.conn()?.try_send(t, payload.into())
    }

    /// Queues a message, waiting while the outbound queue is full.
    ///
    /// # Errors
    /// [`Error::NotConnected`], or the core's refusal.
    pub async fn send(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        let conn = self.conn()?;
        let payload = payload.into();
        conn.with_space(|| conn.try_send(t, payload.clone())).await
    }

    /// Answers `request` with the same id.
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    pub fn reply(
        &self,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        self.conn()?
            .try_send_with_id(t, request.request_id, payload.into())
    }

    /// Sends a request and waits for the first frame carrying its id
    /// (Veltix's `send_and_wait`). `None` uses the config's `request_timeout`.
    /// Dropping the future frees the id.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Closed`], ...
    pub async fn request(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        let timeout = timeout.unwrap_or(self.shared().config.request_timeout);
        self.conn()?.request(t, payload.into(), timeout).await
    }

    /// PINGs the server and returns the round-trip time.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::NotConnected`], ...
    pub async fn ping(&self, timeout: Option<Duration>) -> Result<Duration, Error> {
        let timeout = timeout.unwrap_or(self.shared().config.request_timeout);
        self.conn()?.ping(timeout).await
    }

    /// The next event. Messages with a route are handed to it here, in order,
    /// and not returned. `None` after [`disconnect`](Self::disconnect) once
    /// every event was taken.
    pub async fn recv(&self) -> Option<ClientEvent> {
        let s = self.shared();
        let mut rx = s.rx.lock().await;
        loop {
            let (_, d) = rx.next(&s.stop, || s.manual.load(Ordering::SeqCst)).await?;
            match d {
                Delivery::Connected(p) => return Some(ClientEvent::Connected(p)),
                Delivery::Lifecycle(st) => return Some(ClientEvent::Disconnected(st)),
                Delivery::Closed(_) => {}
                Delivery::Message(f) => {
                    let route = {
                        let routes = lock(&s.routes);
                        routes
                            .has_route(f.message_type)
                            .then(|| routes.handler(f.message_type).cloned())
                            .flatten()
                    };
                    match route {
                        Some(h) => h(self, f),
                        None => return Some(ClientEvent::Message(f)),
                    }
                }
            }
        }
    }

    /// Starts a fresh retry loop in the background (Veltix's `retry(max_)`),
    /// unless connected.
    pub fn retry(&self, max: Option<u32>) {
        let s = self.shared().clone();
        if self.is_connected() {
            return;
        }
        s.manual.store(false, Ordering::SeqCst);
        s.stop_retry.store(false, Ordering::SeqCst);
        lock(&s.reconnect).restart(max);
        let weak = Arc::downgrade(&s);
        let h = tokio::spawn(async move {
            let Some(s) = weak.upgrade() else { return };
            if retry_loop(&s, None, false).await.is_ok() {
                drop(s);
                supervise(weak).await;
            }
        });
        let old = lock(&s.supervisor).replace(h);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// Cancels a running retry loop (it reports a permanent state).
    pub fn stop_retry(&self) {
        self.shared().stop_retry.store(true, Ordering::SeqCst);
        self.shared().stop.notify_waiters();
    }

    /// Closes the connection (queued frames are flushed first), stops any
    /// retry, reports `(permanent, Manual)` and waits for the client's tasks.
    /// Returns whether a connection was open.
    pub async fn disconnect(&self) -> bool {
        let s = self.shared();
        s.manual.store(true, Ordering::SeqCst);
        s.stop.notify_waiters();
        let conn = lock(&s.current).take();
        if let Some(c) = &conn {
            c.close();
        }
        let supervisor = lock(&s.supervisor).take();
        if let Some(h) = supervisor {
            let _ = h.await;
        }
        let session = lock(&s.session).take();
        if let Some(h) = session {
            let _ = h.await;
        }
        if conn.is_some() {
            let (attempt, retry_max) = {
                let r = lock(&s.reconnect);
                (r.attempt(), r.budget())
            };
            emit(
                s,
                DisconnectState {
                    permanent: true,
                    attempt,
                    retry_max,
                    reason: DisconnectReason::Manual,
                },
            )
            .await;
        }
        conn.is_some()
    }

    /// The server's hello (`v`, `pv`, `meta`) of the current connection.
    pub fn server_hello(&self) -> Option<PeerHello> {
        self.conn().ok().and_then(|c| c.peer_hello())
    }

    /// The server's address of the current connection.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.conn().ok().map(|c| c.peer_addr())
    }

    /// Counters of the current connection's core.
    pub fn stats(&self) -> Option<veltix_proto::ConnectionStats> {
        self.conn().ok().map(|c| c.stats())
    }
}
