//! One TCP connection driven by a core [`Connection`] on two threads.
//!
//! The **reader** blocks in `read` no longer than the core's `poll_timeout`,
//! feeds the core, and routes its events: replies to parked waiters, messages
//! and lifecycle changes to the role's [`Sink`]. The **writer** sleeps until
//! output is queued, then writes everything queued in one vectored write, so
//! frames sent while a write is in flight leave together. No protocol rule
//! lives here: the core decides what to send, when to time out and what an
//! input means.

use std::collections::BTreeMap;
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use veltix_proto::{
    CloseReason, Connection, ConnectionStats, EncodedFrame, Event, Frame, MessageType, PeerHello,
    RequestFailure,
};

use crate::pool::{lock, wait};
use veltix_proto::Error;

/// What a role (client or server) does with a link's events. Called on the
/// reader thread, outside every lock.
pub(crate) trait Sink: Send + Sync + 'static {
    /// The handshake finished.
    fn connected(&self, link: &Arc<Link>, peer: PeerHello);
    /// Messages that answered no waiter, in arrival order.
    fn messages(&self, link: &Arc<Link>, frames: Vec<Frame>);
    /// The connection is over; the reader exits after this.
    fn closed(&self, link: &Arc<Link>, reason: CloseReason, was_established: bool);
}

/// What a parked waiter receives.
enum Reply {
    Frame(Frame),
    Pong(Duration),
}

#[derive(Default)]
enum Status {
    #[default]
    Handshaking,
    Established,
    Closed(CloseReason),
}

struct State {
    conn: Connection,
    waiters: BTreeMap<u16, Option<Result<Reply, RequestFailure>>>,
    writer_waiting: bool,
    status: Status,
}

/// A driven connection. Cheap to share (`Arc`).
pub(crate) struct Link {
    state: Mutex<State>,
    /// Waiters and status watchers.
    changed: Condvar,
    /// The writer's wake-up.
    writable: Condvar,
    sock: TcpStream,
    peer_addr: SocketAddr,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Writes all chunks, with as few syscalls as the kernel allows.
fn write_chunks(mut sock: &TcpStream, chunks: &mut Vec<Bytes>) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[first..]
            .iter()
            .take(64)
            .map(|c| IoSlice::new(c))
            .collect();
        let mut n = match sock.write_vectored(&slices) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 {
            let c = &mut chunks[first];
            if n >= c.len() {
                n -= c.len();
                first += 1;
            } else {
                c.advance(n);
                n = 0;
            }
        }
    }
    chunks.clear();
    Ok(())
}

