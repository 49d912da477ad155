//! `outpaint`: the command line over the outpainting engine, and its HTTP server (`serve`).
//!
//! Thin by design (ripgrep's `core` is the model): `cli` turns flags into engine types, `expand`
//! and `batch` read files, call [`outpaint_engine::Engine`] and write results. Errors are
//! mapped to exit codes in one place, [`main`]: 2 for usage errors (clap's own, and the
//! multi-flag rules `cli::usage_error` reports), 1 for everything else, printed as one line
//! `error: <file>: <what rule was broken>`.

mod batch;
mod cli;
mod expand;
mod files;
mod logging;
mod models;
mod outbound;
mod serve;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_writer = match &cli.command {
        Command::Serve(args) => logging::init(
            cli.verbose.max(1),
            args.log_format == serve::config::LogFormat::Json,
        ),
        _ => logging::init(cli.verbose, false),
    };
    let result = match &cli.command {
        Command::Expand(args) => expand::run(args).map(|()| ExitCode::SUCCESS),
        Command::Batch(args) => batch::run(args).map(|outcome| match outcome {
            batch::Outcome::AllDone => ExitCode::SUCCESS,
            batch::Outcome::SomeFailed => ExitCode::FAILURE,
        }),
        Command::Serve(args) => serve::run(args).map(|()| ExitCode::SUCCESS),
        Command::Models(command) => models::run(command).map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => models::bench(args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|err| {
        if let Some(usage) = err.downcast_ref::<clap::Error>() {
            // Prints "error: ..." and the usage line, as for clap's own errors.
            let _ = usage.print();
            return ExitCode::from(u8::try_from(usage.exit_code()).unwrap_or(2));
        }
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}

/// Prints a written result's path on stdout. A closed stdout (`outpaint ... | head -1`) is not
/// an error worth failing for: the file is written either way.
fn print_path(path: &Path) {
    let _ = writeln!(std::io::stdout().lock(), "{}", path.display());
}
