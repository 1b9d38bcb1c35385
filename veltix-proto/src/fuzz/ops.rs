//! `connection_ops`: a client and a server [`Connection`] joined by in-memory
//! byte queues, driven by an arbitrary script of commands, time and corruption.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use bytes::Bytes;

use super::prefix;
use crate::connection::{Connection, ConnectionConfig, DEFAULT_MAX_OUTBOUND, TRANSMIT_WINDOW};
use crate::correlation::{RequestKind, MAX_ID_WINDOW, SERVER_ID_BASE};
use crate::decoder::{TypeSet, DEFAULT_MAX_BUFFER_SIZE};
use crate::error::SendError;
use crate::event::{CloseReason, Event, RequestFailure};
use crate::frame::{EncodedFrame, MessageType, DEFAULT_MAX_MESSAGE_SIZE, HEADER_LEN};
use crate::handshake::Side;

/// Most ops one input runs.
const MAX_OPS: usize = 300;

/// The settings of one side from one byte: bits 0–1 `max_outbound` (32 MiB,
/// 64, 512, 0), bits 2–3 `max_message_size` (10 MiB, 1024, 64, 15), bit 4
/// strict, bits 5–6 `id_window` (30 000, 1, 2, 4), bit 7 accept only
/// types 0, 1, 200, 201 and 300.
fn config(b: u8, handshake_timeout: Duration) -> ConnectionConfig {
    let mut c = ConnectionConfig {
        handshake_timeout,
        max_outbound: [DEFAULT_MAX_OUTBOUND, 64, 512, 0][usize::from(b & 3)],
        id_window: [30_000, 1, 2, 4][usize::from((b >> 5) & 3)],
        ..ConnectionConfig::default()
    };
    c.decoder.max_message_size =
        [DEFAULT_MAX_MESSAGE_SIZE, 1024, 64, HEADER_LEN][usize::from((b >> 2) & 3)];
    c.decoder.max_buffer_size = DEFAULT_MAX_BUFFER_SIZE;
    c.decoder.strict = b & 0x10 != 0;
    if b & 0x80 != 0 {
        let set: TypeSet = [0, 1, 200, 201, 300].into_iter().map(MessageType).collect();
        c.decoder.accepted_types = Some(Arc::new(set));
    }
    c
}

const TYPES: [u16; 8] = [0, 1, 200, 201, 300, 4321, 9999, 65535];
const LENS: [usize; 16] = [
    0, 1, 14, 15, 16, 49, 50, 100, 1000, 1009, 4095, 4096, 4097, 8192, 20_000, 70_000,
];

fn byte(u: &mut Unstructured<'_>) -> Result<u8> {
    u.arbitrary()
}

fn id16(u: &mut Unstructured<'_>) -> Result<u16> {
    Ok(u16::from_be_bytes([byte(u)?, byte(u)?]))
}

fn ty(u: &mut Unstructured<'_>) -> Result<MessageType> {
    Ok(MessageType(TYPES[usize::from(byte(u)? % 8)]))
}

/// A payload from two bytes: length (`< 200`: `b / 4`, else one of [`LENS`])
/// and content (one repeated byte, or `"VX\0"` over and over when the high bit is set).
fn payload(u: &mut Unstructured<'_>) -> Result<Bytes> {
    let l = byte(u)?;
    let fill = byte(u)?;
    let len = if l < 200 {
        usize::from(l / 4)
    } else {
        LENS[usize::from(l - 200) % LENS.len()]
    };
    Ok(if fill & 0x80 != 0 {
        let mut v = b"VX\0".repeat(len / 3 + 1);
        v.truncate(len);
        Bytes::from(v)
    } else {
        Bytes::from(vec![fill; len])
    })
}

fn timeout(u: &mut Unstructured<'_>) -> Result<Duration> {
    Ok(Duration::from_millis(20 * u64::from(byte(u)?)))
}

