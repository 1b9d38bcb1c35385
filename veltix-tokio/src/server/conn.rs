//! The server's tasks: the accept task, one I/O task per connection, and
//! one handler task per peer, with the routing of the core [`Hub`]'s
//! events to waiters, handler queues and [`Server::recv`](super::Server::recv).

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpSocket};
use veltix_proto::{Error, HubEvent, PeerId, ServerConfig};
use veltix_tls::TlsInfo;

use crate::dispatch::{Catch, Mailbox, EVENT_OVERHEAD};
use crate::io::{self, Io, Read, ReadBuf, Ready, Timer, WRITE_TURN};
use crate::tls_io::Prefixed;
use crate::{lock, now};

use super::peer::Peer;
use super::{ConnCtl, Inner, Job, Listener, PeerInfo, Phase, Server, ServerEvent, State, BACKLOG};

impl State {
    pub(super) fn peer(&self, inner: &Arc<Inner>, id: PeerId) -> Peer {
        let info = self.peers.get(&id);
        Peer {
            id,
            addr: info.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |i| i.addr),
            hello: info.and_then(|i| i.hello.clone()),
            tls: info.and_then(|i| i.tls.clone()),
            server: Arc::downgrade(inner),
        }
    }

    fn wake(&self, id: PeerId, me: Option<PeerId>) {
        if Some(id) != me {
            if let Some(ctl) = self.peers.get(&id).and_then(|i| i.ctl.as_ref()) {
                ctl.wake.notify_one();
            }
        }
    }

    fn push_job(&mut self, inner: &Arc<Inner>, id: PeerId, job: Job, cost: usize) {
        if self.mailboxes.entry(id).or_default().push(job, cost) {
            if let Some(rt) = &self.rt {
                rt.spawn(dispatch(inner.clone(), id));
            }
        }
    }

    fn push_recv(&mut self, inner: &Inner, e: ServerEvent, cost: usize) {
        self.recv.push(e, cost);
        inner.recv_ready.notify_one();
    }

    /// Takes what the hub has for the driver: request outcomes always,
    /// application events while the `recv` queue has room (or `force`),
    /// then wakes the connections with output or that finished (except `me`,
    /// the caller's own).
    pub(super) fn pump(&mut self, inner: &Arc<Inner>, me: Option<PeerId>, force: bool) {
        while let Some((id, ev)) = self.hub.poll_completion() {
            self.route(inner, id, ev);
        }
        while force || !self.recv.is_over() {
            let Some((id, ev)) = self.hub.poll_event() else {
                break;
            };
            self.route(inner, id, ev);
            // Taking events lets the core decode again: resume reading.
            if let Some(info) = self.peers.get_mut(&id) {
                if info.read_paused && self.hub.wants_input(id) {
                    info.read_paused = false;
                    if let (Some(ctl), true) = (&info.ctl, Some(id) != me) {
                        ctl.wake.notify_one();
                    }
                }
            }
        }
        while let Some(id) = self.hub.poll_transmit_ready() {
            self.wake(id, me);
        }
        while let Some(id) = self.hub.poll_finished() {
            self.wake(id, me);
        }
    }

    fn route(&mut self, inner: &Arc<Inner>, id: PeerId, ev: HubEvent) {
        match ev {
            HubEvent::Completed {
                request_id,
                outcome,
            } => {
                if let Some(tx) = self.waiters.remove(&(id, request_id)) {
                    let _ = tx.send(outcome);
                }
            }
            HubEvent::Connected(hello) => {
                if let Some(info) = self.peers.get_mut(&id) {
                    info.hello = Some(Arc::new(hello));
                }
                let peer = self.peer(inner, id);
                match self.handlers.on_connect.clone() {
                    Some(h) => self.push_job(inner, id, Job::Peer(peer, h), EVENT_OVERHEAD),
                    None => self.push_recv(inner, ServerEvent::Connected(peer), EVENT_OVERHEAD),
                }
            }
            HubEvent::Message(f) => {
                let peer = self.peer(inner, id);
                let cost = EVENT_OVERHEAD + f.payload.len();
                let h = self.handlers.routes.get(&f.message_type);
                match h.or(self.handlers.on_recv.as_ref()).cloned() {
                    Some(h) => self.push_job(inner, id, Job::Message(peer, f, h), cost),
                    None => self.push_recv(inner, ServerEvent::Message(peer, f), cost),
                }
            }
            HubEvent::Disconnected(reason) => {
                let peer = self.peer(inner, id);
                match self.handlers.on_disconnect.clone() {
                    Some(h) => self.push_job(inner, id, Job::Peer(peer, h), EVENT_OVERHEAD),
                    None => self.push_recv(
                        inner,
                        ServerEvent::Disconnected(peer, reason),
                        EVENT_OVERHEAD,
                    ),
                }
                if let Some(mb) = self.mailboxes.get_mut(&id) {
                    mb.ended = true;
                    if !mb.running && mb.is_empty() {
                        self.mailboxes.remove(&id);
                    }
                }
                if self.peers.get(&id).is_some_and(|i| i.ctl.is_none()) {
                    self.peers.remove(&id);
                }
            }
            _ => {}
        }
    }
}

