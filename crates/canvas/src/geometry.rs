//! The geometry rule of SPEC 1.1 and 1.2: how many pixels each side gets, and where the
//! original sits on the canvas.
//!
//! Simple form (SPEC 1.1): for an expanded axis of original length `L`, the new length is
//! `N = round(L × ratio)` (half away from zero) and `A = N − L` pixels are added. One requested
//! side gets all of `A`; when both are requested the left (top) side gets `floor(A / 2)` and the
//! right (bottom) side the rest.
//!
//! Per-side form (SPEC 1.2, Kling's official body): each side gets `round(L × ratio)` pixels,
//! with `L` the image's height for up/down and its width for left/right.

use std::fmt;
use std::str::FromStr;

use crate::{CanvasError, Limits};

/// One side of the original image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Top,
    Bottom,
    Left,
    Right,
}

impl Side {
    /// All four sides, in the order `top, bottom, left, right`.
    pub const ALL: [Side; 4] = [Side::Top, Side::Bottom, Side::Left, Side::Right];

    /// The name used in `direction` strings.
    pub fn name(self) -> &'static str {
        match self {
            Side::Top => "top",
            Side::Bottom => "bottom",
            Side::Left => "left",
            Side::Right => "right",
        }
    }
}

/// The set of sides named by a simple-form `direction`.
///
/// Parsed from `left`, `right`, `top`, `bottom`, `all`, or a comma list such as `left,right`
/// (whitespace around names ignored, case-insensitive). A side named twice, `all` together with
/// another name, or an unknown name is an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Sides {
    pub top: bool,
    pub bottom: bool,
    pub left: bool,
    pub right: bool,
}

impl Sides {
    /// Every side.
    pub const ALL: Sides = Sides {
        top: true,
        bottom: true,
        left: true,
        right: true,
    };

    /// Whether `side` is in the set.
    pub fn contains(self, side: Side) -> bool {
        match side {
            Side::Top => self.top,
            Side::Bottom => self.bottom,
            Side::Left => self.left,
            Side::Right => self.right,
        }
    }

    fn insert(&mut self, side: Side) -> bool {
        let slot = match side {
            Side::Top => &mut self.top,
            Side::Bottom => &mut self.bottom,
            Side::Left => &mut self.left,
            Side::Right => &mut self.right,
        };
        !std::mem::replace(slot, true)
    }

    /// Whether no side is in the set.
    pub fn is_empty(self) -> bool {
        self == Sides::default()
    }
}

impl FromStr for Sides {
    type Err = CanvasError;

    fn from_str(direction: &str) -> Result<Self, Self::Err> {
        let mut sides = Sides::default();
        let mut any = false;
        for raw in direction.split(',') {
            let name = raw.trim();
            if name.is_empty() {
                continue;
            }
            any = true;
            let named: &[Side] = match name.to_ascii_lowercase().as_str() {
                "top" => &[Side::Top],
                "bottom" => &[Side::Bottom],
                "left" => &[Side::Left],
                "right" => &[Side::Right],
                "all" => &Side::ALL,
                _ => {
                    return Err(CanvasError::UnknownSide {
                        name: name.to_string(),
                    });
                }
            };
            for &side in named {
                if !sides.insert(side) {
                    return Err(CanvasError::DuplicateSide {
                        name: side.name().to_string(),
                    });
                }
            }
        }
        if !any {
            return Err(CanvasError::EmptyDirection);
        }
        Ok(sides)
    }
}

impl fmt::Display for Sides {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Sides::ALL {
            return f.write_str("all");
        }
        let names: Vec<&str> = Side::ALL
            .iter()
            .filter(|&&s| self.contains(s))
            .map(|s| s.name())
            .collect();
        f.write_str(&names.join(","))
    }
}

/// A validated expansion request, in either of the two forms of the SPEC.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expansion {
    /// SPEC 1.1: the named sides grow so that each expanded axis becomes `ratio` times longer.
    Uniform { sides: Sides, ratio: f64 },
    /// SPEC 1.2: each side grows by its ratio times the image's length on that axis.
    PerSide {
        up: f64,
        down: f64,
        left: f64,
        right: f64,
    },
}

/// Allowed range of the simple form's `expansion_ratio`.
pub const UNIFORM_RATIO_RANGE: &str = "(1, 3]";
/// Allowed range of each per-side ratio.
pub const PER_SIDE_RATIO_RANGE: &str = "[0, 2]";

