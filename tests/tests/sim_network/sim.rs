//! A deterministic network of Veltix cores: one server and many clients on a
//! virtual clock, joined by seeded TCP-like links with faults.
//!
//! Links deliver bytes in order (like TCP) after a latency with jitter, cut
//! into random segments and coalesced into random reads. Faults, drawn from
//! the seed per link: stalls, a reset at a random byte offset, a corrupted
//! byte, and a receiver that stops reading for a while (a bounded window then
//! stops the sender, whose outbound queue fills). Clients reconnect with the
//! core's [`Reconnect`] policy. Everything the applications send is recorded
//! and checked at the end:
//!
//! * every delivered message is intact and delivered once;
//! * every message that was not delivered was sent on a connection that then
//!   failed (so its sender was told), or its `send` returned an error;
//! * every request ends exactly once, never after its deadline;
//! * every reconnect attempt happens exactly when Veltix's policy says.
//!
//! Any violation panics with the seed, and [`Sim::run`] with that seed
//! replays the same run exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use veltix_proto::retry::{NextStep, Reconnect, RetryPolicy};
use veltix_proto::{
    Acceptor, Connection, ConnectionConfig, DisconnectReason, Event, MessageType, RequestFailure,
};

/// xorshift64*: small, seeded, reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 | 1)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    /// A duration in `[0, d]`.
    pub fn upto(&mut self, d: Duration) -> Duration {
        Duration::from_nanos(self.below(d.as_nanos() as u64 + 1))
    }
}

/// How hostile the network is.
#[derive(Debug, Clone)]
pub struct Faults {
    /// One-way latency.
    pub latency: Duration,
    /// Extra random delay per segment (order is kept).
    pub jitter: Duration,
    /// Largest segment.
    pub max_segment: usize,
    /// Bytes a direction holds in flight before the sender must wait.
    pub window: usize,
    /// Per link and direction: probability of a reset at a random offset.
    pub reset: f64,
    /// Per link and direction: probability of one corrupted byte.
    pub corrupt: f64,
    /// Per link and direction: probability that the receiver stops reading for a while.
    pub stop_reading: f64,
    /// Per segment: probability of a stall.
    pub stall: f64,
    /// Longest stall or reading pause.
    pub max_pause: Duration,
}

impl Faults {
    /// No faults: only latency.
    pub fn none(latency: Duration) -> Self {
        Faults {
            latency,
            jitter: Duration::ZERO,
            max_segment: 1 << 16,
            window: 1 << 20,
            reset: 0.0,
            corrupt: 0.0,
            stop_reading: 0.0,
            stall: 0.0,
            max_pause: Duration::ZERO,
        }
    }

    /// Every fault enabled, at rates that still let work get done.
    pub fn hostile() -> Self {
        Faults {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(20),
            max_segment: 1500,
            window: 64 * 1024,
            reset: 0.25,
            corrupt: 0.15,
            stop_reading: 0.15,
            stall: 0.002,
            max_pause: Duration::from_secs(8),
        }
    }
}

/// One direction of a link.
#[derive(Debug, Default)]
struct Pipe {
    segments: VecDeque<(Instant, Vec<u8>)>,
    in_flight: usize,
    /// Bytes accepted from the sender so far.
    sent: u64,
    /// Reset when `sent` reaches this offset.
    reset_at: Option<u64>,
    /// Corrupt the byte at this offset.
    corrupt_at: Option<u64>,
    corrupted: bool,
    /// The receiver does not read before this time.
    paused_until: Option<Instant>,
    /// When the pause starts.
    pause_at: Option<Instant>,
}

impl Pipe {
    fn readable_at(&self) -> Option<Instant> {
        let head = self.segments.front()?.0;
        Some(match self.paused_until {
            Some(p) => head.max(p),
            None => head,
        })
    }
}

/// A link between client `client` and the server.
struct Link {
    client: usize,
    c2s: Pipe,
    s2c: Pipe,
    /// The server's side: `None` when the server refused the connection.
    server: Option<Connection>,
    /// Bytes the server sends instead of a connection (a rejection).
    refusal: Option<Bytes>,
    dead: bool,
}

