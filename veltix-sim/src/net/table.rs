//! The open links, with an index of when each next needs the step loop
//! (so a step looks at the links that have something due, not at all of
//! them) and of which may have output to move.
//!
//! The index stays exact because every mutable access to a link goes
//! through [`Links`], which marks the link touched; touched links are
//! filed again (their times recomputed) by [`Links::refile`] before the
//! index is read.

use std::collections::BTreeSet;
use std::time::Instant;

use super::Link;
use crate::faults::Dir;
use crate::types::LinkId;

/// Slot of a reading pause's start; plus [`Dir::index`].
pub(crate) const PAUSE: u8 = 0;
/// Slot of bytes (or an EOF) the receiver could read; plus [`Dir::index`].
pub(crate) const DUE: u8 = 2;

/// What [`Links`] filed about one link.
#[derive(Debug, Default)]
pub(crate) struct Filed {
    /// The link's wake times, by slot.
    keys: [Option<Instant>; 4],
    /// Handed out mutably since it was last filed.
    touched: bool,
}

/// The open links, in id order (ids only grow, so pushing keeps the order).
#[derive(Debug, Default)]
pub(crate) struct Links {
    list: Vec<Link>,
    touched: Vec<LinkId>,
    /// (time, link, slot) for every wake time of every link.
    wake: BTreeSet<(Instant, LinkId, u8)>,
    /// Links that may have output to move: opened, named by their hub,
    /// their client's session called, or holding bytes (`Sim::transmit`).
    pub tx: BTreeSet<LinkId>,
    /// A link both ends let go of was filed (see [`reap`](Self::reap)).
    reap: bool,
}

/// A link's wake times: when a reading pause starts (any link not reset),
/// and when its receiver could read bytes or an EOF (the step wakes for
/// those only if the receiver reads and no partition cuts the link). An
/// EOF not held back by a pause is due `now` (any time not later than the
/// next step does).
fn wake_times(l: &Link, now: Instant) -> [Option<Instant>; 4] {
    let mut keys = [None; 4];
    if l.dead {
        return keys;
    }
    for dir in Dir::BOTH {
        let d = dir.index();
        let p = &l.pipes[d];
        keys[PAUSE as usize + d] = p.pause_at;
        keys[DUE as usize + d] = p
            .readable_at()
            .or_else(|| (l.sender_gone(dir) && !l.eof[d]).then(|| p.paused_until.unwrap_or(now)));
    }
    keys
}

