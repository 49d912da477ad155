//! Memory-efficient attention: `softmax(q kᵀ · scale) v` one block of query rows at a time, so
//! that only a (block, lk) tile of scores ever exists (per thread), never the (lq, lk) matrix.
//!
//! Per (head, query block), in parallel: `S = scale · Q_blk Kᵀ` (gemm), a vectorised row softmax
//! left unnormalised, `O_blk = P V` (gemm), then each output row divided by its sum.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};
use gemm::Parallelism;
use rayon::prelude::*;

use super::simd::{Simd, dispatch, exp};
use super::{SendPtr, cpu_slice};

/// Target number of scores in one block (per thread). Measured on the 2-core AVX-512 machine at
/// lk = 4096: 2^18 (64 rows) 0.28 s, 2^19 0.27 s, 2^20 (256 rows) 0.24 s, 2^21 0.25 s.
const SCORES_BUDGET: usize = 1 << 20;
/// Most query rows in one block.
const MAX_ROWS: usize = 1024;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Query rows per block for `lk` keys and a budget of scores.
fn block_rows(lq: usize, lk: usize, budget: usize) -> usize {
    (budget / lk.max(1)).clamp(1, MAX_ROWS).min(lq.max(1))
}

/// Attention over contiguous `q` (n, lq, d), `k` and `v` (n, lk, d) into `out` (n, lq, d).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    n: usize,
    lq: usize,
    lk: usize,
    d: usize,
    scale: f32,
    scores_budget: usize,
) {
    assert_eq!(q.len(), n * lq * d);
    assert_eq!(k.len(), n * lk * d);
    assert_eq!(v.len(), n * lk * d);
    assert_eq!(out.len(), n * lq * d);
    if out.is_empty() {
        return;
    }
    if lk == 0 {
        // A product over an empty inner dimension, as the reference's matmul gives.
        out.fill(0.0);
        return;
    }
    let bq = block_rows(lq, lk, scores_budget);
    let blocks = lq.div_ceil(bq);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..n * blocks).into_par_iter().for_each(|i| {
        let (h, b) = (i / blocks, i % blocks);
        let r0 = h * lq + b * bq;
        let rows = bq.min(lq - b * bq);
        // SAFETY: rows `r0..r0 + rows` of `out` belong to this task alone.
        let o = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(r0 * d), rows * d) };
        let q_blk = &q[r0 * d..(r0 + rows) * d];
        let k_h = &k[h * lk * d..(h + 1) * lk * d];
        let v_h = &v[h * lk * d..(h + 1) * lk * d];
        SCORES.with_borrow_mut(|s| {
            if s.len() < rows * lk {
                s.resize(rows * lk, 0.0);
            }
            block(q_blk, k_h, v_h, o, &mut s[..rows * lk], rows, lk, d, scale);
        });
    });
}

