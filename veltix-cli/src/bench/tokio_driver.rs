//! The scenarios on `veltix-tokio` (one multi-threaded runtime, a worker per
//! CPU), and their raw-TCP baselines on tokio sockets with `TCP_NODELAY`:
//! the same frames, the same task-per-peer shape, no protocol.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;
use veltix_tokio::{Client, ClientConfig, Server, ServerConfig, ServerEvent};

use super::common::*;
use super::Bench;

/// The `veltix-tokio` driver, with the runtime every scenario runs on.
pub struct Tokio {
    rt: Runtime,
}

impl Tokio {
    /// A multi-threaded runtime with the default number of workers (one per CPU).
    pub fn new() -> Res<Tokio> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .ctx("starting the tokio runtime")?;
        Ok(Tokio { rt })
    }
}

async fn bind(tls: Option<&BenchTls>) -> Res<(Server, u16)> {
    let config = ServerConfig::new("127.0.0.1", 0);
    let server = match tls {
        Some(t) => Server::with_tls(config, t.server.clone()),
        None => Server::new(config),
    }
    .ctx("server config")?;
    server.start().await.ctx("starting the server")?;
    let port = server
        .local_addr()
        .ok_or("the server has no address")?
        .port();
    Ok((server, port))
}

async fn connect(port: u16, tls: Option<&BenchTls>) -> Res<Client> {
    let config = ClientConfig::new("127.0.0.1", port);
    let client = match tls {
        Some(t) => Client::with_tls(config, t.client.clone()),
        None => Client::new(config),
    }
    .ctx("client config")?;
    client.connect().await.ctx("connecting a client")?;
    Ok(client)
}

/// Takes the server's events until `target` messages arrived; when the last did.
fn count_messages(server: &Server, target: usize) -> JoinHandle<Res<Instant>> {
    let s = server.clone();
    tokio::spawn(async move {
        let mut got = 0;
        while let Some(ev) = s.recv().await {
            if let ServerEvent::Message(..) = ev {
                got += 1;
                if got == target {
                    return Ok(Instant::now());
                }
            }
        }
        Err(format!(
            "the server stopped after {got} of {target} messages"
        ))
    })
}

async fn join<T>(h: JoinHandle<Res<T>>) -> Res<T> {
    h.await
        .map_err(|e| format!("a benchmark task failed: {e}"))?
}

async fn last_arrival(h: JoinHandle<Res<Instant>>, deadline: Duration) -> Res<Instant> {
    match tokio::time::timeout(deadline, join(h)).await {
        Ok(r) => r,
        Err(_) => Err("not every message arrived in time".to_owned()),
    }
}

async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Res<()> {
    let end = Instant::now() + STRESS_DEADLINE;
    while !ready() {
        if Instant::now() >= end {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn raw_listener() -> Res<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .ctx("binding a raw listener")?;
    let a = l.local_addr().ctx("raw listener address")?;
    Ok((l, a))
}

async fn raw_connect(addr: SocketAddr) -> Res<TcpStream> {
    let s = TcpStream::connect(addr).await.ctx("raw connect")?;
    s.set_nodelay(true).ctx("TCP_NODELAY")?;
    Ok(s)
}

/// A reader task that consumes `bytes` bytes; when the last arrived.
fn raw_reader(mut s: TcpStream, bytes: u64) -> JoinHandle<Res<Instant>> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; RAW_BULK_BUF];
        let mut got = 0u64;
        while got < bytes {
            match s.read(&mut buf).await {
                Ok(0) => return Err(format!("raw reader: EOF after {got} of {bytes} bytes")),
                Ok(n) => got += n as u64,
                Err(e) => return Err(format!("raw reader: {e}")),
            }
        }
        Ok(Instant::now())
    })
}

async fn latency(p: Params) -> Res<Latency> {
    let (server, port) = bind(p.tls).await?;
    // Nobody else reads the server's events: drain them so its queue never fills.
    let s = server.clone();
    let drain = tokio::spawn(async move { while s.recv().await.is_some() {} });
    let client = connect(port, p.tls).await?;
    let run = async {
        for _ in 0..PING_WARMUP {
            client.ping(Some(PING_TIMEOUT)).await.ctx("warm-up ping")?;
        }
        let mut samples = Vec::with_capacity(p.iterations);
        for _ in 0..p.iterations {
            let t = Instant::now();
            client.ping(Some(PING_TIMEOUT)).await.ctx("ping")?;
            samples.push(t.elapsed());
        }
        Ok::<_, String>(samples)
    };
    let samples = run.await;
    client.disconnect().await;
    server.shutdown(Duration::from_secs(2)).await;
    let _ = drain.await;
    Ok(Latency::of(&mut samples?))
}

