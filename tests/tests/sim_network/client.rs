//! The test's client application: connects at a random time, sends
//! messages and requests while connected, now and then disconnects by
//! hand, calls `retry()` a while after its session gave up, and checks
//! every report and every dial against the reference model of Veltix's
//! reconnect rule.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use veltix_proto::{DisconnectReason, DisconnectState, Reply, RequestFailure, SessionEvent};
use veltix_sim::{ClientApp, ClientCtx, ClientLinkEvent, LinkId, TimerId};

use crate::ledger::{to_state, Ledger, MSG, REQ};
use crate::reconnect_model::{Model, Next};

const START: u64 = 1;
const TRAFFIC: u64 = 2;
const RESTART: u64 = 3;

/// The application connects again this long after a give-up or a manual
/// disconnect.
const RESTART_AFTER: Duration = Duration::from_secs(5);

struct Pending {
    seq: u64,
    link: Option<LinkId>,
    deadline: Instant,
}

/// A failure the session saw, whose reports the model has not computed
/// yet (they are computed when its first report comes, once the session's
/// `Connected` for that link, if any, has been seen).
#[derive(Debug, Clone)]
struct Failure {
    link: Option<LinkId>,
    /// The server's rejection reached the client intact.
    rejected: Option<String>,
    /// It reached the client with a corrupted byte: a rejection with a
    /// garbled reason, or a handshake error (the report tells which).
    rejected_garbled: bool,
    at: Instant,
    manual: bool,
}

pub struct SimClient {
    c: usize,
    ledger: Rc<RefCell<Ledger>>,
    link: Option<LinkId>,
    pending: BTreeMap<u16, Pending>,
    model: Model,
    /// Reports the model expects next, in order.
    expected: VecDeque<DisconnectState>,
    /// `GaveUp` events the model expects.
    expected_gave_up: u32,
    /// When the model expects the next dial.
    expected_dial: Option<Instant>,
    failure: Option<Failure>,
    /// `disconnect()` was called on the current connection.
    manual: bool,
    traffic: Option<TimerId>,
    restart: Option<TimerId>,
}

impl SimClient {
    pub fn new(c: usize, ledger: Rc<RefCell<Ledger>>, model: Model) -> Self {
        SimClient {
            c,
            ledger,
            link: None,
            pending: BTreeMap::new(),
            model,
            expected: VecDeque::new(),
            expected_gave_up: 0,
            expected_dial: None,
            failure: None,
            manual: false,
            traffic: None,
            restart: None,
        }
    }

    /// What the end of the run must find: nothing pending, nothing expected.
    pub fn leftovers(&self) -> Option<String> {
        if let Some(p) = self.pending.values().next() {
            return Some(format!(
                "client {}: a request (seq {}) is pending past its deadline",
                self.c, p.seq
            ));
        }
        if !self.expected.is_empty() || self.expected_gave_up > 0 {
            return Some(format!(
                "client {}: the model expects reports that never came: {:?}, {} gave-up",
                self.c, self.expected, self.expected_gave_up
            ));
        }
        None
    }

    /// The model's verdict on a failure, once the session's events up to it were taken.
    fn judge(&mut self) {
        let Some(f) = self.failure.take() else {
            return;
        };
        let established = f
            .link
            .is_some_and(|l| self.ledger.borrow().established.contains(&l));
        if f.manual {
            if established {
                let r = self.model.manual();
                self.expected.push_back(to_state(r));
            } else {
                self.expected_gave_up += 1;
            }
            return;
        }
        let (reports, next) = if established {
            self.model.lost()
        } else {
            let reason = self.model.attempt_reason(f.rejected.as_deref());
            self.model.failure(reason)
        };
        self.expected.extend(reports.into_iter().map(to_state));
        match next {
            Next::DialAfter(d) => self.expected_dial = Some(f.at + d),
            Next::GiveUp => self.expected_gave_up += 1,
        }
    }

    fn restart_in(&mut self, ctx: &mut ClientCtx<'_>, after: Duration) {
        if let Some(t) = self.restart.take() {
            ctx.cancel_timer(t);
        }
        self.restart = Some(ctx.set_timer(after, RESTART));
    }

