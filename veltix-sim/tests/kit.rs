//! The simulation kit's own behaviour: time, faults, partitions, servers,
//! budgets, traces.

#![allow(missing_docs)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use veltix_proto::{
    ClientConfig, DisconnectReason, HubEvent, MessageType, PeerId, SendError, ServerConfig,
    SessionEvent,
};
use veltix_sim::{
    ClientApp, ClientCtx, ClientLinkEvent, LinkConfig, LinkInfo, Partition, ServerApp, ServerCtx,
    ServerLinkEvent, Sim, TraceKind,
};

const MSG: MessageType = MessageType::new(200);

/// Records what arrives, and when; pauses its peers' events when told.
#[derive(Default)]
struct Sink {
    got: Vec<(Duration, u64)>,
    connected: u32,
    finished: Vec<LinkInfo>,
    refused: u32,
    pause: bool,
}

impl ServerApp for Sink {
    fn on_event(&mut self, ctx: &mut ServerCtx<'_>, peer: PeerId, event: HubEvent) {
        match event {
            HubEvent::Connected(_) => {
                self.connected += 1;
                if self.pause {
                    ctx.set_paused(peer, true);
                }
            }
            HubEvent::Message(m) => {
                let n = u64::from_be_bytes(m.payload[..8].try_into().unwrap());
                self.got.push((ctx.elapsed(), n));
            }
            _ => {}
        }
    }
    fn on_timer(&mut self, ctx: &mut ServerCtx<'_>, _tag: u64) {
        // Resume every peer.
        self.pause = false;
        for p in ctx.transports().collect::<Vec<_>>() {
            ctx.set_paused(p, false);
        }
    }
    fn on_link(&mut self, _ctx: &mut ServerCtx<'_>, event: ServerLinkEvent) {
        match event {
            ServerLinkEvent::Finished { info, .. } => self.finished.push(info),
            ServerLinkEvent::Refused { .. } => self.refused += 1,
            _ => {}
        }
    }
}

/// Sends numbered messages every `every` while connected (if set).
#[derive(Default)]
struct Talker {
    every: Option<Duration>,
    size: usize,
    next: u64,
    sent: u64,
    refused: u64,
    events: Vec<(Duration, String)>,
    dropped: Vec<LinkInfo>,
    draws: Vec<u64>,
    fail_over: Option<veltix_sim::NodeId>,
}

impl ClientApp for Talker {
    fn on_start(&mut self, ctx: &mut ClientCtx<'_>) {
        self.draws = (0..5).map(|_| ctx.rng().next_u64()).collect();
        ctx.connect();
    }
    fn on_event(&mut self, ctx: &mut ClientCtx<'_>, event: SessionEvent) {
        let what = match &event {
            SessionEvent::Connected(_) => "connected".to_owned(),
            SessionEvent::Disconnected(d) => {
                format!("{:?} {} {}", d.reason, d.attempt, d.permanent)
            }
            SessionEvent::GaveUp(e) => format!("gave up: {e}"),
            _ => return,
        };
        self.events.push((ctx.elapsed(), what));
        match event {
            SessionEvent::Connected(_) => {
                if let Some(e) = self.every {
                    ctx.set_timer(e, 0);
                }
            }
            SessionEvent::GaveUp(_) => {
                if let Some(other) = self.fail_over.take() {
                    let old = ctx.server();
                    ctx.set_server(other);
                    self.fail_over = Some(old);
                    ctx.retry(None);
                }
            }
            _ => {}
        }
    }
    fn on_timer(&mut self, ctx: &mut ClientCtx<'_>, _tag: u64) {
        if !ctx.session().is_connected() {
            return;
        }
        let mut p = self.next.to_be_bytes().to_vec();
        p.resize(self.size.max(8), 0);
        match ctx.send(MSG, p) {
            Ok(_) => {
                self.next += 1;
                self.sent += 1;
            }
            Err(SendError::QueueFull { .. }) => self.refused += 1,
            Err(e) => panic!("{e}"),
        }
        if let Some(e) = self.every {
            ctx.set_timer(e, 0);
        }
    }
    fn on_link(&mut self, _ctx: &mut ClientCtx<'_>, event: ClientLinkEvent) {
        if let ClientLinkEvent::Dropped { info, .. } = event {
            self.dropped.push(info);
        }
    }
}

fn talker(every: Option<Duration>) -> Talker {
    Talker {
        every,
        size: 8,
        ..Talker::default()
    }
}

