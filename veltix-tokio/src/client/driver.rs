//! The client's task: it dials when the core [`ClientSession`] says so,
//! moves bytes, fires deadlines, and routes the session's events to
//! waiters, the handler queue and [`Client::recv`](super::Client::recv).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use veltix_proto::{Error, SessionEvent};

use crate::dispatch::{Catch, EVENT_OVERHEAD};
use crate::io::{self, Read, ReadBuf, Timer, WRITE_TURN};
use crate::{lock, now};

use super::{Client, ClientEvent, DialFut, Inner, Job, State};

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
    pub(super) fn pump(&mut self, inner: &Arc<Inner>, force: bool) {
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
    pub(super) fn is_idle(&self) -> bool {
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
pub(super) async fn drive(inner: Arc<Inner>) {
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
