//! The chat service on the simulator: thin adapters from the cores'
//! events to the service's logic (`logic.rs`) and back, plus the books
//! that check what users of a chat expect, over any seed:
//!
//! * nothing is delivered twice;
//! * a reply goes only to the client that asked, and answers what it asked;
//! * a room message reaches exactly the connections tagged with the room
//!   (the service's own membership and the hub's tags agree), and every
//!   one of them gets it unless its connection failed;
//! * clients reconnect within their retry policy: every dial comes when
//!   the policy says (immediately, or after the backoff delay with its
//!   jitter), attempts never pass the budget, and nothing dials after a
//!   give-up until the application asks;
//! * after the network calms down, every client is connected again.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::Value;
use veltix_proto::{
    ClientConfig, DisconnectReason, HubEvent, MessageType, PeerId, Reply, RequestFailure,
    RetryPolicy, ServerConfig, SessionEvent, Target,
};
use veltix_sim::{
    ClientApp, ClientCtx, ClientLinkEvent, Fingerprint, LinkConfig, LinkId, NodeId, Partition,
    ServerApp, ServerCtx, Sim, TimerId,
};

use crate::logic::{room_tag, Action, ChatClient, ChatServer, ClientMsg, Conn, ServerMsg};

/// A plain message (`Say`).
pub const SAY: MessageType = MessageType::new(200);
/// A request (`Hello`, `Join`, `Leave`, `Who`).
pub const REQ: MessageType = MessageType::new(201);
/// A reply.
pub const REPLY: MessageType = MessageType::new(202);
/// A room message.
pub const SAID: MessageType = MessageType::new(203);

const ROOMS: [&str; 3] = ["lobby", "rust", "ops"];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A bug to plant in the server, to show the checks catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Room messages go to everybody.
    RoomToEveryone,
    /// Replies go to another connected client.
    ReplyToAnother,
    /// Room messages are sent twice.
    SayTwice,
}

/// A chat scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub clients: usize,
    /// Virtual time with faults, before the quiet period.
    pub duration: Duration,
    pub links: LinkConfig,
    pub policy: RetryPolicy,
    /// Cut the first half of the clients off the server from `.0` to `.1`.
    pub partition: Option<(Duration, Duration)>,
    pub bug: Option<Bug>,
    /// Keep this many trace entries.
    pub trace: usize,
}

