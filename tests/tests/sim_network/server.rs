//! The test's server application: tags every peer with its client's
//! group, echoes requests, sends messages to each connected peer now and
//! then, broadcasts to a group, to all, to all but one and to a chosen few
//! (handshaking peers named too), and checks the hub's admission and
//! connection bookkeeping against what it reported.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use serde_json::json;
use veltix_proto::{HubEvent, PeerId, Target};
use veltix_sim::{ServerApp, ServerCtx, ServerLinkEvent};

use crate::ledger::{Ledger, GROUPS, MSG, REQ, SIM_SERVICE, SIM_USER};

const BROADCAST: u64 = 1;
/// Tags of per-peer traffic timers: this bit plus the peer's serial.
const PEER: u64 = 1 << 63;

pub struct SimServer {
    ledger: Rc<RefCell<Ledger>>,
}

impl SimServer {
    pub fn new(ledger: Rc<RefCell<Ledger>>) -> Self {
        SimServer { ledger }
    }

    /// Connected peers are exactly those reported `Connected` and not
    /// `Disconnected`; admission never passes `max_connection`.
    fn check_books(&self, ctx: &ServerCtx<'_>) {
        let l = self.ledger.borrow();
        let peers: BTreeSet<PeerId> = ctx.hub().peers().collect();
        if peers != l.connected {
            ctx.fail(format!(
                "hub peers {peers:?} differ from the reported ones {:?}",
                l.connected
            ));
        }
        if ctx.hub().connected() != l.connected.len() {
            ctx.fail("hub.connected() is not the number of connected peers");
        }
        if ctx.hub().live() != l.live {
            ctx.fail(format!(
                "hub counts {} live transports, the network has {}",
                ctx.hub().live(),
                l.live
            ));
        }
        if let Some(m) = l.max_connections {
            if l.live > m {
                ctx.fail(format!("{} live transports, max_connection {m}", l.live));
            }
        }
    }

    /// One message to a connected peer (the server's own traffic).
    fn send_to(&mut self, ctx: &mut ServerCtx<'_>, peer: PeerId) {
        let mut l = self.ledger.borrow_mut();
        let Some(&(link, c)) = l.peer_link.get(&peer) else {
            return;
        };
        let seq = l.seq();
        let filler = if ctx.rng().chance(0.05) {
            ctx.rng().below(20_000) as usize
        } else {
            ctx.rng().below(200) as usize
        };
        let r = ctx.send(peer, MSG, l.payload(1, c, seq, filler));
        l.sent((1, c, seq), link, r.is_err());
    }

    /// One broadcast with a random target; checks it reaches exactly the
    /// connected peers it names.
    fn broadcast(&mut self, ctx: &mut ServerCtx<'_>) {
        let mut l = self.ledger.borrow_mut();
        let connected: Vec<PeerId> = l.connected.iter().copied().collect();
        if connected.is_empty() {
            return;
        }
        let seq = l.seq();
        let filler = ctx.rng().below(300) as usize;
        let group_of = |l: &Ledger, p: PeerId| {
            let c = l.peer_link.get(&p).map_or(0, |&(_, c)| c);
            (c, l.groups[c])
        };
        let pick = connected[ctx.rng().below(connected.len() as u64) as usize];
        // A handshaking peer (or a gone one) named explicitly is never targeted.
        let handshaking: Vec<PeerId> = ctx
            .transports()
            .filter(|p| !l.connected.contains(p))
            .take(2)
            .collect();
        let g = ctx.rng().below(u64::from(GROUPS)) as u8;
        let value = json!(g);
        let kind = ctx.rng().below(4);
        let mut only = vec![pick];
        only.extend(&handshaking);
        if let Some(&other) = connected.get(ctx.rng().below(connected.len() as u64) as usize) {
            only.push(other);
        }
        let expected: BTreeSet<PeerId> = match kind {
            0 => connected.iter().copied().collect(),
            1 => connected.iter().copied().filter(|&p| p != pick).collect(),
            2 => only
                .iter()
                .copied()
                .filter(|p| l.connected.contains(p))
                .collect(),
            _ => connected
                .iter()
                .copied()
                .filter(|&p| group_of(&l, p).1 == g)
                .collect(),
        };
        let target = match kind {
            0 => Target::All,
            1 => Target::Except(std::slice::from_ref(&pick)),
            2 => Target::Only(&only),
            _ => Target::Tag("group", Some(&value)),
        };
        let before: BTreeMap<PeerId, usize> = ctx
            .transports()
            .map(|p| (p, ctx.hub().queued_bytes(p)))
            .collect();
        let p = l.payload(3, usize::from(g), seq, filler);
        let b = match ctx.broadcast(MSG, &p, target) {
            Ok(b) => b,
            Err(e) => ctx.fail(format!("broadcast refused: {e}")),
        };
        let mut got = 0;
        for (peer, q) in before {
            if ctx.hub().queued_bytes(peer) > q {
                if !expected.contains(&peer) {
                    ctx.fail(format!(
                        "broadcast kind {kind} queued for untargeted {peer}"
                    ));
                }
                got += 1;
                let (c, _) = group_of(&l, peer);
                let link = l.peer_link[&peer].0;
                l.sent((3, c, seq), link, false);
            }
        }
        if got != b.sent || b.sent + b.skipped != expected.len() {
            ctx.fail(format!(
                "broadcast kind {kind}: {b:?}, queued on {got}, {} targets",
                expected.len()
            ));
        }
    }
}

