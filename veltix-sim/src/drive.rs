//! The drivers: how the simulation moves bytes, time and events between the
//! links, the cores and the applications, following the core's calling
//! contract (see `veltix_proto`'s crate docs).
//!
//! A step: time jumps to the earliest of the pipes' next arrivals (for
//! receivers that read), the cores' `poll_timeout`s, the applications'
//! timers and the partitions' schedule; due bytes are read (coalesced,
//! then handed over in random chunks), EOFs and resets delivered, every
//! core's deadlines fired; then the nodes are serviced until nothing moves:
//! transport notices, hub and session events to the applications, dials,
//! and output from every core into its pipe (within the pipe's window,
//! reported written only as the pipe accepts it). Application timers fire
//! last, followed by another service round.

use std::io;
use std::time::Instant;

use veltix_proto::{Error, PeerId};

use crate::app::{ClientLinkEvent, ServerLinkEvent};
use crate::ctx::PeerLink;
use crate::faults::Dir;
use crate::net::{offset, HeldDial, Link, Pipe};
use crate::rng::SimRng;
use crate::sim::{ClientNode, NodeKind, ServerNode, Sim, STREAM_LINK};
use crate::trace::{EventNote, TraceKind};
use crate::types::{LinkId, NodeId};

/// Steps in a row at one instant before the run fails as a busy loop.
const SPIN_LIMIT: u64 = 100_000;
/// Service rounds in one step before the run fails as a livelock.
const SERVICE_LIMIT: u32 = 100_000;

fn server_of(nodes: &mut [crate::sim::Node], id: NodeId) -> &mut ServerNode {
    match &mut nodes[id.index()].kind {
        NodeKind::Server(s) => s,
        NodeKind::Client(_) => unreachable!("links end at server nodes"),
    }
}

fn client_of(nodes: &mut [crate::sim::Node], id: NodeId) -> &mut ClientNode {
    match &mut nodes[id.index()].kind {
        NodeKind::Client(c) => c,
        NodeKind::Server(_) => unreachable!("links start at client nodes"),
    }
}

impl Sim {
    fn client_ref(&self, id: NodeId) -> &ClientNode {
        match &self.nodes[id.index()].kind {
            NodeKind::Client(c) => c,
            NodeKind::Server(_) => unreachable!("links start at client nodes"),
        }
    }

    fn server_ref(&self, id: NodeId) -> &ServerNode {
        match &self.nodes[id.index()].kind {
            NodeKind::Server(s) => s,
            NodeKind::Client(_) => unreachable!("links end at server nodes"),
        }
    }

    /// Whether the receiver of `dir` reads now: it has its transport and
    /// its core wants input.
    fn reads(&self, l: &Link, dir: Dir) -> bool {
        match dir {
            Dir::ToServer => {
                !l.server_gone
                    && l.peer
                        .is_some_and(|p| self.server_ref(l.server).hub.wants_input(p))
            }
            Dir::ToClient => {
                let s = &self.client_ref(l.client).session;
                !l.client_gone && s.transport() == Some(l.transport) && s.wants_input()
            }
        }
    }

    /// When the next thing is due (`None`: nothing is scheduled).
    pub(crate) fn next_wakeup(&mut self) -> Option<Instant> {
        let now = self.log.now;
        if self.unstarted || self.service_due || !self.notices.is_empty() {
            return Some(now);
        }
        for n in &mut self.nodes {
            if let NodeKind::Client(c) = &mut n.kind {
                if std::mem::take(&mut c.stale) {
                    c.timeout = c.session.poll_timeout();
                }
            }
        }
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for l in self.links.iter() {
            if l.dead {
                continue;
            }
            let cut = !self.partitions.is_empty() && self.is_partitioned(l.client, l.server);
            for dir in Dir::BOTH {
                let p = &l.pipes[dir.index()];
                if let Some(x) = p.pause_at {
                    at(x);
                }
                // Bytes to read, or EOF to read once the pipe drained.
                let due = p.readable_at().or_else(|| {
                    (l.sender_gone(dir) && !l.eof[dir.index()])
                        .then(|| p.paused_until.unwrap_or(now))
                });
                if let Some(x) = due {
                    if !cut && self.reads(l, dir) {
                        at(x);
                    }
                }
            }
        }
        for n in &self.nodes {
            let x = match &n.kind {
                NodeKind::Server(s) => s.hub.poll_timeout(),
                NodeKind::Client(c) => c.timeout,
            };
            if let Some(x) = x {
                at(x);
            }
        }
        if let Some(x) = self.timers.next() {
            at(x);
        }
        for ps in &self.partitions {
            let from = ps.p.from.unwrap_or(now);
            if !ps.active && from > now {
                at(from);
            }
            if let Some(u) = ps.p.until {
                if ps.active || from <= now && u > now {
                    at(u);
                }
            }
        }
        t.map(|t| t.max(now))
    }