impl Scenario {
    /// Eight clients, a hostile network without flipped bits (resets come
    /// within 10 000 bytes, as chat traffic is light), a retry policy with
    /// backoff and jitter.
    pub fn new(seed: u64) -> Self {
        let mut links = LinkConfig::hostile().without_corruption();
        links.reset_within = 10_000;
        links.dial_fail = 0.1;
        Scenario {
            seed,
            clients: 8,
            duration: Duration::from_secs(90),
            links,
            policy: RetryPolicy::fixed(4, Duration::from_millis(300)).with_backoff(
                2.0,
                Duration::from_secs(3),
                0.3,
            ),
            partition: None,
            bug: None,
            trace: 256,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Room messages said (broadcasts).
    pub said: u64,
    /// Room message copies delivered.
    pub copies: u64,
    /// Copies lost with their receiver's connection (it was told).
    pub copies_lost: u64,
    /// Replies received (checked).
    pub replies: u64,
    /// Replies that came after their request failed (checked too).
    pub late_replies: u64,
    /// Requests that timed out or whose connection closed.
    pub requests_failed: u64,
    /// Dials (checked against the policy).
    pub dials: u64,
    /// Connections established.
    pub connects: u64,
    /// `DisconnectState` reports.
    pub reports: u64,
    /// Give-ups (followed by the application's `retry()`).
    pub give_ups: u64,
    /// The trace's fingerprint.
    pub fingerprint: Option<Fingerprint>,
}

/// One room message: who should get it, on which link, and who did.
#[derive(Debug)]
struct Said {
    recipients: BTreeMap<String, LinkId>,
    got: BTreeSet<String>,
}

/// The books, shared by every node.
#[derive(Debug, Default)]
struct Book {
    said: BTreeMap<(String, u64), Said>,
    /// Links a client let go of (what was in flight on them is lost, and it knows).
    dropped: BTreeSet<LinkId>,
    /// Applications act (off at the very end).
    traffic: bool,
    out: Outcome,
}

type Shared = Rc<RefCell<Book>>;

// ------------------------------------------------------------------ server

struct Server {
    logic: ChatServer,
    book: Shared,
    peers: BTreeMap<u64, PeerId>,
    bug: Option<Bug>,
}

impl Server {
    fn act(
        &mut self,
        ctx: &mut ServerCtx<'_>,
        peer: PeerId,
        request_id: Option<u16>,
        actions: Vec<Action>,
    ) {
        for a in actions {
            match a {
                Action::Reply(msg) => {
                    let Some(id) = request_id else {
                        ctx.fail(format!("a reply to a plain message: {msg:?}"));
                    };
                    let to = match self.bug {
                        Some(Bug::ReplyToAnother) => {
                            ctx.hub().peers().find(|&p| p != peer).unwrap_or(peer)
                        }
                        _ => peer,
                    };
                    // A full queue or a gone peer: the request fails, its asker is told.
                    let _ = ctx.reply(to, id, REPLY, msg.encode());
                }
                Action::Enter { room } => {
                    if let Some(t) = ctx.tags_mut(peer) {
                        t.set_tag(room_tag(&room), Value::Null);
                    }
                }
                Action::Exit { room } => {
                    if let Some(t) = ctx.tags_mut(peer) {
                        t.remove_tag(&room_tag(&room));
                    }
                }
                Action::ToRoom { room, msg } => self.say_in_room(ctx, &room, &msg),
            }
        }
    }

    /// A room message: to exactly the room's connections, as the service
    /// and the hub's tags both say.
    fn say_in_room(&mut self, ctx: &mut ServerCtx<'_>, room: &str, msg: &ServerMsg) {
        let ServerMsg::Said { from, id, .. } = msg else {
            ctx.fail(format!("a room message that is not Said: {msg:?}"));
        };
        let tag = room_tag(room);
        // The room's connections that are still up (a closing one is in the
        // room until its Disconnected, but no longer reachable).
        let members: BTreeSet<PeerId> = self
            .logic
            .room(room)
            .into_iter()
            .filter_map(|c| self.peers.get(&c.0).copied())
            .filter(|&p| ctx.hub().is_connected(p))
            .collect();
        let tagged: BTreeSet<PeerId> = ctx.hub().peers_by_tag(&tag, None).into_iter().collect();
        if members != tagged {
            ctx.fail(format!(
                "room {room}: the service's members {members:?} are not the tagged peers {tagged:?}"
            ));
        }
        let before: BTreeMap<PeerId, usize> = ctx
            .transports()
            .map(|p| (p, ctx.hub().queued_bytes(p)))
            .collect();
        let payload = msg.encode();
        let target = match self.bug {
            Some(Bug::RoomToEveryone) => Target::All,
            _ => Target::Tag(&tag, None),
        };
        let times = if self.bug == Some(Bug::SayTwice) {
            2
        } else {
            1
        };
        for _ in 0..times {
            let b = match ctx.broadcast(SAID, payload.as_bytes(), target) {
                Ok(b) => b,
                Err(e) => ctx.fail(format!("broadcast refused: {e}")),
            };
            if self.bug.is_none() && b.sent + b.skipped != members.len() {
                ctx.fail(format!("room {room}: {b:?} for {} members", members.len()));
            }
        }
        let mut recipients = BTreeMap::new();
        for (peer, q) in before {
            if ctx.hub().queued_bytes(peer) <= q {
                continue; // not targeted, or its queue refused (it is not told: counted apart)
            }
            if !members.contains(&peer) {
                ctx.fail(format!(
                    "room {room}: a message was queued for {peer}, not in it"
                ));
            }
            let (Some(name), Some(link)) =
                (self.logic.name(Conn(peer.as_u64())), ctx.peer_link(peer))
            else {
                ctx.fail(format!("{peer} got a room message before saying hello"));
            };
            recipients.insert(name.to_owned(), link);
        }
        let mut book = self.book.borrow_mut();
        book.out.said += 1;
        let key = (from.clone(), *id);
        if book.said.contains_key(&key) {
            ctx.fail(format!("{from} said {id} twice"));
        }
        book.said.insert(
            key,
            Said {
                recipients,
                got: BTreeSet::new(),
            },
        );
    }
}

impl ServerApp for Server {
    fn on_event(&mut self, ctx: &mut ServerCtx<'_>, peer: PeerId, event: HubEvent) {
        let conn = Conn(peer.as_u64());
        match event {
            HubEvent::Connected(_) => {
                self.peers.insert(conn.0, peer);
                self.logic.connected(conn);
            }
            HubEvent::Disconnected(_) => {
                self.peers.remove(&conn.0);
                self.logic.disconnected(conn);
            }
            HubEvent::Message(m) => {
                let Some(msg) = ClientMsg::decode(&m.payload) else {
                    ctx.fail(format!("{peer} sent an unreadable message"));
                };
                let request = (m.message_type == REQ).then_some(m.request_id);
                let actions = self.logic.handle(conn, msg);
                self.act(ctx, peer, request, actions);
            }
            other => ctx.fail(format!("{peer}: unexpected {other:?}")),
        }
    }
}

// ------------------------------------------------------------------ client

const START: u64 = 1;
const CHAT: u64 = 2;
const RESTART: u64 = 3;

struct Client {
    logic: ChatClient,
    book: Shared,
    policy: RetryPolicy,
    link: Option<LinkId>,
    pending: BTreeMap<u16, ClientMsg>,
    seen: BTreeSet<(String, u64)>,
    /// When the policy allows the next dial (`None`: no dial expected).
    dial_window: Option<(Instant, Instant)>,
    /// Retrying stopped (a permanent report) and the application has not
    /// asked again.
    stopped: bool,
    /// Dials since the last success or the application's connect/retry,
    /// and how many the policy allows in that loop.
    dials_since_success: u32,
    dials_allowed: u32,
    timeouts_in_a_row: u32,
    chat: Option<TimerId>,
    restart: Option<TimerId>,
    manual: bool,
}

impl Client {
    fn request(&mut self, ctx: &mut ClientCtx<'_>, msg: ClientMsg) {
        if let Ok(id) = ctx.request(REQ, msg.encode(), REQUEST_TIMEOUT) {
            if self.pending.insert(id, msg).is_some() {
                ctx.fail(format!(
                    "{}: request id {id} handed out twice",
                    self.logic.name
                ));
            }
        }
    }

    fn restart_in(&mut self, ctx: &mut ClientCtx<'_>, after: Duration) {
        if let Some(t) = self.restart.take() {
            ctx.cancel_timer(t);
        }
        self.restart = Some(ctx.set_timer(after, RESTART));
    }

    /// The reply `reply` to `asked`: for this client, about what it asked.
    fn replied(&mut self, ctx: &mut ClientCtx<'_>, asked: &ClientMsg, reply: &[u8]) {
        let me = self.logic.name.clone();
        let Some(reply) = ServerMsg::decode(reply) else {
            ctx.fail(format!("{me}: an unreadable reply"));
        };
        let fits = match (asked, &reply) {
            (ClientMsg::Hello { name }, ServerMsg::Welcome { to }) => to == name,
            (ClientMsg::Join { room }, ServerMsg::Joined { to, room: r })
            | (ClientMsg::Leave { room }, ServerMsg::Left { to, room: r })
            | (ClientMsg::Who { room }, ServerMsg::Members { to, room: r, .. }) => {
                to == &me && r == room
            }
            _ => false,
        };
        if !fits {
            ctx.fail(format!("{me} asked {asked:?} and was answered {reply:?}"));
        }
        self.book.borrow_mut().out.replies += 1;
        for next in self.logic.on_reply(&reply) {
            self.request(ctx, next);
        }
    }

    /// A room message arrived: once, and only for a targeted recipient.
    fn heard(&mut self, ctx: &mut ClientCtx<'_>, payload: &[u8]) {
        let me = self.logic.name.clone();
        let Some(ServerMsg::Said { from, id, .. }) = ServerMsg::decode(payload) else {
            ctx.fail(format!("{me}: an unreadable room message"));
        };
        if !self.seen.insert((from.clone(), id)) {
            ctx.fail(format!("{me} got {from}'s message {id} twice"));
        }
        let mut book = self.book.borrow_mut();
        let Some(said) = book.said.get_mut(&(from.clone(), id)) else {
            ctx.fail(format!(
                "{me} got {from}'s message {id}, which was never said"
            ));
        };
        if !said.recipients.contains_key(&me) {
            ctx.fail(format!(
                "{me} got {from}'s message {id} without being in its room"
            ));
        }
        said.got.insert(me);
        book.out.copies += 1;
    }

    /// A `DisconnectState` report: within the policy; sets when the next
    /// dial may come.
    fn reported(&mut self, ctx: &mut ClientCtx<'_>, d: &veltix_proto::DisconnectState) {
        let me = &self.logic.name;
        self.book.borrow_mut().out.reports += 1;
        if d.retry_max != self.policy.max_retries {
            ctx.fail(format!(
                "{me}: {d:?}: the budget is {}",
                self.policy.max_retries
            ));
        }
        if d.attempt > d.retry_max {
            ctx.fail(format!("{me}: {d:?}: more attempts than the budget"));
        }
        if d.permanent {
            self.stopped = true;
            self.dial_window = None;
            return;
        }
        let now = ctx.now();
        let base = self.policy.base_delay(d.attempt + 1);
        let jitter = self.policy.backoff.map_or(0.0, |b| b.jitter);
        let lo = base
            .mul_f64(1.0 - jitter)
            .saturating_sub(Duration::from_micros(1));
        self.dial_window = Some((now + lo, now + base));
    }
}

impl ClientApp for Client {
    fn on_start(&mut self, ctx: &mut ClientCtx<'_>) {
        let at = Duration::from_millis(ctx.rng().below(1000));
        ctx.set_timer(at, START);
    }

    fn on_timer(&mut self, ctx: &mut ClientCtx<'_>, tag: u64) {
        let now = ctx.now();
        match tag {
            START => {
                ctx.connect();
                self.dial_window = Some((now, now));
                // The first attempt, then the policy's retries.
                self.dials_since_success = 0;
                self.dials_allowed = self.policy.max_retries + 1;
            }
            RESTART => {
                self.restart = None;
                self.stopped = false;
                self.dials_since_success = 0;
                if std::mem::take(&mut self.manual) {
                    ctx.connect();
                    self.dials_allowed = self.policy.max_retries + 1;
                } else {
                    // A fresh retry loop: attempt 1 at once, the policy's budget.
                    ctx.retry(None);
                    self.dials_allowed = self.policy.max_retries.max(1);
                }
                self.dial_window = Some((now, now));
            }
            _ => {
                self.chat = None;
                if !self.book.borrow().traffic || !ctx.session().is_connected() {
                    return; // the next Welcome starts it again
                }
                let next = Duration::from_millis(200 + ctx.rng().below(1300));
                self.chat = Some(ctx.set_timer(next, CHAT));
                let roll = ctx.rng().below(1000);
                let joined: Vec<String> = self.logic.joined.iter().cloned().collect();
                if roll < 5 {
                    // Leaves for a while, by hand.
                    self.manual = true;
                    ctx.disconnect();
                } else if roll < 100 {
                    let room = ROOMS[ctx.rng().below(ROOMS.len() as u64) as usize];
                    let m = self.logic.toggle(room);
                    self.request(ctx, m);
                } else if roll < 250 {
                    if let Some(room) = ctx.rng().pick(&joined).cloned() {
                        self.request(ctx, ClientMsg::Who { room });
                    }
                } else if let Some(room) = ctx.rng().pick(&joined).cloned() {
                    let n = ctx.rng().next_u64();
                    let m = self.logic.say(&room, n);
                    let _ = ctx.send(SAY, m.encode());
                }
            }
        }
    }

    fn on_link(&mut self, ctx: &mut ClientCtx<'_>, event: ClientLinkEvent) {
        let me = self.logic.name.clone();
        match event {
            ClientLinkEvent::Dialing { .. } => {
                self.book.borrow_mut().out.dials += 1;
                let now = ctx.now();
                if self.stopped {
                    ctx.fail(format!("{me} dialled after giving up"));
                }
                match self.dial_window.take() {
                    Some((lo, hi)) if lo <= now && now <= hi => {}
                    w => ctx.fail(format!(
                        "{me} dialled at {:?}, the policy allows {:?}",
                        now - ctx.start(),
                        w.map(|(lo, hi)| (lo - ctx.start(), hi - ctx.start()))
                    )),
                }
                self.dials_since_success += 1;
                if self.dials_since_success > self.dials_allowed {
                    ctx.fail(format!(
                        "{me}: {} dials in one loop, the policy allows {}",
                        self.dials_since_success, self.dials_allowed
                    ));
                }
            }
            ClientLinkEvent::Opened { link, .. } => self.link = Some(link),
            ClientLinkEvent::Dropped { link, .. } => {
                self.link = None;
                self.book.borrow_mut().dropped.insert(link);
            }
            _ => {}
        }
    }

    fn on_event(&mut self, ctx: &mut ClientCtx<'_>, event: SessionEvent) {
        let me = self.logic.name.clone();
        match event {
            SessionEvent::Connected(_) => {
                self.book.borrow_mut().out.connects += 1;
                // A success: a loss starts a fresh loop (attempt 1 at once, then the retries).
                self.dials_since_success = 0;
                self.dials_allowed = self.policy.max_retries + 1;
                self.timeouts_in_a_row = 0;
                for m in self.logic.on_connected() {
                    self.request(ctx, m);
                }
                if let Some(t) = self.chat.take() {
                    ctx.cancel_timer(t);
                }
                self.chat = Some(ctx.set_timer(Duration::from_millis(500), CHAT));
            }
            SessionEvent::Message(m) if m.message_type == SAID => self.heard(ctx, &m.payload),
            SessionEvent::Message(m) if m.message_type == REPLY => {
                // A reply after its request failed: ordinary traffic now,
                // but still for this client only.
                match ServerMsg::decode(&m.payload) {
                    Some(
                        ServerMsg::Welcome { to }
                        | ServerMsg::Joined { to, .. }
                        | ServerMsg::Left { to, .. }
                        | ServerMsg::Members { to, .. },
                    ) if to == me => self.book.borrow_mut().out.late_replies += 1,
                    other => ctx.fail(format!("{me} got someone else's reply: {other:?}")),
                }
            }
            SessionEvent::Message(m) => {
                ctx.fail(format!(
                    "{me}: an unexpected message of type {}",
                    m.message_type.code()
                ));
            }
            SessionEvent::Completed {
                request_id,
                outcome,
            } => {
                let Some(asked) = self.pending.remove(&request_id) else {
                    ctx.fail(format!(
                        "{me}: request {request_id} ended twice or never existed"
                    ));
                };
                match outcome {
                    Ok(Reply::Frame(f)) => {
                        self.timeouts_in_a_row = 0;
                        self.replied(ctx, &asked, &f.payload);
                    }
                    Ok(other) => ctx.fail(format!("{me}: {asked:?} ended with {other:?}")),
                    Err(e) => {
                        self.book.borrow_mut().out.requests_failed += 1;
                        if e == RequestFailure::TimedOut {
                            self.timeouts_in_a_row += 1;
                        }
                        if self.timeouts_in_a_row >= 3 && ctx.session().is_connected() {
                            // The server does not answer: reconnect (an
                            // application-level liveness rule).
                            self.timeouts_in_a_row = 0;
                            self.manual = true;
                            ctx.disconnect();
                        }
                    }
                }
            }
            SessionEvent::Disconnected(d) => {
                self.reported(ctx, &d);
                if d.reason == DisconnectReason::Manual {
                    self.restart_in(ctx, Duration::from_secs(1));
                }
            }
            SessionEvent::GaveUp(_) => {
                self.book.borrow_mut().out.give_ups += 1;
                if !self.pending.is_empty() {
                    ctx.fail(format!("{me}: requests pending after giving up"));
                }
                self.stopped = true;
                self.dial_window = None;
                self.restart_in(ctx, Duration::from_secs(2));
            }
            other => ctx.fail(format!("{me}: unexpected {other:?}")),
        }
    }
}

// -------------------------------------------------------------------- run

/// Builds and runs a scenario, then checks the books. Panics (with the
/// seed and the trace) on any violation. Returns the simulation too.
pub fn run(s: &Scenario) -> (Outcome, Sim) {
    let mut sim = Sim::new(s.seed);
    sim.set_replay_command(
        "VELTIX_SIM_SEED={seed} cargo test -p veltix-sim --test chat -- --nocapture",
    );
    sim.set_link_config(s.links);
    sim.set_trace_capacity(s.trace);
    let book: Shared = Rc::new(RefCell::new(Book {
        traffic: true,
        ..Book::default()
    }));
    let server = sim.add_server(
        "chat",
        &ServerConfig::default(),
        Server {
            logic: ChatServer::default(),
            book: book.clone(),
            peers: BTreeMap::new(),
            bug: s.bug,
        },
    );
    let config = ClientConfig::default()
        .retry(s.policy.max_retries)
        .retry_delay(s.policy.delay)
        .backoff(s.policy.backoff)
        .handshake_timeout(Duration::from_secs(3));
    let mut clients: Vec<NodeId> = Vec::new();
    for i in 0..s.clients {
        let name = format!("user{i}");
        let rooms: Vec<&str> = ROOMS.iter().copied().take(1 + i % 3).collect();
        let app = Client {
            logic: ChatClient::new(&name, &rooms),
            book: book.clone(),
            policy: config.retry_policy(),
            link: None,
            pending: BTreeMap::new(),
            seen: BTreeSet::new(),
            dial_window: None,
            stopped: false,
            dials_since_success: 0,
            dials_allowed: 0,
            timeouts_in_a_row: 0,
            chat: None,
            restart: None,
            manual: false,
        };
        clients.push(sim.add_client(&name, &config, server, app));
    }
    if let Some((from, until)) = s.partition {
        let half = &clients[..clients.len() / 2];
        let t0 = sim.start();
        sim.partition(
            Partition::between(half, &[server])
                .from(t0 + from)
                .until(t0 + until),
        );
    }
    sim.run_until(sim.start() + s.duration);
    // Quiet: no new faults; the service goes on, then stops, and everything lands.
    sim.set_faults_enabled(false);
    sim.run_for(Duration::from_secs(20));
    book.borrow_mut().traffic = false;
    sim.run_for(Duration::from_secs(10));
    check(&sim, &book, &clients);
    let mut out = book.borrow().out.clone();
    out.fingerprint = Some(sim.fingerprint());
    (out, sim)
}

/// The end of a run: every room message reached every recipient whose
/// connection held; nothing is pending; everybody is connected again.
fn check(sim: &Sim, book: &Shared, clients: &[NodeId]) {
    let mut b = book.borrow_mut();
    let mut lost = 0;
    for ((from, id), said) in &b.said {
        for (name, link) in &said.recipients {
            if said.got.contains(name) {
                continue;
            }
            if !b.dropped.contains(link) {
                sim.fail(format!(
                    "{name} never got {from}'s message {id}, and its connection ({link}) did not fail"
                ));
            }
            lost += 1;
        }
    }
    b.out.copies_lost = lost;
    for &c in clients {
        let app = sim.client_app::<Client>(c).expect("a chat client");
        if !app.pending.is_empty() {
            sim.fail(format!(
                "{}: requests still pending at the end",
                sim.name(c)
            ));
        }
        if !sim.session(c).is_some_and(|s| s.is_connected()) {
            sim.fail(format!(
                "{} is not connected again after the quiet period",
                sim.name(c)
            ));
        }
    }
}
