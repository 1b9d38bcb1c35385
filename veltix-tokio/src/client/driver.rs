//! The client's task: it dials when the core [`ClientSession`] says so,
//! moves bytes, fires deadlines, and routes the session's events to
//! waiters, the handler queue and [`Client::recv`](super::Client::recv).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use veltix_proto::{Error, SessionEvent};

use crate::dispatch::{Catch, EVENT_OVERHEAD};
use crate::io::{self, Io, Read, ReadBuf, Ready, Timer, WRITE_TURN};
use crate::{lock, now};

use super::connector::{DialFut, Dialed};
use super::{Client, ClientEvent, Inner, Job, State};

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
                let error = veltix_tls::give_up_error(error, self.tls_failure.take());
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

async fn dialed(d: &mut Option<(u64, DialFut)>) -> Result<Dialed, Error> {
    match d {
        Some((_, f)) => f.await,
        None => std::future::pending().await,
    }
}

type TlsStream = tokio_rustls::client::TlsStream<Box<dyn Io>>;
type TlsFut = Pin<Box<dyn Future<Output = std::io::Result<TlsStream>> + Send>>;

async fn secured(d: &mut Option<(u64, TlsFut)>) -> std::io::Result<TlsStream> {
    match d {
        Some((_, f)) => f.await,
        None => std::future::pending().await,
    }
}

async fn stream_ready(
    sock: &mut Option<(u64, Box<dyn Io>)>,
    buf: &mut ReadBuf,
    read: bool,
    writing: Option<&mut Bytes>,
    flush: &mut bool,
) -> Ready {
    match sock {
        Some((_, s)) => io::ready(s, buf, read, writing, flush).await,
        None => std::future::pending().await,
    }
}

/// Keeps the TLS error an I/O error carries (for the give-up error) and
/// returns what the session is told.
fn note_tls(st: &mut State, e: std::io::Error) -> std::io::Error {
    let (e, tls) = veltix_tls::split_io_error(e);
    if let Some(tls) = tls {
        tracing::debug!(error = %tls, "TLS failed");
        st.tls_failure = Some(tls);
    }
    e
}

/// The client's task: dials, runs TLS over the new connection for a TLS
/// client, moves bytes, fires deadlines, routes events; exits once the
/// session is neither connected nor connecting.
pub(super) async fn drive(inner: Arc<Inner>) {
    let mut sock: Option<(u64, Box<dyn Io>)> = None;
    let mut dialing: Option<(u64, DialFut)> = None;
    // A TLS handshake over a dialled connection (inside the session's
    // handshake deadline: the session opened when TCP connected).
    let mut securing: Option<(u64, TlsFut)> = None;
    let mut out = Bytes::new();
    let mut flush = false;
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
                let fut = inner.connector.clone().dial(
                    c.server_addr.clone(),
                    c.port,
                    c.handshake_timeout,
                );
                dialing = Some((d.transport, fut));
                st.tls_failure = None;
            }
            let current = st.session.transport();
            if sock.as_ref().is_some_and(|(id, _)| Some(*id) != current) {
                // The session is done with this transport: release it now.
                if let (Some((_, mut s)), true) = (sock.take(), st.tls.is_some()) {
                    // `close_notify`, best effort, without waiting.
                    io::poll_once(|cx| Pin::new(&mut s).poll_shutdown(cx));
                }
                out = Bytes::new();
                flush = false;
                st.peer_addr = None;
                st.local_addr = None;
                st.tls = None;
                inner.room.notify_waiters();
            }
            if dialing.as_ref().is_some_and(|(id, _)| Some(*id) != current) {
                dialing = None;
            }
            if securing
                .as_ref()
                .is_some_and(|(id, _)| Some(*id) != current)
            {
                securing = None;
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
        // Output: as much as the stream takes now, reported piece by piece.
        let mut turn = 0;
        let mut failed = false;
        if let Some((_, s)) = &mut sock {
            let written = io::write_now(s, &mut out, |n, out| {
                let mut st = lock(&inner.state);
                st.session.handle_written(now(), n);
                if out.is_empty() {
                    *out = st.session.poll_transmit().unwrap_or_default();
                }
            })
            .await;
            match written {
                Ok(n) => turn = n,
                Err(e) => {
                    let mut st = lock(&inner.state);
                    let e = note_tls(&mut st, e);
                    st.session.handle_transport_error(now(), &e);
                    out = Bytes::new();
                    failed = true;
                }
            }
        }
        if turn > 0 {
            flush = true;
            inner.room.notify_waiters();
        }
        if failed || turn >= WRITE_TURN {
            tokio::task::yield_now().await;
            continue;
        }
        let writing = (!out.is_empty()).then_some(&mut out);
        timer.set(deadline);
        tokio::select! {
            // In order, not at random: the same run twice does the same
            // (deterministic under a simulated runtime such as turmoil).
            biased;
            r = dialed(&mut dialing) => {
                let t = dialing.take().map_or(0, |(t, _)| t);
                let mut st = lock(&inner.state);
                match r {
                    Ok((s, addr, local)) => {
                        st.session.handle_dialed(now(), t);
                        if st.session.transport() == Some(t) {
                            st.peer_addr = Some(addr);
                            st.local_addr = local;
                            match &inner.tls {
                                None => sock = Some((t, s)),
                                Some((connector, name)) => {
                                    let fut = connector.connect(name.clone(), s);
                                    securing = Some((t, Box::pin(fut)));
                                }
                            }
                        }
                    }
                    Err(e) => st.session.handle_dial_failed(now(), t, e),
                }
            }
            r = secured(&mut securing) => {
                let t = securing.take().map_or(0, |(t, _)| t);
                let mut st = lock(&inner.state);
                match r {
                    Ok(tls) => {
                        if st.session.transport() == Some(t) {
                            st.tls = veltix_tls::TlsInfo::of(tls.get_ref().1);
                            tracing::debug!(tls = ?st.tls, "TLS established");
                            sock = Some((t, Box::new(tls)));
                        }
                    }
                    Err(e) => {
                        let e = note_tls(&mut st, crate::tls_io::classify(e, true));
                        if st.session.transport() == Some(t) {
                            st.session.handle_transport_error(now(), &e);
                        }
                    }
                }
            }
            r = stream_ready(&mut sock, &mut buf, read, writing, &mut flush) => {
                match r {
                    Ready::Read(r) => {
                        {
                            let mut st = lock(&inner.state);
                            match r {
                                Read::Data => st.session.handle_input(now(), buf.data()),
                                Read::Eof => st.session.handle_eof(now()),
                                Read::Failed(e) => {
                                    let e = note_tls(&mut st, e);
                                    st.session.handle_transport_error(now(), &e);
                                }
                            }
                        }
                        // Reading TLS can queue records (tickets, key updates).
                        flush = true;
                        // Not every stream counts reads against tokio's budget.
                        tokio::task::consume_budget().await;
                    }
                    Ready::Wrote(n) => {
                        let mut st = lock(&inner.state);
                        st.session.handle_written(now(), n);
                        if out.is_empty() {
                            out = st.session.poll_transmit().unwrap_or_default();
                        }
                        drop(st);
                        flush = true;
                        inner.room.notify_waiters();
                    }
                    Ready::Failed(e) => {
                        let mut st = lock(&inner.state);
                        let e = note_tls(&mut st, e);
                        st.session.handle_transport_error(now(), &e);
                        out = Bytes::new();
                    }
                }
            }
            () = timer.fired(), if timer.is_armed() => {}
            () = inner.wake.notified() => {}
        }
    }
}
