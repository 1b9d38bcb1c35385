//! The parts of a simulation every node's context reaches: the clock, the
//! trace and failure reports ([`Log`]), and application timers ([`Timers`]).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::trace::{Trace, TraceEntry, TraceKind};
use crate::types::{NodeId, SimStats};

/// How many trace entries a failure report prints.
pub(crate) const REPORT_TAIL: usize = 40;

/// Observer of every trace entry.
pub(crate) type Observer = Box<dyn FnMut(&TraceEntry)>;

/// Clock, trace, counters and failure reports.
pub(crate) struct Log {
    pub seed: u64,
    pub start: Instant,
    pub now: Instant,
    pub trace: Trace,
    pub observer: Option<Observer>,
    pub replay: Option<String>,
    /// A failure report was printed (a panic that follows need not print it again).
    pub reported: Cell<bool>,
    pub stats: SimStats,
}

impl Log {
    pub fn new(seed: u64, start: Instant) -> Self {
        Log {
            seed,
            start,
            now: start,
            trace: Trace::new(256),
            observer: None,
            replay: None,
            reported: Cell::new(false),
            stats: SimStats::default(),
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now.saturating_duration_since(self.start)
    }

    pub fn record(&mut self, node: Option<NodeId>, kind: TraceKind) {
        let at = self.elapsed();
        let e = self.trace.record(at, node, kind);
        if let Some(o) = self.observer.as_mut() {
            o(e);
        }
    }

    /// The replay command for this seed.
    pub fn replay_command(&self) -> String {
        match &self.replay {
            Some(r) => r.replace("{seed}", &self.seed.to_string()),
            None => format!("run the same simulation with seed {}", self.seed),
        }
    }

    /// Everything a failure report says: seed, time, replay command, the
    /// trace's fingerprint and its last entries.
    pub fn report(&self, what: &dyn fmt::Display) -> String {
        let t = self.elapsed();
        format!(
            "veltix-sim: {what}\n  seed {seed}, virtual time {s}.{us:06}s, step {step}\n  replay: {replay}\n  trace: {fp}; the last {n} entries:\n{tail}",
            seed = self.seed,
            s = t.as_secs(),
            us = t.subsec_micros(),
            step = self.stats.steps,
            replay = self.replay_command(),
            fp = self.trace.fingerprint(),
            n = REPORT_TAIL.min(self.trace.entries().len()),
            tail = self.trace.render_tail(REPORT_TAIL),
        )
    }

    /// Panics with the failure report.
    pub fn fail(&self, what: &dyn fmt::Display) -> ! {
        let report = self.report(what);
        self.reported.set(true);
        panic!("{report}");
    }
}

/// An application timer ([`ClientCtx::set_timer`](crate::ClientCtx::set_timer),
/// [`ServerCtx::set_timer`](crate::ServerCtx::set_timer)); cancel it with its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

/// Every node's application timers, in (time, creation) order.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    queue: BTreeMap<(Instant, u64), (NodeId, u64)>,
    due: BTreeMap<u64, Instant>,
    next: u64,
}

impl Timers {
    pub fn set(&mut self, node: NodeId, at: Instant, tag: u64) -> TimerId {
        let id = self.next;
        self.next += 1;
        self.queue.insert((at, id), (node, tag));
        self.due.insert(id, at);
        TimerId(id)
    }

    /// Cancels `node`'s timer `id`; false if it fired, was cancelled, or is
    /// another node's.
    pub fn cancel(&mut self, node: NodeId, id: TimerId) -> bool {
        let Some(&at) = self.due.get(&id.0) else {
            return false;
        };
        if self.queue.get(&(at, id.0)).map(|&(n, _)| n) != Some(node) {
            return false;
        }
        self.queue.remove(&(at, id.0));
        self.due.remove(&id.0);
        true
    }

    /// When the next timer is due.
    pub fn next(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|(&(t, _), _)| t)
    }

    /// The serial the next timer will get (timers set from now on fire at
    /// a later step, even when due now).
    pub fn watermark(&self) -> u64 {
        self.next
    }

    /// The next timer due by `now` and created before `watermark`.
    pub fn pop_due(&mut self, now: Instant, watermark: u64) -> Option<(NodeId, u64)> {
        let (&(at, id), _) = self
            .queue
            .range(..=(now, u64::MAX))
            .find(|(&(_, id), _)| id < watermark)?;
        self.due.remove(&id);
        self.queue.remove(&(at, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_order_and_cancel() {
        let t0 = Instant::now();
        let n = NodeId(0);
        let mut t = Timers::default();
        let a = t.set(n, t0 + Duration::from_secs(2), 1);
        t.set(n, t0 + Duration::from_secs(1), 2);
        t.set(n, t0 + Duration::from_secs(1), 3);
        assert!(!t.cancel(NodeId(1), a), "another node's timer");
        assert!(t.cancel(n, a));
        assert!(!t.cancel(n, a));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        let w = t.watermark();
        t.set(n, t0, 4); // set while firing: waits for the next round
        let now = t0 + Duration::from_secs(5);
        assert_eq!(t.pop_due(now, w), Some((n, 2)));
        assert_eq!(t.pop_due(now, w), Some((n, 3)));
        assert_eq!(t.pop_due(now, w), None);
        assert_eq!(t.pop_due(now, t.watermark()), Some((n, 4)));
    }
}
