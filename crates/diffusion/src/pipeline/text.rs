//! Text conditioning: one CLIP text encoder (SD 1.x, SD 2), or SDXL's two with the pooled
//! embedding and the size/crop ids, as diffusers' `StableDiffusionXLInpaintPipeline` makes
//! them.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::clip::{ClipTextConfig, ClipTextModel, ClipTextModelWithProjection};
use crate::config::{UNetConfig, VaeConfig, read_json};
use crate::tokenizer::ClipTokenizer;
use crate::unet::AddedConditions;
use crate::{DiffusionError, Result};

/// A tokenizer and the config of the encoder it feeds.
#[derive(Debug)]
pub(crate) struct Tokens {
    /// `None` for a model with random weights (no vocabulary): prompts become fixed ids.
    tokenizer: Option<ClipTokenizer>,
    config: ClipTextConfig,
}

impl Tokens {
    fn load(dir: &Path, config: ClipTextConfig) -> Result<Self> {
        Ok(Tokens {
            tokenizer: Some(ClipTokenizer::from_dir(
                dir,
                config.max_position_embeddings,
            )?),
            config,
        })
    }

    fn random(config: ClipTextConfig) -> Self {
        Tokens {
            tokenizer: None,
            config,
        }
    }

    /// The padded token ids of a prompt.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.tokenizer {
            Some(t) => t.encode(text),
            None => Ok(self.config.placeholder_ids()),
        }
    }

    /// The ids as a `[1, n]` tensor.
    fn tensor(&self, text: &str, device: &Device) -> Result<Tensor> {
        let ids = self.encode(text)?;
        Ok(Tensor::new(ids.as_slice(), device)?.unsqueeze(0)?)
    }
}

/// What SDXL's pipeline reads from model_index.json.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(default)]
pub(crate) struct SdxlOptions {
    /// An empty negative prompt conditions on zeros (context and pooled embedding) instead of
    /// the encoding of "".
    pub force_zeros_for_empty_prompt: bool,
    /// The sixth id is an aesthetic score (the refiner) instead of the target size.
    pub requires_aesthetics_score: bool,
}

impl Default for SdxlOptions {
    fn default() -> Self {
        SdxlOptions {
            force_zeros_for_empty_prompt: true,
            requires_aesthetics_score: false,
        }
    }
}

/// diffusers' default `aesthetic_score` and `negative_aesthetic_score`.
const AESTHETIC_SCORE: f64 = 6.0;
const NEGATIVE_AESTHETIC_SCORE: f64 = 2.5;

/// The text encoders of a model: one CLIP text model (SD 1.x / 2.x: its last hidden state),
/// or for SDXL a second one whose penultimate hidden states are set beside the first one's and
/// whose projected pooled output conditions the UNet too.
#[derive(Debug)]
pub(crate) struct TextConditioner {
    tokens: Tokens,
    model: ClipTextModel,
    sdxl: Option<Box<SecondEncoder>>,
}

/// SDXL's second text encoder and its pipeline options.
#[derive(Debug)]
struct SecondEncoder {
    tokens: Tokens,
    model: ClipTextModelWithProjection,
    options: SdxlOptions,
}

/// A prompt's embeddings.
#[derive(Debug, Clone)]
pub struct TextEmbeddings {
    /// What the UNet's cross-attention reads, `[1, 77, cross_attention_dim]`.
    pub context: Tensor,
    /// SDXL: the second encoder's projected pooled output, `[1, projection_dim]`.
    pub pooled: Option<Tensor>,
}

/// The conditioning of one UNet batch.
#[derive(Debug)]
pub(crate) struct Conditioning {
    pub context: Tensor,
    pub added: Option<AddedConditions>,
}

