//! The async [`Client`]: one task drives the core [`ClientSession`] (retry
//! policy, attempts, reports, the connection) behind one mutex: it dials
//! when the session says so, moves bytes, and sleeps until the session's
//! next deadline. It runs only while connecting or connected.

use std::collections::HashMap;
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use veltix_proto::{
    ClientConfig, ClientSession, ConnectionStats, DisconnectState, Error, Frame, MessageType,
    PeerHello, Reply, RequestFailure, SendError, Wait,
};

use crate::dispatch::{BoxFut, Mailbox, RecvQueue};
use crate::{lock, now};
use rustls::pki_types::ServerName;
use veltix_tls::{ClientTls, TlsError, TlsInfo};

mod connector;
mod driver;
use self::connector::Dial;
pub use self::connector::{Connector, TcpConnector};
use self::driver::drive;

type ConnHandler = Arc<dyn Fn(Client) -> BoxFut + Send + Sync>;
type DiscHandler = Arc<dyn Fn(Client, DisconnectState) -> BoxFut + Send + Sync>;
type MsgHandler = Arc<dyn Fn(Client, Frame) -> BoxFut + Send + Sync>;
type Outcome = Result<Reply, RequestFailure>;

/// How long `disconnect` may take past the flush deadline.
const SLACK: Duration = Duration::from_millis(50);

/// What [`Client::recv`] returns: the events no handler consumed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Connected (first connect and every reconnect), with the server's
    /// hello (no `on_connect` handler).
    Connected(PeerHello),
    /// A message no route or `on_recv` handler took, and that answered no request.
    Message(Frame),
    /// A disconnect or retry step, as Veltix reports to `on_disconnect`
    /// (no `on_disconnect` handler).
    Disconnected(DisconnectState),
}

enum Job {
    Connect(ConnHandler),
    Message(Frame, MsgHandler),
    Disconnect(DisconnectState, DiscHandler),
}

#[derive(Default)]
struct Handlers {
    on_connect: Option<ConnHandler>,
    on_disconnect: Option<DiscHandler>,
    on_recv: Option<MsgHandler>,
    routes: HashMap<MessageType, MsgHandler>,
}

struct State {
    session: ClientSession,
    waiters: HashMap<u16, oneshot::Sender<Outcome>>,
    handlers: Handlers,
    mailbox: Mailbox<Job>,
    recv: RecvQueue<ClientEvent>,
    /// `connect()` calls waiting for the outcome.
    connecting: Vec<oneshot::Sender<Result<(), Error>>>,
    driver: Option<JoinHandle<()>>,
    /// The driver task runs.
    running: bool,
    peer_addr: Option<SocketAddr>,
    local_addr: Option<SocketAddr>,
    /// What the open connection's TLS handshake negotiated.
    tls: Option<TlsInfo>,
    /// The TLS failure that ended the last attempt (the session only saw
    /// its I/O error kind): what a give-up then reports.
    tls_failure: Option<TlsError>,
}

struct Inner {
    config: ClientConfig,
    /// Makes each attempt's stream.
    connector: Arc<dyn Dial>,
    /// TLS required when set: the connector and the name to verify.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    state: Mutex<State>,
    /// Wakes the driver: a command queued output, a queue drained, a disconnect.
    wake: Notify,
    /// Output was written (room for a waiting `send`), or the connection changed.
    room: Notify,
    recv_ready: Notify,
    /// The driver stopped (neither connected nor connecting).
    closed: Notify,
    owner: Weak<Owner>,
}

/// Closes the connection when the last [`Client`] handle goes away.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        lock(&self.0.state).session.disconnect(now());
        self.0.wake.notify_one();
    }
}

/// An async Veltix client. Cheap to clone; dropping the last clone closes
/// the connection and ends its task.
///
/// ```no_run
/// # async fn demo() -> Result<(), veltix_tokio::Error> {
/// use veltix_tokio::{Client, ClientConfig, MessageType};
/// let client = Client::new(ClientConfig::new("127.0.0.1", 8080))?;
/// client.on_recv(|_client: Client, msg| async move { println!("pushed: {:?}", msg.payload) });
/// client.connect().await?;
/// let reply = client.request(MessageType::new(200), "hello", None).await?;
/// println!("{}", reply.text()?);
/// client.disconnect().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client(Arc<Owner>);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.inner().config;
        f.debug_struct("Client")
            .field("server", &format_args!("{}:{}", c.server_addr, c.port))
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// Clears a pending request whose future was dropped before its outcome.
struct Pending<'a> {
    inner: &'a Inner,
    id: u16,
    done: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut st = lock(&self.inner.state);
            st.waiters.remove(&self.id);
            st.session.cancel_request(self.id);
        }
    }
}

