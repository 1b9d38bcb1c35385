//! The async [`Client`]: one task drives the core [`ClientSession`] (retry
//! policy, attempts, reports, the connection) behind one mutex: it dials
//! when the session says so, moves bytes, and sleeps until the session's
//! next deadline. It runs only while connecting or connected.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use veltix_proto::{
    ClientConfig, ClientSession, ConnectionStats, DisconnectState, Error, Frame, MessageType,
    PeerHello, Reply, RequestFailure, SendError, SessionEvent, Wait,
};

use crate::dispatch::{BoxFut, Catch, Mailbox, RecvQueue, EVENT_OVERHEAD};
use crate::io::{self, Read, ReadBuf, Timer, WRITE_TURN};
use crate::{lock, now};

type ConnHandler = Arc<dyn Fn(Client) -> BoxFut + Send + Sync>;
type DiscHandler = Arc<dyn Fn(Client, DisconnectState) -> BoxFut + Send + Sync>;
type MsgHandler = Arc<dyn Fn(Client, Frame) -> BoxFut + Send + Sync>;
type Outcome = Result<Reply, RequestFailure>;
type DialFut = Pin<Box<dyn Future<Output = Result<(TcpStream, SocketAddr), Error>> + Send>>;

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
}

struct Inner {
    config: ClientConfig,
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

impl State {
    fn push_job(&mut self, inner: &Arc<Inner>, job: Job, cost: usize) {
        if self.mailbox.push(job, cost) {
            tokio::spawn(dispatch(inner.clone()));
        }
    }

    fn push_recv(&mut self, inner: &Inner, e: ClientEvent, cost: usize) {
        self.recv.push(e, cost);
        inner.recv_ready.notify_one();
    }

    /// Request outcomes always; other events while the handler and `recv`
    /// queues have room (or `force`): otherwise they stay in the core, which
    /// stops decoding and reading.
    fn pump(&mut self, inner: &Arc<Inner>, force: bool) {
        while let Some(e) = self.session.poll_completion() {
            self.route(inner, e);
        }
        while force || !(self.recv.is_over() || self.mailbox.is_over()) {
            let Some(e) = self.session.poll_event() else {
                break;
            };
            self.route(inner, e);
        }
        if self.session.is_connected() {
            for tx in self.connecting.drain(..) {
                let _ = tx.send(Ok(()));
            }
        }
    }

    fn route(&mut self, inner: &Arc<Inner>, e: SessionEvent) {
        match e {
            SessionEvent::Completed {
                request_id,
                outcome,
            } => {
                if let Some(tx) = self.waiters.remove(&request_id) {
                    let _ = tx.send(outcome);
                }
            }
            SessionEvent::Connected(hello) => {
                for tx in self.connecting.drain(..) {
                    let _ = tx.send(Ok(()));
                }
                match self.handlers.on_connect.clone() {
                    Some(h) => self.push_job(inner, Job::Connect(h), EVENT_OVERHEAD),
                    None => self.push_recv(inner, ClientEvent::Connected(hello), EVENT_OVERHEAD),
                }
            }
            SessionEvent::Message(f) => {
                let cost = EVENT_OVERHEAD + f.payload.len();
                let h = self.handlers.routes.get(&f.message_type);
                match h.or(self.handlers.on_recv.as_ref()).cloned() {
                    Some(h) => self.push_job(inner, Job::Message(f, h), cost),
                    None => self.push_recv(inner, ClientEvent::Message(f), cost),
                }
            }
            SessionEvent::Disconnected(d) => match self.handlers.on_disconnect.clone() {
                Some(h) => self.push_job(inner, Job::Disconnect(d, h), EVENT_OVERHEAD),
                None => self.push_recv(inner, ClientEvent::Disconnected(d), EVENT_OVERHEAD),
            },
            SessionEvent::GaveUp(error) => {
                tracing::debug!(%error, "client gave up connecting");
                let mut error = Some(error);
                for tx in self.connecting.drain(..) {
                    let _ = tx.send(Err(error.take().unwrap_or(Error::NotConnected)));
                }
            }
            _ => {}
        }
    }

