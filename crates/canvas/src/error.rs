use thiserror::Error;

/// Why an image or an expansion request cannot be planned.
///
/// Every message names the rule that was broken and the offending value, so that it can be
/// shown to a user as it is (the server answers these with 400 / 1201).
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum CanvasError {
    /// Occurs when `direction` is empty or only commas and spaces.
    #[error("direction is empty: expected left, right, top, bottom, all, or a comma list of sides")]
    EmptyDirection,
    /// Occurs when `direction` names something other than a side or `all`.
    #[error(
        "direction: unknown side \"{name}\" (expected left, right, top, bottom, all, or a comma list of sides)"
    )]
    UnknownSide { name: String },
    /// Occurs when `direction` names the same side twice (`all` counts as every side).
    #[error("direction: side \"{name}\" is given more than once")]
    DuplicateSide { name: String },
    /// Occurs when a ratio is outside its allowed range or not a finite number.
    #[error("{field} must be in {range}, got {value}")]
    RatioOutOfRange {
        field: &'static str,
        value: f64,
        range: &'static str,
    },
    /// Occurs when the request rounds to zero added pixels on every side.
    #[error(
        "at least one side must grow: the requested expansion adds no pixels to a {width}×{height} image"
    )]
    NoGrowth { width: u32, height: u32 },
    /// Occurs when a side of the image is below the minimum.
    #[error("image is {width}×{height} px; each side must be at least {min} px")]
    ImageTooSmall { width: u32, height: u32, min: u32 },
    /// Occurs when the image is too elongated.
    #[error("image aspect ratio {width}:{height} ({ratio:.3}:1) is outside 1:{max} to {max}:1")]
    AspectRatio {
        width: u32,
        height: u32,
        ratio: f64,
        max: f64,
    },
    /// Occurs when the canvas would be too large relative to the original.
    #[error(
        "the expanded canvas {width}×{height} is {ratio:.2}× the original area; at most {max}× is allowed"
    )]
    CanvasAreaRatio {
        width: u32,
        height: u32,
        ratio: f64,
        max: f64,
    },
    /// Occurs when the canvas would exceed the pixel budget.
    #[error(
        "the expanded canvas {width}×{height} has {pixels} pixels; at most {max_pixels} are allowed"
    )]
    CanvasTooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max_pixels: u64,
    },
    /// Occurs when the encoded image file is larger than allowed.
    #[error("image file is {bytes} bytes; at most {max} bytes ({max_mib:.1} MiB) are allowed")]
    FileTooLarge { bytes: u64, max: u64, max_mib: f64 },
}
