//! The CLIP text encoder (transformers' `CLIPTextModel` and, for SDXL's second encoder,
//! `CLIPTextModelWithProjection`), written here because candle's keeps its config private (no
//! tiny or fine-tuned sizes) and approximates `gelu` with tanh.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use serde::Deserialize;

use crate::kernels::Linear;
use crate::{DiffusionError, Result};

/// The activation of the MLPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// The exact, erf-based GELU (OpenCLIP, SD 2.x).
    Gelu,
}

/// The fields of a transformers text_encoder/config.json that the model uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLPs.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Sequence length (77).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Width of `text_projection` (`CLIPTextModelWithProjection`; SDXL's second encoder).
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// Where the pooled output is read: 2 (older configs, SD's) means at the largest token id
    /// (the end token in CLIP's vocabulary), else at the first occurrence of this id, as
    /// transformers does.
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

fn default_eps() -> f64 {
    1e-5
}

fn default_eos() -> u32 {
    49407
}

impl ClipTextConfig {
    /// Fixed token ids standing in for a prompt where there is no tokenizer (random weights):
    /// a full sequence, as shared/perf/torch_reference.py makes its ids.
    pub(crate) fn placeholder_ids(&self) -> Vec<u32> {
        let v = self.vocab_size as u32;
        (0..self.max_position_embeddings as u32)
            .map(|i| (i * 7919 + 13) % v)
            .collect()
    }

    /// CLIP ViT-L/14's text model (SD 1.x), from
    /// <https://huggingface.co/openai/clip-vit-large-patch14/blob/main/config.json>.
    pub fn vit_l14() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: Some(768),
            eos_token_id: 2,
        }
    }

    /// OpenCLIP ViT-H/14's text model less its last layer (SD 2.x), from
    /// <https://huggingface.co/stabilityai/stable-diffusion-2-inpainting/blob/main/text_encoder/config.json>.
    pub fn vit_h14() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            max_position_embeddings: 77,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
            projection_dim: Some(512),
            eos_token_id: 2,
        }
    }

    /// OpenCLIP ViT-bigG/14's text model with its projection (SDXL's second encoder), from
    /// <https://huggingface.co/diffusers/stable-diffusion-xl-1.0-inpainting-0.1/blob/main/text_encoder_2/config.json>.
    pub fn vit_big_g14() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            max_position_embeddings: 77,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
            projection_dim: Some(1280),
            eos_token_id: 2,
        }
    }
}

fn linear(i: usize, o: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::load(vb, i, o, true)?)
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl Attention {
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let hd = d / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split((self.q_proj.forward(xs)? * (hd as f64).powf(-0.5))?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        let w = q.matmul(&k.t()?)?.broadcast_add(mask)?; // shape: [b, heads, n, n]
        let w = candle_nn::ops::softmax_last_dim(&w)?;
        let o = w.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        Ok(self.out_proj.forward(&o)?)
    }
}

#[derive(Debug)]
struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    layer_norm2: LayerNorm,
    act: Activation,
}

impl EncoderLayer {
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + h)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let h = match self.act {
            Activation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            Activation::Gelu => h.gelu_erf()?,
        };
        Ok((xs + self.fc2.forward(&h)?)?)
    }
}

/// The CLIP text transformer; [`ClipTextModel::forward`] returns the last hidden state (after
/// the final LayerNorm), which is what Stable Diffusion conditions on.
#[derive(Debug)]
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    eos_token_id: u32,
    span: tracing::Span,
}