impl Expansion {
    /// The simple form: `ratio` must be in (1, 3] and `sides` not empty.
    pub fn uniform(sides: Sides, ratio: f64) -> Result<Self, CanvasError> {
        if !(ratio.is_finite() && ratio > 1.0 && ratio <= 3.0) {
            return Err(CanvasError::RatioOutOfRange {
                field: "expansion_ratio",
                value: ratio,
                range: UNIFORM_RATIO_RANGE,
            });
        }
        if sides.is_empty() {
            return Err(CanvasError::EmptyDirection);
        }
        Ok(Expansion::Uniform { sides, ratio })
    }

    /// The per-side form: each ratio must be in [0, 2]. Whether anything grows is checked
    /// by [`plan`], once the image size is known.
    pub fn per_side(up: f64, down: f64, left: f64, right: f64) -> Result<Self, CanvasError> {
        for (field, value) in [
            ("up_expansion_ratio", up),
            ("down_expansion_ratio", down),
            ("left_expansion_ratio", left),
            ("right_expansion_ratio", right),
        ] {
            if !(value.is_finite() && (0.0..=2.0).contains(&value)) {
                return Err(CanvasError::RatioOutOfRange {
                    field,
                    value,
                    range: PER_SIDE_RATIO_RANGE,
                });
            }
        }
        Ok(Expansion::PerSide {
            up,
            down,
            left,
            right,
        })
    }

    /// Pixels added on each side of a `width × height` original.
    ///
    /// Saturates instead of overflowing, so absurd sizes end up as a canvas-limit error in
    /// [`plan`] rather than a panic.
    pub fn padding(&self, width: u32, height: u32) -> Padding {
        match *self {
            Expansion::Uniform { sides, ratio } => {
                let (top, bottom) = split_axis(height, ratio, sides.top, sides.bottom);
                let (left, right) = split_axis(width, ratio, sides.left, sides.right);
                Padding {
                    top,
                    bottom,
                    left,
                    right,
                }
            }
            Expansion::PerSide {
                up,
                down,
                left,
                right,
            } => Padding {
                top: scaled(height, up),
                bottom: scaled(height, down),
                left: scaled(width, left),
                right: scaled(width, right),
            },
        }
    }
}

/// `round(length × ratio)` with half away from zero (`f64::round`), saturated to `u32`.
fn scaled(length: u32, ratio: f64) -> u32 {
    // `as` saturates for out-of-range floats; inputs here are finite and non-negative.
    (f64::from(length) * ratio).round() as u32
}

/// SPEC 1.1 for one axis: (pixels before, pixels after).
fn split_axis(length: u32, ratio: f64, before: bool, after: bool) -> (u32, u32) {
    if !(before || after) {
        return (0, 0);
    }
    let added = scaled(length, ratio).saturating_sub(length);
    match (before, after) {
        (true, true) => (added / 2, added - added / 2),
        (true, false) => (added, 0),
        _ => (0, added),
    }
}

/// Pixels added on each side of the original.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Padding {
    pub top: u32,
    pub bottom: u32,
    pub left: u32,
    pub right: u32,
}

impl Padding {
    /// Pixels added on `side`.
    pub fn get(&self, side: Side) -> u32 {
        match side {
            Side::Top => self.top,
            Side::Bottom => self.bottom,
            Side::Left => self.left,
            Side::Right => self.right,
        }
    }

    /// Whether no side grows.
    pub fn is_zero(&self) -> bool {
        *self == Padding::default()
    }
}

/// An axis-aligned rectangle in pixel coordinates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// One past the last column.
    pub fn right(&self) -> u32 {
        self.x + self.width
    }

    /// One past the last row.
    pub fn bottom(&self) -> u32 {
        self.y + self.height
    }

    /// Whether the pixel `(x, y)` lies inside.
    pub fn contains(&self, x: u32, y: u32) -> bool {
        x >= self.x && x < self.right() && y >= self.y && y < self.bottom()
    }
}

/// The canvas of an expansion and the box of the original in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CanvasPlan {
    /// Canvas width in pixels.
    pub width: u32,
    /// Canvas height in pixels.
    pub height: u32,
    /// Where the original's pixels go; everything else is generated.
    pub original: Rect,
}

impl CanvasPlan {
    /// Pixels added on each side.
    pub fn padding(&self) -> Padding {
        let o = &self.original;
        Padding {
            top: o.y,
            bottom: self.height - o.bottom(),
            left: o.x,
            right: self.width - o.right(),
        }
    }