/// One connection and what the script knows about it.
struct Peer {
    side: Side,
    conn: Connection,
    /// The latest `now` given to it.
    now: Instant,
    /// Ids returned by `request`/`ping` that have not ended yet: kind, sent at, deadline.
    outstanding: BTreeMap<u16, (RequestKind, Instant, Instant)>,
    /// Ids of messages received, to reply to.
    received: Vec<u16>,
    connected: bool,
    closed: Option<CloseReason>,
    /// Output still allowed after a close: what was queued (held by the
    /// driver included) when `close()` was called, less what was written since.
    allowed_after_close: usize,
    /// Bytes taken after a local close (never more than was queued then).
    taken_after_close: usize,
    queued_at_close: usize,
    /// When the local close began (for its flush deadline).
    closed_locally_at: Option<Instant>,
    frames_out_at_close: Option<u64>,
    bytes_out: u64,
    /// The driver cannot write (a peer that does not read): it takes output
    /// up to the transmit window and holds it unreported.
    stalled: bool,
    /// Bytes taken with `poll_transmit` and not yet written.
    held: Vec<u8>,
}

impl Peer {
    fn new(side: Side, config: ConnectionConfig, now: Instant) -> Self {
        Peer {
            side,
            conn: Connection::new(side, Arc::new(config), now),
            now,
            outstanding: BTreeMap::new(),
            received: Vec::new(),
            connected: false,
            closed: None,
            allowed_after_close: 0,
            taken_after_close: 0,
            queued_at_close: 0,
            closed_locally_at: None,
            frames_out_at_close: None,
            bytes_out: 0,
            stalled: false,
            held: Vec::new(),
        }
    }

    fn at(&mut self, now: Instant) -> Instant {
        if now > self.now {
            self.now = now;
        }
        self.now
    }

    /// `close(now)`, recording what it found queued.
    fn local_close(&mut self, now: Instant) {
        let was_closed = self.conn.is_closed();
        let queued = self.conn.queued_bytes();
        self.conn.close(now);
        if !was_closed {
            self.allowed_after_close = queued;
            self.queued_at_close = queued - self.held.len();
            self.taken_after_close = 0;
            self.closed_locally_at = Some(now);
        }
        assert!(self.conn.is_closed());
        if !was_closed {
            assert_eq!(self.conn.is_finished(), queued == 0, "close drains first");
        }
    }

    fn window(&self) -> u16 {
        self.conn.config().id_window.clamp(1, MAX_ID_WINDOW)
    }

    /// A command either queues exactly one frame of `15 + len` bytes, or
    /// refuses and changes nothing.
    fn command<T: std::fmt::Debug>(
        &mut self,
        len: usize,
        f: impl FnOnce(&mut Connection) -> std::result::Result<T, SendError>,
    ) -> Option<T> {
        let before = (
            self.conn.queued_bytes(),
            self.conn.pending_requests(),
            self.conn.stats().frames_out,
        );
        let r = f(&mut self.conn);
        let after = (
            self.conn.queued_bytes(),
            self.conn.pending_requests(),
            self.conn.stats().frames_out,
        );
        match r {
            Ok(v) => {
                assert!(self.connected && self.closed.is_none() && !self.conn.is_closed());
                assert_eq!(after.0, before.0 + HEADER_LEN + len, "queued bytes");
                assert_eq!(after.2, before.2 + 1, "frames_out");
                Some(v)
            }
            Err(e) => {
                assert_eq!(before, after, "a refused command changed something: {e:?}");
                match &e {
                    SendError::NotConnected => assert!(self.conn.is_handshaking()),
                    SendError::Closed(r) => assert_eq!(self.conn.close_reason(), Some(r)),
                    SendError::QueueFull { queued, limit } => {
                        assert!(*queued > 0 && queued + HEADER_LEN + len > *limit)
                    }
                    SendError::IdsExhausted(_) => {
                        let (base, window) = match self.side {
                            Side::Client => (0, MAX_ID_WINDOW),
                            Side::Server => (SERVER_ID_BASE, self.window()),
                        };
                        assert!(
                            (0..window).all(|i| self.conn.is_pending(base.wrapping_add(i))),
                            "IdsExhausted with a free id"
                        );
                    }
                    SendError::IdInUse(id) => assert!(self.conn.is_pending(*id)),
                    SendError::ReservedType(t) => assert!(t.is_system(), "{t:?} refused"),
                    SendError::PayloadTooLarge(_) => panic!("payloads here are small"),
                }
                None
            }
        }
    }

    /// A new request or ping id: never one already outstanding, and from our half.
    fn started(&mut self, id: u16, kind: RequestKind, now: Instant, timeout: Duration, auto: bool) {
        assert!(
            !self.outstanding.contains_key(&id),
            "id {id} handed out while still pending"
        );
        assert!(self.conn.is_pending(id));
        if auto {
            match self.side {
                Side::Client => assert!(id < SERVER_ID_BASE, "client id {id}"),
                Side::Server => assert!(
                    id.wrapping_sub(SERVER_ID_BASE) < self.window(),
                    "server id {id} outside its window"
                ),
            }
        }
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        self.outstanding.insert(id, (kind, now, deadline));
    }

