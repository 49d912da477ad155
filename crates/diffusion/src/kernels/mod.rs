//! The hot operations of the UNet and the VAE, owned here so that the CPU path can be faster
//! than candle's generic kernels.
//!
//! Each function has one contract and two paths: a fast path for f32 tensors on the CPU (made
//! contiguous first), and the plain candle composition (the reference, also used for other
//! dtypes and on CUDA and Metal, where candle's kernels are already good). The unit tests hold
//! the fast path to the reference.
//!
//! The fast paths, one file each, are candle custom ops (`cpu_fwd` only):
//! - `conv`: tiled im2col + `gemm` straight into the NCHW output, bias fused;
//! - `attention`: blocks of query rows (scores, softmax and `P·V` per block), never the whole
//!   score matrix;
//! - `linear`: `x·Wᵀ + b` with the bias fused, tiles in parallel;
//! - `activation`: GEGLU with a vectorised erf;
//! - `norm`: group norm with an optional fused SiLU.
//!
//! `simd` holds the vector layer they share: AVX-512F, AVX2+FMA or scalar, chosen at run time.
//! Threads come from rayon's pool (`RAYON_NUM_THREADS`).

use candle_core::{CpuStorage, D, DType, Layout, Module, Result, Tensor};
use candle_nn::VarBuilder;

mod activation;
mod attention;
mod conv;
mod linear;
mod norm;
mod simd;

/// Whether every tensor is an f32 tensor on the CPU: the fast paths' domain.
fn cpu_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The f32 values of a contiguous CPU tensor.
fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("kernel input is not contiguous: {:?}", l),
    }
}

/// A raw pointer that may cross threads, for tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to hand parallel tasks disjoint regions of one output buffer, each
// written by one task (see the callers).
unsafe impl Send for SendPtr {}
// SAFETY: as above; the pointer is only copied between threads.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so that closures capture the `SendPtr`, not its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `softmax(q kᵀ · scale) v` for `q` of shape (n, lq, d) and `k`, `v` of shape (n, lk, d):
/// multi-head attention with the heads folded into `n`. Returns (n, lq, d).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    #[cfg(feature = "flash-attn")]
    if q.device().is_cuda() {
        return flash_attention(q, k, v, scale);
    }
    if !cpu_f32(&[q, k, v]) {
        return reference::attention(q, k, v, scale);
    }
    let op = attention::AttentionOp {
        scale: scale as f32,
    };
    q.contiguous()?
        .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

/// FlashAttention-2 on CUDA (f16): the folded heads become flash-attn's head axis.
#[cfg(feature = "flash-attn")]
fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = q.dtype();
    let prep = |t: &Tensor| t.to_dtype(DType::F16)?.transpose(0, 1)?.unsqueeze(0);
    candle_flash_attn::flash_attn(&prep(q)?, &prep(k)?, &prep(v)?, scale as f32, false)?
        .squeeze(0)?
        .transpose(0, 1)?
        .to_dtype(dtype)
}

/// diffusers' GEGLU activation: `x` of shape (…, 2m) split into `h, gate` on the last
/// dimension, returns `h * gelu(gate)` (exact, erf-based GELU) of shape (…, m).
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    if !cpu_f32(&[x]) {
        return reference::geglu(x);
    }
    x.contiguous()?.apply_op1_no_bwd(&activation::GegluOp)
}

/// A 2-D convolution (groups 1, dilation 1) with optional bias, NCHW.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Loads `weight` (c_out, c_in, k, k) and `bias` (c_out) from `vb`.
    pub fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        Ok(Self::new(weight, Some(bias), stride, padding))
    }

    /// A convolution from its tensors.
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: usize, padding: usize) -> Self {
        Self {
            weight,
            bias,
            stride,
            padding,
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut all = vec![x, &self.weight];
        all.extend(self.bias.as_ref());
        if cpu_f32(&all) {
            let op = conv::Conv2dOp {
                stride: self.stride,
                padding: self.padding,
            };
            let (x, w) = (x.contiguous()?, self.weight.contiguous()?);
            return match &self.bias {
                Some(b) => x.apply_op3_no_bwd(&w, &b.contiguous()?, &op),
                None => x.apply_op2_no_bwd(&w, &op),
            };
        }
        reference::conv2d(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
        )
    }
}

