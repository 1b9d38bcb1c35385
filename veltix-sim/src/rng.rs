//! The seeded random source: [`SimRng`].
//!
//! One seed drives a whole simulation, but every consumer draws from its own
//! stream, derived from the seed and a label ([`SimRng::derive`]): each node's
//! application, each node's network decisions, each link (by its client and
//! that client's dial number). Adding a node therefore leaves the randomness
//! of the others untouched, and a link's faults depend only on its own
//! client's history.

use std::time::Duration;

/// A small, fast, seeded generator (SplitMix64): reproducible on every
/// platform, never seeded from the operating system.
///
/// ```
/// use veltix_sim::SimRng;
/// let mut a = SimRng::new(7);
/// let mut b = SimRng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// // Independent streams, each a pure function of (seed, label, index).
/// let x = SimRng::derive(7, "app", 3).next_u64();
/// assert_eq!(x, SimRng::derive(7, "app", 3).next_u64());
/// assert_ne!(x, SimRng::derive(7, "app", 4).next_u64());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRng {
    state: u64,
}

/// The SplitMix64 output function (a strong 64-bit mixer).
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

/// FNV-1a, 64 bits: labels into numbers and payloads into trace digests,
/// the same on every platform.
///
/// Byte by byte it costs a multiply's latency per byte, the most expensive
/// part of a simulation that moves large payloads; runs of one repeated
/// byte (padding, fillers) are hashed in a few steps instead, with the
/// same result ([`fnv1a_run`]).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    const BLOCK: usize = 64;
    let mut h = 0xCBF2_9CE4_8422_2325;
    let mut rest = bytes;
    while !rest.is_empty() {
        // Whole blocks of one byte, from here on.
        let b = rest[0];
        let uniform = rest
            .chunks_exact(BLOCK)
            .take_while(|c| c.iter().fold(0u8, |acc, &x| acc | (x ^ b)) == 0)
            .count()
            * BLOCK;
        let plain = if uniform >= FNV_RUN_MIN {
            h = fnv1a_run(h, b, uniform);
            rest = &rest[uniform..];
            BLOCK
        } else {
            uniform.max(BLOCK)
        };
        let (now, later) = rest.split_at(plain.min(rest.len()));
        h = now
            .iter()
            .fold(h, |h, &x| (h ^ u64::from(x)).wrapping_mul(FNV_PRIME));
        rest = later;
    }
    h
}

/// Runs shorter than this are hashed byte by byte (the shortcut costs up
/// to ~512 byte steps).
const FNV_RUN_MIN: usize = 1024;

