//! Deterministic simulation of whole Veltix networks, on the public
//! simulation kit (`veltix-sim`): one server hub and many client sessions
//! on a virtual clock, joined by seeded faulty links, driven by test
//! applications that keep books of everything they send (`ledger.rs`,
//! `client.rs`, `server.rs`).
//!
//! Links deliver bytes in order (like TCP) after a latency with jitter, cut
//! into random segments and coalesced into random reads; faults, drawn per
//! link from the seed: refused dials, stalls, a reset at a random byte
//! offset, a flipped bit, and a receiver that stops reading for a while
//! behind a bounded window (so `max_outbound` fills and `send` refuses).
//! Clients reconnect by themselves (the session's retry policy), call
//! `retry()` 5 s after a session gave up and `connect()` 5 s after a
//! manual disconnect. The server admits `max_connection` transports, tags
//! each client with a group, echoes requests, sends to each connected
//! peer now and then, and broadcasts to groups, to all, to all but one and
//! to a chosen few. Checked as the run goes and at the end:
//!
//! * every delivered message is intact and delivered once, and a broadcast
//!   reaches only the connected peers it targeted;
//! * every message that was not delivered was sent on a connection that then
//!   failed (so its sender was told), or its `send` returned an error;
//! * every request ends exactly once, never after its deadline;
//! * every `DisconnectState` report and every dial happens exactly when an
//!   independent model of Veltix's reconnect rule says
//!   (`veltix-proto/tests/common/reconnect_model.rs`);
//! * the hub's admission count equals the live transports and never passes
//!   `max_connection`; `Connected`/`Disconnected` come only for peers that
//!   finished the handshake, once each; with authentication on, every
//!   peer carries the identity its client proved.
//!
//! A fixed set of seeds runs in CI; `VELTIX_SIM_SEEDS=N` runs N more random
//! seeds (soak), and `VELTIX_SIM_SEED=S` replays one seed. A run that
//! exceeds its step budget (`VELTIX_SIM_MAX_STEPS`, default 2 000 000 per
//! phase) fails with its seed instead of hanging.

#![allow(missing_docs)]

mod client;
mod ledger;
mod server;

#[path = "../../../veltix-proto/tests/common/reconnect_model.rs"]
mod reconnect_model;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use veltix_proto::auth::{ClientAuth, MemoryStore, ScramCredential, ServerAuth};
use veltix_proto::retry::Reconnect;
use veltix_proto::{ClientSession, ConnectionConfig, Hub, RetryPolicy};
use veltix_sim::{Fingerprint, LinkConfig, Sim, TraceKind};

use client::SimClient;
use ledger::{seed_bytes, Ledger, Report, GROUPS, SIM_SERVICE, SIM_USER};
use reconnect_model::Model;
use server::SimServer;

const TEN_MINUTES: Duration = Duration::from_secs(600);

fn policy() -> RetryPolicy {
    RetryPolicy::fixed(5, Duration::from_millis(700))
}

fn seeds(fixed: &[u64]) -> Vec<u64> {
    veltix_sim::seeds_from_env(fixed.iter().copied())
}

/// A network to simulate.
struct Net {
    seed: u64,
    clients: usize,
    max_connections: Option<usize>,
    links: LinkConfig,
    /// Probability of a manual disconnect per client action.
    disconnect: f64,
    policy: RetryPolicy,
}

impl Net {
    fn hostile(seed: u64, clients: usize, max_connections: Option<usize>) -> Self {
        Net {
            seed,
            clients,
            max_connections,
            links: LinkConfig::hostile(),
            disconnect: 0.002,
            policy: policy(),
        }
    }

