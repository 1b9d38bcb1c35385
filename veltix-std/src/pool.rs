//! The callback pool: `max_workers` threads serving per-peer mailboxes.
//!
//! Each peer (each server connection, or the client's session) owns a
//! [`Mailbox`]: jobs posted to it run one after the other, in order, on
//! whichever worker picks the mailbox up, so callbacks of one peer are serial
//! while different peers run in parallel.
//!
//! **Fairness.** A worker runs at most [`JOBS_PER_TURN`] jobs of one mailbox,
//! then puts the mailbox back at the end of the ready queue: N peers flooding
//! the server cannot starve the N+1th. (When no other mailbox is waiting,
//! the worker goes on with the same one instead of re-queueing it.)
//!
//! **Bounds.** A mailbox counts its queued items in bytes (payload + 64
//! per item). Posting never blocks: the I/O thread asks [`Mailbox::has_room`]
//! before it takes more of that peer's events from the core, and the mailbox
//! calls its `on_room` hook (which wakes the I/O thread) when it drains back
//! under its cap.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use veltix_proto::Frame;

/// Jobs of one mailbox a worker runs before serving the next mailbox.
pub(crate) const JOBS_PER_TURN: usize = 16;

/// Fixed cost of one job in a mailbox's byte count.
pub(crate) const JOB_OVERHEAD: usize = 64;

/// Default cap of a mailbox, in bytes.
pub(crate) const MAILBOX_BYTES: usize = 1024 * 1024;

/// A callback invocation.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Locks a mutex, ignoring poisoning: every critical section in this crate
/// leaves its data consistent (callbacks never run under a lock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long a `request`/`ping` caller polls for its outcome before it parks.
pub(crate) const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);

/// What a request waits for in the driver's `waiting` map: `None` until the
/// I/O thread stores the outcome.
pub(crate) type Waiting<K> =
    std::collections::HashMap<K, Option<Result<veltix_proto::Reply, veltix_proto::RequestFailure>>>;

/// Waits for the outcome of request `key` in the `waiting` map of the
/// state behind `m`, until `deadline`; on timeout removes the entry and
/// calls `cancel` (under the lock), then maps the outcome to the caller's
/// error (`what`, `timeout`). Polls briefly before parking: a loopback or
/// LAN reply often lands within tens of microseconds, and waking a parked
/// thread costs about that much again on a virtual CPU. Bounded, and it
/// yields.
pub(crate) fn wait_outcome<'a, T, K: std::hash::Hash + Eq + Copy>(
    m: &'a Mutex<T>,
    cv: &Condvar,
    mut g: MutexGuard<'a, T>,
    waiting: impl Fn(&mut T) -> &mut Waiting<K>,
    key: K,
    cancel: impl FnOnce(&mut T),
    (what, timeout, deadline): (veltix_proto::Wait, Duration, Instant),
) -> Result<veltix_proto::Reply, veltix_proto::Error> {
    let spin_until = Instant::now() + SPIN_BEFORE_PARK;
    while !matches!(waiting(&mut g).get(&key), Some(Some(_)) | None) && Instant::now() < spin_until
    {
        drop(g);
        std::thread::yield_now();
        g = lock(m);
    }
    loop {
        if let Some(Some(_)) = waiting(&mut g).get(&key) {
            let outcome = waiting(&mut g).remove(&key).flatten().expect("checked");
            return outcome
                .map_err(|f| veltix_proto::Error::from_request_failure(f, what, timeout));
        }
        if Instant::now() >= deadline {
            waiting(&mut g).remove(&key);
            cancel(&mut g);
            return Err(veltix_proto::Error::TimedOut {
                what,
                after: timeout,
            });
        }
        g = wait_until(cv, g, Some(deadline));
    }
}

/// Waits on `cv` until `deadline` (or a notification); `None` waits without limit.
pub(crate) fn wait_until<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> MutexGuard<'a, T> {
    match deadline {
        None => cv.wait(g).unwrap_or_else(PoisonError::into_inner),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            cv.wait_timeout(g, left.max(Duration::from_micros(1)))
                .unwrap_or_else(PoisonError::into_inner)
                .0
        }
    }
}

