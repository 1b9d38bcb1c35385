//! Model-based property test of [`ClientSession`]: random sequences of dial
//! results, server bytes (hello, ACK, `server_full` rejections before or
//! after the hello), resets and EOFs at every handshake step and after it,
//! manual disconnects, `stop_retry`, `retry(max)`, `connect` and virtual
//! time, checked against an independent model of Veltix's reconnect rule
//! (`common/reconnect_model.rs`, written from the rule in `retry.rs`, never
//! calling the core). The session must report the same `DisconnectState`s in
//! the same order, give up exactly when the model does, and dial exactly at
//! the model's times.

mod common {
    pub mod reconnect_model;
}

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::reconnect_model::{Model, Next, Reason, Report};
use proptest::prelude::*;
use veltix_proto::handshake::{encode_ack, encode_hello, encode_rejection};
use veltix_proto::retry::{Reconnect, RetryPolicy};
use veltix_proto::{
    ClientSession, ConnectionConfig, DisconnectReason, DisconnectState, Error, LocalHello,
    SessionEvent,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
enum Op {
    DialOk,
    DialFail,
    Hello,
    Ack,
    /// `{"error": "server_full"}` instead of the hello (`true`) or the ACK.
    Reject(bool),
    Reset,
    Eof,
    Disconnect,
    StopRetry,
    Retry(Option<u32>),
    Connect,
    Advance(u64),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::DialOk),
        3 => Just(Op::DialFail),
        5 => Just(Op::Hello),
        5 => Just(Op::Ack),
        2 => any::<bool>().prop_map(Op::Reject),
        3 => Just(Op::Reset),
        2 => Just(Op::Eof),
        1 => Just(Op::Disconnect),
        1 => Just(Op::StopRetry),
        1 => prop::option::of(0u32..4).prop_map(Op::Retry),
        1 => Just(Op::Connect),
        4 => (0u64..2500).prop_map(Op::Advance),
    ]
}

/// The harness's own view of the transport.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Conn {
    None,
    Dialing(u64),
    /// Open; `stage`: 0 nothing from the server yet, 1 hello delivered, 2 established.
    Open(u64, u8),
}

struct Harness {
    s: ClientSession,
    model: Model,
    now: Instant,
    t0: Instant,
    conn: Conn,
    /// The model's view: no loop running, nothing open.
    idle: bool,
    expected: VecDeque<DisconnectState>,
    expected_gave_up: u32,
    expected_dial: Option<Instant>,
    /// `disconnect()` was called on the open transport.
    manual: bool,
    /// A rejection was delivered on the open transport.
    rejected: bool,
    dials: Vec<Duration>,
    reports: Vec<DisconnectState>,
}

fn state(r: Report) -> DisconnectState {
    DisconnectState {
        permanent: r.permanent,
        attempt: r.attempt,
        retry_max: r.retry_max,
        reason: match r.reason {
            Reason::ServerClosed => DisconnectReason::ServerClosed,
            Reason::Error => DisconnectReason::Error,
            Reason::Manual => DisconnectReason::Manual,
            Reason::Rejected(s) => DisconnectReason::Rejected(s),
        },
    }
}

impl Harness {
    fn expect(&mut self, (reports, next): (Vec<Report>, Next), at: Instant) {
        self.expected.extend(reports.into_iter().map(state));
        match next {
            Next::DialAfter(d) => self.expected_dial = Some(at + d),
            Next::GiveUp => {
                self.expected_gave_up += 1;
                self.idle = true;
            }
        }
    }

    /// A failure of the current attempt or connection, as the model judges it.
    fn failed(&mut self) {
        let now = self.now;
        let was = self.conn;
        self.conn = Conn::None;
        let manual = std::mem::take(&mut self.manual);
        let rejected = std::mem::take(&mut self.rejected);
        let established = matches!(was, Conn::Open(_, 2));
        if manual {
            if established {
                self.expected.push_back(state(self.model.manual()));
            } else {
                self.expected_gave_up += 1;
            }
            self.idle = true;
            return;
        }
        let step = if established {
            self.model.lost()
        } else {
            let reason = self.model.attempt_reason(rejected.then_some("server_full"));
            self.model.failure(reason)
        };
        self.expect(step, now);
    }

    fn transport(&self) -> Option<u64> {
        match self.conn {
            Conn::Dialing(t) | Conn::Open(t, _) => Some(t),
            Conn::None => None,
        }
    }