/// A linear layer `x · Wᵀ + b` over the last dimension of `x`, `weight` (out, in).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` (out, in) and, if `bias`, `bias` (out) from `vb`.
    pub fn load(vb: VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((d_out, d_in), "weight")?;
        let bias = if bias {
            Some(vb.get(d_out, "bias")?)
        } else {
            None
        };
        Ok(Self::new(weight, bias))
    }

    /// A linear layer from its tensors.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut all = vec![x, &self.weight];
        all.extend(self.bias.as_ref());
        if cpu_f32(&all) {
            let (x, w) = (x.contiguous()?, self.weight.contiguous()?);
            return match &self.bias {
                Some(b) => x.apply_op3_no_bwd(&w, &b.contiguous()?, &linear::LinearOp),
                None => x.apply_op2_no_bwd(&w, &linear::LinearOp),
            };
        }
        reference::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// Group normalisation over NC… tensors, optionally followed by SiLU (the pair every ResNet
/// block applies), computed in one pass on the CPU.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// Loads `weight` and `bias` (channels) from `vb`.
    pub fn load(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("{channels} channels cannot be split into {groups} groups");
        }
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            groups,
            eps,
        })
    }

    /// A group norm from its tensors.
    pub fn new(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let channels = weight.elem_count();
        if groups == 0 || !channels.is_multiple_of(groups) || bias.elem_count() != channels {
            candle_core::bail!(
                "{channels} channels cannot be split into {groups} groups (bias {:?})",
                bias.dims()
            );
        }
        Ok(Self {
            weight,
            bias,
            groups,
            eps,
        })
    }

    /// The normalised tensor.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }

    /// `silu(group_norm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if !cpu_f32(&[x, &self.weight, &self.bias]) {
            return reference::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, silu);
        }
        let op = norm::GroupNormOp {
            groups: self.groups,
            eps: self.eps,
            silu,
        };
        x.contiguous()?
            .apply_op3_no_bwd(&self.weight.contiguous()?, &self.bias.contiguous()?, &op)
    }
}

/// The plain candle compositions: the definition of each kernel.
pub(crate) mod reference {
    use super::*;

    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let scores = (q.matmul(&k.t()?)? * scale)?;
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
    }

    pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        // candle-nn's Linear multiplies by the weight broadcast over the batch dimensions; with
        // candle 0.11.1 on the CPU that product is wrong when `x` is a transposed view (e.g.
        // (2, 12, 30).transpose(1, 2)), so the input is made contiguous first.
        let l = candle_nn::Linear::new(weight.clone(), bias.cloned());
        l.forward(&x.contiguous()?)
    }

    pub fn geglu(x: &Tensor) -> Result<Tensor> {
        let halves = x.chunk(2, D::Minus1)?;
        &halves[0] * halves[1].gelu_erf()?
    }

    pub fn conv2d(
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Tensor> {
        let y = x.conv2d(weight, padding, stride, 1, 1)?;
        match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }

    pub fn group_norm(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 3 {
            candle_core::bail!("group norm needs an N×C×… tensor, got {:?}", dims);
        }
        let (n, c) = (dims[0], dims[1]);
        let per_group = x.elem_count() / (n * groups);
        let dtype = x.dtype();
        let xg = x.reshape((n, groups, per_group))?.to_dtype(DType::F32)?;
        let mean = (xg.sum_keepdim(2)? / per_group as f64)?;
        let xc = xg.broadcast_sub(&mean)?;
        let var = (xc.sqr()?.sum_keepdim(2)? / per_group as f64)?;
        let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
        let mut shape = vec![1; dims.len()];
        shape[1] = c;
        let y = xn
            .to_dtype(dtype)?
            .reshape(dims)?
            .broadcast_mul(&weight.reshape(shape.clone())?)?
            .broadcast_add(&bias.reshape(shape)?)?;
        if silu {
            candle_nn::ops::silu(&y)
        } else {
            Ok(y)
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor};

    use crate::random::NoiseRng;

    /// A seeded standard normal tensor on the CPU, times `scale`, plus `shift`.
    pub fn randn(seed: u64, shape: &[usize], scale: f64, shift: f64) -> Tensor {
        let t = NoiseRng::new(seed).randn(shape, &Device::Cpu).unwrap();
        t.affine(scale, shift).unwrap()
    }

    /// `max |a - b| ≤ tol · max(1, max |b|)`, with equal shapes.
    pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
        assert_eq!(a.dims(), b.dims(), "{what}: shapes");
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let mag = b.iter().fold(1f32, |m, x| m.max(x.abs())) as f64;
        let (mut worst, mut at) = (0f64, 0);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let d = (*x as f64 - *y as f64).abs();
            assert!(d.is_finite(), "{what}: {x} vs {y} at {i}");
            if d > worst {
                (worst, at) = (d, i);
            }
        }
        assert!(
            worst <= tol * mag,
            "{what}: max difference {worst} at {at} ({} vs {}), magnitude {mag}",
            a[at],
            b[at]
        );
    }
}
