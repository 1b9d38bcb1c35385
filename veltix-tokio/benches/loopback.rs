//! Loopback benchmark of the tokio driver, beside raw-TCP baselines measured
//! in the same run (figures on a shared VM drift between runs; compare ratios).
//!
//! Scenarios:
//! * `stress`: 100 clients each send 1 000 messages of 64 B to one server;
//!   rate = messages / (last arrival − first send). Baseline: the same
//!   frames written over 100 raw TCP connections and counted by the reader.
//! * `ping`: `Client::ping` round trips (p50/p90/p99) against raw TCP
//!   ping-pong of the same 15-byte frames.
//! * `memory`: resident memory per connected idle client, both ends in
//!   this process (RSS delta over 2 000 connections / 2 000).
//!
//! Run: `cargo bench -p veltix-tokio --bench loopback` (add `-- --json FILE`
//! for a machine-readable summary).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use veltix_proto::frame::encode_frame;
use veltix_tokio::{Client, ClientConfig, MessageType, Server, ServerConfig};

const T: MessageType = MessageType::new(200);
const CLIENTS: usize = 100;
const PER_CLIENT: usize = 1_000;
const PINGS: usize = 2_000;
const IDLE: usize = 2_000;

fn frame(t: u16, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_frame(MessageType::new(t), id, payload, &mut v).expect("small frame");
    v
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn started(config: ServerConfig) -> Server {
    let server = Server::new(config).expect("config");
    server.start().await.expect("bind");
    server
}

async fn connected(port: u16) -> Client {
    let c = Client::new(ClientConfig::new("127.0.0.1", port)).expect("config");
    c.connect().await.expect("connect");
    c
}

async fn stress_veltix() -> f64 {
    let server = Server::new(ServerConfig::new("127.0.0.1", 0)).expect("config");
    let total = (CLIENTS * PER_CLIENT) as u64;
    let received = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    let r = received.clone();
    // A handler counts: no recv loop.
    server.on_recv(move |_s: Server, _peer, m| {
        assert_eq!(m.payload.len(), 64);
        if r.fetch_add(1, Ordering::Relaxed) + 1 == total {
            if let Some(tx) = done_tx.lock().expect("lock").take() {
                let _ = tx.send(Instant::now());
            }
        }
        async {}
    });
    server.start().await.expect("bind");
    let port = server.local_addr().expect("running").port();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(connected(port).await);
    }
    let payload = Bytes::from(vec![0x42u8; 64]);
    let start = Instant::now();
    let mut senders = Vec::new();
    for c in &clients {
        let (c, p) = (c.clone(), payload.clone());
        senders.push(tokio::spawn(async move {
            for _ in 0..PER_CLIENT {
                c.send(T, p.clone(), None).await.expect("send");
            }
        }));
    }
    for s in senders {
        s.await.expect("sender");
    }
    let last = done_rx.await.expect("counter");
    assert_eq!(
        received.load(Ordering::Relaxed),
        total,
        "every message arrived"
    );
    for c in clients {
        c.disconnect().await;
    }
    server.shutdown(Duration::from_secs(2)).await;
    total as f64 / (last - start).as_secs_f64()
}

async fn stress_raw() -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let one = frame(200, 0, &[0x42; 64]);
    let per_conn = (one.len() * PER_CLIENT) as u64;
    let readers = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (mut s, _) = listener.accept().await.expect("accept");
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0u64;
                while got < per_conn {
                    let n = s.read(&mut buf).await.expect("read");
                    assert!(n > 0, "early EOF");
                    got += n as u64;
                }
                Instant::now()
            }));
        }
        let mut last = None;
        for t in tasks {
            let at = t.await.expect("reader");
            last = Some(last.map_or(at, |l: Instant| l.max(at)));
        }
        last.expect("some readers")
    });
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        conns.push(s);
    }
    let start = Instant::now();
    let mut writers = Vec::new();
    for mut s in conns {
        let one = one.clone();
        writers.push(tokio::spawn(async move {
            // Frames written one message at a time, like an application would.
            for _ in 0..PER_CLIENT {
                s.write_all(&one).await.expect("write");
            }
            s
        }));
    }
    let mut keep = Vec::new();
    for w in writers {
        keep.push(w.await.expect("writer"));
    }
    let last = readers.await.expect("readers");
    (CLIENTS * PER_CLIENT) as f64 / (last - start).as_secs_f64()
}

