//! # veltix-sim: deterministic simulation of Veltix applications
//!
//! ## Testing your application with veltix (the sans-IO route)
//!
//! Your service runs on Veltix: a server that keeps a [`Hub`] and clients
//! that keep a [`ClientSession`] (directly, or through a driver that embeds
//! them). This crate runs *your application code* on those same cores,
//! many nodes at once, over a simulated network, on a virtual clock, from
//! one seed:
//!
//! * **a virtual clock**: one base `Instant` is taken when the [`Sim`] is
//!   created and nothing reads a clock after that; time jumps straight to
//!   the next thing due (a byte arriving, a core's deadline, a timer of
//!   yours), so ten simulated minutes take a second or two;
//! * **a seeded random source** ([`SimRng`]): every node's application,
//!   every node's network decisions and every link draw from their own
//!   stream of the seed, so adding a node does not change what the others
//!   do;
//! * **a network like TCP** ([`LinkConfig`]): bytes in order, latency and
//!   jitter, writes cut into random segments and coalesced into random
//!   reads, stalls, resets at a byte offset, refused dials, receivers that
//!   stop reading behind a bounded window (so a sender's `max_outbound`
//!   fills and `send` refuses, as in production), flipped bits, and
//!   [`Partition`]s between sets of nodes that heal at a given time;
//! * **hooks for your application** ([`ServerApp`], [`ClientApp`]): your
//!   code sees exactly the events the core reports and answers with the
//!   core's own commands through a context ([`ServerCtx`], [`ClientCtx`]),
//!   which also gives it the time, its random source and timers;
//! * **a run API**: [`Sim::step`], [`Sim::run_until`], [`Sim::run_for`],
//!   [`Sim::run_until_condition`], each with a step budget that fails the
//!   run with its seed instead of hanging;
//! * **a trace** ([`Trace`]) of everything that happened, bounded in
//!   memory (the last entries and a running hash of all of them), printed
//!   with the seed and your replay command when a check fails
//!   ([`Sim::fail`], [`ClientCtx::fail`], or any panic during a run), and a
//!   [`Fingerprint`] to compare two runs bit for bit.
//!
//! ### A complete example
//!
//! An echo service and three clients that keep asking it things over a
//! hostile network. The test checks two things the application relies on:
//! every request ends exactly once, and every answer is the answer to that
//! very request.
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//!
//! use veltix_proto::{ClientConfig, HubEvent, MessageType, PeerId, Reply, ServerConfig, SessionEvent};
//! use veltix_sim::{ClientApp, ClientCtx, LinkConfig, ServerApp, ServerCtx, Sim};
//!
//! const ECHO: MessageType = MessageType::new(200);
//!
//! /// The server: answers every message with its own payload.
//! struct Echo;
//!
//! impl ServerApp for Echo {
//!     fn on_event(&mut self, ctx: &mut ServerCtx<'_>, peer: PeerId, event: HubEvent) {
//!         if let HubEvent::Message(m) = event {
//!             // A full queue or a gone peer: the asker's request fails, it is told.
//!             let _ = ctx.reply(peer, m.request_id, ECHO, m.payload);
//!         }
//!     }
//! }
//!
//! /// A client: a request every 100 ms while connected.
//! #[derive(Default)]
//! struct Asker {
//!     pending: BTreeMap<u16, String>,
//!     answered: u32,
//!     failed: u32,
//! }
//!
//! const ASK: u64 = 1;
//!
//! impl ClientApp for Asker {
//!     fn on_event(&mut self, ctx: &mut ClientCtx<'_>, event: SessionEvent) {
//!         match event {
//!             SessionEvent::Connected(_) => {
//!                 ctx.set_timer(Duration::ZERO, ASK);
//!             }
//!             SessionEvent::Completed { request_id, outcome } => {
//!                 let Some(question) = self.pending.remove(&request_id) else {
//!                     ctx.fail(format!("request {request_id} ended twice"));
//!                 };
//!                 match outcome {
//!                     Ok(Reply::Frame(f)) if f.payload == question.as_bytes() => self.answered += 1,
//!                     Ok(other) => ctx.fail(format!("{question:?} got {other:?}")),
//!                     Err(_) => self.failed += 1, // timed out, or the connection went
//!                 }
//!             }
//!             _ => {}
//!         }
//!     }
//!
//!     fn on_timer(&mut self, ctx: &mut ClientCtx<'_>, _tag: u64) {
//!         if !ctx.session().is_connected() {
//!             return; // the next Connected starts asking again
//!         }
//!         let n = ctx.rng().below(1_000_000);
//!         let question = format!("{} asks {n}", ctx.name());
//!         if let Ok(id) = ctx.request(ECHO, question.clone(), Duration::from_secs(2)) {
//!             self.pending.insert(id, question);
//!         }
//!         ctx.set_timer(Duration::from_millis(100), ASK);
//!     }
//! }
//!
//! fn run(seed: u64) -> Sim {
//!     let mut sim = Sim::new(seed);
//!     sim.set_replay_command("cargo test --doc -p veltix-sim  # with seed {seed}");
//!     sim.set_link_config(LinkConfig::hostile().without_corruption());
//!     let server = sim.add_server("echo", &ServerConfig::default(), Echo);
//!     let config = ClientConfig::default().retry(10).retry_delay(Duration::from_millis(500));
//!     for i in 0..3 {
//!         sim.add_client(&format!("asker-{i}"), &config, server, Asker::default());
//!     }
//!     sim.run_for(Duration::from_secs(60));
//!     // Quiet, then every request must have ended.
//!     sim.set_faults_enabled(false);
//!     for c in sim.clients().collect::<Vec<_>>() {
//!         sim.with_client(c, |_: &mut Asker, ctx| ctx.disconnect());
//!     }
//!     sim.run_for(Duration::from_secs(10));
//!     for c in sim.clients() {
//!         let a = sim.client_app::<Asker>(c).unwrap();
//!         if !a.pending.is_empty() {
//!             sim.fail(format!("{}: {} requests never ended", sim.name(c), a.pending.len()));
//!         }
//!     }
//!     sim
//! }
//!
//! let a = run(42);
//! let answered: u32 = a.clients().map(|c| a.client_app::<Asker>(c).unwrap().answered).sum();
//! assert!(answered > 500, "the network let work through: {answered}");
//! // The same seed replays the same run, bit for bit.
//! assert_eq!(a.fingerprint(), run(42).fingerprint());
//! assert_ne!(a.fingerprint(), run(43).fingerprint());
//! ```
//!
//! ### How a simulated test is built
//!
//! 1. **Nodes.** [`Sim::add_server`] makes a [`Hub`] from your
//!    [`ServerConfig`](veltix_proto::ServerConfig) and runs your
//!    [`ServerApp`] on it; [`Sim::add_client`] makes a [`ClientSession`]
//!    from your [`ClientConfig`](veltix_proto::ClientConfig) (retry policy,
//!    deadlines, limits, credentials) that dials a server node, and runs
//!    your [`ClientApp`]. Several servers are fine; a client can switch
//!    servers ([`ClientCtx::set_server`]). Authentication nonces, backoff
//!    jitter and everything else random are seeded from the simulation's
//!    seed and the node's name. ([`Sim::add_server_hub`] and
//!    [`Sim::add_client_session`] take cores you built yourself.)
//! 2. **Your code.** Keep the service's logic in plain types that do not
//!    know about this crate (the `chat` example in `examples/chat/`:
//!    `ChatServer::handle(conn, msg) -> Vec<Action>`), and write thin [`ServerApp`]/[`ClientApp`]
//!    adapters that turn core events into calls of that logic and its
//!    actions into context commands. The same logic then runs under a
//!    driver in production, and under other simulators.
//! 3. **Time and randomness.** Inside the simulation, read time only from
//!    the context ([`ClientCtx::now`]), draw randomness only from
//!    [`ClientCtx::rng`], schedule work with [`ClientCtx::set_timer`], and
//!    keep collections whose iteration order matters ordered (`BTreeMap`,
//!    not `HashMap`): that is all determinism asks.
//! 4. **Faults.** [`Sim::set_link_config`] (and per pair,
//!    [`Sim::set_link_config_between`]) sets how links behave, from
//!    [`LinkConfig::none`] to [`LinkConfig::hostile`]; [`Sim::partition`]
//!    cuts sets of nodes apart until a heal. [`Sim::set_faults_enabled`]
//!    turns faults off for a quiet period at the end, so that what is in
//!    flight can land before the final checks.
//! 5. **Checks.** Check as the run goes (in your adapters) and at the end
//!    (through [`Sim::client_app`], [`Sim::server_app`]). A test that
//!    keeps books across nodes shares them through an
//!    `Rc<RefCell<...>>`; [`ClientApp::on_link`] / [`ServerApp::on_link`]
//!    tell it about transports (what was sent on a connection that then
//!    went down was lost *and its sender was told*), and [`Sim::observe`]
//!    streams the trace to it (e.g. which links the network corrupted).
//!    Fail with [`ClientCtx::fail`] / [`Sim::fail`]: the report carries
//!    the seed, your replay command ([`Sim::set_replay_command`]) and the
//!    end of the trace.
//! 6. **Many seeds.** Run a few fixed seeds in CI, and many more in a soak
//!    (the convention of this repository: `VELTIX_SIM_SEEDS=N` adds N
//!    random seeds, `VELTIX_SIM_SEED=S` replays one). A failure's seed
//!    replays the same run exactly; compare two runs with
//!    [`Sim::fingerprint`], or keep the whole trace
//!    ([`Sim::set_trace_capacity`]) and compare entries.
//!
//! ### What the simulator checks for you
//!
//! While it drives the cores, the simulator verifies the core's own
//! promises and fails the run (with the seed) when one breaks: a hub
//! reports `Connected` once per peer and `Disconnected` only after it and
//! last; `hub.connected()` equals the peers reported connected and
//! `hub.live()` the transports accepted and not finished; peer ids are
//! never reused; a session dials only when it has no transport; a core
//! never has output left to give once its driver took all it could (so
//! `poll_timeout` is never "now" for a driver that cannot write); virtual
//! time never stops (a busy loop fails after 100 000 steps at one instant).
//!
//! ### What is simulated, exactly
//!
//! See [`LinkConfig`] for each fault and [`Partition`] for partitions.
//! The drivers follow the core's calling contract: each takes what its
//! core gives (up to `TRANSMIT_WINDOW`), reports bytes written only as its
//! pipe accepts them, reads only while the core wants input, hands over
//! EOF once the other side's output drained, and drops a transport as soon
//! as the core lets go of it. Dials connect at once unless refused or held
//! by a partition. Servers refuse past `max_connection` by writing the
//! core's rejection and closing.
//!
//! ### The other route
//!
//! Code written against `veltix-tokio` is simulated differently: under
//! turmoil, through the driver's transport seam (see `TESTING.md`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod app;
mod ctx;
mod drive;
mod faults;
mod net;
mod rng;
mod sim;
mod trace;
mod types;
mod world;