    fn event(&mut self, e: Event) {
        assert!(
            self.closed.is_none(),
            "{:?}: event after Closed: {e:?}",
            self.side
        );
        match e {
            Event::Connected(_) => {
                assert!(!self.connected, "Connected twice");
                self.connected = true;
            }
            Event::Message(f) => {
                assert!(self.connected);
                assert_ne!(
                    f.message_type,
                    MessageType::PING,
                    "PING reached the application"
                );
                assert!(
                    !self.outstanding.contains_key(&f.request_id),
                    "a frame with pending id {} came as a Message",
                    f.request_id
                );
                if self.received.len() >= 32 {
                    self.received.remove(0);
                }
                self.received.push(f.request_id);
            }
            Event::Response { request_id, frame } => {
                let p = self.outstanding.remove(&request_id);
                assert!(
                    matches!(p, Some((RequestKind::Request, ..))),
                    "Response for {request_id}, which is {p:?}"
                );
                assert_eq!(frame.request_id, request_id);
                assert_ne!(frame.message_type, MessageType::PING);
            }
            Event::Pong { request_id, rtt } => {
                let p = self.outstanding.remove(&request_id);
                let Some((RequestKind::Ping, sent, _)) = p else {
                    panic!("Pong for {request_id}, which is {p:?}");
                };
                assert_eq!(rtt, self.now.saturating_duration_since(sent), "rtt");
            }
            Event::RequestFailed {
                request_id,
                kind,
                reason,
            } => {
                let p = self.outstanding.remove(&request_id);
                let Some((k, _, deadline)) = p else {
                    panic!("RequestFailed for {request_id}, which is not outstanding");
                };
                assert_eq!(k, kind);
                match reason {
                    RequestFailure::TimedOut => {
                        assert!(self.now >= deadline, "timed out before its deadline")
                    }
                    RequestFailure::Closed(r) => assert_eq!(self.conn.close_reason(), Some(&r)),
                }
            }
            Event::Discarded(_) | Event::PongDropped { .. } => assert!(self.connected),
            Event::Closed {
                reason,
                unsent_bytes,
            } => {
                assert_eq!(self.conn.close_reason(), Some(&reason));
                assert!(
                    self.outstanding.is_empty(),
                    "closed with requests that never ended: {:?}",
                    self.outstanding
                );
                if let Some(at) = self.closed_locally_at {
                    // What a local close found queued is written or reported unsent.
                    assert_eq!(
                        unsent_bytes, self.allowed_after_close,
                        "{:?}: unsent bytes of a local close ({reason:?})",
                        self.side
                    );
                    if reason == CloseReason::Local && unsent_bytes > 0 {
                        assert!(
                            self.now >= at + self.conn.config().flush_timeout,
                            "output dropped before the flush deadline"
                        );
                    }
                } else {
                    assert_ne!(reason, CloseReason::Local, "Local without close()");
                }
                self.held.clear();
                if !self.connected {
                    assert!(
                        matches!(
                            reason,
                            CloseReason::Handshake(_)
                                | CloseReason::Local
                                | CloseReason::Transport(_)
                        ),
                        "closed during the handshake with {reason:?}"
                    );
                }
                self.closed = Some(reason);
            }
        }
    }

    /// Takes output (a stalled driver holds it, up to the transmit window;
    /// otherwise it is written at once and reported) and events; returns
    /// whether there was any.
    fn drain(&mut self, wire: &mut VecDeque<u8>) -> bool {
        let mut any = false;
        loop {
            if !self.stalled && !self.held.is_empty() && self.closed.is_none() {
                any = true;
                let n = self.held.len();
                wire.extend(&self.held);
                self.held.clear();
                if self.conn.is_closed() {
                    self.allowed_after_close -= n.min(self.allowed_after_close);
                }
                let now = self.now;
                self.conn.handle_written(now, n);
            }
            let Some(b) = self.conn.poll_transmit() else {
                break;
            };
            any = true;
            assert!(
                self.conn.in_flight() <= TRANSMIT_WINDOW + b.len(),
                "poll_transmit past the transmit window"
            );
            if self.conn.is_closed() {
                self.taken_after_close += b.len();
                assert!(
                    self.taken_after_close <= self.queued_at_close,
                    "{:?}: new output after close",
                    self.side
                );
            }
            self.bytes_out += b.len() as u64;
            self.held.extend_from_slice(&b);
        }
        assert!(
            !self.conn.has_transmit(),
            "poll_transmit gave nothing while has_transmit()"
        );
        while let Some(e) = self.conn.poll_event() {
            any = true;
            self.event(e);
        }
        any
    }

