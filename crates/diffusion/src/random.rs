//! Seeded Gaussian noise, reproducible across platforms and dependency upgrades.
//!
//! candle's CPU `randn` cannot be seeded per call, so the noise comes from SplitMix64 and the
//! Box–Muller transform, written out here: a seed gives the same latents everywhere.

use candle_core::{Device, Tensor};

use crate::Result;

/// SplitMix64 (Steele, Lea and Flood 2014).
#[derive(Debug, Clone)]
pub struct NoiseRng(u64);

impl NoiseRng {
    /// A generator for the stream named by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut r = NoiseRng(seed ^ 0x5DEE_CE66_D1CE_5EED);
        r.next_u64();
        r
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// `n` standard normal samples.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let r = (-2.0 * self.uniform().ln()).sqrt();
            let theta = std::f64::consts::TAU * self.uniform();
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// A standard normal f32 tensor of the given shape.
    pub fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(self.normals(n), shape, device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_are_reproducible_and_standard() {
        let a = NoiseRng::new(7).normals(20_000);
        assert_eq!(a, NoiseRng::new(7).normals(20_000));
        assert_ne!(a[..8], NoiseRng::new(8).normals(8)[..]);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }
}
