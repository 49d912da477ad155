//! The canvas of every direction form follows SPEC 1.1 / 1.2 to the pixel, and inside the
//! original's box the PNG result holds the input's pixels exactly (SPEC 2).
//!
//! Each case is its own test with its own server (`edge` backend: fast, and any backend must
//! keep the box exact). Sizes are chosen so that odd splits and halves show: 402 × 1.25 =
//! 502.5 rounds half away from zero to 503 (banker's rounding would give 502).

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

/// Creates `body` (with a textured `width × height` PNG as `image`) through `path`, waits,
/// and checks the result's size and where the original sits in it.
async fn check(
    path: &str,
    (width, height): (u32, u32),
    body: Value,
    canvas: (u32, u32),
    at: (u32, u32),
) {
    let server = server()
        .args(["--backend", "edge", "--workers", "2"])
        .start();
    let api = server.api();
    let (original, image) = png_base64(width, height);
    let mut body = body;
    body["image"] = json!(image);
    let reply = api.post(path, &body).await;
    let id = task_id(&reply.ok());
    let task = api.wait_succeed(&id, Duration::from_secs(30)).await;
    let result = api.result_image(&task, 0).await.to_rgb8();
    assert_eq!(
        result.dimensions(),
        canvas,
        "canvas of {body:?}",
        body = strip(&body)
    );
    assert_box_exact(&result, &original, at.0, at.1);
}

fn strip(body: &Value) -> Value {
    let mut body = body.clone();
    body["image"] = json!("<base64>");
    body
}

macro_rules! simple {
    ($test:ident, $size:expr, $direction:expr, $ratio:expr, canvas $canvas:expr, at $at:expr) => {
        #[tokio::test]
        async fn $test() {
            let mut body = json!({"direction": $direction});
            let ratio: Option<f64> = $ratio;
            if let Some(ratio) = ratio {
                body["expansion_ratio"] = json!(ratio);
            }
            check(SIMPLE, $size, body, $canvas, $at).await;
        }
    };
}

macro_rules! official {
    ($test:ident, $size:expr, up $up:expr, down $down:expr, left $left:expr, right $right:expr,
     canvas $canvas:expr, at $at:expr) => {
        #[tokio::test]
        async fn $test() {
            let body = json!({"up_expansion_ratio": $up, "down_expansion_ratio": $down,
                "left_expansion_ratio": $left, "right_expansion_ratio": $right});
            check(OFFICIAL, $size, body, $canvas, $at).await;
        }
    };
}

// 400 × 1.5 = 600: all 200 px on the one side asked for.
simple!(
    left,
    (400, 300),
    "left",
    Some(1.5),
    canvas(600, 300),
    at(200, 0)
);
simple!(
    right,
    (400, 300),
    "right",
    Some(1.5),
    canvas(600, 300),
    at(0, 0)
);
// 300 × 1.5 = 450.
simple!(
    top,
    (400, 300),
    "top",
    Some(1.5),
    canvas(400, 450),
    at(0, 150)
);
simple!(
    bottom,
    (400, 300),
    "bottom",
    Some(2.0),
    canvas(400, 600),
    at(0, 0)
);
// The default ratio is 1.5.
simple!(
    default_ratio,
    (400, 300),
    "right",
    None,
    canvas(600, 300),
    at(0, 0)
);
// 401 × 1.5 = 601.5 → 602, 201 added: 100 left, 101 right; 301 × 1.5 = 451.5 → 452: 75 / 76.
simple!(
    all,
    (401, 301),
    "all",
    Some(1.5),
    canvas(602, 452),
    at(100, 75)
);
// 402 × 1.25 = 502.5 → 503 (half away from zero), 101 added: 50 left, 51 right.
simple!(
    left_right,
    (402, 300),
    "left,right",
    Some(1.25),
    canvas(503, 300),
    at(50, 0)
);
simple!(
    top_bottom,
    (400, 301),
    "top,bottom",
    Some(1.5),
    canvas(400, 452),
    at(0, 75)
);
// 401 × 1.3 = 521.3 → 521 (120 left); 301 × 1.3 = 391.3 → 391 (90 on top).
simple!(
    left_top,
    (401, 301),
    "left,top",
    Some(1.3),
    canvas(521, 391),
    at(120, 90)
);
simple!(
    order_does_not_matter,
    (401, 301),
    "top,left",
    Some(1.3),
    canvas(521, 391),
    at(120, 90)
);
simple!(
    whitespace_is_ignored,
    (400, 300),
    " right ,  bottom ",
    Some(1.5),
    canvas(600, 450),
    at(0, 0)
);
simple!(
    three_sides,
    (400, 300),
    "left,right,bottom",
    Some(1.5),
    canvas(600, 450),
    at(100, 0)
);
// The largest ratio, on one axis: exactly 3× the area, which the default limit allows.
simple!(
    ratio_three,
    (400, 300),
    "left",
    Some(3.0),
    canvas(1200, 300),
    at(800, 0)
);

// Per side: 402 × 0.25 = 100.5 → 101 left; 402 × 0.125 = 50.25 → 50 right;
// 302 × 0.25 = 75.5 → 76 up; nothing down.
official!(official_odd_splits, (402, 302), up 0.25, down 0, left 0.25, right 0.125,
    canvas (553, 378), at (101, 76));
official!(official_one_side, (300, 300), up 0, down 0.5, left 0, right 0,
    canvas (300, 450), at (0, 0));
// 401 × 0.1 = 40.1 → 40; 401 × 0.2 = 80.2 → 80; 301 × 0.3 = 90.3 → 90; 301 × 0.05 = 15.05 → 15.
official!(official_every_side, (401, 301), up 0.3, down 0.05, left 0.1, right 0.2,
    canvas (521, 406), at (40, 90));
// Ratios up to 2 are allowed on a side: 2 × 300 = 600 more, exactly 3× the area.
official!(official_ratio_two, (300, 300), up 0, down 0, left 0, right 2,
    canvas (900, 300), at (0, 0));
