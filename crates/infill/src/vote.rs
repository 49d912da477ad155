//! Reconstruction: each unknown pixel becomes the weighted average of what the overlapping
//! patches' matches put there (the "voting" step of Wexler et al. 2007).

use std::sync::atomic::Ordering::Relaxed;

use rayon::prelude::*;

use crate::field::{Field, RADIUS, Targets};
use crate::pyramid::Level;

/// Per-target weight `exp(-cost / (2 σ²)) · γ^(-d)`, with σ² the given percentile of the costs
/// and `d` the target's distance to the known area.
///
/// The first factor lets good matches dominate, so a few bad ones do not smear the result. The
/// second (Wexler et al.'s distance weighting) gives patches that overlap the original the last
/// word near it: without it, well-matched patches further out outvote the border ones and the
/// generated side settles on a slightly different shade, a visible seam.
pub(crate) fn weights(
    field: &Field,
    targets: &Targets,
    distance: &[f32],
    percentile: f32,
    gamma: f32,
) -> Vec<f32> {
    let mut costs: Vec<u32> = targets
        .is
        .iter()
        .zip(&field.cost)
        .filter(|(t, _)| **t)
        .map(|(_, c)| c.load(Relaxed))
        .collect();
    if costs.is_empty() {
        return vec![0.0; targets.is.len()];
    }
    let k = ((costs.len() - 1) as f32 * percentile) as usize;
    let sigma2 = (*costs.select_nth_unstable(k).1 as f32).max(1.0);
    field
        .cost
        .par_iter()
        .zip(&targets.is)
        .zip(distance)
        .map(|((c, &t), &d)| {
            if t {
                let fit = (-(c.load(Relaxed) as f32) / (2.0 * sigma2)).exp().max(1e-6);
                fit * gamma.powf(-d)
            } else {
                0.0
            }
        })
        .collect()
}

/// Rewrites every unknown pixel of `level` from the field. Sources are fully known patches, so
/// the result depends only on the field and the known pixels.
pub(crate) fn vote(level: &mut Level, field: &Field, targets: &Targets, weights: &[f32]) {
    let (w, h) = (level.width, level.height);
    let pixels = &level.pixels;
    let known = &level.known;
    let mut out = pixels.clone();
    out.par_chunks_mut(w).enumerate().for_each(|(y, row)| {
        for (x, dst) in row.iter_mut().enumerate() {
            if known[y * w + x] {
                continue;
            }
            let mut acc = [0f32; 3];
            let mut total = 0f32;
            let (ty0, ty1) = (y.saturating_sub(RADIUS), (y + RADIUS + 1).min(h));
            let (tx0, tx1) = (x.saturating_sub(RADIUS), (x + RADIUS + 1).min(w));
            for ty in ty0..ty1 {
                for tx in tx0..tx1 {
                    let t = ty * w + tx;
                    if !targets.is[t] {
                        continue;
                    }
                    let s = field.nnf[t].load(Relaxed) as usize;
                    // Same offset from the source centre as the pixel has from the target's.
                    let q = (s + y * w + x) - t;
                    let wt = weights[t];
                    let p = pixels[q];
                    for c in 0..3 {
                        acc[c] += wt * f32::from(p[c]);
                    }
                    total += wt;
                }
            }
            if total > 0.0 {
                *dst = [
                    (acc[0] / total).round() as u8,
                    (acc[1] / total).round() as u8,
                    (acc[2] / total).round() as u8,
                    0,
                ];
            }
        }
    });
    level.pixels = out;
}
