//! Components of an architecture built from its published config with random weights, run on
//! the shapes of `shared/perf/torch_reference.py`, for side-by-side timing with PyTorch.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};

use candle_nn::VarBuilder;

use crate::clip::ClipTextModel;
use crate::config::UNetConfig;
use crate::manifest::Architecture;
use crate::pipeline::{InpaintModel, InpaintParams};
use crate::scheduler::SchedulerKind;
use crate::unet::{AddedConditions, UNet};
use crate::vae::Vae;
use crate::weights::{random_var_builder_counted, shape_only_var_builder_counted};
use crate::{DiffusionError, Result};

/// What to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// One UNet forward: latent `[2, 9, r/8, r/8]`, context `[2, 77, D]`, t = 500, and for
    /// SDXL random pooled text embeddings `[2, 1280]` and the ids of an r×r image
    /// (torch_reference.py's `sdxl_unet` at r = 1024).
    Unet,
    /// VAE encode of `[1, 3, 512, 512]`.
    VaeEnc,
    /// VAE decode of `[1, 4, 64, 64]`.
    VaeDec,
    /// The text encoder on 77 tokens.
    Clip,
}

impl std::str::FromStr for Component {
    type Err = DiffusionError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "unet" => Ok(Component::Unet),
            "vae_enc" => Ok(Component::VaeEnc),
            "vae_dec" => Ok(Component::VaeDec),
            "clip" => Ok(Component::Clip),
            // torch_reference.py's name (with --model sdxl-inpaint).
            "sdxl_unet" => Ok(Component::Unet),
            other => Err(DiffusionError::Input(format!(
                "unknown component {other:?} (unet, vae_enc, vae_dec, clip)"
            ))),
        }
    }
}

/// A built component with its fixed input, ready to run repeatedly.
pub struct Runner {
    run: Box<dyn Fn() -> Result<Tensor>>,
    params: Option<usize>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runner")
    }
}

impl Runner {
    /// Builds `component` of `arch` with random weights (plain tensors) at `resolution`.
    pub fn random(
        component: Component,
        arch: Architecture,
        resolution: usize,
        device: &Device,
    ) -> Result<Self> {
        let dtype = DType::F32;
        let (vb, count) = random_var_builder_counted(dtype, device);
        let latent = resolution / 8;
        let dev = device.clone();
        let run: Box<dyn Fn() -> Result<Tensor>> = match component {
            Component::Unet => unet_runner(vb, &arch.unet_config(), latent, &dev)?,
            Component::VaeEnc | Component::VaeDec => {
                let vae = Vae::new(vb, &arch.vae_config())?;
                if component == Component::VaeEnc {
                    let x = Tensor::randn(0f32, 1.0, (1, 3, resolution, resolution), &dev)?;
                    Box::new(move || Ok(vae.encode_mean(&x)?))
                } else {
                    let z = Tensor::randn(0f32, 1.0, (1, 4, latent, latent), &dev)?;
                    Box::new(move || Ok(vae.decode(&z)?))
                }
            }
            Component::Clip => {
                let config = arch.text_config();
                let model = ClipTextModel::new(vb, &config)?;
                let ids = Tensor::new(config.placeholder_ids().as_slice(), &dev)?.unsqueeze(0)?;
                Box::new(move || model.forward(&ids))
            }
        };
        let params = Some(count.load(Ordering::Relaxed));
        Ok(Runner { run, params })
    }

    /// A whole inpainting with `model`: a `resolution`² grey image, every pixel masked, one
    /// variation, `steps` DDIM steps with guidance (what `outpaint bench pipeline` times).
    pub fn pipeline(model: InpaintModel, resolution: usize, steps: usize) -> Result<Self> {
        let image = Tensor::full(0.5f32, (1, 3, resolution, resolution), &Device::Cpu)?;
        let mask = Tensor::ones((1, 1, resolution, resolution), DType::F32, &Device::Cpu)?;
        let run = Box::new(move || {
            let params = InpaintParams {
                prompt: "a photo",
                steps,
                scheduler: SchedulerKind::Ddim,
                ..InpaintParams::default()
            };
            model.inpaint(
                &image,
                &mask,
                &params,
                &mut |_, _| {},
                &AtomicBool::new(false),
            )
        });
        Ok(Runner { run, params: None })
    }

