//! Where each pixel's nearest known pixel is, and how far.
//!
//! Computed by a breadth-first sweep from the known area over the 8-neighbourhood, carrying
//! each pixel's nearest known pixel along (a chessboard-distance flood that picks the
//! Euclidean-nearest seed among its neighbours' seeds, close to an exact distance transform).

use crate::pyramid::Level;

/// Nearest known pixel and distance to it, for every pixel of a level.
pub(crate) struct DistanceMap {
    /// Index of the nearest known pixel (the pixel itself when known).
    pub nearest: Vec<u32>,
    /// Euclidean distance to `nearest`, in pixels.
    pub distance: Vec<f32>,
    /// Unknown pixels in the order they were reached, grouped in rings of equal chessboard
    /// distance, nearest ring first.
    pub rings: Vec<Vec<usize>>,
}

impl DistanceMap {
    pub fn new(level: &Level) -> DistanceMap {
        let (w, h) = (level.width, level.height);
        let mut nearest = vec![u32::MAX; w * h];
        let mut distance = vec![f32::INFINITY; w * h];
        let mut frontier = Vec::new();
        for i in 0..w * h {
            if level.known[i] {
                nearest[i] = i as u32;
                distance[i] = 0.0;
                frontier.push(i);
            }
        }
        let euclid = |a: usize, b: usize| {
            let (dx, dy) = (
                (a % w) as f32 - (b % w) as f32,
                (a / w) as f32 - (b / w) as f32,
            );
            (dx * dx + dy * dy).sqrt()
        };
        let mut rings = Vec::new();
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for &i in &frontier {
                let (x, y) = (i % w, i / w);
                for ny in y.saturating_sub(1)..(y + 2).min(h) {
                    for nx in x.saturating_sub(1)..(x + 2).min(w) {
                        let n = ny * w + nx;
                        if nearest[n] == u32::MAX {
                            // Reached for the first time in this ring: claim it now, pick its
                            // best seed once the whole ring is known (below).
                            nearest[n] = u32::MAX - 1;
                            next.push(n);
                        }
                    }
                }
            }
            next.sort_unstable();
            for &n in &next {
                let (x, y) = (n % w, n / w);
                let mut best = (f32::INFINITY, u32::MAX);
                for ny in y.saturating_sub(1)..(y + 2).min(h) {
                    for nx in x.saturating_sub(1)..(x + 2).min(w) {
                        let seed = nearest[ny * w + nx];
                        if seed < u32::MAX - 1 {
                            let d = euclid(n, seed as usize);
                            if d < best.0 || (d == best.0 && seed < best.1) {
                                best = (d, seed);
                            }
                        }
                    }
                }
                (distance[n], nearest[n]) = best;
            }
            if !next.is_empty() {
                rings.push(next.clone());
            }
            frontier = next;
        }
        DistanceMap {
            nearest,
            distance,
            rings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, RgbImage};

    #[test]
    fn nearest_known_pixel_of_a_frame() {
        // Known box [4, 8) × [3, 6) in a 12 × 10 canvas.
        let mask = GrayImage::from_fn(12, 10, |x, y| {
            Luma([if (4..8).contains(&x) && (3..6).contains(&y) {
                0
            } else {
                255
            }])
        });
        let d = DistanceMap::new(&Level::from_image(&RgbImage::new(12, 10), &mask));
        let at = |x: usize, y: usize| {
            (
                d.nearest[y * 12 + x] as usize % 12,
                d.nearest[y * 12 + x] as usize / 12,
            )
        };
        assert_eq!(at(5, 4), (5, 4));
        assert_eq!(at(5, 0), (5, 3)); // straight above the box
        assert_eq!(at(11, 4), (7, 4)); // right of it
        assert_eq!(at(0, 0), (4, 3)); // the corner
        assert!((d.distance[0] - 5.0).abs() < 1e-6);
        assert_eq!(d.rings.len(), 4);
        assert_eq!(d.rings.iter().map(Vec::len).sum::<usize>(), 120 - 12);
    }
}
