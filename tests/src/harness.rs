//! What the blocking tests over [`drivers`](crate::drivers) share: the
//! macros that instantiate one generic test body per driver (or per pair of
//! drivers), and bounded waits.
//!
//! [`both!`](crate::both) and [`pairs!`](crate::pairs) are exported at the
//! crate root (`veltix_tests::both!`); each may be invoked once per test
//! file (it defines fixed module names).

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Instantiates each generic test `fn name<D: Driver>()` of the calling
/// module for both drivers, as `std_driver::name` (veltix-std) and
/// `tokio_driver::name` (veltix-tokio).
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod std_driver {
            $(#[test] fn $name() { super::$name::<$crate::drivers::Std>(); })*
        }
        mod tokio_driver {
            $(#[test] fn $name() { super::$name::<$crate::drivers::Tokio>(); })*
        }
    };
}

/// Instantiates each generic test `fn name<S: Driver, C: Driver>()` (server
/// driver `S`, client driver `C`) of the calling module on every pair, as
/// `pairs::name::{std,tokio}_server_{std,tokio}_client`.
#[macro_export]
macro_rules! pairs {
    ($($name:ident),* $(,)?) => {
        mod pairs {
            use $crate::drivers::{Std, Tokio};
            $(
                mod $name {
                    use super::*;
                    #[test] fn std_server_std_client() { super::super::$name::<Std, Std>(); }
                    #[test] fn std_server_tokio_client() { super::super::$name::<Std, Tokio>(); }
                    #[test] fn tokio_server_std_client() { super::super::$name::<Tokio, Std>(); }
                    #[test] fn tokio_server_tokio_client() { super::super::$name::<Tokio, Tokio>(); }
                }
            )*
        }
    };
}

/// Polls `cond` every 2 ms until it holds; panics after 5 s.
#[track_caller]
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_within(what, Duration::from_secs(5), cond);
}

/// Polls `cond` every 2 ms until it holds; panics after `limit`.
#[track_caller]
pub fn wait_until_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `f` on a thread and returns its result and how long it took;
/// panics if it takes longer than `limit` (the thread is then left behind).
#[track_caller]
pub fn timed<R: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> (R, Duration) {
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => (r, t0.elapsed()),
        Err(_) => panic!("{what} did not return within {limit:?}"),
    }
}
