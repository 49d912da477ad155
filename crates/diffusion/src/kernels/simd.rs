//! A small SIMD layer for the CPU kernels: one trait, [`Simd`], implemented by AVX-512, AVX2+FMA
//! and a portable scalar fallback, and the vector math the kernels share (`exp`, `erf`).
//!
//! Kernels are written once as `#[inline(always)]` functions generic over `S: Simd`; the
//! [`dispatch!`](crate::kernels::simd::dispatch) macro instantiates them inside
//! `#[target_feature]` functions and picks one at run time, so the crate still builds for
//! baseline x86-64 (and for aarch64, where the scalar path is used).

/// Lane-wise f32 vector operations. A value of an implementing type is a proof that the CPU
/// supports the instructions it uses (only the dispatcher creates the SIMD ones, after
/// detection).
pub(crate) trait Simd: Copy + Send + Sync {
    /// The vector of [`Self::LANES`] f32.
    type V: Copy;
    /// Number of f32 lanes.
    const LANES: usize;

    fn splat(self, x: f32) -> Self::V;
    /// Loads `LANES` values from `p` (no alignment needed).
    ///
    /// # Safety
    /// `p..p + LANES` must be readable.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Stores `LANES` values at `p` (no alignment needed).
    ///
    /// # Safety
    /// `p..p + LANES` must be writable.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused where the CPU can.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    fn abs(self, a: Self::V) -> Self::V;
    /// Lane-wise `if a > b { x } else { y }`.
    fn select_gt(self, a: Self::V, b: Self::V, x: Self::V, y: Self::V) -> Self::V;
    /// Rounds to the nearest integer (ties to even).
    fn round(self, a: Self::V) -> Self::V;
    /// `2^n` for integral `n` in `[-126, 127]`.
    fn pow2i(self, n: Self::V) -> Self::V;
    fn reduce_sum(self, a: Self::V) -> f32;
    fn reduce_max(self, a: Self::V) -> f32;

    /// Loads the first `n ≤ LANES` values at `p`, zeros in the other lanes.
    ///
    /// # Safety
    /// `p..p + n` must be readable.
    #[inline(always)]
    unsafe fn load_n(self, p: *const f32, n: usize) -> Self::V {
        if n == Self::LANES {
            // SAFETY: as the caller guarantees.
            return unsafe { self.load(p) };
        }
        let mut buf = [0f32; 16];
        debug_assert!(n <= Self::LANES && Self::LANES <= 16);
        // SAFETY: the caller guarantees `n` readable values at `p`; `buf` holds 16 ≥ LANES.
        unsafe {
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
            self.load(buf.as_ptr())
        }
    }

    /// Stores the first `n ≤ LANES` lanes of `v` at `p`.
    ///
    /// # Safety
    /// `p..p + n` must be writable.
    #[inline(always)]
    unsafe fn store_n(self, p: *mut f32, v: Self::V, n: usize) {
        if n == Self::LANES {
            // SAFETY: as the caller guarantees.
            return unsafe { self.store(p, v) };
        }
        let mut buf = [0f32; 16];
        debug_assert!(n <= Self::LANES && Self::LANES <= 16);
        // SAFETY: `buf` holds 16 ≥ LANES values; the caller guarantees `n` writable at `p`.
        unsafe {
            self.store(buf.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
        }
    }
}

/// The portable fallback: one lane.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scalar;

impl Simd for Scalar {
    type V = f32;
    const LANES: usize = 1;