    /// The application's traffic: messages and requests, and now and then
    /// a manual disconnect.
    fn act(&mut self, ctx: &mut ClientCtx<'_>) {
        let c = self.c;
        let Some(link) = self.link else {
            return;
        };
        let mut l = self.ledger.borrow_mut();
        if l.faults_on && ctx.rng().chance(l.disconnect) {
            // The application disconnects, and connects again a while later.
            l.report.manual += 1;
            drop(l);
            self.manual = true;
            ctx.disconnect();
            return;
        }
        let seq = l.seq();
        let filler = if ctx.rng().chance(0.05) {
            ctx.rng().below(20_000) as usize
        } else {
            ctx.rng().below(200) as usize
        };
        if ctx.rng().chance(0.5) {
            let r = ctx.send(MSG, l.payload(0, c, seq, filler));
            l.sent((0, c, seq), link, r.is_err());
        } else {
            let timeout = l.request_timeout;
            if let Ok(id) = ctx.request(REQ, l.payload(2, c, seq, filler), timeout) {
                let p = Pending {
                    seq,
                    link: Some(link),
                    deadline: ctx.now() + timeout,
                };
                if self.pending.insert(id, p).is_some() {
                    ctx.fail(format!("client {c}: id {id} handed out while pending"));
                }
            }
        }
    }

    fn completed(
        &mut self,
        ctx: &mut ClientCtx<'_>,
        request_id: u16,
        outcome: Result<Reply, RequestFailure>,
    ) {
        let c = self.c;
        let now = ctx.now();
        let Some(p) = self.pending.remove(&request_id) else {
            ctx.fail(format!(
                "client {c}: request {request_id} ended twice or never existed"
            ));
        };
        let mut l = self.ledger.borrow_mut();
        match outcome {
            Ok(Reply::Frame(frame)) => {
                if now > p.deadline {
                    ctx.fail(format!("client {c}: response after the deadline"));
                }
                match l.parse(&frame.payload) {
                    Some((2, cl, seq)) if cl == c && seq == p.seq => l.report.responses += 1,
                    Some(_) if l.link_corrupted(p.link) => {
                        l.report.header_corruption_misroutes += 1;
                    }
                    other => ctx.fail(format!(
                        "client {c}: wrong reply {other:?} for request seq {}",
                        p.seq
                    )),
                }
            }
            Ok(other) => ctx.fail(format!("client {c}: request ended with {other:?}")),
            Err(reason) => {
                l.expired.insert((c, p.seq));
                match reason {
                    RequestFailure::TimedOut => {
                        if now != p.deadline {
                            ctx.fail(format!(
                                "client {c}: timeout at {:?}, deadline {:?}",
                                now - ctx.start(),
                                p.deadline - ctx.start()
                            ));
                        }
                        l.report.timeouts += 1;
                    }
                    _ => l.report.aborted += 1,
                }
            }
        }
    }
}

impl ClientApp for SimClient {
    fn on_start(&mut self, ctx: &mut ClientCtx<'_>) {
        let at = Duration::from_millis(ctx.rng().below(2000));
        ctx.set_timer(at, START);
    }

    fn on_timer(&mut self, ctx: &mut ClientCtx<'_>, tag: u64) {
        match tag {
            START => {
                ctx.connect();
                self.model.connect();
                self.expected_dial = Some(ctx.now());
            }
            RESTART => {
                self.restart = None;
                if self.manual {
                    self.manual = false;
                    ctx.connect();
                    self.model.connect();
                } else {
                    // Veltix's `retry(max_)` after the session gave up.
                    ctx.retry(None);
                    self.model.retry(None);
                }
                self.expected_dial = Some(ctx.now());
            }
            _ => {
                self.traffic = None;
                if !self.ledger.borrow().traffic || !ctx.session().is_connected() {
                    return; // the next Connected starts it again
                }
                // Rescheduled first: every path below must leave time able to move.
                let next = Duration::from_millis(50 + ctx.rng().below(1000));
                self.traffic = Some(ctx.set_timer(next, TRAFFIC));
                self.act(ctx);
            }
        }
    }

    fn on_link(&mut self, ctx: &mut ClientCtx<'_>, event: ClientLinkEvent) {
        let c = self.c;
        match event {
            ClientLinkEvent::Dialing { .. } => {
                // A failure whose reports all came before this dial.
                if self.failure.is_some() {
                    self.judge();
                }
                if self.expected_dial != Some(ctx.now()) {
                    let start = ctx.start();
                    ctx.fail(format!(
                        "client {c}: dialled at {:?}, the model expects {:?}",
                        ctx.now() - start,
                        self.expected_dial.map(|t| t - start)
                    ));
                }
                self.expected_dial = None;
            }
            ClientLinkEvent::DialRefused { .. } => {
                self.ledger.borrow_mut().report.dial_failures += 1;
                self.failure = Some(Failure {
                    link: None,
                    rejected: None,
                    rejected_garbled: false,
                    at: ctx.now(),
                    manual: false,
                });
            }
            ClientLinkEvent::Opened { link, .. } => {
                self.link = Some(link);
                self.manual = false;
            }
            ClientLinkEvent::Dropped { link, info } => {
                // The session dropped this transport: the application was
                // told about everything sent on it.
                self.link = None;
                let mut l = self.ledger.borrow_mut();
                let mut rejected = None;
                let mut rejected_garbled = false;
                // The whole rejection reached the client.
                if info.refusal_delivered {
                    if l.corrupted.contains(&(link, 1)) {
                        rejected_garbled = true;
                    } else {
                        rejected = Some("server_full".to_owned());
                    }
                }
                l.connection_failed(link);
                self.failure = Some(Failure {
                    link: Some(link),
                    rejected,
                    rejected_garbled,
                    at: ctx.now(),
                    manual: self.manual,
                });
            }
            _ => {}
        }
    }

