//! Components of an architecture built from its published config with random weights, run on
//! the shapes of `shared/perf/torch_reference.py`, for side-by-side timing with PyTorch.

use candle_core::{DType, Device, Tensor};

use crate::clip::ClipTextModel;
use crate::manifest::Architecture;
use crate::unet::UNet;
use crate::vae::Vae;
use crate::weights::random_var_builder_counted;
use crate::{DiffusionError, Result};

/// What to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// One UNet forward: latent `[2, 9, 64, 64]`, context `[2, 77, D]`, t = 500.
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
            other => Err(DiffusionError::Input(format!(
                "unknown component {other:?} (unet, vae_enc, vae_dec, clip)"
            ))),
        }
    }
}

/// A built component with its fixed input, ready to run repeatedly.
pub struct Runner {
    run: Box<dyn Fn() -> Result<Tensor>>,
    params: usize,
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
            Component::Unet => {
                let config = arch.unet_config()?;
                let ctx_dim = arch.text_config()?.hidden_size;
                let unet = UNet::new(vb, &config)?;
                let x = Tensor::randn(0f32, 1.0, (2, config.in_channels, latent, latent), &dev)?;
                let ctx = Tensor::randn(0f32, 1.0, (2, 77, ctx_dim), &dev)?;
                Box::new(move || Ok(unet.forward(&x, 500.0, &ctx, None)?))
            }
            Component::VaeEnc | Component::VaeDec => {
                let vae = Vae::new(vb, &arch.vae_config()?)?;
                if component == Component::VaeEnc {
                    let x = Tensor::randn(0f32, 1.0, (1, 3, resolution, resolution), &dev)?;
                    Box::new(move || Ok(vae.encode_mean(&x)?))
                } else {
                    let z = Tensor::randn(0f32, 1.0, (1, 4, latent, latent), &dev)?;
                    Box::new(move || Ok(vae.decode(&z)?))
                }
            }
            Component::Clip => {
                let config = arch.text_config()?;
                let model = ClipTextModel::new(vb, &config)?;
                let ids: Vec<u32> = (0..77u32)
                    .map(|i| (i * 7919 + 13) % config.vocab_size as u32)
                    .collect();
                let ids = Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?;
                Box::new(move || model.forward(&ids))
            }
        };
        let params = count.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Runner { run, params })
    }

    /// Number of parameters the component was built with (compare with PyTorch's `params`).
    pub fn params(&self) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The architectures match diffusers': same parameter counts as
    /// shared/perf/torch_reference.py reports for its random-weight models.
    #[test]
    fn sd15_text_encoder_and_vae_have_diffusers_parameter_counts() {
        let dev = Device::Cpu;
        let clip = Runner::random(Component::Clip, Architecture::Sd15, 512, &dev).unwrap();
        assert_eq!(clip.params(), 123_060_480);
        let vae = Runner::random(Component::VaeDec, Architecture::Sd15, 512, &dev).unwrap();
        assert_eq!(vae.params(), 83_653_863);
    }
}