impl Links {
    pub fn len(&self) -> usize {
        self.list.len()
    }
    pub fn index(&self, id: LinkId) -> Option<usize> {
        self.list.binary_search_by_key(&id, |l| l.id).ok()
    }
    pub fn get(&self, id: LinkId) -> Option<&Link> {
        self.index(id).map(|i| &self.list[i])
    }
    pub fn get_mut(&mut self, id: LinkId) -> Option<&mut Link> {
        let i = self.index(id)?;
        Some(self.at_mut(i))
    }
    pub fn at(&self, i: usize) -> &Link {
        &self.list[i]
    }
    pub fn at_mut(&mut self, i: usize) -> &mut Link {
        let l = &mut self.list[i];
        if !l.filed.touched {
            l.filed.touched = true;
            self.touched.push(l.id);
        }
        l
    }
    pub fn iter(&self) -> std::slice::Iter<'_, Link> {
        self.list.iter()
    }
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, Link> {
        for l in &mut self.list {
            if !l.filed.touched {
                l.filed.touched = true;
                self.touched.push(l.id);
            }
        }
        self.list.iter_mut()
    }
    pub fn push(&mut self, mut link: Link) {
        debug_assert!(self.list.last().is_none_or(|l| l.id < link.id));
        link.filed = Filed {
            keys: [None; 4],
            touched: true,
        };
        self.touched.push(link.id);
        self.tx.insert(link.id);
        self.list.push(link);
    }
    /// Forgets the links both ends let go of (only a touched link can have
    /// become one, so the list is gone through only when one was seen).
    pub fn reap(&mut self) {
        let done = |l: &Link| l.server_gone && l.client_gone;
        if !std::mem::take(&mut self.reap)
            && !self
                .touched
                .iter()
                .any(|&id| self.get(id).is_some_and(done))
        {
            return;
        }
        let (wake, tx) = (&mut self.wake, &mut self.tx);
        self.list.retain(|l| {
            let keep = !(l.server_gone && l.client_gone);
            if !keep {
                for (slot, key) in l.filed.keys.iter().enumerate() {
                    if let Some(t) = *key {
                        wake.remove(&(t, l.id, slot as u8));
                    }
                }
                tx.remove(&l.id);
            }
            keep
        });
    }

    /// Files the links touched since the last call again.
    pub fn refile(&mut self, now: Instant) {
        if self.touched.is_empty() {
            return;
        }
        let mut touched = std::mem::take(&mut self.touched);
        for id in touched.drain(..) {
            let Some(i) = self.index(id) else {
                continue; // forgotten (its times went with it)
            };
            let l = &mut self.list[i];
            l.filed.touched = false;
            self.reap |= l.server_gone && l.client_gone;
            let keys = wake_times(l, now);
            if keys == l.filed.keys {
                continue;
            }
            for (slot, (old, new)) in l.filed.keys.iter().zip(&keys).enumerate() {
                if old != new {
                    if let Some(t) = *old {
                        self.wake.remove(&(t, id, slot as u8));
                    }
                    if let Some(t) = *new {
                        self.wake.insert((t, id, slot as u8));
                    }
                }
            }
            l.filed.keys = keys;
        }
        self.touched = touched;
    }

    /// Checks the index against the links (debug builds): every link
    /// filed as it is now, every link with output to move in `tx`.
    #[cfg(debug_assertions)]
    pub fn check(&self, now: Instant) {
        for l in &self.list {
            if l.filed.touched {
                continue;
            }
            let fresh = wake_times(l, now);
            for (slot, (filed, fresh)) in l.filed.keys.iter().zip(&fresh).enumerate() {
                // An EOF due "now" was filed at the time it was filed.
                let d = slot % 2;
                let eof_now = slot >= DUE as usize
                    && l.pipes[d].segments.is_empty()
                    && l.pipes[d].paused_until.is_none()
                    && filed.is_some_and(|t| t <= now);
                assert!(
                    filed == fresh || eof_now && fresh.is_some(),
                    "veltix-sim: {} filed with stale wake times",
                    l.id
                );
                assert!(
                    filed.is_none_or(|t| self.wake.contains(&(t, l.id, slot as u8))),
                    "veltix-sim: {} missing from the wake index",
                    l.id
                );
            }
            let holds =
                l.tx_ready || l.refusal.is_some() || !l.held[0].is_empty() || !l.held[1].is_empty();
            assert!(
                l.dead || !holds || self.tx.contains(&l.id),
                "veltix-sim: {} has output to move and is not listed",
                l.id
            );
        }
        let filed: usize = self
            .list
            .iter()
            .map(|l| l.filed.keys.iter().flatten().count())
            .sum();
        assert_eq!(filed, self.wake.len(), "veltix-sim: wake index out of step");
    }

    /// Every filed wake time, earliest first (call [`refile`](Self::refile) first).
    pub fn wake_times(&self) -> impl Iterator<Item = (Instant, LinkId, u8)> + '_ {
        self.wake.iter().copied()
    }

    /// The links with a wake time at or before `now`, in id order (call
    /// [`refile`](Self::refile) first).
    pub fn due_by(&self, now: Instant, out: &mut Vec<LinkId>) {
        out.clear();
        out.extend(
            self.wake
                .range(..=(now, LinkId(u64::MAX), u8::MAX))
                .map(|&(_, id, _)| id),
        );
        out.sort_unstable();
        out.dedup();
    }
}