async fn raw_latency(p: Params) -> Res<Latency> {
    let (listener, addr) = raw_listener().await?;
    let (ping, pong) = ping_pong_frames();
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.ctx("raw accept")?;
        s.set_nodelay(true).ctx("TCP_NODELAY")?;
        let mut buf = [0u8; 15];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&pong).await.is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut s = raw_connect(addr).await?;
    let mut buf = [0u8; 15];
    let mut samples = Vec::with_capacity(p.iterations);
    for i in 0..PING_WARMUP + p.iterations {
        let t = Instant::now();
        s.write_all(&ping).await.ctx("raw ping write")?;
        s.read_exact(&mut buf).await.ctx("raw ping read")?;
        if i >= PING_WARMUP {
            samples.push(t.elapsed());
        }
    }
    drop(s);
    join(echo).await?;
    Ok(Latency::of(&mut samples))
}

async fn burst(p: Params) -> Res<Flow> {
    let (server, port) = bind(p.tls).await?;
    let counter = count_messages(&server, p.count);
    let client = connect(port, p.tls).await?;
    let payload = Bytes::from(vec![b'X'; p.payload]);
    let run = async {
        let start = Instant::now();
        for _ in 0..p.count {
            client
                .send(PLAYER_MOVE, payload.clone(), Some(STRESS_DEADLINE))
                .await
                .ctx("send")?;
        }
        let sent = Instant::now();
        let last_arrival = last_arrival(counter, BURST_DEADLINE).await?;
        Ok(Flow {
            messages: p.count,
            start,
            sent,
            last_arrival,
        })
    };
    let flow = run.await;
    client.disconnect().await;
    server.shutdown(Duration::from_secs(2)).await;
    flow
}

async fn raw_burst(p: Params) -> Res<Flow> {
    let (listener, addr) = raw_listener().await?;
    let one = frame(PLAYER_MOVE, 0, &vec![b'X'; p.payload]);
    let total = (one.len() * p.count) as u64;
    let reader = tokio::spawn(async move {
        let (s, _) = listener.accept().await.ctx("raw accept")?;
        join(raw_reader(s, total)).await
    });
    let mut s = raw_connect(addr).await?;
    let start = Instant::now();
    for _ in 0..p.count {
        s.write_all(&one).await.ctx("raw write")?;
    }
    let sent = Instant::now();
    let last_arrival = join(reader).await?;
    Ok(Flow {
        messages: p.count,
        start,
        sent,
        last_arrival,
    })
}

async fn stress(p: Params) -> Res<Flow> {
    let total = p.clients * p.msgs;
    let (server, port) = bind(p.tls).await?;
    let counter = count_messages(&server, total);
    let mut clients = Vec::with_capacity(p.clients);
    let run = async {
        for _ in 0..p.clients {
            clients.push(connect(port, p.tls).await?);
        }
        wait_for("the server to see every client", || {
            server.clients().len() == p.clients
        })
        .await?;
        // One sender task per client, released together.
        let go = Arc::new(Barrier::new(p.clients + 1));
        let senders: Vec<JoinHandle<Res<()>>> = clients
            .iter()
            .map(|c| {
                let (c, go, msgs) = (c.clone(), go.clone(), p.msgs);
                // Each client its own payload: no refcount shared between clients.
                let payload = Bytes::from(vec![0u8; STRESS_PAYLOAD]);
                tokio::spawn(async move {
                    go.wait().await;
                    for _ in 0..msgs {
                        c.send(PLAYER_MOVE, payload.clone(), Some(STRESS_DEADLINE))
                            .await
                            .ctx("send")?;
                    }
                    Ok(())
                })
            })
            .collect();
        let start = Instant::now();
        go.wait().await;
        for s in senders {
            join(s).await?;
        }
        let sent = Instant::now();
        let last_arrival = last_arrival(counter, STRESS_DEADLINE).await?;
        Ok(Flow {
            messages: total,
            start,
            sent,
            last_arrival,
        })
    };
    let flow = run.await;
    for c in &clients {
        c.disconnect().await;
    }
    server.shutdown(Duration::from_secs(2)).await;
    flow
}