/// FNV-1a-64 of `n` copies of `b`, continuing from `h`: exactly what the
/// byte loop computes, in O(256 + log n) steps.
///
/// `(h ^ b) * P` is `(h + c) * P` with `c = (l ^ b) - l`, `l` the low byte
/// of `h`; and the low byte alone evolves by `l -> ((l ^ b) * P) mod 256`,
/// a permutation (`P` is odd), so it comes back to its start after some
/// `t <= 256` steps. Those `t` steps add up to an affine map
/// `h -> h * P^t + s` whatever the high bits of `h` are, which keeps the
/// low byte: the whole run is that map `n / t` times (by squaring), then
/// `n % t` bytes.
pub(crate) fn fnv1a_run(mut h: u64, b: u8, n: usize) -> u64 {
    let step = |h: u64| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    let l0 = h as u8;
    let mut t = 1;
    let mut l = (l0 ^ b).wrapping_mul(FNV_PRIME as u8);
    while l != l0 {
        l = (l ^ b).wrapping_mul(FNV_PRIME as u8);
        t += 1;
    }
    if n < 2 * t {
        return (0..n).fold(h, |h, _| step(h));
    }
    let (periods, tail) = (n / t, n % t);
    let start = h;
    h = (0..t).fold(h, |h, _| step(h));
    let qt = FNV_PRIME.wrapping_pow(t as u32);
    // One period is `x -> x * qt + s`; `h` has had one already.
    let s = h.wrapping_sub(start.wrapping_mul(qt));
    let (mut mq, mut ms) = (qt, s);
    let mut m = periods - 1;
    while m > 0 {
        if m & 1 == 1 {
            h = h.wrapping_mul(mq).wrapping_add(ms);
        }
        ms = ms.wrapping_mul(mq).wrapping_add(ms);
        mq = mq.wrapping_mul(mq);
        m >>= 1;
    }
    (0..tail).fold(h, |h, _| step(h))
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl SimRng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        SimRng {
            state: mix(seed ^ 0x5EED_5EED_5EED_5EED),
        }
    }

    /// The stream named `label` and `index` of the simulation seeded with
    /// `seed`: a pure function of the three, independent of every other
    /// stream.
    pub fn derive(seed: u64, label: &str, index: u64) -> Self {
        let l = fnv1a(label.as_bytes());
        SimRng::new(mix(seed ^ mix(l ^ mix(index.wrapping_add(GOLDEN)))))
    }

    /// A child stream named `label`, derived from this generator's next
    /// output (the parent moves on by one draw).
    pub fn split(&mut self, label: &str) -> SimRng {
        let s = self.next_u64();
        SimRng::derive(s, label, 0)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (0 when `n` is 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift with rejection.
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (never for `p <= 0`, always for `p >= 1`).
    pub fn chance(&mut self, p: f64) -> bool {
        // A draw is made whatever `p` is, so changing a probability does not
        // shift the rest of the stream.
        let u = self.unit();
        u < p
    }

    /// A duration in `[0, d]`, to the nanosecond.
    pub fn upto(&mut self, d: Duration) -> Duration {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.below(n.saturating_add(1)))
    }

    /// A duration in `[lo, hi]`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + self.upto(hi.saturating_sub(lo))
    }

    /// A random element of `items` (`None` when empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.below(items.len() as u64) as usize)
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// Fills `out` with random bytes.
    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let b = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }

    /// 32 random bytes: a seed for the cores' nonce generators
    /// (`ClientConfig::seed_auth`, `ServerConfig::seed_auth`).
    pub fn seed32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        self.fill_bytes(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fnv1a_bytewise(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
        })
    }

    #[test]
    fn fnv1a_with_runs_is_fnv1a() {
        let mut r = SimRng::new(3);
        for round in 0..300 {
            // Random bytes and runs of random lengths, around the thresholds.
            let mut v = Vec::new();
            for _ in 0..r.below(6) {
                let b = r.below(256) as u8;
                let n = match r.below(4) {
                    0 => r.below(70) as usize,
                    1 => FNV_RUN_MIN - 64 + r.below(200) as usize,
                    2 => r.below(30_000) as usize,
                    _ => 0,
                };
                v.extend((0..r.below(100)).map(|_| r.below(256) as u8));
                v.extend(std::iter::repeat_n(b, n));
            }
            assert_eq!(fnv1a(&v), fnv1a_bytewise(&v), "round {round}");
        }
        for h in [0, 1, 0xFF, 0xCBF2_9CE4_8422_2325, u64::MAX] {
            for b in 0..=255u8 {
                for n in [0, 1, 255, 256, 257, 513, 5000] {
                    let want = (0..n).fold(h, |h, _| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME));
                    assert_eq!(fnv1a_run(h, b, n), want, "h {h:x} b {b} n {n}");
                }
            }
        }
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut r = SimRng::new(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let x = r.below(7);
            assert!(x < 7);
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range(5, 5), 5);
    }

    #[test]
    fn chance_extremes() {
        let mut r = SimRng::new(2);
        assert!((0..1000).all(|_| !r.chance(0.0)));
        assert!((0..1000).all(|_| r.chance(1.0)));
    }

    #[test]
    fn durations_stay_in_bounds() {
        let mut r = SimRng::new(3);
        for _ in 0..1000 {
            assert!(r.upto(Duration::from_millis(5)) <= Duration::from_millis(5));
            let d = r.between(Duration::from_secs(1), Duration::from_secs(2));
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(2));
        }
        assert_eq!(r.upto(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn streams_are_independent_of_each_other() {
        let a: Vec<u64> = {
            let mut r = SimRng::derive(9, "node", 0);
            (0..4).map(|_| r.next_u64()).collect()
        };
        // Drawing from another stream does not disturb this one.
        let mut other = SimRng::derive(9, "node", 1);
        other.next_u64();
        let b: Vec<u64> = {
            let mut r = SimRng::derive(9, "node", 0);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(
            SimRng::derive(9, "node", 0).next_u64(),
            SimRng::derive(9, "link", 0).next_u64()
        );
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut r = SimRng::new(4);
        let mut v: Vec<u32> = (0..50).collect();
        r.shuffle(&mut v);
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(v, s);
    }
}