/// Runs the handler jobs of one peer in order, then exits.
async fn dispatch(inner: Arc<Inner>, id: PeerId) {
    let server = Server(inner.clone());
    let mut batch = VecDeque::new();
    let mut lingered = false;
    loop {
        if batch.is_empty() {
            let linger = {
                let mut st = lock(&inner.state);
                let Some(mb) = st.mailboxes.get_mut(&id) else {
                    break;
                };
                if mb.is_empty() && !mb.ended && !lingered {
                    // Wait one turn before exiting: a busy peer's next
                    // event is usually about to come, and a spawn costs more.
                    true
                } else {
                    let resumed = mb.pop_batch(&mut batch);
                    let ended = mb.ended;
                    if resumed {
                        // Under its cap again: the connection may read.
                        st.wake(id, None);
                    }
                    if batch.is_empty() {
                        if ended {
                            st.mailboxes.remove(&id);
                        }
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
        let fut = match job {
            Job::Peer(p, h) => h(server.clone(), p),
            Job::Message(p, f, h) => h(server.clone(), p, f),
        };
        // Closed only never: `acquire` cannot fail here.
        let permit = inner.workers.acquire().await;
        let failed = Catch(fut).await.is_err();
        drop(permit);
        if failed {
            tracing::error!(peer = %id, "a server handler panicked");
        }
    }
    inner.dispatch_idle.notify_waiters();
}

/// Accepts until aborted by `shutdown`. Running out of file descriptors
/// backs off and is logged at most once a second.
pub(super) async fn accept_loop<L: Listener>(inner: Arc<Inner>, mut listener: L) {
    let mut last_log: Option<tokio::time::Instant> = None;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => admit(&inner, stream, addr),
            Err(e) => {
                let exhausted =
                    matches!(e.raw_os_error(), Some(23 | 24)) || e.kind() == ErrorKind::OutOfMemory;
                let quiet = last_log.is_some_and(|t| t.elapsed() < Duration::from_secs(1));
                if !quiet {
                    tracing::warn!(error = %e, "accept failed");
                    last_log = Some(tokio::time::Instant::now());
                }
                if exhausted || !matches!(e.kind(), ErrorKind::ConnectionAborted) {
                    tokio::time::sleep(Duration::from_millis(75)).await;
                }
            }
        }
    }
}

fn admit<S: Io>(inner: &Arc<Inner>, stream: S, addr: SocketAddr) {
    let mut st = lock(&inner.state);
    if st.phase != Phase::Running {
        return;
    }
    match st.hub.accept(now()) {
        Ok(id) => {
            tracing::debug!(peer = %id, %addr, "accepted");
            let ctl = Arc::new(ConnCtl::default());
            let task = tokio::spawn(conn_task(inner.clone(), id, ctl.clone(), stream));
            st.peers.insert(
                id,
                PeerInfo {
                    addr,
                    hello: None,
                    tls: None,
                    read_paused: false,
                    ctl: Some(ctl),
                    task: Some(task),
                },
            );
        }
        Err(rejection) => {
            drop(st);
            if inner.tls.is_some() {
                // Closed at once: plaintext would read as garbage to a TLS
                // client, and a handshake costs more than a refusal is worth.
                return;
            }
            tokio::spawn(async move {
                let mut stream = stream;
                let mut out = rejection.bytes;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    io::write_now(&mut stream, &mut out, |_, _| {}),
                )
                .await;
            });
        }
    }
}

/// One connection: writes what the hub gives, reads while the hub wants
/// input (and the peer's handler queue has room), fires the peer's
/// deadlines; drops the socket as soon as the hub is done with it.
/// Reads of one connection before its task lets the others run (4 x 64 KiB).
const READS_PER_TURN: usize = 4;

async fn conn_task<S: Io>(inner: Arc<Inner>, id: PeerId, ctl: Arc<ConnCtl>, stream: S) {
    match inner.tls.clone() {
        None => drop(serve(&inner, id, &ctl, stream).await),
        Some(acceptor) => {
            let Some(stream) = first_bytes(&inner, id, &ctl, stream).await else {
                return finish(&inner, id, &ctl);
            };
            if let Some(tls) = tls_handshake(&inner, id, &ctl, acceptor.accept(stream)).await {
                let mut tls = serve(&inner, id, &ctl, tls).await;
                // `close_notify`, best effort, without waiting.
                tls.get_mut().1.send_close_notify();
                io::poll_once(|cx| std::pin::Pin::new(&mut tls).poll_flush(cx));
            }
        }
    }
    finish(&inner, id, &ctl);
}

/// The end of a connection task: its state goes (the peer's too, once the
/// hub forgot it).
fn finish(inner: &Arc<Inner>, id: PeerId, ctl: &ConnCtl) {
    ctl.room.notify_waiters();
    let mut st = lock(&inner.state);
    st.pump(inner, Some(id), false);
    let gone = st.hub.tags(id).is_none();
    if let Some(info) = st.peers.get_mut(&id) {
        info.ctl = None;
        info.task = None;
        if gone {
            st.peers.remove(&id);
        }
    }
}

/// Runs `work` while the hub keeps connection `id` open, firing its
/// deadlines (the handshake deadline covers what runs before the Veltix
/// handshake: the TLS probe and handshake). `None` when the hub closed the
/// connection first (deadline passed, server shutting down).
async fn before_deadline<F: std::future::Future>(
    inner: &Arc<Inner>,
    id: PeerId,
    ctl: &ConnCtl,
    work: F,
) -> Option<F::Output> {
    let mut work = std::pin::pin!(work);
    let mut timer = Timer::new();
    loop {
        {
            let mut st = lock(&inner.state);
            st.pump(inner, Some(id), false);
            if !st.hub.is_open(id) {
                return None;
            }
            timer.set(st.hub.peer_timeout(id));
        }
        tokio::select! {
            // In order, not at random: the same run twice does the same
            // (deterministic under a simulated runtime such as turmoil).
            biased;
            r = &mut work => return Some(r),
            () = timer.fired(), if timer.is_armed() => {
                lock(&inner.state).hub.handle_peer_timeout(id, now());
            }
            () = ctl.wake.notified() => {}
        }
    }
}

/// Waits for the first bytes of a connection to a TLS server, within the
/// hub's handshake deadline. A peer silent for the probe delay is a
/// plaintext Veltix client waiting for our hello: it gets a plaintext
/// `tls_required` rejection and is closed (`None`). The bytes read are
/// handed on with the stream.
async fn first_bytes<S: Io>(
    inner: &Arc<Inner>,
    id: PeerId,
    ctl: &ConnCtl,
    mut stream: S,
) -> Option<Prefixed<S>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = tokio::time::sleep(veltix_tls::plaintext_probe_delay(
        inner.config.handshake_timeout,
    ));
    let mut first = vec![0u8; 4096];
    let read = async {
        tokio::select! {
            biased;
            r = stream.read(&mut first) => Some(r),
            () = probe => None,
        }
    };
    match before_deadline(inner, id, ctl, read).await? {
        Some(Ok(0)) => {
            lock(&inner.state).hub.handle_eof(id, now());
            None
        }
        Some(Ok(n)) => {
            first.truncate(n);
            Some(Prefixed::new(first, stream))
        }
        Some(Err(e)) => {
            lock(&inner.state).hub.handle_transport_error(id, now(), &e);
            None
        }
        None => {
            let rejection = veltix_tls::tls_required_rejection();
            let _ = tokio::time::timeout(Duration::from_millis(200), stream.write_all(&rejection))
                .await;
            tracing::debug!(peer = %id, "silent peer on a TLS server: answered tls_required");
            let e = veltix_tls::TlsError::PlaintextPeer.into_io();
            lock(&inner.state).hub.handle_transport_error(id, now(), &e);
            None
        }
    }
}

