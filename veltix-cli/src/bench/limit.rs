//! The machine's limit for the throughput scenarios: raw loopback TCP with
//! batched writes and a reader that does the least a Veltix receiver must.
//!
//! * writers encode the scenario's frames back to back into 64 KiB buffers
//!   and write each buffer with one `write_all`;
//! * each reader reads 64 KiB at a time, walks the frames, checks each
//!   payload's CRC-32 against its header, and counts the frames.
//!
//! This is what a Veltix stack could reach with no framework cost at all,
//! so `veltix / limit` says how much of the hardware a driver uses.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::Instant;

use veltix_proto::frame::HEADER_LEN;

use super::common::{frame, Ctx, Flow, Params, Res, PLAYER_MOVE, STRESS_PAYLOAD};

/// Bytes per batched write, and per read.
const BATCH: usize = 64 * 1024;

/// Reads until `frames` frames arrived; checks every CRC. Returns the time
/// of the last arrival.
fn reader(mut s: TcpStream, frames: u64) -> JoinHandle<Res<Instant>> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 2 * BATCH];
        let mut filled = 0usize;
        let mut seen = 0u64;
        while seen < frames {
            if filled == buf.len() {
                return Err("limit reader: a frame larger than its buffer".into());
            }
            let n = match s.read(&mut buf[filled..]) {
                Ok(0) => return Err(format!("limit reader: EOF after {seen} of {frames} frames")),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("limit reader: {e}")),
            };
            filled += n;
            let mut at = 0usize;
            while filled - at >= HEADER_LEN {
                let h = &buf[at..at + HEADER_LEN];
                if &h[..2] != b"VX" {
                    return Err("limit reader: lost frame sync".into());
                }
                // VX, flags, type (2), length (4), CRC-32 (4), request id (2).
                let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
                let crc = u32::from_be_bytes([h[9], h[10], h[11], h[12]]);
                if filled - at < HEADER_LEN + len {
                    break;
                }
                let payload = &buf[at + HEADER_LEN..at + HEADER_LEN + len];
                if crc32fast::hash(payload) != crc {
                    return Err("limit reader: CRC mismatch".into());
                }
                at += HEADER_LEN + len;
                seen += 1;
            }
            buf.copy_within(at..filled, 0);
            filled -= at;
        }
        Ok(Instant::now())
    })
}

/// Writes `count` copies of `one` in batches of about [`BATCH`] bytes.
fn write_batched(s: &mut TcpStream, one: &[u8], count: usize) -> Res<()> {
    let per = (BATCH / one.len()).max(1);
    let batch: Vec<u8> = one.repeat(per.min(count));
    let mut left = count;
    while left >= per {
        s.write_all(&batch).ctx("limit write")?;
        left -= per;
    }
    if left > 0 {
        s.write_all(&batch[..left * one.len()]).ctx("limit write")?;
    }
    Ok(())
}

fn listener() -> Res<(TcpListener, std::net::SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").ctx("binding the limit listener")?;
    let a = l.local_addr().ctx("limit listener address")?;
    Ok((l, a))
}

fn connect(addr: std::net::SocketAddr) -> Res<TcpStream> {
    let s = TcpStream::connect(addr).ctx("limit connect")?;
    s.set_nodelay(true).ctx("TCP_NODELAY")?;
    Ok(s)
}

fn join<T>(h: JoinHandle<Res<T>>) -> Res<T> {
    h.join().map_err(|_| "a limit thread panicked".to_owned())?
}

/// One connection, `p.count` frames of `p.payload` bytes.
pub fn burst(p: &Params) -> Res<Flow> {
    let (l, addr) = listener()?;
    let count = p.count as u64;
    let acceptor = std::thread::spawn(move || -> Res<Instant> {
        let (s, _) = l.accept().ctx("limit accept")?;
        join(reader(s, count))
    });
    let one = frame(PLAYER_MOVE, 0, &vec![b'X'; p.payload]);
    let mut s = connect(addr)?;
    let start = Instant::now();
    write_batched(&mut s, &one, p.count)?;
    let sent = Instant::now();
    let last_arrival = join(acceptor)?;
    Ok(Flow {
        messages: p.count,
        start,
        sent,
        last_arrival,
    })
}

/// `p.clients` connections, `p.msgs` frames of 32 bytes each, released together.
pub fn stress(p: &Params) -> Res<Flow> {
    let (l, addr) = listener()?;
    let (clients, msgs) = (p.clients, p.msgs as u64);
    let acceptor = std::thread::spawn(move || -> Res<Instant> {
        let mut readers = Vec::with_capacity(clients);
        for _ in 0..clients {
            let (s, _) = l.accept().ctx("limit accept")?;
            readers.push(reader(s, msgs));
        }
        let mut last: Option<Instant> = None;
        for r in readers {
            let at = join(r)?;
            last = Some(last.map_or(at, |x| x.max(at)));
        }
        last.ok_or_else(|| "no limit readers".to_owned())
    });
    let one = Arc::new(frame(PLAYER_MOVE, 0, &[0u8; STRESS_PAYLOAD]));
    let go = Arc::new(Barrier::new(p.clients + 1));
    let mut writers = Vec::with_capacity(p.clients);
    for _ in 0..p.clients {
        let mut s = connect(addr)?;
        let (go, one, msgs) = (go.clone(), one.clone(), p.msgs);
        writers.push(std::thread::spawn(move || -> Res<TcpStream> {
            go.wait();
            write_batched(&mut s, &one, msgs)?;
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
    let last_arrival = join(acceptor)?;
    Ok(Flow {
        messages: p.clients * p.msgs,
        start,
        sent,
        last_arrival,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            iterations: 1,
            count: 20_000,
            payload: 64,
            clients: 4,
            msgs: 5_000,
            idle: 1,
            warmup: 0,
            tls: None,
        }
    }

    #[test]
    fn limit_flows_deliver_every_frame() {
        let p = params();
        let b = burst(&p).unwrap();
        assert_eq!(b.messages, 20_000);
        assert!(b.last_arrival >= b.start);
        let s = stress(&p).unwrap();
        assert_eq!(s.messages, 20_000);
    }

    #[test]
    fn reader_rejects_a_bad_crc() {
        let (l, addr) = listener().unwrap();
        let mut f = frame(PLAYER_MOVE, 0, b"abc");
        let last = f.len() - 1;
        f[last] ^= 1;
        let mut c = connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let r = reader(s, 1);
        c.write_all(&f).unwrap();
        assert!(join(r).unwrap_err().contains("CRC"));
    }
}
