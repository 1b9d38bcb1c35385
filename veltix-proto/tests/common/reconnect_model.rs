//! An independent reference model of Veltix's reconnect rules, written from
//! the rule in `veltix-proto/src/retry.rs` (module docs and `Reconnect`) and
//! the `ClientSession` docs, never by calling the core. Shared by
//! `veltix-proto/tests/session_model.rs` and `tests/tests/sim_network/`.
//!
//! The rule, with `retry = N`, `retry_delay = d` (fixed delay):
//!
//! 1. a failure is reported `(permanent = false, attempt = a)` where `a` is
//!    the failures counted since the last success (0 for the first);
//! 2. attempt 1 starts at once, attempt `i > 1` starts `d` after failure `i - 1`;
//! 3. when the failed attempt was the `N`th (`a >= N`), `(true, a)` follows
//!    and retrying stops; with nothing to retry at all (`a == 0` and
//!    `N == 0`), `(true, 0)` is reported alone;
//! 4. a rejection (`server_full`) when no failure is counted yet is final
//!    at once: `(true, 0, Rejected)` alone;
//! 5. a success resets the count and the budget to `N`;
//! 6. `retry(max)` starts a fresh loop: attempt 1 at once, budget `max(max or N, 1)`;
//! 7. `stop_retry()` during a loop (dial due, dialling, waiting) reports
//!    `(true, a', last reason)` at once, `a'` being the attempt that was
//!    scheduled; otherwise it makes the next failure final: its reports,
//!    then `(true, a')` instead of a retry;
//! 8. reasons: an established connection lost is `ServerClosed`; a failed
//!    attempt is `Rejected(r)` when the server refused, else `Error` in the
//!    loop started by `connect()` before any success, else `ServerClosed`;
//! 9. `disconnect()`: an established connection reports `(true, a, Manual)`
//!    when it ends and nothing more; anything else gives up without a report;
//! 10. `connect()` starts a fresh loop: count and budget reset, even after a
//!     give-up.

#![allow(dead_code)]

use std::time::Duration;

/// `DisconnectState` as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub permanent: bool,
    pub attempt: u32,
    pub retry_max: u32,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    ServerClosed,
    Error,
    Manual,
    Rejected(String),
}

/// What happens after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Dial after this long.
    DialAfter(Duration),
    /// Stop (the session gives up).
    GiveUp,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub max_retries: u32,
    pub delay: Duration,
    pub attempt: u32,
    pub budget: u32,
    /// The loop was started by `connect()` and nothing succeeded since.
    pub initial: bool,
    /// `stop_retry()` was called: the next failure is final.
    pub stop_requested: bool,
    /// Retrying stopped for good (until a success or `retry`).
    pub stopped: bool,
    pub last_reason: Reason,
}

impl Model {
    pub fn new(max_retries: u32, delay: Duration) -> Self {
        Model {
            max_retries,
            delay,
            attempt: 0,
            budget: max_retries,
            initial: true,
            stop_requested: false,
            stopped: false,
            last_reason: Reason::Error,
        }
    }

    fn report(&self, permanent: bool, reason: &Reason) -> Report {
        Report {
            permanent,
            attempt: self.attempt,
            retry_max: self.budget,
            reason: reason.clone(),
        }
    }

    /// `connect()` from idle: a fresh loop (count, budget and the stopped
    /// state reset, as after a success).
    pub fn connect(&mut self) {
        self.initial = true;
        self.stop_requested = false;
        self.attempt = 0;
        self.budget = self.max_retries;
        self.stopped = false;
    }

    /// The handshake finished.
    pub fn success(&mut self) {
        self.attempt = 0;
        self.budget = self.max_retries;
        self.stopped = false;
        self.initial = false;
    }

    /// The reason a failed attempt is reported with.
    pub fn attempt_reason(&self, rejected: Option<&str>) -> Reason {
        match rejected {
            Some(r) => Reason::Rejected(r.to_owned()),
            None if self.initial => Reason::Error,
            None => Reason::ServerClosed,
        }
    }

    /// A failure (failed attempt, or an established connection lost):
    /// the reports, in order, and what next.
    pub fn failure(&mut self, reason: Reason) -> (Vec<Report>, Next) {
        self.last_reason = reason.clone();
        let mut reports = Vec::new();
        if self.stopped {
            reports.push(self.report(true, &reason));
            return (reports, Next::GiveUp);
        }
        let first = self.attempt == 0;
        let give_up =
            self.attempt >= self.budget || (first && matches!(reason, Reason::Rejected(_)));
        if !(give_up && first) {
            reports.push(self.report(false, &reason));
        }
        if give_up {
            reports.push(self.report(true, &reason));
            self.stopped = true;
            return (reports, Next::GiveUp);
        }
        self.attempt += 1;
        if self.stop_requested {
            self.stopped = true;
            reports.push(self.report(true, &reason));
            return (reports, Next::GiveUp);
        }
        let d = if self.attempt <= 1 {
            Duration::ZERO
        } else {
            self.delay
        };
        (reports, Next::DialAfter(d))
    }

    /// An established connection was lost.
    pub fn lost(&mut self) -> (Vec<Report>, Next) {
        self.initial = false;
        self.failure(Reason::ServerClosed)
    }

    /// `retry(max)` from idle: attempt 1 at once.
    pub fn retry(&mut self, max: Option<u32>) {
        self.attempt = 1;
        self.budget = max.unwrap_or(self.max_retries).max(1);
        self.stopped = false;
        self.stop_requested = false;
        self.initial = false;
    }

    /// `stop_retry()` while a loop runs (not while a transport is open):
    /// the permanent report.
    pub fn stop_now(&mut self) -> Report {
        self.stop_requested = true;
        self.stopped = true;
        let r = self.last_reason.clone();
        self.report(true, &r)
    }

    /// `disconnect()` of an established connection, once it ended.
    pub fn manual(&self) -> Report {
        self.report(true, &Reason::Manual)
    }
}