/// A message (or request) an application sent.
#[derive(Debug, Clone)]
struct Sent {
    link: u64,
    delivered: u32,
    told_failed: bool,
}

struct Pending {
    seq: u64,
    link: u64,
    deadline: Instant,
}

struct Client {
    conn: Option<(u64, Connection)>,
    established: bool,
    reconnect: Reconnect,
    next_dial: Option<Instant>,
    restart_at: Option<Instant>,
    next_traffic: Instant,
    attempt_model: u32,
    pending: BTreeMap<u16, Pending>,
}

/// Counters of a run.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Seed of the run (shown in the report).
    #[allow(dead_code)]
    pub seed: u64,
    /// Messages delivered intact, both directions.
    pub delivered: u64,
    /// Messages lost with their sender told (failed connection or send error).
    pub lost_told: u64,
    /// Requests answered.
    pub responses: u64,
    /// Replies that arrived after their request had failed.
    pub late_replies: u64,
    /// Requests failed at their deadline.
    pub timeouts: u64,
    /// Requests failed because their connection closed.
    pub aborted: u64,
    /// Connections established.
    pub connects: u64,
    /// Dials refused with `server_full`.
    pub rejections: u64,
    /// Links reset by a fault.
    pub resets: u64,
    /// Bytes corrupted by a fault.
    pub corruptions: u64,
    /// Messages lost on a link whose bytes were corrupted in flight.
    pub lost_to_corruption: u64,
    /// Bytes the receivers dropped (counted by the decoders).
    pub discarded_bytes: u64,
    /// Replies whose id was altered by a corrupted header byte (the CRC
    /// covers the payload only; see TESTING.md).
    pub header_corruption_misroutes: u64,
}

/// The whole network.
pub struct Sim {
    seed: u64,
    rng: Rng,
    now: Instant,
    epoch: Instant,
    faults: Faults,
    config: Arc<ConnectionConfig>,
    acceptor: Acceptor,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    clients: Vec<Client>,
    policy: RetryPolicy,
    /// (direction, client, seq) -> record. direction 0 = client->server.
    sent: BTreeMap<(u8, usize, u64), Sent>,
    /// (link, direction) pairs that had a byte corrupted: the ground truth the
    /// loss accounting needs (direction 0 = client->server).
    corrupted: BTreeSet<(u64, u8)>,
    /// (client, seq) of requests that failed (their replies may still come).
    expired: BTreeSet<(usize, u64)>,
    next_seq: u64,
    request_timeout: Duration,
    /// New links get faults (off during the final quiet period).
    faults_on: bool,
    report: Report,
}

const MSG: MessageType = MessageType::new(200);
const REQ: MessageType = MessageType::new(201);

