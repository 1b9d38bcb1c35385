//! The simulation: [`Sim`], its nodes, and the run API.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use veltix_proto::{ClientConfig, ClientSession, Hub, PeerId, ServerConfig};

use crate::app::{ClientApp, ServerApp};
use crate::ctx::{ClientCtx, PeerLink, ServerCtx, Shared};
use crate::faults::{LinkConfig, Partition, PartitionId};
use crate::net::{HeldDial, Link, Links};
use crate::rng::SimRng;
use crate::trace::{Fingerprint, Trace, TraceEntry, TraceKind};
use crate::types::{LinkId, LinkInfo, NodeId, SimStats};
use crate::world::{Log, Timers};

/// Streams derived from a node's name (see [`SimRng::derive`]).
pub(crate) const STREAM_APP: u64 = 0;
pub(crate) const STREAM_NET: u64 = 1;
const STREAM_SESSION: u64 = 2;
const STREAM_AUTH: u64 = 3;
/// Links: this plus the client's dial number.
pub(crate) const STREAM_LINK: u64 = 1 << 32;

/// Default step budget of one run call.
pub const DEFAULT_STEP_BUDGET: u64 = 20_000_000;

pub(crate) struct ServerNode {
    pub hub: Hub,
    pub app: Box<dyn ServerApp>,
    /// Transports accepted and not yet finished, or finished with a
    /// `Disconnected` still to come.
    pub peers: BTreeMap<PeerId, PeerLink>,
    /// Accepted and not finished (must equal `hub.live()`).
    pub open: usize,
    /// `Connected` reported and `Disconnected` not (must equal `hub.connected()`).
    pub connected: usize,
}

pub(crate) struct ClientNode {
    pub session: ClientSession,
    pub app: Box<dyn ClientApp>,
    pub server: NodeId,
    /// The link of the session's transport, and the transport's id.
    pub link: Option<(LinkId, u64)>,
    pub held: Option<HeldDial>,
    pub net: SimRng,
    pub dials: u64,
    /// The session was called since its events and dials were last taken.
    pub dirty: bool,
    /// `timeout` may be out of date (the node is in `Sim::stale`).
    pub stale: bool,
    /// The session's `poll_timeout`, cached.
    pub timeout: Option<Instant>,
}

pub(crate) enum NodeKind {
    Server(Box<ServerNode>),
    Client(Box<ClientNode>),
}

pub(crate) struct Node {
    pub name: String,
    pub rng: SimRng,
    pub started: bool,
    pub kind: NodeKind,
}

pub(crate) struct PartitionState {
    pub id: PartitionId,
    pub p: Partition,
    pub active: bool,
}

