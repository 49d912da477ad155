//! [`DiffusionBackend`]: Stable Diffusion inpainting (`outpaint-diffusion`) as a [`Backend`].
//!
//! The whole canvas is generated at a working resolution fitted to the model's pixel budget
//! (its native resolution squared, aspect kept, sides multiples of 8), then resized back; the
//! engine then matches colour, blends the seam and pastes the original exactly
//! (`keeps_original() == false`). Expansions larger than the budget are therefore generated
//! at lower detail than the original, never tiled or cropped: the composition stays coherent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use image::imageops::{FilterType, resize};
use image::{GrayImage, Luma, RgbImage};
use outpaint_canvas::Rect;
use outpaint_diffusion::{
    DType, Device, DiffusionError, InpaintModel, InpaintParams, SchedulerKind, Tensor,
    manifest::Manifest,
};
use outpaint_infill::{InfillParams, inpaint};

use crate::backend::{Backend, BackendError, GenerationJob};

/// How a [`DiffusionBackend`] generates, where the request does not say.
#[derive(Debug, Clone)]
pub struct DiffusionSettings {
    /// Pixels per side of the model's native square; the working canvas has about its square.
    pub resolution: u32,
    /// Denoising steps when the request gives none.
    pub steps: u32,
    /// Guidance scale when the request gives none.
    pub guidance_scale: f32,
    /// The scheduler.
    pub scheduler: SchedulerKind,
    /// Fraction of the schedule run, in (0, 1]. Below 1 the denoising starts from the
    /// pre-filled canvas noised part-way, so the pre-fill guides the composition.
    pub strength: f64,
    /// Most variations denoised in one batch (memory grows with it).
    pub max_batch: usize,
}

impl DiffusionSettings {
    /// The defaults a manifest gives.
    pub fn from_manifest(m: &Manifest) -> Self {
        DiffusionSettings {
            resolution: m.resolution,
            steps: m.defaults.steps,
            guidance_scale: m.defaults.guidance_scale,
            scheduler: m.defaults.scheduler,
            strength: 1.0,
            max_batch: 4,
        }
    }
}

/// A loaded inpainting model generating the new area of an expansion.
pub struct DiffusionBackend {
    name: String,
    // The pipeline is not re-entrant on one set of weights in any useful way (each run uses
    // all cores): one generation at a time.
    model: Mutex<InpaintModel>,
    settings: DiffusionSettings,
}

impl std::fmt::Debug for DiffusionBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffusionBackend")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish()
    }
}

/// The device and precision models run with: CPU f32, or the first CUDA/Metal device in f16
/// when built with those features.
pub fn default_device() -> (Device, DType) {
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        return (d, DType::F16);
    }
    #[cfg(feature = "metal")]
    if let Ok(d) = Device::new_metal(0) {
        return (d, DType::F16);
    }
    (Device::Cpu, DType::F32)
}

impl DiffusionBackend {
    /// A backend called `name` over a loaded model.
    pub fn new(name: impl Into<String>, model: InpaintModel, settings: DiffusionSettings) -> Self {
        DiffusionBackend {
            name: name.into(),
            model: Mutex::new(model),
            settings,
        }
    }

    /// Loads the diffusers-layout folder `dir` on the default device.
    pub fn load(
        name: impl Into<String>,
        dir: &std::path::Path,
        settings: DiffusionSettings,
    ) -> Result<Arc<Self>, DiffusionError> {
        let (device, dtype) = default_device();
        let model = InpaintModel::load(dir, &device, dtype)?;
        Ok(Arc::new(DiffusionBackend::new(name, model, settings)))
    }

    /// The settings.
    pub fn settings(&self) -> &DiffusionSettings {
        &self.settings
    }
}

/// The working size for a `width`×`height` canvas: about `budget` pixels, aspect kept, sides
/// multiples of `multiple` (at least one multiple).
pub fn working_size(width: u32, height: u32, budget: u64, multiple: u32) -> (u32, u32) {
    let scale = (budget as f64 / (f64::from(width) * f64::from(height))).sqrt();
    let m = f64::from(multiple);
    let fit = |side: u32| (((f64::from(side) * scale) / m).round().max(1.0) * m) as u32;
    let (w, h) = (fit(width), fit(height));
    // A very elongated canvas: the short side stops at one multiple, the long one keeps the
    // total within the budget.
    let within =
        |short: u32| (((budget as f64 / f64::from(short)) / m).floor().max(1.0) * m) as u32;
    if u64::from(w) * u64::from(h) > budget + budget / 8 {
        if w < h {
            return (w, within(w).min(h));
        }
        return (within(h).min(w), h);
    }
    (w, h)
}

/// The original's box scaled to the working size, shrunk to whole pixels (a working pixel
/// only partly on the original is generated).
fn scaled_box(b: Rect, sx: f64, sy: f64) -> (u32, u32, u32, u32) {
    let x0 = (f64::from(b.x) * sx).ceil() as u32;
    let y0 = (f64::from(b.y) * sy).ceil() as u32;
    let x1 = (f64::from(b.right()) * sx).floor() as u32;
    let y1 = (f64::from(b.bottom()) * sy).floor() as u32;
    (x0, y0, x1.max(x0), y1.max(y0))
}

