//! Loopback benchmark of `veltix-std`, side by side with raw-TCP baselines.
//!
//! Every scenario runs on `127.0.0.1` (port 0) in the same process and the
//! same run as its baseline, so only the ratios are meant to be compared
//! between machines or runs:
//!
//! * `ping`: `Client::ping` against a `Server`, sequentially, versus a
//!   raw ping-pong of the same 15-byte PING/PONG frames over blocking
//!   `std::net` sockets with `TCP_NODELAY`.
//! * `burst`: one client `send`s 1 000 000 messages of 64 B as fast as it can
//!   and the server counts them in `on_recv`, versus a raw one-way stream of
//!   the same 79-byte frames written 1000 per `write_all` and counted by a
//!   reader with a 64 KiB buffer.
//!
//! ```sh
//! cargo bench -p veltix-std --bench loopback [-- --json PATH]
//! ```
//!
//! It prints a table and, with `--json PATH`, writes a JSON summary.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use veltix_proto::frame::{encode_frame, HEADER_LEN};
use veltix_proto::SendError;
use veltix_std::{Client, ClientConfig, Error, MessageType, Server, ServerConfig};

/// Sequential pings measured.
const PINGS: usize = 2000;
/// Pings before measuring.
const PING_WARMUP: usize = 200;
/// Messages of the burst.
const BURST: u64 = 1_000_000;
/// Messages sent (on another type) before the burst, to warm the path up.
const BURST_WARMUP: u64 = 20_000;
/// Payload bytes per burst message.
const PAYLOAD: usize = 64;
/// Frames per `write_all` in the raw burst.
const RAW_BATCH: usize = 1000;
/// Read buffer of the raw burst receiver.
const RAW_READ_BUF: usize = 64 * 1024;

const BURST_TYPE: MessageType = MessageType::new(200);
const WARMUP_TYPE: MessageType = MessageType::new(201);

fn frame_bytes(t: MessageType, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_frame(t, id, payload, &mut v).expect("small frame");
    v
}

/// Percentiles of a set of durations, in microseconds.
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

impl Latency {
    fn of(samples: &mut [Duration]) -> Latency {
        samples.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            us(samples[i])
        };
        let total: Duration = samples.iter().sum();
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            mean: us(total) / samples.len() as f64,
        }
    }

    fn json(&self) -> Value {
        json!({ "p50_us": self.p50, "p90_us": self.p90, "p99_us": self.p99, "mean_us": self.mean })
    }
}

fn local_server(config: ServerConfig) -> (Server, u16) {
    let server = Server::new(config).expect("server config");
    server.start().expect("server start");
    let port = server.local_addr().expect("listening").port();
    (server, port)
}

fn connect(port: u16) -> Client {
    let client = Client::new(ClientConfig::new("127.0.0.1", port)).expect("client config");
    client.connect().expect("connect");
    client
}

// ------------------------------------------------------------------- ping

/// Pings per block; raw and veltix blocks alternate so that drift of the
/// machine's speed hits both alike.
const PING_BLOCK: usize = 100;

/// The raw ping-pong: a client socket and an echo thread answering each
/// 15-byte PING with a 15-byte PONG.
struct RawPing {
    sock: TcpStream,
    ping: Vec<u8>,
    echo: std::thread::JoinHandle<()>,
}

impl RawPing {
    fn start() -> RawPing {
        let ping = frame_bytes(MessageType::PING, 0, &[]);
        let pong = frame_bytes(MessageType::PONG, 0, &[]);
        assert_eq!(
            ping,
            [0x56, 0x58, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "PING frame"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let echo = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_nodelay(true).expect("nodelay");
            let mut buf = [0u8; HEADER_LEN];
            while s.read_exact(&mut buf).is_ok() {
                s.write_all(&pong).expect("pong");
            }
        });
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        RawPing { sock, ping, echo }
    }

    fn ping(&mut self) -> Duration {
        let mut buf = [0u8; HEADER_LEN];
        let t = Instant::now();
        self.sock.write_all(&self.ping).expect("ping");
        self.sock.read_exact(&mut buf).expect("pong");
        let d = t.elapsed();
        assert_eq!(&buf[..5], &[0x56, 0x58, 0, 0, 1], "PONG frame");
        d
    }

    fn stop(self) {
        drop(self.sock);
        self.echo.join().expect("echo thread");
    }
}

/// Returns (veltix, raw) latencies.
fn ping_both() -> (Latency, Latency) {
    let (server, port) = local_server(ServerConfig::new("127.0.0.1", 0));
    let client = connect(port);
    let mut raw = RawPing::start();
    let timeout = Some(Duration::from_secs(5));
    let veltix_ping = || {
        let t = Instant::now();
        client.ping(timeout).expect("ping");
        t.elapsed()
    };
    for _ in 0..PING_WARMUP {
        veltix_ping();
        raw.ping();
    }
    let mut vx = Vec::with_capacity(PINGS);
    let mut rw = Vec::with_capacity(PINGS);
    while vx.len() < PINGS {
        for _ in 0..PING_BLOCK {
            rw.push(raw.ping());
        }
        for _ in 0..PING_BLOCK {
            vx.push(veltix_ping());
        }
    }
    raw.stop();
    client.disconnect();
    server.shutdown(Duration::from_secs(5));
    (Latency::of(&mut vx), Latency::of(&mut rw))
}