    /// Builds the simulation: one server hub and the clients.
    fn build(&self) -> (Sim, Rc<RefCell<Ledger>>) {
        let seed = self.seed;
        let mut sim = Sim::new(seed);
        sim.set_replay_command(
            "VELTIX_SIM_SEED={seed} cargo test -p veltix-tests --test sim_network -- --nocapture",
        );
        sim.set_link_config(self.links);
        sim.set_step_budget(
            std::env::var("VELTIX_SIM_MAX_STEPS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(2_000_000),
        );
        let mut config = ConnectionConfig::default();
        config.handshake_timeout = Duration::from_secs(3);
        config.max_outbound = 256 * 1024;
        // Authentication on, except with corruption: a corrupted SCRAM proof
        // is a wrong password to the server, and a client gives up at once
        // on one by design (the reconnect model does not expect that).
        let auth = self.links.corrupt == 0.0;
        let mut user_cfg = config.clone();
        let mut svc_cfg = config.clone();
        if auth {
            let store = MemoryStore::new();
            store.insert_user(
                SIM_USER,
                ScramCredential::derive("sim-pw", b"sim-salt-0123456", 4096),
            );
            store.insert_token(SIM_SERVICE, "sim-token");
            let server = ServerAuth::new(store).required(true);
            server.seed(seed_bytes(seed, 1));
            config.server_auth = Some(server);
            let user = ClientAuth::scram(SIM_USER, "sim-pw").require_server_auth(true);
            user.seed(seed_bytes(seed, 2));
            user_cfg.client_auth = Some(user);
            svc_cfg.client_auth = Some(ClientAuth::bearer("sim-token"));
        }
        let (user_cfg, svc_cfg) = (Arc::new(user_cfg), Arc::new(svc_cfg));
        let ledger = Rc::new(RefCell::new(Ledger {
            auth,
            faults_on: true,
            traffic: true,
            max_connections: self.max_connections,
            request_timeout: Duration::from_secs(2),
            disconnect: self.disconnect,
            groups: (0..self.clients)
                .map(|i| (i % usize::from(GROUPS)) as u8)
                .collect(),
            report: Report {
                seed,
                ..Report::default()
            },
            ..Ledger::default()
        }));
        // Ground truth for the loss accounting: the pipes the network corrupted.
        let books = ledger.clone();
        sim.observe(move |e| {
            if let TraceKind::Corrupted { link, dir, .. } = e.kind {
                books
                    .borrow_mut()
                    .corrupted
                    .insert((link, dir.index() as u8));
            }
        });
        let hub = Hub::with_connection_config(Arc::new(config), self.max_connections, 64 << 20);
        let server = sim.add_server_hub("server", hub, SimServer::new(ledger.clone()));
        assert_eq!(server.index(), 0, "client i is node i + 1");
        for i in 0..self.clients {
            let session = ClientSession::with_connection_config(
                if i % 2 == 0 {
                    user_cfg.clone()
                } else {
                    svc_cfg.clone()
                },
                Reconnect::new(self.policy, seed ^ i as u64),
                Duration::from_secs(3),
                sim.now(),
            );
            let model = Model::new(self.policy.max_retries, self.policy.delay);
            sim.add_client_session(
                &format!("client-{i}"),
                session,
                server,
                SimClient::new(i, ledger.clone(), model),
            );
        }
        (sim, ledger)
    }

    /// Runs `duration` of virtual time with faults, then a quiet period in
    /// which no new faults start (traffic goes on for 30 s: it also pushes
    /// any frame whose corrupted length made a receiver wait), then 30 s
    /// without traffic so that everything in flight lands, then checks
    /// every invariant.
    fn run(&self, duration: Duration) -> (Report, Fingerprint) {
        let (mut sim, ledger) = self.build();
        sim.run_until(sim.start() + duration);
        sim.set_faults_enabled(false);
        ledger.borrow_mut().faults_on = false;
        sim.run_for(Duration::from_secs(30));
        ledger.borrow_mut().traffic = false;
        sim.run_for(Duration::from_secs(30));
        for c in sim.clients() {
            let app = sim.client_app::<SimClient>(c).expect("a test client");
            if let Some(e) = app.leftovers() {
                sim.fail(e);
            }
        }
        let mut l = ledger.borrow_mut();
        if let Err(e) = l.settle() {
            sim.fail(e);
        }
        let s = sim.stats();
        l.report.resets = s.resets;
        l.report.corruptions = s.corruptions;
        l.report.discarded_bytes = s.discarded_bytes;
        l.report.steps = s.steps;
        (l.report.clone(), sim.fingerprint())
    }
}

#[test]
fn fifty_clients_ten_minutes_of_transport_faults() {
    for seed in seeds(&[1, 2, 3]) {
        let mut net = Net::hostile(seed, 50, Some(45));
        net.links.corrupt = 0.0;
        let (r, fp) = net.run(TEN_MINUTES);
        println!("{r:?} {fp}");
        assert!(
            r.delivered > 1000,
            "seed {seed}: too little traffic got through: {r:?}"
        );
        assert!(
            r.resets > 0 && r.connects > 50,
            "seed {seed}: the faults did not bite: {r:?}"
        );
        assert!(
            r.rejections > 0,
            "seed {seed}: admission never refused: {r:?}"
        );
        assert_eq!(r.lost_to_corruption, 0);
        assert!(
            r.authenticated >= r.connects.min(50),
            "seed {seed}: authentication did not run: {r:?}"
        );
    }
}

#[test]
fn fifty_clients_ten_minutes_with_corruption_too() {
    for seed in seeds(&[11, 12]) {
        let (r, fp) = Net::hostile(seed, 50, Some(45)).run(TEN_MINUTES);
        println!("{r:?} {fp}");
        assert!(
            r.corruptions > 0 && r.discarded_bytes > 0,
            "seed {seed}: {r:?}"
        );
        assert!(r.delivered > 1000, "seed {seed}: {r:?}");
    }
}

#[test]
fn a_clean_network_loses_nothing() {
    for seed in seeds(&[21, 22]) {
        let net = Net {
            seed,
            clients: 20,
            max_connections: None,
            links: LinkConfig::none().with_latency(Duration::from_millis(3)),
            disconnect: 0.0,
            policy: policy(),
        };
        let (r, fp) = net.run(Duration::from_secs(120));
        println!("{r:?} {fp}");
        assert_eq!(
            (r.lost_told, r.lost_to_corruption, r.timeouts, r.aborted),
            (0, 0, 0, 0),
            "seed {seed}: {r:?}"
        );
        assert_eq!(r.connects, 20);
        assert_eq!(r.authenticated, 20, "every client proved who it is");
        assert!(r.responses > 100 && r.delivered > 1000);
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let net = Net::hostile(99, 10, Some(8));
    let (a, fa) = net.run(Duration::from_secs(120));
    let (b, fb) = net.run(Duration::from_secs(120));
    assert_eq!(a, b);
    assert_eq!(fa, fb, "the traces differ");
    assert!(fa.entries > 10_000, "{fa}");
    let (c, fc) = Net::hostile(100, 10, Some(8)).run(Duration::from_secs(120));
    assert_ne!((a, fa), (c, fc), "another seed, another run");
}
