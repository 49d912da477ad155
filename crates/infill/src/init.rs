//! The first guess at the coarsest level: onion-peel growth from the known border.
//!
//! Outpainting differs from hole filling: the unknown area touches the canvas edge and is
//! constrained on one side only, so an EM started from noise or a smooth fill drifts towards
//! whatever patches are most common, and repeats them. Growing the coarsest level outwards
//! ring by ring, each pixel copied from the source whose surroundings match what is already
//! there (Efros and Leung 1999), carries the border's structure outwards (a horizon stays a
//! horizon, sky stays above ground) before EM refines it.

use rayon::prelude::*;

use crate::distance::DistanceMap;
use crate::field::{RADIUS, Sources};
use crate::pyramid::Level;
use crate::rng::Rng;

/// Fills the unknown pixels of `level` ring by ring, outwards from the known area.
pub(crate) fn onion_peel(level: &mut Level, sources: &Sources, distance: &DistanceMap, seed: u64) {
    let (w, h) = (level.width, level.height);
    let rings = &distance.rings;
    // Candidate sources: a regular subsample of all valid centres keeps the search cheap at
    // this small scale while covering the whole known area.
    let stride = if sources.list.len() > 4096 { 2 } else { 1 };
    let candidates: Vec<usize> = sources
        .list
        .iter()
        .map(|&s| s as usize)
        .filter(|&s| (s % w) % stride == 0 && (s / w) % stride == 0)
        .collect();
    let mut filled = level.known.clone();
    for (ring_index, ring) in rings.iter().enumerate() {
        let pixels = &level.pixels;
        let filled_ref = &filled;
        let chosen: Vec<(usize, [u8; 4])> = ring
            .par_iter()
            .map(|&p| {
                let mut rng = Rng::new(&[seed, 0x0410, ring_index as u64, p as u64]);
                let s = best_source(pixels, filled_ref, w, h, p, &candidates, &mut rng);
                (p, pixels[s])
            })
            .collect();
        for (p, value) in chosen {
            level.pixels[p] = value;
            filled[p] = true;
        }
    }
}

/// The candidate whose patch best matches the filled pixels around `p` (mean squared
/// difference over the pixels both have), picked at random among near-ties so that seeds
/// give different completions.
fn best_source(
    pixels: &[[u8; 4]],
    filled: &[bool],
    w: usize,
    h: usize,
    p: usize,
    candidates: &[usize],
    rng: &mut Rng,
) -> usize {
    let (px, py) = ((p % w) as isize, (p / w) as isize);
    // Offsets of the filled neighbours of p, as (dx, dy).
    let mut offsets = Vec::with_capacity((2 * RADIUS + 1) * (2 * RADIUS + 1));
    let r = RADIUS as isize;
    for dy in -r..=r {
        for dx in -r..=r {
            let (x, y) = (px + dx, py + dy);
            if x >= 0
                && y >= 0
                && (x as usize) < w
                && (y as usize) < h
                && filled[y as usize * w + x as usize]
            {
                offsets.push((dx, dy, y as usize * w + x as usize));
            }
        }
    }
    let mut best = [(u32::MAX, candidates[0]); 3];
    for &s in candidates {
        let (sx, sy) = ((s % w) as isize, (s / w) as isize);
        let mut sum = 0u32;
        for &(dx, dy, q) in &offsets {
            let a = pixels[q];
            let b = pixels[(sy + dy) as usize * w + (sx + dx) as usize];
            for c in 0..3 {
                let d = i32::from(a[c]) - i32::from(b[c]);
                sum += (d * d) as u32;
            }
            if sum >= best[2].0 {
                break;
            }
        }
        if sum < best[2].0 {
            best[2] = (sum, s);
            best.sort_unstable();
        }
    }
    // Near-ties (within 10 % of the best) are equally good continuations: pick one at random.
    let limit = best[0].0.saturating_add(best[0].0 / 10);
    let ties = best.iter().take_while(|b| b.0 <= limit).count().max(1);
    best[rng.below(ties)].1
}

/// Fills the unknown pixels of `level` with the smooth membrane through the known border
/// (Laplace's equation, solved by Gauss-Seidel sweeps from the onion-ring order).
pub(crate) fn smooth(level: &mut Level, distance: &DistanceMap, sweeps: usize) {
    let (w, h) = (level.width, level.height);
    let mut value: Vec<[f32; 3]> = level
        .pixels
        .iter()
        .map(|p| [p[0] as f32, p[1] as f32, p[2] as f32])
        .collect();
    // Start from the nearest known pixel's colour, which is already continuous at the border.
    for ring in &distance.rings {
        for &p in ring {
            value[p] = value[distance.nearest[p] as usize];
        }
    }
    for _ in 0..sweeps {
        for ring in &distance.rings {
            for &p in ring {
                let (x, y) = (p % w, p / w);
                let mut sum = [0f32; 3];
                let mut n = 0f32;
                for (nx, ny) in [
                    (x.wrapping_sub(1), y),
                    (x + 1, y),
                    (x, y.wrapping_sub(1)),
                    (x, y + 1),
                ] {
                    if nx < w && ny < h {
                        let q = value[ny * w + nx];
                        for c in 0..3 {
                            sum[c] += q[c];
                        }
                        n += 1.0;
                    }
                }
                value[p] = sum.map(|s| s / n);
            }
        }
    }
    for ring in &distance.rings {
        for &p in ring {
            let v = value[p];
            level.pixels[p] = [
                v[0].round() as u8,
                v[1].round() as u8,
                v[2].round() as u8,
                0,
            ];
        }
    }
}