/// What a mailbox holds: an application message (given to the mailbox's
/// message handler; dropped on a local teardown) or a lifecycle job
/// (`on_connect`, `on_disconnect`, connect outcomes; always run).
pub(crate) enum Item {
    Message(Frame),
    Job(Job),
}

impl Item {
    /// Its share of the mailbox's byte cap.
    pub(crate) fn cost(&self) -> usize {
        JOB_OVERHEAD
            + match self {
                Item::Message(f) => f.payload.len(),
                Item::Job(_) => 0,
            }
    }
}

#[derive(Default)]
struct MailboxState {
    items: VecDeque<Item>,
    bytes: usize,
    /// Queued on the pool or being run by a worker.
    scheduled: bool,
    /// Went over the cap; call `on_room` when back under it.
    over: bool,
}

/// The serial queue of one peer.
pub(crate) struct Mailbox {
    state: Mutex<MailboxState>,
    cap: usize,
    on_message: Box<dyn Fn(Frame) + Send + Sync>,
    on_room: Box<dyn Fn() + Send + Sync>,
}

impl Mailbox {
    /// A mailbox of `cap` bytes whose messages go to `on_message`;
    /// `on_room` runs (on a worker) when it drains back under the cap
    /// after it was over.
    pub(crate) fn new(
        cap: usize,
        on_message: impl Fn(Frame) + Send + Sync + 'static,
        on_room: impl Fn() + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Mailbox {
            state: Mutex::new(MailboxState::default()),
            cap,
            on_message: Box::new(on_message),
            on_room: Box::new(on_room),
        })
    }

    /// Whether the mailbox is under its cap.
    pub(crate) fn has_room(&self) -> bool {
        let mut st = lock(&self.state);
        let room = st.bytes < self.cap;
        if !room {
            st.over = true;
        }
        room
    }

    /// Bytes left under the cap (0 when full).
    pub(crate) fn room(&self) -> usize {
        let mut st = lock(&self.state);
        let room = self.cap.saturating_sub(st.bytes);
        if room == 0 {
            st.over = true;
        }
        room
    }

    /// Posts an item. Never blocks; the caller checks
    /// [`has_room`](Self::has_room) first.
    pub(crate) fn post(self: &Arc<Self>, pool: &Pool, item: Item) {
        let cost = item.cost();
        let mut st = lock(&self.state);
        st.items.push_back(item);
        st.bytes += cost;
        if st.bytes >= self.cap {
            st.over = true;
        }
        if !st.scheduled {
            st.scheduled = true;
            drop(st);
            pool.schedule(self.clone());
        }
    }

    /// Moves items from `items` to the mailbox while it is under its cap
    /// (one lock); `true` if all of them went.
    pub(crate) fn post_while_room(
        self: &Arc<Self>,
        pool: &Pool,
        items: &mut VecDeque<Item>,
    ) -> bool {
        if items.is_empty() {
            return true;
        }
        let mut st = lock(&self.state);
        while st.bytes < self.cap {
            let Some(item) = items.pop_front() else { break };
            st.bytes += item.cost();
            st.items.push_back(item);
        }
        if st.bytes >= self.cap {
            st.over = true;
        }
        if !st.scheduled && !st.items.is_empty() {
            st.scheduled = true;
            drop(st);
            pool.schedule(self.clone());
        }
        items.is_empty()
    }

    /// Drops the queued messages (not the lifecycle jobs); returns how many.
    pub(crate) fn discard_messages(&self) -> usize {
        let mut st = lock(&self.state);
        let before = st.items.len();
        let mut freed = 0;
        st.items.retain(|i| match i {
            Item::Message(_) => {
                freed += i.cost();
                false
            }
            Item::Job(_) => true,
        });
        st.bytes -= freed;
        before - st.items.len()
    }

    /// Runs at most `max` items (taken in one go); `true` if more are
    /// queued (the mailbox stays scheduled and must be re-queued).
    fn run(&self, max: usize, panics: &AtomicU64) -> bool {
        let (batch, room) = {
            let mut st = lock(&self.state);
            let n = st.items.len().min(max);
            if n == 0 {
                st.scheduled = false;
                return false;
            }
            let batch: Vec<Item> = st.items.drain(..n).collect();
            let freed: usize = batch.iter().map(Item::cost).sum();
            st.bytes -= freed;
            let room = st.over && st.bytes < self.cap;
            if room {
                st.over = false;
            }
            (batch, room)
        };
        if room {
            (self.on_room)();
        }
        for item in batch {
            let r = match item {
                Item::Message(f) => catch_unwind(AssertUnwindSafe(|| (self.on_message)(f))),
                Item::Job(job) => catch_unwind(AssertUnwindSafe(job)),
            };
            if r.is_err() {
                panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!("a callback panicked; the connection goes on");
            }
        }
        let mut st = lock(&self.state);
        if st.items.is_empty() {
            st.scheduled = false;
            false
        } else {
            true
        }
    }
}

