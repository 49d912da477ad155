//! GEGLU (`h * gelu(gate)` with the exact, erf-based GELU) in one vectorised pass.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use super::cpu_slice;
use super::simd::{Simd, dispatch, one_plus_erf};

/// Elements of output per rayon task.
const TASK_ELEMS: usize = 1 << 15;

/// `out[r, j] = x[r, j] * gelu(x[r, m + j])` for rows `r` of `x` (length `2m`) and `out` (`m`).
pub(crate) fn geglu_f32(x: &[f32], out: &mut [f32], m: usize) {
    assert_eq!(x.len(), 2 * out.len());
    if m == 0 {
        return;
    }
    let rows_per_task = (TASK_ELEMS / m).max(1);
    out.par_chunks_mut(rows_per_task * m)
        .zip(x.par_chunks(rows_per_task * 2 * m))
        .for_each(|(out, x)| geglu_rows(x, out, m));
}

dispatch!(fn geglu_rows(x: &[f32], out: &mut [f32], m: usize) => geglu_rows_kernel);

#[inline(always)]
fn geglu_rows_kernel<S: Simd>(s: S, x: &[f32], out: &mut [f32], m: usize) {
    for (x, out) in x.chunks_exact(2 * m).zip(out.chunks_exact_mut(m)) {
        let (h, g) = x.split_at(m);
        let mut j = 0;
        while j < m {
            let k = (m - j).min(S::LANES);
            // SAFETY: `k` values remain from `j` in `h`, `g` and `out` (each of length `m`).
            unsafe {
                let hv = s.load_n(h.as_ptr().add(j), k);
                let gv = s.load_n(g.as_ptr().add(j), k);
                s.store_n(out.as_mut_ptr().add(j), s.mul(hv, gelu(s, gv)), k);
            }
            j += k;
        }
    }
}

/// `x * (1 + erf(x / √2)) / 2`.
#[inline(always)]
pub(crate) fn gelu<S: Simd>(s: S, x: S::V) -> S::V {
    let e = one_plus_erf(s, s.mul(x, s.splat(std::f32::consts::FRAC_1_SQRT_2)));
    s.mul(s.mul(x, s.splat(0.5)), e)
}

/// The candle op: a contiguous (…, 2m) f32 tensor to (…, m).
pub(crate) struct GegluOp;

impl CustomOp1 for GegluOp {
    fn name(&self) -> &'static str {
        "outpaint-geglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice(s, l)?;
        let mut dims = l.dims().to_vec();
        let last = dims
            .last_mut()
            .ok_or_else(|| candle_core::Error::Msg("geglu needs at least one dimension".into()))?;
        if *last % 2 != 0 {
            candle_core::bail!("geglu needs an even last dimension, got {:?}", l.dims());
        }
        *last /= 2;
        let m = *last;
        let mut out = vec![0f32; x.len() / 2];
        geglu_f32(x, &mut out, m);
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::testing::{assert_close, randn};
    use crate::kernels::{geglu, reference};

    #[test]
    fn geglu_matches_reference() {
        for (i, shape) in [
            vec![2, 7, 74],
            vec![3, 1, 2],
            vec![5, 2 * 45],
            vec![1, 4, 3, 34],
        ]
        .into_iter()
        .enumerate()
        {
            let x = randn(i as u64, &shape, 3.0, 0.0);
            assert_close(
                &geglu(&x).unwrap(),
                &reference::geglu(&x).unwrap(),
                1e-5,
                &format!("{shape:?}"),
            );
        }
        // Non-contiguous: the transpose of a (2, 38, 9) tensor.
        let x = randn(9, &[2, 38, 9], 4.0, 0.5).transpose(1, 2).unwrap();
        assert_close(
            &geglu(&x).unwrap(),
            &reference::geglu(&x).unwrap(),
            1e-5,
            "transposed",
        );
    }
}
