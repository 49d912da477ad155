//! The visible watermark of the API's `watermark_info.enabled`: "AI GENERATED" tiled over the
//! whole image in translucent white with a dark outline, so it reads on light and dark areas.
//!
//! The glyphs are a built-in 5×7 bitmap font: no font file to ship or load for one phrase.

use image::{Rgb, RgbImage};

const TEXT: &str = "AI GENERATED";
const GLYPH_W: u32 = 5;
const GLYPH_H: u32 = 7;
/// Opacity of the white letters and of their dark outline, out of 256.
const TEXT_ALPHA: u32 = 110;
const OUTLINE_ALPHA: u32 = 70;

/// Rows of a glyph, top to bottom; bit 4 is the leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'N' => [0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x11],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        _ => [0; 7],
    }
}

/// Whether the text, drawn at 1 px per font pixel with one blank column between glyphs, covers
/// `(x, y)`.
fn text_covers(x: i64, y: i64) -> bool {
    let advance = i64::from(GLYPH_W + 1);
    if y < 0 || y >= i64::from(GLYPH_H) || x < 0 {
        return false;
    }
    let (index, column) = (x / advance, x % advance);
    if column >= i64::from(GLYPH_W) {
        return false;
    }
    TEXT.chars()
        .nth(index as usize)
        .is_some_and(|c| glyph(c)[y as usize] & (0x10 >> column) != 0)
}

/// Draws the watermark over `image`, tiled in staggered rows so any crop of a fair size
/// still carries it. The letters scale with the image (about 1/40 of its short side tall).
pub fn apply(image: &mut RgbImage) {
    let (width, height) = image.dimensions();
    let scale = (width.min(height) / (GLYPH_H * 40)).max(2);
    let text_w = (TEXT.len() as u32 * (GLYPH_W + 1) - 1) * scale;
    let text_h = GLYPH_H * scale;
    let (step_x, step_y) = (text_w + 6 * text_h, 5 * text_h);
    let s = i64::from(scale);
    let covers = |x: i64, y: i64| text_covers(x.div_euclid(s), y.div_euclid(s));
    for y in 0..height {
        let row = y / step_y;
        let ty = i64::from(y % step_y) - i64::from(2 * text_h);
        // Every other row is shifted by half a step.
        let shift = if row % 2 == 1 { step_x / 2 } else { 0 };
        for x in 0..width {
            let tx = i64::from((x + shift) % step_x) - i64::from(3 * text_h);
            let pixel = image.get_pixel_mut(x, y);
            if covers(tx, ty) {
                blend(pixel, 255, TEXT_ALPHA);
            } else if [(-s, 0), (s, 0), (0, -s), (0, s)]
                .iter()
                .any(|&(dx, dy)| covers(tx + dx, ty + dy))
            {
                blend(pixel, 0, OUTLINE_ALPHA);
            }
        }
    }
}

fn blend(pixel: &mut Rgb<u8>, value: u32, alpha: u32) {
    for c in &mut pixel.0 {
        *c = ((u32::from(*c) * (256 - alpha) + value * alpha) >> 8) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_visible_and_leaves_most_of_the_image_alone() {
        let original = RgbImage::from_pixel(600, 400, Rgb([40, 90, 160]));
        let mut marked = original.clone();
        apply(&mut marked);
        let changed = marked
            .pixels()
            .zip(original.pixels())
            .filter(|(a, b)| a != b)
            .count();
        let share = changed as f64 / f64::from(600 * 400);
        // Enough to see, little enough to judge the image through it.
        assert!((0.03..0.35).contains(&share), "{share}");
        // White letters brighten the image.
        assert!(marked.pixels().any(|p| p[0] > 100 && p[2] > 190));
    }

    #[test]
    fn the_font_draws_every_letter_of_the_text() {
        for c in TEXT.chars().filter(|c| *c != ' ') {
            assert!(glyph(c).iter().any(|row| *row != 0), "{c}");
        }
    }
}
