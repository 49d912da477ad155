//! Black-box tests of the `outpaint` binary: each runs the built executable in a fresh temporary
//! folder and looks only at its exit code, its output and the files it wrote.
//!
//! Where new tests go:
//! - `expand`: the happy paths of `outpaint expand` (geometry, names, formats, seeds);
//! - `bad_input`: every kind of bad image or flag gives one clear line and the right exit code;
//! - `batch`: `outpaint batch` (mixed inputs, resuming, name clashes).

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};

/// The sample photo shipped with the repository (599×400, CC0).
fn coffee() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/coffee.jpg")
}

/// Runs `outpaint` with `args` in `dir`, with no OUTPAINT_* or RUST_LOG settings leaking in.
fn outpaint(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outpaint"));
    command.current_dir(dir).args(args).env_remove("RUST_LOG");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OUTPAINT_") {
            command.env_remove(key);
        }
    }
    command.output().expect("outpaint runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}, stderr:\n{}",
        output.status.code(),
        stderr(output)
    );
}

/// A photo-like test image: smooth gradients with some texture, so PatchMatch has a choice.
fn textured(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let noise = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 27;
        Rgb([
            (x * 200 / width + noise) as u8,
            (y * 200 / height + noise) as u8,
            ((x + y) % 64 + noise * 2) as u8,
        ])
    })
}

fn encoded(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).expect("encodes");
    bytes.into_inner()
}

fn write_png(path: &Path, image: impl Into<DynamicImage>) {
    fs::write(path, encoded(&image.into(), ImageFormat::Png)).unwrap();
}

fn decode(path: &Path) -> DynamicImage {
    image::load_from_memory(&fs::read(path).unwrap()).expect("a readable image")
}

/// Whether `result` holds `original`'s pixels exactly at `(x, y)`.
fn box_is_exact(result: &RgbImage, original: &RgbImage, x: u32, y: u32) -> bool {
    original
        .enumerate_pixels()
        .all(|(ox, oy, px)| result.get_pixel(x + ox, y + oy) == px)
}

/// Whether two results differ somewhere outside the original's box `(x, y, w, h)`.
fn differ_outside(a: &RgbImage, b: &RgbImage, (bx, by, bw, bh): (u32, u32, u32, u32)) -> bool {
    a.enumerate_pixels().any(|(x, y, px)| {
        let inside = x >= bx && x < bx + bw && y >= by && y < by + bh;
        !inside && b.get_pixel(x, y) != px
    })
}

mod expand {
    use super::*;

    #[test]
    fn sample_photo_right_one_and_a_half() {
        let dir = tempfile::tempdir().unwrap();
        let input = coffee();
        let out = outpaint(
            dir.path(),
            &[
                "expand",
                input.to_str().unwrap(),
                "--direction",
                "right",
                "--expansion-ratio",
                "1.5",
                "-o",
                "coffee-wide.png",
            ],
        );
        assert_success(&out);
        assert_eq!(stdout(&out).trim(), "coffee-wide.png");
        let result = decode(&dir.path().join("coffee-wide.png")).to_rgb8();
        // SPEC 1.1: round(599 × 1.5) = round(898.5) = 899, all of it on the right.
        assert_eq!(result.dimensions(), (899, 400));
        let original = image::open(&input).unwrap().to_rgb8();
        assert!(box_is_exact(&result, &original, 0, 0));
    }

