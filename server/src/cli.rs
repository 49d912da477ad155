//! The command line: flags as clap parses them, and their conversion into engine types.
//!
//! Flags shared by several subcommands (geometry, generation, limits) are `#[command(flatten)]`
//! structs, so `expand`, `batch` and the later `serve` read them the same way. Everything that
//! can be checked from the flags alone is checked here or in the value parsers, and reported as
//! a usage error (exit code 2).

use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use outpaint_canvas::geometry::{PER_SIDE_RATIO_RANGE, UNIFORM_RATIO_RANGE};
use outpaint_canvas::{Expansion, Limits, Sides};
use outpaint_engine::{ExpandOptions, InfillBackend, MAX_VARIATIONS, OutputFormat};

pub use crate::serve::config::ServeArgs;

/// Expand photos beyond their borders. The original's pixels are kept exactly; only the new
/// area is generated.
#[derive(Debug, Parser)]
#[command(
    name = "outpaint",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Log more to stderr: -v adds progress notes (the seed used, ignored prompts), -vv stage
    /// timings, -vvv everything. RUST_LOG, when set, replaces this (e.g. RUST_LOG=debug).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Expand one image and write the result(s).
    ///
    /// Example: outpaint expand photo.jpg --direction right --expansion-ratio 1.5 -o wide.png
    Expand(ExpandArgs),
    /// Expand many images into a folder, several at a time.
    ///
    /// Images whose results already exist are skipped, so an interrupted batch can simply be
    /// run again. A bad image is reported and skipped; it does not stop the batch.
    ///
    /// Example: outpaint batch photos/ 'more/*.png' --out wide/ --direction left,right
    Batch(BatchArgs),
    /// Serve the Kling-compatible image-expansion API, with a durable task queue.
    ///
    /// Tasks, their results and pending callbacks live under --data-dir and survive restarts
    /// and crashes. Without --access-key, authentication is off (local, single-user use).
    ///
    /// Example: outpaint serve --bind 0.0.0.0:8080 --access-key AK --secret-key SK
    Serve(Box<ServeArgs>),
    /// List the supported diffusion models, or download one into the Hugging Face cache.
    ///
    /// Example: outpaint models pull sd15-inpaint
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Time one component of a model's architecture on the shapes of
    /// shared/perf/torch_reference.py, printing the same JSON lines.
    ///
    /// Example: outpaint bench unet --model sd15-inpaint --random-weights --warmup 1 --runs 3
    ///
    /// Example: outpaint bench unet --model sdxl-inpaint --random-weights
    Bench(BenchArgs),
}

/// `outpaint models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The supported models, whether each is installed, and its size.
    List,
    /// Download a model into the Hugging Face cache (HF_HOME; HF_TOKEN for gated
    /// repositories; refused when HF_HUB_OFFLINE=1). Resumes an interrupted download.
    Pull {
        /// The model, as `outpaint models list` names it.
        name: String,
    },
}

/// Flags of `outpaint bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// unet, vae_enc, vae_dec, clip, or pipeline (a whole expansion at the model's native
    /// size); sdxl_unet is unet with --model sdxl-inpaint (torch_reference.py's name).
    pub component: String,
    /// The model whose architecture is timed.
    #[arg(long, value_name = "NAME", default_value = "sd15-inpaint")]
    pub model: String,
    /// Build the component from the architecture's published config with random weights
    /// (timing does not depend on weight values); without it, the installed weights.
    #[arg(long)]
    pub random_weights: bool,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Denoising steps of the `pipeline` component.
    #[arg(long, default_value_t = 2)]
    pub steps: u32,
    /// Keep the component loaded and run it once per `run` (or `warmup`) line on stdin, until
    /// `quit`: the protocol of torch_reference.py's `serve`, for alternating side-by-side runs
    /// (benches/side_by_side.py).
    #[arg(long)]
    pub serve: bool,
}

/// Flags of `outpaint expand`.
#[derive(Debug, Args)]
pub struct ExpandArgs {
    /// The image to expand: a JPEG, PNG or WebP file.
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,

    /// Where to write the result. With -n above 1, the variation number goes before the
    /// extension: out-0.png, out-1.png, ... [default: <INPUT name>-expanded.<format>, in the
    /// current folder]
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Format of the result [default: from the -o extension, else png]. png keeps the original's
    /// pixels bit for bit; jpeg (quality 92) is smaller but lossy everywhere; webp is lossless.
    #[arg(short, long, value_name = "FORMAT")]
    pub format: Option<OutputFormat>,

