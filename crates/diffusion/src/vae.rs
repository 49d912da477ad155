//! diffusers' `AutoencoderKL` (the SD VAE) in candle: images in [-1, 1] to latents and back.
//! Ported from candle-transformers 0.11.1 (MIT/Apache-2.0), with the hot operations in
//! [`crate::kernels`]; encoding returns the posterior's mean (its mode), as the inpainting
//! pipeline needs.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::config::VaeConfig;
use crate::kernels::{Conv2d, GroupNorm};
use crate::unet::attention::AttentionBlock;
use crate::unet::blocks::{Downsample, ResnetBlock, ResnetConfig, Upsample};

const EPS: f64 = 1e-6;

/// `UNetMidBlock2D` of the VAE: ResNet, single-head attention, ResNet.
#[derive(Debug)]
struct MidBlock {
    first: ResnetBlock,
    attention: AttentionBlock,
    second: ResnetBlock,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, resnet: ResnetConfig) -> Result<Self> {
        Ok(Self {
            first: ResnetBlock::new(vb.pp("resnets.0"), channels, channels, resnet)?,
            attention: AttentionBlock::new(vb.pp("attentions.0"), channels, resnet.groups, EPS)?,
            second: ResnetBlock::new(vb.pp("resnets.1"), channels, channels, resnet)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.first.forward(x, None)?;
        let x = self.attention.forward(&x)?;
        self.second.forward(&x, None)
    }
}

/// A level of the encoder (`DownEncoderBlock2D`) or the decoder (`UpDecoderBlock2D`).
#[derive(Debug)]
struct Level {
    resnets: Vec<ResnetBlock>,
    down: Option<Downsample>,
    up: Option<Upsample>,
}

impl Level {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x, None)?;
        }
        if let Some(d) = &self.down {
            x = d.forward(&x)?;
        }
        if let Some(u) = &self.up {
            x = u.forward(&x, None)?;
        }
        Ok(x)
    }
}

/// One half of the VAE: conv in, levels, mid block, norm + SiLU, conv out.
#[derive(Debug)]
struct Coder {
    conv_in: Conv2d,
    levels: Vec<Level>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    /// The mid block runs before the levels in the decoder, after them in the encoder.
    mid_first: bool,
}

impl Coder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        if self.mid_first {
            x = self.mid.forward(&x)?;
        }
        for level in &self.levels {
            x = level.forward(&x)?;
        }
        if !self.mid_first {
            x = self.mid.forward(&x)?;
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }
}

/// The VAE.
#[derive(Debug)]
pub struct Vae {
    encoder: Coder,
    decoder: Coder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

impl Vae {
    /// Builds the VAE of `config` from `vb` (diffusers' tensor names).
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let ch = &config.block_out_channels;
        let n = ch.len();
        if n == 0 {
            candle_core::bail!("the VAE config has no block_out_channels");
        }
        let resnet = ResnetConfig {
            groups: config.norm_num_groups,
            eps: EPS,
            temb_channels: None,
            output_scale: 1.0,
        };
        let z = config.latent_channels;

        let enc = vb.pp("encoder");
        let levels = (0..n)
            .map(|i| {
                let vb = enc.pp("down_blocks").pp(i);
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                let resnets = (0..config.layers_per_block)
                    .map(|j| {
                        let c = if j == 0 { c_in } else { ch[i] };
                        ResnetBlock::new(vb.pp("resnets").pp(j), c, ch[i], resnet)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let down = if i + 1 < n {
                    Some(Downsample::new(vb.pp("downsamplers.0"), ch[i], 0)?)
                } else {
                    None
                };
                Ok(Level {
                    resnets,
                    down,
                    up: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let encoder = Coder {
            conv_in: Conv2d::load(enc.pp("conv_in"), config.in_channels, ch[0], 3, 1, 1)?,
            levels,
            mid: MidBlock::new(enc.pp("mid_block"), ch[n - 1], resnet)?,
            norm_out: GroupNorm::load(
                enc.pp("conv_norm_out"),
                config.norm_num_groups,
                ch[n - 1],
                EPS,
            )?,
            conv_out: Conv2d::load(enc.pp("conv_out"), ch[n - 1], 2 * z, 3, 1, 1)?,
            mid_first: false,
        };

        let dec = vb.pp("decoder");
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let levels = (0..n)
            .map(|i| {
                let vb = dec.pp("up_blocks").pp(i);
                let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                let resnets = (0..config.layers_per_block + 1)
                    .map(|j| {
                        let c = if j == 0 { c_in } else { rev[i] };
                        ResnetBlock::new(vb.pp("resnets").pp(j), c, rev[i], resnet)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let up = if i + 1 < n {
                    Some(Upsample::new(vb.pp("upsamplers.0"), rev[i])?)
                } else {
                    None
                };
                Ok(Level {
                    resnets,
                    down: None,
                    up,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = Coder {
            conv_in: Conv2d::load(dec.pp("conv_in"), z, rev[0], 3, 1, 1)?,
            levels,
            mid: MidBlock::new(dec.pp("mid_block"), rev[0], resnet)?,
            norm_out: GroupNorm::load(dec.pp("conv_norm_out"), config.norm_num_groups, ch[0], EPS)?,
            conv_out: Conv2d::load(dec.pp("conv_out"), ch[0], config.out_channels, 3, 1, 1)?,
            mid_first: true,
        };

        let quant_conv = if config.use_quant_conv {
            Some(Conv2d::load(vb.pp("quant_conv"), 2 * z, 2 * z, 1, 1, 0)?)
        } else {
            None
        };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(Conv2d::load(vb.pp("post_quant_conv"), z, z, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            latent_channels: z,
        })
    }

    /// The posterior's mean (diffusers' `latent_dist.mode()`) for images in [-1, 1],
    /// unscaled: `[b, latent_channels, h/8, w/8]`.
    pub fn encode_mean(&self, x: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("vae_encode").entered();
        let moments = self.encoder.forward(x)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&moments)?,
            None => moments,
        };
        moments.narrow(1, 0, self.latent_channels)
    }

    /// Images in about [-1, 1] from unscaled latents.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let _span = tracing::trace_span!("vae_decode").entered();
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        self.decoder.forward(&z)
    }
}
