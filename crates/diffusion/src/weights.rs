//! Where weights come from: safetensors files (memory-mapped) or random values for benchmarks.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};

use crate::{DiffusionError, Result};

/// The weight files of a diffusers component folder (`unet/`, `vae/`, `text_encoder/`):
/// the unsharded f32 file, else its `fp16` variant.
pub fn component_weights(dir: &Path) -> Result<PathBuf> {
    for name in [
        "diffusion_pytorch_model.safetensors",
        "model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "model.fp16.safetensors",
    ] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DiffusionError::Input(format!(
        "no safetensors weights in {}",
        dir.display()
    )))
}

/// A VarBuilder over a memory-mapped safetensors file, converting to `dtype` on load.
pub fn mmap_var_builder(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    // SAFETY: the file is only read; it must not be modified while the model is loaded, as
    // for any memory-mapped model file.
    Ok(unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, device)? })
}

/// Plain tensors (not candle `Var`s, which keep an autograd graph alive) made up on request
/// with the shape each layer asks for: constants where the layer's initialiser is a constant
/// (norm weights and biases), small normal values otherwise. Speed does not depend on the
/// values, so this sizes hardware without a download.
#[derive(Debug, Default)]
struct RandomWeights {
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Names handed out: a layer may ask twice for one tensor (candle's VAE attention probes).
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let new = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string());
        if new {
            self.count
                .fetch_add(s.elem_count(), std::sync::atomic::Ordering::Relaxed);
        }
        match h {
            Init::Const(v) => Tensor::full(v as f32, s, dev)?.to_dtype(dtype),
            _ => Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype),
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// A VarBuilder that hands out random plain tensors (see [`RandomWeights`]).
pub fn random_var_builder(dtype: DType, device: &Device) -> VarBuilder<'static> {
    random_var_builder_counted(dtype, device).0
}

/// [`random_var_builder`], and a counter of the parameters it has handed out.
pub fn random_var_builder_counted(
    dtype: DType,
    device: &Device,
) -> (
    VarBuilder<'static>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let backend = RandomWeights::default();
    let count = backend.count.clone();
    (
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
        count,
    )
}

/// Wraps a VAE's VarBuilder so that the encoder's log-variance channels come out as -10⁴:
/// the posterior's std is then 0 and candle's `sample()` is its mode (the mean), which is
/// what the inpainting pipeline encodes the masked image to (deterministic, as diffusers'
/// `latent_dist.mode()`). candle keeps the mean itself private.
pub fn mode_only_vae(
    inner: VarBuilder<'static>,
    config: &crate::config::VaeConfig,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let target = if config.use_quant_conv {
        "quant_conv"
    } else {
        "encoder.conv_out"
    };
    VarBuilder::from_backend(
        Box::new(ModeOnly {
            inner,
            target: target.to_string(),
            latent_channels: config.latent_channels,
        }),
        dtype,
        device.clone(),
    )
}

struct ModeOnly {
    inner: VarBuilder<'static>,
    target: String,
    latent_channels: usize,
}

impl SimpleBackend for ModeOnly {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.inner.get_with_hints_dtype(s, name, h, dtype)?;
        let c = self.latent_channels;
        if name == format!("{}.weight", self.target) {
            let logvar = t.narrow(0, c, c)?.zeros_like()?;
            Tensor::cat(&[&t.narrow(0, 0, c)?, &logvar], 0)
        } else if name == format!("{}.bias", self.target) {
            let logvar = (t.narrow(0, c, c)?.zeros_like()? - 1e4)?;
            Tensor::cat(&[&t.narrow(0, 0, c)?, &logvar], 0)
        } else {
            Ok(t)
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked_dtype(name, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}
