//! Fuzz bodies (private feature `_fuzz`): shared by `fuzz/` and the stable corpus replay test.
//!
//! **Not a stable API.** Each body is a plain function taking `&[u8]`; the
//! `cargo fuzz` targets in `fuzz/fuzz_targets/` call them, and
//! `tests/tests/fuzz_corpus.rs` replays the committed corpus and a seeded sweep
//! through the very same functions on stable Rust.
//!
//! The principle is that **any panic on peer input is a bug**. A body never
//! rejects an input by panicking: inputs that are too short simply do less.
//! Every invariant is an `assert!`, so a violated invariant is a crash, and a
//! crash is a finding.
//!
//! | body | what it drives |
//! |---|---|
//! | [`frame_decode`] | arbitrary bytes into a [`Decoder`](crate::Decoder) of arbitrary limits, in arbitrary chunks |
//! | [`frame_roundtrip`] | frame → bytes → frame, and bytes → frames → the same bytes |
//! | [`frame_chunking`] | one valid stream, cut anywhere, gives the frames of one push |
//! | [`decoder_resync`] | resync-heavy streams (bad CRCs, magic everywhere, huge lengths) against a small CRC budget: bounded work, honest frames still found |
//! | [`handshake_client`], [`handshake_server`] | arbitrary peer bytes and JSON objects at every handshake step |
//! | [`connection_ops`] | a client and a server core joined by byte queues, under arbitrary commands, time and corruption |
//! | [`retry_policy`] | arbitrary (also non-finite) retry settings under arbitrary failure sequences |
//! | [`session_ops`] | a [`ClientSession`](crate::ClientSession) against real server cores: dial results, bytes, resets, rejections, commands, time |
//! | [`handshake_auth`] | the authenticating handshakes (SCRAM, tokens, capabilities) with an attacker between honest peers: messages delivered, corrupted, replaced, withheld; holds admitted or refused |
//! | [`hub_ops`] | a [`Hub`](crate::Hub) serving real client cores: admission, broadcasts, requests, resets, closes, time |
//!
//! Most inputs are read front to back, one byte per choice
//! ([`arbitrary::Unstructured::int_in_range`] over at most 256 values), so
//! `fuzz/make_corpus.py` can write meaningful seeds; see `fuzz/README.md` for
//! each layout.
//!
//! ## Bugs found
//!
//! Bugs the bodies found are fixed in the core and kept as named regression
//! tests in `tests/tests/fuzz_corpus.rs` (module `found_by_fuzzing`); the
//! bodies check the exact bounds again (no input narrowing remains).

mod auth;
mod frames;
mod handshakes;
mod ops;
mod resync;
mod retries;
mod sessions;

pub use auth::handshake_auth;
pub use frames::{frame_chunking, frame_decode, frame_roundtrip};
pub use handshakes::{handshake_client, handshake_server};
pub use ops::connection_ops;
pub use resync::{decoder_resync, decoder_resync_report, ResyncReport};
pub use retries::retry_policy;
pub use sessions::{hub_ops, session_ops};

/// A fuzz body: `t0` is any instant the caller picks as the start of
/// virtual time (it reads its own clock once; the core never reads one).
pub type Body = fn(std::time::Instant, &[u8]);

/// Every fuzz target: its name (the file `fuzz/fuzz_targets/<name>.rs` and
/// the corpus folder `fuzz/corpus/<name>/`) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("frame_decode", frame_decode),
    ("frame_roundtrip", frame_roundtrip),
    ("frame_chunking", frame_chunking),
    ("decoder_resync", decoder_resync),
    ("handshake_client", handshake_client),
    ("handshake_server", handshake_server),
    ("handshake_auth", handshake_auth),
    ("connection_ops", connection_ops),
    ("retry_policy", retry_policy),
    ("session_ops", session_ops),
    ("hub_ops", hub_ops),
];

/// The body of the target called `name`.
pub fn body(name: &str) -> Option<Body> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}

