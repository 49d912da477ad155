//! The nearest-neighbour field: for every patch that touches unknown pixels, the fully known
//! patch that resembles it most, found by PatchMatch (Barnes et al. 2009): propagation from
//! neighbours plus random search at shrinking radii.
//!
//! Parallel and deterministic: target rows are cut into bands of fixed height, and even bands
//! run in parallel, then odd ones. A band only reads the field of the bands beside it, which
//! are not being written at the same time, and draws from its own random stream, so the result
//! does not depend on the number of threads.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use rayon::prelude::*;

use crate::pyramid::{Level, Pixel};
use crate::rng::Rng;

/// Patch radius: patches are `SIZE × SIZE`.
pub(crate) const RADIUS: usize = 3;
/// Patch side.
pub(crate) const SIZE: usize = 2 * RADIUS + 1;
/// Rows per band of the parallel sweep.
const BAND: usize = 8;

/// Summed-area table of a per-pixel count, to ask "how many X in this patch" in O(1).
struct Integral {
    width: usize,
    sums: Vec<u32>,
}

impl Integral {
    fn new(width: usize, height: usize, value: impl Fn(usize) -> bool) -> Integral {
        let stride = width + 1;
        let mut sums = vec![0u32; stride * (height + 1)];
        for y in 0..height {
            let mut row = 0u32;
            for x in 0..width {
                row += u32::from(value(y * width + x));
                sums[(y + 1) * stride + x + 1] = sums[y * stride + x + 1] + row;
            }
        }
        Integral { width, sums }
    }

    /// Count in the patch centred on `(x, y)`, which must lie `RADIUS` inside the image.
    fn patch(&self, x: usize, y: usize) -> u32 {
        let stride = self.width + 1;
        let (x0, y0, x1, y1) = (x - RADIUS, y - RADIUS, x + RADIUS + 1, y + RADIUS + 1);
        self.sums[y1 * stride + x1] + self.sums[y0 * stride + x0]
            - self.sums[y0 * stride + x1]
            - self.sums[y1 * stride + x0]
    }
}