impl TextConditioner {
    /// Loads the text encoders of a diffusers folder: `text_encoder_2/` and `tokenizer_2/`
    /// too when there is a `text_encoder_2/config.json` (SDXL).
    pub(crate) fn load(
        dir: &Path,
        vb: &dyn Fn(&str) -> Result<VarBuilder<'static>>,
    ) -> Result<Self> {
        let config: ClipTextConfig = read_json(&dir.join("text_encoder/config.json"))?;
        let model = ClipTextModel::new(vb("text_encoder")?, &config)?;
        let tokens = Tokens::load(&dir.join("tokenizer"), config)?;
        let config_2_path = dir.join("text_encoder_2/config.json");
        if !config_2_path.is_file() {
            return Ok(TextConditioner {
                tokens,
                model,
                sdxl: None,
            });
        }
        let config_2: ClipTextConfig = read_json(&config_2_path)?;
        let model_2 = ClipTextModelWithProjection::new(vb("text_encoder_2")?, &config_2)?;
        let tokens_2 = Tokens::load(&dir.join("tokenizer_2"), config_2)?;
        let index = dir.join("model_index.json");
        let options = if index.is_file() {
            read_json(&index)?
        } else {
            SdxlOptions::default()
        };
        Ok(TextConditioner {
            tokens,
            model,
            sdxl: Some(Box::new(SecondEncoder {
                tokens: tokens_2,
                model: model_2,
                options,
            })),
        })
    }

    /// Random-weight encoders of the given configs (no tokenizers).
    pub(crate) fn random(
        config: ClipTextConfig,
        config_2: Option<ClipTextConfig>,
        vb: &dyn Fn() -> VarBuilder<'static>,
    ) -> Result<Self> {
        let model = ClipTextModel::new(vb(), &config)?;
        let tokens = Tokens::random(config);
        let sdxl = match config_2 {
            None => None,
            Some(config_2) => Some(Box::new(SecondEncoder {
                model: ClipTextModelWithProjection::new(vb(), &config_2)?,
                tokens: Tokens::random(config_2),
                options: SdxlOptions::default(),
            })),
        };
        Ok(TextConditioner {
            tokens,
            model,
            sdxl,
        })
    }

    /// Checks that the UNet reads what these encoders give.
    pub(crate) fn check(&self, unet: &UNetConfig) -> Result<()> {
        let bad = |m: String| Err(DiffusionError::config("model", m));
        let levels = unet.levels()?;
        let want = levels[0].cross_attention_dim;
        let width = self.tokens.config.hidden_size
            + self
                .sdxl
                .as_ref()
                .map_or(0, |s| s.tokens.config.hidden_size);
        let text_time = self.sdxl.is_some();
        if width != want {
            return bad(format!(
                "the text encoders give {width} features, the UNet reads {want}"
            ));
        }
        let unet_text_time = unet.addition_embed_type.as_deref() == Some("text_time");
        if text_time != unet_text_time {
            return bad(if text_time {
                "two text encoders but the UNet has no text_time conditioning".into()
            } else {
                "the UNet needs text_time conditioning (SDXL): text_encoder_2/ is missing".into()
            });
        }
        if let Some(second) = &self.sdxl {
            let options = &second.options;
            let (time_dim, input_dim) = unet.text_time_dims()?;
            let ids = if options.requires_aesthetics_score {
                5
            } else {
                6
            };
            let projection = second.tokens.config.projection_dim.unwrap_or(0);
            if time_dim * ids + projection != input_dim {
                return bad(format!(
                    "the UNet's added embedding reads {input_dim} values, the pipeline makes \
                     {ids} ids of {time_dim} and a pooled embedding of {projection} \
                     (requires_aesthetics_score = {})",
                    options.requires_aesthetics_score
                ));
            }
        }
        Ok(())
    }

    /// The VAE's precision for a model run in `dtype`: SDXL's pipeline runs a VAE marked
    /// `force_upcast` in f32 (the SDXL VAE overflows in f16).
    pub(crate) fn vae_dtype(&self, vae: &VaeConfig, dtype: DType) -> DType {
        if self.sdxl.is_some() && vae.force_upcast && dtype == DType::F16 {
            DType::F32
        } else {
            dtype
        }
    }