    #[inline(always)]
    fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> f32 {
        // SAFETY: the caller guarantees one readable value.
        unsafe { p.read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: f32) {
        // SAFETY: the caller guarantees one writable value.
        unsafe { p.write_unaligned(v) }
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    #[inline(always)]
    fn fma(self, a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    fn min(self, a: f32, b: f32) -> f32 {
        a.min(b)
    }
    #[inline(always)]
    fn abs(self, a: f32) -> f32 {
        a.abs()
    }
    #[inline(always)]
    fn select_gt(self, a: f32, b: f32, x: f32, y: f32) -> f32 {
        if a > b { x } else { y }
    }
    #[inline(always)]
    fn round(self, a: f32) -> f32 {
        a.round_ties_even()
    }
    #[inline(always)]
    fn pow2i(self, n: f32) -> f32 {
        f32::from_bits(((n as i32 + 127) as u32) << 23)
    }
    #[inline(always)]
    fn reduce_sum(self, a: f32) -> f32 {
        a
    }
    #[inline(always)]
    fn reduce_max(self, a: f32) -> f32 {
        a
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::*;

    /// AVX-512F, 16 lanes. Only [`dispatch!`](super::dispatch) creates one, after
    /// `is_x86_feature_detected!("avx512f")`.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx512(());

    impl Avx512 {
        /// # Safety
        /// The CPU must support AVX-512F.
        #[inline(always)]
        pub(crate) unsafe fn new_unchecked() -> Self {
            Avx512(())
        }
    }

    // SAFETY (every `unsafe` block in this impl): a value of `Avx512` exists only on a CPU with
    // AVX-512F (see `new_unchecked`), so the intrinsics are supported; memory accesses are
    // covered by the callers' contracts stated on the trait.
    impl Simd for Avx512 {
        type V = __m512;
        const LANES: usize = 16;

        #[inline(always)]
        fn splat(self, x: f32) -> __m512 {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m512) {
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn load_n(self, p: *const f32, n: usize) -> __m512 {
            unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p) }
        }
        #[inline(always)]
        unsafe fn store_n(self, p: *mut f32, v: __m512, n: usize) {
            unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v) }
        }
        #[inline(always)]
        fn add(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        fn div(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_div_ps(a, b) }
        }
        #[inline(always)]
        fn fma(self, a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn max(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        fn min(self, a: __m512, b: __m512) -> __m512 {
            unsafe { _mm512_min_ps(a, b) }
        }
        #[inline(always)]
        fn abs(self, a: __m512) -> __m512 {
            unsafe { _mm512_abs_ps(a) }
        }
        #[inline(always)]
        fn select_gt(self, a: __m512, b: __m512, x: __m512, y: __m512) -> __m512 {
            unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, b), y, x) }
        }
        #[inline(always)]
        fn round(self, a: __m512) -> __m512 {
            unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        fn pow2i(self, n: __m512) -> __m512 {
            unsafe {
                let e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
                _mm512_castsi512_ps(_mm512_slli_epi32::<23>(e))
            }
        }
        #[inline(always)]
        fn reduce_sum(self, a: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(a) }
        }
        #[inline(always)]
        fn reduce_max(self, a: __m512) -> f32 {
            unsafe { _mm512_reduce_max_ps(a) }
        }
    }

    /// AVX2 with FMA, 8 lanes. Only [`dispatch!`](super::dispatch) creates one, after
    /// `is_x86_feature_detected!` for both.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Avx2(());

    impl Avx2 {
        /// # Safety
        /// The CPU must support AVX2 and FMA.
        #[inline(always)]
        pub(crate) unsafe fn new_unchecked() -> Self {
            Avx2(())
        }
    }

    // SAFETY (every `unsafe` block in this impl): a value of `Avx2` exists only on a CPU with
    // AVX2 and FMA (see `new_unchecked`); memory accesses are covered by the callers'
    // contracts stated on the trait.
    impl Simd for Avx2 {
        type V = __m256;
        const LANES: usize = 8;

