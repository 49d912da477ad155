//! Weight-free image completion by PatchMatch, tuned for outpainting.
//!
//! ```
//! use image::{GrayImage, Luma, Rgb, RgbImage};
//! use outpaint_infill::{InfillParams, inpaint};
//! let mut canvas = RgbImage::from_fn(96, 64, |x, y| Rgb([(x * 7 % 256) as u8, (y * 3) as u8, 90]));
//! let mask = GrayImage::from_fn(96, 64, |x, _| Luma([if x >= 64 { 255 } else { 0 }]));
//! let filled = inpaint(&canvas, &mask, &InfillParams::default())?;
//! assert_eq!(filled.get_pixel(10, 10), canvas.get_pixel(10, 10));
//! # Ok::<(), outpaint_infill::InfillError>(())
//! ```

use image::{GrayImage, RgbImage};
use thiserror::Error;

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
}

impl Default for InfillParams {
    fn default() -> Self {
        InfillParams { seed: 0 }
    }
}

/// Fills the pixels of `image` where `mask` is non-zero with content copied from the rest.
///
/// Pixels where `mask` is zero are returned unchanged.
pub fn inpaint(
    image: &RgbImage,
    mask: &GrayImage,
    params: &InfillParams,
) -> Result<RgbImage, InfillError> {
    let _ = params;
    if image.dimensions() != mask.dimensions() {
        return Err(InfillError::MaskSize {
            width: image.width(),
            height: image.height(),
            mask_width: mask.width(),
            mask_height: mask.height(),
        });
    }
    // Provisional: nearest known pixel along the row. Replaced by PatchMatch.
    let mut out = image.clone();
    for y in 0..image.height() {
        let known: Vec<u32> = (0..image.width()).filter(|&x| mask.get_pixel(x, y)[0] == 0).collect();
        if known.is_empty() {
            continue;
        }
        for x in 0..image.width() {
            if mask.get_pixel(x, y)[0] != 0 {
                let nearest = *known.iter().min_by_key(|&&k| k.abs_diff(x)).unwrap();
                out.put_pixel(x, y, *image.get_pixel(nearest, y));
            }
        }
    }
    Ok(out)
}