// ------------------------------------------------------------------ burst

struct Burst {
    /// Messages per second handed to `send` (or written, raw).
    send_rate: f64,
    /// Messages per second from the first send to the last arrival.
    recv_rate: f64,
    /// `QueueFull` refusals retried (veltix only).
    queue_full: u64,
    elapsed: Duration,
}

impl Burst {
    fn json(&self) -> Value {
        json!({
            "send_rate_msg_s": self.send_rate,
            "recv_rate_msg_s": self.recv_rate,
            "queue_full_retries": self.queue_full,
            "elapsed_s": self.elapsed.as_secs_f64(),
        })
    }
}

/// What the server saw of the burst.
#[derive(Default)]
struct Arrivals {
    count: AtomicU64,
    warmup: AtomicU64,
    /// Payloads that were neither the common one nor (in last place) the last one.
    wrong: AtomicU64,
    /// Time of the M-th arrival and whether its payload was the last one.
    done: Mutex<Option<(Instant, bool)>>,
    done_cv: Condvar,
}

/// `client.send`, retried after `yield_now` while the outbound queue is full;
/// returns how many times it was full.
fn send(client: &Client, t: MessageType, p: &Bytes) -> u64 {
    let mut full = 0;
    loop {
        match client.try_send(t, p.clone()) {
            Ok(_) => return full,
            Err(Error::Send(SendError::QueueFull { .. })) => {
                full += 1;
                std::thread::yield_now();
            }
            Err(e) => panic!("send failed: {e}"),
        }
    }
}

fn burst_veltix() -> Burst {
    let payload = Bytes::from((0..PAYLOAD).map(|i| i as u8).collect::<Vec<u8>>());
    let mut last = vec![0xEEu8; PAYLOAD];
    last[..8].copy_from_slice(&(BURST - 1).to_be_bytes());
    let last = Bytes::from(last);

    let arrivals = Arc::new(Arrivals::default());
    let (server, port) = local_server(ServerConfig::new("127.0.0.1", 0));
    {
        let a = arrivals.clone();
        server
            .route(WARMUP_TYPE, move |_, _, _| {
                a.warmup.fetch_add(1, Ordering::Relaxed);
            })
            .expect("route");
        let a = arrivals.clone();
        let (common, last) = (payload.clone(), last.clone());
        server.on_recv(move |_, _, msg| {
            let n = a.count.fetch_add(1, Ordering::Relaxed) + 1;
            if n == BURST {
                let at = Instant::now();
                *a.done.lock().unwrap() = Some((at, msg.payload == last));
                a.done_cv.notify_all();
            } else if msg.message_type != BURST_TYPE || msg.payload != common {
                a.wrong.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let client = connect(port);

    for _ in 0..BURST_WARMUP {
        send(&client, WARMUP_TYPE, &payload);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while arrivals.warmup.load(Ordering::Relaxed) < BURST_WARMUP {
        assert!(Instant::now() < deadline, "warm-up did not arrive");
        std::thread::sleep(Duration::from_millis(1));
    }

    let mut queue_full = 0u64;
    let t0 = Instant::now();
    for _ in 0..BURST - 1 {
        queue_full += send(&client, BURST_TYPE, &payload);
    }
    queue_full += send(&client, BURST_TYPE, &last);
    let sent_at = Instant::now();

    let (arrived_at, last_ok) = {
        let mut done = arrivals.done.lock().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.is_none() {
            let now = Instant::now();
            assert!(now < deadline, "burst did not arrive");
            done = arrivals
                .done_cv
                .wait_timeout(done, deadline - now)
                .unwrap()
                .0;
        }
        done.expect("set")
    };
    // Anything extra (a duplicate) would show up here.
    std::thread::sleep(Duration::from_millis(50));
    let count = arrivals.count.load(Ordering::Relaxed);
    let wrong = arrivals.wrong.load(Ordering::Relaxed);
    client.disconnect();
    server.shutdown(Duration::from_secs(5));
    assert_eq!(
        count, BURST,
        "server received {count} messages, sent {BURST}"
    );
    assert_eq!(
        wrong, 0,
        "{wrong} messages had an unexpected type or payload"
    );
    assert!(
        last_ok,
        "the last message to arrive is not the last one sent"
    );

    Burst {
        send_rate: BURST as f64 / (sent_at - t0).as_secs_f64(),
        recv_rate: BURST as f64 / (arrived_at - t0).as_secs_f64(),
        queue_full,
        elapsed: arrived_at - t0,
    }
}

fn burst_raw() -> Burst {
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| i as u8).collect();
    let frame = frame_bytes(BURST_TYPE, 0, &payload);
    let frame_len = frame.len();
    let batch: Vec<u8> = frame.repeat(RAW_BATCH);
    let total = BURST as usize * frame_len;

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let last_frame = frame.clone();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = vec![0u8; RAW_READ_BUF];
        let (mut got, mut last_n) = (0usize, 0usize);
        while got < total {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => (got, last_n) = (got + n, n),
                Err(e) => panic!("read: {e}"),
            }
        }
        let at = Instant::now();
        assert_eq!(got, total, "raw receiver got {got} bytes of {total}");
        if last_n >= frame_len {
            assert_eq!(
                &buf[last_n - frame_len..last_n],
                &last_frame[..],
                "last frame"
            );
        }
        at
    });
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    let t0 = Instant::now();
    for _ in 0..BURST as usize / RAW_BATCH {
        c.write_all(&batch).expect("write");
    }
    let sent_at = Instant::now();
    let arrived_at = receiver.join().expect("receiver");
    drop(c);
    Burst {
        send_rate: BURST as f64 / (sent_at - t0).as_secs_f64(),
        recv_rate: BURST as f64 / (arrived_at - t0).as_secs_f64(),
        queue_full: 0,
        elapsed: arrived_at - t0,
    }
}

// ------------------------------------------------------------------- main

fn json_path() -> Option<String> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    while let Some(a) = args.next() {
        if a == "--json" {
            path = Some(args.next().expect("--json needs a path"));
        } else if let Some(p) = a.strip_prefix("--json=") {
            path = Some(p.to_owned());
        }
        // Anything else (cargo's `--bench`) is ignored.
    }
    path
}

