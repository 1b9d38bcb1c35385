//! Links opening and carrying output: dials (refused, held by a
//! partition, or accepted or refused by the hub) and every driver's writes.

use veltix_proto::Error;

use super::{client_of, server_of};
use crate::app::{ClientLinkEvent, ServerLinkEvent};
use crate::ctx::PeerLink;
use crate::faults::Dir;
use crate::net::{HeldDial, Link, Pipe};
use crate::rng::SimRng;
use crate::sim::{NodeKind, Sim, STREAM_LINK};
use crate::trace::TraceKind;
use crate::types::{LinkId, NodeId};

impl Sim {
    /// A dial the session asks for: refused by the network (a fault), held
    /// by a partition, or a new link the server's hub accepts or refuses.
    pub(super) fn dial(&mut self, i: usize) -> bool {
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
        if !std::mem::replace(&mut c.stale, true) {
            self.stale.push(i);
        }
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
            filed: Default::default(),
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

    /// Moves output into pipes: each driver takes what its core gives
    /// (within the transmit window) and reports written only what its pipe
    /// accepts, then takes again, until the pipe is full or the core has
    /// nothing more. Returns whether a transport ended on the way.
    pub(super) fn transmit(&mut self) -> bool {
        let now = self.log.now;
        let faults = self.faults;
        let mut progress = false;
        let mut observe = std::mem::take(&mut self.observe);
        observe.clear();
        // The peers the hubs gave output since they were last asked.
        for &i in &self.servers {
            if let NodeKind::Server(s) = &mut self.nodes[i].kind {
                while let Some(peer) = s.hub.poll_transmit_ready() {
                    let Some(id) = s.peers.get(&peer).map(|p| p.link) else {
                        continue;
                    };
                    if let Some(l) = self.links.get_mut(id) {
                        l.tx_ready = true;
                        self.links.tx.insert(id);
                    }
                }
            }
        }
        // Only links that may have output to move (see `Links::tx`); the
        // others would be passed over below anyway.
        let ready = std::mem::take(&mut self.links.tx);
        for &id in &ready {
            let Some(li) = self.links.index(id) else {
                continue;
            };
            let link = self.links.at_mut(li);
            if link.dead {
                continue;
            }
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
            if !link.held[0].is_empty() || !link.held[1].is_empty() || link.refusal.is_some() {
                self.links.tx.insert(id);
            }
            let link = self.links.at_mut(li);
            let c = client_of(&mut self.nodes, link.client);
            if link.client_gone
                || c.session.transport() != Some(link.transport)
                || (link.held[0].is_empty() && !c.session.has_transmit())
            {
                continue;
            }
            if !std::mem::replace(&mut c.stale, true) {
                self.stale.push(link.client.index());
            }
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
            let (held, client) = (!link.held[0].is_empty(), link.client);
            if held {
                self.links.tx.insert(id);
            }
            if wrote {
                observe.push(client.index());
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
