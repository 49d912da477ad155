//! The attention parts of the UNet and the VAE: diffusers' `Transformer2DModel` (spatial
//! transformer with self- and cross-attention and a GEGLU feed-forward) and the VAE's
//! single-head `Attention` block. Ported from candle-transformers 0.11.1 (MIT/Apache-2.0) and
//! routed through [`crate::kernels`].

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, VarBuilder, layer_norm};

use crate::kernels::{self, Conv2d, GroupNorm, Linear};

/// Multi-head attention; `context` (cross-attention) or the input itself (self-attention)
/// gives the keys and values.
#[derive(Debug)]
struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl CrossAttention {
    fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: Linear::load(vb.pp("to_q"), query_dim, inner, false)?,
            to_k: Linear::load(vb.pp("to_k"), context_dim, inner, false)?,
            to_v: Linear::load(vb.pp("to_v"), context_dim, inner, false)?,
            to_out: Linear::load(vb.pp("to_out.0"), inner, query_dim, true)?,
            heads,
            scale: 1.0 / (dim_head as f64).sqrt(),
        })
    }

    /// (b, l, h·d) → (b·h, l, d).
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, hd) = x.dims3()?;
        let d = hd / self.heads;
        x.reshape((b, l, self.heads, d))?
            .transpose(1, 2)?
            .reshape((b * self.heads, l, d))
    }

    /// (b·h, l, d) → (b, l, h·d).
    fn merge_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (bh, l, d) = x.dims3()?;
        x.reshape((bh / self.heads, self.heads, l, d))?
            .transpose(1, 2)?
            .reshape((bh / self.heads, l, self.heads * d))
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let _span = tracing::trace_span!("attention").entered();
        let context = context.unwrap_or(x);
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let out = kernels::attention(&q, &k, &v, self.scale)?;
        self.to_out.forward(&self.merge_heads(&out)?)
    }
}

/// diffusers' `FeedForward` with GEGLU: `Linear(dim, 2·4·dim)`, GEGLU, `Linear(4·dim, dim)`.
#[derive(Debug)]
struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj_in: Linear::load(vb.pp("net.0.proj"), dim, 2 * inner, true)?,
            proj_out: Linear::load(vb.pp("net.2"), inner, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("feed_forward").entered();
        let h = kernels::geglu(&self.proj_in.forward(x)?)?;
        self.proj_out.forward(&h)
    }
}

/// Self-attention, cross-attention and feed-forward, each pre-normed and residual.
#[derive(Debug)]
struct BasicTransformerBlock {
    attn1: CrossAttention,
    attn2: CrossAttention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
}

impl BasicTransformerBlock {
    fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        dim_head: usize,
        context_dim: usize,
    ) -> Result<Self> {
        Ok(Self {
            attn1: CrossAttention::new(vb.pp("attn1"), dim, None, heads, dim_head)?,
            attn2: CrossAttention::new(vb.pp("attn2"), dim, Some(context_dim), heads, dim_head)?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// The projections into and out of the transformer: 1×1 convs (SD 1.x) or linear layers
/// (SD 2, SDXL: `use_linear_projection`).
#[derive(Debug)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

/// diffusers' `Transformer2DModel`: group norm, projection to tokens, `depth` transformer
/// blocks, projection back, residual.
#[derive(Debug)]
pub(crate) struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

/// The shape of a [`SpatialTransformer`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct TransformerConfig {
    pub heads: usize,
    pub depth: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

impl SpatialTransformer {
    pub(crate) fn new(vb: VarBuilder, channels: usize, cfg: TransformerConfig) -> Result<Self> {
        let projection = |name: &str| -> Result<Projection> {
            Ok(if cfg.linear_projection {
                Projection::Linear(Linear::load(vb.pp(name), channels, channels, true)?)
            } else {
                Projection::Conv(Conv2d::load(vb.pp(name), channels, channels, 1, 1, 0)?)
            })
        };
        let blocks = (0..cfg.depth)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i),
                    channels,
                    cfg.heads,
                    channels / cfg.heads,
                    cfg.context_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::load(vb.pp("norm"), cfg.groups, channels, 1e-6)?,
            proj_in: projection("proj_in")?,
            blocks,
            proj_out: projection("proj_out")?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("transformer").entered();
        let (b, c, h, w) = x.dims4()?;
        let to_tokens = |t: &Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let to_image = |t: &Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2));
        let normed = self.norm.forward(x)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(p) => to_tokens(&p.forward(&normed)?)?,
            Projection::Linear(p) => p.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(p) => p.forward(&to_image(&tokens)?.contiguous()?)?,
            Projection::Linear(p) => to_image(&p.forward(&tokens)?)?,
        };
        out + x
    }
}

/// The VAE's mid-block attention: one head over all pixels, residual.
#[derive(Debug)]
pub(crate) struct AttentionBlock {
    norm: GroupNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    proj: Linear,
}

impl AttentionBlock {
    pub(crate) fn new(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        let (q, k, v, o) = if vb.contains_tensor("to_q.weight") {
            ("to_q", "to_k", "to_v", "to_out.0")
        } else {
            ("query", "key", "value", "proj_attn")
        };
        Ok(Self {
            norm: GroupNorm::load(vb.pp("group_norm"), groups, channels, eps)?,
            query: Linear::load(vb.pp(q), channels, channels, true)?,
            key: Linear::load(vb.pp(k), channels, channels, true)?,
            value: Linear::load(vb.pp(v), channels, channels, true)?,
            proj: Linear::load(vb.pp(o), channels, channels, true)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("vae_attention").entered();
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.query.forward(&tokens)?;
        let k = self.key.forward(&tokens)?;
        let v = self.value.forward(&tokens)?;
        let out = kernels::attention(&q, &k, &v, 1.0 / (c as f64).sqrt())?;
        let out = self
            .proj
            .forward(&out)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + x
    }
}
