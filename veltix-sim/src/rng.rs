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

/// FNV-1a, 64 bits: labels into numbers, the same on every platform.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
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
