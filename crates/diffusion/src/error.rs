//! The crate's error type.

use std::path::PathBuf;

use thiserror::Error;

/// Why loading a model or generating failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DiffusionError {
    /// A tensor operation failed (shapes, missing weights, device).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A configuration or manifest file is malformed.
    #[error("invalid {what}: {message}")]
    Config {
        /// Which file or field.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer files could not be loaded or a prompt could not be tokenized.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model's architecture or a configuration value is not supported by this crate.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A model is not in the local cache (or the folder lacks files).
    #[error("model {name} is not installed ({detail}); run `outpaint models pull {name}`")]
    NotInstalled {
        /// The manifest name.
        name: String,
        /// What is missing.
        detail: String,
    },
    /// No manifest of that name exists.
    #[error("unknown model {name:?}; supported: {supported}")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The supported names, comma separated.
        supported: String,
    },
    /// Downloading from the hub failed.
    #[error("download failed: {0}")]
    Download(String),
    /// The input to the pipeline is inconsistent (sizes, counts).
    #[error("invalid input: {0}")]
    Input(String),
    /// The caller's cancel flag was raised.
    #[error("generation was cancelled")]
    Cancelled,
}

impl DiffusionError {
    pub(crate) fn config(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        DiffusionError::Config {
            what: what.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DiffusionError::Io {
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = DiffusionError> = std::result::Result<T, E>;
