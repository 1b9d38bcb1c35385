//! Delivery: due bytes to the receivers (coalesced reads handed over in
//! random chunks), EOFs, resets and flipped bits.

use std::io;

use super::{client_of, server_of};
use crate::faults::Dir;
use crate::net::offset;
use crate::sim::Sim;
use crate::trace::TraceKind;

impl Sim {
    /// Reads due bytes (for receivers that read), hands over EOFs, applies
    /// resets and flipped bits. (No link opens or goes during delivery, so
    /// indexes are stable.)
    pub(super) fn deliver(&mut self) {
        // Only links with something due can move (see `net::table`).
        self.links.refile(self.log.now);
        let mut due = std::mem::take(&mut self.due_links);
        self.links.due_by(self.log.now, &mut due);
        for &id in &due {
            let li = self.links.index(id).expect("filed links are open");
            for dir in Dir::BOTH {
                if !self.deliver_pipe(li, dir) {
                    break;
                }
            }
        }
        self.due_links = due;
    }

    /// One direction of one link; false when the link is dead.
    fn deliver_pipe(&mut self, li: usize, dir: Dir) -> bool {
        let now = self.log.now;
        let d = dir.index();
        let l = self.links.at(li);
        if l.dead {
            return false;
        }
        let id = l.id;
        let link = self.links.at_mut(li);
        if let Some(until) = link.start_pause(dir, now) {
            self.log.stats.read_pauses += 1;
            let until = offset(self.log.start, until);
            self.log.record(
                None,
                TraceKind::ReadPause {
                    link: id,
                    dir,
                    until,
                },
            );
        }
        let l = self.links.at(li);
        let pipe = &l.pipes[d];
        let waiting = pipe.paused_until.is_some_and(|t| t > now)
            || (pipe.segments.front().is_none_or(|(t, _)| *t > now)
                && !(pipe.segments.is_empty() && l.sender_gone(dir) && !l.eof[d]));
        if waiting {
            return true;
        }
        let gone = l.receiver_gone(dir);
        if (!gone && !self.reads(l, dir))
            || (!self.partitions.is_empty() && self.is_partitioned(l.client, l.server))
        {
            return true;
        }
        // Every due segment, coalesced into one read.
        let link = self.links.at_mut(li);
        let pipe = &mut link.pipes[d];
        self.scratch.clear();
        while pipe.segments.front().is_some_and(|(t, _)| *t <= now) {
            let (_, seg) = pipe.segments.pop_front().expect("checked");
            pipe.in_flight -= seg.len();
            self.scratch.extend_from_slice(&seg);
        }
        let drained = pipe.segments.is_empty();
        if self.scratch.is_empty() {
            self.maybe_eof(li, dir, drained);
            return true;
        }
        let start = pipe.delivered;
        pipe.delivered += self.scratch.len() as u64;
        let mut reset = None;
        if let Some(at) = pipe.reset_at {
            if at < pipe.delivered {
                self.scratch.truncate(at.saturating_sub(start) as usize);
                reset = Some(at);
            }
        }
        if let Some(at) = pipe.corrupt_at {
            if at >= start && at < start + self.scratch.len() as u64 {
                let bit = link.rng.below(8);
                self.scratch[(at - start) as usize] ^= 1 << bit;
                let pipe = &mut link.pipes[d];
                pipe.corrupt_at = None;
                pipe.corrupted = true;
                self.log.stats.corruptions += 1;
                self.log.record(
                    None,
                    TraceKind::Corrupted {
                        link: id,
                        dir,
                        offset: at,
                    },
                );
            }
        }
        self.log.stats.bytes_read += self.scratch.len() as u64;
        self.log.record(
            None,
            TraceKind::Read {
                link: id,
                dir,
                bytes: self.scratch.len() as u32,
            },
        );
        if !gone {
            self.feed(li, dir);
        }
        if let Some(at) = reset {
            self.log.stats.resets += 1;
            self.log.record(
                None,
                TraceKind::Reset {
                    link: id,
                    dir,
                    offset: at,
                },
            );
            self.kill_link(li);
            return false;
        }
        self.maybe_eof(li, dir, drained);
        true
    }

    /// Hands `scratch` to the receiver of `dir` in random chunks.
    fn feed(&mut self, li: usize, dir: Dir) {
        let now = self.log.now;
        let data = std::mem::take(&mut self.scratch);
        let mut rest = &data[..];
        while !rest.is_empty() {
            let link = self.links.at_mut(li);
            let n = 1 + link.rng.below(rest.len() as u64) as usize;
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let discarded = match dir {
                Dir::ToServer => {
                    let Some(peer) = link.peer.filter(|_| !link.server_gone) else {
                        break;
                    };
                    let hub = &mut server_of(&mut self.nodes, link.server).hub;
                    hub.handle_input(peer, now, chunk);
                    hub.peer_stats(peer).map(|s| s.decoder.discarded_bytes)
                }
                Dir::ToClient => {
                    let c = client_of(&mut self.nodes, link.client);
                    if link.client_gone || c.session.transport() != Some(link.transport) {
                        break;
                    }
                    c.session.handle_input(now, chunk);
                    c.session.stats().map(|s| s.decoder.discarded_bytes)
                }
            };
            let pipe = &mut link.pipes[dir.index()];
            if let Some(d) = discarded.filter(|&d| d > pipe.discarded) {
                self.log.stats.discarded_bytes += d - pipe.discarded;
                pipe.discarded = d;
            }
            if dir == Dir::ToClient {
                let c = link.client.index();
                self.observe_client(c);
            }
        }
        self.scratch = data;
    }

    /// The sender of `dir` dropped its transport and everything it wrote
    /// arrived: the receiver reads EOF.
    fn maybe_eof(&mut self, li: usize, dir: Dir, drained: bool) {
        let now = self.log.now;
        let l = self.links.at_mut(li);
        let d = dir.index();
        if !drained || l.dead || !l.sender_gone(dir) || l.eof[d] || l.receiver_gone(dir) {
            return;
        }
        l.eof[d] = true;
        let id = l.id;
        self.log.record(None, TraceKind::Eof { link: id, dir });
        match dir {
            Dir::ToServer => {
                if let Some(peer) = l.peer {
                    server_of(&mut self.nodes, l.server)
                        .hub
                        .handle_eof(peer, now);
                }
            }
            Dir::ToClient => {
                let c = client_of(&mut self.nodes, l.client);
                if c.session.transport() == Some(l.transport) {
                    c.session.handle_eof(now);
                    let c = l.client.index();
                    self.observe_client(c);
                }
            }
        }
    }

    /// A reset: both ends are told at once.
    fn kill_link(&mut self, li: usize) {
        let now = self.log.now;
        let l = self.links.at_mut(li);
        if l.dead {
            return;
        }
        l.dead = true;
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        if !l.server_gone {
            match l.peer {
                Some(peer) => server_of(&mut self.nodes, l.server)
                    .hub
                    .handle_transport_error(peer, now, &reset),
                None => l.server_gone = true,
            }
        }
        let c = client_of(&mut self.nodes, l.client);
        if !l.client_gone && c.session.transport() == Some(l.transport) {
            c.session.handle_transport_error(now, &reset);
            let c = l.client.index();
            self.observe_client(c);
        }
    }
}
