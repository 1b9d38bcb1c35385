//! What both drivers' scenarios share: parameters, results, frames,
//! statistics, resident memory and the progress bar.

use std::fmt::Display;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use veltix_proto::frame::{encode_frame, HEADER_LEN};
use veltix_proto::MessageType;

/// A scenario failed (connect error, lost messages, ...): why, for a human.
pub type Res<T> = Result<T, String>;

/// Adds context to any displayable error.
pub trait Ctx<T> {
    /// `what: error`.
    fn ctx(self, what: &str) -> Res<T>;
}

impl<T, E: Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// Python's `PLAYER_MOVE` (401): the type of every burst and stress message.
pub const PLAYER_MOVE: MessageType = MessageType::new(401);
/// Payload of a stress message: Python's stress sends `b"\x00" * 32`.
pub const STRESS_PAYLOAD: usize = 32;
/// Pings before the measured ones (Python's latency `_WARMUP`).
pub const PING_WARMUP: usize = 20;
/// Per-ping timeout (Python's `ping_server(timeout=2.0)`).
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a burst may take to arrive (Python waits 10 s).
pub const BURST_DEADLINE: Duration = Duration::from_secs(10);
/// How long a stress run may take to arrive (Python waits 15 s).
pub const STRESS_DEADLINE: Duration = Duration::from_secs(15);
/// Clients connected before the memory measurement starts (Python measures
/// its first 10 clients separately and reports the 10 -> 50 slope too).
pub const MEMORY_WARM_CLIENTS: usize = 10;
/// Pause before each resident-memory reading, so connection set-up settles.
pub const MEMORY_SETTLE: Duration = Duration::from_millis(300);
/// Read buffer of the raw baselines' readers: the drivers' default `buffer_size`.
pub const RAW_READ_BUF: usize = 8192;
/// Read buffer of the raw throughput readers.
pub const RAW_BULK_BUF: usize = 64 * 1024;

/// Sizes of every scenario (defaults are Python's benchmark defaults).
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Measured pings.
    pub iterations: usize,
    /// Burst messages.
    pub count: usize,
    /// Burst payload bytes.
    pub payload: usize,
    /// Stress clients.
    pub clients: usize,
    /// Stress messages per client.
    pub msgs: usize,
    /// Idle clients measured by the memory scenario.
    pub idle: usize,
    /// Discarded passes of latency, burst and stress before the measured one.
    pub warmup: usize,
    /// Run veltix over TLS (latency, burst, stress).
    pub tls: Option<&'static BenchTls>,
}

/// The TLS configs of a `--tls` run: a throwaway certificate for 127.0.0.1.
#[derive(Debug)]
pub struct BenchTls {
    /// The server's.
    pub server: veltix_tls::ServerTls,
    /// The clients' (trusting exactly that certificate).
    pub client: veltix_tls::ClientTls,
}

/// One encoded frame.
pub fn frame(t: MessageType, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_frame(t, id, payload, &mut v).expect("benchmark frames are small");
    v
}

/// The 15-byte PING and PONG frames the raw latency baseline exchanges.
pub fn ping_pong_frames() -> (Vec<u8>, Vec<u8>) {
    (
        frame(MessageType::PING, 1, b""),
        frame(MessageType::PONG, 1, b""),
    )
}

/// Round-trip statistics, in microseconds. Percentiles interpolate linearly
/// between ranks, as Python's `veltix.benchmark.stats.percentile` does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub mean: f64,
}

impl Latency {
    /// Statistics of `samples` (not empty).
    pub fn of(samples: &mut [Duration]) -> Latency {
        assert!(!samples.is_empty(), "no latency samples");
        samples.sort_unstable();
        let us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        let at = |pct: f64| {
            let rank = pct / 100.0 * (us.len() - 1) as f64;
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            us[lo] + (us[hi] - us[lo]) * (rank - lo as f64)
        };
        Latency {
            min: us[0],
            p50: at(50.0),
            p90: at(90.0),
            p95: at(95.0),
            p99: at(99.0),
            mean: us.iter().sum::<f64>() / us.len() as f64,
        }
    }
}

