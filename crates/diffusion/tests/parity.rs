//! Parity with diffusers: the tiny random pipelines in fixtures/tiny-{sd,sd2,sdxl}-inpaint and
//! the outputs diffusers computed for a fixed input (fixtures/golden, made by make_golden.py).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use outpaint_diffusion::{DType, Device, InpaintModel, InpaintParams, SchedulerKind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden_of(variant: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join(format!("golden/tiny_{variant}_inpaint.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

fn model_of(variant: &str) -> InpaintModel {
    InpaintModel::load(
        &fixtures().join(format!("tiny-{variant}-inpaint")),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap()
}

fn golden() -> HashMap<String, Tensor> {
    golden_of("sd")
}

fn model() -> InpaintModel {
    model_of("sd")
}

/// The SD 1.x style fixture, the SD 2 style one (linear projections, exact GELU, "!" pad
/// token, v-prediction) and the SDXL style one (two text encoders, pooled embedding and
/// size/crop ids, transformer depth 2, no attention at the first level).
const VARIANTS: [&str; 3] = ["sd", "sd2", "sdxl"];

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

const PROMPT: &str = "a red house by the sea";
const NEGATIVE: &str = "blurry";

#[test]
fn tokenizer_matches_transformers() {
    for variant in VARIANTS {
        tokenizer_matches(variant);
    }
}

fn ids_of(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn widen(ids: &[u32]) -> Vec<i64> {
    ids.iter().map(|&i| i64::from(i)).collect()
}

fn tokenizer_matches(variant: &str) {
    let g = golden_of(variant);
    let m = model_of(variant);
    match (m.tokenize_2(PROMPT).unwrap(), g.get("prompt_ids_2")) {
        (Some(ids), Some(want)) => {
            assert_eq!(widen(&ids), ids_of(want));
            let neg = m.tokenize_2(NEGATIVE).unwrap().unwrap();
            assert_eq!(widen(&neg), ids_of(&g["negative_ids_2"]));
        }
        (None, None) => {}
        _ => panic!("{variant}: second tokenizer presence differs"),
    }
    assert_eq!(
        widen(&m.tokenize(PROMPT).unwrap()),
        ids_of(&g["prompt_ids"])
    );
    assert_eq!(
        widen(&m.tokenize(NEGATIVE).unwrap()),
        ids_of(&g["negative_ids"])
    );
}

#[test]
fn text_encoder_matches_transformers() {
    for variant in VARIANTS {
        text_encoder_matches(variant);
    }
}

fn text_encoder_matches(variant: &str) {
    let g = golden_of(variant);
    let e = model_of(variant).encode_text(PROMPT).unwrap();
    let d = max_abs_diff(&e.context, &g["text_embeddings"]);
    eprintln!("{variant}: text embeddings max abs diff {d:e}");
    assert!(d < 1e-4, "{variant}: {d}");
    match (&e.pooled, g.get("pooled_text_embeddings")) {
        (Some(pooled), Some(want)) => {
            let d = max_abs_diff(pooled, want);
            eprintln!("{variant}: pooled text embeddings max abs diff {d:e}");
            assert!(d < 1e-4, "{variant}: pooled {d}");
        }
        (None, None) => {}
        _ => panic!("{variant}: pooled embedding presence differs"),
    }
}

fn run(variant: &str, scheduler: SchedulerKind, with_noise: bool) -> (f32, Tensor) {
    run_with(variant, scheduler, with_noise, NEGATIVE)
}

fn run_with(
    variant: &str,
    scheduler: SchedulerKind,
    with_noise: bool,
    negative_prompt: &str,
) -> (f32, Tensor) {
    let g = golden_of(variant);
    let m = model_of(variant);
    let noise: Vec<Tensor> = if with_noise {
        (0..4).map(|i| g["euler_noise"].get(i).unwrap()).collect()
    } else {
        Vec::new()
    };
    let params = InpaintParams {
        prompt: PROMPT,
        negative_prompt,
        steps: 4,
        guidance_scale: 7.5,
        scheduler,
        seeds: &[0],
        strength: 1.0,
        initial_latents: Some(&g["latents"]),
        step_noise: with_noise.then_some(noise.as_slice()),
    };
    let mut steps = Vec::new();
    let out = m
        .inpaint(
            &g["image"],
            &g["mask"],
            &params,
            &mut |d, t| steps.push((d, t)),
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(steps, [(1, 4), (2, 4), (3, 4), (4, 4)]);
    let key = match (scheduler, negative_prompt.is_empty()) {
        (SchedulerKind::Ddim, false) => "out_ddim",
        (SchedulerKind::EulerAncestral, false) => "out_euler",
        (SchedulerKind::Ddim, true) => "out_ddim_zero_negative",
        (SchedulerKind::EulerAncestral, true) => panic!("no golden output"),
    };
    (max_abs_diff(&out, &g[key]), out)
}

#[test]
fn ddim_matches_diffusers() {
    for variant in VARIANTS {
        let (d, _) = run(variant, SchedulerKind::Ddim, false);
        eprintln!("{variant}: DDIM final image max abs diff {d:e}");
        assert!(d < 1e-3, "{variant}: {d}");
    }
}

#[test]
fn euler_ancestral_matches_diffusers() {
    for variant in VARIANTS {
        let (d, _) = run(variant, SchedulerKind::EulerAncestral, true);
        eprintln!("{variant}: Euler-ancestral final image max abs diff {d:e}");
        assert!(d < 1e-3, "{variant}: {d}");
    }
}

/// SDXL's `force_zeros_for_empty_prompt`: an empty negative prompt conditions on zeros.
#[test]
fn sdxl_empty_negative_prompt_matches_diffusers() {
    let (d, _) = run_with("sdxl", SchedulerKind::Ddim, false, "");
    eprintln!("sdxl: DDIM, empty negative prompt, final image max abs diff {d:e}");
    assert!(d < 1e-3, "{d}");
}

/// Seeds 1, 2 and 1 as one batch on `variant`'s fixture: three images of the input's size, the
/// first and the last the same. Returns the batch.
fn variations(variant: &str) -> Tensor {
    let g = golden_of(variant);
    let params = InpaintParams {
        prompt: PROMPT,
        steps: 2,
        seeds: &[1, 2, 1],
        ..InpaintParams::default()
    };
    let out = model_of(variant)
        .inpaint(
            &g["image"],
            &g["mask"],
            &params,
            &mut |_, _| {},
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(out.dims(), [3, 3, 32, 48], "{variant}");
    let same = max_abs_diff(&out.get(0).unwrap(), &out.get(2).unwrap());
    assert!(same < 1e-4, "{variant}: same seed, same image: {same}");
    out
}

#[test]
fn sdxl_variations_batch() {
    variations("sdxl");
}

#[test]
fn variations_batch_and_cancel() {
    let out = variations("sd");
    assert!(
        max_abs_diff(&out.get(0).unwrap(), &out.get(1).unwrap()) > 1e-3,
        "other seed, other image"
    );
    let (g, m) = (golden(), model());
    let params = InpaintParams {
        prompt: PROMPT,
        steps: 2,
        seeds: &[1, 2, 1],
        ..InpaintParams::default()
    };
    let cancelled = m.inpaint(
        &g["image"],
        &g["mask"],
        &params,
        &mut |_, _| {},
        &AtomicBool::new(true),
    );
    assert!(matches!(
        cancelled,
        Err(outpaint_diffusion::DiffusionError::Cancelled)
    ));
}

#[test]
fn latent_sides_that_do_not_halve_evenly_work() {
    let m = model();
    // 46x22 pixels: a 23x11 latent, odd on both sides at the UNet's downsampling.
    let image = Tensor::full(0.5f32, (1, 3, 22, 46), &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 1, 22, 46), DType::F32, &Device::Cpu).unwrap();
    let params = InpaintParams {
        prompt: PROMPT,
        steps: 1,
        ..InpaintParams::default()
    };
    let out = m
        .inpaint(
            &image,
            &mask,
            &params,
            &mut |_, _| {},
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(out.dims(), [1, 3, 22, 46]);
}