    /// One step at the next time due, unless that is past `limit` (then
    /// the clock moves to `limit`). Returns whether a step was taken.
    pub(crate) fn advance(&mut self, limit: Option<Instant>) -> bool {
        let now = self.log.now;
        let t = match (self.next_wakeup(), limit) {
            (Some(t), Some(l)) if t > l => {
                self.log.now = now.max(l);
                return false;
            }
            (Some(t), _) => t,
            (None, Some(l)) => {
                self.log.now = now.max(l);
                return false;
            }
            (None, None) => return false,
        };
        self.log.stats.steps += 1;
        if t > now {
            self.same_instant = 0;
        } else {
            self.same_instant += 1;
            if self.same_instant > SPIN_LIMIT {
                self.log.fail(&format_args!(
                    "virtual time stopped: {SPIN_LIMIT} steps in a row at one instant (a busy loop)"
                ));
            }
        }
        self.log.now = t;
        self.service_due = false;
        self.update_partitions();
        self.deliver();
        // Deadlines due now (calling `handle_timeout` early is harmless, so
        // only due ones are called).
        for i in 0..self.nodes.len() {
            match &mut self.nodes[i].kind {
                NodeKind::Server(s) => {
                    if s.hub.poll_timeout().is_some_and(|x| x <= t) {
                        s.hub.handle_timeout(t);
                    }
                }
                NodeKind::Client(c) => {
                    let due = if c.stale {
                        c.session.poll_timeout()
                    } else {
                        c.timeout
                    };
                    if due.is_some_and(|x| x <= t) {
                        c.session.handle_timeout(t);
                        self.observe_client(i);
                    }
                }
            }
        }
        self.service();
        // Links both ends let go of are forgotten.
        self.links.retain(|l| !(l.server_gone && l.client_gone));
        true
    }

    fn update_partitions(&mut self) {
        let now = self.log.now;
        for i in 0..self.partitions.len() {
            let ps = &mut self.partitions[i];
            let should = ps.p.from.is_none_or(|f| f <= now) && ps.p.until.is_none_or(|u| now < u);
            if should != ps.active {
                ps.active = should;
                let kind = if should {
                    TraceKind::Partitioned(ps.id)
                } else {
                    TraceKind::Healed(ps.id)
                };
                self.log.record(None, kind);
            }
        }
    }

    // ------------------------------------------------------------ delivery

