//! What generates the new pixels: the [`Backend`] trait and the weight-free [`InfillBackend`].
//!
//! A backend is plain synchronous code, called from a worker thread (the CLI's rayon pool, or
//! the server's dedicated worker), in the style of TEI's compute backends. It gets the canvas
//! with the original already placed, the mask, the prompts and one seed per variation, and
//! returns one canvas-size image per seed. It does not need to keep the original's box exact:
//! the engine pastes the original back afterwards in every case.

use std::sync::atomic::{AtomicBool, Ordering};

use image::{GrayImage, RgbImage};
use outpaint_canvas::CanvasPlan;
use outpaint_infill::{InfillError, InfillParams, inpaint};
use thiserror::Error;

/// Why a backend could not generate.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// Occurs when the PatchMatch completion fails.
    #[error(transparent)]
    Infill(#[from] InfillError),
    /// Occurs when the job's cancel flag was raised while generating.
    #[error("generation was cancelled")]
    Cancelled,
    /// Occurs when any other backend fails; the message says why.
    #[error("{0}")]
    Failed(String),
}

/// How far a generation has come, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Units of work done so far.
    pub completed: u32,
    /// Units of work in the whole job. A unit is the backend's choice: one variation for
    /// infill, one denoising step of one variation for diffusion.
    pub total: u32,
}

/// Everything a backend needs for one expansion.
pub struct GenerationJob<'a> {
    /// The canvas with the original placed in its box; black where pixels are to be generated.
    pub canvas: &'a RgbImage,
    /// The canvas geometry: its size and the original's box.
    pub plan: &'a CanvasPlan,
    /// 255 where pixels are to be generated, 0 on the original (`plan.mask()`).
    pub mask: &'a GrayImage,
    /// What the new area should show. Backends without text conditioning ignore it.
    pub prompt: Option<&'a str>,
    /// What the new area should not show. Backends without text conditioning ignore it.
    pub negative_prompt: Option<&'a str>,
    /// One seed per variation; the backend returns one image per seed, in the same order.
    pub seeds: &'a [u64],
    /// Denoising steps, for backends that denoise; `None` means the backend's default.
    pub steps: Option<u32>,
    /// Classifier-free guidance scale, for backends that use it; `None` means the default.
    pub guidance_scale: Option<f32>,
    /// Called as work completes. Must be cheap: it runs on the generating thread.
    pub progress: &'a (dyn Fn(Progress) + Send + Sync),
    /// Raised by the job's owner to ask for an early stop; backends check it between units of
    /// work and return [`BackendError::Cancelled`].
    pub cancel: &'a AtomicBool,
}

impl GenerationJob<'_> {
    /// Whether the job's owner asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Reports progress to the job's owner.
    pub fn report(&self, completed: u32, total: u32) {
        (self.progress)(Progress { completed, total });
    }
}

/// A way of generating the new pixels of an expansion.
///
/// Object safe: the engine keeps backends as `Arc<dyn Backend>` in a registry by name.
pub trait Backend: Send + Sync {
    /// The name requests use to choose this backend (`infill`, later a model name).
    fn name(&self) -> &str;

    /// Whether the prompts influence the result. The engine notes in its log when a prompt is
    /// given to a backend that ignores it.
    fn uses_prompt(&self) -> bool {
        false
    }

    /// Whether the generated images already hold the original's exact pixels in its box.
    ///
    /// When `false` (the default: the safe assumption for a generator that redraws the whole
    /// canvas, such as diffusion through a VAE), the engine matches the colour of the generated
    /// area to the original and blends the seam before pasting the original back. Both
    /// corrections are no-ops when the box is exact, so `true` only saves time.
    fn keeps_original(&self) -> bool {
        false
    }

    /// Generates one canvas-size image per seed in `job.seeds`.
    fn generate(&self, job: &GenerationJob<'_>) -> Result<Vec<RgbImage>, BackendError>;
}

/// The weight-free default backend: PatchMatch completion from `outpaint-infill`.
///
/// Always available, needs no download, ignores prompts. Each variation runs the completion
/// with its own seed, so variations differ and the same seed gives the same pixels.
#[derive(Debug, Clone, Default)]
pub struct InfillBackend {
    params: InfillParams,
}

impl InfillBackend {
    /// The name requests use for this backend.
    pub const NAME: &'static str = "infill";

    /// A backend with tuned completion parameters; the seed in `params` is replaced by each
    /// variation's seed.
    pub fn new(params: InfillParams) -> Self {
        InfillBackend { params }
    }
}

impl Backend for InfillBackend {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn keeps_original(&self) -> bool {
        true
    }

