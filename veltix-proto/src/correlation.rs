//! Request ids and the pending-request table (spec §4).
//!
//! A request id is a `u16` chosen by the sender; a reply copies it. Clients
//! allocate from `[0, 32768)`, servers from `[32768, 32768 + window)`, so
//! the two directions never collide. Ids that are still pending are skipped;
//! when every id of the window is pending, allocation fails with
//! [`IdsExhausted`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::handshake::Side;

/// First id of the server half.
pub const SERVER_ID_BASE: u16 = 32_768;
/// Size of the client half, and the largest server window.
pub const MAX_ID_WINDOW: u16 = 32_768;
/// Veltix's default server `id_window`.
pub const DEFAULT_ID_WINDOW: u16 = 30_000;

/// Every id of the window is waiting for a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {window} request ids are pending")]
pub struct IdsExhausted {
    /// Size of the exhausted window.
    pub window: u16,
}

/// The sequential id allocator of one side.
///
/// ```
/// use veltix_proto::correlation::IdAllocator;
/// let mut ids = IdAllocator::server(3);
/// let pending = |id: u16| id == 32_769;
/// assert_eq!(ids.allocate(pending).unwrap(), 32_768);
/// assert_eq!(ids.allocate(pending).unwrap(), 32_770); // 32_769 is pending: skipped
/// assert_eq!(ids.allocate(pending).unwrap(), 32_768); // wrapped
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdAllocator {
    base: u16,
    window: u16,
    counter: u16,
}

impl IdAllocator {
    /// The client allocator: `[0, 32768)`, first id 0.
    pub fn client() -> Self {
        IdAllocator {
            base: 0,
            window: MAX_ID_WINDOW,
            counter: 0,
        }
    }

    /// A server allocator: `[32768, 32768 + min(window, 32768))`, first id 32768.
    /// A window of 0 is treated as 1.
    pub fn server(window: u16) -> Self {
        IdAllocator {
            base: SERVER_ID_BASE,
            window: window.clamp(1, MAX_ID_WINDOW),
            counter: 0,
        }
    }

    /// The allocator for `side` (`window` only matters for a server).
    pub fn for_side(side: Side, window: u16) -> Self {
        match side {
            Side::Client => Self::client(),
            Side::Server => Self::server(window),
        }
    }

    /// Number of ids in the window.
    pub fn window(&self) -> u16 {
        self.window
    }

    /// Whether `id` lies in this allocator's range.
    pub fn contains(&self, id: u16) -> bool {
        id.wrapping_sub(self.base) < self.window
    }

    /// The next id that `is_pending` does not claim.
    ///
    /// # Errors
    /// [`IdsExhausted`] when every id of the window is pending.
    pub fn allocate(&mut self, is_pending: impl Fn(u16) -> bool) -> Result<u16, IdsExhausted> {
        for _ in 0..self.window {
            let id = self.base.wrapping_add(self.counter);
            self.counter = if self.counter + 1 >= self.window {
                0
            } else {
                self.counter + 1
            };
            if !is_pending(id) {
                return Ok(id);
            }
        }
        Err(IdsExhausted {
            window: self.window,
        })
    }
}

/// What a pending request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum RequestKind {
    /// A request made with `request`: its reply becomes a `Response` event.
    Request,
    /// A PING made with `ping`: its reply becomes a `Pong` event with the RTT.
    Ping,
}

/// One outstanding request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// What it waits for.
    pub kind: RequestKind,
    /// When it was sent (for the RTT).
    pub sent_at: Instant,
    /// When it fails if no reply came.
    pub deadline: Instant,
}

/// Outstanding requests keyed by id, with their deadlines in order.
///
/// Each entry leaves the table exactly once: by [`resolve`](Self::resolve),
/// [`expire`](Self::expire) or [`drain`](Self::drain).
#[derive(Debug, Clone, Default)]
pub struct PendingRequests {
    by_id: BTreeMap<u16, Pending>,
    deadlines: BTreeSet<(Instant, u16)>,
}

impl PendingRequests {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of outstanding requests.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether nothing is outstanding.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether `id` is outstanding.
    pub fn contains(&self, id: u16) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Registers a request sent at `now` that fails after `timeout`.
    /// Returns `false` (and changes nothing) if `id` is already pending.
    pub fn insert(&mut self, id: u16, kind: RequestKind, now: Instant, timeout: Duration) -> bool {
        if self.by_id.contains_key(&id) {
            return false;
        }
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        self.by_id.insert(
            id,
            Pending {
                kind,
                sent_at: now,
                deadline,
            },
        );
        self.deadlines.insert((deadline, id));
        true
    }

    /// Removes and returns the request answered by a frame carrying `id`.
    pub fn resolve(&mut self, id: u16) -> Option<Pending> {
        let p = self.by_id.remove(&id)?;
        self.deadlines.remove(&(p.deadline, id));
        Some(p)
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(d, _)| d)
    }

    /// Removes and returns the next request whose deadline is `<= now`.
    pub fn expire(&mut self, now: Instant) -> Option<(u16, Pending)> {
        let &(deadline, id) = self.deadlines.first()?;
        if deadline > now {
            return None;
        }
        self.deadlines.pop_first();
        let p = self.by_id.remove(&id)?;
        Some((id, p))
    }

    /// Removes everything, in id order.
    pub fn drain(&mut self) -> impl Iterator<Item = (u16, Pending)> {
        self.deadlines.clear();
        std::mem::take(&mut self.by_id).into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_start_at_zero_and_wrap() {
        let mut a = IdAllocator::client();
        assert_eq!(a.allocate(|_| false).unwrap(), 0);
        assert_eq!(a.allocate(|_| false).unwrap(), 1);
        for _ in 2..32_768 {
            a.allocate(|_| false).unwrap();
        }
        assert_eq!(a.allocate(|_| false).unwrap(), 0);
    }

    #[test]
    fn server_default_window_range() {
        let mut a = IdAllocator::server(DEFAULT_ID_WINDOW);
        let first = a.allocate(|_| false).unwrap();
        assert_eq!(first, 32_768);
        let mut last = first;
        for _ in 1..30_000 {
            last = a.allocate(|_| false).unwrap();
        }
        assert_eq!(last, 62_767);
        assert_eq!(a.allocate(|_| false).unwrap(), 32_768);
        assert!(a.contains(62_767) && !a.contains(62_768) && !a.contains(0));
    }

    #[test]
    fn big_window_is_capped() {
        let mut a = IdAllocator::server(u16::MAX);
        assert_eq!(a.window(), 32_768);
        for _ in 0..32_767 {
            a.allocate(|_| false).unwrap();
        }
        assert_eq!(a.allocate(|_| false).unwrap(), 65_535);
        assert_eq!(a.allocate(|_| false).unwrap(), 32_768);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut a = IdAllocator::server(4);
        assert_eq!(a.allocate(|_| true), Err(IdsExhausted { window: 4 }));
    }
}
