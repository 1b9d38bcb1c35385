//! `retry_policy`: the reconnect state machine under arbitrary settings,
//! non-finite ones included, and arbitrary sequences of outcomes.

use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};

use crate::config::ClientConfig;
use crate::retry::{Backoff, DisconnectReason, NextStep, Reconnect, RetryPolicy};

fn byte(u: &mut Unstructured<'_>) -> Result<u8> {
    u.arbitrary()
}

/// Any duration: zero, milliseconds, seconds with nanos, raw nanos, the maximum.
fn duration(u: &mut Unstructured<'_>) -> Result<Duration> {
    Ok(match byte(u)? % 6 {
        0 => Duration::ZERO,
        1 => Duration::from_millis(10 * u64::from(byte(u)?)),
        2 => Duration::new(
            u64::from(u.arbitrary::<u16>()?),
            u.arbitrary::<u32>()? % 1_000_000_000,
        ),
        3 => Duration::from_nanos(u.arbitrary()?),
        4 => Duration::MAX,
        _ => Duration::new(u.arbitrary()?, u.arbitrary::<u32>()? % 1_000_000_000),
    })
}

/// Any float, with the troublesome ones often.
fn float(u: &mut Unstructured<'_>) -> Result<f64> {
    const SPECIAL: [f64; 15] = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.0,
        0.0,
        -0.0,
        0.5,
        1.0,
        1.5,
        2.0,
        10.0,
        1e-300,
        1e300,
        f64::EPSILON,
        f64::MAX,
    ];
    let b = byte(u)?;
    Ok(match SPECIAL.get(usize::from(b % 16)) {
        Some(&x) => x,
        None => f64::from_bits(u.arbitrary()?),
    })
}

fn reason(u: &mut Unstructured<'_>) -> Result<DisconnectReason> {
    Ok(match byte(u)? % 4 {
        0 => DisconnectReason::ServerClosed,
        1 => DisconnectReason::Error,
        2 => DisconnectReason::Manual,
        _ => DisconnectReason::Rejected("server_full".into()),
    })
}

/// An arbitrary [`RetryPolicy`] (`max_retries` 0, 1–5, any or `u32::MAX`; any
/// delay; no backoff, or one from arbitrary, also NaN, infinite or negative,
/// factor and jitter, built with `with_backoff` or, when the values are in
/// range, through [`ClientConfig::retry_policy`]) and a seed, then up to 128
/// outcomes: failure (with a reason), success, `stop`, `restart`.
///
/// Asserts: the constructor sanitizes (factor finite and `>= 1`, jitter in
/// `[0, 1]`); `base_delay` is 0 for attempt 1, never decreases and never
/// exceeds `max(max_delay, delay)`; a retry delay lies in
/// `[base·(1 − jitter), base]`, is 0 for attempt 1 and exactly the delay
/// without backoff; reports are one or two, numbered by the attempt, with the
/// budget, the permanent one last; attempts never exceed the budget; after a
/// permanent report only `GiveUp` comes until a success or a `restart`.
pub fn retry_policy(_t0: Instant, data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let max_retries = match byte(u)? % 4 {
        0 => 0,
        1 => 1 + u32::from(byte(u)? % 5),
        2 => u.arbitrary()?,
        _ => u32::MAX,
    };
    let delay = duration(u)?;
    let mut policy = RetryPolicy::fixed(max_retries, delay);
    let shape = byte(u)? % 3;
    if shape != 0 {
        let (factor, max_delay, jitter) = (float(u)?, duration(u)?, float(u)?);
        let in_range = factor.is_finite() && factor >= 1.0 && (0.0..=1.0).contains(&jitter);
        policy = if shape == 2 && in_range {
            ClientConfig::default()
                .retry(max_retries)
                .retry_delay(delay)
                .backoff(Some(Backoff {
                    factor,
                    max_delay,
                    jitter,
                }))
                .retry_policy()
        } else {
            RetryPolicy::fixed(max_retries, delay).with_backoff(factor, max_delay, jitter)
        };
        let b = policy.backoff.expect("a backoff was set");
        assert!(
            b.factor.is_finite() && b.factor >= 1.0,
            "factor {}",
            b.factor
        );
        assert!((0.0..=1.0).contains(&b.jitter), "jitter {}", b.jitter);
    }
    let seed: u64 = u.arbitrary()?;
    check_base_delays(&policy);

    let mut r = Reconnect::new(policy, seed);
    assert_eq!(
        (r.attempt(), r.budget(), r.is_stopped()),
        (0, max_retries, false)
    );
    for _ in 0..128 {
        if u.is_empty() {
            break;
        }
        match byte(u)? % 8 {
            0..=4 => {
                let why = reason(u)?;
                failure(&mut r, &policy, why);
            }
            5 => {
                r.on_success();
                assert_eq!(
                    (r.attempt(), r.budget(), r.is_stopped()),
                    (0, max_retries, false)
                );
            }
            6 => {
                let why = reason(u)?;
                let attempt = r.attempt();
                let st = r.stop(why.clone());
                assert!(st.permanent && r.is_stopped());
                assert_eq!(
                    (st.attempt, st.retry_max, st.reason),
                    (attempt, r.budget(), why)
                );
            }
            _ => {
                let max = match byte(u)? {
                    0 => None,
                    255 => Some(u.arbitrary()?),
                    b => Some(u32::from(b - 1)),
                };
                assert_eq!(r.restart(max), Duration::ZERO, "attempt 1 starts at once");
                let budget = max.unwrap_or(max_retries).max(1);
                assert_eq!(
                    (r.attempt(), r.budget(), r.is_stopped()),
                    (1, budget, false)
                );
            }
        }
        assert!(r.attempt() <= r.budget().max(1), "attempts past the budget");
    }
    Ok(())
}

