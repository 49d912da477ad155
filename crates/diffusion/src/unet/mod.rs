//! diffusers' `UNet2DConditionModel` in candle: the noise predictor of SD 1.x, SD 2 and SDXL
//! (with its `text_time` added conditioning). Ported from candle-transformers 0.11.1
//! (MIT/Apache-2.0), reading diffusers' config directly, with the hot operations in
//! [`crate::kernels`].

pub(crate) mod attention;
pub(crate) mod blocks;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use self::attention::TransformerConfig;
use self::blocks::{DownBlock, MidBlock, ResnetConfig, UpBlock, UpChannels};
use crate::config::UNetConfig;
use crate::kernels::{Conv2d, GroupNorm, Linear};
use crate::{DiffusionError, Result as CrateResult};

/// Sinusoidal embedding of `t` (shape `[b]`) into `dim` channels, as diffusers' `Timesteps`.
fn sinusoidal(t: &Tensor, dim: usize, flip_sin_to_cos: bool, shift: f64) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[&cos, &sin], 1)?
    } else {
        Tensor::cat(&[&sin, &cos], 1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

/// diffusers' `TimestepEmbedding`: linear, SiLU, linear.
#[derive(Debug)]
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(vb: VarBuilder, c_in: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(vb.pp("linear_1"), c_in, dim, true)?,
            linear_2: Linear::load(vb.pp("linear_2"), dim, dim, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&candle_nn::ops::silu(&self.linear_1.forward(x)?)?)
    }
}

/// SDXL's extra conditioning (`addition_embed_type = "text_time"`): the pooled text
/// embedding and the six size/crop numbers, embedded and added to the time embedding.
#[derive(Debug)]
struct TextTimeEmbedding {
    time_dim: usize,
    embedding: TimestepEmbedding,
}

/// SDXL's added conditions for one batch.
#[derive(Debug, Clone)]
pub struct AddedConditions {
    /// The second text encoder's pooled, projected output, `[b, 1280]`.
    pub text_embeds: Tensor,
    /// Original size, crop top-left and target size (h, w each), `[b, 6]`.
    pub time_ids: Tensor,
}

/// The noise predictor.
#[derive(Debug)]
pub struct UNet {
    config: UNetConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    add_embedding: Option<TextTimeEmbedding>,
    down: Vec<DownBlock>,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet {
    /// Builds the UNet of `config` from `vb` (diffusers' tensor names).
    pub fn new(vb: VarBuilder, config: &UNetConfig) -> CrateResult<Self> {
        let levels = config.levels()?;
        let n = levels.len();
        let c0 = levels[0].channels;
        let temb_dim = 4 * c0;
        let resnet = ResnetConfig {
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            temb_channels: Some(temb_dim),
            output_scale: 1.0,
        };
        let transformer = |level: &crate::config::Level| {
            level.transformer_depth.map(|depth| TransformerConfig {
                heads: level.heads,
                depth,
                context_dim: level.cross_attention_dim,
                groups: config.norm_num_groups,
                linear_projection: config.use_linear_projection,
            })
        };

        let add_embedding = match config.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let (time_dim, input_dim) = config.text_time_dims()?;
                Some(TextTimeEmbedding {
                    time_dim,
                    embedding: TimestepEmbedding::new(vb.pp("add_embedding"), input_dim, temb_dim)?,
                })
            }
            Some(other) => {
                return Err(DiffusionError::Unsupported(format!(
                    "UNet addition_embed_type {other:?}"
                )));
            }
        };

        let down = levels
            .iter()
            .enumerate()
            .map(|(i, level)| {
                let c_in = if i == 0 { c0 } else { levels[i - 1].channels };
                let last = i + 1 == n;
                DownBlock::new(
                    vb.pp("down_blocks").pp(i),
                    c_in,
                    level.channels,
                    config.layers_per_block,
                    resnet,
                    transformer(level),
                    (!last).then_some(config.downsample_padding),
                )
            })
            .collect::<Result<Vec<_>>>()?;

        let last = &levels[n - 1];
        let mid_transformer = TransformerConfig {
            heads: last.heads,
            depth: config.mid_transformer_depth()?,
            context_dim: last.cross_attention_dim,
            groups: config.norm_num_groups,
            linear_projection: config.use_linear_projection,
        };
        let mid = MidBlock::new(
            vb.pp("mid_block"),
            last.channels,
            ResnetConfig {
                output_scale: config.mid_block_scale_factor,
                ..resnet
            },
            mid_transformer,
        )?;

        let up = (0..n)
            .map(|i| {
                let level = &levels[n - 1 - i];
                let ch = UpChannels {
                    c_in: levels[(n - 1 - i).saturating_sub(1)].channels,
                    c_prev: if i == 0 {
                        last.channels
                    } else {
                        levels[n - i].channels
                    },
                    c_out: level.channels,
                };
                UpBlock::new(
                    vb.pp("up_blocks").pp(i),
                    ch,
                    config.layers_per_block + 1,
                    resnet,
                    transformer(level),
                    i + 1 < n,
                )
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Self {
            conv_in: Conv2d::load(vb.pp("conv_in"), config.in_channels, c0, 3, 1, 1)?,
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), c0, temb_dim)?,
            add_embedding,
            down,
            mid,
            up,
            norm_out: GroupNorm::load(
                vb.pp("conv_norm_out"),
                config.norm_num_groups,
                c0,
                config.norm_eps,
            )?,
            conv_out: Conv2d::load(vb.pp("conv_out"), c0, config.out_channels, 3, 1, 1)?,
            config: config.clone(),
        })
    }

    /// The configuration the UNet was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Predicts the noise in `x` (`[b, in_channels, h, w]`) at timestep `t`, conditioned on
    /// `context` (`[b, 77, cross_attention_dim]`) and, for SDXL, `added`.
    pub fn forward(
        &self,
        x: &Tensor,
        t: f64,
        context: &Tensor,
        added: Option<&AddedConditions>,
    ) -> Result<Tensor> {
        let _span = tracing::trace_span!("unet").entered();
        let (b, _, h, w) = x.dims4()?;
        let dtype = x.dtype();
        let x = if self.config.center_input_sample {
            ((x * 2.0)? - 1.0)?
        } else {
            x.clone()
        };

        let c0 = self.config.block_out_channels[0];
        let ts = Tensor::full(t as f32, b, x.device())?;
        let temb = sinusoidal(&ts, c0, self.config.flip_sin_to_cos, self.config.freq_shift)?
            .to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&temb)?;
        match (&self.add_embedding, added) {
            (Some(add), Some(cond)) => {
                let ids = cond.time_ids.flatten_all()?;
                let time = sinusoidal(
                    &ids,
                    add.time_dim,
                    self.config.flip_sin_to_cos,
                    self.config.freq_shift,
                )?
                .reshape((b, ()))?;
                let input = Tensor::cat(&[&cond.text_embeds.to_dtype(DType::F32)?, &time], 1)?
                    .to_dtype(dtype)?;
                emb = (emb + add.embedding.forward(&input)?)?;
            }
            (Some(_), None) => {
                candle_core::bail!("this UNet (SDXL) needs text_embeds and time_ids")
            }
            (None, _) => {}
        }
        let silu_temb = candle_nn::ops::silu(&emb)?;

        let mut x = self.conv_in.forward(&x)?;
        let mut skips = vec![x.clone()];
        for block in &self.down {
            x = block.forward(&x, Some(&silu_temb), context, &mut skips)?;
        }
        x = self.mid.forward(&x, Some(&silu_temb), context)?;

        // Inputs whose sides are not multiples of 2^(levels-1) upsample to the skip's size.
        let factor = 1 << (self.up.len() - 1);
        let odd = h % factor != 0 || w % factor != 0;
        for (i, block) in self.up.iter().enumerate() {
            let size = if odd && i + 1 < self.up.len() {
                let next = &skips[skips.len() - block.len() - 1];
                let (_, _, sh, sw) = next.dims4()?;
                Some((sh, sw))
            } else {
                None
            };
            x = block.forward(&x, &mut skips, Some(&silu_temb), context, size)?;
        }
        self.conv_out.forward(&self.norm_out.forward_silu(&x)?)
    }
}
