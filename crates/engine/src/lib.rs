//! The outpainting pipeline, without HTTP or argument parsing: decode → plan → backend →
//! composite → encode.
//!
//! - [`codec`]: untrusted bytes to a [`DecodedImage`] (format sniffing, decompression-bomb
//!   guard), and results back to PNG, JPEG or WebP in the source's colour type;
//! - [`backend`]: the [`Backend`] trait that generates the new pixels, and the weight-free
//!   [`InfillBackend`] (PatchMatch) that is always available;
//! - [`Engine`]: a registry of backends and the [`Limits`], with [`Engine::expand`], which runs a
//!   request and guarantees that the original's pixels come back exactly;
//! - [`seed`]: random seeds and the per-variation seeds derived from them.
//!
//! The CLI and the server both go through [`Engine`]. The server validates early with
//! [`Engine::validate`], [`Engine::decode`] and [`Engine::plan`], then queues the request.
//!
//! ```
//! use outpaint_engine::{DecodedImage, Engine, ExpandOptions, ExpandRequest};
//! use outpaint_canvas::Expansion;
//! let photo = image::RgbImage::from_fn(300, 300, |x, y| image::Rgb([x as u8, y as u8, 60]));
//! let engine = Engine::default();
//! let expanded = engine.expand(&ExpandRequest {
//!     image: DecodedImage::from_rgb(photo),
//!     expansion: Expansion::uniform("right".parse()?, 1.5)?,
//!     options: ExpandOptions { seed: Some(7), ..ExpandOptions::default() },
//! })?;
//! assert_eq!((expanded.plan.width, expanded.plan.height), (450, 300));
//! assert_eq!(expanded.images.len(), 1); // one PNG
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backend;
pub mod codec;
#[cfg(feature = "diffusion")]
pub mod diffusion;
mod engine;
mod error;
pub mod seed;
pub mod watermark;

pub use backend::{Backend, BackendError, EdgeBackend, GenerationJob, InfillBackend, Progress};
pub use codec::{DecodedImage, OutputFormat};
#[cfg(feature = "diffusion")]
pub use diffusion::{DiffusionBackend, DiffusionSettings};
pub use engine::{
    Engine, ExpandOptions, ExpandRequest, Expanded, JobControl, MAX_PROMPT_CHARS, MAX_STEPS,
    MAX_VARIATIONS, Timings,
};
pub use error::{EngineError, ErrorKind};
pub use outpaint_canvas::Limits;
