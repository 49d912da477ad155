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
/// with the shape each layer asks for: ones for norm scales, the hinted constant for other
/// vectors (biases), small normal values otherwise. Speed does not depend on the
/// values, so this sizes hardware without a download.
#[derive(Debug, Default)]
struct RandomWeights {
    /// Hand out one zero broadcast to the shape instead (no memory): for counting only.
    shape_only: bool,
    count: ParamCount,
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
        self.count
            .fetch_add(s.elem_count(), std::sync::atomic::Ordering::Relaxed);
        if self.shape_only {
            return Tensor::zeros((), dtype, dev)?.broadcast_as(s);
        }
        // `VarBuilder::get` (the kernels' convs and group norms) hints a zero constant
        // whatever the tensor: vectors named `weight` are norm scales (ones), other vectors
        // take the hint, matrices and kernels are random.
        match h {
            _ if s.rank() == 1 && name.ends_with("weight") => Tensor::ones(s, dtype, dev),
            Init::Const(v) if s.rank() < 2 => Tensor::full(v as f32, s, dev)?.to_dtype(dtype),
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

/// How many parameters a [`RandomWeights`] builder has handed out so far.
pub type ParamCount = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// [`random_var_builder`], and a counter of the parameters it has handed out.
pub fn random_var_builder_counted(
    dtype: DType,
    device: &Device,
) -> (VarBuilder<'static>, ParamCount) {
    counted(RandomWeights::default(), dtype, device)
}

/// A VarBuilder whose tensors are one zero broadcast to each requested shape: builds a model
/// of any size without memory, to count its parameters (it cannot run).
pub fn shape_only_var_builder_counted(
    dtype: DType,
    device: &Device,
) -> (VarBuilder<'static>, ParamCount) {
    let backend = RandomWeights {
        shape_only: true,
        ..RandomWeights::default()
    };
    counted(backend, dtype, device)
}

fn counted(
    backend: RandomWeights,
    dtype: DType,
    device: &Device,
) -> (VarBuilder<'static>, ParamCount) {
    let count = backend.count.clone();
    (
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
        count,
    )
}