    /// The padded token ids of a prompt for the first tokenizer.
    pub(crate) fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokens.encode(text)
    }

    /// The padded token ids of a prompt for the second tokenizer (SDXL).
    pub(crate) fn tokenize_2(&self, text: &str) -> Result<Option<Vec<u32>>> {
        self.sdxl
            .as_ref()
            .map(|s| s.tokens.encode(text))
            .transpose()
    }

    /// The embeddings of one prompt.
    pub(crate) fn encode(&self, text: &str, device: &Device) -> Result<TextEmbeddings> {
        let ids = self.tokens.tensor(text, device)?;
        match &self.sdxl {
            None => Ok(TextEmbeddings {
                context: self.model.forward(&ids)?,
                pooled: None,
            }),
            Some(second) => {
                let first = self.model.penultimate(&ids)?;
                let (hidden, pooled) = second
                    .model
                    .penultimate_and_text_embeds(&second.tokens.tensor(text, device)?)?;
                Ok(TextEmbeddings {
                    context: Tensor::cat(&[&first, &hidden], 2)?,
                    pooled: Some(pooled),
                })
            }
        }
    }

    /// The conditioning of a batch of `n` variations (`2n` rows with guidance, the negative
    /// prompt's first) of an image of `size` (height, width) pixels.
    pub(crate) fn conditioning(
        &self,
        prompt: &str,
        negative_prompt: &str,
        n: usize,
        guidance: bool,
        size: (usize, usize),
        device: &Device,
    ) -> Result<Conditioning> {
        let cond = self.encode(prompt, device)?;
        let zeros_for_empty = self
            .sdxl
            .as_ref()
            .is_some_and(|s| s.options.force_zeros_for_empty_prompt);
        let uncond = if !guidance {
            None
        } else if zeros_for_empty && negative_prompt.is_empty() {
            Some(TextEmbeddings {
                context: cond.context.zeros_like()?,
                pooled: cond.pooled.as_ref().map(Tensor::zeros_like).transpose()?,
            })
        } else {
            Some(self.encode(negative_prompt, device)?)
        };
        let rows = |neg: Option<&Tensor>, pos: &Tensor| -> Result<Tensor> {
            let reps: Vec<usize> = std::iter::once(n)
                .chain(std::iter::repeat_n(1, pos.rank() - 1))
                .collect();
            let pos = pos.repeat(reps.as_slice())?;
            Ok(match neg {
                Some(neg) => Tensor::cat(&[&neg.repeat(reps.as_slice())?, &pos], 0)?,
                None => pos,
            })
        };
        let context = rows(uncond.as_ref().map(|u| &u.context), &cond.context)?;
        let added = match (&self.sdxl, &cond.pooled) {
            (Some(second), Some(pooled)) => {
                let options = &second.options;
                let neg_pooled = uncond.as_ref().and_then(|u| u.pooled.as_ref());
                let (h, w) = (size.0 as f32, size.1 as f32);
                // original size, crop top-left (0, 0), target size or aesthetic score
                let (ids, neg_ids) = if options.requires_aesthetics_score {
                    (
                        vec![h, w, 0.0, 0.0, AESTHETIC_SCORE as f32],
                        vec![h, w, 0.0, 0.0, NEGATIVE_AESTHETIC_SCORE as f32],
                    )
                } else {
                    (vec![h, w, 0.0, 0.0, h, w], vec![h, w, 0.0, 0.0, h, w])
                };
                let k = ids.len();
                let ids = Tensor::from_vec(ids, (1, k), device)?;
                let neg_ids = Tensor::from_vec(neg_ids, (1, k), device)?;
                Some(AddedConditions {
                    text_embeds: rows(neg_pooled, pooled)?,
                    time_ids: rows(guidance.then_some(&neg_ids), &ids)?,
                })
            }
            _ => None,
        };
        Ok(Conditioning { context, added })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Architecture;
    use crate::weights::shape_only_var_builder_counted;

    /// The published configs fit together: the encoders' widths are what the UNet reads, and
    /// SDXL's ids and pooled embedding fill its added embedding (built without memory).
    #[test]
    fn published_text_encoders_fit_their_unets() {
        for arch in [Architecture::Sd15, Architecture::Sd2, Architecture::Sdxl] {
            let vb = || shape_only_var_builder_counted(DType::F32, &Device::Cpu).0;
            let text =
                TextConditioner::random(arch.text_config(), arch.text_config_2(), &vb).unwrap();
            text.check(&arch.unet_config()).unwrap();
            assert_eq!(text.sdxl.is_some(), arch == Architecture::Sdxl);
        }
        // A refiner-style option without the matching UNet is refused.
        let vb = || shape_only_var_builder_counted(DType::F32, &Device::Cpu).0;
        let arch = Architecture::Sdxl;
        let mut text =
            TextConditioner::random(arch.text_config(), arch.text_config_2(), &vb).unwrap();
        if let Some(second) = &mut text.sdxl {
            second.options.requires_aesthetics_score = true;
        }
        let e = text.check(&arch.unet_config()).unwrap_err();
        assert!(e.to_string().contains("requires_aesthetics_score"), "{e}");
    }
}