/// A one-way run: messages, when sending started and ended, when the last
/// one arrived.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub messages: usize,
    pub start: Instant,
    pub sent: Instant,
    pub last_arrival: Instant,
}

impl Flow {
    /// Messages per second handed to the sending API.
    pub fn send_rate(&self) -> f64 {
        self.messages as f64 / secs_nonzero(self.sent - self.start)
    }
    /// Messages per second from the first send to the last arrival.
    pub fn recv_rate(&self) -> f64 {
        self.messages as f64 / secs_nonzero(self.last_arrival - self.start)
    }
    /// Seconds from the first send to the last arrival.
    pub fn recv_secs(&self) -> f64 {
        (self.last_arrival - self.start).as_secs_f64()
    }
}

fn secs_nonzero(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

/// Counts arrivals and remembers when the `target`-th one came (blocking side).
pub struct Arrivals {
    target: usize,
    count: AtomicUsize,
    last: Mutex<Option<Instant>>,
    done: Condvar,
}

impl Arrivals {
    /// Waits for `target` arrivals.
    pub fn new(target: usize) -> Arrivals {
        Arrivals {
            target,
            count: AtomicUsize::new(0),
            last: Mutex::new(None),
            done: Condvar::new(),
        }
    }

    /// One more message arrived (one atomic add; the lock only for the last).
    pub fn arrived(&self) {
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.target {
            let now = Instant::now();
            *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
            self.done.notify_all();
        }
    }

    /// When the last message arrived, or an error saying how many did by `deadline`.
    pub fn wait(&self, deadline: Instant) -> Res<Instant> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(at) = *last {
                return Ok(at);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "only {} of {} messages arrived in time",
                    self.count.load(Ordering::Acquire),
                    self.target
                ));
            }
            last = self
                .done
                .wait_timeout(last, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// This process's resident memory, in bytes (`VmRSS`, Linux only).
pub fn rss_bytes() -> Res<u64> {
    let status = std::fs::read_to_string("/proc/self/status")
        .ctx("reading /proc/self/status (the memory scenario needs Linux)")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmRSS in /proc/self/status".to_owned())
}

/// Resident memory growth per connection between two readings.
pub fn per_client(before: u64, after: u64, clients: usize) -> f64 {
    (after as f64 - before as f64) / clients as f64
}

/// The progress bar on stderr: steps of the run, hidden when stderr is not a
/// terminal or when the output is JSON.
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar of `steps` steps, drawn only when `visible`.
    pub fn new(steps: u64, visible: bool) -> Progress {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(steps), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("valid template"),
        );
        // No steady tick: no extra thread wakes up during the measurements;
        // the bar is redrawn between steps only.
        Progress(bar)
    }

    /// A step starts.
    pub fn step(&self, what: String) {
        self.0.set_message(what);
    }

    /// A step ended.
    pub fn done(&self) {
        self.0.inc(1);
    }

    /// The run is over: erase the bar.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_python() {
        let mut s: Vec<Duration> = [4u64, 1, 3, 2]
            .iter()
            .map(|&u| Duration::from_micros(u))
            .collect();
        let l = Latency::of(&mut s);
        assert!((l.min - 1.0).abs() < 1e-9);
        assert!((l.p50 - 2.5).abs() < 1e-9);
        assert!((l.p90 - 3.7).abs() < 1e-9);
        assert!((l.mean - 2.5).abs() < 1e-9);
    }

    #[test]
    fn frames_have_the_wire_sizes() {
        let (ping, pong) = ping_pong_frames();
        assert_eq!((ping.len(), pong.len()), (15, 15));
        assert_eq!(frame(PLAYER_MOVE, 0, &[0; 64]).len(), 79);
    }

    #[test]
    fn arrivals_report_the_last_one_or_how_many_came() {
        let a = Arrivals::new(2);
        a.arrived();
        let err = a.wait(Instant::now()).unwrap_err();
        assert!(err.contains("1 of 2"), "{err}");
        a.arrived();
        assert!(a.wait(Instant::now()).is_ok());
    }
}
