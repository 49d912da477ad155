//! `outpaint expand`: one image in, one result per variation out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::error::ErrorKind;
use outpaint_canvas::Limits;
use outpaint_engine::{Engine, ExpandRequest, OutputFormat};
use tracing::info;

use crate::cli::{ExpandArgs, usage_error};
use crate::files::{read_image_file, same_file, variation_paths, write_atomically};
use crate::print_path;

const SUBCOMMAND: &str = "expand";

/// Runs `outpaint expand`. Usage errors come back as `clap::Error`.
pub fn run(args: &ExpandArgs) -> Result<()> {
    let mut engine = Engine::new(Limits::from(&args.limits));
    crate::models::register(&mut engine, &args.generation)?;
    let expansion = args.geometry.expansion(SUBCOMMAND)?;
    let format = output_format(args.output.as_deref(), args.format)?;
    let options = args.generation.options(format);
    engine
        .validate(&options)
        .map_err(|e| usage_error(SUBCOMMAND, ErrorKind::ValueValidation, e))?;
    let outputs = output_paths(args, format);
    if let Some(clash) = outputs.iter().find(|o| same_file(o, &args.input)) {
        return Err(usage_error(
            SUBCOMMAND,
            ErrorKind::ArgumentConflict,
            format!(
                "{}: refusing to overwrite the input with its result; choose another -o",
                clash.display()
            ),
        )
        .into());
    }

    let input = args.input.display();
    let bytes = read_image_file(&args.input, engine.limits()).with_context(|| input.to_string())?;
    let image = engine.decode(&bytes).with_context(|| input.to_string())?;
    drop(bytes);
    let expanded = engine
        .expand(&ExpandRequest {
            image,
            expansion,
            options,
        })
        .with_context(|| input.to_string())?;
    info!(
        seed = expanded.seed,
        width = expanded.plan.width,
        height = expanded.plan.height,
        "expanded {input}"
    );
    for (path, bytes) in outputs.iter().zip(&expanded.images) {
        write_atomically(path, bytes)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        print_path(path);
    }
    Ok(())
}

/// The result format: --format, else the -o extension, else PNG. An -o extension that names
/// another format than --format, or an unknown one without --format, is a usage error.
fn output_format(output: Option<&Path>, flag: Option<OutputFormat>) -> Result<OutputFormat> {
    let Some(output) = output else {
        return Ok(flag.unwrap_or_default());
    };
    let Some(extension) = output.extension() else {
        return Ok(flag.unwrap_or_default());
    };
    let from_extension = OutputFormat::from_path(output);
    match (flag, from_extension) {
        (Some(flag), Some(named)) if flag != named => Err(usage_error(
            SUBCOMMAND,
            ErrorKind::ArgumentConflict,
            format!(
                "-o {} names a {named} file but --format is {flag}; make them agree",
                output.display()
            ),
        )
        .into()),
        (Some(flag), _) => Ok(flag),
        (None, Some(named)) => Ok(named),
        (None, None) => Err(usage_error(
            SUBCOMMAND,
            ErrorKind::InvalidValue,
            format!(
                "-o {}: cannot tell the format from \".{}\"; use a .png, .jpg, .jpeg or .webp name, or --format",
                output.display(),
                extension.to_string_lossy()
            ),
        )
        .into()),
    }
}

/// -o (numbered when -n > 1), or `<input stem>-expanded.<ext>` in the current folder.
fn output_paths(args: &ExpandArgs, format: OutputFormat) -> Vec<PathBuf> {
    let base = args.output.clone().unwrap_or_else(|| {
        let mut name = args.input.file_stem().unwrap_or_default().to_os_string();
        name.push("-expanded.");
        name.push(format.extension());
        PathBuf::from(name)
    });
    variation_paths(&base, args.generation.n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_comes_from_the_flag_then_the_extension() {
        let png = Some(Path::new("x.png"));
        assert_eq!(output_format(None, None).unwrap(), OutputFormat::Png);
        assert_eq!(
            output_format(None, Some(OutputFormat::Webp)).unwrap(),
            OutputFormat::Webp
        );
        assert_eq!(
            output_format(Some(Path::new("x.JPG")), None).unwrap(),
            OutputFormat::Jpeg
        );
        assert_eq!(
            output_format(png, Some(OutputFormat::Png)).unwrap(),
            OutputFormat::Png
        );
        assert_eq!(
            output_format(Some(Path::new("x")), None).unwrap(),
            OutputFormat::Png
        );
        assert!(output_format(png, Some(OutputFormat::Jpeg)).is_err());
        assert!(output_format(Some(Path::new("x.tiff")), None).is_err());
        let odd = output_format(Some(Path::new("x.final")), Some(OutputFormat::Webp));
        assert_eq!(odd.unwrap(), OutputFormat::Webp);
    }
}
