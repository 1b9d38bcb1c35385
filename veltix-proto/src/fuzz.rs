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
mod retries;
mod sessions;

pub use auth::handshake_auth;
pub use frames::{frame_chunking, frame_decode, frame_roundtrip};
pub use handshakes::{handshake_client, handshake_server};
pub use ops::connection_ops;
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

/// Chunk sizes for cutting a stream: `style` picks the flavour (single
/// bytes, small, medium, whole, mixed); the sizes themselves come from `rng`.
fn chunk_len(style: u8, rng: &mut XorShift, remaining: usize) -> usize {
    let n = match style % 5 {
        0 => 1,
        1 => 1 + rng.below_usize(16),
        2 => 1 + rng.below_usize(300),
        3 => remaining,
        _ => match rng.below(4) {
            0 => 1,
            1 => 1 + rng.below_usize(15),
            2 => 15 + rng.below_usize(4096),
            _ => remaining,
        },
    };
    n.clamp(1, remaining.max(1))
}