impl Link {
    /// Starts the reader and writer threads of a fresh connection.
    pub(crate) fn spawn(
        sock: TcpStream,
        conn: Connection,
        sink: Arc<dyn Sink>,
        buffer_size: usize,
        name: &str,
    ) -> std::io::Result<Arc<Link>> {
        sock.set_nodelay(true)?;
        let peer_addr = sock.peer_addr()?;
        let link = Arc::new(Link {
            state: Mutex::new(State {
                conn,
                waiters: BTreeMap::new(),
                writer_waiting: false,
                status: Status::Handshaking,
            }),
            changed: Condvar::new(),
            writable: Condvar::new(),
            sock,
            peer_addr,
            threads: Mutex::new(Vec::new()),
        });
        let w = link.clone();
        let writer = std::thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || w.run_writer())?;
        let r = link.clone();
        let reader = std::thread::Builder::new()
            .name(format!("{name}-reader"))
            .spawn(move || r.run_reader(&*sink, buffer_size));
        let reader = match reader {
            Ok(h) => h,
            Err(e) => {
                link.close();
                let _ = link.sock.shutdown(Shutdown::Both);
                let _ = writer.join();
                return Err(e);
            }
        };
        lock(&link.threads).extend([writer, reader]);
        Ok(link)
    }

    /// The peer's address.
    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    fn kick_writer(&self, st: &State) {
        if st.writer_waiting {
            self.writable.notify_one();
        }
    }

    fn run_writer(&self) {
        let mut chunks = Vec::new();
        loop {
            {
                let mut st = lock(&self.state);
                loop {
                    while let Some(b) = st.conn.poll_transmit() {
                        chunks.push(b);
                    }
                    if !chunks.is_empty() {
                        break;
                    }
                    if st.conn.is_closed() {
                        drop(st);
                        // Everything queued went out: end the stream (wakes the reader too).
                        let _ = self.sock.shutdown(Shutdown::Both);
                        return;
                    }
                    st.writer_waiting = true;
                    st = wait(&self.writable, st);
                    st.writer_waiting = false;
                }
            }
            if let Err(e) = write_chunks(&self.sock, &mut chunks) {
                tracing::debug!(peer = %self.peer_addr, error = %e, "write failed");
                lock(&self.state)
                    .conn
                    .handle_transport_error(Instant::now(), &e);
                let _ = self.sock.shutdown(Shutdown::Both);
                return;
            }
        }
    }

    fn run_reader(self: &Arc<Self>, sink: &dyn Sink, buffer_size: usize) {
        let mut buf = vec![0u8; buffer_size.max(64)];
        let mut read_timeout: Option<Duration> = None;
        loop {
            let timeout = {
                let st = lock(&self.state);
                let now = Instant::now();
                st.conn
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(now))
            };
            let outcome = if timeout == Some(Duration::ZERO) {
                None
            } else {
                // Only touch the socket option when it changes.
                let want = timeout.map(|t| t.max(Duration::from_millis(1)));
                if want != read_timeout {
                    let _ = self.sock.set_read_timeout(want);
                    read_timeout = want;
                }
                Some((&self.sock).read(&mut buf))
            };
            let (peer, messages, closed, was_established) = {
                let mut st = lock(&self.state);
                let now = Instant::now();
                match outcome {
                    None => st.conn.handle_timeout(now),
                    Some(Ok(0)) => st.conn.handle_eof(now),
                    Some(Ok(n)) => st.conn.handle_input(now, &buf[..n]),
                    Some(Err(e))
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                    {
                        st.conn.handle_timeout(now)
                    }
                    Some(Err(e)) if e.kind() == ErrorKind::Interrupted => {}
                    Some(Err(e)) => st.conn.handle_transport_error(now, &e),
                }
                let was_established = matches!(st.status, Status::Established);
                let out = self.route_events(&mut st);
                self.kick_writer(&st);
                (out.0, out.1, out.2, was_established)
            };
            if let Some(peer) = peer {
                sink.connected(self, peer);
            }
            if !messages.is_empty() {
                sink.messages(self, messages);
            }
            if let Some(reason) = closed {
                let established = was_established || !matches!(reason, CloseReason::Handshake(_));
                sink.closed(self, reason, established);
                return;
            }
        }
    }

    /// Drains the core's events under the lock.
    fn route_events(&self, st: &mut State) -> (Option<PeerHello>, Vec<Frame>, Option<CloseReason>) {
        let mut peer = None;
        let mut messages = Vec::new();
        let mut closed = None;
        let mut woke = false;
        while let Some(ev) = st.conn.poll_event() {
            match ev {
                Event::Connected(p) => {
                    st.status = Status::Established;
                    peer = Some(p);
                    woke = true;
                }
                Event::Message(f) => messages.push(f),
                Event::Response { request_id, frame } => {
                    woke |= fill(st, request_id, Ok(Reply::Frame(frame)));
                }
                Event::Pong { request_id, rtt } => {
                    woke |= fill(st, request_id, Ok(Reply::Pong(rtt)));
                }
                Event::RequestFailed {
                    request_id, reason, ..
                } => {
                    woke |= fill(st, request_id, Err(reason));
                }
                Event::Discarded(d) => {
                    tracing::debug!(peer = %self.peer_addr, reason = ?d.reason, bytes = d.bytes, "dropped input");
                }
                Event::PongDropped { request_id } => {
                    tracing::warn!(peer = %self.peer_addr, request_id, "PING unanswered: peer does not read");
                }
                Event::Closed {
                    reason,
                    unsent_bytes,
                } => {
                    if unsent_bytes > 0 {
                        tracing::warn!(peer = %self.peer_addr, unsent_bytes, %reason, "connection closed with unsent data");
                    }
                    st.status = Status::Closed(reason.clone());
                    closed = Some(reason);
                    woke = true;
                }
            }
        }
        if woke {
            self.changed.notify_all();
        }
        (peer, messages, closed)
    }

    /// Waits until the handshake is done or the connection closed.
    pub(crate) fn wait_established(&self) -> Result<PeerHello, CloseReason> {
        let mut st = lock(&self.state);
        loop {
            match &st.status {
                Status::Established => {
                    return Ok(st.conn.peer_hello().cloned().unwrap_or_default());
                }
                Status::Closed(r) => return Err(r.clone()),
                Status::Handshaking => st = wait(&self.changed, st),
            }
        }
    }

    /// The peer's hello, once the handshake is done.
    pub(crate) fn peer_hello(&self) -> Option<PeerHello> {
        lock(&self.state).conn.peer_hello().cloned()
    }

    /// Whether the handshake is done and the connection open.
    pub(crate) fn is_established(&self) -> bool {
        matches!(lock(&self.state).status, Status::Established)
    }

    /// Counters of the core.
    pub(crate) fn stats(&self) -> ConnectionStats {
        lock(&self.state).conn.stats()
    }

    fn command<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, veltix_proto::SendError>,
    ) -> Result<T, Error> {
        let mut st = lock(&self.state);
        let r = f(&mut st.conn)?;
        self.kick_writer(&st);
        Ok(r)
    }

    /// Sends with the next free id.
    pub(crate) fn send(&self, t: MessageType, payload: Bytes) -> Result<u16, Error> {
        self.command(|c| c.send(t, payload))
    }

    /// Sends with an explicit id (replies).
    pub(crate) fn send_with_id(
        &self,
        t: MessageType,
        id: u16,
        payload: Bytes,
    ) -> Result<(), Error> {
        self.command(|c| c.send_with_id(t, id, payload))
    }

    /// Queues a pre-encoded frame.
    pub(crate) fn send_encoded(&self, frame: &EncodedFrame) -> Result<(), Error> {
        self.command(|c| c.send_encoded(frame))
    }

    fn wait_reply(
        &self,
        mut st: MutexGuard<'_, State>,
        id: u16,
        timeout: Duration,
    ) -> Result<Reply, Error> {
        st.waiters.insert(id, None);
        self.kick_writer(&st);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(Some(_)) = st.waiters.get(&id) {
                let r = st.waiters.remove(&id).flatten().expect("checked");
                return r.map_err(|f| match f {
                    RequestFailure::TimedOut => Error::Timeout(timeout),
                    f => f.into(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                st.waiters.remove(&id);
                st.conn.cancel_request(id);
                return Err(Error::Timeout(timeout));
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// `send_and_wait`: the first frame carrying the request's id.
    pub(crate) fn request(
        &self,
        t: MessageType,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Frame, Error> {
        let mut st = lock(&self.state);
        let id = st.conn.request(Instant::now(), t, payload, timeout)?;
        match self.wait_reply(st, id, timeout)? {
            Reply::Frame(f) => Ok(f),
            Reply::Pong(_) => Err(Error::State("ping reply to a request")),
        }
    }

    /// A PING and its round trip.
    pub(crate) fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        let mut st = lock(&self.state);
        let id = st.conn.ping(Instant::now(), timeout)?;
        match self.wait_reply(st, id, timeout)? {
            Reply::Pong(rtt) => Ok(rtt),
            Reply::Frame(_) => Err(Error::State("frame reply to a ping")),
        }
    }

    /// Closes gracefully: queued frames are written, then the socket is shut.
    pub(crate) fn close(&self) {
        let mut st = lock(&self.state);
        st.conn.close();
        // The reader is blocked in read: it will see the shutdown the writer does
        // once everything queued is written.
        self.writable.notify_one();
        drop(st);
    }

    /// Joins the threads if both have finished; `true` when done.
    pub(crate) fn try_join(&self) -> bool {
        let mut threads = lock(&self.threads);
        if threads.iter().all(JoinHandle::is_finished) {
            for h in threads.drain(..) {
                let _ = h.join();
            }
            true
        } else {
            false
        }
    }

    /// Joins the link's threads (skipping the caller's own).
    pub(crate) fn join(&self) {
        let me = std::thread::current().id();
        let handles: Vec<_> = lock(&self.threads).drain(..).collect();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}

/// Hands a reply to its waiter; returns whether one was waiting.
fn fill(st: &mut State, id: u16, r: Result<Reply, RequestFailure>) -> bool {
    match st.waiters.get_mut(&id) {
        Some(slot @ None) => {
            *slot = Some(r);
            true
        }
        _ => false,
    }
}
