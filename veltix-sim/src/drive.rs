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
//! due application timers (in the first round, after the events), and
//! output from every core into its pipe (within the pipe's window,
//! reported written only as the pipe accepts it).
//!
//! `deliver.rs` moves bytes out of the pipes, `links.rs` dials and moves
//! bytes into them.

use std::time::Instant;

use veltix_proto::PeerId;

use crate::app::{ClientLinkEvent, ServerLinkEvent};
use crate::faults::Dir;
use crate::net::{Link, DUE};
use crate::sim::{ClientNode, NodeKind, ServerNode, Sim};
use crate::trace::{EventNote, TraceKind};
use crate::types::NodeId;

mod deliver;
mod links;

/// Steps in a row at one instant before the run fails as a busy loop.
const SPIN_LIMIT: u64 = 100_000;
/// Service rounds in one step before the run fails as a livelock.
const SERVICE_LIMIT: u32 = 100_000;

pub(crate) fn server_of(nodes: &mut [crate::sim::Node], id: NodeId) -> &mut ServerNode {
    match &mut nodes[id.index()].kind {
        NodeKind::Server(s) => s,
        NodeKind::Client(_) => unreachable!("links end at server nodes"),
    }
}

fn server_ref(nodes: &[crate::sim::Node], i: usize) -> &ServerNode {
    match &nodes[i].kind {
        NodeKind::Server(s) => s,
        NodeKind::Client(_) => unreachable!("a server node"),
    }
}

pub(crate) fn client_of(nodes: &mut [crate::sim::Node], id: NodeId) -> &mut ClientNode {
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
        self.refile_timeouts();
        #[cfg(debug_assertions)]
        if self.log.stats.steps % 8 == 0 {
            self.check_indexes();
        }
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        for &i in &self.servers {
            if let Some(x) = server_ref(&self.nodes, i).hub.poll_timeout() {
                at(x);
            }
        }
        if let Some(&(x, _)) = self.timeouts.first() {
            at(x);
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
        // The links' times, earliest first, as far as they can still be
        // the earliest: a pause starts whatever the receiver does; bytes
        // or an EOF count if the receiver reads and no partition cuts
        // the link.
        self.links.refile(now);
        for (x, id, slot) in self.links.wake_times() {
            if t.is_some_and(|t| x >= t) {
                break;
            }
            if slot >= DUE {
                let l = self.links.get(id).expect("filed links are open");
                let dir = Dir::BOTH[usize::from(slot - DUE)];
                let cut = !self.partitions.is_empty() && self.is_partitioned(l.client, l.server);
                if cut || !self.reads(l, dir) {
                    continue;
                }
            }
            t = Some(x);
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
        // In node order, as ever; a node's deadline does not move while
        // another node handles its own.
        self.refile_timeouts();
        let mut due = std::mem::take(&mut self.due_nodes);
        due.clear();
        due.extend(self.servers.iter().copied().filter(|&i| {
            server_ref(&self.nodes, i)
                .hub
                .poll_timeout()
                .is_some_and(|x| x <= t)
        }));
        due.extend(self.timeouts.range(..=(t, usize::MAX)).map(|&(_, i)| i));
        due.sort_unstable();
        for &i in &due {
            match &mut self.nodes[i].kind {
                NodeKind::Server(s) => s.hub.handle_timeout(t),
                NodeKind::Client(c) => {
                    c.session.handle_timeout(t);
                    self.observe_client(i);
                }
            }
        }
        self.due_nodes = due;
        self.service();
        // Links both ends let go of are forgotten.
        self.links.reap();
        true
    }

    /// Checks the step loop's indexes against a full scan (debug builds,
    /// every few steps): a missed update would change the run silently.
    #[cfg(debug_assertions)]
    fn check_indexes(&mut self) {
        self.links.refile(self.log.now);
        self.links.check(self.log.now);
        let mut filed = 0;
        for (i, n) in self.nodes.iter().enumerate() {
            let NodeKind::Client(c) = &n.kind else {
                assert!(
                    self.to_service.contains(&i),
                    "veltix-sim: a server left out of service"
                );
                continue;
            };
            assert_eq!(
                c.timeout,
                c.session.poll_timeout(),
                "veltix-sim: {}'s deadline not refiled",
                n.name
            );
            filed += usize::from(c.timeout.is_some());
            if let Some((id, _)) = c.link.filter(|_| c.session.has_transmit()) {
                assert!(
                    self.links.tx.contains(&id),
                    "veltix-sim: {}'s output not listed",
                    n.name
                );
            }
            assert!(
                !(c.dirty || c.held.is_some()) || self.to_service.contains(&i),
                "veltix-sim: {} left out of service",
                n.name
            );
        }
        assert_eq!(
            filed,
            self.timeouts.len(),
            "veltix-sim: deadline index out of step"
        );
    }

    /// Files the `poll_timeout` of every client called since it was last
    /// filed (the cache is exact again).
    fn refile_timeouts(&mut self) {
        for i in self.stale.drain(..) {
            let NodeKind::Client(c) = &mut self.nodes[i].kind else {
                continue;
            };
            c.stale = false;
            let new = c.session.poll_timeout();
            if new != c.timeout {
                if let Some(old) = c.timeout {
                    self.timeouts.remove(&(old, i));
                }
                if let Some(x) = new {
                    self.timeouts.insert((x, i));
                }
                c.timeout = new;
            }
        }
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

    /// After any call into client `i`'s session: the transport it let go
    /// of is dropped, and its application will be told.
    pub(crate) fn observe_client(&mut self, i: usize) {
        let NodeKind::Client(c) = &mut self.nodes[i].kind else {
            return;
        };
        c.dirty = true;
        if !std::mem::replace(&mut c.stale, true) {
            self.stale.push(i);
        }
        self.to_service.insert(i);
        let Some((id, transport)) = c.link else {
            return;
        };
        // The session may have output for its transport now.
        self.links.tx.insert(id);
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
            // Every server, and the clients in `to_service`, in node order
            // (read afresh after each node).
            let mut next = 0;
            while let Some(&i) = self.to_service.range(next..).next() {
                next = i + 1;
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
                        let c = client_of(&mut self.nodes, NodeId::from_index(i));
                        if !c.dirty && c.held.is_none() {
                            self.to_service.remove(&i);
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
}