/// Runs a TLS server handshake inside the hub's handshake deadline (the
/// hub accepted the connection when TCP was: its deadline covers TLS too).
/// `None` when it failed, timed out or the hub closed the connection.
async fn tls_handshake<S: Io>(
    inner: &Arc<Inner>,
    id: PeerId,
    ctl: &ConnCtl,
    accept: tokio_rustls::Accept<S>,
) -> Option<tokio_rustls::server::TlsStream<S>> {
    let r = before_deadline(inner, id, ctl, accept).await?;
    let mut st = lock(&inner.state);
    match r {
        Ok(tls) => {
            let info = TlsInfo::of(tls.get_ref().1).map(Arc::new);
            // A verified client certificate is the peer's identity before
            // its Veltix handshake ends.
            if let Some(ident) = info.as_ref().and_then(|i| i.identity()) {
                st.hub.set_transport_identity(id, ident);
            }
            if let Some(p) = st.peers.get_mut(&id) {
                p.tls = info;
            }
            Some(tls)
        }
        Err(e) => {
            let e = crate::tls_io::classify(e, true);
            tracing::debug!(peer = %id, error = %e, "TLS handshake failed");
            st.hub.handle_transport_error(id, now(), &e);
            None
        }
    }
}

/// Serves the connection over `stream` until the hub is done with it;
/// gives the stream back.
async fn serve<S: Io>(inner: &Arc<Inner>, id: PeerId, ctl: &ConnCtl, mut stream: S) -> S {
    let inner = inner.clone();
    let mut flush = false;
    let mut out = Bytes::new();
    let mut buf = ReadBuf::default();
    let mut timer = Timer::new();
    let mut reads_in_a_row = 0;
    loop {
        let (read, deadline) = {
            let mut st = lock(&inner.state);
            // Route what the last step produced (this peer's and others').
            st.pump(&inner, Some(id), false);
            if !st.hub.is_open(id) {
                break;
            }
            if out.is_empty() {
                out = st.hub.poll_transmit(id).unwrap_or_default();
            }
            let read =
                st.hub.wants_input(id) && !st.mailboxes.get(&id).is_some_and(Mailbox::is_over);
            if let Some(info) = st.peers.get_mut(&id) {
                info.read_paused = !read;
            }
            (read, st.hub.peer_timeout(id))
        };
        // Output: as much as the stream takes now, reported piece by piece.
        let written = io::write_now(&mut stream, &mut out, |n, out| {
            let mut st = lock(&inner.state);
            st.hub.handle_written(id, now(), n);
            if out.is_empty() {
                *out = st.hub.poll_transmit(id).unwrap_or_default();
            }
        })
        .await;
        let (turn, failed) = match written {
            Ok(n) => (n, false),
            Err(e) => {
                lock(&inner.state).hub.handle_transport_error(id, now(), &e);
                out = Bytes::new();
                (0, true)
            }
        };
        if turn > 0 {
            // A TLS stream may hold records of it: they go out on flush.
            flush = true;
            ctl.room.notify_waiters();
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
            // Deadlines first: a peer that keeps the stream busy must not
            // postpone them.
            () = timer.fired(), if timer.is_armed() => {
                lock(&inner.state).hub.handle_peer_timeout(id, now());
            }
            r = io::ready(&mut stream, &mut buf, read, writing, &mut flush) => match r {
                Ready::Read(r) => {
                    {
                        let mut st = lock(&inner.state);
                        match r {
                            Read::Data => st.hub.handle_input(id, now(), buf.data()),
                            Read::Eof => st.hub.handle_eof(id, now()),
                            Read::Failed(e) => fail(&mut st, id, &e),
                        }
                    }
                    // Reading TLS can queue records (tickets, key updates).
                    flush = true;
                    // A stream that is always readable (a flood) must not
                    // keep this worker: count each read against tokio's
                    // cooperative budget (not every stream does), and let
                    // the other tasks run after every 256 KiB read in a row
                    // (the budget alone allows 128 reads, 8 MiB, per turn).
                    tokio::task::consume_budget().await;
                    reads_in_a_row += 1;
                    if reads_in_a_row >= READS_PER_TURN {
                        reads_in_a_row = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Ready::Wrote(n) => {
                    let mut st = lock(&inner.state);
                    st.hub.handle_written(id, now(), n);
                    if out.is_empty() {
                        out = st.hub.poll_transmit(id).unwrap_or_default();
                    }
                    drop(st);
                    flush = true;
                    ctl.room.notify_waiters();
                }
                Ready::Failed(e) => {
                    fail(&mut lock(&inner.state), id, &e);
                    out = Bytes::new();
                }
            },
            () = ctl.wake.notified() => {}
        }
    }
    stream
}

/// Reports a stream failure to the hub (TLS failures are logged).
fn fail(st: &mut State, id: PeerId, e: &std::io::Error) {
    if let Some(tls) = veltix_tls::TlsError::in_io(e) {
        tracing::debug!(peer = %id, error = %tls, "TLS failed");
    }
    st.hub.handle_transport_error(id, now(), e);
}

pub(super) async fn bind(config: &ServerConfig) -> Result<TcpListener, Error> {
    let name = format!("{}:{}", config.host, config.port);
    let addr = tokio::net::lookup_host((config.host.as_str(), config.port))
        .await
        .map_err(|_| Error::Resolve(name.clone()))?
        .next()
        .ok_or(Error::Resolve(name))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(BACKLOG)?)
}
