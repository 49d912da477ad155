//! The [`Engine`]: a registry of backends plus the limits, and the `expand` that runs a request
//! through plan → generate → composite → encode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use image::RgbImage;
use outpaint_canvas::{CanvasPlan, Expansion, Limits, composite};
use rayon::prelude::*;
use tracing::{debug, debug_span, info, info_span};

use crate::backend::{Backend, BackendError, EdgeBackend, GenerationJob, InfillBackend, Progress};
use crate::codec::{self, DecodedImage, OutputFormat};
use crate::{EngineError, seed, watermark};

/// Most variations one request may ask for (SPEC: `n` in 1..9).
pub const MAX_VARIATIONS: u32 = 9;

/// Longest accepted prompt and negative prompt, in characters (Unicode scalar values).
pub const MAX_PROMPT_CHARS: usize = 2500;

/// Most denoising steps a request may ask for.
pub const MAX_STEPS: u32 = 500;

/// How an expansion should be generated and delivered; everything but the image and geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpandOptions {
    /// Number of variations, 1..=[`MAX_VARIATIONS`].
    pub n: u32,
    /// Seed of the request; `None` picks a random one (reported in [`Expanded::seed`]).
    pub seed: Option<u64>,
    /// What the new area should show, at most [`MAX_PROMPT_CHARS`] characters.
    pub prompt: Option<String>,
    /// What the new area should not show, at most [`MAX_PROMPT_CHARS`] characters.
    pub negative_prompt: Option<String>,
    /// Which backend generates; `None` is the engine's default (`infill`).
    pub backend: Option<String>,
    /// Encoding of the results.
    pub output_format: OutputFormat,
    /// Denoising steps, for backends that denoise; 1..=[`MAX_STEPS`].
    pub steps: Option<u32>,
    /// Guidance scale, for backends that use it; finite and not negative.
    pub guidance_scale: Option<f32>,
    /// Also make a visibly watermarked copy of each result ([`Expanded::watermarked`]).
    pub watermark: bool,
}

impl Default for ExpandOptions {
    fn default() -> Self {
        ExpandOptions {
            n: 1,
            seed: None,
            prompt: None,
            negative_prompt: None,
            backend: None,
            output_format: OutputFormat::default(),
            steps: None,
            guidance_scale: None,
            watermark: false,
        }
    }
}

/// One expansion to run: the decoded image, the geometry and the options.
#[derive(Debug, Clone)]
pub struct ExpandRequest {
    /// The image, from [`Engine::decode`] (or [`DecodedImage::from_rgb`]).
    pub image: DecodedImage,
    /// Which sides grow and by how much.
    pub expansion: Expansion,
    /// Everything else.
    pub options: ExpandOptions,
}

/// The result of an expansion: encoded images and what was done to make them.
#[derive(Clone)]
pub struct Expanded {
    /// One encoded image per variation, in order.
    pub images: Vec<Vec<u8>>,
    /// With [`ExpandOptions::watermark`], a watermarked copy of each image; else empty.
    pub watermarked: Vec<Vec<u8>>,
    /// Their format.
    pub format: OutputFormat,
    /// The canvas and the original's box in it.
    pub plan: CanvasPlan,
    /// The request's seed: the caller's, or the random one picked.
    pub seed: u64,
    /// The seed each variation was generated with (derived from `seed`).
    pub seeds: Vec<u64>,
    /// The backend that generated.
    pub backend: String,
    /// Time spent per stage.
    pub timings: Timings,
}

impl std::fmt::Debug for Expanded {
    /// The images' sizes instead of their bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<usize> = self.images.iter().map(Vec::len).collect();
        let watermarked: Vec<usize> = self.watermarked.iter().map(Vec::len).collect();
        f.debug_struct("Expanded")
            .field("image_bytes", &sizes)
            .field("watermarked_bytes", &watermarked)
            .field("format", &self.format)
            .field("plan", &self.plan)
            .field("seed", &self.seed)
            .field("seeds", &self.seeds)
            .field("backend", &self.backend)
            .field("timings", &self.timings)
            .finish()
    }
}

