//! Putting the original and the generated pixels together.
//!
//! The invariant every function here keeps: pixels inside the original's box end up exactly
//! the original's, and every correction (seam blend, colour match) changes generated pixels only.

use image::{Rgb, RgbImage};

use crate::{CanvasPlan, Rect};

/// A canvas of the plan's size with the original in its box and black everywhere else.
pub fn place(original: &RgbImage, plan: &CanvasPlan) -> RgbImage {
    let mut canvas = RgbImage::new(plan.width, plan.height);
    paste_original(&mut canvas, original, plan);
    canvas
}

/// Copies the original's pixels into its box on `canvas`, unchanged.
///
/// # Panics
/// If the canvas or the original does not have the plan's sizes (a caller's bug, not input).
pub fn paste_original(canvas: &mut RgbImage, original: &RgbImage, plan: &CanvasPlan) {
    let o = plan.original;
    assert_eq!(
        canvas.dimensions(),
        (plan.width, plan.height),
        "canvas size"
    );
    assert_eq!(original.dimensions(), (o.width, o.height), "original size");
    let row_bytes = o.width as usize * 3;
    let canvas_stride = plan.width as usize * 3;
    let dst: &mut [u8] = canvas;
    for (y, src_row) in original.chunks_exact(row_bytes).enumerate() {
        let start = (o.y as usize + y) * canvas_stride + o.x as usize * 3;
        dst[start..start + row_bytes].copy_from_slice(src_row);
    }
}

/// Matches the colour statistics of the generated area to the original's.
///
/// Generators that redraw the whole canvas (diffusion through a VAE) drift in colour; their
/// drift shows in the box, where the truth is known. Per channel, the generated pixels outside
/// the box get the gain and offset that map the generated box's mean and standard deviation to
/// the original's. The gain is clamped to [0.8, 1.25] so a flat original cannot blow up noise.
/// Pixels inside the box are not touched.
pub fn match_colour(generated: &mut RgbImage, original: &RgbImage, plan: &CanvasPlan) {
    let o = plan.original;
    let mut stats = [[0f64; 4]; 3]; // per channel: sum_gen, sum_gen², sum_orig, sum_orig²
    for (x, y, px) in original.enumerate_pixels() {
        let g = generated.get_pixel(o.x + x, o.y + y);
        for c in 0..3 {
            let (gv, ov) = (f64::from(g[c]), f64::from(px[c]));
            stats[c][0] += gv;
            stats[c][1] += gv * gv;
            stats[c][2] += ov;
            stats[c][3] += ov * ov;
        }
    }
    let n = f64::from(o.width) * f64::from(o.height);
    let mut gain = [1f32; 3];
    let mut offset = [0f32; 3];
    for c in 0..3 {
        let (mg, mo) = (stats[c][0] / n, stats[c][2] / n);
        let sg = (stats[c][1] / n - mg * mg).max(0.0).sqrt();
        let so = (stats[c][3] / n - mo * mo).max(0.0).sqrt();
        let g = if sg > 1.0 {
            (so / sg).clamp(0.8, 1.25)
        } else {
            1.0
        };
        gain[c] = g as f32;
        offset[c] = (mo - g * mg) as f32;
    }
    for_generated(generated, o, |_, _, px| {
        for c in 0..3 {
            px[c] = to_u8(f32::from(px[c]) * gain[c] + offset[c]);
        }
    });
}

/// Blends the generated side of the seam into the original.
///
/// Along each border of the box, the residual `original − generated` is taken on the box's
/// outermost row or column and smoothed along the border; generated pixels within `band` px of
/// the box receive that residual, fading linearly to nothing at `band`. A generator whose output
/// already agrees with the original at the border (PatchMatch) is left unchanged; one that
/// redrew it slightly differently (diffusion) meets the original without a step.
pub fn blend_seam(generated: &mut RgbImage, original: &RgbImage, plan: &CanvasPlan, band: u32) {
    if band == 0 {
        return;
    }
    let o = plan.original;
    let smooth = (band / 4).max(1) as usize;
    // Residuals on the four borders, each indexed by position along that border.
    let border = |pixels: &mut dyn Iterator<Item = (u32, u32)>| -> Vec<[f32; 3]> {
        let raw: Vec<[f32; 3]> = pixels
            .map(|(x, y)| {
                let (a, b) = (
                    original.get_pixel(x, y),
                    generated.get_pixel(o.x + x, o.y + y),
                );
                std::array::from_fn(|c| f32::from(a[c]) - f32::from(b[c]))
            })
            .collect();
        box_filter(&raw, smooth)
    };
    let top = border(&mut (0..o.width).map(|x| (x, 0)));
    let bottom = border(&mut (0..o.width).map(|x| (x, o.height - 1)));
    let left = border(&mut (0..o.height).map(|y| (0, y)));
    let right = border(&mut (0..o.height).map(|y| (o.width - 1, y)));

    let band_f = band as f32;
    for_generated(generated, o, |x, y, px| {
        let cx = x.clamp(o.x, o.right() - 1);
        let cy = y.clamp(o.y, o.bottom() - 1);
        let (dx, dy) = (x.abs_diff(cx) as f32, y.abs_diff(cy) as f32);
        let distance = (dx * dx + dy * dy).sqrt();
        if distance > band_f {
            return;
        }
        let residual = if y < o.y {
            top[(cx - o.x) as usize]
        } else if y >= o.bottom() {
            bottom[(cx - o.x) as usize]
        } else if x < o.x {
            left[(cy - o.y) as usize]
        } else {
            right[(cy - o.y) as usize]
        };
        let weight = 1.0 - (distance - 1.0).max(0.0) / band_f;
        for c in 0..3 {
            px[c] = to_u8(f32::from(px[c]) + weight * residual[c]);
        }
    });
}

