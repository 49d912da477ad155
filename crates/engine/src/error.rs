use outpaint_canvas::CanvasError;
use thiserror::Error;

use crate::backend::BackendError;

/// Why an expansion could not be done.
///
/// Messages are meant to be shown as they are: the ones for bad input name the rule that was
/// broken and the offending value. [`EngineError::kind`] tells bad input (the server answers
/// 400 / 1201) from failures of the engine itself (500).
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Occurs when the image or the requested geometry breaks a SPEC rule (size, aspect ratio,
    /// canvas limits, ratios, direction).
    #[error(transparent)]
    Canvas(#[from] CanvasError),
    /// Occurs when the data is not a JPEG, PNG or WebP image.
    #[error("unsupported image format: {detected}; expected JPEG, PNG or WebP")]
    UnsupportedFormat {
        /// What the data looks like (`GIF`, `BMP`, `text`, ...).
        detected: String,
    },
    /// Occurs when the image header declares more pixels than the engine accepts. Checked on
    /// the header alone, before any pixel memory is allocated (decompression bombs).
    #[error(
        "image is {width}×{height} px ({megapixels:.1} megapixels); at most {max_megapixels} megapixels are accepted"
    )]
    ImageTooLarge {
        width: u32,
        height: u32,
        megapixels: f64,
        max_megapixels: f64,
    },
    /// Occurs when the image data is corrupt or truncated, or would need more memory to decode
    /// than allowed.
    #[error("cannot decode the {format} image: {message}")]
    Decode {
        format: &'static str,
        message: String,
    },
    /// Occurs when a request parameter is outside its allowed range (`n`, prompt length, ...).
    #[error("{name} must be {rule}, got {value}")]
    InvalidParameter {
        /// The parameter's name as the API spells it.
        name: &'static str,
        /// The rule, phrased to follow "must be".
        rule: String,
        /// The offending value, or a description of it.
        value: String,
    },
    /// Occurs when a request names a backend that is not installed.
    #[error("unknown backend \"{name}\"; available: {}", available.join(", "))]
    UnknownBackend {
        name: String,
        available: Vec<String>,
    },
    /// Occurs when the job was cancelled through its cancel flag.
    #[error("the job was cancelled")]
    Cancelled,
    /// Occurs when a backend fails.
    #[error("the {backend} backend failed: {source}")]
    Backend {
        backend: String,
        source: BackendError,
    },
    /// Occurs when a backend returns the wrong number of images or images of the wrong size.
    /// Always a bug in the backend.
    #[error("the {backend} backend returned unusable output: {message}")]
    BackendOutput { backend: String, message: String },
    /// Occurs when a result cannot be encoded.
    #[error("cannot encode the result as {format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
}

/// Whose fault an [`EngineError`] is, for mapping to status codes and exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request or its image is unacceptable; retrying the same input fails the same way.
    /// The server answers 400 / 1201 with the message.
    InvalidInput,
    /// The job was cancelled by its owner.
    Cancelled,
    /// Something failed inside the engine; the input may be fine. The server answers 500.
    Internal,
}

impl EngineError {
    /// Classifies the error: bad input, cancellation, or an internal failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Canvas(_)
            | EngineError::UnsupportedFormat { .. }
            | EngineError::ImageTooLarge { .. }
            | EngineError::Decode { .. }
            | EngineError::InvalidParameter { .. }
            | EngineError::UnknownBackend { .. } => ErrorKind::InvalidInput,
            EngineError::Cancelled => ErrorKind::Cancelled,
            EngineError::Backend { .. }
            | EngineError::BackendOutput { .. }
            | EngineError::Encode { .. } => ErrorKind::Internal,
        }
    }

    /// Whether the caller is at fault (bad image or bad parameter).
    pub fn is_invalid_input(&self) -> bool {
        self.kind() == ErrorKind::InvalidInput
    }
}