    #[command(flatten)]
    pub geometry: GeometryArgs,

    #[command(flatten)]
    pub generation: GenerationArgs,

    #[command(flatten)]
    pub limits: LimitsArgs,
}

/// Flags of `outpaint batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Images to expand: folders (their .jpg, .jpeg, .png and .webp files), glob patterns such
    /// as 'photos/*.jpg' (quoted, or let the shell expand them), or image files.
    #[arg(value_name = "INPUTS", required = true)]
    pub inputs: Vec<PathBuf>,

    /// Folder to write the results to; created if missing. Each result is named after its
    /// input: <out>/<name>.<format>, or <out>/<name>-0.<format>, ... with -n above 1.
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,

    /// Also take images from the subfolders of folder inputs (hidden ones excepted).
    #[arg(short, long)]
    pub recursive: bool,

    /// Format of the results. png keeps the original's pixels bit for bit; jpeg (quality 92) is
    /// smaller but lossy everywhere; webp is lossless.
    #[arg(short, long, value_name = "FORMAT", default_value_t = OutputFormat::Png)]
    pub format: OutputFormat,

    /// Worker threads for the whole batch [default: the number of CPUs]. Images are expanded
    /// side by side on these threads, and each expansion spreads its own work over them too.
    /// Fewer leaves CPU for other work; more images in flight means more memory.
    #[arg(short, long, env = "OUTPAINT_JOBS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,

    /// Expand every image again, replacing existing results. Without it, an image whose
    /// results all exist in --out is skipped.
    #[arg(long)]
    pub overwrite: bool,

    #[command(flatten)]
    pub geometry: GeometryArgs,

    #[command(flatten)]
    pub generation: GenerationArgs,

    #[command(flatten)]
    pub limits: LimitsArgs,
}

/// Which sides grow and by how much: either --direction (with --expansion-ratio), or
/// per-side ratios. The two forms are exclusive.
#[derive(Debug, Args)]
#[command(next_help_heading = "Expansion (--direction, or per-side ratios)")]
pub struct GeometryArgs {
    /// Sides to grow: left, right, top, bottom, all, or a comma list such as left,right. Each
    /// expanded axis becomes --expansion-ratio times longer; two sides of one axis share the new
    /// pixels (the right or bottom side gets the odd one).
    #[arg(short, long, value_name = "SIDES", conflicts_with_all = ["up", "down", "left", "right"])]
    pub direction: Option<Sides>,

    /// Final length ÷ original length along each expanded axis, in (1, 3] [default: 1.5]. With
    /// --direction right, 1.5 turns a 600 px wide photo into a 900 px wide one. Higher values
    /// leave more to invent: slower, and the far edges look less like the photo.
    #[arg(long, value_name = "RATIO", value_parser = parse_expansion_ratio, requires = "direction",
          conflicts_with_all = ["up", "down", "left", "right"])]
    pub expansion_ratio: Option<f64>,

    /// Grow the top by this fraction of the image height, in [0, 2]: 0.25 adds a quarter of the
    /// height above. Sides not given grow by 0.
    #[arg(long, value_name = "RATIO", value_parser = parse_side_ratio)]
    pub up: Option<f64>,

    /// Grow the bottom by this fraction of the image height, in [0, 2].
    #[arg(long, value_name = "RATIO", value_parser = parse_side_ratio)]
    pub down: Option<f64>,

    /// Grow the left side by this fraction of the image width, in [0, 2].
    #[arg(long, value_name = "RATIO", value_parser = parse_side_ratio)]
    pub left: Option<f64>,

    /// Grow the right side by this fraction of the image width, in [0, 2].
    #[arg(long, value_name = "RATIO", value_parser = parse_side_ratio)]
    pub right: Option<f64>,
}

/// The simple form's ratio when --direction is given alone (SPEC 1.1's default).
pub const DEFAULT_EXPANSION_RATIO: f64 = 1.5;