/// xorshift64*: a tiny deterministic generator for chunk sizes, time steps
/// and the stable sweep (no ambient randomness anywhere).
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        XorShift((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// `below` for sizes.
    pub fn below_usize(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap_or(0)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

/// The first `N` bytes of `data` (zero-padded when it is shorter) and the rest.
fn prefix<const N: usize>(data: &[u8]) -> ([u8; N], &[u8]) {
    let mut p = [0u8; N];
    let n = data.len().min(N);
    p[..n].copy_from_slice(&data[..n]);
    (p, &data[n..])
}

/// Most pieces one execution cuts a stream into. Each piece costs a push and
/// a drain (and, in the handshake bodies, timers and checks): cutting a
/// 4 KiB stream byte by byte made an execution a hundred times slower than
/// one push, and cutting a 70 000-byte frame byte by byte a thousand times.
/// Instead of every cut in turn, each execution picks a few, where they tell
/// the most (see [`cut_points`]).
pub const MAX_PIECES: usize = 64;

/// Where to cut a stream of `len` bytes: sorted, distinct offsets in
/// `1..len`, at most [`MAX_PIECES`]` - 1` of them. `marks` gives the offsets
/// where something begins (a frame, a message, a `VX`): cuts around them
/// split headers and length prefixes at every offset; it is called only by
/// the styles that use it (finding marks can cost more than the cuts save:
/// a byte loop runs a coverage callback per comparison). `style % 6` picks
/// the flavour, `rng` the rest:
///
/// * 0: no cut (one push);
/// * 1: every byte of 1–3 windows of up to 20 bytes, each starting on a mark
///   (or anywhere when there is none): single-byte pushes where it matters;
/// * 2: one cut a few bytes (0–16) into each mark, i.e. inside each header;
/// * 3: 1–63 cuts anywhere;
/// * 4: pieces of 1–16 bytes from the start, as far as the budget goes;
/// * 5: a little of 1, 2 and 3 together.
pub fn cut_points(
    style: u8,
    rng: &mut XorShift,
    len: usize,
    marks: impl FnOnce() -> Vec<usize>,
) -> Vec<usize> {
    let budget = MAX_PIECES - 1;
    if len < 2 {
        return Vec::new();
    }
    let marks = if matches!(style % 6, 1 | 2 | 5) {
        marks()
    } else {
        Vec::new()
    };
    // Each flavour yields its cuts in increasing order, so that merging
    // them needs no sort (a sort's comparisons are coverage callbacks too).
    let windows = |rng: &mut XorShift, count: u64| {
        let mut anchors: Vec<usize> = (0..=rng.below(count))
            .map(|_| match marks.len() {
                0 => rng.below_usize(len),
                n => marks[rng.below_usize(n)],
            })
            .collect();
        anchors.sort_unstable(); // at most 3
        let mut cuts = Vec::new();
        for a in anchors {
            let from = a.max(cuts.last().map_or(0, |&c| c + 1));
            cuts.extend(from..a + 1 + rng.below_usize(20));
        }
        cuts
    };
    let into_marks = |rng: &mut XorShift, most: usize| {
        let skip = rng.below_usize(marks.len().saturating_sub(most) + 1);
        let mut cuts: Vec<usize> = Vec::new();
        for &m in marks.iter().skip(skip).take(most) {
            let c = m + rng.below_usize(17);
            if cuts.last().is_none_or(|&last| c > last) {
                cuts.push(c);
            }
        }
        cuts
    };
    let anywhere = |rng: &mut XorShift, most: usize| {
        let count = 1 + rng.below_usize(most);
        let gap = (2 * len / count).max(2);
        let mut at = 0;
        std::iter::from_fn(|| {
            at += 1 + rng.below_usize(gap);
            Some(at)
        })
        .take(count)
        .collect::<Vec<_>>()
    };
    let mut cuts = match style % 6 {
        0 => Vec::new(),
        1 => windows(rng, 3),
        2 => into_marks(rng, budget),
        3 => anywhere(rng, budget),
        4 => {
            let mut at = 0;
            (0..budget)
                .map(|_| {
                    at += 1 + rng.below_usize(16);
                    at
                })
                .collect()
        }
        _ => {
            let (a, b) = (windows(rng, 1), into_marks(rng, 16));
            merge(&merge(&a, &b), &anywhere(rng, 16))
        }
    };
    cuts.retain(|&c| c > 0 && c < len);
    cuts.dedup();
    if cuts.len() > budget {
        // Keep an even sample.
        let step = cuts.len().div_ceil(budget);
        cuts = cuts.into_iter().step_by(step).collect();
    }
    cuts
}

/// Two increasing lists as one.
fn merge(a: &[usize], b: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i] <= b[j] {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// The pieces between `cuts` (from [`cut_points`]) of a stream of `len` bytes.
pub fn pieces(cuts: &[usize], len: usize) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let starts = std::iter::once(0).chain(cuts.iter().copied());
    let ends = cuts.iter().copied().chain(std::iter::once(len));
    starts.zip(ends).filter(|r| r.0 < r.1).map(|(a, b)| a..b)
}

/// Offset of the first `b` in `hay`, found by the C library's `memchr`
/// (through `BufRead::skip_until` on a slice). A byte loop in a fuzz body
/// runs a coverage callback for every comparison under `cargo fuzz`, and
/// searching whole inputs that way cost more than the code under test.
fn find_byte(hay: &[u8], b: u8) -> Option<usize> {
    use std::io::BufRead;
    let mut rest = hay;
    // Reading a slice cannot fail.
    let n = rest.skip_until(b).unwrap_or(0);
    (n > 0 && hay[n - 1] == b).then(|| n - 1)
}

/// Offset of the first `VX` in `hay`.
fn magic_at(hay: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = find_byte(&hay[from..], crate::frame::MAGIC[0]) {
        let at = from + i;
        if hay.get(at + 1) == Some(&crate::frame::MAGIC[1]) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Offsets of every `VX` in `data` (the marks of a raw stream).
fn magics(data: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = magic_at(&data[from..]) {
        out.push(from + i);
        from += i + 2;
    }
    out
}
