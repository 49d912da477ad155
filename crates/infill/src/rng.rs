//! A small, fast, seedable generator for the hot loops.
//!
//! SplitMix64 (Steele, Lea and Flood 2014). Written out here rather than taken from a crate
//! because results must stay byte-identical for a given seed across dependency upgrades, and
//! the random search calls it a few million times per image.

/// SplitMix64 state.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for the stream named by `parts` (seed, level, iteration, band ...).
    pub(crate) fn new(parts: &[u64]) -> Rng {
        let mut state = 0x243F_6A88_85A3_08D3u64;
        for &p in parts {
            state = Rng(state ^ p).next_u64();
        }
        Rng(state)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift (Lemire), bias below 2⁻³².
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(&[1, 2]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::new(&[1, 2]).next_u64(), Rng::new(&[2, 1]).next_u64());
        let mut r = Rng::new(&[9]);
        assert!((0..1000).all(|_| r.below(7) < 7));
    }
}