    fn on_event(&mut self, ctx: &mut ClientCtx<'_>, event: SessionEvent) {
        let c = self.c;
        match event {
            SessionEvent::Connected(_) => {
                self.ledger.borrow_mut().report.connects += 1;
                // The Connected of a link the session already dropped
                // comes before that failure's reports.
                let id = self.failure.as_ref().and_then(|f| f.link).or(self.link);
                let fresh = id.is_some_and(|id| self.ledger.borrow_mut().established.insert(id));
                if !fresh {
                    ctx.fail(format!("client {c}: Connected twice or without a link"));
                }
                self.model.success();
                if let Some(t) = self.traffic.take() {
                    ctx.cancel_timer(t);
                }
                self.traffic = Some(ctx.set_timer(Duration::ZERO, TRAFFIC));
            }
            SessionEvent::Message(m) => {
                let mut l = self.ledger.borrow_mut();
                let parsed = l.parse(&m.payload);
                let r = match parsed {
                    // A reply after its request already failed: ordinary traffic now.
                    Some((2, cl, seq)) if cl == c && l.expired.contains(&(c, seq)) => {
                        l.report.late_replies += 1;
                        Ok(())
                    }
                    // A reply whose id was altered in flight: its request times out.
                    Some((2, _, _)) if l.link_corrupted(self.link) => {
                        l.report.header_corruption_misroutes += 1;
                        Ok(())
                    }
                    Some((3, _, seq)) => match l.sent.get_mut(&(3, c, seq)) {
                        None => Err(format!(
                            "client {c}: broadcast {seq} reached a client it did not target"
                        )),
                        Some(rec) => {
                            rec.delivered += 1;
                            if rec.delivered > 1 {
                                Err(format!("client {c}: broadcast {seq} delivered twice"))
                            } else {
                                l.report.delivered += 1;
                                l.report.broadcast_delivered += 1;
                                Ok(())
                            }
                        }
                    },
                    _ => l.record_delivery(1, parsed, self.link),
                };
                if let Err(e) = r {
                    ctx.fail(e);
                }
            }
            SessionEvent::Completed {
                request_id,
                outcome,
            } => self.completed(ctx, request_id, outcome),
            SessionEvent::Disconnected(d) => {
                if let Some(f) = self.failure.as_mut() {
                    if let (true, DisconnectReason::Rejected(r)) = (f.rejected_garbled, &d.reason) {
                        // A corrupted byte in the rejection's reason: the
                        // model cannot know the text.
                        f.rejected = Some(r.clone());
                    }
                }
                self.judge();
                self.ledger.borrow_mut().report.reports += 1;
                let want = self.expected.pop_front();
                if want.as_ref() != Some(&d) {
                    ctx.fail(format!(
                        "client {c}: reported {d:?}, the model expects {want:?}"
                    ));
                }
                if d.reason == DisconnectReason::Manual {
                    // The application connects again a while later.
                    self.restart_in(ctx, RESTART_AFTER);
                }
            }
            SessionEvent::GaveUp(_) => {
                self.judge();
                if !self.expected.is_empty() {
                    ctx.fail(format!(
                        "client {c}: gave up before the reports {:?}",
                        self.expected
                    ));
                }
                if self.expected_gave_up == 0 {
                    ctx.fail(format!("client {c}: gave up, the model goes on"));
                }
                self.expected_gave_up -= 1;
                if !self.pending.is_empty() {
                    ctx.fail(format!(
                        "client {c}: requests still pending after giving up"
                    ));
                }
                // The application calls retry() a little later (Veltix's
                // `retry(max_)`), or connect() after a manual disconnect.
                self.restart_in(ctx, RESTART_AFTER);
            }
            other => ctx.fail(format!("client {c}: unexpected {other:?}")),
        }
        // A failure whose reports all came (or a manual disconnect of an
        // established connection: its report only).
        if self.failure.is_some() && ctx.session().transport().is_some() {
            self.judge();
        }
    }
}
