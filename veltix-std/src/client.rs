//! The blocking [`Client`].

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use veltix_proto::retry::{NextStep, Reconnect};
use veltix_proto::{
    ClientConfig, CloseReason, Connection, ConnectionConfig, DisconnectReason, DisconnectState,
    Frame, MessageType, PeerHello, Router,
};

use crate::link::{Link, Sink};
use crate::pool::{lock, Mailbox, Pool};
use veltix_proto::Error;

type ConnectFn = dyn Fn(&Client) + Send + Sync;
type DisconnectFn = dyn Fn(&Client, &DisconnectState) + Send + Sync;
type MessageFn = dyn Fn(&Client, Frame) + Send + Sync;

#[derive(Default)]
struct Callbacks {
    on_connect: Option<Arc<ConnectFn>>,
    on_disconnect: Option<Arc<DisconnectFn>>,
    router: Router<Arc<MessageFn>>,
}

struct State {
    link: Option<Arc<Link>>,
    /// Links that ended, to join.
    old_links: Vec<Arc<Link>>,
    pool: Option<Arc<Pool>>,
    reconnect: Reconnect,
    /// `disconnect()` was called: no more attempts, no more reports.
    manual: bool,
    /// `stop_retry()` was called.
    stop_retry: bool,
    supervisor: Option<JoinHandle<()>>,
}

struct Inner {
    config: ClientConfig,
    connection: Arc<ConnectionConfig>,
    callbacks: RwLock<Callbacks>,
    state: Mutex<State>,
    /// Wakes a retry delay early (`stop_retry`, `disconnect`).
    wake: Condvar,
    mailbox: Arc<Mailbox>,
}

/// A Veltix client on std threads.
///
/// `connect` blocks until the handshake is done. Messages that answer no
/// `send_and_wait` go to the route of their type or to `on_recv`, on a pool
/// of `max_workers` threads, one at a time and in arrival order.
/// A dropped connection is retried per `retry`/`retry_delay` (and the
/// optional backoff), with every step reported to `on_disconnect`.
///
/// ```no_run
/// use std::time::Duration;
/// use veltix_std::{Client, ClientConfig, MessageType};
///
/// let client = Client::new(ClientConfig::new("127.0.0.1", 8080).retry(3)).unwrap();
/// client.on_recv(|_client, msg| println!("got {:?}", msg.text()));
/// client.connect().unwrap();
/// let reply = client.send_and_wait(MessageType::new(200), "hello", None).unwrap();
/// println!("reply: {}", reply.text().unwrap());
/// println!("rtt: {:?}", client.ping_server(None));
/// client.disconnect();
/// ```
#[derive(Clone)]
pub struct Client(Arc<Inner>);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "server",
                &format_args!("{}:{}", self.0.config.server_addr, self.0.config.port),
            )
            .field("connected", &self.is_connected())
            .finish()
    }
}

struct ClientSink {
    client: Weak<Inner>,
    pool: Arc<Pool>,
}

impl Sink for ClientSink {
    fn connected(&self, _link: &Arc<Link>, _peer: PeerHello) {}

    fn messages(&self, _link: &Arc<Link>, frames: Vec<Frame>) {
        let Some(inner) = self.client.upgrade() else {
            return;
        };
        let client = Client(inner.clone());
        let guard = self.pool.guard();
        inner.mailbox.post(
            &self.pool,
            Box::new(move || {
                for f in frames {
                    let handler = client.callbacks_read().router.handler(f.message_type).cloned();
                    match handler {
                        Some(h) => guard.call("route/on_recv", || h(&client, f)),
                        None => tracing::debug!(message_type = %f.message_type, "no handler; message dropped"),
                    }
                }
            }),
        );
    }