    #[test]
    fn png_input_keeps_its_pixels_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let original = textured(320, 300);
        write_png(&dir.path().join("in.png"), original.clone());
        let out = outpaint(
            dir.path(),
            &[
                "expand",
                "in.png",
                "-d",
                "left,top",
                "--expansion-ratio",
                "1.3",
                "--seed",
                "1",
            ],
        );
        assert_success(&out);
        // Default name, in the current folder.
        let result = decode(&dir.path().join("in-expanded.png")).to_rgb8();
        // 320 × 1.3 = 416 (96 added on the left), 300 × 1.3 = 390 (90 added on top).
        assert_eq!(result.dimensions(), (416, 390));
        assert!(box_is_exact(&result, &original, 96, 90));
    }

    #[test]
    fn prompt_and_seed_are_recorded_in_the_png() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("in.png"), textured(320, 300));
        let args = [
            "expand",
            "in.png",
            "-d",
            "right",
            "--seed",
            "42",
            "--prompt",
            "a red barn at dusk",
            "-o",
            "out.png",
        ];
        assert_success(&outpaint(dir.path(), &args));
        let bytes = std::fs::read(dir.path().join("out.png")).unwrap();
        let seed = outpaint_engine::seed::variation_seeds(42, 1)[0];
        let expected = format!("a red barn at dusk\nSeed: {seed}, Backend: infill, Size: 480x300");
        assert!(
            bytes
                .windows(expected.len())
                .any(|w| w == expected.as_bytes()),
            "{expected:?} not found in the PNG"
        );
    }

    #[test]
    fn per_side_form_gives_the_same_canvas_as_the_simple_form() {
        let dir = tempfile::tempdir().unwrap();
        let input = coffee();
        let input = input.to_str().unwrap();
        let simple = &[
            "expand",
            input,
            "-d",
            "left,right",
            "--seed",
            "5",
            "-o",
            "simple.png",
        ];
        assert_success(&outpaint(dir.path(), simple));
        // 599 × 1.5 → 899: 300 added, 150 on each side; 150 / 599 rounds back to 150 px.
        let ratio = format!("{}", 150.0 / 599.0);
        let per_side = &[
            "expand",
            input,
            "--left",
            &ratio,
            "--right",
            &ratio,
            "--seed",
            "5",
            "-o",
            "per-side.png",
        ];
        assert_success(&outpaint(dir.path(), per_side));
        let a = fs::read(dir.path().join("simple.png")).unwrap();
        let b = fs::read(dir.path().join("per-side.png")).unwrap();
        assert_eq!(
            decode(&dir.path().join("simple.png"))
                .to_rgb8()
                .dimensions(),
            (899, 400)
        );
        assert_eq!(a, b, "same canvas and seed give the same pixels");
    }

    #[test]
    fn one_per_side_flag_defaults_the_others_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("in.png"), textured(300, 300));
        let out = outpaint(
            dir.path(),
            &["expand", "in.png", "--down", "0.5", "-o", "o.png"],
        );
        assert_success(&out);
        let result = decode(&dir.path().join("o.png")).to_rgb8();
        assert_eq!(result.dimensions(), (300, 450));
    }

    #[test]
    fn variations_are_numbered_and_differ() {
        let dir = tempfile::tempdir().unwrap();
        let original = textured(300, 320);
        write_png(&dir.path().join("in.png"), original.clone());
        let out = outpaint(
            dir.path(),
            &[
                "expand", "in.png", "-d", "right", "-n", "3", "--seed", "11", "-o", "v.png",
            ],
        );
        assert_success(&out);
        assert_eq!(stdout(&out), "v-0.png\nv-1.png\nv-2.png\n");
        let results: Vec<RgbImage> = (0..3)
            .map(|i| decode(&dir.path().join(format!("v-{i}.png"))).to_rgb8())
            .collect();
        let area = (0, 0, 300, 320);
        for r in &results {
            assert_eq!(r.dimensions(), (450, 320));
            assert!(box_is_exact(r, &original, 0, 0));
        }
        assert!(differ_outside(&results[0], &results[1], area));
        assert!(differ_outside(&results[1], &results[2], area));
        assert!(differ_outside(&results[0], &results[2], area));
    }

    #[test]
    fn same_seed_gives_identical_bytes() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("in.png"), textured(310, 300));
        for name in ["a.png", "b.png"] {
            let out = outpaint(
                dir.path(),
                &[
                    "expand",
                    "in.png",
                    "-d",
                    "all",
                    "--expansion-ratio",
                    "1.2",
                    "--seed",
                    "42",
                    "-o",
                    name,
                ],
            );
            assert_success(&out);
        }
        let a = fs::read(dir.path().join("a.png")).unwrap();
        let b = fs::read(dir.path().join("b.png")).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn grayscale_png_gives_a_grayscale_result() {
        let dir = tempfile::tempdir().unwrap();
        let gray = GrayImage::from_fn(300, 300, |x, y| Luma([((x * 3 + y * 5) % 256) as u8]));
        write_png(&dir.path().join("gray.png"), gray.clone());
        let out = outpaint(
            dir.path(),
            &["expand", "gray.png", "-d", "bottom", "-o", "g.png"],
        );
        assert_success(&out);
        let result = decode(&dir.path().join("g.png"));
        assert_eq!(result.color(), image::ColorType::L8);
        let result = result.to_luma8();
        assert_eq!(result.dimensions(), (300, 450));
        assert!(
            gray.enumerate_pixels()
                .all(|(x, y, px)| result.get_pixel(x, y) == px)
        );
    }

    #[test]
    fn format_follows_the_flag_or_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("in.png"), textured(300, 300));
        let run = |args: &[&str]| assert_success(&outpaint(dir.path(), args));
        run(&["expand", "in.png", "-d", "left", "-o", "x.jpg"]);
        run(&["expand", "in.png", "-d", "left", "--format", "webp"]);
        run(&[
            "expand", "in.png", "-d", "left", "-f", "jpg", "-o", "y.jpeg",
        ]);
        let magic = |name: &str| image::guess_format(&fs::read(dir.path().join(name)).unwrap());
        assert_eq!(magic("x.jpg").unwrap(), ImageFormat::Jpeg);
        assert_eq!(magic("in-expanded.webp").unwrap(), ImageFormat::WebP);
        assert_eq!(magic("y.jpeg").unwrap(), ImageFormat::Jpeg);
    }

    #[test]
    fn prompt_is_accepted_and_noted() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("in.png"), textured(300, 300));
        let out = outpaint(
            dir.path(),
            &[
                "expand", "in.png", "-d", "top", "--prompt", "more sky", "-v", "-o", "o.png",
            ],
        );
        assert_success(&out);
        assert!(stderr(&out).contains("prompt recorded; the infill backend ignores it"));
    }
}

