//! Logging to stderr with `tracing-subscriber`.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: RUST_LOG when set, else `warn`, raised by each `-v`
/// (info, debug, trace); one JSON object per line with `json`.
///
/// Lines are written by a thread of their own: a write to stderr can block (a full pipe, a
/// log file on a disk busy flushing), and it must not stop the thread that logged, least of
/// all one of the server's async workers. Keep the returned guard alive until exit: dropping
/// it flushes what is still queued.
pub fn init(verbose: u8, json: bool) -> WorkerGuard {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder()
            .with_default_directive(tracing::level_filters::LevelFilter::WARN.into())
            .parse_lossy(directives),
        _ => EnvFilter::new(level),
    };
    // Blocks rather than drops when 128k lines are queued: losing log lines silently is worse.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    guard
}
