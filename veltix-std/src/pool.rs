//! The callback pool: `max_workers` threads running per-connection mailboxes.
//!
//! Each connection owns a [`Mailbox`]: jobs posted to it run one after the
//! other, in order, on whichever worker picks the mailbox up, so callbacks of
//! one peer are serial while different peers run in parallel. A mailbox holds
//! at most [`MAILBOX_CAP`] jobs; posting to a full one blocks the poster (the
//! connection's reader), which stops reading and lets TCP push back on the peer.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// Jobs a mailbox holds before its poster blocks.
pub(crate) const MAILBOX_CAP: usize = 256;

pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

/// Locks a mutex, ignoring poisoning: every critical section in this crate
/// leaves its data consistent (callbacks never run under a lock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g).unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct MailboxState {
    jobs: VecDeque<Job>,
    /// Queued on the pool or being run by a worker.
    scheduled: bool,
    closed: bool,
}

/// The serial job queue of one connection.
#[derive(Default)]
pub(crate) struct Mailbox {
    state: Mutex<MailboxState>,
    space: Condvar,
}

impl Mailbox {
    /// Posts a job; blocks while the mailbox is full. Jobs posted after
    /// `close` are dropped.
    pub(crate) fn post(self: &Arc<Self>, pool: &Pool, job: Job) {
        let mut st = lock(&self.state);
        while st.jobs.len() >= MAILBOX_CAP && !st.closed {
            st = wait(&self.space, st);
        }
        if st.closed {
            return;
        }
        st.jobs.push_back(job);
        if !st.scheduled {
            st.scheduled = true;
            drop(st);
            pool.schedule(self.clone());
        }
    }

    /// Stops accepting jobs (those queued still run) and wakes blocked posters.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.space.notify_all();
    }

    /// Runs queued jobs until the mailbox is empty.
    fn run(&self, panics: &AtomicU64) {
        loop {
            let job = {
                let mut st = lock(&self.state);
                match st.jobs.pop_front() {
                    Some(j) => j,
                    None => {
                        st.scheduled = false;
                        return;
                    }
                }
            };
            self.space.notify_one();
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!("a callback panicked; the connection goes on");
            }
        }
    }
}

#[derive(Default)]
struct PoolState {
    ready: VecDeque<Arc<Mailbox>>,
    stop: bool,
}

struct PoolShared {
    state: Mutex<PoolState>,
    cv: Condvar,
    panics: Arc<AtomicU64>,
}

/// Runs user callbacks one at a time, catching and counting panics, so one
/// failing callback never takes the others (or the connection) down.
#[derive(Clone)]
pub(crate) struct Guard(Arc<AtomicU64>);

impl Guard {
    pub(crate) fn call(&self, what: &str, f: impl FnOnce()) {
        if catch_unwind(AssertUnwindSafe(f)).is_err() {
            self.0.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                callback = what,
                "a callback panicked; the connection goes on"
            );
        }
    }
}

/// A fixed set of worker threads.
pub(crate) struct Pool {
    shared: Arc<PoolShared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Pool {
    pub(crate) fn new(workers: usize, name: &str) -> std::io::Result<Pool> {
        let shared = Arc::new(PoolShared {
            state: Mutex::new(PoolState::default()),
            cv: Condvar::new(),
            panics: Arc::new(AtomicU64::new(0)),
        });
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers.max(1) {
            let s = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{name}-worker-{i}"))
                    .spawn(move || worker(&s))?,
            );
        }
        Ok(Pool {
            shared,
            workers: Mutex::new(handles),
        })
    }

    fn schedule(&self, mb: Arc<Mailbox>) {
        lock(&self.shared.state).ready.push_back(mb);
        self.shared.cv.notify_one();
    }

    /// A guard counting into this pool's panic counter.
    pub(crate) fn guard(&self) -> Guard {
        Guard(self.shared.panics.clone())
    }

    /// Callbacks that panicked so far.
    pub(crate) fn panics(&self) -> u64 {
        self.shared.panics.load(Ordering::Relaxed)
    }

    /// Runs what is queued, then stops and joins the workers (except the
    /// calling thread if it is one of them).
    pub(crate) fn shutdown(&self) {
        lock(&self.shared.state).stop = true;
        self.shared.cv.notify_all();
        let me = std::thread::current().id();
        for h in lock(&self.workers).drain(..) {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
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
                st = wait(&shared.cv, st);
            }
        };
        mb.run(&shared.panics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn jobs_of_one_mailbox_run_in_order_and_panics_are_contained() {
        let pool = Pool::new(4, "t").unwrap();
        let mb = Arc::new(Mailbox::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        for i in 0..1000 {
            let seen = seen.clone();
            mb.post(
                &pool,
                Box::new(move || {
                    if i == 500 {
                        panic!("callback bug");
                    }
                    lock(&seen).push(i);
                }),
            );
        }
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        mb.post(&pool, Box::new(move || d.store(1, Ordering::SeqCst)));
        pool.shutdown();
        assert_eq!(done.load(Ordering::SeqCst), 1);
        let seen = lock(&seen);
        let want: Vec<i32> = (0..1000).filter(|&i| i != 500).collect();
        assert_eq!(*seen, want);
        assert_eq!(pool.panics(), 1);
    }
}
