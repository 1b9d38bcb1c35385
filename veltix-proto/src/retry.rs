//! Reconnection policy (spec §6.1), as pure values: it says when to dial next
//! and what to report; drivers dial.
//!
//! Veltix's rule, for both a failed first connect and a dropped session, with
//! `retry = N` and `retry_delay = d`:
//!
//! 1. the failure is reported as `(permanent=false, attempt=0)`;
//! 2. attempt 1 starts immediately; each failed attempt `i` reports
//!    `(false, i)`, and the next starts `d` later;
//! 3. after attempt `N` fails, `(true, N)` is reported and retrying stops;
//! 4. a success resets the count.
//!
//! On top of Veltix's fixed delay, [`Backoff`] makes the delay grow
//! exponentially up to a cap, with jitter drawn from a caller-seeded
//! generator (no ambient randomness).
//!
//! ```
//! use std::time::Duration;
//! use veltix_proto::retry::{DisconnectReason, NextStep, Reconnect, RetryPolicy};
//!
//! let policy = RetryPolicy::fixed(2, Duration::from_millis(200));
//! let mut r = Reconnect::new(policy, 42);
//! // Refused connect, as observed from Python veltix: (F,0) (F,1) (F,2) (T,2).
//! let s = r.on_failure(DisconnectReason::Error);
//! assert_eq!((s.reports[0].attempt, s.next), (0, NextStep::RetryAfter(Duration::ZERO)));
//! let s = r.on_failure(DisconnectReason::Error);
//! assert_eq!((s.reports[0].attempt, s.next), (1, NextStep::RetryAfter(Duration::from_millis(200))));
//! let s = r.on_failure(DisconnectReason::Error);
//! assert_eq!(s.reports.len(), 2);
//! assert!(s.reports[1].permanent && s.reports[1].attempt == 2);
//! assert_eq!(s.next, NextStep::GiveUp);
//! ```

use std::time::Duration;

use smallvec::SmallVec;

/// Why a connection ended or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// An established connection was closed or reset by the peer, or a retry
    /// attempt failed.
    ServerClosed,
    /// A connect attempt failed (refused, timed out, handshake failed).
    Error,
    /// `disconnect()` was called.
    Manual,
    /// The server refused us with this reason (`server_full`).
    Rejected(String),
}

/// What `on_disconnect` is told: Veltix's `DisconnectState`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DisconnectState {
    /// No further attempt will be made.
    pub permanent: bool,
    /// Failures counted so far (0 right after a working session).
    pub attempt: u32,
    /// The retry budget.
    pub retry_max: u32,
    /// Why.
    pub reason: DisconnectReason,
}

/// Exponential growth of the delay between attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Each delay is the previous one times this (>= 1).
    pub factor: f64,
    /// Delays never exceed this.
    pub max_delay: Duration,
    /// Fraction in `[0, 1]`: each delay is scaled by a seeded random value
    /// from `[1 - jitter, 1]`, so it never exceeds the un-jittered delay.
    pub jitter: f64,
}

impl Backoff {
    /// Factor clamped to `>= 1` (1 when not finite), jitter to `[0, 1]` (0 when not finite).
    pub fn sanitized(self) -> Self {
        Backoff {
            factor: if self.factor.is_finite() {
                self.factor.max(1.0)
            } else {
                1.0
            },
            max_delay: self.max_delay,
            jitter: if self.jitter.is_finite() {
                self.jitter.clamp(0.0, 1.0)
            } else {
                0.0
            },
        }
    }
}

/// How often and how fast to reconnect.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts after a failure (`retry`; 0 = never retry).
    pub max_retries: u32,
    /// Delay between attempts (`retry_delay`), and the first delay of a backoff.
    pub delay: Duration,
    /// Optional exponential backoff; `None` keeps Veltix's fixed delay.
    pub backoff: Option<Backoff>,
}

impl Default for RetryPolicy {
    /// Veltix's defaults: no retry, 1 s delay.
    fn default() -> Self {
        RetryPolicy::fixed(0, Duration::from_secs(1))
    }
}

impl RetryPolicy {
    /// Veltix's policy: `max_retries` attempts, `delay` apart.
    pub fn fixed(max_retries: u32, delay: Duration) -> Self {
        RetryPolicy {
            max_retries,
            delay,
            backoff: None,
        }
    }

