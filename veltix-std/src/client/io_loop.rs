//! The client's one I/O thread: a `mio` readiness loop that dials when the
//! core [`ClientSession`] says so, moves its bytes, fires its deadlines, and
//! routes its events to waiters and to the worker pool.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Events, Interest, Poll};
use veltix_proto::{Error, SessionEvent};

use crate::io::{self, Flushed, Output, Read1};
use crate::pool::{lock, Item, Mailbox, Pool};
use crate::transport::{Stream, TlsStream, Transport};

use super::{Client, Core, CONN};

// ------------------------------------------------------------------ I/O loop

pub(super) struct Conn {
    transport: u64,
    /// The connector's stream, or TLS over it for a TLS client.
    stream: Stream,
    /// The peer's address, as the connector reported it.
    addr: SocketAddr,
    /// Connect in progress.
    dialing: bool,
    pending: VecDeque<Bytes>,
    readable: bool,
    /// A readiness event arrived since the last pass.
    event: bool,
    interest: Option<Interest>,
}

struct SessionOut<'a> {
    core: &'a Mutex<Core>,
    transport: u64,
    now: Instant,
}

impl Output for SessionOut<'_> {
    fn exchange(&mut self, written: usize, pending: &mut VecDeque<Bytes>) {
        let mut g = lock(self.core);
        if g.session.transport() != Some(self.transport) {
            // Not the session's transport any more: dropped after the flush.
            pending.clear();
            return;
        }
        if written > 0 {
            g.session.handle_written(self.now, written);
        }
        while let Some(b) = g.session.poll_transmit() {
            if !b.is_empty() {
                pending.push_back(b);
            }
        }
    }
}

pub(super) struct ClientIo {
    pub(super) client: Client,
    pub(super) poll: Poll,
    pub(super) pool: Arc<Pool>,
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) conn: Option<Conn>,
    /// The TLS failure that ended this transport: the session only sees an
    /// I/O error kind, so its give-up error is replaced by this one.
    pub(super) tls_failure: Option<(u64, veltix_tls::TlsError)>,
    /// Items taken from the core in this pass, not yet in the mailbox (at
    /// most one past the mailbox's cap; the socket is not read while this
    /// is non-empty).
    pub(super) held: VecDeque<Item>,
    pub(super) buf: Vec<u8>,
}

enum Step {
    Sleep(Option<Duration>),
    Exit,
}

