//! The blocking [`Client`]: the core's [`ClientSession`] behind one mutex,
//! one mio I/O thread that dials and moves bytes, callbacks on the pool.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Poll, Token, Waker};
use veltix_proto::{
    ClientConfig, ClientSession, CloseReason, ConnectionStats, DisconnectState, Error, Frame,
    MessageType, PeerHello, Reply, Router, SendError, Wait,
};
use veltix_tls::{ClientTls, TlsInfo};

use crate::pool::{lock, wait_until, Mailbox, Pool, MAILBOX_BYTES};
use crate::server::WAIT_MARGIN;

mod connector;
mod io_loop;
use self::connector::AnyConnector;
pub use self::connector::{Connector, TcpConnector};
use self::io_loop::ClientIo;

const WAKER: Token = Token(0);
const CONN: Token = Token(1);

type ConnectFn = dyn Fn(&Client) + Send + Sync;
type DisconnectFn = dyn Fn(&Client, &DisconnectState) + Send + Sync;
type MessageFn = dyn Fn(&Client, Frame) + Send + Sync;

#[derive(Default)]
struct Callbacks {
    on_connect: Option<Arc<ConnectFn>>,
    on_disconnect: Option<Arc<DisconnectFn>>,
    router: Router<Arc<MessageFn>>,
}

/// Everything under the one lock: the core and what waiters need.
struct Core {
    session: ClientSession,
    /// Requests and pings with a blocked caller: their outcome, once known.
    waiting: crate::pool::Waiting<u16>,
    waker: Option<Arc<Waker>>,
    wake_pending: bool,
    /// The I/O thread runs (or is starting).
    io_running: bool,
    /// `disconnect` gave up waiting for a graceful end: drop everything.
    abort: bool,
    /// Bumped with every connect outcome (Connected or GaveUp), after the
    /// callbacks queued before it ran.
    outcome_gen: u64,
    outcome: Option<Result<(), Error>>,
    peer_addr: Option<SocketAddr>,
    local_addr: Option<SocketAddr>,
    /// What the open connection's TLS handshake negotiated.
    tls: Option<TlsInfo>,
}

impl Core {
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
    fn idle(&self) -> bool {
        !self.session.is_connected()
            && !self.session.is_connecting()
            && self.session.transport().is_none()
    }
}

#[derive(Default)]
struct Control {
    io: Option<JoinHandle<()>>,
    pool: Option<(Arc<Pool>, Arc<Mailbox>)>,
}

struct Shared {
    config: ClientConfig,
    /// Opens each connection (TCP unless the client was built with another).
    connector: Box<dyn AnyConnector>,
    /// TLS required when set.
    tls: Option<ClientTls>,
    core: Mutex<Core>,
    /// Signalled on outcomes, written output, connect results, the I/O thread's end.
    cv: Condvar,
    callbacks: RwLock<Callbacks>,
    control: Mutex<Control>,
    /// The current I/O thread's waker, for the mailbox's "room again" hook.
    waker_slot: Arc<Mutex<Option<Arc<Waker>>>>,
}

/// A Veltix client on std threads.
///
/// The reconnect policy, attempts and `on_disconnect` reports are the
/// core's [`ClientSession`]; one I/O thread (a `mio` readiness loop) dials
/// and moves bytes while the client connects or is connected. Messages that
/// answer no `request` go to the route of their type or to `on_recv`, on a
/// pool of up to `max_workers` threads (started on demand), one at a time and in arrival order.
///
/// The I/O thread and the pool run while the client connects or is
/// connected, even if every handle is dropped: end with
/// [`disconnect`](Self::disconnect).
///
/// ```no_run
/// use std::time::Duration;
/// use veltix_std::{Client, ClientConfig, MessageType};
///
/// let client = Client::new(ClientConfig::new("127.0.0.1", 8080).retry(3)).unwrap();
/// client.on_recv(|_client, msg| println!("got {:?}", msg.text()));
/// client.connect().unwrap();
/// let reply = client.request(MessageType::new(200), "hello", None).unwrap();
/// println!("reply: {}", reply.text().unwrap());
/// println!("rtt: {:?}", client.ping(None));
/// client.disconnect();
/// ```
#[derive(Clone)]
pub struct Client(Arc<Shared>);

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

