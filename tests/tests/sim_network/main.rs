//! Deterministic simulation of whole Veltix networks: one server core and
//! many client cores on a virtual clock, joined by seeded faulty links (see
//! `sim.rs`). A fixed set of seeds runs in CI; `VELTIX_SIM_SEEDS=N` runs N
//! more random seeds (soak), and `VELTIX_SIM_SEED=S` replays one seed.

#![allow(missing_docs)]

mod sim;

use std::time::Duration;

use sim::{Faults, Sim};
use veltix_proto::RetryPolicy;

const TEN_MINUTES: Duration = Duration::from_secs(600);

fn policy() -> RetryPolicy {
    RetryPolicy::fixed(5, Duration::from_millis(700))
}

fn seeds(fixed: &[u64]) -> Vec<u64> {
    if let Ok(s) = std::env::var("VELTIX_SIM_SEED") {
        return vec![s.parse().expect("VELTIX_SIM_SEED is a number")];
    }
    let mut v = fixed.to_vec();
    if let Ok(n) = std::env::var("VELTIX_SIM_SEEDS") {
        let n: u64 = n.parse().expect("VELTIX_SIM_SEEDS is a number");
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        v.extend((0..n).map(|i| base.wrapping_add(i.wrapping_mul(0x9E37_79B9))));
    }
    v
}

#[test]
fn fifty_clients_ten_minutes_of_transport_faults() {
    for seed in seeds(&[1, 2, 3]) {
        let mut f = Faults::hostile();
        f.corrupt = 0.0;
        let r = Sim::new(seed, 50, Some(45), f, policy()).run(TEN_MINUTES);
        println!("{r:?}");
        assert!(
            r.delivered > 1000,
            "seed {seed}: too little traffic got through: {r:?}"
        );
        assert!(
            r.resets > 0 && r.connects > 50,
            "seed {seed}: the faults did not bite: {r:?}"
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
        let r = Sim::new(seed, 50, Some(45), Faults::hostile(), policy()).run(TEN_MINUTES);
        println!("{r:?}");
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
        let r = Sim::new(
            seed,
            20,
            None,
            Faults::none(Duration::from_millis(3)),
            policy(),
        )
        .run(Duration::from_secs(120));
        println!("{r:?}");
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
    let a = Sim::new(99, 10, Some(8), Faults::hostile(), policy()).run(Duration::from_secs(120));
    let b = Sim::new(99, 10, Some(8), Faults::hostile(), policy()).run(Duration::from_secs(120));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}