impl ClientIo {
    pub(super) fn run(&mut self) {
        let mut events = Events::with_capacity(16);
        let mut timeout = Some(Duration::ZERO);
        loop {
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            for ev in events.iter() {
                if ev.token() == CONN {
                    if let Some(c) = self.conn.as_mut() {
                        c.event = true;
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            c.readable = true;
                        }
                    }
                }
            }
            match self.pass() {
                Step::Sleep(t) => timeout = t,
                Step::Exit => return,
            }
        }
    }

    fn can_take(&self) -> bool {
        self.held.is_empty() && self.mailbox.has_room()
    }

    fn pass(&mut self) -> Step {
        let shared = self.client.0.clone();
        let mut g = lock(&shared.core);
        g.wake_pending = false;
        let mut now = Instant::now();
        if g.abort {
            if self.conn.is_some() {
                let cut = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
                g.session.handle_transport_error(now, &cut);
            }
            self.drop_conn(&mut g);
            return self.exit(g);
        }
        let mut notify = false;

        // A dial in progress: done, failed, or still waiting.
        let name = self.name();
        if let Some(c) = self.conn.as_mut().filter(|c| c.dialing && c.event) {
            c.event = false;
            let sock = c.stream.io();
            let r = match sock.take_error() {
                Ok(Some(e)) | Err(e) => Some(Err(e)),
                Ok(None) => match sock.is_connected() {
                    Ok(true) => Some(Ok(())),
                    Ok(false) => None,
                    Err(e) => Some(Err(e)),
                },
            };
            match r {
                Some(Ok(())) => {
                    c.dialing = false;
                    let _ = sock.set_nodelay(true);
                    g.peer_addr = Some(c.addr);
                    g.local_addr = sock.local_addr();
                    g.session.handle_dialed(now, c.transport);
                    tracing::debug!(server = %c.addr, "transport connected");
                }
                Some(Err(e)) => {
                    let err = Error::from_connect(e, &name, shared.config.handshake_timeout);
                    g.session.handle_dial_failed(now, c.transport, err);
                }
                None => {}
            }
        }
        self.sync_conn(&mut g);

        // Read.
        // (The lock is released around each read.)
        if let Some(c) = self.conn.as_mut().filter(|c| !c.dialing && c.readable) {
            for _ in 0..io::READS_PER_PASS {
                if !(g.session.wants_input() && self.held.is_empty() && self.mailbox.has_room()) {
                    break;
                }
                drop(g);
                let r = io::read1(&mut c.stream, &mut self.buf);
                g = lock(&shared.core);
                if g.session.transport() != Some(c.transport) {
                    break;
                }
                match r {
                    Read1::Data(n) => {
                        g.session.handle_input(now, &self.buf[..n]);
                        if n == self.buf.len() && n < io::READ_CHUNK {
                            // A busy connection: read 64 KiB at a time from now on
                            // (an idle client keeps only `buffer_size`).
                            self.buf.resize(io::READ_CHUNK, 0);
                        }
                    }
                    Read1::Eof => {
                        g.session.handle_eof(now);
                        break;
                    }
                    Read1::Blocked => {
                        c.readable = false;
                        break;
                    }
                    Read1::Failed(e) => {
                        let e = note_tls(&mut self.tls_failure, c.transport, e);
                        g.session.handle_transport_error(now, &e);
                        break;
                    }
                }
            }
        }

        // Timers, dials.
        loop {
            if g.session.poll_timeout().is_some_and(|t| t <= now) {
                g.session.handle_timeout(now);
            }
            self.sync_conn(&mut g);
            let Some(dial) = g.session.poll_dial(now) else {
                break;
            };
            self.tls_failure = None;
            drop(g);
            let r = self.dial();
            g = lock(&shared.core);
            now = Instant::now();
            match r {
                Ok((mut stream, addr)) => {
                    match self.poll.registry().register(
                        stream.io(),
                        CONN,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        Ok(()) => {
                            self.conn = Some(Conn {
                                transport: dial.transport,
                                stream,
                                addr,
                                dialing: true,
                                pending: VecDeque::new(),
                                readable: false,
                                event: false,
                                interest: Some(Interest::READABLE | Interest::WRITABLE),
                            });
                        }
                        Err(e) => g
                            .session
                            .handle_dial_failed(now, dial.transport, Error::Io(e)),
                    }
                }
                Err(e) => g.session.handle_dial_failed(now, dial.transport, e),
            }
        }

        // Events.
        notify |= self.dispatch(&mut g, false);

        // Write.
        // (Written without the lock; `exchange` takes it briefly.)
        if let Some(c) = self.conn.as_mut().filter(|c| !c.dialing) {
            if g.session.has_transmit() || !c.pending.is_empty() || c.stream.wants_write() {
                drop(g);
                let mut out = SessionOut {
                    core: &shared.core,
                    transport: c.transport,
                    now,
                };
                let (r, n) = io::flush(&mut c.stream, &mut c.pending, &mut out);
                notify |= n > 0;
                g = lock(&shared.core);
                if let Flushed::Failed(e) = r {
                    let e = note_tls(&mut self.tls_failure, c.transport, e);
                    if g.session.transport() == Some(c.transport) {
                        g.session.handle_transport_error(now, &e);
                    }
                    c.pending.clear();
                }
            }
        }
        notify |= self.dispatch(&mut g, false);
        self.sync_conn(&mut g);

        if notify {
            shared.cv.notify_all();
        }

        if g.idle() {
            // Nothing left to do: hand the last events over and stop.
            return self.exit(g);
        }

        // Interest.
        let read_ok = g.session.wants_input() && self.can_take();
        if let Some(c) = self.conn.as_mut() {
            let want = if c.dialing {
                Some(Interest::READABLE | Interest::WRITABLE)
            } else {
                io::interest(
                    read_ok,
                    io::wants_writable(&c.stream, !c.pending.is_empty()),
                )
            };
            io::set_interest(
                self.poll.registry(),
                c.stream.io(),
                CONN,
                &mut c.interest,
                want,
            );
        }
        let busy = read_ok && self.conn.as_ref().is_some_and(|c| !c.dialing && c.readable);
        let deadline = g.session.poll_timeout();
        drop(g);
        if busy {
            return Step::Sleep(Some(Duration::ZERO));
        }
        Step::Sleep(deadline.map(|d| d.saturating_duration_since(Instant::now())))
    }

    pub(super) fn name(&self) -> String {
        let c = &self.client.0.config;
        format!("{}:{}", c.server_addr, c.port)
    }

    /// Opens a connection with the client's connector (outside the lock;
    /// TCP: resolves and starts a non-blocking connect), with TLS over it
    /// for a TLS client (its handshake starts once the stream is up, inside
    /// the session's handshake deadline). The connector's I/O errors are
    /// mapped as TCP connect errors.
    fn dial(&self) -> Result<(Stream, SocketAddr), Error> {
        let shared = &self.client.0;
        let c = &shared.config;
        let (io, addr) = shared
            .connector
            .connect_io(&c.server_addr, c.port)
            .map_err(|e| match e {
                Error::Io(e) => Error::from_connect(e, self.name(), c.handshake_timeout),
                e => e,
            })?;
        let stream = match &shared.tls {
            None => Stream::Plain(io),
            Some(tls) => {
                let conn = tls.new_connection(&c.server_addr)?;
                Stream::Tls(Box::new(TlsStream::new(io, conn)))
            }
        };
        Ok((stream, addr))
    }

    /// Drops the socket once the session no longer uses it.
    fn sync_conn(&mut self, g: &mut Core) {
        if self
            .conn
            .as_ref()
            .is_some_and(|c| g.session.transport() != Some(c.transport))
        {
            self.drop_conn(g);
        }
    }

    fn drop_conn(&mut self, g: &mut Core) {
        if let Some(mut c) = self.conn.take() {
            c.stream.close();
            if c.interest.is_some() {
                let _ = self.poll.registry().deregister(c.stream.io());
            }
            g.peer_addr = None;
            g.local_addr = None;
            g.tls = None;
        }
    }

    /// Takes completions and events from the core; `true` if a waiter got
    /// its outcome.
    ///
    /// Events are taken only while the mailbox has room (all of them when
    /// `all`): the rest stay in the core, which then stops reading.
    /// Request outcomes are always taken.
    fn dispatch(&mut self, g: &mut Core, all: bool) -> bool {
        let mut notify = false;
        while let Some(ev) = g.session.poll_completion() {
            notify |= complete(g, ev);
        }
        if !all {
            // Leftovers of the last pass first.
            self.mailbox.post_while_room(&self.pool, &mut self.held);
        }
        let mut room = match (all, self.held.is_empty()) {
            (true, _) => usize::MAX,
            (false, true) => self.mailbox.room(),
            (false, false) => 0,
        };
        while room > 0 {
            let Some(ev) = g.session.poll_event() else {
                break;
            };
            let staged = self.held.len();
            let client = self.client.clone();
            match ev {
                SessionEvent::Connected(_) => {
                    g.tls = self.conn.as_ref().and_then(|c| c.stream.tls_info());
                    tracing::info!(server = %self.name(), tls = ?g.tls, "connected");
                    self.enqueue(Item::Job(Box::new(move || {
                        let cb = client.callbacks_read().on_connect.clone();
                        if let Some(cb) = cb {
                            cb(&client);
                        }
                        client.set_outcome(Ok(()));
                    })));
                }
                SessionEvent::Message(f) => self.enqueue(Item::Message(f)),
                SessionEvent::Disconnected(state) => {
                    tracing::debug!(?state, "disconnect state");
                    self.enqueue(Item::Job(Box::new(move || {
                        let cb = client.callbacks_read().on_disconnect.clone();
                        if let Some(cb) = cb {
                            cb(&client, &state);
                        }
                    })));
                }
                SessionEvent::GaveUp(e) => {
                    let e = veltix_tls::give_up_error(e, self.tls_failure.take().map(|t| t.1));
                    tracing::debug!(error = %e, "gave up connecting");
                    self.enqueue(Item::Job(Box::new(move || client.set_outcome(Err(e)))));
                }
                ev @ SessionEvent::Completed { .. } => notify |= complete(g, ev),
                _ => {}
            }
            if self.held.len() > staged {
                room = room.saturating_sub(self.held.back().map_or(0, Item::cost));
            }
        }
        if all {
            for item in self.held.drain(..) {
                self.mailbox.post(&self.pool, item);
            }
        } else {
            self.mailbox.post_while_room(&self.pool, &mut self.held);
        }
        notify
    }

    /// Stages an item for the handlers (handed to the mailbox at the end of
    /// `dispatch`).
    fn enqueue(&mut self, item: Item) {
        self.held.push_back(item);
    }

    /// Ends the thread: the last events go to the pool (lifecycle ones
    /// always), the socket is released.
    fn exit(&mut self, mut g: MutexGuard<'_, Core>) -> Step {
        self.dispatch(&mut g, true);
        self.drop_conn(&mut g);
        g.io_running = false;
        g.waker = None;
        drop(g);
        self.client.0.cv.notify_all();
        Step::Exit
    }
}

/// Keeps the TLS error an I/O error carries (for the give-up error) and
/// returns what the session is told.
fn note_tls(
    slot: &mut Option<(u64, veltix_tls::TlsError)>,
    transport: u64,
    e: std::io::Error,
) -> std::io::Error {
    let (e, tls) = veltix_tls::split_io_error(e);
    if let Some(tls) = tls {
        tracing::debug!(error = %tls, "TLS failed");
        *slot = Some((transport, tls));
    }
    e
}

/// Hands a request's outcome to its waiter; `true` if one was waiting.
fn complete(g: &mut Core, ev: SessionEvent) -> bool {
    if let SessionEvent::Completed {
        request_id,
        outcome,
    } = ev
    {
        if let Some(slot) = g.waiting.get_mut(&request_id) {
            *slot = Some(outcome);
            return true;
        }
    }
    false
}