/// Centres of patches that lie fully in the known area: the patches content is copied from.
pub(crate) struct Sources {
    pub ok: Vec<bool>,
    pub list: Vec<u32>,
    /// Bounding box of the valid centres, inclusive.
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl Sources {
    pub fn new(level: &Level) -> Sources {
        let (w, h) = (level.width, level.height);
        let unknown = Integral::new(w, h, |i| !level.known[i]);
        let mut ok = vec![false; w * h];
        let mut list = Vec::new();
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in RADIUS..h.saturating_sub(RADIUS) {
            for x in RADIUS..w.saturating_sub(RADIUS) {
                if unknown.patch(x, y) == 0 {
                    let i = y * w + x;
                    ok[i] = true;
                    list.push(i as u32);
                    (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
                }
            }
        }
        Sources {
            ok,
            list,
            x0,
            y0,
            x1,
            y1,
        }
    }

    /// How many valid source centres `level` has (used to decide the pyramid's depth).
    pub fn count(level: &Level, _radius: usize) -> usize {
        Sources::new(level).list.len()
    }
}

/// Centres of patches that contain at least one unknown pixel: the patches to complete.
pub(crate) struct Targets {
    pub is: Vec<bool>,
    /// Targets whose patch also holds known pixels (the band along the border).
    pub mixed: Vec<bool>,
    /// First and one-past-last row that holds targets.
    pub rows: (usize, usize),
}

impl Targets {
    pub fn new(level: &Level) -> Targets {
        let (w, h) = (level.width, level.height);
        let unknown = Integral::new(w, h, |i| !level.known[i]);
        let mut is = vec![false; w * h];
        let mut mixed = vec![false; w * h];
        let (mut first, mut last) = (usize::MAX, 0);
        for y in RADIUS..h.saturating_sub(RADIUS) {
            for x in RADIUS..w.saturating_sub(RADIUS) {
                let n = unknown.patch(x, y);
                if n > 0 {
                    is[y * w + x] = true;
                    mixed[y * w + x] = (n as usize) < SIZE * SIZE;
                    first = first.min(y);
                    last = y + 1;
                }
            }
        }
        Targets {
            is,
            mixed,
            rows: if first == usize::MAX {
                (0, 0)
            } else {
                (first, last)
            },
        }
    }
}

/// Sum of squared differences between the patches centred on `a` and `b`, stopping early once
/// it reaches `limit` (the result is then some value ≥ `limit`).
#[inline]
pub(crate) fn patch_ssd(pixels: &[Pixel], width: usize, a: usize, b: usize, limit: u32) -> u32 {
    let (a0, b0) = (a - RADIUS * width - RADIUS, b - RADIUS * width - RADIUS);
    let mut sum = 0u32;
    for row in 0..SIZE {
        sum += row_ssd(
            &pixels[a0 + row * width..][..SIZE],
            &pixels[b0 + row * width..][..SIZE],
        );
        if sum >= limit {
            return sum;
        }
    }
    sum
}

/// Sum of squared differences of two patch rows. A fixed-length loop over 16-bit differences,
/// which the compiler turns into SIMD multiply-adds (the hot loop of the whole completion).
#[inline]
pub(crate) fn row_ssd(a: &[Pixel], b: &[Pixel]) -> u32 {
    let a: &[u8; SIZE * 4] = a.as_flattened().try_into().expect("a patch row");
    let b: &[u8; SIZE * 4] = b.as_flattened().try_into().expect("a patch row");
    let mut sum = 0i32;
    for i in 0..SIZE * 4 {
        let d = i16::from(a[i]) - i16::from(b[i]);
        sum += i32::from(d) * i32::from(d);
    }
    sum as u32
}

/// The matching cost of a (target, source) pair: patch SSD plus a locality prior.
///
/// The prior charges `locality × d²`, with `d` the distance from the source centre to the known
/// pixel nearest the target. Outpainted areas are constrained on one side only; among patches
/// that fit about equally well, this prefers the ones from the nearby part of the image, so sky
/// is continued from the sky above the target rather than from haze at the horizon, and far
/// objects are not duplicated next to the border.
pub(crate) struct Matcher<'a> {
    pub pixels: &'a [Pixel],
    pub known: &'a [bool],
    pub mixed: &'a [bool],
    /// Weight of a known pixel in a mixed target patch (unknown ones weigh 1).
    pub known_weight: u32,
    pub width: usize,
    pub nearest: &'a [u32],
    /// Cost per squared pixel of distance.
    pub locality: f32,
}

impl Matcher<'_> {
    /// Cost of copying the patch at `s` to `t`; stops early (returning something ≥ `limit`)
    /// once it cannot beat `limit`.
    #[inline]
    pub fn cost(&self, t: usize, s: usize, limit: u32) -> u32 {
        let w = self.width;
        let c = self.nearest[t] as usize;
        let (dx, dy) = (
            (s % w) as f32 - (c % w) as f32,
            (s / w) as f32 - (c / w) as f32,
        );
        let prior = (self.locality * (dx * dx + dy * dy)) as u32;
        if prior >= limit {
            return prior;
        }
        // The prior alone can come close to u32::MAX for far sources on a long canvas.
        let ssd = if self.mixed[t] {
            self.weighted_ssd(t, s, limit - prior)
        } else {
            patch_ssd(self.pixels, w, t, s, limit - prior)
        };
        prior.saturating_add(ssd)
    }

    /// SSD in which the target's known pixels count `known_weight` times: along the border
    /// they are the only certain information, and a patch that continues them must win over
    /// one that merely agrees with the current guess beyond the border.
    fn weighted_ssd(&self, t: usize, s: usize, limit: u32) -> u32 {
        let w = self.width;
        let (t0, s0) = (t - RADIUS * w - RADIUS, s - RADIUS * w - RADIUS);
        let mut sum = 0u32;
        for row in 0..SIZE {
            for col in 0..SIZE {
                let (a, b) = (t0 + row * w + col, s0 + row * w + col);
                let (p, q) = (self.pixels[a], self.pixels[b]);
                let mut d2 = 0u32;
                for c in 0..3 {
                    let d = i32::from(p[c]) - i32::from(q[c]);
                    d2 += (d * d) as u32;
                }
                sum += if self.known[a] {
                    d2 * self.known_weight
                } else {
                    d2
                };
            }
            if sum >= limit {
                return sum;
            }
        }
        sum
    }
}

/// Nearest-neighbour field: source centre and cost for each target centre (other entries are
/// unused). Atomics with relaxed ordering cost nothing on the platforms we target and let the
/// band sweep read its neighbours' entries safely.
pub(crate) struct Field {
    pub nnf: Vec<AtomicU32>,
    pub cost: Vec<AtomicU32>,
}

/// How one PatchMatch sweep searches.
pub(crate) struct Search {
    /// Identifies the sweep's random streams (seed, level, iteration).
    pub stream: [u64; 3],
    /// Start radius of the local random search, in pixels.
    pub max_radius: usize,
    /// Candidates drawn uniformly from all sources per target, besides the local search.
    pub global_samples: usize,
    /// Sweep from the bottom-right (propagating from right and below) instead of the top-left.
    pub reverse: bool,
}