    /// Adds exponential backoff (factor clamped to `>= 1`, jitter to `[0, 1]`).
    pub fn with_backoff(mut self, factor: f64, max_delay: Duration, jitter: f64) -> Self {
        self.backoff = Some(
            Backoff {
                factor,
                max_delay,
                jitter,
            }
            .sanitized(),
        );
        self
    }

    /// The same policy with its backoff (if any) sanitized. [`Reconnect`]
    /// sanitizes every policy it is given, whoever built it.
    pub fn sanitized(mut self) -> Self {
        self.backoff = self.backoff.map(Backoff::sanitized);
        self
    }

    /// The delay before attempt `attempt` (1-based) without jitter: zero for
    /// the first, then `delay`, growing by the backoff factor up to its cap.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        match self.backoff {
            None => self.delay,
            Some(b) => {
                let exp = i32::try_from(attempt - 2).unwrap_or(i32::MAX);
                let secs = self.delay.as_secs_f64() * b.factor.powi(exp);
                let cap = b.max_delay.max(self.delay);
                if secs.is_finite() && secs < cap.as_secs_f64() {
                    Duration::from_secs_f64(secs)
                } else {
                    cap
                }
            }
        }
    }
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NextStep {
    /// Dial again after this long.
    RetryAfter(Duration),
    /// Stop; the last report is permanent.
    GiveUp,
}

/// The reports to deliver (in order) and what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryStep {
    /// `DisconnectState`s for `on_disconnect`, in order.
    pub reports: SmallVec<[DisconnectState; 2]>,
    /// What next.
    pub next: NextStep,
}

/// SplitMix64: a tiny seeded generator; quality is ample for jitter.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The reconnect state machine of one client.
#[derive(Debug, Clone)]
pub struct Reconnect {
    policy: RetryPolicy,
    /// Budget in force (the policy's, or the one given to [`restart`](Self::restart)).
    budget: u32,
    attempt: u32,
    stopped: bool,
    rng: SplitMix64,
}