/// The 1-minute load average (Linux), to tell a busy machine from a quiet one.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn mps(x: f64) -> String {
    format!("{:.2} M/s", x / 1e6)
}

/// Runs every scenario, prints the table and writes the JSON summary.
fn main() {
    let json_out = json_path();
    let load_before = load_average();

    let (vx_ping, raw_ping) = ping_both();
    let raw_burst = burst_raw();
    let vx_burst = burst_veltix();

    let load_after = load_average();
    let ping_ratio = vx_ping.p50 / raw_ping.p50;
    let burst_ratio = vx_burst.recv_rate / raw_burst.recv_rate;
    let ping_ok = ping_ratio <= 1.5;
    let burst_ok = vx_burst.recv_rate >= 2e6;
    let met = |ok: bool| if ok { "met" } else { "MISSED" };

    println!();
    println!(
        "veltix-std loopback benchmark (127.0.0.1, {PINGS} pings, {BURST} x {PAYLOAD} B burst)"
    );
    println!();
    println!(
        "{:<26} {:>14} {:>14} {:>9}",
        "metric", "veltix-std", "raw TCP", "ratio"
    );
    println!("{}", "-".repeat(66));
    for (name, v, r) in [
        ("ping p50 (µs)", vx_ping.p50, raw_ping.p50),
        ("ping p90 (µs)", vx_ping.p90, raw_ping.p90),
        ("ping p99 (µs)", vx_ping.p99, raw_ping.p99),
        ("ping mean (µs)", vx_ping.mean, raw_ping.mean),
    ] {
        println!("{name:<26} {v:>14.1} {r:>14.1} {:>8.2}x", v / r);
    }
    for (name, v, r) in [
        ("burst send rate", vx_burst.send_rate, raw_burst.send_rate),
        (
            "burst recv rate (e2e)",
            vx_burst.recv_rate,
            raw_burst.recv_rate,
        ),
    ] {
        println!("{name:<26} {:>14} {:>14} {:>8.2}x", mps(v), mps(r), v / r);
    }
    println!(
        "{:<26} {:>14} {:>14}",
        "burst QueueFull retries", vx_burst.queue_full, "-"
    );
    println!();
    println!(
        "target ping p50 ratio <= 1.5: {:.2} ({})",
        ping_ratio,
        met(ping_ok)
    );
    println!(
        "target burst e2e >= 2 M msg/s: {} ({}); {:.1}% of raw",
        mps(vx_burst.recv_rate),
        met(burst_ok),
        burst_ratio * 100.0
    );
    println!(
        "correctness: server received exactly {BURST} messages, payloads and last payload as sent"
    );
    let load = |l: Option<f64>| l.map_or("?".to_owned(), |l| format!("{l:.2}"));
    println!(
        "load average (1 min): {} before, {} after; {} CPUs",
        load(load_before),
        load(load_after),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    if let Some(path) = json_out {
        let summary = json!({
            "load_average_1m": { "before": load_before, "after": load_after },
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "ping": {
                "n": PINGS,
                "warmup": PING_WARMUP,
                "veltix": vx_ping.json(),
                "raw": raw_ping.json(),
                "ratio_p50": ping_ratio,
                "target_ratio_p50": 1.5,
                "target_met": ping_ok,
            },
            "burst": {
                "messages": BURST,
                "payload_bytes": PAYLOAD,
                "frame_bytes": HEADER_LEN + PAYLOAD,
                "veltix": vx_burst.json(),
                "raw": raw_burst.json(),
                "ratio_recv": burst_ratio,
                "target_recv_msg_s": 2e6,
                "target_met": burst_ok,
                "verified": true,
            },
        });
        let text = serde_json::to_string_pretty(&summary).expect("json");
        std::fs::write(&path, text + "\n").expect("write the JSON summary");
        println!("JSON summary written to {path}");
    }
}