    /// Number of canvas pixels.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// The generation mask in the convention of inpainting models: 255 where pixels are to be
    /// generated, 0 on the original.
    pub fn mask(&self) -> image::GrayImage {
        image::GrayImage::from_fn(self.width, self.height, |x, y| {
            image::Luma([if self.original.contains(x, y) { 0 } else { 255 }])
        })
    }
}

/// Checks a `width × height` image against `limits` and plans its expansion.
///
/// This is the single place where the SPEC's geometry and limits meet: the CLI, the server and
/// the tests all plan through it.
pub fn plan(
    width: u32,
    height: u32,
    expansion: &Expansion,
    limits: &Limits,
) -> Result<CanvasPlan, CanvasError> {
    limits.check_image(width, height)?;
    let padding = expansion.padding(width, height);
    if padding.is_zero() {
        return Err(CanvasError::NoGrowth { width, height });
    }
    let canvas_width = u64::from(width) + u64::from(padding.left) + u64::from(padding.right);
    let canvas_height = u64::from(height) + u64::from(padding.top) + u64::from(padding.bottom);
    limits.check_canvas(width, height, canvas_width, canvas_height)?;
    // check_canvas bounds the canvas far below u32::MAX, so these conversions cannot fail.
    Ok(CanvasPlan {
        width: u32::try_from(canvas_width).expect("canvas width checked against the limits"),
        height: u32::try_from(canvas_height).expect("canvas height checked against the limits"),
        original: Rect {
            x: padding.left,
            y: padding.top,
            width,
            height,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sides(s: &str) -> Sides {
        s.parse().unwrap()
    }

    macro_rules! direction_error {
        ($name:ident, $input:expr, $pattern:pat) => {
            #[test]
            fn $name() {
                let err = $input.parse::<Sides>().unwrap_err();
                assert!(matches!(err, $pattern), "{err:?}");
            }
        };
    }

    direction_error!(unknown_side, "up", CanvasError::UnknownSide { .. });
    direction_error!(
        duplicate_side,
        "left, left",
        CanvasError::DuplicateSide { .. }
    );
    direction_error!(all_and_side, "all,top", CanvasError::DuplicateSide { .. });
    direction_error!(empty_direction, " , ", CanvasError::EmptyDirection);
    direction_error!(blank_direction, "", CanvasError::EmptyDirection);

    #[test]
    fn parses_directions() {
        assert_eq!(sides("all"), Sides::ALL);
        assert_eq!(sides(" Left , right "), sides("left,right"));
        assert_eq!(sides("left,top").to_string(), "top,left");
        assert_eq!(sides("top,bottom,left,right").to_string(), "all");
        assert!(sides("bottom").bottom && !sides("bottom").top);
    }

    #[test]
    fn rejects_ratios_out_of_range() {
        for r in [1.0, 0.5, 3.0001, f64::NAN, f64::INFINITY] {
            assert!(Expansion::uniform(Sides::ALL, r).is_err(), "{r}");
        }
        assert!(Expansion::uniform(Sides::ALL, 3.0).is_ok());
        for r in [-0.1, 2.01, f64::NAN] {
            let err = Expansion::per_side(0.0, r, 0.0, 0.0).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("down_expansion_ratio must be in [0, 2]")
            );
        }
    }

    #[test]
    fn eval_task_geometry() {
        // Tasks from the eval set (../shared/eval/tasks.json): simple and per-side forms agree.
        let limits = Limits::default();
        let p = plan(
            341,
            512,
            &Expansion::uniform(sides("right"), 1.5).unwrap(),
            &limits,
        );
        assert_eq!(
            p.unwrap(),
            CanvasPlan {
                width: 512,
                height: 512,
                original: Rect {
                    x: 0,
                    y: 0,
                    width: 341,
                    height: 512
                }
            }
        );
        let per_side = Expansion::per_side(0.0, 0.0, 0.0, 0.501466275659824).unwrap();
        assert_eq!(plan(341, 512, &per_side, &limits).unwrap().width, 512);
        let p = plan(
            512,
            366,
            &Expansion::uniform(sides("top,bottom"), 1.4).unwrap(),
            &limits,
        );
        assert_eq!(
            p.unwrap().original,
            Rect {
                x: 0,
                y: 73,
                width: 512,
                height: 366
            }
        );
    }

    #[test]
    fn odd_split_gives_the_extra_pixel_to_right_and_bottom() {
        // 301 × 1.5 = 451.5 → 452, so 151 px are added: 75 left, 76 right.
        let p = Expansion::uniform(Sides::ALL, 1.5)
            .unwrap()
            .padding(301, 301);
        assert_eq!((p.left, p.right, p.top, p.bottom), (75, 76, 75, 76));
    }

    #[test]
    fn tiny_ratio_that_adds_nothing_is_an_error() {
        let e = Expansion::uniform(sides("right"), 1.001).unwrap();
        assert!(matches!(
            plan(400, 400, &e, &Limits::default()),
            Err(CanvasError::NoGrowth { .. })
        ));
        let zero = Expansion::per_side(0.0, 0.0, 0.0, 0.0).unwrap();
        assert!(matches!(
            plan(400, 400, &zero, &Limits::default()),
            Err(CanvasError::NoGrowth { .. })
        ));
    }

    #[test]
    fn mask_marks_generated_pixels() {
        let p = plan(
            300,
            300,
            &Expansion::uniform(sides("left"), 1.5).unwrap(),
            &Limits::default(),
        )
        .unwrap();
        let mask = p.mask();
        assert_eq!(mask.get_pixel(149, 10).0, [255]);
        assert_eq!(mask.get_pixel(150, 10).0, [0]);
    }

    fn arb_sides() -> impl Strategy<Value = Sides> {
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_filter("at least one side", |s| s.0 || s.1 || s.2 || s.3)
            .prop_map(|(top, bottom, left, right)| Sides {
                top,
                bottom,
                left,
                right,
            })
    }

    proptest! {
        /// SPEC 1.1 restated independently: N = round(L × r), split floor / rest.
        #[test]
        fn uniform_rule(w in 1u32..20_000, h in 1u32..20_000, ratio in 1.0001f64..=3.0, s in arb_sides()) {
            let p = Expansion::uniform(s, ratio).unwrap().padding(w, h);
            let grow = |l: u32| (l as f64 * ratio + 0.5).floor() as u32 - l;
            let (added_w, added_h) = (grow(w), grow(h));
            let expect = |before: bool, after: bool, added: u32| match (before, after) {
                (false, false) => (0, 0),
                (true, false) => (added, 0),
                (false, true) => (0, added),
                (true, true) => (added / 2, added - added / 2),
            };
            prop_assert_eq!((p.top, p.bottom), expect(s.top, s.bottom, added_h));
            prop_assert_eq!((p.left, p.right), expect(s.left, s.right, added_w));
            // The split of an odd count always favours the right / bottom side by one.
            if s.left && s.right {
                prop_assert!(p.right == p.left || p.right == p.left + 1);
            }
        }

        /// A successful plan puts the original inside the canvas at the padding offsets,
        /// respects every limit, and round-trips through the per-side form when its ratios
        /// are exact.
        #[test]
        fn plans_respect_limits(w in 300u32..3000, h in 300u32..3000, ratio in 1.0001f64..=3.0, s in arb_sides()) {
            let limits = Limits::default();
            let e = Expansion::uniform(s, ratio).unwrap();
            match plan(w, h, &e, &limits) {
                Ok(p) => {
                    let pad = e.padding(w, h);
                    prop_assert_eq!(p.padding(), pad);
                    prop_assert_eq!(p.original, Rect { x: pad.left, y: pad.top, width: w, height: h });
                    prop_assert!(p.original.right() <= p.width && p.original.bottom() <= p.height);
                    prop_assert!(p.pixels() <= limits.max_canvas_pixels);
                    prop_assert!(p.pixels() as f64 <= limits.max_area_ratio * (w as f64 * h as f64) + 1e-6);
                    // Per-side ratios that reproduce the same pixels (as the eval harness does).
                    let r = |added: u32, len: u32| added as f64 / len as f64;
                    let per = Expansion::per_side(r(pad.top, h), r(pad.bottom, h), r(pad.left, w), r(pad.right, w));
                    if let Ok(per) = per {
                        prop_assert_eq!(plan(w, h, &per, &limits).unwrap(), p);
                    }
                }
                Err(CanvasError::AspectRatio { .. } | CanvasError::CanvasAreaRatio { .. }
                    | CanvasError::CanvasTooLarge { .. } | CanvasError::NoGrowth { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }

        /// Padding never panics, whatever the numbers.
        #[test]
        fn padding_is_total(w in any::<u32>(), h in any::<u32>(), up in 0.0f64..=2.0, right in 0.0f64..=2.0) {
            let p = Expansion::per_side(up, 0.0, 0.0, right).unwrap().padding(w, h);
            prop_assert!(p.top as f64 <= h as f64 * 2.0 + 1.0);
        }
    }
}