#[derive(Default)]
struct PoolState {
    ready: VecDeque<Arc<Mailbox>>,
    stop: bool,
    /// Workers started (or being started).
    spawned: usize,
    /// Workers waiting for a mailbox.
    idle: usize,
}

struct PoolShared {
    state: Mutex<PoolState>,
    cv: Condvar,
    panics: AtomicU64,
}

/// Up to `max` worker threads, started on demand: an idle client or server
/// holds none, and a thread is added only when work waits and every started
/// worker is busy.
pub(crate) struct Pool {
    shared: Arc<PoolShared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    max: usize,
    name: String,
}

impl Pool {
    /// A pool of at most `workers` threads (at least one); none is started yet.
    ///
    /// # Errors
    /// None today (threads start on demand); kept for callers that start
    /// pools where a failure can be reported.
    pub(crate) fn new(workers: usize, name: &str) -> std::io::Result<Pool> {
        let shared = Arc::new(PoolShared {
            state: Mutex::new(PoolState::default()),
            cv: Condvar::new(),
            panics: AtomicU64::new(0),
        });
        Ok(Pool {
            shared,
            workers: Mutex::new(Vec::with_capacity(workers.max(1))),
            max: workers.max(1),
            name: name.to_owned(),
        })
    }

    fn schedule(&self, mb: Arc<Mailbox>) {
        let mut st = lock(&self.shared.state);
        st.ready.push_back(mb);
        let grow = st.idle == 0 && st.spawned < self.max && !st.stop;
        if grow {
            st.spawned += 1;
        }
        drop(st);
        if !grow {
            self.shared.cv.notify_one();
            return;
        }
        let s = self.shared.clone();
        let n = lock(&self.workers).len();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-worker-{n}", self.name))
            .spawn(move || worker(&s));
        match spawned {
            Ok(h) => lock(&self.workers).push(h),
            Err(e) => {
                // The work stays queued for the workers there are; the next
                // job tries again.
                lock(&self.shared.state).spawned -= 1;
                self.shared.cv.notify_one();
                tracing::error!(error = %e, "cannot start a callback worker");
            }
        }
    }

    /// Callbacks that panicked so far.
    #[allow(dead_code)]
    pub(crate) fn panics(&self) -> u64 {
        self.shared.panics.load(Ordering::Relaxed)
    }

    /// Runs what is queued, then stops and joins the workers (except the
    /// calling thread if it is one of them).
    pub(crate) fn shutdown(&self) {
        lock(&self.shared.state).stop = true;
        self.shared.cv.notify_all();
        let me = std::thread::current().id();
        let handles: Vec<_> = lock(&self.workers).drain(..).collect();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Workers finish what is queued and exit; nobody waits for them here.
        lock(&self.shared.state).stop = true;
        self.shared.cv.notify_all();
    }
}