    /// The `poll_timeout` contract: "now" exactly while `has_transmit()`,
    /// else `next_timer()`.
    fn check_timeout(&self) {
        let promised = self.conn.poll_timeout();
        if self.conn.has_transmit() {
            assert!(
                promised.is_some_and(|t| t <= self.now),
                "{:?}: poll_timeout {promised:?} hides output to take (now {:?})",
                self.side,
                self.now
            );
        } else {
            assert_eq!(
                promised,
                self.conn.next_timer(),
                "{:?}: poll_timeout is not the next timer without output to take",
                self.side
            );
        }
    }

    /// After an op: the `poll_timeout` contract, output and events, timers.
    fn settle(&mut self, now: Instant, wire: &mut VecDeque<u8>) {
        self.check_timeout();
        self.drain(wire);
        let now = self.at(now);
        loop {
            self.conn.handle_timeout(now);
            if !self.drain(wire) {
                break;
            }
        }
        // Everything taken: the driver waits for a timer only (never "now",
        // even when it cannot write), and that timer is in the future.
        assert!(!self.conn.has_transmit());
        self.check_timeout();
        let next = self.conn.poll_timeout();
        assert!(
            next.is_none_or(|t| t > now),
            "{:?}: deadline {next:?} in the past after handle_timeout({now:?})",
            self.side
        );
        if self.conn.queued_bytes() > 0 && !self.conn.is_closed() {
            // Unwritten output always runs the write deadline.
            assert!(
                self.stalled,
                "a driver that can write left output unwritten"
            );
            if self.conn.config().write_timeout.is_some() {
                assert!(next.is_some(), "unwritten output without a write deadline");
            }
        }
        if next.is_none() && !self.conn.is_closed() {
            assert!(self.outstanding.is_empty() && !self.conn.is_handshaking());
        }
        assert_eq!(self.conn.pending_requests(), self.outstanding.len());
        for id in self.outstanding.keys() {
            assert!(self.conn.is_pending(*id));
        }
        assert_eq!(self.conn.stats().bytes_out, self.bytes_out);
        assert_eq!(
            self.conn.in_flight(),
            if self.closed.is_some() {
                0
            } else {
                self.held.len()
            },
            "in_flight is what the driver holds"
        );
        if self.conn.is_closed() {
            let frames_out = self.conn.stats().frames_out;
            let at_close = *self.frames_out_at_close.get_or_insert(frames_out);
            assert_eq!(frames_out, at_close, "a closed connection queued a frame");
        }
        if self.conn.is_finished() {
            assert!(self.closed.is_some(), "finished without a Closed event");
            assert_eq!(self.conn.queued_bytes(), 0);
        } else if self.conn.is_closed() {
            // Closing: draining what the local close found queued.
            assert!(self.closed.is_none());
            assert!(self.closed_locally_at.is_some());
            assert_eq!(self.conn.queued_bytes(), self.allowed_after_close);
            assert!(
                next.is_some(),
                "a draining close without its flush deadline"
            );
        }
    }
}

struct World {
    c: Peer,
    s: Peer,
    /// Bytes on their way to the client / the server.
    to_c: VecDeque<u8>,
    to_s: VecDeque<u8>,
    now: Instant,
}

impl World {
    fn peer(&mut self, server: bool) -> (&mut Peer, &mut VecDeque<u8>) {
        if server {
            (&mut self.s, &mut self.to_s)
        } else {
            (&mut self.c, &mut self.to_c)
        }
    }

    fn settle(&mut self) {
        self.c.settle(self.now, &mut self.to_s);
        self.s.settle(self.now, &mut self.to_c);
    }