    /// After every input: output written, the transport given up (a
    /// failure), dials due, events compared with the model.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        let now = self.now;
        while let Some(b) = self.s.poll_transmit() {
            self.s.handle_written(now, b.len());
        }
        if let Some(t) = self.transport() {
            if self.s.transport() != Some(t) {
                self.failed();
            }
        }
        if let Conn::Open(_, 2) = self.conn {
            prop_assert!(self.s.is_connected());
        }
        if let Some(d) = self.s.poll_dial(now) {
            prop_assert_eq!(
                Some(now),
                self.expected_dial,
                "dial at {:?}, the model expects {:?}",
                now - self.t0,
                self.expected_dial.map(|t| t - self.t0)
            );
            self.expected_dial = None;
            self.dials.push(now - self.t0);
            prop_assert!(self.conn == Conn::None);
            self.conn = Conn::Dialing(d.transport);
            prop_assert_eq!(d.deadline, now + DIAL_TIMEOUT);
        }
        while let Some(e) = self.s.poll_event() {
            match e {
                SessionEvent::Disconnected(d) => {
                    let want = self.expected.pop_front();
                    prop_assert_eq!(Some(&d), want.as_ref(), "reports so far {:?}", self.reports);
                    self.reports.push(d);
                }
                SessionEvent::GaveUp(_) => {
                    prop_assert!(
                        self.expected.is_empty(),
                        "gave up before {:?}",
                        self.expected
                    );
                    prop_assert!(self.expected_gave_up > 0, "gave up; the model goes on");
                    self.expected_gave_up -= 1;
                }
                SessionEvent::Connected(_) => {
                    prop_assert!(matches!(self.conn, Conn::Open(_, 2)) || self.conn == Conn::None);
                }
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert!(
            self.expected.is_empty(),
            "missing reports {:?}",
            self.expected
        );
        prop_assert_eq!(self.expected_gave_up, 0, "missing GaveUp");
        // The session's own state agrees with the model's.
        prop_assert_eq!(self.s.transport(), self.transport());
        if self.idle {
            prop_assert!(!self.s.is_connecting() && !self.s.is_connected());
            prop_assert_eq!(self.s.poll_timeout(), None);
        } else {
            prop_assert!(self.s.is_connecting() || self.s.is_connected());
        }
        if self.expected_dial.is_some() {
            prop_assert!(self.conn == Conn::None);
            prop_assert_eq!(self.s.poll_timeout(), self.expected_dial);
        }
        if self.conn == Conn::None && !self.idle {
            prop_assert!(self.expected_dial.is_some(), "a loop without a next dial");
        }
        Ok(())
    }

    fn input(&mut self, bytes: &[u8]) {
        let now = self.now;
        self.s.handle_input(now, bytes);
    }

    fn op(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let now = self.now;
        match *op {
            Op::DialOk => {
                if let Conn::Dialing(t) = self.conn {
                    self.s.handle_dialed(now, t);
                    self.conn = Conn::Open(t, 0);
                }
            }
            Op::DialFail => {
                if let Conn::Dialing(t) = self.conn {
                    self.s
                        .handle_dial_failed(now, t, Error::Refused("model".into()));
                }
            }
            Op::Hello => {
                if let Conn::Open(t, 0) = self.conn {
                    self.conn = Conn::Open(t, 1);
                    self.input(&encode_hello(&LocalHello::default()));
                }
            }
            Op::Ack => {
                if let Conn::Open(t, 1) = self.conn {
                    self.conn = Conn::Open(t, 2);
                    self.input(&encode_ack());
                    prop_assert!(self.s.is_connected());
                    self.model.success();
                }
            }
            Op::Reject(before_hello) => {
                if let Conn::Open(_, stage) = self.conn {
                    if stage == u8::from(!before_hello) {
                        self.rejected = true;
                        self.input(&encode_rejection("server_full"));
                    }
                }
            }
            Op::Reset => {
                if let Conn::Open(..) = self.conn {
                    self.s
                        .handle_transport_error(now, &std::io::ErrorKind::ConnectionReset.into());
                }
            }
            Op::Eof => {
                if let Conn::Open(..) = self.conn {
                    self.s.handle_eof(now);
                }
            }
            Op::Disconnect => {
                if !self.idle {
                    match self.conn {
                        Conn::Open(..) => self.manual = true,
                        _ => {
                            // A loop (dial due, dialling or waiting) ends at once.
                            self.conn = Conn::None;
                            self.expected_gave_up += 1;
                            self.expected_dial = None;
                            self.idle = true;
                        }
                    }
                }
                self.s.disconnect(now);
            }
            Op::StopRetry => {
                if !self.idle {
                    match self.conn {
                        Conn::Open(..) => self.model.stop_requested = true,
                        _ => {
                            let r = self.model.stop_now();
                            self.expected.push_back(state(r));
                            self.expected_gave_up += 1;
                            self.expected_dial = None;
                            self.conn = Conn::None;
                            self.idle = true;
                        }
                    }
                }
                self.s.stop_retry(now);
            }
            Op::Retry(max) => {
                if self.idle {
                    self.model.retry(max);
                    self.idle = false;
                    self.expected_dial = Some(now);
                }
                self.s.retry(now, max);
            }
            Op::Connect => {
                if self.idle {
                    self.model.connect();
                    self.idle = false;
                    self.expected_dial = Some(now);
                }
                self.s.connect(now);
            }
            Op::Advance(ms) => {
                // Wake at every deadline on the way, exactly.
                let target = now + Duration::from_millis(ms);
                let mut wakeups = 0;
                while let Some(t) = self.s.poll_timeout().filter(|&t| t <= target) {
                    wakeups += 1;
                    prop_assert!(wakeups < 1000, "poll_timeout does not move");
                    prop_assert!(t >= self.now, "poll_timeout in the past");
                    self.now = t;
                    let now = self.now;
                    self.s.handle_timeout(now);
                    // A dial or handshake deadline fails the attempt.
                    self.settle()?;
                    if self.s.poll_timeout() == Some(t) && self.conn != Conn::None {
                        prop_assert!(false, "poll_timeout stays at {:?}", t - self.t0);
                    }
                }
                self.now = target;
                let now = self.now;
                self.s.handle_timeout(now);
            }
        }
        self.settle()
    }
}

fn run(max_retries: u32, delay_ms: u64, seed: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let mut config = ConnectionConfig::default();
    config.handshake_timeout = HANDSHAKE_TIMEOUT;
    let delay = Duration::from_millis(delay_ms);
    let s = ClientSession::with_connection_config(
        Arc::new(config),
        Reconnect::new(RetryPolicy::fixed(max_retries, delay), seed),
        DIAL_TIMEOUT,
        t0,
    );
    let mut h = Harness {
        s,
        model: Model::new(max_retries, delay),
        now: t0,
        t0,
        conn: Conn::None,
        idle: true,
        expected: VecDeque::new(),
        expected_gave_up: 0,
        expected_dial: None,
        manual: false,
        rejected: false,
        dials: Vec::new(),
        reports: Vec::new(),
    };
    h.op(&Op::Connect)?;
    for op in ops {
        h.op(op)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn session_matches_the_reconnect_model(
        max_retries in 0u32..4,
        delay_ms in 1u64..1500,
        seed in any::<u64>(),
        ops in prop::collection::vec(arb_op(), 0..80),
    ) {
        run(max_retries, delay_ms, seed, &ops)?;
    }
}

/// The cases of the rule spelled out, as plain tests of the harness.
#[test]
fn refused_three_times_with_retry_two() {
    run(
        2,
        100,
        1,
        &[Op::DialFail, Op::DialFail, Op::Advance(100), Op::DialFail],
    )
    .unwrap();
}

#[test]
fn rejected_on_the_first_connect_is_final_at_once() {
    run(
        3,
        100,
        1,
        &[Op::DialOk, Op::Reject(true), Op::Advance(10_000)],
    )
    .unwrap();
    run(3, 100, 1, &[Op::DialOk, Op::Hello, Op::Reject(false)]).unwrap();
}

#[test]
fn lost_after_the_handshake_then_rejected_in_the_loop() {
    run(
        2,
        300,
        1,
        &[
            Op::DialOk,
            Op::Hello,
            Op::Ack,
            Op::Eof,
            Op::DialOk,
            Op::Reject(true),
            Op::Advance(300),
            Op::DialOk,
            Op::Hello,
            Op::Reset,
            Op::Advance(5_000),
            Op::Retry(Some(1)),
            Op::DialOk,
            Op::Hello,
            Op::Ack,
            Op::Disconnect,
        ],
    )
    .unwrap();
}
