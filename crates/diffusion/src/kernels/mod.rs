//! The hot operations of the UNet and the VAE, owned here so that the CPU path can be faster
//! than candle's generic kernels.
//!
//! Each function has one contract and two paths: a fast path for contiguous f32 tensors on the
//! CPU, and the plain candle composition (the reference, also used on CUDA and Metal, where
//! candle's kernels are already good). The unit tests hold the fast path to the reference.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `softmax(q kᵀ · scale) v` for `q` of shape (n, lq, d) and `k`, `v` of shape (n, lk, d):
/// multi-head attention with the heads folded into `n`. Returns (n, lq, d).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    #[cfg(feature = "flash-attn")]
    if q.device().is_cuda() {
        return flash_attention(q, k, v, scale);
    }
    reference::attention(q, k, v, scale)
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
    reference::geglu(x)
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
        reference::conv2d(
            x,
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
        )
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
        if groups == 0 || channels % groups != 0 {
            candle_core::bail!("{channels} channels cannot be split into {groups} groups");
        }
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            groups,
            eps,
        })
    }

    /// The normalised tensor.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        reference::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, false)
    }

    /// `silu(group_norm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        reference::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, true)
    }
}

/// The plain candle compositions: the definition of each kernel.
pub(crate) mod reference {
    use super::*;

    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let scores = (q.matmul(&k.t()?)? * scale)?;
        candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
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
