//! diffusers' config.json files for the UNet and the VAE, read into candle's configs, and the
//! published configs of the supported architectures (for `--random-weights`).

use serde::Deserialize;

use crate::{DiffusionError, Result};

/// A value that diffusers writes either once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same for every block.
    All(T),
    /// One per down block.
    Each(Vec<T>),
}

impl<T: Copy> PerBlock<T> {
    fn get(&self, i: usize) -> Option<T> {
        match self {
            PerBlock::All(v) => Some(*v),
            PerBlock::Each(v) => v.get(i).copied(),
        }
    }
}

/// The fields of a diffusers unet/config.json (`UNet2DConditionModel`) that matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    /// Input channels: 9 for inpainting (4 latent + 1 mask + 4 masked-image latent).
    pub in_channels: usize,
    /// Output channels (4).
    pub out_channels: usize,
    /// Channels of each resolution level.
    pub block_out_channels: Vec<usize>,
    /// `CrossAttnDownBlock2D` or `DownBlock2D` per level.
    pub down_block_types: Vec<String>,
    /// Resnets per down block.
    pub layers_per_block: usize,
    /// Attention heads per level (diffusers' historical name).
    pub attention_head_dim: PerBlock<usize>,
    /// Heads per level where set (newer configs); wins over `attention_head_dim`.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Width of the text embeddings.
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer blocks per attention block.
    #[serde(default = "one_per_block")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// Linear (SD 2, SDXL) instead of 1×1 conv projections around the transformers.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// GroupNorm groups.
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// GroupNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Timestep embedding: cos before sin.
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    /// Timestep embedding frequency shift.
    #[serde(default)]
    pub freq_shift: f64,
    /// Padding of the downsampling convs.
    #[serde(default = "one")]
    pub downsample_padding: usize,
    /// Output scale of the mid block.
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// Maps the input from [0, 1] to [-1, 1].
    #[serde(default)]
    pub center_input_sample: bool,
    /// Extra conditioning: `text_time` for SDXL (pooled text embedding and size/crop ids).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Channels of each sinusoidal size/crop id embedding (`text_time`).
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Width of the pooled text embedding plus the six id embeddings (`text_time`).
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
}

/// One resolution level of the UNet, resolved from the per-block config values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Channels.
    pub channels: usize,
    /// Attention heads.
    pub heads: usize,
    /// Transformer blocks per attention block; `None` for a level without attention.
    pub transformer_depth: Option<usize>,
    /// Width of the text embeddings its cross-attention reads.
    pub cross_attention_dim: usize,
}

fn one_per_block() -> PerBlock<usize> {
    PerBlock::All(1)
}
fn default_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}

impl UNetConfig {
    /// The SD 1.5 inpainting UNet, from
    /// <https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-inpainting/blob/main/unet/config.json>.
    pub fn sd15_inpaint() -> Self {
        UNetConfig {
            in_channels: 9,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_block_types: ["CrossAttnDownBlock2D"; 3]
                .into_iter()
                .chain(["DownBlock2D"])
                .map(String::from)
                .collect(),
            layers_per_block: 2,
            attention_head_dim: PerBlock::All(8),
            num_attention_heads: None,
            cross_attention_dim: PerBlock::All(768),
            transformer_layers_per_block: PerBlock::All(1),
            use_linear_projection: false,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            center_input_sample: false,
            addition_embed_type: None,
            addition_time_embed_dim: None,
            projection_class_embeddings_input_dim: None,
        }
    }

    /// The SD 2 inpainting UNet, from
    /// <https://huggingface.co/stabilityai/stable-diffusion-2-inpainting/blob/main/unet/config.json>.
    pub fn sd2_inpaint() -> Self {
        UNetConfig {
            attention_head_dim: PerBlock::Each(vec![5, 10, 20, 20]),
            cross_attention_dim: PerBlock::All(1024),
            use_linear_projection: true,
            ..Self::sd15_inpaint()
        }
    }