/// Calls `f` on every pixel outside `original`.
fn for_generated(image: &mut RgbImage, original: Rect, mut f: impl FnMut(u32, u32, &mut Rgb<u8>)) {
    for (x, y, px) in image.enumerate_pixels_mut() {
        if !original.contains(x, y) {
            f(x, y, px);
        }
    }
}

/// Centred moving average with the given radius, edges clamped.
fn box_filter(values: &[[f32; 3]], radius: usize) -> Vec<[f32; 3]> {
    let n = values.len();
    (0..n)
        .map(|i| {
            let (lo, hi) = (i.saturating_sub(radius), (i + radius + 1).min(n));
            let mut sum = [0f32; 3];
            for v in &values[lo..hi] {
                for c in 0..3 {
                    sum[c] += v[c];
                }
            }
            sum.map(|s| s / (hi - lo) as f32)
        })
        .collect()
}

fn to_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Expansion, Limits, Sides, plan};

    fn test_plan() -> (RgbImage, CanvasPlan) {
        let original = RgbImage::from_fn(300, 320, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8]));
        let e = Expansion::uniform(Sides::ALL, 1.3).unwrap();
        let p = plan(300, 320, &e, &Limits::default()).unwrap();
        (original, p)
    }

    fn box_is_original(canvas: &RgbImage, original: &RgbImage, p: &CanvasPlan) -> bool {
        original
            .enumerate_pixels()
            .all(|(x, y, px)| canvas.get_pixel(p.original.x + x, p.original.y + y) == px)
    }

    #[test]
    fn place_and_paste_are_exact() {
        let (original, p) = test_plan();
        let mut canvas = place(&original, &p);
        assert!(box_is_original(&canvas, &original, &p));
        assert_eq!(canvas.get_pixel(0, 0).0, [0, 0, 0]);
        for px in canvas.pixels_mut() {
            *px = Rgb([7, 7, 7]);
        }
        paste_original(&mut canvas, &original, &p);
        assert!(box_is_original(&canvas, &original, &p));
        assert_eq!(canvas.get_pixel(0, 0).0, [7, 7, 7]);
    }

    #[test]
    fn seam_blend_removes_a_step_and_leaves_the_box_alone() {
        let original = RgbImage::from_pixel(300, 300, Rgb([100, 100, 100]));
        let e = Expansion::uniform("right".parse().unwrap(), 1.5).unwrap();
        let p = plan(300, 300, &e, &Limits::default()).unwrap();
        // A generator that drew everything 20 levels too bright.
        let mut generated = RgbImage::from_pixel(p.width, p.height, Rgb([120, 120, 120]));
        blend_seam(&mut generated, &original, &p, 16);
        // The box is still the generator's: blend_seam only touches the generated side.
        assert_eq!(generated.get_pixel(299, 10).0, [120; 3]);
        assert_eq!(generated.get_pixel(300, 10).0, [100; 3]); // first generated column: no step
        assert!(generated.get_pixel(308, 10).0[0] > 100 && generated.get_pixel(308, 10).0[0] < 120);
        assert_eq!(generated.get_pixel(330, 10).0, [120; 3]); // beyond the band: untouched
    }

    #[test]
    fn blend_and_match_are_no_ops_when_the_box_agrees() {
        let (original, p) = test_plan();
        let mut generated = place(&original, &p);
        for (x, y, px) in generated.enumerate_pixels_mut() {
            if !p.original.contains(x, y) {
                *px = Rgb([(x * 3) as u8, (y * 5) as u8, 9]);
            }
        }
        let before = generated.clone();
        blend_seam(&mut generated, &original, &p, 24);
        match_colour(&mut generated, &original, &p);
        assert_eq!(generated, before);
    }

    #[test]
    fn colour_match_corrects_drift_outside_the_box() {
        let (original, p) = test_plan();
        let mut generated = place(&original, &p);
        for px in generated.pixels_mut() {
            px[0] = px[0].saturating_add(30).min(250);
        }
        let inside = *generated.get_pixel(p.original.x + 5, p.original.y + 5);
        generated.put_pixel(0, 0, Rgb([130, 0, 0]));
        match_colour(&mut generated, &original, &p);
        assert_eq!(
            *generated.get_pixel(p.original.x + 5, p.original.y + 5),
            inside
        );
        let corrected = generated.get_pixel(0, 0)[0];
        assert!((95..=110).contains(&corrected), "{corrected}");
    }
}
