//! The image and canvas rules of SPEC 1.3, with the SPEC's values as defaults.
//!
//! The operator may change every limit (the CLI and the server expose them as flags), which is
//! why they live in a struct rather than in constants.

use crate::CanvasError;

/// Limits on input images and expanded canvases.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Limits {
    /// Largest accepted encoded image file, in bytes.
    pub max_file_bytes: u64,
    /// Smallest accepted width and height of the original, in pixels.
    pub min_side: u32,
    /// Largest accepted aspect ratio (long side / short side) of the original.
    pub max_aspect: f64,
    /// Largest canvas area as a multiple of the original's area.
    pub max_area_ratio: f64,
    /// Largest canvas, in pixels.
    pub max_canvas_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 10 * 1024 * 1024,
            min_side: 300,
            max_aspect: 2.5,
            max_area_ratio: 3.0,
            max_canvas_pixels: 16_000_000,
        }
    }
}

impl Limits {
    /// Largest original that could still be expanded within the canvas limit. Decoders use it
    /// to refuse decompression bombs from the header alone, before allocating pixels.
    pub fn max_image_pixels(&self) -> u64 {
        self.max_canvas_pixels
    }

    /// Checks the size of an encoded image file.
    pub fn check_file_size(&self, bytes: u64) -> Result<(), CanvasError> {
        if bytes > self.max_file_bytes {
            return Err(CanvasError::FileTooLarge {
                bytes,
                max: self.max_file_bytes,
                max_mib: self.max_file_bytes as f64 / (1024.0 * 1024.0),
            });
        }
        Ok(())
    }

    /// Checks an original's dimensions: minimum side and aspect ratio.
    pub fn check_image(&self, width: u32, height: u32) -> Result<(), CanvasError> {
        if width < self.min_side || height < self.min_side {
            return Err(CanvasError::ImageTooSmall {
                width,
                height,
                min: self.min_side,
            });
        }
        let (long, short) = (width.max(height), width.min(height));
        let ratio = f64::from(long) / f64::from(short);
        if ratio > self.max_aspect {
            return Err(CanvasError::AspectRatio {
                width,
                height,
                ratio,
                max: self.max_aspect,
            });
        }
        Ok(())
    }

    /// Checks an expanded canvas against the area-ratio and pixel limits.
    pub fn check_canvas(
        &self,
        width: u32,
        height: u32,
        canvas_width: u64,
        canvas_height: u64,
    ) -> Result<(), CanvasError> {
        let canvas = canvas_width.saturating_mul(canvas_height);
        let original = u64::from(width) * u64::from(height);
        let ratio = canvas as f64 / original as f64;
        // A canvas dimension that does not fit u32 is reported with u32::MAX; it is far over
        // the pixel limit anyway.
        let (cw, ch) = (
            u32::try_from(canvas_width).unwrap_or(u32::MAX),
            u32::try_from(canvas_height).unwrap_or(u32::MAX),
        );
        if ratio > self.max_area_ratio + 1e-9 {
            return Err(CanvasError::CanvasAreaRatio {
                width: cw,
                height: ch,
                ratio,
                max: self.max_area_ratio,
            });
        }
        if canvas > self.max_canvas_pixels {
            return Err(CanvasError::CanvasTooLarge {
                width: cw,
                height: ch,
                pixels: canvas,
                max_pixels: self.max_canvas_pixels,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_rules() {
        let l = Limits::default();
        assert!(l.check_image(300, 300).is_ok());
        assert!(matches!(
            l.check_image(299, 600),
            Err(CanvasError::ImageTooSmall { .. })
        ));
        assert!(l.check_image(750, 300).is_ok()); // exactly 2.5:1
        assert!(l.check_image(300, 750).is_ok());
        let err = l.check_image(751, 300).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image aspect ratio 751:300 (2.503:1) is outside 1:2.5 to 2.5:1"
        );
    }

    #[test]
    fn canvas_rules() {
        let l = Limits::default();
        assert!(l.check_canvas(1000, 1000, 3000, 1000).is_ok()); // exactly 3×
        let err = l.check_canvas(1000, 1000, 3001, 1000).unwrap_err();
        assert!(err.to_string().contains("at most 3× is allowed"), "{err}");
        let err = l.check_canvas(3000, 3000, 4500, 4500).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the expanded canvas 4500×4500 has 20250000 pixels; at most 16000000 are allowed"
        );
        assert!(l.check_file_size(10 * 1024 * 1024).is_ok());
        assert!(l.check_file_size(10 * 1024 * 1024 + 1).is_err());
    }
}
