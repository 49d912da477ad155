//! Group normalisation, optionally fused with SiLU: one task per (batch item, group), the
//! statistics in two vectorised passes (mean, then the centred second moment, each summed in
//! f32 vectors over short blocks and across blocks in f64), then one pass writing the output.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use rayon::prelude::*;

use super::cpu_slice;
use super::simd::{Simd, dispatch, exp};

/// Elements summed in f32 before the running sum moves to f64.
const BLOCK: usize = 1024;

/// Group norm of `x` (n, c, spatial…) into `out`, per-channel `weight` and `bias` (c).
#[allow(clippy::too_many_arguments)]
pub(crate) fn group_norm_f32(
    x: &[f32],
    out: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    n: usize,
    groups: usize,
    eps: f32,
    silu: bool,
) {
    let channels = weight.len();
    assert_eq!(x.len(), out.len());
    assert!(groups > 0 && channels.is_multiple_of(groups) && bias.len() == channels);
    if x.is_empty() {
        return;
    }
    assert_eq!(x.len() % (n * channels), 0);
    let cpg = channels / groups;
    let per_group = x.len() / (n * channels) * cpg;
    if per_group == 0 {
        return;
    }
    out.par_chunks_mut(per_group)
        .zip(x.par_chunks(per_group))
        .enumerate()
        .for_each(|(i, (out, x))| {
            let c0 = (i % groups) * cpg;
            group(
                x,
                out,
                &weight[c0..c0 + cpg],
                &bias[c0..c0 + cpg],
                eps,
                silu,
            );
        });
}

dispatch!(fn group(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32, silu: bool) => group_kernel);

/// `Σ f(x)` over `x`, in f32 lanes per block and f64 across blocks.
#[inline(always)]
fn sum_by<S: Simd>(s: S, x: &[f32], f: impl Fn(S::V) -> S::V) -> f64 {
    let mut total = 0f64;
    for block in x.chunks(BLOCK) {
        let (mut a0, mut a1) = (s.splat(0.0), s.splat(0.0));
        let mut j = 0;
        let n = block.len();
        // SAFETY (the loads below): each reads `LANES` (or the `k` left) values at `j < n`.
        while j + 2 * S::LANES <= n {
            unsafe {
                a0 = s.add(a0, f(s.load(block.as_ptr().add(j))));
                a1 = s.add(a1, f(s.load(block.as_ptr().add(j + S::LANES))));
            }
            j += 2 * S::LANES;
        }
        while j < n {
            let k = (n - j).min(S::LANES);
            // Zero lanes past the end must add nothing: mask them after `f`.
            // SAFETY: `k` values remain in `block` from `j`; `fv` holds 16 ≥ LANES values.
            let fv = unsafe {
                let mut fv = [0f32; 16];
                s.store(fv.as_mut_ptr(), f(s.load_n(block.as_ptr().add(j), k)));
                fv[k..S::LANES].iter_mut().for_each(|v| *v = 0.0);
                s.load(fv.as_ptr())
            };
            a0 = s.add(a0, fv);
            j += k;
        }
        total += s.reduce_sum(s.add(a0, a1)) as f64;
    }
    total
}

#[inline(always)]
fn group_kernel<S: Simd>(
    s: S,
    x: &[f32],
    out: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    silu: bool,
) {
    let len = x.len() as f64;
    // Summed relative to a pivot (the first value), so that a large common offset does not
    // cost the f32 partial sums their precision.
    let pivot = s.splat(x[0]);
    let mean = x[0] as f64 + sum_by(s, x, |v| s.sub(v, pivot)) / len;
    let mv = s.splat(mean as f32);
    let var = sum_by(s, x, |v| {
        let d = s.sub(v, mv);
        s.mul(d, d)
    }) / len;
    let rstd = 1.0 / (var + eps as f64).sqrt();
    let spatial = x.len() / weight.len();
    // The mean as mv + mlo, so that x - mean keeps f64 precision of the mean.
    let mlo = s.splat((mean - mean as f32 as f64) as f32);
    for (c, (x, out)) in x
        .chunks_exact(spatial)
        .zip(out.chunks_exact_mut(spatial))
        .enumerate()
    {
        // (x - mean) · a + bias rather than x · a + (bias - mean · a): no cancellation when
        // the mean is large against the spread.
        let (av, bv) = (s.splat((weight[c] as f64 * rstd) as f32), s.splat(bias[c]));
        let mut j = 0;
        while j < spatial {
            let k = (spatial - j).min(S::LANES);
            // SAFETY: `k` values remain from `j` in `x` and `out` (both of length `spatial`).
            unsafe {
                let v = s.load_n(x.as_ptr().add(j), k);
                let mut y = s.fma(s.sub(s.sub(v, mv), mlo), av, bv);
                if silu {
                    y = silu_v(s, y);
                }
                s.store_n(out.as_mut_ptr().add(j), y, k);
            }
            j += k;
        }
    }
}