fn worker(shared: &PoolShared) {
    loop {
        let mb = {
            let mut st = lock(&shared.state);
            loop {
                if let Some(mb) = st.ready.pop_front() {
                    break mb;
                }
                if st.stop {
                    return;
                }
                st.idle += 1;
                st = shared.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
                st.idle -= 1;
            }
        };
        while mb.run(JOBS_PER_TURN, &shared.panics) {
            // More queued: back of the line, behind the other peers. When
            // no other mailbox waits, the line is just this one: keep
            // running it without the round trip through the queue and the
            // wake-up of an idle worker.
            let mut st = lock(&shared.state);
            if !st.ready.is_empty() {
                st.ready.push_back(mb);
                drop(st);
                shared.cv.notify_one();
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use veltix_proto::MessageType;

    fn msg(n: u32) -> Item {
        Item::Message(Frame::new(
            MessageType::new(200),
            0,
            n.to_be_bytes().to_vec(),
        ))
    }

    #[test]
    fn items_of_one_mailbox_run_in_order_and_panics_are_contained() {
        let pool = Pool::new(4, "t").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mb = Mailbox::new(
            usize::MAX,
            move |f| {
                let n = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                if n == 500 {
                    panic!("callback bug");
                }
                lock(&s).push(n);
            },
            || {},
        );
        for i in 0..1000 {
            mb.post(&pool, msg(i));
        }
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        mb.post(
            &pool,
            Item::Job(Box::new(move || d.store(1, Ordering::SeqCst))),
        );
        pool.shutdown();
        assert_eq!(done.load(Ordering::SeqCst), 1);
        let seen = lock(&seen);
        let want: Vec<u32> = (0..1000).filter(|&i| i != 500).collect();
        assert_eq!(*seen, want);
        assert_eq!(pool.panics(), 1);
    }

    #[test]
    fn a_flooded_mailbox_does_not_starve_another() {
        let pool = Pool::new(1, "t").unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        // The flood's handler waits at the gate until the other peer posted.
        let gate = Arc::new(Mutex::new(()));
        let closed = lock(&gate);
        let g = gate.clone();
        let flood = Mailbox::new(
            usize::MAX,
            move |_| {
                drop(lock(&g));
                r.fetch_add(1, Ordering::SeqCst);
            },
            || {},
        );
        for i in 0..10_000 {
            flood.post(&pool, msg(i));
        }
        let other_done = Arc::new(AtomicBool::new(false));
        let at = Arc::new(AtomicUsize::new(usize::MAX));
        let other = Mailbox::new(usize::MAX, |_| {}, || {});
        let (r, o, a) = (ran.clone(), other_done.clone(), at.clone());
        other.post(
            &pool,
            Item::Job(Box::new(move || {
                a.store(r.load(Ordering::SeqCst), Ordering::SeqCst);
                o.store(true, Ordering::SeqCst);
            })),
        );
        drop(closed);
        pool.shutdown();
        assert!(other_done.load(Ordering::SeqCst));
        assert!(at.load(Ordering::SeqCst) <= 2 * JOBS_PER_TURN);
        assert_eq!(ran.load(Ordering::SeqCst), 10_000);
    }

    #[test]
    fn byte_cap_reports_room_once_drained_and_discard_keeps_jobs() {
        let pool = Pool::new(1, "t").unwrap();
        let rooms = Arc::new(AtomicUsize::new(0));
        let r = rooms.clone();
        let gate = Arc::new(Mutex::new(()));
        let held = lock(&gate);
        let g = gate.clone();
        let mb = Mailbox::new(
            1000,
            move |_| drop(lock(&g)),
            move || {
                r.fetch_add(1, Ordering::SeqCst);
            },
        );
        let big = || Item::Message(Frame::new(MessageType::new(200), 0, vec![0u8; 500]));
        mb.post(&pool, big());
        // The worker takes the first one and blocks on the gate.
        while lock(&mb.state).items.len() == 1 {
            std::thread::yield_now();
        }
        mb.post(&pool, big());
        mb.post(&pool, big());
        assert!(!mb.has_room());
        let ran = Arc::new(AtomicBool::new(false));
        let r2 = ran.clone();
        mb.post(
            &pool,
            Item::Job(Box::new(move || r2.store(true, Ordering::SeqCst))),
        );
        assert_eq!(mb.discard_messages(), 2);
        assert!(mb.has_room());
        drop(held);
        pool.shutdown();
        assert!(ran.load(Ordering::SeqCst));
        assert_eq!(rooms.load(Ordering::SeqCst), 1, "room reported once");
    }
}