/// Distance in pixels (Chebyshev) from (x, y) to the box; 0 inside.
fn box_distance(x: u32, y: u32, (x0, y0, x1, y1): (u32, u32, u32, u32)) -> u32 {
    let dx = if x < x0 {
        x0 - x
    } else {
        (x + 1).saturating_sub(x1)
    };
    let dy = if y < y0 {
        y0 - y
    } else {
        (y + 1).saturating_sub(y1)
    };
    dx.max(dy)
}

fn to_tensor(image: &RgbImage) -> Result<Tensor, DiffusionError> {
    let (w, h) = image.dimensions();
    let data: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    Ok(
        Tensor::from_vec(data, (1, h as usize, w as usize, 3), &Device::Cpu)?
            .permute((0, 3, 1, 2))?,
    )
}

fn mask_tensor(mask: &GrayImage) -> Result<Tensor, DiffusionError> {
    let (w, h) = mask.dimensions();
    let data: Vec<f32> = mask
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    Ok(Tensor::from_vec(
        data,
        (1, 1, h as usize, w as usize),
        &Device::Cpu,
    )?)
}

fn to_image(t: &Tensor) -> Result<RgbImage, DiffusionError> {
    let (_, h, w) = t.dims3()?;
    let data: Vec<u8> = t
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(w as u32, h as u32, data)
        .ok_or_else(|| DiffusionError::Input("decoded image has the wrong size".into()))
}

fn failed(e: DiffusionError) -> BackendError {
    match e {
        DiffusionError::Cancelled => BackendError::Cancelled,
        e => BackendError::Failed(e.to_string()),
    }
}