fn reserved(t: MessageType) -> Result<(), Error> {
    if t.is_system() {
        Err(Error::Send(SendError::ReservedType(t)))
    } else {
        Ok(())
    }
}

impl Client {
    /// A client (validated, not connected; no I/O) that dials TCP:
    /// [`with_connector`](Self::with_connector)`(config, TcpConnector, None)`.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid setting.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        Self::with_connector(config, TcpConnector, None)
    }

    /// A client that requires TLS: every connection starts with a TLS
    /// handshake (inside the handshake deadline), verifying the server's
    /// certificate for the name set in `tls`, else the config's
    /// `server_addr`. A server that does not speak TLS, or whose
    /// certificate does not verify, fails the attempt with [`Error::Tls`].
    /// [`with_connector`](Self::with_connector)`(config, TcpConnector, Some(tls))`.
    ///
    /// ```no_run
    /// use veltix_std::{Client, ClientConfig, ClientTls};
    ///
    /// let tls = ClientTls::builder().ca_pem_file("ca.pem")?.build()?;
    /// let client = Client::with_tls(ClientConfig::new("localhost", 8443), tls)?;
    /// client.connect()?;
    /// println!("{:?}", client.tls_info());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid setting, [`Error::Tls`] when the
    /// server name is neither a DNS name nor an IP address.
    pub fn with_tls(config: ClientConfig, tls: ClientTls) -> Result<Client, Error> {
        Self::with_connector(config, TcpConnector, Some(tls))
    }

    /// A client whose connections come from `connector` (a Unix socket, a
    /// stream handed over: any [`Connector`]) instead of a TCP dial of the
    /// config's `server_addr:port`, which it is given. With `tls`, every
    /// connection runs TLS over the connector's stream, as
    /// [`with_tls`](Self::with_tls) does over TCP (the server name checked
    /// is the one set in `tls`, else `server_addr`).
    ///
    /// See [`Connector`] for a Unix-socket connector, and
    /// [`Server::start_on`](crate::Server::start_on) for both sides.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid setting, [`Error::Tls`] (with `tls`)
    /// when the server name is neither a DNS name nor an IP address.
    pub fn with_connector(
        config: ClientConfig,
        connector: impl Connector,
        tls: Option<ClientTls>,
    ) -> Result<Client, Error> {
        if let Some(tls) = &tls {
            tls.name_for(&config.server_addr)?;
        }
        config.validate()?;
        if config.auth.is_some() {
            config.seed_auth(crate::os_seed()?);
        }
        let seed = config.retry_seed.unwrap_or_else(|| {
            // Jitter only: a weak seed from the clock is fine here.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let session = ClientSession::new(&config, seed, Instant::now());
        Ok(Client(Arc::new(Shared {
            config,
            connector: Box::new(connector),
            tls,
            core: Mutex::new(Core {
                session,
                waiting: HashMap::new(),
                waker: None,
                wake_pending: false,
                io_running: false,
                abort: false,
                outcome_gen: 0,
                outcome: None,
                peer_addr: None,
                local_addr: None,
                tls: None,
            }),
            cv: Condvar::new(),
            callbacks: RwLock::new(Callbacks::default()),
            control: Mutex::new(Control::default()),
            waker_slot: Arc::new(Mutex::new(None)),
        })))
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.0.core)
    }
    fn callbacks_read(&self) -> std::sync::RwLockReadGuard<'_, Callbacks> {
        self.0.callbacks.read().unwrap_or_else(|e| e.into_inner())
    }
    fn callbacks(&self) -> std::sync::RwLockWriteGuard<'_, Callbacks> {
        self.0.callbacks.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Called after every successful connect (the first one and reconnects).
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
    /// Routes one message type to a handler.
    ///
    /// # Errors
    /// [`Error::Send`]`(`[`SendError::ReservedType`]`)` below 200,
    /// [`Error::RouteExists`] if the type has a route (the first one stays).
    pub fn route(
        &self,
        t: MessageType,
        f: impl Fn(&Client, Frame) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        reserved(t)?;
        if self.callbacks().router.route(t, Arc::new(f)) {
            Ok(())
        } else {
            Err(Error::RouteExists(t))
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.0.config
    }

    /// Starts the pool and the I/O thread if they are not running, and wakes it.
    fn ensure_running(&self) -> Result<(), Error> {
        let mut ctl = lock(&self.0.control);
        if ctl.pool.is_none() {
            let pool = Arc::new(Pool::new(self.0.config.max_workers, "veltix-client")?);
            let slot = self.0.waker_slot.clone();
            // Weak: the mailbox lives in this client's own state.
            let weak = Arc::downgrade(&self.0);
            let mailbox = Mailbox::new(
                MAILBOX_BYTES,
                move |f: Frame| {
                    let Some(shared) = weak.upgrade() else { return };
                    let client = Client(shared);
                    match client.handler(f.message_type) {
                        Some(h) => h(&client, f),
                        None => {
                            tracing::debug!(message_type = %f.message_type, "no handler; message dropped")
                        }
                    }
                },
                move || {
                    if let Some(w) = lock(&slot).as_ref() {
                        let _ = w.wake();
                    }
                },
            );
            ctl.pool = Some((pool, mailbox));
        }
        let (pool, mailbox) = ctl.pool.clone().expect("set above");
        let mut g = self.core();
        if g.io_running {
            g.wake();
            return Ok(());
        }
        if let Some(h) = ctl.io.take() {
            // It has decided to exit (under the lock) and no longer needs it.
            drop(g);
            let _ = h.join();
            g = self.core();
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        g.waker = Some(waker.clone());
        g.wake_pending = false;
        g.io_running = true;
        g.abort = false;
        drop(g);
        *lock(&self.0.waker_slot) = Some(waker.clone());
        let mut io = ClientIo {
            client: self.clone(),
            poll,
            pool,
            mailbox,
            conn: None,
            tls_failure: None,
            held: VecDeque::new(),
            buf: vec![0; self.0.config.buffer_size],
        };
        let spawned = std::thread::Builder::new()
            .name("veltix-client-io".into())
            .spawn(move || io.run());
        match spawned {
            Ok(h) => {
                ctl.io = Some(h);
                Ok(())
            }
            Err(e) => {
                let mut g = self.core();
                g.io_running = false;
                g.waker = None;
                g.session.disconnect(Instant::now());
                Err(Error::Io(e))
            }
        }
    }

    /// Connects and completes the handshake, retrying per the policy.
    /// Returns once connected (after `on_connect` ran) or once the session
    /// gave up (after the `on_disconnect` reports ran). A rejection
    /// (`server_full`) on this first connect is final at once. Do not call
    /// it from a callback of this client (it would wait for itself).
    ///
    /// # Errors
    /// The last failure: [`Error::Refused`], [`Error::TimedOut`],
    /// [`Error::Rejected`], [`Error::VersionMismatch`], [`Error::Handshake`], ...
    pub fn connect(&self) -> Result<(), Error> {
        let gen = {
            let mut g = self.core();
            if g.session.is_connected() {
                return Ok(());
            }
            g.session.connect(Instant::now());
            g.outcome_gen
        };
        self.ensure_running()?;
        let mut g = self.core();
        while g.outcome_gen == gen {
            g = wait_until(&self.0.cv, g, None);
        }
        g.outcome.take().unwrap_or(Ok(()))
    }

    /// Starts a fresh retry loop in the background (Veltix's `retry(max_)`)
    /// with `max` attempts (default: the config's `retry`). No-op while
    /// connected or connecting.
    pub fn retry(&self, max: Option<u32>) {
        self.core().session.retry(Instant::now(), max);
        if let Err(e) = self.ensure_running() {
            tracing::error!(error = %e, "cannot start the client's I/O thread");
        }
    }

    /// Cancels a running retry loop (it reports a permanent state); if none
    /// runs, the next failure is final.
    pub fn stop_retry(&self) {
        let mut g = self.core();
        g.session.stop_retry(Instant::now());
        g.wake();
    }

    /// Whether the handshake is done and the connection open.
    pub fn is_connected(&self) -> bool {
        self.core().session.is_connected()
    }

    /// Sends a message, waiting while the outbound queue is full, up to
    /// `timeout` (`None`: the config's `request_timeout`).
    ///
    /// # Errors
    /// [`Error::TimedOut`]`{ what: Wait::Send, .. }`, [`Error::NotConnected`],
    /// [`Error::Closed`], [`Error::Send`].
    pub fn send(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<u16, Error> {
        let payload = payload.into();
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        // The clock is read only once the queue turns out full (the wait
        // starts there): on this VM reading it is a system call, and the
        // usual send is a short critical section and nothing else.
        let mut start = None;
        let mut g = self.core();
        loop {
            match g.session.send(t, payload.clone()) {
                Ok(id) => {
                    g.wake();
                    return Ok(id);
                }
                Err(SendError::QueueFull { .. }) => {
                    let now = Instant::now();
                    let deadline = *start.get_or_insert(now) + timeout;
                    if now >= deadline {
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

    /// Sends a message without waiting.
    ///
    /// # Errors
    /// [`Error::Send`]`(`[`SendError::QueueFull`]`)` when the queue is full,
    /// [`Error::NotConnected`], ...
    pub fn try_send(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        let mut g = self.core();
        let id = g.session.send(t, payload)?;
        g.wake();
        Ok(id)
    }

    /// Like [`try_send`](Self::try_send), for any type, the protocol's
    /// reserved range (`0..200`) included: for tools and tests that must
    /// send what an application may not.
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    pub fn send_system(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        let mut g = self.core();
        let id = g.session.send_system(t, payload)?;
        g.wake();
        Ok(id)
    }

    /// Answers `request` with the same id (without waiting).
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send).
    pub fn reply(
        &self,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let mut g = self.core();
        g.session.reply(request.request_id, t, payload)?;
        g.wake();
        Ok(())
    }

    fn wait_outcome<'a>(
        &'a self,
        g: MutexGuard<'a, Core>,
        id: u16,
        what: Wait,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<Reply, Error> {
        crate::pool::wait_outcome(
            &self.0.core,
            &self.0.cv,
            g,
            |c| &mut c.waiting,
            id,
            |c| {
                c.session.cancel_request(id);
            },
            (what, timeout, deadline),
        )
    }

    /// Sends a request and waits for the frame carrying its id. `None`:
    /// the config's `request_timeout`.
    ///
    /// # Errors
    /// [`Error::TimedOut`]`{ what: Wait::Request, .. }`, [`Error::Closed`]
    /// (the connection dropped), [`Error::NotConnected`], ...
    #[doc(alias = "send_and_wait")]
    pub fn request(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        let now = Instant::now();
        let mut g = self.core();
        let id = g.session.request(now, t, payload, timeout)?;
        g.waiting.insert(id, None);
        g.wake();
        match self.wait_outcome(g, id, Wait::Request, timeout, now + timeout + WAIT_MARGIN)? {
            Reply::Frame(f) => Ok(f),
            _ => Err(Error::Closed(CloseReason::Local)),
        }
    }

    /// PINGs the server: the round-trip time.
    ///
    /// # Errors
    /// [`Error::TimedOut`]`{ what: Wait::Ping, .. }`, [`Error::NotConnected`],
    /// [`Error::Closed`], ...
    #[doc(alias = "ping_server")]
    pub fn ping(&self, timeout: Option<Duration>) -> Result<Duration, Error> {
        let timeout = timeout.unwrap_or(self.0.config.request_timeout);
        let now = Instant::now();
        let mut g = self.core();
        let id = g.session.ping(now, timeout)?;
        g.waiting.insert(id, None);
        g.wake();
        match self.wait_outcome(g, id, Wait::Ping, timeout, now + timeout + WAIT_MARGIN)? {
            Reply::Pong(rtt) => Ok(rtt),
            _ => Err(Error::Closed(CloseReason::Local)),
        }
    }

    /// Closes the connection (queued output drains within the config's
    /// `deadlines.flush_timeout`), stops retrying, waits for the I/O thread
    /// and the pool. Messages not yet handed to a handler are dropped; the
    /// `(permanent, Manual)` report still runs. Bounded in time (unless a
    /// callback never returns). `true` if a connection was open.
    pub fn disconnect(&self) -> bool {
        let now = Instant::now();
        let limit = now + self.0.config.deadlines.flush_timeout + Duration::from_millis(250);
        let was = {
            let mut g = self.core();
            let was = g.session.is_connected();
            g.session.disconnect(now);
            g.wake();
            while g.io_running && Instant::now() < limit {
                g = wait_until(&self.0.cv, g, Some(limit));
            }
            if g.io_running {
                tracing::warn!("disconnect: the connection did not end in time; cutting it");
                g.abort = true;
                g.wake();
            }
            was
        };
        let (io, pool) = {
            let mut ctl = lock(&self.0.control);
            (ctl.io.take(), ctl.pool.take())
        };
        if let Some(h) = io {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        if let Some((pool, mailbox)) = pool {
            let dropped = mailbox.discard_messages();
            if dropped > 0 {
                tracing::debug!(dropped, "disconnect: messages not yet handled were dropped");
            }
            pool.shutdown();
        }
        was
    }

    /// Blocks until the client neither is connected nor connecting (it gave
    /// up or disconnected).
    pub fn wait_closed(&self) {
        let mut g = self.core();
        while !g.idle() {
            g = wait_until(&self.0.cv, g, None);
        }
    }

    /// The server's hello (`v`, `pv`, `meta`) of the current connection.
    pub fn server_hello(&self) -> Option<PeerHello> {
        self.core().session.peer_hello().cloned()
    }

    /// Who we authenticated as (and whether the server proved itself:
    /// [`Negotiated::server_verified`](veltix_proto::Negotiated)), while
    /// connected; `None` when connected anonymously.
    pub fn identity(&self) -> Option<veltix_proto::Identity> {
        self.server_hello().and_then(|h| h.negotiated.identity)
    }

    /// The server's address, while a connection is open.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.core().peer_addr
    }

    /// This side's address, while a connection is open.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.core().local_addr
    }

    /// What the connection's TLS handshake negotiated (protocol, cipher
    /// suite, ALPN, the server certificate's identity), while connected
    /// over TLS.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        self.core().tls.clone()
    }

    /// Whether this client requires TLS ([`with_tls`](Self::with_tls)).
    pub fn is_tls(&self) -> bool {
        self.0.tls.is_some()
    }

    /// Counters of the current connection; `None` while not connected.
    pub fn stats(&self) -> Option<ConnectionStats> {
        let g = self.core();
        if g.session.is_connected() {
            g.session.stats()
        } else {
            None
        }
    }

    fn handler(&self, t: MessageType) -> Option<Arc<MessageFn>> {
        self.callbacks_read().router.handler(t).cloned()
    }

    /// Records a connect outcome (from a job, after the callbacks before it).
    fn set_outcome(&self, r: Result<(), Error>) {
        let mut g = self.core();
        g.outcome_gen += 1;
        g.outcome = Some(r);
        drop(g);
        self.0.cv.notify_all();
    }
}