impl GeometryArgs {
    /// The expansion the flags describe; a usage error when they describe none.
    pub fn expansion(&self, subcommand: &str) -> Result<Expansion, clap::Error> {
        let per_side = [self.up, self.down, self.left, self.right];
        let expansion = if let Some(sides) = self.direction {
            Expansion::uniform(
                sides,
                self.expansion_ratio.unwrap_or(DEFAULT_EXPANSION_RATIO),
            )
        } else if per_side.iter().any(Option::is_some) {
            let [up, down, left, right] = per_side.map(|r| r.unwrap_or(0.0));
            Expansion::per_side(up, down, left, right)
        } else {
            return Err(usage_error(
                subcommand,
                ErrorKind::MissingRequiredArgument,
                "say how to expand: --direction SIDES [--expansion-ratio RATIO] \
                 (e.g. --direction right --expansion-ratio 1.5), \
                 or per-side ratios --up/--down/--left/--right RATIO (e.g. --left 0.25 --right 0.25)",
            ));
        };
        // The value parsers have checked the ranges; this cannot fail, but stays honest.
        expansion.map_err(|e| usage_error(subcommand, ErrorKind::ValueValidation, e))
    }
}

fn parse_number(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| "not a number".to_string())
}

fn parse_expansion_ratio(s: &str) -> Result<f64, String> {
    let ratio = parse_number(s)?;
    if ratio.is_finite() && ratio > 1.0 && ratio <= 3.0 {
        Ok(ratio)
    } else {
        Err(format!("must be in {UNIFORM_RATIO_RANGE}"))
    }
}

fn parse_side_ratio(s: &str) -> Result<f64, String> {
    let ratio = parse_number(s)?;
    if ratio.is_finite() && (0.0..=2.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("must be in {PER_SIDE_RATIO_RANGE}"))
    }
}

/// Which backend generates: a weight-free one (--backend) or a diffusion model (--model,
/// --model-dir). Shared by `expand`, `batch` and `serve`.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Backend that generates the new pixels when no model is chosen: infill (weight-free
    /// PatchMatch: continues the photo's own textures, needs no download), or edge (repeats the
    /// border pixels outwards: instant but streaky; a baseline, and for load tests).
    #[arg(long, env = "OUTPAINT_BACKEND", value_name = "NAME", default_value = InfillBackend::NAME)]
    pub backend: String,

    /// Generate with this Stable Diffusion inpainting model (see `outpaint models list`) from the
    /// Hugging Face cache, instead of --backend. `serve` loads it once, keeps it resident and
    /// makes it the default; a request's `model` field can still pick infill or edge. A model
    /// that is not installed is an error, never a silent fallback: `outpaint models pull NAME`.
    #[arg(
        long,
        env = "OUTPAINT_MODEL",
        value_name = "NAME",
        conflicts_with = "model_dir"
    )]
    pub model: Option<String>,

    /// Like --model, from a local diffusers-layout folder (unet/, vae/, text_encoder/,
    /// tokenizer/, scheduler/).
    #[arg(long, env = "OUTPAINT_MODEL_DIR", value_name = "PATH")]
    pub model_dir: Option<PathBuf>,
}

impl BackendArgs {
    /// The backend the flags choose: the model's name with --model or --model-dir, else
    /// --backend.
    pub fn name(&self) -> String {
        match (&self.model, &self.model_dir) {
            (Some(name), _) => name.clone(),
            (None, Some(dir)) => crate::models::dir_model_name(dir),
            (None, None) => self.backend.clone(),
        }
    }
}

/// What to generate, besides the geometry.
#[derive(Debug, Args)]
#[command(next_help_heading = "Generation")]
pub struct GenerationArgs {
    /// Number of variations to generate, 1 to 9. Each one costs a full generation.
    #[arg(short = 'n', long = "variations", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_VARIATIONS)))]
    pub n: u32,

    /// Seed of the generator: the same image, flags and seed give the same pixels. Without it a
    /// random seed is picked (shown with -v).
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,

    /// What the new area should show, at most 2500 characters. Passed to the backend (the
    /// default infill backend ignores it) and recorded in PNG results, with the seed and the
    /// other settings, as a "parameters" text entry (the layout A1111 uses).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,

    /// What the new area should not show, at most 2500 characters. The infill backend ignores it.
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,

    #[command(flatten)]
    pub backend: BackendArgs,

    /// Denoising steps of a model [default: the model's, usually 30].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=500))]
    pub steps: Option<u32>,

    /// Classifier-free guidance scale of a model [default: the model's, usually 7.5].
    #[arg(long, value_name = "SCALE")]
    pub guidance_scale: Option<f32>,