/// One block of `rows` query rows.
#[allow(clippy::too_many_arguments)]
fn block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    s: &mut [f32],
    rows: usize,
    lk: usize,
    d: usize,
    scale: f32,
) {
    // SAFETY: s (rows, lk) row-major; q (rows, d) row-major; kᵀ read as (d, lk) with column
    // stride d and row stride 1 from k (lk, d); all in bounds by the slice lengths.
    unsafe {
        gemm::gemm(
            rows,
            lk,
            d,
            s.as_mut_ptr(),
            1,
            lk as isize,
            false,
            q.as_ptr(),
            1,
            d as isize,
            k.as_ptr(),
            d as isize,
            1,
            0.0f32,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
    let mut inv = [0f32; MAX_ROWS];
    softmax_rows(s, &mut inv[..rows], lk);
    // SAFETY: out (rows, d) row-major; s (rows, lk); v (lk, d) row-major; in bounds.
    unsafe {
        gemm::gemm(
            rows,
            d,
            lk,
            out.as_mut_ptr(),
            1,
            d as isize,
            false,
            s.as_ptr(),
            1,
            lk as isize,
            v.as_ptr(),
            1,
            d as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
    for (row, &f) in out.chunks_exact_mut(d).zip(inv.iter()) {
        row.iter_mut().for_each(|x| *x *= f);
    }
}

dispatch!(fn softmax_rows(s: &mut [f32], inv: &mut [f32], lk: usize) => softmax_rows_kernel);

/// Each row of `s` (length `lk`) replaced by `exp(x - max)`; `inv` gets `1 / Σ exp`.
#[inline(always)]
fn softmax_rows_kernel<S: Simd>(s: S, scores: &mut [f32], inv: &mut [f32], lk: usize) {
    let full = lk / S::LANES * S::LANES;
    let tail = lk - full;
    for (row, inv) in scores.chunks_exact_mut(lk).zip(inv.iter_mut()) {
        let p = row.as_mut_ptr();
        let mut m = s.splat(f32::NEG_INFINITY);
        let mut j = 0;
        // SAFETY (every access below): `j + LANES ≤ full ≤ lk`, or the `tail` values after
        // `full`, within `row`.
        while j < full {
            m = s.max(m, unsafe { s.load(p.add(j)) });
            j += S::LANES;
        }
        let mut mx = s.reduce_max(m);
        for &x in &row[full..] {
            mx = mx.max(x);
        }
        let mv = s.splat(mx);
        let (mut a0, mut a1) = (s.splat(0.0), s.splat(0.0));
        j = 0;
        while j + 2 * S::LANES <= full {
            unsafe {
                let e0 = exp(s, s.sub(s.load(p.add(j)), mv));
                let e1 = exp(s, s.sub(s.load(p.add(j + S::LANES)), mv));
                s.store(p.add(j), e0);
                s.store(p.add(j + S::LANES), e1);
                a0 = s.add(a0, e0);
                a1 = s.add(a1, e1);
            }
            j += 2 * S::LANES;
        }
        while j < full {
            unsafe {
                let e0 = exp(s, s.sub(s.load(p.add(j)), mv));
                s.store(p.add(j), e0);
                a0 = s.add(a0, e0);
            }
            j += S::LANES;
        }
        let mut sum = s.reduce_sum(s.add(a0, a1));
        if tail > 0 {
            unsafe {
                let e = exp(s, s.sub(s.load_n(p.add(full), tail), mv));
                s.store_n(p.add(full), e, tail);
            }
            sum += row[full..].iter().sum::<f32>();
        }
        *inv = 1.0 / sum;
    }
}

/// The candle op over (q, k, v), all contiguous f32.
pub(crate) struct AttentionOp {
    pub scale: f32,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "outpaint-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, len_q, d) = lq.shape().dims3()?;
        let (nk, len_k, dk) = lk.shape().dims3()?;
        if nk != n || dk != d || lv.dims() != lk.dims() {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?}",
                lq.dims(),
                lk.dims(),
                lv.dims()
            );
        }
        let (q, k, v) = (cpu_slice(sq, lq)?, cpu_slice(sk, lk)?, cpu_slice(sv, lv)?);
        let mut out = vec![0f32; n * len_q * d];
        attention_f32(
            q,
            k,
            v,
            &mut out,
            n,
            len_q,
            len_k,
            d,
            self.scale,
            SCORES_BUDGET,
        );
        Ok((CpuStorage::F32(out), Shape::from((n, len_q, d))))
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::testing::{assert_close, randn};
    use crate::kernels::{attention, reference};

    fn check(n: usize, lq: usize, lk: usize, d: usize, seed: u64) {
        let q = randn(seed, &[n, lq, d], 1.0, 0.0);
        let k = randn(seed + 1, &[n, lk, d], 1.0, 0.0);
        let v = randn(seed + 2, &[n, lk, d], 1.0, 0.0);
        let scale = 1.0 / (d as f64).sqrt();
        assert_close(
            &attention(&q, &k, &v, scale).unwrap(),
            &reference::attention(&q, &k, &v, scale).unwrap(),
            1e-5,
            &format!("n {n} lq {lq} lk {lk} d {d}"),
        );
    }

    #[test]
    fn attention_matches_reference() {
        check(3, 37, 77, 8, 1);
        check(2, 300, 77, 40, 2); // two blocks, the second partial
        check(2, 45, 9001, 4, 3); // many small blocks, lk not a multiple of the lanes
        check(1, 1, 1, 3, 4);
        check(4, 17, 64, 16, 5);
    }

    /// Blocks of every size give the reference's result, also the last block partial.
    #[test]
    fn attention_blockings_agree() {
        let (n, lq, lk, d) = (3, 70, 77, 24);
        let q = randn(1, &[n, lq, d], 1.0, 0.0);
        let k = randn(2, &[n, lk, d], 1.0, 0.0);
        let v = randn(3, &[n, lk, d], 1.0, 0.0);
        let want = reference::attention(&q, &k, &v, 0.2).unwrap();
        let vecs = [&q, &k, &v].map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        for budget in [1, 16 * lk, 33 * lk, 1 << 20] {
            let mut out = vec![f32::NAN; n * lq * d];
            super::attention_f32(
                &vecs[0], &vecs[1], &vecs[2], &mut out, n, lq, lk, d, 0.2, budget,
            );
            let got = candle_core::Tensor::from_vec(out, (n, lq, d), q.device()).unwrap();
            assert_close(&got, &want, 1e-5, &format!("budget {budget}"));
        }
    }

    #[test]
    fn attention_of_non_contiguous_inputs() {
        let (n, lq, lk, d) = (2, 33, 50, 12);
        let q = randn(1, &[lq, n, d], 1.0, 0.0).transpose(0, 1).unwrap();
        let k = randn(2, &[n, d, lk], 2.0, 0.0).transpose(1, 2).unwrap();
        let v = randn(3, &[n, lk, 2 * d], 1.0, 0.0).narrow(2, 3, d).unwrap();
        assert_close(
            &attention(&q, &k, &v, 0.3).unwrap(),
            &reference::attention(&q, &k, &v, 0.3).unwrap(),
            1e-5,
            "non-contiguous",
        );
    }
}
