//! Stable Diffusion inpainting in candle, for outpainting.
//!
//! Knows nothing of the engine, HTTP or tasks:
//!
//! - [`manifest`]: the supported models (`models/*.toml`): hub repository, revision, files,
//!   architecture, defaults; [`manifest::ModelStore`] finds them in the hf-hub cache or a folder;
//! - [`InpaintModel`]: tokenizer(s), CLIP text encoder(s) (two for SDXL), [`Vae`] and
//!   9-channel [`UNet`] loaded from a diffusers-layout folder, and [`InpaintModel::inpaint`],
//!   the pipeline (classifier-free guidance with a negative prompt, SDXL's pooled text and
//!   size/crop conditioning, `n` variations in one batch, progress and cancel);
//! - [`unet`], [`vae`]: diffusers' models, with the hot operations in [`kernels`] (a faster
//!   CPU path than candle's generic kernels);
//! - [`scheduler`]: DDIM and Euler-ancestral behind the [`scheduler::Scheduler`] trait;
//! - [`bench`]: components built from an architecture's config with random weights, for
//!   sizing hardware without a download.
//!
//! CPU f32 by default; the `cuda`, `cudnn`, `flash-attn` and `metal` features pass through to
//! candle.

pub mod bench;
pub mod clip;
pub mod config;
mod error;
pub mod kernels;
pub mod manifest;
mod pipeline;
pub mod random;
pub mod scheduler;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;

pub use candle_core::{DType, Device, Tensor};
pub use error::{DiffusionError, Result};
pub use pipeline::{InpaintModel, InpaintParams, TextEmbeddings};
pub use scheduler::SchedulerKind;
pub use unet::{AddedConditions, UNet};
pub use vae::Vae;