mod bad_input {
    use super::*;

    /// A PNG whose IHDR was patched to declare `width × height`, with a valid CRC.
    fn png_declaring(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = encoded(&textured(4, 4).into(), ImageFormat::Png);
        assert_eq!(&bytes[12..16], b"IHDR");
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32fast::hash(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    fn truncated(format: ImageFormat) -> Vec<u8> {
        let bytes = encoded(&textured(300, 300).into(), format);
        bytes[..bytes.len() / 2].to_vec()
    }

    /// Runs `expand` on a file `name` holding `bytes` (none: no file) with extra flags, and
    /// checks: exit code 1, one line on stderr naming the file, containing `rule`, no panic.
    fn refused(name: &str, bytes: Option<Vec<u8>>, flags: &[&str], rule: &str) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(bytes) = bytes {
            fs::write(dir.path().join(name), bytes).unwrap();
        }
        let mut args = vec!["expand", name, "-d", "right"];
        args.extend_from_slice(flags);
        let out = outpaint(dir.path(), &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "stderr: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.starts_with(&format!("error: {name}: ")), "{err}");
        assert!(err.contains(rule), "expected {rule:?} in {err}");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            usize::from(name != "missing.png")
        );
    }

    macro_rules! refused {
        ($test:ident, $name:expr, $bytes:expr, $flags:expr, $rule:expr) => {
            #[test]
            fn $test() {
                refused($name, $bytes, $flags, $rule);
            }
        };
    }

    refused!(
        too_small,
        "photo.png",
        Some(encoded(&textured(200, 500).into(), ImageFormat::Png)),
        &[],
        "image is 200×500 px; each side must be at least 300 px"
    );
    refused!(
        too_elongated,
        "strip.png",
        Some(encoded(&textured(800, 300).into(), ImageFormat::Png)),
        &[],
        "aspect ratio 800:300 (2.667:1) is outside 1:2.5 to 2.5:1"
    );
    refused!(
        decompression_bomb,
        "bomb.png",
        Some(png_declaring(100_000, 100_000)),
        &[],
        "image is 100000×100000 px (10000.0 megapixels); at most 16 megapixels are accepted"
    );
    refused!(
        truncated_png,
        "cut.png",
        Some(truncated(ImageFormat::Png)),
        &[],
        "cannot decode the PNG image"
    );
    refused!(
        truncated_jpeg,
        "cut.jpg",
        Some(truncated(ImageFormat::Jpeg)),
        &[],
        "cannot decode the JPEG image: the data is truncated"
    );
    refused!(
        text_file,
        "notes.jpg",
        Some(b"just some notes\n".to_vec()),
        &[],
        "unsupported image format: text; expected JPEG, PNG or WebP"
    );
    refused!(
        gif_file,
        "anim.gif",
        Some(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec()),
        &[],
        "unsupported image format: GIF"
    );
    refused!(
        empty_file,
        "empty.png",
        Some(Vec::new()),
        &[],
        "an empty file"
    );
    refused!(
        missing_file,
        "missing.png",
        None,
        &[],
        "cannot read: No such file"
    );
    refused!(
        file_too_large,
        "big.png",
        Some(encoded(&textured(300, 300).into(), ImageFormat::Png)),
        &["--max-file-mb", "0.001"],
        "at most 1049 bytes"
    );
    refused!(
        canvas_too_large,
        "photo.png",
        Some(encoded(&textured(300, 300).into(), ImageFormat::Png)),
        &["--max-canvas-megapixels", "0.1"],
        "the expanded canvas 450×300 has"
    );
    refused!(
        canvas_area_ratio,
        "photo.png",
        Some(encoded(&textured(300, 300).into(), ImageFormat::Png)),
        &["--expansion-ratio", "3", "--max-area-ratio", "2"],
        "at most 2× is allowed"
    );

    #[test]
    fn folder_instead_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("photos")).unwrap();
        let out = outpaint(dir.path(), &["expand", "photos", "-d", "left"]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            stderr(&out),
            "error: photos: is a folder, not an image file\n"
        );
    }

    /// Flags that cannot work are usage errors: exit code 2, clap's format, nothing read.
    fn usage_error(args: &[&str], message: &str) {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("in.png"), textured(300, 300));
        let out = outpaint(dir.path(), args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(message), "expected {message:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "nothing written"
        );
    }

    #[test]
    fn no_expansion_explains_both_forms() {
        usage_error(
            &["expand", "in.png"],
            "--direction SIDES [--expansion-ratio RATIO]",
        );
        usage_error(&["expand", "in.png"], "--up/--down/--left/--right RATIO");
    }

    #[test]
    fn the_two_forms_are_exclusive() {
        usage_error(
            &["expand", "in.png", "-d", "left", "--up", "0.2"],
            "cannot be used with",
        );
        usage_error(
            &["expand", "in.png", "--expansion-ratio", "2", "--up", "0.2"],
            "cannot be used with",
        );
        usage_error(
            &["expand", "in.png", "--expansion-ratio", "2"],
            "the following required arguments were not provided:\n  --direction <SIDES>",
        );
    }

    #[test]
    fn out_of_range_values() {
        usage_error(
            &["expand", "in.png", "-d", "left", "--expansion-ratio", "3.5"],
            "must be in (1, 3]",
        );
        usage_error(&["expand", "in.png", "--left", "2.5"], "must be in [0, 2]");
        usage_error(&["expand", "in.png", "-d", "up"], "unknown side \"up\"");
        usage_error(&["expand", "in.png", "-d", "left,left"], "more than once");
        usage_error(
            &["expand", "in.png", "-d", "left", "-n", "10"],
            "10 is not in 1..=9",
        );
        usage_error(
            &["expand", "in.png", "-d", "left", "-n", "0"],
            "0 is not in 1..=9",
        );
        let long = "x".repeat(2501);
        usage_error(
            &["expand", "in.png", "-d", "left", "--prompt", &long],
            "prompt must be at most 2500 characters long, got 2501 characters",
        );
        usage_error(
            &["expand", "in.png", "-d", "left", "--backend", "sdxl"],
            "unknown backend \"sdxl\"; available: edge, infill",
        );
    }

    #[test]
    fn output_extension_must_agree_with_the_format() {
        usage_error(
            &[
                "expand", "in.png", "-d", "left", "-o", "o.png", "--format", "jpeg",
            ],
            "-o o.png names a png file but --format is jpeg",
        );
        usage_error(
            &["expand", "in.png", "-d", "left", "-o", "o.tiff"],
            "cannot tell the format",
        );
    }

    #[test]
    fn the_input_is_never_overwritten() {
        usage_error(
            &["expand", "in.png", "-d", "left", "-o", "in.png"],
            "refusing to overwrite the input",
        );
    }
}

