//! Criterion benchmarks of the Veltix codec and connection hot paths.
//!
//! * `encode/*`: one frame through [`encode_frame`] into a reused buffer, and
//!   the header alone (the zero-copy path the connection uses for big payloads);
//! * `decode/*`: a buffered stream of frames through a fresh [`Decoder`],
//!   handed over whole (`push_bytes`, no copy) or in 8 KiB reads (`push`);
//! * `connection/*`: `send` + `poll_transmit`, and `handle_input` + `poll_event`,
//!   on established connections;
//! * `crc32/*`: `crc32fast::hash` alone: the ceiling for `decode/64KiB`, and
//!   the CRC's share of a 64 B frame.
//!
//! Run with
//! `cargo bench -p veltix-proto --bench codec -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput};
use veltix_proto::decoder::DecodedRef;
use veltix_proto::frame::encode_frame;
use veltix_proto::{
    Connection, ConnectionConfig, Decoded, Decoder, DecoderConfig, Event, Frame, Header,
    MessageType,
};

/// Small payload size.
const SMALL: usize = 64;
/// Large payload size.
const LARGE: usize = 64 * 1024;
/// Frames per stream in the 64 B decode benchmarks.
const SMALL_FRAMES: usize = 10_000;
/// Frames per stream in the 64 KiB decode benchmark.
const LARGE_FRAMES: usize = 64;
/// Messages per iteration in the connection benchmarks.
const CONN_MSGS: usize = 1000;
/// Read size of the realistic driver path.
const READ_SIZE: usize = 8192;

const TYPE: MessageType = MessageType::new(200);

/// A deterministic, non-constant payload.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

/// `n` frames of `len`-byte payloads, back to back, with client-side ids.
fn stream(n: usize, len: usize) -> Vec<u8> {
    let p = payload(len);
    let mut out = Vec::with_capacity(n * (15 + len));
    for i in 0..n {
        encode_frame(TYPE, (i % 32_768) as u16, &p, &mut out).expect("payload fits");
    }
    out
}

/// Drains `dec`; returns the number of frames and the last one. Keeping the
/// last frame alive lets the caller drop the stream's allocation outside the
/// timed region.
fn drain(dec: &mut Decoder) -> (usize, Option<Frame>) {
    let mut n = 0;
    let mut last = None;
    while let Some(d) = dec.next_frame() {
        match d {
            Decoded::Frame(f) => {
                n += 1;
                last = Some(black_box(f));
            }
            Decoded::Discarded(d) => panic!("unexpected discard: {d:?}"),
        }
    }
    (n, last)
}

/// Feeds `data` to `dec` in `READ_SIZE` slices, draining after each.
fn push_in_reads(dec: &mut Decoder, data: &[u8]) -> usize {
    let mut n = 0;
    for chunk in data.chunks(READ_SIZE) {
        dec.push(chunk);
        while let Some(d) = dec.next_frame() {
            black_box(d);
            n += 1;
        }
    }
    n
}

/// Moves bytes both ways until neither side has anything to send
/// (the `pump` of the connection tests).
fn pump(a: &mut Connection, b: &mut Connection, now: Instant) {
    loop {
        let mut moved = false;
        while let Some(x) = a.poll_transmit() {
            b.handle_input(now, &x);
            moved = true;
        }
        while let Some(x) = b.poll_transmit() {
            a.handle_input(now, &x);
            moved = true;
        }
        if !moved {
            break;
        }
    }
}

