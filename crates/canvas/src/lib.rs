//! Everything about the outpainting canvas that does not depend on how pixels are generated.
//!
//! - [`geometry`]: the one rule (SPEC 1.1 and 1.2) that turns an image size and an expansion
//!   request into a canvas and the box the original occupies in it;
//! - [`limits`]: the image and canvas rules of SPEC 1.3, configurable by the operator;
//! - [`composite`]: placing the original, pasting it back pixel-exactly after generation, and
//!   the seam blend and colour match that only ever touch generated pixels.
//!
//! ```
//! use outpaint_canvas::{Expansion, Limits, plan};
//! let expansion: Expansion = Expansion::uniform("left,right".parse()?, 1.5)?;
//! let plan = plan(341, 512, &expansion, &Limits::default())?;
//! assert_eq!((plan.width, plan.height), (512, 512));
//! assert_eq!((plan.original.x, plan.original.y), (85, 0)); // 171 px added: 85 left, 86 right
//! # Ok::<(), outpaint_canvas::CanvasError>(())
//! ```

pub mod composite;
mod error;
pub mod geometry;
pub mod limits;

pub use error::CanvasError;
pub use geometry::{CanvasPlan, Expansion, Padding, Rect, Side, Sides, plan};
pub use limits::Limits;