    /// Scheduler of a model: ddim or euler_ancestral [default: the model's].
    #[arg(long, value_name = "NAME")]
    pub scheduler: Option<String>,

    /// Fraction of the denoising schedule a model runs, in (0, 1]. Below 1 it starts from the
    /// PatchMatch pre-fill of the new area, which then guides the composition.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub strength: f64,
}

impl GenerationArgs {
    /// The engine options these flags describe, for results in `format`.
    pub fn options(&self, format: OutputFormat) -> ExpandOptions {
        ExpandOptions {
            n: self.n,
            seed: self.seed,
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            backend: Some(self.backend.name()),
            output_format: format,
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            ..ExpandOptions::default()
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

fn default_limits() -> Limits {
    Limits::default()
}

/// The image and canvas limits of SPEC 1.3, for operators to change.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitsArgs {
    /// Largest accepted image file, in MB (1 MB = 1,048,576 bytes). Larger files are refused
    /// before they are read. Raising it admits bigger files at the cost of memory and time.
    #[arg(long, env = "OUTPAINT_MAX_FILE_MB", value_name = "MB", value_parser = parse_positive,
          default_value_t = default_limits().max_file_bytes as f64 / MIB)]
    pub max_file_mb: f64,

    /// Smallest accepted width and height of an input image, in pixels. Below a few hundred
    /// pixels the generator has too little to copy from and results get poor.
    #[arg(long, env = "OUTPAINT_MIN_SIDE", value_name = "PX",
          default_value_t = default_limits().min_side)]
    pub min_side: u32,

    /// Largest accepted aspect ratio of an input image (long side ÷ short side): 2.5 admits
    /// everything from 1:2.5 to 2.5:1.
    #[arg(long, env = "OUTPAINT_MAX_ASPECT", value_name = "RATIO", value_parser = parse_at_least_one,
          default_value_t = default_limits().max_aspect)]
    pub max_aspect: f64,

    /// Largest expanded canvas as a multiple of the original's area. Higher values allow asking
    /// for more invented content, which costs time and looks less like the photo far out.
    #[arg(long, env = "OUTPAINT_MAX_AREA_RATIO", value_name = "RATIO", value_parser = parse_at_least_one,
          default_value_t = default_limits().max_area_ratio)]
    pub max_area_ratio: f64,

    /// Largest expanded canvas, in megapixels; also the most pixels an input image may have
    /// (checked from the file header, before decoding). Memory and time per image grow with it.
    #[arg(long, env = "OUTPAINT_MAX_CANVAS_MEGAPIXELS", value_name = "MP", value_parser = parse_positive,
          default_value_t = default_limits().max_canvas_pixels as f64 / 1e6)]
    pub max_canvas_megapixels: f64,
}

impl From<&LimitsArgs> for Limits {
    fn from(args: &LimitsArgs) -> Self {
        // `as` saturates: an absurdly large limit becomes u64::MAX, i.e. no limit.
        Limits {
            max_file_bytes: (args.max_file_mb * MIB).round() as u64,
            min_side: args.min_side,
            max_aspect: args.max_aspect,
            max_area_ratio: args.max_area_ratio,
            max_canvas_pixels: (args.max_canvas_megapixels * 1e6).round() as u64,
        }
    }
}

fn parse_positive(s: &str) -> Result<f64, String> {
    let value = parse_number(s)?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err("must be a number above 0".to_string())
    }
}

fn parse_at_least_one(s: &str) -> Result<f64, String> {
    let value = parse_number(s)?;
    if value.is_finite() && value >= 1.0 {
        Ok(value)
    } else {
        Err("must be a number of at least 1".to_string())
    }
}

/// A usage error in clap's format (exit code 2), for rules that involve several flags.
pub fn usage_error(
    subcommand: &str,
    kind: ErrorKind,
    message: impl std::fmt::Display,
) -> clap::Error {
    let mut command = Cli::command();
    command.build();
    match command.find_subcommand_mut(subcommand) {
        Some(sub) => sub.error(kind, message),
        None => command.error(kind, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn limits_default_to_the_spec() {
        let cli =
            Cli::try_parse_from(["outpaint", "expand", "a.png", "--direction", "right"]).unwrap();
        let Command::Expand(args) = cli.command else {
            panic!("expand")
        };
        assert_eq!(Limits::from(&args.limits), Limits::default());
    }
}
