//! The scenarios on `veltix-std` (blocking, threads), and their raw-TCP
//! baselines on blocking `std::net` sockets with `TCP_NODELAY`: the same
//! frames, the same threads-per-peer shape, no protocol.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use veltix_std::{Client, ClientConfig, MessageType, Server, ServerConfig};

use super::common::*;
use super::Bench;

/// The `veltix-std` driver.
pub struct Std;

fn start_server(on_recv: Option<Arc<Arrivals>>, tls: Option<&BenchTls>) -> Res<(Server, u16)> {
    let config = ServerConfig::new("127.0.0.1", 0);
    let server = match tls {
        Some(t) => Server::with_tls(config, t.server.clone()),
        None => Server::new(config),
    }
    .ctx("server config")?;
    if let Some(arrivals) = on_recv {
        server.on_recv(move |_, _, _| arrivals.arrived());
    }
    server.start().ctx("starting the server")?;
    let port = server
        .local_addr()
        .ok_or("the server has no address")?
        .port();
    Ok((server, port))
}

fn connect(port: u16, tls: Option<&BenchTls>) -> Res<Client> {
    let config = ClientConfig::new("127.0.0.1", port);
    let client = match tls {
        Some(t) => Client::with_tls(config, t.client.clone()),
        None => Client::new(config),
    }
    .ctx("client config")?;
    client.connect().ctx("connecting a client")?;
    Ok(client)
}

/// `send`, waiting while the outbound queue is full.
fn send(client: &Client, t: MessageType, payload: &Bytes) -> Res<()> {
    client
        .send(t, payload.clone(), Some(STRESS_DEADLINE))
        .map(|_| ())
        .ctx("send")
}

fn wait_for(what: &str, deadline: Duration, mut ready: impl FnMut() -> bool) -> Res<()> {
    let end = Instant::now() + deadline;
    while !ready() {
        if Instant::now() >= end {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn raw_pair_listener() -> Res<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").ctx("binding a raw listener")?;
    let a = l.local_addr().ctx("raw listener address")?;
    Ok((l, a))
}

fn raw_connect(addr: SocketAddr) -> Res<TcpStream> {
    let s = TcpStream::connect(addr).ctx("raw connect")?;
    s.set_nodelay(true).ctx("TCP_NODELAY")?;
    Ok(s)
}

/// A reader that consumes `bytes` bytes and returns when the last arrived.
fn raw_reader(mut s: TcpStream, bytes: u64) -> JoinHandle<Res<Instant>> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; RAW_BULK_BUF];
        let mut got = 0u64;
        while got < bytes {
            match s.read(&mut buf) {
                Ok(0) => return Err(format!("raw reader: EOF after {got} of {bytes} bytes")),
                Ok(n) => got += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("raw reader: {e}")),
            }
        }
        Ok(Instant::now())
    })
}

fn join<T>(h: JoinHandle<Res<T>>) -> Res<T> {
    h.join()
        .map_err(|_| "a benchmark thread panicked".to_owned())?
}

fn latency(p: &Params) -> Res<Latency> {
    let (server, port) = start_server(None, p.tls)?;
    let client = connect(port, p.tls)?;
    let run = || -> Res<Vec<Duration>> {
        for _ in 0..PING_WARMUP {
            client.ping(Some(PING_TIMEOUT)).ctx("warm-up ping")?;
        }
        let mut samples = Vec::with_capacity(p.iterations);
        for _ in 0..p.iterations {
            let t = Instant::now();
            client.ping(Some(PING_TIMEOUT)).ctx("ping")?;
            samples.push(t.elapsed());
        }
        Ok(samples)
    };
    let samples = run();
    client.disconnect();
    server.shutdown(Duration::from_secs(5));
    Ok(Latency::of(&mut samples?))
}