mod batch {
    use super::*;

    /// A folder `in` with two good images, one too small, one not an image and one ignored file.
    fn mixed_inputs(dir: &Path) {
        let inputs = dir.join("in");
        fs::create_dir(&inputs).unwrap();
        write_png(&inputs.join("good1.png"), textured(300, 300));
        fs::write(
            inputs.join("good2.JPG"),
            encoded(&textured(320, 300).into(), ImageFormat::Jpeg),
        )
        .unwrap();
        write_png(&inputs.join("small.png"), textured(100, 300));
        fs::write(inputs.join("broken.jpg"), b"not a jpeg").unwrap();
        fs::write(inputs.join("notes.txt"), b"ignored: not an image extension").unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn good_files_are_written_and_bad_ones_listed() {
        let dir = tempfile::tempdir().unwrap();
        mixed_inputs(dir.path());
        let out = outpaint(
            dir.path(),
            &["batch", "in", "--out", "out", "-d", "right", "-j", "2"],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(names(&dir.path().join("out")), ["good1.png", "good2.png"]);
        assert!(
            err.contains("expanded 2, skipped (already done) 0, failed 2"),
            "{err}"
        );
        assert!(
            err.contains("in/small.png: image is 100×300 px; each side must be at least 300 px")
        );
        assert!(
            err.contains("in/broken.jpg: unsupported image format"),
            "{err}"
        );
        assert!(!err.contains("notes.txt"), "{err}");
        let result = decode(&dir.path().join("out/good1.png")).to_rgb8();
        assert_eq!(result.dimensions(), (450, 300));
        assert!(box_is_exact(&result, &textured(300, 300), 0, 0));
    }

    #[test]
    fn rerun_skips_finished_images_and_overwrite_redoes_them() {
        let dir = tempfile::tempdir().unwrap();
        let inputs = dir.path().join("in");
        fs::create_dir(&inputs).unwrap();
        write_png(&inputs.join("a.png"), textured(300, 300));
        write_png(&inputs.join("b.png"), textured(310, 300));
        let args = ["batch", "in/*.png", "--out", "out", "-d", "left", "-n", "2"];
        let first = outpaint(dir.path(), &args);
        assert_success(&first);
        assert_eq!(
            names(&dir.path().join("out")),
            ["a-0.png", "a-1.png", "b-0.png", "b-1.png"]
        );
        assert!(stderr(&first).contains("expanded 2, skipped (already done) 0, failed 0"));

        // An interrupted run left one of a's results missing: a is redone, b is skipped.
        fs::remove_file(dir.path().join("out/a-1.png")).unwrap();
        let b_before = fs::read(dir.path().join("out/b-0.png")).unwrap();
        let second = outpaint(dir.path(), &args);
        assert_success(&second);
        assert!(stderr(&second).contains("expanded 1, skipped (already done) 1, failed 0"));
        assert_eq!(stdout(&second), "out/a-0.png\nout/a-1.png\n");
        assert_eq!(fs::read(dir.path().join("out/b-0.png")).unwrap(), b_before);

        let mut overwrite = args.to_vec();
        overwrite.push("--overwrite");
        let third = outpaint(dir.path(), &overwrite);
        assert_success(&third);
        assert!(stderr(&third).contains("expanded 2, skipped (already done) 0, failed 0"));
        assert_eq!(
            names(&dir.path().join("out")).len(),
            4,
            "no temporary files left"
        );
    }

    #[test]
    fn same_names_are_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["x", "y"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        write_png(&dir.path().join("x/photo.png"), textured(300, 300));
        fs::write(
            dir.path().join("y/photo.jpg"),
            encoded(&textured(300, 300).into(), ImageFormat::Jpeg),
        )
        .unwrap();
        let out = outpaint(
            dir.path(),
            &["batch", "x", "y", "--out", "out", "-d", "left"],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("x/photo.png") && err.contains("y/photo.jpg"),
            "{err}"
        );
        assert!(!dir.path().join("out").exists(), "nothing done");
    }

    #[test]
    fn inputs_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("in")).unwrap();
        write_png(&dir.path().join("in/a.png"), textured(300, 300));
        let before = fs::read(dir.path().join("in/a.png")).unwrap();
        let args = ["batch", "in", "--out", "in", "-d", "left", "--overwrite"];
        let out = outpaint(dir.path(), &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("results would replace input images: in/a.png"),
            "{err}"
        );
        assert_eq!(fs::read(dir.path().join("in/a.png")).unwrap(), before);
    }