fn config() -> ClientConfig {
    ClientConfig::default()
        .retry(3)
        .retry_delay(Duration::from_millis(500))
}

#[test]
fn time_jumps_straight_to_the_next_thing_due() {
    let mut sim = Sim::new(1);
    let s = sim.add_server("s", &ServerConfig::default(), Sink::default());
    let c = sim.add_client("c", &config(), s, talker(None));
    sim.run_for(Duration::from_secs(3600));
    assert_eq!(sim.elapsed(), Duration::from_secs(3600));
    assert!(sim.session(c).unwrap().is_connected());
    // Connecting took a handful of steps; an idle hour takes none.
    assert!(sim.stats().steps < 30, "{:?}", sim.stats());
    assert_eq!(sim.step(), None, "nothing is scheduled");
}

#[test]
fn a_receiver_that_stops_reading_fills_the_senders_queue_then_everything_lands() {
    let mut sim = Sim::new(2);
    let mut links = LinkConfig::none();
    links.window = 16 * 1024;
    sim.set_link_config(links);
    let sink = Sink {
        pause: true,
        ..Sink::default()
    };
    let s = sim.add_server("s", &ServerConfig::default().max_outbound(64 * 1024), sink);
    let mut t = talker(Some(Duration::from_millis(1)));
    t.size = 4096;
    let c = sim.add_client("c", &config().max_outbound(64 * 1024), s, t);
    // The server takes no events for 5 s: its core stops decoding, its
    // driver stops reading, the pipe and then the client's queue fill.
    sim.with_server(s, |_: &mut Sink, ctx| {
        ctx.set_timer(Duration::from_secs(5), 0);
    });
    sim.run_for(Duration::from_millis(4999));
    let talker = sim.client_app::<Talker>(c).unwrap();
    assert!(
        talker.refused > 1000,
        "send refused when the queue was full"
    );
    assert!(sim.server_app::<Sink>(s).unwrap().got.is_empty());
    // Time advanced by the client's 1 ms timer, never spinning on the full pipe.
    assert!(sim.stats().steps < 20_000, "{:?}", sim.stats());
    sim.run_for(Duration::from_secs(5));
    sim.with_client(c, |t: &mut Talker, _| t.every = None);
    sim.run_for(Duration::from_secs(5));
    let sent = sim.client_app::<Talker>(c).unwrap().sent;
    let got = &sim.server_app::<Sink>(s).unwrap().got;
    assert_eq!(got.len() as u64, sent, "every accepted message arrived");
    assert!(
        got.iter().enumerate().all(|(i, &(_, n))| n == i as u64),
        "in order"
    );
}

#[test]
fn a_partition_holds_bytes_until_it_heals() {
    let mut sim = Sim::new(3);
    sim.set_link_config(LinkConfig::none().with_latency(Duration::from_millis(10)));
    let s = sim.add_server("s", &ServerConfig::default(), Sink::default());
    let c = sim.add_client("c", &config(), s, talker(Some(Duration::from_millis(100))));
    let t0 = sim.start();
    sim.partition(
        Partition::between(&[c], &[s])
            .from(t0 + Duration::from_secs(5))
            .until(t0 + Duration::from_secs(15)),
    );
    sim.run_for(Duration::from_secs(20));
    let got = &sim.server_app::<Sink>(s).unwrap().got;
    let cut = Duration::from_millis(5010)..Duration::from_secs(15);
    assert!(!got.iter().any(|(t, _)| cut.contains(t)), "nothing crossed");
    let at_heal = got
        .iter()
        .filter(|(t, _)| *t == Duration::from_secs(15))
        .count();
    assert!(at_heal > 90, "what was held arrived at the heal: {at_heal}");
    assert!(
        got.iter().enumerate().all(|(i, &(_, n))| n == i as u64),
        "in order, no loss"
    );
    let t = sim.client_app::<Talker>(c).unwrap();
    assert_eq!(t.events.len(), 1, "the connection survived: {:?}", t.events);
}

