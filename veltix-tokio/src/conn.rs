//! One TCP connection driven by a core [`Connection`] in one tokio task.
//!
//! The task waits, with `select!`, for socket readiness, for the core's
//! `poll_timeout`, and for a wake-up from commands issued by other tasks
//! (which lock the core briefly, queue output and wake it). It writes
//! everything queued with vectored writes, routes replies to waiting
//! requests, and hands messages to the role through a bounded channel
//! (a full channel stops the task from reading: backpressure). No protocol
//! rule lives here.

use std::collections::{BTreeMap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::lock;
use veltix_proto::{
    CloseReason, Connection, ConnectionStats, EncodedFrame, Error, Frame, MessageType, PeerHello,
    Reply, RequestFailure, Routed, SendError,
};

/// What a connection tells its role, in order.
#[derive(Debug)]
pub(crate) enum Delivery {
    Connected(PeerHello),
    Message(Frame),
    Closed(CloseReason),
    /// Client only: a disconnect/retry step (never produced by `drive`).
    Lifecycle(veltix_proto::DisconnectState),
}

type Waiter = oneshot::Sender<Result<Reply, RequestFailure>>;

#[derive(Debug, Clone, Default)]
enum Status {
    #[default]
    Handshaking,
    Established,
    Closed(CloseReason),
}

struct State {
    conn: Connection,
    waiters: BTreeMap<u16, Waiter>,
    status: Status,
}

pub(crate) fn now() -> std::time::Instant {
    // tokio's clock, so `tokio::time::pause()` drives the core's time too.
    Instant::now().into_std()
}

/// The shared half of a connection: commands lock the core and wake the task.
pub(crate) struct Conn {
    state: Mutex<State>,
    /// Wakes the task: output queued, or close requested.
    wake: Notify,
    /// Wakes senders waiting for queue space, and status watchers.
    changed: Notify,
    peer_addr: SocketAddr,
}

impl Conn {
    pub(crate) fn new(conn: Connection, peer_addr: SocketAddr) -> Arc<Conn> {
        Arc::new(Conn {
            state: Mutex::new(State {
                conn,
                waiters: BTreeMap::new(),
                status: Status::Handshaking,
            }),
            wake: Notify::new(),
            changed: Notify::new(),
            peer_addr,
        })
    }

    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub(crate) fn peer_hello(&self) -> Option<PeerHello> {
        lock(&self.state).conn.peer_hello().cloned()
    }

    pub(crate) fn is_established(&self) -> bool {
        matches!(lock(&self.state).status, Status::Established)
    }

    pub(crate) fn stats(&self) -> ConnectionStats {
        lock(&self.state).conn.stats()
    }

    /// Waits for the end of the handshake.
    pub(crate) async fn established(&self) -> Result<PeerHello, CloseReason> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let st = lock(&self.state);
                match &st.status {
                    Status::Established => {
                        return Ok(st.conn.peer_hello().cloned().unwrap_or_default())
                    }
                    Status::Closed(r) => return Err(r.clone()),
                    Status::Handshaking => {}
                }
            }
            changed.await;
        }
    }

    fn command<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, SendError>,
    ) -> Result<T, Error> {
        let r = f(&mut lock(&self.state).conn)?;
        self.wake.notify_one();
        Ok(r)
    }

    pub(crate) fn try_send(&self, t: MessageType, payload: Bytes) -> Result<u16, Error> {
        self.command(|c| c.send(t, payload))
    }

    pub(crate) fn try_send_with_id(
        &self,
        t: MessageType,
        id: u16,
        payload: Bytes,
    ) -> Result<(), Error> {
        self.command(|c| c.send_with_id(t, id, payload))
    }

    pub(crate) fn try_send_encoded(&self, frame: &EncodedFrame) -> Result<(), Error> {
        self.command(|c| c.send_encoded(frame))
    }

    /// Runs `attempt` until it does not fail with a full queue, waiting for
    /// the task to drain the queue in between.
    pub(crate) async fn with_space<T>(
        &self,
        mut attempt: impl FnMut() -> Result<T, Error>,
    ) -> Result<T, Error> {
        loop {
            let drained = self.changed.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            match attempt() {
                Err(Error::Send(SendError::QueueFull { .. })) => drained.await,
                r => return r,
            }
        }
    }

    fn register(&self, id: u16, st: &mut State) -> PendingReply<'_> {
        let (tx, rx) = oneshot::channel();
        st.waiters.insert(id, tx);
        self.wake.notify_one();
        PendingReply {
            conn: self,
            id,
            rx: Some(rx),
        }
    }

    pub(crate) async fn request(
        &self,
        t: MessageType,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Frame, Error> {
        let pending = {
            let mut st = lock(&self.state);
            let id = st.conn.request(now(), t, payload, timeout)?;
            self.register(id, &mut st)
        };
        match pending.wait(timeout).await? {
            Reply::Frame(f) => Ok(f),
            Reply::Pong(_) => Err(Error::State("ping reply to a request")),
        }
    }

    pub(crate) async fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        let pending = {
            let mut st = lock(&self.state);
            let id = st.conn.ping(now(), timeout)?;
            self.register(id, &mut st)
        };
        match pending.wait(timeout).await? {
            Reply::Pong(rtt) => Ok(rtt),
            Reply::Frame(_) => Err(Error::State("frame reply to a ping")),
        }
    }

    /// Graceful close: queued frames are still written, then the task ends.
    pub(crate) fn close(&self) {
        lock(&self.state).conn.close();
        self.wake.notify_one();
    }

    /// Drains the core's events; replies go to their waiters.
    fn route(&self, st: &mut State, out: &mut Vec<Delivery>) {
        let mut changed = false;
        while let Some(ev) = st.conn.poll_event() {
            match ev.routed() {
                Routed::Connected(p) => {
                    st.status = Status::Established;
                    changed = true;
                    out.push(Delivery::Connected(p));
                }
                Routed::Message(f) => out.push(Delivery::Message(f)),
                Routed::Completed {
                    request_id,
                    outcome,
                } => fill(st, request_id, outcome),
                Routed::Closed(reason) => {
                    st.status = Status::Closed(reason.clone());
                    changed = true;
                    out.push(Delivery::Closed(reason));
                }
                // Counted and logged by the core.
                Routed::Diagnostic => {}
            }
        }
        if changed {
            self.changed.notify_waiters();
        }
    }
}