impl Reconnect {
    /// A fresh state machine; `seed` drives the jitter.
    pub fn new(policy: RetryPolicy, seed: u64) -> Self {
        let policy = policy.sanitized();
        Reconnect {
            budget: policy.max_retries,
            policy,
            attempt: 0,
            stopped: false,
            rng: SplitMix64(seed),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Failures counted since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The retry budget in force.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    fn state(&self, permanent: bool, reason: DisconnectReason) -> DisconnectState {
        DisconnectState {
            permanent,
            attempt: self.attempt,
            retry_max: self.budget,
            reason,
        }
    }

    /// A connection was established: the failure count resets.
    pub fn on_success(&mut self) {
        self.attempt = 0;
        self.budget = self.policy.max_retries;
        self.stopped = false;
    }

    /// A session ended or a dial failed.
    ///
    /// A rejection by the server on the very first connect (not inside a
    /// retry loop) is final at once, as in Veltix.
    pub fn on_failure(&mut self, reason: DisconnectReason) -> RetryStep {
        let mut reports = SmallVec::new();
        if self.stopped {
            reports.push(self.state(true, reason));
            return RetryStep {
                reports,
                next: NextStep::GiveUp,
            };
        }
        let first = self.attempt == 0;
        let rejected_at_once = first && matches!(reason, DisconnectReason::Rejected(_));
        let give_up = self.attempt >= self.budget || rejected_at_once;
        // With nothing to retry, Veltix reports the permanent state alone.
        if !(give_up && first) {
            reports.push(self.state(false, reason.clone()));
        }
        if give_up {
            reports.push(self.state(true, reason));
            self.stopped = true;
            return RetryStep {
                reports,
                next: NextStep::GiveUp,
            };
        }
        self.attempt += 1;
        RetryStep {
            reports,
            next: NextStep::RetryAfter(self.delay_for(self.attempt)),
        }
    }

    /// `stop_retry()`: the loop ends now; returns the permanent report.
    pub fn stop(&mut self, reason: DisconnectReason) -> DisconnectState {
        self.stopped = true;
        self.state(true, reason)
    }

    /// `retry(max)`: start a fresh loop with budget `max` (or the policy's).
    /// The returned delay is zero: attempt 1 starts at once.
    pub fn restart(&mut self, max: Option<u32>) -> Duration {
        self.attempt = 1;
        self.budget = max.unwrap_or(self.policy.max_retries).max(1);
        self.stopped = false;
        Duration::ZERO
    }

    /// Whether retrying has stopped for good (until a success or `restart`).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    fn delay_for(&mut self, attempt: u32) -> Duration {
        let base = self.policy.base_delay(attempt);
        match self.policy.backoff {
            Some(b) if b.jitter > 0.0 && !base.is_zero() => {
                // In f64 seconds and back, never above the base: no overflow
                // near Duration::MAX, and rounding cannot push it past the base.
                let scale = (1.0 - b.jitter * self.rng.next_f64()).clamp(0.0, 1.0);
                Duration::try_from_secs_f64(base.as_secs_f64() * scale)
                    .unwrap_or(base)
                    .min(base)
            }
            _ => base,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempts(r: &mut Reconnect, n: usize) -> Vec<(bool, u32, NextStep)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let s = r.on_failure(DisconnectReason::ServerClosed);
            for rep in &s.reports {
                out.push((rep.permanent, rep.attempt, s.next));
            }
        }
        out
    }

    #[test]
    fn zero_retries_gives_up_at_once() {
        let mut r = Reconnect::new(RetryPolicy::default(), 1);
        let s = r.on_failure(DisconnectReason::Error);
        assert_eq!(s.next, NextStep::GiveUp);
        assert_eq!(
            s.reports
                .iter()
                .map(|d| (d.permanent, d.attempt))
                .collect::<Vec<_>>(),
            vec![(true, 0)]
        );
    }

    #[test]
    fn success_resets_the_count() {
        let mut r = Reconnect::new(RetryPolicy::fixed(3, Duration::from_secs(1)), 1);
        attempts(&mut r, 2);
        assert_eq!(r.attempt(), 2);
        r.on_success();
        let s = r.on_failure(DisconnectReason::ServerClosed);
        assert_eq!(s.reports[0].attempt, 0);
        assert_eq!(s.next, NextStep::RetryAfter(Duration::ZERO));
    }

    #[test]
    fn rejection_on_first_connect_is_final() {
        let mut r = Reconnect::new(RetryPolicy::fixed(5, Duration::from_secs(1)), 1);
        let s = r.on_failure(DisconnectReason::Rejected("server_full".into()));
        assert_eq!(s.next, NextStep::GiveUp);
        assert!(s.reports.last().unwrap().permanent);
    }

    #[test]
    fn rejection_inside_loop_counts_as_attempt() {
        let mut r = Reconnect::new(RetryPolicy::fixed(5, Duration::from_secs(1)), 1);
        r.on_failure(DisconnectReason::ServerClosed);
        let s = r.on_failure(DisconnectReason::Rejected("server_full".into()));
        assert_eq!(s.next, NextStep::RetryAfter(Duration::from_secs(1)));
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_bounds() {
        let p = RetryPolicy::fixed(10, Duration::from_millis(100)).with_backoff(
            2.0,
            Duration::from_millis(500),
            0.5,
        );
        assert_eq!(p.base_delay(1), Duration::ZERO);
        assert_eq!(p.base_delay(2), Duration::from_millis(100));
        assert_eq!(p.base_delay(3), Duration::from_millis(200));
        assert_eq!(p.base_delay(5), Duration::from_millis(500));
        assert_eq!(p.base_delay(u32::MAX), Duration::from_millis(500));
        let mut r = Reconnect::new(p, 7);
        let mut r2 = Reconnect::new(p, 7);
        for i in 0..10u32 {
            let a = r.on_failure(DisconnectReason::Error);
            let b = r2.on_failure(DisconnectReason::Error);
            assert_eq!(a, b, "same seed, same delays");
            if let NextStep::RetryAfter(d) = a.next {
                let base = p.base_delay(i + 1);
                assert!(d <= base && d >= base.mul_f64(0.5), "{d:?} vs {base:?}");
            }
        }
    }

    #[test]
    fn restart_and_stop() {
        let mut r = Reconnect::new(RetryPolicy::fixed(0, Duration::from_secs(1)), 1);
        assert_eq!(r.restart(Some(2)), Duration::ZERO);
        let s = r.on_failure(DisconnectReason::ServerClosed);
        assert_eq!(s.reports[0].attempt, 1);
        assert_eq!(s.reports[0].retry_max, 2);
        let st = r.stop(DisconnectReason::ServerClosed);
        assert!(st.permanent && r.is_stopped());
        assert_eq!(
            r.on_failure(DisconnectReason::ServerClosed).next,
            NextStep::GiveUp
        );
    }
}
