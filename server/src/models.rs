//! Diffusion models on the command line: `--model` / `--model-dir` for `expand` and `batch`,
//! `outpaint models list|pull`, and `outpaint bench`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use outpaint_diffusion::InpaintModel;
use outpaint_diffusion::bench::{Component, Runner};
use outpaint_diffusion::manifest::{Manifest, ModelStore};
use outpaint_engine::diffusion::{DiffusionSettings, default_device};
use outpaint_engine::{DiffusionBackend, Engine};
use serde_json::json;

use crate::cli::{BackendArgs, BenchArgs, GenerationArgs, ModelsCommand};

/// The backend name of a `--model-dir` model: the folder's name.
pub fn dir_model_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "local-model".to_string())
}

/// Loads the model that --model or --model-dir names (if any) and registers it on `engine`.
pub fn register(engine: &mut Engine, args: &GenerationArgs) -> Result<()> {
    register_model(
        engine,
        &args.backend,
        args.scheduler.as_deref(),
        args.strength,
    )
}

/// Loads the model that --model or --model-dir names (if any) and registers it on `engine`
/// under [`BackendArgs::name`]. Never falls back to another backend: a model that is not
/// installed is an error naming the pull command.
pub fn register_model(
    engine: &mut Engine,
    args: &BackendArgs,
    scheduler: Option<&str>,
    strength: f64,
) -> Result<()> {
    let (dir, manifest) = match (&args.model, &args.model_dir) {
        (Some(name), _) => {
            let manifest = Manifest::find(name)?;
            let dir = ModelStore::from_env().locate(&manifest)?;
            (dir, manifest)
        }
        (None, Some(dir)) => {
            // A folder's defaults are those of its architecture's built-in model.
            let base = if dir.join("text_encoder_2/config.json").is_file() {
                "sdxl-inpaint"
            } else {
                "sd15-inpaint"
            };
            (dir.to_path_buf(), Manifest::find(base)?)
        }
        (None, None) => return Ok(()),
    };
    let mut settings = DiffusionSettings::from_manifest(&manifest);
    // The weights' own native size wins: the UNet's sample size times the VAE's factor (it
    // equals the manifest's for the real models).
    if let Some(resolution) = folder_resolution(&dir) {
        settings.resolution = resolution;
    }
    if let Some(s) = scheduler {
        settings.scheduler = s.parse()?;
    }
    if !(strength > 0.0 && strength <= 1.0) {
        bail!("--strength must be in (0, 1], got {strength}");
    }
    settings.strength = strength;
    let backend = DiffusionBackend::load(args.name(), &dir, settings)
        .with_context(|| format!("cannot load the model in {}", dir.display()))?;
    engine.register(backend);
    Ok(())
}

/// `sample_size × 2^(levels-1)` from a diffusers folder's configs.
fn folder_resolution(dir: &Path) -> Option<u32> {
    let read = |p: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(p)).ok()?).ok()
    };
    let sample = read("unet/config.json")?.get("sample_size")?.as_u64()?;
    let levels = read("vae/config.json")?
        .get("block_out_channels")?
        .as_array()?
        .len() as u32;
    u32::try_from(sample << levels.saturating_sub(1)).ok()
}

/// Runs `outpaint models ...`.
pub fn run(command: &ModelsCommand) -> Result<()> {
    let store = ModelStore::from_env();
    match command {
        ModelsCommand::List => {
            println!(
                "{:<16} {:<10} {:>9}  DESCRIPTION",
                "NAME", "INSTALLED", "SIZE"
            );
            for m in Manifest::builtin()? {
                let (installed, bytes) = match store.installed_bytes(&m) {
                    Some(b) => ("yes", b),
                    None => ("no", m.download_bytes),
                };
                println!(
                    "{:<16} {:<10} {:>7.1} GB  {}",
                    m.name,
                    installed,
                    bytes as f64 / 1e9,
                    m.description
                );
            }
            Ok(())
        }
        ModelsCommand::Pull { name } => {
            let m = Manifest::find(name)?;
            let dir = store.pull(&m, true)?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}

/// Runs `outpaint bench COMPONENT`: JSON lines as shared/perf/torch_reference.py prints them.
pub fn bench(args: &BenchArgs) -> Result<()> {
    // torch_reference.py's `sdxl_unet` is the SDXL inpainting UNet.
    let model = if args.component == "sdxl_unet" {
        "sdxl-inpaint"
    } else {
        args.model.as_str()
    };
    let manifest = Manifest::find(model)?;
    let (device, dtype) = default_device();
    let threads = std::env::var("RAYON_NUM_THREADS").ok();
    let started = Instant::now();
    let runner = if args.component == "pipeline" {
        let model = if args.random_weights {
            InpaintModel::random(manifest.architecture, &device, dtype)?
        } else {
            InpaintModel::load(&ModelStore::from_env().locate(&manifest)?, &device, dtype)?
        };
        Runner::pipeline(model, manifest.resolution as usize, args.steps as usize)?
    } else {
        let component: Component = args.component.parse()?;
        if !args.random_weights {
            bail!("bench {} needs --random-weights for now", args.component);
        }
        Runner::random(
            component,
            manifest.architecture,
            manifest.resolution as usize,
            &device,
        )?
    };
    println!(
        "{}",
        json!({"event": "ready", "fw": "candle", "component": args.component, "model": manifest.name,
               "threads": threads, "params": runner.params(), "build_s": round(started.elapsed().as_secs_f64())})
    );
    // One timed run, printed as torch_reference.py prints it.
    let timed = |event: &str| -> Result<f64> {
        let t = Instant::now();
        let (mean_abs, shape) = runner.run()?;
        let dt = t.elapsed().as_secs_f64();
        println!(
            "{}",
            json!({"event": event, "fw": "candle", "component": args.component, "seconds": round(dt),
                   "out_mean_abs": mean_abs, "out_shape": shape})
        );
        Ok(dt)
    };
    if args.serve {
        // The side-by-side driver alternates runs of both frameworks, each process keeping
        // its model loaded: one `run` or `warmup` per line, `quit` or end of input to stop.
        for line in std::io::stdin().lines() {
            match line?.trim() {
                cmd @ ("run" | "warmup") => {
                    timed(cmd)?;
                }
                "quit" | "" => break,
                other => bail!("unknown command {other:?} (run, warmup, quit)"),
            }
        }
        return Ok(());
    }
    for _ in 0..args.warmup {
        timed("warmup")?;
    }
    let mut times = (0..args.runs)
        .map(|_| timed("run"))
        .collect::<Result<Vec<_>>>()?;
    if !times.is_empty() {
        times.sort_by(f64::total_cmp);
        println!(
            "{}",
            json!({"event": "median", "component": args.component, "seconds": round(times[times.len() / 2])})
        );
    }
    Ok(())
}

fn round(s: f64) -> f64 {
    (s * 1e4).round() / 1e4
}