/// `x / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn silu_v<S: Simd>(s: S, x: S::V) -> S::V {
    let e = exp(s, s.sub(s.splat(0.0), x));
    s.div(x, s.add(s.splat(1.0), e))
}

/// The candle op over (x, weight, bias), all contiguous f32.
pub(crate) struct GroupNormOp {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "outpaint-group-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (cpu_slice(sx, lx)?, cpu_slice(sw, lw)?, cpu_slice(sb, lb)?);
        let dims = lx.dims();
        if dims.len() < 3 {
            candle_core::bail!("group norm needs an N×C×… tensor, got {:?}", dims);
        }
        let c = dims[1];
        if w.len() != c || b.len() != c || !c.is_multiple_of(self.groups) {
            candle_core::bail!(
                "group norm: {c} channels, {} groups, weight {:?}, bias {:?}",
                self.groups,
                lw.dims(),
                lb.dims()
            );
        }
        let mut out = vec![0f32; x.len()];
        group_norm_f32(
            x,
            &mut out,
            w,
            b,
            dims[0],
            self.groups,
            self.eps as f32,
            self.silu,
        );
        Ok((CpuStorage::F32(out), lx.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::testing::{assert_close, randn};
    use crate::kernels::{GroupNorm, reference};

    /// Group norm computed plainly in f64.
    fn exact(x: &candle_core::Tensor, w: &[f32], b: &[f32], groups: usize, silu: bool) -> Vec<f32> {
        let n = x.dim(0).unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let per_group = xs.len() / (n * groups);
        let spatial = per_group / (w.len() / groups);
        let mut out = vec![0f32; xs.len()];
        for (gi, (xg, og)) in xs
            .chunks(per_group)
            .zip(out.chunks_mut(per_group))
            .enumerate()
        {
            let mean = xg.iter().map(|&v| v as f64).sum::<f64>() / per_group as f64;
            let var = xg.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / per_group as f64;
            for (i, (xv, o)) in xg.iter().zip(og.iter_mut()).enumerate() {
                let c = (gi % groups) * (w.len() / groups) + i / spatial;
                let y = (*xv as f64 - mean) / (var + 1e-5).sqrt() * w[c] as f64 + b[c] as f64;
                *o = if silu { y / (1.0 + (-y).exp()) } else { y } as f32;
            }
        }
        out
    }

    fn check(x: &candle_core::Tensor, groups: usize, seed: u64) {
        let c = x.dim(1).unwrap();
        let w = randn(seed, &[c], 0.5, 1.0);
        let b = randn(seed + 1, &[c], 0.5, 0.0);
        let gn = GroupNorm::new(w.clone(), b.clone(), groups, 1e-5).unwrap();
        let (wv, bv): (Vec<f32>, Vec<f32>) = (w.to_vec1().unwrap(), b.to_vec1().unwrap());
        for silu in [false, true] {
            let fast = if silu {
                gn.forward_silu(x).unwrap()
            } else {
                gn.forward(x).unwrap()
            };
            let what = format!("{:?} silu {silu}", x.dims());
            let want = reference::group_norm(x, &w, &b, groups, 1e-5, silu).unwrap();
            assert_close(&fast, &want, 1e-4, &what);
            let exact = exact(x, &wv, &bv, groups, silu);
            let exact = candle_core::Tensor::from_vec(exact, x.dims(), x.device()).unwrap();
            assert_close(&fast, &exact, 2e-6, &what);
        }
    }

    #[test]
    fn group_norm_matches_reference() {
        check(&randn(1, &[2, 6, 5, 7], 1.0, 0.0), 3, 10);
        // Large offset: the variance must not come from E[x²] - E[x]².
        check(&randn(2, &[2, 8, 33, 17], 0.1, 30.0), 4, 20);
        check(&randn(3, &[3, 8, 11], 2.0, -1.0), 8, 30);
        check(&randn(4, &[1, 32, 9, 9], 1.0, 0.0), 32, 40);
        // Non-contiguous.
        check(
            &randn(5, &[2, 7, 6, 4], 1.0, 0.0)
                .permute((0, 3, 1, 2))
                .unwrap(),
            2,
            50,
        );
    }
}
