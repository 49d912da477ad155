//! Seeds: a random one when the caller gives none, and one per variation derived from it.
//!
//! Variation `i` of a request with seed `s` uses the `i`-th output of a SplitMix64 stream
//! started at `s` (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
//! OOPSLA 2014). So `-n 3 --seed 7` is reproducible, its variations differ, and variation 0
//! is the same whatever `n` is.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{SystemTime, UNIX_EPOCH};

/// Largest seed [`random_seed`] returns: 2^53 − 1, the largest integer a JSON number keeps
/// exactly in JavaScript, so a reported seed can always be sent back as it is.
pub const MAX_RANDOM_SEED: u64 = (1 << 53) - 1;

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The seed of variation `index` of a request with seed `seed`.
pub fn variation_seed(seed: u64, index: u32) -> u64 {
    let mut z = seed.wrapping_add(GOLDEN_GAMMA.wrapping_mul(u64::from(index) + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seeds of variations `0..n`.
pub fn variation_seeds(seed: u64, n: u32) -> Vec<u64> {
    (0..n).map(|i| variation_seed(seed, i)).collect()
}

/// A fresh seed in `0..=MAX_RANDOM_SEED`, for requests that do not give one.
pub fn random_seed() -> u64 {
    // std's RandomState is seeded from the operating system's entropy once per thread and
    // varied per instance; hashing the clock on top makes consecutive calls differ. Good enough
    // for picking a seed, and it avoids a dependency on a random number crate.
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish() & MAX_RANDOM_SEED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variation_seeds_are_stable_and_distinct() {
        let seeds = variation_seeds(7, 9);
        assert_eq!(seeds, variation_seeds(7, 9));
        assert_eq!(&variation_seeds(7, 3)[..], &seeds[..3]);
        let mut unique = seeds.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 9);
        assert_ne!(variation_seeds(8, 1), variation_seeds(7, 1));
        // SplitMix64's first output for seed 0, as in the reference implementation.
        assert_eq!(variation_seed(0, 0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn random_seeds_fit_json_and_vary() {
        let a = random_seed();
        let b = random_seed();
        assert!(a <= MAX_RANDOM_SEED && b <= MAX_RANDOM_SEED);
        assert_ne!(a, b);
    }
}