async fn raw_stress(p: Params) -> Res<Flow> {
    let (listener, addr) = raw_listener().await?;
    let one = Arc::new(frame(PLAYER_MOVE, 0, &[0u8; STRESS_PAYLOAD]));
    let per_conn = (one.len() * p.msgs) as u64;
    let clients = p.clients;
    let readers = tokio::spawn(async move {
        let mut rs = Vec::with_capacity(clients);
        for _ in 0..clients {
            let (s, _) = listener.accept().await.ctx("raw accept")?;
            rs.push(raw_reader(s, per_conn));
        }
        let mut last: Option<Instant> = None;
        for r in rs {
            let at = join(r).await?;
            last = Some(last.map_or(at, |l| l.max(at)));
        }
        last.ok_or_else(|| "no raw readers".to_owned())
    });
    let go = Arc::new(Barrier::new(p.clients + 1));
    let mut writers = Vec::with_capacity(p.clients);
    for _ in 0..p.clients {
        let mut s = raw_connect(addr).await?;
        let (go, one, msgs) = (go.clone(), one.clone(), p.msgs);
        writers.push(tokio::spawn(async move {
            go.wait().await;
            for _ in 0..msgs {
                s.write_all(&one).await.ctx("raw write")?;
            }
            Ok(s)
        }));
    }
    let start = Instant::now();
    go.wait().await;
    let mut keep = Vec::with_capacity(p.clients);
    for w in writers {
        keep.push(join(w).await?);
    }
    let sent = Instant::now();
    let last_arrival = join(readers).await?;
    Ok(Flow {
        messages: p.clients * p.msgs,
        start,
        sent,
        last_arrival,
    })
}

async fn memory(p: Params) -> Res<f64> {
    let (server, port) = bind(None).await?;
    let s = server.clone();
    let drain = tokio::spawn(async move { while s.recv().await.is_some() {} });
    let mut clients = Vec::with_capacity(MEMORY_WARM_CLIENTS + p.idle);
    let run = async {
        for _ in 0..MEMORY_WARM_CLIENTS {
            clients.push(connect(port, None).await?);
        }
        wait_for("the warm clients", || {
            server.clients().len() == MEMORY_WARM_CLIENTS
        })
        .await?;
        tokio::time::sleep(MEMORY_SETTLE).await;
        let before = rss_bytes()?;
        for _ in 0..p.idle {
            clients.push(connect(port, None).await?);
        }
        wait_for("the idle clients", || {
            server.clients().len() == MEMORY_WARM_CLIENTS + p.idle
        })
        .await?;
        tokio::time::sleep(MEMORY_SETTLE).await;
        Ok(per_client(before, rss_bytes()?, p.idle))
    };
    let r = run.await;
    for c in &clients {
        c.disconnect().await;
    }
    server.shutdown(Duration::from_secs(2)).await;
    let _ = drain.await;
    r
}

/// Idle raw connections, each end with a task waiting in `read` on a buffer
/// of the drivers' default size: the least a task-per-connection peer needs.
async fn raw_memory(p: Params) -> Res<f64> {
    let (listener, addr) = raw_listener().await?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    let want = MEMORY_WARM_CLIENTS + p.idle;
    let acceptor = tokio::spawn(async move {
        let mut readers = Vec::with_capacity(want);
        for _ in 0..want {
            let (s, _) = listener.accept().await.ctx("raw accept")?;
            readers.push(idle_reader(s));
            acc.fetch_add(1, Ordering::SeqCst);
        }
        Ok::<_, String>(readers)
    });
    let mut ends = Vec::with_capacity(want);
    let run = async {
        for _ in 0..MEMORY_WARM_CLIENTS {
            ends.push(idle_reader(raw_connect(addr).await?));
        }
        wait_for("raw accepts", || {
            accepted.load(Ordering::SeqCst) == MEMORY_WARM_CLIENTS
        })
        .await?;
        tokio::time::sleep(MEMORY_SETTLE).await;
        let before = rss_bytes()?;
        for _ in 0..p.idle {
            ends.push(idle_reader(raw_connect(addr).await?));
        }
        wait_for("raw accepts", || accepted.load(Ordering::SeqCst) == want).await?;
        tokio::time::sleep(MEMORY_SETTLE).await;
        Ok(per_client(before, rss_bytes()?, p.idle))
    };
    let r = run.await;
    // Ending the client ends ends every server end (EOF).
    for e in &ends {
        e.abort();
    }
    if let Ok(Ok(readers)) = acceptor.await {
        for h in readers {
            let _ = h.await;
        }
    }
    r
}

fn idle_reader(mut s: TcpStream) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; RAW_READ_BUF];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
    })
}

impl Bench for Tokio {
    fn latency(&self, p: &Params, raw: bool) -> Res<Latency> {
        if raw {
            self.rt.block_on(raw_latency(*p))
        } else {
            self.rt.block_on(latency(*p))
        }
    }
    fn burst(&self, p: &Params, raw: bool) -> Res<Flow> {
        if raw {
            self.rt.block_on(raw_burst(*p))
        } else {
            self.rt.block_on(burst(*p))
        }
    }
    fn stress(&self, p: &Params, raw: bool) -> Res<Flow> {
        if raw {
            self.rt.block_on(raw_stress(*p))
        } else {
            self.rt.block_on(stress(*p))
        }
    }
    fn memory(&self, p: &Params, raw: bool) -> Res<f64> {
        if raw {
            self.rt.block_on(raw_memory(*p))
        } else {
            self.rt.block_on(memory(*p))
        }
    }
}
