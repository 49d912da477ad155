//! Times the CPU kernels of `outpaint_diffusion::kernels` against candle's compositions on
//! SD 1.5's shapes (512², batch 2), alternating the implementations run by run.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo run --release -p outpaint-diffusion --example kernels -- [FILTER] [RUNS]
//! ```
//!
//! With `--serve`, reads `REPEATS NAME` lines on stdin and answers each with the mean time of
//! REPEATS back-to-back runs of our kernel after an untimed one (`seconds NAME`), for
//! `benches/kernels_side_by_side.py` to interleave with PyTorch.

use std::io::BufRead;
use std::time::Instant;

fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let cases = outpaint_diffusion::bench::kernel_cases("")?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        // `REPEATS NAME`: one untimed call, then the mean of REPEATS back-to-back calls.
        let Some((repeats, name)) = line.trim().split_once(' ') else {
            break;
        };
        let repeats: usize = repeats.parse()?;
        match cases.iter().find(|c| c.name == name) {
            Some(case) => {
                std::hint::black_box((case.fast)()?);
                let t0 = Instant::now();
                for _ in 0..repeats {
                    std::hint::black_box((case.fast)()?);
                }
                println!(
                    "{:.6} {name}",
                    t0.elapsed().as_secs_f64() / repeats.max(1) as f64
                );
            }
            None => println!("unknown {name}"),
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        return serve();
    }
    let filter = args.first().map(String::as_str).unwrap_or("");
    let runs: usize = args.get(1).map(|r| r.parse()).transpose()?.unwrap_or(5);
    let skip_candle = std::env::var_os("SKIP_CANDLE").is_some();
    println!(
        "threads {}, runs {runs}; median seconds (min)",
        rayon::current_num_threads()
    );
    for case in outpaint_diffusion::bench::kernel_cases(filter)? {
        let mut impls: Vec<(
            &str,
            &dyn Fn() -> outpaint_diffusion::Result<candle_core::Tensor>,
        )> = vec![("ours", &*case.fast)];
        if !skip_candle {
            impls.push(("candle", &*case.candle));
            for (name, f) in &case.others {
                impls.push((name, &**f));
            }
        }
        let mut times = vec![Vec::new(); impls.len()];
        for round in 0..=runs {
            for (i, (_, f)) in impls.iter().enumerate() {
                let t0 = Instant::now();
                let y = f()?;
                let dt = t0.elapsed().as_secs_f64();
                std::hint::black_box(y);
                if round > 0 {
                    times[i].push(dt);
                }
            }
        }
        let mut line = format!("{:<40}", case.name);
        let mut ours = 0.0;
        for (i, (name, _)) in impls.iter().enumerate() {
            let t = &mut times[i];
            t.sort_by(f64::total_cmp);
            let med = t[t.len() / 2];
            if i == 0 {
                ours = med;
                line += &format!(" {name} {med:.4} ({:.4})", t[0]);
            } else {
                line += &format!(" | {name} {med:.4} ({:.4}) ×{:.2}", t[0], med / ours);
            }
        }
        if !skip_candle {
            // Agreement with candle on the real shapes: max |ours - candle| / max(1, max |candle|).
            let (a, b) = ((case.fast)()?, (case.candle)()?);
            let diff = (&a - &b)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            let mag = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
            line += &format!(" | diff {:.1e}", diff / mag);
        }
        println!("{line}");
    }
    Ok(())
}