fn fill(st: &mut State, id: u16, r: Result<Reply, RequestFailure>) {
    if let Some(tx) = st.waiters.remove(&id) {
        let _ = tx.send(r);
    }
}

/// A registered request; dropping it before the reply frees its id.
struct PendingReply<'a> {
    conn: &'a Conn,
    id: u16,
    rx: Option<oneshot::Receiver<Result<Reply, RequestFailure>>>,
}

impl PendingReply<'_> {
    async fn wait(mut self, timeout: Duration) -> Result<Reply, Error> {
        let rx = self.rx.take().expect("waited once");
        let r = rx.await;
        self.rx = None;
        match r {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(RequestFailure::TimedOut)) => Err(Error::Timeout(timeout)),
            Ok(Err(f)) => Err(f.into()),
            Err(_) => Err(Error::NotConnected), // the task ended without an answer
        }
    }
}

impl Drop for PendingReply<'_> {
    fn drop(&mut self) {
        // Cancelled mid-wait (or never awaited): forget the request so its id is free.
        let mut st = lock(&self.conn.state);
        if st.waiters.remove(&self.id).is_some() {
            st.conn.cancel_request(self.id);
        }
    }
}

/// The receiving end of a role's deliveries: batches from the connection
/// tasks, handed out one event at a time, in order.
pub(crate) struct Inbox<T> {
    rx: mpsc::Receiver<(T, Vec<Delivery>)>,
    batch: Option<(T, std::vec::IntoIter<Delivery>)>,
}