impl Client {
    /// A client for `config` (validated; no I/O before [`connect`](Self::connect)).
    ///
    /// # Errors
    /// [`Error::Config`] for a setting out of range.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        Self::with_connector(config, TcpConnector, None)
    }

    /// A client that requires TLS: every connection starts with a TLS
    /// handshake (inside the handshake deadline), verifying the server's
    /// certificate for the name set in `tls`, else the config's
    /// `server_addr`. A server that does not speak TLS, or whose
    /// certificate does not verify, fails the attempt with [`Error::Tls`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use veltix_tokio::{Client, ClientConfig, ClientTls};
    ///
    /// let tls = ClientTls::builder().ca_pem_file("ca.pem")?.build()?;
    /// let client = Client::with_tls(ClientConfig::new("localhost", 8443), tls)?;
    /// client.connect().await?;
    /// println!("{:?}", client.tls_info());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for a setting out of range, [`Error::Tls`] when
    /// the server name is neither a DNS name nor an IP address.
    pub fn with_tls(config: ClientConfig, tls: ClientTls) -> Result<Client, Error> {
        Self::with_connector(config, TcpConnector, Some(tls))
    }

    /// A client whose connections come from `connector` (a Unix socket, an
    /// in-memory pipe, a simulated network: any [`Connector`]) instead of
    /// TCP; with `tls`, every connection starts with a TLS handshake over
    /// the stream, as in [`with_tls`](Self::with_tls). [`new`](Self::new)
    /// is `with_connector(config, TcpConnector, None)`.
    ///
    /// ```no_run
    /// # #[cfg(unix)]
    /// # async fn demo() -> Result<(), veltix_tokio::Error> {
    /// use std::net::SocketAddr;
    /// use veltix_tokio::{Client, ClientConfig, Connector, Error};
    ///
    /// struct Local;
    /// impl Connector for Local {
    ///     type Stream = tokio::net::UnixStream;
    ///     async fn connect(&self, _: &str, _: u16) -> Result<(Self::Stream, SocketAddr), Error> {
    ///         let s = tokio::net::UnixStream::connect("/run/veltix.sock").await?;
    ///         Ok((s, SocketAddr::from(([127, 0, 0, 1], 0))))
    ///     }
    /// }
    ///
    /// let client = Client::with_connector(ClientConfig::new("local", 0), Local, None)?;
    /// client.connect().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`new`](Self::new) and [`with_tls`](Self::with_tls).
    pub fn with_connector(
        config: ClientConfig,
        connector: impl Connector,
        tls: Option<ClientTls>,
    ) -> Result<Client, Error> {
        let tls = match tls {
            None => None,
            Some(tls) => {
                let name = tls.name_for(&config.server_addr)?;
                Some((tokio_rustls::TlsConnector::from(tls.config().clone()), name))
            }
        };
        config.validate()?;
        if config.auth.is_some() {
            config.seed_auth(crate::os_seed()?);
        }
        let seed = config.retry_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x5eed, |d| d.as_nanos() as u64)
        });
        let session = ClientSession::new(&config, seed, now());
        Ok(Client(Arc::new_cyclic(|owner| {
            Owner(Arc::new(Inner {
                config,
                connector: Arc::new(connector),
                tls,
                state: Mutex::new(State {
                    session,
                    waiters: HashMap::new(),
                    handlers: Handlers::default(),
                    mailbox: Mailbox::default(),
                    recv: RecvQueue::default(),
                    connecting: Vec::new(),
                    driver: None,
                    running: false,
                    peer_addr: None,
                    local_addr: None,
                    tls: None,
                    tls_failure: None,
                }),
                wake: Notify::new(),
                room: Notify::new(),
                recv_ready: Notify::new(),
                closed: Notify::new(),
                owner: owner.clone(),
            }))
        })))
    }

    fn inner(&self) -> &Arc<Inner> {
        &(self.0).0
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner().state)
    }

    fn ensure_driver(&self, st: &mut State) {
        if !st.running {
            st.running = true;
            st.driver = Some(tokio::spawn(drive(self.inner().clone())));
        }
    }

    /// Runs `f` on every (re)connect (Veltix's `on_connect`); without it,
    /// [`recv`](Self::recv) gets `Connected`.
    pub fn on_connect<F, Fut>(&self, f: F)
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.state().handlers.on_connect = Some(Arc::new(move |c| Box::pin(f(c))));
    }

    /// Runs `f` on every disconnect or retry step (Veltix's
    /// `on_disconnect`); without it, `recv` gets `Disconnected`.
    pub fn on_disconnect<F, Fut>(&self, f: F)
    where
        F: Fn(Client, DisconnectState) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.state().handlers.on_disconnect = Some(Arc::new(move |c, d| Box::pin(f(c, d))));
    }

    /// Runs `f` on every message no route takes (Veltix's `on_recv`);
    /// without it, `recv` gets them.
    pub fn on_recv<F, Fut>(&self, f: F)
    where
        F: Fn(Client, Frame) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.state().handlers.on_recv = Some(Arc::new(move |c, m| Box::pin(f(c, m))));
    }

    /// Runs `f` on every message of type `t` (Veltix's `route`).
    ///
    /// # Errors
    /// [`SendError::ReservedType`] below 200; [`Error::RouteExists`] if `t`
    /// has a route already (the first stays).
    pub fn route<F, Fut>(&self, t: MessageType, f: F) -> Result<(), Error>
    where
        F: Fn(Client, Frame) -> Fut + Send + Sync + 'static,
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
            .insert(t, Arc::new(move |c, m| Box::pin(f(c, m))));
        Ok(())
    }

    /// Connects, retrying per the policy; returns once connected, or with
    /// the last error once the session gives up.
    ///
    /// # Errors
    /// [`Error::Refused`], [`Error::TimedOut`], [`Error::Rejected`],
    /// [`Error::VersionMismatch`], [`Error::Resolve`], ...
    pub async fn connect(&self) -> Result<(), Error> {
        let rx = {
            let mut st = self.state();
            if st.session.is_connected() {
                return Ok(());
            }
            st.session.connect(now());
            st.recv.closed = false;
            let (tx, rx) = oneshot::channel();
            st.connecting.push(tx);
            self.ensure_driver(&mut st);
            rx
        };
        self.inner().wake.notify_one();
        rx.await.unwrap_or(Err(Error::NotConnected))
    }

    /// Whether the handshake is done and the connection open.
    pub fn is_connected(&self) -> bool {
        self.state().session.is_connected()
    }

    /// Sends a message, waiting while the outbound queue is full, up to
    /// `timeout` (`None`: the config's `request_timeout`); returns its id.
    ///
    /// # Errors
    /// [`Error::TimedOut`] (`Wait::Send`) when no room came in time, else as
    /// [`try_send`](Self::try_send).
    pub async fn send(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<u16, Error> {
        let after = timeout.unwrap_or(self.inner().config.request_timeout);
        let deadline = tokio::time::Instant::now() + after;
        let payload = payload.into();
        loop {
            let room = self.inner().room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(t, payload.clone()) {
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
    pub fn try_send(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        let id = self.state().session.send(t, payload)?;
        self.inner().wake.notify_one();
        Ok(id)
    }

    /// Like [`try_send`](Self::try_send), for any type, the protocol's
    /// reserved range (`0..200`) included: for tools and tests that must
    /// send what an application may not.
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    pub fn send_system(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        let id = self.state().session.send_system(t, payload)?;
        self.inner().wake.notify_one();
        Ok(id)
    }

    /// Answers `request` (same id) without waiting.
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    pub fn reply(
        &self,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        self.state().session.reply(request.request_id, t, payload)?;
        self.inner().wake.notify_one();
        Ok(())
    }

    async fn outcome(
        &self,
        start: impl FnOnce(&mut ClientSession) -> Result<u16, SendError>,
    ) -> Result<Outcome, Error> {
        let (id, rx) = {
            let mut st = self.state();
            let id = start(&mut st.session)?;
            let (tx, rx) = oneshot::channel();
            st.waiters.insert(id, tx);
            (id, rx)
        };
        self.inner().wake.notify_one();
        let mut pending = Pending {
            inner: self.inner(),
            id,
            done: false,
        };
        let r = rx.await;
        pending.done = true;
        r.map_err(|_| Error::NotConnected)
    }

    /// Sends a request and waits for the reply (same id), up to `timeout`
    /// (`None`: `request_timeout`). The deadline is the core's: it fires
    /// whether or not anybody takes events. Dropping the future forgets the
    /// request.
    ///
    /// # Errors
    /// [`Error::TimedOut`] (`Wait::Request`), [`Error::Closed`], or as `try_send`.
    #[doc(alias = "send_and_wait")]
    pub async fn request(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        let after = timeout.unwrap_or(self.inner().config.request_timeout);
        let payload = payload.into();
        match self
            .outcome(|s| s.request(now(), t, payload, after))
            .await?
        {
            Ok(Reply::Frame(f)) => Ok(f),
            Ok(_) => Err(Error::NotConnected),
            Err(f) => Err(Error::from_request_failure(f, Wait::Request, after)),
        }
    }

    /// PINGs the server; returns the round-trip time.
    ///
    /// # Errors
    /// [`Error::TimedOut`] (`Wait::Ping`), [`Error::Closed`], or as `try_send`.
    #[doc(alias = "ping_server")]
    pub async fn ping(&self, timeout: Option<Duration>) -> Result<Duration, Error> {
        let after = timeout.unwrap_or(self.inner().config.request_timeout);
        match self.outcome(|s| s.ping(now(), after)).await? {
            Ok(Reply::Pong(rtt)) => Ok(rtt),
            Ok(_) => Err(Error::NotConnected),
            Err(f) => Err(Error::from_request_failure(f, Wait::Ping, after)),
        }
    }

    /// Starts a fresh retry loop with `max` attempts (default: the
    /// config's), unless connected or connecting (Veltix's `retry(max_)`).
    pub fn retry(&self, max: Option<u32>) {
        {
            let mut st = self.state();
            st.session.retry(now(), max);
            if st.session.is_connecting() {
                st.recv.closed = false;
                self.ensure_driver(&mut st);
            }
        }
        self.inner().wake.notify_one();
    }

    /// Cancels the retry loop (Veltix's `stop_retry()`).
    pub fn stop_retry(&self) {
        self.state().session.stop_retry(now());
        self.inner().wake.notify_one();
    }

    /// Closes the connection (queued output drains within the config's
    /// flush deadline), stops retrying, and waits for the client's task,
    /// within that deadline. `true` if a connection was open.
    pub async fn disconnect(&self) -> bool {
        let deadline =
            tokio::time::Instant::now() + self.inner().config.deadlines.flush_timeout + SLACK;
        let (was, driver) = {
            let mut st = self.state();
            let was = st.session.is_connected();
            st.session.disconnect(now());
            (was, st.driver.take())
        };
        self.inner().wake.notify_one();
        if let Some(mut task) = driver {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("disconnect: flush deadline passed, cutting");
                task.abort();
                let _ = task.await;
                let mut st = self.state();
                let aborted = std::io::Error::from(ErrorKind::ConnectionAborted);
                st.session.handle_transport_error(now(), &aborted);
                st.running = false;
                st.peer_addr = None;
                st.local_addr = None;
                st.tls = None;
                st.pump(self.inner(), true);
                st.recv.closed = true;
                drop(st);
                self.inner().recv_ready.notify_waiters();
                self.inner().room.notify_waiters();
                self.inner().closed.notify_waiters();
            }
        }
        was
    }

    /// Waits until the client is neither connected nor connecting (it gave
    /// up, or was disconnected).
    pub async fn wait_closed(&self) {
        loop {
            let closed = self.inner().closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            {
                let st = self.state();
                if !st.running || (st.is_idle() && !st.session.is_connected()) {
                    return;
                }
            }
            closed.await;
        }
    }

    /// The server's hello, while connected.
    pub fn server_hello(&self) -> Option<PeerHello> {
        self.state().session.peer_hello().cloned()
    }

    /// Who we authenticated as (and whether the server proved itself:
    /// [`Negotiated::server_verified`](veltix_proto::Negotiated)), while
    /// connected; `None` when connected anonymously.
    pub fn identity(&self) -> Option<veltix_proto::Identity> {
        self.server_hello().and_then(|h| h.negotiated.identity)
    }

    /// The server's address, while a connection is open.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.state().peer_addr
    }

    /// Our address, while a connection is open.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.state().local_addr
    }

    /// What the connection's TLS handshake negotiated (protocol, cipher
    /// suite, ALPN, the server certificate's identity), while connected
    /// over TLS.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        self.state().tls.clone()
    }

    /// Whether this client requires TLS ([`with_tls`](Self::with_tls)).
    pub fn is_tls(&self) -> bool {
        self.inner().tls.is_some()
    }

    /// Counters of the connection; `None` while not connected.
    pub fn stats(&self) -> Option<ConnectionStats> {
        let st = self.state();
        st.session
            .is_connected()
            .then(|| st.session.stats())
            .flatten()
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner().config
    }

    /// The next event no handler consumed; `None` once the client stopped
    /// (disconnected or gave up) and everything was taken.
    pub async fn recv(&self) -> Option<ClientEvent> {
        loop {
            let ready = self.inner().recv_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut st = self.state();
                if let Some((e, resumed)) = st.recv.pop() {
                    if resumed {
                        self.inner().wake.notify_one();
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
}