#[test]
fn a_dial_across_a_partition_waits_for_the_heal_or_its_deadline() {
    // Healed within the dial deadline (3 s): the dial completes then.
    let mut sim = Sim::new(4);
    sim.set_trace_capacity(10_000);
    let s = sim.add_server("s", &ServerConfig::default(), Sink::default());
    let c = sim.add_client(
        "c",
        &config().handshake_timeout(Duration::from_secs(3)),
        s,
        talker(None),
    );
    sim.partition(Partition::isolate(s).until(sim.start() + Duration::from_secs(2)));
    sim.run_for(Duration::from_secs(10));
    let t = sim.client_app::<Talker>(c).unwrap();
    // Dialled at 0, connected at the heal, then the handshake (three 1 ms trips).
    assert_eq!(
        t.events,
        vec![(Duration::from_millis(2003), "connected".to_owned())]
    );
    assert_eq!(sim.stats().dials_held, 1);
    assert!(sim
        .trace()
        .entries()
        .any(|e| matches!(e.kind, TraceKind::Healed(_))));

    // Healed too late: the session's dial deadline fails the attempt, the
    // retries (every 500 ms) are held too, the last one connects after the heal.
    let mut sim = Sim::new(4);
    let s = sim.add_server("s", &ServerConfig::default(), Sink::default());
    let c = sim.add_client(
        "c",
        &config().handshake_timeout(Duration::from_secs(3)),
        s,
        talker(None),
    );
    sim.partition(Partition::isolate(s).until(sim.start() + Duration::from_secs(8)));
    sim.run_for(Duration::from_secs(20));
    let t = sim.client_app::<Talker>(c).unwrap();
    let reports: Vec<&str> = t.events.iter().map(|(_, e)| e.as_str()).collect();
    // Dial at 0 held; its deadline at 3 s (report 0), attempt 1 at once,
    // held, deadline at 6 s (report 1); attempt 2 at 6.5 s connects at the heal.
    assert_eq!(reports, ["Error 0 false", "Error 1 false", "connected"]);
    assert!(t.events[2].0 >= Duration::from_secs(8));
    assert!(sim.session(c).unwrap().is_connected());
}

#[test]
fn clients_fail_over_to_another_server() {
    let mut sim = Sim::new(5);
    let a = sim.add_server("a", &ServerConfig::default(), Sink::default());
    let b = sim.add_server("b", &ServerConfig::default(), Sink::default());
    let mut t = talker(Some(Duration::from_millis(200)));
    t.fail_over = Some(b);
    let c = sim.add_client("c", &config().retry(1), a, t);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.server_app::<Sink>(a).unwrap().connected, 1);
    // Server a goes dark: the client gives up on it and moves to b.
    sim.partition(Partition::isolate(a));
    sim.with_client(c, |_: &mut Talker, ctx| ctx.disconnect());
    sim.with_client(c, |_: &mut Talker, ctx| ctx.retry(None));
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.server_app::<Sink>(b).unwrap().connected, 1);
    assert!(!sim.server_app::<Sink>(b).unwrap().got.is_empty());
}

#[test]
fn a_full_server_refuses_and_the_client_reads_why() {
    let mut sim = Sim::new(6);
    let s = sim.add_server(
        "s",
        &ServerConfig::default().max_connection(Some(1)),
        Sink::default(),
    );
    let first = sim.add_client("first", &config(), s, talker(None));
    sim.run_for(Duration::from_secs(1));
    let second = sim.add_client("second", &config(), s, talker(None));
    sim.run_for(Duration::from_secs(5));
    assert!(sim.session(first).unwrap().is_connected());
    let t = sim.client_app::<Talker>(second).unwrap();
    assert_eq!(
        t.events[0].1,
        format!(
            "{:?} 0 true",
            DisconnectReason::Rejected("server_full".into())
        )
    );
    assert!(t.dropped[0].refusal_delivered && t.dropped[0].peer.is_none());
    assert_eq!(sim.server_app::<Sink>(s).unwrap().refused, 1);
    assert_eq!(sim.stats().server_full, 1);
}

#[test]
fn resets_and_flipped_bits_are_ground_truth_in_link_info() {
    let mut sim = Sim::new(7);
    let mut links = LinkConfig::none();
    links.corrupt = 1.0;
    links.corrupt_within = 2_000;
    links.reset = 1.0;
    links.reset_within = 20_000;
    sim.set_link_config(links);
    let s = sim.add_server("s", &ServerConfig::default(), Sink::default());
    let c = sim.add_client("c", &config(), s, talker(Some(Duration::from_millis(10))));
    let seen = std::rc::Rc::new(std::cell::Cell::new(0));
    let counter = seen.clone();
    sim.observe(move |e| {
        if matches!(e.kind, TraceKind::Corrupted { .. }) {
            counter.set(counter.get() + 1);
        }
    });
    sim.run_for(Duration::from_secs(10));
    let stats = sim.stats();
    assert!(stats.resets > 0 && stats.corruptions > 0, "{stats:?}");
    assert_eq!(
        seen.get(),
        stats.corruptions,
        "the observer saw every flipped bit"
    );
    let t = sim.client_app::<Talker>(c).unwrap();
    let reset = t.dropped.iter().filter(|i| i.reset).count();
    assert!(reset > 0, "{:?}", t.dropped);
    assert!(t
        .dropped
        .iter()
        .any(|i| i.to_server.corrupted || i.to_client.corrupted));
    assert!(
        stats.discarded_bytes > 0,
        "receivers dropped corrupted frames"
    );
}