/// Payload: direction u8, client u32, seq u64, filler, then a checksum u32 of all before it.
fn payload(dir: u8, client: usize, seq: u64, filler: usize) -> Bytes {
    let mut v = Vec::with_capacity(17 + filler);
    v.push(dir);
    v.extend_from_slice(&(client as u32).to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend(std::iter::repeat_n((seq % 251) as u8, filler));
    let sum = crc32(&v);
    v.extend_from_slice(&sum.to_be_bytes());
    Bytes::from(v)
}

fn crc32(data: &[u8]) -> u32 {
    // A different checksum than the protocol's would be nicer; FNV-1a suffices
    // to tell an intact payload from a damaged one here.
    data.iter().fold(0x811C_9DC5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn parse(p: &[u8]) -> Option<(u8, usize, u64)> {
    if p.len() < 17 {
        return None;
    }
    let (body, sum) = p.split_at(p.len() - 4);
    if crc32(body).to_be_bytes() != sum {
        return None;
    }
    Some((
        body[0],
        u32::from_be_bytes(body[1..5].try_into().ok()?) as usize,
        u64::from_be_bytes(body[5..13].try_into().ok()?),
    ))
}

impl Sim {
    /// A network of `clients` clients; the server admits `max_connections`.
    pub fn new(
        seed: u64,
        clients: usize,
        max_connections: Option<usize>,
        faults: Faults,
        policy: RetryPolicy,
    ) -> Sim {
        let epoch = Instant::now();
        let config = ConnectionConfig {
            handshake_timeout: Duration::from_secs(3),
            max_outbound: 256 * 1024,
            ..ConnectionConfig::default()
        };
        let config = Arc::new(config);
        let mut rng = Rng::new(seed);
        let clients = (0..clients)
            .map(|i| Client {
                conn: None,
                established: false,
                reconnect: Reconnect::new(policy, seed ^ i as u64),
                next_dial: Some(epoch + Duration::from_millis(rng.below(2000))),
                restart_at: None,
                next_traffic: epoch,
                attempt_model: 0,
                pending: BTreeMap::new(),
            })
            .collect();
        Sim {
            seed,
            rng,
            now: epoch,
            epoch,
            faults,
            acceptor: Acceptor::new(config.clone(), max_connections),
            config,
            links: BTreeMap::new(),
            next_link: 1,
            clients,
            policy,
            sent: BTreeMap::new(),
            corrupted: BTreeSet::new(),
            expired: BTreeSet::new(),
            next_seq: 1,
            request_timeout: Duration::from_secs(2),
            faults_on: true,
            report: Report {
                seed,
                ..Report::default()
            },
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "simulation invariant violated (seed {seed}, t={t:?}): {what}\n  replay: VELTIX_SIM_SEED={seed} cargo test -p veltix-tests --test sim_network -- --nocapture",
            seed = self.seed,
            t = self.now - self.epoch
        );
    }

    fn pipe_plan(&mut self, faulty: bool) -> Pipe {
        let f = self.faults.clone();
        let mut p = Pipe::default();
        if !faulty {
            return p;
        }
        if self.rng.chance(f.reset) {
            p.reset_at = Some(self.rng.below(200_000));
        }
        if self.rng.chance(f.corrupt) {
            p.corrupt_at = Some(self.rng.below(100_000));
        }
        if self.rng.chance(f.stop_reading) {
            p.pause_at = Some(self.now + self.rng.upto(Duration::from_secs(20)));
        }
        p
    }

    fn dial(&mut self, c: usize, faulty: bool) {
        let id = self.next_link;
        self.next_link += 1;
        let c2s = self.pipe_plan(faulty);
        let s2c = self.pipe_plan(faulty);
        let (server, refusal) = match self.acceptor.accept(self.now) {
            Ok(conn) => (Some(conn), None),
            Err(r) => (None, Some(r.bytes)),
        };
        self.links.insert(
            id,
            Link {
                client: c,
                c2s,
                s2c,
                server,
                refusal,
                dead: false,
            },
        );
        let conn = Connection::client(self.config.clone(), self.now);
        self.clients[c].conn = Some((id, conn));
        self.clients[c].established = false;
    }

    /// Moves output into pipes, within each pipe's window.
    fn transmit(&mut self) {
        let f = self.faults.clone();
        let now = self.now;
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            let link = self.links.get_mut(&id).expect("listed");
            if link.dead {
                continue;
            }
            if let Some(r) = link.refusal.take() {
                push(&mut self.rng, &f, now, &mut link.s2c, r.to_vec());
            }
            if let Some(s) = link.server.as_mut() {
                while link.s2c.in_flight < f.window {
                    let Some(b) = s.poll_transmit() else { break };
                    push(&mut self.rng, &f, now, &mut link.s2c, b.to_vec());
                }
            }
            let client = &mut self.clients[link.client];
            if let Some((cid, conn)) = client.conn.as_mut() {
                if *cid == id {
                    while link.c2s.in_flight < f.window {
                        let Some(b) = conn.poll_transmit() else { break };
                        push(&mut self.rng, &f, now, &mut link.c2s, b.to_vec());
                    }
                }
            }
        }
    }

    fn next_wakeup(&self, end: Instant, traffic: bool) -> Instant {
        let mut t = end;
        for l in self.links.values().filter(|l| !l.dead) {
            for p in [&l.c2s, &l.s2c] {
                if let Some(x) = p.readable_at() {
                    t = t.min(x);
                }
                if let Some(x) = p.pause_at {
                    t = t.min(x);
                }
            }
            if let Some(x) = l.server.as_ref().and_then(Connection::poll_timeout) {
                t = t.min(x);
            }
        }
        for c in &self.clients {
            if let Some((_, conn)) = &c.conn {
                if let Some(x) = conn.poll_timeout() {
                    t = t.min(x);
                }
            }
            if let Some(x) = c.next_dial.or(c.restart_at) {
                t = t.min(x);
            }
            if traffic && c.established {
                t = t.min(c.next_traffic);
            }
        }
        t.max(self.now)
    }

    /// Delivers due bytes; applies resets and corruption.
    fn deliver(&mut self) {
        let now = self.now;
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            for dir in 0..2u8 {
                let link = self.links.get_mut(&id).expect("listed");
                if link.dead {
                    break;
                }
                let pipe = if dir == 0 {
                    &mut link.c2s
                } else {
                    &mut link.s2c
                };
                if pipe.pause_at.is_some_and(|t| t <= now) {
                    pipe.pause_at = None;
                    pipe.paused_until = Some(now + self.rng.upto(self.faults.max_pause));
                }
                if pipe.paused_until.is_some_and(|t| t > now) {
                    continue;
                }
                // Coalesce every due segment into one read, then hand it over in random chunks.
                let mut data = Vec::new();
                while pipe.segments.front().is_some_and(|(t, _)| *t <= now) {
                    let (_, seg) = pipe.segments.pop_front().expect("checked");
                    pipe.in_flight -= seg.len();
                    data.extend(seg);
                }
                if data.is_empty() {
                    continue;
                }
                let start = pipe.sent;
                pipe.sent += data.len() as u64;
                let mut reset = false;
                if let Some(at) = pipe.reset_at {
                    if at < pipe.sent {
                        data.truncate((at - start.min(at)) as usize);
                        reset = true;
                    }
                }
                if let Some(at) = pipe.corrupt_at {
                    if at >= start && at < start + data.len() as u64 {
                        data[(at - start) as usize] ^= 1 << self.rng.below(8);
                        pipe.corrupted = true;
                        self.corrupted.insert((id, dir));
                        self.report.corruptions += 1;
                    }
                }
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let n = 1 + self.rng.below(rest.len() as u64) as usize;
                    let link = self.links.get_mut(&id).expect("listed");
                    if dir == 0 {
                        if let Some(s) = link.server.as_mut() {
                            s.handle_input(now, &rest[..n]);
                        }
                    } else if let Some((cid, c)) = self.clients[link.client].conn.as_mut() {
                        if *cid == id {
                            c.handle_input(now, &rest[..n]);
                        }
                    }
                    rest = &rest[n..];
                }
                if reset {
                    self.report.resets += 1;
                    self.kill_link(id, "connection reset by the network");
                    break;
                }
            }
        }
    }

    fn kill_link(&mut self, id: u64, why: &str) {
        let now = self.now;
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        if link.dead {
            return;
        }
        link.dead = true;
        if let Some(s) = link.server.as_mut() {
            s.handle_transport_error(now, why);
        }
        let c = link.client;
        if let Some((cid, conn)) = self.clients[c].conn.as_mut() {
            if *cid == id {
                conn.handle_transport_error(now, why);
            }
        }
    }

    /// Marks every message sent on `link` and not delivered as "told failed".
    fn connection_failed(&mut self, link: u64) {
        for s in self.sent.values_mut() {
            if s.link == link && s.delivered == 0 {
                s.told_failed = true;
            }
        }
    }

    fn record_delivery(&mut self, dir: u8, frame_payload: &[u8], link: u64) {
        let Some((d, client, seq)) = parse(frame_payload) else {
            self.fail(format!("a damaged payload was delivered on link {link}"));
        };
        if d != dir {
            self.fail("a payload arrived in the wrong direction");
        }
        let Some(rec) = self.sent.get_mut(&(dir, client, seq)) else {
            self.fail(format!(
                "delivered a message nobody sent: {dir}/{client}/{seq}"
            ));
        };
        rec.delivered += 1;
        if rec.delivered > 1 {
            self.fail(format!("message {dir}/{client}/{seq} delivered twice"));
        }
        self.report.delivered += 1;
    }

    /// Runs the applications' reactions to every queued event.
    fn events(&mut self) {
        let now = self.now;
        // Server side.
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            loop {
                let Some(ev) = self
                    .links
                    .get_mut(&id)
                    .and_then(|l| l.server.as_mut())
                    .and_then(Connection::poll_event)
                else {
                    break;
                };
                match ev {
                    Event::Message(m) => match parse(&m.payload) {
                        // A request (by its payload): echo it with its id.
                        Some((2, _, _)) => {
                            let link = self.links.get_mut(&id).expect("listed");
                            let s = link.server.as_mut().expect("server side");
                            let _ = s.reply(m.request_id, REQ, m.payload);
                        }
                        _ => self.record_delivery(0, &m.payload, id),
                    },
                    Event::Discarded(d) => self.report.discarded_bytes += d.bytes as u64,
                    Event::Closed { .. } => {
                        self.acceptor.release();
                        let link = self.links.get_mut(&id).expect("listed");
                        if !link.dead {
                            link.dead = true;
                            // The server hung up: the client sees EOF.
                            let c = link.client;
                            if let Some((cid, conn)) = self.clients[c].conn.as_mut() {
                                if *cid == id {
                                    conn.handle_eof(now);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        // Client side.
        for c in 0..self.clients.len() {
            loop {
                let Some(ev) = self.clients[c]
                    .conn
                    .as_mut()
                    .and_then(|(_, conn)| conn.poll_event())
                else {
                    break;
                };
                let link = self.clients[c].conn.as_ref().map_or(0, |(id, _)| *id);
                match ev {
                    Event::Connected(_) => {
                        self.report.connects += 1;
                        let cl = &mut self.clients[c];
                        cl.established = true;
                        cl.reconnect.on_success();
                        cl.attempt_model = 0;
                        cl.next_traffic = now;
                    }
                    Event::Message(m) => match parse(&m.payload) {
                        // A reply after its request already failed: ordinary traffic now.
                        Some((2, cl, seq)) if cl == c && self.expired.contains(&(c, seq)) => {
                            self.report.late_replies += 1;
                        }
                        // A reply whose id was altered in flight: its request times out.
                        Some((2, _, _)) if self.link_corrupted(link) => {
                            self.report.header_corruption_misroutes += 1;
                        }
                        _ => self.record_delivery(1, &m.payload, link),
                    },
                    Event::Response { request_id, frame } => {
                        let Some(p) = self.clients[c].pending.remove(&request_id) else {
                            self.fail(format!(
                                "client {c}: response to unknown request {request_id}"
                            ));
                        };
                        if now > p.deadline {
                            self.fail(format!("client {c}: response after the deadline"));
                        }
                        match parse(&frame.payload) {
                            Some((2, cl, seq)) if cl == c && seq == p.seq => {
                                self.report.responses += 1
                            }
                            Some(_) if self.link_corrupted(p.link) => {
                                self.report.header_corruption_misroutes += 1
                            }
                            other => self.fail(format!(
                                "client {c}: wrong reply {other:?} for request seq {}",
                                p.seq
                            )),
                        }
                    }
                    Event::RequestFailed {
                        request_id, reason, ..
                    } => {
                        let Some(p) = self.clients[c].pending.remove(&request_id) else {
                            self.fail(format!(
                                "client {c}: request {request_id} failed twice or never existed"
                            ));
                        };
                        self.expired.insert((c, p.seq));
                        match reason {
                            RequestFailure::TimedOut => {
                                if now != p.deadline {
                                    self.fail(format!(
                                        "client {c}: timeout at {:?}, deadline {:?}",
                                        now - self.epoch,
                                        p.deadline - self.epoch
                                    ));
                                }
                                self.report.timeouts += 1;
                            }
                            RequestFailure::Closed(_) => self.report.aborted += 1,
                        }
                    }
                    Event::Discarded(d) => self.report.discarded_bytes += d.bytes as u64,
                    Event::Closed { reason, .. } => {
                        let was = self.clients[c].established;
                        self.clients[c].established = false;
                        self.kill_link(link, "peer closed");
                        self.connection_failed(link);
                        if !self.clients[c].pending.is_empty() {
                            self.fail(format!("client {c}: requests still pending after close"));
                        }
                        let err: veltix_proto::Error = reason.into();
                        let reason = if was {
                            DisconnectReason::ServerClosed
                        } else {
                            err.disconnect_reason(false)
                        };
                        self.schedule_retry(c, reason);
                    }
                    _ => {}
                }
            }
        }
    }

    fn link_corrupted(&self, link: u64) -> bool {
        self.corrupted.contains(&(link, 0)) || self.corrupted.contains(&(link, 1))
    }

    /// Applies the policy after a failure, checked against an independent model.
    fn schedule_retry(&mut self, c: usize, reason: DisconnectReason) {
        let rejected = matches!(reason, DisconnectReason::Rejected(_));
        if rejected {
            self.report.rejections += 1;
        }
        let step = self.clients[c].reconnect.on_failure(reason);
        let model_attempt = self.clients[c].attempt_model;
        let first = &step.reports[0];
        if first.attempt != model_attempt && !first.permanent {
            self.fail(format!(
                "client {c}: reported attempt {} where the model counts {model_attempt}",
                first.attempt
            ));
        }
        match step.next {
            NextStep::RetryAfter(d) => {
                self.clients[c].attempt_model += 1;
                let want = self.policy.base_delay(self.clients[c].attempt_model);
                if d != want {
                    self.fail(format!(
                        "client {c}: retry delay {d:?}, policy says {want:?}"
                    ));
                }
                self.clients[c].next_dial = Some(self.now + d);
            }
            NextStep::GiveUp => {
                // Veltix gives up when the budget is spent, or at once when the
                // very first connect is refused by the server.
                let expected =
                    model_attempt >= self.policy.max_retries || (model_attempt == 0 && rejected);
                if !expected {
                    self.fail(format!(
                        "client {c}: gave up after {model_attempt} of {} attempts",
                        self.policy.max_retries
                    ));
                }
                if !step.reports.last().is_some_and(|r| r.permanent) {
                    self.fail(format!("client {c}: gave up without a permanent report"));
                }
                // The application calls retry() a little later (Veltix's `retry(max_)`).
                self.clients[c].next_dial = None;
                self.clients[c].restart_at = Some(self.now + Duration::from_secs(5));
            }
        }
        self.clients[c].conn = None;
    }

    /// The applications' traffic: messages and requests both ways.
    fn traffic(&mut self, c: usize) {
        let now = self.now;
        // Rescheduled first: every path below must leave time able to move.
        self.clients[c].next_traffic = now + Duration::from_millis(50 + self.rng.below(1000));
        let Some((link, _)) = self.clients[c].conn.as_ref().map(|(l, _)| (*l, ())) else {
            return;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let filler = if self.rng.chance(0.05) {
            self.rng.below(20_000) as usize
        } else {
            self.rng.below(200) as usize
        };
        match self.rng.below(3) {
            0 => {
                let p = payload(0, c, seq, filler);
                let r = self.clients[c]
                    .conn
                    .as_mut()
                    .expect("connected")
                    .1
                    .send(MSG, p);
                self.sent.insert(
                    (0, c, seq),
                    Sent {
                        link,
                        delivered: 0,
                        told_failed: r.is_err(),
                    },
                );
            }
            1 => {
                let p = payload(2, c, seq, filler);
                let timeout = self.request_timeout;
                let r = self.clients[c]
                    .conn
                    .as_mut()
                    .expect("connected")
                    .1
                    .request(now, REQ, p, timeout);
                if let Ok(id) = r {
                    if self.clients[c]
                        .pending
                        .insert(
                            id,
                            Pending {
                                seq,
                                link,
                                deadline: now + timeout,
                            },
                        )
                        .is_some()
                    {
                        self.fail(format!("client {c}: id {id} handed out while pending"));
                    }
                }
            }
            _ => {
                let p = payload(1, c, seq, filler);
                let server = self.links.get_mut(&link).and_then(|l| l.server.as_mut());
                let r = match server {
                    Some(s) if s.is_established() => s.send(MSG, p),
                    _ => return,
                };
                self.sent.insert(
                    (1, c, seq),
                    Sent {
                        link,
                        delivered: 0,
                        told_failed: r.is_err(),
                    },
                );
            }
        }
    }

    fn step(&mut self, end: Instant, traffic: bool) {
        self.events();
        // Only now may dead links go: their Closed events were just handled.
        self.links
            .retain(|_, l| !(l.dead && l.server.as_ref().is_none_or(Connection::is_closed)));
        self.transmit();
        let t = self.next_wakeup(end, traffic);
        self.now = t;
        self.deliver();
        for l in self.links.values_mut() {
            if let Some(s) = l.server.as_mut() {
                s.handle_timeout(t);
            }
        }
        for c in 0..self.clients.len() {
            if let Some((_, conn)) = self.clients[c].conn.as_mut() {
                conn.handle_timeout(t);
            }
            if self.clients[c].restart_at.is_some_and(|r| r <= t) {
                self.clients[c].restart_at = None;
                self.clients[c].reconnect.restart(None);
                self.clients[c].attempt_model = 1;
                self.clients[c].next_dial = Some(t);
            }
            if self.clients[c].next_dial.is_some_and(|d| d <= t) && self.clients[c].conn.is_none() {
                self.clients[c].next_dial = None;
                let faulty = self.faults_on;
                self.dial(c, faulty);
            }
            if traffic && self.clients[c].established && self.clients[c].next_traffic <= t {
                self.traffic(c);
            }
        }
    }

    /// Runs `duration` of virtual time with faults, then a quiet period in
    /// which no new faults or traffic start, then checks every invariant.
    pub fn run(mut self, duration: Duration) -> Report {
        let end = self.epoch + duration;
        while self.now < end {
            self.step(end, true);
        }
        // Quiet period: no new faults; pauses end; pending resets and
        // corruptions are cancelled. Traffic goes on for a while (it also
        // pushes any frame whose corrupted length made a receiver wait),
        // then stops so that everything in flight can land.
        self.faults_on = false;
        for l in self.links.values_mut() {
            for p in [&mut l.c2s, &mut l.s2c] {
                p.pause_at = None;
                p.paused_until = None;
                p.reset_at = None;
                p.corrupt_at = None;
            }
        }
        let busy = self.now + Duration::from_secs(30);
        while self.now < busy {
            self.step(busy, true);
        }
        let quiet = self.now + Duration::from_secs(30);
        while self.now < quiet {
            self.step(quiet, false);
        }
        self.check();
        self.report
    }

    fn check(&mut self) {
        for c in 0..self.clients.len() {
            if let Some(p) = self.clients[c].pending.values().next() {
                self.fail(format!(
                    "client {c}: a request is pending past its deadline {:?}",
                    p.deadline - self.epoch
                ));
            }
        }
        let (mut lost_told, mut lost_corrupt) = (0, 0);
        for (&(dir, c, seq), s) in &self.sent {
            if s.delivered == 0 {
                if s.told_failed {
                    lost_told += 1;
                } else if self.corrupted.contains(&(s.link, dir.min(1))) {
                    // No acks in Veltix: a frame dropped by the CRC check is
                    // lost without word to its sender (see TESTING.md).
                    lost_corrupt += 1;
                } else {
                    self.fail(format!(
                        "message {dir}/{c}/{seq} on link {} was lost and its sender was never told",
                        s.link
                    ));
                }
            }
        }
        self.report.lost_told = lost_told;
        self.report.lost_to_corruption = lost_corrupt;
        let links: BTreeSet<u64> = self.sent.values().map(|s| s.link).collect();
        assert!(
            !links.is_empty() || self.clients.is_empty(),
            "seed {}: no traffic at all",
            self.seed
        );
    }
}

/// Cuts bytes into segments with in-order arrival times.
fn push(rng: &mut Rng, f: &Faults, now: Instant, pipe: &mut Pipe, bytes: Vec<u8>) {
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(f.max_segment as u64) as usize).min(rest.len());
        let mut at = now + f.latency + rng.upto(f.jitter);
        if rng.chance(f.stall) {
            at += rng.upto(f.max_pause);
        }
        if let Some(&(last, _)) = pipe.segments.back() {
            at = at.max(last); // TCP keeps order
        }
        pipe.in_flight += n;
        pipe.segments.push_back((at, rest[..n].to_vec()));
        rest = &rest[n..];
    }
}
