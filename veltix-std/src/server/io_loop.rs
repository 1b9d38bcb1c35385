//! The server's one I/O thread: a `mio` readiness loop over the listener,
//! every connection and a waker. It accepts, reads and writes for the core
//! [`Hub`], fires its deadlines, and routes its events to waiters and to the
//! mailboxes of the worker pool.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Events, Interest, Poll, Token, Waker};
use veltix_proto::{Frame, HubEvent, PeerId};

use crate::io::{self, Flushed, Output, Read1};
use crate::pool::{lock, Item, Mailbox, Pool, MAILBOX_BYTES};
use crate::transport::{Stream, TlsStream, Transport};

use super::listener::AnyListener;
use super::peer::Peer;
use super::{
    Callbacks, Core, Phase, Server, Shared, ACCEPTS_PER_PASS, ACCEPT_PAUSE, FIRST_CONN, LISTENER,
    WAKER,
};

// ------------------------------------------------------------------ I/O loop

struct Sock {
    /// The accepted stream, or TLS over it on a TLS server.
    stream: Stream,
    peer: PeerId,
    /// Taken from the core, not yet written.
    pending: VecDeque<Bytes>,
    /// Readable and not read to `WouldBlock` yet.
    readable: bool,
    interest: Option<Interest>,
    /// The TLS client identity was handed to the hub (or there is none).
    identity_known: bool,
}

/// The handler side of one connected peer.
struct Dispatch {
    peer: Peer,
    mailbox: Arc<Mailbox>,
    /// Items taken from the core and not yet in the mailbox (it was full).
    /// Bounded: the peer's socket is not read while this is non-empty, so
    /// it holds at most the core's queued events of the peer
    /// (`max_event_bytes`) and what one read decoded.
    held: VecDeque<Item>,
    /// `on_disconnect` was queued: forget this once `held` is empty.
    closed: bool,
}

impl Dispatch {
    fn can_take(&self) -> bool {
        self.held.is_empty() && self.mailbox.has_room()
    }
}

struct HubOut<'a> {
    core: &'a Mutex<Core>,
    peer: PeerId,
    now: Instant,
}

impl Output for HubOut<'_> {
    fn exchange(&mut self, written: usize, pending: &mut VecDeque<Bytes>) {
        let mut g = lock(self.core);
        if written > 0 {
            g.hub.handle_written(self.peer, self.now, written);
        }
        while let Some(b) = g.hub.poll_transmit(self.peer) {
            if !b.is_empty() {
                pending.push_back(b);
            }
        }
    }
}

pub(super) struct IoLoop {
    shared: Arc<Shared>,
    poll: Poll,
    waker: Arc<Waker>,
    listener: Option<Box<dyn AnyListener>>,
    listener_registered: bool,
    accept_ready: bool,
    paused_until: Option<Instant>,
    last_accept_log: Option<Instant>,
    socks: HashMap<Token, Sock>,
    by_peer: HashMap<PeerId, Token>,
    next_token: usize,
    dispatch: HashMap<PeerId, Dispatch>,
    pool: Arc<Pool>,
    mailbox_cap: usize,
    buf: Vec<u8>,
    /// Sockets to read this pass (events, and leftovers of earlier passes).
    to_read: HashSet<Token>,
    /// Sockets whose interest may have to change.
    dirty: HashSet<Token>,
    /// Sockets not read because their peer's mailbox is full: looked at
    /// again every pass, so reading resumes when it drains.
    blocked: HashSet<Token>,
    /// Peers with items in `held`.
    staged: HashSet<PeerId>,
    /// Reused buffer for `Hub::poll_events`.
    batch: Vec<(PeerId, HubEvent)>,
    /// TLS connections to check for silence (a plaintext Veltix client
    /// waiting for our hello), earliest first.
    probes: BinaryHeap<Reverse<(Instant, Token)>>,
}

/// Events taken from one peer per round-robin turn.
const EVENT_BATCH: usize = 64;