#[test]
fn adding_a_node_leaves_the_others_randomness_alone() {
    let draws = |extra: bool| {
        let mut sim = Sim::new(8);
        let s = sim.add_server("s", &ServerConfig::default(), Sink::default());
        if extra {
            sim.add_client("newcomer", &config(), s, talker(None));
        }
        let c = sim.add_client("c", &config(), s, talker(None));
        sim.run_for(Duration::from_secs(1));
        sim.client_app::<Talker>(c).unwrap().draws.clone()
    };
    assert_eq!(draws(false), draws(true));
}

#[test]
fn a_busy_application_fails_with_its_seed_instead_of_hanging() {
    struct Busy;
    impl ClientApp for Busy {
        fn on_start(&mut self, ctx: &mut ClientCtx<'_>) {
            ctx.set_timer(Duration::ZERO, 0);
        }
        fn on_event(&mut self, _: &mut ClientCtx<'_>, _: SessionEvent) {}
        fn on_timer(&mut self, ctx: &mut ClientCtx<'_>, _: u64) {
            ctx.set_timer(Duration::ZERO, 0); // forever, at one instant
        }
    }
    let mut sim = Sim::new(9);
    sim.set_step_budget(1_000);
    sim.set_replay_command("REPLAY={seed}");
    let s = sim.add_server("s", &ServerConfig::default(), Sink::default());
    sim.add_client("busy", &config(), s, Busy);
    let e = catch_unwind(AssertUnwindSafe(|| sim.run_for(Duration::from_secs(1))))
        .expect_err("the budget stops it");
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("step budget"), "{msg}");
    assert!(msg.contains("seed 9") && msg.contains("REPLAY=9"), "{msg}");
    assert!(
        msg.contains("busy") && msg.contains("Timer"),
        "the trace's end: {msg}"
    );
}

#[test]
fn the_trace_is_bounded_and_hashes_everything() {
    let run = |capacity: usize, note: bool| {
        let mut sim = Sim::new(10);
        sim.set_trace_capacity(capacity);
        let s = sim.add_server("s", &ServerConfig::default(), Sink::default());
        sim.add_client("c", &config(), s, talker(Some(Duration::from_millis(50))));
        sim.run_for(Duration::from_secs(2));
        if note {
            sim.note("checkpoint");
        }
        sim
    };
    let small = run(10, false);
    let big = run(usize::MAX, false);
    assert_eq!(small.trace().entries().len(), 10);
    assert!(big.trace().len() > 100);
    assert_eq!(
        small.fingerprint(),
        big.fingerprint(),
        "the hash covers every entry"
    );
    assert!(small
        .trace()
        .entries()
        .eq(big.trace().entries().skip(big.trace().entries().len() - 10)));
    assert_ne!(small.fingerprint(), run(10, true).fingerprint());
    let line = big.trace().render(big.trace().entries().nth(5).unwrap());
    assert!(
        line.contains(" c ") || line.contains(" s ") || line.contains(" - "),
        "{line}"
    );
}

#[test]
fn run_until_condition_stops_as_soon_as_it_holds() {
    let mut sim = Sim::new(11);
    let s = sim.add_server("s", &ServerConfig::default(), Sink::default());
    let c = sim.add_client("c", &config(), s, talker(None));
    let deadline = sim.now() + Duration::from_secs(60);
    assert!(sim.run_until_condition(deadline, |sim| sim
        .session(c)
        .is_some_and(|s| s.is_connected())));
    assert!(
        sim.elapsed() < Duration::from_millis(100),
        "{:?}",
        sim.elapsed()
    );
    let until: Instant = sim.now() + Duration::from_secs(1);
    assert!(!sim.run_until_condition(until, |_| false));
    assert_eq!(sim.now(), until);
}
