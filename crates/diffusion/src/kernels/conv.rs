//! 2-D convolution (NCHW, groups 1, dilation 1) as tiled im2col + GEMM.
//!
//! The output pixels of each image are cut into tiles; for a tile, the column matrix
//! `col[K = c_in·kh·kw, tile]` is built (Caffe layout: each row a shifted, zero-edged copy of an
//! input row) in a per-thread scratch buffer of at most [`COL_BUDGET`] floats, and
//! `out[c_out, tile] = W[c_out, K] · col` is computed by `gemm` straight into the NCHW output,
//! on top of the bias. A 1×1, stride-1, unpadded convolution needs no columns: the input is
//! the column matrix.
//!
//! Threads: with enough pixels, the (image, tile) tasks run in parallel with single-threaded
//! GEMMs. With few (the 8×8 level), the columns of all images are built side by side and the
//! tasks split the output channels instead, so that the weights are read once; if those columns
//! would be too large, one tile after the other with each GEMM using every thread.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape};
use gemm::Parallelism;
use rayon::prelude::*;

use super::{SendPtr, cpu_slice};

/// Most floats in one column buffer (per thread).
const COL_BUDGET: usize = 1 << 20;
/// Below this many output pixels per thread, split the output channels instead.
const MIN_PIXELS_PER_TASK: usize = 256;
/// Most floats in the column buffer of all images when splitting the output channels.
const FOLDED_BUDGET: usize = 1 << 22;

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvShape {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.padding - self.kh) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.padding - self.kw) / self.stride + 1
    }
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    fn direct(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// How the work is cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tiling {
    /// Most floats in one column buffer.
    pub col_budget: usize,
    /// Below this many output pixels per thread, split the output channels instead.
    pub min_pixels_per_task: usize,
    /// Most floats in the column buffer of all images when splitting the output channels.
    pub folded_budget: usize,
}

impl Default for Tiling {
    fn default() -> Self {
        Self {
            col_budget: COL_BUDGET,
            min_pixels_per_task: MIN_PIXELS_PER_TASK,
            folded_budget: FOLDED_BUDGET,
        }
    }
}