impl<T: Clone> Inbox<T> {
    pub(crate) fn new(rx: mpsc::Receiver<(T, Vec<Delivery>)>) -> Self {
        Inbox { rx, batch: None }
    }

    /// The next delivery: from the current batch, else the next queued batch
    /// (no waiter registration, no `select!`), otherwise awaited until one
    /// comes or `stop` fires with `stopped()` true (then `None` once drained).
    pub(crate) async fn next(
        &mut self,
        stop: &Notify,
        stopped: impl Fn() -> bool,
    ) -> Option<(T, Delivery)> {
        loop {
            if let Some((tag, it)) = &mut self.batch {
                if let Some(d) = it.next() {
                    return Some((tag.clone(), d));
                }
                self.batch = None;
            }
            let (tag, batch) = match self.rx.try_recv() {
                Ok(b) => b,
                Err(_) => loop {
                    // Registered before the flag is read, so a stop cannot slip between.
                    let notified = stop.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if stopped() {
                        break self.rx.try_recv().ok()?;
                    }
                    tokio::select! {
                        r = self.rx.recv() => break r?,
                        () = notified => {}
                    }
                },
            };
            self.batch = Some((tag, batch.into_iter()));
        }
    }
}

/// Writes as much of `pending` as the socket takes without blocking.
fn write_some(stream: &TcpStream, pending: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    while !pending.is_empty() {
        let slices: Vec<IoSlice<'_>> = pending.iter().take(64).map(|b| IoSlice::new(b)).collect();
        let mut n = match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        while n > 0 {
            let front = pending.front_mut().expect("wrote no more than queued");
            if n >= front.len() {
                n -= front.len();
                pending.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

/// Drives `conn` over `stream` until it closes and its output is flushed.
/// Deliveries are tagged with `tag`. Returns the close reason.
pub(crate) async fn drive<T: Clone + Send + 'static>(
    conn: Arc<Conn>,
    stream: TcpStream,
    tag: T,
    deliveries: mpsc::Sender<(T, Vec<Delivery>)>,
    read_size: usize,
) -> CloseReason {
    let mut pending: VecDeque<Bytes> = VecDeque::new();
    let mut out = Vec::new();
    let mut reason: Option<CloseReason> = None;
    loop {
        let deadline = {
            let mut st = lock(&conn.state);
            conn.route(&mut st, &mut out);
            while let Some(b) = st.conn.poll_transmit() {
                pending.push_back(b);
            }
            st.conn.poll_timeout()
        };
        if !out.is_empty() {
            if let Some(Delivery::Closed(r)) = out.last() {
                reason = Some(r.clone());
            }
            // One channel operation per batch (everything one read produced),
            // not per message. A dropped receiver only means nobody listens.
            let batch = std::mem::take(&mut out);
            let _ = deliveries.send((tag.clone(), batch)).await;
            conn.changed.notify_waiters();
        }
        if let Some(r) = &reason {
            if pending.is_empty() {
                return r.clone();
            }
        }
        let closed = reason.is_some();
        tokio::select! {
            r = stream.writable(), if !pending.is_empty() => {
                let r = r.and_then(|()| write_some(&stream, &mut pending));
                if let Err(e) = r {
                    pending.clear();
                    lock(&conn.state).conn.handle_transport_error(now(), &e);
                }
                conn.changed.notify_waiters(); // queue space for waiting senders
            }
            r = stream.readable(), if !closed => {
                // A fresh buffer per read: an idle connection holds none.
                let mut buf = vec![0u8; read_size];
                let read = r.and_then(|()| stream.try_read(&mut buf));
                let mut st = lock(&conn.state);
                match read {
                    Ok(0) => st.conn.handle_eof(now()),
                    Ok(n) => st.conn.handle_input(now(), &buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => st.conn.handle_transport_error(now(), &e),
                }
            }
            () = conn.wake.notified() => {}
            () = tokio::time::sleep_until(deadline.map_or_else(Instant::now, Instant::from_std)), if deadline.is_some() => {
                lock(&conn.state).conn.handle_timeout(now());
            }
        }
    }
}