/// An established (client, server) pair with the `Connected` events consumed.
fn established(now: Instant) -> (Connection, Connection) {
    let cfg = Arc::new(ConnectionConfig::default());
    let mut c = Connection::client(cfg.clone(), now);
    let mut s = Connection::server(cfg, now);
    pump(&mut c, &mut s, now);
    assert!(c.is_established() && s.is_established());
    assert!(matches!(c.poll_event(), Some(Event::Connected(_))));
    assert!(matches!(s.poll_event(), Some(Event::Connected(_))));
    (c, s)
}

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let small = payload(SMALL);
    let large = payload(LARGE);

    let mut out = Vec::with_capacity(15 + SMALL);
    g.throughput(Throughput::Elements(1));
    g.bench_function("64B", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(TYPE, black_box(1), black_box(&small), &mut out).unwrap();
            black_box(&out);
        })
    });

    let mut out = Vec::with_capacity(15 + LARGE);
    g.throughput(Throughput::Bytes(LARGE as u64));
    g.bench_function("64KiB", |b| {
        b.iter(|| {
            out.clear();
            encode_frame(TYPE, black_box(1), black_box(&large), &mut out).unwrap();
            black_box(&out);
        })
    });

    g.throughput(Throughput::Bytes(LARGE as u64));
    g.bench_function("64KiB_header_only", |b| {
        b.iter(|| {
            let h = Header::for_payload(TYPE, black_box(1), black_box(&large)).unwrap();
            black_box(h.to_bytes())
        })
    });
    g.finish();
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");

    let small = stream(SMALL_FRAMES, SMALL);
    let mut check = Decoder::new(DecoderConfig::default());
    check.push_bytes(BytesMut::from(&small[..]));
    assert_eq!(drain(&mut check).0, SMALL_FRAMES);
    g.throughput(Throughput::Elements(SMALL_FRAMES as u64));
    g.bench_function("64B_stream", |b| {
        b.iter_batched(
            || {
                (
                    Decoder::new(DecoderConfig::default()),
                    BytesMut::from(&small[..]),
                )
            },
            |(mut dec, buf)| {
                dec.push_bytes(buf);
                let (n, last) = drain(&mut dec);
                black_box(n);
                (dec, last) // dropped outside the timed region
            },
            BatchSize::LargeInput,
        )
    });

    // The same stream through the borrowing path: payloads are lent from the
    // buffer, no reference count per frame.
    g.bench_function("64B_stream_borrowed", |b| {
        b.iter_batched(
            || {
                (
                    Decoder::new(DecoderConfig::default()),
                    BytesMut::from(&small[..]),
                )
            },
            |(mut dec, buf)| {
                dec.push_bytes(buf);
                let mut n = 0usize;
                let mut bytes = 0usize;
                while let Some(d) = dec.next_frame_ref() {
                    if let DecodedRef::Frame { payload, .. } = d {
                        n += 1;
                        bytes += black_box(payload).len();
                    }
                }
                assert_eq!(n, SMALL_FRAMES);
                black_box(bytes);
                dec // dropped outside the timed region
            },
            BatchSize::LargeInput,
        )
    });

    let large = stream(LARGE_FRAMES, LARGE);
    let mut check = Decoder::new(DecoderConfig::default());
    check.push_bytes(BytesMut::from(&large[..]));
    assert_eq!(drain(&mut check).0, LARGE_FRAMES);
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("64KiB", |b| {
        b.iter_batched(
            || {
                (
                    Decoder::new(DecoderConfig::default()),
                    BytesMut::from(&large[..]),
                )
            },
            |(mut dec, buf)| {
                dec.push_bytes(buf);
                let (n, last) = drain(&mut dec);
                black_box(n);
                (dec, last)
            },
            BatchSize::LargeInput,
        )
    });

    assert_eq!(
        push_in_reads(&mut Decoder::new(DecoderConfig::default()), &small),
        SMALL_FRAMES
    );
    g.throughput(Throughput::Elements(SMALL_FRAMES as u64));
    g.bench_function("64B_pushed_in_8KiB_reads", |b| {
        b.iter(|| {
            let mut dec = Decoder::new(DecoderConfig::default());
            black_box(push_in_reads(&mut dec, &small))
        })
    });
    g.finish();
}

fn bench_connection(c: &mut Criterion) {
    let mut g = c.benchmark_group("connection");
    let now = Instant::now();
    g.throughput(Throughput::Elements(CONN_MSGS as u64));

    let (mut client, _server) = established(now);
    let p = Bytes::from(payload(SMALL));
    g.bench_function("send_64B", |b| {
        b.iter(|| {
            for _ in 0..CONN_MSGS {
                black_box(client.send(TYPE, p.clone()).unwrap());
            }
            while let Some(out) = client.poll_transmit() {
                black_box(out);
            }
        })
    });

    let (_client, mut server) = established(now);
    let wire = stream(CONN_MSGS, SMALL);
    server.handle_input(now, &wire);
    let mut n = 0;
    while let Some(e) = server.poll_event() {
        assert!(matches!(e, Event::Message(_)), "{e:?}");
        n += 1;
    }
    assert_eq!(n, CONN_MSGS);
    g.bench_function("receive_64B", |b| {
        b.iter(|| {
            server.handle_input(now, black_box(&wire));
            while let Some(e) = server.poll_event() {
                black_box(e);
            }
        })
    });
    g.finish();
}

fn bench_crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32");
    let data = payload(LARGE);
    g.throughput(Throughput::Bytes(LARGE as u64));
    g.bench_function("64KiB", |b| b.iter(|| crc32fast::hash(black_box(&data))));
    // The CRC's share of one 64 B frame (context for `decode/64B_*`).
    let data = payload(SMALL);
    g.throughput(Throughput::Elements(1));
    g.bench_function("64B", |b| b.iter(|| crc32fast::hash(black_box(&data))));
    g.finish();
}

/// Runs every group (what `criterion_group!`/`criterion_main!` would
/// generate, written out so the entry point carries documentation).
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_encode(&mut c);
    bench_decode(&mut c);
    bench_connection(&mut c);
    bench_crc(&mut c);
    c.final_summary();
}
