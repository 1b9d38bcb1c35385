//! One TCP connection driven by a core [`Connection`] on two threads.
//!
//! The **reader** blocks in `read` no longer than the core's `poll_timeout`,
//! feeds the core, and routes its events: replies to parked waiters, messages
//! and lifecycle changes to the role's [`Sink`]. The **writer** sleeps until
//! output is queued, then writes everything queued in one vectored write, so
//! frames sent while a write is in flight leave together. No protocol rule
//! lives here: the core decides what to send, when to time out and what an
//! input means.

use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use veltix_proto::{
    CloseReason, Connection, ConnectionStats, EncodedFrame, Frame, MessageType, PeerHello, Reply,
    RequestFailure, Routed,
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
    /// Bytes taken from the core and not yet written, in order.
    unsent: VecDeque<Bytes>,
    /// A thread is writing (the writer, or an inline attempt): the only one
    /// allowed to, so bytes leave in order.
    writing: bool,
    status: Status,
}

/// How long a `send_and_wait`/ping caller polls for its reply before it
/// parks on the condition variable.
const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);

/// Largest output an inline (non-blocking) write attempt takes on; more is
/// left to the writer thread.
const INLINE_MAX: usize = 64 * 1024;

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

/// Writes as much as the socket takes right now (`MSG_DONTWAIT`, so this
/// call never blocks, while other threads keep the socket blocking). Written
/// bytes are removed from `chunks`; `Ok` even when some remain.
fn send_nonblocking(sock: &TcpStream, chunks: &mut Vec<Bytes>) -> std::io::Result<()> {
    let s = socket2::SockRef::from(sock);
    while !chunks.is_empty() {
        let slices: Vec<IoSlice<'_>> = chunks.iter().take(64).map(|c| IoSlice::new(c)).collect();
        let mut n = match s.send_vectored_with_flags(&slices, libc::MSG_DONTWAIT) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        while n > 0 {
            if n >= chunks[0].len() {
                n -= chunks[0].len();
                chunks.remove(0);
            } else {
                chunks[0].advance(n);
                n = 0;
            }
        }
    }
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
                unsent: VecDeque::new(),
                writing: false,
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

    /// Whether the writer must be woken (it sleeps and has work); claims
    /// the wake-up so that later callers do not repeat it. Notify only after
    /// the state lock is released, or the woken writer blocks on it at once.
    fn claim_kick(st: &mut State) -> bool {
        let work = st.conn.queued_bytes() > 0 || !st.unsent.is_empty() || st.conn.is_closed();
        let kick = st.writer_waiting && !st.writing && work;
        if kick {
            st.writer_waiting = false;
        }
        kick
    }

    fn kick_writer(&self, kick: bool) {
        if kick {
            self.writable.notify_one();
        }
    }

    fn run_writer(&self) {
        let mut chunks = Vec::new();
        loop {
            {
                let mut st = lock(&self.state);
                loop {
                    if !st.writing {
                        while let Some(b) = st.conn.poll_transmit() {
                            st.unsent.push_back(b);
                        }
                        if !st.unsent.is_empty() {
                            chunks.extend(st.unsent.drain(..));
                            st.writing = true;
                            break;
                        }
                        if st.conn.is_closed() {
                            drop(st);
                            // Everything queued went out: end the stream (wakes the reader too).
                            let _ = self.sock.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                    st.writer_waiting = true;
                    st = wait(&self.writable, st);
                    st.writer_waiting = false;
                }
            }
            let r = write_chunks(&self.sock, &mut chunks);
            let mut st = lock(&self.state);
            st.writing = false;
            if let Err(e) = r {
                tracing::debug!(peer = %self.peer_addr, error = %e, "write failed");
                st.conn.handle_transport_error(Instant::now(), &e);
                drop(st);
                let _ = self.sock.shutdown(Shutdown::Both);
                return;
            }
        }
    }

    /// Writes queued output from the calling thread without blocking and
    /// without waking the writer, when nobody else is writing and the output
    /// is small: a request's or a PONG's frame leaves at once instead of
    /// after a thread hand-off. What the socket does not take at once is
    /// left (in order) to the writer thread.
    fn write_inline<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        if st.writing || st.conn.is_closed() {
            return st;
        }
        while let Some(b) = st.conn.poll_transmit() {
            st.unsent.push_back(b);
        }
        let len: usize = st.unsent.iter().map(Bytes::len).sum();
        if len == 0 || len > INLINE_MAX {
            return st;
        }
        let mut chunks: Vec<Bytes> = st.unsent.drain(..).collect();
        st.writing = true;
        drop(st);
        let r = send_nonblocking(&self.sock, &mut chunks);
        let mut st = lock(&self.state);
        st.writing = false;
        match r {
            Ok(()) => {
                // Unwritten bytes go back in front, ahead of anything queued since.
                for c in chunks.into_iter().rev() {
                    st.unsent.push_front(c);
                }
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer_addr, error = %e, "write failed");
                st.unsent.clear();
                st.conn.handle_transport_error(Instant::now(), &e);
                let _ = self.sock.shutdown(Shutdown::Both);
            }
        }
        st
    }

    fn run_reader(self: &Arc<Self>, sink: &dyn Sink, buffer_size: usize) {
        // At least 64 KiB per read: Veltix's 8 KiB default costs eight times
        // the reads (and lock rounds) on a busy connection.
        let mut buf = vec![0u8; buffer_size.max(64 * 1024)];
        let mut read_timeout: Option<Duration> = None;
        loop {
            let timeout = {
                let st = lock(&self.state);
                let now = Instant::now();
                // Timers only: queued output is the writer thread's business.
                st.conn
                    .next_timer()
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
                let mut st = self.write_inline(st);
                let kick = Self::claim_kick(&mut st);
                drop(st);
                self.kick_writer(kick);
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
            match ev.routed() {
                Routed::Connected(p) => {
                    st.status = Status::Established;
                    peer = Some(p);
                    woke = true;
                }
                Routed::Message(f) => messages.push(f),
                Routed::Completed {
                    request_id,
                    outcome,
                } => woke |= fill(st, request_id, outcome),
                Routed::Closed(reason) => {
                    st.status = Status::Closed(reason.clone());
                    closed = Some(reason);
                    woke = true;
                }
                // Counted and logged by the core.
                Routed::Diagnostic => {}
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
        let kick = Self::claim_kick(&mut st);
        drop(st);
        self.kick_writer(kick);
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

    fn wait_reply<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        id: u16,
        timeout: Duration,
    ) -> Result<Reply, Error> {
        st.waiters.insert(id, None);
        st = self.write_inline(st);
        if Self::claim_kick(&mut st) {
            // Released and re-taken so the writer does not wake into a held lock.
            drop(st);
            self.writable.notify_one();
            st = lock(&self.state);
        }
        let deadline = Instant::now() + timeout;
        // Spin briefly before parking: a loopback or LAN reply often lands
        // within tens of microseconds, and waking a parked thread on an idle
        // vCPU costs about that much again. Bounded, and it yields the CPU.
        let spin_until = Instant::now() + SPIN_BEFORE_PARK;
        while !matches!(st.waiters.get(&id), Some(Some(_))) && Instant::now() < spin_until {
            drop(st);
            std::thread::yield_now();
            st = lock(&self.state);
        }
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
        st.writer_waiting = false;
        drop(st);
        self.writable.notify_one();
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