impl ClipTextModel {
    /// Builds the model from `vb` (with or without the `text_model.` prefix).
    pub fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let d = config.hidden_size;
        let eps = config.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let token_embedding =
            candle_nn::embedding(config.vocab_size, d, emb.pp("token_embedding"))?;
        let position_embedding = candle_nn::embedding(
            config.max_position_embeddings,
            d,
            emb.pp("position_embedding"),
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp("encoder.layers").pp(i);
                let a = vb.pp("self_attn");
                Ok(EncoderLayer {
                    self_attn: Attention {
                        q_proj: linear(d, d, a.pp("q_proj"))?,
                        k_proj: linear(d, d, a.pp("k_proj"))?,
                        v_proj: linear(d, d, a.pp("v_proj"))?,
                        out_proj: linear(d, d, a.pp("out_proj"))?,
                        heads: config.num_attention_heads,
                    },
                    layer_norm1: candle_nn::layer_norm(d, eps, vb.pp("layer_norm1"))?,
                    fc1: linear(d, config.intermediate_size, vb.pp("mlp.fc1"))?,
                    fc2: linear(config.intermediate_size, d, vb.pp("mlp.fc2"))?,
                    layer_norm2: candle_nn::layer_norm(d, eps, vb.pp("layer_norm2"))?,
                    act: config.hidden_act,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = candle_nn::layer_norm(d, eps, vb.pp("final_layer_norm"))?;
        Ok(ClipTextModel {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            eos_token_id: config.eos_token_id,
            span: tracing::trace_span!("clip_text"),
        })
    }

    /// Token ids (`u32`, shape `[b, n]`) to hidden states (shape `[b, n, hidden_size]`).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        let xs = self.run_layers(ids, self.layers.len())?;
        Ok(self.final_layer_norm.forward(&xs)?)
    }

    /// The penultimate layer's output (transformers' `hidden_states[-2]`, without the final
    /// LayerNorm), shape `[b, n, hidden_size]`: what SDXL conditions on. Skips the last layer.
    pub fn penultimate(&self, ids: &Tensor) -> Result<Tensor> {
        let _enter = self.span.enter();
        self.run_layers(ids, self.layers.len().saturating_sub(1))
    }

    /// The penultimate layer's output and the pooled output: the final-LayerNormed hidden
    /// state at the end token (see [`ClipTextConfig::eos_token_id`]), shape `[b, hidden_size]`.
    pub fn penultimate_and_pooled(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let _enter = self.span.enter();
        let n = self.layers.len();
        let penultimate = self.run_layers(ids, n.saturating_sub(1))?;
        let last = match self.layers.last() {
            Some(layer) => {
                let mask = causal_mask(ids.dim(1)?, penultimate.dtype(), ids.device())?;
                layer.forward(&penultimate, &mask)?
            }
            None => penultimate.clone(),
        };
        let last = self.final_layer_norm.forward(&last)?;
        let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let pooled = rows
            .iter()
            .enumerate()
            .map(|(b, row)| {
                let pos = self.eos_position(row)?;
                Ok(last.get(b)?.get(pos)?.unsqueeze(0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((penultimate, Tensor::cat(&pooled, 0)?))
    }

    /// The position the pooled output is read at, as transformers' `CLIPTextTransformer`.
    fn eos_position(&self, row: &[u32]) -> Result<usize> {
        let pos = if self.eos_token_id == 2 {
            // The first largest id (torch's argmax).
            row.iter()
                .enumerate()
                .fold(None, |best: Option<(usize, u32)>, (i, &v)| match best {
                    Some((_, b)) if b >= v => best,
                    _ => Some((i, v)),
                })
                .map(|(i, _)| i)
        } else {
            row.iter().position(|&v| v == self.eos_token_id).or(Some(0))
        };
        pos.ok_or_else(|| DiffusionError::Input("empty token sequence".into()))
    }

    /// Embeddings and the first `layers` encoder layers.
    fn run_layers(&self, ids: &Tensor, layers: usize) -> Result<Tensor> {
        let (_, n) = ids.dims2()?;
        let device = ids.device();
        let positions = Tensor::arange(0u32, n as u32, device)?;
        let xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(n, xs.dtype(), device)?;
        let mut xs = xs;
        for layer in &self.layers[..layers] {
            xs = layer.forward(&xs, &mask)?;
        }
        Ok(xs)
    }
}

/// transformers' `CLIPTextModelWithProjection` (SDXL's second text encoder): the text model
/// and `text_projection`, a bias-free linear map of the pooled output.
#[derive(Debug)]
pub struct ClipTextModelWithProjection {
    model: ClipTextModel,
    text_projection: Linear,
}

impl ClipTextModelWithProjection {
    /// Builds the model from `vb` (`text_model.*` and `text_projection.weight`); the config
    /// must give `projection_dim`.
    pub fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let projection_dim = config.projection_dim.ok_or_else(|| {
            DiffusionError::config(
                "text encoder config",
                "a text encoder with projection needs projection_dim",
            )
        })?;
        let text_projection = Linear::load(
            vb.pp("text_projection"),
            config.hidden_size,
            projection_dim,
            false,
        )?;
        Ok(ClipTextModelWithProjection {
            model: ClipTextModel::new(vb, config)?,
            text_projection,
        })
    }

    /// The penultimate layer's output (`[b, n, hidden_size]`) and the projected pooled
    /// output, transformers' `text_embeds` (`[b, projection_dim]`).
    pub fn penultimate_and_text_embeds(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (penultimate, pooled) = self.model.penultimate_and_pooled(ids)?;
        Ok((penultimate, self.text_projection.forward(&pooled)?))
    }
}

fn causal_mask(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (n, n), device)?
        .to_dtype(dtype)?
        .unsqueeze(0)?
        .unsqueeze(0)?
        .contiguous()?)
}