    fn closed(&self, link: &Arc<Link>, reason: CloseReason, was_established: bool) {
        let Some(inner) = self.client.upgrade() else {
            return;
        };
        let client = Client(inner);
        let mut st = lock(&client.0.state);
        if st.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
            st.link = None;
            st.old_links.push(link.clone());
        }
        if !was_established || st.manual || reason == CloseReason::Local {
            return;
        }
        tracing::info!(%reason, "connection lost");
        let c = client.clone();
        let spawned = std::thread::Builder::new()
            .name("veltix-reconnect".into())
            .spawn(move || {
                let _ = c.retry_loop(
                    Some((Error::Closed(reason), DisconnectReason::ServerClosed)),
                    false,
                );
            });
        match spawned {
            Ok(h) => {
                if let Some(old) = st.supervisor.replace(h) {
                    // The previous loop has ended (it spawned this link); reap it.
                    drop(st);
                    let _ = old.join();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot start the reconnect thread"),
        }
    }
}

impl Client {
    /// A client (not connected yet).
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid setting.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        config.validate()?;
        let seed = config.retry_seed.unwrap_or_else(|| {
            // Jitter only: a weak seed from the clock is fine here.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        Ok(Client(Arc::new(Inner {
            connection: config.connection_config(),
            state: Mutex::new(State {
                link: None,
                old_links: Vec::new(),
                pool: None,
                reconnect: Reconnect::new(config.retry_policy(), seed),
                manual: false,
                stop_retry: false,
                supervisor: None,
            }),
            config,
            callbacks: RwLock::new(Callbacks::default()),
            wake: Condvar::new(),
            mailbox: Arc::new(Mailbox::default()),
        })))
    }

    fn callbacks_read(&self) -> std::sync::RwLockReadGuard<'_, Callbacks> {
        self.0.callbacks.read().unwrap_or_else(|e| e.into_inner())
    }
    fn callbacks(&self) -> std::sync::RwLockWriteGuard<'_, Callbacks> {
        self.0.callbacks.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Called after every successful connect (first one and reconnects).
    pub fn on_connect(&self, f: impl Fn(&Client) + Send + Sync + 'static) {
        self.callbacks().on_connect = Some(Arc::new(f));
    }
    /// Called with Veltix's `DisconnectState` at every failure and retry step.
    pub fn on_disconnect(&self, f: impl Fn(&Client, &DisconnectState) + Send + Sync + 'static) {
        self.callbacks().on_disconnect = Some(Arc::new(f));
    }
    /// Called for every message no route claims.
    pub fn on_recv(&self, f: impl Fn(&Client, Frame) + Send + Sync + 'static) {
        self.callbacks().router.set_fallback(Arc::new(f));
    }
    /// Routes one message type to a handler; `false` if it already has one.
    pub fn route(
        &self,
        message_type: MessageType,
        f: impl Fn(&Client, Frame) + Send + Sync + 'static,
    ) -> bool {
        self.callbacks().router.route(message_type, Arc::new(f))
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.0.config
    }

    fn fire_connect(&self) {
        let cb = self.callbacks_read().on_connect.clone();
        if let Some(cb) = cb {
            if catch_unwind(AssertUnwindSafe(|| cb(self))).is_err() {
                tracing::error!("on_connect panicked");
            }
        }
    }

    fn fire_disconnect(&self, state: &DisconnectState) {
        tracing::debug!(?state, "disconnect state");
        let cb = self.callbacks_read().on_disconnect.clone();
        if let Some(cb) = cb {
            if catch_unwind(AssertUnwindSafe(|| cb(self, state))).is_err() {
                tracing::error!("on_disconnect panicked");
            }
        }
    }

    fn resolve(&self) -> Result<SocketAddr, Error> {
        let c = &self.0.config;
        let name = format!("{}:{}", c.server_addr, c.port);
        (c.server_addr.as_str(), c.port)
            .to_socket_addrs()
            .map_err(|_| Error::Resolve(name.clone()))?
            .next()
            .ok_or(Error::Resolve(name))
    }

    /// One TCP connect and handshake.
    fn dial(&self, pool: &Arc<Pool>) -> Result<Arc<Link>, Error> {
        let addr = self.resolve()?;
        let timeout = self.0.config.handshake_timeout;
        let sock = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Error::from_connect(e, addr, timeout))?;
        let conn = Connection::client(self.0.connection.clone(), Instant::now());
        let sink = Arc::new(ClientSink {
            client: Arc::downgrade(&self.0),
            pool: pool.clone(),
        });
        let link = Link::spawn(sock, conn, sink, self.0.config.buffer_size, "veltix-client")?;
        match link.wait_established() {
            Ok(_) => Ok(link),
            Err(reason) => {
                link.join();
                Err(Error::from_handshake_close(reason, timeout))
            }
        }
    }

    /// Sleeps `d` unless stopped; `false` if `stop_retry`/`disconnect` interrupted it.
    fn sleep_unless_stopped(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut st = lock(&self.0.state);
        loop {
            if st.manual || st.stop_retry {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            st = self
                .0
                .wake
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Dials until connected or the policy gives up. `first` is a failure
    /// that already happened (a dropped session).
    fn retry_loop(
        &self,
        mut first: Option<(Error, DisconnectReason)>,
        initial: bool,
    ) -> Result<(), Error> {
        loop {
            if let Some((err, reason)) = first.take() {
                let step = {
                    let mut st = lock(&self.0.state);
                    if st.manual {
                        return Err(err);
                    }
                    st.reconnect.on_failure(reason.clone())
                };
                for r in &step.reports {
                    self.fire_disconnect(r);
                }
                match step.next {
                    NextStep::GiveUp => return Err(err),
                    NextStep::RetryAfter(d) => {
                        if !self.sleep_unless_stopped(d) {
                            let report = {
                                let mut st = lock(&self.0.state);
                                (!st.manual).then(|| st.reconnect.stop(reason))
                            };
                            if let Some(r) = report {
                                self.fire_disconnect(&r);
                            }
                            return Err(err);
                        }
                    }
                }
            }
            let pool = {
                let mut st = lock(&self.0.state);
                if st.manual {
                    return Err(Error::NotConnected);
                }
                match &st.pool {
                    Some(p) => p.clone(),
                    None => {
                        let p = Arc::new(Pool::new(self.0.config.max_workers, "veltix-client")?);
                        st.pool = Some(p.clone());
                        p
                    }
                }
            };
            match self.dial(&pool) {
                Ok(link) => {
                    {
                        let mut st = lock(&self.0.state);
                        if st.manual {
                            drop(st);
                            link.close();
                            link.join();
                            return Err(Error::NotConnected);
                        }
                        st.link = Some(link);
                        st.reconnect.on_success();
                    }
                    tracing::info!(server = %format_args!("{}:{}", self.0.config.server_addr, self.0.config.port), "connected");
                    self.fire_connect();
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connect attempt failed");
                    let reason = e.disconnect_reason(initial);
                    first = Some((e, reason));
                }
            }
        }
    }

    /// Connects and completes the handshake, retrying per the policy.
    /// A rejection (`server_full`) on this first connect is returned at once.
    ///
    /// # Errors
    /// [`Error::Refused`], [`Error::TimedOut`], [`Error::Rejected`],
    /// [`Error::VersionMismatch`], [`Error::Handshake`], ... (the last failure).
    pub fn connect(&self) -> Result<(), Error> {
        {
            let mut st = lock(&self.0.state);
            if st.link.as_ref().is_some_and(|l| l.is_established()) {
                return Ok(());
            }
            st.manual = false;
            st.stop_retry = false;
        }
        self.retry_loop(None, true)
    }

    /// Starts a fresh retry loop in the background (Veltix's `retry(max_)`),
    /// with `max` attempts (default: the config's `retry`).
    ///
    /// # Errors
    /// [`Error::Io`] if the thread cannot be spawned.
    pub fn retry(&self, max: Option<u32>) -> Result<(), Error> {
        let mut st = lock(&self.0.state);
        if st.link.as_ref().is_some_and(|l| l.is_established()) {
            return Ok(());
        }
        st.manual = false;
        st.stop_retry = false;
        st.reconnect.restart(max);
        let c = self.clone();
        let h = std::thread::Builder::new()
            .name("veltix-reconnect".into())
            .spawn(move || {
                let _ = c.retry_loop(None, false);
            })?;
        if let Some(old) = st.supervisor.replace(h) {
            drop(st);
            let _ = old.join();
        }
        Ok(())
    }

    /// Cancels a running retry loop (it reports a permanent state).
    pub fn stop_retry(&self) {
        lock(&self.0.state).stop_retry = true;
        self.0.wake.notify_all();
    }

    /// Whether the handshake is done and the connection open.
    pub fn is_connected(&self) -> bool {
        lock(&self.0.state)
            .link
            .as_ref()
            .is_some_and(|l| l.is_established())
    }

    fn link(&self) -> Result<Arc<Link>, Error> {
        lock(&self.0.state)
            .link
            .clone()
            .filter(|l| l.is_established())
            .ok_or(Error::NotConnected)
    }

    /// Sends a message; returns its request id.
    ///
    /// # Errors
    /// [`Error::NotConnected`], or the core's refusal ([`Error::Send`]).
    pub fn send(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        self.link()?.send(t, payload.into())
    }

    /// Answers `request` with the same id.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn reply(
        &self,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        self.link()?
            .send_with_id(t, request.request_id, payload.into())
    }

    /// Sends a request and waits for the first frame carrying its id.
    /// `None` uses the config's `request_timeout` (5 s).
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Closed`] (the connection dropped), ...
    pub fn send_and_wait(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        self.link()?.request(t, payload.into(), timeout)
    }

    /// PINGs the server: the round-trip time, or why there is none.
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::NotConnected`], [`Error::Closed`], ...
    pub fn ping(&self, timeout: Option<Duration>) -> Result<Duration, Error> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        self.link()?.ping(timeout)
    }

    /// The server's hello (`v`, `pv`, `meta`) of the current connection.
    pub fn server_hello(&self) -> Option<PeerHello> {
        self.link().ok().and_then(|l| l.peer_hello())
    }

    /// PINGs the server: the round-trip time, or `None` on timeout or error
    /// (Veltix's `ping_server`; [`ping`](Self::ping) says why).
    pub fn ping_server(&self, timeout: Option<Duration>) -> Option<Duration> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        self.link().and_then(|l| l.ping(timeout)).ok()
    }

    /// Closes the connection (queued frames are flushed first), stops any
    /// retry, reports `(permanent, Manual)` and waits for every thread of this
    /// client to end. Returns whether a connection was open.
    pub fn disconnect(&self) -> bool {
        let (link, supervisor, pool, old, attempt, retry_max) = {
            let mut st = lock(&self.0.state);
            st.manual = true;
            (
                st.link.take(),
                st.supervisor.take(),
                st.pool.take(),
                std::mem::take(&mut st.old_links),
                st.reconnect.attempt(),
                st.reconnect.budget(),
            )
        };
        self.0.wake.notify_all();
        let me = std::thread::current().id();
        if let Some(h) = supervisor {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
        let was_connected = link.is_some();
        for l in link.iter().chain(old.iter()) {
            l.close();
            l.join();
        }
        // Links that ended while we were joining.
        // (Taken outside the loop: a closing reader needs this lock.)
        let ended = std::mem::take(&mut lock(&self.0.state).old_links);
        for l in ended {
            l.join();
        }
        if was_connected {
            self.fire_disconnect(&DisconnectState {
                permanent: true,
                attempt,
                retry_max,
                reason: DisconnectReason::Manual,
            });
        }
        if let Some(p) = pool {
            p.shutdown();
        }
        was_connected
    }

    /// Counters of the current connection's core.
    pub fn stats(&self) -> Option<veltix_proto::ConnectionStats> {
        self.link().ok().map(|l| l.stats())
    }

    /// The server's address of the current connection.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.link().ok().map(|l| l.peer_addr())
    }
}