fn check_base_delays(p: &RetryPolicy) {
    assert_eq!(p.base_delay(0), Duration::ZERO);
    assert_eq!(p.base_delay(1), Duration::ZERO);
    let cap = p.backoff.map_or(p.delay, |b| b.max_delay.max(p.delay));
    let mut prev = Duration::ZERO;
    for attempt in (2..=40).chain([100, 1_000, 100_000, u32::MAX - 1, u32::MAX]) {
        let d = p.base_delay(attempt);
        assert!(
            d <= cap,
            "base delay {d:?} past the cap {cap:?} (attempt {attempt})"
        );
        assert!(
            d >= prev,
            "base delay shrank at attempt {attempt}: {prev:?} -> {d:?}"
        );
        if p.backoff.is_none() {
            assert_eq!(d, p.delay);
        }
        prev = d;
    }
    if p.backoff.is_some() {
        // Through f64 seconds: exact to the nanosecond for any delay under
        // ~48 days; beyond, `Duration::as_secs_f64` rounds twice (the
        // seconds, then with the nanoseconds added), up to one ULP: 2^-52
        // relative. (The tolerance was 2e-16, a little less: found by the
        // campaign at 2^53 s, where one ULP is 2 s; see `found_by_fuzzing`.)
        let (got, want) = (p.base_delay(2), p.delay);
        let tol = Duration::from_nanos(1)
            + Duration::from_secs_f64(want.as_secs_f64() * 2.0 * f64::EPSILON);
        assert!(
            got.max(want) - got.min(want) <= tol,
            "the first backoff delay is the delay: {got:?} vs {want:?}"
        );
    }
}

fn failure(r: &mut Reconnect, policy: &RetryPolicy, why: DisconnectReason) {
    let (attempt, budget, stopped) = (r.attempt(), r.budget(), r.is_stopped());
    let step = r.on_failure(why.clone());
    let reports = &step.reports;
    assert!(
        (1..=2).contains(&reports.len()),
        "{} reports",
        reports.len()
    );
    for rep in reports.iter() {
        assert_eq!(rep.reason, why);
        assert_eq!(rep.retry_max, budget);
        assert!(
            rep.attempt <= budget.max(1),
            "report past the budget: {rep:?}"
        );
    }
    let last = reports.last().expect("non-empty");
    if stopped {
        // After a permanent report only GiveUp comes.
        assert_eq!(step.next, NextStep::GiveUp, "retried after giving up");
        assert_eq!(reports.len(), 1);
        assert!(last.permanent);
        assert!(r.is_stopped());
        return;
    }
    match step.next {
        NextStep::GiveUp => {
            assert!(last.permanent && r.is_stopped());
            assert_eq!(r.attempt(), attempt);
            assert!(
                attempt >= budget || (attempt == 0 && matches!(why, DisconnectReason::Rejected(_))),
                "gave up with budget left ({attempt}/{budget})"
            );
            if reports.len() == 2 {
                assert!(!reports[0].permanent && attempt > 0);
            } else {
                assert_eq!(
                    attempt, 0,
                    "a lone permanent report means nothing was tried"
                );
            }
        }
        NextStep::RetryAfter(d) => {
            assert_eq!(reports.len(), 1);
            assert!(!last.permanent && !r.is_stopped());
            assert_eq!(last.attempt, attempt);
            let now = r.attempt();
            assert_eq!(now, attempt + 1);
            assert!(now <= budget, "attempt {now} past the budget {budget}");
            let base = policy.base_delay(now);
            assert!(d <= base, "delay {d:?} over the un-jittered {base:?}");
            match policy.backoff {
                None => assert_eq!(d, base),
                Some(b) => {
                    let cap = b.max_delay.max(policy.delay);
                    assert!(d <= cap, "delay {d:?} over the cap {cap:?}");
                    let floor = base.as_secs_f64() * (1.0 - b.jitter);
                    assert!(
                        d.as_secs_f64() >= floor * (1.0 - 1e-12) - 1e-9,
                        "delay {d:?} under the jitter floor {floor}"
                    );
                }
            }
            if now == 1 {
                assert_eq!(d, Duration::ZERO, "attempt 1 starts at once");
            }
        }
    }
}