    /// Neither connected nor connecting, no transport.
    fn is_idle(&self) -> bool {
        self.session.transport().is_none() && !self.session.is_connecting()
    }
}

/// Runs the handler jobs in order, then exits.
async fn dispatch(inner: Arc<Inner>) {
    let client = inner.owner.upgrade().map(Client);
    let mut batch = VecDeque::new();
    let mut lingered = false;
    loop {
        if batch.is_empty() {
            let linger = {
                let mut st = lock(&inner.state);
                if st.mailbox.is_empty() && !lingered {
                    // Wait one turn before exiting: the next event is
                    // usually about to come, and a spawn costs more.
                    true
                } else {
                    if st.mailbox.pop_batch(&mut batch) {
                        inner.wake.notify_one();
                    }
                    if batch.is_empty() {
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
        let Some(c) = &client else { continue };
        let fut = match job {
            Job::Connect(h) => h(c.clone()),
            Job::Message(f, h) => h(c.clone(), f),
            Job::Disconnect(d, h) => h(c.clone(), d),
        };
        if Catch(fut).await.is_err() {
            tracing::error!("a client handler panicked");
        }
    }
}

async fn dial(
    host: String,
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), Error> {
    let name = format!("{host}:{port}");
    let addrs = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|_| Error::Resolve(name.clone()))?;
    let mut last = Error::Resolve(name);
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok((s, addr));
            }
            Err(e) => last = Error::from_connect(e, addr, timeout),
        }
    }
    Err(last)
}

async fn dialed(d: &mut Option<(u64, DialFut)>) -> Result<(TcpStream, SocketAddr), Error> {
    match d {
        Some((_, f)) => f.await,
        None => std::future::pending().await,
    }
}

async fn readable(s: &Option<(u64, TcpStream)>) -> std::io::Result<()> {
    match s {
        Some((_, s)) => s.readable().await,
        None => std::future::pending().await,
    }
}

async fn writable(s: &Option<(u64, TcpStream)>) {
    match s {
        Some((_, s)) => {
            let _ = s.writable().await;
        }
        None => std::future::pending().await,
    }
}

/// The client's task: dials, moves bytes, fires deadlines, routes events;
/// exits once the session is neither connected nor connecting.
async fn drive(inner: Arc<Inner>) {
    let mut sock: Option<(u64, TcpStream)> = None;
    let mut dialing: Option<(u64, DialFut)> = None;
    let mut out = Bytes::new();
    let mut buf = ReadBuf::default();
    let mut timer = Timer::new();
    loop {
        let (read, deadline) = {
            let mut st = lock(&inner.state);
            let t = now();
            if st.session.next_timer().is_some_and(|d| d <= t) {
                st.session.handle_timeout(t);
            }
            if let Some(d) = st.session.poll_dial(t) {
                let c = &inner.config;
                let fut = dial(c.server_addr.clone(), c.port, c.handshake_timeout);
                dialing = Some((d.transport, Box::pin(fut)));
            }
            let current = st.session.transport();
            if sock.as_ref().is_some_and(|(id, _)| Some(*id) != current) {
                // The session is done with this transport: release it now.
                sock = None;
                out = Bytes::new();
                st.peer_addr = None;
                st.local_addr = None;
                inner.room.notify_waiters();
            }
            if dialing.as_ref().is_some_and(|(id, _)| Some(*id) != current) {
                dialing = None;
            }
            if sock.is_some() && out.is_empty() {
                out = st.session.poll_transmit().unwrap_or_default();
            }
            st.pump(&inner, false);
            if st.is_idle() {
                // Deliver everything left (a give-up answers `connect()`).
                st.pump(&inner, true);
                if !st.connecting.is_empty() {
                    // `connect()` was called while a disconnect was flushing.
                    st.session.connect(t);
                    drop(st);
                    continue;
                }
                st.running = false;
                st.recv.closed = true;
                drop(st);
                inner.recv_ready.notify_waiters();
                inner.room.notify_waiters();
                inner.closed.notify_waiters();
                return;
            }
            (
                sock.is_some() && st.session.wants_input(),
                st.session.next_timer(),
            )
        };
        // Output: as much as the socket takes now, reported piece by piece.
        let mut turn = 0;
        let mut failed = false;
        if let Some((_, s)) = &sock {
            while !out.is_empty() && turn < WRITE_TURN {
                match io::write(s, &mut out) {
                    Ok(0) => break,
                    Ok(n) => {
                        turn += n;
                        let mut st = lock(&inner.state);
                        st.session.handle_written(now(), n);
                        if out.is_empty() {
                            out = st.session.poll_transmit().unwrap_or_default();
                        }
                    }
                    Err(e) => {
                        lock(&inner.state).session.handle_transport_error(now(), &e);
                        out = Bytes::new();
                        failed = true;
                    }
                }
            }
        }
        if turn > 0 {
            inner.room.notify_waiters();
        }
        if failed || turn >= WRITE_TURN {
            tokio::task::yield_now().await;
            continue;
        }
        let writing = !out.is_empty();
        timer.set(deadline);
        tokio::select! {
            r = dialed(&mut dialing) => {
                let t = dialing.take().map_or(0, |(t, _)| t);
                let mut st = lock(&inner.state);
                match r {
                    Ok((s, addr)) => {
                        st.session.handle_dialed(now(), t);
                        if st.session.transport() == Some(t) {
                            st.peer_addr = Some(addr);
                            st.local_addr = s.local_addr().ok();
                            sock = Some((t, s));
                        }
                    }
                    Err(e) => st.session.handle_dial_failed(now(), t, e),
                }
            }
            r = readable(&sock), if read => {
                let r = match (r, &sock) {
                    (Ok(()), Some((_, s))) => buf.read(s),
                    (Err(e), _) => Read::Failed(e),
                    _ => Read::WouldBlock,
                };
                {
                    let mut st = lock(&inner.state);
                    match r {
                        Read::Data => st.session.handle_input(now(), buf.data()),
                        Read::Eof => st.session.handle_eof(now()),
                        Read::Failed(e) => st.session.handle_transport_error(now(), &e),
                        Read::WouldBlock => {}
                    }
                }
                // `readable()` is not budgeted by tokio: count each read.
                tokio::task::consume_budget().await;
            }
            () = writable(&sock), if writing => {}
            () = timer.fired(), if timer.is_armed() => {}
            () = inner.wake.notified() => {}
        }
    }
}

impl Client {
    /// A client for `config` (validated; no I/O before [`connect`](Self::connect)).
    ///
    /// # Errors
    /// [`Error::Config`] for a setting out of range.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        config.validate()?;
        let seed = config.retry_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x5eed, |d| d.as_nanos() as u64)
        });
        let session = ClientSession::new(&config, seed, now());
        Ok(Client(Arc::new_cyclic(|owner| {
            Owner(Arc::new(Inner {
                config,
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

    /// The server's address, while a connection is open.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.state().peer_addr
    }

    /// Our address, while a connection is open.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.state().local_addr
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