impl Field {
    /// A field that maps each target to a uniformly random source.
    pub fn random(matcher: &Matcher, targets: &Targets, sources: &Sources, seed: u64) -> Field {
        let mut rng = Rng::new(&[seed, 0xF1E1D]);
        let nnf = targets
            .is
            .iter()
            .map(|&t| {
                let s = if t {
                    sources.list[rng.below(sources.list.len())]
                } else {
                    0
                };
                AtomicU32::new(s)
            })
            .collect();
        let field = Field {
            nnf,
            cost: (0..targets.is.len())
                .map(|_| AtomicU32::new(u32::MAX))
                .collect(),
        };
        field.recompute_costs(matcher, targets);
        field
    }

    /// The field of the next finer level: each target takes its parent's source, scaled by 2
    /// and offset by its position within the parent, moved into the valid area if needed.
    /// Costs are left unset: the caller votes, then recomputes them.
    pub fn upsample(
        coarse: &Field,
        coarse_level: &Level,
        level: &Level,
        targets: &Targets,
        sources: &Sources,
        seed: u64,
    ) -> Field {
        let (w, cw) = (level.width, coarse_level.width);
        let mut rng = Rng::new(&[seed, 0x0B5A_4D1E]);
        let coarse_targets = Targets::new(coarse_level);
        let nnf = (0..level.len())
            .map(|i| {
                if !targets.is[i] {
                    return AtomicU32::new(0);
                }
                let (x, y) = (i % w, i / w);
                let parent = (y / 2).min(coarse_level.height - 1) * cw + (x / 2).min(cw - 1);
                // A parent that was not a target lay in the known area: the closest source to
                // the target itself is then the natural start (it continues what is there).
                let (sx, sy) = if coarse_targets.is[parent] {
                    let s = coarse.nnf[parent].load(Relaxed) as usize;
                    (2 * (s % cw) + x % 2, 2 * (s / cw) + y % 2)
                } else {
                    (x, y)
                };
                let (sx, sy) = (
                    sx.clamp(sources.x0, sources.x1),
                    sy.clamp(sources.y0, sources.y1),
                );
                let s = Some(sy * w + sx).filter(|&s| sources.ok[s]);
                let s = s.unwrap_or_else(|| sources.list[rng.below(sources.list.len())] as usize);
                AtomicU32::new(s as u32)
            })
            .collect();
        Field {
            nnf,
            cost: (0..level.len()).map(|_| AtomicU32::new(u32::MAX)).collect(),
        }
    }

    /// Recomputes every target's cost after the image changed.
    pub fn recompute_costs(&self, matcher: &Matcher, targets: &Targets) {
        self.cost.par_iter().enumerate().for_each(|(t, cost)| {
            if targets.is[t] {
                let s = self.nnf[t].load(Relaxed) as usize;
                cost.store(matcher.cost(t, s, u32::MAX), Relaxed);
            }
        });
    }

    /// One PatchMatch sweep: propagation and random search for every target.
    pub fn improve(
        &self,
        matcher: &Matcher,
        targets: &Targets,
        sources: &Sources,
        search: &Search,
    ) {
        let (row_start, row_end) = targets.rows;
        let bands = (row_end - row_start).div_ceil(BAND);
        for parity in 0..2 {
            (0..bands)
                .into_par_iter()
                .filter(|b| b % 2 == parity)
                .for_each(|band| {
                    let y0 = row_start + band * BAND;
                    let y1 = (y0 + BAND).min(row_end);
                    let mut rng = Rng::new(&[
                        search.stream[0],
                        search.stream[1],
                        search.stream[2],
                        band as u64,
                    ]);
                    self.sweep_band(matcher, targets, sources, search, y0..y1, &mut rng);
                });
        }
    }