    /// The SDXL 1.0 inpainting UNet, from
    /// <https://huggingface.co/diffusers/stable-diffusion-xl-1.0-inpainting-0.1/blob/main/unet/config.json>.
    pub fn sdxl_inpaint() -> Self {
        UNetConfig {
            block_out_channels: vec![320, 640, 1280],
            down_block_types: [
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            attention_head_dim: PerBlock::Each(vec![5, 10, 20]),
            cross_attention_dim: PerBlock::All(2048),
            transformer_layers_per_block: PerBlock::Each(vec![1, 2, 10]),
            use_linear_projection: true,
            addition_embed_type: Some("text_time".into()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2816),
            ..Self::sd15_inpaint()
        }
    }

    /// Transformer blocks of the mid block: the last `transformer_layers_per_block` value, as
    /// diffusers takes it.
    pub fn mid_transformer_depth(&self) -> Result<usize> {
        let n = self.block_out_channels.len();
        self.transformer_layers_per_block
            .get(n.saturating_sub(1))
            .ok_or_else(|| {
                DiffusionError::config("unet config", "too few transformer_layers_per_block values")
            })
    }

    /// The heads of the attention blocks of level `i`.
    fn heads(&self, i: usize) -> Option<usize> {
        match &self.num_attention_heads {
            Some(h) => h.get(i),
            None => self.attention_head_dim.get(i),
        }
    }

    /// The levels, checked for consistency and support.
    pub fn levels(&self) -> Result<Vec<Level>> {
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n {
            return Err(DiffusionError::config(
                "unet config",
                "down_block_types and block_out_channels differ in length",
            ));
        }
        let too_few =
            |what: &str| DiffusionError::config("unet config", format!("too few {what} values"));
        (0..n)
            .map(|i| {
                let transformer_depth = match self.down_block_types[i].as_str() {
                    "CrossAttnDownBlock2D" => Some(
                        self.transformer_layers_per_block
                            .get(i)
                            .ok_or_else(|| too_few("transformer_layers_per_block"))?,
                    ),
                    "DownBlock2D" => None,
                    other => {
                        return Err(DiffusionError::Unsupported(format!("UNet block {other}")));
                    }
                };
                let channels = self.block_out_channels[i];
                let heads = self.heads(i).ok_or_else(|| too_few("attention_head_dim"))?;
                if heads == 0 || !channels.is_multiple_of(heads) {
                    return Err(DiffusionError::config(
                        "unet config",
                        format!("{channels} channels cannot be split into {heads} heads"),
                    ));
                }
                Ok(Level {
                    channels,
                    heads,
                    transformer_depth,
                    cross_attention_dim: self
                        .cross_attention_dim
                        .get(i)
                        .ok_or_else(|| too_few("cross_attention_dim"))?,
                })
            })
            .collect()
    }

    /// For `text_time` conditioning: the id embedding width and the projection's input width.
    pub fn text_time_dims(&self) -> Result<(usize, usize)> {
        match (
            self.addition_time_embed_dim,
            self.projection_class_embeddings_input_dim,
        ) {
            (Some(t), Some(p)) => Ok((t, p)),
            _ => Err(DiffusionError::config(
                "unet config",
                "text_time conditioning needs addition_time_embed_dim and projection_class_embeddings_input_dim",
            )),
        }
    }
}

/// The fields of a diffusers vae/config.json (`AutoencoderKL`) that matter here.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    /// Image channels in.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out.
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Channels of each level; the image is downsampled by 2^(levels-1).
    pub block_out_channels: Vec<usize>,
    /// Resnets per block.
    pub layers_per_block: usize,
    /// Latent channels (4).
    pub latent_channels: usize,
    /// GroupNorm groups.
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    /// Latents are multiplied by this after encoding and divided before decoding.
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    /// Whether the encoder ends with a 1×1 conv.
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    /// Whether the decoder starts with a 1×1 conv.
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    /// Run in f32 when the model is f16 (the SDXL VAE overflows in f16); honoured by the SDXL
    /// pipeline only, as diffusers does.
    #[serde(default)]
    pub force_upcast: bool,
}

fn three() -> usize {
    3
}
fn default_scaling() -> f64 {
    0.18215
}

impl VaeConfig {
    /// The SD 1.x / 2.x VAE, from
    /// <https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-inpainting/blob/main/vae/config.json>.
    pub fn sd() -> Self {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            use_quant_conv: true,
            use_post_quant_conv: true,
            force_upcast: false,
        }
    }

    /// The SDXL VAE (the SD one retrained, another latent scale), from
    /// <https://huggingface.co/diffusers/stable-diffusion-xl-1.0-inpainting-0.1/blob/main/vae/config.json>.
    pub fn sdxl() -> Self {
        VaeConfig {
            scaling_factor: 0.13025,
            force_upcast: true,
            ..Self::sd()
        }
    }

    /// How many pixels one latent covers along each side.
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }
}

/// Reads and parses a JSON config file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| DiffusionError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| DiffusionError::config(path.display().to_string(), e))
}
