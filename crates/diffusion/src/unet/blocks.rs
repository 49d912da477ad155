//! The UNet's and the VAE's convolutional building blocks: ResNet blocks, down- and
//! upsamplers, and the down, mid and up blocks of `UNet2DConditionModel`. Ported from
//! candle-transformers 0.11.1 (MIT/Apache-2.0) and routed through [`crate::kernels`].

use candle_core::{D, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::{SpatialTransformer, TransformerConfig};
use crate::kernels::{Conv2d, GroupNorm, Linear};

/// diffusers' `ResnetBlock2D`: norm, SiLU, conv, (+ time embedding), norm, SiLU, conv,
/// residual (through a 1×1 conv when the channel count changes).
#[derive(Debug)]
pub(crate) struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    output_scale: f64,
}

/// The shape of a [`ResnetBlock`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResnetConfig {
    pub groups: usize,
    pub eps: f64,
    /// The time embedding's width; `None` in the VAE.
    pub temb_channels: Option<usize>,
    pub output_scale: f64,
}

impl ResnetBlock {
    pub(crate) fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        cfg: ResnetConfig,
    ) -> Result<Self> {
        let shortcut = if c_in != c_out {
            Some(Conv2d::load(vb.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)?)
        } else {
            None
        };
        let time_emb_proj = match cfg.temb_channels {
            Some(t) => Some(Linear::load(vb.pp("time_emb_proj"), t, c_out, true)?),
            None => None,
        };
        Ok(Self {
            norm1: GroupNorm::load(vb.pp("norm1"), cfg.groups, c_in, cfg.eps)?,
            conv1: Conv2d::load(vb.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj,
            norm2: GroupNorm::load(vb.pp("norm2"), cfg.groups, c_out, cfg.eps)?,
            conv2: Conv2d::load(vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            shortcut,
            output_scale: cfg.output_scale,
        })
    }

    /// `temb` is the SiLU of the time embedding (shared by all blocks), `[b, temb_channels]`.
    pub(crate) fn forward(&self, x: &Tensor, silu_temb: Option<&Tensor>) -> Result<Tensor> {
        let _span = tracing::trace_span!("resnet").entered();
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        if let (Some(t), Some(proj)) = (silu_temb, &self.time_emb_proj) {
            h = h.broadcast_add(
                &proj
                    .forward(t)?
                    .unsqueeze(D::Minus1)?
                    .unsqueeze(D::Minus1)?,
            )?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let skip = match &self.shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        let out = (skip + h)?;
        if self.output_scale == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale
        }
    }
}

/// A stride-2 3×3 conv. With `padding` 0 (the VAE encoder), the input is first padded by one
/// pixel on the right and bottom only, as diffusers does.
#[derive(Debug)]
pub(crate) struct Downsample {
    conv: Conv2d,
    padding: usize,
}

impl Downsample {
    pub(crate) fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(vb.pp("conv"), channels, channels, 3, 2, padding)?,
            padding,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let x = x
                .pad_with_zeros(D::Minus1, 0, 1)?
                .pad_with_zeros(D::Minus2, 0, 1)?;
            self.conv.forward(&x)
        } else {
            self.conv.forward(x)
        }
    }
}

/// Nearest-neighbour upsampling (×2 or to a given size) and a 3×3 conv.
#[derive(Debug)]
pub(crate) struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub(crate) fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(vb.pp("conv"), channels, channels, 3, 1, 1)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (th, tw) = size.unwrap_or((2 * h, 2 * w));
        self.conv.forward(&x.upsample_nearest2d(th, tw)?)
    }
}

/// `DownBlock2D` (no attention) or `CrossAttnDownBlock2D`.
#[derive(Debug)]
pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    downsampler: Option<Downsample>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        layers: usize,
        resnet: ResnetConfig,
        transformer: Option<TransformerConfig>,
        downsample_padding: Option<usize>,
    ) -> Result<Self> {
        let resnets = (0..layers)
            .map(|i| {
                let c = if i == 0 { c_in } else { c_out };
                ResnetBlock::new(vb.pp("resnets").pp(i), c, c_out, resnet)
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = match transformer {
            Some(cfg) => (0..layers)
                .map(|i| SpatialTransformer::new(vb.pp("attentions").pp(i), c_out, cfg))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let downsampler = match downsample_padding {
            Some(p) => Some(Downsample::new(vb.pp("downsamplers.0"), c_out, p)?),
            None => None,
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the output and the skip connections for the up blocks.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        silu_temb: Option<&Tensor>,
        context: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, silu_temb)?;
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(&x, context)?;
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x)?;
            skips.push(x.clone());
        }
        Ok(x)
    }
}

/// `UpBlock2D` or `CrossAttnUpBlock2D`: each ResNet takes the previous output concatenated
/// with a skip connection.
#[derive(Debug)]
pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    upsampler: Option<Upsample>,
}

/// The channel counts of an [`UpBlock`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpChannels {
    /// The channels of the matching down level's input (the last skip).
    pub c_in: usize,
    /// The channels coming from the level below.
    pub c_prev: usize,
    pub c_out: usize,
}

impl UpBlock {
    pub(crate) fn new(
        vb: VarBuilder,
        ch: UpChannels,
        layers: usize,
        resnet: ResnetConfig,
        transformer: Option<TransformerConfig>,
        upsample: bool,
    ) -> Result<Self> {
        let resnets = (0..layers)
            .map(|i| {
                let skip = if i == layers - 1 { ch.c_in } else { ch.c_out };
                let prev = if i == 0 { ch.c_prev } else { ch.c_out };
                ResnetBlock::new(vb.pp("resnets").pp(i), prev + skip, ch.c_out, resnet)
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = match transformer {
            Some(cfg) => (0..layers)
                .map(|i| SpatialTransformer::new(vb.pp("attentions").pp(i), ch.c_out, cfg))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let upsampler = if upsample {
            Some(Upsample::new(vb.pp("upsamplers.0"), ch.c_out)?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// How many skip connections the block consumes.
    pub(crate) fn len(&self) -> usize {
        self.resnets.len()
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        silu_temb: Option<&Tensor>,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("UNet skip connections ran out".into()))?;
            x = resnet.forward(&Tensor::cat(&[&x, &skip], 1)?, silu_temb)?;
            if let Some(attn) = self.attentions.get(i) {
                x = attn.forward(&x, context)?;
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, upsample_size),
            None => Ok(x),
        }
    }
}

/// `UNetMidBlock2DCrossAttn`: ResNet, transformer, ResNet.
#[derive(Debug)]
pub(crate) struct MidBlock {
    first: ResnetBlock,
    attention: SpatialTransformer,
    second: ResnetBlock,
}

impl MidBlock {
    pub(crate) fn new(
        vb: VarBuilder,
        channels: usize,
        resnet: ResnetConfig,
        transformer: TransformerConfig,
    ) -> Result<Self> {
        Ok(Self {
            first: ResnetBlock::new(vb.pp("resnets.0"), channels, channels, resnet)?,
            attention: SpatialTransformer::new(vb.pp("attentions.0"), channels, transformer)?,
            second: ResnetBlock::new(vb.pp("resnets.1"), channels, channels, resnet)?,
        })
    }

    pub(crate) fn forward(
        &self,
        x: &Tensor,
        silu_temb: Option<&Tensor>,
        context: &Tensor,
    ) -> Result<Tensor> {
        let x = self.first.forward(x, silu_temb)?;
        let x = self.attention.forward(&x, context)?;
        self.second.forward(&x, silu_temb)
    }
}