    fn sweep_band(
        &self,
        matcher: &Matcher,
        targets: &Targets,
        sources: &Sources,
        search: &Search,
        rows: std::ops::Range<usize>,
        rng: &mut Rng,
    ) {
        let w = matcher.width;
        let (step, xs): (isize, Box<dyn Iterator<Item = usize>>) = if search.reverse {
            (-1, Box::new(rows.rev()))
        } else {
            (1, Box::new(rows))
        };
        for y in xs {
            let cols = RADIUS..w - RADIUS;
            let cols: Box<dyn Iterator<Item = usize>> = if search.reverse {
                Box::new(cols.rev())
            } else {
                Box::new(cols)
            };
            for x in cols {
                let t = y * w + x;
                if !targets.is[t] {
                    continue;
                }
                let mut best = self.nnf[t].load(Relaxed) as usize;
                let mut best_cost = self.cost[t].load(Relaxed);
                let consider = |s: usize, best: &mut usize, best_cost: &mut u32| {
                    if s != *best {
                        let c = matcher.cost(t, s, *best_cost);
                        if c < *best_cost {
                            *best = s;
                            *best_cost = c;
                        }
                    }
                };
                // Propagation: the neighbour already visited in this sweep, shifted back by one.
                for (dx, dy) in [(step, 0), (0, step)] {
                    let (nx, ny) = (x as isize - dx, y as isize - dy);
                    let n = ny as usize * w + nx as usize;
                    if !targets.is[n] {
                        continue;
                    }
                    let s = self.nnf[n].load(Relaxed) as usize;
                    let (sx, sy) = ((s % w) as isize + dx, (s / w) as isize + dy);
                    if sx < 0 || sy < 0 {
                        continue;
                    }
                    let c = sy as usize * w + sx as usize;
                    if c < sources.ok.len() && sources.ok[c] {
                        consider(c, &mut best, &mut best_cost);
                    }
                }
                // Random search around the current best, at halving radii.
                let mut radius = search.max_radius;
                while radius >= 1 {
                    let (bx, by) = (best % w, best / w);
                    let sx = (bx + rng.below(2 * radius + 1)).saturating_sub(radius);
                    let sy = (by + rng.below(2 * radius + 1)).saturating_sub(radius);
                    let c = sy.clamp(sources.y0, sources.y1) * w + sx.clamp(sources.x0, sources.x1);
                    if sources.ok[c] {
                        consider(c, &mut best, &mut best_cost);
                    }
                    radius /= 2;
                }
                for _ in 0..search.global_samples {
                    let c = sources.list[rng.below(sources.list.len())] as usize;
                    consider(c, &mut best, &mut best_cost);
                }
                self.nnf[t].store(best as u32, Relaxed);
                self.cost[t].store(best_cost, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn level(w: u32, h: u32, fill_from: u32) -> Level {
        let image = RgbImage::from_fn(w, h, |x, y| {
            Rgb([
                (x * 13 % 251) as u8,
                (y * 7 % 253) as u8,
                ((x * y) % 256) as u8,
            ])
        });
        let mask = GrayImage::from_fn(w, h, |x, _| Luma([if x >= fill_from { 255 } else { 0 }]));
        Level::from_image(&image, &mask)
    }

    #[test]
    fn sources_and_targets_partition_patch_centres() {
        let l = level(40, 30, 25);
        let (s, t) = (Sources::new(&l), Targets::new(&l));
        // Sources: patches entirely left of column 25. Targets: patches reaching column ≥ 25.
        assert_eq!((s.x0, s.x1, s.y0, s.y1), (3, 21, 3, 26));
        for y in RADIUS..30 - RADIUS {
            for x in RADIUS..40 - RADIUS {
                let i = y * 40 + x;
                assert_ne!(s.ok[i], t.is[i], "({x}, {y})");
            }
        }
        assert_eq!(t.rows, (3, 27));
    }

    #[test]
    fn patchmatch_finds_exact_copies() {
        // The unknown half is filled with a copy of the known half shifted by 20 px; PatchMatch
        // must find zero-cost matches for targets whose patch is inside the copy.
        let mut l = level(60, 40, 30);
        for y in 0..40 {
            for x in 30..60 {
                l.pixels[y * 60 + x] = l.pixels[y * 60 + x - 20];
            }
        }
        let (s, t) = (Sources::new(&l), Targets::new(&l));
        let nearest: Vec<u32> = (0..l.len() as u32).collect();
        let matcher = Matcher {
            pixels: &l.pixels,
            known: &l.known,
            mixed: &t.mixed,
            known_weight: 1,
            width: 60,
            nearest: &nearest,
            locality: 0.0,
        };
        let field = Field::random(&matcher, &t, &s, 1);
        for i in 0..6 {
            let search = Search {
                stream: [1, 0, i],
                max_radius: 60,
                global_samples: 1,
                reverse: i % 2 == 1,
            };
            field.improve(&matcher, &t, &s, &search);
        }
        let exact = (0..l.len())
            .filter(|&i| t.is[i] && (33..47).contains(&(i % 60)))
            .filter(|&i| field.cost[i].load(Relaxed) == 0)
            .count();
        // Patches centred on 33..47 lie in one copied period (columns 30..50 = 10..30).
        let total = (0..l.len())
            .filter(|&i| t.is[i] && (33..47).contains(&(i % 60)))
            .count();
        assert!(exact * 10 >= total * 9, "{exact} of {total}");
    }
}