    #[test]
    fn files_globs_and_missing_inputs() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("one.png"), textured(300, 300));
        write_png(&dir.path().join("two.png"), textured(300, 300));
        // The same file named twice (as a file and through a pattern) is expanded once.
        let out = outpaint(
            dir.path(),
            &[
                "batch", "one.png", "*.png", "gone.png", "--out", "o", "--right", "0.2", "-f",
                "webp",
            ],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("error: gone.png: no such file or folder"),
            "{err}"
        );
        assert!(
            err.contains("expanded 2, skipped (already done) 0, failed 1"),
            "{err}"
        );
        assert_eq!(names(&dir.path().join("o")), ["one.webp", "two.webp"]);
    }

    #[test]
    fn folders_are_not_searched_recursively_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("in/sub")).unwrap();
        write_png(&dir.path().join("in/top.png"), textured(300, 300));
        write_png(&dir.path().join("in/sub/deep.png"), textured(300, 300));
        let flat = outpaint(dir.path(), &["batch", "in", "--out", "flat", "-d", "top"]);
        assert_success(&flat);
        assert_eq!(names(&dir.path().join("flat")), ["top.png"]);
        let deep = outpaint(
            dir.path(),
            &["batch", "in", "--out", "deep", "-d", "top", "-r"],
        );
        assert_success(&deep);
        assert_eq!(names(&dir.path().join("deep")), ["deep.png", "top.png"]);
    }
}

