//! A diffusion component with random weights behind the run/warmup/quit line protocol of
//! `outpaint bench --serve` (and of torch_reference.py's `serve`), without building the server:
//! `benches/side_by_side.py unet --outpaint target/release/examples/component`.
//!
//! ```sh
//! cargo build --release -p outpaint-diffusion --example component
//! target/release/examples/component bench unet --model sd15-inpaint --random-weights --serve
//! ```

use std::time::Instant;

use outpaint_diffusion::Device;
use outpaint_diffusion::bench::{Component, Runner};
use outpaint_diffusion::manifest::Architecture;
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let name = args
        .iter()
        .position(|a| *a == "bench")
        .and_then(|i| args.get(i + 1))
        .copied()
        .unwrap_or("unet");
    let model = args
        .iter()
        .position(|a| *a == "--model")
        .and_then(|i| args.get(i + 1))
        .copied()
        .unwrap_or("sd15-inpaint");
    let (arch, resolution) = if model.starts_with("sdxl") {
        (Architecture::Sdxl, 1024)
    } else {
        (Architecture::Sd15, 512)
    };
    let component: Component = name.parse()?;
    let started = Instant::now();
    let runner = Runner::random(component, arch, resolution, &Device::Cpu)?;
    println!(
        "{}",
        json!({"event": "ready", "fw": "candle", "component": name, "model": model,
               "threads": rayon::current_num_threads(), "params": runner.params(),
               "build_s": started.elapsed().as_secs_f64()})
    );
    let timed = |event: &str| -> Result<(), Box<dyn std::error::Error>> {
        let t = Instant::now();
        let (mean_abs, shape) = runner.run()?;
        println!(
            "{}",
            json!({"event": event, "fw": "candle", "component": name,
                   "seconds": (t.elapsed().as_secs_f64() * 1e4).round() / 1e4,
                   "out_mean_abs": mean_abs, "out_shape": shape})
        );
        Ok(())
    };
    if args.contains(&"--serve") {
        for line in std::io::stdin().lines() {
            match line?.trim() {
                cmd @ ("run" | "warmup") => timed(cmd)?,
                _ => break,
            }
        }
    } else {
        timed("warmup")?;
        timed("run")?;
    }
    Ok(())
}