        #[inline(always)]
        fn splat(self, x: f32) -> __m256 {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: __m256) {
            unsafe { _mm256_storeu_ps(p, v) }
        }
        #[inline(always)]
        fn add(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        fn sub(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        fn mul(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        fn div(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        fn fma(self, a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        fn max(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        fn min(self, a: __m256, b: __m256) -> __m256 {
            unsafe { _mm256_min_ps(a, b) }
        }
        #[inline(always)]
        fn abs(self, a: __m256) -> __m256 {
            unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
        }
        #[inline(always)]
        fn select_gt(self, a: __m256, b: __m256, x: __m256, y: __m256) -> __m256 {
            unsafe { _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_GT_OQ>(a, b)) }
        }
        #[inline(always)]
        fn round(self, a: __m256) -> __m256 {
            unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
        }
        #[inline(always)]
        fn pow2i(self, n: __m256) -> __m256 {
            unsafe {
                let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
            }
        }
        #[inline(always)]
        fn reduce_sum(self, a: __m256) -> f32 {
            unsafe {
                let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn reduce_max(self, a: __m256) -> f32 {
            unsafe {
                let s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_max_ss(s, _mm_shuffle_ps::<0b01>(s, s));
                _mm_cvtss_f32(s)
            }
        }
    }
}

/// Defines `fn $name(args) -> ret` that runs the generic `$kernel(simd, args)` with the best
/// instruction set of this CPU: AVX-512F, else AVX2+FMA, else scalar.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $kernel:ident) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn v4($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: only called below after detecting AVX-512F.
                    $kernel(unsafe { $crate::kernels::simd::Avx512::new_unchecked() }, $($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? {
                    // SAFETY: only called below after detecting AVX2 and FMA.
                    $kernel(unsafe { $crate::kernels::simd::Avx2::new_unchecked() }, $($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { v4($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { v3($($arg),*) };
                }
            }
            $kernel($crate::kernels::simd::Scalar, $($arg),*)
        }
    };
}
pub(crate) use dispatch;

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x`, about 1 ulp (Cephes' `expf`); inputs are clamped to `[-87.3, 88]`, so it returns
/// about 1.2e-38 rather than 0 for very negative `x`, and never infinity.
#[inline(always)]
pub(crate) fn exp<S: Simd>(s: S, x: S::V) -> S::V {
    let x = s.min(s.max(x, s.splat(-87.336_54)), s.splat(88.0));
    let n = s.round(s.mul(x, s.splat(LOG2E)));
    let r = s.fma(n, s.splat(-LN2_HI), x);
    let r = s.fma(n, s.splat(-LN2_LO), r);
    let mut p = s.splat(1.987_569_1e-4);
    p = s.fma(p, r, s.splat(1.398_199_9e-3));
    p = s.fma(p, r, s.splat(8.333_452e-3));
    p = s.fma(p, r, s.splat(4.166_579_6e-2));
    p = s.fma(p, r, s.splat(1.666_666_5e-1));
    p = s.fma(p, r, s.splat(0.5));
    let r2 = s.mul(r, r);
    p = s.fma(p, r2, s.add(r, s.splat(1.0)));
    s.mul(p, s.pow2i(n))
}

/// `1 + erf(a)`: absolute error under 2.5e-7 for every `a` (about 2 ulp of `1 + erf`), and
/// relative error under 1e-4 in the negative tail down to `1 + erf(a) = 1e-7` (`a ≈ -3.8`). The minimax approximations are Norbert Juffa's `erff`
/// (max error about 1 ulp): an odd polynomial for `|a| < 0.9277`, `1 - exp(poly(|a|))` above.
#[inline(always)]
pub(crate) fn one_plus_erf<S: Simd>(s: S, a: S::V) -> S::V {
    let t = s.abs(a);
    let sq = s.mul(a, a);
    // Small |a|: erf(a) = a + a * poly(a²).
    let mut p = s.splat(-5.967_617e-4);
    p = s.fma(p, sq, s.splat(4.991_194_2e-3));
    p = s.fma(p, sq, s.splat(-2.676_813_5e-2));
    p = s.fma(p, sq, s.splat(1.128_199_3e-1));
    p = s.fma(p, sq, s.splat(-3.761_253_4e-1));
    p = s.fma(p, sq, s.splat(1.283_791_7e-1));
    let small = s.add(s.fma(p, a, a), s.splat(1.0));
    // Large |a|: erf(|a|) = 1 - exp(q(|a|)).
    let mut r = s.fma(s.splat(-1.728_534_7e-5), t, s.splat(3.831_971_3e-4));
    let u = s.fma(s.splat(-3.883_964_4e-3), t, s.splat(2.425_462_2e-2));
    r = s.fma(r, sq, u);
    r = s.fma(r, t, s.splat(-1.067_778_8e-1));
    r = s.fma(r, t, s.splat(-6.348_467e-1));
    r = s.fma(r, t, s.splat(-1.287_175_1e-1));
    r = s.fma(r, t, s.sub(s.splat(0.0), t));
    let q = exp(s, r);
    // 1 + erf(a) = 2 - q for a > 0, q for a < 0.
    let large = s.select_gt(a, s.splat(0.0), s.sub(s.splat(2.0), q), q);
    s.select_gt(t, s.splat(0.927_734_4), large, small)
}

#[cfg(test)]
mod tests {
    use super::*;

    dispatch!(fn exp_all(x: &[f32], out: &mut [f32]) => exp_kernel);
    dispatch!(fn erf_all(x: &[f32], out: &mut [f32]) => erf_kernel);

    #[inline(always)]
    fn map<S: Simd>(s: S, x: &[f32], out: &mut [f32], f: impl Fn(S, S::V) -> S::V) {
        let n = x.len();
        let mut i = 0;
        while i < n {
            let k = (n - i).min(S::LANES);
            // SAFETY: `k` values remain in both slices from `i`.
            unsafe {
                let v = s.load_n(x.as_ptr().add(i), k);
                s.store_n(out.as_mut_ptr().add(i), f(s, v), k);
            }
            i += k;
        }
    }

    #[inline(always)]
    fn exp_kernel<S: Simd>(s: S, x: &[f32], out: &mut [f32]) {
        map(s, x, out, exp)
    }

    #[inline(always)]
    fn erf_kernel<S: Simd>(s: S, x: &[f32], out: &mut [f32]) {
        map(s, x, out, one_plus_erf)
    }

    fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
            .collect()
    }

    #[test]
    fn exp_is_accurate() {
        let x = grid(-87.0, 88.0, 100_003);
        let mut y = vec![0f32; x.len()];
        exp_all(&x, &mut y);
        let mut ys = vec![0f32; x.len()];
        exp_kernel(Scalar, &x, &mut ys);
        for ((&x, &y), &ys) in x.iter().zip(&y).zip(&ys) {
            let e = (x as f64).exp();
            assert!(
                ((y as f64 - e) / e).abs() < 3e-7,
                "exp({x}) = {y}, want {e}"
            );
            assert!(
                ((ys as f64 - e) / e).abs() < 3e-7,
                "exp({x}) = {ys}, want {e}"
            );
        }
        exp_all(&[-1000.0, 1000.0], &mut y[..2]);
        assert!(y[0] < 1.3e-38 && y[1].is_finite());
    }

    #[test]
    fn erf_is_accurate() {
        let x = grid(-10.0, 10.0, 200_001);
        let mut y = vec![0f32; x.len()];
        erf_all(&x, &mut y);
        let mut ys = vec![0f32; x.len()];
        erf_kernel(Scalar, &x, &mut ys);
        for ((&x, &y), &ys) in x.iter().zip(&y).zip(&ys) {
            let x64 = x as f64;
            let e = if x < 0.0 {
                candle_core::cpu::erf::erfc_f64(-x64)
            } else {
                1.0 + candle_core::cpu::erf::erf_f64(x64)
            };
            // Absolute error against 1 + erf (in [0, 2]), and relative in the negative tail.
            for y in [y as f64, ys as f64] {
                assert!((y - e).abs() <= 2.5e-7, "1+erf({x}) = {y}, want {e}");
                if e < 1e-2 && e > 1e-7 {
                    assert!(((y - e) / e).abs() <= 1e-4, "1+erf({x}) = {y}, want {e}");
                }
            }
        }
    }
}
