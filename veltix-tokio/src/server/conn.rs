//! The server's tasks: the accept task, one I/O task per connection, and
//! one handler task per peer, with the routing of the core [`Hub`]'s
//! events to waiters, handler queues and [`Server::recv`](super::Server::recv).

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use veltix_proto::{Error, HubEvent, PeerId, ServerConfig};

use crate::dispatch::{Catch, Mailbox, EVENT_OVERHEAD};
use crate::io::{self, Read, ReadBuf, Timer, WRITE_TURN};
use crate::{lock, now};

use super::peer::Peer;
use super::{ConnCtl, Inner, Job, PeerInfo, Phase, Server, ServerEvent, State, BACKLOG};

impl State {
    pub(super) fn peer(&self, inner: &Arc<Inner>, id: PeerId) -> Peer {
        let info = self.peers.get(&id);
        Peer {
            id,
            addr: info.map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |i| i.addr),
            hello: info.and_then(|i| i.hello.clone()),
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
pub(super) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
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

fn admit(inner: &Arc<Inner>, stream: TcpStream, addr: SocketAddr) {
    let _ = stream.set_nodelay(true);
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
                    read_paused: false,
                    ctl: Some(ctl),
                    task: Some(task),
                },
            );
        }
        Err(rejection) => {
            drop(st);
            tokio::spawn(async move {
                let mut out = rejection.bytes;
                let written = tokio::time::timeout(Duration::from_secs(1), async {
                    while !out.is_empty() {
                        if stream.writable().await.is_err() || io::write(&stream, &mut out).is_err()
                        {
                            break;
                        }
                    }
                });
                let _ = written.await;
            });
        }
    }
}

/// One connection: writes what the hub gives, reads while the hub wants
/// input (and the peer's handler queue has room), fires the peer's
/// deadlines; drops the socket as soon as the hub is done with it.
/// Reads of one connection before its task lets the others run (4 x 64 KiB).
const READS_PER_TURN: usize = 4;

async fn conn_task(inner: Arc<Inner>, id: PeerId, ctl: Arc<ConnCtl>, stream: TcpStream) {
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
        // Output: as much as the socket takes now, reported piece by piece.
        let mut turn = 0;
        let mut failed = false;
        while !out.is_empty() && turn < WRITE_TURN {
            match io::write(&stream, &mut out) {
                Ok(0) => break,
                Ok(n) => {
                    turn += n;
                    let mut st = lock(&inner.state);
                    st.hub.handle_written(id, now(), n);
                    if out.is_empty() {
                        out = st.hub.poll_transmit(id).unwrap_or_default();
                    }
                }
                Err(e) => {
                    lock(&inner.state).hub.handle_transport_error(id, now(), &e);
                    out = Bytes::new();
                    failed = true;
                }
            }
        }
        if turn > 0 {
            ctl.room.notify_waiters();
        }
        if failed || turn >= WRITE_TURN {
            tokio::task::yield_now().await;
            continue;
        }
        let writing = !out.is_empty();
        timer.set(deadline);
        tokio::select! {
            r = stream.readable(), if read => {
                let r = match r {
                    Ok(()) => buf.read(&stream),
                    Err(e) => Read::Failed(e),
                };
                {
                    let mut st = lock(&inner.state);
                    match r {
                        Read::Data => st.hub.handle_input(id, now(), buf.data()),
                        Read::Eof => st.hub.handle_eof(id, now()),
                        Read::Failed(e) => st.hub.handle_transport_error(id, now(), &e),
                        Read::WouldBlock => {}
                    }
                }
                // A socket that is always readable (a flood) must not keep
                // this worker: `readable()` does not count against tokio's
                // cooperative budget, so count each read here, and let the
                // other tasks run after every 256 KiB read in a row (the
                // budget alone allows 128 reads, 8 MiB, per turn).
                tokio::task::consume_budget().await;
                reads_in_a_row += 1;
                if reads_in_a_row >= READS_PER_TURN {
                    reads_in_a_row = 0;
                    tokio::task::yield_now().await;
                }
            }
            _ = stream.writable(), if writing => {}
            () = timer.fired(), if timer.is_armed() => {
                lock(&inner.state).hub.handle_peer_timeout(id, now());
            }
            () = ctl.wake.notified() => {}
        }
    }
    drop(stream);
    ctl.room.notify_waiters();
    let mut st = lock(&inner.state);
    st.pump(&inner, Some(id), false);
    let gone = st.hub.tags(id).is_none();
    if let Some(info) = st.peers.get_mut(&id) {
        info.ctl = None;
        info.task = None;
        if gone {
            st.peers.remove(&id);
        }
    }
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