/// A deterministic network of Veltix cores and your applications, on a
/// virtual clock. See the [crate docs](crate) for the guide.
pub struct Sim {
    pub(crate) log: Log,
    pub(crate) timers: Timers,
    pub(crate) links: Links,
    pub(crate) nodes: Vec<Node>,
    pub(crate) names: BTreeMap<String, NodeId>,
    pub(crate) link_config: LinkConfig,
    pub(crate) pair_config: BTreeMap<(NodeId, NodeId), LinkConfig>,
    pub(crate) partitions: Vec<PartitionState>,
    pub(crate) faults: bool,
    /// Clients to tell that their session dropped a transport.
    pub(crate) notices: VecDeque<(usize, LinkId, LinkInfo)>,
    pub(crate) step_budget: u64,
    pub(crate) next_link: u64,
    pub(crate) unstarted: bool,
    /// The test acted on a node between steps: service it at the next one.
    pub(crate) service_due: bool,
    pub(crate) same_instant: u64,
    pub(crate) scratch: Vec<u8>,
    pub(crate) observe: Vec<usize>,
    pub(crate) due_links: Vec<LinkId>,
    /// Server nodes, in id order.
    pub(crate) servers: Vec<usize>,
    /// Clients whose `stale` went true since their timeouts were filed.
    pub(crate) stale: Vec<usize>,
    /// Clients' cached `poll_timeout`s, earliest first.
    pub(crate) timeouts: BTreeSet<(Instant, usize)>,
    /// Nodes the service rounds visit: every server, and the clients that
    /// are `dirty` or hold a dial.
    pub(crate) to_service: BTreeSet<usize>,
    /// Scratch: the nodes whose deadlines are due in a step.
    pub(crate) due_nodes: Vec<usize>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.log.seed)
            .field("elapsed", &self.log.elapsed())
            .field("nodes", &self.nodes.len())
            .field("links", &self.links.len())
            .field("trace", &self.log.trace.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// An empty simulation driven by `seed`, its clock at an `Instant`
    /// taken now (the only clock read it ever makes). Links default to
    /// [`LinkConfig::none`].
    pub fn new(seed: u64) -> Sim {
        let start = Instant::now();
        Sim {
            log: Log::new(seed, start),
            timers: Timers::default(),
            links: Links::default(),
            nodes: Vec::new(),
            names: BTreeMap::new(),
            link_config: LinkConfig::none(),
            pair_config: BTreeMap::new(),
            partitions: Vec::new(),
            faults: true,
            notices: VecDeque::new(),
            step_budget: DEFAULT_STEP_BUDGET,
            next_link: 1,
            unstarted: false,
            service_due: false,
            same_instant: 0,
            scratch: Vec::new(),
            observe: Vec::new(),
            due_links: Vec::new(),
            servers: Vec::new(),
            stale: Vec::new(),
            timeouts: BTreeSet::new(),
            to_service: BTreeSet::new(),
            due_nodes: Vec::new(),
        }
    }

    // ------------------------------------------------------------ settings

    /// The behaviour of links opened from now on (default [`LinkConfig::none`]).
    pub fn set_link_config(&mut self, config: LinkConfig) {
        self.link_config = config;
    }

    /// The default link behaviour.
    pub fn link_config(&self) -> &LinkConfig {
        &self.link_config
    }

    /// The behaviour of links opened from now on between `client` and
    /// `server` (overrides the default).
    pub fn set_link_config_between(&mut self, client: NodeId, server: NodeId, config: LinkConfig) {
        self.pair_config.insert((client, server), config);
    }

    /// Turns faults on or off (default on). Off: new links draw no faults,
    /// open links' pending resets, flipped bits and reading pauses are
    /// cancelled (paused readers read again), no stalls, no refused dials;
    /// latency, jitter and segmentation stay. Partitions are not faults in
    /// this sense: they keep their schedule.
    pub fn set_faults_enabled(&mut self, on: bool) {
        self.faults = on;
        if !on {
            for l in self.links.iter_mut() {
                for p in &mut l.pipes {
                    p.calm();
                }
            }
        }
    }

    /// Whether faults are on.
    pub fn faults_enabled(&self) -> bool {
        self.faults
    }

    /// How many trace entries to keep (default 256); the hash covers all of them anyway.
    pub fn set_trace_capacity(&mut self, entries: usize) {
        self.log.trace.set_capacity(entries);
    }

    /// The most steps one `run_*` call may take before it fails with the
    /// seed (default [`DEFAULT_STEP_BUDGET`]): a busy loop fails instead of hanging.
    pub fn set_step_budget(&mut self, steps: u64) {
        self.step_budget = steps.max(1);
    }

    /// The command a failure report shows to replay the run; `{seed}` is
    /// replaced by the seed. E.g.
    /// `"MY_SEED={seed} cargo test -p my-app --test sim"`.
    pub fn set_replay_command(&mut self, command: impl Into<String>) {
        self.log.replay = Some(command.into());
    }

    /// Calls `observer` with every trace entry as it is recorded (ground
    /// truth for a test's books: corruptions, resets, ...). It runs inside
    /// the simulation, also while an application's method runs (for
    /// [`ClientCtx::note`]): when it shares state with your applications
    /// through a `RefCell`, do not hold a borrow across a `note`.
    pub fn observe(&mut self, observer: impl FnMut(&TraceEntry) + 'static) {
        self.log.observer = Some(Box::new(observer));
    }

    // --------------------------------------------------------------- nodes

    fn add_node(&mut self, name: &str, kind: NodeKind) -> NodeId {
        assert!(
            !self.names.contains_key(name),
            "veltix-sim: two nodes named {name:?}"
        );
        let id = NodeId::from_index(self.nodes.len());
        self.names.insert(name.to_owned(), id);
        self.log.trace.add_name(name);
        self.nodes.push(Node {
            name: name.to_owned(),
            rng: SimRng::derive(self.log.seed, name, STREAM_APP),
            started: false,
            kind,
        });
        self.unstarted = true;
        id
    }

    /// Adds a server node: a [`Hub`] for `config` (its nonce generator,
    /// if authentication is on, seeded from the simulation's seed and the
    /// node's name) and its application. `host` and `port` are ignored.
    pub fn add_server(
        &mut self,
        name: &str,
        config: &ServerConfig,
        app: impl ServerApp + 'static,
    ) -> NodeId {
        config.seed_auth(SimRng::derive(self.log.seed, name, STREAM_AUTH).seed32());
        self.add_server_hub(name, Hub::new(config), app)
    }

    /// Adds a server node around a hub you built (seed its authentication
    /// yourself, e.g. with [`SimRng::seed32`], or the run is not repeatable).
    pub fn add_server_hub(
        &mut self,
        name: &str,
        hub: Hub,
        app: impl ServerApp + 'static,
    ) -> NodeId {
        let id = self.add_node(
            name,
            NodeKind::Server(Box::new(ServerNode {
                hub,
                app: Box::new(app),
                peers: BTreeMap::new(),
                open: 0,
                connected: 0,
            })),
        );
        self.servers.push(id.index());
        self.to_service.insert(id.index());
        id
    }

    /// Adds a client node: a [`ClientSession`] for `config` (retry policy,
    /// deadlines, limits, credentials; jitter and nonces seeded from the
    /// simulation's seed and the node's name) that dials `server`, and its
    /// application. `server_addr` and `port` are ignored.
    pub fn add_client(
        &mut self,
        name: &str,
        config: &ClientConfig,
        server: NodeId,
        app: impl ClientApp + 'static,
    ) -> NodeId {
        config.seed_auth(SimRng::derive(self.log.seed, name, STREAM_AUTH).seed32());
        let seed = SimRng::derive(self.log.seed, name, STREAM_SESSION).next_u64();
        let session = ClientSession::new(config, seed, self.log.now);
        self.add_client_session(name, session, server, app)
    }

    /// Adds a client node around a session you built (created at
    /// [`now`](Self::now) or earlier, its jitter and authentication seeded
    /// by you).
    ///
    /// # Panics
    /// If `server` is not a server node.
    pub fn add_client_session(
        &mut self,
        name: &str,
        session: ClientSession,
        server: NodeId,
        app: impl ClientApp + 'static,
    ) -> NodeId {
        assert!(
            matches!(
                self.nodes.get(server.index()).map(|n| &n.kind),
                Some(NodeKind::Server(_))
            ),
            "veltix-sim: {server} is not a server node"
        );
        let net = SimRng::derive(self.log.seed, name, STREAM_NET);
        let id = self.add_node(
            name,
            NodeKind::Client(Box::new(ClientNode {
                session,
                app: Box::new(app),
                server,
                link: None,
                held: None,
                net,
                dials: 0,
                dirty: true,
                stale: true,
                timeout: None,
            })),
        );
        self.stale.push(id.index());
        self.to_service.insert(id.index());
        id
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<NodeId> {
        self.names.get(name).copied()
    }

    /// A node's name.
    pub fn name(&self, node: NodeId) -> &str {
        self.nodes.get(node.index()).map_or("?", |n| &n.name)
    }

    /// Every node, in the order added.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = NodeId> {
        (0..self.nodes.len()).map(NodeId::from_index)
    }

    /// Server nodes, in the order added.
    pub fn servers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes()
            .filter(|n| matches!(self.nodes[n.index()].kind, NodeKind::Server(_)))
    }

    /// Client nodes, in the order added.
    pub fn clients(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes()
            .filter(|n| matches!(self.nodes[n.index()].kind, NodeKind::Client(_)))
    }

    /// A server node's hub.
    pub fn hub(&self, node: NodeId) -> Option<&Hub> {
        match &self.nodes.get(node.index())?.kind {
            NodeKind::Server(s) => Some(&s.hub),
            NodeKind::Client(_) => None,
        }
    }

    /// A client node's session.
    pub fn session(&self, node: NodeId) -> Option<&ClientSession> {
        match &self.nodes.get(node.index())?.kind {
            NodeKind::Client(c) => Some(&c.session),
            NodeKind::Server(_) => None,
        }
    }

    /// A server node's application, if it is an `A`.
    pub fn server_app<A: ServerApp>(&self, node: NodeId) -> Option<&A> {
        match &self.nodes.get(node.index())?.kind {
            NodeKind::Server(s) => {
                let app: &dyn ServerApp = &*s.app;
                app.as_any().downcast_ref()
            }
            NodeKind::Client(_) => None,
        }
    }

    /// A server node's application, mutable, if it is an `A`.
    pub fn server_app_mut<A: ServerApp>(&mut self, node: NodeId) -> Option<&mut A> {
        match &mut self.nodes.get_mut(node.index())?.kind {
            NodeKind::Server(s) => {
                let app: &mut dyn ServerApp = &mut *s.app;
                app.as_any_mut().downcast_mut()
            }
            NodeKind::Client(_) => None,
        }
    }

    /// A client node's application, if it is an `A`.
    pub fn client_app<A: ClientApp>(&self, node: NodeId) -> Option<&A> {
        match &self.nodes.get(node.index())?.kind {
            NodeKind::Client(c) => {
                let app: &dyn ClientApp = &*c.app;
                app.as_any().downcast_ref()
            }
            NodeKind::Server(_) => None,
        }
    }

    /// A client node's application, mutable, if it is an `A`.
    pub fn client_app_mut<A: ClientApp>(&mut self, node: NodeId) -> Option<&mut A> {
        match &mut self.nodes.get_mut(node.index())?.kind {
            NodeKind::Client(c) => {
                let app: &mut dyn ClientApp = &mut *c.app;
                app.as_any_mut().downcast_mut()
            }
            NodeKind::Server(_) => None,
        }
    }

    /// Runs `f` with a client node's application (an `A`) and its context
    /// now, as if the application acted on its own: the test's hand in
    /// the run ("at 30 s, client 3 disconnects").
    ///
    /// # Panics
    /// If `node` is not a client node whose application is an `A`.
    pub fn with_client<A: ClientApp, R>(
        &mut self,
        node: NodeId,
        f: impl FnOnce(&mut A, &mut ClientCtx<'_>) -> R,
    ) -> R {
        let name = self.name(node).to_owned();
        self.service_due = true;
        self.call_client(node.index(), |app, ctx| {
            let app = app
                .as_any_mut()
                .downcast_mut::<A>()
                .unwrap_or_else(|| panic!("veltix-sim: {name} runs another application type"));
            f(app, ctx)
        })
    }

    /// Runs `f` with a server node's application (an `A`) and its context now.
    ///
    /// # Panics
    /// If `node` is not a server node whose application is an `A`.
    pub fn with_server<A: ServerApp, R>(
        &mut self,
        node: NodeId,
        f: impl FnOnce(&mut A, &mut ServerCtx<'_>) -> R,
    ) -> R {
        let name = self.name(node).to_owned();
        self.service_due = true;
        self.call_server(node.index(), |app, ctx| {
            let app = app
                .as_any_mut()
                .downcast_mut::<A>()
                .unwrap_or_else(|| panic!("veltix-sim: {name} runs another application type"));
            f(app, ctx)
        })
    }

    pub(crate) fn call_client<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut dyn ClientApp, &mut ClientCtx<'_>) -> R,
    ) -> R {
        let Node {
            name, rng, kind, ..
        } = &mut self.nodes[i];
        let NodeKind::Client(c) = kind else {
            panic!("veltix-sim: {name} is not a client node");
        };
        let ClientNode {
            session,
            app,
            server,
            link,
            ..
        } = &mut **c;
        let mut ctx = ClientCtx {
            node: NodeId::from_index(i),
            name,
            session,
            rng,
            server,
            link: link.map(|(l, _)| l),
            shared: Shared {
                log: &mut self.log,
                timers: &mut self.timers,
                links: &self.links,
            },
        };
        let r = f(&mut **app, &mut ctx);
        self.observe_client(i);
        r
    }

    pub(crate) fn call_server<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut dyn ServerApp, &mut ServerCtx<'_>) -> R,
    ) -> R {
        let Node {
            name, rng, kind, ..
        } = &mut self.nodes[i];
        let NodeKind::Server(s) = kind else {
            panic!("veltix-sim: {name} is not a server node");
        };
        let ServerNode {
            hub, app, peers, ..
        } = &mut **s;
        let mut ctx = ServerCtx {
            node: NodeId::from_index(i),
            name,
            hub,
            rng,
            peers,
            shared: Shared {
                log: &mut self.log,
                timers: &mut self.timers,
                links: &self.links,
            },
        };
        f(&mut **app, &mut ctx)
    }

    // ---------------------------------------------------------- partitions

    /// Registers a partition (it starts at its `from`, default now).
    pub fn partition(&mut self, mut p: Partition) -> PartitionId {
        p.from = Some(p.from.unwrap_or(self.log.now));
        let id = PartitionId(self.partitions.len() as u32);
        self.partitions.push(PartitionState {
            id,
            p,
            active: false,
        });
        id
    }

    /// Heals a partition now (bytes it held are read from the next step on).
    pub fn heal(&mut self, id: PartitionId) {
        let now = self.log.now;
        if let Some(ps) = self.partitions.get_mut(id.0 as usize) {
            if ps.p.until.is_none_or(|u| u > now) {
                ps.p.until = Some(now);
            }
        }
    }

    /// Whether a partition separates `a` from `b` now.
    pub fn is_partitioned(&self, a: NodeId, b: NodeId) -> bool {
        self.partitions
            .iter()
            .any(|ps| ps.active && ps.p.separates(a, b))
    }

    // ------------------------------------------------------------- reading

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.log.seed
    }

    /// The virtual time now.
    pub fn now(&self) -> Instant {
        self.log.now
    }

    /// The base instant: virtual time 0.
    pub fn start(&self) -> Instant {
        self.log.start
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.log.elapsed()
    }

    /// The trace.
    pub fn trace(&self) -> &Trace {
        &self.log.trace
    }

    /// The trace's entry count and hash: equal for two runs that did the same.
    pub fn fingerprint(&self) -> Fingerprint {
        self.log.trace.fingerprint()
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.log.stats
    }

    /// The network's facts about an open link.
    pub fn link_info(&self, link: LinkId) -> Option<LinkInfo> {
        self.links.get(link).map(Link::info)
    }

    /// Facts about every open link, in id order.
    pub fn links(&self) -> impl Iterator<Item = LinkInfo> + '_ {
        self.links.iter().map(Link::info)
    }

    /// Adds a line to the trace.
    pub fn note(&mut self, text: impl Into<String>) {
        self.log.record(None, TraceKind::Note(text.into()));
    }

    /// The failure report `fail` would panic with.
    pub fn failure_report(&self, what: impl fmt::Display) -> String {
        self.log.report(&what)
    }

    /// Fails the run: panics with `what`, the seed, the replay command and
    /// the end of the trace.
    pub fn fail(&self, what: impl fmt::Display) -> ! {
        self.log.fail(&what)
    }

    // ----------------------------------------------------------------- run

    /// Runs `f`, printing the failure report (seed, replay command, trace)
    /// if it panics without one.
    fn guarded<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        match panic::catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(r) => r,
            Err(e) => {
                if !self.log.reported.get() {
                    let what = e
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| e.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic");
                    eprintln!("{}", self.log.report(&format_args!("panicked: {what}")));
                    self.log.reported.set(true);
                }
                panic::resume_unwind(e)
            }
        }
    }

    fn count_step(&mut self, taken: &mut u64) {
        *taken += 1;
        if *taken > self.step_budget {
            self.log.fail(&format_args!(
                "step budget of {} steps exhausted in one run (a busy loop?)",
                self.step_budget
            ));
        }
    }

    /// One step: time moves to the next thing due (a pipe arrival, a
    /// core's deadline, an application timer, a partition's start or heal)
    /// and everything due then is handled. Returns the new time, or `None`
    /// when nothing at all is scheduled (time does not move).
    pub fn step(&mut self) -> Option<Instant> {
        self.guarded(|s| s.advance(None).then_some(s.log.now))
    }

    /// Runs until `deadline`: everything due by then is handled, and the
    /// clock ends at `deadline` (or stays, if it is already later).
    pub fn run_until(&mut self, deadline: Instant) {
        self.guarded(|s| {
            let mut taken = 0;
            while s.advance(Some(deadline)) {
                s.count_step(&mut taken);
            }
        });
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let deadline = self.log.now + duration;
        self.run_until(deadline);
    }

    /// Runs until `done` returns true (checked before every step) or
    /// `deadline` passes; returns whether `done` returned true.
    pub fn run_until_condition(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> bool {
        self.guarded(|s| {
            let mut taken = 0;
            loop {
                if done(s) {
                    return true;
                }
                if !s.advance(Some(deadline)) {
                    return done(s);
                }
                s.count_step(&mut taken);
            }
        })
    }
}