    /// Reads due bytes (for receivers that read), hands over EOFs, applies
    /// resets and flipped bits. (No link opens or goes during delivery, so
    /// indexes are stable.)
    fn deliver(&mut self) {
        for li in 0..self.links.len() {
            for dir in Dir::BOTH {
                if !self.deliver_pipe(li, dir) {
                    break;
                }
            }
        }
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

    /// After any call into client `i`'s session: the transport it let go
    /// of is dropped, and its application will be told.
    pub(crate) fn observe_client(&mut self, i: usize) {
        let NodeKind::Client(c) = &mut self.nodes[i].kind else {
            return;
        };
        c.dirty = true;
        c.stale = true;
        let Some((id, transport)) = c.link else {
            return;
        };
        if c.session.transport() == Some(transport) {
            return;
        }
        c.link = None;
        let Some(l) = self.links.get_mut(id) else {
            self.log
                .fail(&format_args!("{id} vanished under its client"));
        };
        l.client_gone = true;
        l.held[0].clear();
        let info = l.info();
        self.log
            .record(Some(NodeId::from_index(i)), TraceKind::Dropped { link: id });
        self.notices.push_back((i, id, info));
    }

    // ------------------------------------------------------------- service

    /// Services every node until nothing moves at this instant; due
    /// application timers fire in the first round, after the events.
    fn service(&mut self) {
        let mut rounds = 0;
        let mut timers = true;
        loop {
            rounds += 1;
            if rounds > SERVICE_LIMIT {
                self.log.fail(&format_args!(
                    "the nodes kept each other busy for {SERVICE_LIMIT} rounds at one instant"
                ));
            }
            let mut progress = false;
            if self.unstarted {
                self.start_nodes();
                progress = true;
            }
            while let Some((i, link, info)) = self.notices.pop_front() {
                progress = true;
                self.call_client(i, |app, ctx| {
                    app.on_link(ctx, ClientLinkEvent::Dropped { link, info });
                });
            }
            for i in 0..self.nodes.len() {
                match &mut self.nodes[i].kind {
                    NodeKind::Server(_) => progress |= self.server_events(i),
                    NodeKind::Client(c) => {
                        // Only sessions called since they were last
                        // serviced can have events or a dial due (and those
                        // whose dial a partition holds).
                        if std::mem::take(&mut c.dirty) || c.held.is_some() {
                            progress |= self.client_events(i);
                            progress |= self.dial(i);
                        }
                    }
                }
            }
            if std::mem::take(&mut timers) {
                progress |= self.fire_timers();
            }
            progress |= self.transmit();
            if !progress && self.notices.is_empty() {
                return;
            }
        }
    }

    fn start_nodes(&mut self) {
        self.unstarted = false;
        for i in 0..self.nodes.len() {
            if self.nodes[i].started {
                continue;
            }
            self.nodes[i].started = true;
            self.log
                .record(Some(NodeId::from_index(i)), TraceKind::Started);
            if matches!(self.nodes[i].kind, NodeKind::Server(_)) {
                self.call_server(i, |app, ctx| app.on_start(ctx));
            } else {
                self.call_client(i, |app, ctx| app.on_start(ctx));
            }
        }
    }

    /// Fires due application timers; returns whether any fired.
    fn fire_timers(&mut self) -> bool {
        let now = self.log.now;
        let watermark = self.timers.watermark();
        let mut any = false;
        while let Some((node, tag)) = self.timers.pop_due(now, watermark) {
            any = true;
            self.log.stats.timers += 1;
            self.log.record(Some(node), TraceKind::Timer { tag });
            let i = node.index();
            if matches!(self.nodes[i].kind, NodeKind::Server(_)) {
                self.call_server(i, |app, ctx| app.on_timer(ctx, tag));
            } else {
                self.call_client(i, |app, ctx| app.on_timer(ctx, tag));
            }
        }
        any
    }

    fn server(&mut self, i: usize) -> &mut ServerNode {
        server_of(&mut self.nodes, NodeId::from_index(i))
    }

    /// The hub's events and finished peers, to the application; checks the
    /// hub's bookkeeping against what it reported.
    fn server_events(&mut self, i: usize) -> bool {
        let node = NodeId::from_index(i);
        let mut any = false;
        while let Some((peer, ev)) = self.server(i).hub.poll_event() {
            any = true;
            let s = self.server(i);
            let Some(pl) = s.peers.get_mut(&peer) else {
                self.log.fail(&format_args!(
                    "{}: event for unknown {peer}",
                    self.name(node)
                ));
            };
            let bad = match &ev {
                veltix_proto::HubEvent::Connected(_) if pl.state == 0 => {
                    pl.state = 1;
                    s.connected += 1;
                    None
                }
                veltix_proto::HubEvent::Connected(_) => Some("Connected twice"),
                veltix_proto::HubEvent::Disconnected(_) if pl.state == 1 => {
                    pl.state = 2;
                    s.connected -= 1;
                    if pl.finished {
                        s.peers.remove(&peer);
                    }
                    None
                }
                veltix_proto::HubEvent::Disconnected(_) => {
                    Some("Disconnected without Connected, or twice")
                }
                _ if pl.state == 2 => Some("an event after Disconnected"),
                _ => None,
            };
            if let Some(bad) = bad {
                self.log
                    .fail(&format_args!("{}: {peer}: {bad}", self.name(node)));
            }
            let s = self.server(i);
            if s.hub.connected() != s.connected {
                let (h, c) = (s.hub.connected(), s.connected);
                self.log.fail(&format_args!(
                    "{}: hub.connected() is {h}, {c} peers were reported connected",
                    self.name(node)
                ));
            }
            self.log.record(
                Some(node),
                TraceKind::Hub {
                    peer: peer.as_u64(),
                    event: EventNote::of_hub(&ev),
                },
            );
            self.call_server(i, |app, ctx| app.on_event(ctx, peer, ev));
        }
        while let Some(peer) = self.server(i).hub.poll_finished() {
            any = true;
            self.finish_peer(i, peer);
        }
        let s = self.server(i);
        if s.hub.live() != s.open {
            let (h, o) = (s.hub.live(), s.open);
            self.log.fail(&format_args!(
                "{}: hub.live() is {h}, {o} transports are open",
                self.name(node)
            ));
        }
        any
    }

    fn finish_peer(&mut self, i: usize, peer: PeerId) {
        let node = NodeId::from_index(i);
        let s = self.server(i);
        let open = s.hub.is_open(peer);
        let pl = match s.peers.get_mut(&peer) {
            Some(pl) if !pl.finished && !open => pl,
            _ => self.log.fail(&format_args!(
                "{}: {peer} finished twice, unknown, or still open",
                self.name(node)
            )),
        };
        pl.finished = true;
        s.open -= 1;
        let link = pl.link;
        if pl.state != 1 {
            s.peers.remove(&peer);
        }
        let Some(l) = self.links.get_mut(link) else {
            self.log
                .fail(&format_args!("{link} vanished under its server"));
        };
        l.server_gone = true;
        l.held[1].clear();
        let info = l.info();
        self.log.record(
            Some(node),
            TraceKind::Finished {
                link,
                peer: peer.as_u64(),
            },
        );
        self.call_server(i, |app, ctx| {
            app.on_link(ctx, ServerLinkEvent::Finished { peer, link, info });
        });
    }

    /// The session's events, to the application.
    fn client_events(&mut self, i: usize) -> bool {
        let node = NodeId::from_index(i);
        let mut any = false;
        loop {
            let c = client_of(&mut self.nodes, node);
            let Some(ev) = c.session.poll_event() else {
                break;
            };
            any = true;
            self.log
                .record(Some(node), TraceKind::Session(EventNote::of_session(&ev)));
            self.call_client(i, |app, ctx| app.on_event(ctx, ev));
        }
        any
    }

    // ---------------------------------------------------------------- dial

    /// A dial the session asks for: refused by the network (a fault), held
    /// by a partition, or a new link the server's hub accepts or refuses.
    fn dial(&mut self, i: usize) -> bool {
        let now = self.log.now;
        let node = NodeId::from_index(i);
        let c = client_of(&mut self.nodes, node);
        if let Some(h) = c.held {
            if c.session.transport() != Some(h.transport) {
                c.held = None; // the session gave up on it (its dial deadline)
            } else if !self.is_partitioned(node, h.server) {
                client_of(&mut self.nodes, node).held = None;
                self.open_link(i, h.server, h.transport);
                return true;
            } else {
                return false;
            }
        }
        let c = client_of(&mut self.nodes, node);
        let Some(d) = c.session.poll_dial(now) else {
            return false;
        };
        c.stale = true;
        if let Some((l, _)) = c.link {
            self.log.fail(&format_args!(
                "{}: the session dialled while {l} was still its transport",
                self.name(node)
            ));
        }
        let server = c.server;
        self.log.stats.dials += 1;
        self.log.record(Some(node), TraceKind::Dialing { server });
        self.call_client(i, |app, ctx| {
            app.on_link(ctx, ClientLinkEvent::Dialing { server });
        });
        let config = self.config_between(node, server);
        let c = client_of(&mut self.nodes, node);
        if c.session.transport() != Some(d.transport) {
            return true; // the application stopped it (disconnect, stop_retry)
        }
        let refused = c.net.chance(config.dial_fail);
        if refused && self.faults {
            let error = Error::Refused(format!("{} (veltix-sim)", self.nodes[server.index()].name));
            let c = client_of(&mut self.nodes, node);
            c.session.handle_dial_failed(now, d.transport, error);
            self.log.stats.dial_refusals += 1;
            self.log
                .record(Some(node), TraceKind::DialRefused { server });
            self.call_client(i, |app, ctx| {
                app.on_link(ctx, ClientLinkEvent::DialRefused { server });
            });
            return true;
        }
        if self.is_partitioned(node, server) {
            client_of(&mut self.nodes, node).held = Some(HeldDial {
                transport: d.transport,
                server,
            });
            self.log.stats.dials_held += 1;
            self.log.record(Some(node), TraceKind::DialHeld { server });
            return true;
        }
        self.open_link(i, server, d.transport);
        true
    }

    fn config_between(&self, client: NodeId, server: NodeId) -> crate::faults::LinkConfig {
        self.pair_config
            .get(&(client, server))
            .copied()
            .unwrap_or(self.link_config)
    }

    /// A dial connected: the link opens, the hub accepts or refuses it.
    fn open_link(&mut self, i: usize, server: NodeId, transport: u64) {
        let now = self.log.now;
        let node = NodeId::from_index(i);
        let cfg = self.config_between(node, server);
        let c = client_of(&mut self.nodes, node);
        c.dials += 1;
        let mut rng = SimRng::derive(
            self.log.seed,
            &self.nodes[i].name,
            STREAM_LINK + self.dials_of(i),
        );
        let faults = self.faults;
        let pipes = [
            Pipe::plan(&mut rng, &cfg, now, faults),
            Pipe::plan(&mut rng, &cfg, now, faults),
        ];
        let id = LinkId(self.next_link);
        self.next_link += 1;
        let s = server_of(&mut self.nodes, server);
        let (peer, refusal) = match s.hub.accept(now) {
            Ok(p) => {
                let known = s.peers.insert(
                    p,
                    PeerLink {
                        link: id,
                        client: node,
                        state: 0,
                        finished: false,
                    },
                );
                s.open += 1;
                if known.is_some() {
                    self.log.fail(&format_args!("the hub reused peer id {p}"));
                }
                (Some(p), None)
            }
            Err(r) => {
                self.log.stats.server_full += 1;
                (None, Some(r.bytes))
            }
        };
        self.links.push(Link {
            id,
            client: node,
            server,
            transport,
            opened: now,
            cfg,
            rng,
            pipes,
            held: Default::default(),
            peer,
            refusal,
            client_gone: false,
            server_gone: false,
            eof: [false; 2],
            dead: false,
            tx_ready: true,
        });
        self.log.stats.links += 1;
        let c = client_of(&mut self.nodes, node);
        c.link = Some((id, transport));
        c.session.handle_dialed(now, transport);
        self.log
            .record(Some(node), TraceKind::Opened { link: id, server });
        match peer {
            Some(p) => {
                self.log.record(
                    Some(server),
                    TraceKind::Accepted {
                        link: id,
                        peer: p.as_u64(),
                    },
                );
                self.call_server(server.index(), |app, ctx| {
                    app.on_link(
                        ctx,
                        ServerLinkEvent::Accepted {
                            peer: p,
                            link: id,
                            client: node,
                        },
                    );
                });
            }
            None => {
                self.log
                    .record(Some(server), TraceKind::Refused { link: id });
                self.call_server(server.index(), |app, ctx| {
                    app.on_link(
                        ctx,
                        ServerLinkEvent::Refused {
                            link: id,
                            client: node,
                        },
                    );
                });
            }
        }
        self.call_client(i, |app, ctx| {
            app.on_link(ctx, ClientLinkEvent::Opened { link: id, server });
        });
    }

    fn dials_of(&self, i: usize) -> u64 {
        match &self.nodes[i].kind {
            NodeKind::Client(c) => c.dials,
            NodeKind::Server(_) => 0,
        }
    }

    // ------------------------------------------------------------ transmit

    /// Moves output into pipes: each driver takes what its core gives
    /// (within the transmit window) and reports written only what its pipe
    /// accepts, then takes again, until the pipe is full or the core has
    /// nothing more. Returns whether a transport ended on the way.
    fn transmit(&mut self) -> bool {
        let now = self.log.now;
        let faults = self.faults;
        let mut progress = false;
        let mut observe = std::mem::take(&mut self.observe);
        observe.clear();
        // The peers the hubs gave output since they were last asked.
        for n in &mut self.nodes {
            if let NodeKind::Server(s) = &mut n.kind {
                while let Some(peer) = s.hub.poll_transmit_ready() {
                    if let Some(l) = s.peers.get(&peer).and_then(|p| self.links.get_mut(p.link)) {
                        l.tx_ready = true;
                    }
                }
            }
        }
        for link in self.links.iter_mut() {
            if link.dead {
                continue;
            }
            let id = link.id;
            let server_side = std::mem::take(&mut link.tx_ready)
                || link.refusal.is_some()
                || !link.held[1].is_empty();
            if !link.server_gone && server_side {
                if let Some(r) = link.refusal.take() {
                    link.held[1].push(r);
                }
                let hub = &mut server_of(&mut self.nodes, link.server).hub;
                loop {
                    if let Some(peer) = link.peer {
                        while let Some(b) = hub.poll_transmit(peer) {
                            link.held[1].push(b);
                        }
                    }
                    let n = link
                        .cfg
                        .window
                        .saturating_sub(link.pipes[1].in_flight)
                        .min(link.held[1].len());
                    if n == 0 {
                        break;
                    }
                    let bytes = link.held[1].take(n);
                    self.log.stats.stalls += link.push(Dir::ToClient, now, bytes, faults);
                    self.log.stats.bytes_written += n as u64;
                    self.log.record(
                        Some(link.server),
                        TraceKind::Written {
                            link: id,
                            dir: Dir::ToClient,
                            bytes: n as u32,
                        },
                    );
                    match link.peer {
                        Some(peer) => {
                            hub.handle_written(peer, now, n);
                            if !hub.is_open(peer) {
                                progress = true;
                            }
                        }
                        None => break,
                    }
                }
                match link.peer {
                    // The rejection is written: the server closes the socket.
                    None if link.held[1].is_empty() => link.server_gone = true,
                    Some(peer) if hub.has_transmit(peer) => {
                        self.log.fail(&format_args!(
                            "{peer} on {id}: output left to take after the driver took all it could"
                        ));
                    }
                    _ => {}
                }
            }
            let c = client_of(&mut self.nodes, link.client);
            if link.client_gone
                || c.session.transport() != Some(link.transport)
                || (link.held[0].is_empty() && !c.session.has_transmit())
            {
                continue;
            }
            c.stale = true;
            let mut wrote = false;
            loop {
                while let Some(b) = c.session.poll_transmit() {
                    link.held[0].push(b);
                }
                let n = link
                    .cfg
                    .window
                    .saturating_sub(link.pipes[0].in_flight)
                    .min(link.held[0].len());
                if n == 0 {
                    break;
                }
                let bytes = link.held[0].take(n);
                self.log.stats.stalls += link.push(Dir::ToServer, now, bytes, faults);
                self.log.stats.bytes_written += n as u64;
                self.log.record(
                    Some(link.client),
                    TraceKind::Written {
                        link: id,
                        dir: Dir::ToServer,
                        bytes: n as u32,
                    },
                );
                c.session.handle_written(now, n);
                wrote = true;
                if c.session.transport() != Some(link.transport) {
                    break;
                }
            }
            if c.session.transport() == Some(link.transport) && c.session.has_transmit() {
                self.log.fail(&format_args!(
                    "{} on {id}: output left to take after the driver took all it could",
                    self.nodes[link.client.index()].name
                ));
            }
            if wrote {
                observe.push(link.client.index());
            }
        }
        for &c in &observe {
            let before = self.notices.len();
            self.observe_client(c);
            progress |= self.notices.len() > before;
        }
        self.observe = observe;
        progress
    }
}
