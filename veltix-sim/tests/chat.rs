//! The chat example (`examples/chat/`) over many seeds: its invariants
//! (nothing delivered twice, replies only to the asker, room messages to
//! exactly the connected members, reconnects within the retry policy,
//! everybody back after the network calms down) hold on a hostile network
//! and across a partition that heals; one seed replays bit for bit; and
//! planted bugs are caught, with their seed.
//!
//! `VELTIX_SIM_SEEDS=N` adds N random seeds to each test (soak);
//! `VELTIX_SIM_SEED=S` replays one.

#![allow(missing_docs)]

#[path = "../examples/chat/logic.rs"]
#[allow(dead_code)]
mod logic;
#[path = "../examples/chat/sim.rs"]
mod sim;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use sim::{run, Bug, Scenario};

use veltix_sim::seeds_from_env as seeds;

#[test]
fn chat_invariants_hold_over_many_seeds() {
    let (mut reconnects, mut lost) = (0, 0);
    for seed in seeds(1..=12) {
        let (o, sim) = run(&Scenario::new(seed));
        println!("seed {seed}: {o:?}");
        assert!(o.said > 100 && o.copies > 500, "seed {seed}: {o:?}");
        assert!(o.replies > 50, "seed {seed}: {o:?}");
        reconnects += o.connects.saturating_sub(8);
        lost += o.copies_lost;
        assert!(sim.stats().resets + sim.stats().dial_refusals > 0 || o.connects > 8);
    }
    // Over the fixed seeds, the faults bit: connections were lost and redone.
    assert!(
        reconnects > 0 && lost > 0,
        "{reconnects} reconnects, {lost} copies lost"
    );
}

#[test]
fn chat_survives_a_partition_that_heals() {
    let mut give_ups = 0;
    for seed in seeds(1..=4) {
        let mut s = Scenario::new(seed);
        // Half the clients lose the server for 30 s: their requests time
        // out, they reconnect (dials held, then timed out), often give up,
        // retry; everybody is connected again at the end (checked by `run`).
        s.partition = Some((Duration::from_secs(20), Duration::from_secs(50)));
        let (o, sim) = run(&s);
        println!("seed {seed}: {o:?}");
        assert!(
            sim.stats().dials_held > 0 || o.requests_failed > 0,
            "seed {seed}: the partition went unnoticed: {o:?}"
        );
        give_ups += o.give_ups;
    }
    assert!(give_ups > 0, "no client ever gave up across the partition");
}

#[test]
fn one_seed_replays_the_chat_bit_for_bit() {
    let mut s = Scenario::new(7);
    s.partition = Some((Duration::from_secs(20), Duration::from_secs(40)));
    s.trace = usize::MAX;
    let (a, sa) = run(&s);
    let (b, sb) = run(&s);
    assert_eq!(a, b);
    assert_eq!(sa.fingerprint(), sb.fingerprint());
    assert!(sa.trace().len() > 10_000);
    assert_eq!(
        sa.trace().entries().len() as u64,
        sa.trace().len(),
        "every entry kept"
    );
    assert!(
        sa.trace().entries().eq(sb.trace().entries()),
        "entry by entry"
    );
    s.seed = 8;
    let (c, _) = run(&s);
    assert_ne!(a.fingerprint, c.fingerprint, "another seed, another run");
}

#[test]
fn planted_bugs_are_caught_with_their_seed() {
    for (bug, symptom) in [
        (Bug::RoomToEveryone, "not in it"),
        (Bug::ReplyToAnother, "reply"),
        (Bug::SayTwice, "twice"),
    ] {
        let mut s = Scenario::new(3);
        s.bug = Some(bug);
        let e = catch_unwind(AssertUnwindSafe(|| run(&s))).expect_err("the bug went unnoticed");
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains(symptom), "{bug:?}: {msg}");
        assert!(
            msg.contains("seed 3") && msg.contains("VELTIX_SIM_SEED=3 cargo test"),
            "{bug:?}: the report names the seed and the replay command: {msg}"
        );
    }
}
