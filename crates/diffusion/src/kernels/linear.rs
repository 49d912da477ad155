//! `x · Wᵀ + b` over the last dimension: the rows of `x` (or the outputs, when there are more
//! outputs than rows) cut into tiles, one single-threaded GEMM per tile written on top of the
//! bias, tiles in parallel.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{SendPtr, cpu_slice};

/// Fewest rows (or outputs) in one task.
const MIN_ROWS: usize = 64;

/// `out[m, n] = Σ_k x[m, k] · w[n, k] + bias[n]` for contiguous row-major `x` (m, k), `w`
/// (n, k), `out` (m, n).
pub(crate) fn linear_f32(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    assert_eq!(out.len(), m * n);
    if out.is_empty() {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    // Split the larger of the rows and the outputs, so that what every task must read whole
    // (the weights when splitting rows, the input when splitting outputs) is the smaller.
    let (tiles, by_rows) = if m >= n {
        ((m / MIN_ROWS).clamp(1, 4 * threads), true)
    } else {
        ((n / MIN_ROWS).clamp(1, threads), false)
    };
    let along = if by_rows { m } else { n };
    let size = along.div_ceil(tiles).next_multiple_of(16).min(along);
    let tiles = along.div_ceil(size);
    let par = if tiles == 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..tiles).into_par_iter().for_each(|t| {
        let (i0, i1) = (t * size, ((t + 1) * size).min(along));
        let ((r0, r1), (c0, c1)) = if by_rows {
            ((i0, i1), (0, n))
        } else {
            ((0, m), (i0, i1))
        };
        // SAFETY: the block rows r0..r1 × columns c0..c1 of `out` belongs to this task alone.
        let dst = unsafe { out_ptr.get().add(r0 * n + c0) };
        if let Some(b) = bias {
            for r in 0..r1 - r0 {
                // SAFETY: row `r` of this task's block.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.add(r * n), c1 - c0) };
                row.copy_from_slice(&b[c0..c1]);
            }
        }
        // SAFETY: dst (r1 - r0, c1 - c0) with row stride n; x rows r0..r1 (·, k) row-major;
        // wᵀ columns c0..c1 read as (k, c1 - c0) with row stride 1 and column stride k from w
        // (n, k); all in bounds.
        unsafe {
            gemm::gemm(
                r1 - r0,
                c1 - c0,
                k,
                dst,
                1,
                n as isize,
                bias.is_some(),
                x.as_ptr().add(r0 * k),
                1,
                k as isize,
                w.as_ptr().add(c0 * k),
                k as isize,
                1,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        }
    });
}

fn run(
    lx: &Layout,
    lw: &Layout,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
) -> Result<(CpuStorage, Shape)> {
    let dims = lx.dims();
    let (n, k) = lw.shape().dims2()?;
    if dims.last() != Some(&k) {
        candle_core::bail!("linear: input {:?}, weight {:?}", dims, lw.dims());
    }
    let m = x.len() / k.max(1);
    let mut out = vec![0f32; m * n];
    linear_f32(x, w, b, &mut out, m, k, n);
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("non-empty") = n;
    Ok((CpuStorage::F32(out), Shape::from(out_dims)))
}

/// The candle op over (x, weight) or (x, weight, bias), all contiguous f32.
pub(crate) struct LinearOp;

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "outpaint-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        run(lx, lw, cpu_slice(sx, lx)?, cpu_slice(sw, lw)?, None)
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "outpaint-linear-bias"
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
        let b = cpu_slice(sb, lb)?;
        if b.len() != lw.dims()[0] {
            candle_core::bail!("linear: bias {:?}, weight {:?}", lb.dims(), lw.dims());
        }
        run(lx, lw, cpu_slice(sx, lx)?, cpu_slice(sw, lw)?, Some(b))
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::testing::{assert_close, randn};
    use crate::kernels::{Linear, reference};
    use candle_core::Module;

    #[test]
    fn linear_matches_reference() {
        for (i, (dims, k, n, bias)) in [
            (vec![2, 37, 20], 20, 13, true),
            (vec![300, 9], 9, 33, false),
            (vec![1, 1, 5], 5, 3, true),
            (vec![3, 77, 16], 16, 40, true),
            (vec![2, 200, 24], 24, 7, false),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let x = randn(seed, &dims, 1.0, 0.0);
            let w = randn(seed + 1, &[n, k], 0.3, 0.0);
            let b = bias.then(|| randn(seed + 2, &[n], 1.0, 0.0));
            let want = reference::linear(&x, &w, b.as_ref()).unwrap();
            let got = Linear::new(w, b).forward(&x).unwrap();
            assert_close(&got, &want, 1e-5, &format!("{dims:?} -> {n}"));
        }
        // Non-contiguous input.
        let x = randn(7, &[2, 12, 30], 1.0, 0.0).transpose(1, 2).unwrap();
        let w = randn(8, &[5, 12], 1.0, 0.0);
        let want = reference::linear(&x, &w, None).unwrap();
        assert_close(
            &Linear::new(w, None).forward(&x).unwrap(),
            &want,
            1e-5,
            "transposed",
        );
    }
}