impl ServerApp for SimServer {
    fn on_start(&mut self, ctx: &mut ServerCtx<'_>) {
        ctx.set_timer(Duration::from_secs(1), BROADCAST);
    }

    fn on_timer(&mut self, ctx: &mut ServerCtx<'_>, tag: u64) {
        if !self.ledger.borrow().traffic {
            return;
        }
        if tag == BROADCAST {
            let next = Duration::from_millis(200 + ctx.rng().below(1500));
            ctx.set_timer(next, BROADCAST);
            self.check_books(ctx);
            self.broadcast(ctx);
            return;
        }
        let peer = self
            .ledger
            .borrow()
            .peer_by_serial
            .get(&(tag & !PEER))
            .copied();
        if let Some(peer) = peer.filter(|&p| ctx.hub().is_connected(p)) {
            let next = Duration::from_millis(150 + ctx.rng().below(3000));
            ctx.set_timer(next, tag);
            self.send_to(ctx, peer);
        }
    }

    fn on_link(&mut self, ctx: &mut ServerCtx<'_>, event: ServerLinkEvent) {
        let mut l = self.ledger.borrow_mut();
        match event {
            ServerLinkEvent::Accepted { peer, link, client } => {
                let c = client.index() - 1; // node 0 is the server
                if l.peer_link.insert(peer, (link, c)).is_some() {
                    ctx.fail(format!("the hub reused peer id {peer}"));
                }
                l.peer_by_serial.insert(peer.as_u64(), peer);
                l.live += 1;
            }
            ServerLinkEvent::Refused { .. } => l.report.rejections += 1,
            ServerLinkEvent::Finished { peer, link, .. } => {
                if ctx.hub().is_open(peer) {
                    ctx.fail(format!("{peer}: finished but open"));
                }
                l.connection_failed(link);
                l.live -= 1;
                l.peer_by_serial.remove(&peer.as_u64());
                // Other peers may have finished at this instant too and
                // not been named yet: the books are checked elsewhere.
                return;
            }
            _ => {}
        }
        drop(l);
        // At a dial: every peer that finished was named already.
        self.check_books(ctx);
    }

    fn on_event(&mut self, ctx: &mut ServerCtx<'_>, peer: PeerId, event: HubEvent) {
        let mut l = self.ledger.borrow_mut();
        let Some(&(link, c)) = l.peer_link.get(&peer) else {
            ctx.fail(format!("event for unknown peer {peer}"));
        };
        match event {
            HubEvent::Connected(hello) => {
                if !l.ever_connected.insert(peer) {
                    ctx.fail(format!("{peer}: Connected twice"));
                }
                l.connected.insert(peer);
                if l.auth {
                    // Every peer proved who it is: even clients by SCRAM, odd by token.
                    let want = if c % 2 == 0 { SIM_USER } else { SIM_SERVICE };
                    let got = hello.identity().map(|i| i.name.as_str());
                    if got != Some(want) {
                        ctx.fail(format!(
                            "{peer} (client {c}): identity {got:?}, expected {want}"
                        ));
                    }
                    l.report.authenticated += 1;
                }
                let g = l.groups[c];
                match ctx.tags_mut(peer) {
                    Some(t) => t.set_tag("group", json!(g)),
                    None => ctx.fail(format!("{peer}: Connected but unknown to the hub")),
                }
                let first = Duration::from_millis(150 + ctx.rng().below(3000));
                ctx.set_timer(first, PEER | peer.as_u64());
            }
            HubEvent::Message(m) => match l.parse(&m.payload) {
                // A request (by its payload): echo it with its id.
                Some((2, _, _)) => {
                    let _ = ctx.reply(peer, m.request_id, REQ, m.payload);
                }
                parsed => {
                    if let Err(e) = l.record_delivery(0, parsed, Some(link)) {
                        ctx.fail(e);
                    }
                }
            },
            HubEvent::Disconnected(_) => {
                if !l.connected.remove(&peer) {
                    ctx.fail(format!("{peer}: Disconnected without Connected"));
                }
                l.connection_failed(link);
            }
            other => ctx.fail(format!("{peer}: unexpected {other:?}")),
        }
    }
}
