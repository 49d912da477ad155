//! The inpainting pipeline: a loaded model ([`InpaintModel`]) and [`InpaintModel::inpaint`],
//! a port of diffusers' `StableDiffusionInpaintPipeline` and, for SDXL,
//! `StableDiffusionXLInpaintPipeline` for 9-channel UNets (the text conditioning is in
//! [`text`]).

mod text;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use self::text::TextConditioner;
pub use self::text::TextEmbeddings;
use crate::config::{UNetConfig, VaeConfig, read_json};
use crate::random::NoiseRng;
use crate::scheduler::{SchedulerConfig, SchedulerKind};
use crate::unet::UNet;
use crate::vae::Vae;
use crate::weights::{component_weights, mmap_var_builder};
use crate::{DiffusionError, Result};

/// A Stable Diffusion (1.x, 2.x or XL) inpainting model, loaded once and kept resident.
#[derive(Debug)]
pub struct InpaintModel {
    text: TextConditioner,
    vae: Vae,
    vae_config: VaeConfig,
    unet: UNet,
    scheduler_config: SchedulerConfig,
    device: Device,
    dtype: DType,
    /// The VAE's precision: f32 for an SDXL VAE (`force_upcast`: it overflows in f16).
    vae_dtype: DType,
}

/// What to generate, besides the image and the mask.
#[derive(Debug, Clone)]
pub struct InpaintParams<'a> {
    /// What the masked area should show.
    pub prompt: &'a str,
    /// What it should not show ("" for none).
    pub negative_prompt: &'a str,
    /// Denoising steps.
    pub steps: usize,
    /// Classifier-free guidance scale; guidance is off at 1 or below.
    pub guidance_scale: f64,
    /// Which scheduler.
    pub scheduler: SchedulerKind,
    /// One seed per variation; the variations run as one batch.
    pub seeds: &'a [u64],
    /// How much of the schedule to run, in (0, 1]: below 1 the start is the image's own
    /// latents noised part-way (the pre-filled area then guides the composition).
    pub strength: f64,
    /// Explicit initial noise, shape `[n, 4, h/8, w/8]`, instead of the seeds' (tests).
    pub initial_latents: Option<&'a Tensor>,
    /// Explicit per-step noise for ancestral schedulers, one `[n, 4, h/8, w/8]` tensor per
    /// step, instead of the seeds' (tests).
    pub step_noise: Option<&'a [Tensor]>,
}

impl Default for InpaintParams<'_> {
    fn default() -> Self {
        InpaintParams {
            prompt: "",
            negative_prompt: "",
            steps: 30,
            guidance_scale: 7.5,
            scheduler: SchedulerKind::Ddim,
            seeds: &[0],
            strength: 1.0,
            initial_latents: None,
            step_noise: None,
        }
    }
}