    fn generate(&self, job: &GenerationJob<'_>) -> Result<Vec<RgbImage>, BackendError> {
        let total = u32::try_from(job.seeds.len()).unwrap_or(u32::MAX);
        // Variations run one after the other: the completion is parallel inside, and running
        // them side by side would multiply peak memory by the number of variations.
        let mut images = Vec::with_capacity(job.seeds.len());
        for (done, &seed) in (1..).zip(job.seeds) {
            if job.is_cancelled() {
                return Err(BackendError::Cancelled);
            }
            let params = InfillParams {
                seed,
                ..self.params.clone()
            };
            images.push(inpaint(job.canvas, job.mask, &params)?);
            job.report(done, total);
        }
        Ok(images)
    }
}

/// A trivial, very fast backend: every new pixel repeats the nearest pixel of the original's
/// border (OpenCV's `BORDER_REPLICATE`), giving streaks straight outwards.
///
/// Not meant for good-looking results: it is the floor to compare real backends against, and
/// the backend for load tests of the server, where the generation must cost next to nothing.
/// Ignores prompts and seeds (every variation is the same).
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeBackend;

impl EdgeBackend {
    /// The name requests use for this backend.
    pub const NAME: &'static str = "edge";
}

impl Backend for EdgeBackend {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn keeps_original(&self) -> bool {
        true
    }

    fn generate(&self, job: &GenerationJob<'_>) -> Result<Vec<RgbImage>, BackendError> {
        let b = job.plan.original;
        let canvas = RgbImage::from_fn(job.plan.width, job.plan.height, |x, y| {
            let sx = x.clamp(b.x, b.right() - 1);
            let sy = y.clamp(b.y, b.bottom() - 1);
            *job.canvas.get_pixel(sx, sy)
        });
        let total = u32::try_from(job.seeds.len()).unwrap_or(u32::MAX);
        job.report(total, total);
        Ok(vec![canvas; job.seeds.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use outpaint_canvas::{Expansion, Limits, composite, plan};
    use std::sync::Mutex;

    fn job_parts() -> (RgbImage, CanvasPlan, GrayImage) {
        let original = RgbImage::from_fn(300, 300, |x, y| {
            Rgb([
                (x * 13 % 256) as u8,
                (y * 7 % 256) as u8,
                ((x * y) % 251) as u8,
            ])
        });
        let e = Expansion::uniform("right".parse().unwrap(), 1.5).unwrap();
        let p = plan(300, 300, &e, &Limits::default()).unwrap();
        (composite::place(&original, &p), p, p.mask())
    }

    #[test]
    fn infill_returns_one_image_per_seed_and_reports_progress() {
        let (canvas, p, mask) = job_parts();
        let reports = Mutex::new(Vec::new());
        let progress = |pr: Progress| reports.lock().unwrap().push((pr.completed, pr.total));
        let cancel = AtomicBool::new(false);
        let job = GenerationJob {
            canvas: &canvas,
            plan: &p,
            mask: &mask,
            prompt: Some("ignored"),
            negative_prompt: None,
            seeds: &[1, 2],
            steps: None,
            guidance_scale: None,
            progress: &progress,
            cancel: &cancel,
        };
        let images = InfillBackend::default().generate(&job).unwrap();
        assert_eq!(images.len(), 2);
        assert!(images.iter().all(|i| i.dimensions() == (p.width, p.height)));
        assert_eq!(*reports.lock().unwrap(), vec![(1, 2), (2, 2)]);
    }

    #[test]
    fn infill_stops_when_cancelled() {
        let (canvas, p, mask) = job_parts();
        let cancel = AtomicBool::new(true);
        let job = GenerationJob {
            canvas: &canvas,
            plan: &p,
            mask: &mask,
            prompt: None,
            negative_prompt: None,
            seeds: &[1],
            steps: None,
            guidance_scale: None,
            progress: &|_| {},
            cancel: &cancel,
        };
        assert!(matches!(
            InfillBackend::default().generate(&job),
            Err(BackendError::Cancelled)
        ));
    }

    #[test]
    fn edge_repeats_the_nearest_border_pixel() {
        let (canvas, p, mask) = job_parts();
        let cancel = AtomicBool::new(false);
        let job = GenerationJob {
            canvas: &canvas,
            plan: &p,
            mask: &mask,
            prompt: None,
            negative_prompt: None,
            seeds: &[1, 2],
            steps: None,
            guidance_scale: None,
            progress: &|_| {},
            cancel: &cancel,
        };
        let images = EdgeBackend.generate(&job).unwrap();
        assert_eq!(images.len(), 2);
        let last_column = p.original.right() - 1;
        for y in [0, 150, 299] {
            for x in [last_column + 1, p.width - 1] {
                assert_eq!(images[0].get_pixel(x, y), canvas.get_pixel(last_column, y));
            }
        }
    }
}