/// Convolution of contiguous NCHW `x` with contiguous `weight` (c_out, c_in, kh, kw) and
/// optional `bias` (c_out), into contiguous `out` (n, c_out, h_out, w_out).
pub(crate) fn conv2d_f32(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    sh: ConvShape,
    tiling: Tiling,
) {
    let (ho, wo) = (sh.h_out(), sh.w_out());
    let pixels = ho * wo;
    let k = sh.k();
    assert_eq!(x.len(), sh.n * sh.c_in * sh.h * sh.w);
    assert_eq!(weight.len(), sh.c_out * k);
    assert_eq!(out.len(), sh.n * sh.c_out * pixels);
    if let Some(b) = bias {
        assert_eq!(b.len(), sh.c_out);
    }
    if out.is_empty() {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let enough = sh.n * pixels >= threads * tiling.min_pixels_per_task;
    if !enough && sh.n * pixels * k <= tiling.folded_budget {
        folded(x, weight, bias, out, sh, threads);
        return;
    }
    let budget = if sh.direct() {
        usize::MAX
    } else {
        tiling.col_budget
    };
    let tile = pick_tile(pixels, sh.n, k, budget, if enough { threads } else { 1 });
    let tiles = pixels.div_ceil(tile);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let task = |i: usize, par: Parallelism| {
        let (b, t) = (i / tiles, i % tiles);
        let p0 = t * tile;
        let p1 = (p0 + tile).min(pixels);
        let x_b = &x[b * sh.c_in * sh.h * sh.w..(b + 1) * sh.c_in * sh.h * sh.w];
        let dst = out_ptr.get().wrapping_add(b * sh.c_out * pixels + p0);
        if sh.direct() {
            // SAFETY: `x_b` is the (c_in, h·w) column matrix; `dst` is this task's own columns
            // `p0..p1` of image `b`'s rows, which no other task touches.
            unsafe {
                tile_gemm(
                    sh,
                    weight,
                    bias,
                    &x_b[p0..],
                    pixels,
                    dst,
                    pixels,
                    p1 - p0,
                    par,
                )
            }
        } else {
            SCRATCH.with_borrow_mut(|col| {
                let n_t = p1 - p0;
                if col.len() < k * n_t {
                    col.resize(k * n_t, 0.0);
                }
                im2col(x_b, sh, p0, p1, &mut col[..k * n_t], n_t);
                // SAFETY: `col` is (K, n_t) row-major; `dst` as above.
                unsafe { tile_gemm(sh, weight, bias, col, n_t, dst, pixels, n_t, par) }
            })
        }
    };
    if enough {
        (0..sh.n * tiles)
            .into_par_iter()
            .for_each(|i| task(i, Parallelism::None));
    } else {
        (0..sh.n * tiles).for_each(|i| task(i, Parallelism::Rayon(threads)));
    }
}

/// Output pixels per tile: at most `budget / k` (the column buffer), a multiple of 64 (the
/// GEMM's tile of rows, 4 × 16 lanes, as the pixels become its rows) where possible, and if
/// possible such that the `n · tiles` tasks are a multiple of `threads`.
fn pick_tile(pixels: usize, n: usize, k: usize, budget: usize, threads: usize) -> usize {
    let align = if pixels >= 64 { 64 } else { 1 };
    let cap = (budget / k.max(1)).min(pixels);
    let max_t = (cap / align * align).max(align);
    let tasks = |t: usize| n * pixels.div_ceil(t);
    let mut t = max_t;
    while t >= align && 2 * t >= max_t {
        if tasks(t) >= threads && tasks(t).is_multiple_of(threads) {
            return t;
        }
        t -= align;
    }
    if tasks(max_t) >= threads {
        max_t
    } else {
        // Too few tasks: cut each image into enough tiles.
        pixels
            .div_ceil(threads.div_ceil(n))
            .next_multiple_of(align)
            .min(max_t)
    }
}

/// Few output pixels (the 8×8 level): the columns of every image side by side,
/// `tmp[c_out, n·pixels] = W · col`, one task per block of output channels so that each thread
/// reads its part of the weights once, then `out = tmp + bias` image by image.
fn folded(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    sh: ConvShape,
    threads: usize,
) {
    let (k, pixels) = (sh.k(), sh.h_out() * sh.w_out());
    let cols = sh.n * pixels;
    let image = sh.c_in * sh.h * sh.w;
    let mut col = vec![0f32; if sh.direct() { 0 } else { k * cols }];
    let col: &[f32] = if sh.direct() {
        if sh.n == 1 {
            x
        } else {
            // (n, c_in, P) to (c_in, n·P).
            col.resize(k * cols, 0.0);
            for b in 0..sh.n {
                for c in 0..k {
                    col[c * cols + b * pixels..c * cols + (b + 1) * pixels]
                        .copy_from_slice(&x[b * image + c * pixels..b * image + (c + 1) * pixels]);
                }
            }
            &col
        }
    } else {
        let ptr = SendPtr(col.as_mut_ptr());
        (0..sh.n).into_par_iter().for_each(|b| {
            // SAFETY: image `b` writes only its columns `b·pixels..(b+1)·pixels` of each row.
            let mine = unsafe {
                std::slice::from_raw_parts_mut(ptr.get().add(b * pixels), (k - 1) * cols + pixels)
            };
            im2col(&x[b * image..(b + 1) * image], sh, 0, pixels, mine, cols);
        });
        &col
    };
    let mut tmp = vec![0f32; sh.c_out * cols];
    // Output-channel blocks: a multiple of 16 rows, one or more per thread.
    let blk = sh
        .c_out
        .div_ceil(threads)
        .next_multiple_of(16)
        .min(sh.c_out);
    let tmp_ptr = SendPtr(tmp.as_mut_ptr());
    (0..sh.c_out.div_ceil(blk)).into_par_iter().for_each(|i| {
        let (m0, m1) = (i * blk, ((i + 1) * blk).min(sh.c_out));
        // SAFETY: rows `m0..m1` of `tmp` (c_out, cols) belong to this task; `weight` rows
        // `m0..m1` are (m1 - m0, K) row-major; `col` is (K, cols) row-major.
        unsafe {
            gemm::gemm(
                m1 - m0,
                cols,
                k,
                tmp_ptr.get().add(m0 * cols),
                1,
                cols as isize,
                false,
                weight.as_ptr().add(m0 * k),
                1,
                k as isize,
                col.as_ptr(),
                1,
                cols as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                Parallelism::None,
            )
        }
    });
    for (b, out) in out.chunks_exact_mut(sh.c_out * pixels).enumerate() {
        for (c, row) in out.chunks_exact_mut(pixels).enumerate() {
            let src = &tmp[c * cols + b * pixels..c * cols + (b + 1) * pixels];
            let add = bias.map_or(0.0, |bias| bias[c]);
            for (o, &t) in row.iter_mut().zip(src) {
                *o = t + add;
            }
        }
    }
}

/// `dst[c_out, n_t] = bias + W · col[K, n_t]`, `col` rows `col_rs` apart, `dst` rows
/// `dst_rs` apart.
///
/// # Safety
/// `dst` must be valid for writes of `c_out` rows of `n_t` floats `dst_rs` apart, not accessed
/// by anyone else meanwhile; `col` must hold `K` rows of `n_t` floats `col_rs` apart.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_gemm(
    sh: ConvShape,
    weight: &[f32],
    bias: Option<&[f32]>,
    col: &[f32],
    col_rs: usize,
    dst: *mut f32,
    dst_rs: usize,
    n_t: usize,
    par: Parallelism,
) {
    let k = sh.k();
    debug_assert!(col.len() >= (k - 1) * col_rs + n_t);
    if let Some(bias) = bias {
        for (c, &b) in bias.iter().enumerate() {
            // SAFETY: row `c` of the caller's `dst` region.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.add(c * dst_rs), n_t) };
            row.fill(b);
        }
    }
    // SAFETY: the dimensions and strides describe `weight` (c_out, K) row-major, `col` and the
    // caller's `dst` region, all in bounds per the caller's contract.
    unsafe {
        gemm::gemm(
            sh.c_out,
            n_t,
            k,
            dst,
            1,
            dst_rs as isize,
            bias.is_some(),
            weight.as_ptr(),
            1,
            k as isize,
            col.as_ptr(),
            1,
            col_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

/// The columns `p0..p1` (flattened output pixels) of image `x` (c_in, h, w):
/// `col[(ci, ky, kx), p - p0] = x[ci, oy·s + ky - pad, ox·s + kx - pad]`, zero outside.
///
/// Rows of `col` are `col_rs ≥ p1 - p0` apart.
fn im2col(x: &[f32], sh: ConvShape, p0: usize, p1: usize, col: &mut [f32], col_rs: usize) {
    let wo = sh.w_out();
    let n_t = p1 - p0;
    let (h, w, s, pad) = (sh.h, sh.w, sh.stride, sh.padding as isize);
    let mut r = 0;
    for ci in 0..sh.c_in {
        let plane = &x[ci * h * w..(ci + 1) * h * w];
        for ky in 0..sh.kh {
            for kx in 0..sh.kw {
                let row = &mut col[r * col_rs..r * col_rs + n_t];
                r += 1;
                // Output columns ox with 0 ≤ ox·s + kx - pad < w.
                let ox_lo = ((pad - kx as isize).max(0) as usize).div_ceil(s);
                let ox_hi = if w as isize + pad - kx as isize <= 0 {
                    0
                } else {
                    ((w as isize + pad - kx as isize) as usize)
                        .div_ceil(s)
                        .min(wo)
                };
                let mut p = p0;
                while p < p1 {
                    let (oy, ox0) = (p / wo, p % wo);
                    let ox1 = (wo).min(ox0 + (p1 - p));
                    let seg = &mut row[p - p0..p - p0 + (ox1 - ox0)];
                    let iy = (oy * s + ky) as isize - pad;
                    if iy < 0 || iy >= h as isize {
                        seg.fill(0.0);
                    } else {
                        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                        let lo = ox_lo.clamp(ox0, ox1);
                        let hi = ox_hi.clamp(lo, ox1);
                        seg[..lo - ox0].fill(0.0);
                        seg[hi - ox0..].fill(0.0);
                        let ix0 = (lo * s + kx) as isize - pad;
                        if hi > lo {
                            let ix0 = ix0 as usize;
                            let dst = &mut seg[lo - ox0..hi - ox0];
                            if s == 1 {
                                dst.copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                            } else {
                                for (j, d) in dst.iter_mut().enumerate() {
                                    *d = src[ix0 + j * s];
                                }
                            }
                        }
                    }
                    p += ox1 - ox0;
                }
            }
        }
    }
}

fn conv_shape(lx: &Layout, lw: &Layout, stride: usize, padding: usize) -> Result<ConvShape> {
    let (n, c_in, h, w) = lx.shape().dims4()?;
    let (c_out, c_in_w, kh, kw) = lw.shape().dims4()?;
    if c_in != c_in_w || stride == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
        candle_core::bail!(
            "conv2d: input {:?}, weight {:?}, stride {stride}, padding {padding}",
            lx.dims(),
            lw.dims()
        );
    }
    Ok(ConvShape {
        n,
        c_in,
        h,
        w,
        c_out,
        kh,
        kw,
        stride,
        padding,
    })
}

fn run(sh: ConvShape, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
    let (ho, wo) = (sh.h_out(), sh.w_out());
    let mut out = vec![0f32; sh.n * sh.c_out * ho * wo];
    conv2d_f32(x, w, b, &mut out, sh, Tiling::default());
    Ok((CpuStorage::F32(out), Shape::from((sh.n, sh.c_out, ho, wo))))
}

/// The candle op without bias: (x, weight).
pub(crate) struct Conv2dOp {
    pub stride: usize,
    pub padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "outpaint-conv2d"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let sh = conv_shape(lx, lw, self.stride, self.padding)?;
        run(sh, cpu_slice(sx, lx)?, cpu_slice(sw, lw)?, None)
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "outpaint-conv2d-bias"
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
        let sh = conv_shape(lx, lw, self.stride, self.padding)?;
        let b = cpu_slice(sb, lb)?;
        if b.len() != sh.c_out {
            candle_core::bail!("conv2d: bias {:?} for {} outputs", lb.dims(), sh.c_out);
        }
        run(sh, cpu_slice(sx, lx)?, cpu_slice(sw, lw)?, Some(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, randn};
    use crate::kernels::{Conv2d, reference};
    use candle_core::{Module, Tensor};

    #[allow(clippy::too_many_arguments)]
    fn case(
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        seed: u64,
    ) -> (Tensor, Tensor, Option<Tensor>, Tensor) {
        let x = randn(seed, &[n, c_in, h, w], 1.0, 0.0);
        let wt = randn(seed + 1, &[c_out, c_in, k, k], 0.3, 0.0);
        let b = bias.then(|| randn(seed + 2, &[c_out], 1.0, 0.0));
        let want = reference::conv2d(&x, &wt, b.as_ref(), stride, padding).unwrap();
        (x, wt, b, want)
    }

    #[test]
    fn conv2d_matches_reference() {
        // (n, c_in, h, w, c_out, k, stride, padding, bias)
        let cases = [
            (2, 5, 9, 7, 6, 3, 1, 1, true),
            (2, 5, 9, 7, 6, 3, 2, 1, true),
            (1, 3, 8, 8, 4, 3, 2, 0, false),
            (2, 4, 9, 9, 5, 3, 2, 0, true),
            (3, 6, 5, 4, 7, 1, 1, 0, true),
            (2, 6, 5, 4, 3, 1, 1, 0, false),
            (1, 4, 6, 7, 2, 3, 1, 0, true),
            (2, 3, 6, 6, 4, 1, 2, 0, true),
            (1, 2, 5, 5, 3, 5, 1, 2, true),
            (2, 16, 20, 24, 8, 3, 1, 1, true),
        ];
        for (i, &(n, ci, h, w, co, k, s, p, b)) in cases.iter().enumerate() {
            let (x, wt, bias, want) = case(n, ci, h, w, co, k, s, p, b, i as u64 * 10);
            let got = Conv2d::new(wt, bias, s, p).forward(&x).unwrap();
            assert_close(&got, &want, 1e-5, &format!("{:?}", cases[i]));
        }
    }

    #[test]
    fn conv2d_non_contiguous_input() {
        let (x, wt, bias, _) = case(2, 4, 7, 9, 3, 3, 1, 1, true, 7);
        let x = x.transpose(2, 3).unwrap();
        let want = reference::conv2d(&x, &wt, bias.as_ref(), 1, 1).unwrap();
        let got = Conv2d::new(wt, bias, 1, 1).forward(&x).unwrap();
        assert_close(&got, &want, 1e-5, "transposed");
    }

    /// Every way of cutting the work gives the same result: tiles splitting rows, tiny
    /// tiles, the parallel-tasks and the parallel-GEMM paths.
    #[test]
    fn conv2d_tilings_agree() {
        for &(n, ci, h, w, co, k, s, p) in &[
            (2, 6, 13, 11, 5, 3, 1, 1),
            (1, 6, 13, 11, 5, 3, 2, 1),
            (2, 7, 9, 10, 4, 1, 1, 0),
        ] {
            let (x, wt, bias, want) = case(n, ci, h, w, co, k, s, p, true, 3);
            let sh = ConvShape {
                n,
                c_in: ci,
                h,
                w,
                c_out: co,
                kh: k,
                kw: k,
                stride: s,
                padding: p,
            };
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let ws: Vec<f32> = wt.flatten_all().unwrap().to_vec1().unwrap();
            let bs: Vec<f32> = bias.unwrap().to_vec1().unwrap();
            for col_budget in [1, 7 * ci * k * k, 1 << 20] {
                for (min_pixels_per_task, folded_budget) in
                    [(1, 0), (1 << 20, 0), (1 << 20, 1 << 20)]
                {
                    let tiling = Tiling {
                        col_budget,
                        min_pixels_per_task,
                        folded_budget,
                    };
                    let mut out = vec![f32::NAN; want.elem_count()];
                    conv2d_f32(&xs, &ws, Some(&bs), &mut out, sh, tiling);
                    let got = Tensor::from_vec(out, want.dims(), want.device()).unwrap();
                    assert_close(&got, &want, 1e-5, &format!("{sh:?} {tiling:?}"));
                }
            }
        }
    }
}
