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

/// Tuning of the completion. The defaults are what the CLI and server use; they were chosen on
/// the evaluation set in `shared/eval` (see `benches/RESULTS.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct InfillParams {
    /// Seed of every random choice: the same seed gives the same pixels.
    pub seed: u64,
    /// The coarsest level's short side, in pixels (the pyramid stops at the last level at least
    /// this large). Smaller starts capture larger structures but give the first guess less
    /// detail to work with.
    pub coarsest_side: usize,
    /// EM iterations at the coarsest level; intermediate levels use half as many.
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
            coarsest_side: 64,
            coarse_iterations: 8,
            fine_iterations: 2,
            locality: 10_000.0,
            gamma: 3.0,
        }
    }
}

/// The coarsest level keeps at least this many source patches.
const MIN_SOURCES: usize = 64;

/// Weight of the original's pixels in the patches that straddle the border: they are the only
/// certain information there, so a patch that continues them must beat one that merely agrees
/// with the current guess beyond the border.
const BORDER_WEIGHT: u32 = 16;

/// The first guess uses this fraction of the EM's locality prior: enough to prefer nearby
/// continuations among equals, weak enough to let it reach distant texture that fits better.
const INIT_LOCALITY: f32 = 0.1;

/// The percentile of the match costs that sets the vote's cost scale (see [`vote::weights`]).
const VOTE_PERCENTILE: f32 = 0.75;

/// Random-search radius, in pixels, below the coarsest level: finer levels only refine a field
/// that the coarser level already placed.
const FINE_SEARCH_RADIUS: usize = 8;

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
                init::onion_peel(level, &sources, &distance, locality * INIT_LOCALITY, seed);
                let matcher = matcher(level, &targets, &distance, locality);
                Field::random(&matcher, &targets, &sources, seed)
            }
            Some(coarse) => {
                let field = Field::upsample(&coarse, &coarser[0], level, &targets, &sources, seed);
                let uniform: Vec<f32> =
                    targets.is.iter().map(|&t| f32::from(u8::from(t))).collect();
                vote::vote(level, &field, &targets, &uniform);
                field.recompute_costs(&matcher(level, &targets, &distance, locality), &targets);
                field
            }
        };
        // The coarsest level searches the whole image, twice per EM iteration; the finest only
        // polishes what the levels above placed, once per iteration.
        let (iterations, passes, max_radius, global_samples) = if depth == coarsest {
            let whole = level.width.max(level.height);
            (params.coarse_iterations, 2, whole, 2)
        } else if depth == 0 {
            (params.fine_iterations, 1, FINE_SEARCH_RADIUS, 0)
        } else {
            let iterations = params.coarse_iterations.div_ceil(2);
            (iterations, 2, FINE_SEARCH_RADIUS, 1)
        };
        for em in 0..iterations {
            let matcher = matcher(level, &targets, &distance, locality);
            if em > 0 {
                field.recompute_costs(&matcher, &targets);
            }
            for pass in 0..passes {
                let search = Search {
                    stream: [params.seed, depth as u64, (em * 2 + pass) as u64],
                    max_radius,
                    global_samples,
                    reverse: pass == 1,
                };
                field.improve(&matcher, &targets, &sources, &search);
            }
            let weights = vote::weights(
                &field,
                &targets,
                &distance.distance,
                VOTE_PERCENTILE,
                params.gamma,
            );
            vote::vote(level, &field, &targets, &weights);
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
) -> Matcher<'a> {
    Matcher {
        pixels: &level.pixels,
        known: &level.known,
        mixed: &targets.mixed,
        known_weight: BORDER_WEIGHT,
        width: level.width,
        nearest: &distance.nearest,
        locality,
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
    fn a_known_area_one_patch_wide_and_very_long_is_used() {
        // One column of patch centres (x = 3), longer than the first guess's candidate budget:
        // subsampling every other column would leave no candidate at all.
        let image = stripes(10, 4200);
        let mask = right_mask(10, 4200, 7);
        let out = inpaint(&image, &mask, &InfillParams::default()).unwrap();
        for (x, y, p) in out.enumerate_pixels() {
            if x < 7 {
                assert_eq!(p, image.get_pixel(x, y));
            }
        }
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
