//! A small chat service, simulated: eight clients in three rooms over a
//! hostile network, checked as it runs (see `sim.rs`). The service's logic
//! (`logic.rs`) knows nothing of the simulator.
//!
//! ```sh
//! cargo run -p veltix-sim --example chat                 # seed 1
//! cargo run -p veltix-sim --example chat -- 42           # another seed
//! cargo run -p veltix-sim --example chat -- 42 partition # half the clients cut off for 30 s
//! cargo run -p veltix-sim --example chat -- 42 say-twice # a planted bug, caught with its seed
//! ```
//!
//! (The other planted bugs: `room-to-everyone`, `reply-to-another`.) The
//! tests in `veltix-sim/tests/chat.rs` run it over many seeds.

mod logic;
mod sim;

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let seed = args
        .next()
        .map_or(1, |s| s.parse().expect("a seed (a number)"));
    let mut scenario = sim::Scenario::new(seed);
    for a in args {
        match a.as_str() {
            "partition" => {
                scenario.partition = Some((Duration::from_secs(20), Duration::from_secs(50)));
            }
            "say-twice" => scenario.bug = Some(sim::Bug::SayTwice),
            "room-to-everyone" => scenario.bug = Some(sim::Bug::RoomToEveryone),
            "reply-to-another" => scenario.bug = Some(sim::Bug::ReplyToAnother),
            other => panic!("unknown option {other:?}"),
        }
    }
    let (outcome, sim) = sim::run(&scenario);
    println!("seed {seed}: {outcome:#?}");
    println!("{:?}", sim.stats());
    println!("the last trace entries:\n{}", sim.trace().render_tail(15));
}
