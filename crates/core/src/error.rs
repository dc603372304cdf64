//! The one error type of the core. Every variant names what was wrong and where, and maps to a
//! stable `code` that the bindings expose (JS `error.code`, CLI messages).

use std::path::Path;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A chunk file (or one of its arrays) breaks docs/formats.md "Input chunks".
    #[error("{file}: {array}: {problem}")]
    BadChunk { file: String, array: String, problem: String },

    /// A real token whose vector holds NaN or Inf.
    #[error("{source_name}: batch {batch}, position {position}: activation vector holds NaN or Inf")]
    NonFinite { source_name: String, batch: usize, position: usize },

    /// A configuration field out of range or of the wrong type.
    #[error("invalid config: {field}: {problem}")]
    Config { field: String, problem: String },

    /// Arguments of an API call that do not fit together (lengths, shapes).
    #[error("{what}: {problem}")]
    InvalidInput { what: String, problem: String },

    /// A model file that is not a soft-cluster model, or one we cannot read.
    #[error("{file}: {problem}")]
    BadModel { file: String, problem: String },

    /// The requested device can not be used.
    #[error("device {device}: {problem}")]
    Device { device: String, problem: String },

    /// A job that would not fit in this machine's memory, refused before it starts.
    #[error("{what}: needs about {needed_gib:.1} GiB of memory, but {available_gib:.1} GiB is available")]
    TooLarge { what: String, needed_gib: f64, available_gib: f64 },

    /// The output folder is held by another run (docs/formats.md "Output folder").
    #[error("{dir}: in use by {holder}; wait for it to end, or write into another folder")]
    Busy { dir: String, holder: String },

    /// The output folder holds what this run may not replace (another run's outputs, an
    /// unfinished fit, an input).
    #[error("{dir}: {problem}")]
    OutputExists { dir: String, problem: String },

    /// Reading or writing a file failed at the OS level.
    #[error("{file}: {source}")]
    Io { file: String, #[source] source: std::io::Error },

    /// The error of one rank of a run on several processes (docs/scaling.md "Many servers"),
    /// which ends every rank: `code` is that error's own.
    #[error("rank {rank} of {size}: {message}")]
    OnRank { rank: usize, size: usize, code: &'static str, message: String },
}

/// Every `Error::code`, to find the one another rank sent by name.
const CODES: [&str; 10] = ["ERR_BAD_CHUNK", "ERR_NON_FINITE", "ERR_INVALID_CONFIG", "ERR_INVALID_INPUT", "ERR_BAD_MODEL", "ERR_DEVICE", "ERR_TOO_LARGE", "ERR_BUSY", "ERR_OUTPUT_EXISTS", "ERR_IO"];

impl Error {
    /// Stable machine-readable code, the same in Rust, JS and the CLI.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadChunk { .. } => "ERR_BAD_CHUNK",
            Error::NonFinite { .. } => "ERR_NON_FINITE",
            Error::Config { .. } => "ERR_INVALID_CONFIG",
            Error::InvalidInput { .. } => "ERR_INVALID_INPUT",
            Error::BadModel { .. } => "ERR_BAD_MODEL",
            Error::Device { .. } => "ERR_DEVICE",
            Error::TooLarge { .. } => "ERR_TOO_LARGE",
            Error::Busy { .. } => "ERR_BUSY",
            Error::OutputExists { .. } => "ERR_OUTPUT_EXISTS",
            Error::Io { .. } => "ERR_IO",
            Error::OnRank { code, .. } => code,
        }
    }

    /// The static code named `name` (an error sent by another rank); `ERR_INVALID_INPUT` if none is.
    pub fn code_named(name: &str) -> &'static str {
        CODES.iter().find(|&&c| c == name).copied().unwrap_or("ERR_INVALID_INPUT")
    }

    pub(crate) fn bad_chunk(file: &Path, array: &str, problem: impl Into<String>) -> Self {
        Error::BadChunk { file: file.display().to_string(), array: array.to_string(), problem: problem.into() }
    }

    pub(crate) fn config(field: &str, problem: impl Into<String>) -> Self {
        Error::Config { field: field.to_string(), problem: problem.into() }
    }

    pub(crate) fn invalid_input(what: &str, problem: impl Into<String>) -> Self {
        Error::InvalidInput { what: what.to_string(), problem: problem.into() }
    }

    pub(crate) fn io(file: &Path, source: std::io::Error) -> Self {
        Error::Io { file: file.display().to_string(), source }
    }
}
