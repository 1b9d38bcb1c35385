//! Handler queues: events waiting for a peer's handlers, bounded in bytes,
//! drained in order by a task spawned on demand that exits when the queue
//! is empty (idle peers cost no task).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

/// Bytes of queued events (payload + [`EVENT_OVERHEAD`] each) past which the
/// driver stops taking a peer's events (or reading it).
pub(crate) const QUEUE_CAP: usize = 1024 * 1024;
/// Most jobs a dispatch task takes per lock.
const BATCH: usize = 32;
/// About how many bytes of jobs a dispatch task takes per lock.
const BATCH_BYTES: usize = 64 * 1024;
/// Per-event overhead counted against [`QUEUE_CAP`].
pub(crate) const EVENT_OVERHEAD: usize = 64;

/// A boxed handler future.
pub(crate) type BoxFut = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Events waiting for handlers, in order.
pub(crate) struct Mailbox<J> {
    jobs: VecDeque<(J, usize)>,
    bytes: usize,
    /// A dispatch task is draining it.
    pub(crate) running: bool,
    /// The peer's last event was queued: drop the mailbox once drained.
    pub(crate) ended: bool,
}

impl<J> Default for Mailbox<J> {
    fn default() -> Self {
        Mailbox {
            jobs: VecDeque::new(),
            bytes: 0,
            running: false,
            ended: false,
        }
    }
}

impl<J> Mailbox<J> {
    /// Queues a job; `true` when a dispatch task must be spawned.
    pub(crate) fn push(&mut self, job: J, cost: usize) -> bool {
        self.jobs.push_back((job, cost));
        self.bytes += cost;
        !std::mem::replace(&mut self.running, true)
    }

    /// The next jobs (at least one, up to [`BATCH`] and about
    /// [`BATCH_BYTES`]) into `out`, and whether taking them brought the
    /// queue back under its cap. Nothing queued marks the mailbox idle (its
    /// task must exit).
    pub(crate) fn pop_batch(&mut self, out: &mut VecDeque<J>) -> bool {
        let was_over = self.is_over();
        let mut bytes = 0;
        while out.len() < BATCH && (out.is_empty() || bytes < BATCH_BYTES) {
            let Some((job, cost)) = self.jobs.pop_front() else {
                break;
            };
            self.bytes -= cost;
            bytes += cost;
            out.push_back(job);
        }
        if out.is_empty() {
            self.running = false;
        }
        was_over && !self.is_over()
    }

    /// Over its cap: stop feeding it.
    pub(crate) fn is_over(&self) -> bool {
        self.bytes >= QUEUE_CAP
    }

    /// Nothing queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// Events for `recv()`, bounded in bytes like a [`Mailbox`].
pub(crate) struct RecvQueue<E> {
    events: VecDeque<(E, usize)>,
    bytes: usize,
    /// No more events will come: `recv` returns `None` once drained.
    pub(crate) closed: bool,
}

impl<E> Default for RecvQueue<E> {
    fn default() -> Self {
        RecvQueue {
            events: VecDeque::new(),
            bytes: 0,
            closed: false,
        }
    }
}

impl<E> RecvQueue<E> {
    pub(crate) fn push(&mut self, e: E, cost: usize) {
        self.events.push_back((e, cost));
        self.bytes += cost;
    }
    /// The next event, and whether taking it brought the queue under its cap.
    pub(crate) fn pop(&mut self) -> Option<(E, bool)> {
        let (e, cost) = self.events.pop_front()?;
        let was_over = self.is_over();
        self.bytes -= cost;
        Some((e, was_over && !self.is_over()))
    }
    pub(crate) fn is_over(&self) -> bool {
        self.bytes >= QUEUE_CAP
    }
}

/// Runs a handler future, turning a panic into `Err(())` so that one
/// faulty handler does not stop a peer's queue.
pub(crate) struct Catch(pub(crate) BoxFut);

impl Future for Catch {
    type Output = Result<(), ()>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(std::task::Poll::Ready(())) => std::task::Poll::Ready(Ok(())),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}
