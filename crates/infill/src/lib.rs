//! Weight-free image completion by PatchMatch, tuned for outpainting.
//!
//! Coarse-to-fine patch-based completion in the spirit of Wexler, Shechtman and Irani 2007
//! ("Space-Time Completion of Video"), with the nearest-neighbour search of Barnes et al. 2009
//! (PatchMatch):
//!
//! 1. a pyramid of the image halves it until the canvas is small ([`pyramid`]); a pixel is
//!    known at a level only if all the pixels under it are;
//! 2. at the coarsest level the unknown area is grown outwards from the border ring by ring
//!    ([`init`]), so the border's structure carries over before any optimisation;
//! 3. at each level, EM iterations alternate PatchMatch sweeps ([`field`]) with voting
//!    ([`vote`]), then the field is upsampled to seed the next finer level.
//!
//! Known pixels are never written. Everything is deterministic for a given seed, whatever the
//! number of threads.
//!
//! ```
//! use image::{GrayImage, Luma, Rgb, RgbImage};
//! use outpaint_infill::{InfillParams, inpaint};
//! let canvas = RgbImage::from_fn(96, 64, |x, y| Rgb([(x * 7 % 256) as u8, (y * 3) as u8, 90]));
//! let mask = GrayImage::from_fn(96, 64, |x, _| Luma([if x >= 64 { 255 } else { 0 }]));
//! let filled = inpaint(&canvas, &mask, &InfillParams::default())?;
//! assert_eq!(filled.get_pixel(10, 10), canvas.get_pixel(10, 10));
//! # Ok::<(), outpaint_infill::InfillError>(())
//! ```

mod distance;
mod field;
mod init;
mod pyramid;
mod rng;
mod vote;

use image::{GrayImage, RgbImage};
use thiserror::Error;

use distance::DistanceMap;
use field::{Field, Matcher, SIZE, Search, Sources, Targets};
use pyramid::Level;

/// Why an image could not be completed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InfillError {
    /// Occurs when the mask and the image differ in size.
    #[error("mask is {mask_width}×{mask_height} but the image is {width}×{height}")]
    MaskSize {
        width: u32,
        height: u32,
        mask_width: u32,
        mask_height: u32,
    },
    /// Occurs when the known area cannot hold a single patch to copy from.
    #[error("the known area is too small to copy patches from (a {patch}×{patch} patch must fit)")]
    NotEnoughSource { patch: u32 },
}

/// Tuning of the completion. The defaults are what the CLI and server use.
#[derive(Debug, Clone, PartialEq)]
pub struct InfillParams {
    /// Seed of every random choice: the same seed gives the same pixels.
    pub seed: u64,
    /// The coarsest level's short side, in pixels. Smaller starts capture larger structures
    /// but give the first guess less detail to work with.
    pub coarsest_side: usize,
    /// EM iterations at the coarsest level; later levels use fewer.
    pub coarse_iterations: usize,
    /// EM iterations at the finest level (the most expensive ones).
    pub fine_iterations: usize,
    /// Locality prior: matching cost, in squared grey levels per patch value, of a source one
    /// canvas short side away from the target's nearest known pixel. Higher keeps content
    /// closer to where it continues from; 0 lets any patch go anywhere.
    pub locality: f32,
    /// Vote weight decay per pixel of distance from the known area (Wexler et al.'s γ).
    pub gamma: f32,
}

impl Default for InfillParams {
    fn default() -> Self {
        InfillParams {
            seed: 0,
            coarsest_side: env_f32("OP_CS", 48.0) as usize,
            coarse_iterations: env_f32("OP_CI", 8.0) as usize,
            fine_iterations: env_f32("OP_FI", 2.0) as usize,
            locality: env_f32("OP_LOCALITY", 0.0),
            gamma: env_f32("OP_GAMMA", 1.3),
        }
    }
}

fn env_f32(name: &str, default: f32) -> f32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The coarsest level keeps at least this many source patches.
const MIN_SOURCES: usize = 64;