impl IoLoop {
    pub(super) fn new(
        shared: Arc<Shared>,
        poll: Poll,
        waker: Arc<Waker>,
        listener: Box<dyn AnyListener>,
        pool: Arc<Pool>,
    ) -> IoLoop {
        let buf = vec![0; shared.config.buffer_size.max(io::READ_CHUNK)];
        let mailbox_cap = MAILBOX_BYTES;
        IoLoop {
            shared,
            poll,
            waker,
            listener: Some(listener),
            listener_registered: false,
            accept_ready: true,
            paused_until: None,
            last_accept_log: None,
            socks: HashMap::new(),
            by_peer: HashMap::new(),
            next_token: FIRST_CONN,
            dispatch: HashMap::new(),
            pool,
            mailbox_cap,
            buf,
            to_read: HashSet::new(),
            dirty: HashSet::new(),
            blocked: HashSet::new(),
            staged: HashSet::new(),
            batch: Vec::with_capacity(EVENT_BATCH),
            probes: BinaryHeap::new(),
        }
    }

    pub(super) fn run(&mut self) {
        if let Some(l) = self.listener.as_mut() {
            match self
                .poll
                .registry()
                .register(l, LISTENER, Interest::READABLE)
            {
                Ok(()) => self.listener_registered = true,
                Err(e) => tracing::error!(error = %e, "cannot register the listener"),
            }
        }
        let mut events = Events::with_capacity(1024);
        let mut timeout = Some(Duration::ZERO);
        loop {
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    LISTENER => self.accept_ready = true,
                    t => {
                        if let Some(s) = self.socks.get_mut(&t) {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                s.readable = true;
                                self.to_read.insert(t);
                            }
                            self.dirty.insert(t);
                        }
                    }
                }
            }
            match self.pass(Instant::now()) {
                Some(t) => timeout = t,
                None => break,
            }
        }
    }

    /// One round of work; the next poll timeout (`Some(None)`: no
    /// deadline), or `None` to exit.
    fn pass(&mut self, now: Instant) -> Option<Option<Duration>> {
        let shared = self.shared.clone();
        let mut g = lock(&shared.core);
        g.wake_pending = false;
        if let Phase::Stopping { until } = g.phase {
            if let Some(mut l) = self.listener.take() {
                if self.listener_registered {
                    let _ = self.poll.registry().deregister(&mut l);
                }
            }
            if self.socks.is_empty() || now >= until {
                self.teardown(&mut g, now);
                return None;
            }
        }
        let mut notify = false;

        // Accept.
        if let Some(until) = self.paused_until {
            if now >= until {
                self.paused_until = None;
                if let Some(l) = self.listener.as_mut() {
                    if self
                        .poll
                        .registry()
                        .register(l, LISTENER, Interest::READABLE)
                        .is_ok()
                    {
                        self.listener_registered = true;
                    }
                }
                self.accept_ready = true;
            }
        }
        if self.accept_ready && self.listener.is_some() && self.paused_until.is_none() {
            self.accept(&mut g, now);
        }
        self.probe(&mut g, now);

        // Read (the lock is released around each read).
        drop(g);
        let candidates: Vec<Token> = self.to_read.iter().copied().collect();
        for t in candidates {
            self.read(&shared, t, now);
        }
        let mut g = lock(&shared.core);

        // Timers.
        if g.hub.poll_timeout().is_some_and(|t| t <= now) {
            g.hub.handle_timeout(now);
            self.dirty.extend(self.socks.keys().copied());
        }

        // Events and completions.
        notify |= self.dispatch_events(&mut g);

        // Write.
        let mut to_write: Vec<Token> = Vec::new();
        while let Some(p) = g.hub.poll_transmit_ready() {
            if let Some(&t) = self.by_peer.get(&p) {
                to_write.push(t);
            }
        }
        for t in &self.dirty {
            if self
                .socks
                .get(t)
                .is_some_and(|s| !s.pending.is_empty() || s.stream.wants_write())
            {
                to_write.push(*t);
            }
        }
        drop(g);
        for t in to_write {
            notify |= self.write(&shared, t, now);
        }
        let mut g = lock(&shared.core);
        // Writing can end connections (errors) and queue events.
        notify |= self.dispatch_events(&mut g);

        // Finished connections: drop their sockets at once.
        while let Some(p) = g.hub.poll_finished() {
            g.addrs.remove(&p);
            g.tls.remove(&p);
            if let Some(t) = self.by_peer.remove(&p) {
                if let Some(mut s) = self.socks.remove(&t) {
                    s.stream.close();
                    if s.interest.is_some() {
                        let _ = self.poll.registry().deregister(s.stream.io());
                    }
                }
                self.to_read.remove(&t);
                self.dirty.remove(&t);
                self.blocked.remove(&t);
            }
            notify = true;
        }

        // Interest.
        let dispatch = &self.dispatch;
        let socks = &self.socks;
        let dirty = &mut self.dirty;
        self.blocked.retain(|t| {
            let Some(s) = socks.get(t) else { return false };
            let free = dispatch.get(&s.peer).is_none_or(Dispatch::can_take);
            if free {
                dirty.insert(*t);
            }
            !free
        });
        let dirty: Vec<Token> = self.dirty.drain().collect();
        for t in dirty {
            let Some(s) = self.socks.get_mut(&t) else {
                continue;
            };
            let free = self.dispatch.get(&s.peer).is_none_or(Dispatch::can_take);
            if !free {
                self.blocked.insert(t);
            }
            let read = g.hub.wants_input(s.peer) && free;
            let want = io::interest(read, io::wants_writable(&s.stream, !s.pending.is_empty()));
            io::set_interest(
                self.poll.registry(),
                s.stream.io(),
                t,
                &mut s.interest,
                want,
            );
        }

        if notify {
            shared.cv.notify_all();
        }

        // Next wake-up.
        let mut deadline = g.hub.poll_timeout();
        if let Some(p) = self.paused_until {
            deadline = Some(deadline.map_or(p, |d| d.min(p)));
        }
        if let Some(Reverse((p, _))) = self.probes.peek() {
            deadline = Some(deadline.map_or(*p, |d| d.min(*p)));
        }
        if let Phase::Stopping { until } = g.phase {
            deadline = Some(deadline.map_or(until, |d| d.min(until)));
        }
        let stopping_done = matches!(g.phase, Phase::Stopping { .. }) && self.socks.is_empty();
        let busy = stopping_done
            || (self.accept_ready && self.listener.is_some() && self.paused_until.is_none())
            || self.to_read.iter().any(|t| {
                self.socks.get(t).is_some_and(|s| {
                    g.hub.wants_input(s.peer)
                        && self.dispatch.get(&s.peer).is_none_or(Dispatch::can_take)
                })
            });
        drop(g);
        if busy {
            return Some(Some(Duration::ZERO));
        }
        Some(deadline.map(|d| d.saturating_duration_since(Instant::now())))
    }

    fn accept(&mut self, g: &mut Core, now: Instant) {
        let Some(listener) = self.listener.as_mut() else {
            return;
        };
        for _ in 0..ACCEPTS_PER_PASS {
            match listener.accept_io() {
                Ok((mut stream, addr)) => match g.hub.accept(now) {
                    Ok(peer) => {
                        let _ = stream.set_nodelay(true);
                        let t = Token(self.next_token);
                        // The hub's handshake deadline runs from here: it
                        // covers the TLS handshake too.
                        let stream = match &self.shared.tls {
                            None => Stream::Plain(stream),
                            Some(tls) => match tls.new_connection() {
                                Ok(c) => {
                                    let probe = veltix_tls::plaintext_probe_delay(
                                        self.shared.config.handshake_timeout,
                                    );
                                    self.probes.push(Reverse((now + probe, t)));
                                    Stream::Tls(Box::new(TlsStream::new(stream, c)))
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot start TLS");
                                    g.hub.handle_transport_error(
                                        peer,
                                        now,
                                        &std::io::Error::other("TLS"),
                                    );
                                    continue;
                                }
                            },
                        };
                        self.next_token = self.next_token.wrapping_add(1).max(FIRST_CONN);
                        g.addrs.insert(peer, addr);
                        self.by_peer.insert(peer, t);
                        self.socks.insert(
                            t,
                            Sock {
                                stream,
                                peer,
                                pending: VecDeque::new(),
                                readable: false,
                                interest: None,
                                identity_known: false,
                            },
                        );
                        self.dirty.insert(t);
                        tracing::debug!(%peer, %addr, "accepted");
                    }
                    Err(rejection) => {
                        // Best effort, non-blocking: the socket is fresh, the
                        // rejection small. Then close. (A TLS server closes
                        // at once: plaintext would read as garbage to a TLS
                        // client, and a handshake costs more than a refusal
                        // is worth.)
                        if self.shared.tls.is_none() {
                            let _ = stream.write(&rejection.bytes);
                        }
                        tracing::debug!(%addr, reason = %rejection.reason, "rejected");
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.accept_ready = false;
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    // EMFILE/ENFILE and the like: rest the listener instead of
                    // spinning on it, log at most once a second.
                    if self
                        .last_accept_log
                        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
                    {
                        self.last_accept_log = Some(now);
                        #[cfg(unix)]
                        let fd_limit = matches!(e.raw_os_error(), Some(23 | 24));
                        #[cfg(not(unix))]
                        let fd_limit = false;
                        tracing::warn!(error = %e, fd_limit, pause = ?ACCEPT_PAUSE, "accept failed; pausing the listener");
                    }
                    if self.listener_registered {
                        let _ = self.poll.registry().deregister(listener);
                        self.listener_registered = false;
                    }
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    self.accept_ready = false;
                    return;
                }
            }
        }
        // More may be waiting: `accept_ready` stays set.
    }

    /// TLS connections that said nothing for the probe delay: plaintext
    /// Veltix clients waiting for our hello. They get a plaintext
    /// `tls_required` rejection (best effort) and are closed.
    fn probe(&mut self, g: &mut Core, now: Instant) {
        while let Some(&Reverse((at, t))) = self.probes.peek() {
            if at > now {
                return;
            }
            self.probes.pop();
            let Some(s) = self.socks.get_mut(&t) else {
                continue;
            };
            if g.hub.is_open(s.peer) && s.stream.silent(s.readable) {
                let _ = s.stream.io().write(&veltix_tls::tls_required_rejection());
                tracing::debug!(peer = %s.peer, "silent peer on a TLS server: answered tls_required");
                g.hub.handle_transport_error(
                    s.peer,
                    now,
                    &veltix_tls::TlsError::PlaintextPeer.into_io(),
                );
                self.dirty.insert(t);
            }
        }
    }

    pub(super) fn read(&mut self, shared: &Shared, t: Token, now: Instant) {
        let Some(s) = self.socks.get_mut(&t) else {
            self.to_read.remove(&t);
            return;
        };
        let peer = s.peer;
        let mut g = lock(&shared.core);
        for _ in 0..io::READS_PER_PASS {
            if !g.hub.wants_input(peer) || !self.dispatch.get(&peer).is_none_or(Dispatch::can_take)
            {
                // Stays in `to_read` while readable: resumed when allowed.
                self.dirty.insert(t);
                return;
            }
            drop(g);
            let r = io::read1(&mut s.stream, &mut self.buf);
            g = lock(&shared.core);
            match r {
                Read1::Data(n) => {
                    if !s.identity_known {
                        // Plaintext arrived: the TLS handshake is over, and a
                        // verified client certificate is the peer's identity
                        // before its Veltix handshake ends.
                        s.identity_known = true;
                        if let Some(id) = s.stream.tls_info().and_then(|i| i.identity()) {
                            g.hub.set_transport_identity(peer, id);
                        }
                    }
                    g.hub.handle_input(peer, now, &self.buf[..n]);
                }
                Read1::Eof => {
                    g.hub.handle_eof(peer, now);
                    break;
                }
                Read1::Blocked => {
                    s.readable = false;
                    self.to_read.remove(&t);
                    self.dirty.insert(t);
                    return;
                }
                Read1::Failed(e) => {
                    if let Some(tls) = veltix_tls::TlsError::in_io(&e) {
                        tracing::debug!(%peer, error = %tls, "TLS failed");
                    }
                    g.hub.handle_transport_error(peer, now, &e);
                    break;
                }
            }
        }
        self.dirty.insert(t);
        if !g.hub.is_open(peer) {
            s.readable = false;
            self.to_read.remove(&t);
        }
    }

    /// Writes what the core has for the socket; `true` if bytes went out.
    pub(super) fn write(&mut self, shared: &Shared, t: Token, now: Instant) -> bool {
        let Some(s) = self.socks.get_mut(&t) else {
            return false;
        };
        let mut out = HubOut {
            core: &shared.core,
            peer: s.peer,
            now,
        };
        let (r, n) = io::flush(&mut s.stream, &mut s.pending, &mut out);
        if let Flushed::Failed(e) = r {
            lock(&shared.core)
                .hub
                .handle_transport_error(s.peer, now, &e);
            s.pending.clear();
        }
        self.dirty.insert(t);
        n > 0
    }

    /// Takes completions and events from the core; `true` if a waiter got
    /// its outcome.
    fn dispatch_events(&mut self, g: &mut Core) -> bool {
        let mut notify = false;
        while let Some((peer, ev)) = g.hub.poll_completion() {
            notify |= complete(g, peer, ev);
        }
        let mut batch = std::mem::take(&mut self.batch);
        let mut run: Vec<Item> = Vec::new();
        while g.hub.poll_events(EVENT_BATCH, &mut batch) > 0 {
            // One peer per batch. Taking events can let the core want input again.
            let peer = batch[0].0;
            if let Some(&t) = self.by_peer.get(&peer) {
                self.dirty.insert(t);
            }
            for (peer, ev) in batch.drain(..) {
                if let HubEvent::Message(f) = ev {
                    // Messages in a row go to the peer's queue together.
                    run.push(Item::Message(f));
                    continue;
                }
                self.enqueue_run(peer, &mut run);
                notify |= self.dispatch_one(g, peer, ev);
            }
            self.enqueue_run(peer, &mut run);
        }
        self.batch = batch;
        // Staged items move to their mailboxes while there is room (one
        // lock per peer); finished peers go once everything is handed over.
        for peer in std::mem::take(&mut self.staged) {
            let Some(d) = self.dispatch.get_mut(&peer) else {
                continue;
            };
            if d.mailbox.post_while_room(&self.pool, &mut d.held) {
                if d.closed {
                    self.dispatch.remove(&peer);
                }
                if let Some(&t) = self.by_peer.get(&peer) {
                    self.dirty.insert(t);
                }
            } else {
                self.staged.insert(peer);
            }
        }
        notify
    }

    /// Queues `run` (messages of `peer`, in order) for its handlers.
    fn enqueue_run(&mut self, peer: PeerId, run: &mut Vec<Item>) {
        if run.is_empty() {
            return;
        }
        let Some(d) = self.dispatch.get_mut(&peer) else {
            run.clear();
            return;
        };
        d.held.extend(run.drain(..));
        self.staged.insert(peer);
    }

    /// Routes one event other than a message; `true` if a waiter got its outcome.
    fn dispatch_one(&mut self, g: &mut Core, peer: PeerId, ev: HubEvent) -> bool {
        let mut notify = false;
        {
            match ev {
                HubEvent::Connected(hello) => {
                    let Some(&addr) = g.addrs.get(&peer) else {
                        return false;
                    };
                    let tls = self
                        .by_peer
                        .get(&peer)
                        .and_then(|t| self.socks.get(t))
                        .and_then(|s| s.stream.tls_info())
                        .map(Arc::new);
                    if let Some(info) = &tls {
                        g.tls.insert(peer, info.clone());
                    }
                    let handle = Peer {
                        id: peer,
                        addr,
                        hello: Some(Arc::new(hello)),
                        tls,
                        server: Arc::downgrade(&self.shared),
                    };
                    let waker = self.waker.clone();
                    let (shared, p) = (self.shared.clone(), handle.clone());
                    let mailbox = Mailbox::new(
                        self.mailbox_cap,
                        move |f: Frame| {
                            let server = Server(shared.clone());
                            match server.handler(f.message_type) {
                                Some(h) => h(&server, &p, f),
                                None => {
                                    tracing::debug!(message_type = %f.message_type, "no handler; message dropped")
                                }
                            }
                        },
                        move || {
                            let _ = waker.wake();
                        },
                    );
                    let shared = self.shared.clone();
                    let p = handle.clone();
                    self.dispatch.insert(
                        peer,
                        Dispatch {
                            peer: handle,
                            mailbox,
                            held: VecDeque::new(),
                            closed: false,
                        },
                    );
                    self.enqueue(
                        peer,
                        Item::Job(Box::new(move || {
                            let server = Server(shared);
                            let cb = server.callbacks_read().on_connect.clone();
                            if let Some(cb) = cb {
                                cb(&server, &p);
                            }
                        })),
                    );
                }
                HubEvent::Message(f) => self.enqueue(peer, Item::Message(f)),
                HubEvent::Disconnected(reason) => {
                    let Some(d) = self.dispatch.get_mut(&peer) else {
                        return false;
                    };
                    tracing::debug!(%peer, %reason, "peer disconnected");
                    d.closed = true;
                    let shared = self.shared.clone();
                    let p = d.peer.clone();
                    self.enqueue(
                        peer,
                        Item::Job(Box::new(move || {
                            let server = Server(shared);
                            let cb = server.callbacks_read().on_disconnect.clone();
                            if let Some(cb) = cb {
                                cb(&server, &p);
                            }
                        })),
                    );
                }
                ev @ HubEvent::Completed { .. } => notify |= complete(g, peer, ev),
                _ => {}
            }
        }
        notify
    }

    /// Queues an item for `peer`'s handlers (handed to its mailbox at the
    /// end of `dispatch_events`).
    fn enqueue(&mut self, peer: PeerId, item: Item) {
        let Some(d) = self.dispatch.get_mut(&peer) else {
            return;
        };
        d.held.push_back(item);
        self.staged.insert(peer);
    }

    /// The end of a shutdown: cut what is left, hand every last event to the
    /// pool, release the sockets.
    fn teardown(&mut self, g: &mut Core, now: Instant) {
        let cut = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        for s in self.socks.values() {
            g.hub.handle_transport_error(s.peer, now, &cut);
        }
        self.dispatch_events(g);
        while g.hub.poll_finished().is_some() {}
        for (_, mut s) in self.socks.drain() {
            if s.interest.is_some() {
                let _ = self.poll.registry().deregister(s.stream.io());
            }
        }
        self.by_peer.clear();
        g.addrs.clear();
        g.tls.clear();
        let mut dropped = 0;
        for (_, d) in self.dispatch.drain() {
            dropped += d.mailbox.discard_messages();
            for item in d.held {
                match item {
                    Item::Job(_) => d.mailbox.post(&self.pool, item),
                    Item::Message(_) => dropped += 1,
                }
            }
        }
        if dropped > 0 {
            tracing::debug!(dropped, "shutdown: messages not yet handled were dropped");
        }
        g.phase = Phase::Stopped;
        g.local_addr = None;
        g.waker = None;
        self.shared.cv.notify_all();
        tracing::info!("server stopped");
    }
}

impl Server {
    fn callbacks_read(&self) -> std::sync::RwLockReadGuard<'_, Callbacks> {
        self.0.callbacks.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hands a request's outcome to its waiter; `true` if one was waiting.
fn complete(g: &mut Core, peer: PeerId, ev: HubEvent) -> bool {
    if let HubEvent::Completed {
        request_id,
        outcome,
    } = ev
    {
        if let Some(slot) = g.waiting.get_mut(&(peer, request_id)) {
            *slot = Some(outcome);
            return true;
        }
    }
    false
}