impl InpaintModel {
    /// Loads a model from a diffusers-layout folder (`unet/`, `vae/`, `text_encoder/`,
    /// `tokenizer/`, `scheduler/`, and for SDXL `text_encoder_2/`, `tokenizer_2/` and
    /// `model_index.json`), converting weights to `dtype` on `device`.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let unet_config: UNetConfig = read_json(&dir.join("unet/config.json"))?;
        let vae_config: VaeConfig = read_json(&dir.join("vae/config.json"))?;
        let scheduler_path = dir.join("scheduler/scheduler_config.json");
        let scheduler_config = if scheduler_path.is_file() {
            read_json(&scheduler_path)?
        } else {
            SchedulerConfig::default()
        };
        let vb_as = |c: &str, dtype: DType| -> Result<VarBuilder<'static>> {
            mmap_var_builder(&component_weights(&dir.join(c))?, dtype, device)
        };
        let vb = |c: &str| vb_as(c, dtype);
        let text = TextConditioner::load(dir, &vb)?;
        text.check(&unet_config)?;
        let vae_dtype = text.vae_dtype(&vae_config, dtype);
        let vae = Vae::new(vb_as("vae", vae_dtype)?, &vae_config)?;
        let unet = UNet::new(vb("unet")?, &unet_config)?;
        Ok(InpaintModel {
            text,
            vae,
            vae_config,
            unet,
            scheduler_config,
            device: device.clone(),
            dtype,
            vae_dtype,
        })
    }

    /// A model of the architecture `arch` with random weights (plain tensors) and no
    /// tokenizer, for timing a whole pipeline without a download. Its output means nothing.
    pub fn random(
        arch: crate::manifest::Architecture,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let unet_config = arch.unet_config();
        let vae_config = arch.vae_config();
        let vb = || crate::weights::random_var_builder(dtype, device);
        let text = TextConditioner::random(arch.text_config(), arch.text_config_2(), &vb)?;
        text.check(&unet_config)?;
        let vae_dtype = text.vae_dtype(&vae_config, dtype);
        Ok(InpaintModel {
            text,
            vae: Vae::new(
                crate::weights::random_var_builder(vae_dtype, device),
                &vae_config,
            )?,
            vae_config,
            unet: UNet::new(vb(), &unet_config)?,
            scheduler_config: SchedulerConfig::default(),
            device: device.clone(),
            dtype,
            vae_dtype,
        })
    }

    /// How many pixels one latent covers along each side (8 for real models).
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// Image sides must be multiples of this: the VAE's factor (8 for real models). The UNet
    /// copes with latent sides that do not halve evenly, as diffusers' does.
    pub fn size_multiple(&self) -> usize {
        self.vae_scale_factor()
    }

    /// The UNet's configuration (from its config.json).
    pub fn unet_config(&self) -> &UNetConfig {
        self.unet.config()
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The scheduler settings read from the model's scheduler_config.json.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// The padded token ids of a prompt (for SDXL: of the first tokenizer).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.text.tokenize(text)
    }

    /// The padded token ids of a prompt for SDXL's second tokenizer; `None` for SD 1.x / 2.x.
    pub fn tokenize_2(&self, text: &str) -> Result<Option<Vec<u32>>> {
        self.text.tokenize_2(text)
    }

    /// What the UNet's cross-attention reads for a prompt (`context`, shape `[1, 77, D]`: the
    /// text encoder's last hidden state, or for SDXL both encoders' penultimate ones side by
    /// side) and, for SDXL, the pooled text embedding.
    pub fn encode_text(&self, text: &str) -> Result<TextEmbeddings> {
        self.text.encode(text, &self.device)
    }

    /// Inpaints `image` (f32 in [0, 1], shape `[1, 3, H, W]`) where `mask` (shape
    /// `[1, 1, H, W]`, ≥ 0.5 means generate) is set, once per seed. Returns the decoded images
    /// in [0, 1], shape `[n, 3, H, W]`. `progress(done, total)` is called after each step;
    /// `cancel` is checked before each step.
    pub fn inpaint(
        &self,
        image: &Tensor,
        mask: &Tensor,
        params: &InpaintParams<'_>,
        progress: &mut dyn FnMut(usize, usize),
        cancel: &AtomicBool,
    ) -> Result<Tensor> {
        let _span = tracing::debug_span!("inpaint").entered();
        let (_, _, h, w) = image.dims4()?;
        let n = params.seeds.len();
        let m = self.size_multiple();
        if n == 0 {
            return Err(DiffusionError::Input("no seeds".into()));
        }
        if h % m != 0 || w % m != 0 {
            return Err(DiffusionError::Input(format!(
                "image size {w}x{h} is not a multiple of {m}"
            )));
        }
        if !(params.strength > 0.0 && params.strength <= 1.0) {
            return Err(DiffusionError::Input(format!(
                "strength must be in (0, 1], got {}",
                params.strength
            )));
        }
        let s = self.vae_scale_factor();
        let (lh, lw) = (h / s, w / s);
        let latent_shape = [n, self.vae_config.latent_channels, lh, lw];
        let dev = &self.device;
        let scaling = self.vae_config.scaling_factor;
        let cfg = params.guidance_scale > 1.0;

        // 1. Text conditioning, negative first: shape [2n or n, 77, D] (and SDXL's pooled
        // embeddings and size/crop ids).
        let cond =
            self.text
                .conditioning(params.prompt, params.negative_prompt, n, cfg, (h, w), dev)?;

        // 2. Image in [-1, 1], the binarised mask, the masked image and their latents.
        let image = ((image.to_dtype(DType::F32)?.to_device(dev)? * 2.0)? - 1.0)?;
        let mask = mask
            .to_dtype(DType::F32)?
            .to_device(dev)?
            .ge(0.5)?
            .to_dtype(DType::F32)?;
        let keep = (1.0 - &mask)?; // 1 on the original
        let masked_image = image.broadcast_mul(&keep)?;
        let masked_latents = (self.encode_mode(&masked_image)? * scaling)?; // shape: [1, 4, lh, lw]
        let mask_latent = mask.upsample_nearest2d(lh, lw)?.to_dtype(self.dtype)?; // shape: [1, 1, lh, lw]
        let batch = if cfg { 2 * n } else { n };
        let mask_latent = mask_latent.repeat((batch, 1, 1, 1))?;
        let masked_latents = masked_latents
            .to_dtype(self.dtype)?
            .repeat((batch, 1, 1, 1))?;

        // 3. Schedule and initial latents.
        let scheduler = self
            .scheduler_config
            .build(params.scheduler, params.steps)?;
        let start =
            params.steps - ((params.steps as f64 * params.strength) as usize).min(params.steps);
        if start >= params.steps {
            return Err(DiffusionError::Input(
                "strength leaves no steps to run".into(),
            ));
        }
        let mut rngs: Vec<NoiseRng> = params.seeds.iter().map(|&s| NoiseRng::new(s)).collect();
        let draw = |rngs: &mut Vec<NoiseRng>| -> Result<Tensor> {
            let parts = rngs
                .iter_mut()
                .map(|r| {
                    r.randn(&latent_shape[1..], dev)
                        .and_then(|t| Ok(t.unsqueeze(0)?))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(&parts, 0)?)
        };
        let noise = match params.initial_latents {
            Some(l) => {
                if l.dims() != latent_shape {
                    return Err(DiffusionError::Input(format!(
                        "initial latents have shape {:?}, expected {latent_shape:?}",
                        l.dims()
                    )));
                }
                l.to_dtype(DType::F32)?.to_device(dev)?
            }
            None => draw(&mut rngs)?,
        };
        let mut latents = if start == 0 {
            (noise * scheduler.init_noise_sigma())?
        } else {
            let image_latents = (self.encode_mode(&image)? * scaling)?.repeat((n, 1, 1, 1))?;
            scheduler.add_noise(&image_latents.to_dtype(DType::F32)?, &noise, start)?
        };

        // 4. Denoising loop (latents kept in f32 between steps).
        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len() - start;
        for (i, &t) in timesteps.iter().enumerate().skip(start) {
            if cancel.load(Ordering::Relaxed) {
                return Err(DiffusionError::Cancelled);
            }
            let _step = tracing::trace_span!("step", i).entered();
            let x = if cfg {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let x = scheduler.scale_model_input(x, i)?.to_dtype(self.dtype)?;
            let x = Tensor::cat(&[&x, &mask_latent, &masked_latents], 1)?; // shape: [batch, 9, lh, lw]
            let noise_pred = self
                .unet
                .forward(&x, t, &cond.context, cond.added.as_ref())?
                .to_dtype(DType::F32)?;
            let noise_pred = if cfg {
                let parts = noise_pred.chunk(2, 0)?;
                let (uncond, text) = (&parts[0], &parts[1]);
                (uncond + ((text - uncond)? * params.guidance_scale)?)?
            } else {
                noise_pred
            };
            let step_noise = if scheduler.needs_noise() {
                Some(match params.step_noise {
                    Some(list) => list
                        .get(i - start)
                        .ok_or_else(|| DiffusionError::Input("too few step noise tensors".into()))?
                        .to_dtype(DType::F32)?
                        .to_device(dev)?,
                    None => draw(&mut rngs)?,
                })
            } else {
                None
            };
            latents = scheduler.step(&noise_pred, i, &latents, step_noise.as_ref())?;
            progress(i + 1 - start, total);
        }

        // 5. Decode.
        let _decode = tracing::debug_span!("vae_decode").entered();
        let latents = (latents / scaling)?.to_dtype(self.vae_dtype)?;
        // One image at a time: decoding is the memory peak (the 512² VAE decoder holds
        // 128×512×512 activations per image).
        let images = (0..n)
            .map(|i| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(DiffusionError::Cancelled);
                }
                Ok(self
                    .vae
                    .decode(&latents.narrow(0, i, 1)?)?
                    .to_dtype(DType::F32)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let images = Tensor::cat(&images, 0)?;
        Ok(((images / 2.0)? + 0.5)?.clamp(0f32, 1f32)?)
    }

    /// The VAE posterior's mode (its mean, as diffusers' `latent_dist.mode()`) for an image
    /// in [-1, 1].
    fn encode_mode(&self, image: &Tensor) -> Result<Tensor> {
        let _span = tracing::debug_span!("vae_encode").entered();
        Ok(self
            .vae
            .encode_mean(&image.to_dtype(self.vae_dtype)?)?
            .to_dtype(DType::F32)?)
    }
}