/// Fills the pixels of `image` where `mask` is non-zero with content copied from the rest.
///
/// Pixels where `mask` is zero are returned unchanged.
pub fn inpaint(
    image: &RgbImage,
    mask: &GrayImage,
    params: &InfillParams,
) -> Result<RgbImage, InfillError> {
    if image.dimensions() != mask.dimensions() {
        return Err(InfillError::MaskSize {
            width: image.width(),
            height: image.height(),
            mask_width: mask.width(),
            mask_height: mask.height(),
        });
    }
    if mask.pixels().all(|m| m[0] == 0) {
        return Ok(image.clone());
    }
    let finest = Level::from_image(image, mask);
    if Sources::count(&finest, field::RADIUS) == 0 {
        return Err(InfillError::NotEnoughSource { patch: SIZE as u32 });
    }
    let mut levels = pyramid::build(finest, params.coarsest_side, MIN_SOURCES, field::RADIUS);
    let coarsest = levels.len() - 1;
    let mut previous: Option<Field> = None;
    for depth in (0..levels.len()).rev() {
        let (finer, coarser) = levels.split_at_mut(depth + 1);
        let level = &mut finer[depth];
        let targets = Targets::new(level);
        let sources = Sources::new(level);
        let distance = DistanceMap::new(level);
        let seed = params.seed ^ (depth as u64) << 56;
        let side = level.width.min(level.height) as f32;
        let locality = params.locality * (SIZE * SIZE * 3) as f32 / (side * side);
        let field = match previous.take() {
            None => {
                if std::env::var("OP_INIT").as_deref() == Ok("smooth") {
                    init::smooth(level, &distance, 200);
                } else {
                    init::onion_peel(level, &sources, &distance, seed);
                }
                if let Ok(dir) = std::env::var("OP_DEBUG_DIR") {
                    level
                        .to_image()
                        .save(format!("{dir}/level{depth}-onion.png"))
                        .ok();
                }
                let matcher = matcher(level, &targets, &distance, locality, &[]);
                Field::random(&matcher, &targets, &sources, seed)
            }
            Some(coarse) => {
                let field = Field::upsample(&coarse, &coarser[0], level, &targets, &sources, seed);
                let uniform: Vec<f32> =
                    targets.is.iter().map(|&t| f32::from(u8::from(t))).collect();
                vote::vote(level, &field, &targets, &uniform);
                if let Ok(dir) = std::env::var("OP_DEBUG_DIR") {
                    level
                        .to_image()
                        .save(format!("{dir}/level{depth}-up.png"))
                        .ok();
                }
                field.recompute_costs(
                    &matcher(level, &targets, &distance, locality, &[]),
                    &targets,
                );
                field
            }
        };
        let iterations = if depth == coarsest {
            params.coarse_iterations
        } else if depth == 0 {
            params.fine_iterations
        } else {
            params.coarse_iterations.div_ceil(2)
        };
        let max_radius = if depth == coarsest {
            level.width.max(level.height)
        } else {
            8
        };
        let occ_weight = env_f32("OP_OCC", 0.0) * (SIZE * SIZE * 3) as f32;
        for em in 0..iterations {
            let occupancy = if occ_weight > 0.0 {
                field.occupancy(level, &targets, &sources, occ_weight)
            } else {
                Vec::new()
            };
            let matcher = matcher(level, &targets, &distance, locality, &occupancy);
            if em > 0 {
                field.recompute_costs(&matcher, &targets);
            }
            for pass in 0..2 {
                let search = Search {
                    stream: [params.seed, depth as u64, (em * 2 + pass) as u64],
                    max_radius,
                    global_samples: usize::from(depth == coarsest) + 1,
                    reverse: pass == 1,
                };
                field.improve(&matcher, &targets, &sources, &search);
            }
            let weights = vote::weights(
                &field,
                &targets,
                &distance.distance,
                env_f32("OP_PCT", 0.75),
                params.gamma,
            );
            if depth == 0
                && em + 1 == iterations
                && std::env::var("OP_FINAL").as_deref() == Ok("best")
            {
                vote::vote_best(level, &field, &targets, &weights);
            } else {
                vote::vote(level, &field, &targets, &weights);
            }
        }
        if let Ok(dir) = std::env::var("OP_DEBUG_DIR") {
            level
                .to_image()
                .save(format!("{dir}/level{depth}.png"))
                .ok();
        }
        previous = Some(field);
    }
    let finest = &levels[0];
    let mut out = image.clone();
    for ((dst, src), &known) in out.pixels_mut().zip(&finest.pixels).zip(&finest.known) {
        if !known {
            dst.0 = [src[0], src[1], src[2]];
        }
    }
    Ok(out)
}

fn matcher<'a>(
    level: &'a Level,
    targets: &'a Targets,
    distance: &'a DistanceMap,
    locality: f32,
    occupancy: &'a [u32],
) -> Matcher<'a> {
    Matcher {
        pixels: &level.pixels,
        known: &level.known,
        mixed: &targets.mixed,
        known_weight: env_f32("OP_KW", 1.0) as u32,
        width: level.width,
        nearest: &distance.nearest,
        locality,
        occupancy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, Rgb};

    fn stripes(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = if (x / 8 + y / 16) % 2 == 0 { 40 } else { 200 };
            Rgb([v, v / 2, 255 - v])
        })
    }

    fn right_mask(w: u32, h: u32, from: u32) -> GrayImage {
        GrayImage::from_fn(w, h, |x, _| Luma([if x >= from { 255 } else { 0 }]))
    }

    #[test]
    fn known_pixels_are_untouched_and_unknown_ones_filled() {
        let mut image = stripes(160, 120);
        let mask = right_mask(160, 120, 100);
        for x in 100..160 {
            for y in 0..120 {
                image.put_pixel(x, y, Rgb([255, 0, 255]));
            }
        }
        let out = inpaint(&image, &mask, &InfillParams::default()).unwrap();
        for (x, y, p) in out.enumerate_pixels() {
            if x < 100 {
                assert_eq!(p, image.get_pixel(x, y));
            } else {
                // Filled with colours of the source, never the magenta placeholder.
                assert_ne!(p.0, [255, 0, 255], "({x}, {y})");
            }
        }
    }

    #[test]
    fn deterministic_per_seed_and_different_across_seeds() {
        let image = RgbImage::from_fn(140, 100, |x, y| {
            Rgb([((x * 5) ^ (y * 3)) as u8, (x * y) as u8, (y * 9) as u8])
        });
        let mask = right_mask(140, 100, 90);
        let p = |seed| InfillParams {
            seed,
            ..InfillParams::default()
        };
        let a = inpaint(&image, &mask, &p(1)).unwrap();
        let b = inpaint(&image, &mask, &p(1)).unwrap();
        let c = inpaint(&image, &mask, &p(2)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Same result with one thread as with the default pool.
        let single = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(single.install(|| inpaint(&image, &mask, &p(1)).unwrap()), a);
    }

    #[test]
    fn errors() {
        let image = stripes(50, 50);
        assert!(matches!(
            inpaint(&image, &right_mask(40, 50, 10), &InfillParams::default()),
            Err(InfillError::MaskSize { .. })
        ));
        assert!(matches!(
            inpaint(&image, &right_mask(50, 50, 4), &InfillParams::default()),
            Err(InfillError::NotEnoughSource { .. })
        ));
        let nothing = right_mask(50, 50, 50);
        assert_eq!(
            inpaint(&image, &nothing, &InfillParams::default()).unwrap(),
            image
        );
    }
}
