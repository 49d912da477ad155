//! Image levels for coarse-to-fine completion, and the mask-aware 2× reduction between them.

use image::{GrayImage, RgbImage};

/// One pixel: RGB and a zero pad byte, so that a patch row is a contiguous run of bytes the
/// compiler can vectorise.
pub(crate) type Pixel = [u8; 4];

/// An image at one scale, with which of its pixels are known (never changed).
#[derive(Debug, Clone)]
pub(crate) struct Level {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<Pixel>,
    pub known: Vec<bool>,
}

impl Level {
    /// The full-resolution level: known where `mask` is zero.
    pub fn from_image(image: &RgbImage, mask: &GrayImage) -> Level {
        let pixels = image.pixels().map(|p| [p[0], p[1], p[2], 0]).collect();
        let known = mask.pixels().map(|m| m[0] == 0).collect();
        Level {
            width: image.width() as usize,
            height: image.height() as usize,
            pixels,
            known,
        }
    }

    /// Half the size (rounded up). A pixel is known only if every full-resolution pixel under
    /// it is, so known pixels at every level are true averages of the original.
    pub fn reduce(&self) -> Level {
        let (w, h) = (self.width.div_ceil(2), self.height.div_ceil(2));
        let mut pixels = vec![[0u8; 4]; w * h];
        let mut known = vec![false; w * h];
        for y in 0..h {
            for x in 0..w {
                let mut sum = [0u32; 3];
                let (mut n, mut all_known) = (0u32, true);
                for (cx, cy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let (sx, sy) = (2 * x + cx, 2 * y + cy);
                    if sx >= self.width || sy >= self.height {
                        continue;
                    }
                    let i = sy * self.width + sx;
                    all_known &= self.known[i];
                    for (total, &value) in sum.iter_mut().zip(&self.pixels[i][..3]) {
                        *total += u32::from(value);
                    }
                    n += 1;
                }
                let i = y * w + x;
                pixels[i] = [
                    ((sum[0] + n / 2) / n) as u8,
                    ((sum[1] + n / 2) / n) as u8,
                    ((sum[2] + n / 2) / n) as u8,
                    0,
                ];
                known[i] = all_known;
            }
        }
        Level {
            width: w,
            height: h,
            pixels,
            known,
        }
    }

    /// Number of pixels.
    pub fn len(&self) -> usize {
        self.pixels.len()
    }
}

/// Builds the pyramid, finest first, stopping before the canvas's short side falls below
/// `coarsest_side` or the known area could no longer hold `min_sources` patches.
pub(crate) fn build(
    finest: Level,
    coarsest_side: usize,
    min_sources: usize,
    radius: usize,
) -> Vec<Level> {
    let mut levels = vec![finest];
    loop {
        let last = levels.last().expect("the pyramid has its finest level");
        if last.width.min(last.height) / 2 < coarsest_side {
            break;
        }
        let next = last.reduce();
        if crate::field::Sources::count(&next, radius) < min_sources {
            break;
        }
        levels.push(next);
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Luma, Rgb};

    #[test]
    fn reduce_averages_and_shrinks_the_known_area() {
        let image = RgbImage::from_fn(5, 4, |x, _| Rgb([(x * 10) as u8, 0, 0]));
        let mask = GrayImage::from_fn(5, 4, |x, _| Luma([if x >= 3 { 255 } else { 0 }]));
        let level = Level::from_image(&image, &mask).reduce();
        assert_eq!((level.width, level.height), (3, 2));
        assert_eq!(level.pixels[0][0], 5); // (0 + 10) / 2
        assert_eq!(level.known, vec![true, false, false, true, false, false]);
        assert_eq!(level.pixels[2][0], 40); // the odd last column averages itself
    }
}
