//! `outpaint batch`: many images into one folder, in parallel, resumable.
//!
//! Inputs are resolved up front (folders, glob patterns, files), duplicates removed, and name
//! clashes between results reported before any work starts. Each image is then expanded on the
//! rayon pool; a failing image is reported and counted, never fatal. Results are written
//! atomically, so an image whose results exist is finished and is skipped on a rerun.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use clap::error::ErrorKind;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use outpaint_canvas::{Expansion, Limits};
use outpaint_engine::{Engine, ExpandOptions, ExpandRequest};
use rayon::prelude::*;
use tracing::{info, warn};

use crate::cli::{BatchArgs, usage_error};
use crate::files::{
    IMAGE_EXTENSIONS, has_image_extension, read_image_file, variation_paths, write_atomically,
};
use crate::print_path;

const SUBCOMMAND: &str = "batch";

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every image was expanded or skipped.
    AllDone,
    /// At least one input failed.
    SomeFailed,
}

/// One image to expand and where its results go.
struct Item {
    input: PathBuf,
    outputs: Vec<PathBuf>,
}

/// An input that could not be expanded, and why.
struct Failure {
    input: PathBuf,
    reason: String,
}

/// Runs `outpaint batch`. Usage errors come back as `clap::Error`; errors that stop the batch
/// before it starts (name clashes, an unusable output folder) as other errors.
pub fn run(args: &BatchArgs) -> Result<Outcome> {
    let mut engine = Engine::new(Limits::from(&args.limits));
    crate::models::register(&mut engine, &args.generation)?;
    let expansion = args.geometry.expansion(SUBCOMMAND)?;
    let options = args.generation.options(args.format);
    engine
        .validate(&options)
        .map_err(|e| usage_error(SUBCOMMAND, ErrorKind::ValueValidation, e))?;

    let (inputs, mut failures) = resolve_inputs(&args.inputs, args.recursive);
    let items = plan_outputs(inputs, &args.out, args)?;
    fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create the output folder", args.out.display()))?;
    for failure in &failures {
        report_failure(None, failure);
    }

    let (todo, done): (Vec<_>, Vec<_>) = items
        .into_iter()
        .partition(|item| args.overwrite || !item.outputs.iter().all(|o| o.is_file()));
    let skipped = done.len();
    for item in &done {
        info!("{}: results exist, skipped", item.input.display());
    }

    let threads = args.jobs.map_or(0, usize::from); // 0: rayon's default, the number of CPUs
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("outpaint-{i}"))
        .build()
        .context("cannot start worker threads")?;
    let progress = progress_bar(todo.len());
    let failed = Mutex::new(Vec::new());
    // One pool for everything: the expansions' own parallel work runs on it as well.
    pool.install(|| {
        todo.par_iter().for_each(|item| {
            let result = expand_one(&engine, item, expansion, &options);
            progress.inc(1);
            match result {
                Ok(()) => progress.suspend(|| item.outputs.iter().for_each(|o| print_path(o))),
                Err(e) => {
                    let failure = Failure {
                        input: item.input.clone(),
                        reason: format!("{e:#}"),
                    };
                    report_failure(Some(&progress), &failure);
                    failed.lock().expect("a worker panicked").push(failure);
                }
            }
        })
    });
    progress.finish_and_clear();

    let failed = failed.into_inner().expect("a worker panicked");
    let expanded = todo.len() - failed.len();
    failures.extend(failed);
    failures.sort_by(|a, b| a.input.cmp(&b.input));
    summarise(expanded, skipped, &failures);
    Ok(if failures.is_empty() {
        Outcome::AllDone
    } else {
        Outcome::SomeFailed
    })
}