impl Backend for DiffusionBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn uses_prompt(&self) -> bool {
        true
    }

    fn generate(&self, job: &GenerationJob<'_>) -> Result<Vec<RgbImage>, BackendError> {
        let model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        let plan = job.plan;
        let s = &self.settings;
        let multiple = model.size_multiple() as u32;
        let budget = u64::from(s.resolution) * u64::from(s.resolution);
        let (ww, wh) = working_size(plan.width, plan.height, budget, multiple);
        let sx = f64::from(ww) / f64::from(plan.width);
        let sy = f64::from(wh) / f64::from(plan.height);
        let bx = scaled_box(plan.original, sx, sy);

        // The canvas and the mask at the working size; the masked area pre-filled by PatchMatch
        // so that it continues the original (the start image when strength < 1, and what the
        // generated side fades from next to the original).
        let small = resize(job.canvas, ww, wh, FilterType::CatmullRom);
        let mask = GrayImage::from_fn(ww, wh, |x, y| {
            Luma([if box_distance(x, y, bx) == 0 { 0 } else { 255 }])
        });
        let seed = job.seeds.first().copied().unwrap_or(0);
        let prefilled = inpaint(
            &small,
            &mask,
            &InfillParams {
                seed,
                ..InfillParams::default()
            },
        )?;

        let steps = job.steps.unwrap_or(s.steps) as usize;
        let guidance = f64::from(job.guidance_scale.unwrap_or(s.guidance_scale));
        let image = to_tensor(&prefilled).map_err(failed)?;
        let mask_t = mask_tensor(&mask).map_err(failed)?;
        let n = job.seeds.len();
        // Variations already generated (progress counts steps × variations).
        let mut done_variations = 0usize;
        let mut out = Vec::with_capacity(n);
        // Feather: the generated side fades in from the pre-fill over this many working pixels.
        let feather = (ww.min(wh) / 64).max(2);
        for seeds in job.seeds.chunks(s.max_batch.max(1)) {
            let params = InpaintParams {
                prompt: job.prompt.unwrap_or(""),
                negative_prompt: job.negative_prompt.unwrap_or(""),
                steps,
                guidance_scale: guidance,
                scheduler: s.scheduler,
                seeds,
                strength: s.strength,
                initial_latents: None,
                step_noise: None,
            };
            let k = seeds.len();
            let cancel: &AtomicBool = job.cancel;
            let images = model
                .inpaint(
                    &image,
                    &mask_t,
                    &params,
                    &mut |d, run_steps| {
                        let completed = (done_variations * run_steps + d * k) as u64;
                        let total = (n * run_steps) as u64;
                        job.report(
                            u32::try_from(completed).unwrap_or(u32::MAX),
                            u32::try_from(total).unwrap_or(u32::MAX),
                        )
                    },
                    cancel,
                )
                .map_err(failed)?;
            done_variations += k;
            for i in 0..k {
                let mut generated =
                    to_image(&images.get(i).map_err(|e| failed(e.into()))?).map_err(failed)?;
                for (x, y, px) in generated.enumerate_pixels_mut() {
                    let d = box_distance(x, y, bx);
                    if d > 0 && d <= feather {
                        let f = d as f32 / (feather + 1) as f32;
                        let p = prefilled.get_pixel(x, y);
                        for c in 0..3 {
                            px[c] =
                                (f32::from(px[c]) * f + f32::from(p[c]) * (1.0 - f)).round() as u8;
                        }
                    }
                }
                out.push(resize(
                    &generated,
                    plan.width,
                    plan.height,
                    FilterType::CatmullRom,
                ));
            }
            if job.cancel.load(Ordering::Relaxed) {
                return Err(BackendError::Cancelled);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_size_keeps_aspect_and_budget() {
        assert_eq!(working_size(1000, 1000, 512 * 512, 8), (512, 512));
        let (w, h) = working_size(1950, 1000, 512 * 512, 8);
        assert!(w % 8 == 0 && h % 8 == 0);
        assert!((f64::from(w) / f64::from(h) - 1.95).abs() < 0.05, "{w}x{h}");
        assert!((u64::from(w) * u64::from(h)).abs_diff(512 * 512) < 512 * 16);
        assert_eq!(working_size(100, 100, 512 * 512, 8), (512, 512)); // small canvases go up
        // A side at its minimum: the other keeps within the budget.
        let (w, h) = working_size(5000, 10, 512 * 512, 64);
        assert_eq!(h, 64);
        assert!(u64::from(w) * 64 <= 512 * 512 && w % 64 == 0, "{w}");
    }

    #[test]
    fn box_distance_is_zero_inside() {
        let b = (10, 10, 20, 20);
        assert_eq!(box_distance(10, 10, b), 0);
        assert_eq!(box_distance(19, 19, b), 0);
        assert_eq!(box_distance(20, 15, b), 1);
        assert_eq!(box_distance(9, 15, b), 1);
        assert_eq!(box_distance(5, 25, b), 6);
    }
}

#[cfg(test)]
mod engine_tests {
    use super::*;
    use crate::{
        DecodedImage, Engine, EngineError, ExpandOptions, ExpandRequest, JobControl, Progress,
    };
    use outpaint_canvas::Expansion;
    use std::path::Path;

    fn tiny() -> Arc<DiffusionBackend> {
        tiny_of("tiny-sd-inpaint")
    }

    fn tiny_of(fixture: &str) -> Arc<DiffusionBackend> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../diffusion/tests/fixtures")
            .join(fixture);
        let settings = DiffusionSettings {
            resolution: 32,
            steps: 3,
            guidance_scale: 5.0,
            scheduler: SchedulerKind::EulerAncestral,
            strength: 0.9,
            max_batch: 2,
        };
        DiffusionBackend::load("tiny", &dir, settings).unwrap()
    }

    fn request(n: u32) -> ExpandRequest {
        let photo = RgbImage::from_fn(300, 320, |x, y| image::Rgb([x as u8, y as u8, 90]));
        ExpandRequest {
            image: DecodedImage::from_rgb(photo),
            expansion: Expansion::uniform("left".parse().unwrap(), 1.4).unwrap(),
            options: ExpandOptions {
                n,
                seed: Some(5),
                prompt: Some("a wall".into()),
                backend: Some("tiny".into()),
                ..ExpandOptions::default()
            },
        }
    }

    #[test]
    fn progress_counts_steps_of_every_variation_across_batches() {
        let mut engine = Engine::default();
        engine.register(tiny());
        let reports = Mutex::new(Vec::new());
        let progress = |p: Progress| reports.lock().unwrap().push((p.completed, p.total));
        let cancel = AtomicBool::new(false);
        let out = engine
            .expand_with(
                &request(3),
                &JobControl {
                    progress: &progress,
                    cancel: &cancel,
                },
            )
            .unwrap();
        assert_eq!(out.images.len(), 3);
        // strength 0.9 of 3 steps runs 2; variations in batches of 2 then 1.
        let reports = reports.into_inner().unwrap();
        assert_eq!(reports.last(), Some(&(6, 6)), "{reports:?}");
        assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0), "{reports:?}");
    }

    /// The SDXL-style fixture (two text encoders, size conditioning) runs through the same
    /// backend.
    #[test]
    fn sdxl_models_expand() {
        let mut engine = Engine::default();
        engine.register(tiny_of("tiny-sdxl-inpaint"));
        let cancel = AtomicBool::new(false);
        let out = engine
            .expand_with(
                &request(2),
                &JobControl {
                    progress: &|_| {},
                    cancel: &cancel,
                },
            )
            .unwrap();
        assert_eq!(out.images.len(), 2);
    }

    #[test]
    fn cancelled_jobs_stop_with_cancelled() {
        let mut engine = Engine::default();
        engine.register(tiny());
        let cancel = AtomicBool::new(true);
        let result = engine.expand_with(
            &request(1),
            &JobControl {
                progress: &|_| {},
                cancel: &cancel,
            },
        );
        assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
    }
}