    /// Delivers `k` in-flight bytes (all when `k` is 0) to one side.
    fn deliver(&mut self, server: bool, k: usize) {
        let now = self.now;
        let (p, inbox) = self.peer(server);
        let k = if k == 0 {
            inbox.len()
        } else {
            k.min(inbox.len())
        };
        if k == 0 {
            return;
        }
        let now = p.at(now);
        p.conn.handle_input(now, &inbox.make_contiguous()[..k]);
        inbox.drain(..k);
    }

    /// Delivers everything both ways until nothing moves.
    fn pump(&mut self) {
        for _ in 0..16 {
            if self.to_c.is_empty() && self.to_s.is_empty() {
                break;
            }
            self.deliver(true, 0);
            self.deliver(false, 0);
            self.settle();
        }
    }

    /// Runs one op; returns the side it touched (`Some(server)`), or `None`
    /// when it concerned both (time, delivering everything).
    fn op(&mut self, u: &mut Unstructured<'_>) -> Result<Option<bool>> {
        let code = byte(u)?;
        let server = code & 0x80 != 0;
        let now = self.now;
        let both = matches!(code & 0x0f, 8 | 15) || code & 0x1f == 13;
        match code & 0x0f {
            0 => {
                let (t, body) = (ty(u)?, payload(u)?);
                let (p, _) = self.peer(server);
                if code & 0x40 != 0 {
                    p.command(body.len(), |c| c.send_system(t, body.clone()));
                } else {
                    p.command(body.len(), |c| c.send(t, body.clone()));
                }
            }
            1 => {
                let (id, t, body) = (id16(u)?, ty(u)?, payload(u)?);
                let (p, _) = self.peer(server);
                p.command(body.len(), |c| c.send_with_id(t, id, body.clone()));
            }
            2 => {
                let (t, body, d) = (ty(u)?, payload(u)?, timeout(u)?);
                let (p, _) = self.peer(server);
                let now = p.at(now);
                if let Some(id) = p.command(body.len(), |c| c.request(now, t, body.clone(), d)) {
                    p.started(id, RequestKind::Request, now, d, true);
                }
            }
            3 => {
                let (id, t, body, d) = (id16(u)?, ty(u)?, payload(u)?, timeout(u)?);
                let (p, _) = self.peer(server);
                let now = p.at(now);
                let ok = p.command(body.len(), |c| {
                    c.request_with_id(now, t, id, body.clone(), d)
                });
                if ok.is_some() {
                    p.started(id, RequestKind::Request, now, d, false);
                }
            }
            4 => {
                let (i, t, body) = (byte(u)?, ty(u)?, payload(u)?);
                let (p, _) = self.peer(server);
                if !p.received.is_empty() {
                    let id = p.received[usize::from(i) % p.received.len()];
                    p.command(body.len(), |c| c.reply(id, t, body.clone()));
                }
            }
            5 => {
                let d = timeout(u)?;
                let (p, _) = self.peer(server);
                let now = p.at(now);
                if let Some(id) = p.command(0, |c| c.ping(now, d)) {
                    p.started(id, RequestKind::Ping, now, d, true);
                }
            }
            6 => {
                let id = id16(u)?;
                let (p, _) = self.peer(server);
                let id = match p.outstanding.len() {
                    0 => id,
                    n => *p
                        .outstanding
                        .keys()
                        .nth(usize::from(id) % n)
                        .expect("n > 0"),
                };
                let was = p.outstanding.remove(&id).is_some();
                assert_eq!(p.conn.cancel_request(id), was, "cancel_request({id})");
            }
            7 => {
                let (p, _) = self.peer(server);
                if code & 0x10 != 0 {
                    // Queue one more frame first: a graceful close still sends it.
                    let _ = p.conn.send(MessageType(200), Bytes::from_static(b"bye"));
                }
                let now = p.at(now);
                p.local_close(now);
            }
            8 => {
                let b = u64::from(byte(u)?);
                self.now += Duration::from_millis(b * b / 4);
            }
            9 => {
                let k = byte(u)?;
                self.deliver(server, usize::from(k));
            }
            10 => {
                let n = usize::from(byte(u)? % 64).min(u.len());
                let junk = u.bytes(n)?;
                let (_, inbox) = self.peer(server);
                inbox.extend(junk.iter());
            }
            11 => {
                let (p, _) = self.peer(server);
                let now = p.at(now);
                p.conn.handle_eof(now);
                assert!(p.conn.is_closed());
            }
            12 => {
                let (p, _) = self.peer(server);
                let now = p.at(now);
                let e = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
                p.conn.handle_transport_error(now, &e);
                assert!(p.conn.is_closed());
            }
            13 if code & 0x10 != 0 => {
                let (p, _) = self.peer(server);
                p.stalled = !p.stalled;
            }
            13 => self.pump(),
            14 => {
                let (t, id, body) = (ty(u)?, id16(u)?, payload(u)?);
                let frame = EncodedFrame::new(t, id, &body).expect("fits");
                let (p, _) = self.peer(server);
                p.command(body.len(), |c| c.send_encoded(&frame));
            }
            _ => {
                // Jump to the next deadline, exactly.
                let next = [self.c.conn.poll_timeout(), self.s.conn.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                if let Some(t) = next {
                    self.now = self.now.max(t);
                }
            }
        }
        Ok((!both).then_some(server))
    }
}

/// A client and a server core joined by byte queues, under a script.
///
/// Layout: `p[0]`, `p[1]`: the client's and the server's settings (see
/// `config`: small `max_outbound`, `max_message_size` and `id_window`,
/// strict mode, a type filter); `p[2]`: handshake timeout `(p[2] + 1)·50 ms`;
/// `p[3]` bit 0: deliver everything first (handshake done). Then up to 300
/// ops, one byte each (`0x80`: server side; `0x40` on send: `send_system`,
/// which allows reserved types; low nibble: send, send with id,
/// request, request with id, reply to a received message, ping, cancel,
/// close (`0x10`: after queuing one more frame), advance time by `b²/4` ms,
/// deliver `k` in-flight bytes (0: all), inject up to 63 junk bytes, EOF,
/// transport error, deliver everything (`0x10`: instead stop/resume writing
/// this side's output: a stalled driver takes output up to the transmit
/// window and reports nothing written), broadcast an encoded frame, jump to the next deadline) followed by its argument bytes.
///
/// Asserts after every op, on the side it touched (both when time moves or
/// everything is delivered): a refused command changes nothing
/// and an accepted one queues exactly its frame; every id returned by
/// `request`/`ping` is new, in the side's id range, and ends exactly once
/// (`Response`, `Pong` with the exact RTT, or `RequestFailed` — timed out only
/// after its deadline, closed only with the close reason), before `Closed`;
/// no frame with a pending id comes as a `Message`; no PING reaches the
/// application; no event after `Closed`; no output after a close except what
/// a local close found queued, and a local close reports exactly what it
/// could not write (only after its flush deadline); `poll_timeout` is due
/// exactly while `has_transmit()` and is `next_timer()` otherwise; a driver
/// that cannot write holds at most the transmit window and, once it took
/// everything, waits for a timer in the future (never "now"); `in_flight`
/// is what the driver holds. At the end both sides close and nothing stays
/// pending.
pub fn connection_ops(t0: Instant, data: &[u8]) {
    let (p, script) = prefix::<4>(data);
    let hs = Duration::from_millis(50 * (u64::from(p[2]) + 1));
    // The caller's epoch: the core never reads a clock.
    let mut w = World {
        c: Peer::new(Side::Client, config(p[0], hs), t0),
        s: Peer::new(Side::Server, config(p[1], hs), t0),
        to_c: VecDeque::new(),
        to_s: VecDeque::new(),
        now: t0,
    };
    w.settle();
    if p[3] & 1 != 0 {
        w.pump();
    }
    let mut u = Unstructured::new(script);
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        // Settling is most of the work: only the side an op touched (the
        // other one saw no input and no time pass).
        match w.op(&mut u) {
            Err(_) => break,
            Ok(Some(false)) => w.c.settle(w.now, &mut w.to_s),
            Ok(Some(true)) => w.s.settle(w.now, &mut w.to_c),
            Ok(None) => w.settle(),
        }
    }
    // Close both: every request ends, nothing is left.
    for server in [false, true] {
        let now = w.now;
        let (p, _) = w.peer(server);
        p.stalled = false;
        let now = p.at(now);
        p.local_close(now);
    }
    w.settle();
    w.pump();
    for p in [&w.c, &w.s] {
        assert!(p.closed.is_some(), "{:?}: no Closed event", p.side);
        assert!(
            p.outstanding.is_empty(),
            "{:?}: requests never ended",
            p.side
        );
        assert_eq!(p.conn.poll_timeout(), None);
        assert_eq!(p.conn.pending_requests(), 0);
    }
}