/// Wall-clock time per stage of an expansion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Planning the canvas and placing the original.
    pub plan: Duration,
    /// The backend's generation, all variations.
    pub generate: Duration,
    /// Colour match, seam blend (backends that redraw the box) and pasting the original back.
    pub composite: Duration,
    /// Encoding all variations.
    pub encode: Duration,
}

impl Timings {
    /// The sum of the stages.
    pub fn total(&self) -> Duration {
        self.plan + self.generate + self.composite + self.encode
    }
}

/// Progress reports and cancellation for a running expansion.
#[derive(Clone, Copy)]
pub struct JobControl<'a> {
    /// Called as the backend completes work.
    pub progress: &'a (dyn Fn(Progress) + Send + Sync),
    /// Raise to stop the job early; it then fails with [`EngineError::Cancelled`].
    pub cancel: &'a AtomicBool,
}

static NEVER_CANCELLED: AtomicBool = AtomicBool::new(false);

impl Default for JobControl<'static> {
    /// No progress reports, never cancelled.
    fn default() -> Self {
        JobControl {
            progress: &|_| {},
            cancel: &NEVER_CANCELLED,
        }
    }
}

/// Expands images. Cheap to share: wrap it in an `Arc` and call it from any thread.
pub struct Engine {
    backends: BTreeMap<String, Arc<dyn Backend>>,
    default_backend: String,
    limits: Limits,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(Limits::default())
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backends", &self.backends.keys().collect::<Vec<_>>())
            .field("default_backend", &self.default_backend)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Engine {
    /// An engine with the given limits and the weight-free backends: `infill`, the default, and
    /// `edge`.
    pub fn new(limits: Limits) -> Self {
        let mut engine = Engine {
            backends: BTreeMap::new(),
            default_backend: InfillBackend::NAME.to_string(),
            limits,
        };
        engine.register(Arc::new(InfillBackend::default()));
        engine.register(Arc::new(EdgeBackend));
        engine
    }

    /// Adds a backend, replacing any registered under the same name.
    pub fn register(&mut self, backend: Arc<dyn Backend>) {
        self.backends.insert(backend.name().to_string(), backend);
    }

    /// Makes `name` the backend used when a request names none.
    pub fn set_default_backend(&mut self, name: &str) -> Result<(), EngineError> {
        self.backend(Some(name))?;
        self.default_backend = name.to_string();
        Ok(())
    }

    /// The backend a request would use: `name`, or the default when `None`.
    pub fn backend(&self, name: Option<&str>) -> Result<&Arc<dyn Backend>, EngineError> {
        let name = name.unwrap_or(&self.default_backend);
        self.backends
            .get(name)
            .ok_or_else(|| EngineError::UnknownBackend {
                name: name.to_string(),
                available: self.backend_names().map(str::to_string).collect(),
            })
    }

    /// Names of the registered backends, sorted.
    pub fn backend_names(&self) -> impl Iterator<Item = &str> {
        self.backends.keys().map(String::as_str)
    }

    /// The name of the backend used when a request names none.
    pub fn default_backend(&self) -> &str {
        &self.default_backend
    }

    /// The limits every image and canvas is checked against.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes untrusted image bytes within the engine's limits (see [`codec::decode`]).
    ///
    /// CPU-bound: async callers should run it on a blocking thread.
    pub fn decode(&self, bytes: &[u8]) -> Result<DecodedImage, EngineError> {
        codec::decode(bytes, &self.limits)
    }

    /// Checks an image against the limits and plans its canvas; cheap, for early validation.
    pub fn plan(
        &self,
        image: &DecodedImage,
        expansion: &Expansion,
    ) -> Result<CanvasPlan, EngineError> {
        Ok(outpaint_canvas::plan(
            image.width(),
            image.height(),
            expansion,
            &self.limits,
        )?)
    }

    /// Checks the options alone: ranges, prompt lengths, and that the backend exists.
    pub fn validate(&self, options: &ExpandOptions) -> Result<(), EngineError> {
        if !(1..=MAX_VARIATIONS).contains(&options.n) {
            return Err(EngineError::InvalidParameter {
                name: "n",
                rule: format!("in 1..={MAX_VARIATIONS}"),
                value: options.n.to_string(),
            });
        }
        for (name, text) in [
            ("prompt", &options.prompt),
            ("negative_prompt", &options.negative_prompt),
        ] {
            let chars = text.as_deref().map_or(0, |t| t.chars().count());
            if chars > MAX_PROMPT_CHARS {
                return Err(EngineError::InvalidParameter {
                    name,
                    rule: format!("at most {MAX_PROMPT_CHARS} characters long"),
                    value: format!("{chars} characters"),
                });
            }
        }
        if let Some(steps) = options.steps {
            if !(1..=MAX_STEPS).contains(&steps) {
                return Err(EngineError::InvalidParameter {
                    name: "steps",
                    rule: format!("in 1..={MAX_STEPS}"),
                    value: steps.to_string(),
                });
            }
        }
        if let Some(scale) = options.guidance_scale {
            if !(scale.is_finite() && scale >= 0.0) {
                return Err(EngineError::InvalidParameter {
                    name: "guidance_scale",
                    rule: "a finite number, at least 0".to_string(),
                    value: scale.to_string(),
                });
            }
        }
        self.backend(options.backend.as_deref())?;
        Ok(())
    }

    /// Expands an image: plan, generate every variation, paste the original back exactly,
    /// encode. See [`Engine::expand_with`] for progress and cancellation.
    ///
    /// CPU-bound and possibly long: async callers should run it on a blocking thread.
    pub fn expand(&self, request: &ExpandRequest) -> Result<Expanded, EngineError> {
        self.expand_with(request, &JobControl::default())
    }

    /// [`Engine::expand`] with progress reports and a cancel flag.
    pub fn expand_with(
        &self,
        request: &ExpandRequest,
        control: &JobControl<'_>,
    ) -> Result<Expanded, EngineError> {
        let options = &request.options;
        self.validate(options)?;
        let backend = self.backend(options.backend.as_deref())?;
        let source = &request.image;
        let span = info_span!(
            "expand",
            backend = backend.name(),
            n = options.n,
            width = source.width(),
            height = source.height(),
        );
        let _entered = span.enter();

        let started = Instant::now();
        let (plan, canvas, mask) = debug_span!("plan").in_scope(|| {
            let plan = self.plan(source, &request.expansion)?;
            let canvas = composite::place(&source.rgb, &plan);
            Ok::<_, EngineError>((plan, canvas, plan.mask()))
        })?;
        let seed = options.seed.unwrap_or_else(seed::random_seed);
        let seeds = seed::variation_seeds(seed, options.n);
        if options.prompt.is_some() && !backend.uses_prompt() {
            info!(
                prompt = options.prompt.as_deref(),
                "prompt recorded; the {} backend ignores it",
                backend.name()
            );
        }
        let plan_time = started.elapsed();

        let started = Instant::now();
        let job = GenerationJob {
            canvas: &canvas,
            plan: &plan,
            mask: &mask,
            prompt: options.prompt.as_deref(),
            negative_prompt: options.negative_prompt.as_deref(),
            seeds: &seeds,
            steps: options.steps,
            guidance_scale: options.guidance_scale,
            progress: control.progress,
            cancel: control.cancel,
        };
        let generated = debug_span!("generate", seed)
            .in_scope(|| backend.generate(&job))
            .map_err(|source| match source {
                BackendError::Cancelled => EngineError::Cancelled,
                source => EngineError::Backend {
                    backend: backend.name().to_string(),
                    source,
                },
            })?;
        drop((canvas, mask));
        check_output(backend.name(), &generated, &plan, seeds.len())?;
        let generate_time = started.elapsed();

        let started = Instant::now();
        let keeps_original = backend.keeps_original();
        let finished: Vec<_> = debug_span!("composite").in_scope(|| {
            generated
                .into_par_iter()
                .map(|mut image| {
                    if !keeps_original {
                        composite::match_colour(&mut image, &source.rgb, &plan);
                        composite::blend_seam(&mut image, &source.rgb, &plan, seam_band(&plan));
                    }
                    // The guarantee of the whole product: whatever the backend did, the
                    // original's box holds the original's pixels.
                    composite::paste_original(&mut image, &source.rgb, &plan);
                    let marked = options.watermark.then(|| {
                        let mut marked = image.clone();
                        watermark::apply(&mut marked);
                        codec::output_image(marked, source, &plan)
                    });
                    (codec::output_image(image, source, &plan), marked)
                })
                .collect()
        });
        let composite_time = started.elapsed();

        let started = Instant::now();
        let encode = |image: &image::DynamicImage, variation_seed: u64| {
            let mut bytes = codec::encode_with_icc_profile(
                image,
                options.output_format,
                source.icc_profile.as_deref(),
            )?;
            if options.output_format == OutputFormat::Png {
                let text = parameters(options, backend.name(), &plan, variation_seed);
                codec::add_png_text(&mut bytes, "parameters", &text);
            }
            Ok::<_, EngineError>(bytes)
        };
        let encoded =
            debug_span!("encode", format = options.output_format.name()).in_scope(|| {
                finished
                    .par_iter()
                    .zip(&seeds)
                    .map(|((image, marked), &variation_seed)| {
                        let marked = marked
                            .as_ref()
                            .map(|marked| encode(marked, variation_seed))
                            .transpose()?;
                        Ok((encode(image, variation_seed)?, marked))
                    })
                    .collect::<Result<Vec<_>, EngineError>>()
            })?;
        let (images, watermarked): (Vec<_>, Vec<_>) = encoded.into_iter().unzip();
        let watermarked = watermarked.into_iter().flatten().collect();
        let timings = Timings {
            plan: plan_time,
            generate: generate_time,
            composite: composite_time,
            encode: started.elapsed(),
        };
        debug!(?timings, seed, "expanded");
        Ok(Expanded {
            images,
            watermarked,
            format: options.output_format,
            plan,
            seed,
            seeds,
            backend: backend.name().to_string(),
            timings,
        })
    }
}

/// How a result was made, in the A1111 "parameters" layout that image tools already read: the
/// prompt, then `Negative prompt: …`, then one line of settings. Stored in PNG results, so that
/// the prompt given to a backend that ignores it is still recorded, and any result can be made
/// again from its file.
fn parameters(options: &ExpandOptions, backend: &str, plan: &CanvasPlan, seed: u64) -> String {
    let mut text = options.prompt.clone().unwrap_or_default();
    if let Some(negative) = &options.negative_prompt {
        text.push_str("\nNegative prompt: ");
        text.push_str(negative);
    }
    let box_ = &plan.original;
    text.push_str(&format!(
        "\nSeed: {seed}, Backend: {backend}, Size: {}x{}, Original: {}x{} at {},{}, Software: outpaint {}",
        plan.width,
        plan.height,
        box_.width,
        box_.height,
        box_.x,
        box_.y,
        env!("CARGO_PKG_VERSION"),
    ));
    if let Some(steps) = options.steps {
        text.push_str(&format!(", Steps: {steps}"));
    }
    if let Some(scale) = options.guidance_scale {
        text.push_str(&format!(", CFG scale: {scale}"));
    }
    text
}

/// Width of the band, on the generated side, over which a redrawn canvas is blended into the
/// original: 1/16 of the original's short side, between 8 and 64 px.
fn seam_band(plan: &CanvasPlan) -> u32 {
    (plan.original.width.min(plan.original.height) / 16).clamp(8, 64)
}

fn check_output(
    backend: &str,
    images: &[RgbImage],
    plan: &CanvasPlan,
    expected: usize,
) -> Result<(), EngineError> {
    let bad = |message: String| EngineError::BackendOutput {
        backend: backend.to_string(),
        message,
    };
    if images.len() != expected {
        return Err(bad(format!("{} images for {expected} seeds", images.len())));
    }
    if let Some(image) = images
        .iter()
        .find(|i| i.dimensions() != (plan.width, plan.height))
    {
        return Err(bad(format!(
            "a {}×{} image for a {}×{} canvas",
            image.width(),
            image.height(),
            plan.width,
            plan.height
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use image::Rgb;
    use outpaint_canvas::{CanvasError, Limits};

    fn original() -> RgbImage {
        RgbImage::from_fn(320, 300, |x, y| {
            Rgb([
                (x * 13 % 256) as u8,
                (y * 7 % 256) as u8,
                ((x / 8 + y / 8) * 40 % 256) as u8,
            ])
        })
    }

    fn request(n: u32, seed: Option<u64>) -> ExpandRequest {
        ExpandRequest {
            image: DecodedImage::from_rgb(original()),
            expansion: Expansion::uniform("left,right".parse().unwrap(), 1.5).unwrap(),
            options: ExpandOptions {
                n,
                seed,
                ..ExpandOptions::default()
            },
        }
    }

    fn decode_all(expanded: &Expanded) -> Vec<RgbImage> {
        expanded
            .images
            .iter()
            .map(|bytes| codec::decode(bytes, &Limits::default()).unwrap().rgb)
            .collect()
    }

    fn box_is_exact(image: &RgbImage, plan: &CanvasPlan) -> bool {
        original()
            .enumerate_pixels()
            .all(|(x, y, px)| image.get_pixel(plan.original.x + x, plan.original.y + y) == px)
    }

    #[test]
    fn expand_keeps_the_box_pixel_exact() {
        let expanded = Engine::default().expand(&request(2, Some(3))).unwrap();
        assert_eq!((expanded.plan.width, expanded.plan.height), (480, 300));
        assert_eq!(expanded.plan.original.x, 80);
        assert_eq!(expanded.backend, "infill");
        assert_eq!(expanded.seed, 3);
        assert_eq!(expanded.seeds, seed::variation_seeds(3, 2));
        for image in decode_all(&expanded) {
            assert_eq!(image.dimensions(), (480, 300));
            assert!(box_is_exact(&image, &expanded.plan));
        }
    }

    #[test]
    fn png_results_record_the_prompt_and_their_own_seed() {
        let mut request = request(2, Some(11));
        request.options.prompt = Some("a red barn".into());
        request.options.negative_prompt = Some("people".into());
        let expanded = Engine::default().expand(&request).unwrap();
        for (bytes, seed) in expanded.images.iter().zip(&expanded.seeds) {
            let expected = format!(
                "parameters\0\0\0\0\0a red barn\nNegative prompt: people\nSeed: {seed}, \
                 Backend: infill, Size: 480x300, Original: 320x300 at 80,0"
            );
            assert!(
                bytes
                    .windows(expected.len())
                    .any(|w| w == expected.as_bytes()),
                "no parameters entry for seed {seed}"
            );
        }
    }

    #[test]
    fn watermarked_copies_come_with_untouched_results() {
        let mut marked = request(2, Some(3));
        marked.options.watermark = true;
        let engine = Engine::default();
        let expanded = engine.expand(&marked).unwrap();
        let plain = engine.expand(&request(2, Some(3))).unwrap();
        assert_eq!(
            expanded.images, plain.images,
            "the results themselves carry no mark"
        );
        assert_eq!(expanded.watermarked.len(), 2);
        for (image, copy) in decode_all(&expanded).iter().zip(&expanded.watermarked) {
            let copy = codec::decode(copy, &Limits::default()).unwrap().rgb;
            assert_eq!(copy.dimensions(), image.dimensions());
            assert_ne!(&copy, image);
        }
        assert!(plain.watermarked.is_empty());
    }

    #[test]
    fn seeds_are_reproducible_and_variations_distinct() {
        let engine = Engine::default();
        let a = engine.expand(&request(3, Some(7))).unwrap();
        let b = engine.expand(&request(3, Some(7))).unwrap();
        assert_eq!(a.images, b.images);
        assert_ne!(a.images[0], a.images[1]);
        assert_ne!(a.images[1], a.images[2]);
        let single = engine.expand(&request(1, Some(7))).unwrap();
        assert_eq!(
            single.images[0], a.images[0],
            "variation 0 does not depend on n"
        );
        let random = engine.expand(&request(1, None)).unwrap();
        assert!(random.seed <= seed::MAX_RANDOM_SEED);
    }

    macro_rules! invalid_option {
        ($name:ident, $field:ident: $value:expr, $message:expr) => {
            #[test]
            fn $name() {
                let mut r = request(1, Some(1));
                r.options.$field = $value;
                let err = Engine::default().expand(&r).unwrap_err();
                assert_eq!(err.to_string(), $message);
                assert_eq!(err.kind(), ErrorKind::InvalidInput);
            }
        };
    }

    invalid_option!(zero_variations, n: 0, "n must be in 1..=9, got 0");
    invalid_option!(ten_variations, n: 10, "n must be in 1..=9, got 10");
    invalid_option!(
        long_prompt,
        prompt: Some("é".repeat(2501)),
        "prompt must be at most 2500 characters long, got 2501 characters"
    );
    invalid_option!(
        long_negative_prompt,
        negative_prompt: Some("x".repeat(3000)),
        "negative_prompt must be at most 2500 characters long, got 3000 characters"
    );
    invalid_option!(
        unknown_backend,
        backend: Some("sdxl".to_string()),
        "unknown backend \"sdxl\"; available: edge, infill"
    );
    invalid_option!(zero_steps, steps: Some(0), "steps must be in 1..=500, got 0");
    invalid_option!(
        nan_guidance,
        guidance_scale: Some(f32::NAN),
        "guidance_scale must be a finite number, at least 0, got NaN"
    );

    #[test]
    fn prompt_of_exactly_the_limit_is_accepted() {
        let mut r = request(1, Some(1));
        r.options.prompt = Some("é".repeat(MAX_PROMPT_CHARS));
        assert!(Engine::default().validate(&r.options).is_ok());
    }

    #[test]
    fn geometry_errors_are_invalid_input() {
        let mut r = request(1, Some(1));
        r.image = DecodedImage::from_rgb(RgbImage::new(200, 500));
        let err = Engine::default().expand(&r).unwrap_err();
        assert!(matches!(
            err,
            EngineError::Canvas(CanvasError::ImageTooSmall { .. })
        ));
        assert_eq!(
            err.to_string(),
            "image is 200×500 px; each side must be at least 300 px"
        );
        assert!(err.is_invalid_input());
    }

    /// Redraws the whole canvas 20 levels too bright, as a VAE round trip might drift.
    struct Drifting;

    impl Backend for Drifting {
        fn name(&self) -> &str {
            "drifting"
        }

        fn generate(&self, job: &GenerationJob<'_>) -> Result<Vec<RgbImage>, BackendError> {
            let mut image = job.canvas.clone();
            for (x, y, px) in image.enumerate_pixels_mut() {
                if !job.plan.original.contains(x, y) {
                    *px = Rgb([100; 3]);
                }
                *px = Rgb(px.0.map(|v| v.saturating_add(20)));
            }
            Ok(job.seeds.iter().map(|_| image.clone()).collect())
        }
    }

    /// Returns nothing: a buggy backend.
    struct Empty;

    impl Backend for Empty {
        fn name(&self) -> &str {
            "empty"
        }

        fn generate(&self, _: &GenerationJob<'_>) -> Result<Vec<RgbImage>, BackendError> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn redrawing_backends_get_the_box_back_and_colour_matched() {
        let mut engine = Engine::default();
        engine.register(Arc::new(Drifting));
        let mut r = request(1, Some(1));
        r.options.backend = Some("drifting".to_string());
        let expanded = engine.expand(&r).unwrap();
        let image = &decode_all(&expanded)[0];
        assert!(box_is_exact(image, &expanded.plan));
        // The 20-level drift measured in the box was taken off the generated area.
        let corrected = image.get_pixel(5, 150)[1];
        assert!((95..=105).contains(&corrected), "{corrected}");
    }

    #[test]
    fn backend_bugs_are_internal_errors() {
        let mut engine = Engine::default();
        engine.register(Arc::new(Empty));
        engine.set_default_backend("empty").unwrap();
        let err = engine.expand(&request(2, Some(1))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the empty backend returned unusable output: 0 images for 2 seeds"
        );
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(engine.set_default_backend("nope").is_err());
    }

    #[test]
    fn cancelled_jobs_stop() {
        let cancel = AtomicBool::new(true);
        let control = JobControl {
            progress: &|_| {},
            cancel: &cancel,
        };
        let err = Engine::default()
            .expand_with(&request(1, Some(1)), &control)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Cancelled);
    }
}