fn raw_latency(p: &Params) -> Res<Latency> {
    let (listener, addr) = raw_pair_listener()?;
    let (ping, pong) = ping_pong_frames();
    let echo = std::thread::spawn(move || -> Res<()> {
        let (mut s, _) = listener.accept().ctx("raw accept")?;
        s.set_nodelay(true).ctx("TCP_NODELAY")?;
        let mut buf = [0u8; 15];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&pong).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut s = raw_connect(addr)?;
    let mut buf = [0u8; 15];
    let mut samples = Vec::with_capacity(p.iterations);
    for i in 0..PING_WARMUP + p.iterations {
        let t = Instant::now();
        s.write_all(&ping).ctx("raw ping write")?;
        s.read_exact(&mut buf).ctx("raw ping read")?;
        if i >= PING_WARMUP {
            samples.push(t.elapsed());
        }
    }
    drop(s);
    join(echo)?;
    Ok(Latency::of(&mut samples))
}

fn burst(p: &Params) -> Res<Flow> {
    let arrivals = Arc::new(Arrivals::new(p.count));
    let (server, port) = start_server(Some(arrivals.clone()), p.tls)?;
    let client = connect(port, p.tls)?;
    let payload = Bytes::from(vec![b'X'; p.payload]);
    let run = || -> Res<Flow> {
        let start = Instant::now();
        for _ in 0..p.count {
            send(&client, PLAYER_MOVE, &payload)?;
        }
        let sent = Instant::now();
        let last_arrival = arrivals.wait(sent + BURST_DEADLINE)?;
        Ok(Flow {
            messages: p.count,
            start,
            sent,
            last_arrival,
        })
    };
    let flow = run();
    client.disconnect();
    server.shutdown(Duration::from_secs(5));
    flow
}

fn raw_burst(p: &Params) -> Res<Flow> {
    let (listener, addr) = raw_pair_listener()?;
    let one = frame(PLAYER_MOVE, 0, &vec![b'X'; p.payload]);
    let total = (one.len() * p.count) as u64;
    let reader = std::thread::spawn(move || -> Res<Instant> {
        let (s, _) = listener.accept().ctx("raw accept")?;
        join(raw_reader(s, total))
    });
    let mut s = raw_connect(addr)?;
    let start = Instant::now();
    for _ in 0..p.count {
        s.write_all(&one).ctx("raw write")?;
    }
    let sent = Instant::now();
    let last_arrival = join(reader)?;
    Ok(Flow {
        messages: p.count,
        start,
        sent,
        last_arrival,
    })
}

fn stress(p: &Params) -> Res<Flow> {
    let total = p.clients * p.msgs;
    let arrivals = Arc::new(Arrivals::new(total));
    let (server, port) = start_server(Some(arrivals.clone()), p.tls)?;
    let mut clients = Vec::with_capacity(p.clients);
    let run = |clients: &mut Vec<Client>| -> Res<Flow> {
        for _ in 0..p.clients {
            clients.push(connect(port, p.tls)?);
        }
        wait_for("the server to see every client", STRESS_DEADLINE, || {
            server.clients().len() == p.clients
        })?;
        // One sender thread per client, released together.
        let go = Arc::new(Barrier::new(p.clients + 1));
        let senders: Vec<JoinHandle<Res<()>>> = clients
            .iter()
            .map(|c| {
                let (c, go, msgs) = (c.clone(), go.clone(), p.msgs);
                // Each client its own payload: no refcount shared between clients.
                let payload = Bytes::from(vec![0u8; STRESS_PAYLOAD]);
                std::thread::spawn(move || {
                    go.wait();
                    for _ in 0..msgs {
                        send(&c, PLAYER_MOVE, &payload)?;
                    }
                    Ok(())
                })
            })
            .collect();
        let start = Instant::now();
        go.wait();
        for s in senders {
            join(s)?;
        }
        let sent = Instant::now();
        let last_arrival = arrivals.wait(start + STRESS_DEADLINE)?;
        Ok(Flow {
            messages: total,
            start,
            sent,
            last_arrival,
        })
    };
    let flow = run(&mut clients);
    for c in &clients {
        c.disconnect();
    }
    server.shutdown(Duration::from_secs(5));
    flow
}

fn raw_stress(p: &Params) -> Res<Flow> {
    let (listener, addr) = raw_pair_listener()?;
    let one = Arc::new(frame(PLAYER_MOVE, 0, &[0u8; STRESS_PAYLOAD]));
    let per_conn = (one.len() * p.msgs) as u64;
    let clients = p.clients;
    let readers = std::thread::spawn(move || -> Res<Instant> {
        let mut rs = Vec::with_capacity(clients);
        for _ in 0..clients {
            let (s, _) = listener.accept().ctx("raw accept")?;
            rs.push(raw_reader(s, per_conn));
        }
        let mut last: Option<Instant> = None;
        for r in rs {
            let at = join(r)?;
            last = Some(last.map_or(at, |l| l.max(at)));
        }
        last.ok_or_else(|| "no raw readers".to_owned())
    });
    let go = Arc::new(Barrier::new(p.clients + 1));
    let mut writers = Vec::with_capacity(p.clients);
    for _ in 0..p.clients {
        let mut s = raw_connect(addr)?;
        let (go, one, msgs) = (go.clone(), one.clone(), p.msgs);
        writers.push(std::thread::spawn(move || -> Res<TcpStream> {
            go.wait();
            for _ in 0..msgs {
                s.write_all(&one).ctx("raw write")?;
            }
            Ok(s)
        }));
    }
    let start = Instant::now();
    go.wait();
    let mut keep = Vec::with_capacity(p.clients);
    for w in writers {
        keep.push(join(w)?);
    }
    let sent = Instant::now();
    let last_arrival = join(readers)?;
    Ok(Flow {
        messages: p.clients * p.msgs,
        start,
        sent,
        last_arrival,
    })
}

fn memory(p: &Params) -> Res<f64> {
    let (server, port) = start_server(None, None)?;
    let mut clients = Vec::with_capacity(MEMORY_WARM_CLIENTS + p.idle);
    let run = |clients: &mut Vec<Client>| -> Res<f64> {
        for _ in 0..MEMORY_WARM_CLIENTS {
            clients.push(connect(port, None)?);
        }
        wait_for("the warm clients", STRESS_DEADLINE, || {
            server.clients().len() == MEMORY_WARM_CLIENTS
        })?;
        std::thread::sleep(MEMORY_SETTLE);
        let before = rss_bytes()?;
        for _ in 0..p.idle {
            clients.push(connect(port, None)?);
        }
        wait_for("the idle clients", STRESS_DEADLINE, || {
            server.clients().len() == MEMORY_WARM_CLIENTS + p.idle
        })?;
        std::thread::sleep(MEMORY_SETTLE);
        Ok(per_client(before, rss_bytes()?, p.idle))
    };
    let r = run(&mut clients);
    for c in &clients {
        c.disconnect();
    }
    server.shutdown(Duration::from_secs(5));
    r
}

/// Idle raw connections, each end with a thread blocked in `read` on a
/// buffer of the drivers' default size: the least a thread-per-connection
/// peer needs.
fn raw_memory(p: &Params) -> Res<f64> {
    let (listener, addr) = raw_pair_listener()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    let want = MEMORY_WARM_CLIENTS + p.idle;
    let acceptor = std::thread::spawn(move || -> Res<Vec<JoinHandle<()>>> {
        let mut readers = Vec::with_capacity(want);
        for _ in 0..want {
            let (s, _) = listener.accept().ctx("raw accept")?;
            readers.push(idle_reader(s));
            acc.fetch_add(1, Ordering::SeqCst);
        }
        Ok(readers)
    });
    let mut ends: Vec<(TcpStream, JoinHandle<()>)> = Vec::with_capacity(want);
    let mut open = |n: usize| -> Res<()> {
        for _ in 0..n {
            let s = raw_connect(addr)?;
            let r = idle_reader(s.try_clone().ctx("cloning a socket")?);
            ends.push((s, r));
        }
        Ok(())
    };
    let run = |open: &mut dyn FnMut(usize) -> Res<()>| -> Res<f64> {
        open(MEMORY_WARM_CLIENTS)?;
        wait_for("raw accepts", STRESS_DEADLINE, || {
            accepted.load(Ordering::SeqCst) == MEMORY_WARM_CLIENTS
        })?;
        std::thread::sleep(MEMORY_SETTLE);
        let before = rss_bytes()?;
        open(p.idle)?;
        wait_for("raw accepts", STRESS_DEADLINE, || {
            accepted.load(Ordering::SeqCst) == want
        })?;
        std::thread::sleep(MEMORY_SETTLE);
        Ok(per_client(before, rss_bytes()?, p.idle))
    };
    let r = run(&mut open);
    for (s, _) in &ends {
        let _ = s.shutdown(Shutdown::Both);
    }
    for (_, h) in ends {
        let _ = h.join();
    }
    if let Ok(Ok(readers)) = acceptor.join() {
        for h in readers {
            let _ = h.join();
        }
    }
    r
}

fn idle_reader(mut s: TcpStream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; RAW_READ_BUF];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    })
}

impl Bench for Std {
    fn latency(&self, p: &Params, raw: bool) -> Res<Latency> {
        if raw {
            raw_latency(p)
        } else {
            latency(p)
        }
    }
    fn burst(&self, p: &Params, raw: bool) -> Res<Flow> {
        if raw {
            raw_burst(p)
        } else {
            burst(p)
        }
    }
    fn stress(&self, p: &Params, raw: bool) -> Res<Flow> {
        if raw {
            raw_stress(p)
        } else {
            stress(p)
        }
    }
    fn memory(&self, p: &Params, raw: bool) -> Res<f64> {
        if raw {
            raw_memory(p)
        } else {
            memory(p)
        }
    }
}