fn expand_one(
    engine: &Engine,
    item: &Item,
    expansion: Expansion,
    options: &ExpandOptions,
) -> Result<()> {
    let bytes = read_image_file(&item.input, engine.limits())?;
    let image = engine.decode(&bytes)?;
    drop(bytes);
    let expanded = engine.expand(&ExpandRequest {
        image,
        expansion,
        options: options.clone(),
    })?;
    info!(seed = expanded.seed, "expanded {}", item.input.display());
    for (path, bytes) in item.outputs.iter().zip(&expanded.images) {
        write_atomically(path, bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The image files named by the inputs, sorted and without duplicates, and the inputs that
/// name nothing usable.
fn resolve_inputs(inputs: &[PathBuf], recursive: bool) -> (Vec<PathBuf>, Vec<Failure>) {
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for input in inputs {
        let found_before = files.len();
        if input.is_dir() {
            scan_folder(input, recursive, &mut files, &mut failures);
            if files.len() == found_before {
                warn!(
                    "{}: no {} files in this folder",
                    input.display(),
                    IMAGE_EXTENSIONS.join("/")
                );
            }
        } else if input.exists() {
            // Named explicitly: taken whatever its extension; the decoder says if it is an image.
            files.push(input.clone());
        } else if let Some(pattern) = input.to_str().filter(|s| s.contains(['*', '?', '['])) {
            match glob::glob(pattern) {
                Ok(paths) => {
                    for path in paths {
                        match path {
                            Ok(path) if path.is_file() && has_image_extension(&path) => {
                                files.push(path)
                            }
                            Ok(_) => {}
                            Err(e) => failures.push(Failure {
                                input: e.path().to_path_buf(),
                                reason: format!("cannot read: {}", e.error()),
                            }),
                        }
                    }
                    if files.len() == found_before {
                        warn!(
                            "{pattern}: the pattern matches no {} files",
                            IMAGE_EXTENSIONS.join("/")
                        );
                    }
                }
                Err(e) => failures.push(Failure {
                    input: input.clone(),
                    reason: format!("no such file, and not a valid pattern: {e}"),
                }),
            }
        } else {
            failures.push(Failure {
                input: input.clone(),
                reason: "no such file or folder".to_string(),
            });
        }
    }
    // The same file named twice (a folder and a pattern inside it) is expanded once.
    let mut seen = HashSet::new();
    files.retain(|f| seen.insert(fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    files.sort();
    (files, failures)
}

fn scan_folder(dir: &Path, recursive: bool, files: &mut Vec<PathBuf>, failures: &mut Vec<Failure>) {
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .max_depth(if recursive { usize::MAX } else { 1 })
        .follow_links(true)
        .into_iter()
        // Hidden files and folders (.git, macOS "._photo.jpg" resource forks) are not photos.
        .filter_entry(|e| !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        match entry {
            Ok(entry) if entry.file_type().is_file() && has_image_extension(entry.path()) => {
                files.push(entry.into_path());
            }
            Ok(_) => {}
            Err(e) => failures.push(Failure {
                input: e.path().unwrap_or(dir).to_path_buf(),
                reason: format!("cannot read: {e}"),
            }),
        }
    }
}

/// Pairs each input with its result paths, refusing inputs whose results would collide.
fn plan_outputs(inputs: Vec<PathBuf>, out: &Path, args: &BatchArgs) -> Result<Vec<Item>> {
    // Compared without case: on macOS and Windows `Photo.png` and `photo.png` are one file.
    let mut by_name: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for input in &inputs {
        let stem = input
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_lowercase();
        by_name.entry(stem).or_default().push(input.clone());
    }
    let clashes: Vec<String> = by_name
        .iter()
        .filter(|(_, inputs)| inputs.len() > 1)
        .map(|(name, inputs)| {
            let list: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
            format!("{name} ({})", list.join(", "))
        })
        .collect();
    if !clashes.is_empty() {
        bail!(
            "inputs with the same name would write the same results: {}; rename them or run them separately",
            clashes.join("; ")
        );
    }
    let items: Vec<Item> = inputs
        .into_iter()
        .map(|input| {
            let mut name = input.file_stem().unwrap_or_default().to_os_string();
            name.push(".");
            name.push(args.format.extension());
            let outputs = variation_paths(&out.join(name), args.generation.n);
            Item { input, outputs }
        })
        .collect();
    // With --out inside an input folder, a result could land on an input: never replace a
    // photo with an expansion of something else (or of itself).
    let originals: HashSet<PathBuf> = items
        .iter()
        .filter_map(|item| fs::canonicalize(&item.input).ok())
        .collect();
    let overwritten: Vec<String> = items
        .iter()
        .flat_map(|item| &item.outputs)
        .filter(|o| fs::canonicalize(o).is_ok_and(|o| originals.contains(&o)))
        .map(|o| o.display().to_string())
        .collect();
    if !overwritten.is_empty() {
        bail!(
            "results would replace input images: {}; choose an --out folder apart from the inputs",
            overwritten.join(", ")
        );
    }
    Ok(items)
}

fn progress_bar(len: usize) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let style = ProgressStyle::with_template("{bar:40} {pos}/{len} images, {elapsed} (eta {eta})")
        .expect("the progress template is valid");
    ProgressBar::with_draw_target(Some(len as u64), target).with_style(style)
}

fn report_failure(progress: Option<&ProgressBar>, failure: &Failure) {
    let line = || eprintln!("error: {}: {}", failure.input.display(), failure.reason);
    match progress {
        Some(progress) => progress.suspend(line),
        None => line(),
    }
}

fn summarise(expanded: usize, skipped: usize, failures: &[Failure]) {
    eprintln!(
        "expanded {expanded}, skipped (already done) {skipped}, failed {}",
        failures.len()
    );
    if !failures.is_empty() {
        eprintln!("failed:");
        for failure in failures {
            eprintln!("  {}: {}", failure.input.display(), failure.reason);
        }
    }
}