pub use app::{AsAny, ClientApp, ClientLinkEvent, ServerApp, ServerLinkEvent};
pub use ctx::{ClientCtx, ServerCtx};
pub use faults::{Dir, LinkConfig, Partition, PartitionId};
pub use rng::SimRng;
pub use sim::{Sim, DEFAULT_STEP_BUDGET};
pub use trace::{EventNote, Fingerprint, Trace, TraceEntry, TraceKind};
pub use types::{LinkId, LinkInfo, NodeId, PipeInfo, SimStats};
pub use world::TimerId;

#[doc(no_inline)]
pub use veltix_proto::{ClientSession, Hub};

/// The seeds of a seeded test, by this repository's convention:
/// `VELTIX_SIM_SEED=S` runs seed `S` only; otherwise `fixed`, plus
/// `VELTIX_SIM_SEEDS=N` random ones (from the wall clock, printed by the
/// test so a failure can be replayed).
///
/// # Panics
/// When either variable is set but not a number.
pub fn seeds_from_env(fixed: impl IntoIterator<Item = u64>) -> Vec<u64> {
    if let Ok(s) = std::env::var("VELTIX_SIM_SEED") {
        return vec![s.parse().expect("VELTIX_SIM_SEED is a number")];
    }
    let mut v: Vec<u64> = fixed.into_iter().collect();
    if let Ok(n) = std::env::var("VELTIX_SIM_SEEDS") {
        let n: u64 = n.parse().expect("VELTIX_SIM_SEEDS is a number");
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        v.extend((0..n).map(|i| base.wrapping_add(i.wrapping_mul(0x9E37_79B9))));
    }
    v
}