    /// A UNet of any config (tiny ones in tests) on a `latent`² input, as
    /// [`Component::Unet`].
    pub fn unet(config: &UNetConfig, latent: usize, device: &Device) -> Result<Self> {
        let (vb, count) = random_var_builder_counted(DType::F32, device);
        let run = unet_runner(vb, config, latent, device)?;
        let params = Some(count.load(Ordering::Relaxed));
        Ok(Runner { run, params })
    }

    /// Number of parameters the component was built with (compare with PyTorch's `params`);
    /// not counted for a whole pipeline.
    pub fn params(&self) -> Option<usize> {
        self.params
    }

    /// Runs once; returns the output's mean absolute value and shape (so the work is not
    /// optimised away, and to compare with PyTorch's `out_mean_abs`).
    pub fn run(&self) -> Result<(f32, Vec<usize>)> {
        let y = (self.run)()?;
        let mean = y
            .abs()?
            .mean_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        Ok((mean, y.dims().to_vec()))
    }
}

fn unet_runner(
    vb: VarBuilder<'static>,
    config: &UNetConfig,
    latent: usize,
    dev: &Device,
) -> Result<Box<dyn Fn() -> Result<Tensor>>> {
    let ctx_dim = config.levels()?[0].cross_attention_dim;
    let unet = UNet::new(vb, config)?;
    let x = Tensor::randn(0f32, 1.0, (2, config.in_channels, latent, latent), dev)?;
    let ctx = Tensor::randn(0f32, 1.0, (2, 77, ctx_dim), dev)?;
    let added = match config.addition_embed_type.as_deref() {
        Some("text_time") => {
            let (time_dim, input_dim) = config.text_time_dims()?;
            let pooled = input_dim.checked_sub(6 * time_dim).ok_or_else(|| {
                DiffusionError::Input("projection_class_embeddings_input_dim too small".into())
            })?;
            let side = (latent * 8) as f32;
            let ids = [side, side, 0.0, 0.0, side, side];
            Some(AddedConditions {
                text_embeds: Tensor::randn(0f32, 1.0, (2, pooled), dev)?,
                time_ids: Tensor::new(&[ids, ids], dev)?,
            })
        }
        _ => None,
    };
    Ok(Box::new(move || {
        Ok(unet.forward(&x, 500.0, &ctx, added.as_ref())?)
    }))
}

/// Parameters of a UNet of `config`, counted without allocating its weights.
pub fn unet_parameters(config: &UNetConfig) -> Result<usize> {
    let (vb, count) = shape_only_var_builder_counted(DType::F32, &Device::Cpu);
    UNet::new(vb, config)?;
    Ok(count.load(Ordering::Relaxed))
}

/// A timed closure.
pub type KernelFn = Box<dyn Fn() -> Result<Tensor>>;

/// One kernel of [`crate::kernels`] on a real SD 1.5 shape, with its candle composition.
pub struct KernelCase {
    /// What and on which shape.
    pub name: String,
    /// The fast path (what [`crate::kernels`] runs).
    pub fast: KernelFn,
    /// The plain candle composition.
    pub candle: KernelFn,
    /// Other implementations worth timing, by name.
    pub others: Vec<(String, KernelFn)>,
}

