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
use crate::field::{RADIUS, SIZE, Sources};
use crate::pyramid::{Level, Pixel};
use crate::rng::Rng;

/// The search compares each unknown pixel with at most about this many candidates.
const MAX_CANDIDATES: usize = 4096;

/// Fills the unknown pixels of `level` ring by ring, outwards from the known area.
pub(crate) fn onion_peel(
    level: &mut Level,
    sources: &Sources,
    distance: &DistanceMap,
    locality: f32,
    seed: u64,
) {
    let w = level.width;
    let rings = &distance.rings;
    // Candidate sources: a regular subsample of all valid centres keeps the search cheap at
    // this small scale while covering the whole known area. A known area too thin to meet the
    // subsampling grid keeps all its centres.
    let stride = (sources.list.len() as f32 / MAX_CANDIDATES as f32)
        .sqrt()
        .ceil() as usize;
    let subsample = |stride: usize| -> Vec<Candidate> {
        sources
            .list
            .iter()
            .map(|&s| s as usize)
            .filter(|&s| (s % w) % stride == 0 && (s / w) % stride == 0)
            .map(|s| Candidate {
                index: s,
                x: (s % w) as f32,
                y: (s / w) as f32,
            })
            .collect()
    };
    let mut candidates = subsample(stride.max(1));
    if candidates.is_empty() {
        candidates = subsample(1);
    }
    let mut filled = level.known.clone();
    for (ring_index, ring) in rings.iter().enumerate() {
        let (current, filled_ref) = (&*level, &filled);
        let chosen: Vec<(usize, Pixel)> = ring
            .par_iter()
            .map(|&p| {
                let mut rng = Rng::new(&[seed, 0x0410, ring_index as u64, p as u64]);
                let anchor = distance.nearest[p] as usize;
                let prior = Prior { locality, anchor };
                let s = best_source(current, filled_ref, p, &candidates, prior, &mut rng);
                (p, current.pixels[s])
            })
            .collect();
        for (p, value) in chosen {
            level.pixels[p] = value;
            filled[p] = true;
        }
    }
}

/// The locality prior of the EM's matcher, for the first guess: a candidate far from the
/// target's nearest known pixel (`anchor`) pays `locality` per squared pixel of distance.
#[derive(Clone, Copy)]
struct Prior {
    locality: f32,
    anchor: usize,
}

/// A candidate source centre with its coordinates, so the search does no divisions.
#[derive(Clone, Copy)]
struct Candidate {
    index: usize,
    x: f32,
    y: f32,
}

/// The candidate whose patch best matches the filled pixels around `p` (squared differences
/// over the pixels both have, plus the locality prior), picked at random among near-ties so
/// that seeds give different completions.
fn best_source(
    level: &Level,
    filled: &[bool],
    p: usize,
    candidates: &[Candidate],
    prior: Prior,
    rng: &mut Rng,
) -> usize {
    let (pixels, w, h) = (&level.pixels, level.width, level.height);
    let (px, py) = (p % w, p / w);
    // The target patch and which of its pixels count (1 per channel byte, 0 elsewhere), so
    // that each row compares with one fixed-length masked loop.
    let mut patch = [[[0u8; 4]; SIZE]; SIZE];
    let mut weight = [[0u8; SIZE * 4]; SIZE];
    let mut rows = [0usize; SIZE];
    let (mut active, mut count) = (0, 0);
    for (dy, (patch_row, weight_row)) in patch.iter_mut().zip(&mut weight).enumerate() {
        let mut any = false;
        for dx in 0..SIZE {
            let (x, y) = (
                (px + dx).wrapping_sub(RADIUS),
                (py + dy).wrapping_sub(RADIUS),
            );
            if x < w && y < h && filled[y * w + x] {
                patch_row[dx] = pixels[y * w + x];
                weight_row[dx * 4..dx * 4 + 3].fill(1);
                count += 1;
                any = true;
            }
        }
        if any {
            rows[active] = dy;
            active += 1;
        }
    }
    let rows = &rows[..active];
    // The prior is per whole patch; scale it to the pixels compared here.
    let scale = prior.locality * count as f32 / (SIZE * SIZE) as f32;
    let (ax, ay) = ((prior.anchor % w) as f32, (prior.anchor / w) as f32);
    let mut best = [(u32::MAX, candidates[0].index); 3];
    let mut consider = |c: &Candidate| {
        let (dx, dy) = (c.x - ax, c.y - ay);
        let mut sum = (scale * (dx * dx + dy * dy)).min(u32::MAX as f32 / 2.0) as u32;
        if sum >= best[2].0 {
            return;
        }
        let corner = c.index - RADIUS * w - RADIUS;
        for &dy in rows {
            let source = &pixels[corner + dy * w..][..SIZE];
            sum += masked_row_ssd(&patch[dy], source, &weight[dy]);
            if sum >= best[2].0 {
                return;
            }
        }
        best[2] = (sum, c.index);
        best.sort_unstable();
    };
    // Candidates near the anchor first (they are sorted by index, so neighbours in the list are
    // neighbours on the canvas): good matches found early make the early exit cut more.
    let start = candidates.partition_point(|c| c.index < prior.anchor);
    let (mut after, mut before) = (candidates[start..].iter(), candidates[..start].iter().rev());
    loop {
        match (after.next(), before.next()) {
            (None, None) => break,
            (a, b) => a.into_iter().chain(b).for_each(&mut consider),
        }
    }
    // Near-ties (within 10 % of the best) are equally good continuations: pick one at random.
    let limit = best[0].0.saturating_add(best[0].0 / 10);
    let ties = best.iter().take_while(|b| b.0 <= limit).count().max(1);
    best[rng.below(ties)].1
}

/// Squared differences of a patch row and a source row, counting only the bytes whose weight
/// is 1. Fixed length, so it compiles to SIMD like [`crate::field::row_ssd`].
#[inline]
fn masked_row_ssd(a: &[Pixel; SIZE], b: &[Pixel], weight: &[u8; SIZE * 4]) -> u32 {
    let a = a.as_flattened();
    let b: &[u8; SIZE * 4] = b.as_flattened().try_into().expect("a patch row");
    let mut sum = 0i32;
    for i in 0..SIZE * 4 {
        let d = (i16::from(a[i]) - i16::from(b[i])) * i16::from(weight[i]);
        sum += i32::from(d) * i32::from(d);
    }
    sum as u32
}
