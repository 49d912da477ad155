//! The PatchMatch completion alone (no decoding, planning or encoding), on the sample photo
//! expanded to the right by 1.5×, at a 768 px and a 2048 px canvas (long side).
//!
//! `cargo bench -p outpaint-benches --bench infill`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use image::imageops::FilterType;
use image::{GrayImage, RgbImage};
use outpaint_canvas::{Expansion, Limits, composite, plan};
use outpaint_infill::{InfillParams, inpaint};

/// The sample photo scaled so that the expanded canvas is `canvas_width` wide, placed on its
/// canvas, and the mask of the area to generate.
fn task(canvas_width: u32) -> (RgbImage, GrayImage) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/coffee.jpg");
    let photo = image::open(path).expect("the sample photo").to_rgb8();
    let width = (f64::from(canvas_width) / 1.5).round() as u32;
    let height = (f64::from(photo.height()) * f64::from(width) / f64::from(photo.width())).round();
    let photo = image::imageops::resize(&photo, width, height as u32, FilterType::Lanczos3);
    let expansion = Expansion::uniform("right".parse().expect("a side"), 1.5).expect("a ratio");
    let plan = plan(
        photo.width(),
        photo.height(),
        &expansion,
        &Limits::default(),
    )
    .expect("a valid expansion");
    (composite::place(&photo, &plan), plan.mask())
}

fn infill(c: &mut Criterion) {
    let mut group = c.benchmark_group("infill");
    group.sample_size(10);
    for canvas_width in [768, 2048] {
        let (canvas, mask) = task(canvas_width);
        let name = format!("{}x{}", canvas.width(), canvas.height());
        group.measurement_time(Duration::from_secs(if canvas_width > 1000 {
            60
        } else {
            10
        }));
        group.bench_function(name, |b| {
            b.iter(|| {
                inpaint(
                    black_box(&canvas),
                    black_box(&mask),
                    &InfillParams::default(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, infill);
criterion_main!(benches);