impl std::fmt::Debug for KernelCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// The kernel micro benchmarks on SD 1.5's shapes at 512² with batch 2 (classifier-free
/// guidance), on the CPU with random inputs. `filter` keeps the cases whose name contains it.
pub fn kernel_cases(filter: &str) -> Result<Vec<KernelCase>> {
    use crate::kernels::{self, Conv2d, GroupNorm};
    use crate::random::NoiseRng;
    use candle_core::Module;

    let dev = Device::Cpu;
    let mut rng = NoiseRng::new(0);
    let mut randn = |shape: &[usize]| rng.randn(shape, &dev);
    let mut cases = Vec::new();
    let keep = |name: &str| name.contains(filter);

    // (batch, c_in, c_out, kernel, side): the UNet's 3×3 convs per level at batch 2, the VAE's
    // at batch 1, and two 1×1 projections.
    for (n, c_in, c_out, k, hw) in [
        (2, 320, 320, 3, 64),
        (2, 640, 640, 3, 32),
        (2, 1280, 1280, 3, 16),
        (2, 1280, 1280, 3, 8),
        (1, 128, 128, 3, 512),
        (1, 512, 512, 3, 128),
        (1, 3, 128, 3, 512),
        (1, 128, 3, 3, 512),
        (1, 256, 128, 3, 512),
        (2, 320, 320, 1, 64),
        (2, 640, 1280, 1, 16),
    ] {
        let name = format!(
            "{}conv{k}x{k} {c_in}->{c_out} {hw}x{hw} b{n}",
            if n == 1 { "vae " } else { "" }
        );
        if !keep(&name) {
            continue;
        }
        let pad = k / 2;
        let x = randn(&[n, c_in, hw, hw])?;
        let w = (randn(&[c_out, c_in, k, k])? * 0.02)?;
        let b = randn(&[c_out])?;
        let conv = Conv2d::new(w.clone(), Some(b.clone()), 1, pad);
        let x2 = x.clone();
        cases.push(KernelCase {
            name,
            fast: Box::new(move || Ok(conv.forward(&x)?)),
            candle: Box::new(move || Ok(kernels::reference::conv2d(&x2, &w, Some(&b), 1, pad)?)),
            others: Vec::new(),
        });
    }
    for (name, n, lq, lk, d) in [
        ("self-attn (16, 4096, 40)", 16, 4096, 4096, 40),
        ("self-attn (16, 1024, 80)", 16, 1024, 1024, 80),
        ("cross-attn (16, 4096, 40) lk 77", 16, 4096, 77, 40),
        ("vae attn (1, 4096, 512)", 1, 4096, 4096, 512),
    ] {
        if !keep(name) {
            continue;
        }
        let (q, k, v) = (
            randn(&[n, lq, d])?,
            randn(&[n, lk, d])?,
            randn(&[n, lk, d])?,
        );
        let scale = 1.0 / (d as f64).sqrt();
        let (q2, k2, v2) = (q.clone(), k.clone(), v.clone());
        // candle-nn's CPU flash attention takes (B, S, H, D).
        let bshd = |t: &Tensor| -> Result<Tensor> {
            Ok(t.reshape((2, n / 2, t.dim(1)?, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut others: Vec<(String, KernelFn)> = Vec::new();
        if n % 2 == 0 {
            let (q3, k3, v3) = (bshd(&q)?, bshd(&k)?, bshd(&v)?);
            others.push((
                "candle_nn flash_attn".to_string(),
                Box::new(move || {
                    Ok(candle_nn::attention::flash_attn::<f32>(
                        &q3,
                        &k3,
                        &v3,
                        scale as f32,
                        candle_nn::attention::AttnMask::None,
                        None,
                        None,
                    )?)
                }),
            ));
        }
        cases.push(KernelCase {
            name: name.to_string(),
            fast: Box::new(move || Ok(kernels::attention(&q, &k, &v, scale)?)),
            candle: Box::new(move || Ok(kernels::reference::attention(&q2, &k2, &v2, scale)?)),
            others,
        });
    }
    for (l, k, n) in [
        (4096, 320, 320),
        (4096, 320, 2560),
        (4096, 1280, 320),
        (1024, 640, 640),
        (256, 1280, 1280),
        (256, 5120, 1280),
    ] {
        let name = format!("linear (2, {l}, {k})->{n}");
        if !keep(&name) {
            continue;
        }
        let x = randn(&[2, l, k])?;
        let w = (randn(&[n, k])? * 0.02)?;
        let b = randn(&[n])?;
        let lin = kernels::Linear::new(w.clone(), Some(b.clone()));
        let x2 = x.clone();
        cases.push(KernelCase {
            name,
            fast: Box::new(move || Ok(lin.forward(&x)?)),
            candle: Box::new(move || Ok(kernels::reference::linear(&x2, &w, Some(&b))?)),
            others: Vec::new(),
        });
    }
    let name = "matmul 2048^3 (candle, gemm crate)";
    if keep(name) {
        let (a, b) = (randn(&[2048, 2048])?, randn(&[2048, 2048])?);
        let (a2, b2) = (a.clone(), b.clone());
        cases.push(KernelCase {
            name: name.to_string(),
            fast: Box::new(move || Ok(a.matmul(&b)?)),
            candle: Box::new(move || Ok(a2.matmul(&b2)?)),
            others: Vec::new(),
        });
    }
    let name = "geglu (2, 4096, 2560)";
    if keep(name) {
        let x = randn(&[2, 4096, 2 * 2560])?;
        let x2 = x.clone();
        cases.push(KernelCase {
            name: name.to_string(),
            fast: Box::new(move || Ok(kernels::geglu(&x)?)),
            candle: Box::new(move || Ok(kernels::reference::geglu(&x2)?)),
            others: Vec::new(),
        });
    }
    for (silu, dims) in [
        (false, [2, 320, 64, 64]),
        (true, [2, 320, 64, 64]),
        (true, [1, 128, 512, 512]),
    ] {
        let name = format!(
            "group norm{} 32 groups {dims:?}",
            if silu { "+silu" } else { "" }
        );
        if !keep(&name) {
            continue;
        }
        let c = dims[1];
        let x = randn(&dims)?;
        let (w, b) = (randn(&[c])?, randn(&[c])?);
        let gn = GroupNorm::new(w.clone(), b.clone(), 32, 1e-5)?;
        let x2 = x.clone();
        cases.push(KernelCase {
            name,
            fast: Box::new(move || {
                Ok(if silu {
                    gn.forward_silu(&x)?
                } else {
                    gn.forward(&x)?
                })
            }),
            candle: Box::new(move || {
                Ok(kernels::reference::group_norm(&x2, &w, &b, 32, 1e-5, silu)?)
            }),
            others: Vec::new(),
        });
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The architectures match diffusers': same parameter counts as
    /// shared/perf/torch_reference.py reports for its random-weight models.
    #[test]
    fn sd15_text_encoder_and_vae_have_diffusers_parameter_counts() {
        let dev = Device::Cpu;
        let clip = Runner::random(Component::Clip, Architecture::Sd15, 512, &dev).unwrap();
        assert_eq!(clip.params(), Some(123_060_480));
        let vae = Runner::random(Component::VaeDec, Architecture::Sd15, 512, &dev).unwrap();
        assert_eq!(vae.params(), Some(83_653_863));
    }

    /// The SDXL inpainting UNet and text encoders match diffusers' and transformers'
    /// parameter counts (counted without allocating the weights).
    #[test]
    fn sdxl_components_have_diffusers_parameter_counts() {
        assert_eq!(
            unet_parameters(&UNetConfig::sdxl_inpaint()).unwrap(),
            2_567_478_084
        );
        assert_eq!(
            unet_parameters(&UNetConfig::sd15_inpaint()).unwrap(),
            859_535_364
        );
        let (vb, count) = shape_only_var_builder_counted(DType::F32, &Device::Cpu);
        crate::clip::ClipTextModelWithProjection::new(
            vb,
            &crate::clip::ClipTextConfig::vit_big_g14(),
        )
        .unwrap();
        assert_eq!(
            count.load(std::sync::atomic::Ordering::Relaxed),
            694_659_840
        );
    }

    /// The SDXL bench inputs (pooled text embeddings and size ids) on a tiny SDXL-shaped UNet.
    #[test]
    fn sdxl_shaped_unet_runs_on_the_bench_inputs() {
        assert_eq!("sdxl_unet".parse::<Component>().unwrap(), Component::Unet);
        let config = UNetConfig {
            block_out_channels: vec![32, 64],
            down_block_types: vec!["DownBlock2D".into(), "CrossAttnDownBlock2D".into()],
            attention_head_dim: crate::config::PerBlock::Each(vec![2, 4]),
            transformer_layers_per_block: crate::config::PerBlock::Each(vec![1, 2]),
            cross_attention_dim: crate::config::PerBlock::All(48),
            addition_time_embed_dim: Some(8),
            projection_class_embeddings_input_dim: Some(16 + 6 * 8),
            layers_per_block: 1,
            ..UNetConfig::sdxl_inpaint()
        };
        let runner = Runner::unet(&config, 16, &Device::Cpu).unwrap();
        let (mean, shape) = runner.run().unwrap();
        assert_eq!(shape, [2, 4, 16, 16]);
        assert!(mean.is_finite() && mean > 0.0, "{mean}");
    }
}