/// Diffusion models: the tiny random SD-inpainting fixture of `outpaint-diffusion` stands in
/// for a real checkpoint (same layout, same code path); no test downloads anything.
mod models {
    use super::*;

    fn tiny_model() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/diffusion/tests/fixtures/tiny-sd-inpaint")
    }

    #[test]
    fn model_dir_expansion_has_the_right_size_and_an_exact_original() {
        let dir = tempfile::tempdir().unwrap();
        let original = textured(320, 300);
        write_png(&dir.path().join("in.png"), original.clone());
        let model = tiny_model();
        let out = outpaint(
            dir.path(),
            &[
                "expand",
                "in.png",
                "-d",
                "all",
                "--expansion-ratio",
                "1.5",
                "--model-dir",
                model.to_str().unwrap(),
                "--prompt",
                "a red house",
                "--negative-prompt",
                "blurry",
                "--steps",
                "3",
                "-n",
                "2",
                "--seed",
                "7",
                "-o",
                "out.png",
            ],
        );
        assert_success(&out);
        let a = decode(&dir.path().join("out-0.png")).to_rgb8();
        let b = decode(&dir.path().join("out-1.png")).to_rgb8();
        assert_eq!(a.dimensions(), (480, 450));
        assert!(box_is_exact(&a, &original, 80, 75));
        assert!(box_is_exact(&b, &original, 80, 75));
        assert!(differ_outside(&a, &b, (80, 75, 320, 300)));
        let text =
            String::from_utf8_lossy(&fs::read(dir.path().join("out-0.png")).unwrap()).into_owned();
        assert!(
            text.contains("tiny-sd-inpaint"),
            "the model is recorded in the PNG"
        );
    }

    /// A Hugging Face cache (`HF_HOME`) in which `sd15-inpaint` is "installed": the manifest's
    /// files, taken from the tiny fixture (its weights are f16, as the fp16 files named there).
    fn fake_hf_home(root: &Path) -> PathBuf {
        let home = root.join("hf");
        let repo = home.join("hub/models--stable-diffusion-v1-5--stable-diffusion-inpainting");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs/main"), commit).unwrap();
        let snapshot = repo.join("snapshots").join(commit);
        let tiny = tiny_model();
        for (to, from) in [
            ("model_index.json", "model_index.json"),
            (
                "scheduler/scheduler_config.json",
                "scheduler/scheduler_config.json",
            ),
            ("text_encoder/config.json", "text_encoder/config.json"),
            (
                "text_encoder/model.fp16.safetensors",
                "text_encoder/model.safetensors",
            ),
            ("tokenizer/merges.txt", "tokenizer/merges.txt"),
            (
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer_config.json",
            ),
            (
                "tokenizer/tokenizer_config.json",
                "tokenizer/tokenizer_config.json",
            ),
            ("tokenizer/vocab.json", "tokenizer/vocab.json"),
            ("unet/config.json", "unet/config.json"),
            (
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "unet/diffusion_pytorch_model.safetensors",
            ),
            ("vae/config.json", "vae/config.json"),
            (
                "vae/diffusion_pytorch_model.fp16.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
            ),
        ] {
            let dest = snapshot.join(to);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(tiny.join(from), dest).unwrap();
        }
        home
    }

    #[test]
    fn an_installed_model_is_found_in_the_hf_cache_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let home = fake_hf_home(dir.path());
        write_png(&dir.path().join("in.png"), textured(300, 300));
        let run = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_outpaint"))
                .current_dir(dir.path())
                .env("HF_HOME", &home)
                .env("HF_HUB_OFFLINE", "1")
                .args(args)
                .output()
                .unwrap()
        };
        let list = run(&["models", "list"]);
        assert_success(&list);
        let line = stdout(&list)
            .lines()
            .find(|l| l.starts_with("sd15-inpaint"))
            .unwrap()
            .to_string();
        assert!(line.contains("yes"), "{line}");
        let out = run(&[
            "expand",
            "in.png",
            "-d",
            "right",
            "--model",
            "sd15-inpaint",
            "--steps",
            "2",
            "-o",
            "out.png",
        ]);
        assert_success(&out);
        assert_eq!(
            decode(&dir.path().join("out.png")).to_rgb8().dimensions(),
            (450, 300)
        );
    }

    /// `sdxl-inpaint` "installed" from the tiny SDXL-style fixture: every file the manifest
    /// names, the fp16 weights from the fixture's (f16) ones.
    fn fake_sdxl_hf_home(root: &Path) -> PathBuf {
        let home = root.join("hf");
        let repo = home.join("hub/models--diffusers--stable-diffusion-xl-1.0-inpainting-0.1");
        let commit = "89abcdef0123456789abcdef0123456789abcdef";
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs/main"), commit).unwrap();
        let snapshot = repo.join("snapshots").join(commit);
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/diffusion/tests/fixtures/tiny-sdxl-inpaint");
        let manifest = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/sdxl-inpaint.toml"),
        )
        .unwrap();
        let files: Vec<&str> = manifest
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with('"') && l.ends_with("\","))
            .map(|l| l.trim_end_matches(',').trim_matches('"'))
            .collect();
        assert!(
            files.contains(&"text_encoder_2/model.fp16.safetensors"),
            "{files:?}"
        );
        for to in files {
            let from = to
                .replace(".fp16.", ".")
                .replace("special_tokens_map.json", "tokenizer_config.json");
            let dest = snapshot.join(to);
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            fs::copy(tiny.join(&from), dest).unwrap();
        }
        home
    }

    #[test]
    fn an_installed_sdxl_model_expands() {
        let dir = tempfile::tempdir().unwrap();
        let home = fake_sdxl_hf_home(dir.path());
        write_png(&dir.path().join("in.png"), textured(300, 300));
        let out = Command::new(env!("CARGO_BIN_EXE_outpaint"))
            .current_dir(dir.path())
            .env("HF_HOME", &home)
            .env("HF_HUB_OFFLINE", "1")
            .args([
                "expand",
                "in.png",
                "-d",
                "right",
                "--model",
                "sdxl-inpaint",
                "--prompt",
                "a red house",
                "--steps",
                "2",
                "-o",
                "out.png",
            ])
            .output()
            .unwrap();
        assert_success(&out);
        assert_eq!(
            decode(&dir.path().join("out.png")).to_rgb8().dimensions(),
            (450, 300)
        );
    }

    #[test]
    fn a_model_that_is_not_installed_names_the_pull_command() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("in.png"), textured(300, 300));
        let out = Command::new(env!("CARGO_BIN_EXE_outpaint"))
            .current_dir(dir.path())
            .env("HF_HOME", dir.path().join("hf"))
            .env("HF_HUB_OFFLINE", "1")
            .args(["expand", "in.png", "-d", "right", "--model", "sd15-inpaint"])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("outpaint models pull sd15-inpaint"), "{err}");
        assert!(
            !dir.path().join("in-expanded.png").exists(),
            "no fallback to infill"
        );
    }

    #[test]
    fn models_list_names_every_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_outpaint"))
            .current_dir(dir.path())
            .env("HF_HOME", dir.path().join("hf"))
            .args(["models", "list"])
            .output()
            .unwrap();
        assert_success(&out);
        let text = stdout(&out);
        for name in ["sd15-inpaint", "sd2-inpaint", "sdxl-inpaint"] {
            assert!(text.contains(name), "{text}");
        }
    }

    #[test]
    fn pull_is_refused_offline() {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_outpaint"))
            .current_dir(dir.path())
            .env("HF_HOME", dir.path().join("hf"))
            .env("HF_HUB_OFFLINE", "1")
            .args(["models", "pull", "sd15-inpaint"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains("HF_HUB_OFFLINE"), "{}", stderr(&out));
    }
}