async fn ping_veltix() -> Vec<Duration> {
    let server = started(ServerConfig::new("127.0.0.1", 0)).await;
    let c = connected(server.local_addr().expect("running").port()).await;
    for _ in 0..200 {
        c.ping(None).await.expect("warm-up ping");
    }
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t = Instant::now();
        c.ping(None).await.expect("ping");
        rtts.push(t.elapsed());
    }
    c.disconnect().await;
    server.shutdown(Duration::from_secs(1)).await;
    rtts.sort();
    rtts
}

async fn ping_raw() -> Vec<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ping = frame(0, 0, b"");
    let pong = frame(1, 0, b"");
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = [0u8; 15];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&pong).await.is_err() {
                break;
            }
        }
    });
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = [0u8; 15];
    let mut rtts = Vec::with_capacity(PINGS);
    for i in 0..PINGS + 200 {
        let t = Instant::now();
        s.write_all(&ping).await.expect("write");
        s.read_exact(&mut buf).await.expect("read");
        if i >= 200 {
            rtts.push(t.elapsed());
        }
    }
    drop(s);
    let _ = echo.await;
    rtts.sort();
    rtts
}

async fn memory_per_idle_client() -> f64 {
    let server = started(ServerConfig::new("127.0.0.1", 0)).await;
    let port = server.local_addr().expect("running").port();
    // Connect and settle a first batch so lazily grown process state is not counted.
    let mut warm = Vec::new();
    for _ in 0..100 {
        warm.push(connected(port).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    let mut clients = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        clients.push(connected(port).await);
    }
    while server.clients().len() < IDLE + 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = rss_bytes();
    drop(clients);
    drop(warm);
    server.shutdown(Duration::from_secs(2)).await;
    after.saturating_sub(before) as f64 / IDLE as f64
}

/// Runs every scenario and prints the table (and JSON with `--json FILE`).
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let raw_stress = stress_raw().await;
        let veltix_stress = stress_veltix().await;
        let raw_ping = ping_raw().await;
        let veltix_ping = ping_veltix().await;
        let mem = memory_per_idle_client().await;
        let (rp50, vp50) = (percentile(&raw_ping, 0.5), percentile(&veltix_ping, 0.5));
        println!("veltix-tokio loopback benchmark ({} clients x {} x 64 B; {} pings; {} idle clients)", CLIENTS, PER_CLIENT, PINGS, IDLE);
        println!("{:<28} {:>16} {:>16} {:>8}", "scenario", "veltix-tokio", "raw TCP", "ratio");
        println!("{:<28} {:>14.0}/s {:>14.0}/s {:>8.2}", "stress: msgs received", veltix_stress, raw_stress, veltix_stress / raw_stress);
        for (name, p) in [("ping p50", 0.5), ("ping p90", 0.9), ("ping p99", 0.99)] {
            let (v, r) = (percentile(&veltix_ping, p), percentile(&raw_ping, p));
            println!("{:<28} {:>13.1} us {:>13.1} us {:>8.2}", name, v.as_secs_f64() * 1e6, r.as_secs_f64() * 1e6, v.as_secs_f64() / r.as_secs_f64());
        }
        println!("{:<28} {:>14.0} B {:>16} {:>8}", "memory per idle client", mem, "-", "-");
        println!("targets: stress >= 2 000 000/s; ping p50 <= 1.5x raw; memory < 16 384 B per client (both ends)");
        if let Some(path) = json_path {
            let summary = serde_json::json!({
                "stress_msgs_per_s": {"veltix_tokio": veltix_stress, "raw_tcp": raw_stress},
                "ping_p50_us": {"veltix_tokio": vp50.as_secs_f64() * 1e6, "raw_tcp": rp50.as_secs_f64() * 1e6},
                "memory_per_idle_client_bytes": mem,
            });
            std::fs::write(&path, serde_json::to_vec_pretty(&summary).expect("json")).expect("write json");
        }
    });
}
